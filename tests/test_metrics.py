"""xaudit.metrics against independent references: scipy, scikit-image, scikit-learn, hand-worked cases."""
import itertools
import math
import warnings

import numpy as np
import pytest
import scipy.stats as ss
import torch
from skimage.feature import hog as sk_hog
from skimage.metrics import structural_similarity as sk_ssim
from sklearn.metrics import roc_auc_score

import xaudit.metrics as M
from xaudit.core.errors import ConfigError, UnknownName
from xaudit.metrics import _native
from xaudit.metrics.ranks import twice_ranks

TOL = 1e-6


def _maps(seed, n=12, h=32, w=32, zeros=0.0, levels=None, dtype=np.float64):
    """Random maps; ``zeros``: fraction set to 0 (ties); ``levels``: quantize to that many values."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, h, w))
    if levels:
        x = np.round(x * (levels - 1)) / (levels - 1)
    x[rng.random(x.shape) < zeros] = 0.0
    return x.astype(dtype)


CASES = [dict(), dict(zeros=0.8), dict(levels=4), dict(zeros=0.95, levels=3)]


def _loop(fn, a, b):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([fn(x, y) for x, y in zip(a, b)], dtype=np.float64)


# ---------------------------------------------------------------- ranks

def test_compiled_kernels_are_built():
    """The dev install compiles xaudit/metrics/_kernels.c; without it every measure still works (numpy
    fallbacks, cross-checked below) but slower. XAUDIT_NO_KERNELS=1 runs the suite on the fallbacks."""
    import os
    if os.environ.get("XAUDIT_NO_KERNELS", "") not in ("", "0"):
        pytest.skip("XAUDIT_NO_KERNELS set")
    assert _native.available(), "xaudit.metrics._kernels did not build: `pip install -e .` needs a C compiler"
    assert _native.kernels.simd in ("avx512", "avx2", "baseline")


BACKENDS = ["auto", "numpy"] + (["native"] if _native.available() else [])


@pytest.mark.parametrize("backend", ["numpy", "torch"] + BACKENDS[2:])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rank_backends_match_scipy_rankdata(backend, dtype):
    x = np.concatenate([_maps(1, n=3, **c, dtype=dtype).reshape(3, -1) for c in CASES])
    x[0, :7] = -0.0                                   # -0.0 ties with 0.0
    x[1, :5] = -np.abs(x[1, :5]) - 1                  # negative values sort first
    got = twice_ranks(torch.from_numpy(x), backend=backend).numpy() / 2
    np.testing.assert_array_equal(got, ss.rankdata(x.astype(np.float64), axis=1))


def test_rankdata_public():
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0]])
    assert M.rankdata(x).tolist() == [[3.5, 1.0, 3.5, 2.0]]


# ---------------------------------------------------------------- correlations

@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_spearman_matches_scipy(case, dtype, backend):
    a, b = _maps(10, **case, dtype=dtype), _maps(11, **case, dtype=dtype)
    b[:3] = a[:3]                                       # identical maps: exactly 1
    b[3] = -a[3]
    a[4, :3] = -1.5                                     # negative values, tied
    got = M.spearman(torch.from_numpy(a), torch.from_numpy(b), backend=backend)
    ref = _loop(lambda x, y: ss.spearmanr(x.ravel().astype(np.float64), y.ravel().astype(np.float64))[0], a, b)
    assert got.dtype == torch.float64 and got.shape == (12,)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=TOL)
    assert got[:3].tolist() == [1.0, 1.0, 1.0]
    # [N, 1, H, W] gives the same as [N, H, W]
    got4 = M.spearman(torch.from_numpy(a)[:, None], torch.from_numpy(b)[:, None], backend=backend)
    assert torch.equal(got, got4)


@pytest.mark.parametrize("case", CASES)
def test_pearson_matches_scipy(case):
    a, b = _maps(12, **case), _maps(13, **case)
    got = M.pearson(torch.from_numpy(a), torch.from_numpy(b))
    ref = _loop(lambda x, y: ss.pearsonr(x.ravel(), y.ravel())[0], a, b)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("fn", [M.spearman, M.pearson])
def test_correlation_nan_reasons(fn):
    a, b = _maps(14, n=6), _maps(15, n=6)
    a[1] = 0.0                      # constant first map
    b[2] = 0.25                     # constant second map
    a[3], b[3] = 1.0, 1.0           # both constant
    a[4, 3, 3] = np.nan             # non-finite beats everything
    b[5, 0, 0] = np.inf
    res = fn(torch.from_numpy(a), torch.from_numpy(b), return_reasons=True)
    assert isinstance(res, M.MeasureResult)
    assert res.reasons == [None, "constant_a", "constant_b", "constant_both", "nonfinite_input",
                           "nonfinite_input"]
    assert res.counts() == {"constant_a": 1, "constant_b": 1, "constant_both": 1, "nonfinite_input": 2}
    assert bool(torch.isnan(res.values[1:]).all()) and bool(torch.isfinite(res.values[0]))
    plain = fn(torch.from_numpy(a), torch.from_numpy(b))
    assert torch.equal(plain.isnan(), res.values.isnan())
    assert set(res.counts()) <= set(M.MEASURES.meta(fn.__name__)["nan_reasons"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_spearman_flags_every_kind_of_nonfinite_and_constant_row(dtype):
    """The compiled path reads the row flags off the sorted keys (NaN and inf sort to a row's ends):
    every placement and sign of a non-finite value, and constant rows of +-0.0, must be caught there."""
    a, b = _maps(30, n=9, h=8, w=8, dtype=dtype), _maps(31, n=9, h=8, w=8, dtype=dtype)
    a[0, 4, 4] = np.nan                     # NaN inside the row
    a[1, 0, 0] = -np.nan                    # a NaN with the sign bit
    a[2, 7, 7] = -np.inf
    b[3, 2, 5] = np.inf
    a[4] = -0.0                             # -0.0 and +0.0 are one value: constant
    a[4, 1, :4] = 0.0
    b[5] = -2.5                             # constant negative
    a[6, :, :] = -a[6]                      # all negative, not constant: defined
    b[7] = np.linspace(-1, 1, 64, dtype=dtype).reshape(8, 8)
    expected = ["nonfinite_input"] * 4 + ["constant_a", "constant_b", None, None, None]
    for backend in BACKENDS:
        res = M.spearman(torch.from_numpy(a), torch.from_numpy(b), return_reasons=True, backend=backend)
        assert res.reasons == expected, backend
        ref = _loop(lambda x, y: ss.spearmanr(x.ravel().astype(np.float64), y.ravel().astype(np.float64))[0],
                    a[6:], b[6:])
        np.testing.assert_allclose(res.values[6:].numpy(), ref, atol=TOL)


@pytest.mark.parametrize("case", CASES)
def test_device_kernels_agree_with_cpu_kernels(case):
    """The torch kernels (used on GPUs) against the numpy CPU kernels, run here on CPU."""
    from xaudit.metrics.similarity import _rank_corr_rows
    a, b = _maps(16, n=9, **case, dtype=np.float32), _maps(17, n=9, **case, dtype=np.float32)
    fa, fb = torch.from_numpy(a).reshape(9, -1), torch.from_numpy(b).reshape(9, -1)
    ref = _loop(lambda x, y: ss.spearmanr(x.ravel().astype(np.float64), y.ravel().astype(np.float64))[0], a, b)
    for backend in ["numpy", "torch"] + BACKENDS[2:]:
        np.testing.assert_allclose(_rank_corr_rows(fa, fb, backend).numpy(), ref, atol=TOL)
        got = M.ssim(torch.from_numpy(a), torch.from_numpy(b), backend=backend)
        np.testing.assert_allclose(got.numpy(), M.ssim(torch.from_numpy(a).double(),
                                                       torch.from_numpy(b).double()).numpy(), atol=1e-12)
    from xaudit.metrics.similarity import _top_k_membership_numpy
    for k in (1, 50, 700):
        np.testing.assert_allclose(M.top_k_membership(fa, k).numpy(), _top_k_membership_numpy(fa.numpy(), k),
                                   atol=1e-12)


def test_pair_shape_errors():
    with pytest.raises(ConfigError, match="same shape"):
        M.spearman(torch.zeros(2, 8, 8), torch.zeros(2, 8, 9))
    with pytest.raises(ConfigError, match="one channel"):
        M.ssim(torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 16))


# ---------------------------------------------------------------- SSIM

@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape,data_range,sigma", [((32, 32), 1.0, 1.5), ((20, 27), 2.0, 1.5),
                                                    ((24, 24), 1.0, 1.0), ((11, 11), 1.0, 1.5),
                                                    ((64, 64), 1.0, 1.5), ((19, 18), 1.0, 1.5)])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ssim_matches_skimage(case, shape, data_range, sigma, backend, dtype):
    if backend == "native" and shape[1] - (2 * int(3.5 * sigma + 0.5)) < 8:
        pytest.skip("the kernel needs 8 valid columns")
    a, b = _maps(20, n=6, h=shape[0], w=shape[1], **case), _maps(21, n=6, h=shape[0], w=shape[1], **case)
    b[0] = a[0]
    b[1] = np.clip(a[1] + 0.05, 0, 1)
    a[2] = 0.0                                               # constant maps are defined for SSIM
    a[3, : shape[0] // 2] = 1.0                              # a flat non-zero region (variance cancellation)
    a, b = a.astype(dtype), b.astype(dtype)
    got = M.ssim(torch.from_numpy(a), torch.from_numpy(b), data_range=data_range, sigma=sigma, backend=backend)
    a, b = a.astype(np.float64), b.astype(np.float64)        # skimage computes in the input's precision
    ref = _loop(lambda x, y: sk_ssim(x, y, gaussian_weights=True, sigma=sigma, use_sample_covariance=False,
                                     data_range=data_range), a, b)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=TOL)
    assert abs(float(got[0]) - 1.0) < 1e-12


def test_ssim_float32_close_and_checks():
    a, b = _maps(22, n=6, zeros=0.5), _maps(23, n=6, zeros=0.5)
    ref = M.ssim(torch.from_numpy(a), torch.from_numpy(b))
    got = M.ssim(torch.from_numpy(a).float(), torch.from_numpy(b).float(), dtype=torch.float32)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5)
    with pytest.raises(ConfigError, match="at least 11x11"):
        M.ssim(torch.zeros(1, 10, 10), torch.zeros(1, 10, 10))
    with pytest.raises(ConfigError, match="data_range"):
        M.ssim(torch.zeros(1, 16, 16), torch.zeros(1, 16, 16), data_range=0)
    a[1, 2, 2] = np.nan
    res = M.ssim(torch.from_numpy(a), torch.from_numpy(b), return_reasons=True)
    assert res.reasons[1] == "nonfinite_input" and res.counts() == {"nonfinite_input": 1}


# ---------------------------------------------------------------- HOG

@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape,ppc,cpb", [((64, 64), None, 3), ((32, 32), None, 3), ((37, 50), None, 3),
                                           ((30, 30), 5, 2), ((16, 16), None, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hog_equals_skimage_bitwise(case, shape, ppc, cpb, dtype):
    from xaudit.metrics.similarity import _hog_cells_torch
    a = _maps(30, n=4, h=shape[0], w=shape[1], **case, dtype=dtype)
    got = M.hog(torch.from_numpy(a), pixels_per_cell=ppc, cells_per_block=cpb)
    c = ppc or M.hog_pixels_per_cell(*shape)
    ref = np.stack([sk_hog(x, orientations=9, pixels_per_cell=(c, c), cells_per_block=(cpb, cpb),
                           block_norm="L2-Hys", feature_vector=True) for x in a])
    assert got.numpy().dtype == ref.dtype
    # same float32 cell sums, same float64 orientations and block norms: bitwise equal on the CPU
    np.testing.assert_array_equal(got.numpy(), ref)
    # the torch kernel (used on accelerators), run here on the CPU
    t = _hog_cells_torch(torch.from_numpy(a), 9, c, cpb).numpy()
    np.testing.assert_allclose(t, ref, rtol=0, atol=1e-12 if dtype == np.float64 else 1e-7)


def test_hog_pixels_per_cell_rule():
    assert [M.hog_pixels_per_cell(s, s) for s in (12, 32, 64, 128, 299)] == [4, 4, 8, 16, 37]
    with pytest.raises(ConfigError, match="pixels_per_cell"):
        M.hog(torch.zeros(1, 10, 10))


@pytest.mark.parametrize("correlation", ["spearman", "pearson"])
@pytest.mark.parametrize("case", CASES[:2])
def test_hog_similarity_matches_reference(correlation, case):
    a, b = _maps(31, n=6, **case), _maps(32, n=6, **case)
    b[0] = a[0]
    a[1] = 0.5                                                  # constant map: all-zero HOG vector
    res = M.hog_similarity(torch.from_numpy(a), torch.from_numpy(b), correlation=correlation,
                           return_reasons=True)
    corr = ss.spearmanr if correlation == "spearman" else ss.pearsonr

    def ref(x, y):
        kw = dict(orientations=9, pixels_per_cell=(4, 4), cells_per_block=(3, 3), block_norm="L2-Hys")
        return corr(sk_hog(x, **kw), sk_hog(y, **kw))[0]
    expected = _loop(ref, a, b)
    np.testing.assert_allclose(res.values.numpy(), expected, rtol=0, atol=TOL)  # NaN where undefined
    assert res.reasons[1] == "constant_a" and float(res.values[0]) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- top-k and mean |a - b|

def test_top_k_intersection_without_ties_is_set_intersection():
    a, b = _maps(40, n=8), _maps(41, n=8)
    b[0] = a[0]
    for k in (1, 10, 0.1, 1.0):
        got = M.top_k_intersection(torch.from_numpy(a), torch.from_numpy(b), k=k)
        kk = k if isinstance(k, int) else max(1, round(k * a[0].size))
        ref = [len(set(np.argsort(-x.ravel())[:kk]) & set(np.argsort(-y.ravel())[:kk])) / kk
               for x, y in zip(a, b)]
        np.testing.assert_allclose(got.numpy(), ref, atol=1e-12)
        assert float(got[0]) == 1.0


def test_top_k_intersection_ties_are_the_random_tiebreak_expectation():
    # a: [5, 3, 3, 3, 0, 0]; b: [3, 3, 0, 5, 0, 0]; k = 2
    a = torch.tensor([[5.0, 3, 3, 3, 0, 0]]).view(1, 2, 3)
    b = torch.tensor([[3.0, 3, 0, 5, 0, 0]]).view(1, 2, 3)
    # enumerate every tie-break: a picks {0, one of 1..3}; b picks {3, one of 0..1}
    hits = [len({0, i} & {3, j}) for i in (1, 2, 3) for j in (0, 1)]
    got = M.top_k_intersection(a, b, k=2)
    assert float(got[0]) == pytest.approx(np.mean(hits) / 2, abs=1e-12)
    const = torch.full((1, 4, 4), 0.3)
    assert float(M.top_k_intersection(const, const, k=4)[0]) == pytest.approx(4 / 16, abs=1e-12)
    with pytest.raises(ConfigError, match="k"):
        M.top_k_intersection(const, const, k=0)
    with pytest.raises(ConfigError, match="k"):
        M.top_k_intersection(const, const, k=17)


def test_mean_abs_diff():
    a, b = _maps(42, n=5), _maps(43, n=5)
    got = M.mean_abs_diff(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    np.testing.assert_allclose(got.numpy(), np.abs(a.astype(np.float32) - b.astype(np.float32)).mean((1, 2)),
                               atol=1e-7)
    a[2, 1, 1] = np.inf
    res = M.mean_abs_diff(torch.from_numpy(a), torch.from_numpy(b), return_reasons=True)
    assert res.reasons == [None, None, "nonfinite_input", None, None] and math.isnan(float(res.values[2]))


# ---------------------------------------------------------------- localization

def _mask(n=3, h=4, w=4):
    m = torch.zeros(n, h, w, dtype=torch.bool)
    m[:, :2, :2] = True
    return m


def test_trigger_distance_and_blank_hand_worked():
    attr = torch.zeros(1, 2, 2, 2)
    attr[0, 0] = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    attr[0, 1] = torch.tensor([[-2.0, 0.0], [0.0, 0.0]])     # sum_c |attr| = [[4, 0], [0, 1]]
    mask = torch.tensor([[[True, False], [False, False]]])
    # a = [[1, 0], [0, 0.25]]; |a - g| = [0, 0, 0, 0.25]
    assert float(M.trigger_distance(attr, mask)[0]) == pytest.approx(0.0625)
    assert float(M.blank_distance(mask)[0]) == pytest.approx(0.25)
    # an all-zero attribution is the blank guess
    assert float(M.trigger_distance(torch.zeros(1, 3, 2, 2), mask)[0]) == pytest.approx(0.25)


def test_mask_pearson_matches_scipy_and_constant_reason():
    attr = torch.from_numpy(_maps(50, n=3, h=4, w=4))
    mask = _mask()
    mask[1, 3, 3] = True
    res = M.mask_pearson(attr.clone().index_fill_(0, torch.tensor([2]), 0.0), mask, return_reasons=True)
    ref = [ss.pearsonr(attr[i].ravel().numpy(), mask[i].ravel().double().numpy())[0] for i in range(2)]
    np.testing.assert_allclose(res.values[:2].numpy(), ref, atol=TOL)
    assert res.reasons == [None, None, "constant_map"]


def test_pointing_game_hand_worked():
    mask = torch.tensor([[[True, False], [False, False]]]).repeat(4, 1, 1)
    attr = torch.tensor([[[9.0, 1.0], [1.0, 1.0]],      # max inside: hit
                         [[1.0, 9.0], [1.0, 1.0]],      # max outside: miss
                         [[9.0, 9.0], [1.0, 1.0]],      # tie inside/outside: 1/2
                         [[2.0, 2.0], [2.0, 2.0]]])     # constant: chance = mean g
    assert M.pointing_game(attr, mask).tolist() == [1.0, 0.0, 0.5, 0.25]
    # signed reduction points at the largest signed value; abs at the largest magnitude
    signed = torch.tensor([[[1.0, -5.0], [0.0, 0.0]]])
    assert M.pointing_game(signed, mask[:1], reduce="signed").tolist() == [1.0]
    assert M.pointing_game(signed, mask[:1], reduce="abs").tolist() == [0.0]


def test_mass_accuracy_hand_worked():
    mask = torch.tensor([[[True, False], [False, True]]]).repeat(3, 1, 1)
    attr = torch.tensor([[[3.0, 1.0], [0.0, 0.0]],
                         [[-2.0, 1.0], [1.0, 2.0]],
                         [[0.0, 0.0], [0.0, 0.0]]])
    res = M.mass_accuracy(attr, mask, return_reasons=True)
    assert res.values[:2].tolist() == [0.75, pytest.approx(4 / 6)]
    assert res.reasons == [None, None, "zero_relevance"]
    pos = M.mass_accuracy(attr, mask, reduce="positive")     # positive relevance only: [0, 1, 1, 2]
    assert pos[1].item() == pytest.approx(2 / 4)
    with pytest.raises(ConfigError, match="reduce"):
        M.mass_accuracy(attr, mask, reduce="signed")


def _rank_accuracy_bruteforce(r, g):
    """Average over every tie-break order of the top-K hit fraction (independent reference)."""
    r, g = r.ravel(), g.ravel()
    k = int(g.sum())
    order = np.argsort(-r, kind="stable")
    thr = r[order[k - 1]]
    above = [i for i in range(r.size) if r[i] > thr]
    tied = [i for i in range(r.size) if r[i] == thr]
    picks = [above + list(c) for c in itertools.combinations(tied, k - len(above))]
    return np.mean([g[p].sum() / k for p in picks])


def test_rank_accuracy_hand_worked_and_ties():
    mask = torch.tensor([[[True, False], [True, False]]])
    assert M.rank_accuracy(torch.tensor([[[4.0, 3.0], [2.0, 1.0]]]), mask).tolist() == [0.5]
    assert M.rank_accuracy(torch.tensor([[[4.0, 1.0], [3.0, 1.0]]]), mask).tolist() == [1.0]
    # ties: R = [1, 1, 1, 0], mask {0, 3}: K = 2, three tied for two places -> (2/3) / 2
    tie = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    m2 = torch.tensor([[[True, False], [False, True]]])
    assert float(M.rank_accuracy(tie, m2)[0]) == pytest.approx(1 / 3)
    # many images, different mask sizes, many ties: against the brute-force reference
    rng = np.random.default_rng(51)
    attr = np.round(rng.random((6, 3, 3)) * 2) / 2
    masks = rng.random((6, 3, 3)) < 0.4
    masks[:, 0, 0], masks[:, 2, 2] = True, False
    got = M.rank_accuracy(torch.from_numpy(attr), torch.from_numpy(masks))
    ref = [_rank_accuracy_bruteforce(a, m) for a, m in zip(attr, masks)]
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_pixel_auroc_matches_sklearn(case):
    attr = _maps(52, n=5, h=8, w=8, **case)
    rng = np.random.default_rng(53)
    masks = rng.random((5, 8, 8)) < 0.2
    masks[:, 0, 0], masks[:, 7, 7] = True, False
    got = M.pixel_auroc(torch.from_numpy(attr)[:, None], torch.from_numpy(masks))
    ref = [roc_auc_score(m.ravel(), a.ravel()) for a, m in zip(attr, masks)]
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("fn", [M.trigger_distance, M.mask_pearson, M.pointing_game, M.mass_accuracy,
                                M.rank_accuracy, M.pixel_auroc])
def test_localization_rejects_empty_or_full_masks(fn):
    attr = torch.rand(3, 4, 4)
    mask = _mask()
    mask[1] = False
    with pytest.raises(ConfigError, match=r"empty in images \[1\]"):
        fn(attr, mask)
    mask = _mask()
    mask[2] = True
    with pytest.raises(ConfigError, match=r"whole image in images \[2\]"):
        fn(attr, mask)
    with pytest.raises(ConfigError, match="mask"):
        fn(attr, _mask(h=5))
    out = fn(torch.rand(3, 3, 4, 4), _mask().float())         # raw [N, C, H, W] and a 0/1 float mask
    assert out.shape == (3,)


# ---------------------------------------------------------------- statistics

def test_auroc_matches_sklearn():
    rng = np.random.default_rng(60)
    scores = rng.integers(0, 4, size=(7, 50)).astype(np.float64)       # heavy ties
    labels = rng.random((7, 50)) < 0.3
    labels[:, 0], labels[:, 1] = True, False
    got = M.auroc(torch.from_numpy(scores), torch.from_numpy(labels))
    np.testing.assert_allclose(got.numpy(), [roc_auc_score(y, s) for s, y in zip(scores, labels)], atol=1e-12)
    one = M.auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    assert one.dim() == 0 and float(one) == pytest.approx(0.75)
    with pytest.raises(ConfigError, match="single class"):
        M.auroc(torch.rand(5), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ConfigError, match="finite"):
        M.auroc(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]))


def test_bootstrap_ci_covers_true_mean_at_nominal_rate():
    g = torch.Generator().manual_seed(61)
    true_mean, n, sims = 0.3, 50, 800
    samples = true_mean + torch.randn(sims, n, generator=g, dtype=torch.float64)
    ci = M.bootstrap_ci(samples, n_boot=1000, level=0.95, generator=62)
    covered = ((ci.low <= true_mean) & (true_mean <= ci.high)).double().mean().item()
    # the percentile interval slightly under-covers at n = 50 (about 0.94); 800 simulations: SE ~ 0.008
    assert 0.92 <= covered <= 0.97, covered
    # rows with different NaN counts go through the masked resampling path
    holes = samples.clone()
    holes[::2, :10] = float("nan")
    ci_h = M.bootstrap_ci(holes, n_boot=1000, level=0.95, generator=62)
    assert ci_h.n[:2].tolist() == [n - 10, n]
    covered_h = ((ci_h.low <= true_mean) & (true_mean <= ci_h.high)).double().mean().item()
    assert 0.92 <= covered_h <= 0.97, covered_h
    # interval width matches the normal theory: 2 * 1.96 / sqrt(n)
    assert float((ci.high - ci.low).mean()) == pytest.approx(2 * 1.96 / math.sqrt(n), rel=0.05)
    np.testing.assert_allclose(ci.estimate.numpy(), samples.mean(1).numpy(), atol=1e-12)


def test_bootstrap_ci_seeded_nan_aware_and_unpacks():
    v = torch.linspace(0, 1, 41, dtype=torch.float64)
    a = M.bootstrap_ci(v, generator=5)
    b = M.bootstrap_ci(v, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.low, b.low) and torch.equal(a.high, b.high)
    assert not torch.equal(a.low, M.bootstrap_ci(v, generator=6).low)
    lo, hi = a
    assert float(lo) < 0.5 < float(hi) and float(a.estimate) == pytest.approx(0.5)
    w = torch.cat([v, torch.tensor([float("nan"), float("inf")])])
    c = M.bootstrap_ci(w, generator=5)
    assert int(c.n) == 41 and float(c.estimate) == pytest.approx(0.5)
    assert float(c.low) < 0.5 < float(c.high)
    rows = M.bootstrap_ci(torch.stack([w, torch.full_like(w, float("nan"))]), generator=5)
    assert rows.n.tolist() == [41, 0] and math.isnan(float(rows.estimate[1])) and math.isnan(float(rows.low[1]))
    assert rows[0].row()["n"] == 41 and rows[1].row()["value"] is None
    single = M.bootstrap_ci(torch.tensor([0.7]), generator=1)
    assert float(single.low) == float(single.high) == pytest.approx(0.7)
    with pytest.raises(ConfigError, match="level"):
        M.bootstrap_ci(v, level=1.5)
    with pytest.raises(ConfigError, match="generator"):
        M.bootstrap_ci(v, generator="seed")


def test_paired_bootstrap():
    g = torch.Generator().manual_seed(70)
    difficulty = torch.randn(80, generator=g, dtype=torch.float64) * 5     # shared per image
    base = difficulty
    method = difficulty + 0.2 + 0.1 * torch.randn(80, generator=g, dtype=torch.float64)
    method[3] = float("nan")
    res = M.paired_bootstrap(method, base, generator=1)
    ok = ~torch.isnan(method)
    assert int(res.n) == 79
    assert float(res.estimate) == pytest.approx(float((method[ok] - base[ok]).mean()), abs=1e-12)
    assert 0.0 < float(res.low) < 0.2 < float(res.high) < 0.3          # pairing removes the difficulty
    # unpaired, the same difference is invisible under the spread of difficulty
    unpaired_width = float(M.bootstrap_ci(method).high - M.bootstrap_ci(method).low)
    assert float(res.high - res.low) < unpaired_width / 10
    const = M.paired_bootstrap(torch.ones(10), torch.zeros(10))
    assert float(const.low) == float(const.high) == 1.0
    with pytest.raises(ConfigError, match="baseline"):
        M.paired_bootstrap(torch.ones(3), torch.ones(4))


# ---------------------------------------------------------------- registry

def test_registry_metadata():
    names = set(M.MEASURES.names())
    assert {"spearman", "pearson", "ssim", "hog_similarity", "top_k_intersection", "mean_abs_diff",
            "trigger_distance", "blank_distance", "mask_pearson", "pointing_game", "mass_accuracy",
            "rank_accuracy", "pixel_auroc", "bootstrap_ci", "paired_bootstrap", "auroc"} <= names
    for d in M.describe():
        assert {"kind", "higher_is_better", "range", "reference"} <= set(d)
        assert d["reference"]
        for r in d.get("nan_reasons", ()):
            assert r in M.REASONS
    assert M.MEASURES.meta("trigger_distance")["higher_is_better"] is False
    assert M.get("ssim") is M.ssim
    with pytest.raises(UnknownName, match="spearman"):
        M.get("spearmann")
