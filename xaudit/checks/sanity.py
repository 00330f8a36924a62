"""Shared machinery of the four sanity checks (docs/protocols.md#1-sanity-checks, Adebayo et al. 2018).

Every sanity check compares, image by image, the maps of an *original* explanation (the trained
model, explaining its own predicted class) with the maps of a *tested* explanation that should differ
if the method depends on the model:

- ``cascading_randomization``: the model with its top k blocks re-initialized, k = 1..K;
- ``independent_randomization``: the model with only block k re-initialized;
- ``data_randomization``: the same architecture trained on permuted labels;
- ``random_logit``: the same model explaining a random other class.

Two references are measured in the same cell, on the same images:

- the *retrain reference*: the original map against the map of a second model trained identically
  with another seed (how far a map moves for an equally good model);
- the *calibration*: the original map against an unrelated random map (about 0).

Per image and comparison the similarities are (:data:`METRICS`): Spearman rank correlation of the
abs maps and of the signed maps, SSIM of the 0-1 maps, HOG similarity of the 0-1 maps, and the
Spearman correlation of the compared map's abs map with the ``edge`` baseline's map (is the method
an edge detector?). Each map set is post-processed, ranked and HOG-described once.

Verdict (per method, metric and check; tau and the stage are parameters recorded in the rows), with
95% bootstrap CIs over images:

- ``fail`` when the CI's lower end of the mean similarity at the verdict stage is above tau;
- ``pass`` when its upper end is below tau *and* the paired difference (tested minus retrain
  reference, per image) has a CI entirely below 0: the map moved farther than retraining moves it;
- ``inconclusive`` otherwise.

The verdict stage is, for the two parameter tests, the stage where the top half of the blocks is
re-initialized (``ceil(K/2)``; for the independent test the block at that position alone); for the
data and logit tests the one comparison.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch

from xaudit.checks.base import VERDICTS, Check, CheckContext, ModelRef, row  # noqa: F401  (VERDICTS: re-exported)
from xaudit.checks.toolkit import (Maps, Similarity, as_nan, bootstrap_mean_cis, check_int, check_map_params,
                                   explain_maps, explain_seed, finite_or_none, load_images, merge_params,
                                   post_process, predict, stream_seed)
from xaudit.core import rng
from xaudit.core.errors import ConfigError, check_bool, check_choice, check_range

METRICS = ("spearman_abs", "spearman_signed", "ssim", "hog", "edge_similarity")
TARGETS = ("current", "original", "label")  # which logit each model explains
SERIES = ("stage", "retrain_reference", "calibration", "verdict", "failures")

VERDICT_RULE = ("fail if CI_low(similarity at the verdict stage) > tau; pass if CI_high(similarity) < tau and "
                "CI_high(similarity - retrain reference, paired per image) < 0; else inconclusive")
# with retrain_reference: false (a user's model has no second training seed): tau and the calibration alone
VERDICT_RULE_NO_REFERENCE = ("fail if CI_low(similarity at the verdict stage) > tau; pass if CI_high(similarity) "
                             "< tau; else inconclusive (no retrain reference: read it beside the random-map "
                             "calibration row)")
EDGE_METRIC = "spearman of the abs map with the abs map of the `edge` (Sobel) baseline"
METRICS_NOTE = (" Metrics per image: Spearman of abs maps and of signed maps (reported separately: on zero "
                "backgrounds input-times-gradient methods tie on abs maps), SSIM of 0-1 maps, HOG similarity; "
                "edge_similarity is the tested map's Spearman with the Sobel edge map (same rule: failing means "
                "the maps stay edge maps). The retrain reference (same spec, another seed) and a random-map "
                "calibration are measured on the same images; with retrain_reference: false (a model without a "
                "second training seed) the verdict uses tau alone, read beside the calibration.")
NOTES = {"retrain_reference": "original map vs the map of the same spec trained with seed + reference_seed_offset",
         "calibration": "original map vs the `random` baseline's map (uniform noise): about 0"}

DEFAULTS: dict[str, Any] = {
    "n_images": 64,              # test images explained (the original used 200)
    "split": "test",
    "target": "current",         # current: each model's own argmax; original: the original model's
                                 # argmax; label: the true label
    "tau": 0.5,
    "verdict_stage": "half",     # "half" (= ceil(K/2)) or a stage number 1..K
    "ci_level": 0.95,
    "n_boot": 2000,
    "retrain_reference": True,   # measure the retrain reference (needs the model group at a second seed)
    "reference_seed_offset": 1,  # retrain reference: the model group at seed + this offset
    "ssim_data_range": 1.0,      # maps are 0-1 normalized; the original implicitly used 2.0
    "hog_pixels_per_cell": "auto",   # "auto": xaudit.metrics.hog_pixels_per_cell (about 8 cells across)
    "hog_correlation": "spearman",   # the original code ranked; the paper text says Pearson
    "figure_images": 4,          # inputs whose maps are saved for the report's grid figure
    "bn_stats": "keep",          # BatchNorm running statistics on re-initialization: keep | reset
}


# ------------------------------------------------------------------------------------ parameters
def resolve_params(check: str, params: dict[str, Any], extra_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults merged with ``params``; every value validated (ConfigError names the parameter)."""
    p = merge_params(check, params, {**DEFAULTS, **(extra_defaults or {})})
    check_map_params(check, p)
    check_choice(f"{check}.split", p["split"], ("train", "test"))
    check_choice(f"{check}.target", p["target"], TARGETS)
    check_range(f"{check}.tau", p["tau"], -1.0, 1.0)
    if p["verdict_stage"] != "half":
        check_int(f"{check}.verdict_stage", p["verdict_stage"], 1, 10_000, extra="or 'half'")
    check_bool(f"{check}.retrain_reference", p["retrain_reference"])
    check_int(f"{check}.reference_seed_offset", p["reference_seed_offset"], 1, 1_000_000)
    check_choice(f"{check}.bn_stats", p["bn_stats"], ("keep", "reset"))
    return p


