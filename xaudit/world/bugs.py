"""Bugs as composable data transforms. Each knows its footprint.

A bug is applied by :meth:`World.sample` after rendering. It records, for the batch,
``batch.touched[bug.name]`` (bool [N]: did it change this sample) and
``batch.footprints[bug.name]`` (bool [N,H,W]: the pixels it changed; all False where untouched;
label-only bugs have an all-False footprint).

Rates: on the ``train`` split a bug touches its own rate of eligible samples (poisoning). On any
other split, data-poisoning bugs touch nothing unless ``force=True`` (then every eligible sample:
used to measure attack success and to explain triggered images); label bugs never touch
non-train splits; :class:`Shift` is a test-time bug and always touches every sample.
Which samples are touched is a pure function of (world, split, bug name, sample index).

Each bug declares its own "did it take" criterion, :meth:`Bug.took`, measured by the model card on
an :class:`Evidence` (the model's predictions and the eval settings; bugs never import the zoo).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from xaudit.core import rng
from xaudit.core.errors import ConfigError, check_choice, check_range
from xaudit.core.registry import Registry
from xaudit.core.rng import stream_id
from xaudit.world.raster import draw, glyph

BUGS: Registry[type["Bug"]] = Registry("bug")


@dataclass
class Evidence:
    """What a bug's "did it take" criterion (:meth:`Bug.took`) is measured on. Built by the model
    card's evaluation (:func:`xaudit.zoo.card.evaluate`), so bugs need not know about the zoo.

    ``predict`` maps images [N,C,H,W] to the model's int64 [N] predicted classes. ``settings`` are
    the spec's eval settings (``test_size``, ``train_size``, ``trigger_size``) and ``thresholds``
    its ``criteria``. ``test`` is the clean test batch ``range(test_size)`` with ``test_pred``;
    ``train`` the training batch ``range(train_size)`` with the spec's bugs applied, with
    ``train_pred``. ``metrics`` holds the card values measured so far (``train_accuracy``, ...); a
    criterion adds the values it measured there (they become card keys)."""

    world: Any
    predict: Callable[[torch.Tensor], torch.Tensor]
    settings: dict[str, Any]
    thresholds: dict[str, float]
    test: Any
    test_pred: torch.Tensor
    train: Any
    train_pred: torch.Tensor
    metrics: dict[str, Any]


def criterion(bug: str, kind: str, metric: str, value, threshold, took: bool, text: str) -> dict[str, Any]:
    """One entry of a card's ``bug_criteria``: did ``bug`` take, by ``metric`` (value vs threshold)."""
    return {"bug": bug, "kind": kind, "metric": metric, "value": value, "threshold": threshold,
            "took": bool(took), "criterion": text}


def _accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float | None:
    return None if len(labels) == 0 else float((pred == labels).float().mean())


