/*
 * test_log.c - daemon/log.c: log_escape, which every peer-provided string goes
 * through before it reaches the log (a name holding a newline must not forge
 * a log line).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "log.h"

static const char *esc(const char *s, size_t len, char *out, size_t outlen)
{
    memset(out, 'Z', outlen);
    return log_escape(s, len, out, outlen);
}

static void test_log_escape_keeps_printable_ascii_and_utf8(void **state)
{
    char out[128];
    (void)state;

    assert_string_equal(esc("trainer-7 a:b/c.d", 17, out, sizeof(out)), "trainer-7 a:b/c.d");
    /* é (2 bytes), € (3 bytes), 😀 (4 bytes) */
    const char *u = "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
    assert_string_equal(esc(u, strlen(u), out, sizeof(out)), u);
}

static void test_log_escape_turns_newlines_and_controls_into_hex(void **state)
{
    char out[256];
    const char forged[] = "x\n2026-01-01T00:00:00.000Z emad[1] error: forged\r\t\x1b[31m\x7f";
    (void)state;

    esc(forged, sizeof(forged) - 1, out, sizeof(out));
    assert_null(strchr(out, '\n'));
    assert_null(strchr(out, '\r'));
    assert_null(strchr(out, '\x1b'));
    assert_null(strchr(out, '\x7f'));
    assert_string_equal(out, "x\\x0a2026-01-01T00:00:00.000Z emad[1] error: forged\\x0d\\x09"
                             "\\x1b[31m\\x7f");
    /* NUL inside the string, quote and backslash. */
    assert_string_equal(esc("a\0b\"c\\", 6, out, sizeof(out)), "a\\x00b\\x22c\\x5c");
}

static void test_log_escape_hexes_malformed_utf8_and_c1_controls(void **state)
{
    char out[128];
    (void)state;

    /* A lone continuation byte, a truncated sequence, an overlong '/', a
     * surrogate (U+D800), past U+10FFFF, and NEL (U+0085, a C1 control). */
    assert_string_equal(esc("\x80", 1, out, sizeof(out)), "\\x80");
    assert_string_equal(esc("a\xe2\x82", 3, out, sizeof(out)), "a\\xe2\\x82");
    assert_string_equal(esc("\xc0\xaf", 2, out, sizeof(out)), "\\xc0\\xaf");
    assert_string_equal(esc("\xed\xa0\x80", 3, out, sizeof(out)), "\\xed\\xa0\\x80");
    assert_string_equal(esc("\xf4\x90\x80\x80", 4, out, sizeof(out)), "\\xf4\\x90\\x80\\x80");
    assert_string_equal(esc("\xc2\x85", 2, out, sizeof(out)), "\\xc2\\x85");
}

static void test_log_escape_truncates_with_an_ellipsis_at_a_boundary(void **state)
{
    char out[LOG_ESCAPED_SIZE(8)];
    char small[8];
    (void)state;

    /* Every byte escaped: the worst case fits LOG_ESCAPED_SIZE exactly. */
    esc("\n\n\n\n\n\n\n\n", 8, out, sizeof(out));
    assert_string_equal(out, "\\x0a\\x0a\\x0a\\x0a\\x0a\\x0a\\x0a\\x0a");
    /* Too long: "..." ends it, no escape or character is cut. */
    assert_string_equal(esc("abcdefghij", 10, small, sizeof(small)), "abcd...");
    assert_string_equal(esc("\n\nabc", 5, small, sizeof(small)), "\\x0a...");
    assert_string_equal(esc("ab\xe2\x82\xac", 5, small, sizeof(small)), "ab\xe2\x82\xac");
    assert_string_equal(esc("\xe2\x82\xac\xe2\x82\xac", 6, small, 7), "\xe2\x82\xac\xe2\x82\xac");
    assert_string_equal(esc("\xe2\x82\xac\xe2\x82\xac", 6, small, 6), "...");
    assert_string_equal(esc("", 0, small, sizeof(small)), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_escape_keeps_printable_ascii_and_utf8),
        cmocka_unit_test(test_log_escape_turns_newlines_and_controls_into_hex),
        cmocka_unit_test(test_log_escape_hexes_malformed_utf8_and_c1_controls),
        cmocka_unit_test(test_log_escape_truncates_with_an_ellipsis_at_a_boundary),
    };
    return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
