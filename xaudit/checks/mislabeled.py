"""Debugging test, mislabeled training examples (docs/protocols.md#2-debugging-tests, Adebayo et al. 2020).

The label-noise model (zoo spec ``label-noise``: 10% of its training labels flipped to another class,
fitted) is compared with a reference model trained identically on the correct labels (spec
``label-noise-reference``, parameter ``reference_spec``). Both models' cards must describe the same
world; the label-noise model is refused unless its card says the bug took.

Examples. The card lists the training indices whose label was flipped (``flipped_indices[bug]``,
among ``range(eval.train_size)``); the check re-renders those training samples with the card's bugs
and raises an error unless the world flips exactly the listed indices. It then explains the first
``n_images`` flipped training examples (in index order; fewer if the card has fewer) and the first
``n_images`` correctly labeled ones (training label = true label), all training-split images.

Maps (one batched explanation per map set, the same explanation seed for every set, so stochastic
methods draw the same noise for both models):

- the label-noise model for each example's *training* label (the flipped label on flipped examples,
  the true label on correct ones), and the reference model for the *true* label, on all examples;
- on flipped examples, the label-noise model for the true label and for a random other class (uniform
  over the classes that are neither the true nor the flipped label, a pure function of the seed and the
  sample index);
- the ``random`` baseline's map (uniform noise, seeded): the calibration.

Measures per example (:class:`xaudit.checks.toolkit.Similarity`): SSIM of 0-1 maps, Spearman of abs
and of signed maps, HOG similarity.

Row series (besides :mod:`xaudit.checks.debugging`'s convention):

- ``buggy``, subset ``flipped``: label-noise model (flipped label) vs reference model (true label) on
  flipped examples, the paper's comparison; subset ``correct``: the same pair on correctly labeled
  examples (where both explain the true label), the baseline;
- ``calibration``, subsets ``flipped`` / ``correct``: the random map vs the reference model's map;
- ``difference`` (subset ``flipped``): mean similarity on flipped minus on correct examples, with the
  two-sample bootstrap interval (:func:`xaudit.metrics.stats.two_sample_bootstrap`: different inputs,
  each subset resampled on its own);
- ``verdict`` (subset ``flipped``), one per measure: ``pass`` (the maps reveal mislabeling) when the
  difference's CI lies below ``-margin``, ``fail`` when it lies above it, else ``inconclusive``
  (:func:`xaudit.checks.debugging.margin_verdict`, direction ``below``);
- ``separability``: the AUROC of flagging flipped among flipped + correct examples by a low
  similarity (0.5: chance; 1: every flipped example is less similar than every correct one), with a
  stratified percentile bootstrap CI (each subset resampled on its own): could a user find the
  mislabeled examples from the maps?
- ``within_model``, on flipped examples, within the label-noise model: subset ``flipped_vs_true``
  (flipped-label map vs true-label map), subset ``random_vs_true`` (a random other class's map vs the
  true-label map: how alike any two classes' maps are), and subset ``flipped_minus_random`` (their
  paired difference per example); absent ``random_vs_true`` when the world has fewer than 3 classes;
- ``failures``: inputs a method failed on, per map set.

Every row carries the examples' counts (``n_flipped``, ``n_correct``, ``n_flipped_on_card``,
``n_flipped_fitted``: explained flipped examples the label-noise model predicts with their flipped
label), the card's ``flipped_train_accuracy`` and ``flipped_label_fraction``, both models' clean
accuracies, ``margin``, ``rule``, ``ci_level``, ``n_boot`` and the similarity parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from xaudit.checks.base import CHECKS, CheckContext, ModelRef, row
from xaudit.checks.debugging import (DebuggingCheck, failure_rows, grids, margin_verdict, measures_figure,
                                     rule_text, save_panels, series_cis, summary)
from xaudit.checks.toolkit import Maps, Similarity, explain_maps, finite_or_none, make_world, post_process, predict
from xaudit.core import rng
from xaudit.core.errors import ConfigError
from xaudit.core.rng import stream_seed

METRICS = ("ssim", "spearman_abs", "spearman_signed", "hog")
DIFFERENCE = "similarity(flipped) - similarity(correct)"
RENDER_CHUNK = 1000     # training samples rendered at once while verifying the card's flipped indices
SELECTION = ("the first n_images flipped training examples and the first n_images correctly labeled ones "
             "(training label = true label), in index order among train indices [0, eval.train_size)")
NOTES = {
    ("buggy", "flipped"): "label-noise model (flipped training label) vs reference model (true label)",
    ("buggy", "correct"): "label-noise model (training label = true label) vs reference model (true label)",
    ("calibration", "flipped"): "random map vs reference model (true label), flipped examples",
    ("calibration", "correct"): "random map vs reference model (true label), correct examples",
    ("within_model", "flipped_vs_true"): "label-noise model: flipped-label map vs true-label map",
    ("within_model", "random_vs_true"): "label-noise model: random other class's map vs true-label map",
    ("within_model", "flipped_minus_random"): "flipped_vs_true minus random_vs_true, paired per example",
}


@dataclass
class Examples:
    """The explained training examples. ``flipped`` and ``correct``: :class:`xaudit.world.Batch` subsets
    (images float [k, C, H, W] in [0, 1], ``labels`` the training labels, ``true_labels``);
    ``n_on_card``: flipped indices the card lists; ``train_size``: the range they are among."""
    flipped: Any
    correct: Any
    n_on_card: int
    train_size: int
    num_classes: int


def training_bugs(card: dict[str, Any], bug: str, check: str) -> list:
    """The card's bugs as objects (the model was trained with all of them, in order); ConfigError
    naming ``<check>.bug`` unless one of them is called ``bug``."""
    from xaudit.world import bug_from_config

    objs = [bug_from_config(b) for b in card.get("bugs") or []]
    if bug not in [b.name for b in objs]:
        raise ConfigError(f"{check}.bug", f"model {card.get('name')!r} has no bug named {bug!r}; its card's bugs "
                                          f"are: {', '.join(b.name for b in objs) or 'none'}")
    return objs


def select_examples(ctx: CheckContext, card: dict[str, Any], p: dict[str, Any], check: str) -> Examples:
    """Verify the card's flipped indices against the world and pick the explained examples (see the
    module docstring). A card whose list differs from the flips the world renders is an error."""
    bug = p["bug"]
    bugs = training_bugs(card, bug, check)
    recorded = card.get("flipped_indices")
    listed = recorded.get(bug) if isinstance(recorded, dict) else None
    if listed is None:
        raise ConfigError("model", f"the card of model {card.get('name')!r} records no flipped_indices for bug "
                                   f"{bug!r} (cards of eval format < 2 lack them): re-measure the card")
    try:
        train_size = int(card["spec"]["eval"]["train_size"])
    except (KeyError, TypeError):
        raise ConfigError("model", f"the card of model {card.get('name')!r} has no spec.eval.train_size (the "
                                   "range its flipped indices are among)") from None
    w = make_world(ctx, card.get("world") or ctx.world)
    flipped_flags, clean_flags = [], []
    for start in range(0, train_size, RENDER_CHUNK):      # flags only: the full set need not stay in memory
        b = w.sample(range(start, min(train_size, start + RENDER_CHUNK)), split="train", bugs=bugs)
        flipped_flags.append(b.touched[bug] & (b.labels != b.true_labels))
        clean_flags.append(b.labels == b.true_labels)
    in_world = torch.cat(flipped_flags).nonzero().flatten().tolist()
    on_card = sorted({int(i) for i in listed})
    if on_card != in_world:
        only_card = sorted(set(on_card) - set(in_world))
        only_world = sorted(set(in_world) - set(on_card))
        raise ConfigError("model", f"the card and the world disagree on which training labels bug {bug!r} flipped "
                                   f"(model {card.get('name')!r}, train indices [0, {train_size})): the card lists "
                                   f"{len(on_card)}, the world flips {len(in_world)}; only on the card: "
                                   f"{only_card[:8]}, only in the world: {only_world[:8]}. The card was measured "
                                   "on another world or bug version: re-measure it")
    correct = torch.cat(clean_flags).nonzero().flatten()[: p["n_images"]].tolist()
    flipped = in_world[: p["n_images"]]
    for what, idx in (("flipped", flipped), ("correctly labeled", correct)):
        if len(idx) < 2:
            raise ConfigError("model", f"model {card.get('name')!r} has {len(idx)} {what} training examples among "
                                       f"train indices [0, {train_size}); the test needs at least 2")
    return Examples(flipped=w.sample(flipped, split="train", bugs=bugs),
                    correct=w.sample(correct, split="train", bugs=bugs),
                    n_on_card=len(on_card), train_size=train_size, num_classes=int(w.num_classes))


def other_class(true: torch.Tensor, flipped: torch.Tensor, n_classes: int, seed: int,
                indices: torch.Tensor) -> torch.Tensor:
    """int64 [k]: per example a class uniform over the ``n_classes - 2`` classes that are neither its
    true nor its flipped label, a pure function of (seed, sample index). Needs n_classes >= 3."""
    r = rng.randint(seed, "mislabeled/other_class", indices.cpu(), n_classes - 2)[:, 0].to(true.device)
    lo, hi = torch.minimum(true, flipped), torch.maximum(true, flipped)
    r = r + (r >= lo).long()          # skip the smaller excluded class, then the larger
    return r + (r >= hi).long()


def auroc_ci(flipped: torch.Tensor, correct: torch.Tensor, n_boot: int, level: float, seed: int
             ) -> tuple[float, float, float, int]:
    """(AUROC, ci_low, ci_high, n) of flagging flipped examples by a *low* similarity: the negated
    similarities scored by :func:`xaudit.metrics.auroc_bootstrap` (stratified percentile bootstrap, NaNs
    dropped on each side), flipped examples the positives."""
    from xaudit import metrics

    ci = metrics.auroc_bootstrap(-flipped, -correct, level=level, n_boot=n_boot, generator=rng.generator(seed))
    return float(ci.estimate), float(ci.low), float(ci.high), int(ci.n)


def _head(m: Maps, k: int) -> Maps:
    """The first ``k`` inputs of a map set (a new set: its cached ranks are its own)."""
    return Maps(target=m.target[:k], abs=m.abs[:k], signed=m.signed[:k], zero_one=m.zero_one[:k],
                failed=m.failed[:k])


def _tail(m: Maps, k: int) -> Maps:
    """The inputs after the first ``k``."""
    return Maps(target=m.target[k:], abs=m.abs[k:], signed=m.signed[k:], zero_one=m.zero_one[k:],
                failed=m.failed[k:])


@CHECKS.register("mislabeled")
class MislabeledExamples(DebuggingCheck):
    """Label-noise model vs a correct-label reference model, on flipped and on correct training examples."""
    name = "mislabeled"
    bug = "mislabeled examples"
    worlds = ("shapes",)
    model_groups = ("label-noise",)
    scorecard_metric = "ssim"
    extra_defaults = {"reference_spec": "label-noise-reference", "margin": 0.05, "require_bug_took": True,
                      "bug": "label_noise"}
    description = (
        "Mislabeled training examples: a model fitted to 10% flipped training labels (refused unless its card "
        "says the bug took; its card's flipped indices are verified against the world) and a reference model "
        "trained identically on the correct labels. On the first n_images flipped training examples, the "
        "label-noise model's map for the flipped label is compared with the reference model's map for the true "
        "label (SSIM, Spearman of abs and signed maps, HOG); on the first n_images correctly labeled training "
        "examples the same pair of models (both explaining the true label) is the baseline. Verdict per measure: "
        "pass (the maps reveal mislabeling) if CI_high(mean similarity on flipped - mean similarity on correct, "
        "two-sample bootstrap) < -margin; fail if CI_low > -margin; else inconclusive. Also reported: the AUROC "
        "of finding the flipped examples by a low similarity, a random-map calibration, and, within the "
        "label-noise model, flipped-label vs true-label maps beside a random other class's vs true-label maps.")

    # -- parameters and models
    def resolve(self, params: dict[str, Any] | None) -> dict[str, Any]:
        p = super().resolve(params)
        for key in ("reference_spec", "bug"):
            if not isinstance(p[key], str) or not p[key]:
                raise ConfigError(f"{self.name}.{key}", f"must be a non-empty name, got {p[key]!r}")
        return p

    def models(self, params: dict[str, Any], model_group: str, seed: int,
               world: dict[str, Any] | None = None) -> list[ModelRef]:
        p = self.resolve(params)
        return [ModelRef(model_group, seed), ModelRef(p["reference_spec"], seed)]

    # -- the protocol
    def run(self, ctx: CheckContext) -> list[dict[str, Any]]:
        from xaudit import explain, zoo

        p = self.resolve(ctx.params)
        noisy, card = ctx.load_model(ModelRef(ctx.model_group, ctx.seed))
        if p["require_bug_took"]:
            zoo.require_bug_took(card, what=self.name)
        reference, ref_card = ctx.load_model(ModelRef(p["reference_spec"], ctx.seed))
        if ref_card.get("bugs"):
            raise ConfigError(f"{self.name}.reference_spec", f"the reference model {p['reference_spec']!r} must be "
                                                            f"trained without bugs; its card lists {ref_card['bugs']}")
        if card.get("world") and ref_card.get("world") and card["world"] != ref_card["world"]:
            raise ConfigError(f"{self.name}.reference_spec",
                              f"the reference model was trained on world {ref_card['world']}, the label-noise "
                              f"model on {card['world']}: both must see the same training images")
        ex = select_examples(ctx, card, p, self.name)
        dev = ctx.device
        k_f, k_c = len(ex.flipped), len(ex.correct)
        x = torch.cat([ex.flipped.images, ex.correct.images]).to(dev)
        training = torch.cat([ex.flipped.labels, ex.correct.labels]).to(dev)
        true = torch.cat([ex.flipped.true_labels, ex.correct.true_labels]).to(dev)
        x_f, flip_f, true_f = x[:k_f], training[:k_f], true[:k_f]

        explainer = explain.get(ctx.method, **(ctx.method_params or {}))
        seed = stream_seed(ctx.seed, f"mislabeled/explain/{ctx.method}")
        noisy_training = explain_maps(explainer, noisy, x, training, seed)
        reference_true = explain_maps(explainer, reference, x, true, seed)
        noisy_true = explain_maps(explainer, noisy, x_f, true_f, seed)
        noisy_other = None
        if ex.num_classes >= 3:
            other = other_class(true_f, flip_f, ex.num_classes, stream_seed(ctx.seed, "mislabeled/other_class"),
                                ex.flipped.indices)
            noisy_other = explain_maps(explainer, noisy, x_f, other, seed)
        noise_seed = stream_seed(ctx.seed, "mislabeled/calibration")
        noise = explain.get("random", seed=noise_seed)(noisy, x, true, generator=rng.generator(noise_seed))
        calibration = post_process(noise, true, [None] * len(x))

        sim = Similarity(p, x.shape[-1])
        cross = sim.compare(noisy_training, reference_true, None)
        calib = sim.compare(calibration, reference_true, None)
        within = {"flipped_vs_true": sim.compare(_head(noisy_training, k_f), noisy_true, None)}
        if noisy_other is not None:
            within["random_vs_true"] = sim.compare(noisy_other, noisy_true, None)

        # per (series, subset, metric): (values [k], reasons)
        per: dict[tuple[str, str, str], tuple[torch.Tensor, list]] = {}
        for m in METRICS:
            for series, res in (("buggy", cross), ("calibration", calib)):
                v, why = res[m]
                per[(series, "flipped", m)] = (v[:k_f], why[:k_f])
                per[(series, "correct", m)] = (v[k_f:], why[k_f:])
            for subset, res in within.items():
                per[("within_model", subset, m)] = res[m]
            if "random_vs_true" in within:
                (a, wa), (b, wb) = within["flipped_vs_true"][m], within["random_vs_true"][m]
                per[("within_model", "flipped_minus_random", m)] = (a - b, [r or s for r, s in zip(wa, wb)])
        cis = series_cis({key: v for key, (v, _) in per.items()}, p, ctx.seed, self.name)

        fitted = int((predict(noisy, x_f) == flip_f).sum())
        common = self.common(p, card, ref_card, ex, k_f, k_c, fitted, sim)
        rows: list[dict[str, Any]] = []
        for (series, subset, m), (v, why) in per.items():
            rows.append(row(ctx, **summary(m, v, why, cis[(series, subset, m)]), series=series, subset=subset,
                            note=NOTES[(series, subset)], **common))

        from xaudit.metrics.stats import two_sample_bootstrap

        flipped_vals = torch.stack([per[("buggy", "flipped", m)][0] for m in METRICS])
        correct_vals = torch.stack([per[("buggy", "correct", m)][0] for m in METRICS])
        diff = two_sample_bootstrap(flipped_vals, correct_vals, level=p["ci_level"], n_boot=p["n_boot"],
                                    generator=rng.generator(stream_seed(ctx.seed, "mislabeled/difference")))
        for i, m in enumerate(METRICS):
            values = torch.cat([flipped_vals[i], correct_vals[i]])
            reasons = per[("buggy", "flipped", m)][1] + per[("buggy", "correct", m)][1]
            d = summary(m, values, reasons, (float(diff.estimate[i]), float(diff.low[i]), float(diff.high[i]),
                                              int(diff.n[i])))
            extra = {"difference": DIFFERENCE, "flipped_value": finite_or_none(cis[("buggy", "flipped", m)][0]),
                     "correct_value": finite_or_none(cis[("buggy", "correct", m)][0])}
            rows.append(row(ctx, **d, series="difference", subset="flipped", **extra, **common))
            verdict = margin_verdict(d["ci_low"], d["ci_high"], p["margin"], "below")
            rows.append(row(ctx, **d, verdict=verdict, series="verdict", subset="flipped", **extra, **common))
        for m in METRICS:
            (vf, wf), (vc, wc) = per[("buggy", "flipped", m)], per[("buggy", "correct", m)]
            auc = auroc_ci(vf, vc, p["n_boot"], p["ci_level"], stream_seed(ctx.seed, f"mislabeled/auroc/{m}"))
            rows.append(row(ctx, **summary(m, torch.cat([vf, vc]), wf + wc, auc), series="separability",
                            subset="flipped_vs_correct", measure="auroc",
                            note="AUROC of flagging flipped examples by a low similarity (0.5: chance)", **common))
        sets = [("label-noise model, training label", noisy_training), ("reference model, true label", reference_true),
                ("label-noise model, true label (flipped examples)", noisy_true)]
        if noisy_other is not None:
            sets.append(("label-noise model, other class (flipped examples)", noisy_other))
        rows += failure_rows(ctx, sets, **common)

        k = min(p["figure_images"], k_f)
        if k:
            panels = {"label-noise model, flipped label": _head(noisy_training, k),
                      "label-noise model, true label": _head(noisy_true, k),
                      "reference model, true label": _head(reference_true, k)}
            save_panels(ctx, x_f[:k], {lb: m.zero_one for lb, m in panels.items()},
                        failed={lb: [f is not None for f in m.failed] for lb, m in panels.items()},
                        indices=ex.flipped.indices[:k].numpy(), flipped_labels=flip_f[:k].cpu().numpy(),
                        true_labels=true_f[:k].cpu().numpy())
        return rows

    def common(self, p, card, ref_card, ex: Examples, k_f: int, k_c: int, fitted: int, sim: Similarity
               ) -> dict[str, Any]:
        """The columns every row of the cell carries."""
        return {"rule": rule_text(DIFFERENCE, p["margin"], "below"), "margin": float(p["margin"]),
                "ci_level": float(p["ci_level"]), "n_boot": int(p["n_boot"]), "bug": p["bug"],
                "reference_model": p["reference_spec"], "selection": SELECTION,
                "n_flipped": k_f, "n_correct": k_c, "n_flipped_on_card": ex.n_on_card,
                "n_flipped_fitted": fitted, "train_size": ex.train_size,
                "flipped_train_accuracy": card.get("flipped_train_accuracy"),
                "flipped_label_fraction": card.get("flipped_label_fraction"),
                "buggy_clean_accuracy": card.get("clean_accuracy"),
                "reference_clean_accuracy": ref_card.get("clean_accuracy"), **sim.columns()}

    # -- figures
    def figures(self, rows: Sequence[dict[str, Any]], artifacts: Sequence[Path]) -> list[tuple[str, bytes]]:
        marks = [("flipped examples", "buggy", "flipped"), ("correct examples", "buggy", "correct")]
        return (measures_figure(self.name, rows, marks, what="flipped vs correct examples per method",
                                caption="Filled dots: how similar the buggy model's maps are to the reference model's "
                                        "on training examples whose labels were flipped; open dots: on correctly "
                                        "labeled ones (95% CIs). A method reveals mislabeled examples when the flipped "
                                        "examples' maps differ more (the filled dot lower) than the correct ones'; "
                                        "its verdict letter follows its name.")
                + grids(self.name, artifacts))
