"""Store test helpers: the writer process under test (``Writer``, ``spec_for``), what it
stored, and holding a writer busy. The fixtures on them are in ``tests/store/conftest.py``."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import peewee as pw

from relaybox.protocol.encoding import uuid4
from relaybox.store import writerproc
from relaybox.store.events import PublishRequest, StoredEvent
from relaybox.store.models import Event
from relaybox.store.writerproc import ProcessEventLog

U1 = "u1-" + "0" * 33
D1, D2 = "d1-" + "0" * 33, "d2-" + "0" * 33


def req(stream: str = "s", *, id: str | None = None, body: str = "1") -> PublishRequest:
    return PublishRequest(U1, D1, id or uuid4(), stream, body)


def spec_for(db: pw.Database) -> dict[str, Any]:
    """The writer process's database spec for the test database ``db``."""
    if isinstance(db, pw.SqliteDatabase):
        return {"sqlite": str(db.database), "synchronous": "full", "log_level": "warning"}
    parts = urlsplit(os.environ["RELAYBOX_TEST_POSTGRES_URL"])
    return {"url": urlunsplit(parts._replace(path="/" + str(db.database))),
            "log_level": "warning"}


class Writer:
    """A process event log on ``db`` (its writer in a process of its own), and what it
    committed."""

    def __init__(self, db: pw.Database, spec: dict[str, Any] | None = None,
                 module: str = writerproc.WRITER_MODULE, **kw: Any) -> None:
        self.committed: list[StoredEvent] = []
        self.log = ProcessEventLog(db, spec or spec_for(db), read_threads=1,
                                   on_committed=self.committed.extend, module=module, **kw)
        self.log.start(asyncio.get_running_loop())

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.log.stop)

    def pid(self) -> int:
        assert self.log.writer.proc is not None
        return self.log.writer.proc.pid


def stored(db: pw.Database) -> list[tuple[str, int, str]]:
    """(stream, seq, client id) of every stored event, in order."""
    return [(e.stream, e.seq, e.client_id)
            for e in Event.select().order_by(Event.stream, Event.seq)]


def hold_writer(log: Any) -> Callable[[], None]:
    """Keep the writer of ``log`` busy until the returned function is called (to fill a
    batch)."""
    gate, started = threading.Event(), threading.Event()

    def blocker() -> None:
        started.set()
        gate.wait(10)

    log.call(blocker)
    started.wait(10)
    return gate.set
