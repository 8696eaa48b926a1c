/*
 * half.c - binary32 <-> bf16 / f16 by bit manipulation (see half.h).
 */
#include "half.h"

#include <string.h>

static uint32_t f32_bits(float f)
{
    uint32_t u;

    memcpy(&u, &f, sizeof(u));
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float f;

    memcpy(&f, &u, sizeof(f));
    return f;
}

float half_bf16_to_f32(uint16_t h)
{
    return f32_from_bits((uint32_t)h << 16);
}

uint16_t half_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);

    /* Without this the carry would turn a NaN with a small payload into inf. */
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return 0x7fc0;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

float half_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;

    if (e == 31)
        return f32_from_bits(sign | 0x7f800000u | (m != 0 ? 0x400000u | (m << 13) : 0));
    if (e == 0) {
        if (m == 0)
            return f32_from_bits(sign);
        /* Subnormal m * 2^-24: shift the leading bit up to the implicit position (bit 10),
         * lowering the exponent once per shift; 2^-14 has binary32 exponent field 113. */
        e = 113;
        while ((m & 0x400u) == 0) {
            m <<= 1;
            e--;
        }
        return f32_from_bits(sign | (e << 23) | ((m & 0x3ffu) << 13));
    }
    return f32_from_bits(sign | ((e + 112) << 23) | (m << 13));
}

/* x >> s rounded to nearest, ties to even (1 <= s <= 31). */
static uint32_t shift_rne(uint32_t x, unsigned s)
{
    uint32_t q = x >> s;
    uint32_t rem = x & ((1u << s) - 1);
    uint32_t half = 1u << (s - 1);

    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return q;
}

uint16_t half_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;

    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u | ((u >> 13) & 0x3ffu));
    /* 65520 (0x477ff000) lies halfway between 65504, the largest f16 (odd significand), and
     * 2^16: it and everything above rounds to inf. */
    if (a >= 0x477ff000u)
        return (uint16_t)(sign | 0x7c00u);
    /* At most 2^-25, half the smallest subnormal: a tie at 2^-25 goes to the even 0. */
    if (a <= 0x33000000u)
        return sign;
    if (a < 0x38800000u) {
        /* Below 2^-14: a subnormal, the value in units of 2^-24. With the implicit bit the
         * significand is mant * 2^(e - 150), so the shift is 126 - e (14..24 here). A carry
         * into 1024 gives 0x0400, the smallest normal: the right encoding. */
        uint32_t e = a >> 23;
        uint32_t mant = (a & 0x7fffffu) | 0x800000u;
        return (uint16_t)(sign | shift_rne(mant, 126 - e));
    }
    /* Normal: rebias the exponent (127 -> 15) and round off 13 significand bits; a carry runs
     * into the exponent, which is the correctly rounded result. */
    return (uint16_t)(sign | shift_rne(a - (112u << 23), 13));
}
