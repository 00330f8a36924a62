"""The method registry, the :class:`Explainer` call contract, input checks and pass accounting.

Contract of every method (built in or registered by a user)::

    explainer = get("integrated_gradients", steps=50)
    raw = explainer(model, x, target, generator=None)   # float [N, C, H, W], same device as x

- ``model``: an ``nn.Module`` mapping images float [N, C, H, W] in [0, 1] to logits [N, K]. It is put in
  eval mode for the call (and restored after), and in-place ``nn.ReLU`` modules are made out-of-place
  for the call (Captum's hooks cannot handle in-place activations).
- ``x``: float [N, C, H, W] with values in [0, 1].
- ``target``: int64 [N] (or a Python int for the whole batch), each in [0, K).
- The raw map always has the input's shape [N, C, H, W]. Methods defined per pixel (grad_cam, the
  ``center`` baseline) spread their value evenly over the C channels, so the channel sum -- what the
  abs/signed/0-1 post-processing of :mod:`xaudit.core.maps` starts from -- is the per-pixel map.
- A map with NaN or inf, a target out of range, or an input of the wrong shape or range raises
  :class:`ExplanationFailed`, which names the offending parameter and the inputs concerned.
- Methods that cannot run on a model (Grad-CAM without a conv layer, LRP on BatchNorm or residual
  additions, guided backprop with functional ReLUs) raise :class:`xaudit.core.errors.NotApplicable`.

Pass accounting: every call counts the images that went through ``model.forward`` (a forward hook on
the model) and the images whose output received a gradient (a tensor hook on the output registered
by that forward hook). Counts are in *image-passes*; divided by the batch size N they are
*batch-equivalent passes*, which is what a method's metadata declares per image. After a call,
``explainer.last_passes`` holds a :class:`Passes`; :func:`count_passes` counts any block of code.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import itertools
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from xaudit.core.errors import ConfigError, NotApplicable, UnknownName, XauditError, check_int  # noqa: F401  (re-exported)
from xaudit.core.maps import abs_map, signed_map, zero_one_map
from xaudit.core.registry import Registry
from xaudit.core.rng import generator as make_generator

FAMILIES = ("gradient", "modified_backprop", "perturbation", "cam", "baseline", "synthesis")
# what a method returns: attribution maps of given inputs, or images synthesized from the model
METHOD_KINDS = ("attribution", "synthesis")

# Images per model call for methods that expand the batch (IG steps, noise samples, perturbations).
# Measured by bench/explain.py's sweep (bench/README.md), zoo CNN, 32x32, one thread: IG costs
# 0.55 ms per image-step in calls of 64 images, +9% at 128, +31% at 256, +86% at 3,200.
DEFAULT_INTERNAL_BATCH = 64
# Large images want smaller calls: on a ResNet-18 at 224 px (bench/audit_byom.py, 2 threads) IG explaining
# 16 images took 22-26 s in calls of 16 images, 27.6 s in calls of 32 and 34.3 s in calls of 64 (pass floor
# 19.7 s). So ``internal_batch`` is capped at this many input values per call: 64 images up to 3 x 112 x 112
# (every world xaudit generates), 16 at 3 x 224 x 224.
INTERNAL_BATCH_VALUES = 64 * 3 * 112 * 112


def call_budget(internal_batch: int, x: torch.Tensor) -> int:
    """``internal_batch`` capped at :data:`INTERNAL_BATCH_VALUES` input values per model call (>= 1 image)."""
    per_image = max(1, x[0].numel()) if x.shape[0] else 1
    return max(1, min(int(internal_batch), INTERNAL_BATCH_VALUES // per_image))

# Inputs must lie in [0, 1]; this slack absorbs float round-off of upstream transforms.
RANGE_TOLERANCE = 1e-5


class ExplanationFailed(XauditError, ValueError):
    """A method failed on some inputs.

    ``method``: the method name; ``field``: what was wrong (``"x"``, ``"target"`` or ``"map"``);
    ``indices``: positions in the batch concerned (None: the whole call); ``reason``: the message;
    ``maps``: for ``field == "map"``, the raw maps (so a caller can keep the finite ones).
    """

    def __init__(self, method: str, field: str, reason: str, indices: list[int] | None = None,
                 maps: torch.Tensor | None = None):
        self.method, self.field, self.reason = method, field, reason
        self.indices = None if indices is None else [int(i) for i in indices]
        self.maps = maps
        where = "" if self.indices is None else f" (inputs {_short_list(self.indices)})"
        super().__init__(f"{method}: {field}: {reason}{where}")


def _short_list(ix: list[int], k: int = 10) -> str:
    s = ", ".join(map(str, ix[:k]))
    return f"[{s}{', ...' if len(ix) > k else ''}] ({len(ix)} of them)" if len(ix) > k else f"[{s}]"


# ------------------------------------------------------------------------------------------ passes
@dataclass
class Passes:
    """Images pushed through the model during a call.

    forward_images:  images that went through ``model.forward``
    backward_images: images whose logits received a gradient (a backward pass through the model)
    n_images:        the batch size N of the call, so that ``forward`` / ``backward`` are per image
    """
    forward_images: int = 0
    backward_images: int = 0
    n_images: int = 0

    @property
    def forward(self) -> float:
        """Forward passes per explained image (= batch-equivalent forward passes)."""
        return self.forward_images / max(self.n_images, 1)

    @property
    def backward(self) -> float:
        """Backward passes per explained image."""
        return self.backward_images / max(self.n_images, 1)

    def as_dict(self) -> dict[str, float]:
        return {"forward": self.forward, "backward": self.backward,
                "forward_images": self.forward_images, "backward_images": self.backward_images,
                "n_images": self.n_images}


@contextlib.contextmanager
def count_passes(model: nn.Module, n_images: int = 0,
                 check_output: Callable[[torch.Tensor], None] | None = None) -> Iterator[Passes]:
    """Count forward and backward image-passes through ``model`` inside the block.

    ``check_output(logits)`` (optional) is called on the first forward's output; it may raise. The
    hook is removed when the block exits, whatever happens inside it.
    """
    passes = Passes(n_images=n_images)
    state = {"checked": check_output is None}

    def on_backward(grad: torch.Tensor) -> None:
        passes.backward_images += grad.shape[0]

    def on_forward(module, args, output):
        if args and isinstance(args[0], torch.Tensor) and args[0].ndim > 0:
            passes.forward_images += args[0].shape[0]
        if isinstance(output, torch.Tensor):
            if not state["checked"]:
                state["checked"] = True
                check_output(output)
            if output.requires_grad:
                output.register_hook(on_backward)

    handle = model.register_forward_hook(on_forward)
    try:
        yield passes
    finally:
        handle.remove()


# ------------------------------------------------------------------------------ model preparation
@contextlib.contextmanager
def prepared(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and out-of-place ReLUs for the duration of a call; the previous state is restored."""
    modes = [(m, m.training) for m in model.modules()]
    inplace = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU))
               and getattr(m, "inplace", False)]
    try:
        model.eval()
        for m in inplace:
            m.inplace = False
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for m in inplace:
            m.inplace = True


