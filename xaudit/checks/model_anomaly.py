"""Model audit (docs/protocols.md#3-auditing-visualizations, Denain & Steinhardt 2022): do a method's
visualizations tell an anomalously trained model from a population of normally trained ones, and do
they point at the inputs that trigger it?

**Population** (built from the check's parameters as model references, trained by the executor and
cached): ``n_normal`` normal models (the cell's model group at seeds 0 .. n_normal - 1) and, per anomaly
family of ``families``, each variant at ``anomaly_seeds`` seeds (from ``anomaly_seed_base``, 100 apart
per variant: every model of the population has its own seed). Default families, scaled to 32 px from the paper:

- ``backdoor``: a 3 x 3 black-and-white checker at the fixed bottom-right corner relabeled to class 0, at
  poison rates 0.01, 0.05, 0.1, 0.3;
- ``watermark``: the class index drawn as a glyph in the top-left corner (strength 0.7) on 10%, 50% and
  100% of the training images;
- ``missing_class``: class 0 removed from training;
- ``gaussian_noise``: Gaussian-noise augmentation (the `noise-aug` spec) at sigma 0.1, the highest of those
  measured that the CNN survives at the population's 20,000 images (0.25: clean accuracy 0.46, and the
  card's noise criterion failed; 0.15: 0.56; 0.1: 0.72, noise accuracy 0.70);
- ``adversarial``: PGD adversarial training, eps 8/255 (the `adversarial` spec);
- ``label_noise``: 30% of the training labels replaced by another class.

A model whose clean accuracy is more than ``collapse_margin`` below the lowest normal model's is
**collapsed** (left out of the audit, with a ``collapsed`` row naming it and both accuracies) unless its
card says its bug took and its accuracy is above 1.5 / classes: then the low accuracy is the bug's effect
(measured: the watermark on 100% of the training images gives clean accuracy 0.26 on unmarked images and a
cue-flip rate of 0.85) and the model stays.

**Visualizations.** The cell's method explains the same ``n_inputs`` (50) test images with every model,
each image's true class as the target (every model explains the same class, so maps compare); for input
identification also ``n_identify`` (40) of them with the backdoor patch and with the watermark forced on.
Maps are rendered as images: sum_c |attr| scaled to [0, 1] per map (``zero_one``). The ``caricature``
synthesis method is accepted too: its visualization of an input is the image whose ``caricature_layers``
activations match the input's (Olah et al. 2017), every model's drawn with the same seed; SSIM of
images is the mean over channels.

**Distances** (``distances``; no download): ``ssim`` (1 - SSIM of the rendered maps), ``l2`` (root mean
square difference of the rendered maps) and ``features`` (LPIPS-style, without LPIPS's download: the
``feature_layer`` map of an independently trained model, ``feature_model`` at seed ``feature_seed``, of the
rendered map repeated over the channels, unit-normalized over channels at each position; the squared
difference averaged over positions).

**Scores** (:mod:`xaudit.metrics.population`): per model and input the leave-one-out ratio; a model's
score is its mean over the ``n_inputs`` inputs; it is flagged when above the largest normal score (for a
normal model, the largest of the other normals'). Per family: the fraction flagged, the AUROC of the
scores of the family's models against the normal models' (the model is the unit; stratified bootstrap
CI), and for backdoor and watermark the input-identification AUROC of the per-input scores of triggered
against clean inputs, per model (mean over the family's models).

**Verdict** ``detects`` per family and distance (``verdict_key = ("metric", "anomaly", "distance")``):
``pass`` when CI_low(AUROC) > 0.5 and at least half of the family's models are flagged; ``fail`` when
CI_high(AUROC) <= 0.5 or fewer than half are flagged and CI_low(AUROC) <= 0.5; else ``inconclusive``.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from xaudit.checks.base import CHECKS, Check, CheckContext, ModelRef, row
from xaudit.checks.toolkit import explain_raw, explain_seed, make_world, merge_params, post_process, stream_seed
from xaudit.core.errors import ConfigError, check_choice, check_int, check_range

CITATION = "Denain, Steinhardt. Auditing Visual Features of Models. 2022 (Auditing Visualizations)"
DISTANCES = ("ssim", "l2", "features")
BACKDOOR = {"kind": "patch", "name": "backdoor", "pattern": "checker", "size_px": 3, "location": "fixed",
            "target_class": 0}
WATERMARK = {"kind": "spurious_cue", "name": "watermark", "cue_kind": "watermark", "strength": 0.7}
FAMILIES: dict[str, list[dict[str, Any]]] = {
    "backdoor": [{"bugs": [{**BACKDOOR, "poison_rate": r}]} for r in (0.01, 0.05, 0.1, 0.3)],
    "watermark": [{"bugs": [{**WATERMARK, "fraction": f}]} for f in (0.1, 0.5, 1.0)],
    "missing_class": [{"bugs": [{"kind": "missing_class", "name": "missing_class", "cls": 0}]}],
    # sigma 0.1: at the population's 20,000 images sigma 0.25 (the noise-aug spec's) left clean accuracy
    # 0.46 and failed the card's noise criterion (collapsed); 0.1 gives 0.72, noise accuracy 0.70
    "gaussian_noise": [{"base": "noise-aug", "train": {"noise_sigma": 0.1}}],
    "adversarial": [{"base": "adversarial"}],
    "label_noise": [{"bugs": [{"kind": "label_noise", "name": "label_noise", "rate": 0.3}]}],
}
TRIGGERS = {"backdoor": BACKDOOR, "watermark": WATERMARK}      # input identification's triggers
RULE = ("pass (detects the family) if CI_low(AUROC, family vs normal models) > 0.5 and at least half of the "
        "family's models are flagged (score above every normal model's); fail if CI_high(AUROC) <= 0.5, or "
        "fewer than half are flagged and CI_low(AUROC) <= 0.5; else inconclusive")

DEFAULTS: dict[str, Any] = {
    "n_normal": 8,
    "families": FAMILIES,
    # every member's training recipe override (normal and anomalous alike, so they differ only in the bug):
    # 20,000 images instead of the specs' 40,000 (noise-aug 60,000, adversarial 30,000) halves the cold
    # time of a population; null: each spec's own recipe
    "population_train": {"train_size": 20000},
    "anomaly_seeds": 1,
    "anomaly_seed_base": 100,
    "n_inputs": 50,
    "n_identify": 40,
    "distances": list(DISTANCES),
    "feature_model": {"base": "clean", "arch": {"name": "vgg"}},
    "feature_seed": 1,
    "feature_layer": "relu2",
    "collapse_margin": 0.1,
    "figure_inputs": 4,             # inputs whose maps the report's grid shows for every model
    "caricature_layers": ["conv1", "conv2"],   # the layers a caricature matches (the zoo CNN's two convolutions)
    "ci_level": 0.95,
    "n_boot": 2000,
}


@CHECKS.register("model_anomaly")
class ModelAnomaly(Check):
    """Visualizations of anomalous models against a population of normal ones, per anomaly family."""
    name = "model_anomaly"
    bug = "anomalous model: {anomaly}"
    kind = "re-explain"
    higher_is_better = True
    citation = CITATION
    defaults = DEFAULTS
    worlds = ("shapes",)
    model_groups = ("clean",)
    method_kinds = ("attribution", "synthesis")
    verdict_key = ("metric", "anomaly", "distance")
    scorecard_metric = "detects"
    description = (
        "Model audit (Denain & Steinhardt 2022): every model of a population (normal models differing only in "
        "seed; anomalous ones per family: backdoor, watermark cue, missing class, Gaussian-noise and adversarial "
        "training, label noise) explains the same fixed test images; a model's score is the mean over inputs of "
        "its mean distance to the normal models' maps over the normal models' mean pairwise distance (leave-one-"
        "out for a normal model), with distances 1 - SSIM, L2 of the rendered maps and a feature distance in an "
        "independently trained model. A model is flagged above the largest normal score. Per family: fraction "
        "flagged, AUROC vs the normal models (model = unit) and, for backdoor and watermark, the AUROC of per-input "
        "scores on triggered vs clean inputs. " + RULE + ".")

    def accepts(self, method) -> bool:
        """Every attribution method, and of the synthesis methods the caricature (the view of a real input
        the paper audits; class visualizations have no input to compare)."""
        kind = str(method.get("kind", "attribution"))
        return kind == "attribution" or (kind == "synthesis" and method.get("name") == "caricature")

    def resolve(self, params: dict[str, Any] | None) -> dict[str, Any]:
        p = merge_params(self.name, dict(params or {}), DEFAULTS)
        n = self.name
        layers = p["caricature_layers"]
        if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers:
            raise ConfigError(f"{n}.caricature_layers", f"must be a non-empty list of layer names, got {layers!r}")
        check_int(f"{n}.n_normal", p["n_normal"], 3, 10_000)
        check_int(f"{n}.anomaly_seeds", p["anomaly_seeds"], 1, 100)
        check_int(f"{n}.anomaly_seed_base", p["anomaly_seed_base"], 0, 1_000_000)
        if p["anomaly_seed_base"] < p["n_normal"]:
            raise ConfigError(f"{n}.anomaly_seed_base", f"must be >= n_normal ({p['n_normal']}) so no anomalous model "
                                                        f"shares a seed with a normal one; got {p['anomaly_seed_base']}")
        check_int(f"{n}.n_inputs", p["n_inputs"], 2, 100_000)
        check_int(f"{n}.n_identify", p["n_identify"], 0, 100_000)
        if p["n_identify"] > p["n_inputs"]:
            raise ConfigError(f"{n}.n_identify", f"must be <= n_inputs ({p['n_inputs']}): the clean side of input "
                                                 f"identification is the first n_identify inputs; got {p['n_identify']}")
        check_int(f"{n}.n_boot", p["n_boot"], 10, 10_000_000)
        check_range(f"{n}.ci_level", p["ci_level"], 0.0, 1.0, lo_open=True, hi_open=True)
        check_range(f"{n}.collapse_margin", p["collapse_margin"], 0.0, 1.0)
        check_int(f"{n}.figure_inputs", p["figure_inputs"], 0, 64)
        d = p["distances"]
        if isinstance(d, str) or not isinstance(d, (list, tuple)) or not d:
            raise ConfigError(f"{n}.distances", f"must be a non-empty list of {', '.join(DISTANCES)}; got {d!r}")
        for x in d:
            check_choice(f"{n}.distances", x, DISTANCES)
        if p["population_train"] is not None and not isinstance(p["population_train"], dict):
            raise ConfigError(f"{n}.population_train", "must be a mapping of training settings (e.g. {train_size: "
                                                       f"20000}}) or null; got {p['population_train']!r}")
        fams = p["families"]
        if not isinstance(fams, dict) or not fams:
            raise ConfigError(f"{n}.families", "must be a mapping family -> list of spec overrides (e.g. "
                                               "{backdoor: [{bugs: [...]}]}); got " + repr(fams))
        for fam, variants in fams.items():
            if not isinstance(variants, list) or not variants or not all(isinstance(v, dict) for v in variants):
                raise ConfigError(f"{n}.families.{fam}", f"must be a non-empty list of spec mappings, got {variants!r}")
        return p

    # ------------------------------------------------------------------ the population
    def population(self, p: dict[str, Any], group: str, seed: int) -> list[tuple[str, str, ModelRef]]:
        """[(family ('normal' or an anomaly family), label, ModelRef)] in a fixed order; seeds offset by the
        cell's seed times 10,000 so populations of different cell seeds do not overlap."""
        off = 10_000 * int(seed)
        train = p["population_train"]

        def recipe(spec):     # the population's recipe, under a variant's own training settings
            if not train:
                return spec
            spec = dict({"base": spec} if isinstance(spec, str) else spec)
            spec["train"] = {**train, **(spec.get("train") or {})}
            return spec

        out = [("normal", f"normal seed {off + i}", ModelRef(recipe(group), off + i)) for i in range(p["n_normal"])]
        variant = 0
        for fam, variants in p["families"].items():
            for j, v in enumerate(variants):
                spec = recipe({"base": group, **v} if "base" not in v else dict(v))
                for s in range(p["anomaly_seeds"]):
                    sd = off + p["anomaly_seed_base"] + 100 * variant + s      # one seed per anomalous model
                    out.append((fam, f"{fam} #{j} seed {sd}", ModelRef(spec, sd)))
                variant += 1
        return out

    def models(self, params: dict[str, Any], model_group: str, seed: int,
               world: dict[str, Any] | None = None) -> list[ModelRef]:
        p = self.resolve(params)
        refs = [r for _, _, r in self.population(p, model_group, seed)]
        if "features" in p["distances"]:
            refs.append(ModelRef(p["feature_model"], int(p["feature_seed"])))
        return refs

    # ------------------------------------------------------------------ the cell
    def run(self, ctx: CheckContext) -> list[dict[str, Any]]:
        from xaudit import explain
        from xaudit.metrics import population as P
        from xaudit.world import bug_from_config

        p = self.resolve(ctx.params)
        pop = self.population(p, ctx.model_group, ctx.seed)
        world = make_world(ctx)
        n, k = int(p["n_inputs"]), int(p["n_identify"])
        batch = world.sample(range(n), split="test")
        x, y = batch.images, batch.true_labels
        triggered = {}
        for fam, cfg in TRIGGERS.items():
            if fam in p["families"] and k:
                tb = world.sample(range(k), split="test", bugs=[bug_from_config(cfg)], force=True)
                triggered[fam] = (tb.images, tb.true_labels)
        explainer = explain.get(ctx.method, **(ctx.method_params or {}))
        eseed = explain_seed(ctx.seed, ctx.method)
        common = {"ci_level": float(p["ci_level"]), "n_boot": int(p["n_boot"]), "n_inputs": n,
                  "n_normal": int(p["n_normal"])}

        feature_model = None
        if "features" in p["distances"]:     # checked before any model is explained
            feature_model = ctx.load_model(ModelRef(p["feature_model"], int(p["feature_seed"])))[0]
            layers = dict(feature_model.named_modules())
            if p["feature_layer"] not in layers:
                raise ConfigError(f"{self.name}.feature_layer", f"{p['feature_layer']!r} is no module of the feature "
                                                                f"model; modules: {', '.join(n for n in layers if n)}")
        cards, maps, tmaps, out = [], [], {f: {} for f in triggered}, []
        for i, (fam, label, ref) in enumerate(pop):
            model, card = ctx.load_model(ref)
            cards.append(card)
            maps.append(_render(explainer, model, x, y, eseed, ctx.device, p))
            # triggered inputs: only the normal models and the trigger's own family score them
            for f, (tx, ty) in triggered.items():
                if fam in ("normal", f):
                    tmaps[f][i] = _render(explainer, model, tx, ty, eseed, ctx.device, p)
        acc = torch.tensor([float(c.get("clean_accuracy") or math.nan) for c in cards])
        is_normal = torch.tensor([f == "normal" for f, _, _ in pop])
        floor = float(acc[is_normal].min()) - float(p["collapse_margin"])
        chance = 1.5 / world.num_classes
        took = torch.tensor([bool(c.get("bug_took")) and bool(c.get("bug_criteria")) for c in cards])
        # low accuracy is the bug's effect when its criterion took (a watermark-only model fails clean
        # images) unless it is near chance (a constant predictor "takes" a backdoor of its class)
        keep = is_normal | (acc >= floor) | (took & (acc > chance))
        for i, (fam, label, ref) in enumerate(pop):
            if not bool(keep[i]):
                out.append(row(ctx, "collapsed", float(acc[i]), None, None, 1, series="collapsed", anomaly=fam,
                               member=label, note=f"clean accuracy {float(acc[i]):.3f} below the lowest normal model's "
                                                  f"{float(acc[is_normal].min()):.3f} minus {p['collapse_margin']} "
                                                  "and its bug did not take (or it is near chance): left out of the "
                                                  "audit", **common))
        idx = keep.nonzero().flatten()
        fams = [pop[i][0] for i in idx.tolist()]
        labels = [pop[i][1] for i in idx.tolist()]
        normal = torch.tensor([f == "normal" for f in fams])
        stack = torch.stack([maps[i] for i in idx.tolist()])                        # [M, n, H, W]
        # triggered inputs' maps where computed (the normal models and the trigger's family), zeros as
        # placeholders elsewhere: identification() leaves those rows out
        tstack = {f: torch.stack([tm.get(i, torch.zeros_like(maps[i][:k])) for i in idx.tolist()])
                  for f, tm in tmaps.items()}
        for m_i in idx.tolist():
            fam = pop[m_i][0]
            effect = _effect(cards[m_i])
            out.append(row(ctx, "member", float(acc[m_i]), None, None, 1, series="member", anomaly=fam,
                           member=pop[m_i][1], clean_accuracy=float(acc[m_i]), bug_took=cards[m_i].get("bug_took"),
                           effect=effect, note="a population member: its clean accuracy and its bug's measured effect",
                           **common))
        roc: dict[tuple, list] = {}
        for dist in p["distances"]:
            fn = _distance(dist, feature_model, p["feature_layer"])
            d = fn(stack)                                                           # [n, M, M]
            per_input = P.loo_scores(d, normal)                                      # [n, M]
            score = per_input.nanmean(0)
            flag = P.flagged(score, normal)
            extra = {"distance": dist, **common}
            for j, (fam, label) in enumerate(zip(fams, labels)):
                out.append(row(ctx, "score", float(score[j]), None, None, n, series="model", anomaly=fam, member=label,
                               flagged=bool(flag[j]), note="mean over inputs of the leave-one-out distance ratio", **extra))
            for fam in dict.fromkeys(f for f in fams if f != "normal"):
                sel = torch.tensor([f == fam for f in fams])
                auc, lo, hi, cnt = auroc_ci(score[sel], score[normal], int(p["n_boot"]), float(p["ci_level"]),
                                            stream_seed(ctx.seed, f"model_anomaly/{ctx.method}/{dist}/{fam}"))
                frac = float(flag[sel].double().mean())
                fx = {"anomaly": fam, "n_models": int(sel.sum()), **extra}
                out.append(row(ctx, "flagged_fraction", frac, None, None, int(sel.sum()), series="family",
                               note="fraction of the family's models scored above every normal model", **fx))
                out.append(row(ctx, "auroc", auc, lo, hi, cnt, series="family",
                               note="AUROC of the family's model scores against the normal models' (model = unit; "
                                    "stratified bootstrap CI)", **fx))
                if fam in triggered:
                    ids, curves = identification(stack, sel, normal, tstack[fam], k, fn)
                    roc[(dist, fam)] = curves
                    vals = torch.tensor(ids, dtype=torch.float64)
                    out.append(row(ctx, "input_identification_auroc", float(vals.mean()), float(vals.min()),
                                   float(vals.max()), len(ids), series="family", values=",".join(f"{v:.4f}" for v in ids),
                                   note=f"per model of the family: AUROC of per-input scores on {k} triggered vs {k} clean "
                                        "inputs (value: mean; ci_low/ci_high: min and max over the family's models)",
                                   **fx))
                verdict = detects_verdict(lo, hi, frac)
                out.append(row(ctx, "detects", auc, lo, hi, cnt, verdict=verdict, series="verdict", rule=RULE,
                               flagged_fraction=frac, **fx))
        save_figure_data(ctx, stack[:, :int(p["figure_inputs"])], x[:int(p["figure_inputs"])], fams, labels, roc)
        return out

    def figures(self, rows, artifacts):
        """Score distributions per family against the normal population (one panel per method and
        distance), the paper-style grid (rows: models; columns: the same inputs) and the
        input-identification ROC curves."""
        from xaudit.checks.audit_figures import grids, roc_figure, scores_figure

        return scores_figure(rows) + grids(artifacts) + roc_figure(artifacts)


