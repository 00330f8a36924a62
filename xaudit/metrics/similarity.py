"""Similarity between two batches of maps, one value per image.

Every function takes ``a, b`` of shape ``[N, 1, H, W]`` or ``[N, H, W]`` (same shape, same device) and
returns ``Tensor[N]`` (float64), or with ``return_reasons=True`` a :class:`MeasureResult` whose
``reasons`` say why a value is NaN (a constant map has no ranking; a non-finite input). Work is done in
row blocks of bounded size (a few MB), which keeps the intermediates in cache and memory bounded.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from xaudit.core.errors import ConfigError, check_choice, check_range
from xaudit.metrics._base import (MEASURES, as_map_batch, as_pair, chunks, code, correlation_codes, finish,
                                  is_constant, run_blocks)
from xaudit.metrics.ranks import _twice_ranks_numpy, twice_ranks

__all__ = ["spearman", "pearson", "ssim", "hog", "hog_similarity", "hog_pixels_per_cell",
           "top_k_intersection", "mean_abs_diff"]

_BLOCK = 1 << 18       # elements per map per row block for torch kernels (64 maps of 64x64)
_CPU_BLOCK = 1 << 16   # elements per map per block for the CPU (numpy) kernels: 16 maps of 64x64, in cache


def _flat_pair(a, b):
    a, b = as_pair(a, b)
    fa, fb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    finite = torch.isfinite(fa).all(dim=1) & torch.isfinite(fb).all(dim=1)
    return fa, fb, finite


def _numpy_rows(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's rows as a C-contiguous numpy array (a view when possible; no device crossing)."""
    t = t.detach()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return np.ascontiguousarray(t.numpy())


def _as_float32_if_exact(x: np.ndarray) -> np.ndarray:
    """float64 values that are all float32 numbers (maps cast up) take the fast float32 key sort."""
    if x.dtype == np.float64:
        x32 = x.astype(np.float32)
        if np.array_equal(x32, x):
            return x32
    return x


