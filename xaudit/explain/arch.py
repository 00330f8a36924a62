"""What a model's structure allows: hook-based methods need every ReLU to be its own ``nn.ReLU``
module (not ``F.relu``, not one module called twice); Captum's LRP needs a plain chain of layers
that have propagation rules (no BatchNorm, no residual additions).

The structure is read with ``torch.fx`` (every leaf module a node), once per model object. A model
fx cannot trace (data-dependent control flow) is given the benefit of the doubt by the ReLU check and
is declared not applicable by the LRP check, which cannot be verified otherwise.
"""
from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from xaudit.core.errors import NotApplicable

NONLINEAR = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh,
             nn.Softmax, nn.GELU, nn.SiLU)
_FUNCTIONAL_NONLINEAR = {F.relu, torch.relu, F.relu_, torch.relu_, F.gelu, F.silu, torch.sigmoid, torch.tanh,
                         F.leaky_relu, F.elu, F.max_pool2d, torch.max_pool2d}
_METHOD_NONLINEAR = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_min"}
# Layers Captum's LRP has rules for (minus BatchNorm2d, see below), and shape-only layers.
LRP_LAYERS = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
LRP_PASS_THROUGH = (nn.ReLU, nn.Dropout, nn.Flatten, nn.Identity)
_SHAPE_FUNCTIONS = {torch.flatten, getattr, F.relu, torch.relu}
_SHAPE_METHODS = {"flatten", "view", "reshape", "size", "contiguous", "relu"}


class _LeafTracer(fx.Tracer):
    """Every module without children is a node, so each call of a leaf module is visible."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return len(list(m.children())) == 0 or super().is_leaf_module(m, qualname)


@dataclass
class Structure:
    traced: bool
    error: str = ""
    calls: Counter = field(default_factory=Counter)            # leaf module name -> number of calls
    functional_nonlinear: list[str] = field(default_factory=list)
    other_ops: list[str] = field(default_factory=list)          # ops that are not shape-only
    input_modules: list[str] = field(default_factory=list)      # leaf modules applied to the raw input


_CACHE: "weakref.WeakKeyDictionary[nn.Module, Structure]" = weakref.WeakKeyDictionary()


def structure(model: nn.Module) -> Structure:
    """The model's leaf-module calls and functional ops (cached per model object)."""
    s = _CACHE.get(model)
    if s is not None:
        return s
    try:
        graph = _LeafTracer().trace(model)
    except Exception as e:  # fx raises many types on untraceable code
        s = Structure(traced=False, error=f"{type(e).__name__}: {e}")
    else:
        s = Structure(traced=True)
        placeholders = {n for n in graph.nodes if n.op == "placeholder"}
        for node in graph.nodes:
            if node.op == "call_module":
                s.calls[node.target] += 1
                if any(a in placeholders for a in node.args):
                    s.input_modules.append(node.target)
            elif node.op == "call_function":
                if node.target in _FUNCTIONAL_NONLINEAR:
                    s.functional_nonlinear.append(f"{getattr(node.target, '__name__', node.target)} ({node.name})")
                if node.target not in _SHAPE_FUNCTIONS:
                    s.other_ops.append(f"{getattr(node.target, '__name__', str(node.target))} ({node.name})")
            elif node.op == "call_method":
                if node.target in _METHOD_NONLINEAR:
                    s.functional_nonlinear.append(f".{node.target}() ({node.name})")
                if node.target not in _SHAPE_METHODS:
                    s.other_ops.append(f".{node.target}() ({node.name})")
    _CACHE[model] = s
    return s


def require_relu_modules(model: nn.Module, method: str, allow_reuse: bool = True) -> None:
    """NotApplicable unless every non-linearity is an nn.Module called once (when allow_reuse=False).

    Captum's guided backprop, deconvolution and DeepLift override the backward pass of nn.ReLU (and
    other non-linear) *modules*; a functional ``F.relu`` is invisible to them and would silently give
    plain gradients there. DeepLift also stores per-module activations, so a module used twice breaks it.
    """
    s = structure(model)
    if not s.traced:
        return
    if s.functional_nonlinear:
        raise NotApplicable(f"{method} needs every non-linearity as its own nn.Module (Captum hooks modules); "
                            f"{type(model).__name__} uses functional ones: {', '.join(s.functional_nonlinear[:5])}")
    if not allow_reuse:
        mods = dict(model.named_modules())
        reused = [n for n, c in s.calls.items() if c > 1 and isinstance(mods.get(n), NONLINEAR)]
        if reused:
            raise NotApplicable(f"{method} needs one module per non-linearity; {type(model).__name__} calls "
                                f"{', '.join(reused)} more than once")


def lrp_layers(model: nn.Module) -> list[str]:
    """Check that Captum's LRP applies; return the names of input pre-processing modules (e.g. a
    normalization applied to the raw input) that relevance passes through unchanged.

    Raises NotApplicable naming the first obstacle: BatchNorm (LRP needs it folded into the preceding
    convolution, which Captum does not do), residual additions or other functional ops (Captum's LRP
    propagates relevance only through modules), a module used twice, or a layer without a rule.
    """
    s = structure(model)
    name = type(model).__name__
    if not s.traced:
        raise NotApplicable(f"lrp: cannot verify that {name} is a plain chain of layers (torch.fx could not "
                            f"trace it: {s.error[:200]})")
    mods = dict(model.named_modules())
    bn = [n for n in s.calls if isinstance(mods[n], nn.modules.batchnorm._BatchNorm)]
    if bn:
        raise NotApplicable(f"lrp: {name} has BatchNorm layers ({', '.join(bn[:3])}); LRP needs them folded into "
                            "the preceding convolution, which Captum's LRP does not do")
    if s.other_ops:
        raise NotApplicable(f"lrp: {name} computes {', '.join(s.other_ops[:3])} outside modules (e.g. residual "
                            "additions); Captum's LRP propagates relevance only through layers")
    reused = [n for n, c in s.calls.items() if c > 1]
    if reused:
        raise NotApplicable(f"lrp: {name} calls {', '.join(reused)} more than once; Captum's LRP needs one module per use")
    passthrough = []
    for n in s.calls:
        m = mods[n]
        if isinstance(m, LRP_LAYERS + LRP_PASS_THROUGH):
            continue
        if n in s.input_modules and not any(True for _ in m.parameters()):
            passthrough.append(n)  # input normalization: relevance passes through unchanged
            continue
        raise NotApplicable(f"lrp: no propagation rule for {n} ({type(m).__name__}) in {name}")
    return passthrough
