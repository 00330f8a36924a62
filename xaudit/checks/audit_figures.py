"""model_anomaly's figures: score distributions per family against the normal population, the paper-style
grid of visualizations (rows: models; columns: the same inputs) and the input-identification ROC curves."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xaudit.checks.base import VERDICT_CODE, rows_by_model
from xaudit.core.imaging import montage, png

CHECK = "model_anomaly"


def _paths(artifacts) -> list[Path]:
    return sorted(p for d in map(Path, artifacts) if Path(d).is_dir() for p in Path(d).glob(f"debugging__{CHECK}__*.npz"))


def scores_figure(rows: Sequence[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """Per (model group, world, seed): one panel per method (rows) and distance (columns); in each, every
    model's score as a dot per family (normal first), the largest normal score as the detection line, and
    each family's verdict letter and AUROC."""
    from matplotlib.figure import Figure

    out = []
    for (model, world, seed), rs in rows_by_model(rows, CHECK):
        scores = [r for r in rs if r.get("series") == "model"]
        if not scores:
            continue
        methods = sorted({r["method"] for r in scores})
        dists = list(dict.fromkeys(r["distance"] for r in scores))
        fams = ["normal"] + [f for f in dict.fromkeys(r["anomaly"] for r in scores) if f != "normal"]
        fig = Figure(figsize=(1.0 + 0.55 * len(fams) * len(dists), 0.6 + 2.3 * len(methods)), dpi=100,
                     layout="constrained")
        axes = fig.subplots(len(methods), len(dists), squeeze=False)
        for i, meth in enumerate(methods):
            for j, dist in enumerate(dists):
                ax = axes[i][j]
                sel = [r for r in scores if r["method"] == meth and r["distance"] == dist]
                for x, fam in enumerate(fams):
                    v = [r["value"] for r in sel if r["anomaly"] == fam and r["value"] is not None]
                    flagged = [bool(r.get("flagged")) for r in sel if r["anomaly"] == fam and r["value"] is not None]
                    xs = x + np.linspace(-0.15, 0.15, len(v)) if len(v) > 1 else np.full(len(v), float(x))
                    ax.scatter(xs, v, s=12, c=["C3" if f and fam != "normal" else ("C0" if fam != "normal" else "0.4")
                                                for f in flagged], zorder=3)
                normal = [r["value"] for r in sel if r["anomaly"] == "normal" and r["value"] is not None]
                if normal:
                    ax.axhline(max(normal), ls="--", color="0.5", lw=1)
                verdicts = {r["anomaly"]: r for r in rs if r.get("series") == "verdict" and r["method"] == meth
                            and r["distance"] == dist}
                for x, fam in enumerate(fams[1:], start=1):
                    v = verdicts.get(fam)
                    if v:
                        auc = "" if v.get("value") is None else f"{v['value']:.2f}"
                        ax.annotate(f"{VERDICT_CODE.get(v.get('verdict'), '')}\n{auc}", (x, 1.0),
                                    xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=6)
                ax.set_xticks(range(len(fams)), fams, rotation=45, ha="right", fontsize=6)
                ax.tick_params(axis="y", labelsize=6)
                ax.set_title(f"{meth}, {dist}", fontsize=7, pad=16)
                ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"{CHECK}: score per model (red: flagged, above the dashed largest normal score); letters: verdict, "
                     f"AUROC ({model}, {world}, seed {seed})", fontsize=8)
        out.append((f"{CHECK}: scores of the population per method and distance ({model}, {world}, seed {seed})",
                    png(fig)))
    return out


def grids(artifacts) -> list[tuple[str, bytes]]:
    """Per cell (method): rows are the audited models (the normal ones first), columns the saved inputs'
    rendered maps, with the inputs on top."""
    from xaudit.checks.sanity_figures import _load

    out = []
    for path in _paths(artifacts):
        d = _load(path)
        maps, fams, labels = d["maps"].astype(np.float32), [str(f) for f in d["families"]], [str(x) for x in d["labels"]]
        if maps.shape[1] == 0:
            continue
        tiles = [[img.astype(np.float32) for img in d["images"]]]
        row_labels = ["input"]
        for i in range(len(fams)):
            tiles.append([maps[i, j] for j in range(maps.shape[1])])
            row_labels.append(labels[i])
        fig = montage(tiles, row_labels, [f"input {j}" for j in range(maps.shape[1])],
                      title=f"{CHECK}, {d['method']}: every model's map of the same inputs")
        out.append((f"{CHECK}: visualizations per model, {d['method']} ({d['model']}, {d['world']}, seed {int(d['seed'])})",
                    png(fig)))
    return out


def roc_figure(artifacts) -> list[tuple[str, bytes]]:
    """Per cell and distance: the ROC curve of each backdoor / watermark model's per-input scores,
    triggered (positive) against clean inputs."""
    from matplotlib.figure import Figure

    from xaudit.checks.sanity_figures import _load

    out = []
    for path in _paths(artifacts):
        d = _load(path)
        keys = sorted(k for k in d if k.startswith("roc__"))
        if not keys:
            continue
        dists = list(dict.fromkeys(k.split("__")[1] for k in keys))
        fig = Figure(figsize=(2.6 * len(dists) + 0.4, 2.9), dpi=100, layout="constrained")
        axes = fig.subplots(1, len(dists), squeeze=False)[0]
        for ax, dist in zip(axes, dists):
            for c, k in enumerate(k for k in keys if k.split("__")[1] == dist):
                fam = k.split("__")[2]
                for m, scores in enumerate(d[k]):
                    fpr, tpr = roc_curve(scores)
                    ax.plot(fpr, tpr, color=f"C{c}", lw=1, alpha=0.8, label=fam if m == 0 else None)
            ax.plot([0, 1], [0, 1], ls=":", color="0.5", lw=1)
            ax.set_title(dist, fontsize=8)
            ax.set_xlabel("false positive rate (clean inputs)", fontsize=7)
            ax.set_ylabel("true positive rate (triggered)", fontsize=7)
            ax.legend(fontsize=6)
        fig.suptitle(f"{CHECK}, {d['method']}: input identification, one curve per model", fontsize=8)
        out.append((f"{CHECK}: input-identification ROC, {d['method']} ({d['model']}, {d['world']}, "
                    f"seed {int(d['seed'])})", png(fig)))
    return out


def roc_curve(scores) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of per-input scores whose first half are clean (negative) and second half triggered."""
    s = np.asarray(scores, dtype=np.float64)
    k = len(s) // 2
    labels = np.r_[np.zeros(k), np.ones(len(s) - k)]
    ok = np.isfinite(s)
    s, labels = s[ok], labels[ok]
    order = np.argsort(-s, kind="stable")
    tp = np.r_[0, np.cumsum(labels[order])]
    fp = np.r_[0, np.cumsum(1 - labels[order])]
    return fp / max(1.0, fp[-1]), tp / max(1.0, tp[-1])


__all__ = ["scores_figure", "grids", "roc_figure", "roc_curve"]
