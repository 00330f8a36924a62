"""The spurious-correlation debugging test on hand-built models whose decision provably depends only
on the background (or only on a central region holding the object), in a 16 px world whose object
always sits in that region; and the world's own-background render it uses for GT-2."""
from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.metrics
import torch
from torch import nn

import xaudit.checks.spurious  # noqa: F401  (registers the check)
from xaudit import world as world_mod
from xaudit.checks import base as checks_base
from xaudit.checks.base import ROW_COLUMNS, CheckContext, ModelRef
from xaudit.checks.spurious import GT2_ZERO, MEASURES
from xaudit.core.errors import ConfigError
from xaudit.world.base import WORLDS
from xaudit.world.shapes import SpuriousWorld
from xaudit.zoo import BugDidNotTake

SIZE = 16
N_IMG = 12
RADIUS = 5.0                       # the object's radius (px); it lies within the central square below
CENTRE = slice(2, 14)              # the central 12 x 12 region R that holds every object
WORLD_NAME = "test_centred_spurious"
FAST = {"n_images": N_IMG, "n_boot": 400, "figure_images": 2}
WORLD = {"world": WORLD_NAME, "size": SIZE, "seed": 0, "correlation": 1.0}


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


class CentredSpurious(SpuriousWorld):
    """The spurious world at 16 px with every object centred (radius RADIUS, random rotation), so a
    model reading only pixels outside CENTRE reads only the background."""
    name = WORLD_NAME
    allowed_sizes = (SIZE,)

    def _object_params(self, idx, split_seed):
        n = len(idx)
        c = torch.full((n,), SIZE / 2)
        _, _, _, angle = super()._object_params(idx, split_seed)
        return c, c.clone(), torch.full((n,), RADIUS), angle


@pytest.fixture(autouse=True, scope="module")
def centred_world():
    WORLDS.register(WORLD_NAME)(CentredSpurious)
    yield
    WORLDS._items.pop(WORLD_NAME, None)
    WORLDS._meta.pop(WORLD_NAME, None)


def region() -> torch.Tensor:
    """bool [H, W]: the central region R."""
    r = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    r[CENTRE, CENTRE] = True
    return r


class RegionReader(nn.Module):
    """Reads only the pixels of ``pixels`` (bool [H, W]): s = their mean intensity over channels;
    logits (s, s^2 / 0.5). Both logits' input gradients are positive multiples of the indicator of
    ``pixels`` (s > 0 on these images), zero elsewhere: exact ground truth for a gradient method."""

    def __init__(self, pixels: torch.Tensor):
        super().__init__()
        w = pixels.to(torch.float32).expand(3, -1, -1) / (3 * pixels.sum())
        self.register_buffer("w", w.clone())

    def forward(self, x):
        s = (x * self.w).sum((1, 2, 3))
        return torch.stack([s, s * s / 0.5], 1)


class BackgroundReader(RegionReader):
    def __init__(self):
        super().__init__(~region())


class ObjectReader(RegionReader):
    def __init__(self):
        super().__init__(region())


GOOD_CARDS = {
    "spurious": {"bug_took": True, "name": "spurious", "clean_accuracy": 0.99, "background_only_accuracy": 0.98},
    "spurious-unbiased": {"bug_took": True, "name": "spurious-unbiased", "clean_accuracy": 0.95,
                          "background_only_accuracy": 0.5},
}


class Zoo:
    """A fake ctx.load_model: the background reader for the cell's group, the object reader for the
    reference; records every request."""

    def __init__(self, cards: dict | None = None):
        self.cards = {**GOOD_CARDS, **(cards or {})}
        self.models = {"spurious": BackgroundReader().eval(), "spurious-unbiased": ObjectReader().eval()}
        self.requests: list[ModelRef] = []

    def __call__(self, ref: ModelRef):
        self.requests.append(ref)
        return self.models[ref.spec], self.cards[ref.spec]


