"""Shared machinery of the debugging tests (docs/protocols.md#2-debugging-tests, Adebayo et al. 2020).

Each test (``spurious``, ``mislabeled``, ``contamination``, ``ood``: one module each) asks whether a
method's maps would have shown a user a bug the model is known to have. A similarity to a ground
truth alone cannot be read (a map that ignores the model can score high, and small models' maps
differ across training seeds), so every test compares the **buggy** model with a **reference** model
without the bug on the same inputs, paired per input, with a bootstrap CI, and reports the published
measures beside it.

Row convention (besides the contract's columns), shared by the four tests and read by
:func:`figures`:

- ``series``: ``buggy`` (a measure of the buggy model's maps), ``reference`` (the same measure of the
  reference model's maps), ``calibration`` (the measure of a random map: about 0 for a similarity),
  ``difference`` (buggy minus reference, paired, or a two-sample difference), ``verdict`` (one per
  verdict metric: the difference's CI against ``margin``), ``separability`` (an AUROC), ``failures``
  (inputs a method failed on, with the reasons);
- ``subset``: which inputs a row is on, where a test has several (``flipped``, ``correct``);
- ``rule``, ``margin``, ``ci_level``, ``n_boot`` on every row; ``n_excluded`` / ``excluded`` (how many
  inputs were left out and why: a failed map, an undefined similarity).

Verdict (:func:`margin_verdict`): the test states the direction in which the buggy model's maps must
differ from the reference's; ``pass`` (the method reveals the bug) when the CI of the difference lies
beyond the margin in that direction, ``fail`` when it lies short of it, ``inconclusive`` when the CI
straddles it. A method whose map does not depend on the model (``edge``, ``random``) gives a difference
of exactly 0 and fails whenever the margin is positive.
"""
from __future__ import annotations

import math
import re
import textwrap
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from xaudit.checks.base import VERDICT_CODE, Check, CheckContext, row, rows_by_model
from xaudit.checks.toolkit import Maps, bootstrap_mean_cis, check_map_params, finite_or_none, merge_params, stream_seed
from xaudit.core.errors import check_bool, check_choice, check_range
from xaudit.core.imaging import png as _png

CITATION = ("Adebayo, Muelly, Liccardi, Kim. Debugging Tests for Model Explanations. NeurIPS 2020")
SERIES = ("buggy", "reference", "calibration", "difference", "verdict", "separability", "failures")
DIRECTIONS = ("above", "below")

DEFAULTS: dict[str, Any] = {
    "n_images": 64,                 # inputs explained per model (the default preset sets 24)
    "ci_level": 0.95,
    "n_boot": 2000,
    "ssim_data_range": 1.0,         # maps are 0-1 normalized
    "hog_pixels_per_cell": "auto",
    "hog_correlation": "spearman",
    "figure_images": 4,             # inputs whose maps are saved for the report's figure
}


