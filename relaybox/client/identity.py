"""The device identity: server URL, ids and private key, kept in a private JSON file."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from nacl.signing import SigningKey

from relaybox.client.errors import IdentityError
from relaybox.protocol.encoding import b64url_decode, b64url_encode, parse_uuid

__all__ = [
    "DEFAULT_IDENTITY_PATH",
    "Identity",
    "normalize_server_url",
    "write_private_json",
]

IDENTITY_VERSION: Final = 1
SEED_BYTES: Final = 32
# Per-user config location, so one device key serves every working directory.
DEFAULT_IDENTITY_PATH: Final = Path("~/.config/relaybox/identity.json")
_SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def normalize_server_url(url: str) -> str:
    """The server's base URL as ``http(s)://host[:port][/prefix]``.

    ``ws(s)://`` is accepted and mapped to ``http(s)://``; a trailing
    ``/api/v1/gateway`` or ``/api/v1`` is dropped, so any of the URLs a user
    may copy from a browser or a config works.
    """
    text = url.strip()
    parts = urlsplit(text)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise IdentityError(f"not a server URL: {url!r} (expected http://HOST:PORT)")
    if parts.query or parts.fragment:
        raise IdentityError(f"a server URL has no query or fragment: {url!r}")
    path = parts.path.rstrip("/")
    for suffix in ("/api/v1/gateway", "/api/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    try:
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError:
        raise IdentityError(f"bad port in server URL: {url!r}") from None
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def write_private_json(path: Path, doc: Any) -> None:
    """Write ``doc`` as JSON readable only by the owner, atomically.

    The temporary file is created with mode 0600 by ``mkstemp`` (never wider,
    not even for a moment), flushed to disk, then renamed over ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable (POSIX); not possible everywhere.
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def check_private(path: Path) -> None:
    """Refuse a file that users other than its owner may read or write."""
    if os.name != "posix":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise IdentityError(
            f"{path} is accessible by other users (mode {mode:04o}); it holds a private key: "
            f"run 'chmod 600 {path}'"
        )


@dataclass(frozen=True)
class Identity:
    """Everything a device needs to reach its server and prove who it is."""

    server: str  # base URL, http(s)://host[:port][/prefix]
    server_id: str
    device_id: str
    user_id: str
    private_key: bytes = field(repr=False)  # the 32-byte Ed25519 seed
    name: str | None = None
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if len(self.private_key) != SEED_BYTES:
            raise IdentityError("the private key must be a 32-byte Ed25519 seed")

    # -- keys ------------------------------------------------------------------------------
    @property
    def signing_key(self) -> SigningKey:
        return SigningKey(self.private_key)

    @property
    def public_key(self) -> str:
        """The public key as base64url, as sent when claiming a pairing code."""
        return b64url_encode(bytes(self.signing_key.verify_key))

    def sign(self, message: bytes) -> str:
        """A detached Ed25519 signature of ``message`` as base64url."""
        return b64url_encode(self.signing_key.sign(message).signature)

    # -- URLs -------------------------------------------------------------------------------
    @property
    def gateway_url(self) -> str:
        """``ws(s)://…/api/v1/gateway`` for this server (protocol.md §1)."""
        parts = urlsplit(self.server)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path + "/api/v1/gateway", "", ""))

    def api_url(self, path: str) -> str:
        """The absolute URL of a REST route, e.g. ``api_url("/devices")``."""
        return f"{self.server}/api/v1{path}"

    @property
    def state_path(self) -> Path | None:
        """Where event positions are kept next to the identity file (None if not from a file)."""
        if self.path is None:
            return None
        return self.path.with_name(self.path.stem + ".cursors.json")

    # -- file ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": IDENTITY_VERSION,
            "server": self.server,
            "server_id": self.server_id,
            "device_id": self.device_id,
            "user_id": self.user_id,
            "name": self.name,
            "private_key": b64url_encode(self.private_key),
        }

    @classmethod
    def from_json(cls, doc: object, path: Path | None = None) -> Identity:
        where = f" in {path}" if path else ""
        if not isinstance(doc, dict):
            raise IdentityError(f"the identity{where} is not a JSON object")
        if doc.get("version", IDENTITY_VERSION) != IDENTITY_VERSION:
            raise IdentityError(f"unsupported identity version {doc.get('version')!r}{where}")
        try:
            server = normalize_server_url(str(doc["server"]))
            ids = {k: parse_uuid(doc[k]) for k in ("server_id", "device_id", "user_id")}
            key = b64url_decode(doc["private_key"], SEED_BYTES)
        except KeyError as exc:
            raise IdentityError(f"the identity{where} has no {exc.args[0]!r}") from None
        except ValueError as exc:
            raise IdentityError(f"the identity{where} is malformed: {exc}") from None
        name = doc.get("name")
        return cls(server=server, private_key=key, name=name if isinstance(name, str) else None,
                   path=path, **ids)

    def save(self, path: Path | str) -> Identity:
        """Write the identity (mode 0600, atomically); returns it bound to ``path``."""
        p = Path(path).expanduser()
        try:
            write_private_json(p, self.to_json())
        except OSError as exc:
            raise IdentityError(f"cannot write the identity file {p}: {exc.strerror}") from None
        return dataclasses.replace(self, path=p)

    @classmethod
    def load(cls, path: Path | str) -> Identity:
        """Read an identity file; refuse one that others may read (it holds a private key)."""
        p = Path(path).expanduser()
        try:
            check_private(p)
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise IdentityError(f"no identity file at {p}") from None
        except OSError as exc:
            raise IdentityError(f"cannot read the identity file {p}: {exc.strerror}") from None
        try:
            doc = json.loads(text)
        except ValueError:
            raise IdentityError(f"the identity file {p} is not valid JSON") from None
        return cls.from_json(doc, p)