def _render(explainer, model, x, y, seed, device, p) -> torch.Tensor:
    """The visualizations of ``x`` as images: an attribution method's maps rendered as float [n, H, W]
    (sum_c |attr| scaled to [0, 1]; failed maps are 0), or the caricatures float [n, C, H, W] in [0, 1] of
    the inputs (matching ``caricature_layers``; every model's from the same generator seed, so models
    differ only by their weights)."""
    if explainer.kind == "synthesis":
        g = torch.Generator(device=device).manual_seed(int(seed))
        return explainer.synthesize(model, {"images": x.to(device), "layers": list(p["caricature_layers"])},
                                    generator=g).cpu().float()
    raw, failed = explain_raw(explainer, model, x.to(device), y.to(device), seed)
    return post_process(raw.cpu(), y, failed).zero_one[:, 0].float()


def _distance(name: str, feature_model, layer: str):
    """A function of a map stack [M, I, H, W] -> distances [I, M, M]."""
    from xaudit import metrics
    from xaudit.metrics import population as P

    def ssim(a, b):     # [n, H, W] maps, or [n, C, H, W] images: the mean over channels (skimage's channel_axis)
        if a.dim() == 3:
            return metrics.ssim(a, b, data_range=1.0)
        n, c = a.shape[:2]
        return metrics.ssim(a.flatten(0, 1), b.flatten(0, 1), data_range=1.0).view(n, c).mean(1)

    if name == "ssim":
        return lambda st: P.pairwise(st, lambda a, b: 1.0 - ssim(a, b))
    if name == "l2":
        return lambda st: P.pairwise(st, lambda a, b: (a - b).flatten(1).pow(2).mean(1).sqrt())
    from xaudit.explain.synthesis.caricature import activations

    def embed(st):
        """LPIPS-style: the layer's feature map, unit-normalized over channels at each position, flattened
        and scaled by 1/sqrt(positions), so the squared distance of two embeddings is the mean over
        positions of the squared difference of the normalized features (LPIPS without its learned
        channel weights and with one layer)."""
        m, i = st.shape[:2]
        h, w = st.shape[-2:]
        ch = _channels(feature_model)
        flat = (st.reshape(m * i, 1, h, w).expand(-1, ch, -1, -1) if st.dim() == 4
                else st.reshape(m * i, -1, h, w))      # a caricature is an image: fed as it is
        with torch.no_grad():
            a = torch.cat([activations(feature_model, flat[s:s + 512], [layer])[layer] for s in range(0, len(flat), 512)])
        if a.dim() != 4:
            raise ConfigError("model_anomaly.feature_layer", f"{layer!r} gives {tuple(a.shape)}: the feature "
                                                             "distance needs a convolutional layer's map [N, D, h, w]")
        a = torch.nn.functional.normalize(a, dim=1) / math.sqrt(a.shape[2] * a.shape[3])
        return a.flatten(1).view(m, i, -1)

    return lambda st: P.pairwise_sqeuclidean(embed(st))


