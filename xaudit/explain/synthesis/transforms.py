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

MaCo's transforms (Fel et al. 2023; horama v0.3.0, commit 060862c, horama/common.py
``optimization_step`` lines 41-79, defaults from horama/maco_fv.py line 55-57), both off unless asked for:

- ``crop``: a random square box, resized back to S x S (bilinear ``grid_sample``; grey 0.5 outside the
  image, as roi_align's zeros in horama's zero-centred value range). Its centre is at
  (0.5 + 0.15 n_x, 0.5 + 0.15 n_y) of the image (n ~ N(0, 1), not clipped) and its side a fraction
  ``CROP_BOX`` = [0.25, 0.30) of S. horama's default is ``box_size=(0.20, 0.25)``, but its code draws
  ``rand * (box_size[1] - box_size[0]) + box_size[1]``, i.e. [0.25, 0.30); the range here is what that
  code does. Differences: horama takes ``crops_per_iteration = 6`` crops of its one image per step
  (a batch of 6); here each image gets one crop per step (the batch is K objectives x R restarts, one
  transform each). horama crops a 1280-px canvas and resizes the box (roi_align to 448 px, then an
  antialiased bicubic resize) to the model's 224 px, a down-sampling; here the canvas is the model's
  own S x S, so the box (8 to 10 px at S = 32) is up-sampled 3 to 4 times. Measured with MaCo on the
  zoo's ``clean`` model (32 px, 10 classes, 512 steps, lr 0.1): with crop and noise the full final image
  was its target's argmax for 6 / 10 classes (mean target logit 6.8; the image paints the class small
  in its centre), against 10 / 10 (60) with lucent's four and 10 / 10 (59) with crop boxes of
  [0.9, 1.0) of S.
- ``noise``: after the crop, horama adds N(0, noise^2) and U(-noise/2, noise/2) noise with
  ``noise = 0.05`` (maco_fv.py line 56; its README says 0.1) in the model's normalized input, which
  spans horama's ``values_range = (-2.5, 2.5)``, 5 units; here images span [0, 1], so ``NOISE`` =
  0.05 / 5 = 0.01. Not clipped, so with noise the values can leave [0, 1] by a few hundredths.

