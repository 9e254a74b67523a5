"""TLS for ``relaybox serve``: the server context from tls.cert_file / tls.key_file, reloaded
in place on SIGHUP (docs/deployment.md "TLS")."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from relaybox.config import Settings

__all__ = ["TlsError", "describe", "reload", "server_context"]

log = logging.getLogger("relaybox.server")


class TlsError(Exception):
    """The certificate or key cannot be used; the message says which file and why."""


def _load(ctx: ssl.SSLContext, settings: Settings) -> None:
    cert, key = Path(settings.tls_cert_file), Path(settings.tls_key_file)
    for what, path in (("tls.cert_file", cert), ("tls.key_file", key)):
        if not path.is_file():
            raise TlsError(f"{what} = {str(path)!r}: no such file")
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"tls.cert_file / tls.key_file: cannot load {cert} with {key}: "
                       f"{getattr(exc, 'reason', None) or exc}") from None


def server_context(settings: Settings) -> ssl.SSLContext:
    """A server-side context with the configured pair: TLS 1.2 or newer, HTTP/1.1."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # The gateway is a WebSocket over HTTP/1.1 (docs/protocol.md "Transport").
    ctx.set_alpn_protocols(["http/1.1"])
    _load(ctx, settings)
    return ctx


def reload(ctx: ssl.SSLContext, settings: Settings) -> bool:
    """Load the files again into ``ctx``: handshakes from now on use the new pair, open
    connections keep theirs. On failure the old pair stays and the reason is logged."""
    try:
        _load(ctx, settings)
    except TlsError as exc:
        log.error("TLS reload failed, keeping the previous certificate: %s", exc)
        return False
    log.info("TLS certificate reloaded from %s", settings.tls_cert_file)
    return True


def describe(settings: Settings) -> str:
    """One line for logs: which certificate, for which names, until when."""
    try:
        info = ssl._ssl._test_decode_cert(settings.tls_cert_file)  # type: ignore[attr-defined]
    except Exception:  # only for display
        return settings.tls_cert_file
    names = [v for k, v in info.get("subjectAltName", ()) if k in ("DNS", "IP Address")]
    return f"{settings.tls_cert_file} ({', '.join(names) or 'no names'}; until " \
           f"{info.get('notAfter', '?')})"
