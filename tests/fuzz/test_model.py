"""The fuzz suite's model of the gateway (player.predict and player.check), on its own."""

from __future__ import annotations

import pytest

from tests.fuzz.player import Outcome, check, predict
from tests.fuzz.strategies import Frame

ID = "e3e70682-c209-4cac-a29f-6fbed82c07cd"
NUL_KEY = Frame(kind="text", data='{"type":"publish","id":"' + ID + '","stream":"0",'
                                  '"body":null,"key":"\\u0000"}')


def test_a_nul_key_is_answered_invalid_by_the_store_in_any_order() -> None:
    """A key with U+0000 is valid JSON text but no database stores it: the server's
    writer nacks it `invalid`, after whatever answers come first (a pong here)."""
    ping = Frame(kind="text", data='{"type":"ping","ref":1}')
    prediction = predict([NUL_KEY, ping], "ready")
    nack = {"type": "nack", "id": ID, "code": "invalid", "message": "key contains a NUL"}
    check(Outcome([{"type": "pong", "ref": 1}, nack], 1000), prediction)
    check(Outcome([nack, {"type": "pong", "ref": 1}], 1000), prediction)


def test_a_nul_key_acked_or_unanswered_fails_the_check() -> None:
    prediction = predict([NUL_KEY], "ready")
    ack = {"type": "ack", "id": ID, "stream": "0", "seq": 1, "ts": "2026-12-02T00:00:00Z"}
    with pytest.raises(AssertionError):
        check(Outcome([ack], 1000), prediction)
    with pytest.raises(AssertionError):
        check(Outcome([], 1000), prediction)
