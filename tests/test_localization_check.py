"""Tests of the localization check: an oracle whose maps are the masks passes, uniform noise does not;
images without a mask are explained but left out and counted; a world without masks is not applicable;
the L1 recomputed by hand in numpy; the sanity checks' explanation is reused through the worker memo."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from xaudit import explain
from xaudit.checks import localization as loc_mod
from xaudit.checks.base import CheckContext
from xaudit.checks.localization import Localization
from xaudit.core.errors import ConfigError, NotApplicable
from xaudit.world.base import Batch

pytestmark = pytest.mark.usefixtures("one_thread")

N, SIZE, K = 12, 16, 4
NO_MASK = (2, 7)            # images of the fake world without a mask


def fake_batch(n_total: int = N, no_mask=NO_MASK) -> Batch:
    """Background noise in [0, 0.3]; the object a square of intensity >= 0.9 whose pixels are the mask.
    Images in ``no_mask`` have an object too but an all-False mask (a user gave no mask for them)."""
    g = torch.Generator().manual_seed(1)
    x = 0.3 * torch.rand(n_total, 3, SIZE, SIZE, generator=g)
    mask = torch.zeros(n_total, SIZE, SIZE, dtype=torch.bool)
    for i in range(n_total):
        s = int(torch.randint(3, 8, (1,), generator=g))
        r, c = (int(v) for v in torch.randint(0, SIZE - s + 1, (2,), generator=g))
        x[i, :, r:r + s, c:c + s] = 0.9 + 0.1 * torch.rand(3, s, s, generator=g)
        if i not in no_mask:
            mask[i, r:r + s, c:c + s] = True
    labels = torch.arange(n_total, dtype=torch.int64) % K
    return Batch(images=x, labels=labels, true_labels=labels.clone(), object_mask=mask,
                 indices=torch.arange(n_total), split="test")


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, K)).eval()


MODEL = model()


def context(method: str, params=None, world=None, **kw) -> CheckContext:
    base = {"n_images": N, "n_boot": 500, "figure_images": 0}
    return CheckContext(check="localization", method=method, method_params={}, model_group="clean",
                        world=world or {"world": "fake"}, seed=0, params={**base, **(params or {})},
                        load_model=lambda ref: (MODEL, {}), world_label="fake", **kw)


@pytest.fixture
def fake_world(monkeypatch):
    """The check's load_batch returns the first n images of ``fake_batch()`` (``state["batch"]``)."""
    state = {"batch": fake_batch(), "calls": []}

    def load(ctx, n, split="test"):
        state["calls"].append((n, split))
        return state["batch"].subset(torch.arange(n))
    monkeypatch.setattr(loc_mod, "load_batch", load)
    return state


@pytest.fixture
def methods():
    """Test methods: ``loc_oracle`` (the object's pixels: exactly the mask where there is one),
    ``loc_spy`` (records its targets; map = input), ``loc_flaky`` (NaN on images with a dark corner)."""
    seen = []

    @explain.register("loc_oracle", family="baseline", passes=(0, 0), params={}, replace=True)
    def loc_oracle(model, x, target):
        return (x.amin(1, keepdim=True) > 0.8).to(x.dtype).expand_as(x).clone()

    @explain.register("loc_spy", family="baseline", passes=(0, 0), params={}, replace=True)
    def loc_spy(model, x, target):
        seen.append(target.clone())
        return x.clone()

    @explain.register("loc_flaky", family="baseline", passes=(0, 0), params={}, replace=True)
    def loc_flaky(model, x, target):
        out = x.clone()
        out[x[:, 0, 0, 0] < 0.15] = math.nan
        return out
    yield seen
    for name in ("loc_oracle", "loc_spy", "loc_flaky"):
        explain.unregister(name)


def by(rows, **kv):
    return [r for r in rows if all(r.get(k) == v for k, v in kv.items())]


def one(rows, **kv):
    (r,) = by(rows, **kv)
    return r


def verdicts(rows):
    return {r["metric"]: r["verdict"] for r in by(rows, series="verdict")}


def test_an_oracle_passes_both_verdicts_and_noise_and_edges_do_not(fake_world, methods):
    rows = Localization().run(context("loc_oracle"))
    assert verdicts(rows) == {"l1_vs_blank": "pass", "pearson_vs_edge": "pass"}
    n_masked = N - len(NO_MASK)
    # the oracle's maps are the masks: every measure at its best, on the masked images only
    for metric, best in (("trigger_distance", 0.0), ("mask_pearson", 1.0), ("mass_accuracy", 1.0),
                         ("pointing_game", 1.0), ("pixel_auroc", 1.0)):
        r = one(rows, series="method", metric=metric)
        assert r["value"] == pytest.approx(best, abs=1e-12) and r["n"] == n_masked, r
    assert all(r["n_failed"] == 0 and r["target"] == "current" for r in rows)

    noise = Localization().run(context("random"))
    v = verdicts(noise)
    assert v["l1_vs_blank"] == "fail" and v["pearson_vs_edge"] == "fail", v
    assert one(noise, series="method", metric="mask_pearson")["ci_high"] < 0.2
    edge = Localization().run(context("edge"))      # its own baseline: a difference of exactly 0
    assert verdicts(edge)["pearson_vs_edge"] == "fail"
    r = one(edge, series="difference", metric="mask_pearson", baseline="edge")
    assert r["value"] == r["ci_low"] == r["ci_high"] == 0.0
    for r in rows + noise + edge:           # the store holds no NaN: undefined values are None
        assert all(not (isinstance(x, float) and math.isnan(x)) for x in r.values()), r


