/*
 * wire.c - incremental msgpack-rpc decoder and envelope encoder.
 */
#include "wire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The buffer may hold one whole message plus what arrived behind it in the
 * same read; anything beyond means the caller fed bytes it should not have. */
#define WIRE_READ_SLACK (256u << 10)

static void scan_reset(struct wire_scan *s)
{
    memset(s, 0, sizeof(*s));
    s->left[0] = 1; /* one top-level object */
}

int wire_decoder_init(struct wire_decoder *d, size_t max_message, unsigned max_depth)
{
    if (d == NULL || max_message == 0)
        return -EINVAL;
    if (max_depth == 0 || max_depth >= WIRE_HARD_MAX_DEPTH)
        return -EINVAL;
    memset(d, 0, sizeof(*d));
    d->max_message = max_message;
    d->max_depth = max_depth;
    scan_reset(&d->scan);
    return 0;
}

/* Bytes of the zone's first chunk: the objects of a typical request fit it,
 * and it is all the zone keeps between messages. */
#define WIRE_ZONE_CHUNK 2048

static void release_unpacked(struct wire_decoder *d)
{
    if (!d->have_unpacked)
        return;
    /* Every chunk but the first goes: a large message's objects do not
     * outlive it. */
    msgpack_zone_clear(&d->zone);
    d->have_unpacked = false;
}

void wire_decoder_free(struct wire_decoder *d)
{
    if (d == NULL)
        return;
    release_unpacked(d);
    if (d->zone_ready) {
        msgpack_zone_destroy(&d->zone);
        d->zone_ready = false;
    }
    free(d->buf);
    d->buf = NULL;
    d->head = d->len = d->cap = d->scanned = 0;
}

size_t wire_decoder_pending(const struct wire_decoder *d)
{
    return d->len - d->head;
}

/* Make room for n more bytes, first by sliding consumed bytes out. Only done
 * while no message refers into the buffer. */
static int make_room(struct wire_decoder *d, size_t n)
{
    size_t pending = d->len - d->head;
    size_t bound = d->max_message + WIRE_READ_SLACK;

    if (d->head > 0 && !d->have_unpacked) {
        memmove(d->buf, d->buf + d->head, pending);
        d->len = pending;
        d->head = 0;
    }
    if (d->cap - d->len >= n)
        return 0;
    if (d->len - d->head + n > bound)
        return -EMSGSIZE;
    size_t cap = d->cap ? d->cap : 4096;
    while (cap - d->len < n)
        cap *= 2;
    if (cap > d->head + bound)
        cap = d->head + bound;
    char *nb = realloc(d->buf, cap);
    if (nb == NULL)
        return -ENOMEM;
    d->buf = nb;
    d->cap = cap;
    return 0;
}

int wire_decoder_feed(struct wire_decoder *d, const void *data, size_t n)
{
    size_t room;
    char *p;

    if (n == 0)
        return 0;
    /* Checked first: reserve() answers NULL both for a full buffer and for no memory. */
    if (n > d->max_message + WIRE_READ_SLACK - wire_decoder_pending(d))
        return -EMSGSIZE;
    p = wire_decoder_reserve(d, n, &room);
    if (p == NULL || room < n)
        return -ENOMEM;
    memcpy(p, data, n);
    wire_decoder_commit(d, n);
    return 0;
}

char *wire_decoder_reserve(struct wire_decoder *d, size_t want, size_t *room)
{
    *room = 0;
    release_unpacked(d);
    /* Reading further into a message we are only discarding needs no room
     * beyond one chunk: consumed bytes are dropped as they are scanned. */
    if (make_room(d, want) < 0) {
        size_t bound = d->max_message + WIRE_READ_SLACK;
        size_t pending = d->len - d->head;
        if (pending >= bound)
            return NULL;
        want = bound - pending;
        if (make_room(d, want) < 0)
            return NULL;
    }
    *room = d->cap - d->len;
    return d->buf + d->len;
}

void wire_decoder_commit(struct wire_decoder *d, size_t n)
{
    d->len += n;
}

