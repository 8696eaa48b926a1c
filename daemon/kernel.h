/*
 * kernel.h - update / swap / cast kernels of emad: pure functions over pointers and element
 * counts.
 *
 * Nothing here knows about sessions, sockets or threads. Every kernel works on any sub-range of
 * a tensor (any alignment, any count including 0), so the worker pool may cut tensors into
 * chunks freely: running a kernel on [0, k) then on [k, n) gives the same bytes as one call on
 * [0, n). A kernel writes its destination range and nothing else.
 *
 * Numerics (bit-exact with PyTorch's CPU `shadow.lerp_(param, w)`, docs/protocol.md "Numerics"):
 *   d = x - s;   s := |w| < 0.5 ? fma(w, d, s) : fma(w - 1, d, x)
 * with x the parameter converted exactly to the shadow's type (bf16/f16 -> f32), w = 1 - smoothing
 * computed in double and rounded once to float for f32 shadows. Narrowing casts round to nearest
 * even and overflow to inf. A NaN stays a quiet NaN: in bf16 always 0x7fc0, as c10::BFloat16
 * (torch's .to(torch.bfloat16)) writes it; in f16 with its sign and the top of its payload, as
 * F16C's vcvtps2ph writes it.
 *
 * Implementations come as tables of function pointers (struct kernel_ops): one picked at run
 * time for the CPU (AVX2+FMA+F16C when present), the portable C one, and the scalar references
 * the tests compare both with. The tables are constant and there is no global mutable state, so
 * every function here is thread-safe.
 */
#ifndef EMAD_KERNEL_H
#define EMAD_KERNEL_H

#include "dtype.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Implementations ------------------------------------------------------------------- */

/*
 * What an update saw of its data, for the health signals (docs/running.md "Health"). The update
 * reads every param and every shadow value anyway; the health variants of the kernels gather
 * these in the same pass. Accumulated: each call adds to what the struct holds.
 */
struct kernel_health {
    uint64_t elems;     /* floating-point elements the update went over */
    uint64_t nonfinite; /* ... of which the param was NaN or infinite */
    double sumsq;       /* sum of (shadow before - param)^2 over the finite params; the
                         * vector kernels sum a block's squares in f32 and report +Inf for a
                         * block whose squares overflow a float when the block's shadow is
                         * non-finite after the update (an update that overflowed, or one that
                         * applied a non-finite param): the reference, in double, may still
                         * give a finite sum there. Either way the shadow is poisoned, and the
                         * distance says so. */
    bool changed;       /* some shadow element's bits changed */
};

/* Add the signals of one part of an update (a chunk, a tensor) into its total. */
static inline void kernel_health_add(struct kernel_health *to, const struct kernel_health *from)
{
    to->elems += from->elems;
    to->nonfinite += from->nonfinite;
    to->sumsq += from->sumsq;
    to->changed |= from->changed;
}

/*
 * One implementation of the kernels that depend on the instruction set. n counts elements.
 * Exact copies (f32 -> f32, f64 -> f64, integers) are memcpy and live outside the table.
 */
struct kernel_ops {
    const char *name; /* "avx2" (AVX2+FMA+F16C), "portable" or "reference": for logs */

    /* shadow[i] := lerp(shadow[i], param[i], w), param converted exactly to the shadow's type. */
    void (*update_f32)(float *restrict shadow, const float *restrict param, size_t n, float w);
    void (*update_bf16)(float *restrict shadow, const uint16_t *restrict param, size_t n, float w);
    void (*update_f16)(float *restrict shadow, const uint16_t *restrict param, size_t n, float w);
    void (*update_f64)(double *restrict shadow, const double *restrict param, size_t n, double w);
    /* The same, storing each shadow value into old[i] before it changes (one pass over the
     * shadow); NULL in a table without them: kernel_update_save copies first. */
    void (*update_f32_save)(float *restrict shadow, const float *restrict param, size_t n,
                            float w, float *restrict old);
    void (*update_bf16_save)(float *restrict shadow, const uint16_t *restrict param, size_t n,
                             float w, float *restrict old);
    void (*update_f16_save)(float *restrict shadow, const uint16_t *restrict param, size_t n,
                            float w, float *restrict old);
    void (*update_f64_save)(double *restrict shadow, const double *restrict param, size_t n,
                            double w, double *restrict old);

