/*
 * test_json.c - client/json.c: emactl --json prints every float in its
 * shortest form that reads back as the same value, and msgpack as JSON.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static const char *fmt_double(double d, char *buf)
{
    memset(buf, 'Z', JSON_NUMBER_MAX);
    int n = json_format_double(d, buf, JSON_NUMBER_MAX);
    assert_true(n > 0);
    assert_int_equal((size_t)n, strlen(buf));
    return buf;
}

static const char *fmt_float(float f, char *buf)
{
    int n = json_format_float(f, buf, JSON_NUMBER_MAX);
    assert_true(n > 0);
    assert_int_equal((size_t)n, strlen(buf));
    return buf;
}

static void test_json_double_is_shortest_round_trip(void **state)
{
    char buf[JSON_NUMBER_MAX];
    (void)state;

    /* %.17g printed this one as 7.0240613029999999. */
    assert_string_equal(fmt_double(7.0240613029999999, buf), "7.024061303");
    assert_string_equal(fmt_double(7.024061303, buf), "7.024061303");
    assert_string_equal(fmt_double(0.1, buf), "0.1");
    assert_string_equal(fmt_double(0.1 + 0.2, buf), "0.30000000000000004");
    assert_string_equal(fmt_double(1e-300, buf), "1e-300");
    assert_string_equal(fmt_double(5e-324, buf), "5e-324");
    assert_string_equal(fmt_double(-5e-324, buf), "-5e-324");
    assert_string_equal(fmt_double(DBL_MIN, buf), "2.2250738585072014e-308");
    assert_string_equal(fmt_double(1.7976931348623157e308, buf), "1.7976931348623157e+308");
    assert_string_equal(fmt_double(0.7071067811865476, buf), "0.7071067811865476");
    assert_string_equal(fmt_double(1.5, buf), "1.5");
    assert_string_equal(fmt_double(-2.25, buf), "-2.25");
}

static void test_json_double_integral_values_stay_floats(void **state)
{
    char buf[JSON_NUMBER_MAX];
    (void)state;

    assert_string_equal(fmt_double(7.0, buf), "7.0");
    assert_string_equal(fmt_double(0.0, buf), "0.0");
    assert_string_equal(fmt_double(-0.0, buf), "-0.0");
    assert_string_equal(fmt_double(-3.0, buf), "-3.0");
    assert_string_equal(fmt_double(1048576.0, buf), "1048576.0");
    assert_string_equal(fmt_double(9007199254740992.0, buf), "9007199254740992.0");
    /* An exponent already makes it a float. */
    assert_string_equal(fmt_double(1e22, buf), "1e+22");
    assert_string_equal(fmt_double(1e100, buf), "1e+100");
    /* Positional up to 16 digits before the point, as Python's repr(). */
    assert_string_equal(fmt_double(3000.0, buf), "3000.0");
    assert_string_equal(fmt_double(1e15, buf), "1000000000000000.0");
    assert_string_equal(fmt_double(1e16, buf), "1e+16");
    assert_string_equal(fmt_double(0.0001, buf), "0.0001");
    assert_string_equal(fmt_double(0.00001, buf), "1e-05");
    assert_string_equal(fmt_double(0.00012, buf), "0.00012");
}

static void test_json_double_refuses_non_finite_and_short_buffers(void **state)
{
    char buf[JSON_NUMBER_MAX];
    (void)state;

    assert_int_equal(json_format_double(NAN, buf, sizeof(buf)), -EINVAL);
    assert_int_equal(json_format_double(INFINITY, buf, sizeof(buf)), -EINVAL);
    assert_int_equal(json_format_double(-INFINITY, buf, sizeof(buf)), -EINVAL);
    assert_int_equal(json_format_float(NAN, buf, sizeof(buf)), -EINVAL);
    assert_int_equal(json_format_double(0.1, buf, 3), -ENOSPC); /* "0.1" + NUL */
    assert_int_equal(json_format_double(0.1, buf, 4), 3);
    assert_int_equal(json_format_double(7.0, buf, 3), -ENOSPC); /* "7.0" + NUL */
    assert_int_equal(json_format_double(7.0, buf, 4), 3);
    assert_string_equal(buf, "7.0");
}

