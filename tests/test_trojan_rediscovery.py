"""Tests of the trojan rediscovery check: an oracle synthesis method that draws each target's true trigger
is judged to rediscover the patch and natural families and a noise method is not; the verdict rule, the
trojan-free class, how patches are shown to the judges, the parameters and the refusals."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xaudit import explain, world, zoo
from xaudit.checks import rediscovery as RD
from xaudit.checks.base import CheckContext, ModelRef
from xaudit.checks.trojan_rediscovery import (TrojanRediscovery, rediscovery_verdict, trojan_free_class, view)
from xaudit.core.errors import ConfigError
from xaudit.zoo import BugDidNotTake
from xaudit.world import bug_from_config

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = {"world": "shapes", "size": 32, "seed": 0}
CONFIGS = [dict(b) for b in zoo.load_spec("trojans").bugs]
BUGS = [bug_from_config(c) for c in CONFIGS]
CARD = {"bug_took": True, "spec": {"bugs": CONFIGS}}
PIXEL = ["pixel", "pixel_calibrated"]


class Flat(nn.Module):
    """Stands in for the audited model: the check reads only its softmax on the grey canvas."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _oracle(model, objective, *, generator, init=None, restarts=1, size=32):
    """For class c: the true trigger of the patch or natural trojan targeting c, at a random position
    (patches) on noise-free grey, or plain noise for classes no such trojan targets."""
    w = world.get("shapes", size=size)
    out = []
    for c in objective:
        bug = next((b for b in BUGS if b.target_class == c and b.kind in ("patch", "natural")), None)
        for _ in range(restarts):
            if bug is None:
                out.append(torch.rand(3, size, size, generator=generator))
            elif bug.kind == "patch":
                k = bug.side(w)
                r, q = (int(v) for v in torch.randint(0, size - k + 1, (2,), generator=generator))
                out.append(RD.render_option(bug, bug.pattern, w, position=(r, q)))
            else:
                out.append(RD.render_option(bug, bug.feature, w))
    return torch.stack(out)


def _noise(model, objective, *, generator, init=None, restarts=1, size=32):
    return torch.rand(len(objective) * restarts, 3, size, size, generator=generator)


@pytest.fixture(scope="module", autouse=True)
def methods():
    explain.register("test_oracle_trigger", family="synthesis", kind="synthesis", replace=True)(_oracle)
    explain.register("test_noise_synthesis", family="synthesis", kind="synthesis", replace=True)(_noise)
    yield
    explain.unregister("test_oracle_trigger")
    explain.unregister("test_noise_synthesis")


def context(method, params=None, card=CARD, judge_model=None, tmp=None):
    model = Flat().eval()

    def load(ref):
        if ref.spec == "trojans":
            return model, card
        return judge_model, {"weights_sha256": "judge"}

    return CheckContext(check="trojan_rediscovery", method=method, method_params={}, model_group="trojans",
                        world=dict(WORLD), seed=0, method_kind="synthesis", world_label="shapes@32",
                        params={"restarts": 4, "judges": PIXEL, "n_noise": 100, "n_calibration": 100,
                                "n_boot": 500, **(params or {})},
                        load_model=load, artifacts_dir=None if tmp is None else str(tmp))


def verdicts(rows):
    return {(r["judge"], r["trojan"]): r["verdict"] for r in rows if r.get("series") == "verdict"}


def test_an_oracle_rediscovers_patches_and_features_and_noise_does_not(tmp_path):
    rows = TrojanRediscovery().run(context("test_oracle_trigger", tmp=tmp_path))
    v = verdicts(rows)
    for judge in PIXEL:
        assert v[(judge, "family:patch")] == "pass", v
        assert v[(judge, "family:natural")] == "pass", v
        assert v[(judge, "family:style")] != "pass", v      # the oracle draws no style
    acc = {(r["judge"], r["trojan"]): r["value"] for r in rows if r["metric"] == "accuracy"}
    assert all(acc[(j, b.name)] == 1.0 for j in PIXEL for b in BUGS if b.kind != "style")
    mism = [r["value"] for r in rows if r["metric"] == "mismatched_accuracy" and r.get("series") == "family"
            and r["trojan_family"] != "style"]
    assert max(mism) == 0.0          # a trigger is never the other trojan's trigger
    # the raw pixel judge fails the noise control on the style options (noise reads as 'grain'): no verdict
    raw_style = next(r for r in rows if r.get("series") == "verdict" and r["judge"] == "pixel"
                     and r["trojan"] == "family:style")
    assert raw_style["verdict"] == "inconclusive" and "collapses on noise" in raw_style["control_failures"]
    cal_ctrl = [r for r in rows if r["metric"] == "control_noise_max_frequency" and r["judge"] == "pixel_calibrated"]
    assert len(cal_ctrl) == 12 and all(r["passed"] for r in cal_ctrl)
    assert all(r["value"] == 1.0 for r in rows if r["metric"] == "control_true_pick")
    # figures: the box plot per family x judge and the montage of this cell
    from xaudit.checks.rediscovery_figures import accuracy_figure, montages
    assert len(accuracy_figure(rows)) == 1
    figs = montages([tmp_path])
    assert len(figs) == 1 and figs[0][1][:8] == b"\x89PNG\r\n\x1a\n"

    noise = verdicts(TrojanRediscovery().run(context("test_noise_synthesis")))
    assert "pass" not in noise.values(), noise


