"""Objectives to maximize, evaluated on one forward pass of the whole batch, and composable.

A batch holds K objectives x R restarts: image i = k * R + r works on objective k. An objective is
*K-wide*: each leaf takes a scalar (the same target for every k, width 1) or a list of K targets
(width K)::

    Class([3, 7])                     # image k*R+r maximizes logit c_k            (width 2)
    Channel("conv2", 5)               # mean of channel 5 of conv2's output        (width 1)
    Neuron("conv2", [1, 2], y=4, x=4) # one position of a channel
    Direction("fc1", v)               # <activation, v> (mean over positions); v [D] or [K, D]
    2.0 * Class(3) + Channel("conv2", 5) - 0.1 * Diversity("conv2")

Leaves (after torch-lucent's lucent/optvis/objectives.py and Lucid's objectives):
- ``Class(c)``: the logit c (lucent: ``channel("labels", c)`` on the logits; the raw logit, not the
  softmax, as Simonyan et al. 2014 recommend for class visualization).
- ``Channel(layer, c)``: mean over positions of channel c ([N, C, H, W] -> mean over H, W; [N, C] ->
  the unit c), lucent's ``channel``.
- ``Neuron(layer, c, y, x)``: the single position (y, x) of channel c (needs [N, C, H, W]); lucent's
  ``neuron`` takes the centre by default: y, x None means the centre here too.
- ``Direction(layer, v, cosine=False)``: the dot product of the channel vector with v at each position,
  averaged over positions (Lucid's ``direction``); ``cosine=True``: cosine similarity instead (lucent's
  ``direction``).
- ``Diversity(layer)``: minus the mean cosine similarity of each image's Gram matrix at ``layer`` with
  those of the other restarts of its objective (Lucid/lucent ``diversity``, Olah et al. 2017; lucent
  takes the whole batch, here only images of the same objective k, so that K objectives do not push
  each other apart). It couples restarts: with it, an image depends on its R - 1 siblings.

Checks before any optimization (:meth:`Objective.check`, on one probe forward): an unknown layer name
(the message lists the model's layer names), a layer whose output has no channel dimension, a
channel, position or class index out of range, or a direction of the wrong length each raise
ConfigError naming the allowed values.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Sequence

import torch

from xaudit.core.errors import ConfigError

LOGITS = "logits"  # the pseudo layer name of the model's output


@dataclass
class Context:
    """What objectives read: ``acts[layer]`` [N, ...] and ``logits`` [N, K] of one forward pass,
    ``group`` int64 [N] (image i's objective index k) and ``restarts`` R."""
    acts: dict
    logits: torch.Tensor
    group: torch.Tensor
    restarts: int

    def layer(self, name: str) -> torch.Tensor:
        return self.logits if name == LOGITS else self.acts[name]


def _targets(field: str, value) -> list:
    """A scalar or a list of K targets -> list (len 1 for a scalar)."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise ConfigError(field, "must be a non-empty list or a single value")
        return list(value)
    return [value]


def _index_list(field: str, value) -> list[int]:
    vals = _targets(field, value)
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ConfigError(field, f"must be an integer or a list of integers; got {v!r}")
        if v < 0:
            raise ConfigError(field, f"must be >= 0; got {v}")
    return [int(v) for v in vals]


def _per_image(vals: list, ctx: Context) -> torch.Tensor:
    """Row k of a width-K list for each image (width 1: the same for all)."""
    t = torch.as_tensor(vals, device=ctx.logits.device)
    return t[ctx.group] if len(vals) > 1 else t.expand(ctx.group.shape[0], *t.shape[1:])


class Objective:
    """A function of one forward pass -> value per image [N] to maximize. Compose with +, -, * (a number)."""

    width = 1

    def layers(self) -> set[str]:
        """Layer names (modules of the model, or LOGITS) this objective reads."""
        return set()

    def check(self, shapes: dict[str, tuple[int, ...]], layer_names: Sequence[str]) -> None:
        """Raise ConfigError for bad input; ``shapes``: each needed layer's output shape on the probe."""

    def keys(self) -> list[str]:
        """A stable description of objective k for k < width (seeds images: same key, same image)."""
        raise NotImplementedError

    def __call__(self, ctx: Context) -> torch.Tensor:
        raise NotImplementedError

    def __add__(self, other):
        return Sum([(1.0, self), (1.0, _as_objective(other))])

    __radd__ = __add__

    def __sub__(self, other):
        return Sum([(1.0, self), (-1.0, _as_objective(other))])

    def __mul__(self, w):
        if isinstance(w, bool) or not isinstance(w, numbers.Real):
            raise ConfigError("objective", f"can only be multiplied by a number; got {type(w).__name__}")
        return Sum([(float(w), self)])

    __rmul__ = __mul__

    def __neg__(self):
        return Sum([(-1.0, self)])


def _as_objective(o) -> Objective:
    if not isinstance(o, Objective):
        raise ConfigError("objective", f"can only be combined with another objective; got {type(o).__name__}")
    return o


class Sum(Objective):
    """sum_j w_j * o_j; the widths must agree (or be 1)."""

    def __init__(self, terms: list[tuple[float, Objective]]):
        flat: list[tuple[float, Objective]] = []
        for w, o in terms:
            flat += [(w * w2, o2) for w2, o2 in o.terms] if isinstance(o, Sum) else [(w, o)]
        widths = sorted({o.width for _, o in flat} - {1})
        if len(widths) > 1:
            raise ConfigError("objective", f"terms have different numbers of targets {widths}: each term "
                              "takes one target or the same K")
        self.terms = flat
        self.width = widths[0] if widths else 1

    def layers(self):
        return set().union(*(o.layers() for _, o in self.terms))

    def check(self, shapes, layer_names):
        for _, o in self.terms:
            o.check(shapes, layer_names)

    def keys(self):
        parts = [[f"{w:g}*{key}" for key in (o.keys() * self.width if o.width == 1 else o.keys())]
                 for w, o in self.terms]
        return [" + ".join(p[k] for p in parts) for k in range(self.width)]

    def __call__(self, ctx):
        return sum(w * o(ctx) for w, o in self.terms)


def _check_layer(layer: str, shapes, layer_names, min_ndim: int, what: str) -> tuple[int, ...]:
    if layer not in shapes:
        raise ConfigError("layer", f"unknown layer {layer!r}; the model's layers: "
                          f"{', '.join([LOGITS, *layer_names])}")
    shape = shapes[layer]
    if shape is None or len(shape) < min_ndim:
        got = "no tensor output" if shape is None else f"output shape {tuple(shape)}"
        raise ConfigError("layer", f"{what} needs a layer with {'[N, C, H, W]' if min_ndim == 4 else '[N, C, ...]'} "
                          f"output; {layer!r} has {got}")
    return shape


class Class(Objective):
    """The logit of class c (int, or a list of K classes)."""

    def __init__(self, c):
        self.classes = _index_list("class", c)
        self.width = len(self.classes)

    def layers(self):
        return {LOGITS}

    def check(self, shapes, layer_names):
        shape = shapes[LOGITS]
        if shape is None or len(shape) != 2:
            raise ConfigError("class", f"needs a model that returns logits [N, K]; got {shape}")
        bad = [c for c in self.classes if c >= shape[1]]
        if bad:
            raise ConfigError("class", f"class indices must be in [0, {shape[1]}) for this model "
                              f"({shape[1]} logits); got {bad[0]}")

    def keys(self):
        return [f"class={c}" for c in self.classes]

    def __call__(self, ctx):
        return ctx.logits.gather(1, _per_image(self.classes, ctx)[:, None])[:, 0]


class Channel(Objective):
    """Mean over positions of channel c of ``layer``'s output ([N, C, ...])."""

    def __init__(self, layer: str, c):
        if not isinstance(layer, str):
            raise ConfigError("layer", f"must be a layer name (a string); got {layer!r}")
        self.layer, self.channels = layer, _index_list("channel", c)
        self.width = len(self.channels)

    def layers(self):
        return {self.layer}

    def check(self, shapes, layer_names):
        shape = _check_layer(self.layer, shapes, layer_names, 2, "a channel objective")
        bad = [c for c in self.channels if c >= shape[1]]
        if bad:
            raise ConfigError("channel", f"must be in [0, {shape[1]}) for layer {self.layer!r} "
                              f"(output {tuple(shape)}); got {bad[0]}")

    def keys(self):
        return [f"channel={self.layer}:{c}" for c in self.channels]

    def __call__(self, ctx):
        a = ctx.layer(self.layer)
        a = a.gather(1, _per_image(self.channels, ctx).view(-1, 1, *([1] * (a.ndim - 2))).expand(-1, 1, *a.shape[2:]))
        return a.flatten(1).mean(1)


class Neuron(Channel):
    """Channel c of ``layer`` at position (y, x) (default: the centre) of an [N, C, H, W] output."""

    def __init__(self, layer: str, c, y: int | None = None, x: int | None = None):
        super().__init__(layer, c)
        for f, v in (("y", y), ("x", x)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0):
                raise ConfigError(f, f"must be None (the centre) or an integer >= 0; got {v!r}")
        self.y, self.x = y, x

    def check(self, shapes, layer_names):
        shape = _check_layer(self.layer, shapes, layer_names, 4, "a neuron objective")
        super().check(shapes, layer_names)
        for f, v, n in (("y", self.y, shape[2]), ("x", self.x, shape[3])):
            if v is not None and v >= n:
                raise ConfigError(f, f"must be in [0, {n}) for layer {self.layer!r} (output {tuple(shape)}); got {v}")

    def keys(self):
        return [f"neuron={self.layer}:{c}@{self.y},{self.x}" for c in self.channels]

    def __call__(self, ctx):
        a = ctx.layer(self.layer)
        y = a.shape[2] // 2 if self.y is None else self.y
        x = a.shape[3] // 2 if self.x is None else self.x
        return a[:, :, y, x].gather(1, _per_image(self.channels, ctx)[:, None])[:, 0]


class Direction(Objective):
    """<a, v> of the channel vector a at each position with v ([D] or [K, D]), averaged over positions
    (Lucid ``direction``); ``cosine=True``: cosine similarity (lucent ``direction``)."""

    def __init__(self, layer: str, vector, cosine: bool = False):
        if not isinstance(layer, str):
            raise ConfigError("layer", f"must be a layer name (a string); got {layer!r}")
        v = torch.as_tensor(vector, dtype=torch.float32)
        if v.ndim not in (1, 2) or v.numel() == 0 or not bool(torch.isfinite(v).all()):
            raise ConfigError("direction", f"must be a finite vector [D] or one per objective [K, D]; got "
                              f"shape {tuple(v.shape)}")
        self.layer, self.cosine = layer, bool(cosine)
        self.vectors = v if v.ndim == 2 else v[None]
        self.width = self.vectors.shape[0]

    def layers(self):
        return {self.layer}

    def check(self, shapes, layer_names):
        shape = _check_layer(self.layer, shapes, layer_names, 2, "a direction objective")
        if self.vectors.shape[1] != shape[1]:
            raise ConfigError("direction", f"must have length {shape[1]} (the channels of {self.layer!r}, "
                              f"output {tuple(shape)}); got {self.vectors.shape[1]}")

    def keys(self):
        import hashlib
        return [f"direction={self.layer}:{'cos' if self.cosine else 'dot'}:"
                f"{hashlib.sha1(v.numpy().tobytes()).hexdigest()[:12]}" for v in self.vectors]

    def __call__(self, ctx):
        a = ctx.layer(self.layer)
        a = a.flatten(2) if a.ndim > 2 else a[:, :, None]                     # [N, C, P]
        v = self.vectors.to(a)[ctx.group if self.width > 1 else torch.zeros_like(ctx.group)]  # [N, C]
        if self.cosine:
            return torch.nn.functional.cosine_similarity(a, v[:, :, None], dim=1).mean(1)
        return (a * v[:, :, None]).sum(1).mean(1)


class Diversity(Objective):
    """Minus the mean cosine similarity of image i's Gram matrix at ``layer`` ([N, C, H, W]) with those
    of the other restarts of its objective (0 with one restart). It is already negated: add it with a
    positive weight, e.g. ``Class(c) + 0.1 * Diversity("conv2")``."""

    def __init__(self, layer: str):
        if not isinstance(layer, str):
            raise ConfigError("layer", f"must be a layer name (a string); got {layer!r}")
        self.layer = layer

    def layers(self):
        return {self.layer}

    def check(self, shapes, layer_names):
        _check_layer(self.layer, shapes, layer_names, 4, "a diversity term")

    def keys(self):
        return [f"diversity={self.layer}"]

    def __call__(self, ctx):
        a = ctx.layer(self.layer).flatten(2)                                   # [N, C, P]
        gram = torch.nn.functional.normalize(torch.bmm(a, a.transpose(1, 2)).flatten(1), dim=1)
        sim = gram @ gram.T                                                    # [N, N] cosines
        same = (ctx.group[:, None] == ctx.group[None, :]) & ~torch.eye(len(a), dtype=torch.bool, device=a.device)
        n_other = same.sum(1).clamp_min(1)
        return -(sim * same).sum(1) / n_other


def as_objective(objective) -> Objective:
    """A class index or a list of class indices -> Class; an Objective as it is; else ConfigError."""
    if isinstance(objective, Objective):
        return objective
    if isinstance(objective, (numbers.Integral, list, tuple, torch.Tensor)) and not isinstance(objective, bool):
        return Class(objective)
    raise ConfigError("objective", "must be a class index, a list of class indices or an objective of "
                      f"xaudit.explain.synthesis.objectives; got {type(objective).__name__}")
