/*
 * phema.c - post-hoc EMA mathematics (see phema.h and docs/posthoc.md).
 */
#include "phema.h"

#include "errbuf.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int phema_gamma(double sigma_rel, double *gamma)
{
    if (!(sigma_rel > 0.0 && sigma_rel < PHEMA_SIGMA_REL_MAX))
        return -EINVAL;
    /*
     * The cubic is f(g) = (g+2)^2 (g+3) - c (g+1) with c = sigma_rel^-2 > 12. f(0) = 12 - c < 0
     * and its coefficients change sign once, so it has exactly one positive root, the largest.
     * f is convex for g > -7/3 and f(sqrt(c)) > 0, so Newton's method from sqrt(c) decreases
     * monotonically onto the root: stop when a step no longer decreases g (rounding).
     */
    double c = 1.0 / (sigma_rel * sigma_rel);
    double g = sqrt(c);
    for (int i = 0; i < 200; i++) {
        double f = (g + 2) * (g + 2) * (g + 3) - c * (g + 1);
        double df = 2 * (g + 2) * (g + 3) + (g + 2) * (g + 2) - c;
        double next = g - f / df;
        if (!(next < g))
            break;
        g = next;
    }
    /* A sigma_rel so small that sigma_rel^-2 overflows has no gamma a double holds. */
    if (!(g < INFINITY))
        return -EINVAL;
    *gamma = g;
    return 0;
}

int phema_sigma_rel(double gamma, double *sigma_rel)
{
    if (!(gamma > 0.0 && isfinite(gamma)))
        return -EINVAL;
    *sigma_rel = sqrt((gamma + 1) / ((gamma + 2) * (gamma + 2) * (gamma + 3)));
    return 0;
}

int phema_beta(double gamma, uint64_t b, uint64_t d, double *beta)
{
    if (!(gamma > 0.0 && isfinite(gamma)) || d < 1 || d > b)
        return -EINVAL;
    *beta = d == b ? 0.0 : pow(1.0 - (double)d / (double)b, gamma + 1);
    return 0;
}

/*
 * With m = min(t_a, t_b), the integral over [0, m] of
 *   (ga+1) tau^ga / t_a^(ga+1) * (gb+1) tau^gb / t_b^(gb+1)
 * is (ga+1)(gb+1) m^(ga+gb+1) / ((ga+gb+1) t_a^(ga+1) t_b^(gb+1)). For t_a <= t_b (m = t_a) that
 * is (ga+1)(gb+1) (t_a/t_b)^gb / ((ga+gb+1) t_b), and symmetrically: written with the ratio of
 * the times, which stays in [0, 1], no power overflows however large the times are.
 */
double phema_dot(double gamma_a, double t_a, double gamma_b, double t_b)
{
    double num = (gamma_a + 1) * (gamma_b + 1);
    double den = gamma_a + gamma_b + 1;

    if (t_a <= t_b)
        return num * pow(t_a / t_b, gamma_b) / (den * t_b);
    return num * pow(t_b / t_a, gamma_a) / (den * t_a);
}

static int check_profile(double g, double t, const char *what, size_t i, char *err,
                         size_t errlen)
{
    if (!(g > 0.0 && isfinite(g)))
        return err_set(err, errlen, -EINVAL, "%s %zu: gamma %g is not a finite number > 0", what,
                       i, g);
    if (!(t > 0.0 && isfinite(t)))
        return err_set(err, errlen, -EINVAL, "%s %zu: time %g is not a finite number > 0", what,
                       i, t);
    return 0;
}