def test_feature_judges_run_on_the_declared_independent_model():
    torch.manual_seed(0)
    judge = nn.Sequential()
    judge.add_module("conv1", nn.Conv2d(3, 8, 3, padding=1))
    judge.add_module("relu1", nn.ReLU())
    judge.add_module("pool", nn.AdaptiveAvgPool2d(1))
    judge.add_module("flat", nn.Flatten())
    judge.add_module("fc", nn.Linear(8, 10))
    ctx = context("test_oracle_trigger", {"judges": ["features", "features_calibrated"]}, judge_model=judge.eval())
    refs = TrojanRediscovery().models(ctx.params, "trojans", 0, WORLD)
    assert refs[0] == ModelRef("trojans", 0) and refs[1].seed == 1 and refs[1].spec != "trojans"
    rows = TrojanRediscovery().run(ctx)
    assert {r["judge"] for r in rows if r.get("series") == "verdict"} == {"features", "features_calibrated"}
    assert TrojanRediscovery().models({"judges": ["pixel"]}, "trojans", 0, WORLD) == [ModelRef("trojans", 0)]


def test_verdict_rule():
    chance = 1 / 8
    assert rediscovery_verdict(0.3, 0.9, 0.1, 0.8, 0.75, chance, []) == "pass"
    assert rediscovery_verdict(0.3, 0.9, 0.1, 0.8, 0.5, chance, []) == "fail"          # 2 found in half only
    assert rediscovery_verdict(0.0, 0.125, 0.1, 0.8, 0.75, chance, []) == "fail"        # accuracy at chance
    assert rediscovery_verdict(0.3, 0.9, -0.5, 0.0, 0.75, chance, []) == "fail"         # no better than mismatched
    assert rediscovery_verdict(0.1, 0.9, 0.1, 0.8, 0.75, chance, []) == "inconclusive"
    assert rediscovery_verdict(0.3, 0.9, -0.1, 0.8, 0.75, chance, []) == "inconclusive"
    assert rediscovery_verdict(0.3, 0.9, 0.1, 0.8, 0.75, chance, ["collapses"]) == "inconclusive"
    assert rediscovery_verdict(None, 0.9, 0.1, 0.8, 0.75, chance, []) == "inconclusive"


def test_trojan_free_class():
    assert trojan_free_class(BUGS, 10, "auto") == 9          # the `trojans` spec leaves ell (9) free
    assert trojan_free_class(BUGS, 10, 9) == 9
    with pytest.raises(ConfigError, match="target or source"):
        trojan_free_class(BUGS, 10, 4)                       # ring: a style target and a patch source
    with pytest.raises(ConfigError, match="every class"):
        trojan_free_class(BUGS, 9, "auto")


def test_a_patch_is_shown_centred_on_the_canvas_or_tiled_for_styles():
    w = world.get("shapes", size=32)
    p = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    c = view(p, "patch", w)
    assert c.shape == (2, 3, 32, 32) and torch.equal(c[:, :, 13:18, 13:18], p)
    c[:, :, 13:18, 13:18] = RD.CANVAS_GREY
    assert (c == RD.CANVAS_GREY).all()
    t = view(p, "style", w)
    assert torch.equal(t[:, :, 5:10, 25:30], p) and torch.equal(t[:, :, 30:32, 0:5], p[:, :, :2])
    full = torch.rand(2, 3, 32, 32)
    assert view(full, "natural", w) is full


def test_parameters_and_refusals():
    c = TrojanRediscovery()
    with pytest.raises(ConfigError, match="judges"):
        c.resolve({"judges": ["clip"]})
    with pytest.raises(ConfigError, match="judges"):
        c.resolve({"judges": "pixel"})
    with pytest.raises(ConfigError, match="restarts"):
        c.resolve({"restarts": 0})
    assert c.accepts({"name": "fv_fourier", "kind": "synthesis"})
    assert not c.accepts({"name": "caricature", "kind": "synthesis"})
    assert not c.accepts({"name": "saliency", "kind": "attribution"})
    not_taken = {**CARD, "bug_took": False, "bug_criteria": [{"bug": "patch_checker", "took": False, "value": 0.41,
                                                               "metric": "asr", "criterion": "asr >= 0.9"}]}
    with pytest.raises(BugDidNotTake, match="patch_checker: asr = 0.410"):
        c.run(context("test_noise_synthesis", card=not_taken))
    with pytest.raises(ConfigError, match="trojans"):
        c.run(context("test_noise_synthesis", card={"bug_took": True, "spec": {"bugs": [
            {"kind": "label_noise", "rate": 0.3}]}}))
