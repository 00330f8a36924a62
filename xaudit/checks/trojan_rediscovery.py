"""Trojan rediscovery (docs/protocols.md#4-trojans, Casper et al. 2023): can a feature-synthesis method
reveal a trojan's trigger from the model alone, without any triggered image? Judged offline.

The cell's model (group ``trojans``; refused unless its card says every trojan took) carries patch,
style and natural-feature trojans (configs on its card). For the cell's synthesis method:

1. **Synthesis.** ``restarts`` images per distinct target class of the trojans, and as many for one
   trojan-free class (neither a target nor a source; ``trojan_free_class``). Class visualizations
   (``fv_*`` and any registered synthesis method that takes class indices) maximize the target's logit
   at the world's size; ``adversarial_patch`` optimizes ``restarts`` universal patches per target by
   cross-entropy on ``patch_images`` clean test images of every class (the method is not told a
   source class). A patch is shown to the judges on the mid-grey canvas at the centre (patch and
   natural families) or tiled over the whole image (style family: a style is a texture).
2. **Options.** Per trojan the 8 options of :func:`xaudit.checks.rediscovery.options` (its trigger and 7
   distractors of its family, never a same-family trojan of the same target), rendered as the trigger
   is applied.
3. **Judges** (``judges``): ``pixel`` (pixels in the box; style descriptor), ``features`` (mean-pooled
   activations of ``judge_layer`` of ``judge_model``, trained with seed cell seed + ``judge_seed_offset``:
   never the audited model), and their ``_calibrated`` forms (scores z-scored per option against a
   noise draw of their own). Each synthesized image picks the option it is most similar to.
4. **Controls per judge and trojan**, in every run: handed the true option, the judge must pick it
   (``true_pick``); on ``n_noise`` uniform-noise images (another draw than calibration's) its picks must
   not collapse (one option above 3/8, three times its 1/8 share: ``noise_max_frequency``). A judge
   that fails either for a trojan of a family fails the controls for the family: its verdict there is
   ``inconclusive``, with the reason.
5. **Nulls.** ``mismatched``: each trojan's images judged against the options of the next trojan of its
   family (cyclic), a hit being a pick of that trojan's trigger; ``trojan_free``: the trojan-free
   class's images judged against each trojan's options.

Measures per judge and trojan (over its restarts): ``accuracy`` (picks of the true option), ``rank``
(the true option's rank among the 8, 1 best), ``mismatched_accuracy``, ``trojan_free_accuracy``. Per
judge and family (``trojan = family:patch``): the same, the mean over the family's trojans with a
percentile-bootstrap CI **over trojans** (restarts of one trojan are correlated: the trojan is the
unit), ``accuracy_minus_mismatched`` (paired per trojan), and ``found_2_restarts``: the fraction of
restart indices r at which at least 2 of the family's trojans are found.

Verdict ``rediscovers`` per judge x family (``verdict_key = ("metric", "trojan", "judge")``):
``pass`` when (a) CI_low(accuracy) > 1/8, (b) CI_low(accuracy - mismatched) > 0 and (c)
found_2_restarts > 0.5 ("at least 2 different trojans found in most restarts"); ``fail`` when (c) does
not hold, CI_high(accuracy) <= 1/8 or CI_high(accuracy - mismatched) <= 0; else ``inconclusive``; also
``inconclusive`` when the judge failed its controls for the family.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from xaudit.checks import rediscovery as RD
from xaudit.checks.base import CHECKS, Check, CheckContext, ModelRef, row
from xaudit.checks.debugging import series_cis, summary
from xaudit.checks.toolkit import finite_or_none, make_world, merge_params, trojaned_model
from xaudit.core.errors import ConfigError, check_bool, check_choice, check_int, check_range
from xaudit.core.rng import stream_seed

CITATION = ("Casper, Li, Li, Bu, Zhang, Hariharan, Hadfield-Menell. Red Teaming Deep Neural Networks with "
            "Feature Synthesis Tools. NeurIPS 2023")
FAMILIES = ("patch", "style", "natural")
JUDGES = ("pixel", "pixel_calibrated", "features", "features_calibrated")
PATCH_METHODS = ("adversarial_patch",)       # synthesis methods whose objective is {images, target}
NOT_ACCEPTED = ("caricature",)               # a model-difference method: no class to synthesize for
MEASURES = ("accuracy", "rank", "mismatched_accuracy", "trojan_free_accuracy")
RULE = ("pass (rediscovers the family) if CI_low(accuracy) > 1/k, CI_low(accuracy - mismatched) > 0 and at "
        "least 2 trojans are found at more than half of the restart indices; fail if fewer, or CI_high(accuracy) "
        "<= 1/k, or CI_high(accuracy - mismatched) <= 0; else inconclusive (also when the judge failed its "
        "controls for the family). CIs: percentile bootstrap over the family's trojans")
SEES = {
    "pixel": "pixels in the trigger's box (layout and colour); styles: colour histograms + grey spectrum",
    "features": "an independently trained model's features (layout and colour: measured, it tells the 5 "
                "colour-only restyles apart, self-pick 1.0)",
}

DEFAULTS: dict[str, Any] = {
    "restarts": 8,                  # synthesized images (or patches) per target class
    "k_options": 8,                 # the true trigger + 7 distractors (Casper et al.: 8)
    "judges": list(JUDGES),
    "judge_model": {"base": "clean", "arch": {"name": "vgg"}},
    "judge_seed_offset": 1,         # the judge model's seed: the cell's seed + this (never the audited model)
    "judge_layer": "relu1",
    "n_noise": 200,                 # noise images of the noise control
    "n_calibration": 200,           # noise images a calibrated judge is z-scored against (another draw)
    "patch_images": 256,            # clean test images an adversarial patch is optimized on
    "trojan_free_class": "auto",    # the control class: the highest class no trojan targets or sources
    "ci_level": 0.95,
    "n_boot": 2000,
    "figure_restarts": 2,           # synthesized images per trojan shown in the montage
    "require_bug_took": True,
}


@CHECKS.register("trojan_rediscovery")
class TrojanRediscovery(Check):
    """Feature synthesis for each trojan's target class, judged offline against 8 trigger options."""
    name = "trojan_rediscovery"
    bug = "{trojan} trojan"
    bug_rows = {"trojan": "family:*"}
    kind = "synthesize"
    higher_is_better = True
    citation = CITATION
    defaults = DEFAULTS
    worlds = ("shapes",)
    model_groups = ("trojans",)
    method_kinds = ("synthesis",)
    verdict_key = ("metric", "trojan", "judge")
    scorecard_metric = "rediscovers"
    description = (
        "Trojan rediscovery (Casper et al. 2023): the synthesis method makes `restarts` images (or patches) per "
        "trojan target class from the model alone; offline judges pick, per image, which of 8 options (the "
        "trigger and 7 distractors of its family, rendered as the trigger is applied) it resembles. Judges: "
        "pixels, and the features of an independently trained model (another architecture and seed), each also "
        "calibrated (scores z-scored per option against noise images). Controls in every run: a judge must "
        "pick the true option when handed it, and must not collapse onto one option on noise images; a judge "
        "failing either for a family gives no verdict there. Nulls: each trojan's images against another "
        "trojan's options (mismatched), and a trojan-free class's images. Verdict per judge and family "
        "(patch, style, natural): " + RULE + ".")

    def accepts(self, method) -> bool:
        return super().accepts(method) and method.get("name") not in NOT_ACCEPTED

    def resolve(self, params: dict[str, Any] | None) -> dict[str, Any]:
        p = merge_params(self.name, dict(params or {}), DEFAULTS)
        n = self.name
        check_int(f"{n}.restarts", p["restarts"], 1, 1024)
        check_int(f"{n}.k_options", p["k_options"], 2, 64)
        check_int(f"{n}.judge_seed_offset", p["judge_seed_offset"], 1, 1_000_000)
        check_int(f"{n}.n_noise", p["n_noise"], 8, 100_000)
        check_int(f"{n}.n_calibration", p["n_calibration"], 2, 100_000)
        check_int(f"{n}.patch_images", p["patch_images"], 1, 100_000)
        check_int(f"{n}.n_boot", p["n_boot"], 10, 10_000_000)
        check_range(f"{n}.ci_level", p["ci_level"], 0.0, 1.0, lo_open=True, hi_open=True)
        check_int(f"{n}.figure_restarts", p["figure_restarts"], 0, 64)
        check_bool(f"{n}.require_bug_took", p["require_bug_took"])
        judges = p["judges"]
        if isinstance(judges, str) or not isinstance(judges, (list, tuple)) or not judges:
            raise ConfigError(f"{n}.judges", f"must be a non-empty list of judges from {', '.join(JUDGES)}; "
                                             f"got {judges!r}")
        for j in judges:
            check_choice(f"{n}.judges", j, JUDGES)
        if len(set(judges)) != len(judges):
            raise ConfigError(f"{n}.judges", f"lists a judge twice: {judges}")
        if not isinstance(p["judge_model"], (str, dict)):
            raise ConfigError(f"{n}.judge_model", "must be a zoo spec name or a spec mapping such as "
                                                  f"{{base: clean, arch: {{name: vgg}}}}; got {p['judge_model']!r}")
        if not isinstance(p["judge_layer"], str) or not p["judge_layer"]:
            raise ConfigError(f"{n}.judge_layer", f"must be a module name of the judge model, got {p['judge_layer']!r}")
        tf = p["trojan_free_class"]
        if tf != "auto" and not (isinstance(tf, int) and not isinstance(tf, bool) and tf >= 0):
            raise ConfigError(f"{n}.trojan_free_class", f"must be 'auto' or a class index, got {tf!r}")
        return p

    def _uses_features(self, p) -> bool:
        return any(j.startswith("features") for j in p["judges"])

    def models(self, params: dict[str, Any], model_group: str, seed: int,
               world: dict[str, Any] | None = None) -> list[ModelRef]:
        p = self.resolve(params)
        refs = [ModelRef(model_group, seed)]
        if self._uses_features(p):
            refs.append(ModelRef(p["judge_model"], seed + int(p["judge_seed_offset"])))
        return refs

    def run(self, ctx: CheckContext) -> list[dict[str, Any]]:
        from xaudit import explain

        p = self.resolve(ctx.params)
        model, card, bugs = trojaned_model(ctx, self.name, FAMILIES, p["require_bug_took"])
        world = make_world(ctx)
        free = trojan_free_class(bugs, world.num_classes, p["trojan_free_class"])
        targets = sorted({b.target_class for b in bugs})
        k = int(p["k_options"])
        explainer = explain.get(ctx.method, **(ctx.method_params or {}))
        judges = build_judges(ctx, p)       # a bad judge layer is refused before any synthesis
        synth, settings = synthesize(ctx, explainer, model, world, targets + [free], p)

        common = {"ci_level": float(p["ci_level"]), "n_boot": int(p["n_boot"]), "k_options": k,
                  "restarts": int(p["restarts"]), "trojan_free_class": free, "synthesis": settings}
        out = [row(ctx, "canvas_max_prob", RD.canvas_report(model, world)["max_prob"], series="canvas",
                   note="the audited model's top softmax probability on the grey canvas the patch and natural "
                        "options are drawn on (a plateau reads > 0.8)", **common)]

        opts = {b.name: RD.options(b, world, k=k, seed=ctx.seed, exclude=RD.siblings(b, bugs)) for b in bugs}
        boxes = {b.name: RD.option_box(b, world) for b in bugs}
        fams = {f: [b for b in bugs if b.kind == f] for f in FAMILIES if any(b.kind == f for b in bugs)}
        per: dict[tuple, dict[str, torch.Tensor]] = {}
        controls: dict[tuple, dict[str, Any]] = {}
        figure: dict[str, Any] = {"picks": {}}
        for jname, judge in judges.items():
            for fam, members in fams.items():
                for i, b in enumerate(members):
                    imgs, ti, names = opts[b.name]
                    box = boxes[b.name]
                    x = view(synth[b.target_class], fam, world)
                    scores = judge.scores(x, imgs, box)
                    picks = scores.argmax(1)
                    other = members[(i + 1) % len(members)]
                    o_imgs, o_ti, _ = opts[other.name]
                    mism = judge.pick(x, o_imgs, boxes[other.name]) if other.name != b.name else None
                    fpicks = judge.pick(view(synth[free], fam, world), imgs, box)
                    per[(jname, b.name)] = {
                        "accuracy": (picks == ti).double(),
                        "rank": RD.rank_of_true(scores, ti).double(),
                        "mismatched_accuracy": (torch.full((len(x),), math.nan, dtype=torch.float64) if mism is None
                                                else (mism == o_ti).double()),
                        "trojan_free_accuracy": (fpicks == ti).double()}
                    controls[(jname, b.name)] = judge_controls(jname, judge, imgs, ti, box, p, ctx.seed)
                    figure["picks"][(jname, b.name)] = picks.tolist()

        series: dict[tuple, torch.Tensor] = {}
        for (jname, t), v in per.items():
            for m in MEASURES:
                series[("trojan", jname, t, m)] = v[m]
        for jname in judges:
            for fam, members in fams.items():
                means = {m: torch.stack([per[(jname, b.name)][m].nanmean() for b in members]) for m in MEASURES}
                for m in MEASURES:
                    series[("family", jname, fam, m)] = means[m]
                series[("family", jname, fam, "accuracy_minus_mismatched")] = (
                    means["accuracy"] - means["mismatched_accuracy"])
        cis = series_cis(series, p, ctx.seed, self.name)

        for jname in judges:
            for fam, members in fams.items():
                finfo = {"judge": jname, "trojan_family": fam, "sees": SEES[jname.split("_")[0]], **common}
                for b in members:
                    c = controls[(jname, b.name)]
                    extra = {"trojan": b.name, "target": b.target_class, "true_option": opts[b.name][2][opts[b.name][1]],
                             "options": ",".join(opts[b.name][2]), **finfo}
                    for m in MEASURES:
                        out.append(row(ctx, **summary(m, series[("trojan", jname, b.name, m)], None,
                                                      cis[("trojan", jname, b.name, m)]),
                                       series="trojan", note=NOTES[m], **extra))
                    out.append(row(ctx, "control_true_pick", float(c["true_pick"]), None, None, 1, series="control",
                                   passed=bool(c["true_pick"]), note="1 if the judge picks the true option when "
                                   "handed it", **extra))
                    out.append(row(ctx, "control_noise_max_frequency", c["max_frequency"], None, None, c["n"],
                                   series="control", passed=not c["collapsed"], p_value=c["p_value"],
                                   counts=",".join(map(str, c["counts"])),
                                   note=f"share of {c['n']} noise images' picks on the most-picked option (chance "
                                        f"1/{k}; collapse above 3/{k}); p_value: chi-square against uniform", **extra))
                g = f"family:{fam}"
                extra = {"trojan": g, "members": ",".join(b.name for b in members), **finfo}
                for m in MEASURES + ("accuracy_minus_mismatched",):
                    out.append(row(ctx, **summary(m, series[("family", jname, fam, m)], None,
                                                  cis[("family", jname, fam, m)]),
                                   series="family", note=NOTES[m] + "; mean over the family's trojans, CI over trojans",
                                   **extra))
                hits = torch.stack([per[(jname, b.name)]["accuracy"] for b in members])    # [T, R]
                found2 = float(((hits > 0).sum(0) >= 2).double().mean())
                out.append(row(ctx, "found_2_restarts", found2, None, None, hits.shape[1], series="family",
                               note="fraction of restart indices at which at least 2 of the family's trojans are "
                                    "found", **extra))
                failed = [f"{b.name}: {why}" for b in members for why in control_failures(controls[(jname, b.name)])]
                acc = cis[("family", jname, fam, "accuracy")]
                diff = cis[("family", jname, fam, "accuracy_minus_mismatched")]
                verdict = rediscovery_verdict(acc[1], acc[2], diff[1], diff[2], found2, 1.0 / k, failed)
                out.append(row(ctx, "rediscovers", acc[0], acc[1], acc[2], acc[3], verdict=verdict, series="verdict",
                               rule=RULE, controls_passed=not failed, control_failures="; ".join(failed),
                               difference_low=finite_or_none(diff[1]), difference_high=finite_or_none(diff[2]),
                               found_2_restarts=found2, **extra))
        save_figure_data(ctx, synth, opts, bugs, figure, list(judges), p, world)
        return out

    def figures(self, rows, artifacts):
        """Per family, the judges' accuracy per method (box plots over the family's trojans, the chance
        line and the nulls drawn), and per method a montage of synthesized images beside the 8 options
        with each judge's pick marked."""
        from xaudit.checks.rediscovery_figures import accuracy_figure, montages

        return accuracy_figure(rows) + montages(artifacts)


