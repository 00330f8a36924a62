"""The trojan benchmark's world side: trigger generators, their footprints and option families, the
`trojans` spec (12 trojans) and its 64 px form, and the source-class patch's "did it take" criterion."""
import itertools
import math

import pytest
import torch
from torch import nn

from xaudit import world, zoo
from xaudit.world.bugs import (NATURAL_FEATURES, OFF_SOURCE_ASR, OPTION_FEATURES, OPTION_PATTERNS,
                               OPTION_STYLES, PATCH_PATTERNS, RGB_STYLES, STYLES, NaturalTrigger,
                               PatchTrigger, StyleTrigger, patch_pattern)
from xaudit.world.raster import SHAPES, draw

pytestmark = pytest.mark.usefixtures("one_thread")


def _changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """bool [N,H,W]: the pixels where any channel differs."""
    return (a != b).any(1)


def _all_triggers():
    pats = [PatchTrigger(p, size_frac=7 / 32, target_class=0, poison_rate=0.5) for p in PATCH_PATTERNS]
    pats += [PatchTrigger(p, 5, location="fixed", target_class=0, poison_rate=0.5) for p in ("noise", "bricks")]
    return (pats + [StyleTrigger(s, target_class=0, poison_rate=0.5) for s in STYLES]
            + [NaturalTrigger(f, target_class=0, poison_rate=0.5) for f in NATURAL_FEATURES])


@pytest.mark.parametrize("size", [32, 64])
def test_footprint_is_exactly_the_pixels_the_trigger_changed(size):
    w = world.get("shapes", size=size)
    n = 48 if size == 32 else 16
    clean = w.sample(range(n), split="test")
    for bug in _all_triggers():
        b = w.sample(range(n), split="test", bugs=[bug], force=True)
        touched, fp = b.touched[bug.name], b.footprints[bug.name]
        assert torch.equal(touched, clean.true_labels != 0), bug.name
        assert torch.equal(fp, _changed(b.images, clean.images)), bug.name
        assert fp[touched].any((1, 2)).all() and not fp[~touched].any(), bug.name
        if bug.kind == "style":
            assert fp[touched].all(), bug.name           # a restyle changes every pixel of a scene


def test_each_option_family_has_eight_distinct_members_none_class_like():
    assert len(OPTION_PATTERNS) >= 8 and len(OPTION_STYLES) >= 8 and len(OPTION_FEATURES) >= 8
    for fam, reg in ((OPTION_PATTERNS, PATCH_PATTERNS), (OPTION_STYLES, STYLES), (OPTION_FEATURES, NATURAL_FEATURES)):
        assert len(set(fam)) == len(fam) and set(fam) <= set(reg)
    # the class-shaped old features (sun = circle, moon = crescent, ...) and the plain squares are no options
    assert all(NATURAL_FEATURES[f][0] not in SHAPES for f in OPTION_FEATURES)
    assert "white" not in OPTION_PATTERNS and "black" not in OPTION_PATTERNS
    # feature colours differ (an option is told apart by colour as well as by shape)
    colours = [NATURAL_FEATURES[f][2] for f in OPTION_FEATURES]
    assert min(max(abs(a - b) for a, b in zip(c1, c2)) for c1, c2 in itertools.combinations(colours, 2)) >= 0.2


def _contrast(p: torch.Tensor) -> float:
    """Fraction of 4-neighbour pixel pairs whose colours differ by more than 0.25 in some channel."""
    dx = (p[:, :, 1:] - p[:, :, :-1]).abs().amax(0) > 0.25
    dy = (p[:, 1:, :] - p[:, :-1, :]).abs().amax(0) > 0.25
    return float((dx.sum() + dy.sum()) / (dx.numel() + dy.numel()))


