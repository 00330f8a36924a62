"""Explanation methods: one registry, one batched signature, pass accounting.

    >>> from xaudit import explain
    >>> explain.names()                 # 20 attribution methods + 5 baselines + 6 synthesis methods
    >>> ig = explain.get("integrated_gradients", steps=50)
    >>> raw = ig(model, x, target)                        # [N, C, H, W]
    >>> ig.last_passes.backward                           # 50.0 backward passes per image
    >>> explain.explain(model, x, target, "grad_cam", post="abs")   # [N, 1, H, W]

Register a method of your own and every check scores it like the built-ins::

    @explain.register("my_method", family="gradient", passes=(1, 1))
    def my_method(model, x, target, scale=1.0):
        ...                                               # -> Tensor [N, C, H, W]

Requirements on models: images [N, C, H, W] in [0, 1] in, logits [N, K] out; hook-based methods
(guided backprop, deconvolution, DeepLift, guided Grad-CAM, LRP) need every ReLU to be its own
``nn.ReLU`` module (not functional, not reused); Grad-CAM needs a conv layer; LRP a plain chain of
layers without BatchNorm or residual additions. Otherwise the method raises NotApplicable.
"""
from xaudit.core.errors import NotApplicable
from xaudit.core.maps import abs_map, signed_map, zero_one_map  # post-processing, re-exported
from xaudit.explain.base import (DEFAULT_INTERNAL_BATCH, FAMILIES, METHOD_KINDS, METHODS, ExplanationFailed, Explainer,
                                 MethodInfo, Passes, Synthesis, count_passes, describe, explain, get, info, names, register,
                                 unregister)
from xaudit.explain import gradient, backprop, cam, perturbation, baselines  # noqa: E402,F401  (registration)
from xaudit.explain.synthesis import methods as _synthesis_methods  # noqa: E402,F401  (fv_pixel, fv_fourier, fv_maco, fv_cppn)
from xaudit.explain.synthesis import caricature as _caricature, patch as _patch  # noqa: E402,F401  (registration)
from xaudit.explain.baselines import sobel_magnitude
from xaudit.explain.perturbation import patch_mask, slic_mask

__all__ = ["DEFAULT_INTERNAL_BATCH", "FAMILIES", "METHOD_KINDS", "METHODS", "ExplanationFailed", "Explainer", "MethodInfo",
           "NotApplicable", "Passes", "Synthesis", "abs_map", "count_passes", "describe", "explain", "get", "info", "names",
           "patch_mask", "register", "signed_map", "slic_mask", "sobel_magnitude", "unregister", "zero_one_map"]
