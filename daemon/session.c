/*
 * session.c - sessions and their FIFO of operations.
 *
 * An operation (register's shadow initialisation, an event, a swap, save,
 * load, close, drop, re-attach) waits in its session's queue; the head runs,
 * its data work split into chunks on the worker pool, and its reply is sent
 * from the pool's completion callback on the loop thread. The loop thread
 * never touches tensor data.
 */
#include "session.h"

#include "pool.h"
#include "peer.h"
#include "errbuf.h"
#include "store.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <unistd.h>

/* Elements per chunk: a few MiB of each stream, enough to amortise the
 * hand-off, small enough that sessions interleave finely. */
#define CHUNK_ELEMS (1u << 20)
/* Bytes per chunk of the stash copies. */
#define COPY_CHUNK_BYTES (4u << 20)

enum op_kind {
    OP_INIT,    /* register: shadow := params */
    OP_ATTACH,  /* register with resume: adopt a new segment */
    OP_EVENT,   /* event and swap */
    OP_SAVE,
    OP_LOAD,
    OP_CLOSE,
    OP_DROP,
};

enum op_phase {
    PH_NONE,
    PH_TENSORS, /* update / start / initialise: tensor chunks */
    PH_STASH,   /* swap in, first half: params -> stash */
    PH_CAST,    /* swap in, second half: shadow -> params */
    PH_RESTORE, /* swap out: stash -> params */
    PH_FILE,    /* save / load: one chunk */
    PH_JOURNAL, /* load, then: the journal (its fsyncs off the loop thread) */
};

struct op {
    struct op *next;
    struct session *s;
    enum op_kind kind;
    enum op_phase phase;
    struct peer *peer;         /* who gets the reply (held) */
    uint32_t msgid;
    enum ema_event ev;
    bool has_clock;
    struct ema_clock clock;
    enum ema_action action;
    bool compact;              /* register: the reply lists shadow offsets only */
    const uint64_t *resume_from; /* event sent again after a crash: per chunk, done already */
    bool logged;               /* event: tensor work in logged blocks (--crash-exact) */
    bool has_seq;              /* event / swap: the client's request number */
    uint64_t seq;
    struct pool_job job;
    uint64_t t0;               /* uv_hrtime when the data work began */
    bool keep;                 /* close */
    struct shm_map new_seg;    /* attach */
    struct seg_geometry new_geo; /* attach: new_seg's checked geometry */
    char new_shm[256];
    char file[160];            /* save / load: file name */
    msgpack_sbuffer meta;      /* save: metadata; load: the file's metadata copy */
    char path[PATH_MAX];       /* save / load result */
    uint64_t bytes;
    int rc;                    /* save / load result */
    char err[512];
    struct msg_saved_state loaded; /* load: decoded metadata */
    msgpack_unpacked unpacked;     /* load: what loaded points into */
    bool has_loaded;
};

static void op_run(struct op *op);
static void op_done(struct pool_job *job);
static void session_start_next(struct session *s);

static struct log *reg_log(const struct registry *r)
{
    return r->ctx->log;
}

/* ---- names and tables ---- */

bool session_name_qualified(const char *s, size_t len)
{
    size_t i = 0;

    while (i < len && s[i] >= '0' && s[i] <= '9')
        i++;
    return i > 0 && i < len && s[i] == ':';
}

bool session_name_valid(const char *s, size_t len)
{
    if (len == 0 || len > SESSION_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == ':' ||
                  ch == '/' || ch == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* Well-formed UTF-8 (no overlongs, no surrogates), 1..1024 bytes, no NUL. */
bool tensor_name_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;

    if (len == 0 || len > TENSOR_NAME_MAX)
        return false;
    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        uint32_t cp;
        if (c == 0)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            n = 1, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3, cp = c & 0x07;
        else
            return false;
        if (i + n >= len)
            return false; /* truncated sequence */
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}

void plan_free(struct plan *p)
{
    free(p->pieces);
    free(p->first);
    memset(p, 0, sizeof(*p));
}

int plan_build(struct plan *p, const struct tensor *t, size_t n, uint64_t chunk_elems)
{
    size_t cap_p = n + 16, cap_c = 16;

    memset(p, 0, sizeof(*p));
    p->pieces = malloc(cap_p * sizeof(*p->pieces));
    p->first = malloc(cap_c * sizeof(*p->first));
    if (p->pieces == NULL || p->first == NULL)
        goto err_nomem;
    uint64_t fill = chunk_elems; /* forces a new chunk at the first piece */
    for (size_t i = 0; i < n; i++) {
        uint64_t start = 0;
        while (start < t[i].numel) {
            if (fill >= chunk_elems) {
                if (p->nchunks + 2 > cap_c) {
                    size_t *nf = realloc(p->first, 2 * cap_c * sizeof(*nf));
                    if (nf == NULL)
                        goto err_nomem;
                    p->first = nf;
                    cap_c *= 2;
                }
                p->first[p->nchunks++] = p->npieces;
                fill = 0;
            }
            uint64_t count = t[i].numel - start;
            if (count > chunk_elems - fill)
                count = chunk_elems - fill;
            if (p->npieces == cap_p) {
                struct piece *np = realloc(p->pieces, 2 * cap_p * sizeof(*np));
                if (np == NULL)
                    goto err_nomem;
                p->pieces = np;
                cap_p *= 2;
            }
            p->pieces[p->npieces++] = (struct piece){(uint32_t)i, start, count};
            start += count;
            /* Each tensor costs at least a little, so a million empty or tiny
             * tensors still spread over several chunks. */
            fill += count > 64 ? count : 64;
        }
    }
    p->first[p->nchunks] = p->npieces;
    return 0;

err_nomem:
    plan_free(p);
    return -ENOMEM;
}

/* ---- registry ---- */

int registry_init(struct registry *r, struct emad *ctx)
{
    memset(r, 0, sizeof(*r));
    r->ctx = ctx;
    r->kops = kernel_ops_best();
    r->home = 1469598103934665603ull; /* FNV-1a of the state directory */
    for (const char *p = ctx->opts->state_dir; *p != '\0'; p++)
        r->home = (r->home ^ (unsigned char)*p) * 1099511628211ull;
    if (snprintf(r->live_dir, sizeof(r->live_dir), "%s/live", ctx->opts->state_dir) >=
        (int)sizeof(r->live_dir))
        r->live_dir[0] = '\0';
    return 0;
}

static bool named(const struct session *s, const char *name, size_t len)
{
    return strlen(s->name) == len && memcmp(s->name, name, len) == 0;
}

/* Names are per uid: the same name for two users is two sessions. */
static struct session *find(struct registry *r, uid_t uid, const char *name, size_t len)
{
    for (struct session *s = r->head; s != NULL; s = s->next)
        if (s->uid == uid && named(s, name, len))
            return s;
    return NULL;
}

/*
 * The session a peer of uid means by name: its own of that name. Root may
 * name another user's too: its own first, else the only session of that
 * name, else "<uid>:<name>" (how status shows other users' sessions to
 * root). 0, -ENOENT, or -EEXIST when root's name fits several users'.
 */
static int resolve(struct registry *r, uid_t uid, const char *name, size_t len,
                   struct session **out)
{
    struct session *only = NULL;
    unsigned n = 0;
    uint64_t owner = 0;
    size_t i = 0;

    if ((*out = find(r, uid, name, len)) != NULL)
        return 0;
    if (uid != 0)
        return -ENOENT;
    for (struct session *s = r->head; s != NULL; s = s->next)
        if (named(s, name, len)) {
            only = s;
            n++;
        }
    if (n > 1)
        return -EEXIST;
    if ((*out = only) != NULL)
        return 0;
    while (i < len && name[i] >= '0' && name[i] <= '9' && owner <= UINT32_MAX)
        owner = owner * 10 + (uint64_t)(name[i++] - '0');
    if (i == 0 || i + 1 >= len || name[i] != ':' || owner > UINT32_MAX)
        return -ENOENT;
    *out = find(r, (uid_t)owner, name + i + 1, len - i - 1);
    return *out != NULL ? 0 : -ENOENT;
}

/* What the session's files (journal, kept state) are called: its name as
 * a file name, and for a user other than emad's own, "%u<uid>-" before it
 * ('%' is followed by a hex pair in every name store_default_name makes,
 * so these never clash with those of emad's own uid). A name too long for
 * that gets a hash instead. */
static void kept_name(const struct session *s, char *out, size_t outlen)
{
    char base[STORE_NAME_MAX + 1];
    uint64_t h = 1469598103934665603ull;
    int fits = store_default_name(s->name, strlen(s->name), base, sizeof(base)) == 0;

    if (fits && s->uid == geteuid() && snprintf(out, outlen, "%s", base) < (int)outlen)
        return;
    if (fits && snprintf(out, outlen, "%%u%lu-%s", (unsigned long)s->uid, base) <= STORE_NAME_MAX)
        return;
    for (const char *p = s->name; *p != '\0'; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    snprintf(out, outlen, "%%u%lu-h%016" PRIx64, (unsigned long)s->uid, h);
}

/* What a uid holds: sessions, tensors and shadow bytes, against the
 * per-uid limits. */
struct usage {
    unsigned sessions;
    uint64_t tensors;
    uint64_t shadow_bytes;
};

static uint64_t shadow_object_bytes(const struct session *s);

static void usage_of(const struct registry *r, uid_t uid, struct usage *u)
{
    memset(u, 0, sizeof(*u));
    for (const struct session *s = r->head; s != NULL; s = s->next) {
        if (s->uid != uid)
            continue;
        u->sessions++;
        u->tensors += s->ntensors;
        u->shadow_bytes += shadow_object_bytes(s);
    }
}

static void unlink_session(struct registry *r, struct session *s)
{
    for (struct session **pp = &r->head; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            r->count--;
            s->removed = true;
            return;
        }
    }
}

static void registry_insert(struct registry *r, struct session *s)
{
    s->next = r->head;
    r->head = s;
    r->count++;
}

static void session_free(struct session *s)
{
    shm_unmap(&s->seg);
    if (s->shadow.base != NULL) {
        shm_unmap(&s->shadow);
        if (s->shadow_name[0] != '\0')
            shm_unlink(s->shadow_name);
    }
    free(s->names);
    free(s->tensors);
    plan_free(&s->plan);
    free(s->redo_from);
    free(s);
}

static void journal_remove(struct session *s);

void registry_free(struct registry *r)
{
    while (r->head != NULL) {
        struct session *s = r->head;
        if (s->kept || !s->ready) {
            journal_remove(s);
        } else {
            /* Not in a state file (the save failed): leave its journal and
             * shadow for the next emad to take back, as after a crash. */
            log_warn(reg_log(r), "session %s: shadow %s and its journal left in place for the "
                     "next start", s->name, s->shadow_name);
            s->shadow_name[0] = '\0';
        }
        unlink_session(r, s);
        session_free(s);
    }
}

static void check_drained(struct registry *r)
{
    if (r->drained != NULL && pool_in_flight(r->ctx->pool) == 0) {
        bool idle = true;
        for (struct session *s = r->head; s != NULL && idle; s = s->next)
            idle = s->q_head == NULL;
        if (idle) {
            void (*cb)(struct registry *) = r->drained;
            r->drained = NULL;
            cb(r);
        }
    }
}

void registry_drain(struct registry *r, void (*cb)(struct registry *r))
{
    r->drained = cb;
    check_drained(r);
}

void registry_peer_closed(struct registry *r, struct peer *c)
{
    for (struct session *s = r->head; s != NULL; s = s->next) {
        if (s->owner != c)
            continue;
        s->owner = NULL;
        log_info(reg_log(r), "session %s: owner (pid %ld) disconnected; detached, shadow kept",
                 s->name, (long)s->owner_pid);
        /* The trainer's segment is no longer ours to read once nothing runs. */
        if (s->q_head == NULL)
            shm_unmap(&s->seg);
    }
}

/* ---- replies ---- */

static void fill_state(const struct session *s, uid_t viewer, struct msg_session_state *o)
{
    memset(o, 0, sizeof(*o));
    /* Root sees other users' sessions as "<uid>:<name>", the name it may
     * use for them (names are per uid). */
    o->session = msg_str_c(viewer != s->uid ? s->qualified : s->name);
    o->attached = s->owner != NULL;
    o->has_owner_pid = s->owner != NULL;
    o->owner_pid = s->owner_pid;
    o->tensors = s->ntensors;
    o->params_bytes = s->params_bytes;
    o->shadow_bytes = s->shadow_bytes;
    o->smoothing = s->cfg.smoothing;
    o->has_half_life = s->cfg.has_half_life;
    o->half_life = msg_str_c(s->half_life);
    o->update_interval = msg_str_c(s->update_interval);
    o->ema_start = msg_str_c(s->ema_start);
    o->started = s->st.started;
    o->active = s->st.active;
    o->updates = s->st.updates;
    o->swaps = s->st.swaps;
    o->has_last_time = s->st.has_last_time;
    o->last_time.batch = s->st.last_time.batch;
    o->last_time.epoch = s->st.last_time.epoch;
    o->last_time.has_duration = s->st.last_time.has_duration;
    o->last_time.duration = s->st.last_time.duration;
    o->last_update_seconds = s->last_update_seconds;
    o->shm = msg_str_c(s->shm_name);
    o->shadow_shm = msg_str_c(s->shadow_name);
    o->has_interrupted = true;
    o->interrupted = s->interrupted;
    o->has_seq = true;
    o->seq = s->last_seq;
}

/* Where the file system has no ACLs, shadows are given to their trainers,
 * which can then resize them: say so once. */
static void share_note(struct registry *r, enum shm_share share)
{
    if (share != SHM_SHARE_CHOWN || r->share_warned)
        return;
    r->share_warned = true;
    log_warn(reg_log(r), "/dev/shm refuses POSIX ACLs: shadows are given to their trainers' "
             "uids (mode 0400), so a trainer can resize its own shadow and fail its session; "
             "mount /dev/shm with ACL support (tmpfs has it) to keep shadows emad's");
}

static bool visible(const struct session *s, uid_t uid)
{
    return uid == 0 || s->uid == uid;
}

/* Whether status lists s for peer uid: every visible session, or the one
 * named (all of that name, for root's ambiguous name). */
static bool shown(const struct session *s, uid_t uid, const struct msg_status *req,
                  const struct session *one, bool all_named)
{
    if (!visible(s, uid))
        return false;
    if (!req->has_session)
        return true;
    return all_named ? named(s, req->session.ptr, req->session.len) : s == one;
}

int registry_states(struct registry *r, uid_t uid, const struct msg_status *req,
                    struct msg_session_state **out, size_t *n)
{
    size_t count = 0, i = 0;

    *out = NULL;
    *n = 0;
    /* By name: the one the peer means; for root, every user's session of
     * an ambiguous name. */
    struct session *one = NULL;
    int rc = req->has_session ? resolve(r, uid, req->session.ptr, req->session.len, &one) : 0;
    if (rc == -ENOENT)
        return -ENOENT;
    bool all_named = rc == -EEXIST;
    for (struct session *s = r->head; s != NULL; s = s->next)
        count += shown(s, uid, req, one, all_named);
    if (count == 0)
        return 0;
    *out = calloc(count, sizeof(**out));
    if (*out == NULL)
        return -ENOMEM;
    for (struct session *s = r->head; s != NULL; s = s->next)
        if (shown(s, uid, req, one, all_named))
            fill_state(s, uid, &(*out)[i++]);
    *n = count;
    return 0;
}

static void reply_action(struct op *op)
{
    struct msg_action a;

    memset(&a, 0, sizeof(a));
    a.action = msg_str_c(ema_action_name(op->action));
    a.active = op->s->st.active;
    a.started = op->s->st.started;
    a.updates = op->s->st.updates;
    a.has_interrupted = op->s->interrupted;
    a.interrupted = op->s->interrupted;
    peer_reply(op->peer, op->msgid, &msg_action_desc, &a);
}

/* The answer to a request seq that was applied before: what it did then. */
static void reply_recorded(struct op *op, const struct seq_record *rec)
{
    struct msg_action a;

    memset(&a, 0, sizeof(a));
    a.action = msg_str_c(ema_action_name((enum ema_action)rec->action));
    a.active = rec->active;
    a.started = rec->started;
    a.updates = rec->updates;
    a.has_replayed = true;
    a.replayed = true;
    a.has_interrupted = op->s->interrupted;
    a.interrupted = op->s->interrupted;
    peer_reply(op->peer, op->msgid, &msg_action_desc, &a);
}

static void reply_register(struct op *op)
{
    struct session *s = op->s;
    struct msg_register_reply rep;
    size_t n = s->ntensors ? s->ntensors : 1;
    /* Compact: the offsets alone (the client knows the names, in order, and
     * the dtype rule); a million-tensor reply shrinks from ~40 to ~5 MB. */
    struct msg_shadow_tensor *t = op->compact ? NULL : calloc(n, sizeof(*t));
    uint64_t *offsets = op->compact ? malloc(n * sizeof(*offsets)) : NULL;

    if (t == NULL && offsets == NULL) {
        peer_fail(op->peer, op->msgid, MSG_E_INTERNAL, "register: out of memory");
        return;
    }
    memset(&rep, 0, sizeof(rep));
    rep.session = msg_str_c(s->name);
    rep.shadow_shm = msg_str_c(s->shadow_name);
    rep.shadow_bytes = s->shadow_bytes;
    for (size_t i = 0; i < s->ntensors; i++) {
        if (offsets != NULL) {
            offsets[i] = s->tensors[i].shadow_offset;
            continue;
        }
        t[i].name = msg_str_c(s->tensors[i].name);
        t[i].shadow_offset = s->tensors[i].shadow_offset;
        t[i].shadow_dtype = msg_str_c(dtype_name(s->tensors[i].shadow_dtype));
    }
    rep.tensors = t;
    rep.ntensors = t ? s->ntensors : 0;
    rep.has_shadow_offsets = offsets != NULL;
    rep.shadow_offsets = offsets;
    rep.nshadow_offsets = offsets ? s->ntensors : 0;
    fill_state(s, s->uid, &rep.state);
    peer_reply(op->peer, op->msgid, &msg_register_reply_desc, &rep);
    free(t);
    free(offsets);
}

/* ---- the queue ---- */

static struct op *op_new(struct session *s, enum op_kind kind, struct peer *c, uint32_t msgid)
{
    struct op *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        peer_fail(c, msgid, MSG_E_INTERNAL, "out of memory queueing the request");
        return NULL;
    }
    op->s = s;
    op->kind = kind;
    op->peer = c;
    op->msgid = msgid;
    msgpack_sbuffer_init(&op->meta);
    peer_hold(c, sizeof(*op));
    return op;
}

