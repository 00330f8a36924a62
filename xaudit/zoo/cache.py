"""A content-addressed cache of trained models: ``<root>/models/<spec_hash>/{model.safetensors, card.json}``.

- root: the ``cache_dir`` argument, else ``$XAUDIT_CACHE``, else ``~/.cache/xaudit``.
- Writes are atomic: each file is written to a temporary file in the same directory, fsynced and
  renamed over the target (``os.replace``); the weights go first and the card last, and the card holds
  the weights' sha256, so a card on disk always names complete weights.
- Loads are verified: the card must parse and name this spec hash and spec, the weights file's sha256
  must match the card, and the state dict must fit the architecture exactly. Anything else is
  reported (a warning) and the model is retrained; never a crash, never a wrong model.
- Concurrency: ``load_or_train`` holds an exclusive ``fcntl.flock`` on ``<root>/models/<hash>.lock``
  while it checks, trains and writes, so a second process training the same spec waits and then
  loads the first one's result.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from xaudit.core.errors import ConfigError
from xaudit.zoo.spec import Spec

WEIGHTS = "model.safetensors"
CARD = "card.json"


class CacheCorrupt(Exception):
    """Internal: a cache entry failed verification (reported as a warning, then retrained)."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("XAUDIT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "xaudit"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def state_dict_bytes(model: torch.nn.Module, metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of the model's state dict (tensors made contiguous: channels_last is a layout)."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return st_save(sd, metadata=metadata)


class ModelCache:
    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.root = cache_root(cache_dir)
        self.models = self.root / "models"

    def entry(self, spec_hash: str) -> Path:
        return self.models / spec_hash

    @contextlib.contextmanager
    def lock(self, spec_hash: str) -> Iterator[None]:
        """Exclusive inter-process lock for one spec hash (fcntl.flock; a no-op where unavailable)."""
        try:
            self.models.mkdir(parents=True, exist_ok=True)
            fh = open(self.models / f"{spec_hash}.lock", "a+")
        except OSError as e:
            raise ConfigError("cache_dir", f"cannot use {self.root} as the model cache ({e}); pass another "
                                           "directory (--cache, cache_dir=) or set XAUDIT_CACHE") from None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            with fh:
                yield
            return
        with fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- write
    def save(self, trained) -> Path:
        spec: Spec = trained.spec
        d = self.entry(spec.hash)
        # one metadata key: safetensors writes several in random (hash-map) order, and the bytes must be
        # identical for identical weights
        meta = json.dumps({"spec_hash": spec.hash, "arch": spec.arch["name"]}, sort_keys=True)
        data = state_dict_bytes(trained.model, {"xaudit": meta})
        card = dict(trained.card)
        card["weights_sha256"] = sha256_bytes(data)
        card["weights_file"] = WEIGHTS
        atomic_write(d / WEIGHTS, data)
        atomic_write(d / CARD, json.dumps(card, indent=2, sort_keys=True, default=str).encode("utf-8"))
        trained.card = card
        trained.path = d
        return d

    # -- read
    def read_card(self, spec_hash: str) -> dict[str, Any]:
        path = self.entry(spec_hash) / CARD
        try:
            card = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as e:
            raise CacheCorrupt(f"card {path} is unreadable ({e})") from None
        if not isinstance(card, dict):
            raise CacheCorrupt(f"card {path} is not a JSON object")
        return card

    def load(self, spec: Spec):
        """The cached Trained for ``spec``, or None if absent or corrupt (a warning says which)."""
        from xaudit.zoo.training import Trained, build_model

        d = self.entry(spec.hash)
        if not (d / CARD).exists() and not (d / WEIGHTS).exists():
            return None
        try:
            try:
                card = self.read_card(spec.hash)
            except FileNotFoundError:
                raise CacheCorrupt(f"weights without a card in {d} (an interrupted write)") from None
            if card.get("spec_hash") != spec.hash:
                raise CacheCorrupt(f"card names spec_hash {card.get('spec_hash')!r}, expected {spec.hash}")
            expect = json.loads(json.dumps(spec.to_dict(), default=str))
            got = dict(card.get("spec") or {})
            weight_keys = ("seed", "world", "bugs", "arch", "train")
            if any(got.get(k) != expect.get(k) for k in weight_keys):
                raise CacheCorrupt("card's spec differs from the requested spec")
            try:
                data = (d / WEIGHTS).read_bytes()
            except OSError as e:
                raise CacheCorrupt(f"weights unreadable ({e})") from None
            if sha256_bytes(data) != card.get("weights_sha256"):
                raise CacheCorrupt(f"weights file {d / WEIGHTS} ({len(data)} bytes) does not match the sha256 "
                                   "recorded in its card (truncated or modified)")
            try:
                sd = st_load(data)
            except Exception as e:  # safetensors raises its own error types
                raise CacheCorrupt(f"weights file does not parse as safetensors ({e})") from None
            model = build_model(spec, init=False)
            try:
                model.load_state_dict(sd, strict=True)
            except RuntimeError as e:
                raise CacheCorrupt(f"weights do not fit architecture {spec.arch['name']!r} ({e})") from None
        except CacheCorrupt as e:
            warnings.warn(f"xaudit model cache: entry {d} is corrupt: {e}; retraining", RuntimeWarning, stacklevel=3)
            return None
        model.eval()
        if card.get("eval_hash") != spec.eval_hash:
            card = self._remeasure(model, spec, card)
        card["name"] = spec.name
        card["spec"] = {**card.get("spec", {}), "name": spec.name, "description": spec.description}
        return Trained(model=model, card=card, spec=spec, path=d)

    def _remeasure(self, model, spec: Spec, old: dict[str, Any]) -> dict[str, Any]:
        """The card of cached weights measured under the spec's (different) eval settings; written back."""
        import time

        from xaudit.zoo.card import TRAIN_KEYS, make_card
        from xaudit.zoo.training import torch_settings

        t = time.perf_counter()
        with torch_settings():
            card = make_card(model, spec, train_stats={k: old[k] for k in TRAIN_KEYS if k in old})
        card["eval_seconds"] = round(time.perf_counter() - t, 3)
        card["weights_sha256"], card["weights_file"] = old["weights_sha256"], WEIGHTS
        atomic_write(self.entry(spec.hash) / CARD,
                     json.dumps(card, indent=2, sort_keys=True, default=str).encode("utf-8"))
        return card

    def list(self) -> list[dict[str, Any]]:
        """One row per cache entry: spec_hash, name, seed, arch, world, accuracies, bug_took, size, status."""
        rows = []
        if not self.models.is_dir():
            return rows
        for d in sorted(p for p in self.models.iterdir() if p.is_dir()):
            row: dict[str, Any] = {"spec_hash": d.name}
            try:
                card = self.read_card(d.name)
            except (FileNotFoundError, CacheCorrupt) as e:
                row["status"] = f"corrupt: {e}" if isinstance(e, CacheCorrupt) else "incomplete (no card)"
                rows.append(row)
                continue
            w = d / WEIGHTS
            row.update({
                "name": card.get("name"), "seed": card.get("seed"), "arch": card.get("arch"),
                "world": (card.get("world") or {}).get("world"),
                "clean_accuracy": card.get("clean_accuracy"), "train_accuracy": card.get("train_accuracy"),
                "bug_took": card.get("bug_took"), "train_seconds": card.get("train_seconds"),
                "size_mb": round(w.stat().st_size / 2**20, 2) if w.exists() else None,
                "status": "ok" if w.exists() else "incomplete (no weights)",
            })
            rows.append(row)
        return rows
