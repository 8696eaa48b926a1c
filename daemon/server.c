/*
 * server.c - the connection layer of emad on libuv.
 */
#include "server.h"
#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_CHUNK (64u << 10)
/* Replies start in a buffer this small; it doubles as they pile up. */
#define OUT_MIN_CAP 1024u
/* Connections accepted per wakeup, so that a flood of connects cannot keep
 * the loop from serving the connections already open. */
#define ACCEPT_BATCH 64
/* After running out of descriptors with no spare one, retry this much later. */
#define ACCEPT_RETRY_MS 100
/* Peers refused for lack of descriptors are logged at most this often. */
#define FD_LOG_INTERVAL_MS 10000
/* While requests wait for --max-input-total, a connection holding part of it
 * whose peer sent nothing for this long is taken as never finishing. */
#define INPUT_STALL_MS 5000

static void conn_process(struct conn *c);
static void conn_reply_error(struct conn *c, uint32_t msgid, const char *code, const char *fmt,
                             ...) __attribute__((format(printf, 4, 5)));
static void conn_flush(struct conn *c);
static void conn_account(struct conn *c);
static void conn_check_limits(struct conn *c);
static void input_released(struct server *srv);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static int out_write(void *data, const char *buf, size_t len);

static struct log *conn_log(const struct conn *c)
{
    return c->srv->ctx->log;
}

static struct conn *peer_conn(struct peer *p)
{
    return (struct conn *)((char *)p - offsetof(struct conn, peer));
}

static void finish_stop(uv_handle_t *h)
{
    struct server *srv = h->data;
    void (*cb)(struct server *) = srv->on_stopped;

    srv->on_stopped = NULL;
    cb(srv);
}

static void maybe_stopped(struct server *srv)
{
    if (!srv->flushing || !srv->listener_closed || srv->nconns != 0 || srv->on_stopped == NULL ||
        srv->flush_timer_closing)
        return;
    srv->flush_timer_closing = true;
    uv_close((uv_handle_t *)&srv->flush_timer, finish_stop);
}

/* A request became an operation: at --max-queued-requests (or over
 * --max-pending with its memory) reading pauses, so that a peer pipelining
 * cheap requests behind a long update cannot grow emad's memory with a
 * queue many times the size of what it sent. */
static void conn_hold(struct peer *p, size_t bytes)
{
    struct conn *c = peer_conn(p);

    c->refs++;
    c->op_bytes += bytes;
    conn_account(c);
    conn_check_limits(c);
}

static void on_resume_timer(uv_timer_t *t);

/* The operation ended. Resuming the connection runs its buffered requests,
 * which must not happen inside the session code that frees the operation:
 * the resume runs from the loop, in resume_timer. */
static void conn_release(struct peer *p, size_t bytes)
{
    struct conn *c = peer_conn(p);
    struct server *srv = c->srv;

    c->op_bytes -= bytes;
    conn_account(c);
    if (--c->refs == 0 && c->closed) {
        free(c);
        return;
    }
    if (c->paused && !c->closed && !srv->stopping &&
        !uv_is_active((uv_handle_t *)&srv->resume_timer))
        uv_timer_start(&srv->resume_timer, on_resume_timer, 0, 0);
}