static void op_free(struct op *op)
{
    msgpack_sbuffer_destroy(&op->meta); /* save's metadata, or load's copy of the file's */
    if (op->has_loaded) {
        msg_free(&msg_saved_state_desc, &op->loaded);
        msgpack_unpacked_destroy(&op->unpacked);
    }
    shm_unmap(&op->new_seg);
    peer_release(op->peer, sizeof(*op));
    free(op);
}

static void enqueue(struct op *op)
{
    struct session *s = op->s;

    if (s->q_tail)
        s->q_tail->next = op;
    else
        s->q_head = op;
    s->q_tail = op;
    if (!s->busy)
        session_start_next(s);
}

/* The head is finished: drop it and run the next one. */
static void journal_write(struct session *s);
static void journal_failed(struct session *s, const char *why);
static void shadow_sync(struct session *s);

static void op_finish(struct op *op)
{
    struct session *s = op->s;
    struct registry *r = s->reg;


    s->q_head = op->next;
    if (s->q_head == NULL)
        s->q_tail = NULL;
    s->busy = false;
    op_free(op);
    if (s->q_head != NULL) {
        session_start_next(s);
    } else if (s->removed) {
        session_free(s);
    } else if (s->owner == NULL) {
        shm_unmap(&s->seg);
    }
    check_drained(r);
}

static void session_start_next(struct session *s)
{
    if (s->busy || s->q_head == NULL)
        return;
    s->busy = true;
    op_run(s->q_head);
}

static void submit(struct op *op, enum op_phase phase, pool_chunk_fn fn, size_t nchunks)
{
    op->phase = phase;
    op->job.run = fn;
    op->job.done = op_done;
    op->job.arg = op;
    op->job.nchunks = nchunks;
    pool_submit(op->s->reg->ctx->pool, &op->job);
}

/* ---- chunk workers (worker threads) ---- */

/* Every address in the segment comes from the geometry checked at register
 * (s->geo) and the tensor table checked against it: never from the live
 * header, which the trainer may have rewritten since. */
static void *param_ptr(const struct session *s, const struct tensor *t, uint64_t start)
{
    return (char *)s->seg.base + s->geo.params_offset + t->offset + start * dtype_size(t->dtype);
}

static void *shadow_ptr(const struct session *s, const struct tensor *t, uint64_t start)
{
    return (char *)s->shadow.base + t->shadow_offset + start * dtype_size(t->shadow_dtype);
}

/* The tensors' part of the shadow object (what save and load move). */
static void *shadow_data(const struct session *s)
{
    return (char *)s->shadow.base + SHADOW_HEADER_BYTES;
}

static uint64_t shadow_data_bytes(const struct session *s)
{
    return s->shadow_bytes - SHADOW_HEADER_BYTES;
}

static struct shadow_header *shadow_hdr(const struct session *s)
{
    return s->shadow.base;
}

/* The loop thread's accesses to a shadow's header go under the guard too:
 * a shadow that faults fails its session (shadow_broken), not emad. */
static void shadow_enter(struct session *s, struct shm_guard *g)
{
    shm_guard_enter(g, &s->shadow);
}

static void shadow_leave(struct session *s, struct shm_guard *g)
{
    if (shm_guard_leave(g) < 0)
        __atomic_store_n(&s->shadow_broken, true, __ATOMIC_RELEASE);
}

static bool shadow_is_broken(const struct session *s)
{
    return __atomic_load_n(&s->shadow_broken, __ATOMIC_ACQUIRE);
}

/* An operation is about to write the shadow: a crash from here on leaves
 * seq_begun ahead of seq_done. */
static void shadow_begin(struct session *s)
{
    struct shadow_header *h = shadow_hdr(s);
    struct shm_guard g;

    shadow_enter(s, &g);
    __atomic_store_n(&h->seq_begun, h->seq_done + 1, __ATOMIC_RELEASE);
    shadow_leave(s, &g);
}

/* The state after an operation, where a restarted emad will look for it. */
static void shadow_sync(struct session *s)
{
    struct shadow_header *h = shadow_hdr(s);
    struct shm_guard g;

    if (h == NULL || shadow_is_broken(s))
        return;
    shadow_enter(s, &g);
    memcpy(h->magic, SHADOW_MAGIC, 8);
    h->home = s->reg->home;
    h->updates = s->st.updates;
    h->swaps = s->st.swaps;
    h->started = s->st.started;
    h->active = s->st.active;
    h->has_last_time = s->st.has_last_time;
    h->has_last_duration = s->st.last_time.has_duration;
    h->last_batch = s->st.last_time.batch;
    h->last_epoch = s->st.last_time.epoch;
    h->last_duration = s->st.last_time.duration;
    h->interrupted = s->interrupted;
    h->last_seq = s->last_seq;
    h->redo_pending = s->redo_pending ? 1u | (s->redo_clears ? 2u : 0u) : 0u;
    __atomic_store_n(&h->seq_done, __atomic_load_n(&h->seq_begun, __ATOMIC_ACQUIRE),
                     __ATOMIC_RELEASE);
    shadow_leave(s, &g);
}

static struct redo_rec *redo_rec(const struct session *s, size_t chunk)
{
    return (struct redo_rec *)((char *)s->shadow.base + s->redo_off) + chunk;
}

/* An event's tensor work is about to write the shadow: reset every chunk's
 * record (from where a cut-short run of the same event got, when this is
 * its replay), say which event it is, then mark the shadow begun. */
static void redo_begin(struct op *op)
{
    struct session *s = op->s;
    struct shadow_header *h = shadow_hdr(s);
    struct shm_guard g;

    shadow_enter(s, &g);
    uint64_t of = h->seq_done + 1;
    for (size_t c = 0; c < s->plan.nchunks; c++) {
        struct redo_rec *rec = redo_rec(s, c);
        rec->seq = of;
        rec->done_to = op->resume_from != NULL ? op->resume_from[c] : 0;
        rec->undo_at = REDO_NONE;
    }
    h->redo_of = of;
    h->pending_seq = op->has_seq ? op->seq : 0;
    h->pending_action = (uint32_t)op->action;
    h->pending_batch = op->clock.batch;
    h->pending_epoch = op->clock.epoch;
    h->redo_nchunks = s->plan.nchunks;
    shadow_leave(s, &g);
    shadow_begin(s);
}

