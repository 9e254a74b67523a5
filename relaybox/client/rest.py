"""REST helpers for a device: claim a pairing code, get and refresh tokens, list devices."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final

import httpx
from nacl.signing import SigningKey

from relaybox.client.errors import ApiError, ClientError
from relaybox.client.identity import Identity, normalize_server_url
from relaybox.protocol.encoding import b64url_encode, parse_uuid, random_nonce
from relaybox.protocol.handshake import token_signing_bytes

__all__ = ["RestClient", "pair"]

TOKEN_MARGIN_S: Final = 30  # refresh this long before the access token expires
TOKEN_NONCE_BYTES: Final = 24  # api.md §2 How a device authenticates: 16 to 32 bytes
_USER_AGENT: Final = "relaybox-client"


def _problem(resp: httpx.Response) -> ApiError:
    """An ApiError from a problem+json answer (api.md §1 Conventions), or from the status."""
    code, detail = "http_error", resp.reason_phrase or f"HTTP {resp.status_code}"
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        code = str(doc.get("code") or code)
        detail = str(doc.get("detail") or doc.get("title") or detail)
    return ApiError(resp.status_code, code, detail)


async def _send(http: httpx.AsyncClient, method: str, url: str, **kw: Any) -> httpx.Response:
    try:
        return await http.request(method, url, **kw)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach {url}: {exc or type(exc).__name__}") from None


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise ApiError(resp.status_code, "bad_response",
                       "the server's answer is not JSON") from None


async def pair(server: str, code: str, name: str, *, http: httpx.AsyncClient | None = None,
               http_timeout: float = 10.0) -> Identity:
    """Claim a pairing code with a new Ed25519 key; the returned Identity is not saved yet.

    api.md §3 Routes, Pairing: POST /api/v1/pairing/claim ``{code, public_key, name}`` →
    201 ``{device_id, user_id, server_id}``.
    """
    base = normalize_server_url(server)
    code, name = code.strip(), name.strip()
    if not code:
        raise ClientError("the pairing code is empty")
    if not name:
        raise ClientError("the device name is empty")
    key = SigningKey.generate()
    body = {"code": code, "public_key": b64url_encode(bytes(key.verify_key)), "name": name}
    own = http is None
    client = http or httpx.AsyncClient(timeout=http_timeout, headers={"User-Agent": _USER_AGENT})
    try:
        resp = await _send(client, "POST", f"{base}/api/v1/pairing/claim", json=body)
    finally:
        if own:
            await client.aclose()
    if resp.status_code != 201:
        raise _problem(resp)
    doc = _json(resp)
    try:
        server_id, device_id, user_id = (
            parse_uuid(doc[k]) for k in ("server_id", "device_id", "user_id"))
    except (KeyError, TypeError, ValueError):
        raise ApiError(resp.status_code, "bad_response",
                       "the claim answer lacks device_id, user_id or server_id") from None
    return Identity(server=base, server_id=server_id, device_id=device_id, user_id=user_id,
                    private_key=bytes(key), name=name)


class RestClient:
    """Authenticated REST calls for one device; tokens are fetched and refreshed as needed.

    Use as ``async with RestClient(identity) as api: await api.devices()``.
    """

    def __init__(self, identity: Identity, *, http: httpx.AsyncClient | None = None,
                 http_timeout: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.identity = identity
        self._own = http is None
        self._http = http or httpx.AsyncClient(timeout=http_timeout,
                                               headers={"User-Agent": _USER_AGENT})
        self._clock = clock
        self.access_token: str | None = None
        self.refresh_token: str | None = None
        self.expires_at = 0.0

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    # -- tokens (api.md §2, /auth/token, /auth/refresh) -------------------------------------
    async def authenticate(self) -> str:
        """A new token pair by signing ``relaybox-token-v1`` with the device key."""
        ident = self.identity
        timestamp = int(self._clock())
        nonce = random_nonce(TOKEN_NONCE_BYTES)
        signature = ident.sign(token_signing_bytes(ident.server_id, ident.device_id, timestamp,
                                                   nonce))
        resp = await _send(self._http, "POST", ident.api_url("/auth/token"),
                           json={"device_id": ident.device_id, "timestamp": timestamp,
                                 "nonce": nonce, "signature": signature})
        return self._take_tokens(resp)

    async def refresh(self) -> str:
        """Rotate the token pair with the refresh token (each refresh token works once)."""
        if self.refresh_token is None:
            return await self.authenticate()
        token, self.refresh_token = self.refresh_token, None
        resp = await _send(self._http, "POST", self.identity.api_url("/auth/refresh"),
                           json={"refresh_token": token})
        return self._take_tokens(resp)

    def _take_tokens(self, resp: httpx.Response) -> str:
        if resp.status_code != 200:
            raise _problem(resp)
        doc = _json(resp)
        access = doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(access, str):
            raise ApiError(resp.status_code, "bad_response", "the token answer has no token")
        expires_in = doc.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 60.0
        refresh = doc.get("refresh_token")
        self.access_token = access
        self.refresh_token = refresh if isinstance(refresh, str) else None
        self.expires_at = self._clock() + lifetime
        return access

    async def token(self) -> str:
        """A valid access token: cached, refreshed shortly before expiry, or new."""
        if self.access_token is not None and self._clock() < self.expires_at - TOKEN_MARGIN_S:
            return self.access_token
        if self.refresh_token is not None:
            try:
                return await self.refresh()
            except ApiError as exc:
                if exc.status != 401:
                    raise
                # A refresh token that expired or was revoked: sign for a new pair.
        return await self.authenticate()

    # -- calls ------------------------------------------------------------------------------
    async def request(self, method: str, path: str, *, json: Any = None,
                      params: dict[str, Any] | None = None) -> Any:
        """An authenticated call of ``/api/v1{path}``; its JSON answer, ApiError on failure."""
        url = self.identity.api_url(path)
        for attempt in range(2):
            token = await self.token()
            resp = await _send(self._http, method, url, json=json, params=params,
                               headers={"Authorization": f"Bearer {token}"})
            if resp.status_code == 401 and attempt == 0:
                # The token may have been invalidated server-side: one fresh try.
                self.access_token = None
                continue
            break
        if resp.status_code >= 400:
            raise _problem(resp)
        return _json(resp) if resp.content else None

    async def devices(self) -> list[dict[str, Any]]:
        """The caller's user's devices (GET /api/v1/devices)."""
        doc = await self.request("GET", "/devices")
        if not isinstance(doc, list):
            raise ApiError(200, "bad_response", "the device list is not a JSON array")
        return doc

    async def verify(self) -> dict[str, Any]:
        """What the server says about the current token (GET /api/v1/auth/verify)."""
        doc = await self.request("GET", "/auth/verify")
        return doc if isinstance(doc, dict) else {}
