"""Baselines: maps that look at no model. Every scorecard shows them as rows a method must beat.

- ``blank``: all zeros -- the blank guess of the trojan benchmark (its localization score is mean g).
- ``random``: uniform noise in [0, 1) from the generator.
- ``edge``: the Sobel edge magnitude of each channel of the input (scikit-image's ``filters.sobel``:
  sqrt((h^2 + v^2) / 2) with kernels [1, 2, 1] x [1, 0, -1] / 4, borders reflected).
- ``input``: the image itself.
- ``center``: a centred isotropic Gaussian, sd = ``sigma_frac`` x the image side.

They take ``model`` and ``target`` only for the common signature (``model`` may be None) and make no
model pass.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from xaudit.core.errors import check_range
from xaudit.explain.base import check_int, register, spread_over_channels


@register("blank", family="baseline", params={}, passes=(0, 0), uses_model=False)
def blank(model, x, target):
    """All zeros (the blank guess)."""
    return torch.zeros_like(x)


def _check_seed(p: dict[str, Any]) -> None:
    check_int("seed", p["seed"], 0, 2**63 - 1)


@register("random", family="baseline", stochastic=True, params={"seed": 0}, passes=(0, 0), uses_model=False,
          validate=_check_seed)
def random(model, x, target, *, generator):
    """Uniform noise in [0, 1), one value per pixel and channel, from the generator."""
    return torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H, W]: per-channel Sobel gradient magnitude, as skimage.filters.sobel."""
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    diff = torch.tensor([1.0, 0.0, -1.0], dtype=x.dtype, device=x.device)
    k_h = (diff[:, None] * smooth[None, :]) / 4  # derivative across rows (horizontal edges)
    k_v = (smooth[:, None] * diff[None, :]) / 4  # derivative across columns (vertical edges)
    weight = torch.stack([k_h, k_v]).unsqueeze(1)  # [2, 1, 3, 3]
    n, c, h, w = x.shape
    padded = F.pad(x.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")  # = scipy 'reflect' for 1 px
    g = F.conv2d(padded, weight)  # cross-correlation; the sign flip of a convolution does not matter squared
    return torch.sqrt((g * g).sum(1) / 2).view(n, c, h, w)


@register("edge", family="baseline", params={}, passes=(0, 0), uses_model=False)
def edge(model, x, target):
    """Sobel edge magnitude of each channel of the input (an edge detector: no model involved)."""
    return sobel_magnitude(x)


@register("input", family="baseline", params={}, passes=(0, 0), uses_model=False)
def input(model, x, target):  # noqa: A001 - the method's registered name
    """The image intensities themselves."""
    return x.clone()


def _check_center(p: dict[str, Any]) -> None:
    check_range("sigma_frac", p["sigma_frac"], 0.0, 10.0, lo_open=True)


@register("center", family="baseline", params={"sigma_frac": 0.25}, passes=(0, 0), uses_model=False,
          validate=_check_center)
def center(model, x, target, sigma_frac=0.25):
    """A centred Gaussian, sd = sigma_frac x side, peak 1 (spread over channels)."""
    n, c, h, w = x.shape
    r = torch.arange(h, dtype=x.dtype, device=x.device) - (h - 1) / 2
    s = torch.arange(w, dtype=x.dtype, device=x.device) - (w - 1) / 2
    g = torch.exp(-(r[:, None] ** 2 / (2 * (sigma_frac * h) ** 2) + s[None, :] ** 2 / (2 * (sigma_frac * w) ** 2)))
    return spread_over_channels(g.expand(n, 1, h, w), c)