static int for_each_block(const struct session *s, size_t c,
                          int (*fn)(void *arg, uint64_t pos, const struct tensor *t,
                                    uint64_t start, uint64_t n),
                          void *arg);

static bool writes_tensors(uint32_t action)
{
    return action == EMA_ACTION_START || action == EMA_ACTION_UPDATE ||
           action == EMA_ACTION_START_UPDATE;
}

/* Put back the block caught halfway: every element whose old value the
 * kernel had saved (the others still hold UNDO_UNSET and were not written;
 * a saved old value that happens to be all ones is a NaN, or an integer
 * copied from the params again: either way the replay gives it back). */
static int undo_block(void *arg, uint64_t pos, const struct tensor *t, uint64_t start, uint64_t n)
{
    struct redo_rec *rec = ((void **)arg)[0];
    struct session *s = ((void **)arg)[1];
    size_t esz = dtype_size(t->shadow_dtype);
    unsigned char unset[8];
    char *sh;

    if (pos != rec->undo_at)
        return 0;
    if (rec->undo_count != n)
        return -EINVAL;
    memset(unset, UNDO_UNSET, sizeof(unset));
    sh = shadow_ptr(s, t, start);
    for (uint64_t i = 0; i < n; i++)
        if (memcmp(rec->undo + i * esz, unset, esz) != 0)
            memcpy(sh + i * esz, rec->undo + i * esz, esz);
    return 1;
}

/*
 * After an event's tensor work was cut short (emad killed, a worker
 * failed): from the records, put back the block caught halfway and keep,
 * per chunk, how far the event had got, until the client sends it again.
 * 0, or -EINVAL when the records cannot tell (the shadow then keeps part
 * of the event and the session says so).
 */
static int redo_recover(struct session *s)
{
    struct shadow_header *h = shadow_hdr(s);
    uint64_t *from;

    if (h->redo_nchunks != s->plan.nchunks || !writes_tensors(h->pending_action) ||
        h->pending_seq == 0)
        return -EINVAL;
    from = calloc(s->plan.nchunks ? s->plan.nchunks : 1, sizeof(*from));
    if (from == NULL)
        return -ENOMEM;
    for (size_t c = 0; c < s->plan.nchunks; c++) {
        struct redo_rec *rec = redo_rec(s, c);
        void *arg[2] = {rec, s};
        if (rec->seq != h->redo_of ||
            (rec->undo_at != REDO_NONE && rec->undo_at == rec->done_to &&
             for_each_block(s, c, undo_block, arg) != 1)) {
            free(from);
            return -EINVAL;
        }
        rec->undo_at = REDO_NONE;
        from[c] = rec->done_to;
    }
    free(s->redo_from);
    s->redo_from = from;
    s->redo_pending = true;
    return 0;
}

/* The session's pending replay will not come (another operation came
 * first): the shadow keeps part of the cut-short event, and says so. */
static void redo_cancel(struct session *s, const char *why)
{
    if (!s->redo_pending)
        return;
    struct shm_guard g;
    uint64_t pending;

    s->redo_pending = false;
    s->interrupted = true;
    free(s->redo_from);
    s->redo_from = NULL;
    shadow_enter(s, &g);
    pending = shadow_hdr(s)->pending_seq;
    shadow_leave(s, &g);
    log_warn(reg_log(s->reg), "session %s: the event cut short by emad's crash (seq %" PRIu64
             ") was not sent again before %s: the shadow keeps part of it (interrupted)",
             s->name, pending, why);
    shadow_sync(s);
}

/* Where the records go: after the shadow, one per chunk. */
static void redo_layout(struct session *s)
{
    s->redo_off = (s->shadow_bytes + 63) & ~(uint64_t)63;
    s->redo_bytes = s->redo_off - s->shadow_bytes + s->plan.nchunks * sizeof(struct redo_rec);
}

/* The shadow object's size: the shadow and the records. */
static uint64_t shadow_object_bytes(const struct session *s)
{
    return s->shadow_bytes + s->redo_bytes;
}

/* Call fn for each block of chunk c, in order, with its position in the
 * chunk (elements), its tensor and its first element; stop at a non-zero
 * return and pass it on. The blocks are the same on every run: the plan
 * and REDO_BLOCK_ELEMS fix them. */
static int for_each_block(const struct session *s, size_t c,
                          int (*fn)(void *arg, uint64_t pos, const struct tensor *t,
                                    uint64_t start, uint64_t n),
                          void *arg)
{
    uint64_t pos = 0;

    for (size_t i = s->plan.first[c]; i < s->plan.first[c + 1]; i++) {
        const struct piece *p = &s->plan.pieces[i];
        for (uint64_t off = 0; off < p->count; off += REDO_BLOCK_ELEMS) {
            uint64_t n = p->count - off < REDO_BLOCK_ELEMS ? p->count - off : REDO_BLOCK_ELEMS;
            int rc = fn(arg, pos, &s->tensors[p->tensor], p->start + off, n);
            if (rc != 0)
                return rc;
            pos += n;
        }
    }
    return 0;
}

struct logged {
    struct op *op;
    struct redo_rec *rec;
    uint64_t from;
    bool init, update;
};

static int logged_block(void *arg, uint64_t pos, const struct tensor *t, uint64_t start,
                        uint64_t n)
{
    struct logged *l = arg;
    struct session *s = l->op->s;
    const struct kernel_ops *k = s->reg->kops;
    void *sh, *pa;
    int rc = 0;

    if (pos + n <= l->from) /* written for good before a crash */
        return 0;
    sh = shadow_ptr(s, t, start);
    pa = param_ptr(s, t, start);
    if (l->init) {
        /* The start (rare): save, then write. */
        memcpy(l->rec->undo, sh, n * dtype_size(t->shadow_dtype));
        l->rec->undo_count = n;
        __atomic_store_n(&l->rec->undo_at, pos, __ATOMIC_RELEASE);
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        rc = kernel_shadow_init(k, t->dtype, sh, pa, n);
        if (l->update && rc == 0)
            rc = kernel_update(k, t->dtype, sh, pa, n, s->cfg.smoothing);
    } else {
        /* The update: each old value goes to undo as the kernel reads it,
         * just before it writes the new one (one pass over the shadow). The
         * rest of undo holds UNDO_UNSET until the kernel gets there, so a
         * crash halfway leaves old values exactly where the shadow changed.
         * Stores retire in program order and a killed process's retired
         * stores all land: the release stores and the compiler barriers
         * keep that order, without a fence. */
        memset(l->rec->undo, UNDO_UNSET, n * dtype_size(t->shadow_dtype));
        l->rec->undo_count = n;
        __atomic_store_n(&l->rec->undo_at, pos, __ATOMIC_RELEASE);
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        rc = kernel_update_save(k, t->dtype, sh, pa, n, s->cfg.smoothing, l->rec->undo);
    }
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&l->rec->done_to, pos + n, __ATOMIC_RELEASE);
    return rc;
}

/* Leave a guard entered on (segment, shadow): -EFAULT if either faulted,
 * and a faulted shadow marks the session broken. Else rc. */
static int guard_leave(struct session *s, struct shm_guard *g, int rc)
{
    if (shm_guard_leave(g) == 0)
        return rc;
    if (g->faulted & 2)
        __atomic_store_n(&s->shadow_broken, true, __ATOMIC_RELEASE);
    return -EFAULT;
}

static int chunk_tensors(void *arg, size_t index)
{
    struct op *op = arg;
    struct session *s = op->s;
    const struct kernel_ops *k = s->reg->kops;
    bool init = op->kind == OP_INIT || op->action == EMA_ACTION_START ||
                op->action == EMA_ACTION_START_UPDATE;
    bool update = op->action == EMA_ACTION_UPDATE || op->action == EMA_ACTION_START_UPDATE;
    struct shm_guard g;
    int rc = 0;

    shm_guard_enter2(&g, &s->seg, &s->shadow);
    if (op->logged && op->phase == PH_TENSORS) {
        struct logged l = {op, redo_rec(s, index), 0, init, update};
        l.from = l.rec->done_to;
        rc = for_each_block(s, index, logged_block, &l);
        return guard_leave(s, &g, rc);
    }
    for (size_t i = s->plan.first[index]; i < s->plan.first[index + 1] && rc == 0; i++) {
        const struct piece *p = &s->plan.pieces[i];
        const struct tensor *t = &s->tensors[p->tensor];
        void *sh = shadow_ptr(s, t, p->start);
        void *pa = param_ptr(s, t, p->start);
        if (op->phase == PH_CAST) {
            rc = kernel_swap_in(k, t->dtype, pa, sh, p->count);
            continue;
        }
        if (init)
            rc = kernel_shadow_init(k, t->dtype, sh, pa, p->count);
        if (update && rc == 0)
            rc = kernel_update(k, t->dtype, sh, pa, p->count, s->cfg.smoothing);
    }
    return guard_leave(s, &g, rc);
}

static int journal_store(struct session *s, char *err, size_t errlen);
static void journal_remove(struct session *s);

/* Register's work: the journal (chunk 0, beside the first tensor chunks:
 * for a million tensors it takes as long as they do) and the shadow's
 * initialisation. */
static int chunk_init(void *arg, size_t index)
{
    struct op *op = arg;

    if (index == 0) {
        op->rc = journal_store(op->s, op->err, sizeof(op->err));
        return 0;
    }
    return chunk_tensors(arg, index - 1);
}

static int chunk_copy(void *arg, size_t index)
{
    struct op *op = arg;
    const struct seg_geometry *geo = &op->s->geo;
    char *params = (char *)op->s->seg.base + geo->params_offset;
    char *stash = (char *)op->s->seg.base + geo->stash_offset;
    uint64_t off = (uint64_t)index * COPY_CHUNK_BYTES;
    uint64_t n = geo->params_bytes - off < COPY_CHUNK_BYTES ? geo->params_bytes - off
                                                            : COPY_CHUNK_BYTES;

    struct shm_guard g;

    shm_guard_enter(&g, &op->s->seg);
    if (op->phase == PH_STASH)
        kernel_stash_copy(stash + off, params + off, n);
    else
        kernel_stash_restore(params + off, stash + off, n);
    return shm_guard_leave(&g);
}

static int chunk_save(void *arg, size_t index)
{
    struct op *op = arg;
    struct session *s = op->s;
    const struct emad_opts *opts = s->reg->ctx->opts;
    /* Every uid's, root's too, as the other per-uid limits: no request deletes a state file, and
     * the filesystem they fill holds the journals (live/) and the sessions a stop keeps
     * (sessions/) too; those are emad's own and saved outside users/, under no quota. */
    const struct store_quota quota = {opts->max_state_files_per_uid,
                                      opts->max_state_bytes_per_uid};
    (void)index;
    /* Into the directory of the uid that asks (root's own for root): no name a user gives can
     * reach another user's file. */
    op->rc = store_save_user(opts->state_dir, op->peer->uid, op->file, &quota, op->meta.data,
                             op->meta.size, shadow_data(s), shadow_data_bytes(s), op->path,
                             sizeof(op->path), &op->bytes, op->err, sizeof(op->err));
    return 0;
}

/* Check that a state file's tensor table is the session's. */
static int check_loaded_table(const struct session *s, const struct msg_saved_state *m, char *err,
                              size_t errlen)
{
    if (m->ntensors != s->ntensors) {
        snprintf(err, errlen, "the file has %zu tensors, the session %zu", m->ntensors,
                 s->ntensors);
        return -EINVAL;
    }
    for (size_t i = 0; i < s->ntensors; i++) {
        const struct tensor *t = &s->tensors[i];
        if (!msg_str_eq(m->tensors[i].name, t->name) ||
            !msg_str_eq(m->tensors[i].dtype, dtype_name(t->dtype)) ||
            m->tensors[i].numel != t->numel) {
            snprintf(err, errlen, "tensor %zu differs: the file has \"%.*s\" %.*s x %" PRIu64
                     ", the session \"%s\" %s x %" PRIu64, i, (int)m->tensors[i].name.len,
                     m->tensors[i].name.ptr, (int)m->tensors[i].dtype.len,
                     m->tensors[i].dtype.ptr, m->tensors[i].numel, t->name,
                     dtype_name(t->dtype), t->numel);
            return -EINVAL;
        }
    }
    if (m->shadow_bytes != s->shadow_bytes) {
        snprintf(err, errlen, "the file's shadow is %" PRIu64 " bytes, the session's %" PRIu64,
                 m->shadow_bytes, s->shadow_bytes);
        return -EINVAL;
    }
    return 0;
}

