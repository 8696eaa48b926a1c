/*
 * fuzz_jtree.c - libFuzzer target for the strict JSON reader (proto/jtree.c), which reads
 * documents other programs wrote (the group checkpoint manifest, docs/scaleout.md).
 *
 * Input: the document, whole.
 *
 * What must hold (a violation calls __builtin_trap):
 *   - jt_parse never crashes, leaks or reads outside the document; a refusal leaves the doc
 *     empty and a message;
 *   - an accepted document is a tree: every node reached once from the root, each child's text
 *     inside its parent's, in order; arrays and objects hold count children (objects a string
 *     key before each value); strings decode to valid UTF-8 without NUL, no longer than their
 *     text; numbers and words are their text; jt_get finds each key's own value; jt_u64 agrees
 *     with the text printed back;
 *   - the limits are exact: the document parses again with max_nodes = its node count and
 *     max_depth = its depth, and is refused with one less of either;
 *   - written back out (strings escaped afresh), it parses to the same tree.
 */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jtree.h"
#include "names.h"

#define CHECK(c)                                                                              \
    do {                                                                                      \
        if (!(c))                                                                             \
            __builtin_trap();                                                                 \
    } while (0)

#define MAX_NODES (1u << 16)
#define MAX_DEPTH 64u

struct walk {
    const struct jt_doc *d;
    size_t len;
    uint32_t seen;     /* nodes reached */
    unsigned depth;    /* the deepest nesting of containers */
};

static bool text_is(const struct jt_doc *d, const struct jt_node *n, const char *s)
{
    return n->end - n->begin == strlen(s) && memcmp(d->src + n->begin, s, strlen(s)) == 0;
}

static void check_scalar(const struct jt_doc *d, const struct jt_node *n)
{
    char num[32];
    uint64_t u;

    switch (n->type) {
    case JT_NULL:
        CHECK(text_is(d, n, "null"));
        break;
    case JT_TRUE:
        CHECK(text_is(d, n, "true"));
        break;
    case JT_FALSE:
        CHECK(text_is(d, n, "false"));
        break;
    case JT_NUMBER:
        CHECK(d->src[n->begin] == '-' || (d->src[n->begin] >= '0' && d->src[n->begin] <= '9'));
        if (jt_u64(d, n, &u)) {
            snprintf(num, sizeof(num), "%" PRIu64, u);
            CHECK(text_is(d, n, num));
        }
        break;
    case JT_STRING: {
        const char *s = jt_str(d, n);
        CHECK(s != NULL);
        size_t l = strlen(s);
        CHECK(n->end - n->begin >= 2 && d->src[n->begin] == '"' && d->src[n->end - 1] == '"');
        CHECK(l <= n->end - n->begin - 2);
        CHECK(names_utf8_valid(s, l));
        break;
    }
    default:
        CHECK(0);
    }
}

static void walk(struct walk *w, const struct jt_node *n, unsigned depth)
{
    const struct jt_doc *d = w->d;

    CHECK(n >= d->nodes && n < d->nodes + d->n);
    CHECK(n->begin < n->end && n->end <= w->len);
    w->seen++;
    CHECK(w->seen <= d->n);
    if (n->type != JT_ARRAY && n->type != JT_OBJECT) {
        CHECK(n->count == 0 && jt_first(d, n) == NULL);
        check_scalar(d, n);
        return;
    }
    CHECK(d->src[n->begin] == (n->type == JT_ARRAY ? '[' : '{'));
    CHECK(d->src[n->end - 1] == (n->type == JT_ARRAY ? ']' : '}'));
    if (depth + 1 > w->depth)
        w->depth = depth + 1;
    CHECK(w->depth <= MAX_DEPTH);
    uint32_t children = 0, at = n->begin + 1;
    for (const struct jt_node *c = jt_first(d, n); c != NULL; c = jt_next(d, c), children++) {
        CHECK(c->begin >= at && c->end < n->end);
        at = c->end;
        if (n->type == JT_OBJECT && children % 2 == 0) {
            CHECK(c->type == JT_STRING);
            CHECK(jt_get(d, n, jt_str(d, c)) == jt_next(d, c));
            w->seen++;
            CHECK(c->begin < c->end && c->end <= w->len);
            check_scalar(d, c);
        } else {
            walk(w, c, depth + 1);
        }
    }
    CHECK(children == (n->type == JT_OBJECT ? 2 * n->count : n->count));
}

/* ---- Writing a tree back out ---- */

