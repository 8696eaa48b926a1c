/*
 * test_kernel_health.c - the update kernels with health (kernel_update_health): the values they
 * store, what they count and the distance they gather.
 *
 * Every implementation the CPU runs (portable always, avx2 where the CPU has it) and the
 * reference, every float param dtype, lengths 0..70 and one large length, starts misaligned by
 * 0..3 elements, guard bytes around the shadow. The plain update (kernel_update) is the ground
 * truth for the values: test_kernel.c proves it bit-exact with PyTorch.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel.h"

#define LARGE_N ((1u << 20) + 5)
#define GUARD 64
#define GUARD_FILL 0xa5
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const enum dtype float_dts[] = {DTYPE_F32, DTYPE_BF16, DTYPE_F16, DTYPE_F64};

static uint64_t rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Ordinary magnitudes, 2^-8 .. 2^8 either sign: squares that nothing overflows. */
static double ordinary(uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    double m = 1.0 + (double)(r >> 12) / 4503599627370496.0;
    return ldexp((r & 1) ? -m : m, (int)((r >> 1) % 17) - 8);
}

/* The implementations to check: those this CPU runs, and the reference itself. */
static size_t impls(const struct kernel_ops *out[3])
{
    size_t n = 0;
    out[n++] = kernel_ops_reference();
    out[n++] = kernel_ops_portable();
    if (kernel_ops_avx2() != NULL)
        out[n++] = kernel_ops_avx2();
    return n;
}

/* One param element of dtype dt holding v (rounded to it), or a non-finite pattern k:
 * 0 quiet NaN, 1 +inf, 2 -inf, 3 a signalling NaN, 4 a negative NaN. */
static void put_param(enum dtype dt, void *p, size_t i, double v)
{
    switch (dt) {
    case DTYPE_F32:
        ((float *)p)[i] = (float)v;
        break;
    case DTYPE_BF16:
        ((uint16_t *)p)[i] = kernel_ref_f32_to_bf16((float)v);
        break;
    case DTYPE_F16:
        ((uint16_t *)p)[i] = kernel_ref_f32_to_f16((float)v);
        break;
    default:
        ((double *)p)[i] = v;
    }
}

static void put_nonfinite(enum dtype dt, void *p, size_t i, unsigned k)
{
    static const uint32_t f32[] = {0x7fc00000, 0x7f800000, 0xff800000, 0x7f800001, 0xffc00000};
    static const uint16_t bf16[] = {0x7fc0, 0x7f80, 0xff80, 0x7f81, 0xffc0};
    static const uint16_t f16[] = {0x7e00, 0x7c00, 0xfc00, 0x7c01, 0xfe00};
    static const uint64_t f64[] = {0x7ff8000000000000ull, 0x7ff0000000000000ull,
                                   0xfff0000000000000ull, 0x7ff0000000000001ull,
                                   0xfff8000000000000ull};
    k %= 5;
    switch (dt) {
    case DTYPE_F32:
        memcpy((float *)p + i, &f32[k], 4);
        break;
    case DTYPE_BF16:
        ((uint16_t *)p)[i] = bf16[k];
        break;
    case DTYPE_F16:
        ((uint16_t *)p)[i] = f16[k];
        break;
    default:
        memcpy((double *)p + i, &f64[k], 8);
    }
}

/* The param's value as the shadow's type sees it, in double. */
static double param_value(enum dtype dt, const void *p, size_t i)
{
    switch (dt) {
    case DTYPE_F32:
        return ((const float *)p)[i];
    case DTYPE_BF16:
        return kernel_ref_bf16_to_f32(((const uint16_t *)p)[i]);
    case DTYPE_F16:
        return kernel_ref_f16_to_f32(((const uint16_t *)p)[i]);
    default:
        return ((const double *)p)[i];
    }
}

static double shadow_value(enum dtype dt, const void *s, size_t i)
{
    return dt == DTYPE_F64 ? ((const double *)s)[i] : ((const float *)s)[i];
}

static bool shadow_bits_equal(enum dtype dt, const void *a, const void *b, size_t i)
{
    size_t sz = dtype_size(dtype_shadow(dt));
    return memcmp((const char *)a + i * sz, (const char *)b + i * sz, sz) == 0;
}

