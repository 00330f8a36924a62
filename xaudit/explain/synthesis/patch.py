"""``adversarial_patch``: one universal square patch that, pasted anywhere on clean images, makes the
model predict a target class (Brown et al. 2017, "Adversarial Patch"); the trojan-rediscovery method
Casper et al. 2023 ("Red Teaming Deep Neural Networks with Feature Synthesis Tools") found strongest.

    from xaudit import explain
    from xaudit.explain.synthesis import patch         # registers the method
    p = explain.get("adversarial_patch", size_px=5).synthesize(
        model, {"images": clean, "target": 0}, generator=g)
    # float [1, C, 5, 5] in [0, 1]

Every step draws ``batch_size`` images from ``objective["images"]`` (without replacement when the batch
has that many) and a top-left corner per image, uniform over the positions where the patch fits, all
from ``generator``; the patch replaces those pixels (Brown et al.'s location-randomized training, without
their rotation and scale), and Adam minimizes the mean **cross-entropy to the target**. Not the raw
target logit: issue 13 records a raw-logit patch for one trojan that raised the logit while other
classes still won (held-out attack success 0.01, against 0.92-0.97 with cross-entropy). The patch is
``sigmoid(logits)``, logits [1, C, s, s] ~ N(0, 1) (the pixel parameterization of ``param.py``).

Parameters and their sources:
- ``size_px = 5``: the square's side in pixels (issue 13's setting at 32 px: 25 of 1024 pixels, 2.4%);
- ``steps = 300``: at ``batch_size`` 64 that is 19,200 patched image-passes, each clean image of a
  256-image batch seen with ~75 random positions; a CPU budget of ~10 s on the zoo CNN (0.55 ms per
  image fwd+bwd, bench/README.md), not a literature value (Brown et al. train far longer on ImageNet);
- ``lr = 0.1``: Adam on the pre-sigmoid logits; at 0.1 a logit can reach the sigmoid's saturated
  range (|z| ~ 4) in ~40 steps, well inside ``steps``; chosen, not taken from a paper;
- ``batch_size = 64``: ``xaudit.explain.base.DEFAULT_INTERNAL_BATCH`` (measured throughput knee on CPU).
Checks before any step: images not [N, C, H, W], not in [0, 1], with the wrong channel count or a shape
the model does not take; a patch larger than the images; a target out of [0, K).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xaudit.core.errors import ConfigError, check_int, check_range
from xaudit.explain.base import DEFAULT_INTERNAL_BATCH, Synthesis, prepared, register
from xaudit.explain.synthesis import param as P
from xaudit.explain.synthesis.caricature import check_images, model_channels

DEFAULT_SIZE_PX = 5
DEFAULT_STEPS = 300
DEFAULT_LR = 0.1
PARAMS = {"size_px": DEFAULT_SIZE_PX, "steps": DEFAULT_STEPS, "lr": DEFAULT_LR,
          "batch_size": DEFAULT_INTERNAL_BATCH, "init_std": 1.0}

@dataclass
class PatchObjective:
    """Clean ``images`` float [N, C, H, W] in [0, 1] and the ``target`` class index."""
    images: torch.Tensor
    target: int

    @classmethod
    def of(cls, objective) -> "PatchObjective":
        if isinstance(objective, PatchObjective):
            o = objective
        elif isinstance(objective, dict):
            if set(objective) != {"images", "target"}:
                raise ConfigError("objective", "an adversarial-patch objective is a dict with keys 'images' "
                                  f"and 'target'; got keys {sorted(objective)}")
            o = cls(objective["images"], objective["target"])
        else:
            raise ConfigError("objective", "must be a dict {'images': Tensor[N, C, H, W], 'target': int} or a "
                              f"PatchObjective; got {type(objective).__name__}")
        t = o.target
        if isinstance(t, torch.Tensor) and t.numel() == 1 and not t.is_floating_point() and t.dtype != torch.bool:
            t = int(t)
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
            raise ConfigError("target", f"must be a class index (an integer >= 0); got {o.target!r}")
        check_images("images", o.images)
        return cls(o.images.detach().float(), int(t))


def random_positions(n: int, h: int, w: int, s: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners (ys, xs), int64 [n] each, uniform over the (h - s + 1) x (w - s + 1) positions."""
    ys = torch.randint(0, h - s + 1, (n,), generator=generator)
    xs = torch.randint(0, w - s + 1, (n,), generator=generator)
    return ys, xs


