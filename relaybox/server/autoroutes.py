"""HEAD for every GET route and OPTIONS for every route, added while the app is built.

sanic-ext can add the same routes itself, but it does so when the server starts, after
the router is finalised, and every route added then finalises the router again (about
0.25 s of a restart for relaybox's ~60 routes). Added here, before the first start, the
router is finalised once. The handlers, names and OpenAPI marks are the ones sanic-ext
would give (api.md §1 Conventions: HEAD answers as GET without a body; OPTIONS lists the
allowed methods), so clients and the OpenAPI document see no difference.
"""

from __future__ import annotations

from functools import partial
from inspect import isawaitable
from operator import itemgetter
from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse, empty
from sanic_ext.extensions.openapi import openapi
from sanic_ext.utils.route import clean_route_name

from relaybox.server.errors import METHOD_ORDER

#: The Extend() settings that hand HEAD and OPTIONS to this module.
EXTEND_CONFIG = {"http_auto_head": False, "http_auto_options": False}


async def _head(request: Request, get_handler: Any, *args: Any, **kwargs: Any) -> Any:
    out = get_handler(request, *args, **kwargs)
    if isawaitable(out):
        out = await out
    return out


async def _options(request: Request, allow: str, *args: Any, **kwargs: Any) -> HTTPResponse:
    resp = empty()
    resp.headers["allow"] = allow
    return resp


def allow_header(methods: Any) -> str:
    """The Allow header for a route's methods, OPTIONS last."""
    known = [m for m in METHOD_ORDER if m in methods and m != "OPTIONS"]
    return ",".join([*known, *sorted(set(methods) - set(METHOD_ORDER)), "OPTIONS"])


def add_head_and_options(app: Sanic) -> None:
    """Call once, after every route is registered and before the app starts."""
    for group in list(app.router.groups.values()):
        if "GET" in group.methods and "HEAD" not in group.methods:
            for route in group:
                if "GET" not in route.methods:
                    continue
                handler: Any = openapi.definition(
                    summary=clean_route_name(route.name).title(),
                    description="Retrieve HEAD details",
                )(partial(_head, get_handler=route.handler))
                handler.__auto_handler__ = True
                handler.__route_handler__ = route.handler
                app.add_route(handler=handler, uri=group.uri, methods=["HEAD"],
                              strict_slashes=group.strict, name=f"{route.name}_head",
                              host=route.requirements.get("host"), unquote=group.unquote)
    for group in list(app.router.groups.values()):
        if "OPTIONS" in group.methods:
            continue
        names = sorted({h for h in map(itemgetter("host"), group.requirements or []) if h})
        hosts: list[str] | None = names or None
        base = next((r for r in group if not r.name.endswith("_head")), group[0])
        handler = openapi.definition(
            summary=clean_route_name(base.name).title(),
            description="Retrieve OPTIONS details",
        )(partial(_options, allow=allow_header(group.methods)))
        handler.__auto_handler__ = True
        app.add_route(handler=handler, uri=group.uri, methods=["OPTIONS"],
                      strict_slashes=group.strict, name=f"{base.name}_options",
                      host=hosts, unquote=group.unquote)