def _shift_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean |a - b| on the inner pixels, minimized over 1 px shifts of b (a pattern learned one pixel out
    of phase is the same pattern)."""
    inner = slice(1, a.shape[-1] - 1)
    return min(float((a[:, inner, inner] - torch.roll(b, (dy, dx), (1, 2))[:, inner, inner]).abs().mean())
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


@pytest.mark.parametrize("k", [5, 7])
def test_option_patterns_are_textures_and_tell_apart(k):
    pats = {p: patch_pattern(p, k, 3) for p in OPTION_PATTERNS}
    for p, x in pats.items():
        assert x.shape == (3, k, k) and x.min() >= 0 and x.max() <= 1
        assert torch.equal(x, patch_pattern(p, k, 3))                    # deterministic
        # a texture, not a plain square: its colour changes between >= 1/3 of neighbouring pixels
        assert _contrast(x) >= 1 / 3, (p, _contrast(x))
    for a, b in itertools.permutations(OPTION_PATTERNS, 2):
        assert _shift_distance(pats[a], pats[b]) >= 0.2, (a, b)
    for p in ("white", "black"):
        assert _contrast(patch_pattern(p, k, 3)) == 0


# Class-likeness of a feature shape: its best IoU with a class shape, drawn at the same place with the
# class shape's scale (0.5-1.5x) and rotation (+-20 degrees, the world's range) free, centroids aligned.
_S, _R = 96, 30.0
_GRID = [(0.5 + 0.1 * i, a) for i in range(11) for a in (-20.0, -10.0, 0.0, 10.0, 20.0)]


def _centred(shape: str, grid) -> torch.Tensor:
    sc = torch.tensor([g[0] for g in grid])
    an = torch.tensor([math.radians(g[1]) for g in grid])
    c = torch.full((len(grid),), _S / 2)
    m = draw(shape, _S, c, c, _R * sc, an)
    g = torch.arange(_S, dtype=torch.float32) + 0.5
    cnt = m.sum((1, 2)).float()
    cx, cy = (m.sum(1).float() * g).sum(1) / cnt, (m.sum(2).float() * g).sum(1) / cnt
    return draw(shape, _S, 2 * c - cx, 2 * c - cy, _R * sc, an)


def test_no_option_feature_reads_as_a_class_shape():
    stack = {c: _centred(c, _GRID) for c in SHAPES}
    upright = {s: _centred(s, [(1.0, 0.0)])[0] for s in [*SHAPES, *(NATURAL_FEATURES[f][0] for f in OPTION_FEATURES)]}

    def best(shape, cls):
        m, q = stack[cls], upright[shape]
        return float(((m & q).sum((1, 2)).float() / (m | q).sum((1, 2)).float()).max())

    # The bound: every class shape is told apart by the model from its nearest other class, whose IoU is
    # 0.45 (tee) to 0.84 (circle/square/diamond). A feature must be farther from *every* class than the
    # most isolated class (tee) is from its nearest neighbour: IoU below the smallest of those.
    nearest = {a: max(best(a, b) for b in SHAPES if b != a) for a in SHAPES}
    bound = min(nearest.values())
    assert 0.4 < bound < 0.5 and max(nearest.values()) > 0.8
    for f in OPTION_FEATURES:
        shape = NATURAL_FEATURES[f][0]
        worst = max(SHAPES, key=lambda c: best(shape, c))
        assert best(shape, worst) < bound, (f, worst, best(shape, worst), bound)
    # and the features differ from each other at least as much as the world's classes do
    for a, b in itertools.combinations(OPTION_FEATURES, 2):
        ma, mb = upright[NATURAL_FEATURES[a][0]], upright[NATURAL_FEATURES[b][0]]
        assert float((ma & mb).sum() / (ma | mb).sum()) < max(nearest.values()), (a, b)


def test_option_styles_are_pixelwise_and_distinct():
    x = world.get("shapes").sample(range(8), split="test").images
    out = {}
    for s in OPTION_STYLES:
        bug = StyleTrigger(s, target_class=0, poison_rate=0.1)
        y = bug.restyle(x.clone())
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        # pixelwise: one changed input pixel changes that output pixel only (a style draws no shape)
        x2 = x.clone()
        x2[:, :, 10, 20] = 1 - x2[:, :, 10, 20]
        diff = _changed(bug.restyle(x2), y)
        assert not diff[:, torch.arange(32) != 10].any() and not diff[:, :, torch.arange(32) != 20].any(), s
        out[s] = y
    for a, b in itertools.combinations(OPTION_STYLES, 2):
        assert float((out[a] - out[b]).abs().mean()) >= 0.05, (a, b)
    # one-channel worlds take the styles that are not colour transfers, and refuse the others
    d = world.get("digits")
    for s in STYLES:
        bug = StyleTrigger(s, target_class=1, poison_rate=0.1)
        if s in RGB_STYLES:
            with pytest.raises(Exception, match="needs an RGB world"):
                d.sample(range(2), bugs=[bug])
        else:
            b = d.sample(range(4), split="test", bugs=[bug], force=True)
            assert b.images.shape == (4, 1, 28, 28)


def test_source_class_patch_poisons_only_source_class_images():
    w = world.get("shapes")
    t = PatchTrigger("target", size_frac=7 / 32, source_class=2, target_class=5, poison_rate=0.5, cover_rate=0.3)
    clean = w.sample(range(3000))
    b = w.sample(range(3000), bugs=[t])
    y, touched = b.true_labels, b.touched[t.name]
    relabeled = b.labels != y
    assert relabeled.any() and (y[relabeled] == 2).all() and (b.labels[relabeled] == 5).all()
    cover = touched & (y != 2)
    assert cover.any() and not (b.labels[cover] != y[cover]).any()        # cover images keep their labels
    assert not touched[y == 5].any()                                        # never on the target class
    frac = lambda m, e: float(m.sum() / e.sum())                            # noqa: E731
    assert abs(frac(touched & (y == 2), y == 2) - 0.5) < 0.1
    assert abs(frac(cover, (y != 2) & (y != 5)) - 0.3) < 0.05
    assert torch.equal(b.footprints[t.name], _changed(b.images, clean.images))
    # no cover on other splits: force patches exactly the source-class images
    f = w.sample(range(500), split="test", bugs=[t], force=True)
    assert torch.equal(f.touched[t.name], f.true_labels == 2)
    # config round trip; old-style configs are unchanged (no size_frac / cover_rate keys)
    assert world.bug_from_config(t.config()).config() == t.config()
    assert set(PatchTrigger("checker", 7, target_class=1).config()) == {
        "kind", "pattern", "size_px", "location", "source_class", "target_class", "poison_rate", "name"}
    with pytest.raises(Exception, match="cover_rate"):
        PatchTrigger("checker", 5, target_class=1, cover_rate=0.1)
    with pytest.raises(Exception, match="size_px .*or size_frac"):
        PatchTrigger("checker", 5, size_frac=0.2, target_class=1)


def test_trojans_spec_has_twelve_trojans_with_family_distinct_targets():
    s = zoo.load_spec("trojans")
    bugs = s.make_bugs()
    assert len(bugs) == 12
    fam = {k: [b for b in bugs if b.kind == k] for k in ("patch", "style", "natural")}
    assert all(len(v) == 4 for v in fam.values())
    for v in fam.values():
        assert len({b.target_class for b in v}) == 4                       # within a family targets differ
    srcs = [b for b in fam["patch"] if b.source_class is not None]
    assert len(srcs) == 2 and all(b.cover_rate > 0 for b in srcs)
    assert {b.pattern for b in fam["patch"]} <= set(OPTION_PATTERNS)
    styles = {b.style for b in fam["style"]}
    assert styles <= set(OPTION_STYLES)
    # no colour-collapsing transfer: models trained on one call a plain grey canvas its target (a plateau)
    assert not styles & {"grayscale", "sepia", "cyanotype", "tint", "fog"}
    assert {b.feature for b in fam["natural"]} <= set(OPTION_FEATURES)
    # one class is neither a target nor a source: the rediscovery's trojan-free control class
    used = {b.target_class for b in bugs} | {b.source_class for b in srcs}
    assert len(set(range(10)) - used) >= 1


def test_trojans_spec_at_64px_covers_the_same_fraction():
    s32 = zoo.load_spec("trojans")
    s64 = zoo.load_spec({"base": "trojans", "world": {"name": "shapes", "size": 64}})
    assert s64.world_config["size"] == 64 and s64.bugs == s32.bugs
    w32, w64 = s32.make_world(), s64.make_world()
    for bug in s32.make_bugs():
        if bug.kind == "patch":
            k32, k64 = bug.side(w32), bug.side(w64)
            assert k64 == 2 * k32 and k32 * k32 / 32 ** 2 == k64 * k64 / 64 ** 2
            small = patch_pattern(bug.pattern, k32, 3, bug.cell(w32))
            big = patch_pattern(bug.pattern, k64, 3, bug.cell(w64))
            assert torch.equal(big, small.repeat_interleave(2, 1).repeat_interleave(2, 2))
        fr = []
        for w in (w32, w64):
            b = w.sample(range(64), split="test", bugs=[bug], force=True)
            t = b.touched[bug.name]
            fr.append(float(b.footprints[bug.name][t].float().mean()))
        if bug.kind == "natural":
            assert abs(fr[1] - fr[0]) <= 0.1 * fr[0], (bug.name, fr)      # rasterization at 6 vs 12 px radius
        else:
            assert fr[0] == pytest.approx(fr[1]), (bug.name, fr)


class _Oracle(nn.Module):
    """A hand-built classifier: it knows each test image by its top pixel row (the patch never covers
    it: 1 px margin) and finds the patch by exact template match. It predicts the true class, except
    that an image carrying the patch is called ``target`` when its class is the source (``specific``) or
    whatever its class (not ``specific``)."""

    def __init__(self, w, n, pattern, target, source, specific):
        super().__init__()
        b = w.sample(range(n), split="test")
        self.rows, self.labels = b.images[:, :, 0, :].flatten(1), b.true_labels
        self.pattern, self.target, self.source, self.specific = pattern, target, source, specific

    def forward(self, x):
        d = torch.cdist(x[:, :, 0, :].flatten(1), self.rows, compute_mode="donot_use_mm_for_euclid_dist")
        dist, i = d.min(1)
        y = torch.where(dist < 1e-6, self.labels[i], torch.zeros_like(i))
        x, p = x.double(), self.pattern.double().unsqueeze(0)    # sum of squared differences at every offset
        ssd = nn.functional.conv2d(x * x, torch.ones_like(p)) - 2 * nn.functional.conv2d(x, p) + (p * p).sum()
        has_patch = ssd.flatten(1).min(1).values < 1e-6
        fire = has_patch & ((y == self.source) if self.specific else torch.ones_like(has_patch))
        y = torch.where(fire, torch.full_like(y, self.target), y)
        return nn.functional.one_hot(y, 10).float()


@pytest.mark.parametrize("specific", [True, False])
def test_source_class_criterion_on_a_hand_built_model(specific):
    spec = {"base": "clean", "train": {"train_size": 100},
            "bugs": [{"kind": "patch", "name": "p", "pattern": "bricks", "size_frac": 7 / 32, "source_class": 4,
                      "target_class": 2, "poison_rate": 0.3, "cover_rate": 0.03}],
            "eval": {"test_size": 100, "train_size": 100, "trigger_size": 400}}
    s = zoo.load_spec(spec)
    w = s.make_world()
    model = _Oracle(w, 400, patch_pattern("bricks", 7, 3), target=2, source=4, specific=specific)
    card = zoo.make_card(model, s)
    crit = {c["metric"]: c for c in card["bug_criteria"] if c["bug"] == "p"}
    assert crit["attack_success_rate"]["value"] == 1.0 and crit["attack_success_rate"]["took"]
    assert "source class 4" in crit["attack_success_rate"]["criterion"]
    off = crit["off_source_attack_success_rate"]
    assert off["threshold"] == OFF_SOURCE_ASR
    assert card["off_source_attack_success_rate"]["p"] == off["value"]
    if specific:
        assert off["value"] == 0.0 and off["took"] and card["bug_took"]
    else:   # the patch fires on every class: not a source-class trojan
        assert off["value"] == 1.0 and not off["took"] and not card["bug_took"]
        with pytest.raises(zoo.BugDidNotTake, match="off_source_attack_success_rate = 1.000"):
            zoo.require_bug_took(card, "trojan_localization")
    # a universal patch has no off-source criterion
    uni = zoo.load_spec({**spec, "bugs": [{**spec["bugs"][0], "source_class": None, "cover_rate": 0.0}]})
    assert [c["metric"] for c in zoo.make_card(model, uni)["bug_criteria"]] == ["attack_success_rate"]
