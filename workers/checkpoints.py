"""A run's state as a safetensors file: written atomically, checked when it is read back.

A run is a pure function of (variant, hyperparameters, seed, device kind, threads); x and y come
from the seed again, so its state after k steps is what the variant changes as it trains: the
weights (w1, w2, or a module's `state_dict`), an optimizer's buffers (SGD's momentum, Adam's
moments and step count), DynamicNet's own `random.Random`, and k. A variant names that state once
(`run.keep(...)`); `CheckpointState` turns it into one file and back, in place.

The file (`<folder>/<step:012d>.safetensors`):
- tensors: each array or tensor under its own name (`w1`, `w2`), a module's under its plain
  `state_dict` keys (`0.weight`, `linear1.bias`: `load_state_dict` takes them as they are, see
  docs/checkpoints.md), an optimizer's state tensors under `optimizer.state.{i}.{name}`;
- `__metadata__["trainwire"]`: JSON with the format, the step, the job's identity (id, variant,
  seed, hyperparameters), the optimizer's non-tensor state and param_groups, the RNG's state.

Written to a temporary file in the same folder, fsynced, renamed over the final name, then the
folder fsynced: a `kill -9` at any instant leaves either the whole file or none under the final
name (a stray `.*.tmp` is never read). The sha256 of the bytes goes to the store, and a load
checks it. Loading never runs code (safetensors holds tensors and strings only).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

FORMAT = 1
METADATA_KEY = "trainwire"
OPTIMIZER_PREFIX = "optimizer.state."


class CheckpointUnusable(Exception):
    """A checkpoint file that is missing, damaged or of another run's shapes."""


def checkpoint_name(step: int) -> str:
    return f"{step:012d}.safetensors"


def checkpoint_path(folder: str | Path, step: int) -> Path:
    """Where the checkpoint after `step` steps of the job with this folder lives."""
    return Path(folder) / checkpoint_name(step)


@dataclass(frozen=True)
class Written:
    path: str
    bytes: int
    sha256: str


def write_atomically(path: Path, data: bytes) -> None:
    """`data` under `path`, all of it or nothing, durably (temp file, fsync, rename, fsync of
    the folder)."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash of the machine
    finally:
        os.close(fd)


def read_metadata(data: bytes) -> dict[str, Any]:
    """The trainwire metadata of a safetensors file's bytes (its header: a little-endian u64
    length, then JSON)."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        return dict(json.loads(header["__metadata__"][METADATA_KEY]))
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise CheckpointUnusable(f"not a trainwire checkpoint: {exc}") from None


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss_next = rng.getstate()
    return [version, list(internal), gauss_next]


def _set_rng_state(rng: random.Random, state: list[Any]) -> None:
    version, internal, gauss_next = state
    rng.setstate((version, tuple(internal), gauss_next))


