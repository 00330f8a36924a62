"""Bench: compare 4,096 pairs of 64x64 maps with each similarity, xaudit (batched) vs the per-image loop
over the reference implementation (scipy / scikit-image / numpy), on 2 threads.

    .venv/bin/python bench/metrics.py [--n 4096] [--size 64] [--repeats 3]

Writes bench/results/metrics.json: per measure the best-of-repeats wall seconds of xaudit and of the
loop (timed alternately, so both see the same machine load) and their ratio (the speedup), the CPU
seconds of each (all threads; their ratio is the work saved, which other processes on a shared machine
disturb less) and the largest difference between the two results. Target (issue 5): >= 20x for
Spearman and SSIM.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy
import scipy.stats as ss
import skimage
import torch
from skimage.feature import hog as sk_hog
from skimage.metrics import structural_similarity as sk_ssim

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import xaudit.metrics as M  # noqa: E402
from xaudit.core import rng as xrng  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "metrics.json"


def make_maps(n: int, size: int, seed: int = 0):
    """Pairs of related float32 maps in [0, 1] (b = half a, half noise), and a tie-heavy copy with 80%
    of each map's pixels set to 0 (like Gradient x Input on a zero background)."""
    g = xrng.generator(seed)
    a = torch.rand(n, 1, size, size, generator=g)
    b = 0.5 * a + 0.5 * torch.rand(n, 1, size, size, generator=g)
    za, zb = a.clone(), b.clone()
    za[torch.rand(za.shape, generator=g) < 0.8] = 0
    zb[torch.rand(zb.shape, generator=g) < 0.8] = 0
    return a, b, za, zb


def timed(fn):
    """(wall seconds, CPU seconds of this process over all its threads, result)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    n, size = args.n, args.size
    a, b, za, zb = make_maps(n, size)
    an, bn = a[:, 0].numpy(), b[:, 0].numpy()
    zan, zbn = za[:, 0].numpy(), zb[:, 0].numpy()
    ppc = M.hog_pixels_per_cell(size, size)
    hog_kw = dict(orientations=9, pixels_per_cell=(ppc, ppc), cells_per_block=(3, 3), block_norm="L2-Hys")
    k = max(1, round(0.1 * size * size))

    def loop(fn, x, y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.array([fn(x[i], y[i]) for i in range(len(x))], dtype=np.float64)

    def topk_ref(x, y):
        ia = np.argpartition(-x.ravel(), k - 1)[:k]
        ib = np.argpartition(-y.ravel(), k - 1)[:k]
        return np.intersect1d(ia, ib).size / k

    cases = {
        "spearman": (lambda: M.spearman(a, b),
                     lambda: loop(lambda x, y: ss.spearmanr(x.ravel(), y.ravel())[0], an, bn),
                     "scipy.stats.spearmanr per image"),
        "spearman_numpy_only": (lambda: M.spearman(a, b, backend="numpy"),
                                lambda: loop(lambda x, y: ss.spearmanr(x.ravel(), y.ravel())[0], an, bn),
                                "as spearman, without the compiled kernels (numpy fallback)"),
        "spearman_80pct_zeros": (lambda: M.spearman(za, zb),
                                 lambda: loop(lambda x, y: ss.spearmanr(x.ravel(), y.ravel())[0], zan, zbn),
                                 "scipy.stats.spearmanr per image, 80% of pixels 0 (ties)"),
        "ssim": (lambda: M.ssim(a, b, data_range=1.0),
                 lambda: loop(lambda x, y: sk_ssim(x, y, gaussian_weights=True, sigma=1.5,
                                                   use_sample_covariance=False, data_range=1.0), an, bn),
                 "skimage.metrics.structural_similarity per image (float32 maps); xaudit in float64 "
                 "(the compiled kernel when built)"),
        "ssim_numpy_only": (lambda: M.ssim(a, b, data_range=1.0, backend="numpy"),
                            lambda: loop(lambda x, y: sk_ssim(x, y, gaussian_weights=True, sigma=1.5,
                                                              use_sample_covariance=False, data_range=1.0),
                                         an, bn),
                            "as ssim, without the compiled kernels (numpy fallback, float64)"),
        "ssim_float32": (lambda: M.ssim(a, b, data_range=1.0, dtype=torch.float32),
                         lambda: loop(lambda x, y: sk_ssim(x, y, gaussian_weights=True, sigma=1.5,
                                                           use_sample_covariance=False, data_range=1.0),
                                      an, bn),
                         "as ssim, xaudit computing in float32 (numpy path: the kernel is float64 only)"),
        "pearson": (lambda: M.pearson(a, b),
                    lambda: loop(lambda x, y: ss.pearsonr(x.ravel(), y.ravel())[0], an, bn),
                    "scipy.stats.pearsonr per image"),
        "hog_similarity": (lambda: M.hog_similarity(a, b),
                           lambda: loop(lambda x, y: ss.spearmanr(sk_hog(x, **hog_kw), sk_hog(y, **hog_kw))[0],
                                        an, bn),
                           f"skimage.feature.hog ({ppc} px cells) twice + scipy.stats.spearmanr per image"),
        "top_k_intersection": (lambda: M.top_k_intersection(a, b, k=k),
                               lambda: loop(topk_ref, an, bn),
                               f"numpy argpartition top-{k} and intersect1d per image"),
        "mean_abs_diff": (lambda: M.mean_abs_diff(a, b),
                          lambda: loop(lambda x, y: float(np.abs(x - y).mean()), an, bn),
                          "numpy per image"),
    }
    results = {}
    for name, (ours, ref, what) in cases.items():
        t_ours, t_ref, c_ours, c_ref = [], [], [], []
        reps_ref = 1 if name == "hog_similarity" else args.repeats
        for r in range(args.repeats):
            t, c, got = timed(ours)
            t_ours.append(t)
            c_ours.append(c)
            if r < reps_ref:
                t, c, expected = timed(ref)
                t_ref.append(t)
                c_ref.append(c)
        got = got.numpy()
        diff = float(np.nanmax(np.abs(got - expected))) if np.isfinite(got).any() else None
        results[name] = {"xaudit_s": round(min(t_ours), 4), "reference_s": round(min(t_ref), 4),
                         "speedup": round(min(t_ref) / min(t_ours), 1),
                         # CPU seconds (all threads): the work done, less sensitive to other processes
                         "xaudit_cpu_s": round(min(c_ours), 4), "reference_cpu_s": round(min(c_ref), 4),
                         "cpu_work_ratio": round(min(c_ref) / min(c_ours), 1),
                         "max_abs_diff": diff, "reference": what,
                         "xaudit_runs_s": [round(t, 4) for t in t_ours],
                         "reference_runs_s": [round(t, 4) for t in t_ref]}
        print(f"{name:22s} xaudit {min(t_ours):7.3f} s   loop {min(t_ref):7.3f} s   "
              f"{min(t_ref) / min(t_ours):6.1f}x wall  {min(c_ref) / min(c_ours):6.1f}x cpu   "
              f"max|diff| {diff:.1e}", flush=True)
    from xaudit.metrics import _native
    doc = {
        "bench": "metrics", "kernels": _native.kernels.simd if _native.available() else None,
        "n_pairs": n, "size": size, "threads": torch.get_num_threads(),
        "repeats": args.repeats, "target": ">= 20x for spearman and ssim on 2 cores",
        "command": f".venv/bin/python bench/metrics.py --n {n} --size {size} --repeats {args.repeats}",
        "load_average_at_end": list(os.getloadavg()),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__, "skimage": skimage.__version__},
        "cpu_count": os.cpu_count(),
        "measures": results,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
