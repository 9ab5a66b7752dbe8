"""The loss events' bytes: the hand-made encoder says exactly what FastAPI's SSE formatter and
strict json would say, for any float a loss can be."""

from __future__ import annotations

import json
import math
import random
import struct

from fastapi.sse import format_sse_event

from app.hub import encode_losses


def reference(first_step: int, values: list[float | None]) -> bytes:
    out = []
    for step, value in enumerate(values, first_step):
        loss = value if value is not None and math.isfinite(value) else None
        data = json.dumps({"step": step, "loss": loss}, allow_nan=False)
        out.append(format_sse_event(data_str=data, event="loss", id=str(step)))
    return b"".join(out)


def test_loss_events_are_the_formatter_s_bytes_for_every_kind_of_float() -> None:
    rng = random.Random(7)
    # any 64-bit pattern: normal, subnormal, huge, tiny, negative, and the non-finite ones
    patterns = [
        struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(5000)
    ]
    special = [0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 0.1, 1e16]
    losses: list[float | None] = [*patterns, *special, None, math.nan, math.inf, -math.inf]
    losses += [rng.random() * 10 ** rng.randint(-30, 30) for _ in range(5000)]
    assert encode_losses(0, losses) == reference(0, losses)
    assert encode_losses(999_999, losses[:10]) == reference(999_999, losses[:10])
    assert encode_losses(3, []) == b""


def test_a_non_finite_loss_is_null_and_the_event_is_strict_json() -> None:
    data = encode_losses(4, [math.nan, math.inf, None]).decode()
    events = [block for block in data.split("\n\n") if block]
    assert len(events) == 3
    for step, block in enumerate(events, 4):
        event, payload, event_id = block.split("\n")
        assert event == "event: loss" and event_id == f"id: {step}"
        # parse_constant is called for NaN/Infinity only: strict JSON never reaches it
        parsed = json.loads(payload.removeprefix("data: "), parse_constant=_refuse)
        assert parsed == {"step": step, "loss": None}


def _refuse(token: str) -> None:
    raise AssertionError(f"not strict JSON: {token}")