def _rank_corr_rows(fa: torch.Tensor, fb: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Spearman rho of each row pair (no checks). Exact: doubled ranks are integers, so the sums of
    products are exact in float64 and only the final division rounds."""
    n, p = fa.shape
    c0 = p * float(p + 1) ** 2            # P * (mean doubled rank)^2
    if backend == "numpy" or (backend == "auto" and fa.device.type == "cpu"):
        xa = _as_float32_if_exact(_numpy_rows(fa))
        xb = _as_float32_if_exact(_numpy_rows(fb))
        out = np.empty(n, dtype=np.float64)

        def block(sl: slice) -> None:
            ra = _twice_ranks_numpy(xa[sl], np.float64)
            rb = _twice_ranks_numpy(xb[sl], np.float64)
            sab = np.einsum("ij,ij->i", ra, rb)
            saa = np.einsum("ij,ij->i", ra, ra)
            sbb = np.einsum("ij,ij->i", rb, rb)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[sl] = (sab - c0) / np.sqrt((saa - c0) * (sbb - c0))

        run_blocks(block, n, max(1, _CPU_BLOCK // p))
        return torch.from_numpy(out).clamp(-1.0, 1.0)
    out = torch.empty(n, dtype=torch.float64, device=fa.device)
    for sl in chunks(n, p, _BLOCK):
        ra = twice_ranks(fa[sl], "torch").to(torch.float64)
        rb = twice_ranks(fb[sl], "torch").to(torch.float64)
        sab = torch.einsum("ij,ij->i", ra, rb)
        saa = torch.einsum("ij,ij->i", ra, ra)
        sbb = torch.einsum("ij,ij->i", rb, rb)
        out[sl] = (sab - c0) / torch.sqrt((saa - c0) * (sbb - c0))
    return out.clamp(-1.0, 1.0)


def _pearson_rows(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    n, p = fa.shape
    out = torch.empty(n, dtype=torch.float64, device=fa.device)
    for sl in chunks(n, p, _BLOCK):
        x = fa[sl].to(torch.float64)
        y = fb[sl].to(torch.float64)
        x = x - x.mean(dim=1, keepdim=True)
        y = y - y.mean(dim=1, keepdim=True)
        out[sl] = torch.einsum("ij,ij->i", x, y) / torch.sqrt(
            torch.einsum("ij,ij->i", x, x) * torch.einsum("ij,ij->i", y, y))
    return out.clamp(-1.0, 1.0)


@MEASURES.register("spearman", kind="similarity", higher_is_better=True, range=(-1.0, 1.0),
                   reference="scipy.stats.spearmanr (average ranks for ties); Adebayo et al. 2018",
                   nan_reasons=("constant_a", "constant_b", "constant_both", "nonfinite_input"))
def spearman(a: torch.Tensor, b: torch.Tensor, *, return_reasons: bool = False):
    """Spearman rank correlation per image, ties given their average rank (= scipy.stats.spearmanr).

    NaN where a map is constant (reason ``constant_a`` / ``constant_b`` / ``constant_both``) or has a
    non-finite value (``nonfinite_input``). Range [-1, 1]; higher means more similar.
    """
    fa, fb, finite = _flat_pair(a, b)
    codes = correlation_codes(is_constant(fa), is_constant(fb), finite)
    ok = codes == 0
    values = torch.full((fa.shape[0],), float("nan"), dtype=torch.float64, device=fa.device)
    if bool(ok.all()):
        values = _rank_corr_rows(fa, fb)
    elif bool(ok.any()):
        values[ok] = _rank_corr_rows(fa[ok], fb[ok])
    return finish(values, codes, return_reasons)


@MEASURES.register("pearson", kind="similarity", higher_is_better=True, range=(-1.0, 1.0),
                   reference="scipy.stats.pearsonr",
                   nan_reasons=("constant_a", "constant_b", "constant_both", "nonfinite_input"))
def pearson(a: torch.Tensor, b: torch.Tensor, *, return_reasons: bool = False):
    """Pearson correlation of the pixel values per image (float64; = scipy.stats.pearsonr).
    NaN for a constant or non-finite map, with its reason. Range [-1, 1]."""
    fa, fb, finite = _flat_pair(a, b)
    codes = correlation_codes(is_constant(fa), is_constant(fb), finite)
    return finish(_pearson_rows(fa, fb), codes, return_reasons)


# ---------------------------------------------------------------- SSIM

def _gaussian_taps(sigma: float, truncate: float = 3.5) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter's 1-D kernel: radius int(truncate*sigma + 0.5), normalized."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / sigma**2 * x**2)
    return torch.from_numpy(phi / phi.sum())


def _band(n: int, taps: torch.Tensor) -> torch.Tensor:
    """[n, n - 2r] matrix M with (x @ M)[j] = sum_t taps[t] * x[j + t]: a 'valid' correlation."""
    k = taps.numel()
    m = torch.zeros(n, n - k + 1, dtype=taps.dtype)
    idx = torch.arange(n - k + 1)
    for t in range(k):                      # k (=11) taps, not a loop over images
        m[idx + t, idx] = taps[t]
    return m


def _ssim_terms(ux, uy, sq, xy, c1, c2):
    """Per-pixel SSIM from the Gaussian-weighted moments (sq = E[x^2] + E[y^2], xy = E[xy])."""
    uxuy = ux * uy
    uu = ux * ux + uy * uy
    return (2 * uxuy + c1) * (2 * (xy - uxuy) + c2) / ((uu + c1) * (sq - uu + c2))


def _ssim_numpy(x: np.ndarray, y: np.ndarray, taps: torch.Tensor, c1: float, c2: float, dt) -> torch.Tensor:
    n, h, w = x.shape
    kw = _band(w, taps).numpy().astype(dt)
    kh_t = np.ascontiguousarray(_band(h, taps).numpy().T.astype(dt))
    out = np.empty(n, dtype=np.float64)

    def block(sl: slice) -> None:
        xb = x[sl].astype(dt, copy=False)
        yb = y[sl].astype(dt, copy=False)
        st = np.empty((xb.shape[0], 4, h, w), dtype=dt)
        st[:, 0] = xb
        st[:, 1] = yb
        np.multiply(xb, xb, out=st[:, 2])
        st[:, 2] += yb * yb
        np.multiply(xb, yb, out=st[:, 3])
        f = kh_t @ (st @ kw)                              # [c, 4, H', W'] Gaussian-weighted moments
        s = _ssim_terms(f[:, 0], f[:, 1], f[:, 2], f[:, 3], c1, c2)
        out[sl] = s.mean(axis=(1, 2), dtype=np.float64)

    run_blocks(block, n, max(1, _CPU_BLOCK // (h * w)))
    return torch.from_numpy(out)


def _ssim_torch(a, b, taps, c1, c2, dtype) -> torch.Tensor:
    n, h, w = a.shape
    kw = _band(w, taps).to(dtype=dtype, device=a.device)
    kh_t = _band(h, taps).t().contiguous().to(dtype=dtype, device=a.device)
    out = torch.empty(n, dtype=torch.float64, device=a.device)
    for sl in chunks(n, 4 * h * w, 4 * _BLOCK):
        x = a[sl].to(dtype)
        y = b[sl].to(dtype)
        st = torch.stack((x, y, x * x + y * y, x * y), dim=1)        # [c, 4, H, W]
        f = kh_t @ (st @ kw)                                          # Gaussian-weighted moments
        out[sl] = _ssim_terms(*f.unbind(1), c1, c2).mean(dim=(1, 2), dtype=torch.float64)
    return out


@MEASURES.register("ssim", kind="similarity", higher_is_better=True, range=(-1.0, 1.0),
                   reference="skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, "
                             "use_sample_covariance=False, data_range=...); Wang et al. 2004",
                   nan_reasons=("nonfinite_input",))
def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, dtype: torch.dtype = torch.float64,
         return_reasons: bool = False, backend: str = "auto"):
    """Mean structural similarity per image, equal to ``skimage.metrics.structural_similarity(a, b,
    gaussian_weights=True, sigma=sigma, use_sample_covariance=False, data_range=data_range, K1=k1, K2=k2)``.

    Gaussian window truncated at 3.5 sigma (11 taps for sigma 1.5), population covariances, and the mean
    taken over the pixels at least one window radius from the border (skimage crops that strip). Those
    pixels' windows never leave the image, so the border mode (skimage: 'reflect') does not matter and
    the filter is computed 'valid', as two banded matrix products.

    ``data_range``: the range of the maps' values; 1.0 for 0-1 maps (choice recorded by the caller: the
    sanity-checks code implicitly used 2.0, skimage's default for floats). ``dtype``: the computing
    precision; float64 (default) matches skimage to ~1e-15; float32 is about 2x faster and typically
    within 1e-6 but loses precision in flat regions (variance by cancellation). Range [-1, 1].
    ``backend``: "auto" (numpy blocks on CPU, torch elsewhere), "numpy" or "torch".
    """
    a, b = as_pair(a, b)
    check_range("data_range", data_range, 0.0, math.inf, lo_open=True)
    check_range("sigma", sigma, 0.0, math.inf, lo_open=True)
    check_range("k1", k1, 0.0, math.inf)
    check_range("k2", k2, 0.0, math.inf)
    check_choice("dtype", dtype, (torch.float32, torch.float64))
    check_choice("backend", backend, ("auto", "numpy", "torch"))
    n, h, w = a.shape
    taps = _gaussian_taps(sigma)
    win = taps.numel()
    if h < win or w < win:
        raise ConfigError("a", f"maps must be at least {win}x{win} pixels for sigma={sigma} "
                               f"(window of {win} taps); got {h}x{w}")
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    finite = torch.isfinite(a.reshape(n, -1)).all(1) & torch.isfinite(b.reshape(n, -1)).all(1)
    if backend == "numpy" or (backend == "auto" and a.device.type == "cpu"):
        out = _ssim_numpy(_numpy_rows(a), _numpy_rows(b), taps, c1, c2,
                          np.float64 if dtype == torch.float64 else np.float32)
    else:
        out = _ssim_torch(a, b, taps, c1, c2, dtype)
    codes = torch.where(finite, 0, code("nonfinite_input")).to(torch.int8)
    return finish(out, codes, return_reasons)


# ---------------------------------------------------------------- HOG

def hog_pixels_per_cell(h: int, w: int) -> int:
    """The cell size rule: ``max(4, min(H, W) // 8)`` pixels, i.e. about 8 cells across the smaller
    side (the sanity-checks code used 16 px on 299 px images, ~18 cells; 8 cells keep cells of >= 4 px,
    enough pixels for a 9-bin histogram, on the 32 and 64 px worlds)."""
    return max(4, min(h, w) // 8)


def hog(maps: torch.Tensor, *, orientations: int = 9, pixels_per_cell: int | None = None,
        cells_per_block: int = 3) -> torch.Tensor:
    """HOG descriptor of each map, equal to ``skimage.feature.hog(map, orientations, (c, c),
    (cells_per_block, cells_per_block), block_norm='L2-Hys', feature_vector=True)``. Returns float64
    ``[N, D]`` with D = blocks_r * blocks_c * cells_per_block^2 * orientations.

    As skimage: central-difference gradients (zero on the border rows/columns), unsigned orientation
    ``atan2(g_row, g_col)`` in degrees mod 180, hard binning into ``orientations`` bins, magnitude summed
    per cell and divided by the cell area, pixels beyond the last whole cell ignored, overlapping blocks
    normalized with L2-Hys (clip at 0.2, eps 1e-5). ``pixels_per_cell`` defaults to
    :func:`hog_pixels_per_cell`.
    """
    x = as_map_batch(maps, "maps")
    check_range("orientations", orientations, 1, 360)
    n, h, w = x.shape
    c = hog_pixels_per_cell(h, w) if pixels_per_cell is None else int(pixels_per_cell)
    check_range("pixels_per_cell", c, 1, min(h, w))
    check_range("cells_per_block", cells_per_block, 1, 64)
    ncr, ncc = h // c, w // c
    bpb = cells_per_block
    if ncr < bpb or ncc < bpb:
        raise ConfigError("pixels_per_cell", f"{h}x{w} maps hold {ncr}x{ncc} cells of {c} px, fewer than "
                                             f"cells_per_block={bpb}; use smaller cells or blocks")
    nbr, nbc = ncr - bpb + 1, ncc - bpb + 1
    dev = x.device
    edges = torch.tensor([180.0 / orientations * (i + 1) for i in range(orientations)],
                         dtype=torch.float64, device=dev)
    hh, ww = ncr * c, ncc * c
    rr = torch.arange(hh, device=dev) // c
    cc = torch.arange(ww, device=dev) // c
    cell = ((rr[:, None] * ncc + cc[None, :]) * (orientations + 1)).reshape(1, -1)   # [1, hh*ww]
    d = nbr * nbc * bpb * bpb * orientations
    out = torch.empty(n, d, dtype=torch.float64, device=dev)
    eps2 = 1e-5 ** 2
    for sl in chunks(n, 8 * h * w, _BLOCK):
        img = x[sl].to(torch.float64)
        m = img.shape[0]
        g_row = torch.zeros_like(img)
        g_col = torch.zeros_like(img)
        g_row[:, 1:-1, :] = img[:, 2:, :] - img[:, :-2, :]
        g_col[:, :, 1:-1] = img[:, :, 2:] - img[:, :, :-2]
        g_row, g_col = g_row[:, :hh, :ww], g_col[:, :hh, :ww]
        mag = torch.hypot(g_col, g_row).reshape(m, -1)
        ori = torch.remainder(torch.rad2deg(torch.atan2(g_row, g_col)), 180.0).reshape(m, -1)
        # bin i holds 180/O*i <= ori < 180/O*(i+1); ori == 180.0 after rounding falls in no bin (as skimage)
        bins = torch.bucketize(ori, edges, right=True)
        hist = torch.zeros(m, ncr * ncc * (orientations + 1), dtype=torch.float64, device=dev)
        hist.scatter_add_(1, cell + bins, mag)
        hist = hist.view(m, ncr, ncc, orientations + 1)[..., :orientations] / (c * c)
        blocks = hist.unfold(1, bpb, 1).unfold(2, bpb, 1)             # [m, nbr, nbc, O, bpb_r, bpb_c]
        blocks = blocks.permute(0, 1, 2, 4, 5, 3).reshape(m, nbr * nbc, -1)
        blocks = blocks / torch.sqrt((blocks * blocks).sum(-1, keepdim=True) + eps2)
        blocks = blocks.clamp(max=0.2)
        blocks = blocks / torch.sqrt((blocks * blocks).sum(-1, keepdim=True) + eps2)
        out[sl] = blocks.reshape(m, -1)
    return out


@MEASURES.register("hog_similarity", kind="similarity", higher_is_better=True, range=(-1.0, 1.0),
                   reference="skimage.feature.hog (9 orientations, L2-Hys) then scipy.stats.spearmanr "
                             "(sanity-checks code) or pearsonr (paper text); Adebayo et al. 2018",
                   nan_reasons=("constant_a", "constant_b", "constant_both", "nonfinite_input"))
def hog_similarity(a: torch.Tensor, b: torch.Tensor, *, correlation: str = "spearman",
                   orientations: int = 9, pixels_per_cell: int | None = None, cells_per_block: int = 3,
                   return_reasons: bool = False):
    """Correlation of the HOG descriptors (:func:`hog`) of two maps, per image.

    ``correlation``: "spearman" (what the sanity-checks code computed) or "pearson" (the paper's text).
    Meant for 0-1 maps (PROTOCOLS section 1). A constant map has an all-zero HOG vector: NaN, reason
    ``constant_a`` / ``constant_b`` / ``constant_both``.
    """
    check_choice("correlation", correlation, ("spearman", "pearson"))
    a, b = as_pair(a, b)
    n = a.shape[0]
    finite = torch.isfinite(a.reshape(n, -1)).all(1) & torch.isfinite(b.reshape(n, -1)).all(1)
    kw = dict(orientations=orientations, pixels_per_cell=pixels_per_cell, cells_per_block=cells_per_block)
    ha = hog(torch.nan_to_num(a), **kw)
    hb = hog(torch.nan_to_num(b), **kw)
    codes = correlation_codes(is_constant(ha), is_constant(hb), finite)
    ok = codes == 0
    values = torch.full((n,), float("nan"), dtype=torch.float64, device=a.device)
    corr = _rank_corr_rows if correlation == "spearman" else _pearson_rows
    if bool(ok.any()):
        values[ok] = corr(ha[ok], hb[ok])
    return finish(values, codes, return_reasons)


# ---------------------------------------------------------------- top-k, mean |a - b|

def _k_of(k: int | float, p: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise ConfigError("k", f"must be an int (pixels) or a float in (0, 1] (fraction of pixels), got {k!r}")
    if isinstance(k, float):
        check_range("k", k, 0.0, 1.0, lo_open=True)
        return max(1, int(round(k * p)))
    check_range("k", k, 1, p)
    return int(k)


def top_k_membership(flat: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """[N, P] probability that each pixel is among the k largest of its row when ties at the threshold
    are broken uniformly at random: 1 above the k-th largest value, ``need / n_tied`` on it, 0 below.
    (Deterministic and fair to ties.) ``k``: an int, or a Tensor[N] of per-row counts."""
    p = flat.shape[1]
    if isinstance(k, torch.Tensor):
        k = k.to(device=flat.device, dtype=torch.int64).reshape(-1, 1)
        # per-row k: one sort per row, then read the k-th largest
        thr = torch.sort(flat, dim=1, descending=True).values.gather(1, k - 1)
    else:
        thr = torch.kthvalue(flat, p - k + 1, dim=1, keepdim=True).values
    above = flat > thr
    tied = flat == thr
    need = k - above.sum(1, keepdim=True)
    frac = need.to(torch.float64) / tied.sum(1, keepdim=True).clamp_min(1).to(torch.float64)
    return above.to(torch.float64) + tied.to(torch.float64) * frac


@MEASURES.register("top_k_intersection", kind="similarity", higher_is_better=True, range=(0.0, 1.0),
                   reference="fraction of shared top-k pixels (Quantus TopKIntersection against a map)",
                   nan_reasons=("nonfinite_input",))
def top_k_intersection(a: torch.Tensor, b: torch.Tensor, *, k: int | float = 0.1,
                       return_reasons: bool = False):
    """Fraction of the k highest pixels of ``a`` that are also among the k highest of ``b``, per image.

    ``k``: an int is a pixel count, a float in (0, 1] a fraction of the pixels (rounded, at least 1).
    Ties at the k-th value are resolved as an expectation over uniformly random tie-breaking (see
    :func:`top_k_membership`), so the value is deterministic and does not favour low pixel indices.
    Range [0, 1]; chance level is k / P.
    """
    fa, fb, finite = _flat_pair(a, b)
    kk = _k_of(k, fa.shape[1])
    out = torch.empty(fa.shape[0], dtype=torch.float64, device=fa.device)
    for sl in chunks(fa.shape[0], fa.shape[1], _BLOCK):
        pa = top_k_membership(torch.nan_to_num(fa[sl]), kk)
        pb = top_k_membership(torch.nan_to_num(fb[sl]), kk)
        out[sl] = torch.einsum("ij,ij->i", pa, pb) / kk
    codes = torch.where(finite, 0, code("nonfinite_input")).to(torch.int8)
    return finish(out, codes, return_reasons)


@MEASURES.register("mean_abs_diff", kind="similarity", higher_is_better=False, range=(0.0, math.inf),
                   reference="mean absolute difference of the two maps",
                   nan_reasons=("nonfinite_input",))
def mean_abs_diff(a: torch.Tensor, b: torch.Tensor, *, return_reasons: bool = False):
    """Mean |a - b| over the pixels, per image (float64). Lower means more similar."""
    fa, fb, finite = _flat_pair(a, b)
    out = torch.empty(fa.shape[0], dtype=torch.float64, device=fa.device)
    for sl in chunks(fa.shape[0], fa.shape[1], _BLOCK):
        out[sl] = (fa[sl].to(torch.float64) - fb[sl].to(torch.float64)).abs().mean(1)
    codes = torch.where(finite, 0, code("nonfinite_input")).to(torch.int8)
    return finish(out, codes, return_reasons)
