/*
 * fuzz_wire.c - libFuzzer target for the protocol layer: the incremental
 * msgpack-rpc decoder (proto/wire.c) and the typed codec (proto/msg.c).
 *
 * Input layout:
 *   byte 0    how the stream is cut: 0 feeds it whole, n > 0 in chunks of
 *             n bytes; the top bit also alternates reserve/commit with feed
 *   byte 1    limits: bits 0-1 pick max_message (64, 256, 4096, 65536),
 *             bits 2-3 max_depth (4, 6, 8, 31)
 *   rest      the byte stream a peer would send
 *
 * What must hold (a violation calls __builtin_trap):
 *   - a delivered message is at most max_message bytes, nests no deeper
 *     than max_depth, and msgpack-c alone unpacks exactly those bytes of the
 *     stream (at the position the decoder consumed them) into the same
 *     tree as the decoder's own unpacker (wire_unpack);
 *   - wire_unpack straight on the stream (no scanner before it) reads only
 *     its bytes, succeeds exactly when the scanner accepts the first
 *     message at the same depth limit, and then agrees with msgpack-c:
 *     the same tree, end, and strings at the same places;
 *   - fed whole, the stream gives the same messages up to the first fault,
 *     and a fault at the same place;
 *   - a fault with a msgid is a size or shape fault; one that leaves the
 *     stream unreadable (not msgpack, too deep, too big to skip) keeps
 *     failing whatever follows;
 *   - every descriptor of msg.h that decodes the params re-encodes to bytes
 *     that decode again, and re-encoding those gives the same bytes;
 *   - a request re-framed with wire_pack_request_head goes through a fresh
 *     decoder and comes back with the same msgid, method and params.
 *
 * Run by `make fuzz` / `make fuzz-check` (see tests/fuzz/README).
 */
#include "msg.h"
#include "wire.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_wire: %s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                          \
            __builtin_trap();                                                        \
        }                                                                            \
    } while (0)

/* Every descriptor, the top-level messages and the nested ones. */
static const struct msg_desc *const nested_descs[] = {
    &msg_time_desc,          &msg_tensor_desc,         &msg_config_desc,
    &msg_shadow_tensor_desc, &msg_session_state_desc,  &msg_server_info_desc,
    &msg_saved_tensor_desc,  NULL,
};

static unsigned obj_depth(const msgpack_object *o)
{
    unsigned deepest = 0, d;

    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size; i++)
            if ((d = obj_depth(&o->via.array.ptr[i])) > deepest)
                deepest = d;
        return deepest + 1;
    }
    if (o->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            if ((d = obj_depth(&o->via.map.ptr[i].key)) > deepest)
                deepest = d;
            if ((d = obj_depth(&o->via.map.ptr[i].val)) > deepest)
                deepest = d;
        }
        return deepest + 1;
    }
    return 0;
}

/* msgpack_object_equal, except that floats compare by their bits (NaN too). */
static bool obj_equal(const msgpack_object *x, const msgpack_object *y)
{
    if (x->type != y->type)
        return false;
    switch (x->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return memcmp(&x->via.f64, &y->via.f64, sizeof(double)) == 0;
    case MSGPACK_OBJECT_ARRAY:
        if (x->via.array.size != y->via.array.size)
            return false;
        for (uint32_t i = 0; i < x->via.array.size; i++)
            if (!obj_equal(&x->via.array.ptr[i], &y->via.array.ptr[i]))
                return false;
        return true;
    case MSGPACK_OBJECT_MAP:
        if (x->via.map.size != y->via.map.size)
            return false;
        for (uint32_t i = 0; i < x->via.map.size; i++)
            if (!obj_equal(&x->via.map.ptr[i].key, &y->via.map.ptr[i].key) ||
                !obj_equal(&x->via.map.ptr[i].val, &y->via.map.ptr[i].val))
                return false;
        return true;
    default:
        return msgpack_object_equal(*x, *y);
    }
}

/* Strings, bins and exts of x (unpacked from xb) and y (from yb) point at the
 * same offsets; the trees are already known equal. msgpack-c leaves an empty
 * str or bin pointing anywhere, so those are skipped. */
