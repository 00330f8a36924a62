"""trojan_rediscovery's figures: accuracy per method (box plots over trojans, as Casper et al. draw them)
and a montage per method of synthesized images beside the 8 options with each judge's pick marked."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xaudit.checks.base import VERDICT_CODE, rows_by_model
from xaudit.core.imaging import montage, png

CHECK = "trojan_rediscovery"
PICK_COLOURS = ("#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")   # one per judge
TRUE_COLOUR = "#2ca02c"


def _f(v) -> float:
    return math.nan if v is None else float(v)


def accuracy_figure(rows: Sequence[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """Per (model, world, seed): one panel per family x judge; per method a box of its trojans'
    accuracies (each trojan a dot), the chance line 1/k, and the family means of the two nulls
    (mismatched, trojan-free) as open markers; the verdict letter above each method."""
    from matplotlib.figure import Figure

    out = []
    for (model, world, seed), rs in rows_by_model(rows, CHECK):
        panels = list(dict.fromkeys((r.get("trojan_family"), r.get("judge")) for r in rs if r.get("series") == "verdict"))
        if not panels:
            continue
        methods = sorted({r["method"] for r in rs if r.get("series") == "trojan"})
        fams = list(dict.fromkeys(f for f, _ in panels))
        judges = list(dict.fromkeys(j for _, j in panels))
        fig = Figure(figsize=(max(6.0, 1.0 + 1.6 * len(judges) * max(1, len(methods)) / 3), 1.0 + 2.4 * len(fams)),
                     dpi=100, layout="constrained")
        axes = fig.subplots(len(fams), len(judges), squeeze=False, sharey=True)
        k = next((r.get("k_options") for r in rs if r.get("k_options")), 8)
        xs = np.arange(len(methods))
        for (fam, judge) in panels:
            ax = axes[fams.index(fam)][judges.index(judge)]
            sel = [r for r in rs if r.get("trojan_family") == fam and r.get("judge") == judge]
            data = [[_f(r["value"]) for r in sel if r.get("series") == "trojan" and r.get("metric") == "accuracy"
                     and r["method"] == m] for m in methods]
            data = [[v for v in d if math.isfinite(v)] or [math.nan] for d in data]
            ax.boxplot(data, positions=xs, widths=0.5, showfliers=False, medianprops={"color": "C0"})
            for i, d in enumerate(data):
                ax.scatter(np.full(len(d), i) + np.linspace(-0.12, 0.12, len(d)), d, s=9, color="C0", zorder=3)
            for metric, marker, label in (("mismatched_accuracy", "v", "mismatched null"),
                                          ("trojan_free_accuracy", "s", "trojan-free class")):
                v = [next((_f(r["value"]) for r in sel if r.get("series") == "family" and r.get("metric") == metric
                           and r["method"] == m), math.nan) for m in methods]
                ax.scatter(xs + 0.3, v, marker=marker, s=14, facecolors="none", edgecolors="0.35", label=label)
            ax.axhline(1.0 / k, ls="--", color="0.4", lw=1, label=f"chance 1/{k}")
            verdicts = {r["method"]: r for r in sel if r.get("series") == "verdict"}
            for i, m in enumerate(methods):
                v = verdicts.get(m, {})
                code = VERDICT_CODE.get(v.get("verdict"), "") + ("" if v.get("controls_passed", True) else "*")
                ax.annotate(code, (i, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=7)
            ax.set_ylim(-0.05, 1.05)
            ax.set_xticks(xs, methods, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{fam} family, judge {judge}", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].set_ylabel("accuracy (picks of the true trigger)", fontsize=7)
        axes[0][0].legend(fontsize=6, loc="upper left")
        fig.suptitle(f"{CHECK}: accuracy per method, box over the family's trojans; letters: verdict (* the judge "
                     f"failed a control there) ({model}, {world}, seed {seed})", fontsize=8)
        out.append((f"{CHECK}: judged accuracy per method, family and judge ({model}, {world}, seed {seed})", png(fig)))
    return out


def montages(artifacts: Sequence[str | Path]) -> list[tuple[str, bytes]]:
    """Per cell (method): one row per trojan and shown restart: the synthesized image (as the judges see
    it), then the 8 options; the true option framed green, each judge's pick framed in its colour
    (captions name the judges that picked an option)."""
    from xaudit.checks.sanity_figures import _load

    paths = sorted(p for d in map(Path, artifacts) if Path(d).is_dir()
                   for p in Path(d).glob(f"debugging__{CHECK}__*.npz"))
    out = []
    for path in paths:
        d = _load(path)
        if str(d["check"]) != CHECK:
            continue
        judges = [str(j) for j in d["judges"]]
        tiles, labels, outlines, captions = [], [], {}, {}
        n_shown = d["synth"].shape[1]
        for t, name in enumerate(d["trojans"]):
            for r in range(n_shown):
                row_i = len(tiles)
                tiles.append([d["synth"][t, r].astype(np.float32)] + [o.astype(np.float32) for o in d["options"][t]])
                labels.append(f"{name} #{r}")
                outlines[(row_i, 1 + int(d["true_index"][t]))] = TRUE_COLOUR
                picked: dict[int, list[str]] = defaultdict(list)
                for j, judge in enumerate(judges):
                    pk = int(d["picks"][j, t, r])
                    if pk >= 0:
                        picked[pk].append(str(j + 1))
                for pk, who in picked.items():
                    if pk != int(d["true_index"][t]):
                        outlines[(row_i, 1 + pk)] = PICK_COLOURS[(int(who[0]) - 1) % len(PICK_COLOURS)]
                    captions[(row_i, 1 + pk)] = "j" + ",".join(who)
        cols = ["synthesized"] + [f"option {i + 1}" for i in range(d["options"].shape[1])]
        legend = ", ".join(f"j{j + 1} = {n}" for j, n in enumerate(judges))
        fig = montage(tiles, labels, cols, outlines=outlines, captions=captions,
                      title=f"{d['method']}: green frame = true trigger, other frames = a judge's wrong pick\n{legend}")
        out.append((f"{CHECK}: synthesized images and the options, {d['method']} ({d['model']}, {d['world']}, "
                    f"seed {int(d['seed'])})", png(fig)))
    return out
