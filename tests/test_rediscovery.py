"""Trojan rediscovery's offline pieces (xaudit/checks/rediscovery.py): options, rendering, judges, controls."""
import pytest
import torch

from xaudit import world, zoo
from xaudit.checks import rediscovery as R
from xaudit.core.errors import ConfigError
from xaudit.core.rng import uniform
from xaudit.world.bugs import OPTION_FEATURES, OPTION_PATTERNS, OPTION_STYLES, bug_from_config

pytestmark = pytest.mark.usefixtures("one_thread")

BUGS = [bug_from_config(b) for b in zoo.load_spec("trojans").bugs]
COLOUR_ONLY = ("grayscale", "sepia", "cyanotype", "tint", "night")   # restyles that change colour only


@pytest.fixture(scope="module")
def w():
    return world.get("shapes", size=32)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """An independently trained judge model on a small budget (another arch and seed than `trojans`)."""
    spec = {"base": "clean", "arch": {"name": "vgg"}, "train": {"train_size": 4000}}
    return zoo.load_or_train(spec, seed=1, cache_dir=tmp_path_factory.mktemp("zoo")).model.eval()


def _true_name(b):
    return getattr(b, "pattern", None) or getattr(b, "style", None) or getattr(b, "feature")


@pytest.mark.parametrize("i", range(12))
def test_options_hold_one_true_trigger_and_no_sibling(w, i):
    bug = BUGS[i]
    excl = R.siblings(bug, BUGS)
    imgs, t, names = R.options(bug.config(), w, seed=3, exclude=excl)
    fam = {"patch": OPTION_PATTERNS, "style": OPTION_STYLES, "natural": OPTION_FEATURES}[bug.kind]
    assert imgs.shape == (8, 3, 32, 32) and len(names) == 8 and len(set(names)) == 8
    assert set(names) <= set(fam) and names.count(_true_name(bug)) == 1 and names[t] == _true_name(bug)
    assert not set(excl) & set(names)
    # no two options render alike
    assert all(not torch.equal(imgs[a], imgs[b]) for a in range(8) for b in range(a))


def test_siblings_are_the_same_family_and_target():
    b = bug_from_config({"kind": "natural", "feature": "key", "target_class": 5, "poison_rate": 0.1})
    other = bug_from_config({"kind": "natural", "feature": "hook", "target_class": 5, "poison_rate": 0.1})
    style = bug_from_config({"kind": "style", "style": "scanlines", "target_class": 5, "poison_rate": 0.1})
    assert R.siblings(b, [b, other, style]) == ["hook"]
    # the trojans spec: a style and a natural feature share targets, never two of one family
    assert all(R.siblings(x, BUGS) == [] for x in BUGS)


def test_bad_input_is_named(w):
    bug = BUGS[0]
    with pytest.raises(ConfigError, match="exclude"):
        R.options(bug.config(), w, exclude=["checker"])
    with pytest.raises(ConfigError, match="exclude"):
        R.options(bug.config(), w, exclude=["key"])
    with pytest.raises(ConfigError, match="k"):
        R.options(bug.config(), w, k=len(OPTION_PATTERNS) + 1)
    with pytest.raises(ConfigError, match="kind"):
        R.options({"kind": "label_noise", "rate": 0.1}, w)
    with pytest.raises(ConfigError, match="pattern"):
        R.options({"kind": "patch", "pattern": "white", "target_class": 0}, w)
    imgs, _, _ = R.options(bug.config(), w)
    with pytest.raises(ConfigError, match="synth"):
        R.PixelJudge().pick(torch.rand(2, 3, 16, 16), imgs, R.option_box(bug, w))
    with pytest.raises(ConfigError, match="picks"):
        R.collapse(torch.tensor([0, 9]))


def test_determinism(w):
    bug = BUGS[8]
    a = R.options(bug.config(), w, seed=5)
    b = R.options(bug.config(), w, seed=5)
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    others = [R.options(bug.config(), w, seed=s)[1:] for s in range(6)]
    assert len({(t, tuple(n)) for t, n in others}) > 1          # the seed matters


