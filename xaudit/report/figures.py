"""Figures for the report, drawn from result rows with matplotlib's Agg canvas (no pyplot state).

Generic figures exist for every check: the verdict scores with their CIs per method, and, when the
rows carry a ``stage`` (or ``block``/``step``) column, the curve of each metric across stages per
method. A check adds its own figures with its ``figures`` hook (declared on
:class:`xaudit.checks.Check`)::

    def figures(self, rows: list[dict], artifacts: list[Path]) -> list[tuple[str, Figure | bytes, str]] | None

``rows`` are the check's result rows (all methods, worlds, seeds; check-specific columns flattened;
``cell`` names the cell); ``artifacts`` are the artifact folders of the check's active, done cells
(``<run>/artifacts/<cell[:16]>/``). Return (title, matplotlib Figure or PNG bytes, caption) triples
(the caption says what to look for; older hooks return (title, figure) pairs, which the report still
takes): they replace the generic curves (the verdict scores figure stays); None keeps the generic
figures. :func:`verdict_figure`, :func:`metric_figure` and :func:`curve_figures` return lists of such
triples (one or none for the first two); the figures are left unrendered (inspectable; the report
encodes them with :func:`png`, a palette PNG).

Curves are small multiples: one panel per *method family* (:func:`method_family`: the registered
method's family, "other" for names the registry does not know) with that family's methods in colour,
and the baselines (family "baseline", or named as baselines by the report) repeated in every panel in
grey, dashed, as the yardstick; one row of panels per metric (at most :data:`MAX_METRIC_PANELS`). All
marks of a kind are one collection per panel (one artist per method and point drew slowly with 25
methods).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Iterable, Sequence

from xaudit.core.imaging import png  # noqa: F401  (re-exported: report.figures.png)

STAGE_COLUMNS = ("stage", "block", "step", "layer")
MAX_METRIC_PANELS = 6
VERDICT_COLOURS = {"pass": "#2a9d40", "fail": "#d62828", "inconclusive": "#e9a400"}
BASELINE_FAMILY = "baseline"
OTHER_FAMILY = "other"
BASELINE_COLOUR = "0.55"
BASELINE_STYLE = (0, (3.5, 2.0))       # dashed
PANEL_INCHES = (2.5, 1.9)              # a small multiple's panel (width, height)


def new_figure(width: float, height: float, layout: str | None = "constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout=layout)


def panel_figure(nrows: int, ncols: int, panel: tuple[float, float], left: float = 0.6, right: float = 0.15,
                 bottom: float = 0.5, top: float = 0.5, wspace: float = 0.25, hspace: float = 0.45,
                 width_ratios: Sequence[float] | None = None, **share):
    """(Figure, axes [nrows][ncols]): panels of ``panel`` = (width, height) inches (the average width
    with ``width_ratios``) and margins and gaps in inches. A fixed layout: matplotlib's constrained
    layout measured every tick label of every panel again and cost ~0.2 s a figure. (Give panel titles
    ``y=1.0`` too: an automatic title position measures the axis' tick labels, ~15 ms a panel.)"""
    from matplotlib.figure import Figure

    pw, ph = panel
    width = left + right + ncols * pw + (ncols - 1) * wspace
    height = top + bottom + nrows * ph + (nrows - 1) * hspace
    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={
        "left": left / width, "right": 1 - right / width, "bottom": bottom / height, "top": 1 - top / height,
        "wspace": wspace / pw, "hspace": hspace / ph, "width_ratios": width_ratios}, **share)
    return fig, axes


def text_inches(text: str, fontsize: float) -> float:
    """Rough width in inches of a line of text (DejaVu Sans averages ~0.6 em a character)."""
    return 0.6 * fontsize / 72 * len(str(text))


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


# ------------------------------------------------------------------------------------ families
def method_family(name: str) -> str:
    """The family of a registered method (``xaudit.explain.base.METHODS``), "other" for a name the
    registry does not know."""
    try:
        import xaudit.explain  # noqa: F401  (registers the built-in methods)
        from xaudit.explain.base import METHODS

        return str(METHODS.get(name).family or OTHER_FAMILY)
    except Exception:
        return OTHER_FAMILY


def family_panels(methods: Iterable[str], baselines: Iterable[str] = ()
                  ) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """([(family, its methods)] in the registry's family order then "other", [baselines]): the panels
    of a small-multiples figure. Baselines are the methods of family "baseline" and those named in
    ``baselines``; with no other method, one "baseline" panel with none of its own."""
    try:
        from xaudit.explain.base import FAMILIES
        order = [f for f in FAMILIES if f != BASELINE_FAMILY]
    except Exception:
        order = []
    named = set(baselines)
    fams: dict[str, list[str]] = {}
    base: list[str] = []
    for m in methods:
        f = method_family(m)
        if m in named or f == BASELINE_FAMILY:
            base.append(m)
        else:
            fams.setdefault(f, []).append(m)
    keys = sorted(fams, key=lambda f: (order.index(f) if f in order else len(order), f == OTHER_FAMILY, f))
    panels = [(f, fams[f]) for f in keys] or [(BASELINE_FAMILY, [])]
    return panels, base


