/*
 * test_schedule.c - the warm-up (timm ModelEmaV3) and power-function (EDM2) schedules: when an
 * update is due and the decay it uses.
 *
 * The expected decays come from the formulas written again here in long double, from a few
 * values worked out by hand, and, for the power function, from what the schedule is for: the
 * EMA it drives weighs the param seen at batch t by t^(gamma+1) - t_prev^(gamma+1), so gamma 0
 * gives the plain mean, whatever batches the updates land on.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "schedule.h"

static struct schedule warmup(double decay, double min_decay, uint64_t after, double inv_gamma,
                              double power, uint64_t interval)
{
    struct schedule s;
    char err[128];
    assert_int_equal(schedule_warmup_init(&s, decay, min_decay, after, inv_gamma, power,
                                          interval, err, sizeof(err)),
                     0);
    return s;
}

/* The timm formula, independently, in long double. */
static long double warmup_ref(long double decay, long double min_decay, uint64_t after,
                              long double inv_gamma, long double power, uint64_t b)
{
    long double k = (long double)b - (long double)after - 1.0L;
    if (k <= 0)
        return 0.0L;
    long double d = 1.0L - powl(1.0L + k / inv_gamma, -power);
    if (d > decay)
        d = decay;
    if (d < min_decay)
        d = min_decay;
    return d;
}

static void test_warmup_copies_until_after_update_after_step(void **state)
{
    (void)state;
    struct schedule s = warmup(0.9999, 0.0, 5, 1.0, 1.0, 1);
    struct schedule_state st;
    struct schedule_step step;

    schedule_state_init(&st);
    for (uint64_t b = 1; b <= 6; b++) { /* k = b - 6 <= 0 */
        assert_int_equal(schedule_decide(&s, &st, b, &step), 0);
        assert_true(step.due);
        assert_true(step.decay == 0.0);
        assert_int_equal(schedule_commit(&st, b), 0);
    }
    assert_int_equal(schedule_decide(&s, &st, 7, &step), 0);
    assert_true(step.due);
    assert_true(step.decay == 0.5); /* k = 1, power 1: 1 - 1/2 */
    assert_int_equal(schedule_decide(&s, &st, 16, &step), 0);
    assert_true(step.decay == 1.0 - 1.0 / 11.0); /* k = 16 - 5 - 1 = 10 */
}

static void test_warmup_hand_values_with_timm_defaults(void **state)
{
    (void)state;
    struct schedule s = warmup(SCHEDULE_WARMUP_DEFAULT_DECAY, SCHEDULE_WARMUP_DEFAULT_MIN_DECAY,
                               SCHEDULE_WARMUP_DEFAULT_UPDATE_AFTER_STEP,
                               SCHEDULE_WARMUP_DEFAULT_INV_GAMMA, SCHEDULE_WARMUP_DEFAULT_POWER,
                               1);
    /* b = 1: k = 0, a copy. b = 2: 1 - 2^(-2/3) = 0.37003947505256...;
     * b = 9: 1 - 9^(-2/3) = 1 - 3^(-4/3) = 0.76887957521645...; */
    assert_true(schedule_warmup_decay(&s, 1) == 0.0);
    assert_true(fabs(schedule_warmup_decay(&s, 2) - 0.3700394750525634) < 1e-15);
    assert_true(fabs(schedule_warmup_decay(&s, 9) - 0.7688795752164551) < 1e-15);
    /* Late enough, the target caps it exactly: 1 - (1 + k)^(-2/3) > 0.9999 from k = 10^6. */
    assert_true(schedule_warmup_decay(&s, 2000000) == 0.9999);
}

