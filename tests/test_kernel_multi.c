/*
 * test_kernel_multi.c - the K-profile update (kernel_multi.h) against K calls of the
 * single-profile kernel (kernel.h), which test_kernel.c proves bit-exact with PyTorch.
 *
 * Every implementation the CPU runs (reference, portable, avx2 where present), every float
 * dtype, K = 1..8, lengths around the vector widths and one large, starts misaligned by 0..3
 * elements, random data with NaN, Inf, denormals, -0 and huge values, weights on both sides of
 * 0.5 and at 0, 0.5 and 1. Shadow values must match bit for bit; the health counts exactly, the
 * distance to a few parts in a million.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_multi.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
/* A whole strip of kernel_multi.c's grouped health pass (MULTI_STRIP, 64K elements) and a part of
 * the next: more than four profiles go in two groups strip by strip, and the seams must not show. */
#define LARGE_N ((1u << 16) + 5)

static const enum dtype float_dts[] = {DTYPE_F32, DTYPE_BF16, DTYPE_F16, DTYPE_F64};
static const size_t lengths[] = {0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 33, 64, 70, 1031, 2053};

/* Smoothings: weights 1 - s on both sides of 0.5, exactly 0.5, 0 and 1, and near them. */
static const double smoothings[] = {0.999, 0.0, 1.0, 0.5, 0.25, 0.75, 0.5000001, 0.4999999,
                                    0.9, 0.1, 1e-8, 0.99999};

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* A value for the tests: mostly ordinary, sometimes a special; huge ones only when wanted. */
static double pick(bool huge)
{
    static const double specials[] = {NAN, -NAN, INFINITY, -INFINITY, -0.0, 0.0, 1e-40, -3e-42,
                                      5e-324, 1e-310, 6e-8, 1.0};
    uint64_t r = rnd();
    if (r % 16 == 0)
        return specials[(r >> 8) % ARRAY_LEN(specials)];
    if (huge && r % 16 == 1)
        return (r & 256) ? 3e38 : -65504.0 * 8;
    return ((double)(int64_t)(rnd() % 2000001) - 1000000.0) / 1000.0 * (1.0 + (double)(r % 7));
}

static void fill(enum dtype dt, void *buf, size_t n, bool huge, bool as_shadow)
{
    enum dtype t = as_shadow ? dtype_shadow(dt) : dt;
    for (size_t i = 0; i < n; i++) {
        double v = pick(huge);
        switch (t) {
        case DTYPE_F32:
            ((float *)buf)[i] = (float)v;
            break;
        case DTYPE_F64:
            ((double *)buf)[i] = v;
            break;
        case DTYPE_BF16:
            ((uint16_t *)buf)[i] = kernel_ref_f32_to_bf16((float)v);
            break;
        case DTYPE_F16:
            ((uint16_t *)buf)[i] = kernel_ref_f32_to_f16((float)v);
            break;
        default:
            ((uint8_t *)buf)[i] = (uint8_t)rnd();
            break;
        }
    }
    /* Signalling NaNs too: skip must keep their bits. */
    if (n > 2 && t == DTYPE_F32)
        memcpy((char *)buf + 4 * (n / 2), &(uint32_t){0x7f800001u}, 4);
}

static const struct kernel_multi_ops *impls[3];
static size_t nimpls;

static int setup(void **state)
{
    (void)state;
    nimpls = 0;
    impls[nimpls++] = kernel_multi_ops_reference();
    impls[nimpls++] = kernel_multi_ops_portable();
    if (kernel_multi_ops_avx2() != NULL)
        impls[nimpls++] = kernel_multi_ops_avx2();
    assert_ptr_equal(kernel_multi_ops_best(),
                     kernel_multi_ops_avx2() ? kernel_multi_ops_avx2()
                                             : kernel_multi_ops_portable());
    return 0;
}

struct bufs {
    size_t n, off, ssz, xsz;
    unsigned k;
    char *x;
    char *s[KERNEL_MULTI_MAX];    /* the initial shadows */
    char *got[KERNEL_MULTI_MAX];  /* what the multi kernel wrote */
    char *want[KERNEL_MULTI_MAX]; /* what K single calls wrote */
    double sm[KERNEL_MULTI_MAX];
};

