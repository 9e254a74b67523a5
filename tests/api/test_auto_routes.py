"""HEAD and OPTIONS on every route (server/autoroutes.py), added when the app is built."""

from __future__ import annotations

import httpx

from relaybox.server.autoroutes import allow_header
from tests.api.helpers import Api


def test_allow_header_lists_methods_in_a_fixed_order_with_options_last() -> None:
    assert allow_header({"HEAD", "POST", "GET"}) == "GET,HEAD,POST,OPTIONS"
    assert allow_header(frozenset({"DELETE", "OPTIONS"})) == "DELETE,OPTIONS"


def test_every_documented_path_answers_options_and_get_paths_answer_head(api: Api) -> None:
    base = api.server.url
    doc = httpx.get(base + "/docs/openapi.json").json()
    checked = 0
    for path, ops in doc["paths"].items():
        if "{" in path:
            continue
        opt = httpx.options(base + path)
        assert opt.status_code == 204, path
        allowed = opt.headers["allow"].split(",")
        assert allowed[-1] == "OPTIONS"
        assert {m.upper() for m in ops} <= set(allowed), path
        if "get" in ops:
            assert "HEAD" in allowed
            head = httpx.head(base + path)
            get = httpx.get(base + path)
            assert head.status_code == get.status_code, path
            assert head.content == b""
        # Neither auto method shows up in the OpenAPI document.
        assert not {"head", "options"} & set(ops), path
        checked += 1
    assert checked >= 5
    assert httpx.options(base + "/api/v1/status").headers["allow"] == "GET,HEAD,OPTIONS"