def context(method: str = "saliency", params: dict | None = None, zoo: Zoo | None = None,
            artifacts: str | None = None) -> CheckContext:
    return CheckContext(check="spurious", method=method, method_params={}, model_group="spurious",
                        world=dict(WORLD), seed=0, params={**FAST, **(params or {})},
                        load_model=zoo or Zoo(), artifacts_dir=artifacts)


def run(method: str = "saliency", **kw) -> list[dict]:
    return checks_base.get("spurious").run(context(method, **kw))


def by(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def one(rows, **kw) -> dict:
    found = by(rows, **kw)
    assert len(found) == 1, (kw, found)
    return found[0]


def masks() -> torch.Tensor:
    return world_mod.get(WORLD_NAME, size=SIZE).sample(range(N_IMG), split="test").object_mask


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                                 data_range=1.0)


# ------------------------------------------------------------------------- the world's background
@pytest.mark.parametrize("name,kw", [("shapes", {}), ("spurious", {}), ("spurious", {"correlation": 0.5, "seed": 2})])
@pytest.mark.parametrize("split", ["train", "test"])
def test_background_is_the_samples_own_background(name, kw, split):
    w = world_mod.get(name, **kw)
    idx = torch.tensor([0, 3, 7, 11, 40, 41])
    b = w.sample(idx, split=split)
    bg = w.background(idx, split=split)
    assert bg.shape == b.images.shape and bg.dtype == torch.float32
    assert 0.0 <= float(bg.min()) and float(bg.max()) <= 1.0
    off = ~b.object_mask.unsqueeze(1).expand_as(bg)
    assert torch.equal(bg[off], b.images[off])                  # pixel for pixel off the object
    for i in range(len(idx)):                                    # and not the object on it
        on = b.object_mask[i].expand(3, -1, -1)
        assert on.any() and not torch.equal(bg[i][on], b.images[i][on])


def test_background_of_the_spurious_test_only_splits():
    w = world_mod.get("spurious")
    b = w.sample(range(6), split="test_background_only")
    assert torch.equal(w.background(range(6), split="test_background_only"), b.images)
    plain = w.background(range(6), split="test_object_only")
    assert torch.equal(plain, plain[:, :, :1, :1].expand_as(plain))    # one colour per image
    ob = w.sample(range(6), split="test_object_only")
    off = ~ob.object_mask.unsqueeze(1).expand_as(plain)
    assert torch.equal(plain[off], ob.images[off])


def test_spurious_world_rebuilds_from_its_own_config():
    # the runner hands a check the world's canonical config(); the check rebuilds the world from it
    cfg = world_mod.get("spurious", correlation=0.5).config()
    name = cfg.pop("world")
    again = world_mod.get(name, **cfg)
    assert again.config() == {"world": name, **cfg}
    original = world_mod.get("spurious", correlation=0.5)
    assert torch.equal(again.sample(range(4)).images, original.sample(range(4)).images)


# --------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("param,value", [
    ("margin", -0.1), ("reference_correlation", 1.5), ("min_reference_accuracy", 2.0),
    ("require_bug_took", "yes"), ("reference_spec", ""), ("n_images", 1), ("bogus", 1),
])
def test_bad_parameter_names_it(param, value):
    with pytest.raises(ConfigError, match=f"spurious\\.{param}"):
        run(params={param: value})
    with pytest.raises(ConfigError, match=f"spurious\\.{param}"):
        checks_base.get("spurious").models({param: value}, "spurious", 0, dict(WORLD))


def test_models_are_the_group_and_the_reference_on_the_same_world_but_the_correlation():
    world = {"world": "spurious", "size": 32, "seed": 0, "classes": ["triangle", "plus"], "correlation": 1.0}
    refs = checks_base.get("spurious").models({}, "spurious", 3, world)
    assert refs == [ModelRef("spurious", 3),
                    ModelRef("spurious-unbiased", 3, world={**world, "correlation": 0.5})]
    refs = checks_base.get("spurious").models({"reference_spec": "other", "reference_correlation": 0.3},
                                              "g", 1, world)
    assert refs[1] == ModelRef("other", 1, world={**world, "correlation": 0.3})
    # the cell loads exactly the models it declared
    zoo = Zoo()
    run(zoo=zoo)
    declared = checks_base.get("spurious").models(FAST, "spurious", 0, dict(WORLD))
    assert sorted(r.alias for r in zoo.requests) == sorted(r.alias for r in declared)


