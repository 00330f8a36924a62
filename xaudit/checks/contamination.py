"""Model contamination, the debugging test (docs/protocols.md#2-debugging-tests, Adebayo et al. 2020):
cascading re-initialization (docs/protocols.md#13-cascading-and-independent-randomization) read as a
bug. The bug is a model whose top half of the blocks was re-initialized (a model that was never
trained there); the reference is the same spec trained with another seed. Does the buggy model's map
look different from the trained model's map, by more than a retrained model's map does?

Nothing is computed twice: this check is *derived* (``derives_from``). Its cell reads the rows that
the ``cascading_randomization`` cell of the same method, model group, world and seed stored (the
verdict-stage similarity, the retrain reference, the random-map calibration and the paired difference
with its CI, all measured there on the same images) and restates them in the debugging-test frame:

- ``buggy``: similarity of the contaminated model's maps to the trained model's maps, at the stage
  where the top half of the blocks is re-initialized (the cascading check's ``verdict_stage``);
- ``reference``: similarity of the retrained model's maps (same spec, another seed) to them;
- ``calibration``: the random map's similarity to them;
- ``difference``: buggy minus reference, paired per image (the cascading cell's ``diff`` and its CI);
- ``verdict`` per measure: pass (the maps reveal the contamination) when the difference's CI lies
  below ``-margin``; fail when it lies above; inconclusive otherwise.

The sanity check asks "do the maps move at all (similarity below tau)"; this one asks "would a user
comparing with a healthy model see the difference". A cascading cell run without its retrain
reference (``retrain_reference: false``) gives no verdict here: the cell is not applicable.
"""
from __future__ import annotations

from typing import Any, Sequence

from xaudit.checks import debugging
from xaudit.checks.base import CHECKS, Check, CheckContext, ModelRef, row
from xaudit.checks.toolkit import merge_params
from xaudit.core.errors import NotApplicable, check_range

MEASURES = ("spearman_abs", "spearman_signed", "ssim", "hog")   # edge_similarity is no similarity to the original


@CHECKS.register("contamination")
class ModelContamination(Check):
    """Cascading randomization as a debugging test, from the stored cascading rows."""
    name = "contamination"
    bug = "model contamination"
    kind = "score"
    higher_is_better = None
    citation = debugging.CITATION
    derives_from = "cascading_randomization"
    scorecard_metric = "spearman_abs"
    defaults = {"margin": 0.05}
    description = ("The bug: the model with the top half of its blocks re-initialized (cascading randomization's "
                   "verdict stage); the reference: the same spec retrained with another seed. Per measure "
                   "(Spearman of abs and of signed maps, SSIM, HOG) the similarity of each to the trained "
                   "model's maps on the same images, read from the cascading_randomization cell: "
                   + debugging.rule_text("contaminated minus retrained similarity, paired per image", 0.05, "below")
                   + " (margin = the `margin` parameter).")

    def models(self, params: dict[str, Any], model_group: str, seed: int,
               world: dict[str, Any] | None = None) -> list[ModelRef]:
        return []

    def resolve(self, params: dict[str, Any] | None) -> dict[str, Any]:
        p = merge_params(self.name, dict(params or {}), self.defaults)
        check_range(f"{self.name}.margin", p["margin"], 0.0, 2.0)
        return p

    def run(self, ctx: CheckContext) -> list[dict[str, Any]]:
        p = self.resolve(ctx.params)
        upstream = ctx.upstream_rows
        verdicts = {r["metric"]: r for r in upstream if r.get("series") == "verdict"}
        refs = {r["metric"]: r for r in upstream if r.get("series") == "retrain_reference"}
        cals = {r["metric"]: r for r in upstream if r.get("series") == "calibration"}
        if not verdicts:
            raise NotApplicable(f"the {self.derives_from} cell stored no verdict rows to read")
        if not refs:
            raise NotApplicable(f"the {self.derives_from} cell ran without its retrain reference "
                                f"(retrain_reference: false): there is no healthy model to compare with; set "
                                f"checks.{self.derives_from}.params.retrain_reference: true")
        margin = float(p["margin"])
        rule = debugging.rule_text("contaminated minus retrained similarity, paired per image", margin, "below")
        out: list[dict[str, Any]] = []
        for metric in MEASURES:
            v = verdicts.get(metric)
            if v is None:
                continue
            common = {"margin": margin, "rule": rule, "stage": v.get("stage"), "block": v.get("block"),
                      "blocks": v.get("blocks"), "upstream_check": self.derives_from, "upstream_cell": ctx.upstream_key,
                      "reference_seed": v.get("reference_seed"), "ci_level": v.get("ci_level"),
                      "n_boot": v.get("n_boot"), "target": v.get("target")}
            out.append(row(ctx, metric, v["value"], v["ci_low"], v["ci_high"], v["n"], series="buggy",
                           note="contaminated model (top half re-initialized) vs trained model", **common))
            r = refs.get(metric)
            if r is not None:
                out.append(row(ctx, metric, r["value"], r["ci_low"], r["ci_high"], r["n"], series="reference",
                               note="retrained model (another seed) vs trained model", **common))
            c = cals.get(metric)
            if c is not None:
                out.append(row(ctx, metric, c["value"], c["ci_low"], c["ci_high"], c["n"], series="calibration",
                               note="random map vs trained model", **common))
            d, lo, hi, n = v.get("diff"), v.get("diff_ci_low"), v.get("diff_ci_high"), v.get("n_paired")
            out.append(row(ctx, metric, d, lo, hi, n, series="difference", **common))
            out.append(row(ctx, metric, d, lo, hi, n, verdict=debugging.margin_verdict(lo, hi, margin, "below"),
                           series="verdict", sanity_verdict=v.get("verdict"), **common))
        return out

    def figures(self, rows: Sequence[dict[str, Any]], artifacts) -> list[tuple[str, bytes]]:
        return debugging.measures_figure(self.name, rows)
