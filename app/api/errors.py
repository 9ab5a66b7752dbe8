"""Domain errors (app.errors) and the store's state, mapped to HTTP answers in one place."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from app.errors import (
    InvalidField,
    JobFinal,
    JobNotFinal,
    JobNotFound,
    JobStateConflict,
    KeyResourceGone,
    QueueFull,
)
from app.store import StoreUnwritable

# a client's wait before trying again while the store cannot write
STORE_RETRY_AFTER = 5


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(JobNotFound)
    async def not_found(_: Request, exc: JobNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(JobFinal)
    @app.exception_handler(JobNotFinal)
    @app.exception_handler(KeyResourceGone)
    @app.exception_handler(JobStateConflict)
    async def conflict(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after)}
        )

    @app.exception_handler(StoreUnwritable)
    async def store_unwritable(_: Request, exc: StoreUnwritable) -> JSONResponse:
        return _unavailable(str(exc))

    @app.exception_handler(OperationalError)
    async def store_unreachable(_: Request, exc: OperationalError) -> JSONResponse:
        # a read that the database could not answer (a PostgreSQL server that went away)
        return _unavailable("the job store cannot be reached now; retrying")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc.errors())

    @app.exception_handler(InvalidField)
    async def invalid(_: Request, exc: InvalidField) -> JSONResponse:
        # the same shape as FastAPI's own validation errors
        return _validation_response(exc.errors)


MAX_LISTED_ERRORS = 50


def _validation_response(errors: Sequence[Any]) -> JSONResponse:
    """The 422 body: `{"detail": [{"loc", "msg", "type"}, ...]}`, strict JSON whatever the
    client sent (a message may quote a lone surrogate: it is escaped).
    A body can hold tens of thousands of wrong fields: the first MAX_LISTED_ERRORS are listed,
    then one more item (same shape: loc, msg, type) counts the rest.
    """
    # one shape for every 422: FastAPI's own errors also carry `input`, `ctx` and `url`
    listed = [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in errors[:MAX_LISTED_ERRORS]
    ]
    if len(errors) > MAX_LISTED_ERRORS:
        more = len(errors) - MAX_LISTED_ERRORS
        listed.append(
            {
                "loc": list(errors[0]["loc"][:1]),
                "msg": f"{more:,} more errors not listed",
                "type": "too_many_errors",
            }
        )
    return JSONResponse({"detail": _json_safe(jsonable_encoder(listed))}, status_code=422)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf": what was sent, as a string
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    return value


def _unavailable(detail: str) -> JSONResponse:
    return JSONResponse(
        {"detail": detail}, status_code=503, headers={"Retry-After": str(STORE_RETRY_AFTER)}
    )