def test_images_without_a_mask_are_explained_then_left_out_and_counted(fake_world, methods):
    rows = Localization().run(context("loc_spy", {"target": "label"}))
    # explained on all N images (the sanity checks' memo key), with the true labels as targets
    (target,) = methods
    assert torch.equal(target.cpu(), fake_world["batch"].true_labels)
    assert fake_world["calls"] == [(N, "test")]
    r = one(rows, series="no_mask")
    assert (r["metric"], r["value"], r["n"], r["n_masked"]) == ("no_mask", len(NO_MASK), N, N - len(NO_MASK))
    assert all(x["n"] == N - len(NO_MASK) for x in by(rows, series="method"))
    # every image has a mask: the row says 0
    fake_world["batch"] = fake_batch(no_mask=())
    rows = Localization().run(context("loc_spy"))
    assert one(rows, series="no_mask")["value"] == 0 and one(rows, series="method", metric="pointing_game")["n"] == N
    # no image has a mask: not applicable, with the audit's hint
    fake_world["batch"] = fake_batch(no_mask=range(N))
    with pytest.raises(NotApplicable, match="no ground-truth masks.*--masks DIR"):
        Localization().run(context("loc_spy"))


def test_l1_matches_a_hand_computation_and_failed_maps_are_left_out(fake_world, methods):
    b = fake_world["batch"]
    x = b.images.numpy().astype(np.float64)
    g = b.object_mask.numpy()
    masked = [i for i in range(N) if g[i].any()]
    # method `input`: a = sum_c |x| / max, L1 = mean |a - g| per image, averaged over the masked images
    a = np.abs(x).sum(1)
    a = a / a.reshape(N, -1).max(1)[:, None, None]
    l1 = np.abs(a - g).mean((1, 2))
    rows = Localization().run(context("input"))
    assert one(rows, series="method", metric="trigger_distance")["value"] == pytest.approx(l1[masked].mean(), rel=1e-6)
    area = g.mean((1, 2))[masked]
    assert one(rows, series="blank", metric="trigger_distance")["value"] == pytest.approx(area.mean(), rel=1e-9)
    assert one(rows, series="difference", metric="trigger_distance", baseline="blank")["value"] == \
        pytest.approx((l1[masked] - area).mean(), rel=1e-6)
    assert rows[0]["mask_area"] == pytest.approx(area.mean(), rel=1e-9)
    # NaN maps: failed, out of every measure and difference
    bad = [i for i in masked if x[i, 0, 0, 0] < 0.15]
    assert 0 < len(bad) < len(masked)
    rows = Localization().run(context("loc_flaky"))
    ok = [i for i in masked if i not in bad]
    r = one(rows, series="method", metric="trigger_distance")
    assert r["n_failed"] == len(bad) and r["n"] == len(ok) and "method failed" in r["excluded"]
    assert r["value"] == pytest.approx(l1[ok].mean(), rel=1e-6)
    assert one(rows, series="verdict", metric="l1_vs_blank")["n"] == len(ok)


def test_parameters_are_validated():
    with pytest.raises(ConfigError, match="localization.target"):
        Localization().resolve({"target": "original"})
    with pytest.raises(ConfigError, match="unknown parameter"):
        Localization().resolve({"margin": 0.1})
    with pytest.raises(ConfigError, match="localization.n_images"):
        Localization().models({"n_images": 1}, "clean", 0)
    assert [r.alias for r in Localization().models({}, "clean", 3)] == ["clean"]


def test_the_sanity_checks_explanation_is_reused_from_the_memo():
    from xaudit.checks.memo import EXPLANATIONS
    from xaudit.checks.randomization import CascadingRandomization
    from xaudit.checks.sanity import SanityRun, resolve_params

    world = {"world": "shapes", "size": 32, "seed": 0}
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()
    ctx = CheckContext(check="cascading_randomization", method="saliency", method_params={}, model_group="clean",
                       world=world, seed=0, params={"n_images": 8}, load_model=lambda ref: (net, {}),
                       world_label="shapes@32")
    sanity = CascadingRandomization()
    run = SanityRun(sanity, ctx, resolve_params(sanity.name, {"n_images": 8}, sanity.extra_defaults))
    run.explain(run.model, run.target_for(run.model, run.original_target))      # as SanityRun.execute does
    hits, misses = EXPLANATIONS.hits, EXPLANATIONS.misses
    lctx = dataclasses.replace(ctx, check="localization", params={"n_images": 8, "n_boot": 200, "figure_images": 0})
    rows = Localization().run(lctx)
    assert (EXPLANATIONS.hits, EXPLANATIONS.misses) == (hits + 1, misses)
    assert one(rows, series="no_mask")["n"] == 8
    Localization().run(dataclasses.replace(lctx, seed=1))    # another cell seed, another explain seed: a miss
    assert EXPLANATIONS.misses == misses + 1


def test_figures_read_the_saved_panels(fake_world, methods, tmp_path):
    rows = []
    for m in ("loc_oracle", "edge"):
        rows += Localization().run(context(m, {"figure_images": 2}, artifacts_dir=str(tmp_path)))
    files = sorted(tmp_path.glob("debugging__localization__*.npz"))
    assert len(files) == 2
    with np.load(files[1]) as z:              # the oracle's cell: its map panel is the mask panel
        labels = list(z["panel_labels"])
        assert labels == ["method (a = sum|attr| / max)", "edge", "mask"]
        assert np.array_equal(z["panels"][0], z["panels"][2])
    figs = Localization().figures(rows, [tmp_path])
    assert len(figs) == 1 + 2 and all(png[:4] == b"\x89PNG" for _, png, cap in figs) and all(cap for *_, cap in figs)
