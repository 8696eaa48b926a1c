/*
 * kernel.c - update / swap / cast kernels: pure, vectorised.
 *
 * Three implementations of the same table (struct kernel_ops):
 * - avx2:      AVX2+FMA+F16C intrinsics, 8 floats (4 doubles) a step, scalar tail. Compiled with
 *              target attributes, so the rest of the daemon needs no -march flag; chosen at run
 *              time by CPUID.
 * - portable:  plain C for any CPU, used where AVX2/FMA/F16C are missing.
 * - reference: one element at a time, the tests' ground truth.
 *
 * No AVX-512 path: the update moves 10-12 bytes per element and is memory-bound; 256-bit FMA
 * code already runs at the memory bandwidth (docs/performance.md "This machine"), so wider vectors
 * would add a path to test for little: on the Zen 5 VM that exposes AVX-512, a 512-bit plain
 * update measured 0-3 % faster than this one from memory, and a health update with masked
 * stores (no kept buffer) no faster than this file's (docs/performance.md "Health"). AVX-512
 * CPUs run the avx2 table.
 *
 * The fused multiply-add is written explicitly (intrinsics, fmaf/fma), and the project builds
 * with -ffp-contract=off, so the compiler never fuses or splits anything behind our back: that
 * is what makes the results bit-identical to PyTorch's.
 */
#include "kernel.h"
#include "kernel_impl.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <string.h>

#if KERNEL_X86
#include <cpuid.h>
#endif

/* ---- Scalar references ------------------------------------------------------------------ */

/*
 * PyTorch's lerp (ATen/native/Lerp.h): interpolating from whichever end is nearer keeps the
 * result exact at w = 0 and w = 1 and the error small in between (pytorch PR 18871).
 */
float kernel_ref_lerp_f32(float s, float x, float w)
{
    float d = x - s;
    if (fabsf(w) < 0.5f)
        return fmaf(w, d, s);
    return fmaf(-(1.0f - w), d, x);
}

double kernel_ref_lerp_f64(double s, double x, double w)
{
    double d = x - s;
    if (fabs(w) < 0.5)
        return fma(w, d, s);
    return fma(-(1.0 - w), d, x);
}

float kernel_ref_bf16_to_f32(uint16_t h)
{
    return f32_from_bits((uint32_t)h << 16);
}

uint16_t kernel_ref_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    /* Without this the carry would turn a NaN with a small payload into inf, or 0xffffffff
     * into -0. 0x7fc0 is what c10::BFloat16's round_to_nearest_even returns for every NaN. */
    if (isnan(f))
        return 0x7fc0;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

float kernel_ref_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    int e = (h >> 10) & 0x1f;
    int m = h & 0x3ff;

    if (e == 31 && m == 0)
        return f32_from_bits(sign | 0x7f800000u);
    if (e == 31) /* NaN: quiet, payload kept (what vcvtph2ps does) */
        return f32_from_bits(sign | 0x7fc00000u | ((uint32_t)m << 13));
    double v = e == 0 ? ldexp(m, -24) : ldexp(m + 1024, e - 25);
    return (float)((h & 0x8000u) ? -v : v);
}

uint16_t kernel_ref_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);

    if (isnan(f))
        return (uint16_t)(sign | 0x7e00u | ((u >> 13) & 0x3ffu));
    double a = fabs((double)f);
    /* 65520 lies halfway between 65504 (the largest f16, odd significand) and 2^16: it and
     * everything above rounds to inf. */
    if (a >= 65520.0)
        return (uint16_t)(sign | 0x7c00u);
    if (a == 0.0)
        return sign;
    int e;
    frexp(a, &e); /* a = m * 2^e with m in [0.5, 1): the leading bit is 2^(e-1) */
    int exp = e - 1 < -14 ? -14 : e - 1;
    /* Significand in units of the last f16 place; scaling by 2^k is exact in double and rint
     * rounds half to even in the default rounding mode. */
    double q = rint(ldexp(a, 10 - exp));
    if (q >= 2048.0) { /* rounded up into the next binade */
        q /= 2.0;
        exp++;
    }
    if (q < 1024.0) /* subnormal (exp is -14) */
        return (uint16_t)(sign | (uint16_t)q);
    return (uint16_t)(sign | ((exp + 15) << 10) | ((int)q - 1024));
}

void kernel_ref_update_f32(float *restrict shadow, const float *restrict param, size_t n, float w)
{
    for (size_t i = 0; i < n; i++)
        shadow[i] = kernel_ref_lerp_f32(shadow[i], param[i], w);
}

void kernel_ref_update_bf16(float *restrict shadow, const uint16_t *restrict param, size_t n,
                            float w)
{
    for (size_t i = 0; i < n; i++)
        shadow[i] = kernel_ref_lerp_f32(shadow[i], kernel_ref_bf16_to_f32(param[i]), w);
}

void kernel_ref_update_f16(float *restrict shadow, const uint16_t *restrict param, size_t n,
                           float w)
{
    for (size_t i = 0; i < n; i++)
        shadow[i] = kernel_ref_lerp_f32(shadow[i], kernel_ref_f16_to_f32(param[i]), w);
}

void kernel_ref_update_f64(double *restrict shadow, const double *restrict param, size_t n,
                           double w)
{
    for (size_t i = 0; i < n; i++)
        shadow[i] = kernel_ref_lerp_f64(shadow[i], param[i], w);
}

/*
 * One element of a health update, x already converted to f32: what every implementation does
 * with the elements its vector loop leaves over, and the reference does with all of them.
 * Finite means |x| < inf, which a NaN fails.
 */
static inline void health_1_f32(float *restrict s, float x, float w, float *restrict old,
                                bool skip, struct kernel_health *h)
{
    float s0 = *s;

    if (old != NULL)
        *old = s0;
    h->elems++;
    if (!(fabsf(x) < INFINITY)) {
        h->nonfinite++;
        if (skip)
            return;
    } else {
        double d = (double)x - (double)s0;
        h->sumsq += d * d;
    }
    *s = kernel_ref_lerp_f32(s0, x, w);
    if (f32_bits(*s) != f32_bits(s0))
        h->changed = true;
}

static inline void health_1_f64(double *restrict s, double x, double w, double *restrict old,
                                bool skip, struct kernel_health *h)
{
    double s0 = *s;
    uint64_t a, b;

    if (old != NULL)
        *old = s0;
    h->elems++;
    if (!(fabs(x) < INFINITY)) {
        h->nonfinite++;
        if (skip)
            return;
    } else {
        long double d = (long double)x - (long double)s0;
        h->sumsq += (double)(d * d);
    }
    *s = kernel_ref_lerp_f64(s0, x, w);
    memcpy(&a, s, sizeof a);
    memcpy(&b, &s0, sizeof b);
    if (a != b)
        h->changed = true;
}

void kernel_ref_update_f32_health(float *restrict shadow, const float *restrict param, size_t n,
                                  float w, float *restrict old, bool skip,
                                  struct kernel_health *h)
{
    for (size_t i = 0; i < n; i++)
        health_1_f32(shadow + i, param[i], w, old ? old + i : NULL, skip, h);
}