/* A shadow of n elements, off elements past a 64-byte boundary, with guards either side. */
struct buf {
    unsigned char *base, *data;
    size_t bytes, total;
};

static struct buf buf_new(size_t n, size_t elem, size_t off)
{
    struct buf b;
    b.bytes = n * elem;
    b.total = GUARD + off * elem + b.bytes + GUARD;
    b.base = aligned_alloc(64, (b.total + 63) / 64 * 64);
    assert_non_null(b.base);
    memset(b.base, GUARD_FILL, b.total);
    b.data = b.base + GUARD + off * elem;
    return b;
}

static void buf_check_free(struct buf *b)
{
    for (unsigned char *p = b->base; p < b->data; p++)
        assert_int_equal(*p, GUARD_FILL);
    for (unsigned char *p = b->data + b->bytes; p < b->base + b->total; p++)
        assert_int_equal(*p, GUARD_FILL);
    free(b->base);
}

/* A case: params (with non-finite values where bad[i]) and a shadow, both of n elements. */
struct fixture {
    enum dtype dt;
    size_t n;
    struct buf shadow, old;
    void *param, *before, *plain;
    bool *bad;
    uint64_t nbad;
};

/* density: one element in density is non-finite (0: none); the first and the last are too
 * when ends is true (the last is in the scalar tail of every vector loop). */
static void fixture_make(struct fixture *f, enum dtype dt, size_t n, size_t off, unsigned density,
                         bool ends, uint64_t seed, const struct kernel_ops *ops, double smoothing)
{
    size_t ssz = dtype_size(dtype_shadow(dt));
    uint64_t rng = seed;

    f->dt = dt;
    f->n = n;
    f->shadow = buf_new(n, ssz, off);
    f->old = buf_new(n, ssz, (off + 1) & 3);
    f->param = malloc(n * dtype_size(dt) + 8);
    f->before = malloc(n * ssz + 8);
    f->plain = malloc(n * ssz + 8);
    f->bad = calloc(n + 1, 1);
    assert_true(f->param && f->before && f->plain && f->bad);
    f->nbad = 0;
    for (size_t i = 0; i < n; i++) {
        double s = ordinary(&rng);
        if (dt == DTYPE_F64)
            ((double *)f->shadow.data)[i] = s;
        else
            ((float *)f->shadow.data)[i] = (float)s;
        uint64_t r = rng_next(&rng);
        bool bad = (density && r % density == 0) || (ends && (i == 0 || i == n - 1));
        if (bad) {
            put_nonfinite(dt, f->param, i, (unsigned)(r >> 32));
            f->nbad++;
            if ((r >> 40) & 1) { /* -0 must keep its sign bit when skipped */
                if (dt == DTYPE_F64)
                    ((double *)f->shadow.data)[i] = -0.0;
                else
                    ((float *)f->shadow.data)[i] = -0.0f;
            }
        } else {
            put_param(dt, f->param, i, ordinary(&rng));
        }
        f->bad[i] = bad;
    }
    memcpy(f->before, f->shadow.data, n * ssz);
    memcpy(f->plain, f->shadow.data, n * ssz);
    assert_int_equal(kernel_update(ops, dt, f->plain, f->param, n, smoothing), 0);
}

static void fixture_free(struct fixture *f)
{
    buf_check_free(&f->shadow);
    buf_check_free(&f->old);
    free(f->param);
    free(f->before);
    free(f->plain);
    free(f->bad);
}

/* The distance's sum of squares, computed here in long double. */
static double reference_sumsq(const struct fixture *f)
{
    long double t = 0;
    for (size_t i = 0; i < f->n; i++) {
        if (f->bad[i])
            continue;
        long double d = (long double)param_value(f->dt, f->param, i) -
                        (long double)shadow_value(f->dt, f->before, i);
        t += d * d;
    }
    return (double)t;
}

static void check_sumsq(const struct fixture *f, const struct kernel_health *h, const char *who)
{
    double want = reference_sumsq(f);
    double tol = (f->dt == DTYPE_F64 ? 1e-12 : 2e-5) * want + 1e-30;
    if (!(fabs(h->sumsq - want) <= tol)) /* a NaN fails too */
        fail_msg("%s %s n=%zu: sum of squares %.17g, want %.17g", who, dtype_name(f->dt), f->n,
                 h->sumsq, want);
}

