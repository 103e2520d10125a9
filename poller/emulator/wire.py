"""What goes on the wire: the service's answers as ASP.NET writes them, and the ways they break.

Normal answers are ``{"d": ...}`` as ``application/json; charset=utf-8``; faults are HTTP 500
with ``jsonerror: true`` and ``{"Message", "StackTrace", "ExceptionType"}``. The broken ones are
built to look, to a client, exactly like the real-world failure they stand for: a proxy's 503,
a connection reset by peer, a body cut short of its ``Content-Length``...

The ``Date`` header is not set here: ``app.py`` stamps every response with the emulator clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
from typing import Any

import orjson
from aiohttp import web

from poller.emulator.dates import escape_ms_dates, http_date

JSON_TYPE = "application/json"
CHARSET = "utf-8"
# What IIS and ASP.NET add to every answer of the real service.
ASPNET_HEADERS = {
    "Cache-Control": "private, max-age=0",
    "Server": "Microsoft-IIS/10.0",
    "X-AspNet-Version": "4.0.30319",
    "X-Powered-By": "ASP.NET",
}


def service_body(payload: Any, *, ms_dates: bool = False) -> bytes:
    """Serialise ``{"d": payload}``; with ``ms_dates``, write dates the ASMX way (``\\/``)."""
    body = orjson.dumps({"d": payload})
    return escape_ms_dates(body) if ms_dates else body


def service_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(
        body=body,
        status=status,
        content_type=JSON_TYPE,
        charset=CHARSET,
        headers=ASPNET_HEADERS,
    )


def fault_response(message: str, exception_type: str) -> web.Response:
    """An ASP.NET fault, as the service answers any error."""
    body = orjson.dumps({"Message": message, "StackTrace": "", "ExceptionType": exception_type})
    response = service_response(body, status=500)
    response.headers["jsonerror"] = "true"
    return response


def admin_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type=JSON_TYPE, charset=CHARSET
    )


def throttled_response(status: int, retry_after: float, form: str, now: float) -> web.Response:
    """A 429 or 503 from whatever sits in front of the service, with ``Retry-After``."""
    seconds = math.ceil(retry_after)
    value = http_date(now + seconds) if form == "date" else str(seconds)
    reason = "Too Many Requests" if status == 429 else "Service Unavailable"
    return web.Response(
        status=status,
        text=f"<html><body><h1>{status} {reason}</h1></body></html>",
        content_type="text/html",
        headers={"Retry-After": value, "Server": ASPNET_HEADERS["Server"]},
    )


def redirect_response(status: int, location: str) -> web.Response:
    """A redirect from whatever sits in front of the service (IIS's own small HTML page)."""
    reason = {301: "Moved Permanently", 302: "Found", 307: "Temporary Redirect"}.get(
        status, "Permanent Redirect"
    )
    return web.Response(
        status=status,
        text=f"<html><head><title>{reason}</title></head><body><h1>{reason}</h1>"
        f'<a href="{location}">here</a></body></html>',
        content_type="text/html",
        headers={"Location": location, "Server": ASPNET_HEADERS["Server"]},
    )


def invalid_json_response() -> web.Response:
    """A 200 whose body is not JSON (an error page served with the wrong status and type)."""
    page = (
        "<!DOCTYPE html><html><head><title>Runtime Error</title></head><body>"
        "<h1>Server Error in '/' Application.</h1></body></html>"
    )
    return service_response(page.encode())


def bad_shape_response(shape: str) -> web.Response:
    """A 200 with valid JSON that is not what the operation returns."""
    payload: Any
    if shape == "string":
        payload = {"d": "oops"}
    elif shape == "users_not_list":
        payload = {"d": {"__type": "ActivityService+groupSessions", "nextId": 0, "users": 5}}
    elif shape == "null":
        payload = {"d": None}
    else:  # "no_d"
        payload = {"result": []}
    return service_response(orjson.dumps(payload))


async def reset_connection(request: web.BaseRequest) -> web.Response:
    """Abort the TCP connection without an answer (the client sees a reset, not a close).

    Returns a response only because aiohttp wants one; it is never sent.
    """
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger on, timeout 0: close() sends RST instead of FIN.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)


async def send_truncated(request: web.BaseRequest, response: web.Response) -> web.StreamResponse:
    """Send ``response``'s headers (with the full ``Content-Length``) and half of its body, then
    close the connection."""
    body = bytes(response.body) if isinstance(response.body, bytes | bytearray) else b""
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.content_length = len(body)
    await stream.prepare(request)
    await stream.write(body[: len(body) // 2])
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes what was written, then FIN
    return stream


async def hang(request: web.BaseRequest, seconds: float, stopping: asyncio.Event) -> bool:
    """Wait ``seconds`` of real time before answering; False if the client went away first (or
    the server is stopping), in which case there is nobody to answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (remaining := deadline - loop.time()) > 0:
        transport = request.transport
        if transport is None or transport.is_closing() or stopping.is_set():
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=min(0.05, remaining))
    return True
