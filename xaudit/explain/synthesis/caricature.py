"""``caricature``: an image whose activations at one or several layers match those of a real image
(Olah et al. 2017, "Feature Visualization"; Lucid's caricature notebook, ``dot_compare``), the view of
a real input that model audits use (Denain & Steinhardt, "Auditing Visualizations").

    from xaudit import explain
    from xaudit.explain.synthesis import caricature   # registers the method
    x = explain.get("caricature", steps=256).synthesize(
        model, {"images": imgs, "layers": ["conv2"], "cosine": True}, generator=g)
    # [N * R, C, S, S] in [0, 1]; image n * R + r is restart r of the caricature of imgs[n]

``objective``: a dict ``{"images": Tensor[N, C, S, S] in [0, 1], "layers": str | [str, ...],
"cosine": bool (default True)}`` or a :class:`Caricature`. The real images' activations are computed
once, without gradient, on the untransformed images; the optimized image's activations (after the
robustness transforms of ``transforms.py``) are compared with them:

- ``cosine=True`` (default): the cosine similarity of the flattened activations [C * H * W] of each
  layer, averaged over the layers (in [-1, 1]). The default, because the plain dot product also grows
  with the activation's norm: maximized, it rewards saturated images that resemble the real one less
  (the reason Lucid's ``dot_compare`` has its ``cossim_pow`` factor);
- ``cosine=False``: the dot product of the flattened activations, averaged over the layers (Lucid's
  ``dot_compare`` with ``cossim_pow=0``).

Parameters: ``param`` ("fourier": the decorrelated 1/f basis Lucid's notebook renders caricatures in;
"pixel"), ``steps`` (512, torch-lucent ``render_vis``'s default, as the fv_* methods), ``lr`` (None:
Adam 0.05, lucent's default), ``restarts`` (1), ``transforms`` (True: lucent's standard set),
``init_std`` (1.0). The image size and channel count are the real images'. Checks before any step:
an unknown layer (the message lists the model's layers), images that are not [N, C, S, S], whose
channels differ from the model's first layer or that the model does not take, values outside [0, 1].
Each caricature's numbers come from the optimize loop's per-image generator keyed by a hash of its
real image, so one image's caricature does not depend on the others in the batch.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from xaudit.core.errors import ConfigError, check_int, check_range
from xaudit.explain.base import RANGE_TOLERANCE, prepared, register
from xaudit.explain.synthesis import transforms as T
from xaudit.explain.synthesis.objectives import LOGITS, Context, Objective
from xaudit.explain.synthesis.optimize import DEFAULT_STEPS, infer_channels, optimize

PARAMS = {"param": "fourier", "steps": DEFAULT_STEPS, "lr": None, "restarts": 1, "transforms": True,
          "init_std": 1.0}
_PARAMS_ALLOWED = ("pixel", "fourier")  # cppn would work too, but Lucid's caricatures use the image bases

@dataclass
class Caricature:
    """What to caricature: ``images`` float [N, C, S, S] in [0, 1], ``layers`` (names of the model's
    modules, or "logits"), ``cosine`` (True: cosine similarity; False: dot product)."""
    images: torch.Tensor
    layers: Sequence[str] = field(default_factory=lambda: ["conv2"])
    cosine: bool = True

    @classmethod
    def of(cls, objective) -> "Caricature":
        if isinstance(objective, Caricature):
            c = objective
        elif isinstance(objective, dict):
            bad = sorted(set(objective) - {"images", "layers", "cosine"})
            if bad or "images" not in objective or "layers" not in objective:
                raise ConfigError("objective", "a caricature objective is a dict with keys 'images', 'layers' "
                                  f"and optionally 'cosine'; got keys {sorted(objective)}")
            c = cls(objective["images"], objective["layers"], objective.get("cosine", True))
        else:
            raise ConfigError("objective", "must be a dict {'images': Tensor[N, C, S, S], 'layers': [...], "
                              "'cosine': bool} or a Caricature; " f"got {type(objective).__name__}")
        layers = ([c.layers] if isinstance(c.layers, str)
                  else list(c.layers) if isinstance(c.layers, (list, tuple)) else None)
        if not layers or not all(isinstance(n, str) for n in layers):
            raise ConfigError("layers", f"must be a layer name or a non-empty list of them; got {c.layers!r}")
        if not isinstance(c.cosine, bool):
            raise ConfigError("cosine", f"must be True or False; got {c.cosine!r}")
        check_images("images", c.images)
        return cls(c.images.detach().float(), sorted(set(layers), key=layers.index), c.cosine)


def check_images(fld: str, x) -> None:
    """ConfigError unless x is a float tensor [N, C, H, W], N >= 1, finite, in [0, 1]."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(fld, f"must be a float tensor [N, C, H, W] with N >= 1; got {got}")
    if not x.is_floating_point():
        raise ConfigError(fld, f"must be a floating-point tensor in [0, 1]; got dtype {x.dtype}")
    flat = x.detach()
    if not bool(torch.isfinite(flat).all()) or flat.min() < -RANGE_TOLERANCE or flat.max() > 1 + RANGE_TOLERANCE:
        raise ConfigError(fld, "values must be finite and in [0, 1] (images, not normalized tensors: "
                          "normalization belongs to the model)")


def model_channels(model: nn.Module, h: int, w: int) -> int | None:
    """The channels the model's first layer reads (None when its first layer does not tell)."""
    if h != w:
        return None
    try:
        return infer_channels(model, h)
    except ConfigError:
        return None