int phema_solve(size_t n, const double *gamma, const double *t, double gamma_target,
                double t_target, double *x, struct phema_fit *fit, char *err, size_t errlen)
{
    double *L = NULL, *d = NULL, *scale = NULL, *bt = NULL, *z = NULL;
    size_t *perm = NULL, r = 0;
    int rc = 0;

    if (n == 0)
        return err_set(err, errlen, -EINVAL, "no snapshots to reconstruct from");
    if (n > PHEMA_SNAPSHOTS_MAX)
        return err_set(err, errlen, -EINVAL, "%zu snapshots, more than %d", n,
                       PHEMA_SNAPSHOTS_MAX);
    for (size_t i = 0; i < n; i++)
        if ((rc = check_profile(gamma[i], t[i], "snapshot", i, err, errlen)) < 0)
            return rc;
    if ((rc = check_profile(gamma_target, t_target, "target", 0, err, errlen)) < 0)
        return rc;

    L = malloc(n * n * sizeof(*L));
    d = malloc(n * sizeof(*d));
    scale = malloc(n * sizeof(*scale));
    bt = malloc(n * sizeof(*bt));
    z = malloc(n * sizeof(*z));
    perm = malloc(n * sizeof(*perm));
    if (L == NULL || d == NULL || scale == NULL || bt == NULL || z == NULL || perm == NULL) {
        rc = err_set(err, errlen, -ENOMEM, "out of memory for %zu snapshots", n);
        goto out;
    }
    /*
     * Scale each profile to length 1: the Gram matrix then has a unit diagonal, its entries are
     * cosines, and d[i] (what is left of row i's diagonal during the factorisation) is the
     * squared distance of profile i from the span of the profiles chosen so far, which is
     * what PHEMA_DEPENDENT_TOL bounds.
     */
    for (size_t i = 0; i < n; i++) {
        scale[i] = 1.0 / sqrt(phema_dot(gamma[i], t[i], gamma[i], t[i]));
        bt[i] = phema_dot(gamma[i], t[i], gamma_target, t_target) * scale[i];
        d[i] = 1.0;
        perm[i] = i;
    }
    /*
     * Cholesky with diagonal pivoting, column by column: step k takes the remaining profile
     * farthest from the span of those chosen (the largest d), and stops once every remaining
     * one is within the tolerance. L[i*n + k] is row i's entry in column k (row i = snapshot i).
     */
    for (r = 0; r < n; r++) {
        size_t best = r;
        for (size_t m = r + 1; m < n; m++)
            if (d[perm[m]] > d[perm[best]])
                best = m;
        if (!(d[perm[best]] > PHEMA_DEPENDENT_TOL))
            break;
        size_t tmp = perm[r];
        perm[r] = perm[best];
        perm[best] = tmp;
        size_t p = perm[r];
        double lkk = sqrt(d[p]);
        L[p * n + r] = lkk;
        for (size_t m = r + 1; m < n; m++) {
            size_t j = perm[m];
            double a = phema_dot(gamma[j], t[j], gamma[p], t[p]) * scale[j] * scale[p];
            for (size_t l = 0; l < r; l++)
                a -= L[j * n + l] * L[p * n + l];
            L[j * n + r] = a / lkk;
            d[j] -= L[j * n + r] * L[j * n + r];
        }
    }
    /* Solve L L^T y = b over the r chosen profiles: forward, then backward (y into z). */
    for (size_t k = 0; k < r; k++) {
        size_t p = perm[k];
        double s = bt[p];
        for (size_t l = 0; l < k; l++)
            s -= L[p * n + l] * z[l];
        z[k] = s / L[p * n + k];
    }
    for (size_t k = r; k-- > 0;) {
        size_t p = perm[k];
        double s = z[k];
        for (size_t m = k + 1; m < r; m++)
            s -= L[perm[m] * n + k] * z[m];
        z[k] = s / L[p * n + k];
    }
    memset(x, 0, n * sizeof(*x));
    for (size_t k = 0; k < r; k++)
        x[perm[k]] = z[k] * scale[perm[k]];

    /* The least-squares residual: |e|^2 = |p_t|^2 - b.y for the exact solution y. */
    double tt = phema_dot(gamma_target, t_target, gamma_target, t_target);
    double by = 0.0, sum = 0.0;
    for (size_t k = 0; k < r; k++)
        by += bt[perm[k]] * z[k];
    for (size_t i = 0; i < n; i++)
        sum += x[i];
    if (fit != NULL) {
        fit->kept = r;
        fit->residual = sqrt(fmax(0.0, 1.0 - by / tt));
        fit->sum = sum;
    }
    if (!isfinite(sum) || fabs(sum) < 1e-12) {
        rc = err_set(err, errlen, -EDOM,
                     "the snapshots cannot represent the target profile (the coefficients sum "
                     "to %g): take snapshots closer to the target's time and width", sum);
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        x[i] /= sum;
out:
    free(L);
    free(d);
    free(scale);
    free(bt);
    free(z);
    free(perm);
    return rc;
}
