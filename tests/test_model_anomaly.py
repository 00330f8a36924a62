"""The model audit check on hand-built populations: linear models whose saliency map is their weight
pattern. Normal models share a pattern up to small seed noise; a model with random weights (its maps are
noise) is flagged and detected; a copy of a normal model is not; the population is built from the
parameters; collapsed models are left out; the refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xaudit.checks.base import CheckContext, ModelRef
from xaudit.checks.model_anomaly import ModelAnomaly, auroc_ci, detects_verdict
from xaudit.core.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = {"world": "shapes", "size": 32, "seed": 0}


class Linear(nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(w.view(10, -1))

    def forward(self, x):
        return self.fc(x.flatten(1))


BASE = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def feature_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(3, 8, 3, padding=1))
    net.add_module("relu2", nn.ReLU())
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(8, 10))
    return net.eval()


def member(ref: ModelRef) -> tuple[nn.Module, dict]:
    g = torch.Generator().manual_seed(int(ref.seed))
    spec = ref.spec if isinstance(ref.spec, dict) else {}
    if "arch" in spec:                           # the feature distance's independent model
        return feature_net(), {"clean_accuracy": 0.9}
    kind = (spec.get("bugs") or [{}])[0].get("name")
    if kind == "noise":                          # random weights: its saliency maps are noise
        w = torch.randn(10, 3, 32, 32, generator=g)
    elif kind == "copy":                         # the weights of normal model seed 2 under another seed
        w = BASE + 0.2 * torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    else:
        w = BASE + 0.2 * torch.randn(10, 3, 32, 32, generator=g)
    acc = 0.5 if kind in ("broken", "strong") else 0.95
    crit = [{"bug": kind, "metric": "effect", "value": 1.0, "took": True}] if kind == "strong" else []
    return Linear(w).eval(), {"clean_accuracy": acc, "bug_took": True, "bug_criteria": crit}


FAMILIES = {"noise": [{"bugs": [{"name": "noise"}]}, {"bugs": [{"name": "noise", "x": 1}]}],
            "copy": [{"bugs": [{"name": "copy"}]}],
            "broken": [{"bugs": [{"name": "broken"}]}],
            "strong": [{"bugs": [{"name": "strong"}]}]}     # low accuracy, but its bug took: kept


def context(params=None):
    p = {"n_normal": 6, "families": FAMILIES, "anomaly_seeds": 2, "n_inputs": 12, "n_identify": 0,
         "distances": ["ssim", "l2"], "n_boot": 300, **(params or {})}
    return CheckContext(check="model_anomaly", method="saliency", method_params={}, model_group="clean",
                        world=dict(WORLD), seed=0, params=p, load_model=member, world_label="shapes@32")


def test_noise_maps_are_detected_a_copy_is_not_and_a_collapsed_model_is_left_out():
    rows = ModelAnomaly().run(context())
    for dist in ("ssim", "l2"):
        v = {r["anomaly"]: r for r in rows if r.get("series") == "verdict" and r["distance"] == dist}
        assert v["noise"]["verdict"] == "pass" and v["noise"]["value"] == 1.0 and v["noise"]["flagged_fraction"] == 1.0
        assert v["copy"]["verdict"] != "pass" and v["copy"]["flagged_fraction"] == 0.0
        assert "broken" not in v
        scores = {r["member"]: r["value"] for r in rows if r.get("series") == "model" and r["distance"] == dist}
        normal = [s for m, s in scores.items() if m.startswith("normal")]
        copies = [s for m, s in scores.items() if m.startswith("copy")]
        assert len(normal) == 6 and len(copies) == 2
        assert max(copies) <= max(normal)
    collapsed = [r for r in rows if r.get("series") == "collapsed"]
    assert len(collapsed) == 2 and all(r["anomaly"] == "broken" and r["value"] == 0.5 for r in collapsed)
    assert any(r.get("series") == "verdict" and r["anomaly"] == "strong" for r in rows)


def test_the_feature_distance_detects_the_noise_maps_too():
    rows = ModelAnomaly().run(context({"distances": ["features"], "families": {"noise": FAMILIES["noise"]}}))
    v = [r for r in rows if r.get("series") == "verdict"]
    assert len(v) == 1 and v[0]["distance"] == "features" and v[0]["value"] == 1.0


def test_the_population_is_built_from_parameters():
    c = ModelAnomaly()
    p = c.resolve({"n_normal": 4, "anomaly_seeds": 2, "distances": ["ssim"]})
    pop = c.population(p, "clean", 0)
    normals = [r for f, _, r in pop if f == "normal"]
    assert [r.seed for r in normals] == [0, 1, 2, 3]
    assert all(r.spec == {"base": "clean", "train": {"train_size": 20000}} for r in normals)
    n_variants = sum(len(v) for v in p["families"].values())
    assert len(pop) == 4 + 2 * n_variants
    seeds = [r.seed for f, _, r in pop if f != "normal"]
    assert len(set(seeds)) == len(seeds) and min(seeds) >= 100
    backdoor = [r for f, _, r in pop if f == "backdoor"]
    assert [r.spec["bugs"][0]["poison_rate"] for r in backdoor] == [0.01, 0.01, 0.05, 0.05, 0.1, 0.1, 0.3, 0.3]
    assert all(r.spec["base"] == "clean" and r.spec["train"] == {"train_size": 20000} for r in backdoor)
    adv = next(r for f, _, r in pop if f == "adversarial")
    assert adv.spec == {"base": "adversarial", "train": {"train_size": 20000}}
    noise = next(r for f, _, r in pop if f == "gaussian_noise")      # a variant's own settings win
    assert noise.spec["train"] == {"train_size": 20000, "noise_sigma": 0.1}
    assert c.population(c.resolve({"population_train": None, "n_normal": 3}), "clean", 0)[0][2].spec == "clean"
    # the feature distance's model is declared too, and is none of the population
    refs = c.models({"n_normal": 4, "anomaly_seeds": 2}, "clean", 0, WORLD)
    assert refs[-1].spec == {"base": "clean", "arch": {"name": "vgg"}} and len(refs) == len(pop) + 1


def test_refusals():
    c = ModelAnomaly()
    with pytest.raises(ConfigError, match="n_normal"):
        c.resolve({"n_normal": 2})
    with pytest.raises(ConfigError, match="distances"):
        c.resolve({"distances": ["lpips"]})
    with pytest.raises(ConfigError, match="anomaly_seed_base"):
        c.resolve({"n_normal": 200})
    with pytest.raises(ConfigError, match="families.backdoor"):
        c.resolve({"families": {"backdoor": []}})


def test_auroc_ci_and_verdict():
    from sklearn.metrics import roc_auc_score

    pos, neg = torch.tensor([3.0, 1.0, 4.0]), torch.tensor([0.5, 2.0, 0.1, 1.5])
    auc, lo, hi, n = auroc_ci(pos, neg, 500, 0.95, 0)
    assert auc == pytest.approx(roc_auc_score([1, 1, 1, 0, 0, 0, 0], [3, 1, 4, 0.5, 2, 0.1, 1.5])) and n == 7
    assert lo <= auc <= hi
    assert detects_verdict(0.6, 1.0, 0.5) == "pass"
    assert detects_verdict(0.6, 1.0, 0.25) == "inconclusive"
    assert detects_verdict(0.2, 0.5, 1.0) == "fail"
    assert detects_verdict(0.4, 0.9, 0.0) == "fail"
    assert detects_verdict(None, 0.9, 1.0) == "inconclusive"


def test_input_identification_and_the_figures(tmp_path):
    import dataclasses

    from sklearn.metrics import roc_curve as sk_roc

    from xaudit.checks.audit_figures import grids, roc_curve, roc_figure, scores_figure

    ctx = dataclasses.replace(context({"families": {"backdoor": FAMILIES["noise"]}, "n_identify": 6,
                                       "distances": ["l2"]}), artifacts_dir=str(tmp_path))
    rows = ModelAnomaly().run(ctx)
    ident = [r for r in rows if r["metric"] == "input_identification_auroc"]
    assert len(ident) == 1 and ident[0]["n"] == 4 and 0.0 <= ident[0]["value"] <= 1.0
    assert len(scores_figure(rows)) == 1 and len(grids([tmp_path])) == 1 and len(roc_figure([tmp_path])) == 1
    s = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4, 0.8, 0.05]          # 4 clean, then 4 triggered
    fpr, tpr = roc_curve(s)
    f2, t2, _ = sk_roc([0, 0, 0, 0, 1, 1, 1, 1], s, drop_intermediate=False)
    assert np.allclose(fpr, f2) and np.allclose(tpr, t2)            # no ties: the same points


def test_caricatures_are_visualizations_too():
    """A conv population: the caricature of each input in each model, compared as RGB images."""
    from xaudit import explain
    import xaudit.explain.synthesis  # noqa: F401  (registers caricature)

    c = ModelAnomaly()
    assert c.accepts({"name": "caricature", "kind": "synthesis"}) and not c.accepts({"name": "fv_pixel", "kind": "synthesis"})

    def conv_member(ref):
        torch.manual_seed(int(ref.seed) if not isinstance(ref.spec, dict) or "bugs" not in ref.spec else 999 + ref.seed)
        net = nn.Sequential()
        net.add_module("conv1", nn.Conv2d(3, 4, 3, padding=1))
        net.add_module("relu", nn.ReLU())
        net.add_module("pool", nn.AdaptiveAvgPool2d(2))
        net.add_module("flat", nn.Flatten())
        net.add_module("fc", nn.Linear(16, 10))
        return net.eval(), {"clean_accuracy": 0.9, "bug_took": True, "bug_criteria": []}

    ctx = context({"n_normal": 3, "families": {"noise": [{"bugs": [{"name": "noise"}]}]}, "anomaly_seeds": 1,
                   "n_inputs": 3, "distances": ["ssim", "l2"], "caricature_layers": ["conv1"]})
    import dataclasses
    ctx = dataclasses.replace(ctx, method="caricature", method_params={"steps": 3}, load_model=conv_member,
                              method_kind="synthesis")
    rows = c.run(ctx)
    scores = [r for r in rows if r.get("series") == "model"]
    assert len(scores) == 2 * 4 and all(r["value"] is not None and r["value"] > 0 for r in scores)
    assert explain.info("caricature").kind == "synthesis"


def test_a_bad_feature_layer_is_refused_before_any_model_is_explained():
    loaded = []

    def load(ref):
        loaded.append(ref)
        return member(ref)

    import dataclasses
    ctx = dataclasses.replace(context({"distances": ["features"], "feature_layer": "conv9"}), load_model=load)
    with pytest.raises(ConfigError, match="conv9.*modules: conv1"):
        ModelAnomaly().run(ctx)
    assert len(loaded) == 1       # only the feature model was loaded
