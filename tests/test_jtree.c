/*
 * test_jtree.c - the strict JSON reader (proto/jtree.c) alone: every kind of value and how the
 * tree links them, numbers kept as their text and read whole by jt_u64, strings decoded from
 * every escape, the caller's limits on values and nesting, and each refusal with its message.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jtree.h"

#define NODES 1024
#define DEPTH 32

/* Parse len bytes of src (copied to a heap buffer of exactly len bytes, so that ASan sees any
 * read past the end), expecting success. The copy is kept in *owned for the doc's lifetime. */
static void parse_ok(const char *src, size_t len, struct jt_doc *d, char **owned)
{
    char err[256] = "";
    char *copy = malloc(len ? len : 1);

    assert_non_null(copy);
    memcpy(copy, src, len);
    int rc = jt_parse(copy, len, NODES, DEPTH, d, err, sizeof(err));
    if (rc != 0)
        fail_msg("refused \"%.*s\": %s", (int)len, src, err);
    *owned = copy;
}

static void done(struct jt_doc *d, char *owned)
{
    jt_free(d);
    assert_null(d->nodes);
    assert_null(d->pool);
    assert_int_equal(d->n, 0);
    free(owned);
}

/* Parse len bytes of src with the given limits, expecting rc and a message containing want;
 * a refused parse leaves the doc empty. */
static void refused_with(const char *src, size_t len, uint32_t max_nodes, unsigned max_depth,
                         int want_rc, const char *want)
{
    char err[256] = "";
    struct jt_doc d;
    char *copy = malloc(len ? len : 1);

    assert_non_null(copy);
    memcpy(copy, src, len);
    int rc = jt_parse(copy, len, max_nodes, max_depth, &d, err, sizeof(err));
    if (rc != want_rc || strstr(err, want) == NULL)
        fail_msg("\"%.*s\": rc %d, message \"%s\"; wanted rc %d and \"%s\"", (int)len, src, rc,
                 err, want_rc, want);
    assert_null(d.nodes);
    assert_null(d.pool);
    assert_int_equal(d.n, 0);
    free(copy);
}

static void refused(const char *src, const char *want)
{
    refused_with(src, strlen(src), NODES, DEPTH, -EINVAL, want);
}

/* The source text of node n. */
static char *text(const struct jt_doc *d, const struct jt_node *n)
{
    static char buf[256];

    snprintf(buf, sizeof(buf), "%.*s", (int)(n->end - n->begin), d->src + n->begin);
    return buf;
}

static void test_every_scalar_is_a_whole_document(void **state)
{
    static const struct {
        const char *src;
        enum jt_type type;
        const char *text;
    } cases[] = {
        {"null", JT_NULL, "null"},       {"true", JT_TRUE, "true"},
        {"false", JT_FALSE, "false"},    {" \t\r\n0 \t\r\n", JT_NUMBER, "0"},
        {"\"\"", JT_STRING, "\"\""},     {"\"x\"", JT_STRING, "\"x\""},
        {"-12.5e3", JT_NUMBER, "-12.5e3"},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct jt_doc d;
        char *owned;
        parse_ok(cases[i].src, strlen(cases[i].src), &d, &owned);
        assert_int_equal(d.n, 1);
        assert_int_equal(d.nodes[0].type, cases[i].type);
        assert_int_equal(d.nodes[0].count, 0);
        assert_null(jt_first(&d, &d.nodes[0]));
        assert_null(jt_next(&d, &d.nodes[0]));
        assert_string_equal(text(&d, &d.nodes[0]), cases[i].text);
        if (cases[i].type == JT_STRING)
            assert_non_null(jt_str(&d, &d.nodes[0]));
        else
            assert_null(jt_str(&d, &d.nodes[0]));
        done(&d, owned);
    }
}

