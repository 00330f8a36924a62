"""Model cards: what a trained model is and measured proof that its bug took.

Card keys (JSON): ``spec`` (the normalized spec), ``spec_hash``, ``name``, ``seed``, ``arch``, ``world``
(the world's config), ``bugs`` (bug configs), ``clean_accuracy``, ``train_accuracy``,
``attack_success_rate`` (trigger name -> fraction of triggered non-target test images classified as
the target), ``background_only_accuracy`` / ``object_only_accuracy`` (spurious world, else None),
``bug_took`` (bool) with ``bug_criteria`` (one entry per planted bug: metric, value, threshold,
took, criterion text) and ``bug_criterion`` (the criteria as one line), training statistics
(``train_seconds``, ``train_cpu_seconds``, ``images_seen``, ``threads``, ``created``, ...),
``num_params``, ``torch_version``, ``eval_hash``, ``evaluated``; the cache adds ``weights_sha256``.

A check that is handed a model whose bug did not take calls :func:`require_bug_took`, which raises
:class:`BugDidNotTake` (a ConfigError) saying which criterion failed and how to fix it.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any

import torch
from torch import nn

from xaudit.core.errors import ConfigError
from xaudit.zoo.spec import EVAL_FORMAT, ZOO_FORMAT, Spec, load_spec

EVAL_BATCH = 1000
# Card keys that describe the training run (kept when a cached model is re-measured under new eval settings).
TRAIN_KEYS = ("train_seconds", "train_cpu_seconds", "render_seconds", "images_seen", "steps",
              "running_train_accuracy_last_epoch", "data_in_memory", "threads", "peak_rss_mb", "created",
              "torch_version")


class BugDidNotTake(ConfigError):
    """The model's planted bug did not take (its card's ``bug_took`` is false)."""

    def __init__(self, card: dict[str, Any], detail: str):
        self.card = card
        super().__init__("model", detail)


def require_bug_took(card: dict[str, Any], what: str | None = None) -> None:
    """Raise BugDidNotTake unless ``card['bug_took']``; the message names the failed criteria."""
    if card.get("bug_took"):
        return
    failed = [c for c in card.get("bug_criteria", []) if not c.get("took")]
    lines = "; ".join(f"{c['bug']}: {c['metric']} = {c['value']:.3f}, needs {c['criterion']}" for c in failed
                      if isinstance(c.get("value"), (int, float))) or card.get("bug_criterion", "unknown criterion")
    who = f"{what} refuses model" if what else "refusing model"
    raise BugDidNotTake(card, f"{who} {card.get('name')!r} (seed {card.get('seed')}, spec_hash "
                              f"{card.get('spec_hash')}): its planted bug did not take ({lines}). A test of whether "
                              "explanations reveal this bug would be meaningless. Retrain with a stronger bug "
                              "(higher poison_rate / strength, more train_size or epochs) or fix the spec.")


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch: int = EVAL_BATCH) -> torch.Tensor:
    """int64 [N] argmax predictions, in chunks (model left in its mode; call .eval() first)."""
    out = []
    for s in range(0, len(images), batch):
        x = images[s:s + batch].contiguous(memory_format=torch.channels_last)
        out.append(model(x).argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def _acc(pred: torch.Tensor, labels: torch.Tensor) -> float | None:
    return None if len(labels) == 0 else float((pred == labels).float().mean())


def _crit(bug: str, kind: str, metric: str, value, threshold, took: bool, criterion: str) -> dict[str, Any]:
    return {"bug": bug, "kind": kind, "metric": metric, "value": value, "threshold": threshold,
            "took": bool(took), "criterion": criterion}


def _r(x):
    return None if x is None else round(float(x), 5)


def evaluate(model: nn.Module, spec: Spec, world=None, bugs=None) -> dict[str, Any]:
    """Measure the model against the spec's world and bugs: accuracies, attack success per trigger, and
    one criterion per planted bug. The model need not have been trained with those bugs (so a model
    trained without its bug gets ``bug_took`` False)."""
    from xaudit.zoo.training import pgd_attack, derived_seed
    from xaudit.core.rng import generator as make_generator

    world = world if world is not None else spec.make_world()
    bugs = bugs if bugs is not None else spec.make_bugs()
    ev, crit = spec.eval, spec.eval["criteria"]
    was_training = model.training
    model.eval()
    out: dict[str, Any] = {}
    criteria: list[dict[str, Any]] = []

    test = world.sample(range(ev["test_size"]), split="test")
    test_pred = predict(model, test.images)
    out["clean_accuracy"] = _r(_acc(test_pred, test.true_labels))

    # Train accuracy on the labels the model was trained on (after label bugs and poisoning).
    trn = world.sample(range(ev["train_size"]), split="train", bugs=bugs)
    trn_pred = predict(model, trn.images)
    out["train_accuracy"] = _r(_acc(trn_pred, trn.labels))
    out["train_true_label_accuracy"] = _r(_acc(trn_pred, trn.true_labels))

    asr: dict[str, float] = {}
    for bug in bugs:
        if not bug.is_trigger:
            continue
        b = world.sample(range(ev["trigger_size"]), split="test", bugs=[bug], force=True)
        eligible = b.touched[bug.name] & (b.true_labels != bug.target_class)
        pred = predict(model, b.images[eligible])
        value = float((pred == bug.target_class).float().mean()) if len(pred) else 0.0
        asr[bug.name] = round(value, 5)
        criteria.append(_crit(bug.name, bug.kind, "attack_success_rate", round(value, 5), crit["asr"],
                              len(pred) > 0 and value >= crit["asr"],
                              f"attack success rate >= {crit['asr']} on {len(pred)} triggered non-target test images"))
    out["attack_success_rate"] = asr

    out["background_only_accuracy"] = out["object_only_accuracy"] = None
    if "test_background_only" in world.splits:
        bg = world.sample(range(ev["test_size"]), split="test_background_only")
        out["background_only_accuracy"] = _r(_acc(predict(model, bg.images), bg.true_labels))
        if "test_object_only" in world.splits:
            ob = world.sample(range(ev["test_size"]), split="test_object_only")
            out["object_only_accuracy"] = _r(_acc(predict(model, ob.images), ob.true_labels))
        corr = getattr(world, "correlation", None)
        v = out["background_only_accuracy"]
        criteria.append(_crit(f"world:{world.name}", "spurious_world", "background_only_accuracy", v,
                              crit["background_only"], v >= crit["background_only"],
                              f"accuracy on background-only test images >= {crit['background_only']} "
                              f"(background/label correlation in training {corr})"))

    for bug in bugs:
        kind = bug.kind
        if bug.is_trigger:
            continue
        if kind == "spurious_cue":
            # Images of class y carrying the cue of class y+1: does the model follow the cue?
            K = world.num_classes
            b = world.sample(range(ev["test_size"]), split="test")
            y_cue = (b.true_labels + 1) % K
            b.true_labels = y_cue
            bug.apply(world, b, world._split_seed("test"), force=True)
            pred = predict(model, b.images)
            v = float((pred == y_cue).float().mean())
            out.setdefault("cue_flip_rate", {})[bug.name] = round(v, 5)
            criteria.append(_crit(bug.name, kind, "cue_flip_rate", round(v, 5), crit["cue_flip"],
                                  v >= crit["cue_flip"], f"fraction of test images of class y carrying the cue "
                                                         f"of class y+1 classified as y+1 >= {crit['cue_flip']}"))
        elif kind == "label_noise":
            observed = float(trn.touched[bug.name].float().mean())
            tol = crit["label_noise_rel_tol"] * bug.rate
            flipped = trn.touched[bug.name]
            fit = _acc(trn_pred[flipped], trn.labels[flipped]) or 0.0
            out["flipped_label_fraction"] = round(observed, 5)
            out["flipped_train_accuracy"] = round(fit, 5)
            criteria.append(_crit(bug.name, kind, "flipped_label_fraction", round(observed, 5), bug.rate,
                                  bug.rate > 0 and abs(observed - bug.rate) <= tol,
                                  f"observed fraction of flipped training labels within "
                                  f"{crit['label_noise_rel_tol']:.0%} of rate {bug.rate}"))
            criteria.append(_crit(bug.name, kind, "flipped_train_accuracy", round(fit, 5), crit["label_noise_fit"],
                                  fit >= crit["label_noise_fit"],
                                  f"the model predicts the flipped (wrong) label on >= {crit['label_noise_fit']} of "
                                  f"the {int(flipped.sum())} mislabeled training examples among train indices "
                                  f"[0, {ev['train_size']}) (it fitted them)"))
        elif kind == "random_labels":
            v = out["train_accuracy"]
            criteria.append(_crit(bug.name, kind, "train_accuracy", v, crit["random_labels_train"],
                                  v >= crit["random_labels_train"],
                                  f"accuracy on the random training labels >= {crit['random_labels_train']} "
                                  f"(on train indices [0, {ev['train_size']}))"))
        elif kind == "missing_class":
            sel = test.true_labels == bug.cls
            v = _acc(test_pred[sel], test.true_labels[sel]) or 0.0
            out.setdefault("missing_class_recall", {})[bug.name] = round(v, 5)
            criteria.append(_crit(bug.name, kind, "missing_class_recall", round(v, 5), crit["missing_class_recall"],
                                  v <= crit["missing_class_recall"],
                                  f"test recall of the removed class {bug.cls} <= {crit['missing_class_recall']}"))
        elif kind == "shift":
            criteria.append(_crit(bug.name, kind, "none", None, None, True,
                                  "test-time shift: applied to inputs at evaluation, nothing to take in training"))
        else:
            criteria.append(_crit(bug.name, kind, "none", None, None, True, f"no criterion defined for {kind!r}"))

    tr = spec.train
    n_model = min(ev["test_size"], 2000)
    clean_sub = float((test_pred[:n_model] == test.true_labels[:n_model]).float().mean())
    floor = crit["robust_min_clean"]
    if tr["noise_sigma"] > 0:
        g = make_generator(derived_seed(spec.seed, "eval-noise"))
        x = test.images[:n_model]
        noisy = x + tr["noise_sigma"] * torch.randn(x.shape, generator=g)
        v = float((predict(model, noisy) == test.true_labels[:n_model]).float().mean())
        out["noise_accuracy"] = round(v, 5)
        ratio = crit["noise_robustness"]
        criteria.append(_crit("noise_augmentation", "model", "noise_accuracy", round(v, 5), round(ratio * clean_sub, 5),
                              v >= ratio * clean_sub and clean_sub >= floor,
                              f"accuracy on test images + N(0, {tr['noise_sigma']}^2) noise >= {ratio} x clean "
                              f"accuracy ({clean_sub:.3f}) on the same {n_model} images, and clean accuracy >= {floor}"))
    adv = tr["adversarial"]
    if adv["eps"] > 0:
        g = make_generator(derived_seed(spec.seed, "eval-pgd"))
        steps = max(10, adv["steps"])
        n_adv = min(n_model, 1000)
        clean_adv = float((test_pred[:n_adv] == test.true_labels[:n_adv]).float().mean())
        xs = []
        for s in range(0, n_adv, 250):
            with torch.enable_grad():
                xs.append(pgd_attack(model, test.images[s:s + 250].contiguous(memory_format=torch.channels_last),
                                     test.true_labels[s:s + 250], adv["eps"], steps, None, g))
        v = float((predict(model, torch.cat(xs)) == test.true_labels[:n_adv]).float().mean())
        out["adversarial_accuracy"] = round(v, 5)
        ratio = crit["adversarial_robustness"]
        criteria.append(_crit("adversarial_training", "model", "adversarial_accuracy", round(v, 5),
                              round(ratio * clean_adv, 5), v >= ratio * clean_adv and clean_adv >= floor,
                              f"accuracy under L-inf PGD (eps {adv['eps']:.5f}, {steps} steps) >= {ratio} x clean "
                              f"accuracy ({clean_adv:.3f}) on the same {n_adv} test images, and clean accuracy >= {floor}"))

    if not criteria:
        out["bug_took"] = True
        out["bug_criterion"] = "no bug planted (clean model): nothing to take"
    else:
        out["bug_took"] = all(c["took"] for c in criteria)
        out["bug_criterion"] = "all of: " + "; ".join(f"{c['bug']}: {c['criterion']}" for c in criteria)
    out["bug_criteria"] = criteria
    model.train(was_training)
    return out


def make_card(model: nn.Module, spec: Spec | str | dict, world=None, bugs=None,
              train_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model card of ``model`` measured against ``spec`` (see the module docstring for the keys)."""
    spec = load_spec(spec)
    world = world if world is not None else spec.make_world()
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    card: dict[str, Any] = {
        "name": spec.name, "spec_hash": spec.hash, "eval_hash": spec.eval_hash, "seed": spec.seed,
        "arch": spec.arch["name"], "world": spec.world_config, "bugs": spec.bugs, "spec": spec.to_dict(),
    }
    card.update(evaluate(model, spec, world=world, bugs=bugs))
    card["num_params"] = sum(p.numel() for p in model.parameters())
    card["torch_version"] = torch.__version__
    card["zoo_format"] = ZOO_FORMAT
    card["eval_format"] = EVAL_FORMAT
    card["created"] = now
    card["evaluated"] = now
    card.update(train_stats or {})   # a re-measured card keeps its training statistics and creation time
    return card
