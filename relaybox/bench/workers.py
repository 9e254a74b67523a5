"""The bench's load-generator processes: starting them, and collecting their results."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from typing import Any


def run_loop(main: Any) -> Any:
    """Run a load-generator coroutine, on uvloop when it is installed (Sanic brings it):
    the clients share the cores with the server, so their event loop's cost counts."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Sanic installs uvloop on Linux
        return asyncio.run(main)
    return uvloop.run(main)


def mp_context() -> Any:
    return mp.get_context("fork")


def describe_failure(exc: BaseException) -> str:
    """What a load-generator process ran into, in the server's own terms: a refused
    connection (503 ``too_many_connections``: the per-address cap), a close code
    (4429: too many failed handshakes from this address), a nack."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    if isinstance(exc, InvalidStatus):
        resp = exc.response
        body = bytes(resp.body or b"")[:200].decode(errors="replace")
        return (f"the server refused the WebSocket: HTTP {resp.status_code} {body} "
                "(503 too_many_connections: limits.connections_per_address)").strip()
    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        if rcvd is not None:
            return f"the server closed the session: {rcvd.code} {rcvd.reason}"
    return f"{type(exc).__name__}: {exc}"


def _guarded(fn: Callable[..., None], *args: Any) -> None:
    """Run a worker; on failure put ("error", what happened) on its queue (its last
    argument) so that the parent reports it at once instead of waiting for results."""
    try:
        fn(*args)
    except BaseException as exc:  # reported to the parent, then exit 1
        args[-1].put(("error", describe_failure(exc)))
        raise SystemExit(1) from None


def worker(ctx: Any, fn: Callable[..., None], *args: Any) -> Any:
    return ctx.Process(target=_guarded, args=(fn, *args))

class WorkerFailed(RuntimeError):
    """A load-generator process failed (a refusal of the server, a nack, a timeout)."""


def collect_items(out: Any, n: int, procs: Sequence[Any] = (),
                   timeout: float = 600) -> list[Any]:
    """``n`` results from the worker processes ``procs``; a worker's ("error", …)
    raises WorkerFailed at once, and so do workers that all ended without a result."""
    import queue

    items: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(items) < n:
        try:
            item = out.get(timeout=1.0)
        except queue.Empty:
            if procs and not any(p.is_alive() for p in procs):
                with contextlib.suppress(queue.Empty):
                    items.append(out.get(timeout=0.5))
                    continue
                raise WorkerFailed("the load-generator processes ended without a result "
                                   f"(exit codes {[p.exitcode for p in procs]})") from None
            if time.monotonic() > deadline:
                raise WorkerFailed(f"no result within {timeout:g} s") from None
            continue
        if item[0] == "error":
            for p in procs:
                if p.is_alive():
                    p.terminate()
            raise WorkerFailed(item[1])
        items.append(item)
    return items


def collect(out: Any, n: int, procs: Sequence[Any] = ()) -> dict[str, Any]:
    """``n`` results from the worker processes, by the name each one starts with."""
    return {item[0]: item for item in collect_items(out, n, procs)}