# ------------------------------------------------------------------------------ the protocol
def test_gradient_reveals_a_background_only_model(tmp_path):
    m = masks()
    r = region()
    assert bool((m & ~r).sum() == 0) and bool((~m & r).any(-1).any(-1).all())   # objects inside R, not filling it
    rows = run("saliency", artifacts=str(tmp_path))
    for rr in rows:
        assert set(ROW_COLUMNS) <= set(rr) and rr["check"] == "spurious" and rr["method"] == "saliency"
        assert rr["margin"] == 0.05 and rr["n_boot"] == FAST["n_boot"] and rr["reference_correlation"] == 0.5
        assert rr["buggy_background_only_accuracy"] == 0.98 and rr["reference_clean_accuracy"] == 0.95
    # each model's own prediction: class 1 iff the mean intensity s of the pixels it reads is > 0.5
    b = world_mod.get(WORLD_NAME, size=SIZE).sample(range(N_IMG), split="test")
    x, y = b.images.numpy(), b.true_labels.numpy()
    pred_bg = x.transpose(0, 2, 3, 1)[:, ~r.numpy()].mean((1, 2)) > 0.5
    pred_obj = x.transpose(0, 2, 3, 1)[:, r.numpy()].mean((1, 2)) > 0.5
    assert (pred_bg != pred_obj).any()              # else the check could not tell whose prediction is explained
    for rr in rows:
        assert rr["buggy_accuracy"] == pytest.approx(np.mean(pred_bg == y))
        assert rr["reference_accuracy"] == pytest.approx(np.mean(pred_obj == y))
        assert rr["prediction_agreement"] == pytest.approx(np.mean(pred_bg == pred_obj))
    # hand computation: the background reader's map is the indicator of ~R (all of it background),
    # the object reader's the indicator of R; so the masses are 1 and |R \ object| / |R|
    ref_mass = ((r & ~m).flatten(1).sum(1).double() / r.sum()).numpy()
    buggy = one(rows, series="buggy", metric="background_mass")
    reference = one(rows, series="reference", metric="background_mass")
    diff = one(rows, series="difference", metric="background_mass")
    assert buggy["value"] == pytest.approx(1.0, abs=1e-12) and buggy["ci_low"] == pytest.approx(1.0, abs=1e-12)
    assert reference["value"] == pytest.approx(ref_mass.mean(), abs=1e-9)
    assert diff["value"] == pytest.approx(1.0 - ref_mass.mean(), abs=1e-9) and diff["n"] == N_IMG
    assert diff["ci_low"] <= diff["value"] <= diff["ci_high"]
    verdict = one(rows, series="verdict")
    assert verdict["metric"] == "background_mass" and verdict["verdict"] == "pass"
    assert verdict["ci_low"] == diff["ci_low"] > 0.05 and "CI_low" in verdict["rule"]
    # SSIM against skimage on the hand-built maps and ground truths
    gt1 = (~m).numpy().astype(np.float64)
    out_r = (~r).numpy().astype(np.float64)
    in_r = r.numpy().astype(np.float64)
    want = {("buggy", "ssim_gt1"): [skimage_ssim(out_r, g) for g in gt1],
            ("buggy", "ssim_gt2"): [1.0] * N_IMG,                          # GT-2 = 1 on ~R = the map itself
            ("reference", "ssim_gt1"): [skimage_ssim(in_r, g) for g in gt1],
            ("reference", "ssim_gt2"): [skimage_ssim(in_r, g * in_r) for g in gt1]}
    for (series, metric), values in want.items():
        assert one(rows, series=series, metric=metric)["value"] == pytest.approx(np.mean(values), abs=1e-9)
    # the random map: about 0 against both ground truths
    for metric in ("ssim_gt1", "ssim_gt2"):
        assert abs(one(rows, series="calibration", metric=metric)["value"]) < 0.15
    assert not by(rows, series="failures")
    # figure data
    files = list(tmp_path.glob("debugging__spurious__saliency__*.npz"))
    assert len(files) == 1
    d = np.load(files[0])
    assert list(d["panel_labels"]) == ["buggy model", "reference model", "GT-1", "GT-2 (buggy)"]
    assert d["panels"].shape == (4, 2, SIZE, SIZE)
    np.testing.assert_array_equal(d["panels"][0], np.broadcast_to(out_r, (2, SIZE, SIZE)))
    np.testing.assert_array_equal(d["panels"][2], gt1[:2])
    # the inherited figures read these rows and files: one measures figure, one map grid per input
    figs = checks_base.get("spurious").figures(rows, [tmp_path])
    assert len(figs) == 3 and all(png[:8] == b"\x89PNG\r\n\x1a\n" for _, png, cap in figs) and all(cap for *_, cap in figs)


