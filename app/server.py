"""Runs the app under uvicorn and ends open event streams at shutdown.

On SIGTERM uvicorn waits for every open connection before the lifespan's shutdown, and an SSE
stream never closes by itself: so the server first tells the event hub to end every stream
(each sends a last comment with a `retry:` hint and returns), then shuts down as usual.
"""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI


class Server(uvicorn.Server):
    async def shutdown(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        app: FastAPI | None = getattr(self.config, "loaded_app_state", None)
        hub = getattr(getattr(app, "state", None), "hub", None) if app else None
        if hub is not None:
            hub.close()
        await super().shutdown(sockets=sockets)


def serve(host: str, port: int) -> int:
    from app.main import create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = create_app()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        timeout_graceful_shutdown=8,
        log_level="info",
        proxy_headers=False,
    )
    config.loaded_app_state = app  # type: ignore[attr-defined]
    Server(config).run()
    return 0
