"""``python -m relaybox.store.writer_main FD``: the writer process's own end.

Started by the server (``relaybox.store.writerproc.ProcessWriter``), never by hand. The
spec comes as the socket's first frame; it may name a set-up function (the server's log
set-up, so the writer logs in the server's format with the same redaction) that runs
first. Then it builds the ``BatchWriter`` the spec describes and hands it the socket:
the loop that answers batches (store/codec.py) until the socket closes is store/batch.py's.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peewee as pw

from relaybox.store.batch import BatchWriter, serve_socket
from relaybox.store.codec import unpack
from relaybox.store.quotas import Quotas

log = logging.getLogger("relaybox.store")

Setup = Callable[[dict[str, Any]], None]


def _open(spec: dict[str, Any]) -> pw.Database:
    from relaybox.store.db import make_postgres, make_sqlite

    if "sqlite" in spec:
        return make_sqlite(Path(spec["sqlite"]), spec["synchronous"],
                           replicated=bool(spec.get("replicated")))
    return make_postgres(spec["url"])


def serve(sock: socket.socket, spec: dict[str, Any], buf: bytearray | None = None) -> None:
    """Answer batches until the socket closes (``buf``: bytes already read from it), with
    the ``BatchWriter`` the spec describes (the loop is store/batch.py's)."""
    writer = BatchWriter(_open(spec), batch_max=int(spec["batch_max"]),
                         quotas=Quotas(*spec.get("quotas", ())),
                         checkpoints=not spec.get("replicated"))
    if writer.checkpointer is not None:
        writer.checkpointer.start()
    try:
        serve_socket(sock, writer, buf if buf is not None else bytearray())
    finally:
        if writer.checkpointer is not None:
            writer.checkpointer.stop()
        writer.close()


class _NoSpec(Exception):
    """The socket closed before any byte of a spec: the writer process is not needed."""


def read_spec(sock: socket.socket) -> tuple[dict[str, Any], bytearray]:
    """The first frame on the socket (the spec), and whatever arrived after it."""
    buf = bytearray()
    while True:
        first = unpack(buf, limit=1)
        if first:
            return first[0], buf
        data = sock.recv(1 << 16)
        if not data:
            if not buf:
                raise _NoSpec
            raise ConnectionResetError("the server closed the socket during the spec")
        buf += data


def _named_setup(spec: dict[str, Any]) -> Setup | None:
    """The set-up function the spec names (``module:function``), if any."""
    name = spec.get("setup")
    if not name:
        return None
    module, _, attr = str(name).partition(":")
    fn: Setup = getattr(importlib.import_module(module), attr)
    return fn


def run(argv: list[str], setup: Setup | None = None) -> int:
    """The writer process's main: ``argv`` is [program, socket fd]. ``setup(spec)`` (or
    else the function the spec names) runs once the spec has arrived."""
    # The server decides when the writer stops (by closing the socket): a Ctrl-C or a
    # SIGTERM sent to the whole process group must not interrupt a commit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[1]))
    try:
        spec, buf = read_spec(sock)
    except _NoSpec:
        sock.close()
        return 0  # a prestarted writer process that was not needed
    except (OSError, pickle.UnpicklingError) as exc:
        sock.close()
        print(f"error: relaybox writer process: {exc}", file=sys.stderr)
        return 1
    try:
        setup = setup or _named_setup(spec)
    except (ImportError, AttributeError) as exc:
        # Said before the socket closes: the server gives up on a writer process that
        # closes it unready, and may kill it then.
        print(f"error: relaybox writer process: set-up {spec.get('setup')!r}: {exc}",
              file=sys.stderr)
        sock.close()
        return 1
    if setup is not None:
        setup(spec)
    started = time.monotonic()
    try:
        serve(sock, spec, buf)
    except ConnectionResetError:
        pass  # the server is gone, and so is whatever it had not sent completely
    except Exception as exc:
        log.error("the writer process stopped: %s", exc)
        return 1
    finally:
        sock.close()
    log.debug("writer process done after %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv))
