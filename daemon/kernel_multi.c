/*
 * kernel_multi.c - the update of K profiles in one pass over the params (kernel_multi.h).
 *
 * - reference: per element, every profile through kernel_ref_lerp_*.
 * - portable:  blocks of MULTI_BLOCK params (f16/bf16 widened once into a stack buffer), then
 *              each profile's plain loop over the block while it sits in the L1 cache: the params
 *              come from memory once.
 * - avx2:      eight params a step (four doubles), loaded once, then every profile's shadow
 *              lerped, stored, and the next profile's; K is a constant in each compiled loop (one
 *              per K), so its per-profile constants stay in registers where they fit. With
 *              the health signals, 32 f32 params a turn tested from their exponent bits as
 *              kernel.c's health loop does, then every profile over the whole turn.
 *
 * The arithmetic per profile is kernel.c's to the bit. The branch of PyTorch's lerp on |w| < 0.5
 * is taken per profile: the avx2 loop computes fma(c, x - s, base) with base = x or s chosen by
 * a per-profile blend mask, which picks one operand exactly, so the sums are the single kernel's.
 *
 * The helpers both files use (bit casts, widening, the AVX2 loads) are kernel_impl.h's; the
 * portable path's per-profile loops are kernel.c's portable table's.
 */
#include "kernel_multi.h"
#include "kernel_impl.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <string.h>


/* Params per block of the portable path and of the avx2 health sums: 4 KiB of f32, in L1. */
#define MULTI_BLOCK 1024u

/* ---- Reference --------------------------------------------------------------------------- */

/* One element, x already widened, for every profile: the health bookkeeping of kernel.c's
 * health_1_f32 per profile, the finiteness of x tested once. */
static inline void ref_health_1_f32(float *const *s, unsigned k, size_t i, float x,
                                    const float *w, bool skip, struct kernel_health *h)
{
    bool finite = fabsf(x) < INFINITY;

    for (unsigned p = 0; p < k; p++) {
        float s0 = s[p][i];
        h[p].elems++;
        if (!finite) {
            h[p].nonfinite++;
            if (skip)
                continue;
        } else {
            double d = (double)x - (double)s0;
            h[p].sumsq += d * d;
        }
        s[p][i] = kernel_ref_lerp_f32(s0, x, w[p]);
        if (f32_bits(s[p][i]) != f32_bits(s0))
            h[p].changed = true;
    }
}

static inline void ref_health_1_f64(double *const *s, unsigned k, size_t i, double x,
                                    const double *w, bool skip, struct kernel_health *h)
{
    bool finite = fabs(x) < INFINITY;

    for (unsigned p = 0; p < k; p++) {
        double s0 = s[p][i];
        h[p].elems++;
        if (!finite) {
            h[p].nonfinite++;
            if (skip)
                continue;
        } else {
            long double d = (long double)x - (long double)s0;
            h[p].sumsq += (double)(d * d);
        }
        s[p][i] = kernel_ref_lerp_f64(s0, x, w[p]);
        if (f64_bits(s[p][i]) != f64_bits(s0))
            h[p].changed = true;
    }
}

static void ref_update_f32(float *const *s, unsigned k, const float *x, size_t n, const float *w)
{
    for (size_t i = 0; i < n; i++)
        for (unsigned p = 0; p < k; p++)
            s[p][i] = kernel_ref_lerp_f32(s[p][i], x[i], w[p]);
}

static void ref_update_bf16(float *const *s, unsigned k, const uint16_t *x, size_t n,
                            const float *w)
{
    for (size_t i = 0; i < n; i++) {
        float xi = kernel_ref_bf16_to_f32(x[i]);
        for (unsigned p = 0; p < k; p++)
            s[p][i] = kernel_ref_lerp_f32(s[p][i], xi, w[p]);
    }
}

static void ref_update_f16(float *const *s, unsigned k, const uint16_t *x, size_t n,
                           const float *w)
{
    for (size_t i = 0; i < n; i++) {
        float xi = kernel_ref_f16_to_f32(x[i]);
        for (unsigned p = 0; p < k; p++)
            s[p][i] = kernel_ref_lerp_f32(s[p][i], xi, w[p]);
    }
}

static void ref_update_f64(double *const *s, unsigned k, const double *x, size_t n,
                           const double *w)
{
    for (size_t i = 0; i < n; i++)
        for (unsigned p = 0; p < k; p++)
            s[p][i] = kernel_ref_lerp_f64(s[p][i], x[i], w[p]);
}

static void ref_update_f32_health(float *const *s, unsigned k, const float *x, size_t n,
                                  const float *w, bool skip, struct kernel_health *h)
{
    for (size_t i = 0; i < n; i++)
        ref_health_1_f32(s, k, i, x[i], w, skip, h);
}

