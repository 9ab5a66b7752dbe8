"""Public names: job ids, and the opaque cursors of list pages."""

from __future__ import annotations

import base64
import binascii
import os
import random
import re

from app.errors import InvalidField

# Job ids and drawn seeds: a generator of the service's own, seeded from the OS once (os.urandom
# on every request would release and wait for the GIL behind busy workers). Never used by a run.
_ids = random.Random(os.urandom(32))

JOB_ID = re.compile(r"[0-9a-f]{16}")  # what new_job_id() hands out


def new_job_id() -> str:
    return f"{_ids.getrandbits(64):016x}"


def draw_seed() -> int:
    return _ids.getrandbits(32)


def is_job_id(text: str) -> bool:
    return JOB_ID.fullmatch(text) is not None


def encode_cursor(pk: int) -> str:
    return base64.urlsafe_b64encode(f"pk:{pk}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("pk:"):
            raise ValueError(text)
        pk = int(text[3:])
        if not 0 <= pk < 2**63:
            raise ValueError(pk)
        return pk
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidField(("query", "cursor"), "not a cursor this service handed out") from None
