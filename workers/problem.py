"""The problem instance a run trains on: x, y and the starting weights, drawn from the run's seed.

The tutorial draws everything from the global RNGs (`np.random.randn`, `torch.randn`, the default
init of `nn.Linear`, `random.randint`). Those are shared by every thread of the process, so here
every draw comes from generators owned by the instance, seeded by (seed, stream):

- stream 0: x (N, D_in) and y (N, D_out), standard normal, as `randn` draws them;
- stream 1: w1 (D_in, H) and w2 (H, D_out), standard normal (numpy, tensors, autograd,
  custom_function start from these);
- stream 2: the nn.Linear layers, one sub-stream per layer name, drawn from U(-1/sqrt(fan_in),
  1/sqrt(fan_in)) for weight and bias, which is the distribution PyTorch's own init uses
  (kaiming_uniform with a=sqrt(5)); nn, optim, custom_module and dynamic share these;
- stream 3: the `random.Random` that picks the depth of `DynamicNet` at each step.

Values are drawn in float64 on the host and then cast, so an instance depends only on
(seed, sizes, dtype) and is the same on every device. They are drawn a chunk at a time, each chunk
cast and stored in place: one draw of a whole (N, D_in) x in float64 followed by a cast would hold
three times x's float32 size at once. A generator hands out the same numbers whether they are asked
for in one call or in many, so the chunks make the same instance as one draw.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

_STREAM_DATA, _STREAM_WEIGHTS, _STREAM_LAYERS, _STREAM_CHOICES = 0, 1, 2, 3
_LAYER_IDS = {"input": 0, "output": 1, "middle": 2}

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}

# values per call to a generator: at most 512 KiB of float64 in flight beside the instance
DRAW_CHUNK = 1 << 16


def _generator(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _chunks(size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive chunks of at most DRAW_CHUNK values covering range(size)."""
    for start in range(0, size, DRAW_CHUNK):
        yield start, min(start + DRAW_CHUNK, size)


def _drawn(draw: Callable[[int], np.ndarray], shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """An array of `shape` and `dtype` filled in row-major order with draw(n), n values a call."""
    out = np.empty(shape, dtype)
    flat = out.reshape(-1)  # a view: each chunk is cast to dtype as it is stored
    for start, stop in _chunks(flat.size):
        flat[start:stop] = draw(stop - start)
    return out


@dataclass
class Problem:
    """One instance of the tutorial's regression problem for (seed, sizes, dtype)."""

    seed: int
    batch_size: int
    d_in: int
    hidden: int
    d_out: int
    dtype: Literal["float32", "float64"]

    def _data(self) -> tuple[np.ndarray, np.ndarray]:
        """x (N, D_in) and y (N, D_out), drawn in this order from stream 0."""
        rng = _generator(self.seed, _STREAM_DATA)
        x = _drawn(rng.standard_normal, (self.batch_size, self.d_in), self.dtype)
        y = _drawn(rng.standard_normal, (self.batch_size, self.d_out), self.dtype)
        return x, y

    def _weights(self) -> tuple[np.ndarray, np.ndarray]:
        """w1 (D_in, H) and w2 (H, D_out), drawn in this order from stream 1."""
        rng = _generator(self.seed, _STREAM_WEIGHTS)
        w1 = _drawn(rng.standard_normal, (self.d_in, self.hidden), self.dtype)
        w2 = _drawn(rng.standard_normal, (self.hidden, self.d_out), self.dtype)
        return w1, w2

    # -- numpy ----------------------------------------------------------------------------
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """x (N, D_in), y (N, D_out), w1 (D_in, H), w2 (H, D_out) as fresh numpy arrays."""
        # drawn anew on each call (cheap next to training), so nothing is held twice
        return (*self._data(), *self._weights())

    # -- torch ----------------------------------------------------------------------------
    def tensors(
        self, device: torch.device, requires_grad: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same x, y, w1, w2 as torch tensors on `device`; w1, w2 optionally require grad."""
        x, y, w1, w2 = (torch.from_numpy(a).to(device) for a in self.arrays())  # CPU: no copy
        w1.requires_grad_(requires_grad)
        w2.requires_grad_(requires_grad)
        return x, y, w1, w2

    def data(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, D_in) and y (N, D_out) on `device` (the module variants need no w1, w2)."""
        x, y = (torch.from_numpy(a).to(device) for a in self._data())
        return x, y

    def linear(
        self, name: str, in_features: int, out_features: int, device: torch.device
    ) -> torch.nn.Linear:
        """An nn.Linear whose weight and bias come from this instance, not the global RNG."""
        # skip_init builds the module without running its default (global-RNG) init
        layer = torch.nn.utils.skip_init(
            torch.nn.Linear,
            in_features,
            out_features,
            device=device,
            dtype=TORCH_DTYPES[self.dtype],
        )
        rng = _generator(self.seed, _STREAM_LAYERS, _LAYER_IDS[name])
        bound = 1.0 / math.sqrt(in_features)
        with torch.no_grad():
            # weight (out_features, in_features), then bias (out_features,), straight into the
            # layer's own memory a chunk at a time
            for param in (layer.weight, layer.bias):
                flat = param.view(-1)
                for start, stop in _chunks(flat.numel()):
                    values = rng.uniform(-bound, bound, stop - start).astype(self.dtype)
                    flat[start:stop].copy_(torch.from_numpy(values))
        return layer

    def choices(self) -> random.Random:
        """The run's own `random.Random` for DynamicNet's depth draws."""
        state = np.random.SeedSequence(self.seed, spawn_key=(_STREAM_CHOICES,)).generate_state(2)
        return random.Random(int(state[0]) << 32 | int(state[1]))
