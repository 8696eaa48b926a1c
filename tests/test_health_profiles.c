/*
 * test_health_profiles.c - health.c's signals per profile (docs/protocol.md "Health"): each
 * profile's distance and no-op from its own parts, the session's alarms holding when any
 * profile's hold, and nothing of a profile that did not update.
 */
#include "health.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <setjmp.h>
#include <cmocka.h>

static void fill(struct health *h, size_t part, unsigned p, uint64_t elems, uint64_t nonfinite,
                 double sumsq, bool changed)
{
    struct kernel_health *k = &h->parts[part].prof[p];
    k->elems = elems;
    k->nonfinite = nonfinite;
    k->sumsq = sumsq;
    k->changed = changed;
}

static bool has_alarm(const char *const *a, size_t n, const char *want)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(a[i], want) == 0)
            return true;
    return false;
}

static void test_each_profile_sums_its_own_parts(void **state)
{
    struct health h;
    size_t first;
    const char *a[HEALTH_ALARMS_MAX];
    (void)state;

    memset(&h, 0, sizeof(h));
    h.enabled = true;
    assert_int_equal(health_prepare(&h, 2), 0);
    /* Profile 0: 10 + 6 elements, one non-finite, squares 4 + 11: RMS sqrt(15 / 15). */
    fill(&h, 0, 0, 10, 1, 4.0, true);
    fill(&h, 1, 0, 6, 0, 11.0, false);
    /* Profile 2: nothing changed anywhere (a no-op), squares 0. */
    fill(&h, 0, 2, 10, 1, 0.0, false);
    fill(&h, 1, 2, 6, 0, 0.0, false);
    /* Profile 1 did not update: its parts hold garbage that must not be read. */
    fill(&h, 0, 1, 99, 0, 1e9, true);
    health_finish_profiles(&h, 1u << 0 | 1u << 2);
    h.parts[0].k = h.parts[0].prof[0];
    h.parts[1].k = h.parts[1].prof[0];
    assert_int_equal(health_finish(&h, 1, 1000, &first), 1);

    assert_int_equal(h.prof[0].checked_updates, 1);
    assert_true(h.prof[0].has_distance);
    assert_true(fabs(h.prof[0].distance - 1.0) < 1e-12);
    assert_false(h.prof[0].last_noop);
    assert_int_equal(h.prof[1].checked_updates, 0);
    assert_false(h.prof[1].has_distance);
    assert_int_equal(h.prof[2].checked_updates, 1);
    assert_true(h.prof[2].last_noop);
    assert_int_equal(h.prof[2].noop_updates, 1);
    assert_true(h.prof[2].has_distance);
    assert_true(h.prof[2].distance == 0.0);

    /* The session's own fields are profile 0's (the one the event picked); its alarms still
     * show profile 2's no-op. */
    assert_false(h.own.last_noop);
    size_t n = health_alarms(&h, a);
    assert_true(has_alarm(a, n, HEALTH_ALARM_NOOP));
    assert_true(has_alarm(a, n, HEALTH_ALARM_NONFINITE));
    assert_false(has_alarm(a, n, HEALTH_ALARM_POISONED));
    const char *pa[2];
    assert_int_equal(health_profile_alarms(&h, 0, pa), 0);
    assert_int_equal(health_profile_alarms(&h, 1, pa), 0);
    assert_int_equal(health_profile_alarms(&h, 2, pa), 1);
    assert_string_equal(pa[0], HEALTH_ALARM_NOOP);

    /* The next update: profile 1 poisoned (its squares overflowed), the others fine. */
    assert_int_equal(health_prepare(&h, 1), 0);
    fill(&h, 0, 0, 16, 0, 16.0, true);
    fill(&h, 0, 1, 16, 0, INFINITY, true);
    fill(&h, 0, 2, 16, 0, 4.0, true);
    health_finish_profiles(&h, 7u);
    h.parts[0].k = h.parts[0].prof[0];
    assert_int_equal(health_finish(&h, 2, 2000, &first), 0);
    assert_int_equal(h.prof[1].checked_updates, 1);
    assert_true(isinf(h.prof[1].distance));
    assert_false(h.prof[2].last_noop);
    assert_int_equal(h.prof[2].noop_updates, 1);
    assert_true(h.own.has_distance && isfinite(h.own.distance));
    n = health_alarms(&h, a);
    assert_int_equal(n, 1);
    assert_string_equal(a[0], HEALTH_ALARM_POISONED);
    assert_int_equal(health_profile_alarms(&h, 1, pa), 1);
    assert_string_equal(pa[0], HEALTH_ALARM_POISONED);

    struct msg_profile_health o;
    health_profile_state(&h, 1, &o);
    assert_int_equal(o.updates_checked, 1);
    assert_true(o.has_distance);
    assert_int_equal(o.nalarms, 1);
    assert_int_equal(o.alarms[0].len, strlen(HEALTH_ALARM_POISONED));
    health_free(&h);
}

/* A session without profiles: nothing of the per-profile fields shows. */
static void test_single_profile_session_is_unchanged(void **state)
{
    struct health h;
    size_t first;
    const char *a[HEALTH_ALARMS_MAX];
    (void)state;

    memset(&h, 0, sizeof(h));
    assert_int_equal(health_prepare(&h, 1), 0);
    h.parts[0].k.elems = 4;
    h.parts[0].k.sumsq = 4.0;
    h.parts[0].k.changed = true;
    assert_int_equal(health_finish(&h, 1, 1000, &first), 0);
    assert_int_equal(health_alarms(&h, a), 0);
    assert_int_equal(h.prof_seen, 0);
    assert_true(fabs(h.own.distance - 1.0) < 1e-12);
    health_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_profile_sums_its_own_parts),
        cmocka_unit_test(test_single_profile_session_is_unchanged),
    };
    return cmocka_run_group_tests_name("health_profiles", tests, NULL, NULL);
}
