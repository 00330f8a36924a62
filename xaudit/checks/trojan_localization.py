"""Trojan localization (docs/protocols.md#4-trojans, Casper et al. 2023): do an attribution method's maps
point at a trojan's trigger on triggered images?

The cell's model (group ``trojans``; refused unless its card says every trojan took) carries trojans
planted by data poisoning; their configs are on its card (``card["spec"]["bugs"]``). For each patch and
natural-feature trojan (style trojans restyle the whole image: their footprint covers every pixel, so
no localization measure is defined; they are left out, with that reason in the description):

1. the first ``max_candidates`` test images are rendered with the trigger forced on every eligible
   image; of those whose true class is not the trojan's target, the first ``n_images`` that the model
   assigns to the target (the trigger actually flipped them) are kept. Fewer than ``min_images``: the
   trojan gets a ``too_few`` row and no verdict;
2. the method explains the target class (the model's prediction) on them; the ``blank`` guess
   (a = 0) and the ``edge`` baseline (Sobel magnitude of the image) are scored on the same images;
3. per image, against the trigger's footprint g (bool [H, W], from the world):
   ``trigger_distance`` (L1: mean |a - g|, a = sum_c |attr| / max; lower is better), ``mask_pearson``
   (Pearson of a with g), ``mass_accuracy`` (share of a's mass inside g), ``pointing_game`` (is the
   maximum inside g) and ``pixel_auroc`` (a's pixels as scores of g's);
4. paired differences with bootstrap CIs: method minus ``blank`` on L1 (the published comparison) and
   method minus ``edge`` on every measure.

Verdicts (``verdict_key = ("metric", "trojan")``), one per trojan and one per family (``trojan`` =
``family:patch``, the family's images pooled):

- ``l1_vs_blank`` (the published criterion): ``pass`` (reveals the trigger) when the CI of
  L1(method) - L1(blank) lies below 0, ``fail`` when it lies at or above 0, else ``inconclusive``.
  With a scaled to max 1, beating the blank guess is the same as putting more than half of the map's
  mass inside the footprint (|a - g| summed is mass outside + (area - mass inside)), so it rewards sparse
  maps;
- ``pearson_vs_edge``: ``pass`` when the CI of Pearson(method) - Pearson(edge) lies above 0, ``fail`` when
  at or below 0. The edge map outlines the trigger among every other edge of the image: a method that
  does not beat it says no more about the trigger than the image itself.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch

from xaudit.checks.base import CHECKS, Check, CheckContext, ModelRef, row
from xaudit.checks.debugging import margin_verdict, save_panels, series_cis, summary
from xaudit.checks.toolkit import (check_map_params, explain_raw, explain_seed, finite_maps, finite_or_none, make_world,
                                   merge_params, predict, trojaned_model)
from xaudit.core.errors import ConfigError, check_bool, check_int

CITATION = ("Casper, Li, Li, Bu, Zhang, Hariharan, Hadfield-Menell. Red Teaming Deep Neural Networks with "
            "Feature Synthesis Tools. NeurIPS 2023")
FAMILIES = ("patch", "natural")           # style trojans' footprint is the whole image
MEASURES = ("trigger_distance", "mask_pearson", "mass_accuracy", "pointing_game", "pixel_auroc")
VERDICTS = {
    # verdict metric: (measure, baseline, direction the method must differ in)
    "l1_vs_blank": ("trigger_distance", "blank", "below"),
    "pearson_vs_edge": ("mask_pearson", "edge", "above"),
}
RULES = {
    "l1_vs_blank": "pass (reveals the trigger) if CI_high(L1(method) - L1(blank guess)) < 0; fail if CI_low >= 0; "
                   "else inconclusive (paired per image)",
    "pearson_vs_edge": "pass (reveals the trigger) if CI_low(Pearson(method) - Pearson(edge)) > 0; fail if "
                       "CI_high <= 0; else inconclusive (paired per image)",
}
NOTES = {
    "trigger_distance": "L1 mean |a - g|, a = sum_c|attr| / max, g the trigger's footprint (lower is better)",
    "mask_pearson": "Pearson correlation of a with the footprint",
    "mass_accuracy": "share of a's mass inside the footprint",
    "pointing_game": "1 if the map's maximum lies inside the footprint (ties: the fraction of maxima inside)",
    "pixel_auroc": "AUROC of a's pixels as scores of the footprint's pixels",
}

DEFAULTS: dict[str, Any] = {
    "n_images": 100,            # triggered images per trojan (Casper et al.: 100)
    "max_candidates": 2000,     # test images rendered with the trigger to find n_images that flip
    "min_images": 10,           # fewer flipped images: no verdict for that trojan
    "ci_level": 0.95,
    "n_boot": 2000,
    "ssim_data_range": 1.0,     # (unused here; shared map parameters)
    "hog_pixels_per_cell": "auto",
    "hog_correlation": "spearman",
    "figure_images": 4,         # triggered images per trojan whose maps are saved for the report
    "require_bug_took": True,   # refuse a model whose card says a trojan did not take
}


@CHECKS.register("trojan_localization")
class TrojanLocalization(Check):
    """Attribution maps against the trigger's footprint on triggered images, per trojan."""
    name = "trojan_localization"
    bug = "{trojan} trojan"
    bug_rows = {"trojan": "family:*"}
    kind = "re-explain"
    higher_is_better = None
    citation = CITATION
    defaults = DEFAULTS
    worlds = ("shapes",)
    model_groups = ("trojans",)
    verdict_key = ("metric", "trojan")
    scorecard_metric = "l1_vs_blank"
    description = (
        "Trojan localization (Casper et al. 2023): on test images of other classes that a trojan's trigger "
        "flips to its target (up to n_images per trojan), the method explains the target; its map a = "
        "sum_c|attr| / max is scored against the trigger's footprint: L1 (mean |a - g|, the published "
        "score), Pearson with g, mass inside g, pointing game and pixel AUROC, paired against the blank "
        "guess (a = 0) and the edge (Sobel) map on the same images. Verdicts per trojan and per family "
        "(images pooled): l1_vs_blank passes when the CI of L1(method) - L1(blank) is below 0 (equivalent "
        "to more than half of the map's mass inside the footprint, which favours sparse maps); "
        "pearson_vs_edge passes when the CI of Pearson(method) - Pearson(edge) is above 0. Patch and "
        "natural-feature trojans only: a style trojan restyles the whole image, so its footprint is every "
        "pixel and no localization measure is defined (L1 against an all-ones mask only measures how "
        "uniform the map is; Pearson, mass, pointing and AUROC are undefined).")

    def resolve(self, params: dict[str, Any] | None) -> dict[str, Any]:
        p = merge_params(self.name, dict(params or {}), DEFAULTS)
        check_map_params(self.name, p)
        check_int(f"{self.name}.max_candidates", p["max_candidates"], 1, 1_000_000)
        check_int(f"{self.name}.min_images", p["min_images"], 2, 1_000_000)
        check_bool(f"{self.name}.require_bug_took", p["require_bug_took"])
        if p["min_images"] > p["n_images"]:
            raise ConfigError(f"{self.name}.min_images", f"must be <= n_images ({p['n_images']}); got "
                                                          f"{p['min_images']}")
        return p

    def models(self, params: dict[str, Any], model_group: str, seed: int,
               world: dict[str, Any] | None = None) -> list[ModelRef]:
        self.resolve(params)
        return [ModelRef(model_group, seed)]

    def run(self, ctx: CheckContext) -> list[dict[str, Any]]:
        from xaudit import explain

        p = self.resolve(ctx.params)
        model, card, trojans = trojaned_model(ctx, self.name, FAMILIES, p["require_bug_took"])
        explainer = explain.get(ctx.method, **(ctx.method_params or {}))
        edge = explain.get("edge")
        seed = explain_seed(ctx.seed, ctx.method)
        common = {"ci_level": float(p["ci_level"]), "n_boot": int(p["n_boot"]), "map_reduction": "abs"}

        per_trojan: dict[str, dict[str, Any]] = {}
        out: list[dict[str, Any]] = []
        for bug in trojans:
            info = {"trojan_family": bug.kind, "target": bug.target_class, "trojan_params": bug.params()}
            x, footprint, n_flipped, n_eligible = flipped_images(ctx, model, card, bug, p)
            if len(x) < p["min_images"]:
                out.append(row(ctx, "too_few", len(x), None, None, len(x), trojan=bug.name, series="too_few",
                               n_eligible=n_eligible, n_flipped=n_flipped,
                               note=f"only {len(x)} of {n_eligible} triggered non-target test images (of the first "
                                    f"{p['max_candidates']}) flip to the target; min_images is {p['min_images']}",
                               **info, **common))
                continue
            target = torch.full((len(x),), bug.target_class, dtype=torch.int64)
            raw, failed = finite_maps(*explain_raw(explainer, model, x.to(ctx.device), target.to(ctx.device), seed))
            raw = raw.cpu()
            edge_raw = edge(model, x, target)
            values = {"method": localization(raw, footprint, failed),
                      "edge": localization(edge_raw, footprint, [None] * len(x)),
                      "blank": blank_localization(footprint)}
            per_trojan[bug.name] = {"values": values, "info": info, "n_flipped": n_flipped,
                                    "n_eligible": n_eligible, "n_failed": sum(f is not None for f in failed)}
            k = min(int(p["figure_images"]), len(x))
            if k:
                save_panels(_named(ctx, bug.name), x[:k].cpu(),
                            {"method (a = sum|attr| / max)": _scaled(raw[:k]), "edge": _scaled(edge_raw[:k]),
                             "footprint": footprint[:k].float()},
                            failed={"method (a = sum|attr| / max)": [f is not None for f in failed[:k]]},
                            trojan=bug.name, target=bug.target_class)

        groups: dict[str, list[str]] = {name: [name] for name in per_trojan}
        for fam in FAMILIES:
            members = [b.name for b in trojans if b.kind == fam and b.name in per_trojan]
            if members:
                groups[f"family:{fam}"] = members
        series: dict[tuple, torch.Tensor] = {}
        for g, members in groups.items():
            cat = {src: {m: torch.cat([per_trojan[t]["values"][src][m] for t in members]) for m in MEASURES}
                   for src, _ in SOURCES}
            series.update({(g, *k): v for k, v in localization_series(cat).items()})
        cis = series_cis(series, p, ctx.seed, self.name)

        for g, members in groups.items():
            first = per_trojan[members[0]]
            fam = first["info"]["trojan_family"]
            ginfo = (first["info"] if len(members) == 1 else
                     {"trojan_family": fam, "members": ",".join(members)})
            extra = {"trojan": g, "n_flipped": sum(per_trojan[t]["n_flipped"] for t in members),
                     "n_eligible": sum(per_trojan[t]["n_eligible"] for t in members),
                     "n_failed": sum(per_trojan[t]["n_failed"] for t in members), **ginfo, **common}
            out += localization_rows(ctx, {k[1:]: v for k, v in series.items() if k[0] == g},
                                     {k[1:]: v for k, v in cis.items() if k[0] == g}, **extra)
        save_values(ctx, trojans, per_trojan)
        return out

    def figures(self, rows, artifacts):
        """Per family, box plots of the per-image L1 and Pearson per method beside the blank guess and the
        edge map (as Casper et al. draw them; from the cells' saved values, else means and CIs from the
        rows), and one map grid per trojan (its first saved triggered image: input, the method's a, the
        edge map, the footprint, for every method)."""
        from xaudit.checks.debugging import grids

        return (box_figure(rows, artifacts) or scores_figure(rows)) + grids(
            self.name, artifacts, n_inputs=1, caption="One row per method on a triggered image: the method's map, "
                                                      "the edge map and the trigger's footprint. A method that reveals "
                                                      "the trojan puts its map on the footprint.")


