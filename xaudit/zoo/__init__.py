"""The model zoo: architectures, deterministic training, model cards, a content-addressed cache,
and model-level bugs (re-initialized blocks).

    >>> from xaudit import zoo
    >>> model, card = zoo.load_or_train("trojans")          # trains once, then loads from the cache
    >>> zoo.require_bug_took(card)                          # refuses a model whose bug did not take
    >>> rnd = zoo.randomize(model, model.blocks[:2], mode="cascading", generator=0)

Shipped specs: ``zoo.spec_names()`` (xaudit/specs/*.yaml); a dict spec may say ``base: clean`` and
override fields, e.g. ``{"base": "clean", "train": {"train_size": 2000}}``.
"""
from __future__ import annotations

import os
from typing import Any

from xaudit.zoo.arch import ARCHITECTURES, CNN, MLP, VGG, Normalize, ResNet, build
from xaudit.zoo.attack import pgd_attack
from xaudit.zoo.cache import ModelCache, cache_root
from xaudit.zoo.card import BugDidNotTake, evaluate, make_card, require_bug_took
from xaudit.zoo.foreign import convert_to_safetensors, load_state_dict_file, load_weights
from xaudit.zoo.init import INIT_RULE, init_module, register_initializer
from xaudit.zoo.randomization import RANDOMIZE_RULE, randomization_stages, randomize
from xaudit.zoo.spec import Spec, load_spec, spec_names
from xaudit.zoo.training import Trained, build_model, torch_settings, train

__all__ = [
    "ARCHITECTURES", "CNN", "MLP", "ResNet", "VGG", "Normalize", "build", "build_model",
    "Spec", "load_spec", "spec_names", "train", "Trained", "torch_settings", "pgd_attack",
    "make_card", "evaluate", "require_bug_took", "BugDidNotTake",
    "ModelCache", "cache_root", "load_or_train", "load_cached",
    "randomize", "randomization_stages", "RANDOMIZE_RULE", "INIT_RULE", "init_module", "register_initializer",
    "load_state_dict_file", "load_weights", "convert_to_safetensors", "cli_train", "cli_list",
]


def load_or_train(name_or_spec: "str | os.PathLike | dict | Spec", seed: int | None = None,
                  cache_dir: "str | os.PathLike | None" = None, *, log=None) -> Trained:
    """The trained model (eval mode) and card for a spec: from the cache when a verified entry exists,
    else trained and cached. Safe to call from several processes at once (one trains, the others wait)."""
    spec = load_spec(name_or_spec, seed=seed)
    cache = ModelCache(cache_dir)
    with cache.lock(spec.hash):
        hit = cache.load(spec)
        if hit is not None:
            return hit
        trained = train(spec, log=log)
        cache.save(trained)
    trained.model.eval()
    return trained


def load_cached(name_or_spec: "str | os.PathLike | dict | Spec", seed: int | None = None,
                cache_dir: "str | os.PathLike | None" = None) -> Trained | None:
    """The cached model for a spec, or None if it is not (validly) cached. Never trains."""
    spec = load_spec(name_or_spec, seed=seed)
    cache = ModelCache(cache_dir)
    with cache.lock(spec.hash):
        return cache.load(spec)


def cli_train(spec_name_or_path: str, seed: int | None = None, cache_dir=None) -> dict[str, Any]:
    """`xaudit zoo train`: train or load, return the card."""
    import sys

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    return load_or_train(spec_name_or_path, seed=seed, cache_dir=cache_dir, log=log).card


def cli_list(cache_dir=None) -> list[dict[str, Any]]:
    """`xaudit zoo list`: one row per cached model."""
    return ModelCache(cache_dir).list()
