/*
 * test_msg.c - the typed codec of the contract's messages (proto/msg.c).
 *
 * Most checks are generic: they walk the descriptor tables, so a field added to the contract is
 * covered without touching this file. Every descriptor is filled with deterministic random
 * values, encoded, unpacked and decoded, and compared field by field; the encoded map is checked
 * for which keys are sent, left out or nil. Then every field and array element of a fully
 * populated message is, in turn, removed or given a wrong type, and the error must name its
 * path and the type expected, with nothing leaked (ASan). Hand-written cases pin the exact
 * messages and the rules for nil, unknown keys and integer widths.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "wire.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* The descriptors reachable only as parts of a message. */
static const struct msg_desc *const nested_descs[] = {
    &msg_time_desc,          &msg_tensor_desc,        &msg_config_desc,
    &msg_shadow_tensor_desc, &msg_session_state_desc, &msg_server_info_desc,
    &msg_saved_tensor_desc,  &msg_table_desc,         &msg_health_desc,
    &msg_nonfinite_desc,     &msg_profile_desc,       &msg_profile_state_desc,
    &msg_snapshot_entry_desc,
};

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

/* Everything a generated message points to, freed in one go. */
struct pool {
    void **p;
    size_t n, cap;
};

static void *pool_alloc(struct pool *pl, size_t size)
{
    void *m = calloc(1, size ? size : 1);

    assert_non_null(m);
    if (pl->n == pl->cap) {
        pl->cap = pl->cap ? 2 * pl->cap : 64;
        pl->p = realloc(pl->p, pl->cap * sizeof(*pl->p));
        assert_non_null(pl->p);
    }
    pl->p[pl->n++] = m;
    return m;
}

static void pool_free(struct pool *pl)
{
    for (size_t i = 0; i < pl->n; i++)
        free(pl->p[i]);
    free(pl->p);
    memset(pl, 0, sizeof(*pl));
}

static uint64_t random_u64(uint64_t *rng)
{
    switch (rng_below(rng, 7)) {
    case 0: return rng_below(rng, 128);
    case 1: return rng_below(rng, 256);
    case 2: return rng_below(rng, 65536);
    case 3: return rng_next(rng) & 0xffffffffu;
    case 4: return 0;
    case 5: return UINT64_MAX;
    default: return rng_next(rng);
    }
}

static int64_t random_i64(uint64_t *rng)
{
    switch (rng_below(rng, 6)) {
    case 0: return -(int64_t)rng_below(rng, 33);
    case 1: return (int64_t)rng_below(rng, 1u << 20) - (1 << 19);
    case 2: return INT64_MIN;
    case 3: return INT64_MAX;
    default: return (int64_t)rng_next(rng);
    }
}

static double random_f64(uint64_t *rng)
{
    static const double special[] = {0.0,     -0.0,     1.0,      0.5,       0.999, 1e-300,
                                     5e-324,  DBL_MAX,  -DBL_MAX, INFINITY, -INFINITY, 1e19};
    uint64_t bits;
    double v;

    switch (rng_below(rng, 3)) {
    case 0: return special[rng_below(rng, ARRAY_LEN(special))];
    case 1: return (double)(rng_next(rng) >> 11) / 9007199254740992.0; /* [0, 1) */
    default:
        do {
            bits = rng_next(rng);
            memcpy(&v, &bits, sizeof(v));
        } while (isnan(v));
        return v;
    }
}

static size_t utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Empty (as NULL and as ""), names the contract uses, and random UTF-8 from one to a few
 * hundred bytes, so that fixstr, str8 and str16 all occur. */
static struct msg_str random_str(uint64_t *rng, struct pool *pl)
{
    static const char *const samples[] = {
        "",           "s1",        "l1.weight",  "f32",        "bf16",
        "1000ba",     "0.25dur",   "/emad-1234", "h\xc3\xa9llo w\xc3\xb6rld",
        "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",  "\xf0\x9f\x98\x80", "tab\tnewline\nquote\"",
    };
    size_t kind = rng_below(rng, 6), ncp, len = 0;
    char *buf;

    if (kind == 0)
        return msg_str_c(samples[rng_below(rng, ARRAY_LEN(samples))]);
    if (kind == 1)
        return (struct msg_str){NULL, 0};
    ncp = kind == 5 ? 60 + rng_below(rng, 120) : rng_below(rng, 40);
    buf = pool_alloc(pl, 4 * ncp + 1);
    for (size_t i = 0; i < ncp; i++) {
        uint32_t cp;
        switch (rng_below(rng, 4)) {
        case 0: cp = 0x20 + (uint32_t)rng_below(rng, 0x5f); break;
        case 1: cp = 0x80 + (uint32_t)rng_below(rng, 0x780); break;
        case 2:
            cp = 0x800 + (uint32_t)rng_below(rng, 0xf800);
            if (cp >= 0xd800 && cp < 0xe000)
                cp -= 0x800;
            break;
        default: cp = 0x10000 + (uint32_t)rng_below(rng, 0x100000); break;
        }
        len += utf8_put(buf + len, cp);
    }
    return (struct msg_str){buf, len};
}

static bool field_optional(const struct msg_field *f)
{
    return (f->flags & (MSG_OPTIONAL | MSG_NULLABLE)) != 0;
}

static bool *field_has(const struct msg_field *f, void *obj)
{
    return (bool *)((char *)obj + f->has_offset);
}

static size_t *field_count(const struct msg_field *f, void *obj)
{
    return (size_t *)((char *)obj + f->count_offset);
}

static size_t value_size(const struct msg_field *f)
{
    switch (f->type) {
    case MSG_U64: return sizeof(uint64_t);
    case MSG_I64: return sizeof(int64_t);
    case MSG_F64: return sizeof(double);
    case MSG_BOOL: return sizeof(bool);
    case MSG_STR: return sizeof(struct msg_str);
    case MSG_OBJ: return f->sub->size;
    default: return sizeof(void *);
    }
}

static bool all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0)
            return false;
    return true;
}

/* Fill obj by walking d. full: every optional field present and every array 1..3 long;
 * otherwise presence is random and arrays are 0..5 long. Absent values are filled as well:
 * the encoder must ignore them. */
static void fill(const struct msg_desc *d, void *obj, uint64_t *rng, struct pool *pl, bool full)
{
    char *o = obj;

    for (size_t i = 0; i < d->nfields; i++) {
        const struct msg_field *f = &d->fields[i];
        char *slot = o + f->offset;
        size_t n;

        if (field_optional(f))
            *field_has(f, o) = full || rng_below(rng, 3) != 0;
        switch (f->type) {
        case MSG_U64: *(uint64_t *)slot = random_u64(rng); break;
        case MSG_I64: *(int64_t *)slot = random_i64(rng); break;
        case MSG_F64: *(double *)slot = random_f64(rng); break;
        case MSG_BOOL: *(bool *)slot = rng_below(rng, 2) != 0; break;
        case MSG_STR: *(struct msg_str *)slot = random_str(rng, pl); break;
        case MSG_OBJ: fill(f->sub, slot, rng, pl, full); break;
        case MSG_NAMED: {
            char *arr;
            n = full ? 1 + rng_below(rng, 3) : rng_below(rng, 6);
            arr = n == 0 && rng_below(rng, 2) ? NULL : pool_alloc(pl, n * f->sub->size);
            for (size_t k = 0; k < n; k++) {
                fill(f->sub, arr + k * f->sub->size, rng, pl, full);
                *(struct msg_str *)(arr + k * f->sub->size) = random_str(rng, pl);
            }
            *(char **)slot = arr;
            *field_count(f, o) = n;
            break;
        }
        case MSG_ARRAY:
        case MSG_STR_ARRAY:
        case MSG_U64_ARRAY: {
            size_t elem = f->type == MSG_ARRAY       ? f->sub->size
                          : f->type == MSG_STR_ARRAY ? sizeof(struct msg_str)
                                                     : sizeof(uint64_t);
            char *arr;
            n = full ? 1 + rng_below(rng, 3) : rng_below(rng, 6);
            arr = n == 0 && rng_below(rng, 2) ? NULL : pool_alloc(pl, n * elem);
            for (size_t k = 0; k < n; k++) {
                if (f->type == MSG_ARRAY)
                    fill(f->sub, arr + k * elem, rng, pl, full);
                else if (f->type == MSG_STR_ARRAY)
                    ((struct msg_str *)arr)[k] = random_str(rng, pl);
                else
                    ((uint64_t *)arr)[k] = random_u64(rng);
            }
            *(char **)slot = arr;
            *field_count(f, o) = n;
            break;
        }
        }
    }
}

static const msgpack_object_kv *find_kv(const msgpack_object *map, const char *key)
{
    size_t n = strlen(key);

    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &map->via.map.ptr[i];
    }
    return NULL;
}

static void check_encoded_str(const char *path, const msgpack_object *v, struct msg_str s)
{
    if (v->type != MSGPACK_OBJECT_STR || v->via.str.size != s.len ||
        (s.len > 0 && memcmp(v->via.str.ptr, s.ptr, s.len) != 0))
        fail_msg("%s: not sent as the string given", path);
}

/* The encoded form of obj: required fields sent, optional ones only when present, nullable ones
 * as nil when absent, every value in the msgpack type the contract names. */
