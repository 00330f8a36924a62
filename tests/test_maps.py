"""xaudit.core.maps against numpy references of the PROTOCOLS section-1 normalizations."""
import numpy as np
import pytest
import torch

from xaudit.core.errors import ConfigError
from xaudit.core.maps import abs_map, percentile, signed_map, zero_one_map


def _raw(seed=0, n=5, c=3, h=16, w=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g, dtype=torch.float64)


def _ref_abs(e, q=99.0):   # PAIR VisualizeImageGrayscale on one image [C, H, W]
    s = np.abs(e).sum(0)
    vmax, vmin = np.percentile(s, q), s.min()
    return np.clip((s - vmin) / (vmax - vmin), 0, 1)


@pytest.mark.parametrize("q", [0.0, 37.5, 50.0, 99.0, 100.0])
def test_percentile_matches_numpy(q):
    x = _raw(1).flatten(1)
    ref = np.percentile(x.numpy(), q, axis=1)
    np.testing.assert_allclose(percentile(x, q).numpy(), ref, rtol=0, atol=1e-12)


def test_percentile_selection_path_for_other_devices():
    # float16 takes the torch.kthvalue branch (the one used on accelerators)
    x = _raw(5).flatten(1).to(torch.float16)
    ref = np.percentile(x.double().numpy(), 99.0, axis=1)
    np.testing.assert_allclose(percentile(x, 99.0).double().numpy(), ref, rtol=2e-3)


def test_abs_map_matches_reference():
    raw = _raw()
    out = abs_map(raw)
    assert out.shape == (5, 1, 16, 12) and out.dtype == raw.dtype
    for i in range(5):
        np.testing.assert_allclose(out[i, 0].numpy(), _ref_abs(raw[i].numpy()), atol=1e-12)
    assert float(out.min()) >= 0 and float(out.max()) == 1.0
    # the top 1% is clipped: at least 1% of the pixels sit at 1
    assert float((out == 1).double().mean()) >= 0.01 - 1e-9


def test_abs_map_sparse_falls_back_to_max():
    raw = torch.zeros(1, 1, 20, 20, dtype=torch.float64)
    raw[0, 0, 3, 4], raw[0, 0, 5, 6] = 2.0, -4.0           # 0.5% of pixels nonzero: P99 = 0
    out = abs_map(raw)[0, 0]
    assert float(out[5, 6]) == 1.0 and float(out[3, 4]) == 0.5 and float(out.sum()) == 1.5


def test_signed_map_matches_reference():
    raw = _raw(2)
    out = signed_map(raw)
    for i in range(5):
        s = raw[i].numpy().sum(0)
        np.testing.assert_allclose(out[i, 0].numpy(), s / np.percentile(np.abs(s), 99), atol=1e-12)
    # sign and order kept
    s = raw.sum(1, keepdim=True)
    assert torch.equal(torch.sign(out), torch.sign(s))


def test_zero_one_map_matches_reference():
    raw = _raw(3)
    out = zero_one_map(raw)
    for i in range(5):
        s = raw[i].numpy().sum(0)
        np.testing.assert_allclose(out[i, 0].numpy(), (s - s.min()) / (s.max() - s.min()), atol=1e-12)


@pytest.mark.parametrize("fn", [abs_map, signed_map, zero_one_map])
def test_constant_and_nonfinite_maps(fn):
    raw = _raw(4, n=3)
    raw[0] = 0.0
    raw[1] = 0.7
    raw[2, 1, 2, 3] = float("nan")
    out = fn(raw)
    assert torch.equal(out[0], torch.zeros_like(out[0]))             # all-zero map: zeros, not NaN
    if fn is not signed_map:                                         # a constant map carries no ranking
        assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert bool(torch.isnan(out[2]).all())                           # non-finite image: all NaN
    assert bool(torch.isfinite(out[:2]).all())


def test_bad_input():
    with pytest.raises(ConfigError, match="raw"):
        abs_map(torch.zeros(3, 8, 8))
    with pytest.raises(ConfigError, match="floating"):
        zero_one_map(torch.zeros(1, 1, 8, 8, dtype=torch.int64))