static void bufs_make(struct bufs *b, enum dtype dt, size_t n, size_t off, unsigned k, bool huge)
{
    b->n = n, b->off = off, b->k = k;
    b->ssz = dtype_size(dtype_shadow(dt)), b->xsz = dtype_size(dt);
    b->x = malloc((n + off + 1) * b->xsz);
    assert_non_null(b->x);
    fill(dt, b->x + off * b->xsz, n, huge, false);
    for (unsigned p = 0; p < k; p++) {
        b->s[p] = malloc((n + off + 1) * b->ssz);
        b->got[p] = malloc((n + off + 1) * b->ssz);
        b->want[p] = malloc((n + off + 1) * b->ssz);
        assert_true(b->s[p] && b->got[p] && b->want[p]);
        fill(dt, b->s[p] + off * b->ssz, n, huge, true);
        b->sm[p] = smoothings[rnd() % ARRAY_LEN(smoothings)];
    }
}

static void bufs_reset(struct bufs *b)
{
    for (unsigned p = 0; p < b->k; p++) {
        memcpy(b->got[p], b->s[p], (b->n + b->off + 1) * b->ssz);
        memcpy(b->want[p], b->s[p], (b->n + b->off + 1) * b->ssz);
    }
}

static void bufs_free(struct bufs *b)
{
    free(b->x);
    for (unsigned p = 0; p < b->k; p++) {
        free(b->s[p]);
        free(b->got[p]);
        free(b->want[p]);
    }
}

static void check_same(const struct bufs *b, const char *impl, enum dtype dt, const char *what)
{
    for (unsigned p = 0; p < b->k; p++) {
        if (memcmp(b->got[p], b->want[p], (b->n + b->off + 1) * b->ssz) != 0) {
            fprintf(stderr, "%s %s %s: n %zu off %zu k %u profile %u (smoothing %.9g) differs\n",
                    impl, dtype_name(dt), what, b->n, b->off, b->k, p, b->sm[p]);
            fail();
        }
    }
}

static void run_update_case(enum dtype dt, size_t n, size_t off, unsigned k)
{
    struct bufs b;
    void *sp[KERNEL_MULTI_MAX];

    bufs_make(&b, dt, n, off, k, true);
    for (size_t m = 0; m < nimpls; m++) {
        bufs_reset(&b);
        for (unsigned p = 0; p < k; p++) {
            assert_int_equal(kernel_update(kernel_ops_reference(), dt, b.want[p] + off * b.ssz,
                                           b.x + off * b.xsz, n, b.sm[p]),
                             0);
            sp[p] = b.got[p] + off * b.ssz;
        }
        assert_int_equal(kernel_multi_update(impls[m], dt, sp, k, b.x + off * b.xsz, n, b.sm), 0);
        check_same(&b, impls[m]->name, dt, "update");
    }
    bufs_free(&b);
}

static void test_multi_update_is_k_single_updates(void **state)
{
    (void)state;
    for (size_t d = 0; d < ARRAY_LEN(float_dts); d++)
        for (unsigned k = 1; k <= KERNEL_MULTI_MAX; k++) {
            for (size_t l = 0; l < ARRAY_LEN(lengths); l++)
                for (size_t off = 0; off < 4; off++)
                    run_update_case(float_dts[d], lengths[l], off, k);
            if (k == 1 || k == 3 || k == 5 || k == 8)
                run_update_case(float_dts[d], LARGE_N, 1, k);
        }
}

static bool sumsq_close(double got, double want)
{
    if (isnan(want))
        return isnan(got);
    if (isinf(want))
        return got == want;
    if (want > 1e30)
        return got > 1e30; /* f32 blocks clamp at FLT_MAX: "huge" either way */
    return fabs(got - want) <= 1e-5 * want + 1e-30;
}

