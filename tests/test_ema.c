/* test_ema.c - the EMA state machine: time strings, configuration rules, every transition. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ema.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- Helpers ------------------------------------------------------------------------------- */

/* A config input from NUL-terminated strings; NULL leaves a field absent. */
static struct ema_config_in input(const char *half_life, const char *interval, const char *start)
{
    struct ema_config_in in = {0};

    in.half_life = half_life;
    in.half_life_len = half_life != NULL ? strlen(half_life) : 0;
    in.update_interval = interval;
    in.update_interval_len = interval != NULL ? strlen(interval) : 0;
    in.ema_start = start;
    in.ema_start_len = start != NULL ? strlen(start) : 0;
    return in;
}

static struct ema_config config(const char *half_life, const char *interval, const char *start)
{
    struct ema_config_in in = input(half_life, interval, start);
    struct ema_config cfg;
    char err[256] = "";

    if (ema_config_init(&cfg, &in, err, sizeof(err)) != 0)
        fail_msg("config(%s, %s, %s): %s", half_life, interval, start, err);
    return cfg;
}

static struct ema_config smoothing_config(double smoothing, const char *interval)
{
    struct ema_config_in in = input(NULL, interval, NULL);
    struct ema_config cfg;
    char err[256] = "";

    in.has_smoothing = true;
    in.smoothing = smoothing;
    if (ema_config_init(&cfg, &in, err, sizeof(err)) != 0)
        fail_msg("smoothing %g: %s", smoothing, err);
    return cfg;
}

static struct ema_clock at(uint64_t batch, uint64_t epoch)
{
    return (struct ema_clock){.batch = batch, .epoch = epoch};
}

static struct ema_clock at_dur(uint64_t batch, double duration)
{
    return (struct ema_clock){.batch = batch, .duration = duration, .has_duration = true};
}

static enum ema_action decide(const struct ema_config *cfg, const struct ema_state *st,
                              enum ema_event ev, struct ema_clock now)
{
    enum ema_action action = EMA_ACTION_COUNT;

    assert_int_equal(ema_decide(cfg, st, ev, &now, &action), 0);
    return action;
}

static struct ema_state state(bool started, bool active)
{
    struct ema_state st;

    ema_state_init(&st);
    st.started = started;
    st.active = active;
    return st;
}

static void assert_action(enum ema_action got, enum ema_action want, const char *what)
{
    if (got != want)
        fail_msg("%s: got %s, want %s", what, ema_action_name(got), ema_action_name(want));
}

/* ---- Time strings -------------------------------------------------------------------------- */

static const struct {
    const char *s;
    enum ema_unit unit;
    uint64_t value;
    const char *canonical;
} time_good[] = {
    {"0ba", EMA_UNIT_BA, 0, "0ba"},
    {"1ba", EMA_UNIT_BA, 1, "1ba"},
    {"1000ba", EMA_UNIT_BA, 1000, "1000ba"},
    {"007ba", EMA_UNIT_BA, 7, "7ba"},
    {"18446744073709551615ba", EMA_UNIT_BA, UINT64_MAX, "18446744073709551615ba"},
    {"0ep", EMA_UNIT_EP, 0, "0ep"},
    {"2ep", EMA_UNIT_EP, 2, "2ep"},
    {"0dur", EMA_UNIT_DUR, 0, "0.0dur"},
    {"0.0dur", EMA_UNIT_DUR, 0, "0.0dur"},
    {"0.25dur", EMA_UNIT_DUR, 250000000000000ULL, "0.25dur"},
    {"00.5dur", EMA_UNIT_DUR, 500000000000000ULL, "0.5dur"},
    {"0.100dur", EMA_UNIT_DUR, 100000000000000ULL, "0.1dur"},
    {"0.000000000000001dur", EMA_UNIT_DUR, 1, "0.000000000000001dur"},
    {"0.999999999999999dur", EMA_UNIT_DUR, 999999999999999ULL, "0.999999999999999dur"},
    {"1dur", EMA_UNIT_DUR, EMA_DUR_ONE, "1.0dur"},
    {"1.0dur", EMA_UNIT_DUR, EMA_DUR_ONE, "1.0dur"},
    {"1.000000000000000dur", EMA_UNIT_DUR, EMA_DUR_ONE, "1.0dur"},
    /* Composer's Time.from_timestring grammar (issue #12): units without regard to case, counts
     * written as integral floats or in scientific notation, fractions for dur. */
    {"1e1ba", EMA_UNIT_BA, 10, "10ba"},
    {"10.0ba", EMA_UNIT_BA, 10, "10ba"},
    {"10BA", EMA_UNIT_BA, 10, "10ba"},
    {"1Ba", EMA_UNIT_BA, 1, "1ba"},
    {"2Ep", EMA_UNIT_EP, 2, "2ep"},
    {"2EP", EMA_UNIT_EP, 2, "2ep"},
    {"1.0ba", EMA_UNIT_BA, 1, "1ba"},
    {"1.ba", EMA_UNIT_BA, 1, "1ba"},
    {"+1ba", EMA_UNIT_BA, 1, "1ba"},
    {"1E3ba", EMA_UNIT_BA, 1000, "1000ba"},
    {"1e+3ba", EMA_UNIT_BA, 1000, "1000ba"},
    {"2.5e1ep", EMA_UNIT_EP, 25, "25ep"},
    {"1500e-2ba", EMA_UNIT_BA, 15, "15ba"},
    {"1_000ba", EMA_UNIT_BA, 1000, "1000ba"},
    {"0.0ba", EMA_UNIT_BA, 0, "0ba"},
    {"0e999999999ba", EMA_UNIT_BA, 0, "0ba"},
    {"1.8446744073709551615e19ba", EMA_UNIT_BA, UINT64_MAX, "18446744073709551615ba"},
    {".5dur", EMA_UNIT_DUR, 500000000000000ULL, "0.5dur"},
    {"5e-1dur", EMA_UNIT_DUR, 500000000000000ULL, "0.5dur"},
    {"0.5DUR", EMA_UNIT_DUR, 500000000000000ULL, "0.5dur"},
    {"0.dur", EMA_UNIT_DUR, 0, "0.0dur"},
    {"1.dur", EMA_UNIT_DUR, EMA_DUR_ONE, "1.0dur"},
    {"+0.5dur", EMA_UNIT_DUR, 500000000000000ULL, "0.5dur"},
    {"1e0dur", EMA_UNIT_DUR, EMA_DUR_ONE, "1.0dur"},
    {"1e-15dur", EMA_UNIT_DUR, 1, "0.000000000000001dur"},
    {"0.1000000000000000000000dur", EMA_UNIT_DUR, 100000000000000ULL, "0.1dur"},
    {"1.0000000000000000dur", EMA_UNIT_DUR, EMA_DUR_ONE, "1.0dur"},
    {"1sp", EMA_UNIT_SP, 1, "1sp"},
    {"3e4tok", EMA_UNIT_TOK, 30000, "30000tok"},
    {"2TOK", EMA_UNIT_TOK, 2, "2tok"},
    {"5Sp", EMA_UNIT_SP, 5, "5sp"},
    {"90sec", EMA_UNIT_SEC, 90, "90sec"},
    {"1.2e2SEC", EMA_UNIT_SEC, 120, "120sec"},
    /* Composer's wall-clock form, in seconds. */
    {"1h30m", EMA_UNIT_SEC, 5400, "5400sec"},
    {"1h", EMA_UNIT_SEC, 3600, "3600sec"},
    {"30m", EMA_UNIT_SEC, 1800, "1800sec"},
    {"45s", EMA_UNIT_SEC, 45, "45sec"},
    {"23h59m59s", EMA_UNIT_SEC, 86399, "86399sec"},
    {"01h05m", EMA_UNIT_SEC, 3900, "3900sec"},
    {"1h5s", EMA_UNIT_SEC, 3605, "3605sec"},
    {"0h", EMA_UNIT_SEC, 0, "0sec"},
};