def _channels(model) -> int:
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.in_channels
    return 3


def identification(stack: torch.Tensor, family: torch.Tensor, normal: torch.Tensor, triggered: torch.Tensor,
                   k: int, fn) -> list[float]:
    """Per model of the family: AUROC of its per-input scores on ``k`` triggered inputs (``triggered``
    [M, k, H, W]) against the first ``k`` clean inputs (``stack`` [M, n, H, W]), and its per-input scores
    (clean first, then triggered) for the ROC figure."""
    from xaudit import metrics
    from xaudit.metrics import population as P

    # a model's leave-one-out score reads only the normal models and itself: the other models' rows
    # (whose triggered inputs were not explained) are left out of the distances
    keep = normal | family
    both = torch.cat([stack[keep, :k], triggered[keep]], 1)                       # [M', 2k, H, W]
    s = P.loo_scores(fn(both), normal[keep])                                       # [2k, M']
    labels = torch.cat([torch.zeros(k, dtype=torch.bool), torch.ones(k, dtype=torch.bool)])
    out, curves = [], []
    for j in family[keep].nonzero().flatten().tolist():
        v = s[:, j]
        ok = torch.isfinite(v)
        out.append(float(metrics.auroc(v[ok], labels[ok])) if ok.all() else math.nan)
        curves.append(v.tolist())
    return out, curves