static void check_encoded(const struct msg_desc *d, const void *obj, const msgpack_object *map,
                          const char *path)
{
    const char *o = obj;
    uint32_t expected = 0;

    if (map->type != MSGPACK_OBJECT_MAP)
        fail_msg("%s: not encoded as a map", path);
    for (size_t i = 0; i < d->nfields; i++) {
        const struct msg_field *f = &d->fields[i];
        const char *slot = o + f->offset;
        const msgpack_object_kv *kv = find_kv(map, f->key);
        bool has = !field_optional(f) || *field_has(f, (void *)o);
        char p[256];

        snprintf(p, sizeof(p), "%s.%s", path, f->key);
        if (!has && (f->flags & MSG_OPTIONAL)) {
            if (kv != NULL)
                fail_msg("%s: absent but sent", p);
            continue;
        }
        expected++;
        if (kv == NULL)
            fail_msg("%s: not sent", p);
        if (!has) {
            if (kv->val.type != MSGPACK_OBJECT_NIL)
                fail_msg("%s: absent nullable field not sent as nil", p);
            continue;
        }
        const msgpack_object *v = &kv->val;
        switch (f->type) {
        case MSG_U64:
            if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 != *(const uint64_t *)slot)
                fail_msg("%s: not sent as the unsigned integer given", p);
            break;
        case MSG_I64: {
            int64_t want = *(const int64_t *)slot;
            bool ok = want < 0 ? v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && v->via.i64 == want
                               : v->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                                     v->via.u64 == (uint64_t)want;
            if (!ok)
                fail_msg("%s: not sent as the integer given", p);
            break;
        }
        case MSG_F64:
            if (v->type != MSGPACK_OBJECT_FLOAT64 && v->type != MSGPACK_OBJECT_FLOAT32)
                fail_msg("%s: not sent as a float", p);
            break;
        case MSG_BOOL:
            if (v->type != MSGPACK_OBJECT_BOOLEAN || v->via.boolean != *(const bool *)slot)
                fail_msg("%s: not sent as the boolean given", p);
            break;
        case MSG_STR: check_encoded_str(p, v, *(const struct msg_str *)slot); break;
        case MSG_OBJ: check_encoded(f->sub, slot, v, p); break;
        case MSG_NAMED: {
            size_t n = *field_count(f, (void *)o);
            const char *arr = *(char *const *)slot;
            if (v->type != MSGPACK_OBJECT_MAP || v->via.map.size != n)
                fail_msg("%s: not sent as a map of %zu", p, n);
            for (size_t k = 0; k < n; k++) {
                char pk[280];
                snprintf(pk, sizeof(pk), "%s[%zu]", p, k);
                check_encoded_str(pk, &v->via.map.ptr[k].key,
                                  *(const struct msg_str *)(arr + k * f->sub->size));
                check_encoded(f->sub, arr + k * f->sub->size, &v->via.map.ptr[k].val, pk);
            }
            break;
        }
        case MSG_ARRAY:
        case MSG_STR_ARRAY:
        case MSG_U64_ARRAY: {
            size_t n = *field_count(f, (void *)o);
            const char *arr = *(char *const *)slot;
            if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size != n)
                fail_msg("%s: not sent as an array of %zu", p, n);
            for (size_t k = 0; k < n; k++) {
                char pk[280];
                snprintf(pk, sizeof(pk), "%s[%zu]", p, k);
                if (f->type == MSG_ARRAY)
                    check_encoded(f->sub, arr + k * f->sub->size, &v->via.array.ptr[k], pk);
                else if (f->type == MSG_STR_ARRAY)
                    check_encoded_str(pk, &v->via.array.ptr[k], ((const struct msg_str *)arr)[k]);
                else if (v->via.array.ptr[k].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                         v->via.array.ptr[k].via.u64 != ((const uint64_t *)arr)[k])
                    fail_msg("%s: not sent as the unsigned integer given", pk);
            }
            break;
        }
        }
    }
    if (map->via.map.size != expected)
        fail_msg("%s: %u keys sent, %u expected", path, map->via.map.size, expected);
}

/* A decoded string: equal to what was encoded, and a view into the encoded bytes. */
static void compare_str(const char *path, struct msg_str want, struct msg_str got,
                        const msgpack_sbuffer *sb)
{
    if (want.len != got.len)
        fail_msg("%s: length %zu decoded as %zu", path, want.len, got.len);
    if (got.len == 0)
        return;
    if (memcmp(want.ptr, got.ptr, got.len) != 0)
        fail_msg("%s: string differs", path);
    if (got.ptr < sb->data || got.ptr + got.len > sb->data + sb->size)
        fail_msg("%s: decoded string is not a view into the message", path);
}

static void compare(const struct msg_desc *d, const void *want, const void *got, const char *path,
                    const msgpack_sbuffer *sb)
{
    const char *w = want, *g = got;

    for (size_t i = 0; i < d->nfields; i++) {
        const struct msg_field *f = &d->fields[i];
        const char *ws = w + f->offset, *gs = g + f->offset;
        char p[256];

        snprintf(p, sizeof(p), "%s.%s", path, f->key);
        if (field_optional(f)) {
            bool wh = *field_has(f, (void *)w), gh = *field_has(f, (void *)g);
            if (wh != gh)
                fail_msg("%s: present %d, decoded as present %d", p, wh, gh);
            if (!wh) {
                if (!all_zero(gs, value_size(f)))
                    fail_msg("%s: absent but its value is not zeroed", p);
                continue;
            }
        }
        switch (f->type) {
        case MSG_U64:
            if (*(const uint64_t *)ws != *(const uint64_t *)gs)
                fail_msg("%s: %llu decoded as %llu", p, (unsigned long long)*(const uint64_t *)ws,
                         (unsigned long long)*(const uint64_t *)gs);
            break;
        case MSG_I64:
            if (*(const int64_t *)ws != *(const int64_t *)gs)
                fail_msg("%s: %lld decoded as %lld", p, (long long)*(const int64_t *)ws,
                         (long long)*(const int64_t *)gs);
            break;
        case MSG_F64:
            if (memcmp(ws, gs, sizeof(double)) != 0)
                fail_msg("%s: %a decoded as %a", p, *(const double *)ws, *(const double *)gs);
            break;
        case MSG_BOOL:
            if (*(const bool *)ws != *(const bool *)gs)
                fail_msg("%s: boolean differs", p);
            break;
        case MSG_STR:
            compare_str(p, *(const struct msg_str *)ws, *(const struct msg_str *)gs, sb);
            break;
        case MSG_OBJ: compare(f->sub, ws, gs, p, sb); break;
        case MSG_NAMED: {
            size_t n = *field_count(f, (void *)w), sz = f->sub->size;
            const char *wa = *(char *const *)ws, *ga = *(char *const *)gs;
            if (*field_count(f, (void *)g) != n)
                fail_msg("%s: %zu entries decoded as %zu", p, n, *field_count(f, (void *)g));
            for (size_t k = 0; k < n; k++) {
                char pk[280];
                snprintf(pk, sizeof(pk), "%s[%zu]", p, k);
                compare_str(pk, *(const struct msg_str *)(wa + k * sz),
                            *(const struct msg_str *)(ga + k * sz), sb);
                compare(f->sub, wa + k * sz, ga + k * sz, pk, sb);
            }
            break;
        }
        case MSG_ARRAY:
        case MSG_STR_ARRAY:
        case MSG_U64_ARRAY: {
            size_t n = *field_count(f, (void *)w);
            const char *wa = *(char *const *)ws, *ga = *(char *const *)gs;
            if (*field_count(f, (void *)g) != n)
                fail_msg("%s: %zu elements decoded as %zu", p, n, *field_count(f, (void *)g));
            for (size_t k = 0; k < n; k++) {
                char pk[280];
                snprintf(pk, sizeof(pk), "%s[%zu]", p, k);
                if (f->type == MSG_ARRAY)
                    compare(f->sub, wa + k * f->sub->size, ga + k * f->sub->size, pk, sb);
                else if (f->type == MSG_STR_ARRAY)
                    compare_str(pk, ((const struct msg_str *)wa)[k],
                                ((const struct msg_str *)ga)[k], sb);
                else if (((const uint64_t *)wa)[k] != ((const uint64_t *)ga)[k])
                    fail_msg("%s: element differs", pk);
            }
            break;
        }
        }
    }
}

/* After msg_free(): every array released and its count reset, nested objects included. */
static void check_freed(const struct msg_desc *d, const void *obj)
{
    const char *o = obj;

    for (size_t i = 0; i < d->nfields; i++) {
        const struct msg_field *f = &d->fields[i];
        if (f->type == MSG_OBJ)
            check_freed(f->sub, o + f->offset);
        if (f->type == MSG_ARRAY || f->type == MSG_STR_ARRAY || f->type == MSG_U64_ARRAY ||
            f->type == MSG_NAMED) {
            assert_null(*(void *const *)(o + f->offset));
            assert_int_equal(*field_count(f, (void *)o), 0);
        }
    }
}

