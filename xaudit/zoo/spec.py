"""Training specs: what model to train, on what world, with which bugs; validated and hashed.

A spec is a YAML mapping (or a dict). Shipped specs live in ``xaudit/specs/<name>.yaml``. Fields:

    name: clean                       # cosmetic: not hashed
    description: ...                  # cosmetic: not hashed
    base: clean                       # optional: start from another spec and override (deep merge)
    seed: 0                           # training seed: init, shuffling, noise, PGD starts
    world: {name: shapes, size: 32, seed: 0, ...world parameters}
    bugs: [{kind: patch, pattern: checker, target_class: 1, poison_rate: 0.05}, "label_noise:rate=0.1"]
    arch: {name: cnn, ...architecture parameters}
    train:
      train_size: 60000               # training indices range(train_size) (fresh generated images)
      epochs: 1                       # passes over them (reshuffled each epoch)
      batch_size: 64
      optimizer: adam                 # adam | adamw | sgd
      lr: 0.001
      momentum: 0.9                   # sgd only
      weight_decay: 0.0               # L2 (adam, sgd) or decoupled (adamw): over-regularization
      schedule: constant              # constant | cosine | onecycle
      noise_sigma: 0.0                # Gaussian-noise augmentation sd, in [0,1] pixel units, not clipped
      adversarial: {eps: 0.0, steps: 0, step_size: null, ramp: 0.0}
                                      # L-inf PGD training; step_size default 2.5*eps/steps; eps grows
                                      # linearly from 0 over the first `ramp` fraction of the steps
      chunk: 10000                    # images rendered at a time
    eval:
      test_size: 5000                 # clean test accuracy on test indices range(test_size)
      trigger_size: 2000              # test indices per trigger for attack success
      train_size: 5000                # training indices for train accuracy (<= train_size)
      criteria: {asr: 0.9, background_only: 0.9, random_labels_train: 0.9, ...}

``hash`` (the cache address) covers every field that changes the weights: seed, the world's canonical
config (not the world as written), bugs, arch (defaults filled in), train, and the training format
version; not name, description, eval or the training thread count (see :meth:`Spec.hashed_content`).
``eval_hash`` covers eval (sizes and criteria) and the evaluation format version: a cached model whose card was measured under other eval settings is re-measured, never retrained.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xaudit.core.errors import ConfigError, UnknownName, check_choice, check_range

ZOO_FORMAT = 1   # bump when training changes what a spec produces (new cache addresses)
EVAL_FORMAT = 2  # bump when evaluate() changes what a card measures (cards are re-measured)

TRAIN_DEFAULTS: dict[str, Any] = {
    "train_size": 60000, "epochs": 1, "batch_size": 64, "optimizer": "adam", "lr": 1e-3,
    "momentum": 0.9, "weight_decay": 0.0, "schedule": "constant", "noise_sigma": 0.0,
    "adversarial": {"eps": 0.0, "steps": 0, "step_size": None, "ramp": 0.0}, "chunk": 10000,
}
DEFAULT_CRITERIA: dict[str, float] = {
    "asr": 0.9,                   # every trigger's attack success rate
    "background_only": 0.9,       # spurious world: accuracy on background-only images
    "cue_flip": 0.5,              # spurious_cue bug: fraction following a contradicting cue
    "random_labels_train": 0.9,   # random labels: train accuracy on the random labels
    "label_noise_rel_tol": 0.25,  # label noise: observed flip rate within 25% of the rate
    "label_noise_fit": 0.5,       # label noise: the model predicts the wrong label on >= this of flipped examples
    "missing_class_recall": 0.05, # missing class: recall of that class at most this
    "noise_robustness": 0.85,     # noise augmentation: accuracy under N(0, sigma^2) >= this x clean accuracy
    "adversarial_robustness": 0.4,  # adversarial training: PGD accuracy at the training eps >= this x clean accuracy
    "robust_min_clean": 0.5,      # ... and clean accuracy at least this (a model at chance is trivially "robust")
}
EVAL_DEFAULTS: dict[str, Any] = {"test_size": 5000, "trigger_size": 1000, "train_size": 5000, "criteria": {}}
TOP_FIELDS = ("name", "description", "base", "seed", "world", "bugs", "arch", "train", "eval")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")


def _unknown(section: str, got, allowed) -> None:
    extra = sorted(set(got) - set(allowed))
    if extra:
        where = f"{section}.{extra[0]}" if section else extra[0]
        raise ConfigError(where, f"unknown field; allowed: {', '.join(allowed)}")


def _int(field: str, v, lo: int, hi: int | float = math.inf) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise ConfigError(field, f"must be an integer, got {v!r}")
    check_range(field, v, lo, hi)
    return int(v)


def _float(field: str, v, lo: float, hi: float, **kw) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(field, f"must be a number, got {v!r}")
    check_range(field, v, lo, hi, **kw)
    return float(v)


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``; nested dicts merge, everything else (lists too) is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _specs_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "specs"


def spec_names() -> list[str]:
    """Names of the specs shipped in xaudit/specs/."""
    return sorted(p.name[:-5] for p in _specs_dir().iterdir() if p.name.endswith(".yaml"))


def _read_yaml(path) -> dict:
    try:
        text = Path(path).read_text() if not hasattr(path, "read_text") else path.read_text()
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("spec", f"{path} is not valid YAML: {e}") from None
    except OSError as e:
        raise ConfigError("spec", f"cannot read {path}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError("spec", f"{path} must hold a YAML mapping, got {type(raw).__name__}")
    return raw


def raw_spec(ref: str | Path | dict, _seen: tuple[str, ...] = ()) -> dict:
    """The spec mapping for a shipped name, a YAML path or a dict, with ``base`` resolved."""
    if isinstance(ref, dict):
        raw = copy.deepcopy(ref)
    elif isinstance(ref, (str, Path)):
        s = str(ref)
        if s.endswith((".yaml", ".yml")) or Path(s).is_file():
            raw = _read_yaml(Path(s))
            raw.setdefault("name", Path(s).stem)
        else:
            names = spec_names()
            if s not in names:
                raise UnknownName("spec", s, names)
            raw = _read_yaml(_specs_dir().joinpath(f"{s}.yaml"))
            raw.setdefault("name", s)
    else:
        raise ConfigError("spec", f"must be a spec name, a YAML path or a dict, got {type(ref).__name__}")
    base = raw.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError("base", f"must name a shipped spec or a YAML path, got {base!r}")
        if base in _seen:
            raise ConfigError("base", f"circular base chain: {' -> '.join((*_seen, base))}")
        parent = raw_spec(base, _seen + (base,))
        parent.pop("description", None)
        for section in ("world", "arch"):   # another world or architecture: its parameters start afresh
            own, inherited = raw.get(section), parent.get(section)
            own_name = own if isinstance(own, str) else (own or {}).get("name") if isinstance(own, dict) else None
            inherited_name = inherited.get("name") if isinstance(inherited, dict) else inherited
            if own_name is not None and own_name != inherited_name:
                parent.pop(section, None)
        raw = deep_merge(parent, raw)
    return raw


def _canonical_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """``{name, **every parameter}``: the architecture's defaults filled in (so equivalent specs hash
    alike); an unknown parameter is a ConfigError naming it and the valid ones."""
    import inspect

    from xaudit.zoo.arch import ARCHITECTURES
    name = arch["name"]
    if name not in ARCHITECTURES:
        raise ConfigError("arch.name", f"unknown architecture {name!r}; valid: {', '.join(ARCHITECTURES.names())}")
    sized = ("channels", "size", "num_classes")     # set from the world, never by the spec
    try:
        sig = inspect.signature(ARCHITECTURES.get(name))
    except (TypeError, ValueError):
        return copy.deepcopy(arch)
    params = {k: v.default for k, v in sig.parameters.items()
              if k not in sized and k != "self" and v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)}
    given = {k: v for k, v in arch.items() if k != "name"}
    for k in given:
        if k in sized:
            raise ConfigError(f"arch.{k}", f"is set from the world, not by the spec; remove it")
        if k not in params and not any(v.kind == v.VAR_KEYWORD for v in sig.parameters.values()):
            raise ConfigError(f"arch.{k}", f"unknown parameter of architecture {name!r}; it takes "
                                           f"{', '.join(params) or '(none)'}")
    filled = {k: v for k, v in params.items() if v is not inspect.Parameter.empty}
    return {"name": name, **copy.deepcopy(filled), **copy.deepcopy(given)}


def _bug_config(bug) -> dict[str, Any]:
    """A bug's config in the form bug_from_config rebuilds (registry kind under 'kind')."""
    cfg = dict(bug.config())
    cfg["kind"] = bug.kind
    return cfg


