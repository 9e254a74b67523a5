"""Wire encodings: base64url, UUIDs, timestamps, stream names and exact JSON."""

from __future__ import annotations

import base64
import functools
import json
import math
import re
import secrets
import time
from typing import Final, TypeGuard

import orjson

__all__ = [
    "STREAM_NAME_RE",
    "b64url_decode",
    "b64url_encode",
    "dumps",
    "dumps_bytes",
    "format_ts",
    "is_system_stream",
    "is_valid_stream",
    "loads",
    "now_ms",
    "parse_uuid",
    "random_nonce",
    "uuid4",
    "uuid7",
]

# --- base64url (protocol.md §1: no padding, exact length) -------------------

_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    """Encode ``data`` as base64url without padding (RFC 4648 §5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, length: int) -> bytes:
    """Decode strict unpadded base64url that must yield exactly ``length`` bytes.

    Raises ValueError for padding, whitespace, characters outside the
    alphabet, a wrong length, or non-zero unused trailing bits (protocol.md §1).
    """
    if not isinstance(text, str):
        raise ValueError("base64url value must be a string")
    # Unpadded length of ``length`` bytes: 4 characters per 3 bytes, rounded up.
    if len(text) != (length * 4 + 2) // 3 or _B64URL_RE.fullmatch(text) is None:
        raise ValueError(f"not unpadded base64url of {length} bytes")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # A canonical encoding has zero unused bits; re-encoding must give the input back.
    if len(data) != length or b64url_encode(data) != text:
        raise ValueError(f"not canonical base64url of {length} bytes")
    return data


def random_nonce(size: int = 32) -> str:
    """A fresh random nonce of ``size`` bytes as base64url (protocol.md §2 step 2)."""
    return b64url_encode(secrets.token_bytes(size))


# --- UUIDs (protocol.md §1: canonical lowercase) -----------------------------

# RFC 4122 / 9562 variant: the variant nibble is 8, 9, a or b.
_UUID_RE: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def parse_uuid(value: object, versions: frozenset[int] | None = None) -> str:
    """Return ``value`` if it is a canonical lowercase UUID string, else raise ValueError.

    With ``versions``, the UUID version nibble must be one of them.
    """
    if not isinstance(value, str) or _UUID_RE.fullmatch(value) is None:
        raise ValueError("not a canonical lowercase UUID")
    if versions is not None and int(value[14], 16) not in versions:
        raise ValueError(f"UUID version must be one of {sorted(versions)}")
    return value


def _format_uuid(value: int) -> str:
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7() -> str:
    """A new time-ordered UUIDv7 (RFC 9562 §5.7).

    The 12 ``rand_a`` bits carry the sub-millisecond fraction (RFC 9562 §6.2
    method 3), so ids sort by creation time below the millisecond too.
    """
    ns = time.time_ns()
    ms, sub_ns = divmod(ns, 1_000_000)
    rand_a = (sub_ns << 12) // 1_000_000
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | secrets.randbits(62)
    )
    return _format_uuid(value)


def uuid4() -> str:
    """A new random UUIDv4 (RFC 9562 §5.4)."""
    value = secrets.randbits(128)
    value = (value & ~(0xF << 76)) | 0x4 << 76
    value = (value & ~(0b11 << 62)) | 0b10 << 62
    return _format_uuid(value)


# --- time (protocol.md §1: RFC 3339 UTC with milliseconds) -------------------


def now_ms() -> int:
    """The current Unix time in whole milliseconds."""
    return time.time_ns() // 1_000_000


@functools.lru_cache(maxsize=256)
def format_ts(ms: int) -> str:
    """Format Unix milliseconds as ``2026-11-25T16:52:52.123Z``. Cached: every event of a
    commit batch has the same ``ts``, so catch-up reads format each one once."""
    seconds, millis = divmod(ms, 1000)
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
        f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{millis:03d}Z"
    )


# --- stream names (protocol.md §3) -------------------------------------------

STREAM_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def is_valid_stream(name: object) -> TypeGuard[str]:
    """True if ``name`` is a string matching the stream name rule."""
    # fullmatch: "$" alone would also accept a trailing newline.
    return isinstance(name, str) and STREAM_NAME_RE.fullmatch(name) is not None


def is_system_stream(name: str) -> bool:
    """True for the reserved ``sys.`` streams that only the server writes."""
    return name.startswith("sys.")


# --- JSON ---------------------------------------------------------------------

# orjson reads integers outside [-2**63, 2**64) as floats, silently losing
# digits. Every such integer has at least 19 digits, so a run of 19 digits
# sends the input to the exact (slower) stdlib parser. Strings with long
# digit runs take the slow path too, which is only slower, never wrong.
# bytes.translate + "in" scans ~10x faster than re.search("[0-9]{19}").
_DIGIT_MAP: Final = bytes(1 if 0x30 <= i <= 0x39 else 0 for i in range(256))
_DIGIT_RUN: Final = b"\x01" * 19


def _has_long_digit_run(data: bytes) -> bool:
    return _DIGIT_RUN in data.translate(_DIGIT_MAP)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


#: Arrays and objects nested deeper than this are refused, as orjson (the fast path)
#: refuses them; stdlib json's own limit is the interpreter's recursion limit, which
#: differs between Python versions.
MAX_DEPTH = 1024


def _check_unicode(obj: object) -> None:
    """Reject lone surrogates, which stdlib json lets through but orjson does not, and
    nesting past MAX_DEPTH."""
    stack: list[tuple[object, int]] = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")  # UnicodeEncodeError is a ValueError
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise ValueError("JSON nested too deeply")
            if isinstance(item, dict):
                stack.extend((k, depth + 1) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def _exact_loads(text: str) -> object:
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    _check_unicode(obj)
    return obj


def loads(data: str | bytes) -> object:
    """Parse JSON exactly: big integers survive, NaN and infinities raise ValueError."""
    # Lone surrogates in a str raise UnicodeEncodeError (a ValueError) here.
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if not _has_long_digit_run(raw):
        return orjson.loads(raw)
    # Strict UTF-8: stdlib json would otherwise sniff UTF-16/32 from bytes.
    return _exact_loads(raw.decode("utf-8"))


def _exact_dumps(obj: object) -> str:
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    text.encode("utf-8")  # lone surrogates: UnicodeEncodeError (a ValueError)
    return text


def dumps_bytes(obj: object) -> bytes:
    """Compact UTF-8 JSON of ``obj`` (non-ASCII unescaped), big integers exact."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        # Integers beyond 64 bits or nesting beyond orjson's limit.
        return _exact_dumps(obj).encode("utf-8")


