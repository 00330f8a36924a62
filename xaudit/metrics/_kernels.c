/* CPU kernels of xaudit.metrics: the parts of SSIM and of rank correlations that numpy can only do in
 * many memory passes. Each function works on a block of rows, releases the GIL, and is called from a
 * Python thread pool over row blocks (xaudit.metrics._base.run_blocks). Every kernel has a numpy twin
 * in xaudit/metrics (used when this extension is not built, and in the tests as a cross-check).
 *
 *   ssim(x, y, taps, out, nonfinite, n, h, w, is_f32, c1, c2)
 *       Mean SSIM of n image pairs [h, w] (float32 or float64 input, computed in float64): Gaussian-weighted
 *       moments by a separable 'valid' correlation with `taps` (float64 [k]), population covariances,
 *       mean over the (h-k+1) x (w-k+1) pixels whose window stays inside the image (what skimage averages).
 *       nonfinite (uint8 [n]) is set to 1 for a pair with a NaN or infinite value.
 *   ranks_from_keys(keys, out, b, p)
 *       Doubled average ranks (float64) of b rows from their sorted packed keys.
 *   rank_corr_keys(ka, kb, out, b, p)
 *       Spearman's rho of b row pairs from their sorted packed keys.
 *
 * A packed key (built in ranks.py) holds a float32 value's order-preserving int32 image in its high 32 bits
 * and the value's flat index (row * p + column) in its low 32 bits; each row's keys are sorted ascending,
 * so equal high words are tied values. Doubled ranks are integers, so the rank sums are exact.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* The hot loop is compiled three times on x86-64 (AVX-512, AVX2+FMA, baseline) and the variant the CPU
 * supports is picked when the module loads; elsewhere it is compiled once for the target. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define XA_X86 1
#endif
#define XA_INLINE static inline __attribute__((always_inline))

/* GCC/clang vector extensions: 8 doubles, one AVX-512 register (two AVX2 ones, four SSE2 ones). */
typedef double v8d __attribute__((vector_size(64)));
#define LANES 8

XA_INLINE v8d load8(const double *p) { v8d v; __builtin_memcpy(&v, p, sizeof v); return v; }
XA_INLINE void store8(double *p, v8d v) { __builtin_memcpy(p, &v, sizeof v); }

/* dst[j] = sum_t taps[t] * src[j + t] for j < m ('valid' correlation; m >= LANES), LANES outputs at a time
 * in a register; the last block overlaps the one before instead of a scalar tail. */
XA_INLINE void correlate_row(const double *restrict src, double *restrict dst, int m,
                             const double *restrict taps, int k) {
    for (int j = 0;; j += LANES) {
        if (j + LANES > m) j = m - LANES;
        v8d acc = taps[0] * load8(src + j);
        for (int t = 1; t < k; t++) acc += taps[t] * load8(src + j + t);
        store8(dst + j, acc);
        if (j + LANES >= m) break;
    }
}

XA_INLINE v8d ssim_term8(v8d ux, v8d uy, v8d sq, v8d xy, double c1, double c2) {
    const v8d uxuy = ux * uy, uu = ux * ux + uy * uy;
    return (2 * uxuy + c1) * (2 * (xy - uxuy) + c2) / ((uu + c1) * (sq - uu + c2));
}

/* SSIM of LANES pixels: the vertical correlation of the four horizontally filtered moment planes (s points at
 * the first of them, rows w2 apart, planes `plane` apart), then the per-pixel formula. */
XA_INLINE v8d vertical_ssim8(const double *s, int w2, size_t plane, const double *taps, int k, double c1,
                             double c2) {
    v8d a0 = taps[0] * load8(s), a1 = taps[0] * load8(s + plane);
    v8d a2 = taps[0] * load8(s + 2 * plane), a3 = taps[0] * load8(s + 3 * plane);
    for (int t = 1; t < k; t++) {
        const double wt = taps[t];
        s += w2;
        a0 += wt * load8(s);
        a1 += wt * load8(s + plane);
        a2 += wt * load8(s + 2 * plane);
        a3 += wt * load8(s + 3 * plane);
    }
    return ssim_term8(a0, a1, a2, a3, c1, c2);
}

