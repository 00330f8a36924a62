"""Presets: the experiment as data (a YAML file), validated on load.

A preset names the worlds, the model groups trained on each world, the checks and the methods.
Shipped presets live in ``xaudit/presets/<name>.yaml``; a user preset is any YAML path.

Schema (every field except ``name`` is optional; unknown fields are errors)::

    name: smoke                    # run name: runs/<name>/  (letters, digits, - _ .)
    description: "..."
    seeds: [0]                     # one cell per seed (model training seed and check seed)
    device: cpu                    # cpu | cuda | auto
    workers: null                  # default worker processes (null: the number of cores)
    executor: {kind: local}        # or {kind: ray, address: ADDR} (pip install 'xaudit[ray]')
    profile: false                 # time model passes (forward/backward) inside cells
    plugins: []                    # modules imported in every worker (they register checks/methods)
    worlds:                        # a list; each entry is one world configuration
      - world: shapes              # a registered world name
        size: 32                   # world parameters (size, seed, ...) go beside `world`
        models: [clean]            # model groups: the primary models the cells run on
        specs: {clean: clean}      # model group -> zoo spec on this world: a name, a YAML path, or a
                                   # mapping such as {base: clean, train: {train_size: 10000}}
        checks: [spurious]         # optional: only these checks run on this world (default: every
                                   # check of the preset that runs on this world)
    check_defaults: {n_images: 32} # parameters for every check that takes them (a check's own
                                   # `params` override these)
    checks: all                    # `all`, a list of names, or {name: {params: {...}, models: [...], methods: [...]}}
    methods: all                   # `all`, a list of names, or {name: {param: value}}

``all`` (as the whole value, an item of the list, or a key of the mapping) expands at plan time to
every registered check / method; explicit entries override its parameters.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xaudit.core.errors import ConfigError, check_bool

ALL = "all"
PRESET_FIELDS = ("name", "description", "seeds", "device", "workers", "profile", "plugins",
                 "worlds", "check_defaults", "checks", "methods", "executor")
EXECUTORS = ("local", "ray")
WORLD_FIELDS_RESERVED = ("world", "models", "specs", "checks")
CHECK_FIELDS = ("params", "models", "methods")
DEVICES = ("cpu", "cuda", "auto")
PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"   # shipped as package data
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class WorldEntry:
    """One world of a preset: its config (``world`` name + parameters), model groups, spec map."""
    config: dict[str, Any]
    models: tuple[str, ...] = ("clean",)
    specs: dict[str, Any] = field(default_factory=dict)
    checks: tuple[str, ...] | None = None      # only these checks run on this world; None: every one

    @property
    def name(self) -> str:
        return self.config["world"]

    def spec_for(self, group: str) -> Any:
        """The zoo spec (name or path) that model group ``group`` means on this world."""
        return self.specs.get(group, group)


@dataclass(frozen=True)
class CheckEntry:
    name: str                                  # a check name or "all"
    params: dict[str, Any] = field(default_factory=dict)
    models: tuple[str, ...] | None = None      # model groups; None: the world's
    methods: tuple[str, ...] | None = None     # the preset's methods this check runs; None: all it accepts


@dataclass(frozen=True)
class MethodEntry:
    name: str                                  # a method name or "all"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str = ""
    seeds: tuple[int, ...] = (0,)
    device: str = "cpu"
    workers: int | None = None
    executor: dict[str, Any] | None = None     # {kind: local | ray, address: ...}; None: local
    profile: bool = False
    plugins: tuple[str, ...] = ()
    worlds: tuple[WorldEntry, ...] = ()
    check_defaults: dict[str, Any] = field(default_factory=dict)
    checks: tuple[CheckEntry, ...] = (CheckEntry(ALL),)
    methods: tuple[MethodEntry, ...] = (MethodEntry(ALL),)
    source: str = ""                           # where it was loaded from
    raw: dict[str, Any] = field(default_factory=dict, compare=False)   # the YAML as loaded


def shipped() -> list[str]:
    """Names of the presets shipped in the package."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(preset: str | Path | dict[str, Any]) -> Preset:
    """A validated :class:`Preset` from a shipped name, a YAML path, or a dict.

    Raises ConfigError naming the offending field (``worlds[1].size``, ``checks.x.params``, ...)
    and the allowed values.
    """
    if isinstance(preset, dict):
        return parse_preset(preset, source="<dict>")
    text, source = _read(preset)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("preset", f"{source} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("preset", f"{source} must hold a mapping of fields "
                                    f"({', '.join(PRESET_FIELDS)}), got {type(data).__name__}")
    data.setdefault("name", Path(str(preset)).stem if _looks_like_path(preset) else str(preset))
    return parse_preset(data, source=source)


