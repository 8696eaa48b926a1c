/*
 * emaclient.c - libemaclient: the connection (hello, requests, replies kept
 * for later claims), segments, sessions, events, the stash restore after a
 * lost connection, status.
 */
#include "emaclient.h"

#include "dtype.h"
#include "msg.h"
#include "segment.h"
#include "version.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <sys/un.h>
#include <unistd.h>

#define CLIENT_MAX_REPLY (64u << 20)
#define SEG_NAME_LEN 256 /* NAME_MAX and a NUL; ours are "/emad-" and 16 hex digits */

/* A request sent and not yet claimed. owner is the session of an event
 * ticket (emac_event_wait checks it), NULL for the blocking calls. req
 * holds the encoded request while it may have to be sent again on a new
 * connection: until its send completes, and until its reply for the
 * requests that are safe to repeat (events and swaps, numbered by seq;
 * status). */
struct outstanding {
    uint32_t msgid;
    const emac_session *owner;
    char *req;
    size_t req_len;
    bool replay;          /* keep req until the reply */
    enum abandon {
        KEPT,             /* a reply will come, or it is sent again on reconnecting */
        NOT_REPEATABLE,   /* sent whole on a connection that was lost */
        GAVE_UP,          /* lost, and no new connection came within the timeout */
        SESSION_GONE,     /* its session could not be resumed */
    } abandoned;          /* not KEPT: its wait fails, saying why */
};

/* A reply that arrived while the client waited for another one: the array
 * [error, result] packed as msgpack, kept until its request is claimed. */
struct held {
    uint32_t msgid;
    char *data;
    size_t len;
};

struct emac_client {
    int fd;
    uint32_t next_msgid;
    struct wire_decoder dec;
    char path[WIRE_SOCKET_PATH_MAX + 1];
    char server_name[64];
    struct emac_server info;
    bool send_failed;          /* read what emad left, without waiting for more */
    bool lost;                 /* the connection is gone: every request fails */
    bool refused;              /* emad sent a refusal before closing: do not reconnect */
    bool reconnecting;         /* inside reconnect(): a loss fails the attempt */
    struct emac_reconnect rc;  /* the reconnect policy */
    unsigned reconnects;       /* successful reconnects so far */
    unsigned seed;             /* for the backoff's jitter */
    char client_name[128];     /* hello's client, said again on reconnect */
    char lost_why[384];        /* why, and what was restored, for later errors */
    struct outstanding *outs;  /* requests sent, replies not claimed */
    size_t nouts, outs_cap;
    struct held *held;         /* replies received before they were claimed */
    size_t nheld, held_cap;
    msgpack_unpacked claimed;  /* the last held reply claimed: views point here */
    char *claimed_data;        /* and into its bytes */
    emac_session *sessions;    /* registered on this client, for the restore */
};

/* NUL-terminated copies of a reply's strings, in one block. */
struct arena {
    char *buf;
    size_t used, cap;
};

struct status_box {
    struct emac_status pub; /* first: the pointer users hold */
    char *raw;              /* the result map as received */
    size_t raw_len;
    struct arena arena;
};

struct seg_tensor {
    enum dtype dt;
    uint64_t *shape; /* NULL when the spec had none */
    size_t ndim;
};

struct emac_segment {
    char name[SEG_NAME_LEN];
    void *base;
    uint64_t bytes;
    size_t n;
    struct emac_tensor *tensors; /* public view, in spec order */
    struct seg_tensor *meta;     /* what register sends besides */
};

struct emac_session {
    emac_client *c;          /* NULL once the client was disconnected */
    emac_session *next;      /* in c->sessions */
    emac_segment *seg;
    char *name;
    bool closed;             /* emac_close succeeded */
    bool restored;           /* the library copied the stash back */
    bool gone;               /* resume failed after a reconnect: unusable */
    char gone_why[640];
    uint64_t next_seq;       /* of the next event or swap */
    void *shadow_base;       /* read-only mapping of the shadow object */
    size_t shadow_map_bytes;
    struct emac_shadow *shadows;
    struct emac_session_info state; /* from the register reply */
    struct arena arena;
};

static int set_err(struct emac_error *err, int rc, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int set_err(struct emac_error *err, int rc, const char *code, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return rc;
    snprintf(err->code, sizeof(err->code), "%s", code);
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return rc;
}

int emac_socket_path(const char *explicit_path, char *out, size_t outlen)
{
    return wire_socket_path(explicit_path, getenv("EMAD_SOCKET"), getenv("XDG_RUNTIME_DIR"),
                            out, outlen);
}

const struct emac_server *emac_server_info(const emac_client *c)
{
    return c ? &c->info : NULL;
}

/* ---- strings copied out of replies ---- */

static const char *arena_str(struct arena *a, struct msg_str s)
{
    char *p;
    if (s.ptr == NULL)
        return NULL;
    if (a->used + s.len + 1 > a->cap)
        return ""; /* cannot happen: arenas are sized from the reply */
    p = a->buf + a->used;
    if (s.len)
        memcpy(p, s.ptr, s.len);
    p[s.len] = '\0';
    a->used += s.len + 1;
    return p;
}

/* Bytes copy_session needs in an arena. */
static size_t session_strings(const struct msg_session_state *s)
{
    return s->session.len + s->half_life.len + s->update_interval.len + s->ema_start.len +
           s->shm.len + s->shadow_shm.len + 6;
}

static void copy_session(struct arena *a, struct emac_session_info *o,
                         const struct msg_session_state *s)
{
    o->session = arena_str(a, s->session);
    o->attached = s->attached;
    o->owner_pid = s->has_owner_pid ? (long)s->owner_pid : -1;
    o->tensors = s->tensors;
    o->params_bytes = s->params_bytes;
    o->shadow_bytes = s->shadow_bytes;
    o->smoothing = s->smoothing;
    o->half_life = s->has_half_life ? arena_str(a, s->half_life) : NULL;
    o->update_interval = arena_str(a, s->update_interval);
    o->ema_start = arena_str(a, s->ema_start);
    o->started = s->started;
    o->active = s->active;
    o->updates = s->updates;
    o->swaps = s->swaps;
    o->has_last_time = s->has_last_time;
    o->last_batch = s->last_time.batch;
    o->last_epoch = s->last_time.epoch;
    o->has_last_duration = s->last_time.has_duration;
    o->last_duration = s->last_time.duration;
    o->last_update_seconds = s->last_update_seconds;
    o->shm = arena_str(a, s->shm);
    o->shadow_shm = arena_str(a, s->shadow_shm);
    o->interrupted = s->has_interrupted && s->interrupted;
    o->seq = s->has_seq ? s->seq : 0;
}

/* ---- the connection: requests out, replies in ---- */

static struct outstanding *find_out(emac_client *c, uint32_t msgid)
{
    for (size_t i = 0; i < c->nouts; i++)
        if (c->outs[i].msgid == msgid)
            return &c->outs[i];
    return NULL;
}

static void remove_out_at(emac_client *c, size_t i)
{
    free(c->outs[i].req);
    c->outs[i] = c->outs[--c->nouts];
}

static void remove_out(emac_client *c, uint32_t msgid)
{
    struct outstanding *o = find_out(c, msgid);
    if (o != NULL)
        remove_out_at(c, (size_t)(o - c->outs));
}

/* Takes req (malloc'd, or NULL). */
static int add_out(emac_client *c, uint32_t msgid, const emac_session *owner, char *req,
                   size_t req_len, bool replay)
{
    if (c->nouts == c->outs_cap) {
        size_t cap = c->outs_cap ? 2 * c->outs_cap : 16;
        struct outstanding *p = realloc(c->outs, cap * sizeof(*p));
        if (p == NULL)
            return -ENOMEM;
        c->outs = p;
        c->outs_cap = cap;
    }
    c->outs[c->nouts] = (struct outstanding){msgid, owner, req, req_len, replay, KEPT};
    c->nouts++;
    return 0;
}

/* Keep a reply to another outstanding request: its error and result,
 * packed, since the decoder's buffer moves on. */
static int hold_reply(emac_client *c, const struct wire_msg *m)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;

    if (c->nheld == c->held_cap) {
        size_t cap = c->held_cap ? 2 * c->held_cap : 8;
        struct held *p = realloc(c->held, cap * sizeof(*p));
        if (p == NULL)
            return -ENOMEM;
        c->held = p;
        c->held_cap = cap;
    }
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_object(&pk, *m->error);
    msgpack_pack_object(&pk, *m->result);
    if (sb.data == NULL)
        return -ENOMEM;
    c->held[c->nheld].msgid = m->msgid;
    c->held[c->nheld].data = sb.data;
    c->held[c->nheld].len = sb.size;
    c->nheld++;
    return 0;
}

/* Forget the held reply i; its bytes are the caller's. */
static char *take_held(emac_client *c, size_t i, size_t *len)
{
    char *data = c->held[i].data;
    if (len != NULL)
        *len = c->held[i].len;
    c->held[i] = c->held[--c->nheld];
    return data;
}