def panel_grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(rows, columns) for ``n`` small panels."""
    cols = min(max_cols, max(1, n))
    return math.ceil(n / cols), cols


def draw_curves(ax, curves: Sequence[tuple[Any, Sequence[float], Sequence[float], Sequence[float] | None,
                                           Sequence[float] | None]],
                baseline: bool = False, gid: str | None = None) -> None:
    """Lines (with points) of several series in one LineCollection, their CI bands in one
    PolyCollection and the points in one scatter. ``curves``: (colour, xs, ys, lo or None, hi or None).
    ``baseline``: grey, dashed, no bands, drawn under the methods. ``gid`` tags the artists (tests and
    readers find the baselines of a panel by it)."""
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.colors import to_rgba

    lines, colours, bands, band_c, px, py, pc = [], [], [], [], [], [], []
    for colour, xs, ys, lo, hi in curves:
        if not len(xs):
            continue
        c = to_rgba(BASELINE_COLOUR if baseline else colour)
        lines.append(list(zip(xs, ys)))
        colours.append(c)
        px += list(xs)
        py += list(ys)
        pc += [c] * len(xs)
        if not baseline and lo is not None and hi is not None and len(xs) > 1 \
                and all(_finite(v) for v in list(lo) + list(hi)):
            bands.append(list(zip(xs, hi)) + list(zip(xs[::-1], lo[::-1])))
            band_c.append(to_rgba(colour, 0.15))
    z = 1.5 if baseline else 2.0
    if bands:
        ax.add_collection(PolyCollection(bands, facecolors=band_c, linewidths=0, zorder=z - 0.5, gid=gid))
    if lines:
        ax.add_collection(LineCollection(lines, colors=colours, linewidths=0.9 if baseline else 1.3,
                                         linestyles=BASELINE_STYLE if baseline else "solid", zorder=z, gid=gid))
        ax.scatter(px, py, c=pc, s=4 if baseline else 8, zorder=z + 0.1, gid=gid)
    ax.autoscale_view()


def baseline_handle(ax):
    """A legend handle for the grey dashed baselines."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color=BASELINE_COLOUR, ls=BASELINE_STYLE, lw=0.9)


# --------------------------------------------------------------------------------- the figures
GROUP_MARKERS = ("o", "^", "D")


