"""A user's own model (``xaudit audit``): built from a factory, loaded with weights safely, never downloaded.

A *user model spec* is a JSON-able mapping (it is hashed into the cells' keys)::

    {"kind": "user",
     "model": "mymodels:make_net",        # MODULE:FACTORY (FACTORY() returns an nn.Module), a file
                                          # path "nets/cnn.py:make_net", "torchvision:resnet18" or "timm:resnet18"
     "weights": "/abs/w.safetensors",     # or null (the factory's own initialization)
     "weights_digest": "...",             # blake2b of the weights file: the cells change with the weights
     "normalize": {"mean": [...], "std": [...]},   # or null: the model gets images in [0, 1]
     "blocks": ["fc", "layer4", ...],     # cascading order, output first (names in the user's module)
     "cam_layer": "layer4.1",             # the layer Grad-CAM hooks
     "sys_path": ["/where/the/module/is"], "seed": 0, "input": [3, 224, 224]}

:func:`build` returns :class:`Audited`: the user's module as ``.model`` behind a fixed input normalization
(``.normalize``, xaudit's convention: images in [0, 1], normalization is the model's first module), with
``blocks`` and ``last_conv`` declared in Audited's names (``model.layer4``) for the checks.

Safety:

- weights load only from safetensors or through ``torch.load(weights_only=True)``
  (:mod:`xaudit.zoo.foreign`): a pickle that needs arbitrary objects is refused with the conversion recipe;
- the factory runs with the network closed (:func:`no_network`): a factory that tries to download
  weights gets a ConfigError saying to pass ``--weights``.

Inference (the driver resolves both before any work; the spec then names them, so workers do not infer):

- :func:`infer_blocks`: the module's top-level children that hold parameters, output first (reversed
  registration order); a single parameterized child (a wrapper) is descended into;
- :func:`infer_cam_layer`: the output of the last ``nn.Conv2d`` once rectified: the first module to
  finish after that convolution that is a ReLU module or a block (a module with children), called once in
  the forward pass, whose output has the convolution's spatial size and no negative value on the user's
  images: timm's ResNet ``layer4.1.act2``, or torchvision's ``layer4.1`` (its block reuses one ReLU module,
  so the block's output is hooked); the convolution itself where none follows it.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.util
import socket
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from xaudit.core.errors import ConfigError, XauditError

KNOWN_NORMALIZATIONS = {
    "imagenet": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "none": None,
}
PACKAGES = {"torchvision": "xaudit[torchvision]", "timm": "xaudit[timm]"}
RECTIFIERS = (nn.ReLU, nn.ReLU6)


class ModelError(XauditError):
    """The user's model failed on the user's data (its own error, with the image's path)."""


# ----------------------------------------------------------------------------------------- the module
class Normalize(nn.Module):
    """(x - mean) / std per channel; fixed buffers, no parameters (relevance passes through it)."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        mean = [0.0] if mean is None else list(mean)
        std = [1.0] if std is None else list(std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Audited(nn.Module):
    """The user's module behind a fixed normalization; ``blocks`` and ``last_conv`` name its layers."""

    def __init__(self, model: nn.Module, normalize: dict[str, Any] | None, blocks: Sequence[str] = (),
                 cam_layer: str | None = None):
        super().__init__()
        self.normalize = Normalize(*(None, None) if normalize is None else (normalize["mean"], normalize["std"]))
        self.model = model
        self.blocks = [f"model.{b}" for b in blocks]
        if cam_layer is not None:
            self.last_conv = f"model.{cam_layer}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


# --------------------------------------------------------------------------------------------- specs
def make_spec(model: str, *, weights: str | Path | None = None, normalize: Any = None,
              blocks: Sequence[str] | str | None = None, cam_layer: str | None = None, seed: int = 0) -> dict[str, Any]:
    """A user model spec from command-line values (paths made absolute, the weights file digested)."""
    if not isinstance(model, str) or ":" not in model:
        raise ConfigError("--model", f"must be MODULE:FACTORY (e.g. mymodels:make_net, nets/cnn.py:make_net, "
                                     f"torchvision:resnet18 or timm:resnet18), got {model!r}")
    mod, _, attr = model.rpartition(":")
    sys_path = [str(Path.cwd())]
    if mod.endswith(".py"):
        p = Path(mod).expanduser().resolve()
        if not p.is_file():
            raise ConfigError("--model", f"no such file: {p}")
        model = f"{p}:{attr}"
    spec: dict[str, Any] = {"kind": "user", "model": model, "weights": None, "weights_digest": None,
                            "normalize": parse_normalize(normalize), "blocks": None, "cam_layer": cam_layer,
                            "sys_path": sys_path, "seed": int(seed)}
    if weights is not None:
        w = Path(weights).expanduser().resolve()
        if not w.is_file():
            raise ConfigError("--weights", f"no such file: {w}")
        spec["weights"] = str(w)
        spec["weights_digest"] = _file_digest(w)
    if blocks is not None:
        spec["blocks"] = [b.strip() for b in blocks.split(",") if b.strip()] if isinstance(blocks, str) else list(blocks)
        if not spec["blocks"]:
            raise ConfigError("--blocks", "names no block; give module names, output first, e.g. fc,layer4,layer3")
    return spec


def parse_normalize(value: Any) -> dict[str, list[float]] | None:
    """``imagenet``, ``none``, ``MEAN,MEAN,MEAN/STD,STD,STD``, a {mean, std} mapping or None."""
    if value is None:
        return None
    if isinstance(value, dict):
        out = {"mean": [float(v) for v in value["mean"]], "std": [float(v) for v in value["std"]]}
    elif isinstance(value, str) and value.lower() in KNOWN_NORMALIZATIONS:
        out = copy.deepcopy(KNOWN_NORMALIZATIONS[value.lower()])
        if out is None:
            return None
    elif isinstance(value, str) and "/" in value:
        try:
            mean, std = ([float(v) for v in part.split(",")] for part in value.split("/"))
        except ValueError:
            raise ConfigError("--normalize", f"must be MEAN,.../STD,... with numbers, got {value!r}") from None
        out = {"mean": mean, "std": std}
    else:
        raise ConfigError("--normalize", f"must be one of {', '.join(KNOWN_NORMALIZATIONS)} or MEAN,MEAN,MEAN/STD,STD,STD "
                                         f"(e.g. 0.5,0.5,0.5/0.25,0.25,0.25); got {value!r}")
    if len(out["mean"]) != len(out["std"]) or not out["std"] or any(s <= 0 for s in out["std"]):
        raise ConfigError("--normalize", f"needs as many positive stds as means, got {out}")
    return out


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- network
class _Blocked(OSError):
    pass


@contextlib.contextmanager
def no_network() -> Iterator[list[str]]:
    """Refuse every socket connection and name lookup inside the block; yields the list of what was
    attempted (a factory that downloads weights is caught by it, whatever library it uses)."""
    attempts: list[str] = []

    def refuse(what):
        def f(*args, **kwargs):
            target = args[1] if what == "connect" and len(args) > 1 else (args[0] if args else "")
            attempts.append(f"{what} {target}")
            raise _Blocked(f"xaudit blocks network access while building a user's model ({what} {target})")
        return f

    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo)
    socket.socket.connect, socket.socket.connect_ex = refuse("connect"), refuse("connect")
    socket.create_connection, socket.getaddrinfo = refuse("connect"), refuse("getaddrinfo")
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo = saved


