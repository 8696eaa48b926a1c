/*
 * safetensors.c - write and read safetensors files (see safetensors.h). The JSON parser here
 * knows the one shape a header may have (an object of tensor objects and one string map), so it
 * needs no recursion and no general document model; it accepts only what RFC 8259 allows.
 */
#include "safetensors.h"

#include "durable.h"
#include "errbuf.h"
#include "names.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- dtypes -------------------------------------------------------------------------------- */

static const struct {
    enum dtype dt;
    const char *name;
} st_dtypes[] = {
    {DTYPE_F64, "F64"}, {DTYPE_F32, "F32"}, {DTYPE_F16, "F16"}, {DTYPE_BF16, "BF16"},
    {DTYPE_I64, "I64"}, {DTYPE_I32, "I32"}, {DTYPE_I16, "I16"}, {DTYPE_I8, "I8"},
    {DTYPE_U8, "U8"},   {DTYPE_BOOL, "BOOL"},
};

const char *st_dtype_name(enum dtype dt)
{
    for (size_t i = 0; i < sizeof(st_dtypes) / sizeof(st_dtypes[0]); i++)
        if (st_dtypes[i].dt == dt)
            return st_dtypes[i].name;
    return NULL;
}

int st_dtype_from_name(const char *name, enum dtype *out)
{
    for (size_t i = 0; i < sizeof(st_dtypes) / sizeof(st_dtypes[0]); i++)
        if (strcmp(st_dtypes[i].name, name) == 0) {
            *out = st_dtypes[i].dt;
            return 0;
        }
    return -EINVAL;
}

bool st_numel(const struct st_tensor *t, uint64_t *numel)
{
    uint64_t n = 1;

    for (unsigned i = 0; i < t->rank; i++)
        if (__builtin_mul_overflow(n, t->shape[i], &n))
            return false;
    *numel = n;
    return true;
}

/* Bytes of t: false on overflow. */
static bool st_bytes(const struct st_tensor *t, uint64_t *bytes)
{
    uint64_t n;

    return st_numel(t, &n) && !__builtin_mul_overflow(n, (uint64_t)dtype_size(t->dtype), bytes);
}

/* ---- Messages ------------------------------------------------------------------------------ */

/* A name for a message: JSON-escaped, quoted, cut at about 100 bytes, so that a hostile name
 * can neither flood nor forge a log line. */
static const char *quote(char *buf, size_t size, const char *s)
{
    size_t o = 0;

    buf[o++] = '"';
    for (size_t i = 0; s[i] != '\0' && o + 8 < size; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(buf + o, size - o, "\\u%04x", c);
        } else {
            buf[o++] = (char)c;
        }
        if (o > 100 && s[i + 1] != '\0') {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

#define QBUF 128

/* ---- Writing ------------------------------------------------------------------------------- */

static int buf_append(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n + 1)
            c *= 2;
        char *p = realloc(*buf, c);
        if (p == NULL)
            return -ENOMEM;
        *buf = p;
        *cap = c;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

static int buf_puts(char **buf, size_t *len, size_t *cap, const char *s)
{
    return buf_append(buf, len, cap, s, strlen(s));
}

int st_json_escape(char **buf, size_t *len, size_t *cap, const char *s, size_t slen)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0; /* bytes at s + i - run that need no escape */
    int rc = 0;

    for (size_t i = 0; i < slen && rc == 0; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            run++;
            continue;
        }
        rc = buf_append(buf, len, cap, s + i - run, run);
        run = 0;
        if (rc != 0)
            break;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            rc = buf_append(buf, len, cap, e, 2);
        } else {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            rc = buf_append(buf, len, cap, e, 6);
        }
    }
    if (rc == 0)
        rc = buf_append(buf, len, cap, s + slen - run, run);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Names must be unique: sort pointers to them and compare neighbours. */
static int check_unique(const char **names, size_t n, const char *what, char *err,
                        size_t errlen)
{
    char q[QBUF];

    if (n > 1)
        qsort(names, n, sizeof(*names), cmp_str);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return err_set(err, errlen, -EINVAL, "%s %s appears twice", what,
                           quote(q, sizeof(q), names[i]));
    return 0;
}

