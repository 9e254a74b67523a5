"""redis_url (bus/connect.py): Redis behind Sentinel (``redis+sentinel://``) and over TLS
(``rediss://``).

The Sentinel tests run a real master and a real Sentinel (``redis-server --sentinel``) on
loopback ports; two server processes on one data dir then relay through that master.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from relaybox.bus import CONTROL_CHANNEL, Bus, SyncBus, redis_client, redis_pool
from relaybox.config import ConfigError, load_settings, sentinel_url
from relaybox.server.ratelimit import RateLimiter
from tests.gateway.helpers import connect_synced, users
from tests.plugin import MakeServer
from tests.support import free_port


# -- the URL --------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    "redis+sentinel://127.0.0.1:26379/mymaster",
    "sentinel://a,b:26380,[::1]:26381/mymaster/2",
    "rediss+sentinel://:secret@sentinel.example/mymaster?sentinel_password=other"
    "&ssl_ca_certs=/etc/ca.pem",
    "rediss://:secret@redis.example:6380/0?ssl_ca_certs=/etc/ca.pem",
])
def test_sentinel_and_tls_urls_are_accepted(tmp_path: Path, url: str) -> None:
    settings = load_settings(tmp_path, env={"RELAYBOX_REDIS_URL": url})
    assert settings.redis_url == url


@pytest.mark.parametrize(("url", "problem"), [
    ("redis+sentinel://127.0.0.1:26379/", "master name is missing"),
    ("redis+sentinel:///mymaster", "Sentinel host is missing"),
    ("redis+sentinel://h:70000/mymaster", "out of range"),
    ("redis+sentinel://h/mymaster/zero", "not a number"),
    ("memcached://h", "scheme must be"),
])
def test_bad_sentinel_urls_are_refused(tmp_path: Path, url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path, env={"RELAYBOX_REDIS_URL": url})
    assert problem in str(err.value)


def test_a_sentinel_url_names_hosts_master_database_and_passwords() -> None:
    spec = sentinel_url("rediss+sentinel://u:p%40ss@a:1,b/mymaster/3?sentinel_password=s"
                        "&ssl_cert_reqs=required")
    assert spec.sentinels == (("a", 1), ("b", 26379))
    assert (spec.master, spec.db, spec.username, spec.password) == ("mymaster", 3, "u",
                                                                    "p@ss")
    assert (spec.sentinel_password, spec.tls) == ("s", True)
    assert spec.options == (("ssl_cert_reqs", "required"),)


@pytest.mark.asyncio(loop_scope="function")
async def test_a_tls_sentinel_url_makes_tls_connections_to_the_master() -> None:
    client = redis_client("rediss+sentinel://a:1/mymaster?ssl_cert_reqs=required")
    pool = client.connection_pool
    assert pool.service_name == "mymaster"
    assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    assert pool.connection_kwargs["ssl_cert_reqs"] == "required"
    assert [(s.connection_pool.connection_kwargs["host"],
             s.connection_pool.connection_kwargs["port"])
            for s in client.relaybox_sentinels] == [("a", 1)]
    await client.aclose()
    plain = redis_pool("rediss://h:6380/0")
    assert plain.connection_class.__name__ == "SSLConnection"


# -- a real master and Sentinel ---------------------------------------------------------------
def _answers(port: int, *command: str) -> object:
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return client.execute_command(*command)
    except redis.RedisError:
        return None
    finally:
        client.close()


def _wait_for(check: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server master and one Sentinel watching it; yields the Sentinel URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    folder = tmp_path_factory.mktemp("sentinel")
    master_port, sentinel_port = free_port(), free_port()
    conf = folder / "sentinel.conf"
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {folder}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n")
    log = open(folder / "redis.log", "ab")
    procs = [subprocess.Popen([exe, "--port", str(master_port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(folder)],
                              stdout=log, stderr=subprocess.STDOUT),
             subprocess.Popen([exe, str(conf), "--sentinel"], stdout=log,
                              stderr=subprocess.STDOUT)]
    log.close()
    try:
        _wait_for(lambda: _answers(master_port, "PING"), "the master")
        _wait_for(lambda: _answers(sentinel_port, "SENTINEL", "get-master-addr-by-name",
                                   "mymaster"), "the Sentinel")
        yield f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.mark.asyncio(loop_scope="function")
async def test_the_bus_publishes_subscribes_and_leases_through_sentinel(
        sentinel: str) -> None:
    bus = Bus(sentinel, "n1")
    got: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    subscribed = asyncio.Event()
    bus.on_subscribed = subscribed.set
    bus.start_listening(lambda channel, data: got.put_nowait((channel, data)))
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        assert await bus.ping()
        assert await bus.publish_control("hello")
        channel, data = await asyncio.wait_for(got.get(), 10)
        assert channel == CONTROL_CHANNEL and b'"hello"' in data
        assert (await bus.lease_tokens("relaybox:publish_rate:s", 1.0, 5, 3))[0] == 3
        sync = SyncBus(sentinel)
        assert sync.ping() and sync.acquire_lock("sentinel-test", 5)
        sync.close()
        limiter = RateLimiter(sentinel)
        await limiter.hit("test", "me", 10)  # counted in Redis, through the Sentinel
        assert limiter._redis_down_until == 0.0
        await limiter.close()
    finally:
        await bus.close()


@pytest.mark.asyncio(loop_scope="function")
async def test_two_processes_relay_through_a_master_found_by_sentinel(
        servers: MakeServer, sentinel: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "relaybox.toml").write_text(f'redis_url = "{sentinel}"\n')
    first = servers(data_dir, gateway_publish_rate_per_s=0)
    second = servers(data_dir, gateway_publish_rate_per_s=0)
    a, b = users(first, 2)[0]
    ca, cb = await connect_synced(first, a), await connect_synced(second, b)
    ack = await ca.publish("notes", "via sentinel")
    ev = await cb.expect_type("event")
    assert (ev["seq"], ev["body"]) == (ack["seq"], "via sentinel")
    await ca.close()
    await cb.close()


# -- a real Redis over TLS ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """Debian's redis-server (built with TLS) on a TLS port only; yields (port, CA file)."""
    exe = "/usr/bin/redis-server"
    if not Path(exe).exists() or shutil.which("openssl") is None:
        pytest.skip("needs Debian's redis-server (built with TLS) and openssl")
    folder = tmp_path_factory.mktemp("tls-redis")
    cert, key = folder / "redis.crt", folder / "redis.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    log = open(folder / "redis.log", "ab")
    proc = subprocess.Popen([exe, "--port", "0", "--tls-port", str(port), "--bind",
                             "127.0.0.1", "--tls-cert-file", str(cert), "--tls-key-file",
                             str(key), "--tls-ca-cert-file", str(cert),
                             "--tls-auth-clients", "no", "--save", "", "--dir", str(folder)],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
        _wait_for(lambda: SyncBus(url).ping(), "redis-server over TLS")
        yield port, cert
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.asyncio(loop_scope="function")
async def test_the_bus_talks_tls_to_a_rediss_url(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    bus = Bus(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", "n1")
    got: asyncio.Queue[bytes] = asyncio.Queue()
    subscribed = asyncio.Event()
    bus.on_subscribed = subscribed.set
    bus.start_listening(lambda channel, data: got.put_nowait(data))
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        assert await bus.publish_control("over-tls")
        assert b'"over-tls"' in await asyncio.wait_for(got.get(), 10)
    finally:
        await bus.close()
    # The certificate is checked: without the CA the server is not trusted.
    assert not SyncBus(f"rediss://127.0.0.1:{port}/0").ping()
