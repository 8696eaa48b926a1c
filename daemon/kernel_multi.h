/*
 * kernel_multi.h - the EMA update of K profiles in one pass: K shadows of one tensor, each with
 * its own weight, updated while each parameter element is read from memory once.
 *
 * A session with several profiles (issue 13 "Profiles", schedule.h) updates all its due profiles
 * at one event. K single-profile passes would read the params K times: 12K bytes per f32
 * element. This pass moves 4 + 8K (the params once, each shadow read and written); the update
 * is memory-bound, so that is its speed (docs/performance.md "K profiles in one pass").
 *
 * Numerics: every shadow element gets exactly what kernel_update (kernel.h) gives it alone, bit
 * for bit, with that profile's smoothing: per profile the weight w = kernel_weight_f32(smoothing)
 * (f32 shadows) or kernel_weight_f64 (f64), and PyTorch's lerp with its |w| < 0.5 branch taken
 * per profile. Integer and bool tensors are copied into every shadow.
 *
 * Like kernel.h: pure functions over pointers and counts, any sub-range and alignment (the pool
 * may cut a tensor into chunks: shadow[p] and param both point at the chunk's first element),
 * constant tables, thread-safe. The K shadows must not overlap each other or the params.
 */
#ifndef EMAD_KERNEL_MULTI_H
#define EMAD_KERNEL_MULTI_H

#include "dtype.h"
#include "kernel.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The most profiles a session holds, so the most one pass updates. */
#define KERNEL_MULTI_MAX 8

/*
 * One implementation. shadow holds k pointers (1 <= k <= KERNEL_MULTI_MAX), w k weights; n counts
 * elements. The health variants add to h[p] what kernel_update_health would add for profile p
 * alone: the same elems, nonfinite and changed, and a sumsq within a few parts in a million
 * (gathered in f32 over short blocks, as kernel.h's). With skip, a non-finite param element
 * leaves every profile's shadow element as it was, bit for bit.
 */
struct kernel_multi_ops {
    const char *name; /* "avx2", "portable" or "reference": for logs */

    void (*update_f32)(float *const *shadow, unsigned k, const float *param, size_t n,
                       const float *w);
    void (*update_bf16)(float *const *shadow, unsigned k, const uint16_t *param, size_t n,
                        const float *w);
    void (*update_f16)(float *const *shadow, unsigned k, const uint16_t *param, size_t n,
                       const float *w);
    void (*update_f64)(double *const *shadow, unsigned k, const double *param, size_t n,
                       const double *w);

    void (*update_f32_health)(float *const *shadow, unsigned k, const float *param, size_t n,
                              const float *w, bool skip, struct kernel_health *h);
    void (*update_bf16_health)(float *const *shadow, unsigned k, const uint16_t *param, size_t n,
                               const float *w, bool skip, struct kernel_health *h);
    void (*update_f16_health)(float *const *shadow, unsigned k, const uint16_t *param, size_t n,
                              const float *w, bool skip, struct kernel_health *h);
    void (*update_f64_health)(double *const *shadow, unsigned k, const double *param, size_t n,
                              const double *w, bool skip, struct kernel_health *h);
};

/* The fastest this CPU runs (avx2 where kernel_ops_avx2 is, else portable). */
const struct kernel_multi_ops *kernel_multi_ops_best(void);
/* AVX2+FMA+F16C; NULL where the CPU or the build lacks them. */
const struct kernel_multi_ops *kernel_multi_ops_avx2(void);
/* Plain C, blocks of the params converted once and kept in the cache across the profiles. */
const struct kernel_multi_ops *kernel_multi_ops_portable(void);
/* One element at a time, every profile through kernel_ref_lerp_*: the tests' ground truth. */
const struct kernel_multi_ops *kernel_multi_ops_reference(void);

/* ---- Per-tensor entry points (what the pool calls on each chunk) ------------------------ */

/*
 * The update of n elements of a tensor of dtype dt for k profiles: shadow[p] (dtype_shadow(dt))
 * lerps towards param with smoothing[p], as kernel_update(ops, dt, shadow[p], param, n,
 * smoothing[p]) would. 0, or -EINVAL (nothing written) for a NULL ops, shadow or smoothing, a bad
 * dtype, k outside [1, KERNEL_MULTI_MAX], a NULL param or shadow[p] with n > 0, or an n whose
 * byte count overflows size_t.
 */
int kernel_multi_update(const struct kernel_multi_ops *ops, enum dtype dt, void *const *shadow,
                        unsigned k, const void *param, size_t n, const double *smoothing);

/*
 * kernel_multi_update that also adds to h[p] (k entries) what profile p's update saw, as
 * kernel_update_health; with skip_nonfinite a NaN or infinite param element leaves every
 * shadow's element as it was. old, when not NULL, holds k pointers that receive each shadow's
 * values from before (crash-exact updates; copied before the pass). Integer and bool tensors are
 * copied and add nothing to h. 0 or -EINVAL as kernel_multi_update (h NULL, or old[p] NULL with
 * n > 0, too).
 */
int kernel_multi_update_health(const struct kernel_multi_ops *ops, enum dtype dt,
                               void *const *shadow, unsigned k, const void *param, size_t n,
                               const double *smoothing, void *const *old, bool skip_nonfinite,
                               struct kernel_health *h);

#endif /* EMAD_KERNEL_MULTI_H */
