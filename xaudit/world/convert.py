"""Pixel correspondence between two worlds' frames: central crop or pad, channel conversion, never
resampling.

A model trained on one world sees another world's images through :func:`to_frame` (e.g. 28x28
one-channel digits padded by 2 px and repeated to 32x32 RGB for a shapes CNN); :func:`from_frame`
undoes the geometry on a map computed in that frame, so the map lines up pixel for pixel with the
original input. Because nothing is interpolated, input pixel (i, j) is frame pixel (i + top, j + left)
exactly, with the offsets of :func:`offsets`.

Odd size differences: the frame is placed at ``floor((big - small) / 2)`` from the top and the left
in both directions, so the extra row and column go to (padding) or are cut from (cropping) the bottom
and the right. :func:`from_frame` uses the same offsets, so for ``x`` [N, C, h, h],
``from_frame(to_frame(x, C, s), h)`` returns ``x`` exactly whenever ``s >= h`` (pad then crop) and
the central ``s x s`` of ``x`` with the rest zero when ``s < h`` (crop then pad: the cut pixels are
gone).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from xaudit.core.errors import ConfigError

# ITU-R BT.601 luma weights, as xaudit.world.bugs.world_colour turns an RGB colour into one channel
LUMINANCE = (0.299, 0.587, 0.114)


def _hw(size: int | tuple[int, int], field: str) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) and not isinstance(size, bool) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in hw):
        raise ConfigError(field, f"must be a positive integer side (or (height, width)), got {size!r}")
    return hw  # type: ignore[return-value]


def _check_4d(t: torch.Tensor, field: str) -> None:
    if not isinstance(t, torch.Tensor) or t.ndim != 4:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ConfigError(field, f"must be a tensor [N, C, H, W], got {shape}")


def offsets(small: int, big: int) -> int:
    """Where a side of length ``small`` starts inside a side of length ``big`` (central placement;
    an odd difference leaves the extra pixel at the end)."""
    return (big - small) // 2


def _fit(t: torch.Tensor, height: int, width: int, fill: float) -> torch.Tensor:
    """``t`` [N, C, H, W] centrally cropped and/or padded (with ``fill``) to [N, C, height, width];
    each axis independently."""
    h, w = t.shape[-2:]
    # crop the axes that are too long
    top = offsets(height, h) if h > height else 0
    left = offsets(width, w) if w > width else 0
    t = t[..., top: top + min(h, height), left: left + min(w, width)]
    # pad the axes that are too short
    ph = height - t.shape[-2]
    pw = width - t.shape[-1]
    if ph or pw:
        t = F.pad(t, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="constant", value=float(fill))
    return t


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, channels, H, W]: unchanged if C == channels; 1 -> k: the channel repeated;
    3 -> 1: the luminance 0.299 R + 0.587 G + 0.114 B. Values stay in the input's range ([0, 1] in,
    [0, 1] out). Any other pair is a ConfigError."""
    _check_4d(images, "images")
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor(LUMINANCE, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * w).sum(1, keepdim=True)
    raise ConfigError("channels", f"cannot convert {c} channels to {channels}: supported are 1 -> any "
                                  "(repeat) and 3 -> 1 (luminance)")


def to_frame(images: torch.Tensor, channels: int, size: int | tuple[int, int], fill: float = 0.0) -> torch.Tensor:
    """Images [N, C, H, W] as another world sees them: [N, channels, size, size] (``size`` may be a
    (height, width) pair), centrally cropped or padded with ``fill`` (in the images' units; 0 is a
    black border), channels converted by :func:`convert_channels`. No resampling: every kept pixel is
    an input pixel, moved by the offsets of :func:`offsets`."""
    _check_4d(images, "images")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ConfigError("channels", f"must be a positive integer, got {channels!r}")
    height, width = _hw(size, "size")
    return _fit(convert_channels(images, channels), height, width, fill).contiguous()


def from_frame(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Maps [N, C, h, w] computed in another frame brought back to the original input's frame
    [N, C, size, size] (``size`` the original input's side, or (height, width)): the inverse geometry
    of :func:`to_frame` (a padded border is cropped away; a cropped-away border comes back as 0, no
    attribution, since the model never saw those pixels). Channels are kept (map normalizations sum
    them)."""
    _check_4d(maps, "maps")
    height, width = _hw(size, "size")
    return _fit(maps, height, width, 0.0).contiguous()
