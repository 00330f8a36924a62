"""Counter-based random numbers: the value drawn for (seed, stream, index, j) is a pure function of
those integers, so a sample is bit-identical whatever the batch it is generated in, the batch size,
or the number of worker processes. Vectorized with numpy uint64 arithmetic (SplitMix64 finalizer).

Library code never touches the global RNG: per-sample draws come from here, whole-tensor draws from
an explicit ``torch.Generator`` (see :func:`generator`).
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def stream_id(name: str) -> int:
    """A stable 32-bit id for a named random stream (crc32: identical across processes and runs)."""
    return zlib.crc32(name.encode("utf-8"))


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_u64(seed: int, stream: int | str, index, k: int) -> np.ndarray:
    """uint64 array [N, k] of well-mixed bits for each (seed, stream, index[n], j<k)."""
    if isinstance(stream, str):
        stream = stream_id(stream)
    idx = np.asarray(index.cpu().numpy() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
    if idx.size and idx.min() < 0:
        raise ValueError("sample indices must be >= 0")
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + np.uint64(stream & 0xFFFFFFFF))
        base = _mix(key ^ (idx.astype(np.uint64) * _M2))
        z = base[:, None] + (np.arange(1, k + 1, dtype=np.uint64)[None, :] * _GOLDEN)
        return _mix(z)


def uniform(seed: int, stream: int | str, index, k: int = 1) -> torch.Tensor:
    """float32 tensor [N, k] uniform in [0, 1), a pure function of (seed, stream, index, column)."""
    bits = hash_u64(seed, stream, index, k) >> np.uint64(40)  # top 24 bits: exact in float32
    return torch.from_numpy((bits.astype(np.float32) * np.float32(2.0**-24)))


def randint(seed: int, stream: int | str, index, high: int, k: int = 1) -> torch.Tensor:
    """int64 tensor [N, k] uniform on {0, ..., high-1}."""
    bits = hash_u64(seed, stream, index, k) >> np.uint64(11)
    return torch.from_numpy((bits % np.uint64(high)).astype(np.int64))


def normal(seed: int, stream: int | str, index, k: int = 1) -> torch.Tensor:
    """float32 tensor [N, k] standard normal (Box-Muller on two uniform columns)."""
    u = uniform(seed, stream, index, 2 * k).double()
    u1 = u[:, :k].clamp_min(2.0**-24)
    u2 = u[:, k:]
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)).float()


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """An explicit torch.Generator seeded with ``seed`` (never the global RNG)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the named random stream ``stream`` of ``seed`` (a pure function of both, the
    same in every process). The one helper for deriving per-purpose seeds: the zoo's
    (``zoo/init``, ``zoo/shuffle``, ...) and the checks' (``sanity/ci``, ...)."""
    return int(hash_u64(seed, stream_id(stream), [0], 1)[0, 0] >> np.uint64(1))