/* Header length implied by a msgpack type byte; 0 for the never-used 0xc1. */
static unsigned header_len(uint8_t b)
{
    if (b <= 0x7f || b >= 0xe0 || (b >= 0x80 && b <= 0xbf))
        return 1;
    switch (b) {
    case 0xc0: case 0xc2: case 0xc3: return 1;
    case 0xc4: case 0xcc: case 0xd0: case 0xd9: return 2;
    case 0xc5: case 0xcd: case 0xd1: case 0xda: case 0xdc: case 0xde: return 3;
    case 0xc7: return 3;
    case 0xc8: return 4;
    case 0xc6: case 0xca: case 0xce: case 0xd2: case 0xdb: case 0xdd: case 0xdf: return 5;
    case 0xc9: return 6;
    case 0xcb: case 0xcf: case 0xd3: return 9;
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: return 2;
    default: return 0;
    }
}

/* Big-endian integers, as msgpack writes them: by width, and by a width
 * known only at run time (be). */
static inline uint16_t load16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static inline uint32_t load32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return __builtin_bswap32(v);
}

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return __builtin_bswap64(v);
}

static uint64_t be(const uint8_t *p, unsigned n)
{
    switch (n) {
    case 1: return p[0];
    case 2: return load16(p);
    case 4: return load32(p);
    default: return load64(p);
    }
}

/* One object finished: close every container it completes. Returns true when
 * the top-level object is complete. */
static bool object_done(struct wire_scan *s)
{
    s->left[s->depth]--;
    while (s->depth > 0 && s->left[s->depth] == 0) {
        s->depth--;
        s->left[s->depth]--;
    }
    return s->depth == 0 && s->left[0] == 0;
}

/* A complete header at h: update the scan. 1 message complete, 0 go on,
 * negative on a fault. */
static int scan_header(struct wire_scan *s, const uint8_t *h, unsigned max_depth)
{
    uint8_t b = h[0];
    uint64_t count = 0; /* children for containers */
    bool container = false;

    if (b <= 0x7f || b >= 0xe0)
        return object_done(s);
    if (b >= 0x80 && b <= 0x8f) {
        container = true;
        count = 2u * (b & 0x0f);
    } else if (b >= 0x90 && b <= 0x9f) {
        container = true;
        count = b & 0x0f;
    } else if (b >= 0xa0 && b <= 0xbf) {
        s->skip = b & 0x1f;
    } else {
        switch (b) {
        case 0xc4: case 0xd9: s->skip = h[1]; break;
        case 0xc5: case 0xda: s->skip = load16(h + 1); break;
        case 0xc6: case 0xdb: s->skip = load32(h + 1); break;
        case 0xc7: s->skip = h[1]; break;
        case 0xc8: s->skip = load16(h + 1); break;
        case 0xc9: s->skip = load32(h + 1); break;
        case 0xd4: s->skip = 1; break;
        case 0xd5: s->skip = 2; break;
        case 0xd6: s->skip = 4; break;
        case 0xd7: s->skip = 8; break;
        case 0xd8: s->skip = 16; break;
        case 0xdc: container = true; count = load16(h + 1); break;
        case 0xdd: container = true; count = load32(h + 1); break;
        case 0xde: container = true; count = 2 * load16(h + 1); break;
        case 0xdf: container = true; count = 2 * load32(h + 1); break;
        default: break; /* scalars: nil, bool, ints, floats */
        }
    }
    if (container) {
        /* An empty array or map is one level of nesting too. */
        if (s->depth + 1 > max_depth)
            return -ELOOP;
        if (count > 0) {
            s->depth++;
            s->left[s->depth] = count;
            return 0;
        }
    }
    if (s->skip > 0)
        return 0;
    return object_done(s);
}

/* Walk bytes [p, p+n). *used gets the bytes consumed: up to the end of the
 * message when it completes (returns 1), else n (returns 0). */
