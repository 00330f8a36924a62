"""The ``shapes`` and ``spurious`` worlds: one solid shape per image on a textured background.

Made trainable in about a minute (docs/measured.md#zoo-training): radius 25-37.5% of the image (8-12 px at 32 px),
rotation within +-20 degrees, mild backgrounds (base colour +- 0.25) and object contrast >= 0.4
against the background's base colour; no near-duplicate shapes (no hexagon or ellipse).
"""
from __future__ import annotations

import math

import torch

from xaudit.core import rng
from xaudit.core.errors import ConfigError, check_range
from xaudit.world.base import WORLDS, World, as_indices
from xaudit.world.raster import SHAPES, draw, interp_matrix

SHAPE_CLASSES = ("circle", "square", "triangle", "plus", "ring", "star", "crescent", "diamond", "tee", "ell")
BACKGROUNDS = ("noise", "stripes", "checkers")
BG_AMPLITUDE = 0.25
MIN_CONTRAST = 0.4


def backgrounds(size: int, family: torch.Tensor, seed: int, idx: torch.Tensor,
                families: tuple[str, ...] = BACKGROUNDS) -> torch.Tensor:
    """float32 [N, 3, size, size] textured backgrounds in [0, 1]; ``family[n]`` indexes ``families``.

    Also used by bugs (the spurious background cue), hence a module function.
    """
    n = idx.numel()
    base = 0.25 + 0.5 * rng.uniform(seed, "bg/base", idx, 3)                   # [N,3]
    direction = rng.uniform(seed, "bg/dir", idx, 3) * 2 - 1                    # [N,3]
    pattern_all = torch.zeros(n, 3, size, size)
    c = torch.arange(size, dtype=torch.float32).view(1, -1) + 0.5          # pixel centres [1, S]
    for f, name in enumerate(families):
        sel = (family == f).nonzero().flatten()
        if sel.numel() == 0:
            continue
        sidx = idx[sel]
        if name == "noise":
            low = rng.uniform(seed, "bg/noise", sidx, 3 * 16).view(-1, 3, 4, 4) * 2 - 1
            a = interp_matrix(size, 4)
            pattern = a @ low @ a.T                                               # [n,3,S,S]
        elif name == "stripes":
            p = rng.uniform(seed, "bg/stripes", sidx, 3)
            k = (2 * math.pi * (2 + 3 * p[:, 0]) / size).view(-1, 1)           # 2-5 cycles per image
            ang = (p[:, 1] * math.pi).view(-1, 1)
            phase = (p[:, 2] * 2 * math.pi).view(-1, 1)
            ax, by = k * torch.cos(ang) * c, k * torch.sin(ang) * c + phase    # [n, S] each
            # sin(ax + by) = sin(ax) cos(by) + cos(ax) sin(by): two outer products, no per-pixel trig
            s = torch.cos(by).unsqueeze(2) * torch.sin(ax).unsqueeze(1) + \
                torch.sin(by).unsqueeze(2) * torch.cos(ax).unsqueeze(1)
            pattern = s.unsqueeze(1) * direction[sel].view(-1, 3, 1, 1)
        elif name == "checkers":
            p = rng.uniform(seed, "bg/checkers", sidx, 3)
            cell = (size / 32) * (3 + 5 * p[:, 0]).view(-1, 1)
            sx = torch.sign(torch.sin(math.pi * c / cell + (p[:, 1] * 2 * math.pi).view(-1, 1)))   # [n, S]
            sy = torch.sign(torch.sin(math.pi * c / cell + (p[:, 2] * 2 * math.pi).view(-1, 1)))
            s = sy.unsqueeze(2) * sx.unsqueeze(1)                                                 # separable
            pattern = s.unsqueeze(1) * direction[sel].view(-1, 3, 1, 1)
        elif name == "plain":
            continue
        else:  # pragma: no cover - guarded by callers
            raise ConfigError("background", f"unknown family {name!r}")
        pattern_all.index_copy_(0, sel, pattern)
    return pattern_all.mul_(BG_AMPLITUDE).add_(base.view(n, 3, 1, 1)).clamp_(0.0, 1.0)


