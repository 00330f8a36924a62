"""The retraining-free out-of-distribution test (one model, shifted inputs, the edge map as the
reference) on hand-built models over the shapes world at size 32."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from test_sanity import Tiny   # noqa: E402  (the sanity tests' tiny CNN)
from xaudit import world as world_mod
from xaudit.checks import base as checks_base
from xaudit.checks.base import ROW_COLUMNS, CheckContext, ModelRef
from xaudit.checks.ood_shift import DEFAULT_SHIFTS, MEASURES, OutOfDistributionShift
from xaudit.core import maps as core_maps
from xaudit.core import rng
from xaudit.core.errors import ConfigError
from xaudit.world import bug_from_config
from xaudit.zoo.init import init_module

N_IMG = 16
SHAPES = {"world": "shapes", "size": 32, "seed": 0}
INVERT = {"kind": "shift", "shift_kind": "invert"}
NOISE = {"kind": "shift", "shift_kind": "noise", "severity": 0.2}
FAST = {"n_images": N_IMG, "n_boot": 200, "figure_images": 0}
DEFAULT_LABELS = {"shift:invert", "shift:noise[severity=0.2]", "shift:blur[severity=0.5]"}

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def tiny(seed: int = 0) -> nn.Module:
    m = Tiny(10)
    init_module(m, rng.generator(seed))
    return m.eval()


class Zoo:
    """A fake ctx.load_model serving one model; records every request."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.requests: list[ModelRef] = []

    def __call__(self, ref: ModelRef):
        self.requests.append(ref)
        return self.model, {"name": ref.group, "seed": ref.seed}


def run(model: nn.Module, method: str = "saliency", params: dict | None = None, artifacts: str | None = None,
        zoo: Zoo | None = None) -> list[dict]:
    ctx = CheckContext(check="ood_shift", method=method, method_params={}, model_group="clean", world=dict(SHAPES),
                       seed=0, params={**FAST, **(params or {})}, load_model=zoo or Zoo(model),
                       artifacts_dir=artifacts)
    return checks_base.get("ood_shift").run(ctx)


