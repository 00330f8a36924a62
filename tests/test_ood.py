"""The out-of-distribution debugging test on hand-built models, and the pixel correspondence between
worlds' frames (xaudit.world.convert) it and Shift(kind='world') rely on."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import xaudit.checks.ood  # noqa: F401  (registers the check)
from xaudit import world as world_mod
from test_sanity import Tiny   # noqa: E402  (the sanity tests' tiny CNN)
from xaudit.checks import base as checks_base
from xaudit.checks.base import ROW_COLUMNS, CheckContext, ModelRef
from xaudit.checks.ood import MEASURES, OutOfDistribution
from xaudit.core import maps as core_maps
from xaudit.core import rng
from xaudit.core.errors import ConfigError, NotApplicable
from xaudit.world.base import WORLDS, World
from xaudit.world.bugs import Shift
from xaudit.world.convert import convert_channels, from_frame, to_frame
from xaudit.zoo import BugDidNotTake
from xaudit.zoo.init import init_module
from xaudit.zoo.spec import load_spec

SIZE = 16
N_IMG = 12
WORLD_NAME = "test_ood_tiny"
WORLD = {"world": WORLD_NAME, "size": SIZE, "seed": 0}
DIGITS = {"world": "digits", "size": 28, "seed": 0}
SHIFT = {"kind": "shift", "shift_kind": "invert"}
FAST = {"n_images": N_IMG, "n_boot": 400, "figure_images": 2}
TINY_DOMAINS = {WORLD_NAME: [{"shift": SHIFT}]}


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


class TinyWorld(World):
    """16x16 RGB, 3 classes: a bright square of the class's colour channel on a dim noisy background."""
    name = WORLD_NAME
    allowed_sizes = (SIZE,)
    channels = 3
    num_classes = 3
    class_names = ("r", "g", "b")

    def _labels(self, idx, split_seed, split):
        return rng.randint(split_seed, "label", idx, 3)[:, 0]

    def _render(self, idx, labels, split_seed, split):
        n = len(idx)
        x = 0.3 * rng.uniform(split_seed, "bg", idx, 3 * SIZE * SIZE).view(n, 3, SIZE, SIZE)
        pos = 2 + rng.randint(split_seed, "pos", idx, 6, k=2)
        mask = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
        for i in range(n):
            r, c = pos[i].tolist()
            mask[i, r:r + 8, c:c + 8] = True
            x[i, labels[i], r:r + 8, c:c + 8] = 0.9
        return x.contiguous(), mask


@pytest.fixture(autouse=True, scope="module")
def tiny_world():
    WORLDS.register(WORLD_NAME)(TinyWorld)
    yield
    WORLDS._items.pop(WORLD_NAME, None)
    WORLDS._meta.pop(WORLD_NAME, None)


def tiny(seed: int, channels: int = 3, classes: int = 3) -> nn.Module:
    m = Tiny(classes, channels=channels)     # test_sanity's three-block CNN, on any image size
    init_module(m, rng.generator(seed))
    return m.eval()


class PixelReader(nn.Module):
    """Reads one pixel (row, col) of every channel: v = sum_c x[c, row, col]; logits (v, 0.3 - v). The
    input gradient of either logit is +-1 at (row, col) in every channel and exactly 0 elsewhere."""

    def __init__(self, row: int, col: int):
        super().__init__()
        self.row, self.col = row, col

    def forward(self, x):
        v = x[:, :, self.row, self.col].sum(1)
        return torch.stack([v, 0.3 - v], 1)


def kind_of(ref: ModelRef) -> str:
    if ref.world is not None:
        return "world"
    return "shift" if isinstance(ref.spec, dict) else "in"