void kernel_ref_update_bf16_health(float *restrict shadow, const uint16_t *restrict param,
                                   size_t n, float w, float *restrict old, bool skip,
                                   struct kernel_health *h)
{
    for (size_t i = 0; i < n; i++)
        health_1_f32(shadow + i, kernel_ref_bf16_to_f32(param[i]), w, old ? old + i : NULL, skip,
                     h);
}

void kernel_ref_update_f16_health(float *restrict shadow, const uint16_t *restrict param,
                                  size_t n, float w, float *restrict old, bool skip,
                                  struct kernel_health *h)
{
    for (size_t i = 0; i < n; i++)
        health_1_f32(shadow + i, kernel_ref_f16_to_f32(param[i]), w, old ? old + i : NULL, skip,
                     h);
}

void kernel_ref_update_f64_health(double *restrict shadow, const double *restrict param,
                                  size_t n, double w, double *restrict old, bool skip,
                                  struct kernel_health *h)
{
    for (size_t i = 0; i < n; i++)
        health_1_f64(shadow + i, param[i], w, old ? old + i : NULL, skip, h);
}

void kernel_ref_bf16_to_f32_n(float *restrict dst, const uint16_t *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = kernel_ref_bf16_to_f32(src[i]);
}

void kernel_ref_f16_to_f32_n(float *restrict dst, const uint16_t *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = kernel_ref_f16_to_f32(src[i]);
}

void kernel_ref_f32_to_bf16_n(uint16_t *restrict dst, const float *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = kernel_ref_f32_to_bf16(src[i]);
}

void kernel_ref_f32_to_f16_n(uint16_t *restrict dst, const float *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = kernel_ref_f32_to_f16(src[i]);
}

static const struct kernel_ops ops_reference = {
    .name = "reference",
    .update_f32 = kernel_ref_update_f32,
    .update_bf16 = kernel_ref_update_bf16,
    .update_f16 = kernel_ref_update_f16,
    .update_f64 = kernel_ref_update_f64,
    .update_f32_health = kernel_ref_update_f32_health,
    .update_bf16_health = kernel_ref_update_bf16_health,
    .update_f16_health = kernel_ref_update_f16_health,
    .update_f64_health = kernel_ref_update_f64_health,
    .bf16_to_f32 = kernel_ref_bf16_to_f32_n,
    .f16_to_f32 = kernel_ref_f16_to_f32_n,
    .f32_to_bf16 = kernel_ref_f32_to_bf16_n,
    .f32_to_f16 = kernel_ref_f32_to_f16_n,
};

const struct kernel_ops *kernel_ops_reference(void)
{
    return &ops_reference;
}

/* ---- Portable implementation ------------------------------------------------------------ */

/*
 * The w test is hoisted out of every loop: lerp from the shadow with coefficient w, or from the
 * parameter with -(1 - w). Without FMA hardware fmaf is libm's exact software version: slow, but
 * this path only runs on CPUs older than 2013.
 */
static void portable_update_f32(float *restrict s, const float *restrict x, size_t n, float w)
{
    if (fabsf(w) < 0.5f) {
        for (size_t i = 0; i < n; i++)
            s[i] = fmaf(w, x[i] - s[i], s[i]);
    } else {
        const float c = -(1.0f - w);
        for (size_t i = 0; i < n; i++)
            s[i] = fmaf(c, x[i] - s[i], x[i]);
    }
}

static void portable_update_f64(double *restrict s, const double *restrict x, size_t n, double w)
{
    if (fabs(w) < 0.5) {
        for (size_t i = 0; i < n; i++)
            s[i] = fma(w, x[i] - s[i], s[i]);
    } else {
        const double c = -(1.0 - w);
        for (size_t i = 0; i < n; i++)
            s[i] = fma(c, x[i] - s[i], x[i]);
    }
}


static inline uint16_t portable_f32_to_bf16_1(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t rne = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return (u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0 : rne;
}

/* f16 -> f32 by moving fields: rebias normals, renormalise subnormals, quiet NaNs (as F16C). */
static inline float portable_f16_to_f32_1(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;

    if (e == 0x1f) /* inf, or NaN made quiet */
        return f32_from_bits(sign | 0x7f800000u | (m << 13) | (m ? 0x00400000u : 0));
    if (e != 0) /* normal: exponent bias 15 -> 127 */
        return f32_from_bits(sign | ((e + 112) << 23) | (m << 13));
    if (m == 0)
        return f32_from_bits(sign);
    /* Subnormal m * 2^-24 with leading bit p: normal in f32 as 2^(p-24) * 1.rest. */
    uint32_t p = 31 - (uint32_t)__builtin_clz(m);
    return f32_from_bits(sign | ((p + 103) << 23) | ((m << (23 - p)) & 0x7fffffu));
}

/* f32 -> f16 with round-to-nearest-even on the bits, matching vcvtps2ph bit for bit. */
static inline uint16_t portable_f32_to_f16_1(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;

    if (a > 0x7f800000u) /* NaN: quiet, top of the payload kept */
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x47800000u) /* >= 2^16, inf included */
        return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) {
        /* Normal f16 (>= 2^-14): rebias the exponent by 127 - 15, then round away the low 13
         * bits; a carry out of the significand moves into the exponent, which is right, and
         * turns [65520, 2^16) into inf. */
        uint32_t r = a - 0x38000000u;
        r += 0x0fffu + ((r >> 13) & 1u);
        return (uint16_t)(sign | (r >> 13));
    }
    if (a <= 0x33000000u) /* <= 2^-25, half the smallest subnormal: ties to 0 */
        return sign;
    /* Subnormal f16: the value in units of 2^-24 is the 24-bit significand shifted right by
     * 126 - e, which is 14..24 here; round the shifted-out bits to nearest even. */
    uint32_t e = a >> 23;
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;
    uint32_t q = m >> shift;
    uint32_t rest = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    q += rest > half || (rest == half && (q & 1u));
    return (uint16_t)(sign | q); /* q == 0x400 is the smallest normal: encoded right */
}

static void portable_update_bf16(float *restrict s, const uint16_t *restrict x, size_t n, float w)
{
    if (fabsf(w) < 0.5f) {
        for (size_t i = 0; i < n; i++)
            s[i] = fmaf(w, portable_bf16_to_f32_1(x[i]) - s[i], s[i]);
    } else {
        const float c = -(1.0f - w);
        for (size_t i = 0; i < n; i++) {
            float xi = portable_bf16_to_f32_1(x[i]);
            s[i] = fmaf(c, xi - s[i], xi);
        }
    }
}

static void portable_update_f16(float *restrict s, const uint16_t *restrict x, size_t n, float w)
{
    if (fabsf(w) < 0.5f) {
        for (size_t i = 0; i < n; i++)
            s[i] = fmaf(w, portable_f16_to_f32_1(x[i]) - s[i], s[i]);
    } else {
        const float c = -(1.0f - w);
        for (size_t i = 0; i < n; i++) {
            float xi = portable_f16_to_f32_1(x[i]);
            s[i] = fmaf(c, xi - s[i], xi);
        }
    }
}

