"""Perturbation methods (Captum Occlusion, FeatureAblation, ShapleyValueSampling, Lime, KernelShap).

They cost forward passes only, but one per perturbation, so on 32x32 images they work on groups of
pixels ("features") instead of single pixels:

- ``features="patch"`` (default): a grid of ``patch_px`` x ``patch_px`` squares, all channels of a
  square together (4 px -> 64 features on 32x32). Data-independent and the same for every image, so
  Captum perturbs the whole batch at once.
- ``features="slic"``: scikit-image SLIC superpixels per image (``n_segments`` requested), the LIME
  paper's choice of segmentation; features then differ per image.

Occlusion slides a ``window_px`` square with stride ``stride_px`` (overlapping windows, unlike the
non-overlapping patches of feature ablation). Removed features take the value ``baseline`` (0:
black). Random draws (Shapley permutations, LIME / KernelSHAP coalitions) come from the caller's
generator, not from the global RNG Captum would use.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
from captum._utils.models.linear_model import SkLearnRidge
from captum.attr import FeatureAblation, KernelShap, Lime, Occlusion, ShapleyValueSampling

from xaudit.core.errors import ConfigError, check_choice, check_range
from xaudit.explain.base import DEFAULT_INTERNAL_BATCH, check_int, check_internal_batch, chunked, register

IB = DEFAULT_INTERNAL_BATCH
FEATURES = ("patch", "slic")


@contextlib.contextmanager
def _one_blas_thread():
    """The per-image surrogate fits (scikit-learn, OpenBLAS) run single-threaded: OpenBLAS worker
    threads busy-wait between the many tiny fits and starved torch's threads -- KernelSHAP ran 4x
    slower on 2 cores without this (bench/README.md). threadpoolctl comes with scikit-learn."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# --------------------------------------------------------------------------------- feature masks
def patch_mask(height: int, width: int, patch_px: int, device=None) -> torch.Tensor:
    """int64 [1, 1, H, W]: square patches numbered row by row from 0 (edge patches may be smaller)."""
    cols = math.ceil(width / patch_px)
    r = torch.arange(height, device=device) // patch_px
    c = torch.arange(width, device=device) // patch_px
    return (r[:, None] * cols + c[None, :]).view(1, 1, height, width)


def slic_mask(x: torch.Tensor, n_segments: int, compactness: float = 10.0) -> torch.Tensor:
    """int64 [N, 1, H, W]: SLIC superpixels of each image (scikit-image), labels 0..k-1 per image."""
    from skimage.segmentation import slic

    imgs = x.detach().cpu().permute(0, 2, 3, 1).numpy().astype(np.float64)
    masks = []
    for img in imgs:
        seg = slic(img, n_segments=n_segments, compactness=compactness, start_label=0,
                   channel_axis=-1 if img.shape[-1] > 1 else None)
        _, seg = np.unique(seg, return_inverse=True)  # consecutive labels
        masks.append(seg.reshape(img.shape[:2]))
    return torch.from_numpy(np.stack(masks)).long().unsqueeze(1).to(x.device)


def feature_mask(x: torch.Tensor, features: str, patch_px: int, n_segments: int) -> torch.Tensor:
    if features == "patch":
        return patch_mask(x.shape[2], x.shape[3], patch_px, x.device)
    return slic_mask(x, n_segments)


def n_features(shape: tuple[int, int, int], p: dict[str, Any]) -> int:
    """Number of features per image (for ``slic``, the requested number of segments)."""
    if p["features"] == "patch":
        return math.ceil(shape[1] / p["patch_px"]) * math.ceil(shape[2] / p["patch_px"])
    return p["n_segments"]


