"""Debugging test, spurious correlation (docs/protocols.md#2-debugging-tests, Adebayo et al. 2020).

The buggy model (the cell's group, e.g. zoo spec ``spurious``) was trained on the ``spurious`` world,
where each class's object always sits on its own background family, and classifies background-only
images far above chance (its card's ``background_only_accuracy``; the model is refused unless its bug
took). The reference (``reference_spec``, default ``spurious-unbiased``) is the same recipe trained on
the same world config except ``correlation = reference_correlation`` (0.5: background independent of
the class), so it can classify only by the object; it is refused unless it does so about as well as
the buggy model classifies by the background (``min_reference_accuracy`` on its card's
``clean_accuracy``, its own unbiased test split).

Both models explain **their own predicted class** (argmax) on the same first ``n_images`` test images
of the cell's world. Per image and model (maps post-processed as in :mod:`xaudit.core.maps`):

- ``background_mass``: the share of the *abs* map's mass on the background (pixels off the object
  mask), in [0, 1]. An abs map that sums to 0 (the ``blank`` baseline, a constant raw map) expresses
  no preference and counts as uniform: its value is the background's area fraction.
- ``ssim_gt1``: SSIM (:func:`xaudit.metrics.ssim`, ``ssim_data_range``) of the *0-1* map with GT-1 =
  1 on the background, 0 on the object.
- ``ssim_gt2``: SSIM of the 0-1 map with GT-2 = GT-1 times the same model's 0-1 map (same method, same
  target class) of the same image's own background without the object
  (:meth:`xaudit.world.shapes.ShapesWorld.background`), divided by its maximum (its minimum is 0, on
  the object), so in [0, 1]. Where that product is 0 everywhere (the background-only map is 0 on
  the whole background, e.g. ``blank``) or the background-only map failed, GT-2 is undefined and the
  image's ``ssim_gt2`` is NaN with that reason (excluded, counted in ``n_excluded``).
- calibration: the three measures of the ``random`` baseline's map (uniform noise, seeded by
  ``stream_seed(seed, "spurious/calibration")``); its ``ssim_gt2`` is against the buggy model's GT-2.

Rows (the convention of :mod:`xaudit.checks.debugging`): ``series`` buggy / reference / calibration
per measure, ``difference`` (buggy minus reference, paired per image) per measure, one ``verdict``
row on ``background_mass``: ``pass`` (the method reveals the bug) when the CI of the paired
difference lies above ``margin``, ``fail`` when it lies below, ``inconclusive`` otherwise. A method
whose map ignores the model (``edge``, ``random``: one seed for both models) gives a difference of
exactly 0 and fails.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from xaudit.checks.base import CHECKS, CheckContext, ModelRef, row
from xaudit.checks.debugging import (DebuggingCheck, failure_rows, margin_verdict, rule_text, save_panels,
                                     series_cis, summary)
from xaudit.checks.toolkit import Maps, explain_maps, load_batch, make_world, post_process, predict, stream_seed
from xaudit.core import rng
from xaudit.core.errors import ConfigError, check_range

MEASURES = ("background_mass", "ssim_gt1", "ssim_gt2")
VERDICT_METRIC = "background_mass"
DIFFERENCE = "background_mass, buggy - reference model, paired per image"
NOTES = {
    "background_mass": "share of the abs map's mass off the object mask; an all-zero abs map counts as "
                       "uniform (the background's area fraction)",
    "ssim_gt1": "SSIM of the 0-1 map with GT-1 (1 on the background, 0 on the object)",
    "ssim_gt2": "SSIM of the 0-1 map with GT-2 (GT-1 x the same model's 0-1 map of the image's own background "
                "without the object, divided by its max); NaN where that product is 0 everywhere",
}
SERIES_NOTES = {
    "buggy": "the buggy model's maps, explaining its own prediction",
    "reference": "the reference model's maps (trained with the background independent of the class), "
                 "explaining its own prediction",
    "calibration": "the `random` baseline's map (uniform noise); ssim_gt2 against the buggy model's GT-2",
    "difference": "buggy minus reference, paired per image",
    "verdict": "the paired difference of background_mass against the margin",
}
GT2_ZERO = "GT-2 undefined: the background-only map is 0 on the whole background"


@CHECKS.register("spurious")
class SpuriousCorrelation(DebuggingCheck):
    """Buggy (background-cued) model vs unbiased reference: does the map move onto the background?"""
    name = "spurious"
    bug = "spurious cue"
    worlds = ("spurious",)
    scorecard_metric = VERDICT_METRIC
    extra_defaults = {
        "reference_spec": "spurious-unbiased",   # the reference recipe (trained on the cell's world config)
        "reference_correlation": 0.5,           # ... with this object/background correlation: no cue
        # background mass the buggy maps must add over the reference's. The objects cover ~8% of the
        # image here (radius 18-28% of the side), so a uniform map already puts 0.92 on the background
        # and the measure has little room: an unbiased CNN's saliency map put 0.83 there (measured), a map
        # that ignores the object entirely 1.0. 0.1 would ask the reference to put twice the object's
        # area share on it; 0.05 asks for a shift of more than half the object's area (0.1 was the first
        # choice; the measured verdicts at both are in docs/protocols.md#2-debugging-tests)
        "margin": 0.05,
        "require_bug_took": True,               # refuse a buggy model whose card says the cue was not learned
        # the reference must classify by the object (its own unbiased test split) as reliably as the buggy
        # model must classify by the background (the bug criterion, 0.9); below it a difference in the maps
        # could come from a worse classifier rather than from the bug (2-class chance is 0.5)
        "min_reference_accuracy": 0.9,
    }
    description = (
        "Spurious correlation (Adebayo et al. 2020): the buggy model was trained with each class's object on "
        "its own background family and classifies background-only images (card: background_only_accuracy, "
        "refused unless its bug took); the reference is the same recipe trained on the same world with the "
        "background independent of the class (reference_correlation 0.5) and must reach min_reference_accuracy "
        "on its own test split. Each model explains its own prediction on the same test images. Measures per "
        "image: background_mass (share of the abs map's mass off the object; an all-zero map counts as "
        "uniform), SSIM of the 0-1 map with GT-1 (the background mask) and with GT-2 (GT-1 weighted by the "
        "model's map of the image's own background without the object), and a random-map calibration. "
        "Verdict on background_mass: pass (reveals the bug) if the CI of the paired difference buggy - "
        "reference is above margin, fail if below, else inconclusive; maps that ignore the model (edge, "
        "random) give exactly 0 and fail.")

    # -- parameters
    def figures(self, rows, artifacts):
        from xaudit.checks.debugging import grids, measures_figure

        return (measures_figure(self.name, rows, caption=(
            "Filled dots: the model trained with the spurious background cue; open dots: the same recipe trained "
            "without it (95% CIs; grey band: a random map). On background_mass, the share of the map on the "
            "background, a method reveals the cue when the filled dot lies clearly above the open one; the letter "
            "after each method's name is its verdict."))
            + grids(self.name, artifacts, caption="One row per method for one input: the cued model's map, the "
                                                  "unbiased model's, and the ground truths. A method that reveals "
                                                  "the cue lights up the background in the cued model's map."))

    def resolve(self, params: dict[str, Any] | None) -> dict[str, Any]:
        p = super().resolve(params)
        name = self.name
        spec = p["reference_spec"]
        if not ((isinstance(spec, str) and spec) or isinstance(spec, Mapping)):
            raise ConfigError(f"{name}.reference_spec",
                              f"must be a zoo spec name or path or a spec mapping, got {spec!r}")
        check_range(f"{name}.reference_correlation", p["reference_correlation"], 0.0, 1.0)
        if isinstance(p["reference_correlation"], bool):
            raise ConfigError(f"{name}.reference_correlation", "must be a number in [0, 1], got a boolean")
        check_range(f"{name}.min_reference_accuracy", p["min_reference_accuracy"], 0.0, 1.0)
        return p

    def reference_ref(self, p: dict[str, Any], seed: int, world: dict[str, Any] | None) -> ModelRef:
        """The reference model: ``reference_spec`` at ``seed`` on the cell's world config with
        ``correlation`` replaced by ``reference_correlation``."""
        if not (isinstance(world, Mapping) and world.get("world")):
            raise ConfigError("world", f"{self.name} trains its reference on the cell's world config, got {world!r}")
        return ModelRef(p["reference_spec"], seed, world={**world, "correlation": float(p["reference_correlation"])})

    def models(self, params: dict[str, Any], model_group: str, seed: int,
               world: dict[str, Any] | None = None) -> list[ModelRef]:
        p = self.resolve(params)
        return [ModelRef(model_group, seed), self.reference_ref(p, seed, world)]

    # -- the protocol
    def run(self, ctx: CheckContext) -> list[dict[str, Any]]:
        from xaudit import explain, zoo
        from xaudit.world.shapes import SpuriousWorld

        p = self.resolve(ctx.params)
        world = make_world(ctx)
        if not isinstance(world, SpuriousWorld):
            raise ConfigError("world", f"{self.name} needs a spurious world (object masks, a class/background "
                                       f"correlation), got {ctx.world.get('world')!r}")
        model, card = ctx.load_model(ModelRef(ctx.model_group, ctx.seed))
        if p["require_bug_took"]:
            zoo.require_bug_took(card, what=self.name)
        ref = self.reference_ref(p, ctx.seed, ctx.world)
        ref_model, ref_card = ctx.load_model(ref)       # never require_bug_took: it plants no bug

        batch = load_batch(ctx, p["n_images"], "test")
        x = batch.images.to(ctx.device)
        x_bg = world.background(batch.indices, "test").to(ctx.device)
        on_bg = ~batch.object_mask                                   # bool [N, H, W]
        labels = batch.true_labels.to(ctx.device)
        target = predict(model, x)
        ref_target = predict(ref_model, x)
        accuracy = float((target == labels).double().mean())
        ref_accuracy = float((ref_target == labels).double().mean())
        # the reference's own unbiased test split measures classifying by the object; without a card value,
        # these images (where the background also predicts the class) are the fallback
        ref_clean = ref_card.get("clean_accuracy")
        from_card = isinstance(ref_clean, (int, float)) and not isinstance(ref_clean, bool)
        judged = float(ref_clean) if from_card else ref_accuracy
        if judged < p["min_reference_accuracy"]:
            raise ConfigError(f"{self.name}.min_reference_accuracy",
                              f"the reference model {ref.group!r} (seed {ctx.seed}, correlation "
                              f"{p['reference_correlation']:g}) has accuracy {judged:.3f} "
                              f"({'its card clean_accuracy' if from_card else 'on these test images'}) "
                              f"< {p['min_reference_accuracy']:g}: it is not a comparably good classifier, so its "
                              "maps are no reference. Train it longer (reference_spec with a larger train_size) or "
                              f"lower {self.name}.min_reference_accuracy")

        explainer = explain.get(ctx.method, **(ctx.method_params or {}))
        # one seed per image set, the same for both models: a map that ignores the model is then identical
        seed_x = stream_seed(ctx.seed, f"spurious/explain/{ctx.method}")
        seed_bg = stream_seed(ctx.seed, f"spurious/explain-background/{ctx.method}")
        buggy = explain_maps(explainer, model, x, target, seed_x)
        reference = explain_maps(explainer, ref_model, x, ref_target, seed_x)
        buggy_bg = explain_maps(explainer, model, x_bg, target, seed_bg)
        reference_bg = explain_maps(explainer, ref_model, x_bg, ref_target, seed_bg)
        noise_seed = stream_seed(ctx.seed, "spurious/calibration")
        noise = explain.get("random", seed=noise_seed)(model, x, target, generator=rng.generator(noise_seed))
        calibration = post_process(noise, target.cpu(), [None] * len(x))

        gt1 = on_bg.to(torch.float32)
        gt2_buggy, gt2_buggy_why = ground_truth_2(gt1, buggy_bg)
        gt2_ref, gt2_ref_why = ground_truth_2(gt1, reference_bg)
        measured = {
            "buggy": measures(buggy, on_bg, gt1, gt2_buggy, gt2_buggy_why, p["ssim_data_range"]),
            "reference": measures(reference, on_bg, gt1, gt2_ref, gt2_ref_why, p["ssim_data_range"]),
            "calibration": measures(calibration, on_bg, gt1, gt2_buggy, gt2_buggy_why, p["ssim_data_range"]),
        }
        measured["difference"] = {m: paired_difference(measured["buggy"][m], measured["reference"][m])
                                  for m in MEASURES}
        cis = series_cis({(s, m): v for s, per in measured.items() for m, (v, _) in per.items()}, p, ctx.seed,
                         self.name)

        margin = float(p["margin"])
        rule = rule_text(DIFFERENCE, margin, "above")
        common = {
            "rule": rule, "margin": margin, "ci_level": float(p["ci_level"]), "n_boot": int(p["n_boot"]),
            "ssim_data_range": float(p["ssim_data_range"]), "reference_model": ref.group,
            "buggy_correlation": world.correlation, "reference_correlation": float(p["reference_correlation"]),
            "buggy_accuracy": accuracy, "reference_accuracy": ref_accuracy,
            "prediction_agreement": float((target == ref_target).double().mean()),
            "buggy_clean_accuracy": card.get("clean_accuracy"), "reference_clean_accuracy": ref_clean,
            "buggy_background_only_accuracy": card.get("background_only_accuracy"),
            "reference_background_only_accuracy": ref_card.get("background_only_accuracy"),
            "min_reference_accuracy": float(p["min_reference_accuracy"]),
        }
        out: list[dict[str, Any]] = []
        for series in ("buggy", "reference", "calibration", "difference"):
            for m in MEASURES:
                values, reasons = measured[series][m]
                out.append(row(ctx, **summary(m, values, reasons, cis[(series, m)]), series=series,
                               note=f"{SERIES_NOTES[series]}; {NOTES[m]}", **common))
        values, reasons = measured["difference"][VERDICT_METRIC]
        s = summary(VERDICT_METRIC, values, reasons, cis[("difference", VERDICT_METRIC)])
        means = {k: cis[(k, VERDICT_METRIC)][0] for k in ("buggy", "reference", "calibration")}
        out.append(row(ctx, **s, verdict=margin_verdict(s["ci_low"], s["ci_high"], margin, "above"),
                       series="verdict", buggy_value=means["buggy"], reference_value=means["reference"],
                       calibration_value=means["calibration"],
                       note=f"{SERIES_NOTES['verdict']}; {NOTES[VERDICT_METRIC]}", **common))
        out += failure_rows(ctx, [("buggy model", buggy), ("reference model", reference),
                                  ("buggy model, background only", buggy_bg),
                                  ("reference model, background only", reference_bg)], **common)

        k = min(int(p["figure_images"]), len(x))
        if k:
            save_panels(ctx, x[:k].cpu(),
                        {"buggy model": buggy.abs[:k], "reference model": reference.abs[:k], "GT-1": gt1[:k],
                         "GT-2 (buggy)": gt2_buggy[:k]},
                        failed={"buggy model": [f is not None for f in buggy.failed[:k]],
                                "reference model": [f is not None for f in reference.failed[:k]],
                                "GT-2 (buggy)": [w is not None for w in gt2_buggy_why[:k]]},
                        map_normalization="abs (model maps); ground truths as defined")
        return out


# ----------------------------------------------------------------------------------- measures
def ground_truth_2(gt1: torch.Tensor, background_maps: Maps) -> tuple[torch.Tensor, list[str | None]]:
    """GT-2 float32 [N, H, W] in [0, 1]: ``gt1`` [N, H, W] (1 on the background) times the 0-1 map of the
    background-only image, divided by its maximum; all 0 where undefined. Per image None or why it is
    undefined (the background-only map failed, or the product is 0 everywhere)."""
    weighted = gt1 * background_maps.zero_one[:, 0].to(gt1.dtype)
    top = weighted.flatten(1).amax(1)
    defined = (top > 0) & background_maps.ok
    gt2 = torch.where(defined.view(-1, 1, 1), weighted / torch.where(top > 0, top, 1.0).view(-1, 1, 1),
                      torch.zeros_like(weighted))
    why = [None if ok else (f"background-only map failed: {f}" if f is not None else GT2_ZERO)
           for ok, f in zip(defined.tolist(), background_maps.failed)]
    return gt2, why


def measures(maps: Maps, on_background: torch.Tensor, gt1: torch.Tensor, gt2: torch.Tensor,
             gt2_why: list[str | None], data_range: float) -> dict[str, tuple[torch.Tensor, list[str | None]]]:
    """measure -> (float64 [N], per-image None or why the value is NaN) for one map set.

    ``on_background``: bool [N, H, W]; ``gt1``, ``gt2``: float [N, H, W] in [0, 1]."""
    from xaudit import metrics

    failed = [None if f is None else f"method failed: {f}" for f in maps.failed]
    bad = ~maps.ok
    area = on_background.flatten(1).double().mean(1)
    mass = metrics.mass_accuracy(maps.abs, on_background, reduce="abs", return_reasons=True)
    # an all-zero map puts no mass anywhere: count it as uniform, i.e. the background's area share
    zero = torch.tensor([r == "zero_relevance" for r in mass.reasons], dtype=torch.bool)
    mass_v = torch.where(zero, area, mass.values.double())
    mass_why = [None if z else r for z, r in zip(zero.tolist(), mass.reasons)]
    out = {"background_mass": (mass_v, mass_why)}
    for name, gt, gt_why in (("ssim_gt1", gt1, [None] * len(failed)), ("ssim_gt2", gt2, gt2_why)):
        r = metrics.ssim(maps.zero_one[:, 0].double(), gt.double(), data_range=data_range, return_reasons=True)
        undefined = torch.tensor([w is not None for w in gt_why], dtype=torch.bool)
        values = torch.where(undefined, torch.nan, r.values.double())
        out[name] = (values, [w or why for w, why in zip(gt_why, r.reasons)])
    # a failed map's values are NaN whatever the measure says of its zero fill
    return {m: (torch.where(bad, torch.nan, v), [f or why for f, why in zip(failed, reasons)])
            for m, (v, reasons) in out.items()}


def paired_difference(a: tuple[torch.Tensor, list], b: tuple[torch.Tensor, list]
                      ) -> tuple[torch.Tensor, list[str | None]]:
    """(a - b per image, NaN where either is, with the buggy or the reference model's reason)."""
    (va, ra), (vb, rb) = a, b
    reasons = [None if x is None and y is None else (f"buggy model: {x}" if x is not None else f"reference model: {y}")
               for x, y in zip(ra, rb)]
    return va - vb, reasons
