"""Figures of the sanity checks, for the report: (title, PNG bytes) pairs.

- Curves (from result rows): per (check, model, world, seed), one panel per metric: the mean
  similarity to the original map against the stage, one line per method with its CI band, the
  retrain reference drawn as a band in the method's colour, the calibration (random map) as a dotted
  grey line, tau as a thin black line and the verdict stage as a vertical line; each method's
  verdict in the legend. Single-comparison checks (data randomization, random logit) are drawn as
  points with CI bars per method.
- Grid (from the npz files the checks write under the artifacts directory): the paper's figure,
  abs maps per method (rows) x stage (columns) for one input, the input in the first column and the
  retrain reference's map (same spec, other seed) in the last.

Matplotlib's object API with the Agg canvas: no pyplot, no global state.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xaudit.checks.base import VERDICT_CODE, rows_by_model
from xaudit.core.imaging import mosaic as _mosaic, png as _png, to_rgb as _rgb

METRIC_TITLES = {"spearman_abs": "Spearman (abs maps)", "spearman_signed": "Spearman (signed maps)",
                 "ssim": "SSIM (0-1 maps)", "hog": "HOG similarity", "edge_similarity": "similarity to edge map"}
METRIC_ORDER = ("spearman_abs", "spearman_signed", "ssim", "hog", "edge_similarity")


def _f(v) -> float:
    return math.nan if v is None else float(v)


def figures(check: str, rows: Sequence[dict[str, Any]], artifacts: Sequence[str | Path] = (),
            grid_inputs: int = 2) -> list[tuple[str, bytes]]:
    """All figures of ``check``: curves from ``rows`` and grids from the npz files of this check in the
    ``artifacts`` folders (the report passes those of the active, done cells only)."""
    return curves(check, rows) + grids(check, artifacts, grid_inputs)


def curves(check: str, rows: Sequence[dict[str, Any]]) -> list[tuple[str, bytes]]:
    from matplotlib.figure import Figure

    out = []
    for (model, world, seed), rs in rows_by_model(rows, check, ("stage", "retrain_reference", "calibration", "verdict")):
        methods = sorted({r["method"] for r in rs})
        stages = sorted({r["stage"] for r in rs if r.get("series") == "stage"})
        labels = {r["stage"]: r.get("block") or str(r["stage"]) for r in rs if r.get("series") == "stage"}
        single = len([s for s in stages if s and s > 0]) <= 1
        metrics = [m for m in METRIC_ORDER if any(r["metric"] == m for r in rs)]
        width = 3.2 * len(metrics) + 2.4                     # the legend on the right
        bottom = 1.5 if single else 0.75                     # single comparisons: method names below
        height = max(3.6, 0.13 * len(methods) + 1.0) + bottom - 0.75
        fig = Figure(figsize=(width, height))
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        fig.subplots_adjust(left=0.7 / width, right=1 - 2.4 / width, bottom=bottom / height, top=1 - 0.65 / height,
                            wspace=0.28)
        colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
        tau = next((r.get("tau") for r in rs if r.get("tau") is not None), None)
        for ax, metric in zip(axes, metrics):
            sel = [r for r in rs if r["metric"] == metric]
            _draw_panel(ax, sel, methods, colours, single)
            cal = [_f(r["value"]) for r in sel if r.get("series") == "calibration"]
            if cal:
                ax.axhline(float(np.nanmean(cal)), color="0.4", ls=":", lw=1.2)
            if tau is not None:
                ax.axhline(float(tau), color="k", lw=0.6)
            if single:
                ax.set_xticks(range(len(methods)), methods, rotation=90, fontsize=6)
            else:
                ax.set_xticks(stages, [labels[s] for s in stages], rotation=45, ha="right", fontsize=7)
                vs = next((r["stage"] for r in sel if r.get("series") == "verdict"), None)
                if vs is not None:
                    ax.axvline(vs, color="0.6", lw=0.8, ls="-.")
            ax.set_ylim(-1.05, 1.05)
            ax.set_title(METRIC_TITLES.get(metric, metric), fontsize=9)
        axes[0].set_ylabel("similarity to the original map")
        # one legend for the figure; each method's verdict per metric in the panels' order
        verdict_of = {(r["method"], r["metric"]): r.get("verdict") for r in rs if r.get("series") == "verdict"}
        handles = [axes[0].plot([], [], "-o", ms=3, color=colours[m])[0] for m in methods]
        names = [f"{m}  {''.join(VERDICT_CODE.get(str(verdict_of.get((m, k))), '-') for k in metrics)}"
                 for m in methods]
        fig.legend(handles, names, loc="center right", fontsize=6.5, frameon=False,
                   title="verdicts (P/F/?) per panel", title_fontsize=7)
        fig.suptitle(f"{check} — model {model}, world {world}, seed {seed}\n"
                     f"(dashed line and band: retrain reference; dotted: random-map calibration; "
                     f"black: tau = {tau})", fontsize=9)
        out.append((f"{check}: similarity vs stage ({model}, {world}, seed {seed})", _png(fig)))
    return out


def _draw_panel(ax, sel: list[dict], methods: list[str], colours: dict[str, str], single: bool) -> None:
    """One metric's panel. Every kind of mark is one collection for all methods (a few artists per
    panel instead of four per method: 25 methods drew in seconds per figure as separate artists)."""
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.colors import to_rgba

    lines, line_c, pts, pts_c, bands, band_c, ref_lines, ref_c, ref_bands, ref_band_c = ([] for _ in range(10))
    for i, meth in enumerate(methods):
        c = colours[meth]
        st = sorted((r for r in sel if r["method"] == meth and r.get("series") == "stage"), key=lambda r: r["stage"])
        ref = next((r for r in sel if r["method"] == meth and r.get("series") == "retrain_reference"), None)
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
            if len(xs) > 1:
                bands.append(list(zip(xs, hi)) + list(zip(xs[::-1], lo[::-1])))
                band_c.append(to_rgba(c, 0.2))
            span = (min(xs), max(xs))
        if ref is not None:
            y, lo, hi = _f(ref["value"]), _f(ref["ci_low"]), _f(ref["ci_high"])
            ref_lines.append([(span[0], y), (span[1], y)])
            ref_c.append(to_rgba(c))
            ref_bands.append([(span[0], lo), (span[1], lo), (span[1], hi), (span[0], hi)])
            ref_band_c.append(to_rgba(c, 0.18 if single else 0.08))
    if ref_bands:
        ax.add_collection(PolyCollection(ref_bands, facecolors=ref_band_c, linewidths=0))
    if bands:
        ax.add_collection(PolyCollection(bands, facecolors=band_c, linewidths=0))
    if ref_lines:
        ax.add_collection(LineCollection(ref_lines, colors=ref_c, linestyles="--", linewidths=0.9))
    if lines:
        ax.add_collection(LineCollection(lines, colors=line_c, linewidths=1.6 if single else 1.3))
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=pts_c, s=18 if single else 9, zorder=3)
    ax.autoscale_view()


def _load(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def grids(check: str, artifacts: Sequence[str | Path], n_inputs: int = 2) -> list[tuple[str, bytes]]:
    """The map grids, each drawn as one mosaic image with text labels (one axes: fast to render), from
    this check's npz files in the given artifact folders."""
    from matplotlib.figure import Figure

    paths = sorted(p for d in map(Path, artifacts) if d.is_dir() for p in d.glob(f"sanity__{check}__*.npz"))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for path in paths:
        d = _load(path)
        if str(d["check"]) != check:
            continue
        groups[(str(d["model"]), str(d["world"]), int(d["seed"]))].append(d)
    out = []
    pad = 2
    for (model, world, seed), ds in sorted(groups.items()):
        ds = sorted(ds, key=lambda d: str(d["method"]))
        n_img = min(int(d["abs"].shape[1]) for d in ds)
        n_stages = max(int(d["abs"].shape[0]) for d in ds)
        has_ref = all("reference_abs" in d for d in ds)
        n_cols = 1 + n_stages + has_ref                        # input, stages, retrained model
        stage_labels = next(d for d in ds if int(d["abs"].shape[0]) == n_stages)["stage_labels"]
        for i in range(min(n_inputs, n_img)):
            tiles, failed = [], []
            for d in ds:
                row = [_rgb(d["images"][i])] + [None] * (n_cols - 1)
                for s in range(d["abs"].shape[0]):
                    row[s + 1] = _rgb(d["abs"][s, i])
                    if bool(d["failed"][s, i]):
                        row[s + 1] = row[s + 1] * 0.4 + np.array([0.6, 0.0, 0.0], dtype=np.float32)
                        failed.append((len(tiles), s + 1))
                if has_ref:
                    row[-1] = _rgb(d["reference_abs"][i])
                tiles.append(row)
            mosaic = _mosaic(tiles, pad)
            th, tw = tiles[0][0].shape[:2]
            fig = Figure(figsize=(0.75 * n_cols + 1.6, 0.75 * len(ds) + 1.1))
            ax = fig.add_axes((1.4 / (0.75 * n_cols + 1.6), 0.02, 0.75 * n_cols / (0.75 * n_cols + 1.6),
                               0.75 * len(ds) / (0.75 * len(ds) + 1.1)))
            ax.imshow(mosaic, interpolation="nearest")
            ax.set_axis_off()
            cx = [pad + c * (tw + pad) + tw / 2 for c in range(n_cols)]
            heads = ["input"] + [str(x) for x in stage_labels] + (["retrained (other seed)"] if has_ref else [])
            for c, text in enumerate(heads):
                ax.text(cx[c], -pad, text, fontsize=7, rotation=35, ha="left", va="bottom")
            for r, d in enumerate(ds):
                ax.text(-pad, pad + r * (th + pad) + th / 2, str(d["method"]), fontsize=7, ha="right",
                        va="center")
            for r, c in failed:
                ax.text(cx[c], pad + r * (th + pad) + th / 2, "failed", fontsize=6, color="white",
                        ha="center", va="center")
            fig.suptitle(f"{check}: abs maps, input {i} ({model}, {world}, seed {seed})", fontsize=9, y=0.995)
            out.append((f"{check}: maps per method x stage, input {i} ({model}, {world}, seed {seed})", _png(fig)))
    return out
