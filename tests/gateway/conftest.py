"""Gateway fixtures: the server factories (``module_servers``, ``servers``) are the suite's
(``tests/plugin.py``); here, the gateway suite's two ways in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.plugin import MakeServer, gateway_factory, gateway_teardown
from tests.support import Server

# The two ways a gateway connection comes in (relaybox/server/upgrade.py), like uvicorn's
# websocket implementations: "direct", the upgrade answered without Sanic's request path,
# and "through-sanic", the path of every deployment behind a proxy (``proxies_count`` > 0
# sends each upgrade through Sanic, which reads the forwarding headers).
WAYS_IN = {"direct": {}, "through-sanic": {"proxies_count": 1}}


@pytest.fixture(scope="module", params=list(WAYS_IN))
def way_in(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def gateway_servers(tmp_path_factory: pytest.TempPathFactory, way_in: str
                    ) -> Iterator[MakeServer]:
    """Like ``module_servers``, once for each way in: a module whose servers come from
    here runs every test over both."""
    make, started = gateway_factory(lambda: tmp_path_factory.mktemp(f"gw-{way_in}"))

    def make_way(data_dir: Path | None = None, **kw: Any) -> Server:
        return make(data_dir, **{**WAYS_IN[way_in], **kw})

    yield make_way
    gateway_teardown(started)