static const char *const time_bad[] = {
    "",
    "ba",
    "ep",
    "dur",
    "1",
    "10",
    "1b",
    "1 ba",
    "-1ba",
    " 1ba",
    "1ba ",
    "1ba\n",
    "1.5ba",
    ".5ba",
    "0x10ba",
    "0b1ba",
    "18446744073709551616ba",
    "99999999999999999999999ba",
    "1,5dur",
    "1.5dur",
    "2dur",
    "1.000000000000001dur",
    "0.0000000000000001dur",
    "0..5dur",
    "0.5.dur",
    "-0.5dur",
    "0.5 dur",
    "nan",
    "nandur",
    "infdur",
    "infba",
    "1inf",
    "inf",
    "Inf",
    "1ms",
    "1baba",
    "ba1",
    /* Composer's grammar refuses these too. */
    "1.5e0ba",
    "15e-1ba",
    "0.5sp",
    "1e-1tok",
    "1__000ba",
    "_1ba",
    "1_ba",
    "1_.5dur",
    "1e_1ba",
    "1e20ba",
    "1e1.5ba",
    "e1ba",
    ".ba",
    ".e1ba",
    "1e-16dur",
    "2e0dur",
    "1.0000000000000001dur",
    "1iter",
    "5ITER",
    "1h60m",
    "24h",
    "1h30m60s",
    "90m",
    "100s",
    "1H",
    "1m1h",
    "1h 30m",
    "h",
    "1s1s",
    "1ds",
};

static void test_ema_time_parse_accepts_canonical_and_padded_forms(void **unused)
{
    (void)unused;
    for (size_t i = 0; i < ARRAY_LEN(time_good); i++) {
        struct ema_time t = {.unit = EMA_UNIT_INF, .value = 12345};
        char buf[EMA_TIME_STRLEN];
        if (ema_time_parse(time_good[i].s, strlen(time_good[i].s), false, &t, NULL, 0) != 0)
            fail_msg("\"%s\" refused", time_good[i].s);
        assert_int_equal(t.unit, time_good[i].unit);
        assert_int_equal(t.value, time_good[i].value);
        assert_int_equal(ema_time_format(&t, buf, sizeof(buf)), 0);
        assert_string_equal(buf, time_good[i].canonical);
    }
}

static void test_ema_time_parse_rejects_malformed(void **unused)
{
    (void)unused;
    for (size_t i = 0; i < ARRAY_LEN(time_bad); i++) {
        struct ema_time t = {.unit = EMA_UNIT_EP, .value = 77};
        if (ema_time_parse(time_bad[i], strlen(time_bad[i]), false, &t, NULL, 0) != -EINVAL)
            fail_msg("\"%s\" accepted", time_bad[i]);
        /* A refusal leaves the output alone. */
        assert_int_equal(t.unit, EMA_UNIT_EP);
        assert_int_equal(t.value, 77);
    }
}

static void test_ema_time_parse_inf_only_when_allowed(void **unused)
{
    static const char *const bad[] = {"Inf",  "INF",  "infinity", "-inf",  "+inf",
                                      " inf", "inf ", "in",       "infba", "inf\n"};
    struct ema_time t;

    (void)unused;
    assert_int_equal(ema_time_parse("inf", 3, false, &t, NULL, 0), -EINVAL);
    assert_int_equal(ema_time_parse("inf", 3, true, &t, NULL, 0), 0);
    assert_int_equal(t.unit, EMA_UNIT_INF);
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        if (ema_time_parse(bad[i], strlen(bad[i]), true, &t, NULL, 0) != -EINVAL)
            fail_msg("\"%s\" accepted", bad[i]);
    }
    /* allow_inf does not loosen anything else. */
    for (size_t i = 0; i < ARRAY_LEN(time_bad); i++) {
        if (strcmp(time_bad[i], "inf") != 0 &&
            ema_time_parse(time_bad[i], strlen(time_bad[i]), true, &t, NULL, 0) != -EINVAL)
            fail_msg("\"%s\" accepted with allow_inf", time_bad[i]);
    }
}

static void test_ema_time_parse_reads_exactly_len_bytes(void **unused)
{
    struct ema_time t;

    (void)unused;
    /* Wire strings are not NUL-terminated: what follows len must not matter. */
    assert_int_equal(ema_time_parse("12baXYZ", 4, false, &t, NULL, 0), 0);
    assert_int_equal(t.unit, EMA_UNIT_BA);
    assert_int_equal(t.value, 12);
    assert_int_equal(ema_time_parse("1000ba", 5, false, &t, NULL, 0), -EINVAL);
    assert_int_equal(ema_time_parse("infinity", 3, true, &t, NULL, 0), 0);
    assert_int_equal(ema_time_parse("1ba\0", 4, false, &t, NULL, 0), -EINVAL);
    assert_int_equal(ema_time_parse("1\0ba", 4, false, &t, NULL, 0), -EINVAL);
    assert_int_equal(ema_time_parse("", 0, false, &t, NULL, 0), -EINVAL);
    assert_int_equal(ema_time_parse(NULL, 0, false, &t, NULL, 0), -EINVAL);
    assert_int_equal(ema_time_parse("1ba", 3, false, NULL, NULL, 0), -EINVAL);
}

static void test_ema_time_format_round_trips(void **unused)
{
    static const struct ema_time times[] = {
        {EMA_UNIT_BA, 0},   {EMA_UNIT_BA, UINT64_MAX},   {EMA_UNIT_EP, 3},
        {EMA_UNIT_DUR, 0},  {EMA_UNIT_DUR, 1},           {EMA_UNIT_DUR, 123456789012345ULL},
        {EMA_UNIT_DUR, 10}, {EMA_UNIT_DUR, EMA_DUR_ONE}, {EMA_UNIT_INF, 0},
    };
    char buf[EMA_TIME_STRLEN];

    (void)unused;
    for (size_t i = 0; i < ARRAY_LEN(times); i++) {
        struct ema_time back;
        assert_int_equal(ema_time_format(&times[i], buf, sizeof(buf)), 0);
        assert_int_equal(ema_time_parse(buf, strlen(buf), true, &back, NULL, 0), 0);
        assert_int_equal(back.unit, times[i].unit);
        assert_int_equal(back.value, times[i].value);
    }
    assert_int_equal(ema_time_format(&times[8], buf, sizeof(buf)), 0);
    assert_string_equal(buf, "inf");
}

static void test_ema_time_format_refuses_small_buffer_and_bad_values(void **unused)
{
    struct ema_time t = {EMA_UNIT_BA, 1000};
    char buf[6] = "xxxxx";

    (void)unused;
    assert_int_equal(ema_time_format(&t, buf, sizeof(buf)), -ENOSPC);
    assert_int_equal(buf[5], '\0');
    assert_string_equal(buf, "1000b");
    char fits[7];
    assert_int_equal(ema_time_format(&t, fits, sizeof(fits)), 0);
    assert_string_equal(fits, "1000ba");
    assert_int_equal(ema_time_format(&t, NULL, 0), -ENOSPC);
    t = (struct ema_time){EMA_UNIT_DUR, EMA_DUR_ONE + 1};
    assert_int_equal(ema_time_format(&t, buf, sizeof(buf)), -EINVAL);
    t = (struct ema_time){(enum ema_unit)42, 1};
    assert_int_equal(ema_time_format(&t, buf, sizeof(buf)), -EINVAL);
    assert_int_equal(ema_time_format(NULL, buf, sizeof(buf)), -EINVAL);
    assert_string_equal(ema_unit_name(EMA_UNIT_DUR), "dur");
    assert_null(ema_unit_name((enum ema_unit)42));
}