static void outbuf_free(struct outbuf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* Recount what c holds for replies, here and in the server's total. What is
 * counted is what is allocated, not the payload: a buffer's capacity. */
static void conn_account(struct conn *c)
{
    size_t now = (c->writing ? c->sending.cap : 0) + c->out.cap + c->op_bytes;

    c->srv->queued_total = c->srv->queued_total - c->queued + now;
    c->queued = now;
}

/* Recount c's read buffer against --max-input-total: what is allocated, once
 * above the SERVER_INPUT_FREE every connection may hold. */
static void input_account(struct conn *c)
{
    size_t cap = c->dec.cap, now = cap > SERVER_INPUT_FREE ? cap : 0, old = c->in_held;

    c->srv->in_total = c->srv->in_total - old + now;
    c->in_held = now;
    if (now < old)
        input_released(c->srv);
}

/* The most c's read buffer may be after reserving want more bytes: the
 * decoder doubles it until want fits after what is pending (proto/wire.c),
 * and stops at its own bound, which this does not need to know. */
static size_t input_grown_cap(const struct conn *c, size_t want)
{
    size_t pending = wire_decoder_pending(&c->dec), cap = c->dec.cap ? c->dec.cap : 4096;

    if (c->dec.cap - pending >= want)
        return c->dec.cap;
    while (cap - pending < want)
        cap *= 2;
    return cap;
}

/* Whether c may read want more bytes of its requests, growing its buffer if
 * needed. Over --max-input-total, the connections whose requests are the
 * largest are the first refused: they need the largest growth. Alone, a
 * connection may take what --max-message allows, so that any request emad
 * accepts can complete. */
static bool input_may_grow(const struct conn *c, size_t want)
{
    const struct server *srv = c->srv;
    size_t cap = input_grown_cap(c, want), others = srv->in_total - c->in_held;

    if (cap <= c->dec.cap || cap <= SERVER_INPUT_FREE)
        return true;
    return others == 0 || others + cap <= srv->ctx->opts->max_input_total;
}

static void on_conn_closed(uv_handle_t *h)
{
    struct conn *c = (struct conn *)h;
    struct server *srv = c->srv;

    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nconns--;
    srv->nclosing--;
    wire_decoder_free(&c->dec);
    input_account(c);
    c->writing = false; /* libuv called on_write (UV_ECANCELED) before this */
    outbuf_free(&c->sending);
    outbuf_free(&c->out);
    conn_account(c);
    srv->up.closed(srv->up.arg, &c->peer);
    c->closed = true;
    if (c->refs == 0)
        free(c);
    maybe_stopped(srv);
}

void conn_close(struct conn *c, const char *why)
{
    if (c->closing)
        return;
    c->closing = true;
    c->srv->nclosing++;
    if (why != NULL)
        log_info(conn_log(c), "connection %llu (pid %ld, uid %ld): closed: %s",
                 (unsigned long long)c->peer.id, (long)c->peer.pid, (long)c->peer.uid, why);
    uv_read_stop((uv_stream_t *)&c->pipe);
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = (struct conn *)h;
    size_t want = READ_CHUNK, room = 0;

    (void)suggested;
    *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS to on_read */
    if (!input_may_grow(c, want)) {
        /* Fill what the buffer has; the decoder grows it for nothing less. */
        want = c->dec.cap - wire_decoder_pending(&c->dec);
        if (want == 0) {
            c->in_blocked = true;
            return;
        }
    }
    buf->base = wire_decoder_reserve(&c->dec, want, &room);
    input_account(c);
    buf->len = room > READ_CHUNK ? READ_CHUNK : room;
    if (buf->base == NULL)
        buf->len = 0;
}

/* The log names a peer that is stopped or closed for what it sends. */
#define CONN_WHO "connection %llu (pid %ld, uid %ld)"
#define CONN_WHO_ARGS(c) (unsigned long long)(c)->peer.id, (long)(c)->peer.pid, (long)(c)->peer.uid

/* Requests wait for --max-input-total, and no connection holding part of
 * it goes on (each needs more than it leaves, or its peer stopped sending):
 * none will give any back by itself. Close the one holding the most, with
 * LIMIT, so that the others can complete. */
static void input_refuse(struct conn *c)
{
    const struct server *srv = c->srv;
    size_t pending = wire_decoder_pending(&c->dec);
    char text[256], why[64];
    msgpack_packer pk;

    if (c->in_blocked)
        snprintf(why, sizeof(why), "it needs more");
    else
        snprintf(why, sizeof(why), "its peer sent nothing for %d s", INPUT_STALL_MS / 1000);
    log_warn(conn_log(c),
             CONN_WHO ": closed with LIMIT: its request holds %zu bytes so far (%zu allocated) "
             "and %s, while requests wait for --max-input-total %zu (%zu held by all); raise "
             "--max-input-total, or stop the peers that leave large requests unfinished",
             CONN_WHO_ARGS(c), pending, c->dec.cap, why, srv->ctx->opts->max_input_total,
             srv->in_total);
    snprintf(text, sizeof(text),
             "emad holds too many requests not yet received in full (--max-input-total): this "
             "connection's request (%zu bytes so far) was dropped; send smaller requests or "
             "try again later",
             pending);
    /* After the replies already queued; the peer reads it before the error
     * its socket reports for the request it could not send. */
    msgpack_packer_init(&pk, c, out_write);
    wire_pack_notify_head(&pk, MSG_NOTIFY_ERROR);
    msgpack_pack_map(&pk, 2);
    wire_pack_str(&pk, "code");
    wire_pack_str(&pk, MSG_E_LIMIT);
    wire_pack_str(&pk, "message");
    wire_pack_str(&pk, text);
    conn_account(c);
    conn_flush(c);
    conn_close(c, NULL);
}

static void input_check_stuck(struct server *srv);

static void on_input_stall_timer(uv_timer_t *t)
{
    input_check_stuck(t->data);
}

/* Connections wait for --max-input-total: unless another connection holding
 * part of it may still complete a request and give it back, no one ever
 * will (the peers that send large requests would be deadlocked, or held by
 * one that stopped sending). One that read within INPUT_STALL_MS may: look
 * again when that time is up. */
static void input_check_stuck(struct server *srv)
{
    uint64_t now = uv_now(srv->ctx->loop), wake = UINT64_MAX;
    struct conn *largest = NULL;
    bool waiting = false;

    uv_timer_stop(&srv->in_stall_timer);
    if (srv->stopping)
        return;
    for (struct conn *c = srv->conns; c != NULL; c = c->next) {
        if (c->closing) {
            if (c->in_held > 0)
                return; /* it gives its part back, and this runs again */
            continue;
        }
        if (c->in_blocked) {
            waiting = true;
        } else if (c->in_held == 0) {
            continue;
        } else if (now - c->in_read_ms < INPUT_STALL_MS) {
            if (c->in_read_ms + INPUT_STALL_MS < wake)
                wake = c->in_read_ms + INPUT_STALL_MS;
            continue;
        }
        /* Among equals the newest: the others have waited longer. */
        if (largest == NULL || c->dec.cap > largest->dec.cap ||
            (c->dec.cap == largest->dec.cap && c->peer.id > largest->peer.id))
            largest = c;
    }
    if (!waiting || largest == NULL)
        return;
    if (wake != UINT64_MAX) {
        uv_timer_start(&srv->in_stall_timer, on_input_stall_timer, wake - now, 0);
        return;
    }
    input_refuse(largest);
}

static void input_block(struct conn *c)
{
    uv_read_stop((uv_stream_t *)&c->pipe);
    log_debug(conn_log(c),
              "connection %llu: a request of %zu bytes so far needs more than "
              "--max-input-total leaves (%zu held by all connections); reading paused",
              (unsigned long long)c->peer.id, wire_decoder_pending(&c->dec), c->srv->in_total);
    input_check_stuck(c->srv);
}

/* Part of --max-input-total was given back: the connections refused room
 * that now fits are read again; if some still wait, see whether they can. */
static void input_released(struct server *srv)
{
    bool waiting = false;

    if (srv->stopping)
        return;
    for (struct conn *c = srv->conns; c != NULL; c = c->next) {
        if (!c->in_blocked || c->closing)
            continue;
        if (!input_may_grow(c, READ_CHUNK)) {
            waiting = true;
            continue;
        }
        c->in_blocked = false;
        c->in_read_ms = uv_now(srv->ctx->loop);
        log_debug(conn_log(c),
                  "connection %llu: a request of %zu bytes so far fits --max-input-total "
                  "(%zu held by all connections); reading resumed",
                  (unsigned long long)c->peer.id, wire_decoder_pending(&c->dec), srv->in_total);
        if (!c->paused)
            uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
    }
    if (waiting)
        input_check_stuck(srv);
}

/* Every request received was taken out: a buffer grown for a large one is
 * given back rather than kept for the connection's life. Freeing the
 * decoder's buffer leaves it ready for the next message (proto/wire.c);
 * while it skips an oversized message it has state beyond the buffer. */
static void input_settle(struct conn *c)
{
    if (c->closing || c->in_held == 0 || c->dec.discarding ||
        wire_decoder_pending(&c->dec) != 0)
        return;
    wire_decoder_free(&c->dec);
    input_account(c);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct conn *c = (struct conn *)s;

    (void)buf;
    if (n == UV_EOF) {
        conn_close(c, NULL);
        log_debug(conn_log(c), "connection %llu: peer closed", (unsigned long long)c->peer.id);
        return;
    }
    if (n == UV_ENOBUFS && c->in_blocked) {
        input_block(c);
        return;
    }
    if (n < 0) {
        conn_close(c, uv_strerror((int)n));
        return;
    }
    if (n > 0)
        c->in_read_ms = uv_now(c->srv->ctx->loop);
    wire_decoder_commit(&c->dec, (size_t)n);
    conn_process(c);
    input_settle(c);
}

static void conn_pause(struct conn *c, const char *limit)
{
    c->paused = true;
    uv_read_stop((uv_stream_t *)&c->pipe);
    log_debug(conn_log(c),
              "connection %llu: %zu reply bytes queued (%zu for all connections), %u requests "
              "queued; reading paused (%s)",
              (unsigned long long)c->peer.id, c->queued, c->srv->queued_total, c->refs, limit);
}

/* The heaviest connection still read from, among those holding replies. */
static struct conn *heaviest_reader(struct server *srv)
{
    struct conn *h = NULL;

    for (struct conn *c = srv->conns; c != NULL; c = c->next)
        if (!c->paused && !c->closing && c->queued > 0 && (h == NULL || c->queued > h->queued))
            h = c;
    return h;
}

/* Replies were queued for c: a peer that does not read its replies stops
 * being read, so that its queue is bounded (--max-pending), and so is the
 * sum of all queues (--max-pending-total): over it, the connections holding
 * the most stop first, down to c itself. A peer that reads keeps its queue
 * empty (its replies are written at once) and is never paused. */
static void conn_check_limits(struct conn *c)
{
    const struct emad_opts *o = c->srv->ctx->opts;

    if (c->closing || c->queued == 0)
        return;
    if (!c->paused && c->refs >= o->max_queued_requests)
        conn_pause(c, "--max-queued-requests");
    if (!c->paused && c->queued > o->max_pending)
        conn_pause(c, "--max-pending");
    while (!c->paused && c->srv->queued_total > o->max_pending_total) {
        struct conn *h = heaviest_reader(c->srv);
        if (h == NULL)
            break;
        conn_pause(h, "--max-pending-total");
    }
}

/* Hysteresis: a paused reader resumes once its queue is down to half of
 * --max-pending, and, while the total is above half of --max-pending-total,
 * only once its queue is empty. Resuming earlier would pause a slow reader
 * again after every write. */
static void conn_maybe_resume(struct conn *c)
{
    const struct emad_opts *o = c->srv->ctx->opts;

    if (!c->paused || c->closing || c->srv->stopping)
        return;
    if (c->queued > o->max_pending / 2 || c->refs > o->max_queued_requests / 2)
        return;
    if (c->queued > 0 && c->srv->queued_total > o->max_pending_total / 2)
        return;
    c->paused = false;
    c->in_read_ms = uv_now(c->srv->ctx->loop);
    log_debug(conn_log(c),
              "connection %llu: %zu reply bytes queued (%zu for all connections), %u requests "
              "queued; reading resumed",
              (unsigned long long)c->peer.id, c->queued, c->srv->queued_total, c->refs);
    conn_process(c); /* requests that arrived before the pause come first */
    input_settle(c);
    if (!c->paused && !c->closing && !c->in_blocked)
        uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

static void on_resume_timer(uv_timer_t *t)
{
    struct server *srv = t->data;

    /* Resuming closes no connection at once (uv_close defers the unlinking). */
    for (struct conn *c = srv->conns; c != NULL; c = c->next)
        conn_maybe_resume(c);
}

/* At a stop, a connection closes once everything queued for it is written. */
static void conn_close_if_flushed(struct conn *c)
{
    if (c->srv->flushing && !c->closing && !c->writing && c->out.size == 0)
        conn_close(c, NULL);
}

static void on_write(uv_write_t *req, int status)
{
    struct conn *c = req->data;

    c->writing = false;
    outbuf_free(&c->sending);
    conn_account(c);
    if (status == UV_ECANCELED)
        return; /* the connection is closing */
    if (status < 0) {
        conn_close(c, uv_strerror(status));
        return;
    }
    conn_flush(c);
    conn_maybe_resume(c);
    conn_close_if_flushed(c);
}

/* Hand what out holds to the socket: at once if the socket takes it (most
 * replies fit its buffer, and one system call is cheaper than a queued write
 * that makes libuv re-arm the poll), else as the one write in flight. */
static void conn_flush(struct conn *c)
{
    uv_buf_t b;
    int rc;

    if (c->closing || c->writing || c->out.size == 0)
        return;
    b = uv_buf_init(c->out.data, (unsigned)c->out.size);
    rc = uv_try_write((uv_stream_t *)&c->pipe, &b, 1);
    if (rc == (int)b.len) {
        outbuf_free(&c->out);
        conn_account(c);
        return;
    }
    if (rc < 0 && rc != UV_EAGAIN) {
        conn_close(c, uv_strerror(rc));
        return;
    }
    c->sending = c->out;
    memset(&c->out, 0, sizeof(c->out));
    if (rc > 0) {
        b.base += rc;
        b.len -= (size_t)rc;
    }
    c->wreq.data = c;
    rc = uv_write(&c->wreq, (uv_stream_t *)&c->pipe, &b, 1, on_write);
    if (rc < 0) {
        outbuf_free(&c->sending);
        conn_account(c);
        conn_close(c, uv_strerror(rc));
        return;
    }
    c->writing = true;
    conn_account(c);
}

/* msgpack's write callback: append to the connection's out buffer. */
static int out_write(void *data, const char *buf, size_t len)
{
    struct conn *c = data;
    struct outbuf *o = &c->out;

    if (c->out_failed)
        return -1;
    if (o->size + len > o->cap) {
        size_t cap = o->cap ? o->cap : OUT_MIN_CAP;
        char *p;
        while (cap < o->size + len)
            cap *= 2;
        p = realloc(o->data, cap);
        if (p == NULL) {
            c->out_failed = true;
            return -1;
        }
        o->data = p;
        o->cap = cap;
    }
    memcpy(o->data + o->size, buf, len);
    o->size += len;
    return 0;
}

/* A reply was packed into out from mark on: send it, or undo it. */
static void conn_queued(struct conn *c, size_t mark)
{
    if (c->out_failed) {
        c->out.size = mark;
        conn_account(c);
        conn_close(c, "out of memory for a reply");
        return;
    }
    conn_account(c);
    conn_flush(c);
    conn_check_limits(c);
}

static void conn_reply(struct peer *p, uint32_t msgid, const struct msg_desc *d,
                       const void *result)
{
    struct conn *c = peer_conn(p);
    msgpack_packer pk;
    size_t mark = c->out.size;

    if (c->closing)
        return;
    msgpack_packer_init(&pk, c, out_write);
    wire_pack_response_head(&pk, msgid);
    msg_encode(&pk, d, result);
    conn_queued(c, mark);
}

static void send_error(struct conn *c, uint32_t msgid, const char *code, const char *text)
{
    msgpack_packer pk;
    size_t mark = c->out.size;

    if (c->closing)
        return;
    msgpack_packer_init(&pk, c, out_write);
    wire_pack_response_error(&pk, msgid, code, text);
    conn_queued(c, mark);
}

/* The text quotes what the peer sent (names of methods, sessions, tensors,
 * files): escaped, it cannot forge log lines. */
static void conn_fail(struct peer *p, uint32_t msgid, const char *code, const char *text)
{
    struct conn *c = peer_conn(p);
    char shown[LOG_ESCAPED_SIZE(PEER_TEXT_MAX)];

    log_debug(conn_log(c), "connection %llu: request %u: %s: %s", (unsigned long long)c->peer.id,
              msgid, code, log_escape(text, strlen(text), shown, sizeof(shown)));
    metrics_error(c->srv->ctx->metrics, code);
    send_error(c, msgid, code, text);
}

static void conn_reply_error(struct conn *c, uint32_t msgid, const char *code, const char *fmt,
                             ...)
{
    char text[PEER_TEXT_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    conn_fail(&c->peer, msgid, code, text);
}

/* Decode and dispatch every complete message buffered. */
static void conn_process(struct conn *c)
{
    struct wire_msg m;
    struct wire_fault f;
    int rc;

    while (!c->closing && !c->paused && !c->srv->stopping) {
        rc = wire_decoder_next(&c->dec, &m, &f);
        if (rc == 0)
            return;
        if (rc > 0) {
            if (m.kind == WIRE_REQUEST)
                c->srv->up.request(c->srv->up.arg, &c->peer, &m);
            else
                log_debug(conn_log(c), "connection %llu: ignored a %s from the client",
                          (unsigned long long)c->peer.id,
                          m.kind == WIRE_RESPONSE ? "response" : "notification");
            continue;
        }
        if (!f.has_msgid) {
            char shown[LOG_ESCAPED_SIZE(sizeof(f.detail))];
            log_warn(conn_log(c), "connection %llu (pid %ld): %s; closing it",
                     (unsigned long long)c->peer.id, (long)c->peer.pid,
                     log_escape(f.detail, strlen(f.detail), shown, sizeof(shown)));
            conn_close(c, NULL);
            return;
        }
        if (f.code == -EMSGSIZE)
            conn_reply_error(c, f.msgid, MSG_E_LIMIT, "%s", f.detail);
        else
            conn_reply_error(c, f.msgid, MSG_E_EPROTO, "%s", f.detail);
    }
}

static bool peer_allowed(const struct server *srv, int fd, const struct ucred *cred)
{
    gid_t groups[256];
    socklen_t len = sizeof(groups);

    if (cred->uid == 0 || cred->uid == geteuid())
        return true;
    if (!srv->ls.has_group)
        return false;
    if (cred->gid == srv->ls.group)
        return true;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
        return false;
    for (size_t i = 0; i < len / sizeof(gid_t); i++)
        if (groups[i] == srv->ls.group)
            return true;
    return false;
}

/* The notification that tells a refused peer why, before it is closed. */
static int pack_refusal(msgpack_sbuffer *sb, const char *code, const char *text)
{
    msgpack_packer pk;

    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    wire_pack_notify_head(&pk, MSG_NOTIFY_ERROR);
    msgpack_pack_map(&pk, 2);
    wire_pack_str(&pk, "code");
    wire_pack_str(&pk, code);
    wire_pack_str(&pk, "message");
    wire_pack_str(&pk, text);
    return sb->data != NULL ? 0 : -ENOMEM;
}

/* Tell a refused peer why before closing, as a notification it may read. */
static void refuse(struct conn *c, const char *code, const char *text)
{
    msgpack_sbuffer sb;
    uv_buf_t b;

    if (pack_refusal(&sb, code, text) == 0) {
        b = uv_buf_init(sb.data, (unsigned)sb.size);
        (void)uv_try_write((uv_stream_t *)&c->pipe, &b, 1);
    }
    msgpack_sbuffer_destroy(&sb);
    conn_close(c, NULL);
}

static void start_accepting(uv_timer_t *t);
static void on_listen(uv_poll_t *h, int status, int events);

/* Root and emad's own uid: no per-uid limit, and the connections kept for
 * them (privileged_reserve) let them in when other users took the rest. */
static bool peer_privileged(uid_t uid)
{
    return uid == 0 || uid == geteuid();
}

/* Of --max-connections, 1/16 (at least one, if that leaves one for others)
 * is kept for root and emad's own uid: an administrator, or the trainer
 * reconnecting as emad's user, still gets in while other users hold every
 * connection they may. */
static unsigned privileged_reserve(unsigned max_connections)
{
    unsigned r = (max_connections + 15) / 16;

    return r < max_connections ? r : max_connections - 1;
}

/* The open connections of uid, c's own included. */
static unsigned uid_connections(const struct server *srv, uid_t uid)
{
    unsigned n = 0;

    for (const struct conn *c = srv->conns; c != NULL; c = c->next)
        if (!c->closing && c->peer.uid == uid)
            n++;
    return n;
}

/* Whether c is over a connection limit; if so, text says which. */
static bool over_connection_limits(const struct server *srv, const struct conn *c, char *text,
                                   size_t len)
{
    const struct emad_opts *o = srv->ctx->opts;
    unsigned others_max = o->max_connections - privileged_reserve(o->max_connections);
    unsigned open = srv->nconns - srv->nclosing;

    if (open > o->max_connections) {
        snprintf(text, len, "too many connections (limit %u, --max-connections)",
                 o->max_connections);
        return true;
    }
    if (peer_privileged(c->peer.uid))
        return false;
    if (open > others_max) {
        snprintf(text, len,
                 "too many connections (limit %u, --max-connections, of which %u are kept for "
                 "root and emad's own uid)",
                 o->max_connections, o->max_connections - others_max);
        return true;
    }
    if (uid_connections(srv, c->peer.uid) > o->max_connections_per_uid) {
        snprintf(text, len,
                 "too many connections of uid %ld (limit %u, --max-connections-per-uid)",
                 (long)c->peer.uid, o->max_connections_per_uid);
        return true;
    }
    return false;
}

static void on_hello_timer(uv_timer_t *t);

/* --hello-timeout: a peer that never says hello would hold a connection
 * (and its share of --max-connections) forever. One timer serves every
 * connection: it wakes for the oldest one still without hello. */
static void hello_timer_arm(struct server *srv)
{
    uint64_t timeout = (uint64_t)srv->ctx->opts->hello_timeout_s * 1000, first = UINT64_MAX;
    uint64_t now = uv_now(srv->ctx->loop);

    if (srv->stopping)
        return;
    for (const struct conn *c = srv->conns; c != NULL; c = c->next)
        if (!c->peer.hello && !c->closing && c->accepted_ms < first)
            first = c->accepted_ms;
    if (first == UINT64_MAX) {
        uv_timer_stop(&srv->hello_timer);
        return;
    }
    uv_timer_start(&srv->hello_timer, on_hello_timer,
                   first + timeout > now ? first + timeout - now : 0, 0);
}

static void on_hello_timer(uv_timer_t *t)
{
    struct server *srv = t->data;
    uint64_t timeout = (uint64_t)srv->ctx->opts->hello_timeout_s * 1000;
    uint64_t now = uv_now(srv->ctx->loop);
    char text[160];

    snprintf(text, sizeof(text),
             "no hello within %u s of connecting (--hello-timeout); the connection is closed",
             srv->ctx->opts->hello_timeout_s);
    for (struct conn *c = srv->conns; c != NULL; c = c->next) {
        if (c->peer.hello || c->closing || now - c->accepted_ms < timeout)
            continue;
        log_warn(srv->ctx->log, CONN_WHO ": closed with LIMIT: %s", CONN_WHO_ARGS(c), text);
        refuse(c, MSG_E_LIMIT, text);
    }
    hello_timer_arm(srv);
}

/* Log the peers refused for lack of descriptors since the last such line. */
static void fd_log_flush(struct server *srv)
{
    struct rlimit rl = {0, 0};

    uv_timer_stop(&srv->fd_log_timer);
    if (srv->fd_refused == 0)
        return;
    getrlimit(RLIMIT_NOFILE, &rl);
    log_warn(srv->ctx->log,
             "refused %llu connections with LIMIT: no file descriptor left (%s; "
             "RLIMIT_NOFILE %llu, %u connections open); raise LimitNOFILE= (systemd) or "
             "lower --max-connections",
             (unsigned long long)srv->fd_refused, strerror(srv->fd_err),
             (unsigned long long)rl.rlim_cur, srv->nconns);
    srv->fd_refused = 0;
    srv->fd_logged_ms = uv_now(srv->ctx->loop) ? uv_now(srv->ctx->loop) : 1;
}

static void on_fd_log_timer(uv_timer_t *t)
{
    fd_log_flush(t->data);
}

/* accept() found no descriptor left: EMFILE (our RLIMIT_NOFILE) or ENFILE
 * (the system's). libuv would accept and close the peers silently; instead,
 * the spare descriptor makes room to accept one, tell it LIMIT and close it,
 * and the log says so: at most every FD_LOG_INTERVAL_MS, with the count of
 * the peers refused meanwhile, and a timer makes sure the last of them are
 * counted too, even if no refusal follows. Without a spare, accepting
 * pauses for ACCEPT_RETRY_MS rather than spin. */
static void refuse_for_fds(struct server *srv, int err)
{
    char text[256];
    msgpack_sbuffer sb;
    uint64_t now = uv_now(srv->ctx->loop);
    int fd = -1;

    srv->fd_err = err;
    snprintf(text, sizeof(text),
             "emad has no file descriptor left for a connection (%s); try again later",
             err == EMFILE ? "its open-file limit is reached" : "the system's limit is reached");
    if (srv->spare_fd >= 0) {
        close(srv->spare_fd);
        fd = accept4(srv->ls.fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0) {
            if (pack_refusal(&sb, MSG_E_LIMIT, text) == 0)
                (void)send(fd, sb.data, sb.size, MSG_DONTWAIT | MSG_NOSIGNAL);
            msgpack_sbuffer_destroy(&sb);
            close(fd);
            srv->fd_refused++;
        }
        srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    if (srv->fd_logged_ms == 0 || now - srv->fd_logged_ms >= FD_LOG_INTERVAL_MS)
        fd_log_flush(srv);
    else if (srv->fd_refused > 0 && !uv_is_active((uv_handle_t *)&srv->fd_log_timer))
        uv_timer_start(&srv->fd_log_timer, on_fd_log_timer,
                       srv->fd_logged_ms + FD_LOG_INTERVAL_MS - now, 0);
    if (fd < 0) {
        uv_poll_stop(&srv->listener);
        uv_timer_start(&srv->accept_timer, start_accepting, ACCEPT_RETRY_MS, 0);
    }
}

static void start_accepting(uv_timer_t *t)
{
    struct server *srv = t->data;

    if (!srv->stopping)
        uv_poll_start(&srv->listener, UV_READABLE, on_listen);
}

static const struct peer_ops conn_peer_ops = {
    .reply = conn_reply,
    .fail = conn_fail,
    .hold = conn_hold,
    .release = conn_release,
};

/* A connection accepted as fd: check the peer and start reading. */
static void conn_accept(struct server *srv, int fd)
{
    const struct emad_opts *opts = srv->ctx->opts;
    struct ucred cred;
    socklen_t len = sizeof(cred);
    struct conn *c;
    char text[256];

    c = calloc(1, sizeof(*c));
    if (c == NULL || uv_pipe_init(srv->ctx->loop, &c->pipe, 0) < 0) {
        free(c);
        close(fd);
        log_error(srv->ctx->log, "out of memory accepting a connection");
        return;
    }
    c->srv = srv;
    c->peer.ops = &conn_peer_ops;
    c->peer.id = ++srv->next_id;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    wire_decoder_init(&c->dec, opts->max_message, opts->max_depth);
    if (uv_pipe_open(&c->pipe, fd) < 0) {
        close(fd);
        conn_close(c, "cannot watch the accepted socket");
        return;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        conn_close(c, "cannot read peer credentials");
        return;
    }
    c->peer.uid = cred.uid;
    c->peer.gid = cred.gid;
    c->peer.pid = cred.pid;
    if (!peer_allowed(srv, fd, &cred)) {
        snprintf(text, sizeof(text),
                 "uid %ld is not allowed: emad (uid %ld) admits its own uid, root%s%s", (long)cred.uid,
                 (long)geteuid(), srv->ls.has_group ? " and members of group " : "",
                 srv->ls.has_group ? opts->allow_group : "");
        log_warn(srv->ctx->log, "refused connection from pid %ld: %s", (long)cred.pid, text);
        refuse(c, MSG_E_PERM, text);
        return;
    }
    if (over_connection_limits(srv, c, text, sizeof(text))) {
        log_warn(srv->ctx->log, "refused connection from pid %ld uid %ld: %s", (long)cred.pid,
                 (long)cred.uid, text);
        refuse(c, MSG_E_LIMIT, text);
        return;
    }
    log_debug(srv->ctx->log, "connection %llu from pid %ld uid %ld", (unsigned long long)c->peer.id,
              (long)cred.pid, (long)cred.uid);
    c->accepted_ms = uv_now(srv->ctx->loop);
    if (!uv_is_active((uv_handle_t *)&srv->hello_timer))
        hello_timer_arm(srv);
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

static void on_listen(uv_poll_t *h, int status, int events)
{
    struct server *srv = h->data;

    (void)events;
    if (status < 0) {
        log_warn(srv->ctx->log, "accept: %s", uv_strerror(status));
        return;
    }
    for (int i = 0; i < ACCEPT_BATCH && !srv->stopping; i++) {
        int fd = accept4(srv->ls.fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0) {
            conn_accept(srv, fd);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE)
            refuse_for_fds(srv, errno);
        else if (errno != EAGAIN && errno != EWOULDBLOCK)
            log_warn(srv->ctx->log, "accept on %s: %s", srv->ls.path, strerror(errno));
        return;
    }
}

int server_start(struct server *srv, struct emad *ctx, const struct listen_socket *ls,
                 const struct server_handlers *up)
{
    int rc;

    memset(srv, 0, sizeof(*srv));
    srv->ctx = ctx;
    srv->up = *up;
    srv->ls = *ls;
    srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    ctx->srv = srv;
    uv_timer_init(ctx->loop, &srv->accept_timer);
    srv->accept_timer.data = srv;
    uv_timer_init(ctx->loop, &srv->fd_log_timer);
    srv->fd_log_timer.data = srv;
    uv_timer_init(ctx->loop, &srv->in_stall_timer);
    srv->in_stall_timer.data = srv;
    uv_timer_init(ctx->loop, &srv->hello_timer);
    srv->hello_timer.data = srv;
    uv_timer_init(ctx->loop, &srv->resume_timer);
    srv->resume_timer.data = srv;
    if ((rc = uv_poll_init(ctx->loop, &srv->listener, ls->fd)) < 0)
        goto err_timer;
    srv->listener.data = srv;
    /* The fd is already listening (listen.c): only watch it. */
    if ((rc = uv_poll_start(&srv->listener, UV_READABLE, on_listen)) < 0)
        goto err_poll;
    return 0;

err_poll:
    uv_close((uv_handle_t *)&srv->listener, NULL);
err_timer:
    uv_close((uv_handle_t *)&srv->accept_timer, NULL);
    uv_close((uv_handle_t *)&srv->fd_log_timer, NULL);
    uv_close((uv_handle_t *)&srv->in_stall_timer, NULL);
    uv_close((uv_handle_t *)&srv->hello_timer, NULL);
    uv_close((uv_handle_t *)&srv->resume_timer, NULL);
    if (srv->spare_fd >= 0)
        close(srv->spare_fd);
    return rc;
}

static void on_listener_closed(uv_handle_t *h)
{
    struct server *srv = h->data;
    srv->listener_closed = true;
    maybe_stopped(srv);
}

static void on_hello_timer_closed(uv_handle_t *h)
{
    struct server *srv = h->data;

    uv_close((uv_handle_t *)&srv->resume_timer, on_listener_closed);
}

static void on_in_stall_timer_closed(uv_handle_t *h)
{
    struct server *srv = h->data;

    uv_close((uv_handle_t *)&srv->hello_timer, on_hello_timer_closed);
}

static void on_fd_log_timer_closed(uv_handle_t *h)
{
    struct server *srv = h->data;

    uv_close((uv_handle_t *)&srv->in_stall_timer, on_in_stall_timer_closed);
}

static void on_accept_timer_closed(uv_handle_t *h)
{
    struct server *srv = h->data;

    uv_close((uv_handle_t *)&srv->fd_log_timer, on_fd_log_timer_closed);
}

static void on_poll_closed(uv_handle_t *h)
{
    struct server *srv = h->data;

    /* Only now: a descriptor must not be closed while libuv polls it. */
    close(srv->ls.fd);
    srv->ls.fd = -1;
    if (srv->spare_fd >= 0)
        close(srv->spare_fd);
    srv->spare_fd = -1;
    uv_close((uv_handle_t *)&srv->accept_timer, on_accept_timer_closed);
}

void server_quiesce(struct server *srv)
{
    if (srv->stopping)
        return;
    srv->stopping = true;
    /* Unlink the path before closing the socket: a new emad may bind the
     * path at once, and must not have its socket removed by us. */
    listen_socket_unlink(&srv->ls);
    uv_timer_stop(&srv->accept_timer);
    fd_log_flush(srv); /* every refused peer is counted in the log */
    uv_timer_stop(&srv->in_stall_timer);
    uv_timer_stop(&srv->hello_timer);
    uv_timer_stop(&srv->resume_timer);
    uv_close((uv_handle_t *)&srv->listener, on_poll_closed);
    for (struct conn *c = srv->conns; c != NULL; c = c->next)
        if (!c->closing)
            uv_read_stop((uv_stream_t *)&c->pipe);
}

static void on_flush_timeout(uv_timer_t *t)
{
    struct server *srv = t->data;

    for (struct conn *c = srv->conns; c != NULL; c = c->next) {
        if (c->closing)
            continue;
        log_warn(srv->ctx->log,
                 "connection %llu (pid %ld): its peer did not read %zu bytes of replies within "
                 "%d ms of the stop; closed without them",
                 (unsigned long long)c->peer.id, (long)c->peer.pid, c->queued - c->op_bytes,
                 SERVER_FLUSH_TIMEOUT_MS);
        conn_close(c, NULL);
    }
}

void server_stop(struct server *srv, void (*on_stopped)(struct server *srv))
{
    if (srv->flushing)
        return;
    server_quiesce(srv);
    srv->flushing = true;
    srv->on_stopped = on_stopped;
    uv_timer_init(srv->ctx->loop, &srv->flush_timer);
    srv->flush_timer.data = srv;
    uv_timer_start(&srv->flush_timer, on_flush_timeout, SERVER_FLUSH_TIMEOUT_MS, 0);
    for (struct conn *c = srv->conns; c != NULL; c = c->next) {
        conn_flush(c);
        conn_close_if_flushed(c);
    }
    maybe_stopped(srv);
}