def by(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def batch(shift: dict | None = None):
    w = world_mod.get("shapes", size=32, seed=0)
    return w.sample(range(N_IMG), split="test", bugs=[bug_from_config(shift)] if shift else [], force=True)


class SquareEnergy(nn.Module):
    """logit_k = (k + 1) * sum(x^2) / 100: the input gradient is 2 (k + 1) x / 100, the image itself, so
    the abs saliency of x ranks pixels as x does and that of the inverted 1 - x in the opposite order."""

    def forward(self, x):
        e = (x * x).sum((1, 2, 3)) / 100
        return e[:, None] * torch.arange(1, 11, dtype=x.dtype)


class Linear(nn.Module):
    """A linear model whose class 0 always wins: its gradient (the first weight row) is the same for
    every input, so its saliency cannot move under any shift."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)
        init_module(self.fc, rng.generator(3))
        with torch.no_grad():
            self.fc.bias.zero_()
            self.fc.bias[0] = 1e4

    def forward(self, x):
        return self.fc(x.flatten(1))


class Memorizer(nn.Module):
    """Knows the clean test images by heart: logits 3 * onehot(true label) on an exact match, else
    onehot(0). Max softmax: e^3 / (e^3 + 9) on a match, e / (e + 9) otherwise."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        super().__init__()
        self.images, self.labels = images, labels

    def forward(self, x):
        d = (x[:, None] - self.images[None]).flatten(2).abs().sum(2)
        hit = d.min(1).values == 0
        known = nn.functional.one_hot(self.labels[d.argmin(1)], 10).to(x.dtype) * 3
        other = nn.functional.one_hot(torch.zeros(len(x), dtype=torch.int64), 10).to(x.dtype)
        return torch.where(hit[:, None], known, other)


class NaNGradIfBright(torch.autograd.Function):
    """Identity whose gradient is NaN for inputs with mean intensity above 0.5."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        bad = x.mean((1, 2, 3)) > 0.5
        return torch.where(bad[:, None, None, None], torch.full_like(g, math.nan), g)


class FailsOnBright(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny(1)

    def forward(self, x):
        return self.net(NaNGradIfBright.apply(x))


# ------------------------------------------------------------------------------------ metadata
def test_registered_with_its_metadata():
    c = checks_base.get("ood_shift")
    assert isinstance(c, OutOfDistributionShift) and c.name == "ood_shift" and c.kind == "re-explain"
    assert c.verdict_key == ("metric", "domain") and c.scorecard_metric == "spearman_abs"
    assert c.method_kinds == ("attribution",) and c.worlds is None
    assert "Adebayo" in c.citation and "Debugging Tests" in c.citation
    assert c.defaults == {"n_images": 64, "split": "test", "shifts": DEFAULT_SHIFTS, "margin": 0.0,
                          "ci_level": 0.95, "n_boot": 2000, "ssim_data_range": 1.0, "hog_pixels_per_cell": "auto",
                          "hog_correlation": "spearman", "figure_images": 4}
    assert DEFAULT_SHIFTS == [INVERT, NOISE, {"kind": "shift", "shift_kind": "blur", "severity": 0.5}]
    assert "retraining-free" in c.description and "edge" in c.description
    assert "pass (reveals) if CI_high(difference) < -margin" in c.description
    assert c.models({}, "clean", 3, SHAPES) == [ModelRef("clean", 3)]
    assert "ood_shift" in checks_base.names()


# ------------------------------------------------------------------------------------ verdicts
@pytest.mark.parametrize("method", ["edge", "random"])
def test_model_independent_methods_fail(method):
    rows = run(tiny(0), method=method, params={"shifts": DEFAULT_SHIFTS})
    verdicts = by(rows, series="verdict")
    assert {(r["domain"], r["metric"]) for r in verdicts} == {(d, m) for d in DEFAULT_LABELS for m in MEASURES}
    for r in verdicts:
        assert r["verdict"] == "fail", r
        if method == "edge":      # the method is the reference: the difference is exactly 0 per image
            assert r["value"] == 0.0 and r["ci_low"] == 0.0 and r["ci_high"] == 0.0 and r["n"] == N_IMG
        else:                     # the same seeded noise on x and s(x): the difference is 1 - edge >= 0
            assert r["ci_low"] >= 0.0 and r["shifted_value"] == 1.0
    if method == "random":
        for r in by(rows, series="shifted"):
            assert r["value"] == pytest.approx(1.0, abs=1e-12)
    for r in rows:
        assert set(ROW_COLUMNS) <= set(r) and r["check"] == "ood_shift"


@pytest.mark.parametrize("model, expect", [(SquareEnergy(), "pass"), (Linear(), "fail")])
def test_maps_that_move_pass_and_maps_that_do_not_fail(model, expect):
    rows = run(model, params={"shifts": [INVERT]})
    (v,) = by(rows, series="verdict", metric="spearman_abs")
    assert v["domain"] == "shift:invert" and v["verdict"] == expect
    (edge,) = by(rows, series="edge", metric="spearman_abs")
    assert edge["value"] > 0.9            # inverting keeps the edges
    if expect == "pass":
        # the gradient is the image: inverting it reverses the ranks
        assert v["shifted_value"] == pytest.approx(-1.0, abs=1e-3) and v["ci_high"] < -1.5
        assert v["agreement"] == 1.0      # the maps moved although the prediction did not
    else:
        assert v["shifted_value"] == 1.0 and v["ci_low"] >= 0.0
    # a margin larger than the move turns the pass into a fail
    if expect == "pass":
        (v2,) = by(run(model, params={"shifts": [INVERT], "margin": 2.0}), series="verdict", metric="spearman_abs")
        assert v2["verdict"] == "fail" and v2["rule"].startswith("pass (reveals) if CI_high(difference) < -2")


# ------------------------------------------------------------------------------------ values by hand
def test_shifted_spearman_is_scipy_on_maps_by_hand():
    model = tiny(0)
    rows = run(model, params={"shifts": [NOISE]})
    x, xs = batch().images, batch(NOISE).images
    assert not torch.equal(x, xs)

    def abs_map(inp):
        inp = inp.clone().requires_grad_(True)
        out = model(inp)
        out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
        return core_maps.abs_map(inp.grad)[:, 0].numpy()

    a, b = abs_map(x), abs_map(xs)
    by_hand = [scipy.stats.spearmanr(a[i].ravel(), b[i].ravel())[0] for i in range(N_IMG)]
    (shifted,) = by(rows, series="shifted", metric="spearman_abs")
    assert shifted["domain"] == "shift:noise[severity=0.2]" and shifted["n"] == N_IMG
    assert shifted["value"] == pytest.approx(float(np.mean(by_hand)), abs=1e-9)
    assert 0.0 < shifted["value"] < 0.99         # the maps moved, but not into noise
    # the edge row is the Sobel maps' Spearman, and the difference is paired per image
    from skimage.filters import sobel

    def edge_map(inp):
        return np.abs(np.stack([[sobel(img[c].double().numpy()) for c in range(3)] for img in inp])).sum(1)

    ea, eb = edge_map(x), edge_map(xs)
    edge_by_hand = [scipy.stats.spearmanr(ea[i].ravel(), eb[i].ravel())[0] for i in range(N_IMG)]
    (edge,) = by(rows, series="edge", metric="spearman_abs")
    # (not exact: float32 torch and float64 scipy round tied edge values apart differently)
    assert edge["value"] == pytest.approx(float(np.mean(edge_by_hand)), abs=1e-3)
    assert edge["value"] < 0.9                  # noise moves the edges: a real reference, not 1
    (diff,) = by(rows, series="difference", metric="spearman_abs")
    assert diff["value"] == pytest.approx(shifted["value"] - edge["value"], abs=1e-12)
    assert diff["ci_low"] <= diff["value"] <= diff["ci_high"]
    (cal,) = by(rows, series="calibration", metric="spearman_abs")
    assert abs(cal["value"]) < 0.1 and cal["domain"] is None


@pytest.mark.parametrize("which", ["memorizer", "tiny"])
def test_behaviour_columns_by_hand(which):
    clean = batch()
    model = Memorizer(clean.images, clean.true_labels) if which == "memorizer" else tiny(2)
    rows = run(model, method="edge", params={"shifts": [INVERT, NOISE]})
    y = clean.true_labels
    with torch.no_grad():
        logits = model(clean.images)
        for shift, label in ((INVERT, "shift:invert"), (NOISE, "shift:noise[severity=0.2]")):
            logits_s = model(batch(shift).images)
            expect = {"agreement": (logits.argmax(1) == logits_s.argmax(1)).double().mean().item(),
                      "accuracy": (logits.argmax(1) == y).double().mean().item(),
                      "accuracy_shifted": (logits_s.argmax(1) == y).double().mean().item(),
                      "confidence": torch.softmax(logits.double(), 1).amax(1).mean().item(),
                      "confidence_shifted": torch.softmax(logits_s.double(), 1).amax(1).mean().item()}
            if which == "memorizer":     # and the same by arithmetic alone
                share0 = (y == 0).double().mean().item()
                assert 0 < share0 < 1
                assert expect == pytest.approx({"agreement": share0, "accuracy": 1.0, "accuracy_shifted": share0,
                                                "confidence": math.e ** 3 / (math.e ** 3 + 9),
                                                "confidence_shifted": math.e / (math.e + 9)})
            shift_rows = by(rows, domain=label)
            assert {r["series"] for r in shift_rows} == {"shifted", "edge", "difference", "verdict"}
            for r in shift_rows:
                for k, v in expect.items():
                    assert r[k] == pytest.approx(v, abs=1e-12), (k, r["series"])
                assert r["shift_kind"] == label.split(":")[1].split("[")[0]
    for r in by(rows, series="calibration"):
        assert r["domain"] is None and "agreement" not in r


# ------------------------------------------------------------------------------------ failures
def test_failed_maps_are_excluded_and_reported():
    rows = run(FailsOnBright(), params={"shifts": [NOISE]})
    bright = batch().images.mean((1, 2, 3)) > 0.5
    bright_s = batch(NOISE).images.mean((1, 2, 3)) > 0.5
    assert 0 < int(bright.sum()) < N_IMG and 0 < int(bright_s.sum()) < N_IMG
    ok = int((~bright & ~bright_s).sum())
    for m in MEASURES:
        (s,) = by(rows, series="shifted", metric=m)
        assert s["n"] <= ok and s["n_excluded"] >= N_IMG - ok and "method failed" in s["excluded"]
        (e,) = by(rows, series="edge", metric=m)
        assert e["n"] == N_IMG          # the edge maps never fail
    fails = {r["failed_maps"]: r for r in by(rows, series="failures")}
    assert fails["model on x"]["value"] == int(bright.sum()) and fails["model on x"]["domain"] is None
    f_s = fails["model on shift:noise[severity=0.2]"]
    assert f_s["value"] == int(bright_s.sum()) and f_s["n"] == N_IMG and "NaN" in f_s["reason"]


# ------------------------------------------------------------------------------------ parameters
@pytest.mark.parametrize("entry, field", [
    ({"kind": "shift", "shift_kind": "world", "other": "digits"}, "ood_shift.shifts[1].shift_kind"),
    ({"kind": "shift", "shift_kind": "sideways"}, "ood_shift.shifts[1].shift_kind"),
    ({"kind": "shift", "shift_kind": "noise", "severity": 2.0}, "ood_shift.shifts[1].severity"),
    ({"kind": "shift", "shift_kind": "noise", "sev": 0.2}, "ood_shift.shifts[1].sev"),
    ({"kind": "patch"}, "ood_shift.shifts[1]"),
    ("invert", "ood_shift.shifts[1]"),
    (INVERT, "ood_shift.shifts"),                       # listed twice
])
def test_bad_shift_entries_name_the_field(entry, field):
    params = {**FAST, "shifts": [INVERT, entry]}
    with pytest.raises(ConfigError) as e:
        checks_base.get("ood_shift").models(params, "clean", 0, SHAPES)
    assert e.value.field == field
    zoo = Zoo(tiny(0))
    with pytest.raises(ConfigError) as e2:     # and the cell refuses it before loading the model
        run(tiny(0), params={"shifts": [INVERT, entry]}, zoo=zoo)
    assert e2.value.field == field and zoo.requests == []
    if field.endswith("shift_kind") and entry["shift_kind"] == "world":
        assert "`ood` check" in str(e.value)


@pytest.mark.parametrize("params, field", [
    ({"shifts": []}, "ood_shift.shifts"),
    ({"shifts": INVERT}, "ood_shift.shifts"),
    ({"margin": -0.1}, "ood_shift.margin"),
    ({"split": "val"}, "ood_shift.split"),
    ({"n_images": 1}, "ood_shift.n_images"),
    ({"bogus": 1}, "ood_shift.bogus"),
])
def test_bad_params_name_the_field(params, field):
    with pytest.raises(ConfigError) as e:
        checks_base.get("ood_shift").models(params, "clean", 0, SHAPES)
    assert e.value.field == field


# ------------------------------------------------------------------------------------ sharing, figures
def test_maps_of_x_are_the_sanity_checks_maps_from_the_memo():
    from xaudit.checks.memo import EXPLANATIONS

    zoo = Zoo(tiny(0))
    EXPLANATIONS.clear()
    sanity = CheckContext(check="random_logit", method="saliency", method_params={}, model_group="clean",
                          world=dict(SHAPES), seed=0, load_model=zoo,
                          params={"n_images": N_IMG, "n_boot": 200, "figure_images": 0, "retrain_reference": False})
    checks_base.get("random_logit").run(sanity)
    hits, misses = EXPLANATIONS.hits, EXPLANATIONS.misses
    run(zoo.model, params={"shifts": [INVERT, NOISE]}, zoo=zoo)
    assert EXPLANATIONS.hits - hits == 1          # the maps of x
    assert EXPLANATIONS.misses - misses == 2      # one per shift


def test_figure_data_and_figures(tmp_path):
    rows = run(tiny(0), params={"shifts": [INVERT, NOISE], "figure_images": 2}, artifacts=str(tmp_path))
    (npz,) = list(tmp_path.glob("debugging__ood_shift__*.npz"))
    d = np.load(npz)
    labels = [str(s) for s in d["panel_labels"]]
    assert labels == ["map of x", "edge map of x",
                      "shift:invert", "map, shift:invert", "edge map, shift:invert",
                      "shift:noise[severity=0.2]", "map, shift:noise[severity=0.2]",
                      "edge map, shift:noise[severity=0.2]"]
    assert d["panels"].shape == (8, 2, 32, 32) and not d["failed"].any()
    # the shifted input's panel is the inverted image (grey)
    assert np.allclose(d["panels"][2], 1 - batch().images[:2].mean(1).numpy(), atol=2e-3)
    assert not by(rows, series="failures")
    figs = checks_base.get("ood_shift").figures(rows, [tmp_path])
    titles = [t for t, *_ in figs]
    assert any("maps of x vs maps of shifted x" in t for t in titles)
    assert any("maps per method, input 0" in t for t in titles)
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for _, png, cap in figs) and all(cap for *_, cap in figs)