``Transforms.maco()`` is horama's MaCo set: crop and noise on, jitter / scale / rotate / pad off
(horama's ``maco`` applies no other transform).

Random numbers: per image and per step, 5 numbers from that image's generator whenever any transform
is on (the same 5 whichever are on, so switching one off does not change the others' draws); then, only
when ``crop`` is on, 3 more (2 normal for the centre, 1 uniform for the side); then, only when ``noise``
is on, C x S x S normal and C x S x S uniform numbers. So with crop and noise off every draw and image
is exactly as without them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from xaudit.core.errors import ConfigError

NAMES = ("jitter", "scale", "rotate", "pad", "crop", "noise")
LUCENT = NAMES[:4]                                             # Transforms.of(True): lucent's standard set
SCALES = tuple(1 + (i - 5) / 50.0 for i in range(11))        # lucent: 0.90 .. 1.10
ANGLES = tuple(list(range(-10, 11)) + 5 * [0])                 # lucent: degrees, 0 favoured
PAD_VALUE = 0.5                                                # lucent: pad(12, constant_value=0.5)
CROP_BOX = (0.25, 0.30)        # side / S; what horama's code draws from box_size=(0.20, 0.25), see above
CROP_CENTRE_STD = 0.15         # horama: x0 = 0.5 + randn * 0.15 (fraction of the image)
NOISE = 0.01                   # horama's noise 0.05 on a 5-unit value range, on [0, 1]


@dataclass(frozen=True)
class Transforms:
    """Which transforms are on: by default lucent's four (jitter, scale, rotate, pad), not MaCo's crop
    and noise. Pixel amounts for size S: :func:`amounts`; crop box and noise: module constants."""
    jitter: bool = True
    scale: bool = True
    rotate: bool = True
    pad: bool = True
    crop: bool = False
    noise: bool = False

    def any(self) -> bool:
        return any(getattr(self, k) for k in NAMES)

    def affine(self) -> bool:
        """Whether any of lucent's four (one affine resampling) is on."""
        return self.jitter or self.scale or self.rotate or self.pad

    @classmethod
    def maco(cls) -> "Transforms":
        """MaCo's set as horama's ``maco`` uses it: crop and noise on, lucent's four off."""
        return cls(jitter=False, scale=False, rotate=False, pad=False, crop=True, noise=True)

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)

    @classmethod
    def of(cls, value) -> "Transforms":
        """True (lucent's four on, crop and noise off: the default), False (all off), "maco"
        (:meth:`maco`), a Transforms, or a dict / list naming the transforms that are on (names: NAMES)."""
        if isinstance(value, Transforms):
            return value
        if value == "maco":
            return cls.maco()
        if isinstance(value, bool):
            return cls(**{k: value for k in LUCENT}, crop=False, noise=False)
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
        raise ConfigError("transforms", f"must be True, False, 'maco', a list of names among {', '.join(NAMES)} "
                          f"or a dict of them; got {value!r}")


def amounts(size: int, spec: "Transforms | None" = None) -> dict[str, Any]:
    """Pixel amounts at image size S: pad and first jitter S/8, second jitter S/16 (at least 1); with a
    ``spec`` whose crop / noise is on, also the crop box (side as a fraction of S), the crop centre's
    standard deviation and the noise scale (for recording with every result)."""
    out: dict[str, Any] = {"pad": max(1, size // 8), "jitter1": max(1, size // 8), "jitter2": max(1, size // 16)}
    if spec is not None and spec.crop:
        out.update(crop_box=list(CROP_BOX), crop_centre_std=CROP_CENTRE_STD)
    if spec is not None and spec.noise:
        out["noise"] = NOISE
    return out


def draw(gens: list[torch.Generator]) -> torch.Tensor:
    """[N, 5] uniforms in [0, 1), row i from gens[i]: columns 0-1 the pad offset (x, y), 2-3 both
    jitters (x, y; one index into the product of their ranges), 4 the (scale, angle) pair."""
    return torch.stack([torch.rand(5, generator=g) for g in gens])


def crop_draw(gens: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """The crop boxes: centres [N, 2] (x, y as fractions of the image, 0.5 + CROP_CENTRE_STD * N(0, 1))
    and sides [N] (fractions of S, uniform in CROP_BOX); row i from gens[i] (2 normal, then 1 uniform)."""
    d = torch.stack([torch.cat([torch.randn(2, generator=g), torch.rand(1, generator=g)]) for g in gens])
    return 0.5 + CROP_CENTRE_STD * d[:, :2], CROP_BOX[0] + (CROP_BOX[1] - CROP_BOX[0]) * d[:, 2]


def crop(x: torch.Tensor, centre: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W]: for each image of x [N, C, H, W] the square box with centre ``centre`` [N, 2] (x, y
    as fractions of width and height) and side ``side`` [N] (a fraction of width and height), resized to
    H x W by bilinear sampling (align_corners=False: output pixel j samples the input at box coordinate
    (j + 0.5) / W of the box); PAD_VALUE outside the image."""
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, :, 2] = 2 * centre - 1
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - PAD_VALUE, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + PAD_VALUE


def noise_draw(gens: list[torch.Generator], shape) -> torch.Tensor:
    """[N, *shape]: NOISE * N(0, 1) + NOISE * (U(0, 1) - 0.5), horama's two noises; row i from gens[i]
    (all its normal numbers, then all its uniform ones)."""
    return torch.stack([NOISE * torch.randn(*shape, generator=g) + NOISE * (torch.rand(*shape, generator=g) - 0.5)
                        for g in gens])


def apply(x: torch.Tensor, spec: Transforms, gens: list[torch.Generator]) -> torch.Tensor:
    """Transformed images [N, C, S, S] of x [N, C, S, S] (values in [0, 1], except with noise on: see the
    module docstring); per image and step one draw of 5 numbers, then crop's and noise's when on."""
    if not spec.any():
        return x
    u = draw(gens).to(x.device)
    if spec.affine():
        x = _affine(x, spec, u)
    if spec.crop:
        centre, side = crop_draw(gens)
        x = crop(x, centre, side)
    if spec.noise:
        x = x + noise_draw(gens, x.shape[1:]).to(device=x.device, dtype=x.dtype)
    return x


def _affine(x: torch.Tensor, spec: Transforms, u: torch.Tensor) -> torch.Tensor:
    """lucent's four as one affine resampling of x [N, C, S, S], from the 5 uniforms u [N, 5]."""
    n, _, h, w = x.shape
    size = max(h, w)
    a = amounts(size)

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