static int chunk_load(void *arg, size_t index)
{
    struct op *op = arg;
    struct session *s = op->s;
    struct store_file f;
    char why[256];
    size_t off = 0;
    (void)index;

    op->rc = store_load_user(s->reg->ctx->opts->state_dir, op->peer->uid, op->file, &f,
                             op->path, sizeof(op->path), op->err, sizeof(op->err));
    if (op->rc < 0)
        return 0;
    op->bytes = f.map_len;
    msgpack_unpacked_init(&op->unpacked);
    /* The metadata must outlive the mapping: unpack from a copy. */
    msgpack_sbuffer_write(&op->meta, f.meta, f.meta_len);
    if (msgpack_unpack_next(&op->unpacked, op->meta.data, op->meta.size, &off) !=
            MSGPACK_UNPACK_SUCCESS ||
        msg_decode(&msg_saved_state_desc, &op->unpacked.data, &op->loaded, why, sizeof(why)) <
            0) {
        msgpack_unpacked_destroy(&op->unpacked);
        op->rc = -EBADMSG;
        snprintf(op->err, sizeof(op->err), "load: %.400s: metadata is not a state file's",
                 op->path);
        goto out;
    }
    if (msg_saved_state_expand(&op->loaded, why, sizeof(why)) < 0) {
        msg_free(&msg_saved_state_desc, &op->loaded);
        msgpack_unpacked_destroy(&op->unpacked);
        op->rc = -EBADMSG;
        snprintf(op->err, sizeof(op->err), "load: %.400s: metadata is not a state file's",
                 op->path);
        goto out;
    }
    op->has_loaded = true;
    /* Whose the file is, before anything else of it is shown or used: a file saved by an older
     * emad into the shared directory may be another user's, and so may one an administrator
     * moved. A file loads only into a session of the uid that saved it. */
    if (!op->loaded.has_uid || op->loaded.uid != (uint64_t)s->uid) {
        op->rc = -EPERM;
        snprintf(op->err, sizeof(op->err), "load: %.400s was not saved from a session of "
                 "yours: it is not loaded", op->path);
        goto out;
    }
    if (f.data_len != shadow_data_bytes(s))
        snprintf(why, sizeof(why), "its data is %" PRIu64 " bytes, the shadow %" PRIu64,
                 f.data_len, shadow_data_bytes(s));
    if (f.data_len != shadow_data_bytes(s) ||
        check_loaded_table(s, &op->loaded, why, sizeof(why)) < 0) {
        op->rc = -EINVAL;
        snprintf(op->err, sizeof(op->err), "load: %.150s does not match session %s: %.180s",
                 op->path, s->name, why);
        goto out;
    }
    memcpy(shadow_data(s), f.data, shadow_data_bytes(s));
out:
    store_file_close(&f);
    return 0;
}

/* Save and load under the shadow's guard: where the shadow is given to
 * its trainer (no ACLs), the trainer can resize it under emad. */
static int chunk_file(void *arg, size_t index)
{
    static const struct shm_map none = {NULL, 0};
    struct op *op = arg;
    struct shm_guard g;
    int rc;

    shm_guard_enter2(&g, &none, &op->s->shadow);
    rc = op->kind == OP_SAVE ? chunk_save(arg, index) : chunk_load(arg, index);
    return guard_leave(op->s, &g, rc);
}

/* ---- operations (loop thread) ---- */

/* The header of the trainer's segment, read or written on the loop thread
 * under the SIGBUS guard: -EFAULT if the trainer shrank the object. */
static int seg_state_get(struct session *s, uint32_t *state)
{
    struct shm_guard g;

    shm_guard_enter(&g, &s->seg);
    *state = seg_swap_state_load(s->seg.base);
    return shm_guard_leave(&g);
}

static int seg_state_set(struct session *s, uint32_t state, bool bump)
{
    struct shm_guard g;

    shm_guard_enter(&g, &s->seg);
    seg_swap_state_store(s->seg.base, state);
    if (bump)
        seg_swap_generation_bump(s->seg.base);
    return shm_guard_leave(&g);
}

/* The trainer's segment faulted under us (it shrank): that session alone
 * fails; the segment is dropped and the session detached, shadow kept. */
static void segment_broken(struct op *op)
{
    struct session *s = op->s;

    log_error(reg_log(s->reg), "session %s: segment %s shrank or vanished while emad used it "
              "(SIGBUS); session detached", s->name, s->shm_name);
    peer_fail(op->peer, op->msgid, MSG_E_SHM,
                "session %s: segment %s shrank or vanished while emad was using it (SIGBUS): "
                "the operation did not complete and the shadow may hold part of it; the "
                "session is detached: register again with resume and a valid segment",
                s->name, s->shm_name);
    shm_unmap(&s->seg);
    s->owner = NULL;
    shadow_sync(s);
    op_finish(op);
}

/* The shadow faulted under us: someone resized it (possible only where it
 * had to be given to its trainer, or the trainer is emad's own uid). Its
 * contents are lost: that session alone fails, and is removed. */
static void shadow_failed(struct op *op)
{
    struct session *s = op->s;

    log_error(reg_log(s->reg), "session %s: shadow %s was resized or removed while emad used "
              "it (SIGBUS); session removed", s->name, s->shadow_name);
    peer_fail(op->peer, op->msgid, MSG_E_SHM,
                "session %s: its shadow %s was resized or removed while emad was using it "
                "(SIGBUS): the EMA weights are lost and the session is removed; register again",
                s->name, s->shadow_name);
    if (!s->removed) {
        journal_remove(s);
        unlink_session(s->reg, s);
    }
    op_finish(op);
}

static size_t copy_chunks(const struct session *s)
{
    return (s->geo.params_bytes + COPY_CHUNK_BYTES - 1) / COPY_CHUNK_BYTES;
}

/* Apply the state change of a completed action, and record it in the
 * shadow's header before anyone is told: a reply is a promise that a crash
 * of emad from then on keeps it. */
static void commit(struct op *op)
{
    struct session *s = op->s;

    ema_commit(&s->st, op->action, op->has_clock ? &op->clock : NULL);
    if (op->resume_from != NULL) {
        /* The replay is complete: the event is applied once, exactly. */
        s->redo_pending = false;
        if (s->redo_clears)
            s->interrupted = false;
        op->resume_from = NULL;
        free(s->redo_from);
        s->redo_from = NULL;
    }
    if (op->has_seq) {
        /* Written in place: the header is where the record must survive. */
        struct seq_record *rec = &shadow_hdr(s)->recent[op->seq % SEQ_RECORDS];
        struct shm_guard g;
        shadow_enter(s, &g);
        *rec = (struct seq_record){.seq = op->seq, .updates = s->st.updates,
                                   .action = (uint8_t)op->action, .active = s->st.active,
                                   .started = s->st.started};
        shadow_leave(s, &g);
        if (op->seq > s->last_seq)
            s->last_seq = op->seq;
    }
    shadow_sync(s);
}

static bool is_swap(enum ema_action a)
{
    return a == EMA_ACTION_SWAP_IN || a == EMA_ACTION_SWAP_OUT;
}

/*
 * A request seq at or below the last one applied is a client sending again
 * what it sent before losing its connection. Data work that cannot be
 * repeated (an update) is answered from the record. A swap is not: its
 * request names the weights wanted in the params, and the client may have
 * put the training weights back since, so it runs again against the state
 * as it is now. true when op was answered here.
 */
static bool replayed(struct op *op)
{
    struct session *s = op->s;
    struct seq_record copy;
    const struct seq_record *rec = &copy;
    struct shm_guard g;

    if (!op->has_seq || op->seq > s->last_seq)
        return false;
    shadow_enter(s, &g);
    copy = shadow_hdr(s)->recent[op->seq % SEQ_RECORDS];
    shadow_leave(s, &g);
    /* A shadow its trainer could write (no ACLs) may hold any action: one
     * out of range is a record emad cannot answer from. */
    if (rec->seq != op->seq || rec->action >= EMA_ACTION_COUNT) {
        peer_fail(op->peer, op->msgid, MSG_E_STATE,
                    "%s: request seq %" PRIu64 " is not newer than the last applied (%" PRIu64
                    ") and emad no longer remembers its outcome (it keeps the last %u)",
                    ema_event_name(op->ev), op->seq, s->last_seq, SEQ_RECORDS);
        op_finish(op);
        return true;
    }
    if (is_swap((enum ema_action)rec->action))
        return false;
    log_info(reg_log(s->reg), "session %s: request seq %" PRIu64 " sent again; answered from "
             "the record (%s), not applied twice", s->name, op->seq,
             ema_action_name((enum ema_action)rec->action));
    reply_recorded(op, rec);
    op_finish(op);
    return true;
}

static void run_event(struct op *op)
{
    struct session *s = op->s;
    uint32_t state;

    if (replayed(op))
        return;
    if (ema_decide(&s->cfg, &s->st, op->ev, op->has_clock ? &op->clock : NULL, &op->action) < 0) {
        peer_fail(op->peer, op->msgid, MSG_E_INTERNAL, "event: the state machine refused it");
        op_finish(op);
        return;
    }
    switch (op->action) {
    case EMA_ACTION_NONE:
        commit(op);
        reply_action(op);
        op_finish(op);
        return;
    case EMA_ACTION_START:
    case EMA_ACTION_UPDATE:
    case EMA_ACTION_START_UPDATE:
        op->logged = s->reg->ctx->opts->crash_exact;
        struct shadow_header h;
        struct shm_guard g;
        shadow_enter(s, &g);
        h = *shadow_hdr(s);
        shadow_leave(s, &g);
        if (op->logged && s->redo_pending && op->has_seq && op->seq == h.pending_seq &&
            (uint32_t)op->action == h.pending_action && op->clock.batch == h.pending_batch &&
            op->clock.epoch == h.pending_epoch) {
            op->resume_from = s->redo_from; /* the replay: only what is left */
            log_info(reg_log(s->reg), "session %s: seq %" PRIu64 " sent again after a crash: "
                     "writing the elements the cut-short run had not", s->name, op->seq);
        } else {
            redo_cancel(s, "another event");
        }
        op->t0 = uv_hrtime();
        if (op->logged)
            redo_begin(op);
        else
            shadow_begin(s);
        submit(op, PH_TENSORS, chunk_tensors, s->plan.nchunks);
        return;
    case EMA_ACTION_SWAP_IN:
        redo_cancel(s, "a swap");
        if (seg_state_get(s, &state) < 0) {
            segment_broken(op);
            return;
        }
        if (state != SEG_TRAIN) {
            peer_fail(op->peer, op->msgid, MSG_E_STATE,
                        "%s: the segment's swap_state is %u, not TRAIN: restore the training "
                        "weights from the stash first", ema_event_name(op->ev), state);
            op_finish(op);
            return;
        }
        submit(op, PH_STASH, chunk_copy, copy_chunks(s));
        return;
    case EMA_ACTION_SWAP_OUT:
        submit(op, PH_RESTORE, chunk_copy, copy_chunks(s));
        return;
    default:
        peer_fail(op->peer, op->msgid, MSG_E_INTERNAL, "event: unknown action");
        op_finish(op);
    }
}

/*
 * The session's metadata as a state file or journal holds it: its table in
 * columns (a million tensors encode in a third of the time a list of maps
 * takes), its config and state. 0, or -ENOMEM (sb is then empty).
 */
static int encode_meta(struct session *s, msgpack_sbuffer *sb)
{
    struct msg_saved_state m;
    msgpack_packer pk;
    int rc;

    msgpack_sbuffer_init(sb);
    memset(&m, 0, sizeof(m));
    if ((rc = msg_table_init(&m.table, s->ntensors)) < 0)
        return rc;
    m.has_table = true;
    m.format = 1;
    m.session = msg_str_c(s->name);
    for (size_t i = 0; i < s->ntensors; i++)
        msg_table_set(&m.table, i, s->tensors[i].name, dtype_name(s->tensors[i].dtype),
                      s->tensors[i].offset, s->tensors[i].numel);
    if (s->cfg.has_half_life) {
        m.config.has_half_life = true;
        m.config.half_life = msg_str_c(s->half_life);
    } else {
        m.config.has_smoothing = true;
        m.config.smoothing = s->cfg.smoothing;
    }
    m.config.has_update_interval = true;
    m.config.update_interval = msg_str_c(s->update_interval);
    m.config.has_ema_start = true;
    m.config.ema_start = msg_str_c(s->ema_start);
    m.started = s->st.started;
    m.active = s->st.active;
    m.updates = s->st.updates;
    m.swaps = s->st.swaps;
    m.has_last_time = s->st.has_last_time;
    m.last_time.batch = s->st.last_time.batch;
    m.last_time.epoch = s->st.last_time.epoch;
    m.last_time.has_duration = s->st.last_time.has_duration;
    m.last_time.duration = s->st.last_time.duration;
    m.shadow_bytes = s->shadow_bytes;
    m.has_uid = true;
    m.uid = s->uid;
    m.has_shadow_shm = true;
    m.shadow_shm = msg_str_c(s->shadow_name);
    m.has_seq = true;
    m.seq = s->last_seq;
    /* Room for the usual table at once: growing it by doubling copies a
     * million-tensor journal a dozen times. */
    sb->alloc = 4096 + 32 * s->ntensors;
    if ((sb->data = malloc(sb->alloc)) == NULL)
        sb->alloc = 0;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msg_encode(&pk, &msg_saved_state_desc, &m);
    if (sb->data == NULL)
        rc = -ENOMEM;
    msg_table_release(&m.table);
    return rc;
}

