"""The emulator as an aiohttp application: the ASMX endpoint, the admin API, and the ``Date``.

Every response, faults and admin answers included, carries a ``Date`` header read from the
emulator clock, not the wall clock: the poller takes "now" from the upstream's ``Date``, so
tests move the poller's time by moving the emulator's clock. (A ``date_skew`` fault bends it
for the calls it is planned for.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from poller.emulator.admin import add_admin_routes
from poller.emulator.dates import http_date
from poller.emulator.endpoint import (
    DATE_SKEW_KEY,
    SERVICE_PATH,
    STATE_KEY,
    handle_call,
    injected_fault,
)
from poller.emulator.state import EmulatorState

__all__ = ["EmulatorState", "create_app"]

logger = logging.getLogger("poller.emulator")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Data sets posted to the admin API can be large.
MAX_REQUEST_BYTES = 512 * 1024 * 1024


def create_app(state: EmulatorState) -> web.Application:
    app = web.Application(middlewares=[_log_request], client_max_size=MAX_REQUEST_BYTES)
    app[STATE_KEY] = state
    app.router.add_post(SERVICE_PATH + "/{operation}", handle_call)
    add_admin_routes(app, state)
    app.on_response_prepare.append(_stamp_date)
    app.on_shutdown.append(_release_hanging_calls)
    return app


async def _stamp_date(request: web.Request, response: web.StreamResponse) -> None:
    # Runs after aiohttp has filled in its own (wall clock) Date, just before the headers go.
    # A date_skew fault on the call moves this answer's Date (and only its Date).
    skew = request.get(DATE_SKEW_KEY, 0.0)
    response.headers[hdrs.DATE] = http_date(request.app[STATE_KEY].clock.timestamp() + skew)


async def _release_hanging_calls(app: web.Application) -> None:
    app[STATE_KEY].stopping.set()


@web.middleware
async def _log_request(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """One line per request: method, path, status, time. Paths carry no secrets (the apiKey
    travels in the body)."""
    started = time.perf_counter()
    status: int | str = "-"
    # One task serves every request of a keep-alive connection: start each one clean.
    fault_token = injected_fault.set(None)
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except BaseException:
        status = "aborted"
        raise
    finally:
        fault = injected_fault.get()
        injected_fault.reset(fault_token)
        if fault == "reset":
            status = "reset"  # the response aiohttp was handed never left
        logger.info(
            "%s %s %s %.1fms%s",
            request.method,
            request.path,
            status,
            (time.perf_counter() - started) * 1000,
            f" fault={fault}" if fault else "",
        )
