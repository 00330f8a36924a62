"""Modified-backprop methods: Captum's guided backprop, deconvolution, DeepLift, DeepLiftShap and LRP.

Requirement on the model (checked, NotApplicable otherwise): every ReLU is its own ``nn.ReLU``
module -- not ``F.relu`` / ``torch.relu``, and (for DeepLift) not one module called twice -- because
Captum replaces the backward pass of non-linear *modules* through hooks. In-place ReLUs are made
out-of-place for the duration of a call by :func:`xaudit.explain.base.prepared`. Captum removes its
hooks in ``finally`` blocks; LRP's per-layer attributes are removed here even when Captum fails.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from captum.attr import LRP, Deconvolution, DeepLift, DeepLiftShap, GuidedBackprop
from captum.attr._utils.lrp_rules import EpsilonRule, IdentityRule
from torch import nn

from xaudit.core.errors import ConfigError, check_range
from xaudit.explain.arch import lrp_layers, require_relu_modules
from xaudit.explain.base import (DEFAULT_INTERNAL_BATCH, check_int, check_internal_batch, chunked, register,
                                 rows_per_chunk)
from xaudit.explain.gradient import _baseline_chunk, _check_baseline

IB = DEFAULT_INTERNAL_BATCH


@register("guided_backprop", family="modified_backprop", params={"internal_batch": IB}, passes=(1, 1),
          validate=check_internal_batch)
def guided_backprop(model, x, target, internal_batch=IB):
    """Guided backpropagation (Captum): gradients with only positive signals passed back through ReLUs."""
    require_relu_modules(model, "guided_backprop")
    gbp = GuidedBackprop(model)
    return chunked(lambda xc, tc: gbp.attribute(xc, target=tc), x, target, rows_per_chunk(len(x), 1, internal_batch))


@register("deconvolution", family="modified_backprop", params={"internal_batch": IB}, passes=(1, 1),
          validate=check_internal_batch)
def deconvolution(model, x, target, internal_batch=IB):
    """DeconvNet (Captum Deconvolution): ReLU applied to the backward signal instead of its gradient."""
    require_relu_modules(model, "deconvolution")
    dec = Deconvolution(model)
    return chunked(lambda xc, tc: dec.attribute(xc, target=tc), x, target, rows_per_chunk(len(x), 1, internal_batch))


def _check_deep_lift(p: dict[str, Any]) -> None:
    check_internal_batch(p)
    _check_baseline("baseline", p["baseline"])


@register("deep_lift", family="modified_backprop", params={"baseline": 0.0, "internal_batch": IB},
          passes=(2, 2), validate=_check_deep_lift)
def deep_lift(model, x, target, baseline=0.0, internal_batch=IB):
    """DeepLift, rescale rule (Captum), against ``baseline`` (0: black image). Captum runs input and
    baseline through the model together (2 image-passes per image)."""
    require_relu_modules(model, "deep_lift", allow_reuse=False)
    dl = DeepLift(model, multiply_by_inputs=True)
    rows = rows_per_chunk(len(x), 2, internal_batch)
    out = []
    for i in range(0, len(x), rows):
        j = min(i + rows, len(x))
        out.append(dl.attribute(x[i:j], baselines=_baseline_chunk(baseline, x, i, j), target=target[i:j]))
    return torch.cat(out)


def _check_dls(p: dict[str, Any]) -> None:
    check_internal_batch(p)
    check_int("n_baselines", p["n_baselines"], 2, 10_000)
    check_int("seed", p["seed"], 0, 2**63 - 1)
    b = p["baselines"]
    if b is not None and not (isinstance(b, torch.Tensor) and b.ndim == 4 and b.shape[0] >= 2):
        raise ConfigError("baselines", f"must be None or a tensor [B, C, H, W] with B >= 2, got "
                          f"{tuple(b.shape) if isinstance(b, torch.Tensor) else b!r}")


@register("deep_lift_shap", family="modified_backprop", stochastic=True,
          params={"baselines": None, "n_baselines": 16, "seed": 0, "internal_batch": IB},
          passes=lambda p, s: (2 * p["n_baselines"], 2 * p["n_baselines"]), validate=_check_dls)
def deep_lift_shap(model, x, target, baselines=None, n_baselines=16, internal_batch=IB, *, generator):
    """DeepLiftShap (Captum): DeepLift averaged over a set of reference images. ``n_baselines`` of
    ``baselines`` [B, C, H, W] (training images, supplied by the checks; None: the explained batch)
    are drawn without replacement from the generator (all of them when B <= n_baselines)."""
    require_relu_modules(model, "deep_lift_shap", allow_reuse=False)
    pool = (x if baselines is None else baselines).to(device=x.device, dtype=x.dtype)
    if len(pool) < 2:
        raise ConfigError("baselines", "deep_lift_shap needs at least 2 reference images (a batch of 1 "
                          "cannot be its own reference set; pass baselines=)")
    if len(pool) > n_baselines:
        pick = torch.randperm(len(pool), generator=generator, device=generator.device)[:n_baselines]
        pool = pool[pick.to(pool.device)]
    dls = DeepLiftShap(model, multiply_by_inputs=True)
    rows = rows_per_chunk(len(x), 2 * len(pool), internal_batch)
    return chunked(lambda xc, tc: dls.attribute(xc, baselines=pool, target=tc), x, target, rows)


# ----------------------------------------------------------------------------------------- LRP
def _check_lrp(p: dict[str, Any]) -> None:
    check_internal_batch(p)
    check_range("epsilon", p["epsilon"], 0.0, 1e3)


@contextlib.contextmanager
def _lrp_rules(model: nn.Module, epsilon: float):
    """Attach epsilon rules to the layers (identity to input pre-processing and shape-only layers) and
    remove every attribute Captum's LRP leaves on the modules afterwards, whatever happens."""
    passthrough = set(lrp_layers(model))
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    had = {id(m): (hasattr(m, "rule"), hasattr(m, "activations")) for _, m in leaves}
    try:
        for n, m in leaves:
            if hasattr(m, "rule"):
                continue  # a user-chosen rule wins
            if n in passthrough or isinstance(m, (nn.Flatten, nn.Identity)):
                m.rule = IdentityRule() if n in passthrough else EpsilonRule(epsilon=1e-9)
            elif isinstance(m, (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                m.rule = EpsilonRule(epsilon=epsilon)
        yield
    finally:
        for _, m in leaves:
            had_rule, had_act = had[id(m)]
            if not had_rule and "rule" in m.__dict__:
                del m.rule
            if not had_act and "activations" in m.__dict__:
                del m.activations


@register("lrp", family="modified_backprop", params={"epsilon": 1e-7, "internal_batch": IB}, passes=(2, 1),
          validate=_check_lrp)
def lrp(model, x, target, epsilon=1e-7, internal_batch=IB):
    """LRP-epsilon (Captum LRP; epsilon rule on conv, linear and pooling layers; iNNvestigate's default
    epsilon 1e-7). Applies to plain chains of Conv2d / Linear / ReLU / pooling / Flatten layers, where an
    input normalization module passes relevance through unchanged; NotApplicable on BatchNorm,
    residual additions and functional ops."""
    lrp_layers(model)  # NotApplicable before any work
    explainer = LRP(model)

    def one(xc, tc):
        with _lrp_rules(model, epsilon):  # per call: Captum deletes every rule when a call ends
            return explainer.attribute(xc, target=tc)

    return chunked(one, x, target, rows_per_chunk(len(x), 1, internal_batch))