static void journal_remove(struct session *s);

static void run_close(struct op *op, bool drop)
{
    struct session *s = op->s;
    struct registry *r = s->reg;
    struct msg_empty e = {0};

    if (!drop && op->keep) {
        s->owner = NULL;
        log_info(reg_log(r), "session %s: closed with keep; detached, shadow kept", s->name);
    } else {
        log_info(reg_log(r), "session %s: %s; shadow %s removed", s->name,
                 drop ? "dropped" : "closed", s->shadow_name);
        journal_remove(s);
        unlink_session(r, s);
        /* Once a reply says a session is gone, its shadow is gone: unlink
         * now (the mapping stays until the session is freed). */
        if (s->shadow_name[0] != '\0')
            shm_unlink(s->shadow_name);
        s->shadow_name[0] = '\0';
    }
    peer_reply(op->peer, op->msgid, &msg_empty_desc, &e);
    op_finish(op);
}

static void run_attach(struct op *op)
{
    struct session *s = op->s;
    uint32_t state = SEG_TRAIN;

    shm_unmap(&s->seg);
    s->seg = op->new_seg;
    s->geo = op->new_geo;
    op->new_seg.base = NULL;
    op->new_seg.len = 0;
    snprintf(s->shm_name, sizeof(s->shm_name), "%s", op->new_shm);
    s->params_bytes = s->geo.params_bytes;
    if (seg_state_get(s, &state) < 0) {
        segment_broken(op);
        return;
    }
    /* The trainer restored its training weights itself if it crashed while
     * the EMA weights were in: believe the segment. */
    if (s->st.active && state == SEG_TRAIN) {
        s->st.active = false;
        log_info(reg_log(s->reg), "session %s: the new segment holds the training weights; "
                 "EMA weights no longer active", s->name);
    }
    shadow_sync(s);
    reply_register(op);
    op_finish(op);
}

static void op_run(struct op *op)
{
    struct session *s = op->s;

    if (shadow_is_broken(s) && op->kind != OP_CLOSE && op->kind != OP_DROP) {
        shadow_failed(op);
        return;
    }
    switch (op->kind) {
    case OP_INIT:
        op->t0 = uv_hrtime();
        shadow_begin(s);
        submit(op, PH_TENSORS, chunk_init, s->plan.nchunks + 1);
        return;
    case OP_ATTACH:
        run_attach(op);
        return;
    case OP_EVENT:
        if (s->seg.base == NULL) {
            peer_fail(op->peer, op->msgid, MSG_E_STATE,
                        "session %s is detached: register with resume first", s->name);
            op_finish(op);
            return;
        }
        run_event(op);
        return;
    case OP_SAVE:
        redo_cancel(s, "a save");
        if (encode_meta(s, &op->meta) < 0) {
            peer_fail(op->peer, op->msgid, MSG_E_INTERNAL, "save: out of memory");
            op_finish(op);
            return;
        }
        submit(op, PH_FILE, chunk_file, 1);
        return;
    case OP_LOAD:
        /* Queued behind a close or drop: the session is gone now. */
        if (s->removed) {
            peer_fail(op->peer, op->msgid, MSG_E_NOSESSION, "load: session %s is being closed",
                        s->name);
            op_finish(op);
            return;
        }
        if (s->st.active) {
            peer_fail(op->peer, op->msgid, MSG_E_STATE,
                        "load: session %s has its EMA weights swapped in; swap out first",
                        s->name);
            op_finish(op);
            return;
        }
        redo_cancel(s, "a load");
        shadow_begin(s);
        submit(op, PH_FILE, chunk_file, 1);
        return;
    case OP_CLOSE:
        run_close(op, false);
        return;
    case OP_DROP:
        run_close(op, true);
        return;
    }
}

static void apply_loaded(struct session *s, const struct msg_saved_state *m)
{
    struct ema_config_in in;
    struct ema_config cfg;
    char why[256];

    memset(&in, 0, sizeof(in));
    if (m->config.has_half_life) {
        in.half_life = m->config.half_life.ptr;
        in.half_life_len = m->config.half_life.len;
    }
    in.has_smoothing = m->config.has_smoothing;
    in.smoothing = m->config.smoothing;
    if (m->config.has_update_interval) {
        in.update_interval = m->config.update_interval.ptr;
        in.update_interval_len = m->config.update_interval.len;
    }
    if (m->config.has_ema_start) {
        in.ema_start = m->config.ema_start.ptr;
        in.ema_start_len = m->config.ema_start.len;
    }
    if (ema_config_init(&cfg, &in, why, sizeof(why)) == 0) {
        s->cfg = cfg;
        if (cfg.has_half_life)
            ema_time_format(&cfg.half_life, s->half_life, sizeof(s->half_life));
        else
            s->half_life[0] = '\0';
        ema_time_format(&cfg.update_interval, s->update_interval, sizeof(s->update_interval));
        ema_time_format(&cfg.ema_start, s->ema_start, sizeof(s->ema_start));
    }
    s->st.started = m->started;
    /* Loading never swaps: the params keep the training weights. */
    s->st.active = false;
    s->st.updates = m->updates;
    s->st.swaps = m->swaps;
    s->st.has_last_time = m->has_last_time;
    s->st.last_time.batch = m->last_time.batch;
    s->st.last_time.epoch = m->last_time.epoch;
    s->st.last_time.has_duration = m->last_time.has_duration;
    s->st.last_time.duration = m->last_time.duration;
}

static int journal_store(struct session *s, char *err, size_t errlen);

static int chunk_journal(void *arg, size_t index)
{
    struct op *op = arg;

    (void)index;
    op->rc = journal_store(op->s, op->err, sizeof(op->err));
    return 0;
}

static void reply_file(struct op *op)
{
    struct msg_file_reply rep;

    log_info(reg_log(op->s->reg), "session %s: %s %s (%" PRIu64 " bytes)", op->s->name,
             op->kind == OP_SAVE ? "saved to" : "loaded from", op->path, op->bytes);
    rep.path = msg_str_c(op->path);
    rep.bytes = op->bytes;
    peer_reply(op->peer, op->msgid, &msg_file_reply_desc, &rep);
}

/* A save or load is done: the reply, or for a load the journal first.
 * true when more work was submitted (the op goes on). */
static bool finish_file(struct op *op)
{
    const char *what = op->kind == OP_SAVE ? "save" : "load";

    if (op->rc < 0) {
        /* PERM: a state file of another uid, or a state directory others may write. LIMIT:
         * over the uid's quota of state files (store_quota_check). */
        const char *code = op->rc == -EINVAL   ? MSG_E_STATE
                           : op->rc == -EPERM  ? MSG_E_PERM
                           : op->rc == -EDQUOT ? MSG_E_LIMIT
                                               : MSG_E_IO;
        log_warn(reg_log(op->s->reg), "session %s: %s failed: %s", op->s->name, what, op->err);
        peer_fail(op->peer, op->msgid, code, "%s", op->err);
        return false;
    }
    if (op->kind == OP_LOAD) {
        apply_loaded(op->s, &op->loaded);
        op->s->interrupted = false; /* the shadow is the file's now */
        shadow_sync(op->s);
        submit(op, PH_JOURNAL, chunk_journal, 1);
        return true;
    }
    reply_file(op);
    return false;
}

static void op_done(struct pool_job *job)
{
    struct op *op = job->arg;
    struct session *s = op->s;

    /* First: a shadow that faulted may fault again anywhere below where it
     * did, so nothing reads it any more (not even its redo records). */
    if (job->status == -EFAULT && shadow_is_broken(s)) {
        shadow_failed(op);
        return;
    }
    if (job->status != 0 && op->logged && op->phase == PH_TENSORS) {
        /* Cut short: the records tell how far it got, for its replay. */
        bool clears = s->redo_pending ? s->redo_clears : !s->interrupted;
        op->resume_from = NULL; /* redo_recover replaces redo_from */
        struct shm_guard g;
        shadow_enter(s, &g);
        int recovered = redo_recover(s);
        shadow_leave(s, &g);
        if (recovered == 0)
            s->redo_clears = clears;
        else
            redo_cancel(s, "the event failed");
        s->interrupted = true;
        shadow_sync(s);
    }
    if (job->status == -EFAULT) {
        segment_broken(op);
        return;
    }
    if (job->status != 0) {
        log_error(reg_log(s->reg), "session %s: %s failed in a worker: %s", s->name,
                  ema_action_name(op->action), strerror(-job->status));
        peer_fail(op->peer, op->msgid, MSG_E_INTERNAL, "session %s: the work failed: %s",
                    s->name, strerror(-job->status));
        op_finish(op);
        return;
    }
    switch (op->phase) {
    case PH_TENSORS:
        if (op->kind == OP_INIT) {
            s->ready = true;
            shadow_sync(s);
            if (op->rc < 0)
                journal_failed(s, op->err);
            reply_register(op);
            break;
        }
        s->last_update_seconds = (double)(uv_hrtime() - op->t0) / 1e9;
        commit(op);
        reply_action(op);
        break;
    case PH_STASH:
        /* The stash is complete: from here a crash leaves a restorable copy. */
        if (seg_state_set(s, SEG_STASHED, false) < 0) {
            segment_broken(op);
            return;
        }
        submit(op, PH_CAST, chunk_tensors, s->plan.nchunks);
        return;
    case PH_CAST:
    case PH_RESTORE:
        if (seg_state_set(s, op->phase == PH_CAST ? SEG_EMA : SEG_TRAIN, true) < 0) {
            segment_broken(op);
            return;
        }
        commit(op);
        reply_action(op);
        break;
    case PH_FILE:
        if (finish_file(op))
            return;
        break;
    case PH_JOURNAL:
        if (op->rc < 0)
            journal_failed(s, op->err);
        reply_file(op);
        break;
    case PH_NONE:
        break;
    }
    op_finish(op);
}

/* ---- request handlers ---- */

/* Find a session the peer may use; replies and returns NULL otherwise. */
static struct session *lookup(struct registry *r, struct peer *c, uint32_t msgid,
                              const char *method, struct msg_str name, bool owner_only)
{
    struct session *s = NULL;
    int shown = (int)(name.len > SESSION_NAME_MAX ? SESSION_NAME_MAX : name.len);

    if (resolve(r, c->uid, name.ptr, name.len, &s) == -EEXIST) {
        peer_fail(c, msgid, MSG_E_BADARG, "%s: sessions of several users are named \"%.*s\": "
                    "name one as <uid>:<name>", method, shown, name.ptr);
        return NULL;
    }
    if (s == NULL || !visible(s, c->uid)) {
        peer_fail(c, msgid, MSG_E_NOSESSION, "%s: no session named \"%.*s\"", method, shown,
                    name.ptr);
        return NULL;
    }
    if (owner_only && s->owner != c) {
        if (s->owner == NULL)
            peer_fail(c, msgid, MSG_E_PERM,
                        "%s: session %s is detached; register with resume to own it", method,
                        s->name);
        else
            peer_fail(c, msgid, MSG_E_PERM,
                        "%s: session %s is owned by another connection (pid %ld)", method,
                        s->name, (long)s->owner_pid);
        return NULL;
    }
    return s;
}