/* Pack obj with msg_encode() and unpack it into up; the bytes stay in sb. */
static const msgpack_object *encode(const struct msg_desc *d, const void *obj,
                                    msgpack_sbuffer *sb, msgpack_unpacked *up)
{
    msgpack_packer pk;
    size_t off = 0;

    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msg_encode(&pk, d, obj);
    msgpack_unpacked_init(up);
    assert_int_equal(msgpack_unpack_next(up, sb->data, sb->size, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, sb->size);
    return &up->data;
}

static void round_trip(const struct msg_desc *d, uint64_t *rng, int rounds, bool full)
{
    for (int r = 0; r < rounds; r++) {
        struct pool pl = {0};
        void *want = pool_alloc(&pl, d->size);
        void *got = malloc(d->size);
        msgpack_sbuffer sb;
        msgpack_unpacked up;
        char err[256] = "";
        int rc;

        assert_non_null(got);
        fill(d, want, rng, &pl, full);
        const msgpack_object *map = encode(d, want, &sb, &up);
        check_encoded(d, want, map, d->name);
        memset(got, 0x5a, d->size); /* msg_decode() must not rely on a zeroed struct */
        rc = msg_decode(d, map, got, err, sizeof(err));
        if (rc != 0)
            fail_msg("%s, round %d: %s", d->name, r, err);
        compare(d, want, got, d->name, &sb);
        msg_free(d, got);
        check_freed(d, got);
        msg_free(d, got); /* a second free finds nothing left */
        free(got);
        msgpack_unpacked_destroy(&up);
        msgpack_sbuffer_destroy(&sb);
        pool_free(&pl);
    }
}

/* Hand-built maps for the error cases. */
struct packed {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_unpacked up;
};

static msgpack_packer *pk_begin(struct packed *p)
{
    msgpack_sbuffer_init(&p->sb);
    msgpack_packer_init(&p->pk, &p->sb, msgpack_sbuffer_write);
    msgpack_unpacked_init(&p->up);
    return &p->pk;
}

static const msgpack_object *pk_end(struct packed *p)
{
    size_t off = 0;

    assert_int_equal(msgpack_unpack_next(&p->up, p->sb.data, p->sb.size, &off),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, p->sb.size);
    return &p->up.data;
}

static void pk_done(struct packed *p)
{
    msgpack_unpacked_destroy(&p->up);
    msgpack_sbuffer_destroy(&p->sb);
}

static void k(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

static void kv_str(msgpack_packer *pk, const char *key, const char *v)
{
    k(pk, key);
    k(pk, v);
}

static void kv_u(msgpack_packer *pk, const char *key, uint64_t v)
{
    k(pk, key);
    msgpack_pack_uint64(pk, v);
}

static void kv_i(msgpack_packer *pk, const char *key, int64_t v)
{
    k(pk, key);
    msgpack_pack_int64(pk, v);
}

static void kv_nil(msgpack_packer *pk, const char *key)
{
    k(pk, key);
    msgpack_pack_nil(pk);
}

/* {"name": name, "dtype": dtype or left out, "offset": o, "numel": n, "shape": shape} */
static void pack_tensor(msgpack_packer *pk, const char *name, const char *dtype, uint64_t offset,
                        const uint64_t *shape, size_t nshape)
{
    msgpack_pack_map(pk, 3 + (dtype != NULL) + (shape != NULL));
    kv_str(pk, "name", name);
    if (dtype != NULL)
        kv_str(pk, "dtype", dtype);
    kv_u(pk, "offset", offset);
    kv_u(pk, "numel", 4);
    if (shape != NULL) {
        k(pk, "shape");
        msgpack_pack_array(pk, nshape);
        for (size_t i = 0; i < nshape; i++)
            msgpack_pack_uint64(pk, shape[i]);
    }
}

/* msg_decode() must fail with exactly want_err, leave the struct zeroed (nothing to free) and
 * accept a msg_free() all the same. */
static void expect_decode_error(const struct msg_desc *d, const msgpack_object *map,
                                const char *want_err)
{
    void *out = malloc(d->size);
    char err[256] = "";

    assert_non_null(out);
    memset(out, 0x5a, d->size);
    assert_int_equal(msg_decode(d, map, out, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, want_err);
    assert_true(all_zero(out, d->size));
    msg_free(d, out);
    free(out);
}

static void *decode_ok(const struct msg_desc *d, const msgpack_object *map)
{
    void *out = malloc(d->size);
    char err[256] = "";

    assert_non_null(out);
    memset(out, 0x5a, d->size);
    if (msg_decode(d, map, out, err, sizeof(err)) != 0)
        fail_msg("%s: %s", d->name, err);
    return out;
}

/* ---- Descriptors and round trips ---------------------------------------------------------- */

static void test_msg_descriptor_tables_are_consistent(void **state)
{
    const struct msg_desc *all[32];
    size_t n = 0;
    (void)state;

    for (size_t i = 0; msg_all_descs[i] != NULL; i++)
        all[n++] = msg_all_descs[i];
    /* hello, register, event, swap, status, save/load, close, drop, their replies, error,
     * the empty result, metrics' reply, the state file's metadata, and snapshot/snapshots and
     * their reply: nineteen messages. */
    assert_int_equal(n, 19);
    for (size_t i = 0; i < ARRAY_LEN(nested_descs); i++)
        all[n++] = nested_descs[i];

    for (size_t i = 0; i < n; i++) {
        const struct msg_desc *d = all[i];
        assert_non_null(d->name);
        assert_true(d->size > 0);
        for (size_t j = 0; j < i; j++)
            if (all[j] == d || strcmp(all[j]->name, d->name) == 0)
                fail_msg("descriptor \"%s\" listed twice", d->name);
        for (size_t f = 0; f < d->nfields; f++) {
            const struct msg_field *fl = &d->fields[f];
            assert_non_null(fl->key);
            if (fl->keylen != strlen(fl->key))
                fail_msg("%s.%s: keylen %zu", d->name, fl->key, fl->keylen);
            if (fl->offset + value_size(fl) > d->size)
                fail_msg("%s.%s: value outside the struct", d->name, fl->key);
            if (field_optional(fl) && fl->has_offset + sizeof(bool) > d->size)
                fail_msg("%s.%s: has_ flag outside the struct", d->name, fl->key);
            if ((fl->type == MSG_OBJ || fl->type == MSG_ARRAY || fl->type == MSG_NAMED) &&
                fl->sub == NULL)
                fail_msg("%s.%s: no sub-descriptor", d->name, fl->key);
            if ((fl->type == MSG_ARRAY || fl->type == MSG_STR_ARRAY ||
                 fl->type == MSG_U64_ARRAY || fl->type == MSG_NAMED) &&
                fl->count_offset + sizeof(size_t) > d->size)
                fail_msg("%s.%s: count outside the struct", d->name, fl->key);
            for (size_t g = 0; g < f; g++)
                if (strcmp(d->fields[g].key, fl->key) == 0)
                    fail_msg("%s: key \"%s\" twice", d->name, fl->key);
        }
    }
    /* Every nested descriptor is reachable from a message. */
    for (size_t i = 0; i < ARRAY_LEN(nested_descs); i++) {
        bool used = false;
        for (size_t j = 0; j < n && !used; j++)
            for (size_t f = 0; f < all[j]->nfields; f++)
                used |= all[j]->fields[f].sub == nested_descs[i];
        if (!used)
            fail_msg("%s: used by no message", nested_descs[i]->name);
    }
}

static void test_msg_every_message_round_trips(void **state)
{
    uint64_t rng = 0x6d736701;
    (void)state;

    for (size_t i = 0; msg_all_descs[i] != NULL; i++) {
        round_trip(msg_all_descs[i], &rng, 300, false);
        round_trip(msg_all_descs[i], &rng, 20, true);
    }
}

static void test_msg_every_nested_part_round_trips(void **state)
{
    uint64_t rng = 0x6d736702;
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(nested_descs); i++) {
        round_trip(nested_descs[i], &rng, 300, false);
        round_trip(nested_descs[i], &rng, 20, true);
    }
}

/* The codec with the wire decoder, as emad uses them: the params of a request. */
static void test_msg_register_request_through_the_wire_decoder(void **state)
{
    uint64_t rng = 0x6d736703;
    (void)state;

    for (int r = 0; r < 50; r++) {
        struct pool pl = {0};
        struct msg_register *want = pool_alloc(&pl, sizeof(*want));
        struct msg_register got;
        struct wire_decoder dec;
        struct wire_msg m;
        struct wire_fault f;
        msgpack_sbuffer sb;
        msgpack_packer pk;
        char err[256] = "";

        fill(&msg_register_desc, want, &rng, &pl, r % 2 == 0);
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        wire_pack_request_head(&pk, (uint32_t)r, "register");
        msg_encode(&pk, &msg_register_desc, want);
        assert_int_equal(wire_decoder_init(&dec, WIRE_DEFAULT_MAX_MESSAGE, WIRE_DEFAULT_MAX_DEPTH),
                         0);
        assert_int_equal(wire_decoder_feed(&dec, sb.data, sb.size), 0);
        assert_int_equal(wire_decoder_next(&dec, &m, &f), 1);
        assert_int_equal(m.msgid, (uint32_t)r);
        if (msg_decode(&msg_register_desc, m.params, &got, err, sizeof(err)) != 0)
            fail_msg("register: %s", err);
        /* Strings are views into the decoder's buffer now. */
        msgpack_sbuffer view = {.size = dec.len, .data = dec.buf, .alloc = dec.cap};
        compare(&msg_register_desc, want, &got, "register", &view);
        msg_free(&msg_register_desc, &got);
        wire_decoder_free(&dec);
        msgpack_sbuffer_destroy(&sb);
        pool_free(&pl);
    }
}

static void test_msg_empty_result_is_an_empty_map(void **state)
{
    struct msg_empty e = {0};
    msgpack_sbuffer sb;
    msgpack_unpacked up;
    (void)state;

    const msgpack_object *map = encode(&msg_empty_desc, &e, &sb, &up);
    assert_int_equal(sb.size, 1);
    assert_int_equal((uint8_t)sb.data[0], 0x80);
    assert_int_equal(map->via.map.size, 0);
    void *out = decode_ok(&msg_empty_desc, map);
    msg_free(&msg_empty_desc, out);
    free(out);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
}

/* ---- Errors name the path ----------------------------------------------------------------- */

/* One place in an encoded message: a field (with its key) or an element of an array field. */
struct site {
    char path[208];
    const struct msg_field *field;
    bool element;
    msgpack_object *key; /* fields only */
    msgpack_object *val;
};

struct sites {
    struct site *v;
    size_t n, cap;
};

static void site_add(struct sites *s, const char *path, const struct msg_field *f, bool element,
                     msgpack_object *key, msgpack_object *val)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->v = realloc(s->v, s->cap * sizeof(*s->v));
        assert_non_null(s->v);
    }
    struct site *t = &s->v[s->n++];
    snprintf(t->path, sizeof(t->path), "%s", path);
    t->field = f;
    t->element = element;
    t->key = key;
    t->val = val;
}

