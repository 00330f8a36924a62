"""The batched optimization loop: K objectives x R restarts in one batch, one forward and one backward
per step for the whole batch, Adam on the parameterization's tensors.

    res = optimize(model, Class([0, 1, 2]), param="fourier", restarts=2, generator=g)   # a Synthesis
    res.images      # float [K * R, C, S, S] in [0, 1]; image k * R + r: objective k, restart r
    res.values      # float [K * R]: each image's objective on the untransformed final image
    res.settings    # every setting used (steps, lr, size, transforms, ...), JSON-able

Defaults, with their sources:
- ``steps = 512``: torch-lucent's ``render_vis`` default ``thresholds=(512,)``;
- ``lr``: Adam at 0.05 for ``fourier`` and ``pixel`` (lucent's ``render_vis`` default optimizer,
  ``Adam(lr=5e-2)``, used there for every parameterization); 0.005 for ``cppn``: Lucid's xy2rgb
  notebook (tensorflow/lucid, notebooks/differentiable-parameterizations/xy2rgb.ipynb, the CPPN
  notebook of Mordvintsev et al. 2018),
  ``render_feature``: ``AdamOptimizer(0.005)``, 512 steps (its ``render_story`` uses 0.004). Measured
  on the zoo's ``clean`` model with param.py's default instance-normalized CPPN, 10 classes, 256 steps:
  target = argmax for 10 / 10 at 0.005, 0.01 and 0.02 (mean target logit 131, 127, 120); without the
  normalization 8 / 10, 8 / 10 and 3 / 10. (Lucid's notebook also renders its CPPNs without
  transforms, ``transforms=[]``; here they stay on as for every parameterization: with the normalization
  both reach 10 / 10.)
- ``lr = 0.1`` for ``maco`` (Adam on raw phases in radians; horama's 1.0 is for NAdam on standardized
  phases): measured on the zoo's ``clean`` model, 10 classes, lucent's transforms: 10 / 10 classes at
  every lr from 0.02 to 1.0, mean target logit 58.4 (256 steps) and 60.4 (512) at 0.1, the best or
  within 1 of it; 42 at 1.0;
- ``size = 32``: the zoo's worlds are 32 x 32 (and the cnn architecture's default);
- ``channels``: the first Conv2d's ``in_channels``, else the first Linear's ``in_features / size^2``.

Random numbers and determinism: one 62-bit base seed is drawn from the caller's generator; image i
(objective k, restart r) gets its own generator seeded with
``stream_seed(base, "synthesis/<param>/<key_k>/restart=<r>")``, where ``key_k`` describes objective k
(e.g. ``class=3``). Its initialization and every transform draw come from that generator, so the same
seed gives the same image for the same objective and restart whatever else is in the batch (up to the
float round-off of the model's batched forward; exactly so on the same batch). The Diversity term
couples an objective's restarts, so there an image also depends on its siblings.

The model's own parameters receive no gradient (``torch.autograd.grad`` on the image parameters
only), and the model is put in eval mode with out-of-place ReLUs for the call (base.prepared).
"""
from __future__ import annotations

from typing import Any
import torch
from torch import nn

from xaudit.core.errors import ConfigError, check_int, check_range
from xaudit.core.rng import generator as make_generator, stream_seed
from xaudit.explain.base import Synthesis, prepared, setting_label
from xaudit.explain.synthesis import param as P
from xaudit.explain.synthesis import transforms as T
from xaudit.explain.synthesis.objectives import LOGITS, Context, Objective, as_objective

DEFAULT_STEPS = 512
DEFAULT_LR = {"pixel": 0.05, "fourier": 0.05, "cppn": 0.005, "maco": 0.1}
DEFAULT_SIZE = 32