static bool same_places(const msgpack_object *x, const char *xb, const msgpack_object *y,
                        const char *yb)
{
    switch (x->type) {
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_BIN:
        return x->via.str.size == 0 || x->via.str.ptr - xb == y->via.str.ptr - yb;
    case MSGPACK_OBJECT_EXT:
        return x->via.ext.ptr - xb == y->via.ext.ptr - yb;
    case MSGPACK_OBJECT_ARRAY:
        for (uint32_t i = 0; i < x->via.array.size; i++)
            if (!same_places(&x->via.array.ptr[i], xb, &y->via.array.ptr[i], yb))
                return false;
        return true;
    case MSGPACK_OBJECT_MAP:
        for (uint32_t i = 0; i < x->via.map.size; i++)
            if (!same_places(&x->via.map.ptr[i].key, xb, &y->via.map.ptr[i].key, yb) ||
                !same_places(&x->via.map.ptr[i].val, xb, &y->via.map.ptr[i].val, yb))
                return false;
        return true;
    default:
        return true;
    }
}

/* Unpack bytes we produced ourselves (bounded) into *u; true on success. */
static bool unpack_all(msgpack_unpacked *u, const char *p, size_t n)
{
    size_t off = 0;

    msgpack_unpacked_init(u);
    if (msgpack_unpack_next(u, p, n, &off) != MSGPACK_UNPACK_SUCCESS || off != n) {
        msgpack_unpacked_destroy(u);
        return false;
    }
    return true;
}

/* Decode params with d; on success the encoding must be a fixed point. */
static void roundtrip_desc(const struct msg_desc *d, const msgpack_object *params)
{
    /* Sized by the descriptor: a fixed bound broke each time a message grew a field. */
    void *a = calloc(1, d->size), *b = calloc(1, d->size);
    char err[256];
    msgpack_sbuffer s1, s2;
    msgpack_packer pk;
    msgpack_unpacked u;
    int rc;

    CHECK(a != NULL && b != NULL);
    rc = msg_decode(d, params, a, err, sizeof(err));
    if (rc < 0) {
        CHECK(rc == -EINVAL || rc == -ENOMEM);
        CHECK(memchr(err, '\0', sizeof(err)) != NULL);
        free(a);
        free(b);
        return;
    }
    msgpack_sbuffer_init(&s1);
    msgpack_packer_init(&pk, &s1, msgpack_sbuffer_write);
    msg_encode(&pk, d, a);
    CHECK(unpack_all(&u, s1.data, s1.size));
    rc = msg_decode(d, &u.data, b, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "fuzz_wire: %s: re-decoding its own encoding failed: %s\n", d->name, err);
    CHECK(rc == 0);
    msgpack_sbuffer_init(&s2);
    msgpack_packer_init(&pk, &s2, msgpack_sbuffer_write);
    msg_encode(&pk, d, b);
    CHECK(s1.size == s2.size && memcmp(s1.data, s2.data, s1.size) == 0);
    msg_free(d, b);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&s2);
    msgpack_sbuffer_destroy(&s1);
    msg_free(d, a);
    free(a);
    free(b);
}

/* The request re-framed by our own encoder decodes to the same thing. */
static void roundtrip_envelope(const struct wire_msg *m)
{
    char method[256];
    struct wire_decoder d;
    struct wire_msg m2;
    struct wire_fault f;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    int rc;

    if (m->method_len >= sizeof(method) || memchr(m->method, '\0', m->method_len) != NULL)
        return; /* the encoder takes a C string */
    memcpy(method, m->method, m->method_len);
    method[m->method_len] = '\0';
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, m->msgid, method);
    msgpack_pack_object(&pk, *m->params);
    CHECK(wire_decoder_init(&d, sb.size, WIRE_HARD_MAX_DEPTH - 1) == 0);
    CHECK(wire_decoder_feed(&d, sb.data, sb.size) == 0);
    rc = wire_decoder_next(&d, &m2, &f);
    CHECK(rc == 1);
    CHECK(m2.kind == WIRE_REQUEST && m2.msgid == m->msgid && m2.bytes == sb.size);
    CHECK(m2.method_len == m->method_len && memcmp(m2.method, m->method, m->method_len) == 0);
    CHECK(obj_equal(m2.params, m->params));
    CHECK(wire_decoder_next(&d, &m2, &f) == 0);
    wire_decoder_free(&d);
    msgpack_sbuffer_destroy(&sb);
}

/* msgpack-c alone, on exactly the bytes the decoder consumed for m, which
 * the decoder unpacked into tree. */
