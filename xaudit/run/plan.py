"""The plan: a preset expanded into cells (check x accepted method x model group x world x seed).

A cell's key is the sha256 of its canonical configuration: check name and version, the check's
parameters (defaults merged with the preset's), method and method parameters, model group,
world config, seed and the identities (spec hashes) of every model it uses. The same
configuration always gets the same key, so a finished cell is found again and never recomputed.

A check is crossed only with the methods it accepts (``Check.accepts``: attribution methods with
attribution checks, synthesis methods with synthesis checks). Each model a check asks for
(``Check.models`` -> ModelRef) is resolved on its own world: the cell's, or another one for a model
trained elsewhere. A world is identified by its whole config; its label (``shapes@32``) names it in
cells, rows and artifacts, so two configs of one world (32 and 64 px) stay apart.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xaudit.core.canon import canonical_json, digest
from xaudit.core.errors import ConfigError, UnknownName
from xaudit.run.models import DEFAULT_SOURCE, ModelSource, ResolvedModel, load_source
from xaudit.run.preset import ALL, Preset, WorldEntry

if TYPE_CHECKING:
    from xaudit.checks.base import ModelRef

CELL_SCHEMA = 1  # bump when the meaning of a cell key changes


def cell_key(config: dict[str, Any]) -> str:
    return digest(config)


@dataclass(frozen=True)
class Cell:
    key: str
    ordinal: int                          # position in the plan (stable for a preset)
    check: str
    check_version: str
    method: str
    method_params: dict[str, Any]
    model_group: str
    world: dict[str, Any]                 # canonical world config ({"world": name, "size": ..., ...})
    seed: int
    params: dict[str, Any]
    models: tuple[tuple[str, int, str], ...]   # (ModelRef.alias, seed, ResolvedModel.key) per ModelRef
    config: dict[str, Any] = field(compare=False, repr=False)   # what the key hashes
    world_label: str = ""                 # the world's label (``shapes@32``): rows, store, artifacts
    upstream: str | None = None           # a derived check's cell: the key of the cell whose rows it reads

    @property
    def primary(self) -> str | None:
        """The key of the cell's first model (workers keep it loaded across cells)."""
        return self.models[0][2] if self.models else None

    @property
    def world_name(self) -> str:
        """The world's identity in the store and the rows: its label."""
        return self.world_label or str(self.world.get("world"))

    @property
    def label(self) -> str:
        return f"{self.check} / {self.method} / {self.model_group}@{self.world_name} / seed {self.seed}"


@dataclass
class Plan:
    preset: Preset
    cells: list[Cell]
    models: dict[str, ResolvedModel]
    checks: list[str]
    methods: list[str]
    source: str = DEFAULT_SOURCE
    method_kinds: dict[str, str] = field(default_factory=dict)   # method -> kind

    def models_for(self, cells: list[Cell]) -> list[ResolvedModel]:
        """The models those cells need, in first-use order."""
        keys: dict[str, None] = {}
        for c in cells:
            for _, _, k in c.models:
                keys.setdefault(k)
        return [self.models[k] for k in keys]


def import_plugins(modules: tuple[str, ...] | list[str]) -> None:
    """Import the modules that register checks/methods (also done in every worker)."""
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise ConfigError("plugins", f"cannot import plugin module {m!r}: {e}") from None


def _explain():
    """xaudit.explain, or None while that stage is not importable (method names are then unchecked)."""
    try:
        return importlib.import_module("xaudit.explain")
    except ImportError:
        return None


def resolve_checks(preset: Preset) -> list[tuple[str, dict[str, Any], tuple[str, ...] | None]]:
    """[(check name, merged params, model groups or None)] with `all` expanded."""
    from xaudit.checks import CHECKS

    explicit = {e.name: e for e in preset.checks if e.name != ALL}
    names: list[str] = []
    for e in preset.checks:
        if e.name == ALL:
            names += [n for n in CHECKS.names() if n not in names]
        elif e.name not in names:
            names.append(e.name)
    out = []
    for n in names:
        if n not in CHECKS:
            raise UnknownName("check", n, CHECKS.names())
        cls = CHECKS.get(n)
        e = explicit.get(n)
        given = dict(e.params) if e else {}
        allowed = dict(getattr(cls, "defaults", {}) or {})
        bad = [k for k in given if k not in allowed]
        if bad:
            raise ConfigError(f"checks.{n}.params.{bad[0]}",
                              f"unknown parameter; allowed: {', '.join(allowed) or '(none)'}")
        shared = {k: v for k, v in preset.check_defaults.items() if k in allowed}
        out.append((n, {**allowed, **shared, **given}, e.models if e else None))
    used = {k for n, _, _ in out for k in (getattr(CHECKS.get(n), "defaults", {}) or {})}
    unused = [k for k in preset.check_defaults if k not in used]
    if unused:
        raise ConfigError(f"check_defaults.{unused[0]}",
                          f"no check of this preset takes it; their parameters: {', '.join(sorted(used)) or '(none)'}")
    return out


