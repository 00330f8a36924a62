"""World and Batch: procedural images with pixel-exact ground truth.

A world maps (its parameters, split, sample index) to one image, deterministically: every random
draw comes from :mod:`xaudit.core.rng` keyed on the index, so the same sample is bit-identical in
any batch, at any batch size, in any process. Bugs (:mod:`xaudit.world.bugs`) transform a batch and
record their footprint masks.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Sequence

import torch

from xaudit.core.errors import ConfigError, check_choice
from xaudit.core.registry import Registry
from xaudit.core.rng import stream_id

WORLDS: Registry[type["World"]] = Registry("world")


@dataclass
class Batch:
    """A batch of samples.

    images:       float32 [N, C, H, W] in [0, 1]
    labels:       int64 [N], the labels a model is trained on (after label bugs and poisoning)
    true_labels:  int64 [N], the labels before any bug touched them
    object_mask:  bool [N, H, W], the pixels of the object that defines the true class
    indices:      int64 [N], the sample indices that generated the batch
    footprints:   bug name -> bool [N, H, W], the pixels that bug changed (or could have changed)
    touched:      bug name -> bool [N], whether that bug changed the sample
    """

    images: torch.Tensor
    labels: torch.Tensor
    true_labels: torch.Tensor
    object_mask: torch.Tensor
    indices: torch.Tensor
    split: str = "train"
    footprints: dict[str, torch.Tensor] = field(default_factory=dict)
    touched: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, keep: torch.Tensor) -> "Batch":
        """The samples where ``keep`` (bool [N] or index tensor) selects."""
        return replace(
            self,
            images=self.images[keep], labels=self.labels[keep], true_labels=self.true_labels[keep],
            object_mask=self.object_mask[keep], indices=self.indices[keep],
            footprints={k: v[keep] for k, v in self.footprints.items()},
            touched={k: v[keep] for k, v in self.touched.items()},
        )


def as_indices(indices) -> torch.Tensor:
    """int64 tensor from a range, list, int count, or tensor."""
    if isinstance(indices, int):
        indices = range(indices)
    if isinstance(indices, range):
        return torch.arange(indices.start, indices.stop, indices.step, dtype=torch.int64)
    t = torch.as_tensor(indices, dtype=torch.int64)
    if t.ndim != 1:
        raise ConfigError("indices", f"must be one-dimensional, got shape {tuple(t.shape)}")
    return t


class World:
    """Base class. Subclasses set ``name``, ``channels``, ``num_classes``, ``class_names``, ``splits``
    and implement :meth:`_labels` and :meth:`_render`."""

    name: ClassVar[str] = "world"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    allowed_sizes: ClassVar[tuple[int, ...]] = (32, 64)
    channels: int = 3
    num_classes: int = 0
    class_names: tuple[str, ...] = ()

    def __init__(self, size: int | None = None, seed: int = 0):
        size = self.allowed_sizes[0] if size is None else int(size)
        check_choice("size", size, self.allowed_sizes)
        self.size = size
        self.seed = int(seed)

    # -- identity -----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Everything that determines the samples (hashed into model specs and cells)."""
        return {"world": self.name, "size": self.size, "seed": self.seed}

    def label(self) -> str:
        """A readable identity of this configuration: ``name@size``, then the parameters that differ
        from the world's defaults (``shapes@64``, ``spurious@32[correlation=0.5]``, ``shapes@32[seed=1]``).
        Two configurations that sample differently get different labels (rows, cells and artifacts
        carry it in their ``world`` column)."""
        return world_label(self.config())

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def _split_seed(self, split: str) -> int:
        check_choice("split", split, self.splits)
        return self.seed * 1_000_003 + stream_id(f"{self.name}/{split}")

    # -- sampling -----------------------------------------------------------------------------
    def labels(self, indices, split: str = "train") -> torch.Tensor:
        """int64 [N]: the true class of each sample, without rendering it (cheap)."""
        idx = as_indices(indices)
        return self._labels(idx, self._split_seed(split), split)

    def sample(self, indices, split: str = "train", bugs: Sequence[Any] = (), force: bool = False) -> Batch:
        """Render samples ``indices`` of ``split`` and apply ``bugs`` in order.

        force=True applies every trigger-like bug to every eligible sample (used to measure attack
        success and to explain triggered images); otherwise each bug touches its own rate of samples.
        """
        idx = as_indices(indices)
        sseed = self._split_seed(split)
        for bug in bugs:
            bug.validate(self)
        labels = self._labels(idx, sseed, split)
        for bug in bugs:
            labels = bug.relabel_before_render(self, labels, idx, sseed, split)
        images, object_mask = self._render(idx, labels, sseed, split)
        batch = Batch(images=images, labels=labels.clone(), true_labels=labels.clone(),
                      object_mask=object_mask, indices=idx, split=split)
        for bug in bugs:
            bug.apply(self, batch, sseed, force=force)
        return batch

    def _labels(self, idx: torch.Tensor, split_seed: int, split: str) -> torch.Tensor:
        raise NotImplementedError

    def _render(self, idx: torch.Tensor, labels: torch.Tensor, split_seed: int, split: str):
        """Return (images float32 [N,C,H,W] in [0,1], object_mask bool [N,H,W])."""
        raise NotImplementedError


def world_label(config: dict[str, Any]) -> str:
    """The label of a world config (see :meth:`World.label`): ``name@size`` plus every parameter whose
    value differs from the default configuration of that world at that size."""
    name, size = str(config.get("world")), config.get("size")
    own = getattr(WORLDS.get(name), "label_for", None) if name in WORLDS else None
    if own is not None:          # a world whose config is not a few short parameters (``folder``)
        return own(config)
    try:
        default = WORLDS.get(name)(size=size).config()
    except Exception:            # unknown world or size: every parameter is named
        default = {}
    extras = [f"{k}={_label_value(v)}" for k, v in sorted(config.items())
              if k not in ("world", "size") and default.get(k, object()) != v]
    return f"{name}@{size}" + (f"[{','.join(extras)}]" if extras else "")


def _label_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "+".join(map(_label_value, v))
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def get(name: str, **params) -> World:
    """A world instance by registry name; unknown names list the valid ones."""
    return WORLDS.get(name)(**params)


def names() -> list[str]:
    return WORLDS.names()