def _looks_like_path(preset: str | Path) -> bool:
    s = str(preset)
    return isinstance(preset, Path) or s.endswith((".yaml", ".yml")) or "/" in s or Path(s).is_file()


def _read(preset: str | Path) -> tuple[str, str]:
    if _looks_like_path(preset):
        p = Path(preset)
        if not p.is_file():
            raise ConfigError("preset", f"no preset file {str(p)!r}; shipped presets: {', '.join(shipped())}")
        return p.read_text(), str(p)
    name = str(preset)
    if name not in shipped():
        raise ConfigError("preset", f"unknown preset {name!r}; shipped presets: {', '.join(shipped())} "
                                    "(or give a path to a preset YAML file)")
    return (PRESETS_DIR / f"{name}.yaml").read_text(), f"xaudit/presets/{name}.yaml"


def parse_preset(data: dict[str, Any], source: str = "") -> Preset:
    unknown = [k for k in data if k not in PRESET_FIELDS]
    if unknown:
        raise ConfigError(str(unknown[0]), f"unknown preset field; allowed fields: {', '.join(PRESET_FIELDS)}")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError("name", f"must be a run name of letters, digits, '-', '_' or '.', got {name!r}")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError("description", f"must be a string, got {type(description).__name__}")
    seeds = _seeds(data.get("seeds", [0]))
    device = data.get("device", "cpu")
    if device not in DEVICES:
        raise ConfigError("device", f"must be one of {', '.join(DEVICES)}; got {device!r}")
    workers = data.get("workers")
    if workers is not None and (not _is_int(workers) or workers < 1):
        raise ConfigError("workers", f"must be a positive integer or null, got {workers!r}")
    executor = data.get("executor")
    if executor is not None:
        if isinstance(executor, str):
            executor = {"kind": executor}
        if (not isinstance(executor, dict) or executor.get("kind") not in EXECUTORS
                or set(executor) - {"kind", "address"}):
            raise ConfigError("executor", f"must be {{kind: local}} or {{kind: ray, address: ADDR}}, got {executor!r}")
    profile = data.get("profile", False)
    check_bool("profile", profile)
    plugins = data.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) and p for p in plugins):
        raise ConfigError("plugins", f"must be a list of module names, got {plugins!r}")
    if "worlds" not in data:
        raise ConfigError("worlds", "is required: a list of {world: NAME, models: [...], ...} entries")
    return Preset(name=name, description=description, seeds=seeds, device=device, workers=workers, executor=executor,
                  profile=profile, plugins=tuple(plugins), worlds=_worlds(data["worlds"]),
                  check_defaults=_mapping("check_defaults", data.get("check_defaults")),
                  checks=_checks(data.get("checks", ALL)), methods=_methods(data.get("methods", ALL)),
                  source=source, raw=dict(data))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _seeds(v: Any) -> tuple[int, ...]:
    if _is_int(v):
        v = [v]
    if not isinstance(v, list) or not v or not all(_is_int(s) and s >= 0 for s in v):
        raise ConfigError("seeds", f"must be a non-empty list of integers >= 0, got {v!r}")
    if len(set(v)) != len(v):
        raise ConfigError("seeds", f"must not repeat a seed, got {v!r}")
    return tuple(v)