def resolve_methods(preset: Preset) -> list[tuple[str, dict[str, Any]]]:
    """[(method name, params)] with `all` expanded and names checked against xaudit.explain."""
    explain = _explain()
    registered = list(explain.names()) if explain is not None else None
    if any(e.name == ALL for e in preset.methods) and registered is None:
        raise ConfigError("methods", "'all' needs the xaudit.explain registry, which failed to import; "
                                     "list the methods by name")
    explicit = {e.name: e for e in preset.methods if e.name != ALL}
    names: list[str] = []
    for e in preset.methods:
        if e.name == ALL:
            names += [n for n in registered if n not in names]
        elif e.name not in names:
            names.append(e.name)
    out = []
    for n in names:
        if registered is not None and n not in registered:
            raise UnknownName("method", n, registered)
        params = dict(explicit[n].params) if n in explicit else {}
        if explain is not None and params:
            try:
                explain.get(n, **params)
            except TypeError as e:
                raise ConfigError(f"methods.{n}", f"bad parameters {params}: {e}") from None
            except ConfigError as e:
                raise ConfigError(f"methods.{n}.{e.field}", str(e).split(": ", 1)[-1]) from None
        out.append((n, params))
    return out


def world_config(entry: WorldEntry, index: int, where: str | None = None) -> dict[str, Any]:
    """The world's canonical config (its own ``config()``), validated by instantiating it. ``where``
    names the field in errors (default ``worlds[index]``)."""
    from xaudit import world as world_mod

    cfg = dict(entry.config)
    name = cfg.pop("world")
    fld = where or f"worlds[{index}]"
    try:
        w = world_mod.get(name, **cfg)
    except UnknownName as e:
        raise ConfigError(f"{fld}.world", str(e)) from None
    except ConfigError as e:
        raise ConfigError(f"{fld}.{e.field}", str(e).split(": ", 1)[-1]) from None
    except TypeError as e:
        raise ConfigError(fld, f"bad parameters for world {name!r}: {e}") from None
    return dict(w.config())    # the world's own statement of what determines its samples


def _subset(kind: str, want: str | list[str] | None, have: list[str], preset: str) -> list[str]:
    if want is None:
        return have
    if isinstance(want, str):
        want = [w.strip() for w in want.split(",") if w.strip()]
    for w in want:
        if w not in have:
            raise ConfigError(f"--{kind}", f"{w!r} is not in preset {preset!r}; its {kind}: {', '.join(have)}")
    return [h for h in have if h in want]


def method_rows(names: list[str]) -> dict[str, dict[str, Any]]:
    """Method name -> its metadata (kind, family, ...) for ``Check.accepts``."""
    explain = _explain()
    out = {}
    for n in names:
        try:
            m = explain.info(n) if explain is not None else None
        except UnknownName:
            m = None
        out[n] = ({"name": n, "kind": m.kind, "family": m.family, "stochastic": m.stochastic}
                  if m is not None else {"name": n, "kind": "attribution", "family": ""})
    return out