static void ref_update_bf16_health(float *const *s, unsigned k, const uint16_t *x, size_t n,
                                   const float *w, bool skip, struct kernel_health *h)
{
    for (size_t i = 0; i < n; i++)
        ref_health_1_f32(s, k, i, kernel_ref_bf16_to_f32(x[i]), w, skip, h);
}

static void ref_update_f16_health(float *const *s, unsigned k, const uint16_t *x, size_t n,
                                  const float *w, bool skip, struct kernel_health *h)
{
    for (size_t i = 0; i < n; i++)
        ref_health_1_f32(s, k, i, kernel_ref_f16_to_f32(x[i]), w, skip, h);
}

static void ref_update_f64_health(double *const *s, unsigned k, const double *x, size_t n,
                                  const double *w, bool skip, struct kernel_health *h)
{
    for (size_t i = 0; i < n; i++)
        ref_health_1_f64(s, k, i, x[i], w, skip, h);
}

static const struct kernel_multi_ops multi_reference = {
    .name = "reference",
    .update_f32 = ref_update_f32,
    .update_bf16 = ref_update_bf16,
    .update_f16 = ref_update_f16,
    .update_f64 = ref_update_f64,
    .update_f32_health = ref_update_f32_health,
    .update_bf16_health = ref_update_bf16_health,
    .update_f16_health = ref_update_f16_health,
    .update_f64_health = ref_update_f64_health,
};

const struct kernel_multi_ops *kernel_multi_ops_reference(void)
{
    return &multi_reference;
}

/* ---- Portable ---------------------------------------------------------------------------- */

static void portable_update_f32(float *const *s, unsigned k, const float *x, size_t n,
                                const float *w)
{
    for (size_t i = 0; i < n; i += MULTI_BLOCK) {
        size_t len = n - i < MULTI_BLOCK ? n - i : MULTI_BLOCK;
        for (unsigned p = 0; p < k; p++)
            kernel_ops_portable()->update_f32(s[p] + i, x + i, len, w[p]);
    }
}

/* 16-bit params: each block widened once (exactly) by kernel.c's portable converters. */
static void portable_update_h16(float *const *s, unsigned k, const uint16_t *x, size_t n,
                                const float *w, bool f16)
{
    const struct kernel_ops *conv = kernel_ops_portable();
    float buf[MULTI_BLOCK];

    for (size_t i = 0; i < n; i += MULTI_BLOCK) {
        size_t len = n - i < MULTI_BLOCK ? n - i : MULTI_BLOCK;
        if (f16)
            conv->f16_to_f32(buf, x + i, len);
        else
            conv->bf16_to_f32(buf, x + i, len);
        for (unsigned p = 0; p < k; p++)
            kernel_ops_portable()->update_f32(s[p] + i, buf, len, w[p]);
    }
}

static void portable_update_bf16(float *const *s, unsigned k, const uint16_t *x, size_t n,
                                 const float *w)
{
    portable_update_h16(s, k, x, n, w, false);
}

static void portable_update_f16(float *const *s, unsigned k, const uint16_t *x, size_t n,
                                const float *w)
{
    portable_update_h16(s, k, x, n, w, true);
}

static void portable_update_f64(double *const *s, unsigned k, const double *x, size_t n,
                                const double *w)
{
    for (size_t i = 0; i < n; i += MULTI_BLOCK) {
        size_t len = n - i < MULTI_BLOCK ? n - i : MULTI_BLOCK;
        for (unsigned p = 0; p < k; p++)
            kernel_ops_portable()->update_f64(s[p] + i, x + i, len, w[p]);
    }
}

/* The health updates stay scalar here, as kernel.c's portable table keeps the reference's for
 * f32: a CPU without AVX2 is rare enough not to tune for; 16-bit params widen by blocks. */
static void portable_update_h16_health(float *const *s, unsigned k, const uint16_t *x, size_t n,
                                       const float *w, bool skip, struct kernel_health *h,
                                       bool f16)
{
    const struct kernel_ops *conv = kernel_ops_portable();
    float buf[MULTI_BLOCK];

    for (size_t i = 0; i < n; i += MULTI_BLOCK) {
        size_t len = n - i < MULTI_BLOCK ? n - i : MULTI_BLOCK;
        float *sb[KERNEL_MULTI_MAX];
        if (f16)
            conv->f16_to_f32(buf, x + i, len);
        else
            conv->bf16_to_f32(buf, x + i, len);
        for (unsigned p = 0; p < k; p++)
            sb[p] = s[p] + i;
        for (size_t j = 0; j < len; j++)
            ref_health_1_f32(sb, k, j, buf[j], w, skip, h);
    }
}

static void portable_update_bf16_health(float *const *s, unsigned k, const uint16_t *x, size_t n,
                                        const float *w, bool skip, struct kernel_health *h)
{
    portable_update_h16_health(s, k, x, n, w, skip, h, false);
}