/* ---- Configuration ------------------------------------------------------------------------- */

static void test_ema_config_defaults_to_half_life_1000ba(void **unused)
{
    struct ema_config cfg = config(NULL, NULL, NULL);

    (void)unused;
    assert_true(cfg.has_half_life);
    assert_int_equal(cfg.half_life.unit, EMA_UNIT_BA);
    assert_int_equal(cfg.half_life.value, 1000);
    assert_int_equal(cfg.update_interval.unit, EMA_UNIT_BA);
    assert_int_equal(cfg.update_interval.value, 1);
    assert_int_equal(cfg.ema_start.unit, EMA_UNIT_DUR);
    assert_int_equal(cfg.ema_start.value, 0);
    assert_true(cfg.smoothing == pow(2.0, -1.0 / 1000.0));
}

static void test_ema_half_life_smoothing_is_two_to_minus_interval_over_half_life(void **unused)
{
    struct ema_config cfg = config("10ba", "2ba", NULL);

    (void)unused;
    assert_true(cfg.smoothing == pow(2.0, -0.2));
    cfg = config("3ep", "3ep", NULL);
    assert_true(cfg.smoothing == 0.5);
}

static void test_ema_half_life_zero_copies(void **unused)
{
    struct ema_config cfg = config("0ba", NULL, NULL);

    (void)unused;
    assert_true(cfg.smoothing == 0.0);
    cfg = config("0ep", "4ep", NULL);
    assert_true(cfg.smoothing == 0.0);
}

static void test_ema_half_life_inf_never_changes(void **unused)
{
    struct ema_config cfg = config("inf", NULL, NULL);

    (void)unused;
    assert_true(cfg.smoothing == 1.0);
    assert_int_equal(cfg.half_life.unit, EMA_UNIT_INF);
    /* "inf" has no unit to default the interval to, and accepts either unit. */
    assert_int_equal(cfg.update_interval.unit, EMA_UNIT_BA);
    assert_int_equal(cfg.update_interval.value, 1);
    cfg = config("inf", "3ep", NULL);
    assert_int_equal(cfg.update_interval.unit, EMA_UNIT_EP);
    assert_int_equal(cfg.update_interval.value, 3);
}

static void test_ema_interval_defaults_to_half_life_unit(void **unused)
{
    struct ema_config cfg = config("2ep", NULL, "1ep");

    (void)unused;
    assert_int_equal(cfg.update_interval.unit, EMA_UNIT_EP);
    assert_int_equal(cfg.update_interval.value, 1);
    assert_int_equal(cfg.ema_start.unit, EMA_UNIT_EP);
    assert_true(cfg.smoothing == pow(2.0, -0.5));
}

static void test_ema_smoothing_given_defaults_interval_to_1ba(void **unused)
{
    struct ema_config cfg = smoothing_config(0.9, NULL);

    (void)unused;
    assert_false(cfg.has_half_life);
    assert_true(cfg.smoothing == 0.9);
    assert_int_equal(cfg.update_interval.unit, EMA_UNIT_BA);
    assert_int_equal(cfg.update_interval.value, 1);
    /* Without a half-life there is no unit to match. */
    cfg = smoothing_config(0.5, "5ep");
    assert_int_equal(cfg.update_interval.unit, EMA_UNIT_EP);
    assert_int_equal(cfg.update_interval.value, 5);
    assert_true(smoothing_config(0.0, NULL).smoothing == 0.0);
    assert_true(smoothing_config(1.0, NULL).smoothing == 1.0);
}

