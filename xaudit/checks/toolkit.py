"""What every check shares: images with their ground truth, explaining (memoized, robust to
per-input failures), map post-processing, map similarities, predictions, bootstrap CIs, seeds.

A protocol module (``sanity.py``, ...) holds its protocol only and takes these from here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from xaudit.checks.base import CheckContext, ModelRef
from xaudit.core import rng
from xaudit.core.errors import ConfigError, NotApplicable, check_choice, check_int, check_range
from xaudit.core.rng import stream_seed  # noqa: F401  (the one seed helper, re-exported for checks)



# ---------------------------------------------------------------------------------- parameters
def merge_params(check: str, params: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` overridden by ``params``; a parameter the check does not take is a ConfigError
    naming it and listing the ones it takes."""
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(f"{check}.{unknown[0]}", f"unknown parameter; {check} takes: {', '.join(sorted(defaults))}")
    return {**defaults, **params}


def check_map_params(check: str, p: dict[str, Any]) -> None:
    """Validate the parameters every map-comparing check shares (images, CIs, similarities, figures)."""
    check_int(f"{check}.n_images", p["n_images"], 2, 1_000_000)
    check_range(f"{check}.ci_level", p["ci_level"], 0.5, 1.0, hi_open=True)
    check_int(f"{check}.n_boot", p["n_boot"], 100, 1_000_000)
    check_range(f"{check}.ssim_data_range", p["ssim_data_range"], 0.0, 1e6, lo_open=True)
    if p["hog_pixels_per_cell"] != "auto":
        check_int(f"{check}.hog_pixels_per_cell", p["hog_pixels_per_cell"], 1, 1024, extra="or 'auto'")
    check_choice(f"{check}.hog_correlation", p["hog_correlation"], ("spearman", "pearson"))
    check_int(f"{check}.figure_images", p["figure_images"], 0, 64)


# ---------------------------------------------------------------------------------- statistics
def bootstrap_mean_cis(values: torch.Tensor, n_boot: int, level: float, seed: int
                       ) -> list[tuple[float, float, float, int]]:
    """Per row of ``values`` [B, N]: (mean, ci_low, ci_high, n) of its finite entries, by the percentile
    bootstrap of :func:`xaudit.metrics.bootstrap_ci` (rows resampled independently, in one batch) with a
    generator seeded by ``seed``. NaN mean and CI where a row has no finite value."""
    from xaudit import metrics

    ci = metrics.bootstrap_ci(values.detach().double().cpu(), level=level, n_boot=n_boot,
                              generator=rng.generator(seed))
    return [(float(ci.estimate[i]), float(ci.low[i]), float(ci.high[i]), int(ci.n[i]))
            for i in range(values.shape[0])]




# ------------------------------------------------------------------------------------- the maps
@dataclass
class Maps:
    """One explanation of the image set, post-processed once.

    target:   int64 [N], the class each image's map explains
    abs, signed, zero_one: float [N, 1, H, W] (core.maps normalizations); rows of failed inputs are 0
    failed:   per image, None or the reason the method failed on it
    Derived data every comparison reuses (average ranks, HOG descriptors) is computed once, on demand.
    """
    target: torch.Tensor
    abs: torch.Tensor
    signed: torch.Tensor
    zero_one: torch.Tensor
    failed: list[str | None]
    _cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> torch.Tensor:
        return torch.tensor([f is None for f in self.failed], dtype=torch.bool)

    def n_failed(self) -> int:
        return sum(f is not None for f in self.failed)

    def cached(self, key: str, fn) -> torch.Tensor:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]


def finite_maps(raw: torch.Tensor, failed: list[str | None]) -> tuple[torch.Tensor, list[str | None]]:
    """Raw maps [N, C, H, W] with every map that holds a NaN or inf set to 0 and marked failed."""
    finite = torch.isfinite(raw.flatten(1)).all(1).tolist()
    failed = [f if f is not None or ok else "map: contains NaN or inf" for f, ok in zip(failed, finite)]
    if not all(finite):
        raw = torch.where(torch.tensor(finite, device=raw.device).view(-1, 1, 1, 1), raw, torch.zeros_like(raw))
    return raw, failed


