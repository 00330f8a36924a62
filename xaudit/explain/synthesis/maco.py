"""MaCo: phase-only feature visualization under a fixed magnitude spectrum (Fel et al. 2023,
"Unlocking Feature Visualization for Deeper Networks with MAgnitude Constrained Optimization", NeurIPS),
re-implemented after horama's ``maco_preconditioner`` (serre-lab/Horama v0.3.0, commit 060862c,
horama/maco_fv.py lines 37-52, with ``standardize`` and ``recorrelate_colors`` from horama/common.py
lines 8-38)::

    p = make("maco", n, channels, size, gens, magnitude=world_magnitude("shapes", size=32))
    x = p.images()          # float [N, C, S, S] in (0, 1)

For image i with phase parameters phase_i [C, S, S//2+1] (the only thing optimized) and the fixed
magnitude M [C, S, S//2+1], as horama except steps 1 and 4b and the value range (step 5):

1. ``phi = phase_i``, initialized uniform in [-pi, pi) (a random-phase image of magnitude M), as in
   the paper's x = F^-1(M e^{i phi}). horama instead draws phase ~ N(0, 1) and standardizes it before
   every use (mean 0, std 1 over the image's C x S x (S//2+1) values; maco_fv.py lines 20 and 40), so
   its phases stay bunched around 0 and add up in phase at the pixel (0, 0): measured here (shapes
   world magnitude, zoo ``clean`` model, 256 steps, 10 classes), that corner pixel was saturated in
   10 of 10 final images (mean |x - 0.5| 0.45 against 0.17 for the image) and was each image's
   strongest pixel, a one-pixel "patch" in every image, which a trojan-rediscovery matcher could take
   for a trigger. With uniform phases no pixel stands out (corner 0.11 against 0.18), and the target
   logit was as high or higher (72 against 64, no transforms);
2. ``spatial = irfft2(M * exp(i * phi))`` (norm "backward", torch's default, as horama; horama builds
   the complex number as ``complex(M cos phi, M sin phi)``, so do we);
3. ``standardize(spatial)`` over the image's C x S x S values (maco_fv.py line 46);
4. for C = 3, horama's ``recorrelate_colors`` (line 49): the same matrix as the fourier
   parameterization's (lucent's ImageNet colour-correlation square root divided by its largest column
   norm; horama stores it transposed and right-multiplies, which is the same map);
   4b. (added here, C = 3 only) ``standardize`` again, after the colour mixing. Why: horama's order
   calibrates the contrast to ImageNet's colours, where the luminance component dominates. The
   shapes world's saturated colours load mostly on lucent's weakest colour component (decorrelated
   magnitude per channel 2.6, 9.6, 19.7 on average), which the recorrelation shrinks about tenfold:
   in horama's order the initial images had a pixel std of 0.052 (the world's images: 0.22), nearly
   the grey plateau, and reached a mean target logit of 12 on the zoo's ``clean`` model against 73
   with this step (256 steps, lr 0.2, no transforms, 10 / 10 classes both). For
   ImageNet-like statistics the step only rescales the contrast by a constant (about 1 / 0.6);
5. times ``init_std`` (default 1.0), then ``sigmoid``. horama maps sigmoid's (0, 1) affinely to
   ``values_range = (-2.5, 2.5)``, the normalized input of an ImageNet model; xaudit's models take
   [0, 1] and normalize themselves, so the range here is (0, 1): sigmoid alone. No clipping anywhere.

So ``spatial()`` has exactly the magnitude M at every frequency whose rfft coefficient is free (the
columns 0 < kx < S/2); on the Hermitian-constrained columns (kx = 0, and kx = S/2 for even S)
irfft2 keeps the Hermitian part (Z(k) + conj Z(-k)) / 2 of Z = M exp(i phi), whose modulus is at
most the mean of M at k and -k there (at most M for a symmetric M, as the spectrum of real images is;
horama alike). Step 3 rescales every non-zero frequency by one factor per image (and removes the DC
term), so for C = 1 the pre-sigmoid image's magnitude is M times one factor; for C = 3 the colour
mixing mixes the channels' spectra.

``init_std`` is the standard deviation of the pre-sigmoid image, held at every step by the
standardization (horama: 1 before its colour mixing), not only an initial scale as in the other
parameterizations. Initialization: uniform phases (step 1), image i's from gens[i] only.
Standardized at every step, the image is never the near-grey
plateau of param.py's docstring: on the zoo's trained ``clean`` model, 0 of 12 seeds x 10 classes
started at an exactly zero gradient of the target logit (measured; see the session's report).

The magnitude. horama downloads an ImageNet spectrum measured in its decorrelated colour space
("imagenet_decorrelated.npy") and resizes it to the image. Here nothing is downloaded: the magnitude
is that of the world's own training images (:func:`world_magnitude`), measured in the same
decorrelated colour space that step 4 recorrelates (:func:`magnitude_spectrum`). A magnitude of
another size is an error, not resized. Without a magnitude, a 1/f spectrum (lucent's ``fft_image``
scale 1 / max(|f|, 1/S), the same for every channel) stands in.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch

from xaudit.core.errors import ConfigError, UnknownName
from xaudit.explain.synthesis import param as _param
from xaudit.explain.synthesis.param import _COLOR_CORRELATION_SVD_SQRT, _MAX_NORM_SVD_SQRT, Param, _fft_scale

_EPS = 1e-4   # horama's standardize: (t - mean) / (std + 1e-4)


def _color_matrix() -> torch.Tensor:
    """[3, 3] m with out_d = sum_c m[d, c] x_c: horama's recorrelate_colors (= fourier's)."""
    return _COLOR_CORRELATION_SVD_SQRT / _MAX_NORM_SVD_SQRT


def standardize(t: torch.Tensor) -> torch.Tensor:
    """horama's standardize per image: each t[i] minus its mean, divided by (its unbiased std + 1e-4);
    t [N, ...] float, same shape out."""
    flat = t.flatten(1)
    mean = flat.mean(1)
    std = flat.std(1)
    shape = (-1,) + (1,) * (t.ndim - 1)
    return (t - mean.view(shape)) / (std.view(shape) + _EPS)


def spectrum_shape(channels: int, size: int) -> tuple[int, int, int]:
    """The magnitude's shape (C, S, S//2+1): the rfft2 grid of C channels of S x S."""
    return (channels, size, size // 2 + 1)


def check_magnitude(magnitude: Any, channels: int, size: int) -> torch.Tensor:
    """float32 [C, S, S//2+1], finite, >= 0, not all zero; ConfigError naming the expected shape."""
    shape = spectrum_shape(channels, size)
    want = f"[C, S, S//2+1] = [{shape[0]}, {shape[1]}, {shape[2]}]"
    if not isinstance(magnitude, torch.Tensor):
        raise ConfigError("magnitude", f"must be a tensor {want} (e.g. world_magnitude(...)); got "
                          f"{type(magnitude).__name__}")
    if tuple(magnitude.shape) != shape:
        raise ConfigError("magnitude", f"must have the shape {want} for {channels} channel(s) of "
                          f"{size} x {size}; got {list(magnitude.shape)}")
    m = magnitude.detach().to(torch.float32)
    if not bool(torch.isfinite(m).all()) or bool((m < 0).any()) or not bool((m > 0).any()):
        raise ConfigError("magnitude", "must be finite and >= 0, with at least one value > 0")
    return m.clone()


def default_magnitude(channels: int, size: int) -> torch.Tensor:
    """[C, S, S//2+1]: lucent's 1/f scale 1 / max(|f|, 1/S) for every channel (no world given)."""
    return _fft_scale(size).expand(channels, -1, -1).clone()


class MaCo(Param):
    """Phase-only parameterization (see the module docstring): parameters ``phase`` [N, C, S, S//2+1],
    fixed ``magnitude`` [C, S, S//2+1]; ``images()`` float [N, C, S, S] in (0, 1)."""
    name = "maco"

    def __init__(self, n, channels, size, gens, magnitude=None, init_std=1.0):
        """``magnitude``: a tensor [C, S, S//2+1]; a world name or world config dict, for
        ``world_magnitude(magnitude, size=S)`` (JSON-able, so it can travel in recorded settings);
        or None for the 1/f stand-in."""
        super().__init__(n, channels, size)
        if magnitude is None:
            self.magnitude = default_magnitude(channels, size)
        else:
            if isinstance(magnitude, (str, dict)):
                magnitude = world_magnitude(magnitude, size=size)
            self.magnitude = check_magnitude(magnitude, channels, size)
        self.init_std = float(init_std)
        # uniform phases in [-pi, pi): a random-phase image (step 1 of the module docstring)
        shape = spectrum_shape(channels, size)
        u = torch.stack([torch.rand(*shape, generator=g) for g in gens])
        self.phase = (2 * math.pi * u - math.pi).requires_grad_(True)

    def parameters(self):
        return [self.phase]

    def spatial(self) -> torch.Tensor:
        """float [N, C, S, S]: irfft2(magnitude * exp(i * phase)), before any normalization; its rfft2
        has modulus = magnitude on the columns 0 < kx < S/2."""
        phi = self.phase
        z = torch.complex(self.magnitude * torch.cos(phi), self.magnitude * torch.sin(phi))
        return torch.fft.irfft2(z, s=(self.size, self.size))

    def pre_sigmoid(self) -> torch.Tensor:
        """float [N, C, S, S], each image with mean 0 and std init_std: standardize(spatial()), for
        C = 3 colour-recorrelated and standardized again (step 4b of the module docstring)."""
        x = standardize(self.spatial())
        if self.channels == 3:
            x = standardize(torch.einsum("nchw,dc->ndhw", x, _color_matrix()))
        return x * self.init_std

    def images(self):
        return torch.sigmoid(self.pre_sigmoid())


def magnitude_spectrum(images: torch.Tensor, *, centre: bool = True, decorrelate: bool = True) -> torch.Tensor:
    """float32 [C, S, S//2+1]: the mean over images of |rfft2(image)| (torch.fft.rfft2, norm "backward",
    numpy's default), per channel, of images float [N, C, S, S] (any range; N >= 1).

    - ``centre`` (default True): each image's per-channel mean is removed first, so the DC entry is 0.
      MaCo standardizes its image, so the DC term could only offset the channels against each other,
      through the real part of one coefficient (its modulus is not kept: the DC coefficient is real);
      without it every entry of the magnitude is kept or 0. Measured on the zoo's ``clean`` model (256
      steps, lr 0.2, no transforms): mean target logit 72.6 centred, 72.5 not: no difference;
    - ``decorrelate`` (default True; only for C = 3): the images are first mapped into the decorrelated
      colour space whose spectrum MaCo recorrelates (the inverse of its colour matrix; horama's
      "imagenet_decorrelated" spectrum is such a spectrum). Same measurement: 72.6 decorrelated, 63.9
      with the RGB spectrum.
    With both False this is exactly ``mean_i |numpy.fft.rfft2(images[i, c])|``."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] < 1 \
            or images.shape[2] != images.shape[3]:
        got = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError("images", f"must be a tensor [N, C, S, S] with N >= 1; got {got}")
    x = images.detach().to(torch.float64)   # float64: the mean over many images, then stored as float32
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("images", "must be finite")
    if decorrelate and x.shape[1] == 3:
        x = torch.einsum("nchw,dc->ndhw", x, torch.linalg.inv(_color_matrix().double()))
    if centre:
        x = x - x.mean((2, 3), keepdim=True)
    mag = torch.fft.rfft2(x).abs().mean(0)
    if centre:
        mag[:, 0, 0] = 0.0   # exactly (the centred images leave float round-off there)
    return mag.to(torch.float32)


def world_magnitude(world: str | dict = "shapes", size: int = 32, n_images: int = 1024, seed: int = 0,
                    split: str = "train") -> torch.Tensor:
    """float32 [C, S, S//2+1]: :func:`magnitude_spectrum` (centred, decorrelated) of the world's own
    images ``range(n_images)`` of ``split`` (the training split by default: no test image informs the
    synthesis), rendered by :mod:`xaudit.world` without any bug. ``world``: a registered world name
    (built with ``size`` and ``seed``) or a world config dict ``{name: shapes, size: 32, seed: 0, ...}``
    (its own size / seed win over the arguments). Deterministic (worlds render by index) and memoized
    per arguments in this process; a fresh copy is returned each call. 1024 shapes images at 32 px:
    about 0.2 s once (rendering dominates)."""
    if isinstance(world, dict):
        cfg = dict(world)
        name = cfg.pop("name", None) or cfg.pop("world", None)
        if not isinstance(name, str):
            raise ConfigError("world", f"a world config needs a 'name'; got {world!r}")
        params = {"size": size, "seed": seed, **cfg}
    elif isinstance(world, str):
        name, params = world, {"size": size, "seed": seed}
    else:
        raise ConfigError("world", f"must be a world name or a config dict; got {type(world).__name__}")
    if isinstance(n_images, bool) or not isinstance(n_images, int) or not 1 <= n_images <= 1_000_000:
        raise ConfigError("n_images", f"must be an integer in [1, 1000000]; got {n_images!r}")
    key = tuple(sorted((k, _hashable(v)) for k, v in params.items()))
    return _world_magnitude(name, key, n_images, split).clone()


def _hashable(v):
    return tuple(_hashable(x) for x in v) if isinstance(v, (list, tuple)) else v


@functools.lru_cache(maxsize=16)
def _world_magnitude(name: str, key: tuple, n_images: int, split: str) -> torch.Tensor:
    from xaudit import world as world_mod   # imported here: the world package is not needed otherwise

    try:
        w = world_mod.get(name, **dict(key))
    except UnknownName as e:
        raise ConfigError("world", str(e)) from None
    except TypeError as e:
        raise ConfigError("world", f"bad parameters for world {name!r}: {e}") from None
    batch = w.sample(range(n_images), split=split)
    return magnitude_spectrum(batch.images)


# param.py imports this module at its end and finds MaCo here: registering from this side works whichever
# of the two modules is imported first (param.py cannot import MaCo by name while this module is still
# being initialized).
_param._CLASSES[MaCo.name] = MaCo
