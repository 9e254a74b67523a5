"""Request and response shapes of the REST API (pydantic v2), and strict body parsing."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError
from sanic import Request

from relaybox.errors import InvalidInput, RelayError
from relaybox.protocol.encoding import HIDDEN_CHARS, NAME_MAX_CHARS, check_name, loads
from relaybox.services.users import USER_NAME_RE

# Canonical lowercase UUID text (protocol.md §1 Identifiers).
UUID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# Client message ids are UUIDv4 or UUIDv7 (protocol.md §1).
PUBLISH_ID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[47][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
STREAM_RE = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# 16-32 bytes of base64url without padding; the server treats the nonce as opaque text.
NONCE_RE = r"^[A-Za-z0-9_-]{22,43}$"
# 64 bytes of canonical unpadded base64url: 86 characters, the last with 4 zero bits.
SIGNATURE_RE = r"^[A-Za-z0-9_-]{85}[AQgw]$"
# 32 bytes of canonical unpadded base64url: 43 characters, the last with 2 zero bits.
PUBLIC_KEY_RE = r"^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$"
# Shown as XXXX-XXXX; read case-insensitively, hyphen optional (api.md §3 Routes: Pairing).
CODE_IN_RE = r"^[0-9A-Za-z]{4}-?[0-9A-Za-z]{4}$"
CODE_OUT_RE = r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$"
# Names are shown to people: no control, bidi or invisible characters (api.md Devices).
NAME_RE = f"^[^{HIDDEN_CHARS}]{{1,{NAME_MAX_CHARS}}}$"
NO_NUL_RE = r"^[^\x00]*$"

M = TypeVar("M", bound=BaseModel)


def _check_name(value: str) -> str:
    # check_name says which character is refused; a bare pattern would not.
    try:
        return check_name(value)
    except ValueError as exc:
        raise PydanticCustomError("invalid_name", str(exc)) from None


# The pattern is for the schema (clients, schemathesis); the validator enforces it.
DeviceName = Annotated[str, Field(min_length=1, max_length=NAME_MAX_CHARS,
                                  json_schema_extra={"pattern": NAME_RE}),
                       AfterValidator(_check_name)]


def _uuid(description: str | None = None) -> Any:
    return Field(pattern=UUID_RE, description=description, json_schema_extra={"format": "uuid"})


def _ts(description: str | None = None) -> Any:
    return Field(description=description, json_schema_extra={"format": "date-time"})


class In(BaseModel):
    """A request body: strict types; unknown fields are ignored (like the gateway)."""

    model_config = ConfigDict(strict=True, extra="ignore")


class Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


# -- requests ----------------------------------------------------------------------------
class TokenRequest(In):
    device_id: str = _uuid("The device asking for a token.")
    timestamp: int = Field(description="Unix seconds when the request was signed.")
    nonce: str = Field(pattern=NONCE_RE, description="base64url of 16-32 random bytes.")
    signature: str = Field(pattern=SIGNATURE_RE,
                           description="Ed25519 signature (base64url) over the signing string.")


class RefreshRequest(In):
    refresh_token: str = Field(min_length=1, max_length=512, pattern=NO_NUL_RE)


class RenameRequest(In):
    name: DeviceName


class PairingOptions(In):
    payload: str | None = Field(None, max_length=8192, pattern=NO_NUL_RE,
                                description="Text handed to the claiming device (≤ 8 KiB).")
    ttl_s: int | None = Field(None, ge=60, le=3600, description="Lifetime in seconds.")


class ClaimRequest(In):
    code: str = Field(pattern=CODE_IN_RE, description="The pairing code, XXXX-XXXX.")
    public_key: str = Field(pattern=PUBLIC_KEY_RE,
                            description="The new device's Ed25519 public key (base64url).")
    name: DeviceName


class PublishBody(In):
    """An event to publish, checked with the gateway's rules (protocol.md §3 Publish)."""

    id: str = Field(pattern=PUBLISH_ID_RE, description="Client id (UUIDv4 or UUIDv7).")
    body: Any = Field(description="Any JSON value (compact UTF-8 ≤ max_body_bytes).")
    key: str | None = Field(None, max_length=256, description="At most 256 UTF-8 bytes.")
    base_seq: int | None = Field(None, ge=0, description="Compare-and-set against this seq.")


class RevokeRequest(In):
    device_id: str = _uuid("The device to revoke.")
    reason: str | None = Field(None, max_length=256, pattern=NO_NUL_RE)


class UnrevokeRequest(In):
    device_id: str = _uuid("The device to unrevoke.")