# ------------------------------------------------------------------------------------------ building
def factory(spec: dict[str, Any]):
    """The callable that builds the user's nn.Module (no arguments)."""
    target = spec["model"]
    mod, _, attr = target.rpartition(":")
    if mod == "memory":
        if target not in _MEMORY:
            raise ConfigError("--model", f"{target} was a model object handed to xaudit.audit in another process; "
                                         "audit it again from Python, or pass it as MODULE:FACTORY")
        held = _MEMORY[target]
        return lambda: copy.deepcopy(held)
    if mod in PACKAGES:
        try:
            lib = importlib.import_module(mod)
            if mod == "timm":
                lib.create_model  # noqa: B018  (fail here when the package is broken)
        except Exception as e:
            raise ConfigError("--model", f"{target} needs the {mod} package, which does not import here "
                                         f"({type(e).__name__}: {e}); install it with pip install '{PACKAGES[mod]}' "
                                         f"(its wheel must match your torch {torch.__version__}), or pass your own "
                                         "MODULE:FACTORY") from None
        if mod == "timm":
            return lambda: lib.create_model(attr, pretrained=False)
        fn = getattr(lib.models, attr, None)
        if fn is None:
            raise ConfigError("--model", f"torchvision.models has no {attr!r}")
        return lambda: fn(weights=None)
    for p in spec.get("sys_path") or ():
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        if mod.endswith(".py"):
            name = "xaudit_user_" + hashlib.blake2b(mod.encode(), digest_size=6).hexdigest()
            if name in sys.modules:
                module = sys.modules[name]
            else:
                s = importlib.util.spec_from_file_location(name, mod)
                module = importlib.util.module_from_spec(s)
                sys.modules[name] = module
                s.loader.exec_module(module)
        else:
            module = importlib.import_module(mod)
    except ImportError as e:
        raise ConfigError("--model", f"cannot import {mod!r} ({e}); run from the folder that holds it, or give a file "
                                     "path: --model path/to/file.py:FACTORY") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        have = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))[:12]
        raise ConfigError("--model", f"{mod} has no callable {attr!r}; it has: {', '.join(have) or 'nothing callable'}")
    return fn


