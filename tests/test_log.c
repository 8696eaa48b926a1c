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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* Read back what log_msg wrote to a temp file. */
static char *logged(void (*write_fn)(struct log *lg))
{
    char path[] = "/tmp/emad-test-log-XXXXXX";
    int fd = mkstemp(path);
    struct log lg;
    static char text[4 * LOG_LINE_MAX];

    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(log_open(&lg, path, LOG_LVL_DEBUG), 0);
    write_fn(&lg);
    log_close(&lg);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    size_t n = fread(text, 1, sizeof(text) - 1, fp);
    text[n] = '\0';
    fclose(fp);
    unlink(path);
    return text;
}

static void write_forged(struct log *lg)
{
    /* A caller that forgot log_escape: a peer's tensor name in an error. */
    log_warn(lg, "load failed: tensor \"%s\" differs", "w\n2026-01-01T00:00:00Z emad[1] error: x\x1b");
}

static void test_log_msg_keeps_a_message_on_one_line(void **state)
{
    (void)state;
    const char *t = logged(write_forged);

    assert_non_null(strstr(t, "tensor \"w\\x0a2026-01-01T00:00:00Z emad[1] error: x\\x1b\" differs"));
    assert_ptr_equal(strchr(t, '\n'), t + strlen(t) - 1);
}

static void write_long(struct log *lg)
{
    char *big = malloc(2 * LOG_LINE_MAX);
    assert_non_null(big);
    memset(big, 'a', 2 * LOG_LINE_MAX - 1);
    big[2 * LOG_LINE_MAX - 1] = '\0';
    log_info(lg, "%s", big);
    free(big);
}

static void test_log_msg_cuts_a_long_message_with_an_ellipsis(void **state)
{
    (void)state;
    const char *t = logged(write_long);
    size_t len = strlen(t);

    assert_true(len < LOG_LINE_MAX + 128);
    assert_memory_equal(t + len - 4, "...\n", 4);
    assert_ptr_equal(strchr(t, '\n'), t + len - 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_escape_keeps_printable_ascii_and_utf8),
        cmocka_unit_test(test_log_escape_turns_newlines_and_controls_into_hex),
        cmocka_unit_test(test_log_escape_hexes_malformed_utf8_and_c1_controls),
        cmocka_unit_test(test_log_escape_truncates_with_an_ellipsis_at_a_boundary),
        cmocka_unit_test(test_log_msg_keeps_a_message_on_one_line),
        cmocka_unit_test(test_log_msg_cuts_a_long_message_with_an_ellipsis),
    };
    return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