static void test_warmup_matches_formula_over_a_curve(void **state)
{
    (void)state;
    const struct {
        double decay, min_decay, inv_gamma, power;
        uint64_t after;
    } cases[] = {
        {0.9999, 0.0, 1.0, 2.0 / 3.0, 0},
        {0.999, 0.0, 1.0, 0.75, 100},
        {0.9995, 0.9, 10.0, 0.5, 3},
        {0.99, 0.5, 0.25, 1.5, 0},
        {1.0, 0.0, 1e6, 1.0, 0},
        {0.0, 0.0, 1.0, 1.0, 0},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct schedule s = warmup(cases[c].decay, cases[c].min_decay, cases[c].after,
                                   cases[c].inv_gamma, cases[c].power, 1);
        for (uint64_t b = 1; b < 200000; b = b < 300 ? b + 1 : b * 3 / 2) {
            long double want = warmup_ref(cases[c].decay, cases[c].min_decay, cases[c].after,
                                          cases[c].inv_gamma, cases[c].power, b);
            double got = schedule_warmup_decay(&s, b);
            if (fabsl((long double)got - want) > 4e-16L) {
                fprintf(stderr, "case %zu batch %llu: got %.17g, want %.17Lg\n", c,
                        (unsigned long long)b, got, want);
                fail();
            }
            assert_true(got >= cases[c].min_decay || got == 0.0);
            assert_true(got <= cases[c].decay);
        }
    }
}

static void test_interval_picks_multiples_and_never_twice(void **state)
{
    (void)state;
    struct schedule s = warmup(0.999, 0.0, 0, 1.0, 1.0, 4);
    struct schedule p;
    struct schedule_state st;
    struct schedule_step step;

    assert_int_equal(schedule_power_init(&p, 7.0, 4, NULL, 0), 0);
    schedule_state_init(&st);
    for (uint64_t b = 0; b <= 12; b++) {
        assert_int_equal(schedule_decide(&s, &st, b, &step), 0);
        assert_int_equal(step.due, b != 0 && b % 4 == 0);
        assert_int_equal(schedule_decide(&p, &st, b, &step), 0);
        assert_int_equal(step.due, b != 0 && b % 4 == 0);
    }
    assert_int_equal(schedule_commit(&st, 8), 0);
    /* A repeated or earlier batch is not due again, and cannot be committed. */
    assert_int_equal(schedule_decide(&p, &st, 8, &step), 0);
    assert_false(step.due);
    assert_int_equal(schedule_decide(&s, &st, 4, &step), 0);
    assert_false(step.due);
    assert_int_equal(schedule_commit(&st, 8), -EINVAL);
    assert_int_equal(schedule_commit(&st, 0), -EINVAL);
    assert_int_equal(st.last_batch, 8);
    assert_int_equal(st.updates, 1);
    assert_int_equal(schedule_decide(&p, &st, 12, &step), 0);
    assert_true(step.due);
    assert_true(step.decay == pow(1.0 - 4.0 / 12.0, 8.0)); /* D = 4 since batch 8 */
}

static void test_power_first_update_copies_and_hand_values(void **state)
{
    (void)state;
    struct schedule p;
    struct schedule_state st;
    struct schedule_step step;

    assert_int_equal(schedule_power_init(&p, 1.0, 1, NULL, 0), 0);
    schedule_state_init(&st);
    assert_int_equal(schedule_decide(&p, &st, 1, &step), 0);
    assert_true(step.due);
    assert_true(step.decay == 0.0);
    assert_int_equal(schedule_commit(&st, 1), 0);
    assert_int_equal(schedule_decide(&p, &st, 2, &step), 0);
    assert_true(step.decay == 0.25); /* (1 - 1/2)^2 */
    /* The first update of a profile that starts late still copies: D = b. */
    schedule_state_init(&st);
    assert_int_equal(schedule_decide(&p, &st, 1000, &step), 0);
    assert_true(step.decay == 0.0);
    assert_true(schedule_power_beta(1.0, 10, 0) == 1.0);
    assert_true(schedule_power_beta(1.0, 0, 0) == 1.0);
    assert_true(schedule_power_beta(1.0, 10, 11) == 0.0);
}

/*
 * Driven by the schedule, the EMA weighs the param of update batch t_j by
 * (t_j^(g+1) - t_(j-1)^(g+1)) / t_last^(g+1): the shadow after the updates is that weighted sum,
 * computed here directly in long double. Updates at irregular batches (as skipped intervals or
 * a late start leave them) must give the same.
 */