def post_process(raw: torch.Tensor, target: torch.Tensor, failed: list[str | None]) -> Maps:
    """Abs, signed and 0-1 maps of raw maps [N, C, H, W]; inputs with a non-finite value are marked failed."""
    from xaudit.core import maps

    raw, failed = finite_maps(raw, failed)
    return Maps(target=target.cpu(), abs=maps.abs_map(raw).cpu(), signed=maps.signed_map(raw).cpu(),
                zero_one=maps.zero_one_map(raw).cpu(), failed=list(failed))


def explain_robust(explainer, model, x: torch.Tensor, target: torch.Tensor, seed: int
                   ) -> tuple[torch.Tensor, list[str | None]]:
    """Raw maps [N, C, H, W] and, per image, None or the reason the method failed on it.

    One batched call; when the method fails on some inputs (ExplanationFailed naming them, or a
    failure of the whole call) the finite maps are kept and the rest re-explained in halves until
    each failing input is isolated. NotApplicable (the method cannot run on this model) propagates.
    Stochastic methods draw from a generator seeded with ``seed`` (the same for every model).
    """
    from xaudit.explain import ExplanationFailed

    n = x.shape[0]
    raw = torch.zeros_like(x)
    failed: list[str | None] = [None] * n

    def mark(idx: torch.Tensor, reason: str) -> None:
        for i in idx.tolist():
            failed[i] = reason

    def go(idx: torch.Tensor) -> None:
        try:
            raw[idx] = explainer(model, x[idx], target[idx], generator=rng.generator(seed)).to(raw.dtype)
            return
        except NotApplicable:
            raise
        except ExplanationFailed as e:
            reason = f"{e.field}: {e.reason}"
            bad = [i for i in (e.indices or []) if 0 <= i < len(idx)]
            if bad and len(bad) < len(idx):
                keep = torch.ones(len(idx), dtype=torch.bool)
                keep[bad] = False
                mark(idx[~keep], reason)
                if e.field == "map" and e.maps is not None and e.maps.shape[0] == len(idx):
                    raw[idx[keep]] = e.maps[keep].to(raw.dtype)
                else:
                    go(idx[keep])
                return
        except RuntimeError as e:
            reason = f"{type(e).__name__}: {e}"
        if len(idx) == 1:
            mark(idx, reason)
            return
        half = len(idx) // 2
        go(idx[:half])
        go(idx[half:])

    go(torch.arange(n))
    return raw, failed


