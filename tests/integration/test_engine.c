/*
 * test_engine.c - the EMA engine end to end: emad as a subprocess, driven
 * through libemaclient (segments, register, events in both forms, swaps,
 * save/load, close, drop), emactl and raw requests where the library would
 * not send what a test needs.
 *
 * The EMA values are checked bit for bit against a reference computed here
 * (docs/protocol.md "EMA semantics" and "Numerics"): for float tensors, with x the
 * param widened exactly, w = (float)(1.0 - smoothing) computed in double,
 *   shadow = w < 0.5 ? fmaf(w, x - s, s) : fmaf(w - 1, x - s, x)
 * (f64 in double with fma), integer tensors copied; swap-in writes the
 * shadow cast to the param's dtype with round-to-nearest-even.
 *
 * emad runs under the shared harness (harness.h). Binaries come from
 * $EMAD_BIN and $EMACTL_BIN (default build/emad and build/emactl), so the
 * same tests run against the sanitizer build.
 */
#include "harness.h"

#include "dtype.h"
#include "emaclient.h"
#include "msg.h"
#include "segment.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

/* ---- emad as a subprocess (harness.h), with what this file adds ---- */

/* Every segment made and every shadow object registered, so that a failed
 * test (cmocka longjmps out of it) leaves nothing behind. */
static emac_segment *segments[64];
static size_t nsegments;
static char shm_names[256][256]; /* shadow objects of the sessions registered */
static size_t nshm_names;

/* Teardown: kill_leftovers(), then destroy the segments and unlink the
 * shadow objects left behind. */
static int teardown(void **state)
{
    kill_leftovers(state);
    for (size_t i = 0; i < nsegments; i++)
        emac_segment_destroy(segments[i]);
    nsegments = 0;
    for (size_t i = 0; i < nshm_names; i++)
        shm_unlink(shm_names[i]);
    nshm_names = 0;
    return 0;
}

/* Start emad on a new private directory with two workers and extra
 * arguments (NULL-terminated; they come after --workers 2). */