def test_blank_map_counts_as_uniform_and_does_not_reveal():
    rows = run("blank")
    area = (~masks()).flatten(1).double().mean(1).mean().item()
    for series in ("buggy", "reference"):
        assert one(rows, series=series, metric="background_mass")["value"] == pytest.approx(area, abs=1e-12)
        g2 = one(rows, series=series, metric="ssim_gt2")
        assert g2["value"] is None and g2["n"] == 0 and g2["n_excluded"] == N_IMG and GT2_ZERO in g2["excluded"]
    diff = one(rows, series="difference", metric="background_mass")
    assert diff["value"] == 0.0 and diff["ci_low"] == 0.0 and diff["ci_high"] == 0.0
    assert one(rows, series="verdict")["verdict"] == "fail"


@pytest.mark.parametrize("method", ["edge", "random"])
def test_model_independent_maps_give_exactly_zero_and_fail(method):
    rows = run(method)
    for metric in MEASURES:
        d = one(rows, series="difference", metric=metric)
        assert d["value"] == 0.0 and d["ci_low"] == 0.0 and d["ci_high"] == 0.0 and d["n"] == N_IMG
    assert one(rows, series="verdict")["verdict"] == "fail"


def test_refuses_a_model_whose_bug_did_not_take():
    card = {"bug_took": False, "name": "spurious", "seed": 0, "spec_hash": "abc",
            "bug_criteria": [{"bug": "world:spurious", "metric": "background_only_accuracy", "value": 0.612,
                              "criterion": "accuracy on background-only test images >= 0.9", "took": False}]}
    with pytest.raises(BugDidNotTake, match=r"spurious refuses model 'spurious'.*background_only_accuracy = 0\.612"):
        run(zoo=Zoo(cards={"spurious": card}))
    rows = run(zoo=Zoo(cards={"spurious": card}), params={"require_bug_took": False})
    assert one(rows, series="verdict")["verdict"] == "pass"


def test_refuses_a_reference_that_is_not_a_comparable_classifier():
    weak = {**GOOD_CARDS["spurious-unbiased"], "clean_accuracy": 0.62}
    with pytest.raises(ConfigError, match=r"spurious\.min_reference_accuracy.*0\.620"):
        run(zoo=Zoo(cards={"spurious-unbiased": weak}))
    rows = run(zoo=Zoo(cards={"spurious-unbiased": weak}), params={"min_reference_accuracy": 0.6})
    assert one(rows, series="verdict")["verdict"] == "pass"


def test_refuses_a_world_without_the_spurious_cue():
    ctx = context()
    ctx.world = {"world": "shapes", "size": 32, "seed": 0}
    with pytest.raises(ConfigError, match="spurious world"):
        checks_base.get("spurious").run(ctx)


def test_registered_metadata():
    c = checks_base.get("spurious")
    assert c.worlds == ("spurious",) and c.scorecard_metric == "background_mass"
    assert c.defaults["reference_spec"] == "spurious-unbiased" and c.defaults["margin"] == 0.05
    assert "pass" in c.description and math.isclose(c.defaults["reference_correlation"], 0.5)