static void portable_bf16_to_f32(float *restrict dst, const uint16_t *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = portable_bf16_to_f32_1(src[i]);
}

static void portable_f16_to_f32(float *restrict dst, const uint16_t *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = portable_f16_to_f32_1(src[i]);
}

static void portable_f32_to_bf16(uint16_t *restrict dst, const float *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = portable_f32_to_bf16_1(src[i]);
}

static void portable_f32_to_f16(uint16_t *restrict dst, const float *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = portable_f32_to_f16_1(src[i]);
}

/* The health updates of the portable table: the scalar loop of the reference with the fast
 * conversions (a CPU without AVX2 is rare enough that this path is not tuned further). */
static void portable_update_bf16_health(float *restrict s, const uint16_t *restrict x, size_t n,
                                        float w, float *restrict old, bool skip,
                                        struct kernel_health *h)
{
    for (size_t i = 0; i < n; i++)
        health_1_f32(s + i, portable_bf16_to_f32_1(x[i]), w, old ? old + i : NULL, skip, h);
}

static void portable_update_f16_health(float *restrict s, const uint16_t *restrict x, size_t n,
                                       float w, float *restrict old, bool skip,
                                       struct kernel_health *h)
{
    for (size_t i = 0; i < n; i++)
        health_1_f32(s + i, portable_f16_to_f32_1(x[i]), w, old ? old + i : NULL, skip, h);
}

static const struct kernel_ops ops_portable = {
    .name = "portable",
    .update_f32 = portable_update_f32,
    .update_bf16 = portable_update_bf16,
    .update_f16 = portable_update_f16,
    .update_f64 = portable_update_f64,
    .update_f32_health = kernel_ref_update_f32_health,
    .update_bf16_health = portable_update_bf16_health,
    .update_f16_health = portable_update_f16_health,
    .update_f64_health = kernel_ref_update_f64_health,
    .bf16_to_f32 = portable_bf16_to_f32,
    .f16_to_f32 = portable_f16_to_f32,
    .f32_to_bf16 = portable_f32_to_bf16,
    .f32_to_f16 = portable_f32_to_f16,
};

const struct kernel_ops *kernel_ops_portable(void)
{
    return &ops_portable;
}

/* ---- AVX2 + FMA + F16C implementation --------------------------------------------------- */

#if KERNEL_X86


/*
 * CPUID.1:ECX has FMA, AVX, F16C and OSXSAVE; XGETBV says whether the OS saves the YMM
 * registers on context switches; CPUID.7.0:EBX has AVX2. Done by hand rather than with
 * __builtin_cpu_supports, which clang 14 does not know "f16c" for.
 */
static bool cpu_has_avx2_fma_f16c(void)
{
    unsigned a, b, c, d;
    const unsigned need1 = bit_FMA | bit_OSXSAVE | bit_AVX | bit_F16C;

    if (!__get_cpuid(1, &a, &b, &c, &d) || (c & need1) != need1)
        return false;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    (void)xcr0_hi;
    if ((xcr0_lo & 0x6u) != 0x6u) /* XMM and YMM state */
        return false;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return false;
    return (b & bit_AVX2) != 0;
}


/*
 * The update loops. from_param is a constant after inlining, so each caller gets two loops with
 * the branch on w outside them: s + c*(x - s) when |w| < 0.5, else x + c*(x - s) with c = -(1 - w).
 * Memory-bound: one step of 8 is enough, the loads are unaligned-tolerant and cost the same as
 * aligned ones on data that happens to be aligned.
 */
AVX2_INLINE void avx2_update_f32_loop(float *restrict s, const float *restrict x, size_t n, float c,
                                      bool from_param, float *restrict u, bool save)
{
    const __m256 vc = _mm256_set1_ps(c);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 vs = _mm256_loadu_ps(s + i);
        __m256 vx = _mm256_loadu_ps(x + i);
        __m256 d = _mm256_sub_ps(vx, vs);
        if (save)
            _mm256_storeu_ps(u + i, vs);
        _mm256_storeu_ps(s + i, _mm256_fmadd_ps(vc, d, from_param ? vx : vs));
    }
    for (; i < n; i++) {
        if (save)
            u[i] = s[i];
        s[i] = fmaf(c, x[i] - s[i], from_param ? x[i] : s[i]);
    }
}

AVX2_TARGET static void avx2_update_f32(float *restrict s, const float *restrict x, size_t n,
                                        float w)
{
    if (fabsf(w) < 0.5f)
        avx2_update_f32_loop(s, x, n, w, false, NULL, false);
    else
        avx2_update_f32_loop(s, x, n, -(1.0f - w), true, NULL, false);
}

AVX2_TARGET static void avx2_update_f32_save(float *restrict s, const float *restrict x, size_t n,
                                             float w, float *restrict u)
{
    if (fabsf(w) < 0.5f)
        avx2_update_f32_loop(s, x, n, w, false, u, true);
    else
        avx2_update_f32_loop(s, x, n, -(1.0f - w), true, u, true);
}

/* bf16 and f16 params differ only in how they widen: f16 is a constant after inlining. */
AVX2_INLINE void avx2_update_h16_loop(float *restrict s, const uint16_t *restrict x, size_t n,
                                      float c, bool from_param, float *restrict u, bool save,
                                      bool f16)
{
    const __m256 vc = _mm256_set1_ps(c);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 vs = _mm256_loadu_ps(s + i);
        __m256 vx = f16 ? avx2_load_f16(x + i) : avx2_load_bf16(x + i);
        __m256 d = _mm256_sub_ps(vx, vs);
        if (save)
            _mm256_storeu_ps(u + i, vs);
        _mm256_storeu_ps(s + i, _mm256_fmadd_ps(vc, d, from_param ? vx : vs));
    }
    for (; i < n; i++) {
        float xi = f16 ? avx2_f16_to_f32_1(x[i]) : portable_bf16_to_f32_1(x[i]);
        if (save)
            u[i] = s[i];
        s[i] = fmaf(c, xi - s[i], from_param ? xi : s[i]);
    }
}

/* The w test outside the loop, as for f32. */
AVX2_INLINE void avx2_update_h16(float *restrict s, const uint16_t *restrict x, size_t n, float w,
                                 float *restrict u, bool save, bool f16)
{
    if (fabsf(w) < 0.5f)
        avx2_update_h16_loop(s, x, n, w, false, u, save, f16);
    else
        avx2_update_h16_loop(s, x, n, -(1.0f - w), true, u, save, f16);
}

AVX2_TARGET static void avx2_update_bf16(float *restrict s, const uint16_t *restrict x, size_t n,
                                         float w)
{
    avx2_update_h16(s, x, n, w, NULL, false, false);
}

AVX2_TARGET static void avx2_update_bf16_save(float *restrict s, const uint16_t *restrict x,
                                              size_t n, float w, float *restrict u)
{
    avx2_update_h16(s, x, n, w, u, true, false);
}

