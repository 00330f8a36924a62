"""Feature synthesis (issue 13, core slice): parameterizations, transforms, objectives, the batched loop
and the fv_* methods. Tiny models, 16-32 px, few steps."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xaudit import explain
from xaudit.core.errors import ConfigError
from xaudit.explain.synthesis import objectives as O
from xaudit.explain.synthesis import param as P
from xaudit.explain.synthesis import transforms as T
from xaudit.explain.synthesis.optimize import optimize
from xaudit.zoo.arch import CNN


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


FV = ("fv_pixel", "fv_fourier", "fv_cppn")


@pytest.fixture(scope="module")
def methods():
    """Registers fv_* for this module only, until xaudit.explain imports them itself: imported at
    collection they would reach other modules' registry-wide tests (e.g. test_contract's list of the
    synthesis methods)."""
    before = set(explain.names())
    from xaudit.explain.synthesis import methods as m
    added = [n for n in FV if n not in before]
    yield m
    for n in added:
        explain.unregister(n)


def gen(seed):
    return torch.Generator().manual_seed(seed)


class Linear(nn.Module):
    """logit_j = w_j . x: linear in the input, optimum over the [0, 1] box at x = [w > 0]."""

    def __init__(self, w):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(w[0].numel(), w.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(w.flatten(1))

    def forward(self, x):
        return self.fc(self.flatten(x))


@pytest.fixture(scope="module")
def tiny_cnn():
    torch.manual_seed(0)  # test-only model weights; library code never uses the global RNG
    m = CNN(channels=3, size=16, num_classes=5, hidden=16, width=4)
    return m.eval()


def test_linear_model_pixel_am_reaches_the_box_optimum():
    w = torch.randn(2, 1, 8, 8, generator=gen(3))
    w[w.abs() < 0.1] = 0.5  # no near-zero weights: their pixels would converge arbitrarily slowly
    model = Linear(w)
    res = optimize(model, [0, 1], param="pixel", steps=300, lr=0.1, size=8, channels=1, transforms=False,
                   generator=gen(0))
    optimum = (w > 0).float()
    err = (res.images - optimum).abs()
    assert err.max() < 0.05, float(err.max())
    # the objective is the logit at the optimum within the same tolerance
    best = (w.clamp_min(0)).flatten(1).sum(1)
    assert torch.allclose(res.values, best, atol=0.05 * w.abs().sum().item() / 2)


@pytest.mark.parametrize("name", P.PARAMS)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (3, 28), (1, 32)])
def test_parameterization_shapes_and_range(name, channels, size):
    p = P.make(name, 3, channels, size, gen(0))
    x = p.images()
    assert x.shape == (3, channels, size, size)
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    # away from the grey plateau: visibly random, and differentiable in every parameter tensor
    assert x.std() > 0.1
    grads = torch.autograd.grad(x.sum(), p.parameters(), allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_per_image_generators_make_images_independent_of_the_batch():
    gens = [gen(10 + i) for i in range(3)]
    batch = P.make("fourier", 3, 3, 16, gens).images()
    alone = P.make("fourier", 1, 3, 16, [gen(12)]).images()
    assert torch.equal(batch[2:], alone)


def test_image_inversion_for_pixel_and_fourier():
    x = torch.rand(2, 3, 16, 16, generator=gen(1)) * 0.98 + 0.01
    for name in ("pixel", "fourier"):
        assert torch.allclose(P.from_images(name, x).images(), x, atol=1e-4)
    with pytest.raises(ConfigError, match="init"):
        P.from_images("cppn", x)


def test_transforms_off_is_identity_and_on_keeps_shape_and_range():
    x = torch.rand(4, 3, 16, 16, generator=gen(0))
    assert torch.equal(T.apply(x, T.Transforms.of(False), [gen(0)] * 4), x)
    y = T.apply(x, T.Transforms.of(True), [gen(i) for i in range(4)])
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.allclose(y, x)
    # pad only: an integer shift with grey (0.5) coming in from the edge
    s = T.apply(x, T.Transforms.of(["pad"]), [gen(i) for i in range(4)])
    assert ((s == 0.5).flatten(1).any(1) | torch.isclose(s, x).flatten(1).all(1)).all()
    # same generators, same transform
    assert torch.equal(y, T.apply(x, T.Transforms.of(True), [gen(i) for i in range(4)]))
    with pytest.raises(ConfigError, match="jitter"):
        T.Transforms.of(["blur"])


def test_determinism_same_seed_same_images_different_seed_different(tiny_cnn):
    kw = dict(param="fourier", steps=5, size=16)
    a = optimize(tiny_cnn, [0, 1], generator=gen(0), **kw).images
    b = optimize(tiny_cnn, [0, 1], generator=gen(0), **kw).images
    c = optimize(tiny_cnn, [0, 1], generator=gen(1), **kw).images
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.05
    # batch composition: class 1's image is the same alone as beside class 0 (float round-off of the
    # batched forward aside)
    alone = optimize(tiny_cnn, [1], generator=gen(0), **kw).images
    assert torch.allclose(alone[0], a[1], atol=1e-4)


def test_objectives_compose_and_run_in_one_batch(tiny_cnn):
    obj = O.Class([0, 1]) + 0.5 * O.Channel("conv2", [2, 3]) + 0.1 * O.Diversity("conv1") \
        - O.Direction("fc1", torch.ones(16), cosine=True) + O.Neuron("conv1", 0)
    res = optimize(tiny_cnn, obj, param="pixel", steps=3, size=16, restarts=2, generator=gen(0))
    assert res.images.shape == (4, 3, 16, 16) and res.values.shape == (4,)
    assert res.settings["objectives"][1].startswith("1*class=1")
    # a weighted sum is the weighted sum of its terms
    x = res.images
    acts = {}
    hooks = [dict(tiny_cnn.named_modules())[n].register_forward_hook(
        lambda m, a, o, n=n: acts.__setitem__(n, o)) for n in ("conv2",)]
    try:
        logits = tiny_cnn(x)
    finally:
        for h in hooks:
            h.remove()
    ctx = O.Context(acts, logits, torch.tensor([0, 0, 1, 1]), 2)
    a, b = O.Class([0, 1]), O.Channel("conv2", [2, 3])
    assert torch.allclose((2 * a + b - a)(ctx), a(ctx) + b(ctx))
    assert torch.allclose(a(ctx), logits[torch.arange(4), torch.tensor([0, 0, 1, 1])])
    assert torch.allclose(b(ctx), acts["conv2"][torch.arange(4), torch.tensor([2, 2, 3, 3])].mean((1, 2)))


def test_bad_input_errors_name_the_allowed_values(tiny_cnn, methods):
    with pytest.raises(ConfigError, match="conv1, relu1") as e:
        optimize(tiny_cnn, O.Channel("conv9", 0), steps=1, size=16, generator=gen(0))
    assert "fc2" in str(e.value)
    with pytest.raises(ConfigError, match=r"\[0, 5\)"):
        optimize(tiny_cnn, [1, 5], steps=1, size=16, generator=gen(0))
    with pytest.raises(ConfigError, match=r"\[0, 4\)"):
        optimize(tiny_cnn, O.Channel("conv1", 4), steps=1, size=16, generator=gen(0))
    with pytest.raises(ConfigError, match=r"\[N, C, H, W\]"):
        optimize(tiny_cnn, O.Neuron("fc1", 0), steps=1, size=16, generator=gen(0))
    with pytest.raises(ConfigError, match="length 16"):
        optimize(tiny_cnn, O.Direction("fc1", torch.ones(3)), steps=1, size=16, generator=gen(0))
    with pytest.raises(ConfigError, match="size"):
        optimize(tiny_cnn, 0, steps=1, size=20, generator=gen(0))
    with pytest.raises(ConfigError, match="objective"):
        optimize(tiny_cnn, "cat", steps=1, size=16, generator=gen(0))
    with pytest.raises(ConfigError, match="pixel, fourier, cppn"):
        optimize(tiny_cnn, 0, param="dct", size=16, generator=gen(0))
    # bad method parameters fail when the method is bound, before any model call
    for bad in ({"steps": -1}, {"lr": 0.0}, {"restarts": 0}, {"size": 2}, {"transforms": ["blur"]},
                {"steps": 1.5}):
        with pytest.raises(ConfigError):
            explain.get("fv_pixel", **bad)


def test_checks_run_before_any_optimization(tiny_cnn):
    calls = []
    h = tiny_cnn.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        with pytest.raises(ConfigError):
            optimize(tiny_cnn, [0, 7], steps=100, size=16, generator=gen(0))
    finally:
        h.remove()
    assert calls == [1]  # the probe forward only


@pytest.mark.parametrize("name,param", [("fv_pixel", "pixel"), ("fv_fourier", "fourier"), ("fv_cppn", "cppn")])
def test_registered_methods_raise_the_target_logit(tiny_cnn, methods, name, param):
    info = explain.info(name)
    assert info.kind == "synthesis" and info.family == "synthesis"
    grads_before = [p.grad for p in tiny_cnn.parameters()]
    ex = explain.get(name, steps=40, size=16, restarts=2)
    x = ex.synthesize(tiny_cnn, [1, 3], generator=gen(0))
    assert x.shape == (4, 3, 16, 16) and x.min() >= 0 and x.max() <= 1
    assert all(g is None for g in grads_before) and all(p.grad is None for p in tiny_cnn.parameters())
    target = torch.tensor([1, 1, 3, 3])
    with torch.no_grad():
        got = tiny_cnn(x)[torch.arange(4), target]
        rnd = tiny_cnn(P.make(param, 4, 3, 16, gen(5)).images())[torch.arange(4), target]
    assert (got > rnd).all(), (got, rnd)
    res = ex.last_synthesis                          # the settings travel with the images, no global state
    s = res.settings
    assert s["method"] == name and s["seed"] == "generator" and s["base_seed"] >= 0
    assert s["steps"] == 40 and s["param"] == param and s["restarts"] == 2 and s["lr"] > 0
    assert torch.equal(res.images, x)
    assert torch.allclose(res.values, got, rtol=1e-4, atol=1e-4)   # each image's final logit


def test_method_with_objective_object_and_init(tiny_cnn, methods):
    init = torch.full((1, 3, 16, 16), 0.5)
    x = explain.get("fv_pixel", steps=10, size=16, transforms=False).synthesize(
        tiny_cnn, O.Channel("conv2", 1), generator=gen(0), init=init)
    with torch.no_grad():
        before = tiny_cnn.conv2(tiny_cnn.pool1(tiny_cnn.relu1(tiny_cnn.conv1(tiny_cnn.normalize(init)))))[:, 1].mean()
        after = tiny_cnn.conv2(tiny_cnn.pool1(tiny_cnn.relu1(tiny_cnn.conv1(tiny_cnn.normalize(x)))))[:, 1].mean()
    assert after > before
