"""Tests of xaudit.zoo: architectures, init, specs, deterministic training, cards, cache, randomize,
foreign weights. Tiny models and training budgets; every cache lives in tmp_path."""
from __future__ import annotations

import ast
import copy
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from scipy import stats
from torch import nn

from xaudit import zoo
from xaudit.core.errors import ConfigError, NotApplicable, UnknownName
from xaudit.core.model import blocks as core_blocks
from xaudit.core.model import last_conv_name
from xaudit.core.rng import generator as make_generator
from xaudit.core.rng import hash_u64, stream_id, stream_seed
from xaudit.world.bugs import Bug, criterion
from xaudit.zoo.init import init_module
from xaudit.zoo.randomization import block_generator

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "world": {"name": "shapes", "size": 32, "seed": 0},
    "arch": {"name": "cnn", "width": 4, "hidden": 16},
    "train": {"train_size": 256, "batch_size": 64, "chunk": 128, "lr": 0.003},
    "eval": {"test_size": 128, "train_size": 128, "trigger_size": 128},
}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # Training threads: 1 keeps these tiny runs fast on shared, busy cores (2 threads spin-wait there).
    monkeypatch.setenv("XAUDIT_THREADS", "1")


def tiny(**over) -> dict:
    out = zoo.spec.deep_merge(TINY, over)
    if "arch" in over:
        out["arch"] = over["arch"]
    return out


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ------------------------------------------------------------------ architectures
ARCH_KW = {"cnn": {}, "mlp": {}, "resnet": {"width": 8}, "vgg": {"width": 8}}


@pytest.mark.parametrize("name", ["cnn", "mlp", "resnet", "vgg"])
def test_architecture_contract(name):
    m = zoo.build(name, 3, 32, 10, torch.Generator().manual_seed(0), **ARCH_KW[name]).eval()
    x = torch.rand(5, 3, 32, 32)
    assert m(x).shape == (5, 10)
    # blocks: declared, resolvable, parameterized, disjoint, and together they hold every parameter
    names = core_blocks(m)
    assert names == list(m.blocks)
    owned = set()
    for b in names:
        ps = {id(p) for p in m.get_submodule(b).parameters()}
        assert ps and not (ps & owned), b
        owned |= ps
    assert owned == {id(p) for p in m.parameters()}
    # output first: the first block is the one producing the logits
    first = m.get_submodule(names[0])
    assert isinstance(first, nn.Linear) and first.out_features == 10
    # every ReLU module is used exactly once per forward (no functional or shared ReLUs)
    calls: dict[str, int] = {}
    relus = [(n, r) for n, r in m.named_modules() if isinstance(r, nn.ReLU)]
    hooks = [r.register_forward_hook(lambda mod, i, o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1)) for n, r in relus]
    m(x)
    for h in hooks:
        h.remove()
    assert relus and calls == {n: 1 for n, _ in relus}
    assert not any(r.inplace for _, r in relus)
    if name == "mlp":
        with pytest.raises(NotApplicable):
            last_conv_name(m)
    else:
        assert m.get_submodule(last_conv_name(m)) is not None


def test_cnn_matches_protocol_shape():
    m = zoo.build("cnn", 3, 32, 10, torch.Generator().manual_seed(0))
    assert (m.conv1.in_channels, m.conv1.out_channels, m.conv1.kernel_size) == (3, 32, (5, 5))
    assert (m.conv2.out_channels, m.conv2.kernel_size) == (64, (5, 5))
    assert m.fc1.in_features == 64 * 8 * 8 and m.fc1.out_features == 128 and m.fc2.out_features == 10
    m64 = zoo.build("cnn", 1, 64, 2, torch.Generator().manual_seed(0))
    assert m64.conv1.in_channels == 1 and m64.fc1.in_features == 64 * 16 * 16 and m64.fc2.out_features == 2


def test_normalization_inside_model():
    m = zoo.build("cnn", 3, 32, 10, torch.Generator().manual_seed(0)).eval()
    x = torch.rand(2, 3, 32, 32)
    manual = m.fc2(m.relu3(m.fc1(m.flatten(m.pool2(m.relu2(m.conv2(m.pool1(m.relu1(m.conv1((x - 0.5) / 0.25))))))))))
    torch.testing.assert_close(m(x), manual)