def object_colours(seed: int, idx: torch.Tensor, bg_base: torch.Tensor) -> torch.Tensor:
    """float32 [N,3]: random colours with max-channel contrast >= MIN_CONTRAST against bg_base."""
    c = rng.uniform(seed, "obj/colour", idx, 3)
    far = torch.where(bg_base < 0.5, torch.ones_like(bg_base), torch.zeros_like(bg_base))
    ok = (c - bg_base).abs().amax(dim=1) >= MIN_CONTRAST
    # Too close: move the most-different channel to the far end of its range.
    k = (c - bg_base).abs().argmax(dim=1)
    fixed = c.clone()
    fixed[torch.arange(len(c)), k] = far[torch.arange(len(c)), k]
    return torch.where(ok.view(-1, 1), c, fixed)


@WORLDS.register("shapes")
class ShapesWorld(World):
    """RGB shapes, 10 classes (circle, square, triangle, plus, ring, star, crescent, diamond, tee, ell).

    Each image: one shape of random colour, position, radius (25-37.5% of the side) and rotation
    (+-20 degrees) on a random background family (smooth noise, stripes or checkers).
    """

    name = "shapes"
    allowed_sizes = (32, 64)
    channels = 3

    def __init__(self, size: int | None = None, seed: int = 0, classes: tuple[str, ...] | list[str] | None = None,
                 max_rotation_deg: float = 20.0, radius_frac: tuple[float, float] = (0.25, 0.375)):
        super().__init__(size=size, seed=seed)
        classes = tuple(classes) if classes is not None else SHAPE_CLASSES
        for c in classes:
            if c not in SHAPES:
                raise ConfigError("classes", f"unknown shape {c!r}; valid shapes: {', '.join(SHAPES)}")
        if len(set(classes)) != len(classes) or len(classes) < 2:
            raise ConfigError("classes", f"need at least 2 distinct shapes, got {classes}")
        check_range("max_rotation_deg", max_rotation_deg, 0, 180)
        lo, hi = radius_frac
        check_range("radius_frac[0]", lo, 0.05, 0.5)
        check_range("radius_frac[1]", hi, lo, 0.5)
        self.class_names = classes
        self.num_classes = len(classes)
        self.max_rotation_deg = float(max_rotation_deg)
        self.radius_frac = (float(lo), float(hi))

    def config(self):
        return {**super().config(), "classes": list(self.class_names),
                "max_rotation_deg": self.max_rotation_deg, "radius_frac": list(self.radius_frac)}

    def _labels(self, idx, split_seed, split):
        return rng.randint(split_seed, "label", idx, self.num_classes)[:, 0]

    def _background_family(self, idx, labels, split_seed, split):
        return rng.randint(split_seed, "bg/family", idx, len(BACKGROUNDS))[:, 0]

    def _object_params(self, idx, split_seed):
        s = self.size
        p = rng.uniform(split_seed, "obj/geom", idx, 4)
        lo, hi = self.radius_frac
        radius = s * (lo + (hi - lo) * p[:, 0])
        cx = radius + (s - 2 * radius) * p[:, 1]
        cy = radius + (s - 2 * radius) * p[:, 2]
        angle = math.radians(self.max_rotation_deg) * (2 * p[:, 3] - 1)
        return cx, cy, radius, angle

    def _objects(self, idx, labels, split_seed):
        """bool [N,S,S] object masks for the shapes of ``labels`` (indexes into class_names)."""
        cx, cy, radius, angle = self._object_params(idx, split_seed)
        mask = torch.zeros(len(idx), self.size, self.size, dtype=torch.bool)
        for k, shape in enumerate(self.class_names):
            sel = (labels == k).nonzero().flatten()
            if sel.numel():
                mask[sel] = draw(shape, self.size, cx[sel], cy[sel], radius[sel], angle[sel])
        return mask

    def background(self, indices, split: str = "test") -> torch.Tensor:
        """float32 [N, 3, H, W] in [0, 1]: each sample's own background, without its object: off the
        object exactly the pixels ``sample(indices, split).images`` has there (no bugs applied), on the
        object what the background would have been there. The explanation of this image is what the
        GT-2 ground truth of the spurious debugging test weights the background with."""
        idx = as_indices(indices)
        sseed = self._split_seed(split)
        labels = self._labels(idx, sseed, split)
        return self._background(idx, labels, sseed, split).contiguous()

    def _background(self, idx, labels, split_seed, split):
        """float32 [N, 3, S, S]: the background :meth:`_render` pastes the object on (one function for
        both, so the two cannot drift apart)."""
        family = self._background_family(idx, labels, split_seed, split)
        return backgrounds(self.size, family, split_seed, idx)

    def _render(self, idx, labels, split_seed, split):
        bg = self._background(idx, labels, split_seed, split)
        base = 0.25 + 0.5 * rng.uniform(split_seed, "bg/base", idx, 3)
        colour = object_colours(split_seed, idx, base)
        mask = self._objects(idx, labels, split_seed)
        img = torch.where(mask.unsqueeze(1), colour.view(-1, 3, 1, 1), bg)
        return img.contiguous(), mask


