"""Model cards: what a trained model is and measured proof that its bug took.

Card keys (JSON): ``spec`` (the normalized spec), ``spec_hash``, ``name``, ``seed``, ``arch``, ``world``
(the world's config), ``bugs`` (bug configs), ``clean_accuracy``, ``train_accuracy``,
``attack_success_rate`` (trigger name -> fraction of triggered non-target test images classified as
the target; for a source-class patch, on triggered test images of its source class),
``off_source_attack_success_rate`` (source-class patch name -> the same rate on test images of the other
classes carrying the patch: low when the trojan fires on its source class only),
``background_only_accuracy`` / ``object_only_accuracy`` (spurious world, else None; a criterion only
where the world's background correlates with the class, correlation != 0.5),
``flipped_indices`` (label-noise bug name -> the training indices among ``range(eval.train_size)``
whose label it flipped),
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
from xaudit.core.rng import generator as make_generator
from xaudit.core.rng import stream_seed
from xaudit.world.bugs import Evidence, criterion
from xaudit.zoo.attack import pgd_attack
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
    lines = "; ".join(f"{c['bug']}: {c['metric']} = {c['value']:.3f}, needs {c['criterion']}"
                      if isinstance(c.get("value"), (int, float)) else f"{c['bug']}: {c['criterion']}"
                      for c in failed) or card.get("bug_criterion", "unknown criterion")
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


_crit = criterion   # one bug_criteria entry (the world's and the model-level criteria use it too)


def _r(x):
    return None if x is None else round(float(x), 5)


def evaluate(model: nn.Module, spec: Spec, world=None, bugs=None) -> dict[str, Any]:
    """Measure the model against the spec's world and bugs: accuracies, attack success per trigger, and
    one criterion per planted bug (each bug's own :meth:`xaudit.world.bugs.Bug.took`), the spurious
    world's and the model-level (noise, adversarial) ones. The model need not have been trained with
    those bugs (so a model trained without its bug gets ``bug_took`` False)."""
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

    # Each bug measures its own criterion (Bug.took); trigger bugs first, then the world's, then the others.
    evidence = Evidence(world=world, predict=lambda x: predict(model, x), settings=ev, thresholds=crit,
                        test=test, test_pred=test_pred, train=trn, train_pred=trn_pred, metrics=out)
    out["attack_success_rate"] = {}
    for bug in bugs:
        if bug.is_trigger:
            criteria.extend(bug.took(evidence))

    out["background_only_accuracy"] = out["object_only_accuracy"] = None
    if "test_background_only" in world.splits:
        bg = world.sample(range(ev["test_size"]), split="test_background_only")
        out["background_only_accuracy"] = _r(_acc(predict(model, bg.images), bg.true_labels))
        if "test_object_only" in world.splits:
            ob = world.sample(range(ev["test_size"]), split="test_object_only")
            out["object_only_accuracy"] = _r(_acc(predict(model, ob.images), ob.true_labels))
        corr = getattr(world, "correlation", None)
        v = out["background_only_accuracy"]
        # a world whose background is independent of the class (correlation 0.5) plants no cue: nothing
        # to take (the spurious test's unbiased reference); its background-only accuracy is still measured
        if corr is None or corr != 0.5:
            criteria.append(_crit(f"world:{world.name}", "spurious_world", "background_only_accuracy", v,
                                  crit["background_only"], v >= crit["background_only"],
                                  f"accuracy on background-only test images >= {crit['background_only']} "
                                  f"(background/label correlation in training {corr})"))

    for bug in bugs:
        if not bug.is_trigger:
            criteria.extend(bug.took(evidence))

    tr = spec.train
    n_model = min(ev["test_size"], 2000)
    clean_sub = float((test_pred[:n_model] == test.true_labels[:n_model]).float().mean())
    floor = crit["robust_min_clean"]
    if tr["noise_sigma"] > 0:
        g = make_generator(stream_seed(spec.seed, "zoo/eval-noise"))
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
        g = make_generator(stream_seed(spec.seed, "zoo/eval-pgd"))
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
