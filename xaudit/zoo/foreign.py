"""Loading weights that xaudit did not train: safetensors, or a ``.pt``/``.pth`` state dict through
``torch.load(weights_only=True)``. A pickled full model object is refused: unpickling it would run
arbitrary code from the file.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from xaudit.core.errors import ConfigError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "weights")


def _convert_hint(path: Path) -> str:
    return (f"convert it once with `python -c \"import xaudit.zoo as z; z.convert_to_safetensors('{path}')\"` "
            f"(or safetensors.torch.save_file(state_dict, '{path.with_suffix('.safetensors')}')) and pass the "
            ".safetensors file")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def load_state_dict_file(path: str | Path, *, warn: bool = True) -> dict[str, torch.Tensor]:
    """A state dict (name -> tensor) from a .safetensors file or a .pt/.pth/.bin/.ckpt state dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("weights", f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:
            raise ConfigError("weights", f"{path} is not a readable safetensors file ({e})") from None
    if suffix not in TORCH_SUFFIXES:
        raise ConfigError("weights", f"unsupported weights file {path.name!r}; allowed: .safetensors, "
                                     f"{', '.join(TORCH_SUFFIXES)} (a state dict)")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("weights", (
            f"{path} holds pickled Python objects, not just tensors (torch.load(weights_only=True) refused: "
            f"{first}). This is usually a whole model saved with torch.save(model). xaudit never unpickles "
            "such files: unpickling runs arbitrary code from the file. In an environment where you trust the "
            "file and have the model's code, re-save its weights: `m = torch.load(path, weights_only=False); "
            "safetensors.torch.save_file({k: v.contiguous() for k, v in m.state_dict().items()}, "
            "'model.safetensors')`, then pass model.safetensors")) from None
    except Exception as e:
        raise ConfigError("weights", f"{path} could not be read by torch.load ({type(e).__name__}: {e})") from None
    if not _is_state_dict(obj) and isinstance(obj, dict):
        for k in _WRAPPER_KEYS:
            if _is_state_dict(obj.get(k)):
                obj = obj[k]
                break
    if not _is_state_dict(obj):
        raise ConfigError("weights", f"{path} does not hold a state dict (a mapping of names to tensors); got "
                                     f"{type(obj).__name__}" + (f" with keys {sorted(obj)[:8]}" if isinstance(obj, dict) else ""))
    if warn:
        warnings.warn(f"loaded {path} with torch.load(weights_only=True); {_convert_hint(path)}", UserWarning,
                      stacklevel=2)
    return obj


def load_weights(model: torch.nn.Module, path: str | Path, *, strict: bool = True) -> torch.nn.Module:
    """Load a weights file into ``model`` in place (see :func:`load_state_dict_file`); returns the model."""
    sd = load_state_dict_file(path)
    try:
        model.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        raise ConfigError("weights", f"{path} does not fit {type(model).__name__}: {e}") from None
    return model


def convert_to_safetensors(src: str | Path, dst: str | Path | None = None) -> Path:
    """Convert a .pt/.pth state-dict file to safetensors (default: same name, .safetensors); returns dst."""
    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_suffix(".safetensors")
    sd = load_state_dict_file(src, warn=False)
    save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(dst))
    return dst