def build_module(spec: dict[str, Any]) -> nn.Module:
    """The user's module from its factory, with its weights loaded (network closed throughout)."""
    from xaudit.zoo.foreign import load_state_dict_file

    fn = factory(spec)
    with no_network() as attempts:
        try:
            module = fn()
        except Exception as e:
            if attempts:
                raise ConfigError("--model", f"{spec['model']} tried to reach the network ({attempts[0]}), probably to "
                                             "download weights; xaudit never downloads. Build the model without "
                                             "pretrained weights and pass the weights file with --weights "
                                             "(safetensors, or a .pt state dict)") from None
            raise ConfigError("--model", f"{spec['model']}() raised {type(e).__name__}: {e}") from e
    if not isinstance(module, nn.Module):
        raise ConfigError("--model", f"{spec['model']}() must return a torch.nn.Module, got {type(module).__name__}")
    if spec.get("weights"):
        w = Path(spec["weights"])
        if spec.get("weights_digest") and w.is_file() and _file_digest(w) != spec["weights_digest"]:
            raise ConfigError("--weights", f"{w} changed since this run was planned; start a new run (--out)")
        sd = load_state_dict_file(w, warn=False)
        if sd and all(k.startswith("module.") for k in sd):      # saved from DataParallel
            sd = {k[len("module."):]: v for k, v in sd.items()}
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            own = set(module.state_dict())
            missing = sorted(own - set(sd))[:5]
            unexpected = sorted(set(sd) - own)[:5]
            first = str(e).strip().splitlines()[0]
            raise ConfigError("--weights", f"{w} does not fit {type(module).__name__} ({first}); missing keys "
                                           f"{missing or 'none'}, unexpected keys {unexpected or 'none'}, first of each "
                                           "shown; shape mismatches are listed above") from None
    return module.eval()


def build(spec: dict[str, Any]) -> Audited:
    """:class:`Audited` around the user's module, with the spec's blocks and Grad-CAM layer."""
    module = build_module(spec)
    blocks = spec.get("blocks")
    if blocks is None:
        blocks = infer_blocks(module)
    check_blocks(module, blocks)
    cam = spec.get("cam_layer")
    if cam is not None:
        check_layer(module, cam)
    return Audited(module, spec.get("normalize"), blocks, cam).eval()


# ----------------------------------------------------------------------------------------- inference
def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def infer_blocks(module: nn.Module) -> list[str]:
    """The cascading order (output first): the top-level children that hold parameters, reversed; a
    single such child (a wrapper) is descended into."""
    prefix, m = "", module
    while True:
        kids = [(n, c) for n, c in m.named_children() if _has_params(c)]
        if len(kids) == 1 and list(kids[0][1].children()):
            prefix, m = prefix + kids[0][0] + ".", kids[0][1]
            continue
        break
    names = [prefix + n for n, _ in kids]
    if not names:
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if own:
            raise ConfigError("--blocks", f"{type(module).__name__} holds its parameters directly ({', '.join(own[:4])}) "
                                          "rather than in submodules; cascading randomization needs named blocks")
        raise ConfigError("--model", f"{type(module).__name__} has no parameters")
    return names[::-1]


def check_blocks(module: nn.Module, blocks: Sequence[str]) -> None:
    for b in blocks:
        check_layer(module, b, what="--blocks")
        if not _has_params(module.get_submodule(b)):
            raise ConfigError("--blocks", f"{b!r} holds no parameters: re-initializing it changes nothing")


def check_layer(module: nn.Module, name: str, what: str = "--cam-layer") -> None:
    try:
        module.get_submodule(name)
    except AttributeError:
        tops = [n for n, _ in module.named_children()]
        raise ConfigError(what, f"{type(module).__name__} has no module {name!r}; its top-level modules: "
                                f"{', '.join(tops)} (nested names use dots, e.g. layer4.1)") from None


