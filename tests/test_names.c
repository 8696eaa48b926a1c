/*
 * test_names.c - the contract's vocabulary (proto/names.c): session and
 * tensor names, UTF-8, event and action names, shadow object names.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "names.h"

#define S(lit) (lit), (sizeof(lit) - 1)

static void test_session_names_take_128_bytes_of_the_allowed_characters(void **state)
{
    char name[NAMES_SESSION_MAX + 1];
    (void)state;

    assert_true(names_session_valid(S("run-1/rank.0:a_B")));
    assert_true(names_session_valid(S("run-1")));
    assert_true(names_session_valid(S("team/exp:3.a_b")));
    assert_false(names_session_valid(S("")));
    assert_false(names_session_valid(S("with space")));
    assert_false(names_session_valid(S("a b")));
    assert_false(names_session_valid(S("caf\xc3\xa9")));
    assert_false(names_session_valid(S("\xc3\xa9"))); /* é alone */
    assert_false(names_session_valid(S("a\0b")));
    assert_false(names_session_valid(S("a%b")));
    assert_false(names_session_valid(NULL, 0));
    memset(name, 'x', sizeof(name));
    assert_true(names_session_valid(name, NAMES_SESSION_MAX));
    assert_false(names_session_valid(name, NAMES_SESSION_MAX + 1));
}

static void test_qualified_session_names_start_with_digits_and_a_colon(void **state)
{
    (void)state;

    assert_true(names_session_qualified(S("1000:run")));
    assert_true(names_session_qualified(S("0:x")));
    assert_false(names_session_qualified(S(":run")));      /* no digits */
    assert_false(names_session_qualified(S("1000")));      /* no colon */
    assert_true(names_session_qualified(S("1000:")));      /* nothing after: still reserved */
    assert_false(names_session_qualified(S("a1000:run"))); /* digits not first */
    assert_true(names_session_qualified(S("1000:run-1")));
    assert_false(names_session_qualified(S("run:1")));
    assert_false(names_session_qualified(S(":1")));
    assert_false(names_session_qualified(S("12a:b")));
    assert_false(names_session_qualified(S("team/exp:3.a_b"))); /* a colon, later */
}

static void test_utf8_rejects_overlongs_surrogates_and_truncation(void **state)
{
    (void)state;

    assert_true(names_utf8_valid(S("plain ascii")));
    assert_true(names_utf8_valid(S("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"))); /* é € 😀 */
    assert_true(names_utf8_valid(S("\xf4\x8f\xbf\xbf")));                     /* U+10FFFF */
    assert_false(names_utf8_valid(S("\xc0\xaf")));         /* overlong '/' */
    assert_false(names_utf8_valid(S("\xe0\x80\xaf")));     /* overlong, 3 bytes */
    assert_false(names_utf8_valid(S("\xf0\x80\x80\xaf"))); /* overlong, 4 bytes */
    assert_false(names_utf8_valid(S("\xed\xa0\x80")));     /* U+D800, a surrogate */
    assert_false(names_utf8_valid(S("\xf4\x90\x80\x80"))); /* past U+10FFFF */
    assert_false(names_utf8_valid(S("ab\xc3")));           /* cut short by the end */
    assert_false(names_utf8_valid(S("\xe2\x82")));
    assert_false(names_utf8_valid(S("\x80")));             /* a continuation alone */
    assert_false(names_utf8_valid(S("\xc3(")));            /* not a continuation */
}

static void test_utf8_char_gives_the_length_of_one_character(void **state)
{
    (void)state;

    assert_int_equal(names_utf8_char(S("a\xc3\xa9")), 1);
    assert_int_equal(names_utf8_char(S("\0")), 1);
    assert_int_equal(names_utf8_char(S("\xc3\xa9z")), 2);
    assert_int_equal(names_utf8_char(S("\xe2\x82\xac")), 3);
    assert_int_equal(names_utf8_char(S("\xf0\x9f\x98\x80")), 4);
    assert_int_equal(names_utf8_char("\xe2\x82\xac", 2), 0); /* only len bytes are read */
    assert_int_equal(names_utf8_char(S("\xc0\xaf")), 0);
    assert_int_equal(names_utf8_char(S("\xed\xa0\x80")), 0);
    assert_int_equal(names_utf8_char(S("\xf4\x90\x80\x80")), 0);
    assert_int_equal(names_utf8_char(S("\x80")), 0);
    assert_int_equal(names_utf8_char("a", 0), 0);
    assert_int_equal(names_utf8_char(NULL, 1), 0);
}

