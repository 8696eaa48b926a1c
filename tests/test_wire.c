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

/* ---- wire_unpack against msgpack-c ----------------------------------------------------------- */

/* x (unpacked from the bytes at xb) and y (from yb) are the same tree: types, values, sizes, and
 * strings, bins and exts pointing at the same offsets of their own buffers (both reference the
 * bytes, neither copies them). Floats compare by their bits, NaN included. */
static void assert_same_tree(const msgpack_object *x, const char *xb, const msgpack_object *y,
                             const char *yb)
{
    assert_int_equal(x->type, y->type);
    switch (x->type) {
    case MSGPACK_OBJECT_NIL:
        break;
    case MSGPACK_OBJECT_BOOLEAN:
        assert_int_equal(x->via.boolean, y->via.boolean);
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        assert_true(x->via.u64 == y->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        assert_true(x->via.i64 == y->via.i64);
        assert_true(x->via.i64 < 0);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        assert_memory_equal(&x->via.f64, &y->via.f64, sizeof(double));
        break;
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_BIN:
        assert_int_equal(x->via.str.size, y->via.str.size);
        /* msgpack-c leaves an empty one's pointer at whatever it last read (NULL at first). */
        if (x->via.str.size > 0)
            assert_true(x->via.str.ptr - xb == y->via.str.ptr - yb);
        break;
    case MSGPACK_OBJECT_EXT:
        assert_int_equal(x->via.ext.type, y->via.ext.type);
        assert_int_equal(x->via.ext.size, y->via.ext.size);
        assert_true(x->via.ext.ptr - xb == y->via.ext.ptr - yb);
        break;
    case MSGPACK_OBJECT_ARRAY:
        assert_int_equal(x->via.array.size, y->via.array.size);
        for (uint32_t i = 0; i < x->via.array.size; i++)
            assert_same_tree(&x->via.array.ptr[i], xb, &y->via.array.ptr[i], yb);
        break;
    case MSGPACK_OBJECT_MAP:
        assert_int_equal(x->via.map.size, y->via.map.size);
        for (uint32_t i = 0; i < x->via.map.size; i++) {
            assert_same_tree(&x->via.map.ptr[i].key, xb, &y->via.map.ptr[i].key, yb);
            assert_same_tree(&x->via.map.ptr[i].val, xb, &y->via.map.ptr[i].val, yb);
        }
        break;
    default:
        fail_msg("object of type %d", (int)x->type);
    }
}

/* The tree o, unpacked by us from the n bytes at p, is the one msgpack-c makes of them. */
static void assert_as_msgpack_c(const msgpack_object *o, const char *p, size_t n)
{
    msgpack_zone z;
    msgpack_object ref;
    size_t off = 0;

    assert_true(msgpack_zone_init(&z, 1024));
    assert_int_equal(msgpack_unpack(p, n, &off, &z, &ref), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, n);
    assert_same_tree(o, p, &ref, p);
    msgpack_zone_destroy(&z);
}

/* Unpack data[0, n) with wire_unpack (no depth limit below msgpack-c's) and with msgpack_unpack,
 * and check that they agree: the same tree and end when both succeed, and a failure of ours
 * being one of msgpack-c too (cut short or reserved byte: not complete or a parse error; too
 * deep: its stack full). Only for bytes whose counts are honest (what we built, and prefixes of
 * it): msgpack-c allocates a container before it has its elements. Returns our result; *end
 * gets the end of the object. */
static int unpack_both(const void *data, size_t n, size_t *end)
{
    msgpack_zone z1, z2;
    msgpack_object o1, o2;
    size_t off1 = 0, off2 = 0;
    int rc;
    msgpack_unpack_return ur;

    assert_true(msgpack_zone_init(&z1, 256));
    assert_true(msgpack_zone_init(&z2, 256));
    rc = wire_unpack(data, n, &off1, &z1, WIRE_HARD_MAX_DEPTH, &o1);
    ur = msgpack_unpack(data, n, &off2, &z2, &o2);
    if (rc == 0) {
        assert_true(off1 > 0 && off1 <= n);
        assert_int_equal(ur, off1 == n ? MSGPACK_UNPACK_SUCCESS : MSGPACK_UNPACK_EXTRA_BYTES);
        assert_int_equal(off2, off1);
        assert_same_tree(&o1, data, &o2, data);
        if (end != NULL)
            *end = off1;
    } else if (rc == -ELOOP) {
        assert_int_equal(ur, MSGPACK_UNPACK_NOMEM_ERROR);
        assert_int_equal(off1, 0);
    } else {
        assert_int_equal(rc, -EBADMSG);
        assert_true(ur == MSGPACK_UNPACK_CONTINUE || ur == MSGPACK_UNPACK_PARSE_ERROR);
        assert_int_equal(off1, 0);
    }
    msgpack_zone_destroy(&z2);
    msgpack_zone_destroy(&z1);
    return rc;
}

/* unpack_both on b, which must unpack whole, and on every prefix of it, which must not. */
static void assert_agree_whole_and_cut(const struct bytes *b)
{
    size_t end = 0;

    assert_int_equal(unpack_both(b->p, b->len, &end), 0);
    assert_int_equal(end, b->len);
    for (size_t k = 0; k < b->len; k++)
        assert_int_equal(unpack_both(b->p, k, NULL), -EBADMSG);
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
        /* The tree behind m is the one msgpack-c makes of the same bytes, which are still in
         * the buffer just behind the head. */
        assert_true(d->have_unpacked && d->head >= m->bytes);
        assert_as_msgpack_c(&d->obj, d->buf + d->head - m->bytes, m->bytes);
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

/* ---- wire_unpack, the unpacker, against msgpack-c -------------------------------------------- */

/* An unsigned integer in each width that holds it (msgpack-c's packer picks only the smallest). */
static void put_uint_widths(struct bytes *b, uint64_t v)
{
    if (v <= 0x7f)
        b_u8(b, (uint8_t)v);
    if (v <= UINT8_MAX) {
        b_u8(b, 0xcc);
        b_be(b, v, 1);
    }
    if (v <= UINT16_MAX) {
        b_u8(b, 0xcd);
        b_be(b, v, 2);
    }
    if (v <= UINT32_MAX) {
        b_u8(b, 0xce);
        b_be(b, v, 4);
    }
    b_u8(b, 0xcf);
    b_be(b, v, 8);
}

/* A signed integer in each signed width that holds it, and the fixints. */
static void put_int_widths(struct bytes *b, int64_t v)
{
    if (v >= -32 && v <= 127)
        b_u8(b, (uint8_t)v);
    if (v >= INT8_MIN && v <= INT8_MAX) {
        b_u8(b, 0xd0);
        b_be(b, (uint64_t)v, 1);
    }
    if (v >= INT16_MIN && v <= INT16_MAX) {
        b_u8(b, 0xd1);
        b_be(b, (uint64_t)v, 2);
    }
    if (v >= INT32_MIN && v <= INT32_MAX) {
        b_u8(b, 0xd2);
        b_be(b, (uint64_t)v, 4);
    }
    b_u8(b, 0xd3);
    b_be(b, (uint64_t)v, 8);
}

static void put_f32(struct bytes *b, uint32_t bits)
{
    b_u8(b, 0xca);
    b_be(b, bits, 4);
}

static void put_f64(struct bytes *b, uint64_t bits)
{
    b_u8(b, 0xcb);
    b_be(b, bits, 8);
}

/* str (0) or bin (1) of n pattern bytes, header w: 0 fix (str only), 1, 2 or 4 length bytes. */
static void put_raw(struct bytes *b, int bin, unsigned w, size_t n)
{
    if (w == 0) {
        b_u8(b, (uint8_t)(0xa0 | n));
    } else {
        static const uint8_t str_hdr[5] = {0, 0xd9, 0xda, 0, 0xdb};
        static const uint8_t bin_hdr[5] = {0, 0xc4, 0xc5, 0, 0xc6};
        b_u8(b, bin ? bin_hdr[w] : str_hdr[w]);
        b_be(b, n, w);
    }
    b_pattern(b, n);
}

/* ext of n data bytes and type t, header w: 0 fixext (n of 1, 2, 4, 8, 16), 1, 2 or 4. */
static void put_ext(struct bytes *b, unsigned w, int8_t t, size_t n)
{
    if (w == 0) {
        b_u8(b, (uint8_t)(n == 1 ? 0xd4 : n == 2 ? 0xd5 : n == 4 ? 0xd6 : n == 8 ? 0xd7 : 0xd8));
    } else {
        b_u8(b, w == 1 ? 0xc7 : w == 2 ? 0xc8 : 0xc9);
        b_be(b, n, w);
    }
    b_u8(b, (uint8_t)t);
    b_pattern(b, n);
}

/* Array (map when map) header of n elements (pairs), w: 0 fix, 2 or 4 count bytes. */
static void put_container(struct bytes *b, int map, unsigned w, size_t n)
{
    if (w == 0)
        b_u8(b, (uint8_t)((map ? 0x80 : 0x90) | n));
    else {
        b_u8(b, (uint8_t)(map ? (w == 2 ? 0xde : 0xdf) : (w == 2 ? 0xdc : 0xdd)));
        b_be(b, n, w);
    }
}

static const uint64_t edge_uints[] = {
    0, 1, 127, 128, 255, 256, 65535, 65536, (1ull << 31) - 1, 1ull << 31, UINT32_MAX,
    1ull << 32, (1ull << 63) - 1, 1ull << 63, UINT64_MAX,
};
static const int64_t edge_ints[] = {
    0, 1, 127, -1, -31, -32, -33, -127, -128, -129, 128, 255, 32767, -32768, -32769, 65535,
    INT32_MAX, INT32_MIN, (int64_t)INT32_MIN - 1, INT64_MAX, INT64_MIN, INT64_MIN + 1,
};
static const uint32_t edge_f32[] = {
    0x00000000u, 0x80000000u, 0x3fc00000u /* 1.5 */, 0x7f7fffffu /* FLT_MAX */, 0x00000001u,
    0x7f800000u /* inf */, 0xff800000u, 0x7fc00000u /* NaN */, 0xffc00001u, 0xc2f60000u,
};
static const uint64_t edge_f64[] = {
    0, 1ull << 63, 0x3ff8000000000000ull, 0x7fefffffffffffffull, 1, 0x7ff0000000000000ull,
    0xfff0000000000000ull, 0x7ff8000000000000ull, 0xfff8000000000001ull, 0xc05ec00000000000ull,
};

/* A random object into b: every type, every width of header, containers while depth > 0. */
static void put_random(struct bytes *b, uint64_t *rng, unsigned depth)
{
    unsigned kind = (unsigned)rng_below(rng, depth > 0 ? 14 : 11);
    uint64_t r = rng_next(rng);
    size_t n;

    switch (kind) {
    case 0: { /* unsigned, some width */
        uint64_t v = r % 3 == 0 ? edge_uints[rng_below(rng, ARRAY_LEN(edge_uints))]
                                : rng_next(rng) >> (8 * rng_below(rng, 8));
        struct bytes all = {0};
        put_uint_widths(&all, v);
        /* One of its encodings: the last is always the 8-byte one; pick any by its start. */
        size_t starts[5], ns = 0;
        for (size_t i = 0; i < all.len; i += all.p[i] <= 0x7f ? 1 : 1u + (1u << (all.p[i] & 3)))
            starts[ns++] = i;
        size_t k = rng_below(rng, ns);
        size_t e = k + 1 < ns ? starts[k + 1] : all.len;
        b_put(b, all.p + starts[k], e - starts[k]);
        b_free(&all);
        break;
    }
    case 1: { /* signed, some width */
        int64_t v = r % 3 == 0 ? edge_ints[rng_below(rng, ARRAY_LEN(edge_ints))]
                               : (int64_t)rng_next(rng) >> (8 * rng_below(rng, 8));
        struct bytes all = {0};
        put_int_widths(&all, v);
        size_t starts[5], ns = 0;
        for (size_t i = 0; i < all.len;
             i += (all.p[i] <= 0x7f || all.p[i] >= 0xe0) ? 1 : 1u + (1u << (all.p[i] & 3)))
            starts[ns++] = i;
        size_t k = rng_below(rng, ns);
        size_t e = k + 1 < ns ? starts[k + 1] : all.len;
        b_put(b, all.p + starts[k], e - starts[k]);
        b_free(&all);
        break;
    }
    case 2:
        b_u8(b, 0xc0);
        break;
    case 3:
        b_u8(b, r & 1 ? 0xc3 : 0xc2);
        break;
    case 4:
        put_f32(b, r & 1 ? edge_f32[rng_below(rng, ARRAY_LEN(edge_f32))] : (uint32_t)(r >> 32));
        break;
    case 5:
        put_f64(b, r & 1 ? edge_f64[rng_below(rng, ARRAY_LEN(edge_f64))] : rng_next(rng));
        break;
    case 6:
    case 7: { /* str, bin: mostly short, sometimes long */
        int bin = kind == 7;
        unsigned w = (unsigned)rng_below(rng, 4); /* 0 fix, 1, 2, 3 -> 4 */
        if (w == 3)
            w = 4;
        if (bin && w == 0)
            w = 1;
        size_t cap = w == 0 ? 31 : w == 1 ? 255 : r % 16 == 0 ? 70000 : 300;
        n = r % 4 == 0 ? 0 : rng_below(rng, cap + 1);
        if (w == 1 && n > 255)
            n = 255;
        put_raw(b, bin, w, n);
        break;
    }
    case 8:
    case 9:
    case 10: { /* ext */
        static const size_t fixn[] = {1, 2, 4, 8, 16};
        unsigned w = (unsigned)rng_below(rng, 4);
        if (w == 3)
            w = 4;
        n = w == 0 ? fixn[rng_below(rng, 5)] : r % 4 == 0 ? 0 : rng_below(rng, w == 1 ? 256 : 600);
        put_ext(b, w, (int8_t)(r >> 8), n);
        break;
    }
    default: { /* 11, 12 array, 13 map */
        int map = kind == 13;
        unsigned w = (unsigned)rng_below(rng, 3);
        w = w == 1 ? 2 : w == 2 ? 4 : 0;
        n = r % 5 == 0 ? 0 : rng_below(rng, w == 0 ? 16 : 40);
        put_container(b, map, w, n);
        for (size_t i = 0; i < n * (map ? 2 : 1); i++)
            put_random(b, rng, depth - 1);
        break;
    }
    }
}

static void test_wire_unpack_agrees_with_msgpack_c_on_random_objects(void **state)
{
    (void)state;
    uint64_t rng = 0x756e7061636bull;

    for (int i = 0; i < 3000; i++) {
        struct bytes b = {0};
        unsigned depth = (unsigned)rng_below(&rng, 6);
        put_random(&b, &rng, depth);
        size_t end = 0;
        assert_int_equal(unpack_both(b.p, b.len, &end), 0);
        assert_int_equal(end, b.len);
        /* Cut short anywhere, both refuse; a few cuts of each, all of the small ones. */
        if (b.len < 64) {
            for (size_t k = 0; k < b.len; k++)
                assert_int_equal(unpack_both(b.p, k, NULL), -EBADMSG);
        } else {
            for (int c = 0; c < 8; c++)
                assert_int_equal(unpack_both(b.p, rng_below(&rng, b.len), NULL), -EBADMSG);
        }
        b_free(&b);
    }
}

static void test_wire_unpack_agrees_with_msgpack_c_on_edge_values(void **state)
{
    (void)state;
    struct bytes b = {0};

    for (size_t i = 0; i < ARRAY_LEN(edge_uints); i++) {
        struct bytes all = {0};
        put_uint_widths(&all, edge_uints[i]);
        /* All widths of one value as one array: every element must agree. */
        b.len = 0;
        put_container(&b, 0, 2, 5);
        b_put(&b, all.p, all.len);
        /* pad the array to 5 with nils where the value has fewer widths */
        size_t widths = 0;
        for (size_t j = 0; j < all.len; j += all.p[j] <= 0x7f ? 1 : 1u + (1u << (all.p[j] & 3)))
            widths++;
        b_fill(&b, 0xc0, 5 - widths);
        assert_agree_whole_and_cut(&b);
        b_free(&all);
    }
    for (size_t i = 0; i < ARRAY_LEN(edge_ints); i++) {
        struct bytes all = {0};
        put_int_widths(&all, edge_ints[i]);
        size_t widths = 0;
        for (size_t j = 0; j < all.len;
             j += (all.p[j] <= 0x7f || all.p[j] >= 0xe0) ? 1 : 1u + (1u << (all.p[j] & 3)))
            widths++;
        b.len = 0;
        put_container(&b, 0, 0, widths);
        b_put(&b, all.p, all.len);
        assert_agree_whole_and_cut(&b);
        /* A signed encoding of a non-negative value is a positive integer, as in msgpack-c. */
        msgpack_zone z;
        msgpack_object o;
        size_t off = 0;
        assert_true(msgpack_zone_init(&z, 256));
        assert_int_equal(wire_unpack((const char *)b.p, b.len, &off, &z, 1, &o), 0);
        for (uint32_t j = 0; j < o.via.array.size; j++) {
            const msgpack_object *e = &o.via.array.ptr[j];
            if (edge_ints[i] >= 0) {
                assert_int_equal(e->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
                assert_true(e->via.u64 == (uint64_t)edge_ints[i]);
            } else {
                assert_int_equal(e->type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
                assert_true(e->via.i64 == edge_ints[i]);
            }
        }
        msgpack_zone_destroy(&z);
        b_free(&all);
    }
    for (size_t i = 0; i < ARRAY_LEN(edge_f32); i++) {
        b.len = 0;
        put_f32(&b, edge_f32[i]);
        assert_agree_whole_and_cut(&b);
    }
    for (size_t i = 0; i < ARRAY_LEN(edge_f64); i++) {
        b.len = 0;
        put_f64(&b, edge_f64[i]);
        assert_agree_whole_and_cut(&b);
    }
    /* Floats keep their width: FLOAT32 holds the float's value as a double. */
    {
        msgpack_zone z;
        msgpack_object o;
        size_t off = 0;
        b.len = 0;
        put_f32(&b, 0x3fc00000u);
        assert_true(msgpack_zone_init(&z, 256));
        assert_int_equal(wire_unpack((const char *)b.p, b.len, &off, &z, 1, &o), 0);
        assert_int_equal(o.type, MSGPACK_OBJECT_FLOAT32);
        assert_true(o.via.f64 == 1.5);
        msgpack_zone_destroy(&z);
    }
    /* Empty and long str, bin and ext in every header width. */
    static const size_t lens[] = {0, 1, 31, 255, 256, 65535, 65536};
    for (size_t i = 0; i < ARRAY_LEN(lens); i++) {
        for (unsigned w = 0; w <= 4; w++) {
            if (w == 3 || (w == 0 && lens[i] > 31) || (w == 1 && lens[i] > 255) ||
                (w == 2 && lens[i] > 65535))
                continue;
            b.len = 0;
            put_raw(&b, 0, w, lens[i]);
            assert_int_equal(unpack_both(b.p, b.len, NULL), 0);
            if (w > 0) {
                b.len = 0;
                put_raw(&b, 1, w, lens[i]);
                assert_int_equal(unpack_both(b.p, b.len, NULL), 0);
                b.len = 0;
                put_ext(&b, w, -1, lens[i]);
                assert_int_equal(unpack_both(b.p, b.len, NULL), 0);
            }
        }
    }
    static const size_t fixn[] = {1, 2, 4, 8, 16};
    for (size_t i = 0; i < ARRAY_LEN(fixn); i++) {
        b.len = 0;
        put_ext(&b, 0, INT8_MIN, fixn[i]);
        assert_agree_whole_and_cut(&b);
    }
    /* Empty containers in each width, and nested maps and arrays. */
    for (int map = 0; map <= 1; map++) {
        for (unsigned w = 0; w <= 4; w += 2) {
            b.len = 0;
            put_container(&b, map, w, 0);
            assert_agree_whole_and_cut(&b);
        }
    }
    /* {"a": [{"b": nil}, [], {}], "c": {"d": [1, -1, "e"]}} */
    b.len = 0;
    put_container(&b, 1, 2, 2);
    b_fixstr(&b, "a");
    put_container(&b, 0, 4, 3);
    put_container(&b, 1, 0, 1);
    b_fixstr(&b, "b");
    b_u8(&b, 0xc0);
    put_container(&b, 0, 2, 0);
    put_container(&b, 1, 4, 0);
    b_fixstr(&b, "c");
    put_container(&b, 1, 0, 1);
    b_fixstr(&b, "d");
    put_container(&b, 0, 0, 3);
    b_u8(&b, 0x01);
    b_u8(&b, 0xff);
    b_fixstr(&b, "e");
    assert_agree_whole_and_cut(&b);
    b_free(&b);
}

static void test_wire_unpack_depth_is_that_of_the_scanner_and_within_msgpack_c(void **state)
{
    (void)state;
    msgpack_zone z;
    msgpack_object o;
    struct bytes b = {0};

    assert_true(msgpack_zone_init(&z, 256));
    for (unsigned levels = 1; levels <= WIRE_HARD_MAX_DEPTH + 1; levels++) {
        for (int empty = 0; empty <= 1; empty++) {
            /* levels nested containers, the innermost empty or holding one nil */
            b.len = 0;
            for (unsigned i = 0; i < levels; i++)
                put_container(&b, 0, i % 3 == 2 ? 2 : 0, i + 1 == levels && empty ? 0 : 1);
            if (!empty)
                b_u8(&b, 0xc0);
            int rc = unpack_both(b.p, b.len, NULL);
            assert_int_equal(rc, levels <= WIRE_HARD_MAX_DEPTH ? 0 : -ELOOP);
            /* A lower limit counts levels as the scanner does: an empty container is one. */
            for (unsigned max = 1; max < WIRE_HARD_MAX_DEPTH; max++) {
                size_t off = 0;
                rc = wire_unpack((const char *)b.p, b.len, &off, &z, max, &o);
                assert_int_equal(rc, levels <= max ? 0 : -ELOOP);
                msgpack_zone_clear(&z);
            }
        }
    }
    msgpack_zone_destroy(&z);
    b_free(&b);
}

static void test_wire_unpack_refuses_lying_counts_without_allocating_them(void **state)
{
    (void)state;
    msgpack_zone z;
    msgpack_object o;
    size_t off;
    static const uint8_t cases[][7] = {
        {0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0}, /* array32 of 2^32-1, two elements */
        {0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0}, /* map32 of 2^32-1, one pair */
        {0xdc, 0xff, 0xff, 0xc0, 0xc0, 0xc0, 0xc0}, /* array16 of 65535 */
        {0x84, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0}, /* fixmap of 4, three pairs */
        {0xdb, 0xff, 0xff, 0xff, 0xff, 'a', 'b'},   /* str32 of 2^32-1 */
        {0xc6, 0x00, 0x00, 0x00, 0x03, 'a', 'b'},   /* bin32 of 3, 2 there, +1 below */
        {0xc9, 0xff, 0xff, 0xff, 0xff, 0x01, 'a'},  /* ext32 of 2^32-1 */
        {0xc9, 0x00, 0x00, 0x00, 0x02, 0x01, 'a'},  /* ext32 of 2, 1 there */
        {0xd8, 0x01, 'a', 'b', 'c', 'd', 'e'},      /* fixext16, 5 there */
        {0xc1, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0}, /* the reserved byte */
    };

    assert_true(msgpack_zone_init(&z, 256));
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        size_t free_before = z.chunk_list.free;
        off = 0;
        assert_int_equal(wire_unpack((const char *)cases[i], sizeof(cases[i]), &off, &z, 8, &o),
                         -EBADMSG);
        assert_int_equal(off, 0);
        /* Refused at the header: nothing was taken from the zone. */
        assert_int_equal(z.chunk_list.free, free_before);
    }
    msgpack_zone_destroy(&z);
}

static void test_wire_unpack_takes_one_object_from_an_offset(void **state)
{
    (void)state;
    msgpack_zone z;
    msgpack_object o;
    struct bytes b = {0};
    size_t off = 0;

    b_fixstr(&b, "one");
    put_uint_widths(&b, 300); /* three objects: cd 01 2c, ce ..., cf ... */
    assert_true(msgpack_zone_init(&z, 256));
    assert_int_equal(wire_unpack((const char *)b.p, b.len, &off, &z, 1, &o), 0);
    assert_int_equal(off, 4);
    assert_true(obj_str_eq(&o, "one"));
    assert_true(o.via.str.ptr == (const char *)b.p + 1); /* referenced, not copied */
    assert_int_equal(wire_unpack((const char *)b.p, b.len, &off, &z, 1, &o), 0);
    assert_int_equal(off, 7);
    assert_int_equal(o.type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_true(o.via.u64 == 300);
    assert_int_equal(wire_unpack((const char *)b.p, b.len, &off, &z, 1, &o), 0);
    assert_int_equal(off, 12);
    assert_int_equal(wire_unpack((const char *)b.p, b.len, &off, &z, 1, &o), 0);
    assert_int_equal(off, b.len);
    assert_int_equal(wire_unpack((const char *)b.p, b.len, &off, &z, 1, &o), -EBADMSG);
    assert_int_equal(off, b.len);
    off = b.len + 1;
    assert_int_equal(wire_unpack((const char *)b.p, b.len, &off, &z, 1, &o), -EINVAL);
    off = 0;
    assert_int_equal(wire_unpack((const char *)b.p, b.len, &off, &z, WIRE_HARD_MAX_DEPTH + 1, &o),
                     -EINVAL);
    /* Bytes after the object are left for the caller, as msgpack-c's EXTRA_BYTES does. */
    size_t end = 0;
    assert_int_equal(unpack_both(b.p, b.len, &end), 0);
    assert_int_equal(end, 4);
    msgpack_zone_destroy(&z);
    b_free(&b);
}

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
        cmocka_unit_test(test_wire_unpack_agrees_with_msgpack_c_on_random_objects),
        cmocka_unit_test(test_wire_unpack_agrees_with_msgpack_c_on_edge_values),
        cmocka_unit_test(test_wire_unpack_depth_is_that_of_the_scanner_and_within_msgpack_c),
        cmocka_unit_test(test_wire_unpack_refuses_lying_counts_without_allocating_them),
        cmocka_unit_test(test_wire_unpack_takes_one_object_from_an_offset),
        cmocka_unit_test(test_wire_socket_path_option_wins),
        cmocka_unit_test(test_wire_socket_path_env_then_runtime_dir_then_default),
        cmocka_unit_test(test_wire_socket_path_empty_option_rejected_empty_env_skipped),
        cmocka_unit_test(test_wire_socket_path_longer_than_sun_path_rejected),
    };

    return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}
