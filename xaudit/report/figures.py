"""Figures for the report, drawn from result rows with matplotlib's Agg canvas (no pyplot state).

Generic figures exist for every check: the verdict scores with their CIs per method, and, when the
rows carry a ``stage`` (or ``block``/``step``) column, the curve of each metric across stages per
method. A check adds its own figures with its ``figures`` hook (declared on
:class:`xaudit.checks.Check`)::

    def figures(self, rows: list[dict], artifacts: list[Path]) -> list[tuple[str, Figure | bytes]] | None

``rows`` are the check's result rows (all methods, worlds, seeds; check-specific columns flattened;
``cell`` names the cell); ``artifacts`` are the artifact folders of the check's active, done cells
(``<run>/artifacts/<cell[:16]>/``). Return (title, matplotlib Figure or PNG bytes) pairs: they
replace the generic curves (the verdict scores figure stays); None keeps the generic figures.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from xaudit.core.imaging import png  # noqa: F401  (re-exported: report.figures.png)

STAGE_COLUMNS = ("stage", "block", "step", "layer")
MAX_METRIC_PANELS = 6
VERDICT_COLOURS = {"pass": "#2a9d40", "fail": "#d62828", "inconclusive": "#e9a400"}


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _groups(rows: list[dict]) -> "OrderedDict[str, list[dict]]":
    """Rows grouped by world/model(/seed) when those vary."""
    vary = [k for k in ("world", "model", "seed") if len({r.get(k) for r in rows}) > 1]
    out: OrderedDict[str, list[dict]] = OrderedDict()
    for r in rows:
        key = " / ".join(f"{r.get(k)}" if k != "seed" else f"seed {r.get(k)}" for k in vary) or ""
        out.setdefault(key, []).append(r)
    return out


def verdict_figure(rows: list[dict], methods: list[str], baselines: tuple[str, ...] = ()) -> Any | None:
    """Score and CI of each method's verdict rows, coloured by verdict: a column of panels per metric
    (when a cell has one verdict row per metric), a row per world/model/seed group (at most 3)."""
    vrows = [r for r in rows if r.get("verdict") is not None and _finite(r.get("value"))]
    if not vrows:
        return None
    groups = list(_groups(vrows).items())[:3]
    metrics = list(OrderedDict.fromkeys(r["metric"] for r in vrows))[:MAX_METRIC_PANELS]
    order = [m for m in methods if any(r["method"] == m for r in vrows)]
    fig = new_figure(min(3.2 * len(metrics) + 1.2, 16), max(2.2, (0.28 * len(order) + 1.0) * len(groups) + 0.3))
    axes = fig.subplots(len(groups), len(metrics), squeeze=False, sharey=True)
    for gi, (title, rs) in enumerate(groups):
        for mi, metric in enumerate(metrics):
            ax = axes[gi][mi]
            # one collection per kind of mark (not two artists per method: 25 methods x 5 metrics drew slowly)
            segs, seg_c, pts = [], [], {"o": ([], [], []), "s": ([], [], [])}
            for y, m in enumerate(order):
                for r in (r for r in rs if r["method"] == m and r["metric"] == metric):
                    c = VERDICT_COLOURS.get(str(r["verdict"]).lower(), "#555555")
                    lo, hi = r.get("ci_low"), r.get("ci_high")
                    if _finite(lo) and _finite(hi):
                        segs.append([(lo, y), (hi, y)])
                        seg_c.append(c)
                    xs, ys, cs = pts["o" if m not in baselines else "s"]
                    xs.append(r["value"])
                    ys.append(y)
                    cs.append(c)
            if segs:
                from matplotlib.collections import LineCollection

                ax.add_collection(LineCollection(segs, colors=seg_c, linewidths=2, alpha=0.7))
            for marker, (xs, ys, cs) in pts.items():
                if xs:
                    ax.scatter(xs, ys, c=cs, marker=marker, s=30, zorder=3)
            ax.autoscale_view()
            ax.set_yticks(range(len(order)), order, fontsize=8)
            ax.set_ylim(len(order) - 0.5, -0.5)
            ax.grid(axis="x", alpha=0.3)
            ax.set_title(f"{metric}" + (f" — {title}" if title else ""), fontsize=8)
    return fig


def stage_column(rows: list[dict]) -> str | None:
    for c in STAGE_COLUMNS:
        if sum(1 for r in rows if r.get(c) is not None) >= 2:
            return c
    return None


def curve_figures(rows: list[dict], methods: list[str], baselines: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """Mean value (and CI band when given) of each metric across stages, a line per method."""
    col = stage_column(rows)
    if col is None:
        return []
    srows = [r for r in rows if r.get(col) is not None and r.get("verdict") is None and _finite(r.get("value"))]
    out = []
    for title, rs in _groups(srows).items():
        metrics = list(OrderedDict.fromkeys(r["metric"] for r in rs))[:MAX_METRIC_PANELS]
        stages = list(OrderedDict.fromkeys(r[col] for r in rs))
        pos = {s: i for i, s in enumerate(stages)}
        ncols = min(3, len(metrics))
        nrows = math.ceil(len(metrics) / ncols)
        fig = new_figure(4.0 * ncols, 3.0 * nrows + 0.4)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, metric in zip(axes, metrics):
            for m in methods:
                pts = [r for r in rs if r["metric"] == metric and r["method"] == m]
                if not pts:
                    continue
                pts.sort(key=lambda r: pos[r[col]])
                x = [pos[r[col]] for r in pts]
                line, = ax.plot(x, [r["value"] for r in pts], marker="o", ms=3, label=m,
                                ls="--" if m in baselines else "-")
                if all(_finite(r.get("ci_low")) and _finite(r.get("ci_high")) for r in pts):
                    ax.fill_between(x, [r["ci_low"] for r in pts], [r["ci_high"] for r in pts],
                                    color=line.get_color(), alpha=0.15)
            ax.set_title(metric, fontsize=9)
            ax.set_xticks(range(len(stages)), [str(s) for s in stages], rotation=60, fontsize=7)
            ax.grid(alpha=0.3)
        for ax in axes[len(metrics):]:
            ax.set_visible(False)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{title} — by {col}" if title else f"by {col}", fontsize=10)
        out.append((f"metrics by {col}" + (f" ({title})" if title else ""), fig))
    return out


def metric_figure(rows: list[dict], methods: list[str]) -> Any | None:
    """Without stages: each non-verdict metric's value (and CI) per method."""
    if stage_column(rows) is not None:
        return None
    mrows = [r for r in rows if r.get("verdict") is None and _finite(r.get("value"))]
    if not mrows:
        return None
    metrics = list(OrderedDict.fromkeys(r["metric"] for r in mrows))[:MAX_METRIC_PANELS]
    order = [m for m in methods if any(r["method"] == m for r in mrows)]
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = new_figure(4.0 * ncols, (0.3 * len(order) + 1.2) * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    groups = list(_groups(mrows).items())
    for ax, metric in zip(axes, metrics):
        for gi, (g, grows) in enumerate(groups):
            off = (gi - (len(groups) - 1) / 2) * 0.15
            for y, m in enumerate(order):
                for r in (r for r in grows if r["metric"] == metric and r["method"] == m):
                    if _finite(r.get("ci_low")) and _finite(r.get("ci_high")):
                        ax.plot([r["ci_low"], r["ci_high"]], [y + off, y + off], color=f"C{gi}", lw=1.5, alpha=0.6)
                    ax.plot([r["value"]], [y + off], "o", ms=3, color=f"C{gi}", label=g if y == 0 else None)
        ax.set_yticks(range(len(order)), order, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    if len(groups) > 1:
        axes[0].legend(fontsize=7)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    return fig