def verdict_stage(requested, n_stages: int, field: str = "verdict_stage") -> int:
    """The stage the verdict is read at: ``ceil(K/2)`` for "half", else the given stage (1..K)."""
    if requested == "half":
        return max(1, math.ceil(n_stages / 2))
    if not 1 <= int(requested) <= n_stages:
        raise ConfigError(field, f"must be 'half' or a stage in [1, {n_stages}] for this model, got {requested!r}")
    return int(requested)


# ---------------------------------------------------------------------------------- the verdict
def verdict(sim_ci: tuple[float, float], diff_ci: tuple[float, float] | None, tau: float) -> str:
    """The verdict rule (see :data:`VERDICT_RULE`) from the similarity's CI and the paired CI of
    (similarity - retrain reference); ``diff_ci=None`` (no retrain reference): the rule of
    :data:`VERDICT_RULE_NO_REFERENCE`. Undefined (NaN) CIs give ``inconclusive``."""
    lo, hi = sim_ci
    if lo is not None and math.isfinite(lo) and lo > tau:
        return "fail"
    if diff_ci is None:
        return "pass" if hi is not None and math.isfinite(hi) and hi < tau else "inconclusive"
    dhi = diff_ci[1]
    if (hi is not None and math.isfinite(hi) and hi < tau
            and dhi is not None and math.isfinite(dhi) and dhi < 0):
        return "pass"
    return "inconclusive"


# -------------------------------------------------------------------------------------- the base
@dataclass
class Tested:
    """One tested explanation: a stage of a check."""
    stage: int
    block: str | None
    blocks: list[str]
    maps: Maps
    note: str = ""