    /*
     * The update with health (struct kernel_health): the same values stored as update_*, except
     * that with skip a non-finite param leaves its shadow element exactly as it was. old, when
     * not NULL, receives each shadow value before it changes, as update_*_save. The sum of
     * squares is gathered in f32 over short blocks and added up in double: accurate to a few
     * parts in a million, which is plenty for a distance.
     */
    void (*update_f32_health)(float *restrict shadow, const float *restrict param, size_t n,
                              float w, float *restrict old, bool skip, struct kernel_health *h);
    void (*update_bf16_health)(float *restrict shadow, const uint16_t *restrict param, size_t n,
                               float w, float *restrict old, bool skip, struct kernel_health *h);
    void (*update_f16_health)(float *restrict shadow, const uint16_t *restrict param, size_t n,
                              float w, float *restrict old, bool skip, struct kernel_health *h);
    void (*update_f64_health)(double *restrict shadow, const double *restrict param, size_t n,
                              double w, double *restrict old, bool skip,
                              struct kernel_health *h);

    /* Exact widening (shadow := params when the EMA starts). f16 NaNs come out quiet. */
    void (*bf16_to_f32)(float *restrict dst, const uint16_t *restrict src, size_t n);
    void (*f16_to_f32)(float *restrict dst, const uint16_t *restrict src, size_t n);

    /* Narrowing with round-to-nearest-even (params := shadow on swap in); overflow gives inf,
     * NaN gives 0x7fc0 in bf16 and a quiet NaN with sign and top payload in f16. */
    void (*f32_to_bf16)(uint16_t *restrict dst, const float *restrict src, size_t n);
    void (*f32_to_f16)(uint16_t *restrict dst, const float *restrict src, size_t n);
};

/* The fastest implementation this CPU runs. Cheap (a few CPUIDs); callers may keep the pointer. */
const struct kernel_ops *kernel_ops_best(void);

/* AVX2+FMA+F16C intrinsics; NULL when this CPU/OS or this build (not x86) lacks them. */
const struct kernel_ops *kernel_ops_avx2(void);

/* Plain C for any CPU (libm fmaf, bit manipulation for f16). Callable anywhere: tests use it. */
const struct kernel_ops *kernel_ops_portable(void);

/* The scalar references: one element at a time, written for obviousness, never for speed. */
const struct kernel_ops *kernel_ops_reference(void);

/* ---- Per-tensor entry points (what the pool calls on each chunk) ------------------------ */

/*
 * The lerp weight of an f32 shadow (the shadow of f32, bf16 and f16 tensors) for a smoothing:
 * as torch's shadow.lerp_(param, 1 - smoothing), whose weight is a Python float, 1 - smoothing
 * is computed in double and rounded to float once. Rounding the smoothing to float first gives
 * another weight (0.999: 0x1.0624dep-10, not 0x1.0624p-10).
 */
float kernel_weight_f32(double smoothing);
/* The lerp weight of an f64 shadow: 1 - smoothing, in double. */
double kernel_weight_f64(double smoothing);

/*
 * The EMA update of n elements of a tensor whose parameter has dtype dt: float dtypes lerp
 * towards param with the weight kernel_weight_f32 or kernel_weight_f64 gives;
 * integer and bool tensors are copied. shadow has dtype_shadow(dt).
 * 0, or -EINVAL for a NULL ops, a bad dtype, NULL pointers with n > 0, or an n whose byte count
 * overflows size_t; nothing is written then.
 */
int kernel_update(const struct kernel_ops *ops, enum dtype dt, void *shadow,
                  const void *param, size_t n, double smoothing);
/* kernel_update that also leaves the shadow's values from before in old (n elements of the
 * shadow's dtype, not overlapping it): what a crash-exact update saves (session.c). */
int kernel_update_save(const struct kernel_ops *ops, enum dtype dt, void *shadow,
                       const void *param, size_t n, double smoothing, void *old);