/* Fill err from an error map or notification params. */
static int remote_error(const msgpack_object *map, struct emac_error *err, const char *what)
{
    struct msg_error e;
    char why[128];

    if (msg_decode(&msg_error_desc, map, &e, why, sizeof(why)) < 0)
        return set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: malformed error from emad: %s",
                       what, why);
    if (err != NULL) {
        msg_str_copy((struct msg_str){e.code.ptr, e.code.len < sizeof(err->code) ? e.code.len : 0},
                     err->code, sizeof(err->code));
        snprintf(err->message, sizeof(err->message), "%.*s", (int)e.message.len, e.message.ptr);
    }
    return -EREMOTEIO;
}

static int lost_error(emac_client *c, const char *what, struct emac_error *err)
{
    return set_err(err, -ENOTCONN, EMAC_E_DISCONNECTED, "%s: not connected to emad: %s", what,
                   c->lost_why);
}

/* Copy the stash back if swap_state says the EMA weights may be in the
 * params. The header is checked first: seg_restore_training_weights trusts
 * its offsets, and a header spoilt by someone else must not make us copy
 * outside the mapping. 1 restored, 0 nothing to do, -EINVAL bad header. */
static int restore_mapping(void *base, uint64_t bytes, char *why, size_t whylen)
{
    if (seg_header_check(base, bytes, why, whylen) < 0)
        return -EINVAL;
    return seg_restore_training_weights(base) ? 1 : 0;
}

/*
 * The connection is gone (end of stream, reset, broken pipe). Whatever
 * happened to emad, a segment whose swap_state is not TRAIN has the
 * training weights in its stash (PROTOCOL.md §3): copy them back now, so
 * that the trainer never goes on with the EMA weights without knowing.
 */
static int connection_lost(emac_client *c, int rc, const char *what, const char *why,
                           struct emac_error *err)
{
    char note[256] = "";
    size_t len = 0, count = 0;

    for (emac_session *s = c->sessions; s != NULL; s = s->next) {
        char bad[160];
        if (restore_mapping(s->seg->base, s->seg->bytes, bad, sizeof(bad)) != 1)
            continue;
        s->restored = true;
        count++;
        if (len < sizeof(note)) {
            int n = snprintf(note + len, sizeof(note) - len, "%s\"%s\"", count > 1 ? ", " : "",
                             s->name);
            len += n > 0 ? (size_t)n : 0;
        }
    }
    c->lost = true;
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    if (count > 0)
        snprintf(c->lost_why, sizeof(c->lost_why),
                 "emad closed the connection (%s) while the EMA weights were swapped in; the "
                 "library restored the training weights of session%s %s from the stash",
                 why, count > 1 ? "s" : "", note);
    else
        snprintf(c->lost_why, sizeof(c->lost_why), "emad closed the connection (%s)", why);
    return set_err(err, rc, EMAC_E_DISCONNECTED, "%s: %s", what, c->lost_why);
}

static int reconnect(emac_client *c, const char *what, struct emac_error *err);

/* The connection is gone: restore the segments (connection_lost), then,
 * where the policy allows, reconnect. 0 once a new connection is up and the
 * sessions resumed (the caller goes on), else a negative code with err. */
static int connection_down(emac_client *c, int rc, const char *what, const char *why,
                           struct emac_error *err)
{
    int lost = connection_lost(c, rc, what, why, err);

    if (!c->rc.enabled || c->reconnecting || c->refused)
        return lost;
    return reconnect(c, what, err);
}

static bool is_refusal(const struct wire_msg *m)
{
    return m->kind == WIRE_NOTIFY && m->method_len == strlen(MSG_NOTIFY_ERROR) &&
           memcmp(m->method, MSG_NOTIFY_ERROR, m->method_len) == 0;
}

/* Receive more bytes into the decoder: >0 bytes received, 0 end of stream,
 * -EAGAIN nothing there (with MSG_DONTWAIT), -ENOMEM, or another -errno. */
static ssize_t recv_more(emac_client *c, int flags)
{
    size_t room;
    char *p = wire_decoder_reserve(&c->dec, 64u << 10, &room);
    ssize_t n;

    if (p == NULL)
        return -ENOMEM;
    do
        n = recv(c->fd, p, room, flags);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    wire_decoder_commit(&c->dec, (size_t)n);
    return n;
}

/* Read the next message into *m (views valid until the next decoder call).
 * 0, 1 when the connection was lost and a new one is up (nothing in *m:
 * what was outstanding has been sent again or dropped), or a negative code
 * with err filled (connection lost, bad bytes). */
static int read_message(emac_client *c, const char *what, struct wire_msg *m,
                        struct emac_error *err)
{
    struct wire_fault f;

    for (;;) {
        int rc = wire_decoder_next(&c->dec, m, &f);
        if (rc < 0) {
            /* The stream cannot be resynchronised: stop using it, but
             * restore nothing, since emad may still be working. */
            c->lost = true;
            c->refused = true;
            snprintf(c->lost_why, sizeof(c->lost_why), "emad sent bytes that are not a reply: %s",
                     f.detail);
            close(c->fd);
            c->fd = -1;
            return set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: bad reply from emad: %s", what,
                           f.detail);
        }
        if (rc > 0)
            return 0;
        ssize_t n = recv_more(c, 0);
        if (n > 0)
            continue;
        if (n == -ENOMEM)
            return set_err(err, -ENOMEM, EMAC_E_BADREPLY, "%s: reply too large", what);
        int e = n == 0 ? ECONNRESET : (int)-n;
        rc = connection_down(c, -e, what, n == 0 ? "end of stream" : strerror(e), err);
        return rc < 0 ? rc : 1;
    }
}

/* Claim msgid's reply if it arrived earlier: 1 (views set), 0 not held. */
static int claim_held(emac_client *c, uint32_t msgid, const char *what,
                      const msgpack_object **error, const msgpack_object **result,
                      struct emac_error *err)
{
    for (size_t i = 0; i < c->nheld; i++) {
        if (c->held[i].msgid != msgid)
            continue;
        size_t off = 0, len;
        msgpack_unpacked_destroy(&c->claimed);
        free(c->claimed_data);
        c->claimed_data = take_held(c, i, &len);
        remove_out(c, msgid);
        if (msgpack_unpack_next(&c->claimed, c->claimed_data, len, &off) !=
            MSGPACK_UNPACK_SUCCESS)
            return set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: kept reply unreadable", what);
        *error = &c->claimed.data.via.array.ptr[0];
        *result = &c->claimed.data.via.array.ptr[1];
        return 1;
    }
    return 0;
}

/* If msgid's request was abandoned with a lost connection, forget it and
 * say why; else 0. */
static int abandoned_error(emac_client *c, uint32_t msgid, const char *what,
                           struct emac_error *err)
{
    struct outstanding *o = find_out(c, msgid);
    enum abandon why = o ? o->abandoned : KEPT;

    if (why == KEPT)
        return 0;
    remove_out(c, msgid);
    if (why == NOT_REPEATABLE)
        return set_err(err, -ENOTCONN, EMAC_E_DISCONNECTED,
                       "%s: the connection to emad was lost while the request was in flight; "
                       "the client reconnected, but this request is not one that can safely "
                       "be sent twice, and it may or may not have been carried out: check "
                       "(emac_status) and retry", what);
    if (why == SESSION_GONE)
        return set_err(err, -ENOTCONN, EMAC_E_DISCONNECTED,
                       "%s: the connection to emad was lost while the request was in flight, "
                       "and its session could not be resumed", what);
    return lost_error(c, what, err);
}

/*
 * Wait for the response to msgid, keeping replies to other outstanding
 * requests for their own wait. On success *error (nil or a map) and
 * *result point into the decoder or the claimed buffer: valid until the
 * next request or wait on this client.
 */
static int wait_response(emac_client *c, uint32_t msgid, const char *what,
                         const msgpack_object **error, const msgpack_object **result,
                         struct emac_error *err)
{
    struct wire_msg m;
    int rc;

    if ((rc = claim_held(c, msgid, what, error, result, err)) != 0)
        return rc < 0 ? rc : 0;
    if ((rc = abandoned_error(c, msgid, what, err)) < 0)
        return rc;
    if (c->lost) {
        remove_out(c, msgid);
        return lost_error(c, what, err);
    }
    for (;;) {
        if ((rc = read_message(c, what, &m, err)) < 0) {
            remove_out(c, msgid);
            return rc;
        }
        if (rc > 0) {
            /* A new connection: sent again there, or abandoned. */
            if ((rc = abandoned_error(c, msgid, what, err)) < 0)
                return rc;
            continue;
        }
        if (is_refusal(&m)) {
            /* emad closes the connection after this: reconnecting would
             * only send the refused request again. */
            c->refused = true;
            return remote_error(m.params, err, what);
        }
        if (m.kind != WIRE_RESPONSE)
            continue;
        if (m.msgid == msgid) {
            remove_out(c, msgid);
            *error = m.error;
            *result = m.result;
            return 0;
        }
        /* A reply for a request claimed later: keep it. One nobody asked
         * for (a ticket dropped with its session) is discarded. */
        if (find_out(c, m.msgid) != NULL && hold_reply(c, &m) < 0)
            return set_err(err, -ENOMEM, EMAC_E_BADREPLY, "%s: out of memory", what);
    }
}

