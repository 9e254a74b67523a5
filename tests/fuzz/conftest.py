"""Fuzzing fixtures: the example budget, and real servers shared by a test module.

The budget is a hypothesis profile, ``relaybox-fuzz``. By default it is the CI budget
(a modest number of examples, the whole package well under a minute on two cores).
``RELAYBOX_FUZZ_EXAMPLES=N`` turns it into a campaign of N examples per property
(each test scales N by its own weight, see ``tests/fuzz/budget.py``):

    RELAYBOX_FUZZ_EXAMPLES=2000 pytest tests/fuzz
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.api.helpers import Api, assert_clean_log, start_api
from tests.plugin import stop_later

CI_EXAMPLES = 25

_campaign = os.environ.get("RELAYBOX_FUZZ_EXAMPLES", "").strip()
_common: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                              HealthCheck.function_scoped_fixture],
    "print_blob": True,
}
# CI: no example database in the checkout; a failure prints the blob that replays it.
settings.register_profile("relaybox-fuzz-ci", max_examples=CI_EXAMPLES, database=None,
                          **_common)
if _campaign:
    settings.register_profile("relaybox-fuzz-campaign", max_examples=int(_campaign),
                              **_common)
settings.register_profile(
    "relaybox-fuzz",
    parent=settings.get_profile("relaybox-fuzz-campaign" if _campaign else "relaybox-fuzz-ci"))


StartServer = Callable[..., Api]


@pytest.fixture(scope="module")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """``start_server(users, **env)``: a real server with seeded users, for one module.

    Failed handshakes are not rate limited (fuzzed ``auth`` frames fail by the hundred),
    and nothing the module did may leave a traceback or a 500 in the server's log.
    """
    started: list[Api] = []

    unchecked: set[int] = set()

    def start(users: dict[str, int], *, check_log: bool = True, **env: str) -> Api:
        """``check_log=False`` for a server a known-bug reproducer crashes on purpose."""
        env.setdefault("RELAYBOX_GATEWAY_HANDSHAKE_FAILURES_PER_MIN", "1000000")
        api = start_api(tmp_path_factory.mktemp("fuzz") / "data", users, **env)
        started.append(api)
        if not check_log:
            unchecked.add(id(api))
        return api

    yield start
    problems = []
    for api in started:
        if id(api) in unchecked:
            continue
        try:
            assert_clean_log(api.server)
        except AssertionError as exc:
            problems.append(str(exc))
    # Stopping takes seconds (mostly the embedded Redis): it runs in the background while
    # the next module starts, and the session waits for it at the end (tests/plugin.py).
    for api in started:
        stop_later(_stop, api)
    assert not problems, problems[0]


def _stop(api: Api) -> None:
    api.server.stop()
    api.server.kill()
