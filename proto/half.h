/*
 * half.h - scalar conversions between binary32 and the 16-bit float formats (bf16, f16), as
 * PyTorch rounds them: round to nearest, ties to even; a NaN stays a NaN. Portable C, no
 * libm: both sides use them (emad's snapshots, libemaclient's post-hoc results and exports).
 * They give the same bits as the kernels' references in daemon/kernel.c (tests/test_safetensors.c
 * checks every 16-bit pattern and the rounding boundaries of every one).
 */
#ifndef EMAD_HALF_H
#define EMAD_HALF_H

#include <stdint.h>

/* bf16 -> f32: exact (bf16 is the top half of a binary32). */
float half_bf16_to_f32(uint16_t h);

/* f32 -> bf16, ties to even; every NaN becomes 0x7fc0 (what c10::BFloat16 returns). */
uint16_t half_f32_to_bf16(float f);

/* f16 -> f32: exact; a NaN becomes quiet with its sign and payload kept. */
float half_f16_to_f32(uint16_t h);

/* f32 -> f16, ties to even, overflow to inf (from 65520 up); a NaN becomes quiet with its sign
 * and the top 10 bits of its payload. */
uint16_t half_f32_to_f16(float f);

#endif