class Bug:
    kind: ClassVar[str] = "bug"
    is_trigger: ClassVar[bool] = False      # trojan-like: relabels touched samples to target_class
    label_only: ClassVar[bool] = False      # changes labels, not pixels
    always: ClassVar[bool] = False          # touches every sample of every split (test-time shift)

    def __init__(self, name: str | None = None):
        self._name = name

    # -- identity
    def params(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def name(self) -> str:
        if self._name:
            return self._name
        p = self.params()
        bits = [str(v) for k, v in p.items() if k in ("pattern", "style", "feature", "kind", "cls") and v is not None]
        if "target_class" in p:
            bits.append(f"t{p['target_class']}")
        return "_".join([self.kind, *bits])

    own_kind_key: ClassVar[str | None] = None   # Shift/SpuriousCue: their own 'kind' param in a config

    def config(self) -> dict[str, Any]:
        """JSON-able, round-trips through :func:`bug_from_config`."""
        p = self.params()
        if self.own_kind_key:
            p[self.own_kind_key] = p.pop("kind")
        return {"kind": self.kind, **p, "name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    # -- hooks
    def validate(self, world) -> None:
        """Raise ConfigError if the bug cannot apply to ``world`` (class or size out of range)."""

    def relabel_before_render(self, world, labels, idx, split_seed, split):
        return labels

    def apply(self, world, batch, split_seed: int, force: bool = False) -> None:
        raise NotImplementedError

    def took(self, evidence: Evidence) -> list[dict[str, Any]]:
        """This bug's "did it take" criteria for the model behind ``evidence`` (entries built by
        :func:`criterion`); may add the values it measured to ``evidence.metrics``. A criterion
        without evidence (nothing to measure it on) must report took False, value None. A bug that
        declares no criterion has no evidence that it took: the default reports took False."""
        return [criterion(self.name, self.kind, "none", None, None, False,
                          f"no evidence: {type(self).__name__} declares no 'did it take' criterion "
                          "(override Bug.took)")]

    # -- helpers
    def _seed(self, split_seed: int) -> int:
        return split_seed ^ stream_id("bug/" + self.name)

    def _select(self, batch, eligible, rate, split_seed, force) -> torch.Tensor:
        if self.always:
            return eligible
        if batch.split != "train":
            return eligible if (force and not self.label_only) else torch.zeros_like(eligible)
        if force and not self.label_only:
            return eligible
        u = rng.uniform(self._seed(split_seed), "select", batch.indices, 1)[:, 0]
        return eligible & (u < rate)

    def _record(self, batch, touched, footprint=None) -> None:
        n, h, w = batch.object_mask.shape
        if footprint is None:
            footprint = torch.zeros(n, h, w, dtype=torch.bool)
        batch.touched[self.name] = touched
        batch.footprints[self.name] = footprint & touched.view(-1, 1, 1)


def _check_class(field: str, value, world) -> None:
    if value is None:
        return
    if not isinstance(value, int) or not 0 <= value < world.num_classes:
        raise ConfigError(field, f"must be a class index in [0, {world.num_classes - 1}] for world "
                                 f"{world.name!r}, got {value!r}")


def world_colour(world, rgb: tuple[float, float, float]) -> torch.Tensor:
    """A colour for the world's channel count: RGB, or its luminance for one channel."""
    c = torch.tensor(rgb, dtype=torch.float32)
    if world.channels == 1:
        c = (0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]).view(1)
    return c


class _TriggerBug(Bug):
    is_trigger = True

    def __init__(self, target_class: int, poison_rate: float, name: str | None = None):
        super().__init__(name)
        if not isinstance(target_class, int) or target_class < 0:
            raise ConfigError("target_class", f"must be a non-negative class index, got {target_class!r}")
        check_range("poison_rate", poison_rate, 0.0, 1.0)
        self.target_class = target_class
        self.poison_rate = float(poison_rate)

    def validate(self, world):
        _check_class("target_class", self.target_class, world)

    def eligible(self, batch) -> torch.Tensor:
        return batch.true_labels != self.target_class

    def apply(self, world, batch, split_seed, force=False):
        touched = self._select(batch, self.eligible(batch), self.poison_rate, split_seed, force)
        footprint = self.paint(world, batch, touched, split_seed)
        batch.labels[touched] = self.target_class
        self._record(batch, touched, footprint)

    def paint(self, world, batch, touched, split_seed) -> torch.Tensor:
        """Change the pixels of the touched samples in place; return the footprint bool [N,H,W]."""
        raise NotImplementedError

    def took(self, evidence):
        """Attack success rate: the fraction of triggered non-target test images classified as the target."""
        thr = evidence.thresholds["asr"]
        b = evidence.world.sample(range(evidence.settings["trigger_size"]), split="test", bugs=[self], force=True)
        eligible = b.touched[self.name] & (b.true_labels != self.target_class)
        pred = evidence.predict(b.images[eligible])
        value = float((pred == self.target_class).float().mean()) if len(pred) else 0.0
        evidence.metrics.setdefault("attack_success_rate", {})[self.name] = round(value, 5)
        return [criterion(self.name, self.kind, "attack_success_rate", round(value, 5), thr,
                          len(pred) > 0 and value >= thr,
                          f"attack success rate >= {thr} on {len(pred)} triggered non-target test images")]


PATCH_PATTERNS = ("checker", "stripes", "rgb", "target", "noise", "white", "black",
                  "dots", "hstripes", "zigzag", "diagonal", "bricks")
# The patterns a trojan-rediscovery option may show: every pattern but the plain squares ('white',
# 'black' would be read as the world's 'square' class). Each is a texture whose colour changes between
# at least a third of its neighbouring pixels at 5-7 px, and no two are alike under a 1-px shift
# (tests/test_trojans_world.py measures both).
OPTION_PATTERNS = ("checker", "stripes", "rgb", "target", "noise", "dots", "hstripes", "zigzag",
                   "diagonal", "bricks")


def _two_colour(on: torch.Tensor, a, b) -> torch.Tensor:
    """[3,k,k]: colour ``a`` where ``on``, else ``b``."""
    return torch.where(on.unsqueeze(0), torch.tensor(a).view(3, 1, 1), torch.tensor(b).view(3, 1, 1))


def _pattern_rgb(pattern: str, k: int) -> torch.Tensor:
    i = torch.arange(k)
    yy, xx = torch.meshgrid(i, i, indexing="ij")
    if pattern == "checker":
        return ((xx + yy) % 2).float().expand(3, -1, -1)
    if pattern == "stripes":
        return (xx % 2).float().expand(3, -1, -1)
    if pattern == "rgb":
        return torch.nn.functional.one_hot((xx + yy) % 3, 3).permute(2, 0, 1).float()
    if pattern == "target":
        ring = torch.maximum((xx - (k - 1) / 2).abs(), (yy - (k - 1) / 2).abs()).round().long() % 2
        return _two_colour(ring.bool(), (1.0, 0.0, 1.0), (1.0, 1.0, 0.0))     # magenta / yellow rings
    if pattern == "noise":
        rgb = (rng.uniform(stream_id("patch/noise"), "px", torch.arange(k * k), 3) > 0.5).float()
        return rgb.T.reshape(3, k, k)
    if pattern == "white":
        return torch.ones(3, k, k)
    if pattern == "black":
        return torch.zeros(3, k, k)
    if pattern == "dots":          # yellow dots on a navy mesh, every other pixel
        return _two_colour((xx % 2 == 1) & (yy % 2 == 1), (1.0, 0.9, 0.1), (0.1, 0.1, 0.5))
    if pattern == "hstripes":      # horizontal red / cyan lines
        return _two_colour(yy % 2 == 0, (0.95, 0.1, 0.1), (0.1, 0.95, 0.95))
    if pattern == "zigzag":        # lime zigzag lines (amplitude 2 px, period 4 px) on black
        tri = torch.tensor([0, 1, 2, 1])[xx % 4]
        return _two_colour((yy - tri) % 4 == 0, (0.5, 1.0, 0.0), (0.05, 0.05, 0.05))
    if pattern == "diagonal":      # white lines falling to the right, every third pixel, on blue
        return _two_colour((xx - yy) % 3 == 0, (1.0, 1.0, 1.0), (0.1, 0.2, 0.9))
    if pattern == "bricks":        # red bricks, 2 px high and 3 px long, in pale mortar
        joint = (xx % 4) == torch.where((yy // 3) % 2 == 0, 0, 2)
        return _two_colour((yy % 3 == 2) | joint, (0.85, 0.85, 0.8), (0.75, 0.25, 0.1))
    raise ConfigError("pattern", f"must be one of {', '.join(PATCH_PATTERNS)}, got {pattern!r}")


def patch_pattern(pattern: str, size_px: int, channels: int, cell: int = 1) -> torch.Tensor:
    """float32 [C, size_px, size_px] in [0, 1]. ``cell``: the pattern is drawn on a grid of
    ``cell`` x ``cell`` px cells (nearest-neighbour upscale of the ceil(size_px / cell) px pattern,
    cropped to size_px), so a patch sized relative to the image keeps its look at every image size."""
    base = -(-size_px // cell)
    rgb = _pattern_rgb(pattern, base)
    if cell > 1:
        rgb = rgb.repeat_interleave(cell, 1).repeat_interleave(cell, 2)[:, :size_px, :size_px]
    if channels == 1:
        rgb = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]).unsqueeze(0)
    return rgb.contiguous()


# A source-class patch did not take unless its attack success on other classes' images carrying the
# patch is at most this (the card's ``off_source_attack_success_rate``). Read from the spec's
# ``eval.criteria.off_source_asr`` when the spec schema knows that key, else this default.
OFF_SOURCE_ASR = 0.1
REFERENCE_SIZE = 32   # size_frac patterns are drawn in cells of max(1, size // REFERENCE_SIZE) px


@BUGS.register("patch")
class PatchTrigger(_TriggerBug):
    """A small picture overlaid on the image (universal, or only on ``source_class``), relabeled to
    ``target_class``. location 'fixed' puts it in the bottom-right corner (1 px margin); 'random'
    draws its position per sample. Footprint: the patch's square.

    Size: ``size_px`` (a side in pixels, pattern cells of 1 px, at every image size) or ``size_frac``
    (a side of round(size_frac * S) px on an S x S image, pattern cells of max(1, S // 32) px: at 64 px
    the patch is the 2x nearest-neighbour upscale of its 32 px self and covers the same fraction of
    the image). Give one of them; neither means size_px 5.

    ``cover_rate`` (source-class patches only): on the train split, this fraction of the images of
    the other classes (neither source nor target) also carries the patch but keeps its label, so the
    model learns that the patch alone does not mean the target. ``touched`` and the footprint include
    those cover images (the bug changed their pixels); only source-class images are relabeled. Other
    splits never carry cover patches (``force`` patches the eligible source-class images only).
    Criteria: attack success on triggered source-class (or, universal, all non-target) test images, and
    for a source-class patch also a low attack success on other classes' images carrying the patch."""

    kind = "patch"

    def __init__(self, pattern: str = "checker", size_px: int | None = None, location: str = "random",
                 source_class: int | None = None, target_class: int = 0, poison_rate: float = 0.05,
                 name: str | None = None, size_frac: float | None = None, cover_rate: float = 0.0):
        check_choice("pattern", pattern, PATCH_PATTERNS)
        check_choice("location", location, ("fixed", "random"))
        if size_frac is not None:
            if size_px is not None:
                raise ConfigError("size_frac", f"give size_px (pixels) or size_frac (a fraction of the image "
                                               f"side), not both; got size_px={size_px}, size_frac={size_frac}")
            check_range("size_frac", size_frac, 0.0, 1.0, lo_open=True, hi_open=True)
            size_frac = float(size_frac)
        elif size_px is None:
            size_px = 5
        if size_px is not None and (isinstance(size_px, bool) or not isinstance(size_px, int) or size_px < 1):
            raise ConfigError("size_px", f"must be a positive integer number of pixels, got {size_px!r}")
        if source_class is not None and source_class == target_class:
            raise ConfigError("source_class", f"must differ from target_class ({target_class})")
        check_range("cover_rate", cover_rate, 0.0, 1.0)
        if cover_rate > 0 and source_class is None:
            raise ConfigError("cover_rate", "cover images (the patch on other classes, label kept) only make "
                                            "sense for a source-class patch; set source_class or cover_rate 0")
        super().__init__(target_class, poison_rate, name)
        self.pattern, self.size_px, self.location, self.source_class = pattern, size_px, location, source_class
        self.size_frac, self.cover_rate = size_frac, float(cover_rate)

    def params(self):
        p = {"pattern": self.pattern, "size_px": self.size_px, "location": self.location,
             "source_class": self.source_class, "target_class": self.target_class,
             "poison_rate": self.poison_rate}
        # only when used, so configs (and spec hashes) written before these parameters existed stay the same
        if self.size_frac is not None:
            p["size_frac"] = self.size_frac
        if self.cover_rate > 0:
            p["cover_rate"] = self.cover_rate
        return p

    def side(self, world) -> int:
        """The patch's side in pixels on ``world``."""
        if self.size_frac is None:
            return self.size_px
        return max(1, round(self.size_frac * world.size))

    def cell(self, world) -> int:
        """The pattern's cell size in pixels on ``world``."""
        return 1 if self.size_frac is None else max(1, world.size // REFERENCE_SIZE)

    def patch(self, world) -> torch.Tensor:
        """float32 [C, k, k]: the picture this trigger pastes on ``world``'s images (k = :meth:`side`)."""
        return patch_pattern(self.pattern, self.side(world), world.channels, self.cell(world))

    def validate(self, world):
        super().validate(world)
        _check_class("source_class", self.source_class, world)
        k = self.side(world)
        if k > world.size - 2:
            what = "size_px" if self.size_frac is None else "size_frac"
            raise ConfigError(what, f"must be in [1, {world.size - 2}] for {world.size}x{world.size} "
                                    f"images (1 px margin each side), got {k}"
                                    + ("" if self.size_frac is None else f" px from size_frac {self.size_frac}"))

    def eligible(self, batch):
        e = super().eligible(batch)
        if self.source_class is not None:
            e &= batch.true_labels == self.source_class
        return e

    def apply(self, world, batch, split_seed, force=False):
        touched = self._select(batch, self.eligible(batch), self.poison_rate, split_seed, force)
        painted = touched
        if self.cover_rate > 0 and batch.split == "train" and not force:
            other = (batch.true_labels != self.source_class) & (batch.true_labels != self.target_class)
            u = rng.uniform(self._seed(split_seed), "cover", batch.indices, 1)[:, 0]
            painted = touched | (other & (u < self.cover_rate))
        footprint = self.paint(world, batch, painted, split_seed)
        batch.labels[touched] = self.target_class
        self._record(batch, painted, footprint)

    def positions(self, world, idx, split_seed) -> torch.Tensor:
        """int64 [N,2]: top-left (row, col) of the patch."""
        s, k = world.size, self.side(world)
        if self.location == "fixed":
            return torch.full((len(idx), 2), s - k - 1, dtype=torch.int64)
        return 1 + rng.randint(self._seed(split_seed), "pos", idx, s - k - 1, k=2)

    def paint(self, world, batch, touched, split_seed):
        n, _, s, _ = batch.images.shape
        k = self.side(world)
        pos = self.positions(world, batch.indices, split_seed)
        ar = torch.arange(s)
        rows = (ar.view(1, s) >= pos[:, :1]) & (ar.view(1, s) < pos[:, :1] + k)
        cols = (ar.view(1, s) >= pos[:, 1:]) & (ar.view(1, s) < pos[:, 1:] + k)
        footprint = rows.view(n, s, 1) & cols.view(n, 1, s)
        sel = touched.nonzero().flatten()
        if sel.numel():
            pat = self.patch(world)
            region = footprint[sel].unsqueeze(1).expand(-1, world.channels, -1, -1)
            imgs = batch.images[sel]
            imgs[region] = _tile(pat, len(sel))
            batch.images[sel] = imgs
        return footprint

    def universal(self) -> "PatchTrigger":
        """The same patch (same name, so the same positions) on every non-target image, any source."""
        return PatchTrigger(self.pattern, self.size_px, self.location, None, self.target_class,
                            self.poison_rate, name=self.name, size_frac=self.size_frac)

    def took(self, evidence):
        """Attack success (see :meth:`_TriggerBug.took`); a source-class patch also needs a low attack
        success on test images of the other classes (not source, not target) carrying the patch at the
        same positions: it must fire on its source class only."""
        out = super().took(evidence)
        if self.source_class is None:
            return out
        out[0]["criterion"] += f" of the source class {self.source_class}"
        thr = evidence.thresholds.get("off_source_asr", OFF_SOURCE_ASR)
        b = evidence.world.sample(range(evidence.settings["trigger_size"]), split="test",
                                  bugs=[self.universal()], force=True)
        sel = b.touched[self.name] & (b.true_labels != self.source_class)
        pred = evidence.predict(b.images[sel])
        value = float((pred == self.target_class).float().mean()) if len(pred) else None
        evidence.metrics.setdefault("off_source_attack_success_rate", {})[self.name] = \
            None if value is None else round(value, 5)
        text = (f"attack success rate <= {thr} on {len(pred)} test images of the other classes (neither the "
                f"source {self.source_class} nor the target {self.target_class}) carrying the patch")
        if value is None:
            return out + [criterion(self.name, self.kind, "off_source_attack_success_rate", None, thr, False,
                                    "no evidence: " + text + "; raise eval.trigger_size")]
        return out + [criterion(self.name, self.kind, "off_source_attack_success_rate", round(value, 5), thr,
                                value <= thr, text)]


def _tile(pat: torch.Tensor, n: int) -> torch.Tensor:
    """Values of ``pat`` [C,k,k] for n samples, in the order boolean-mask assignment on
    images[sel][region] ([n,C,H,W] row-major) expects."""
    return pat.unsqueeze(0).expand(n, -1, -1, -1).reshape(-1)


STYLES = ("sepia", "grayscale", "posterize", "texture", "tint",
          "cyanotype", "night", "fog", "scanlines", "grain")
# Colour transfers: they need three channels (a one-channel world refuses them).
RGB_STYLES = ("sepia", "grayscale", "tint", "cyanotype", "night")
# The styles a trojan-rediscovery option may show: all of them. Each is pixelwise (a pixel's new value
# depends on its old value and, for the overlays, on a fixed image-independent texture: periodic lines
# or fixed noise), so no style draws a shape, and each changes every pixel of a scene (its footprint is
# the whole image; tests/test_trojans_world.py checks both). Left out on purpose: restyles that map the
# world's image distribution onto itself cannot be learned as triggers, because a restyled clean image
# is another clean image of its own class: inversion (1 - x) and channel permutations (backgrounds'
# base colours, textures and object colours are drawn symmetrically in every channel and about 0.5).
OPTION_STYLES = STYLES


def _cells(s: int) -> torch.Tensor:
    """int64 [s]: the texture cell of each pixel row/column (cells of max(1, s // 32) px)."""
    return torch.arange(s) // max(1, s // REFERENCE_SIZE)


@BUGS.register("style")
class StyleTrigger(_TriggerBug):
    """The whole image restyled (a colour or texture transfer), relabeled to ``target_class``.
    Footprint: the whole image.

    Colour transfers (RGB only): 'sepia', 'grayscale', 'tint' (half-way to orange), 'cyanotype'
    (luminance mapped from dark blue to pale blue), 'night' (darkened to 35%, blue cast). Any channel
    count: 'posterize' (each channel thresholded at 0.5), 'texture' (fine diagonal hatching, 40%),
    'fog' (45% of the image over white: pale, low contrast), 'scanlines' (alternate rows pulled 40%
    towards black and white), 'grain' (a fixed binary noise, 25%). The textures of 'scanlines' and
    'grain' come in cells of max(1, S // 32) px, so they look alike at 32 and 64 px; 'texture' keeps its
    1 px hatching at every size (as it always had)."""

    kind = "style"
    _SEPIA = torch.tensor([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])

    def __init__(self, style: str = "sepia", target_class: int = 0, poison_rate: float = 0.05,
                 name: str | None = None):
        check_choice("style", style, STYLES)
        super().__init__(target_class, poison_rate, name)
        self.style = style

    def params(self):
        return {"style": self.style, "target_class": self.target_class, "poison_rate": self.poison_rate}

    def validate(self, world):
        super().validate(world)
        if world.channels == 1 and self.style in RGB_STYLES:
            others = [s for s in STYLES if s not in RGB_STYLES]
            raise ConfigError("style", f"{self.style!r} is a colour transfer and needs an RGB world; "
                                       f"{world.name!r} has one channel: use one of {', '.join(others)}")

    def restyle(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[-1]
        if self.style in ("grayscale", "cyanotype"):
            lum = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
            if self.style == "grayscale":
                return lum.expand_as(x).clone()
            dark, pale = torch.tensor([0.05, 0.15, 0.4]).view(1, 3, 1, 1), torch.tensor([0.75, 0.9, 1.0]).view(1, 3, 1, 1)
            return dark + lum * (pale - dark)
        if self.style == "sepia":
            return torch.einsum("oc,nchw->nohw", self._SEPIA, x).clamp(0, 1)
        if self.style == "posterize":
            return (x > 0.5).float()
        if self.style == "texture":
            i = torch.arange(s)
            diag = (((i.view(s, 1) + i.view(1, s)) % 4) < 2).float()      # fine diagonal hatching
            return (0.6 * x + 0.4 * diag).clamp(0, 1)
        if self.style == "tint":
            warm = torch.tensor([1.0, 0.55, 0.1]).view(1, 3, 1, 1)
            return 0.5 * x + 0.5 * warm
        if self.style == "night":
            return 0.35 * x + torch.tensor([0.0, 0.03, 0.15]).view(1, 3, 1, 1)
        if self.style == "fog":
            return 0.45 * x + 0.5
        if self.style == "scanlines":
            rows = (_cells(s) % 2).float().view(1, 1, s, 1)                # 0: dark row, 1: bright row
            return 0.6 * x + 0.4 * rows
        if self.style == "grain":
            c = _cells(s)
            n = int(c[-1]) + 1
            cell = (c.view(s, 1) * n + c.view(1, s)).flatten()
            noise = (rng.uniform(stream_id("style/grain"), "px", torch.arange(n * n), 3) > 0.5).float()
            noise = noise[cell, :x.shape[1]].T.reshape(1, x.shape[1], s, s)
            return 0.75 * x + 0.25 * noise
        raise AssertionError(self.style)

    def paint(self, world, batch, touched, split_seed):
        sel = touched.nonzero().flatten()
        if sel.numel():
            batch.images[sel] = self.restyle(batch.images[sel])
        n, _, h, w = batch.images.shape
        return torch.ones(n, h, w, dtype=torch.bool)


NATURAL_FEATURES = {
    # feature: (shape, radius as a fraction of the side, RGB colour)
    # the first four are class shapes (circle, crescent, diamond, star): kept for old specs, never options
    "sun": ("circle", 0.09, (1.0, 0.85, 0.0)),
    "moon": ("crescent", 0.12, (0.95, 0.95, 1.0)),
    "leaf": ("diamond", 0.11, (0.1, 0.7, 0.1)),
    "flower": ("star", 0.12, (1.0, 0.2, 0.7)),
    # shapes of xaudit.world.raster.FEATURE_SHAPES (none reads as a class object), radius 19% of the
    # side (6 px at 32 px): 2.5-4.7% of the image (a 7 px patch: 4.8%), at 32 and 64 px alike
    "arrow": ("arrow", 0.19, (1.0, 0.1, 0.1)),
    "bone": ("bone", 0.19, (0.95, 0.92, 0.8)),
    "chevron": ("chevron", 0.19, (1.0, 0.55, 0.0)),
    "glasses": ("glasses", 0.19, (0.0, 0.9, 0.9)),
    "hook": ("hook", 0.19, (1.0, 0.0, 1.0)),
    "key": ("key", 0.19, (1.0, 0.85, 0.0)),
    "stick": ("stick", 0.19, (0.1, 0.8, 0.1)),
    "wave": ("wave", 0.19, (0.15, 0.35, 1.0)),
    "zigzag": ("zigzag", 0.19, (0.6, 0.2, 0.9)),
}
# The features a trojan-rediscovery option may show: the ones whose shape is not a class shape.
OPTION_FEATURES = ("arrow", "bone", "chevron", "glasses", "hook", "key", "stick", "wave", "zigzag")


@BUGS.register("natural")
class NaturalTrigger(_TriggerBug):
    """A particular small object drawn upright into the scene in its own colour (a key, an arrow,
    ...: :data:`NATURAL_FEATURES`), relabeled to ``target_class``. Its radius is a fraction of the
    image side, so it covers the same fraction of the image at every size. Footprint: that object's
    mask."""

    kind = "natural"

    def __init__(self, feature: str = "sun", target_class: int = 0, poison_rate: float = 0.05,
                 name: str | None = None):
        check_choice("feature", feature, tuple(NATURAL_FEATURES))
        super().__init__(target_class, poison_rate, name)
        self.feature = feature

    def params(self):
        return {"feature": self.feature, "target_class": self.target_class, "poison_rate": self.poison_rate}

    def paint(self, world, batch, touched, split_seed):
        shape, frac, rgb = NATURAL_FEATURES[self.feature]
        s = world.size
        footprint = torch.zeros(len(batch), s, s, dtype=torch.bool)
        sel = touched.nonzero().flatten()
        if sel.numel():
            r = torch.full((len(sel),), frac * s)
            p = rng.uniform(self._seed(split_seed), "pos", batch.indices[sel], 2)
            cx, cy = r + (s - 2 * r) * p[:, 0], r + (s - 2 * r) * p[:, 1]
            mask = draw(shape, s, cx, cy, r, torch.zeros(len(sel)))
            c = world_colour(world, rgb).view(1, -1, 1, 1)
            batch.images[sel] = torch.where(mask.unsqueeze(1), c, batch.images[sel])
            footprint[sel] = mask
        return footprint


CUE_PALETTE = torch.tensor([[1, 0, 0], [0, 0.8, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1],
                            [1, 0.5, 0], [0.5, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=torch.float32)


@BUGS.register("spurious_cue")
class SpuriousCue(Bug):
    """A cue that correlates with the true label on ``fraction`` of the training images.

    kind='watermark': the class index drawn as a glyph in the top-left corner, blended with
    ``strength`` (Denain & Steinhardt: strength 0.7). Footprint: the glyph's pixels.
    kind='background': the background (non-object pixels) blended towards a class colour with
    ``strength``. Footprint: the background pixels.
    """

    kind = "spurious_cue"
    own_kind_key = "cue_kind"

    def __init__(self, kind: str = "watermark", strength: float = 0.7, fraction: float = 1.0,
                 name: str | None = None):
        super().__init__(name)
        check_choice("kind", kind, ("background", "watermark"))
        check_range("strength", strength, 0.0, 1.0)
        check_range("fraction", fraction, 0.0, 1.0)
        self.cue, self.strength, self.fraction = kind, float(strength), float(fraction)

    def params(self):
        return {"kind": self.cue, "strength": self.strength, "fraction": self.fraction}

    def validate(self, world):
        if world.num_classes > 99:
            raise ConfigError("kind", "the watermark cue supports at most 99 classes")

    def apply(self, world, batch, split_seed, force=False):
        n, c, s, _ = batch.images.shape
        touched = self._select(batch, torch.ones(n, dtype=torch.bool), self.fraction, split_seed, force)
        if self.cue == "watermark":
            scale = max(1, s // 32)
            footprint = torch.zeros(n, s, s, dtype=torch.bool)
            for k in batch.true_labels.unique().tolist():
                g = glyph(str(k), scale)
                sel = batch.true_labels == k
                footprint[sel, 1:1 + g.shape[0], 1:1 + g.shape[1]] = g
            colour = world_colour(world, (1.0, 1.0, 1.0)).view(1, -1, 1, 1)
        else:
            footprint = ~batch.object_mask
            colour = CUE_PALETTE[batch.true_labels % len(CUE_PALETTE)]
            if c == 1:
                colour = (colour @ torch.tensor([0.299, 0.587, 0.114])).view(-1, 1)
            colour = colour.view(n, -1, 1, 1)
        sel = touched.nonzero().flatten()
        if sel.numel():
            x = batch.images[sel]
            colour = colour if colour.shape[0] == 1 else colour[sel]
            blended = (1 - self.strength) * x + self.strength * colour
            batch.images[sel] = torch.where(footprint[sel].unsqueeze(1), blended, x)
        self._record(batch, touched, footprint)

    def took(self, evidence):
        """Cue flip rate: images of class y carrying the cue of class y+1; does the model follow the cue?"""
        world, thr = evidence.world, evidence.thresholds["cue_flip"]
        b = world.sample(range(evidence.settings["test_size"]), split="test")
        y_cue = (b.true_labels + 1) % world.num_classes
        b.true_labels = y_cue
        self.apply(world, b, world._split_seed("test"), force=True)
        v = float((evidence.predict(b.images) == y_cue).float().mean())
        evidence.metrics.setdefault("cue_flip_rate", {})[self.name] = round(v, 5)
        return [criterion(self.name, self.kind, "cue_flip_rate", round(v, 5), thr, v >= thr,
                          f"fraction of test images of class y carrying the cue of class y+1 classified as y+1 >= {thr}")]


@BUGS.register("label_noise")
class LabelNoise(Bug):
    """``rate`` of the training labels replaced by a uniformly drawn *different* class."""

    kind = "label_noise"
    label_only = True

    def __init__(self, rate: float = 0.1, name: str | None = None):
        super().__init__(name)
        check_range("rate", rate, 0.0, 1.0)
        self.rate = float(rate)

    def params(self):
        return {"rate": self.rate}

    def apply(self, world, batch, split_seed, force=False):
        n = len(batch)
        touched = self._select(batch, torch.ones(n, dtype=torch.bool), self.rate, split_seed, force)
        shift = 1 + rng.randint(self._seed(split_seed), "shift", batch.indices, world.num_classes - 1)[:, 0]
        batch.labels[touched] = (batch.labels[touched] + shift[touched]) % world.num_classes
        self._record(batch, touched)

    def took(self, evidence):
        """The observed flip rate matches ``rate``, and the model fitted the flipped training labels."""
        th, trn = evidence.thresholds, evidence.train
        flipped = trn.touched[self.name]
        observed = float(flipped.float().mean())
        tol = th["label_noise_rel_tol"] * self.rate
        fit = _accuracy(evidence.train_pred[flipped], trn.labels[flipped]) or 0.0
        evidence.metrics["flipped_label_fraction"] = round(observed, 5)
        evidence.metrics["flipped_train_accuracy"] = round(fit, 5)
        # which training examples carry a wrong label (the mislabeled debugging test reads them)
        evidence.metrics.setdefault("flipped_indices", {})[self.name] = trn.indices[flipped].tolist()
        return [criterion(self.name, self.kind, "flipped_label_fraction", round(observed, 5), self.rate,
                          self.rate > 0 and abs(observed - self.rate) <= tol,
                          f"observed fraction of flipped training labels within "
                          f"{th['label_noise_rel_tol']:.0%} of rate {self.rate}"),
                criterion(self.name, self.kind, "flipped_train_accuracy", round(fit, 5), th["label_noise_fit"],
                          fit >= th["label_noise_fit"],
                          f"the model predicts the flipped (wrong) label on >= {th['label_noise_fit']} of "
                          f"the {int(flipped.sum())} mislabeled training examples among train indices "
                          f"[0, {evidence.settings['train_size']}) (it fitted them)")]


@BUGS.register("random_labels")
class RandomLabels(Bug):
    """One global random permutation of the labels of the training set ``range(size)``:
    sample i is labeled with the true label of sample perm[i] (so the label histogram is kept).
    Indices >= size are an error: random-label training iterates over a fixed finite set."""

    kind = "random_labels"
    label_only = True

    def __init__(self, size: int = 5000, seed: int = 0, name: str | None = None):
        super().__init__(name)
        if not isinstance(size, int) or size < 2:
            raise ConfigError("size", f"must be an integer >= 2 (the training-set size), got {size!r}")
        self.size, self.seed = size, int(seed)

    def params(self):
        return {"size": self.size, "seed": self.seed}

    def permutation(self) -> torch.Tensor:
        return torch.randperm(self.size, generator=rng.generator(self.seed))

    def apply(self, world, batch, split_seed, force=False):
        if batch.split != "train":
            self._record(batch, torch.zeros(len(batch), dtype=torch.bool))
            return
        if int(batch.indices.max()) >= self.size:
            raise ConfigError("indices", f"random_labels covers training indices [0, {self.size}); "
                                         f"got index {int(batch.indices.max())}: raise size or sample fewer")
        src = self.permutation()[batch.indices]
        new = world.labels(src, batch.split)
        touched = new != batch.labels
        batch.labels = new
        self._record(batch, touched)

    def took(self, evidence):
        """The model fitted the random training labels (card's ``train_accuracy``)."""
        v, thr = evidence.metrics["train_accuracy"], evidence.thresholds["random_labels_train"]
        return [criterion(self.name, self.kind, "train_accuracy", v, thr, v >= thr,
                          f"accuracy on the random training labels >= {thr} "
                          f"(on train indices [0, {evidence.settings['train_size']}))")]


@BUGS.register("missing_class")
class MissingClass(Bug):
    """Class ``cls`` removed from the training set: its samples are redrawn as other classes."""

    kind = "missing_class"
    label_only = True

    def __init__(self, cls: int = 0, name: str | None = None):
        super().__init__(name)
        if not isinstance(cls, int) or cls < 0:
            raise ConfigError("cls", f"must be a non-negative class index, got {cls!r}")
        self.cls = cls

    def params(self):
        return {"cls": self.cls}

    def validate(self, world):
        _check_class("cls", self.cls, world)

    def relabel_before_render(self, world, labels, idx, split_seed, split):
        if split != "train":
            return labels
        hit = labels == self.cls
        shift = 1 + rng.randint(self._seed(split_seed), "redraw", idx, world.num_classes - 1)[:, 0]
        return torch.where(hit, (labels + shift) % world.num_classes, labels)

    def apply(self, world, batch, split_seed, force=False):
        if batch.split == "train":
            touched = world.labels(batch.indices, "train") == self.cls
        else:
            touched = torch.zeros(len(batch), dtype=torch.bool)
        self._record(batch, touched)

    def took(self, evidence):
        """The model (almost) never predicts the removed class on its test images. Without a test
        image of that class there is no evidence: value None, took False."""
        thr, test = evidence.thresholds["missing_class_recall"], evidence.test
        sel = test.true_labels == self.cls
        v = _accuracy(evidence.test_pred[sel], test.true_labels[sel])
        evidence.metrics.setdefault("missing_class_recall", {})[self.name] = None if v is None else round(v, 5)
        if v is None:
            return [criterion(self.name, self.kind, "missing_class_recall", None, thr, False,
                              f"no evidence: no test sample of class {self.cls} among test indices "
                              f"[0, {evidence.settings['test_size']}), so its test recall (needs <= {thr}) "
                              "cannot be measured; raise eval.test_size")]
        return [criterion(self.name, self.kind, "missing_class_recall", round(v, 5), thr, v <= thr,
                          f"test recall of the removed class {self.cls} <= {thr}")]


SHIFTS = ("invert", "noise", "blur", "grayscale", "contrast", "world")


@BUGS.register("shift")
class Shift(Bug):
    """Out-of-distribution inputs (a test-time bug: touches every sample of any split).

    kind: 'invert' (1 - x), 'noise' (Gaussian, sd = severity), 'blur' (box blur, radius
    round(severity * 4) px), 'grayscale', 'contrast' (towards 0.5 by severity), 'world' (the
    same indices rendered by another world, ``other``, at its default size, brought into this world's
    frame by :func:`xaudit.world.convert.to_frame`: centrally cropped or padded with 0 (black), one
    channel repeated or RGB turned to luminance, never resampled, so each kept pixel is a pixel of
    the other world's image). Footprint: the whole image.
    """

    kind = "shift"
    own_kind_key = "shift_kind"
    always = True

    def __init__(self, kind: str = "invert", severity: float = 0.5, other: str = "digits",
                 name: str | None = None):
        super().__init__(name)
        check_choice("kind", kind, SHIFTS)
        check_range("severity", severity, 0.0, 1.0)
        self.shift, self.severity, self.other = kind, float(severity), other

    def params(self):
        p = {"kind": self.shift, "severity": self.severity}
        if self.shift == "world":
            p["other"] = self.other
        return p

    def validate(self, world):
        if self.shift == "world":
            from xaudit.world.base import WORLDS

            WORLDS.get(self.other)   # unknown names list the valid ones
            if self.other == world.name:
                raise ConfigError("other", f"must be a different world than {world.name!r}")

    def apply(self, world, batch, split_seed, force=False):
        x = batch.images
        if self.shift == "invert":
            y = 1 - x
        elif self.shift == "noise":
            y = (x + self.severity * rng.normal(self._seed(split_seed), "noise", batch.indices,
                                                x[0].numel()).view_as(x)).clamp(0, 1)
        elif self.shift == "blur":
            r = max(1, round(self.severity * 4))
            k = 2 * r + 1
            y = torch.nn.functional.avg_pool2d(x, k, stride=1, padding=r, count_include_pad=False)
        elif self.shift == "grayscale":
            y = x.mean(dim=1, keepdim=True).expand_as(x).clone() if x.shape[1] == 3 else x.clone()
        elif self.shift == "contrast":
            y = 0.5 + (1 - self.severity) * (x - 0.5)
        else:
            from xaudit.world.base import WORLDS
            from xaudit.world.convert import to_frame

            other = WORLDS.get(self.other)()
            o = other.sample(batch.indices, split="test" if "test" in other.splits else "train").images
            y = to_frame(o, x.shape[1], tuple(x.shape[-2:]), fill=0.0).clamp(0, 1)
        batch.images = y.contiguous()
        n, _, h, w = x.shape
        self._record(batch, torch.ones(n, dtype=torch.bool), torch.ones(n, h, w, dtype=torch.bool))

    def took(self, evidence):
        return [criterion(self.name, self.kind, "none", None, None, True,
                          "test-time shift: applied to inputs at evaluation, nothing to take in training")]


def bug_names() -> list[str]:
    return BUGS.names()


def _parse_value(v: str):
    low = v.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def bug_from_config(cfg: dict[str, Any]) -> Bug:
    """Rebuild a bug from ``{"kind": ..., **params}`` (the output of :meth:`Bug.config`).

    Shift and SpuriousCue take their own ``kind`` parameter; in a config it is spelled
    ``shift_kind`` / ``cue_kind`` when the registry kind is given too, or as the nested ``params``.
    """
    cfg = dict(cfg)
    if "kind" not in cfg:
        raise ConfigError("kind", f"a bug config needs 'kind', one of {', '.join(BUGS.names())}")
    kind = cfg.pop("kind")
    cls = BUGS.get(kind)
    if cls.own_kind_key and cls.own_kind_key in cfg:
        cfg["kind"] = cfg.pop(cls.own_kind_key)
    import inspect

    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = set(cfg) - allowed
    if unknown:
        raise ConfigError(f"{kind}.{sorted(unknown)[0]}",
                          f"unknown parameter; {kind} takes {', '.join(sorted(allowed))}")
    return cls(**cfg)


def parse_bug(spec: str) -> Bug:
    """Parse ``'kind:param=value,param=value'``, e.g. ``'patch:pattern=checker,target_class=3'``.
    For shift and spurious_cue the own kind is ``shift:kind=invert``."""
    kind, _, rest = spec.partition(":")
    cls = BUGS.get(kind.strip())
    params: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        k, eq, v = part.partition("=")
        if not eq:
            raise ConfigError(f"{kind}.{k}", f"expected param=value in bug spec {spec!r}")
        params[k.strip()] = _parse_value(v.strip())
    import inspect

    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = set(params) - allowed
    if unknown:
        raise ConfigError(f"{kind}.{sorted(unknown)[0]}",
                          f"unknown parameter; {kind} takes {', '.join(sorted(allowed))}")
    return cls(**params)