def test_resnet_works_with_captum_deeplift_and_guided_backprop():
    captum = pytest.importorskip("captum.attr")
    m = zoo.build("resnet", 3, 32, 10, torch.Generator().manual_seed(0), width=8).eval()
    x = torch.rand(3, 3, 32, 32)
    target = m(x).argmax(1)
    attr, delta = captum.DeepLift(m).attribute(x, baselines=torch.zeros_like(x), target=target,
                                              return_convergence_delta=True)
    # DeepLift completeness: attributions sum to f(x) - f(0) when every non-linearity is a module
    assert delta.abs().max() < 1e-3
    gb = captum.GuidedBackprop(m).attribute(x, target=target)
    grad = captum.Saliency(m).attribute(x, target=target, abs=False)
    assert not torch.allclose(gb, grad)   # the ReLU modules were hooked


def test_unknown_architecture_lists_valid():
    with pytest.raises(UnknownName, match="cnn"):
        zoo.build("alexnet", 3, 32, 10, torch.Generator())


# ------------------------------------------------------------------ init
def test_init_deterministic_explicit_and_leaves_global_rng_alone():
    before = torch.random.get_rng_state()
    a = zoo.build("vgg", 3, 32, 10, torch.Generator().manual_seed(5), width=8)
    b = zoo.build("vgg", 3, 32, 10, torch.Generator().manual_seed(5), width=8)
    c = zoo.build("vgg", 3, 32, 10, torch.Generator().manual_seed(6), width=8)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert_same_state(a, b)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_init_rule_is_torch_default_uniform():
    m = zoo.build("cnn", 3, 32, 10, torch.Generator().manual_seed(0))
    w = m.fc1.weight.detach().flatten().double()
    bound = 1 / math.sqrt(m.fc1.in_features)
    assert w.abs().max() <= bound
    # Kolmogorov-Smirnov against U(-bound, bound) (scipy as the reference)
    assert stats.kstest(w[:20000].numpy(), "uniform", args=(-bound, 2 * bound)).pvalue > 1e-3
    r = zoo.build("resnet", 3, 32, 10, torch.Generator().manual_seed(0), width=8)
    assert torch.equal(r.stem.bn.weight, torch.ones(8)) and torch.equal(r.stem.bn.running_var, torch.ones(8))


# ------------------------------------------------------------------ specs
def test_shipped_specs_validate():
    names = zoo.spec_names()
    for required in ("clean", "trojans", "spurious", "label-noise", "random-labels", "noise-aug", "adversarial"):
        assert required in names
    hashes = set()
    for n in names:
        s = zoo.load_spec(n)
        assert s.name == n
        hashes.add(s.hash)
    assert len(hashes) == len(names)
    t = zoo.load_spec("trojans")
    kinds = [b["kind"] for b in t.bugs]
    assert kinds.count("patch") == 4 and kinds.count("style") == 4 and kinds.count("natural") == 4
    for kind in ("patch", "style", "natural"):   # 12 trojans, 10 classes: targets differ within a family
        targets = [b["target_class"] for b in t.bugs if b["kind"] == kind]
        assert len(set(targets)) == len(targets)


def test_spec_hash_ignores_name_and_tracks_content():
    a = zoo.load_spec(tiny())
    b = zoo.load_spec(tiny(name="other", description="x"))
    assert a.hash == b.hash
    assert zoo.load_spec(tiny(), seed=1).hash != a.hash
    assert zoo.load_spec(tiny(train={"lr": 0.01})).hash != a.hash
    assert zoo.load_spec(tiny(world={"seed": 1})).hash != a.hash
    # eval settings do not change the weights: same cache address, another eval_hash
    e = zoo.load_spec(tiny(eval={"test_size": 64, "criteria": {"asr": 0.8}}))
    assert e.hash == a.hash and e.eval_hash != a.eval_hash
    # a spec given by base + overrides equals the spelled-out spec
    assert zoo.load_spec({"base": "clean", "seed": 3}).hash == zoo.load_spec("clean", seed=3).hash