static void run_health_case(enum dtype dt, size_t n, size_t off, unsigned k, bool skip,
                            bool huge)
{
    struct bufs b;
    void *sp[KERNEL_MULTI_MAX];

    bufs_make(&b, dt, n, off, k, huge);
    for (size_t m = 0; m < nimpls; m++) {
        struct kernel_health hw[KERNEL_MULTI_MAX], hg[KERNEL_MULTI_MAX];
        memset(hw, 0, sizeof(hw));
        memset(hg, 0, sizeof(hg));
        bufs_reset(&b);
        for (unsigned p = 0; p < k; p++) {
            assert_int_equal(kernel_update_health(kernel_ops_reference(), dt,
                                                  b.want[p] + off * b.ssz, b.x + off * b.xsz, n,
                                                  b.sm[p], NULL, skip, &hw[p]),
                             0);
            sp[p] = b.got[p] + off * b.ssz;
        }
        /* In two chunks: the sums accumulate and the split changes nothing. */
        size_t cut = n == 0 ? 0 : (size_t)(rnd() % (n + 1));
        assert_int_equal(kernel_multi_update_health(impls[m], dt, sp, k, b.x + off * b.xsz, cut,
                                                    b.sm, NULL, skip, hg),
                         0);
        for (unsigned p = 0; p < k; p++)
            sp[p] = b.got[p] + (off + cut) * b.ssz;
        assert_int_equal(kernel_multi_update_health(impls[m], dt, sp, k,
                                                    b.x + (off + cut) * b.xsz, n - cut, b.sm,
                                                    NULL, skip, hg),
                         0);
        check_same(&b, impls[m]->name, dt, skip ? "health skip" : "health");
        for (unsigned p = 0; p < k; p++) {
            assert_int_equal(hg[p].elems, hw[p].elems);
            assert_int_equal(hg[p].nonfinite, hw[p].nonfinite);
            assert_int_equal(hg[p].changed, hw[p].changed);
            if (!sumsq_close(hg[p].sumsq, hw[p].sumsq)) {
                fprintf(stderr, "%s %s n %zu k %u profile %u: sumsq %.17g, want %.17g\n",
                        impls[m]->name, dtype_name(dt), n, k, p, hg[p].sumsq, hw[p].sumsq);
                fail();
            }
        }
    }
    bufs_free(&b);
}

static void test_multi_health_is_k_single_health_updates(void **state)
{
    (void)state;
    for (size_t d = 0; d < ARRAY_LEN(float_dts); d++)
        for (unsigned k = 1; k <= KERNEL_MULTI_MAX; k++)
            for (int skip = 0; skip < 2; skip++) {
                for (size_t l = 0; l < ARRAY_LEN(lengths); l++)
                    for (size_t off = 0; off < 4; off += 3)
                        run_health_case(float_dts[d], lengths[l], off, k, skip, l % 2 == 0);
                if (k == 2 || k == 5 || k == 8)
                    run_health_case(float_dts[d], LARGE_N, 2, k, skip, false);
            }
}

/* A param that is never finite: with skip, no profile's shadow changes a bit, and changed says
 * so; without, every profile takes it. */
static void test_multi_health_skip_leaves_every_profile(void **state)
{
    (void)state;
    enum { N = 37, K = 5 };
    float x[N], s[K][N], s0[K][N];
    void *sp[K];
    double sm[K] = {0.999, 0.0, 0.5, 0.3, 1.0};

    for (size_t m = 0; m < nimpls; m++) {
        struct kernel_health h[K];
        memset(h, 0, sizeof(h));
        for (int i = 0; i < N; i++)
            x[i] = i % 2 ? NAN : -INFINITY;
        for (int p = 0; p < K; p++) {
            for (int i = 0; i < N; i++)
                s[p][i] = (float)(p * 100 + i) / 7.0f;
            sp[p] = s[p];
        }
        memcpy(s0, s, sizeof(s));
        assert_int_equal(kernel_multi_update_health(impls[m], DTYPE_F32, sp, K, x, N, sm, NULL,
                                                    true, h),
                         0);
        assert_memory_equal(s, s0, sizeof(s));
        for (int p = 0; p < K; p++) {
            assert_int_equal(h[p].elems, N);
            assert_int_equal(h[p].nonfinite, N);
            assert_false(h[p].changed);
            assert_true(h[p].sumsq == 0.0);
        }
        assert_int_equal(kernel_multi_update_health(impls[m], DTYPE_F32, sp, K, x, N, sm, NULL,
                                                    false, h),
                         0);
        for (int p = 0; p < K; p++)
            assert_true(h[p].changed);
    }
}

