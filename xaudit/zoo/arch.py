"""Architectures: a registry of small image classifiers sized to a world.

Every architecture
- takes images float32 [N, C, H, W] in [0, 1] (normalization is the model's first module),
- declares ``blocks``: names of its parameterized blocks ordered from the output to the input
  (the order of cascading randomization, docs/protocols.md#12-model-and-block-order),
- declares ``last_conv``: the module Grad-CAM hooks, the last conv layer's rectified output (None where
  there is no convolution),
- uses one ``nn.ReLU`` / ``nn.MaxPool2d`` module per use (never functional, never in place), so that
  hook-based methods (Captum's guided backprop, DeepLift) see every non-linearity.

Models are built on the meta device and then initialized from an explicit ``torch.Generator`` by
:func:`xaudit.zoo.init.init_module` (the global RNG is never touched).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from xaudit.core.errors import ConfigError, check_range
from xaudit.core.registry import Registry

ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry("architecture")

# Fixed input normalization: images in [0, 1] -> roughly zero mean, unit scale. A constant (not a
# buffer) so that state dicts hold only learned tensors.
INPUT_MEAN = 0.5
INPUT_STD = 0.25


class Normalize(nn.Module):
    """x -> (x - mean) / std with scalar constants; images in [0, 1] in, about [-2, 2] out."""

    def __init__(self, mean: float = INPUT_MEAN, std: float = INPUT_STD):
        super().__init__()
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def _check_input(channels: int, size: int, num_classes: int) -> None:
    check_range("channels", channels, 1, 64)
    check_range("size", size, 8, 1024)
    check_range("num_classes", num_classes, 2, 10_000)


class CNN(nn.Module):
    """The sanity-checks CNN (docs/protocols.md#12-model-and-block-order): conv5x5x32-ReLU-maxpool2, conv5x5x64-ReLU-maxpool2,
    fc(hidden)-ReLU, fc(num_classes). 'Same' padding, so the flattened size is 64 * (size/4)^2."""

    blocks = ("fc2", "fc1", "conv2", "conv1")
    # Grad-CAM's feature maps A^k: the last conv layer's rectified output (Caffe's in-place ReLU made
    # conv5_3 rectified in the original). Unrectified conv2 outputs on the zero background of digits
    # were negative everywhere, and the ReLU'd CAM all zero.
    last_conv = "relu2"

    def __init__(self, channels: int = 3, size: int = 32, num_classes: int = 10, hidden: int = 128,
                 width: int = 32):
        super().__init__()
        _check_input(channels, size, num_classes)
        if size % 4:
            raise ConfigError("size", f"the cnn architecture needs a size divisible by 4, got {size}")
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(channels, width, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(width, 2 * width, 5, padding=2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(2 * width * (size // 4) ** 2, hidden)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(self.normalize(x))))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


class MLP(nn.Module):
    """Flatten -> fc(hidden[0])-ReLU -> ... -> fc(num_classes). No convolution (Grad-CAM does not apply)."""

    last_conv = None

    def __init__(self, channels: int = 3, size: int = 32, num_classes: int = 10,
                 hidden: tuple[int, ...] | list[int] = (256, 128)):
        super().__init__()
        _check_input(channels, size, num_classes)
        hidden = [int(h) for h in hidden]
        if not hidden or min(hidden) < 1:
            raise ConfigError("arch.hidden", f"must be a non-empty list of positive widths, got {hidden!r}")
        self.normalize = Normalize()
        self.flatten = nn.Flatten()
        widths = [channels * size * size, *hidden, num_classes]
        names = []
        for i in range(len(widths) - 1):
            setattr(self, f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1]))
            names.append(f"fc{i + 1}")
            if i < len(widths) - 2:
                setattr(self, f"relu{i + 1}", nn.ReLU())
        self.n_layers = len(names)
        self.blocks = tuple(reversed(names))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.normalize(x))
        for i in range(1, self.n_layers + 1):
            x = getattr(self, f"fc{i}")(x)
            if i < self.n_layers:
                x = getattr(self, f"relu{i}")(x)
        return x


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut (identity, or conv1x1-BN when the shape changes),
    then ReLU. Two distinct ReLU modules."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet (CIFAR style): stem conv3x3-BN-ReLU, three stages of ``depth`` basic blocks with
    widths (w, 2w, 4w) and strides (1, 2, 2), global average pooling, fc. Blocks (output first):
    fc, then each residual block (``stage3.1``, ``stage3.0``, ...), then the stem."""

    def __init__(self, channels: int = 3, size: int = 32, num_classes: int = 10, width: int = 16, depth: int = 1):
        super().__init__()
        _check_input(channels, size, num_classes)
        check_range("arch.width", width, 1, 1024)
        check_range("arch.depth", depth, 1, 16)
        self.normalize = Normalize()
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(channels, width, 3, padding=1, bias=False))
        self.stem.add_module("bn", nn.BatchNorm2d(width))
        self.stem.add_module("relu", nn.ReLU())
        names = ["stem"]
        cin = width
        for s, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2)), start=1):
            stage = nn.Sequential(*[BasicBlock(cin if d == 0 else width * mult, width * mult, stride if d == 0 else 1)
                                    for d in range(depth)])
            setattr(self, f"stage{s}", stage)
            names += [f"stage{s}.{d}" for d in range(depth)]
            cin = width * mult
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)
        names.append("fc")
        self.blocks = tuple(reversed(names))
        # Grad-CAM hooks the output of the last residual block (after its final ReLU), as is usual for ResNets.
        self.last_conv = f"stage3.{depth - 1}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalize(x))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.flatten(self.pool(x)))