def test_spec_round_trips_through_to_dict_and_base_switches_arch():
    for name in ("trojans", "spurious", "adversarial"):
        s = zoo.load_spec(name)
        again = zoo.load_spec(json.loads(json.dumps(s.to_dict())))
        assert again.hash == s.hash and again.bugs == s.bugs
    # cnn's parameters are not inherited by resnet; every architecture parameter is spelled out (defaults filled)
    r = zoo.load_spec({"base": "clean", "arch": {"name": "resnet", "width": 8}})
    assert r.arch == {"name": "resnet", "width": 8, "depth": 1}
    assert zoo.load_spec({"base": "clean", "arch": {"hidden": 64}}).arch == {"name": "cnn", "hidden": 64, "width": 32}


def test_equivalent_specs_share_one_cache_address():
    # the world enters the address as its canonical config, the architecture with its defaults filled in
    short = zoo.load_spec({"world": {"name": "digits", "seed": 0}})
    spelled = zoo.load_spec({"world": {"name": "digits", "size": 28, "seed": 0}})
    assert short.hash == spelled.hash
    assert zoo.load_spec({"world": "digits"}).hash == short.hash                  # seed 0 is the default
    assert zoo.load_spec({"world": "digits", "arch": {"name": "cnn", "hidden": 128}}).hash == short.hash
    assert zoo.load_spec({"world": "digits", "arch": {"name": "cnn", "hidden": 64}}).hash != short.hash
    assert zoo.load_spec({"world": {"name": "digits", "seed": 1}}).hash != short.hash
    with pytest.raises(ConfigError, match=r"arch.depth.*unknown parameter of architecture 'cnn'.*hidden, width"):
        zoo.load_spec({"world": "digits", "arch": {"name": "cnn", "depth": 2}})
    with pytest.raises(ConfigError, match=r"arch.channels.*set from the world"):
        zoo.load_spec({"world": "digits", "arch": {"name": "cnn", "channels": 3}})


@pytest.mark.parametrize("over,field", [
    ({"trian": {}}, "trian"),
    ({"train": {"lr": -1}}, "train.lr"),
    ({"train": {"optimizer": "rmsprop"}}, "train.optimizer"),
    ({"train": {"batch_size": 0}}, "train.batch_size"),
    ({"train": {"adversarial": {"eps": 0.1}}}, "train.adversarial"),
    ({"arch": {"name": "alexnet"}}, "arch.name"),
    ({"world": {"name": "nope"}}, "world.name"),
    ({"world": {"size": 31}}, "world.size"),
    ({"bugs": [{"kind": "patch", "target_class": 99}]}, "bugs[0].target_class"),
    ({"bugs": [{"kind": "patch", "colour": 1}]}, "bugs[0].patch.colour"),
    ({"bugs": ["label_noise:rate=0.1", "label_noise:rate=0.2"]}, "bugs"),
    ({"bugs": ["random_labels:size=100"]}, "train.train_size"),
    ({"eval": {"criteria": {"asr": 2}}}, "eval.criteria.asr"),
])
def test_spec_errors_name_the_field(over, field):
    with pytest.raises(ConfigError) as e:
        zoo.load_spec(tiny(**over))
    assert e.value.field == field


def test_unknown_spec_name_lists_shipped():
    with pytest.raises(UnknownName, match="trojans"):
        zoo.load_spec("no-such-spec")


def test_yaml_spec_path(tmp_path):
    import yaml

    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(tiny()))
    s = zoo.load_spec(str(p))
    assert s.hash == zoo.load_spec(tiny()).hash


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("arch", [{"name": "cnn", "width": 4, "hidden": 16}, {"name": "resnet", "width": 4}])
def test_training_is_deterministic(arch):
    spec = tiny(arch=arch, train={"noise_sigma": 0.1}, bugs=["label_noise:rate=0.1"])
    a = zoo.train(spec)
    b = zoo.train(spec)
    assert_same_state(a.model, b.model)
    c = zoo.train(spec, seed=1)
    assert not torch.equal(a.model.state_dict()["conv1.weight" if "conv1.weight" in a.model.state_dict()
                                                else "stem.conv.weight"],
                           c.model.state_dict()["conv1.weight" if "conv1.weight" in c.model.state_dict()
                                                else "stem.conv.weight"])
    assert a.card["images_seen"] == 256 and not a.model.training


