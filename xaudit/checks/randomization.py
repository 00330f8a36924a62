"""Model-parameter randomization tests (docs/protocols.md#13-cascading-and-independent-randomization): cascading and independent.

Blocks are ordered from the output to the input (:func:`xaudit.core.model.blocks`). Cascading stage k
re-initializes blocks ``order[:k]``; independent stage k re-initializes ``order[k-1]`` alone; stage 0
is the trained model. Every stage's model is a copy built once by :func:`xaudit.zoo.randomize` from
the cell's seed (each block's draws are keyed by (seed, block name), so a block gets the same random
weights in every cascading stage and in the independent test); the trained model is never mutated.
Re-initialization rule: :data:`xaudit.zoo.RANDOMIZE_RULE` (each layer's own PyTorch default
initializer; BatchNorm running statistics kept trained unless ``bn_stats="reset"``).
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterator

from xaudit.checks.base import CHECKS
from xaudit.checks.sanity import METRICS_NOTE, VERDICT_RULE, SanityCheck, SanityRun, Tested
from xaudit.checks.toolkit import stream_seed
from xaudit.core import model as core_model
from xaudit.core.errors import ConfigError

_EXTRA = {"blocks": None}   # None: the model's declared blocks (output first); or an explicit list


class _ParameterRandomization(SanityCheck):
    mode: ClassVar[str]
    extra_defaults = _EXTRA

    def block_order(self, run: SanityRun) -> list[str]:
        declared = core_model.blocks(run.model)
        order = run.p["blocks"]
        if order is None:
            order = declared
        elif isinstance(order, str) or not all(isinstance(b, str) for b in order):
            raise ConfigError(f"{self.name}.blocks", f"must be a list of block names (output first), e.g. {declared}")
        order = list(order)
        if not order:
            raise ConfigError(f"{self.name}.blocks", f"names no block; the model's blocks are {declared}")
        return order

    def stage_blocks(self, order: list[str], k: int) -> list[str]:
        raise NotImplementedError

    def n_stages(self, run: SanityRun) -> int:
        return len(self.block_order(run))

    def tested(self, run: SanityRun) -> Iterator[Tested]:
        from xaudit import zoo

        order = self.block_order(run)
        seed = stream_seed(run.ctx.seed, "sanity/randomize")
        for k in range(1, len(order) + 1):
            names = self.stage_blocks(order, k)
            randomized = zoo.randomize(run.model, names, mode=self.mode, generator=seed,
                                       bn_stats=run.p["bn_stats"])
            maps = run.explain_model(randomized)
            del randomized
            yield Tested(stage=k, block=order[k - 1], blocks=names, maps=maps)

    def extra_columns(self, run: SanityRun) -> dict[str, Any]:
        from xaudit import zoo

        return {"mode": self.mode, "reinit": zoo.RANDOMIZE_RULE["init"], "bn_stats": run.p["bn_stats"]}


@CHECKS.register("cascading_randomization")
class CascadingRandomization(_ParameterRandomization):
    """Cascading model-parameter randomization."""
    name = "cascading_randomization"
    bug = "randomized weights"
    mode = "cascading"
    description = ("Re-initialize the model's blocks from the output to the input, cumulatively (stage k: the top "
                   "k blocks re-initialized), and compare each stage's maps with the trained model's maps on the "
                   "same images. A method that depends on the model must move: " + VERDICT_RULE +
                   ", read at the stage where the top half of the blocks is re-initialized." + METRICS_NOTE)

    def stage_blocks(self, order: list[str], k: int) -> list[str]:
        return order[:k]


@CHECKS.register("independent_randomization")
class IndependentRandomization(_ParameterRandomization):
    """Independent model-parameter randomization."""
    name = "independent_randomization"
    bug = "randomized weights"
    mode = "independent"
    description = ("Re-initialize one block at a time (stage k: block k from the output alone; all others "
                   "trained) and compare with the trained model's maps: " + VERDICT_RULE +
                   ", read at the block ceil(K/2) from the output." + METRICS_NOTE)

    def stage_blocks(self, order: list[str], k: int) -> list[str]:
        return [order[k - 1]]