/* Every field and element of map, described by d, with the path msg_decode() reports. */
static void collect_sites(const struct msg_desc *d, msgpack_object *map, const char *path,
                          struct sites *out)
{
    for (size_t i = 0; i < d->nfields; i++) {
        const struct msg_field *f = &d->fields[i];
        msgpack_object_kv *kv = (msgpack_object_kv *)find_kv(map, f->key);
        char p[192];

        if (kv == NULL)
            continue;
        snprintf(p, sizeof(p), path[0] ? "%s.%s" : "%s%s", path, f->key);
        site_add(out, p, f, false, &kv->key, &kv->val);
        if (kv->val.type == MSGPACK_OBJECT_NIL)
            continue;
        if (f->type == MSG_OBJ)
            collect_sites(f->sub, &kv->val, p, out);
        if (f->type == MSG_NAMED) {
            for (uint32_t e = 0; e < kv->val.via.map.size; e++) {
                char pe[208];
                msgpack_object_kv *ekv = &kv->val.via.map.ptr[e];
                /* The decoder shows at most 64 bytes of a key. */
                snprintf(pe, sizeof(pe), "%s.%.*s", p,
                         (int)(ekv->key.via.str.size > 64 ? 64 : ekv->key.via.str.size),
                         ekv->key.via.str.ptr);
                site_add(out, pe, f, true, NULL, &ekv->val);
                collect_sites(f->sub, &ekv->val, pe, out);
            }
        }
        if (f->type == MSG_ARRAY || f->type == MSG_STR_ARRAY || f->type == MSG_U64_ARRAY) {
            for (uint32_t e = 0; e < kv->val.via.array.size; e++) {
                char pe[208];
                msgpack_object *elem = &kv->val.via.array.ptr[e];
                snprintf(pe, sizeof(pe), "%s[%u]", p, e);
                site_add(out, pe, f, true, NULL, elem);
                if (f->type == MSG_ARRAY)
                    collect_sites(f->sub, elem, pe, out);
            }
        }
    }
}

/* A value of the wrong type for a site, and the words the error must use. nil_variant: nil
 * instead (wrong only where a value is required). */
static msgpack_object wrong_value(const struct site *s, bool nil_variant, const char **expect)
{
    static const char text[] = "0.5";
    msgpack_object o;
    enum msg_type t = s->field->type;

    memset(&o, 0, sizeof(o));
    if (s->element)
        t = t == MSG_ARRAY || t == MSG_NAMED ? MSG_OBJ : t == MSG_STR_ARRAY ? MSG_STR : MSG_U64;
    switch (t) {
    case MSG_U64:
        *expect = "expected a non-negative integer";
        o.type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
        o.via.i64 = -1;
        break;
    case MSG_I64:
        *expect = "expected an integer";
        o.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o.via.u64 = (uint64_t)INT64_MAX + 1;
        break;
    case MSG_F64:
        *expect = "expected a number";
        o.type = MSGPACK_OBJECT_STR;
        o.via.str.ptr = text;
        o.via.str.size = 3;
        break;
    case MSG_BOOL:
        *expect = "expected true or false";
        o.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o.via.u64 = 1;
        break;
    case MSG_STR:
        *expect = "expected a string";
        o.type = MSGPACK_OBJECT_BIN;
        o.via.bin.ptr = text;
        o.via.bin.size = 3;
        break;
    case MSG_OBJ:
        *expect = "expected a map";
        o.type = MSGPACK_OBJECT_ARRAY;
        break;
    case MSG_NAMED:
        *expect = "expected a map of names to maps";
        o.type = MSGPACK_OBJECT_ARRAY;
        break;
    default:
        *expect = "expected an array";
        o.type = MSGPACK_OBJECT_MAP;
        break;
    }
    if (nil_variant)
        o.type = MSGPACK_OBJECT_NIL;
    return o;
}

/* Remove every required field and spoil every field and element of a fully populated message,
 * one at a time: each error names the path and what was expected. Absent optional fields and
 * nil optional ones decode. ASan checks that failures midway (after arrays were allocated)
 * leak nothing. */
static void test_msg_every_field_error_names_its_path(void **state)
{
    const struct msg_desc *all[32];
    size_t n = 0;
    uint64_t rng = 0x6d736704;
    unsigned checked = 0;
    (void)state;

    for (size_t i = 0; msg_all_descs[i] != NULL; i++)
        all[n++] = msg_all_descs[i];
    for (size_t i = 0; i < ARRAY_LEN(nested_descs); i++)
        all[n++] = nested_descs[i];

    for (size_t i = 0; i < n; i++) {
        const struct msg_desc *d = all[i];
        struct pool pl = {0};
        void *obj = pool_alloc(&pl, d->size);
        struct sites sites = {0};
        msgpack_sbuffer sb;
        msgpack_unpacked up;

        fill(d, obj, &rng, &pl, true);
        encode(d, obj, &sb, &up);
        collect_sites(d, &up.data, "", &sites);

        for (size_t s = 0; s < sites.n; s++) {
            struct site *t = &sites.v[s];
            bool optional = !t->element && field_optional(t->field);
            char want[256];
            const char *expect;

            if (!t->element && !optional) {
                msgpack_object key = *t->key;
                t->key->type = MSGPACK_OBJECT_NIL; /* the key is no longer a string */
                snprintf(want, sizeof(want), "%s: missing", t->path);
                expect_decode_error(d, &up.data, want);
                *t->key = key;
                checked++;
            }
            for (int nil_variant = 0; nil_variant < 2; nil_variant++) {
                msgpack_object val = *t->val;
                *t->val = wrong_value(t, nil_variant, &expect);
                if (nil_variant && optional) {
                    void *out = decode_ok(d, &up.data);
                    msg_free(d, out);
                    free(out);
                } else {
                    snprintf(want, sizeof(want), "%s: %s", t->path, expect);
                    expect_decode_error(d, &up.data, want);
                    checked++;
                }
                *t->val = val;
            }
        }
        /* Restored, the message decodes again. */
        void *out = decode_ok(d, &up.data);
        msg_free(d, out);
        free(out);
        free(sites.v);
        msgpack_unpacked_destroy(&up);
        msgpack_sbuffer_destroy(&sb);
        pool_free(&pl);
    }
    assert_true(checked > 200);
}

static void test_msg_missing_required_field_names_the_path(void **state)
{
    static const uint64_t shape[] = {2, 2};
    struct packed p;
    msgpack_packer *pk;
    (void)state;

    /* register with a third tensor lacking its dtype, after two with shapes allocated. */
    pk = pk_begin(&p);
    msgpack_pack_map(pk, 3);
    kv_str(pk, "session", "s1");
    kv_str(pk, "shm", "/emad-1");
    k(pk, "tensors");
    msgpack_pack_array(pk, 4);
    pack_tensor(pk, "a", "f32", 0, shape, 2);
    pack_tensor(pk, "b", "bf16", 64, shape, 2);
    pack_tensor(pk, "c", NULL, 128, shape, 2);
    pack_tensor(pk, "d", "f32", 192, NULL, 0);
    expect_decode_error(&msg_register_desc, pk_end(&p), "tensors[2].dtype: missing");
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 2);
    kv_str(pk, "session", "s1");
    k(pk, "tensors");
    msgpack_pack_array(pk, 0);
    expect_decode_error(&msg_register_desc, pk_end(&p), "shm: missing");
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 0);
    expect_decode_error(&msg_hello_desc, pk_end(&p), "proto: missing");
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 2);
    kv_str(pk, "session", "s1");
    kv_str(pk, "event", "batch_end");
    expect_decode_error(&msg_event_desc, pk_end(&p), "time: missing");
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 3);
    kv_str(pk, "session", "s1");
    kv_str(pk, "event", "batch_end");
    k(pk, "time");
    msgpack_pack_map(pk, 1);
    kv_u(pk, "batch", 1);
    expect_decode_error(&msg_event_desc, pk_end(&p), "time.epoch: missing");
    pk_done(&p);

    /* A key of the right name but not a string type does not count. */
    pk = pk_begin(&p);
    msgpack_pack_map(pk, 2);
    kv_str(pk, "session", "s1");
    msgpack_pack_bin(pk, 2);
    msgpack_pack_bin_body(pk, "to", 2);
    msgpack_pack_str(pk, 3);
    msgpack_pack_str_body(pk, "ema", 3);
    expect_decode_error(&msg_swap_desc, pk_end(&p), "to: missing");
    pk_done(&p);
}