# -------------------------------------------------------------------------------- similarities
class Similarity:
    """Per-image similarities between map sets (each map set's HOG computed once), with the
    parameters recorded in the rows."""

    def __init__(self, p: dict[str, Any], size: int):
        from xaudit import metrics

        self.data_range = float(p["ssim_data_range"])
        self.hog_px = (metrics.hog_pixels_per_cell(size, size) if p["hog_pixels_per_cell"] == "auto"
                       else int(p["hog_pixels_per_cell"]))
        self.hog_correlation = p["hog_correlation"]

    def columns(self) -> dict[str, Any]:
        return {"ssim_data_range": self.data_range, "hog_pixels_per_cell": self.hog_px,
                "hog_correlation": self.hog_correlation}

    def _hog(self, m: Maps) -> torch.Tensor:
        """[N, 1, D] HOG descriptors of the 0-1 maps (a 1 x D 'map', so the correlations apply)."""
        from xaudit import metrics

        return m.cached("hog", lambda: metrics.hog(m.zero_one, pixels_per_cell=self.hog_px).unsqueeze(1))

    @staticmethod
    def _ranks(m: Maps, key: str, values) -> torch.Tensor:
        """Average ranks [N, 1, P] (float64) of a map set's values, computed once per map set:
        Spearman's rho is Pearson's r of average ranks (exactly scipy.stats.spearmanr)."""
        from xaudit import metrics

        def rank():
            v = values()
            return metrics.rankdata(v.reshape(v.shape[0], -1)).unsqueeze(1)
        return m.cached("ranks/" + key, rank)

    def compare(self, a: Maps, b: Maps, edge: Maps | None) -> dict[str, tuple[torch.Tensor, list]]:
        """metric -> (float64 [N], per-image reason or None). Values are NaN where a map failed
        (reason ``method failed: ...``) or a similarity is undefined (the measure's reason, e.g.
        ``constant_a``). ``edge_similarity`` is the tested map ``b`` against the edge map."""
        from xaudit import metrics

        def spearman(x: Maps, y: Maps, key: str, values):
            return metrics.pearson(self._ranks(x, key, lambda: values(x)), self._ranks(y, key, lambda: values(y)),
                                   return_reasons=True)

        def hog(m: Maps):
            return self._hog(m)

        res = {
            "spearman_abs": spearman(a, b, "abs", lambda m: m.abs),
            "spearman_signed": spearman(a, b, "signed", lambda m: m.signed),
            "ssim": metrics.ssim(a.zero_one, b.zero_one, data_range=self.data_range, return_reasons=True),
            "hog": (spearman(a, b, "hog", hog) if self.hog_correlation == "spearman"
                    else metrics.pearson(hog(a), hog(b), return_reasons=True)),
        }
        if edge is not None:
            res["edge_similarity"] = spearman(b, edge, "abs", lambda m: m.abs)
        failed = [fa or fb for fa, fb in zip(a.failed, b.failed)]
        bad = torch.tensor([f is not None for f in failed], dtype=torch.bool)
        out = {}
        for k, r in res.items():
            fails = failed if k != "edge_similarity" else b.failed
            mask = bad if k != "edge_similarity" else ~b.ok
            values = torch.where(mask, torch.nan, r.values.detach().double().cpu())
            reasons = [f"method failed: {f}" if f is not None else why for f, why in zip(fails, r.reasons)]
            out[k] = (values, reasons)
        return out


def explain_seed(seed: int, method: str) -> int:
    """The seed of a method's random draws in a cell of seed ``seed``, the same for every check: a
    check that explains a model on the images another check explained (the in-domain maps of the OOD
    test are the sanity checks' original and retrain-reference maps) then finds the explanation in
    the worker's memo instead of computing it again. (The stream keeps the sanity checks' name, so
    their values did not change when the other families started sharing it.)"""
    return stream_seed(seed, f"sanity/explain/{method}")


def explain_raw(explainer, model, x: torch.Tensor, target: torch.Tensor, seed: int
                ) -> tuple[torch.Tensor, list[str | None]]:
    """Raw maps [N, C, H, W] and per-image failures (:func:`explain_robust`), through the worker's
    explanation memo (:mod:`xaudit.checks.memo`): an explanation computed by an earlier cell of this
    worker with the same method, weights, images, targets and seed is reused, not recomputed."""
    from xaudit.checks.memo import EXPLANATIONS

    key = EXPLANATIONS.key(explainer, model, x, target, seed)
    return EXPLANATIONS.get_or_compute(key, lambda: explain_robust(explainer, model, x, target, seed))


def explain_maps(explainer, model, x: torch.Tensor, target: torch.Tensor, seed: int) -> Maps:
    """Post-processed maps of ``model`` explaining ``target`` on ``x``, memoized (:func:`explain_raw`)."""
    raw, failed = explain_raw(explainer, model, x, target, seed)
    return post_process(raw, target, failed)


def as_nan(v: float | None) -> float:
    """None as NaN."""
    return math.nan if v is None else float(v)


def finite_or_none(v: float | None) -> float | None:
    """A finite float, or None (for a row's value: the store has no NaN)."""
    return None if v is None or not math.isfinite(v) else float(v)




