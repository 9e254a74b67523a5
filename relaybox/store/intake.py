"""What the database would refuse in a publish, found before its batch is written.

A group commit writes the publishes of many devices (and their cursors and touches) in
one transaction, so one value that the database refuses would fail all of them. Every
publish is checked here first, in the writer, for what SQLite or PostgreSQL would
refuse: a NUL character in a text column (PostgreSQL refuses it, SQLite cuts the text
at it), a lone surrogate (not UTF-8), a value longer than its ``varchar`` column, a
field of the wrong type. Such a publish is answered ``invalid`` (protocol.md §3 Publish)
and the rest of its batch is written as usual. The event log's fallback (writing a
refused batch again item by item) covers whatever this misses.
"""

from __future__ import annotations

from typing import Any, Final

from relaybox.store.models import Event

_USER_ID_CHARS: Final = int(Event.user_id.max_length)
_STREAM_CHARS: Final = int(Event.stream.max_length)
_DEVICE_ID_CHARS: Final = int(Event.device_id.max_length)
_CLIENT_ID_CHARS: Final = int(Event.client_id.max_length)
MAX_KEY_BYTES: Final = 256  # protocol.md §3 Publish


def _text_problem(name: str, value: object, max_chars: int | None) -> str | None:
    if type(value) is not str:
        return f"{name} must be text"
    if max_chars is not None and len(value) > max_chars:  # varchar(n) counts characters
        return f"{name} is longer than {max_chars} characters"
    if "\x00" in value:
        return f"{name} contains a NUL character (U+0000)"
    # An ASCII string (the common case, an O(1) test) is valid UTF-8.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{name} is not valid UTF-8 (a lone surrogate)"
    return None


def publish_problem(req: Any) -> str | None:
    """Why the database would refuse to store ``req`` (a ``PublishRequest``), or None.

    A body is JSON text as encoded by the protocol core: a NUL inside a JSON string is
    the six characters ``\\u0000`` there, which every database stores; only a raw NUL
    (never made by a JSON encoder) is refused.
    """
    problem = (_text_problem("stream", req.stream, _STREAM_CHARS)
               or _text_problem("id", req.client_id, _CLIENT_ID_CHARS)
               or _text_problem("body", req.body, None)
               or _text_problem("user_id", req.user_id, _USER_ID_CHARS))
    if problem is not None:
        return problem
    if req.device_id is not None:
        problem = _text_problem("device_id", req.device_id, _DEVICE_ID_CHARS)
        if problem is not None:
            return problem
    key = req.key
    if key is not None:
        problem = _text_problem("key", key, None)
        if problem is not None:
            return problem
        # protocol.md §3 Publish; a key much longer would not fit in an index row.
        if len(key) > MAX_KEY_BYTES // 4 and len(key.encode("utf-8")) > MAX_KEY_BYTES:
            return f"key is longer than {MAX_KEY_BYTES} UTF-8 bytes"
    base_seq = req.base_seq
    # base_seq is compared in Python and never bound into SQL, so any integer ≥ 0 is fine.
    if base_seq is not None and (type(base_seq) is not int or base_seq < 0):
        return "base_seq must be an integer >= 0"
    return None
