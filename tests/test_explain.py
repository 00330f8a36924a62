"""xaudit.explain: the registry contract for every method, and each method against an independent
reference (hand-written autograd, known identities of the method, scikit-image, Captum directly)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xaudit import explain as E
from xaudit.core.errors import ConfigError, NotApplicable, UnknownName
from xaudit.explain import ExplanationFailed

torch.set_num_threads(1)

C, S, K = 3, 16, 5  # channels, image side, classes of the test models


class Scale(nn.Module):
    """A parameter-free input normalization (as zoo models have)."""

    def forward(self, x):
        return (x - 0.5) / 0.25


class TinyCNN(nn.Module):
    """conv-ReLU-pool x2, fc-ReLU-fc, one nn.ReLU module per use (what hook-based methods need)."""

    def __init__(self, seed=0, normalize=True, bias=True):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.normalize = Scale() if normalize else nn.Identity()
        self.conv1 = nn.Conv2d(C, 6, 3, padding=1, bias=bias)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=bias)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(8 * (S // 4) ** 2, 16, bias=bias)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(16, K, bias=bias)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / math.sqrt(p[0].numel() if p.ndim > 1 else 16)))

    def features(self, x):
        return self.conv2(self.pool1(self.relu1(self.conv1(self.normalize(x)))))

    def forward(self, x):
        x = self.pool2(self.relu2(self.features(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


class FunctionalReLU(TinyCNN):
    def forward(self, x):
        x = F.max_pool2d(F.relu(self.features(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class WithBatchNorm(TinyCNN):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(8).eval()

    def forward(self, x):
        x = self.pool2(self.relu2(self.bn(self.features(x))))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


class Residual(TinyCNN):
    def __init__(self):
        super().__init__()
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        h = self.relu2(self.features(x))
        h = self.pool2(h + self.conv3(h))
        return self.fc2(self.relu3(self.fc1(self.flatten(h))))


class Linear(nn.Module):
    """logits = W x + b on the flattened image: every attribution method has a closed form."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(C * S * S, K)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(K, C * S * S, generator=g))
            self.fc.bias.copy_(torch.randn(K, generator=g))

    def forward(self, x):
        return self.fc(self.flatten(x))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(C * S * S, 16)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(16, K)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


@pytest.fixture(scope="module")
def model():
    return TinyCNN().eval()


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, C, S, S, generator=g)


@pytest.fixture(scope="module")
def target():
    return torch.tensor([0, 1, 2, 4])


def autograd_gradient(model, x, target):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)[0]


def logit(model, x, target):
    with torch.no_grad():
        return model(x).gather(1, target[:, None]).squeeze(1)


BUILT_IN = ["saliency", "input_x_gradient", "integrated_gradients", "smooth_grad", "smooth_grad_sq", "var_grad",
            "gradient_shap", "expected_gradients", "guided_backprop", "deconvolution", "deep_lift", "deep_lift_shap",
            "lrp", "grad_cam", "guided_grad_cam", "occlusion", "feature_ablation", "shapley_value_sampling", "lime",
            "kernel_shap"]
BASELINES = ["blank", "random", "edge", "input", "center"]
# Cheaper settings for the contract test; the defaults are exercised by bench/explain.py.
FAST = {"integrated_gradients": {"steps": 8}, "smooth_grad": {"samples": 6}, "smooth_grad_sq": {"samples": 6},
        "var_grad": {"samples": 6}, "gradient_shap": {"samples": 6}, "expected_gradients": {"samples": 6},
        "deep_lift_shap": {"n_baselines": 3}, "shapley_value_sampling": {"samples": 2},
        "lime": {"samples": 40}, "kernel_shap": {"samples": 40}}