AVX2_TARGET static void avx2_update_f16(float *restrict s, const uint16_t *restrict x, size_t n,
                                        float w)
{
    avx2_update_h16(s, x, n, w, NULL, false, true);
}

AVX2_TARGET static void avx2_update_f16_save(float *restrict s, const uint16_t *restrict x,
                                             size_t n, float w, float *restrict u)
{
    avx2_update_h16(s, x, n, w, u, true, true);
}

AVX2_INLINE void avx2_update_f64_loop(double *restrict s, const double *restrict x, size_t n,
                                      double c, bool from_param, double *restrict u, bool save)
{
    const __m256d vc = _mm256_set1_pd(c);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m256d vs = _mm256_loadu_pd(s + i);
        __m256d vx = _mm256_loadu_pd(x + i);
        __m256d d = _mm256_sub_pd(vx, vs);
        if (save)
            _mm256_storeu_pd(u + i, vs);
        _mm256_storeu_pd(s + i, _mm256_fmadd_pd(vc, d, from_param ? vx : vs));
    }
    for (; i < n; i++) {
        if (save)
            u[i] = s[i];
        s[i] = fma(c, x[i] - s[i], from_param ? x[i] : s[i]);
    }
}

AVX2_TARGET static void avx2_update_f64(double *restrict s, const double *restrict x, size_t n,
                                        double w)
{
    if (fabs(w) < 0.5)
        avx2_update_f64_loop(s, x, n, w, false, NULL, false);
    else
        avx2_update_f64_loop(s, x, n, -(1.0 - w), true, NULL, false);
}

AVX2_TARGET static void avx2_update_f64_save(double *restrict s, const double *restrict x,
                                             size_t n, double w, double *restrict u)
{
    if (fabs(w) < 0.5)
        avx2_update_f64_loop(s, x, n, w, false, u, true);
    else
        avx2_update_f64_loop(s, x, n, -(1.0 - w), true, u, true);
}

/*
 * The health loops: the update loops above, and per lane whether the param is finite (|x| < inf,
 * which a NaN fails), the blend that keeps the old shadow where it is not (skip), the square of
 * d where it is, a count of the non-finite lanes, and whether a result differs in its bits from
 * the shadow before. The squares add up in f32 over HEALTH_BLOCK elements, then in double: a
 * short f32 sum keeps the error to a few parts in a million, and its conversion costs nothing
 * next to the block's loads. The loop stays memory-bound: these are a handful of register
 * operations per 32 bytes moved (docs/performance.md "Health").
 */
#define HEALTH_BLOCK 1024u /* elements, a multiple of 8 */


AVX2_INLINE uint64_t avx2_sum_u32(__m256i v)
{
    uint32_t a[8];
    uint64_t t = 0;
    _mm256_storeu_si256((__m256i *)a, v);
    for (int k = 0; k < 8; k++)
        t += a[k];
    return t;
}

AVX2_INLINE double avx2_sum_pd(__m256d v)
{
    double a[4];
    _mm256_storeu_pd(a, v);
    return (a[0] + a[1]) + (a[2] + a[3]);
}

/* One step of 8: the update, and the health lanes into *sq, *bad and *same. */
AVX2_INLINE void avx2_health_step(float *restrict s, __m256 vx, size_t i, __m256 vc,
                                  bool from_param, float *restrict u, bool save, bool skip,
                                  __m256 *sq, __m256i *bad, __m256i *same, bool track)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 inf = _mm256_set1_ps(INFINITY);
    __asm__("" : "+x"(vx)); /* the test, d and the result from one read of the params */
    __m256 vs = _mm256_loadu_ps(s + i);
    __m256 d = _mm256_sub_ps(vx, vs);
    __m256 nf = _mm256_cmp_ps(_mm256_and_ps(vx, absmask), inf, _CMP_NLT_UQ);
    /* The old shadow blended back where the param is not finite: its bits stay, even a
     * signalling NaN's (an FMA over it would quieten it). */
    __m256 r = _mm256_fmadd_ps(vc, d, from_param ? vx : vs);
    if (skip)
        r = _mm256_blendv_ps(r, vs, nf);
    __m256 df = _mm256_andnot_ps(nf, d);
    if (save)
        _mm256_storeu_ps(u + i, vs);
    _mm256_storeu_ps(s + i, r);
    *sq = _mm256_fmadd_ps(df, df, *sq);
    *bad = _mm256_sub_epi32(*bad, _mm256_castps_si256(nf));
    if (track)
        *same = _mm256_and_si256(*same, _mm256_cmpeq_epi32(_mm256_castps_si256(r),
                                                           _mm256_castps_si256(vs)));
}


/*
 * Whether s[from, to) holds only finite values. A block's f32 sum of squares is +Inf either
 * because the shadow holds an infinity or a NaN (then the distance must say so: the "poisoned"
 * alarm), or because finite values lie 1e19 and more apart, beyond what a float squares (then
 * the block counts as the largest float: the distance says "huge", not "poisoned"; the scalar
 * code squares in double and never overflows). Rare, so a second look at the block, in cache.
 */
AVX2_INLINE bool shadow_finite(const float *s, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        if (!(fabsf(s[i]) < INFINITY))
            return false;
    return true;
}

/* One step of 8 when its params are known finite: the plain update and the square of d, nothing
 * to mask or blend. With keep, the shadow's 8 values go first to kept[0..8), in L1. */
AVX2_INLINE void avx2_health_fast_step(float *restrict s, __m256 vx, size_t i, __m256 vc,
                                       bool from_param, float *restrict u, bool save,
                                       float *restrict kept, bool keep, __m256 *sq,
                                       __m256i *same, bool track)
{
    __m256 vs = _mm256_loadu_ps(s + i);
    __m256 d = _mm256_sub_ps(vx, vs);
    __m256 r = _mm256_fmadd_ps(vc, d, from_param ? vx : vs);
    if (keep)
        _mm256_storeu_ps(kept, vs);
    if (save)
        _mm256_storeu_ps(u + i, vs);
    _mm256_storeu_ps(s + i, r);
    *sq = _mm256_fmadd_ps(d, d, *sq);
    if (track)
        *same = _mm256_and_si256(*same, _mm256_cmpeq_epi32(_mm256_castps_si256(r),
                                                           _mm256_castps_si256(vs)));
}

/*
 * [i, end) of a block, 32 elements a turn: the turn's params read and tested (above), then the
 * fast steps when all are finite, the masked ones otherwise. The path of a block in which the
 * kept steps below found a non-finite difference.
 */