static void test_arrays_and_objects_link_their_children_in_order(void **state)
{
    const char *src = " { \"a\" : [1, [], {}, [true, false, null]], \"b\": {\"c\": \"d\"}, "
                      "\"\": 7 } ";
    struct jt_doc d;
    char *owned;
    uint64_t u;
    (void)state;

    parse_ok(src, strlen(src), &d, &owned);
    const struct jt_node *root = &d.nodes[0];
    assert_int_equal(root->type, JT_OBJECT);
    assert_int_equal(root->count, 3);
    assert_int_equal(root->begin, 1); /* the value's text, without the whitespace around */
    assert_int_equal(root->end, strlen(src) - 1);
    /* Keys then values, in document order. */
    const struct jt_node *k = jt_first(&d, root);
    assert_int_equal(k->type, JT_STRING);
    assert_string_equal(jt_str(&d, k), "a");
    const struct jt_node *a = jt_next(&d, k);
    assert_ptr_equal(a, jt_get(&d, root, "a"));
    assert_int_equal(a->type, JT_ARRAY);
    assert_int_equal(a->count, 4);
    const struct jt_node *e = jt_first(&d, a);
    assert_true(jt_u64(&d, e, &u));
    assert_int_equal(u, 1);
    e = jt_next(&d, e);
    assert_int_equal(e->type, JT_ARRAY);
    assert_int_equal(e->count, 0);
    assert_null(jt_first(&d, e));
    e = jt_next(&d, e);
    assert_int_equal(e->type, JT_OBJECT);
    assert_int_equal(e->count, 0);
    assert_null(jt_get(&d, e, "a"));
    e = jt_next(&d, e);
    assert_int_equal(e->count, 3);
    assert_string_equal(text(&d, e), "[true, false, null]");
    assert_int_equal(jt_first(&d, e)->type, JT_TRUE);
    assert_int_equal(jt_next(&d, jt_first(&d, e))->type, JT_FALSE);
    assert_int_equal(jt_next(&d, jt_next(&d, jt_first(&d, e)))->type, JT_NULL);
    assert_null(jt_next(&d, jt_next(&d, jt_next(&d, jt_first(&d, e)))));
    assert_null(jt_next(&d, e)); /* the last element */
    const struct jt_node *b = jt_get(&d, root, "b");
    assert_non_null(b);
    assert_string_equal(jt_str(&d, jt_get(&d, b, "c")), "d");
    assert_null(jt_get(&d, root, "c")); /* only the object's own keys */
    assert_true(jt_u64(&d, jt_get(&d, root, ""), &u));
    assert_int_equal(u, 7);
    /* jt_get on what is not an object. */
    assert_null(jt_get(&d, a, "a"));
    assert_null(jt_get(&d, NULL, "a"));
    /* root, 3 keys, 3 values, 4 + 3 elements in a, 1 key + 1 value in b */
    assert_int_equal(d.n, 1 + 3 + 3 + 4 + 3 + 2);
    done(&d, owned);
}

static void test_numbers_follow_the_grammar_and_keep_their_text(void **state)
{
    static const char *const ok[] = {
        "0", "-0", "7", "-7", "10", "1234567890", "0.5", "-0.0", "1.25", "1e5", "1E5", "1e+5",
        "1e-5", "1.5E-10", "-0e0", "0e00", "123456789012345678901234567890",
        "1.7976931348623157e308", "1e999999",
    };
    (void)state;

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char src[64];
        struct jt_doc d;
        char *owned;
        snprintf(src, sizeof(src), "[%s]", ok[i]);
        parse_ok(src, strlen(src), &d, &owned);
        const struct jt_node *n = jt_first(&d, &d.nodes[0]);
        assert_int_equal(n->type, JT_NUMBER);
        assert_string_equal(text(&d, n), ok[i]);
        done(&d, owned);
    }
}

static void test_u64_reads_whole_numbers_up_to_2_64_minus_1_only(void **state)
{
    static const struct {
        const char *src;
        bool ok;
        uint64_t v;
    } cases[] = {
        {"0", true, 0},
        {"1", true, 1},
        {"4294967296", true, 4294967296ull},
        {"18446744073709551615", true, UINT64_MAX},
        {"18446744073709551616", false, 0}, /* 2^64 */
        {"99999999999999999999", false, 0},
        {"-0", false, 0},
        {"-1", false, 0},
        {"1.0", false, 0},
        {"1e2", false, 0},
        {"0.5", false, 0},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct jt_doc d;
        char *owned;
        uint64_t v = 12345;
        parse_ok(cases[i].src, strlen(cases[i].src), &d, &owned);
        bool got = jt_u64(&d, &d.nodes[0], &v);
        if (got != cases[i].ok)
            fail_msg("jt_u64(%s) is %d", cases[i].src, got);
        if (got)
            assert_int_equal(v, cases[i].v);
        else
            assert_int_equal(v, 12345); /* untouched */
        done(&d, owned);
    }
    /* Not a number at all. */
    struct jt_doc d;
    char *owned;
    uint64_t v;
    parse_ok("\"1\"", 3, &d, &owned);
    assert_false(jt_u64(&d, &d.nodes[0], &v));
    assert_false(jt_u64(&d, NULL, &v));
    done(&d, owned);
}