static int scan_bytes(struct wire_scan *s, unsigned max_depth, const uint8_t *p, size_t n,
                      size_t *used)
{
    size_t i = 0;

    while (i < n) {
        if (s->skip > 0) {
            size_t take = s->skip < n - i ? (size_t)s->skip : n - i;
            i += take;
            s->skip -= take;
            if (s->skip == 0 && object_done(s)) {
                *used = i;
                return 1;
            }
            continue;
        }
        int rc;
        if (s->hdr_need == 0) {
            unsigned len = header_len(p[i]);
            if (len == 0) {
                *used = i;
                return -EBADMSG;
            }
            /* The usual case, a header whole in this read, is walked where
             * it lies; one split across reads is gathered in s->hdr first. */
            if (len <= n - i) {
                rc = scan_header(s, p + i, max_depth);
                i += len;
                if (rc != 0) {
                    *used = i;
                    return rc;
                }
                continue;
            }
            s->hdr_need = (uint8_t)len;
            s->hdr_len = 0;
        }
        while (s->hdr_len < s->hdr_need && i < n)
            s->hdr[s->hdr_len++] = p[i++];
        if (s->hdr_len < s->hdr_need)
            break;
        s->hdr_need = 0;
        rc = scan_header(s, s->hdr, max_depth);
        if (rc != 0) {
            *used = i;
            return rc;
        }
    }
    *used = i;
    return 0;
}

/* The unpacker: msgpack bytes to the msgpack_object tree msgpack_unpack() of
 * msgpack-c 4.0 builds, without its state machine and per-object stack copies
 * (those were the largest single cost of a no-op round trip, docs/performance.md
 * "The round trip, counted"). One loop writes each object straight into its
 * slot: an array of n and a map of n pairs are both a run of slots (n, or 2n
 * key-value slots), and a stack remembers where each enclosing run goes on.
 * Every read is checked against the end even behind the scanner, so bytes it
 * never saw cannot lead past them. */

/* A map's pairs are filled as a run of 2n objects. */
_Static_assert(sizeof(msgpack_object_kv) == 2 * sizeof(msgpack_object) &&
                   offsetof(msgpack_object_kv, val) == sizeof(msgpack_object),
               "msgpack_object_kv is not two msgpack_objects");

static inline void set_int(msgpack_object *o, int64_t v)
{
    /* msgpack-c reports a signed encoding of a non-negative value as positive. */
    if (v >= 0) {
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = (uint64_t)v;
    } else {
        o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
        o->via.i64 = v;
    }
}

