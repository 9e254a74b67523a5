"""``relaybox serve`` over the server runner: a server that cannot start says why in one
line and leaves nothing behind."""

from __future__ import annotations

import logging
from pathlib import Path

import psutil

from tests.cli.helpers import assert_error, run
from tests.support import free_port


def test_a_server_that_cannot_start_says_why_and_leaves_nothing_behind(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"RELAYBOX_TLS_CERT_FILE": str(tmp_path / "missing.pem"),
           "RELAYBOX_TLS_KEY_FILE": str(tmp_path / "missing.key")}
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    relaybox_logger = logging.getLogger("relaybox")
    saved = relaybox_logger.handlers[:], relaybox_logger.propagate, relaybox_logger.level
    try:
        r = run(data, "serve", "--port", str(free_port()), env=env)
    finally:
        relaybox_logger.handlers[:], relaybox_logger.propagate = saved[0], saved[1]
        relaybox_logger.setLevel(saved[2])
    assert_error(r, "tls.cert_file", "no such file")
    assert not data.exists()  # refused before the data dir was set up
    # The writer process the runner starts first, ahead of everything else, is ended.
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children