static void portable_update_f16_health(float *const *s, unsigned k, const uint16_t *x, size_t n,
                                       const float *w, bool skip, struct kernel_health *h)
{
    portable_update_h16_health(s, k, x, n, w, skip, h, true);
}

static const struct kernel_multi_ops multi_portable = {
    .name = "portable",
    .update_f32 = portable_update_f32,
    .update_bf16 = portable_update_bf16,
    .update_f16 = portable_update_f16,
    .update_f64 = portable_update_f64,
    .update_f32_health = ref_update_f32_health,
    .update_bf16_health = portable_update_bf16_health,
    .update_f16_health = portable_update_f16_health,
    .update_f64_health = ref_update_f64_health,
};

const struct kernel_multi_ops *kernel_multi_ops_portable(void)
{
    return &multi_portable;
}

/* ---- AVX2 + FMA + F16C ------------------------------------------------------------------- */

#if KERNEL_X86

/*
 * Per profile: c = w and base = s when |w| < 0.5, else c = -(1 - w) and base = x (all-ones mask):
 * s := fma(c, x - s, base), kernel.c's two loops in one.
 */
AVX2_INLINE void avx2_profile_consts(const float *w, unsigned k, __m256 *vc, __m256 *vm)
{
    for (unsigned p = 0; p < k; p++) {
        bool from_param = !(fabsf(w[p]) < 0.5f);
        vc[p] = _mm256_set1_ps(from_param ? -(1.0f - w[p]) : w[p]);
        vm[p] = _mm256_castsi256_ps(_mm256_set1_epi32(from_param ? -1 : 0));
    }
}

AVX2_INLINE void avx2_multi_loop(float *const *sp, const unsigned K, const void *x, size_t n,
                                 const float *w, int kind)
{
    float *s[KERNEL_MULTI_MAX];
    __m256 vc[KERNEL_MULTI_MAX], vm[KERNEL_MULTI_MAX];
    size_t i = 0;

    for (unsigned p = 0; p < K; p++)
        s[p] = sp[p];
    avx2_profile_consts(w, K, vc, vm);
    for (; i + 8 <= n; i += 8) {
        __m256 vx = avx2_load_param(x, i, kind);
#pragma GCC unroll 8
        for (unsigned p = 0; p < K; p++) {
            __m256 vs = _mm256_loadu_ps(s[p] + i);
            __m256 d = _mm256_sub_ps(vx, vs);
            __m256 base = _mm256_blendv_ps(vs, vx, vm[p]);
            _mm256_storeu_ps(s[p] + i, _mm256_fmadd_ps(vc[p], d, base));
        }
    }
    for (; i < n; i++) {
        float xi = avx2_param_1(x, i, kind);
        for (unsigned p = 0; p < K; p++)
            s[p][i] = kernel_ref_lerp_f32(s[p][i], xi, w[p]);
    }
}

/* K a constant in each loop: the profile loop unrolls, its constants can live in registers. */
AVX2_INLINE void avx2_multi(float *const *s, unsigned k, const void *x, size_t n, const float *w,
                            int kind)
{
    switch (k) {
    case 1: avx2_multi_loop(s, 1, x, n, w, kind); break;
    case 2: avx2_multi_loop(s, 2, x, n, w, kind); break;
    case 3: avx2_multi_loop(s, 3, x, n, w, kind); break;
    case 4: avx2_multi_loop(s, 4, x, n, w, kind); break;
    case 5: avx2_multi_loop(s, 5, x, n, w, kind); break;
    case 6: avx2_multi_loop(s, 6, x, n, w, kind); break;
    case 7: avx2_multi_loop(s, 7, x, n, w, kind); break;
    default: avx2_multi_loop(s, 8, x, n, w, kind); break;
    }
}

AVX2_TARGET static void avx2_update_f32(float *const *s, unsigned k, const float *x, size_t n,
                                        const float *w)
{
    avx2_multi(s, k, x, n, w, PARAM_F32);
}

AVX2_TARGET static void avx2_update_bf16(float *const *s, unsigned k, const uint16_t *x,
                                         size_t n, const float *w)
{
    avx2_multi(s, k, x, n, w, PARAM_BF16);
}

AVX2_TARGET static void avx2_update_f16(float *const *s, unsigned k, const uint16_t *x, size_t n,
                                        const float *w)
{
    avx2_multi(s, k, x, n, w, PARAM_F16);
}

