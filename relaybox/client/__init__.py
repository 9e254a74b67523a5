"""The Python device SDK: identity file, pairing, gateway client, REST helper."""

from __future__ import annotations

from relaybox.client.backoff import backoff_delay
from relaybox.client.connection import Client
from relaybox.client.errors import (
    ApiError,
    AuthFailedError,
    ClientClosedError,
    ClientError,
    ConflictError,
    FatalError,
    IdentityError,
    ProtocolVersionError,
    PublishError,
    RevokedError,
    ServerMismatchError,
    SessionReplacedError,
)
from relaybox.client.events import Event, EventStream, Gap, Presence
from relaybox.client.identity import DEFAULT_IDENTITY_PATH, Identity, normalize_server_url
from relaybox.client.rest import RestClient, pair

__all__ = [
    "DEFAULT_IDENTITY_PATH",
    "ApiError",
    "AuthFailedError",
    "Client",
    "ClientClosedError",
    "ClientError",
    "ConflictError",
    "Event",
    "EventStream",
    "FatalError",
    "Gap",
    "Identity",
    "IdentityError",
    "Presence",
    "ProtocolVersionError",
    "PublishError",
    "RestClient",
    "RevokedError",
    "ServerMismatchError",
    "SessionReplacedError",
    "backoff_delay",
    "normalize_server_url",
    "pair",
]