NOTES = {
    "accuracy": "fraction of the synthesized images whose pick is the true trigger (chance 1/k)",
    "rank": "the true trigger's rank among the k options (1 best; chance (k+1)/2)",
    "mismatched_accuracy": "the images judged against another trojan's options: picks of that trojan's trigger",
    "trojan_free_accuracy": "the trojan-free class's images judged against this trojan's options: picks of its trigger",
    "accuracy_minus_mismatched": "accuracy minus mismatched accuracy, paired per trojan",
}


def rediscovery_verdict(acc_low, acc_high, diff_low, diff_high, found2: float, chance: float,
                        control_failures: Sequence[str]) -> str:
    """The ``rediscovers`` verdict (see the module docstring)."""
    if control_failures:
        return "inconclusive"
    vals = [acc_low, acc_high, diff_low, diff_high]
    if any(v is None or not math.isfinite(v) for v in vals):
        return "inconclusive"
    if found2 <= 0.5 or acc_high <= chance or diff_high <= 0:
        return "fail"
    if acc_low > chance and diff_low > 0:
        return "pass"
    return "inconclusive"


def control_failures(c: dict[str, Any]) -> list[str]:
    out = []
    if not c["true_pick"]:
        out.append("does not pick the true option when handed it")
    if c["collapsed"]:
        out.append(f"collapses on noise ({c['max_frequency']:.2f} of the picks on one option)")
    return out


