"""Localization against ground-truth masks (the measures and verdicts of docs/protocols.md#4-trojans,
trojan localization): do an attribution method's maps point at the region a per-image mask marks?

The ground truth is the world's per-image mask, ``batch.object_mask`` (bool [N, H, W]): on the
procedural worlds (shapes, digits, ...) the pixels of the object that defines the true class; on a
user's image folder (``xaudit audit --masks DIR``) the mask the user gave for each image (the
footprint of a bug, or the object). The measures and verdicts are those of
:mod:`xaudit.checks.trojan_localization` (Casper et al. 2023), with the mask in place of the
trigger's footprint; relevance mass accuracy is Arras et al. 2022 (CLEVR-XAI).

One cell = one attribution method x one model (the cell's model group at the cell's seed; no retrained
reference) x world x seed:

1. images: the first ``n_images`` images of ``split`` (default ``test``) of the cell's world
   (:func:`xaudit.checks.toolkit.load_batch`);
2. target (``target``): ``current`` (default) = the model's predicted class (argmax), ``label`` = the
   image's true label. The method explains the target on **all** ``n_images`` images, exactly as the
   sanity checks explain them (same images, targets and :func:`explain_seed`), so the worker's
   explanation memo (:mod:`xaudit.checks.memo`) serves one explanation to both families;
3. masks absent: an image whose mask is all False has no ground truth (a user gave no mask for it) and
   is left out after explaining; how many is the ``no_mask`` row (written on every cell, 0 when every
   image has a mask). A world without any mask raises NotApplicable (the runner records "not
   applicable"), telling ``xaudit audit`` users to pass ``--masks DIR``;
4. per masked image, against its mask g (maps reduced as a = sum_c |attr|, abs channel reduction):
   ``trigger_distance`` (L1: mean |a / max(a) - g|, lower is better), ``mask_pearson`` (Pearson of a
   with g), ``mass_accuracy`` (share of a's mass inside g), ``pointing_game`` (is the maximum inside
   g; ties: the fraction of maxima inside) and ``pixel_auroc`` (a's pixels as scores of g's). The
   ``edge`` baseline (Sobel magnitude of the image) and the ``blank`` guess (a = 0) are scored on the
   same images. A map the method failed on (or one with NaN / inf) is NaN in every measure and left
   out of the CIs (``n_failed``); undefined values (a constant map's Pearson, an all-zero map's mass)
   are NaN too and counted in ``n_excluded``;
5. paired per-image differences with percentile-bootstrap CIs (:func:`debugging.series_cis`): method
   minus ``edge`` on every measure and method minus ``blank`` on L1.

Verdicts (``verdict_key = ("metric",)``, two rows per cell; ``pass`` = the maps reveal the masked
region, ``fail`` = they do not, ``inconclusive`` = the CI does not decide), with
:func:`debugging.margin_verdict` at margin 0:

- ``l1_vs_blank`` (Casper et al.'s criterion): ``pass`` when the CI of L1(method) - L1(blank) lies below
  0, ``fail`` when it lies at or above 0. With a scaled to max 1 this is the same as putting more than
  half of the map's mass inside the mask, so it favours sparse maps, and a mask covering more than
  half of the image cannot be beaten by any map that is not itself mostly inside it;
- ``pearson_vs_edge`` (the scorecard's verdict): ``pass`` when the CI of Pearson(method) -
  Pearson(edge) lies above 0, ``fail`` when at or below 0: a method that does not beat the image's own
  edges says no more about the region than the image does.

Rows: ``series`` ``method`` / ``edge`` / ``blank`` (mean and CI of each measure; the blank guess's
undefined measures are left out), ``difference`` (``baseline`` edge or blank), ``verdict``, ``no_mask``;
every row carries ``target`` (the rule), ``split``, ``n_images`` (explained), ``n_masked``, ``n_failed``,
``mask_area`` (the masks' mean area fraction), ``ci_level``, ``n_boot``, ``map_reduction``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from xaudit.checks.base import CHECKS, VERDICT_CODE, Check, CheckContext, ModelRef, row, rows_by_model
from xaudit.checks.debugging import grids, save_panels, series_cis
from xaudit.checks.toolkit import (check_map_params, explain_raw, explain_seed, finite_maps, load_batch,
                                   merge_params, predict)
from xaudit.checks.trojan_localization import (_scaled, blank_localization, localization, localization_rows,
                                               localization_series)
from xaudit.core.errors import NotApplicable, check_choice

CITATION = ("Casper, Li, Li, Bu, Zhang, Hariharan, Hadfield-Menell. Red Teaming Deep Neural Networks with "
            "Feature Synthesis Tools. NeurIPS 2023 (the L1-vs-blank criterion); Arras, Osman, Samek. CLEVR-XAI: "
            "A benchmark dataset for the ground truth evaluation of neural network explanations. Information "
            "Fusion 2022 (relevance mass accuracy)")
TARGETS = ("current", "label")
METHOD_PANEL = "method (a = sum|attr| / max)"

DEFAULTS: dict[str, Any] = {
    "n_images": 64,             # images explained (the masked ones among them are scored)
    "split": "test",
    "target": "current",        # current: the model's argmax (as the sanity checks); label: the true label
    "ci_level": 0.95,
    "n_boot": 2000,
    "ssim_data_range": 1.0,     # (unused here; shared map parameters)
    "hog_pixels_per_cell": "auto",
    "hog_correlation": "spearman",
    "figure_images": 4,         # masked images whose maps are saved for the report
}


def _mask_note(note: str) -> str:
    """A trojan_localization measure note with the footprint called the mask."""
    return note.replace("the trigger's footprint", "the mask").replace("the footprint", "the mask")


@CHECKS.register("localization")
class Localization(Check):
    """Attribution maps against the world's per-image ground-truth masks (object, or a user's masks)."""
    name = "localization"
    bug = ""   # ground truth, no planted bug: not in the answer table
    kind = "re-explain"
    higher_is_better = None
    citation = CITATION
    defaults = DEFAULTS
    method_kinds = ("attribution",)
    verdict_key = ("metric",)
    scorecard_metric = "pearson_vs_edge"
    description = (
        "Localization against ground-truth masks (Casper et al. 2023's L1 criterion; relevance mass accuracy "
        "of Arras et al. 2022): on the first n_images images of the world's split, the method explains the "
        "model's predicted class (target: current; or the true label) exactly as the sanity checks do; images "
        "without a mask (all False: a user gave none) are left out and counted (no_mask row), and a world "
        "with no mask at all is not applicable (xaudit audit: pass --masks DIR). Per masked image the map a = "
        "sum_c|attr| / max is scored against the mask g: L1 (mean |a - g|, lower is better), Pearson with g, "
        "mass inside g, pointing game and pixel AUROC, paired against the blank guess (a = 0) and the edge "
        "(Sobel) map on the same images, with bootstrap CIs; failed maps are left out (n_failed). Verdicts: "
        "l1_vs_blank passes (the maps reveal the masked region) when the CI of L1(method) - L1(blank) is "
        "below 0 and fails when it is at or above 0 (equivalent to more than half of the map's mass inside "
        "the mask, which favours sparse maps and small masks); pearson_vs_edge (the scorecard's) passes when "
        "the CI of Pearson(method) - Pearson(edge) is above 0 and fails when it is at or below 0; otherwise "
        "inconclusive.")

    def resolve(self, params: dict[str, Any] | None) -> dict[str, Any]:
        p = merge_params(self.name, dict(params or {}), DEFAULTS)
        check_map_params(self.name, p)
        check_choice(f"{self.name}.split", p["split"], ("train", "test"))
        check_choice(f"{self.name}.target", p["target"], TARGETS)
        return p

    def models(self, params: dict[str, Any], model_group: str, seed: int,
               world: dict[str, Any] | None = None) -> list[ModelRef]:
        self.resolve(params)
        return [ModelRef(model_group, seed)]

    def run(self, ctx: CheckContext) -> list[dict[str, Any]]:
        from xaudit import explain

        p = self.resolve(ctx.params)
        model, _card = ctx.load_model(ModelRef(ctx.model_group, ctx.seed))
        batch = load_batch(ctx, p["n_images"], p["split"])
        masks = batch.object_mask.bool().cpu()
        has_mask = masks.flatten(1).any(1)
        n_total = len(has_mask)
        if not bool(has_mask.any()):
            raise NotApplicable(
                f"{self.name}: world {ctx.world_id!r} has no ground-truth masks on the first {n_total} "
                f"{p['split']} images (every object mask is empty), so there is nothing to localize; for "
                "`xaudit audit`, pass --masks DIR (one mask image per input image)")
        explainer = explain.get(ctx.method, **(ctx.method_params or {}))
        x_all = batch.images
        xd = x_all.to(ctx.device)
        # explained on all n_images, with the sanity checks' images, targets and seed (one memo entry)
        target_all = predict(model, xd) if p["target"] == "current" else batch.true_labels.to(ctx.device)
        raw_all, failed_all = finite_maps(*explain_raw(explainer, model, xd, target_all.to(ctx.device),
                                                       explain_seed(ctx.seed, ctx.method)))
        keep = has_mask.nonzero().flatten()
        x, mask = x_all[keep].cpu(), masks[keep]
        raw = raw_all.cpu()[keep]
        target = target_all.cpu()[keep]
        failed = [failed_all[i] for i in keep.tolist()]
        edge_raw = explain.get("edge")(model, x, target).cpu()

        values = {"method": localization(raw, mask, failed),
                  "edge": localization(edge_raw, mask, [None] * len(x)),
                  "blank": blank_localization(mask)}
        series = localization_series(values)
        cis = series_cis(series, p, ctx.seed, self.name)

        n_failed = sum(f is not None for f in failed)
        reasons = [None if f is None else f"method failed: {f}" for f in failed]
        common = {"target": p["target"], "split": p["split"], "n_images": n_total, "n_masked": len(x),
                  "n_failed": n_failed, "mask_area": float(mask.double().mean()), "ci_level": float(p["ci_level"]),
                  "n_boot": int(p["n_boot"]), "map_reduction": "abs"}
        n_none = n_total - len(x)
        out = [row(ctx, "no_mask", n_none, None, None, n_total, series="no_mask",
                   note=f"{n_none} of the first {n_total} {p['split']} images have no mask (all False) and are left "
                        "out of every measure", **common)]
        out += localization_rows(ctx, series, cis, reasons, note=_mask_note,
                                 rule=lambda r: r.replace("the trigger", "the masked region"), **common)

        k = min(int(p["figure_images"]), len(x))
        if k:
            save_panels(ctx, x[:k], {METHOD_PANEL: _scaled(raw[:k]), "edge": _scaled(edge_raw[:k]),
                                     "mask": mask[:k].float()},
                        failed={METHOD_PANEL: [f is not None for f in failed[:k]]}, target=p["target"])
        return out

    def figures(self, rows: Sequence[dict[str, Any]], artifacts: Sequence[Path]) -> list[tuple[str, bytes]]:
        """Per (model, world, seed): L1 and Pearson with the mask per method (mean and CI) beside the blank
        guess's and the edge map's, with each method's verdict letter; and the map grids (input, the
        method's a, the edge map, the mask, for every method) of the first two saved images."""
        return scores_figure(rows) + grids(self.name, artifacts, n_inputs=2,
                                           caption="One row per method for one image: the method's map, the edge map "
                                                   "and the object mask. A method that localizes the object puts its "
                                                   "map on the mask rather than on every edge.")


