"""OpenAPI 3.0 documentation: component schemas from the models, and one route decorator."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, TypeVar

from pydantic import BaseModel
from sanic import Sanic
from sanic_ext.extensions.openapi import openapi
from sanic_ext.extensions.openapi.builders import OperationStore
from sanic_ext.extensions.openapi.definitions import Parameter
from sanic_ext.extensions.openapi.types import Schema

from relaybox import __version__
from relaybox.server.api import models

F = TypeVar("F", bound=Callable[..., Any])
REF = "#/components/schemas/{model}"

# Every model named in the document (the others are reached through references).
_COMPONENTS: tuple[type[BaseModel], ...] = (
    models.TokenRequest, models.RefreshRequest, models.RenameRequest, models.PairingOptions,
    models.ClaimRequest, models.PublishBody, models.RevokeRequest, models.UnrevokeRequest,
    models.NewUser, models.TokenPairOut, models.VerifyOut, models.DeviceOut,
    models.PairingCodeOut, models.LookupOut, models.ClaimOut, models.StreamOut,
    models.EventsPageOut, models.PublishOut, models.RevocationOut, models.UserOut,
    models.Problem, models.StatusOut, models.HealthOut,
)

_REQUEST_ID = {"description": "The caller's X-Request-ID if it sent a sane one, else a new id.",
               "schema": {"type": "string"}}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer challenge.", "required": True,
                               "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait.", "required": True,
                          "schema": {"type": "integer", "minimum": 1}}},
}
_ERROR_CODES = {400: "malformed_json", 401: "invalid_token", 403: "forbidden",
                404: "not_found", 409: "conflict", 413: "too_large", 422: "invalid",
                429: "rate_limited", 503: "unavailable"}


def to_oas30(node: Any) -> Any:
    """Rewrite pydantic's JSON Schema 2020-12 into the OpenAPI 3.0 dialect."""
    if isinstance(node, list):
        return [to_oas30(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_oas30(v) for k, v in node.items() if k != "title"}
    if "properties" in node:  # property names are data, not keywords
        out["properties"] = {k: to_oas30(v) for k, v in node["properties"].items()}
    if "const" in out:
        out["enum"] = [out.pop("const")]
    branches = out.get("anyOf")
    if isinstance(branches, list) and {"type": "null"} in branches:
        rest = [b for b in branches if b != {"type": "null"}]
        del out["anyOf"]
        if len(rest) == 1 and "$ref" in rest[0]:
            out["allOf"] = rest  # siblings of a $ref are ignored in 3.0
        elif len(rest) == 1:
            out.update(rest[0])
        else:
            out["anyOf"] = rest
        out["nullable"] = True
    return out


def component_schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in _COMPONENTS:
        doc = model.model_json_schema(ref_template=REF, by_alias=True)
        for name, sub in doc.pop("$defs", {}).items():
            schemas[name] = to_oas30(sub)
        schemas[model.__name__] = to_oas30(doc)
    schemas["Problem"]["additionalProperties"] = True
    return schemas


def install(app: Sanic) -> None:
    """Describe the API and register its components and security schemes."""
    app.config.API_TITLE = "relaybox"
    app.config.API_VERSION = __version__
    app.config.API_DESCRIPTION = (
        "The relaybox REST API, version 1. Errors are application/problem+json (RFC 9457); "
        "every response carries X-Request-ID.")
    spec = app.ext.openapi
    spec.raw({"components": {"schemas": component_schemas()}})
    spec.add_security_scheme("device", "http", scheme="bearer", bearer_format="JWT",
                             description="An access token from POST /api/v1/auth/token.")
    spec.add_security_scheme("admin", "http", scheme="bearer", bearer_format="opaque",
                             description="The admin token printed by 'relaybox init'.")


def exclude_websockets(app: Sanic) -> None:
    """The gateway is a WebSocket (protocol.md), not a REST operation: keep it out."""
    for route in app.router.routes:
        if getattr(route.extra, "websocket", False):
            openapi.exclude()(route.handler)


def ref(model: type[BaseModel] | str) -> dict[str, str]:
    name = model if isinstance(model, str) else model.__name__
    return {"$ref": REF.format(model=name)}


def _problem_response(status: int) -> dict[str, Any]:
    example = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
               "code": _ERROR_CODES.get(status, "error"), "detail": "…",
               "request_id": "0192f1c2-7a4b-7c3d-8e9f-a0b1c2d3e4f5"}
    return {"description": HTTPStatus(status).phrase,
            "headers": {"X-Request-ID": _REQUEST_ID, **_HEADERS.get(status, {})},
            "content": {"application/problem+json": {"schema": ref(models.Problem),
                                                     "example": example}}}


def path_param(name: str, description: str, **schema: Any) -> Parameter:
    return Parameter(name, Schema(type="string", **schema), "path", description=description,
                     required=True)


def query_param(name: str, description: str, **schema: Any) -> Parameter:
    return Parameter(name, Schema(**schema), "query", description=description, required=False)


def doc(
    summary: str,
    *,
    ok: tuple[int, Any, Any],
    errors: Sequence[int] = (),
    body: tuple[type[BaseModel], Any] | None = None,
    optional_body: bool = False,
    auth: str | None = None,
    params: Sequence[Parameter] = (),
    description: str | None = None,
    extra: Sequence[tuple[int, Any, Any]] = (),
) -> Callable[[F], F]:
    """Document one route: request body, success response(s), every error it can return.

    ``ok`` and ``extra`` are (status, schema, example); ``auth`` names a security scheme.
    The route's handler must be decorated directly (below the route decorator).
    """

    def inner(func: F) -> F:
        for p in params:
            func = openapi.parameter(parameter=p)(func)
        func = openapi.definition(summary=summary, description=description,
                                  secured={auth: []} if auth else None)(func)
        op = OperationStore()[func]
        if body is not None:
            op.requestBody = {"required": not optional_body, "content": {"application/json": {
                "schema": ref(body[0]), "example": body[1]}}}
        for status, schema, example in (ok, *extra):
            op.responses[str(status)] = {
                "description": HTTPStatus(status).phrase,
                "headers": {"X-Request-ID": _REQUEST_ID},
                "content": {"application/json": {"schema": schema, "example": example}}}
        statuses = set(errors) | ({401} if auth else set()) | ({403} if auth == "admin" else set())
        for status in sorted(statuses | {503}):
            op.responses.setdefault(str(status), _problem_response(status))
        return func

    return inner