static void engine_start(struct daemon *d, const char *const extra[])
{
    const char *args[40] = {"--workers", "2"};
    size_t n = 2;

    for (size_t i = 0; extra && extra[i] && n < 39; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    daemon_start(d, args);
}

/* ---- assertions on library calls ---- */

/* The call must succeed; on failure show emad's (or the library's) words. */
#define OK(call)                                                                               \
    do {                                                                                       \
        memset(&err, 0, sizeof(err));                                                          \
        int rc_ = (call);                                                                      \
        if (rc_ != 0)                                                                          \
            fail_msg("%s: rc %d, %s: %s", #call, rc_, err.code, err.message);                  \
    } while (0)

/* The call must fail with code, and its message must contain needle (if not NULL). */
static void expect_failure(int rc, const struct emac_error *err, const char *call,
                           const char *code, const char *needle)
{
    if (rc == 0)
        fail_msg("%s: succeeded, expected %s", call, code);
    if (strcmp(err->code, code) != 0)
        fail_msg("%s: got %s (%s), expected %s", call, err->code, err->message, code);
    if (needle != NULL && strstr(err->message, needle) == NULL)
        fail_msg("%s: message \"%s\" does not mention \"%s\"", call, err->message, needle);
}

#define FAILS(call, code, needle)                                                              \
    do {                                                                                       \
        memset(&err, 0, sizeof(err));                                                          \
        expect_failure((call), &err, #call, code, needle);                                     \
    } while (0)

/* ---- tensors and values ---- */

/* One tensor of every dtype, odd sizes so that vector tails are exercised. */
static const uint64_t shape_f32[] = {1031};
static const uint64_t shape_bf16[] = {5, 103};
static const struct emac_tensor_spec mixed[] = {
    {"l1.weight", "f32", 1031, shape_f32, 1},
    {"l1.bias/bf16", "bf16", 515, shape_bf16, 2},
    {"l2.weight:f16", "f16", 517, NULL, 0},
    {"l3.weight.f64", "f64", 259, NULL, 0},
    {"num_batches_tracked", "i64", 1, NULL, 0},
    {"buf.i32", "i32", 5, NULL, 0},
    {"buf.i16", "i16", 6, NULL, 0},
    {"buf.i8", "i8", 7, NULL, 0},
    {"buf.u8", "u8", 9, NULL, 0},
    {"mask", "bool", 3, NULL, 0},
};
#define NMIXED (sizeof(mixed) / sizeof(mixed[0]))

static const struct emac_tensor_spec small[] = {
    {"w", "f32", 67, NULL, 0},
    {"b", "bf16", 13, NULL, 0},
    {"n", "i64", 1, NULL, 0},
};
#define NSMALL (sizeof(small) / sizeof(small[0]))

static emac_segment *new_segment(const struct emac_tensor_spec *specs, size_t n)
{
    struct emac_error err;
    emac_segment *seg = NULL;

    OK(emac_segment_create(specs, n, &seg, &err));
    assert_true(nsegments < sizeof(segments) / sizeof(segments[0]));
    segments[nsegments++] = seg;
    return seg;
}

static void destroy_segment(emac_segment *seg)
{
    for (size_t i = 0; i < nsegments; i++) {
        if (segments[i] == seg) {
            segments[i] = segments[--nsegments];
            break;
        }
    }
    emac_segment_destroy(seg);
}

/* Remember a session's shadow object: the teardown unlinks it, since emad
 * may leave it behind when it stops (and certainly when it is killed). */
static void forget_shadow_later(const emac_session *s)
{
    const char *name = emac_session_state(s)->shadow_shm;
    if (nshm_names < sizeof(shm_names) / sizeof(shm_names[0]) && name != NULL)
        snprintf(shm_names[nshm_names++], sizeof(shm_names[0]), "%s", name);
}

static uint32_t hash32(uint64_t a, uint64_t b)
{
    uint64_t x = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull) * 0xBF58476D1CE4E5B9ull;
    x ^= x >> 31;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 29;
    return (uint32_t)(x >> 16);
}

static float f32_of_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static uint32_t bits_of_f32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static float bf16_to_f32(uint16_t h)
{
    return f32_of_bits((uint32_t)h << 16);
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t u = bits_of_f32(f);
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

/* The compiler's _Float16 conversions are exact (widening) and round to
 * nearest even (narrowing): an implementation independent of emad's. */
static float f16_to_f32(uint16_t h)
{
    _Float16 v;
    memcpy(&v, &h, sizeof(v));
    return (float)v;
}

static uint16_t f32_to_f16(float f)
{
    _Float16 v = (_Float16)f;
    uint16_t h;
    memcpy(&h, &v, sizeof(h));
    return h;
}

static enum dtype dtype_of(const struct emac_tensor *t)
{
    enum dtype dt;
    assert_int_equal(dtype_from_name(t->dtype, strlen(t->dtype), &dt), 0);
    return dt;
}

/* Fill every tensor with values that depend on seed: finite, with full
 * mantissas, of both signs, in each dtype's range. */
static void fill_params(emac_segment *seg, uint64_t seed)
{
    for (size_t k = 0; k < emac_segment_ntensors(seg); k++) {
        const struct emac_tensor *t = emac_segment_tensor(seg, k);
        for (uint64_t i = 0; i < t->numel; i++) {
            uint32_t h = hash32(seed * 1000 + k, i);
            double v = ((double)h / 4294967296.0 - 0.5) * 8.0;
            switch (dtype_of(t)) {
            case DTYPE_F32: ((float *)t->data)[i] = (float)v; break;
            case DTYPE_BF16: ((uint16_t *)t->data)[i] = f32_to_bf16((float)v); break;
            case DTYPE_F16: ((uint16_t *)t->data)[i] = f32_to_f16((float)v); break;
            case DTYPE_F64: ((double *)t->data)[i] = v + (double)h * 1e-12; break;
            case DTYPE_I64: ((int64_t *)t->data)[i] = (int64_t)seed * 1000003 - h; break;
            case DTYPE_I32: ((int32_t *)t->data)[i] = (int32_t)h; break;
            case DTYPE_I16: ((int16_t *)t->data)[i] = (int16_t)h; break;
            case DTYPE_I8: ((int8_t *)t->data)[i] = (int8_t)h; break;
            case DTYPE_U8: ((uint8_t *)t->data)[i] = (uint8_t)h; break;
            case DTYPE_BOOL: ((uint8_t *)t->data)[i] = h & 1; break;
            default: fail();
            }
        }
    }
}

/* ---- the reference EMA ---- */

struct model {
    emac_segment *seg; /* whose params the next start or update reads */
    size_t n;
    void *shadow[16];  /* per tensor, in the shadow's dtype */
    size_t bytes[16];
};

static void model_start(struct model *m)
{
    for (size_t k = 0; k < m->n; k++) {
        const struct emac_tensor *t = emac_segment_tensor(m->seg, k);
        for (uint64_t i = 0; i < t->numel; i++) {
            switch (dtype_of(t)) {
            case DTYPE_BF16:
                ((float *)m->shadow[k])[i] = bf16_to_f32(((uint16_t *)t->data)[i]);
                break;
            case DTYPE_F16:
                ((float *)m->shadow[k])[i] = f16_to_f32(((uint16_t *)t->data)[i]);
                break;
            default:
                memcpy((char *)m->shadow[k] + i * t->elem_size, (char *)t->data + i * t->elem_size,
                       t->elem_size);
            }
        }
    }
}

/* shadow := params (what register does, and a start). */
static void model_init(struct model *m, emac_segment *seg)
{
    memset(m, 0, sizeof(*m));
    m->seg = seg;
    m->n = emac_segment_ntensors(seg);
    assert_true(m->n <= 16);
    for (size_t k = 0; k < m->n; k++) {
        const struct emac_tensor *t = emac_segment_tensor(seg, k);
        m->bytes[k] = t->numel * dtype_size(dtype_shadow(dtype_of(t)));
        m->shadow[k] = calloc(1, m->bytes[k] + 1);
        assert_non_null(m->shadow[k]);
    }
    model_start(m);
}

static void model_free(struct model *m)
{
    for (size_t k = 0; k < m->n; k++)
        free(m->shadow[k]);
    m->n = 0;
}

static float lerp_f32(float s, float x, float w)
{
    float d = x - s;
    return w < 0.5f ? fmaf(w, d, s) : fmaf(w - 1.0f, d, x);
}

static double lerp_f64(double s, double x, double w)
{
    double d = x - s;
    return w < 0.5 ? fma(w, d, s) : fma(w - 1.0, d, x);
}

static void model_update(struct model *m, double smoothing)
{
    float w = (float)(1.0 - smoothing);
    double wd = 1.0 - smoothing;

    for (size_t k = 0; k < m->n; k++) {
        const struct emac_tensor *t = emac_segment_tensor(m->seg, k);
        float *s32 = m->shadow[k];
        double *s64 = m->shadow[k];
        for (uint64_t i = 0; i < t->numel; i++) {
            switch (dtype_of(t)) {
            case DTYPE_F32: s32[i] = lerp_f32(s32[i], ((float *)t->data)[i], w); break;
            case DTYPE_BF16:
                s32[i] = lerp_f32(s32[i], bf16_to_f32(((uint16_t *)t->data)[i]), w);
                break;
            case DTYPE_F16:
                s32[i] = lerp_f32(s32[i], f16_to_f32(((uint16_t *)t->data)[i]), w);
                break;
            case DTYPE_F64: s64[i] = lerp_f64(s64[i], ((double *)t->data)[i], wd); break;
            default: break;
            }
        }
        if (!dtype_is_float(dtype_of(t)))
            memcpy(m->shadow[k], t->data, t->bytes);
    }
}

/* Apply what emad said it did. */
static void model_apply(struct model *m, enum emac_action a, double smoothing)
{
    if (a == EMAC_ACTION_START || a == EMAC_ACTION_START_UPDATE)
        model_start(m);
    if (a == EMAC_ACTION_UPDATE || a == EMAC_ACTION_START_UPDATE)
        model_update(m, smoothing);
}

/* emad's shadow equals the reference, byte for byte. */
static void expect_shadow(const struct model *m, const emac_session *s, const char *when)
{
    for (size_t k = 0; k < m->n; k++) {
        const struct emac_shadow *sh = emac_session_shadow(s, k);
        assert_non_null(sh);
        size_t es = sh->elem_size;
        if (m->bytes[k] == 0)
            continue;
        if (memcmp(sh->data, m->shadow[k], m->bytes[k]) == 0)
            continue;
        for (size_t i = 0; i < m->bytes[k] / es; i++) {
            const unsigned char *a = (const unsigned char *)sh->data + i * es;
            const unsigned char *b = (const unsigned char *)m->shadow[k] + i * es;
            if (memcmp(a, b, es) != 0) {
                double va = es == 8 ? *(const double *)(const void *)a
                                    : *(const float *)(const void *)a;
                double vb = es == 8 ? *(const double *)(const void *)b
                                    : *(const float *)(const void *)b;
                fail_msg("%s: session %s, tensor \"%s\" (%s) element %zu: emad %.17g, expected "
                         "%.17g", when, emac_session_name(s), sh->name, sh->dtype, i, va, vb);
            }
        }
    }
}

/* The params hold the reference shadow cast to their dtypes (after a swap in). */
static void expect_params_hold_shadow(const struct model *m, emac_segment *seg)
{
    for (size_t k = 0; k < m->n; k++) {
        const struct emac_tensor *t = emac_segment_tensor(seg, k);
        for (uint64_t i = 0; i < t->numel; i++) {
            bool same;
            switch (dtype_of(t)) {
            case DTYPE_BF16:
                same = ((uint16_t *)t->data)[i] == f32_to_bf16(((float *)m->shadow[k])[i]);
                break;
            case DTYPE_F16:
                same = ((uint16_t *)t->data)[i] == f32_to_f16(((float *)m->shadow[k])[i]);
                break;
            default:
                same = memcmp((char *)t->data + i * t->elem_size,
                              (char *)m->shadow[k] + i * t->elem_size, t->elem_size) == 0;
            }
            if (!same)
                fail_msg("tensor \"%s\" (%s) element %" PRIu64 " is not the EMA weight cast to "
                         "its dtype", t->name, t->dtype, i);
        }
    }
}

/* A copy of a segment's params area. */
static void *params_copy(emac_segment *seg, size_t *len)
{
    const struct seg_header *h = emac_segment_base(seg);
    void *p = malloc(h->params_bytes + 1);
    assert_non_null(p);
    memcpy(p, (char *)emac_segment_base(seg) + h->params_offset, h->params_bytes);
    *len = h->params_bytes;
    return p;
}

static bool params_equal(emac_segment *seg, const void *copy)
{
    const struct seg_header *h = emac_segment_base(seg);
    return memcmp((char *)emac_segment_base(seg) + h->params_offset, copy, h->params_bytes) == 0;
}

static bool stash_equal(emac_segment *seg, const void *copy)
{
    const struct seg_header *h = emac_segment_base(seg);
    return memcmp((char *)emac_segment_base(seg) + h->stash_offset, copy, h->params_bytes) == 0;
}

static struct emac_time at(uint64_t batch, uint64_t epoch)
{
    struct emac_time t = {batch, epoch, false, 0.0};
    return t;
}

static struct emac_result ev(emac_session *s, const char *event, struct emac_time t)
{
    struct emac_error err;
    struct emac_result r;
    OK(emac_event(s, event, &t, &r, &err));
    return r;
}

static void expect_action(struct emac_result r, enum emac_action a, const char *when)
{
    if (r.action != a)
        fail_msg("%s: action %s, expected %s", when, emac_action_name(r.action),
                 emac_action_name(a));
}

static emac_client *connect_ok(const struct daemon *d)
{
    struct emac_error err;
    emac_client *c = NULL;
    OK(emac_connect(d->sock, "test_engine", &c, &err));
    return c;
}

/* Turn the library's reconnecting off: the call that notices a lost
 * connection fails at once. */
static void no_reconnect(emac_client *c)
{
    struct emac_reconnect rc;
    struct emac_error err;

    emac_reconnect_defaults(&rc);
    rc.enabled = false;
    OK(emac_set_reconnect(c, &rc, &err));
}

static emac_session *register_ok(emac_client *c, const char *name, emac_segment *seg,
                                 const struct emac_config *cfg, bool resume)
{
    struct emac_error err;
    emac_session *s = NULL;
    OK(emac_register(c, name, seg, cfg, resume, &s, &err));
    forget_shadow_later(s);
    return s;
}

/* The current state of one session, from status. */
static struct emac_session_info session_status(emac_client *c, const char *name,
                                               struct emac_status **keep)
{
    struct emac_error err;
    OK(emac_status(c, name, keep, &err));
    assert_int_equal((*keep)->nsessions, 1);
    return (*keep)->session_list[0];
}

/* ---- raw requests, for what the library would not send ---- */

struct raw {
    int fd;
    uint32_t next;
    struct wire_decoder dec;
};

static void raw_request(struct raw *r, const char *method, const struct msg_desc *d,
                        const void *req, struct reply *out)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint32_t id = r->next++;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, id, method);
    msg_encode(&pk, d, req);
    send_bytes(r->fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    read_reply_dec(r->fd, &r->dec, out);
    assert_false(out->eof);
    assert_int_equal(out->msgid, id);
}

static void raw_open(struct raw *r, const char *sock)
{
    struct msg_hello h = {1, msg_str_c("raw test"), false, 0};
    struct reply rep;

    r->fd = try_connect(sock);
    assert_true(r->fd >= 0);
    r->next = 1;
    wire_decoder_init(&r->dec, 1u << 24, 8);
    raw_request(r, "hello", &msg_hello_desc, &h, &rep);
    assert_string_equal(rep.code, "");
}

static void raw_close(struct raw *r)
{
    close(r->fd);
    wire_decoder_free(&r->dec);
}

static void expect_reply(const struct reply *rep, const char *code, const char *needle,
                         const char *what)
{
    if (strcmp(rep->code, code) != 0)
        fail_msg("%s: got \"%s\" (%s), expected \"%s\"", what, rep->code, rep->message, code);
    if (needle != NULL && strstr(rep->message, needle) == NULL)
        fail_msg("%s: message \"%s\" does not mention \"%s\"", what, rep->message, needle);
}

/* A register request for seg's table, which the test may then spoil. */
struct raw_reg {
    struct msg_register req;
    struct msg_tensor tensors[16];
};

static void raw_reg_init(struct raw_reg *rr, const char *session, emac_segment *seg)
{
    memset(rr, 0, sizeof(*rr));
    rr->req.session = msg_str_c(session);
    rr->req.shm = msg_str_c(emac_segment_name(seg));
    rr->req.tensors = rr->tensors;
    rr->req.ntensors = emac_segment_ntensors(seg);
    for (size_t i = 0; i < rr->req.ntensors; i++) {
        const struct emac_tensor *t = emac_segment_tensor(seg, i);
        rr->tensors[i].name = msg_str_c(t->name);
        rr->tensors[i].dtype = msg_str_c(t->dtype);
        rr->tensors[i].offset = t->offset;
        rr->tensors[i].numel = t->numel;
    }
}

/* ============================ tests ============================ */

/* ---- the library alone (no emad needed) ---- */

static void test_segment_create_lays_out_tensors_and_header(void **state)
{
    struct emac_error err;
    struct stat st;
    char path[300];
    (void)state;

    emac_segment *seg = new_segment(mixed, NMIXED);
    const char *name = emac_segment_name(seg);
    assert_memory_equal(name, "/emad-", 6);
    assert_int_equal(strlen(name), 6 + 16);
    snprintf(path, sizeof(path), "/dev/shm%s", name);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal((uint64_t)st.st_size, emac_segment_bytes(seg));

    const struct seg_header *h = emac_segment_base(seg);
    char why[256];
    assert_int_equal(seg_header_check(h, emac_segment_bytes(seg), why, sizeof(why)), 0);
    assert_memory_equal(h->magic, "EMASEG01", 8);
    assert_int_equal(h->version, 1);
    assert_int_equal(h->header_bytes, 4096);
    assert_int_equal(h->params_offset, 4096);
    assert_int_equal(h->stash_offset % 4096, 0);
    assert_true(h->stash_offset >= h->params_offset + h->params_bytes);
    assert_int_equal(h->segment_bytes, h->stash_offset + h->params_bytes);
    assert_int_equal(h->swap_state, SEG_TRAIN);
    assert_int_equal(h->swap_generation, 0);
    uint32_t sstate = 99;
    uint64_t gen = 99;
    emac_segment_swap_state(seg, &sstate, &gen);
    assert_int_equal(sstate, EMAC_SWAP_TRAIN);
    assert_int_equal(gen, 0);

    assert_int_equal(emac_segment_ntensors(seg), NMIXED);
    assert_null(emac_segment_tensor(seg, NMIXED));
    uint64_t end = 0;
    for (size_t i = 0; i < NMIXED; i++) {
        const struct emac_tensor *t = emac_segment_tensor(seg, i);
        assert_string_equal(t->name, mixed[i].name);
        assert_string_equal(t->dtype, mixed[i].dtype);
        assert_int_equal(t->numel, mixed[i].numel);
        assert_int_equal(t->offset % 64, 0);
        assert_true(t->offset >= end); /* in order, no overlap */
        assert_int_equal(t->bytes, t->numel * t->elem_size);
        assert_ptr_equal(t->data, (char *)emac_segment_base(seg) + 4096 + t->offset);
        end = t->offset + t->bytes;
        memset(t->data, 0x5a, t->bytes); /* writable */
    }
    assert_int_equal(h->params_bytes, end);
    assert_int_equal(emac_segment_tensor(seg, 1)->elem_size, 2);
    assert_int_equal(emac_segment_tensor(seg, 3)->elem_size, 8);

    /* Two segments never share a name; destroy removes the object. */
    emac_segment *other = new_segment(small, NSMALL);
    assert_string_not_equal(emac_segment_name(other), name);
    destroy_segment(seg);
    assert_int_equal(stat(path, &st), -1);
    assert_int_equal(errno, ENOENT);
    destroy_segment(other);
    (void)err;
}

static void test_segment_create_rejects_bad_specs(void **state)
{
    struct emac_error err;
    emac_segment *seg = NULL;
    char longname[1100];
    (void)state;

    memset(longname, 'x', sizeof(longname));
    longname[1025] = '\0';
    struct emac_tensor_spec bad[1];

    bad[0] = (struct emac_tensor_spec){"", "f32", 4, NULL, 0};
    FAILS(emac_segment_create(bad, 1, &seg, &err), "USAGE", "name");
    bad[0] = (struct emac_tensor_spec){longname, "f32", 4, NULL, 0};
    FAILS(emac_segment_create(bad, 1, &seg, &err), "USAGE", "1..1024 bytes");
    longname[1024] = '\0'; /* exactly 1024 bytes is allowed */
    OK(emac_segment_create(bad, 1, &seg, &err));
    emac_segment_destroy(seg);
    bad[0] = (struct emac_tensor_spec){NULL, "f32", 4, NULL, 0};
    FAILS(emac_segment_create(bad, 1, &seg, &err), "USAGE", "no name");
    bad[0] = (struct emac_tensor_spec){"bad\xff\xfeutf8", "f32", 4, NULL, 0};
    FAILS(emac_segment_create(bad, 1, &seg, &err), "USAGE", "UTF-8");
    bad[0] = (struct emac_tensor_spec){"surrogate\xed\xa0\x80", "f32", 4, NULL, 0};
    FAILS(emac_segment_create(bad, 1, &seg, &err), "USAGE", "UTF-8");
    bad[0] = (struct emac_tensor_spec){"w", "float32", 4, NULL, 0};
    FAILS(emac_segment_create(bad, 1, &seg, &err), "USAGE", "\"float32\"");
    bad[0] = (struct emac_tensor_spec){"w", NULL, 4, NULL, 0};
    FAILS(emac_segment_create(bad, 1, &seg, &err), "USAGE", "dtype");
    static const uint64_t shape[] = {2, 3};
    bad[0] = (struct emac_tensor_spec){"w", "f32", 7, shape, 2};
    FAILS(emac_segment_create(bad, 1, &seg, &err), "USAGE", "shape has 6 elements but numel is 7");
    bad[0] = (struct emac_tensor_spec){"w", "f64", UINT64_MAX / 4, NULL, 0};
    FAILS(emac_segment_create(bad, 1, &seg, &err), "USAGE", "overflow");
    FAILS(emac_segment_create(mixed, 0, &seg, &err), "USAGE", "no tensors");
    FAILS(emac_segment_create(mixed, 1, NULL, &err), "USAGE", NULL);
    /* A UTF-8 name of several-byte characters is fine; an empty tensor too. */
    struct emac_tensor_spec good[] = {{"gewicht.\xc3\xa4\xe2\x82\xac", "bf16", 3, NULL, 0},
                                      {"empty", "f32", 0, NULL, 0}};
    OK(emac_segment_create(good, 2, &seg, &err));
    assert_int_equal(emac_segment_tensor(seg, 1)->bytes, 0);
    emac_segment_destroy(seg);
}

static void test_segment_restore_and_recover_copy_the_stash_back(void **state)
{
    struct emac_error err;
    bool restored = true;
    size_t len;
    (void)state;

    emac_segment *seg = new_segment(mixed, NMIXED);
    struct seg_header *h = emac_segment_base(seg);
    char *base = emac_segment_base(seg);

    /* TRAIN: nothing to do. */
    fill_params(seg, 1);
    void *train = params_copy(seg, &len);
    OK(emac_segment_restore(seg, &restored, &err));
    assert_false(restored);
    assert_true(params_equal(seg, train));

    /* EMA and STASHED: the stash holds the training weights, the params
     * (some of) the EMA weights, as emad leaves them. */
    const uint32_t states[] = {SEG_EMA, SEG_STASHED};
    for (size_t k = 0; k < 2; k++) {
        memcpy(base + h->stash_offset, train, len);
        fill_params(seg, 2 + k);
        assert_false(params_equal(seg, train));
        seg_swap_state_store(h, states[k]);
        OK(emac_segment_restore(seg, &restored, &err));
        assert_true(restored);
        assert_true(params_equal(seg, train));
        assert_int_equal(seg_swap_state_load(h), SEG_TRAIN);
    }

    /* By name, from a process that has not mapped it (a trainer restarted
     * after a crash). */
    fill_params(seg, 9);
    seg_swap_state_store(h, SEG_EMA);
    OK(emac_segment_recover(emac_segment_name(seg), &restored, &err));
    assert_true(restored);
    assert_true(params_equal(seg, train));
    OK(emac_segment_recover(emac_segment_name(seg), &restored, &err));
    assert_false(restored);
    FAILS(emac_segment_recover("/emad-does-not-exist", &restored, &err), "SHM",
          "/emad-does-not-exist");

    /* Reopening with the same specs sees the same bytes; other specs are refused. */
    emac_segment *again = NULL;
    OK(emac_segment_open(emac_segment_name(seg), mixed, NMIXED, &again, &err));
    assert_int_equal(emac_segment_bytes(again), emac_segment_bytes(seg));
    for (size_t i = 0; i < NMIXED; i++)
        assert_memory_equal(emac_segment_tensor(again, i)->data, emac_segment_tensor(seg, i)->data,
                            emac_segment_tensor(seg, i)->bytes);
    ((float *)emac_segment_tensor(again, 0)->data)[0] = 42.0f; /* shared, not a copy */
    assert_true(((float *)emac_segment_tensor(seg, 0)->data)[0] == 42.0f);
    emac_segment_close(again);
    FAILS(emac_segment_open(emac_segment_name(seg), small, NSMALL, &again, &err), "USAGE",
          "not made for these tensors");
    FAILS(emac_segment_open("/not-emad", mixed, NMIXED, &again, &err), "USAGE", "/not-emad");

    /* A corrupt header is reported, and nothing is copied. */
    fill_params(seg, 10);
    void *now = params_copy(seg, &len);
    seg_swap_state_store(h, SEG_EMA);
    h->params_bytes = emac_segment_bytes(seg); /* would copy past the mapping */
    FAILS(emac_segment_restore(seg, &restored, &err), "SHM", "bad header");
    h->magic[0] = 'X';
    FAILS(emac_segment_recover(emac_segment_name(seg), &restored, &err), "SHM", "magic");
    assert_memory_equal(base + 4096, now, len);
    free(now);
    free(train);
    destroy_segment(seg);
}

static void test_api_rejects_null_and_misuse_without_emad(void **state)
{
    struct emac_error err;
    struct emac_result r;
    struct emac_time t = at(1, 0);
    emac_session *s = NULL;
    emac_ticket tk;
    struct emac_file f;
    (void)state;

    emac_segment *seg = new_segment(small, NSMALL);
    FAILS(emac_register(NULL, "x", seg, NULL, false, &s, &err), "USAGE", NULL);
    FAILS(emac_event(NULL, "batch_end", &t, &r, &err), "USAGE", NULL);
    FAILS(emac_event_send(NULL, "batch_end", &t, &tk, &err), "USAGE", NULL);
    FAILS(emac_event_wait(NULL, 1, &r, &err), "USAGE", NULL);
    FAILS(emac_swap(NULL, "ema", &r, &err), "USAGE", NULL);
    FAILS(emac_close(NULL, false, &err), "USAGE", NULL);
    FAILS(emac_save(NULL, "x", NULL, &f, &err), "USAGE", NULL);
    FAILS(emac_drop(NULL, "x", &err), "USAGE", NULL);
    FAILS(emac_connect("/tmp/emad-test-nonexistent.sock", "t", &(emac_client *){NULL}, &err),
          "CONNECT", "/tmp/emad-test-nonexistent.sock");
    assert_string_equal(emac_action_name(EMAC_ACTION_START_UPDATE), "start+update");
    assert_string_equal(emac_action_name(EMAC_ACTION_SWAP_IN), "swap_in");
    assert_null(emac_action_name((enum emac_action)42));
    destroy_segment(seg);
}

/* ---- register ---- */

static void test_register_maps_shadow_initialised_from_params(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct model m;
    struct emac_status *st;
    (void)state;

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    emac_segment *seg = new_segment(mixed, NMIXED);
    fill_params(seg, 7);
    emac_session *s = register_ok(c, "reg/one:1.x", seg, NULL, false);
    assert_string_equal(emac_session_name(s), "reg/one:1.x");
    assert_ptr_equal(emac_session_segment(s), seg);
    assert_false(emac_session_restored(s));

    /* The shadow: fp32 for f32/f16/bf16, f64 for f64, the integers' own. */
    static const char *const want[] = {"f32", "f32", "f32", "f64", "i64",
                                       "i32", "i16", "i8",  "u8",  "bool"};
    for (size_t i = 0; i < NMIXED; i++) {
        const struct emac_shadow *sh = emac_session_shadow(s, i);
        assert_non_null(sh);
        assert_string_equal(sh->name, mixed[i].name);
        assert_string_equal(sh->dtype, want[i]);
        assert_int_equal(sh->numel, mixed[i].numel);
    }
    assert_null(emac_session_shadow(s, NMIXED));
    /* Initialised from the params at register, as Composer does at INIT. */
    model_init(&m, seg);
    expect_shadow(&m, s, "after register");

    const struct emac_session_info *info = emac_session_state(s);
    assert_string_equal(info->session, "reg/one:1.x");
    assert_true(info->attached);
    assert_int_equal(info->owner_pid, getpid());
    assert_int_equal(info->tensors, NMIXED);
    assert_int_equal(info->params_bytes,
                     ((const struct seg_header *)emac_segment_base(seg))->params_bytes);
    assert_true(info->shadow_bytes >= 1031 * 4 + 515 * 4 + 517 * 4 + 259 * 8);
    /* Defaults: half_life 1000ba, update every 1ba, start at 0.0dur. */
    assert_string_equal(info->half_life, "1000ba");
    assert_string_equal(info->update_interval, "1ba");
    assert_string_equal(info->ema_start, "0.0dur");
    assert_true(fabs(info->smoothing - exp2(-1.0 / 1000.0)) < 1e-15);
    assert_false(info->started);
    assert_false(info->active);
    assert_int_equal(info->updates, 0);
    assert_int_equal(info->swaps, 0);
    assert_false(info->has_last_time);
    assert_string_equal(info->shm, emac_segment_name(seg));
    assert_non_null(info->shadow_shm);

    /* status says the same; the shadow object is read-only for us. */
    struct emac_session_info now = session_status(c, "reg/one:1.x", &st);
    assert_int_equal(now.tensors, NMIXED);
    assert_string_equal(now.shadow_shm, info->shadow_shm);
    assert_int_equal(now.shadow_bytes, info->shadow_bytes);
    emac_status_free(st);
    OK(emac_status(c, NULL, &st, &err));
    assert_int_equal(st->sessions, 1);
    emac_status_free(st);

    /* smoothing instead of half_life: no half_life, interval 1ba. */
    emac_segment *seg2 = new_segment(small, NSMALL);
    struct emac_config cfg = {.has_smoothing = true, .smoothing = 0.25};
    emac_session *s2 = register_ok(c, "reg-two", seg2, &cfg, false);
    assert_null(emac_session_state(s2)->half_life);
    assert_true(emac_session_state(s2)->smoothing == 0.25);
    assert_string_equal(emac_session_state(s2)->update_interval, "1ba");

    model_free(&m);
    emac_session_free(s2);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* ---- the EMA ---- */

struct expect_run {
    const char *name;
    struct emac_config cfg;
    double smoothing;                 /* expected */
    enum emac_action actions[8];      /* batch_end 1..8 */
};

static void test_ema_updates_bit_exact_with_start_and_interval(void **state)
{
    struct daemon d;
    struct emac_status *st;
    (void)state;

    const enum emac_action N = EMAC_ACTION_NONE, S = EMAC_ACTION_START, U = EMAC_ACTION_UPDATE,
                           SU = EMAC_ACTION_START_UPDATE;
    struct expect_run runs[] = {
        /* w = 1 - 2^-0.5 < 0.5: the fma from the shadow's side */
        {"hl4-iv2-start3", {.half_life = "4ba", .update_interval = "2ba", .ema_start = "3ba"},
         0.70710678118654752, {N, N, S, U, N, U, N, U}},
        /* w = 0.7 >= 0.5: the fma from the param's side; starts on an update batch */
        {"sm03-start2", {.has_smoothing = true, .smoothing = 0.3, .ema_start = "2ba"},
         0.3, {N, SU, U, U, U, U, U, U}},
        /* w = 0.5 exactly: half-life of one interval; default start */
        {"hl1", {.half_life = "1ba"}, 0.5, {SU, U, U, U, U, U, U, U}},
        /* interval 3, start 4: started before the first update */
        {"hl6-iv3-start4", {.half_life = "6ba", .update_interval = "3ba", .ema_start = "4ba"},
         0.70710678118654752, {N, N, N, S, N, U, N, N}},
    };
    const size_t nruns = sizeof(runs) / sizeof(runs[0]);
    emac_segment *segs[4];
    emac_session *ss[4];
    struct model models[4];

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    for (size_t r = 0; r < nruns; r++) {
        segs[r] = new_segment(mixed, NMIXED);
        fill_params(segs[r], 100 * r);
        ss[r] = register_ok(c, runs[r].name, segs[r], &runs[r].cfg, false);
        model_init(&models[r], segs[r]);
        double sm = emac_session_state(ss[r])->smoothing;
        if (fabs(sm - runs[r].smoothing) > 1e-15)
            fail_msg("%s: smoothing %.17g, expected %.17g", runs[r].name, sm, runs[r].smoothing);
    }
    bool started[4] = {false};
    for (uint64_t b = 1; b <= 8; b++) {
        for (size_t r = 0; r < nruns; r++) {
            char when[96];
            /* The trainer's optimizer step, then batch_end. */
            fill_params(segs[r], 100 * r + b);
            snprintf(when, sizeof(when), "%s batch_end %" PRIu64, runs[r].name, b);
            struct emac_result res = ev(ss[r], "batch_end", at(b, 0));
            expect_action(res, runs[r].actions[b - 1], when);
            model_apply(&models[r], res.action, emac_session_state(ss[r])->smoothing);
            expect_shadow(&models[r], ss[r], when);
            assert_false(res.active);
            started[r] = started[r] || res.action == S || res.action == SU;
            assert_int_equal(res.started, started[r]);
        }
    }
    /* The counters and the configuration as status reports them. */
    const uint64_t updates[] = {3, 7, 8, 1};
    for (size_t r = 0; r < nruns; r++) {
        struct emac_session_info info = session_status(c, runs[r].name, &st);
        assert_int_equal(info.updates, updates[r]);
        assert_true(info.started);
        assert_true(info.has_last_time);
        assert_int_equal(info.last_batch, 8);
        assert_int_equal(info.last_epoch, 0);
        assert_int_equal(info.swaps, 0);
        if (runs[r].cfg.half_life != NULL)
            assert_string_equal(info.half_life, runs[r].cfg.half_life);
        else
            assert_null(info.half_life);
        assert_string_equal(info.update_interval,
                            runs[r].cfg.update_interval ? runs[r].cfg.update_interval : "1ba");
        assert_string_equal(info.ema_start, runs[r].cfg.ema_start ? runs[r].cfg.ema_start
                                                                  : "0.0dur");
        assert_true(info.last_update_seconds >= 0.0);
        emac_status_free(st);
    }
    /* Events that do not update: epoch_end in a ba session, init, fit_start. */
    fill_params(segs[0], 999);
    expect_action(ev(ss[0], "epoch_end", at(8, 1)), N, "epoch_end in a ba session");
    expect_action(ev(ss[0], "init", at(8, 1)), N, "init");
    expect_action(ev(ss[0], "fit_start", at(8, 1)), N, "fit_start");
    expect_shadow(&models[0], ss[0], "after events that do not update");

    for (size_t r = 0; r < nruns; r++) {
        model_free(&models[r]);
        emac_session_free(ss[r]);
    }
    emac_disconnect(c);
    daemon_stop(&d);
}

static void test_epoch_interval_and_dur_start(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct model me, md;
    struct emac_result r;
    (void)state;

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);

    /* Epochs: the update event is epoch_end; batch_end does nothing. */
    emac_segment *se = new_segment(small, NSMALL);
    fill_params(se, 1);
    struct emac_config ce = {.half_life = "2ep", .ema_start = "1ep"};
    emac_session *e = register_ok(c, "epochs", se, &ce, false);
    assert_string_equal(emac_session_state(e)->update_interval, "1ep");
    double sm = emac_session_state(e)->smoothing;
    assert_true(fabs(sm - exp2(-0.5)) < 1e-15);
    model_init(&me, se);
    for (uint64_t b = 1; b <= 3; b++) {
        fill_params(se, 10 + b);
        expect_action(ev(e, "batch_end", at(b, 0)), EMAC_ACTION_NONE, "batch_end, ep session");
    }
    expect_action(ev(e, "epoch_end", at(3, 0)), EMAC_ACTION_NONE, "epoch_end before the start");
    fill_params(se, 20);
    r = ev(e, "epoch_end", at(6, 1));
    expect_action(r, EMAC_ACTION_START_UPDATE, "epoch_end 1");
    model_apply(&me, r.action, sm);
    expect_shadow(&me, e, "epoch 1");
    fill_params(se, 21);
    expect_action(ev(e, "batch_end", at(7, 1)), EMAC_ACTION_NONE, "batch_end, ep session");
    expect_shadow(&me, e, "batch_end in an ep session");
    r = ev(e, "epoch_end", at(9, 2));
    expect_action(r, EMAC_ACTION_UPDATE, "epoch_end 2");
    assert_int_equal(r.updates, 2);
    model_apply(&me, r.action, sm);
    expect_shadow(&me, e, "epoch 2");

    /* A dur start: reached only by events that carry a duration. */
    emac_segment *sd = new_segment(small, NSMALL);
    fill_params(sd, 2);
    struct emac_config cd = {.half_life = "10ba", .ema_start = "0.5dur"};
    emac_session *du = register_ok(c, "dur-start", sd, &cd, false);
    double smd = emac_session_state(du)->smoothing;
    model_init(&md, sd);
    struct emac_time t = {1, 0, true, 0.25};
    OK(emac_event(du, "batch_end", &t, &r, &err));
    expect_action(r, EMAC_ACTION_NONE, "duration 0.25 < 0.5");
    t = at(2, 0); /* no duration: cannot satisfy a start other than 0 */
    OK(emac_event(du, "batch_end", &t, &r, &err));
    expect_action(r, EMAC_ACTION_NONE, "no duration");
    fill_params(sd, 3);
    t = (struct emac_time){3, 0, true, 0.5};
    OK(emac_event(du, "batch_end", &t, &r, &err));
    expect_action(r, EMAC_ACTION_START_UPDATE, "duration 0.5");
    model_apply(&md, r.action, smd);
    fill_params(sd, 4);
    t = (struct emac_time){4, 0, true, 0.625};
    OK(emac_event(du, "batch_end", &t, &r, &err));
    expect_action(r, EMAC_ACTION_UPDATE, "duration 0.625");
    model_apply(&md, r.action, smd);
    expect_shadow(&md, du, "dur session");
    struct emac_status *st;
    struct emac_session_info info = session_status(c, "dur-start", &st);
    assert_true(info.has_last_duration);
    assert_true(info.last_duration == 0.625);
    emac_status_free(st);

    model_free(&me);
    model_free(&md);
    emac_session_free(e);
    emac_session_free(du);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* ---- swaps ---- */

/* Expect swap_state and swap_generation in the segment's header. */
static void expect_header(emac_segment *seg, uint32_t state, uint64_t gen, const char *when)
{
    uint32_t s;
    uint64_t g;
    emac_segment_swap_state(seg, &s, &g);
    if (s != state || g != gen)
        fail_msg("%s: swap_state %u generation %" PRIu64 ", expected %u and %" PRIu64, when, s, g,
                 state, gen);
}

static void test_eval_checkpoint_and_swap_cast_and_restore_bitwise(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_result r;
    struct model m;
    size_t len;
    (void)state;

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    emac_segment *seg = new_segment(mixed, NMIXED);
    fill_params(seg, 1);
    struct emac_config cfg = {.half_life = "2ba"};
    emac_session *s = register_ok(c, "swaps", seg, &cfg, false);
    double sm = emac_session_state(s)->smoothing;
    model_init(&m, seg);
    for (uint64_t b = 1; b <= 3; b++) {
        fill_params(seg, 1 + b);
        model_apply(&m, ev(s, "batch_end", at(b, 0)).action, sm);
    }
    expect_shadow(&m, s, "before the swaps");
    /* The next optimizer step changes every tensor, integers included, so
     * that the EMA weights differ from the training weights everywhere. */
    fill_params(seg, 50);
    void *train = params_copy(seg, &len);
    uint64_t gen = 0;
    expect_header(seg, SEG_TRAIN, gen, "before eval_start");

    /* eval_start: params -> stash, shadow -> params, cast with RNE. */
    r = ev(s, "eval_start", at(3, 0));
    expect_action(r, EMAC_ACTION_SWAP_IN, "eval_start");
    assert_true(r.active);
    assert_true(r.started);
    expect_header(seg, SEG_EMA, ++gen, "after eval_start");
    expect_params_hold_shadow(&m, seg);
    assert_true(stash_equal(seg, train));
    expect_shadow(&m, s, "a swap leaves the shadow alone");
    expect_action(ev(s, "eval_start", at(3, 0)), EMAC_ACTION_NONE, "eval_start while active");
    OK(emac_swap(s, "ema", &r, &err));
    expect_action(r, EMAC_ACTION_NONE, "swap to ema while active");
    expect_header(seg, SEG_EMA, gen, "no swap");

    /* eval_end: stash -> params, bit for bit. */
    r = ev(s, "eval_end", at(3, 0));
    expect_action(r, EMAC_ACTION_SWAP_OUT, "eval_end");
    assert_false(r.active);
    expect_header(seg, SEG_TRAIN, ++gen, "after eval_end");
    assert_true(params_equal(seg, train));
    expect_action(ev(s, "eval_end", at(3, 0)), EMAC_ACTION_NONE, "eval_end while not active");
    OK(emac_swap(s, "train", &r, &err));
    expect_action(r, EMAC_ACTION_NONE, "swap to train while not active");
    expect_action(ev(s, "batch_start", at(3, 0)), EMAC_ACTION_NONE, "batch_start, not active");

    /* checkpoint: in, and it stays in until the next batch_start. */
    r = ev(s, "checkpoint", at(3, 0));
    expect_action(r, EMAC_ACTION_SWAP_IN, "checkpoint");
    expect_header(seg, SEG_EMA, ++gen, "after checkpoint");
    expect_params_hold_shadow(&m, seg);
    expect_action(ev(s, "checkpoint", at(3, 0)), EMAC_ACTION_NONE, "checkpoint while active");
    r = ev(s, "batch_start", at(3, 0));
    expect_action(r, EMAC_ACTION_SWAP_OUT, "batch_start after checkpoint");
    expect_header(seg, SEG_TRAIN, ++gen, "after batch_start");
    assert_true(params_equal(seg, train));

    /* checkpoint then eval_end also swaps out. */
    expect_action(ev(s, "checkpoint", at(3, 0)), EMAC_ACTION_SWAP_IN, "checkpoint 2");
    expect_action(ev(s, "eval_end", at(3, 0)), EMAC_ACTION_SWAP_OUT, "eval_end after checkpoint");
    gen += 2;
    assert_true(params_equal(seg, train));

    /* swap on request. */
    OK(emac_swap(s, "ema", &r, &err));
    expect_action(r, EMAC_ACTION_SWAP_IN, "swap to ema");
    assert_true(r.active);
    expect_header(seg, SEG_EMA, ++gen, "after swap to ema");
    expect_params_hold_shadow(&m, seg);
    OK(emac_swap(s, "train", &r, &err));
    expect_action(r, EMAC_ACTION_SWAP_OUT, "swap to train");
    expect_header(seg, SEG_TRAIN, ++gen, "after swap to train");
    assert_true(params_equal(seg, train));

    /* Updates go on from the same shadow after all these swaps. */
    r = ev(s, "batch_end", at(4, 0));
    expect_action(r, EMAC_ACTION_UPDATE, "batch_end after the swaps");
    model_apply(&m, r.action, sm);
    expect_shadow(&m, s, "after the swaps");
    struct emac_status *st;
    struct emac_session_info info = session_status(c, "swaps", &st);
    assert_int_equal(info.swaps, 8);
    assert_int_equal(info.updates, 4);
    assert_false(info.active);
    emac_status_free(st);

    /* Before the EMA starts there is nothing to swap in. */
    emac_segment *seg2 = new_segment(small, NSMALL);
    struct emac_config late = {.half_life = "2ba", .ema_start = "100ba"};
    emac_session *s2 = register_ok(c, "not-started", seg2, &late, false);
    expect_action(ev(s2, "batch_end", at(1, 0)), EMAC_ACTION_NONE, "before start");
    expect_action(ev(s2, "eval_start", at(1, 0)), EMAC_ACTION_NONE, "eval_start, not started");
    expect_action(ev(s2, "checkpoint", at(1, 0)), EMAC_ACTION_NONE, "checkpoint, not started");
    OK(emac_swap(s2, "ema", &r, &err));
    expect_action(r, EMAC_ACTION_NONE, "swap to ema, not started");
    assert_false(r.started);
    expect_header(seg2, SEG_TRAIN, 0, "never swapped");

    free(train);
    model_free(&m);
    emac_session_free(s2);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* ---- the split form ---- */

static void test_pipelined_events_from_four_sessions(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_result r;
    emac_client *cs[4];
    emac_segment *segs[4];
    emac_session *ss[4];
    struct model ms[4];
    emac_ticket tk[4][3];
    void *train[4];
    size_t len;
    (void)state;

    engine_start(&d, (const char *const[]){"--workers", "3", NULL});
    for (int k = 0; k < 4; k++) {
        char name[32];
        snprintf(name, sizeof(name), "pipe-%d", k);
        cs[k] = connect_ok(&d);
        segs[k] = new_segment(mixed, NMIXED);
        fill_params(segs[k], 1000 * k);
        struct emac_config cfg = {.half_life = "3ba"};
        ss[k] = register_ok(cs[k], name, segs[k], &cfg, false);
        model_init(&ms[k], segs[k]);
    }
    double sm = emac_session_state(ss[0])->smoothing;
    for (uint64_t b = 1; b <= 6; b++) {
        /* Every session's step and batch_end go out before any reply is read. */
        for (int k = 0; k < 4; k++) {
            struct emac_time t = at(b, 0);
            fill_params(segs[k], 1000 * k + b);
            OK(emac_event_send(ss[k], "batch_end", &t, &tk[k][0], &err));
        }
        for (int k = 3; k >= 0; k--) {
            OK(emac_event_wait(ss[k], tk[k][0], &r, &err));
            expect_action(r, b == 1 ? EMAC_ACTION_START_UPDATE : EMAC_ACTION_UPDATE, "pipelined");
            assert_int_equal(r.updates, b);
            model_apply(&ms[k], r.action, sm);
        }
        for (int k = 0; k < 4; k++)
            expect_shadow(&ms[k], ss[k], "pipelined batch_end");
    }
    /* Three requests in flight per connection, claimed last first: the
     * library keeps the replies that arrive before they are asked for. */
    for (int k = 0; k < 4; k++) {
        struct emac_time t = at(6, 0);
        train[k] = params_copy(segs[k], &len);
        OK(emac_event_send(ss[k], "eval_start", &t, &tk[k][0], &err));
        OK(emac_event_send(ss[k], "eval_end", &t, &tk[k][1], &err));
        OK(emac_event_send(ss[k], "checkpoint", &t, &tk[k][2], &err));
    }
    for (int k = 0; k < 4; k++) {
        OK(emac_event_wait(ss[k], tk[k][2], &r, &err));
        expect_action(r, EMAC_ACTION_SWAP_IN, "checkpoint, claimed first");
        OK(emac_event_wait(ss[k], tk[k][0], &r, &err));
        expect_action(r, EMAC_ACTION_SWAP_IN, "eval_start, claimed second");
        OK(emac_event_wait(ss[k], tk[k][1], &r, &err));
        expect_action(r, EMAC_ACTION_SWAP_OUT, "eval_end, claimed last");
        /* A ticket is claimed once. */
        FAILS(emac_event_wait(ss[k], tk[k][1], &r, &err), "USAGE", "ticket");
        expect_params_hold_shadow(&ms[k], segs[k]);
        expect_action(ev(ss[k], "batch_start", at(6, 0)), EMAC_ACTION_SWAP_OUT, "batch_start");
        assert_true(params_equal(segs[k], train[k]));
    }
    for (int k = 0; k < 4; k++) {
        free(train[k]);
        model_free(&ms[k]);
        emac_session_free(ss[k]);
        emac_disconnect(cs[k]);
    }
    daemon_stop(&d);
}

static void test_sessions_share_a_connection_and_tickets_come_in_any_order(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_result r;
    struct emac_status *st;
    struct model mx, my;
    emac_ticket x1, y1, x2, y2;
    (void)state;

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    emac_segment *sx = new_segment(small, NSMALL), *sy = new_segment(mixed, NMIXED);
    fill_params(sx, 1);
    fill_params(sy, 2);
    struct emac_config cfg = {.has_smoothing = true, .smoothing = 0.9};
    emac_session *x = register_ok(c, "shared-x", sx, &cfg, false);
    emac_session *y = register_ok(c, "shared-y", sy, &cfg, false);
    model_init(&mx, sx);
    model_init(&my, sy);
    fill_params(sx, 3);
    fill_params(sy, 4);
    struct emac_time t1 = at(1, 0);
    OK(emac_event_send(x, "batch_end", &t1, &x1, &err));
    OK(emac_event_send(y, "batch_end", &t1, &y1, &err));
    OK(emac_event_send(x, "eval_start", &t1, &x2, &err));
    OK(emac_event_send(y, "fit_start", &t1, &y2, &err));
    /* A blocking request meanwhile: its reply is found among the others. */
    OK(emac_status(c, NULL, &st, &err));
    assert_int_equal(st->nsessions, 2);
    emac_status_free(st);
    /* A ticket belongs to its session. */
    FAILS(emac_event_wait(y, x1, &r, &err), "USAGE", "ticket");
    FAILS(emac_event_wait(x, 12345, &r, &err), "USAGE",
          "event (ticket 12345) on session \"shared-x\": no event of this session");
    /* The library's own errors name the event (cut at 32 bytes) and the session. */
    FAILS(emac_event_send(x, "an_event_whose_name_is_longer_than_32", NULL, &x1, &err), "USAGE",
          "event \"an_event_whose_name_is_longer_th\" on session \"shared-x\": NULL argument");
    OK(emac_event_wait(y, y2, &r, &err));
    expect_action(r, EMAC_ACTION_NONE, "fit_start");
    OK(emac_event_wait(x, x2, &r, &err));
    expect_action(r, EMAC_ACTION_SWAP_IN, "eval_start after batch_end (session FIFO)");
    OK(emac_event_wait(y, y1, &r, &err));
    expect_action(r, EMAC_ACTION_START_UPDATE, "y batch_end");
    model_apply(&my, r.action, 0.9);
    OK(emac_event_wait(x, x1, &r, &err));
    expect_action(r, EMAC_ACTION_START_UPDATE, "x batch_end");
    model_apply(&mx, r.action, 0.9);
    expect_shadow(&mx, x, "x");
    expect_shadow(&my, y, "y");
    expect_action(ev(x, "eval_end", t1), EMAC_ACTION_SWAP_OUT, "eval_end");

    /* A session freed with a ticket outstanding: its reply is discarded
     * and the connection goes on. */
    struct emac_time t2 = at(2, 0);
    OK(emac_event_send(y, "batch_end", &t2, &y1, &err));
    emac_session_free(y);
    r = ev(x, "batch_end", t2);
    expect_action(r, EMAC_ACTION_UPDATE, "x after y's handle was freed");

    model_free(&mx);
    model_free(&my);
    emac_session_free(x);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* ---- session lifetime ---- */

static void test_resume_after_disconnect_keeps_shadow_and_state(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_result r;
    struct emac_status *st;
    struct model m;
    (void)state;

    engine_start(&d, NULL);
    emac_client *c1 = connect_ok(&d);
    emac_segment *seg1 = new_segment(mixed, NMIXED);
    fill_params(seg1, 1);
    struct emac_config cfg = {.half_life = "2ba", .ema_start = "2ba"};
    emac_session *s1 = register_ok(c1, "resumable", seg1, &cfg, false);
    double sm = emac_session_state(s1)->smoothing;
    model_init(&m, seg1);
    for (uint64_t b = 1; b <= 4; b++) {
        fill_params(seg1, 1 + b);
        model_apply(&m, ev(s1, "batch_end", at(b, 0)).action, sm);
    }
    expect_shadow(&m, s1, "before the disconnect");
    /* The trainer goes away without close. */
    emac_disconnect(c1);
    struct emac_time t = at(5, 0);
    FAILS(emac_event(s1, "batch_end", &t, &r, &err), "DISCONNECTED", "disconnected");
    emac_session_free(s1);

    emac_client *c2 = connect_ok(&d);
    struct emac_session_info info;
    for (int i = 0; i < 500; i++) { /* emad notices the disconnect asynchronously */
        info = session_status(c2, "resumable", &st);
        emac_status_free(st);
        if (!info.attached)
            break;
        sleep_ms(10);
    }
    info = session_status(c2, "resumable", &st);
    assert_false(info.attached);
    assert_int_equal(info.owner_pid, -1);
    assert_int_equal(info.updates, 3);
    assert_true(info.started);
    emac_status_free(st);

    /* A new segment (the restarted trainer's) with the same table. */
    emac_segment *seg2 = new_segment(mixed, NMIXED);
    fill_params(seg2, 77);
    emac_session *s2 = NULL;
    FAILS(emac_register(c2, "resumable", seg2, &cfg, false, &s2, &err), "EXISTS", "resumable");
    s2 = register_ok(c2, "resumable", seg2, &cfg, true);
    const struct emac_session_info *kept = emac_session_state(s2);
    assert_true(kept->attached);
    assert_int_equal(kept->owner_pid, getpid());
    assert_int_equal(kept->updates, 3);
    assert_true(kept->started);
    assert_int_equal(kept->last_batch, 4);
    assert_string_equal(kept->shm, emac_segment_name(seg2));
    /* The shadow is kept, not re-initialised from the new params. */
    expect_shadow(&m, s2, "after resume");
    /* And it goes on from there with the new segment's params. */
    m.seg = seg2;
    fill_params(seg2, 78);
    r = ev(s2, "batch_end", at(6, 0));
    expect_action(r, EMAC_ACTION_UPDATE, "after resume");
    assert_int_equal(r.updates, 4);
    model_apply(&m, r.action, sm);
    expect_shadow(&m, s2, "update after resume");

    /* While attached, nobody else may resume it; after a disconnect, a
     * different tensor table may not either. */
    emac_client *c3 = connect_ok(&d);
    emac_session *s3 = NULL;
    emac_segment *seg3 = new_segment(mixed, NMIXED);
    FAILS(emac_register(c3, "resumable", seg3, &cfg, true, &s3, &err), "EXISTS", "attached");
    emac_session_free(s2);
    emac_disconnect(c2);
    emac_segment *other = new_segment(mixed, NMIXED - 1);
    for (int i = 0; i < 500; i++) {
        memset(&err, 0, sizeof(err));
        if (emac_register(c3, "resumable", other, &cfg, true, &s3, &err) < 0 &&
            strcmp(err.code, "EXISTS") != 0)
            break;
        sleep_ms(10);
    }
    expect_failure(-EREMOTEIO, &err, "resume with another table", "BADARG", "tensor table");
    /* resume of a name that does not exist registers a new session. */
    s3 = register_ok(c3, "fresh-resume", seg3, &cfg, true);
    assert_int_equal(emac_session_state(s3)->updates, 0);
    assert_false(emac_session_state(s3)->started);

    model_free(&m);
    emac_session_free(s3);
    emac_disconnect(c3);
    daemon_stop(&d);
}

static void test_close_keep_close_and_drop(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_result r;
    struct emac_status *st;
    struct model m;
    (void)state;

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    emac_client *other = connect_ok(&d);
    emac_segment *seg = new_segment(small, NSMALL);
    fill_params(seg, 1);
    struct emac_config cfg = {.half_life = "2ba"};
    emac_session *s = register_ok(c, "closing", seg, &cfg, false);
    model_init(&m, seg);
    fill_params(seg, 2);
    model_apply(&m, ev(s, "batch_end", at(1, 0)).action, emac_session_state(s)->smoothing);

    /* close with keep: the session stays, detached, with its shadow. */
    OK(emac_close(s, true, &err));
    struct emac_time t = at(2, 0);
    FAILS(emac_event(s, "batch_end", &t, &r, &err), "USAGE", "closed");
    FAILS(emac_close(s, false, &err), "USAGE", "closed");
    emac_session_free(s);
    struct emac_session_info info = session_status(other, "closing", &st);
    assert_false(info.attached);
    assert_int_equal(info.updates, 1);
    emac_status_free(st);
    s = register_ok(c, "closing", seg, &cfg, true);
    expect_shadow(&m, s, "resumed after close keep");
    assert_int_equal(emac_session_state(s)->updates, 1);

    /* close without keep: gone, and the name is free again. */
    OK(emac_close(s, false, &err));
    emac_session_free(s);
    FAILS(emac_status(other, "closing", &st, &err), "NOSESSION", "closing");
    s = register_ok(c, "closing", seg, &cfg, false);
    assert_int_equal(emac_session_state(s)->updates, 0);
    OK(emac_close(s, false, &err));
    emac_session_free(s);

    /* drop: a detached session, from any connection. */
    emac_client *owner = connect_ok(&d);
    emac_session *gone = register_ok(owner, "droppable", seg, &cfg, false);
    emac_session_free(gone);
    emac_disconnect(owner);
    for (int i = 0; i < 500; i++) {
        if (emac_drop(other, "droppable", &err) == 0)
            break;
        assert_string_equal(err.code, "STATE"); /* still attached: the disconnect is in flight */
        sleep_ms(10);
    }
    FAILS(emac_status(other, "droppable", &st, &err), "NOSESSION", "droppable");
    FAILS(emac_drop(other, "droppable", &err), "NOSESSION", "droppable");
    OK(emac_status(other, NULL, &st, &err));
    assert_int_equal(st->sessions, 0);
    emac_status_free(st);

    /* An attached session cannot be dropped from under its owner. */
    s = register_ok(c, "attached", seg, &cfg, false);
    FAILS(emac_drop(other, "attached", &err), "STATE", "attached");
    info = session_status(other, "attached", &st);
    assert_true(info.attached);
    emac_status_free(st);

    model_free(&m);
    emac_session_free(s);
    emac_disconnect(other);
    emac_disconnect(c);
    daemon_stop(&d);
}

static void test_save_and_load_round_trip(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_file f, f2;
    struct emac_status *st;
    struct model m, saved;
    struct stat sb;
    (void)state;

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    emac_segment *seg = new_segment(mixed, NMIXED);
    fill_params(seg, 1);
    struct emac_config cfg = {.half_life = "2ba"};
    emac_session *s = register_ok(c, "saver", seg, &cfg, false);
    double sm = emac_session_state(s)->smoothing;
    model_init(&m, seg);
    model_init(&saved, seg);
    for (uint64_t b = 1; b <= 2; b++) {
        fill_params(seg, 1 + b);
        model_apply(&m, ev(s, "batch_end", at(b, 0)).action, sm);
    }
    for (size_t k = 0; k < m.n; k++)
        memcpy(saved.shadow[k], m.shadow[k], m.bytes[k]);

    OK(emac_save(c, "saver", "snap-1", &f, &err));
    assert_memory_equal(f.path, d.state, strlen(d.state));
    assert_non_null(strstr(f.path, "snap-1"));
    assert_int_equal(stat(f.path, &sb), 0);
    assert_int_equal((uint64_t)sb.st_size, f.bytes);
    assert_true(f.bytes >= emac_session_state(s)->shadow_bytes);

    /* More updates, then load: the shadow and the counters come back. */
    for (uint64_t b = 3; b <= 5; b++) {
        fill_params(seg, 1 + b);
        model_apply(&m, ev(s, "batch_end", at(b, 0)).action, sm);
    }
    expect_shadow(&m, s, "after more updates");
    OK(emac_load(c, "saver", "snap-1", &f2, &err));
    assert_string_equal(f2.path, f.path);
    assert_int_equal(f2.bytes, f.bytes);
    expect_shadow(&saved, s, "after load");
    struct emac_session_info info = session_status(c, "saver", &st);
    assert_int_equal(info.updates, 2);
    assert_true(info.started);
    assert_int_equal(info.last_batch, 2);
    emac_status_free(st);
    /* And the EMA goes on from the loaded shadow. */
    fill_params(seg, 40);
    struct emac_result r = ev(s, "batch_end", at(6, 0));
    expect_action(r, EMAC_ACTION_UPDATE, "after load");
    assert_int_equal(r.updates, 3);
    model_apply(&saved, r.action, sm);
    expect_shadow(&saved, s, "update after load");

    /* emad picks a name when none is given; save replaces atomically. */
    OK(emac_save(c, "saver", NULL, &f2, &err));
    assert_int_equal(stat(f2.path, &sb), 0);
    OK(emac_save(c, "saver", "snap-1", &f2, &err));
    assert_string_equal(f2.path, f.path);
    /* Any connection may save (emactl does). */
    emac_client *other = connect_ok(&d);
    OK(emac_save(other, "saver", "from-other", &f2, &err));
    emac_disconnect(other);

    model_free(&m);
    model_free(&saved);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* ---- errors (docs/protocol.md "Errors") ---- */

static void test_BADARG_names_the_field(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_result r;
    struct emac_file f;
    emac_session *s = NULL;
    (void)state;

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    emac_segment *seg = new_segment(small, NSMALL);

    /* Configuration. */
    struct {
        struct emac_config cfg;
        const char *field;
    } bad[] = {
        {{.half_life = "10"}, "half_life"},
        {{.half_life = "-1ba"}, "half_life"},
        {{.half_life = "1.5ba"}, "half_life"},
        {{.half_life = " 1ba"}, "half_life"},
        {{.half_life = "0.5dur"}, "half_life"},
        {{.half_life = "abc"}, "half_life"},
        {{.half_life = "2ba", .has_smoothing = true, .smoothing = 0.5}, "smoothing"},
        {{.half_life = "2ba", .update_interval = "1ep"}, "update_interval"},
        {{.update_interval = "0ba"}, "update_interval"},
        {{.update_interval = "0.5dur"}, "update_interval"},
        {{.has_smoothing = true, .smoothing = 1.5}, "smoothing"},
        {{.has_smoothing = true, .smoothing = -0.1}, "smoothing"},
        {{.ema_start = "1.5dur"}, "ema_start"},
        {{.ema_start = "2xx"}, "ema_start"},
        {{.ema_start = "1.5ba"}, "ema_start"},
        {{.ema_start = "-3ba"}, "ema_start"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        FAILS(emac_register(c, "cfg", seg, &bad[i].cfg, false, &s, &err), "BADARG", bad[i].field);
    /* Session names: 1..128 of [A-Za-z0-9._:/-]. */
    char longname[140];
    memset(longname, 'a', sizeof(longname));
    longname[129] = '\0';
    FAILS(emac_register(c, "", seg, NULL, false, &s, &err), "BADARG", "session");
    FAILS(emac_register(c, longname, seg, NULL, false, &s, &err), "BADARG", "session");
    FAILS(emac_register(c, "with space", seg, NULL, false, &s, &err), "BADARG", "session");
    FAILS(emac_register(c, "na\xc3\xafve", seg, NULL, false, &s, &err), "BADARG", "session");
    longname[128] = '\0';
    s = register_ok(c, longname, seg, NULL, false);
    emac_session_free(s);

    /* Events, times, swaps, file names. */
    emac_segment *seg2 = new_segment(small, NSMALL);
    s = register_ok(c, "ok", seg2, NULL, false);
    struct emac_time t = at(1, 0);
    FAILS(emac_event(s, "batch_middle", &t, &r, &err), "BADARG", "event");
    FAILS(emac_event(s, "batch_middle", &t, &r, &err), "BADARG",
          "is not one of init, fit_start, batch_start, batch_end, epoch_end, eval_start, "
          "eval_end, checkpoint");
    t = (struct emac_time){1, 0, true, 1.5};
    FAILS(emac_event(s, "batch_end", &t, &r, &err), "BADARG", "duration");
    t = (struct emac_time){1, 0, true, -0.25};
    FAILS(emac_event(s, "batch_end", &t, &r, &err), "BADARG", "duration");
    FAILS(emac_swap(s, "sideways", &r, &err), "BADARG", "to");
    FAILS(emac_save(c, "ok", "../escape", &f, &err), "BADARG", "name");
    FAILS(emac_save(c, "ok", "a/b", &f, &err), "BADARG", "name");
    FAILS(emac_save(c, "ok", "", &f, &err), "BADARG", "name");
    /* The connection and the session are fine after all that. */
    expect_action(ev(s, "batch_end", at(1, 0)), EMAC_ACTION_START_UPDATE, "after BADARGs");

    /* What the library never sends: bad dtypes and tensor names. */
    struct raw raw;
    struct raw_reg rr;
    struct reply rep;
    raw_open(&raw, d.sock);
    raw_reg_init(&rr, "raw-dtype", seg);
    rr.tensors[0].dtype = msg_str_c("float32");
    raw_request(&raw, "register", &msg_register_desc, &rr.req, &rep);
    expect_reply(&rep, "BADARG", "dtype", "register with dtype float32");
    raw_reg_init(&rr, "raw-name", seg);
    rr.tensors[1].name = msg_str_c("");
    raw_request(&raw, "register", &msg_register_desc, &rr.req, &rep);
    expect_reply(&rep, "BADARG", "name", "register with an empty tensor name");
    static char big[1025];
    memset(big, 'n', sizeof(big));
    raw_reg_init(&rr, "raw-name", seg);
    rr.tensors[1].name = (struct msg_str){big, 1025};
    raw_request(&raw, "register", &msg_register_desc, &rr.req, &rep);
    expect_reply(&rep, "BADARG", "name", "register with a 1025-byte tensor name");
    raw_close(&raw);

    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

static void test_NOSESSION_and_EXISTS(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_file f;
    struct emac_status *st;
    struct raw raw;
    struct reply rep;
    emac_session *s = NULL;
    (void)state;

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    FAILS(emac_status(c, "nope", &st, &err), "NOSESSION", "nope");
    FAILS(emac_save(c, "nope", NULL, &f, &err), "NOSESSION", "nope");
    FAILS(emac_load(c, "nope", "x", &f, &err), "NOSESSION", "nope");
    FAILS(emac_drop(c, "nope", &err), "NOSESSION", "nope");
    raw_open(&raw, d.sock);
    struct msg_event e = {.session = msg_str_c("nope"), .event = msg_str_c("batch_end"),
                          .time = {.batch = 1}};
    raw_request(&raw, "event", &msg_event_desc, &e, &rep);
    expect_reply(&rep, "NOSESSION", "nope", "event");
    struct msg_swap sw = {.session = msg_str_c("nope"), .to = msg_str_c("ema")};
    raw_request(&raw, "swap", &msg_swap_desc, &sw, &rep);
    expect_reply(&rep, "NOSESSION", "nope", "swap");
    struct msg_close cl = {msg_str_c("nope"), false, false};
    raw_request(&raw, "close", &msg_close_desc, &cl, &rep);
    expect_reply(&rep, "NOSESSION", "nope", "close");
    raw_close(&raw);

    emac_segment *seg = new_segment(small, NSMALL);
    emac_session *a = register_ok(c, "dup", seg, NULL, false);
    FAILS(emac_register(c, "dup", seg, NULL, false, &s, &err), "EXISTS", "dup");
    emac_client *c2 = connect_ok(&d);
    emac_segment *seg2 = new_segment(small, NSMALL);
    FAILS(emac_register(c2, "dup", seg2, NULL, false, &s, &err), "EXISTS", "dup");
    assert_null(s);
    /* The failed attempts changed nothing. */
    expect_action(ev(a, "batch_end", at(1, 0)), EMAC_ACTION_START_UPDATE, "dup's owner");

    emac_session_free(a);
    emac_disconnect(c2);
    emac_disconnect(c);
    daemon_stop(&d);
}

static void test_PERM_for_requests_from_another_connection(void **state)
{
    struct daemon d;
    struct raw raw;
    struct reply rep;
    (void)state;

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    emac_segment *seg = new_segment(small, NSMALL);
    emac_session *s = register_ok(c, "owned", seg, NULL, false);

    raw_open(&raw, d.sock);
    struct msg_event e = {.session = msg_str_c("owned"), .event = msg_str_c("batch_end"),
                          .time = {.batch = 1}};
    raw_request(&raw, "event", &msg_event_desc, &e, &rep);
    expect_reply(&rep, "PERM", "owned", "event from another connection");
    struct msg_swap sw = {.session = msg_str_c("owned"), .to = msg_str_c("ema")};
    raw_request(&raw, "swap", &msg_swap_desc, &sw, &rep);
    expect_reply(&rep, "PERM", "owned", "swap from another connection");
    struct msg_close cl = {msg_str_c("owned"), true, true};
    raw_request(&raw, "close", &msg_close_desc, &cl, &rep);
    expect_reply(&rep, "PERM", "owned", "close from another connection");
    raw_close(&raw);

    /* The owner is unaffected. */
    struct emac_result r = ev(s, "batch_end", at(1, 0));
    expect_action(r, EMAC_ACTION_START_UPDATE, "owner");
    assert_int_equal(r.updates, 1);

    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

static void test_SHM_refuses_bad_segments(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct raw raw;
    struct raw_reg rr;
    struct reply rep;
    emac_session *s = NULL;
    (void)state;

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);

    /* Missing: the object was unlinked (we still map it). */
    emac_segment *gone = new_segment(small, NSMALL);
    assert_int_equal(shm_unlink(emac_segment_name(gone)), 0);
    FAILS(emac_register(c, "shm-missing", gone, NULL, false, &s, &err), "SHM",
          emac_segment_name(gone));

    /* Wrong magic. */
    emac_segment *seg = new_segment(small, NSMALL);
    struct seg_header *h = emac_segment_base(seg);
    h->magic[7] = '2';
    FAILS(emac_register(c, "shm-magic", seg, NULL, false, &s, &err), "SHM", "magic");
    h->magic[7] = '1';

    /* The object's size differs from segment_bytes. */
    int fd = shm_open(emac_segment_name(seg), O_RDWR, 0);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)emac_segment_bytes(seg) + 4096), 0);
    FAILS(emac_register(c, "shm-size", seg, NULL, false, &s, &err), "SHM", "segment_bytes");
    assert_int_equal(ftruncate(fd, (off_t)emac_segment_bytes(seg)), 0);
    close(fd);
    /* Repaired, it is accepted. */
    s = register_ok(c, "shm-fine", seg, NULL, false);
    emac_session_free(s);

    /* Tensor tables that do not fit the segment. */
    emac_segment *seg2 = new_segment(small, NSMALL);
    raw_open(&raw, d.sock);
    raw_reg_init(&rr, "shm-outside", seg2);
    rr.tensors[2].offset = (h->params_bytes + 4096) / 64 * 64; /* aligned, past the params area */
    raw_request(&raw, "register", &msg_register_desc, &rr.req, &rep);
    expect_reply(&rep, "SHM", "params area", "tensor outside the params area");
    raw_reg_init(&rr, "shm-outside2", seg2);
    rr.tensors[0].numel += 1000; /* runs past the end */
    raw_request(&raw, "register", &msg_register_desc, &rr.req, &rep);
    expect_reply(&rep, "SHM", "params area", "tensor running past the params area");
    raw_reg_init(&rr, "shm-name", seg2);
    rr.req.shm = msg_str_c("/not-an-emad-segment");
    raw_request(&raw, "register", &msg_register_desc, &rr.req, &rep);
    expect_reply(&rep, "SHM", "/emad-", "a name not of the form /emad-*");
    raw_reg_init(&rr, "shm-misaligned", seg2);
    rr.tensors[1].offset += 4;
    raw_request(&raw, "register", &msg_register_desc, &rr.req, &rep);
    expect_reply(&rep, "SHM", "multiple of 64", "misaligned tensor");
    raw_reg_init(&rr, "shm-overlap", seg2);
    rr.tensors[1].offset = rr.tensors[0].offset + 64; /* inside "w" (67 floats) */
    raw_request(&raw, "register", &msg_register_desc, &rr.req, &rep);
    expect_reply(&rep, "SHM", "overlap", "overlapping tensors");
    raw_close(&raw);

    /* Owned by another uid (needs root to arrange). */
    if (geteuid() == 0) {
        fd = shm_open(emac_segment_name(seg2), O_RDWR, 0);
        assert_true(fd >= 0);
        assert_int_equal(fchown(fd, 65534, 65534), 0);
        close(fd);
        FAILS(emac_register(c, "shm-uid", seg2, NULL, false, &s, &err), "SHM", NULL);
    }

    /* No session was left behind by the refusals. */
    struct emac_status *st;
    OK(emac_status(c, NULL, &st, &err));
    assert_int_equal(st->sessions, 1);
    emac_status_free(st);
    emac_disconnect(c);
    daemon_stop(&d);
}

static void test_LIMIT_max_sessions_and_max_tensors(void **state)
{
    struct daemon d;
    struct emac_error err;
    emac_session *s = NULL;
    (void)state;

    engine_start(&d, (const char *const[]){"--max-sessions", "2", "--max-tensors", "3", NULL});
    emac_client *c = connect_ok(&d);
    emac_segment *seg[3]; /* 3 tensors each: at the limit */
    for (int i = 0; i < 3; i++)
        seg[i] = new_segment(small, NSMALL);
    emac_session *a = register_ok(c, "lim-a", seg[0], NULL, false);
    emac_session *b = register_ok(c, "lim-b", seg[1], NULL, false);
    FAILS(emac_register(c, "lim-c", seg[2], NULL, false, &s, &err), "LIMIT", "sessions");
    /* A closed one frees its place. */
    OK(emac_close(b, false, &err));
    emac_session_free(b);
    b = register_ok(c, "lim-c", seg[2], NULL, false);

    OK(emac_close(b, false, &err));
    emac_session_free(b);
    emac_segment *four = new_segment(mixed, 4);
    FAILS(emac_register(c, "lim-d", four, NULL, false, &s, &err), "LIMIT", "tensors");

    emac_session_free(a);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* Per-uid limits: the tensors and shadow bytes of all of a uid's sessions,
 * and how many it holds; each refusal names its option. */
static void test_LIMIT_per_uid(void **state)
{
    static const struct emac_tensor_spec one[] = {{"w", "f32", 67, NULL, 0}};
    static const struct emac_tensor_spec big[] = {{"w", "f32", 8192, NULL, 0}};
    struct daemon d;
    struct emac_error err;
    emac_session *s = NULL;
    (void)state;

    engine_start(&d, (const char *const[]){"--max-sessions-per-uid", "2", "--max-tensors-per-uid",
                                           "5", "--max-shadow-bytes-per-uid", "48K", NULL});
    emac_client *c = connect_ok(&d);
    emac_session *a = register_ok(c, "uid-a", new_segment(small, NSMALL), NULL, false);
    FAILS(emac_register(c, "uid-b", new_segment(small, NSMALL), NULL, false, &s, &err), "LIMIT",
          "--max-tensors-per-uid");
    emac_session *b = register_ok(c, "uid-b", new_segment(one, 1), NULL, false);
    FAILS(emac_register(c, "uid-c", new_segment(one, 1), NULL, false, &s, &err), "LIMIT",
          "--max-sessions-per-uid");
    OK(emac_close(b, false, &err));
    emac_session_free(b);
    FAILS(emac_register(c, "uid-c", new_segment(big, 1), NULL, false, &s, &err), "LIMIT",
          "--max-shadow-bytes-per-uid");
    b = register_ok(c, "uid-c", new_segment(one, 1), NULL, false);

    struct emac_status *st;
    OK(emac_status(c, NULL, &st, &err));
    assert_int_equal(st->sessions, 2);
    emac_status_free(st);
    OK(emac_close(b, false, &err));
    emac_session_free(b);
    OK(emac_close(a, false, &err));
    emac_session_free(a);
    emac_disconnect(c);
    daemon_stop(&d);
}

static void test_IO_load_of_missing_or_corrupt_file(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_file f;
    struct model m;
    (void)state;

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    emac_segment *seg = new_segment(mixed, NMIXED);
    fill_params(seg, 5);
    emac_session *s = register_ok(c, "io", seg, NULL, false);
    model_init(&m, seg);
    FAILS(emac_load(c, "io", "never-saved", &f, &err), "IO", "never-saved");

    OK(emac_save(c, "io", "good", &f, &err));
    char path[4096];
    snprintf(path, sizeof(path), "%s", f.path);
    uint64_t bytes = f.bytes;
    /* Flip one byte in the middle (inside the shadow data). */
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    unsigned char byte;
    assert_int_equal(pread(fd, &byte, 1, (off_t)(bytes / 2)), 1);
    byte ^= 0x10;
    assert_int_equal(pwrite(fd, &byte, 1, (off_t)(bytes / 2)), 1);
    FAILS(emac_load(c, "io", "good", &f, &err), "IO", "good");
    /* Truncated. */
    byte ^= 0x10;
    assert_int_equal(pwrite(fd, &byte, 1, (off_t)(bytes / 2)), 1);
    assert_int_equal(ftruncate(fd, (off_t)(bytes - 7)), 0);
    close(fd);
    FAILS(emac_load(c, "io", "good", &f, &err), "IO", "good");
    /* Not a state file at all. */
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("this is not a state file\n", fp);
    fclose(fp);
    FAILS(emac_load(c, "io", "good", &f, &err), "IO", "good");
    /* None of it touched the session. */
    expect_shadow(&m, s, "after failed loads");

    model_free(&m);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

static void test_STATE_for_requests_the_session_state_forbids(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_file f;
    struct emac_result r;
    (void)state;

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    emac_client *other = connect_ok(&d);
    emac_segment *seg = new_segment(small, NSMALL);
    emac_session *s = register_ok(c, "stateful", seg, NULL, false);
    expect_action(ev(s, "batch_end", at(1, 0)), EMAC_ACTION_START_UPDATE, "start");
    OK(emac_save(c, "stateful", "before", &f, &err));
    /* Dropping an attached session. */
    FAILS(emac_drop(other, "stateful", &err), "STATE", "stateful");
    /* Loading over the EMA weights while they are swapped in. */
    OK(emac_swap(s, "ema", &r, &err));
    FAILS(emac_load(c, "stateful", "before", &f, &err), "STATE", "stateful");
    OK(emac_swap(s, "train", &r, &err));
    OK(emac_load(c, "stateful", "before", &f, &err));
    /* Loading a file of a session with another tensor table. */
    emac_segment *seg2 = new_segment(mixed, NMIXED);
    emac_session *s2 = register_ok(c, "other-table", seg2, NULL, false);
    FAILS(emac_load(c, "other-table", "before", &f, &err), "STATE", "other-table");
    /* Swapping in over a segment whose header is not TRAIN: the trainer
     * must restore its training weights from the stash first. */
    seg_swap_state_store(emac_segment_base(seg), SEG_STASHED);
    FAILS(emac_swap(s, "ema", &r, &err), "STATE", "stash");
    struct emac_time t = at(1, 0);
    FAILS(emac_event(s, "eval_start", &t, &r, &err), "STATE", "stash");
    bool restored;
    OK(emac_segment_restore(seg, &restored, &err));
    assert_true(restored);
    expect_action(ev(s, "eval_start", t), EMAC_ACTION_SWAP_IN, "eval_start after the restore");
    expect_action(ev(s, "eval_end", t), EMAC_ACTION_SWAP_OUT, "eval_end");
    emac_session_free(s2);

    emac_session_free(s);
    emac_disconnect(other);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* ---- emactl ---- */

/* Run emactl with argv; expect exit status rc and every needle in its output. */
static void emactl_expect(char *const argv[], int rc, char *out, size_t outlen, ...)
{
    va_list ap;
    const char *needle;
    int got = run_capture(argv, NULL, out, outlen);

    if (got != rc)
        fail_msg("emactl %s %s: exit %d, expected %d; output:\n%s", argv[3] ? argv[3] : "",
                 argv[4] ? argv[4] : "", got, rc, out);
    va_start(ap, outlen);
    while ((needle = va_arg(ap, const char *)) != NULL) {
        if (strstr(out, needle) == NULL) {
            va_end(ap);
            fail_msg("emactl output lacks \"%s\":\n%s", needle, out);
        }
    }
    va_end(ap);
}

static void test_emactl_list_show_save_drop(void **state)
{
    struct daemon d;
    char out[16384], pid[32];
    (void)state;

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    emac_segment *seg = new_segment(mixed, NMIXED);
    fill_params(seg, 3);
    struct emac_config cfg = {.half_life = "4ba", .update_interval = "2ba", .ema_start = "3ba"};
    emac_session *s = register_ok(c, "ctl-session", seg, &cfg, false);
    for (uint64_t b = 1; b <= 6; b++)
        ev(s, "batch_end", at(b, 0));
    snprintf(pid, sizeof(pid), "%ld", (long)getpid());
    char *ctl = (char *)emactl_bin();

    char *list[] = {ctl, "--socket", d.sock, "list", NULL};
    /* tensors 10, updates 2 (at batches 4 and 6), not active */
    emactl_expect(list, 0, out, sizeof(out), "SESSION", "ctl-session", pid, " 10 ", "MiB", " 2 ",
                  " no", NULL);
    char *listj[] = {ctl, "--socket", d.sock, "list", "--json", NULL};
    emactl_expect(listj, 0, out, sizeof(out), "\"session\": \"ctl-session\"", NULL);
    assert_true(out[0] == '[');

    char *status[] = {ctl, "--socket", d.sock, "status", NULL};
    emactl_expect(status, 0, out, sizeof(out), "sessions     1", "ctl-session", pid, NULL);

    char *show[] = {ctl, "--socket", d.sock, "show", "ctl-session", NULL};
    emactl_expect(show, 0, out, sizeof(out), "session          ctl-session", pid,
                  emac_segment_name(seg), "tensors          10", "MiB",
                  "smoothing        0.7071067812",
                  "half_life        4ba", "update_interval  2ba", "ema_start        3ba",
                  "started          yes", "active           no", "updates          2",
                  "swaps            0", "last time        batch 6, epoch 0", "last update ", " ms",
                  "Gelem/s", NULL);
    char *showj[] = {ctl, "show", "ctl-session", "--json", "--socket", d.sock, NULL};
    emactl_expect(showj, 0, out, sizeof(out), "\"updates\": 2", "\"half_life\": \"4ba\"", NULL);
    assert_true(out[0] == '{');
    char *shownone[] = {ctl, "--socket", d.sock, "show", "nope", NULL};
    emactl_expect(shownone, 1, out, sizeof(out), "emactl: NOSESSION", NULL);
    char *showusage[] = {ctl, "--socket", d.sock, "show", NULL};
    emactl_expect(showusage, 2, out, sizeof(out), "usage", NULL);

    char *save[] = {ctl, "--socket", d.sock, "save", "ctl-session", "ctl-file", NULL};
    emactl_expect(save, 0, out, sizeof(out), "saved session \"ctl-session\" to ", d.state,
                  "ctl-file", NULL);
    char *savej[] = {ctl, "--socket", d.sock, "--json", "save", "ctl-session", NULL};
    emactl_expect(savej, 0, out, sizeof(out), "\"path\": \"", "\"bytes\": ", NULL);
    char *saveusage[] = {ctl, "--socket", d.sock, "save", "a", "b", "c", NULL};
    emactl_expect(saveusage, 2, out, sizeof(out), "usage", NULL);

    /* drop: refused while attached, done once detached. */
    char *drop[] = {ctl, "--socket", d.sock, "drop", "ctl-session", NULL};
    char *dropj[] = {ctl, "--socket", d.sock, "--json", "drop", "ctl-session", NULL};
    emactl_expect(drop, 1, out, sizeof(out), "emactl: STATE", "ctl-session", NULL);
    emac_session_free(s);
    emac_disconnect(c);
    for (int i = 0; i < 500 && run_capture(dropj, NULL, out, sizeof(out)) != 0; i++)
        sleep_ms(10); /* emad notices the disconnect asynchronously */
    if (strcmp(out, "{}\n") != 0)
        fail_msg("emactl --json drop printed:\n%s", out);
    emactl_expect(list, 0, out, sizeof(out), "SESSION", NULL);
    assert_null(strstr(out, "ctl-session"));
    emactl_expect(drop, 1, out, sizeof(out), "emactl: NOSESSION", NULL);
    emac_client *c2 = connect_ok(&d);
    s = register_ok(c2, "ctl-session", seg, NULL, false);
    emac_session_free(s);
    emac_disconnect(c2);
    for (int i = 0; i < 500 && run_capture(drop, NULL, out, sizeof(out)) != 0; i++)
        sleep_ms(10);
    emactl_expect(list, 0, out, sizeof(out), "SESSION", NULL);
    char *dropped[] = {ctl, "--socket", d.sock, "status", NULL};
    emactl_expect(dropped, 0, out, sizeof(out), "sessions     0", NULL);

    char *help[] = {ctl, "--help", NULL};
    emactl_expect(help, 0, out, sizeof(out), "status [SESSION]", "list", "show SESSION",
                  "save SESSION [NAME]", "drop SESSION", "--json", "--socket PATH",
                  "Exit status", NULL);
    daemon_stop(&d);
}

/* ---- crash safety ---- */

static void test_emad_killed_while_swapped_in_restores_training_weights(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_result r;
    size_t len;
    (void)state;

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    no_reconnect(c); /* this test is about the loss itself; test_reconnect the rest */
    emac_segment *sa = new_segment(mixed, NMIXED), *sb = new_segment(small, NSMALL);
    fill_params(sa, 1);
    fill_params(sb, 2);
    emac_session *a = register_ok(c, "crash-a", sa, NULL, false);
    emac_session *b = register_ok(c, "crash-b", sb, NULL, false);
    ev(a, "batch_end", at(1, 0));
    ev(b, "batch_end", at(1, 0));
    fill_params(sa, 3); /* the next step: EMA and training weights differ */
    fill_params(sb, 4);
    void *train_a = params_copy(sa, &len), *train_b = params_copy(sb, &len);
    OK(emac_swap(a, "ema", &r, &err));
    expect_action(r, EMAC_ACTION_SWAP_IN, "swap a in");
    assert_false(params_equal(sa, train_a));
    uint32_t st;
    emac_segment_swap_state(sa, &st, NULL);
    assert_int_equal(st, SEG_EMA);

    /* emad dies with a's EMA weights in its params. */
    assert_int_equal(kill(d.pid, SIGKILL), 0);
    assert_int_equal(wait_exit(d.pid), 128 + SIGKILL);
    struct emac_time t = at(1, 0);
    FAILS(emac_event(a, "eval_end", &t, &r, &err), "DISCONNECTED", "restored");
    assert_non_null(strstr(err.message, "\"crash-a\""));
    assert_null(strstr(err.message, "\"crash-b\""));
    assert_true(emac_session_restored(a));
    assert_false(emac_session_restored(b));
    assert_true(params_equal(sa, train_a));
    assert_true(params_equal(sb, train_b));
    emac_segment_swap_state(sa, &st, NULL);
    assert_int_equal(st, SEG_TRAIN);
    /* Later requests say so again, without waiting. */
    emac_ticket tk;
    FAILS(emac_event_send(b, "batch_end", &t, &tk, &err), "DISCONNECTED", "restored");
    FAILS(emac_swap(b, "ema", &r, &err), "DISCONNECTED", "crash-a");
    emac_session_free(a);
    emac_session_free(b);
    emac_disconnect(c);
    free(train_a);
    free(train_b);

    /* The same with a ticket in flight: the wait reports the loss. */
    check_daemon_stderr(&d, -1);
    remove_tree(d.dir);
    engine_start(&d, NULL);
    c = connect_ok(&d);
    no_reconnect(c);
    fill_params(sa, 5);
    a = register_ok(c, "crash-c", sa, NULL, false);
    ev(a, "batch_end", at(1, 0));
    fill_params(sa, 6);
    train_a = params_copy(sa, &len);
    expect_action(ev(a, "checkpoint", at(1, 0)), EMAC_ACTION_SWAP_IN, "checkpoint");
    /* Stopped, emad cannot answer: the request waits in the socket. */
    assert_int_equal(kill(d.pid, SIGSTOP), 0);
    OK(emac_event_send(a, "batch_start", &t, &tk, &err));
    assert_int_equal(kill(d.pid, SIGKILL), 0);
    assert_int_equal(wait_exit(d.pid), 128 + SIGKILL);
    FAILS(emac_event_wait(a, tk, &r, &err), "DISCONNECTED", "restored");
    assert_true(emac_session_restored(a));
    assert_true(params_equal(sa, train_a));
    free(train_a);
    emac_session_free(a);
    emac_disconnect(c);
    check_daemon_stderr(&d, -1);
    remove_tree(d.dir);
}

/* ---- load across param dtypes (docs/protocol.md "load") ---- */

/* The shadow's layout depends on the shadow dtypes alone: an f32 session's file loads into
 * a session whose tensors of the same names are bf16 and f16, bit for bit, and the EMA goes
 * on from it; a table whose shadow dtype differs is refused, even at the same element size. */
static void test_load_across_param_dtypes_with_the_same_shadow(void **state)
{
    static const struct emac_tensor_spec wide[] = {
        {"w", "f32", 67, NULL, 0}, {"b", "f32", 13, NULL, 0},
        {"h", "f32", 9, NULL, 0},  {"n", "i64", 1, NULL, 0},
    };
    static const struct emac_tensor_spec low[] = {
        {"w", "bf16", 67, NULL, 0}, {"b", "f16", 13, NULL, 0},
        {"h", "f32", 9, NULL, 0},   {"n", "i64", 1, NULL, 0},
    };
    static const struct emac_tensor_spec f64[] = {
        {"w", "bf16", 67, NULL, 0}, {"b", "f64", 13, NULL, 0},
        {"h", "f32", 9, NULL, 0},   {"n", "i64", 1, NULL, 0},
    };
    static const struct emac_tensor_spec int_for_double[] = {
        {"w", "f32", 67, NULL, 0}, {"b", "f32", 13, NULL, 0},
        {"h", "f32", 9, NULL, 0},  {"n", "f64", 1, NULL, 0},
    };
    struct daemon d;
    struct emac_error err;
    struct emac_file f;
    struct emac_status *st;
    struct model m;
    (void)state;

    engine_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    struct emac_config cfg = {.half_life = "2ba"};
    emac_segment *sw = new_segment(wide, 4);
    emac_session *a = register_ok(c, "wide", sw, &cfg, false);
    double sm = emac_session_state(a)->smoothing;
    model_init(&m, sw);
    /* f32 values with full mantissas: no bf16 or f16 holds them. */
    for (uint64_t b = 1; b <= 3; b++) {
        fill_params(sw, 10 + b);
        model_apply(&m, ev(a, "batch_end", at(b, 0)).action, sm);
    }
    expect_shadow(&m, a, "the f32 session");
    OK(emac_save(c, "wide", "wide-state", &f, &err));

    emac_segment *sl = new_segment(low, 4);
    fill_params(sl, 50);
    emac_session *b = register_ok(c, "low", sl, &cfg, false);
    OK(emac_load(c, "low", "wide-state", &f, &err));
    expect_shadow(&m, b, "the bf16/f16 session after the load");
    struct emac_session_info info = session_status(c, "low", &st);
    assert_true(info.started);
    assert_int_equal(info.updates, 3);
    assert_int_equal(info.last_batch, 3);
    emac_status_free(st);
    /* The EMA goes on from the exact fp32 shadow, reading the bf16/f16 params. */
    m.seg = sl;
    fill_params(sl, 60);
    struct emac_result r = ev(b, "batch_end", at(4, 0));
    expect_action(r, EMAC_ACTION_UPDATE, "the update after the load");
    model_apply(&m, r.action, sm);
    expect_shadow(&m, b, "the update after the load");

    /* An f64 tensor's shadow is f64: not the file's f32, and nothing changes. */
    emac_segment *sd = new_segment(f64, 4);
    emac_session *s3 = register_ok(c, "double", sd, &cfg, false);
    struct model keep;
    model_init(&keep, sd);
    FAILS(emac_load(c, "double", "wide-state", &f, &err), "STATE", "\"b\" f32");
    expect_shadow(&keep, s3, "after the refused load");
    /* An i64 against an f64: the same 8 bytes, another shadow dtype. */
    emac_segment *si = new_segment(int_for_double, 4);
    emac_session *s4 = register_ok(c, "int-for-double", si, &cfg, false);
    FAILS(emac_load(c, "int-for-double", "wide-state", &f, &err), "STATE", "\"n\" i64");

    model_free(&m);
    model_free(&keep);
    emac_session_free(a);
    emac_session_free(b);
    emac_session_free(s3);
    emac_session_free(s4);
    emac_disconnect(c);
    daemon_stop(&d);
}

int main(void)
{
#define TEST(f) cmocka_unit_test_teardown(f, teardown)
    const struct CMUnitTest tests[] = {
        TEST(test_segment_create_lays_out_tensors_and_header),
        TEST(test_segment_create_rejects_bad_specs),
        TEST(test_segment_restore_and_recover_copy_the_stash_back),
        TEST(test_api_rejects_null_and_misuse_without_emad),
        TEST(test_register_maps_shadow_initialised_from_params),
        TEST(test_ema_updates_bit_exact_with_start_and_interval),
        TEST(test_epoch_interval_and_dur_start),
        TEST(test_eval_checkpoint_and_swap_cast_and_restore_bitwise),
        TEST(test_pipelined_events_from_four_sessions),
        TEST(test_sessions_share_a_connection_and_tickets_come_in_any_order),
        TEST(test_resume_after_disconnect_keeps_shadow_and_state),
        TEST(test_close_keep_close_and_drop),
        TEST(test_save_and_load_round_trip),
        TEST(test_BADARG_names_the_field),
        TEST(test_NOSESSION_and_EXISTS),
        TEST(test_PERM_for_requests_from_another_connection),
        TEST(test_SHM_refuses_bad_segments),
        TEST(test_LIMIT_max_sessions_and_max_tensors),
        TEST(test_LIMIT_per_uid),
        TEST(test_IO_load_of_missing_or_corrupt_file),
        TEST(test_STATE_for_requests_the_session_state_forbids),
        TEST(test_emactl_list_show_save_drop),
        TEST(test_emad_killed_while_swapped_in_restores_training_weights),
        TEST(test_load_across_param_dtypes_with_the_same_shadow),
    };
#undef TEST
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("engine", tests, NULL, NULL);
}