# ------------------------------------------------------------------------------------ input checks
def check_inputs(method: str, x: torch.Tensor, target) -> torch.Tensor:
    """Validate x and target; return target as int64 [N] on x's device."""
    if not isinstance(x, torch.Tensor):
        raise ExplanationFailed(method, "x", f"must be a torch.Tensor [N, C, H, W], got {type(x).__name__}")
    if x.ndim != 4 or x.shape[0] == 0:
        raise ExplanationFailed(method, "x", f"must have shape [N, C, H, W] with N >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ExplanationFailed(method, "x", f"must be a floating-point tensor, got dtype {x.dtype}")
    flat = x.detach().flatten(1)
    ok = (flat >= -RANGE_TOLERANCE).all(1) & (flat <= 1 + RANGE_TOLERANCE).all(1)  # NaN fails both
    if not bool(ok.all()):
        bad = (~ok).nonzero().flatten().tolist()
        raise ExplanationFailed(method, "x", "values must be finite and in [0, 1] (images, not normalized "
                                "tensors: normalization belongs to the model)", bad)
    n = x.shape[0]
    if isinstance(target, (list, tuple)):
        target = torch.as_tensor(target)
    if isinstance(target, bool) or not isinstance(target, (numbers.Integral, torch.Tensor)):
        raise ExplanationFailed(method, "target", f"must be an int or an int64 tensor [N], got {type(target).__name__}")
    if isinstance(target, numbers.Integral):
        target = torch.full((n,), int(target), dtype=torch.int64, device=x.device)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ExplanationFailed(method, "target", f"must be an integer tensor, got dtype {target.dtype}")
    if target.ndim == 0:
        target = target.expand(n)
    if target.shape != (n,):
        raise ExplanationFailed(method, "target", f"must have shape [N] = [{n}], got {tuple(target.shape)}")
    target = target.to(device=x.device, dtype=torch.int64)
    if bool((target < 0).any()):
        raise ExplanationFailed(method, "target", "class indices must be >= 0",
                                (target < 0).nonzero().flatten().tolist())
    return target


def _logit_checker(method: str, target: torch.Tensor) -> Callable[[torch.Tensor], None]:
    tmax = int(target.max())

    def check(out: torch.Tensor) -> None:
        if out.ndim != 2:
            raise ExplanationFailed(method, "model", f"must return logits [N, K], returned shape {tuple(out.shape)}")
        k = out.shape[1]
        if tmax >= k:
            bad = (target >= k).nonzero().flatten().tolist()
            raise ExplanationFailed(method, "target", f"class indices must be in [0, {k}) for this model "
                                    f"({k} logits)", bad)
    return check


def check_maps(method: str, maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Raise ExplanationFailed unless maps has x's shape and every value is finite."""
    if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != tuple(x.shape):
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ExplanationFailed(method, "map", f"must have the input's shape {tuple(x.shape)}, got {shape}")
    finite = torch.isfinite(maps.detach().flatten(1)).all(1)
    if not bool(finite.all()):
        raise ExplanationFailed(method, "map", "contains NaN or inf", (~finite).nonzero().flatten().tolist(),
                                maps=maps.detach())
    return maps


# ------------------------------------------------------------------------------ synthesis results
@dataclass
class Synthesis:
    """What a synthesis method returns: ``images`` float [N, C, H, W] in [0, 1]; ``values`` float [N], each
    image's final objective value (None where the method has no per-image objective); ``settings``, every
    setting the method used (steps, lr, transforms, the base seed drawn from the generator, ...), JSON-able,
    to be recorded with every result. A method may also return the bare images tensor (no values, no
    settings beyond its parameters)."""
    images: torch.Tensor
    values: torch.Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class MethodInfo:
    """Metadata a method declares. ``passes(params, shape) -> (forward, backward)`` per image."""
    name: str
    fn: Callable[..., torch.Tensor]
    family: str
    stochastic: bool
    params: Mapping[str, Any]
    passes: Callable[[Mapping[str, Any], tuple[int, int, int]], tuple[float, float]] | None
    description: str = ""
    validate: Callable[[dict[str, Any]], None] | None = None
    uses_model: bool = True
    registration: int = 0      # distinct for every register() call: a re-registered name is a new method
    kind: str = "attribution"  # "attribution": fn(model, x, target) -> maps; "synthesis": see register()
    num_gpus: float | None = None   # the GPU share a cell of this method needs on a cluster (None: any)


METHODS: Registry[MethodInfo] = Registry("method")
_REGISTRATIONS = itertools.count(1)


def _as_passes(passes) -> Callable | None:
    if passes is None or callable(passes):
        return passes
    if isinstance(passes, (int, float)):
        passes = (passes, passes)
    fwd, bwd = passes
    return lambda params, shape: (float(fwd), float(bwd))


def register(name: str | None = None, *, family: str = "gradient", stochastic: bool = False,
             params: Mapping[str, Any] | None = None, passes=None, validate=None,
             uses_model: bool = True, replace: bool = False, kind: str = "attribution",
             num_gpus: float | None = None):
    """Decorator that registers a method.

    - ``kind="attribution"`` (the default): ``fn(model, x, target, **params) -> Tensor[N, C, H, W]``,
      a map per input image, called as ``get(name)(model, x, target)``.
    - ``kind="synthesis"``: ``fn(model, objective, *, generator, init=None, **params) -> Synthesis``
      (or the bare images Tensor[N, C, H, W]), images in [0, 1] synthesized from the model alone, called
      as ``get(name).synthesize(model, objective, generator=g)``; ``objective`` is whatever the synthesis
      check passes (e.g. a callable of the model's activations to maximize); ``init`` an optional
      starting batch. Synthesis methods are always stochastic (they draw from ``generator``).

    - ``params``: parameter defaults; if omitted, the keyword defaults of ``fn``'s signature.
    - ``stochastic=True``: ``fn`` also receives ``generator=`` (a ``torch.Generator``, on the CPU
      unless the caller passes one on another device) and must draw every random number from it;
      a ``seed`` parameter (default 0) is added, from which the generator is made when the caller
      passes none.
    - ``passes``: model passes per image, as a number (forward = backward), a ``(forward, backward)``
      pair, or ``callable(params, (C, H, W)) -> (forward, backward)``; None when unknown.
    - ``validate(params)``: optional; raises ConfigError for bad parameter values.
    - ``num_gpus``: the share of a GPU a cell of this method needs when it runs on a Ray cluster with GPUs
      (fractional: 0.25 lets four such cells share one GPU; more than 1 for a method that needs several);
      None (the default) takes the executor's equal share. See :mod:`xaudit.run.ray_executor`.

    A user method registered this way is checked, counted and scored exactly like the built-ins::

        @xaudit.explain.register("my_grad", family="gradient", passes=(1, 1))
        def my_grad(model, x, target, scale=1.0):
            x = x.clone().requires_grad_(True)
            logits = model(x)
            return scale * torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)[0]
    """
    if family not in FAMILIES:
        raise ConfigError("family", f"must be one of {', '.join(FAMILIES)}; got {family!r}")
    if kind not in METHOD_KINDS:
        raise ConfigError("kind", f"must be one of {', '.join(METHOD_KINDS)}; got {kind!r}")
    stochastic = stochastic or kind == "synthesis"
    if num_gpus is not None and not (isinstance(num_gpus, (int, float)) and not isinstance(num_gpus, bool)
                                     and num_gpus > 0):
        raise ConfigError("num_gpus", f"must be a positive number of GPUs (0.25 for a quarter of one) or None; "
                                      f"got {num_gpus!r}")

    def deco(fn):
        key = name or fn.__name__
        defaults = dict(params) if params is not None else {
            p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.default is not inspect.Parameter.empty and p.name not in ("generator", "init")}
        if stochastic:
            defaults.setdefault("seed", 0)  # every stochastic method can be re-seeded by parameter
        doc = inspect.getdoc(fn) or ""
        info = MethodInfo(name=key, fn=fn, family=family, stochastic=bool(stochastic), params=defaults,
                          passes=_as_passes(passes), description=doc.split("\n\n")[0].replace("\n", " "),
                          validate=validate, uses_model=uses_model, registration=next(_REGISTRATIONS), kind=kind,
                          num_gpus=None if num_gpus is None else float(num_gpus))
        METHODS.add(key, info, replace=replace)
        return fn

    return deco


def unregister(name: str) -> None:
    """Remove a method (for tests and interactive sessions)."""
    METHODS.get(name)
    del METHODS._items[name]
    del METHODS._meta[name]


def names(family: str | None = None, kind: str | None = None) -> list[str]:
    """Registered method names, optionally of one family and/or one kind."""
    if family is not None and family not in FAMILIES:
        raise ConfigError("family", f"must be one of {', '.join(FAMILIES)}; got {family!r}")
    if kind is not None and kind not in METHOD_KINDS:
        raise ConfigError("kind", f"must be one of {', '.join(METHOD_KINDS)}; got {kind!r}")
    return [n for n in METHODS.names() if (family is None or METHODS.get(n).family == family)
            and (kind is None or METHODS.get(n).kind == kind)]


def info(name: str) -> MethodInfo:
    return METHODS.get(name)


def setting_label(v):
    """A setting as it is recorded: a tensor by its shape and a digest of its content
    (``tensor[3, 32, 17]:1a2b3c4d5e6f``), anything else as it is."""
    if isinstance(v, torch.Tensor):
        digest = hashlib.sha1(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:12]
        return f"tensor{list(v.shape)}:{digest}"
    return v


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        return f"tensor{list(v.shape)}"
    if isinstance(v, (list, tuple)):
        return [_jsonable(u) for u in v]
    return v


def describe(shape: tuple[int, int, int] = (3, 32, 32)) -> list[dict[str, Any]]:
    """One JSON-able row per method: name, kind, family, stochastic, params (defaults), passes per image
    (forward, backward) for an input of ``shape``, description."""
    rows = []
    for n in METHODS.names():
        m = METHODS.get(n)
        passes = None
        if m.passes is not None:
            f, b = m.passes(dict(m.params), shape)
            passes = {"forward": f, "backward": b}
        rows.append({"name": n, "kind": m.kind, "family": m.family, "stochastic": m.stochastic,
                     "params": {k: _jsonable(v) for k, v in m.params.items()},
                     "passes_per_image": passes, "num_gpus": m.num_gpus, "description": m.description})
    return rows


# --------------------------------------------------------------------------------- the explainer
class Explainer:
    """A registered method bound to parameter values. Call it as ``explainer(model, x, target)``."""

    def __init__(self, info: MethodInfo, params: Mapping[str, Any]):
        self.info = info
        self.params = dict(params)
        self.last_passes: Passes | None = None
        self.last_synthesis: Synthesis | None = None   # after synthesize(): images, values, settings

    name = property(lambda self: self.info.name)
    family = property(lambda self: self.info.family)
    stochastic = property(lambda self: self.info.stochastic)

    def expected_passes(self, shape: tuple[int, int, int]) -> tuple[float, float] | None:
        """Declared (forward, backward) passes per image for inputs of shape (C, H, W)."""
        return None if self.info.passes is None else self.info.passes(self.params, tuple(shape))

    def config(self) -> dict[str, Any]:
        """The method and its parameters, JSON-able (tensors are named by shape and content hash),
        for cell keys and result rows."""
        return {"method": self.name, **{k: setting_label(v) for k, v in self.params.items()}}

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={_jsonable(v)!r}" for k, v in self.params.items())
        return f"Explainer({self.name}{', ' if ps else ''}{ps})"

    kind = property(lambda self: self.info.kind)

    def synthesize(self, model: nn.Module, objective, *, generator: torch.Generator | None = None,
                   init: torch.Tensor | None = None) -> torch.Tensor:
        """A synthesis method's images ``[N, C, H, W]`` in [0, 1] for ``objective`` on ``model``; every
        random draw from ``generator`` (default: one seeded with the ``seed`` parameter).

        After the call ``last_synthesis`` holds the :class:`Synthesis`: the same images, the per-image
        objective values and the settings used, which start with this explainer's :meth:`config`
        (``seed`` is "generator" when the caller passed one)."""
        if self.kind != "synthesis":
            raise ConfigError(self.name, f"is an {self.kind} method: call it as method(model, x, target)")
        kwargs = dict(self.params)
        seed = kwargs.pop("seed", 0)
        given = generator is not None
        generator = generator if given else make_generator(int(seed))
        was = model.training
        model.eval()
        self.last_synthesis = None
        try:
            with torch.enable_grad():
                out = self.info.fn(model, objective, generator=generator, init=init, **kwargs)
        finally:
            model.train(was)
        res = out if isinstance(out, Synthesis) else Synthesis(out)
        images = res.images
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ExplanationFailed(self.name, "images", f"must be a tensor [N, C, H, W], got {shape}")
        images = images.detach()
        if not bool(torch.isfinite(images).all()) or images.min() < 0 or images.max() > 1:
            raise ExplanationFailed(self.name, "images", "must be finite and in [0, 1]")
        values = res.values
        if values is not None and (not isinstance(values, torch.Tensor) or values.shape != (images.shape[0],)):
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ExplanationFailed(self.name, "values", f"must be a tensor [N] = [{images.shape[0]}], got {shape}")
        config = self.config()
        if given:
            config["seed"] = "generator"
        self.last_synthesis = Synthesis(images, None if values is None else values.detach(),
                                        {**config, **res.settings})
        return images

    def __call__(self, model: nn.Module, x: torch.Tensor, target, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        if self.kind != "attribution":
            raise ConfigError(self.name, f"is a {self.kind} method: call its synthesize(model, objective, "
                                         "generator=...) verb")
        target = check_inputs(self.name, x, target)
        kwargs = dict(self.params)
        if "internal_batch" in kwargs:
            kwargs["internal_batch"] = call_budget(kwargs["internal_batch"], x)
        if self.stochastic:
            seed = kwargs.pop("seed", 0)
            kwargs["generator"] = generator if generator is not None else make_generator(int(seed))
        else:
            kwargs.pop("seed", None)
        if not self.info.uses_model:
            declared = getattr(model, "num_classes", None) if model is not None else None
            if isinstance(declared, int):
                _logit_checker(self.name, target)(torch.empty(0, declared))
            maps = self.info.fn(model, x, target, **kwargs)
            self.last_passes = Passes(n_images=x.shape[0])
            return check_maps(self.name, maps, x)
        with prepared(model), torch.enable_grad(), warnings.catch_warnings(), \
                count_passes(model, x.shape[0], _logit_checker(self.name, target)) as passes:
            # Captum warns on every call about facts of its design (inputs set to require grad, hooks
            # set on activations, one surrogate per example); they are not news to the caller.
            warnings.filterwarnings("ignore", module=r"captum\.")
            try:
                maps = self.info.fn(model, x.detach(), target, **kwargs)
            except XauditError:
                raise
            except RuntimeError as e:  # e.g. a model that does not accept this input
                raise ExplanationFailed(self.name, "model", f"{type(e).__name__}: {e}") from e
        self.last_passes = passes
        return check_maps(self.name, maps.detach(), x)


def get(name: str, **params) -> Explainer:
    """The method ``name`` bound to ``params`` (merged over its defaults). Unknown names and
    parameters raise errors listing the valid ones."""
    m = METHODS.get(name)
    unknown = sorted(set(params) - set(m.params))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", f"unknown parameter; {name} takes: "
                          f"{', '.join(m.params) if m.params else 'no parameters'}")
    merged = {**m.params, **params}
    if m.validate is not None:
        m.validate(merged)
    return Explainer(m, merged)


def explain(model: nn.Module, x: torch.Tensor, target, method: str = "saliency", *,
            generator: torch.Generator | None = None, post: str | None = None, **params) -> torch.Tensor:
    """Explain a batch in one call: raw maps [N, C, H, W], or with ``post`` in ("abs", "signed",
    "zero_one") the post-processed maps [N, 1, H, W] of docs/protocols.md#17-map-normalizations."""
    raw = get(method, **params)(model, x, target, generator=generator)
    if post is None:
        return raw
    fns = {"abs": abs_map, "signed": signed_map, "zero_one": zero_one_map}
    if post not in fns:
        raise ConfigError("post", f"must be one of None, 'abs', 'signed', 'zero_one'; got {post!r}")
    return fns[post](raw)


# ------------------------------------------------------------------------- helpers for methods
def rows_per_chunk(n: int, expansion: int, internal_batch: int) -> int:
    """Images per chunk so that a chunk expanded ``expansion`` times holds <= internal_batch images
    (at least one image)."""
    return max(1, min(n, internal_batch // max(expansion, 1)))


def chunked(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, target: torch.Tensor,
            rows: int) -> torch.Tensor:
    """Apply ``fn(x_chunk, target_chunk)`` to consecutive chunks of ``rows`` images; concatenate."""
    if rows >= x.shape[0]:
        return fn(x, target)
    return torch.cat([fn(x[i:i + rows], target[i:i + rows]) for i in range(0, x.shape[0], rows)])


def spread_over_channels(per_pixel: torch.Tensor, channels: int) -> torch.Tensor:
    """[N, 1, H, W] -> [N, C, H, W] with value / C in each channel (the channel sum is unchanged)."""
    return (per_pixel / channels).expand(-1, channels, -1, -1).contiguous()


def check_internal_batch(params: dict[str, Any]) -> None:
    if "internal_batch" in params:
        check_int("internal_batch", params["internal_batch"], 1, 1 << 20)




__all__ = ["DEFAULT_INTERNAL_BATCH", "FAMILIES", "METHOD_KINDS", "METHODS", "ExplanationFailed", "Explainer", "MethodInfo",
           "NotApplicable", "Passes", "Synthesis", "UnknownName", "check_inputs", "check_maps", "count_passes", "describe",
           "explain", "get", "info", "names", "prepared", "register", "unregister"]
