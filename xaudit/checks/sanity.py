"""Shared machinery of the four sanity checks (PROTOCOLS.md section 1, Adebayo et al. 2018).

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

from xaudit.checks.base import Check, CheckContext, ModelRef, row
from xaudit.core import rng
from xaudit.core.errors import ConfigError, NotApplicable, check_choice, check_range

METRICS = ("spearman_abs", "spearman_signed", "ssim", "hog", "edge_similarity")
TARGETS = ("current", "original", "label")  # which logit each model explains
SERIES = ("stage", "retrain_reference", "calibration", "verdict", "failures")
VERDICTS = ("pass", "fail", "inconclusive")

VERDICT_RULE = ("fail if CI_low(similarity at the verdict stage) > tau; pass if CI_high(similarity) < tau and "
                "CI_high(similarity - retrain reference, paired per image) < 0; else inconclusive")
EDGE_METRIC = "spearman of the abs map with the abs map of the `edge` (Sobel) baseline"
METRICS_NOTE = (" Metrics per image: Spearman of abs maps and of signed maps (reported separately: on zero "
                "backgrounds input-times-gradient methods tie on abs maps), SSIM of 0-1 maps, HOG similarity; "
                "edge_similarity is the tested map's Spearman with the Sobel edge map (same rule: failing means "
                "the maps stay edge maps). The retrain reference (same spec, another seed) and a random-map "
                "calibration are measured on the same images.")
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
    base = {**DEFAULTS, **(extra_defaults or {})}
    unknown = sorted(set(params) - set(base))
    if unknown:
        raise ConfigError(f"{check}.{unknown[0]}", f"unknown parameter; {check} takes: {', '.join(sorted(base))}")
    p = {**base, **params}
    _int(f"{check}.n_images", p["n_images"], 2, 1_000_000)
    check_choice(f"{check}.split", p["split"], ("train", "test"))
    check_choice(f"{check}.target", p["target"], TARGETS)
    check_range(f"{check}.tau", p["tau"], -1.0, 1.0)
    if p["verdict_stage"] != "half":
        _int(f"{check}.verdict_stage", p["verdict_stage"], 1, 10_000, extra="or 'half'")
    check_range(f"{check}.ci_level", p["ci_level"], 0.5, 1.0, hi_open=True)
    _int(f"{check}.n_boot", p["n_boot"], 100, 1_000_000)
    _int(f"{check}.reference_seed_offset", p["reference_seed_offset"], 1, 1_000_000)
    check_range(f"{check}.ssim_data_range", p["ssim_data_range"], 0.0, 1e6, lo_open=True)
    if p["hog_pixels_per_cell"] != "auto":
        _int(f"{check}.hog_pixels_per_cell", p["hog_pixels_per_cell"], 1, 1024, extra="or 'auto'")
    check_choice(f"{check}.hog_correlation", p["hog_correlation"], ("spearman", "pearson"))
    _int(f"{check}.figure_images", p["figure_images"], 0, 64)
    check_choice(f"{check}.bn_stats", p["bn_stats"], ("keep", "reset"))
    return p


def _int(field: str, value, lo: int, hi: int, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"must be an integer in [{lo}, {hi}]{' ' + extra if extra else ''}, got {value!r}")
    check_range(field, value, lo, hi)


def verdict_stage(requested, n_stages: int, field: str = "verdict_stage") -> int:
    """The stage the verdict is read at: ``ceil(K/2)`` for "half", else the given stage (1..K)."""
    if requested == "half":
        return max(1, math.ceil(n_stages / 2))
    if not 1 <= int(requested) <= n_stages:
        raise ConfigError(field, f"must be 'half' or a stage in [1, {n_stages}] for this model, got {requested!r}")
    return int(requested)


# ---------------------------------------------------------------------------------- the verdict
def verdict(sim_ci: tuple[float, float], diff_ci: tuple[float, float], tau: float) -> str:
    """The verdict rule (see :data:`VERDICT_RULE`) from the similarity's CI and the paired CI of
    (similarity - retrain reference). Undefined (NaN) CIs give ``inconclusive``."""
    lo, hi = sim_ci
    if lo is not None and math.isfinite(lo) and lo > tau:
        return "fail"
    dhi = diff_ci[1]
    if (hi is not None and math.isfinite(hi) and hi < tau
            and dhi is not None and math.isfinite(dhi) and dhi < 0):
        return "pass"
    return "inconclusive"


def bootstrap_mean_cis(values: torch.Tensor, n_boot: int, level: float, seed: int
                       ) -> list[tuple[float, float, float, int]]:
    """Per row of ``values`` [B, N]: (mean, ci_low, ci_high, n) of its finite entries, by the percentile
    bootstrap of :func:`xaudit.metrics.bootstrap_ci` (rows resampled independently, in one batch) with a
    generator seeded by ``seed``. NaN mean and CI where a row has no finite value."""
    from xaudit import metrics

    ci = metrics.bootstrap_ci(values.detach().double().cpu(), level=level, n_boot=n_boot,
                              generator=rng.generator(seed))
    return [(float(ci.estimate[i]), float(ci.low[i]), float(ci.high[i]), int(ci.n[i]))
            for i in range(values.shape[0])]


# ------------------------------------------------------------------------------------- the maps
@dataclass
class Maps:
    """One explanation of the image set, post-processed once.

    target:   int64 [N], the class each image's map explains
    abs, signed, zero_one: float [N, 1, H, W] (core.maps normalizations); rows of failed inputs are 0
    failed:   per image, None or the reason the method failed on it
    Derived data every comparison reuses (average ranks, HOG descriptors) is computed once, on demand.
    """
    target: torch.Tensor
    abs: torch.Tensor
    signed: torch.Tensor
    zero_one: torch.Tensor
    failed: list[str | None]
    _cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> torch.Tensor:
        return torch.tensor([f is None for f in self.failed], dtype=torch.bool)

    def n_failed(self) -> int:
        return sum(f is not None for f in self.failed)

    def cached(self, key: str, fn) -> torch.Tensor:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]


def post_process(raw: torch.Tensor, target: torch.Tensor, failed: list[str | None]) -> Maps:
    """Abs, signed and 0-1 maps of raw maps [N, C, H, W]; inputs with a non-finite value are marked failed."""
    from xaudit.core import maps

    finite = torch.isfinite(raw.flatten(1)).all(1).tolist()
    failed = [f if f is not None or ok else "map: contains NaN or inf" for f, ok in zip(failed, finite)]
    if not all(finite):
        raw = torch.where(torch.tensor(finite, device=raw.device).view(-1, 1, 1, 1), raw, torch.zeros_like(raw))
    return Maps(target=target.cpu(), abs=maps.abs_map(raw).cpu(), signed=maps.signed_map(raw).cpu(),
                zero_one=maps.zero_one_map(raw).cpu(), failed=list(failed))


def explain_robust(explainer, model, x: torch.Tensor, target: torch.Tensor, seed: int
                   ) -> tuple[torch.Tensor, list[str | None]]:
    """Raw maps [N, C, H, W] and, per image, None or the reason the method failed on it.

    One batched call; when the method fails on some inputs (ExplanationFailed naming them, or a
    failure of the whole call) the finite maps are kept and the rest re-explained in halves until
    each failing input is isolated. NotApplicable (the method cannot run on this model) propagates.
    Stochastic methods draw from a generator seeded with ``seed`` (the same for every model).
    """
    from xaudit.explain import ExplanationFailed

    n = x.shape[0]
    raw = torch.zeros_like(x)
    failed: list[str | None] = [None] * n

    def mark(idx: torch.Tensor, reason: str) -> None:
        for i in idx.tolist():
            failed[i] = reason

    def go(idx: torch.Tensor) -> None:
        try:
            raw[idx] = explainer(model, x[idx], target[idx], generator=rng.generator(seed)).to(raw.dtype)
            return
        except NotApplicable:
            raise
        except ExplanationFailed as e:
            reason = f"{e.field}: {e.reason}"
            bad = [i for i in (e.indices or []) if 0 <= i < len(idx)]
            if bad and len(bad) < len(idx):
                keep = torch.ones(len(idx), dtype=torch.bool)
                keep[bad] = False
                mark(idx[~keep], reason)
                if e.field == "map" and e.maps is not None and e.maps.shape[0] == len(idx):
                    raw[idx[keep]] = e.maps[keep].to(raw.dtype)
                else:
                    go(idx[keep])
                return
        except RuntimeError as e:
            reason = f"{type(e).__name__}: {e}"
        if len(idx) == 1:
            mark(idx, reason)
            return
        half = len(idx) // 2
        go(idx[:half])
        go(idx[half:])

    go(torch.arange(n))
    return raw, failed


# -------------------------------------------------------------------------------- similarities
class Similarity:
    """Per-image similarities between map sets (each map set's HOG computed once), with the
    parameters recorded in the rows."""

    def __init__(self, p: dict[str, Any], size: int):
        from xaudit import metrics

        self.data_range = float(p["ssim_data_range"])
        self.hog_px = (metrics.hog_pixels_per_cell(size, size) if p["hog_pixels_per_cell"] == "auto"
                       else int(p["hog_pixels_per_cell"]))
        self.hog_correlation = p["hog_correlation"]

    def columns(self) -> dict[str, Any]:
        return {"ssim_data_range": self.data_range, "hog_pixels_per_cell": self.hog_px,
                "hog_correlation": self.hog_correlation}

    def _hog(self, m: Maps) -> torch.Tensor:
        """[N, 1, D] HOG descriptors of the 0-1 maps (a 1 x D 'map', so the correlations apply)."""
        from xaudit import metrics

        return m.cached("hog", lambda: metrics.hog(m.zero_one, pixels_per_cell=self.hog_px).unsqueeze(1))

    @staticmethod
    def _ranks(m: Maps, key: str, values) -> torch.Tensor:
        """Average ranks [N, 1, P] (float64) of a map set's values, computed once per map set:
        Spearman's rho is Pearson's r of average ranks (exactly scipy.stats.spearmanr)."""
        from xaudit import metrics

        def rank():
            v = values()
            return metrics.rankdata(v.reshape(v.shape[0], -1)).unsqueeze(1)
        return m.cached("ranks/" + key, rank)

    def compare(self, a: Maps, b: Maps, edge: Maps | None) -> dict[str, tuple[torch.Tensor, list]]:
        """metric -> (float64 [N], per-image reason or None). Values are NaN where a map failed
        (reason ``method failed: ...``) or a similarity is undefined (the measure's reason, e.g.
        ``constant_a``). ``edge_similarity`` is the tested map ``b`` against the edge map."""
        from xaudit import metrics

        def spearman(x: Maps, y: Maps, key: str, values):
            return metrics.pearson(self._ranks(x, key, lambda: values(x)), self._ranks(y, key, lambda: values(y)),
                                   return_reasons=True)

        def hog(m: Maps):
            return self._hog(m)

        res = {
            "spearman_abs": spearman(a, b, "abs", lambda m: m.abs),
            "spearman_signed": spearman(a, b, "signed", lambda m: m.signed),
            "ssim": metrics.ssim(a.zero_one, b.zero_one, data_range=self.data_range, return_reasons=True),
            "hog": (spearman(a, b, "hog", hog) if self.hog_correlation == "spearman"
                    else metrics.pearson(hog(a), hog(b), return_reasons=True)),
        }
        if edge is not None:
            res["edge_similarity"] = spearman(b, edge, "abs", lambda m: m.abs)
        failed = [fa or fb for fa, fb in zip(a.failed, b.failed)]
        bad = torch.tensor([f is not None for f in failed], dtype=torch.bool)
        out = {}
        for k, r in res.items():
            fails = failed if k != "edge_similarity" else b.failed
            mask = bad if k != "edge_similarity" else ~b.ok
            values = torch.where(mask, torch.nan, r.values.detach().double().cpu())
            reasons = [f"method failed: {f}" if f is not None else why for f, why in zip(fails, r.reasons)]
            out[k] = (values, reasons)
        return out


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

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.defaults = {**DEFAULTS, **cls.extra_defaults}

    # -- models the cell needs
    def models(self, ctx_params: dict[str, Any], model_group: str, seed: int) -> list[ModelRef]:
        p = resolve_params(self.name, dict(ctx_params or {}), self.extra_defaults)
        return [ModelRef(model_group, seed), ModelRef(model_group, seed + p["reference_seed_offset"])]

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
    @classmethod
    def figures(cls, rows: Sequence[dict[str, Any]], artifacts_dir: str | Path | None = None
                ) -> list[tuple[str, bytes]]:
        """(title, PNG bytes) for this check: similarity-vs-stage curves per (model, world, seed) from the
        rows, and the grid of maps per method x stage from the npz files under ``artifacts_dir``."""
        from xaudit.checks import sanity_figures

        return sanity_figures.figures(cls.name, rows, artifacts_dir)


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
        self.explain_seed = _seed(ctx.seed, f"sanity/explain/{ctx.method}")
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
        from xaudit.checks.memo import EXPLANATIONS

        key = EXPLANATIONS.key(self.explainer, model, self.x, target, self.explain_seed)
        raw, failed = EXPLANATIONS.get_or_compute(
            key, lambda: explain_robust(self.explainer, model, self.x, target, self.explain_seed))
        return post_process(raw, target, failed)

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
        noise_seed = _seed(ctx.seed, "sanity/calibration")
        rand_raw = explain.get("random", seed=noise_seed)(self.model, self.x, self.original_target,
                                                          generator=rng.generator(noise_seed))
        calibration = post_process(rand_raw, self.original_target, [None] * len(self.x))
        ref_seed = ctx.seed + p["reference_seed_offset"]
        ref_model, _ = ctx.load_model(ModelRef(ctx.model_group, ref_seed))
        reference = self.explain_model(ref_model)

        sims: dict[tuple[str, int | None], dict[str, torch.Tensor]] = {}
        cmp = self.similarity.compare
        sims[("stage", 0)] = cmp(self.original, self.original, self.edge)
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
                "n_boot": int(p["n_boot"]), "reference_seed": self.ctx.seed + p["reference_seed_offset"],
                "edge_metric": EDGE_METRIC, **self.similarity.columns(), **self.check.extra_columns(self)}

    def _cis(self, series: dict[tuple, torch.Tensor]) -> dict[tuple, tuple[float, float, float, int]]:
        """(mean, ci_low, ci_high, n) for every keyed series of per-image values [N], in one batch."""
        keys = list(series)
        out = bootstrap_mean_cis(torch.stack([series[k] for k in keys]), self.p["n_boot"], self.p["ci_level"],
                                 _seed(self.ctx.seed, "sanity/ci"))
        return dict(zip(keys, out))

    def rows(self, sims, stages: list[Tested], reference: Maps, calibration: Maps, v_stage: int
             ) -> list[dict[str, Any]]:
        """Stage rows (0..K), reference and calibration rows, verdict rows, failure rows."""
        ctx, p = self.ctx, self.p
        common = self.common()
        out: list[dict[str, Any]] = []
        series = {(name, stage, metric): sims[(name, stage)][metric][0]
                  for (name, stage) in sims for metric in METRICS}
        for metric in METRICS:   # paired: tested minus retrain reference, per image
            series[("diff", v_stage, metric)] = (sims[("stage", v_stage)][metric][0]
                                                 - sims[("retrain_reference", None)][metric][0])
        cis = self._cis(series)

        def summary(metric: str, values: torch.Tensor, reasons: list, key: tuple) -> dict[str, Any]:
            mean, lo, hi, k = cis[key]
            why = Counter(r for r, v in zip(reasons, values.tolist()) if not math.isfinite(v))
            return {"metric": metric, "value": _nan_none(mean), "ci_low": _nan_none(lo),
                    "ci_high": _nan_none(hi), "n": k, "n_excluded": len(values) - k,
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
        for name in ("retrain_reference", "calibration"):
            for metric in METRICS:
                values, reasons = sims[(name, None)][metric]
                out.append(row(ctx, **summary(metric, values, reasons, (name, None, metric)),
                               series=name, stage=None, block=None, blocks="", note=NOTES[name], **common))
        # verdicts at the verdict stage: the similarity's CI and the paired CI against the retrain reference
        block, blocks, _ = info[v_stage]
        for metric in METRICS:
            values, reasons = sims[("stage", v_stage)][metric]
            ref_values, _ = sims[("retrain_reference", None)][metric]
            s = summary(metric, values, reasons, ("stage", v_stage, metric))
            dmean, dlo, dhi, dk = cis[("diff", v_stage, metric)]
            ref_ok = ref_values[torch.isfinite(ref_values)]
            v = verdict((_nan(s["ci_low"]), _nan(s["ci_high"])), (dlo, dhi), p["tau"])
            out.append(row(ctx, **s, verdict=v, series="verdict", stage=v_stage, block=block,
                           blocks=",".join(blocks), diff=_nan_none(dmean), diff_ci_low=_nan_none(dlo),
                           diff_ci_high=_nan_none(dhi), n_paired=dk,
                           reference_value=float(ref_ok.mean()) if ref_ok.numel() else None,
                           verdict_stage=p["verdict_stage"], rule=VERDICT_RULE, **common))
        # the inputs a method failed on, with the reasons
        failed_sets = [("original", 0, "original", self.original), ("retrain_reference", None, None, reference)]
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
        np.savez_compressed(
            path,
            check=ctx.check, method=ctx.method, model=ctx.model_group, world=str(ctx.world.get("world")),
            seed=ctx.seed, stage_labels=np.array(fig.labels),
            stages=np.array([0] + [t.stage for t in stages]), verdict_stage=v_stage,
            images=self.x[:k].detach().cpu().float().numpy().astype(np.float16),
            abs=np.stack(fig.abs).astype(np.float16), signed=np.stack(fig.signed).astype(np.float16),
            failed=np.stack(fig.failed),
            reference_abs=ref.abs[:k, 0].numpy().astype(np.float16),
            reference_signed=ref.signed[:k, 0].numpy().astype(np.float16),
            targets=np.stack(fig.targets),
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
    parts = ["sanity", ctx.check, ctx.method, ctx.model_group, str(ctx.world.get("world")), f"seed{ctx.seed}"]
    return "__".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", s) for s in parts) + ".npz"


def _summary_only(m: Maps) -> Maps:
    empty = torch.zeros(0)
    return Maps(target=m.target, abs=empty, signed=empty, zero_one=empty, failed=m.failed)


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _nan_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _seed(seed: int, stream: str) -> int:
    """A seed for a named random stream of this cell (a pure function of both)."""
    return int(rng.hash_u64(seed, rng.stream_id(stream), [0], 1)[0, 0] >> np.uint64(1))


# ------------------------------------------------------------------------------- images, models
@torch.inference_mode()
def predict(model, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """int64 [N]: the model's argmax class (eval mode for the call; channels-last input, which CPU
    convolutions run faster; the values do not depend on the layout)."""
    was = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch].contiguous(memory_format=torch.channels_last)).argmax(1)
                          for i in range(0, len(x), batch)])
    finally:
        model.train(was)


@torch.no_grad()
def num_classes(model, x: torch.Tensor) -> int:
    return int(model(x[:1]).shape[1])


def load_images(ctx: CheckContext, p: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images float [N, C, H, W] in [0, 1], true labels int64 [N], sample indices [N]).

    ``ctx.extra["images"]`` (and optionally ``"labels"``) supplies the user's own images (``xaudit
    audit``, tests); otherwise the first ``n_images`` samples of the world's ``split``."""
    if "images" in ctx.extra:
        x = torch.as_tensor(ctx.extra["images"]).float()
        if x.ndim != 4:
            raise ConfigError("images", f"must be a tensor [N, C, H, W], got shape {tuple(x.shape)}")
        x = x[: p["n_images"]]
        labels = ctx.extra.get("labels")
        labels = (torch.as_tensor(labels, dtype=torch.int64)[: len(x)] if labels is not None
                  else torch.zeros(len(x), dtype=torch.int64))
        if p["target"] == "label" and ctx.extra.get("labels") is None:
            raise ConfigError("target", "'label' needs the images' labels; pass them or use 'current'")
        return x, labels, torch.arange(len(x))
    from xaudit import world as world_mod

    cfg = dict(ctx.world)
    name = cfg.pop("world", None) or cfg.pop("name", None)
    if name is None:
        raise ConfigError("world", f"the cell's world config names no world: {ctx.world}")
    w = world_mod.get(name, **cfg)
    batch = w.sample(range(p["n_images"]), split=p["split"])
    return batch.images, batch.true_labels, batch.indices