AVX2_INLINE size_t avx2_health_any_block(float *restrict s, const void *restrict x, size_t i,
                                         size_t end, __m256 vc, bool from_param,
                                         float *restrict u, bool save, bool skip, int kind,
                                         __m256 sq[4], __m256i *bad, __m256i *same, bool track)
{
    __m256 v0, v1, v2, v3;
    for (; i + 32 <= end; i += 32) {
        if (avx2_load_32(x, i, kind, &v0, &v1, &v2, &v3)) {
            avx2_health_fast_step(s, v0, i, vc, from_param, u, save, NULL, false, &sq[0], same,
                                  track);
            avx2_health_fast_step(s, v1, i + 8, vc, from_param, u, save, NULL, false, &sq[1],
                                  same, track);
            avx2_health_fast_step(s, v2, i + 16, vc, from_param, u, save, NULL, false, &sq[2],
                                  same, track);
            avx2_health_fast_step(s, v3, i + 24, vc, from_param, u, save, NULL, false, &sq[3],
                                  same, track);
        } else {
            avx2_health_step(s, v0, i, vc, from_param, u, save, skip, &sq[0], bad, same, track);
            avx2_health_step(s, v1, i + 8, vc, from_param, u, save, skip, &sq[1], bad, same,
                             track);
            avx2_health_step(s, v2, i + 16, vc, from_param, u, save, skip, &sq[2], bad, same,
                             track);
            avx2_health_step(s, v3, i + 24, vc, from_param, u, save, skip, &sq[3], bad, same,
                             track);
        }
    }
    return i;
}

/* A fast step that keeps the shadow's values first, its params read once: a trainer that wrote
 * a NaN between two reads would otherwise reach the shadow with a finite d (the empty asm keeps
 * the compiler from reading them again for the result). */
AVX2_INLINE void avx2_health_kept_step(float *restrict s, const void *restrict x, size_t i,
                                       __m256 vc, bool from_param, float *restrict u, bool save,
                                       int kind, float *restrict kept, __m256 *sq, __m256i *same,
                                       bool track)
{
    __m256 vx = avx2_load_param(x, i, kind);
    __asm__("" : "+x"(vx));
    avx2_health_fast_step(s, vx, i, vc, from_param, u, save, kept, true, sq, same, track);
}

/*
 * The whole turns of [i, end) on the premise that every param is finite: the plain update and
 * the square of d, with nothing tested. A param that is not finite makes its d, and so its
 * square's sum, NaN or infinite: the caller looks at the sums once, at the block's end, puts
 * the kept shadow back and goes over the block again the careful way.
 */
AVX2_INLINE size_t avx2_health_kept_block(float *restrict s, const void *restrict x, size_t i,
                                          size_t end, __m256 vc, bool from_param,
                                          float *restrict u, bool save, int kind,
                                          float *restrict kept, __m256 sq[4], __m256i *same,
                                          bool track)
{
    for (; i + 32 <= end; i += 32, kept += 32) {
        avx2_health_kept_step(s, x, i, vc, from_param, u, save, kind, kept, &sq[0], same, track);
        avx2_health_kept_step(s, x, i + 8, vc, from_param, u, save, kind, kept + 8, &sq[1],
                              same, track);
        avx2_health_kept_step(s, x, i + 16, vc, from_param, u, save, kind, kept + 16, &sq[2],
                              same, track);
        avx2_health_kept_step(s, x, i + 24, vc, from_param, u, save, kind, kept + 24, &sq[3],
                              same, track);
    }
    return i;
}

/* [i, end) of a block, the kept steps first and the careful ones where they found a NaN or an
 * infinity; *sq gets the block's squares. */
AVX2_INLINE size_t avx2_health_block(float *restrict s, const void *restrict x, size_t i,
                                     size_t end, __m256 vc, bool from_param, float *restrict u,
                                     bool save, bool skip, int kind, float *restrict kept,
                                     __m256 *sq, __m256i *bad, __m256i *same, bool track)
{
    const __m256 inf = _mm256_set1_ps(INFINITY);
    __m256 q[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    __m256i tried = *same;
    size_t start = i;
    i = avx2_health_kept_block(s, x, i, end, vc, from_param, u, save, kind, kept, q, &tried,
                               track);
    __m256 t = _mm256_add_ps(_mm256_add_ps(q[0], q[1]), _mm256_add_ps(q[2], q[3]));
    if (_mm256_movemask_ps(_mm256_cmp_ps(t, inf, _CMP_NLT_UQ)) == 0) {
        *same = tried;
    } else {
        memcpy(s + start, kept, (i - start) * sizeof(float));
        q[0] = q[1] = q[2] = q[3] = _mm256_setzero_ps();
        i = avx2_health_any_block(s, x, start, end, vc, from_param, u, save, skip, kind, q, bad,
                                  same, track);
    }
    for (; i < end; i += 8)
        avx2_health_step(s, avx2_load_param(x, i, kind), i, vc, from_param, u, save, skip, &q[0],
                         bad, same, track);
    *sq = _mm256_add_ps(_mm256_add_ps(q[0], q[1]), _mm256_add_ps(q[2], q[3]));
    return i;
}

/*
 * Four steps a turn, each summing its squares into its own register: one chain of dependent
 * FMAs (4 cycles each) would hold the loop to a step every 4 cycles, half the speed of the
 * plain update on data in the cache, and slower than memory for 16-bit params. Whether the
 * shadow changed is only tracked until a block finds that it did (in training, the first
 * block): the blocks after it run without the compare. A block first goes the kept way: the
 * plain update and the square, with no test at all, each shadow value kept in a 4 KiB buffer
 * that stays in L1; a NaN or an infinity shows in the block's sum of squares, and only then is
 * the block put back and gone over with the test per turn and the masks. A store to L1 per
 * step costs less than the test did (docs/performance.md "Health").
 */
AVX2_INLINE void avx2_health_loop(float *restrict s, const void *restrict x, size_t n, float w,
                                  float c, bool from_param, float *restrict u, bool save,
                                  bool skip, int kind, struct kernel_health *h)
{
    const __m256 vc = _mm256_set1_ps(c);
    __m256d acc = _mm256_setzero_pd();
    __m256i same = _mm256_set1_epi32(-1);
    bool changed = false;
    uint64_t bad_total = 0;
    float kept[HEALTH_BLOCK];
    size_t i = 0;

    while (n - i >= 8) {
        size_t left = (n - i) & ~(size_t)7;
        size_t end = i + (left > HEALTH_BLOCK ? HEALTH_BLOCK : left);
        size_t start = i;
        __m256 sq;
        __m256i bad = _mm256_setzero_si256();
        bool track = !changed;
        if (track)
            i = avx2_health_block(s, x, i, end, vc, from_param, u, save, skip, kind, kept, &sq,
                                  &bad, &same, true);
        else
            i = avx2_health_block(s, x, i, end, vc, from_param, u, save, skip, kind, kept, &sq,
                                  &bad, &same, false);
        if (track)
            changed = _mm256_movemask_epi8(same) != -1;
        if (_mm256_movemask_ps(_mm256_cmp_ps(sq, _mm256_set1_ps(INFINITY), _CMP_EQ_OQ)) != 0 &&
            shadow_finite(s, start, i))
            sq = _mm256_min_ps(sq, _mm256_set1_ps(FLT_MAX)); /* no NaN lane here: +Inf only */
        acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
        acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(sq, 1)));
        bad_total += avx2_sum_u32(bad);
    }
    h->elems += i;
    h->nonfinite += bad_total;
    h->sumsq += avx2_sum_pd(acc);
    if (changed)
        h->changed = true;
    for (; i < n; i++)
        health_1_f32(s + i, avx2_param_1(x, i, kind), w, save ? u + i : NULL, skip, h);
}