AVX2_INLINE void avx2_multi_f64_loop(double *const *sp, const unsigned K, const double *x,
                                     size_t n, const double *w)
{
    double *s[KERNEL_MULTI_MAX];
    __m256d vc[KERNEL_MULTI_MAX], vm[KERNEL_MULTI_MAX];
    size_t i = 0;

    for (unsigned p = 0; p < K; p++) {
        bool from_param = !(fabs(w[p]) < 0.5);
        s[p] = sp[p];
        vc[p] = _mm256_set1_pd(from_param ? -(1.0 - w[p]) : w[p]);
        vm[p] = _mm256_castsi256_pd(_mm256_set1_epi64x(from_param ? -1 : 0));
    }
    for (; i + 4 <= n; i += 4) {
        __m256d vx = _mm256_loadu_pd(x + i);
#pragma GCC unroll 8
        for (unsigned p = 0; p < K; p++) {
            __m256d vs = _mm256_loadu_pd(s[p] + i);
            __m256d d = _mm256_sub_pd(vx, vs);
            __m256d base = _mm256_blendv_pd(vs, vx, vm[p]);
            _mm256_storeu_pd(s[p] + i, _mm256_fmadd_pd(vc[p], d, base));
        }
    }
    for (; i < n; i++)
        for (unsigned p = 0; p < K; p++)
            s[p][i] = kernel_ref_lerp_f64(s[p][i], x[i], w[p]);
}

AVX2_TARGET static void avx2_update_f64(double *const *s, unsigned k, const double *x, size_t n,
                                        const double *w)
{
    switch (k) {
    case 1: avx2_multi_f64_loop(s, 1, x, n, w); break;
    case 2: avx2_multi_f64_loop(s, 2, x, n, w); break;
    case 3: avx2_multi_f64_loop(s, 3, x, n, w); break;
    case 4: avx2_multi_f64_loop(s, 4, x, n, w); break;
    case 5: avx2_multi_f64_loop(s, 5, x, n, w); break;
    case 6: avx2_multi_f64_loop(s, 6, x, n, w); break;
    case 7: avx2_multi_f64_loop(s, 7, x, n, w); break;
    default: avx2_multi_f64_loop(s, 8, x, n, w); break;
    }
}

/* Whether s[from, to) is all finite: kernel.c's test for a block whose f32 sum overflowed. */
static bool block_finite(const float *s, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        if (!(fabsf(s[i]) < INFINITY))
            return false;
    return true;
}

AVX2_INLINE double avx2_hsum_ps(__m256 v)
{
    __m256d a = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                              _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    double t[4];
    _mm256_storeu_pd(t, a);
    return (t[0] + t[1]) + (t[2] + t[3]);
}

AVX2_INLINE uint64_t avx2_hsum_u32(__m256i v)
{
    uint32_t a[8];
    uint64_t t = 0;
    _mm256_storeu_si256((__m256i *)a, v);
    for (int j = 0; j < 8; j++)
        t += a[j];
    return t;
}

/*
 * A turn of 32 finite params v[0..3] at i (the turn's test said so) for every profile: kernel.c's
 * fast step per profile, without the per-lane mask, blend and count. Profile by profile over the
 * whole turn, so that only that profile's constants and sum are live beside the params (eight
 * profiles' sums and constants at once would not fit in the sixteen registers). Whether a
 * shadow changed is compared only while `track` (some profile has not been seen to change).
 */
AVX2_INLINE void avx2_multi_fast_turn(float *const *s, const unsigned K, const __m256 *v,
                                      size_t i, const __m256 *vc, const __m256 *vm, __m256 *sq,
                                      __m256i *same, bool track)
{
#pragma GCC unroll 8
    for (unsigned p = 0; p < K; p++) {
        __m256 acc = sq[p];
        __m256i eq = same[p];
        const __m256 c = vc[p], m = vm[p];
        float *sp = s[p] + i;
#pragma GCC unroll 4
        for (unsigned j = 0; j < 4; j++) {
            __m256 vs = _mm256_loadu_ps(sp + 8 * j);
            __m256 d = _mm256_sub_ps(v[j], vs);
            __m256 r = _mm256_fmadd_ps(c, d, _mm256_blendv_ps(vs, v[j], m));
            _mm256_storeu_ps(sp + 8 * j, r);
            acc = _mm256_fmadd_ps(d, d, acc);
            if (track)
                eq = _mm256_and_si256(eq, _mm256_cmpeq_epi32(_mm256_castps_si256(r),
                                                             _mm256_castps_si256(vs)));
        }
        sq[p] = acc;
        same[p] = eq;
    }
}

/*
 * The same where some lane of vx may be NaN or infinite: its finiteness tested once per lane
 * for all profiles (nf, counted into bad), then per profile the blend that keeps the old shadow
 * where nf (skip) and the square of d only where the param is finite.
 */