class SanityCheck(Check):
    """Base of the four sanity checks: subclasses say which models they need and yield the tested
    explanations (:meth:`tested`); this class explains the original model once, measures the
    references, computes every similarity once, aggregates, judges, and saves the figure data."""

    kind = "re-explain"
    higher_is_better = False
    citation = ("Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim. Sanity Checks for Saliency Maps. "
                "NeurIPS 2018")
    extra_defaults: ClassVar[dict[str, Any]] = {}
    # the headline (scorecard, answer table): the rank correlation of the absolute maps, the paper's main
    # measure (its Figures 2 and 4); the check's section shows the verdict of every metric
    scorecard_metric: ClassVar[str | None] = "spearman_abs"

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.defaults = {**DEFAULTS, **cls.extra_defaults}

    # -- models the cell needs
    def models(self, params: dict[str, Any], model_group: str, seed: int,
               world: dict[str, Any] | None = None) -> list[ModelRef]:
        p = resolve_params(self.name, dict(params or {}), self.extra_defaults)
        refs = [ModelRef(model_group, seed)]
        if p["retrain_reference"]:
            refs.append(ModelRef(model_group, seed + p["reference_seed_offset"]))
        return refs

    # -- the subclass's part
    def tested(self, run: "SanityRun") -> Iterator[Tested]:
        raise NotImplementedError

    def extra_columns(self, run: "SanityRun") -> dict[str, Any]:
        """Check-specific columns added to every row."""
        return {}

    def n_stages(self, run: "SanityRun") -> int:
        """Number of tested stages (to validate ``verdict_stage`` before any work)."""
        return 1

    # -- the protocol
    def run(self, ctx: CheckContext) -> list[dict[str, Any]]:
        p = resolve_params(self.name, dict(ctx.params or {}), self.extra_defaults)
        run = SanityRun(self, ctx, p)
        return run.execute()

    # -- figures for the report
    def figures(self, rows: Sequence[dict[str, Any]], artifacts: Sequence[Path]) -> list[tuple[str, bytes]]:
        """(title, PNG bytes) for this check: similarity-vs-stage curves per (model, world, seed) from the
        rows, and the grid of maps per method x stage from the npz files in the cells' ``artifacts``."""
        from xaudit.checks import sanity_figures

        return sanity_figures.figures(self.name, rows, artifacts)