/* The constants spelled out, so that each combination is its own loop without branches. */
AVX2_INLINE void avx2_health_w(float *restrict s, const void *restrict x, size_t n, float w,
                               float *restrict u, bool skip, int kind, struct kernel_health *h,
                               bool from_param, float c)
{
    if (u != NULL && skip)
        avx2_health_loop(s, x, n, w, c, from_param, u, true, true, kind, h);
    else if (u != NULL)
        avx2_health_loop(s, x, n, w, c, from_param, u, true, false, kind, h);
    else if (skip)
        avx2_health_loop(s, x, n, w, c, from_param, NULL, false, true, kind, h);
    else
        avx2_health_loop(s, x, n, w, c, from_param, NULL, false, false, kind, h);
}

AVX2_INLINE void avx2_health(float *restrict s, const void *restrict x, size_t n, float w,
                             float *restrict u, bool skip, int kind, struct kernel_health *h)
{
    if (fabsf(w) < 0.5f)
        avx2_health_w(s, x, n, w, u, skip, kind, h, false, w);
    else
        avx2_health_w(s, x, n, w, u, skip, kind, h, true, -(1.0f - w));
}

AVX2_TARGET static void avx2_update_f32_health(float *restrict s, const float *restrict x,
                                               size_t n, float w, float *restrict u, bool skip,
                                               struct kernel_health *h)
{
    avx2_health(s, x, n, w, u, skip, PARAM_F32, h);
}

AVX2_TARGET static void avx2_update_bf16_health(float *restrict s, const uint16_t *restrict x,
                                                size_t n, float w, float *restrict u, bool skip,
                                                struct kernel_health *h)
{
    avx2_health(s, x, n, w, u, skip, PARAM_BF16, h);
}

AVX2_TARGET static void avx2_update_f16_health(float *restrict s, const uint16_t *restrict x,
                                               size_t n, float w, float *restrict u, bool skip,
                                               struct kernel_health *h)
{
    avx2_health(s, x, n, w, u, skip, PARAM_F16, h);
}

/* f64: four lanes, and the squares in double from the start; four chains, as for f32. */
AVX2_INLINE void avx2_health_f64_step(double *restrict s, __m256d vx, size_t i,
                                      __m256d vc, bool from_param, double *restrict u, bool save,
                                      bool skip, __m256d *sq, __m256i *bad, __m256i *same,
                                      bool track)
{
    const __m256d absmask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffll));
    const __m256d inf = _mm256_set1_pd(INFINITY);
    __asm__("" : "+x"(vx)); /* as avx2_health_step */
    __m256d vs = _mm256_loadu_pd(s + i);
    __m256d d = _mm256_sub_pd(vx, vs);
    __m256d nf = _mm256_cmp_pd(_mm256_and_pd(vx, absmask), inf, _CMP_NLT_UQ);
    __m256d r = _mm256_fmadd_pd(vc, d, from_param ? vx : vs);
    if (save)
        _mm256_storeu_pd(u + i, vs);
    if (skip)
        r = _mm256_blendv_pd(r, vs, nf);
    _mm256_storeu_pd(s + i, r);
    __m256d df = _mm256_andnot_pd(nf, d);
    *sq = _mm256_fmadd_pd(df, df, *sq);
    *bad = _mm256_sub_epi64(*bad, _mm256_castpd_si256(nf));
    if (track)
        *same = _mm256_and_si256(*same, _mm256_cmpeq_epi64(_mm256_castpd_si256(r),
                                                           _mm256_castpd_si256(vs)));
}

/* One step of 4 of an f64 tensor whose params are known finite: no mask, no blend, no count. */
AVX2_INLINE void avx2_health_f64_fast_step(double *restrict s, __m256d vx, size_t i, __m256d vc,
                                           bool from_param, double *restrict u, bool save,
                                           __m256d *sq, __m256i *same, bool track)
{
    __m256d vs = _mm256_loadu_pd(s + i);
    __m256d d = _mm256_sub_pd(vx, vs);
    __m256d r = _mm256_fmadd_pd(vc, d, from_param ? vx : vs);
    if (save)
        _mm256_storeu_pd(u + i, vs);
    _mm256_storeu_pd(s + i, r);
    *sq = _mm256_fmadd_pd(d, d, *sq);
    if (track)
        *same = _mm256_and_si256(*same, _mm256_cmpeq_epi64(_mm256_castpd_si256(r),
                                                           _mm256_castpd_si256(vs)));
}

/* The 16 f64 params at x[i], read once, and whether all are finite (as avx2_load_32). */
AVX2_INLINE bool avx2_load_16_f64(const double *x, size_t i, __m256d *v0, __m256d *v1,
                                  __m256d *v2, __m256d *v3)
{
    const __m256i e = _mm256_set1_epi64x(0x7ff0000000000000ll);
    *v0 = _mm256_loadu_pd(x + i);
    *v1 = _mm256_loadu_pd(x + i + 4);
    *v2 = _mm256_loadu_pd(x + i + 8);
    *v3 = _mm256_loadu_pd(x + i + 12);
    __m256i a = _mm256_or_si256(
        _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_castpd_si256(*v0), e), e),
        _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_castpd_si256(*v1), e), e));
    __m256i b = _mm256_or_si256(
        _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_castpd_si256(*v2), e), e),
        _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_castpd_si256(*v3), e), e));
    return _mm256_movemask_epi8(_mm256_or_si256(a, b)) == 0;
}

/* [i, end) of an f64 tensor, 16 elements a turn into sq[4]: read and tested, then the fast steps
 * or the masked ones, as for f32. */
AVX2_INLINE size_t avx2_health_f64_block(double *restrict s, const double *restrict x, size_t i,
                                         size_t end, __m256d vc, bool from_param,
                                         double *restrict u, bool save, bool skip, __m256d *sq,
                                         __m256i *bad, __m256i *same, bool track)
{
    __m256d v0, v1, v2, v3;
    for (; i + 16 <= end; i += 16) {
        if (avx2_load_16_f64(x, i, &v0, &v1, &v2, &v3)) {
            avx2_health_f64_fast_step(s, v0, i, vc, from_param, u, save, &sq[0], same, track);
            avx2_health_f64_fast_step(s, v1, i + 4, vc, from_param, u, save, &sq[1], same,
                                      track);
            avx2_health_f64_fast_step(s, v2, i + 8, vc, from_param, u, save, &sq[2], same,
                                      track);
            avx2_health_f64_fast_step(s, v3, i + 12, vc, from_param, u, save, &sq[3], same,
                                      track);
        } else {
            avx2_health_f64_step(s, v0, i, vc, from_param, u, save, skip, &sq[0], bad, same,
                                 track);
            avx2_health_f64_step(s, v1, i + 4, vc, from_param, u, save, skip, &sq[1], bad, same,
                                 track);
            avx2_health_f64_step(s, v2, i + 8, vc, from_param, u, save, skip, &sq[2], bad, same,
                                 track);
            avx2_health_f64_step(s, v3, i + 12, vc, from_param, u, save, skip, &sq[3], bad,
                                 same, track);
        }
    }
    for (; i < end; i += 4)
        avx2_health_f64_step(s, _mm256_loadu_pd(x + i), i, vc, from_param, u, save, skip, &sq[0],
                             bad, same, track);
    return i;
}