static void test_msg_wrong_type_names_field_and_expected_type(void **state)
{
    static const uint64_t shape[] = {2, 2};
    struct packed p;
    msgpack_packer *pk;
    (void)state;

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 2);
    kv_str(pk, "proto", "1");
    kv_str(pk, "client", "c");
    expect_decode_error(&msg_hello_desc, pk_end(&p), "proto: expected a non-negative integer");
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 2);
    kv_u(pk, "proto", 1);
    kv_u(pk, "client", 5);
    expect_decode_error(&msg_hello_desc, pk_end(&p), "client: expected a string");
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 3);
    kv_u(pk, "proto", 1);
    kv_str(pk, "client", "c");
    k(pk, "pid");
    msgpack_pack_double(pk, 12.0);
    expect_decode_error(&msg_hello_desc, pk_end(&p), "pid: expected an integer");
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 4);
    kv_str(pk, "session", "s1");
    kv_str(pk, "shm", "/emad-1");
    k(pk, "tensors");
    msgpack_pack_array(pk, 0);
    kv_u(pk, "resume", 1);
    expect_decode_error(&msg_register_desc, pk_end(&p), "resume: expected true or false");
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 4);
    kv_str(pk, "session", "s1");
    kv_str(pk, "shm", "/emad-1");
    k(pk, "tensors");
    msgpack_pack_array(pk, 1);
    pack_tensor(pk, "a", "f32", 0, shape, 2);
    k(pk, "config");
    msgpack_pack_map(pk, 2);
    kv_str(pk, "half_life", "10ba");
    kv_str(pk, "smoothing", "0.9");
    expect_decode_error(&msg_register_desc, pk_end(&p), "config.smoothing: expected a number");
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 3);
    kv_str(pk, "session", "s1");
    kv_str(pk, "shm", "/emad-1");
    k(pk, "tensors");
    msgpack_pack_map(pk, 0);
    expect_decode_error(&msg_register_desc, pk_end(&p), "tensors: expected an array");
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 3);
    kv_str(pk, "session", "s1");
    kv_str(pk, "shm", "/emad-1");
    k(pk, "tensors");
    msgpack_pack_array(pk, 2);
    pack_tensor(pk, "a", "f32", 0, shape, 2);
    msgpack_pack_uint8(pk, 5);
    expect_decode_error(&msg_register_desc, pk_end(&p), "tensors[1]: expected a map");
    pk_done(&p);

    /* Deep inside an array inside an array element. */
    pk = pk_begin(&p);
    msgpack_pack_map(pk, 3);
    kv_str(pk, "session", "s1");
    kv_str(pk, "shm", "/emad-1");
    k(pk, "tensors");
    msgpack_pack_array(pk, 2);
    pack_tensor(pk, "a", "f32", 0, shape, 2);
    msgpack_pack_map(pk, 5);
    kv_str(pk, "name", "b");
    kv_str(pk, "dtype", "f32");
    kv_u(pk, "offset", 64);
    kv_u(pk, "numel", 6);
    k(pk, "shape");
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint8(pk, 2);
    msgpack_pack_uint8(pk, 3);
    msgpack_pack_int8(pk, -1);
    expect_decode_error(&msg_register_desc, pk_end(&p),
                        "tensors[1].shape[2]: expected a non-negative integer");
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 5);
    kv_u(pk, "proto", 1);
    kv_str(pk, "server", "emad");
    kv_i(pk, "pid", 12);
    kv_u(pk, "workers", 2);
    k(pk, "features");
    msgpack_pack_array(pk, 2);
    k(pk, "resume");
    msgpack_pack_true(pk);
    expect_decode_error(&msg_hello_reply_desc, pk_end(&p), "features[1]: expected a string");
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 3);
    kv_str(pk, "session", "s1");
    kv_str(pk, "event", "batch_end");
    k(pk, "time");
    msgpack_pack_array(pk, 0);
    expect_decode_error(&msg_event_desc, pk_end(&p), "time: expected a map");
    pk_done(&p);

    /* Not a map at all. */
    pk = pk_begin(&p);
    msgpack_pack_array(pk, 0);
    expect_decode_error(&msg_hello_desc, pk_end(&p), "hello: expected a map");
    pk_done(&p);
    expect_decode_error(&msg_register_desc, NULL, "register: expected a map");
}

/* ---- Presence, nil, unknown keys, numbers ------------------------------------------------- */

static void test_msg_nullable_fields_encode_nil_and_decode_absent(void **state)
{
    struct msg_session_state st;
    struct msg_session_state *got;
    msgpack_sbuffer sb;
    msgpack_unpacked up;
    (void)state;

    memset(&st, 0, sizeof(st));
    st.session = msg_str_c("s1");
    st.attached = false;
    st.has_owner_pid = false;
    st.owner_pid = 1234; /* ignored: absent */
    st.smoothing = 0.999;
    st.has_half_life = false;
    st.half_life = msg_str_c("1000ba"); /* ignored: absent */
    st.update_interval = msg_str_c("1ba");
    st.ema_start = msg_str_c("0.0dur");
    st.has_last_time = false;
    st.shm = msg_str_c("/emad-1");
    st.shadow_shm = msg_str_c("/emad-shadow-1");
    st.has_interrupted = true; /* the optional fields: present, so every key is sent */
    st.has_seq = true;
    st.has_health = true;
    st.health.on_nonfinite = msg_str_c("skip");
    st.has_profiles = true; /* an empty list */
    st.has_eval_profile = true;
    st.eval_profile = msg_str_c("ema");
    st.has_snapshot_failures = true;
    st.has_snapshot_error = true;
    st.snapshot_error = msg_str_c("");
    st.has_group = true;
    st.group.job = msg_str_c("job");
    st.group.world = 1;
    st.has_table = true; /* empty columns */

    const msgpack_object *map = encode(&msg_session_state_desc, &st, &sb, &up);
    assert_int_equal(map->via.map.size, msg_session_state_desc.nfields);
    assert_int_equal(find_kv(map, "owner_pid")->val.type, MSGPACK_OBJECT_NIL);
    assert_int_equal(find_kv(map, "half_life")->val.type, MSGPACK_OBJECT_NIL);
    assert_int_equal(find_kv(map, "last_time")->val.type, MSGPACK_OBJECT_NIL);
    const msgpack_object *health = &find_kv(map, "health")->val;
    assert_int_equal(health->type, MSGPACK_OBJECT_MAP);
    assert_int_equal(find_kv(health, "distance")->val.type, MSGPACK_OBJECT_NIL);
    assert_int_equal(find_kv(health, "last_nonfinite")->val.type, MSGPACK_OBJECT_NIL);
    got = decode_ok(&msg_session_state_desc, map);
    assert_true(got->has_health);
    assert_false(got->health.has_distance);
    assert_false(got->has_owner_pid);
    assert_int_equal(got->owner_pid, 0);
    assert_false(got->has_half_life);
    assert_int_equal(got->half_life.len, 0);
    assert_false(got->has_last_time);
    assert_true(msg_str_eq(got->update_interval, "1ba"));
    msg_free(&msg_session_state_desc, got);
    free(got);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);

    /* Present, they carry their values. */
    st.attached = true;
    st.has_owner_pid = true;
    st.has_half_life = true;
    st.has_last_time = true;
    st.last_time.batch = 1000;
    st.last_time.epoch = 2;
    st.last_time.has_duration = true;
    st.last_time.duration = 0.25;
    map = encode(&msg_session_state_desc, &st, &sb, &up);
    assert_int_equal(find_kv(map, "owner_pid")->val.via.u64, 1234);
    got = decode_ok(&msg_session_state_desc, map);
    assert_true(got->has_owner_pid);
    assert_int_equal(got->owner_pid, 1234);
    assert_true(got->has_half_life);
    assert_true(msg_str_eq(got->half_life, "1000ba"));
    assert_true(got->has_last_time);
    assert_int_equal(got->last_time.batch, 1000);
    assert_int_equal(got->last_time.epoch, 2);
    assert_true(got->last_time.has_duration);
    assert_true(got->last_time.duration == 0.25);
    msg_free(&msg_session_state_desc, got);
    free(got);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
}

static void test_msg_optional_fields_sent_as_nil_are_absent(void **state)
{
    struct packed p;
    msgpack_packer *pk;
    (void)state;

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 3);
    kv_u(pk, "proto", 1);
    kv_str(pk, "client", "trainer");
    kv_nil(pk, "pid");
    struct msg_hello *h = decode_ok(&msg_hello_desc, pk_end(&p));
    assert_false(h->has_pid);
    assert_int_equal(h->pid, 0);
    assert_true(msg_str_eq(h->client, "trainer"));
    free(h);
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 5);
    kv_str(pk, "session", "s1");
    kv_str(pk, "shm", "/emad-1");
    k(pk, "tensors");
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 5);
    kv_str(pk, "name", "w");
    kv_str(pk, "dtype", "f16");
    kv_u(pk, "offset", 0);
    kv_u(pk, "numel", 3);
    kv_nil(pk, "shape");
    kv_nil(pk, "config");
    kv_nil(pk, "resume");
    struct msg_register *r = decode_ok(&msg_register_desc, pk_end(&p));
    assert_int_equal(r->ntensors, 1);
    assert_false(r->tensors[0].has_shape);
    assert_null(r->tensors[0].shape);
    assert_int_equal(r->tensors[0].nshape, 0);
    assert_false(r->has_config);
    assert_false(r->has_resume);
    msg_free(&msg_register_desc, r);
    free(r);
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 4);
    kv_nil(pk, "half_life");
    kv_nil(pk, "smoothing");
    kv_nil(pk, "update_interval");
    kv_str(pk, "ema_start", "2ep");
    struct msg_config *c = decode_ok(&msg_config_desc, pk_end(&p));
    assert_false(c->has_half_life);
    assert_false(c->has_smoothing);
    assert_false(c->has_update_interval);
    assert_true(c->has_ema_start);
    assert_true(msg_str_eq(c->ema_start, "2ep"));
    free(c);
    pk_done(&p);

    /* A required field sent as nil is not absent: it has the wrong type. */
    pk = pk_begin(&p);
    msgpack_pack_map(pk, 2);
    kv_nil(pk, "session");
    kv_str(pk, "to", "ema");
    expect_decode_error(&msg_swap_desc, pk_end(&p), "session: expected a string");
    pk_done(&p);
}

