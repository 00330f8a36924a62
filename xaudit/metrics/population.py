"""Model-population audit statistics (Denain & Steinhardt 2022; PROTOCOLS.md section 3, issue 15).

A population holds M models, ``normal[m]`` True for the models trained normally. For each input i every
model has a visualization, and ``D[i, a, b]`` is the distance between models a's and b's visualizations
of input i (symmetric, zero diagonal). Then

    score(M, i) = mean_{n normal, n != M} D[i, M, n]  /  mean_{n != n' normal, both != M} D[i, n, n']

(the leave-one-out ratio: a normal model is scored against the other normals only), and a model's score
is its mean over inputs. A model is **flagged** when its score exceeds the largest score of the normal
models (for a normal model: of the *other* normal models). Everything is batched: no Python loop over
models or pairs.
"""
from __future__ import annotations

from typing import Callable

import torch

from xaudit.core.errors import ConfigError

MIN_NORMALS = 3     # a normal model's leave-one-out denominator needs a pair of other normal models


def _check_population(distances: torch.Tensor, normal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.as_tensor(distances, dtype=torch.float64)
    normal = torch.as_tensor(normal, dtype=torch.bool)
    if d.dim() < 2 or d.shape[-1] != d.shape[-2]:
        raise ConfigError("distances", f"must be [..., M, M] (pairwise distances between M models), got "
                                       f"{tuple(d.shape)}")
    if normal.shape != (d.shape[-1],):
        raise ConfigError("normal", f"must be a bool flag per model, shape [{d.shape[-1]}]; got {tuple(normal.shape)}")
    k = int(normal.sum())
    if k < MIN_NORMALS:
        raise ConfigError("normal", f"the population has {k} normal model(s); the leave-one-out score needs at least "
                                    f"{MIN_NORMALS} (a normal model is compared with a pair of other normal models): "
                                    "train more normal seeds")
    return d, normal


def loo_scores(distances: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """float64 [..., M]: each model's leave-one-out score ratio per input (``distances`` [..., M, M], e.g.
    [inputs, M, M]; ``normal`` bool [M]). NaN where the normals' mean pairwise distance is 0."""
    d, normal = _check_population(distances, normal)
    nf = normal.to(d.dtype)
    k = float(nf.sum())
    to_normals = (d * nf).sum(-1)                                   # [..., M]: sum over normal n of D[M, n]
    own = nf                                                         # a normal model's own column is D[M, M] = 0
    numerator = to_normals / (k - own)                               # mean over normal n != M
    pair_sum = (d * nf.unsqueeze(-1) * nf).sum((-1, -2))             # ordered normal pairs, [...]
    # leaving M out removes the ordered pairs (M, n) and (n, M) for normal M
    denom_sum = pair_sum.unsqueeze(-1) - 2 * to_normals * own
    pairs = torch.where(normal, torch.tensor((k - 1) * (k - 2)), torch.tensor(k * (k - 1))).to(d.dtype)
    denominator = denom_sum / pairs
    return torch.where(denominator > 0, numerator / denominator, torch.full_like(numerator, float("nan")))


def flagged(scores: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """bool [M]: a model's score (``scores`` [M], averaged over inputs) exceeds the largest normal score;
    for a normal model, the largest score of the *other* normal models."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    normal = torch.as_tensor(normal, dtype=torch.bool)
    if s.shape != normal.shape:
        raise ConfigError("scores", f"must have one score per model ({tuple(normal.shape)}), got {tuple(s.shape)}")
    ns = torch.where(normal, s, torch.full_like(s, -float("inf")))
    top2 = torch.topk(ns, 2).values
    idx_top = int(torch.argmax(ns))
    threshold = torch.full_like(s, float(top2[0]))
    threshold[idx_top] = float(top2[1])           # the top normal model is compared with the runner-up
    return s > threshold


def pairwise(maps: torch.Tensor, distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             chunk: int = 4096) -> torch.Tensor:
    """float64 [I, M, M]: ``distance(a, b)`` (batched over its first dimension, returning [n]) between
    every pair of models' visualizations ``maps`` [M, I, ...] of each input, computed once per unordered
    pair in batches of ``chunk`` (one call per batch, not a loop over pairs)."""
    if maps.dim() < 2:
        raise ConfigError("maps", f"must be [M models, I inputs, ...], got {tuple(maps.shape)}")
    m, i = maps.shape[:2]
    ia, ib = torch.triu_indices(m, m, offset=1)
    # every (pair, input): flatten pairs x inputs
    pa = ia.repeat_interleave(i)
    pb = ib.repeat_interleave(i)
    inp = torch.arange(i).repeat(len(ia))
    vals = []
    for s in range(0, len(pa), chunk):
        sl = slice(s, s + chunk)
        vals.append(torch.as_tensor(distance(maps[pa[sl], inp[sl]], maps[pb[sl], inp[sl]]), dtype=torch.float64))
    v = torch.cat(vals) if vals else torch.zeros(0, dtype=torch.float64)
    out = torch.zeros(i, m, m, dtype=torch.float64)
    out[inp, pa, pb] = v
    out[inp, pb, pa] = v
    return out


def pairwise_sqeuclidean(embeddings: torch.Tensor) -> torch.Tensor:
    """float64 [I, M, M]: squared Euclidean distance between every pair of models' embeddings [M, I, F]
    of each input, from one batched Gram product (the diagonal is 0)."""
    if embeddings.dim() != 3:
        raise ConfigError("embeddings", f"must be [M models, I inputs, F], got {tuple(embeddings.shape)}")
    e = embeddings.double().transpose(0, 1)                                      # [I, M, F]
    g = e @ e.transpose(1, 2)
    sq = g.diagonal(dim1=1, dim2=2)
    d = sq.unsqueeze(2) + sq.unsqueeze(1) - 2 * g
    d.diagonal(dim1=1, dim2=2).zero_()
    return d.clamp_min(0.0)


__all__ = ["MIN_NORMALS", "loo_scores", "flagged", "pairwise", "pairwise_sqeuclidean"]