int wire_unpack(const char *data, size_t len, size_t *off, msgpack_zone *zone,
                unsigned max_depth, msgpack_object *out)
{
    struct {
        msgpack_object *slot, *end;
    } open[WIRE_HARD_MAX_DEPTH]; /* the runs of the containers around o */
    unsigned top = 0;
    const uint8_t *p, *end, *h;
    msgpack_object *o = out, *run_end = out + 1, *kids;
    msgpack_object_type type;
    size_t nkids;
    uint32_t n; /* a str/bin/ext's bytes, or a container's elements (pairs) */
    uint8_t b;

    if (data == NULL || off == NULL || zone == NULL || out == NULL || *off > len ||
        max_depth > WIRE_HARD_MAX_DEPTH)
        return -EINVAL;
    p = (const uint8_t *)data + *off;
    end = (const uint8_t *)data + len;

/* The n header bytes after the type byte, at h. */
#define TAKE(n)                               \
    do {                                      \
        if ((size_t)(end - p) < (n))          \
            return -EBADMSG;                  \
        h = p;                                \
        p += (n);                             \
    } while (0)

    for (;;) {
        if (p == end)
            return -EBADMSG;
        b = *p++;
        /* The kinds of a typical request first: small ints, short strings, small maps. */
        if (b <= 0x7f) {
            o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
            o->via.u64 = b;
            goto next;
        }
        if (b >= 0xe0) {
            o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
            o->via.i64 = (int8_t)b;
            goto next;
        }
        if (b >= 0xa0 && b <= 0xbf) {
            type = MSGPACK_OBJECT_STR;
            n = b & 0x1f;
            goto raw;
        }
        if (b <= 0x8f) {
            type = MSGPACK_OBJECT_MAP;
            n = b & 0x0f;
            goto container;
        }
        if (b <= 0x9f) {
            type = MSGPACK_OBJECT_ARRAY;
            n = b & 0x0f;
            goto container;
        }
        switch (b) {
        case 0xc0:
            o->type = MSGPACK_OBJECT_NIL;
            goto next;
        case 0xc2:
        case 0xc3:
            o->type = MSGPACK_OBJECT_BOOLEAN;
            o->via.boolean = b == 0xc3;
            goto next;
        case 0xca: {
            union { uint32_t i; float f; } v;
            TAKE(4);
            v.i = load32(h);
            o->type = MSGPACK_OBJECT_FLOAT32;
            o->via.f64 = v.f;
            goto next;
        }
        case 0xcb: {
            union { uint64_t i; double f; } v;
            TAKE(8);
            v.i = load64(h);
            o->type = MSGPACK_OBJECT_FLOAT64;
            o->via.f64 = v.f;
            goto next;
        }
        case 0xcc: TAKE(1); o->type = MSGPACK_OBJECT_POSITIVE_INTEGER; o->via.u64 = h[0]; goto next;
        case 0xcd: TAKE(2); o->type = MSGPACK_OBJECT_POSITIVE_INTEGER; o->via.u64 = load16(h); goto next;
        case 0xce: TAKE(4); o->type = MSGPACK_OBJECT_POSITIVE_INTEGER; o->via.u64 = load32(h); goto next;
        case 0xcf: TAKE(8); o->type = MSGPACK_OBJECT_POSITIVE_INTEGER; o->via.u64 = load64(h); goto next;
        case 0xd0: TAKE(1); set_int(o, (int8_t)h[0]); goto next;
        case 0xd1: TAKE(2); set_int(o, (int16_t)load16(h)); goto next;
        case 0xd2: TAKE(4); set_int(o, (int32_t)load32(h)); goto next;
        case 0xd3: TAKE(8); set_int(o, (int64_t)load64(h)); goto next;
        case 0xd9: TAKE(1); type = MSGPACK_OBJECT_STR; n = h[0]; goto raw;
        case 0xda: TAKE(2); type = MSGPACK_OBJECT_STR; n = load16(h); goto raw;
        case 0xdb: TAKE(4); type = MSGPACK_OBJECT_STR; n = load32(h); goto raw;
        case 0xc4: TAKE(1); type = MSGPACK_OBJECT_BIN; n = h[0]; goto raw;
        case 0xc5: TAKE(2); type = MSGPACK_OBJECT_BIN; n = load16(h); goto raw;
        case 0xc6: TAKE(4); type = MSGPACK_OBJECT_BIN; n = load32(h); goto raw;
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
            n = 1u << (b - 0xd4);
            goto ext;
        case 0xc7: TAKE(1); n = h[0]; goto ext;
        case 0xc8: TAKE(2); n = load16(h); goto ext;
        case 0xc9: TAKE(4); n = load32(h); goto ext;
        case 0xdc: TAKE(2); type = MSGPACK_OBJECT_ARRAY; n = load16(h); goto container;
        case 0xdd: TAKE(4); type = MSGPACK_OBJECT_ARRAY; n = load32(h); goto container;
        case 0xde: TAKE(2); type = MSGPACK_OBJECT_MAP; n = load16(h); goto container;
        case 0xdf: TAKE(4); type = MSGPACK_OBJECT_MAP; n = load32(h); goto container;
        default: /* 0xc1, never used */
            return -EBADMSG;
        }

    raw:
        TAKE(n);
        o->type = type;
        /* str and bin share one layout (msgpack/object.h). */
        o->via.str.size = n;
        o->via.str.ptr = (const char *)h;
        goto next;

    ext:
        /* msgpack-c counts the type byte into a 32-bit length: 2^32-1 wraps and it refuses. */
        if (n == UINT32_MAX)
            return -EBADMSG;
        TAKE((size_t)n + 1);
        o->type = MSGPACK_OBJECT_EXT;
        o->via.ext.type = (int8_t)h[0];
        o->via.ext.size = n;
        o->via.ext.ptr = (const char *)h + 1;
        goto next;

    container:
        /* An empty container is one level of nesting too, as for the scanner. */
        if (top >= max_depth)
            return -ELOOP;
        nkids = type == MSGPACK_OBJECT_MAP ? 2 * (size_t)n : n;
        /* Each element takes a byte at least: a count beyond the bytes left is a lie. */
        if (nkids > (size_t)(end - p))
            return -EBADMSG;
        kids = msgpack_zone_malloc(zone, nkids * sizeof(*kids));
        if (kids == NULL)
            return -ENOMEM;
        o->type = type;
        if (type == MSGPACK_OBJECT_MAP) {
            o->via.map.size = n;
            o->via.map.ptr = (msgpack_object_kv *)kids;
        } else {
            o->via.array.size = n;
            o->via.array.ptr = kids;
        }
        if (nkids > 0) {
            open[top].slot = o + 1;
            open[top].end = run_end;
            top++;
            o = kids;
            run_end = kids + nkids;
            continue;
        }

    next:
        /* The object at o is whole: on to the next slot, closing every run it ends. */
        o++;
        while (o == run_end) {
            if (top == 0) {
                *off = (size_t)(p - (const uint8_t *)data);
                return 0;
            }
            top--;
            o = open[top].slot;
            run_end = open[top].end;
        }
    }
#undef TAKE
}

