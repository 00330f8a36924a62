"""trojan_rediscovery's figures: accuracy per method (box plots over trojans, as Casper et al. draw them)
and a montage per method of synthesized images beside the 8 options with each judge's pick marked (each
data pixel a 2 x 2 block, see :func:`xaudit.core.imaging.montage`). Each function returns (title, PNG
bytes, caption) triples; the caption says what to look for."""
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
ACCURACY_CAPTION = ("Per method, a box over the family's trojans of how often the judge picked the true trigger among "
                    "the k options from the method's synthesized images (each trojan a dot); dashed: chance 1/k; open "
                    "markers: the nulls (a mismatched trojan's options, a trojan-free class), which a working method "
                    "beats. A method that passes sits well above chance and above both nulls; letters give the "
                    "verdict.")
SHARED_MONTAGE_CAPTION = ("Each row: one trojan's options (the judges' choices; the true trigger framed green), then "
                          "every method's synthesized images for it; under each image, the option each judge picked "
                          "(judges in order), and a green frame when every judge picked the true trigger. A method "
                          "that works synthesizes images in which the true trigger is recognisable: its captions "
                          "repeat the green option's number.")
MONTAGE_CAPTION = ("Each row: one trojan, its synthesized images (first columns; the caption under each lists the "
                   "option each judge picked, judges in order) beside the options the judges chose from; green frame: "
                   "the true trigger, other frames: a judge's wrong pick (the captions name the judges). "
                   "A method that works synthesizes images in which the true trigger is recognisable, so the picks "
                   "land on the green frame.")


def _f(v) -> float:
    return math.nan if v is None else float(v)


def accuracy_figure(rows: Sequence[dict[str, Any]]) -> list[tuple[str, bytes, str]]:
    """Per (model, world, seed): one panel per family x judge; per method a box of its trojans'
    accuracies (each trojan a dot), the chance line 1/k, and the family means of the two nulls
    (mismatched, trojan-free) as open markers; the verdict letter above each method."""
    from xaudit.report.figures import panel_figure, text_inches

    out = []
    for (model, world, seed), rs in rows_by_model(rows, CHECK):
        panels = list(dict.fromkeys((r.get("trojan_family"), r.get("judge")) for r in rs if r.get("series") == "verdict"))
        if not panels:
            continue
        methods = sorted({r["method"] for r in rs if r.get("series") == "trojan"})
        fams = list(dict.fromkeys(f for f, _ in panels))
        judges = list(dict.fromkeys(j for _, j in panels))
        ticks = 0.15 + max((text_inches(m, 7) for m in methods), default=0.3) * 0.71    # rotated 45 degrees
        fig, axes = panel_figure(len(fams), len(judges), (max(1.6, 0.45 * len(methods) + 0.3), 1.7), left=0.6,
                                 right=0.1, bottom=ticks, top=0.75, wspace=0.15, hspace=ticks + 0.45, sharey=True)
        k = next((r.get("k_options") for r in rs if r.get("k_options")), 8)
        xs = np.arange(len(methods))
        for (fam, judge) in panels:
            ax = axes[fams.index(fam)][judges.index(judge)]
            sel = [r for r in rs if r.get("trojan_family") == fam and r.get("judge") == judge]
            data = [[_f(r["value"]) for r in sel if r.get("series") == "trojan" and r.get("metric") == "accuracy"
                     and r["method"] == m] for m in methods]
            data = [[v for v in d if math.isfinite(v)] for d in data]
            _boxes(ax, data, xs)
            jitter = [np.full(len(d), i) + np.linspace(-0.12, 0.12, len(d)) for i, d in enumerate(data)]
            ax.scatter(np.concatenate(jitter), np.concatenate([np.asarray(d, dtype=float) for d in data]), s=9,
                       color="C0", zorder=3)
            for metric, marker, label in (("mismatched_accuracy", "v", "mismatched null"),
                                          ("trojan_free_accuracy", "s", "trojan-free class")):
                v = [next((_f(r["value"]) for r in sel if r.get("series") == "family" and r.get("metric") == metric
                           and r["method"] == m), math.nan) for m in methods]
                ax.scatter(xs + 0.3, v, marker=marker, s=14, facecolors="none", edgecolors="0.35", label=label)
            ax.axhline(1.0 / k, ls="--", color="0.4", lw=1, label=f"chance 1/{k}")
            verdicts = {r["method"]: r for r in sel if r.get("series") == "verdict"}
            codes = []
            for m in methods:
                v = verdicts.get(m, {})
                codes.append(VERDICT_CODE.get(v.get("verdict"), "") + ("" if v.get("controls_passed", True) else "*"))
            for i, code in enumerate(codes):
                ax.text(i, 1.01, code, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7)
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlim(-0.5, len(methods) - 0.5)
            ax.set_xticks(xs, methods, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{fam} family, judge {judge}", fontsize=8, pad=11, y=1.0)
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].set_ylabel("accuracy (picks of the true trigger)", fontsize=7)
        axes[0][0].legend(fontsize=6, loc="upper left")
        fig.suptitle(f"{CHECK}: accuracy per method, box over the family's trojans; letters: verdict (* the judge "
                     f"failed a control there)\n({model}, {world}, seed {seed})", fontsize=8,
                     y=1 - 0.05 / fig.get_figheight(), va="top")
        out.append((f"{CHECK}: judged accuracy per method, family and judge ({model}, {world}, seed {seed})", png(fig),
                    ACCURACY_CAPTION))
    return out