static int check_table(const struct st_tensor *t, size_t n, const struct st_meta *meta,
                       size_t nmeta, char *err, size_t errlen)
{
    char q[QBUF];
    const char **names;
    int rc = 0;

    for (size_t i = 0; i < n; i++) {
        uint64_t bytes;
        if (t[i].name == NULL || t[i].name[0] == '\0')
            return err_set(err, errlen, -EINVAL, "tensor %zu has no name", i);
        if (!names_utf8_valid(t[i].name, strlen(t[i].name)))
            return err_set(err, errlen, -EINVAL, "tensor %s: the name is not valid UTF-8",
                           quote(q, sizeof(q), t[i].name));
        if (st_dtype_name(t[i].dtype) == NULL)
            return err_set(err, errlen, -EINVAL, "tensor %s: dtype %d has no safetensors name",
                           quote(q, sizeof(q), t[i].name), (int)t[i].dtype);
        if (t[i].rank > ST_RANK_MAX)
            return err_set(err, errlen, -EINVAL, "tensor %s: rank %u is more than %d",
                           quote(q, sizeof(q), t[i].name), t[i].rank, ST_RANK_MAX);
        if (!st_bytes(&t[i], &bytes))
            return err_set(err, errlen, -EOVERFLOW, "tensor %s: its size overflows 64 bits",
                           quote(q, sizeof(q), t[i].name));
    }
    for (size_t i = 0; i < nmeta; i++) {
        if (meta[i].key == NULL || meta[i].value == NULL)
            return err_set(err, errlen, -EINVAL, "metadata entry %zu lacks a key or value", i);
        if (!names_utf8_valid(meta[i].key, strlen(meta[i].key)) ||
            !names_utf8_valid(meta[i].value, strlen(meta[i].value)))
            return err_set(err, errlen, -EINVAL, "metadata %s: not valid UTF-8",
                           quote(q, sizeof(q), meta[i].key));
    }
    names = malloc((n > nmeta ? n : nmeta) * sizeof(*names) + 1);
    if (names == NULL)
        return err_set(err, errlen, -ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        names[i] = t[i].name;
        if (strcmp(t[i].name, "__metadata__") == 0)
            rc = err_set(err, errlen, -EINVAL, "a tensor may not be named \"__metadata__\"");
    }
    if (rc == 0)
        rc = check_unique(names, n, "tensor", err, errlen);
    for (size_t i = 0; rc == 0 && i < nmeta; i++)
        names[i] = meta[i].key;
    if (rc == 0)
        rc = check_unique(names, nmeta, "metadata key", err, errlen);
    free(names);
    return rc;
}