/* Find the msgid of something that starts like a request, from its first
 * bytes only: [0x94 | array16/32 of 4] 0x00 <uint msgid>. */
static bool peek_request_msgid(const uint8_t *p, size_t n, uint32_t *msgid)
{
    size_t i;

    if (n < 3)
        return false;
    if (p[0] == 0x94)
        i = 1;
    else if (n >= 5 && p[0] == 0xdc && p[1] == 0 && p[2] == 4)
        i = 3;
    else if (n >= 7 && p[0] == 0xdd && load32(p + 1) == 4)
        i = 5;
    else
        return false;
    if (i + 2 > n || p[i] != 0x00)
        return false;
    i++;
    uint8_t b = p[i++];
    uint64_t v;
    unsigned w = 0;
    if (b <= 0x7f) {
        *msgid = b;
        return true;
    }
    switch (b) {
    case 0xcc: case 0xd0: w = 1; break;
    case 0xcd: case 0xd1: w = 2; break;
    case 0xce: case 0xd2: w = 4; break;
    case 0xcf: case 0xd3: w = 8; break;
    default: return false;
    }
    if (i + w > n)
        return false;
    v = be(p + i, w);
    if ((b >= 0xd0 && (p[i] & 0x80)) || v > UINT32_MAX)
        return false;
    *msgid = (uint32_t)v;
    return true;
}

static void fault_set(struct wire_fault *f, int code, const char *fmt, const char *arg)
{
    f->code = code;
    snprintf(f->detail, sizeof(f->detail), fmt, arg);
}

static bool obj_is_str(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_STR;
}

static bool obj_uint32(const msgpack_object *o, uint32_t *out)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > UINT32_MAX)
        return false;
    *out = (uint32_t)o->via.u64;
    return true;
}

/* params must be an array holding exactly one map. */
static const msgpack_object *params_map(const msgpack_object *o)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 1)
        return NULL;
    if (o->via.array.ptr[0].type != MSGPACK_OBJECT_MAP)
        return NULL;
    return &o->via.array.ptr[0];
}

