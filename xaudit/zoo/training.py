"""Deterministic training: ``train(spec) -> Trained`` (model + card).

Bit-for-bit determinism on one machine comes from: the world renders every sample as a pure
function of its index (so data never depends on batching); the model is built on the meta device and
initialized from an explicit generator; shuffling, noise augmentation and PGD random starts each
draw from their own explicit generator, all derived from the spec's seed; a fixed thread count
(``XAUDIT_THREADS``, default 2) and ``torch.use_deterministic_algorithms`` while training. Data is
generated in memory (no DataLoader workers); channels_last memory format (faster on CPU: docs/measured.md#not-measured-by-bench).
"""
from __future__ import annotations

import contextlib
import math
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from xaudit.core.rng import generator as make_generator
from xaudit.core.rng import stream_seed
from xaudit.zoo.arch import build
from xaudit.zoo.attack import pgd_attack
from xaudit.zoo.card import make_card
from xaudit.zoo.spec import Spec, load_spec

IN_MEMORY_LIMIT_BYTES = 1 << 30   # multi-epoch training keeps its rendered set in memory up to this size


def default_threads() -> int:
    try:
        return max(1, int(os.environ.get("XAUDIT_THREADS", "2")))
    except ValueError:
        return 2


@contextlib.contextmanager
def torch_settings(threads: int | None = None, deterministic: bool = True) -> Iterator[None]:
    """Fix the thread count and deterministic algorithms for the block; restore both afterwards."""
    threads = default_threads() if threads is None else threads
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


@dataclass
class Trained:
    """A trained model (eval mode) with its card; unpacks as ``model, card = trained``."""

    model: nn.Module
    card: dict[str, Any]
    spec: Spec
    path: Path | None = None      # cache entry directory, when cached

    def __iter__(self):
        yield self.model
        yield self.card


def build_model(spec: Spec, world=None, init: bool = True) -> nn.Module:
    """The spec's architecture sized to its world, channels_last; initialized from the spec seed
    (init=False leaves it uninitialized, to load a state dict into)."""
    world = world if world is not None else spec.make_world()
    kwargs = {k: v for k, v in spec.arch.items() if k != "name"}
    g = make_generator(stream_seed(spec.seed, "zoo/init")) if init else None
    model = build(spec.arch["name"], world.channels, world.size, world.num_classes, g, **kwargs)
    return model.to(memory_format=torch.channels_last)


