/*
 * test_profile.c - a session's profiles (daemon/profile.h): their configuration from the
 * contract (schedules given or inferred, settings of another schedule refused, names, eval
 * profile), and what an update event does to each (starts, dues, decays, the session's action).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <string.h>

#include "profile.h"

static struct msg_profile named(const char *name)
{
    struct msg_profile p;
    memset(&p, 0, sizeof(p));
    p.name = msg_str_c(name);
    return p;
}

static void expect_error(const struct msg_profile *in, size_t n, const char *eval,
                         const char *want)
{
    struct profile out[PROFILE_MAX];
    unsigned at = 99;
    char err[512] = "";

    assert_int_equal(profile_config(out, in, n, eval != NULL, msg_str_c(eval), &at, err,
                                    sizeof(err)),
                     -EINVAL);
    if (strstr(err, want) == NULL)
        fail_msg("error \"%s\" lacks \"%s\"", err, want);
}

static void test_profile_schedule_is_inferred_from_the_fields(void **state)
{
    struct msg_profile in[4] = {named("c"), named("w"), named("p"), named("g")};
    struct profile out[PROFILE_MAX];
    unsigned eval = 99;
    char err[256];
    (void)state;

    in[0].has_half_life = true;
    in[0].half_life = msg_str_c("10ba");
    in[1].has_update_after_step = true;
    in[1].update_after_step = 5;
    in[2].has_sigma_rel = true;
    in[2].sigma_rel = 0.05;
    in[3].has_gamma = true;
    in[3].gamma = 6.94;
    in[3].has_update_interval = true;
    in[3].update_interval = msg_str_c("4ba");
    assert_int_equal(profile_config(out, in, 4, false, msg_str_c(NULL), &eval, err,
                                    sizeof(err)),
                     0);
    assert_int_equal(eval, 0);
    assert_int_equal(out[0].kind, PROFILE_COMPOSER);
    assert_false(out[0].started);
    assert_int_equal(out[1].kind, PROFILE_WARMUP);
    assert_true(out[1].started);
    assert_true(out[1].sched.u.warmup.decay == SCHEDULE_WARMUP_DEFAULT_DECAY);
    assert_int_equal(out[1].sched.u.warmup.update_after_step, 5);
    assert_int_equal(out[2].kind, PROFILE_POWER);
    assert_true(out[2].has_sigma_rel);
    assert_true(out[2].sched.u.power.gamma > 6.0 && out[2].sched.u.power.gamma < 20.0);
    assert_int_equal(out[3].sched.update_interval, 4);
    assert_string_equal(out[3].update_interval, "4ba");

    /* The settings as status writes them: defaults filled in, sigma_rel as given. */
    struct msg_profile s;
    profile_settings(&out[1], &s);
    assert_true(msg_str_eq(s.schedule, "warmup"));
    assert_true(s.has_inv_gamma && s.inv_gamma == 1.0);
    profile_settings(&out[2], &s);
    assert_true(s.has_sigma_rel && !s.has_gamma && s.sigma_rel == 0.05);
    assert_int_equal(profile_find(out, 4, msg_str_c("p")), 2);
    assert_int_equal(profile_find(out, 4, msg_str_c("x")), -1);
}

static void test_profile_bad_configs_name_the_field(void **state)
{
    struct msg_profile in[9];
    (void)state;

    for (int i = 0; i < 9; i++)
        in[i] = named((const char *[]){"a", "b", "c", "d", "e", "f", "g", "h", "i"}[i]);
    expect_error(in, 9, NULL, "config.profiles: 9 profiles; a session holds 1 to 8");
    expect_error(in, 0, NULL, "config.profiles: 0 profiles");
    in[1] = named("a");
    expect_error(in, 2, NULL, "config.profiles: \"a\" is given twice");
    in[0] = named("bad/name");
    expect_error(in, 1, NULL, "a profile name is 1 to 32 characters");
    in[0] = named("x");
    expect_error(in, 1, "y", "config.eval_profile: \"y\" names none of the profiles");
    in[0].has_schedule = true;
    in[0].schedule = msg_str_c("linear");
    expect_error(in, 1, NULL, "config.profiles.x.schedule: \"linear\" is not one of");
    in[0] = named("x");
    in[0].has_decay = true;
    in[0].decay = 0.99;
    in[0].has_ema_start = true;
    in[0].ema_start = msg_str_c("10ba");
    expect_error(in, 1, NULL, "config.profiles.x.ema_start: not a setting of a warmup profile");
    in[0] = named("x");
    in[0].has_sigma_rel = in[0].has_gamma = true;
    in[0].sigma_rel = 0.1;
    in[0].gamma = 7;
    expect_error(in, 1, NULL, "config.profiles.x.gamma: given together with sigma_rel");
    in[0].has_gamma = false;
    in[0].sigma_rel = 0.29;
    expect_error(in, 1, NULL, "config.profiles.x.sigma_rel: 0.29 is not in (0, ");
    in[0] = named("x");
    in[0].has_schedule = true;
    in[0].schedule = msg_str_c("power");
    expect_error(in, 1, NULL, "config.profiles.x: a power profile needs sigma_rel or gamma");
    in[0] = named("x");
    in[0].has_inv_gamma = true;
    in[0].inv_gamma = 0;
    expect_error(in, 1, NULL, "config.profiles.x.inv_gamma: 0 is not a finite number > 0");
    in[0] = named("x");
    in[0].has_power = true;
    in[0].power = 1;
    in[0].has_update_interval = true;
    in[0].update_interval = msg_str_c("2ep");
    expect_error(in, 1, NULL, "config.profiles.x.update_interval: \"2ep\": warmup and power "
                 "profiles update every N batches");
    in[0] = named("x");
    in[0].has_half_life = true;
    in[0].half_life = msg_str_c("10ep");
    in[0].has_update_interval = true;
    in[0].update_interval = msg_str_c("1ba");
    expect_error(in, 1, NULL, "config.profiles.x.update_interval");
}

