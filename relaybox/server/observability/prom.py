"""prometheus_client plumbing: the multiprocess folder, pre-bound label sets, bulk adds.

prometheus_client chooses between in-memory values and the multiprocess files when it is
first imported; nothing here imports it at module level, so ``relaybox serve`` can call
``prepare_multiprocess`` first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own switch


# -- multiprocess set-up (called by `relaybox serve` before the server starts) -------------
def prepare_multiprocess(run_dir: Path, pid: int | None = None) -> Path:
    """A fresh ``<run_dir>/metrics-<pid>`` for this serve process; stale ones are removed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in run_dir.glob("metrics-*"):
        with contextlib.suppress(ValueError):
            if not _pid_alive(int(old.name.partition("-")[2])):
                shutil.rmtree(old, ignore_errors=True)
    path = run_dir / f"metrics-{pid or os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    # Worker processes inherit the environment: this is how they find the folder.
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def cleanup_multiprocess(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        if os.environ.get(MULTIPROC_ENV) == str(path):
            del os.environ[MULTIPROC_ENV]


def multiprocess_dir() -> Path | None:
    """The shared folder when this process writes multiprocess values, else None."""
    from prometheus_client import values

    path = os.environ.get(MULTIPROC_ENV)
    return Path(path) if path and values.ValueClass is not values.MutexValue else None


def mark_process_dead(path: Path) -> None:
    """Drop this process's live gauges from the shared folder (it stops serving)."""
    from prometheus_client import multiprocess

    with contextlib.suppress(Exception):
        multiprocess.mark_process_dead(os.getpid(), str(path))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


# -- collectors ------------------------------------------------------------------------------
class Family:
    """A one-label collector whose children are bound once: no label lookup per call."""

    __slots__ = ("children", "family")

    def __init__(self, family: Any, known: tuple[str, ...]) -> None:
        self.family = family
        self.children = {value: family.labels(value) for value in known}

    def __call__(self, value: str) -> Any:
        child = self.children.get(value)
        if child is None:
            child = self.children[value] = self.family.labels(value)
        return child


def histogram_add(hist: Any, bounds: tuple[float, ...], counts: list[int], total: float
                  ) -> None:
    """Add pre-bucketed observations (``counts[i]`` at or below ``bounds[i]``, last: +Inf)."""
    buckets = getattr(hist, "_buckets", None)
    sum_value = getattr(hist, "_sum", None)
    if buckets is not None and sum_value is not None and len(buckets) == len(counts):
        for value, n in zip(buckets, counts, strict=True):
            if n:
                value.inc(n)
        sum_value.inc(total)
        return
    # Should the library's internals change: one observation per event, at its bound.
    for bound, n in zip([*bounds, bounds[-1] * 2], counts, strict=True):
        for _ in range(n):
            hist.observe(bound)
