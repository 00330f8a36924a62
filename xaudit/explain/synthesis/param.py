"""Parameterizations of a batch of N images with C channels and size S x S.

    p = make("fourier", n, channels, size, generator)   # generator: one torch.Generator, or N of them
    opt = torch.optim.Adam(p.parameters(), lr)
    x = p.images()                                        # float [N, C, S, S] in [0, 1]

- ``pixel``: images = sigmoid(logits), logits [N, C, S, S] free.
- ``fourier``: the decorrelated-colour, 1/f-scaled spectrum of Olah et al. 2017 ("Feature
  Visualization", Distill), following torch-lucent's ``fft_image`` + ``to_valid_rgb``
  (lucent/optvis/param/spatial.py, color.py): a real/imaginary spectrum [N, C, S, S//2+1, 2] scaled
  by 1 / max(f, 1/S) (decay power 1), ``irfft2(norm="ortho")``, divided by lucent's magic 4, then for
  C = 3 multiplied by lucent's colour-correlation square root (ImageNet's, normalized by its largest
  column norm), then a sigmoid. For C != 3 there is no colour decorrelation (nothing to decorrelate
  for C = 1; no published matrix for other C).
- ``cppn``: a compositional pattern-producing network per image (Stanley 2007; Mordvintsev et al.
  2018, "Differentiable Image Parameterizations", Distill; lucent's ``cppn``): (x, y, r) coordinates ->
  ``layers`` hidden layers of ``hidden`` units with lucent's composite activation
  [atan(h)/0.67, atan(h)^2/0.6] -> C outputs -> sigmoid. The N networks are independent and evaluated
  together as batched matmuls ([N, S*S, in] @ [N, in, out]). ``normalize`` (default True): each hidden
  layer's pre-activation is instance-normalized over the image's pixels (per unit: mean 0, variance 1,
  eps 1e-5) before its bias is added, Lucid's ``cppn(normalize=True)`` (lucid/optvis/param/cppn.py:
  ``slim.instance_norm``, whose defaults center=True, scale=False add a learned offset after the norm;
  here that offset is the layer's bias; lucent's ``normalize=True`` is ``InstanceNorm2d`` without the
  offset). Lucid and lucent default to False; here True, because without it the CPPN failed the issue's
  bar on the zoo's ``clean`` model: 10 classes, 256 steps, lr 0.005, transforms on: target = argmax for
  8 / 10 on each of 4 seeds, the worst target logit only 1-7 above a random image's; with it 10 / 10 on
  each of 4 seeds (smallest target-minus-runner-up logit >= 36, mean target logit 128-131 against 69-78),
  also at 64, 128 and 512 steps and lr 0.01 and 0.02. Without it the pixels' spread shrinks with depth
  (the spatial standard deviation of the pre-activations falls from 0.82 at the first layer to 0.43 at
  the output at init) and 77% of the final pixels saturate (54% with it).
- ``maco``: phase-only optimization under a fixed magnitude spectrum (Fel et al. 2023; horama), in
  maco.py, which documents its own initialization and ``init_std``.

Initialization (issue 13: lucent's Fourier scale 0.01 left 5 of 12 seeds at exactly zero gradient near
grey on a zoo model, because a near-constant grey image can leave every ReLU of a small CNN dead). Every
parameterization here starts from a visibly non-grey random image instead, with the pre-sigmoid values
of every image at a standard deviation of about ``init_std`` (default 1.0: the image pixels then spread
over roughly [0.27, 0.73] at one standard deviation, and sigmoid's slope stays >= 0.2 for most pixels):
- pixel: logits ~ N(0, init_std^2);
- fourier: spectrum ~ N(0, 1), then each image's spectrum is rescaled so that its pre-sigmoid image has
  standard deviation ``init_std`` (the 1/f shape of the init is kept; only its overall scale changes);
- cppn: lucent's weight init N(0, 1/fan_in) with zero biases, except the output layer: lucent sets it to
  zero (a grey start, exactly the plateau above); here it is N(0, 1/fan_in) scaled by ``init_std``
  (with ``normalize``, the pre-sigmoid std at init is then about 0.85 ``init_std``; without, 0.2-0.6).

Every random number of image i is drawn from generator i (a list of N generators), or all from one
generator in image order; so with per-image generators an image does not depend on the rest of the batch.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from xaudit.core.errors import ConfigError, check_bool, check_int, check_range

PARAMS = ("pixel", "fourier", "cppn", "maco")   # maco: maco.py (MaCo, Fel et al. 2023)

# lucent/optvis/param/color.py: the square root of ImageNet's colour correlation matrix (from Lucid).
_COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                            [0.27, 0.00, -0.05],
                                            [0.27, -0.09, 0.03]])
_MAX_NORM_SVD_SQRT = float(_COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max())
_FFT_MAGIC = 4.0  # lucent's fft_image divides the inverse transform by 4.0


def _generators(generator, n: int) -> list[torch.Generator]:
    if isinstance(generator, torch.Generator):
        return [generator] * n
    gens = list(generator)
    if len(gens) != n or not all(isinstance(g, torch.Generator) for g in gens):
        raise ConfigError("generator", f"must be a torch.Generator or a list of {n} of them")
    return gens


def _randn(gens: list[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
    """[N, *shape] standard normal, row i from gens[i] (one generator repeated: drawn in row order)."""
    return torch.stack([torch.randn(*shape, generator=g) for g in gens])


class Param:
    """A batch of N images [N, C, S, S] in [0, 1] as a function of ``parameters()``."""
    name = ""

    def __init__(self, n: int, channels: int, size: int):
        self.n, self.channels, self.size = n, channels, size

    def parameters(self) -> list[torch.Tensor]:
        """The leaf tensors to optimize (requires_grad=True)."""
        raise NotImplementedError

    def images(self) -> torch.Tensor:
        """float [N, C, S, S] in [0, 1] (differentiable in ``parameters()``)."""
        raise NotImplementedError


class Pixel(Param):
    """images = sigmoid(logits); logits [N, C, S, S] ~ N(0, init_std^2)."""
    name = "pixel"

    def __init__(self, n, channels, size, gens, init_std=1.0):
        super().__init__(n, channels, size)
        self.logits = (init_std * _randn(gens, (channels, size, size))).requires_grad_(True)

    def parameters(self):
        return [self.logits]

    def images(self):
        return torch.sigmoid(self.logits)


def _fft_scale(size: int) -> torch.Tensor:
    """lucent's rfft2d_freqs + scale: 1 / max(|f|, 1/S) for the [S, S//2+1] rfft grid (decay power 1)."""
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / torch.clamp(freqs, min=1.0 / size)


