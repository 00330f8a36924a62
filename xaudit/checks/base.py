"""The check contract shared by every check module and the runner.

A check is one protocol (e.g. cascading randomization). The runner builds a grid of cells
(check x method x model group x world x seed); for each cell it calls ``check.run(ctx)`` with a
:class:`CheckContext` and stores the tidy rows it returns. Checks never import ``xaudit.run``.

Row contract (DESIGN.md): every row is a dict with at least
``check, method, model, world, seed, metric, value, ci_low, ci_high, n, verdict``
(``verdict`` is None except on verdict rows) plus check-specific columns (``stage``, ``block``, ...).
The runner adds ``run`` and the cell key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from xaudit.core.registry import Registry

CHECKS: Registry[type["Check"]] = Registry("check")

ROW_COLUMNS = ("check", "method", "model", "world", "seed", "metric", "value",
               "ci_low", "ci_high", "n", "verdict")

# one letter per verdict, for compact per-metric verdict strings (figure legends, the scorecard)
VERDICT_CODE = {"pass": "P", "fail": "F", "inconclusive": "?"}


@dataclass(frozen=True)
class ModelRef:
    """A trained model a cell needs: a zoo spec name (or path) and a training seed."""
    spec: str
    seed: int = 0


@dataclass
class CheckContext:
    """Everything a cell needs. ``load_model(ref) -> (model in eval mode, card dict)`` goes through the
    zoo cache and is memoized per worker process, so all cells of one model load it once."""
    check: str
    method: str
    method_params: dict[str, Any]
    model_group: str            # zoo spec name of the primary model, e.g. "clean"
    world: dict[str, Any]       # world config, e.g. {"world": "shapes", "size": 32, "seed": 0}
    seed: int
    params: dict[str, Any]      # the check's parameters (defaults merged with the preset's)
    load_model: Callable[[ModelRef], tuple[torch.nn.Module, dict]]
    device: str = "cpu"
    artifacts_dir: str | None = None   # where a check may write figure data (npz) for the report
    extra: dict[str, Any] = field(default_factory=dict)


class Check:
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    # "re-explain": the check runs the explainer itself (randomization); "score": scores given maps
    kind: ClassVar[str] = "re-explain"
    higher_is_better: ClassVar[bool | None] = None
    citation: ClassVar[str] = ""
    description: ClassVar[str] = ""      # protocol and verdict rule, shown in the report
    defaults: ClassVar[dict[str, Any]] = {}

    def models(self, ctx_params: dict[str, Any], model_group: str, seed: int) -> list[ModelRef]:
        """The zoo models a cell of this check needs (the runner trains/loads them first)."""
        return [ModelRef(model_group, seed)]

    def run(self, ctx: CheckContext) -> list[dict[str, Any]]:
        raise NotImplementedError


def row(ctx: CheckContext, metric: str, value: float, ci_low: float | None = None,
        ci_high: float | None = None, n: int | None = None, verdict: str | None = None,
        **extra: Any) -> dict[str, Any]:
    """One tidy result row for this cell."""
    return {"check": ctx.check, "method": ctx.method, "model": ctx.model_group,
            "world": ctx.world.get("world"), "seed": ctx.seed, "metric": metric,
            "value": None if value is None else float(value),
            "ci_low": None if ci_low is None else float(ci_low),
            "ci_high": None if ci_high is None else float(ci_high),
            "n": n, "verdict": verdict, **extra}


def get(name: str) -> "Check":
    return CHECKS.get(name)()


def names() -> list[str]:
    return CHECKS.names()


def describe() -> list[dict[str, Any]]:
    out = []
    for n in CHECKS.names():
        c = CHECKS.get(n)
        out.append({"name": n, "version": c.version, "kind": c.kind, "citation": c.citation,
                    "description": c.description, "defaults": dict(c.defaults)})
    return out