/* Wait for msgid's reply and decode its result by rep_desc (views valid
 * until the next request); *raw (if not NULL) gets the result as msgpack
 * bytes, malloc'd. */
static int wait_reply(emac_client *c, uint32_t msgid, const char *what,
                      const struct msg_desc *rep_desc, void *rep, char **raw, size_t *raw_len,
                      struct emac_error *err)
{
    const msgpack_object *error = NULL, *result = NULL;
    char why[256];
    int rc;

    if ((rc = wait_response(c, msgid, what, &error, &result, err)) < 0)
        return rc;
    if (error->type != MSGPACK_OBJECT_NIL)
        return remote_error(error, err, what);
    if (msg_decode(rep_desc, result, rep, why, sizeof(why)) < 0)
        return set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: bad reply from emad: %s", what, why);
    if (raw != NULL) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_object(&pk, *result);
        *raw = sb.data;
        *raw_len = sb.size;
    }
    return 0;
}

/* Write all of buf: 0 or -errno. */
static int send_all(int fd, const char *buf, size_t len)
{
    size_t done = 0;

    while (done < len) {
        ssize_t w = send(fd, buf + done, len - done, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        done += (size_t)w;
    }
    return 0;
}

/* A send failed: emad may have explained before closing (a refusal, as a
 * notification). Read what is there without waiting, keeping replies to
 * outstanding requests. -EREMOTEIO with err filled for a refusal, else 0. */
static int read_refusal(emac_client *c, const char *what, struct emac_error *err)
{
    struct wire_msg m;
    struct wire_fault f;

    for (;;) {
        int rc = wire_decoder_next(&c->dec, &m, &f);
        if (rc < 0)
            return 0;
        if (rc > 0) {
            if (is_refusal(&m)) {
                c->refused = true;
                remote_error(m.params, err, what);
                return -EREMOTEIO;
            }
            if (m.kind == WIRE_RESPONSE && find_out(c, m.msgid) != NULL &&
                hold_reply(c, &m) < 0)
                return 0;
            continue;
        }
        if (recv_more(c, MSG_DONTWAIT) <= 0)
            return 0;
    }
}

/*
 * Send one request; *msgid tells which reply to wait for. replay: the
 * request may be sent again on a new connection until its reply comes
 * (events and swaps, which carry a seq; status). Any request whose send
 * failed is sent again after a reconnect: emad never saw all of it.
 */
static int send_request(emac_client *c, const char *method, const struct msg_desc *req_desc,
                        const void *req, const emac_session *owner, bool replay,
                        const char *what, uint32_t *msgid, struct emac_error *err)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    struct outstanding *o;
    uint32_t id;
    int rc;

    if (c->lost) {
        if (!c->rc.enabled || c->reconnecting || c->refused)
            return lost_error(c, what, err);
        if ((rc = reconnect(c, what, err)) < 0)
            return rc;
    }
    id = c->next_msgid++;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, id, method);
    msg_encode(&pk, req_desc, req);
    if (sb.data == NULL || add_out(c, id, owner, sb.data, sb.size, replay) < 0) {
        msgpack_sbuffer_destroy(&sb);
        return set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
    }
    o = find_out(c, id);
    rc = send_all(c->fd, o->req, o->req_len);
    if (rc == 0) {
        if (!replay) {
            o = find_out(c, id);
            free(o->req);
            o->req = NULL;
        }
        *msgid = id;
        return 0;
    }
    /* Either emad's refusal (a notification), or the connection is gone:
     * then reconnecting sends this request again, with the others. */
    if ((rc = read_refusal(c, what, err)) < 0 ||
        (rc = connection_down(c, rc, what, "broken pipe", err)) < 0) {
        remove_out(c, id); /* the caller is told it failed: never send it later */
        return rc;
    }
    *msgid = id;
    return 0;
}

/* One request and its reply. */
static int call(emac_client *c, const char *method, const struct msg_desc *req_desc,
                const void *req, const struct msg_desc *rep_desc, void *rep, char **raw,
                size_t *raw_len, bool replay, const char *what, struct emac_error *err)
{
    uint32_t id;
    int rc = send_request(c, method, req_desc, req, NULL, replay, what, &id, err);

    if (rc < 0)
        return rc;
    return wait_reply(c, id, what, rep_desc, rep, raw, raw_len, err);
}

/* ---- reconnecting ---- */

void emac_reconnect_defaults(struct emac_reconnect *r)
{
    r->enabled = true;
    r->initial_delay_ms = 50;
    r->max_delay_ms = 2000;
    r->timeout_ms = 30000;
}

int emac_set_reconnect(emac_client *c, const struct emac_reconnect *r, struct emac_error *err)
{
    if (c == NULL || r == NULL)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "emac_set_reconnect: NULL argument");
    if (r->initial_delay_ms == 0)
        return set_err(err, -EINVAL, EMAC_E_USAGE,
                       "emac_set_reconnect: initial_delay_ms must be at least 1");
    if (r->max_delay_ms < r->initial_delay_ms)
        return set_err(err, -EINVAL, EMAC_E_USAGE,
                       "emac_set_reconnect: max_delay_ms (%u) is below initial_delay_ms (%u)",
                       r->max_delay_ms, r->initial_delay_ms);
    c->rc = *r;
    return 0;
}

unsigned emac_reconnects(const emac_client *c)
{
    return c ? c->reconnects : 0;
}

/* The default policy, with EMAD_RECONNECT_TIMEOUT (seconds) applied. */
static void reconnect_policy_from_env(struct emac_reconnect *r)
{
    const char *env = getenv("EMAD_RECONNECT_TIMEOUT");
    char *end;

    emac_reconnect_defaults(r);
    if (env == NULL || *env == '\0')
        return;
    errno = 0;
    double sec = strtod(env, &end);
    if (errno != 0 || *end != '\0' || !(sec >= 0) || sec > 86400.0)
        return; /* unusable: keep the default rather than fail every connect */
    if (sec == 0)
        r->enabled = false;
    else
        r->timeout_ms = (unsigned)(sec * 1000.0);
}

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static int socket_connect(const char *path, int *fd_out)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -errno;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    *fd_out = fd;
    return 0;
}

/* hello on the current connection; fills c->info. */
static int say_hello(emac_client *c, struct emac_error *err)
{
    struct msg_hello hello;
    struct msg_hello_reply rep;
    int rc;

    memset(&hello, 0, sizeof(hello));
    hello.proto = EMAC_PROTO_VERSION;
    hello.client = msg_str_c(c->client_name);
    hello.has_pid = true;
    hello.pid = getpid();
    rc = call(c, "hello", &msg_hello_desc, &hello, &msg_hello_reply_desc, &rep, NULL, NULL, false,
              "hello", err);
    if (rc < 0)
        return rc;
    snprintf(c->server_name, sizeof(c->server_name), "%.*s", (int)rep.server.len,
             rep.server.ptr);
    c->info.server = c->server_name;
    c->info.proto = (unsigned)rep.proto;
    c->info.pid = (long)rep.pid;
    c->info.workers = (unsigned)rep.workers;
    msg_free(&msg_hello_reply_desc, &rep);
    return 0;
}

static int session_resume(emac_client *c, emac_session *s, struct emac_error *err);

static int by_msgid(const void *a, const void *b)
{
    uint32_t x = ((const struct outstanding *)a)->msgid, y = ((const struct outstanding *)b)->msgid;
    return x < y ? -1 : x > y;
}

/* Abandon the requests that cannot be sent again (sent whole, not safe to
 * repeat) and those of sessions that could not be resumed. */
static void abandon_unsendable(emac_client *c)
{
    for (size_t i = 0; i < c->nouts; i++) {
        struct outstanding *o = &c->outs[i];
        if (o->abandoned != KEPT)
            continue;
        if (o->owner != NULL && o->owner->gone)
            o->abandoned = SESSION_GONE;
        else if (o->req == NULL)
            o->abandoned = NOT_REPEATABLE;
        if (o->abandoned != KEPT) {
            free(o->req);
            o->req = NULL;
        }
    }
}

/* One attempt: connect, hello, resume every session, send again what is
 * outstanding. 0, or a negative code with why filled. */
