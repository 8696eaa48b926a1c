/*
 * test_phema.c - post-hoc EMA mathematics (proto/phema.c): sigma_rel <-> gamma, the update's
 * beta, the closed-form inner product against brute force, and the solver, ill-conditioned
 * cases included.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "durable.h"
#include "emaclient.h"
#include "phema.h"
#include "safetensors.h"

#include <fcntl.h>
#include <unistd.h>

static void test_gamma_and_sigma_rel_round_trip_and_match_edm2(void **state)
{
    double g, s;
    (void)state;

    for (double sigma = 1e-4; sigma < PHEMA_SIGMA_REL_MAX; sigma *= 1.07) {
        assert_int_equal(phema_gamma(sigma, &g), 0);
        assert_true(g > 0);
        /* A root of the cubic ... */
        double c = 1 / (sigma * sigma);
        double f = g * g * g + 7 * g * g + (16 - c) * g + (12 - c);
        assert_true(fabs(f) <= 1e-12 * c * (g + 1));
        /* ... and the way back. */
        assert_int_equal(phema_sigma_rel(g, &s), 0);
        if (fabs(s - sigma) > 1e-12 * sigma)
            fail_msg("sigma_rel %.17g -> gamma %.17g -> %.17g", sigma, g, s);
    }
    /* EDM2's two profiles: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94. */
    assert_int_equal(phema_gamma(0.05, &g), 0);
    assert_true(fabs(g - 16.97) < 0.005);
    assert_int_equal(phema_gamma(0.10, &g), 0);
    assert_true(fabs(g - 6.94) < 0.005);
    assert_int_equal(phema_gamma(0.2886, &g), 0);
    assert_true(g > 0 && g < 0.01);
    /* 1e-200: sigma_rel^-2 overflows, and no finite gamma is its answer. */
    const double bad[] = {0.0, -0.1, PHEMA_SIGMA_REL_MAX, 0.3, NAN, INFINITY, 1e-200};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(phema_gamma(bad[i], &g), -EINVAL);
    assert_int_equal(phema_sigma_rel(0.0, &s), -EINVAL);
    assert_int_equal(phema_sigma_rel(-0.5, &s), -EINVAL);
    assert_int_equal(phema_sigma_rel(INFINITY, &s), -EINVAL);
}

static void test_beta_copies_first_and_follows_the_power_law(void **state)
{
    double beta;
    (void)state;

    assert_int_equal(phema_beta(7.0, 5, 5, &beta), 0);
    assert_true(beta == 0.0);
    assert_int_equal(phema_beta(1.0, 10, 1, &beta), 0);
    assert_true(fabs(beta - 0.81) < 1e-15);
    assert_int_equal(phema_beta(6.94, 1000, 4, &beta), 0);
    assert_true(fabs(beta - pow(0.996, 7.94)) < 1e-15);
    assert_int_equal(phema_beta(1.0, 10, 0, &beta), -EINVAL);
    assert_int_equal(phema_beta(1.0, 10, 11, &beta), -EINVAL);
    assert_int_equal(phema_beta(0.0, 10, 1, &beta), -EINVAL);
}

/*
 * The weight each step's parameters get in the power EMA read at step t, found by running the
 * update recurrence itself (shadow = beta shadow + (1 - beta) param, beta = (1 - 1/b)^(g+1))
 * on one-hot parameters: w[k-1] is the weight of step k. With time unit u (a step is u long),
 * w[k-1] / u approximates the continuous profile on the step.
 */
static void ema_weights(double g, int t, double *w)
{
    memset(w, 0, (size_t)t * sizeof(*w));
    for (int b = 1; b <= t; b++) {
        double beta;
        assert_int_equal(phema_beta(g, (uint64_t)b, 1, &beta), 0);
        for (int k = 0; k < b - 1; k++)
            w[k] *= beta;
        w[b - 1] = 1 - beta;
    }
}

/* The profile (gamma g read at time t) at tau, straight from its definition. */
static double profile(double g, double t, double tau)
{
    return tau > t ? 0.0 : (g + 1) * pow(tau, g) / pow(t, g + 1);
}