class CheckpointState:
    """The state a variant registered (`run.keep(w1=w1, model=model, ...)`), by kind:
    numpy arrays and tensors by name, one module (plain state_dict keys), one optimizer, and
    `random.Random`s."""

    def __init__(self, state: dict[str, Any]):
        self.arrays: dict[str, np.ndarray] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        self.module: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.rngs: dict[str, random.Random] = {}
        for name, value in state.items():
            if isinstance(value, np.ndarray):
                self.arrays[name] = value
            elif isinstance(value, torch.Tensor):
                self.tensors[name] = value
            elif isinstance(value, torch.nn.Module):
                assert self.module is None, "one module per run"
                self.module = value
            elif isinstance(value, torch.optim.Optimizer):
                assert self.optimizer is None, "one optimizer per run"
                self.optimizer = value
            elif isinstance(value, random.Random):
                self.rngs[name] = value
            else:
                raise TypeError(f"cannot checkpoint {name}: {type(value).__name__}")

    def _flat(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Every tensor of the state on the host, and the optimizer's other state."""
        flat: dict[str, torch.Tensor] = {}
        for name, array in self.arrays.items():
            flat[name] = torch.from_numpy(np.ascontiguousarray(array))
        for name, tensor in self.tensors.items():
            flat[name] = tensor.detach()
        if self.module is not None:
            for key, tensor in self.module.state_dict().items():
                flat[key] = tensor.detach()
        optimizer: dict[str, Any] = {}
        if self.optimizer is not None:
            sd = self.optimizer.state_dict()
            scalars: dict[str, dict[str, Any]] = {}
            for index, buffers in sd["state"].items():
                for key, value in buffers.items():
                    if isinstance(value, torch.Tensor):
                        flat[f"{OPTIMIZER_PREFIX}{index}.{key}"] = value.detach()
                    else:
                        scalars.setdefault(str(index), {})[key] = value
            optimizer = {"scalars": scalars, "param_groups": sd["param_groups"]}
        # the host copy is where a GPU run syncs (once per checkpoint, not per step)
        return {k: v.to("cpu").contiguous() for k, v in flat.items()}, optimizer

    def serialize(self, step: int, identity: dict[str, Any]) -> bytes:
        """The state after `step` steps as a safetensors file's bytes."""
        tensors, optimizer = self._flat()
        meta = {
            "format": FORMAT,
            "step": step,
            **identity,
            "optimizer": optimizer or None,
            "rng": {name: _rng_state(rng) for name, rng in self.rngs.items()},
        }
        return save_tensors(tensors, metadata={METADATA_KEY: json.dumps(meta)})

    def write(self, folder: str, step: int, identity: dict[str, Any]) -> Written:
        data = self.serialize(step, identity)
        path = checkpoint_path(folder, step)
        write_atomically(path, data)
        return Written(str(path), len(data), hashlib.sha256(data).hexdigest())

    def load(self, path: str, sha256: str | None, step: int) -> None:
        """Put the state of the file in place (the arrays, tensors, module, optimizer and RNGs
        registered); CheckpointUnusable if it is missing, damaged or does not fit."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise CheckpointUnusable(f"cannot read {path}: {exc}") from None
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise CheckpointUnusable(f"{path} does not have the sha256 recorded for it")
        meta = read_metadata(data)
        if meta.get("format") != FORMAT or meta.get("step") != step:
            raise CheckpointUnusable(f"{path} is not the checkpoint of step {step}")
        loaded = load_tensors(data)
        try:
            self._put(loaded, meta)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointUnusable(f"{path} does not fit this run: {exc}") from None

    def _put(self, loaded: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        for name, array in self.arrays.items():
            source = loaded[name].numpy()
            if source.shape != array.shape or source.dtype != array.dtype:
                raise ValueError(f"{name} is {source.shape} {source.dtype}")
            array[...] = source
        with torch.no_grad():
            for name, tensor in self.tensors.items():
                saved = loaded[name]
                if saved.shape != tensor.shape or saved.dtype != tensor.dtype:
                    raise ValueError(f"{name} is {tuple(saved.shape)} {saved.dtype}")
                tensor.copy_(saved)
        if self.module is not None:
            weights = {k: v for k, v in loaded.items() if not k.startswith(OPTIMIZER_PREFIX)}
            weights = {k: v for k, v in weights.items() if k not in self.arrays}
            self.module.load_state_dict(weights, strict=True)
        if self.optimizer is not None:
            kept = meta.get("optimizer") or {}
            state: dict[int, dict[str, Any]] = {}
            for key, tensor in loaded.items():
                if key.startswith(OPTIMIZER_PREFIX):
                    index, name = key[len(OPTIMIZER_PREFIX) :].split(".", 1)
                    state.setdefault(int(index), {})[name] = tensor
            for index, scalars in kept.get("scalars", {}).items():
                state.setdefault(int(index), {}).update(scalars)
            # this run's param_groups (a fork may change the learning rate), the saved state
            groups = self.optimizer.state_dict()["param_groups"]
            self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        for name, rng in self.rngs.items():
            _set_rng_state(rng, meta["rng"][name])