def verdict_figure(rows: list[dict], methods: list[str], baselines: tuple[str, ...] = ()
                   ) -> list[tuple[str, Any, str]]:
    """[("verdict scores with CI", Figure, caption)] (empty without verdict rows): score and CI of each
    method's verdict rows, coloured by verdict: a panel per metric (when a cell has one verdict row per
    metric), a row per method (the baselines last, below a grey line); each world/model/seed group (at
    most 3) has its own marker, offset within the method's row (one row of panels: half the panels of a
    panel row per group, which took twice the time and bytes to say the same)."""
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    vrows = [r for r in rows if r.get("verdict") is not None and _finite(r.get("value"))]
    if not vrows:
        return []
    groups = list(_groups(vrows).items())[:3]
    metrics = list(OrderedDict.fromkeys(r["metric"] for r in vrows))[:MAX_METRIC_PANELS]
    order = [m for m in methods if any(r["method"] == m for r in vrows)]
    order += sorted({r["method"] for r in vrows} - set(order))
    order = [m for m in order if m not in baselines] + [m for m in order if m in baselines]
    ypos = {m: y for y, m in enumerate(order)}
    n_methods = sum(1 for m in order if m not in baselines)
    label_in = 0.15 + max((text_inches(m, 6.5) for m in order), default=0.3)
    row_in = 0.12 + 0.06 * len(groups)
    legend_in = 0.2 if len(groups) > 1 else 0.0
    # not sharey: a shared axis shares its locator, so every panel would make (and draw) a tick per method
    fig, axes = panel_figure(1, len(metrics), (2.2, row_in * len(order) + 0.1), left=label_in, right=0.15,
                             bottom=0.3, top=0.25 + legend_in, wspace=0.15)
    offsets = [(gi - (len(groups) - 1) / 2) * min(0.3, 0.8 / len(groups)) for gi in range(len(groups))]
    for mi, metric in enumerate(metrics):
        ax = axes[0][mi]
        # one collection per kind of mark (not two artists per method: 25 methods x 5 metrics drew slowly)
        segs, seg_c = [], []
        for gi, (_, rs) in enumerate(groups):
            xs, ys, cs = [], [], []
            for r in rs:
                if r["metric"] != metric or r["method"] not in ypos:
                    continue
                y = ypos[r["method"]] + offsets[gi]
                c = VERDICT_COLOURS.get(str(r["verdict"]).lower(), "#555555")
                lo, hi = r.get("ci_low"), r.get("ci_high")
                if _finite(lo) and _finite(hi):
                    segs.append([(lo, y), (hi, y)])
                    seg_c.append(c)
                xs.append(r["value"])
                ys.append(y)
                cs.append(c)
            if xs:
                ax.scatter(xs, ys, c=cs, marker=GROUP_MARKERS[gi], s=12 if len(groups) > 1 else 14, zorder=3)
        if segs:
            ax.add_collection(LineCollection(segs, colors=seg_c, linewidths=1.4 if len(groups) > 1 else 1.6))
        if 0 < n_methods < len(order):
            ax.axhline(n_methods - 0.5, color="0.7", lw=0.6)
        ax.autoscale_view()
        if mi == 0:
            ax.set_yticks(range(len(order)), order, fontsize=6.5)
        else:
            ax.set_yticks([])
        ax.set_ylim(len(order) - 0.5, -0.5)
        ax.tick_params(axis="x", labelsize=6.5)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(str(metric), fontsize=7.5, y=1.0)
    if len(groups) > 1:
        handles = [Line2D([], [], ls="", marker=GROUP_MARKERS[gi], color="0.35", ms=4) for gi in range(len(groups))]
        fig.legend(handles, [g for g, _ in groups], loc="upper left", ncol=len(groups), fontsize=6.5, frameon=False,
                   bbox_to_anchor=(label_in / fig.get_figwidth(), 1.0), handletextpad=0.2, borderaxespad=0.2)
    caption = ("Each method's verdict score with its CI (bar), one panel per metric"
               + (", one marker per world/model/seed (see the key)" if len(groups) > 1 else "")
               + "; green: pass, red: fail, amber: inconclusive; the baselines are the rows below the grey line. "
               "Look for methods that land apart from the baselines: where a trivial baseline passes too, "
               "the check cannot tell methods apart.")
    return [("verdict scores with CI", fig, caption)]


def stage_column(rows: list[dict]) -> str | None:
    for c in STAGE_COLUMNS:
        if sum(1 for r in rows if r.get(c) is not None) >= 2:
            return c
    return None


def curve_figure(rs: list[dict], col: str, methods: list[str], baselines: Iterable[str] = (),
                 metrics: Sequence[str] | None = None, title: str = ""):
    """Small multiples of the mean value (and CI band) of each metric across the values of ``col``:
    a row of panels per metric, a panel per method family (its methods in colour), the baselines grey
    and dashed in every panel. Returns the Figure (each panel titled by its family, each row's metric
    on its y axis; the baselines' artists carry gid "baselines")."""
    metrics = list(metrics or OrderedDict.fromkeys(r["metric"] for r in rs))[:MAX_METRIC_PANELS]
    stages = list(OrderedDict.fromkeys(r[col] for r in rs))
    pos = {s: i for i, s in enumerate(stages)}
    present = [m for m in methods if any(r["method"] == m for r in rs)]
    present += sorted({r["method"] for r in rs} - set(present))
    panels, base = family_panels(present, baselines)
    n_legend = math.ceil((max(len(ms) for _, ms in panels) + bool(base)) / 2)
    tick_in = 0.1 + max((text_inches(s, 6.5) for s in stages), default=0.2) * 0.87     # rotated 60 degrees
    fig, axes = panel_figure(len(metrics), len(panels), PANEL_INCHES, left=0.65, right=0.15,
                             bottom=tick_in + 0.1, top=0.65 + 0.1 * n_legend, wspace=0.2, hspace=0.3,
                             sharex=True, sharey="row")

    def series(ms: list[str], metric: str):
        out = []
        for i, m in enumerate(ms):
            pts = sorted((r for r in rs if r["metric"] == metric and r["method"] == m), key=lambda r: pos[r[col]])
            if not pts:
                continue
            ci = all(_finite(r.get("ci_low")) and _finite(r.get("ci_high")) for r in pts)
            out.append((f"C{i % 10}", [pos[r[col]] for r in pts], [r["value"] for r in pts],
                        [r["ci_low"] for r in pts] if ci else None, [r["ci_high"] for r in pts] if ci else None))
        return out

    for ri, metric in enumerate(metrics):
        base_curves = series(base, metric)
        for ci, (fam, ms) in enumerate(panels):
            ax = axes[ri][ci]
            draw_curves(ax, base_curves, baseline=True, gid="baselines")
            draw_curves(ax, series(ms, metric), gid="methods")
            ax.set_title(fam, fontsize=7.5, y=1.0)
            if ci == 0:
                ax.set_ylabel(metric, fontsize=7)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=6.5)
            if ri == len(metrics) - 1:
                ax.set_xticks(range(len(stages)), [str(s) for s in stages], rotation=60, fontsize=6.5)
            if ri == 0:
                from matplotlib.lines import Line2D
                handles = [Line2D([], [], color=f"C{i % 10}", lw=1.3) for i in range(len(ms))]
                labels = list(ms)
                if base:
                    handles.append(baseline_handle(ax))
                    labels.append("baselines")
                if handles:      # above the panel: the curves keep the whole panel
                    ax.legend(handles, labels, fontsize=5.5, frameon=False, ncol=2, loc="lower center",
                              bbox_to_anchor=(0.5, 1.0 + 0.24 / PANEL_INCHES[1]), handlelength=1.6,
                              columnspacing=0.8, borderpad=0)
    fig.suptitle((f"{title} — by {col}" if title else f"by {col}")
                 + (f"; baselines (grey, dashed): {', '.join(base)}" if base else ""), fontsize=8, y=0.995, va="top")
    return fig