# ------------------------------------------------------------------------------ registry contract
def test_registry_lists_every_method_with_metadata():
    assert set(BUILT_IN + BASELINES) <= set(E.names())
    assert len(E.names(family="baseline")) == 5
    rows = json.loads(json.dumps(E.describe()))  # JSON-able
    by_name = {r["name"]: r for r in rows}
    for name in BUILT_IN + BASELINES:
        r = by_name[name]
        assert r["family"] in E.FAMILIES and isinstance(r["stochastic"], bool) and isinstance(r["params"], dict)
        assert r["passes_per_image"] is not None
    assert by_name["smooth_grad"]["params"]["noise"] == 0.15 and by_name["smooth_grad"]["params"]["samples"] == 50
    assert by_name["var_grad"]["params"]["samples"] == 25
    assert by_name["integrated_gradients"]["params"]["steps"] == 50
    assert by_name["integrated_gradients"]["params"]["baseline"] == 0.0
    assert by_name["integrated_gradients"]["passes_per_image"] == {"forward": 50, "backward": 50}
    assert by_name["random"]["stochastic"] and not by_name["saliency"]["stochastic"]
    assert by_name["grad_cam"]["family"] == "cam" and by_name["lime"]["family"] == "perturbation"


def test_cli_methods_json():
    from typer.testing import CliRunner

    from xaudit.cli import app

    out = CliRunner().invoke(app, ["methods", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert {"name", "family", "stochastic"} <= set(rows[0])
    assert set(BUILT_IN + BASELINES) <= {r["name"] for r in rows}
    text = CliRunner().invoke(app, ["methods"])
    assert text.exit_code == 0 and "integrated_gradients" in text.output


@pytest.mark.parametrize("name", BUILT_IN + BASELINES)
def test_every_method_meets_the_contract(name, model, x, target):
    params = dict(FAST.get(name, {}))
    if name == "deep_lift_shap":
        params["baselines"] = torch.rand(5, C, S, S, generator=torch.Generator().manual_seed(3))
    ex = E.get(name, **params)
    a = ex(model, x, target)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.isfinite(a).all()
    if name != "blank":
        assert a.abs().sum() > 0
    b = ex(model, x, target)
    assert torch.equal(a, b), "same seed, same result"
    # the passes the method made are the passes it declares
    fwd, bwd = ex.expected_passes(x.shape[1:])
    assert ex.last_passes.n_images == len(x)
    assert ex.last_passes.forward == pytest.approx(fwd) and ex.last_passes.backward == pytest.approx(bwd)
    if ex.stochastic:
        c = E.get(name, **params, seed=1)(model, x, target)
        assert not torch.equal(a, c), "another seed, another draw"
        g = torch.Generator().manual_seed(1)
        assert torch.equal(ex(model, x, target, generator=g), c), "generator= equals seed="


def test_int_target_and_batch_of_one(model, x):
    a = E.get("saliency")(model, x, 2)
    assert torch.allclose(a, autograd_gradient(model, x, torch.full((4,), 2)), atol=1e-6)
    assert torch.equal(E.get("saliency")(model, x, np.int64(2)), a)
    assert torch.equal(E.get("saliency")(model, x, [2, 2, 2, 2]), a)
    one = E.get("integrated_gradients", steps=4)(model, x[:1], torch.tensor([3]))
    assert one.shape == (1, C, S, S)


# -------------------------------------------------------------------------- gradient methods
def test_saliency_equals_autograd_gradient(model, x, target):
    expected = autograd_gradient(model, x, target)
    assert torch.allclose(E.get("saliency")(model, x, target), expected, atol=1e-7)
    # chunking does not change the result beyond float32 reduction order (oneDNN picks other conv
    # kernels for a batch of one: differences of ~1e-7 relative were seen here)
    assert torch.allclose(E.get("saliency", internal_batch=1)(model, x, target), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(E.explain(model, x, target, "input_x_gradient"), x * expected, atol=1e-7)


def test_integrated_gradients_completeness_and_chunking(model, x, target):
    a = E.get("integrated_gradients", steps=64)(model, x, target)
    gap = logit(model, x, target) - logit(model, torch.zeros_like(x), target)
    assert torch.allclose(a.flatten(1).sum(1), gap, rtol=0.02, atol=0.02 * gap.abs().max())
    # Captum directly, one batch, same quadrature
    from captum.attr import IntegratedGradients

    ref = IntegratedGradients(model).attribute(x, baselines=0.0, target=target, n_steps=64)
    assert torch.allclose(a, ref, atol=1e-5)
    small = E.get("integrated_gradients", steps=64, internal_batch=10)(model, x, target)
    assert torch.allclose(a, small, atol=1e-5)
    # a tensor baseline, one per image, in chunks of 2 images
    base = torch.rand(x.shape, generator=torch.Generator().manual_seed(7))
    ab = E.get("integrated_gradients", steps=512, baseline=base, internal_batch=2)(model, x, target)
    ref = IntegratedGradients(model).attribute(x, baselines=base, target=target, n_steps=512)
    assert torch.allclose(ab, ref, atol=1e-5)
    gap_b = logit(model, x, target) - logit(model, base, target)
    assert torch.allclose(ab.flatten(1).sum(1), gap_b, rtol=0.02, atol=0.02 * gap_b.abs().max())


def _noisy_reference(model, x, target, samples, noise, seed):
    """SmoothGrad by hand: the same draws (one [samples, N, C, H, W] block), plain autograd."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn((samples, *x.shape), generator=g)
    sd = noise * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    grads = torch.stack([autograd_gradient(model, x + eps[s] * sd.view(-1, 1, 1, 1), target)
                         for s in range(samples)]).double()
    return grads.mean(0), (grads ** 2).mean(0), grads.var(0, unbiased=False)


def test_noise_methods_equal_hand_reference(model, x, target):
    mean, mean_sq, var = _noisy_reference(model, x, target, samples=7, noise=0.15, seed=5)
    kw = dict(samples=7, seed=5, internal_batch=1000)  # one chunk: the same draw order as the reference
    assert torch.allclose(E.get("smooth_grad", **kw)(model, x, target).double(), mean, atol=1e-6)
    assert torch.allclose(E.get("smooth_grad_sq", **kw)(model, x, target).double(), mean_sq, atol=1e-7)
    assert torch.allclose(E.get("var_grad", **kw)(model, x, target).double(), var, atol=1e-7)
    # zero noise: SmoothGrad is the gradient, VarGrad is zero
    sal = E.get("saliency")(model, x, target)
    assert torch.allclose(E.get("smooth_grad", samples=3, noise=0.0)(model, x, target), sal, atol=1e-6)
    assert E.get("var_grad", samples=3, noise=0.0)(model, x, target).abs().max() < 1e-10


def test_gradient_shap_closed_form_on_a_linear_model(x, target):
    lin = Linear().eval()
    w = lin.fc.weight[target].view(-1, C, S, S).detach()
    b0 = torch.rand(1, C, S, S, generator=torch.Generator().manual_seed(2))
    same = b0.expand(3, -1, -1, -1).clone()  # every drawn baseline is b0
    for name in ("gradient_shap", "expected_gradients"):
        a = E.get(name, baselines=same, samples=5)(lin, x, target)
        assert torch.allclose(a, (x - b0) * w, atol=1e-5)
    z = E.get("gradient_shap", baselines="zeros", samples=3)(lin, x, target)
    assert torch.allclose(z, x * w, atol=1e-5)


def test_expected_gradients_approaches_integrated_gradients(model, x, target):
    ig = E.get("integrated_gradients", steps=64)(model, x, target)
    eg = E.get("gradient_shap", baselines="zeros", samples=300)(model, x, target)
    r = np.corrcoef(ig.flatten().numpy(), eg.flatten().numpy())[0, 1]
    assert r > 0.95
    gap = logit(model, x, target) - logit(model, torch.zeros_like(x), target)
    assert torch.allclose(eg.flatten(1).sum(1), gap, rtol=0.15, atol=0.15 * gap.abs().max())


def test_expected_gradients_default_reference_is_the_batch(model, x, target):
    a = E.get("expected_gradients", samples=4)(model, x, target)
    b = E.get("expected_gradients", samples=4, baselines=x)(model, x, target)
    assert torch.equal(a, b)


# ------------------------------------------------------------------ modified backprop, by hand
class _Guided(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, mode):
        ctx.save_for_backward(h)
        ctx.mode = mode
        return h.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        if ctx.mode == "guided":
            return grad.clamp_min(0) * (h > 0), None
        return grad.clamp_min(0), None  # deconvnet: ReLU of the backward signal only


def hand_modified_backprop(m: TinyCNN, x, target, mode):
    x = x.clone().requires_grad_(True)
    r = lambda h: _Guided.apply(h, mode)  # noqa: E731
    h = m.pool1(r(m.conv1(m.normalize(x))))
    h = m.pool2(r(m.conv2(h)))
    out = m.fc2(r(m.fc1(h.flatten(1))))
    return torch.autograd.grad(out.gather(1, target[:, None]).sum(), x)[0]


def test_guided_backprop_and_deconvolution_equal_hand_rules(model, x, target):
    assert torch.allclose(E.get("guided_backprop")(model, x, target),
                          hand_modified_backprop(model, x, target, "guided"), atol=1e-6)
    assert torch.allclose(E.get("deconvolution")(model, x, target),
                          hand_modified_backprop(model, x, target, "deconv"), atol=1e-6)


def hand_grad_cam(m: TinyCNN, x, target):
    xr = x.clone().requires_grad_(True)
    a = m.features(xr)  # conv2 output: the last conv layer
    h = m.pool2(m.relu2(a))
    out = m.fc2(m.relu3(m.fc1(h.flatten(1))))
    grad = torch.autograd.grad(out.gather(1, target[:, None]).sum(), a)[0]
    cam = F.relu((grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    return F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False).detach()


def test_grad_cam_equals_hand_computation_and_guided_grad_cam_is_the_product(model, x, target):
    cam = E.get("grad_cam")(model, x, target)
    per_pixel = hand_grad_cam(model, x, target)
    assert torch.allclose(cam.sum(1, keepdim=True), per_pixel, atol=1e-6)
    assert torch.allclose(cam[:, :1] * C, per_pixel, atol=1e-6)  # spread evenly over channels
    ggc = E.get("guided_grad_cam")(model, x, target)
    gbp = E.get("guided_backprop")(model, x, target)
    assert torch.allclose(ggc, gbp * cam.sum(1, keepdim=True), atol=1e-7)


def test_deep_lift_sums_to_the_output_difference(x, target):
    # Summation-to-delta is exact for the rescale rule on conv/ReLU/average-pool networks (Captum's
    # max-pool rule is an approximation, so the test model pools by averaging).
    model = TinyCNN().eval()
    model.pool1, model.pool2 = nn.AvgPool2d(2), nn.AvgPool2d(2)
    a = E.get("deep_lift", internal_batch=3)(model, x, target)
    gap = logit(model, x, target) - logit(model, torch.zeros_like(x), target)
    assert torch.allclose(a.flatten(1).sum(1), gap, atol=1e-4)
    refs = torch.rand(3, C, S, S, generator=torch.Generator().manual_seed(4))
    s = E.get("deep_lift_shap", baselines=refs, n_baselines=3, internal_batch=6)(model, x, target)
    mean_ref = torch.stack([logit(model, refs[i:i + 1].expand_as(x), target) for i in range(3)]).mean(0)
    assert torch.allclose(s.flatten(1).sum(1), logit(model, x, target) - mean_ref, atol=1e-4)


def test_lrp_zero_equals_gradient_times_input_without_biases(x, target):
    # A known identity: for a bias-free ReLU network, LRP with epsilon -> 0 is gradient x input.
    m = TinyCNN(seed=3, normalize=False, bias=False).eval()
    a = E.get("lrp", epsilon=1e-9)(m, x, target)
    assert torch.allclose(a, x * autograd_gradient(m, x, target), atol=1e-5)
    # and relevance is conserved: it sums to the target logit
    assert torch.allclose(a.flatten(1).sum(1), logit(m, x, target), rtol=1e-4, atol=1e-5)


def test_lrp_leaves_the_model_as_it_was(model, x, target):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    chunked = E.get("lrp", internal_batch=1)(model, x, target)  # a normalization module passes through
    assert torch.allclose(chunked, E.get("lrp")(model, x, target), atol=1e-6)
    for mod in model.modules():
        assert not hasattr(mod, "rule") and not hasattr(mod, "activations")
        assert not mod._forward_hooks and not mod._forward_pre_hooks and not mod._backward_hooks
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("arch, method, words", [
    (WithBatchNorm, "lrp", "BatchNorm"),
    (Residual, "lrp", "add"),
    (FunctionalReLU, "guided_backprop", "functional"),
    (FunctionalReLU, "deep_lift", "functional"),
    (FunctionalReLU, "guided_grad_cam", "functional"),
    (MLP, "grad_cam", "Conv2d"),
    (MLP, "guided_grad_cam", "Conv2d"),
])
def test_not_applicable_says_why(arch, method, words, x, target):
    with pytest.raises(NotApplicable, match=words):
        E.get(method)(arch().eval(), x, target)


def test_reused_relu_is_not_applicable_to_deep_lift(x, target):
    class Reuse(TinyCNN):
        def forward(self, x):
            h = self.pool2(self.relu1(self.conv2(self.pool1(self.relu1(self.conv1(self.normalize(x)))))))
            return self.fc2(self.relu1(self.fc1(self.flatten(h))))

    with pytest.raises(NotApplicable, match="more than once"):
        E.get("deep_lift")(Reuse().eval(), x, target)


def test_methods_apply_to_batchnorm_and_residual_models(x, target):
    for arch in (WithBatchNorm, Residual):
        m = arch().eval()
        for name in ("saliency", "guided_backprop", "deep_lift", "grad_cam"):
            assert torch.isfinite(E.get(name)(m, x, target)).all()


# ------------------------------------------------------------------------ perturbation methods
def test_perturbation_methods_are_exact_on_a_linear_model(x, target):
    lin = Linear().eval()
    w = lin.fc.weight[target].view(-1, C, S, S).detach()
    contrib = (w * x).sum(1, keepdim=True)  # per-pixel contribution to the logit
    p = 4
    per_patch = F.avg_pool2d(contrib, p) * p * p  # sum over each patch
    expected = per_patch.repeat_interleave(p, 2).repeat_interleave(p, 3).expand(-1, C, -1, -1)
    for name, kw in [("feature_ablation", {}), ("occlusion", {"window_px": 4, "stride_px": 4}),
                     ("shapley_value_sampling", {"samples": 2}), ("kernel_shap", {"samples": 60}),
                     ("lime", {"samples": 60, "alpha": 1e-6})]:
        a = E.get(name, **kw)(lin, x, target)
        assert torch.allclose(a, expected, atol=1e-3, rtol=1e-3), name


def test_feature_ablation_equals_hand_ablation(model, x, target):
    a = E.get("feature_ablation", patch_px=8)(model, x, target)
    assert torch.allclose(a, E.get("feature_ablation", patch_px=8, internal_batch=3)(model, x, target), atol=1e-6)
    full = logit(model, x, target)
    for i in range(2):
        for j in range(2):
            xa = x.clone()
            xa[:, :, 8 * i:8 * i + 8, 8 * j:8 * j + 8] = 0
            drop = full - logit(model, xa, target)
            assert torch.allclose(a[:, 0, 8 * i, 8 * j], drop, atol=1e-5)


def test_shapley_sampling_is_efficient(model, x, target):
    a = E.get("shapley_value_sampling", samples=3, patch_px=8, internal_batch=3)(model, x, target)
    phi = a[:, 0, ::8, ::8].flatten(1).sum(1)  # one value per patch
    gap = logit(model, x, target) - logit(model, torch.zeros_like(x), target)
    assert torch.allclose(phi, gap, atol=1e-4)


def test_patch_and_slic_masks():
    m = E.patch_mask(6, 7, 3)
    assert m.shape == (1, 1, 6, 7) and m.max() == 5 and m[0, 0, 0, 6] == 2 and m[0, 0, 3, 0] == 3
    from skimage.segmentation import slic

    img = torch.rand(2, C, S, S, generator=torch.Generator().manual_seed(0))
    masks = E.slic_mask(img, 8)
    ref = slic(img[0].permute(1, 2, 0).double().numpy(), n_segments=8, compactness=10.0, start_label=0,
               channel_axis=-1)
    # same partition (labels may be renumbered)
    pairs = {(int(a), int(b)) for a, b in zip(masks[0, 0].flatten(), torch.from_numpy(ref).flatten())}
    assert len(pairs) == len(np.unique(ref)) == int(masks[0].max()) + 1


def test_lime_kernel_is_the_lime_package_kernel():
    from xaudit.explain.perturbation import lime_kernel

    z = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0, 0]])  # 2 of 9 features kept
    d = 1 - 2 / math.sqrt(2 * 9)  # cosine distance to the all-ones coalition
    assert float(lime_kernel(0.25)(None, None, z)) == pytest.approx(math.sqrt(math.exp(-d * d / 0.25 ** 2)))


def test_lime_on_superpixels_runs(model, x, target):
    a = E.get("lime", features="slic", n_segments=8, samples=20)(model, x, target)
    assert a.shape == x.shape and torch.isfinite(a).all()


# ------------------------------------------------------------------------------------ baselines
def test_baselines(model, x, target):
    assert torch.equal(E.get("blank")(model, x, target), torch.zeros_like(x))
    assert torch.equal(E.get("input")(None, x, target), x)
    r = E.get("random")(None, x, target)
    assert r.min() >= 0 and r.max() < 1 and r.std() > 0.2
    assert torch.equal(r, E.get("random", seed=0)(None, x, target))
    from skimage.filters import sobel

    e = E.get("edge")(None, x, target)
    for n in range(2):
        for c in range(C):
            assert np.allclose(e[n, c].numpy(), sobel(x[n, c].double().numpy()), atol=1e-6)
    cen = E.get("center", sigma_frac=0.25)(None, x, target).sum(1)
    yy, xx = np.mgrid[0:S, 0:S] - (S - 1) / 2
    ref = np.exp(-(yy ** 2 + xx ** 2) / (2 * (0.25 * S) ** 2))
    assert np.allclose(cen[0].numpy(), ref, atol=1e-6) and torch.equal(cen[0], cen[3])


# -------------------------------------------------------------------------------- bad input
def test_bad_inputs_name_the_problem(model, x, target):
    sal = E.get("saliency")
    with pytest.raises(ExplanationFailed, match="target") as e:
        sal(model, x, torch.tensor([0, K, 1, K + 3]))
    assert e.value.field == "target" and e.value.indices == [1, 3]
    with pytest.raises(ExplanationFailed, match="target"):
        E.get("blank")(model, x, torch.tensor([0, -1, 0, 0]))
    bad = x.clone()
    bad[2, 0, 0, 0] = 1.5
    bad[3, 1, 2, 2] = float("nan")
    with pytest.raises(ExplanationFailed, match=r"\[0, 1\]") as e:
        sal(model, bad, target)
    assert e.value.field == "x" and e.value.indices == [2, 3]
    with pytest.raises(ExplanationFailed, match="N, C, H, W"):
        sal(model, x[0], target)
    with pytest.raises(ExplanationFailed, match=r"shape \[N\]"):
        sal(model, x, target[:2])
    with pytest.raises(ExplanationFailed, match="integer"):
        sal(model, x, target.float())
    with pytest.raises(UnknownName, match="valid methods"):
        E.get("no_such_method")
    with pytest.raises(ConfigError, match="steps"):
        E.get("integrated_gradients", steps=0)
    with pytest.raises(ConfigError, match="unknown parameter"):
        E.get("saliency", steps=3)
    with pytest.raises(ConfigError, match="features"):
        E.get("lime", features="voronoi")
    with pytest.raises(ConfigError, match="post"):
        E.explain(model, x, target, "saliency", post="log")


def test_hooks_removed_and_mode_restored_after_failures(x, target):
    m = TinyCNN()
    m.train()
    bad_target = torch.tensor([0, 1, 2, 99])
    for name in ("guided_backprop", "deep_lift", "lrp", "grad_cam", "guided_grad_cam", "saliency", "occlusion"):
        with pytest.raises(ExplanationFailed, match="target"):
            E.get(name)(m, x, bad_target)
        for mod in m.modules():
            assert not mod._forward_hooks and not mod._forward_pre_hooks and not mod._backward_hooks, name
            assert not getattr(mod, "_backward_pre_hooks", None), name
            assert not hasattr(mod, "rule"), name
        assert m.training, "train/eval mode restored"
    m.eval()
    assert torch.allclose(E.get("guided_backprop")(m, x, target), hand_modified_backprop(m, x, target, "guided"),
                          atol=1e-6)


def test_inplace_relu_is_handled(x, target):
    m = TinyCNN().eval()
    ref = E.get("guided_backprop")(m, x, target)
    m.relu1.inplace = m.relu2.inplace = True
    assert torch.allclose(E.get("guided_backprop")(m, x, target), ref)
    assert torch.allclose(E.get("deep_lift")(m, x, target), E.get("deep_lift")(TinyCNN().eval(), x, target))
    assert m.relu1.inplace and m.relu2.inplace


# --------------------------------------------------------------------------------- user methods
def test_user_registered_method_runs_through_the_registry(model, x, target):
    @E.register("test_scaled_gradient", family="gradient", passes=(1, 1))
    def scaled_gradient(model, x, target, scale=2.0):
        x = x.clone().requires_grad_(True)
        return scale * torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)[0]

    @E.register("test_nan_on_second", family="baseline", stochastic=True, passes=0)
    def nan_on_second(model, x, target, *, generator):
        out = torch.rand(x.shape, generator=generator)
        out[1] = float("nan")
        return out

    try:
        assert "test_scaled_gradient" in E.names(family="gradient")
        row = next(r for r in E.describe() if r["name"] == "test_scaled_gradient")
        assert row["params"] == {"scale": 2.0} and not row["stochastic"]
        ex = E.get("test_scaled_gradient", scale=3.0)
        assert torch.allclose(ex(model, x, target), 3 * autograd_gradient(model, x, target), atol=1e-6)
        assert ex.last_passes.forward == 1 and ex.last_passes.backward == 1
        processed = E.explain(model, x, target, "test_scaled_gradient", post="abs")
        assert processed.shape == (4, 1, S, S)
        assert torch.allclose(processed, E.abs_map(3 * autograd_gradient(model, x, target)), atol=1e-6)
        assert E.info("test_nan_on_second").params == {"seed": 0}  # added for stochastic methods
        with pytest.raises(ExplanationFailed, match="NaN") as e:
            E.get("test_nan_on_second", seed=3)(model, x, target)
        assert e.value.field == "map" and e.value.indices == [1]
        assert torch.isfinite(e.value.maps[[0, 2, 3]]).all()
        with pytest.raises(ValueError, match="already registered"):
            E.register("test_scaled_gradient")(scaled_gradient)
    finally:
        E.unregister("test_scaled_gradient")
        E.unregister("test_nan_on_second")
    assert "test_scaled_gradient" not in E.names()


def test_count_passes_and_config(model, x, target):
    with E.count_passes(model, n_images=len(x)) as p:
        autograd_gradient(model, x, target)
        with torch.no_grad():
            model(x[:2])
    assert p.forward_images == 6 and p.backward_images == 4
    cfg = E.get("expected_gradients", baselines=x).config()
    assert cfg["method"] == "expected_gradients" and cfg["baselines"].startswith("tensor[4, 3, 16, 16]:")
    json.dumps(cfg)


def test_internal_batch_is_capped_for_large_images():
    """Large images go through the model in smaller calls (measured faster at 224 px, bench/audit_byom.py);
    the worlds' sizes keep the internal batch they were measured with."""
    from xaudit.explain.base import call_budget

    assert call_budget(64, torch.zeros(2, 3, 32, 32)) == 64
    assert call_budget(64, torch.zeros(2, 3, 112, 112)) == 64
    assert call_budget(64, torch.zeros(2, 3, 224, 224)) == 16
    assert call_budget(8, torch.zeros(2, 3, 224, 224)) == 8
    assert call_budget(64, torch.zeros(2, 3, 2048, 2048)) == 1
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten())
    sizes = []
    model.register_forward_hook(lambda m, a, o: sizes.append(a[0].shape[0]))
    x = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    E.get("integrated_gradients", steps=10)(model, x, torch.zeros(4, dtype=torch.long))
    assert sizes and max(sizes) <= 16 and sum(sizes) >= 40
