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


def _twice_ranks_numpy(x: np.ndarray) -> np.ndarray:
    b, p = x.shape
    if x.dtype == np.float32:
        # Sort one int64 key per value: the float's order-preserving int32 image in the high bits, the
        # column in the low bits. One value sort then yields both sorted values and the permutation.
        bits = (x + np.float32(0.0)).view(np.int32)          # + 0.0 turns -0.0 into +0.0 (they tie)
        key32 = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))
        nb = max(1, (p - 1).bit_length())
        key = (key32.astype(np.int64) << nb) | np.arange(p, dtype=np.int64)
        key.sort(axis=1)
        perm = key & ((1 << nb) - 1)
        vals = key >> nb
    else:
        perm = np.argsort(x, axis=1)                         # tie order is irrelevant for average ranks
        vals = np.take_along_axis(x, perm, axis=1)
    j = np.arange(p, dtype=np.int64)
    twice = np.broadcast_to(2 * j + 2, (b, p)).copy()
    new = np.empty((b, p), dtype=bool)
    new[:, 0] = True
    np.not_equal(vals[:, 1:], vals[:, :-1], out=new[:, 1:])
    tied = ~new.all(axis=1)
    if tied.any():                                           # only rows with ties need group bounds
        nt = new[tied]
        start = np.maximum.accumulate(np.where(nt, j, 0), axis=1)
        last = np.empty_like(nt)
        last[:, :-1] = nt[:, 1:]
        last[:, -1] = True
        end = np.minimum.accumulate(np.where(last, j, p)[:, ::-1], axis=1)[:, ::-1]
        twice[tied] = start + end + 2
    out = np.empty((b, p), dtype=np.int64)
    rows = (np.arange(b, dtype=np.int64) * p)[:, None]
    out.reshape(-1)[(perm + rows).reshape(-1)] = twice.reshape(-1)
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
