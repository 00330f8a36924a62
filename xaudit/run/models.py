"""Where the runner gets trained models: a *model source* resolves a model group on a world to a
concrete, hashable spec at plan time, and loads (training if needed) that model in a worker.

The default source is the zoo. On world W, model group G means the zoo spec G (or the preset's
``specs: {G: ...}`` entry) trained on W: when the spec's own world is not W, the runner derives
``{base: G, world: W}`` so one recipe (``clean``, ``random-labels``) serves every world. A ``specs``
entry given as a mapping without its own ``world`` (e.g. ``{base: random-labels, train: {epochs: 60}}``)
is retargeted the same way; one that names a spec file or shipped spec, or a mapping with a
``world``, must already train on W (else a ConfigError).

Sources are named by import path (``module:attr``) so spawned workers can rebuild them.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from xaudit.core.errors import ConfigError, UnknownName

DEFAULT_SOURCE = "xaudit.run.models:ZooSource"


@dataclass(frozen=True)
class ResolvedModel:
    """One concrete model of a plan."""
    key: str           # unique in a plan; hashed into the keys of the cells that use it
    label: str         # for people: "clean on digits, seed 0"
    spec: Any          # what the source's load() takes: a spec name, a YAML path or a JSON-able dict
    seed: int


class ModelSource(Protocol):
    def resolve(self, spec_ref: Any, seed: int, world: dict[str, Any], *, explicit: bool,
                group: str) -> ResolvedModel: ...

    def load(self, model: ResolvedModel, cache_dir: str | None) -> tuple[Any, dict[str, Any]]:
        """(torch module in eval mode, card dict); trains and caches the model when needed."""
        ...


def load_source(path: str) -> ModelSource:
    mod, _, attr = path.partition(":")
    if not attr:
        raise ConfigError("model_source", f"must be 'module:attr', got {path!r}")
    obj = getattr(importlib.import_module(mod), attr)
    return obj() if isinstance(obj, type) else obj


def _world_label(world: dict[str, Any]) -> str:
    return str(world.get("world", world.get("name", "?")))


class ZooSource:
    """Models from :mod:`xaudit.zoo` (content-addressed cache; trains on a miss)."""

    def resolve(self, spec_ref: Any, seed: int, world: dict[str, Any], *, explicit: bool,
                group: str) -> ResolvedModel:
        from xaudit.zoo.spec import Spec, load_spec, raw_spec

        try:
            spec = load_spec(spec_ref, seed=seed)
        except UnknownName as e:
            raise ConfigError(f"models.{group}", f"{e}. Name a shipped spec, give a spec path in the "
                                                 "world's `specs:` map, or register the spec with the zoo") from None
        payload = spec_ref
        if spec.world_config != world:
            if explicit and not (isinstance(spec_ref, dict) and "world" not in spec_ref):
                raise ConfigError(f"specs.{group}", f"spec {_short(spec_ref)} trains on world {spec.world_config} "
                                                    f"but this preset world is {world}")
            raw = raw_spec(spec_ref)
            raw["world"] = {"name": world["world"], **{k: v for k, v in world.items() if k != "world"}}
            raw["name"] = f"{raw.get('name', group)}@{world['world']}"
            desc = str(raw.get("description") or "").strip()
            raw["description"] = (f"{desc} " if desc else "") + "[the base spec, retargeted to world " \
                                 f"{world['world']} by the runner]"
            spec = Spec.from_raw(raw).with_seed(seed)
            if spec.world_config != world:
                raise ConfigError(f"models.{group}", f"could not retarget spec {_short(spec_ref)} to world {world}: "
                                                     f"it resolves to {spec.world_config}")
            payload = spec.to_dict()
        return ResolvedModel(key=spec.hash, label=f"{group} on {_world_label(world)}, seed {seed}",
                             spec=payload, seed=seed)

    def training_threads(self) -> int:
        """The zoo trains with a fixed thread count ($XAUDIT_THREADS, default 2) so weights are
        bit-identical wherever they are trained; the scheduler budgets for it."""
        from xaudit.zoo.training import default_threads

        return default_threads()

    def export(self, model: ResolvedModel, cache_dir: str | None) -> dict[str, bytes]:
        """The model's cache entry as files (path relative to the cache root -> bytes): what a worker
        without this cache needs so it loads the model instead of training it again (Ray's object-store
        model sharing)."""
        from xaudit.zoo.cache import cache_root

        root = cache_root(cache_dir)
        d = root / "models" / model.key
        return {f.relative_to(root).as_posix(): f.read_bytes() for f in sorted(d.iterdir()) if f.is_file()} \
            if d.is_dir() else {}

    def install(self, files: dict[str, bytes], cache_dir: str | None) -> None:
        """Write an :meth:`export` into this worker's cache (files it already has are kept)."""
        from xaudit.zoo.cache import atomic_write, cache_root

        root = cache_root(cache_dir)
        for rel, data in files.items():
            path = root / rel
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, data)

    def load(self, model: ResolvedModel, cache_dir: str | None) -> tuple[Any, dict[str, Any]]:
        from xaudit.zoo import load_or_train

        trained = load_or_train(model.spec, seed=model.seed, cache_dir=cache_dir)
        card = trained.card
        card = card.to_dict() if hasattr(card, "to_dict") else dict(card)
        return trained.model.eval(), card


def _short(spec_ref: Any) -> str:
    if isinstance(spec_ref, dict):
        return json.dumps(spec_ref, sort_keys=True)[:80]
    return repr(spec_ref)


class UserSource:
    """A user's own model (``xaudit audit``; :mod:`xaudit.zoo.user`): a spec mapping ``{kind: user, model:
    MODULE:FACTORY, weights, normalize, blocks, cam_layer, ...}``, loaded (never trained) in each worker.
    A user's model has one set of weights: a ModelRef at another seed than the spec's (a retrain reference)
    is refused, so a check cannot compare the model with itself and call it retrained."""

    def resolve(self, spec_ref: Any, seed: int, world: dict[str, Any], *, explicit: bool,
                group: str) -> ResolvedModel:
        from xaudit.core.canon import digest

        if not (isinstance(spec_ref, dict) and spec_ref.get("kind") == "user"):
            raise ConfigError(f"models.{group}", f"the user-model source takes a user model spec ({{kind: user, model: "
                                                 f"MODULE:FACTORY, ...}}), got {_short(spec_ref)}")
        if int(seed) != int(spec_ref.get("seed", 0)):
            raise ConfigError(f"models.{group}", f"a user's model has one set of weights; a check asked for it at seed "
                                                 f"{seed} (a retrained copy): set retrain_reference: false")
        label = spec_ref["model"].rpartition(":")[2] if "/" in spec_ref["model"] else spec_ref["model"]
        return ResolvedModel(key="user-" + digest(spec_ref)[:32], label=f"{label} (your model)", spec=spec_ref,
                             seed=int(seed))

    def training_threads(self) -> int:
        return 1

    def load(self, model: ResolvedModel, cache_dir: str | None) -> tuple[Any, dict[str, Any]]:
        from xaudit.core.model import fingerprint
        from xaudit.zoo.user import build

        m = build(model.spec)
        card = {"kind": "user", "model": model.spec["model"], "weights": model.spec.get("weights"),
                "weights_digest": model.spec.get("weights_digest"), "normalize": model.spec.get("normalize"),
                "blocks": list(m.blocks), "cam_layer": getattr(m, "last_conv", None),
                "num_params": sum(p.numel() for p in m.parameters()), "weights_sha256": fingerprint(m)}
        return m, card