class _Resolver:
    """Resolves a check's ModelRefs to the plan's models, each on its own world (memoized)."""

    def __init__(self, src: ModelSource, worlds: list[tuple[WorldEntry, dict[str, Any]]]):
        self.src, self.worlds = src, worlds
        self.resolved: dict[str, ResolvedModel] = {}
        self.world_cfgs: dict[str, dict[str, Any]] = {}

    def world_of(self, ref: "ModelRef", cell_world: dict[str, Any], entry: WorldEntry, where: str
                 ) -> tuple[dict[str, Any], WorldEntry | None]:
        """The canonical config of the world ``ref`` trains on, and the preset's entry for it (its
        ``specs`` map applies), or None for a world the preset does not list."""
        if ref.world is None:
            return cell_world, entry
        memo = canonical_json(dict(ref.world))
        if memo not in self.world_cfgs:
            self.world_cfgs[memo] = world_config(WorldEntry(config={"seed": 0, **dict(ref.world)}), -1, where)
        cfg = self.world_cfgs[memo]
        return cfg, next((e for e, c in self.worlds if c == cfg), None)

    def resolve(self, ref: "ModelRef", cell_world: dict[str, Any], entry: WorldEntry, where: str
                ) -> tuple[tuple[str, int, str], ResolvedModel]:
        wcfg, went = self.world_of(ref, cell_world, entry, where)
        named = isinstance(ref.spec, str)
        spec_ref = went.spec_for(ref.spec) if named and went is not None else ref.spec
        explicit = named and went is not None and ref.spec in went.specs
        memo = canonical_json([spec_ref, int(ref.seed), wcfg])
        if memo not in self.resolved:
            try:
                self.resolved[memo] = self.src.resolve(spec_ref, int(ref.seed), wcfg, explicit=explicit,
                                                       group=ref.group)
            except ConfigError as e:
                if named and ref.world is None:     # the preset's own group: the source names the field
                    raise
                raise ConfigError(f"{where}[{ref.alias}@{ref.seed}].{e.field}",
                                  str(e).split(": ", 1)[-1]) from None
        rm = self.resolved[memo]
        return (ref.alias, int(ref.seed), rm.key), rm


def _with_upstream(keep: list[str], available: list[str]) -> list[str]:
    """The kept checks plus the checks the derived ones among them read (in plan order): ``--checks
    contamination`` runs cascading_randomization too. An upstream check the preset does not run is
    an error naming both."""
    from xaudit.checks import CHECKS

    need = set(keep)
    for name in keep:
        up = getattr(CHECKS.get(name), "derives_from", None)
        if up:
            if up not in available:
                raise ConfigError(f"checks.{name}", f"is computed from the rows of {up!r}, which this preset does "
                                                    f"not run; add {up!r} to the preset's checks")
            need.add(up)
    return [c for c in available if c in need]


def _derived_cells(derived: list[tuple], cells: list[Cell], seeds, start: int) -> list[Cell]:
    """The cells of derived checks: one per upstream cell (same method and parameters, model group,
    world and seed), its key hashed with the upstream cell's key. No upstream cell, no cell."""
    from xaudit.checks.base import declared_models

    index = {(c.check, c.method, canonical_json(c.method_params), c.model_group, canonical_json(c.world), c.seed): c
             for c in cells}
    out: list[Cell] = []
    for wentry, wcfg, wlabel, cname, params, groups, check, accepted in derived:
        for group in groups:
            for seed in seeds:
                if declared_models(check, params, group, seed, wcfg):
                    raise ConfigError(f"checks.{cname}", f"derives from {check.derives_from!r} and so declares no "
                                                         "models; its models() must return []")
                for mname, mparams in accepted:
                    up = index.get((check.derives_from, mname, canonical_json(mparams), group, canonical_json(wcfg),
                                    seed))
                    if up is None:
                        continue
                    config = {"schema": CELL_SCHEMA, "check": cname, "check_version": str(check.version),
                              "params": params, "method": mname, "method_params": mparams, "model_group": group,
                              "world": wcfg, "seed": seed, "models": [], "upstream": up.key}
                    try:
                        key = cell_key(config)
                    except (TypeError, ValueError) as e:
                        raise ConfigError(f"checks.{cname}.params", f"must be plain JSON values: {e}") from None
                    out.append(Cell(key=key, ordinal=start + len(out), check=cname, check_version=str(check.version),
                                    method=mname, method_params=dict(mparams), model_group=group, world=wcfg,
                                    seed=seed, params=dict(params), models=(),
                                    config=json.loads(canonical_json(config)), world_label=wlabel,
                                    upstream=up.key))
    return out


