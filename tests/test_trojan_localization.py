"""Tests of the trojan localization check: the L1-vs-blank identity, a hand-built model that reads the
trigger out linearly (an exact gradient localizes it, the blank and edge baselines do not), the trojan
images and the refusals."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xaudit import metrics
from xaudit.checks.base import CheckContext
from xaudit.checks.trojan_localization import TrojanLocalization, flipped_images
from xaudit.core.errors import ConfigError
from xaudit.world import bug_from_config
from xaudit.world.bugs import patch_pattern

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = {"world": "shapes", "size": 32, "seed": 0}
TROJAN = {"kind": "patch", "name": "corner", "pattern": "checker", "size_px": 5, "location": "fixed",
          "target_class": 3, "poison_rate": 0.1}


def test_l1_beats_the_blank_guess_exactly_when_more_than_half_the_mass_is_inside():
    g = torch.Generator().manual_seed(0)
    n = 400
    # maps of varied sparsity and footprints of varied size and place
    maps = torch.rand(n, 1, 16, 16, generator=g) ** torch.linspace(0.2, 8, n).view(n, 1, 1, 1)
    masks = torch.zeros(n, 16, 16, dtype=torch.bool)
    for i in range(n):
        s = int(torch.randint(2, 9, (1,), generator=g))
        y, x = (int(v) for v in torch.randint(0, 16 - s + 1, (2,), generator=g))
        masks[i, y:y + s, x:x + s] = True
        if i % 3 == 0:   # sparse maps concentrated on the footprint for some of them
            maps[i] = maps[i] * (1 + 20 * masks[i].float())
    l1 = metrics.trigger_distance(maps, masks)
    blank = metrics.blank_distance(masks)
    a = maps[:, 0] / maps.flatten(1).amax(1).view(n, 1, 1)
    inside = (a * masks).flatten(1).sum(1) / a.flatten(1).sum(1)
    decided = (inside - 0.5).abs() > 1e-9
    assert decided.all()
    assert torch.equal((l1 < blank)[decided], (inside > 0.5)[decided])
    assert 50 < int((inside > 0.5).sum()) < n - 50      # both outcomes occur


class CornerReadout(nn.Module):
    """Logit 3 is a fixed linear read-out of the bottom-right 5 x 5 corner (the fixed patch's pixels),
    matched to the checker pattern; every other logit is the constant 4, so the model predicts 3 exactly
    when the checker is there."""

    def __init__(self):
        super().__init__()
        pat = patch_pattern("checker", 5, 3) - 0.5
        w = torch.zeros(3, 32, 32)
        w[:, 26:31, 26:31] = pat                      # location 'fixed': 1 px margin at the bottom right
        self.register_buffer("w", w)

    def forward(self, x):
        read = 2 * ((x - 0.5) * self.w).flatten(1).sum(1)
        out = torch.full((x.shape[0], 10), 4.0, dtype=x.dtype)
        out = out + 0 * read[:, None]                 # keeps the graph for every logit
        out[:, 3] = read
        return out


def context(method, card, params=None):
    model = CornerReadout().eval()
    return CheckContext(check="trojan_localization", method=method, method_params={}, model_group="trojans",
                        world=dict(WORLD), seed=0, params=params or {"n_images": 24, "max_candidates": 96,
                                                                     "n_boot": 500, "figure_images": 0},
                        load_model=lambda ref: (model, card), world_label="shapes@32")


CARD = {"bug_took": True, "spec": {"bugs": [TROJAN, {"kind": "style", "name": "grey", "style": "grayscale",
                                                      "target_class": 4, "poison_rate": 0.02}]}}


def verdicts(rows):
    return {(r["metric"], r["trojan"]): r["verdict"] for r in rows if r.get("series") == "verdict"}


def value(rows, series, metric, trojan="corner"):
    (r,) = [r for r in rows if r["series"] == series and r["metric"] == metric and r["trojan"] == trojan
            and r.get("baseline") in (None, "edge")]
    return r["value"]


def test_the_readout_model_flips_exactly_the_triggered_images():
    ctx = context("saliency", CARD)
    bug = bug_from_config(TROJAN)
    x, fp, n_flipped, n_eligible = flipped_images(ctx, CornerReadout().eval(), CARD, bug,
                                                  {"max_candidates": 96, "n_images": 24})
    assert n_flipped == n_eligible >= 24 and x.shape == (24, 3, 32, 32)   # every triggered image flips
    assert fp.shape == (24, 32, 32) and bool(fp[:, 26:31, 26:31].all()) and int(fp.sum()) == 24 * 25


def test_an_exact_gradient_localizes_a_linearly_read_trigger_and_the_baselines_do_not():
    ctx = context("saliency", CARD)
    rows = TrojanLocalization().run(ctx)
    v = verdicts(rows)
    # the style trojan is left out: its footprint is the whole image
    assert {t for _, t in v} == {"corner", "family:patch"}
    assert v[("l1_vs_blank", "corner")] == "pass" and v[("pearson_vs_edge", "corner")] == "pass"
    assert v[("l1_vs_blank", "family:patch")] == "pass"
    assert value(rows, "method", "mass_accuracy") > 0.9 and value(rows, "method", "pointing_game") == 1.0
    # the published L1 of the gradient (all its mass on the footprint) against the blank guess's area
    area = 25 / 1024
    assert value(rows, "blank", "trigger_distance") == pytest.approx(area)
    assert value(rows, "method", "trigger_distance") < area
    for baseline in ("edge", "blank"):
        rb = TrojanLocalization().run(context(baseline, CARD))
        vb = verdicts(rb)
        assert vb[("l1_vs_blank", "corner")] == "fail", (baseline, vb)
        assert vb[("pearson_vs_edge", "corner")] in ("fail", "inconclusive")
        for r in rb:                   # the store holds no NaN: undefined values are None
            assert all(not (isinstance(v, float) and math.isnan(v)) for v in r.values()), r
        if baseline == "edge":         # identical to its own baseline: a difference of exactly 0
            assert vb[("pearson_vs_edge", "corner")] == "fail"
            assert value(rb, "method", "mass_accuracy") < 0.5


def test_refusals_and_too_few_images():
    failed = {"bug": "corner", "kind": "patch", "metric": "attack_success_rate", "value": 0.4123, "threshold": 0.9,
              "took": False, "criterion": "attack success rate >= 0.9 on 900 triggered non-target test images"}
    with pytest.raises(ConfigError, match=r"corner: attack_success_rate = 0\.412"):   # the measured ASR
        TrojanLocalization().run(context("saliency", {**CARD, "bug_took": False, "bug_criteria": [failed]}))
    with pytest.raises(ConfigError, match="patch or natural"):
        TrojanLocalization().run(context("saliency", {"bug_took": True, "spec": {"bugs": []}}))
    with pytest.raises(ConfigError, match="min_images"):
        TrojanLocalization().resolve({"n_images": 5, "min_images": 10})
    other = {**TROJAN, "target_class": 5}             # the read-out never predicts 5: nothing flips
    rows = TrojanLocalization().run(context("saliency", {"bug_took": True, "spec": {"bugs": [other]}}))
    (r,) = rows
    assert r["series"] == "too_few" and r["value"] == 0 and r["verdict"] is None and math.isfinite(r["n_eligible"])


def test_box_plots_read_the_per_image_values_each_cell_saved(tmp_path):
    import dataclasses

    import numpy as np

    from xaudit.checks.trojan_localization import box_figure

    rows = []
    for method in ("saliency", "blank"):
        ctx = dataclasses.replace(context(method, CARD), artifacts_dir=str(tmp_path))
        rows += TrojanLocalization().run(ctx)
    files = sorted(tmp_path.glob("values__*.npz"))
    assert len(files) == 2
    with np.load(files[1]) as z:        # saliency's cell
        l1 = z["patch__method__trigger_distance"]
        assert l1.size == 24 and z["natural__method__trigger_distance"].size == 0
    mean = next(r["value"] for r in rows if r["method"] == "saliency" and r.get("series") == "method"
                and r["metric"] == "trigger_distance" and r["trojan"] == "family:patch")
    assert float(np.mean(l1)) == pytest.approx(mean, rel=1e-5)
    figs = box_figure(rows, [tmp_path])
    assert len(figs) == 1 and "patch" in figs[0][0] and figs[0][1][:4] == b"\x89PNG"
