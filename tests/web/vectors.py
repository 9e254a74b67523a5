"""Test vectors for the JavaScript SDK, made by the Python protocol core.

``python -m tests.web.vectors > tests/web/sdk/vectors.json`` writes them; the node tests
(tests/web/sdk/) check the SDK's signing strings and Ed25519 signatures against them, and
tests/web/test_sdk_node.py checks that the committed file is what this module makes.
"""

from __future__ import annotations

import json
from typing import Any

from nacl.signing import SigningKey

from relaybox.protocol.encoding import b64url_encode
from relaybox.protocol.handshake import gateway_signing_bytes, token_signing_bytes

# Fixed inputs: Ed25519 is deterministic, so the signatures are fixed too.
_CASES = [
    {"seed": bytes(range(32)), "server_id": "01a213ec-2790-704e-adba-582b4cff3309",
     "session_id": "01a213ec-2791-7a00-8c3d-0f1e2d3c4b5a",
     "device_id": "01a213ec-27a0-7b11-9f00-112233445566",
     "client_nonce": b64url_encode(bytes([1] * 32)),
     "server_nonce": b64url_encode(bytes([255] * 32)),
     "timestamp": 1_796_000_000, "token_nonce": b64url_encode(bytes(range(24)))},
    {"seed": bytes([7] * 32), "server_id": "0192f1c2-7a4b-7c3d-8e9f-a0b1c2d3e4f5",
     "session_id": "0192f1c2-7a4b-7c3d-8e9f-000000000001",
     "device_id": "0192f1c2-7a4b-7c3d-8e9f-ffffffffffff",
     "client_nonce": b64url_encode(bytes(range(100, 132))),
     "server_nonce": b64url_encode(bytes(range(200, 232))),
     "timestamp": 0, "token_nonce": b64url_encode(bytes([0xFB] * 16))},
]


def vectors() -> dict[str, Any]:
    out = []
    for case in _CASES:
        key = SigningKey(case["seed"])
        gw = gateway_signing_bytes(case["server_id"], case["session_id"], case["device_id"],
                                   case["client_nonce"], case["server_nonce"])
        tok = token_signing_bytes(case["server_id"], case["device_id"], case["timestamp"],
                                  case["token_nonce"])
        out.append({
            **{k: v for k, v in case.items() if k != "seed"},
            "seed": b64url_encode(case["seed"]),
            "public_key": b64url_encode(bytes(key.verify_key)),
            "gateway_bytes": b64url_encode(gw),
            "gateway_signature": b64url_encode(key.sign(gw).signature),
            "token_bytes": b64url_encode(tok),
            "token_signature": b64url_encode(key.sign(tok).signature),
        })
    # base64url: (bytes as hex, text) pairs, and texts the strict decoder must refuse.
    b64 = [(bytes(range(n)).hex(), b64url_encode(bytes(range(n)))) for n in (0, 1, 2, 3, 32)]
    b64.append(((b"\xfb\xff\xfe" * 11).hex(), b64url_encode(b"\xfb\xff\xfe" * 11)))
    return {"cases": out, "b64url": b64,
            "b64url_invalid_32": ["A" * 42 + "=", "A" * 42, "A" * 44, "+" * 43,
                                  "A" * 42 + "B"]}


def render() -> str:
    return json.dumps(vectors(), indent=2) + "\n"


if __name__ == "__main__":
    print(render(), end="")