/* The significant digits of text as json_format_double() writes it:
 * "0.00120" has 2, "3000.0" 1, "1.25e-300" 3. */
static int significant_digits(const char *text)
{
    char d[JSON_NUMBER_MAX];
    size_t n = 0;

    for (const char *p = text; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9' && (n > 0 || *p != '0'))
            d[n++] = *p;
    while (n > 1 && d[n - 1] == '0')
        n--;
    return n == 0 ? 1 : (int)n;
}

/* Over many bit patterns: the text reads back exactly, and no text with
 * one significant digit fewer does. */
static void test_json_double_round_trips_and_no_shorter_text_does(void **state)
{
    char buf[JSON_NUMBER_MAX], shorter[64];
    uint64_t x = 0x9e3779b97f4a7c15u;
    (void)state;

    for (int i = 0; i < 50000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double d;
        /* Every other one a double of a modest exponent, as emad sends. */
        uint64_t bits =
            i % 2 ? x : (x & 0x800fffffffffffffu) | ((uint64_t)(1023 + i % 40 - 20) << 52);
        memcpy(&d, &bits, sizeof(d));
        if (!isfinite(d))
            continue;
        fmt_double(d, buf);
        if (strtod(buf, NULL) != d)
            fail_msg("%s reads back as %.17g, not %.17g", buf, strtod(buf, NULL), d);
        int digits = significant_digits(buf);
        if (digits > 1) {
            snprintf(shorter, sizeof(shorter), "%.*e", digits - 2, d);
            if (strtod(shorter, NULL) == d)
                fail_msg("%s has a shorter form %s", buf, shorter);
        }
    }
}

static void test_json_float_is_shortest_for_single_precision(void **state)
{
    char buf[JSON_NUMBER_MAX];
    (void)state;

    assert_string_equal(fmt_float(0.1f, buf), "0.1");
    assert_string_equal(fmt_float(7.024061303f, buf), "7.024061");
    assert_string_equal(fmt_float(FLT_MAX, buf), "3.4028235e+38");
    assert_string_equal(fmt_float(1e-45f, buf), "1e-45");
    assert_string_equal(fmt_float(2.0f, buf), "2.0");
}

/* json_print of msgpack packed by pack(), on one line (indent -1). */
static char *print_packed(void (*pack)(msgpack_packer *pk))
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_unpacked u;
    char *text = NULL;
    size_t len = 0, off = 0;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pack(&pk);
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    FILE *mem = open_memstream(&text, &len);
    assert_non_null(mem);
    json_print(mem, &u.data, -1);
    fclose(mem);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    return text;
}

static void pack_numbers(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 6);
    msgpack_pack_str_with_body(pk, "uptime", 6);
    msgpack_pack_double(pk, 7.0240613029999999);
    msgpack_pack_str_with_body(pk, "f32", 3);
    msgpack_pack_float(pk, 0.1f);
    msgpack_pack_str_with_body(pk, "whole", 5);
    msgpack_pack_double(pk, 3.0);
    msgpack_pack_str_with_body(pk, "nan", 3);
    msgpack_pack_double(pk, NAN);
    msgpack_pack_str_with_body(pk, "int", 3);
    msgpack_pack_int64(pk, -42);
    msgpack_pack_str_with_body(pk, "tiny", 4);
    msgpack_pack_double(pk, 5e-324);
}

static void test_json_print_uses_the_shortest_floats(void **state)
{
    (void)state;
    char *text = print_packed(pack_numbers);
    assert_string_equal(text, "{\"uptime\":7.024061303,\"f32\":0.1,\"whole\":3.0,\"nan\":null,"
                              "\"int\":-42,\"tiny\":5e-324}");
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_double_is_shortest_round_trip),
        cmocka_unit_test(test_json_double_integral_values_stay_floats),
        cmocka_unit_test(test_json_double_refuses_non_finite_and_short_buffers),
        cmocka_unit_test(test_json_double_round_trips_and_no_shorter_text_does),
        cmocka_unit_test(test_json_float_is_shortest_for_single_precision),
        cmocka_unit_test(test_json_print_uses_the_shortest_floats),
    };
    return cmocka_run_group_tests_name("json", tests, NULL, NULL);
}