static void check_against_msgpack(const struct wire_msg *m, const msgpack_object *tree,
                                  const uint8_t *bytes)
{
    msgpack_unpacked u;
    const msgpack_object *e;

    CHECK(unpack_all(&u, (const char *)bytes, m->bytes));
    CHECK(obj_equal(&u.data, tree));
    CHECK(u.data.type == MSGPACK_OBJECT_ARRAY && u.data.via.array.size >= 3);
    e = u.data.via.array.ptr;
    CHECK(e[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER && e[0].via.u64 == m->kind);
    if (m->kind == WIRE_NOTIFY) {
        CHECK(e[1].type == MSGPACK_OBJECT_STR && e[1].via.str.size == m->method_len &&
              memcmp(e[1].via.str.ptr, m->method, m->method_len) == 0);
        CHECK(e[2].type == MSGPACK_OBJECT_ARRAY && e[2].via.array.size == 1);
        CHECK(obj_equal(&e[2].via.array.ptr[0], m->params));
    } else {
        CHECK(u.data.via.array.size == 4 && e[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
              e[1].via.u64 == m->msgid);
        if (m->kind == WIRE_REQUEST) {
            CHECK(e[2].type == MSGPACK_OBJECT_STR && e[2].via.str.size == m->method_len &&
                  memcmp(e[2].via.str.ptr, m->method, m->method_len) == 0);
            CHECK(e[3].type == MSGPACK_OBJECT_ARRAY && e[3].via.array.size == 1);
            CHECK(obj_equal(&e[3].via.array.ptr[0], m->params));
        } else {
            CHECK(obj_equal(&e[2], m->error) && obj_equal(&e[3], m->result));
        }
    }
    msgpack_unpacked_destroy(&u);
}

static void check_message(const struct wire_decoder *d, const struct wire_msg *m,
                          const uint8_t *at)
{
    CHECK(m->bytes > 0 && m->bytes <= d->max_message);
    check_against_msgpack(m, &d->obj, at);
    if (m->kind == WIRE_RESPONSE) {
        CHECK(m->error != NULL && m->result != NULL);
        /* The envelope is one level; what it holds nests below it. */
        CHECK(1 + obj_depth(m->error) <= d->max_depth && 1 + obj_depth(m->result) <= d->max_depth);
        return;
    }
    CHECK(m->params != NULL && m->params->type == MSGPACK_OBJECT_MAP);
    CHECK(m->method != NULL || m->method_len == 0);
    /* [kind, ..., [params]]: params sits two levels down. */
    CHECK(2 + obj_depth(m->params) <= d->max_depth);
    for (size_t i = 0; msg_all_descs[i] != NULL; i++)
        roundtrip_desc(msg_all_descs[i], m->params);
    for (size_t i = 0; nested_descs[i] != NULL; i++)
        roundtrip_desc(nested_descs[i], m->params);
    if (m->kind == WIRE_REQUEST)
        roundtrip_envelope(m);
}

/* wire_unpack on the raw stream, and the scanner (a decoder fed the stream
 * whole, its limits no obstacle) on the same bytes. */
static void check_unpack(const uint8_t *data, size_t size)
{
    const unsigned depth = WIRE_HARD_MAX_DEPTH - 1; /* the deepest a decoder allows */
    struct wire_decoder d;
    struct wire_msg m;
    struct wire_fault f;
    msgpack_zone z, z2;
    msgpack_object o, ref;
    size_t off = 0, off2 = 0;
    int rc, drc;
    bool scanned;

    if (size == 0)
        return;
    CHECK(msgpack_zone_init(&z, 1024));
    rc = wire_unpack((const char *)data, size, &off, &z, depth, &o);
    CHECK(rc == 0 || rc == -EBADMSG || rc == -ELOOP);
    CHECK(wire_decoder_init(&d, size, depth) == 0);
    d.scan_only = true; /* the scanner, not wire_unpack again */
    CHECK(wire_decoder_feed(&d, data, size) == 0);
    drc = wire_decoder_next(&d, &m, &f);
    /* A shape fault comes only after the scanner and the unpacker accepted it. */
    scanned = drc == 1 || (drc == -1 && f.code == -EPROTO);
    CHECK((rc == 0) == scanned);
    if (scanned) {
        CHECK(size - wire_decoder_pending(&d) == off);
        CHECK(obj_equal(&o, &d.obj));
        /* Safe now: every count in the first object is backed by its bytes,
         * and msgpack-c stops at its end. */
        CHECK(msgpack_zone_init(&z2, 1024));
        msgpack_unpack_return ur = msgpack_unpack((const char *)data, size, &off2, &z2, &ref);
        CHECK(ur == (off == size ? MSGPACK_UNPACK_SUCCESS : MSGPACK_UNPACK_EXTRA_BYTES));
        CHECK(off2 == off);
        CHECK(obj_equal(&o, &ref));
        CHECK(same_places(&o, (const char *)data, &ref, (const char *)data));
        msgpack_zone_destroy(&z2);
    }
    wire_decoder_free(&d);
    msgpack_zone_destroy(&z);
}

/* What one decoding produced, in order, to compare two ways of feeding. */
struct event {
    int rc;        /* 1 message, -1 fault */
    int code;      /* fault code, or the message's kind */
    uint32_t msgid;
    size_t bytes;  /* message size */
};

#define MAX_EVENTS 512

/* Decode data fed in chunks of chunk bytes (alternating reserve/commit and
 * feed when use_reserve), checking every message when check is set. Stops at
 * the first fault that closes the connection. Returns the number of events. */
static size_t decode_stream(const uint8_t *data, size_t size, size_t max_message,
                            unsigned max_depth, size_t chunk, bool use_reserve, bool check,
                            struct event *ev)
{
    struct wire_decoder d;
    struct wire_msg m;
    struct wire_fault f;
    size_t fed = 0, nev = 0;
    bool fatal = false;

    CHECK(wire_decoder_init(&d, max_message, max_depth) == 0);
    while (fed < size && !fatal) {
        size_t n = size - fed < chunk ? size - fed : chunk;
        int rc;

        if (use_reserve && (fed / chunk) % 2 == 0) {
            size_t room = 0;
            char *p = wire_decoder_reserve(&d, n, &room);
            if (p == NULL)
                break;
            if (room < n)
                n = room;
            memcpy(p, data + fed, n);
            wire_decoder_commit(&d, n);
        } else if (wire_decoder_feed(&d, data + fed, n) < 0) {
            break; /* bounded buffer: only when a fault was ignored, which we never do */
        }
        fed += n;
        for (;;) {
            rc = wire_decoder_next(&d, &m, &f);
            if (rc == 0)
                break;
            if (nev < MAX_EVENTS)
                ev[nev++] = rc == 1 ? (struct event){1, (int)m.kind, m.msgid, m.bytes}
                                    : (struct event){-1, f.code, f.msgid, 0};
            if (rc == 1) {
                size_t consumed = fed - wire_decoder_pending(&d);
                CHECK(consumed >= m.bytes && consumed <= fed);
                if (check)
                    check_message(&d, &m, data + consumed - m.bytes);
                continue;
            }
            CHECK(rc == -1);
            CHECK(f.code == -EMSGSIZE || f.code == -EPROTO || f.code == -EBADMSG ||
                  f.code == -ELOOP);
            CHECK(memchr(f.detail, '\0', sizeof(f.detail)) != NULL && f.detail[0] != '\0');
            if (!f.has_msgid) {
                /* The caller closes the connection. A stream that cannot be
                 * resynchronised must also stay failed whatever follows. */
                fatal = true;
                if (f.code != -EPROTO)
                    CHECK(wire_decoder_next(&d, &m, &f) == -1 && !f.has_msgid);
                break;
            }
            CHECK(f.code == -EMSGSIZE || f.code == -EPROTO);
        }
    }
    wire_decoder_free(&d);
    return nev;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t max_messages[] = {64, 256, 4096, 65536};
    static const unsigned max_depths[] = {4, 6, 8, 31};
    static struct event ev1[MAX_EVENTS], ev2[MAX_EVENTS];
    size_t chunk, max_message, n1, n2, i;
    unsigned max_depth;
    bool use_reserve;

    if (size < 2)
        return 0;
    chunk = data[0] & 0x7f;
    use_reserve = data[0] & 0x80;
    max_message = max_messages[data[1] & 3];
    max_depth = max_depths[(data[1] >> 2) & 3];
    data += 2;
    size -= 2;
    if (chunk == 0)
        chunk = size ? size : 1;

    check_unpack(data, size);
    n1 = decode_stream(data, size, max_message, max_depth, chunk, use_reserve, true, ev1);
    /* The same stream fed whole: the messages up to the first fault are the
     * same, and a fault comes at the same place (its kind may differ: fed
     * whole, an oversized message may be found malformed before too big). */
    n2 = decode_stream(data, size, max_message, max_depth, size ? size : 1, false, false, ev2);
    for (i = 0; i < n1 && i < n2 && i < MAX_EVENTS; i++) {
        CHECK(ev1[i].rc == ev2[i].rc);
        if (ev1[i].rc < 0)
            break;
        CHECK(ev1[i].code == ev2[i].code && ev1[i].msgid == ev2[i].msgid &&
              ev1[i].bytes == ev2[i].bytes);
    }
    if (i == n1 || i == n2)
        CHECK(n1 == n2 || n1 >= MAX_EVENTS || n2 >= MAX_EVENTS);
    return 0;
}