class SanityRun:
    """The state of one cell: images, the original maps (computed once), references, per-image
    similarities per comparison."""

    def __init__(self, check: SanityCheck, ctx: CheckContext, p: dict[str, Any]):
        from xaudit import explain

        self.check, self.ctx, self.p = check, ctx, p
        self.device = ctx.device
        self.model, self.card = ctx.load_model(ModelRef(ctx.model_group, ctx.seed))
        self.x, self.labels, self.indices = load_images(ctx, p)
        self.x = self.x.to(self.device)
        self.labels = self.labels.to(self.device)
        self.explainer = explain.get(ctx.method, **(ctx.method_params or {}))
        self.explain_seed = explain_seed(ctx.seed, ctx.method)
        self.similarity = Similarity(p, self.x.shape[-1])
        self.original_target = predict(self.model, self.x)
        self.original: Maps | None = None

    # -- explaining
    def target_for(self, model, current: torch.Tensor | None = None) -> torch.Tensor:
        """The class a model explains, by the ``target`` rule."""
        rule = self.p["target"]
        if rule == "label":
            return self.labels
        if rule == "original":
            return self.original_target
        return current if current is not None else predict(model, self.x)

    def explain(self, model, target: torch.Tensor) -> Maps:
        return explain_maps(self.explainer, model, self.x, target, self.explain_seed)

    def explain_model(self, model) -> Maps:
        """Maps of ``model`` explaining the class the target rule picks for it."""
        return self.explain(model, self.target_for(model))

    # -- the cell
    def execute(self) -> list[dict[str, Any]]:
        from xaudit import explain

        ctx, p = self.ctx, self.p
        verdict_stage(p["verdict_stage"], self.check.n_stages(self), f"{self.check.name}.verdict_stage")
        # the original maps: explained once, reused by every comparison
        self.original = self.explain(self.model, self.target_for(self.model, self.original_target))
        edge_raw = explain.get("edge")(self.model, self.x, self.original_target)
        self.edge = post_process(edge_raw, self.original_target, [None] * len(self.x))
        noise_seed = stream_seed(ctx.seed, "sanity/calibration")
        rand_raw = explain.get("random", seed=noise_seed)(self.model, self.x, self.original_target,
                                                          generator=rng.generator(noise_seed))
        calibration = post_process(rand_raw, self.original_target, [None] * len(self.x))
        reference = None
        if p["retrain_reference"]:
            ref_model, _ = ctx.load_model(ModelRef(ctx.model_group, ctx.seed + p["reference_seed_offset"]))
            reference = self.explain_model(ref_model)

        sims: dict[tuple[str, int | None], dict[str, torch.Tensor]] = {}
        cmp = self.similarity.compare
        sims[("stage", 0)] = cmp(self.original, self.original, self.edge)
        if reference is not None:
            sims[("retrain_reference", None)] = cmp(self.original, reference, self.edge)
        sims[("calibration", None)] = cmp(self.original, calibration, self.edge)
        figure = FigureData(p["figure_images"])
        figure.add("original", self.original)
        stages: list[Tested] = []
        for t in self.check.tested(self):
            sims[("stage", t.stage)] = cmp(self.original, t.maps, self.edge)
            figure.add(t.block or t.note or f"stage {t.stage}", t.maps)
            t.maps = _summary_only(t.maps)     # free the maps; keep target and failures
            stages.append(t)
        n_stages = len(stages)
        v_stage = verdict_stage(p["verdict_stage"], n_stages, f"{self.check.name}.verdict_stage")
        rows = self.rows(sims, stages, reference, calibration, v_stage)
        figure.reference = reference
        self.save_figure_data(figure, stages, v_stage)
        return rows

    # -- rows
    def common(self) -> dict[str, Any]:
        p = self.p
        return {"target": p["target"], "tau": float(p["tau"]), "ci_level": float(p["ci_level"]),
                "n_boot": int(p["n_boot"]),
                "reference_seed": self.ctx.seed + p["reference_seed_offset"] if p["retrain_reference"] else None,
                "edge_metric": EDGE_METRIC, **self.similarity.columns(), **self.check.extra_columns(self)}

    def _cis(self, series: dict[tuple, torch.Tensor]) -> dict[tuple, tuple[float, float, float, int]]:
        """(mean, ci_low, ci_high, n) for every keyed series of per-image values [N], in one batch."""
        keys = list(series)
        out = bootstrap_mean_cis(torch.stack([series[k] for k in keys]), self.p["n_boot"], self.p["ci_level"],
                                 stream_seed(self.ctx.seed, "sanity/ci"))
        return dict(zip(keys, out))

    def rows(self, sims, stages: list[Tested], reference: Maps, calibration: Maps, v_stage: int
             ) -> list[dict[str, Any]]:
        """Stage rows (0..K), reference and calibration rows, verdict rows, failure rows."""
        ctx, p = self.ctx, self.p
        common = self.common()
        out: list[dict[str, Any]] = []
        series = {(name, stage, metric): sims[(name, stage)][metric][0]
                  for (name, stage) in sims for metric in METRICS}
        has_ref = ("retrain_reference", None) in sims
        for metric in METRICS if has_ref else ():   # paired: tested minus retrain reference, per image
            series[("diff", v_stage, metric)] = (sims[("stage", v_stage)][metric][0]
                                                 - sims[("retrain_reference", None)][metric][0])
        cis = self._cis(series)

        def summary(metric: str, values: torch.Tensor, reasons: list, key: tuple) -> dict[str, Any]:
            mean, lo, hi, k = cis[key]
            why = Counter(r for r, v in zip(reasons, values.tolist()) if not math.isfinite(v))
            return {"metric": metric, "value": finite_or_none(mean), "ci_low": finite_or_none(lo),
                    "ci_high": finite_or_none(hi), "n": k, "n_excluded": len(values) - k,
                    "excluded": "; ".join(f"{r or 'undefined'} ({c})" for r, c in why.most_common())}

        info = {0: ("original", [], self.original)} | {t.stage: (t.block, t.blocks, t.maps) for t in stages}
        original_target = self.original_target.cpu()
        for stage in sorted(info):
            block, blocks, maps = info[stage]
            agree = float((maps.target == original_target).double().mean())
            for metric in METRICS:
                values, reasons = sims[("stage", stage)][metric]
                out.append(row(ctx, **summary(metric, values, reasons, ("stage", stage, metric)),
                               series="stage", stage=stage, block=block, blocks=",".join(blocks),
                               target_agreement=agree, **common))
        for name in ("retrain_reference", "calibration") if has_ref else ("calibration",):
            for metric in METRICS:
                values, reasons = sims[(name, None)][metric]
                out.append(row(ctx, **summary(metric, values, reasons, (name, None, metric)),
                               series=name, stage=None, block=None, blocks="", note=NOTES[name], **common))
        # verdicts at the verdict stage: the similarity's CI and the paired CI against the retrain reference
        block, blocks, _ = info[v_stage]
        for metric in METRICS:
            values, reasons = sims[("stage", v_stage)][metric]
            s = summary(metric, values, reasons, ("stage", v_stage, metric))
            dmean = dlo = dhi = dk = ref_value = None
            if has_ref:
                ref_values, _ = sims[("retrain_reference", None)][metric]
                dmean, dlo, dhi, dk = cis[("diff", v_stage, metric)]
                ref_ok = ref_values[torch.isfinite(ref_values)]
                ref_value = float(ref_ok.mean()) if ref_ok.numel() else None
            v = verdict((as_nan(s["ci_low"]), as_nan(s["ci_high"])), (dlo, dhi) if has_ref else None, p["tau"])
            out.append(row(ctx, **s, verdict=v, series="verdict", stage=v_stage, block=block,
                           blocks=",".join(blocks), diff=finite_or_none(dmean), diff_ci_low=finite_or_none(dlo),
                           diff_ci_high=finite_or_none(dhi), n_paired=dk, reference_value=ref_value,
                           verdict_stage=p["verdict_stage"],
                           rule=VERDICT_RULE if has_ref else VERDICT_RULE_NO_REFERENCE, **common))
        # the inputs a method failed on, with the reasons
        failed_sets = [("original", 0, "original", self.original)]
        if reference is not None:
            failed_sets.append(("retrain_reference", None, None, reference))
        failed_sets += [("stage", t.stage, t.block, t.maps) for t in stages]
        for label, stage, block, maps in failed_sets:
            k = maps.n_failed()
            if k:
                why = Counter(f for f in maps.failed if f is not None)
                out.append(row(ctx, "failed_inputs", k, None, None, len(maps.failed), series="failures",
                               stage=stage, block=block, failed_maps=label,
                               reason="; ".join(f"{r} ({c})" for r, c in why.most_common()), **common))
        return out

    # -- figure data
    def save_figure_data(self, fig: "FigureData", stages: list[Tested], v_stage: int) -> None:
        ctx = self.ctx
        if not ctx.artifacts_dir or fig.limit == 0:
            return
        k = min(fig.limit, len(self.x))
        path = Path(ctx.artifacts_dir) / artifact_name(ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        ref = fig.reference
        reference = {} if ref is None else {"reference_abs": ref.abs[:k, 0].numpy().astype(np.float16),
                                            "reference_signed": ref.signed[:k, 0].numpy().astype(np.float16)}
        np.savez_compressed(
            path,
            check=ctx.check, method=ctx.method, model=ctx.model_group, world=ctx.world_id,
            seed=ctx.seed, stage_labels=np.array(fig.labels),
            stages=np.array([0] + [t.stage for t in stages]), verdict_stage=v_stage,
            images=self.x[:k].detach().cpu().float().numpy().astype(np.float16),
            abs=np.stack(fig.abs).astype(np.float16), signed=np.stack(fig.signed).astype(np.float16),
            failed=np.stack(fig.failed), targets=np.stack(fig.targets), **reference,
        )


@dataclass
class FigureData:
    """The maps of the first ``limit`` images at every stage (for the report's grid figure)."""
    limit: int
    labels: list[str] = field(default_factory=list)
    abs: list[np.ndarray] = field(default_factory=list)
    signed: list[np.ndarray] = field(default_factory=list)
    failed: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    reference: Maps | None = None

    def add(self, label: str, m: Maps) -> None:
        k = self.limit
        self.labels.append(str(label))
        self.abs.append(m.abs[:k, 0].numpy())
        self.signed.append(m.signed[:k, 0].numpy())
        self.failed.append(np.array([f is not None for f in m.failed[:k]]))
        self.targets.append(m.target[:k].numpy())


def artifact_name(ctx: CheckContext) -> str:
    parts = ["sanity", ctx.check, ctx.method, ctx.model_group, ctx.world_id, f"seed{ctx.seed}"]
    return "__".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", s) for s in parts) + ".npz"


def _summary_only(m: Maps) -> Maps:
    empty = torch.zeros(0)
    return Maps(target=m.target, abs=empty, signed=empty, zero_one=empty, failed=m.failed)