AVX2_INLINE void avx2_multi_step(float *const *s, const unsigned K, __m256 vx, size_t i,
                                 const __m256 *vc, const __m256 *vm, const bool skip, __m256 *sq,
                                 __m256i *bad, __m256i *same)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 inf = _mm256_set1_ps(INFINITY);
    __asm__("" : "+x"(vx)); /* the test and every profile's step from one read of the params */
    __m256 nf = _mm256_cmp_ps(_mm256_and_ps(vx, absmask), inf, _CMP_NLT_UQ);

    *bad = _mm256_sub_epi32(*bad, _mm256_castps_si256(nf));
#pragma GCC unroll 8
    for (unsigned p = 0; p < K; p++) {
        __m256 vs = _mm256_loadu_ps(s[p] + i);
        __m256 d = _mm256_sub_ps(vx, vs);
        __m256 r = _mm256_fmadd_ps(vc[p], d, _mm256_blendv_ps(vs, vx, vm[p]));
        if (skip)
            r = _mm256_blendv_ps(r, vs, nf);
        _mm256_storeu_ps(s[p] + i, r);
        __m256 df = _mm256_andnot_ps(nf, d);
        sq[p] = _mm256_fmadd_ps(df, df, sq[p]);
        same[p] = _mm256_and_si256(same[p], _mm256_cmpeq_epi32(_mm256_castps_si256(r),
                                                               _mm256_castps_si256(vs)));
    }
}

/*
 * The health pass, each param read once for all profiles. As kernel.c's: 32 params a turn, read
 * and tested together from their exponent bits (avx2_load_32), then the fast steps when all are
 * finite (every turn, in a healthy training) and the masked ones otherwise; whether each shadow
 * changed is tracked only until every profile's has (the first block, in training). With K
 * profiles the per-lane test, blend and count of every step would cost more than the memory
 * traffic they ride on from K = 4 up (docs/performance.md "K profiles in one pass"). A block's
 * f32 sum that reached +Inf with a finite shadow counts as FLT_MAX, as in kernel.c: "huge", not
 * "poisoned".
 */
AVX2_INLINE void avx2_multi_health_loop(float *const *sp, const unsigned K, const void *x,
                                        size_t n, const float *w, const bool skip, int kind,
                                        struct kernel_health *h)
{
    const __m256 inf = _mm256_set1_ps(INFINITY);
    float *s[KERNEL_MULTI_MAX];
    __m256 vc[KERNEL_MULTI_MAX], vm[KERNEL_MULTI_MAX];
    __m256i same[KERNEL_MULTI_MAX];
    double acc[KERNEL_MULTI_MAX];
    const uint32_t all = (1u << K) - 1;
    uint32_t changed = 0;
    uint64_t bad_total = 0;
    size_t i = 0;

    for (unsigned p = 0; p < K; p++) {
        s[p] = sp[p];
        same[p] = _mm256_set1_epi32(-1);
        acc[p] = 0.0;
    }
    avx2_profile_consts(w, K, vc, vm);
    while (n - i >= 8) {
        size_t left = (n - i) & ~(size_t)7;
        size_t end = i + (left > MULTI_BLOCK ? MULTI_BLOCK : left);
        size_t start = i;
        const bool track = changed != all;
        __m256 sq[KERNEL_MULTI_MAX];
        __m256i bad = _mm256_setzero_si256();
        __m256 v[4];
        for (unsigned p = 0; p < K; p++)
            sq[p] = _mm256_setzero_ps();
        for (; i + 32 <= end; i += 32) {
            if (avx2_load_32(x, i, kind, &v[0], &v[1], &v[2], &v[3])) {
                avx2_multi_fast_turn(s, K, v, i, vc, vm, sq, same, track);
            } else {
                for (unsigned j = 0; j < 4; j++)
                    avx2_multi_step(s, K, v[j], i + 8 * j, vc, vm, skip, sq, &bad, same);
            }
        }
        for (; i < end; i += 8)
            avx2_multi_step(s, K, avx2_load_param(x, i, kind), i, vc, vm, skip, sq, &bad, same);
        for (unsigned p = 0; p < K; p++) {
            __m256 v = sq[p];
            if (_mm256_movemask_ps(_mm256_cmp_ps(v, inf, _CMP_EQ_OQ)) != 0 &&
                block_finite(s[p], start, i))
                v = _mm256_min_ps(v, _mm256_set1_ps(FLT_MAX));
            acc[p] += avx2_hsum_ps(v);
            if (_mm256_movemask_epi8(same[p]) != -1)
                changed |= 1u << p;
        }
        bad_total += avx2_hsum_u32(bad);
    }
    for (unsigned p = 0; p < K; p++) {
        h[p].elems += i;
        h[p].nonfinite += bad_total;
        h[p].sumsq += acc[p];
        if (changed & (1u << p))
            h[p].changed = true;
    }
    for (; i < n; i++)
        ref_health_1_f32(s, K, i, avx2_param_1(x, i, kind), w, skip, h);
}