def activations(model: nn.Module, x: torch.Tensor, layers: Sequence[str], fld: str = "images"
                ) -> dict[str, torch.Tensor]:
    """``{layer: output}`` of ``model(x)`` at each named module (or "logits"), without gradient, in eval
    mode. ConfigError for an unknown layer (listing the valid ones) or an input the model does not take."""
    modules = dict(model.named_modules())
    valid = [LOGITS, *[n for n in modules if n]]
    unknown = [n for n in layers if n not in valid]
    if unknown:
        raise ConfigError("layer", f"unknown layer {unknown[0]!r}; the model's layers: {', '.join(valid)}")
    acts: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: acts.__setitem__(n, o))
               for n in layers if n != LOGITS]
    try:
        with prepared(model), torch.no_grad():
            try:
                acts[LOGITS] = model(x)
            except RuntimeError as e:
                raise ConfigError(fld, f"the model does not take images of shape {tuple(x.shape)} "
                                  f"({type(e).__name__}: {e})") from e
    finally:
        for h in handles:
            h.remove()
    for n in layers:
        if not isinstance(acts.get(n), torch.Tensor):
            raise ConfigError("layer", f"layer {n!r} has no tensor output")
    return {n: acts[n] for n in layers}


def similarity(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], layers: Sequence[str],
               cosine: bool) -> torch.Tensor:
    """[N]: the cosine (or dot product) of a[layer][i] and b[layer][i] (flattened), mean over layers;
    b's rows may be one per image of a or broadcast from [N, ...]."""
    vals = []
    for n in layers:
        x, y = a[n].flatten(1), b[n].flatten(1).to(a[n])
        vals.append(torch.nn.functional.cosine_similarity(x, y, dim=1, eps=1e-8) if cosine else (x * y).sum(1))
    return torch.stack(vals).mean(0)


class _CaricatureObjective(Objective):
    """Width N: image k * R + r is compared with real image k's activations (precomputed, detached)."""

    def __init__(self, targets: dict[str, torch.Tensor], layers: list[str], cosine: bool, keys: list[str]):
        self.targets, self._layers, self.cosine, self._keys = targets, layers, cosine, keys
        self.width = len(keys)

    def layers(self):
        return set(self._layers)

    def keys(self):
        return list(self._keys)

    def __call__(self, ctx: Context):
        acts = {n: ctx.layer(n) for n in self._layers}
        rows = {n: t[ctx.group] for n, t in self.targets.items()}
        return similarity(acts, rows, self._layers, self.cosine)


def _image_key(x: torch.Tensor, layers: list[str], cosine: bool) -> str:
    digest = hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest()[:16]
    return f"caricature={'+'.join(layers)}:{'cos' if cosine else 'dot'}:{digest}"


def validate(p: dict[str, Any]) -> None:
    """ConfigError for bad parameter values (run when the method is bound)."""
    if p["param"] not in _PARAMS_ALLOWED:
        raise ConfigError("param", f"must be one of {', '.join(_PARAMS_ALLOWED)}; got {p['param']!r}")
    check_int("steps", p["steps"], 0, 1_000_000)
    if p["lr"] is not None:
        check_range("lr", p["lr"], 0, 10, lo_open=True)
    check_int("restarts", p["restarts"], 1, 10_000)
    T.Transforms.of(p["transforms"])
    check_range("init_std", p["init_std"], 0, 100, lo_open=True)


def _passes(p, shape):  # the real images' forward, one forward + backward per step, the final forward
    return float(p["steps"] + 2), float(p["steps"])


@register("caricature", family="synthesis", kind="synthesis", params=PARAMS, passes=_passes, validate=validate)
def caricature(model, objective, *, generator, init=None, param="fourier", steps=DEFAULT_STEPS, lr=None,
               restarts=1, transforms=True, init_std=1.0):
    """Caricature of real images: an image optimized so that its activations at the given layers match
    (cosine or dot product) those of each real image (Olah et al. 2017; Lucid's caricature notebook).

    Returns a Synthesis: images float [N * R, C, S, S] in [0, 1] for real images [N, C, S, S], values
    [N * R] the final similarities, settings."""
    validate({"param": param, "steps": steps, "lr": lr, "restarts": restarts, "transforms": transforms,
              "init_std": init_std})
    c = Caricature.of(objective)
    n, ch, h, w = c.images.shape
    if h != w:
        raise ConfigError("images", f"must be square [N, C, S, S] (the parameterizations are S x S); got "
                          f"{tuple(c.images.shape)}")
    expect = model_channels(model, h, w)
    if expect is not None and expect != ch:
        raise ConfigError("images", f"must have the model's {expect} channels; got {ch} "
                          f"(shape {tuple(c.images.shape)})")
    targets = activations(model, c.images, c.layers)          # computed once, no gradient
    keys = [_image_key(c.images[i], c.layers, c.cosine) for i in range(n)]
    obj = _CaricatureObjective(targets, c.layers, c.cosine, keys)
    opts = {} if init is not None else {"init_std": init_std}
    res = optimize(model, obj, param=param, steps=steps, lr=lr, size=h, restarts=restarts,
                   transforms=transforms, channels=ch, generator=generator, init=init, param_options=opts)
    res.settings.update(layers=list(c.layers), cosine=c.cosine)
    return res


__all__ = ["Caricature", "activations", "caricature", "check_images", "similarity"]