@dataclass
class Spec:
    """A validated, normalized training spec. ``to_dict()`` is canonical; ``hash`` addresses the cache."""

    name: str
    seed: int
    world: dict[str, Any]
    bugs: list[dict[str, Any]]
    arch: dict[str, Any]
    train: dict[str, Any]
    eval: dict[str, Any]
    description: str = ""
    world_config: dict[str, Any] = field(default_factory=dict)

    # -- construction
    @classmethod
    def from_raw(cls, raw: dict) -> "Spec":
        _unknown("", raw, TOP_FIELDS)
        name = str(raw.get("name") or "spec")
        seed = _int("seed", raw.get("seed", 0), 0, 2**62)

        world = raw.get("world")
        if isinstance(world, str):
            world = {"name": world}
        if not isinstance(world, dict) or "name" not in world:
            raise ConfigError("world", "must be a mapping with at least 'name' (e.g. {name: shapes, size: 32})")
        world = copy.deepcopy(world)

        arch = raw.get("arch", {"name": "cnn"})
        if isinstance(arch, str):
            arch = {"name": arch}
        if not isinstance(arch, dict) or "name" not in arch:
            raise ConfigError("arch", "must be a mapping with at least 'name' (cnn, mlp, resnet, vgg)")
        arch = _canonical_arch(arch)

        tr = raw.get("train") or {}
        if not isinstance(tr, dict):
            raise ConfigError("train", "must be a mapping")
        _unknown("train", tr, TRAIN_DEFAULTS)
        tr = deep_merge(TRAIN_DEFAULTS, tr)
        tr["train_size"] = _int("train.train_size", tr["train_size"], 1)
        tr["epochs"] = _int("train.epochs", tr["epochs"], 1, 100_000)
        tr["batch_size"] = _int("train.batch_size", tr["batch_size"], 1, 1 << 20)
        tr["chunk"] = _int("train.chunk", tr["chunk"], 1, 1 << 24)
        check_choice("train.optimizer", tr["optimizer"], OPTIMIZERS)
        check_choice("train.schedule", tr["schedule"], SCHEDULES)
        tr["lr"] = _float("train.lr", tr["lr"], 0.0, 10.0, lo_open=True)
        tr["momentum"] = _float("train.momentum", tr["momentum"], 0.0, 1.0, hi_open=True)
        tr["weight_decay"] = _float("train.weight_decay", tr["weight_decay"], 0.0, 10.0)
        tr["noise_sigma"] = _float("train.noise_sigma", tr["noise_sigma"], 0.0, 10.0)
        adv = tr["adversarial"]
        if not isinstance(adv, dict):
            raise ConfigError("train.adversarial", "must be a mapping {eps, steps, step_size}")
        _unknown("train.adversarial", adv, ("eps", "steps", "step_size", "ramp"))
        adv = {"eps": 0.0, "steps": 0, "step_size": None, "ramp": 0.0, **adv}
        adv["ramp"] = _float("train.adversarial.ramp", adv["ramp"], 0.0, 1.0)
        adv["eps"] = _float("train.adversarial.eps", adv["eps"], 0.0, 1.0)
        adv["steps"] = _int("train.adversarial.steps", adv["steps"], 0, 1000)
        if (adv["eps"] > 0) != (adv["steps"] > 0):
            raise ConfigError("train.adversarial", f"eps and steps must both be > 0 (PGD on) or both 0 (off), "
                                                   f"got eps={adv['eps']}, steps={adv['steps']}")
        if adv["step_size"] is not None:
            adv["step_size"] = _float("train.adversarial.step_size", adv["step_size"], 0.0, 1.0, lo_open=True)
        tr["adversarial"] = adv

        ev = raw.get("eval") or {}
        if not isinstance(ev, dict):
            raise ConfigError("eval", "must be a mapping")
        _unknown("eval", ev, EVAL_DEFAULTS)
        ev = deep_merge(EVAL_DEFAULTS, ev)
        ev["test_size"] = _int("eval.test_size", ev["test_size"], 1)
        ev["trigger_size"] = _int("eval.trigger_size", ev["trigger_size"], 1)
        ev["train_size"] = _int("eval.train_size", ev["train_size"], 1)
        crit = ev.get("criteria") or {}
        if not isinstance(crit, dict):
            raise ConfigError("eval.criteria", "must be a mapping")
        _unknown("eval.criteria", crit, DEFAULT_CRITERIA)
        crit = {**DEFAULT_CRITERIA, **crit}
        for k, v in crit.items():
            crit[k] = _float(f"eval.criteria.{k}", v, 0.0, 1.0)
        ev["criteria"] = crit

        spec = cls(name=name, seed=seed, world=world, bugs=[], arch=copy.deepcopy(arch), train=tr, eval=ev,
                   description=str(raw.get("description") or ""))
        spec._resolve_world_and_bugs(raw.get("bugs") or [])
        return spec

    def _resolve_world_and_bugs(self, bugs_raw) -> None:
        from xaudit import world as world_mod

        params = {k: v for k, v in self.world.items() if k != "name"}
        try:
            w = world_mod.get(self.world["name"], **params)
        except UnknownName as e:
            raise ConfigError("world.name", str(e)) from None
        except TypeError as e:
            raise ConfigError("world", f"bad parameters for world {self.world['name']!r}: {e}") from None
        except ConfigError as e:
            raise ConfigError(f"world.{e.field}", str(e).split(": ", 1)[-1]) from None
        self.world_config = w.config()
        if not isinstance(bugs_raw, list):
            raise ConfigError("bugs", "must be a list of bug mappings ({kind: ..., ...}) or 'kind:k=v' strings")
        bugs = []
        for i, b in enumerate(bugs_raw):
            try:
                if isinstance(b, str):
                    bug = world_mod.parse_bug(b)
                elif isinstance(b, dict):
                    bug = world_mod.bug_from_config(b)
                else:
                    raise ConfigError("kind", f"must be a mapping or a 'kind:k=v' string, got {b!r}")
                bug.validate(w)
            except ConfigError as e:
                raise ConfigError(f"bugs[{i}].{e.field}", str(e).split(": ", 1)[-1]) from None
            except UnknownName as e:
                raise ConfigError(f"bugs[{i}].kind", str(e)) from None
            bugs.append(bug)
        names = [b.name for b in bugs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError("bugs", f"two bugs share the name {dup[0]!r}; give each a distinct 'name'")
        self.bugs = [_bug_config(b) for b in bugs]
        for i, b in enumerate(bugs):
            if b.kind == "random_labels" and self.train["train_size"] > b.size:
                raise ConfigError("train.train_size", f"random_labels bug {b.name!r} covers training indices "
                                                      f"[0, {b.size}); train_size {self.train['train_size']} "
                                                      f"must be <= {b.size}")
        if self.eval["train_size"] > self.train["train_size"]:
            self.eval["train_size"] = self.train["train_size"]

    # -- use
    def make_world(self):
        from xaudit import world as world_mod

        return world_mod.get(self.world["name"], **{k: v for k, v in self.world.items() if k != "name"})

    def make_bugs(self) -> list:
        from xaudit import world as world_mod

        return [world_mod.bug_from_config(b) for b in self.bugs]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "seed": self.seed, "world": self.world,
                "bugs": self.bugs, "arch": self.arch, "train": self.train, "eval": self.eval}

    def hashed_content(self) -> dict[str, Any]:
        """What determines the weights (the cache address). The world enters as its canonical config
        (the world's own ``config()``, every parameter with its value), never as written: ``{name:
        digits}`` and ``{name: digits, size: 28}`` are one world and one address. The architecture
        carries every parameter with its default filled in, for the same reason.

        The thread count of training is not part of the address: it changes the weights only through
        the order of floating-point reductions (the zoo trains with a fixed ``XAUDIT_THREADS``, default
        2, recorded on the card as ``threads``), and a cache shared between machines must serve every
        thread count. The cache holds the first build of an address; a card whose ``threads`` differs
        from this process's setting was trained elsewhere (docs/architecture.md#the-model-cache)."""
        return {"seed": self.seed, "world_config": self.world_config, "bugs": self.bugs,
                "arch": self.arch, "train": self.train, "zoo_format": ZOO_FORMAT}

    @property
    def hash(self) -> str:
        return _digest(self.hashed_content())

    @property
    def eval_hash(self) -> str:
        """What determines the card's measurements besides the weights."""
        return _digest({"eval": self.eval, "eval_format": EVAL_FORMAT})

    def with_seed(self, seed: int) -> "Spec":
        out = copy.deepcopy(self)
        out.seed = _int("seed", seed, 0, 2**62)
        return out


def _digest(obj) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def load_spec(ref: "str | Path | dict | Spec", seed: int | None = None) -> Spec:
    """A validated Spec from a shipped name, a YAML path, a dict or a Spec; ``seed`` overrides its seed."""
    if isinstance(ref, Spec):
        spec = copy.deepcopy(ref)
    else:
        spec = Spec.from_raw(raw_spec(ref))
    if seed is not None:
        spec = spec.with_seed(seed)
    return spec