static void test_strings_decode_every_escape_and_surrogate_pairs(void **state)
{
    static const struct {
        const char *src;
        const char *want;
    } cases[] = {
        {"\"plain\"", "plain"},
        {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t"},
        {"\"\\u0041\\u007a\"", "Az"},               /* one byte */
        {"\"\\u007F\\u0080\"", "\x7f\xc2\x80"},     /* the 1- and 2-byte boundary */
        {"\"\\u00e9\\u00E9\"", "\xc3\xa9\xc3\xa9"}, /* either case of hex */
        {"\"\\u07ff\\u0800\"", "\xdf\xbf\xe0\xa0\x80"},
        {"\"\\u20ac\"", "\xe2\x82\xac"},
        {"\"\\uffff\"", "\xef\xbf\xbf"},
        {"\"\\ud800\\udc00\"", "\xf0\x90\x80\x80"}, /* U+10000 */
        {"\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80"}, /* U+1F600 */
        {"\"\\uDBFF\\uDFFF\"", "\xf4\x8f\xbf\xbf"}, /* U+10FFFF */
        {"\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"",
         "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"}, /* raw UTF-8 kept */
        {"\"a\\u00e9\xc3\xa9\\n\"", "a\xc3\xa9\xc3\xa9\n"}, /* escapes and raw UTF-8 mixed */
        {"\"\x7f\"", "\x7f"},                               /* DEL needs no escape */
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct jt_doc d;
        char *owned;
        parse_ok(cases[i].src, strlen(cases[i].src), &d, &owned);
        assert_int_equal(d.nodes[0].type, JT_STRING);
        assert_string_equal(jt_str(&d, &d.nodes[0]), cases[i].want);
        done(&d, owned);
    }
}

static void test_object_keys_are_decoded_and_found_by_their_decoded_text(void **state)
{
    const char *src = "{\"\\u0061\\n\": 1, \"caf\\u00e9\": 2, \"a\": 3}";
    struct jt_doc d;
    char *owned;
    uint64_t u;
    (void)state;

    parse_ok(src, strlen(src), &d, &owned);
    assert_true(jt_u64(&d, jt_get(&d, &d.nodes[0], "a\n"), &u));
    assert_int_equal(u, 1);
    assert_true(jt_u64(&d, jt_get(&d, &d.nodes[0], "caf\xc3\xa9"), &u));
    assert_int_equal(u, 2);
    assert_true(jt_u64(&d, jt_get(&d, &d.nodes[0], "a"), &u));
    assert_int_equal(u, 3);
    done(&d, owned);
}

static void test_the_value_limit_is_exact(void **state)
{
    const char *src = "[1, [2, 3], {\"k\": 4}]"; /* 1 + 1 + 1 + 2 + 1 + 2 = 8 values and keys */
    struct jt_doc d;
    char err[256];
    (void)state;

    assert_int_equal(jt_parse(src, strlen(src), 8, DEPTH, &d, err, sizeof(err)), 0);
    assert_int_equal(d.n, 8);
    jt_free(&d);
    refused_with(src, strlen(src), 7, DEPTH, -E2BIG, "more than 7 values");
    refused_with("1", 1, 0, DEPTH, -EINVAL, "no values allowed");
    /* Many values: the node array grows past its first allocation. */
    size_t n = 5000;
    char *big = malloc(2 * n + 2);
    assert_non_null(big);
    big[0] = '[';
    for (size_t i = 0; i < n; i++) {
        big[1 + 2 * i] = '0';
        big[2 + 2 * i] = i + 1 < n ? ',' : ']';
    }
    assert_int_equal(jt_parse(big, 2 * n + 1, (uint32_t)n + 1, DEPTH, &d, err, sizeof(err)), 0);
    assert_int_equal(d.nodes[0].count, n);
    jt_free(&d);
    refused_with(big, 2 * n + 1, (uint32_t)n, DEPTH, -E2BIG, "more than 5000 values");
    free(big);
}

static void test_the_depth_limit_is_exact(void **state)
{
    char src[2 * DEPTH + 16];
    struct jt_doc d;
    char err[256];
    (void)state;

    /* DEPTH nested arrays are accepted, DEPTH + 1 are not; objects count the same. */
    for (unsigned levels = DEPTH; levels <= DEPTH + 1; levels++) {
        memset(src, '[', levels);
        memset(src + levels, ']', levels);
        int rc = jt_parse(src, 2 * levels, NODES, DEPTH, &d, err, sizeof(err));
        if (levels == DEPTH) {
            assert_int_equal(rc, 0);
            assert_int_equal(d.n, DEPTH);
            jt_free(&d);
        } else {
            assert_int_equal(rc, -EINVAL);
            assert_non_null(strstr(err, "nested too deep"));
            assert_non_null(strstr(err, "byte 32"));
        }
    }
    refused_with("{\"a\": {\"b\": {}}}", 16, NODES, 2, -EINVAL, "nested too deep");
    assert_int_equal(jt_parse("{\"a\": {\"b\": 1}}", 15, NODES, 2, &d, err, sizeof(err)), 0);
    jt_free(&d);
    /* Depth 0: scalars only. */
    assert_int_equal(jt_parse("1", 1, NODES, 0, &d, err, sizeof(err)), 0);
    jt_free(&d);
    refused_with("[]", 2, NODES, 0, -EINVAL, "nested too deep");
    /* A hostile depth far past the limit is refused without recursing that deep. */
    size_t deep = 1000000;
    char *p = malloc(deep);
    assert_non_null(p);
    memset(p, '[', deep);
    refused_with(p, deep, NODES, DEPTH, -EINVAL, "nested too deep");
    free(p);
}

static void test_a_document_over_2_gib_is_refused_before_it_is_read(void **state)
{
    struct jt_doc d;
    char err[256] = "";
    char one = '1';
    (void)state;

    /* jt_parse must look at the length only: it reads nothing of a document it refuses. */
    assert_int_equal(jt_parse(&one, ((size_t)1 << 31) + 1, NODES, DEPTH, &d, err, sizeof(err)),
                     -E2BIG);
    assert_non_null(strstr(err, "more than 2 GiB"));
    assert_null(d.nodes);
}

static void test_structural_errors_are_refused_with_their_reason(void **state)
{
    (void)state;

    refused("", "expected a value at the end of the document");
    refused("   ", "expected a value at the end of the document");
    refused("1 2", "byte 2: only whitespace may follow the value, found '2'");
    refused("{} x", "only whitespace may follow the value");
    refused("[1]]", "byte 3: only whitespace may follow the value, found ']'");
    refused("[1,]", "byte 3: expected a value, found ']'");
    refused("[,1]", "byte 1: expected a value");
    refused("{\"a\": 1,}", "byte 8: expected a string, found '}'");
    refused("[1 2]", "byte 3: expected ',' or ']', found '2'");
    refused("{\"a\": 1 \"b\": 2}", "expected ',' or '}'");
    refused("[1", "expected ',' or ']' at the end of the document");
    refused("{\"a\" 1}", "byte 5: expected ':', found '1'");
    refused("{\"a\"}", "expected ':'");
    refused("{a: 1}", "byte 1: expected a string, found 'a'");
    refused("{'a': 1}", "expected a string");
    refused("{1: 1}", "expected a string");
    refused("['a']", "expected a value");
    refused("tru", "expected a value");
    refused("nul", "expected a value");
    refused("True", "expected a value");
    refused("nulls", "byte 4: only whitespace may follow the value, found 's'");
    refused("NaN", "expected a value");
    refused("Infinity", "expected a value");
    refused("[1] // a comment", "only whitespace may follow the value");
    refused("/* c */ 1", "expected a value");
    refused("\xef\xbb\xbf{}", "byte 0: expected a value, found byte 0xef"); /* a BOM */
    refused("\f1", "byte 0: expected a value, found byte 0x0c"); /* not JSON whitespace */
    refused("1\v", "found byte 0x0b");
}

static void test_numbers_outside_the_grammar_are_refused(void **state)
{
    (void)state;

    refused("01", "byte 1: a number with a leading zero");
    refused("-01", "a number with a leading zero");
    refused("00", "a number with a leading zero");
    refused("[-]", "byte 2: expected a value, found ']'");
    refused("-", "expected a value at the end of the document");
    refused("+1", "byte 0: expected a value, found '+'");
    refused(".5", "expected a value");
    refused("1.", "expected a digit after '.' at the end of the document");
    refused("1.e5", "byte 2: expected a digit after '.', found 'e'");
    refused("1e", "expected a digit in the exponent");
    refused("1e+", "expected a digit in the exponent");
    refused("1E-x", "byte 3: expected a digit in the exponent, found 'x'");
    refused("0x10", "only whitespace may follow the value, found 'x'");
    refused("1.5.2", "only whitespace may follow the value");
    refused("- 1", "expected a value");
    refused("1_000", "only whitespace may follow the value");
}

static void test_string_errors_are_refused_with_their_reason(void **state)
{
    (void)state;

    refused("\"abc", "unterminated string at the end of the document");
    refused("\"abc\\", "unterminated escape");
    refused("\"\\x\"", "byte 2: unknown escape, found 'x'");
    refused("\"\\U0041\"", "unknown escape");
    refused("\"\\'\"", "unknown escape");
    refused("\"\\u12\"", "expected four hex digits after \\u");
    refused("\"\\u12G4\"", "expected four hex digits after \\u");
    refused("\"\\u123", "expected four hex digits after \\u");
    refused("\"\\u0000\"", "a NUL character (\\u0000) in a string");
    refused("\"a\tb\"", "byte 2: control character in a string (escape it), found byte 0x09");
    refused("\"a\nb\"", "control character in a string");
    refused("\"\x1f\"", "control character in a string");
    /* Lone surrogates, and a high half followed by anything but a low half. */
    refused("\"\\udc00\"", "a lone low surrogate escape");
    refused("\"\\ud800\"", "a high surrogate escape without its low half");
    refused("\"\\ud800x\"", "a high surrogate escape without its low half");
    refused("\"\\ud800\\n\"", "a high surrogate escape without its low half");
    refused("\"\\ud800\\ud800\"", "a high surrogate escape without its low half");
    refused("\"\\ud800\\u0041\"", "a high surrogate escape without its low half");
    refused("\"\\ud800\\ue000\"", "a high surrogate escape without its low half");
    refused("\"\\ud800\\udc0", "expected four hex digits after \\u");
    refused("\"\\ud800\\", "a high surrogate escape without its low half");
}

static void test_a_raw_nul_is_refused_everywhere(void **state)
{
    (void)state;

    refused_with("\"a\0b\"", 5, NODES, DEPTH, -EINVAL,
                 "byte 2: control character in a string (escape it), found byte 0x00");
    refused_with("1\0", 2, NODES, DEPTH, -EINVAL,
                 "byte 1: only whitespace may follow the value, found byte 0x00");
    refused_with("\0", 1, NODES, DEPTH, -EINVAL, "byte 0: expected a value, found byte 0x00");
    refused_with("{\"a\0\": 1}", 9, NODES, DEPTH, -EINVAL, "control character in a string");
}

static void test_invalid_utf8_is_refused(void **state)
{
    static const char *const bad[] = {
        "\"\x80\"",             /* a continuation byte alone */
        "\"\xc3\"",             /* a truncated 2-byte form */
        "\"\xc3x\"",
        "\"\xc0\x80\"",         /* overlong NUL */
        "\"\xc1\xbf\"",         /* overlong */
        "\"\xe0\x80\x80\"",     /* overlong 3-byte */
        "\"\xed\xa0\x80\"",     /* a surrogate, encoded */
        "\"\xed\xbf\xbf\"",
        "\"\xf0\x80\x80\x80\"", /* overlong 4-byte */
        "\"\xf4\x90\x80\x80\"", /* past U+10FFFF */
        "\"\xf5\x80\x80\x80\"",
        "\"\xff\"",
        "\"\xe2\x82\"",         /* truncated by the closing quote */
        "\"\xc3\\u00a9\"",      /* a lead byte before an escape's own lead byte */
        "\"\\u00e9\xa9\"",      /* a continuation byte after an escape */
    };
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        refused(bad[i], "is not valid UTF-8");
}

static void test_duplicate_keys_are_refused_wherever_they_are(void **state)
{
    (void)state;

    refused("{\"a\": 1, \"a\": 2}", "byte 9: key \"a\" appears twice");
    refused("{\"a\": 1, \"b\": 2, \"c\": 3, \"b\": 4}", "key \"b\" appears twice");
    refused("[{\"x\": {\"k\": 1, \"k\": 1}}]", "key \"k\" appears twice");
    /* The same key once escaped and once not is the same key. */
    refused("{\"\\u0061\": 1, \"a\": 2}", "key \"a\" appears twice");
    refused("{\"caf\\u00e9\": 1, \"caf\xc3\xa9\": 2}", "appears twice");
    refused("{\"\": 1, \"\": 2}", "key \"\" appears twice");
}

static void test_distinct_keys_that_sort_together_are_accepted(void **state)
{
    /* Many keys (sorted for the duplicate check): prefixes of each other, and the same key in
     * sibling objects. */
    const char *src = "{\"a\": {\"k\": 1}, \"ab\": {\"k\": 2}, \"a b\": 3, \"b\": 4, \"A\": 5, "
                      "\"\": 6, \"\\u0000x\": 7}";
    char err[256] = "";
    struct jt_doc d;
    (void)state;

    /* The last key holds \u0000: refused for that, not as a duplicate. */
    assert_int_equal(jt_parse(src, strlen(src), NODES, DEPTH, &d, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "NUL"));
    const char *ok = "{\"a\": {\"k\": 1}, \"ab\": {\"k\": 2}, \"a b\": 3, \"b\": 4, \"A\": 5, "
                     "\"\": 6}";
    char *owned;
    parse_ok(ok, strlen(ok), &d, &owned);
    assert_int_equal(d.nodes[0].count, 6);
    done(&d, owned);
}

static void test_a_short_error_buffer_is_truncated_not_overrun(void **state)
{
    char err[8];
    struct jt_doc d;
    (void)state;

    memset(err, 'x', sizeof(err));
    assert_int_equal(jt_parse("[1,]", 4, NODES, DEPTH, &d, err, sizeof(err)), -EINVAL);
    assert_int_equal(strlen(err), sizeof(err) - 1);
    /* No buffer at all. */
    assert_int_equal(jt_parse("[1,]", 4, NODES, DEPTH, &d, NULL, 0), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_scalar_is_a_whole_document),
        cmocka_unit_test(test_arrays_and_objects_link_their_children_in_order),
        cmocka_unit_test(test_numbers_follow_the_grammar_and_keep_their_text),
        cmocka_unit_test(test_u64_reads_whole_numbers_up_to_2_64_minus_1_only),
        cmocka_unit_test(test_strings_decode_every_escape_and_surrogate_pairs),
        cmocka_unit_test(test_object_keys_are_decoded_and_found_by_their_decoded_text),
        cmocka_unit_test(test_the_value_limit_is_exact),
        cmocka_unit_test(test_the_depth_limit_is_exact),
        cmocka_unit_test(test_a_document_over_2_gib_is_refused_before_it_is_read),
        cmocka_unit_test(test_structural_errors_are_refused_with_their_reason),
        cmocka_unit_test(test_numbers_outside_the_grammar_are_refused),
        cmocka_unit_test(test_string_errors_are_refused_with_their_reason),
        cmocka_unit_test(test_a_raw_nul_is_refused_everywhere),
        cmocka_unit_test(test_invalid_utf8_is_refused),
        cmocka_unit_test(test_duplicate_keys_are_refused_wherever_they_are),
        cmocka_unit_test(test_distinct_keys_that_sort_together_are_accepted),
        cmocka_unit_test(test_a_short_error_buffer_is_truncated_not_overrun),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