static int reconnect_once(emac_client *c, char *why, size_t whylen)
{
    struct emac_error e = {"", ""};
    int fd, rc;

    if ((rc = socket_connect(c->path, &fd)) < 0) {
        snprintf(why, whylen, "cannot connect to %s: %s", c->path, strerror(-rc));
        return rc;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = fd;
    c->lost = false;
    c->send_failed = false;
    c->refused = false; /* a refusal (too many connections) is this attempt's alone */
    wire_decoder_free(&c->dec);
    wire_decoder_init(&c->dec, CLIENT_MAX_REPLY, WIRE_DEFAULT_MAX_DEPTH);
    if ((rc = say_hello(c, &e)) < 0)
        goto fail;
    for (emac_session *s = c->sessions; s != NULL; s = s->next) {
        if (s->closed || s->gone)
            continue;
        rc = session_resume(c, s, &e);
        if (rc == -EREMOTEIO && strcmp(e.code, "EXISTS") != 0) {
            /* emad answered, and will not give this session back: no
             * attempt will change that. The others go on. */
            s->gone = true;
            snprintf(s->gone_why, sizeof(s->gone_why),
                     "session \"%.128s\" could not be resumed after the connection to emad was "
                     "lost: %s: %.200s", s->name, e.code, e.message);
            continue;
        }
        if (rc < 0)
            goto fail; /* attached elsewhere still, or the connection went again */
    }
    abandon_unsendable(c);
    qsort(c->outs, c->nouts, sizeof(*c->outs), by_msgid);
    for (size_t i = 0; i < c->nouts; i++) {
        if (c->outs[i].abandoned != KEPT)
            continue;
        if ((rc = send_all(c->fd, c->outs[i].req, c->outs[i].req_len)) < 0) {
            snprintf(e.message, sizeof(e.message), "sending again: %s", strerror(-rc));
            goto fail;
        }
        if (!c->outs[i].replay) {
            free(c->outs[i].req);
            c->outs[i].req = NULL;
        }
    }
    return 0;

fail:
    snprintf(why, whylen, "%.300s", e.message);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->lost = true;
    return rc < 0 ? rc : -ENOTCONN;
}

/* Reconnect with a bounded, jittered exponential backoff (c->rc). */
static int reconnect(emac_client *c, const char *what, struct emac_error *err)
{
    char first[sizeof(c->lost_why)], why[384] = "";
    uint64_t t0 = now_ms();
    unsigned delay = c->rc.initial_delay_ms, attempts = 0;

    snprintf(first, sizeof(first), "%s", c->lost_why);
    c->reconnecting = true;
    for (;;) {
        attempts++;
        if (reconnect_once(c, why, sizeof(why)) == 0) {
            c->reconnecting = false;
            c->reconnects++;
            return 0;
        }
        uint64_t elapsed = now_ms() - t0;
        if (elapsed >= c->rc.timeout_ms)
            break;
        /* Jitter: trainers that lost the same emad do not all knock at once. */
        unsigned d = delay / 2 + (unsigned)(rand_r(&c->seed) % (delay / 2 + 1));
        if (d > c->rc.timeout_ms - elapsed)
            d = (unsigned)(c->rc.timeout_ms - elapsed);
        sleep_ms(d);
        delay = delay > c->rc.max_delay_ms / 2 ? c->rc.max_delay_ms : delay * 2;
    }
    c->reconnecting = false;
    c->lost = true;
    /* Whoever waits for what was in flight is told it failed, and nothing
     * of it is sent later behind the caller's back. */
    for (size_t i = 0; i < c->nouts; i++) {
        if (c->outs[i].abandoned == KEPT)
            c->outs[i].abandoned = GAVE_UP;
        free(c->outs[i].req);
        c->outs[i].req = NULL;
    }
    snprintf(c->lost_why, sizeof(c->lost_why),
             "%.160s; reconnecting gave up after %u attempt%s in %.1f s: %.160s", first, attempts,
             attempts == 1 ? "" : "s", (double)(now_ms() - t0) / 1000.0, why);
    return set_err(err, -ENOTCONN, EMAC_E_DISCONNECTED, "%s: %s", what, c->lost_why);
}

int emac_connect(const char *socket_path, const char *client_name, emac_client **out,
                 struct emac_error *err)
{
    emac_client *c;
    int rc;

    if (out == NULL)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "emac_connect: out is NULL");
    *out = NULL;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return set_err(err, -ENOMEM, EMAC_E_CONNECT, "out of memory");
    c->fd = -1;
    c->next_msgid = 1;
    msgpack_unpacked_init(&c->claimed);
    snprintf(c->client_name, sizeof(c->client_name), "%s",
             client_name ? client_name : "libemaclient " EMAD_VERSION);
    c->seed = (unsigned)getpid() ^ (unsigned)now_ms();
    rc = emac_socket_path(socket_path, c->path, sizeof(c->path));
    if (rc < 0) {
        if (rc == -ENAMETOOLONG)
            set_err(err, rc, EMAC_E_USAGE, "socket path is longer than %d bytes",
                    WIRE_SOCKET_PATH_MAX);
        else
            set_err(err, rc, EMAC_E_USAGE, "socket path is empty");
        goto err_free;
    }
    wire_decoder_init(&c->dec, CLIENT_MAX_REPLY, WIRE_DEFAULT_MAX_DEPTH);
    if ((rc = socket_connect(c->path, &c->fd)) < 0) {
        int e = -rc;
        set_err(err, rc, EMAC_E_CONNECT, "cannot connect to emad at %s: %s%s", c->path,
                strerror(e),
                e == ENOENT || e == ECONNREFUSED
                    ? " (is emad running? set --socket or EMAD_SOCKET)"
                    : e == EACCES ? " (no permission: ask for --allow-group)" : "");
        goto err_free;
    }
    /* The first hello is not retried: a caller that cannot connect at all
     * is told at once. The policy applies from here on. */
    if ((rc = say_hello(c, err)) < 0)
        goto err_free;
    reconnect_policy_from_env(&c->rc);
    *out = c;
    return 0;

err_free:
    emac_disconnect(c);
    return rc;
}

void emac_disconnect(emac_client *c)
{
    if (c == NULL)
        return;
    for (emac_session *s = c->sessions; s != NULL; s = s->next)
        s->c = NULL;
    if (c->fd >= 0)
        close(c->fd);
    wire_decoder_free(&c->dec);
    for (size_t i = 0; i < c->nheld; i++)
        free(c->held[i].data);
    free(c->held);
    for (size_t i = 0; i < c->nouts; i++)
        free(c->outs[i].req);
    free(c->outs);
    msgpack_unpacked_destroy(&c->claimed);
    free(c->claimed_data);
    free(c);
}

/* ---- segments ---- */

/* Well-formed UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned char b = s[i];
        size_t len;
        uint32_t cp;
        if (b < 0x80) {
            i++;
            continue;
        } else if (b >= 0xc2 && b <= 0xdf) {
            len = 2, cp = b & 0x1f;
        } else if (b >= 0xe0 && b <= 0xef) {
            len = 3, cp = b & 0x0f;
        } else if (b >= 0xf0 && b <= 0xf4) {
            len = 4, cp = b & 0x07;
        } else {
            return false;
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
            return false;
        i += len;
    }
    return true;
}

/* Check the specs and lay them out: spans[i] gets each tensor's place. */
static int specs_layout(const struct emac_tensor_spec *specs, size_t n, const char *what,
                        struct seg_span *spans, enum dtype *dts, struct seg_geometry *g,
                        struct emac_error *err)
{
    if (n == 0)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "%s: no tensors", what);
    for (size_t i = 0; i < n; i++) {
        const struct emac_tensor_spec *t = &specs[i];
        size_t len;
        uint64_t bytes, prod = 1;
        if (t->name == NULL)
            return set_err(err, -EINVAL, EMAC_E_USAGE, "%s: tensor %zu has no name", what, i);
        len = strnlen(t->name, EMAC_TENSOR_NAME_MAX + 1);
        if (len == 0 || len > EMAC_TENSOR_NAME_MAX)
            return set_err(err, -EINVAL, EMAC_E_USAGE,
                           "%s: tensor %zu: name is %s bytes long; it must be 1..%d bytes", what,
                           i, len == 0 ? "0" : "more than 1024", EMAC_TENSOR_NAME_MAX);
        if (!utf8_valid((const unsigned char *)t->name, len))
            return set_err(err, -EINVAL, EMAC_E_USAGE,
                           "%s: tensor %zu: name is not valid UTF-8", what, i);
        if (t->dtype == NULL || dtype_from_name(t->dtype, strlen(t->dtype), &dts[i]) < 0)
            return set_err(err, -EINVAL, EMAC_E_USAGE,
                           "%s: tensor \"%s\": dtype \"%s\" is not one of f32, f16, bf16, f64, "
                           "i64, i32, i16, i8, u8, bool",
                           what, t->name, t->dtype ? t->dtype : "(null)");
        if (t->shape == NULL && t->ndim > 0)
            return set_err(err, -EINVAL, EMAC_E_USAGE,
                           "%s: tensor \"%s\": ndim is %zu but shape is NULL", what, t->name,
                           t->ndim);
        for (size_t k = 0; t->shape != NULL && k < t->ndim; k++)
            if (__builtin_mul_overflow(prod, t->shape[k], &prod))
                return set_err(err, -EINVAL, EMAC_E_USAGE,
                               "%s: tensor \"%s\": shape overflows 64 bits", what, t->name);
        if (t->shape != NULL && prod != t->numel)
            return set_err(err, -EINVAL, EMAC_E_USAGE,
                           "%s: tensor \"%s\": shape has %" PRIu64
                           " elements but numel is %" PRIu64,
                           what, t->name, prod, t->numel);
        if (__builtin_mul_overflow(t->numel, (uint64_t)dtype_size(dts[i]), &bytes))
            return set_err(err, -EINVAL, EMAC_E_USAGE,
                           "%s: tensor \"%s\": %" PRIu64 " elements of %s overflow 64 bits", what,
                           t->name, t->numel, t->dtype);
        spans[i].bytes = bytes;
    }
    if (seg_layout(spans, n, g) < 0 || g->segment_bytes > (uint64_t)SIZE_MAX)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "%s: the tensors do not fit in memory", what);
    return 0;
}

