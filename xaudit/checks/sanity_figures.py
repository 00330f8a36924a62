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

import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

METRIC_TITLES = {"spearman_abs": "Spearman (abs maps)", "spearman_signed": "Spearman (signed maps)",
                 "ssim": "SSIM (0-1 maps)", "hog": "HOG similarity", "edge_similarity": "similarity to edge map"}
METRIC_ORDER = ("spearman_abs", "spearman_signed", "ssim", "hog", "edge_similarity")


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _f(v) -> float:
    return math.nan if v is None else float(v)


def figures(check: str, rows: Sequence[dict[str, Any]], artifacts_dir: str | Path | None = None,
            grid_inputs: int = 2) -> list[tuple[str, bytes]]:
    """All figures of ``check``: curves from ``rows`` and grids from ``artifacts_dir`` (searched
    recursively for this check's npz files; skipped when None)."""
    out = curves(check, rows)
    if artifacts_dir is not None:
        out += grids(check, artifacts_dir, grid_inputs)
    return out


def curves(check: str, rows: Sequence[dict[str, Any]]) -> list[tuple[str, bytes]]:
    from matplotlib.figure import Figure

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("check") == check and r.get("series") in ("stage", "retrain_reference", "calibration", "verdict"):
            groups[(r.get("model"), r.get("world"), r.get("seed"))].append(r)
    out = []
    for (model, world, seed), rs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        methods = sorted({r["method"] for r in rs})
        stages = sorted({r["stage"] for r in rs if r.get("series") == "stage"})
        labels = {r["stage"]: r.get("block") or str(r["stage"]) for r in rs if r.get("series") == "stage"}
        single = len([s for s in stages if s and s > 0]) <= 1
        metrics = [m for m in METRIC_ORDER if any(r["metric"] == m for r in rs)]
        fig = Figure(figsize=(3.6 * len(metrics), 3.4 + 0.18 * len(methods)))
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
        tau = next((r.get("tau") for r in rs if r.get("tau") is not None), None)
        for ax, metric in zip(axes, metrics):
            sel = [r for r in rs if r["metric"] == metric]
            verdicts = {r["method"]: r for r in sel if r.get("series") == "verdict"}
            for i, meth in enumerate(methods):
                c = colours[meth]
                st = sorted((r for r in sel if r["method"] == meth and r.get("series") == "stage"),
                            key=lambda r: r["stage"])
                ref = next((r for r in sel if r["method"] == meth and r.get("series") == "retrain_reference"), None)
                v = verdicts.get(meth)
                label = f"{meth}: {v['verdict']}" if v and v.get("verdict") else meth
                if single:
                    tested = [r for r in st if r["stage"] and r["stage"] > 0]
                    if tested:
                        r = tested[-1]
                        y = _f(r["value"])
                        err = [[max(0.0, y - _f(r["ci_low"]))], [max(0.0, _f(r["ci_high"]) - y)]]
                        ax.errorbar([i], [y], yerr=err, fmt="o", color=c, label=label, capsize=3)
                    if ref is not None:
                        ax.fill_between([i - 0.3, i + 0.3], _f(ref["ci_low"]), _f(ref["ci_high"]), color=c,
                                        alpha=0.18, linewidth=0)
                        ax.plot([i - 0.3, i + 0.3], [_f(ref["value"])] * 2, color=c, ls="--", lw=1)
                else:
                    xs = [r["stage"] for r in st]
                    ax.plot(xs, [_f(r["value"]) for r in st], "-o", ms=3, color=c, label=label)
                    ax.fill_between(xs, [_f(r["ci_low"]) for r in st], [_f(r["ci_high"]) for r in st],
                                    color=c, alpha=0.2, linewidth=0)
                    if ref is not None and xs:
                        ax.axhspan(_f(ref["ci_low"]), _f(ref["ci_high"]), color=c, alpha=0.08, linewidth=0)
                        ax.axhline(_f(ref["value"]), color=c, ls="--", lw=0.8)
            cal = [_f(r["value"]) for r in sel if r.get("series") == "calibration"]
            if cal:
                ax.axhline(float(np.nanmean(cal)), color="0.4", ls=":", lw=1.2)
            if tau is not None:
                ax.axhline(float(tau), color="k", lw=0.6)
            if single:
                ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=7)
            else:
                ax.set_xticks(stages, [labels[s] for s in stages], rotation=45, ha="right", fontsize=7)
                vs = next((r["stage"] for r in sel if r.get("series") == "verdict"), None)
                if vs is not None:
                    ax.axvline(vs, color="0.6", lw=0.8, ls="-.")
            ax.set_ylim(-1.05, 1.05)
            ax.set_title(METRIC_TITLES.get(metric, metric), fontsize=9)
            ax.legend(fontsize=6, loc="lower left")
        axes[0].set_ylabel("similarity to the original map")
        fig.suptitle(f"{check} — model {model}, world {world}, seed {seed}   "
                     f"(dashed/band: retrain reference; dotted: random-map calibration; "
                     f"black: tau = {tau})", fontsize=9)
        out.append((f"{check}: similarity vs stage ({model}, {world}, seed {seed})", _png(fig)))
    return out


