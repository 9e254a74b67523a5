"""The reverse-proxy and load-balancer setups of docs/deployment.md, run for real.

Every fenced block of docs/deployment.md whose first line is ``MARKER`` is run here as it
is written, with only these placeholders replaced (``substitute``):

==========================================================  ================================
in the docs                                                 in the test
==========================================================  ================================
``127.0.0.1:8787`` (the one-node nginx upstream)            node 0
``10.0.0.11:8787``, ``10.0.0.12:8787``                      node 0, node 1
port ``443`` and ``80`` of ``listen``/``bind`` lines        two free ports
``listen [::]:…`` lines                                     dropped when the host has no IPv6
``/etc/letsencrypt/live/relay.example.org/*.pem``           a self-signed certificate and key
``/etc/haproxy/certs/relay.example.org.pem``                the same, in one PEM
``/run/haproxy/admin.sock``                                 a socket in the test's directory
``user haproxy``/``group haproxy``                          dropped when not root
relaybox.toml: ``host``, ``database_url``, ``redis_url``    127.0.0.1, a fresh PostgreSQL
                                                            database, a Debian redis-server
==========================================================  ================================

The nginx blocks go inside an ``http`` block of a wrapper (as Debian's nginx.conf includes
``sites-enabled/*``); the wrapper sets what a test run needs (pid file, logs, temp paths,
``user root`` as root). haproxy runs the documented haproxy.cfg alone.

Two ``relaybox serve`` nodes share PostgreSQL (RELAYBOX_TEST_POSTGRES_URL) and a Debian
``redis-server``, as in the cluster campaign (tests/torture). Through each proxy: the status
route, a device's gateway handshake and an acked publish (over TLS, trusting the test's own
certificate), and the client address relaybox sees (rate limits count per forwarded
address). Then the faults, in file order: Redis down (every node stays in), one node hung
(haproxy takes it out, the other serves), one node killed (both proxies go on).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.helpers import Client
from tests.plugin import postgres_url
from tests.support import DeviceKey, Server, free_port, fresh_database, seed
from tests.torture.faults import Node, RedisServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
MARKER = "# tested: tests/ops/test_proxies.py"
READY = "/api/v1/health/ready"
PAIRING_PER_MIN = 3  # rate_limits.pairing_per_min of the nodes: the forwarded-address probe
LOOKUP = "/api/v1/pairing/lookup/ZZZZ-ZZZZ"  # an unknown code: 404 until limited (429)


# -- the documented blocks -------------------------------------------------------------------
def doc_blocks(lang: str) -> list[str]:
    """The bodies of the ```lang blocks of docs/deployment.md that begin with MARKER."""
    bodies = re.findall(rf"^```{lang}\n(.*?)^```$", DOC.read_text(), re.M | re.S)
    return [b for b in bodies if b.startswith(MARKER + "\n")]


def substitute(text: str, pairs: dict[str, str]) -> str:
    for old, new in pairs.items():
        assert old in text, f"placeholder {old!r} not found in the documented block"
        text = text.replace(old, new)
    return text


def with_ports(text: str, tls_port: int, http_port: int, ipv6: bool) -> str:
    """Port 443 and 80 of listen/bind lines to free ports; ``[::]`` lines dropped
    without IPv6."""
    lines = []
    for line in text.splitlines(keepends=True):
        if re.match(r"\s*(listen|bind)\s", line):
            if "[::]" in line and not ipv6:
                continue
            line = re.sub(r"(?<=[\s:])443\b", str(tls_port), line)
            line = re.sub(r"(?<=[\s:])80\b", str(http_port), line)
        lines.append(line)
    return "".join(lines)


def has_ipv6() -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return True
    return False


def executable(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not installed: CI must run tests/ops/test_proxies.py")
        pytest.skip(f"{name} is not installed (apt-get install nginx haproxy redis-server)")
    return found


def make_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A self-signed certificate for relay.example.org and 127.0.0.1: (cert, key, both)."""
    cert, key, both = folder / "fullchain.pem", folder / "privkey.pem", folder / "haproxy.pem"
    subprocess.run(
        [executable("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
         "/CN=relay.example.org", "-addext",
         "subjectAltName=DNS:relay.example.org,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    return cert, key, both


async def until(pred: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll ``pred()`` (sync or async) until true, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


# -- the proxies -------------------------------------------------------------------------------
@dataclass
class Front(Server):
    """A proxy in front of the nodes, seen by clients as a server (``Client.connect``)."""

    tls: bool = True


@dataclass
class Proxy:
    front: Front
    http_port: int
    proc: subprocess.Popen[bytes]
    log: Path
    stats_socket: Path | None = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def servers(self) -> dict[str, dict[str, str]]:
        """haproxy's view of each node (``show stat`` on the stats socket)."""
        assert self.stats_socket is not None
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        rows = csv.DictReader(data.decode().lstrip("# ").splitlines())
        return {r["svname"]: r for r in rows if r["svname"] not in ("FRONTEND", "BACKEND")}


async def _serving(proxy: Proxy, verify: ssl.SSLContext) -> None:
    async def answers() -> bool:
        assert proxy.proc.poll() is None, proxy.log.read_text(errors="replace")
        async with httpx.AsyncClient(verify=verify, timeout=2) as http:
            with contextlib.suppress(httpx.HTTPError):
                return (await http.get(proxy.front.url + READY)).status_code == 200
        return False

    await until(answers, 30, f"the proxy on {proxy.front.url}")


def start_nginx(folder: Path, site: str, verify: ssl.SSLContext) -> Proxy:
    """nginx with ``site`` (a documented block, placeholders replaced) inside ``http``."""
    exe = executable("nginx")
    folder.mkdir(parents=True)
    tls_port, http_port = free_port(), free_port()
    (folder / "relaybox.conf").write_text(with_ports(site, tls_port, http_port, has_ipv6()))
    wrapper = folder / "nginx.conf"
    wrapper.write_text(f"""\
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
events {{ worker_connections 512; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/relaybox.conf;
}}
""")
    cmd = [exe, "-p", str(folder), "-c", str(wrapper), "-g",
           f"daemon off; pid {folder}/nginx.pid; error_log {folder}/error.log info;"]
    check = subprocess.run([*cmd, "-t"], capture_output=True, check=False)
    assert check.returncode == 0, (check.stdout + check.stderr).decode(errors="replace")
    return _launch(cmd, folder / "nginx.out", folder, (tls_port, http_port), verify)


def _launch(cmd: list[str], log: Path, folder: Path, ports: tuple[int, int],
            verify: ssl.SSLContext, stats: Path | None = None) -> Proxy:
    """Start a checked proxy configuration; the proxy once it serves (stopped if it
    does not)."""
    tls_port, http_port = ports
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    proxy = Proxy(Front(folder, tls_port, {}, verify=verify), http_port, proc, log, stats)
    try:
        asyncio.run(_serving(proxy, verify))
    except BaseException:
        proxy.stop()
        raise
    return proxy


def start_haproxy(folder: Path, cfg: str, verify: ssl.SSLContext, stats: Path) -> Proxy:
    exe = executable("haproxy")
    folder.mkdir(parents=True)
    tls_port, http_port = free_port(), free_port()
    if os.geteuid() != 0:  # only root may switch to the haproxy user
        cfg = re.sub(r"(?m)^\s*(user|group) haproxy\n", "", cfg)
    path = folder / "haproxy.cfg"
    path.write_text(with_ports(cfg, tls_port, http_port, has_ipv6()))
    check = subprocess.run([exe, "-c", "-f", str(path)], capture_output=True, check=False)
    assert check.returncode == 0, (check.stdout + check.stderr).decode(errors="replace")
    return _launch([exe, "-db", "-f", str(path)], folder / "haproxy.log", folder,
                   (tls_port, http_port), verify, stats)


# -- the cluster -------------------------------------------------------------------------------
@dataclass
class Cluster:
    folder: Path
    nodes: list[Node]
    redis: RedisServer
    devices: list[DeviceKey]
    verify: ssl.SSLContext
    cert: Path
    key: Path
    pem: Path
    nginx_site: str  # the one-node nginx block, placeholders replaced
    nginx: Proxy  # the same with the several-nodes upstream
    haproxy: Proxy

    def served(self, node: Node, route: str) -> int:
        """Requests ``node`` logged for ``route`` (its access log: one line each)."""
        return len(re.findall(rf"GET {re.escape(route)} \d{{3}}", node.log()))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    url = postgres_url()
    for program in ("nginx", "haproxy", "redis-server", "openssl"):
        executable(program)
    (toml,) = doc_blocks("toml")
    one_node, several = doc_blocks("nginx")
    (haproxy_cfg,) = doc_blocks("haproxy")
    base = tmp_path_factory.mktemp("proxies")
    cert, key, pem = make_certificate(base)
    verify = ssl.create_default_context(cafile=str(cert))
    (base / "redis").mkdir()
    redis = RedisServer(base / "redis", free_port())
    nodes: list[Node] = []
    proxies: list[Proxy] = []
    with fresh_database(url, "relaybox_torture") as db_url, contextlib.ExitStack() as cleanup:
        cleanup.callback(redis.kill)
        asyncio.run(redis.start())
        config = substitute(toml, {
            'host = "0.0.0.0"': 'host = "127.0.0.1"',
            "postgresql://relaybox:secret@10.0.0.5:5432/relaybox": db_url,
            "redis://10.0.0.5:6379/0": redis.url})
        env = {"RELAYBOX_LOG_LEVEL": "info",
               "RELAYBOX_RATE_LIMITS_PAIRING_PER_MIN": str(PAIRING_PER_MIN)}
        for i in range(2):
            data = base / f"node{i}" / "data"
            data.mkdir(parents=True)
            (data / "relaybox.toml").write_text(config)
            node = Node(data, free_port(), dict(env), name=f"node{i}")
            nodes.append(node)
            cleanup.callback(node.cleanup)
        devices = seed(nodes[0].data_dir, {"alice": 6})["alice"]

        async def start_nodes() -> None:
            await asyncio.gather(*(n.start_async() for n in nodes))

        asyncio.run(start_nodes())
        tls = {"/etc/letsencrypt/live/relay.example.org/fullchain.pem": str(cert),
               "/etc/letsencrypt/live/relay.example.org/privkey.pem": str(key)}
        site = substitute(one_node, {**tls, "127.0.0.1:8787": f"127.0.0.1:{nodes[0].port}"})
        upstream = substitute(several, {"10.0.0.11:8787": f"127.0.0.1:{nodes[0].port}",
                                        "10.0.0.12:8787": f"127.0.0.1:{nodes[1].port}"})
        one_upstream = re.search(r"(?ms)^upstream relaybox \{.*?^\}\n", site)
        assert one_upstream, "the nginx block has no upstream block"
        several_site = site.replace(one_upstream.group(0), upstream.removeprefix(MARKER + "\n"))
        nginx = start_nginx(base / "nginx", several_site, verify)
        cleanup.callback(nginx.stop)
        proxies.append(nginx)
        stats = base / "haproxy.sock"
        cfg = substitute(haproxy_cfg, {
            "/etc/haproxy/certs/relay.example.org.pem": str(pem),
            "/run/haproxy/admin.sock": str(stats),
            "10.0.0.11:8787": f"127.0.0.1:{nodes[0].port}",
            "10.0.0.12:8787": f"127.0.0.1:{nodes[1].port}"})
        haproxy = start_haproxy(base / "haproxy", cfg, verify, stats)
        cleanup.callback(haproxy.stop)
        yield Cluster(base, nodes, redis, devices, verify, cert, key, pem, site, nginx,
                      haproxy)


# -- checks through a proxy ------------------------------------------------------------------
async def get(front: Front, route: str, *, source: str = "127.0.0.1",
              headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.AsyncHTTPTransport(verify=front.verify, local_address=source)
    async with httpx.AsyncClient(transport=transport, timeout=10) as http:
        return await http.get(front.url + route, headers=headers)


async def publish_through(front: Front, dev: DeviceKey) -> dict[str, Any]:
    """Handshake over the proxy (wss:// trusting the test's certificate), one publish; the
    ack."""
    kw: dict[str, Any] = {"open_timeout": 10}
    if front.tls:
        kw["ssl"] = front.verify
    client = await Client.connect(front, dev, **kw)
    try:
        assert client.welcome["type"] == "welcome"
        ack = await client.publish("notes", {"via": front.ws_url})
        assert ack["type"] == "ack" and isinstance(ack["seq"], int), ack
        return ack
    finally:
        await client.close()


async def forwarded_address_counts(front: Front, first: str, second: str) -> None:
    """The nodes key rate limits by the address the proxy forwards: ``first`` exhausts
    its pairing-lookup budget (counted across both nodes), ``second`` (another client of
    the same proxy) still has its own, and a forged X-Forwarded-For gets ``first`` no
    fresh one."""
    codes = [(await get(front, LOOKUP, source=first)).status_code
             for _ in range(PAIRING_PER_MIN + 1)]
    assert codes == [404] * PAIRING_PER_MIN + [429], codes
    assert (await get(front, LOOKUP, source=second)).status_code == 404
    forged = await get(front, LOOKUP, source=first, headers={"X-Forwarded-For": "192.0.2.7"})
    assert forged.status_code == 429, forged.text


# -- the tests -------------------------------------------------------------------------------
async def test_nginx_one_node(cluster: Cluster) -> None:
    """The nginx block of "Reverse proxy with TLS" as written, in front of one node."""
    proxy = await asyncio.to_thread(start_nginx, cluster.folder / "nginx-one", cluster.nginx_site,
                                    cluster.verify)
    try:
        front = proxy.front
        before = [cluster.served(n, "/api/v1/status") for n in cluster.nodes]
        status = await get(front, "/api/v1/status")
        assert status.status_code == 200 and status.json()["status"] == "ok", status.text
        after = [cluster.served(n, "/api/v1/status") for n in cluster.nodes]
        assert after == [before[0] + 1, before[1]], (before, after)  # node 0 only
        async with httpx.AsyncClient() as http:
            plain = await http.get(f"http://127.0.0.1:{proxy.http_port}/api/v1/status")
        assert plain.status_code == 301
        assert plain.headers["location"] == "https://127.0.0.1/api/v1/status"
        await publish_through(front, cluster.devices[0])
    finally:
        proxy.stop()


async def every_node_serves(cluster: Cluster, front: Front) -> None:
    """Four requests through ``front``: each node answers at least one of them."""
    before = [cluster.served(n, "/api/v1/status") for n in cluster.nodes]
    for _ in range(4):
        r = await get(front, "/api/v1/status")
        assert r.status_code == 200, r.text
    after = [cluster.served(n, "/api/v1/status") for n in cluster.nodes]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


async def test_nginx_several_nodes(cluster: Cluster) -> None:
    """The same server blocks with the several-nodes upstream: both nodes serve, the
    gateway works over wss://, and relaybox sees the client's address."""
    front = cluster.nginx.front
    await every_node_serves(cluster, front)
    for dev in cluster.devices[:2]:
        await publish_through(front, dev)
    await forwarded_address_counts(front, "127.0.0.2", "127.0.0.3")


async def test_haproxy_several_nodes(cluster: Cluster) -> None:
    """The documented haproxy.cfg: both nodes pass the ready check and serve, http is
    redirected to https, the gateway works over wss://, the client's address is seen."""
    proxy = cluster.haproxy
    front = proxy.front
    servers = proxy.servers()
    assert sorted(servers) == ["node1", "node2"]
    assert all(s["status"] == "UP" for s in servers.values()), servers
    async with httpx.AsyncClient() as http:
        plain = await http.get(f"http://127.0.0.1:{proxy.http_port}/api/v1/status")
    assert plain.status_code == 301
    assert plain.headers["location"].startswith("https://127.0.0.1:")
    await every_node_serves(cluster, front)
    for dev in cluster.devices[2:4]:
        await publish_through(front, dev)
    await forwarded_address_counts(front, "127.0.0.4", "127.0.0.5")


async def test_redis_down_keeps_every_node_in(cluster: Cluster) -> None:
    """With Redis down every node still answers the ready probe (200) and haproxy keeps
    them all; /api/v1/status says 503 (for people); devices still publish and get acks."""
    proxy = cluster.haproxy
    failed_before = {k: int(s["chkfail"]) for k, s in proxy.servers().items()}
    cluster.redis.kill()
    try:
        for node in cluster.nodes:
            async def redis_down(node: Node = node) -> bool:
                async with httpx.AsyncClient(timeout=5) as http:
                    r = await http.get(node.url + "/api/v1/status")
                return r.status_code == 503 and r.json().get("failing") == ["redis"]

            await until(redis_down, 20, f"{node.name} to report Redis down")
        # Each node then answers at least three of haproxy's checks (fall is 2).
        probes = [cluster.served(n, READY) for n in cluster.nodes]
        await until(lambda: all(cluster.served(n, READY) >= p + 3
                                for n, p in zip(cluster.nodes, probes, strict=True)),
                    30, "three health checks on each node")
        servers = proxy.servers()
        assert all(s["status"] == "UP" for s in servers.values()), servers
        assert {k: int(s["chkfail"]) for k, s in servers.items()} == failed_before
        ready = await get(proxy.front, READY)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "database": "ok", "redis": "down"}
        status = await get(proxy.front, "/api/v1/status")
        assert status.status_code == 503 and status.json()["redis"] == "down", status.text
        await publish_through(proxy.front, cluster.devices[4])
    finally:
        await cluster.redis.start()
    for node in cluster.nodes:
        async def recovered(node: Node = node) -> bool:
            async with httpx.AsyncClient(timeout=5) as http:
                return (await http.get(node.url + "/api/v1/status")).status_code == 200

        await until(recovered, 30, f"{node.name} to see Redis again")


async def test_haproxy_takes_a_hung_node_out(cluster: Cluster) -> None:
    """SIGSTOP one node: its ready probe times out, haproxy takes it out, and requests and
    handshakes through haproxy go to the other node; SIGCONT brings it back in."""
    proxy = cluster.haproxy
    hung = cluster.nodes[1]
    await until(lambda: all(s["status"] == "UP" for s in proxy.servers().values()), 30,
                "both nodes up")
    os.killpg(hung.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        await until(lambda: proxy.servers()["node2"]["status"] == "DOWN", 15,
                    "haproxy to take the hung node out")
        out_after = time.monotonic() - stopped
        print(f"hung node out of haproxy after {out_after:.1f} s")
        for _ in range(4):
            r = await get(proxy.front, "/api/v1/status")
            assert r.status_code == 200, r.text
        await publish_through(proxy.front, cluster.devices[5])
    finally:
        os.killpg(hung.pid, signal.SIGCONT)
    resumed = time.monotonic()
    await until(lambda: proxy.servers()["node2"]["status"] == "UP", 15,
                "haproxy to take the node back")
    print(f"node back in haproxy {time.monotonic() - resumed:.1f} s after SIGCONT")


async def test_a_killed_node_is_skipped_by_both_proxies(cluster: Cluster) -> None:
    """SIGKILL one node: through haproxy (a refused connection is redispatched, then the
    check takes the node out) and nginx (a refused connection goes to the next node),
    every request and handshake succeeds."""
    cluster.nodes[1].kill_group()
    for front in (cluster.haproxy.front, cluster.nginx.front):
        for _ in range(4):
            r = await get(front, "/api/v1/status")
            assert r.status_code == 200, (front.url, r.text)
        await publish_through(front, cluster.devices[0])
    node2 = cluster.haproxy.servers()["node2"]
    print(f"haproxy after the kill: node2 {node2['status']}, {node2['wretr']} retries, "
          f"{node2['wredis']} redispatched")