@WORLDS.register("spurious")
class SpuriousWorld(ShapesWorld):
    """Two object classes, each paired with its own background family (the debugging-tests world).

    split ``train``/``test``: class k's object on background family ``class_backgrounds[k]`` with
    probability ``correlation`` (else the other class's family). ``test_background_only``: the
    background of the label's family, no object (object_mask all False). ``test_object_only``: the
    object on a plain (untextured) background that neither class was trained with.
    """

    name = "spurious"
    splits = ("train", "test", "test_background_only", "test_object_only")

    def __init__(self, size: int | None = None, seed: int = 0,
                 classes: tuple[str, str] | list[str] = ("triangle", "plus"),
                 class_backgrounds: tuple[str, str] | list[str] = ("stripes", "checkers"),
                 correlation: float = 1.0, radius_frac: tuple[float, float] = (0.18, 0.28),
                 max_rotation_deg: float = 20.0):
        if len(tuple(classes)) != 2:
            raise ConfigError("classes", f"the spurious world has exactly 2 classes, got {classes}")
        # max_rotation_deg is taken because config() states it: a world must rebuild from its own config
        super().__init__(size=size, seed=seed, classes=classes, radius_frac=radius_frac,
                         max_rotation_deg=max_rotation_deg)
        class_backgrounds = tuple(class_backgrounds)
        if len(class_backgrounds) != 2 or len(set(class_backgrounds)) != 2 or \
                any(b not in BACKGROUNDS for b in class_backgrounds):
            raise ConfigError("class_backgrounds", f"need 2 distinct families from {BACKGROUNDS}, got {class_backgrounds}")
        check_range("correlation", correlation, 0.0, 1.0)
        self.class_backgrounds = class_backgrounds
        self.correlation = float(correlation)

    def config(self):
        return {**super().config(), "class_backgrounds": list(self.class_backgrounds), "correlation": self.correlation}

    def _background_family(self, idx, labels, split_seed, split):
        fam_of_class = torch.tensor([BACKGROUNDS.index(b) for b in self.class_backgrounds])
        matched = rng.uniform(split_seed, "spurious/match", idx, 1)[:, 0] < self.correlation
        cls = torch.where(matched, labels, 1 - labels)
        return fam_of_class[cls]

    def _background(self, idx, labels, split_seed, split):
        if split == "test_object_only":      # plain: the base colour, no texture
            base = 0.25 + 0.5 * rng.uniform(split_seed, "bg/base", idx, 3)
            return base.view(-1, 3, 1, 1).expand(-1, 3, self.size, self.size)
        return super()._background(idx, labels, split_seed, split)

    def _render(self, idx, labels, split_seed, split):
        img, mask = super()._render(idx, labels, split_seed, split)
        if split == "test_background_only":
            img = self._background(idx, labels, split_seed, split)
            mask = torch.zeros_like(mask)
        return img, mask
