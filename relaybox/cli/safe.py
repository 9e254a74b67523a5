"""Terminal-safe rendering: user data reaches rich or stdout only through these helpers."""

from __future__ import annotations

import json
import re
from typing import Any

from rich.markup import escape
from rich.text import Text

from relaybox.protocol.encoding import HIDDEN_RE

# security.md "Terminal output and names": names, keys, bodies, stream names and server
# answers are printed on the admin's terminal, so none of their characters may act on
# it. HIDDEN_RE is the set the name rule refuses; names stored before the rule, and
# everything from the wire, are shown with those characters as visible escapes.


def _escape_char(match: re.Match[str]) -> str:
    """``\\x1b``, ``\\u202e`` or ``\\U000e0041``: the character's Python escape."""
    n = ord(match.group())
    if n <= 0xFF:
        return f"\\x{n:02x}"
    if n <= 0xFFFF:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def visible(value: object) -> str:
    """``value`` as text with every control, bidi, zero-width or other invisible
    character written as a visible escape, so that it cannot move the cursor, restyle,
    hyperlink, reorder or hide anything. No markup escaping: for plain output
    (``click.echo``) and for ``rich.text.Text``."""
    text = value if isinstance(value, str) else str(value)
    return HIDDEN_RE.sub(_escape_char, text)


def markup(value: object) -> str:
    """``value`` for inside a rich markup string: visible, and no bracket of it is markup."""
    return escape(visible(value))


def cell(value: object, style: str = "") -> Text:
    """``value`` as rich Text, which is never parsed as markup: for table cells."""
    return Text(visible(value), style=style)


def _json_escape(match: re.Match[str]) -> str:
    ch = match.group()
    n = ord(ch)
    if n < 0x20:
        # json.dumps escapes these inside strings already; outside them they are the
        # newlines of ``indent``.
        return ch
    if n <= 0xFFFF:
        return f"\\u{n:04x}"
    n -= 0x10000  # JSON spells an astral character as an escaped surrogate pair
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def json_text(doc: Any, **kw: Any) -> str:
    """``json.dumps(doc, ensure_ascii=False, **kw)``, terminal-safe: hidden characters
    (DEL too, which even ``ensure_ascii`` leaves raw) are written as ``\\uXXXX``
    escapes, so the text still decodes to exactly ``doc``."""
    kw.setdefault("ensure_ascii", False)
    return HIDDEN_RE.sub(_json_escape, json.dumps(doc, **kw))