def _batched(x, target, internal_batch: int, run):
    """Captum perturbs a whole batch at once (``perturbations_per_eval`` copies per model call): run
    ``run(x_chunk, target_chunk, per_eval)`` on chunks of at most internal_batch images, with as many
    perturbations per call as keep a call within internal_batch images."""
    rows = min(len(x), internal_batch)
    per_eval = max(1, internal_batch // rows)
    with torch.no_grad():
        return chunked(lambda xc, tc: run(xc, tc, per_eval), x, target, rows)


def _check_features(p: dict[str, Any]) -> None:
    check_internal_batch(p)
    check_choice("features", p["features"], FEATURES)
    check_int("patch_px", p["patch_px"], 1, 4096)
    check_int("n_segments", p["n_segments"], 2, 100_000)
    b = p["baseline"]
    if isinstance(b, bool) or not isinstance(b, (int, float)):
        raise ConfigError("baseline", f"must be a number (the value of removed pixels), got {b!r}")


FEATURE_PARAMS = {"features": "patch", "patch_px": 4, "n_segments": 64, "baseline": 0.0}


# ------------------------------------------------------------------------------------ occlusion
def _check_occlusion(p: dict[str, Any]) -> None:
    check_internal_batch(p)
    check_int("window_px", p["window_px"], 1, 4096)
    check_int("stride_px", p["stride_px"], 1, 4096)
    if isinstance(p["baseline"], bool) or not isinstance(p["baseline"], (int, float)):
        raise ConfigError("baseline", f"must be a number, got {p['baseline']!r}")


def _occlusion_positions(shape, p) -> int:
    _, h, w = shape
    k, s = p["window_px"], p["stride_px"]
    return (math.ceil(max(h - k, 0) / s) + 1) * (math.ceil(max(w - k, 0) / s) + 1)


@register("occlusion", family="perturbation",
          params={"window_px": 4, "stride_px": 2, "baseline": 0.0, "internal_batch": IB},
          passes=lambda p, s: (1 + _occlusion_positions(s, p), 0), validate=_check_occlusion)
def occlusion(model, x, target, window_px=4, stride_px=2, baseline=0.0, internal_batch=IB):
    """Occlusion (Captum): the drop of the target logit when a ``window_px`` square (all channels) is set
    to ``baseline``, sliding with stride ``stride_px``, averaged over the windows covering each pixel."""
    c, h, w = x.shape[1:]
    if window_px > min(h, w):
        raise ConfigError("window_px", f"must be <= the image size {min(h, w)}, got {window_px}")
    occ = Occlusion(model)
    return _batched(x, target, internal_batch, lambda xc, tc, k: occ.attribute(
        xc, sliding_window_shapes=(c, window_px, window_px), strides=(c, stride_px, stride_px),
        baselines=float(baseline), target=tc, perturbations_per_eval=k))


@register("feature_ablation", family="perturbation", params={**FEATURE_PARAMS, "internal_batch": IB},
          passes=lambda p, s: (1 + n_features(s, p), 0), validate=_check_features)
def feature_ablation(model, x, target, features="patch", patch_px=4, n_segments=64, baseline=0.0,
                     internal_batch=IB):
    """Feature ablation (Captum): the drop of the target logit when one feature (a patch or superpixel,
    all channels) is set to ``baseline``."""
    fa = FeatureAblation(model)
    return _batched(x, target, internal_batch, lambda xc, tc, k: fa.attribute(
        xc, baselines=float(baseline), target=tc, feature_mask=feature_mask(xc, features, patch_px, n_segments),
        perturbations_per_eval=k))


# ------------------------------------------------------------------------------ shapley sampling
def _check_svs(p: dict[str, Any]) -> None:
    _check_features(p)
    check_int("samples", p["samples"], 1, 100_000)
    check_int("seed", p["seed"], 0, 2**63 - 1)


@register("shapley_value_sampling", family="perturbation", stochastic=True,
          params={**FEATURE_PARAMS, "samples": 4, "seed": 0, "internal_batch": IB},
          passes=lambda p, s: (1 + p["samples"] * n_features(s, p), 0), validate=_check_svs)
def shapley_value_sampling(model, x, target, features="patch", patch_px=4, n_segments=64, baseline=0.0,
                           samples=4, internal_batch=IB, *, generator):
    """Shapley value sampling (Captum): each feature's mean marginal contribution over ``samples``
    random orderings of the features (orderings shared by the images of a chunk; 4 orderings of 64
    patches cost 257 forward passes per image, the budget of lime and kernel_shap)."""
    svs = ShapleyValueSampling(model)

    def orderings(num_features: int, num_samples: int):
        for _ in range(num_samples):
            yield torch.randperm(num_features, generator=generator, device=generator.device).tolist()

    svs.permutation_generator = orderings  # Captum's own hook point; its default uses the global RNG
    return _batched(x, target, internal_batch, lambda xc, tc, k: svs.attribute(
        xc, baselines=float(baseline), target=tc, feature_mask=feature_mask(xc, features, patch_px, n_segments),
        n_samples=samples, perturbations_per_eval=k))


# ---------------------------------------------------------------------------- LIME / KernelSHAP
class _SeededKernelShap(KernelShap):
    """Captum's KernelShap with its coalition sampler drawing from a torch.Generator."""

    def __init__(self, model, generator: torch.Generator):
        super().__init__(model)
        self._generator = generator

    def kernel_shap_perturb_generator(self, original_inp, **kwargs):
        num_features = int(kwargs["num_interp_features"])
        probs = kwargs["num_select_distribution"].probs
        device = original_inp.device if isinstance(original_inp, torch.Tensor) else original_inp[0].device
        g = self._generator
        yield torch.ones(1, num_features, device=device, dtype=torch.long)
        yield torch.zeros(1, num_features, device=device, dtype=torch.long)
        while True:
            k = int(torch.multinomial(probs.to(g.device), 1, generator=g))
            rand_vals = torch.randn(1, num_features, generator=g, device=g.device)
            threshold = torch.kthvalue(rand_vals, num_features - k).values.item()
            yield (rand_vals > threshold).to(device=device).long()


def lime_kernel(kernel_width: float):
    """The LIME package's sample weight: sqrt(exp(-d^2 / width^2)) with d the cosine distance between
    the coalition vector z and the full coalition (all ones), d = 1 - sqrt(|z| / M). Computed on the
    M-dimensional coalition, not on the image (Captum's default), which is also much cheaper."""
    def similarity(original_inp, perturbed_inp, interpretable_sample, **kwargs):
        m = interpretable_sample.numel()
        d = 1.0 - math.sqrt(float(interpretable_sample.sum()) / m)
        return torch.tensor([math.exp(-0.5 * d * d / (kernel_width * kernel_width))])
    return similarity


def _check_lime(p: dict[str, Any]) -> None:
    _check_features(p)
    check_int("samples", p["samples"], 2, 100_000)
    check_int("seed", p["seed"], 0, 2**63 - 1)
    if "alpha" in p:
        check_range("alpha", p["alpha"], 0.0, 1e6)
        check_range("kernel_width", p["kernel_width"], 0.0, 1e6, lo_open=True)


@register("lime", family="perturbation", stochastic=True,
          params={**FEATURE_PARAMS, "samples": 256, "alpha": 1.0, "kernel_width": 0.25, "seed": 0,
                  "internal_batch": IB},
          passes=lambda p, s: (p["samples"] + 1, 0), validate=_check_lime)
def lime(model, x, target, features="patch", patch_px=4, n_segments=64, baseline=0.0, samples=256, alpha=1.0,
         kernel_width=0.25, internal_batch=IB, *, generator):
    """LIME (Captum Lime): a ridge (``alpha``) surrogate per image fitted to the target logit on
    ``samples`` random coalitions of features (each kept with probability 1/2, the others set to
    ``baseline``), weighted by :func:`lime_kernel` (``kernel_width``).

    Surrogate and kernel are the LIME package's (ridge, alpha 1; cosine distance of the coalition,
    width 0.25). Captum's default surrogate, Lasso with alpha 0.01, zeroes every coefficient when the
    logits vary little (an untrained or randomized model) and so returns empty maps. Captum evaluates
    the unperturbed input once more per image (samples + 1)."""
    mask = feature_mask(x, features, patch_px, n_segments)

    def coalition(original_inp, **kwargs):
        probs = torch.full((1, int(kwargs["num_interp_features"])), 0.5, device=generator.device)
        return torch.bernoulli(probs, generator=generator).long().to(x.device)

    explainer = Lime(model, interpretable_model=SkLearnRidge(alpha=alpha),
                     similarity_func=lime_kernel(kernel_width),
                     perturb_func=coalition)
    with torch.no_grad(), _one_blas_thread():
        return explainer.attribute(x, baselines=float(baseline), target=target, feature_mask=mask,
                                   n_samples=samples, perturbations_per_eval=min(samples, internal_batch))


@register("kernel_shap", family="perturbation", stochastic=True,
          params={**FEATURE_PARAMS, "samples": 256, "seed": 0, "internal_batch": IB},
          passes=lambda p, s: (p["samples"] + 1, 0), validate=_check_lime)
def kernel_shap(model, x, target, features="patch", patch_px=4, n_segments=64, baseline=0.0, samples=256,
                internal_batch=IB, *, generator):
    """KernelSHAP (Captum KernelShap): a linear surrogate per image fitted on ``samples`` coalitions
    drawn from the Shapley kernel (the full and the empty coalition included)."""
    mask = feature_mask(x, features, patch_px, n_segments)
    explainer = _SeededKernelShap(model, generator)
    with torch.no_grad(), _one_blas_thread():
        return explainer.attribute(x, baselines=float(baseline), target=target, feature_mask=mask,
                                   n_samples=samples, perturbations_per_eval=min(samples, internal_batch))
