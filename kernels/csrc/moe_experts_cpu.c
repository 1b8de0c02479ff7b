/* Fused SwiGLU experts for few rows per expert on x86 CPUs (decoding-sized batches).
 *
 * With a handful of tokens per expert the expert GEMMs are matrix-vector products: the cost is
 * reading the weights once. BLAS small-M kernels re-read or under-use them; here every weight
 * row is streamed once, with a software prefetch of the next row (rows of 4 KiB start a new page,
 * where the hardware prefetcher stops), and multiplied against up to MB activation rows held in
 * registers.
 *
 * Layouts (fp32, row-major, contiguous):
 *   x       (S, H)     activation rows, grouped by expert
 *   offsets (E+1,)     rows of expert e are [offsets[e], offsets[e+1])
 *   w13     (E, 2I, H) gate rows [0, I), up rows [I, 2I)  (Hugging Face layout)
 *   w2      (E, H, I)  down projection
 *   scale   (S,)       routing weight of each row
 *   act     (S, I)     workspace
 *   y       (S, H)     out: y[r] = scale[r] * w2[e] @ (silu(w13[e, :I] @ x[r]) * (w13[e, I:] @ x[r]))
 * and the same for a dense SwiGLU MLP (a shared expert) over a few rows.
 */
#include <math.h>
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define MB 8 /* activation rows per register block */

int fathom_moe_cpu_simd_width(void) {
#ifdef __AVX512F__
    return 16;
#else
    return 1;
#endif
}

static inline float silu(float v) { return v / (1.0f + expf(-v)); }

/* out[m] = w . xr[m] for nm <= MB rows; w has n entries and is followed in memory by the next row. */
static inline void dot_rows(const float *w, const float *const *xr, int nm, int64_t n, float *out) {
    int m;
    int64_t k = 0;
#ifdef __AVX512F__
    __m512 acc[MB];
    for (m = 0; m < nm; ++m) acc[m] = _mm512_setzero_ps();
    for (; k + 16 <= n; k += 16) {
        _mm_prefetch((const char *)(w + n + k), _MM_HINT_T0);
        __m512 wv = _mm512_loadu_ps(w + k);
        for (m = 0; m < nm; ++m) acc[m] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xr[m] + k), acc[m]);
    }
    for (m = 0; m < nm; ++m) out[m] = _mm512_reduce_add_ps(acc[m]);
#else
    for (m = 0; m < nm; ++m) out[m] = 0.0f;
#endif
    for (; k < n; ++k)
        for (m = 0; m < nm; ++m) out[m] += w[k] * xr[m][k];
}

/* The gate and up rows of one output feature at once: both are needed for the SwiGLU. */
static inline void dot_rows2(const float *wa, const float *wb, const float *const *xr, int nm, int64_t n,
                             float *oa, float *ob) {
    int m;
    int64_t k = 0;
#ifdef __AVX512F__
    __m512 aa[MB], ab[MB];
    for (m = 0; m < nm; ++m) {
        aa[m] = _mm512_setzero_ps();
        ab[m] = _mm512_setzero_ps();
    }
    for (; k + 16 <= n; k += 16) {
        _mm_prefetch((const char *)(wa + n + k), _MM_HINT_T0);
        _mm_prefetch((const char *)(wb + n + k), _MM_HINT_T0);
        __m512 va = _mm512_loadu_ps(wa + k), vb = _mm512_loadu_ps(wb + k);
        for (m = 0; m < nm; ++m) {
            __m512 xv = _mm512_loadu_ps(xr[m] + k);
            aa[m] = _mm512_fmadd_ps(va, xv, aa[m]);
            ab[m] = _mm512_fmadd_ps(vb, xv, ab[m]);
        }
    }
    for (m = 0; m < nm; ++m) {
        oa[m] = _mm512_reduce_add_ps(aa[m]);
        ob[m] = _mm512_reduce_add_ps(ab[m]);
    }
#else
    for (m = 0; m < nm; ++m) oa[m] = ob[m] = 0.0f;
#endif
    for (; k < n; ++k)
        for (m = 0; m < nm; ++m) {
            oa[m] += wa[k] * xr[m][k];
            ob[m] += wb[k] * xr[m][k];
        }
}