def resolve_params(check: str, params: dict[str, Any], extra_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults merged with ``params``; the shared values validated (ConfigError names the parameter),
    and ``margin`` and ``require_bug_took`` where a test takes them. Each test validates its own extra
    parameters."""
    p = merge_params(check, params, {**DEFAULTS, **(extra_defaults or {})})
    check_map_params(check, p)
    if "margin" in p:
        check_range(f"{check}.margin", p["margin"], 0.0, 2.0)
    if "require_bug_took" in p:
        check_bool(f"{check}.require_bug_took", p["require_bug_took"])
    return p


# ---------------------------------------------------------------------------------- the verdict
def margin_verdict(ci_low: float | None, ci_high: float | None, margin: float, direction: str) -> str:
    """``direction="above"``: pass if ci_low > margin, fail if ci_high < margin; ``"below"``: pass if
    ci_high < -margin, fail if ci_low > -margin; inconclusive otherwise (also for an undefined CI).
    A CI that is exactly the point 0 (a model-independent map) fails for any positive margin."""
    check_choice("direction", direction, DIRECTIONS)
    lo = math.nan if ci_low is None else float(ci_low)
    hi = math.nan if ci_high is None else float(ci_high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if direction == "above":
        if lo > margin:
            return "pass"
        if hi < margin or (margin == 0 and hi <= 0):
            return "fail"
        return "inconclusive"
    if hi < -margin:
        return "pass"
    if lo > -margin or (margin == 0 and lo >= 0):
        return "fail"
    return "inconclusive"


def rule_text(difference: str, margin: float, direction: str) -> str:
    """The verdict rule as a row's ``rule`` column."""
    if direction == "above":
        return (f"pass (reveals) if CI_low({difference}) > {margin:g}; fail if CI_high < {margin:g}; "
                "else inconclusive")
    return (f"pass (reveals) if CI_high({difference}) < {-margin:g}; fail if CI_low > {-margin:g}; "
            "else inconclusive")


# ---------------------------------------------------------------------------------- statistics
def series_cis(series: dict[Any, torch.Tensor], p: dict[str, Any], seed: int, label: str
               ) -> dict[Any, tuple[float, float, float, int]]:
    """(mean, ci_low, ci_high, n) of each keyed series of per-input values (lengths may differ: the
    shorter ones are NaN-padded, and NaNs are dropped), all bootstrapped in one batch."""
    keys = list(series)
    if not keys:
        return {}
    width = max(int(series[k].numel()) for k in keys)
    stacked = torch.full((len(keys), max(width, 1)), math.nan, dtype=torch.float64)
    for i, k in enumerate(keys):
        v = series[k].detach().double().flatten().cpu()
        stacked[i, :v.numel()] = v
    out = bootstrap_mean_cis(stacked, p["n_boot"], p["ci_level"], stream_seed(seed, f"debugging/ci/{label}"))
    return dict(zip(keys, out))


def summary(metric: str, values: torch.Tensor, reasons: Sequence[str | None] | None,
            ci: tuple[float, float, float, int]) -> dict[str, Any]:
    """The row fields of one summarized series: value, CI, n, and the inputs excluded with reasons."""
    mean, lo, hi, k = ci
    vals = values.detach().double().flatten().tolist()
    reasons = list(reasons) if reasons is not None else [None] * len(vals)
    why = Counter(r for r, v in zip(reasons, vals) if not math.isfinite(v))
    return {"metric": metric, "value": finite_or_none(mean), "ci_low": finite_or_none(lo),
            "ci_high": finite_or_none(hi), "n": k, "n_excluded": len(vals) - k,
            "excluded": "; ".join(f"{r or 'undefined'} ({c})" for r, c in why.most_common())}


def series_rows(ctx: CheckContext, series: dict[tuple, torch.Tensor], reasons: dict[tuple, list],
                cis: dict[tuple, tuple], notes: dict[str, str], extra: dict[Any, dict[str, Any]],
                **common: Any) -> list[dict[str, Any]]:
    """One row per (series name, domain, measure) key but the ``difference`` ones (their rows carry verdicts,
    written by the check): the summary with its CI, the series' note, and ``extra[domain]``'s columns."""
    out = []
    for key in series:
        name, domain, m = key
        if name == "difference":
            continue
        cols = extra.get(domain, {}) if domain is not None else {}
        out.append(row(ctx, **summary(m, series[key], reasons[key], cis[key]), series=name, domain=domain,
                       note=notes[name], **cols, **common))
    return out


def failure_rows(ctx: CheckContext, sets: Sequence[tuple[str, Maps]], **common: Any) -> list[dict[str, Any]]:
    """One ``failures`` row per map set with failed inputs: how many and why."""
    out = []
    for label, maps in sets:
        k = maps.n_failed()
        if k:
            why = Counter(f for f in maps.failed if f is not None)
            out.append(row(ctx, "failed_inputs", k, None, None, len(maps.failed), series="failures",
                           failed_maps=label, reason="; ".join(f"{r} ({c})" for r, c in why.most_common()),
                           **common))
    return out


# ----------------------------------------------------------------------------------- the base
class DebuggingCheck(Check):
    """Base of the debugging tests: metadata, parameters and figures shared by the four modules."""

    kind = "re-explain"
    higher_is_better = None
    citation = CITATION
    scorecard_metric: ClassVar[str | None] = None
    extra_defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.defaults = {**DEFAULTS, **cls.extra_defaults}

    def resolve(self, params: dict[str, Any] | None) -> dict[str, Any]:
        return resolve_params(self.name, dict(params or {}), self.extra_defaults)

    def figures(self, rows: Sequence[dict[str, Any]], artifacts: Sequence[Path]) -> list[tuple[str, bytes]]:
        return figures(self.name, rows, artifacts)


# ------------------------------------------------------------------------------------ figure data
def artifact_name(ctx: CheckContext) -> str:
    parts = ["debugging", ctx.check, ctx.method, ctx.model_group, ctx.world_id, f"seed{ctx.seed}"]
    return "__".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", s) for s in parts) + ".npz"


def save_panels(ctx: CheckContext, images: torch.Tensor, panels: dict[str, torch.Tensor],
                failed: dict[str, Sequence[bool]] | None = None, **meta: Any) -> None:
    """Save the figure data of one cell: ``images`` [k, C, H, W] in [0, 1] and, per panel label in
    order (``buggy model``, ``reference model``, ``ground truth``, ...), maps [k, H, W] (or [k, 1, H, W])
    in [0, 1]; ``failed`` marks inputs whose map failed. No-op without an artifacts directory."""
    if not ctx.artifacts_dir or not panels:
        return
    path = Path(ctx.artifacts_dir) / artifact_name(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    k = images.shape[0]
    labels = list(panels)
    stack = np.stack([_hw(panels[lb])[:k] for lb in labels]).astype(np.float16)
    fails = np.stack([np.asarray(list((failed or {}).get(lb, [False] * k))[:k], dtype=bool) for lb in labels])
    np.savez_compressed(path, check=ctx.check, method=ctx.method, model=ctx.model_group, world=ctx.world_id,
                        seed=ctx.seed, panel_labels=np.array(labels), panels=stack, failed=fails,
                        images=images.detach().cpu().float().numpy().astype(np.float16),
                        **{k2: np.asarray(v) for k2, v in meta.items()})


def _hw(t) -> np.ndarray:
    a = t.detach().cpu().float().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)
    return a[:, 0] if a.ndim == 4 else a


# ---------------------------------------------------------------------------------------- figures
MEASURES_CAPTION = ("Filled dots: how similar the buggy model's maps are to the healthy model's; open dots: the same "
                    "for a reference model without the bug; bars are 95% CIs, the grey band a random map's. A method "
                    "reveals the bug when its filled dot sits clearly on the far side of its open dot, as the rule in "
                    "the title says; the letter after each method's name is its verdict (P pass, F fail, ? "
                    "inconclusive).")
GRID_CAPTION = ("The input on top, then one row per method, one column per panel named above it (maps in cividis: "
                "dark is low, yellow high). Compare each row's panels: "
                "a method whose maps look the same with and without the bug would not have shown it to you; a tile "
                "tinted red is a map the method could not compute.")


def _f(v) -> float:
    return math.nan if v is None else float(v)


def figures(check: str, rows: Sequence[dict[str, Any]], artifacts: Sequence[str | Path] = (),
            n_inputs: int = 2) -> list[tuple[str, bytes, str]]:
    """The figures of one debugging test: its measures (from rows) and its map grids (from the npz
    files of its cells)."""
    return measures_figure(check, rows) + grids(check, artifacts, n_inputs)


def measures_figure(check: str, rows: Sequence[dict[str, Any]],
                    marks: Sequence[tuple[str, str, str | None]] | None = None,
                    what: str = "buggy vs reference model per method", caption: str | None = None
                    ) -> list[tuple[str, bytes, str]]:
    """Per (model, world, seed): one panel per verdict (its metric, and its ``domain`` where the test
    has several), methods along x; by default the buggy model's value (filled dot, CI bar) and the
    reference model's (open dot, CI bar) on the inputs the verdict names (its ``subset``), the
    random-map calibration (grey band), and each method's verdict letter under its name.

    ``marks``: what to draw instead, as (legend label, series, subset) pairs, the first filled, the
    second open (the mislabeled test draws series ``buggy`` on its ``flipped`` and ``correct`` subsets);
    ``what``: the figure's title after the check's name; ``caption``: what to look for (a default for the
    buggy-vs-reference marks)."""
    from matplotlib.figure import Figure

    caption = caption or MEASURES_CAPTION

    out = []
    styles = (("C3", "C3", -0.12), ("none", "C0", 0.12))
    for (model, world, seed), rs in rows_by_model(rows, check, ("buggy", "reference", "calibration", "verdict")):
        verdict_rows = [r for r in rs if r.get("series") == "verdict"]
        panels = list(dict.fromkeys((str(r["metric"]), r.get("domain")) for r in verdict_rows))
        if not panels:
            continue
        methods = sorted({r["method"] for r in rs})
        width = max(6.0, 0.22 * len(methods) * len(panels) + 1.5)
        fig = Figure(figsize=(width, 4.4))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        fig.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, bottom=0.36, top=0.82, wspace=0.25)
        xs = np.arange(len(methods))
        for ax, (metric, domain) in zip(axes, panels):
            # rows of this panel: its metric, and its domain or none (a series shared by every domain)
            sel = [r for r in rs if str(r["metric"]) == metric and r.get("domain") in (None, domain)]
            if marks is None:
                vsub = next((r.get("subset") for r in sel if r.get("series") == "verdict"), None)
                subsets = [r.get("subset") for r in sel if r.get("series") in ("buggy", "reference")]
                shown = vsub if vsub in subsets else (subsets[0] if subsets else None)
                drawn = [("buggy model" + (f" ({shown})" if shown else ""), "buggy", shown),
                         ("reference model" + (f" ({shown})" if shown else ""), "reference", shown)]
            else:
                drawn = list(marks)
            for (label, series, subset), (face, colour, dx) in zip(drawn, styles):
                pts = {r["method"]: r for r in sel if r.get("series") == series and r.get("subset") == subset}
                get = lambda key: np.array([_f(pts[m][key]) if m in pts else math.nan for m in methods])  # noqa: E731
                ax.vlines(xs + dx, get("ci_low"), get("ci_high"), color=colour, lw=1)
                ax.scatter(xs + dx, get("value"), marker="o", s=16, facecolors=face, edgecolors=colour, zorder=3,
                           label=label)
            cal = [r for r in sel if r.get("series") == "calibration"]
            lo_c = [_f(r["ci_low"]) for r in cal]
            hi_c = [_f(r["ci_high"]) for r in cal]
            if cal and np.isfinite(lo_c).any() and np.isfinite(hi_c).any():
                ax.axhspan(float(np.nanmin(lo_c)), float(np.nanmax(hi_c)), color="0.85", zorder=0,
                           label="random map (calibration)")
            codes = {r["method"]: VERDICT_CODE.get(str(r.get("verdict")), "-") for r in sel
                     if r.get("series") == "verdict" and r.get("domain") == domain}
            ax.set_xticks(xs, [f"{m} {codes.get(m, '')}" for m in methods], rotation=90, fontsize=6)
            ax.set_title(metric + (f" ({domain})" if domain else ""), fontsize=9)
        axes[0].legend(fontsize=6, frameon=False, loc="best")
        rule = next((r.get("rule") for r in verdict_rows if r.get("rule")), "")
        wrapped = "\n".join(textwrap.wrap(str(rule), width=max(60, int(width * 14))))
        fig.suptitle(f"{check} — model {model}, world {world}, seed {seed}\n{wrapped}", fontsize=8)
        out.append((f"{check}: {what} ({model}, {world}, seed {seed})", _png(fig), caption))
    return out