static void segment_free(emac_segment *seg)
{
    if (seg->base != NULL && seg->base != MAP_FAILED)
        munmap(seg->base, seg->bytes);
    for (size_t i = 0; seg->tensors != NULL && i < seg->n; i++)
        free((char *)seg->tensors[i].name);
    for (size_t i = 0; seg->meta != NULL && i < seg->n; i++)
        free(seg->meta[i].shape);
    free(seg->tensors);
    free(seg->meta);
    free(seg);
}

/* Build the handle's tables for specs laid out as spans inside a mapping. */
static int segment_fill(emac_segment *seg, const struct emac_tensor_spec *specs, size_t n,
                        const struct seg_span *spans, const enum dtype *dts)
{
    char *params = (char *)seg->base + SEG_HEADER_BYTES;

    seg->n = n;
    seg->tensors = calloc(n, sizeof(*seg->tensors));
    seg->meta = calloc(n, sizeof(*seg->meta));
    if (seg->tensors == NULL || seg->meta == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        struct emac_tensor *t = &seg->tensors[i];
        t->name = strdup(specs[i].name);
        if (t->name == NULL)
            return -ENOMEM;
        t->dtype = dtype_name(dts[i]);
        t->elem_size = dtype_size(dts[i]);
        t->numel = specs[i].numel;
        t->offset = spans[i].offset;
        t->bytes = spans[i].bytes;
        t->data = params + spans[i].offset;
        seg->meta[i].dt = dts[i];
        if (specs[i].shape != NULL) {
            seg->meta[i].ndim = specs[i].ndim;
            seg->meta[i].shape = malloc((specs[i].ndim ? specs[i].ndim : 1) * sizeof(uint64_t));
            if (seg->meta[i].shape == NULL)
                return -ENOMEM;
            if (specs[i].ndim)
                memcpy(seg->meta[i].shape, specs[i].shape, specs[i].ndim * sizeof(uint64_t));
        }
    }
    return 0;
}

/* Scratch for specs_layout. */
struct layout {
    struct seg_span *spans;
    enum dtype *dts;
    struct seg_geometry g;
};

static int layout_alloc(struct layout *l, size_t n, const char *what, struct emac_error *err)
{
    l->spans = calloc(n ? n : 1, sizeof(*l->spans));
    l->dts = calloc(n ? n : 1, sizeof(*l->dts));
    if (l->spans == NULL || l->dts == NULL) {
        free(l->spans);
        free(l->dts);
        return set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
    }
    return 0;
}

static void layout_free(struct layout *l)
{
    free(l->spans);
    free(l->dts);
}

int emac_segment_create(const struct emac_tensor_spec *specs, size_t n, emac_segment **out,
                        struct emac_error *err)
{
    const char *what = "emac_segment_create";
    struct layout l;
    emac_segment *seg;
    int fd = -1, rc;

    if (out == NULL || (specs == NULL && n > 0))
        return set_err(err, -EINVAL, EMAC_E_USAGE, "%s: NULL argument", what);
    *out = NULL;
    if ((rc = layout_alloc(&l, n, what, err)) < 0)
        return rc;
    if ((rc = specs_layout(specs, n, what, l.spans, l.dts, &l.g, err)) < 0)
        goto err_layout;
    seg = calloc(1, sizeof(*seg));
    if (seg == NULL) {
        rc = set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
        goto err_layout;
    }
    /* A random name, so that trainers never collide; O_EXCL makes a clash
     * (or someone guessing ahead of us) an error rather than a shared object. */
    for (int tries = 0; fd < 0 && tries < 16; tries++) {
        uint64_t r;
        if (getrandom(&r, sizeof(r), 0) != sizeof(r)) {
            rc = set_err(err, -errno, EMAC_E_SYSTEM, "%s: getrandom: %s", what, strerror(errno));
            goto err_seg;
        }
        snprintf(seg->name, sizeof(seg->name), SEG_NAME_PREFIX "%016" PRIx64, r);
        fd = shm_open(seg->name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST) {
            rc = set_err(err, -errno, EMAC_E_SYSTEM, "%s: shm_open %s: %s", what, seg->name,
                         strerror(errno));
            goto err_seg;
        }
    }
    if (fd < 0) {
        rc = set_err(err, -EEXIST, EMAC_E_SYSTEM, "%s: shm_open: no free name after 16 tries",
                     what);
        goto err_seg;
    }
    if (ftruncate(fd, (off_t)l.g.segment_bytes) < 0) {
        rc = set_err(err, -errno, EMAC_E_SYSTEM, "%s: ftruncate %s to %" PRIu64 " bytes: %s", what,
                     seg->name, l.g.segment_bytes, strerror(errno));
        goto err_unlink;
    }
    seg->bytes = l.g.segment_bytes;
    seg->base = mmap(NULL, seg->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (seg->base == MAP_FAILED) {
        rc = set_err(err, -errno, EMAC_E_SYSTEM, "%s: mmap %s (%" PRIu64 " bytes): %s", what,
                     seg->name, seg->bytes, strerror(errno));
        goto err_unlink;
    }
    seg_header_init(seg->base, &l.g);
    if (segment_fill(seg, specs, n, l.spans, l.dts) < 0) {
        rc = set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
        goto err_unlink;
    }
    close(fd);
    layout_free(&l);
    *out = seg;
    return 0;

err_unlink:
    shm_unlink(seg->name);
    close(fd);
err_seg:
    segment_free(seg);
err_layout:
    layout_free(&l);
    return rc;
}

/* Open name and map it whole after checking its header. */
static int segment_map(const char *name, int flags, void **base, uint64_t *bytes,
                       const char *what, struct emac_error *err)
{
    struct stat st;
    char why[256];
    int fd, rc;

    fd = shm_open(name, flags | O_CLOEXEC, 0);
    if (fd < 0)
        return set_err(err, -errno, errno == ENOENT ? MSG_E_SHM : EMAC_E_SYSTEM,
                       "%s: shm_open %s: %s", what, name, strerror(errno));
    if (fstat(fd, &st) < 0) {
        rc = set_err(err, -errno, EMAC_E_SYSTEM, "%s: fstat %s: %s", what, name, strerror(errno));
        goto err_close;
    }
    if ((uint64_t)st.st_size < SEG_HEADER_BYTES) {
        rc = set_err(err, -EINVAL, MSG_E_SHM, "%s: %s is %lld bytes, too small for a segment",
                     what, name, (long long)st.st_size);
        goto err_close;
    }
    *bytes = (uint64_t)st.st_size;
    *base = mmap(NULL, *bytes, PROT_READ | ((flags & O_RDWR) ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
    if (*base == MAP_FAILED) {
        rc = set_err(err, -errno, EMAC_E_SYSTEM, "%s: mmap %s: %s", what, name, strerror(errno));
        goto err_close;
    }
    close(fd);
    if (seg_header_check(*base, *bytes, why, sizeof(why)) < 0) {
        munmap(*base, *bytes);
        return set_err(err, -EINVAL, MSG_E_SHM, "%s: %s is not a valid segment: %s", what, name,
                       why);
    }
    return 0;

err_close:
    close(fd);
    return rc;
}

int emac_segment_open(const char *name, const struct emac_tensor_spec *specs, size_t n,
                      emac_segment **out, struct emac_error *err)
{
    const char *what = "emac_segment_open";
    const struct seg_header *h;
    struct layout l;
    emac_segment *seg;
    int rc;

    if (name == NULL || out == NULL || (specs == NULL && n > 0))
        return set_err(err, -EINVAL, EMAC_E_USAGE, "%s: NULL argument", what);
    *out = NULL;
    if (strlen(name) >= SEG_NAME_LEN ||
        strncmp(name, SEG_NAME_PREFIX, strlen(SEG_NAME_PREFIX)) != 0)
        return set_err(err, -EINVAL, EMAC_E_USAGE,
                       "%s: \"%s\" is not a segment name (\"" SEG_NAME_PREFIX "...\")", what, name);
    if ((rc = layout_alloc(&l, n, what, err)) < 0)
        return rc;
    if ((rc = specs_layout(specs, n, what, l.spans, l.dts, &l.g, err)) < 0)
        goto err_layout;
    seg = calloc(1, sizeof(*seg));
    if (seg == NULL) {
        rc = set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
        goto err_layout;
    }
    snprintf(seg->name, sizeof(seg->name), "%s", name);
    if ((rc = segment_map(name, O_RDWR, &seg->base, &seg->bytes, what, err)) < 0) {
        seg->base = NULL;
        goto err_seg;
    }
    h = seg->base;
    if (h->params_offset != l.g.params_offset || h->params_bytes != l.g.params_bytes ||
        h->stash_offset != l.g.stash_offset || h->segment_bytes != l.g.segment_bytes) {
        rc = set_err(err, -EINVAL, EMAC_E_USAGE,
                     "%s: %s was not made for these tensors: its params area is %" PRIu64
                     " bytes at %" PRIu64 ", the specs need %" PRIu64 " bytes at %" PRIu64,
                     what, name, h->params_bytes, h->params_offset, l.g.params_bytes,
                     l.g.params_offset);
        goto err_seg;
    }
    if (segment_fill(seg, specs, n, l.spans, l.dts) < 0) {
        rc = set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
        goto err_seg;
    }
    layout_free(&l);
    *out = seg;
    return 0;

err_seg:
    segment_free(seg);
err_layout:
    layout_free(&l);
    return rc;
}

void emac_segment_close(emac_segment *seg)
{
    if (seg != NULL)
        segment_free(seg);
}

void emac_segment_destroy(emac_segment *seg)
{
    if (seg == NULL)
        return;
    shm_unlink(seg->name);
    segment_free(seg);
}

const char *emac_segment_name(const emac_segment *seg)
{
    return seg ? seg->name : NULL;
}

size_t emac_segment_ntensors(const emac_segment *seg)
{
    return seg ? seg->n : 0;
}

const struct emac_tensor *emac_segment_tensor(const emac_segment *seg, size_t i)
{
    return seg != NULL && i < seg->n ? &seg->tensors[i] : NULL;
}

void *emac_segment_base(const emac_segment *seg)
{
    return seg ? seg->base : NULL;
}

uint64_t emac_segment_bytes(const emac_segment *seg)
{
    return seg ? seg->bytes : 0;
}

void emac_segment_swap_state(const emac_segment *seg, uint32_t *state, uint64_t *generation)
{
    struct seg_header *h = seg->base;

    if (state != NULL)
        *state = seg_swap_state_load(h);
    if (generation != NULL)
        *generation = __atomic_load_n(&h->swap_generation, __ATOMIC_ACQUIRE);
}

int emac_segment_restore(emac_segment *seg, bool *restored, struct emac_error *err)
{
    char why[256];
    int rc;

    if (seg == NULL)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "emac_segment_restore: seg is NULL");
    if ((rc = restore_mapping(seg->base, seg->bytes, why, sizeof(why))) < 0)
        return set_err(err, rc, MSG_E_SHM, "emac_segment_restore: %s: bad header: %s",
                       seg->name, why);
    if (restored != NULL)
        *restored = rc == 1;
    return 0;
}

int emac_segment_recover(const char *name, bool *restored, struct emac_error *err)
{
    void *base;
    uint64_t bytes;
    bool done;
    int rc;

    if (name == NULL)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "emac_segment_recover: name is NULL");
    /* segment_map checked the header. */
    if ((rc = segment_map(name, O_RDWR, &base, &bytes, "emac_segment_recover", err)) < 0)
        return rc;
    done = seg_restore_training_weights(base);
    munmap(base, bytes);
    if (restored != NULL)
        *restored = done;
    return 0;
}

/* ---- sessions ---- */

/* Check that s can send a request; what names it for messages. */
static int session_usable(emac_session *s, const char *what, struct emac_error *err)
{
    if (s->closed)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "%s: session \"%s\" was closed", what, s->name);
    if (s->c == NULL)
        return set_err(err, -ENOTCONN, EMAC_E_DISCONNECTED,
                       "%s: the client of session \"%s\" was disconnected", what, s->name);
    if (s->gone)
        return set_err(err, -ENOTCONN, EMAC_E_DISCONNECTED, "%s: %s", what, s->gone_why);
    return 0;
}