AVX2_INLINE void avx2_multi_health(float *const *s, unsigned k, const void *x, size_t n,
                                   const float *w, bool skip, int kind, struct kernel_health *h)
{
#define MULTI_HEALTH_K(K)                                                                         \
    do {                                                                                          \
        if (skip)                                                                                 \
            avx2_multi_health_loop(s, K, x, n, w, true, kind, h);                                 \
        else                                                                                      \
            avx2_multi_health_loop(s, K, x, n, w, false, kind, h);                                \
    } while (0)
    switch (k) {
    case 1: MULTI_HEALTH_K(1); break;
    case 2: MULTI_HEALTH_K(2); break;
    case 3: MULTI_HEALTH_K(3); break;
    case 4: MULTI_HEALTH_K(4); break;
    case 5: MULTI_HEALTH_K(5); break;
    case 6: MULTI_HEALTH_K(6); break;
    case 7: MULTI_HEALTH_K(7); break;
    default: MULTI_HEALTH_K(8); break;
    }
#undef MULTI_HEALTH_K
}

AVX2_TARGET static void avx2_update_f32_health(float *const *s, unsigned k, const float *x,
                                               size_t n, const float *w, bool skip,
                                               struct kernel_health *h)
{
    avx2_multi_health(s, k, x, n, w, skip, PARAM_F32, h);
}

AVX2_TARGET static void avx2_update_bf16_health(float *const *s, unsigned k, const uint16_t *x,
                                                size_t n, const float *w, bool skip,
                                                struct kernel_health *h)
{
    avx2_multi_health(s, k, x, n, w, skip, PARAM_BF16, h);
}

AVX2_TARGET static void avx2_update_f16_health(float *const *s, unsigned k, const uint16_t *x,
                                               size_t n, const float *w, bool skip,
                                               struct kernel_health *h)
{
    avx2_multi_health(s, k, x, n, w, skip, PARAM_F16, h);
}

/* f64: four lanes, the squares in double from the start (no block clamp needed). */
AVX2_INLINE void avx2_multi_health_f64_loop(double *const *sp, const unsigned K, const double *x,
                                            size_t n, const double *w, const bool skip,
                                            struct kernel_health *h)
{
    const __m256d absmask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffll));
    const __m256d inf = _mm256_set1_pd(INFINITY);
    double *s[KERNEL_MULTI_MAX];
    __m256d vc[KERNEL_MULTI_MAX], vm[KERNEL_MULTI_MAX], sq[KERNEL_MULTI_MAX];
    __m256i same[KERNEL_MULTI_MAX];
    __m256i bad = _mm256_setzero_si256();
    size_t i = 0;

    for (unsigned p = 0; p < K; p++) {
        bool from_param = !(fabs(w[p]) < 0.5);
        s[p] = sp[p];
        vc[p] = _mm256_set1_pd(from_param ? -(1.0 - w[p]) : w[p]);
        vm[p] = _mm256_castsi256_pd(_mm256_set1_epi64x(from_param ? -1 : 0));
        sq[p] = _mm256_setzero_pd();
        same[p] = _mm256_set1_epi64x(-1);
    }
    for (; i + 4 <= n; i += 4) {
        __m256d vx = _mm256_loadu_pd(x + i);
        __m256d nf = _mm256_cmp_pd(_mm256_and_pd(vx, absmask), inf, _CMP_NLT_UQ);
        bad = _mm256_sub_epi64(bad, _mm256_castpd_si256(nf));
#pragma GCC unroll 8
        for (unsigned p = 0; p < K; p++) {
            __m256d vs = _mm256_loadu_pd(s[p] + i);
            __m256d d = _mm256_sub_pd(vx, vs);
            __m256d r = _mm256_fmadd_pd(vc[p], d, _mm256_blendv_pd(vs, vx, vm[p]));
            if (skip)
                r = _mm256_blendv_pd(r, vs, nf);
            _mm256_storeu_pd(s[p] + i, r);
            __m256d df = _mm256_andnot_pd(nf, d);
            sq[p] = _mm256_fmadd_pd(df, df, sq[p]);
            same[p] = _mm256_and_si256(same[p], _mm256_cmpeq_epi64(_mm256_castpd_si256(r),
                                                                   _mm256_castpd_si256(vs)));
        }
    }
    uint64_t b[4];
    _mm256_storeu_si256((__m256i *)b, bad);
    for (unsigned p = 0; p < K; p++) {
        double t[4];
        _mm256_storeu_pd(t, sq[p]);
        h[p].elems += i;
        h[p].nonfinite += b[0] + b[1] + b[2] + b[3];
        h[p].sumsq += (t[0] + t[1]) + (t[2] + t[3]);
        if (_mm256_movemask_epi8(same[p]) != -1)
            h[p].changed = true;
    }
    for (; i < n; i++)
        ref_health_1_f64(s, K, i, x[i], w, skip, h);
}

