"""``relaybox pair USER``: a pairing code, its expiry, a QR code of the web app's pairing
link, and the claim command for a terminal device."""

from __future__ import annotations

import io
import shlex
import time

import click

from relaybox.cli.common import (
    emit_json,
    open_db,
    out,
    relay_errors,
    server_urls,
    settings_for,
)
from relaybox.cli.safe import markup, visible
from relaybox.protocol.encoding import check_name, format_ts


def claim_line(code: str, url: str, name: str) -> str:
    """The command the new device runs (docs/client.md)."""
    return (f"relaybox client pair {code} --server {shlex.quote(url)} "
            f"--name {shlex.quote(name)}")


def pair_link(code: str, url: str) -> str:
    """The web app's pairing link (docs/client-js.md): the code rides in the fragment,
    which a browser never sends, so it stays out of server and proxy logs."""
    return f"{url}/app/#pair={code}"


def _needs_https(url: str) -> bool:
    """True when a phone opening ``url`` gets no WebCrypto: plain http to another host."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1")


def qr_text(data: str) -> str:
    """A QR code drawn with Unicode half blocks (two modules per character cell)."""
    import qrcode

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(data)
    qr.make(fit=True)
    buf = io.StringIO()
    # invert: light modules print as blocks, which scans on the usual dark terminal.
    qr.print_ascii(out=buf, invert=True)
    return buf.getvalue()


def _default_name(user_name: str, n: int) -> str:
    """``USER-deviceN``, or ``deviceN`` when that would break the name rule (a long
    user name, or one stored before the rule)."""
    name = f"{user_name}-device{n}"
    try:
        return check_name(name)
    except ValueError:
        return f"device{n}"


def register(cli: click.Group) -> None:
    @cli.command("pair")
    @click.argument("user_ref", metavar="USER")
    @click.option("--ttl", type=click.IntRange(60, 3600), metavar="SECONDS",
                  help="Lifetime of the code (60-3600; setting: auth.pairing_ttl_s).")
    @click.option("--name", "device_name", metavar="NAME",
                  help="Device name to put in the claim command (default USER-deviceN).")
    @click.option("--no-qr", is_flag=True, help="Do not draw the QR code.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @relay_errors
    def pair(user_ref: str, ttl: int | None, device_name: str | None, no_qr: bool,
             as_json: bool) -> None:
        """Make a code that pairs a device with USER.

        The code is single use and short lived. Prints a QR code of the web app's
        pairing link (scan it with a phone), the link itself, and the claim command
        for a terminal device.
        """
        from relaybox.services.devices import valid_name
        from relaybox.services.pairing import code_for_user

        if device_name is not None:
            valid_name(device_name)  # the claim would refuse it (api.md Devices)
        settings = settings_for()
        db = open_db(settings)
        try:
            made = code_for_user(db, user_ref, ttl_s=ttl, settings=settings)
        finally:
            db.close()
        code, expires_at, user_name = made.code, made.expires_at, made.user_name
        # Devices use public_url (the proxy) when set; else where this server listens.
        url = settings.public_url.rstrip("/") or server_urls(settings)[0]
        link = pair_link(code, url)
        if as_json:
            emit_json({"code": code, "expires_at": format_ts(expires_at), "user": user_name,
                       "link": link})
            return
        line = claim_line(code, url, device_name or _default_name(user_name, made.devices + 1))
        left = max(0, round(expires_at / 1000 - time.time()))
        local = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(expires_at / 1000))
        out.print(f"Pairing code for [bold]{markup(user_name)}[/]: [bold yellow]{code}[/]")
        out.print(f"  expires {local} (in {left // 60} min {left % 60} s); single use")
        if not no_qr:
            click.echo(qr_text(link), nl=False)
        out.print("On a phone or browser: scan the QR code, or open")
        # Plain echo: rich would wrap or restyle a line meant to be copied exactly.
        # visible: public_url comes from the config file and is printed too.
        click.echo(f"  {visible(link)}")
        if _needs_https(url):
            out.print("  [yellow]note:[/] browsers allow the web app only over https (or on "
                      "localhost): set tls.cert_file and tls.key_file, or public_url behind "
                      "a TLS proxy (docs/deployment.md, TLS)")
        out.print("On a terminal device run:")
        click.echo(f"  {visible(line)}")