class NewUser(In):
    name: str = Field(pattern=USER_NAME_RE.pattern, min_length=1, max_length=64)


# -- responses ---------------------------------------------------------------------------
class TokenPairOut(Out):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str = Field(description="Works once; rotate it with /auth/refresh.")


class VerifyOut(Out):
    user_id: str = _uuid()
    device_id: str = _uuid()
    expires_at: str = _ts("When the presented token expires.")


class DeviceOut(Out):
    device_id: str = _uuid()
    name: str
    created_at: str = _ts()
    last_seen_at: str | None = _ts()
    online: bool = Field(description="Connected to this server process now.")
    revoked: bool


class PairingCodeOut(Out):
    code: str = Field(pattern=CODE_OUT_RE)
    expires_at: str = _ts()


class InviterOut(Out):
    device_id: str = _uuid()
    name: str


class LookupOut(Out):
    user_name: str
    inviter: InviterOut | None
    payload: str | None
    expires_at: str = _ts()
    server_id: str = _uuid()


class ClaimOut(Out):
    device_id: str = _uuid()
    user_id: str = _uuid()
    server_id: str = _uuid()


class StreamOut(Out):
    stream: str = Field(pattern=STREAM_RE)
    head_seq: int
    floor_seq: int
    acked_seq: int = Field(description="The calling device's cursor.")


class EventOut(Out):
    type: Literal["event"]
    stream: str
    seq: int
    id: str = _uuid()
    from_: str | None = Field(alias="from", pattern=UUID_RE,
                              json_schema_extra={"format": "uuid"})
    key: str | None
    ts: str = _ts()
    body: Any


class EventsPageOut(Out):
    events: list[EventOut]
    head_seq: int
    floor_seq: int


class PublishOut(Out):
    id: str = _uuid()
    stream: str
    seq: int
    ts: str = _ts()


class RevocationOut(Out):
    device_id: str = _uuid()
    user_id: str = _uuid()
    name: str
    revoked_at: str | None = _ts()
    reason: str | None


class UserOut(Out):
    user_id: str = _uuid()
    name: str
    created_at: str = _ts()


class Problem(Out):
    """RFC 9457 problem details. Some errors add fields: head_seq on a conflict, errors on 422."""

    type: str
    title: str
    status: int
    code: str = Field(description="Stable, machine readable.")
    detail: str
    request_id: str | None


class StatusOut(Out):
    status: Literal["ok", "unavailable"]
    version: str
    server_id: str = _uuid()
    uptime_s: float
    database: Literal["ok", "down"]
    redis: Literal["ok", "down"]
    connections: int
    failing: list[str] | None = Field(None, description="The parts that are down (503 only).")


class HealthOut(Out):
    status: Literal["ok", "ready", "unavailable", "stopping"]
    database: Literal["ok", "down"] | None = Field(
        None, description="Readiness only: the database answers (what readiness needs).")
    redis: Literal["ok", "down"] | None = Field(
        None, description="Readiness only: informative; a node whose Redis is down still "
                          "stores and delivers to its own sessions, so it stays ready.")


# -- parsing -------------------------------------------------------------------------------
def json_body(request: Request) -> object:
    """The request body as JSON; 400 when it is not JSON at all (api.md §1 Conventions)."""
    try:
        return loads(request.body or b"")
    except (ValueError, UnicodeDecodeError):
        raise RelayError("the request body is not valid JSON", code="malformed_json") from None


def parse_body(request: Request, model: type[M]) -> M:
    """A strictly validated body; 422 naming the bad fields."""
    obj = json_body(request)
    if not isinstance(obj, dict):
        raise InvalidInput("the request body must be a JSON object")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
                  for e in exc.errors(include_url=False)[:10]]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise InvalidInput(detail, errors=errors) from None


def parse_optional_body(request: Request, model: type[M]) -> M:
    """Like ``parse_body``, but an empty body means ``{}``."""
    if not (request.body or b"").strip():
        return model.model_validate({})
    return parse_body(request, model)


MAX_SEQ = 2**63 - 1  # the largest seq the database can hold


def int_arg(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    """A whole-number query parameter within [lo, hi]; 422 otherwise (blank or repeated too)."""
    values = request.get_args(keep_blank_values=True).getlist(name)
    if not values:
        return default
    raw = values[0]
    whole = len(values) == 1 and raw.isascii() and raw.isdigit() and len(raw) <= 20
    if not whole or not lo <= int(raw) <= hi:
        raise InvalidInput(f"{name} must be a whole number from {lo} to {hi}",
                           code="invalid_parameter")
    return int(raw)
