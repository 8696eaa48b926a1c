/*
 * test_wire.c - the msgpack-rpc framing of docs/protocol.md "Framing" and "Limits".
 *
 * The decoder is driven the way a connection drives it: bytes merged into one read, split into
 * single bytes, cut at every length, fed through reserve/commit. Every limit is hit from both
 * sides, every fault is checked for whether the sender can be answered (has_msgid) or the
 * connection must close, and deterministic random garbage and mutations of valid messages check
 * that no input crashes the decoder or makes it allocate from a declared length. The envelope
 * encoders are checked by decoding what they produce; the socket path rule on its own.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define READ_SLACK (256u << 10) /* wire.c's allowance beyond one message */

/* ---- Helpers ----------------------------------------------------------------------------- */

/* splitmix64: small, deterministic; every test seeds its own so a failure reproduces. */
static uint64_t rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t rng_below(uint64_t *state, size_t n)
{
    return (size_t)(rng_next(state) % n);
}

/* Hand-built bytes, for encodings msgpack-c's packer never chooses (wide headers for small
 * values, reserved bytes, truncated or lying headers). */
struct bytes {
    uint8_t *p;
    size_t len, cap;
};

static uint8_t *b_grow(struct bytes *b, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    b->len += n;
    return b->p + b->len - n;
}

static void b_put(struct bytes *b, const void *src, size_t n)
{
    uint8_t *dst = b_grow(b, n);
    if (n > 0)
        memcpy(dst, src, n);
}

static void b_u8(struct bytes *b, uint8_t v)
{
    b_put(b, &v, 1);
}

static void b_be(struct bytes *b, uint64_t v, unsigned n)
{
    for (unsigned i = n; i-- > 0;)
        b_u8(b, (uint8_t)(v >> (8 * i)));
}

static void b_fill(struct bytes *b, uint8_t v, size_t n)
{
    memset(b_grow(b, n), v, n);
}

static void b_pattern(struct bytes *b, size_t n)
{
    uint8_t *dst = b_grow(b, n);
    for (size_t i = 0; i < n; i++)
        dst[i] = (uint8_t)('a' + i % 26);
}

static void b_fixstr(struct bytes *b, const char *s)
{
    size_t n = strlen(s);
    assert_true(n < 32);
    b_u8(b, (uint8_t)(0xa0 | n));
    b_put(b, s, n);
}

static void b_free(struct bytes *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* Messages through the real encoders. Each appends to sb. */

/* [0, msgid, method, [{"session": "s1"}]]; pad > 0 adds "blob": <pad bytes of bin>. */
static void put_request(msgpack_sbuffer *sb, uint32_t msgid, const char *method, size_t pad)
{
    msgpack_packer pk;

    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, msgid, method);
    msgpack_pack_map(&pk, pad > 0 ? 2 : 1);
    wire_pack_str(&pk, "session");
    wire_pack_str(&pk, "s1");
    if (pad > 0) {
        char *zeros = calloc(1, pad);
        assert_non_null(zeros);
        wire_pack_str(&pk, "blob");
        msgpack_pack_bin(&pk, pad);
        msgpack_pack_bin_body(&pk, zeros, pad);
        free(zeros);
    }
}

/* [1, msgid, nil, {"proto": 1, "server": "emad"}] */
static void put_response_ok(msgpack_sbuffer *sb, uint32_t msgid)
{
    msgpack_packer pk;

    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    wire_pack_response_head(&pk, msgid);
    msgpack_pack_map(&pk, 2);
    wire_pack_str(&pk, "proto");
    msgpack_pack_uint64(&pk, 1);
    wire_pack_str(&pk, "server");
    wire_pack_str(&pk, "emad");
}

/* [1, msgid, {"code": code, "message": message}, nil] */
static void put_response_error(msgpack_sbuffer *sb, uint32_t msgid, const char *code,
                               const char *message)
{
    msgpack_packer pk;

    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    wire_pack_response_error(&pk, msgid, code, message);
}

/* [2, method, [{"code": "LIMIT", "message": "too many connections"}]] */
static void put_notify(msgpack_sbuffer *sb, const char *method)
{
    msgpack_packer pk;

    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    wire_pack_notify_head(&pk, method);
    msgpack_pack_map(&pk, 2);
    wire_pack_str(&pk, "code");
    wire_pack_str(&pk, "LIMIT");
    wire_pack_str(&pk, "message");
    wire_pack_str(&pk, "too many connections");
}

/* A request nesting exactly `levels` arrays and maps: the envelope (1), the params array (2),
 * the params map (3), then arrays of one element each, down to an integer. */
static void put_nested_request(struct bytes *b, uint32_t msgid, unsigned levels)
{
    assert_true(levels >= 3);
    b_u8(b, 0x94);
    b_u8(b, 0x00);
    b_u8(b, 0xce);
    b_be(b, msgid, 4);
    b_fixstr(b, "deep");
    b_u8(b, 0x91);
    b_u8(b, 0x81);
    b_fixstr(b, "a");
    for (unsigned i = 3; i < levels; i++)
        b_u8(b, 0x91);
    b_u8(b, 0x01);
}

#define EVERY_TYPE_MSGID 77u
#define EVERY_TYPE_ENTRIES 41u

/* [0, 77, "types", [{...}]] whose params map (itself a map16) holds every msgpack format once,
 * in a width the packer would not pick where there is a choice. big stretches the 16- and
 * 32-bit str, bin and ext payloads past what a narrower header could hold. */
static void put_every_type_request(struct bytes *b, bool big)
{
    size_t wide16 = big ? 300 : 3, wide32 = big ? 70000 : 4;

    b_u8(b, 0x94);
    b_u8(b, 0x00);
    b_u8(b, EVERY_TYPE_MSGID);
    b_fixstr(b, "types");
    b_u8(b, 0x91);
    b_u8(b, 0xde);
    b_be(b, EVERY_TYPE_ENTRIES, 2);

    b_fixstr(b, "nil");
    b_u8(b, 0xc0);
    b_fixstr(b, "true");
    b_u8(b, 0xc3);
    b_fixstr(b, "false");
    b_u8(b, 0xc2);
    b_fixstr(b, "posfix");
    b_u8(b, 0x7f);
    b_fixstr(b, "negfix");
    b_u8(b, 0xe0);
    b_fixstr(b, "int8");
    b_u8(b, 0xd0);
    b_be(b, (uint8_t)-128, 1);
    b_fixstr(b, "int16");
    b_u8(b, 0xd1);
    b_be(b, (uint16_t)-300, 2);
    b_fixstr(b, "int32");
    b_u8(b, 0xd2);
    b_be(b, (uint32_t)-70000, 4);
    b_fixstr(b, "int64");
    b_u8(b, 0xd3);
    b_be(b, (uint64_t)INT64_MIN, 8);
    b_fixstr(b, "int8pos");
    b_u8(b, 0xd0);
    b_be(b, 5, 1);
    b_fixstr(b, "uint8");
    b_u8(b, 0xcc);
    b_be(b, 0xff, 1);
    b_fixstr(b, "uint16");
    b_u8(b, 0xcd);
    b_be(b, 0xffff, 2);
    b_fixstr(b, "uint32");
    b_u8(b, 0xce);
    b_be(b, 0xffffffffu, 4);
    b_fixstr(b, "uint64");
    b_u8(b, 0xcf);
    b_be(b, UINT64_MAX, 8);
    b_fixstr(b, "float32");
    b_u8(b, 0xca);
    b_be(b, 0x3fc00000u, 4); /* 1.5f */
    b_fixstr(b, "float64");
    b_u8(b, 0xcb);
    b_be(b, 0xc002000000000000ull, 8); /* -2.25 */
    b_fixstr(b, "fixstr");
    b_fixstr(b, "hello");
    b_fixstr(b, "str8");
    b_u8(b, 0xd9);
    b_be(b, 40, 1);
    b_pattern(b, 40);
    b_fixstr(b, "str16");
    b_u8(b, 0xda);
    b_be(b, wide16, 2);
    b_pattern(b, wide16);
    b_fixstr(b, "str32");
    b_u8(b, 0xdb);
    b_be(b, wide32, 4);
    b_pattern(b, wide32);
    b_fixstr(b, "bin8");
    b_u8(b, 0xc4);
    b_be(b, 3, 1);
    b_pattern(b, 3);
    b_fixstr(b, "bin16");
    b_u8(b, 0xc5);
    b_be(b, wide16, 2);
    b_pattern(b, wide16);
    b_fixstr(b, "bin32");
    b_u8(b, 0xc6);
    b_be(b, wide32, 4);
    b_pattern(b, wide32);
    b_fixstr(b, "fixext1");
    b_u8(b, 0xd4);
    b_u8(b, 1);
    b_pattern(b, 1);
    b_fixstr(b, "fixext2");
    b_u8(b, 0xd5);
    b_u8(b, 2);
    b_pattern(b, 2);
    b_fixstr(b, "fixext4");
    b_u8(b, 0xd6);
    b_u8(b, 4);
    b_pattern(b, 4);
    b_fixstr(b, "fixext8");
    b_u8(b, 0xd7);
    b_u8(b, 8);
    b_pattern(b, 8);
    b_fixstr(b, "fixext16");
    b_u8(b, 0xd8);
    b_u8(b, 16);
    b_pattern(b, 16);
    b_fixstr(b, "ext8");
    b_u8(b, 0xc7);
    b_be(b, 3, 1);
    b_u8(b, 0x7f);
    b_pattern(b, 3);
    b_fixstr(b, "ext16");
    b_u8(b, 0xc8);
    b_be(b, wide16, 2);
    b_u8(b, 0x80); /* type -128 */
    b_pattern(b, wide16);
    b_fixstr(b, "ext32");
    b_u8(b, 0xc9);
    b_be(b, wide32, 4);
    b_u8(b, 32);
    b_pattern(b, wide32);
    b_fixstr(b, "fixarray");
    b_u8(b, 0x93);
    b_u8(b, 0x01);
    b_u8(b, 0xc0);
    b_fixstr(b, "x");
    b_fixstr(b, "array16");
    b_u8(b, 0xdc);
    b_be(b, 2, 2);
    b_u8(b, 0xc2);
    b_u8(b, 0xc3);
    b_fixstr(b, "array32");
    b_u8(b, 0xdd);
    b_be(b, 1, 4);
    b_u8(b, 0x2a);
    b_fixstr(b, "fixmap");
    b_u8(b, 0x81);
    b_fixstr(b, "a");
    b_u8(b, 0x01);
    b_fixstr(b, "map16");
    b_u8(b, 0xde);
    b_be(b, 1, 2);
    b_fixstr(b, "b");
    b_u8(b, 0x02);
    b_fixstr(b, "map32");
    b_u8(b, 0xdf);
    b_be(b, 1, 4);
    b_fixstr(b, "c");
    b_u8(b, 0x03);
    b_fixstr(b, "emptystr");
    b_u8(b, 0xa0);
    b_fixstr(b, "emptybin");
    b_u8(b, 0xc4);
    b_u8(b, 0x00);
    b_fixstr(b, "emptyarr");
    b_u8(b, 0x90);
    b_fixstr(b, "emptymap");
    b_u8(b, 0x80);
}