static void test_multi_dispatch_copies_integers_saves_old_and_checks_arguments(void **state)
{
    (void)state;
    int32_t xi[9] = {1, -2, 3, 4, 5, 6, 7, 8, 9}, si[3][9];
    void *sp[3] = {si[0], si[1], si[2]};
    double sm[3] = {0.5, 0.9, 0.0};
    const struct kernel_multi_ops *ops = kernel_multi_ops_best();
    struct kernel_health h[3];

    memset(si, 0x7f, sizeof(si));
    memset(h, 0, sizeof(h));
    assert_int_equal(kernel_multi_update(ops, DTYPE_I32, sp, 3, xi, 9, sm), 0);
    for (int p = 0; p < 3; p++)
        assert_memory_equal(si[p], xi, sizeof(xi));
    memset(si, 0, sizeof(si));
    assert_int_equal(kernel_multi_update_health(ops, DTYPE_I32, sp, 3, xi, 9, sm, NULL, true, h),
                     0);
    assert_memory_equal(si[2], xi, sizeof(xi));
    assert_int_equal(h[0].elems, 0); /* integers say nothing of the EMA's health */

    /* old receives each shadow from before; the shadows are updated as without it. */
    float x[11], s[2][11], o[2][11], w2[2][11];
    void *fp[2] = {s[0], s[1]}, *op[2] = {o[0], o[1]};
    double fs[2] = {0.999, 0.25};
    for (int i = 0; i < 11; i++) {
        x[i] = (float)i;
        s[0][i] = s[1][i] = w2[0][i] = w2[1][i] = (float)(100 - i);
    }
    for (int p = 0; p < 2; p++)
        assert_int_equal(kernel_update(kernel_ops_reference(), DTYPE_F32, w2[p], x, 11, fs[p]),
                         0);
    memset(h, 0, sizeof(h));
    assert_int_equal(kernel_multi_update_health(ops, DTYPE_F32, fp, 2, x, 11, fs, op, false, h),
                     0);
    for (int i = 0; i < 11; i++)
        assert_true(o[0][i] == (float)(100 - i) && o[1][i] == (float)(100 - i));
    assert_memory_equal(s, w2, sizeof(s));

    /* Refusals write nothing. */
    float before[2][11];
    memcpy(before, s, sizeof(s));
    assert_int_equal(kernel_multi_update(NULL, DTYPE_F32, fp, 2, x, 11, fs), -EINVAL);
    assert_int_equal(kernel_multi_update(ops, DTYPE_F32, fp, 0, x, 11, fs), -EINVAL);
    assert_int_equal(kernel_multi_update(ops, DTYPE_F32, fp, KERNEL_MULTI_MAX + 1, x, 11, fs),
                     -EINVAL);
    assert_int_equal(kernel_multi_update(ops, (enum dtype)999, fp, 2, x, 11, fs), -EINVAL);
    assert_int_equal(kernel_multi_update(ops, DTYPE_F32, fp, 2, NULL, 11, fs), -EINVAL);
    assert_int_equal(kernel_multi_update(ops, DTYPE_F32, fp, 2, x, 11, NULL), -EINVAL);
    assert_int_equal(kernel_multi_update(ops, DTYPE_F32, NULL, 2, x, 11, fs), -EINVAL);
    assert_int_equal(kernel_multi_update(ops, DTYPE_F32, fp, 2, x, SIZE_MAX / 2, fs), -EINVAL);
    void *withnull[2] = {s[0], NULL};
    assert_int_equal(kernel_multi_update(ops, DTYPE_F32, withnull, 2, x, 11, fs), -EINVAL);
    assert_int_equal(kernel_multi_update_health(ops, DTYPE_F32, fp, 2, x, 11, fs, NULL, false,
                                                NULL),
                     -EINVAL);
    void *oldnull[2] = {o[0], NULL};
    assert_int_equal(kernel_multi_update_health(ops, DTYPE_F32, fp, 2, x, 11, fs, oldnull, false,
                                                h),
                     -EINVAL);
    assert_memory_equal(s, before, sizeof(s));
    /* Nothing to do is fine, even with NULL data pointers. */
    void *nulls[2] = {NULL, NULL};
    assert_int_equal(kernel_multi_update(ops, DTYPE_F32, nulls, 2, NULL, 0, fs), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_multi_update_is_k_single_updates),
        cmocka_unit_test(test_multi_health_is_k_single_health_updates),
        cmocka_unit_test(test_multi_health_skip_leaves_every_profile),
        cmocka_unit_test(test_multi_dispatch_copies_integers_saves_old_and_checks_arguments),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
