"""Localization of an attribution against a ground-truth mask (e.g. a trigger's footprint), per image.

``attr``: ``[N, C, H, W]`` raw attributions, ``[N, 1, H, W]`` or ``[N, H, W]`` maps. ``mask``: ``[N, H, W]``
(or ``[N, 1, H, W]``) bool, or numbers that are all 0 or 1. Every measure returns ``Tensor[N]`` float64
(or a :class:`MeasureResult` with ``return_reasons=True``). A mask that is empty or covers the whole
image in any image raises :class:`ConfigError` naming the images: localization is undefined there.

Channel reduction (``reduce``) for the measures that take it: "abs" = sum over channels of |e| (the
trojan benchmark's choice, default), "signed" = sum over channels of e, "positive" = max(sum_c e, 0)
(Arras et al.'s positive relevance).

Ties are resolved as the expectation over uniformly random tie-breaking (pointing game, rank accuracy),
so values are deterministic and a constant map scores at chance level instead of by pixel order.
"""
from __future__ import annotations

import torch

from xaudit.core.errors import ConfigError, check_choice
from xaudit.metrics._base import MEASURES, code, finish, is_constant
from xaudit.metrics.ranks import twice_ranks
from xaudit.metrics.similarity import top_k_membership

__all__ = ["trigger_distance", "blank_distance", "mask_pearson", "pointing_game", "mass_accuracy",
           "rank_accuracy", "pixel_auroc", "reduce_channels"]

_REDUCE = ("abs", "signed", "positive")


def reduce_channels(attr: torch.Tensor, reduce: str = "abs") -> torch.Tensor:
    """``[N, C, H, W]``, ``[N, 1, H, W]`` or ``[N, H, W]`` -> ``[N, H, W]`` by the rule ``reduce``."""
    check_choice("reduce", reduce, _REDUCE)
    if not isinstance(attr, torch.Tensor) or attr.dim() not in (3, 4):
        raise ConfigError("attr", "must be a torch.Tensor of shape [N, C, H, W] or [N, H, W], got "
                                  f"{tuple(attr.shape) if isinstance(attr, torch.Tensor) else type(attr).__name__}")
    if not attr.is_floating_point():
        raise ConfigError("attr", f"must be a floating-point tensor, got dtype {attr.dtype}")
    x = attr.unsqueeze(1) if attr.dim() == 3 else attr
    if reduce == "abs":
        return x.abs().sum(1)
    s = x.sum(1)
    return s.clamp_min(0) if reduce == "positive" else s


def _mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Validate a ground-truth mask against maps ``like [N, H, W]``; return bool [N, H*W]."""
    if not isinstance(mask, torch.Tensor):
        raise ConfigError("mask", f"must be a torch.Tensor [N, H, W] of bool, got {type(mask).__name__}")
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if tuple(mask.shape) != tuple(like.shape):
        raise ConfigError("mask", f"must have shape [N, H, W] = {tuple(like.shape)} to match attr, "
                                  f"got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ConfigError("mask", "must be bool or hold only 0 and 1")
        mask = mask != 0
    mask = mask.to(like.device).flatten(1)
    count = mask.sum(1)
    empty = (count == 0).nonzero().flatten().tolist()
    full = (count == mask.shape[1]).nonzero().flatten().tolist()
    if empty or full:
        parts = []
        if empty:
            parts.append(f"empty in images {empty[:10]}{' ...' if len(empty) > 10 else ''}")
        if full:
            parts.append(f"covers the whole image in images {full[:10]}{' ...' if len(full) > 10 else ''}")
        raise ConfigError("mask", "the ground-truth mask is " + " and ".join(parts) + "; localization "
                                  "needs at least one pixel inside and one outside the mask")
    return mask


def _prep(attr, mask, reduce):
    m = reduce_channels(attr, reduce)
    g = _mask(mask, m)
    flat = m.flatten(1).to(torch.float64)
    finite = torch.isfinite(flat).all(1)
    return torch.nan_to_num(flat), g, finite


def _codes(finite: torch.Tensor, **conditions: torch.Tensor) -> torch.Tensor:
    codes = torch.zeros(finite.shape, dtype=torch.int8, device=finite.device)
    for name, cond in conditions.items():
        codes = torch.where(cond, code(name), codes).to(torch.int8)
    return torch.where(~finite, code("nonfinite_input"), codes).to(torch.int8)


@MEASURES.register("trigger_distance", kind="localization", higher_is_better=False, range=(0.0, 1.0),
                   reference="Casper et al. 2023 (trojan benchmark): mean |a - g|, a = sum_c|attr| / max",
                   nan_reasons=("nonfinite_input",))
def trigger_distance(attr: torch.Tensor, mask: torch.Tensor, *, return_reasons: bool = False):
    """The trojan benchmark's L1 localization score: ``mean |a - g|`` with ``a = sum_c |attr| / max(...)``
    per image and ``g`` the mask. Lower is better; compare with :func:`blank_distance` (``a = 0``).
    An all-zero attribution is taken as ``a = 0`` (the blank guess) rather than 0/0."""
    flat, g, finite = _prep(attr, mask, "abs")
    top = flat.amax(1, keepdim=True)
    a = torch.where(top > 0, flat / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(flat))
    out = (a - g.to(torch.float64)).abs().mean(1)
    return finish(out, _codes(finite), return_reasons)


@MEASURES.register("blank_distance", kind="localization", higher_is_better=False, range=(0.0, 1.0),
                   reference="Casper et al. 2023: the blank-guess baseline, mean g")
def blank_distance(mask: torch.Tensor, *, return_reasons: bool = False):
    """The blank guess's :func:`trigger_distance` (``a = 0``): the mask's area fraction ``mean g``."""
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (3, 4):
        raise ConfigError("mask", "must be a torch.Tensor [N, H, W]")
    like = mask[:, 0] if mask.dim() == 4 else mask
    g = _mask(mask, torch.empty(like.shape, device=mask.device))
    out = g.to(torch.float64).mean(1)
    return finish(out, torch.zeros(out.shape, dtype=torch.int8, device=out.device), return_reasons)


@MEASURES.register("mask_pearson", kind="localization", higher_is_better=True, range=(-1.0, 1.0),
                   reference="Casper et al. 2023 (later version): Pearson correlation of a with g",
                   nan_reasons=("constant_map", "nonfinite_input"))
def mask_pearson(attr: torch.Tensor, mask: torch.Tensor, *, reduce: str = "abs",
                 return_reasons: bool = False):
    """Pearson correlation of the reduced map with the 0/1 mask, per image (scale-free, so the same
    for ``a = sum_c|attr| / max``). NaN for a constant map (reason ``constant_map``)."""
    flat, g, finite = _prep(attr, mask, reduce)
    y = g.to(torch.float64)
    x = flat - flat.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    out = ((x * y).sum(1) / torch.sqrt((x * x).sum(1) * (y * y).sum(1))).clamp(-1.0, 1.0)
    return finish(out, _codes(finite, constant_map=is_constant(flat)), return_reasons)


@MEASURES.register("pointing_game", kind="localization", higher_is_better=True, range=(0.0, 1.0),
                   reference="Zhang et al. 2016 (pointing game), no tolerance; ties: fraction of maxima "
                             "inside the mask", nan_reasons=("nonfinite_input",))
def pointing_game(attr: torch.Tensor, mask: torch.Tensor, *, reduce: str = "abs",
                  return_reasons: bool = False):
    """1 if the map's maximum lies inside the mask, else 0, per image. With several maximal pixels the
    value is the fraction of them inside the mask (the hit probability under random tie-breaking), so a
    constant map scores the mask's area fraction, i.e. chance."""
    flat, g, finite = _prep(attr, mask, reduce)
    is_max = flat == flat.amax(1, keepdim=True)
    out = (is_max & g).sum(1).to(torch.float64) / is_max.sum(1).to(torch.float64)
    return finish(out, _codes(finite), return_reasons)


