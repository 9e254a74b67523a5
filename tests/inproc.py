"""In-process servers for the tests: ``relaybox serve``'s own start-up and app
(``relaybox.server.runner.start_in_thread``) on an event loop of its own in a background
thread of the test process, listening on a free loopback port. Tests talk HTTP and
WebSocket to it over real sockets, as to a ``relaybox serve`` process, without paying
for a new interpreter and its imports at every start.

``InProcServer`` has the interface the tests use on ``tests.support.Server`` (``data_dir``,
``port``, ``url``, ``ws_url``, ``log()``/``log_path``, ``start()``, ``stop()``, ``kill()``,
``proc``). A test that needs a process of its own (it kills the server or signals it,
reads its stdout, measures the process, runs several server processes on one data dir
or PostgreSQL) keeps ``Server``.

What a server owns: its thread, every task of its event loop and every thread it
starts carry its name (``runner.in_thread_server``; ``_carry_owner_into_threads`` hands it
on to the threads the server starts, as a process of its own would contain them). By it:

- the log: each server's records go to ``<data_dir>/../server-<name>.log`` in the format
  ``relaybox serve`` writes (``logs.make_handler``), so the same log assertions apply;
  the test's own records go to no server's log. The writer process a server starts
  writes to the test process's stderr (which pytest captures), not to this log.
- the database: relaybox binds its models to one database per process
  (``store.db.open_database``). Here each server's code uses the database that server
  opened, and the test's code (a CLI command it runs, ``seed``, a service it calls)
  the one it opened, on the same data dir or another (``_bind_models_per_server``).

Like ``Server``, nothing here imports pytest (``_stop_servers_at_the_end`` in
``tests/plugin.py`` calls ``assert_none_left``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
from pathlib import Path
from typing import IO, Any

from tests.support import Endpoint

_numbers = itertools.count(1)
PREFIX = "relaybox-test-"  # the names of in-process servers (their threads, their apps)


class InProcServer(Endpoint):
    """A server inside the test process; ``port`` 0 (the default): a free one, known
    once it has started."""

    verify: Any = True  # how to check the certificate of an https server (httpx verify=)

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, *,
                 port: int = 0) -> None:
        self.data_dir = data_dir
        self.env = dict(env or {})
        self.port = port
        self.name = f"{PREFIX}{next(_numbers)}"
        self.log_path: Path | None = None
        self.handle: Any = None  # runner.InThreadServer while it runs
        self._log_stream: IO[str] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start it with the settings ``relaybox serve`` would read (the data dir's file,
        this process's RELAYBOX_* variables, then ``env``); return once it serves."""
        from relaybox.config import load_settings
        from relaybox.server import runner
        from relaybox.server.observability import logs

        _carry_owner_into_threads()
        _bind_models_per_server()
        settings = load_settings(self.data_dir, env={**os.environ, **self.env},
                                 check_writable=True)
        settings = dataclasses.replace(settings, port=self.port)
        self.tls = settings.tls_enabled
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"server-{self.name}.log"
        self._log_stream = open(self.log_path, "a", encoding="utf-8")
        _router.add(self.name, logs.make_handler(settings, self._log_stream),
                    logging.getLevelName(settings.log_level.upper()))
        try:
            self.handle = runner.start_in_thread(settings, name=self.name, timeout=timeout)
        except Exception as exc:
            self._close_log()
            raise RuntimeError(f"server did not start: {exc}\n{self.log()}") from exc
        self.port = self.handle.port
        _running[self.name] = self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    @property
    def proc(self) -> Any:
        """The process serving (this one; ``Server.proc`` is the ``relaybox serve``
        process), None once stopped."""
        if self.handle is None:
            return None
        import psutil

        return psutil.Process(os.getpid())

    def stop(self, timeout: float = 20) -> int | None:
        """Stop it as SIGTERM stops ``relaybox serve``; 0 once stopped, None when it was
        not running. Idempotent."""
        handle, self.handle = self.handle, None
        if handle is None:
            return None
        try:
            handle.stop(timeout)
        finally:
            _running.pop(self.name, None)
            self._close_log()
        return 0

    def kill(self) -> None:
        """What ``Server.kill`` leaves: no server and no embedded Redis on the data dir.
        A thread cannot be killed: it is stopped, and its embedded Redis with it."""
        self.stop()

    def _close_log(self) -> None:
        _router.remove(self.name)
        _bound.pop(self.name, None)
        if self._log_stream is not None:
            self._log_stream.close()
            self._log_stream = None


_running: dict[str, InProcServer] = {}


