"""Statistics behind the verdicts: bootstrap confidence intervals (plain, paired and two-sample) and AUROC.

Randomness comes only from the ``generator`` argument: an int seed (a fresh ``torch.Generator`` seeded with it,
:func:`xaudit.core.rng.generator`) or a ``torch.Generator`` the caller owns. The global RNG is never used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from xaudit.core import rng as xrng
from xaudit.core.errors import ConfigError, check_range
from xaudit.metrics._base import MEASURES
from xaudit.metrics.ranks import twice_ranks

__all__ = ["Interval", "bootstrap_ci", "paired_bootstrap", "two_sample_bootstrap", "auroc", "auroc_bootstrap"]

_DRAW_BUDGET = 1 << 22   # resampled values held at once


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile-bootstrap interval.

    Fields are tensors with the batch shape of the input (0-d for one sample): ``estimate`` (the mean of
    the finite values), ``low``/``high`` (the interval), ``n`` (finite values used; NaN estimate and
    interval where n == 0), plus the ``level`` and ``n_boot`` used.
    """
    estimate: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    n: torch.Tensor
    level: float
    n_boot: int

    def __iter__(self):
        """Unpacks as the interval: ``low, high = bootstrap_ci(values)``."""
        return iter((self.low, self.high))

    def row(self) -> dict[str, Any]:
        """The row fields of a single interval: value, ci_low, ci_high, n (floats/int; None for NaN)."""
        if self.estimate.dim() != 0:
            raise ValueError("row() needs a single interval; index the batch first")

        def f(t):
            v = float(t)
            return None if v != v else v
        return {"value": f(self.estimate), "ci_low": f(self.low), "ci_high": f(self.high), "n": int(self.n)}

    def __getitem__(self, i) -> "Interval":
        return Interval(self.estimate[i], self.low[i], self.high[i], self.n[i], self.level, self.n_boot)


def _generator(generator: int | torch.Generator, device: torch.device) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise ConfigError("generator", "must be an int seed or a torch.Generator, got "
                                       f"{type(generator).__name__}")
    return xrng.generator(generator, device=device)


@MEASURES.register("bootstrap_ci", kind="statistic", higher_is_better=None, range=None,
                   reference="Efron & Tibshirani 1993: percentile bootstrap interval of the mean")