# ------------------------------------------------------------------------------- images, models
@torch.inference_mode()
def predict(model, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """int64 [N]: the model's argmax class (eval mode for the call; channels-last input, which CPU
    convolutions run faster; the values do not depend on the layout)."""
    was = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch].contiguous(memory_format=torch.channels_last)).argmax(1)
                          for i in range(0, len(x), batch)])
    finally:
        model.train(was)


@torch.no_grad()
def num_classes(model, x: torch.Tensor) -> int:
    return int(model(x[:1]).shape[1])


def make_world(ctx: CheckContext, world: dict[str, Any] | None = None):
    """The world instance of a config (default: the cell's world)."""
    from xaudit import world as world_mod

    cfg = dict(ctx.world if world is None else world)
    name = cfg.pop("world", None) or cfg.pop("name", None)
    if name is None:
        raise ConfigError("world", f"the world config names no world: {ctx.world if world is None else world}")
    return world_mod.get(name, **cfg)


def load_batch(ctx: CheckContext, n_images: int, split: str = "test", bugs=(), force: bool = False,
               world: dict[str, Any] | None = None):
    """The first ``n_images`` samples of ``split`` as a :class:`xaudit.world.Batch`: images float
    [N, C, H, W] in [0, 1], labels and true labels, object masks bool [N, H, W], and, per bug in
    ``bugs`` (objects or configs, see :func:`xaudit.world.bug_from_config`), its footprint bool
    [N, H, W] and touched flags bool [N]. ``force=True`` applies every trigger to every eligible
    sample. ``world``: another world config than the cell's."""
    from xaudit.world import bug_from_config

    w = make_world(ctx, world)
    bug_objs = [b if hasattr(b, "apply") else bug_from_config(b) for b in bugs]
    return w.sample(range(n_images), split=split, bugs=bug_objs, force=force)


def load_images(ctx: CheckContext, p: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images float [N, C, H, W] in [0, 1], true labels int64 [N], sample indices [N]).

    ``ctx.extra["images"]`` (and optionally ``"labels"``) supplies the user's own images (``xaudit
    audit``, tests); otherwise the first ``n_images`` samples of the world's ``split``."""
    if "images" in ctx.extra:
        x = torch.as_tensor(ctx.extra["images"]).float()
        if x.ndim != 4:
            raise ConfigError("images", f"must be a tensor [N, C, H, W], got shape {tuple(x.shape)}")
        x = x[: p["n_images"]]
        labels = ctx.extra.get("labels")
        labels = (torch.as_tensor(labels, dtype=torch.int64)[: len(x)] if labels is not None
                  else torch.zeros(len(x), dtype=torch.int64))
        if p["target"] == "label" and ctx.extra.get("labels") is None:
            raise ConfigError("target", "'label' needs the images' labels; pass them or use 'current'")
        return x, labels, torch.arange(len(x))
    batch = load_batch(ctx, p["n_images"], p["split"])
    return batch.images, batch.true_labels, batch.indices


def trojaned_model(ctx: CheckContext, check: str, kinds: Sequence[str], require_took: bool):
    """(model, card, trigger bugs) of the cell's primary model: the bugs on its card of the given
    ``kinds``, in card order. Refuses a model whose card says a bug did not take (``require_took``; the
    message names each failed criterion and its measured value) and a model without such bugs."""
    from xaudit import zoo
    from xaudit.world import bug_from_config

    model, card = ctx.load_model(ModelRef(ctx.model_group, ctx.seed))
    if require_took:
        zoo.require_bug_took(card, what=check)
    configs = (card.get("spec") or {}).get("bugs") or []
    bugs = [bug_from_config(c) for c in configs if isinstance(c, dict) and c.get("kind") in kinds]
    if not bugs:
        have = sorted({str(c.get("kind")) for c in configs if isinstance(c, dict)})
        names = ", ".join(kinds[:-1]) + (" or " if len(kinds) > 1 else "") + kinds[-1]
        raise ConfigError("model", f"{check} needs a model with {names} trojans; {ctx.model_group!r} has bugs of "
                                   f"kinds {have or 'none'}")
    return model, card, bugs

