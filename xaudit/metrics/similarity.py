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
from xaudit.metrics._base import (MEASURES, as_map_batch, as_pair, code, correlation_codes, finish, for_blocks,
                                  row_flags, run_blocks)
from xaudit.metrics._native import kernels
from xaudit.metrics.ranks import _twice_ranks_numpy, native_ok, sorted_keys, twice_ranks

__all__ = ["spearman", "pearson", "ssim", "hog", "hog_similarity", "hog_pixels_per_cell",
           "top_k_intersection", "mean_abs_diff"]

_CPU_BLOCK = 1 << 16   # elements per map per block on the CPU: 16 maps of 64x64, in cache
_HOG_BLOCK = 1 << 18   # HOG's per-pixel-of-cell loop amortizes over bigger blocks (64 maps of 64x64)
_NATIVE_BLOCK = 1 << 18   # the C kernels work row by row: bigger blocks, fewer thread-pool tasks


def _flat_pair(a, b):
    """[N, P] views of two map batches, and per row: both finite, a constant, b constant."""
    a, b = as_pair(a, b)
    fa, fb = a.flatten(1), b.flatten(1)
    fin_a, const_a = row_flags(fa)
    fin_b, const_b = row_flags(fb)
    return fa, fb, fin_a & fin_b, const_a, const_b