int st_header_build(const struct st_tensor *t, size_t n, const struct st_meta *meta,
                    size_t nmeta, char **out, size_t *len, uint64_t *data_bytes, char *err,
                    size_t errlen)
{
    char *b = NULL;
    size_t l = 0, cap = 0;
    uint64_t off = 0;
    char num[96];
    int rc;

    *out = NULL;
    *len = 0;
    rc = check_table(t, n, meta, nmeta, err, errlen);
    if (rc < 0)
        return rc;
    /* Room for the length prefix, filled in at the end. */
    rc = buf_append(&b, &l, &cap, "\0\0\0\0\0\0\0\0{", 9);
    if (rc == 0 && nmeta > 0) {
        rc = buf_puts(&b, &l, &cap, "\"__metadata__\":{");
        for (size_t i = 0; rc == 0 && i < nmeta; i++) {
            rc = buf_puts(&b, &l, &cap, i ? ",\"" : "\"");
            rc = rc ?: st_json_escape(&b, &l, &cap, meta[i].key, strlen(meta[i].key));
            rc = rc ?: buf_puts(&b, &l, &cap, "\":\"");
            rc = rc ?: st_json_escape(&b, &l, &cap, meta[i].value, strlen(meta[i].value));
            rc = rc ?: buf_puts(&b, &l, &cap, "\"");
        }
        rc = rc ?: buf_puts(&b, &l, &cap, "}");
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        uint64_t bytes = 0;
        st_bytes(&t[i], &bytes); /* checked above */
        if (__builtin_add_overflow(off, bytes, &off))
            rc = err_set(err, errlen, -EOVERFLOW, "the tensors' total size overflows 64 bits");
        rc = rc ?: buf_puts(&b, &l, &cap, nmeta > 0 || i > 0 ? ",\"" : "\"");
        rc = rc ?: st_json_escape(&b, &l, &cap, t[i].name, strlen(t[i].name));
        rc = rc ?: buf_puts(&b, &l, &cap, "\":{\"dtype\":\"");
        rc = rc ?: buf_puts(&b, &l, &cap, st_dtype_name(t[i].dtype));
        rc = rc ?: buf_puts(&b, &l, &cap, "\",\"shape\":[");
        for (unsigned d = 0; rc == 0 && d < t[i].rank; d++) {
            snprintf(num, sizeof(num), "%s%" PRIu64, d ? "," : "", t[i].shape[d]);
            rc = buf_puts(&b, &l, &cap, num);
        }
        snprintf(num, sizeof(num), "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off - bytes,
                 off);
        rc = rc ?: buf_puts(&b, &l, &cap, num);
    }
    rc = rc ?: buf_puts(&b, &l, &cap, "}");
    /* Pad with spaces so that the data starts at a multiple of 8 (what current writers do:
     * readers may then map the tensors aligned). */
    while (rc == 0 && l % 8 != 0)
        rc = buf_puts(&b, &l, &cap, " ");
    if (rc == 0 && l - 8 > ST_HEADER_MAX)
        rc = err_set(err, errlen, -E2BIG, "the header would be %zu bytes, more than readers "
                     "accept (%u)", l - 8, ST_HEADER_MAX);
    if (rc < 0) {
        free(b);
        if (rc == -ENOMEM)
            err_set(err, errlen, rc, "out of memory building the header");
        return rc;
    }
    for (int i = 0; i < 8; i++)
        b[i] = (char)(((uint64_t)(l - 8) >> (8 * i)) & 0xff);
    *out = b;
    *len = l;
    if (data_bytes != NULL)
        *data_bytes = off;
    return 0;
}

int st_writer_begin(struct st_writer *w, int fd, const struct st_tensor *t, size_t n,
                    const struct st_meta *meta, size_t nmeta, char *err, size_t errlen)
{
    char *hdr;
    size_t len;
    int rc;

    w->fd = fd;
    w->total = 0;
    w->written = 0;
    rc = st_header_build(t, n, meta, nmeta, &hdr, &len, &w->total, err, errlen);
    if (rc < 0)
        return rc;
    rc = durable_write_all(fd, hdr, len);
    free(hdr);
    if (rc < 0)
        return err_set(err, errlen, rc, "writing the header failed: %s", strerror(-rc));
    return 0;
}

int st_writer_write(struct st_writer *w, const void *buf, size_t len, char *err, size_t errlen)
{
    int rc;

    if (len > w->total - w->written)
        return err_set(err, errlen, -EINVAL,
                       "%zu more data bytes would pass the %" PRIu64 " the header announced",
                       len, w->total);
    rc = durable_write_all(w->fd, buf, len);
    if (rc < 0)
        return err_set(err, errlen, rc, "writing tensor data failed: %s", strerror(-rc));
    w->written += len;
    return 0;
}

int st_writer_finish(const struct st_writer *w, char *err, size_t errlen)
{
    if (w->written != w->total)
        return err_set(err, errlen, -EIO,
                       "%" PRIu64 " data bytes written, the header announced %" PRIu64,
                       w->written, w->total);
    return 0;
}

/* ---- Parsing ------------------------------------------------------------------------------- */

struct jp {
    const char *s;      /* the header */
    size_t len, pos;
    char *pool;         /* decoded strings, NUL-terminated */
    size_t used;
    char *err;
    size_t errlen;
};

static int jp_fail(struct jp *j, const char *what)
{
    if (j->pos >= j->len)
        return err_set(j->err, j->errlen, -EINVAL, "header: %s, found the end of the header",
                       what);
    unsigned char c = (unsigned char)j->s[j->pos];
    if (c >= 0x20 && c < 0x7f)
        return err_set(j->err, j->errlen, -EINVAL, "header byte %zu: %s, found '%c'", j->pos,
                       what, c);
    return err_set(j->err, j->errlen, -EINVAL, "header byte %zu: %s, found byte 0x%02x",
                   j->pos, what, c);
}