class VGG(nn.Module):
    """A small VGG: [conv3x3-ReLU] x2, maxpool, [conv3x3-ReLU] x2, maxpool, fc(hidden)-ReLU, fc.
    Widths (w, w, 2w, 2w). Every conv and fc is its own block."""

    blocks = ("fc2", "fc1", "conv4", "conv3", "conv2", "conv1")
    last_conv = "relu4"      # the last conv layer's rectified output (see CNN)

    def __init__(self, channels: int = 3, size: int = 32, num_classes: int = 10, width: int = 32, hidden: int = 128):
        super().__init__()
        _check_input(channels, size, num_classes)
        if size % 4:
            raise ConfigError("size", f"the vgg architecture needs a size divisible by 4, got {size}")
        self.normalize = Normalize()
        widths = [channels, width, width, 2 * width, 2 * width]
        for i in range(1, 5):
            setattr(self, f"conv{i}", nn.Conv2d(widths[i - 1], widths[i], 3, padding=1))
            setattr(self, f"relu{i}", nn.ReLU())
        self.pool1 = nn.MaxPool2d(2)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(2 * width * (size // 4) ** 2, hidden)
        self.relu5 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        x = self.pool1(x)
        x = self.relu4(self.conv4(self.relu3(self.conv3(x))))
        x = self.pool2(x)
        return self.fc2(self.relu5(self.fc1(self.flatten(x))))


ARCHITECTURES.add("cnn", CNN, description="sanity-checks CNN: conv5x5x32, conv5x5x64, fc128, fc")
ARCHITECTURES.add("mlp", MLP, description="multi-layer perceptron (no convolution)")
ARCHITECTURES.add("resnet", ResNet, description="small CIFAR-style ResNet with BatchNorm and residual additions")
ARCHITECTURES.add("vgg", VGG, description="small VGG: four 3x3 convs, two fc")


def build(name: str, channels: int, size: int, num_classes: int, generator: torch.Generator | None,
          **kwargs: Any) -> nn.Module:
    """Architecture ``name`` sized to a world, initialized from ``generator`` (see init.py for the rule).
    generator=None leaves the tensors uninitialized (for loading a state dict into)."""
    from xaudit.zoo.init import init_module

    factory = ARCHITECTURES.get(name)
    try:
        with torch.device("meta"):  # no allocation and no global-RNG draw; init_module fills every tensor
            model = factory(channels=channels, size=size, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise ConfigError("arch", f"bad parameters for architecture {name!r}: {e}") from None
    model = model.to_empty(device="cpu")
    if generator is not None:
        init_module(model, generator)
    model.arch_name = name
    return model