/* Composite Simpson over [a, b] of f1 * f2 (or of (sum_i c_i p_i - p_T)^2, see below). */
static double simpson_dot(double ga, double ta, double gb, double tb)
{
    /* tau = m v^4 (dtau = 4 m v^3 dv) smooths tau^(ga+gb) at 0 for small gammas, where plain
     * Simpson converges slowly. */
    double m = fmin(ta, tb), h = 1.0 / 20000, s = 0;
    for (int i = 0; i <= 20000; i++) {
        double w = i == 0 || i == 20000 ? 1 : i % 2 ? 4 : 2;
        double v = i * h, tau = m * v * v * v * v;
        s += w * profile(ga, ta, tau) * profile(gb, tb, tau) * 4 * m * v * v * v;
    }
    return s * h / 3;
}

static void test_the_closed_form_inner_product_matches_brute_force(void **state)
{
    static double wa[3000], wb[3000];
    const double gammas[] = {0.05, 0.5, 2.0, 6.94, 16.97, 40.0};
    const int times[] = {300, 1000, 2999};
    double worst_sim = 0, worst_int = 0;
    (void)state;

    for (size_t ia = 0; ia < 6; ia++)
        for (size_t ib = 0; ib < 6; ib++)
            for (size_t ja = 0; ja < 3; ja++)
                for (size_t jb = 0; jb < 3; jb++) {
                    double ga = gammas[ia], gb = gammas[ib];
                    int ta = times[ja], tb = times[jb];
                    double closed = phema_dot(ga, ta, gb, tb);
                    /* Numerical integral of the definition: rounding-level agreement. */
                    double num = simpson_dot(ga, ta, gb, tb);
                    double e = fabs(num - closed) / closed;
                    worst_int = fmax(worst_int, e);
                    if (e > 1e-9)
                        fail_msg("(%g@%d, %g@%d): closed %.17g, Simpson %.17g", ga, ta, gb, tb,
                                 closed, num);
                    if (ia > 4 || ib > 4 || ja == 2 || jb == 2)
                        continue; /* the O(t^2) simulation on a subset */
                    ema_weights(ga, ta, wa);
                    ema_weights(gb, tb, wb);
                    double sim = 0;
                    for (int k = 0; k < (ta < tb ? ta : tb); k++)
                        sim += wa[k] * wb[k];
                    /* The recurrence gives each step exactly the profile's integral over it
                     * (the product of the betas telescopes), so the sum of products differs
                     * from the integral of the product only by the profiles' variation
                     * within a step: 3e-4 at worst here. */
                    e = fabs(sim - closed) / closed;
                    worst_sim = fmax(worst_sim, e);
                    if (e > 2e-3)
                        fail_msg("(%g@%d, %g@%d): closed %.17g, simulated EMA %.17g", ga, ta,
                                 gb, tb, closed, sim);
                }
    print_message("inner products: worst relative error %.2g (Simpson), %.2g (EMA simulation)\n",
                  worst_int, worst_sim);
}

/* |sum_i c_i p_i - p_target|^2 / |p_target|^2 by Simpson between the kinks (the t_i). */
static double profile_error(size_t n, const double *g, const double *t, const double *c,
                            double gt, double tt)
{
    double cuts[64], err = 0, norm = 0;
    size_t nc = 0;

    cuts[nc++] = 0;
    for (size_t i = 0; i < n; i++)
        if (t[i] < tt)
            cuts[nc++] = t[i];
    cuts[nc++] = tt;
    for (size_t i = 1; i < nc; i++) /* insertion sort */
        for (size_t j = i; j > 0 && cuts[j] < cuts[j - 1]; j--) {
            double x = cuts[j];
            cuts[j] = cuts[j - 1];
            cuts[j - 1] = x;
        }
    for (size_t s = 0; s + 1 < nc; s++) {
        double a = cuts[s], h = (cuts[s + 1] - a) / 400;
        for (int k = 0; k <= 400; k++) {
            double w = (k == 0 || k == 400 ? 1 : k % 2 ? 4 : 2) * h / 3, tau = a + k * h;
            double f = -profile(gt, tt, tau);
            for (size_t i = 0; i < n; i++)
                f += c[i] * profile(g[i], t[i], tau);
            err += w * f * f;
            norm += w * profile(gt, tt, tau) * profile(gt, tt, tau);
        }
    }
    return err / norm;
}

/* EDM2's setting: two profiles, snapshots at regular intervals. */
static size_t edm2_snapshots(double *g, double *t, int every, int last)
{
    double g1, g2;
    size_t n = 0;

    assert_int_equal(phema_gamma(0.05, &g1), 0);
    assert_int_equal(phema_gamma(0.10, &g2), 0);
    for (int b = every; b <= last; b += every) {
        g[n] = g1;
        t[n++] = b;
        g[n] = g2;
        t[n++] = b;
    }
    return n;
}