def paste(images: torch.Tensor, patch: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """images [N, C, H, W] with patch [1, C, s, s] (or [N, C, s, s]) replacing the pixels at rows
    ys[i] .. ys[i] + s - 1, columns xs[i] .. xs[i] + s - 1 of image i; differentiable in the patch."""
    n, c, h, w = images.shape
    s = patch.shape[-1]
    ar = torch.arange(s, device=images.device)
    rows = (ys.to(images.device)[:, None] + ar)[:, :, None]         # [N, s, 1]
    cols = (xs.to(images.device)[:, None] + ar)[:, None, :]         # [N, 1, s]
    out = images.permute(0, 2, 3, 1).clone()                        # [N, H, W, C]: one advanced index per dim
    out[torch.arange(n, device=images.device)[:, None, None], rows, cols] = \
        patch.permute(0, 2, 3, 1).expand(n, s, s, c).to(out)
    return out.permute(0, 3, 1, 2)


def attack_success(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, patch: torch.Tensor,
                   target: int, generator: torch.Generator, batch: int = 256) -> float:
    """The fraction of images whose true label is not ``target`` that the model predicts as ``target``
    with ``patch`` pasted at a random position each (positions from ``generator``); NaN if none."""
    keep = labels != target
    x = images[keep]
    if x.shape[0] == 0:
        return float("nan")
    s = patch.shape[-1]
    ys, xs = random_positions(x.shape[0], x.shape[2], x.shape[3], s, generator)
    hits = 0
    with prepared(model), torch.no_grad():
        for i in range(0, x.shape[0], batch):
            pred = model(paste(x[i:i + batch], patch, ys[i:i + batch], xs[i:i + batch])).argmax(1)
            hits += int((pred == target).sum())
    return hits / x.shape[0]


def validate(p: dict[str, Any]) -> None:
    """ConfigError for bad parameter values (run when the method is bound)."""
    check_int("size_px", p["size_px"], 1, 1024)
    check_int("steps", p["steps"], 0, 1_000_000)
    check_range("lr", p["lr"], 0, 10, lo_open=True)
    check_int("batch_size", p["batch_size"], 1, 1 << 16)
    check_range("init_std", p["init_std"], 0, 100, lo_open=True)


def _passes(p, shape):  # per step: batch_size patched images forward + backward; one probe forward
    return float(p["steps"] * p["batch_size"] + 1), float(p["steps"] * p["batch_size"])


@register("adversarial_patch", family="synthesis", kind="synthesis", params=PARAMS, passes=_passes,
          validate=validate)
def adversarial_patch(model, objective, *, generator, init=None, size_px=DEFAULT_SIZE_PX, steps=DEFAULT_STEPS,
                      lr=DEFAULT_LR, batch_size=DEFAULT_INTERNAL_BATCH, init_std=1.0):
    """A universal square patch, optimized over clean images at random positions to flip predictions to
    the target by cross-entropy (Brown et al. 2017; Casper et al. 2023).

    Returns float [1, C, size_px, size_px] in [0, 1]. ``init``: an optional starting patch of that shape."""
    validate({"size_px": size_px, "steps": steps, "lr": lr, "batch_size": batch_size, "init_std": init_std})
    o = PatchObjective.of(objective)
    x = o.images
    n, c, h, w = x.shape
    if size_px > min(h, w):
        raise ConfigError("size_px", f"must be in [1, {min(h, w)}] for images of {h} x {w}; got {size_px}")
    expect = model_channels(model, h, w)
    if expect is not None and expect != c:
        raise ConfigError("images", f"must have the model's {expect} channels; got {c} (shape {tuple(x.shape)})")
    if init is not None:
        check_images("init", init)
        if tuple(init.shape) != (1, c, size_px, size_px):
            raise ConfigError("init", f"must be a patch [1, {c}, {size_px}, {size_px}]; got {tuple(init.shape)}")
    with prepared(model):
        with torch.no_grad():   # one probe forward: the model takes these images and has the target logit
            try:
                out = model(x[:1])
            except RuntimeError as e:
                raise ConfigError("images", f"the model does not take images of shape {tuple(x.shape[1:])} "
                                  f"({type(e).__name__}: {e})") from e
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise ConfigError("model", f"must return logits [N, K]; returned "
                              f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        k = out.shape[1]
        if o.target >= k:
            raise ConfigError("target", f"must be in [0, {k}) for this model ({k} logits); got {o.target}")

        p = (P.from_images("pixel", init) if init is not None
             else P.make("pixel", 1, c, size_px, generator, init_std=init_std))
        leaf = p.parameters()[0]
        adam = torch.optim.Adam([leaf], lr=float(lr))
        b = min(batch_size, n)
        target = torch.full((b,), o.target, dtype=torch.int64, device=x.device)
        loss = torch.tensor(float("nan"))
        for _ in range(steps):
            # without replacement when the batch allows, so each step sees b distinct clean images
            idx = torch.randperm(n, generator=generator)[:b]
            ys, xs = random_positions(b, h, w, size_px, generator)
            logits = model(paste(x[idx], p.images(), ys, xs))
            loss = F.cross_entropy(logits, target)
            (g,) = torch.autograd.grad(loss, [leaf])      # the model's own .grad stays untouched
            leaf.grad = g
            adam.step()
        result = p.images().detach().clamp(0, 1)
    return Synthesis(result, None, {"size_px": size_px, "steps": steps, "lr": float(lr), "batch_size": b,
                                    "optimizer": "Adam", "loss": "cross_entropy(target)", "target": o.target,
                                    "n_images": n, "init": "given" if init is not None else {"init_std": init_std},
                                    "final_loss": float(loss.detach())})


__all__ = ["PatchObjective", "adversarial_patch", "attack_success", "paste", "random_positions"]