def _str_list(fld: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(s, str) and s for s in v):
        raise ConfigError(fld, f"must be a non-empty list of names, got {v!r}")
    return tuple(v)


def _mapping(fld: str, v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise ConfigError(fld, f"must be a mapping of name: value, got {v!r}")
    return dict(v)


def _worlds(v: Any) -> tuple[WorldEntry, ...]:
    if not isinstance(v, list) or not v:
        raise ConfigError("worlds", "must be a non-empty list of {world: NAME, models: [...], ...} entries")
    out = []
    for i, w in enumerate(v):
        fld = f"worlds[{i}]"
        if isinstance(w, str):
            w = {"world": w}
        if not isinstance(w, dict) or not isinstance(w.get("world"), str):
            raise ConfigError(f"{fld}.world", f"each world entry needs `world: NAME`, got {w!r}")
        models = _str_list(f"{fld}.models", w.get("models", ["clean"]))
        specs = _mapping(f"{fld}.specs", w.get("specs"))
        for g, s in specs.items():
            if not (isinstance(s, str) and s) and not isinstance(s, dict):
                raise ConfigError(f"{fld}.specs.{g}", f"must be a zoo spec name, a YAML path or a spec mapping "
                                                      f"(e.g. {{base: clean, train: {{...}}}}), got {s!r}")
        only = w.get("checks")
        only = None if only is None else _str_list(f"{fld}.checks", only)
        config = {k: val for k, val in w.items() if k not in WORLD_FIELDS_RESERVED[1:]}
        config.setdefault("seed", 0)
        out.append(WorldEntry(config=config, models=models, specs=specs, checks=only))
    seen = set()
    for i, w in enumerate(out):
        key = repr(sorted(w.config.items()))
        if key in seen:
            raise ConfigError(f"worlds[{i}]", f"repeats an earlier world configuration {w.config!r}")
        seen.add(key)
    return tuple(out)


def _entries(fld: str, v: Any) -> list[tuple[str, Any]]:
    """Normalize `all` | [name | {name: opts}] | {name: opts} to [(name, opts)]."""
    if isinstance(v, str):
        v = [v]
    if isinstance(v, dict):
        items = list(v.items())
    elif isinstance(v, list) and v:
        items = []
        for j, it in enumerate(v):
            if isinstance(it, str):
                items.append((it, None))
            elif isinstance(it, dict) and len(it) == 1:
                items.append(next(iter(it.items())))
            else:
                raise ConfigError(f"{fld}[{j}]", f"must be a name or a one-key mapping {{name: options}}, got {it!r}")
    else:
        raise ConfigError(fld, f"must be 'all', a list of names, or a mapping name: options; got {v!r}")
    names = [n for n, _ in items]
    for n in names:
        if not isinstance(n, str) or not n:
            raise ConfigError(fld, f"names must be non-empty strings, got {n!r}")
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(fld, f"lists {sorted(dup)[0]!r} twice")
    return items


def _checks(v: Any) -> tuple[CheckEntry, ...]:
    out = []
    for name, opts in _entries("checks", v):
        fld = f"checks.{name}"
        opts = _mapping(fld, opts)
        bad = [k for k in opts if k not in CHECK_FIELDS]
        if bad:
            raise ConfigError(f"{fld}.{bad[0]}", f"unknown check option; allowed: {', '.join(CHECK_FIELDS)}")
        models, methods = opts.get("models"), opts.get("methods")
        out.append(CheckEntry(name=name, params=_mapping(f"{fld}.params", opts.get("params")),
                              models=None if models is None else _str_list(f"{fld}.models", models),
                              methods=None if methods is None else _str_list(f"{fld}.methods", methods)))
    return tuple(out)


def _methods(v: Any) -> tuple[MethodEntry, ...]:
    return tuple(MethodEntry(name=n, params=_mapping(f"methods.{n}", p)) for n, p in _entries("methods", v))