struct out {
    char *b;
    size_t len, cap;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->len + n + 1 > o->cap) {
        size_t c = o->cap ? o->cap : 256;
        while (c < o->len + n + 1)
            c *= 2;
        o->b = realloc(o->b, c);
        CHECK(o->b != NULL);
        o->cap = c;
    }
    memcpy(o->b + o->len, s, n);
    o->len += n;
    o->b[o->len] = '\0';
}

static void put_string(struct out *o, const char *s)
{
    char esc[8];

    put(o, "\"", 1);
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(o, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            put(o, esc, 6);
        } else {
            put(o, s, 1);
        }
    }
    put(o, "\"", 1);
}

static void put_value(struct out *o, const struct jt_doc *d, const struct jt_node *n)
{
    if (n->type == JT_STRING) {
        put_string(o, jt_str(d, n));
        return;
    }
    if (n->type != JT_ARRAY && n->type != JT_OBJECT) {
        put(o, d->src + n->begin, n->end - n->begin);
        return;
    }
    put(o, n->type == JT_ARRAY ? "[" : "{", 1);
    uint32_t i = 0;
    for (const struct jt_node *c = jt_first(d, n); c != NULL; c = jt_next(d, c), i++) {
        if (i > 0)
            put(o, n->type == JT_OBJECT && i % 2 ? ":" : ",", 1);
        put_value(o, d, c);
    }
    put(o, n->type == JT_ARRAY ? "]" : "}", 1);
}

/* a and b hold the same values (their texts may differ in whitespace and escapes). */
static void check_same(const struct jt_doc *a, const struct jt_node *x, const struct jt_doc *b,
                       const struct jt_node *y)
{
    CHECK(x->type == y->type && x->count == y->count);
    if (x->type == JT_STRING)
        CHECK(strcmp(jt_str(a, x), jt_str(b, y)) == 0);
    else if (x->type == JT_NUMBER)
        CHECK(x->end - x->begin == y->end - y->begin &&
              memcmp(a->src + x->begin, b->src + y->begin, x->end - x->begin) == 0);
    const struct jt_node *p = jt_first(a, x), *q = jt_first(b, y);
    for (; p != NULL && q != NULL; p = jt_next(a, p), q = jt_next(b, q))
        check_same(a, p, b, q);
    CHECK(p == NULL && q == NULL);
}

/* Parse a copy of exactly len bytes (so that ASan sees a read past the end). */
static int parse(const uint8_t *data, size_t len, uint32_t max_nodes, unsigned max_depth,
                 struct jt_doc *d, char **copy)
{
    char err[512] = "";

    *copy = malloc(len ? len : 1);
    CHECK(*copy != NULL);
    memcpy(*copy, data, len);
    int rc = jt_parse(*copy, len, max_nodes, max_depth, d, err, sizeof(err));
    if (rc != 0) {
        CHECK(rc == -EINVAL || rc == -E2BIG || rc == -ENOMEM);
        CHECK(err[0] != '\0');
        CHECK(d->nodes == NULL && d->pool == NULL && d->n == 0);
    }
    return rc;
}

static void reparse_limits(const uint8_t *data, size_t size, uint32_t nodes, unsigned depth)
{
    struct jt_doc d;
    char *copy;

    CHECK(parse(data, size, nodes, depth, &d, &copy) == 0);
    CHECK(d.n == nodes);
    jt_free(&d);
    free(copy);
    CHECK(parse(data, size, nodes - 1, depth, &d, &copy) != 0);
    free(copy);
    if (depth > 0) {
        CHECK(parse(data, size, nodes, depth - 1, &d, &copy) == -EINVAL);
        free(copy);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct jt_doc d, d2;
    struct out o = {0};
    char *copy, *copy2;

    if (parse(data, size, MAX_NODES, MAX_DEPTH, &d, &copy) != 0) {
        free(copy);
        return 0;
    }
    struct walk w = {.d = &d, .len = size};
    CHECK(d.n > 0);
    walk(&w, &d.nodes[0], 0);
    CHECK(w.seen == d.n);
    put_value(&o, &d, &d.nodes[0]);
    CHECK(parse((const uint8_t *)o.b, o.len, MAX_NODES, MAX_DEPTH, &d2, &copy2) == 0);
    check_same(&d, &d.nodes[0], &d2, &d2.nodes[0]);
    jt_free(&d2);
    free(copy2);
    free(o.b);
    reparse_limits(data, size, d.n, w.depth);
    jt_free(&d);
    free(copy);
    return 0;
}