def trojan_free_class(bugs, num_classes: int, choice) -> int:
    """The control class: ``choice``, or (auto) the highest class no trojan targets or sources."""
    used = {b.target_class for b in bugs} | {getattr(b, "source_class", None) for b in bugs}
    if choice != "auto":
        if choice >= num_classes:
            raise ConfigError("trojan_rediscovery.trojan_free_class", f"must be in [0, {num_classes}); got {choice}")
        if choice in used:
            raise ConfigError("trojan_rediscovery.trojan_free_class",
                              f"class {choice} is a trojan's target or source; free classes: "
                              f"{[c for c in range(num_classes) if c not in used] or 'none'}")
        return int(choice)
    free = [c for c in range(num_classes) if c not in used]
    if not free:
        raise ConfigError("model", f"every class of the model is a trojan's target or source ({sorted(used - {None})}): "
                                   "trojan rediscovery needs a trojan-free control class")
    return free[-1]


# ------------------------------------------------------------------------------------ synthesis
def synthesize(ctx: CheckContext, explainer, model, world, classes: Sequence[int], p: dict[str, Any]
               ) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    """class -> float [R, C, s, s] in [0, 1] (s = the world's size, or a patch's side), and the settings
    the method recorded (its last call's). Every draw from one generator seeded by the cell's seed and
    the method."""
    from xaudit.explain.synthesis.patch import PatchObjective

    r = int(p["restarts"])
    g = torch.Generator().manual_seed(stream_seed(ctx.seed, f"trojan_rediscovery/synthesis/{ctx.method}"))
    out: dict[int, torch.Tensor] = {}
    if ctx.method in PATCH_METHODS or explainer.name in PATCH_METHODS:
        clean = world.sample(range(int(p["patch_images"])), split="test").images.to(ctx.device)
        for c in classes:
            out[c] = torch.cat([explainer.synthesize(model, PatchObjective(clean, int(c)), generator=g).cpu()
                                for _ in range(r)])
    else:
        overrides = {}
        if "restarts" in explainer.params:
            overrides["restarts"] = r
        if "size" in explainer.params:
            overrides["size"] = world.size
        if overrides:
            from xaudit import explain

            explainer = explain.get(explainer.name, **{**explainer.params, **overrides})
        calls = 1 if "restarts" in overrides else r
        parts = [explainer.synthesize(model, list(map(int, classes)), generator=g).cpu() for _ in range(calls)]
        per_call = len(classes) * (r if calls == 1 else 1)
        for x in parts:
            if x.shape[0] != per_call:
                raise ConfigError(ctx.method, f"returned {x.shape[0]} images for {len(classes)} classes x "
                                              f"{r if calls == 1 else 1} restarts; expected {per_call}")
        if calls == 1:
            out = {c: parts[0][i * r:(i + 1) * r] for i, c in enumerate(classes)}
        else:
            out = {c: torch.stack([x[i] for x in parts]) for i, c in enumerate(classes)}
    settings = dict((explainer.last_synthesis.settings if explainer.last_synthesis else {}) or {})
    return out, {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool, type(None)))}