static int build_config(struct session *s, const struct msg_register *req, char *err,
                        size_t errlen)
{
    struct ema_config_in in;
    const struct msg_config *c = &req->config;

    memset(&in, 0, sizeof(in));
    if (req->has_config) {
        if (c->has_half_life) {
            in.half_life = c->half_life.ptr;
            in.half_life_len = c->half_life.len;
        }
        in.has_smoothing = c->has_smoothing;
        in.smoothing = c->smoothing;
        if (c->has_update_interval) {
            in.update_interval = c->update_interval.ptr;
            in.update_interval_len = c->update_interval.len;
        }
        if (c->has_ema_start) {
            in.ema_start = c->ema_start.ptr;
            in.ema_start_len = c->ema_start.len;
        }
    }
    if (ema_config_init(&s->cfg, &in, err, errlen) < 0)
        return -EINVAL;
    if (s->cfg.has_half_life)
        ema_time_format(&s->cfg.half_life, s->half_life, sizeof(s->half_life));
    ema_time_format(&s->cfg.update_interval, s->update_interval, sizeof(s->update_interval));
    ema_time_format(&s->cfg.ema_start, s->ema_start, sizeof(s->ema_start));
    return 0;
}

/* Validate the tensor table and lay out the shadow. Returns 0, or -EINVAL
 * (BADARG) / -E2BIG (LIMIT) with err. */
static int build_tensors(struct session *s, const struct msg_register *req, uint64_t max_tensors,
                         char *err, size_t errlen)
{
    uint64_t at = SHADOW_HEADER_BYTES;

    size_t count = msg_register_count(req);
    if (count > max_tensors) {
        snprintf(err, errlen, "register: %zu tensors exceed the limit of %" PRIu64
                 " per session (--max-tensors)", count, max_tensors);
        return -E2BIG;
    }
    size_t name_bytes = 1;
    for (size_t i = 0; i < count; i++)
        name_bytes += msg_register_tensor(req, i).name.len + 1;
    s->tensors = calloc(count ? count : 1, sizeof(*s->tensors));
    s->names = malloc(name_bytes);
    if (s->tensors == NULL || s->names == NULL)
        return -ENOMEM;
    char *at_name = s->names;
    for (size_t i = 0; i < count; i++) {
        const struct msg_tensor row = msg_register_tensor(req, i), *mt = &row;
        struct tensor *t = &s->tensors[i];
        size_t esize;
        uint64_t bytes;
        if (!tensor_name_valid(mt->name.ptr, mt->name.len)) {
            snprintf(err, errlen, "register: tensors[%zu].name: must be 1 to %d bytes of UTF-8 "
                     "without NUL", i, TENSOR_NAME_MAX);
            return -EINVAL;
        }
        if (dtype_from_name(mt->dtype.ptr, mt->dtype.len, &t->dtype) < 0) {
            snprintf(err, errlen, "register: tensors[%zu].dtype: \"%.*s\" is not one of f32, f16, "
                     "bf16, f64, i64, i32, i16, i8, u8, bool", i,
                     (int)(mt->dtype.len > 16 ? 16 : mt->dtype.len), mt->dtype.ptr);
            return -EINVAL;
        }
        if (mt->has_shape) {
            uint64_t prod = 1;
            for (size_t k = 0; k < mt->nshape; k++)
                if (__builtin_mul_overflow(prod, mt->shape[k], &prod))
                    prod = UINT64_MAX;
            if (prod != mt->numel) {
                snprintf(err, errlen, "register: tensors[%zu].shape: its product is not numel "
                         "(%" PRIu64 ")", i, mt->numel);
                return -EINVAL;
            }
        }
        memcpy(at_name, mt->name.ptr, mt->name.len);
        at_name[mt->name.len] = '\0';
        t->name = at_name;
        at_name += mt->name.len + 1;
        s->ntensors = i + 1;
        t->numel = mt->numel;
        t->offset = mt->offset;
        t->shadow_dtype = dtype_shadow(t->dtype);
        esize = dtype_size(t->shadow_dtype);
        at = (at + SEG_TENSOR_ALIGN - 1) & ~(uint64_t)(SEG_TENSOR_ALIGN - 1);
        t->shadow_offset = at;
        if (__builtin_mul_overflow(mt->numel, (uint64_t)esize, &bytes) ||
            __builtin_mul_overflow(mt->numel, (uint64_t)dtype_size(t->dtype), &bytes) ||
            __builtin_add_overflow(at, mt->numel * esize, &at)) {
            snprintf(err, errlen, "register: tensors[%zu].numel: %" PRIu64 " is too large", i,
                     mt->numel);
            return -EINVAL;
        }
    }
    s->shadow_bytes = at;
    return 0;
}

/* Check the tensors against the mapped segment (SHM errors). */
static int check_segment(const struct session *s, const struct shm_map *seg,
                         const struct seg_geometry *geo, char *err, size_t errlen)
{
    struct shm_guard g;
    uint32_t state;
    struct seg_span *spans = malloc((s->ntensors ? s->ntensors : 1) * sizeof(*spans));
    const char **names = malloc((s->ntensors ? s->ntensors : 1) * sizeof(*names));
    char why[400];
    int rc;

    if (spans == NULL || names == NULL) {
        free(spans);
        free(names);
        return -ENOMEM;
    }
    for (size_t i = 0; i < s->ntensors; i++) {
        spans[i].offset = s->tensors[i].offset;
        spans[i].bytes = s->tensors[i].numel * dtype_size(s->tensors[i].dtype);
        names[i] = s->tensors[i].name;
    }
    rc = seg_spans_check(spans, names, s->ntensors, geo->params_bytes, why, sizeof(why));
    free(spans);
    free(names);
    if (rc < 0) {
        snprintf(err, errlen, "register: shm \"%.100s\": %s", s->shm_name, why);
        return rc;
    }
    shm_guard_enter(&g, seg);
    state = seg_swap_state_load(seg->base);
    if (shm_guard_leave(&g) < 0) {
        snprintf(err, errlen, "register: shm \"%s\" shrank while emad read it", s->shm_name);
        return -EINVAL;
    }
    if (state != SEG_TRAIN) {
        snprintf(err, errlen, "register: shm \"%s\": swap_state is %u: the params hold EMA "
                 "weights; restore the training weights from the stash first", s->shm_name,
                 state);
        return -EINVAL;
    }
    return 0;
}

static bool same_table(const struct session *a, const struct session *b)
{
    if (a->ntensors != b->ntensors)
        return false;
    for (size_t i = 0; i < a->ntensors; i++)
        if (strcmp(a->tensors[i].name, b->tensors[i].name) != 0 ||
            a->tensors[i].dtype != b->tensors[i].dtype ||
            a->tensors[i].numel != b->tensors[i].numel ||
            a->tensors[i].offset != b->tensors[i].offset)
            return false;
    return true;
}

static void resume(struct registry *r, struct peer *c, uint32_t msgid, struct session *old,
                   struct session *fresh, struct shm_map *seg, bool compact)
{
    struct op *op;

    if (!visible(old, c->uid) || (old->uid != c->uid && c->uid != 0)) {
        peer_fail(c, msgid, MSG_E_PERM, "register: session %s belongs to another user",
                    old->name);
        return;
    }
    if (old->owner != NULL) {
        peer_fail(c, msgid, MSG_E_EXISTS, "register: session %s is attached to pid %ld",
                    old->name, (long)old->owner_pid);
        return;
    }
    if (!same_table(old, fresh)) {
        peer_fail(c, msgid, MSG_E_BADARG,
                    "register: resume: the tensor table differs from session %s's (names, "
                    "dtypes, numel and offsets must be identical, in order)", old->name);
        return;
    }
    op = op_new(old, OP_ATTACH, c, msgid);
    if (op == NULL)
        return;
    op->compact = compact;
    op->new_seg = *seg;
    op->new_geo = fresh->geo;
    seg->base = NULL;
    seg->len = 0;
    snprintf(op->new_shm, sizeof(op->new_shm), "%s", fresh->shm_name);
    old->owner = c;
    old->owner_pid = c->pid;
    log_info(reg_log(r), "session %s: resumed by pid %ld", old->name, (long)c->pid);
    enqueue(op);
}

void session_register(struct registry *r, struct peer *c, uint32_t msgid,
                      const struct msg_register *req)
{
    const struct emad_opts *opts = r->ctx->opts;
    struct session *s, *old;
    struct shm_map seg = {NULL, 0};
    enum shm_share share;
    struct usage used;
    char err[600];
    int rc;

    if (!session_name_valid(req->session.ptr, req->session.len)) {
        peer_fail(c, msgid, MSG_E_BADARG, "register: session: must be 1 to %d characters of "
                    "[A-Za-z0-9._:/-]", SESSION_NAME_MAX);
        return;
    }
    old = find(r, c->uid, req->session.ptr, req->session.len);
    /* "<uid>:<name>" is how root names another user's session: a new session
     * called so would take root's requests (status, drop) meant for that
     * user's. Sessions kept from before keep their names. */
    if (old == NULL && session_name_qualified(req->session.ptr, req->session.len)) {
        peer_fail(c, msgid, MSG_E_BADARG, "register: session: \"%.*s\" has the form "
                    "<uid>:<name>, which names another user's session; choose a name that does "
                    "not start with digits and a colon", (int)req->session.len, req->session.ptr);
        return;
    }
    if ((old == NULL || !visible(old, c->uid)) && req->has_existing && req->existing) {
        peer_fail(c, msgid, MSG_E_NOSESSION, "register: no session named \"%.*s\" to resume "
                    "(existing was asked: none is created)", (int)req->session.len,
                    req->session.ptr);
        return;
    }
    /* A session whose close or drop is queued is gone to a newcomer: a
     * resume answered now would name a shadow about to be removed. */
    if (old != NULL && visible(old, c->uid) && old->closing) {
        peer_fail(c, msgid, (req->has_resume && req->resume) ? MSG_E_NOSESSION : MSG_E_EXISTS,
                    "register: session %s is being closed; register it anew once its close is "
                    "answered", old->name);
        return;
    }
    if (old != NULL && !(req->has_resume && req->resume)) {
        peer_fail(c, msgid, MSG_E_EXISTS, "register: session %s exists (pass resume to "
                    "re-attach to it)", old->name);
        return;
    }
    if (old == NULL && r->count >= opts->max_sessions) {
        peer_fail(c, msgid, MSG_E_LIMIT, "register: the daemon holds %u sessions, its limit "
                    "(--max-sessions)", r->count);
        return;
    }
    usage_of(r, c->uid, &used);
    if (old == NULL && used.sessions >= opts->max_sessions_per_uid) {
        peer_fail(c, msgid, MSG_E_LIMIT, "register: uid %ld holds %u sessions, its limit "
                    "(--max-sessions-per-uid); close or drop one first", (long)c->uid,
                    used.sessions);
        return;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        peer_fail(c, msgid, MSG_E_INTERNAL, "register: out of memory");
        return;
    }
    s->reg = r;
    memcpy(s->name, req->session.ptr, req->session.len);
    s->uid = c->uid;
    snprintf(s->qualified, sizeof(s->qualified), "%lu:%s", (unsigned long)s->uid, s->name);
    s->owner = c;
    s->owner_pid = c->pid;
    if (msg_str_copy(req->shm, s->shm_name, sizeof(s->shm_name)) < 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "register: shm: not a valid shared-memory name");
        goto err_free;
    }
    if ((rc = build_config(s, req, err, sizeof(err))) < 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "register: %s", err);
        goto err_free;
    }
    rc = build_tensors(s, req, opts->max_tensors, err, sizeof(err));
    if (rc < 0) {
        peer_fail(c, msgid, rc == -E2BIG ? MSG_E_LIMIT : rc == -ENOMEM ? MSG_E_INTERNAL
                                                                           : MSG_E_BADARG,
                    "%s", rc == -ENOMEM ? "register: out of memory" : err);
        goto err_free;
    }
    if (old == NULL && used.tensors + s->ntensors > opts->max_tensors_per_uid) {
        peer_fail(c, msgid, MSG_E_LIMIT, "register: %zu tensors would bring uid %ld to %" PRIu64
                    ", over its limit of %" PRIu64 " (--max-tensors-per-uid)", s->ntensors,
                    (long)c->uid, used.tensors + s->ntensors, opts->max_tensors_per_uid);
        goto err_free;
    }
    if ((rc = shm_segment_open(s->shm_name, c->uid, &seg, &s->geo, err, sizeof(err))) < 0) {
        peer_fail(c, msgid, MSG_E_SHM, "register: %s", err);
        goto err_free;
    }
    rc = check_segment(s, &seg, &s->geo, err, sizeof(err));
    if (rc < 0) {
        peer_fail(c, msgid, rc == -ENOMEM ? MSG_E_INTERNAL : MSG_E_SHM, "%s", err);
        goto err_unmap;
    }
    if (old != NULL) {
        resume(r, c, msgid, old, s, &seg, req->has_compact && req->compact);
        goto err_unmap;
    }
    s->seg = seg;
    seg.base = NULL;
    s->params_bytes = s->geo.params_bytes;
    if (plan_build(&s->plan, s->tensors, s->ntensors, CHUNK_ELEMS) < 0) {
        peer_fail(c, msgid, MSG_E_INTERNAL, "register: out of memory");
        goto err_free;
    }
    redo_layout(s);
    if (used.shadow_bytes + shadow_object_bytes(s) > opts->max_shadow_bytes_per_uid) {
        peer_fail(c, msgid, MSG_E_LIMIT, "register: a shadow of %" PRIu64 " bytes would bring "
                    "uid %ld to %" PRIu64 " bytes, over its limit of %" PRIu64
                    " (--max-shadow-bytes-per-uid)", shadow_object_bytes(s), (long)c->uid,
                    used.shadow_bytes + shadow_object_bytes(s), opts->max_shadow_bytes_per_uid);
        goto err_free;
    }
    if (shm_shadow_create(c->uid, shadow_object_bytes(s), s->shadow_name, sizeof(s->shadow_name),
                          &s->shadow, &share, err, sizeof(err)) < 0) {
        peer_fail(c, msgid, MSG_E_INTERNAL, "register: %s", err);
        goto err_free;
    }
    share_note(r, share);
    ema_state_init(&s->st);
    registry_insert(r, s);
    log_info(reg_log(r), "session %s: registered by pid %ld: %zu tensors, %" PRIu64
             " param bytes, shadow %s (%" PRIu64 " bytes)", s->name, (long)c->pid, s->ntensors,
             s->params_bytes, s->shadow_name, s->shadow_bytes);
    struct op *op = op_new(s, OP_INIT, c, msgid);
    if (op == NULL) {
        unlink_session(r, s);
        session_free(s);
        return;
    }
    op->compact = req->has_compact && req->compact;
    enqueue(op);
    return;

