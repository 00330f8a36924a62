"""Class activation maps (Captum LayerGradCam / GuidedGradCam) on the layer
:func:`xaudit.core.model.last_conv` names (``model.last_conv`` or the last ``nn.Conv2d``; models
without a convolution raise NotApplicable).

Grad-CAM is ReLU(sum_k alpha_k A^k) at the layer's resolution, upsampled to the input (bilinear by
default, docs/protocols.md#113-method-settings) and spread evenly over the input channels. Guided Grad-CAM is
guided backprop times the same upsampled Grad-CAM.
"""
from __future__ import annotations

from typing import Any

import torch
from captum.attr import GuidedGradCam, LayerAttribution, LayerGradCam

from xaudit.core.errors import NotApplicable, check_choice
from xaudit.core.model import last_conv, last_conv_name
from xaudit.explain.arch import require_relu_modules
from xaudit.explain.base import DEFAULT_INTERNAL_BATCH, check_internal_batch, chunked, register, rows_per_chunk, \
    spread_over_channels

IB = DEFAULT_INTERNAL_BATCH
MODES = ("bilinear", "nearest", "bicubic", "area")


def _check(p: dict[str, Any]) -> None:
    check_internal_batch(p)
    check_choice("interpolate", p["interpolate"], MODES)


def _layer(model, method: str):
    layer = last_conv(model)
    if layer is None:
        raise NotApplicable(f"{method}: {type(model).__name__} declares no convolutional layer (last_conv=None)")
    return layer


def _check_4d(cam: torch.Tensor, model, method: str) -> None:
    if cam.ndim != 4:
        raise NotApplicable(f"{method}: layer {last_conv_name(model)!r} has output shape {tuple(cam.shape)}; "
                            "Grad-CAM needs a spatial [N, C, h, w] feature map")


def grad_cam_per_pixel(model, x, target, interpolate="bilinear", internal_batch=IB) -> torch.Tensor:
    """Grad-CAM upsampled to the input, [N, 1, H, W]."""
    gc = LayerGradCam(model, _layer(model, "grad_cam"))

    def one(xc, tc):
        cam = gc.attribute(xc, target=tc, relu_attributions=True)
        _check_4d(cam, model, "grad_cam")
        return LayerAttribution.interpolate(cam, tuple(xc.shape[2:]), interpolate_mode=interpolate)

    return chunked(one, x, target, rows_per_chunk(len(x), 1, internal_batch))


@register("grad_cam", family="cam", params={"interpolate": "bilinear", "internal_batch": IB}, passes=(1, 1),
          validate=_check)
def grad_cam(model, x, target, interpolate="bilinear", internal_batch=IB):
    """Grad-CAM (Captum LayerGradCam) on the last conv layer, ReLU'd, upsampled to the input."""
    return spread_over_channels(grad_cam_per_pixel(model, x, target, interpolate, internal_batch), x.shape[1])


@register("guided_grad_cam", family="cam", params={"interpolate": "bilinear", "internal_batch": IB},
          passes=(2, 2), validate=_check)
def guided_grad_cam(model, x, target, interpolate="bilinear", internal_batch=IB):
    """Guided Grad-CAM (Captum GuidedGradCam): guided backprop x upsampled Grad-CAM."""
    require_relu_modules(model, "guided_grad_cam")
    ggc = GuidedGradCam(model, _layer(model, "guided_grad_cam"))

    def one(xc, tc):
        out = ggc.attribute(xc, target=tc, interpolate_mode=interpolate)
        if out.shape != xc.shape:  # Captum returns an empty tensor when the CAM cannot be upsampled
            raise NotApplicable(f"guided_grad_cam: cannot upsample the Grad-CAM of layer {last_conv_name(model)!r}")
        return out

    return chunked(one, x, target, rows_per_chunk(len(x), 1, internal_batch))
