"""Layer initializers, drawn from an explicit ``torch.Generator`` (never the global RNG).

The rule (used both to build zoo models and to re-initialize blocks in :func:`xaudit.zoo.randomize`)
is each layer type's own PyTorch default ``reset_parameters`` rule, re-implemented with a generator:

- Conv1d/2d/3d, ConvTranspose, Linear: weight ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (that is
  ``kaiming_uniform_(a=sqrt(5))``), bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
- BatchNorm / GroupNorm / LayerNorm / InstanceNorm: weight = 1, bias = 0 (their initializer is
  deterministic). BatchNorm running statistics: reset (mean 0, var 1, count 0) when a model is built;
  on re-initialization they are kept trained by default (as in the sanity-checks code), or reset with
  ``bn_stats="reset"``.
- Embedding: N(0, 1).

A user's model with another parameterized layer type can be randomized after
``register_initializer(LayerType, fn)`` where ``fn(module, generator)`` re-draws its parameters in place.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from xaudit.core.errors import NotApplicable, check_choice

INIT_RULE = ("torch-default-per-layer: conv/linear weight and bias ~ U(+-1/sqrt(fan_in)); "
             "norm layers weight=1, bias=0; embedding ~ N(0,1); explicit generator per block")

_INITIALIZERS: dict[type, Callable[[nn.Module, torch.Generator], None]] = {}


def register_initializer(layer_type: type, fn: Callable[[nn.Module, torch.Generator], None]) -> None:
    """Teach :func:`init_module` / :func:`xaudit.zoo.randomize` how to re-draw ``layer_type``'s parameters."""
    _INITIALIZERS[layer_type] = fn


def _uniform_fan_in(module: nn.Module, g: torch.Generator) -> None:
    w = module.weight
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(w)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # torch computes fan_in of a transposed conv from weight dim 1 (out_channels / groups)
        fan_in = w.shape[1] * math.prod(w.shape[2:])
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        w.copy_(_draw(w, g).uniform_(-bound, bound, generator=g))
        if getattr(module, "bias", None) is not None:
            module.bias.copy_(_draw(module.bias, g).uniform_(-bound, bound, generator=g))


def _draw(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A contiguous buffer shaped like ``t``: draws land in logical order whatever t's memory format
    (a channels_last weight gets the same values as a contiguous one)."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _norm(module: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        if getattr(module, "weight", None) is not None:
            module.weight.fill_(1.0)
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()


def _embedding(module: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        module.weight.copy_(_draw(module.weight, g).normal_(0.0, 1.0, generator=g))
        if module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()


for _t in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear):
    register_initializer(_t, _uniform_fan_in)
for _t in (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm):
    register_initializer(_t, _norm)
register_initializer(nn.Embedding, _embedding)


def _initializer_for(module: nn.Module):
    for cls in type(module).__mro__:
        if cls in _INITIALIZERS:
            return _INITIALIZERS[cls]
    return None


def reset_running_stats(module: nn.Module) -> None:
    """Running statistics of every BatchNorm inside ``module`` back to mean 0, var 1, count 0."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            m.reset_running_stats()


def init_module(module: nn.Module, generator: torch.Generator, *, bn_stats: str = "reset") -> None:
    """Re-draw every parameter inside ``module`` in place, in registration order, from ``generator``.

    bn_stats: "reset" (running mean 0, var 1) or "keep" (leave BatchNorm running statistics as they are).
    Raises NotApplicable for a parameterized layer type without a registered initializer.
    """
    check_choice("bn_stats", bn_stats, ("reset", "keep"))
    for name, m in module.named_modules():
        if not any(True for _ in m.parameters(recurse=False)):
            continue
        fn = _initializer_for(m)
        if fn is None:
            raise NotApplicable(
                f"no initializer known for layer {name or type(module).__name__!r} of type {type(m).__name__}; "
                "register one with xaudit.zoo.register_initializer(LayerType, fn(module, generator))")
        fn(m, generator)
    if bn_stats == "reset":
        reset_running_stats(module)