# ------------------------------------------------------------------------------------------ images
def flipped_images(ctx: CheckContext, model, card: dict[str, Any], bug, p: dict[str, Any]
                   ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(images [n, C, H, W], footprints bool [n, H, W], how many flipped, how many eligible among the
    candidates looked at): of the first ``max_candidates`` test images with the trigger forced, those of
    other classes than the target that the model assigns to the target, the first ``n_images`` of them.
    Candidates are rendered and classified in growing chunks (the first of 1.25 x n_images + 16) until
    n_images flipped or max_candidates are reached, and memoized per worker (every method's cell on the
    same model and trojan uses the same images)."""
    # the model by its weights' digest on the card (its group and seed where the card has none)
    model_id = str(card.get("weights_sha256") or f"{ctx.model_group}@{ctx.seed}")
    key = (model_id, repr(sorted(bug.params().items())), bug.name, repr(sorted(ctx.world.items())),
           int(p["n_images"]), int(p["max_candidates"]))
    if key not in _FLIPPED:
        if len(_FLIPPED) >= 64:
            _FLIPPED.clear()
        _FLIPPED[key] = _find_flipped(ctx, model, bug, int(p["n_images"]), int(p["max_candidates"]))
    return _FLIPPED[key]


_FLIPPED: dict[tuple, tuple[torch.Tensor, torch.Tensor, int, int]] = {}


def _find_flipped(ctx, model, bug, n_images: int, max_candidates: int):
    world = make_world(ctx)
    xs, fps, n_flipped, n_eligible, start = [], [], 0, 0, 0
    chunk = min(max_candidates, int(1.25 * n_images) + 16)
    while start < max_candidates and n_flipped < n_images:
        stop = min(max_candidates, start + chunk)
        batch = world.sample(range(start, stop), split="test", bugs=[bug], force=True)
        eligible = batch.touched[bug.name] & (batch.true_labels != bug.target_class)
        x = batch.images[eligible]
        fp = batch.footprints[bug.name][eligible]
        flipped = predict(model, x.to(ctx.device)).cpu() == bug.target_class
        xs.append(x[flipped])
        fps.append(fp[flipped])
        n_flipped += int(flipped.sum())
        n_eligible += int(eligible.sum())
        start, chunk = stop, 2 * chunk
    x, fp = torch.cat(xs)[:n_images], torch.cat(fps)[:n_images]
    return x, fp, n_flipped, n_eligible


# ---------------------------------------------------------------------------------------- measures
def localization(maps: torch.Tensor, footprint: torch.Tensor, failed: Sequence[str | None]
                 ) -> dict[str, torch.Tensor]:
    """measure -> float64 [N] of maps ([N, C, H, W] raw or [N, 1, H, W]) against footprints bool
    [N, H, W] (abs channel reduction); NaN for failed maps and undefined values (a constant map's
    Pearson, an all-zero map's mass)."""
    from xaudit import metrics

    bad = torch.tensor([f is not None for f in failed], dtype=torch.bool)
    out = {"trigger_distance": metrics.trigger_distance(maps, footprint),
           "mask_pearson": metrics.mask_pearson(maps, footprint),
           "mass_accuracy": metrics.mass_accuracy(maps, footprint),
           "pointing_game": metrics.pointing_game(maps, footprint),
           "pixel_auroc": metrics.pixel_auroc(maps, footprint)}
    return {m: torch.where(bad, torch.nan, v.double().cpu()) for m, v in out.items()}


def blank_localization(footprint: torch.Tensor) -> dict[str, torch.Tensor]:
    """The blank guess (a = 0): L1 = the footprint's area; Pearson and mass undefined (NaN); pointing
    game at chance (the area: a tie everywhere); pixel AUROC 0.5."""
    from xaudit import metrics

    area = metrics.blank_distance(footprint).double().cpu()
    nan = torch.full_like(area, math.nan)
    return {"trigger_distance": area, "mask_pearson": nan, "mass_accuracy": nan, "pointing_game": area.clone(),
            "pixel_auroc": torch.full_like(area, 0.5)}


SOURCES = (("method", "method"), ("edge", "edge baseline"), ("blank", "blank guess"))


def localization_series(values: dict[str, dict[str, torch.Tensor]]) -> dict[tuple[str, str], torch.Tensor]:
    """The per-image series of one group of images, keyed (source, measure), in this order: every measure of
    each source (``values``: :func:`localization` of the method and the edge map, :func:`blank_localization`),
    then method minus edge on every measure, then method minus blank on L1 (the published comparison)."""
    series: dict[tuple[str, str], torch.Tensor] = {}
    for src, _ in SOURCES:
        for m in MEASURES:
            series[(src, m)] = values[src][m]
    for m in MEASURES:
        series[("method-edge", m)] = values["method"][m] - values["edge"][m]
    series[("method-blank", "trigger_distance")] = (values["method"]["trigger_distance"]
                                                    - values["blank"]["trigger_distance"])
    return series


def localization_rows(ctx: CheckContext, series: dict[tuple[str, str], torch.Tensor], cis: dict[tuple, tuple],
                      reasons: Sequence[str | None] | None = None, note=lambda n: n, rule=lambda r: r,
                      **extra: Any) -> list[dict[str, Any]]:
    """The rows of one group (:func:`localization_series` and its CIs): each source's measures (the blank
    guess's where defined), the paired differences, and the verdicts of :data:`VERDICTS`. ``reasons``: why
    each image's method map failed (None: none failed); ``note`` / ``rule`` rewrite the measure notes and
    the verdict rules (the localization check calls the footprint the mask); ``extra``: columns of every row."""
    out = []
    for src, label in SOURCES:
        for m in MEASURES:
            v = series[(src, m)]
            if src == "blank" and not torch.isfinite(v).any():
                continue
            out.append(row(ctx, **summary(m, v, reasons if src == "method" else None, cis[(src, m)]),
                           series=src, note=f"{label}; {note(NOTES[m])}", **extra))
    for diff in ("method-edge", "method-blank"):
        for m in MEASURES:
            if (diff, m) in series:
                out.append(row(ctx, **summary(m, series[(diff, m)], reasons, cis[(diff, m)]),
                               series="difference", baseline=diff.split("-")[1],
                               note=f"{diff.replace('-', ' minus ')}, paired per image; {note(NOTES[m])}", **extra))
    for vname, (m, base, direction) in VERDICTS.items():
        key = (f"method-{base}", m)
        s = summary(vname, series[key], reasons, cis[key])
        verdict = margin_verdict(s["ci_low"], s["ci_high"], 0.0, direction)
        out.append(row(ctx, **s, verdict=verdict, series="verdict", measure=m, baseline=base, rule=rule(RULES[vname]),
                       method_value=finite_or_none(cis[("method", m)][0]),
                       baseline_value=finite_or_none(cis[(base, m)][0]), **extra))
    return out


def _scaled(raw: torch.Tensor) -> torch.Tensor:
    """[N, H, W] abs channel sum divided by its per-image max (0 where the map is 0)."""
    a = raw.abs().sum(1)
    top = a.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return a / top


def _named(ctx: CheckContext, trojan: str) -> CheckContext:
    """A context whose artifact name carries the trojan (one npz per trojan and cell)."""
    import dataclasses

    return dataclasses.replace(ctx, model_group=f"{ctx.model_group}-{trojan}")


# ---------------------------------------------------------------------------------------- figures
VALUES_PREFIX = "values"
BOX_MEASURES = ("trigger_distance", "mask_pearson")


def save_values(ctx: CheckContext, trojans, per_trojan: dict[str, dict[str, Any]]) -> None:
    """The per-image L1 and Pearson of the method, the edge map and the blank guess, per family, as one
    npz per cell (the box plots' data). No-op without an artifacts directory."""
    if not ctx.artifacts_dir or not per_trojan:
        return
    import numpy as np

    from xaudit.checks.debugging import artifact_name

    path = Path(ctx.artifacts_dir) / (VALUES_PREFIX + "__" + artifact_name(ctx))
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {}
    for fam in FAMILIES:
        members = [b.name for b in trojans if b.kind == fam and b.name in per_trojan]
        for src in ("method", "edge", "blank"):
            for m in BOX_MEASURES:
                vals = [per_trojan[t]["values"][src][m] for t in members]
                data[f"{fam}__{src}__{m}"] = (torch.cat(vals).float().numpy() if vals else np.zeros(0, np.float32))
    np.savez_compressed(path, check=ctx.check, method=ctx.method, model=ctx.model_group, world=ctx.world_id,
                        seed=ctx.seed, **data)


def box_figure(rows: Sequence[dict[str, Any]], artifacts: Sequence[Path]) -> list[tuple[str, bytes]]:
    """Per (model, world, seed) and family: box plots of the per-image L1 (top, lower is better) and
    Pearson with the footprint (bottom) per method, the blank guess's and the edge map's boxes first (the
    references, also drawn as lines), methods sorted by median L1; each method's verdict letter on top."""
    import numpy as np
    from matplotlib.figure import Figure

    from xaudit.checks.base import VERDICT_CODE
    from xaudit.checks.sanity_figures import _load
    from xaudit.core.imaging import png

    paths = sorted(p for d in map(Path, artifacts) if Path(d).is_dir()
                   for p in Path(d).glob(f"{VALUES_PREFIX}__debugging__{TrojanLocalization.name}__*.npz"))
    groups: dict[tuple, list[dict]] = {}
    for path in paths:
        d = _load(path)
        groups.setdefault((str(d["model"]), str(d["world"]), int(d["seed"])), []).append(d)
    verdicts = {(r.get("model"), r.get("world"), r.get("seed"), r.get("trojan"), r["method"], r["metric"]): r.get("verdict")
                for r in rows if r.get("check") == TrojanLocalization.name and r.get("series") == "verdict"}
    out = []
    for (model, world, seed), ds in sorted(groups.items()):
        for fam in FAMILIES:
            key = f"{fam}__method__trigger_distance"
            ds_f = [d for d in ds if key in d and d[key].size]
            if not ds_f:
                continue
            by_method = {str(d["method"]): d for d in ds_f}
            methods = sorted(by_method, key=lambda m: float(np.nanmedian(by_method[m][key])))
            ref = ds_f[0]
            fig = Figure(figsize=(max(6.0, 0.3 * (len(methods) + 2) + 1.5), 5.6), dpi=100, layout="constrained")
            axes = fig.subplots(2, 1, sharex=True)
            labels = ["blank guess", "edge map"] + methods
            for ax, m, vname in ((axes[0], "trigger_distance", "l1_vs_blank"), (axes[1], "mask_pearson", "pearson_vs_edge")):
                cols = [ref[f"{fam}__blank__{m}"], ref[f"{fam}__edge__{m}"]] + [by_method[x][f"{fam}__method__{m}"]
                                                                               for x in methods]
                cols = [c[np.isfinite(c)] if np.isfinite(c).any() else np.array([np.nan]) for c in cols]
                bp = ax.boxplot(cols, positions=range(len(cols)), widths=0.6, showfliers=False, patch_artist=True,
                                medianprops={"color": "black"})
                for i, box in enumerate(bp["boxes"]):
                    box.set_facecolor("0.8" if i < 2 else "#9ecae1")
                for i, base in ((0, "blank"), (1, "edge")):
                    v = cols[i]
                    if np.isfinite(v).any():
                        ax.axhline(float(np.median(v)), ls="--" if base == "blank" else ":", color="0.4", lw=1,
                                   label=f"{'blank guess' if base == 'blank' else 'edge map'} median {np.median(v):.3f}")
                for i, meth in enumerate(methods):
                    code = VERDICT_CODE.get(verdicts.get((model, world, seed, f"family:{fam}", meth, vname)), "")
                    ax.annotate(code, (i + 2, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                                fontsize=7)
                ax.set_ylabel("L1 to footprint (lower better)" if m == "trigger_distance" else "Pearson with footprint",
                              fontsize=8)
                ax.legend(fontsize=7, loc="best")
                ax.grid(axis="y", alpha=0.3)
            axes[1].set_xticks(list(range(len(labels))), labels, rotation=60, ha="right", fontsize=7)
            n = int(ref[key].size)
            fig.suptitle(f"trojan_localization, {fam} trojans: per-image values ({n} triggered images) per method, "
                         f"grey = references; letters: verdict ({model}, {world}, seed {seed})", fontsize=8)
            out.append((f"trojan_localization: L1 and Pearson per method, {fam} ({model}, {world}, seed {seed})",
                        png(fig), TROJAN_CAPTION))
    return out


TROJAN_CAPTION = ("L1 distance between each method's 0-1 map and the trigger's footprint (top, lower is better) and "
                  "Pearson correlation with it (bottom, higher is better), per method, on triggered images; grey: "
                  "the blank guess and the edge map. A method reveals the trojan when it beats both references "
                  "clearly; the letter above each method is its verdict. Casper et al. (2023) report that attribution "
                  "methods often do no better than the edge map here.")


def scores_figure(rows: Sequence[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """Per (model, world, seed) and family: L1 (lower is better) and Pearson with the footprint per method
    (mean and CI over the family's images), the blank guess's L1 and the edge map's values as reference
    lines, and each method's verdict letter; methods sorted by L1 (as Casper et al. rank them)."""
    from matplotlib.figure import Figure

    from xaudit.checks.base import VERDICT_CODE
    from xaudit.core.imaging import png

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("check") == TrojanLocalization.name and str(r.get("trojan", "")).startswith("family:"):
            groups.setdefault((r.get("model"), r.get("world"), r.get("seed"), r["trojan"]), []).append(r)
    out = []
    for (model, world, seed, fam), rs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        def pick(series, metric):
            return {r["method"]: r for r in rs if r.get("series") == series and r.get("metric") == metric}
        l1, pe = pick("method", "trigger_distance"), pick("method", "mask_pearson")
        verdicts = {(r["method"], r["metric"]): r.get("verdict") for r in rs if r.get("series") == "verdict"}
        methods = sorted(l1, key=lambda m: (l1[m]["value"] is None, l1[m]["value"] or 0.0))
        if not methods:
            continue
        fig = Figure(figsize=(max(6.0, 0.32 * len(methods) + 1.5), 5.2), dpi=100, layout="constrained")
        axes = fig.subplots(2, 1, sharex=True)
        for ax, per, metric, vname, base_series in ((axes[0], l1, "trigger_distance", "l1_vs_blank", "blank"),
                                                    (axes[1], pe, "mask_pearson", "pearson_vs_edge", "edge")):
            xs = range(len(methods))
            vals = [_nan(per.get(m, {}).get("value")) for m in methods]
            lo = [v - _nan(per.get(m, {}).get("ci_low")) for m, v in zip(methods, vals)]
            hi = [_nan(per.get(m, {}).get("ci_high")) - v for m, v in zip(methods, vals)]
            ax.errorbar(list(xs), vals, yerr=[lo, hi], fmt="o", color="C0", ms=4, capsize=2, lw=1)
            for series, style, label in (("blank", "--", "blank guess"), ("edge", ":", "edge map")):
                ref = pick(series, metric)
                v = next((_nan(r["value"]) for r in ref.values() if r.get("value") is not None), math.nan)
                if math.isfinite(v):
                    ax.axhline(v, ls=style, color="0.4", lw=1, label=f"{label} {v:.3f}")
            for i, m in enumerate(methods):
                code = VERDICT_CODE.get(verdicts.get((m, vname)), "")
                ax.annotate(code, (i, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                            fontsize=7)
            ax.set_ylabel("L1 to footprint (lower better)" if metric == "trigger_distance" else "Pearson with footprint")
            ax.legend(fontsize=7, loc="best")
            ax.grid(axis="y", alpha=0.3)
        axes[1].set_xticks(list(range(len(methods))), methods, rotation=60, ha="right", fontsize=7)
        fig.suptitle(f"trojan_localization, {fam}: mean and CI per method; letters: verdict "
                     f"({model}, {world}, seed {seed})", fontsize=8)
        out.append((f"trojan_localization: L1 and Pearson per method, {fam} ({model}, {world}, seed {seed})",
                    png(fig), TROJAN_CAPTION))
    return out


def _nan(v) -> float:
    return math.nan if v is None else float(v)
