"""``python -m tests.store.crashing_writer FD``: the real writer process, made to die at a
chosen point (tests/store/test_writer_crash.py), as a crash of the machine's writer would.

The spec (the socket's first frame) says when, beside the usual keys:

- ``die_on_body``: die, without writing, on a batch holding a publish with this body;
- ``die_after_commit``: a file path; the first writer process to commit a publish while
  that file does not exist creates it and dies before it answers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from relaybox.store import codec, writer_main
from relaybox.store.batch import BatchWriter

_spec: dict[str, Any] = {}


def _setup(spec: dict[str, Any]) -> None:
    _spec.update(spec)


def _write_items(self: BatchWriter, items: list[codec.Item]) -> tuple[list[Any], float, bool]:
    bodies = [it[5] for it in items if it[0] == codec.PUBLISH]
    if "die_on_body" in _spec and _spec["die_on_body"] in bodies:
        os._exit(3)
    out = _real_write_items(self, items)
    marker = _spec.get("die_after_commit")
    if marker is not None and bodies and not Path(marker).exists():
        Path(marker).touch()
        os._exit(3)  # committed, never answered
    return out


# The writer process's loop (store/batch.py serve_socket) writes each batch with this.
_real_write_items = BatchWriter.write_items
BatchWriter.write_items = _write_items  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(writer_main.run(sys.argv, _setup))
