"""Any frames, before and after the handshake, get only the answers protocol.md documents.

One server for the module; every example opens new connections. After each example
the server's log shows no traceback and a device of another user still gets its
publish acked with the next seq of its stream (the server is alive, its storage whole).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaybox.protocol.encoding import random_nonce
from tests.api.helpers import Api
from tests.fuzz.budget import budget
from tests.fuzz.conftest import StartServer
from tests.fuzz.player import LogWatch, Probe, check, play, predict
from tests.fuzz.strategies import Frame, encode, frames
from tests.support import DeviceKey


@dataclass
class Rig:
    api: Api
    fuzzed: DeviceKey  # the device whose sessions get the fuzzed frames
    probe: Probe
    log: LogWatch
    device_ids: list[str]

    def after_example(self) -> None:
        self.log.assert_clean()
        asyncio.run(self.probe.check())
        self.log.assert_clean()

    def play(self, sent: list[Frame], stage: str, dev: DeviceKey | None = None) -> None:
        """Send ``sent`` in a session of ``dev`` (handshake done) or of none (from
        ``stage``), check the outcome against the model's prediction, then the server."""
        prediction = predict(sent, stage)
        outcome = asyncio.run(play(self.api.server, sent, dev, prediction))
        check(outcome, prediction)
        self.after_example()


@pytest.fixture(scope="module")
def rig(start_server: StartServer) -> Rig:
    api = start_server({"fuzz": 2, "probe": 1})
    fuzzed = api.devices["fuzz"][0]
    ids = [d.device_id for devs in api.devices.values() for d in devs]
    return Rig(api, fuzzed, Probe(api.server, api.devices["probe"][0]), LogWatch(api.server),
               ids)


# Device ids are drawn from the seeded ones at run time (st.data): a hello that names a
# real device reaches the signature check.
@budget(2)
@given(data=st.data())
def test_any_frames_before_the_handshake(rig: Rig, data: st.DataObject) -> None:
    sent = data.draw(frames(rig.device_ids), label="frames")
    rig.play(sent, "hello")


@budget(2)
@given(data=st.data())
def test_any_frames_after_a_valid_hello(rig: Rig, data: st.DataObject) -> None:
    """A well-formed hello of a real device first, so the fuzzed frames meet AWAIT_AUTH."""
    dev = data.draw(st.sampled_from(rig.device_ids), label="device")
    hello = encode({"type": "hello", "protocol": 1, "device_id": dev,
                    "nonce": random_nonce()}, True, False)
    sent = [hello, *data.draw(frames(rig.device_ids, 4), label="frames")]
    rig.play(sent, "hello")


@budget(3)
@given(data=st.data())
def test_any_frames_after_the_handshake(rig: Rig, data: st.DataObject) -> None:
    sent = data.draw(frames(rig.device_ids, 8), label="frames")
    rig.play(sent, "ready", rig.fuzzed)


def test_storage_is_gap_free_after_fuzzing(rig: Rig) -> None:
    """Every stream the fuzzed sessions wrote holds seqs 1..head without a hole."""
    api = rig.api
    with api.as_device(rig.fuzzed) as http:
        streams = http.get("/streams").json()
        for s in streams:
            seqs: list[int] = []
            after = 0
            while True:
                r = http.get(f"/streams/{s['stream']}/events",
                             params={"after": after, "limit": 1000})
                assert r.status_code == 200, r.text
                page = r.json()["events"]
                if not page:
                    break
                seqs += [e["seq"] for e in page]
                after = page[-1]["seq"]
            assert seqs == list(range(1, s["head_seq"] + 1)), s
    assert httpx.get(api.url + "/status", timeout=10).json()["status"] == "ok"
    rig.log.assert_clean()
