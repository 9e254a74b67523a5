"""Shapes of URL settings: Sentinel ``redis_url`` parsing, and URLs with the password hidden."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

#: ``redis_url`` schemes naming Redis Sentinels and a master instead of one Redis.
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel", "sentinel")
SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """``redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/master[/db]``
    (``rediss+sentinel`` for TLS to the master; ``sentinel`` is ``redis+sentinel``).
    The password is the master's; ``?sentinel_password=…`` is the Sentinels' own."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False
    options: tuple[tuple[str, str], ...] = ()  # other query parameters (ssl_ca_certs=…)


def sentinel_url(url: str) -> SentinelURL:
    """Parse a Sentinel ``redis_url``; ValueError says what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SENTINEL_SCHEMES)}")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(pw) if colon else None
    sentinels = []
    for item in hosts.split(","):
        item = item.strip()
        if item.startswith("["):  # [IPv6]:port
            host, _, port = item[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        if not host:
            raise ValueError("a Sentinel host is missing (host[:port],host[:port]…)")
        if port and not (port.isdecimal() and 0 < int(port) < 65536):
            raise ValueError(f"Sentinel port {port!r} out of range")
        sentinels.append((host, int(port) if port else SENTINEL_PORT))
    master, _, db = path.partition("/")
    if not master:
        raise ValueError("the master name is missing (…/mymaster)")
    if db and not db.isdecimal():
        raise ValueError(f"database {db!r} is not a number")
    options = []
    sentinel_password = None
    for pair in filter(None, query.split("&")):
        key, _, value = pair.partition("=")
        if key == "sentinel_password":
            sentinel_password = unquote(value)
        else:
            options.append((unquote(key), unquote(value)))
    return SentinelURL(tuple(sentinels), unquote(master), int(db or 0), username, password,
                       sentinel_password, scheme.startswith("rediss"), tuple(options))


def mask_url(url: str) -> str:
    """Hide the password of a URL."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<malformed URL>"
    if password:
        return url.replace(f":{password}@", ":***@", 1)
    return url