/*
 * kernel_update (old NULL) or kernel_update_save (old not NULL) that also adds what it saw to h.
 * With skip_nonfinite, a param element that is NaN or infinite leaves its shadow element as it
 * was (bit for bit); every other element gets exactly what kernel_update writes. Integer and
 * bool tensors are copied and add nothing to h: they are not averaged, so they say nothing of
 * the EMA's health. 0 or -EINVAL as kernel_update (h NULL too).
 */
int kernel_update_health(const struct kernel_ops *ops, enum dtype dt, void *shadow,
                         const void *param, size_t n, double smoothing, void *old,
                         bool skip_nonfinite, struct kernel_health *h);

/* shadow := params, widened exactly (when the EMA starts). 0 or -EINVAL as above. */
int kernel_shadow_init(const struct kernel_ops *ops, enum dtype dt, void *shadow,
                       const void *param, size_t n);

/* params := shadow, cast to dt with round-to-nearest-even (swap in). 0 or -EINVAL as above. */
int kernel_swap_in(const struct kernel_ops *ops, enum dtype dt, void *param,
                   const void *shadow, size_t n);

/* ---- Byte copies ------------------------------------------------------------------------ */

/* Copies bytes; 0 bytes with NULL pointers is allowed (plain memcpy would be undefined). */
void kernel_copy(void *restrict dst, const void *restrict src, size_t bytes);

/* Params -> stash before a swap in (named for the pool, which runs it per chunk). */
void kernel_stash_copy(void *restrict stash, const void *restrict param, size_t bytes);

/* Stash -> params on swap out. */
void kernel_stash_restore(void *restrict param, const void *restrict stash, size_t bytes);

/* ---- Scalar references, one element (the tests' ground truth) ---------------------------- */

/* The lerp above, as PyTorch writes it. */
float kernel_ref_lerp_f32(float s, float x, float w);
double kernel_ref_lerp_f64(double s, double x, double w);

/* bf16 <-> f32: a 16-bit shift; RNE by the carry trick, NaN -> 0x7fc0. */
float kernel_ref_bf16_to_f32(uint16_t h);
uint16_t kernel_ref_f32_to_bf16(float f);

/* f16 <-> f32 through double arithmetic (ldexp, rint), independent of the fast paths' bit
 * manipulation. */
float kernel_ref_f16_to_f32(uint16_t h);
uint16_t kernel_ref_f32_to_f16(float f);

/* The array forms, as in the table returned by kernel_ops_reference(). */
void kernel_ref_update_f32(float *restrict shadow, const float *restrict param, size_t n, float w);
void kernel_ref_update_bf16(float *restrict shadow, const uint16_t *restrict param, size_t n,
                            float w);
void kernel_ref_update_f16(float *restrict shadow, const uint16_t *restrict param, size_t n,
                           float w);
void kernel_ref_update_f64(double *restrict shadow, const double *restrict param, size_t n,
                           double w);
/* The health updates, one element at a time; the sum of squares in double. */
void kernel_ref_update_f32_health(float *restrict shadow, const float *restrict param, size_t n,
                                  float w, float *restrict old, bool skip,
                                  struct kernel_health *h);
void kernel_ref_update_bf16_health(float *restrict shadow, const uint16_t *restrict param,
                                   size_t n, float w, float *restrict old, bool skip,
                                   struct kernel_health *h);
void kernel_ref_update_f16_health(float *restrict shadow, const uint16_t *restrict param,
                                  size_t n, float w, float *restrict old, bool skip,
                                  struct kernel_health *h);
void kernel_ref_update_f64_health(double *restrict shadow, const double *restrict param,
                                  size_t n, double w, double *restrict old, bool skip,
                                  struct kernel_health *h);
void kernel_ref_bf16_to_f32_n(float *restrict dst, const uint16_t *restrict src, size_t n);
void kernel_ref_f16_to_f32_n(float *restrict dst, const uint16_t *restrict src, size_t n);
void kernel_ref_f32_to_bf16_n(uint16_t *restrict dst, const float *restrict src, size_t n);
void kernel_ref_f32_to_f16_n(uint16_t *restrict dst, const float *restrict src, size_t n);

#endif /* EMAD_KERNEL_H */