err_unmap:
    shm_unmap(&seg);
err_free:
    session_free(s);
}

void session_event(struct registry *r, struct peer *c, uint32_t msgid,
                   const struct msg_event *req)
{
    struct session *s;
    struct op *op;
    enum ema_event ev;
    char err[256];

    if (ema_event_from_name(req->event.ptr, req->event.len, &ev) < 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "event: event: \"%.*s\" is not one of init, "
                    "fit_start, batch_start, batch_end, epoch_end, eval_start, eval_end, "
                    "checkpoint", (int)(req->event.len > 32 ? 32 : req->event.len),
                    req->event.ptr);
        return;
    }
    struct ema_clock clock = {req->time.batch, req->time.epoch, req->time.duration,
                              req->time.has_duration};
    if (ema_clock_check(&clock, err, sizeof(err)) < 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "event: %s", err);
        return;
    }
    if (req->has_seq && req->seq == 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "event: seq: request numbers start at 1");
        return;
    }
    if ((s = lookup(r, c, msgid, "event", req->session, true)) == NULL)
        return;
    if ((op = op_new(s, OP_EVENT, c, msgid)) == NULL)
        return;
    op->ev = ev;
    op->has_clock = true;
    op->clock = clock;
    op->has_seq = req->has_seq;
    op->seq = req->seq;
    enqueue(op);
}

void session_swap(struct registry *r, struct peer *c, uint32_t msgid, const struct msg_swap *req)
{
    struct session *s;
    struct op *op;
    enum ema_event ev;

    if (ema_swap_from_name(req->to.ptr, req->to.len, &ev) < 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "swap: to: must be \"ema\" or \"train\"");
        return;
    }
    if (req->has_seq && req->seq == 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "swap: seq: request numbers start at 1");
        return;
    }
    if ((s = lookup(r, c, msgid, "swap", req->session, true)) == NULL)
        return;
    if ((op = op_new(s, OP_EVENT, c, msgid)) == NULL)
        return;
    op->ev = ev;
    op->has_seq = req->has_seq;
    op->seq = req->seq;
    enqueue(op);
}

static void queue_file(struct registry *r, struct peer *c, uint32_t msgid,
                       const struct msg_file *req, bool load)
{
    const char *method = load ? "load" : "save";
    struct session *s;
    struct op *op;

    if ((s = lookup(r, c, msgid, method, req->session, false)) == NULL)
        return;
    /* Loading replaces the shadow under its owner's feet: only the owner may,
     * or anyone the session is visible to once it is detached. */
    if (load && s->owner != NULL && s->owner != c) {
        peer_fail(c, msgid, MSG_E_PERM, "load: session %s is owned by another connection "
                    "(pid %ld)", s->name, (long)s->owner_pid);
        return;
    }
    if ((op = op_new(s, load ? OP_LOAD : OP_SAVE, c, msgid)) == NULL)
        return;
    if (req->has_name) {
        if (!store_name_valid(req->name.ptr, req->name.len)) {
            peer_fail(c, msgid, MSG_E_BADARG, "%s: name: must be 1 to 128 characters of "
                        "[A-Za-z0-9._%%-], not starting with '.'", method);
            op_free(op);
            return;
        }
        memcpy(op->file, req->name.ptr, req->name.len);
    } else if (store_default_name(s->name, strlen(s->name), op->file, sizeof(op->file)) < 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "%s: session %s needs an explicit file name",
                    method, s->name);
        op_free(op);
        return;
    }
    enqueue(op);
}

void session_save(struct registry *r, struct peer *c, uint32_t msgid, const struct msg_file *req)
{
    queue_file(r, c, msgid, req, false);
}

void session_load(struct registry *r, struct peer *c, uint32_t msgid, const struct msg_file *req)
{
    queue_file(r, c, msgid, req, true);
}

void session_close(struct registry *r, struct peer *c, uint32_t msgid, const struct msg_close *req)
{
    struct session *s;
    struct op *op;

    if ((s = lookup(r, c, msgid, "close", req->session, true)) == NULL)
        return;
    if ((op = op_new(s, OP_CLOSE, c, msgid)) == NULL)
        return;
    op->keep = req->has_keep && req->keep;
    s->closing = !op->keep;
    /* From now on the session is no longer this connection's: a later event
     * gets PERM and a later drop finds it detached, in arrival order. */
    s->owner = NULL;
    enqueue(op);
}

void session_drop(struct registry *r, struct peer *c, uint32_t msgid, const struct msg_drop *req)
{
    struct session *s;
    struct op *op;

    if ((s = lookup(r, c, msgid, "drop", req->session, false)) == NULL)
        return;
    if (s->closing) {
        peer_fail(c, msgid, MSG_E_NOSESSION, "drop: session %s is being closed", s->name);
        return;
    }
    if (s->owner != NULL) {
        peer_fail(c, msgid, MSG_E_STATE, "drop: session %s is attached to pid %ld; only a "
                    "detached session can be dropped", s->name, (long)s->owner_pid);
        return;
    }
    if ((op = op_new(s, OP_DROP, c, msgid)) == NULL)
        return;
    s->closing = true;
    enqueue(op);
}

/* ---- sessions kept across a clean restart ---- */

int registry_save_all(struct registry *r, const char *dir)
{
    char name[160], path[PATH_MAX], err[600];
    uint64_t bytes;
    int failures = 0;

    for (struct session *s = r->head; s != NULL; s = s->next) {
        msgpack_sbuffer meta;
        if (!s->ready) {
            failures++;
            continue;
        }
        kept_name(s, name, sizeof(name));
        /* The trainer (if any) restores its own weights from the stash when
         * its connection closes: the session comes back in the TRAIN state. */
        bool active = s->st.active;
        s->st.active = false;
        int rc = encode_meta(s, &meta);
        s->st.active = active;
        if (rc < 0) {
            log_error(reg_log(r), "session %s: cannot write its state file: out of memory",
                      s->name);
            failures++;
            continue;
        }
        /* The whole shadow object's head, header page included: its
         * request records answer a client that sends again, after the
         * restart, what it sent before (a clean stop must be as kind as a
         * crash, which keeps them in the shadow). */
        struct shm_guard g;
        shadow_enter(s, &g);
        rc = store_save(dir, name, meta.data, meta.size, s->shadow.base, s->shadow_bytes, path,
                        sizeof(path), &bytes, err, sizeof(err));
        shadow_leave(s, &g);
        if (rc == 0 && shadow_is_broken(s))
            rc = err_set(err, sizeof(err), -EFAULT, "its shadow was resized under emad");
        if (rc < 0) {
            log_error(reg_log(r), "session %s: cannot write its state file: %s", s->name, err);
            failures++;
        } else {
            s->kept = true;
            log_info(reg_log(r), "session %s: kept in %s for the next start", s->name, path);
        }
        msgpack_sbuffer_destroy(&meta);
    }
    return failures ? -EIO : 0;
}

/* A state file or journal, read and decoded: what restore and adopt share. */
struct kept {
    struct store_file f;
    msgpack_unpacked u;
    struct msg_saved_state m;
};

static void kept_free(struct kept *k)
{
    msg_free(&msg_saved_state_desc, &k->m);
    msgpack_unpacked_destroy(&k->u);
    store_file_close(&k->f);
}

static int kept_read(const char *dir, const char *file, struct kept *k, char *err, size_t errlen)
{
    char why[400];
    size_t off = 0;
    int rc;

    memset(k, 0, sizeof(*k));
    msgpack_unpacked_init(&k->u);
    if ((rc = store_load(dir, file, &k->f, err, errlen)) < 0) {
        kept_free(k);
        return rc;
    }
    if (msgpack_unpack_next(&k->u, k->f.meta, k->f.meta_len, &off) != MSGPACK_UNPACK_SUCCESS ||
        msg_decode(&msg_saved_state_desc, &k->u.data, &k->m, why, sizeof(why)) < 0 ||
        msg_saved_state_expand(&k->m, why, sizeof(why)) < 0 || !k->m.has_uid) {
        kept_free(k);
        return err_set(err, errlen, -EBADMSG, "%s: metadata is not a kept session's", file);
    }
    return 0;
}

/* The session a state file or journal describes (name, owner, config,
 * tensors, plan), as register would have built it; not in the registry yet,
 * no shadow. */
static int session_from_kept(struct registry *r, const struct msg_saved_state *m,
                             const char *file, struct session **out, char *err, size_t errlen)
{
    struct msg_register req;
    struct msg_tensor *t;
    struct session *s;
    char why[400] = "";
    int rc = 0;

    *out = NULL;
    if (!session_name_valid(m->session.ptr, m->session.len) ||
        find(r, (uid_t)m->uid, m->session.ptr, m->session.len) != NULL ||
        r->count >= r->ctx->opts->max_sessions)
        return err_set(err, errlen, -EEXIST, "%s: session name invalid, taken, or over the limit",
                       file);
    t = calloc(m->ntensors ? m->ntensors : 1, sizeof(*t));
    s = calloc(1, sizeof(*s));
    if (t == NULL || s == NULL) {
        free(t);
        free(s);
        return -ENOMEM;
    }
    for (size_t i = 0; i < m->ntensors; i++)
        t[i] = (struct msg_tensor){m->tensors[i].name, m->tensors[i].dtype, m->tensors[i].offset,
                                   m->tensors[i].numel, false, NULL, 0};
    memset(&req, 0, sizeof(req));
    req.session = m->session;
    req.tensors = t;
    req.ntensors = m->ntensors;
    req.has_config = true;
    req.config = m->config;
    s->reg = r;
    memcpy(s->name, m->session.ptr, m->session.len);
    s->uid = (uid_t)m->uid;
    snprintf(s->qualified, sizeof(s->qualified), "%lu:%s", (unsigned long)s->uid, s->name);
    s->last_seq = m->has_seq ? m->seq : 0;
    if (build_config(s, &req, why, sizeof(why)) < 0 ||
        build_tensors(s, &req, UINT64_MAX, why, sizeof(why)) < 0 ||
        s->shadow_bytes != m->shadow_bytes)
        rc = err_set(err, errlen, -EBADMSG, "%s: inconsistent session: %s", file, why);
    else if (plan_build(&s->plan, s->tensors, s->ntensors, CHUNK_ELEMS) < 0)
        rc = -ENOMEM;
    else
        redo_layout(s);
    free(t);
    if (rc < 0) {
        session_free(s);
        return rc;
    }
    *out = s;
    return 0;
}


/* The request records of a kept shadow header, those the session's last
 * seq can have made (the file is emad's own, but checked like any file). */