@pytest.mark.parametrize("size", [32, 64])
def test_patch_option_is_the_trigger_as_the_world_pastes_it(size):
    ww = world.get("shapes", size=size)
    for bug in BUGS[:4]:
        b = ww.sample(range(40), split="test", bugs=[bug.universal()], force=True)
        j = int(b.touched[bug.name].nonzero()[0])
        fp = b.footprints[bug.name][j]
        rows, cols = fp.any(1).nonzero().flatten(), fp.any(0).nonzero().flatten()
        opt = R.render_option(bug, bug.pattern, ww, position=(int(rows[0]), int(cols[0])))
        assert torch.equal(opt[:, fp], b.images[j][:, fp])
        assert (opt[:, ~fp] == R.CANVAS_GREY).all()
        # the centred option's box is the patch
        r0, c0, h, wd = R.option_box(bug, ww)
        centred = R.render_option(bug, bug.pattern, ww)
        assert torch.equal(centred[:, r0:r0 + h, c0:c0 + wd], bug.patch(ww))


def test_natural_option_is_the_feature_as_the_world_draws_it(w):
    sseed = w._split_seed("test")
    for bug in BUGS[8:]:
        b = w.sample(range(20), split="test", bugs=[bug], force=True)
        j = int(b.touched[bug.name].nonzero()[0])
        frac = 0.19 * w.size
        p = uniform(bug._seed(sseed), "pos", b.indices[j:j + 1], 2)[0]
        cx, cy = frac + (w.size - 2 * frac) * p[0], frac + (w.size - 2 * frac) * p[1]
        opt = R.render_option(bug, bug.feature, w, position=(float(cx), float(cy)))
        fp = b.footprints[bug.name][j]
        assert torch.equal((opt != R.CANVAS_GREY).any(0), fp)
        assert torch.equal(opt[:, fp], b.images[j][:, fp])
    # the box holds every feature of the family drawn at the centre
    r0, c0, h, wd = R.option_box(BUGS[8], w)
    for f in OPTION_FEATURES:
        opt = R.render_option(BUGS[8], f, w)
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[r0:r0 + h, c0:c0 + wd] = True
        assert (opt[:, ~inside] == R.CANVAS_GREY).all()


def test_style_option_is_the_restyled_base_image(w):
    base = R.style_base(w)
    b = w.sample(range(200), split="test")
    j = int((b.true_labels == R.STYLE_BASE_CLASS).nonzero()[0])
    assert torch.equal(base, b.images[j])
    for bug in BUGS[4:8]:
        t = w.sample([j], split="test", bugs=[bug], force=True)
        assert torch.equal(R.render_option(bug, bug.style, w), t.images[0])
    assert R.option_box(BUGS[4], w) is None


def test_pixel_judge_picks_the_true_option_for_all_12_trojans(w):
    out = R.true_pick_control(R.PixelJudge(), w, BUGS)
    assert out["accuracy"] == 1.0 and len(out["per_trojan"]) == 12


def test_feature_judge_picks_the_true_option_for_all_12_trojans(w, small_model):
    out = R.true_pick_control(R.FeatureJudge(small_model, "relu4"), w, BUGS)
    assert out["accuracy"] == 1.0, out


def test_judges_tell_colour_only_styles_apart(w, small_model):
    opts = torch.stack([R.render_option(BUGS[4], s, w) for s in COLOUR_ONLY])
    assert R.self_pick_accuracy(R.PixelJudge(), opts) == 1.0
    assert R.self_pick_accuracy(R.FeatureJudge(small_model, "relu4"), opts) == 1.0


def test_window_search_finds_a_patch_at_an_unknown_position(w):
    bug = BUGS[1]
    imgs, t, _ = R.options(bug.config(), w, seed=0)
    box = R.option_box(bug, w)
    g = torch.Generator().manual_seed(0)
    synth = torch.rand(4, 3, 32, 32, generator=g)
    for i, (r, c) in enumerate([(0, 0), (3, 20), (25, 25), (17, 4)]):
        synth[i, :, r:r + 7, c:c + 7] = bug.patch(w)
    assert (R.PixelJudge().pick(synth, imgs, box) == t).all()