static void test_tensor_names_are_utf8_without_nul_up_to_1024_bytes(void **state)
{
    char name[NAMES_TENSOR_MAX + 1];
    (void)state;

    assert_true(names_tensor_valid(S("layer.0.weight")));
    assert_true(names_tensor_valid(S("layer1.weight")));
    assert_true(names_tensor_valid(S("poids \xc3\xa9")));
    assert_true(names_tensor_valid(S("poids.\xc3\xa9.\xce\xb2.\xe4\xb8\xad"))); /* poids.é.β.中 */
    assert_true(names_tensor_valid(S("\xf0\x9f\x98\x80")));                         /* U+1F600 */
    assert_false(names_tensor_valid(S("")));
    assert_false(names_tensor_valid(S("a\0b")));
    assert_false(names_tensor_valid(S("\xc3")));             /* truncated */
    assert_false(names_tensor_valid(S("\xc0\xaf")));         /* overlong '/' */
    assert_false(names_tensor_valid(S("\xe0\x80\xaf")));     /* overlong */
    assert_false(names_tensor_valid(S("\xed\xa0\x80")));     /* surrogate */
    assert_false(names_tensor_valid(S("\xf4\x90\x80\x80"))); /* past U+10FFFF */
    assert_false(names_tensor_valid(S("\x80")));             /* a continuation alone */
    assert_false(names_tensor_valid(S("ab\xe2\x82")));       /* cut at the end */
    assert_false(names_tensor_valid(NULL, 0));
    memset(name, 'w', sizeof(name));
    assert_true(names_tensor_valid(name, NAMES_TENSOR_MAX));
    assert_false(names_tensor_valid(name, NAMES_TENSOR_MAX + 1));
}

static void test_event_names_round_trip_but_swaps_are_not_events(void **state)
{
    static const char *const wire_events[NAMES_EVENT_SWAP_EMA] = {
        "init", "fit_start", "batch_start", "batch_end",
        "epoch_end", "eval_start", "eval_end", "checkpoint",
    };
    enum names_event ev;
    (void)state;

    for (int i = 0; i < NAMES_EVENT_SWAP_EMA; i++) {
        assert_string_equal(names_event((enum names_event)i), wire_events[i]);
        assert_int_equal(names_event_lookup(wire_events[i], strlen(wire_events[i]), &ev), 0);
        assert_int_equal(ev, i);
    }
    assert_string_equal(names_event(NAMES_EVENT_BATCH_END), "batch_end");
    assert_string_equal(names_event(NAMES_EVENT_SWAP_TRAIN), "swap:train");
    assert_null(names_event(NAMES_EVENT_COUNT));
    assert_null(names_event((enum names_event)-1));
    assert_int_equal(names_event_lookup(S("swap:ema"), &ev), -EINVAL);
    assert_int_equal(names_event_lookup(S("batch_en"), &ev), -EINVAL); /* a prefix is not it */
    assert_int_equal(names_event_lookup(S("batch_endx"), &ev), -EINVAL);
    assert_int_equal(names_event_lookup(NULL, 0, &ev), -EINVAL);
    assert_string_equal(names_event(NAMES_EVENT_SWAP_EMA), "swap:ema");

    assert_int_equal(names_swap_lookup(S("ema"), &ev), 0);
    assert_int_equal(ev, NAMES_EVENT_SWAP_EMA);
    assert_int_equal(names_swap_lookup(S("train"), &ev), 0);
    assert_int_equal(ev, NAMES_EVENT_SWAP_TRAIN);
    assert_int_equal(names_swap_lookup(S("swap:ema"), &ev), -EINVAL);
}

static void test_names_reject_near_misses(void **state)
{
    static const char *const bad_events[] = {"",          "batch",      "batch_end ", " batch_end",
                                             "BATCH_END", "batch_endx", "swap:ema",   "swap:train",
                                             "ema",       "batch-end",  "checkpoints"};
    static const char *const bad_actions[] = {"",     "start+", "start update",
                                              "swap", "NONE",   "swap_in\n"};
    static const char *const bad_swaps[] = {"", "EMA", "ema ", "training", "swap:ema", "tra"};
    enum names_event ev = NAMES_EVENT_COUNT;
    enum names_action a = NAMES_ACTION_COUNT;
    (void)state;

    for (size_t i = 0; i < sizeof(bad_events) / sizeof(bad_events[0]); i++)
        assert_int_equal(names_event_lookup(bad_events[i], strlen(bad_events[i]), &ev), -EINVAL);
    for (size_t i = 0; i < sizeof(bad_actions) / sizeof(bad_actions[0]); i++)
        assert_int_equal(names_action_lookup(bad_actions[i], strlen(bad_actions[i]), &a), -EINVAL);
    for (size_t i = 0; i < sizeof(bad_swaps) / sizeof(bad_swaps[0]); i++)
        assert_int_equal(names_swap_lookup(bad_swaps[i], strlen(bad_swaps[i]), &ev), -EINVAL);
    /* Untouched on failure. */
    assert_int_equal(ev, NAMES_EVENT_COUNT);
    assert_int_equal(a, NAMES_ACTION_COUNT);
    /* Length, not the terminator, delimits a name. */
    assert_int_equal(names_event_lookup("batch_end", 5, &ev), -EINVAL);
    assert_int_equal(names_event_lookup("initXYZ", 4, &ev), 0);
    assert_int_equal(ev, NAMES_EVENT_INIT);
    assert_int_equal(names_event_lookup(S("init"), NULL), -EINVAL);
    assert_int_equal(names_action_lookup(S("none"), NULL), -EINVAL);
    assert_int_equal(names_swap_lookup(S("ema"), NULL), -EINVAL);
}

