"""Figures of the sanity checks, for the report: (title, PNG bytes, caption) triples.

- Curves (from result rows), small multiples: per (check, model, world, seed) one figure of the
  check's headline metric (its ``scorecard_metric``, Spearman of the abs maps for the built-in checks;
  else the first of :data:`METRIC_ORDER` present): one panel per method family, each drawing that
  family's methods in colour (mean similarity to the original map against the stage, CI band, the
  retrain reference as a dashed line and band in the method's colour) and the baselines in grey,
  dashed, the same in every panel; the random-map calibration as a dotted grey line, tau as a thin
  black line and the verdict stage as a dash-dot vertical line in every panel; each method's verdict
  in its panel's legend. The other metrics' verdicts are in the check's verdict table and verdict
  figure (one row of five metrics x four families of panels was too busy to read and cost 3x the
  bytes); pass ``metrics=`` for more rows. Single-comparison checks (data randomization, random
  logit) are drawn as points with CI bars per method, the baselines after the family's methods.
- Grid (from the npz files the checks write under the artifacts directory): the paper's figure,
  abs maps per method (rows, grouped by family, baselines last) x stage (columns) for one input, the
  input once on top and the retrain reference's map (same spec, other seed) in the last column; maps
  in the cividis colour map (:func:`xaudit.core.imaging.colorize`), each data pixel a 2 x 2 block
  (:func:`xaudit.core.imaging.montage`). Up to ``grid_inputs`` (2) inputs per (model, world, seed), as
  many as fit in :data:`GRID_TILE_BUDGET` tiles and at least one: with the default preset's 25 methods
  one input (a second doubled the report's largest figures).

Matplotlib's object API with the Agg canvas: no pyplot, no global state.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xaudit.checks.base import VERDICT_CODE, rows_by_model
from xaudit.core.imaging import MAP_LEVELS, colorize, montage, png as _png

METRIC_TITLES = {"spearman_abs": "Spearman (abs maps)", "spearman_signed": "Spearman (signed maps)",
                 "ssim": "SSIM (0-1 maps)", "hog": "HOG similarity", "edge_similarity": "similarity to edge map"}
METRIC_ORDER = ("spearman_abs", "spearman_signed", "ssim", "hog", "edge_similarity")
GRID_INPUTS = 2          # inputs drawn per (model, world, seed), at most ...
GRID_TILE_BUDGET = 120   # ... and as many as fit in this many tiles (at least one): 25 methods x 3 columns get one
FAILED_TINT = np.array([0.6, 0.0, 0.0], dtype=np.float32)


def _f(v) -> float:
    return math.nan if v is None else float(v)


def figures(check: str, rows: Sequence[dict[str, Any]], artifacts: Sequence[str | Path] = (),
            grid_inputs: int = GRID_INPUTS) -> list[tuple[str, bytes, str]]:
    """All figures of ``check``: curves from ``rows`` and grids from the npz files of this check in the
    ``artifacts`` folders (the report passes those of the active, done cells only)."""
    return curves(check, rows) + grids(check, artifacts, grid_inputs)


def headline_metric(check: str, present: Sequence[str]) -> str | None:
    """The metric a sanity figure draws: the check's declared ``scorecard_metric`` when its rows have
    it, else the first of METRIC_ORDER (then of ``present``) that they have."""
    declared = None
    try:
        from xaudit.checks.base import CHECKS

        declared = getattr(CHECKS.get(check), "scorecard_metric", None)
    except Exception:
        pass
    if declared in present:
        return declared
    return next((m for m in METRIC_ORDER if m in present), present[0] if present else None)


def curves(check: str, rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None
           ) -> list[tuple[str, bytes, str]]:
    """(title, PNG bytes, caption) per (model, world, seed): see :func:`curve_figure`."""
    out = []
    series = ("stage", "retrain_reference", "calibration", "verdict")
    for (model, world, seed), rs in rows_by_model(rows, check, series):
        fig, caption = curve_figure(check, rs, metrics)
        if fig is None:
            continue
        out.append((f"{check}: similarity vs stage ({model}, {world}, seed {seed})", _png(fig), caption))
    return out


def curve_figure(check: str, rs: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None):
    """(Figure, caption) of one (model, world, seed)'s rows: a row of panels per metric (default: the
    headline metric only; its title on the row's y axis), a panel per method family (titled by it); the
    baselines' artists carry gid "baselines" and are in every panel."""
    from matplotlib.lines import Line2D

    from xaudit.report.figures import BASELINE_COLOUR, baseline_handle, family_panels, panel_figure, text_inches

    rs = list(rs)
    if not rs:
        return None, ""
    model, world, seed = rs[0].get("model"), rs[0].get("world"), rs[0].get("seed")
    methods = sorted({r["method"] for r in rs})
    stages = sorted({r["stage"] for r in rs if r.get("series") == "stage"})
    labels = {r["stage"]: r.get("block") or str(r["stage"]) for r in rs if r.get("series") == "stage"}
    single = len([s for s in stages if s and s > 0]) <= 1
    present = list(dict.fromkeys(r["metric"] for r in rs))
    if metrics is None:
        head = headline_metric(check, present)
        metrics = [head] if head else []
    metrics = [m for m in metrics if m in present]
    if not metrics:
        return None, ""
    panels, base = family_panels(methods)
    tau = next((r.get("tau") for r in rs if r.get("tau") is not None), None)
    verdict_of = {(r["method"], r["metric"]): r.get("verdict") for r in rs if r.get("series") == "verdict"}
    n_max = max(len(ms) for _, ms in panels)
    n_ticks = [len(ms) + len(base) + 2 for _, ms in panels]          # single comparisons: a tick per method
    n_legend = 0 if single else math.ceil((max(1, n_max) + bool(base)) / 2)
    if single:
        ticks_in = 0.15 + max(text_inches(f"{m} ?", 6) for m in methods)       # rotated 90 degrees
        panel = (max(0.19 * sum(n_ticks), 5.5) / len(panels), 1.9)
    else:
        ticks_in = 0.15 + max((text_inches(labels[s], 6.5) for s in stages), default=0.2) * 0.57   # 45 degrees
        panel = (2.4, 1.9)
    below = ticks_in + (0.12 * n_legend + 0.1 if n_legend else 0.0)        # tick labels, then the legend
    fig, axes = panel_figure(len(metrics), len(panels), panel, left=0.75, right=0.1, bottom=below, top=0.62,
                             wspace=0.12, hspace=below + 0.3, width_ratios=n_ticks if single else None, sharey=True)
    legend_y = -(ticks_in + 0.05) / panel[1]
    for ri, metric in enumerate(metrics):
        sel = [r for r in rs if r["metric"] == metric]
        cal = [_f(r["value"]) for r in sel if r.get("series") == "calibration"]
        vs = next((r["stage"] for r in sel if r.get("series") == "verdict"), None)
        for ci, (fam, ms) in enumerate(panels):
            ax = axes[ri][ci]
            colours = {m: f"C{i % 10}" for i, m in enumerate(ms)}
            order = ms + base                                     # single comparisons: x positions
            _draw_panel(ax, sel, ms, colours, single, xpos={m: i for i, m in enumerate(order)}, gid="methods")
            _draw_panel(ax, sel, base, {m: BASELINE_COLOUR for m in base}, single,
                        xpos={m: len(ms) + i for i, m in enumerate(base)}, baseline=True, gid="baselines")
            if cal:
                ax.axhline(float(np.nanmean(cal)), color="0.4", ls=":", lw=1.2, gid="calibration")
            if tau is not None:
                ax.axhline(float(tau), color="k", lw=0.6, gid="tau")
            code = {m: VERDICT_CODE.get(str(verdict_of.get((m, metric))), '-') for m in ms}
            if single:
                ax.set_xticks(range(len(order)), [f"{m} {code[m]}" for m in ms] + base, rotation=90, fontsize=6)
                for lab in ax.get_xticklabels()[len(ms):]:
                    lab.set_color("0.45")
                if ms and base:
                    ax.axvline(len(ms) - 0.5, color="0.8", lw=0.6)
            else:
                ax.set_xticks(stages, [labels[s] for s in stages], rotation=45, ha="right", fontsize=6.5)
                if vs is not None:
                    ax.axvline(vs, color="0.6", lw=0.8, ls="-.", gid="verdict_stage")
            ax.set_ylim(-1.05, 1.05)
            ax.tick_params(axis="y", labelsize=6.5)
            ax.grid(alpha=0.25)
            ax.set_title(fam, fontsize=7.5, y=1.0)
            if not single:      # single comparisons name the methods (and their verdicts) on the x axis
                handles = [Line2D([], [], color=colours[m], marker="o", ms=3, lw=1.3) for m in ms]
                names = [f"{m} {code[m]}" for m in ms]
                if base:
                    handles.append(baseline_handle(ax))
                    names.append("baselines")
                ax.legend(handles, names, fontsize=5.5, frameon=False, ncol=2, loc="upper center",
                          bbox_to_anchor=(0.5, legend_y), handlelength=1.6, columnspacing=0.8, borderpad=0)
        axes[ri][0].set_ylabel(f"{METRIC_TITLES.get(metric, metric)}\nsimilarity to the original map", fontsize=7)
    fig.suptitle(f"{check} — model {model}, world {world}, seed {seed} (letters: verdict P/F/?)\n"
                 f"grey{'' if single else ' dashed'}: baselines ({', '.join(base) or 'none'}); dashed + band in "
                 f"colour: retrain reference; dotted: random-map calibration; black: tau = {tau}", fontsize=7.5,
                 y=1 - 0.06 / fig.get_figheight(), va="top")
    mt = METRIC_TITLES.get(metrics[0], metrics[0])
    if single:
        caption = (f"{mt} of each method's map after the randomization with its map of the trained model, one "
                   "panel per method family, the baselines (grey) repeated in each. A method that passes sits "
                   "below tau (black line), near the dotted random-map calibration line and below its retrain "
                   "reference (dashed band in its colour: a model trained with another seed); a point near 1 "
                   "means the map ignores what was randomized.")
    else:
        caption = (f"{mt} of each method's map with its original map as the model is randomized (left to right), "
                   "one panel per method family, the baselines (grey, dashed) repeated in each. A method that "
                   "passes drops below tau (black) and towards the dotted calibration line by the verdict stage "
                   "(dash-dot), and below its retrain reference (dashed band in its colour); a map that stays "
                   "near 1 ignores the weights, like the input and edge baselines.")
    return fig, caption