def build_plan(preset: Preset, *, methods: str | list[str] | None = None, checks: str | list[str] | None = None,
               source: str | None = None) -> Plan:
    """Expand ``preset`` into cells. ``methods``/``checks`` (comma-separated or lists) keep a subset.

    ``source`` names the model source (``module:attr``; default the zoo).
    """
    import xaudit.checks as checks_mod
    from xaudit.checks.base import declared_models
    from xaudit.world.base import world_label

    import_plugins(preset.plugins)
    source = source or DEFAULT_SOURCE
    src: ModelSource = load_source(source)
    check_list = resolve_checks(preset)
    method_list = resolve_methods(preset)
    keep_checks = _subset("checks", checks, [c for c, _, _ in check_list], preset.name)
    keep_checks = _with_upstream(keep_checks, [c for c, _, _ in check_list])
    keep_methods = _subset("methods", methods, [m for m, _ in method_list], preset.name)
    check_list = [c for c in check_list if c[0] in keep_checks]
    method_list = [m for m in method_list if m[0] in keep_methods]
    infos = method_rows([m for m, _ in method_list])

    cells: list[Cell] = []
    models: dict[str, ResolvedModel] = {}
    worlds = [(w, world_config(w, i)) for i, w in enumerate(preset.worlds)]
    resolver = _Resolver(src, worlds)
    derived: list[tuple] = []      # derived checks' cells are built once their upstream cells exist
    for i, (wentry, _) in enumerate(worlds):
        for name in wentry.checks or ():
            if name not in checks_mod.CHECKS:
                raise ConfigError(f"worlds[{i}].checks", str(UnknownName("check", name, checks_mod.CHECKS.names())))
    # a check entry's `methods`: the preset's methods that check runs (each must be one of them)
    only_methods = {e.name: e.methods for e in preset.checks if e.name != ALL and e.methods is not None}
    all_methods = [m for m, _ in resolve_methods(preset)]
    for cname, ms in only_methods.items():
        for m in ms:
            if m not in all_methods:
                raise ConfigError(f"checks.{cname}.methods", f"{m!r} is not one of this preset's methods "
                                                             f"({', '.join(all_methods)}); add it under `methods` first")
    for wentry, wcfg in worlds:
        wlabel = world_label(wcfg)
        for cname, params, groups in check_list:
            check = checks_mod.get(cname)
            if check.worlds and wcfg["world"] not in check.worlds:
                continue
            if wentry.checks is not None and cname not in wentry.checks:
                continue
            accepted = [(m, mp) for m, mp in method_list if check.accepts(infos[m])
                        and (cname not in only_methods or m in only_methods[cname])]
            if not accepted:
                continue
            groups = groups or tuple(check.model_groups or ()) or wentry.models
            if check.derives_from:
                derived.append((wentry, wcfg, wlabel, cname, params, groups, check, accepted))
                continue
            for group in groups:
                for seed in preset.seeds:
                    used = []
                    for ref in declared_models(check, params, group, seed, wcfg):
                        entry, rm = resolver.resolve(ref, wcfg, wentry, f"checks.{cname}.models")
                        models[rm.key] = rm
                        used.append(entry)
                    used_t = tuple(dict.fromkeys(used))
                    for mname, mparams in accepted:
                        config = {"schema": CELL_SCHEMA, "check": cname, "check_version": str(check.version),
                                  "params": params, "method": mname, "method_params": mparams,
                                  "model_group": group, "world": wcfg, "seed": seed,
                                  "models": [[a, s, k] for a, s, k in used_t]}
                        try:
                            key = cell_key(config)
                        except (TypeError, ValueError) as e:
                            raise ConfigError(f"checks.{cname}.params", f"must be plain JSON values: {e}") from None
                        cells.append(Cell(key=key, ordinal=len(cells), check=cname, check_version=str(check.version),
                                          method=mname, method_params=dict(mparams), model_group=group,
                                          world=wcfg, seed=seed, params=dict(params), models=used_t,
                                          config=json.loads(canonical_json(config)), world_label=wlabel))
    cells += _derived_cells(derived, cells, preset.seeds, len(cells))
    if not cells:
        raise ConfigError("checks", f"preset {preset.name!r} expands to no cells (checks {keep_checks}, "
                                    f"methods {keep_methods}, {len(preset.worlds)} worlds)")
    dup = len(cells) - len({c.key for c in cells})
    if dup:
        raise ConfigError("worlds", f"{dup} cells of preset {preset.name!r} have identical configurations")
    return Plan(preset=preset, cells=cells, models=models, checks=keep_checks, methods=keep_methods,
                source=source, method_kinds={m: i["kind"] for m, i in infos.items()})