/* The lengths: every one up to 70 (every vector tail), and one past a few f32 blocks. */
static size_t next_n(size_t n)
{
    return n < 70 ? n + 1 : n == 70 ? LARGE_N : 0;
}

/* Without non-finite params, the health update stores exactly what the plain one does, with
 * either policy, saving the old values or not; the counts and the distance are right. */
static void test_health_update_stores_what_update_stores(void **state)
{
    (void)state;
    const struct kernel_ops *ops[3];
    size_t nops = impls(ops);
    static const double smoothings[] = {0.999, 0.25, 0.0};

    for (size_t o = 0; o < nops; o++)
        for (size_t d = 0; d < ARRAY_LEN(float_dts); d++)
            for (size_t n = 0, k = 0; n != 0 || k == 0; n = next_n(n), k++)
                for (unsigned v = 0; v < 4; v++) {
                    struct fixture f;
                    struct kernel_health h = {0};
                    double sm = smoothings[(n + v) % ARRAY_LEN(smoothings)];
                    fixture_make(&f, float_dts[d], n, v, 0, false, n * 7 + v, ops[o], sm);
                    assert_int_equal(kernel_update_health(ops[o], f.dt, f.shadow.data, f.param, n,
                                                          sm, (v & 1) ? f.old.data : NULL, v & 2,
                                                          &h),
                                     0);
                    for (size_t i = 0; i < n; i++) {
                        if (!shadow_bits_equal(f.dt, f.shadow.data, f.plain, i))
                            fail_msg("%s %s n=%zu element %zu differs from kernel_update",
                                     ops[o]->name, dtype_name(f.dt), n, i);
                        if ((v & 1) && !shadow_bits_equal(f.dt, f.old.data, f.before, i))
                            fail_msg("%s %s n=%zu old %zu is not the shadow before", ops[o]->name,
                                     dtype_name(f.dt), n, i);
                    }
                    assert_int_equal(h.elems, n);
                    assert_int_equal(h.nonfinite, 0);
                    check_sumsq(&f, &h, ops[o]->name);
                    if (!(v & 1))
                        memset(f.old.data, GUARD_FILL, f.old.bytes);
                    fixture_free(&f);
                    if (n == LARGE_N && v == 1)
                        break; /* the large case once per policy is enough */
                }
}

/* With skip, a non-finite param leaves its shadow element bit for bit as it was, at any place
 * (first, last, inside a vector, in the tail); every other element is the plain update's. With
 * apply, every element is the plain update's, and the non-finite ones are NaN or inf: the EMA
 * is poisoned, which is what apply asks for. Either way they are counted, and left out of the
 * distance. */
static void test_health_nonfinite_params_are_counted_and_skipped(void **state)
{
    (void)state;
    const struct kernel_ops *ops[3];
    size_t nops = impls(ops);

    for (size_t o = 0; o < nops; o++)
        for (size_t d = 0; d < ARRAY_LEN(float_dts); d++)
            for (size_t n = 0, k = 0; n != 0 || k == 0; n = next_n(n), k++)
                for (unsigned v = 0; v < 4; v++) {
                    struct fixture f;
                    struct kernel_health h = {0};
                    bool skip = !(v & 2);
                    /* v 3: sparse, most vector steps without any. */
                    unsigned density = v == 3 ? 2999 : 5 + v;
                    fixture_make(&f, float_dts[d], n, v, density, true, n * 13 + v, ops[o], 0.9);
                    void *old = (v & 1) ? f.old.data : NULL;
                    assert_int_equal(kernel_update_health(ops[o], f.dt, f.shadow.data, f.param, n,
                                                          0.9, old, skip, &h),
                                     0);
                    for (size_t i = 0; i < n; i++) {
                        const void *want = skip && f.bad[i] ? f.before : f.plain;
                        if (!shadow_bits_equal(f.dt, f.shadow.data, want, i))
                            fail_msg("%s %s n=%zu %s: element %zu (param %s) is wrong",
                                     ops[o]->name, dtype_name(f.dt), n, skip ? "skip" : "apply", i,
                                     f.bad[i] ? "non-finite" : "finite");
                        if (!skip && f.bad[i])
                            assert_false(isfinite(shadow_value(f.dt, f.shadow.data, i)));
                        if (old != NULL && !shadow_bits_equal(f.dt, old, f.before, i))
                            fail_msg("%s: old %zu is not the shadow before", ops[o]->name, i);
                    }
                    assert_int_equal(h.elems, n);
                    assert_int_equal(h.nonfinite, f.nbad);
                    check_sumsq(&f, &h, ops[o]->name);
                    assert_int_equal(h.changed, n > f.nbad || (!skip && n > 0));
                    if (old == NULL)
                        memset(f.old.data, GUARD_FILL, f.old.bytes);
                    fixture_free(&f);
                }
}

