"""Robustness transforms applied to the images at every optimization step (Olah et al. 2017,
"Feature Visualization", Distill: transformation robustness), after torch-lucent's
``standard_transforms`` (lucent/optvis/transform.py)::

    pad(12, constant 0.5), jitter(8), random_scale(1 + (i - 5)/50 for i < 11),
    random_rotate(-10..10 degrees, with 0 five extra times), jitter(4)

lucent's pixel values are for 224-px images; the model here takes a fixed S x S input (its fc layer
fixes the size), so the output keeps the input's size and the pixel amounts scale with S: pad and the
first jitter S/8 pixels (4 at 32 px), the second jitter S/16 (2 at 32 px); scales and angles as lucent.

All of it is one affine resampling per image (``affine_grid`` + ``grid_sample``, bilinear): the
image is rotated and scaled about its centre and shifted by the sum of the pad offset and both jitters
(an S x S crop of the padded, jittered canvas). Outside the image the value is lucent's pad constant 0.5
when ``pad`` is on, the nearest border pixel when it is off. Each transform can be switched off; with
all off the images pass through unchanged (no resampling).

Random numbers: per image and per step, 5 numbers from that image's generator (the same 5 whichever
transforms are on, so switching one off does not change the others' draws).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from xaudit.core.errors import ConfigError

NAMES = ("jitter", "scale", "rotate", "pad")
SCALES = tuple(1 + (i - 5) / 50.0 for i in range(11))        # lucent: 0.90 .. 1.10
ANGLES = tuple(list(range(-10, 11)) + 5 * [0])                 # lucent: degrees, 0 favoured
PAD_VALUE = 0.5                                                # lucent: pad(12, constant_value=0.5)


@dataclass(frozen=True)
class Transforms:
    """Which transforms are on (all by default) and their pixel amounts for size S (None: S/8 pad and
    first jitter, S/16 second jitter)."""
    jitter: bool = True
    scale: bool = True
    rotate: bool = True
    pad: bool = True

    def any(self) -> bool:
        return self.jitter or self.scale or self.rotate or self.pad

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)

    @classmethod
    def of(cls, value) -> "Transforms":
        """True/False (all on/off), a Transforms, or a dict / list naming the transforms that are on."""
        if isinstance(value, Transforms):
            return value
        if isinstance(value, bool):
            return cls(*(4 * [value]))
        if isinstance(value, dict):
            bad = sorted(set(value) - set(NAMES))
            if bad or not all(isinstance(v, bool) for v in value.values()):
                raise ConfigError("transforms", f"a dict maps some of {', '.join(NAMES)} to True/False; "
                                  f"got {value!r}")
            return cls(**{k: bool(value.get(k, False)) for k in NAMES})
        if isinstance(value, (list, tuple)):
            bad = sorted(set(value) - set(NAMES))
            if bad:
                raise ConfigError("transforms", f"names must be among {', '.join(NAMES)}; got {bad[0]!r}")
            return cls(**{k: k in value for k in NAMES})
        raise ConfigError("transforms", f"must be True, False, a list of names among {', '.join(NAMES)} "
                          f"or a dict of them; got {value!r}")


def amounts(size: int) -> dict[str, int]:
    """Pixel amounts at image size S: pad and first jitter S/8, second jitter S/16 (at least 1)."""
    return {"pad": max(1, size // 8), "jitter1": max(1, size // 8), "jitter2": max(1, size // 16)}


def draw(gens: list[torch.Generator]) -> torch.Tensor:
    """[N, 5] uniforms in [0, 1), row i from gens[i]: columns 0-1 the pad offset (x, y), 2-3 both
    jitters (x, y; one index into the product of their ranges), 4 the (scale, angle) pair."""
    return torch.stack([torch.rand(5, generator=g) for g in gens])


def apply(x: torch.Tensor, spec: Transforms, gens: list[torch.Generator]) -> torch.Tensor:
    """Transformed images [N, C, S, S] (values in [0, 1]) of x [N, C, S, S]; one random draw per image."""
    if not spec.any():
        return x
    n, _, h, w = x.shape
    size = max(h, w)
    a = amounts(size)
    u = draw(gens).to(x.device)

    def pick(col, k):  # an integer in [0, k) from a uniform column
        return torch.clamp((u[:, col] * k).long(), max=k - 1)

    # integer shifts in pixels: pad offset in [-p, p] and the two jitters in [-j, j] (applied along
    # both axes with one draw each per axis from the packed column pairs below)
    shift = torch.zeros(n, 2)
    if spec.pad:
        p = a["pad"]
        shift += torch.stack([pick(0, 2 * p + 1), pick(1, 2 * p + 1)], 1).float() - p
    if spec.jitter:
        # columns 2 and 3 carry both jitters: jitter1 from the high part, jitter2 from the remainder
        for col in (2, 3):
            j1, j2 = a["jitter1"], a["jitter2"]
            k = (2 * j1 + 1) * (2 * j2 + 1)
            v = pick(col, k)
            shift[:, col - 2] += (v // (2 * j2 + 1)).float() - j1 + (v % (2 * j2 + 1)).float() - j2
    scale = torch.ones(n)
    angle = torch.zeros(n)
    if spec.scale or spec.rotate:
        # column 4 carries scale and angle: index into the product of both lists
        v = pick(4, len(SCALES) * len(ANGLES))
        if spec.scale:
            scale = torch.tensor(SCALES)[v // len(ANGLES)]
        if spec.rotate:
            angle = torch.tensor(ANGLES, dtype=torch.float32)[v % len(ANGLES)] * (math.pi / 180)
    # output pixel u (normalized coordinates) samples input at R(-angle) u / scale - shift
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    theta[:, 0, 2] = -shift[:, 0] * 2 / w
    theta[:, 1, 2] = -shift[:, 1] * 2 / h
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if spec.pad:  # zeros outside of (x - 0.5): the constant 0.5 outside the image
        return F.grid_sample(x - PAD_VALUE, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False) + PAD_VALUE
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
