"""model_anomaly's figures: score distributions per family against the normal population, the paper-style
grid of visualizations (rows: models; columns: the same inputs; attribution maps in the cividis colour
map, each data pixel a 2 x 2 block, see :func:`xaudit.core.imaging.montage`) and the input-identification
ROC curves. Each function returns (title, PNG bytes, caption) triples; the caption says what to look for."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xaudit.checks.base import VERDICT_CODE, rows_by_model
from xaudit.core.imaging import montage, png

CHECK = "model_anomaly"
SCORES_CAPTION = ("Each dot is one audited model's score (how far its maps are from the normal population's), per "
                  "anomaly family; the dashed line is the largest score of a normal model. A method detects a family "
                  "when that family's models sit above the dashed line (red: flagged); letters above give each "
                  "family's verdict (P/F/?) and AUROC.")
GRID_CAPTION = ("Rows: the audited models (the normal ones first), columns: the same inputs (top row); attribution "
                "maps in cividis, dark blue = low, yellow = high. A method that can audit models shows the anomalous "
                "models' maps visibly unlike the normal rows; rows that all look alike mean the maps do not see the "
                "difference between the models.")
ROC_CAPTION = ("ROC of telling each backdoor/watermark model's triggered inputs from clean ones by the per-input "
               "score of its maps, one curve per model; the dotted diagonal is chance. Curves that bow to the top "
               "left mean the method's maps single out the triggered inputs.")


def _paths(artifacts) -> list[Path]:
    return sorted(p for d in map(Path, artifacts) if Path(d).is_dir() for p in Path(d).glob(f"debugging__{CHECK}__*.npz"))


def scores_figure(rows: Sequence[dict[str, Any]]) -> list[tuple[str, bytes, str]]:
    """Per (model group, world, seed): one panel per method (rows) and distance (columns); in each, every
    model's score as a dot per family (normal first), the largest normal score as the detection line, and
    each family's verdict letter and AUROC."""
    from xaudit.report.figures import panel_figure, text_inches

    out = []
    for (model, world, seed), rs in rows_by_model(rows, CHECK):
        scores = [r for r in rs if r.get("series") == "model"]
        if not scores:
            continue
        methods = sorted({r["method"] for r in scores})
        dists = list(dict.fromkeys(r["distance"] for r in scores))
        fams = ["normal"] + [f for f in dict.fromkeys(r["anomaly"] for r in scores) if f != "normal"]
        ticks = 0.12 + max(text_inches(f, 6) for f in fams) * 0.71                  # rotated 45 degrees
        fig, axes = panel_figure(len(methods), len(dists), (max(1.4, 0.5 * len(fams)), 1.5), left=0.45, right=0.1,
                                 bottom=ticks, top=0.85, wspace=0.35, hspace=ticks + 0.45)
        for i, meth in enumerate(methods):
            for j, dist in enumerate(dists):
                ax = axes[i][j]
                sel = [r for r in scores if r["method"] == meth and r["distance"] == dist]
                px, py, pc = [], [], []            # one scatter a panel (one per family drew slowly)
                for x, fam in enumerate(fams):
                    v = [r["value"] for r in sel if r["anomaly"] == fam and r["value"] is not None]
                    flagged = [bool(r.get("flagged")) for r in sel if r["anomaly"] == fam and r["value"] is not None]
                    px += list(x + np.linspace(-0.15, 0.15, len(v)) if len(v) > 1 else np.full(len(v), float(x)))
                    py += v
                    pc += ["C3" if f and fam != "normal" else ("C0" if fam != "normal" else "0.4") for f in flagged]
                if px:
                    ax.scatter(px, py, s=12, c=pc, zorder=3)
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
                ax.set_title(f"{meth}, {dist}", fontsize=7, pad=16, y=1.0)
                ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"{CHECK}: score per model ({model}, {world}, seed {seed})\nred: flagged, above the dashed "
                     f"largest normal score; letters: verdict, AUROC", fontsize=8, y=1 - 0.05 / fig.get_figheight(),
                     va="top")
        out.append((f"{CHECK}: scores of the population per method and distance ({model}, {world}, seed {seed})",
                    png(fig), SCORES_CAPTION))
    return out


def grids(artifacts) -> list[tuple[str, bytes, str]]:
    """Per cell (method): rows are the audited models (the normal ones first), columns the saved inputs'
    rendered maps (cividis) or caricatures, with the inputs on top."""
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
                    png(fig), GRID_CAPTION))
    return out


def roc_figure(artifacts) -> list[tuple[str, bytes, str]]:
    """Per cell and distance: the ROC curve of each backdoor / watermark model's per-input scores,
    triggered (positive) against clean inputs."""
    from xaudit.checks.sanity_figures import _load
    from xaudit.report.figures import panel_figure

    out = []
    for path in _paths(artifacts):
        d = _load(path)
        keys = sorted(k for k in d if k.startswith("roc__"))
        if not keys:
            continue
        dists = list(dict.fromkeys(k.split("__")[1] for k in keys))
        fig, axes = panel_figure(1, len(dists), (2.2, 2.0), left=0.5, right=0.1, bottom=0.45, top=0.62, wspace=0.5)
        axes = axes[0]
        from matplotlib.collections import LineCollection
        from matplotlib.lines import Line2D

        for ax, dist in zip(axes, dists):
            handles, names = [], []
            for c, k in enumerate(k for k in keys if k.split("__")[1] == dist):
                fam = k.split("__")[2]
                curves = [np.column_stack(roc_curve(scores)) for scores in d[k]]   # one collection a family
                ax.add_collection(LineCollection(curves, colors=f"C{c}", linewidths=1, alpha=0.8))
                handles.append(Line2D([], [], color=f"C{c}", lw=1))
                names.append(fam)
            ax.plot([0, 1], [0, 1], ls=":", color="0.5", lw=1)
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(dist, fontsize=8, y=1.0)
            ax.tick_params(labelsize=6.5)
            ax.set_xlabel("false positive rate (clean inputs)", fontsize=7)
            ax.set_ylabel("true positive rate (triggered)", fontsize=7)
            if handles:
                ax.legend(handles, names, fontsize=6, loc="lower right")
        fig.suptitle(f"{CHECK}, {d['method']}:\ninput identification, one curve per model", fontsize=8,
                     y=1 - 0.03 / fig.get_figheight(), va="top")
        out.append((f"{CHECK}: input-identification ROC, {d['method']} ({d['model']}, {d['world']}, "
                    f"seed {int(d['seed'])})", png(fig), ROC_CAPTION))
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
