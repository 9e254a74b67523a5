"""Stopping the writer process when the event loop is not running."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relaybox.store import migrate
from relaybox.store.db import make_sqlite
from relaybox.store.writerproc import ProcessEventLog, ProcessWriter
from tests.store.helpers import spec_for


def test_stop_while_the_loop_is_not_running_ends_the_writer_process_cleanly(
        tmp_path: Path) -> None:
    """stop() from a thread while the event loop is not running (it stopped, or has not
    yet run this turn): the writer process is told that input ended, commits and exits
    by itself instead of waiting for more until it is killed."""
    db = make_sqlite(tmp_path / "w.db")
    migrate.up(db)
    loop = asyncio.new_event_loop()
    log = ProcessEventLog(db, spec_for(db), read_threads=1)
    try:
        log.start(loop)
        loop.run_until_complete(log.ready())
        writer = log.writer
        assert isinstance(writer, ProcessWriter) and writer.proc is not None
        proc = writer.proc
        # run_in_executor starts stop() before run_until_complete runs the loop.
        loop.run_until_complete(loop.run_in_executor(None, log.stop))
        assert proc.returncode == 0  # exited by itself; a kill would be -9
    finally:
        loop.close()
        db.close()