AVX2_TARGET static void avx2_update_f64_health(double *const *s, unsigned k, const double *x,
                                               size_t n, const double *w, bool skip,
                                               struct kernel_health *h)
{
#define MULTI_HEALTH_K(K)                                                                         \
    do {                                                                                          \
        if (skip)                                                                                 \
            avx2_multi_health_f64_loop(s, K, x, n, w, true, h);                                   \
        else                                                                                      \
            avx2_multi_health_f64_loop(s, K, x, n, w, false, h);                                  \
    } while (0)
    switch (k) {
    case 1: MULTI_HEALTH_K(1); break;
    case 2: MULTI_HEALTH_K(2); break;
    case 3: MULTI_HEALTH_K(3); break;
    case 4: MULTI_HEALTH_K(4); break;
    case 5: MULTI_HEALTH_K(5); break;
    case 6: MULTI_HEALTH_K(6); break;
    case 7: MULTI_HEALTH_K(7); break;
    default: MULTI_HEALTH_K(8); break;
    }
#undef MULTI_HEALTH_K
}

static const struct kernel_multi_ops multi_avx2 = {
    .name = "avx2",
    .update_f32 = avx2_update_f32,
    .update_bf16 = avx2_update_bf16,
    .update_f16 = avx2_update_f16,
    .update_f64 = avx2_update_f64,
    .update_f32_health = avx2_update_f32_health,
    .update_bf16_health = avx2_update_bf16_health,
    .update_f16_health = avx2_update_f16_health,
    .update_f64_health = avx2_update_f64_health,
};

/* kernel.c's CPU check decides: the single-profile avx2 table exists exactly when this may run. */
const struct kernel_multi_ops *kernel_multi_ops_avx2(void)
{
    return kernel_ops_avx2() != NULL ? &multi_avx2 : NULL;
}

#else /* !MULTI_X86 */

const struct kernel_multi_ops *kernel_multi_ops_avx2(void)
{
    return NULL;
}

#endif /* MULTI_X86 */

const struct kernel_multi_ops *kernel_multi_ops_best(void)
{
    const struct kernel_multi_ops *avx2 = kernel_multi_ops_avx2();
    return avx2 != NULL ? avx2 : &multi_portable;
}

/* ---- Per-tensor entry points ------------------------------------------------------------ */

static int check_args(const struct kernel_multi_ops *ops, enum dtype dt, void *const *shadow,
                      unsigned k, const void *param, size_t n, const double *smoothing)
{
    if (ops == NULL || shadow == NULL || smoothing == NULL)
        return -EINVAL;
    if (!dtype_valid(dt))
        return -EINVAL;
    if (k == 0 || k > KERNEL_MULTI_MAX)
        return -EINVAL;
    if (n > SIZE_MAX / dtype_size(dt)) /* a byte count that cannot exist */
        return -EINVAL;
    if (n == 0)
        return 0;
    if (param == NULL)
        return -EINVAL;
    for (unsigned p = 0; p < k; p++)
        if (shadow[p] == NULL)
            return -EINVAL;
    return 0;
}

/* The weights of kernel_update, per profile. */
static void weights(enum dtype dt, unsigned k, const double *smoothing, float *wf, double *wd)
{
    for (unsigned p = 0; p < k; p++) {
        if (dt == DTYPE_F64)
            wd[p] = kernel_weight_f64(smoothing[p]);
        else
            wf[p] = kernel_weight_f32(smoothing[p]);
    }
}

/* The shadows as typed pointers (a void * array is not to be read as a float * one). */
static void shadow_arrays(void *const *shadow, unsigned k, float **sf, double **sd)
{
    for (unsigned p = 0; p < k; p++) {
        sf[p] = shadow[p];
        sd[p] = shadow[p];
    }
}

/*
 * The health pass of more profiles than MULTI_GROUP goes in two groups, strip by strip: the
 * first group's pass over a strip of MULTI_STRIP elements, then the second's over the same
 * strip, whose params are then in L2. Memory still sees the params once and each shadow once,
 * but no pass streams more than five arrays, nor holds more than four profiles' constants and
 * sums in registers. Timed against the one pass of eight profiles in the same process, the two
 * groups took 0.88-0.96 of its time whatever the shadows' offsets from each other; the plain
 * pass gained or lost up to 10 % depending on those offsets, so it stays one pass
 * (docs/performance.md "K profiles in one pass"). A strip is a whole number of MULTI_BLOCKs, so
 * the health sums gather over the same blocks as one pass would. Each element gets the same
 * arithmetic either way: the shadows are bit for bit the same.
 */
