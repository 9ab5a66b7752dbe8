"""What the app needs of the process that serves it: open event streams end at shutdown, and
no token reaches a log.

On SIGTERM uvicorn waits for every open connection before the lifespan's shutdown, and an SSE
stream never closes by itself: so the server first tells the event hub to end every stream
(each sends a last comment with a `retry:` hint and returns), then shuts down as usual. The
lifespan wraps the stop signals' handlers for that (`uvicorn app.main:app` too); `trainwire
serve` (app.cli) does it again for a shutdown that no signal started.

uvicorn's access log prints each request's query string, where a browser's EventSource carries
the API token (`?access_token=`): a log filter replaces its value before any handler sees it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

if TYPE_CHECKING:
    from app.hub import EventHub

TOKEN_QUERY_PARAMETER = "access_token"
REDACTED = "[redacted]"


def redact_query_tokens(text: str) -> str:
    """`text` with the value of every `access_token` query parameter replaced."""
    if "?" not in text or "=" not in text:
        return text
    head, query = text.split("?", 1)
    # the value ends the query at the first space (an access-log line goes on after the URL)
    query, space, tail = query.partition(" ")
    parts = []
    for part in query.split("&"):
        key, eq, _value = part.partition("=")
        # Starlette decodes the names too: `access%5Ftoken=` is the token as well
        if eq and unquote_plus(key) == TOKEN_QUERY_PARAMETER:
            part = f"{key}={REDACTED}"
        parts.append(part)
    return f"{head}?{'&'.join(parts)}{space}{tail}"


class RedactQueryTokens(logging.Filter):
    """Rewrites a record's message and arguments so that no query-string token reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_query_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        return True


def _redact_arg(value: Any) -> Any:
    return redact_query_tokens(value) if isinstance(value, str) else value


def redact_tokens_in_logs() -> None:
    """Install the filter on uvicorn's loggers (once; a filter on a logger survives dictConfig)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQueryTokens) for f in logger.filters):
            logger.addFilter(RedactQueryTokens())


def end_streams_on_stop_signals(hub: EventHub) -> Callable[[], None]:
    """Make SIGINT and SIGTERM end every event stream before the server's own handler runs.

    Called from the lifespan, so that it holds however the app is served (`trainwire serve`,
    `uvicorn app.main:app`): by then uvicorn has installed its handlers, and each is wrapped.
    Returns what puts them back. A signal handler runs between two bytecodes of the event loop's
    thread, so it only schedules the hub's close on the loop."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # not served from the main thread: signals are not ours to catch
    loop = asyncio.get_running_loop()
    wrapped: dict[int, tuple[Any, Any]] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        before = signal.getsignal(sig)
        if not callable(before):
            continue  # the default action or ignored: no server is waiting for this signal

        def handler(signum: int, frame: FrameType | None, before: Any = before) -> None:
            loop.call_soon_threadsafe(hub.close)
            before(signum, frame)

        signal.signal(sig, handler)
        wrapped[sig] = (handler, before)

    def restore() -> None:
        for sig, (handler, before) in wrapped.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, before)

    return restore