static void test_msg_unknown_keys_are_ignored(void **state)
{
    struct packed p;
    msgpack_packer *pk;
    (void)state;

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 8);
    k(pk, "future");
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint8(pk, 1);
    msgpack_pack_map(pk, 1);
    kv_u(pk, "a", 2);
    msgpack_pack_uint8(pk, 5); /* an integer key */
    k(pk, "int key");
    msgpack_pack_nil(pk); /* a nil key */
    msgpack_pack_nil(pk);
    kv_str(pk, "Proto", "case matters");
    kv_u(pk, "protocol", 99); /* "proto" is a prefix of it */
    kv_str(pk, "client", "c");
    kv_u(pk, "proto", 1);
    kv_str(pk, "clien", "truncated key");
    struct msg_hello *h = decode_ok(&msg_hello_desc, pk_end(&p));
    assert_int_equal(h->proto, 1);
    assert_true(msg_str_eq(h->client, "c"));
    assert_false(h->has_pid);
    free(h);
    pk_done(&p);

    /* Unknown keys nested inside an array element too. */
    pk = pk_begin(&p);
    msgpack_pack_map(pk, 3);
    kv_str(pk, "session", "s1");
    kv_str(pk, "shm", "/emad-1");
    k(pk, "tensors");
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 6);
    kv_str(pk, "name", "w");
    kv_str(pk, "dtype", "f16");
    kv_str(pk, "stride", "new in proto 1.1");
    kv_u(pk, "offset", 64);
    kv_u(pk, "numel", 3);
    kv_u(pk, "priority", 7);
    struct msg_register *r = decode_ok(&msg_register_desc, pk_end(&p));
    assert_int_equal(r->ntensors, 1);
    assert_int_equal(r->tensors[0].offset, 64);
    assert_int_equal(r->tensors[0].numel, 3);
    msg_free(&msg_register_desc, r);
    free(r);
    pk_done(&p);
}

/* A key given twice: its first value counts, whether the fields come in the
 * descriptor's order (the fast path) or not. */
static void test_msg_first_of_a_repeated_key_counts(void **state)
{
    struct packed p;
    msgpack_packer *pk;
    (void)state;

    /* In order, a repeat after the field it repeats. */
    pk = pk_begin(&p);
    msgpack_pack_map(pk, 4);
    kv_str(pk, "client", "first");
    kv_u(pk, "proto", 1);
    kv_str(pk, "client", "second");
    kv_u(pk, "proto", 2);
    struct msg_hello *h = decode_ok(&msg_hello_desc, pk_end(&p));
    assert_true(msg_str_eq(h->client, "first"));
    assert_int_equal(h->proto, 1);
    free(h);
    pk_done(&p);

    /* The repeat first, then the descriptor's order: the first occurrence is
     * the out-of-order one. */
    pk = pk_begin(&p);
    msgpack_pack_map(pk, 4);
    kv_u(pk, "proto", 3);
    kv_str(pk, "client", "c");
    kv_u(pk, "proto", 4);
    kv_u(pk, "pid", 7);
    h = decode_ok(&msg_hello_desc, pk_end(&p));
    assert_true(msg_str_eq(h->client, "c"));
    assert_int_equal(h->proto, 3);
    free(h);
    pk_done(&p);

    /* An unknown key ahead of a repeat: still the first occurrence. */
    pk = pk_begin(&p);
    msgpack_pack_map(pk, 4);
    kv_str(pk, "client", "c");
    kv_u(pk, "proto", 5);
    kv_u(pk, "zzz", 0);
    kv_u(pk, "proto", 6);
    h = decode_ok(&msg_hello_desc, pk_end(&p));
    assert_int_equal(h->proto, 5);
    free(h);
    pk_done(&p);
}

static void test_msg_integer_accepted_for_a_float_field(void **state)
{
    struct packed p;
    msgpack_packer *pk;
    (void)state;

    struct {
        int how; /* 0 unsigned, 1 signed, 2 float32 */
        uint64_t u;
        int64_t i;
        float f;
        double want;
    } cases[] = {
        {0, 0, 0, 0, 0.0},           {0, 1, 0, 0, 1.0},
        {0, 300, 0, 0, 300.0},       {0, UINT64_MAX, 0, 0, 18446744073709551616.0},
        {1, 0, -3, 0, -3.0},         {1, 0, INT64_MIN, 0, -9223372036854775808.0},
        {2, 0, 0, 0.5f, 0.5},        {2, 0, 0, 0.1f, (double)0.1f},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        pk = pk_begin(&p);
        msgpack_pack_map(pk, 1);
        k(pk, "smoothing");
        if (cases[i].how == 0)
            msgpack_pack_uint64(pk, cases[i].u);
        else if (cases[i].how == 1)
            msgpack_pack_int64(pk, cases[i].i);
        else
            msgpack_pack_float(pk, cases[i].f);
        struct msg_config *c = decode_ok(&msg_config_desc, pk_end(&p));
        assert_true(c->has_smoothing);
        if (c->smoothing != cases[i].want)
            fail_msg("case %zu: %a decoded as %a", i, cases[i].want, c->smoothing);
        free(c);
        pk_done(&p);
    }
}

static void test_msg_negative_integer_rejected_for_unsigned(void **state)
{
    struct packed p;
    msgpack_packer *pk;
    (void)state;

    static const int64_t negatives[] = {-1, -32, -33, -128, -129, -32768, INT64_MIN};
    for (size_t i = 0; i < ARRAY_LEN(negatives); i++) {
        pk = pk_begin(&p);
        msgpack_pack_map(pk, 2);
        kv_i(pk, "batch", negatives[i]);
        kv_u(pk, "epoch", 0);
        expect_decode_error(&msg_time_desc, pk_end(&p), "batch: expected a non-negative integer");
        pk_done(&p);
    }

    /* A float is no integer, even a whole one. */
    pk = pk_begin(&p);
    msgpack_pack_map(pk, 2);
    kv_u(pk, "batch", 1);
    k(pk, "epoch");
    msgpack_pack_double(pk, 2.0);
    expect_decode_error(&msg_time_desc, pk_end(&p), "epoch: expected a non-negative integer");
    pk_done(&p);

    /* Signed fields take the whole int64 range and nothing beyond. */
    static const int64_t pids[] = {INT64_MIN, -1, 0, INT64_MAX};
    for (size_t i = 0; i < ARRAY_LEN(pids); i++) {
        pk = pk_begin(&p);
        msgpack_pack_map(pk, 3);
        kv_u(pk, "proto", 1);
        kv_str(pk, "client", "c");
        kv_i(pk, "pid", pids[i]);
        struct msg_hello *h = decode_ok(&msg_hello_desc, pk_end(&p));
        assert_true(h->has_pid);
        assert_true(h->pid == pids[i]);
        free(h);
        pk_done(&p);
    }
    pk = pk_begin(&p);
    msgpack_pack_map(pk, 3);
    kv_u(pk, "proto", 1);
    kv_str(pk, "client", "c");
    kv_u(pk, "pid", (uint64_t)INT64_MAX + 1);
    expect_decode_error(&msg_hello_desc, pk_end(&p), "pid: expected an integer");
    pk_done(&p);
}

/* Receivers accept any msgpack integer width (§1), including signed encodings of positive
 * values. */
