"""CLI fixtures: an initialised data dir, and a real server shared by a module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Server, free_port


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A freshly initialised data dir (no server running)."""
    from relaybox.cli.init_cmd import initialise
    from relaybox.config import load_settings

    d = tmp_path / "data"
    initialise(load_settings(d, env={}))
    return d


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real ``relaybox serve`` for the module; each test uses its own users."""
    srv = Server(tmp_path_factory.mktemp("live") / "data", free_port(), {})
    srv.start()
    yield srv
    srv.stop()
    srv.kill()