static void jp_ws(struct jp *j)
{
    while (j->pos < j->len && (j->s[j->pos] == ' ' || j->s[j->pos] == '\t' ||
                               j->s[j->pos] == '\n' || j->s[j->pos] == '\r'))
        j->pos++;
}

/* Skip whitespace, then require c. */
static int jp_expect(struct jp *j, char c, const char *what)
{
    jp_ws(j);
    if (j->pos < j->len && j->s[j->pos] == c) {
        j->pos++;
        return 0;
    }
    return jp_fail(j, what);
}

/* Skip whitespace; true (and consumed) if the next byte is c. */
static bool jp_accept(struct jp *j, char c)
{
    jp_ws(j);
    if (j->pos < j->len && j->s[j->pos] == c) {
        j->pos++;
        return true;
    }
    return false;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Four hex digits at pos (after "\u"). */
static int jp_hex4(struct jp *j, unsigned *out)
{
    unsigned v = 0;

    if (j->len - j->pos < 4)
        return jp_fail(j, "expected four hex digits after \\u");
    for (int i = 0; i < 4; i++) {
        int h = hexval(j->s[j->pos + (size_t)i]);
        if (h < 0)
            return jp_fail(j, "expected four hex digits after \\u");
        v = v * 16 + (unsigned)h;
    }
    j->pos += 4;
    *out = v;
    return 0;
}

/*
 * A string, decoded (escapes resolved to UTF-8) into the pool. A decoded string is never longer
 * than its source, quotes included, so a pool the size of the header always has room.
 */
static int jp_string(struct jp *j, const char **out)
{
    char *o;
    size_t start;

    jp_ws(j);
    if (j->pos >= j->len || j->s[j->pos] != '"')
        return jp_fail(j, "expected a string");
    j->pos++;
    o = j->pool + j->used;
    start = j->used;
    for (;;) {
        if (j->pos >= j->len)
            return jp_fail(j, "unterminated string");
        unsigned char c = (unsigned char)j->s[j->pos];
        if (c == '"') {
            j->pos++;
            break;
        }
        if (c < 0x20)
            return jp_fail(j, "control character in a string (escape it)");
        if (c != '\\') {
            /* Copy a run of raw bytes: UTF-8 is checked once the string is complete. */
            o[j->used++ - start] = (char)c;
            j->pos++;
            continue;
        }
        j->pos++;
        if (j->pos >= j->len)
            return jp_fail(j, "unterminated escape");
        char e = j->s[j->pos++];
        static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
        const char *simple = e != '\0' ? strchr(from, e) : NULL;
        if (simple != NULL) {
            o[j->used++ - start] = to[simple - from];
            continue;
        }
        if (e != 'u') {
            j->pos--;
            return jp_fail(j, "unknown escape");
        }
        unsigned cp, lo;
        int rc = jp_hex4(j, &cp);
        if (rc < 0)
            return rc;
        if (cp >= 0xdc00 && cp <= 0xdfff)
            return jp_fail(j, "a lone low surrogate escape");
        if (cp >= 0xd800 && cp <= 0xdbff) {
            if (j->len - j->pos < 2 || j->s[j->pos] != '\\' || j->s[j->pos + 1] != 'u')
                return jp_fail(j, "a high surrogate escape without its low half");
            j->pos += 2;
            rc = jp_hex4(j, &lo);
            if (rc < 0)
                return rc;
            if (lo < 0xdc00 || lo > 0xdfff)
                return jp_fail(j, "a high surrogate escape without its low half");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        if (cp == 0)
            return jp_fail(j, "a NUL character (\\u0000) in a string");
        char *d = o + (j->used - start);
        if (cp < 0x80) {
            d[0] = (char)cp;
            j->used += 1;
        } else if (cp < 0x800) {
            d[0] = (char)(0xc0 | (cp >> 6));
            d[1] = (char)(0x80 | (cp & 0x3f));
            j->used += 2;
        } else if (cp < 0x10000) {
            d[0] = (char)(0xe0 | (cp >> 12));
            d[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
            d[2] = (char)(0x80 | (cp & 0x3f));
            j->used += 3;
        } else {
            d[0] = (char)(0xf0 | (cp >> 18));
            d[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
            d[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
            d[3] = (char)(0x80 | (cp & 0x3f));
            j->used += 4;
        }
    }
    j->pool[j->used] = '\0';
    if (!names_utf8_valid(o, j->used - start))
        return err_set(j->err, j->errlen, -EINVAL,
                       "header: the string ending at byte %zu is not valid UTF-8", j->pos);
    j->used++;
    *out = o;
    return 0;
}

/* A non-negative integer without sign, fraction, exponent or leading zeros, below 2^64. */
static int jp_uint(struct jp *j, uint64_t *out)
{
    uint64_t v = 0;
    size_t start;

    jp_ws(j);
    start = j->pos;
    while (j->pos < j->len && j->s[j->pos] >= '0' && j->s[j->pos] <= '9') {
        if (__builtin_mul_overflow(v, 10, &v) ||
            __builtin_add_overflow(v, (uint64_t)(j->s[j->pos] - '0'), &v)) {
            j->pos = start;
            return jp_fail(j, "an integer of 2^64 or more");
        }
        j->pos++;
    }
    if (j->pos == start)
        return jp_fail(j, "expected a non-negative integer");
    if (j->s[start] == '0' && j->pos - start > 1) {
        j->pos = start;
        return jp_fail(j, "an integer with a leading zero");
    }
    if (j->pos < j->len && (j->s[j->pos] == '.' || j->s[j->pos] == 'e' || j->s[j->pos] == 'E'))
        return jp_fail(j, "expected an integer, not a fraction or exponent");
    *out = v;
    return 0;
}

/* '[' integers ']' into v[0..max); *n their count. */
static int jp_uint_array(struct jp *j, uint64_t *v, unsigned max, unsigned *n, const char *what)
{
    char msg[96];
    int rc;

    *n = 0;
    rc = jp_expect(j, '[', what);
    if (rc < 0 || jp_accept(j, ']'))
        return rc;
    do {
        if (*n == max) {
            snprintf(msg, sizeof(msg), "more than %u entries in %s", max, what);
            return jp_fail(j, msg);
        }
        rc = jp_uint(j, &v[(*n)++]);
        if (rc < 0)
            return rc;
    } while (jp_accept(j, ','));
    return jp_expect(j, ']', "expected ',' or ']'");
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 16;
    void *q = realloc(*p, c * elem);
    if (q == NULL)
        return -ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

static int jp_tensor(struct jp *j, struct st_tensor *t)
{
    char q[QBUF], q2[QBUF];
    bool has_dtype = false, has_shape = false, has_offsets = false;
    const char *key, *dt;
    uint64_t offs[2];
    unsigned n;
    int rc;

    rc = jp_expect(j, '{', "expected '{' (a tensor's entry)");
    if (rc < 0)
        return rc;
    if (!jp_accept(j, '}')) {
        do {
            size_t at = j->pos;
            rc = jp_string(j, &key);
            rc = rc ?: jp_expect(j, ':', "expected ':'");
            if (rc < 0)
                return rc;
            if (strcmp(key, "dtype") == 0 && !has_dtype) {
                has_dtype = true;
                rc = jp_string(j, &dt);
                if (rc == 0 && st_dtype_from_name(dt, &t->dtype) < 0)
                    rc = err_set(j->err, j->errlen, -EINVAL,
                                 "tensor %s: dtype %s is not one emad handles (F64, F32, F16, "
                                 "BF16, I64, I32, I16, I8, U8, BOOL)",
                                 quote(q, sizeof(q), t->name), quote(q2, sizeof(q2), dt));
            } else if (strcmp(key, "shape") == 0 && !has_shape) {
                has_shape = true;
                rc = jp_uint_array(j, t->shape, ST_RANK_MAX, &t->rank, "a shape");
            } else if (strcmp(key, "data_offsets") == 0 && !has_offsets) {
                has_offsets = true;
                rc = jp_uint_array(j, offs, 2, &n, "data_offsets");
                if (rc == 0 && n != 2)
                    rc = err_set(j->err, j->errlen, -EINVAL,
                                 "tensor %s: data_offsets has %u entries, not 2",
                                 quote(q, sizeof(q), t->name), n);
                t->begin = offs[0];
                t->end = offs[1];
            } else {
                j->pos = at;
                rc = err_set(j->err, j->errlen, -EINVAL,
                             "tensor %s: key %s is unknown or repeated (a tensor has dtype, "
                             "shape and data_offsets, once each)",
                             quote(q, sizeof(q), t->name), quote(q2, sizeof(q2), key));
            }
            if (rc < 0)
                return rc;
        } while (jp_accept(j, ','));
        rc = jp_expect(j, '}', "expected ',' or '}'");
        if (rc < 0)
            return rc;
    }
    if (!has_dtype || !has_shape || !has_offsets)
        return err_set(j->err, j->errlen, -EINVAL, "tensor %s: no %s",
                       quote(q, sizeof(q), t->name),
                       !has_dtype ? "dtype" : !has_shape ? "shape" : "data_offsets");
    return 0;
}

static int jp_meta(struct jp *j, struct st_header *h, size_t *cap)
{
    int rc = jp_expect(j, '{', "expected '{' (the __metadata__ map)");

    if (rc < 0 || jp_accept(j, '}'))
        return rc;
    do {
        if (grow((void **)&h->meta, cap, h->nmeta + 1, sizeof(*h->meta)) < 0)
            return err_set(j->err, j->errlen, -ENOMEM, "out of memory");
        struct st_meta *m = &h->meta[h->nmeta];
        rc = jp_string(j, &m->key);
        rc = rc ?: jp_expect(j, ':', "expected ':'");
        if (rc < 0)
            return rc;
        jp_ws(j);
        if (j->pos < j->len && j->s[j->pos] != '"')
            return jp_fail(j, "expected a string (metadata values are strings)");
        rc = jp_string(j, &m->value);
        if (rc < 0)
            return rc;
        h->nmeta++;
    } while (jp_accept(j, ','));
    return jp_expect(j, '}', "expected ',' or '}'");
}

static int cmp_offsets(const void *a, const void *b)
{
    const struct st_tensor *x = a, *y = b;

    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

/* qsort has no context argument: sort (name, index) pairs instead of indices. */
struct by_name {
    const char *name;
    size_t i;
};

static int cmp_by_name(const void *a, const void *b)
{
    return strcmp(((const struct by_name *)a)->name, ((const struct by_name *)b)->name);
}

/* Sizes, offsets and names of the parsed tensors; sorts them into data order. */
static int validate(struct st_header *h, uint64_t data_size, char *err, size_t errlen)
{
    char q[QBUF];
    struct by_name *bn;
    const char **keys;
    uint64_t at = 0;
    int rc = 0;

    for (size_t i = 0; i < h->ntensors; i++) {
        struct st_tensor *t = &h->tensors[i];
        uint64_t bytes;
        if (t->end < t->begin)
            return err_set(err, errlen, -EINVAL,
                           "tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] end before they "
                           "begin", quote(q, sizeof(q), t->name), t->begin, t->end);
        if (!st_bytes(t, &bytes))
            return err_set(err, errlen, -EINVAL, "tensor %s: its shape's size overflows 64 bits",
                           quote(q, sizeof(q), t->name));
        if (bytes != t->end - t->begin)
            return err_set(err, errlen, -EINVAL,
                           "tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                           " bytes, its shape and dtype %s need %" PRIu64,
                           quote(q, sizeof(q), t->name), t->begin, t->end, t->end - t->begin,
                           st_dtype_name(t->dtype), bytes);
    }
    if (h->ntensors > 1) /* qsort may not be given NULL, as an empty table's array is */
        qsort(h->tensors, h->ntensors, sizeof(*h->tensors), cmp_offsets);
    for (size_t i = 0; i < h->ntensors; i++) {
        const struct st_tensor *t = &h->tensors[i];
        if (t->begin != at)
            return err_set(err, errlen, -EINVAL,
                           "tensor %s: its data begins at %" PRIu64 ", the previous tensor's "
                           "ends at %" PRIu64 " (%s)",
                           quote(q, sizeof(q), t->name), t->begin, at,
                           t->begin > at ? "a gap" : "they overlap");
        at = t->end;
    }
    if (at != data_size)
        return err_set(err, errlen, -EINVAL,
                       "the tensors hold %" PRIu64 " bytes of data, the file has %" PRIu64
                       " after the header", at, data_size);
    bn = malloc(h->ntensors * sizeof(*bn) + 1);
    h->by_name = malloc(h->ntensors * sizeof(*h->by_name) + 1);
    keys = malloc(h->nmeta * sizeof(*keys) + 1);
    if (bn == NULL || h->by_name == NULL || keys == NULL) {
        rc = err_set(err, errlen, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < h->ntensors; i++)
        bn[i] = (struct by_name){h->tensors[i].name, i};
    if (h->ntensors > 1)
        qsort(bn, h->ntensors, sizeof(*bn), cmp_by_name);
    for (size_t i = 0; i < h->ntensors; i++) {
        h->by_name[i] = bn[i].i;
        if (i > 0 && strcmp(bn[i - 1].name, bn[i].name) == 0) {
            rc = err_set(err, errlen, -EINVAL, "tensor %s appears twice",
                         quote(q, sizeof(q), bn[i].name));
            goto out;
        }
    }
    for (size_t i = 0; i < h->nmeta; i++)
        keys[i] = h->meta[i].key;
    rc = check_unique(keys, h->nmeta, "metadata key", err, errlen);
out:
    free(bn);
    free(keys);
    return rc;
}

void st_header_free(struct st_header *h)
{
    free(h->tensors);
    free(h->meta);
    free(h->by_name);
    free(h->pool);
    memset(h, 0, sizeof(*h));
}

int st_header_parse(const char *json, size_t len, uint64_t data_size, struct st_header *h,
                    char *err, size_t errlen)
{
    struct jp j = {.s = json, .len = len, .err = err, .errlen = errlen};
    size_t tcap = 0, mcap = 0;
    bool has_meta = false;
    const char *key;
    int rc;

    memset(h, 0, sizeof(*h));
    if (len > ST_HEADER_MAX)
        return err_set(err, errlen, -EFBIG, "header of %zu bytes, more than %u", len,
                       ST_HEADER_MAX);
    h->pool = malloc(len + 1);
    if (h->pool == NULL)
        return err_set(err, errlen, -ENOMEM, "out of memory for a header of %zu bytes", len);
    j.pool = h->pool;
    /* Current writers start the object at the first byte; leading spaces are no JSON error but
     * the format's own reader rejects them, so this one does too. */
    if (len == 0 || json[0] != '{') {
        rc = jp_fail(&j, "the header must start with '{'");
        goto fail;
    }
    j.pos = 1;
    if (!jp_accept(&j, '}')) {
        do {
            rc = jp_string(&j, &key);
            rc = rc ?: jp_expect(&j, ':', "expected ':'");
            if (rc < 0)
                goto fail;
            if (strcmp(key, "__metadata__") == 0) {
                if (has_meta) {
                    rc = err_set(err, errlen, -EINVAL, "header: __metadata__ appears twice");
                    goto fail;
                }
                has_meta = true;
                rc = jp_meta(&j, h, &mcap);
            } else if (key[0] == '\0') {
                rc = err_set(err, errlen, -EINVAL, "header: a tensor with an empty name");
            } else if (grow((void **)&h->tensors, &tcap, h->ntensors + 1,
                            sizeof(*h->tensors)) < 0) {
                rc = err_set(err, errlen, -ENOMEM, "out of memory");
            } else {
                struct st_tensor *t = &h->tensors[h->ntensors++];
                memset(t, 0, sizeof(*t));
                t->name = key;
                rc = jp_tensor(&j, t);
            }
            if (rc < 0)
                goto fail;
        } while (jp_accept(&j, ','));
        rc = jp_expect(&j, '}', "expected ',' or '}'");
        if (rc < 0)
            goto fail;
    }
    jp_ws(&j);
    if (j.pos != j.len) {
        rc = jp_fail(&j, "only spaces may follow the header's object");
        goto fail;
    }
    rc = validate(h, data_size, err, errlen);
    if (rc < 0)
        goto fail;
    return 0;
fail:
    st_header_free(h);
    return rc;
}

const struct st_tensor *st_find(const struct st_header *h, const char *name)
{
    size_t lo = 0, hi = h->ntensors;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct st_tensor *t = &h->tensors[h->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0)
            return t;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *st_meta_get(const struct st_header *h, const char *key)
{
    for (size_t i = 0; i < h->nmeta; i++)
        if (strcmp(h->meta[i].key, key) == 0)
            return h->meta[i].value;
    return NULL;
}

/* ---- Files --------------------------------------------------------------------------------- */

/* pread all of len bytes at off: 0, -errno, or -EIO if the file ends first. */
static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    unsigned char *p = buf;

    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        p += (size_t)n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int st_open_fd(struct st_file *f, int fd, const char *label, char *err, size_t errlen)
{
    unsigned char len8[8];
    struct stat st;
    uint64_t hlen = 0;
    char *json = NULL;
    char msg[512];
    int rc;

    memset(f, 0, sizeof(*f));
    f->fd = -1;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        err_set(err, errlen, rc, "%s: fstat failed: %s", label, strerror(-rc));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = err_set(err, errlen, -EINVAL, "%s: not a regular file", label);
        goto fail;
    }
    f->size = (uint64_t)st.st_size;
    if (f->size < 8) {
        rc = err_set(err, errlen, -EINVAL,
                     "%s: %" PRIu64 " bytes, too short for a safetensors file (8 at least)",
                     label, f->size);
        goto fail;
    }
    rc = pread_full(fd, len8, 8, 0);
    if (rc < 0) {
        err_set(err, errlen, rc, "%s: cannot read: %s", label, strerror(-rc));
        goto fail;
    }
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | len8[i];
    if (hlen > ST_HEADER_MAX || hlen > f->size - 8) {
        rc = err_set(err, errlen, -EINVAL,
                     "%s: the header length %" PRIu64 " is %s (the file has %" PRIu64
                     " bytes; readers accept headers up to %u); not a safetensors file?",
                     label, hlen, hlen > f->size - 8 ? "past the end of the file" : "too large",
                     f->size, ST_HEADER_MAX);
        goto fail;
    }
    json = malloc(hlen + 1);
    if (json == NULL) {
        rc = err_set(err, errlen, -ENOMEM, "%s: out of memory", label);
        goto fail;
    }
    rc = pread_full(fd, json, hlen, 8);
    if (rc < 0) {
        err_set(err, errlen, rc, "%s: cannot read the header: %s", label, strerror(-rc));
        goto fail;
    }
    rc = st_header_parse(json, hlen, f->size - 8 - hlen, &f->h, msg, sizeof(msg));
    if (rc < 0) {
        err_set(err, errlen, rc, "%s: %s", label, msg);
        goto fail;
    }
    free(json);
    f->fd = fd;
    f->data_start = 8 + hlen;
    return 0;
fail:
    free(json);
    close(fd);
    return rc;
}

int st_open(struct st_file *f, const char *path, char *err, size_t errlen)
{
    /* O_NONBLOCK: opening a FIFO must not wait for a writer (st_open_fd then rejects it). */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);

    if (fd < 0) {
        int rc = -errno;
        memset(f, 0, sizeof(*f));
        f->fd = -1;
        return err_set(err, errlen, rc, "%s: cannot open: %s", path, strerror(-rc));
    }
    return st_open_fd(f, fd, path, err, errlen);
}

int st_read(const struct st_file *f, const struct st_tensor *t, uint64_t off, void *buf,
            size_t len, char *err, size_t errlen)
{
    char q[QBUF];
    int rc;

    if (off > t->end - t->begin || len > t->end - t->begin - off)
        return err_set(err, errlen, -EINVAL,
                       "tensor %s: bytes [%" PRIu64 ", +%zu) are past its %" PRIu64,
                       quote(q, sizeof(q), t->name), off, len, t->end - t->begin);
    rc = pread_full(f->fd, buf, len, f->data_start + t->begin + off);
    if (rc < 0)
        return err_set(err, errlen, rc, "tensor %s: read failed: %s%s",
                       quote(q, sizeof(q), t->name), strerror(-rc),
                       rc == -EIO ? " (did the file shrink?)" : "");
    return 0;
}

void st_close(struct st_file *f)
{
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    st_header_free(&f->h);
}