/* Nothing moves with a smoothing of 1, nor when the step is below half an ulp of the shadow
 * (a param one bf16 ulp above a shadow of 1, with a weight of 1e-9, 2^-50 in f64): changed is
 * false. One element that does move, in a vector or in the tail, makes it true. */
static void test_health_changed_is_false_for_updates_that_change_nothing(void **state)
{
    (void)state;
    const struct kernel_ops *ops[3];
    size_t nops = impls(ops);

    for (size_t o = 0; o < nops; o++)
        for (size_t d = 0; d < ARRAY_LEN(float_dts); d++)
            for (size_t n = 1; n <= 67; n += 11) {
                struct fixture f;
                struct kernel_health h = {0};
                fixture_make(&f, float_dts[d], n, 1, 0, false, n, ops[o], 1.0);
                assert_int_equal(kernel_update_health(ops[o], f.dt, f.shadow.data, f.param, n, 1.0,
                                                      NULL, true, &h),
                                 0);
                assert_false(h.changed);
                assert_memory_equal(f.shadow.data, f.before, f.shadow.bytes);
                assert_true(h.sumsq > 0); /* the distance is there all the same */
                memset(f.old.data, GUARD_FILL, f.old.bytes);
                fixture_free(&f);

                /* The rounding trap: the step rounds away. */
                for (size_t moved = 0; moved <= n; moved += n) {
                    size_t ssz = dtype_size(dtype_shadow(float_dts[d]));
                    struct buf sh = buf_new(n, ssz, 2);
                    void *pa = malloc(n * 8);
                    for (size_t i = 0; i < n; i++) {
                        if (float_dts[d] == DTYPE_F64)
                            ((double *)sh.data)[i] = 1.0;
                        else
                            ((float *)sh.data)[i] = 1.0f;
                        /* 1 + 2^-7: one bf16 ulp above 1, exact in every dtype */
                        put_param(float_dts[d], pa, i, i + 1 == moved ? 60000.0 : 1.0078125);
                    }
                    struct kernel_health h2 = {0};
                    double sm = float_dts[d] == DTYPE_F64 ? 1.0 - ldexp(1.0, -50) : 1.0 - 1e-9;
                    assert_int_equal(kernel_update_health(ops[o], float_dts[d], sh.data, pa, n, sm,
                                                          NULL, true, &h2),
                                     0);
                    assert_int_equal(h2.changed, moved != 0);
                    free(pa);
                    buf_check_free(&sh);
                }
            }
    /* Past the first blocks (the vector loops stop comparing once a block found a change):
     * one moved element far in, or none. */
    for (size_t o = 0; o < nops; o++)
        for (size_t d = 0; d < ARRAY_LEN(float_dts); d++)
            for (size_t moved = 0; moved <= 4000; moved += 3001) {
                size_t n = 5003, ssz = dtype_size(dtype_shadow(float_dts[d]));
                struct buf sh = buf_new(n, ssz, 0);
                void *pa = malloc(n * 8);
                for (size_t i = 0; i < n; i++) {
                    if (float_dts[d] == DTYPE_F64)
                        ((double *)sh.data)[i] = 1.0;
                    else
                        ((float *)sh.data)[i] = 1.0f;
                    put_param(float_dts[d], pa, i, i == moved && moved ? 60000.0 : 1.0078125);
                }
                struct kernel_health h = {0};
                double sm = float_dts[d] == DTYPE_F64 ? 1.0 - ldexp(1.0, -50) : 1.0 - 1e-9;
                assert_int_equal(
                    kernel_update_health(ops[o], float_dts[d], sh.data, pa, n, sm, NULL, true, &h),
                    0);
                if (h.changed != (moved != 0))
                    fail_msg("%s %s: changed %d with element %zu moved", ops[o]->name,
                             dtype_name(float_dts[d]), h.changed, moved);
                free(pa);
                buf_check_free(&sh);
            }
}

