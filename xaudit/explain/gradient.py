"""Gradient-family methods: plain gradients, path integrals and noise averages of gradients.

All gradients come from Captum (``Saliency``, ``InputXGradient``, ``IntegratedGradients``). Where
Captum would draw random numbers from the global RNG (``NoiseTunnel``, ``GradientShap``), the noise,
baselines and path positions are drawn here from the caller's ``torch.Generator`` -- batched, in
chunks of at most ``internal_batch`` images per model call -- and Captum computes the gradients.
Results are reproducible for the same seed, batch and ``internal_batch``.
"""
from __future__ import annotations

from typing import Any

import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency

from xaudit.core.errors import ConfigError, check_choice, check_range
from xaudit.explain.base import (DEFAULT_INTERNAL_BATCH, check_int, check_internal_batch, chunked, register,
                                 rows_per_chunk)

IB = DEFAULT_INTERNAL_BATCH


def _gradient(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d logit[target] / d x, by Captum's Saliency (signed)."""
    return Saliency(model).attribute(x, target=target, abs=False)


def _check_baseline(field: str, value) -> None:
    if isinstance(value, torch.Tensor):
        if value.ndim not in (3, 4):
            raise ConfigError(field, f"a tensor baseline must be [C, H, W] or [N, C, H, W], got {tuple(value.shape)}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, f"must be a number (a constant image) or a tensor, got {value!r}")


def _baseline_chunk(value, x: torch.Tensor, i: int, j: int) -> torch.Tensor | float:
    """The baseline for images x[i:j]: a constant, one image [C, H, W] / [1, C, H, W] for all, or one
    image per input [N, C, H, W]."""
    if not isinstance(value, torch.Tensor):
        return float(value)
    b = value.to(device=x.device, dtype=x.dtype)
    if b.ndim == 3:
        b = b.unsqueeze(0)
    if b.shape[0] == len(x) and len(x) > 1:
        return b[i:j]
    if b.shape[0] != 1 or b.shape[1:] != x.shape[1:]:
        raise ConfigError("baseline", f"a tensor baseline must be [C, H, W], [1, C, H, W] or [N, C, H, W] "
                          f"matching the input {tuple(x.shape)}, got {tuple(value.shape)}")
    return b.expand(j - i, *x.shape[1:])


# -------------------------------------------------------------------------------- plain gradients
@register("saliency", family="gradient", params={"internal_batch": IB}, passes=(1, 1),
          validate=check_internal_batch)
def saliency(model, x, target, internal_batch=IB):
    """Gradient of the target logit with respect to the input (signed; abs is post-processing)."""
    return chunked(lambda xc, tc: _gradient(model, xc, tc), x, target, rows_per_chunk(len(x), 1, internal_batch))


@register("input_x_gradient", family="gradient", params={"internal_batch": IB}, passes=(1, 1),
          validate=check_internal_batch)
def input_x_gradient(model, x, target, internal_batch=IB):
    """Input times gradient (Captum InputXGradient)."""
    ixg = InputXGradient(model)
    return chunked(lambda xc, tc: ixg.attribute(xc, target=tc), x, target, rows_per_chunk(len(x), 1, internal_batch))


# ---------------------------------------------------------------------------- integrated gradients
def _check_ig(p: dict[str, Any]) -> None:
    check_internal_batch(p)
    check_int("steps", p["steps"], 1, 100_000)
    _check_baseline("baseline", p["baseline"])
    check_choice("integration", p["integration"], ("gausslegendre", "riemann_trapezoid", "riemann_left",
                                                     "riemann_right", "riemann_middle"))


@register("integrated_gradients", family="gradient",
          params={"steps": 50, "baseline": 0.0, "integration": "gausslegendre", "internal_batch": IB},
          passes=lambda p, s: (p["steps"], p["steps"]), validate=_check_ig)
def integrated_gradients(model, x, target, steps=50, baseline=0.0, integration="gausslegendre",
                         internal_batch=IB):
    """Integrated Gradients (Captum), ``steps`` points on the straight path from ``baseline`` (0: black
    image) to the input; ``integration`` is Captum's quadrature rule. Completeness: the attributions
    of an image sum to f(x) - f(baseline) up to the quadrature error."""
    ig = IntegratedGradients(model, multiply_by_inputs=True)
    rows = min(len(x), internal_batch)  # Captum then batches steps so each call holds <= internal_batch images
    out = []
    for i in range(0, len(x), rows):
        j = min(i + rows, len(x))
        out.append(ig.attribute(x[i:j], baselines=_baseline_chunk(baseline, x, i, j), target=target[i:j],
                                n_steps=steps, method=integration, internal_batch_size=max(internal_batch, j - i)))
    return torch.cat(out)


# ------------------------------------------------------------------------------- noisy gradients
def _check_noise(p: dict[str, Any]) -> None:
    check_internal_batch(p)
    check_int("samples", p["samples"], 1, 100_000)
    check_range("noise", p["noise"], 0.0, 10.0)
    check_int("seed", p["seed"], 0, 2**63 - 1)


def _noisy_gradient_moments(model, x, target, samples: int, noise: float, generator: torch.Generator,
                            internal_batch: int, second: bool):
    """Mean (and mean of squares) over ``samples`` draws of the gradient at x + eps, eps ~ N(0, sd^2)
    with sd = noise * (max - min of each image). Noise is drawn from ``generator`` in chunks of
    [samples_chunk, rows, C, H, W]; each model call holds <= internal_batch images."""
    n = len(x)
    rows = min(n, internal_batch)
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    total_sq = torch.zeros_like(total) if second else None
    sal = Saliency(model)
    for i in range(0, n, rows):
        xc, tc = x[i:i + rows], target[i:i + rows]
        r = len(xc)
        sd = noise * (xc.flatten(1).amax(1) - xc.flatten(1).amin(1))  # [r]
        per_call = max(1, internal_batch // r)
        done = 0
        while done < samples:
            k = min(per_call, samples - done)
            eps = torch.randn((k, *xc.shape), generator=generator, device=generator.device, dtype=xc.dtype)
            noisy = eps.to(xc.device).mul_(sd.view(1, r, 1, 1, 1)).add_(xc)  # in place: x + eps * sd
            g = sal.attribute(noisy.view(k * r, *xc.shape[1:]), target=tc.repeat(k), abs=False)
            g = g.view(k, *xc.shape)
            total[i:i + r] += g.sum(0, dtype=torch.float64)
            if second:
                total_sq[i:i + r] += g.double().square_().sum(0)  # float64: var_grad subtracts mean^2
            done += k
    mean = total / samples
    return mean, (None if total_sq is None else total_sq / samples)


def _noise_passes(p, s):
    return (p["samples"], p["samples"])


@register("smooth_grad", family="gradient", stochastic=True,
          params={"samples": 50, "noise": 0.15, "seed": 0, "internal_batch": IB},
          passes=_noise_passes, validate=_check_noise)
def smooth_grad(model, x, target, samples=50, noise=0.15, internal_batch=IB, *, generator):
    """SmoothGrad: the mean gradient over ``samples`` Gaussian perturbations of the input, noise sd =
    ``noise`` x (max - min) of each image (docs/protocols.md#113-method-settings: 0.15, 50 samples)."""
    mean, _ = _noisy_gradient_moments(model, x, target, samples, noise, generator, internal_batch, False)
    return mean.to(x.dtype)


@register("smooth_grad_sq", family="gradient", stochastic=True,
          params={"samples": 50, "noise": 0.15, "seed": 0, "internal_batch": IB},
          passes=_noise_passes, validate=_check_noise)
def smooth_grad_sq(model, x, target, samples=50, noise=0.15, internal_batch=IB, *, generator):
    """SmoothGrad-Squared: the mean of squared gradients over Gaussian perturbations (same noise as
    smooth_grad)."""
    _, mean_sq = _noisy_gradient_moments(model, x, target, samples, noise, generator, internal_batch, True)
    return mean_sq.to(x.dtype)


@register("var_grad", family="gradient", stochastic=True,
          params={"samples": 25, "noise": 0.15, "seed": 0, "internal_batch": IB},
          passes=_noise_passes, validate=_check_noise)
def var_grad(model, x, target, samples=25, noise=0.15, internal_batch=IB, *, generator):
    """VarGrad: the variance of gradients over Gaussian perturbations, mean(g^2) - mean(g)^2 as in
    Captum's NoiseTunnel (docs/protocols.md#113-method-settings: 0.15 x range, 25 samples)."""
    mean, mean_sq = _noisy_gradient_moments(model, x, target, samples, noise, generator, internal_batch, True)
    return (mean_sq - mean * mean).clamp_min(0.0).to(x.dtype)


# ------------------------------------------------------------------ gradient SHAP / expected gradients
def _check_shap(p: dict[str, Any]) -> None:
    check_internal_batch(p)
    check_int("samples", p["samples"], 1, 100_000)
    check_range("stdevs", p["stdevs"], 0.0, 10.0)
    check_int("seed", p["seed"], 0, 2**63 - 1)
    b = p["baselines"]
    if isinstance(b, torch.Tensor):
        if b.ndim != 4 or b.shape[0] < 1:
            raise ConfigError("baselines", f"must be a tensor [B, C, H, W] with B >= 1, got {tuple(b.shape)}")
    elif b is not None and b not in ("uniform", "zeros"):
        raise ConfigError("baselines", f"must be a tensor [B, C, H, W], 'uniform', 'zeros' or None; got {b!r}")


def _expected_gradients(model, x, target, baselines, samples: int, stdevs: float, generator: torch.Generator,
                        internal_batch: int) -> torch.Tensor:
    """Captum's GradientShap estimator with our generator: for each image and sample, a baseline b
    (a row of ``baselines``, or fresh uniform noise when baselines == 'uniform'), alpha ~ U(0, 1) and
    (if stdevs > 0) x' = x + N(0, stdevs^2); attribution = mean of (x' - b) * grad f(b + alpha (x' - b))."""
    n = len(x)
    rows = min(n, internal_batch)
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    sal = Saliency(model)
    dev = generator.device
    if isinstance(baselines, torch.Tensor):
        pool = baselines.to(device=x.device, dtype=x.dtype)
    for i in range(0, n, rows):
        xc, tc = x[i:i + rows], target[i:i + rows]
        r = len(xc)
        per_call = max(1, internal_batch // r)
        done = 0
        while done < samples:
            k = min(per_call, samples - done)
            shape = (k, *xc.shape)
            if isinstance(baselines, torch.Tensor):
                idx = torch.randint(len(pool), (k, r), generator=generator, device=dev).to(x.device)
                b = pool[idx]
            elif baselines == "uniform":
                b = torch.rand(shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
            else:  # zeros
                b = torch.zeros(shape, dtype=x.dtype, device=x.device)
            alpha = torch.rand((k, r, 1, 1, 1), generator=generator, device=dev, dtype=x.dtype).to(x.device)
            xn = xc.unsqueeze(0).expand(shape)
            if stdevs > 0:
                xn = xn + stdevs * torch.randn(shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
            delta = xn - b
            point = b + alpha * delta
            g = sal.attribute(point.reshape(k * r, *xc.shape[1:]), target=tc.repeat(k), abs=False)
            total[i:i + r] += (g.view(shape) * delta).double().sum(0)
            done += k
    return (total / samples).to(x.dtype)


@register("gradient_shap", family="gradient", stochastic=True,
          params={"samples": 50, "baselines": "uniform", "stdevs": 0.0, "seed": 0, "internal_batch": IB},
          passes=lambda p, s: (p["samples"], p["samples"]), validate=_check_shap)
def gradient_shap(model, x, target, samples=50, baselines="uniform", stdevs=0.0, internal_batch=IB, *, generator):
    """GradientSHAP (Captum's estimator): expected (x - b) * gradient at a uniformly random point between
    a random baseline b and x. Default baselines: a fresh uniform-noise image per sample ('uniform');
    also 'zeros' or a tensor [B, C, H, W] of reference images."""
    return _expected_gradients(model, x, target, baselines, samples, stdevs, generator, internal_batch)


@register("expected_gradients", family="gradient", stochastic=True,
          params={"samples": 50, "baselines": None, "stdevs": 0.0, "seed": 0, "internal_batch": IB},
          passes=lambda p, s: (p["samples"], p["samples"]), validate=_check_shap)
def expected_gradients(model, x, target, samples=50, baselines=None, stdevs=0.0, internal_batch=IB, *, generator):
    """Expected Gradients (Erion et al.): GradientSHAP with baselines drawn from data. Pass
    ``baselines`` = training images [B, C, H, W]: a check that knows the model's world should pass a
    fixed sample of its training split (the method cannot see the world). With None, the explained
    batch itself is the reference set."""
    pool = x if baselines is None else baselines
    if isinstance(pool, str):
        raise ConfigError("baselines", "expected_gradients needs data baselines: a tensor [B, C, H, W] or None")
    return _expected_gradients(model, x, target, pool, samples, stdevs, generator, internal_batch)