def scores_figure(rows: Sequence[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """Per (model, world, seed): the methods' mean L1 (top, lower is better) and Pearson with the mask
    (bottom) with CIs, methods sorted by L1; the blank guess's L1 and the edge map's values as reference
    lines; each method's verdict letter above it."""
    from matplotlib.figure import Figure

    from xaudit.core.imaging import png

    out = []
    for (model, world, seed), rs in rows_by_model(rows, Localization.name, ("method", "edge", "blank", "verdict")):
        def pick(series, metric):
            return {r["method"]: r for r in rs if r.get("series") == series and r.get("metric") == metric}
        l1 = pick("method", "trigger_distance")
        methods = sorted(l1, key=lambda m: (l1[m]["value"] is None, l1[m]["value"] or 0.0))
        if not methods:
            continue
        verdicts = {(r["method"], r["metric"]): r.get("verdict") for r in rs if r.get("series") == "verdict"}
        fig = Figure(figsize=(max(6.0, 0.32 * len(methods) + 1.5), 5.2), dpi=100, layout="constrained")
        axes = fig.subplots(2, 1, sharex=True)
        xs = list(range(len(methods)))
        for ax, metric, vname, ylabel in ((axes[0], "trigger_distance", "l1_vs_blank", "L1 to mask (lower better)"),
                                          (axes[1], "mask_pearson", "pearson_vs_edge", "Pearson with mask")):
            per = pick("method", metric)
            vals = [_nan(per.get(m, {}).get("value")) for m in methods]
            lo = [v - _nan(per.get(m, {}).get("ci_low")) for m, v in zip(methods, vals)]
            hi = [_nan(per.get(m, {}).get("ci_high")) - v for m, v in zip(methods, vals)]
            ax.errorbar(xs, vals, yerr=[lo, hi], fmt="o", color="C0", ms=4, capsize=2, lw=1)
            for series, style, label in (("blank", "--", "blank guess"), ("edge", ":", "edge map")):
                v = next((_nan(r["value"]) for r in pick(series, metric).values() if r.get("value") is not None),
                         math.nan)
                if math.isfinite(v):
                    ax.axhline(v, ls=style, color="0.4", lw=1, label=f"{label} {v:.3f}")
            for i, m in enumerate(methods):
                ax.annotate(VERDICT_CODE.get(verdicts.get((m, vname)), ""), (i, 1.0),
                            xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=7)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.legend(fontsize=7, loc="best")
            ax.grid(axis="y", alpha=0.3)
        axes[1].set_xticks(xs, methods, rotation=60, ha="right", fontsize=7)
        fig.suptitle(f"localization: mean and CI per method over the masked images; letters: verdict "
                     f"({model}, {world}, seed {seed})", fontsize=8)
        out.append((f"localization: L1 and Pearson with the mask per method ({model}, {world}, seed {seed})",
                    png(fig), "Top: L1 distance between each method's 0-1 map and the object mask (lower is better); "
                              "bottom: Pearson correlation with it (higher is better); dots are means with 95% CIs. A "
                              "method localizes the object when it beats both reference lines: the blank guess's L1 "
                              "and the edge map, which sees only the pixels."))
    return out


def _nan(v) -> float:
    return math.nan if v is None else float(v)