/* Calls add up: two halves give the counts and the flag of one call, so per-chunk results can be
 * summed. Integer tensors are copied and add nothing; bad arguments write nothing. */
/* A shadow element holding a signalling NaN, under a non-finite param and skip, keeps its
 * exact bits (an arithmetic path would quieten it), at every smoothing and every position of a
 * vector; and a shadow that is finite but 1e20 away from finite params gives a huge, finite
 * distance (an f32 square would overflow to +Inf, which means a poisoned shadow), while a shadow
 * holding +Inf still gives +Inf. */
static void test_health_skip_keeps_signalling_nans_and_huge_distances_stay_finite(void **state)
{
    const struct kernel_ops *ops[3];
    size_t nimpl = impls(ops);
    const uint32_t snan = 0x7f800001u, qnan = 0x7fc00000u;
    const double smoothings[] = {0.999, 0.5, 0.1};
    (void)state;

    for (size_t k = 0; k < nimpl; k++) {
        for (size_t m = 0; m < ARRAY_LEN(smoothings); m++) {
            enum { N = 37 };
            float sh[N], pa[N];
            for (size_t i = 0; i < N; i++) {
                sh[i] = (float)i;
                pa[i] = (float)i + 1;
            }
            size_t at[] = {0, 5, 8, 31, 36};
            for (size_t j = 0; j < ARRAY_LEN(at); j++) {
                memcpy(&sh[at[j]], &snan, 4);
                memcpy(&pa[at[j]], &qnan, 4);
            }
            struct kernel_health h = {0};
            assert_int_equal(
                kernel_update_health(ops[k], DTYPE_F32, sh, pa, N, smoothings[m], NULL, true, &h),
                0);
            for (size_t j = 0; j < ARRAY_LEN(at); j++) {
                uint32_t bits;
                memcpy(&bits, &sh[at[j]], 4);
                if (bits != snan)
                    fail_msg("impl %zu, smoothing %g, element %zu: %08x, not the signalling NaN", k,
                             smoothings[m], at[j], bits);
            }
            assert_int_equal(h.nonfinite, ARRAY_LEN(at));
        }

        enum { M = 4096 + 3 };
        float *sh = malloc(M * sizeof(float)), *pa = malloc(M * sizeof(float));
        assert_non_null(sh);
        assert_non_null(pa);
        for (size_t i = 0; i < M; i++) {
            sh[i] = 1e20f;
            pa[i] = -1e20f;
        }
        struct kernel_health h = {0};
        assert_int_equal(kernel_update_health(ops[k], DTYPE_F32, sh, pa, M, 0.9, NULL, true, &h),
                         0);
        assert_true(isfinite(h.sumsq) && h.sumsq > 1e38);
        for (size_t i = 0; i < M; i++)
            sh[i] = 1e20f;
        sh[1000] = INFINITY;
        memset(&h, 0, sizeof(h));
        assert_int_equal(kernel_update_health(ops[k], DTYPE_F32, sh, pa, M, 0.9, NULL, true, &h),
                         0);
        assert_false(isfinite(h.sumsq)); /* the shadow holds a non-finite value: poisoned */
        free(sh);
        free(pa);
    }
}

