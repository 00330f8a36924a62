"""Toy checks, one per capability of the check contract, and a model source that records what it
resolved and loaded (imported by workers as a plugin: ``plugins: [contract_fakes]``)."""
from __future__ import annotations

from pathlib import Path

import torch

from xaudit import explain
from xaudit.checks.base import CHECKS, Check, ModelRef, row
from xaudit.core.canon import canonical_json, digest
from xaudit.run.models import ResolvedModel

LOADS: list[str] = []          # model keys loaded in this process (inline runs)
FIGURE_CALLS: dict[str, list] = {}


def _register(cls):
    if cls.name in CHECKS:
        return CHECKS.get(cls.name)
    return CHECKS.register(cls.name)(cls)


class ContractSource:
    """A model is a Linear(3, 2) whose weights are drawn from its identity (spec, seed, world)."""

    def resolve(self, spec_ref, seed, world, *, explicit, group):
        key = digest([spec_ref, seed, world])[:20]
        return ResolvedModel(key=key, label=f"{group} on {world['world']}@{world.get('size')}, seed {seed}",
                             spec={"spec": spec_ref, "world": world}, seed=seed)

    def load(self, model: ResolvedModel, cache_dir):
        LOADS.append(model.key)
        g = torch.Generator().manual_seed(int(model.key[:8], 16))
        lin = torch.nn.Linear(3, 2)
        with torch.no_grad():
            lin.weight.copy_(torch.rand(2, 3, generator=g))
        return lin.eval(), {"key": model.key, "spec": model.spec["spec"], "world": model.spec["world"]}


@_register
class OtherWorld(Check):
    """Its cell needs the model group trained on its own world and on ``other_world``."""
    name = "toy_other_world"
    defaults = {"other_world": {"world": "digits"}}

    def models(self, params, model_group, seed, world):
        return [ModelRef(model_group, seed), ModelRef(model_group, seed, world=params["other_world"])]

    def run(self, ctx):
        _, own = ctx.load_model(ModelRef(ctx.model_group, ctx.seed))
        _, other = ctx.load_model(ModelRef(ctx.model_group, ctx.seed, world=ctx.params["other_world"]))
        return [row(ctx, "own_world", 1.0, own_world=own["world"]["world"], own_size=own["world"]["size"]),
                row(ctx, "other_world", 1.0, other_world=other["world"]["world"], other_size=other["world"]["size"])]


@_register
class Population(Check):
    """A population built from parameters: ``n_seeds`` normal models plus one variant per poison rate."""
    name = "toy_population"
    defaults = {"n_seeds": 5, "poison_rates": [0.01, 0.05, 0.1, 0.3, 0.5]}

    def models(self, params, model_group, seed, world):
        normal = [ModelRef(model_group, s) for s in range(params["n_seeds"])]
        variants = [ModelRef({"base": model_group, "poison_rate": r}, seed) for r in params["poison_rates"]]
        return normal + variants

    def run(self, ctx):
        out = []
        for ref in self.models(ctx.params, ctx.model_group, ctx.seed, ctx.world):
            model, card = ctx.load_model(ref)
            out.append(row(ctx, "weight_sum", float(model.weight.detach().sum()), verdict="pass", member=ref.alias,
                           member_seed=ref.seed, spec_key=card["key"]))
        return out


@_register
class Mutator(Check):
    """Loads two models, then changes the first in place (the runner must refuse that)."""
    name = "toy_mutator"
    defaults = {}

    def models(self, params, model_group, seed, world):
        return [ModelRef(model_group, seed), ModelRef(model_group, seed + 1)]

    def run(self, ctx):
        first, _ = ctx.load_model(ModelRef(ctx.model_group, ctx.seed))
        ctx.load_model(ModelRef(ctx.model_group, ctx.seed + 1))
        with torch.no_grad():
            first.weight.add_(1.0)
        return [row(ctx, "x", 1.0)]


@explain.register("toy_synth", family="synthesis", kind="synthesis", params={"n": 2, "size": 8})
def toy_synth(model, objective, *, generator, init=None, n=2, size=8):
    """Noise squashed into [0, 1] (a stand-in for activation maximization)."""
    return torch.sigmoid(torch.randn(n, 3, size, size, generator=generator)) if init is None else init


@_register
class Synthesis(Check):
    """Scores synthesis methods only: the mean of the synthesized images."""
    name = "toy_synthesis"
    method_kinds = ("synthesis",)
    defaults = {}

    def models(self, params, model_group, seed, world):
        return []

    def run(self, ctx):
        images = explain.get(ctx.method, **ctx.method_params).synthesize(
            torch.nn.Identity(), None, generator=torch.Generator().manual_seed(ctx.seed))
        return [row(ctx, "mean", float(images.mean()), n=images.shape[0], verdict="pass",
                    method_kind=ctx.method_kind, shape=list(images.shape))]


@_register
class PerTrojan(Check):
    """Two metrics, a verdict per trojan for each."""
    name = "toy_per_trojan"
    verdict_key = ("metric", "trojan")
    scorecard_metric = "l1"
    defaults = {"trojans": ["patch_a", "style_b", "natural_c"]}

    def models(self, params, model_group, seed, world):
        return []

    def run(self, ctx):
        out = []
        for metric in ("l1", "pearson"):
            for i, t in enumerate(ctx.params["trojans"]):
                out.append(row(ctx, metric, 0.1 * (i + 1), 0.05 * (i + 1), 0.15 * (i + 1), n=10,
                               verdict=("pass", "fail", "inconclusive")[i % 3], trojan=t))
        return out


@_register
class Artifact(Check):
    """Writes an artifact holding its ``tag`` parameter; its figures hook records what it was given."""
    name = "toy_artifact"
    defaults = {"tag": "a"}

    def models(self, params, model_group, seed, world):
        return []

    def run(self, ctx):
        Path(ctx.artifacts_dir, "tag.txt").write_text(ctx.params["tag"])
        return [row(ctx, "score", 0.5, verdict="pass")]

    def figures(self, rows, artifacts):
        FIGURE_CALLS[self.name] = [Path(a) for a in artifacts]
        return []


def canonical(obj) -> str:
    return canonical_json(obj)


@_register
class Variants(Check):
    """Asks the zoo for the group on another world, in another architecture, and poisoned at a rate
    given as a parameter (a spec mapping built from check parameters)."""
    name = "toy_variants"
    defaults = {"poison_rate": 0.05, "other_world": {"world": "digits"}, "arch": "vgg"}

    def models(self, params, model_group, seed, world):
        patch = {"kind": "patch", "name": "corner", "pattern": "checker", "size_px": 5, "location": "fixed",
                 "target_class": 0, "poison_rate": params["poison_rate"]}
        return [ModelRef(model_group, seed),
                ModelRef(model_group, seed, world=params["other_world"]),
                ModelRef({"base": model_group, "arch": {"name": params["arch"]}}, seed),
                ModelRef({"base": model_group, "bugs": [patch]}, seed)]

    def run(self, ctx):
        return []
