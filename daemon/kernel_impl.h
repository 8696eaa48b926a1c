/*
 * kernel_impl.h - what kernel.c and kernel_multi.c share inside the kernels: bit casts, the
 * widening of one bf16 or f16 value, and the AVX2 loads of eight params of any float dtype.
 * Static inline, so each file compiles its own copy; nothing here is part of kernel.h's
 * interface.
 */
#ifndef EMAD_KERNEL_IMPL_H
#define EMAD_KERNEL_IMPL_H

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define KERNEL_X86 1
#include <immintrin.h>
#else
#define KERNEL_X86 0
#endif

/* memcpy is the defined way to reinterpret bits; compilers turn it into a register move. */
static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint64_t f64_bits(double f)
{
    uint64_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* A bf16 value is the top half of a binary32: widening is exact. */
static inline float portable_bf16_to_f32_1(uint16_t h)
{
    return f32_from_bits((uint32_t)h << 16);
}

#if KERNEL_X86

#define AVX2_TARGET __attribute__((target("avx,avx2,fma,f16c")))
#define AVX2_INLINE AVX2_TARGET __attribute__((always_inline)) static inline

/* Eight bf16 or f16 values, exactly as f32. */
AVX2_INLINE __m256 avx2_load_bf16(const uint16_t *p)
{
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

AVX2_INLINE __m256 avx2_load_f16(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

AVX2_INLINE float avx2_f16_to_f32_1(uint16_t h)
{
    return _cvtsh_ss(h);
}

/* The params' dtype in the loops that take any float params: a constant after inlining. */
enum { PARAM_F32, PARAM_BF16, PARAM_F16 };

AVX2_INLINE __m256 avx2_load_param(const void *x, size_t i, int kind)
{
    if (kind == PARAM_F32)
        return _mm256_loadu_ps((const float *)x + i);
    if (kind == PARAM_BF16)
        return avx2_load_bf16((const uint16_t *)x + i);
    return avx2_load_f16((const uint16_t *)x + i);
}

AVX2_INLINE float avx2_param_1(const void *x, size_t i, int kind)
{
    if (kind == PARAM_F32)
        return ((const float *)x)[i];
    if (kind == PARAM_BF16)
        return portable_bf16_to_f32_1(((const uint16_t *)x)[i]);
    return avx2_f16_to_f32_1(((const uint16_t *)x)[i]);
}

/*
 * The 32 params at x[i], read once into v[0..3] as f32, and whether all are finite, from their
 * exponent bits alone: the largest masked exponent is the all-ones one exactly when one of them
 * is NaN or infinite. About one operation per eight 16-bit params (sixteen to a register), two
 * per eight f32 ones. One read serves the test and the update: params a trainer rewrote between
 * two reads could otherwise pass the test and not the update.
 */
AVX2_INLINE __m256 avx2_widen_h16(__m128i q, int kind)
{
    if (kind == PARAM_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(q), 16));
    return _mm256_cvtph_ps(q);
}

AVX2_INLINE bool avx2_load_32(const void *x, size_t i, int kind, __m256 *v0, __m256 *v1,
                              __m256 *v2, __m256 *v3)
{
    if (kind == PARAM_F32) {
        const __m256i e = _mm256_set1_epi32(0x7f800000);
        const float *p = (const float *)x + i;
        *v0 = _mm256_loadu_ps(p);
        *v1 = _mm256_loadu_ps(p + 8);
        *v2 = _mm256_loadu_ps(p + 16);
        *v3 = _mm256_loadu_ps(p + 24);
        /* Registers from here on: the compiler may not read the params again for the test or
         * the steps, and find other values there. */
        __asm__("" : "+x"(*v0), "+x"(*v1), "+x"(*v2), "+x"(*v3));
        __m256i a = _mm256_max_epu32(_mm256_and_si256(_mm256_castps_si256(*v0), e),
                                     _mm256_and_si256(_mm256_castps_si256(*v1), e));
        __m256i b = _mm256_max_epu32(_mm256_and_si256(_mm256_castps_si256(*v2), e),
                                     _mm256_and_si256(_mm256_castps_si256(*v3), e));
        return _mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_max_epu32(a, b), e)) == 0;
    }
    const __m256i e = _mm256_set1_epi16((short)(kind == PARAM_BF16 ? 0x7f80 : 0x7c00));
    const __m256i *p = (const __m256i *)((const uint16_t *)x + i);
    __m256i h0 = _mm256_loadu_si256(p), h1 = _mm256_loadu_si256(p + 1);
    __asm__("" : "+x"(h0), "+x"(h1));
    *v0 = avx2_widen_h16(_mm256_castsi256_si128(h0), kind);
    *v1 = avx2_widen_h16(_mm256_extracti128_si256(h0, 1), kind);
    *v2 = avx2_widen_h16(_mm256_castsi256_si128(h1), kind);
    *v3 = avx2_widen_h16(_mm256_extracti128_si256(h1, 1), kind);
    __m256i m = _mm256_max_epu16(_mm256_and_si256(h0, e), _mm256_and_si256(h1, e));
    return _mm256_movemask_epi8(_mm256_cmpeq_epi16(m, e)) == 0;
}

#endif /* KERNEL_X86 */

#endif
