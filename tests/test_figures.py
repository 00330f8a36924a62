"""The report's figures: small multiples per method family with the baselines in every panel, a caption
on every figure, palette PNGs that decode to the figure drawn, map grids at a whole multiple of their
data's size, and a perceptually uniform colour map for attribution maps."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from PIL import Image

from xaudit.checks import rediscovery_figures, sanity_figures
from xaudit.checks.base import CHECKS
from xaudit.core import imaging
from xaudit.core.imaging import MAP_CMAP, MAP_LEVELS, colorize, colour_table, montage, png, render, tile_scale
from xaudit.report import figures as figs

GRADIENT, BACKPROP, CAM, PERTURBATION = ["saliency", "integrated_gradients"], ["guided_backprop"], ["grad_cam"], \
    ["occlusion", "lime"]
BASELINES = ["blank", "edge", "random"]
UNKNOWN = ["my_unregistered_method"]
METHODS = GRADIENT + BACKPROP + CAM + PERTURBATION + BASELINES + UNKNOWN
# the registry's family order (xaudit.explain.base.FAMILIES), then "other"
FAMILY_PANELS = [("gradient", GRADIENT), ("modified_backprop", BACKPROP), ("perturbation", PERTURBATION),
                 ("cam", CAM), ("other", UNKNOWN)]
WORLDS = ("shapes@32", "digits@28")


def _ci(v: float, h: float = 0.05) -> dict:
    return {"value": v, "ci_low": v - h, "ci_high": v + h}


def sanity_rows(check: str, stages=(0, 1, 2, 3), metrics=("spearman_abs", "ssim"), worlds=WORLDS) -> list[dict]:
    """Rows shaped like a sanity check's: per method and metric the similarity at each stage, the retrain
    reference, the random-map calibration and the verdict row."""
    rows = []
    for w in worlds:
        for i, m in enumerate(METHODS):
            flat = m in BASELINES
            for metric in metrics:
                base = {"check": check, "method": m, "model": "clean", "world": w, "seed": 0, "metric": metric,
                        "tau": 0.5, "verdict": None, "n": 8}
                for s in stages:
                    v = 1.0 if flat or s == 0 else max(0.0, 1.0 - 0.25 * s - 0.02 * i)
                    rows.append({**base, **_ci(v), "series": "stage", "stage": s,
                                 "block": f"block{s}" if s else "original"})
                rows.append({**base, **_ci(0.45), "series": "retrain_reference", "stage": None})
                rows.append({**base, **_ci(0.0), "series": "calibration", "stage": None})
                rows.append({**base, **_ci(0.3), "series": "verdict", "stage": stages[-1],
                             "verdict": "fail" if flat else "pass"})
    return rows


def _write_sanity_npz(folder: Path, check: str, method: str, world: str, n_stages: int, rng) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    size = 32 if world.startswith("shapes") else 28
    np.savez_compressed(folder / f"sanity__{check}__{method}__clean__{world.replace('@', '-')}__seed0.npz",
                        check=check, method=method, model="clean", world=world, seed=0,
                        stage_labels=np.array(["original"] + [f"block{s}" for s in range(1, n_stages)]),
                        stages=np.arange(n_stages), verdict_stage=n_stages - 1,
                        images=rng.random((2, 3, size, size)).astype(np.float16),
                        abs=rng.random((n_stages, 2, size, size)).astype(np.float16),
                        failed=np.zeros((n_stages, 2), dtype=bool) | (method == "lime"),
                        reference_abs=rng.random((2, size, size)).astype(np.float16))


def anomaly_rows() -> list[dict]:
    rows = []
    for m in ("grad_cam", "saliency"):
        for dist in ("l2", "ssim"):
            for fam, vals in (("normal", [1.0, 1.01, 0.99]), ("backdoor", [1.2, 1.02])):
                rows += [{"check": "model_anomaly", "method": m, "model": "clean", "world": "shapes@32", "seed": 0,
                          "series": "model", "distance": dist, "anomaly": fam, "metric": "score", "value": v,
                          "verdict": None, "flagged": v > 1.01} for v in vals]
            rows.append({"check": "model_anomaly", "method": m, "model": "clean", "world": "shapes@32", "seed": 0,
                         "series": "verdict", "distance": dist, "anomaly": "backdoor", "metric": "auroc",
                         **_ci(0.75, 0.1), "verdict": "inconclusive"})
    return rows


def _write_anomaly_npz(folder: Path, method: str, rng) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / f"debugging__model_anomaly__{method}__clean__shapes-32__seed0.npz",
                        check="model_anomaly", method=method, model="clean", world="shapes@32", seed=0,
                        maps=rng.random((4, 3, 32, 32)).astype(np.float16),
                        images=rng.random((3, 3, 32, 32)).astype(np.float16),
                        families=np.array(["normal", "normal", "backdoor", "backdoor"]),
                        labels=np.array(["normal seed 0", "normal seed 1", "backdoor #0", "backdoor #1"]),
                        **{"roc__l2__backdoor": rng.random((2, 12)).astype(np.float32)})


def rediscovery_rows() -> list[dict]:
    rows = []
    for m in ("fv_pixel", "fv_fourier"):
        for fam in ("patch", "natural"):
            for judge in ("pixel", "features"):
                base = {"check": "trojan_rediscovery", "method": m, "model": "trojans", "world": "shapes@32", "seed": 0,
                        "trojan_family": fam, "judge": judge, "k_options": 8, "verdict": None}
                rows += [{**base, "series": "trojan", "metric": "accuracy", "value": v, "ci_low": None,
                          "ci_high": None} for v in (0.0, 0.5, 1.0)]
                rows += [{**base, "series": "family", "metric": k, "value": 0.125, "ci_low": None, "ci_high": None}
                         for k in ("mismatched_accuracy", "trojan_free_accuracy")]
                rows.append({**base, "series": "verdict", "metric": "accuracy", **_ci(0.5, 0.2), "verdict": "pass",
                             "controls_passed": judge == "pixel"})
    return rows


def _write_rediscovery_npz(folder: Path, method: str, rng, options) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / f"debugging__trojan_rediscovery__{method}__trojans__shapes-32__seed0.npz",
                        check="trojan_rediscovery", method=method, model="trojans", world="shapes@32", seed=0,
                        trojans=np.array(["patch_a", "natural_b"]), families=np.array(["patch", "natural"]),
                        synth=rng.random((2, 2, 3, 32, 32)).astype(np.float16), options=options,
                        true_index=np.array([3, 5]), option_names=np.array([[f"o{i}" for i in range(8)]] * 2),
                        judges=np.array(["pixel", "features"]),
                        picks=np.array([[[3, 3], [1, 5]], [[-1, 2], [5, 5]]]))


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """A small run's rows and artifact folders (one folder per cell, as the report passes them) for two
    sanity checks, model_anomaly and trojan_rediscovery."""
    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(0)
    rows, artifacts = [], {}
    for check, stages in (("cascading_randomization", (0, 1, 2, 3)), ("data_randomization", (0, 1))):
        rows += sanity_rows(check, stages)
        for w in WORLDS:
            for m in METHODS:
                d = root / f"{check}-{m}-{w}"
                _write_sanity_npz(d, check, m, w, len(stages), rng)
                artifacts.setdefault(check, []).append(d)
    rows += anomaly_rows()
    for m in ("grad_cam", "saliency"):
        _write_anomaly_npz(root / f"anomaly-{m}", m, rng)
        artifacts.setdefault("model_anomaly", []).append(root / f"anomaly-{m}")
    rows += rediscovery_rows()
    options = rng.random((2, 8, 3, 32, 32)).astype(np.float16)
    for m in ("fv_pixel", "fv_fourier"):
        _write_rediscovery_npz(root / f"rediscovery-{m}", m, rng, options)
        artifacts.setdefault("trojan_rediscovery", []).append(root / f"rediscovery-{m}")
    return rows, artifacts


def _is_png(data: bytes) -> bool:
    return isinstance(data, (bytes, bytearray)) and data[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------- families
def test_method_family_falls_back_to_other():
    assert figs.method_family("saliency") == "gradient" and figs.method_family("grad_cam") == "cam"
    assert figs.method_family("blank") == "baseline"
    assert figs.method_family("my_unregistered_method") == "other"
    panels, base = figs.family_panels(METHODS, baselines=("lime",))
    assert base == ["lime"] + BASELINES                                       # named, or of family "baseline"
    assert panels == [("gradient", GRADIENT), ("modified_backprop", BACKPROP), ("perturbation", ["occlusion"]),
                      ("cam", CAM), ("other", UNKNOWN)]
    assert figs.family_panels(BASELINES) == ([("baseline", [])], BASELINES)


# ------------------------------------------------------------------------------- small multiples
def _segments(ax, gid: str) -> list[int]:
    return [len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection) and c.get_gid() == gid]


def test_sanity_curves_one_panel_per_family_with_the_baselines_in_each():
    rows = [r for r in sanity_rows("cascading_randomization") if r["world"] == WORLDS[0]]
    fig, caption = sanity_figures.curve_figure("cascading_randomization", rows)
    assert isinstance(fig, Figure) and "calibration" in caption
    assert [ax.get_title() for ax in fig.axes] == [f for f, _ in FAMILY_PANELS]    # the headline metric only
    grey = to_rgba(figs.BASELINE_COLOUR)
    for ax, (fam, ms) in zip(fig.axes, FAMILY_PANELS):
        # the baselines: one grey dashed line each, in every panel
        (base,) = [c for c in ax.collections if isinstance(c, LineCollection) and c.get_gid() == "baselines"]
        assert len(base.get_segments()) == len(BASELINES)
        assert all(tuple(c) == grey for c in base.get_colors())
        assert base.get_linestyle()[0][1] is not None                        # dashed
        # the family's own methods: a line each and a retrain-reference line each, nothing else
        assert sorted(_segments(ax, "methods")) == [len(ms), len(ms)]
        gids = {line.get_gid() for line in ax.lines}
        assert {"calibration", "tau", "verdict_stage"} <= gids
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"{m} P" for m in sorted(ms)] + ["baselines"]
    assert "Spearman (abs maps)" in fig.axes[0].get_ylabel()


def test_single_comparison_panels_show_the_baselines_after_the_family():
    rows = [r for r in sanity_rows("data_randomization", (0, 1)) if r["world"] == WORLDS[0]]
    fig, _ = sanity_figures.curve_figure("data_randomization", rows, metrics=["spearman_abs", "ssim"])
    assert len(fig.axes) == 2 * len(FAMILY_PANELS)                            # a row of panels per metric
    for ax, (fam, ms) in zip(fig.axes, FAMILY_PANELS * 2):
        (pts,) = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_gid() == "baselines"]
        assert len(pts.get_offsets()) == len(BASELINES)
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == [f"{m} P" for m in sorted(ms)] + BASELINES


def test_generic_curves_are_small_multiples_of_metric_rows_and_family_columns():
    rows = [{**r, "series": None} for r in sanity_rows("x", metrics=("a", "b", "c")) if r.get("series") == "stage"
            and r["world"] == WORLDS[0]]
    out = figs.curve_figures(rows, METHODS, baselines=("lime",))
    ((title, fig, caption),) = out
    assert title == "metrics by stage" and caption
    fams = [("gradient", GRADIENT), ("modified_backprop", BACKPROP), ("perturbation", ["occlusion"]),
            ("cam", CAM), ("other", UNKNOWN)]
    assert [ax.get_title() for ax in fig.axes] == [f for f, _ in fams] * 3
    assert [ax.get_ylabel() for ax in fig.axes[::len(fams)]] == ["a", "b", "c"]
    for ax, (_, ms) in zip(fig.axes, fams * 3):
        assert _segments(ax, "baselines") == [len(BASELINES) + 1]            # lime, named a baseline, too
        assert _segments(ax, "methods") == [len(ms)]


# ------------------------------------------------------------------------------------ captions
def test_every_figure_of_a_small_store_has_a_caption(small_store):
    rows, artifacts = small_store
    seen = []
    for check in ("cascading_randomization", "data_randomization", "model_anomaly", "trojan_rediscovery"):
        crow = [r for r in rows if r["check"] == check]
        items = CHECKS.get(check)().figures(crow, artifacts[check])
        items += figs.verdict_figure(crow, METHODS, tuple(BASELINES))
        for item in items:
            assert len(item) == 3, item[0]
            title, fig, caption = item
            assert isinstance(caption, str) and len(caption) > 40, title
            assert _is_png(fig) or isinstance(fig, Figure), title
            seen.append(title)
    # the generic figures too: a check without its own figures
    crow = [r for r in rows if r["check"] == "cascading_randomization"]
    generic = figs.curve_figures([{**r, "check": "x"} for r in crow if r["series"] == "stage"], METHODS)
    generic += figs.metric_figure([{**r, "stage": None, "block": None} for r in rows if r["check"] == "model_anomaly"],
                                  ["grad_cam", "saliency"])
    assert len(generic) == 3 and all(len(t) == 3 and t[2] for t in generic)
    # titles kept from before (the report and its readers refer to them); one grid per (model, world, seed)
    assert "cascading_randomization: similarity vs stage (clean, shapes@32, seed 0)" in seen
    assert "cascading_randomization: maps per method x stage, input 0 (clean, shapes@32, seed 0)" in seen
    assert "data_randomization: maps per method x stage, input 0 (clean, digits@28, seed 0)" in seen
    assert sum("cascading_randomization: maps per method x stage" in t for t in seen) == 4    # 2 worlds x 2 inputs
    # the cells share their trojans' options: one montage for every method
    assert sum("synthesized images and the options" in t for t in seen) == 1
    assert seen.count("verdict scores with CI") == 4


def test_rediscovery_montage_per_cell_when_the_options_differ(small_store, tmp_path):
    _, artifacts = small_store
    rng = np.random.default_rng(1)
    _write_rediscovery_npz(tmp_path / "other", "fv_maco", rng, rng.random((2, 8, 3, 32, 32)).astype(np.float16))
    out = rediscovery_figures.montages(artifacts["trojan_rediscovery"] + [tmp_path / "other"])
    assert [t.split(", ")[1].split(" (")[0] for t, _, _ in out] == ["fv_fourier", "fv_maco", "fv_pixel"]
    assert all(_is_png(d) and cap for _, d, cap in out)


# ------------------------------------------------------------------------------------ palette PNG
@pytest.mark.parametrize("kind", ["curves", "grid"])
def test_palette_png_decodes_to_the_figure_drawn(kind, small_store):
    rows, artifacts = small_store
    if kind == "curves":
        fig, _ = sanity_figures.curve_figure("cascading_randomization",
                                             [r for r in rows if r["check"] == "cascading_randomization"
                                              and r["world"] == WORLDS[0]])
    else:
        ds = [sanity_figures._load(p) for d in artifacts["cascading_randomization"] for p in Path(d).glob("*.npz")
              if "shapes" in p.name]
        fig = sanity_figures.grid_figure("cascading_randomization", ds, 0, "grid")
    drawn = render(fig).astype(np.int16)
    data = png(fig)
    im = Image.open(io.BytesIO(data))
    assert im.mode == "P" and im.size == (drawn.shape[1], drawn.shape[0])
    decoded = np.asarray(im.convert("RGB")).astype(np.int16)
    # 256 colours for lines, text and 16-level maps: on average within 3 of 255 per channel
    assert np.abs(decoded - drawn).mean() < 3.0
    full = png(fig, palette=False)
    assert Image.open(io.BytesIO(full)).size == im.size and len(data) < len(full) / 2


# ------------------------------------------------------------------------------------- map grids
def test_montage_draws_each_data_pixel_as_an_exact_block():
    rng = np.random.default_rng(2)
    tiles = [[rng.random((3, 8, 8)), rng.random((8, 8))], [None, rng.random((1, 8, 8))]]
    fig = montage(tiles, ["a", "b"], ["c0", "c1"], title="t", scale=3)
    drawn = render(fig)
    ax = fig.axes[0]
    box = ax.get_window_extent()
    top, left = int(round(drawn.shape[0] - box.y1)), int(round(box.x0))
    mosaic = np.asarray(ax.get_images()[0].get_array())
    expect = np.kron(mosaic, np.ones((3, 3, 1))) * 255
    got = drawn[top:top + expect.shape[0], left:left + expect.shape[1]].astype(float)
    assert got.shape == expect.shape and np.abs(got - expect).max() <= 1.0
    # the map (2-D) went through the colour map; the one-channel image stayed grey
    y, x = imaging.PAD, imaging.PAD + (8 + imaging.PAD)
    assert np.allclose(mosaic[y:y + 8, x:x + 8], colorize(tiles[0][1], levels=MAP_LEVELS))
    y2 = imaging.PAD + (8 + imaging.PAD)
    grey = mosaic[y2:y2 + 8, x:x + 8]
    assert np.allclose(grey[..., 0], grey[..., 2])


def test_sanity_grids_draw_as_many_inputs_as_fit_the_tile_budget(small_store, monkeypatch):
    _, artifacts = small_store
    folders = artifacts["cascading_randomization"]
    per_input = len(METHODS) * (4 + 1)                                     # 4 stages, retrained
    monkeypatch.setattr(sanity_figures, "GRID_TILE_BUDGET", 2 * per_input)
    assert len(sanity_figures.grids("cascading_randomization", folders)) == 2 * 2
    monkeypatch.setattr(sanity_figures, "GRID_TILE_BUDGET", 2 * per_input - 1)
    out = sanity_figures.grids("cascading_randomization", folders)
    assert [t.split(", input ")[1][:1] for t, _, _ in out] == ["0", "0"]       # one input per world, never none


def test_sanity_grids_are_drawn_near_their_data_size(small_store):
    _, artifacts = small_store
    ds = [sanity_figures._load(p) for d in artifacts["cascading_randomization"] for p in Path(d).glob("*.npz")
          if "shapes" in p.name]
    fig = sanity_figures.grid_figure("cascading_randomization", ds, 0, "grid")
    assert tile_scale(32) == 2
    mosaic = np.asarray(fig.axes[0].get_images()[0].get_array())
    w, h = (fig.get_size_inches() * fig.dpi).round()
    assert mosaic.shape[:2] == ((1 + len(METHODS)) * 34 + 2, (4 + 1) * 34 + 2)    # input row; 4 stages, retrained
    assert 2 * mosaic.shape[0] <= h <= 2 * mosaic.shape[0] + 200 and w <= 2 * mosaic.shape[1] + 300
    # the failed maps (lime) are captioned; rows grouped by family, baselines last
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels.count("failed") == 4
    rows = [t for t in labels if t in METHODS]
    assert rows[-len(BASELINES):] == BASELINES and rows[:2] == sorted(GRADIENT)


# ----------------------------------------------------------------------------------- colour map
def test_map_colour_map_lightness_is_monotonic_and_near_linear():
    from skimage.color import rgb2lab

    for levels in (256, MAP_LEVELS):
        table = colour_table(MAP_CMAP, levels)
        lightness = rgb2lab(table[None].astype(np.float64))[0, :, 0]
        assert np.all(np.diff(lightness) > 0), levels                        # strictly increasing
        linear = np.linspace(lightness[0], lightness[-1], levels)
        assert np.abs(lightness - linear).max() < 2.0, levels                # within 2 L* of a straight line
        assert lightness[-1] - lightness[0] > 70                             # dark to light
    # rgb2lab itself, on a hand-worked value: sRGB 0.5 grey -> linear 0.2140 -> Y 0.2140 -> L* 53.39
    assert rgb2lab(np.array([[[0.5, 0.5, 0.5]]]))[0, 0, 0] == pytest.approx(116 * 0.2140 ** (1 / 3) - 16, abs=0.05)


def test_colorize_maps_values_through_the_table():
    table = colour_table(MAP_CMAP, 16)
    out = colorize(np.array([[0.0, 1.0], [np.nan, 2.0]]), levels=16)
    assert out.shape == (2, 2, 3) and out.dtype == np.float32
    assert np.array_equal(out[0, 0], table[0]) and np.array_equal(out[0, 1], table[15])
    assert np.array_equal(out[1, 0], table[0]) and np.array_equal(out[1, 1], table[15])   # NaN low, clipped
    assert colorize(np.zeros((1, 3, 4))).shape == (3, 4, 3)
    with pytest.raises(ValueError, match="map"):
        colorize(np.zeros((3, 4, 4)))