static void test_action_names_round_trip(void **state)
{
    static const char *const expect[NAMES_ACTION_COUNT] = {
        "none", "start", "update", "start+update", "swap_in", "swap_out",
    };
    enum names_action a;
    (void)state;

    for (int i = 0; i < NAMES_ACTION_COUNT; i++) {
        assert_string_equal(names_action((enum names_action)i), expect[i]);
        assert_int_equal(names_action_lookup(expect[i], strlen(expect[i]), &a), 0);
        assert_int_equal(a, i);
    }
    assert_null(names_action(NAMES_ACTION_COUNT));
    assert_int_equal(names_action_lookup(S("start+"), &a), -EINVAL);
}

static void test_shadow_names_carry_the_pid_and_24_hex_digits(void **state)
{
    const unsigned char rnd[NAMES_SHADOW_RANDOM] = {0x00, 0x01, 0xab, 0xff, 0x10, 0x20,
                                                    0x30, 0x40, 0x50, 0x60, 0x70, 0x80};
    char name[64], small[20];
    (void)state;

    assert_int_equal(names_shadow_format(name, sizeof(name), 4242, rnd), 0);
    assert_string_equal(name, "/emad-shadow-4242-0001abff1020304050607080");
    assert_int_equal(names_shadow_format(small, sizeof(small), 4242, rnd), -ENAMETOOLONG);

    assert_int_equal(names_shadow_pid(name), 4242);
    assert_int_equal(names_shadow_pid(name + 1), 4242); /* as /dev/shm lists it */
    assert_int_equal(names_shadow_pid("/emad-shadow-0-00"), 0);     /* no pid 0 */
    assert_int_equal(names_shadow_pid("/emad-shadow-042-00"), 0);   /* no leading zero */
    assert_int_equal(names_shadow_pid("/emad-shadow-42-"), 0);      /* no random part */
    assert_int_equal(names_shadow_pid("/emad-shadow-42-00G"), 0);   /* not lower-case hex */
    assert_int_equal(names_shadow_pid("/emad-shadow-42"), 0);
    assert_int_equal(names_shadow_pid("/emad-0123456789abcdef"), 0); /* a trainer's segment */
    assert_int_equal(names_shadow_pid("/emad-shadow-99999999999-00"), 0); /* past INT_MAX */
    assert_int_equal(names_shadow_pid(NULL), 0);
}

static void test_shadow_rename_replaces_the_pid_only(void **state)
{
    char out[64];
    (void)state;

    assert_int_equal(names_shadow_rename("/emad-shadow-17-00aa", 4242, out, sizeof(out)), 0);
    assert_string_equal(out, "/emad-shadow-4242-00aa");
    assert_int_equal(names_shadow_rename("/emad-shadow-17", 4242, out, sizeof(out)), -EINVAL);
    assert_int_equal(names_shadow_rename("/emad-17-00aa", 4242, out, sizeof(out)), -EINVAL);
    assert_int_equal(names_shadow_rename("/emad-shadow-17-00aa", 4242, out, 10), -ENAMETOOLONG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_names_take_128_bytes_of_the_allowed_characters),
        cmocka_unit_test(test_qualified_session_names_start_with_digits_and_a_colon),
        cmocka_unit_test(test_utf8_rejects_overlongs_surrogates_and_truncation),
        cmocka_unit_test(test_utf8_char_gives_the_length_of_one_character),
        cmocka_unit_test(test_tensor_names_are_utf8_without_nul_up_to_1024_bytes),
        cmocka_unit_test(test_event_names_round_trip_but_swaps_are_not_events),
        cmocka_unit_test(test_names_reject_near_misses),
        cmocka_unit_test(test_action_names_round_trip),
        cmocka_unit_test(test_shadow_names_carry_the_pid_and_24_hex_digits),
        cmocka_unit_test(test_shadow_rename_replaces_the_pid_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
