"""bus/embedded.py: the embedded Redis that `relaybox serve` owns, and its pid files."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from relaybox.bus import EmbeddedRedis, read_pid_file, url_from_socket
from relaybox.bus.embedded import _running, _shutdown_nosave


def test_a_pid_file_is_read_as_a_number_none_while_empty_and_zero_when_missing(
        tmp_path: Path) -> None:
    pidfile = tmp_path / "redis.pid"
    assert read_pid_file(str(pidfile)) == 0
    pidfile.write_text("")  # redis-server writes it after it starts listening
    assert read_pid_file(str(pidfile)) is None
    pidfile.write_text("1x")
    assert read_pid_file(str(pidfile)) is None
    pidfile.write_text("123\n")
    assert read_pid_file(str(pidfile)) == 123


def test_the_embedded_redis_listens_on_a_unix_socket_until_stopped(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path / "run")
    assert embedded.socket is None and embedded.pid is None
    socket = embedded.start()
    try:
        assert embedded.socket == socket and embedded.pid
        assert url_from_socket(socket) == f"unix://{socket}"
        client = redis.Redis.from_url(url_from_socket(socket))
        try:
            assert client.ping()
            assert client.config_get("port") == {"port": "0"}  # no TCP port
        finally:
            client.close()
    finally:
        embedded.stop()
    assert embedded.socket is None and embedded.pid is None


def test_stop_asks_the_bundled_redis_to_shut_down_in_a_form_it_accepts(
        tmp_path: Path) -> None:
    """SHUTDOWN NOSAVE (the bundled 6.2 refuses 7.0's NOW/FORCE, which left every stop
    waiting for its kill fallback): the server exits by itself."""
    embedded = EmbeddedRedis(tmp_path / "run")
    socket = embedded.start()
    pid = embedded.pid
    assert pid
    try:
        _shutdown_nosave(socket)
        deadline = time.monotonic() + 10
        while _running(pid):
            assert time.monotonic() < deadline, "redis-server did not exit on SHUTDOWN"
            time.sleep(0.01)
    finally:
        embedded.stop()
