"""Procedural worlds with pixel-exact ground truth, and bugs as data transforms.

    >>> from xaudit import world
    >>> w = world.get("shapes", size=32)
    >>> trig = world.PatchTrigger(pattern="checker", size_px=5, target_class=3, poison_rate=0.05)
    >>> batch = w.sample(range(256), split="train", bugs=[trig])
    >>> batch.images.shape, batch.footprints[trig.name].shape
"""
from xaudit.world.base import WORLDS, Batch, World, get, names
from xaudit.world.bugs import (BUGS, Bug, LabelNoise, MissingClass, NaturalTrigger, PatchTrigger,
                               RandomLabels, Shift, SpuriousCue, StyleTrigger, bug_from_config,
                               bug_names, parse_bug)
from xaudit.world import shapes as _shapes  # noqa: F401  (registers shapes, spurious)
from xaudit.world import digits as _digits  # noqa: F401  (registers digits)
from xaudit.world import folder as _folder  # noqa: F401  (registers folder: a user's images)

__all__ = ["WORLDS", "BUGS", "Batch", "World", "Bug", "get", "names", "bug_names", "parse_bug",
           "bug_from_config", "PatchTrigger", "StyleTrigger", "NaturalTrigger", "SpuriousCue",
           "LabelNoise", "RandomLabels", "MissingClass", "Shift"]
