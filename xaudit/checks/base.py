"""The check contract shared by every check module and the runner (docs/architecture.md#the-check-contract).

A check is one protocol (e.g. cascading randomization). The runner builds a grid of cells
(check x accepted method x model group x world x seed); for each cell it calls ``check.run(ctx)``
with a :class:`CheckContext` and stores the tidy rows it returns. Checks never import ``xaudit.run``.

Every attribute and method that ``xaudit.run`` and ``xaudit.report`` read is declared on
:class:`Check` below, with its default; a check module overrides what its protocol needs:

- which cells exist: ``worlds``, ``model_groups``, ``method_kinds`` / :meth:`Check.accepts`;
- which models a cell needs: :meth:`Check.models` -> :class:`ModelRef` (any spec, seed and world,
  any number of them: a population is a list);
- how its verdicts are told apart and shown: ``verdict_key``, ``scorecard_metric``;
- its figures: :meth:`Check.figures`;
- whether it is computed from another check's stored rows instead of models (``derives_from``).

Row contract: every row is a dict with at least
``check, method, model, world, seed, metric, value, ci_low, ci_high, n, verdict``
(``verdict`` is None except on verdict rows) plus check-specific columns (``stage``, ``block``, ...).
The runner adds ``run`` and the cell key, and sets ``world`` to the cell's world label.
Verdicts mean one thing in every family: ``pass`` = the method reveals the bug (for a sanity check:
its maps move when the model is randomized), ``fail`` = it does not, ``inconclusive`` = the CIs do
not decide.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from xaudit.core.canon import canonical_json
from xaudit.core.registry import Registry
from xaudit.explain.base import METHOD_KINDS  # noqa: F401  (re-exported: the kinds a check may accept)

CHECKS: Registry[type["Check"]] = Registry("check")

ROW_COLUMNS = ("check", "method", "model", "world", "seed", "metric", "value",
               "ci_low", "ci_high", "n", "verdict")
VERDICTS = ("pass", "fail", "inconclusive")

# one letter per verdict, for compact per-metric verdict strings (figure legends, the scorecard)
VERDICT_CODE = {"pass": "P", "fail": "F", "inconclusive": "?"}


@dataclass(frozen=True)
class ModelRef:
    """A trained model a cell needs.

    spec:  a zoo spec name or YAML path, or a spec mapping such as ``{base: clean, train: {epochs: 5}}``
           (a variant built from check parameters; a mapping without ``world`` is trained on ``world``)
    seed:  the training seed
    world: the world config the model is trained on (``{"world": "digits"}``, ``{"world": "shapes",
           "size": 64}``); None: the cell's world
    """
    spec: Any
    seed: int = 0
    world: Mapping[str, Any] | None = None

    def __post_init__(self):
        if not (isinstance(self.spec, str) and self.spec) and not isinstance(self.spec, Mapping):
            raise TypeError(f"ModelRef.spec must be a spec name or path or a spec mapping, got {self.spec!r}")
        if self.world is not None and not (isinstance(self.world, Mapping) and isinstance(self.world.get("world"), str)):
            raise TypeError(f"ModelRef.world must be None or a world config with a 'world' name, got {self.world!r}")

    @property
    def alias(self) -> str:
        """How a cell names this model (with the seed, unique among a cell's models): the spec name
        for a named spec on the cell's world; else the canonical JSON of spec and world."""
        if isinstance(self.spec, str) and self.world is None:
            return self.spec
        return canonical_json({"spec": self.spec, "world": self.world})

    @property
    def group(self) -> str:
        """A short name for people and error messages."""
        if isinstance(self.spec, str):
            name = self.spec
        else:
            name = str(self.spec.get("name") or self.spec.get("base") or "spec")
        return name if self.world is None else f"{name}@{self.world.get('world')}"


@dataclass
class CheckContext:
    """Everything a cell needs. ``load_model(ref) -> (model in eval mode, card dict)`` goes through the
    zoo cache and is memoized per worker process, so all cells of one model load it once; a check may
    load only the models its :meth:`Check.models` declared."""
    check: str
    method: str
    method_params: dict[str, Any]
    model_group: str            # zoo spec name of the primary model, e.g. "clean"
    world: dict[str, Any]       # world config, e.g. {"world": "shapes", "size": 32, "seed": 0}
    seed: int
    params: dict[str, Any]      # the check's parameters (defaults merged with the preset's)
    load_model: Callable[[ModelRef], tuple[torch.nn.Module, dict]]
    device: str = "cpu"
    artifacts_dir: str | None = None   # where a check may write figure data (npz); returned with its rows
    extra: dict[str, Any] = field(default_factory=dict)
    world_label: str | None = None     # the cell's world label (``shapes@32``): the rows' world column
    method_kind: str = "attribution"
    # a derived check (``Check.derives_from``): the stored rows of the upstream cell it reads (same
    # method, model group, world and seed), and that cell's key
    upstream_rows: list[dict[str, Any]] = field(default_factory=list)
    upstream_key: str | None = None

    @property
    def world_id(self) -> str:
        return self.world_label or str(self.world.get("world"))


class Check:
    """Base of every check. Class attributes are the check's metadata (the report shows them)."""
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    # "re-explain": the check runs the explainer itself (randomization); "score": scores given maps;
    # "synthesize": it runs a synthesis method and judges the images
    kind: ClassVar[str] = "re-explain"
    higher_is_better: ClassVar[bool | None] = None
    citation: ClassVar[str] = ""
    description: ClassVar[str] = ""      # protocol and verdict rule, shown in the report
    defaults: ClassVar[dict[str, Any]] = {}
    # world names the check runs on (None: every world of the preset)
    worlds: ClassVar[tuple[str, ...] | None] = None
    # the model groups its cells run on instead of the preset world's `models` (None: the world's)
    model_groups: ClassVar[tuple[str, ...] | None] = None
    # the method kinds it scores (see accepts)
    method_kinds: ClassVar[tuple[str, ...]] = ("attribution",)
    # the row columns that identify one verdict of a cell: ("metric",), or ("metric", "trojan") for a
    # check with a verdict per trojan; the scorecard, the verdict tables and the legends key by it
    verdict_key: ClassVar[tuple[str, ...]] = ("metric",)
    # the metric whose verdict heads the cell's scorecard entry (None: all verdict rows, in row order)
    scorecard_metric: ClassVar[str | None] = None
    # the bug the check plants: the report's answer table column ("randomized weights"). A template like
    # "{trojan} trojan" makes a column per value of that row column (the part after its last ':'); None: a
    # column named after the check; "": no planted bug (the check stays out of the answer table)
    bug: ClassVar[str | None] = None
    # {row column: glob}: only the verdict rows that match count in the answer table ({"trojan": "family:*"})
    bug_rows: ClassVar[dict[str, str] | None] = None
    # a derived check reads the rows another check stored instead of loading models and explaining:
    # the name of that check. The plan gives each of its cells the key of the upstream cell with the
    # same method, model group, world and seed (hashed into its own key, so it is recomputed when the
    # upstream cell changes); the runner runs it in the driver after that cell is done, with
    # ``ctx.upstream_rows``. Its models() must return [] (it computes nothing on a model).
    derives_from: ClassVar[str | None] = None

    def accepts(self, method: Mapping[str, Any]) -> bool:
        """Whether this check scores ``method`` (a row of :func:`xaudit.explain.describe`: name, kind,
        family, ...). The plan crosses a check only with the methods it accepts."""
        return str(method.get("kind", "attribution")) in self.method_kinds

    def models(self, params: dict[str, Any], model_group: str, seed: int,
               world: dict[str, Any] | None = None) -> list[ModelRef]:
        """The models a cell of this check needs (the runner trains or loads them first, each on its
        own world). ``world`` is the cell's world config. The first is the cell's primary model."""
        return [ModelRef(model_group, seed)]

    def run(self, ctx: CheckContext) -> list[dict[str, Any]]:
        raise NotImplementedError

    def figures(self, rows: Sequence[dict[str, Any]], artifacts: Sequence[Path]
                ) -> list[tuple[str, Any]] | None:
        """The check's figures for the report: ``(title, PNG bytes or a matplotlib Figure)`` pairs, from
        its result rows and the artifact folders of its active, done cells. None (the default): the
        report draws its generic figures (scores with CIs, metrics, curves)."""
        return None


def declared_models(check: Check, params: dict[str, Any], group: str, seed: int,
                    world: dict[str, Any]) -> list[ModelRef]:
    """``check.models(...)``, also for a check written against the older signature without ``world``."""
    fn = check.models
    try:
        takes_world = "world" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_world = True
    refs = fn(params, group, seed, world) if takes_world else fn(params, group, seed)
    out = []
    for r in refs:
        if not isinstance(r, ModelRef):
            raise TypeError(f"check {check.name!r}: models() must return ModelRef objects, got {r!r}")
        out.append(r)
    return out


def verdict_id(r: Mapping[str, Any], key: Sequence[str]) -> tuple:
    """The values of a verdict row's key columns."""
    return tuple(r.get(k) for k in key)


def verdict_label(r: Mapping[str, Any], key: Sequence[str]) -> str:
    """A verdict row's key for people: ``ssim``, or ``l1 / patch_a`` for key ("metric", "trojan")."""
    return " / ".join(str(r.get(k)) for k in key)


def rows_by_model(rows: Sequence[Mapping[str, Any]], check: str, series: Sequence[str] | None = None
                  ) -> list[tuple[tuple, list[Mapping[str, Any]]]]:
    """``check``'s rows (of the given ``series`` only, when given) grouped by (model, world, seed), the
    groups in the order of those keys as strings: what a check's figures draw one figure per group of."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("check") == check and (series is None or r.get("series") in series):
            groups.setdefault((r.get("model"), r.get("world"), r.get("seed")), []).append(r)
    return sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0])))


def row(ctx: CheckContext, metric: str, value: float, ci_low: float | None = None,
        ci_high: float | None = None, n: int | None = None, verdict: str | None = None,
        **extra: Any) -> dict[str, Any]:
    """One tidy result row for this cell."""
    return {"check": ctx.check, "method": ctx.method, "model": ctx.model_group,
            "world": ctx.world_id, "seed": ctx.seed, "metric": metric,
            "value": None if value is None else float(value),
            "ci_low": None if ci_low is None else float(ci_low),
            "ci_high": None if ci_high is None else float(ci_high),
            "n": n, "verdict": verdict, **extra}


def get(name: str) -> "Check":
    return CHECKS.get(name)()


def names() -> list[str]:
    return CHECKS.names()


def describe() -> list[dict[str, Any]]:
    """One JSON-able row per check: its metadata, as the run's store records it for the report."""
    out = []
    for n in CHECKS.names():
        c = CHECKS.get(n)
        out.append({"name": n, "version": c.version, "kind": c.kind, "citation": c.citation,
                    "description": c.description, "defaults": dict(c.defaults),
                    "method_kinds": list(c.method_kinds), "verdict_key": list(c.verdict_key),
                    "scorecard_metric": c.scorecard_metric, "derives_from": c.derives_from,
                    "bug": c.bug, "bug_rows": dict(c.bug_rows) if c.bug_rows else None,
                    "worlds": None if c.worlds is None else list(c.worlds),
                    "model_groups": None if c.model_groups is None else list(c.model_groups)})
    return out
