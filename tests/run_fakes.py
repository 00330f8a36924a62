"""Cheap checks and a fake model source for the runner's tests (imported by workers as a plugin).

Every cell appends one line to the file named by $XAUDIT_TEST_LOG (check, method, world, seed, pid),
so a test can count how often each cell really ran, independently of the store.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch

from xaudit.checks.base import CHECKS, Check, ModelRef, row
from xaudit.core.errors import NotApplicable
from xaudit.run.models import ResolvedModel


def _log(kind: str, **fields) -> None:
    path = os.environ.get("XAUDIT_TEST_LOG")
    if path:
        with open(path, "a") as f:          # O_APPEND: whole lines, even from several processes
            f.write(json.dumps({"kind": kind, "pid": os.getpid(), **fields}, sort_keys=True) + "\n")


def value_of(*parts) -> float:
    """A deterministic number in [0, 1) from the cell's identity."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()
    return int.from_bytes(h[:6], "big") / 2**48


def _register(cls):
    if cls.name in CHECKS:
        return CHECKS.get(cls.name)
    return CHECKS.register(cls.name)(cls)


@_register
class FakeScore(Check):
    """Two stage rows and a verdict row; sleeps `sleep` seconds so a kill can land mid-run."""
    name = "fake_score"
    version = "1"
    description = "Fake check for tests.\nVerdict: pass when the score is above 0.5."
    defaults = {"sleep": 0.0, "stages": 2}

    def models(self, params, model_group, seed):
        return []

    def run(self, ctx):
        _log("cell", check=ctx.check, method=ctx.method, world=ctx.world["world"], seed=ctx.seed)
        time.sleep(ctx.params["sleep"])
        v = value_of(ctx.check, ctx.method, ctx.world, ctx.seed)
        rows = [row(ctx, "similarity", v * (i + 1) / ctx.params["stages"], n=8, stage=f"s{i}", block=i)
                for i in range(ctx.params["stages"])]
        rows.append(row(ctx, "score", v, v - 0.1, v + 0.1, n=8, verdict="pass" if v > 0.5 else "fail",
                        note={"v": v}))
        return rows


def pass_gate(gate: str | Path) -> None:
    """Block until the test lets this cell through: take one ticket file ``gate/ticket-*`` (renaming
    is atomic, so each ticket admits exactly one cell, whichever worker runs it), or pass freely once
    ``gate/open`` exists. Lets a test know exactly which cells are done and which are still running."""
    gate = Path(gate)
    while not (gate / "open").exists():
        for t in sorted(gate.glob("ticket-*")):
            try:
                t.rename(gate / f"used-{t.name}")
                return
            except FileNotFoundError:       # another worker took it first
                continue
        time.sleep(0.01)


@_register
class FakeGated(FakeScore):
    """FakeScore whose cells wait at a gate (a directory, see :func:`pass_gate`) that the test opens."""
    name = "fake_gated"
    defaults = {**FakeScore.defaults, "gate": None}

    def run(self, ctx):
        if ctx.params["gate"]:
            _log("gate", check=ctx.check, method=ctx.method, world=ctx.world["world"], seed=ctx.seed)
            pass_gate(ctx.params["gate"])
        return super().run(ctx)


@_register
class FakeFail(Check):
    """Raises for the method named in `bad_method`, scores the others."""
    name = "fake_fail"
    defaults = {"bad_method": "grad_cam"}

    def models(self, params, model_group, seed):
        return []

    def run(self, ctx):
        _log("cell", check=ctx.check, method=ctx.method, world=ctx.world["world"], seed=ctx.seed)
        if ctx.method == ctx.params["bad_method"]:
            raise ValueError(f"planted failure for {ctx.method}")
        if ctx.method == "blank":
            raise NotApplicable("blank does not apply to this fake check")
        v = value_of(ctx.check, ctx.method, ctx.seed)
        return [row(ctx, "score", v, verdict="pass" if v > 0.5 else "fail")]


