"""What the app needs of the process that serves it: open event streams end at shutdown, and
no token reaches a log.

On SIGTERM uvicorn waits for every open connection before the lifespan's shutdown, and an SSE
stream never closes by itself: so the server first tells the event hub to end every stream
(each sends a last comment with a `retry:` hint and returns), then shuts down as usual. The
lifespan wraps the stop signals' handlers for that (`uvicorn app.main:app` too); `trainwire
serve` (app.cli) does it again for a shutdown that no signal started.

uvicorn's access log prints each request's query string, where a browser's EventSource carries
the API token (`?access_token=`): a log filter replaces its value before any handler sees it, and
the value of any other field named like a credential, and any URL that holds the server's own
token in whatever spelling.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import threading
from collections.abc import Callable, Collection
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, unquote_plus

from pydantic import SecretStr

if TYPE_CHECKING:
    from app.hub import EventHub

TOKEN_QUERY_PARAMETER = "access_token"
REDACTED = "[redacted]"

# `name=` of a query field. Starlette splits fields on `&` alone and percent-decodes the names
# (`access%5Ftoken` is the token too); `;` and a second `?` count as separators here as well,
# so that a mistyped URL's token is redacted along with the ones that reach the check.
_FIELD_NAME = re.compile(r"(?<=[?&;])([^?&;=\s\"]+)=")
# a value runs to the next `&`, as Starlette reads it (a `;` or `?` inside is part of it)
_VALUE_END = re.compile(r"[&\s\"]")
# names that look like a credential, once decoded, lower-cased and stripped of `_`, `-`, `.`:
# access_token, ACCESS_TOKEN, accessToken, api-key, Authorization, ...
_SECRET_NAME = re.compile(r"token|auth|secret|passw|apikey|accesskey|bearer|credential")
# a configured token is also looked for as such, in any spelling of its characters, when it is
# long enough not to match ordinary words
_MIN_SECRET_LENGTH = 8


def _decoded(text: str, unquote: Callable[[str], str] = unquote_plus) -> str:
    """`text` percent-decoded until nothing changes (a few rounds at most)."""
    for _ in range(3):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return text


def _holds_secret(text: str, secrets: Collection[str]) -> bool:
    """Whether `text` holds one of `secrets`, as is or percent-encoded (`+` a space or not)."""
    forms = [form.lower() for form in (text, _decoded(text), _decoded(text, unquote))]
    return any(secret.lower() in form for secret in secrets for form in forms)


def _looks_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(re.sub(r"[^a-z0-9]", "", _decoded(name).lower())))


def redact_query_tokens(text: str, secrets: Collection[str] = ()) -> str:
    """`text` with the value of every query field named like a token replaced, and every word
    (a URL) that holds one of `secrets` in any percent-encoding redacted as well."""
    if "=" in text:
        spans: list[tuple[int, int]] = []
        for match in _FIELD_NAME.finditer(text):
            if _looks_secret(match.group(1)) and not (spans and match.end() <= spans[-1][1]):
                end = _VALUE_END.search(text, match.end())
                spans.append((match.end(), end.start() if end else len(text)))
        for start, stop in reversed(spans):
            text = f"{text[:start]}{REDACTED}{text[stop:]}"
    secrets = [s for s in secrets if len(s) >= _MIN_SECRET_LENGTH]
    if secrets and _holds_secret(text, secrets):
        text = " ".join(_redact_secret_word(word, secrets) for word in text.split(" "))
    return text


def _redact_secret_word(word: str, secrets: Collection[str]) -> str:
    """A URL that holds a secret: its query when the secret is there alone, else all of it."""
    if not _holds_secret(word, secrets):
        return word
    path, mark, _query = word.partition("?")
    if mark and not _holds_secret(path, secrets):
        return f"{path}?{REDACTED}"
    return REDACTED


class RedactQueryTokens(logging.Filter):
    """Rewrites a record's message and arguments so that no query-string token reaches a log."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()  # the configured tokens, looked for in any spelling

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_query_tokens(record.msg, self.secrets)
        if isinstance(record.args, tuple):
            record.args = tuple(self._redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self._redact_arg(v) for k, v in record.args.items()}
        return True

    def _redact_arg(self, value: Any) -> Any:
        return redact_query_tokens(value, self.secrets) if isinstance(value, str) else value


def redact_tokens_in_logs(token: SecretStr | None = None) -> None:
    """Install the filter on uvicorn's loggers (once; a filter on a logger survives dictConfig),
    and have it look for `token` itself too."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        found = [f for f in logger.filters if isinstance(f, RedactQueryTokens)]
        redactor = found[0] if found else RedactQueryTokens()
        if not found:
            logger.addFilter(redactor)
        if token is not None:
            redactor.secrets.add(token.get_secret_value())


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
