"""Registered feature-visualization methods (kind ``synthesis``, family ``synthesis``)::

    from xaudit import explain
    images = explain.get("fv_fourier", steps=256).synthesize(model, [0, 1, 2], generator=g)
    # [K * R, C, S, S] in [0, 1]: image k * R + r maximizes the logit of class k's target

- ``fv_pixel``: pixel parameterization (sigmoid of free logits);
- ``fv_fourier``: decorrelated colour + 1/f spectrum (Olah et al. 2017; lucent ``fft_image``);
- ``fv_cppn``: a CPPN of the coordinates (Mordvintsev et al. 2018; lucent ``cppn``).

``objective``: a class index, a list of K class indices (K x ``restarts`` images, restarts of one class
adjacent), or an objective of :mod:`xaudit.explain.synthesis.objectives` (channels, neurons, directions,
weighted sums, diversity). Parameters (validated by :func:`validate` when the method is bound):
``steps`` (512), ``lr`` (None: 0.05 pixel / fourier, 0.005 cppn), ``size`` (32), ``restarts`` (1),
``transforms`` (True: jitter, scale, rotate, pad; False; or a list / dict of those names),
``channels`` (None: from the model's first layer), ``init_std`` (1.0). See optimize.py for sources.
The explainer's ``last_synthesis`` holds the images' final objective values and every setting used
after each call (:class:`xaudit.explain.base.Synthesis`).
"""
from __future__ import annotations

from typing import Any

from xaudit.core.errors import check_int, check_range
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
    return validate


def _passes(p, shape):  # one forward + backward per step, plus the final forward
    return float(p["steps"] + 1), float(p["steps"])


def _run(param, model, objective, generator, init, steps, lr, size, restarts, transforms, channels, init_std):
    _validator(param)({"steps": steps, "lr": lr, "size": size, "restarts": restarts,
                       "transforms": transforms, "channels": channels, "init_std": init_std})
    opts = {} if init is not None else {"init_std": init_std}
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
fv_cppn = _register("fv_cppn", "cppn", "Activation maximization of a target class (or objective) "
                    "parameterized by a CPPN of the pixel coordinates (Mordvintsev et al. 2018).")