AVX2_INLINE void avx2_health_f64_loop(double *restrict s, const double *restrict x, size_t n,
                                      double w, double c, bool from_param, double *restrict u,
                                      bool save, bool skip, struct kernel_health *h)
{
    const __m256d vc = _mm256_set1_pd(c);
    __m256d sq[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                     _mm256_setzero_pd()};
    __m256i bad = _mm256_setzero_si256();
    __m256i same = _mm256_set1_epi64x(-1);
    bool changed = false;
    size_t i = 0;

    /* Blocks only to stop comparing once a change is found, as for f32. */
    while (n - i >= 4) {
        size_t left = (n - i) & ~(size_t)3;
        size_t end = i + (left > HEALTH_BLOCK ? HEALTH_BLOCK : left);
        if (changed) {
            i = avx2_health_f64_block(s, x, i, end, vc, from_param, u, save, skip, sq, &bad,
                                      &same, false);
        } else {
            i = avx2_health_f64_block(s, x, i, end, vc, from_param, u, save, skip, sq, &bad,
                                      &same, true);
            changed = _mm256_movemask_epi8(same) != -1;
        }
    }
    uint64_t b[4];
    _mm256_storeu_si256((__m256i *)b, bad);
    h->elems += i;
    h->nonfinite += b[0] + b[1] + b[2] + b[3];
    h->sumsq += avx2_sum_pd(_mm256_add_pd(_mm256_add_pd(sq[0], sq[1]),
                                          _mm256_add_pd(sq[2], sq[3])));
    if (changed)
        h->changed = true;
    for (; i < n; i++)
        health_1_f64(s + i, x[i], w, save ? u + i : NULL, skip, h);
}

AVX2_INLINE void avx2_health_f64_w(double *restrict s, const double *restrict x, size_t n,
                                   double w, double *restrict u, bool skip,
                                   struct kernel_health *h, bool from_param, double c)
{
    if (u != NULL && skip)
        avx2_health_f64_loop(s, x, n, w, c, from_param, u, true, true, h);
    else if (u != NULL)
        avx2_health_f64_loop(s, x, n, w, c, from_param, u, true, false, h);
    else if (skip)
        avx2_health_f64_loop(s, x, n, w, c, from_param, NULL, false, true, h);
    else
        avx2_health_f64_loop(s, x, n, w, c, from_param, NULL, false, false, h);
}

AVX2_TARGET static void avx2_update_f64_health(double *restrict s, const double *restrict x,
                                               size_t n, double w, double *restrict u, bool skip,
                                               struct kernel_health *h)
{
    if (fabs(w) < 0.5)
        avx2_health_f64_w(s, x, n, w, u, skip, h, false, w);
    else
        avx2_health_f64_w(s, x, n, w, u, skip, h, true, -(1.0 - w));
}

AVX2_TARGET static void avx2_bf16_to_f32(float *restrict dst, const uint16_t *restrict src,
                                         size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, avx2_load_bf16(src + i));
    for (; i < n; i++)
        dst[i] = portable_bf16_to_f32_1(src[i]);
}

AVX2_TARGET static void avx2_f16_to_f32(float *restrict dst, const uint16_t *restrict src, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, avx2_load_f16(src + i));
    for (; i < n; i++)
        dst[i] = avx2_f16_to_f32_1(src[i]);
}

/* Eight f32 -> bf16, RNE by the carry trick; NaN lanes become 0x7fc0. */
AVX2_INLINE __m128i avx2_f32_to_bf16_8(__m256 v)
{
    const __m256i one = _mm256_set1_epi32(1);
    const __m256i bias = _mm256_set1_epi32(0x7fff);
    const __m256i qnan = _mm256_set1_epi32(0x7fc0);
    __m256i u = _mm256_castps_si256(v);
    __m256i hi = _mm256_srli_epi32(u, 16);
    __m256i lsb = _mm256_and_si256(hi, one);
    __m256i rne = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(bias, lsb)), 16);
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    __m256i r = _mm256_blendv_epi8(rne, qnan, nan);
    /* Every lane is <= 0xffff, so the unsigned-saturating pack only narrows. */
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

AVX2_TARGET static void avx2_f32_to_bf16(uint16_t *restrict dst, const float *restrict src,
                                         size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), avx2_f32_to_bf16_8(_mm256_loadu_ps(src + i)));
    for (; i < n; i++)
        dst[i] = portable_f32_to_bf16_1(src[i]);
}

/* The immediate selects round-to-nearest-even whatever MXCSR says. */
AVX2_TARGET static void avx2_f32_to_f16(uint16_t *restrict dst, const float *restrict src, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(dst + i), h);
    }
    for (; i < n; i++)
        dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

static const struct kernel_ops ops_avx2 = {
    .name = "avx2",
    .update_f32 = avx2_update_f32,
    .update_bf16 = avx2_update_bf16,
    .update_f16 = avx2_update_f16,
    .update_f64 = avx2_update_f64,
    .update_f32_save = avx2_update_f32_save,
    .update_bf16_save = avx2_update_bf16_save,
    .update_f16_save = avx2_update_f16_save,
    .update_f64_save = avx2_update_f64_save,
    .update_f32_health = avx2_update_f32_health,
    .update_bf16_health = avx2_update_bf16_health,
    .update_f16_health = avx2_update_f16_health,
    .update_f64_health = avx2_update_f64_health,
    .bf16_to_f32 = avx2_bf16_to_f32,
    .f16_to_f32 = avx2_f16_to_f32,
    .f32_to_bf16 = avx2_f32_to_bf16,
    .f32_to_f16 = avx2_f32_to_f16,
};

const struct kernel_ops *kernel_ops_avx2(void)
{
    return cpu_has_avx2_fma_f16c() ? &ops_avx2 : NULL;
}

#else /* !KERNEL_X86 */

const struct kernel_ops *kernel_ops_avx2(void)
{
    return NULL;
}

#endif /* KERNEL_X86 */

const struct kernel_ops *kernel_ops_best(void)
{
    const struct kernel_ops *avx2 = kernel_ops_avx2();
    return avx2 != NULL ? avx2 : &ops_portable;
}

/* ---- Per-tensor entry points ------------------------------------------------------------ */

/* Common argument checks: a table, a known dtype, pointers unless there is nothing to do. */
static int check_args(const struct kernel_ops *ops, enum dtype dt, const void *dst,
                      const void *src, size_t n)
{
    if (ops == NULL)
        return -EINVAL;
    if (!dtype_valid(dt))
        return -EINVAL;
    if (n > 0 && (dst == NULL || src == NULL))
        return -EINVAL;
    if (n > SIZE_MAX / dtype_size(dt)) /* a byte count that cannot exist */
        return -EINVAL;
    return 0;
}

