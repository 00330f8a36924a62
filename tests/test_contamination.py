"""The model-contamination debugging test: cascading randomization's stored rows, restated as a bug test."""
from __future__ import annotations

import json

import pytest

from test_sanity import context   # tiny models and images for the sanity checks' cells
from xaudit import checks
from xaudit.checks.base import CheckContext
from xaudit.checks.contamination import MEASURES
from xaudit.checks.debugging import margin_verdict
from xaudit.core.errors import ConfigError, NotApplicable


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def derived_ctx(upstream_rows, params=None, method="saliency") -> CheckContext:
    def no_model(ref):
        raise AssertionError("a derived check loads no model")
    return CheckContext(check="contamination", method=method, method_params={}, model_group="clean",
                        world={"world": "test"}, seed=0, params=params or {}, load_model=no_model,
                        upstream_rows=upstream_rows, upstream_key="k" * 64)


def cascading_rows(method: str) -> list[dict]:
    rows = checks.get("cascading_randomization").run(context("cascading_randomization", method))
    return json.loads(json.dumps(rows))          # as the store gives them back


@pytest.mark.parametrize("method", ["saliency", "edge"])
def test_contamination_restates_the_cascading_cell(method):
    up = cascading_rows(method)
    out = checks.get("contamination").run(derived_ctx(up, method=method))
    verdict_stage = {r["metric"]: r for r in up if r["series"] == "verdict"}
    for metric in MEASURES:
        mine = {r["series"]: r for r in out if r["metric"] == metric}
        v = verdict_stage[metric]
        stage = next(r for r in up if r["series"] == "stage" and r["stage"] == v["stage"] and r["metric"] == metric)
        ref = next(r for r in up if r["series"] == "retrain_reference" and r["metric"] == metric)
        assert (mine["buggy"]["value"], mine["buggy"]["ci_low"]) == (stage["value"], stage["ci_low"])
        assert mine["reference"]["value"] == ref["value"]
        assert mine["difference"]["value"] == v["diff"] and mine["difference"]["ci_high"] == v["diff_ci_high"]
        assert mine["verdict"]["verdict"] == margin_verdict(v["diff_ci_low"], v["diff_ci_high"], 0.05, "below")
        assert mine["verdict"]["sanity_verdict"] == v["verdict"] and mine["buggy"]["stage"] == v["stage"]
    if method == "edge":      # the edge map ignores the model: no difference at all, so it reveals nothing
        assert {r["value"] for r in out if r["series"] == "difference"} == {0.0}
        assert {r["verdict"] for r in out if r["series"] == "verdict"} == {"fail"}


def test_contamination_verdict_follows_the_margin():
    def up(lo, hi):
        base = {"check": "cascading_randomization", "method": "saliency", "model": "clean", "world": "test",
                "seed": 0, "n": 8}
        return [{**base, "metric": "ssim", "series": "verdict", "value": 0.3, "ci_low": 0.2, "ci_high": 0.4,
                 "verdict": "pass", "diff": (lo + hi) / 2, "diff_ci_low": lo, "diff_ci_high": hi, "n_paired": 8,
                 "stage": 2, "block": "fc1"},
                {**base, "metric": "ssim", "series": "retrain_reference", "value": 0.7, "ci_low": 0.6, "ci_high": 0.8}]
    got = lambda lo, hi, m: next(r["verdict"] for r in checks.get("contamination").run(
        derived_ctx(up(lo, hi), {"margin": m})) if r["series"] == "verdict")
    assert got(-0.5, -0.2, 0.1) == "pass"            # farther from the trained maps than retraining, by > margin
    assert got(-0.08, 0.03, 0.1) == "fail"           # within the margin of what retraining does
    assert got(-0.2, -0.05, 0.1) == "inconclusive"
    with pytest.raises(ConfigError, match=r"contamination.margin"):
        checks.get("contamination").run(derived_ctx(up(-0.5, -0.2), {"margin": -1}))
    with pytest.raises(ConfigError, match=r"contamination.n_images: unknown parameter"):
        checks.get("contamination").run(derived_ctx(up(-0.5, -0.2), {"n_images": 3}))


def test_contamination_without_retrain_reference_is_not_applicable():
    up = checks.get("cascading_randomization").run(context("cascading_randomization", "saliency",
                                                            params={"retrain_reference": False}))
    with pytest.raises(NotApplicable, match="retrain_reference: true"):
        checks.get("contamination").run(derived_ctx(json.loads(json.dumps(up))))
