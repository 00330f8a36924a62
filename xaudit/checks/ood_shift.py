"""Test-time contamination without retraining: one model, its inputs and the same inputs shifted out
of distribution (docs/protocols.md#2-debugging-tests; a variant of Adebayo et al. 2020's test,
implemented as published in :mod:`xaudit.checks.ood`).

The published test explains inputs of domain B with a model trained on B and with models trained on
other domains; it needs models trained for the purpose. This variant needs only the cell's model (a
zoo model, or the user's own model under ``xaudit audit``): the model explains its inputs x and the
same inputs shifted, s(x), by each pixel shift of ``shifts`` (:class:`xaudit.world.bugs.Shift`:
invert, noise, blur, grayscale, contrast), and the test asks whether its maps change more than the
picture itself does.

Choices the published protocol leaves open, or that this variant changes:

- **Why the maps on x stand for the in-domain maps.** For a pixel-wise invertible shift s (invert,
  contrast with severity < 1) the model f∘s⁻¹ is an ideal model of the shifted domain: it classifies
  s(x) exactly as f classifies x. Its maps of s(x) are f's maps of x (for a gradient, up to the
  pixel-wise Jacobian of s⁻¹: a sign for invert, a constant factor for contrast, neither of which
  the abs, rank and 0-1 measures see). So the published pair (in-domain model, out-of-domain model)
  on the shifted inputs becomes (f on x, f on s(x)). Noise, blur and grayscale are not invertible:
  there the pairing is the same, without the ideal-model argument.
- **The reference is the edge map, not a second in-domain model.** The published reference is how
  far maps move between two in-domain models (their training seed); with one model and two inputs
  the question is instead how much of the change of the maps is the picture's own. The ``edge``
  baseline (Sobel, no model) on x and on s(x), post-processed the same way, measures that: under
  invert the edge magnitudes are unchanged (similarity about 1, below 1 only where rounding breaks
  exactly tied values, so nearly any change of the maps counts); under noise or blur they change,
  and the maps must change more.
- **Each input explains its own prediction** (as in :mod:`xaudit.checks.ood`): the model's argmax on
  x for x, on s(x) for s(x). The explanations of x use the sanity checks' explanation seed on the
  same images and targets, so the worker's memo serves them when those checks ran first.
- **Inputs**: the first ``n_images`` images of ``split`` (default "test") of the cell's world, and
  the same indices with the shift applied (``force=True``; a Shift touches every image anyway). A
  ``shift_kind: world`` entry (another world's images in this world's frame) is refused: a model
  trained on another world is what the ``ood`` check tests.
- **Model behaviour** per shift, as columns of that shift's rows: ``agreement`` (share of inputs
  whose predicted class is the same on x and s(x)), ``accuracy`` / ``accuracy_shifted`` (against the
  true labels), ``confidence`` / ``confidence_shifted`` (mean max softmax). They say whether the shift
  moved the model out of distribution; they do not gate the verdict.

Per shift and measure (Spearman of abs maps, Spearman of signed maps, SSIM of 0-1 maps, HOG
similarity), per image: ``shifted`` = sim(method map on x, method map on s(x)); ``edge`` = sim(edge
map on x, edge map on s(x)); ``difference`` = shifted - edge (paired per image); ``calibration`` =
sim(method map on x, a seeded ``random`` map) (about 0; one row per measure, ``domain`` None). Inputs
whose map failed, or whose similarity is undefined, are excluded (NaN) and counted on the rows.

Verdict per (shift, measure) (:func:`xaudit.checks.debugging.margin_verdict`, direction "below"):
``pass`` (the maps reveal the shifted input) when CI_high(difference) < -margin, i.e. the maps moved
more than the edge map by more than ``margin`` (default 0); ``fail`` when CI_low(difference) >
-margin (with margin 0 also when CI_low = 0); ``inconclusive`` otherwise. A model-independent method
fails: ``edge`` gives a difference of exactly 0, ``random`` draws the same seeded noise for x and
s(x) (similarity 1, a difference >= 0).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from xaudit.checks.base import CHECKS, CheckContext, ModelRef, row
from xaudit.checks.debugging import (DebuggingCheck, failure_rows, margin_verdict, rule_text, save_panels,
                                     series_cis, series_rows, summary)
from xaudit.checks.ood import Domain, _shift_entry
from xaudit.checks.toolkit import (Maps, Similarity, explain_maps, explain_seed, finite_or_none, load_batch,
                                   make_world, post_process, predict, stream_seed)
from xaudit.core import rng
from xaudit.core.canon import canonical_json
from xaudit.core.errors import ConfigError, check_choice

NAME = "ood_shift"
MEASURES = ("spearman_abs", "spearman_signed", "ssim", "hog")
DIRECTION = "below"     # the maps must be LESS similar across the shift than the edge maps are
DEFAULT_SHIFTS: list[dict[str, Any]] = [
    {"kind": "shift", "shift_kind": "invert"},
    {"kind": "shift", "shift_kind": "noise", "severity": 0.2},
    {"kind": "shift", "shift_kind": "blur", "severity": 0.5},
]
NOTES = {"shifted": "the model's map on x vs its map on the shifted input s(x) (each its own prediction)",
         "edge": "the edge (Sobel) map of x vs that of s(x): how much the picture itself changed",
         "difference": "shifted - edge, paired per input",
         "calibration": "the model's map on x vs the `random` baseline's map (uniform noise): about 0"}
BEHAVIOUR = ("agreement", "accuracy", "accuracy_shifted", "confidence", "confidence_shifted")


# ---------------------------------------------------------------------------------- the shifts
def check_shifts(value: Any) -> None:
    """The structure of ``shifts`` (a non-empty list), before any world is built."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{NAME}.shifts", "must be a non-empty list of Shift bug configs, e.g. "
                                            f"{DEFAULT_SHIFTS}; got {value!r}")