/* Expert e's gate rows start at gate + e * gu_stride, its up rows at up + e * gu_stride, its down rows
   at down + e * d_stride: one routine serves the stacked routed experts (w13 / w2) and a dense MLP
   whose three projections are separate tensors (a shared expert: E = 1, strides unused). */
static void swiglu_rows(const float *x, const int64_t *offsets, int64_t E, int64_t H, int64_t I,
                        const float *gate, const float *up, int64_t gu_stride, const float *down,
                        int64_t d_stride, const float *scale, float *act, float *y, int64_t tile,
                        int64_t num_threads) {
    /* phase 1: act = silu(gate) * up; work items = (expert, tile of I output features) */
    const int64_t tiles1 = (I + tile - 1) / tile;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t item = 0; item < E * tiles1; ++item) {
        const int64_t e = item / tiles1, t = item % tiles1;
        const int64_t r0 = offsets[e], r1 = offsets[e + 1];
        if (r1 <= r0) continue;
        const float *wg = gate + e * gu_stride, *wu = up + e * gu_stride;
        const int64_t o0 = t * tile, o1 = (t + 1) * tile < I ? (t + 1) * tile : I;
        for (int64_t rb = r0; rb < r1; rb += MB) {
            const int nm = (int)(r1 - rb < MB ? r1 - rb : MB);
            const float *xr[MB];
            for (int m = 0; m < nm; ++m) xr[m] = x + (rb + m) * H;
            for (int64_t o = o0; o < o1; ++o) {
                float g[MB], u[MB];
                dot_rows2(wg + o * H, wu + o * H, xr, nm, H, g, u);
                for (int m = 0; m < nm; ++m) act[(rb + m) * I + o] = silu(g[m]) * u[m];
            }
        }
    }
    /* phase 2: y = scale * (down @ act); work items = (expert, tile of H output features) */
    const int64_t tiles2 = (H + tile - 1) / tile;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t item = 0; item < E * tiles2; ++item) {
        const int64_t e = item / tiles2, t = item % tiles2;
        const int64_t r0 = offsets[e], r1 = offsets[e + 1];
        if (r1 <= r0) continue;
        const float *wd = down + e * d_stride;
        const int64_t h0 = t * tile, h1 = (t + 1) * tile < H ? (t + 1) * tile : H;
        for (int64_t rb = r0; rb < r1; rb += MB) {
            const int nm = (int)(r1 - rb < MB ? r1 - rb : MB);
            const float *ar[MB];
            for (int m = 0; m < nm; ++m) ar[m] = act + (rb + m) * I;
            for (int64_t h = h0; h < h1; ++h) {
                float d[MB];
                dot_rows(wd + h * I, ar, nm, I, d);
                for (int m = 0; m < nm; ++m) y[(rb + m) * H + h] = (scale ? scale[rb + m] : 1.0f) * d[m];
            }
        }
    }
}

/* Routed experts: w13 (E, 2I, H) with gate rows first, w2 (E, H, I). */
void fathom_moe_experts_cpu(const float *x, const int64_t *offsets, int64_t E, int64_t H, int64_t I,
                            const float *w13, const float *w2, const float *scale, float *act, float *y,
                            int64_t tile, int64_t num_threads) {
    swiglu_rows(x, offsets, E, H, I, w13, w13 + I * H, 2 * I * H, w2, H * I, scale, act, y, tile, num_threads);
}

/* A dense SwiGLU MLP over M rows: gate (I, H), up (I, H), down (H, I); scale may be NULL. */
void fathom_swiglu_mlp_cpu(const float *x, int64_t M, int64_t H, int64_t I, const float *gate, const float *up,
                           const float *down, const float *scale, float *act, float *y, int64_t tile,
                           int64_t num_threads) {
    const int64_t offsets[2] = {0, M};
    swiglu_rows(x, offsets, 1, H, I, gate, up, 0, down, 0, scale, act, y, tile, num_threads);
}