/* One image pair. hb: scratch [4][h][w2]; mrow: scratch [4][w]. Needs w - k + 1 >= LANES. */
XA_INLINE double ssim_one_body(const void *xv, const void *yv, int is_f32, int h, int w, const double *taps,
                               int k, double c1, double c2, double *restrict hb, double *restrict mrow,
                               int *restrict nonfinite) {
    const int h2 = h - k + 1, w2 = w - k + 1;
    double *m0 = mrow, *m1 = mrow + w, *m2 = mrow + 2 * w, *m3 = mrow + 3 * w;
    double probe = 0;          /* stays 0 unless an input value is NaN or infinite (then NaN) */
    /* horizontal pass: the four moment rows x, y, x^2 + y^2, xy, each correlated along the row */
    for (int i = 0; i < h; i++) {
        if (is_f32) {
            const float *xr = (const float *)xv + (size_t)i * w, *yr = (const float *)yv + (size_t)i * w;
            for (int j = 0; j < w; j++) {
                const double a = xr[j], b = yr[j];
                m0[j] = a; m1[j] = b; m2[j] = a * a + b * b; m3[j] = a * b;
                probe += (a - a) + (b - b);
            }
        } else {
            const double *xr = (const double *)xv + (size_t)i * w, *yr = (const double *)yv + (size_t)i * w;
            for (int j = 0; j < w; j++) {
                const double a = xr[j], b = yr[j];
                m0[j] = a; m1[j] = b; m2[j] = a * a + b * b; m3[j] = a * b;
                probe += (a - a) + (b - b);
            }
        }
        for (int c = 0; c < 4; c++)
            correlate_row(mrow + (size_t)c * w, hb + ((size_t)c * h + i) * w2, w2, taps, k);
    }
    /* vertical pass, fused with the per-pixel SSIM and the sum */
    const size_t plane = (size_t)h * w2;
    v8d total8 = {0};
    double total = 0;
    for (int i = 0; i < h2; i++) {
        const double *r0 = hb + (size_t)i * w2;
        int j = 0;
        for (; j + LANES <= w2; j += LANES) total8 += vertical_ssim8(r0 + j, w2, plane, taps, k, c1, c2);
        if (j < w2) {             /* the last LANES columns, counting only the ones not yet counted */
            const int j0 = w2 - LANES;
            const v8d term = vertical_ssim8(r0 + j0, w2, plane, taps, k, c1, c2);
            for (int l = j - j0; l < LANES; l++) total += term[l];
        }
    }
    for (int l = 0; l < LANES; l++) total += total8[l];
    *nonfinite = probe != 0 || probe != probe;
    return total / ((double)h2 * (double)w2);
}

#define SSIM_ARGS const void *xv, const void *yv, int is_f32, int h, int w, const double *taps, int k, \
                  double c1, double c2, double *restrict hb, double *restrict mrow, int *restrict nonfinite
#define SSIM_CALL xv, yv, is_f32, h, w, taps, k, c1, c2, hb, mrow, nonfinite
typedef double (*ssim_fn)(SSIM_ARGS);
static double ssim_one_base(SSIM_ARGS) { return ssim_one_body(SSIM_CALL); }
#ifdef XA_X86
__attribute__((target("avx2,fma"))) static double ssim_one_avx2(SSIM_ARGS) { return ssim_one_body(SSIM_CALL); }
__attribute__((target("avx512f,avx512dq,avx2,fma")))
static double ssim_one_avx512(SSIM_ARGS) { return ssim_one_body(SSIM_CALL); }
#endif
static ssim_fn ssim_one = ssim_one_base;
static const char *ssim_variant = "baseline";

static void pick_variants(void) {
#ifdef XA_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) {
        ssim_one = ssim_one_avx512; ssim_variant = "avx512";
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        ssim_one = ssim_one_avx2; ssim_variant = "avx2";
    }
#endif
}

static PyObject *py_ssim(PyObject *self, PyObject *args) {
    Py_buffer xb, yb, tb, ob, fb;
    int n, h, w, is_f32;
    double c1, c2;
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*iiiidd", &xb, &yb, &tb, &ob, &fb, &n, &h, &w, &is_f32, &c1, &c2))
        return NULL;
    PyObject *ret = NULL;
    const int k = (int)(tb.len / (Py_ssize_t)sizeof(double));
    const Py_ssize_t item = is_f32 ? 4 : 8;
    if (n < 0 || k < 1 || h < k || w - k + 1 < LANES || xb.len != (Py_ssize_t)n * h * w * item ||
        yb.len != xb.len || ob.len != (Py_ssize_t)n * (Py_ssize_t)sizeof(double) || fb.len != (Py_ssize_t)n) {
        PyErr_SetString(PyExc_ValueError,
                        "ssim: buffer sizes do not match n, h, w, dtype and taps (or w - len(taps) + 1 < 8)");
        goto done;
    }
    double *scratch = malloc(sizeof(double) * ((size_t)4 * h * (w - k + 1) + (size_t)4 * w));
    if (!scratch) { PyErr_NoMemory(); goto done; }
    const double *taps = (const double *)tb.buf;
    double *out = (double *)ob.buf;
    unsigned char *flag = (unsigned char *)fb.buf;
    Py_BEGIN_ALLOW_THREADS
    const size_t stride = (size_t)h * w * item;
    for (int i = 0; i < n; i++) {
        int nonfinite = 0;
        out[i] = ssim_one((const char *)xb.buf + i * stride, (const char *)yb.buf + i * stride, is_f32, h, w,
                          taps, k, c1, c2, scratch, scratch + (size_t)4 * h * (w - k + 1), &nonfinite);
        flag[i] = (unsigned char)nonfinite;
    }
    Py_END_ALLOW_THREADS
    free(scratch);
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&xb); PyBuffer_Release(&yb); PyBuffer_Release(&tb); PyBuffer_Release(&ob);
    PyBuffer_Release(&fb);
    return ret;
}