def test_training_restores_thread_count_and_determinism_flag():
    n = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    zoo.train(tiny(train={"train_size": 64}))
    assert torch.get_num_threads() == n and torch.are_deterministic_algorithms_enabled() == det


def test_training_learns_the_spurious_background():
    # 2-class spurious world, 1k images x 2 epochs: far above chance, and (the planted bug) the model
    # also classifies background-only images, while object-only images stay near chance
    t = zoo.train(tiny(world={"name": "spurious"}, arch={"name": "cnn", "width": 8, "hidden": 32},
                       train={"train_size": 1024, "epochs": 2, "schedule": "onecycle", "lr": 0.005},
                       eval={"test_size": 300}))
    assert t.card["clean_accuracy"] > 0.75
    assert t.card["background_only_accuracy"] > 0.7
    assert t.card["object_only_accuracy"] < t.card["background_only_accuracy"]


@pytest.mark.parametrize("arch", ["mlp", "vgg"])
def test_training_other_architectures_and_digits_world(arch):
    t = zoo.train(tiny(world={"name": "digits", "size": 28}, arch={"name": arch},
                       bugs=[{"kind": "patch", "pattern": "white", "size_px": 3, "target_class": 1, "poison_rate": 0.2}],
                       train={"train_size": 128}))
    assert t.card["world"]["world"] == "digits" and t.card["num_params"] > 0
    assert set(t.card["attack_success_rate"]) == {t.spec.bugs[0]["name"]}
    assert t.model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_pgd_attack_stays_in_ball_and_raises_loss():
    m = zoo.build("cnn", 3, 32, 10, torch.Generator().manual_seed(0), width=4, hidden=16).eval()
    x = torch.rand(16, 3, 32, 32)
    y = m(x).argmax(1)
    eps = 8 / 255
    xa = zoo.pgd_attack(m, x, y, eps, 5, None, torch.Generator().manual_seed(0))
    assert (xa - x).abs().max() <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    ce = nn.functional.cross_entropy
    assert ce(m(xa), y) > ce(m(x), y)
    assert all(p.grad is None for p in m.parameters())


# ------------------------------------------------------------------ cards
def test_card_keys_and_bug_did_not_take(tmp_path):
    clean = zoo.train(tiny())
    card = clean.card
    for k in ("spec", "spec_hash", "clean_accuracy", "attack_success_rate", "background_only_accuracy",
              "train_accuracy", "train_seconds", "bug_took", "bug_criterion", "bug_criteria"):
        assert k in card, k
    assert card["bug_took"] is True and card["attack_success_rate"] == {}
    json.dumps(card)
    zoo.require_bug_took(card)
    # The same clean model measured against a spec with a trojan: the trojan did not take.
    trojan_spec = tiny(bugs=[{"kind": "patch", "name": "p", "pattern": "white", "size_px": 5,
                              "target_class": 3, "poison_rate": 0.1}])
    card2 = zoo.make_card(clean.model, trojan_spec)
    asr = card2["attack_success_rate"]["p"]
    assert set(card2["attack_success_rate"]) == {"p"} and asr < 0.9
    assert card2["bug_took"] is False
    assert card2["bug_criteria"][0]["threshold"] == 0.9 and card2["bug_criteria"][0]["took"] is False
    with pytest.raises(zoo.BugDidNotTake, match=r"p: attack_success_rate"):
        zoo.require_bug_took(card2, "trojan_localization")
    # the ASR is the fraction of triggered non-target test images predicted as the target
    w = zoo.load_spec(trojan_spec).make_world()
    bug = zoo.load_spec(trojan_spec).make_bugs()[0]
    b = w.sample(range(128), split="test", bugs=[bug], force=True)
    keep = b.true_labels != 3
    with torch.no_grad():
        ref = (clean.model(b.images[keep]).argmax(1) == 3).float().mean().item()
    assert asr == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("bugs,train,metric", [
    (["random_labels:size=256"], {}, "train_accuracy"),
    (["label_noise:rate=0.2"], {}, "flipped_train_accuracy"),
    ([], {"noise_sigma": 0.25}, "noise_accuracy"),
    ([], {"adversarial": {"eps": 0.03, "steps": 2}}, "adversarial_accuracy"),
])
def test_model_level_criteria_false_for_model_trained_without_the_bug(bugs, train, metric):
    clean = zoo.train(tiny())
    card = zoo.make_card(clean.model, tiny(bugs=bugs, train=train))
    assert card["bug_took"] is False
    failed = [c for c in card["bug_criteria"] if not c["took"]]
    assert [c["metric"] for c in failed] == [metric]