@MEASURES.register("mass_accuracy", kind="localization", higher_is_better=True, range=(0.0, 1.0),
                   reference="Arras et al. 2022 (CLEVR-XAI): relevance mass accuracy",
                   nan_reasons=("zero_relevance", "nonfinite_input"))
def mass_accuracy(attr: torch.Tensor, mask: torch.Tensor, *, reduce: str = "abs",
                  return_reasons: bool = False):
    """Relevance mass accuracy: the share of the map's relevance that falls inside the mask,
    ``sum(R * g) / sum(R)``. ``reduce`` must give non-negative relevance ("abs" or "positive"; Arras et
    al. use positive relevance). NaN if the map has no relevance at all (reason ``zero_relevance``)."""
    check_choice("reduce", reduce, ("abs", "positive"))
    flat, g, finite = _prep(attr, mask, reduce)
    total = flat.sum(1)
    out = (flat * g).sum(1) / torch.where(total > 0, total, torch.ones_like(total))
    return finish(out, _codes(finite, zero_relevance=total <= 0), return_reasons)


@MEASURES.register("rank_accuracy", kind="localization", higher_is_better=True, range=(0.0, 1.0),
                   reference="Arras et al. 2022 (CLEVR-XAI): relevance rank accuracy",
                   nan_reasons=("nonfinite_input",))
def rank_accuracy(attr: torch.Tensor, mask: torch.Tensor, *, reduce: str = "abs",
                  return_reasons: bool = False):
    """Relevance rank accuracy: with K = the mask's pixel count, the fraction of the K highest-relevance
    pixels that lie inside the mask. Ties at the K-th value count by their expected share under random
    tie-breaking; chance level is K / P."""
    flat, g, finite = _prep(attr, mask, reduce)
    k = g.sum(1)
    member = top_k_membership(flat, int(k[0]) if bool((k == k[0]).all()) else k)
    out = (member * g).sum(1) / k.to(torch.float64)
    return finish(out, _codes(finite), return_reasons)


@MEASURES.register("pixel_auroc", kind="localization", higher_is_better=True, range=(0.0, 1.0),
                   reference="sklearn.metrics.roc_auc_score(mask, map) per image (ties count 1/2)",
                   nan_reasons=("nonfinite_input",))
def pixel_auroc(attr: torch.Tensor, mask: torch.Tensor, *, reduce: str = "abs",
                return_reasons: bool = False):
    """AUROC of the map's pixel values as a detector of mask pixels, per image: the probability that a
    random mask pixel outranks a random outside pixel, ties counting 1/2 (Mann-Whitney U / (n1 n0)).
    0.5 is chance (and a constant map's value)."""
    flat, g, finite = _prep(attr, mask, reduce)
    r2 = twice_ranks(flat).to(torch.float64)          # doubled average ranks: exact sums
    n1 = g.sum(1).to(torch.float64)
    n0 = g.shape[1] - n1
    u = (r2 * g).sum(1) / 2.0 - n1 * (n1 + 1) / 2.0
    return finish(u / (n1 * n0), _codes(finite), return_reasons)
