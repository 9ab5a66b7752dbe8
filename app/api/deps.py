"""Dependencies shared by the routes: the service, settings, and the bearer-token check.

All `async def`: they do no I/O, and a sync dependency costs a thread-pool hop per request.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import InvalidField
from app.losses import LossReader
from app.service import JobService
from app.settings import Settings
from app.stream import EventStreams

bearer = HTTPBearer(
    auto_error=False,
    description="The value of TRAINWIRE_API_TOKEN, when the server sets one.",
)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_service(request: Request) -> JobService:
    service: JobService = request.app.state.service
    return service


async def get_streams(request: Request) -> EventStreams:
    streams: EventStreams = request.app.state.streams
    return streams


async def get_losses(request: Request) -> LossReader:
    losses: LossReader = request.app.state.losses
    return losses


async def require_token(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    access_token: Annotated[
        str | None,
        Query(
            description="The token, for clients that cannot set headers (a browser's "
            "EventSource); prefer the Authorization header.",
            include_in_schema=False,
        ),
    ] = None,
) -> None:
    """401 unless the request carries the server's token (when it has one)."""
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value().encode()
    given = credentials.credentials if credentials is not None else access_token
    # constant-time: the comparison must not tell how much of a guess was right
    if given is None or not hmac.compare_digest(given.encode(), expected):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern="^[!-~]+$",
        description="A key of your choosing (1-255 visible ASCII characters; a UUID is the "
        "usual one). A retry of this POST with the same key and the same body creates nothing "
        "new: it answers the first request's job or sweep as it is now (201, with "
        "`Idempotent-Replayed: true`). The same key with another body: 422. Keys are kept "
        "TRAINWIRE_IDEMPOTENCY_HOURS (default 24 h).",
    ),
]


def created(response: Response, location: str, replayed: bool) -> None:
    """The headers of a POST's 201: where it is, and whether an earlier request made it."""
    response.headers["Location"] = location
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"


Service = Annotated[JobService, Depends(get_service)]
Streams = Annotated[EventStreams, Depends(get_streams)]
LossesOf = Annotated[LossReader, Depends(get_losses)]


def known_query(*names: str) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """A dependency that answers 422 for a query parameter the route does not take: a
    misspelt filter (`?lable=x`) must not list everything as though it were honoured."""
    known = frozenset(names) | {"access_token"}

    async def check(request: Request) -> None:
        for name in request.query_params:
            if name not in known:
                takes = ", ".join(sorted(known - {"access_token"}))
                raise InvalidField(
                    ("query", name), f"unknown query parameter; this route takes {takes}"
                )

    return check