static void test_the_solver_finds_the_least_squares_fit(void **state)
{
    double g[64], t[64], x[64], gt;
    const double targets[] = {0.02, 0.05, 0.07, 0.10, 0.15, 0.25};
    struct phema_fit fit;
    char err[256];
    (void)state;

    size_t n = edm2_snapshots(g, t, 100, 1000);
    for (size_t k = 0; k < sizeof(targets) / sizeof(targets[0]); k++)
        for (int tt = 700; tt <= 1000; tt += 300) {
            assert_int_equal(phema_gamma(targets[k], &gt), 0);
            assert_int_equal(phema_solve(n, g, t, gt, tt, x, &fit, err, sizeof(err)), 0);
            double sum = 0;
            for (size_t i = 0; i < n; i++)
                sum += x[i];
            assert_true(fabs(sum - 1) < 1e-12);
            /* The reported residual is the profile's error, measured independently. */
            double c[64];
            for (size_t i = 0; i < n; i++)
                c[i] = x[i] * fit.sum;
            double e2 = profile_error(n, g, t, c, gt, tt);
            if (fabs(sqrt(e2) - fit.residual) > 1e-4 + 1e-2 * fit.residual)
                fail_msg("target %g@%d: residual %.6g, measured %.6g", targets[k], tt,
                         fit.residual, sqrt(e2));
            /* Least squares: nudging any coefficient makes the fit worse. */
            for (size_t i = 0; i < n; i += 5) {
                double keep = c[i];
                c[i] = keep * 1.01 + 1e-3;
                assert_true(profile_error(n, g, t, c, gt, tt) > e2);
                c[i] = keep;
            }
            /* Widths between the two stored ones are reconstructed closely. */
            if (targets[k] >= 0.05 && targets[k] <= 0.10)
                assert_true(fit.residual < 0.05);
        }
}

static void test_a_stored_profile_gives_back_its_own_snapshot(void **state)
{
    double g[64], t[64], x[64];
    struct phema_fit fit;
    char err[256];
    (void)state;

    size_t n = edm2_snapshots(g, t, 100, 1000);
    for (size_t k = 0; k < n; k++) {
        assert_int_equal(phema_solve(n, g, t, g[k], t[k], x, &fit, err, sizeof(err)), 0);
        assert_int_equal(fit.kept, n);
        assert_true(fit.residual < 1e-6);
        for (size_t i = 0; i < n; i++)
            if (fabs(x[i] - (i == k)) > 1e-9)
                fail_msg("target = snapshot %zu: x[%zu] = %.3g", k, i, x[i]);
    }
}

static void test_dependent_snapshots_are_dropped(void **state)
{
    double g[64], t[64], x[64], xd[64], gt;
    struct phema_fit fit, fitd;
    char err[256];
    (void)state;

    assert_int_equal(phema_gamma(0.08, &gt), 0);
    size_t n = edm2_snapshots(g, t, 100, 800);
    assert_int_equal(phema_solve(n, g, t, gt, 800, x, &fit, err, sizeof(err)), 0);
    assert_int_equal(fit.kept, n);
    /* The same snapshots twice over, and once more with gamma and time moved by parts in
     * 10^9 and 10^14 (squared distances about 1e-16 and 4e-13, below PHEMA_DEPENDENT_TOL): the
     * system is singular or nearly; the solver keeps one of each and gives the same fit. */
    for (size_t i = 0; i < n; i++) {
        g[n + i] = g[i];
        t[n + i] = t[i];
        g[2 * n + i] = g[i] * (1 + 1e-9);
        t[2 * n + i] = t[i] * (1 + 1e-14);
    }
    assert_int_equal(phema_solve(3 * n, g, t, gt, 800, xd, &fitd, err, sizeof(err)), 0);
    assert_int_equal(fitd.kept, n);
    assert_true(fabs(fitd.residual - fit.residual) < 1e-6);
    for (size_t i = 0; i < n; i++) {
        double merged = xd[i] + xd[n + i] + xd[2 * n + i];
        int nonzero = (xd[i] != 0) + (xd[n + i] != 0) + (xd[2 * n + i] != 0);
        assert_int_equal(nonzero, 1);
        if (fabs(merged - x[i]) > 1e-6 * (1 + fabs(x[i])))
            fail_msg("snapshot %zu: %.9g alone, %.9g over its copies", i, x[i], merged);
    }
    /* Snapshots every batch are NOT dependent: a profile ends with a jump at its time, so two
     * a batch apart differ by a squared distance of about (2 gamma + 1) / t. All are kept, the
     * fit is good and no coefficient explodes. */
    size_t m = 0;
    double g1, g2;
    assert_int_equal(phema_gamma(0.05, &g1), 0);
    assert_int_equal(phema_gamma(0.10, &g2), 0);
    for (int b = 990; b < 1010; b++) {
        g[m] = g1;
        t[m++] = b;
        g[m] = g2;
        t[m++] = b;
    }
    assert_int_equal(phema_solve(m, g, t, gt, 1009, x, &fit, err, sizeof(err)), 0);
    assert_int_equal(fit.kept, m);
    double c[64], big = 0;
    for (size_t i = 0; i < m; i++) {
        c[i] = x[i] * fit.sum;
        big = fmax(big, fabs(x[i]));
    }
    assert_true(fit.residual < 0.05);
    assert_true(big < 10);
    assert_true(fabs(sqrt(profile_error(m, g, t, c, gt, 1009)) - fit.residual) < 1e-3);
    print_message("dense snapshots: %zu of %zu kept, residual %.3g, largest |x| %.3g\n",
                  fit.kept, m, fit.residual, big);
}

