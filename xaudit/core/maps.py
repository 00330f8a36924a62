"""Map normalizations of the sanity-checks protocol (docs/protocols.md#17-map-normalizations), batched, torch.

Every function takes a raw attribution ``[N, C, H, W]`` (any float dtype, any device) and returns
``[N, 1, H, W]`` of the same dtype and device; channels are summed first.

Percentiles are numpy's default ("linear" interpolation between order statistics,
``np.percentile(x, q)``), computed per image over its H*W pixels.

Degenerate maps are defined, never NaN: under abs and 0-1 a map whose values are all equal becomes all
zeros; under signed an all-zero map stays zeros and a constant nonzero map becomes +-1. A constant map
carries no ranking: the similarity measures report it as NaN with reason ``constant_*``.
An image with a non-finite value (NaN, inf) gives an all-NaN map, so that measures downstream mark it
``nonfinite_input`` instead of scoring garbage.
"""
from __future__ import annotations

import numpy as np
import torch

from xaudit.core.errors import ConfigError, check_range

__all__ = ["abs_map", "signed_map", "zero_one_map", "percentile"]


def _check_raw(raw: torch.Tensor, name: str = "raw") -> None:
    if not isinstance(raw, torch.Tensor):
        raise ConfigError(name, f"must be a torch.Tensor [N, C, H, W], got {type(raw).__name__}")
    if raw.dim() != 4:
        raise ConfigError(name, f"must have shape [N, C, H, W] (4 dims), got shape {tuple(raw.shape)}")
    if not raw.is_floating_point():
        raise ConfigError(name, f"must be a floating-point tensor, got dtype {raw.dtype}")


def percentile(flat: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row q-th percentile of ``flat [N, P]``, numpy's default linear interpolation. Returns [N].

    Uses the two order statistics around the position (selection, O(P) per row) instead of a full sort:
    numpy's partition on the CPU (about 5x faster there than ``torch.kthvalue``), ``kthvalue`` elsewhere.
    """
    check_range("q", q, 0.0, 100.0)
    p = flat.shape[-1]
    pos = q / 100.0 * (p - 1)
    lo = int(pos)
    frac = pos - lo
    hi = min(lo + 1, p - 1)
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64) and flat.shape[0] > 0:
        part = np.partition(flat.detach().numpy(), [lo, hi] if hi != lo else lo, axis=-1)
        v_lo = torch.from_numpy(np.ascontiguousarray(part[..., lo]))
        v_hi = torch.from_numpy(np.ascontiguousarray(part[..., hi]))
    else:
        v_lo = torch.kthvalue(flat, lo + 1, dim=-1).values
        v_hi = torch.kthvalue(flat, hi + 1, dim=-1).values if frac else v_lo
    if frac == 0.0:
        return v_lo
    return v_lo + (v_hi - v_lo) * frac


def _finite_rows(flat: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(flat).all(dim=-1)


def _finish(out: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    # images with a non-finite input value become all-NaN (see module docstring)
    if not bool(finite.all()):
        out = torch.where(finite.view(-1, 1, 1, 1), out, torch.full_like(out, float("nan")))
    return out


def abs_map(raw: torch.Tensor, q: float = 99.0) -> torch.Tensor:
    """The *abs* (grayscale) normalization: ``s = sum_c |e|``, then ``(s - min) / (P_q(s) - min)`` clipped
    to [0, 1] (PAIR-saliency ``VisualizeImageGrayscale``, which the sanity-checks code used). Output in [0, 1].

    If ``P_q(s) == min(s)`` (more than (100 - q)% of the pixels at the minimum, e.g. a sparse map) the
    clip would erase the map, so the scale falls back to ``max(s) - min(s)`` for that image.
    A constant map gives zeros.
    """
    _check_raw(raw)
    s = raw.abs().sum(dim=1, keepdim=True)
    flat = s.flatten(1)
    finite = _finite_rows(flat)
    flat0 = torch.where(finite.unsqueeze(1), flat, torch.zeros_like(flat))
    lo = flat0.amin(dim=1)
    span = percentile(flat0, q) - lo
    span = torch.where(span > 0, span, flat0.amax(dim=1) - lo)
    ok = span > 0
    scale = torch.where(ok, span, torch.ones_like(span)).view(-1, 1, 1, 1)
    out = ((s - lo.view(-1, 1, 1, 1)) / scale).clamp(0.0, 1.0)
    out = torch.where(ok.view(-1, 1, 1, 1), out, torch.zeros_like(out))
    return _finish(out, finite)


def signed_map(raw: torch.Tensor, q: float = 99.0) -> torch.Tensor:
    """The *signed* (diverging) normalization: ``s = sum_c e`` divided by ``P_q(|s|)``, not clipped.

    Choice recorded: the percentile is taken of ``|s|`` (PAIR-saliency's ``VisualizeImageDiverging`` uses
    ``|P_q(s)|``, which is ~0 or tiny for mostly-negative maps and then blows the map up). Signs and the
    order of values are kept, so rank correlations see exactly the ranking of ``s``.
    If ``P_q(|s|) == 0`` the scale falls back to ``max |s|``; an all-zero map stays all zeros.
    """
    _check_raw(raw)
    s = raw.sum(dim=1, keepdim=True)
    flat = s.flatten(1)
    finite = _finite_rows(flat)
    mag = torch.where(finite.unsqueeze(1), flat.abs(), torch.zeros_like(flat))
    span = percentile(mag, q)
    span = torch.where(span > 0, span, mag.amax(dim=1))
    ok = span > 0
    scale = torch.where(ok, span, torch.ones_like(span)).view(-1, 1, 1, 1)
    out = torch.where(ok.view(-1, 1, 1, 1), s / scale, torch.zeros_like(s))
    return _finish(out, finite)


def zero_one_map(raw: torch.Tensor) -> torch.Tensor:
    """The *0-1* normalization: ``s = sum_c e``, then min-max over the whole map to [0, 1].
    A constant map gives zeros."""
    _check_raw(raw)
    s = raw.sum(dim=1, keepdim=True)
    flat = s.flatten(1)
    finite = _finite_rows(flat)
    flat0 = torch.where(finite.unsqueeze(1), flat, torch.zeros_like(flat))
    lo = flat0.amin(dim=1)
    span = flat0.amax(dim=1) - lo
    ok = span > 0
    scale = torch.where(ok, span, torch.ones_like(span)).view(-1, 1, 1, 1)
    out = ((s - lo.view(-1, 1, 1, 1)) / scale).clamp(0.0, 1.0)
    out = torch.where(ok.view(-1, 1, 1, 1), out, torch.zeros_like(out))
    return _finish(out, finite)