def _numpy_rows(t: torch.Tensor) -> np.ndarray:
    """A tensor's rows as a C-contiguous numpy array (for a CPU tensor a view when possible)."""
    t = t.detach().cpu()
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
    if backend in ("numpy", "native") or (backend == "auto" and fa.device.type == "cpu"):
        xa = _as_float32_if_exact(_numpy_rows(fa))
        xb = _as_float32_if_exact(_numpy_rows(fb))
        out = np.empty(n, dtype=np.float64)
        if backend != "numpy" and native_ok(xa) and native_ok(xb):
            return _rank_corr_native(xa, xb)[0].to(fa.device)

        def block(sl: slice) -> None:
            ra = _twice_ranks_numpy(xa[sl], np.float64)
            rb = _twice_ranks_numpy(xb[sl], np.float64)
            sab = np.einsum("ij,ij->i", ra, rb)
            saa = np.einsum("ij,ij->i", ra, ra)
            sbb = np.einsum("ij,ij->i", rb, rb)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[sl] = (sab - c0) / np.sqrt((saa - c0) * (sbb - c0))

        run_blocks(block, n, max(1, _CPU_BLOCK // p))
        return torch.from_numpy(out).clamp(-1.0, 1.0).to(fa.device)
    out = torch.empty(n, dtype=torch.float64, device=fa.device)

    def block_t(sl: slice) -> None:
        ra = twice_ranks(fa[sl], "torch").to(torch.float64)
        rb = twice_ranks(fb[sl], "torch").to(torch.float64)
        sab = torch.einsum("ij,ij->i", ra, rb)
        saa = torch.einsum("ij,ij->i", ra, ra)
        sbb = torch.einsum("ij,ij->i", rb, rb)
        out[sl] = (sab - c0) / torch.sqrt((saa - c0) * (sbb - c0))

    for_blocks(block_t, n, p, fa.device)
    return out.clamp(-1.0, 1.0)


def _pearson_rows(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    n, p = fa.shape
    out = torch.empty(n, dtype=torch.float64, device=fa.device)

    def block(sl: slice) -> None:
        x = fa[sl].to(torch.float64)
        y = fb[sl].to(torch.float64)
        x = x - x.mean(dim=1, keepdim=True)
        y = y - y.mean(dim=1, keepdim=True)
        out[sl] = torch.einsum("ij,ij->i", x, y) / torch.sqrt(
            torch.einsum("ij,ij->i", x, x) * torch.einsum("ij,ij->i", y, y))

    for_blocks(block, n, p, fa.device)
    return out.clamp(-1.0, 1.0)


@MEASURES.register("spearman", kind="similarity", higher_is_better=True, range=(-1.0, 1.0),
                   reference="scipy.stats.spearmanr (average ranks for ties); Adebayo et al. 2018",
                   nan_reasons=("constant_a", "constant_b", "constant_both", "nonfinite_input"))
def spearman(a: torch.Tensor, b: torch.Tensor, *, return_reasons: bool = False, backend: str = "auto"):
    """Spearman rank correlation per image, ties given their average rank (= scipy.stats.spearmanr).

    NaN where a map is constant (reason ``constant_a`` / ``constant_b`` / ``constant_both``) or has a
    non-finite value (``nonfinite_input``). Range [-1, 1]; higher means more similar.
    ``backend``: "auto" (on the CPU: numpy's sort plus the compiled rank scan when built, else numpy
    only; torch elsewhere), "native", "numpy" or "torch".
    """
    check_choice("backend", backend, ("auto", "native", "numpy", "torch"))
    if backend == "native" or (backend == "auto" and a.device.type == "cpu"):
        native = _spearman_native(a, b)
        if native is not None:
            values, finite, const_a, const_b = native
            return finish(values.to(a.device), correlation_codes(const_a, const_b, finite).to(a.device),
                          return_reasons)
    fa, fb, finite, const_a, const_b = _flat_pair(a, b)
    codes = correlation_codes(const_a, const_b, finite)
    ok = codes == 0
    values = torch.full((fa.shape[0],), float("nan"), dtype=torch.float64, device=fa.device)
    if bool(ok.all()):
        values = _rank_corr_rows(fa, fb, backend)
    elif bool(ok.any()):
        values[ok] = _rank_corr_rows(fa[ok], fb[ok], backend)
    return finish(values, codes, return_reasons)


def _key_extremes(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(finite, constant) per row from its sorted packed keys: NaN and inf sort to a row's ends (negative
    ones first, positive ones last), and a row is constant when its smallest and largest values agree."""
    lo = (key[:, 0] >> 32).astype(np.int32)
    hi = (key[:, -1] >> 32).astype(np.int32)
    decode = lambda v: (v ^ ((v >> 31) & np.int32(0x7FFFFFFF))).view(np.float32)   # noqa: E731 (undo the flip)
    return np.isfinite(decode(lo)) & np.isfinite(decode(hi)), lo == hi


def _rank_corr_native(xa: np.ndarray, xb: np.ndarray, flags: bool = False):
    """Spearman's rho of the rows of float32 ``xa, xb [N, P]``: numpy sorts each row's packed keys, the
    compiled kernel scans both sorted rows once. With ``flags``, also (finite, const_a, const_b) per row,
    read off the sorted keys. Returns torch tensors: (rho,) or (rho, finite, const_a, const_b)."""
    n, p = xa.shape
    out = np.empty(n, dtype=np.float64)
    fin, ca, cb = (np.empty(n, dtype=bool) for _ in range(3))

    def block(sl: slice) -> None:
        ka, kb = sorted_keys(xa[sl]), sorted_keys(xb[sl])
        kernels.rank_corr_keys(ka, kb, out[sl], ka.shape[0], p)
        if flags:
            fa_, ca[sl] = _key_extremes(ka)
            fb_, cb[sl] = _key_extremes(kb)
            fin[sl] = fa_ & fb_

    run_blocks(block, n, max(1, _NATIVE_BLOCK // p))
    if not flags:
        return (torch.from_numpy(out),)
    return torch.from_numpy(out), torch.from_numpy(fin), torch.from_numpy(ca), torch.from_numpy(cb)


def _spearman_native(a: torch.Tensor, b: torch.Tensor):
    """(rho, finite, const_a, const_b) with the compiled rank scan, the row flags read off the sorted keys
    (no separate passes over the maps); None when the kernels cannot take these maps."""
    a, b = as_pair(a, b)
    xa = _as_float32_if_exact(_numpy_rows(a.flatten(1)))
    xb = _as_float32_if_exact(_numpy_rows(b.flatten(1)))
    if not (native_ok(xa) and native_ok(xb)) or a.shape[0] == 0:
        return None
    return _rank_corr_native(xa, xb, flags=True)


@MEASURES.register("pearson", kind="similarity", higher_is_better=True, range=(-1.0, 1.0),
                   reference="scipy.stats.pearsonr",
                   nan_reasons=("constant_a", "constant_b", "constant_both", "nonfinite_input"))
def pearson(a: torch.Tensor, b: torch.Tensor, *, return_reasons: bool = False):
    """Pearson correlation of the pixel values per image (float64; = scipy.stats.pearsonr).
    NaN for a constant or non-finite map, with its reason. Range [-1, 1]."""
    fa, fb, finite, const_a, const_b = _flat_pair(a, b)
    codes = correlation_codes(const_a, const_b, finite)
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


def _ssim_native(x: np.ndarray, y: np.ndarray, taps: torch.Tensor, c1: float, c2: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled kernel: the same valid-window moments and formula, computed in float64 in one pass
    per image (no intermediate planes in memory). Returns (values [N], finite [N] bool)."""
    n, h, w = x.shape
    if x.dtype != y.dtype or x.dtype not in (np.float32, np.float64):
        x, y = x.astype(np.float64), y.astype(np.float64)
    is_f32 = int(x.dtype == np.float32)
    t = np.ascontiguousarray(taps.numpy(), dtype=np.float64)
    out = np.empty(n, dtype=np.float64)
    bad = np.zeros(n, dtype=np.uint8)

    def block(sl: slice) -> None:
        kernels.ssim(x[sl], y[sl], t, out[sl], bad[sl], sl.stop - sl.start, h, w, is_f32, c1, c2)

    run_blocks(block, n, max(1, _NATIVE_BLOCK // (h * w)))
    return torch.from_numpy(out), torch.from_numpy(bad == 0)


def _ssim_torch(a, b, taps, c1, c2, dtype) -> torch.Tensor:
    n, h, w = a.shape
    kw = _band(w, taps).to(dtype=dtype, device=a.device)
    kh_t = _band(h, taps).t().contiguous().to(dtype=dtype, device=a.device)
    out = torch.empty(n, dtype=torch.float64, device=a.device)

    def block(sl: slice) -> None:
        x = a[sl].to(dtype)
        y = b[sl].to(dtype)
        st = torch.stack((x, y, x * x + y * y, x * y), dim=1)        # [c, 4, H, W]
        f = kh_t @ (st @ kw)                                          # Gaussian-weighted moments
        out[sl] = _ssim_terms(*f.unbind(1), c1, c2).mean(dim=(1, 2), dtype=torch.float64)

    for_blocks(block, n, 4 * h * w, a.device)
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
    precision; float64 (default) matches skimage (run in float64) to ~1e-13; float32 (numpy and torch
    backends only) loses precision in the variances, computed as E[x^2] - E[x]^2, on flat non-zero
    regions: up to 6e-6 off on 0-1 maps with 20% of the pixels at 1 (skimage's own float32 path: 1.2e-6).
    Range [-1, 1].
    ``backend``: "auto" (on the CPU the compiled kernel when built, for float64, else numpy blocks; torch
    elsewhere), "native", "numpy" or "torch".
    """
    a, b = as_pair(a, b)
    check_range("data_range", data_range, 0.0, math.inf, lo_open=True)
    check_range("sigma", sigma, 0.0, math.inf, lo_open=True)
    check_range("k1", k1, 0.0, math.inf)
    check_range("k2", k2, 0.0, math.inf)
    check_choice("dtype", dtype, (torch.float32, torch.float64))
    check_choice("backend", backend, ("auto", "native", "numpy", "torch"))
    n, h, w = a.shape
    taps = _gaussian_taps(sigma)
    win = taps.numel()
    if h < win or w < win:
        raise ConfigError("a", f"maps must be at least {win}x{win} pixels for sigma={sigma} "
                               f"(window of {win} taps); got {h}x{w}")
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    native = kernels is not None and w - win + 1 >= 8    # the kernel works on 8-column blocks
    if backend == "native" and not native:
        raise ConfigError("backend", "the compiled kernels are not available (not built, XAUDIT_NO_KERNELS "
                                     f"set, or maps narrower than {win + 7} px); use 'numpy' or 'auto'")
    use_native = backend == "native" or (backend == "auto" and a.device.type == "cpu" and native
                                         and dtype == torch.float64)
    if use_native:
        out, finite = _ssim_native(_numpy_rows(a), _numpy_rows(b), taps, c1, c2)   # finiteness checked inside
        out, finite = out.to(a.device), finite.to(a.device)
    else:
        finite = row_flags(a.flatten(1))[0] & row_flags(b.flatten(1))[0]
        if backend == "numpy" or (backend == "auto" and a.device.type == "cpu"):
            out = _ssim_numpy(_numpy_rows(a), _numpy_rows(b), taps, c1, c2,
                              np.float64 if dtype == torch.float64 else np.float32).to(a.device)
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


def _hog_cells_numpy(x: np.ndarray, orientations: int, c: int, bpb: int) -> np.ndarray:
    """skimage.feature.hog on a block of maps [m, h, w], step by step (bitwise equal to skimage)."""
    m, h, w = x.shape
    ncr, ncc = h // c, w // c
    hh, ww = ncr * c, ncc * c
    g_row = np.zeros_like(x)
    g_col = np.zeros_like(x)
    g_row[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]          # in the map's own precision, as skimage
    g_col[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    g_row = g_row[:, :hh, :ww].astype(np.float64)
    g_col = g_col[:, :hh, :ww].astype(np.float64)
    mag = np.hypot(g_col, g_row)
    deg = np.rad2deg(np.arctan2(g_row, g_col))                  # in [-180, 180]
    # skimage's orientation is deg % 180: deg + 180 (one rounding) for deg < 0, deg - 180 for deg >= 180
    ori = deg + (deg < 0) * 180.0
    # bin i holds 180/O*i <= ori < 180/O*(i+1), counted by comparisons (exactly skimage's tests);
    # ori == 180.0 (a tiny negative deg rounded up) lands in no bin, as in skimage
    bins = np.zeros(ori.shape, dtype=np.int64)
    for i in range(1, orientations + 1):
        bins += ori >= 180.0 / orientations * i
    bins[deg >= 180.0] = 0                                       # deg % 180 == deg - 180 ~ 0: bin 0

    def by_cell(a):                                              # [m*ncr*ncc, c*c], row-major within a cell
        return a.reshape(m, ncr, c, ncc, c).transpose(0, 1, 3, 2, 4).reshape(m * ncr * ncc, c * c)
    mag_c, bin_c = by_cell(mag), by_cell(bins)
    slots = orientations + 1
    total = np.zeros(mag_c.shape[0] * slots, dtype=np.float32)
    base = np.arange(mag_c.shape[0]) * slots
    for p in range(c * c):      # skimage sums a cell's magnitudes into a C float, pixel by pixel
        fi = base + bin_c[:, p]
        total[fi] = total[fi] + mag_c[:, p]                      # float64 sum, rounded to float32
    hist = (total.reshape(m, ncr, ncc, slots)[..., :orientations] / np.float32(c * c)).astype(np.float64)
    blocks = np.lib.stride_tricks.sliding_window_view(hist, (bpb, bpb), axis=(1, 2))  # [m,br,bc,O,bpb,bpb]
    blocks = np.ascontiguousarray(blocks.transpose(0, 1, 2, 4, 5, 3)).reshape(m, -1, bpb * bpb * orientations)
    eps2 = 1e-5 ** 2                                             # L2-Hys as skimage._hog_normalize_block
    blocks = blocks / np.sqrt(np.sum(blocks ** 2, axis=-1, keepdims=True) + eps2)
    blocks = np.minimum(blocks, 0.2)
    blocks = blocks / np.sqrt(np.sum(blocks ** 2, axis=-1, keepdims=True) + eps2)
    return blocks.reshape(m, -1)


def _hog_cells_torch(x: torch.Tensor, orientations: int, c: int, bpb: int) -> torch.Tensor:
    """The same steps as :func:`_hog_cells_numpy` in torch, for maps on an accelerator."""
    m, h, w = x.shape
    ncr, ncc = h // c, w // c
    hh, ww = ncr * c, ncc * c
    g_row = torch.zeros_like(x)
    g_col = torch.zeros_like(x)
    g_row[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    g_col[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    g_row = g_row[:, :hh, :ww].to(torch.float64)
    g_col = g_col[:, :hh, :ww].to(torch.float64)
    mag = torch.hypot(g_col, g_row)
    ori = torch.remainder(torch.rad2deg(torch.atan2(g_row, g_col)), 180.0)
    edges = torch.tensor([180.0 / orientations * (i + 1) for i in range(orientations)],
                         dtype=torch.float64, device=x.device)
    bins = torch.bucketize(ori, edges, right=True)

    def by_cell(a):
        return a.reshape(m, ncr, c, ncc, c).permute(0, 1, 3, 2, 4).reshape(m * ncr * ncc, c * c)
    mag_c, bin_c = by_cell(mag), by_cell(bins)
    slots = orientations + 1
    total = torch.zeros(mag_c.shape[0] * slots, dtype=torch.float32, device=x.device)
    base = torch.arange(mag_c.shape[0], device=x.device) * slots
    for p in range(c * c):
        fi = base + bin_c[:, p]
        total[fi] = (total[fi].to(torch.float64) + mag_c[:, p]).to(torch.float32)
    hist = (total.view(m, ncr, ncc, slots)[..., :orientations] / (c * c)).to(torch.float64)
    blocks = hist.unfold(1, bpb, 1).unfold(2, bpb, 1)              # [m, nbr, nbc, O, bpb, bpb]
    blocks = blocks.permute(0, 1, 2, 4, 5, 3).reshape(m, -1, bpb * bpb * orientations)
    eps2 = 1e-5 ** 2
    blocks = blocks / torch.sqrt((blocks * blocks).sum(-1, keepdim=True) + eps2)
    blocks = blocks.clamp(max=0.2)
    blocks = blocks / torch.sqrt((blocks * blocks).sum(-1, keepdim=True) + eps2)
    return blocks.reshape(m, -1)


def hog(maps: torch.Tensor, *, orientations: int = 9, pixels_per_cell: int | None = None,
        cells_per_block: int = 3) -> torch.Tensor:
    """HOG descriptor of each map, equal to ``skimage.feature.hog(map, orientations, (c, c),
    (cells_per_block, cells_per_block), block_norm='L2-Hys', feature_vector=True)``: ``[N, D]`` with
    D = blocks_r * blocks_c * cells_per_block^2 * orientations, float32 for float32 (and half) maps and
    float64 for float64 maps, as skimage returns.

    As skimage: central-difference gradients in the map's precision (zero on the border rows/columns),
    unsigned orientation ``atan2(g_row, g_col)`` in degrees mod 180, hard binning, each cell's magnitudes
    summed in float32 in pixel order and divided by the cell area, pixels beyond the last whole cell
    ignored, overlapping blocks normalized with L2-Hys (clip 0.2, eps 1e-5). On the CPU the result is
    bitwise equal to skimage's. ``pixels_per_cell`` defaults to :func:`hog_pixels_per_cell`.
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
    d = (ncr - bpb + 1) * (ncc - bpb + 1) * bpb * bpb * orientations
    if x.dtype != torch.float64:
        x = x.to(torch.float32)
    if x.device.type == "cpu":
        xn = _numpy_rows(x)
        out_np = np.empty((n, d), dtype=xn.dtype)

        def block(sl: slice) -> None:
            out_np[sl] = _hog_cells_numpy(xn[sl], orientations, c, bpb)

        run_blocks(block, n, max(1, _HOG_BLOCK // (h * w)))
        return torch.from_numpy(out_np)
    out = torch.empty(n, d, dtype=x.dtype, device=x.device)

    def block_t(sl: slice) -> None:
        out[sl] = _hog_cells_torch(x[sl], orientations, c, bpb).to(out.dtype)

    for_blocks(block_t, n, h * w, x.device)
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
    finite = row_flags(a.flatten(1))[0] & row_flags(b.flatten(1))[0]
    kw = dict(orientations=orientations, pixels_per_cell=pixels_per_cell, cells_per_block=cells_per_block)
    if not bool(finite.all()):
        a, b = torch.nan_to_num(a), torch.nan_to_num(b)
    ha = hog(a, **kw)
    hb = hog(b, **kw)
    codes = correlation_codes(row_flags(ha)[1], row_flags(hb)[1], finite)
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


def _top_k_membership_numpy(x: np.ndarray, k: int) -> np.ndarray:
    """:func:`top_k_membership` for a CPU block (numpy's introselect finds the k-th largest value)."""
    p = x.shape[1]
    thr = np.partition(x, p - k, axis=1)[:, p - k:p - k + 1]
    above = x > thr
    tied = x == thr
    need = k - np.count_nonzero(above, axis=1, keepdims=True)
    frac = need / np.maximum(np.count_nonzero(tied, axis=1, keepdims=True), 1)
    return above + tied * frac


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
    fa, fb, finite, _, _ = _flat_pair(a, b)
    kk = _k_of(k, fa.shape[1])
    out = torch.empty(fa.shape[0], dtype=torch.float64, device=fa.device)
    clean = bool(finite.all())
    if fa.device.type == "cpu":
        xa_all, xb_all = _numpy_rows(fa), _numpy_rows(fb)
        out_np = out.numpy()

        def block_np(sl: slice) -> None:
            xa, xb = xa_all[sl], xb_all[sl]
            if not clean:
                xa, xb = np.nan_to_num(xa), np.nan_to_num(xb)
            out_np[sl] = np.einsum("ij,ij->i", _top_k_membership_numpy(xa, kk),
                                   _top_k_membership_numpy(xb, kk)) / kk

        run_blocks(block_np, fa.shape[0], max(1, _CPU_BLOCK // fa.shape[1]))
    else:
        def block(sl: slice) -> None:
            xa, xb = fa[sl], fb[sl]
            if not clean:
                xa, xb = torch.nan_to_num(xa), torch.nan_to_num(xb)
            out[sl] = torch.einsum("ij,ij->i", top_k_membership(xa, kk), top_k_membership(xb, kk)) / kk

        for_blocks(block, fa.shape[0], fa.shape[1], fa.device)
    codes = torch.where(finite, 0, code("nonfinite_input")).to(torch.int8)
    return finish(out, codes, return_reasons)


@MEASURES.register("mean_abs_diff", kind="similarity", higher_is_better=False, range=(0.0, math.inf),
                   reference="mean absolute difference of the two maps",
                   nan_reasons=("nonfinite_input",))
def mean_abs_diff(a: torch.Tensor, b: torch.Tensor, *, return_reasons: bool = False):
    """Mean |a - b| over the pixels, per image (accumulated in float64). Lower means more similar."""
    a, b = as_pair(a, b)
    fa, fb = a.flatten(1), b.flatten(1)
    out = torch.empty(fa.shape[0], dtype=torch.float64, device=fa.device)

    if fa.device.type == "cpu":
        xa, xb, out_np = _numpy_rows(fa), _numpy_rows(fb), out.numpy()

        def block_np(sl: slice) -> None:
            np.mean(np.abs(xa[sl] - xb[sl]), axis=1, dtype=np.float64, out=out_np[sl])

        run_blocks(block_np, fa.shape[0], max(1, _CPU_BLOCK // fa.shape[1]))
    else:
        def block(sl: slice) -> None:
            out[sl] = (fa[sl] - fb[sl]).abs().mean(1, dtype=torch.float64)

        for_blocks(block, fa.shape[0], fa.shape[1], fa.device)
    # a NaN or inf in a map makes its mean non-finite; only those rows need the exact check
    codes = torch.zeros(out.shape, dtype=torch.int8, device=out.device)
    bad = (~torch.isfinite(out)).nonzero().flatten()
    if bad.numel():
        fin = torch.isfinite(fa[bad]).all(1) & torch.isfinite(fb[bad]).all(1)
        codes[bad] = torch.where(fin, 0, code("nonfinite_input")).to(torch.int8)
    return finish(out, codes, return_reasons)
