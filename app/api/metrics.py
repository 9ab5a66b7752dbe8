"""Prometheus metrics of this process, in Prometheus's text format (see app.metrics)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client.exposition import choose_encoder

router = APIRouter(tags=["operations"])


# not in the OpenAPI schema: it is for Prometheus, not for the API's users (docs/operations.md)
@router.get("/metrics", response_class=Response, include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Jobs, steps, workers, streams, store commits and HTTP requests, for Prometheus to scrape
    (docs/operations.md). Behind the token, like /v1, when the server has one."""
    # the format the scraper asks for (OpenMetrics, or the classic text format by default)
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    # on the event loop's thread: the event hub's subscriber count is read there
    return Response(encode(request.app.state.metrics.registry), media_type=content_type)