def dumps(obj: object) -> str:
    """Compact JSON text of ``obj`` (non-ASCII unescaped), big integers exact.

    Raises TypeError for values JSON cannot represent and ValueError for
    structures nested too deeply. orjson writes NaN and infinities as null;
    ``loads`` never produces them.
    """
    try:
        return orjson.dumps(obj).decode("utf-8")
    except orjson.JSONEncodeError:
        return _exact_dumps(obj)


# --- names shown to people (api.md Devices: Names) ---------------------------

NAME_MAX_CHARS: Final = 64
# Characters that hide, reorder or restyle text on a screen instead of showing as
# themselves (security.md "Terminal output and names"), as regex class text that
# Python, pydantic and JSON Schema (ECMA-262) read alike: C0 controls, DEL, C1
# controls, soft hyphen, Arabic letter mark, Mongolian vowel separator, zero-width
# characters and LRM/RLM, line and paragraph separators, bidi embeddings and
# overrides, word joiner, invisible operators and bidi isolates, BOM, interlinear
# annotation.
HIDDEN_CHARS: Final = (r"\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e"
                       r"\u2060-\u206f\ufeff\ufff9-\ufffb")
# Beyond what a JSON Schema pattern can name: the invisible tag characters, and lone
# surrogates (a command line argument that is not UTF-8 arrives as them).
HIDDEN_RE: Final = re.compile(f"[{HIDDEN_CHARS}\\U000e0000-\\U000e007f\\ud800-\\udfff]")


def check_name(name: object, max_chars: int = NAME_MAX_CHARS) -> str:
    """Return ``name`` if it is a valid name for people to read, else raise ValueError.

    Names are 1 to ``max_chars`` characters, none of them in HIDDEN_RE. The message
    names the first bad character by code point and never repeats the name itself.
    """
    if not isinstance(name, str):
        raise ValueError("a name must be a string")
    if not 1 <= len(name) <= max_chars:
        raise ValueError(f"names are 1-{max_chars} characters")
    bad = HIDDEN_RE.search(name)
    if bad is not None:
        raise ValueError("names may not contain control, bidirectional or invisible "
                         f"characters (found U+{ord(bad.group()):04X})")
    return name