@_register
class FakeModel(Check):
    """Loads its models (the primary and a `partner` group) and reports their weights' sum."""
    name = "fake_model"
    defaults = {"partner": None, "mutate": False, "passes": 0}

    def models(self, params, model_group, seed):
        refs = [ModelRef(model_group, seed)]
        if params["partner"]:
            refs.append(ModelRef(params["partner"], seed))
        return refs

    def run(self, ctx):
        _log("cell", check=ctx.check, method=ctx.method, world=ctx.world["world"], seed=ctx.seed,
             group=ctx.model_group)
        model, card = ctx.load_model(ModelRef(ctx.model_group, ctx.seed))
        for _ in range(ctx.params["passes"]):     # forward + backward to the input, as explainers do
            x = torch.ones(4, 3, requires_grad=True)
            model(x).sum().backward()
        if ctx.params["mutate"]:
            with torch.no_grad():
                model.weight.add_(1.0)
        rows = [row(ctx, "weight_sum", float(model.weight.detach().sum()), verdict="pass", spec_key=card["key"])]
        if ctx.params["partner"]:
            other, ocard = ctx.load_model(ModelRef(ctx.params["partner"], ctx.seed))
            rows.append(row(ctx, "partner_sum", float(other.weight.detach().sum()), spec_key=ocard["key"]))
        return rows


class FakeSource:
    """Models are tiny Linear layers; 'training' writes a marker under cache_dir and is logged."""

    def resolve(self, spec_ref, seed, world, *, explicit, group):
        if spec_ref == "missing":
            from xaudit.core.errors import ConfigError
            raise ConfigError(f"models.{group}", "no such fake spec")
        key = f"{spec_ref}-{world['world']}-{seed}"
        return ResolvedModel(key=key, label=f"{group} on {world['world']}, seed {seed}", spec=spec_ref, seed=seed)

    def export(self, model: ResolvedModel, cache_dir):
        marker = Path(cache_dir) / f"{model.key}.trained"
        return {marker.name: marker.read_bytes()} if marker.exists() else {}

    def install(self, files, cache_dir):
        for name, data in files.items():
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            (Path(cache_dir) / name).write_bytes(data)

    def load(self, model: ResolvedModel, cache_dir):
        marker = Path(cache_dir) / f"{model.key}.trained"
        if not marker.exists():
            if model.spec == "broken":
                raise RuntimeError("planted training failure")
            _log("train", key=model.key)
            # also beside the cache (seen by workers that do not share this process's environment: Ray actors)
            with open(Path(cache_dir).parent / "train-events.log", "a") as f:
                f.write(model.key + "\n")
            time.sleep(0.2)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("ok")
        _log("load", key=model.key)
        g = torch.Generator().manual_seed(model.seed + 17 * len(model.key))
        lin = torch.nn.Linear(3, 2)
        with torch.no_grad():
            lin.weight.copy_(torch.rand(2, 3, generator=g))
            lin.bias.zero_()
        return lin.eval(), {"key": model.key, "clean_accuracy": 0.5}


@_register
class FakeDerived(Check):
    """Derived from fake_fail's stored rows: twice its score (runs in the driver, logged with its pid)."""
    name = "fake_derived"
    derives_from = "fake_fail"
    defaults = {"factor": 2.0}

    def models(self, params, model_group, seed, world=None):
        return []

    def run(self, ctx):
        _log("derived", check=ctx.check, method=ctx.method, world=ctx.world["world"], seed=ctx.seed,
             upstream=ctx.upstream_key)
        score = next(r for r in ctx.upstream_rows if r["metric"] == "score")
        v = ctx.params["factor"] * score["value"]
        return [row(ctx, "twice_score", v, verdict="pass" if v > 1 else "fail", upstream_value=score["value"])]


@_register
class FakeCrash(FakeScore):
    """FakeScore whose worker process dies (os._exit) in the first `crashes` cells of method `method`: the
    marker file `marker` gets a line per death (a worker-loss test)."""
    name = "fake_crash"
    defaults = {**FakeScore.defaults, "marker": None, "method": "saliency", "crashes": 1}

    def run(self, ctx):
        marker = ctx.params["marker"]
        if marker and ctx.method == ctx.params["method"]:
            died = len(Path(marker).read_text().splitlines()) if Path(marker).exists() else 0
            if died < ctx.params["crashes"]:
                with open(marker, "a") as f:
                    f.write(f"{os.getpid()}\n")
                os._exit(1)
        return super().run(ctx)