#define MULTI_GROUP 4u
#define MULTI_STRIP (64u * MULTI_BLOCK)

/* One call of the table for k profiles of a float dtype; h NULL for the plain update. */
static void multi_call(const struct kernel_multi_ops *ops, enum dtype dt, float *const *sf,
                       double *const *sd, unsigned k, const void *param, size_t n,
                       const float *wf, const double *wd, bool skip, struct kernel_health *h)
{
    switch (dt) {
    case DTYPE_F32:
        if (h != NULL)
            ops->update_f32_health(sf, k, param, n, wf, skip, h);
        else
            ops->update_f32(sf, k, param, n, wf);
        return;
    case DTYPE_BF16:
        if (h != NULL)
            ops->update_bf16_health(sf, k, param, n, wf, skip, h);
        else
            ops->update_bf16(sf, k, param, n, wf);
        return;
    case DTYPE_F16:
        if (h != NULL)
            ops->update_f16_health(sf, k, param, n, wf, skip, h);
        else
            ops->update_f16(sf, k, param, n, wf);
        return;
    default: /* DTYPE_F64: the callers pass float dtypes only */
        if (h != NULL)
            ops->update_f64_health(sd, k, param, n, wd, skip, h);
        else
            ops->update_f64(sd, k, param, n, wd);
        return;
    }
}

/* The update of k profiles of a float dtype (with h: the health pass, in groups and strips when
 * k > MULTI_GROUP). */
static void multi_float(const struct kernel_multi_ops *ops, enum dtype dt, void *const *shadow,
                        unsigned k, const void *param, size_t n, const double *smoothing,
                        bool skip, struct kernel_health *h)
{
    float wf[KERNEL_MULTI_MAX], *sf[KERNEL_MULTI_MAX];
    double wd[KERNEL_MULTI_MAX], *sd[KERNEL_MULTI_MAX];
    size_t xs = dtype_size(dt), ss = dtype_size(dtype_shadow(dt));

    weights(dt, k, smoothing, wf, wd);
    if (k <= MULTI_GROUP || h == NULL) {
        shadow_arrays(shadow, k, sf, sd);
        multi_call(ops, dt, sf, sd, k, param, n, wf, wd, skip, h);
        return;
    }
    unsigned a = (k + 1) / 2;
    for (size_t i = 0; i < n; i += MULTI_STRIP) {
        size_t m = n - i < MULTI_STRIP ? n - i : MULTI_STRIP;
        void *strip[KERNEL_MULTI_MAX];
        const char *x = (const char *)param + i * xs;
        for (unsigned p = 0; p < k; p++)
            strip[p] = (char *)shadow[p] + i * ss;
        shadow_arrays(strip, k, sf, sd);
        multi_call(ops, dt, sf, sd, a, x, m, wf, wd, skip, h);
        multi_call(ops, dt, sf + a, sd + a, k - a, x, m, wf + a, wd + a, skip, h + a);
    }
}

int kernel_multi_update(const struct kernel_multi_ops *ops, enum dtype dt, void *const *shadow,
                        unsigned k, const void *param, size_t n, const double *smoothing)
{
    int err = check_args(ops, dt, shadow, k, param, n, smoothing);

    if (err < 0)
        return err;
    if (n == 0)
        return 0;
    if (dtype_is_float(dt)) {
        multi_float(ops, dt, shadow, k, param, n, smoothing, false, NULL);
        return 0;
    }
    /* Integer and bool tensors follow the weights: a copy into each. */
    for (unsigned p = 0; p < k; p++)
        kernel_copy(shadow[p], param, n * dtype_size(dt));
    return 0;
}

int kernel_multi_update_health(const struct kernel_multi_ops *ops, enum dtype dt,
                               void *const *shadow, unsigned k, const void *param, size_t n,
                               const double *smoothing, void *const *old, bool skip_nonfinite,
                               struct kernel_health *h)
{
    int err = check_args(ops, dt, shadow, k, param, n, smoothing);

    if (err < 0)
        return err;
    if (h == NULL)
        return -EINVAL;
    if (n == 0)
        return 0;
    if (old != NULL) {
        for (unsigned p = 0; p < k; p++)
            if (old[p] == NULL)
                return -EINVAL;
        /* A copy first, then the one pass: crash-exact updates are rare enough not to widen
         * every loop with k more streams. */
        for (unsigned p = 0; p < k; p++)
            kernel_copy(old[p], shadow[p], n * dtype_size(dtype_shadow(dt)));
    }
    if (dtype_is_float(dt)) {
        multi_float(ops, dt, shadow, k, param, n, smoothing, skip_nonfinite, h);
        return 0;
    }
    for (unsigned p = 0; p < k; p++)
        kernel_copy(shadow[p], param, n * dtype_size(dt));
    return 0;
}