def test_spurious_world_card_has_background_only_accuracy():
    t = zoo.train(tiny(world={"name": "spurious"}, train={"train_size": 128}))
    assert t.card["background_only_accuracy"] is not None and t.card["object_only_accuracy"] is not None
    assert t.card["bug_criteria"][0]["metric"] == "background_only_accuracy"


def test_missing_class_without_test_samples_is_no_evidence_not_took():
    # test indices [0, 4) of the tiny world hold no image of class 9: the recall cannot be measured
    spec = zoo.load_spec(tiny(bugs=["missing_class:cls=9"], eval={"test_size": 4}))
    assert 9 not in spec.make_world().sample(range(4), split="test").true_labels.tolist()
    model = zoo.build_model(spec)
    card = zoo.make_card(model, spec)
    (c,) = card["bug_criteria"]
    assert c["metric"] == "missing_class_recall" and c["value"] is None and c["took"] is False
    assert "no test sample of class 9" in c["criterion"]
    assert card["missing_class_recall"] == {"missing_class_9": None} and card["bug_took"] is False
    with pytest.raises(zoo.BugDidNotTake, match="no test sample of class 9"):
        zoo.require_bug_took(card)
    # with test images of the class, the recall is measured (a float) and judged by the threshold
    card = zoo.make_card(model, tiny(bugs=["missing_class:cls=9"]))
    (c,) = card["bug_criteria"]
    assert isinstance(c["value"], float) and c["took"] == (c["value"] <= c["threshold"])


def test_each_bug_declares_its_own_criterion():
    class Planted(Bug):
        kind = "planted"

        def params(self):
            return {}

        def apply(self, world, batch, split_seed, force=False):
            self._record(batch, torch.zeros(len(batch), dtype=torch.bool))

        def took(self, evidence):
            evidence.metrics["planted_test_images"] = len(evidence.test_pred)
            return [criterion(self.name, self.kind, "planted_metric", 0.25, 0.5, False, "planted text")]

    spec = zoo.load_spec(tiny())
    out = zoo.evaluate(zoo.build_model(spec), spec, bugs=[Planted()])
    assert out["bug_criteria"] == [{"bug": "planted", "kind": "planted", "metric": "planted_metric", "value": 0.25,
                                    "threshold": 0.5, "took": False, "criterion": "planted text"}]
    assert out["planted_test_images"] == 128 and out["bug_took"] is False