/* Check the msgpack-rpc shape of a complete object and fill msg. */
static int check_shape(const msgpack_object *o, struct wire_msg *m, struct wire_fault *f)
{
    const msgpack_object *e;

    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 2) {
        fault_set(f, -EPROTO, "%s", "message is not a msgpack-rpc array");
        return -EPROTO;
    }
    e = o->via.array.ptr;
    if (e[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || e[0].via.u64 > WIRE_NOTIFY) {
        fault_set(f, -EPROTO, "%s", "message type is not 0, 1 or 2");
        return -EPROTO;
    }
    m->kind = (enum wire_kind)e[0].via.u64;
    /* A request whose msgid can be read is answered (§2), whatever else is wrong with it. */
    if (m->kind == WIRE_REQUEST && obj_uint32(&e[1], &f->msgid))
        f->has_msgid = true;
    if (m->kind == WIRE_NOTIFY) {
        if (o->via.array.size != 3 || !obj_is_str(&e[1]) || !(m->params = params_map(&e[2]))) {
            fault_set(f, -EPROTO, "%s", "notification is not [2, method, [params]]");
            return -EPROTO;
        }
        m->method = e[1].via.str.ptr;
        m->method_len = e[1].via.str.size;
        return 0;
    }
    if (o->via.array.size != 4 || !obj_uint32(&e[1], &m->msgid)) {
        fault_set(f, -EPROTO, "%s", "request or response is not [type, msgid(u32), x, y]");
        return -EPROTO;
    }
    if (m->kind == WIRE_RESPONSE) {
        m->error = &e[2];
        m->result = &e[3];
        return 0;
    }
    if (!obj_is_str(&e[2])) {
        fault_set(f, -EPROTO, "%s", "request method is not a string");
        return -EPROTO;
    }
    m->method = e[2].via.str.ptr;
    m->method_len = e[2].via.str.size;
    if (!(m->params = params_map(&e[3]))) {
        fault_set(f, -EPROTO, "%s", "request params are not an array holding one map");
        return -EPROTO;
    }
    return 0;
}

static int zone_ready(struct wire_decoder *d, struct wire_fault *fault)
{
    if (!d->zone_ready && !msgpack_zone_init(&d->zone, WIRE_ZONE_CHUNK)) {
        d->broken = true;
        fault_set(fault, -ENOMEM, "%s", "out of memory unpacking the message");
        return -1;
    }
    d->zone_ready = true;
    return 0;
}

/* The usual case: a whole message, within the limits, at the start of what
 * was read. wire_unpack accepts exactly what the scanner accepts (the fuzzer
 * checks it), and walking the bytes once instead of twice is a sixth of a
 * no-op round trip. 1 with the message, -1 on a fault, 0 when the message is
 * not whole or breaks a limit: the scanner then walks it and says why. */
static int unpack_whole(struct wire_decoder *d, const uint8_t *start, size_t avail,
                        struct wire_msg *msg, struct wire_fault *fault)
{
    size_t off = 0, lim = avail < d->max_message ? avail : d->max_message;

    if (zone_ready(d, fault) < 0)
        return -1;
    if (wire_unpack((const char *)start, lim, &off, &d->zone, d->max_depth, &d->obj) < 0) {
        msgpack_zone_clear(&d->zone);
        return 0;
    }
    d->have_unpacked = true;
    d->head += off;
    msg->bytes = off;
    return check_shape(&d->obj, msg, fault) < 0 ? -1 : 1;
}