static void test_bad_arguments_are_named(void **state)
{
    double g[2] = {7, 7}, t[2] = {10, 20}, x[2];
    char err[256];
    (void)state;

    assert_int_equal(phema_solve(0, g, t, 7, 20, x, NULL, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "no snapshots to reconstruct from");
    g[1] = 0;
    assert_int_equal(phema_solve(2, g, t, 7, 20, x, NULL, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "snapshot 1: gamma 0 is not a finite number > 0");
    g[1] = 7;
    t[0] = NAN;
    assert_int_equal(phema_solve(2, g, t, 7, 20, x, NULL, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "snapshot 0: time nan"));
    t[0] = 10;
    assert_int_equal(phema_solve(2, g, t, 7, -1, x, NULL, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "target 0: time -1"));
    assert_int_equal(phema_solve(PHEMA_SNAPSHOTS_MAX + 1, g, t, 7, 1, x, NULL, err, sizeof(err)),
                     -EINVAL);
}

/* Snapshot files of two power profiles (sigma_rel 0.05, 0.10) over a made-up trajectory,
 * every 50 batches to 300; a tensor of 100000 elements spans two chunks of the streaming. */
#define SNAP_N 100000
static void write_snapshot(const char *path, double sigma, uint64_t batch, const float *v)
{
    struct st_tensor t[] = {{.name = "w", .dtype = DTYPE_F32, .rank = 2, .shape = {1000, 100}}};
    char b[32], s[32], err[256];
    struct st_meta m[] = {{"batch", b}, {"sigma_rel", s}};
    struct st_writer w;
    struct durable d;

    snprintf(b, sizeof(b), "%llu", (unsigned long long)batch);
    snprintf(s, sizeof(s), "%.17g", sigma);
    assert_int_equal(durable_open(&d, AT_FDCWD, path, 0600, err, sizeof(err)), 0);
    assert_int_equal(st_writer_begin(&w, d.fd, t, 1, m, 2, err, sizeof(err)), 0);
    assert_int_equal(st_writer_write(&w, v, SNAP_N * 4, err, sizeof(err)), 0);
    assert_int_equal(durable_commit(&d, err, sizeof(err)), 0);
}

static void test_a_stored_profile_file_comes_back_from_posthoc_files(void **state)
{
    char dir[] = "/tmp/test_phema.XXXXXX", paths[12][96], out[96];
    const char *pp[12];
    float *shadow[2], *back;
    double g[2];
    size_t n = 0;
    struct st_file f;
    struct emac_error err;
    (void)state;

    assert_non_null(mkdtemp(dir));
    assert_int_equal(phema_gamma(0.05, &g[0]), 0);
    assert_int_equal(phema_gamma(0.10, &g[1]), 0);
    shadow[0] = calloc(SNAP_N, sizeof(float));
    shadow[1] = calloc(SNAP_N, sizeof(float));
    back = calloc(SNAP_N, sizeof(float));
    for (uint64_t b = 1; b <= 300; b++) {
        for (int p = 0; p < 2; p++) {
            double beta;
            assert_int_equal(phema_beta(g[p], b, 1, &beta), 0);
            for (size_t i = 0; i < SNAP_N; i++) {
                double theta = sin(0.001 * (double)(i + 1) * (double)b) + 0.01 * (double)b;
                shadow[p][i] = (float)(beta * shadow[p][i] + (1 - beta) * theta);
            }
            if (b % 50 == 0) {
                snprintf(paths[n], sizeof(paths[n]), "%s/p%d-%03llu.safetensors", dir, p,
                         (unsigned long long)b);
                write_snapshot(paths[n], p ? 0.10 : 0.05, b, shadow[p]);
                pp[n] = paths[n];
                n++;
            }
        }
    }
    snprintf(out, sizeof(out), "%s/out.safetensors", dir);
    /* sigma_rel 0.10 at batch 150: the snapshot p1-150 itself. */
    assert_int_equal(emac_posthoc_files(pp, n, 0.10, 150, out, NULL, &err), 0);
    char msg[256];
    assert_int_equal(st_open(&f, out, msg, sizeof(msg)), 0);
    assert_string_equal(st_meta_get(&f.h, "batch"), "150");
    assert_string_equal(st_meta_get(&f.h, "snapshot_batches"), "[50, 50, 100, 100, 150, 150]");
    const struct st_tensor *t = st_find(&f.h, "w");
    assert_non_null(t);
    assert_int_equal(t->rank, 2);
    assert_int_equal(t->shape[0], 1000);
    assert_int_equal(st_read(&f, t, 0, back, SNAP_N * 4, msg, sizeof(msg)), 0);
    st_close(&f);
    struct st_file snap;
    float *want = calloc(SNAP_N, sizeof(float));
    assert_int_equal(st_open(&snap, paths[5], msg, sizeof(msg)), 0);
    assert_int_equal(st_read(&snap, &snap.h.tensors[0], 0, want, SNAP_N * 4, msg, sizeof(msg)),
                     0);
    st_close(&snap);
    double worst = 0;
    for (size_t i = 0; i < SNAP_N; i++)
        worst = fmax(worst, fabs((double)back[i] - want[i]) / (fabs(want[i]) + 1e-3));
    /* The coefficients are e_k to about 1e-9: a few f32 roundings at most. */
    assert_true(worst < 1e-6);
    print_message("own snapshot back: worst relative difference %.3g\n", worst);
    /* bf16 output of the same: the snapshot rounded to bf16 (one step off at most, where the
     * sum lies within 1e-9 of a tie). */
    assert_int_equal(emac_posthoc_files(pp, n, 0.10, 150, out, "bf16", &err), 0);
    assert_int_equal(st_open(&f, out, msg, sizeof(msg)), 0);
    assert_int_equal(f.h.tensors[0].dtype, DTYPE_BF16);
    uint16_t *h = (uint16_t *)back;
    assert_int_equal(st_read(&f, &f.h.tensors[0], 0, h, SNAP_N * 2, msg, sizeof(msg)), 0);
    st_close(&f);
    for (size_t i = 0; i < SNAP_N; i++) {
        uint32_t u;
        memcpy(&u, &want[i], 4);
        int r = (int)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        assert_true(abs((int)h[i] - r) <= 1);
    }
    /* batch 0: at the latest snapshot (300), every snapshot used; f16 output. */
    assert_int_equal(emac_posthoc_files(pp, n, 0.07, 0, out, "f16", &err), 0);
    free(shadow[0]);
    free(shadow[1]);
    free(back);
    free(want);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gamma_and_sigma_rel_round_trip_and_match_edm2),
        cmocka_unit_test(test_beta_copies_first_and_follows_the_power_law),
        cmocka_unit_test(test_the_closed_form_inner_product_matches_brute_force),
        cmocka_unit_test(test_the_solver_finds_the_least_squares_fit),
        cmocka_unit_test(test_a_stored_profile_gives_back_its_own_snapshot),
        cmocka_unit_test(test_dependent_snapshots_are_dropped),
        cmocka_unit_test(test_bad_arguments_are_named),
        cmocka_unit_test(test_a_stored_profile_file_comes_back_from_posthoc_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