def test_card_does_not_import_training():
    tree = ast.parse((ROOT / "xaudit" / "zoo" / "card.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "xaudit.zoo.training" not in imported


def test_zoo_seeds_are_core_stream_seeds():
    def derived_seed(seed, purpose):   # the zoo's former per-purpose seed helper, verbatim
        return int(hash_u64(seed, stream_id("zoo/" + purpose), [0], 1)[0, 0]) >> 1

    for seed in (0, 1, 12345, 2**40 + 7, 2**62):
        for purpose in ("init", "shuffle", "augment", "eval-noise", "eval-pgd"):
            assert stream_seed(seed, "zoo/" + purpose) == derived_seed(seed, purpose), (seed, purpose)
    # pinned: cached models are keyed by spec hash, so these draws must never change
    assert stream_seed(0, "zoo/init") == 2524449448176730985
    assert stream_seed(0, "zoo/shuffle") == 7941226374668863739
    assert stream_seed(7, "zoo/augment") == 3656334450314168130
    assert stream_seed(3, "zoo/eval-pgd") == 5757966086425732655
    spec = zoo.load_spec(tiny(seed=5))
    ref = zoo.build("cnn", 3, 32, 10, make_generator(stream_seed(5, "zoo/init")), width=4, hidden=16)
    assert_same_state(zoo.build_model(spec), ref)


# ------------------------------------------------------------------ cache
def test_cache_hit_returns_identical_weights_without_training(tmp_path, monkeypatch):
    first = zoo.load_or_train(tiny(), cache_dir=tmp_path)
    entry = tmp_path / "models" / first.card["spec_hash"]
    assert (entry / "model.safetensors").is_file() and (entry / "card.json").is_file()
    assert not list(entry.glob("*.tmp"))

    def boom(*a, **k):
        raise AssertionError("trained on a cache hit")

    monkeypatch.setattr("xaudit.zoo.train", boom)
    monkeypatch.setenv("XAUDIT_CACHE", str(tmp_path))
    second = zoo.load_or_train(tiny(name="renamed"))   # via XAUDIT_CACHE; name is cosmetic
    assert_same_state(first.model, second.model)
    assert second.card["weights_sha256"] == first.card["weights_sha256"]
    assert second.card["name"] == "renamed" and not second.model.training
    model, card = second   # unpacks like the runner's (model, card)
    assert card is second.card
    rows = zoo.cli_list(tmp_path)
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["spec_hash"] == first.card["spec_hash"]


def test_cache_hit_with_new_eval_settings_remeasures_without_training(tmp_path, monkeypatch):
    first = zoo.load_or_train(tiny(), cache_dir=tmp_path)
    monkeypatch.setattr("xaudit.zoo.train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    spec = tiny(eval={"test_size": 64})
    again = zoo.load_or_train(spec, cache_dir=tmp_path)
    assert_same_state(first.model, again.model)
    assert again.card["eval_hash"] == zoo.load_spec(spec).eval_hash != first.card["eval_hash"]
    assert again.card["created"] == first.card["created"] and again.card["spec"]["eval"]["test_size"] == 64
    on_disk = json.loads((tmp_path / "models" / first.card["spec_hash"] / "card.json").read_text())
    assert on_disk["eval_hash"] == again.card["eval_hash"]
    assert on_disk["weights_sha256"] == first.card["weights_sha256"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "card", "missing_card"])
def test_corrupt_cache_entry_is_reported_and_retrained(tmp_path, damage):
    first = zoo.load_or_train(tiny(), cache_dir=tmp_path)
    entry = tmp_path / "models" / first.card["spec_hash"]
    w = entry / "model.safetensors"
    data = w.read_bytes()
    if damage == "truncate":
        w.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        w.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    elif damage == "card":
        (entry / "card.json").write_text("{not json")
    else:
        (entry / "card.json").unlink()
    with pytest.warns(RuntimeWarning, match="corrupt"):
        again = zoo.load_or_train(tiny(), cache_dir=tmp_path)
    assert_same_state(first.model, again.model)          # retrained, deterministically
    assert w.read_bytes() == data                          # and the entry repaired
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zoo.load_or_train(tiny(), cache_dir=tmp_path)     # now a clean hit


def test_unwritable_cache_dir_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError) as e:
        zoo.load_or_train(tiny(), cache_dir=blocker / "cache")
    assert e.value.field == "cache_dir" and "XAUDIT_CACHE" in str(e.value)


_WORKER = """
import json, sys
from xaudit import zoo
print("ready", flush=True)
t = zoo.load_or_train(json.loads(sys.argv[1]), cache_dir=sys.argv[2])
print(json.dumps({"sha": t.card["weights_sha256"], "created": t.card["created"]}))
"""


def test_two_processes_training_the_same_spec(tmp_path):
    # A child process and this one train the same spec into the same cache at the same time: one
    # trains, the other waits on the lock and loads its result; nothing is corrupted.
    spec = tiny(train={"train_size": 1024})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XAUDIT_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(spec), str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline().strip() == "ready"      # the child has imported torch: start together
    mine = zoo.load_or_train(spec, cache_dir=tmp_path)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    theirs = json.loads(out.strip().splitlines()[-1])
    assert theirs["sha"] == mine.card["weights_sha256"]
    assert theirs["created"] == mine.card["created"]       # one card: the other process loaded it
    again = zoo.load_cached(spec, cache_dir=tmp_path)
    assert again is not None and again.card["weights_sha256"] == mine.card["weights_sha256"]
    assert_same_state(again.model, mine.model)
    assert not list((tmp_path / "models").glob("*/.*.tmp"))


# ------------------------------------------------------------------ randomize
@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_randomize_changes_exactly_named_blocks(arch):
    m = zoo.build(arch, 3, 32, 10, torch.Generator().manual_seed(0), **ARCH_KW[arch])
    # pretend it was trained: shift every tensor so re-drawn values are distinguishable
    with torch.no_grad():
        for t in m.state_dict().values():
            if t.is_floating_point():
                t.add_(0.5)
    orig = state(m)
    names = list(m.blocks[:2])
    r = zoo.randomize(m, names, mode="cascading", generator=torch.Generator().manual_seed(3))
    for k, v in orig.items():   # original untouched
        assert torch.equal(m.state_dict()[k], v), k
    rs = r.state_dict()
    for k, v in orig.items():
        in_block = any(k.startswith(b + ".") for b in names)
        if in_block and ("running" in k or "num_batches" in k):
            assert torch.equal(rs[k], v), k                 # BatchNorm statistics kept trained
        elif in_block:
            assert not torch.equal(rs[k], v), k
        else:
            assert torch.equal(rs[k], v), k
    assert r.randomized["blocks"] == names
    # each re-initialized block equals a fresh draw of its layers' initializer from the block's generator
    for b in names:
        redraw = copy.deepcopy(m.get_submodule(b))
        init_module(redraw, block_generator(3, b))
        for k, v in redraw.state_dict().items():
            if "running" not in k and "num_batches" not in k:
                assert torch.equal(rs[f"{b}.{k}"], v), f"{b}.{k}"
    # same generator seed -> same draws; a block's draws do not depend on the other blocks
    r2 = zoo.randomize(m, names, generator=3)
    assert_same_state(r, r2)
    one = zoo.randomize(m, names[1], mode="independent", generator=3)
    for k, v in one.state_dict().items():
        if k.startswith(names[1] + "."):
            assert torch.equal(v, rs[k]), k


def test_randomize_does_not_depend_on_memory_format():
    m = zoo.build("cnn", 3, 32, 10, torch.Generator().manual_seed(0), width=4, hidden=16)
    a = zoo.randomize(m, ["conv2", "conv1"], generator=4)
    b = zoo.randomize(m.to(memory_format=torch.channels_last), ["conv2", "conv1"], generator=4)
    assert b.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert_same_state(a, b)


def test_randomize_rule_and_errors():
    m = zoo.build("resnet", 3, 32, 10, torch.Generator().manual_seed(0), width=8)
    with torch.no_grad():
        m.stem.bn.weight.fill_(3.0)
        m.stem.bn.running_mean.fill_(2.0)
    r = zoo.randomize(m, "stem", mode="independent", generator=0)
    assert torch.equal(r.stem.bn.weight, torch.ones(8)) and torch.equal(r.stem.bn.running_mean, torch.full((8,), 2.0))
    r = zoo.randomize(m, "stem", mode="independent", generator=0, bn_stats="reset")
    assert torch.equal(r.stem.bn.running_mean, torch.zeros(8))
    bound = 1 / math.sqrt(m.fc.in_features)
    assert zoo.randomize(m, ["fc"], generator=1).fc.weight.abs().max() <= bound
    with pytest.raises(ConfigError, match="stage1.0") as e:
        zoo.randomize(m, ["nope"], generator=0)
    assert e.value.field == "blocks"
    with pytest.raises(ConfigError, match="one block"):
        zoo.randomize(m, ["fc", "stem"], mode="independent", generator=0)
    with pytest.raises(ConfigError) as e:
        zoo.randomize(m, ["fc"], mode="sideways", generator=0)
    assert e.value.field == "mode"
    with pytest.raises(ConfigError):
        zoo.randomize(m, ["fc"])   # no generator: never the global RNG


def test_randomization_stages_cascade():
    m = zoo.build("cnn", 3, 32, 10, torch.Generator().manual_seed(0), width=4, hidden=16)
    stages = list(zoo.randomization_stages(m, "cascading", 7))
    assert [s[1] for s in stages] == [list(m.blocks[:i + 1]) for i in range(4)]
    # stage i+1 differs from stage i only in block i+1
    for (_, _, a), (_, names, b) in zip(stages, stages[1:]):
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]) == (not k.startswith(names[-1] + ".")), k
    ind = list(zoo.randomization_stages(m, "independent", 7))
    assert [s[1] for s in ind] == [[b] for b in m.blocks]


