"""Random-logit test: the map for the explained class (by the ``target`` rule: the predicted class
by default) against the map of the same model for a random other class, drawn per image from the
cell's seed (uniform over the other classes). A map that does not change with the explained class
does not explain the class. Same metrics, references and verdict rule as the parameter tests (one
stage: stage 1 is the random other class).
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

from xaudit.checks.base import CHECKS
from xaudit.checks.sanity import METRICS_NOTE, VERDICT_RULE, SanityCheck, SanityRun, Tested
from xaudit.checks.toolkit import num_classes, stream_seed
from xaudit.core import rng


def random_other_class(target: torch.Tensor, n_classes: int, seed: int, indices: torch.Tensor) -> torch.Tensor:
    """int64 [N]: per image a class uniform over the ``n_classes - 1`` classes != target, a pure
    function of (seed, sample index)."""
    r = rng.randint(seed, "sanity/random_logit", indices.cpu(), n_classes - 1)[:, 0].to(target.device)
    return r + (r >= target).long()


@CHECKS.register("random_logit")
class RandomLogit(SanityCheck):
    """Explained class vs a random other class, same model."""
    name = "random_logit"
    bug = "wrong class explained"
    description = ("Explain each image for its predicted class and for a random other class (seeded), same model, "
                   "and compare the two maps: " + VERDICT_RULE + "." + METRICS_NOTE)

    def tested(self, run: SanityRun) -> Iterator[Tested]:
        k = num_classes(run.model, run.x)
        if k < 2:
            from xaudit.core.errors import NotApplicable

            raise NotApplicable(f"random_logit needs a model with at least 2 classes; this one has {k}")
        other = random_other_class(run.original.target.to(run.x.device), k, stream_seed(run.ctx.seed, "random_logit"),
                                   run.indices)
        run.random_classes = other
        yield Tested(stage=1, block="random_class", blocks=[], maps=run.explain(run.model, other))

    def extra_columns(self, run: SanityRun) -> dict[str, Any]:
        return {"compared_target": "random other class (uniform, seeded per sample index)"}