static bool obj_str_eq(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           (n == 0 || memcmp(o->via.str.ptr, s, n) == 0);
}

static const msgpack_object *map_get(const msgpack_object *map, const char *key)
{
    assert_int_equal(map->type, MSGPACK_OBJECT_MAP);
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (obj_str_eq(&map->via.map.ptr[i].key, key))
            return &map->via.map.ptr[i].val;
    fail_msg("map has no key \"%s\"", key);
    return NULL;
}

static bool payload_is_pattern(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((uint8_t)p[i] != (uint8_t)('a' + i % 26))
            return false;
    return true;
}

/* Check the params of put_every_type_request() value by value. */
static void check_every_type(const msgpack_object *params, bool big)
{
    const msgpack_object *v;

    assert_int_equal(params->type, MSGPACK_OBJECT_MAP);
    assert_int_equal(params->via.map.size, EVERY_TYPE_ENTRIES);

    assert_int_equal(map_get(params, "nil")->type, MSGPACK_OBJECT_NIL);
    v = map_get(params, "true");
    assert_int_equal(v->type, MSGPACK_OBJECT_BOOLEAN);
    assert_true(v->via.boolean);
    v = map_get(params, "false");
    assert_int_equal(v->type, MSGPACK_OBJECT_BOOLEAN);
    assert_false(v->via.boolean);

    v = map_get(params, "posfix");
    assert_int_equal(v->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(v->via.u64, 127);
    v = map_get(params, "negfix");
    assert_int_equal(v->type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
    assert_int_equal(v->via.i64, -32);
    v = map_get(params, "int8");
    assert_int_equal(v->type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
    assert_int_equal(v->via.i64, -128);
    v = map_get(params, "int16");
    assert_int_equal(v->type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
    assert_int_equal(v->via.i64, -300);
    v = map_get(params, "int32");
    assert_int_equal(v->type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
    assert_int_equal(v->via.i64, -70000);
    v = map_get(params, "int64");
    assert_int_equal(v->type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
    assert_true(v->via.i64 == INT64_MIN);
    v = map_get(params, "int8pos");
    assert_int_equal(v->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(v->via.u64, 5);
    v = map_get(params, "uint8");
    assert_int_equal(v->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(v->via.u64, 0xff);
    v = map_get(params, "uint16");
    assert_int_equal(v->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(v->via.u64, 0xffff);
    v = map_get(params, "uint32");
    assert_int_equal(v->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(v->via.u64, 0xffffffffu);
    v = map_get(params, "uint64");
    assert_int_equal(v->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_true(v->via.u64 == UINT64_MAX);

    v = map_get(params, "float32");
    assert_int_equal(v->type, MSGPACK_OBJECT_FLOAT32);
    assert_true(v->via.f64 == 1.5);
    v = map_get(params, "float64");
    assert_int_equal(v->type, MSGPACK_OBJECT_FLOAT64);
    assert_true(v->via.f64 == -2.25);

    assert_true(obj_str_eq(map_get(params, "fixstr"), "hello"));
    static const struct {
        const char *key;
        msgpack_object_type type;
        size_t small, large;
    } payloads[] = {
        {"str8", MSGPACK_OBJECT_STR, 40, 40},   {"str16", MSGPACK_OBJECT_STR, 3, 300},
        {"str32", MSGPACK_OBJECT_STR, 4, 70000}, {"bin8", MSGPACK_OBJECT_BIN, 3, 3},
        {"bin16", MSGPACK_OBJECT_BIN, 3, 300},  {"bin32", MSGPACK_OBJECT_BIN, 4, 70000},
    };
    for (size_t i = 0; i < ARRAY_LEN(payloads); i++) {
        size_t n = big ? payloads[i].large : payloads[i].small;
        v = map_get(params, payloads[i].key);
        assert_int_equal(v->type, payloads[i].type);
        if (v->type == MSGPACK_OBJECT_STR) {
            assert_int_equal(v->via.str.size, n);
            assert_true(payload_is_pattern(v->via.str.ptr, n));
        } else {
            assert_int_equal(v->via.bin.size, n);
            assert_true(payload_is_pattern(v->via.bin.ptr, n));
        }
    }

    static const struct {
        const char *key;
        int8_t type;
        size_t small, large;
    } exts[] = {
        {"fixext1", 1, 1, 1},   {"fixext2", 2, 2, 2},       {"fixext4", 4, 4, 4},
        {"fixext8", 8, 8, 8},   {"fixext16", 16, 16, 16},   {"ext8", 0x7f, 3, 3},
        {"ext16", -128, 3, 300}, {"ext32", 32, 4, 70000},
    };
    for (size_t i = 0; i < ARRAY_LEN(exts); i++) {
        size_t n = big ? exts[i].large : exts[i].small;
        v = map_get(params, exts[i].key);
        assert_int_equal(v->type, MSGPACK_OBJECT_EXT);
        assert_int_equal(v->via.ext.type, exts[i].type);
        assert_int_equal(v->via.ext.size, n);
        assert_true(payload_is_pattern(v->via.ext.ptr, n));
    }

    v = map_get(params, "fixarray");
    assert_int_equal(v->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(v->via.array.size, 3);
    assert_int_equal(v->via.array.ptr[0].via.u64, 1);
    assert_int_equal(v->via.array.ptr[1].type, MSGPACK_OBJECT_NIL);
    assert_true(obj_str_eq(&v->via.array.ptr[2], "x"));
    v = map_get(params, "array16");
    assert_int_equal(v->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(v->via.array.size, 2);
    assert_false(v->via.array.ptr[0].via.boolean);
    assert_true(v->via.array.ptr[1].via.boolean);
    v = map_get(params, "array32");
    assert_int_equal(v->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(v->via.array.size, 1);
    assert_int_equal(v->via.array.ptr[0].via.u64, 42);
    assert_int_equal(map_get(map_get(params, "fixmap"), "a")->via.u64, 1);
    assert_int_equal(map_get(map_get(params, "map16"), "b")->via.u64, 2);
    assert_int_equal(map_get(map_get(params, "map32"), "c")->via.u64, 3);

    assert_true(obj_str_eq(map_get(params, "emptystr"), ""));
    v = map_get(params, "emptybin");
    assert_int_equal(v->type, MSGPACK_OBJECT_BIN);
    assert_int_equal(v->via.bin.size, 0);
    v = map_get(params, "emptyarr");
    assert_int_equal(v->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(v->via.array.size, 0);
    v = map_get(params, "emptymap");
    assert_int_equal(v->type, MSGPACK_OBJECT_MAP);
    assert_int_equal(v->via.map.size, 0);
}

/* ---- Decoder plumbing --------------------------------------------------------------------- */

static void dec_init(struct wire_decoder *d, size_t max_message, unsigned max_depth)
{
    assert_int_equal(wire_decoder_init(d, max_message, max_depth), 0);
}

static void feed(struct wire_decoder *d, const void *p, size_t n)
{
    assert_int_equal(wire_decoder_feed(d, p, n), 0);
}

/* wire_decoder_next(), with every promise of wire.h checked whatever the result. */
static int next_checked(struct wire_decoder *d, struct wire_msg *m, struct wire_fault *f)
{
    int rc = wire_decoder_next(d, m, f);

    if (rc == 1) {
        assert_true(m->bytes > 0);
        switch (m->kind) {
        case WIRE_REQUEST:
        case WIRE_NOTIFY:
            assert_non_null(m->method);
            assert_non_null(m->params);
            assert_int_equal(m->params->type, MSGPACK_OBJECT_MAP);
            assert_null(m->error);
            assert_null(m->result);
            break;
        case WIRE_RESPONSE:
            assert_non_null(m->error);
            assert_non_null(m->result);
            assert_null(m->method);
            assert_null(m->params);
            break;
        default:
            fail_msg("message of kind %d", (int)m->kind);
        }
    } else if (rc == -1) {
        assert_true(f->code == -EMSGSIZE || f->code == -EPROTO || f->code == -EBADMSG ||
                    f->code == -ELOOP);
        assert_true(f->detail[0] != '\0');
        assert_non_null(memchr(f->detail, '\0', sizeof(f->detail)));
        if (f->has_msgid)
            assert_true(f->code == -EMSGSIZE || f->code == -EPROTO);
    } else if (rc != 0) {
        fail_msg("wire_decoder_next returned %d", rc);
    }
    return rc;
}

static void expect_message(struct wire_decoder *d, struct wire_msg *m)
{
    struct wire_fault f;
    int rc = next_checked(d, m, &f);

    if (rc != 1)
        fail_msg("expected a message, got %d (fault %d: %s)", rc, rc < 0 ? f.code : 0,
                 rc < 0 ? f.detail : "");
}

static void expect_need_more(struct wire_decoder *d)
{
    struct wire_msg m;
    struct wire_fault f;
    int rc = next_checked(d, &m, &f);

    if (rc != 0)
        fail_msg("expected \"need more\", got %d (fault %d: %s)", rc, rc < 0 ? f.code : 0,
                 rc < 0 ? f.detail : "");
}

static struct wire_fault expect_fault(struct wire_decoder *d, int code, bool has_msgid,
                                      uint32_t msgid)
{
    struct wire_msg m;
    struct wire_fault f;
    int rc = next_checked(d, &m, &f);

    if (rc != -1)
        fail_msg("expected fault %d, got %d", code, rc);
    if (f.code != code)
        fail_msg("expected fault %d, got %d: %s", code, f.code, f.detail);
    assert_int_equal(f.has_msgid, has_msgid);
    if (has_msgid)
        assert_int_equal(f.msgid, msgid);
    return f;
}

/* A fatal fault: every later call faults too, even once a valid message has arrived. */
static void expect_stays_broken(struct wire_decoder *d)
{
    msgpack_sbuffer sb;

    msgpack_sbuffer_init(&sb);
    put_request(&sb, 1, "hello", 0);
    (void)wire_decoder_feed(d, sb.data, sb.size);
    for (int i = 0; i < 3; i++) {
        struct wire_msg m;
        struct wire_fault f;
        assert_int_equal(next_checked(d, &m, &f), -1);
        assert_false(f.has_msgid);
    }
    msgpack_sbuffer_destroy(&sb);
}

static void assert_method(const struct wire_msg *m, const char *method)
{
    assert_int_equal(m->method_len, strlen(method));
    assert_memory_equal(m->method, method, m->method_len);
}

/* The sample messages most tests run over: each envelope kind, and every msgpack format. */
struct sample {
    const char *name;
    struct bytes b;
    enum wire_kind kind;
};

static void samples_make(struct sample s[5])
{
    msgpack_sbuffer sb;

    memset(s, 0, 5 * sizeof(*s));
    msgpack_sbuffer_init(&sb);
    put_request(&sb, 0x12345678, "register", 40);
    s[0].name = "request";
    s[0].kind = WIRE_REQUEST;
    b_put(&s[0].b, sb.data, sb.size);
    msgpack_sbuffer_clear(&sb);
    put_response_ok(&sb, 70000);
    s[1].name = "response ok";
    s[1].kind = WIRE_RESPONSE;
    b_put(&s[1].b, sb.data, sb.size);
    msgpack_sbuffer_clear(&sb);
    put_response_error(&sb, 300, "BADARG", "tensors[2].dtype: missing");
    s[2].name = "response error";
    s[2].kind = WIRE_RESPONSE;
    b_put(&s[2].b, sb.data, sb.size);
    msgpack_sbuffer_clear(&sb);
    put_notify(&sb, "error");
    s[3].name = "notification";
    s[3].kind = WIRE_NOTIFY;
    b_put(&s[3].b, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    s[4].name = "every type";
    s[4].kind = WIRE_REQUEST;
    put_every_type_request(&s[4].b, false);
}

static void samples_free(struct sample s[5])
{
    for (int i = 0; i < 5; i++)
        b_free(&s[i].b);
}

/* ---- Envelopes ---------------------------------------------------------------------------- */

static void test_wire_request_round_trips_every_msgid_width(void **state)
{
    static const uint32_t ids[] = {0, 1, 127, 128, 255, 256, 65535, 65536, 0x7fffffffu,
                                   0xffffffffu};
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(ids); i++) {
        struct wire_decoder d;
        struct wire_msg m;
        msgpack_sbuffer sb;

        msgpack_sbuffer_init(&sb);
        put_request(&sb, ids[i], "register", 0);
        dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
        feed(&d, sb.data, sb.size);
        expect_message(&d, &m);
        assert_int_equal(m.kind, WIRE_REQUEST);
        assert_int_equal(m.msgid, ids[i]);
        assert_method(&m, "register");
        assert_int_equal(m.params->via.map.size, 1);
        assert_true(obj_str_eq(map_get(m.params, "session"), "s1"));
        assert_int_equal(m.bytes, sb.size);
        assert_int_equal(wire_decoder_pending(&d), 0);
        expect_need_more(&d);
        wire_decoder_free(&d);
        msgpack_sbuffer_destroy(&sb);
    }
}

static void test_wire_response_ok_round_trips(void **state)
{
    struct wire_decoder d;
    struct wire_msg m;
    msgpack_sbuffer sb;
    (void)state;

    msgpack_sbuffer_init(&sb);
    put_response_ok(&sb, 0xfffffffeu);
    dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
    feed(&d, sb.data, sb.size);
    expect_message(&d, &m);
    assert_int_equal(m.kind, WIRE_RESPONSE);
    assert_int_equal(m.msgid, 0xfffffffeu);
    assert_int_equal(m.error->type, MSGPACK_OBJECT_NIL);
    assert_int_equal(m.result->type, MSGPACK_OBJECT_MAP);
    assert_int_equal(map_get(m.result, "proto")->via.u64, 1);
    assert_true(obj_str_eq(map_get(m.result, "server"), "emad"));
    assert_int_equal(m.bytes, sb.size);
    expect_need_more(&d);
    wire_decoder_free(&d);
    msgpack_sbuffer_destroy(&sb);
}

static void test_wire_response_error_round_trips(void **state)
{
    struct wire_decoder d;
    struct wire_msg m;
    msgpack_sbuffer sb;
    (void)state;

    msgpack_sbuffer_init(&sb);
    put_response_error(&sb, 9, "BADARG", "register: tensor \"l1.weight\": dtype \"f8\"");
    dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
    feed(&d, sb.data, sb.size);
    expect_message(&d, &m);
    assert_int_equal(m.kind, WIRE_RESPONSE);
    assert_int_equal(m.msgid, 9);
    assert_int_equal(m.error->type, MSGPACK_OBJECT_MAP);
    assert_int_equal(m.error->via.map.size, 2);
    assert_true(obj_str_eq(map_get(m.error, "code"), "BADARG"));
    assert_true(
        obj_str_eq(map_get(m.error, "message"), "register: tensor \"l1.weight\": dtype \"f8\""));
    assert_int_equal(m.result->type, MSGPACK_OBJECT_NIL);
    assert_int_equal(m.bytes, sb.size);
    wire_decoder_free(&d);
    msgpack_sbuffer_destroy(&sb);
}

static void test_wire_notification_round_trips(void **state)
{
    struct wire_decoder d;
    struct wire_msg m;
    msgpack_sbuffer sb;
    (void)state;

    msgpack_sbuffer_init(&sb);
    put_notify(&sb, "error");
    dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
    feed(&d, sb.data, sb.size);
    expect_message(&d, &m);
    assert_int_equal(m.kind, WIRE_NOTIFY);
    assert_int_equal(m.msgid, 0);
    assert_method(&m, "error");
    assert_true(obj_str_eq(map_get(m.params, "code"), "LIMIT"));
    assert_true(obj_str_eq(map_get(m.params, "message"), "too many connections"));
    assert_int_equal(m.bytes, sb.size);
    wire_decoder_free(&d);
    msgpack_sbuffer_destroy(&sb);
}

/* A server frees the buffer a large request grew between requests, and
 * goes on decoding with the same decoder. */
static void test_wire_decoder_is_usable_again_after_free(void **state)
{
    struct wire_decoder d;
    struct wire_msg m;
    msgpack_sbuffer sb;
    (void)state;

    msgpack_sbuffer_init(&sb);
    put_request(&sb, 1, "event", 1 << 20);
    dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
    feed(&d, sb.data, sb.size);
    expect_message(&d, &m);
    assert_int_equal(m.msgid, 1);
    assert_true(d.cap >= (size_t)1 << 20);
    wire_decoder_free(&d);
    assert_null(d.buf);
    assert_int_equal(d.cap, 0);
    assert_int_equal(wire_decoder_pending(&d), 0);

    msgpack_sbuffer_clear(&sb);
    put_request(&sb, 2, "status", 0);
    feed(&d, sb.data, sb.size);
    expect_message(&d, &m);
    assert_int_equal(m.kind, WIRE_REQUEST);
    assert_int_equal(m.msgid, 2);
    assert_method(&m, "status");
    assert_true(d.cap < (size_t)1 << 20);
    wire_decoder_free(&d);
    msgpack_sbuffer_destroy(&sb);
}

static void test_wire_several_messages_in_one_feed_decode_in_order(void **state)
{
    struct wire_decoder d;
    struct wire_msg m;
    msgpack_sbuffer sb;
    (void)state;

    msgpack_sbuffer_init(&sb);
    put_request(&sb, 1, "hello", 0);
    put_notify(&sb, "error");
    put_response_ok(&sb, 2);
    put_request(&sb, 3, "event", 100);
    put_response_error(&sb, 4, "LIMIT", "too big");
    put_request(&sb, 5, "status", 0);
    dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
    feed(&d, sb.data, sb.size);

    size_t total = 0;
    expect_message(&d, &m);
    assert_int_equal(m.kind, WIRE_REQUEST);
    assert_int_equal(m.msgid, 1);
    assert_method(&m, "hello");
    total += m.bytes;
    expect_message(&d, &m);
    assert_int_equal(m.kind, WIRE_NOTIFY);
    assert_method(&m, "error");
    total += m.bytes;
    expect_message(&d, &m);
    assert_int_equal(m.kind, WIRE_RESPONSE);
    assert_int_equal(m.msgid, 2);
    total += m.bytes;
    expect_message(&d, &m);
    assert_int_equal(m.kind, WIRE_REQUEST);
    assert_int_equal(m.msgid, 3);
    assert_method(&m, "event");
    assert_int_equal(map_get(m.params, "blob")->via.bin.size, 100);
    total += m.bytes;
    expect_message(&d, &m);
    assert_int_equal(m.kind, WIRE_RESPONSE);
    assert_int_equal(m.msgid, 4);
    assert_true(obj_str_eq(map_get(m.error, "code"), "LIMIT"));
    total += m.bytes;
    expect_message(&d, &m);
    assert_int_equal(m.msgid, 5);
    assert_method(&m, "status");
    total += m.bytes;
    assert_int_equal(total, sb.size);
    assert_int_equal(wire_decoder_pending(&d), 0);
    expect_need_more(&d);
    wire_decoder_free(&d);
    msgpack_sbuffer_destroy(&sb);
}

/* A message whose tail arrives with the head of the next one. */
static void test_wire_message_split_across_feeds_with_the_next_one(void **state)
{
    struct wire_decoder d;
    struct wire_msg m;
    msgpack_sbuffer sb;
    (void)state;

    msgpack_sbuffer_init(&sb);
    put_request(&sb, 1, "event", 50);
    size_t first = sb.size;
    put_request(&sb, 2, "event", 50);
    dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
    feed(&d, sb.data, first - 10);
    expect_need_more(&d);
    feed(&d, sb.data + first - 10, 20);
    expect_message(&d, &m);
    assert_int_equal(m.msgid, 1);
    assert_int_equal(m.bytes, first);
    expect_need_more(&d);
    assert_int_equal(wire_decoder_pending(&d), 10);
    feed(&d, sb.data + first + 10, sb.size - first - 10);
    expect_message(&d, &m);
    assert_int_equal(m.msgid, 2);
    assert_int_equal(map_get(m.params, "blob")->via.bin.size, 50);
    wire_decoder_free(&d);
    msgpack_sbuffer_destroy(&sb);
}

static void test_wire_byte_at_a_time_yields_one_message_at_the_last_byte(void **state)
{
    struct sample s[5];
    (void)state;

    samples_make(s);
    for (int k = 0; k < 5; k++) {
        struct wire_decoder d;
        struct wire_msg m;

        dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
        for (size_t i = 0; i + 1 < s[k].b.len; i++) {
            feed(&d, s[k].b.p + i, 1);
            expect_need_more(&d);
            assert_int_equal(wire_decoder_pending(&d), i + 1);
        }
        feed(&d, s[k].b.p + s[k].b.len - 1, 1);
        expect_message(&d, &m);
        assert_int_equal(m.kind, s[k].kind);
        assert_int_equal(m.bytes, s[k].b.len);
        if (k == 4)
            check_every_type(m.params, false);
        expect_need_more(&d);
        wire_decoder_free(&d);
    }
    samples_free(s);
}

static void test_wire_truncated_message_only_needs_more_at_every_length(void **state)
{
    struct sample s[5];
    (void)state;

    samples_make(s);
    for (int k = 0; k < 5; k++) {
        for (size_t len = 0; len < s[k].b.len; len++) {
            struct wire_decoder d;
            struct wire_msg m;

            dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
            feed(&d, s[k].b.p, len);
            expect_need_more(&d);
            expect_need_more(&d); /* asking twice changes nothing */
            assert_int_equal(wire_decoder_pending(&d), len);
            /* The cut resumes cleanly wherever it fell: inside a header or a payload. */
            feed(&d, s[k].b.p + len, s[k].b.len - len);
            expect_message(&d, &m);
            assert_int_equal(m.bytes, s[k].b.len);
            wire_decoder_free(&d);
        }
    }
    samples_free(s);
}

static void test_wire_every_msgpack_type_inside_params_decodes(void **state)
{
    struct wire_decoder d;
    struct wire_msg m;
    struct bytes b = {0};
    (void)state;

    put_every_type_request(&b, true);
    dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
    feed(&d, b.p, b.len);
    expect_message(&d, &m);
    assert_int_equal(m.kind, WIRE_REQUEST);
    assert_int_equal(m.msgid, EVERY_TYPE_MSGID);
    assert_method(&m, "types");
    assert_int_equal(m.bytes, b.len);
    check_every_type(m.params, true);
    wire_decoder_free(&d);

    /* The same in 997-byte reads: long payloads and headers straddle the reads. */
    dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
    for (size_t off = 0; off < b.len; off += 997) {
        size_t n = b.len - off < 997 ? b.len - off : 997;
        feed(&d, b.p + off, n);
        if (off + n < b.len)
            expect_need_more(&d);
    }
    expect_message(&d, &m);
    check_every_type(m.params, true);
    wire_decoder_free(&d);
    b_free(&b);
}

static void test_wire_reserve_and_commit_read_in_place(void **state)
{
    struct wire_decoder d;
    struct wire_msg m;
    msgpack_sbuffer sb;
    size_t room;
    char *p;
    (void)state;

    msgpack_sbuffer_init(&sb);
    put_request(&sb, 11, "event", 10000);
    size_t first = sb.size;
    put_request(&sb, 12, "swap", 0);
    dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);

    /* As a socket read would: reserve a chunk, fill part of it, commit what was filled. */
    size_t off = 0;
    int got = 0;
    while (off < sb.size) {
        size_t n = sb.size - off < 3000 ? sb.size - off : 3000;
        p = wire_decoder_reserve(&d, 4096, &room);
        assert_non_null(p);
        assert_true(room >= 4096);
        memcpy(p, sb.data + off, n);
        wire_decoder_commit(&d, n);
        off += n;
        assert_int_equal(wire_decoder_pending(&d), off - (got ? first : 0));
        for (;;) {
            struct wire_fault f;
            int rc = next_checked(&d, &m, &f);
            if (rc == 0)
                break;
            assert_int_equal(rc, 1);
            got++;
            if (got == 1) {
                assert_int_equal(m.msgid, 11);
                assert_int_equal(map_get(m.params, "blob")->via.bin.size, 10000);
            } else {
                assert_int_equal(m.msgid, 12);
                assert_method(&m, "swap");
            }
        }
    }
    assert_int_equal(got, 2);
    assert_int_equal(wire_decoder_pending(&d), 0);

    /* A large reservation is honoured in one piece; committing nothing changes nothing. */
    p = wire_decoder_reserve(&d, 100000, &room);
    assert_non_null(p);
    assert_true(room >= 100000);
    wire_decoder_commit(&d, 0);
    expect_need_more(&d);
    wire_decoder_free(&d);
    msgpack_sbuffer_destroy(&sb);
}

static void test_wire_feed_beyond_the_buffer_bound_is_refused(void **state)
{
    struct wire_decoder d;
    char *junk = calloc(1, READ_SLACK + 1024);
    (void)state;

    assert_non_null(junk);
    /* A caller that never drains may buffer one message plus the slack, no more. */
    dec_init(&d, 64, WIRE_DEFAULT_MAX_DEPTH);
    assert_int_equal(wire_decoder_feed(&d, junk, READ_SLACK + 65), -EMSGSIZE);
    assert_int_equal(wire_decoder_pending(&d), 0);
    feed(&d, junk, READ_SLACK + 64);
    assert_int_equal(wire_decoder_feed(&d, junk, 1), -EMSGSIZE);
    assert_int_equal(wire_decoder_pending(&d), READ_SLACK + 64);
    assert_int_equal(wire_decoder_feed(&d, junk, 0), 0);
    wire_decoder_free(&d);
    free(junk);
}

static void test_wire_init_rejects_bad_limits(void **state)
{
    struct wire_decoder d;
    (void)state;

    assert_int_equal(wire_decoder_init(NULL, 1024, 8), -EINVAL);
    assert_int_equal(wire_decoder_init(&d, 0, 8), -EINVAL);
    assert_int_equal(wire_decoder_init(&d, 1024, 0), -EINVAL);
    assert_int_equal(wire_decoder_init(&d, 1024, WIRE_HARD_MAX_DEPTH), -EINVAL);
    assert_int_equal(wire_decoder_init(&d, 1024, WIRE_HARD_MAX_DEPTH - 1), 0);
    wire_decoder_free(&d);
    assert_int_equal(wire_decoder_init(&d, 1, 1), 0);
    expect_need_more(&d);
    wire_decoder_free(&d);
    wire_decoder_free(NULL);
}

/* ---- Limits ------------------------------------------------------------------------------- */

static void test_wire_message_of_exactly_max_message_is_accepted(void **state)
{
    msgpack_sbuffer sb;
    (void)state;

    msgpack_sbuffer_init(&sb);
    put_request(&sb, 21, "event", 1000);
    for (int extra = 0; extra <= 1; extra++) {
        struct wire_decoder d;
        struct wire_msg m;

        dec_init(&d, sb.size - (size_t)extra, WIRE_DEFAULT_MAX_DEPTH);
        feed(&d, sb.data, sb.size);
        if (extra == 0) {
            expect_message(&d, &m);
            assert_int_equal(m.bytes, sb.size);
        } else {
            expect_fault(&d, -EMSGSIZE, true, 21);
        }
        wire_decoder_free(&d);
    }
    msgpack_sbuffer_destroy(&sb);
}

static void test_wire_oversized_request_gets_msgid_and_stream_resyncs(void **state)
{
    struct wire_decoder d;
    struct wire_msg m;
    struct wire_fault f;
    msgpack_sbuffer sb;
    char limit[32];
    (void)state;

    msgpack_sbuffer_init(&sb);
    put_request(&sb, 0xdeadbeefu, "register", 10000);
    put_request(&sb, 8, "status", 0);
    dec_init(&d, 1024, WIRE_DEFAULT_MAX_DEPTH);
    feed(&d, sb.data, sb.size);
    f = expect_fault(&d, -EMSGSIZE, true, 0xdeadbeefu);
    snprintf(limit, sizeof(limit), "%u", 1024u);
    assert_non_null(strstr(f.detail, limit));
    expect_message(&d, &m);
    assert_int_equal(m.kind, WIRE_REQUEST);
    assert_int_equal(m.msgid, 8);
    assert_method(&m, "status");
    expect_need_more(&d);
    assert_int_equal(wire_decoder_pending(&d), 0);
    wire_decoder_free(&d);
    msgpack_sbuffer_destroy(&sb);
}

/* The oversized request is far larger than what the decoder may ever buffer; it comes in small
 * reads, is dropped as it goes, and the request after it still decodes. */
static void test_wire_oversized_request_in_small_feeds_resyncs(void **state)
{
    static const size_t chunks[] = {1, 7, 4093};
    msgpack_sbuffer sb;
    (void)state;

    msgpack_sbuffer_init(&sb);
    put_request(&sb, 4242, "register", 2 * READ_SLACK);
    put_request(&sb, 4243, "status", 0);
    put_request(&sb, 4244, "status", 0);
    for (size_t c = 0; c < ARRAY_LEN(chunks); c++) {
        struct wire_decoder d;
        unsigned faults = 0, messages = 0;
        size_t max_pending = 0;

        dec_init(&d, 1024, WIRE_DEFAULT_MAX_DEPTH);
        for (size_t off = 0; off < sb.size; off += chunks[c]) {
            size_t n = sb.size - off < chunks[c] ? sb.size - off : chunks[c];
            feed(&d, sb.data + off, n);
            for (;;) {
                struct wire_msg m;
                struct wire_fault f;
                int rc = next_checked(&d, &m, &f);
                if (rc == 0)
                    break;
                if (rc < 0) {
                    assert_int_equal(f.code, -EMSGSIZE);
                    assert_true(f.has_msgid);
                    assert_int_equal(f.msgid, 4242);
                    assert_int_equal(messages, 0);
                    faults++;
                    continue;
                }
                assert_int_equal(faults, 1);
                assert_int_equal(m.msgid, 4243 + messages);
                messages++;
            }
            if (wire_decoder_pending(&d) > max_pending)
                max_pending = wire_decoder_pending(&d);
        }
        assert_int_equal(faults, 1);
        assert_int_equal(messages, 2);
        /* Never more than one limit's worth plus one read is held. */
        assert_true(max_pending <= 1024 + chunks[c]);
        assert_true(d.cap <= 4 * (1024 + chunks[c]) + 4096);
        wire_decoder_free(&d);
    }
    msgpack_sbuffer_destroy(&sb);
}

/* The msgid of an oversized request is read from its first bytes, whatever integer width the
 * sender chose; one that is not a u32 leaves nobody to answer. */
static void test_wire_oversized_request_msgid_found_in_any_int_width(void **state)
{
    static const struct {
        const char *name;
        uint8_t head[12];
        size_t head_len;
        bool has_msgid;
        uint32_t msgid;
    } cases[] = {
        {"fixint", {0x94, 0x00, 0x05}, 3, true, 5},
        {"uint8", {0x94, 0x00, 0xcc, 0xff}, 4, true, 0xff},
        {"uint16", {0x94, 0x00, 0xcd, 0xff, 0xfe}, 5, true, 0xfffe},
        {"uint32", {0x94, 0x00, 0xce, 0xff, 0xff, 0xff, 0xff}, 7, true, 0xffffffffu},
        {"uint64 small", {0x94, 0x00, 0xcf, 0, 0, 0, 0, 0, 0, 1, 0}, 11, true, 256},
        {"int8 positive", {0x94, 0x00, 0xd0, 0x7f}, 4, true, 127},
        {"int16 positive", {0x94, 0x00, 0xd1, 0x7f, 0xff}, 5, true, 0x7fff},
        {"int32 positive", {0x94, 0x00, 0xd2, 0x7f, 0xff, 0xff, 0xff}, 7, true, 0x7fffffff},
        {"int64 positive", {0x94, 0x00, 0xd3, 0, 0, 0, 0, 0, 0, 0, 9}, 11, true, 9},
        {"array16 envelope", {0xdc, 0x00, 0x04, 0x00, 0x33}, 5, true, 0x33},
        {"array32 envelope", {0xdd, 0x00, 0x00, 0x00, 0x04, 0x00, 0xcc, 0x80}, 8, true, 0x80},
        {"uint64 above u32", {0x94, 0x00, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0}, 11, false, 0},
        {"negative fixint", {0x94, 0x00, 0xff}, 3, false, 0},
        {"int8 negative", {0x94, 0x00, 0xd0, 0x80}, 4, false, 0},
        {"int32 negative", {0x94, 0x00, 0xd2, 0xff, 0xff, 0xff, 0xfe}, 7, false, 0},
        {"msgid is a string", {0x94, 0x00, 0xa1, '7'}, 4, false, 0},
        {"type 1 (response)", {0x94, 0x01, 0x05}, 3, false, 0},
        {"type 2 (notification)", {0x93, 0x02, 0xa1, 'm'}, 4, false, 0},
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct wire_decoder d;
        struct bytes b = {0};

        b_put(&b, cases[i].head, cases[i].head_len);
        if (cases[i].head[1] != 0x02) {
            b_fixstr(&b, "m");
        }
        b_u8(&b, 0x91);
        b_u8(&b, 0x81);
        b_fixstr(&b, "x");
        b_u8(&b, 0xc5);
        b_be(&b, 2000, 2);
        b_fill(&b, 0, 2000);
        /* A valid request behind it: reachable only when the big one could be skipped. */
        b_put(&b, "\x94\x00\x01\xa1m\x91\x80", 7);

        dec_init(&d, 512, WIRE_DEFAULT_MAX_DEPTH);
        feed(&d, b.p, b.len);
        struct wire_msg m;
        struct wire_fault f;
        int rc = next_checked(&d, &m, &f);
        if (rc != -1 || f.code != -EMSGSIZE || f.has_msgid != cases[i].has_msgid ||
            (cases[i].has_msgid && f.msgid != cases[i].msgid))
            fail_msg("%s: rc %d code %d has_msgid %d msgid %u", cases[i].name, rc, f.code,
                     f.has_msgid, f.msgid);
        if (cases[i].has_msgid) {
            expect_message(&d, &m);
            assert_int_equal(m.msgid, 1);
        } else {
            expect_stays_broken(&d);
        }
        wire_decoder_free(&d);
        b_free(&b);
    }
}

static void test_wire_oversized_non_request_closes_the_connection(void **state)
{
    (void)state;

    for (int kind = 0; kind < 2; kind++) {
        struct wire_decoder d;
        msgpack_sbuffer sb;
        msgpack_packer pk;
        char *zeros = calloc(1, 5000);

        assert_non_null(zeros);
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        if (kind == 0)
            wire_pack_response_head(&pk, 77);
        else
            wire_pack_notify_head(&pk, "progress");
        msgpack_pack_map(&pk, 1);
        wire_pack_str(&pk, "blob");
        msgpack_pack_bin(&pk, 5000);
        msgpack_pack_bin_body(&pk, zeros, 5000);
        put_request(&sb, 3, "status", 0);

        dec_init(&d, 1024, WIRE_DEFAULT_MAX_DEPTH);
        feed(&d, sb.data, sb.size);
        struct wire_fault f = expect_fault(&d, -EMSGSIZE, false, 0);
        assert_non_null(strstr(f.detail, "1024"));
        expect_stays_broken(&d);
        wire_decoder_free(&d);
        msgpack_sbuffer_destroy(&sb);
        free(zeros);
    }
}

static void test_wire_huge_declared_array_is_cut_at_max_message(void **state)
{
    struct wire_decoder d;
    struct bytes b = {0};
    (void)state;

    /* Four billion elements declared; they arrive as nils until the limit. */
    b_u8(&b, 0xdd);
    b_be(&b, 0xffffffffu, 4);
    b_fill(&b, 0xc0, 5000);
    dec_init(&d, 4096, WIRE_DEFAULT_MAX_DEPTH);
    feed(&d, b.p, 4096);
    expect_need_more(&d);
    assert_int_equal(wire_decoder_pending(&d), 4096);
    feed(&d, b.p + 4096, b.len - 4096);
    expect_fault(&d, -EMSGSIZE, false, 0);
    assert_true(d.cap <= 16384);
    expect_stays_broken(&d);
    wire_decoder_free(&d);
    b_free(&b);
}

/* A few bytes that declare gigabytes: the decoder waits for them without allocating. */
static void test_wire_tiny_message_declaring_huge_length_only_needs_more(void **state)
{
    static const struct {
        const char *name;
        uint8_t bytes[16];
        size_t len;
    } cases[] = {
        {"array32", {0xdd, 0xff, 0xff, 0xff, 0xff}, 5},
        {"map32", {0xdf, 0xff, 0xff, 0xff, 0xff}, 5},
        {"str32", {0xdb, 0xff, 0xff, 0xff, 0xff}, 5},
        {"bin32", {0xc6, 0xff, 0xff, 0xff, 0xff}, 5},
        {"ext32", {0xc9, 0xff, 0xff, 0xff, 0xff, 0x01}, 6},
        {"array16", {0xdc, 0xff, 0xff}, 3},
        {"map16", {0xde, 0xff, 0xff}, 3},
        {"str16", {0xda, 0xff, 0xff}, 3},
        {"request with an array32 param",
         {0x94, 0x00, 0x01, 0xa1, 'm', 0x91, 0x81, 0xa1, 'x', 0xdd, 0xff, 0xff, 0xff, 0xff},
         14},
        {"request with a map32 param",
         {0x94, 0x00, 0x01, 0xa1, 'm', 0x91, 0x81, 0xa1, 'x', 0xdf, 0xff, 0xff, 0xff, 0xff},
         14},
        {"request with a str32 method", {0x94, 0x00, 0x01, 0xdb, 0xff, 0xff, 0xff, 0xff}, 8},
        {"envelope array32", {0xdd, 0xff, 0xff, 0xff, 0xff, 0x00, 0x01}, 7},
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct wire_decoder d;
        uint8_t nils[100];

        dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
        feed(&d, cases[i].bytes, cases[i].len);
        expect_need_more(&d);
        assert_int_equal(wire_decoder_pending(&d), cases[i].len);
        /* More bytes, still far from what was declared. */
        memset(nils, 0xc0, sizeof(nils));
        feed(&d, nils, sizeof(nils));
        expect_need_more(&d);
        assert_int_equal(wire_decoder_pending(&d), cases[i].len + sizeof(nils));
        if (d.cap > 4096)
            fail_msg("%s: buffer grew to %zu bytes", cases[i].name, d.cap);
        wire_decoder_free(&d);
    }
}

static void test_wire_nesting_deeper_than_max_depth_is_fatal(void **state)
{
    static const unsigned depths[] = {4, WIRE_DEFAULT_MAX_DEPTH, WIRE_HARD_MAX_DEPTH - 1};
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(depths); i++) {
        struct wire_decoder d;
        struct wire_msg m;
        struct bytes ok = {0}, deep = {0};

        /* Exactly max_depth: decodes. */
        put_nested_request(&ok, 31, depths[i]);
        dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, depths[i]);
        feed(&d, ok.p, ok.len);
        expect_message(&d, &m);
        assert_int_equal(m.msgid, 31);
        const msgpack_object *v = map_get(m.params, "a");
        for (unsigned level = 3; level < depths[i]; level++) {
            assert_int_equal(v->type, MSGPACK_OBJECT_ARRAY);
            v = &v->via.array.ptr[0];
        }
        assert_int_equal(v->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
        wire_decoder_free(&d);

        /* One level more: a fault nobody is answered for, even though the msgid is readable. */
        put_nested_request(&deep, 32, depths[i] + 1);
        b_put(&deep, ok.p, ok.len);
        dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, depths[i]);
        feed(&d, deep.p, deep.len);
        struct wire_fault f = expect_fault(&d, -ELOOP, false, 0);
        char n[16];
        snprintf(n, sizeof(n), "%u", depths[i]);
        assert_non_null(strstr(f.detail, n));
        expect_stays_broken(&d);
        wire_decoder_free(&d);

        /* Bare nesting, fed a byte at a time. */
        dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, depths[i]);
        for (unsigned level = 0; level < depths[i]; level++) {
            feed(&d, "\x91", 1);
            expect_need_more(&d);
        }
        feed(&d, "\x91", 1);
        expect_fault(&d, -ELOOP, false, 0);
        wire_decoder_free(&d);
        b_free(&ok);
        b_free(&deep);
    }
}

/* An empty array or map is a level of nesting too. */
static void test_wire_empty_container_beyond_max_depth_is_too_deep(void **state)
{
    struct wire_decoder d;
    struct wire_msg m;
    struct bytes b = {0};
    (void)state;

    /* [0, 1, "m", [{"a": [[[[[ [] ]]]]]}]]: the envelope, params, the map and five arrays
     * are eight levels; the empty array is the ninth. */
    b_put(&b, "\x94\x00\x01\xa1m\x91\x81\xa1" "a", 9);
    b_fill(&b, 0x91, WIRE_DEFAULT_MAX_DEPTH - 3);
    b_u8(&b, 0x90);
    dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
    feed(&d, b.p, b.len);
    expect_fault(&d, -ELOOP, false, 0);
    wire_decoder_free(&d);

    /* The same with an empty map, and one level shallower: accepted. */
    b.p[b.len - 1] = 0x80;
    dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
    feed(&d, b.p, b.len);
    expect_fault(&d, -ELOOP, false, 0);
    wire_decoder_free(&d);

    b.len = 0;
    b_put(&b, "\x94\x00\x01\xa1m\x91\x81\xa1" "a", 9);
    b_fill(&b, 0x91, WIRE_DEFAULT_MAX_DEPTH - 4);
    b_u8(&b, 0x90);
    dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
    feed(&d, b.p, b.len);
    expect_message(&d, &m);
    assert_int_equal(m.msgid, 1);
    wire_decoder_free(&d);
    b_free(&b);
}

static void test_wire_reserved_byte_c1_is_fatal(void **state)
{
    static const struct {
        const char *name;
        const char *bytes;
        size_t len;
    } cases[] = {
        {"alone", "\xc1", 1},
        {"as the envelope's first element", "\x94\xc1", 2},
        {"inside the params of a request", "\x94\x00\x05\xa1m\x91\x81\xa1x\xc1", 11},
        {"after a complete message", "\x94\x00\x05\xa1m\x91\x80\xc1", 8},
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct wire_decoder d;
        struct wire_msg m;

        dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
        feed(&d, cases[i].bytes, cases[i].len);
        if (i == 3) {
            expect_message(&d, &m);
            assert_int_equal(m.msgid, 5);
        }
        expect_fault(&d, -EBADMSG, false, 0);
        expect_stays_broken(&d);
        wire_decoder_free(&d);
    }
}

static void test_wire_decoder_stays_broken_after_a_fatal_fault(void **state)
{
    struct wire_decoder d;
    msgpack_sbuffer sb;
    (void)state;

    msgpack_sbuffer_init(&sb);
    put_request(&sb, 5, "status", 0);
    dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
    feed(&d, "\xc1", 1);
    feed(&d, sb.data, sb.size);
    expect_fault(&d, -EBADMSG, false, 0);
    /* The valid request behind the bad byte is never delivered, however often one asks. */
    for (int i = 0; i < 5; i++) {
        struct wire_msg m;
        struct wire_fault f;
        feed(&d, sb.data, sb.size);
        assert_int_equal(next_checked(&d, &m, &f), -1);
        assert_false(f.has_msgid);
    }
    wire_decoder_free(&d);
    msgpack_sbuffer_destroy(&sb);
}

/* ---- Shape of msgpack-rpc ----------------------------------------------------------------- */

struct raw_case {
    const char *name;
    const char *bytes;
    size_t len;
    uint32_t msgid;
};

#define RAW(name, lit, id) {name, lit, sizeof(lit) - 1, id}

/* A request whose msgid can be read is answered with EPROTO, and the next message still
 * decodes. */
static void test_wire_request_shape_errors_are_answered_with_msgid(void **state)
{
    static const struct raw_case cases[] = {
        RAW("params is a map, not an array", "\x94\x00\x09\xa1m\x80", 9),
        RAW("params is nil", "\x94\x00\x09\xa1m\xc0", 9),
        RAW("params is an empty array", "\x94\x00\x09\xa1m\x90", 9),
        RAW("params holds an integer", "\x94\x00\x09\xa1m\x91\x01", 9),
        RAW("params holds an array", "\x94\x00\x09\xa1m\x91\x90", 9),
        RAW("params holds two maps", "\x94\x00\x09\xa1m\x92\x80\x80", 9),
        RAW("method is an integer", "\x94\x00\xcd\x01\x00\x05\x91\x80", 256),
        RAW("method is bin", "\x94\x00\x09\xc4\x01m\x91\x80", 9),
        RAW("method is nil", "\x94\x00\xce\xff\xff\xff\xff\xc0\x91\x80", 0xffffffffu),
        RAW("msgid as a positive int8", "\x94\x00\xd0\x09\x07\x91\x80", 9),
        RAW("five elements", "\x95\x00\x09\xa1m\x91\x80\xc0", 9),
        RAW("three elements", "\x93\x00\x09\xa1m", 9),
        RAW("two elements", "\x92\x00\x09", 9),
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct wire_decoder d;
        struct wire_msg m;
        struct wire_fault f;
        int rc;

        dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
        feed(&d, cases[i].bytes, cases[i].len);
        feed(&d, "\x94\x00\x0a\xa1m\x91\x80", 7);
        rc = next_checked(&d, &m, &f);
        if (rc != -1 || f.code != -EPROTO || !f.has_msgid || f.msgid != cases[i].msgid)
            fail_msg("%s: rc %d code %d has_msgid %d msgid %u (%s)", cases[i].name, rc, f.code,
                     f.has_msgid, f.msgid, f.detail);
        expect_message(&d, &m);
        assert_int_equal(m.msgid, 10);
        expect_need_more(&d);
        wire_decoder_free(&d);
    }
}

/* Without a readable request msgid there is nobody to answer: the connection closes. */
static void test_wire_shape_errors_without_msgid_leave_nobody_to_answer(void **state)
{
    static const struct raw_case cases[] = {
        RAW("type 3", "\x94\x03\x09\xa1m\x91\x80", 0),
        RAW("type -1", "\x94\xff\x09\xa1m\x91\x80", 0),
        RAW("type is a string", "\x94\xa1\x30\x09\xa1m\x91\x80", 0),
        RAW("msgid 2^32", "\x94\x00\xcf\x00\x00\x00\x01\x00\x00\x00\x00\xa1m\x91\x80", 0),
        RAW("msgid u64 max", "\x94\x00\xcf\xff\xff\xff\xff\xff\xff\xff\xff\xa1m\x91\x80", 0),
        RAW("msgid -1", "\x94\x00\xff\xa1m\x91\x80", 0),
        RAW("msgid int8 -1", "\x94\x00\xd0\xff\xa1m\x91\x80", 0),
        RAW("msgid is a string", "\x94\x00\xa1\x39\xa1m\x91\x80", 0),
        RAW("msgid is a float", "\x94\x00\xca\x41\x10\x00\x00\xa1m\x91\x80", 0),
        RAW("msgid is nil", "\x94\x00\xc0\xa1m\x91\x80", 0),
        RAW("not an array: integer", "\x05", 0),
        RAW("not an array: string", "\xa1m", 0),
        RAW("not an array: map", "\x81\xa1m\x00", 0),
        RAW("empty array", "\x90", 0),
        RAW("array of one", "\x91\x00", 0),
        RAW("response of three", "\x93\x01\x09\xc0", 0),
        RAW("response of five", "\x95\x01\x09\xc0\xc0\xc0", 0),
        RAW("response msgid -1", "\x94\x01\xff\xc0\xc0", 0),
        RAW("notification of four", "\x94\x02\xa1m\x91\x80\xc0", 0),
        RAW("notification method is an integer", "\x93\x02\x05\x91\x80", 0),
        RAW("notification params is a map", "\x93\x02\xa1m\x80", 0),
        RAW("notification params holds two maps", "\x93\x02\xa1m\x92\x80\x80", 0),
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct wire_decoder d;
        struct wire_msg m;
        struct wire_fault f;
        int rc;

        dec_init(&d, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH);
        feed(&d, cases[i].bytes, cases[i].len);
        rc = next_checked(&d, &m, &f);
        if (rc != -1 || f.code != -EPROTO || f.has_msgid)
            fail_msg("%s: rc %d code %d has_msgid %d (%s)", cases[i].name, rc, f.code,
                     f.has_msgid, f.detail);
        wire_decoder_free(&d);
    }
}

/* ---- Robustness --------------------------------------------------------------------------- */

struct tally {
    unsigned messages, answered, closed;
    unsigned eproto, emsgsize, ebadmsg, eloop;
};

/* Feed buf in random reads, draining after each, as a connection would; every result is
 * checked by next_checked(). Stops where a connection would be closed for good. */
static void decode_chunked(const uint8_t *buf, size_t n, size_t max_message, unsigned max_depth,
                           uint64_t *rng, struct tally *t)
{
    struct wire_decoder d;
    size_t off = 0, delivered = 0;
    bool dead = false;

    dec_init(&d, max_message, max_depth);
    while (off < n && !dead) {
        size_t chunk = 1 + rng_below(rng, rng_below(rng, 4) == 0 ? 2048 : 48);
        if (chunk > n - off)
            chunk = n - off;
        feed(&d, buf + off, chunk);
        off += chunk;
        for (;;) {
            struct wire_msg m;
            struct wire_fault f;
            int rc = next_checked(&d, &m, &f);
            if (rc == 0)
                break;
            if (rc == 1) {
                t->messages++;
                delivered += m.bytes;
                assert_true(m.bytes <= max_message);
                continue;
            }
            t->eproto += f.code == -EPROTO;
            t->emsgsize += f.code == -EMSGSIZE;
            t->ebadmsg += f.code == -EBADMSG;
            t->eloop += f.code == -ELOOP;
            if (f.has_msgid) {
                t->answered++;
                continue;
            }
            if (d.broken) {
                struct wire_fault again;
                assert_int_equal(next_checked(&d, &m, &again), -1);
                t->closed++;
                dead = true;
                break;
            }
            /* A shape error the daemon would close on; the decoder itself could go on. */
            t->closed++;
        }
        assert_true(delivered <= off);
        assert_true(wire_decoder_pending(&d) <= off);
        assert_true(wire_decoder_pending(&d) <= max_message + chunk);
    }
    wire_decoder_free(&d);
}

/* Bytes that make garbage interesting: container and string headers, the reserved byte,
 * the envelope's own first bytes. */
static const uint8_t interesting[] = {
    0x00, 0x01, 0x02, 0x03, 0x7f, 0x80, 0x81, 0x8f, 0x90, 0x91, 0x92, 0x93, 0x94, 0x95, 0x9f,
    0xa0, 0xa1, 0xa5, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca,
    0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9,
    0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff,
};

static uint8_t random_byte(uint64_t *rng)
{
    if (rng_below(rng, 2) == 0)
        return interesting[rng_below(rng, ARRAY_LEN(interesting))];
    return (uint8_t)rng_next(rng);
}

static void test_wire_random_garbage_never_crashes(void **state)
{
    static const size_t limits[] = {64, 300, 4096, WIRE_DEFAULT_MAX_MESSAGE};
    static const unsigned depths[] = {4, 8, WIRE_HARD_MAX_DEPTH - 1};
    uint64_t rng = 0x5eed0001;
    struct tally t = {0};
    uint8_t buf[4096];
    (void)state;

    for (int iter = 0; iter < 20000; iter++) {
        size_t n = rng_below(&rng, 8) == 0 ? rng_below(&rng, sizeof(buf)) : rng_below(&rng, 64);
        size_t i = 0;
        /* Half start like an envelope, to get past the first checks. */
        if (n >= 3 && rng_below(&rng, 2) == 0) {
            buf[i++] = rng_below(&rng, 2) ? 0x94 : 0x93;
            buf[i++] = (uint8_t)rng_below(&rng, 4);
        }
        for (; i < n; i++)
            buf[i] = random_byte(&rng);
        decode_chunked(buf, n, limits[rng_below(&rng, ARRAY_LEN(limits))],
                       depths[rng_below(&rng, ARRAY_LEN(depths))], &rng, &t);
    }
    /* The garbage reached every kind of fault. */
    assert_true(t.eproto > 0);
    assert_true(t.emsgsize > 0);
    assert_true(t.ebadmsg > 0);
    assert_true(t.eloop > 0);
    assert_true(t.closed > 0);
}

static void test_wire_mutated_valid_messages_never_crash(void **state)
{
    static const size_t limits[] = {128, 1024, WIRE_DEFAULT_MAX_MESSAGE};
    uint64_t rng = 0x5eed0002;
    struct tally t = {0};
    struct sample s[5];
    struct bytes b = {0};
    (void)state;

    samples_make(s);
    for (int iter = 0; iter < 20000; iter++) {
        b.len = 0;
        /* One to three valid messages back to back, then mutations. */
        int count = 1 + (int)rng_below(&rng, 3);
        for (int k = 0; k < count; k++) {
            const struct bytes *src = &s[rng_below(&rng, 5)].b;
            b_put(&b, src->p, src->len);
        }
        int mutations = 1 + (int)rng_below(&rng, 4);
        for (int k = 0; k < mutations && b.len > 0; k++) {
            size_t at = rng_below(&rng, b.len);
            switch (rng_below(&rng, 6)) {
            case 0: /* flip a bit */
                b.p[at] ^= (uint8_t)(1u << rng_below(&rng, 8));
                break;
            case 1: /* replace a byte */
                b.p[at] = random_byte(&rng);
                break;
            case 2: /* insert a byte */
                b_grow(&b, 1);
                memmove(b.p + at + 1, b.p + at, b.len - at - 1);
                b.p[at] = random_byte(&rng);
                break;
            case 3: /* delete a byte */
                memmove(b.p + at, b.p + at + 1, b.len - at - 1);
                b.len--;
                break;
            case 4: /* truncate */
                b.len = at;
                break;
            default: /* duplicate a run */
            {
                size_t run = 1 + rng_below(&rng, 16);
                if (run > b.len - at)
                    run = b.len - at;
                uint8_t tmp[16];
                memcpy(tmp, b.p + at, run);
                b_put(&b, tmp, run);
                break;
            }
            }
        }
        decode_chunked(b.p, b.len, limits[rng_below(&rng, ARRAY_LEN(limits))],
                       WIRE_DEFAULT_MAX_DEPTH, &rng, &t);
    }
    assert_true(t.messages > 0);
    assert_true(t.answered > 0);
    assert_true(t.closed > 0);
    assert_true(t.eproto > 0);
    assert_true(t.emsgsize > 0);
    assert_true(t.ebadmsg > 0);
    b_free(&b);
    samples_free(s);
}

/* ---- Socket path (§1) --------------------------------------------------------------------- */

static void test_wire_socket_path_option_wins(void **state)
{
    char out[108];
    (void)state;

    assert_int_equal(wire_socket_path("/tmp/opt.sock", "/tmp/env.sock", "/run/user/1000", out,
                                      sizeof(out)),
                     0);
    assert_string_equal(out, "/tmp/opt.sock");
    assert_int_equal(wire_socket_path("relative.sock", NULL, NULL, out, sizeof(out)), 0);
    assert_string_equal(out, "relative.sock");
}

static void test_wire_socket_path_env_then_runtime_dir_then_default(void **state)
{
    char out[108];
    (void)state;

    assert_int_equal(
        wire_socket_path(NULL, "/tmp/env.sock", "/run/user/1000", out, sizeof(out)), 0);
    assert_string_equal(out, "/tmp/env.sock");
    assert_int_equal(wire_socket_path(NULL, NULL, "/run/user/1000", out, sizeof(out)), 0);
    assert_string_equal(out, "/run/user/1000/emad.sock");
    assert_int_equal(wire_socket_path(NULL, NULL, NULL, out, sizeof(out)), 0);
    assert_string_equal(out, "/run/emad/emad.sock");
}

static void test_wire_socket_path_empty_option_rejected_empty_env_skipped(void **state)
{
    char out[108];
    (void)state;

    assert_int_equal(wire_socket_path("", "/tmp/env.sock", NULL, out, sizeof(out)), -EINVAL);
    assert_int_equal(wire_socket_path(NULL, "", "/run/user/1000", out, sizeof(out)), 0);
    assert_string_equal(out, "/run/user/1000/emad.sock");
    assert_int_equal(wire_socket_path(NULL, "", "", out, sizeof(out)), 0);
    assert_string_equal(out, "/run/emad/emad.sock");
}

static void test_wire_socket_path_longer_than_sun_path_rejected(void **state)
{
    char path[200], dir[200], out[200];
    (void)state;

    memset(path, 'p', sizeof(path));
    path[0] = '/';
    path[107] = '\0';
    assert_int_equal(wire_socket_path(path, NULL, NULL, out, sizeof(out)), 0);
    assert_string_equal(out, path);
    assert_int_equal(strlen(out), WIRE_SOCKET_PATH_MAX);
    /* 107 bytes also fit a sockaddr_un-sized buffer exactly. */
    assert_int_equal(wire_socket_path(path, NULL, NULL, out, 108), 0);
    path[107] = 'p';
    path[108] = '\0';
    assert_int_equal(wire_socket_path(path, NULL, NULL, out, sizeof(out)), -ENAMETOOLONG);
    assert_int_equal(wire_socket_path(NULL, path, NULL, out, sizeof(out)), -ENAMETOOLONG);

    /* The runtime dir plus "/emad.sock" (10 bytes) counts as a whole. */
    memset(dir, 'd', sizeof(dir));
    dir[0] = '/';
    dir[97] = '\0';
    assert_int_equal(wire_socket_path(NULL, NULL, dir, out, sizeof(out)), 0);
    assert_int_equal(strlen(out), 107);
    dir[97] = 'd';
    dir[98] = '\0';
    assert_int_equal(wire_socket_path(NULL, NULL, dir, out, sizeof(out)), -ENAMETOOLONG);

    /* A caller's buffer smaller than the path. */
    assert_int_equal(wire_socket_path("/tmp/opt.sock", NULL, NULL, out, 8), -ENAMETOOLONG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wire_request_round_trips_every_msgid_width),
        cmocka_unit_test(test_wire_response_ok_round_trips),
        cmocka_unit_test(test_wire_response_error_round_trips),
        cmocka_unit_test(test_wire_notification_round_trips),
        cmocka_unit_test(test_wire_several_messages_in_one_feed_decode_in_order),
        cmocka_unit_test(test_wire_decoder_is_usable_again_after_free),
        cmocka_unit_test(test_wire_message_split_across_feeds_with_the_next_one),
        cmocka_unit_test(test_wire_byte_at_a_time_yields_one_message_at_the_last_byte),
        cmocka_unit_test(test_wire_truncated_message_only_needs_more_at_every_length),
        cmocka_unit_test(test_wire_every_msgpack_type_inside_params_decodes),
        cmocka_unit_test(test_wire_reserve_and_commit_read_in_place),
        cmocka_unit_test(test_wire_feed_beyond_the_buffer_bound_is_refused),
        cmocka_unit_test(test_wire_init_rejects_bad_limits),
        cmocka_unit_test(test_wire_message_of_exactly_max_message_is_accepted),
        cmocka_unit_test(test_wire_oversized_request_gets_msgid_and_stream_resyncs),
        cmocka_unit_test(test_wire_oversized_request_in_small_feeds_resyncs),
        cmocka_unit_test(test_wire_oversized_request_msgid_found_in_any_int_width),
        cmocka_unit_test(test_wire_oversized_non_request_closes_the_connection),
        cmocka_unit_test(test_wire_huge_declared_array_is_cut_at_max_message),
        cmocka_unit_test(test_wire_tiny_message_declaring_huge_length_only_needs_more),
        cmocka_unit_test(test_wire_nesting_deeper_than_max_depth_is_fatal),
        cmocka_unit_test(test_wire_empty_container_beyond_max_depth_is_too_deep),
        cmocka_unit_test(test_wire_reserved_byte_c1_is_fatal),
        cmocka_unit_test(test_wire_decoder_stays_broken_after_a_fatal_fault),
        cmocka_unit_test(test_wire_request_shape_errors_are_answered_with_msgid),
        cmocka_unit_test(test_wire_shape_errors_without_msgid_leave_nobody_to_answer),
        cmocka_unit_test(test_wire_random_garbage_never_crashes),
        cmocka_unit_test(test_wire_mutated_valid_messages_never_crash),
        cmocka_unit_test(test_wire_socket_path_option_wins),
        cmocka_unit_test(test_wire_socket_path_env_then_runtime_dir_then_default),
        cmocka_unit_test(test_wire_socket_path_empty_option_rejected_empty_env_skipped),
        cmocka_unit_test(test_wire_socket_path_longer_than_sun_path_rejected),
    };

    return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}