def _boxes(ax, data: Sequence[Sequence[float]], xs, width: float = 0.5) -> None:
    """Box plots (quartile box, median, whiskers to the furthest point within 1.5 IQR; no fliers) of each
    list in ``data`` at ``xs`` as three collections (``Axes.boxplot`` made six artists per box)."""
    from matplotlib.collections import LineCollection, PolyCollection

    rects, medians, whiskers = [], [], []
    for x, d in zip(xs, data):
        if not len(d):
            continue
        v = np.sort(np.asarray(d, dtype=float))
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        iqr = q3 - q1
        lo, hi = v[v >= q1 - 1.5 * iqr].min(), v[v <= q3 + 1.5 * iqr].max()
        h = width / 2
        rects.append([(x - h, q1), (x + h, q1), (x + h, q3), (x - h, q3)])
        medians.append([(x - h, med), (x + h, med)])
        whiskers += [[(x, q1), (x, lo)], [(x, q3), (x, hi)], [(x - h / 2, lo), (x + h / 2, lo)],
                     [(x - h / 2, hi), (x + h / 2, hi)]]
    ax.add_collection(PolyCollection(rects, facecolors="none", edgecolors="k", linewidths=1, zorder=2))
    ax.add_collection(LineCollection(whiskers, colors="k", linewidths=1, zorder=2))
    ax.add_collection(LineCollection(medians, colors="C0", linewidths=1.2, zorder=2.5))


def montages(artifacts: Sequence[str | Path]) -> list[tuple[str, bytes, str]]:
    """Per (model, world, seed): one montage of every method's cell when the cells share their trojans
    and options (:func:`shared_montage_figure`: the options once, then each method's synthesized images:
    a third of the pixels of a montage per method, which repeated the same options); otherwise per cell
    (:func:`montage_figure`)."""
    from xaudit.checks.sanity_figures import _load

    paths = sorted(p for d in map(Path, artifacts) if Path(d).is_dir()
                   for p in Path(d).glob(f"debugging__{CHECK}__*.npz"))
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for path in paths:
        d = _load(path)
        if str(d["check"]) == CHECK:
            groups[(str(d["model"]), str(d["world"]), int(d["seed"]))].append(d)
    out = []
    for (model, world, seed), ds in sorted(groups.items()):
        ds = sorted(ds, key=lambda d: str(d["method"]))
        first = ds[0]
        if len(ds) > 1 and all(np.array_equal(d[k], first[k]) for d in ds[1:]
                               for k in ("trojans", "options", "true_index", "judges")):
            out.append((f"{CHECK}: synthesized images and the options, every method ({model}, {world}, seed {seed})",
                        png(shared_montage_figure(ds)), SHARED_MONTAGE_CAPTION))
            continue
        for d in ds:
            out.append((f"{CHECK}: synthesized images and the options, {d['method']} ({model}, {world}, seed {seed})",
                        png(montage_figure(d)), MONTAGE_CAPTION))
    return out