class Fourier(Param):
    """Decorrelated colour + 1/f spectrum (lucent ``fft_image`` + ``to_valid_rgb``); spectrum
    [N, C, S, S//2+1, 2] (real, imaginary)."""
    name = "fourier"

    def __init__(self, n, channels, size, gens, init_std=1.0):
        super().__init__(n, channels, size)
        self.scale = _fft_scale(size)
        spectrum = _randn(gens, (channels, size, size // 2 + 1, 2))
        with torch.no_grad():  # rescale each image's spectrum to a pre-sigmoid std of init_std
            std = self._pre_sigmoid(spectrum).flatten(1).std(1).clamp_min(1e-12)
            spectrum = spectrum * (init_std / std).view(-1, 1, 1, 1, 1)
        self.spectrum = spectrum.requires_grad_(True)

    def _pre_sigmoid(self, spectrum: torch.Tensor) -> torch.Tensor:
        z = torch.view_as_complex(spectrum.contiguous()) * self.scale
        img = torch.fft.irfft2(z, s=(self.size, self.size), norm="ortho") / _FFT_MAGIC
        if self.channels == 3:  # lucent's _linear_decorrelate_color
            m = _COLOR_CORRELATION_SVD_SQRT / _MAX_NORM_SVD_SQRT
            img = torch.einsum("nchw,dc->ndhw", img, m)
        return img

    def parameters(self):
        return [self.spectrum]

    def images(self):
        return torch.sigmoid(self._pre_sigmoid(self.spectrum))


def _composite(h: torch.Tensor) -> torch.Tensor:
    """lucent's CompositeActivation: [atan(h)/0.67, atan(h)^2/0.6] on the last dimension (doubles it)."""
    a = torch.atan(h)
    return torch.cat([a / 0.67, a * a / 0.6], -1)


class CPPN(Param):
    """N independent MLPs of the coordinates (x, y, r), x, y in [-sqrt(3), sqrt(3)] (lucent's range),
    r = sqrt(x^2 + y^2); weights [N, in, out] per layer; ``normalize``: instance norm of each hidden
    layer's pre-activation before its bias (Lucid's ``cppn(normalize=True)``; see the module docstring)."""
    name = "cppn"

    def __init__(self, n, channels, size, gens, init_std=1.0, hidden=24, layers=8, normalize=True):
        super().__init__(n, channels, size)
        self.normalize = normalize
        r = 3 ** 0.5
        lin = torch.linspace(-r, r, size)
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        self.coords = torch.stack([xx, yy, torch.sqrt(xx * xx + yy * yy)], -1).reshape(1, size * size, 3)
        widths = [3] + [hidden] * layers + [channels]
        self.weights, self.biases = [], []
        for i in range(len(widths) - 1):
            fan_in = widths[i] if i == 0 else 2 * widths[i]  # the composite activation doubles the width
            w = _randn(gens, (fan_in, widths[i + 1])) / math.sqrt(fan_in)
            if i == len(widths) - 2:
                w = w * init_std  # lucent: zeros (a grey start); here a random image
            self.weights.append(w.requires_grad_(True))
            self.biases.append(torch.zeros(n, 1, widths[i + 1], requires_grad=True))

    def parameters(self):
        return self.weights + self.biases

    def images(self):
        h = self.coords.expand(self.n, -1, -1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if i < len(self.weights) - 1 and self.normalize:
                # instance norm over the S*S pixels of each image, per unit (group_norm with one group per
                # unit on [N, units, S*S]: the same numbers, several times faster than mean/var here)
                h = torch.bmm(h, w)
                h = F.group_norm(h.transpose(1, 2), h.shape[2], eps=1e-5).transpose(1, 2) + b
            else:
                h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = _composite(h)
        return torch.sigmoid(h).transpose(1, 2).reshape(self.n, self.channels, self.size, self.size)


_CLASSES = {"pixel": Pixel, "fourier": Fourier, "cppn": CPPN}


def make(name: str, n: int, channels: int, size: int, generator, **kw) -> Param:
    """Parameterization ``name`` (one of PARAMS) of N images [N, C, S, S], initialized from
    ``generator`` (one torch.Generator, or a list of N: image i's numbers from generator i).
    ``kw``: ``init_std`` (all), ``hidden``, ``layers`` and ``normalize`` (cppn), ``magnitude`` (maco: a tensor
    [C, S, S//2+1], a world name or config dict, or None; see maco.py)."""
    if name not in _CLASSES:
        raise ConfigError("param", f"must be one of {', '.join(PARAMS)}; got {name!r}")
    check_int("n", n, 1, 1 << 16)
    check_int("channels", channels, 1, 64)
    check_int("size", size, 4, 1024)
    allowed = ({"init_std"} | ({"hidden", "layers", "normalize"} if name == "cppn" else set())
               | ({"magnitude"} if name == "maco" else set()))
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise ConfigError(unknown[0], f"unknown option of the {name} parameterization; it takes: "
                          f"{', '.join(sorted(allowed))}")
    if "init_std" in kw:
        check_range("init_std", kw["init_std"], 0, 100, lo_open=True)
    for k in ("hidden", "layers"):
        if k in kw:
            check_int(k, kw[k], 1, 1024)
    if "normalize" in kw:
        check_bool("normalize", kw["normalize"])
    return _CLASSES[name](n, channels, size, _generators(generator, n), **kw)


def from_images(name: str, images: torch.Tensor, **kw) -> Param:
    """A parameterization whose ``images()`` reproduce ``images`` [N, C, S, S] in [0, 1] (clamped to
    [1e-4, 1 - 1e-4] so that the sigmoid's inverse is finite): exact inversion for pixel and fourier;
    cppn cannot start from a given image (ConfigError)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ConfigError("init", f"must be a tensor [N, C, S, S]; got "
                          f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    x = images.detach().float()
    if not bool(torch.isfinite(x).all()) or x.min() < 0 or x.max() > 1:
        raise ConfigError("init", "must be finite and in [0, 1]")
    if name == "maco":  # its magnitude spectrum is fixed: a given image's is not reachable
        raise ConfigError("init", "maco is a phase-only parameterization (fixed magnitude spectrum) and "
                          "cannot start from a given image; use pixel or fourier")
    if name not in ("pixel", "fourier"):
        raise ConfigError("init", f"only the pixel and fourier parameterizations start from given images; "
                          f"got {name!r}")
    n, c, s, _ = x.shape
    p = make(name, n, c, s, torch.Generator().manual_seed(0), **kw)  # overwritten below: no randomness left
    pre = torch.logit(x.clamp(1e-4, 1 - 1e-4))
    with torch.no_grad():
        if name == "pixel":
            p.logits = pre.clone().requires_grad_(True)
        else:
            if c == 3:
                m = _COLOR_CORRELATION_SVD_SQRT / _MAX_NORM_SVD_SQRT
                pre = torch.einsum("nchw,dc->ndhw", pre, torch.linalg.inv(m))
            z = torch.fft.rfft2(pre * _FFT_MAGIC, norm="ortho") / p.scale
            p.spectrum = torch.view_as_real(z).contiguous().requires_grad_(True)
    return p


# MaCo (maco.py) subclasses Param, so it is imported last; maco.py puts itself in _CLASSES["maco"], which
# works whichever of the two modules is imported first (no import cycle at a name).
from xaudit.explain.synthesis import maco as _maco  # noqa: E402,F401
