"""Average ranks ("fractional" ranks, ties share the mean of their positions), batched over rows.

Equal to ``scipy.stats.rankdata(x, method="average")`` per row. The ranking work is a sort of each row;
on CPU the sort goes through numpy, whose SIMD sort is several times faster than ``torch.sort`` there
(zero-copy views, nothing leaves the host); on other devices ``torch.sort`` runs on the device.

Internally ranks are carried doubled (``2 * rank``, an integer even with ties), so that sums of products
of ranks are exact in float64 and a rank correlation equals scipy's to ~1e-15.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["rankdata", "twice_ranks"]


def _twice_ranks_numpy(x: np.ndarray, out_dtype=np.int64) -> np.ndarray:
    b, p = x.shape
    n = b * p
    if x.dtype == np.float32 and p < (1 << 31):
        # One int64 key per value: the float's order-preserving int32 image in the high word, the column
        # in the low word. Sorting the keys (numpy's SIMD sort) yields sorted values and permutation.
        bits = (x + np.float32(0.0)).view(np.int32)          # + 0.0 turns -0.0 into +0.0 (they tie)
        key = np.empty((b, p), dtype=np.int64)
        words = key.view(np.int32).reshape(b, p, 2)          # little endian: [..., 0] low, [..., 1] high
        if bits.min() >= 0:                                  # no negative values: bits already ordered
            words[..., 1] = bits
        else:
            np.bitwise_xor(bits, (bits >> 31) & np.int32(0x7FFFFFFF), out=words[..., 1])
        words[..., 0] = np.arange(p, dtype=np.int32)
        key.sort(axis=1)
        perm = words[..., 0]
        vals = words[..., 1]
    else:
        perm = np.argsort(x, axis=1)                         # tie order is irrelevant for average ranks
        vals = np.take_along_axis(x, perm, axis=1)
    new = np.empty((b, p), dtype=bool)                       # True where a run of equal values starts
    new[:, 0] = True
    np.not_equal(vals[:, 1:], vals[:, :-1], out=new[:, 1:])
    starts = np.flatnonzero(new)                             # runs never cross rows (new[:, 0] is True)
    if starts.size == n:                                     # no ties at all: rank = position + 1
        twice = np.broadcast_to(np.arange(2, 2 * p + 2, 2, dtype=out_dtype), (b, p))
    else:
        ends = np.empty_like(starts)
        ends[:-1] = starts[1:]
        ends[-1] = n
        row0 = (starts // p) * p
        # doubled average rank of a run [s, e): (s - row0 + 1) + (e - 1 - row0 + 1)
        run_value = (starts + ends - 2 * row0 + 1).astype(out_dtype)
        twice = np.repeat(run_value, ends - starts).reshape(b, p)
    out = np.empty((b, p), dtype=out_dtype)
    flat_index = perm + (np.arange(b, dtype=np.int64) * p)[:, None]
    out.reshape(-1)[flat_index.reshape(-1)] = twice.reshape(-1)
    return out


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

    ``backend``: "auto" (numpy sort on CPU, torch elsewhere), "numpy" or "torch" (for tests).
    """
    x = x.detach()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    use_numpy = backend == "numpy" or (backend == "auto" and x.device.type == "cpu")
    if use_numpy:
        return torch.from_numpy(_twice_ranks_numpy(np.ascontiguousarray(x.cpu().numpy())))
    return _twice_ranks_torch(x)


def rankdata(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1..P, float64) along the last dimension of ``x [..., P]``, as scipy.stats.rankdata."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1]) if x.dim() != 2 else x
    return (twice_ranks(flat).double() / 2.0).reshape(shape)
