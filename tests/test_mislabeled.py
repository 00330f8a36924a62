"""The mislabeled-examples debugging test and the two-sample bootstrap behind its difference, on tiny
untrained zoo CNNs (width 4) and a label-noise spec with 400 training indices, through a fake
``load_model``; no training."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics import roc_auc_score

import xaudit.checks.mislabeled as mislabeled
from xaudit import explain, zoo
from xaudit.checks.base import CHECKS, CheckContext, ModelRef, ROW_COLUMNS
from xaudit.checks.debugging import resolve_params
from xaudit.core.errors import ConfigError
from xaudit.core.maps import abs_map
from xaudit.metrics import MEASURES
from xaudit.metrics.stats import two_sample_bootstrap
from xaudit.zoo import BugDidNotTake

N_IMG = 12
FAST = {"n_images": N_IMG, "n_boot": 200, "figure_images": 2}
TINY_ARCH = {"name": "cnn", "width": 4, "hidden": 16}
NOISY_SPEC = {"base": "label-noise", "arch": TINY_ARCH, "train": {"train_size": 400},
              "eval": {"test_size": 32, "train_size": 400, "trigger_size": 32}}
WORLD = {"world": "shapes", "size": 32, "seed": 0}


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def cards():
    """(label-noise spec, its card measured on an untrained tiny CNN, the reference spec and card)."""
    spec = zoo.load_spec(NOISY_SPEC)
    ref_spec = zoo.load_spec({**NOISY_SPEC, "base": "label-noise-reference"})
    card = zoo.make_card(zoo.training.build_model(spec).eval(), spec)
    ref_card = zoo.make_card(zoo.training.build_model(ref_spec).eval(), ref_spec)
    return spec, card, ref_spec, ref_card


class Zoo:
    """A fake ctx.load_model: untrained tiny CNNs by (spec, seed) with the given cards; ``same=True``
    hands out one model for both specs (two identical models)."""

    def __init__(self, cards, bug_took: bool = True, same: bool = False, card_over=None, ref_card_over=None):
        spec, card, ref_spec, ref_card = cards
        self.specs = {"label-noise": spec, "label-noise-reference": ref_spec}
        self.cards = {"label-noise": {**copy.deepcopy(card), "bug_took": bug_took, **(card_over or {})},
                      "label-noise-reference": {**copy.deepcopy(ref_card), **(ref_card_over or {})}}
        self.same = same
        self.models: dict[str, torch.nn.Module] = {}
        self.requests: list[tuple[str, int]] = []

    def __call__(self, ref: ModelRef):
        self.requests.append((ref.spec, ref.seed))
        key = "label-noise" if self.same else ref.spec
        if key not in self.models:
            self.models[key] = zoo.training.build_model(self.specs[key].with_seed(ref.seed)).eval()
        return self.models[key], self.cards[ref.spec]


def context(zoo_, method: str = "saliency", params=None, artifacts=None) -> CheckContext:
    return CheckContext(check="mislabeled", method=method, method_params={}, model_group="label-noise",
                        world=dict(WORLD), seed=0, params={**FAST, **(params or {})}, load_model=zoo_,
                        artifacts_dir=artifacts)


def by(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def one(rows, **kw):
    (r,) = by(rows, **kw)
    return r


def run(zoo_, **kw):
    return mislabeled.MislabeledExamples().run(context(zoo_, **kw))


# ------------------------------------------------------------------------------ two-sample bootstrap
def test_two_sample_bootstrap_matches_scipy_independent_resampling():
    g = np.random.default_rng(0)
    a, b = g.normal(0.2, 1.0, 30), g.normal(-0.1, 3.0, 80)     # unequal sizes and spreads
    ours = two_sample_bootstrap(torch.tensor(a), torch.tensor(b), level=0.9, n_boot=40_000, generator=3)
    ref = scipy.stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), paired=False,
                                vectorized=True, n_resamples=40_000, confidence_level=0.9, method="percentile",
                                random_state=1).confidence_interval
    assert float(ours.estimate) == pytest.approx(a.mean() - b.mean(), abs=1e-12) and int(ours.n) == 110
    # Monte-Carlo tolerance: the width is ~1.24 here; the endpoints' sampling error is ~0.01
    assert float(ours.low) == pytest.approx(ref.low, abs=0.04)
    assert float(ours.high) == pytest.approx(ref.high, abs=0.04)
    # and the width is the normal theory's for independent samples, sd = sqrt(var_a / n_a + var_b / n_b)
    # (b's larger spread dominates: resampling b at a's size, or pairing, would not give it)
    theory = 2 * 1.645 * math.sqrt(a.var() / 30 + b.var() / 80)
    assert float(ours.high - ours.low) == pytest.approx(theory, rel=0.08)


def test_two_sample_bootstrap_batched_drops_nans_per_side():
    g = np.random.default_rng(1)
    a, b = g.normal(0.5, 0.3, (2, 40)), g.normal(0.4, 0.1, (2, 25))
    a[1, :10] = np.nan
    b[0, -5:] = np.nan
    ours = two_sample_bootstrap(torch.tensor(a), torch.tensor(b), n_boot=20_000, generator=0)
    for i in range(2):
        fa, fb = a[i][np.isfinite(a[i])], b[i][np.isfinite(b[i])]
        ref = scipy.stats.bootstrap((fa, fb), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), paired=False,
                                    vectorized=True, n_resamples=20_000, method="percentile",
                                    random_state=2).confidence_interval
        assert int(ours.n[i]) == fa.size + fb.size
        assert float(ours.estimate[i]) == pytest.approx(fa.mean() - fb.mean(), abs=1e-12)
        assert float(ours.low[i]) == pytest.approx(ref.low, abs=0.01)
        assert float(ours.high[i]) == pytest.approx(ref.high, abs=0.01)


def test_two_sample_bootstrap_hand_cases_and_errors():
    const = two_sample_bootstrap(torch.full((7,), 0.8), torch.full((3,), 0.5), generator=0)
    assert float(const.low) == float(const.high) == pytest.approx(0.3) and int(const.n) == 10
    empty = two_sample_bootstrap(torch.tensor([1.0, 2.0]), torch.tensor([math.nan]), generator=0)
    assert math.isnan(float(empty.estimate)) and math.isnan(float(empty.low))
    with pytest.raises(ConfigError, match="^b: .*same B"):
        two_sample_bootstrap(torch.rand(2, 5), torch.rand(3, 5))
    with pytest.raises(ConfigError, match="^b: "):
        two_sample_bootstrap(torch.rand(5), torch.rand(1, 5))
    assert "two_sample_bootstrap" in MEASURES.names()


def test_two_sample_bootstrap_is_seeded():
    a, b = torch.rand(20, generator=torch.Generator().manual_seed(1)), torch.rand(15)
    x = two_sample_bootstrap(a, b, generator=4)
    y = two_sample_bootstrap(a, b, generator=torch.Generator().manual_seed(4))
    assert torch.equal(x.low, y.low) and torch.equal(x.high, y.high)
    assert not torch.equal(x.low, two_sample_bootstrap(a, b, generator=5).low)


# ------------------------------------------------------------------------------------ the card
def test_card_flipped_indices_equal_the_worlds_flipped_labels(cards):
    spec, card, _, _ = cards
    batch = spec.make_world().sample(range(400), split="train", bugs=spec.make_bugs())
    flipped = batch.touched["label_noise"]
    assert 10 < int(flipped.sum()) < 80                       # rate 0.1 of 400
    assert card["flipped_indices"]["label_noise"] == flipped.nonzero().flatten().tolist()
    assert bool((batch.labels[flipped] != batch.true_labels[flipped]).all())
    assert bool((batch.labels[~flipped] == batch.true_labels[~flipped]).all())
    assert card["flipped_label_fraction"] == pytest.approx(float(flipped.float().mean()), abs=1e-5)


# ------------------------------------------------------------------------------------ the check
def test_registered_with_its_defaults_and_models():
    c = CHECKS.get("mislabeled")()
    assert isinstance(c, mislabeled.MislabeledExamples) and c.worlds == ("shapes",)
    assert c.defaults["reference_spec"] == "label-noise-reference" and c.defaults["margin"] == 0.05
    assert c.models({}, "label-noise", 3) == [ModelRef("label-noise", 3), ModelRef("label-noise-reference", 3)]


def test_selects_the_first_flipped_and_first_correct_training_examples(cards):
    spec, card, _, _ = cards
    p = resolve_params("mislabeled", dict(FAST), mislabeled.MislabeledExamples.extra_defaults)
    ex = mislabeled.select_examples(context(None), card, p, "mislabeled")
    world = spec.make_world()
    full = world.sample(range(400), split="train", bugs=spec.make_bugs())
    flags = full.touched["label_noise"]
    assert ex.flipped.indices.tolist() == flags.nonzero().flatten()[:N_IMG].tolist()
    assert ex.correct.indices.tolist() == (~flags).nonzero().flatten()[:N_IMG].tolist()
    assert torch.equal(ex.flipped.images, full.images[ex.flipped.indices])
    assert torch.equal(ex.flipped.labels, full.labels[ex.flipped.indices])
    assert bool((ex.flipped.labels != ex.flipped.true_labels).all())
    assert torch.equal(ex.correct.labels, ex.correct.true_labels)
    assert ex.n_on_card == int(flags.sum()) and ex.train_size == 400 and ex.num_classes == 10


def test_rows_follow_the_contract_and_record_the_counts(cards):
    z = Zoo(cards)
    rows = run(z)
    assert z.requests == [("label-noise", 0), ("label-noise-reference", 0)]
    for r in rows:
        assert set(ROW_COLUMNS) <= set(r)
        assert r["n_flipped"] == N_IMG and r["n_correct"] == N_IMG and r["margin"] == 0.05
        assert r["flipped_train_accuracy"] == cards[1]["flipped_train_accuracy"]
        assert r["reference_clean_accuracy"] == cards[3]["clean_accuracy"]
    metrics = set(mislabeled.METRICS)
    for series, subset in (("buggy", "flipped"), ("buggy", "correct"), ("calibration", "flipped"),
                           ("difference", "flipped"), ("verdict", "flipped"), ("separability", "flipped_vs_correct"),
                           ("within_model", "flipped_vs_true"), ("within_model", "random_vs_true"),
                           ("within_model", "flipped_minus_random")):
        assert {r["metric"] for r in by(rows, series=series, subset=subset)} == metrics, (series, subset)
    for m in metrics:
        d = one(rows, series="difference", metric=m)
        assert d["value"] == pytest.approx(d["flipped_value"] - d["correct_value"], abs=1e-12)
        assert d["ci_low"] <= d["value"] <= d["ci_high"]
        v = one(rows, series="verdict", metric=m)
        expected = ("pass" if v["ci_high"] < -0.05 else "fail" if v["ci_low"] > -0.05 else "inconclusive")
        assert v["verdict"] == expected
        wd = one(rows, series="within_model", subset="flipped_minus_random", metric=m)["value"]
        wf = one(rows, series="within_model", subset="flipped_vs_true", metric=m)["value"]
        wr = one(rows, series="within_model", subset="random_vs_true", metric=m)["value"]
        assert wd == pytest.approx(wf - wr, abs=1e-9)
        assert abs(one(rows, series="calibration", subset="flipped", metric=m)["value"]) < 0.3


def test_identical_models_and_a_target_independent_method_cannot_reveal(cards):
    rows = run(Zoo(cards, same=True), method="edge")
    for m in mislabeled.METRICS:
        for subset in ("flipped", "correct"):
            assert one(rows, series="buggy", subset=subset, metric=m)["value"] == pytest.approx(1.0, abs=1e-9)
        d = one(rows, series="difference", metric=m)
        assert d["value"] == pytest.approx(0.0, abs=1e-9)
        assert d["ci_low"] == pytest.approx(0.0, abs=1e-9) and d["ci_high"] == pytest.approx(0.0, abs=1e-9)
        assert one(rows, series="verdict", metric=m)["verdict"] == "fail"
        assert one(rows, series="separability", metric=m)["value"] == pytest.approx(0.5)   # all ties
        assert one(rows, series="within_model", subset="flipped_vs_true", metric=m)["value"] == pytest.approx(1.0)


def test_identical_models_agree_exactly_on_correct_examples(cards):
    # one model for both: on correct examples both maps explain the true label, so they are the same map
    rows = run(Zoo(cards, same=True), method="saliency")
    for m in ("ssim", "spearman_abs", "spearman_signed"):
        assert one(rows, series="buggy", subset="correct", metric=m)["value"] == pytest.approx(1.0, abs=1e-6)
        assert one(rows, series="buggy", subset="flipped", metric=m)["value"] < 0.999
        # within the model, flipped-label vs true-label map is the cross-model comparison on flipped examples
        assert (one(rows, series="within_model", subset="flipped_vs_true", metric=m)["value"]
                == pytest.approx(one(rows, series="buggy", subset="flipped", metric=m)["value"], abs=1e-6))


def test_similarity_and_auroc_match_scipy_and_sklearn(cards):
    z = Zoo(cards)
    rows = run(z, params={"n_boot": 500})
    noisy, reference = z.models["label-noise"], z.models["label-noise-reference"]
    spec = cards[0]
    full = spec.make_world().sample(range(400), split="train", bugs=spec.make_bugs())
    flags = full.touched["label_noise"]
    flipped = full.subset(flags.nonzero().flatten()[:N_IMG])
    correct = full.subset((~flags).nonzero().flatten()[:N_IMG])

    def rho(batch) -> np.ndarray:
        # the paper's comparison, independently: label-noise model for the training label vs reference for the true
        a = abs_map(explain.explain(noisy, batch.images, batch.labels, "saliency"))
        b = abs_map(explain.explain(reference, batch.images, batch.true_labels, "saliency"))
        return np.array([scipy.stats.spearmanr(a[i].flatten(), b[i].flatten())[0] for i in range(len(batch))])

    rf, rc = rho(flipped), rho(correct)
    for subset, values in (("flipped", rf), ("correct", rc)):
        got = one(rows, series="buggy", subset=subset, metric="spearman_abs")["value"]
        assert got == pytest.approx(values.mean(), abs=1e-6)
    sep = one(rows, series="separability", metric="spearman_abs")
    labels = np.r_[np.ones(N_IMG), np.zeros(N_IMG)]
    assert sep["value"] == pytest.approx(roc_auc_score(labels, -np.r_[rf, rc]), abs=1e-9)   # low similarity flagged
    assert sep["ci_low"] <= sep["value"] <= sep["ci_high"] and sep["n"] == 2 * N_IMG


def test_auroc_ci_hand_cases():
    g = torch.Generator().manual_seed(0)
    perfect = mislabeled.auroc_ci(torch.rand(8, generator=g), torch.rand(9, generator=g) + 1, 300, 0.95, 0)
    assert perfect == (1.0, 1.0, 1.0, 17)                 # every flipped example less similar than every correct
    f = torch.tensor([0.1, math.nan, 0.5, 0.9])
    c = torch.tensor([0.2, 0.6, 0.7])
    auc, lo, hi, n = mislabeled.auroc_ci(f, c, 500, 0.95, 1)
    assert n == 6 and auc == pytest.approx(roc_auc_score([1, 1, 1, 0, 0, 0], [-0.1, -0.5, -0.9, -0.2, -0.6, -0.7]))
    assert 0.0 <= lo <= auc <= hi <= 1.0
    assert mislabeled.auroc_ci(f, c, 500, 0.95, 1) == (auc, lo, hi, n)       # seeded
    assert math.isnan(mislabeled.auroc_ci(torch.tensor([math.nan]), c, 100, 0.95, 0)[0])


def test_other_class_is_neither_the_true_nor_the_flipped_label():
    n = 6000
    true = torch.arange(n) % 10
    flipped = (true + 1 + torch.arange(n) // 10 % 9) % 10
    other = mislabeled.other_class(true, flipped, 10, seed=2, indices=torch.arange(n))
    assert bool((other != true).all() and (other != flipped).all()) and 0 <= int(other.min()) <= int(other.max()) <= 9
    assert torch.equal(other, mislabeled.other_class(true, flipped, 10, seed=2, indices=torch.arange(n)))
    for t, f in ((0, 5), (7, 2)):                        # uniform over the 8 remaining classes
        draws = mislabeled.other_class(torch.full((4000,), t), torch.full((4000,), f), 10, seed=2,
                                       indices=torch.arange(4000))
        counts = torch.bincount(draws, minlength=10).double() / 4000
        rest = [c for c in range(10) if c not in (t, f)]
        assert counts[t] == 0 and counts[f] == 0
        assert torch.allclose(counts[rest], torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.025)


def test_refuses_a_model_whose_bug_did_not_take(cards):
    card = cards[1]
    assert card["bug_took"] is False                      # untrained: it fitted few flipped labels
    fit = card["flipped_train_accuracy"]
    with pytest.raises(BugDidNotTake, match=rf"mislabeled refuses.*flipped_train_accuracy = {fit:.3f}, needs"):
        run(Zoo(cards, bug_took=False))
    run(Zoo(cards, bug_took=False), params={"require_bug_took": False})   # the refusal can be switched off


def test_errors_when_the_card_and_the_world_disagree(cards):
    listed = list(cards[1]["flipped_indices"]["label_noise"])
    wrong = sorted(listed[1:] + [i for i in range(400) if i not in listed][:1])
    with pytest.raises(ConfigError, match=r"card and the world disagree.*only on the card: \[\d+\], only in the world"):
        run(Zoo(cards, card_over={"flipped_indices": {"label_noise": wrong}}))
    with pytest.raises(ConfigError, match="records no flipped_indices"):
        run(Zoo(cards, card_over={"flipped_indices": {}}))
    with pytest.raises(ConfigError, match="reference_spec.*without bugs"):
        run(Zoo(cards, ref_card_over={"bugs": cards[1]["bugs"]}))


@pytest.mark.parametrize("params,field", [
    ({"n_images": 1}, "mislabeled.n_images"),
    ({"margin": -0.1}, "mislabeled.margin"),
    ({"reference_spec": ""}, "mislabeled.reference_spec"),
    ({"require_bug_took": "yes"}, "mislabeled.require_bug_took"),
    ({"bug": "trojan"}, "mislabeled.bug"),
    ({"colour": 1}, "mislabeled.colour"),
])
def test_bad_parameters_name_the_parameter(cards, params, field):
    with pytest.raises(ConfigError) as e:
        run(Zoo(cards), params=params)
    assert e.value.field == field


def test_figure_data_and_figures(cards, tmp_path):
    rows = []
    for method in ("saliency", "edge"):
        rows += run(Zoo(cards), method=method, artifacts=str(tmp_path))
    (path,) = tmp_path.glob("debugging__mislabeled__saliency__*.npz")
    with np.load(path) as d:
        assert list(d["panel_labels"]) == ["label-noise model, flipped label", "label-noise model, true label",
                                           "reference model, true label"]
        assert d["panels"].shape == (3, 2, 32, 32) and d["images"].shape == (2, 3, 32, 32)
        assert (d["flipped_labels"] != d["true_labels"]).all()
    figs = mislabeled.MislabeledExamples().figures(rows, [tmp_path])
    titles = [t for t, *_ in figs]
    assert any("flipped vs correct" in t for t in titles) and any("maps per method" in t for t in titles)
    assert all(png[:4] == b"\x89PNG" for _, png, cap in figs) and all(cap for *_, cap in figs)
