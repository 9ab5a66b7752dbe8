"""A cap on request bodies whose 413 is FastAPI's usual JSON `{"detail": ...}`.

FastAPI's own `max_body_size` (Starlette's RequestBodyLimitMiddleware) answers a body declared
too large by its Content-Length with a plain-text 413, and a chunked one that grows too large with
JSON: clients would have to parse both.
"""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """413 for a request body over `max_bytes`, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    @property
    def detail(self) -> str:
        return f"the request body is over {self.max_bytes:,} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            # refused before a byte of it is read
            response = JSONResponse({"detail": self.detail}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # raised where the route reads its body: the app's exception handling
                    # answers it like any HTTPException
                    raise HTTPException(status_code=413, detail=self.detail)
            return message

        await self.app(scope, receive_within_limit, send)
