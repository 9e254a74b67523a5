"""One run of ``relaybox bench --target`` against four deployments, side by side:

  sqlite-1   one server process on SQLite with its embedded Redis (the default install)
  sqlite-2   two server processes (``workers = 2``) sharing that SQLite file
  pg-1       one node on PostgreSQL and a Debian redis-server
  pg-2       two nodes on that PostgreSQL and redis-server behind haproxy

Every deployment is started fresh, measured with the same sizes, and stopped; the table
at the end is what docs/performance.md ("SQLite and PostgreSQL, one node and two")
reports. Needs RELAYBOX_TEST_POSTGRES_URL (a database the script may create others
beside), haproxy and redis-server for the PostgreSQL rows (``--only sqlite`` skips them).

    .venv/bin/python scripts/bench_matrix.py --events 20000 --json-out /tmp/matrix.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import free_port, fresh_database  # noqa: E402
from tests.torture.faults import Haproxy, Node, RedisServer  # noqa: E402

# Rate limits and the per-address cap off: the bench measures the relay, and through
# haproxy every bench connection comes from one address.
SERVER_ENV = {
    "RELAYBOX_GATEWAY_PUBLISH_RATE_PER_S": "0",
    "RELAYBOX_LIMITS_CONNECTIONS_PER_ADDRESS": "0",
    "RELAYBOX_RATE_LIMITS_TOKEN_PER_MIN": "100000",
    "RELAYBOX_RATE_LIMITS_PAIRING_PER_MIN": "100000",
    "RELAYBOX_METRICS_ENABLED": "false",
    "RELAYBOX_LOG_LEVEL": "warning",
}
COLUMNS = ("throughput_events_per_s", "latency_ms_p99_at_2000", "catchup_events_per_s",
           "handshakes_per_s")


def _init(data: Path, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "relaybox", "init", "--json"],
                         env={**os.environ, **env, "RELAYBOX_DATA_DIR": str(data)},
                         capture_output=True, check=True)
    return str(json.loads(out.stdout)["admin_token"])


def _bench(url: str, token: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "relaybox", "bench", "--target", url, "--admin-token", token,
           "--events", str(args.events), "--catchup-events", str(args.catchup_events),
           "--handshakes", str(args.handshakes), "--settle", "0", "--output", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)  # noqa: S603 - our own CLI
    return dict(json.loads(out.read_text()))


async def _deployment(name: str, base: Path, args: argparse.Namespace,
                      pg_url: str | None) -> dict[str, Any]:
    base.mkdir(parents=True)  # noqa: ASYNC240 - a script, once per deployment
    nodes: list[Node] = []
    redis: RedisServer | None = None
    proxy: Haproxy | None = None
    count = 2 if name.endswith("-2") else 1
    try:
        if name.startswith("sqlite"):
            data = base / "data"
            token = _init(data, {})
            env = {**SERVER_ENV, "RELAYBOX_WORKERS": str(count)}
            nodes.append(Node(data, free_port(), env, name=name))
        else:
            assert pg_url is not None
            redis = RedisServer(base, free_port())
            await redis.start()
            token = ""
            for i in range(count):
                data = base / f"node{i}"
                data.mkdir()
                (data / "relaybox.toml").write_text(
                    f'database_url = "{pg_url}"\nredis_url = "{redis.url}"\n')
                if i == 0:
                    token = _init(data, {})
                nodes.append(Node(data, free_port(), dict(SERVER_ENV), name=f"{name}-{i}"))
        await asyncio.gather(*(n.start_async() for n in nodes))
        url = nodes[0].url
        if count > 1 and name.startswith("pg"):
            proxy = Haproxy(base, free_port(), nodes)
            await proxy.start()
            url = proxy.url
        started = time.monotonic()
        doc = await asyncio.to_thread(_bench, url, token, args, base / "bench.json")
        doc["wall_s"] = round(time.monotonic() - started, 1)
        return doc
    finally:
        if proxy is not None:
            proxy.stop()
        for n in nodes:
            await n.stop_async()
            if not args.keep:
                n.cleanup()
        if redis is not None:
            redis.kill()


async def main(args: argparse.Namespace) -> int:
    pg_base = os.environ.get("RELAYBOX_TEST_POSTGRES_URL")
    names = [n for n in ("sqlite-1", "sqlite-2", "pg-1", "pg-2")
             if args.only is None or n.startswith(args.only)]
    if any(n.startswith("pg") for n in names) and not pg_base:
        print("error: the PostgreSQL rows need RELAYBOX_TEST_POSTGRES_URL "
              "(or --only sqlite)", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="relaybox-matrix-") as tmp:
        if args.keep:
            tmp = tempfile.mkdtemp(prefix="relaybox-matrix-kept-")
            print(f"logs kept in {tmp}", file=sys.stderr)
        for name in names:
            print(f"== {name}", file=sys.stderr, flush=True)
            if name.startswith("pg"):
                assert pg_base is not None
                with fresh_database(pg_base, "relaybox_matrix") as url:
                    results[name] = await _deployment(name, Path(tmp) / name, args, url)
            else:
                results[name] = await _deployment(name, Path(tmp) / name, args, None)
    header = f"{'measure':28}" + "".join(f"{n:>12}" for n in names)
    print(header)
    for col in COLUMNS:
        row = f"{col:28}"
        for n in names:
            value = results[n]["summary"].get(col, {}).get("value")
            row += f"{value:>12,.1f}" if isinstance(value, (int, float)) else f"{'-':>12}"
        print(row)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(  # noqa: ASYNC240
            {n: {"summary": r["summary"], "wall_s": r["wall_s"]} for n, r in results.items()},
            indent=2))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--catchup-events", type=int, default=10000)
    p.add_argument("--handshakes", type=int, default=300)
    p.add_argument("--only", choices=("sqlite", "pg"))
    p.add_argument("--json-out")
    p.add_argument("--keep", action="store_true", help="keep the data dirs and node logs")
    sys.exit(asyncio.run(main(p.parse_args())))