def bootstrap_ci(values: torch.Tensor, *, level: float = 0.95, n_boot: int = 2000,
                 generator: int | torch.Generator = 0) -> Interval:
    """Percentile bootstrap confidence interval of the mean, vectorized.

    ``values``: ``[n]`` or ``[B, n]`` (each row an independent sample, all resampled in one batch).
    NaN and infinite values are dropped per row and the number kept is reported as ``n``. ``level``:
    the coverage (0.95 gives the 2.5th and 97.5th percentiles of ``n_boot`` resampled means, numpy's
    linear interpolation). The draws for a row depend on the seed and on the shape of ``values``.
    """
    check_range("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    check_range("n_boot", n_boot, 10, 10_000_000)
    v, one = _as_batch(values, "values")
    estimate, cnt, means = _resampled_means(v, n_boot, _generator(generator, v.device))
    low, high = _percentiles(means, level)
    nan = torch.full_like(estimate, float("nan"))
    estimate, low, high = (torch.where(cnt == 0, nan, t) for t in (estimate, low, high))
    if one:
        estimate, low, high, cnt = estimate[0], low[0], high[0], cnt[0]
    return Interval(estimate, low, high, cnt, float(level), int(n_boot))


def _as_batch(values, field: str) -> tuple[torch.Tensor, bool]:
    """float64 [B, n] of ``values`` ([n] or [B, n], n >= 1) and whether it was one sample."""
    if not isinstance(values, torch.Tensor):
        values = torch.as_tensor(values)
    if values.dim() not in (1, 2) or values.shape[-1] == 0:
        raise ConfigError(field, f"must have shape [n] or [B, n] with n >= 1, got {tuple(values.shape)}")
    one = values.dim() == 1
    v = values.reshape(1, -1) if one else values
    return v.to(torch.float64), one


def _resampled_means(v: torch.Tensor, n_boot: int, gen: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of ``v`` [B, n] (float64): the mean of its finite values [B], their count [B] (int64) and
    ``n_boot`` means of resamples (with replacement, of that count) of them [B, n_boot]. Rows without
    a finite value give mean 0 and resampled means 0 (the caller masks them)."""
    b, n = v.shape
    finite = torch.isfinite(v)
    cnt = finite.sum(1)
    # finite values first in each row (stable), so a draw index in [0, cnt) picks a finite value
    order = torch.argsort((~finite).to(torch.int8), dim=1, stable=True)
    vc = torch.nan_to_num(v.gather(1, order), nan=0.0, posinf=0.0, neginf=0.0)
    vc = torch.where(finite.gather(1, order), vc, torch.zeros_like(vc))
    denom = cnt.clamp_min(1).to(torch.float64)
    estimate = vc.sum(1) / denom
    means = torch.empty(b, n_boot, dtype=torch.float64, device=v.device)
    c = max(1, int(cnt.max()))                 # draws per resample (rows with fewer values mask the rest)
    same = bool((cnt == c).all())
    if not same:
        col_ok = (torch.arange(c, device=v.device).unsqueeze(0) < cnt.unsqueeze(1)).to(torch.float64)
    step = max(1, _DRAW_BUDGET // max(1, b * c))
    for s in range(0, n_boot, step):
        nb = min(step, n_boot - s)
        if same:                               # the common case: one count for every row
            idx = torch.randint(0, c, (b, nb * c), generator=gen, device=v.device)
            means[:, s:s + nb] = vc.gather(1, idx).view(b, nb, c).sum(-1) / c
        else:
            # float32 uniforms (finer than any count below 2^20); min() guards u * cnt rounding up to cnt
            u = torch.rand(b, nb, c, generator=gen, device=v.device,
                           dtype=torch.float32 if c < (1 << 20) else torch.float64)
            idx = torch.minimum((u * cnt.view(b, 1, 1)).long(), (cnt - 1).clamp_min(0).view(b, 1, 1))
            draws = vc.gather(1, idx.view(b, -1)).view(b, nb, c)
            means[:, s:s + nb] = (draws * col_ok.unsqueeze(1)).sum(-1) / denom.unsqueeze(1)
    return estimate, cnt, means


def _percentiles(stats: torch.Tensor, level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The (1 - level) / 2 and (1 + level) / 2 quantiles of each row of ``stats`` [B, n_boot] (numpy's
    linear interpolation): the percentile interval."""
    alpha = (1.0 - level) / 2.0
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64, device=stats.device)
    low, high = torch.quantile(stats, q, dim=1)
    return low, high


@MEASURES.register("two_sample_bootstrap", kind="statistic", higher_is_better=None, range=None,
                   reference="percentile bootstrap of a difference of means, each sample resampled "
                             "independently (scipy.stats.bootstrap, paired=False)")
def two_sample_bootstrap(a: torch.Tensor, b: torch.Tensor, *, level: float = 0.95, n_boot: int = 2000,
                         generator: int | torch.Generator = 0) -> Interval:
    """Mean of ``a`` minus mean of ``b`` for two independent samples (different inputs, so nothing is
    paired) and its percentile bootstrap interval: each bootstrap replicate resamples ``a`` and ``b``
    independently, each with its own size, and takes the difference of the two means.

    ``a``: ``[n_a]`` or ``[B, n_a]``; ``b``: ``[n_b]`` or ``[B, n_b]`` with the same ``B`` (row i of ``a``
    is compared with row i of ``b``, all rows in one batch); ``n_a`` and ``n_b`` may differ. NaN and
    infinite values are dropped on each side. ``n`` is ``n_a + n_b``, the finite values used on both
    sides; the estimate and interval are NaN where either side has no finite value. The draws depend
    on the seed and on the shapes (``a``'s resamples are drawn first, then ``b``'s)."""
    check_range("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    check_range("n_boot", n_boot, 10, 10_000_000)
    va, one_a = _as_batch(a, "a")
    vb, one_b = _as_batch(b, "b")
    if one_a != one_b or va.shape[0] != vb.shape[0]:
        raise ConfigError("b", f"must have the batch shape of a: both [n] or both [B, n] with the same B; "
                               f"got a {tuple(torch.as_tensor(a).shape)}, b {tuple(torch.as_tensor(b).shape)}")
    vb = vb.to(va.device)
    gen = _generator(generator, va.device)
    est_a, cnt_a, means_a = _resampled_means(va, n_boot, gen)
    est_b, cnt_b, means_b = _resampled_means(vb, n_boot, gen)
    estimate = est_a - est_b
    low, high = _percentiles(means_a - means_b, level)
    none = (cnt_a == 0) | (cnt_b == 0)
    nan = torch.full_like(estimate, float("nan"))
    estimate, low, high = (torch.where(none, nan, t) for t in (estimate, low, high))
    cnt = cnt_a + cnt_b
    if one_a:
        estimate, low, high, cnt = estimate[0], low[0], high[0], cnt[0]
    return Interval(estimate, low, high, cnt, float(level), int(n_boot))


@MEASURES.register("paired_bootstrap", kind="statistic", higher_is_better=None, range=None,
                   reference="paired percentile bootstrap of the mean difference on the same images")
def paired_bootstrap(method: torch.Tensor, baseline: torch.Tensor, *, level: float = 0.95,
                     n_boot: int = 2000, generator: int | torch.Generator = 0) -> Interval:
    """Mean of ``method - baseline`` over the same images and its bootstrap interval (pairs resampled
    together, so image difficulty cancels). Pairs with a NaN on either side are dropped; ``n`` counts
    the pairs used. Shapes ``[n]`` or ``[B, n]``; an interval excluding 0 means the two differ."""
    if not isinstance(method, torch.Tensor):
        method = torch.as_tensor(method)
    if not isinstance(baseline, torch.Tensor):
        baseline = torch.as_tensor(baseline)
    if method.shape != baseline.shape:
        raise ConfigError("baseline", f"must have the same shape as method (paired values), got "
                                      f"{tuple(baseline.shape)} vs {tuple(method.shape)}")
    diff = method.to(torch.float64) - baseline.to(torch.float64)
    return bootstrap_ci(diff, level=level, n_boot=n_boot, generator=generator)


@MEASURES.register("auroc", kind="statistic", higher_is_better=True, range=(0.0, 1.0),
                   reference="sklearn.metrics.roc_auc_score (ties count 1/2)")
def auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of ``scores`` for ``labels`` (True/1 = positive), ties counting 1/2:
    equal to ``sklearn.metrics.roc_auc_score(labels, scores)``. Shapes ``[n]`` (returns a 0-d tensor) or
    ``[B, n]`` (one AUROC per row). Needs both classes in every row and finite scores."""
    if not isinstance(scores, torch.Tensor):
        scores = torch.as_tensor(scores)
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if scores.shape != labels.shape or scores.dim() not in (1, 2):
        raise ConfigError("labels", f"must have the shape of scores, [n] or [B, n]; got scores "
                                    f"{tuple(scores.shape)}, labels {tuple(labels.shape)}")
    if labels.dtype != torch.bool:
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise ConfigError("labels", "must be bool or hold only 0 and 1")
        labels = labels != 0
    one = scores.dim() == 1
    s = scores.reshape(1, -1) if one else scores
    y = labels.reshape(1, -1).to(s.device) if one else labels.to(s.device)
    s = s.to(torch.float64)
    if not bool(torch.isfinite(s).all()):
        raise ConfigError("scores", "must be finite (found NaN or inf)")
    n1 = y.sum(1).to(torch.float64)
    n0 = y.shape[1] - n1
    if bool(((n1 == 0) | (n0 == 0)).any()):
        raise ConfigError("labels", "every row needs at least one positive and one negative label; "
                                    "AUROC is undefined with a single class")
    r2 = twice_ranks(s).to(torch.float64)
    u = (r2 * y).sum(1) / 2.0 - n1 * (n1 + 1) / 2.0
    out = u / (n1 * n0)
    return out[0] if one else out


def auroc_bootstrap(positives: torch.Tensor, negatives: torch.Tensor, *, level: float = 0.95, n_boot: int = 2000,
                    generator: int | torch.Generator = 0) -> Interval:
    """AUROC of ``positives`` scored above ``negatives`` (:func:`auroc`) and its stratified percentile
    bootstrap interval: each side resampled with replacement at its own size (the positives' draws
    first), the AUROC of every replicate computed in one batch. NaN and infinite values are dropped on
    each side; ``n`` is the finite values used on both; NaN estimate and interval where a side is empty."""
    check_range("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    check_range("n_boot", n_boot, 10, 10_000_000)
    p = torch.as_tensor(positives).flatten().double()
    q = torch.as_tensor(negatives).flatten().double()
    p, q = p[torch.isfinite(p)], q[torch.isfinite(q)]
    n = torch.tensor(p.numel() + q.numel())
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    if p.numel() == 0 or q.numel() == 0:
        return Interval(nan, nan, nan, n, float(level), int(n_boot))
    labels = torch.cat([torch.ones(p.numel(), dtype=torch.bool), torch.zeros(q.numel(), dtype=torch.bool)])
    point = auroc(torch.cat([p, q]), labels)
    g = _generator(generator, p.device)
    idx_p = torch.randint(0, p.numel(), (n_boot, p.numel()), generator=g)
    idx_q = torch.randint(0, q.numel(), (n_boot, q.numel()), generator=g)
    boot = auroc(torch.cat([p[idx_p], q[idx_q]], dim=1), labels.expand(n_boot, -1))
    lo, hi = _percentiles(boot.unsqueeze(0), level)
    return Interval(point, lo[0], hi[0], n, float(level), int(n_boot))

