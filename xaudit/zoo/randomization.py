"""Model-level bug: re-initialized blocks (model-parameter randomization, docs/protocols.md#13-cascading-and-independent-randomization).

    >>> from xaudit.zoo import randomize, randomization_stages
    >>> rnd = randomize(model, ["fc2", "fc1"], mode="cascading", generator=torch_generator)
    >>> for stage, names, m in randomization_stages(model, "cascading", 0): ...

Rule (recorded in ``RANDOMIZE_RULE`` and on every returned model as ``model.randomized``):
- A block is re-initialized by re-drawing each of its layers from that layer's own initializer
  (:mod:`xaudit.zoo.init`: PyTorch's default rule per layer type, drawn from an explicit generator).
- The draws for a block come from a generator seeded by (the given generator's seed, the block's
  name); the given generator's state is not consumed. So a block gets the same random weights in
  every cascading stage and in independent mode, and stage i+1 differs from stage i only in block i+1.
- BatchNorm: affine weight and bias are re-drawn from their initializer (1 and 0); running
  statistics are kept trained by default (as in the sanity-checks code), ``bn_stats="reset"`` resets
  them to mean 0, var 1.
- The original model is never mutated: a deep copy is randomized.
"""
from __future__ import annotations

import copy
from typing import Iterator, Sequence

import torch
from torch import nn

from xaudit.core import model as core_model
from xaudit.core.errors import ConfigError, check_choice
from xaudit.core.rng import generator as make_generator
from xaudit.core.rng import hash_u64, stream_id
from xaudit.zoo.init import INIT_RULE, init_module

MODES = ("cascading", "independent")
RANDOMIZE_RULE = {
    "init": INIT_RULE,
    "per_block_seed": "hash(generator.initial_seed(), crc32(block name)); generator state not consumed",
    "batchnorm_affine": "re-drawn from its initializer (weight=1, bias=0)",
    "batchnorm_running_stats": "kept trained (default) or reset to mean 0, var 1 (bn_stats='reset')",
}


def _seed_of(generator: torch.Generator | int | None) -> int:
    if generator is None:
        raise ConfigError("generator", "pass a torch.Generator or an int seed (the global RNG is never used)")
    if isinstance(generator, torch.Generator):
        return int(generator.initial_seed())
    if isinstance(generator, int) and not isinstance(generator, bool):
        return int(generator)
    raise ConfigError("generator", f"must be a torch.Generator or an int seed, got {type(generator).__name__}")


def block_generator(seed: int, block: str) -> torch.Generator:
    """The generator that re-draws ``block`` for base ``seed`` (a pure function of both)."""
    bits = int(hash_u64(seed, stream_id("zoo/randomize/" + block), [0], 1)[0, 0]) >> 1  # fits int64
    return make_generator(bits)


def _resolve(model: nn.Module, blocks: str | Sequence[str]) -> list[str]:
    names = [blocks] if isinstance(blocks, str) else list(blocks)
    if not names:
        raise ConfigError("blocks", "name at least one block")
    valid = core_model.blocks(model)
    for b in names:
        try:
            sub = model.get_submodule(b)
        except AttributeError:
            raise ConfigError("blocks", f"{b!r} is not a module of {type(model).__name__}; "
                                        f"its blocks (output first) are: {', '.join(valid)}") from None
        if not any(True for _ in sub.parameters()):
            raise ConfigError("blocks", f"{b!r} has no parameters to re-initialize; blocks: {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise ConfigError("blocks", f"names a block twice: {names}")
    return names


def randomize(model: nn.Module, blocks: str | Sequence[str], mode: str = "cascading",
              generator: torch.Generator | int | None = None, *, bn_stats: str = "keep") -> nn.Module:
    """A copy of ``model`` with ``blocks`` re-initialized; ``model`` itself is untouched.

    mode="cascading": every named block is re-initialized (cascading stage i passes
    ``blocks(model)[:i+1]``). mode="independent": exactly one block is named and re-initialized.
    generator: a torch.Generator (its seed keys the draws) or an int seed.
    The copy keeps the original's train/eval mode and carries ``randomized`` (the blocks and the rule).
    """
    check_choice("mode", mode, MODES)
    check_choice("bn_stats", bn_stats, ("keep", "reset"))
    names = _resolve(model, blocks)
    if mode == "independent" and len(names) != 1:
        raise ConfigError("blocks", f"independent randomization re-initializes one block at a time; got {names}. "
                                    "Use randomization_stages(model, 'independent', ...) to iterate over blocks")
    seed = _seed_of(generator)
    out = copy.deepcopy(model)
    for b in names:
        init_module(out.get_submodule(b), block_generator(seed, b), bn_stats=bn_stats)
    out.randomized = {"blocks": names, "mode": mode, "seed": seed, "bn_stats": bn_stats, **RANDOMIZE_RULE}
    return out


def randomization_stages(model: nn.Module, mode: str = "cascading", generator: torch.Generator | int | None = None,
                         blocks: Sequence[str] | None = None, *, bn_stats: str = "keep"
                         ) -> Iterator[tuple[int, list[str], nn.Module]]:
    """Yield (stage index, re-initialized block names, randomized copy) for every stage.

    blocks: the block order, output first (default: the model's declared ``blocks``).
    Cascading stage i re-initializes ``blocks[:i+1]``; independent stage i re-initializes ``blocks[i]`` only.
    """
    check_choice("mode", mode, MODES)
    order = core_model.blocks(model) if blocks is None else list(blocks)
    _resolve(model, order)
    for i, b in enumerate(order):
        names = order[: i + 1] if mode == "cascading" else [b]
        yield i, names, randomize(model, names, mode="cascading" if mode == "cascading" else "independent",
                                  generator=generator, bn_stats=bn_stats)