float kernel_weight_f32(double smoothing)
{
    /* As torch's shadow.lerp_(param, 1 - smoothing): the weight is a Python float (double),
     * converted to the tensor's compute type, float for an f32 shadow. */
    return (float)(1.0 - smoothing);
}

double kernel_weight_f64(double smoothing)
{
    return 1.0 - smoothing;
}

int kernel_update(const struct kernel_ops *ops, enum dtype dt, void *shadow,
                  const void *param, size_t n, double smoothing)
{
    int err = check_args(ops, dt, shadow, param, n);
    if (err < 0)
        return err;
    switch (dt) {
    case DTYPE_F32:
        ops->update_f32(shadow, param, n, kernel_weight_f32(smoothing));
        return 0;
    case DTYPE_BF16:
        ops->update_bf16(shadow, param, n, kernel_weight_f32(smoothing));
        return 0;
    case DTYPE_F16:
        ops->update_f16(shadow, param, n, kernel_weight_f32(smoothing));
        return 0;
    case DTYPE_F64:
        ops->update_f64(shadow, param, n, kernel_weight_f64(smoothing));
        return 0;
    default: /* integer and bool tensors follow the weights: a copy */
        kernel_copy(shadow, param, n * dtype_size(dt));
        return 0;
    }
}

int kernel_update_save(const struct kernel_ops *ops, enum dtype dt, void *shadow,
                       const void *param, size_t n, double smoothing, void *old)
{
    int err = check_args(ops, dt, shadow, param, n);
    if (err < 0)
        return err;
    if (n > 0 && old == NULL)
        return -EINVAL;
    const float w = kernel_weight_f32(smoothing);
    /* One pass where the table has it: the old value is stored as it is read. */
    if (dt == DTYPE_F32 && ops->update_f32_save != NULL)
        ops->update_f32_save(shadow, param, n, w, old);
    else if (dt == DTYPE_BF16 && ops->update_bf16_save != NULL)
        ops->update_bf16_save(shadow, param, n, w, old);
    else if (dt == DTYPE_F16 && ops->update_f16_save != NULL)
        ops->update_f16_save(shadow, param, n, w, old);
    else if (dt == DTYPE_F64 && ops->update_f64_save != NULL)
        ops->update_f64_save(shadow, param, n, kernel_weight_f64(smoothing), old);
    else {
        kernel_copy(old, shadow, n * dtype_size(dtype_shadow(dt)));
        return kernel_update(ops, dt, shadow, param, n, smoothing);
    }
    return 0;
}

int kernel_update_health(const struct kernel_ops *ops, enum dtype dt, void *shadow,
                         const void *param, size_t n, double smoothing, void *old,
                         bool skip_nonfinite, struct kernel_health *h)
{
    int err = check_args(ops, dt, shadow, param, n);
    if (err < 0)
        return err;
    if (h == NULL)
        return -EINVAL;
    const float w = kernel_weight_f32(smoothing);
    switch (dt) {
    case DTYPE_F32:
        ops->update_f32_health(shadow, param, n, w, old, skip_nonfinite, h);
        return 0;
    case DTYPE_BF16:
        ops->update_bf16_health(shadow, param, n, w, old, skip_nonfinite, h);
        return 0;
    case DTYPE_F16:
        ops->update_f16_health(shadow, param, n, w, old, skip_nonfinite, h);
        return 0;
    case DTYPE_F64:
        ops->update_f64_health(shadow, param, n, kernel_weight_f64(smoothing), old,
                               skip_nonfinite, h);
        return 0;
    default:
        if (old != NULL)
            kernel_copy(old, shadow, n * dtype_size(dt));
        kernel_copy(shadow, param, n * dtype_size(dt));
        return 0;
    }
}

int kernel_shadow_init(const struct kernel_ops *ops, enum dtype dt, void *shadow,
                       const void *param, size_t n)
{
    int err = check_args(ops, dt, shadow, param, n);
    if (err < 0)
        return err;
    switch (dt) {
    case DTYPE_BF16:
        ops->bf16_to_f32(shadow, param, n);
        return 0;
    case DTYPE_F16:
        ops->f16_to_f32(shadow, param, n);
        return 0;
    default: /* same dtype: f32, f64, integers */
        kernel_copy(shadow, param, n * dtype_size(dt));
        return 0;
    }
}

static void stream_copy(void *restrict dst, const void *restrict src, size_t bytes);

int kernel_swap_in(const struct kernel_ops *ops, enum dtype dt, void *param,
                   const void *shadow, size_t n)
{
    int err = check_args(ops, dt, param, shadow, n);
    if (err < 0)
        return err;
    switch (dt) {
    case DTYPE_BF16:
        ops->f32_to_bf16(param, shadow, n);
        return 0;
    case DTYPE_F16:
        ops->f32_to_f16(param, shadow, n);
        return 0;
    default:
        stream_copy(param, shadow, n * dtype_size(dt));
        return 0;
    }
}

/* ---- Byte copies ------------------------------------------------------------------------ */

void kernel_copy(void *restrict dst, const void *restrict src, size_t bytes)
{
    if (bytes > 0)
        memcpy(dst, src, bytes);
}

/* Below this a copy's destination may as well stay in the cache. */
#define STREAM_MIN_BYTES (1u << 20)

/*
 * The copies of a swap move megabytes nobody reads back at once (the stash)
 * or that leave the cache anyway: non-temporal stores skip reading each
 * destination line before writing it, a third of the traffic of a plain
 * copy of a chunk (glibc streams only copies larger than a cache share,
 * which our chunks are not). The sfence orders the stores before whatever
 * publishes the chunk as done.
 */
static void stream_copy(void *restrict dst, const void *restrict src, size_t bytes)
{
#if defined(__x86_64__)
    if (bytes >= STREAM_MIN_BYTES) {
        char *d = dst;
        const char *s = src;
        size_t head = (16 - ((uintptr_t)d & 15)) & 15;
        memcpy(d, s, head);
        d += head, s += head, bytes -= head;
        for (; bytes >= 64; d += 64, s += 64, bytes -= 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)s);
            __m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
            __m128i e = _mm_loadu_si128((const __m128i *)(s + 48));
            _mm_stream_si128((__m128i *)d, a);
            _mm_stream_si128((__m128i *)(d + 16), b);
            _mm_stream_si128((__m128i *)(d + 32), c);
            _mm_stream_si128((__m128i *)(d + 48), e);
        }
        memcpy(d, s, bytes);
        _mm_sfence();
        return;
    }
#endif
    kernel_copy(dst, src, bytes);
}

void kernel_stash_copy(void *restrict stash, const void *restrict param, size_t bytes)
{
    stream_copy(stash, param, bytes);
}

void kernel_stash_restore(void *restrict param, const void *restrict stash, size_t bytes)
{
    stream_copy(param, stash, bytes);
}
