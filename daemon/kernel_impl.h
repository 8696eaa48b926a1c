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

#endif /* KERNEL_X86 */

#endif