static void test_health_dispatch_accumulates_and_checks_arguments(void **state)
{
    (void)state;
    const struct kernel_ops *ops = kernel_ops_best();
    struct fixture f;
    struct kernel_health one = {0}, two = {0};
    size_t n = 1000;

    fixture_make(&f, DTYPE_BF16, n, 0, 7, true, 99, ops, 0.5);
    memcpy(f.old.data, f.shadow.data, f.shadow.bytes); /* scratch: a second shadow */
    assert_int_equal(
        kernel_update_health(ops, DTYPE_BF16, f.shadow.data, f.param, n, 0.5, NULL, true, &one), 0);
    float *s2 = (float *)f.old.data;
    uint16_t *p = f.param;
    assert_int_equal(kernel_update_health(ops, DTYPE_BF16, s2, p, 333, 0.5, NULL, true, &two), 0);
    assert_int_equal(
        kernel_update_health(ops, DTYPE_BF16, s2 + 333, p + 333, n - 333, 0.5, NULL, true, &two),
        0);
    assert_memory_equal(s2, f.shadow.data, n * 4);
    assert_int_equal(one.elems, two.elems);
    assert_int_equal(one.nonfinite, two.nonfinite);
    assert_int_equal(one.changed, two.changed);
    assert_true(fabs(one.sumsq - two.sumsq) <= 1e-5 * one.sumsq);
    memset(f.old.data, GUARD_FILL, f.old.bytes);
    fixture_free(&f);

    int64_t si[3] = {1, 2, 3}, pi[3] = {4, 5, 6};
    struct kernel_health h = {0};
    assert_int_equal(kernel_update_health(ops, DTYPE_I64, si, pi, 3, 0.5, NULL, true, &h), 0);
    assert_memory_equal(si, pi, sizeof(si));
    assert_int_equal(h.elems, 0);
    assert_false(h.changed);
    assert_int_equal(kernel_update_health(ops, DTYPE_F32, si, pi, 1, 0.5, NULL, true, NULL),
                     -EINVAL);
    assert_int_equal(kernel_update_health(NULL, DTYPE_F32, si, pi, 1, 0.5, NULL, true, &h),
                     -EINVAL);
    assert_int_equal(kernel_update_health(ops, DTYPE_COUNT, si, pi, 1, 0.5, NULL, true, &h),
                     -EINVAL);
    assert_memory_equal(si, pi, sizeof(si));
}

/* One non-finite param alone in a block of 1032 elements (the vector loop's block: 1024, and one
 * half register of eight more), at every place and of every kind: the block's finiteness test,
 * which looks at sixteen 16-bit params to a register, finds it wherever it sits, and only that
 * element is skipped and counted. */
static void test_health_finds_a_lone_nonfinite_at_every_place(void **state)
{
    (void)state;
    const struct kernel_ops *ops[3];
    size_t nops = impls(ops);
    const size_t n = 1032;

    for (size_t o = 0; o < nops; o++)
        for (size_t d = 0; d < ARRAY_LEN(float_dts); d++) {
            struct fixture f;
            fixture_make(&f, float_dts[d], n, 0, 0, false, 77 + d, ops[o], 0.9);
            size_t ssz = dtype_size(dtype_shadow(f.dt)), psz = dtype_size(f.dt);
            void *keep = malloc(n * psz), *start = malloc(n * ssz);
            assert_non_null(keep);
            assert_non_null(start);
            memcpy(keep, f.param, n * psz);
            memcpy(start, f.shadow.data, n * ssz);
            for (size_t at = 0; at < n; at++) {
                struct kernel_health h = {0};
                memcpy(f.shadow.data, start, n * ssz);
                put_nonfinite(f.dt, f.param, at, (unsigned)at);
                assert_int_equal(kernel_update_health(ops[o], f.dt, f.shadow.data, f.param, n,
                                                      0.9, NULL, true, &h),
                                 0);
                if (h.nonfinite != 1)
                    fail_msg("%s %s: a non-finite param at %zu counted %llu times", ops[o]->name,
                             dtype_name(f.dt), at, (unsigned long long)h.nonfinite);
                for (size_t i = 0; i < n; i++)
                    if (!shadow_bits_equal(f.dt, f.shadow.data, i == at ? f.before : f.plain, i))
                        fail_msg("%s %s: non-finite at %zu, element %zu is wrong", ops[o]->name,
                                 dtype_name(f.dt), at, i);
                memcpy((char *)f.param + at * psz, (char *)keep + at * psz, psz);
            }
            free(keep);
            free(start);
            fixture_free(&f);
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health_update_stores_what_update_stores),
        cmocka_unit_test(test_health_nonfinite_params_are_counted_and_skipped),
        cmocka_unit_test(test_health_changed_is_false_for_updates_that_change_nothing),
        cmocka_unit_test(test_health_dispatch_accumulates_and_checks_arguments),
        cmocka_unit_test(test_health_skip_keeps_signalling_nans_and_huge_distances_stay_finite),
        cmocka_unit_test(test_health_finds_a_lone_nonfinite_at_every_place),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