def _optimizer(model: nn.Module, tr: dict) -> torch.optim.Optimizer:
    params = model.parameters()
    if tr["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=tr["lr"], weight_decay=tr["weight_decay"])
    if tr["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=tr["lr"], weight_decay=tr["weight_decay"])
    return torch.optim.SGD(params, lr=tr["lr"], momentum=tr["momentum"], weight_decay=tr["weight_decay"],
                           nesterov=tr["momentum"] > 0)


def _scheduler(opt: torch.optim.Optimizer, tr: dict, total_steps: int):
    if tr["schedule"] == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total_steps) / total_steps)))
    if tr["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tr["lr"], total_steps=max(total_steps, 2))
    return None


def _render(world, bugs, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b = world.sample(idx, split="train", bugs=bugs)
    return b.images.contiguous(memory_format=torch.channels_last), b.labels


def train_model(spec: Spec, world=None, bugs=None, log: Callable[[str], None] | None = None
                ) -> tuple[nn.Module, dict[str, Any]]:
    """Train the spec's model; returns (model in eval mode, training stats). Call inside torch_settings."""
    world = world if world is not None else spec.make_world()
    bugs = bugs if bugs is not None else spec.make_bugs()
    tr = spec.train
    n, bs, epochs = tr["train_size"], tr["batch_size"], tr["epochs"]
    model = build_model(spec, world)
    model.train()
    opt = _optimizer(model, tr)
    steps_per_epoch = math.ceil(n / bs)
    total_steps = steps_per_epoch * epochs
    sched = _scheduler(opt, tr, total_steps)
    g_shuffle = make_generator(stream_seed(spec.seed, "zoo/shuffle"))
    g_aug = make_generator(stream_seed(spec.seed, "zoo/augment"))
    sigma = tr["noise_sigma"]
    adv = tr["adversarial"]
    chunk = max(bs, tr["chunk"] // bs * bs)   # a multiple of the batch size: only an epoch's last batch is partial
    image_bytes = 4 * world.channels * world.size * world.size
    in_memory = epochs > 1 and n * image_bytes <= IN_MEMORY_LIMIT_BYTES

    t0, c0 = time.perf_counter(), time.process_time()
    render_s = 0.0
    stored: tuple[torch.Tensor, torch.Tensor] | None = None
    if in_memory:
        t = time.perf_counter()
        parts = [_render(world, bugs, torch.arange(s, min(s + chunk, n))) for s in range(0, n, chunk)]
        stored = (torch.cat([p[0] for p in parts]).contiguous(memory_format=torch.channels_last),
                  torch.cat([p[1] for p in parts]))
        del parts
        render_s += time.perf_counter() - t
    seen = correct = step = 0
    last_epoch_correct = last_epoch_seen = 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g_shuffle)
        last_epoch_correct = last_epoch_seen = 0
        for s in range(0, n, chunk):
            idx = perm[s:s + chunk]
            if stored is not None:
                images, labels = stored[0][idx], stored[1][idx]
            else:
                t = time.perf_counter()
                images, labels = _render(world, bugs, idx)
                render_s += time.perf_counter() - t
            for b in range(0, len(idx), bs):
                x, y = images[b:b + bs], labels[b:b + bs]
                if sigma > 0:
                    x = (x + sigma * torch.randn(x.shape, generator=g_aug)).contiguous(memory_format=torch.channels_last)
                if adv["eps"] > 0:
                    ramp = min(1.0, (step + 1) / (adv["ramp"] * total_steps)) if adv["ramp"] > 0 else 1.0
                    size = None if adv["step_size"] is None else adv["step_size"] * ramp
                    x = pgd_attack(model, x, y, adv["eps"] * ramp, adv["steps"], size, g_aug)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                step += 1
                hits = int((logits.detach().argmax(1) == y).sum())
                correct += hits
                seen += len(y)
                last_epoch_correct += hits
                last_epoch_seen += len(y)
            if log is not None and epochs == 1:
                log(f"images {seen}/{n}: running train accuracy {last_epoch_correct / max(1, last_epoch_seen):.3f}, "
                    f"{time.perf_counter() - t0:.1f} s")
        if log is not None and epochs > 1:
            log(f"epoch {epoch + 1}/{epochs}: running train accuracy {last_epoch_correct / max(1, last_epoch_seen):.3f}, "
                f"{time.perf_counter() - t0:.1f} s")
    stats = {
        "train_seconds": round(time.perf_counter() - t0, 3),
        "train_cpu_seconds": round(time.process_time() - c0, 3),
        "render_seconds": round(render_s, 3),
        "images_seen": seen,
        "steps": total_steps,
        "running_train_accuracy_last_epoch": round(last_epoch_correct / max(1, last_epoch_seen), 5),
        "data_in_memory": in_memory,
        "threads": torch.get_num_threads(),   # results are bit-identical only for the same thread count
    }
    model.eval()
    return model, stats


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train(spec: "Spec | str | dict", seed: int | None = None, *, log: Callable[[str], None] | None = None) -> Trained:
    """Train a spec (a Spec, shipped name, YAML path or dict) and measure its card. No cache: see
    :func:`xaudit.zoo.load_or_train`. Same spec and seed on the same machine -> the same weights."""
    spec = load_spec(spec, seed=seed)
    with torch_settings():
        world, bugs = spec.make_world(), spec.make_bugs()
        model, stats = train_model(spec, world, bugs, log=log)
        t = time.perf_counter()
        card = make_card(model, spec, world=world, bugs=bugs, train_stats=stats)
        card["eval_seconds"] = round(time.perf_counter() - t, 3)
    card["peak_rss_mb"] = round(peak_rss_mb(), 1)   # training and evaluation, whole process
    return Trained(model=model, card=card, spec=spec)