def grids(check: str, artifacts: Sequence[str | Path], n_inputs: int = 2, caption: str | None = None
          ) -> list[tuple[str, bytes, str]]:
    """The paper's figure from the cells' npz files: per input, the input once on top, then one row per
    method with every saved panel (buggy model's map, reference model's map, ground truth, ...), maps in
    the report's perceptually uniform colour map, each data pixel an exact block
    (:func:`xaudit.core.imaging.montage`); a map the method could not compute is tinted red."""
    from xaudit.checks.sanity_figures import _load
    from xaudit.core.imaging import montage, tile

    caption = caption or GRID_CAPTION
    paths = sorted(p for d in map(Path, artifacts) if Path(d).is_dir()
                   for p in Path(d).glob(f"debugging__{check}__*.npz"))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for path in paths:
        d = _load(path)
        if str(d["check"]) == check:
            groups[(str(d["model"]), str(d["world"]), int(d["seed"]))].append(d)
    out = []
    red = np.array([0.6, 0.0, 0.0], dtype=np.float32)
    for (model, world, seed), ds in sorted(groups.items()):
        ds = sorted(ds, key=lambda d: str(d["method"]))
        labels = [str(x) for x in ds[0]["panel_labels"]]
        n_img = min(int(d["panels"].shape[1]) for d in ds)
        for i in range(min(n_inputs, n_img)):
            tiles: list[list] = [[ds[0]["images"][i]] + [None] * (len(labels) - 1)]
            for d in ds:
                row_tiles = []
                for s in range(d["panels"].shape[0]):
                    t = tile(d["panels"][s, i])
                    row_tiles.append(t * 0.4 + red if bool(d["failed"][s, i]) else t)
                tiles.append(row_tiles)
            fig = montage(tiles, row_labels=["input"] + [str(d["method"]) for d in ds], col_labels=labels,
                          title=f"{check}: maps, input {i} ({model}, {world}, seed {seed})")
            out.append((f"{check}: maps per method, input {i} ({model}, {world}, seed {seed})", _png(fig), caption))
    return out
