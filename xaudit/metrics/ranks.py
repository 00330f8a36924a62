"""Average ranks ("fractional" ranks, ties share the mean of their positions), batched over rows.

Equal to ``scipy.stats.rankdata(x, method="average")`` per row. The ranking work is a sort of each row;
on CPU the sort goes through numpy, whose SIMD sort is several times faster than ``torch.sort`` there
(zero-copy views, nothing leaves the host); on other devices ``torch.sort`` runs on the device.

Internally ranks are carried doubled (``2 * rank``, an integer even with ties), so that sums of products
of ranks are exact in float64 and a rank correlation equals scipy's to ~1e-15.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from xaudit.metrics._native import kernels

__all__ = ["rankdata", "twice_ranks"]


@functools.lru_cache(maxsize=16)
def _key_template(b: int, p: int) -> np.ndarray:
    """int64 [b, p] whose low 32 bits hold each entry's flat index (row * p + column)."""
    t = np.arange(b * p, dtype=np.int64).reshape(b, p)
    t.flags.writeable = False
    return t


@functools.lru_cache(maxsize=16)
def _untied_ranks(b: int, p: int, dtype) -> np.ndarray:
    """Doubled ranks 2, 4, ..., 2p repeated for b rows, flat (the ranks when a row has no ties)."""
    t = np.tile(np.arange(2, 2 * p + 2, 2, dtype=dtype), b)
    t.flags.writeable = False
    return t


def sorted_keys(x: np.ndarray) -> np.ndarray:
    """Each row of float32 ``x [b, p]`` (b * p < 2^31, no NaN) as sorted int64 keys: the value's
    order-preserving int32 image in the high word, its flat index (row * p + column) in the low word.
    Sorting the keys (numpy's SIMD sort) gives the sorted values and the permutation at once."""
    b, p = x.shape
    bits = (x + np.float32(0.0)).view(np.int32)          # + 0.0 turns -0.0 into +0.0 (they tie)
    if bits.min() < 0:                                   # negative floats: flip to keep the order
        bits = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))
    key = _key_template(b, p).copy()
    key.view(np.int32).reshape(b, p, 2)[..., 1] = bits   # little endian: [..., 1] is the high word
    key.sort(axis=1)
    return key


def native_ok(x: np.ndarray) -> bool:
    """Whether the compiled kernels can rank ``x`` (float32 rows, packed keys fit)."""
    return kernels is not None and x.dtype == np.float32 and x.size < (1 << 31)


def _twice_ranks_numpy(x: np.ndarray, out_dtype=np.int64, native: bool = True) -> np.ndarray:
    b, p = x.shape
    n = b * p
    if x.dtype == np.float32 and n < (1 << 31):
        key = sorted_keys(x)
        if native and kernels is not None:                   # the run scan in C: one pass
            out64 = np.empty((b, p), dtype=np.float64)
            kernels.ranks_from_keys(key, out64, b, p)
            return out64 if out_dtype == np.float64 else out64.astype(out_dtype)
        flat_index = (key & 0xFFFFFFFF).reshape(-1)
        vals = key.view(np.int32).reshape(b, p, 2)[..., 1]
    else:
        perm = np.argsort(x, axis=1)                         # tie order is irrelevant for average ranks
        vals = np.take_along_axis(x, perm, axis=1)
        flat_index = (perm + (np.arange(b, dtype=np.int64) * p)[:, None]).reshape(-1)
    same = np.zeros((b, p), dtype=bool)                      # True where a value equals its predecessor
    np.equal(vals[:, 1:], vals[:, :-1], out=same[:, 1:])
    out = np.empty(n, dtype=out_dtype)
    n_cont = int(np.count_nonzero(same))
    if n_cont > n // 4:
        # many ties (e.g. a mostly-zero map): one value per run, spread over the run, one scatter
        start = np.flatnonzero(~same)                        # every run's start (same[:, 0] is False)
        length = np.diff(start, append=n)
        value = (2 * (start - (start // p) * p) + length + 1).astype(out_dtype)
        out[flat_index] = np.repeat(value, length)
        return out.reshape(b, p)
    out[flat_index] = _untied_ranks(b, p, out_dtype)         # as if there were no ties: 2 * position + 2
    if n_cont:                                               # then fix the few runs of tied values
        cont = np.flatnonzero(same)                          # sorted positions continuing a run
        first = ~same.reshape(-1)[cont - 1]                  # continuation right after the run's start
        start = cont[first] - 1                              # (runs never cross rows: same[:, 0] False)
        run = np.cumsum(first) - 1                           # run of each continuation
        length = np.bincount(run, minlength=start.size) + 1
        # doubled average rank of the run [start, start + length) of a row beginning at row0
        value = (2 * (start - (start // p) * p) + length + 1).astype(out_dtype)
        out[flat_index[start]] = value
        out[flat_index[cont]] = value[run]
    return out.reshape(b, p)


def _twice_ranks_torch(x: torch.Tensor) -> torch.Tensor:
    b, p = x.shape
    vals, perm = torch.sort(x, dim=-1)
    j = torch.arange(p, device=x.device, dtype=torch.int64).expand(b, p)
    new = torch.ones((b, p), dtype=torch.bool, device=x.device)
    new[:, 1:] = vals[:, 1:] != vals[:, :-1]
    last = torch.ones_like(new)
    last[:, :-1] = new[:, 1:]
    start = torch.where(new, j, torch.zeros_like(j)).cummax(dim=-1).values
    end = torch.where(last, j, torch.full_like(j, p)).flip(-1).cummin(dim=-1).values.flip(-1)
    return torch.empty_like(start).scatter_(-1, perm, start + end + 2)


def twice_ranks(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``2 * average rank`` (int64, values 2..2P) of each row of ``x [B, P]``; same device as ``x``.

    ``backend``: "auto" (numpy sort and the compiled run scan on CPU, torch elsewhere), "native",
    "numpy" (numpy only) or "torch" (for tests).
    """
    x = x.detach()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    use_numpy = backend in ("numpy", "native") or (backend == "auto" and x.device.type == "cpu")
    if use_numpy:
        return torch.from_numpy(_twice_ranks_numpy(np.ascontiguousarray(x.cpu().numpy()),
                                                   native=backend != "numpy"))
    return _twice_ranks_torch(x)


def rankdata(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1..P, float64) along the last dimension of ``x [..., P]``, as scipy.stats.rankdata."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1]) if x.dim() != 2 else x
    return (twice_ranks(flat).double() / 2.0).reshape(shape)