static void restore_records(struct session *s, const void *data)
{
    struct shadow_header kh;
    struct shadow_header *h = shadow_hdr(s);

    memcpy(&kh, data, sizeof(kh));
    if (memcmp(kh.magic, SHADOW_MAGIC, 8) != 0)
        return;
    for (size_t i = 0; i < SEQ_RECORDS; i++) {
        const struct seq_record *rec = &kh.recent[i];
        if (rec->seq != 0 && rec->seq <= s->last_seq && rec->seq % SEQ_RECORDS == i &&
            rec->action <= EMA_ACTION_SWAP_OUT)
            h->recent[i] = *rec;
    }
}

/* Rebuild one session from a state file written by registry_save_all. */
static int restore_one(struct registry *r, const char *dir, const char *file, char *err,
                       size_t errlen)
{
    struct kept k;
    struct session *s = NULL;
    enum shm_share share;
    char why[400];
    int rc;

    if ((rc = kept_read(dir, file, &k, err, errlen)) < 0)
        return rc;
    if ((rc = session_from_kept(r, &k.m, file, &s, err, errlen)) < 0)
        goto out;
    /* Since the request records are kept the data starts with the shadow's
     * header page; before, it held the tensors only. */
    bool with_header = k.f.data_len == s->shadow_bytes;
    if (!with_header && shadow_data_bytes(s) != k.f.data_len) {
        rc = err_set(err, errlen, -EBADMSG, "%s: its data does not fit its tensor table", file);
        goto out;
    }
    if (shm_shadow_create(s->uid, shadow_object_bytes(s), s->shadow_name, sizeof(s->shadow_name),
                          &s->shadow, &share, why, sizeof(why)) < 0) {
        rc = err_set(err, errlen, -ENOMEM, "%s: %s", file, why);
        goto out;
    }
    share_note(r, share);
    struct shm_guard g;
    shadow_enter(s, &g);
    memcpy(shadow_data(s), (const char *)k.f.data + (with_header ? SHADOW_HEADER_BYTES : 0),
           shadow_data_bytes(s));
    if (with_header)
        restore_records(s, k.f.data);
    shadow_leave(s, &g);
    if (shadow_is_broken(s)) {
        rc = err_set(err, errlen, -EFAULT, "%s: the new shadow %s faulted", file, s->shadow_name);
        goto out;
    }
    apply_loaded(s, &k.m);
    s->ready = true;
    shadow_sync(s);
    registry_insert(r, s);
    s = NULL;
out:
    if (s != NULL)
        session_free(s);
    kept_free(&k);
    return rc;
}

int registry_restore_all(struct registry *r, const char *dir)
{
    char path[PATH_MAX], err[600];
    size_t suffix = strlen(STORE_SUFFIX);
    struct dirent *e;
    unsigned restored = 0;
    DIR *d = opendir(dir);

    if (d == NULL)
        return errno == ENOENT ? 0 : -errno;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        char file[160];
        if (len <= suffix || strcmp(e->d_name + len - suffix, STORE_SUFFIX) != 0 ||
            len - suffix >= sizeof(file) || e->d_name[0] == '.')
            continue;
        memcpy(file, e->d_name, len - suffix);
        file[len - suffix] = '\0';
        if (snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >= (int)sizeof(path))
            continue;
        if (restore_one(r, dir, file, err, sizeof(err)) < 0) {
            /* Kept aside rather than deleted: it may be all that is left. */
            log_error(reg_log(r), "cannot restore the session kept in %s: %s", path, err);
            continue;
        }
        /* Restored sessions live in emad again; the next stop keeps them anew. */
        unlink(path);
        journal_write(r->head);
        restored++;
        log_info(reg_log(r), "session %s: restored from %s (detached)", r->head->name, path);
    }
    closedir(d);
    return (int)restored;
}

/* ---- journals: sessions that outlive a crash of emad ---- */

/* Write s's journal; any thread (it logs nothing). 0 or -errno with err. */
static int journal_store(struct session *s, char *err, size_t errlen)
{
    struct registry *r = s->reg;
    char name[160], path[PATH_MAX];
    msgpack_sbuffer meta;
    uint64_t bytes;
    int rc;

    if (r->live_dir[0] == '\0')
        return 0;
    kept_name(s, name, sizeof(name));
    if (encode_meta(s, &meta) < 0)
        return err_set(err, errlen, -ENOMEM, "out of memory");
    rc = store_save(r->live_dir, name, meta.data, meta.size, NULL, 0, path, sizeof(path), &bytes,
                    err, errlen);
    msgpack_sbuffer_destroy(&meta);
    return rc;
}

static void journal_failed(struct session *s, const char *why)
{
    log_warn(reg_log(s->reg), "session %s: cannot write its journal (it will not survive a "
             "crash of emad): %s", s->name, why);
}

static void journal_write(struct session *s)
{
    char err[600];

    if (journal_store(s, err, sizeof(err)) < 0)
        journal_failed(s, err);
}

static void journal_remove(struct session *s)
{
    struct registry *r = s->reg;
    char name[160], path[PATH_MAX];

    if (r->live_dir[0] == '\0')
        return;
    kept_name(s, name, sizeof(name));
    if (snprintf(path, sizeof(path), "%s/%s%s", r->live_dir, name, STORE_SUFFIX) <
        (int)sizeof(path))
        unlink(path);
}

bool registry_owns_shadow(void *registry, const char *name)
{
    struct registry *r = registry;
    struct shadow_header h;
    ssize_t n;
    int fd;

    for (struct session *s = r->head; s != NULL; s = s->next)
        if (strcmp(s->shadow_name, name) == 0)
            return true;
    /* A dead emad of another state directory left it: that emad's restart
     * takes it back, so it is not ours to remove (emactl gc may). One
     * without a readable header never held a session. */
    fd = shm_open(name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0); /* leases */
    if (fd < 0)
        return false;
    n = pread(fd, &h, sizeof(h), 0);
    close(fd);
    return n == (ssize_t)sizeof(h) && memcmp(h.magic, SHADOW_MAGIC, 8) == 0 && h.home != r->home;
}

/* A shadow taken back still carries the dead emad's pid in its name, and
 * any emad of this uid starting later would collect it as stale: rename it
 * to ours (shm objects are files in /dev/shm on Linux) and journal the new
 * name. If the rename fails the session keeps working under the old name. */
static void adopt_rename(struct registry *r, struct session *s)
{
    const char *prefix = "/emad-shadow-";
    char renamed[sizeof(s->shadow_name)], from[300], to[300];
    const char *rest = strchr(s->shadow_name + strlen(prefix), '-');

    if (rest == NULL || strncmp(s->shadow_name, prefix, strlen(prefix)) != 0)
        return;
    if (snprintf(renamed, sizeof(renamed), "%s%ld%s", prefix, (long)getpid(), rest) >=
        (int)sizeof(renamed))
        return;
    snprintf(from, sizeof(from), "/dev/shm%s", s->shadow_name);
    snprintf(to, sizeof(to), "/dev/shm%s", renamed);
    if (rename(from, to) < 0) {
        log_warn(reg_log(r), "session %s: cannot rename shadow %s to %s: %s", s->name,
                 s->shadow_name, renamed, strerror(errno));
        return;
    }
    memcpy(s->shadow_name, renamed, sizeof(renamed));
    journal_write(s);
}

/* Take back one journaled session whose shadow object is still there.
 * 0, 1 when the session is already back (restored), or -errno. */
static int adopt_one(struct registry *r, const char *file, char *err, size_t errlen)
{
    struct kept k;
    struct session *s = NULL;
    struct shadow_header hc;
    const struct shadow_header *h = &hc;
    enum shm_share share;
    struct shm_guard g;
    char why[400];
    int rc;

    if ((rc = kept_read(r->live_dir, file, &k, err, errlen)) < 0)
        return rc;
    if (!k.m.has_shadow_shm) {
        rc = err_set(err, errlen, -EBADMSG, "%s: not a session journal", file);
        goto out;
    }
    /* Restored from a state file just before (a clean stop kept it), with
     * this journal written anew: nothing to take back. */
    struct session *same = find(r, (uid_t)k.m.uid, k.m.session.ptr, k.m.session.len);
    if (same != NULL && msg_str_eq(k.m.shadow_shm, same->shadow_name)) {
        rc = 1;
        goto out;
    }
    if ((rc = session_from_kept(r, &k.m, file, &s, err, errlen)) < 0)
        goto out;
    if (msg_str_copy(k.m.shadow_shm, s->shadow_name, sizeof(s->shadow_name)) < 0) {
        rc = err_set(err, errlen, -EBADMSG, "%s: bad shadow name", file);
        goto out;
    }
    /* The shadow must be the one emad made: ours (or given to the owner),
     * the journaled size, with our header. */
    if ((rc = shm_shadow_open(s->shadow_name, s->uid, shadow_object_bytes(s), &s->shadow, &share,
                              why, sizeof(why))) < 0) {
        rc = err_set(err, errlen, rc, "%s: %s", file, why);
        goto out;
    }
    share_note(r, share);
    /* One copy of the header: where its trainer owned the shadow, it is
     * input like any the trainer writes. */
    shadow_enter(s, &g);
    hc = *shadow_hdr(s);
    shadow_leave(s, &g);
    if (shadow_is_broken(s) || memcmp(h->magic, SHADOW_MAGIC, 8) != 0) {
        rc = err_set(err, errlen, -EBADMSG, "%s: shadow has no emad header", file);
        goto out;
    }
    ema_state_init(&s->st);
    s->st.started = h->started;
    s->st.updates = h->updates;
    s->st.swaps = h->swaps;
    s->st.has_last_time = h->has_last_time;
    s->st.last_time.batch = h->last_batch;
    s->st.last_time.epoch = h->last_epoch;
    s->st.last_time.has_duration = h->has_last_duration;
    s->st.last_time.duration = h->last_duration;
    /* The trainer restores its weights from the stash when its connection
     * drops: the session comes back with the training weights in. */
    s->st.active = false;
    bool cut = h->seq_begun != h->seq_done;
    s->interrupted = h->interrupted || cut;
    s->last_seq = h->last_seq;
    /* An event cut short: exact once sent again, if the records tell. The
     * flag stays until then (it clears if this crash alone set it). */
    if ((cut && h->redo_of == h->seq_begun) || (h->redo_pending & 1u)) {
        shadow_enter(s, &g);
        int recovered = redo_recover(s);
        shadow_leave(s, &g);
        if (recovered == 0)
            s->redo_clears = (h->redo_pending & 1u) ? (h->redo_pending & 2u) != 0
                                                    : !h->interrupted;
    }
    if (shadow_is_broken(s)) {
        rc = err_set(err, errlen, -EFAULT, "%s: shadow %s faulted while emad read it", file,
                     s->shadow_name);
        goto out;
    }
    s->ready = true;
    adopt_rename(r, s);
    shadow_sync(s);
    registry_insert(r, s);
    /* A journal of an older emad, named before names were per uid: write it
     * under the current name, and remove the old one. */
    char want[160], old_path[PATH_MAX];
    kept_name(s, want, sizeof(want));
    if (strcmp(want, file) != 0 && journal_store(s, why, sizeof(why)) == 0 &&
        snprintf(old_path, sizeof(old_path), "%s/%s%s", r->live_dir, file, STORE_SUFFIX) <
            (int)sizeof(old_path))
        unlink(old_path);
    s = NULL;
out:
    if (s != NULL) {
        s->shadow_name[0] = '\0'; /* a failed adoption never removes the object */
        session_free(s);
    }
    kept_free(&k);
    return rc;
}

int registry_adopt_all(struct registry *r)
{
    char err[600];
    size_t suffix = strlen(STORE_SUFFIX);
    struct dirent *e;
    int adopted = 0;
    DIR *d;

    if (r->live_dir[0] == '\0' || (d = opendir(r->live_dir)) == NULL)
        return 0;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        char file[160];
        if (len <= suffix || strcmp(e->d_name + len - suffix, STORE_SUFFIX) != 0 ||
            len - suffix >= sizeof(file) || e->d_name[0] == '.')
            continue;
        memcpy(file, e->d_name, len - suffix);
        file[len - suffix] = '\0';
        int rc = adopt_one(r, file, err, sizeof(err));
        if (rc < 0) {
            log_warn(reg_log(r), "journal %s/%s: session not taken back: %s", r->live_dir,
                     e->d_name, err);
            continue;
        }
        if (rc > 0) /* the journal of a session restored from a state file */
            continue;
        adopted++;
        log_warn(reg_log(r), "session %s: taken back after a crash of emad (detached, %" PRIu64
                 " updates)%s", r->head->name, r->head->st.updates,
                 r->head->interrupted ? "; an update was cut short by the crash: the shadow "
                                        "may hold part of it" : "");
    }
    closedir(d);
    return adopted;
}