@torch.no_grad()
def infer_cam_layer(module: nn.Module, x: torch.Tensor) -> str | None:
    """The Grad-CAM layer (see the module docstring) from one forward pass of ``module`` on ``x`` (the
    user's images, normalized as the model sees them); None for a model without nn.Conv2d."""
    names = {m: n for n, m in module.named_modules() if n}
    done: list[tuple[str, Any]] = []
    calls: dict[str, int] = {}

    def hook(m, args, out):
        n = names[m]
        calls[n] = calls.get(n, 0) + 1
        done.append((n, out if isinstance(out, torch.Tensor) else None))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        module(x)
    finally:
        for h in handles:
            h.remove()
    convs = [i for i, (n, _) in enumerate(done) if isinstance(module.get_submodule(n), nn.Conv2d)]
    if not convs:
        return None
    i = convs[-1]
    conv_name, conv_out = done[i]
    for n, out in done[i + 1:]:
        m = module.get_submodule(n)
        if list(m.children()) or isinstance(m, RECTIFIERS):     # a block, or a ReLU (not a norm layer that
            if (out is not None and out.ndim == 4 and out.shape[-2:] == conv_out.shape[-2:] and calls[n] == 1
                    and bool((out >= 0).all())):               # happens to be >= 0, e.g. zero-initialized)
                return n
    return conv_name


@torch.no_grad()
def check_outputs(model: nn.Module, x: torch.Tensor, paths: Sequence[str], batch: int = 16) -> torch.Tensor:
    """The model's logits [N, K] on ``x``; a ModelError naming the image when the model raises on it, a
    ConfigError naming the shape when the output is not [N, classes] logits."""
    outs = []
    for s in range(0, len(x), batch):
        xb = x[s:s + batch]
        try:
            out = model(xb)
        except Exception:
            for j in range(len(xb)):       # find the image it fails on
                try:
                    model(xb[j:j + 1])
                except Exception as e:
                    raise ModelError(f"the model raised on image {paths[s + j]}: {type(e).__name__}: {e}") from e
            raise
        if not isinstance(out, torch.Tensor):
            raise ConfigError("--model", f"the model must return logits, a tensor [N, classes]; it returned a "
                                         f"{type(out).__name__}" + (f" with keys {list(out)[:5]}" if isinstance(out, dict) else ""))
        if out.ndim != 2 or out.shape[0] != len(xb) or out.shape[1] < 2:
            raise ConfigError("--model", f"the model must return logits [N, classes] with classes >= 2; on a batch of "
                                         f"{len(xb)} images of shape {list(xb.shape[1:])} it returned shape "
                                         f"{list(out.shape)}")
        if not torch.isfinite(out).all():
            bad = int((~torch.isfinite(out).all(1)).nonzero()[0, 0])
            raise ModelError(f"the model returned non-finite logits on image {paths[s + bad]}")
        outs.append(out.float().cpu())
    return torch.cat(outs)


def timm_data_config(spec: dict[str, Any], module: nn.Module) -> dict[str, Any] | None:
    """For a timm model: its default input config (size, crop_pct, interpolation, mean, std)."""
    if not spec["model"].startswith("timm:"):
        return None
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=module)
    return {"size": int(cfg["input_size"][-1]), "crop_pct": float(cfg.get("crop_pct", 0.875)),
            "interpolation": str(cfg.get("interpolation", "bilinear")),
            "normalize": {"mean": [float(v) for v in cfg["mean"]], "std": [float(v) for v in cfg["std"]]}}


# ------------------------------------------------------------------------------- in-memory models
_MEMORY: dict[str, nn.Module] = {}


def memory_spec(module: nn.Module, *, normalize: Any = None, blocks: Sequence[str] | str | None = None,
                cam_layer: str | None = None, seed: int = 0) -> dict[str, Any]:
    """A spec for a model object handed to :func:`xaudit.audit` (run in this process, which keeps a reference
    to the object): named by its class and the digest of its weights, so a rerun with the same weights
    resumes. The runs build deep copies of it; the object itself is never changed."""
    from xaudit.core.model import fingerprint

    if not isinstance(module, nn.Module):
        raise ConfigError("model", f"must be a torch.nn.Module or 'MODULE:FACTORY', got {type(module).__name__}")
    cls = type(module)
    spec = make_spec(f"memory:{cls.__module__}.{cls.__qualname__}.{fingerprint(module)[:16]}", normalize=normalize,
                     blocks=blocks, cam_layer=cam_layer, seed=seed)
    spec["sys_path"] = []
    _MEMORY[spec["model"]] = module      # kept for this process: a rerun with the same weights resumes
    return spec
