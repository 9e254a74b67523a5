"""The browser side: the web app at /app/, the JavaScript SDK, Swagger UI at /docs.

Every file comes from the installed package (``relaybox/web/``), never a CDN
(docs/client-js.md). Pages carry a Content-Security-Policy that lets them load only
from this server, plus ``X-Content-Type-Options`` and ``Referrer-Policy``.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

from sanic import Request, Sanic
from sanic.response import HTTPResponse, raw, redirect
from sanic_ext.extensions.openapi import openapi

from relaybox.errors import NotFound

__all__ = ["SDK_PATH", "install", "security_headers"]

SDK_PATH: Final = "/sdk/relaybox.js"  # stable: other pages import the SDK from here
_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml", ".png": "image/png", ".json": "application/json",
    ".webmanifest": "application/manifest+json", ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
_HOST_RE: Final = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self'; "
               "img-src 'self' data: blob:; font-src 'self'; connect-src 'self'{ws}; "
               "manifest-src 'self'; worker-src 'self'; object-src 'none'; base-uri 'none'; "
               "frame-ancestors 'none'; form-action 'self'")


@dataclass(frozen=True)
class _File:
    body: bytes
    content_type: str
    etag: str


def _load(folder: str) -> dict[str, _File]:
    """Every file under ``relaybox/web/<folder>``, by its path inside that folder."""
    out: dict[str, _File] = {}
    root = resources.files("relaybox.web").joinpath(folder)

    def walk(node: resources.abc.Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = prefix + child.name
            if child.is_dir():
                walk(child, name + "/")
            elif not child.name.startswith("."):
                body = child.read_bytes()
                suffix = "." + child.name.rsplit(".", 1)[-1]
                ctype = _TYPES.get(suffix) or mimetypes.guess_type(child.name)[0] \
                    or "application/octet-stream"
                etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
                out[name] = _File(body, ctype, etag)

    walk(root, "")
    return out


def security_headers(request: Request, response: HTTPResponse) -> None:
    """CSP allowing only this server (its WebSocket included), nosniff, no referrer."""
    host = request.headers.get("host", "")
    ws = f" ws://{host} wss://{host}" if _HOST_RE.fullmatch(host) else ""
    response.headers["Content-Security-Policy"] = _CSP.format(ws=ws)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"


def _serve(request: Request, f: _File, *, cache: str = "no-cache") -> HTTPResponse:
    # no-cache: revalidate every time (cheap with the ETag), so an upgrade is seen at once.
    headers = {"ETag": f.etag, "Cache-Control": cache}
    if request.headers.get("if-none-match") == f.etag:
        response = raw(b"", status=304, headers=headers)
    else:
        response = raw(f.body, content_type=f.content_type, headers=headers)
    security_headers(request, response)
    return response


def install(app: Sanic) -> None:
    """Register /app/, /sdk/relaybox.js, /vendor/… and /docs (Swagger UI, vendored)."""
    app_files = _load("app")
    sdk = _load("sdk")
    vendor = _load("vendor")
    docs = _load("docs")

    def pick(files: dict[str, _File], name: str) -> _File:
        f = files.get(name)
        if f is None:
            raise NotFound(f"no file {name}", code="not_found")
        return f

    @app.get("/", name="web_root")
    @openapi.exclude()
    async def root(request: Request) -> HTTPResponse:
        return redirect("app/")

    @app.get("/app", name="web_app_slash", strict_slashes=True)
    @openapi.exclude()
    async def app_redirect(request: Request) -> HTTPResponse:
        return redirect("app/")

    @app.get("/app/", name="web_app_index", strict_slashes=True)
    @openapi.exclude()
    async def app_index(request: Request) -> HTTPResponse:
        return _serve(request, pick(app_files, "index.html"))

    @app.get("/app/<name:path>", name="web_app_file")
    @openapi.exclude()
    async def app_file(request: Request, name: str) -> HTTPResponse:
        response = _serve(request, pick(app_files, name))
        if name == "sw.js":
            # The service worker controls /app/ only (docs/client-js.md "The web app").
            response.headers["Service-Worker-Allowed"] = "/app/"
        return response

    @app.get(SDK_PATH, name="web_sdk")
    @openapi.exclude()
    async def sdk_file(request: Request) -> HTTPResponse:
        response = _serve(request, pick(sdk, "relaybox.js"))
        # Pages of other origins may import the SDK as a module (which needs CORS); it
        # carries no secret, and it is the same file for everyone.
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    @app.get("/vendor/<name:path>", name="web_vendor")
    @openapi.exclude()
    async def vendor_file(request: Request, name: str) -> HTTPResponse:
        return _serve(request, pick(vendor, name))

    @openapi.exclude()
    async def docs_index(request: Request) -> HTTPResponse:
        return _serve(request, pick(docs, "index.html"))

    # sanic-ext names its UI route "openapi.index" (its start-up banner links to it), so
    # the page joins its blueprint, under the name that blueprint's own page would have.
    oas = app.blueprints.get("openapi")
    if oas is not None:
        oas.add_route(docs_index, "", name="index", strict_slashes=True)
    else:
        app.add_route(docs_index, "/docs", name="web_docs", strict_slashes=True)

    @app.get("/docs/", name="web_docs_slash", strict_slashes=True)
    @openapi.exclude()
    async def docs_redirect(request: Request) -> HTTPResponse:
        return redirect("../docs")

    for asset in ("init.js", "docs.css"):
        def make(asset: str = asset):  # type: ignore[no-untyped-def]
            async def handler(request: Request) -> HTTPResponse:
                return _serve(request, pick(docs, asset))
            return handler

        app.add_route(openapi.exclude()(make()), f"/docs/{asset}",
                      name=f"web_docs_{asset.replace('.', '_')}")
