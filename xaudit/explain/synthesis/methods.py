"""Registered feature-visualization methods (kind ``synthesis``, family ``synthesis``)::

    from xaudit import explain
    images = explain.get("fv_fourier", steps=256).synthesize(model, [0, 1, 2], generator=g)
    # [K * R, C, S, S] in [0, 1]: image k * R + r maximizes the logit of class k's target

- ``fv_pixel``: pixel parameterization (sigmoid of free logits);
- ``fv_fourier``: decorrelated colour + 1/f spectrum (Olah et al. 2017; lucent ``fft_image``);
- ``fv_cppn``: a CPPN of the coordinates (Mordvintsev et al. 2018; lucent ``cppn``);
- ``fv_maco``: phase-only optimization under a fixed magnitude spectrum (Fel et al. 2023; horama), the
  spectrum of the world's own training images (``magnitude``: a world name or config, or a tensor).

``objective``: a class index, a list of K class indices (K x ``restarts`` images, restarts of one class
adjacent), or an objective of :mod:`xaudit.explain.synthesis.objectives` (channels, neurons, directions,
weighted sums, diversity). Parameters (validated by :func:`validate` when the method is bound):
``steps`` (512), ``lr`` (None: 0.05 pixel / fourier, 0.005 cppn, 0.1 maco), ``size`` (32), ``restarts`` (1),
``transforms`` (True: jitter, scale, rotate, pad; False; or a list / dict of those names),
``channels`` (None: from the model's first layer), ``init_std`` (1.0); fv_maco also ``magnitude``
("shapes"). ``transforms="maco"`` is horama's set (random crops and noise). See optimize.py for sources.
The explainer's ``last_synthesis`` holds the images' final objective values and every setting used
after each call (:class:`xaudit.explain.base.Synthesis`).
"""
from __future__ import annotations

from typing import Any

import torch

from xaudit.core.errors import ConfigError, check_int, check_range
from xaudit.explain.base import register
from xaudit.explain.synthesis import transforms as T
from xaudit.explain.synthesis.optimize import DEFAULT_SIZE, DEFAULT_STEPS, check_settings, optimize

PARAMS = {"steps": DEFAULT_STEPS, "lr": None, "size": DEFAULT_SIZE, "restarts": 1, "transforms": True,
          "channels": None, "init_std": 1.0}


def _validator(param: str):
    def validate(p: dict[str, Any]) -> None:
        check_settings(param, p["steps"], p["lr"], p["size"], p["restarts"])
        T.Transforms.of(p["transforms"])
        if p["channels"] is not None:
            check_int("channels", p["channels"], 1, 64)
        check_range("init_std", p["init_std"], 0, 100, lo_open=True)
        if param == "maco":
            _check_magnitude_source(p["magnitude"])
    return validate


def _passes(p, shape):  # one forward + backward per step, plus the final forward
    return float(p["steps"] + 1), float(p["steps"])


def _check_magnitude_source(value) -> None:
    """fv_maco's ``magnitude``: a world name, a world config dict, a tensor [C, S, S//2+1], or None."""
    if value is None or isinstance(value, (str, torch.Tensor)):
        return
    if isinstance(value, dict) and isinstance(value.get("name", value.get("world")), str):
        return
    raise ConfigError("magnitude", "must be a world name ('shapes'), a world config dict ({'name': 'shapes', "
                      f"'size': 32}}), a tensor [C, S, S//2+1] or None (a 1/f stand-in); got {value!r}")


def _run(param, model, objective, generator, init, steps, lr, size, restarts, transforms, channels, init_std,
         **param_options):
    _validator(param)({"steps": steps, "lr": lr, "size": size, "restarts": restarts,
                       "transforms": transforms, "channels": channels, "init_std": init_std, **param_options})
    opts = {} if init is not None else {"init_std": init_std, **param_options}
    return optimize(model, objective, param=param, steps=steps, lr=lr, size=size, restarts=restarts,
                    transforms=transforms, channels=channels, generator=generator, init=init,
                    param_options=opts)


def _register(name: str, param: str, doc: str):
    def fn(model, objective, *, generator, init=None, steps=DEFAULT_STEPS, lr=None, size=DEFAULT_SIZE,
           restarts=1, transforms=True, channels=None, init_std=1.0):
        return _run(param, model, objective, generator, init, steps, lr, size, restarts, transforms,
                    channels, init_std)
    fn.__name__, fn.__doc__ = name, doc
    register(name, family="synthesis", kind="synthesis", params=PARAMS, passes=_passes,
             validate=_validator(param))(fn)
    return fn


fv_pixel = _register("fv_pixel", "pixel", "Activation maximization of a target class (or objective) "
                     "over pixels: images = sigmoid(logits), Adam, robustness transforms.")
fv_fourier = _register("fv_fourier", "fourier", "Activation maximization of a target class (or objective) "
                       "in a decorrelated-colour, 1/f-scaled Fourier basis (Olah et al. 2017; lucent).")
# MaCo: the magnitude spectrum of the world's own training images (maco.world_magnitude; nothing is
# downloaded), lr 0.1 and lucent's four transforms. Measured on the zoo's clean model (10 classes, seed 0,
# 256 / 512 steps): 10 / 10 classes reach their argmax at lr 0.02 to 1.0 with lucent's transforms (mean
# target logit 58.4 / 60.4 at lr 0.1, the best or near it); horama's crop boxes (25-30% of the side,
# resized up) reached only 0-7 / 10 at 32 px, where the box is blown up 3-4 times instead of down from
# horama's 1280 px canvas: they stay available as transforms="maco" (docs/protocols.md#5-feature-synthesis).
def fv_maco(model, objective, *, generator, init=None, steps=DEFAULT_STEPS, lr=None, size=DEFAULT_SIZE,
            restarts=1, transforms=True, channels=None, init_std=1.0, magnitude="shapes"):
    """Activation maximization of a target class (or objective) by phase-only optimization under the
    magnitude spectrum of the world's own training images (MaCo, Fel et al. 2023)."""
    return _run("maco", model, objective, generator, init, steps, lr, size, restarts, transforms, channels,
                init_std, magnitude=magnitude)


register("fv_maco", family="synthesis", kind="synthesis", params={**PARAMS, "magnitude": "shapes"},
         passes=_passes, validate=_validator("maco"))(fv_maco)

fv_cppn = _register("fv_cppn", "cppn", "Activation maximization of a target class (or objective) "
                    "parameterized by a CPPN of the pixel coordinates (Mordvintsev et al. 2018).")

