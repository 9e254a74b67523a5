"""The JavaScript SDK's unit tests (node --test), and the vectors they check against."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from relaybox.protocol.encoding import b64url_decode
from tests.web import vectors

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def test_committed_vectors_are_what_the_python_core_makes() -> None:
    # Regenerate with: python -m tests.web.vectors > tests/web/sdk/vectors.json
    assert (HERE / "sdk" / "vectors.json").read_text() == vectors.render()


@pytest.mark.parametrize("text", vectors.vectors()["b64url_invalid_32"])
def test_invalid_base64url_vectors_are_refused_by_python_too(text: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode(text, 32)


def _node_major() -> int:
    if shutil.which("node") is None:
        return 0
    out = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
    return int(out.strip().lstrip("v").split(".")[0] or 0)


# Node 20 has WebCrypto (Ed25519 included) as a global, like a browser.
@pytest.mark.skipif(_node_major() < 20, reason="needs Node.js 20 or newer")
def test_node_unit_tests_pass() -> None:
    proc = subprocess.run(["node", "--test", "tests/web/sdk/"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "# fail 0" in out and "# pass " in out, out[-2000:]
    # The test count in pytest's output, for the CI log.
    print(next(line for line in out.splitlines() if line.startswith("# pass")))
