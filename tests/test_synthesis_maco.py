"""MaCo (issue 13 item 1) and MaCo's crop and noise transforms (item 2): the magnitude invariant, the
world's magnitude spectrum, shapes / range / determinism, the transforms' draws, bad input. Tiny sizes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xaudit.core.errors import ConfigError
from xaudit.explain.synthesis import maco as M
from xaudit.explain.synthesis import param as P
from xaudit.explain.synthesis import transforms as T
from xaudit.explain.synthesis.optimize import optimize
from xaudit.zoo.arch import CNN

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rand_magnitude(c, s, seed=0):
    return torch.rand(c, s, s // 2 + 1, generator=gen(seed)) + 0.1


@pytest.mark.parametrize("channels,size", [(1, 16), (3, 16), (3, 15)])
def test_the_phase_never_reaches_the_magnitude(channels, size):
    mag = rand_magnitude(channels, size)
    p = P.make("maco", 2, channels, size, [gen(1), gen(2)], magnitude=mag)
    with torch.no_grad():
        p.phase.mul_(3.0).add_(torch.randn(p.phase.shape, generator=gen(3)))  # any phase at all
    spec = torch.fft.rfft2(p.spatial().detach().double()).abs()
    # the free coefficients (0 < kx < S/2) keep exactly the given magnitude, whatever the phase
    free = slice(1, (size + 1) // 2)
    want = mag.double().expand(2, -1, -1, -1)
    assert torch.allclose(spec[..., free], want[..., free], rtol=1e-4, atol=1e-4 * float(mag.max()))
    # the Hermitian-constrained column kx = 0 keeps the Hermitian part (Z(k) + conj Z(-k)) / 2: modulus
    # <= the mean of the magnitude at k and -k (<= the magnitude for a symmetric one, as real images')
    flip = (-torch.arange(size)) % size
    pair = 0.5 * (want[..., 0] + want[..., flip, 0])
    assert (spec[..., 0] <= pair * (1 + 1e-4) + 1e-6).all()
    assert (spec[..., 0] < pair * 0.99).any()                 # and it does lose some there
    # after the standardization (C = 1: no colour mixing; the pre-sigmoid image) every non-DC free
    # frequency is the magnitude times one factor per image
    if channels == 1:
        pre = torch.fft.rfft2(p.pre_sigmoid().detach().double()).abs()[..., free]
        ratio = pre / want[..., free]
        assert torch.allclose(ratio, ratio.flatten(1).mean(1).view(-1, 1, 1, 1), rtol=1e-4)
    # the phase does change the image
    q = P.make("maco", 2, channels, size, [gen(1), gen(2)], magnitude=mag)
    assert (q.images() - p.images()).abs().max() > 0.05


def test_magnitude_spectrum_against_numpy():
    x = torch.rand(5, 3, 8, 8, generator=gen(4), dtype=torch.float64)
    xn = x.numpy()
    plain = np.abs(np.fft.rfft2(xn)).mean(0)                      # [3, 8, 5]
    got = M.magnitude_spectrum(x, centre=False, decorrelate=False)
    assert got.shape == (3, 8, 5) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), plain, rtol=1e-5)
    # centre: each image's channel mean removed (DC exactly 0, the rest unchanged)
    centred = np.abs(np.fft.rfft2(xn - xn.mean((2, 3), keepdims=True))).mean(0)
    got = M.magnitude_spectrum(x, decorrelate=False)
    assert float(got[:, 0, 0].abs().max()) == 0.0
    np.testing.assert_allclose(got.numpy(), centred, rtol=1e-5, atol=1e-5)
    # decorrelate: the spectrum of inv(m) x, m the colour matrix MaCo recorrelates with
    m = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    m = m / np.linalg.norm(m, axis=0).max()
    dec = np.einsum("nchw,dc->ndhw", xn, np.linalg.inv(m))
    want = np.abs(np.fft.rfft2(dec - dec.mean((2, 3), keepdims=True))).mean(0)
    np.testing.assert_allclose(M.magnitude_spectrum(x).numpy(), want, rtol=1e-4, atol=1e-4)
    # one channel: nothing to decorrelate
    one = x[:, :1]
    np.testing.assert_allclose(M.magnitude_spectrum(one, centre=False).numpy(), plain[:1], rtol=1e-5)


def test_world_magnitude_is_the_training_images_spectrum_memoized():
    from xaudit import world
    a = M.world_magnitude("shapes", size=32, n_images=8)
    assert a.shape == (3, 32, 17) and torch.isfinite(a).all() and (a >= 0).all() and a[:, 0, 0].eq(0).all()
    imgs = world.get("shapes", size=32, seed=0).sample(range(8), split="train").images
    assert torch.equal(a, M.magnitude_spectrum(imgs))
    b = M.world_magnitude({"name": "shapes", "size": 32, "seed": 0}, n_images=8)
    assert torch.equal(a, b)
    a.zero_()                                                   # a copy: the memo is untouched
    assert torch.equal(M.world_magnitude("shapes", size=32, n_images=8), b)
    assert not torch.equal(M.world_magnitude("shapes", size=32, n_images=8, seed=1), b)
    # a world name as the magnitude: the same spectrum at the image size
    p = P.make("maco", 1, 3, 32, gen(0), magnitude={"name": "shapes", "seed": 0})
    assert torch.equal(p.magnitude, M.world_magnitude("shapes", size=32))
    with pytest.raises(ConfigError, match="valid worlds"):
        M.world_magnitude("nowhere")


@pytest.mark.parametrize("channels,size", [(1, 12), (3, 16)])
def test_shapes_range_and_determinism(channels, size):
    mag = rand_magnitude(channels, size)
    gens = [gen(10 + i) for i in range(3)]
    p = P.make("maco", 3, channels, size, gens, magnitude=mag)
    x = p.images()
    assert x.shape == (3, channels, size, size) and p.phase.shape == (3, channels, size, size // 2 + 1)
    assert torch.isfinite(x).all() and x.min() > 0 and x.max() < 1 and x.std() > 0.1
    g, = torch.autograd.grad(x.sum() + (x * x).sum(), p.parameters())
    assert g.abs().sum() > 0
    same = P.make("maco", 3, channels, size, [gen(10 + i) for i in range(3)], magnitude=mag).images()
    assert torch.equal(x, same)
    other = P.make("maco", 1, channels, size, [gen(99)], magnitude=mag).images()
    assert (other[0] - x[0]).abs().max() > 0.05
    alone = P.make("maco", 1, channels, size, [gen(12)], magnitude=mag).images()
    # independent of the rest of the batch: bitwise at a power-of-two size; torch's batched FFT of other
    # sizes rounds by an ulp differently from a single one (fourier alike)
    if size & (size - 1) == 0:
        assert torch.equal(alone[0], x[2])
    assert torch.allclose(alone[0], x[2], rtol=0, atol=1e-6)


def test_bad_magnitude_and_init_errors():
    with pytest.raises(ConfigError, match=r"\[C, S, S//2\+1\] = \[3, 16, 9\]"):
        P.make("maco", 1, 3, 16, gen(0), magnitude=torch.ones(3, 16, 16))
    with pytest.raises(ConfigError, match=r"\[1, 16, 9\]"):
        P.make("maco", 1, 1, 16, gen(0), magnitude=M.world_magnitude("shapes", size=32, n_images=4))
    with pytest.raises(ConfigError, match="magnitude"):
        P.make("maco", 1, 1, 8, gen(0), magnitude=np.ones((1, 8, 5)))
    for bad in (-torch.ones(1, 8, 5), torch.zeros(1, 8, 5), torch.full((1, 8, 5), math.nan)):
        with pytest.raises(ConfigError, match="magnitude"):
            P.make("maco", 1, 1, 8, gen(0), magnitude=bad)
    with pytest.raises(ConfigError, match="magnitude"):           # magnitude is maco's option only
        P.make("fourier", 1, 1, 8, gen(0), magnitude=torch.ones(1, 8, 5))
    with pytest.raises(ConfigError, match="phase-only"):
        P.from_images("maco", torch.full((1, 3, 8, 8), 0.5))
    with pytest.raises(ConfigError, match="images"):
        M.magnitude_spectrum(torch.ones(3, 8, 8))


# -- transforms ---------------------------------------------------------------------------------------

# T.apply on x = rand(3, 3, 8, 8, gen(0)) with generators gen(1), gen(2), gen(3), computed before crop and
# noise existed: the lucent transforms must not have moved.
BEFORE = {(True,): 282.821941614151, ("pad",): 281.71446084976196, ("jitter", "rotate"): 286.56613557599485,
          ("scale",): 284.8489659707993}


def test_crop_and_noise_off_change_nothing():
    assert T.Transforms.of(True) == T.Transforms(True, True, True, True, False, False)
    assert T.Transforms() == T.Transforms.of(True) and not T.Transforms.of(False).any()
    x = torch.rand(3, 3, 8, 8, generator=gen(0))
    for spec, total in BEFORE.items():
        y = T.apply(x, T.Transforms.of(spec[0] if spec == (True,) else list(spec)), [gen(1), gen(2), gen(3)])
        assert math.isclose(float(y.double().sum()), total, rel_tol=1e-6, abs_tol=1e-5)
    # the lucent set draws exactly its 5 numbers per image and step
    gs = [gen(1), gen(2)]
    T.apply(x[:2], T.Transforms.of(True), gs)
    ref = gen(1)
    torch.rand(5, generator=ref)
    assert torch.equal(gs[0].get_state(), ref.get_state())
    # crop on draws after those 5: the lucent part is unchanged and the crop sees its output
    on = T.Transforms.of(["jitter", "scale", "rotate", "pad", "crop"])
    got = T.apply(x, on, [gen(1), gen(2), gen(3)])
    gs = [gen(1), gen(2), gen(3)]
    lucent = T.apply(x, T.Transforms.of(True), gs)
    centre, side = T.crop_draw(gs)
    assert torch.equal(got, T.crop(lucent, centre, side))
    # noise follows the crop's draws; MaCo's set is crop + noise
    gs = [gen(1), gen(2), gen(3)]
    got = T.apply(x, T.Transforms.maco(), gs)
    gs = [gen(1), gen(2), gen(3)]
    T.draw(gs)
    centre, side = T.crop_draw(gs)
    noise = T.noise_draw(gs, (3, 8, 8))
    assert torch.equal(got, T.crop(x, centre, side) + noise)
    assert 0.5 * T.NOISE < float(noise.std()) < 2 * T.NOISE
    assert T.Transforms.maco().as_dict() == {"jitter": False, "scale": False, "rotate": False, "pad": False,
                                             "crop": True, "noise": True}
    assert T.Transforms.of({"crop": True}) == T.Transforms.of(["crop"]) == T.Transforms(
        False, False, False, False, True, False)
    with pytest.raises(ConfigError, match="crop, noise"):
        T.Transforms.of(["blur"])


def test_crop_is_a_resized_sub_box():
    # a ramp: pixel (r, c) = c + 10 r; bilinear sampling inside the image reproduces it exactly, so the
    # crop's output is the ramp at the sampled positions
    s = 8
    rows, cols = torch.meshgrid(torch.arange(s, dtype=torch.float64), torch.arange(s, dtype=torch.float64),
                                indexing="ij")
    x = (cols + 10 * rows)[None, None]                       # [1, 1, 8, 8]
    centre, side = torch.tensor([[0.5, 0.375]]), torch.tensor([0.5])
    y = T.crop(x, centre, side)
    # output pixel j samples box coordinate (j + 0.5) / S: input pixel cx S - side S / 2 + side (j + 0.5) - 0.5
    j = torch.arange(s, dtype=torch.float64)
    px = 0.5 * s - 0.5 * s * 0.5 + 0.5 * (j + 0.5) - 0.5     # columns 1.75 .. 5.25
    py = 0.375 * s - 0.5 * s * 0.5 + 0.5 * (j + 0.5) - 0.5   # rows 0.75 .. 4.25
    assert torch.allclose(y[0, 0], px[None, :] + 10 * py[:, None], atol=1e-9)
    # the 2 x 2 pixel box around pixel centres 2..3 blown up to the whole image: its corners, mid-way
    box = T.crop(x, torch.tensor([[3 / 8, 3 / 8]]), torch.tensor([0.25]))
    assert torch.allclose(box[0, 0, 0, 0], x[0, 0, 2, 2] - 0.375 * 11) and box.shape == x.shape
    # outside the image: grey
    out = T.crop(torch.zeros(1, 1, s, s), torch.tensor([[-1.0, 0.5]]), torch.tensor([0.25]))
    assert torch.equal(out, torch.full_like(out, 0.5))
    # apply's boxes come from crop_draw's ranges
    centre, side = T.crop_draw([gen(i) for i in range(200)])
    assert side.min() >= T.CROP_BOX[0] and side.max() < T.CROP_BOX[1]
    assert abs(float(centre.mean()) - 0.5) < 0.03 and abs(float(centre.std()) - T.CROP_CENTRE_STD) < 0.03


def test_optimize_with_maco_raises_the_target_logit():
    torch.manual_seed(0)  # test-only model weights
    model = CNN(channels=3, size=16, num_classes=5, hidden=16, width=4).eval()
    mag = rand_magnitude(3, 16)
    kw = dict(param="maco", steps=30, lr=0.5, size=16, param_options={"magnitude": mag})
    res = optimize(model, [1, 3], transforms=T.Transforms.maco(), generator=gen(0), **kw)
    again = optimize(model, [1, 3], transforms=T.Transforms.maco(), generator=gen(0), **kw)
    assert torch.equal(res.images, again.images) and res.images.shape == (2, 3, 16, 16)
    assert res.settings["transforms"]["crop"] is True
    start = P.make("maco", 2, 3, 16, gen(5), magnitude=mag).images()
    with torch.no_grad():
        before = model(start)[[0, 1], [1, 3]]
    assert (res.values > before).all()


def test_fv_maco_is_registered_and_records_its_magnitude_and_transforms():
    from xaudit import explain

    torch.manual_seed(0)  # test-only model weights
    model = CNN(channels=3, size=32, num_classes=5, hidden=16, width=4).eval()
    info = explain.info("fv_maco")
    assert info.kind == "synthesis" and info.params["magnitude"] == "shapes" and info.params["transforms"] is True
    ex = explain.get("fv_maco", steps=5, size=32, magnitude={"name": "shapes", "seed": 0}, transforms="maco")
    x = ex.synthesize(model, [1], generator=gen(0))
    s = ex.last_synthesis.settings
    assert s["method"] == "fv_maco" and s["param"] == "maco" and s["lr"] == 0.1      # the maco default lr
    assert s["param_options"]["magnitude"] == {"name": "shapes", "seed": 0}
    assert s["transforms"] == T.Transforms.maco().as_dict()
    assert s["transform_amounts"]["crop_box"] == list(T.CROP_BOX) and s["transform_amounts"]["noise"] == T.NOISE
    # the same images as the parameterization driven directly with that magnitude
    direct = optimize(model, [1], param="maco", steps=5, size=32, transforms="maco", generator=gen(0),
                      param_options={"init_std": 1.0, "magnitude": M.world_magnitude("shapes", size=32)})
    assert torch.equal(x, direct.images)
    assert direct.settings["param_options"]["magnitude"].startswith("tensor[3, 32, 17]:")   # JSON-able
    with pytest.raises(ConfigError, match="magnitude"):
        explain.get("fv_maco", magnitude=3)
    with pytest.raises(ConfigError, match="transforms"):
        explain.get("fv_maco", transforms="horama")