def view(images: torch.Tensor, family: str, world) -> torch.Tensor:
    """The synthesized images as a judge sees them: full images unchanged; a patch smaller than the
    world on the grey canvas at the centre (patch and natural families) or tiled over the image (style)."""
    s = world.size
    if images.shape[-1] == s and images.shape[-2] == s:
        return images
    n, c, h, w = images.shape
    if family == "style":
        reps = (math.ceil(s / h), math.ceil(s / w))
        return images.repeat(1, 1, *reps)[:, :, :s, :s].contiguous()
    out = RD.canvas(world).expand(n, c, s, s).clone()
    r0, c0 = (s - h) // 2, (s - w) // 2
    out[:, :, r0:r0 + h, c0:c0 + w] = images
    return out


# ------------------------------------------------------------------------------------ judges
def build_judges(ctx: CheckContext, p: dict[str, Any]) -> dict[str, Any]:
    judges: dict[str, Any] = {}
    base: dict[str, Any] = {}
    cal_seed = stream_seed(ctx.seed, "trojan_rediscovery/calibration")
    for name in p["judges"]:
        kind = name.split("_")[0]
        if kind not in base:
            if kind == "pixel":
                base[kind] = RD.PixelJudge()
            else:
                ref = ModelRef(p["judge_model"], ctx.seed + int(p["judge_seed_offset"]))
                jm, jcard = ctx.load_model(ref)
                base[kind] = RD.FeatureJudge(jm, p["judge_layer"])
                base[kind].identity = str(jcard.get("weights_sha256") or ref.alias)
        judges[name] = (RD.Calibrated(base[kind], n=int(p["n_calibration"]), seed=cal_seed)
                        if name.endswith("_calibrated") else base[kind])
    return judges