def infer_channels(model: nn.Module, size: int) -> int:
    """The input channel count: the first Conv2d's in_channels, else the first Linear's
    in_features / size^2; ConfigError if neither tells."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
        if isinstance(m, nn.Linear):
            if m.in_features % (size * size) == 0:
                return m.in_features // (size * size)
            break
    raise ConfigError("channels", "cannot tell the model's input channels from its first layer; pass "
                      "channels=C")


class _Recorder:
    """Forward hooks on the named modules that an objective reads; outputs in ``acts``."""

    def __init__(self, model: nn.Module, layers: set[str]):
        modules = dict(model.named_modules())
        self.names = [n for n in modules if n]
        unknown = sorted(set(layers) - set(modules) - {LOGITS})
        if unknown:
            raise ConfigError("layer", f"unknown layer {unknown[0]!r}; the model's layers: "
                              f"{', '.join([LOGITS, *self.names])}")
        self.acts: dict[str, Any] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in sorted(layers - {LOGITS})]

    def _hook(self, name):
        def hook(module, args, output):
            self.acts[name] = output
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _shape(t) -> tuple[int, ...] | None:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def check_settings(param: str, steps: int, lr: float | None, size: int, restarts: int) -> None:
    """ConfigError for values out of range."""
    if param not in P.PARAMS:
        raise ConfigError("param", f"must be one of {', '.join(P.PARAMS)}; got {param!r}")
    check_int("steps", steps, 0, 1_000_000)
    if lr is not None:
        check_range("lr", lr, 0, 10, lo_open=True)
    check_int("size", size, 4, 1024)
    check_int("restarts", restarts, 1, 10_000)


def optimize(model: nn.Module, objective, *, param: str = "fourier", steps: int = DEFAULT_STEPS,
             lr: float | None = None, size: int = DEFAULT_SIZE, restarts: int = 1, transforms=True,
             channels: int | None = None, generator: torch.Generator | None = None,
             init: torch.Tensor | None = None, param_options: dict | None = None) -> Synthesis:
    """Maximize ``objective`` (an Objective, a class index or a list of them) over a batch of K x R
    images of ``param``; see the module docstring. Every check runs before the first step."""
    check_settings(param, steps, lr, size, restarts)
    obj: Objective = as_objective(objective)
    spec = T.Transforms.of(transforms)
    lr = DEFAULT_LR[param] if lr is None else float(lr)
    generator = generator if generator is not None else make_generator(0)
    opts = dict(param_options or {})
    k, r = obj.width, restarts
    n = k * r
    with prepared(model):
        channels = infer_channels(model, size) if channels is None else channels
        check_int("channels", channels, 1, 64)
        rec = _Recorder(model, obj.layers())
        try:
            # one probe forward: the layers' shapes and the output width, for the objective's checks
            with torch.no_grad():
                try:
                    out = model(torch.full((1, channels, size, size), 0.5))
                except RuntimeError as e:
                    raise ConfigError("size", f"the model does not take [1, {channels}, {size}, {size}] "
                                      f"images ({type(e).__name__}: {e}); pass its input size") from e
            shapes = {name: _shape(rec.acts.get(name)) for name in rec.names}
            shapes[LOGITS] = _shape(out)
            obj.check(shapes, rec.names)
            if init is not None and (not isinstance(init, torch.Tensor) or init.shape[0] != n
                                     or tuple(init.shape[1:]) != (channels, size, size)):
                got = tuple(init.shape) if isinstance(init, torch.Tensor) else type(init).__name__
                raise ConfigError("init", f"must be [K * R, C, S, S] = [{n}, {channels}, {size}, {size}]; got {got}")

            base = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
            keys = obj.keys()
            image_keys = [f"synthesis/{param}/{keys[i // r]}/restart={i % r}" for i in range(n)]
            gens = [make_generator(stream_seed(base, key)) for key in image_keys]
            p = (P.from_images(param, init, **opts) if init is not None
                 else P.make(param, n, channels, size, gens, **opts))
            leaves = p.parameters()
            adam = torch.optim.Adam(leaves, lr=lr)
            group = torch.arange(k).repeat_interleave(r)

            def evaluate(x):
                rec.acts.clear()
                logits = model(x)
                return obj(Context(rec.acts, logits, group, r))

            for _ in range(steps):
                values = evaluate(T.apply(p.images(), spec, gens))
                grads = torch.autograd.grad(-values.sum(), leaves)   # the model's .grad stays untouched
                for leaf, g in zip(leaves, grads):
                    leaf.grad = g
                adam.step()
            with torch.no_grad():
                images = p.images().detach().clamp(0, 1)
                final = evaluate(images).detach()
        finally:
            rec.remove()
    settings = {"param": param, "steps": steps, "lr": lr, "size": size, "channels": channels,
                "restarts": r, "objectives": keys, "transforms": spec.as_dict(),
                "transform_amounts": T.amounts(size, spec), "optimizer": "Adam", "init": "given" if init is not None
                else {"init_std": opts.get("init_std", 1.0)}, "param_options": {k: setting_label(v) for k, v in opts.items()},
                "base_seed": base}
    return Synthesis(images, final, settings)