/* ----------------------------------------------------------------------------------- ranks */

XA_INLINE int32_t key_value(int64_t key) { return (int32_t)(key >> 32); }
XA_INLINE int64_t key_index(int64_t key) { return key & 0xFFFFFFFFLL; }

/* Walk one sorted row of keys; for every run of equal values call BODY with the run [i, j) and its doubled
 * average rank r2 = i + j + 1 (positions i..j-1 hold ranks i+1..j). */
#define FOR_RUNS(keys, p, BODY)                                                   \
    for (int64_t i = 0; i < (p);) {                                               \
        const int32_t v = key_value((keys)[i]);                                   \
        int64_t j = i + 1;                                                        \
        while (j < (p) && key_value((keys)[j]) == v) j++;                         \
        const int64_t r2 = i + j + 1;                                             \
        BODY                                                                      \
        i = j;                                                                    \
    }

static PyObject *py_ranks_from_keys(PyObject *self, PyObject *args) {
    Py_buffer kb, ob;
    Py_ssize_t b, p;
    if (!PyArg_ParseTuple(args, "y*w*nn", &kb, &ob, &b, &p)) return NULL;
    PyObject *ret = NULL;
    if (b < 0 || p < 1 || kb.len != b * p * 8 || ob.len != b * p * 8) {
        PyErr_SetString(PyExc_ValueError, "ranks_from_keys: buffer sizes do not match b, p");
        goto done;
    }
    const int64_t *keys = (const int64_t *)kb.buf;
    double *out = (double *)ob.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t row = 0; row < b; row++) {
        const int64_t *kr = keys + row * p;
        FOR_RUNS(kr, p, {
            for (int64_t q = i; q < j; q++) out[key_index(kr[q])] = (double)r2;
        })
    }
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&kb); PyBuffer_Release(&ob);
    return ret;
}

static PyObject *py_rank_corr_keys(PyObject *self, PyObject *args) {
    Py_buffer ab, bb, ob;
    Py_ssize_t b, p;
    if (!PyArg_ParseTuple(args, "y*y*w*nn", &ab, &bb, &ob, &b, &p)) return NULL;
    PyObject *ret = NULL;
    if (b < 0 || p < 1 || ab.len != b * p * 8 || bb.len != ab.len || ob.len != b * 8) {
        PyErr_SetString(PyExc_ValueError, "rank_corr_keys: buffer sizes do not match b, p");
        goto done;
    }
    int64_t *ra = malloc(sizeof(int64_t) * (size_t)p);
    if (!ra) { PyErr_NoMemory(); goto done; }
    const int64_t *ka = (const int64_t *)ab.buf, *kb = (const int64_t *)bb.buf;
    double *out = (double *)ob.buf;
    const double c0 = (double)p * (double)(p + 1) * (double)(p + 1);   /* p * (mean doubled rank)^2 */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t row = 0; row < b; row++) {
        const int64_t *x = ka + row * p, *y = kb + row * p;
        const int64_t base = (int64_t)row * p;
        int64_t saa = 0, sbb = 0, sab = 0;       /* < p * (2p)^2 = 2.7e11 for p = 4096: exact */
        FOR_RUNS(x, p, {
            saa += (j - i) * r2 * r2;
            for (int64_t q = i; q < j; q++) ra[key_index(x[q]) - base] = r2;
        })
        FOR_RUNS(y, p, {
            sbb += (j - i) * r2 * r2;
            int64_t s = 0;
            for (int64_t q = i; q < j; q++) s += ra[key_index(y[q]) - base];
            sab += s * r2;
        })
        const double num = (double)sab - c0;
        const double den = sqrt(((double)saa - c0) * ((double)sbb - c0));
        double rho = num / den;                  /* NaN for a constant row (0 / 0): callers flag those */
        if (rho > 1.0) rho = 1.0;
        if (rho < -1.0) rho = -1.0;
        out[row] = rho;
    }
    Py_END_ALLOW_THREADS
    free(ra);
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&ab); PyBuffer_Release(&bb); PyBuffer_Release(&ob);
    return ret;
}

static PyMethodDef methods[] = {
    {"ssim", py_ssim, METH_VARARGS,
     "ssim(x, y, taps, out, nonfinite, n, h, w, is_f32, c1, c2): mean SSIM per image pair"},
    {"ranks_from_keys", py_ranks_from_keys, METH_VARARGS,
     "ranks_from_keys(keys, out, b, p): doubled average ranks (float64) from sorted packed keys"},
    {"rank_corr_keys", py_rank_corr_keys, METH_VARARGS,
     "rank_corr_keys(ka, kb, out, b, p): Spearman's rho per row pair from sorted packed keys"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "CPU kernels of xaudit.metrics (see _kernels.c)",
                                     -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) {
    pick_variants();
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddStringConstant(m, "simd", ssim_variant) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