def shifts_for(p: dict[str, Any], cell_world: Mapping[str, Any]) -> list[Domain]:
    """The validated shifts of ``p["shifts"]`` on ``cell_world`` (a world config, whose splits
    ``p["split"]`` must name), each a
    :class:`xaudit.checks.ood.Domain` with its label (``shift:noise[severity=0.2]``) and canonical
    Shift config; ConfigError names ``ood_shift.shifts[i]`` or its field."""
    from xaudit import world as world_mod

    check_shifts(p["shifts"])
    name = cell_world.get("world")
    world = world_mod.get(name, **{k: v for k, v in cell_world.items() if k != "world"})
    check_choice(f"{NAME}.split", p["split"], world.splits)
    cell_world = dict(world.config())
    out: list[Domain] = []
    for i, cfg in enumerate(p["shifts"]):
        where = f"{NAME}.shifts[{i}]"
        if isinstance(cfg, Mapping) and cfg.get("kind") == "shift" and cfg.get("shift_kind") == "world":
            raise ConfigError(f"{where}.shift_kind", "'world' (another world's images) is not a pixel shift of "
                                                     "this model's inputs; the `ood` check tests models trained "
                                                     "on another world (its `domains` parameter)")
        try:
            d = _shift_entry(where, cfg, cell_world)
        except ConfigError as e:
            # _shift_entry names the entry's fields under '<where>.shift'; here the entry is the config itself
            field = e.field
            if field == f"{where}.shift" or field.startswith(f"{where}.shift."):
                field = where + field[len(f"{where}.shift"):]
            raise ConfigError(field, str(e).split(": ", 1)[-1]) from None
        out.append(d)
    labels = [d.label for d in out]
    dup = sorted({lb for lb in labels if labels.count(lb) > 1})
    if dup:
        raise ConfigError(f"{NAME}.shifts", f"two entries are the same shift {dup[0]!r}; list each once")
    return out


