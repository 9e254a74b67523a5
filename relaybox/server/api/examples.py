"""Example values shown in the OpenAPI document (Swagger UI at /docs)."""

from __future__ import annotations

from typing import Any, Final

DEVICE_ID: Final = "0192f1c2-7a4b-7c3d-8e9f-a0b1c2d3e4f5"
USER_ID: Final = "0192f1c0-1111-7222-8333-444455556666"
SERVER_ID: Final = "0192f1b0-aaaa-7bbb-8ccc-dddddddddddd"
TS: Final = "2026-11-25T16:52:52.123Z"

TOKEN_REQUEST: Final[dict[str, Any]] = {
    "device_id": DEVICE_ID, "timestamp": 1795625572,
    "nonce": "q1w2e3r4t5y6u7i8o9p0aA",
    "signature": "x" * 85 + "A",
}
TOKEN_PAIR: Final[dict[str, Any]] = {
    "access_token": "eyJhbGciOiJIUzI1NiIsImtpZCI6IjFhMmIzYzRkIiwidHlwIjoiSldUIn0.e30.sig",
    "token_type": "Bearer", "expires_in": 900,
    "refresh_token": "rbr_3q2-7wEXAMPLEonlyNotARealToken0123456789ab",
}
REFRESH_REQUEST: Final = {"refresh_token": TOKEN_PAIR["refresh_token"]}
VERIFY: Final = {"user_id": USER_ID, "device_id": DEVICE_ID, "expires_at": TS}
DEVICE: Final[dict[str, Any]] = {
    "device_id": DEVICE_ID, "name": "laptop", "created_at": TS, "last_seen_at": TS,
    "online": True, "revoked": False,
}
PAIRING_OPTIONS: Final = {"payload": "welcome to the family relay", "ttl_s": 600}
PAIRING_CODE: Final = {"code": "7K3M-9QXR", "expires_at": TS}
LOOKUP: Final[dict[str, Any]] = {
    "user_name": "alice", "inviter": {"device_id": DEVICE_ID, "name": "laptop"},
    "payload": "welcome to the family relay", "expires_at": TS, "server_id": SERVER_ID,
}
CLAIM: Final = {"code": "7K3M-9QXR", "public_key": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
                "name": "phone"}
CLAIMED: Final = {"device_id": DEVICE_ID, "user_id": USER_ID, "server_id": SERVER_ID}
STREAM: Final = {"stream": "clipboard", "head_seq": 42, "floor_seq": 0, "acked_seq": 40}
EVENT: Final[dict[str, Any]] = {
    "type": "event", "stream": "clipboard", "seq": 42,
    "id": "0192f1c3-0000-7000-8000-000000000001", "from": DEVICE_ID, "key": None, "ts": TS,
    "body": {"text": "hello"},
}
EVENTS_PAGE: Final = {"events": [EVENT], "head_seq": 42, "floor_seq": 0}
PUBLISH: Final[dict[str, Any]] = {"id": "0192f1c3-0000-7000-8000-000000000001",
                                  "body": {"text": "hello"}}
PUBLISHED: Final = {"id": PUBLISH["id"], "stream": "clipboard", "seq": 42, "ts": TS}
REVOKE: Final = {"device_id": DEVICE_ID, "reason": "lost on a train"}
REVOKED: Final[dict[str, Any]] = {"device_id": DEVICE_ID, "user_id": USER_ID, "name": "phone",
                                  "revoked_at": TS, "reason": "lost on a train"}
USER: Final = {"user_id": USER_ID, "name": "alice", "created_at": TS}
STATUS: Final[dict[str, Any]] = {
    "status": "ok", "version": "0.1.0", "server_id": SERVER_ID, "uptime_s": 12.5,
    "database": "ok", "redis": "ok", "connections": 2,
}
LIVE: Final[dict[str, Any]] = {"status": "ok"}
READY: Final[dict[str, Any]] = {"status": "ready", "database": "ok", "redis": "ok"}