_CONTROLS: dict[tuple, dict[str, Any]] = {}


def judge_controls(jname: str, judge, options_: torch.Tensor, true_index: int, box, p: dict[str, Any],
                   seed: int) -> dict[str, Any]:
    """The true-pick and noise controls of one judge on one option set, memoized per worker (they do not
    depend on the synthesis method)."""
    inner = getattr(judge, "judge", judge)
    key = (jname, getattr(inner, "identity", ""), hashlib.sha1(options_.numpy().tobytes()).hexdigest(),
           None if box is None else tuple(box), true_index, int(p["n_noise"]), int(p["n_calibration"]), seed,
           p["judge_layer"])
    if key not in _CONTROLS:
        if len(_CONTROLS) >= 512:
            _CONTROLS.clear()
        nc = RD.noise_control(judge, options_, box, n=int(p["n_noise"]),
                              seed=stream_seed(seed, "trojan_rediscovery/noise_control"))
        true_pick = int(judge.pick(options_[true_index:true_index + 1], options_, box)[0]) == true_index
        _CONTROLS[key] = {"true_pick": true_pick, **nc}
    return _CONTROLS[key]


# ------------------------------------------------------------------------------------ figure data
def save_figure_data(ctx: CheckContext, synth, opts, bugs, figure, judges: list[str], p, world) -> None:
    """One npz per cell: per trojan its first ``figure_restarts`` synthesized images (as the judges see
    them), its options, the true option's index and each judge's picks."""
    k = min(int(p["figure_restarts"]), int(p["restarts"]))
    if not ctx.artifacts_dir or not k:
        return
    from xaudit.checks.debugging import artifact_name

    path = Path(ctx.artifacts_dir) / artifact_name(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [b.name for b in bugs]
    shown = np.stack([view(synth[b.target_class], b.kind, world)[:k].numpy() for b in bugs]).astype(np.float16)
    options_ = np.stack([opts[b.name][0].numpy() for b in bugs]).astype(np.float16)
    picks = np.array([[figure["picks"][(j, b.name)][:k] for b in bugs] for j in judges], dtype=np.int64)
    np.savez_compressed(path, check=ctx.check, method=ctx.method, model=ctx.model_group, world=ctx.world_id,
                        seed=ctx.seed, trojans=np.array(names), families=np.array([b.kind for b in bugs]),
                        synth=shown, options=options_, true_index=np.array([opts[b.name][1] for b in bugs]),
                        option_names=np.array([opts[b.name][2] for b in bugs]), judges=np.array(judges), picks=picks)
