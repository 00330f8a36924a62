"""Trojan rediscovery's offline pieces (docs/protocols.md section 4, issue 14 item 3): the 8 options a
judge chooses among, two judges (pixels; features of an independently trained model) and the judges'
controls. A library module, not a registered check: ``trojan_rediscovery`` builds on it.

    >>> imgs, true, names = options(bug.config(), world, seed=0, exclude=["key"])
    >>> judge = PixelJudge()
    >>> picks = judge.pick(synth, imgs, box=option_box(bug.config(), world))

**Options.** The trojan's own trigger and ``k - 1`` distractors of its family (``OPTION_PATTERNS``,
``OPTION_STYLES``, ``OPTION_FEATURES``), never the trigger itself and never a name in ``exclude`` (the
caller passes the triggers of the model's other trojans that share this target). Which distractors and
where the true option sits are drawn from a ``torch.Generator`` seeded by ``seed`` XOR the stream id of the
trojan's name (so with one seed the true option's index still differs between trojans).

**Rendering, the way the trigger is applied.**

- patches: the pattern at the trigger's own size (``side``/``cell`` of the trojan's bug, so 64 px
  worlds get the 2 px cells) pasted as the world pastes it (a square assignment) on the canvas, at the
  centre;
- natural features: drawn with the world's own ``draw`` (shape, radius fraction, colour of
  :data:`NATURAL_FEATURES`) at the centre of the canvas;
- styles: ``StyleTrigger.restyle`` of a fixed clean test image (a style on a plain canvas is nearly
  invisible: scanlines and grain would be stripes/noise on grey, posterize of grey is black).

Canvas for patches and features: mid grey 0.5. Reasons: (1) a judge compares the option's pixels or
features, and a plain canvas adds nothing but the trigger, so the options differ only where the trigger
is; a clean test image would add an object every option shares, which dilutes cosine similarities;
(2) grey 0.5 is no plateau of the current ``trojans`` model (its spec: at most 0.29 for any class,
seeds 0 and 1), while plain black and white are (posterize, 0.87-0.99). :func:`canvas_report` measures
the audited model's softmax on the canvas so a run can record it. The style base image is the first test
image of class ``STYLE_BASE_CLASS`` (9, ``ell``: the `trojans` spec's trojan-free class, neither target
nor source).

**Where the trigger is.** Options come with a box (:func:`option_box`): the patch's square, or the
bounding square of every feature of the family drawn at the centre; styles have no box (whole image).
A synthesized image has its trigger at an unknown position, so with a box a judge scores every
box-sized window of the synthesized image (stride ``stride``) against the options' box; an option's
score is the max over windows. Without a box the whole image is compared.

**Judges.** :class:`PixelJudge`: with a box, cosine similarity of the mean-centred pixels inside the
box (centred by the scalar mean over channels and pixels, so colour differences between channels
remain); without a box (styles), cosine of a style descriptor: 8-bin per-channel colour histograms
(colour) beside the normalized amplitude spectrum of the grey image (texture periodicity), each half
L2-normalized. :class:`FeatureJudge`: cosine of mean-pooled activations of one layer of an
independently trained model (another architecture and seed than the audited model), pooled over the
box or each window of the feature map (styles: the whole map). :class:`Calibrated` wraps either and
z-scores each option's score against its scores on noise images (measured below: the raw judges'
noise-control failures and what calibration does to them).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from xaudit.core.errors import ConfigError
from xaudit.core.rng import stream_id
from xaudit.explain.synthesis.caricature import activations
from xaudit.world.bugs import (NATURAL_FEATURES, OPTION_FEATURES, OPTION_PATTERNS, OPTION_STYLES, NaturalTrigger,
                               PatchTrigger, StyleTrigger, bug_from_config, patch_pattern, world_colour)
from xaudit.world.raster import draw

__all__ = ["FAMILIES", "CANVAS_GREY", "STYLE_BASE_CLASS", "options", "option_box", "option_names", "render_option",
           "canvas", "style_base", "canvas_report", "PixelJudge", "FeatureJudge", "Calibrated", "self_pick_accuracy",
           "true_pick_control", "siblings", "noise_control", "collapse", "chi_square_uniform_p", "rank_of_true"]

FAMILIES = {"patch": OPTION_PATTERNS, "style": OPTION_STYLES, "natural": OPTION_FEATURES}
CANVAS_GREY = 0.5
STYLE_BASE_CLASS = 9


def _bug(bug_config) -> Any:
    if isinstance(bug_config, (PatchTrigger, StyleTrigger, NaturalTrigger)):
        return bug_config
    if not isinstance(bug_config, dict):
        raise ConfigError("bug_config", f"must be a trigger bug's config dict (kind patch, style or natural) "
                                        f"or such a bug, got {type(bug_config).__name__}")
    bug = bug_from_config(bug_config)
    if bug.kind not in FAMILIES:
        raise ConfigError("bug_config.kind", f"rediscovery options exist for kinds {', '.join(FAMILIES)}, "
                                             f"got {bug.kind!r}")
    return bug


def option_names(bug) -> tuple[str, ...]:
    return FAMILIES[bug.kind]


def _true_name(bug) -> str:
    name = {"patch": getattr(bug, "pattern", None), "style": getattr(bug, "style", None),
            "natural": getattr(bug, "feature", None)}[bug.kind]
    if name not in FAMILIES[bug.kind]:
        raise ConfigError(f"bug_config.{ {'patch': 'pattern', 'style': 'style', 'natural': 'feature'}[bug.kind]}",
                          f"{name!r} is not a rediscovery option of its family; options: "
                          f"{', '.join(FAMILIES[bug.kind])}")
    return name


def canvas(world) -> torch.Tensor:
    """float32 [C,S,S]: the mid-grey canvas patches and features are pasted on."""
    return torch.full((world.channels, world.size, world.size), CANVAS_GREY)


def style_base(world) -> torch.Tensor:
    """float32 [C,S,S]: the first test image of class STYLE_BASE_CLASS (clamped to the world's classes)."""
    cls = min(STYLE_BASE_CLASS, world.num_classes - 1)
    b = world.sample(range(200), split="test")
    hit = (b.true_labels == cls).nonzero().flatten()
    i = int(hit[0]) if hit.numel() else 0
    return b.images[i].clone()


def _centre_pos(bug, world) -> int:
    return (world.size - bug.side(world)) // 2


def render_option(bug_config, name: str, world, position=None) -> torch.Tensor:
    """float32 [C,S,S]: option ``name`` of the trojan's family rendered as its trigger is applied.
    ``position``: patches (row, col) of the top-left corner; natural features (cx, cy) of the centre;
    default the centre. Styles take no position."""
    bug = _bug(bug_config)
    fam = FAMILIES[bug.kind]
    if name not in fam:
        raise ConfigError("name", f"must be a {bug.kind} option, one of {', '.join(fam)}; got {name!r}")
    s = world.size
    if bug.kind == "patch":
        k = bug.side(world)
        pat = patch_pattern(name, k, world.channels, bug.cell(world))
        r, c = position if position is not None else (_centre_pos(bug, world),) * 2
        if not (0 <= r <= s - k and 0 <= c <= s - k):
            raise ConfigError("position", f"a {k} px patch needs a top-left corner in [0, {s - k}], got {(r, c)}")
        out = canvas(world)
        out[:, r:r + k, c:c + k] = pat
        return out
    if bug.kind == "natural":
        shape, frac, rgb = NATURAL_FEATURES[name]
        cx, cy = position if position is not None else (s / 2, s / 2)
        mask = draw(shape, s, torch.tensor([float(cx)]), torch.tensor([float(cy)]),
                    torch.tensor([frac * s]), torch.zeros(1))[0]
        return torch.where(mask.unsqueeze(0), world_colour(world, rgb).view(-1, 1, 1), canvas(world))
    if position is not None:
        raise ConfigError("position", "a style changes the whole image and takes no position")
    return StyleTrigger(name, target_class=0, poison_rate=0.0).restyle(style_base(world).unsqueeze(0))[0]


def option_box(bug_config, world) -> tuple[int, int, int, int] | None:
    """(row, col, height, width) of where the options' triggers are (centre-rendered), or None for styles."""
    bug = _bug(bug_config)
    if bug.kind == "patch":
        p, k = _centre_pos(bug, world), bug.side(world)
        return (p, p, k, k)
    if bug.kind == "style":
        return None
    grey = canvas(world)
    changed = torch.zeros(world.size, world.size, dtype=torch.bool)
    for name in FAMILIES["natural"]:
        changed |= (render_option(bug, name, world) != grey).any(0)
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    side = int(max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1)
    r0 = min(int(rows[0]), world.size - side)
    c0 = min(int(cols[0]), world.size - side)
    return (r0, c0, side, side)


def options(bug_config, world, k: int = 8, seed: int = 0, exclude: Sequence[str] = ()
            ) -> tuple[torch.Tensor, int, list[str]]:
    """The trojan's true trigger among ``k - 1`` distractors of its family, rendered as it is applied.
    Returns (images float32 [k,C,S,S], the true option's index, the option names in order)."""
    bug = _bug(bug_config)
    true = _true_name(bug)
    fam = FAMILIES[bug.kind]
    if isinstance(exclude, str):
        raise ConfigError("exclude", f"must be a list of option names, got the string {exclude!r}")
    bad = [e for e in exclude if e not in fam]
    if bad:
        raise ConfigError("exclude", f"{bad[0]!r} is not a {bug.kind} option; options: {', '.join(fam)}")
    if true in exclude:
        raise ConfigError("exclude", f"holds the trojan's own trigger {true!r}")
    pool = [n for n in fam if n != true and n not in exclude]
    if not isinstance(k, int) or k < 2 or k - 1 > len(pool):
        raise ConfigError("k", f"must be an int in [2, {len(pool) + 1}] for {bug.kind} trojan {true!r} with "
                               f"{len(exclude)} excluded option(s) ({len(pool)} distractors left), got {k!r}")
    # the trojan's name is mixed into the seed, so the true option's index differs between trojans of one run
    g = torch.Generator().manual_seed((int(seed) ^ stream_id("rediscovery/options/" + bug.name)) & (2 ** 63 - 1))
    picked = [pool[i] for i in torch.randperm(len(pool), generator=g)[:k - 1].tolist()]
    at = int(torch.randint(k, (1,), generator=g))
    names = picked[:at] + [true] + picked[at:]
    images = torch.stack([render_option(bug, n, world) for n in names])
    return images, at, names


@torch.no_grad()
def canvas_report(model, world) -> dict[str, float]:
    """The audited model's top softmax probability and class on the grey canvas (a plateau reads > 0.8)."""
    p = torch.softmax(model(canvas(world).unsqueeze(0)), 1)[0]
    return {"canvas_grey": CANVAS_GREY, "max_prob": float(p.max()), "argmax": int(p.argmax())}


# ---------------------------------------------------------------- judges

def _check(synth, options_, box):
    for nm, t in (("synth", synth), ("options", options_)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ConfigError(nm, f"must be a float tensor [N,C,S,S], got "
                                  f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if synth.shape[1:] != options_.shape[1:]:
        raise ConfigError("synth", f"images of shape {tuple(synth.shape[1:])} do not match the options' "
                                   f"{tuple(options_.shape[1:])}")
    if box is not None:
        r0, c0, h, w = box
        s = options_.shape[-1]
        if not (0 <= r0 <= s - h and 0 <= c0 <= s - w and h > 0 and w > 0):
            raise ConfigError("box", f"(row, col, h, w) = {tuple(box)} does not fit in {s}x{s} images")


class _Judge:
    stride = 1

    def embed(self, x: torch.Tensor, box) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def scores(self, synth: torch.Tensor, options_: torch.Tensor, box=None, chunk: int = 64) -> torch.Tensor:
        """float [M, K]: each synthesized image's similarity to each option (max over windows with a box)."""
        _check(synth, options_, box)
        if box is not None:
            r0, c0, h, w = box
            return self._crop_scores(synth.float(), options_[:, :, r0:r0 + h, c0:c0 + w].float(), chunk)
        eo = F.normalize(self.embed(options_.float(), None), dim=1)                       # [K,D]
        return torch.cat([F.normalize(self.embed(synth[i:i + chunk].float(), None), dim=1) @ eo.T
                          for i in range(0, len(synth), chunk)])

    def _crop_scores(self, synth, crops, chunk):
        h, w = crops.shape[-2:]
        eo = F.normalize(self.embed(crops, (0, 0, h, w)), dim=1)
        out = []
        for i in range(0, len(synth), chunk):
            part = synth[i:i + chunk]
            m, c = part.shape[:2]
            win = part.unfold(2, h, self.stride).unfold(3, w, self.stride)               # [m,C,nr,nc,h,w]
            win = win.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, h, w)
            e = F.normalize(self.embed(win, (0, 0, h, w)), dim=1).view(m, -1, eo.shape[1])
            out.append((e @ eo.T).amax(1))
        return torch.cat(out)

    def pick(self, synth: torch.Tensor, options_: torch.Tensor, box=None) -> torch.Tensor:
        """int64 [M]: the option each synthesized image is judged closest to."""
        return self.scores(synth, options_, box).argmax(1)


class PixelJudge(_Judge):
    """Pixel similarity: mean-centred pixels in the box (patches, features), or a style descriptor
    (colour histograms + grey amplitude spectrum) for whole-image options. With a box it scores every
    window at ``stride`` (default 1: every position, so a trigger anywhere is found; a larger stride may
    miss it). Measured on the `trojans` world: it fails the noise control for styles (uniform noise reads
    as 'grain': flat spectrum, spread histogram), and passes it for patches and features."""

    def __init__(self, stride: int = 1, bins: int = 8):
        if not isinstance(stride, int) or stride < 1:
            raise ConfigError("stride", f"must be a positive int, got {stride!r}")
        self.stride, self.bins = stride, bins

    def embed(self, x, box):
        if box is not None:
            r0, c0, h, w = box
            v = x[:, :, r0:r0 + h, c0:c0 + w].flatten(1)
            return v - v.mean(1, keepdim=True)
        n, c = x.shape[:2]
        idx = (x.clamp(0, 1) * self.bins).long().clamp(max=self.bins - 1)                  # [N,C,S,S]
        hist = F.one_hot(idx, self.bins).float().mean((2, 3)).flatten(1)                  # [N, C*bins]
        grey = x.mean(1)
        spec = torch.fft.rfft2(grey - grey.mean((1, 2), keepdim=True)).abs().flatten(1)
        return torch.cat([F.normalize(hist, dim=1), F.normalize(spec, dim=1)], 1)


class FeatureJudge(_Judge):
    """Cosine of mean-pooled activations of ``layer`` (a module name of ``model``, whose output is a
    feature map [N, D, h, w]). ``model`` must be trained independently of the audited model (another
    architecture and seed). One forward per image: an option's embedding is its feature map averaged
    over the box (scaled to the map's resolution), a synthesized image's is its map averaged over every
    box-sized window (stride ``stride`` on the map), scored by the best window; without a box (styles),
    whole maps are averaged. This differs from embedding each window pasted into the canvas only by the
    layer's receptive field at the window's edge, at 1/W of the cost (W windows: ~170 for a 7 px box at
    32 px, where the pasted form took 120 s for the 12 trojans' controls, the pooled form 1 s).
    Measured on the `trojans` world (clean VGG seed 1): raw, it FAILS the noise control for every
    trojan's options at relu1, relu2 and relu3 (one option takes 58-100% of 100 noise images' picks:
    noise images are alike in feature space); :class:`Calibrated` fixes that at relu1 but then misses
    the true option of one trojan (11 of 12)."""

    def __init__(self, model: torch.nn.Module, layer: str, stride: int = 1):
        mods = dict(model.named_modules())
        if layer not in mods:
            raise ConfigError("layer", f"{layer!r} is no module of {type(model).__name__}; "
                                       f"modules: {', '.join(n for n in mods if n)}")
        if not isinstance(stride, int) or stride < 1:
            raise ConfigError("stride", f"must be a positive int, got {stride!r}")
        self.model, self.layer, self.stride = model.eval(), layer, stride

    def fmap(self, x: torch.Tensor) -> torch.Tensor:
        a = activations(self.model, x, [self.layer])[self.layer]
        if a.dim() != 4:
            raise ConfigError("layer", f"{self.layer!r} gives {tuple(a.shape)}: a feature judge needs a "
                                       "convolutional layer's map [N, D, h, w]")
        return a

    @torch.no_grad()
    def scores(self, synth: torch.Tensor, options_: torch.Tensor, box=None, chunk: int = 256) -> torch.Tensor:
        _check(synth, options_, box)
        fo = self.fmap(options_.float())
        if box is None:
            eo = F.normalize(fo.mean((2, 3)), dim=1)
            return torch.cat([F.normalize(self.fmap(synth[i:i + chunk].float()).mean((2, 3)), dim=1) @ eo.T
                              for i in range(0, len(synth), chunk)])
        r0, c0, h, w = box
        f = fo.shape[-1] / options_.shape[-1]
        a, b = int(r0 * f), int(c0 * f)
        hh, ww = max(1, round(h * f)), max(1, round(w * f))
        eo = F.normalize(fo[:, :, a:a + hh, b:b + ww].mean((2, 3)), dim=1)                    # [K,D]
        out = []
        for i in range(0, len(synth), chunk):
            win = F.avg_pool2d(self.fmap(synth[i:i + chunk].float()), (hh, ww), stride=self.stride)
            e = F.normalize(win.flatten(2).transpose(1, 2), dim=2)                             # [m,W,D]
            out.append((e @ eo.T).amax(1))
        return torch.cat(out)

    def embed(self, x, box):    # whole-image embedding (the self-pick control without a box)
        return self.fmap(x).mean((2, 3))


class Calibrated:
    """A judge whose scores are z-scored per option against its scores on ``n`` uniform-noise images
    (a draw of their own, from ``seed``): score'(m, k) = (s(m, k) - mean_k) / sd_k. It removes the bias
    toward options that resemble everything (the raw judges' collapse on noise): on noise, picks then
    spread over the options by construction, so for a calibrated judge the noise control only checks
    that the calibration holds on a fresh draw; the true-pick control (can it still find the true
    option?) is the one that tests it. Means and sds are memoized per option set and box."""

    def __init__(self, judge: _Judge, n: int = 200, seed: int = 0):
        if not isinstance(n, int) or n < 2:
            raise ConfigError("n", f"must be an int >= 2 (noise images to calibrate on), got {n!r}")
        self.judge, self.n, self.seed = judge, n, int(seed)
        self._memo: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _stats(self, options_: torch.Tensor, box):
        import hashlib

        key = (hashlib.sha1(options_.detach().float().contiguous().numpy().tobytes()).hexdigest(),
               None if box is None else tuple(box))
        if key not in self._memo:
            g = torch.Generator().manual_seed(self.seed)
            ref = self.judge.scores(torch.rand((self.n, *options_.shape[1:]), generator=g), options_, box)
            self._memo[key] = (ref.mean(0), ref.std(0).clamp_min(1e-8))
        return self._memo[key]

    @torch.no_grad()
    def scores(self, synth: torch.Tensor, options_: torch.Tensor, box=None) -> torch.Tensor:
        mu, sd = self._stats(options_, box)
        return (self.judge.scores(synth, options_, box) - mu) / sd

    def pick(self, synth: torch.Tensor, options_: torch.Tensor, box=None) -> torch.Tensor:
        return self.scores(synth, options_, box).argmax(1)


# ---------------------------------------------------------------- controls

def self_pick_accuracy(judge, options_: torch.Tensor, box=None) -> float:
    """Handed each option itself, the fraction of options the judge picks as themselves."""
    picks = judge.pick(options_, options_, box)
    return float((picks == torch.arange(len(options_))).float().mean())


def true_pick_control(judge, world, bugs: Sequence[Any], seed: int = 0) -> dict[str, Any]:
    """Handed each trojan's true option, does the judge pick it? {'accuracy', 'per_trojan'}; options are
    drawn with the trojan's same-target siblings excluded."""
    per = {}
    bugs = [_bug(b) for b in bugs]
    for b in bugs:
        imgs, t, _ = options(b, world, seed=seed, exclude=siblings(b, bugs))
        per[b.name] = int(judge.pick(imgs[t:t + 1], imgs, option_box(b, world))[0]) == t
    return {"accuracy": sum(per.values()) / max(1, len(per)), "per_trojan": per}


def siblings(bug, bugs: Sequence[Any]) -> list[str]:
    """The option names of ``bugs`` in ``bug``'s family that share its target (the names to exclude)."""
    bug = _bug(bug)
    out = []
    for b in map(_bug, bugs):
        if b.kind == bug.kind and b.target_class == bug.target_class and b.name != bug.name:
            n = _true_name(b)
            if n != _true_name(bug) and n not in out:
                out.append(n)
    return out


def chi_square_uniform_p(picks: torch.Tensor, k: int = 8) -> float:
    """p-value of Pearson's chi-square test of the picks against uniform over k options."""
    from scipy.stats import chisquare

    counts = torch.bincount(picks.flatten().long(), minlength=k).double()
    if counts.sum() == 0:
        raise ConfigError("picks", "is empty")
    return float(chisquare(counts.numpy()).pvalue)


def collapse(picks: torch.Tensor, k: int = 8, factor: float = 3.0) -> bool:
    """True when one option gets more than ``factor`` times its chance share of the picks."""
    picks = torch.as_tensor(picks).flatten().long()
    if picks.numel() == 0:
        raise ConfigError("picks", "is empty: nothing to test for collapse")
    if picks.min() < 0 or picks.max() >= k:
        raise ConfigError("picks", f"must be option indices in [0, {k - 1}], got range "
                                   f"[{int(picks.min())}, {int(picks.max())}]")
    freq = torch.bincount(picks, minlength=k).max().item() / picks.numel()
    return freq > factor / k


def noise_control(judge, options_: torch.Tensor, box=None, n: int = 400, seed: int = 0) -> dict[str, Any]:
    """Picks on ``n`` uniform-noise images: chi-square p-value against uniform, the most-picked option's
    frequency (chance 1/k) and whether the picks collapse."""
    if not isinstance(n, int) or n < 1:
        raise ConfigError("n", f"must be a positive int, got {n!r}")
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.rand((n, *options_.shape[1:]), generator=g)
    picks = judge.pick(noise, options_, box)
    k = len(options_)
    return {"n": n, "p_value": chi_square_uniform_p(picks, k),
            "max_frequency": torch.bincount(picks, minlength=k).max().item() / n,
            "counts": torch.bincount(picks, minlength=k).tolist(), "collapsed": collapse(picks, k)}


def rank_of_true(scores: torch.Tensor, true_index: int) -> torch.Tensor:
    """int64 [M]: the true option's rank among the options per synthesized image (1 = best; ties count
    against it)."""
    return (scores >= scores[:, true_index:true_index + 1]).sum(1)