static void test_power_ema_weighs_params_as_the_power_function(void **state)
{
    (void)state;
    const double gammas[] = {0.05, 1.0, 2.0, 6.94, 16.97};
    for (size_t g = 0; g < sizeof(gammas) / sizeof(gammas[0]); g++) {
        for (int irregular = 0; irregular < 2; irregular++) {
            struct schedule p;
            struct schedule_state st;
            struct schedule_step step;
            double shadow = 0.0;
            long double num = 0.0L, prev_pow = 0.0L, gp1 = (long double)gammas[g] + 1.0L;
            uint64_t b;

            assert_int_equal(schedule_power_init(&p, gammas[g], 1, NULL, 0), 0);
            schedule_state_init(&st);
            for (b = 1; b <= 5000; b++) {
                if (irregular && (b % 7 == 3 || (b > 100 && b < 180)))
                    continue; /* these batches get no update */
                double x = sin((double)b * 0.37) + 0.001 * (double)b;
                assert_int_equal(schedule_decide(&p, &st, b, &step), 0);
                assert_true(step.due);
                /* What the f64 kernel computes, written as the plain recurrence. */
                shadow = step.decay * shadow + (1.0 - step.decay) * x;
                assert_int_equal(schedule_commit(&st, b), 0);
                long double bp = powl((long double)b, gp1);
                num += (bp - prev_pow) * (long double)x;
                prev_pow = bp;
            }
            long double want = num / prev_pow;
            if (fabsl((long double)shadow - want) > 1e-9L) {
                fprintf(stderr, "gamma %g irregular %d: got %.17g, want %.17Lg\n", gammas[g],
                        irregular, shadow, want);
                fail();
            }
        }
    }
}

static void test_init_refuses_bad_parameters_with_a_message(void **state)
{
    (void)state;
    struct schedule s, before;
    char err[160];

    memset(&before, 0x5a, sizeof(before));
    s = before;
    assert_int_equal(schedule_warmup_init(&s, 1.5, 0, 0, 1, 1, 1, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "warmup.decay"));
    assert_int_equal(schedule_warmup_init(&s, 0.9, NAN, 0, 1, 1, 1, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "warmup.min_decay"));
    assert_int_equal(schedule_warmup_init(&s, 0.9, 0, 0, 0.0, 1, 1, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "warmup.inv_gamma"));
    assert_int_equal(schedule_warmup_init(&s, 0.9, 0, 0, 1, INFINITY, 1, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "warmup.power"));
    assert_int_equal(schedule_warmup_init(&s, 0.9, 0, 0, 1, 1, 0, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "warmup.update_interval"));
    assert_int_equal(schedule_power_init(&s, -0.5, 1, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "power.gamma"));
    assert_int_equal(schedule_power_init(&s, NAN, 1, err, sizeof(err)), -EINVAL);
    assert_int_equal(schedule_power_init(&s, 0.0, 1, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "> 0"));
    assert_int_equal(schedule_power_init(&s, 7, 0, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "power.update_interval"));
    assert_memory_equal(&s, &before, sizeof(s));

    struct schedule_state st;
    struct schedule_step step;
    schedule_state_init(&st);
    s.kind = (enum schedule_kind)99;
    s.update_interval = 1;
    assert_int_equal(schedule_decide(&s, &st, 1, &step), -EINVAL);
    assert_int_equal(schedule_decide(NULL, &st, 1, &step), -EINVAL);
    assert_string_equal(schedule_kind_name(SCHEDULE_POWER), "power");
    assert_null(schedule_kind_name((enum schedule_kind)99));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_warmup_copies_until_after_update_after_step),
        cmocka_unit_test(test_warmup_hand_values_with_timm_defaults),
        cmocka_unit_test(test_warmup_matches_formula_over_a_curve),
        cmocka_unit_test(test_interval_picks_multiples_and_never_twice),
        cmocka_unit_test(test_power_first_update_copies_and_hand_values),
        cmocka_unit_test(test_power_ema_weighs_params_as_the_power_function),
        cmocka_unit_test(test_init_refuses_bad_parameters_with_a_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