# ---------------------------------------------------------------------------------- model behaviour
@torch.inference_mode()
def max_softmax(model, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """float64 [N]: the model's largest softmax probability per input (eval mode for the call)."""
    was = model.training
    model.eval()
    try:
        return torch.cat([torch.softmax(model(x[i:i + batch]).double(), 1).amax(1)
                          for i in range(0, len(x), batch)]).cpu()
    finally:
        model.train(was)


def behaviour(target: torch.Tensor, target_shifted: torch.Tensor, labels: torch.Tensor,
              conf: torch.Tensor, conf_shifted: torch.Tensor) -> dict[str, float]:
    """The model-behaviour columns of one shift's rows."""
    t, ts, y = target.cpu(), target_shifted.cpu(), labels.cpu()
    return {"agreement": float((t == ts).double().mean()),
            "accuracy": float((t == y).double().mean()),
            "accuracy_shifted": float((ts == y).double().mean()),
            "confidence": float(conf.mean()), "confidence_shifted": float(conf_shifted.mean())}


# ---------------------------------------------------------------------------------- the check
@CHECKS.register(NAME)
class OutOfDistributionShift(DebuggingCheck):
    """One model explaining its inputs and the same inputs shifted out of distribution."""

    name = NAME
    bug = "OOD input"
    verdict_key = ("metric", "domain")
    scorecard_metric = "spearman_abs"
    extra_defaults = {"split": "test", "shifts": DEFAULT_SHIFTS, "margin": 0.0}
    description = (
        "A retraining-free variant of the published test-time contamination test (Adebayo et al. 2020; the "
        "`ood` check implements the published one): one model, no other model trained. The cell's model "
        "explains the first n_images images of `split` (x) and the same images with each pixel shift of "
        "`shifts` applied (s(x): invert, noise, blur, grayscale, contrast; default invert, noise 0.2, blur "
        "0.5), each input its own predicted class; the edge (Sobel) map of x and of s(x) is the reference for "
        "how much the picture itself changed. Per shift and measure (Spearman of abs and of signed maps, SSIM "
        "of 0-1 maps, HOG), paired per image: difference = sim(map on x, map on s(x)) - sim(edge map on x, "
        "edge map on s(x)). Verdict per shift and measure: pass (reveals) if CI_high(difference) < -margin; "
        "fail if CI_low(difference) > -margin (with margin 0, also if CI_low = 0); else inconclusive (margin 0 "
        "by default): pass means the maps moved more than the edge map did, i.e. they reveal the shifted input. "
        "The model's agreement between x and s(x), its accuracy and its mean confidence on both are reported "
        "beside it (they do not gate the verdict), with a random-map calibration; methods that ignore the "
        "model fail (edge: a difference of exactly 0; random: the same noise on x and s(x)).")

    def resolve(self, params: dict[str, Any] | None) -> dict[str, Any]:
        p = super().resolve(params)
        if not isinstance(p["split"], str):
            raise ConfigError(f"{NAME}.split", f"must be the name of a split of the world, e.g. 'test'; got {p['split']!r}")
        check_shifts(p["shifts"])
        return p

    def models(self, params: dict[str, Any], model_group: str, seed: int,
               world: dict[str, Any] | None = None) -> list[ModelRef]:
        p = self.resolve(params)
        if world is not None:
            shifts_for(p, world)      # refuse a bad entry when the plan is made
        return [ModelRef(model_group, seed)]

    def run(self, ctx: CheckContext) -> list[dict[str, Any]]:
        from xaudit import explain

        p = self.resolve(ctx.params)
        shifts = shifts_for(p, dict(make_world(ctx).config()))
        explainer = explain.get(ctx.method, **(ctx.method_params or {}))
        edge = explain.get("edge")
        model, _ = ctx.load_model(ModelRef(ctx.model_group, ctx.seed))
        n = p["n_images"]
        batch = load_batch(ctx, n, p["split"])
        x = batch.images.to(ctx.device)
        labels = batch.true_labels.cpu()
        seed = explain_seed(ctx.seed, ctx.method)   # the sanity checks' seed: x's maps come from the memo

        target = predict(model, x)
        conf = max_softmax(model, x)
        maps_x = explain_maps(explainer, model, x, target, seed)
        edge_x = post_process(edge(model, x, target), target, [None] * len(x))
        noise_seed = stream_seed(ctx.seed, f"{NAME}/calibration")
        noise = explain.get("random", seed=noise_seed)(model, x, target, generator=rng.generator(noise_seed))
        calibration = post_process(noise, target, [None] * len(x))

        similarity = Similarity(p, x.shape[-1])
        sims = {("calibration", None): similarity.compare(maps_x, calibration, None)}
        extra: dict[str, dict[str, Any]] = {}
        shifted_inputs: dict[str, torch.Tensor] = {}
        shifted_maps: dict[str, tuple[Maps, Maps]] = {}
        for d in shifts:
            xs = load_batch(ctx, n, p["split"], bugs=[d.config], force=True).images.to(ctx.device)
            target_s = predict(model, xs)
            maps_s = explain_maps(explainer, model, xs, target_s, seed)
            edge_s = post_process(edge(model, xs, target_s), target_s, [None] * len(xs))
            sims[("shifted", d.label)] = similarity.compare(maps_x, maps_s, None)
            sims[("edge", d.label)] = similarity.compare(edge_x, edge_s, None)
            extra[d.label] = {"shift": canonical_json(d.config), "shift_kind": d.config.get("shift_kind"),
                              **behaviour(target, target_s, labels, conf, max_softmax(model, xs))}
            shifted_inputs[d.label], shifted_maps[d.label] = xs, (maps_s, edge_s)

        common = self._common(p, similarity)
        rows = self._rows(ctx, p, sims, extra, [d.label for d in shifts], common)
        rows += failure_rows(ctx, [("model on x", maps_x)], domain=None, **common)
        for d in shifts:
            rows += failure_rows(ctx, [(f"model on {d.label}", shifted_maps[d.label][0])], domain=d.label,
                                 **extra[d.label], **common)
        k = min(p["figure_images"], len(x))
        if k:
            self._save_figure_data(ctx, x[:k], k, maps_x, edge_x, shifted_inputs, shifted_maps)
        return rows

    def figures(self, rows, artifacts):
        """The measures per method (one panel per measure and shift: the method's maps across the shift
        filled, the edge maps' open) and the map grids."""
        from xaudit.checks.debugging import grids, measures_figure

        marks = [("method maps: x vs s(x)", "shifted", None), ("edge maps: x vs s(x)", "edge", None)]
        return (measures_figure(self.name, rows, marks, what="maps of x vs maps of shifted x per method",
                                caption="Filled dots: similarity of a method's maps of x and of the shifted s(x); "
                                        "open dots: the same for the Sobel edge maps, which only see the pixels "
                                        "(95% CIs). A method reveals the shift when its maps move more than the edge "
                                        "maps do (the filled dot below the open one); its verdict letter follows its "
                                        "name.")
                + grids(self.name, artifacts))

    # -- figure data
    @staticmethod
    def _save_figure_data(ctx: CheckContext, x: torch.Tensor, k: int, maps_x: Maps, edge_x: Maps,
                          inputs: dict[str, torch.Tensor], maps: dict[str, tuple[Maps, Maps]]) -> None:
        """Per input: the method's and the edge map of x, then per shift s(x) (grey: the channel mean),
        the method's map of s(x) and the edge map of s(x)."""
        def fails(m: Maps) -> list[bool]:
            return [f is not None for f in m.failed[:k]]

        panels = {"map of x": maps_x.abs[:k], "edge map of x": edge_x.abs[:k]}
        failed = {"map of x": fails(maps_x), "edge map of x": fails(edge_x)}
        for label, xs in inputs.items():
            m, e = maps[label]
            panels[label] = xs[:k].mean(1).clamp(0, 1)
            panels[f"map, {label}"], failed[f"map, {label}"] = m.abs[:k], fails(m)
            panels[f"edge map, {label}"], failed[f"edge map, {label}"] = e.abs[:k], fails(e)
        save_panels(ctx, x, panels, failed, domains=list(inputs))

    # -- rows
    @staticmethod
    def _common(p: dict[str, Any], similarity: Similarity) -> dict[str, Any]:
        return {"rule": rule_text("difference", p["margin"], DIRECTION), "margin": float(p["margin"]),
                "ci_level": float(p["ci_level"]), "n_boot": int(p["n_boot"]), "split": p["split"],
                **similarity.columns()}

    @staticmethod
    def _rows(ctx: CheckContext, p: dict[str, Any], sims, extra: dict[str, dict[str, Any]],
              labels: Sequence[str], common: dict[str, Any]) -> list[dict[str, Any]]:
        """calibration rows, then per shift its shifted and edge rows, and per measure its difference
        and verdict rows; ``sims``: (series, domain) -> Similarity.compare's result."""
        series: dict[tuple, torch.Tensor] = {}
        reasons: dict[tuple, list] = {}
        for (name, domain), by_metric in sims.items():
            for m in MEASURES:
                series[(name, domain, m)], reasons[(name, domain, m)] = by_metric[m]
        for domain in labels:
            for m in MEASURES:
                (s, rs), (e, re_) = sims[("shifted", domain)][m], sims[("edge", domain)][m]
                series[("difference", domain, m)] = s - e
                reasons[("difference", domain, m)] = [a or b for a, b in zip(rs, re_)]
        cis = series_cis(series, p, ctx.seed, NAME)
        out = series_rows(ctx, series, reasons, cis, NOTES, extra, **common)
        for domain in labels:
            for m in MEASURES:
                key = ("difference", domain, m)
                s = summary(m, series[key], reasons[key], cis[key])
                cols = extra[domain]
                out.append(row(ctx, **s, series="difference", domain=domain, note=NOTES["difference"],
                               **cols, **common))
                v = margin_verdict(s["ci_low"], s["ci_high"], p["margin"], DIRECTION)
                out.append(row(ctx, **s, verdict=v, series="verdict", domain=domain, direction=DIRECTION,
                               shifted_value=finite_or_none(cis[("shifted", domain, m)][0]),
                               edge_value=finite_or_none(cis[("edge", domain, m)][0]),
                               note="difference's CI against -margin", **cols, **common))
        return out