class Zoo:
    """A fake ctx.load_model: ``models[(kind, seed)]`` with kind "in" (the group's spec), "shift" (a
    shift-trained spec mapping) or "world" (the group on another world); records every request."""

    def __init__(self, models: dict, cards: dict | None = None):
        self.models, self.cards = models, cards or {}
        self.requests: list[ModelRef] = []

    def __call__(self, ref: ModelRef):
        self.requests.append(ref)
        key = (kind_of(ref), int(ref.seed))
        card = self.cards.get(key, {"bug_took": True, "name": ref.group, "seed": ref.seed,
                                    "clean_accuracy": 0.5, "train_accuracy": 0.9})
        return self.models[key], card


def context(zoo: Zoo, method: str = "saliency", params: dict | None = None, world: dict | None = None,
            artifacts: str | None = None) -> CheckContext:
    world = dict(world or WORLD)
    domains = TINY_DOMAINS if world["world"] == WORLD_NAME else {}
    return CheckContext(check="ood", method=method, method_params={}, model_group="clean", world=world,
                        seed=0, params={**FAST, "domains": domains, **(params or {})}, load_model=zoo,
                        artifacts_dir=artifacts)


def by(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def run(zoo: Zoo, **kw) -> list[dict]:
    return checks_base.get("ood").run(context(zoo, **kw))


# ------------------------------------------------------------------------------ pixel correspondence
@pytest.mark.parametrize("h, size", [(28, 32), (28, 31), (5, 12), (7, 7)])
def test_pad_then_crop_is_exact(h, size):
    x = torch.rand(2, 3, h, h, generator=rng.generator(h + size))
    framed = to_frame(x, 3, size, fill=0.25)
    assert framed.shape == (2, 3, size, size)
    assert torch.equal(from_frame(framed, h), x)
    # the border is the fill, every other value an input value (no resampling)
    top = (size - h) // 2
    inner = torch.zeros(size, size, dtype=torch.bool)
    inner[top:top + h, top:top + h] = True
    assert (framed[:, :, ~inner] == 0.25).all()
    assert torch.equal(framed[:, :, top:top + h, top:top + h], x)


def test_crop_then_pad_keeps_the_centre_and_zeroes_the_cut_border():
    x = torch.rand(1, 1, 32, 32, generator=rng.generator(1)) + 1.0
    back = from_frame(to_frame(x, 1, 27), 32)          # odd difference: 2 px cut top/left, 3 bottom/right
    assert torch.equal(back[..., 2:29, 2:29], x[..., 2:29, 2:29])
    keep = torch.zeros(32, 32, dtype=torch.bool)
    keep[2:29, 2:29] = True
    assert (back[..., ~keep] == 0).all()


def test_channel_conversion_by_hand():
    rgb = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    assert convert_channels(rgb, 1).item() == pytest.approx(0.299 * 1.0 + 0.587 * 0.5 + 0.114 * 0.0)
    gray = torch.tensor([[0.0, 0.25], [0.5, 1.0]]).view(1, 1, 2, 2)
    rep = to_frame(gray, 3, 2)
    assert rep.shape == (1, 3, 2, 2) and all(torch.equal(rep[:, c], gray[:, 0]) for c in range(3))
    # the bug module's own luminance of a colour agrees
    from xaudit.world.bugs import world_colour

    colour = world_colour(world_mod.get("digits"), (0.2, 0.6, 0.9))
    assert to_frame(torch.tensor([0.2, 0.6, 0.9]).view(1, 3, 1, 1), 1, 1).item() == pytest.approx(colour.item())
    with pytest.raises(ConfigError, match="channels"):
        to_frame(torch.zeros(1, 2, 4, 4), 3, 4)


@pytest.mark.parametrize("h, size", [(28, 32), (28, 31), (32, 28)])
def test_a_pixel_lands_at_the_same_map_pixel(h, size):
    i, j = 9, 17
    x = torch.zeros(1, 1, h, h)
    x[0, 0, i, j] = 1.0
    framed = to_frame(x, 3, size)
    hit = (framed[0] == 1.0).all(0).nonzero().tolist()
    off = (size - h) // 2
    assert hit == [[i + off, j + off]]
    # a map that marks exactly the frame pixel the input pixel went to comes back at (i, j)
    back = from_frame((framed == 1.0).float(), h)
    assert back.shape == (1, 3, h, h)
    assert (back.sum(1)[0] > 0).nonzero().tolist() == [[i, j]]


def test_shift_world_pads_instead_of_resampling():
    shapes = world_mod.get("shapes")
    b = shapes.sample(range(3), split="test", bugs=[Shift("world", other="digits")])
    d = world_mod.get("digits").sample(range(3), split="test").images
    assert b.images.shape == (3, 3, 32, 32)
    assert all(torch.equal(b.images[:, c, 2:30, 2:30], d[:, 0]) for c in range(3))
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (b.images[:, :, border] == 0).all()
    # and the other way: shapes cropped to 28 and turned to luminance
    digits = world_mod.get("digits")
    s = digits.sample(range(2), split="test", bugs=[Shift("world", other="shapes")]).images
    ref = shapes.sample(range(2), split="test").images[:, :, 2:30, 2:30]
    lum = 0.299 * ref[:, 0] + 0.587 * ref[:, 1] + 0.114 * ref[:, 2]
    assert s.shape == (2, 1, 28, 28) and torch.allclose(s[:, 0], lum.clamp(0, 1), atol=1e-6)


# ------------------------------------------------------------------------------------ the check
def test_registered_with_its_metadata():
    c = checks_base.get("ood")
    assert isinstance(c, OutOfDistribution)
    assert c.worlds == ("digits", "shapes") and c.verdict_key == ("metric", "domain")
    assert c.scorecard_metric == "spearman_abs"
    assert c.defaults["margin"] == 0.05 and c.defaults["reference_seed_offset"] == 1
    assert c.defaults["require_bug_took"] is True
    assert "pass (reveals) if CI_high(difference) < -margin" in c.description


def test_models_per_world_and_the_shift_spec_validates():
    c = checks_base.get("ood")
    digits = c.models({}, "clean", 3, DIGITS)
    assert digits[:2] == [ModelRef("clean", 3), ModelRef("clean", 4)]
    # the out-of-domain model is trained at seed + offset too: both compared pairs differ in their seed
    assert digits[2] == ModelRef("clean", 4, world={"world": "shapes", "size": 32, "seed": 0})
    shapes = c.models({"reference_seed_offset": 5}, "clean", 0, {"world": "shapes", "size": 32, "seed": 0})
    assert shapes[1] == ModelRef("clean", 5) and len(shapes) == 3
    spec = shapes[2].spec
    assert spec["base"] == "clean" and spec["name"] == "clean+invert" and shapes[2].seed == 5
    s = load_spec(spec)
    assert s.world_config["world"] == "shapes"
    assert [b["kind"] for b in s.bugs] == ["shift"] and s.bugs[0]["shift_kind"] == "invert"
    assert s.hash != load_spec("clean").hash


def test_identical_models_give_similarity_one_and_difference_zero():
    m = tiny(0)
    zoo = Zoo({("in", 0): m, ("in", 1): m, ("shift", 1): m})
    rows = run(zoo)
    for series in ("buggy", "reference"):
        for metric in MEASURES:
            (r,) = by(rows, series=series, metric=metric)
            assert r["value"] == 1.0 and r["ci_low"] == 1.0 and r["ci_high"] == 1.0 and r["n"] == N_IMG
    for metric in MEASURES:
        (d,) = by(rows, series="difference", metric=metric)
        assert d["value"] == 0.0 and d["ci_low"] == 0.0 and d["ci_high"] == 0.0
        (v,) = by(rows, series="verdict", metric=metric)
        assert v["verdict"] == "fail" and v["domain"] == "shift:invert"
    for r in rows:
        assert set(ROW_COLUMNS) <= set(r)


def test_difference_is_the_paired_mean_of_scipy_spearman():
    zoo = Zoo({("in", 0): tiny(0), ("in", 1): tiny(1), ("shift", 1): tiny(2)})
    rows = run(zoo)
    x = world_mod.get(WORLD_NAME).sample(range(N_IMG), split="test").images

    def abs_maps(model):
        x_ = x.clone().requires_grad_(True)
        out = model(x_)
        out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
        return core_maps.abs_map(x_.grad).numpy()

    a, b, c = (abs_maps(zoo.models[k]) for k in (("in", 0), ("in", 1), ("shift", 1)))
    ref = [scipy.stats.spearmanr(a[i].ravel(), b[i].ravel())[0] for i in range(N_IMG)]
    bug = [scipy.stats.spearmanr(a[i].ravel(), c[i].ravel())[0] for i in range(N_IMG)]
    (r_ref,) = by(rows, series="reference", metric="spearman_abs")
    (r_bug,) = by(rows, series="buggy", metric="spearman_abs")
    (r_diff,) = by(rows, series="difference", metric="spearman_abs")
    assert r_ref["value"] == pytest.approx(np.mean(ref), abs=1e-6)
    assert r_bug["value"] == pytest.approx(np.mean(bug), abs=1e-6)
    assert r_diff["value"] == pytest.approx(np.mean(np.subtract(bug, ref)), abs=1e-6)
    assert r_diff["ci_low"] <= r_diff["value"] <= r_diff["ci_high"]
    (cal,) = by(rows, series="calibration", metric="spearman_abs")
    assert abs(cal["value"]) < 0.2 and cal["domain"] is None


def test_shift_accuracy_columns():
    class MeanClassifier(nn.Module):
        """Class 0 if the mean intensity is below 0.5 (every normal tiny image), else class 1."""

        def forward(self, x):
            s = x.mean((1, 2, 3))
            return torch.stack([0.5 - s, s - 0.5, 0 * s], 1)

    zoo = Zoo({("in", 0): tiny(0), ("in", 1): tiny(1), ("shift", 1): MeanClassifier()})
    rows = run(zoo)
    b = world_mod.get(WORLD_NAME).sample(range(N_IMG), split="test")
    expect = float((b.true_labels == 0).double().mean())
    expect_shifted = float((b.true_labels == 1).double().mean())      # inverted images are bright
    assert 0 < expect < 1 and 0 < expect_shifted < 1
    for r in by(rows, series="verdict"):
        assert r["ood_accuracy"] == pytest.approx(expect)
        assert r["ood_accuracy_shifted"] == pytest.approx(expect_shifted)
        assert r["ood_card_clean_accuracy"] == 0.5 and r["domain_kind"] == "shift"


def test_a_very_different_model_reveals_the_shift():
    m = tiny(0)
    zoo = Zoo({("in", 0): m, ("in", 1): m, ("shift", 1): PixelReader(3, 11)})
    rows = run(zoo, params={"margin": 0.05})
    (v,) = by(rows, series="verdict", metric="spearman_abs")
    assert v["ci_high"] < -0.05 and v["verdict"] == "pass"
    assert v["reference_value"] == 1.0 and v["buggy_value"] < 0.9


@pytest.mark.parametrize("method", ["edge", "random"])
@pytest.mark.parametrize("cross_world", [False, True])
def test_model_independent_maps_give_zero_difference_and_fail(method, cross_world):
    if cross_world:
        zoo = Zoo({("in", 0): tiny(0, 1, 10), ("in", 1): tiny(1, 1, 10), ("world", 1): tiny(2, 3, 10)})
        rows = run(zoo, method=method, world=DIGITS,
                   params={"domains": {"digits": [{"world": {"world": "shapes", "size": 32, "seed": 0}}]}})
    else:
        zoo = Zoo({("in", 0): tiny(0), ("in", 1): tiny(1), ("shift", 1): tiny(2)})
        rows = run(zoo, method=method)
    verdicts = by(rows, series="verdict")
    assert {r["metric"] for r in verdicts} == set(MEASURES)
    for r in verdicts:
        assert r["value"] == 0.0 and r["ci_low"] == 0.0 and r["ci_high"] == 0.0, r
        assert r["verdict"] == "fail"


def test_cross_frame_maps_line_up_with_the_input(tmp_path):
    # a shapes-frame model (3 x 32 x 32) reading frame pixel (10, 20): digits pixel (8, 18) after the 2 px pad
    reader = PixelReader(10, 20)
    zoo = Zoo({("in", 0): tiny(0, 1, 10), ("in", 1): tiny(1, 1, 10), ("world", 1): reader})
    rows = run(zoo, world=DIGITS, artifacts=str(tmp_path),
               params={"domains": {"digits": [{"world": {"world": "shapes", "size": 32, "seed": 0}}]}})
    (npz,) = list(tmp_path.glob("debugging__ood__*.npz"))
    d = np.load(npz)
    labels = [str(s) for s in d["panel_labels"]]
    assert labels == ["in-domain model", "in-domain, other seed", "world:shapes@32 model"]
    maps = d["panels"][2]
    assert maps.shape == (2, 28, 28) and d["images"].shape == (2, 1, 28, 28)
    for m in maps:
        assert np.argwhere(m > 0).tolist() == [[8, 18]]
    # the model saw the padded RGB frame, and explained its own prediction there
    ref = zoo.requests[-1]
    assert ref.world == {"world": "shapes", "size": 32, "seed": 0}
    (v,) = by(rows, series="verdict", metric="ssim")
    assert v["ood_frame"] == "3x32x32" and v["domain"] == "world:shapes@32" and v["ood_accuracy"] is None


def test_refuses_a_model_whose_bug_did_not_take():
    bad = {"bug_took": False, "name": "clean+invert", "seed": 0, "spec_hash": "x",
           "bug_criteria": [{"bug": "shift_invert", "metric": "none", "value": None, "took": False,
                             "criterion": "the invert criterion was not met"}]}
    models = {("in", 0): tiny(0), ("in", 1): tiny(1), ("shift", 1): tiny(2)}
    with pytest.raises(BugDidNotTake, match="the invert criterion was not met") as e:
        run(Zoo(models, cards={("shift", 1): bad}))
    assert "ood refuses model" in str(e.value)
    rows = run(Zoo(models, cards={("shift", 1): bad}), params={"require_bug_took": False})
    assert len(by(rows, series="verdict")) == len(MEASURES)


@pytest.mark.parametrize("params, field", [
    ({"margin": -0.1}, "ood.margin"),
    ({"reference_seed_offset": 0}, "ood.reference_seed_offset"),
    ({"require_bug_took": "yes"}, "ood.require_bug_took"),
    ({"n_images": 1}, "ood.n_images"),
    ({"bogus": 1}, "ood.bogus"),
    ({"domains": [1]}, "ood.domains"),
    ({"domains": {"digits": {"world": {"world": "shapes"}}}}, "ood.domains.digits"),
    ({"domains": {"digits": [{"world": {"world": "shapes"}, "shift": SHIFT}]}}, "ood.domains.digits[0]"),
    ({"domains": {"digits": [{"shift": SHIFT, "fill": 0.5}]}}, "ood.domains.digits[0]"),
    ({"domains": {"digits": ["shapes"]}}, "ood.domains.digits[0]"),
])
def test_bad_params_name_the_field(params, field):
    with pytest.raises(ConfigError) as e:
        checks_base.get("ood").models(params, "clean", 0, DIGITS)
    assert e.value.field == field


@pytest.mark.parametrize("entry, field", [
    ({"world": {"world": "nowhere"}}, "ood.domains.digits[1].world.world"),
    ({"world": {"world": "shapes", "size": 33}}, "ood.domains.digits[1].world.size"),
    ({"world": {"world": "digits"}}, "ood.domains.digits[1].world"),          # the cell's own world
    ({"world": {"world": "shapes"}, "fill": 2.0}, "ood.domains.digits[1].fill"),
    ({"shift": {"kind": "shift", "shift_kind": "sideways"}}, "ood.domains.digits[1].shift.shift_kind"),
    ({"shift": {"kind": "patch"}}, "ood.domains.digits[1].shift"),
    ({"shift": {"kind": "shift", "shift_kind": "world", "other": "digits"}}, "ood.domains.digits[1].shift.other"),
    ({"world": {"world": "shapes", "size": 32, "seed": 0}}, "ood.domains.digits"),   # listed twice
])
def test_bad_domain_entries_name_the_entry(entry, field):
    domains = {"digits": [{"world": {"world": "shapes", "size": 32, "seed": 0}}, entry]}
    with pytest.raises(ConfigError) as e:
        checks_base.get("ood").models({"domains": domains}, "clean", 0, DIGITS)
    assert e.value.field == field


def test_a_world_without_a_domain_is_not_applicable():
    zoo = Zoo({("in", 0): tiny(0), ("in", 1): tiny(1)})
    with pytest.raises(NotApplicable, match="add an entry to the check's `domains`"):
        run(zoo, params={"domains": {}})
    assert zoo.requests == []
    # the plan still declares the in-domain pair (the cell is then recorded as not applicable)
    refs = checks_base.get("ood").models({"domains": {}}, "clean", 0, WORLD)
    assert refs == [ModelRef("clean", 0), ModelRef("clean", 1)]


def test_figure_data_and_failures(tmp_path):
    m = tiny(0)
    rows = run(Zoo({("in", 0): m, ("in", 1): tiny(1), ("shift", 1): tiny(2)}), artifacts=str(tmp_path))
    (npz,) = list(tmp_path.glob("debugging__ood__*.npz"))
    d = np.load(npz)
    assert [str(s) for s in d["panel_labels"]] == ["in-domain model", "in-domain, other seed", "shift:invert model"]
    assert d["panels"].shape == (3, 2, SIZE, SIZE) and not d["failed"].any()
    assert not by(rows, series="failures")
    figs = checks_base.get("ood").figures(rows, [tmp_path])
    assert figs and all(isinstance(png, bytes) and png[:4] == b"\x89PNG" for _, png, cap in figs) and all(cap for *_, cap in figs)
    assert not any(math.isnan(r["value"]) for r in rows if r["value"] is not None)


def test_in_domain_maps_are_the_sanity_checks_maps_from_the_memo():
    # one explanation seed for every check: the OOD test's two in-domain map sets are the random-logit
    # check's original and retrain-reference maps on the same images, served by the worker's memo
    from xaudit.checks.memo import EXPLANATIONS

    zoo = Zoo({("in", 0): tiny(0), ("in", 1): tiny(1), ("shift", 1): tiny(2)})
    EXPLANATIONS.clear()
    sanity = CheckContext(check="random_logit", method="saliency", method_params={}, model_group="clean",
                          world=dict(WORLD), seed=0, params={"n_images": N_IMG, "n_boot": 200, "figure_images": 0},
                          load_model=zoo)
    checks_base.get("random_logit").run(sanity)
    hits, misses = EXPLANATIONS.hits, EXPLANATIONS.misses
    run(zoo)
    assert EXPLANATIONS.hits - hits == 2            # in-domain seed 0 and seed 1
    assert EXPLANATIONS.misses - misses == 1         # only the out-of-domain model is explained


def test_figures_draw_one_panel_per_measure_and_domain(tmp_path):
    rows = run(Zoo({("in", 0): tiny(0), ("in", 1): tiny(1), ("shift", 1): tiny(2)}), artifacts=str(tmp_path))
    figs = checks_base.get("ood").figures(rows, [tmp_path])
    titles = [t for t, *_ in figs]
    assert any("in-domain vs out-of-domain maps per method" in t for t in titles)
    assert any("maps per method, input 0" in t for t in titles)
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for _, png, cap in figs) and all(cap for *_, cap in figs)