def curve_figures(rows: list[dict], methods: list[str], baselines: tuple[str, ...] = ()
                  ) -> list[tuple[str, Any, str]]:
    """Per world/model/seed group: (title, Figure, caption) of :func:`curve_figure` over the rows'
    stage column; none when the rows have no stage column."""
    col = stage_column(rows)
    if col is None:
        return []
    srows = [r for r in rows if r.get(col) is not None and r.get("verdict") is None and _finite(r.get("value"))]
    out = []
    for title, rs in _groups(srows).items():
        fig = curve_figure(rs, col, methods, baselines, title=title)
        caption = (f"Each metric (rows) across {col} for each method family (columns), mean and CI band; the "
                   "baselines are repeated in every panel as grey dashed lines. Look for the methods of a family "
                   f"to move away from the baselines as {col} changes; a method that tracks a baseline "
                   "behaves like it.")
        out.append((f"metrics by {col}" + (f" ({title})" if title else ""), fig, caption))
    return out


def metric_figure(rows: list[dict], methods: list[str]) -> list[tuple[str, Any, str]]:
    """Without stages: [("metrics", Figure, caption)] (empty with stages or no values), each
    non-verdict metric's value (and CI) per method, one colour per world/model/seed group."""
    if stage_column(rows) is not None:
        return []
    mrows = [r for r in rows if r.get("verdict") is None and _finite(r.get("value"))]
    if not mrows:
        return []
    from matplotlib.collections import LineCollection

    metrics = list(OrderedDict.fromkeys(r["metric"] for r in mrows))[:MAX_METRIC_PANELS]
    order = [m for m in methods if any(r["method"] == m for r in mrows)]
    order += sorted({r["method"] for r in mrows} - set(order))
    nrows, ncols = panel_grid(len(metrics), 3)
    label_in = 0.15 + max((text_inches(m, 6.5) for m in order), default=0.3)
    fig, axes = panel_figure(nrows, ncols, (2.4, 0.16 * len(order) + 0.1), left=label_in, bottom=0.3, top=0.3,
                             wspace=label_in + 0.1, hspace=0.55)
    axes = axes.ravel()
    groups = list(_groups(mrows).items())
    for ax, metric in zip(axes, metrics):
        for gi, (g, grows) in enumerate(groups):
            off = (gi - (len(groups) - 1) / 2) * 0.15
            segs, xs, ys = [], [], []
            for y, m in enumerate(order):
                for r in (r for r in grows if r["metric"] == metric and r["method"] == m):
                    if _finite(r.get("ci_low")) and _finite(r.get("ci_high")):
                        segs.append([(r["ci_low"], y + off), (r["ci_high"], y + off)])
                    xs.append(r["value"])
                    ys.append(y + off)
            if segs:
                ax.add_collection(LineCollection(segs, colors=f"C{gi}", linewidths=1.3, alpha=0.6))
            if xs:
                ax.scatter(xs, ys, s=8, color=f"C{gi}", label=g or None, zorder=3)
        ax.autoscale_view()
        ax.set_yticks(range(len(order)), order, fontsize=6.5)
        ax.set_ylim(len(order) - 0.5, -0.5)
        ax.tick_params(axis="x", labelsize=6.5)
        ax.set_title(metric, fontsize=8, y=1.0)
        ax.grid(axis="x", alpha=0.3)
    if len(groups) > 1:
        axes[0].legend(fontsize=6)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    caption = ("Each measured (non-verdict) metric per method with its CI"
               + (", one colour per world/model/seed" if len(groups) > 1 else "")
               + ". Look for methods whose values stand apart from the others' and from the baselines'.")
    return [("metrics", fig, caption)]