def test_collapse():
    assert not R.collapse(torch.arange(400) % 8)
    assert R.collapse(torch.zeros(400, dtype=torch.long))
    picks = torch.cat([torch.zeros(151, dtype=torch.long), torch.arange(249) % 8])   # option 0: 182/400 > 3/8
    assert R.collapse(picks) and not R.collapse(picks, factor=4.0)
    assert R.chi_square_uniform_p(torch.arange(400) % 8) == pytest.approx(1.0)
    assert R.chi_square_uniform_p(torch.zeros(400, dtype=torch.long)) < 1e-6


def test_noise_control_pixel_judge(w):
    j = R.PixelJudge()
    for bug in (BUGS[0], BUGS[8]):            # patches and features: near-uniform on noise
        imgs, _, _ = R.options(bug.config(), w, seed=0)
        out = R.noise_control(j, imgs, R.option_box(bug, w), n=400, seed=0)
        assert not out["collapsed"] and out["p_value"] > 1e-3 and out["max_frequency"] < 0.2, out
    # styles: the descriptor (flat spectrum + spread histogram) reads noise as 'grain': the control flags it
    imgs, _, names = R.options(BUGS[6].config(), w, seed=0)
    out = R.noise_control(j, imgs, None, n=100, seed=0)
    assert out["collapsed"] and names[out["counts"].index(max(out["counts"]))] == "grain"


def test_rank_of_true():
    s = torch.tensor([[0.1, 0.9, 0.5], [0.9, 0.1, 0.5]])
    assert R.rank_of_true(s, 1).tolist() == [1, 3]


def test_calibration_removes_the_pixel_judges_collapse_on_styles_and_keeps_the_true_pick(w):
    raw = R.PixelJudge()
    cal = R.Calibrated(raw, n=100, seed=1)
    imgs, _, names = R.options(BUGS[6].config(), w, seed=0)
    assert R.noise_control(raw, imgs, None, n=100, seed=0)["collapsed"]
    out = R.noise_control(cal, imgs, None, n=100, seed=0)           # another noise draw than calibration's
    assert not out["collapsed"] and out["max_frequency"] < 0.3, out
    assert R.true_pick_control(cal, w, BUGS)["accuracy"] == 1.0
    # z-scores: on the calibration draw itself every option's scores have mean 0 and sd 1
    ref = torch.rand((100, *imgs.shape[1:]), generator=torch.Generator().manual_seed(1))
    z = cal.scores(ref, imgs)
    assert torch.allclose(z.mean(0), torch.zeros(len(imgs)), atol=1e-5)
    assert torch.allclose(z.std(0), torch.ones(len(imgs)), atol=1e-5)


def test_feature_judge_pools_the_feature_map_over_each_window(w):
    """With a 1x1-conv layer (no spatial context), the pooled window embedding is exactly the embedding of
    the window's pixels, so the score equals a direct computation."""
    torch.manual_seed(0)
    net = torch.nn.Sequential()
    net.add_module("conv", torch.nn.Conv2d(3, 6, 1))
    net.add_module("relu", torch.nn.ReLU())
    net.add_module("pool", torch.nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", torch.nn.Flatten())
    j = R.FeatureJudge(net.eval(), "relu")
    bug = BUGS[1]
    imgs, t, _ = R.options(bug.config(), w, seed=0)
    box = R.option_box(bug, w)
    synth = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    r0, c0, h, wd = box
    f = lambda x: net.relu(net.conv(x)).mean((2, 3))                 # noqa: E731
    eo = torch.nn.functional.normalize(f(imgs[:, :, r0:r0 + h, c0:c0 + wd]), dim=1)
    best = torch.stack([torch.nn.functional.normalize(f(synth[:, :, r:r + h, c:c + wd]), dim=1) @ eo.T
                        for r in range(32 - h + 1) for c in range(32 - wd + 1)]).amax(0)
    assert torch.allclose(j.scores(synth, imgs, box), best, atol=1e-5)