static void test_msg_integers_of_any_width_decode(void **state)
{
    static const struct {
        uint8_t bytes[9];
        size_t len;
        uint64_t want;
    } ints[] = {
        {{0x05}, 1, 5},
        {{0xcc, 0xc8}, 2, 200},
        {{0xcd, 0x01, 0x00}, 3, 256},
        {{0xce, 0x00, 0x01, 0x00, 0x00}, 5, 65536},
        {{0xcf, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00}, 9, 1ull << 32},
        {{0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 9, UINT64_MAX},
        {{0xcc, 0x07}, 2, 7},
        {{0xd0, 0x07}, 2, 7},
        {{0xd1, 0x00, 0x07}, 3, 7},
        {{0xd2, 0x00, 0x00, 0x00, 0x07}, 5, 7},
        {{0xd3, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07}, 9, 7},
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(ints); i++) {
        uint8_t buf[64];
        size_t n = 0, off = 0;
        msgpack_unpacked up;

        /* {"batch": <int>, "epoch": 0} */
        buf[n++] = 0x82;
        buf[n++] = 0xa5;
        memcpy(buf + n, "batch", 5);
        n += 5;
        memcpy(buf + n, ints[i].bytes, ints[i].len);
        n += ints[i].len;
        buf[n++] = 0xa5;
        memcpy(buf + n, "epoch", 5);
        n += 5;
        buf[n++] = 0x00;
        msgpack_unpacked_init(&up);
        assert_int_equal(msgpack_unpack_next(&up, (const char *)buf, n, &off),
                         MSGPACK_UNPACK_SUCCESS);
        struct msg_time *t = decode_ok(&msg_time_desc, &up.data);
        if (t->batch != ints[i].want)
            fail_msg("case %zu: %llu decoded as %llu", i, (unsigned long long)ints[i].want,
                     (unsigned long long)t->batch);
        free(t);
        msgpack_unpacked_destroy(&up);
    }
}

/* A failure after arrays were allocated frees them; a msg_free() after it is harmless. */
static void test_msg_failure_midway_frees_what_was_allocated(void **state)
{
    static const uint64_t shape[] = {1, 2, 3, 4};
    struct packed p;
    msgpack_packer *pk;
    (void)state;

    /* register: tensors (with shapes) decoded, then config fails. */
    pk = pk_begin(&p);
    msgpack_pack_map(pk, 4);
    kv_str(pk, "session", "s1");
    kv_str(pk, "shm", "/emad-1");
    k(pk, "tensors");
    msgpack_pack_array(pk, 3);
    pack_tensor(pk, "a", "f32", 0, shape, 4);
    pack_tensor(pk, "b", "f32", 64, shape, 1);
    pack_tensor(pk, "c", "f32", 128, shape, 3);
    k(pk, "config");
    msgpack_pack_map(pk, 1);
    kv_u(pk, "half_life", 1000);
    expect_decode_error(&msg_register_desc, pk_end(&p), "config.half_life: expected a string");
    pk_done(&p);

    /* register reply: shadow tensors decoded, then the state fails deep inside. */
    pk = pk_begin(&p);
    msgpack_pack_map(pk, 5);
    kv_str(pk, "session", "s1");
    kv_str(pk, "shadow_shm", "/emad-shadow-1");
    kv_u(pk, "shadow_bytes", 4096);
    k(pk, "tensors");
    msgpack_pack_array(pk, 2);
    for (int i = 0; i < 2; i++) {
        msgpack_pack_map(pk, 3);
        kv_str(pk, "name", i ? "b" : "a");
        kv_u(pk, "shadow_offset", 64u * (unsigned)i);
        kv_str(pk, "shadow_dtype", "f32");
    }
    k(pk, "state");
    msgpack_pack_map(pk, 2);
    kv_str(pk, "session", "s1");
    kv_str(pk, "attached", "yes");
    expect_decode_error(&msg_register_reply_desc, pk_end(&p),
                        "state.attached: expected true or false");
    pk_done(&p);

    /* hello reply: the features array fails at its last element. */
    pk = pk_begin(&p);
    msgpack_pack_map(pk, 5);
    kv_u(pk, "proto", 1);
    kv_str(pk, "server", "emad");
    kv_i(pk, "pid", 1);
    kv_u(pk, "workers", 2);
    k(pk, "features");
    msgpack_pack_array(pk, 3);
    k(pk, "resume");
    k(pk, "save");
    msgpack_pack_nil(pk);
    expect_decode_error(&msg_hello_reply_desc, pk_end(&p), "features[2]: expected a string");
    pk_done(&p);
}

/* An error longer than the caller's buffer is cut, still NUL-terminated. */
static void test_msg_error_fits_a_small_buffer(void **state)
{
    struct packed p;
    msgpack_packer *pk;
    struct msg_time t;
    char err[12];
    (void)state;

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 1);
    kv_u(pk, "batch", 1);
    memset(err, 'x', sizeof(err));
    assert_int_equal(msg_decode(&msg_time_desc, pk_end(&p), &t, err, sizeof(err)), -EINVAL);
    assert_non_null(memchr(err, '\0', sizeof(err)));
    assert_string_equal(err, "epoch: miss");
    pk_done(&p);
}

/* The counts of an ema_start in sp, tok or sec (an extension) are optional: an old client's time
 * map decodes with none, a new one's with each given. */
static void test_msg_time_counts_are_optional(void **state)
{
    struct packed p;
    msgpack_packer *pk;
    struct msg_time *t;
    (void)state;

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 2);
    kv_u(pk, "batch", 3);
    kv_u(pk, "epoch", 1);
    t = decode_ok(&msg_time_desc, pk_end(&p));
    assert_false(t->has_duration);
    assert_false(t->has_samples);
    assert_false(t->has_tokens);
    assert_false(t->has_seconds);
    free(t);
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 5);
    kv_u(pk, "batch", 3);
    kv_u(pk, "epoch", 1);
    kv_u(pk, "samples", 384);
    kv_u(pk, "tokens", UINT64_MAX);
    kv_u(pk, "seconds", 5400);
    t = decode_ok(&msg_time_desc, pk_end(&p));
    assert_int_equal(t->batch, 3);
    assert_true(t->has_samples);
    assert_int_equal(t->samples, 384);
    assert_true(t->has_tokens);
    assert_true(t->tokens == UINT64_MAX);
    assert_true(t->has_seconds);
    assert_int_equal(t->seconds, 5400);
    assert_false(t->has_duration);
    free(t);
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 3);
    kv_u(pk, "batch", 3);
    kv_u(pk, "epoch", 1);
    kv_str(pk, "samples", "384");
    expect_decode_error(&msg_time_desc, pk_end(&p), "samples: expected a non-negative integer");
    pk_done(&p);
}

/* ---- String views ------------------------------------------------------------------------- */

/* The columnar table (an extension) reads as the same tensors as the list
 * of maps; both forms at once, or columns of different lengths, are
 * refused naming the problem. */
static void test_msg_table_reads_as_the_list(void **state)
{
    struct msg_str names[] = {{"w", 1}, {"b", 1}, {"e", 1}};
    struct msg_str dtypes[] = {{"f32", 3}, {"bf16", 4}, {"i8", 2}};
    uint64_t offsets[] = {0, 64, 128}, numels[] = {16, 8, 0};
    struct msg_table table = {.names = names, .nnames = 3, .dtypes = dtypes, .ndtypes = 3,
                             .offsets = offsets, .noffsets = 3, .numels = numels, .nnumels = 3};
    char err[256];
    (void)state;

    /* The same tensors as a list of maps. */
    struct msg_tensor listed[3];
    for (size_t i = 0; i < 3; i++)
        listed[i] = (struct msg_tensor){.name = names[i], .dtype = dtypes[i], .offset = offsets[i],
                                        .numel = numels[i]};
    struct msg_register r, l;
    memset(&r, 0, sizeof(r));
    r.has_table = true;
    r.table = table;
    memset(&l, 0, sizeof(l));
    l.tensors = listed;
    l.ntensors = 3;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), 0);
    assert_int_equal(msg_register_check(&l, err, sizeof(err)), 0);
    assert_int_equal(msg_register_count(&r), 3);
    assert_int_equal(msg_register_count(&l), 3);
    for (size_t i = 0; i < 3; i++) {
        struct msg_tensor a = msg_register_tensor(&r, i), b = msg_register_tensor(&l, i);
        assert_true(a.name.ptr == names[i].ptr && b.name.ptr == names[i].ptr);
        assert_true(a.dtype.ptr == dtypes[i].ptr && b.dtype.ptr == dtypes[i].ptr);
        assert_int_equal(a.offset, offsets[i]);
        assert_int_equal(b.offset, offsets[i]);
        assert_int_equal(a.numel, numels[i]);
        assert_int_equal(b.numel, numels[i]);
        assert_false(a.has_shape);
    }

    struct msg_saved_state m;
    memset(&m, 0, sizeof(m));
    m.has_table = true;
    m.table = table;
    assert_int_equal(msg_saved_state_expand(&m, err, sizeof(err)), 0);
    assert_int_equal(m.ntensors, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_true(msg_str_eq(m.tensors[i].name, names[i].ptr));
        assert_true(msg_str_eq(m.tensors[i].dtype, dtypes[i].ptr));
        assert_int_equal(m.tensors[i].numel, numels[i]);
        assert_true(m.tensors[i].has_offset);
        assert_int_equal(m.tensors[i].offset, offsets[i]);
    }
    free(m.tensors);

    /* Without a table nothing changes. */
    memset(&m, 0, sizeof(m));
    assert_int_equal(msg_saved_state_expand(&m, err, sizeof(err)), 0);
    assert_null(m.tensors);

    struct msg_tensor one = {.name = {"x", 1}, .dtype = {"f32", 3}, .offset = 0, .numel = 1};
    memset(&r, 0, sizeof(r));
    r.tensors = &one;
    r.ntensors = 1;
    r.has_table = true;
    r.table = table;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "tensors and table: send the tensors in one form, not both");

    memset(&r, 0, sizeof(r));
    r.has_table = true;
    r.table = table;
    r.table.nnumels = 2;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "table: names, dtypes, offsets and numels must be as long as each "
                             "other (3, 3, 3, 2)");
}