def _load(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def grids(check: str, artifacts_dir: str | Path, n_inputs: int = 2) -> list[tuple[str, bytes]]:
    from matplotlib.figure import Figure

    root = Path(artifacts_dir)
    if not root.is_dir():
        return []
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for path in sorted(root.rglob(f"sanity__{check}__*.npz")):
        d = _load(path)
        if str(d["check"]) != check:
            continue
        groups[(str(d["model"]), str(d["world"]), int(d["seed"]))].append(d)
    out = []
    for (model, world, seed), ds in sorted(groups.items()):
        ds = sorted(ds, key=lambda d: str(d["method"]))
        n_img = min(int(d["abs"].shape[1]) for d in ds)
        for i in range(min(n_inputs, n_img)):
            n_cols = 2 + max(int(d["abs"].shape[0]) for d in ds)   # input, stages, retrained model
            fig = Figure(figsize=(1.15 * n_cols, 1.2 * len(ds) + 0.6))
            axes = fig.subplots(len(ds), n_cols, squeeze=False)
            for r, d in enumerate(ds):
                img = d["images"][i].astype(np.float32)
                axes[r][0].imshow(np.clip(img.transpose(1, 2, 0), 0, 1) if img.shape[0] == 3 else img[0],
                                  cmap=None if img.shape[0] == 3 else "gray")
                axes[r][0].set_ylabel(str(d["method"]), fontsize=7, rotation=0, ha="right", va="center")
                for s in range(d["abs"].shape[0]):
                    ax = axes[r][s + 1]
                    ax.imshow(d["abs"][s, i].astype(np.float32), cmap="gray", vmin=0, vmax=1)
                    if bool(d["failed"][s, i]):
                        ax.text(0.5, 0.5, "failed", color="red", ha="center", va="center", transform=ax.transAxes)
                    if r == 0:
                        ax.set_title(str(d["stage_labels"][s]), fontsize=7, rotation=30)
                for s in range(d["abs"].shape[0] + 1, n_cols - 1):
                    axes[r][s].set_visible(False)
                axes[r][-1].imshow(d["reference_abs"][i].astype(np.float32), cmap="gray", vmin=0, vmax=1)
                if r == 0:
                    axes[r][-1].set_title("retrained\n(other seed)", fontsize=7)
            for row_axes in axes:
                for ax in row_axes:
                    ax.set_xticks([])
                    ax.set_yticks([])
            axes[0][0].set_title("input", fontsize=7)
            fig.suptitle(f"{check}: abs maps, input {i} ({model}, {world}, seed {seed})", fontsize=9)
            out.append((f"{check}: maps per method x stage, input {i} ({model}, {world}, seed {seed})", _png(fig)))
    return out