/* Map the shadow object named in the register reply and point each
 * tensor's view into it, after checking that everything lies inside. */
static int session_map_shadow(emac_session *s, const struct msg_register_reply *rep,
                              struct emac_error *err)
{
    char name[256];
    struct stat st;
    int fd;

    if (msg_str_copy(rep->shadow_shm, name, sizeof(name)) < 0)
        return set_err(err, -EPROTO, EMAC_E_BADREPLY, "register: shadow_shm is not a name");
    s->shadows = calloc(s->seg->n, sizeof(*s->shadows));
    if (s->shadows == NULL)
        return set_err(err, -ENOMEM, EMAC_E_SYSTEM, "register: out of memory");
    if (rep->shadow_bytes > 0) {
        fd = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
        if (fd < 0)
            return set_err(err, -errno, EMAC_E_SYSTEM, "register: cannot open the shadow %s: %s",
                           name, strerror(errno));
        if (fstat(fd, &st) < 0 || (uint64_t)st.st_size < rep->shadow_bytes) {
            close(fd);
            return set_err(err, -EPROTO, EMAC_E_BADREPLY,
                           "register: the shadow %s is smaller than shadow_bytes %" PRIu64, name,
                           rep->shadow_bytes);
        }
        s->shadow_map_bytes = rep->shadow_bytes;
        s->shadow_base = mmap(NULL, s->shadow_map_bytes, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (s->shadow_base == MAP_FAILED) {
            s->shadow_base = NULL;
            return set_err(err, -errno, EMAC_E_SYSTEM, "register: mmap of the shadow %s: %s",
                           name, strerror(errno));
        }
    }
    for (size_t i = 0; i < s->seg->n; i++) {
        const struct emac_tensor *p = &s->seg->tensors[i];
        struct emac_shadow *o = &s->shadows[i];
        enum dtype dt;
        uint64_t end;
        if (rep->has_shadow_offsets) {
            /* Compact: in our order, by the dtype rule. */
            dt = dtype_shadow(s->seg->meta[i].dt);
            o->offset = rep->shadow_offsets[i];
            goto place;
        }
        const struct msg_shadow_tensor *t = &rep->tensors[i];
        if (!msg_str_eq(t->name, p->name))
            return set_err(err, -EPROTO, EMAC_E_BADREPLY,
                           "register: reply's tensors[%zu] is \"%.*s\", expected \"%s\"", i,
                           (int)(t->name.len > 64 ? 64 : t->name.len), t->name.ptr, p->name);
        if (dtype_from_name(t->shadow_dtype.ptr, t->shadow_dtype.len, &dt) < 0 ||
            dt != dtype_shadow(s->seg->meta[i].dt))
            return set_err(err, -EPROTO, EMAC_E_BADREPLY,
                           "register: tensor \"%s\": shadow_dtype \"%.*s\" for a %s tensor",
                           p->name, (int)(t->shadow_dtype.len > 16 ? 16 : t->shadow_dtype.len),
                           t->shadow_dtype.ptr, p->dtype);
        o->offset = t->shadow_offset;
place:
        o->name = p->name;
        o->dtype = dtype_name(dt);
        o->elem_size = dtype_size(dt);
        o->numel = p->numel;
        if (__builtin_mul_overflow(o->numel, (uint64_t)o->elem_size, &end) ||
            __builtin_add_overflow(end, o->offset, &end) || end > rep->shadow_bytes)
            return set_err(err, -EPROTO, EMAC_E_BADREPLY,
                           "register: tensor \"%s\": shadow at %" PRIu64
                           " ends past shadow_bytes %" PRIu64, p->name, o->offset,
                           rep->shadow_bytes);
        o->data = o->numel ? (const char *)s->shadow_base + o->offset : s->shadow_base;
    }
    return 0;
}

static void session_unlink(emac_session *s)
{
    emac_client *c = s->c;

    if (c == NULL)
        return;
    for (emac_session **p = &c->sessions; *p != NULL; p = &(*p)->next) {
        if (*p == s) {
            *p = s->next;
            break;
        }
    }
    /* Tickets of this session can no longer be claimed: forget them (a
     * reply still to come is then discarded on arrival). */
    for (size_t i = 0; i < c->nouts;) {
        if (c->outs[i].owner == s) {
            uint32_t id = c->outs[i].msgid;
            remove_out_at(c, i);
            for (size_t k = 0; k < c->nheld; k++)
                if (c->held[k].msgid == id) {
                    free(take_held(c, k, NULL));
                    break;
                }
        } else {
            i++;
        }
    }
    s->c = NULL;
}

void emac_session_free(emac_session *s)
{
    if (s == NULL)
        return;
    session_unlink(s);
    if (s->shadow_base != NULL)
        munmap(s->shadow_base, s->shadow_map_bytes);
    free(s->shadows);
    free(s->arena.buf);
    free(s->name);
    free(s);
}

/* Send register for seg's tensors and wait for the reply (*rep: free it
 * with msg_free on success). */
static int register_call(emac_client *c, const char *session, const emac_segment *seg,
                         const struct emac_config *cfg, bool resume, bool existing,
                         struct msg_register_reply *rep, const char *what,
                         struct emac_error *err)
{
    struct msg_register req;
    int rc;

