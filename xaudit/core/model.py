"""What xaudit needs to know about a model, for zoo models and users' own models alike.

A zoo architecture declares ``blocks`` (names of its parameterized blocks ordered from the output
to the input, for cascading randomization) and ``last_conv`` (the module name Grad-CAM hooks).
For a user's model without those attributes they are inferred: blocks are the parameterized leaf
modules in reverse registration order; last_conv is the last ``nn.Conv2d``.
"""
from __future__ import annotations

from torch import nn

from xaudit.core.errors import NotApplicable


def blocks(model: nn.Module) -> list[str]:
    """Names of the model's parameterized blocks, output first."""
    declared = getattr(model, "blocks", None)
    if declared is not None:
        return list(declared)
    names = [n for n, m in model.named_modules()
             if n and not list(m.children()) and any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def last_conv_name(model: nn.Module) -> str:
    """Name of the module Grad-CAM hooks: ``model.last_conv`` or the last nn.Conv2d."""
    declared = getattr(model, "last_conv", None)
    if declared is not None:
        return declared
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise NotApplicable(f"{type(model).__name__} has no nn.Conv2d layer; methods that hook the last "
                            "convolutional layer (grad_cam, guided_grad_cam) do not apply to it")
    return convs[-1]


def last_conv(model: nn.Module) -> nn.Module:
    return model.get_submodule(last_conv_name(model))


def fingerprint(model: nn.Module) -> str:
    """A digest of the model's parameter and buffer names and bytes (contiguous order: independent of
    memory layout and thread count, unlike a floating-point sum). Equal digests mean equal weights."""
    import hashlib

    import torch

    h = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            h.update(name.encode())
            h.update(str(t.dtype).encode())
            t = t.detach()
            if t.dtype == torch.bfloat16:
                t = t.float()
            h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
