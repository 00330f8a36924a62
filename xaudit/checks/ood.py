"""Test-time contamination: out-of-distribution inputs (docs/protocols.md#2-debugging-tests, Adebayo
et al. 2020).

The published test explains inputs from domain B with a model trained on B and with models trained
on other domains and compares the maps (SSIM, Spearman); its finding: the maps look alike (high SSIM)
while their rank correlation is low. Here the inputs are the first ``n_images`` test images of the
cell's world; the models are

- the in-domain model: the cell's model group at seed s, and the same spec at seed s + offset
  (``reference_seed_offset``): how far maps move between two equally good in-domain models;
- one out-of-domain model per entry of ``domains[<cell world>]``, trained with seed s + offset too:
  both compared pairs then differ in their training seed (initialization, data order), so a
  difference between them is the domain's. (With the out-of-domain model at seed s, a model trained
  on inverted shapes shared its initialization and data order with the in-domain model, and its maps
  were *more* alike the in-domain model's than those of the in-domain model's other seed: +0.28 SSIM
  for saliency, measured.) Its entries:

  - ``{"world": cfg}``: the model group trained on another world. It sees the cell's inputs through
    :func:`xaudit.world.convert.to_frame` (central pad or crop with ``fill``, default 0, channels
    repeated or turned to luminance, never resampled: digits 28x28x1 -> a shapes CNN 32x32x3 is a
    2 px black border and the channel repeated three times), and its maps come back to the input's
    frame with :func:`~xaudit.world.convert.from_frame` before post-processing, so every map lines up
    pixel for pixel with the input it explains;
  - ``{"shift": bug_config}``: the group's spec (its own bugs kept) trained on the cell's world with
    that :class:`xaudit.world.bugs.Shift` applied to all its training data (e.g. inverted shapes),
    explaining the normal test images, which are out of distribution for it. A within-world shift
    needs one extra model where the published design needs two (a model per domain explaining the
    other domain's inputs): the in-domain models of the cell explain the same inputs in the same
    frame. Its accuracy on the explained (unshifted) images and on the same images shifted are row
    columns.

Every model explains its own prediction (the argmax on the input as it sees it). A method that does
not use the model (``uses_model=False``: ``edge``, ``random``, ...) is explained on the cell's own
inputs for every model: with the model out of the loop there is nothing to convert for, and a map
drawn in another frame (``random``'s noise on a 3x32x32 tensor) would differ from the in-domain map
for a reason that has nothing to do with the model.

Per out-of-domain model and measure (Spearman of abs maps, Spearman of signed maps, SSIM of 0-1 maps,
HOG similarity), per image: ``reference`` = in-domain seed s vs seed s + offset; ``buggy`` =
in-domain seed s vs the out-of-domain model (seed s + offset); ``difference`` = buggy - reference (paired per image);
``calibration`` = in-domain seed s vs a seeded ``random`` map (about 0). ``reference`` and
``calibration`` do not depend on the domain: one row each per measure, ``domain`` None.

Verdict per (domain, measure) (:func:`xaudit.checks.debugging.margin_verdict`, direction "below"):
``pass`` (the maps reveal the shift) when CI_high(difference) < -margin, i.e. the in-domain pair is
more similar than the in/out pair by more than ``margin``; ``fail`` when CI_low(difference) >
-margin; ``inconclusive`` otherwise. A model-independent method gives a difference of exactly 0 and
fails.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from xaudit.checks.base import CHECKS, CheckContext, ModelRef, row
from xaudit.checks.debugging import (DebuggingCheck, failure_rows, margin_verdict, rule_text, save_panels,
                                     series_cis, series_rows, summary)
from xaudit.checks.toolkit import explain_seed as shared_explain_seed
from xaudit.checks.toolkit import (Maps, Similarity, check_int, explain_maps, explain_robust, load_batch,
                                   finite_or_none, make_world, post_process, predict, stream_seed)
from xaudit.core import rng
from xaudit.core.errors import ConfigError, NotApplicable, UnknownName, check_range

MEASURES = ("spearman_abs", "spearman_signed", "ssim", "hog")
DIRECTION = "below"     # the in/out pair must be LESS similar than the in-domain pair
DOMAIN_KINDS = ("world", "shift")
DEFAULT_DOMAINS: dict[str, list[dict[str, Any]]] = {
    "digits": [{"world": {"world": "shapes", "size": 32, "seed": 0}}],
    "shapes": [{"shift": {"kind": "shift", "shift_kind": "invert"}}],
}
NOTES = {"reference": "in-domain model (seed s) vs the same spec at seed s + reference_seed_offset",
         "buggy": "in-domain model (seed s) vs the out-of-domain model, on the same inputs",
         "difference": "buggy - reference, paired per input",
         "calibration": "in-domain model (seed s) vs the `random` baseline's map (uniform noise): about 0"}


@dataclass(frozen=True)
class Domain:
    """One out-of-domain model of a cell's world.

    kind:   "world" (the group trained on another world) or "shift" (trained on shifted data)
    label:  the rows' ``domain`` column: ``world:shapes@32``, ``shift:invert``
    config: the other world's canonical config (kind "world") or the Shift's canonical bug config
    fill:   the pad value of :func:`xaudit.world.convert.to_frame` (kind "world"), in [0, 1]
    given:  the world config as the entry wrote it (the ModelRef's world; the runner canonicalizes it)
    """
    kind: str
    label: str
    config: dict[str, Any]
    fill: float = 0.0
    given: dict[str, Any] | None = None

    def ref(self, group: str, seed: int) -> ModelRef:
        if self.kind == "world":
            return ModelRef(group, seed, world=self.given)
        return ModelRef({"base": group, "name": f"{group}+{self.config['shift_kind']}",
                         "bugs": [*_group_bugs(group), self.config]}, seed)


def _group_bugs(group: str) -> list[Any]:
    """The bugs the group's own spec plants (kept beside the shift: spec lists are replaced, not merged,
    by ``base``); none when the group is not a spec the zoo can read (the resolver then reports it)."""
    from xaudit.zoo.spec import raw_spec

    try:
        return list(copy.deepcopy(raw_spec(group).get("bugs") or []))
    except (ConfigError, UnknownName):
        return []


def _world_entry(where: str, cfg: Any, fill: Any, cell_world: Mapping[str, Any]) -> Domain:
    from xaudit import world as world_mod
    from xaudit.world.base import world_label

    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("world"), str):
        raise ConfigError(f"{where}.world", f"must be a world config with a 'world' name, e.g. "
                                            f"{{world: shapes, size: 32, seed: 0}}; got {cfg!r}")
    params = {k: v for k, v in cfg.items() if k != "world"}
    try:
        canonical = dict(world_mod.get(cfg["world"], **params).config())
    except UnknownName as e:
        raise ConfigError(f"{where}.world.world", str(e)) from None
    except ConfigError as e:
        raise ConfigError(f"{where}.world.{e.field}", str(e).split(": ", 1)[-1]) from None
    except TypeError as e:
        raise ConfigError(f"{where}.world", f"bad parameters for world {cfg['world']!r}: {e}") from None
    if canonical == dict(cell_world):
        raise ConfigError(f"{where}.world", f"is the cell's own world {world_label(canonical)}: an out-of-domain "
                                            "model must be trained on another world (or use a 'shift' entry)")
    check_range(f"{where}.fill", fill, 0.0, 1.0)
    return Domain("world", f"world:{world_label(canonical)}", canonical, float(fill), copy.deepcopy(dict(cfg)))


def _shift_entry(where: str, cfg: Any, cell_world: Mapping[str, Any]) -> Domain:
    from xaudit import world as world_mod
    from xaudit.world.bugs import SHIFTS, Shift

    if not isinstance(cfg, Mapping) or cfg.get("kind") != "shift":
        raise ConfigError(f"{where}.shift", "must be a Shift bug config {kind: shift, shift_kind: invert, ...} "
                                            f"(shift kinds: {', '.join(SHIFTS)}); got {cfg!r}")
    try:
        bug: Shift = world_mod.bug_from_config(dict(cfg))   # kind "shift": a Shift
        bug.validate(world_mod.get(cell_world["world"], **{k: v for k, v in cell_world.items() if k != "world"}))
    except ConfigError as e:
        field = e.field.split(".")[-1]
        field = "shift_kind" if field == "kind" else field   # Shift's own 'kind' is spelled shift_kind in a config
        raise ConfigError(f"{where}.shift.{field}", str(e).split(": ", 1)[-1]) from None
    except UnknownName as e:
        raise ConfigError(f"{where}.shift", str(e)) from None
    label = f"shift:{bug.shift}"
    if bug.shift in ("noise", "blur", "contrast"):
        label += f"[severity={bug.severity:g}]"
    elif bug.shift == "world":
        label += f"[other={bug.other}]"
    return Domain("shift", label, bug.config())


def check_domains(value: Any) -> None:
    """The structure of ``domains`` (world name -> list of one-key entries), before any world is
    built; ConfigError names ``ood.domains.<world>[i]``."""
    if not isinstance(value, Mapping):
        raise ConfigError("ood.domains", f"must map a world name to a list of out-of-domain models, e.g. "
                                         f"{DEFAULT_DOMAINS}; got {value!r}")
    for world_name, entries in value.items():
        where = f"ood.domains.{world_name}"
        if not isinstance(entries, (list, tuple)):
            raise ConfigError(where, f"must be a list of entries ({{world: cfg}} or {{shift: bug config}}), "
                                     f"got {entries!r}")
        for i, e in enumerate(entries):
            keys = set(e) if isinstance(e, Mapping) else set()
            kinds = keys & set(DOMAIN_KINDS)
            extra = keys - {*DOMAIN_KINDS, "fill"}
            if len(kinds) != 1 or extra or ("fill" in keys and "world" not in keys):
                raise ConfigError(f"{where}[{i}]", "must be a mapping with exactly one of 'world' (a world "
                                                   "config, optionally with 'fill') or 'shift' (a Shift bug "
                                                   f"config); got {e!r}")


def domains_for(p: dict[str, Any], cell_world: Mapping[str, Any]) -> list[Domain]:
    """The validated out-of-domain models of ``cell_world`` (a world config); an empty list when
    ``domains`` has no entry for it."""
    from xaudit import world as world_mod

    name = cell_world.get("world")
    # canonical, so that an entry naming the cell's own world is recognized however it is spelled
    cell_world = dict(world_mod.get(name, **{k: v for k, v in cell_world.items() if k != "world"}).config())
    out: list[Domain] = []
    for i, e in enumerate(p["domains"].get(name) or []):
        where = f"ood.domains.{name}[{i}]"
        out.append(_world_entry(where, e["world"], e.get("fill", 0.0), cell_world) if "world" in e
                   else _shift_entry(where, e["shift"], cell_world))
    labels = [d.label for d in out]
    dup = sorted({lb for lb in labels if labels.count(lb) > 1})
    if dup:
        raise ConfigError(f"ood.domains.{name}", f"two entries are the same domain {dup[0]!r}; list each once")
    return out


# ---------------------------------------------------------------------------------- the check
@CHECKS.register("ood")
class OutOfDistribution(DebuggingCheck):
    """In-domain model vs models trained on other domains, explaining the same in-domain inputs."""

    name = "ood"
    bug = "OOD input"
    worlds = ("digits", "shapes")
    verdict_key = ("metric", "domain")
    scorecard_metric = "spearman_abs"
    extra_defaults = {"margin": 0.05, "reference_seed_offset": 1, "require_bug_took": True,
                      "domains": DEFAULT_DOMAINS}
    description = (
        "Explain the cell world's test images with the in-domain model (seed s), the same spec at seed "
        "s + reference_seed_offset, and each out-of-domain model of `domains` (the group trained on another "
        "world, seeing the images centrally padded/cropped and channel-converted, its maps brought back "
        "pixel for pixel; or the group trained on shifted data, e.g. inverted shapes); each model explains "
        "its own prediction. Per domain and measure (Spearman of abs and of signed maps, SSIM of 0-1 maps, "
        "HOG), paired per image: difference = sim(in-domain, out-of-domain) - sim(in-domain, other seed). "
        "Verdict per domain and measure: pass (reveals) if CI_high(difference) < -margin; fail if "
        "CI_low(difference) > -margin; else inconclusive (margin 0.05 by default): pass means the in-domain "
        "pair is more similar than the in/out pair by more than the margin, i.e. the maps reveal the "
        "out-of-distribution input. A random-map calibration is reported beside it; methods that ignore the "
        "model give a difference of exactly 0 and fail.")

    def resolve(self, params: dict[str, Any] | None) -> dict[str, Any]:
        p = super().resolve(params)
        check_int("ood.reference_seed_offset", p["reference_seed_offset"], 1, 1_000_000)
        check_domains(p["domains"])
        return p

    def models(self, params: dict[str, Any], model_group: str, seed: int,
               world: dict[str, Any] | None = None) -> list[ModelRef]:
        p = self.resolve(params)
        refs = [ModelRef(model_group, seed), ModelRef(model_group, seed + p["reference_seed_offset"])]
        if world is not None:
            refs += [d.ref(model_group, seed + p["reference_seed_offset"]) for d in domains_for(p, world)]
        return refs

    def run(self, ctx: CheckContext) -> list[dict[str, Any]]:
        from xaudit import explain, zoo

        p = self.resolve(ctx.params)
        cell_world = dict(make_world(ctx).config())
        domains = domains_for(p, cell_world)
        if not domains:
            name = cell_world["world"]
            raise NotApplicable(
                f"ood: no out-of-domain model for world {name!r}; add an entry to the check's `domains` "
                f"parameter, e.g. domains: {{{name}: [{{world: {{world: <another world>}}}}]}} (a model trained on "
                "another world) or [{shift: {kind: shift, shift_kind: invert}}] (a model trained on shifted data)")
        explainer = explain.get(ctx.method, **(ctx.method_params or {}))
        batch = load_batch(ctx, p["n_images"], "test")
        x = batch.images.to(ctx.device)
        labels = batch.true_labels
        size = tuple(x.shape[-2:])
        # the sanity checks' seed: the two in-domain map sets are their original and retrain-reference maps,
        # found in the worker's memo when the same worker ran them
        explain_seed = shared_explain_seed(ctx.seed, ctx.method)
        offset = p["reference_seed_offset"]

        def load(ref: ModelRef):
            model, card = ctx.load_model(ref)
            if p["require_bug_took"]:
                zoo.require_bug_took(card, what="ood")
            return model, card

        model, _ = load(ModelRef(ctx.model_group, ctx.seed))
        other_seed, _ = load(ModelRef(ctx.model_group, ctx.seed + offset))
        target = predict(model, x)
        in_maps = explain_maps(explainer, model, x, target, explain_seed)
        seed_maps = explain_maps(explainer, other_seed, x, predict(other_seed, x), explain_seed)
        noise_seed = stream_seed(ctx.seed, "ood/calibration")
        noise = explain.get("random", seed=noise_seed)(model, x, target, generator=rng.generator(noise_seed))
        calibration = post_process(noise, target, [None] * len(x))

        similarity = Similarity(p, size[-1])
        sims = {("reference", None): similarity.compare(in_maps, seed_maps, None),
                ("calibration", None): similarity.compare(in_maps, calibration, None)}
        extra: dict[str, dict[str, Any]] = {}
        ood_maps: dict[str, Maps] = {}
        for d in domains:
            ood_model, card = load(d.ref(ctx.model_group, ctx.seed + offset))
            maps, cols = self._explain_ood(ctx, d, explainer, ood_model, card, x, labels, explain_seed)
            cols["ood_seed"] = ctx.seed + offset
            sims[("buggy", d.label)] = similarity.compare(in_maps, maps, None)
            ood_maps[d.label], extra[d.label] = maps, cols

        rows = self._rows(ctx, p, sims, extra, similarity, labels, target)
        rows += failure_rows(ctx, [("in-domain model", in_maps), ("in-domain, other seed", seed_maps)],
                             domain=None, **self._common(ctx, p, similarity))
        for d in domains:
            rows += failure_rows(ctx, [(f"{d.label} model", ood_maps[d.label])], domain=d.label,
                                 **self._common(ctx, p, similarity))
        k = min(p["figure_images"], len(x))
        if k:
            panels = {"in-domain model": in_maps.abs[:k], "in-domain, other seed": seed_maps.abs[:k],
                      **{f"{lb} model": m.abs[:k] for lb, m in ood_maps.items()}}
            failed = {"in-domain model": [f is not None for f in in_maps.failed[:k]],
                      "in-domain, other seed": [f is not None for f in seed_maps.failed[:k]],
                      **{f"{lb} model": [f is not None for f in m.failed[:k]] for lb, m in ood_maps.items()}}
            save_panels(ctx, x[:k], panels, failed, domains=[d.label for d in domains])
        return rows

    def figures(self, rows, artifacts):
        """The measures per method (one panel per measure and domain: the in/out pair filled, the
        in-domain pair open) and the map grids."""
        from xaudit.checks.debugging import grids, measures_figure

        marks = [("in-domain vs out-of-domain model", "buggy", None),
                 ("in-domain pair (other seed)", "reference", None)]
        return (measures_figure(self.name, rows, marks, what="in-domain vs out-of-domain maps per method",
                                caption="Filled dots: similarity of the in-domain model's maps to the out-of-domain "
                                        "model's, on the same inputs; open dots: of two in-domain models (other "
                                        "seeds); 95% CIs. A method reveals that the input is out of distribution "
                                        "when the filled dot lies clearly below the open one; its verdict letter "
                                        "follows its name.")
                + grids(self.name, artifacts))

    # -- the out-of-domain model's maps, in the input's frame
    @staticmethod
    def _explain_ood(ctx: CheckContext, d: Domain, explainer, model, card: dict, x: torch.Tensor,
                     labels: torch.Tensor, seed: int) -> tuple[Maps, dict[str, Any]]:
        """(maps [N, 1, H, W] aligned with ``x`` [N, C, H, W], the domain's row columns)."""
        from xaudit.checks.memo import EXPLANATIONS
        from xaudit.world.convert import from_frame, to_frame

        cols: dict[str, Any] = {"domain_kind": d.kind, "ood_model": d.ref(ctx.model_group, ctx.seed).group,
                                "ood_card_clean_accuracy": card.get("clean_accuracy"),
                                "ood_card_train_accuracy": card.get("train_accuracy")}
        if d.kind == "world":
            other = make_world(ctx, d.config)
            seen = to_frame(x, other.channels, other.size, fill=d.fill)
            cols.update(ood_frame=f"{other.channels}x{other.size}x{other.size}", fill=d.fill,
                        ood_accuracy=None, ood_accuracy_shifted=None)
        else:
            seen = x
            shifted = load_batch(ctx, len(x), "test", bugs=[d.config]).images.to(x.device)
            cols.update(ood_frame=f"{x.shape[1]}x{x.shape[2]}x{x.shape[3]}", fill=None,
                        ood_accuracy=float((predict(model, x).cpu() == labels).double().mean()),
                        ood_accuracy_shifted=float((predict(model, shifted).cpu() == labels).double().mean()))
        target = predict(model, seen)
        if not explainer.info.uses_model or seen.shape == x.shape:
            # same frame, or a map that ignores the model: explained on the inputs themselves
            return explain_maps(explainer, model, x, target, seed), cols
        key = EXPLANATIONS.key(explainer, model, seen, target, seed)
        raw, failed = EXPLANATIONS.get_or_compute(key, lambda: explain_robust(explainer, model, seen, target, seed))
        return post_process(from_frame(raw, tuple(x.shape[-2:])), target, failed), cols

    # -- rows
    @staticmethod
    def _common(ctx: CheckContext, p: dict[str, Any], similarity: Similarity) -> dict[str, Any]:
        return {"rule": rule_text("difference", p["margin"], DIRECTION), "margin": float(p["margin"]),
                "ci_level": float(p["ci_level"]), "n_boot": int(p["n_boot"]),
                "reference_seed": ctx.seed + p["reference_seed_offset"], **similarity.columns()}

    def _rows(self, ctx: CheckContext, p: dict[str, Any], sims, extra, similarity: Similarity,
              labels: torch.Tensor, target: torch.Tensor) -> list[dict[str, Any]]:
        """reference, calibration and buggy rows, then per domain and measure the difference and verdict
        rows; ``sims``: (series, domain) -> Similarity.compare's result, ``extra``: domain -> columns."""
        common = self._common(ctx, p, similarity)
        common["in_domain_accuracy"] = float((target.cpu() == labels).double().mean())
        series: dict[tuple, torch.Tensor] = {}
        reasons: dict[tuple, list] = {}
        for (name, domain), by_metric in sims.items():
            for m in MEASURES:
                series[(name, domain, m)], reasons[(name, domain, m)] = by_metric[m]
        for (name, domain) in [k for k in sims if k[0] == "buggy"]:
            for m in MEASURES:
                (b, rb), (r, rr) = sims[("buggy", domain)][m], sims[("reference", None)][m]
                series[("difference", domain, m)] = b - r
                reasons[("difference", domain, m)] = [x or y for x, y in zip(rb, rr)]
        cis = series_cis(series, p, ctx.seed, "ood")
        out = series_rows(ctx, series, reasons, cis, NOTES, extra, **common)
        for key in [k for k in series if k[0] == "difference"]:
            _, domain, m = key
            s = summary(m, series[key], reasons[key], cis[key])
            cols = extra[domain]
            out.append(row(ctx, **s, series="difference", domain=domain, note=NOTES["difference"], **cols, **common))
            buggy, ref = cis[("buggy", domain, m)], cis[("reference", None, m)]
            v = margin_verdict(s["ci_low"], s["ci_high"], p["margin"], DIRECTION)
            out.append(row(ctx, **s, verdict=v, series="verdict", domain=domain, direction=DIRECTION,
                           buggy_value=finite_or_none(buggy[0]), reference_value=finite_or_none(ref[0]),
                           note="difference's CI against -margin", **cols, **common))
        return out