    memset(&req, 0, sizeof(req));
    /* The table in columns (an extension emad understands): no map and no
     * keys per tensor. Shapes stay here: emac_segment_create checked them. */
    if ((rc = msg_table_init(&req.table, seg->n)) < 0)
        return set_err(err, rc, EMAC_E_SYSTEM, "%s: out of memory", what);
    req.has_table = true;
    req.session = msg_str_c(session);
    req.shm = msg_str_c(seg->name);
    for (size_t i = 0; i < seg->n; i++)
        msg_table_set(&req.table, i, seg->tensors[i].name, seg->tensors[i].dtype,
                      seg->tensors[i].offset, seg->tensors[i].numel);
    if (cfg != NULL) {
        req.has_config = true;
        req.config.has_half_life = cfg->half_life != NULL;
        req.config.half_life = msg_str_c(cfg->half_life);
        req.config.has_smoothing = cfg->has_smoothing;
        req.config.smoothing = cfg->smoothing;
        req.config.has_update_interval = cfg->update_interval != NULL;
        req.config.update_interval = msg_str_c(cfg->update_interval);
        req.config.has_ema_start = cfg->ema_start != NULL;
        req.config.ema_start = msg_str_c(cfg->ema_start);
    }
    req.has_resume = resume;
    req.resume = resume;
    /* Reconnecting: a session emad no longer has must not come back empty. */
    req.has_existing = existing;
    req.existing = existing;
    req.has_compact = true; /* offsets only: the names are ours, in order */
    req.compact = true;
    rc = call(c, "register", &msg_register_desc, &req, &msg_register_reply_desc, rep, NULL, NULL,
              false, what, err);
    if (rc == 0) {
        size_t got = rep->has_shadow_offsets ? rep->nshadow_offsets : rep->ntensors;
        if (got != seg->n) {
            rc = set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: reply lists %zu tensors, sent %zu",
                         what, got, seg->n);
            msg_free(&msg_register_reply_desc, rep);
        }
    }
    msg_table_release(&req.table);
    return rc;
}

/* Keep the register reply's state in s (its strings in s's arena). */
static int session_take_state(emac_session *s, const struct msg_register_reply *rep,
                              const char *what, struct emac_error *err)
{
    struct arena a = {NULL, 0, session_strings(&rep->state)};

    if ((a.buf = malloc(a.cap)) == NULL)
        return set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
    free(s->arena.buf);
    s->arena = a;
    copy_session(&s->arena, &s->state, &rep->state);
    if (s->state.seq >= s->next_seq)
        s->next_seq = s->state.seq + 1;
    return 0;
}

int emac_register(emac_client *c, const char *session, emac_segment *seg,
                  const struct emac_config *cfg, bool resume, emac_session **out,
                  struct emac_error *err)
{
    struct msg_register_reply rep;
    emac_session *s;
    char what[192];
    int rc;

    if (c == NULL || session == NULL || seg == NULL || out == NULL)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "emac_register: NULL argument");
    *out = NULL;
    snprintf(what, sizeof(what), "register \"%.128s\"", session);
    s = calloc(1, sizeof(*s));
    if (s == NULL || (s->name = strdup(session)) == NULL) {
        emac_session_free(s);
        return set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
    }
    s->seg = seg;
    s->next_seq = 1;
    if ((rc = register_call(c, session, seg, cfg, resume, false, &rep, what, err)) < 0) {
        emac_session_free(s);
        return rc;
    }
    if ((rc = session_map_shadow(s, &rep, err)) < 0 ||
        (rc = session_take_state(s, &rep, what, err)) < 0)
        goto err_registered;
    msg_free(&msg_register_reply_desc, &rep);
    s->c = c;
    s->next = c->sessions;
    c->sessions = s;
    *out = s;
    return 0;

err_registered:
    msg_free(&msg_register_reply_desc, &rep);
    /* emad holds a session we cannot use: give it back (keeping a resumed
     * one's shadow), so that a retry is not refused with EXISTS. */
    {
        struct msg_close cl = {msg_str_c(session), true, resume};
        struct msg_empty empty;
        call(c, "close", &msg_close_desc, &cl, &msg_empty_desc, &empty, NULL, NULL, false, what,
             NULL);
    }
    emac_session_free(s);
    return rc;
}

/*
 * After a reconnect: register s again with resume, and map the shadow
 * (a restarted emad renames it) over the old mapping, at the same address,
 * so that the pointers emac_session_shadow gave stay valid.
 */
static int session_resume(emac_client *c, emac_session *s, struct emac_error *err)
{
    struct msg_register_reply rep;
    char what[192], name[256];
    int rc, fd;

    snprintf(what, sizeof(what), "resume \"%.128s\" after a reconnect", s->name);
    if ((rc = register_call(c, s->name, s->seg, NULL, true, true, &rep, what, err)) < 0)
        return rc;
    if (rep.shadow_bytes != s->shadow_map_bytes || msg_str_copy(rep.shadow_shm, name,
                                                                sizeof(name)) < 0) {
        rc = set_err(err, -EREMOTEIO, "BADREPLY",
                     "%s: emad's shadow has %" PRIu64 " bytes, the session had %zu", what,
                     rep.shadow_bytes, s->shadow_map_bytes);
        goto out;
    }
    for (size_t i = 0; i < s->seg->n; i++) {
        uint64_t off = rep.has_shadow_offsets ? rep.shadow_offsets[i]
                                              : rep.tensors[i].shadow_offset;
        if (off != s->shadows[i].offset) {
            rc = set_err(err, -EREMOTEIO, "BADREPLY", "%s: tensor \"%s\" moved in the shadow",
                         what, s->shadows[i].name);
            goto out;
        }
    }
    if (s->shadow_map_bytes > 0) {
        fd = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
        if (fd < 0) {
            rc = set_err(err, -EREMOTEIO, EMAC_E_SYSTEM, "%s: cannot open the shadow %s: %s",
                         what, name, strerror(errno));
            goto out;
        }
        void *p = mmap(s->shadow_base, s->shadow_map_bytes, PROT_READ, MAP_SHARED | MAP_FIXED,
                       fd, 0);
        close(fd);
        if (p == MAP_FAILED) {
            rc = set_err(err, -EREMOTEIO, EMAC_E_SYSTEM, "%s: mmap of the shadow %s: %s", what,
                         name, strerror(errno));
            goto out;
        }
    }
    rc = session_take_state(s, &rep, what, err);
out:
    msg_free(&msg_register_reply_desc, &rep);
    return rc;
}

const char *emac_session_name(const emac_session *s)
{
    return s ? s->name : NULL;
}

emac_segment *emac_session_segment(const emac_session *s)
{
    return s ? s->seg : NULL;
}

const struct emac_session_info *emac_session_state(const emac_session *s)
{
    return s ? &s->state : NULL;
}

const struct emac_shadow *emac_session_shadow(const emac_session *s, size_t i)
{
    return s != NULL && i < s->seg->n ? &s->shadows[i] : NULL;
}

bool emac_session_restored(const emac_session *s)
{
    return s != NULL && s->restored;
}

/* ---- events ---- */

static const char *const action_names[] = {
    [EMAC_ACTION_NONE] = "none",         [EMAC_ACTION_START] = "start",
    [EMAC_ACTION_UPDATE] = "update",     [EMAC_ACTION_START_UPDATE] = "start+update",
    [EMAC_ACTION_SWAP_IN] = "swap_in",   [EMAC_ACTION_SWAP_OUT] = "swap_out",
};

const char *emac_action_name(enum emac_action a)
{
    return (unsigned)a < sizeof(action_names) / sizeof(action_names[0]) ? action_names[a] : NULL;
}

/* Decode an event or swap reply into out. */
static int wait_action(emac_session *s, uint32_t id, const char *what, struct emac_result *out,
                       struct emac_error *err)
{
    struct msg_action rep;
    int rc = wait_reply(s->c, id, what, &msg_action_desc, &rep, NULL, NULL, err);

