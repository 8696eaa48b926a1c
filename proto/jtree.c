/*
 * jtree.c - a strict JSON reader into a flat tree (see jtree.h). Recursive descent, bounded by
 * the caller's depth; nodes live in one array addressed by index so that growing it never
 * invalidates a parent being filled.
 */
#include "jtree.h"

#include "errbuf.h"
#include "names.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct jp {
    const char *s;
    size_t len, pos;
    struct jt_doc *d;
    size_t pool_used;
    uint32_t max_nodes;
    unsigned max_depth;
    char *err;
    size_t errlen;
};

static int fail(struct jp *j, const char *what)
{
    if (j->pos >= j->len)
        return err_set(j->err, j->errlen, -EINVAL, "%s at the end of the document", what);
    unsigned char c = (unsigned char)j->s[j->pos];
    if (c >= 0x20 && c < 0x7f)
        return err_set(j->err, j->errlen, -EINVAL, "byte %zu: %s, found '%c'", j->pos, what, c);
    return err_set(j->err, j->errlen, -EINVAL, "byte %zu: %s, found byte 0x%02x", j->pos, what,
                   c);
}

static void ws(struct jp *j)
{
    while (j->pos < j->len && (j->s[j->pos] == ' ' || j->s[j->pos] == '\t' ||
                               j->s[j->pos] == '\n' || j->s[j->pos] == '\r'))
        j->pos++;
}

static bool accept(struct jp *j, char c)
{
    ws(j);
    if (j->pos < j->len && j->s[j->pos] == c) {
        j->pos++;
        return true;
    }
    return false;
}

static int new_node(struct jp *j, enum jt_type type, uint32_t *idx)
{
    struct jt_doc *d = j->d;

    if (d->n >= j->max_nodes)
        return err_set(j->err, j->errlen, -E2BIG, "byte %zu: more than %u values", j->pos,
                       j->max_nodes);
    if (d->n == d->cap) {
        uint32_t c = d->cap ? d->cap * 2 : 64;
        if (c > j->max_nodes)
            c = j->max_nodes;
        struct jt_node *p = realloc(d->nodes, (size_t)c * sizeof(*p));
        if (p == NULL)
            return err_set(j->err, j->errlen, -ENOMEM, "out of memory");
        d->nodes = p;
        d->cap = c;
    }
    *idx = d->n++;
    memset(&d->nodes[*idx], 0, sizeof(d->nodes[*idx]));
    d->nodes[*idx].type = (uint8_t)type;
    d->nodes[*idx].begin = (uint32_t)j->pos;
    return 0;
}

static int hex4(struct jp *j, unsigned *out)
{
    unsigned v = 0;

    if (j->len - j->pos < 4)
        return fail(j, "expected four hex digits after \\u");
    for (int i = 0; i < 4; i++) {
        char c = j->s[j->pos + (size_t)i];
        int h = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (h < 0)
            return fail(j, "expected four hex digits after \\u");
        v = v * 16 + (unsigned)h;
    }
    j->pos += 4;
    *out = v;
    return 0;
}

/* A string at pos (the opening quote), decoded into the pool: never longer than its source,
 * so a pool as large as the document always has room. */