static struct ema_clock at(uint64_t batch)
{
    struct ema_clock c;
    memset(&c, 0, sizeof(c));
    c.batch = batch;
    return c;
}

static void test_profile_decide_and_commit_follow_each_schedule(void **state)
{
    struct msg_profile in[3] = {named("c"), named("w"), named("p")};
    struct profile p[PROFILE_MAX];
    struct profile_plan plan;
    struct ema_state st;
    unsigned eval;
    char err[256];
    (void)state;

    in[0].has_smoothing = true;
    in[0].smoothing = 0.5;
    in[0].has_update_interval = true;
    in[0].update_interval = msg_str_c("2ba");
    in[0].has_ema_start = true;
    in[0].ema_start = msg_str_c("3ba");
    in[1].has_update_after_step = true;
    in[1].update_after_step = 1;
    in[2].has_gamma = true;
    in[2].gamma = 1.0;
    in[2].has_update_interval = true;
    in[2].update_interval = msg_str_c("2ba");
    assert_int_equal(profile_config(p, in, 3, false, msg_str_c(NULL), &eval, err, sizeof(err)),
                     0);
    ema_state_init(&st);

    struct ema_clock c = at(1);
    assert_int_equal(profile_decide(p, 3, false, EMA_EVENT_BATCH_END, &c, &plan), 0);
    assert_int_equal(plan.init, 0);
    assert_int_equal(plan.due, 1u << 1);         /* warmup, k = -1: decay 0, a copy */
    assert_true(plan.decay[1] == 0.0);
    assert_int_equal(plan.action, EMA_ACTION_UPDATE);
    profile_commit(p, 3, &plan, &c, &st);
    assert_int_equal(st.updates, 1);
    assert_true(st.started);

    c = at(2);
    assert_int_equal(profile_decide(p, 3, false, EMA_EVENT_BATCH_END, &c, &plan), 0);
    assert_int_equal(plan.due, (1u << 1) | (1u << 2));
    assert_true(plan.decay[2] == 0.0);           /* the power profile's first: D = b */
    profile_commit(p, 3, &plan, &c, &st);

    c = at(3);                                   /* composer starts, not due (3 % 2) */
    assert_int_equal(profile_decide(p, 3, false, EMA_EVENT_BATCH_END, &c, &plan), 0);
    assert_int_equal(plan.init, 1u);
    assert_int_equal(plan.due, 1u << 1);
    assert_true(plan.decay[1] == fmax(fmin(1.0 - pow(2.0, -2.0 / 3.0), 0.9999), 0.0));
    assert_int_equal(plan.action, EMA_ACTION_START_UPDATE);
    profile_commit(p, 3, &plan, &c, &st);
    assert_true(p[0].started);
    assert_int_equal(p[0].updates, 0);

    c = at(4);
    assert_int_equal(profile_decide(p, 3, false, EMA_EVENT_BATCH_END, &c, &plan), 0);
    assert_int_equal(plan.due, 7u);
    assert_true(plan.decay[0] == 0.5);
    assert_true(plan.decay[2] == pow(1.0 - 2.0 / 4.0, 2.0));
    /* Swapped in: nothing is due, and nothing is recorded. */
    struct profile_plan none;
    assert_int_equal(profile_decide(p, 3, true, EMA_EVENT_BATCH_END, &c, &none), 0);
    assert_int_equal(none.due | none.init, 0);
    assert_int_equal(none.action, EMA_ACTION_NONE);
    /* epoch_end is no warm-up's or power profile's event; batch_start nobody's. */
    assert_int_equal(profile_decide(p, 3, false, EMA_EVENT_EPOCH_END, &c, &none), 0);
    assert_int_equal(none.due, 0);
    assert_int_equal(profile_decide(p, 3, false, EMA_EVENT_BATCH_START, &c, &none), 0);
    assert_int_equal(none.due, 0);
    profile_commit(p, 3, &plan, &c, &st);
    assert_int_equal(p[2].updates, 2);
    assert_int_equal(p[2].last_batch, 4);
    assert_true(p[2].has_last_decay && p[2].last_decay == 0.25);
    assert_int_equal(st.updates, 4);
    assert_int_equal(st.last_time.batch, 4);

    /* The same batch again is due for none of the batch schedules. */
    assert_int_equal(profile_decide(p, 3, false, EMA_EVENT_BATCH_END, &c, &plan), 0);
    assert_int_equal(plan.due & 6u, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_profile_schedule_is_inferred_from_the_fields),
        cmocka_unit_test(test_profile_bad_configs_name_the_field),
        cmocka_unit_test(test_profile_decide_and_commit_follow_each_schedule),
    };
    return cmocka_run_group_tests_name("profile", tests, NULL, NULL);
}