def _draw_panel(ax, sel: list[dict], methods: list[str], colours: dict[str, str], single: bool,
                xpos: dict[str, int] | None = None, baseline: bool = False, gid: str | None = None) -> None:
    """One metric's marks for ``methods`` in one panel. Every kind of mark is one collection for all
    methods (a few artists per panel instead of four per method: 25 methods drew in seconds per figure
    as separate artists). ``baseline``: grey, dashed, no CI band, no retrain reference; ``xpos``: each
    method's x in single-comparison panels."""
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.colors import to_rgba

    if not methods:
        return
    xpos = xpos or {m: i for i, m in enumerate(methods)}
    lines, line_c, pts, pts_c, bands, band_c, ref_lines, ref_c, ref_bands, ref_band_c = ([] for _ in range(10))
    for meth in methods:
        i = xpos[meth]
        c = colours[meth]
        st = sorted((r for r in sel if r["method"] == meth and r.get("series") == "stage"), key=lambda r: r["stage"])
        ref = None if baseline else next(
            (r for r in sel if r["method"] == meth and r.get("series") == "retrain_reference"), None)
        if single:
            tested = [r for r in st if r["stage"] and r["stage"] > 0]
            if tested:
                r = tested[-1]
                pts.append((i, _f(r["value"])))
                pts_c.append(c)
                lines.append([(i, _f(r["ci_low"])), (i, _f(r["ci_high"]))])
                line_c.append(to_rgba(c))
            span = (i - 0.3, i + 0.3)
        else:
            xs = [r["stage"] for r in st]
            if not xs:
                continue
            ys = [_f(r["value"]) for r in st]
            lines.append(list(zip(xs, ys)))
            line_c.append(to_rgba(c))
            pts += list(zip(xs, ys))
            pts_c += [c] * len(xs)
            lo, hi = [_f(r["ci_low"]) for r in st], [_f(r["ci_high"]) for r in st]
            if len(xs) > 1 and not baseline:
                bands.append(list(zip(xs, hi)) + list(zip(xs[::-1], lo[::-1])))
                band_c.append(to_rgba(c, 0.15))
            span = (min(xs), max(xs))
        if ref is not None:
            y, lo, hi = _f(ref["value"]), _f(ref["ci_low"]), _f(ref["ci_high"])
            ref_lines.append([(span[0], y), (span[1], y)])
            ref_c.append(to_rgba(c))
            ref_bands.append([(span[0], lo), (span[1], lo), (span[1], hi), (span[0], hi)])
            ref_band_c.append(to_rgba(c, 0.18 if single else 0.08))
    z = 1.5 if baseline else 2.0
    if ref_bands:
        ax.add_collection(PolyCollection(ref_bands, facecolors=ref_band_c, linewidths=0, zorder=z - 0.6, gid=gid))
    if bands:
        ax.add_collection(PolyCollection(bands, facecolors=band_c, linewidths=0, zorder=z - 0.5, gid=gid))
    if ref_lines:
        ax.add_collection(LineCollection(ref_lines, colors=ref_c, linestyles="--", linewidths=0.8, zorder=z, gid=gid))
    if lines:
        style = (0, (3.5, 2.0)) if baseline and not single else "solid"
        ax.add_collection(LineCollection(lines, colors=line_c, linestyles=style, zorder=z, gid=gid,
                                         linewidths=(1.0 if baseline else 1.3) if not single else 1.5))
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=pts_c,
                   s=(14 if single else 7) * (0.7 if baseline else 1), marker="s" if baseline else "o",
                   zorder=z + 0.1, gid=gid)
    ax.autoscale_view()


