"""/api/v1/streams: list the caller's streams, read events, publish over HTTP."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from relaybox.errors import InvalidInput
from relaybox.server.api import examples as ex
from relaybox.server.api.docs import doc, path_param, query_param, ref
from relaybox.server.api.models import (
    MAX_SEQ,
    STREAM_RE,
    EventsPageOut,
    PublishBody,
    PublishOut,
    StreamOut,
    int_arg,
    json_body,
)
from relaybox.server.auth import device_auth, limiter, relay
from relaybox.services import streams

bp = Blueprint("streams", url_prefix="/api/v1/streams")
_STREAM = path_param("stream", "A stream name.", pattern=STREAM_RE)


@bp.get("")
@doc("The caller's user's streams, with the caller's cursor", auth="device",
     ok=(200, {"type": "array", "items": ref(StreamOut)}, [ex.STREAM]))
async def list_streams(request: Request) -> HTTPResponse:
    claims = await device_auth(request)
    ctx = relay(request)
    return json(await ctx.eventlog.read(streams.list_streams, claims.user_id, claims.device_id))


@bp.get("/<stream>/events")
@doc("Events of a stream after a seq", auth="device",
     description="The same event objects as the gateway sends, in seq order.",
     params=[_STREAM,
             query_param("after", "Return events with a greater seq.", type="integer",
                         minimum=0, maximum=MAX_SEQ, default=0),
             query_param("limit", "At most this many events.", type="integer", minimum=1,
                         maximum=streams.MAX_PAGE, default=100)],
     ok=(200, ref(EventsPageOut), ex.EVENTS_PAGE), errors=(404, 422))
async def read_events(request: Request, stream: str) -> HTTPResponse:
    claims = await device_auth(request)
    ctx = relay(request)
    name = streams.require_stream(stream)
    after = int_arg(request, "after", 0, 0, MAX_SEQ)
    limit = int_arg(request, "limit", 100, 1, streams.MAX_PAGE)
    page = await ctx.eventlog.read(streams.read_page, claims.user_id, name, after, limit)
    return json(page.as_json())


@bp.post("/<stream>/events")
@doc("Publish an event over HTTP (same rules as a gateway publish)", auth="device",
     description="201 when stored; a replayed id is 200 with the original event's seq; "
                 "a compare-and-set conflict is 409 with head_seq; sys. streams are 403; "
                 "a publish over one of the user's quotas is 403 quota_exceeded, with "
                 "quota naming it (streams, keys or bytes).",
     params=[_STREAM], body=(PublishBody, ex.PUBLISH), ok=(201, ref(PublishOut), ex.PUBLISHED),
     extra=[(200, ref(PublishOut), ex.PUBLISHED)],
     errors=(400, 403, 404, 409, 413, 422, 429))
async def publish(request: Request, stream: str) -> HTTPResponse:
    claims = await device_auth(request)
    ctx = relay(request)
    await limiter(request).hit("publish", claims.device_id, ctx.settings.rate_publish_per_min)
    obj = json_body(request)
    if not isinstance(obj, dict):
        raise InvalidInput("the request body must be a JSON object")
    msg = streams.parse_publish(obj, streams.require_stream(stream),
                                ctx.settings.gateway_max_body_bytes)
    result = await ctx.eventlog.publish(streams.publish_request(claims.user_id,
                                                                claims.device_id, msg))
    status, body = streams.publish_outcome(result)
    return json(body, status=status)