    if (rc < 0 && s->gone)
        return set_err(err, rc, EMAC_E_DISCONNECTED, "%s: %s", what, s->gone_why);
    if (rc < 0)
        return rc;
    for (unsigned a = 0; a < sizeof(action_names) / sizeof(action_names[0]); a++) {
        if (msg_str_eq(rep.action, action_names[a])) {
            out->action = (enum emac_action)a;
            out->active = rep.active;
            out->started = rep.started;
            out->updates = rep.updates;
            out->replayed = rep.has_replayed && rep.replayed;
            out->interrupted = rep.has_interrupted && rep.interrupted;
            return 0;
        }
    }
    return set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: unknown action \"%.*s\"", what,
                   (int)(rep.action.len > 32 ? 32 : rep.action.len), rep.action.ptr);
}

static void event_what(char *buf, size_t len, const emac_session *s, const char *event)
{
    snprintf(buf, len, "event \"%.32s\" on session \"%.128s\"", event ? event : "(null)",
             s ? s->name : "(null)");
}

int emac_event_send(emac_session *s, const char *event, const struct emac_time *t,
                    emac_ticket *ticket, struct emac_error *err)
{
    struct msg_event req;
    char what[200];
    int rc;

    event_what(what, sizeof(what), s, event);
    if (s == NULL || event == NULL || t == NULL || ticket == NULL)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "%s: NULL argument", what);
    if ((rc = session_usable(s, what, err)) < 0)
        return rc;
    memset(&req, 0, sizeof(req));
    req.session = msg_str_c(s->name);
    req.event = msg_str_c(event);
    req.time.batch = t->batch;
    req.time.epoch = t->epoch;
    req.time.has_duration = t->has_duration;
    req.time.duration = t->duration;
    req.has_seq = true;
    req.seq = s->next_seq++;
    return send_request(s->c, "event", &msg_event_desc, &req, s, true, what, ticket, err);
}

int emac_event_wait(emac_session *s, emac_ticket ticket, struct emac_result *out,
                    struct emac_error *err)
{
    char what[200];
    const struct outstanding *o;

    if (s == NULL || out == NULL)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "emac_event_wait: NULL argument");
    snprintf(what, sizeof(what), "event (ticket %" PRIu32 ") on session \"%.128s\"", ticket,
             s->name);
    if (s->c == NULL)
        return session_usable(s, what, err);
    o = find_out(s->c, ticket);
    if (o == NULL || o->owner != s)
        return set_err(err, -EINVAL, EMAC_E_USAGE,
                       "%s: no event of this session with that ticket is outstanding", what);
    return wait_action(s, ticket, what, out, err);
}

int emac_event(emac_session *s, const char *event, const struct emac_time *t,
               struct emac_result *out, struct emac_error *err)
{
    emac_ticket id;
    char what[200];
    int rc;

    if (out == NULL)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "emac_event: out is NULL");
    if ((rc = emac_event_send(s, event, t, &id, err)) < 0)
        return rc;
    event_what(what, sizeof(what), s, event);
    return wait_action(s, id, what, out, err);
}

int emac_swap(emac_session *s, const char *to, struct emac_result *out, struct emac_error *err)
{
    struct msg_swap req;
    char what[200];
    uint32_t id;
    int rc;

    if (s == NULL || to == NULL || out == NULL)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "emac_swap: NULL argument");
    snprintf(what, sizeof(what), "swap to \"%.16s\" on session \"%.128s\"", to, s->name);
    if ((rc = session_usable(s, what, err)) < 0)
        return rc;
    memset(&req, 0, sizeof(req));
    req.session = msg_str_c(s->name);
    req.to = msg_str_c(to);
    req.has_seq = true;
    req.seq = s->next_seq++;
    if ((rc = send_request(s->c, "swap", &msg_swap_desc, &req, s, true, what, &id, err)) < 0)
        return rc;
    return wait_action(s, id, what, out, err);
}

int emac_close(emac_session *s, bool keep, struct emac_error *err)
{
    struct msg_close req;
    struct msg_empty rep;
    char what[200];
    int rc;

    if (s == NULL)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "emac_close: session is NULL");
    snprintf(what, sizeof(what), "close session \"%.128s\"", s->name);
    if ((rc = session_usable(s, what, err)) < 0)
        return rc;
    req.session = msg_str_c(s->name);
    req.has_keep = true;
    req.keep = keep;
    rc = call(s->c, "close", &msg_close_desc, &req, &msg_empty_desc, &rep, NULL, NULL, false, what,
              err);
    if (rc == 0)
        s->closed = true;
    return rc;
}

/* ---- any session, by name ---- */

static int file_call(emac_client *c, const char *method, const char *session, const char *name,
                     struct emac_file *out, struct emac_error *err)
{
    struct msg_file req;
    struct msg_file_reply rep;
    char what[200];
    int rc;

    if (c == NULL || session == NULL || out == NULL)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "emac_%s: NULL argument", method);
    snprintf(what, sizeof(what), "%s session \"%.128s\"", method, session);
    memset(&req, 0, sizeof(req));
    req.session = msg_str_c(session);
    req.has_name = name != NULL;
    req.name = msg_str_c(name);
    rc = call(c, method, &msg_file_desc, &req, &msg_file_reply_desc, &rep, NULL, NULL, false, what,
              err);
    if (rc < 0)
        return rc;
    if (msg_str_copy(rep.path, out->path, sizeof(out->path)) < 0)
        return set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: path in the reply is too long", what);
    out->bytes = rep.bytes;
    return 0;
}

int emac_save(emac_client *c, const char *session, const char *name, struct emac_file *out,
              struct emac_error *err)
{
    return file_call(c, "save", session, name, out, err);
}

int emac_load(emac_client *c, const char *session, const char *name, struct emac_file *out,
              struct emac_error *err)
{
    return file_call(c, "load", session, name, out, err);
}

int emac_drop(emac_client *c, const char *session, struct emac_error *err)
{
    struct msg_drop req;
    struct msg_empty rep;
    char what[200];

    if (c == NULL || session == NULL)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "emac_drop: NULL argument");
    snprintf(what, sizeof(what), "drop session \"%.128s\"", session);
    req.session = msg_str_c(session);
    return call(c, "drop", &msg_drop_desc, &req, &msg_empty_desc, &rep, NULL, NULL, false, what,
                err);
}

/* ---- status ---- */

int emac_status(emac_client *c, const char *session, struct emac_status **out,
                struct emac_error *err)
{
    struct msg_status req;
    struct msg_status_reply rep;
    struct status_box *b;
    int rc;

    if (c == NULL || out == NULL)
        return set_err(err, -EINVAL, EMAC_E_USAGE, "emac_status: NULL argument");
    *out = NULL;
    memset(&req, 0, sizeof(req));
    if (session != NULL) {
        req.has_session = true;
        req.session = msg_str_c(session);
    }
    b = calloc(1, sizeof(*b));
    if (b == NULL)
        return set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
    rc = call(c, "status", &msg_status_desc, &req, &msg_status_reply_desc, &rep, &b->raw,
              &b->raw_len, true, "status", err);
    if (rc < 0) {
        free(b);
        return rc;
    }
    /* Every string of the reply fits in the reply's own size, plus a NUL
     * for each, which takes at least one byte of msgpack header. */
    b->arena.cap = 2 * b->raw_len + 16;
    b->arena.buf = malloc(b->arena.cap);
    b->pub.session_list = rep.nsessions ? calloc(rep.nsessions, sizeof(*b->pub.session_list))
                                        : NULL;
    if (b->arena.buf == NULL || (rep.nsessions && b->pub.session_list == NULL)) {
        msg_free(&msg_status_reply_desc, &rep);
        emac_status_free(&b->pub);
        return set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
    }
    b->pub.server = arena_str(&b->arena, rep.server.server);
    b->pub.version = arena_str(&b->arena, rep.server.version);
    b->pub.proto = (unsigned)rep.server.proto;
    b->pub.pid = (long)rep.server.pid;
    b->pub.uptime_seconds = rep.server.uptime_seconds;
    b->pub.workers = (unsigned)rep.server.workers;
    b->pub.connections = (unsigned)rep.server.connections;
    b->pub.sessions = (unsigned)rep.server.sessions;
    b->pub.max_connections = (unsigned)rep.server.max_connections;
    b->pub.max_sessions = (unsigned)rep.server.max_sessions;
    b->pub.max_message = rep.server.max_message;
    b->pub.socket = arena_str(&b->arena, rep.server.socket);
    b->pub.state_dir = arena_str(&b->arena, rep.server.state_dir);
    b->pub.nsessions = rep.nsessions;
    for (size_t i = 0; i < rep.nsessions; i++)
        copy_session(&b->arena, &b->pub.session_list[i], &rep.sessions[i]);
    msg_free(&msg_status_reply_desc, &rep);
    *out = &b->pub;
    return 0;
}

void emac_status_free(struct emac_status *st)
{
    struct status_box *b = (struct status_box *)st;

    if (b == NULL)
        return;
    free(b->pub.session_list);
    free(b->arena.buf);
    free(b->raw);
    free(b);
}

void emac_status_raw(const struct emac_status *st, const void **data, size_t *len)
{
    const struct status_box *b = (const struct status_box *)st;
    *data = b->raw;
    *len = b->raw_len;
}