def assert_none_left() -> None:
    """Every in-process server was stopped and its thread has ended (the session's end
    checks). Stops what is left, then fails naming it."""
    left = list(_running.values())
    for srv in left:
        srv.stop()
    threads = [t.name for t in threading.enumerate() if t.name.startswith(PREFIX)]
    assert not left and not threads, \
        f"in-process servers left running: {[s.name for s in left]}, threads: {threads}"


# -- the log -------------------------------------------------------------------------------
# Loggers whose records the servers' logs get: relaybox's, and the web framework's (its
# loggers, reconfigured each time an app is made, pass their records up to "sanic").
_LOGGERS = ("relaybox", "sanic")


class _Router(logging.Handler):
    """Hands each record to the log of the in-process server that wrote it (the one its
    thread or task belongs to). Attached to the loggers while any server runs; meanwhile
    the relaybox logger's level lets through what the servers' ``log_level`` asks for."""

    def __init__(self) -> None:
        super().__init__()
        self._mutex = threading.Lock()
        self._servers: dict[str, logging.Handler] = {}
        self._levels: dict[str, int] = {}
        self._saved_level = logging.NOTSET

    def add(self, name: str, handler: logging.Handler, level: int) -> None:
        with self._mutex:
            if not self._servers:
                relaybox = logging.getLogger("relaybox")
                self._saved_level = relaybox.level
                for logger in _LOGGERS:
                    logging.getLogger(logger).addHandler(self)
            self._servers[name] = handler
            self._levels[name] = level
            self._set_level()

    def remove(self, name: str) -> None:
        with self._mutex:
            if self._servers.pop(name, None) is None:
                return
            self._levels.pop(name, None)
            if self._servers:
                self._set_level()
                return
            for logger in _LOGGERS:
                logging.getLogger(logger).removeHandler(self)
            logging.getLogger("relaybox").setLevel(self._saved_level)

    def _set_level(self) -> None:
        levels = [*self._levels.values(), self._saved_level or logging.CRITICAL]
        logging.getLogger("relaybox").setLevel(min(levels))

    def emit(self, record: logging.LogRecord) -> None:
        for handler in self._owners(record):
            handler.handle(record)

    def _owners(self, record: logging.LogRecord) -> list[logging.Handler]:
        from relaybox.server.runner import in_thread_server

        handler = self._servers.get(in_thread_server.get() or "")
        return [handler] if handler is not None else []


_router = _Router()


# -- what a server owns ----------------------------------------------------------------------
def _carry_owner_into_threads() -> None:
    """A thread started by a server's code belongs to that server (its database readers,
    its executors, the job scheduler, the Redis watchdog): ``in_thread_server`` is handed
    on to it. (Python 3.11 starts every thread with an empty context.)"""
    from relaybox.server.runner import in_thread_server

    original = threading.Thread.start
    if getattr(original, "carries_owner", False):
        return

    def start(self: threading.Thread) -> None:
        owner = in_thread_server.get()
        if owner is not None:
            run = self.run

            def run_as_owner() -> None:
                in_thread_server.set(owner)
                run()

            self.run = run_as_owner  # type: ignore[method-assign]
        original(self)

    start.carries_owner = True  # type: ignore[attr-defined]
    threading.Thread.start = start  # type: ignore[method-assign]


# The database each owner's code bound the models to (None: the test's own code).
_bound: dict[str | None, Any] = {}


def _bind_models_per_server() -> None:
    """relaybox's models reach their database through one proxy per process
    (``store.models.database_proxy``, set by ``open_database``). Made per owner: a server
    opening its database binds it for its own code only, the test opening one (for a CLI
    command, say) binds it for the test's code only. Outside servers nothing changes."""
    import peewee as pw

    from relaybox.server.runner import in_thread_server
    from relaybox.store.models import database_proxy

    if isinstance(database_proxy, _OwnedProxy):
        return

    class _Owned(_OwnedProxy, type(database_proxy)):  # type: ignore[misc]
        __slots__ = ()

        @property  # type: ignore[misc]
        def obj(self) -> pw.Database | None:
            return _bound.get(in_thread_server.get(), _bound.get(None))

        def __setattr__(self, attr: str, value: Any) -> None:
            if attr == "obj":
                _bound[in_thread_server.get()] = value
            else:
                object.__setattr__(self, attr, value)

    _bound[None] = database_proxy.obj
    object.__setattr__(database_proxy, "__class__", _Owned)


class _OwnedProxy:
    """Marks the models' proxy once it is per owner."""

    __slots__ = ()
