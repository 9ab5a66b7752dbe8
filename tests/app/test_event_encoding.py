"""The loss events' bytes: the hand-made encoder frames each event as FastAPI's SSE formatter
does, writes each float as the service's other JSON does (pydantic's serializer), and every loss
parses back to the very same double, for any float a loss can be."""

from __future__ import annotations

import json
import math
import random
import struct

from fastapi.sse import format_sse_event
from pydantic_core import to_json

from app.hub import encode_losses


def reference(first_step: int, values: list[float | None]) -> bytes:
    out = []
    for step, value in enumerate(values, first_step):
        loss = value if value is not None and math.isfinite(value) else None
        data = f'{{"step": {step}, "loss": {to_json(loss).decode()}}}'
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
    # and what a client parses is the loss itself, bit for bit
    data = encode_losses(0, losses).decode()
    parsed = [json.loads(line[6:])["loss"] for line in data.splitlines() if line.startswith("data")]
    finite = [v if v is not None and math.isfinite(v) else None for v in losses]
    assert [bits(v) for v in parsed] == [bits(v) for v in finite]
    assert encode_losses(999_999, losses[:10]) == reference(999_999, losses[:10])
    assert encode_losses(3, []) == b""
    assert encode_losses(3, (1.5, None)) == reference(3, [1.5, None])  # a tuple, as the hub holds


def test_numpy_scalars_are_encoded_as_the_floats_they_are() -> None:
    import numpy as np

    values: list[float | None] = [np.float64(0.1), np.float32(2.5), None, np.float64("nan")]
    assert encode_losses(0, values) == reference(0, [0.1, 2.5, None, None])


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


def bits(value: float | None) -> bytes | None:
    return None if value is None else struct.pack("<d", value)


def _refuse(token: str) -> None:
    raise AssertionError(f"not strict JSON: {token}")