def _load(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _family_order(methods: Sequence[str]) -> list[str]:
    """Methods grouped by family (the families' order of the curves), baselines last."""
    from xaudit.report.figures import family_panels

    panels, base = family_panels(sorted(methods))
    return [m for _, ms in panels for m in ms] + base


def grid_figure(check: str, ds: Sequence[dict[str, Any]], i: int, title: str):
    """The montage Figure of input ``i``: the input once, on top (above the original maps: every cell
    saw the same input, and a copy in every row was a seventh of the grid's bytes), then a row per cell's
    method (family order, baselines last), columns = each stage's abs map, then the retrain reference's
    map; failed maps tinted red and captioned."""
    order = {m: k for k, m in enumerate(_family_order([str(d["method"]) for d in ds]))}
    ds = sorted(ds, key=lambda d: order[str(d["method"])])
    n_stages = max(int(d["abs"].shape[0]) for d in ds)
    has_ref = all("reference_abs" in d for d in ds)
    n_cols = n_stages + has_ref                            # stages, retrained model
    stage_labels = next(d for d in ds if int(d["abs"].shape[0]) == n_stages)["stage_labels"]
    tiles: list[list[Any]] = [[ds[0]["images"][i].astype(np.float32)] + [None] * (n_cols - 1)]
    captions = {}
    for d in ds:
        row: list[Any] = [None] * n_cols
        for s in range(d["abs"].shape[0]):
            m = colorize(d["abs"][s, i], levels=MAP_LEVELS)
            if bool(d["failed"][s, i]):
                m = m * 0.4 + FAILED_TINT
                captions[(len(tiles), s)] = "failed"
            row[s] = m
        if has_ref:
            row[-1] = colorize(d["reference_abs"][i], levels=MAP_LEVELS)
        tiles.append(row)
    heads = [str(x) for x in stage_labels] + (["retrained (other seed)"] if has_ref else [])
    return montage(tiles, ["input image"] + [str(d["method"]) for d in ds], heads, title=title, captions=captions)


def grids(check: str, artifacts: Sequence[str | Path], n_inputs: int = GRID_INPUTS) -> list[tuple[str, bytes, str]]:
    """The map grids, each drawn as one mosaic image with text labels (one axes: fast to render), from
    this check's npz files in the given artifact folders."""
    paths = sorted(p for d in map(Path, artifacts) if d.is_dir() for p in d.glob(f"sanity__{check}__*.npz"))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for path in paths:
        d = _load(path)
        if str(d["check"]) != check:
            continue
        groups[(str(d["model"]), str(d["world"]), int(d["seed"]))].append(d)
    out = []
    caption = ("Each row is one method's absolute map of the same input (top) as the model is "
               "randomized (columns, left to right), and last the map of a model trained with another seed; "
               "colour: cividis, dark blue = low, yellow = high attribution (each map scaled to [0, 1]). A "
               "method that passes changes its map as the weights are randomized; a map that keeps the input's "
               "shape to the last column shows the input, not the model (compare the input and edge baselines, "
               "the last rows). Red tint: the method failed on that map.")
    for (model, world, seed), ds in sorted(groups.items()):
        n_img = min(int(d["abs"].shape[1]) for d in ds)
        tiles = len(ds) * (1 + max(int(d["abs"].shape[0]) for d in ds))       # one input's grid
        for i in range(min(n_inputs, n_img, max(1, GRID_TILE_BUDGET // tiles))):
            fig = grid_figure(check, ds, i, f"{check}: abs maps, input {i} ({model}, {world}, seed {seed})")
            out.append((f"{check}: maps per method x stage, input {i} ({model}, {world}, seed {seed})", _png(fig),
                        caption))
    return out
