"""Feature synthesis (issue 13, second slice): caricature and adversarial_patch on tiny models."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xaudit import explain
from xaudit.core.errors import ConfigError
from xaudit.explain.synthesis import param as P
from xaudit.zoo.arch import CNN

MINE = ("caricature", "adversarial_patch")


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def mods():
    """Registers caricature and adversarial_patch for this module only, unless xaudit.explain already
    did (imported at collection they would reach other modules' registry-wide tests)."""
    before = set(explain.names())
    from xaudit.explain.synthesis import caricature as c
    from xaudit.explain.synthesis import patch as p
    added = [n for n in MINE if n not in before]
    yield c, p
    for n in added:
        explain.unregister(n)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def tiny_cnn():
    torch.manual_seed(0)  # test-only model weights; library code never uses the global RNG
    return CNN(channels=3, size=16, num_classes=5, hidden=16, width=4).eval()


class ChannelMean(nn.Module):
    """logit_0 = 100 * (mean(ch0) - mean(ch1)), logit_1 = 7, logit_2 = 0. On uniform [0, 1] images
    mean(ch0) - mean(ch1) ~ 0 +- 0.026 at 16 x 16, so class 1 wins; a 6 x 6 patch with ch0 = 1, ch1 = 0
    adds (36 / 256) * (0.5 + 0.5) = 0.14 to the difference wherever it lies, so logit_0 ~ 14 > 7: that
    patch provably flips almost every image to class 0, and a random patch (difference ~ 0) does not."""

    def __init__(self):
        super().__init__()
        self.means = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        m = self.means(x).flatten(1)
        d = 100 * (m[:, 0] - m[:, 1])
        return torch.stack([d, torch.full_like(d, 7.0), torch.zeros_like(d)], 1)


def test_caricature_reaches_a_higher_cosine_than_a_random_image(tiny_cnn, mods):
    car, _ = mods
    info = explain.info("caricature")
    assert info.kind == "synthesis" and info.family == "synthesis"
    real = torch.rand(2, 3, 16, 16, generator=gen(1))
    layers = ["conv2", "fc1"]
    ex = explain.get("caricature", steps=60)
    x = ex.synthesize(tiny_cnn, {"images": real, "layers": layers, "cosine": True}, generator=gen(0))
    assert x.shape == (2, 3, 16, 16) and x.min() >= 0 and x.max() <= 1
    target = car.activations(tiny_cnn, real, layers)
    got = car.similarity(car.activations(tiny_cnn, x, layers), target, layers, cosine=True)
    rnd = car.similarity(car.activations(tiny_cnn, P.make("fourier", 2, 3, 16, gen(5)).images(), layers),
                         target, layers, cosine=True)
    assert (got > rnd + 0.05).all(), (got, rnd)
    assert all(p.grad is None for p in tiny_cnn.parameters())
    s = ex.last_synthesis.settings
    assert s["param"] == "fourier" and s["steps"] == 60 and s["layers"] == layers and s["method"] == "caricature"
    assert torch.allclose(ex.last_synthesis.values, got.float(), atol=1e-4)   # each image's final cosine


def test_caricature_dot_product_and_dataclass_objective(tiny_cnn, mods):
    car, _ = mods
    real = torch.rand(1, 3, 16, 16, generator=gen(2))
    obj = car.Caricature(real, "conv2", cosine=False)
    x = explain.get("caricature", steps=20, param="pixel", restarts=2).synthesize(tiny_cnn, obj, generator=gen(0))
    assert x.shape == (2, 3, 16, 16)
    t = car.activations(tiny_cnn, real, ["conv2"])
    got = car.similarity(car.activations(tiny_cnn, x, ["conv2"]), {"conv2": t["conv2"].expand(2, -1, -1, -1)},
                         ["conv2"], cosine=False)
    start = car.similarity(car.activations(tiny_cnn, P.make("pixel", 2, 3, 16, gen(5)).images(), ["conv2"]),
                           {"conv2": t["conv2"].expand(2, -1, -1, -1)}, ["conv2"], cosine=False)
    assert (got > start).all()


def test_caricature_determinism(tiny_cnn, mods):
    real = torch.rand(2, 3, 16, 16, generator=gen(1))
    e = explain.get("caricature", steps=5)
    obj = {"images": real, "layers": ["conv1"]}
    a = e.synthesize(tiny_cnn, obj, generator=gen(0))
    b = e.synthesize(tiny_cnn, obj, generator=gen(0))
    c = e.synthesize(tiny_cnn, obj, generator=gen(1))
    assert torch.equal(a, b) and (a - c).abs().max() > 0.05
    # one image's caricature does not depend on the other images of the batch
    alone = e.synthesize(tiny_cnn, {"images": real[1:], "layers": ["conv1"]}, generator=gen(0))
    assert torch.allclose(alone[0], a[1], atol=1e-4)


def test_caricature_bad_input(tiny_cnn, mods):
    real = torch.rand(1, 3, 16, 16, generator=gen(1))
    e = explain.get("caricature", steps=100)
    calls = []
    h = tiny_cnn.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        with pytest.raises(ConfigError, match="conv1, relu1") as err:
            e.synthesize(tiny_cnn, {"images": real, "layers": ["conv9"]}, generator=gen(0))
        assert "fc2" in str(err.value) and "logits" in str(err.value)
        with pytest.raises(ConfigError, match="3 channels"):
            e.synthesize(tiny_cnn, {"images": torch.rand(1, 1, 16, 16), "layers": ["conv1"]}, generator=gen(0))
        with pytest.raises(ConfigError, match=r"\[0, 1\]"):
            e.synthesize(tiny_cnn, {"images": real * 2, "layers": ["conv1"]}, generator=gen(0))
        with pytest.raises(ConfigError, match="images"):
            e.synthesize(tiny_cnn, {"images": torch.rand(1, 3, 20, 20), "layers": ["conv1"]}, generator=gen(0))
        with pytest.raises(ConfigError, match="square"):
            e.synthesize(tiny_cnn, {"images": torch.rand(1, 3, 16, 12), "layers": ["conv1"]}, generator=gen(0))
        with pytest.raises(ConfigError, match="images"):
            e.synthesize(tiny_cnn, {"images": torch.rand(3, 16, 16), "layers": ["conv1"]}, generator=gen(0))
        with pytest.raises(ConfigError, match="objective"):
            e.synthesize(tiny_cnn, {"image": real, "layers": ["conv1"]}, generator=gen(0))
        with pytest.raises(ConfigError, match="layers"):
            e.synthesize(tiny_cnn, {"images": real, "layers": []}, generator=gen(0))
    finally:
        h.remove()
    assert len(calls) <= 1  # at most the real image's forward of the size check: no optimization step
    for bad in ({"param": "cppn"}, {"steps": -1}, {"lr": 0.0}, {"restarts": 0}, {"transforms": ["blur"]}):
        with pytest.raises(ConfigError):
            explain.get("caricature", **bad)


def _clean(n, seed):
    return torch.rand(n, 3, 16, 16, generator=gen(seed))


def test_adversarial_patch_flips_more_held_out_images_than_a_random_patch(mods):
    _, pm = mods
    model = ChannelMean()
    train, held = _clean(64, 1), _clean(200, 2)
    labels = model(held).argmax(1)
    assert (labels == 1).float().mean() > 0.95       # clean images: class 1
    ex = explain.get("adversarial_patch", size_px=6, steps=60, batch_size=32)
    x = ex.synthesize(model, {"images": train, "target": 0}, generator=gen(0))
    assert x.shape == (1, 3, 6, 6) and x.min() >= 0 and x.max() <= 1
    got = pm.attack_success(model, held, labels, x, 0, gen(7))
    rnd = pm.attack_success(model, held, labels, torch.rand(1, 3, 6, 6, generator=gen(8)), 0, gen(7))
    assert got > 0.9 and rnd < 0.1, (got, rnd)
    # the learned pattern is the provable one: channel 0 above channel 1 at every pixel (not all the way
    # to 1 / 0: once the images flip, cross-entropy's gradient fades)
    assert (x[0, 0] > x[0, 1] + 0.5).all() and x[0, 0].mean() > 0.8 and x[0, 1].mean() < 0.2
    s = ex.last_synthesis.settings
    assert s["loss"] == "cross_entropy(target)" and s["steps"] == 60 and s["size_px"] == 6


def test_paste_places_the_patch(mods):
    from xaudit.explain.synthesis import patch as pm  # noqa: F401  (registers; the mods fixture removes it)
    x = torch.zeros(2, 1, 8, 8)
    p = torch.ones(1, 1, 3, 3)
    y = pm.paste(x, p, torch.tensor([0, 5]), torch.tensor([2, 4]))
    assert y[0, 0, 0:3, 2:5].eq(1).all() and y[1, 0, 5:8, 4:7].eq(1).all() and y.sum() == 18
    assert x.sum() == 0  # the input is not modified


def test_adversarial_patch_determinism(mods):
    model = ChannelMean()
    train = _clean(16, 1)
    e = explain.get("adversarial_patch", size_px=4, steps=5, batch_size=8)
    a = e.synthesize(model, {"images": train, "target": 0}, generator=gen(0))
    b = e.synthesize(model, {"images": train, "target": 0}, generator=gen(0))
    c = e.synthesize(model, {"images": train, "target": 0}, generator=gen(1))
    assert torch.equal(a, b) and (a - c).abs().max() > 0.05


def test_adversarial_patch_bad_input(tiny_cnn, mods):
    _, pm = mods
    e = explain.get("adversarial_patch", steps=100)
    clean = torch.rand(4, 3, 16, 16, generator=gen(1))
    calls = []
    h = tiny_cnn.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        with pytest.raises(ConfigError, match=r"\[0, 5\)"):
            e.synthesize(tiny_cnn, {"images": clean, "target": 5}, generator=gen(0))
        with pytest.raises(ConfigError, match="target"):
            e.synthesize(tiny_cnn, {"images": clean, "target": -1}, generator=gen(0))
        with pytest.raises(ConfigError, match="target"):
            e.synthesize(tiny_cnn, {"images": clean, "target": 1.0}, generator=gen(0))
        with pytest.raises(ConfigError, match="3 channels"):
            e.synthesize(tiny_cnn, {"images": torch.rand(4, 1, 16, 16), "target": 0}, generator=gen(0))
        with pytest.raises(ConfigError, match=r"\[0, 1\]"):
            e.synthesize(tiny_cnn, {"images": clean - 0.5, "target": 0}, generator=gen(0))
        with pytest.raises(ConfigError, match="images"):
            e.synthesize(tiny_cnn, {"images": torch.rand(4, 3, 20, 20), "target": 0}, generator=gen(0))
        with pytest.raises(ConfigError, match="objective"):
            e.synthesize(tiny_cnn, {"images": clean}, generator=gen(0))
        with pytest.raises(ConfigError, match=r"size_px: must be in \[1, 16\]"):
            explain.get("adversarial_patch", size_px=17).synthesize(
                tiny_cnn, {"images": clean, "target": 0}, generator=gen(0))
        with pytest.raises(ConfigError, match="init"):
            e.synthesize(tiny_cnn, {"images": clean, "target": 0}, generator=gen(0), init=torch.rand(1, 3, 4, 4))
    finally:
        h.remove()
    assert all(n == 1 for n in calls) and len(calls) <= 2  # probe forwards only, no optimization step
    for bad in ({"size_px": 0}, {"steps": -1}, {"lr": 0.0}, {"batch_size": 0}, {"steps": 1.5}):
        with pytest.raises(ConfigError):
            explain.get("adversarial_patch", **bad)