def _picks_caption(d: dict[str, Any], t: int, r: int) -> str:
    """Each judge's pick (option number, "-" for none) for trojan ``t``, restart ``r``, judges in order."""
    return " ".join(str(int(pk) + 1) if pk >= 0 else "-" for pk in d["picks"][:, t, r])


def shared_montage_figure(ds: Sequence[dict[str, Any]]):
    """One row per trojan: its options (the true one framed green), then each method's shown restarts'
    synthesized images, each captioned with every judge's pick (option numbers, judges in order; a
    synthesized image framed green when every judge picked the true option)."""
    first = ds[0]
    judges = [str(j) for j in first["judges"]]
    n_opt = first["options"].shape[1]
    tiles, labels, outlines, captions = [], [], {}, {}
    for t, name in enumerate(first["trojans"]):
        true = int(first["true_index"][t])
        row = [o.astype(np.float32) for o in first["options"][t]]
        outlines[(t, true)] = TRUE_COLOUR
        for d in ds:
            for r in range(d["synth"].shape[1]):
                c = len(row)
                row.append(d["synth"][t, r].astype(np.float32))
                captions[(t, c)] = _picks_caption(d, t, r)
                if all(int(pk) == true for pk in d["picks"][:, t, r]):
                    outlines[(t, c)] = TRUE_COLOUR
        tiles.append(row)
        labels.append(str(name))
    cols = [f"option {i + 1}" for i in range(n_opt)]
    cols += [f"{d['method']} #{r}" for d in ds for r in range(d["synth"].shape[1])]
    legend = ", ".join(f"j{j + 1} = {n}" for j, n in enumerate(judges))
    return montage(tiles, labels, cols, outlines=outlines, captions=captions,
                   title=f"{CHECK}: the options (true trigger framed green), then each method's synthesized images; "
                         f"under each: the option each judge picked; green frame: every judge picked the true "
                         f"trigger\n{legend}")


def montage_figure(d: dict[str, Any]):
    """The montage Figure of one cell's npz (see :func:`montages`)."""
    judges = [str(j) for j in d["judges"]]
    tiles, labels, outlines, captions = [], [], {}, {}
    n_shown = d["synth"].shape[1]
    for t, name in enumerate(d["trojans"]):
        row_i = len(tiles)
        true = int(d["true_index"][t])
        tiles.append([d["synth"][t, r].astype(np.float32) for r in range(n_shown)]
                     + [o.astype(np.float32) for o in d["options"][t]])
        labels.append(str(name))
        outlines[(row_i, n_shown + true)] = TRUE_COLOUR
        picked: dict[int, list[str]] = defaultdict(list)
        for r in range(n_shown):
            picks = [int(d["picks"][j, t, r]) for j in range(len(judges))]
            captions[(row_i, r)] = _picks_caption(d, t, r)
            for j, pk in enumerate(picks):
                if pk >= 0 and str(j + 1) not in picked[pk]:
                    picked[pk].append(str(j + 1))
        for pk, who in picked.items():
            if pk != true:
                outlines[(row_i, n_shown + pk)] = PICK_COLOURS[(int(who[0]) - 1) % len(PICK_COLOURS)]
            captions[(row_i, n_shown + pk)] = "j" + ",".join(who)
    cols = [f"synthesized #{r}" for r in range(n_shown)] + [f"option {i + 1}" for i in range(d["options"].shape[1])]
    legend = ", ".join(f"j{j + 1} = {n}" for j, n in enumerate(judges))
    return montage(tiles, labels, cols, outlines=outlines, captions=captions,
                   title=f"{d['method']}: green frame = true trigger, other frames = a judge's wrong pick; under each "
                         f"synthesized image: each judge's pick\n{legend}")
