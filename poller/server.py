"""The operator's port: /metrics (Prometheus), /healthz (alive), /readyz (ready)."""

from __future__ import annotations

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from poller import metrics
from poller.health import Health

HEALTH_KEY = web.AppKey("health", Health)


async def _metrics(request: web.Request) -> web.Response:
    request.app[HEALTH_KEY].problems()  # refresh the ready gauge before it is scraped
    body = generate_latest(metrics.REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    # Answering at all proves the event loop turns; `running` that the streams are up.
    alive = request.app[HEALTH_KEY].running
    return _json({"alive": alive}, 200 if alive else 503)


async def _readyz(request: web.Request) -> web.Response:
    health = request.app[HEALTH_KEY]
    problems = health.problems() if health.running else ["stopping or not started"]
    return _json({"ready": not problems, "problems": problems}, 503 if problems else 200)


def _json(body: object, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def create_app(health: Health) -> web.Application:
    app = web.Application()
    app[HEALTH_KEY] = health
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


class OperatorServer:
    def __init__(self, health: Health, host: str, port: int) -> None:
        self._runner = web.AppRunner(create_app(health), access_log=None)
        self._host = host
        self._port = port
        self.port: int | None = None

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        await self._runner.cleanup()