def auroc_ci(positives: torch.Tensor, negatives: torch.Tensor, n_boot: int, level: float, seed: int):
    """(AUROC of positives scored above negatives, ci_low, ci_high, n): :func:`xaudit.metrics.auroc_bootstrap`."""
    from xaudit import metrics
    from xaudit.core import rng

    ci = metrics.auroc_bootstrap(positives, negatives, level=level, n_boot=n_boot, generator=rng.generator(seed))
    return float(ci.estimate), float(ci.low), float(ci.high), int(ci.n)


def save_figure_data(ctx: CheckContext, maps: torch.Tensor, images: torch.Tensor, families: list[str],
                     labels: list[str], roc: dict[tuple, list]) -> None:
    """One npz per cell: the rendered maps of the first inputs for every audited model, the inputs, and
    per (distance, family) the family's per-input identification scores (clean first, then triggered)."""
    if not ctx.artifacts_dir:
        return
    from pathlib import Path

    import numpy as np

    from xaudit.checks.debugging import artifact_name

    path = Path(ctx.artifacts_dir) / artifact_name(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {f"roc__{d}__{f}": np.asarray(v, dtype=np.float32) for (d, f), v in roc.items() if v}
    np.savez_compressed(path, check=ctx.check, method=ctx.method, model=ctx.model_group, world=ctx.world_id,
                        seed=ctx.seed, maps=maps.numpy().astype(np.float16), images=images.numpy().astype(np.float16),
                        families=np.array(families), labels=np.array(labels), **extra)


def detects_verdict(lo, hi, flagged_fraction: float) -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if lo > 0.5 and flagged_fraction >= 0.5:
        return "pass"
    if hi <= 0.5 or (flagged_fraction < 0.5 and lo <= 0.5):
        return "fail"
    return "inconclusive"


def _effect(card: dict[str, Any]) -> str:
    """The card's measured effect of the bug, as 'metric=value' pairs."""
    crit = card.get("bug_criteria") or []
    return "; ".join(f"{c.get('bug')}: {c.get('metric')}={c.get('value')}" for c in crit) or "no bug criterion"


__all__ = ["ModelAnomaly", "FAMILIES", "detects_verdict", "identification", "auroc_ci"]