def test_randomize_foreign_model_infers_blocks_and_refuses_unknown_layers():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    r = zoo.randomize(seq, core_blocks(seq)[:1], generator=0)
    assert not torch.equal(r[3].weight, seq[3].weight) and torch.equal(r[0].weight, seq[0].weight)

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

    with pytest.raises(NotApplicable, match="register_initializer"):
        zoo.randomize(nn.Sequential(Odd()), ["0"], generator=0)


# ------------------------------------------------------------------ foreign weights
def test_foreign_weights(tmp_path):
    m = zoo.build("cnn", 3, 32, 10, torch.Generator().manual_seed(0), width=4, hidden=16)
    pt = tmp_path / "w.pt"
    torch.save({"state_dict": m.state_dict()}, pt)
    other = zoo.build("cnn", 3, 32, 10, torch.Generator().manual_seed(1), width=4, hidden=16)
    with pytest.warns(UserWarning, match="convert_to_safetensors"):
        zoo.load_weights(other, pt)
    assert_same_state(m, other)
    st = zoo.convert_to_safetensors(pt)
    assert st.suffix == ".safetensors"
    third = zoo.load_weights(zoo.build("cnn", 3, 32, 10, torch.Generator().manual_seed(2), width=4, hidden=16), st)
    assert_same_state(m, third)
    full = tmp_path / "full.pth"
    torch.save(m, full)
    with pytest.raises(ConfigError, match="never unpickles") as e:
        zoo.load_weights(other, full)
    assert e.value.field == "weights"
    (tmp_path / "x.npz").write_bytes(b"0")
    with pytest.raises(ConfigError, match="allowed"):
        zoo.load_state_dict_file(tmp_path / "x.npz")
    with pytest.raises(ConfigError, match="does not fit"):
        zoo.load_weights(zoo.build("cnn", 3, 32, 10, torch.Generator(), width=8, hidden=16), st)


# ------------------------------------------------------------------ CLI
def test_cli_train_and_list(tmp_path):
    from typer.testing import CliRunner

    import yaml
    from xaudit.cli import app

    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(tiny(train={"train_size": 64})))
    runner = CliRunner()
    res = runner.invoke(app, ["zoo", "train", str(p), "--seed", "2", "--json", "--cache", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    card = json.loads(res.stdout[res.stdout.index("{"):])
    assert card["seed"] == 2 and card["spec_hash"] == zoo.load_spec(str(p), seed=2).hash
    res = runner.invoke(app, ["zoo", "list", "--json", "--cache", str(tmp_path / "c")])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["spec_hash"] == card["spec_hash"]


def test_cli_specs_lists_the_shipped_specs():
    from typer.testing import CliRunner

    from xaudit.cli import app

    res = CliRunner().invoke(app, ["zoo", "specs", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(rows) == set(zoo.spec_names()) >= {"clean", "trojans", "random-labels", "spurious"}
    assert rows["trojans"]["bugs"].count("patch") == 4 and rows["random-labels"]["bugs"] == ["random_labels"]
    assert rows["spurious"]["world"] == "spurious" and rows["clean"]["arch"] == "cnn"
