"""The four sanity checks (cascading/independent parameter randomization, data randomization, random
logit) on tiny hand-built models: stage construction, the original model untouched, the references,
verdicts, failure handling, rows and figures."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from xaudit import explain
from xaudit.checks import base as checks_base
from xaudit.checks.base import CheckContext, ModelRef, ROW_COLUMNS
from xaudit.checks.random_logit import random_other_class
from xaudit.checks.randomization import CascadingRandomization, IndependentRandomization
from xaudit.checks.sanity import METRICS, VERDICTS, resolve_params, verdict, verdict_stage
from xaudit.checks.toolkit import Similarity, bootstrap_mean_cis, explain_robust, post_process
from xaudit.core.errors import ConfigError
from xaudit.core.rng import generator
from xaudit.zoo import BugDidNotTake
from xaudit.zoo.init import init_module

SIZE = 16
N_IMG = 12
FAST = {"n_images": N_IMG, "n_boot": 200, "figure_images": 2}


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


class Tiny(nn.Module):
    """conv3x3x4-ReLU-conv3x3x4-ReLU-avgpool4-fc: three blocks, output first."""
    blocks = ("fc", "conv2", "conv1")
    last_conv = "conv2"

    def __init__(self, classes: int = 3, channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x - 0.5))))
        return self.fc(self.flatten(self.pool(x)))


def tiny(seed: int, classes: int = 3) -> nn.Module:
    m = Tiny(classes)
    init_module(m, generator(seed))
    return m.eval()


def images(n: int = N_IMG, seed: int = 7) -> torch.Tensor:
    g = generator(seed)
    x = torch.rand(n, 3, SIZE, SIZE, generator=g) * 0.3
    x[:, :, 4:12, 4:12] += 0.6 * torch.rand(n, 3, 1, 1, generator=g)   # an object on a dim background
    return x.clamp(0, 1)


def fingerprint(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


class Zoo:
    """A fake ctx.load_model: tiny models by (spec, seed), recording every request."""

    def __init__(self, cards: dict[str, dict] | None = None):
        self.models: dict[tuple[str, int], nn.Module] = {}
        self.cards = cards or {}
        self.requests: list[tuple[str, int]] = []

    def __call__(self, ref: ModelRef):
        key = (ref.spec, int(ref.seed))
        self.requests.append(key)
        if key not in self.models:
            self.models[key] = tiny(ref.seed if ref.spec == "clean" else 1000 + ref.seed)
        return self.models[key], self.cards.get(ref.spec, {"bug_took": True, "name": ref.spec})


def context(check: str, method: str = "saliency", params: dict | None = None, zoo: Zoo | None = None,
            artifacts: str | None = None, method_params: dict | None = None, seed: int = 0) -> CheckContext:
    return CheckContext(check=check, method=method, method_params=method_params or {}, model_group="clean",
                        world={"world": "test"}, seed=seed, params={**FAST, **(params or {})},
                        load_model=zoo or Zoo(), artifacts_dir=artifacts,
                        extra={"images": images(), "labels": torch.arange(N_IMG) % 3})


def by(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


# --------------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize("sim_ci, diff_ci, expected", [
    ((0.6, 0.9), (-0.5, -0.1), "fail"),           # still similar after half the network was destroyed
    ((0.1, 0.3), (-0.5, -0.1), "pass"),           # dissimilar, and farther than retraining moves it
    ((0.1, 0.3), (-0.5, 0.05), "inconclusive"),   # dissimilar, but no farther than a retrained model
    ((0.4, 0.6), (-0.5, -0.1), "inconclusive"),   # CI straddles tau
    ((0.5, 0.7), (-0.5, -0.1), "inconclusive"),   # lower end exactly at tau is not above it
    ((math.nan, math.nan), (math.nan, math.nan), "inconclusive"),
    ((0.1, 0.3), (math.nan, math.nan), "inconclusive"),
])
def test_verdict_rule(sim_ci, diff_ci, expected):
    assert verdict(sim_ci, diff_ci, 0.5) == expected


def test_verdict_rule_uses_tau():
    assert verdict((0.3, 0.4), (-1, -0.5), 0.2) == "fail"
    assert verdict((0.3, 0.4), (-1, -0.5), 0.45) == "pass"


def test_verdict_stage_is_top_half():
    assert [verdict_stage("half", k) for k in (1, 2, 3, 4, 5, 6)] == [1, 1, 2, 2, 3, 3]
    assert verdict_stage(3, 4) == 3
    with pytest.raises(ConfigError, match="verdict_stage"):
        verdict_stage(5, 4)


def test_bootstrap_ci_matches_scipy():
    g = np.random.default_rng(0)
    v = g.normal(0.3, 0.2, size=(2, 80))
    v[1, :40] = math.nan                        # rows are independent samples; NaN entries are dropped
    (mean0, lo0, hi0, n0), (mean1, lo1, hi1, n1) = bootstrap_mean_cis(torch.tensor(v), 4000, 0.95, seed=1)
    for (mean, lo, hi, n), row_values in (((mean0, lo0, hi0, n0), v[0]), ((mean1, lo1, hi1, n1), v[1, 40:])):
        ref = scipy.stats.bootstrap((row_values,), np.mean, n_resamples=20000, confidence_level=0.95,
                                    method="percentile", random_state=0).confidence_interval
        assert n == len(row_values) and mean == pytest.approx(row_values.mean())
        assert lo == pytest.approx(ref.low, abs=0.012) and hi == pytest.approx(ref.high, abs=0.012)


def test_bootstrap_ci_handles_tiny_and_empty_rows():
    v = torch.tensor([[0.1, math.nan, 0.3, math.nan, 0.2], [math.nan] * 5], dtype=torch.float64)
    (mean, lo, hi, n), empty = bootstrap_mean_cis(v, 500, 0.95, seed=0)
    assert n == 3 and mean == pytest.approx(0.2) and 0.1 <= lo <= mean <= hi <= 0.3
    assert empty[3] == 0 and math.isnan(empty[0])


def test_params_are_validated():
    assert resolve_params("cascading_randomization", {})["tau"] == 0.5
    with pytest.raises(ConfigError, match="cascading_randomization.bogus"):
        resolve_params("cascading_randomization", {"bogus": 1})
    with pytest.raises(ConfigError, match="target.*'current'"):
        resolve_params("cascading_randomization", {"target": "argmax"})
    with pytest.raises(ConfigError, match="tau"):
        resolve_params("cascading_randomization", {"tau": 2})


def test_random_other_class_is_uniform_over_the_others():
    target = torch.tensor([0, 1, 2, 3] * 2500)
    other = random_other_class(target, 4, seed=3, indices=torch.arange(10_000))
    assert bool((other != target).all()) and int(other.min()) >= 0 and int(other.max()) <= 3
    assert torch.equal(other, random_other_class(target, 4, seed=3, indices=torch.arange(10_000)))
    for t in range(4):
        counts = torch.bincount(other[target == t], minlength=4).double() / 2500
        assert counts[t] == 0
        assert torch.allclose(counts[torch.arange(4) != t], torch.full((3,), 1 / 3, dtype=torch.float64),
                              atol=0.04)


def test_similarities_match_scipy_and_skimage():
    from skimage.feature import hog
    from skimage.metrics import structural_similarity

    g = generator(0)
    raw_a = torch.randn(3, 3, SIZE, SIZE, generator=g)
    raw_b = raw_a + 0.8 * torch.randn(3, 3, SIZE, SIZE, generator=g)
    edge_raw = torch.rand(3, 3, SIZE, SIZE, generator=g)
    t = torch.zeros(3, dtype=torch.int64)
    a, b, e = (post_process(r, t, [None] * 3) for r in (raw_a, raw_b, edge_raw))
    sim = Similarity(resolve_params("c", {}), SIZE)
    out = sim.compare(a, b, e)
    for i in range(3):
        assert out["spearman_abs"][0][i] == pytest.approx(
            scipy.stats.spearmanr(a.abs[i].flatten(), b.abs[i].flatten())[0], abs=1e-9)
        assert out["spearman_signed"][0][i] == pytest.approx(
            scipy.stats.spearmanr(a.signed[i].flatten(), b.signed[i].flatten())[0], abs=1e-9)
        assert out["edge_similarity"][0][i] == pytest.approx(
            scipy.stats.spearmanr(b.abs[i].flatten(), e.abs[i].flatten())[0], abs=1e-9)
        assert out["ssim"][0][i] == pytest.approx(structural_similarity(
            a.zero_one[i, 0].double().numpy(), b.zero_one[i, 0].double().numpy(), gaussian_weights=True,
            sigma=1.5, use_sample_covariance=False, data_range=1.0), abs=1e-6)
        ha, hb = (hog(m.zero_one[i, 0].double().numpy(), orientations=9, pixels_per_cell=(4, 4),
                      cells_per_block=(3, 3), block_norm="L2-Hys") for m in (a, b))
        assert sim.hog_px == 4
        assert out["hog"][0][i] == pytest.approx(scipy.stats.spearmanr(ha, hb)[0], abs=1e-6)
    # a constant map has no ranking: NaN with the measure's reason
    flat = post_process(torch.ones(3, 3, SIZE, SIZE), t, [None] * 3)
    values, reasons = sim.compare(a, flat, e)["spearman_abs"]
    assert bool(torch.isnan(values).all()) and reasons == ["constant_b"] * 3


def test_explain_robust_isolates_failing_inputs():
    x = images(8)
    bad = {2, 5}

    def flaky(model, xb, target, generator=None):
        # fails on the whole call whenever a 'bad' image is in the batch (no indices given)
        ids = target.tolist()
        if bad & set(ids):
            raise explain.ExplanationFailed("flaky", "model", "planted failure")
        return xb * 2

    raw, failed = explain_robust(flaky, None, x, torch.arange(8), seed=0)
    assert [i for i, f in enumerate(failed) if f] == [2, 5]
    assert "planted failure" in failed[2]
    ok = [i for i in range(8) if i not in bad]
    assert torch.equal(raw[ok], x[ok] * 2) and bool((raw[[2, 5]] == 0).all())


# ---------------------------------------------------------------------------- the checks
@pytest.fixture()
def spy_method():
    """A registered method that records the state dict of every model it explains; its map is the
    input gradient (so it depends on the model)."""
    seen: list[dict[str, torch.Tensor]] = []

    @explain.register("sanity_spy", family="gradient", passes=(1, 1), params={}, replace=True)
    def sanity_spy(model, x, target):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        x = x.clone().requires_grad_(True)
        return torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)[0]

    yield seen
    explain.unregister("sanity_spy")


def changed_blocks(state: dict, original: nn.Module) -> set[str]:
    ref = original.state_dict()
    return {k.split(".")[0] for k, v in state.items() if not torch.equal(v, ref[k])}


@pytest.mark.parametrize("check_cls, expected", [
    (CascadingRandomization, [set(), set(), {"fc"}, {"fc", "conv2"}, {"fc", "conv2", "conv1"}]),
    (IndependentRandomization, [set(), set(), {"fc"}, {"conv2"}, {"conv1"}]),
])
def test_stages_randomize_exactly_the_right_blocks(spy_method, check_cls, expected):
    zoo = Zoo()
    ctx = context(check_cls.name, "sanity_spy", zoo=zoo)
    original = zoo(ModelRef("clean", 0))[0]
    before = fingerprint(original)
    rows = check_cls().run(ctx)
    # calls: original, retrain reference, then stages 1..K
    assert len(spy_method) == 2 + len(Tiny.blocks)
    assert changed_blocks(spy_method[0], original) == set()
    reference = zoo.models[("clean", 1)]
    assert changed_blocks(spy_method[1], reference) == set() and spy_method[1] is not spy_method[0]
    got = [set()] + [changed_blocks(s, original) for s in spy_method[2:]]
    assert got == [expected[0]] + expected[2:]
    # the trained model is never mutated
    assert all(torch.equal(a, b) for a, b in zip(before, fingerprint(original)))
    stage_rows = by(rows, series="stage", metric="spearman_abs")
    assert [r["stage"] for r in stage_rows] == [0, 1, 2, 3]
    assert [r["block"] for r in stage_rows] == ["original", "fc", "conv2", "conv1"]


def test_checks_share_explanations_and_rows_do_not_change(spy_method):
    """The memo serves the second check's original, reference and stage-1 maps (independent stage 1
    re-initializes the same block with the same draws as cascading stage 1); its rows equal those of a
    run without the memo."""
    from xaudit.checks.memo import EXPLANATIONS
    zoo = Zoo()
    CascadingRandomization().run(context("cascading_randomization", "sanity_spy", zoo=zoo))
    assert len(spy_method) == 2 + len(Tiny.blocks)
    shared = IndependentRandomization().run(context("independent_randomization", "sanity_spy", zoo=zoo))
    assert len(spy_method) == 2 + len(Tiny.blocks) + len(Tiny.blocks) - 1
    budget = EXPLANATIONS.max_bytes
    EXPLANATIONS.max_bytes = 0                               # off: every explanation computed again
    try:
        alone = IndependentRandomization().run(context("independent_randomization", "sanity_spy", zoo=zoo))
    finally:
        EXPLANATIONS.max_bytes = budget
    assert len(spy_method) == 2 * (2 + len(Tiny.blocks)) + len(Tiny.blocks) - 1
    assert shared == alone


def test_cascading_blocks_keep_their_random_weights_across_stages(spy_method):
    import copy

    from xaudit.core.rng import stream_seed
    from xaudit.zoo.randomization import block_generator

    zoo = Zoo()
    CascadingRandomization().run(context("cascading_randomization", "sanity_spy", zoo=zoo))
    trained = zoo.models[("clean", 0)]
    seed = stream_seed(0, "sanity/randomize")   # the check's randomization seed for cell seed 0

    def redraw(block: str) -> dict[str, torch.Tensor]:
        m = copy.deepcopy(trained)
        init_module(m.get_submodule(block), block_generator(seed, block))
        return m.state_dict()

    redrawn = {b: redraw(b) for b in Tiny.blocks}
    assert len(spy_method) == 2 + len(Tiny.blocks)
    for k, stage in enumerate(spy_method[2:], start=1):   # calls: original, reference, stages 1..K
        reinit = Tiny.blocks[:k]
        for name, v in stage.items():
            block = name.split(".")[0]
            if block in reinit:   # re-initialized: not the trained weights, but its initializer's draw
                assert not torch.equal(v, trained.state_dict()[name]), (k, name)
                assert torch.equal(v, redrawn[block][name]), (k, name)
            else:
                assert torch.equal(v, trained.state_dict()[name]), (k, name)
    s1, s2 = spy_method[2], spy_method[3]
    assert torch.equal(s1["fc.weight"], s2["fc.weight"])     # stage 2 differs from stage 1 only in conv2


def test_retrain_reference_uses_two_distinct_seeds():
    check = CascadingRandomization()
    refs = check.models({}, "clean", 4)
    assert refs == [ModelRef("clean", 4), ModelRef("clean", 5)]
    zoo = Zoo()
    rows = check.run(context(check.name, zoo=zoo, seed=4))
    assert ("clean", 4) in zoo.requests and ("clean", 5) in zoo.requests
    assert set(zoo.requests) <= set((r.spec, r.seed) for r in refs)
    assert {r["reference_seed"] for r in rows} == {5}


def test_without_the_retrain_reference_the_verdict_uses_tau_alone():
    from xaudit.checks.sanity import VERDICT_RULE_NO_REFERENCE

    check = CascadingRandomization()
    assert check.models({"retrain_reference": False}, "clean", 4) == [ModelRef("clean", 4)]
    zoo = Zoo()
    rows = check.run(context(check.name, params={"retrain_reference": False}, zoo=zoo, seed=4))
    assert set(zoo.requests) == {("clean", 4)}                  # no second training seed is asked for
    assert not by(rows, series="retrain_reference") and len(by(rows, series="calibration")) == 5
    with_ref = check.run(context(check.name, zoo=Zoo(), seed=4))
    verdicts = by(rows, series="verdict")
    assert len(verdicts) == 5
    for v in verdicts:
        assert v["rule"] == VERDICT_RULE_NO_REFERENCE and v["diff"] is None and v["reference_seed"] is None
        expected = ("fail" if v["ci_low"] > v["tau"] else "pass" if v["ci_high"] < v["tau"] else "inconclusive")
        assert v["verdict"] == expected
        # the stage's similarity itself does not depend on whether the reference was measured
        (w,) = by(with_ref, series="verdict", metric=v["metric"])
        assert v["value"] == pytest.approx(w["value"], abs=1e-12)
    with pytest.raises(ConfigError, match="retrain_reference"):
        check.run(context(check.name, params={"retrain_reference": "no"}))


def test_randomizing_the_top_layer_changes_gradient_maps():
    zoo = Zoo()
    rows = CascadingRandomization().run(context("cascading_randomization", "saliency", zoo=zoo))
    s0 = by(rows, series="stage", stage=0, metric="spearman_signed")[0]
    s1 = by(rows, series="stage", stage=1, metric="spearman_signed")[0]
    assert s0["value"] == pytest.approx(1.0)
    assert s1["value"] < 0.9 and s1["ci_high"] < 1.0
    # target_agreement: the share of images on which the stage's model predicts the original's class,
    # recomputed by hand for every stage; at cell seed 28 the original's predictions vary, so stage 1
    # agrees on some images only (7 of 12)
    from xaudit.core.rng import stream_seed
    from xaudit.zoo import randomize

    zoo28 = Zoo()
    rows28 = CascadingRandomization().run(context("cascading_randomization", "saliency", zoo=zoo28, seed=28))
    x = images()
    for seed, z, rs in ((0, zoo, rows), (28, zoo28, rows28)):
        original = z.models[("clean", seed)]
        with torch.no_grad():
            pred = original(x).argmax(1)
            for k in range(len(Tiny.blocks) + 1):
                model = original if k == 0 else randomize(original, list(Tiny.blocks[:k]),
                                                          generator=stream_seed(seed, "sanity/randomize"))
                expected = float((model(x).argmax(1) == pred).double().mean())
                got = by(rs, series="stage", stage=k, metric="spearman_signed")[0]["target_agreement"]
                assert got == pytest.approx(expected), (seed, k)
                if (seed, k) == (28, 1):
                    assert expected == pytest.approx(7 / 12)


def test_rows_follow_the_schema_and_verdicts_cover_every_metric():
    rows = CascadingRandomization().run(context("cascading_randomization", "saliency"))
    for r in rows:
        assert all(c in r for c in ROW_COLUMNS)
        assert r["check"] == "cascading_randomization" and r["method"] == "saliency"
    verdict_rows = by(rows, series="verdict")
    assert sorted(r["metric"] for r in verdict_rows) == sorted(METRICS)
    assert all(r["verdict"] in VERDICTS for r in verdict_rows)
    assert all(r["stage"] == 2 and r["block"] == "conv2" and r["tau"] == 0.5 for r in verdict_rows)
    assert all(r["verdict"] is None for r in rows if r["series"] != "verdict")
    for series in ("retrain_reference", "calibration"):
        assert sorted(r["metric"] for r in by(rows, series=series)) == sorted(METRICS)
    stage_rows = by(rows, series="stage")
    assert len(stage_rows) == len(METRICS) * (1 + len(Tiny.blocks))
    for r in stage_rows:
        assert r["n"] + r["n_excluded"] == N_IMG
        if r["value"] is not None:
            assert r["ci_low"] <= r["value"] <= r["ci_high"]
    # calibration against random maps is about 0
    for r in by(rows, series="calibration"):
        if r["metric"] in ("spearman_abs", "spearman_signed"):
            assert abs(r["value"]) < 0.2


def test_model_independent_baseline_fails_and_model_dependent_method_passes():
    """Known answers: the `edge` baseline ignores the model (similarity 1 at every stage: fail); a
    method whose map is a fixed pattern for trained models and noise for randomized ones passes."""
    @explain.register("sanity_oracle", family="gradient", passes=(1, 1), params={}, replace=True)
    def sanity_oracle(model, x, target):
        if getattr(model, "randomized", None):
            g = generator(len(model.randomized["blocks"]))
            return torch.rand(x.shape, generator=g)
        return x.clone()

    try:
        edge_rows = CascadingRandomization().run(context("cascading_randomization", "edge"))
        oracle_rows = CascadingRandomization().run(context("cascading_randomization", "sanity_oracle"))
    finally:
        explain.unregister("sanity_oracle")
    for m in ("spearman_abs", "spearman_signed", "ssim", "hog"):
        assert by(edge_rows, series="verdict", metric=m)[0]["verdict"] == "fail"
        r = by(oracle_rows, series="verdict", metric=m)[0]
        assert r["verdict"] == "pass", r
        assert r["diff_ci_high"] < 0


def test_failing_inputs_are_recorded_and_the_check_completes():
    @explain.register("sanity_flaky", family="gradient", passes=(1, 1), params={}, replace=True)
    def sanity_flaky(model, x, target):
        out = x.clone() * (1 + model.fc.bias.sum())
        out[x[:, 0, 0, 0] > 0.25] = math.nan          # some inputs give NaN maps, whatever the model
        return out

    x = images()
    n_bad = int((x[:, 0, 0, 0] > 0.25).sum())
    assert 0 < n_bad < N_IMG
    try:
        rows = CascadingRandomization().run(context("cascading_randomization", "sanity_flaky"))
    finally:
        explain.unregister("sanity_flaky")
    fails = by(rows, series="failures")
    assert fails and all(r["value"] == n_bad and "NaN" in r["reason"] for r in fails)
    for r in by(rows, series="stage"):
        assert r["n"] == N_IMG - n_bad and r["n_excluded"] == n_bad
        assert "method failed" in r["excluded"]
    assert len(by(rows, series="verdict")) == len(METRICS)


def test_not_applicable_method_propagates():
    class NoConv(nn.Module):
        blocks = ("fc",)

        def __init__(self):
            super().__init__()
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(3 * SIZE * SIZE, 3)

        def forward(self, x):
            return self.fc(self.flatten(x))

    zoo = Zoo()
    for s in (0, 1):
        m = NoConv()
        init_module(m, generator(s))
        zoo.models[("clean", s)] = m.eval()
    with pytest.raises(explain.NotApplicable):
        CascadingRandomization().run(context("cascading_randomization", "grad_cam", zoo=zoo))


def test_target_rule_is_recorded_and_applied():
    rows = CascadingRandomization().run(context("cascading_randomization", params={"target": "original"}))
    assert {r["target"] for r in rows} == {"original"}
    # every stage explains the original model's class
    assert all(r["target_agreement"] == 1.0 for r in by(rows, series="stage"))


def test_random_logit():
    from xaudit.checks.random_logit import RandomLogit

    rows = RandomLogit().run(context("random_logit", "saliency"))
    st = by(rows, series="stage", metric="spearman_signed")
    assert [r["stage"] for r in st] == [0, 1]
    assert st[1]["target_agreement"] == 0.0          # always another class
    assert len(by(rows, series="verdict")) == len(METRICS)
    assert all(r["stage"] == 1 for r in by(rows, series="verdict"))


def test_data_randomization_compares_with_the_random_label_model_and_refuses_a_failed_bug():
    from xaudit.checks.data_randomization import DataRandomization

    check = DataRandomization()
    assert check.models({}, "clean", 0) == [ModelRef("clean", 0), ModelRef("clean", 1),
                                             ModelRef("random-labels", 0)]
    zoo = Zoo(cards={"random-labels": {"bug_took": True, "train_accuracy": 0.97, "clean_accuracy": 0.1}})
    rows = check.run(context("data_randomization", zoo=zoo))
    assert ("random-labels", 0) in zoo.requests
    assert all(r["stage"] == 1 for r in by(rows, series="verdict"))
    assert {r["random_label_train_accuracy"] for r in rows} == {0.97}
    failed = Zoo(cards={"random-labels": {"bug_took": False, "name": "random-labels", "bug_criteria": []}})
    with pytest.raises(BugDidNotTake):
        check.run(context("data_randomization", zoo=failed))


def test_checks_are_registered():
    for name in ("cascading_randomization", "independent_randomization", "data_randomization", "random_logit"):
        assert name in checks_base.names()
        assert checks_base.get(name).defaults["tau"] == 0.5


def test_figures_from_rows_and_artifacts(tmp_path):
    rows = []
    for method in ("saliency", "edge"):
        rows += CascadingRandomization().run(context("cascading_randomization", method, artifacts=str(tmp_path)))
    figs = CascadingRandomization().figures(rows, [tmp_path])
    titles = [t for t, *_ in figs]
    assert any("similarity vs stage" in t for t in titles)
    assert sum("maps per method x stage" in t for t in titles) == 2
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for _, png, cap in figs) and all(cap for *_, cap in figs)
    npz = sorted(tmp_path.glob("*.npz"))
    assert len(npz) == 2
    with np.load(npz[0]) as z:
        assert z["abs"].shape == (1 + len(Tiny.blocks), 2, SIZE, SIZE)
        assert list(z["stage_labels"]) == ["original", "fc", "conv2", "conv1"]


def test_images_come_from_the_cell_world():
    from xaudit import world
    from xaudit.checks.toolkit import load_images

    cfg = world.get("shapes", size=32, seed=3).config()
    ctx = CheckContext(check="random_logit", method="saliency", method_params={}, model_group="clean",
                       world=cfg, seed=0, params={}, load_model=Zoo())
    x, labels, idx = load_images(ctx, resolve_params("random_logit", {"n_images": 5}))
    ref = world.get("shapes", size=32, seed=3).sample(range(5), split="test")
    assert torch.equal(x, ref.images) and torch.equal(labels, ref.true_labels)
    assert torch.equal(idx, torch.arange(5))


def test_verdict_stage_parameter(spy_method):
    rows = CascadingRandomization().run(context("cascading_randomization", "sanity_spy", params={"verdict_stage": 3}))
    assert {(r["stage"], r["block"], r["verdict_stage"]) for r in by(rows, series="verdict")} == {(3, "conv1", 3)}
    n_calls = len(spy_method)
    with pytest.raises(ConfigError, match="verdict_stage"):
        CascadingRandomization().run(context("cascading_randomization", "sanity_spy", params={"verdict_stage": 4}))
    assert len(spy_method) == n_calls          # refused before any explanation
