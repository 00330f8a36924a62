"""Adversarial attack used by the zoo: adversarial training (:mod:`xaudit.zoo.training`) and the
adversarial-robustness criterion of model cards (:mod:`xaudit.zoo.card`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
               step_size: float | None, generator: torch.Generator) -> torch.Tensor:
    """L-inf PGD (Madry et al.): uniform random start in [-eps, eps], ``steps`` signed-gradient ascent
    steps of ``step_size`` (default 2.5 * eps / steps), projected to the eps-ball and to [0, 1].
    Runs the model in eval mode (BatchNorm statistics are not updated by the attack); parameter
    gradients are not touched. x: [N,C,H,W] in [0,1]; returns the adversarial images, detached."""
    step_size = 2.5 * eps / steps if step_size is None else step_size
    was_training = model.training
    model.eval()
    delta = (torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1) * eps
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step_size * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    model.train(was_training)
    return (x + delta).detach()