static int string(struct jp *j, uint32_t *out_off)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    char *o = j->d->pool + j->pool_used;
    size_t n = 0;

    if (j->pos >= j->len || j->s[j->pos] != '"')
        return fail(j, "expected a string");
    j->pos++;
    for (;;) {
        if (j->pos >= j->len)
            return fail(j, "unterminated string");
        unsigned char c = (unsigned char)j->s[j->pos];
        if (c == '"') {
            j->pos++;
            break;
        }
        if (c < 0x20)
            return fail(j, "control character in a string (escape it)");
        j->pos++;
        if (c != '\\') {
            o[n++] = (char)c;
            continue;
        }
        if (j->pos >= j->len)
            return fail(j, "unterminated escape");
        char e = j->s[j->pos++];
        const char *simple = e != '\0' ? strchr(from, e) : NULL;
        if (simple != NULL) {
            o[n++] = to[simple - from];
            continue;
        }
        if (e != 'u') {
            j->pos--;
            return fail(j, "unknown escape");
        }
        unsigned cp, lo;
        int rc = hex4(j, &cp);
        if (rc < 0)
            return rc;
        if (cp >= 0xdc00 && cp <= 0xdfff)
            return fail(j, "a lone low surrogate escape");
        if (cp >= 0xd800 && cp <= 0xdbff) {
            if (j->len - j->pos < 2 || j->s[j->pos] != '\\' || j->s[j->pos + 1] != 'u')
                return fail(j, "a high surrogate escape without its low half");
            j->pos += 2;
            rc = hex4(j, &lo);
            if (rc < 0)
                return rc;
            if (lo < 0xdc00 || lo > 0xdfff)
                return fail(j, "a high surrogate escape without its low half");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        if (cp == 0)
            return fail(j, "a NUL character (\\u0000) in a string");
        if (cp < 0x80) {
            o[n++] = (char)cp;
        } else if (cp < 0x800) {
            o[n++] = (char)(0xc0 | (cp >> 6));
            o[n++] = (char)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            o[n++] = (char)(0xe0 | (cp >> 12));
            o[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
            o[n++] = (char)(0x80 | (cp & 0x3f));
        } else {
            o[n++] = (char)(0xf0 | (cp >> 18));
            o[n++] = (char)(0x80 | ((cp >> 12) & 0x3f));
            o[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
            o[n++] = (char)(0x80 | (cp & 0x3f));
        }
    }
    o[n] = '\0';
    if (!names_utf8_valid(o, n))
        return err_set(j->err, j->errlen, -EINVAL,
                       "the string ending at byte %zu is not valid UTF-8", j->pos);
    *out_off = (uint32_t)j->pool_used;
    j->pool_used += n + 1;
    return 0;
}

static bool digit(struct jp *j)
{
    return j->pos < j->len && j->s[j->pos] >= '0' && j->s[j->pos] <= '9';
}

/* RFC 8259's number: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)? */
static int number(struct jp *j)
{
    if (j->pos < j->len && j->s[j->pos] == '-')
        j->pos++;
    if (!digit(j))
        return fail(j, "expected a value");
    if (j->s[j->pos] == '0') {
        j->pos++;
        if (digit(j))
            return fail(j, "a number with a leading zero");
    } else {
        while (digit(j))
            j->pos++;
    }
    if (j->pos < j->len && j->s[j->pos] == '.') {
        j->pos++;
        if (!digit(j))
            return fail(j, "expected a digit after '.'");
        while (digit(j))
            j->pos++;
    }
    if (j->pos < j->len && (j->s[j->pos] == 'e' || j->s[j->pos] == 'E')) {
        j->pos++;
        if (j->pos < j->len && (j->s[j->pos] == '+' || j->s[j->pos] == '-'))
            j->pos++;
        if (!digit(j))
            return fail(j, "expected a digit in the exponent");
        while (digit(j))
            j->pos++;
    }
    return 0;
}

struct keyref {
    const char *key;
    uint32_t node;
};

static int cmp_key(const void *a, const void *b)
{
    return strcmp(((const struct keyref *)a)->key, ((const struct keyref *)b)->key);
}

/* An object's keys must be unique: sort them and compare neighbours (linear scans would make a
 * hostile object of many keys quadratic). */
static int unique_keys(struct jp *j, uint32_t obj)
{
    const struct jt_node *o = &j->d->nodes[obj];
    struct keyref *k;
    uint32_t at = o->first;
    int rc = 0;

    if (o->count < 2)
        return 0;
    k = malloc((size_t)o->count * sizeof(*k));
    if (k == NULL)
        return err_set(j->err, j->errlen, -ENOMEM, "out of memory");
    for (uint32_t i = 0; i < o->count; i++) {
        k[i] = (struct keyref){j->d->pool + j->d->nodes[at].str, at};
        at = j->d->nodes[j->d->nodes[at].next].next;
    }
    qsort(k, o->count, sizeof(*k), cmp_key);
    for (uint32_t i = 1; i < o->count && rc == 0; i++)
        if (strcmp(k[i - 1].key, k[i].key) == 0)
            rc = err_set(j->err, j->errlen, -EINVAL, "byte %u: key \"%.100s\" appears twice",
                         j->d->nodes[k[i].node].begin, k[i].key);
    free(k);
    return rc;
}

static int value(struct jp *j, unsigned depth, uint32_t *out);

/* Link child after *last (or as parent's first child). */
static void link(struct jp *j, uint32_t parent, uint32_t *last, uint32_t child)
{
    if (*last == 0)
        j->d->nodes[parent].first = child;
    else
        j->d->nodes[*last].next = child;
    *last = child;
}

static int container(struct jp *j, unsigned depth, bool obj, uint32_t self)
{
    uint32_t last = 0, child;
    int rc;

    if (depth >= j->max_depth)
        return fail(j, "nested too deep");
    j->pos++;
    if (accept(j, obj ? '}' : ']'))
        return 0;
    do {
        if (obj) {
            ws(j);
            rc = new_node(j, JT_STRING, &child);
            rc = rc ?: string(j, &j->d->nodes[child].str);
            if (rc < 0)
                return rc;
            j->d->nodes[child].end = (uint32_t)j->pos;
            link(j, self, &last, child);
            if (!accept(j, ':'))
                return fail(j, "expected ':'");
        }
        rc = value(j, depth + 1, &child);
        if (rc < 0)
            return rc;
        link(j, self, &last, child);
        j->d->nodes[self].count++;
    } while (accept(j, ','));
    if (!accept(j, obj ? '}' : ']'))
        return fail(j, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    return obj ? unique_keys(j, self) : 0;
}

static int value(struct jp *j, unsigned depth, uint32_t *out)
{
    static const struct {
        const char *word;
        enum jt_type type;
    } words[] = {{"null", JT_NULL}, {"false", JT_FALSE}, {"true", JT_TRUE}};
    uint32_t self;
    int rc;

    ws(j);
    if (j->pos >= j->len)
        return fail(j, "expected a value");
    char c = j->s[j->pos];
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        size_t wl = strlen(words[i].word);
        if (c == words[i].word[0]) {
            if (j->len - j->pos < wl || memcmp(j->s + j->pos, words[i].word, wl) != 0)
                return fail(j, "expected a value");
            rc = new_node(j, words[i].type, &self);
            if (rc < 0)
                return rc;
            j->pos += wl;
            goto done;
        }
    }
    if (c == '"') {
        rc = new_node(j, JT_STRING, &self);
        rc = rc ?: string(j, &j->d->nodes[self].str);
    } else if (c == '{' || c == '[') {
        rc = new_node(j, c == '{' ? JT_OBJECT : JT_ARRAY, &self);
        rc = rc ?: container(j, depth, c == '{', self);
    } else {
        rc = new_node(j, JT_NUMBER, &self);
        rc = rc ?: number(j);
    }
    if (rc < 0)
        return rc;
done:
    j->d->nodes[self].end = (uint32_t)j->pos;
    *out = self;
    return 0;
}

int jt_parse(const char *src, size_t len, uint32_t max_nodes, unsigned max_depth,
             struct jt_doc *d, char *err, size_t errlen)
{
    struct jp j = {.s = src, .len = len, .d = d, .max_nodes = max_nodes,
                   .max_depth = max_depth, .err = err, .errlen = errlen};
    uint32_t root;
    int rc;

    memset(d, 0, sizeof(*d));
    d->src = src;
    if (len > (1u << 31))
        return err_set(err, errlen, -E2BIG, "a document of %zu bytes, more than 2 GiB", len);
    if (max_nodes == 0)
        return err_set(err, errlen, -EINVAL, "no values allowed");
    d->pool = malloc(len + 1);
    if (d->pool == NULL)
        return err_set(err, errlen, -ENOMEM, "out of memory");
    rc = value(&j, 0, &root);
    if (rc == 0) {
        ws(&j);
        if (j.pos != len)
            rc = fail(&j, "only whitespace may follow the value");
    }
    if (rc < 0) {
        jt_free(d);
        d->src = src;
    }
    return rc;
}

void jt_free(struct jt_doc *d)
{
    free(d->nodes);
    free(d->pool);
    memset(d, 0, sizeof(*d));
}

const char *jt_str(const struct jt_doc *d, const struct jt_node *n)
{
    return n->type == JT_STRING ? d->pool + n->str : NULL;
}

const struct jt_node *jt_first(const struct jt_doc *d, const struct jt_node *n)
{
    return (n->type == JT_ARRAY || n->type == JT_OBJECT) && n->count > 0 ? &d->nodes[n->first]
                                                                         : NULL;
}

const struct jt_node *jt_next(const struct jt_doc *d, const struct jt_node *n)
{
    return n->next != 0 ? &d->nodes[n->next] : NULL;
}

const struct jt_node *jt_get(const struct jt_doc *d, const struct jt_node *obj, const char *key)
{
    if (obj == NULL || obj->type != JT_OBJECT)
        return NULL;
    for (const struct jt_node *k = jt_first(d, obj); k != NULL; k = jt_next(d, jt_next(d, k)))
        if (strcmp(d->pool + k->str, key) == 0)
            return jt_next(d, k);
    return NULL;
}

bool jt_u64(const struct jt_doc *d, const struct jt_node *n, uint64_t *out)
{
    uint64_t v = 0;

    if (n == NULL || n->type != JT_NUMBER)
        return false;
    for (uint32_t i = n->begin; i < n->end; i++) {
        char c = d->src[i];
        if (c < '0' || c > '9')
            return false;
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, (uint64_t)(c - '0'), &v))
            return false;
    }
    *out = v;
    return true;
}
