"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Server, free_port


def _env_name(key: str) -> str:
    name = key.upper()
    return name if name.startswith("RELAYBOX_") else "RELAYBOX_" + name


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[object]:
    """Factory: ``make_server(**env)`` starts a real server on a free port."""
    servers: list[Server] = []

    def make(data_dir: Path | None = None, *, start: bool = True, args: list[str] | None = None,
             **env: str) -> Server:
        d = data_dir or tmp_path / f"data{len(servers)}"
        srv = Server(d, free_port(), {_env_name(k): str(v) for k, v in env.items()},
                     extra_args=args or [])
        servers.append(srv)
        if start:
            srv.start()
        return srv

    yield make
    for srv in servers:
        srv.stop()
        srv.kill()
