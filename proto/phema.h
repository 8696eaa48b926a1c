/*
 * phema.h - the mathematics of post-hoc EMA with power-function profiles (Karras et al.,
 * "Analyzing and Improving the Training Dynamics of Diffusion Models", EDM2, sec. 3 and app. C;
 * docs/posthoc.md derives and explains every formula here). Pure, in double, no IO: emad uses
 * it to update power profiles, libemaclient to reconstruct an EMA from snapshots.
 *
 * Time is counted in batches from 1 (EDM2 counts images; only ratios of times enter, so the
 * curves are the same). A power-function EMA with exponent gamma, read at time t, gives the
 * parameters of time tau in [0, t] the weight density p(tau) = (gamma+1) tau^gamma / t^(gamma+1).
 */
#ifndef EMAD_PHEMA_H
#define EMAD_PHEMA_H

#include <stddef.h>
#include <stdint.h>

/* sigma_rel must lie in (0, 12^-1/2): 12^-1/2 is gamma = 0, a uniform average. */
#define PHEMA_SIGMA_REL_MAX 0.28867513459481287
/* Snapshots one solve takes: its matrix is n x n doubles (128 MiB at the limit). */
#define PHEMA_SNAPSHOTS_MAX 4096
/*
 * A snapshot whose profile (normalised to length 1) lies closer than this, in squared distance,
 * to the span of the profiles already chosen is dropped: it is the same profile up to rounding
 * (e.g. two snapshots of one profile at one batch), and keeping it would make the system
 * singular or its coefficients huge and of opposite signs (docs/posthoc.md "Ill-conditioning").
 */
#define PHEMA_DEPENDENT_TOL 1e-12

/* gamma of sigma_rel: the largest real root of g^3 + 7g^2 + (16 - s^-2) g + (12 - s^-2).
 * -EINVAL unless 0 < sigma_rel < PHEMA_SIGMA_REL_MAX. */
int phema_gamma(double sigma_rel, double *gamma);

/* sigma_rel of gamma: sqrt((g+1) / ((g+2)^2 (g+3))). -EINVAL unless gamma is finite and > 0. */
int phema_sigma_rel(double gamma, double *sigma_rel);

/* The smoothing of a power profile's update at batch b, its previous update d batches before
 * (d = b at the first update): (1 - d/b)^(gamma+1), 0 for d = b (a copy).
 * -EINVAL unless gamma > 0 is finite and 1 <= d <= b. */
int phema_beta(double gamma, uint64_t b, uint64_t d, double *beta);

/* The inner product (integral over tau of the product) of the profiles (gamma_a at t_a) and
 * (gamma_b at t_b). Arguments are the caller's to check (finite, gammas > 0, times > 0). */
double phema_dot(double gamma_a, double t_a, double gamma_b, double t_b);

/* What phema_solve reports besides the coefficients. */
struct phema_fit {
    size_t kept;     /* snapshots kept (the others were dropped as dependent: coefficient 0) */
    double residual; /* relative L2 error of the least-squares profile before normalising:
                        |sum x_i p_i - p_target| / |p_target| (0: exact) */
    double sum;      /* sum of the coefficients before normalising (1 for an exact fit) */
};

/*
 * The coefficients x[0..n) such that sum_i x_i p_i is the least-squares approximation of the
 * target profile (gamma_target at t_target) by the snapshots' profiles (gamma[i] at t[i]),
 * normalised to sum 1 as EDM2 does. Solved in double by Cholesky with pivoting on the Gram
 * matrix scaled to unit diagonal; dependent snapshots are dropped (PHEMA_DEPENDENT_TOL).
 * fit may be NULL. 0, -EINVAL (bad arguments: the message says which), -ENOMEM, or -EDOM if
 * the coefficients cannot be normalised (their sum is 0 or not finite: the snapshots cannot
 * represent the target).
 */
int phema_solve(size_t n, const double *gamma, const double *t, double gamma_target,
                double t_target, double *x, struct phema_fit *fit, char *err, size_t errlen);

#endif