int wire_decoder_next(struct wire_decoder *d, struct wire_msg *msg, struct wire_fault *fault)
{
    memset(msg, 0, sizeof(*msg));
    memset(fault, 0, sizeof(*fault));
    release_unpacked(d);
    if (d->broken) {
        fault_set(fault, -EBADMSG, "%s", "stream already failed");
        return -1;
    }

    for (;;) {
        const uint8_t *start = (const uint8_t *)d->buf + d->head;
        size_t avail = d->len - d->head - d->scanned;
        size_t used = 0;
        int rc;

        if (avail == 0)
            return 0;
        if (d->scanned == 0 && !d->discarding && !d->scan_only) {
            rc = unpack_whole(d, start, avail, msg, fault);
            if (rc != 0)
                return rc;
        }
        rc = scan_bytes(&d->scan, d->max_depth, start + d->scanned, avail, &used);
        if (rc < 0) {
            d->broken = true;
            fault->code = rc;
            if (rc == -ELOOP)
                snprintf(fault->detail, sizeof(fault->detail),
                         "message nests arrays and maps deeper than %u levels", d->max_depth);
            else
                snprintf(fault->detail, sizeof(fault->detail), "bytes are not valid msgpack");
            return -1;
        }
        if (d->discarding) {
            /* Drop what was walked: an oversized message is never kept. */
            d->head += used;
            d->scanned = 0;
            if (rc == 1) {
                d->discarding = false;
                scan_reset(&d->scan);
            }
            continue;
        }
        d->scanned += used;
        if (d->scanned > d->max_message) {
            uint32_t id;
            if (!peek_request_msgid(start, d->len - d->head, &id)) {
                d->broken = true;
                fault->code = -EMSGSIZE;
                snprintf(fault->detail, sizeof(fault->detail),
                         "message exceeds the limit of %zu bytes and is not a request",
                         d->max_message);
                return -1;
            }
            fault->code = -EMSGSIZE;
            fault->has_msgid = true;
            fault->msgid = id;
            snprintf(fault->detail, sizeof(fault->detail),
                     "message exceeds the limit of %zu bytes", d->max_message);
            d->head += d->scanned;
            d->scanned = 0;
            if (rc == 1)
                scan_reset(&d->scan);
            else
                d->discarding = true;
            return -1;
        }
        if (rc == 0)
            return 0;

        /* A complete message of d->scanned bytes at start. */
        size_t bytes = d->scanned, off = 0;
        d->head += bytes;
        d->scanned = 0;
        scan_reset(&d->scan);
        /* One zone for the life of the decoder: making and freeing one per
         * message cost a tenth of a no-op round trip. */
        if (zone_ready(d, fault) < 0)
            return -1;
        d->have_unpacked = true;
        int ur = wire_unpack((const char *)start, bytes, &off, &d->zone, d->max_depth, &d->obj);
        if (ur < 0 || off != bytes) {
            /* The scanner accepted it, so only memory can fail here; whatever
             * it is, the stream is lost. */
            d->broken = true;
            if (ur == -ENOMEM)
                fault_set(fault, -ENOMEM, "%s", "out of memory unpacking the message");
            else
                fault_set(fault, -EBADMSG, "%s", "the message could not be unpacked");
            return -1;
        }
        msg->bytes = bytes;
        if (check_shape(&d->obj, msg, fault) < 0)
            return -1;
        return 1;
    }
}

void wire_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void wire_pack_request_head(msgpack_packer *pk, uint32_t msgid, const char *method)
{
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint8(pk, WIRE_REQUEST);
    msgpack_pack_uint32(pk, msgid);
    wire_pack_str(pk, method);
    msgpack_pack_array(pk, 1);
}

void wire_pack_notify_head(msgpack_packer *pk, const char *method)
{
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint8(pk, WIRE_NOTIFY);
    wire_pack_str(pk, method);
    msgpack_pack_array(pk, 1);
}

void wire_pack_response_head(msgpack_packer *pk, uint32_t msgid)
{
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint8(pk, WIRE_RESPONSE);
    msgpack_pack_uint32(pk, msgid);
    msgpack_pack_nil(pk);
}

void wire_pack_response_error(msgpack_packer *pk, uint32_t msgid, const char *code,
                              const char *message)
{
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint8(pk, WIRE_RESPONSE);
    msgpack_pack_uint32(pk, msgid);
    msgpack_pack_map(pk, 2);
    wire_pack_str(pk, "code");
    wire_pack_str(pk, code);
    wire_pack_str(pk, "message");
    wire_pack_str(pk, message);
    msgpack_pack_nil(pk);
}

int wire_socket_path(const char *opt, const char *env_socket, const char *env_runtime_dir,
                     char *out, size_t outlen)
{
    int n;

    if (opt != NULL) {
        if (opt[0] == '\0')
            return -EINVAL;
        n = snprintf(out, outlen, "%s", opt);
    } else if (env_socket != NULL && env_socket[0] != '\0') {
        n = snprintf(out, outlen, "%s", env_socket);
    } else if (env_runtime_dir != NULL && env_runtime_dir[0] != '\0') {
        n = snprintf(out, outlen, "%s/emad.sock", env_runtime_dir);
    } else {
        n = snprintf(out, outlen, "%s", "/run/emad/emad.sock");
    }
    if (n < 0 || (size_t)n >= outlen || n > WIRE_SOCKET_PATH_MAX)
        return -ENAMETOOLONG;
    return 0;
}