static void test_msg_str_helpers(void **state)
{
    char out[8];
    struct msg_str s;
    (void)state;

    s = msg_str_c(NULL);
    assert_null(s.ptr);
    assert_int_equal(s.len, 0);
    s = msg_str_c("abc");
    assert_int_equal(s.len, 3);
    assert_true(msg_str_eq(s, "abc"));
    assert_false(msg_str_eq(s, "ab"));
    assert_false(msg_str_eq(s, "abcd"));
    assert_false(msg_str_eq(s, "abd"));
    assert_true(msg_str_eq((struct msg_str){NULL, 0}, ""));
    assert_true(msg_str_eq((struct msg_str){"xyz", 0}, ""));
    assert_false(msg_str_eq((struct msg_str){NULL, 0}, "a"));
    /* A view is not NUL-terminated: only len counts. */
    assert_true(msg_str_eq((struct msg_str){"abcdef", 3}, "abc"));

    memset(out, 'x', sizeof(out));
    assert_int_equal(msg_str_copy((struct msg_str){"abcdef", 3}, out, sizeof(out)), 0);
    assert_string_equal(out, "abc");
    assert_int_equal(msg_str_copy((struct msg_str){NULL, 0}, out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(msg_str_copy(msg_str_c("1234567"), out, sizeof(out)), 0);
    assert_string_equal(out, "1234567");
    assert_int_equal(msg_str_copy(msg_str_c("12345678"), out, sizeof(out)), -ENAMETOOLONG);
    assert_int_equal(msg_str_copy(msg_str_c(""), out, 0), -ENAMETOOLONG);
    assert_int_equal(msg_str_copy((struct msg_str){"ab\0cd", 5}, out, sizeof(out)), -EINVAL);
    assert_int_equal(msg_str_copy((struct msg_str){"\0", 1}, out, sizeof(out)), -EINVAL);
    assert_int_equal(msg_str_copy((struct msg_str){"abc\0", 4}, out, sizeof(out)), -EINVAL);
}

/* config.profiles: a map of names to profiles, decoded in the map's order (the first profile is
 * the default eval_profile); a key a profile does not know is an error naming it. */
static void test_msg_profiles_keep_order_and_refuse_unknown_fields(void **state)
{
    struct packed p;
    msgpack_packer *pk;
    (void)state;

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 2);
    k(pk, "profiles");
    msgpack_pack_map(pk, 3);
    k(pk, "zeta");
    msgpack_pack_map(pk, 1);
    kv_str(pk, "half_life", "100ba");
    k(pk, "alpha");
    msgpack_pack_map(pk, 2);
    kv_str(pk, "schedule", "warmup");
    kv_u(pk, "update_after_step", 3);
    k(pk, "mid");
    msgpack_pack_map(pk, 0);
    kv_str(pk, "eval_profile", "alpha");
    struct msg_config *c = decode_ok(&msg_config_desc, pk_end(&p));
    assert_true(c->has_profiles);
    assert_int_equal(c->nprofiles, 3);
    assert_true(msg_str_eq(c->profiles[0].name, "zeta"));
    assert_true(msg_str_eq(c->profiles[0].half_life, "100ba"));
    assert_true(msg_str_eq(c->profiles[1].name, "alpha"));
    assert_true(c->profiles[1].has_update_after_step);
    assert_int_equal(c->profiles[1].update_after_step, 3);
    assert_true(msg_str_eq(c->profiles[2].name, "mid"));
    assert_false(c->profiles[2].has_schedule);
    assert_true(msg_str_eq(c->eval_profile, "alpha"));
    msg_free(&msg_config_desc, c);
    free(c);
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 1);
    k(pk, "profiles");
    msgpack_pack_map(pk, 1);
    k(pk, "fast");
    msgpack_pack_map(pk, 2);
    kv_str(pk, "half_life", "100ba");
    kv_u(pk, "halflife", 7);
    expect_decode_error(&msg_config_desc, pk_end(&p),
                        "profiles.fast.halflife: not a field of a profile (schedule, half_life, "
                        "smoothing, update_interval, ema_start, decay, min_decay, "
                        "update_after_step, inv_gamma, power, sigma_rel, gamma)");
    pk_done(&p);

    pk = pk_begin(&p);
    msgpack_pack_map(pk, 1);
    k(pk, "profiles");
    msgpack_pack_map(pk, 1);
    msgpack_pack_uint8(pk, 1);
    msgpack_pack_map(pk, 0);
    expect_decode_error(&msg_config_desc, pk_end(&p), "profiles[0]: expected a string key");
    pk_done(&p);
}

/* Shard metadata (docs/protocol.md "Shard sessions"): the shape columns of a table read as each
 * tensor's shape and slice; every bound is checked, naming the field. */
static void test_msg_shard_shapes_and_group(void **state)
{
    struct msg_str names[] = {{"w", 1}, {"b", 1}, {"s", 1}};
    struct msg_str dtypes[] = {{"f32", 3}, {"f32", 3}, {"i64", 3}};
    uint64_t offsets[] = {0, 64, 128}, numels[] = {12, 3, 1};
    uint64_t ndims[] = {2, 1, 0}, shapes[] = {4, 3, 3}, gshapes[] = {8, 3, 6};
    uint64_t soffs[] = {4, 0, 3};
    struct msg_table table = {.names = names, .nnames = 3, .dtypes = dtypes, .ndtypes = 3,
                              .offsets = offsets, .noffsets = 3, .numels = numels, .nnumels = 3,
                              .has_ndims = true, .ndims = ndims, .nndims = 3,
                              .has_shapes = true, .shapes = shapes, .nshapes = 3,
                              .has_global_shapes = true, .global_shapes = gshapes,
                              .nglobal_shapes = 3, .has_slice_offsets = true,
                              .slice_offsets = soffs, .nslice_offsets = 3};
    struct msg_register r;
    char err[256];
    size_t dim = 0;
    (void)state;

    memset(&r, 0, sizeof(r));
    r.has_table = true;
    r.table = table;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), 0);
    struct msg_tensor t0 = msg_register_tensor_at(&r, 0, &dim);
    assert_true(t0.has_shape && t0.nshape == 2 && t0.shape[0] == 4 && t0.shape[1] == 3);
    assert_true(t0.has_global_shape && t0.global_shape[0] == 8 && t0.offsets[0] == 4);
    assert_int_equal(msg_tensor_check_shape(&t0, 0, err, sizeof(err)), 0);
    struct msg_tensor t1 = msg_register_tensor_at(&r, 1, &dim);
    assert_true(t1.nshape == 1 && t1.shape[0] == 3 && t1.global_shape[0] == 6);
    assert_int_equal(t1.offsets[0], 3);
    assert_int_equal(msg_tensor_check_shape(&t1, 1, err, sizeof(err)), 0);
    struct msg_tensor t2 = msg_register_tensor_at(&r, 2, &dim);
    assert_true(t2.has_shape && t2.nshape == 0);
    assert_int_equal(msg_tensor_check_shape(&t2, 2, err, sizeof(err)), 0);
    assert_int_equal(dim, 3);

    /* A slice past the global shape, and one whose end overflows. */
    soffs[2] = 4;
    dim = 0;
    (void)msg_register_tensor_at(&r, 0, &dim);
    t1 = msg_register_tensor_at(&r, 1, &dim);
    assert_int_equal(msg_tensor_check_shape(&t1, 1, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "tensors[1]: dimension 0: offsets 4 + shape 3 pass global_shape 6");
    soffs[2] = UINT64_MAX;
    assert_int_equal(msg_tensor_check_shape(&t1, 1, err, sizeof(err)), -EINVAL);
    soffs[2] = 3;
    /* A shape that is not numel. */
    shapes[0] = 5;
    assert_int_equal(msg_tensor_check_shape(&t0, 0, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "tensors[0].shape: its product is not numel (12)");
    shapes[0] = 4;
    /* Ranks that disagree; a slice without its other half or without a shape. */
    struct msg_tensor bad = t0;
    bad.nglobal_shape = 1;
    assert_int_equal(msg_tensor_check_shape(&bad, 0, err, sizeof(err)), -EINVAL);
    bad = t0;
    bad.has_offsets = false;
    assert_int_equal(msg_tensor_check_shape(&bad, 0, err, sizeof(err)), -EINVAL);
    bad = t0;
    bad.has_shape = false;
    assert_int_equal(msg_tensor_check_shape(&bad, 0, err, sizeof(err)), -EINVAL);
    bad = t0;
    bad.nshape = MSG_DIMS_MAX + 1;
    assert_int_equal(msg_tensor_check_shape(&bad, 0, err, sizeof(err)), -EINVAL);

    /* Column lengths. */
    r.table.nshapes = 2;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
    r.table = table;
    r.table.nslice_offsets = 2;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
    r.table = table;
    r.table.has_slice_offsets = false;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
    r.table = table;
    r.table.nndims = 2;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
    r.table = table;
    ndims[2] = MSG_DIMS_MAX + 1;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "table: ndims[2]: 9 dimensions, at most 8");
    ndims[2] = UINT64_MAX; /* no overflow of the sum */
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
    ndims[2] = 0;
    r.table.has_ndims = false;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
    r.table = table;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), 0);

    /* The group. */
    r.has_group = true;
    r.group = (struct msg_group){msg_str_c("llama/run-1"), 3, 4, true, 2};
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), 0);
    r.group.rank = 4;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "group.rank: 4 is not below world (4)");
    r.group.rank = 0;
    r.group.world = 0;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
    r.group.world = MSG_WORLD_MAX + 1ull;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
    r.group.world = 4;
    r.group.replicas = 0;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
    r.group.replicas = MSG_REPLICAS_MAX + 1;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
    r.group.has_replicas = false;
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), 0);
    r.group.job = msg_str_c("bad job");
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
    r.group.job = msg_str_c("");
    assert_int_equal(msg_register_check(&r, err, sizeof(err)), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msg_descriptor_tables_are_consistent),
        cmocka_unit_test(test_msg_every_message_round_trips),
        cmocka_unit_test(test_msg_every_nested_part_round_trips),
        cmocka_unit_test(test_msg_register_request_through_the_wire_decoder),
        cmocka_unit_test(test_msg_empty_result_is_an_empty_map),
        cmocka_unit_test(test_msg_every_field_error_names_its_path),
        cmocka_unit_test(test_msg_missing_required_field_names_the_path),
        cmocka_unit_test(test_msg_wrong_type_names_field_and_expected_type),
        cmocka_unit_test(test_msg_time_counts_are_optional),
        cmocka_unit_test(test_msg_nullable_fields_encode_nil_and_decode_absent),
        cmocka_unit_test(test_msg_optional_fields_sent_as_nil_are_absent),
        cmocka_unit_test(test_msg_unknown_keys_are_ignored),
        cmocka_unit_test(test_msg_integer_accepted_for_a_float_field),
        cmocka_unit_test(test_msg_negative_integer_rejected_for_unsigned),
        cmocka_unit_test(test_msg_integers_of_any_width_decode),
        cmocka_unit_test(test_msg_failure_midway_frees_what_was_allocated),
        cmocka_unit_test(test_msg_error_fits_a_small_buffer),
        cmocka_unit_test(test_msg_table_reads_as_the_list),
        cmocka_unit_test(test_msg_str_helpers),
        cmocka_unit_test(test_msg_profiles_keep_order_and_refuse_unknown_fields),
        cmocka_unit_test(test_msg_shard_shapes_and_group),
        cmocka_unit_test(test_msg_first_of_a_repeated_key_counts),
    };

    return cmocka_run_group_tests_name("msg", tests, NULL, NULL);
}