static void test_ema_config_keeps_fields_for_status(void **unused)
{
    struct ema_config cfg = config("0500ba", "0002ba", "0.50dur");
    char buf[EMA_TIME_STRLEN];

    (void)unused;
    assert_int_equal(ema_time_format(&cfg.half_life, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "500ba");
    assert_int_equal(ema_time_format(&cfg.update_interval, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "2ba");
    assert_int_equal(ema_time_format(&cfg.ema_start, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "0.5dur");
}

static void test_ema_config_strings_need_no_terminator(void **unused)
{
    struct ema_config_in in = input("10baXX", "2baYY", "3epZZ");
    struct ema_config cfg;

    (void)unused;
    in.half_life_len = 4;
    in.update_interval_len = 3;
    in.ema_start_len = 3;
    assert_int_equal(ema_config_init(&cfg, &in, NULL, 0), 0);
    assert_int_equal(cfg.half_life.value, 10);
    assert_int_equal(cfg.update_interval.value, 2);
    assert_int_equal(cfg.ema_start.unit, EMA_UNIT_EP);
}

static const struct {
    const char *half_life, *interval, *start;
    bool has_smoothing;
    double smoothing;
    const char *field; /* the message must start with this */
} config_bad[] = {
    {"10ba", NULL, NULL, true, 0.5, "config.smoothing:"},
    {"inf", NULL, NULL, true, 0.5, "config.smoothing:"},
    {NULL, NULL, NULL, true, -0.1, "config.smoothing:"},
    {NULL, NULL, NULL, true, 1.0000001, "config.smoothing:"},
    {NULL, NULL, NULL, true, NAN, "config.smoothing:"},
    {NULL, NULL, NULL, true, INFINITY, "config.smoothing:"},
    {NULL, NULL, NULL, true, -INFINITY, "config.smoothing:"},
    {"", NULL, NULL, false, 0, "config.half_life:"},
    {"10", NULL, NULL, false, 0, "config.half_life:"},
    {"1.5ba", NULL, NULL, false, 0, "config.half_life:"},
    {"-1ba", NULL, NULL, false, 0, "config.half_life:"},
    {"0.5dur", NULL, NULL, false, 0, "config.half_life:"},
    {"1dur", "1ba", NULL, false, 0, "config.half_life:"},
    {"infba", NULL, NULL, false, 0, "config.half_life:"},
    {"18446744073709551616ba", NULL, NULL, false, 0, "config.half_life:"},
    {NULL, "0ba", NULL, false, 0, "config.update_interval:"},
    {"10ep", "0ep", NULL, false, 0, "config.update_interval:"},
    {"inf", "0ba", NULL, false, 0, "config.update_interval:"},
    {NULL, "", NULL, false, 0, "config.update_interval:"},
    {NULL, "1dur", NULL, false, 0, "config.update_interval:"},
    {NULL, "0.5dur", NULL, false, 0, "config.update_interval:"},
    {NULL, "inf", NULL, false, 0, "config.update_interval:"},
    {"inf", "inf", NULL, false, 0, "config.update_interval:"},
    {NULL, "1.5ba", NULL, false, 0, "config.update_interval:"},
    {NULL, "1 ba", NULL, false, 0, "config.update_interval:"},
    {"10ba", "1ep", NULL, false, 0, "config.update_interval:"},
    {"10ep", "1ba", NULL, false, 0, "config.update_interval:"},
    {NULL, "1ep", NULL, false, 0, "config.update_interval:"},
    {NULL, NULL, "", false, 0, "config.ema_start:"},
    {NULL, NULL, "inf", false, 0, "config.ema_start:"},
    {NULL, NULL, "2dur", false, 0, "config.ema_start:"},
    {NULL, NULL, "1.5ba", false, 0, "config.ema_start:"},
    {NULL, NULL, "0.5sp", false, 0, "config.ema_start:"},
    {NULL, NULL, "1iter", false, 0, "config.ema_start:"},
    {NULL, NULL, "1h60m", false, 0, "config.ema_start:"},
    {"1sp", NULL, NULL, false, 0, "config.half_life:"},
    {"10tok", "1ba", NULL, false, 0, "config.half_life:"},
    {"1h", NULL, NULL, false, 0, "config.half_life:"},
    {NULL, "1sp", NULL, false, 0, "config.update_interval:"},
    {NULL, "1tok", NULL, false, 0, "config.update_interval:"},
    {NULL, "10sec", NULL, false, 0, "config.update_interval:"},
    {NULL, "1h30m", NULL, false, 0, "config.update_interval:"},
    {"1000ba", "1EP", NULL, false, 0, "config.update_interval:"},
    {NULL, "1e-1ba", NULL, false, 0, "config.update_interval:"},
    {NULL, NULL, "-0.0dur", false, 0, "config.ema_start:"},
    {NULL, "1ba", "0.0000000000000001dur", true, 0.5, "config.ema_start:"},
};

static void test_ema_config_rejects_bad_combinations_naming_the_field(void **unused)
{
    (void)unused;
    for (size_t i = 0; i < ARRAY_LEN(config_bad); i++) {
        struct ema_config_in in =
            input(config_bad[i].half_life, config_bad[i].interval, config_bad[i].start);
        struct ema_config cfg = {.smoothing = 42.0};
        char err[256] = "";
        in.has_smoothing = config_bad[i].has_smoothing;
        in.smoothing = config_bad[i].smoothing;
        if (ema_config_init(&cfg, &in, err, sizeof(err)) != -EINVAL)
            fail_msg("case %zu accepted", i);
        if (strncmp(err, config_bad[i].field, strlen(config_bad[i].field)) != 0)
            fail_msg("case %zu: message \"%s\" does not start with %s", i, err,
                     config_bad[i].field);
        assert_true(cfg.smoothing == 42.0); /* untouched on failure */
    }
}

static void test_ema_config_messages_say_what_is_wrong(void **unused)
{
    struct ema_config_in in = input("10ba", "1ep", NULL);
    struct ema_config cfg;
    char err[256];

    (void)unused;
    assert_int_equal(ema_config_init(&cfg, &in, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "config.update_interval: unit \"ep\" does not match half_life's "
                             "unit \"ba\"");
    in = input(NULL, "1ep", NULL);
    assert_int_equal(ema_config_init(&cfg, &in, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "default half_life \"1000ba\""));
    in = input(NULL, "000ba", NULL);
    assert_int_equal(ema_config_init(&cfg, &in, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "config.update_interval: \"000ba\" is zero; it must be at least 1");
    in = input("0.5dur", NULL, NULL);
    assert_int_equal(ema_config_init(&cfg, &in, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "unit \"dur\""));
    in = input("10ba", NULL, NULL);
    in.has_smoothing = true;
    in.smoothing = 0.5;
    assert_int_equal(ema_config_init(&cfg, &in, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "half_life"));
    in = input(NULL, NULL, NULL);
    in.has_smoothing = true;
    in.smoothing = NAN;
    assert_int_equal(ema_config_init(&cfg, &in, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "[0, 1]"));
}

static void test_ema_config_message_echo_is_bounded_and_sanitised(void **unused)
{
    char bad[200];
    char err[512];
    struct ema_config_in in;
    struct ema_config cfg;

    (void)unused;
    memset(bad, 'x', sizeof(bad));
    bad[0] = '"';
    bad[1] = '\n';
    bad[2] = (char)0xff;
    bad[3] = '\\';
    in = input(NULL, NULL, NULL);
    in.ema_start = bad;
    in.ema_start_len = sizeof(bad);
    assert_int_equal(ema_config_init(&cfg, &in, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "config.ema_start: Invalid time string: "
                                "\"????xxxxxxxxxxxxxxxxxxxxxxxxxxxx...\""));
    assert_null(strchr(err, '\n'));
    /* A short buffer is truncated, still terminated; none at all is fine too. */
    assert_int_equal(ema_config_init(&cfg, &in, err, 8), -EINVAL);
    assert_string_equal(err, "config.");
    assert_int_equal(ema_config_init(&cfg, &in, NULL, 0), -EINVAL);
    assert_int_equal(ema_config_init(NULL, &in, err, sizeof(err)), -EINVAL);
    assert_int_equal(ema_config_init(&cfg, NULL, err, sizeof(err)), -EINVAL);
}

/* ---- Transitions --------------------------------------------------------------------------- */

/* Expected action per event in each reachable state. The clock satisfies the start and the
 * interval, so the update event shows what it does when everything is due. */
struct transition {
    enum ema_event ev;
    enum ema_action idle, started, active; /* not started; started, inactive; active */
};

static const struct transition ba_transitions[] = {
    {EMA_EVENT_INIT, EMA_ACTION_NONE, EMA_ACTION_NONE, EMA_ACTION_NONE},
    {EMA_EVENT_FIT_START, EMA_ACTION_NONE, EMA_ACTION_NONE, EMA_ACTION_NONE},
    {EMA_EVENT_BATCH_START, EMA_ACTION_NONE, EMA_ACTION_NONE, EMA_ACTION_SWAP_OUT},
    {EMA_EVENT_BATCH_END, EMA_ACTION_START_UPDATE, EMA_ACTION_UPDATE, EMA_ACTION_NONE},
    {EMA_EVENT_EPOCH_END, EMA_ACTION_NONE, EMA_ACTION_NONE, EMA_ACTION_NONE},
    {EMA_EVENT_EVAL_START, EMA_ACTION_NONE, EMA_ACTION_SWAP_IN, EMA_ACTION_NONE},
    {EMA_EVENT_EVAL_END, EMA_ACTION_NONE, EMA_ACTION_NONE, EMA_ACTION_SWAP_OUT},
    {EMA_EVENT_CHECKPOINT, EMA_ACTION_NONE, EMA_ACTION_SWAP_IN, EMA_ACTION_NONE},
    {EMA_EVENT_SWAP_EMA, EMA_ACTION_NONE, EMA_ACTION_SWAP_IN, EMA_ACTION_NONE},
    {EMA_EVENT_SWAP_TRAIN, EMA_ACTION_NONE, EMA_ACTION_NONE, EMA_ACTION_SWAP_OUT},
};

static const struct transition ep_transitions[] = {
    {EMA_EVENT_INIT, EMA_ACTION_NONE, EMA_ACTION_NONE, EMA_ACTION_NONE},
    {EMA_EVENT_FIT_START, EMA_ACTION_NONE, EMA_ACTION_NONE, EMA_ACTION_NONE},
    {EMA_EVENT_BATCH_START, EMA_ACTION_NONE, EMA_ACTION_NONE, EMA_ACTION_SWAP_OUT},
    {EMA_EVENT_BATCH_END, EMA_ACTION_NONE, EMA_ACTION_NONE, EMA_ACTION_NONE},
    {EMA_EVENT_EPOCH_END, EMA_ACTION_START_UPDATE, EMA_ACTION_UPDATE, EMA_ACTION_NONE},
    {EMA_EVENT_EVAL_START, EMA_ACTION_NONE, EMA_ACTION_SWAP_IN, EMA_ACTION_NONE},
    {EMA_EVENT_EVAL_END, EMA_ACTION_NONE, EMA_ACTION_NONE, EMA_ACTION_SWAP_OUT},
    {EMA_EVENT_CHECKPOINT, EMA_ACTION_NONE, EMA_ACTION_SWAP_IN, EMA_ACTION_NONE},
    {EMA_EVENT_SWAP_EMA, EMA_ACTION_NONE, EMA_ACTION_SWAP_IN, EMA_ACTION_NONE},
    {EMA_EVENT_SWAP_TRAIN, EMA_ACTION_NONE, EMA_ACTION_NONE, EMA_ACTION_SWAP_OUT},
};

static void check_transitions(const struct ema_config *cfg, const struct transition *table,
                              size_t n)
{
    struct ema_clock now = at_dur(6, 0.5);

    now.epoch = 2;
    assert_int_equal(n, EMA_EVENT_COUNT); /* every event is in the table */
    for (size_t i = 0; i < n; i++) {
        const struct ema_state states[] = {state(false, false), state(true, false),
                                           state(true, true)};
        const enum ema_action want[] = {table[i].idle, table[i].started, table[i].active};
        char what[64];
        assert_int_equal(table[i].ev, i);
        for (size_t s = 0; s < ARRAY_LEN(states); s++) {
            struct ema_state before = states[s];
            snprintf(what, sizeof(what), "%s in state %zu", ema_event_name(table[i].ev), s);
            assert_action(decide(cfg, &states[s], table[i].ev, now), want[s], what);
            assert_memory_equal(&before, &states[s], sizeof(before)); /* decide is pure */
        }
    }
}

static void test_ema_every_event_in_every_state_ba_interval(void **unused)
{
    struct ema_config cfg = config("100ba", "2ba", NULL);

    (void)unused;
    check_transitions(&cfg, ba_transitions, ARRAY_LEN(ba_transitions));
}

static void test_ema_every_event_in_every_state_ep_interval(void **unused)
{
    struct ema_config cfg = config("10ep", "2ep", NULL);

    (void)unused;
    check_transitions(&cfg, ep_transitions, ARRAY_LEN(ep_transitions));
}

static void test_ema_swap_requests_need_no_clock(void **unused)
{
    struct ema_config cfg = config(NULL, NULL, NULL);
    struct ema_state st = state(true, false);
    enum ema_action action;

    (void)unused;
    assert_int_equal(ema_decide(&cfg, &st, EMA_EVENT_SWAP_EMA, NULL, &action), 0);
    assert_int_equal(action, EMA_ACTION_SWAP_IN);
    st.active = true;
    assert_int_equal(ema_decide(&cfg, &st, EMA_EVENT_SWAP_TRAIN, NULL, &action), 0);
    assert_int_equal(action, EMA_ACTION_SWAP_OUT);
    for (int ev = 0; ev < EMA_EVENT_SWAP_EMA; ev++)
        assert_int_equal(ema_decide(&cfg, &st, (enum ema_event)ev, NULL, &action), -EINVAL);
}

static void test_ema_decide_rejects_bad_arguments(void **unused)
{
    struct ema_config cfg = config(NULL, NULL, NULL);
    struct ema_config zero = cfg;
    struct ema_state st = state(false, false);
    struct ema_clock now = at(1, 0);
    struct ema_clock nan_dur = at_dur(1, NAN);
    struct ema_clock big_dur = at_dur(1, 1.5);
    struct ema_clock neg_dur = at_dur(1, -0.25);
    enum ema_action action = EMA_ACTION_COUNT;
    char err[128];

    (void)unused;
    assert_int_equal(ema_decide(NULL, &st, EMA_EVENT_BATCH_END, &now, &action), -EINVAL);
    assert_int_equal(ema_decide(&cfg, NULL, EMA_EVENT_BATCH_END, &now, &action), -EINVAL);
    assert_int_equal(ema_decide(&cfg, &st, EMA_EVENT_BATCH_END, &now, NULL), -EINVAL);
    assert_int_equal(ema_decide(&cfg, &st, EMA_EVENT_COUNT, &now, &action), -EINVAL);
    assert_int_equal(ema_decide(&cfg, &st, (enum ema_event) - 1, &now, &action), -EINVAL);
    assert_int_equal(ema_decide(&cfg, &st, EMA_EVENT_BATCH_END, &nan_dur, &action), -EINVAL);
    assert_int_equal(ema_decide(&cfg, &st, EMA_EVENT_INIT, &big_dur, &action), -EINVAL);
    assert_int_equal(ema_decide(&cfg, &st, EMA_EVENT_INIT, &neg_dur, &action), -EINVAL);
    zero.update_interval.value = 0; /* would divide by zero */
    assert_int_equal(ema_decide(&zero, &st, EMA_EVENT_BATCH_END, &now, &action), -EINVAL);
    zero = cfg;
    zero.update_interval.unit = EMA_UNIT_DUR;
    assert_int_equal(ema_decide(&zero, &st, EMA_EVENT_BATCH_END, &now, &action), -EINVAL);
    assert_int_equal(action, EMA_ACTION_COUNT); /* untouched on failure */

    assert_int_equal(ema_clock_check(&nan_dur, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "time.duration:"));
    assert_int_equal(ema_clock_check(&big_dur, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "time.duration: 1.5"));
    assert_int_equal(ema_clock_check(&now, err, sizeof(err)), 0);
    nan_dur.has_duration = false; /* an absent duration is not looked at */
    assert_int_equal(ema_clock_check(&nan_dur, err, sizeof(err)), 0);
    assert_int_equal(ema_clock_check(NULL, err, sizeof(err)), -EINVAL);
}

/* ---- Start and interval rules -------------------------------------------------------------- */

static const struct {
    const char *start;
    struct ema_clock now;
    bool reached;
} start_cases[] = {
    {"5ba", {.batch = 4, .epoch = 9}, false},
    {"5ba", {.batch = 5}, true},
    {"5ba", {.batch = 6}, true},
    {"0ba", {.batch = 0}, true},
    {"2ep", {.batch = 99, .epoch = 1}, false},
    {"2ep", {.epoch = 2}, true},
    {"0ep", {.batch = 1}, true},
    {"0.5dur", {.batch = 1}, false}, /* no duration reported: only a 0 start is known reached */
    {"0.5dur", {.batch = 1, .duration = 0.49, .has_duration = true}, false},
    {"0.5dur", {.batch = 1, .duration = 0.5, .has_duration = true}, true},
    {"0.5dur", {.batch = 1, .duration = 1.0, .has_duration = true}, true},
    {"0.0dur", {.batch = 1}, true},
    {"0dur", {.batch = 1}, true},
    {"0.0dur", {.batch = 1, .duration = 0.0, .has_duration = true}, true},
    {"0.000000000000001dur", {.batch = 1}, false},
    {"0.000000000000001dur", {.batch = 1, .duration = 1e-15, .has_duration = true}, true},
    {"0.1dur", {.batch = 1, .duration = 0.1, .has_duration = true}, true},
    {"0.3dur", {.batch = 1, .duration = 0.3, .has_duration = true}, true},
    {"0.7dur", {.batch = 1, .duration = 0.7, .has_duration = true}, true},
    {"1dur", {.batch = 1, .duration = 1.0, .has_duration = true}, true},
    {"1dur", {.batch = 1}, false},
    /* The counts Composer's ema_start also takes (issue #12): compared when reported. */
    {"100sp", {.batch = 1, .samples = 99, .has_samples = true}, false},
    {"100sp", {.batch = 1, .samples = 100, .has_samples = true}, true},
    {"1e2SP", {.batch = 1, .samples = 101, .has_samples = true}, true},
    {"100sp", {.batch = 100, .tokens = 100, .has_tokens = true}, false},
    {"0sp", {.batch = 1}, true},
    {"3e4tok", {.batch = 1, .tokens = 29999, .has_tokens = true}, false},
    {"3e4tok", {.batch = 1, .tokens = 30000, .has_tokens = true}, true},
    {"0tok", {.batch = 1}, true},
    {"90sec", {.batch = 1, .seconds = 89, .has_seconds = true}, false},
    {"90sec", {.batch = 1, .seconds = 90, .has_seconds = true}, true},
    {"1h30m", {.batch = 1, .seconds = 5399, .has_seconds = true}, false},
    {"1h30m", {.batch = 1, .seconds = 5400, .has_seconds = true}, true},
    {"0h", {.batch = 1}, true},
};

static void test_ema_start_compares_in_the_start_unit(void **unused)
{
    (void)unused;
    for (size_t i = 0; i < ARRAY_LEN(start_cases); i++) {
        struct ema_config cfg = config(NULL, NULL, start_cases[i].start);
        struct ema_state st = state(false, false);
        enum ema_action want = start_cases[i].reached ? EMA_ACTION_START_UPDATE : EMA_ACTION_NONE;
        char what[64];
        snprintf(what, sizeof(what), "case %zu (%s)", i, start_cases[i].start);
        assert_action(decide(&cfg, &st, EMA_EVENT_BATCH_END, start_cases[i].now), want, what);
    }
}

static void test_ema_count_start_needs_its_count_on_update_events(void **unused)
{
    static const struct {
        const char *start, *interval;
        enum ema_event ev;
        struct ema_clock now;
        const char *missing; /* NULL: accepted */
    } cases[] = {
        {"100sp", NULL, EMA_EVENT_BATCH_END, {.batch = 1}, "time.samples: missing"},
        {"100sp", NULL, EMA_EVENT_BATCH_END, {.batch = 1, .has_tokens = true}, "time.samples"},
        {"100sp", NULL, EMA_EVENT_BATCH_END, {.batch = 1, .has_samples = true}, NULL},
        {"100sp", NULL, EMA_EVENT_EVAL_START, {.batch = 1}, NULL},
        {"100sp", NULL, EMA_EVENT_EPOCH_END, {.batch = 1}, NULL},
        {"0sp", NULL, EMA_EVENT_BATCH_END, {.batch = 1}, NULL},
        {"5tok", "1ep", EMA_EVENT_EPOCH_END, {.epoch = 1}, "time.tokens: missing"},
        {"5tok", "1ep", EMA_EVENT_BATCH_END, {.epoch = 1}, NULL},
        {"1h", NULL, EMA_EVENT_BATCH_END, {.batch = 1}, "time.seconds: missing"},
        {"1h", NULL, EMA_EVENT_BATCH_END, {.batch = 1, .has_seconds = true}, NULL},
        {"10ba", NULL, EMA_EVENT_BATCH_END, {.batch = 1}, NULL},
        {"0.5dur", NULL, EMA_EVENT_BATCH_END, {.batch = 1}, NULL},
    };

    (void)unused;
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct ema_config cfg =
            config(cases[i].interval != NULL ? "10ep" : NULL, cases[i].interval, cases[i].start);
        char err[256] = "";
        int rc = ema_clock_check_start(&cfg, cases[i].ev, &cases[i].now, err, sizeof(err));
        if (cases[i].missing == NULL) {
            if (rc != 0)
                fail_msg("case %zu refused: %s", i, err);
        } else if (rc != -EINVAL || strncmp(err, cases[i].missing, strlen(cases[i].missing)) != 0) {
            fail_msg("case %zu: rc %d, message \"%s\"", i, rc, err);
        }
    }
    struct ema_config cfg = config(NULL, NULL, "1e2sp");
    char err[256];
    assert_int_equal(ema_clock_check_start(&cfg, EMA_EVENT_BATCH_END, &(struct ema_clock){.batch = 1},
                                           err, sizeof(err)),
                     -EINVAL);
    assert_string_equal(err, "time.samples: missing; the session's ema_start \"100sp\" counts "
                             "samples, so every batch_end must carry time.samples");
    assert_int_equal(ema_clock_check_start(NULL, EMA_EVENT_BATCH_END, &(struct ema_clock){0}, NULL,
                                           0),
                     -EINVAL);
}

static void test_ema_time_parse_gives_composers_messages(void **unused)
{
    static const struct {
        const char *s, *msg;
    } cases[] = {
        {"1.5ba", "\"1.5ba\": value 1.5 is not an integer. Units TimeUnit.BATCH require integer "
                  "values."},
        {"15e-1ep", "\"15e-1ep\": value 1.5 is not an integer. Units TimeUnit.EPOCH require "
                    "integer values."},
        {"0.5sp", "\"0.5sp\": value 0.5 is not an integer. Units TimeUnit.SAMPLE require integer "
                  "values."},
        {"1e-5tok", "\"1e-5tok\": value 1e-05 is not an integer. Units TimeUnit.TOKEN require "
                    "integer values."},
        {"12345678901234567.5ba", "\"12345678901234567.5ba\": value 1.2345678901234568e+16 is "
                                  "not an integer. Units TimeUnit.BATCH require integer values."},
        {"100.25SEC", "\"100.25SEC\": value 100.25 is not an integer. Units TimeUnit.SECOND "
                      "require integer values."},
        {"0.0001ba", "\"0.0001ba\": value 0.0001 is not an integer. Units TimeUnit.BATCH require "
                     "integer values."},
        {"10ms", "Invalid time string: \"10ms\""},
        {"1e1.5ba", "Invalid time string: \"1e1.5ba\""},
        {"1.5dur", "\"1.5dur\": a dur time is a fraction in [0, 1]"},
        {"1e-16dur", "\"1e-16dur\": a dur time has at most 15 decimals"},
        {"1e20ba", "\"1e20ba\": the batch count does not fit in 64 bits"},
        {"7iter", "\"7iter\": unit \"iter\" (iterations) is not supported: emad has no "
                  "iteration count"},
    };

    (void)unused;
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct ema_time t;
        char err[256] = "";
        assert_int_equal(ema_time_parse(cases[i].s, strlen(cases[i].s), false, &t, err,
                                        sizeof(err)),
                         -EINVAL);
        assert_string_equal(err, cases[i].msg);
    }
}

static void test_ema_config_refuses_units_with_composers_message(void **unused)
{
    struct ema_config_in in = input(NULL, "1sp", NULL);
    struct ema_config cfg;
    char err[512];

    (void)unused;
    in.has_smoothing = true;
    in.smoothing = 0.5;
    assert_int_equal(ema_config_init(&cfg, &in, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "config.update_interval: Invalid time unit for parameter "
                                "update_interval: TimeUnit.SAMPLE"));
    in.update_interval = "0.5dur";
    in.update_interval_len = strlen(in.update_interval);
    assert_int_equal(ema_config_init(&cfg, &in, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "Invalid time unit for parameter update_interval: "
                                "TimeUnit.DURATION"));
    /* The strings are accepted, units matched without regard to case. */
    in = input("10BA", "1.0ba", ".5dur");
    assert_int_equal(ema_config_init(&cfg, &in, err, sizeof(err)), 0);
    assert_int_equal(cfg.half_life.value, 10);
    assert_int_equal(cfg.update_interval.unit, EMA_UNIT_BA);
    assert_int_equal(cfg.ema_start.value, EMA_DUR_ONE / 2);
    in = input("2Ep", "1e0EP", "5e-1dur");
    assert_int_equal(ema_config_init(&cfg, &in, err, sizeof(err)), 0);
    assert_int_equal(cfg.half_life.unit, EMA_UNIT_EP);
    assert_int_equal(cfg.update_interval.unit, EMA_UNIT_EP);
    in = input(NULL, NULL, "3e4tok");
    assert_int_equal(ema_config_init(&cfg, &in, err, sizeof(err)), 0);
    assert_int_equal(cfg.ema_start.unit, EMA_UNIT_TOK);
    assert_int_equal(cfg.ema_start.value, 30000);
    in = input(NULL, NULL, "1h30m");
    assert_int_equal(ema_config_init(&cfg, &in, err, sizeof(err)), 0);
    assert_int_equal(cfg.ema_start.unit, EMA_UNIT_SEC);
    assert_int_equal(cfg.ema_start.value, 5400);
}

static void test_ema_dur_start_matches_the_trainers_double(void **unused)
{
    /* "0.k" must start exactly at the double k/1000 a trainer computes, not one ulp off. */
    (void)unused;
    for (int k = 1; k < 1000; k++) {
        char s[32];
        snprintf(s, sizeof(s), "0.%03ddur", k);
        struct ema_config cfg = config(NULL, NULL, s);
        struct ema_state st = state(false, false);
        double d = (double)k / 1000.0;
        assert_action(decide(&cfg, &st, EMA_EVENT_BATCH_END, at_dur(1, d)), EMA_ACTION_START_UPDATE,
                      s);
        assert_action(decide(&cfg, &st, EMA_EVENT_BATCH_END, at_dur(1, nextafter(d, 0.0))),
                      EMA_ACTION_NONE, s);
    }
}

static void test_ema_update_only_on_multiples_of_interval(void **unused)
{
    struct ema_config cfg = config("10ba", "3ba", NULL);
    struct ema_state st = state(true, false);

    (void)unused;
    for (uint64_t b = 0; b <= 12; b++) {
        enum ema_action want = b % 3 == 0 ? EMA_ACTION_UPDATE : EMA_ACTION_NONE;
        assert_action(decide(&cfg, &st, EMA_EVENT_BATCH_END, at(b, 7)), want, "batch");
    }
    cfg = config("10ep", "2ep", NULL);
    for (uint64_t e = 1; e <= 6; e++) {
        enum ema_action want = e % 2 == 0 ? EMA_ACTION_UPDATE : EMA_ACTION_NONE;
        assert_action(decide(&cfg, &st, EMA_EVENT_EPOCH_END, at(6, e)), want, "epoch");
    }
    /* The huge interval of an almost-never update is still a plain modulo. */
    cfg = config("inf", "18446744073709551615ba", NULL);
    assert_action(decide(&cfg, &st, EMA_EVENT_BATCH_END, at(UINT64_MAX, 0)), EMA_ACTION_UPDATE,
                  "u64 max");
    assert_action(decide(&cfg, &st, EMA_EVENT_BATCH_END, at(UINT64_MAX - 1, 0)), EMA_ACTION_NONE,
                  "u64 max - 1");
}

static void test_ema_start_off_the_interval_starts_without_update(void **unused)
{
    struct ema_config cfg = config("10ba", "3ba", "4ba");
    struct ema_state st = state(false, false);

    (void)unused;
    assert_action(decide(&cfg, &st, EMA_EVENT_BATCH_END, at(3, 0)), EMA_ACTION_NONE, "b3");
    assert_action(decide(&cfg, &st, EMA_EVENT_BATCH_END, at(4, 0)), EMA_ACTION_START, "b4");
    assert_int_equal(ema_commit(&st, EMA_ACTION_START, NULL), 0);
    assert_action(decide(&cfg, &st, EMA_EVENT_BATCH_END, at(5, 0)), EMA_ACTION_NONE, "b5");
    assert_action(decide(&cfg, &st, EMA_EVENT_BATCH_END, at(6, 0)), EMA_ACTION_UPDATE, "b6");
    cfg = config("10ba", "3ba", "5ba");
    st = state(false, false);
    /* A start reached late (the clock jumped past it) still starts. */
    assert_action(decide(&cfg, &st, EMA_EVENT_BATCH_END, at(6, 0)), EMA_ACTION_START_UPDATE,
                  "late");
}

/* ---- Commit -------------------------------------------------------------------------------- */

static void test_ema_commit_applies_each_action(void **unused)
{
    static const struct {
        bool started, active;
        enum ema_action action;
        int rc;
        bool started_after, active_after;
        uint64_t updates, swaps;
    } cases[] = {
        {false, false, EMA_ACTION_NONE, 0, false, false, 0, 0},
        {true, false, EMA_ACTION_NONE, 0, true, false, 0, 0},
        {true, true, EMA_ACTION_NONE, 0, true, true, 0, 0},
        {false, false, EMA_ACTION_START, 0, true, false, 0, 0},
        {true, false, EMA_ACTION_START, -EINVAL, true, false, 0, 0},
        {true, true, EMA_ACTION_START, -EINVAL, true, true, 0, 0},
        {false, true, EMA_ACTION_START, -EINVAL, false, true, 0, 0}, /* inconsistent */
        {false, false, EMA_ACTION_START_UPDATE, 0, true, false, 1, 0},
        {true, false, EMA_ACTION_START_UPDATE, -EINVAL, true, false, 0, 0},
        {true, true, EMA_ACTION_START_UPDATE, -EINVAL, true, true, 0, 0},
        {false, false, EMA_ACTION_UPDATE, -EINVAL, false, false, 0, 0},
        {true, false, EMA_ACTION_UPDATE, 0, true, false, 1, 0},
        {true, true, EMA_ACTION_UPDATE, -EINVAL, true, true, 0, 0},
        {false, false, EMA_ACTION_SWAP_IN, -EINVAL, false, false, 0, 0},
        {true, false, EMA_ACTION_SWAP_IN, 0, true, true, 0, 1},
        {true, true, EMA_ACTION_SWAP_IN, -EINVAL, true, true, 0, 0},
        {false, false, EMA_ACTION_SWAP_OUT, -EINVAL, false, false, 0, 0},
        {true, false, EMA_ACTION_SWAP_OUT, -EINVAL, true, false, 0, 0},
        {true, true, EMA_ACTION_SWAP_OUT, 0, true, false, 0, 1},
        {true, false, EMA_ACTION_COUNT, -EINVAL, true, false, 0, 0},
        {true, false, (enum ema_action) - 1, -EINVAL, true, false, 0, 0},
    };
    struct ema_clock now = at_dur(8, 0.25);

    (void)unused;
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct ema_state st = state(cases[i].started, cases[i].active);
        if (ema_commit(&st, cases[i].action, &now) != cases[i].rc)
            fail_msg("case %zu: rc", i);
        assert_int_equal(st.started, cases[i].started_after);
        assert_int_equal(st.active, cases[i].active_after);
        assert_int_equal(st.updates, cases[i].updates);
        assert_int_equal(st.swaps, cases[i].swaps);
        /* Only a successful commit records the time. */
        assert_int_equal(st.has_last_time, cases[i].rc == 0);
        if (cases[i].rc == 0)
            assert_memory_equal(&st.last_time, &now, sizeof(now));
    }
    assert_int_equal(ema_commit(NULL, EMA_ACTION_NONE, &now), -EINVAL);
}

static void test_ema_commit_without_clock_keeps_last_time(void **unused)
{
    struct ema_state st = state(true, false);

    (void)unused;
    assert_int_equal(ema_commit(&st, EMA_ACTION_UPDATE, &(struct ema_clock){.batch = 3}), 0);
    assert_int_equal(ema_commit(&st, EMA_ACTION_SWAP_IN, NULL), 0);
    assert_true(st.has_last_time);
    assert_int_equal(st.last_time.batch, 3);
    assert_int_equal(st.swaps, 1);
}

static void test_ema_failed_work_is_decided_again(void **unused)
{
    struct ema_config cfg = config(NULL, NULL, NULL);
    struct ema_state st = state(false, false);

    (void)unused;
    /* The daemon could not do the work (say the segment vanished) and did not commit. */
    assert_action(decide(&cfg, &st, EMA_EVENT_BATCH_END, at(1, 0)), EMA_ACTION_START_UPDATE, "1");
    assert_action(decide(&cfg, &st, EMA_EVENT_BATCH_END, at(1, 0)), EMA_ACTION_START_UPDATE, "2");
    assert_int_equal(ema_commit(&st, EMA_ACTION_START_UPDATE, NULL), 0);
    assert_action(decide(&cfg, &st, EMA_EVENT_BATCH_END, at(2, 0)), EMA_ACTION_UPDATE, "3");
}

/* A trainer's whole run, as Composer would drive it, with a scalar model to check the weights:
 * param = batch number, so the shadow's value shows which params each update saw. */
static void test_ema_training_run_drives_expected_work(void **unused)
{
    struct ema_config cfg = config("4ba", "2ba", "3ba");
    struct ema_state st;
    double param = 0, shadow = 0, stash = 0, want = 0;
    bool want_started = false;

    (void)unused;
    ema_state_init(&st);
#define STEP(ev_, now_)                                                                            \
    do {                                                                                           \
        struct ema_clock n_ = (now_);                                                              \
        enum ema_action a_ = decide(&cfg, &st, (ev_), n_);                                         \
        if (a_ == EMA_ACTION_START || a_ == EMA_ACTION_START_UPDATE)                               \
            shadow = param;                                                                        \
        if (a_ == EMA_ACTION_UPDATE || a_ == EMA_ACTION_START_UPDATE)                              \
            shadow = cfg.smoothing * shadow + (1.0 - cfg.smoothing) * param;                       \
        if (a_ == EMA_ACTION_SWAP_IN) {                                                            \
            stash = param;                                                                         \
            param = shadow;                                                                        \
        }                                                                                          \
        if (a_ == EMA_ACTION_SWAP_OUT)                                                             \
            param = stash;                                                                         \
        assert_int_equal(ema_commit(&st, a_, &n_), 0);                                             \
    } while (0)

    STEP(EMA_EVENT_INIT, at(0, 0));
    STEP(EMA_EVENT_FIT_START, at(0, 0));
    for (uint64_t b = 1; b <= 10; b++) {
        STEP(EMA_EVENT_BATCH_START, at(b - 1, 0));
        assert_false(st.active); /* training never sees the EMA weights */
        param = (double)b;       /* the optimizer step */
        STEP(EMA_EVENT_BATCH_END, at(b, 0));
        if (b == 3) {
            want = 3;
            want_started = true;
        } else if (want_started && b % 2 == 0) {
            want = cfg.smoothing * want + (1.0 - cfg.smoothing) * (double)b;
        }
        assert_true(shadow == want);
        assert_int_equal(st.started, want_started);
        if (b == 2) {
            STEP(EMA_EVENT_EVAL_START, at(b, 0)); /* not started yet: no swap */
            assert_true(param == 2.0);
            STEP(EMA_EVENT_EVAL_END, at(b, 0));
        }
        if (b == 5 || b == 10) {
            STEP(EMA_EVENT_EVAL_START, at(b, 0));
            assert_true(param == shadow); /* evaluation sees the EMA weights */
            STEP(EMA_EVENT_EVAL_END, at(b, 0));
            assert_true(param == (double)b);
        }
        if (b == 6)
            STEP(EMA_EVENT_CHECKPOINT, at(b, 0)); /* stays in until the next batch_start */
    }
    STEP(EMA_EVENT_EPOCH_END, at(10, 1)); /* not the update event here */
    assert_true(st.started);
    assert_false(st.active);
    assert_int_equal(st.updates, 4); /* batches 4, 6, 8, 10 */
    assert_int_equal(st.swaps, 6);   /* two evals and one checkpoint, in and out */
    assert_int_equal(st.last_time.epoch, 1);
    assert_true(cfg.smoothing == pow(2.0, -0.5));
#undef STEP
}

/* ---- Names --------------------------------------------------------------------------------- */

/* The names are the contract's (test_names.c proves them); ema.h gives them under its own. */
static void test_ema_names_are_the_contracts(void **unused)
{
    (void)unused;
    assert_int_equal(EMA_EVENT_COUNT, NAMES_EVENT_COUNT);
    assert_string_equal(ema_event_name(EMA_EVENT_BATCH_END), "batch_end");
    assert_string_equal(ema_event_name(EMA_EVENT_SWAP_EMA), "swap:ema");
    assert_string_equal(ema_action_name(EMA_ACTION_START_UPDATE), "start+update");
    assert_null(ema_event_name(EMA_EVENT_COUNT));
    assert_null(ema_event_name((enum ema_event) - 1));
    assert_null(ema_action_name(EMA_ACTION_COUNT));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ema_time_parse_accepts_canonical_and_padded_forms),
        cmocka_unit_test(test_ema_time_parse_rejects_malformed),
        cmocka_unit_test(test_ema_time_parse_inf_only_when_allowed),
        cmocka_unit_test(test_ema_time_parse_reads_exactly_len_bytes),
        cmocka_unit_test(test_ema_time_parse_gives_composers_messages),
        cmocka_unit_test(test_ema_config_refuses_units_with_composers_message),
        cmocka_unit_test(test_ema_count_start_needs_its_count_on_update_events),
        cmocka_unit_test(test_ema_time_format_round_trips),
        cmocka_unit_test(test_ema_time_format_refuses_small_buffer_and_bad_values),
        cmocka_unit_test(test_ema_config_defaults_to_half_life_1000ba),
        cmocka_unit_test(test_ema_half_life_smoothing_is_two_to_minus_interval_over_half_life),
        cmocka_unit_test(test_ema_half_life_zero_copies),
        cmocka_unit_test(test_ema_half_life_inf_never_changes),
        cmocka_unit_test(test_ema_interval_defaults_to_half_life_unit),
        cmocka_unit_test(test_ema_smoothing_given_defaults_interval_to_1ba),
        cmocka_unit_test(test_ema_config_keeps_fields_for_status),
        cmocka_unit_test(test_ema_config_strings_need_no_terminator),
        cmocka_unit_test(test_ema_config_rejects_bad_combinations_naming_the_field),
        cmocka_unit_test(test_ema_config_messages_say_what_is_wrong),
        cmocka_unit_test(test_ema_config_message_echo_is_bounded_and_sanitised),
        cmocka_unit_test(test_ema_every_event_in_every_state_ba_interval),
        cmocka_unit_test(test_ema_every_event_in_every_state_ep_interval),
        cmocka_unit_test(test_ema_swap_requests_need_no_clock),
        cmocka_unit_test(test_ema_decide_rejects_bad_arguments),
        cmocka_unit_test(test_ema_start_compares_in_the_start_unit),
        cmocka_unit_test(test_ema_dur_start_matches_the_trainers_double),
        cmocka_unit_test(test_ema_update_only_on_multiples_of_interval),
        cmocka_unit_test(test_ema_start_off_the_interval_starts_without_update),
        cmocka_unit_test(test_ema_commit_applies_each_action),
        cmocka_unit_test(test_ema_commit_without_clock_keeps_last_time),
        cmocka_unit_test(test_ema_failed_work_is_decided_again),
        cmocka_unit_test(test_ema_training_run_drives_expected_work),
        cmocka_unit_test(test_ema_names_are_the_contracts),
    };

    return cmocka_run_group_tests_name("ema", tests, NULL, NULL);
}
