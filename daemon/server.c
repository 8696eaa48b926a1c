/*
 * server.c - the connection layer of emad on libuv.
 */
#include "server.h"

#include "dispatch.h"
#include "session.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_CHUNK (64u << 10)

struct write_req {
    uv_write_t req;
    struct conn *conn;
    char *data;
};

static void conn_process(struct conn *c);

static struct log *conn_log(const struct conn *c)
{
    return c->srv->ctx->log;
}

static void maybe_stopped(struct server *srv)
{
    if (srv->stopping && srv->listener_closed && srv->nconns == 0 && srv->on_stopped) {
        void (*cb)(struct server *) = srv->on_stopped;
        srv->on_stopped = NULL;
        cb(srv);
    }
}

void server_check_stopped(struct server *srv)
{
    maybe_stopped(srv);
}

void conn_ref(struct conn *c)
{
    c->refs++;
}

void conn_unref(struct conn *c)
{
    if (--c->refs == 0 && c->closed)
        free(c);
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
    wire_decoder_free(&c->dec);
    registry_conn_closed(srv->ctx->sessions, c);
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
    if (why != NULL)
        log_info(conn_log(c), "connection %llu (pid %ld, uid %ld): closed: %s",
                 (unsigned long long)c->id, (long)c->pid, (long)c->uid, why);
    uv_read_stop((uv_stream_t *)&c->pipe);
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = (struct conn *)h;
    size_t room = 0;

    (void)suggested;
    buf->base = wire_decoder_reserve(&c->dec, READ_CHUNK, &room);
    buf->len = room > READ_CHUNK ? READ_CHUNK : room;
    if (buf->base == NULL)
        buf->len = 0; /* libuv reports UV_ENOBUFS to on_read */
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct conn *c = (struct conn *)s;

    (void)buf;
    if (n == UV_EOF) {
        conn_close(c, NULL);
        log_debug(conn_log(c), "connection %llu: peer closed", (unsigned long long)c->id);
        return;
    }
    if (n < 0) {
        conn_close(c, uv_strerror((int)n));
        return;
    }
    wire_decoder_commit(&c->dec, (size_t)n);
    conn_process(c);
}

static void resume_reading(struct conn *c)
{
    if (!c->paused || c->closing || c->srv->stopping)
        return;
    c->paused = false;
    conn_process(c); /* requests that arrived before the pause come first */
    if (!c->paused && !c->closing)
        uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

static void on_write(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct conn *c = w->conn;

    free(w->data);
    free(w);
    if (status < 0 && status != UV_ECANCELED) {
        conn_close(c, uv_strerror(status));
        return;
    }
    if (c->paused && uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) <=
                         c->srv->ctx->opts->max_pending / 2)
        resume_reading(c);
}

/* Queue the bytes of sb (taken over) for the peer. */
static void conn_send(struct conn *c, msgpack_sbuffer *sb)
{
    struct write_req *w;
    uv_buf_t b;
    int rc;

    if (c->closing) {
        msgpack_sbuffer_destroy(sb);
        return;
    }
    b = uv_buf_init(sb->data, (unsigned)sb->size);
    /* Most replies fit the socket buffer: written at once, they cost one
     * system call, where a queued write costs two more (libuv re-arms the
     * poll after it). With writes queued, try_write refuses (order kept). */
    rc = uv_try_write((uv_stream_t *)&c->pipe, &b, 1);
    if (rc == (int)b.len) {
        msgpack_sbuffer_destroy(sb);
        return;
    }
    if (rc < 0 && rc != UV_EAGAIN) {
        msgpack_sbuffer_destroy(sb);
        conn_close(c, uv_strerror(rc));
        return;
    }
    if (rc > 0) {
        b.base += rc;
        b.len -= (size_t)rc;
    }
    w = malloc(sizeof(*w));
    if (w == NULL) {
        msgpack_sbuffer_destroy(sb);
        conn_close(c, "out of memory for a reply");
        return;
    }
    w->conn = c;
    w->data = sb->data; /* b may start past it: the part try_write sent */
    sb->data = NULL;
    rc = uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, on_write);
    if (rc < 0) {
        free(w->data);
        free(w);
        conn_close(c, uv_strerror(rc));
        return;
    }
    /* A peer that does not read its replies stops being read: its queue is
     * bounded, and the daemon's memory with it. */
    if (!c->paused &&
        uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) > c->srv->ctx->opts->max_pending) {
        c->paused = true;
        uv_read_stop((uv_stream_t *)&c->pipe);
        log_debug(conn_log(c), "connection %llu: %zu reply bytes queued; reading paused",
                  (unsigned long long)c->id,
                  uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe));
    }
}

void conn_reply(struct conn *c, uint32_t msgid, const struct msg_desc *d, const void *result)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_response_head(&pk, msgid);
    msg_encode(&pk, d, result);
    conn_send(c, &sb);
}

static void send_error(struct conn *c, uint32_t msgid, const char *code, const char *text)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_response_error(&pk, msgid, code, text);
    conn_send(c, &sb);
}

void conn_reply_error(struct conn *c, uint32_t msgid, const char *code, const char *fmt, ...)
{
    char text[512], shown[LOG_ESCAPED_SIZE(sizeof(text))];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    /* The text quotes what the peer sent (names of methods, sessions,
     * tensors, files): escaped, it cannot forge log lines. */
    log_debug(conn_log(c), "connection %llu: request %u: %s: %s", (unsigned long long)c->id,
              msgid, code, log_escape(text, strlen(text), shown, sizeof(shown)));
    send_error(c, msgid, code, text);
}

/* Decode and dispatch every complete message buffered. */
static void conn_process(struct conn *c)
{
    struct wire_msg m;
    struct wire_fault f;
    int rc;

    while (!c->closing && !c->paused) {
        rc = wire_decoder_next(&c->dec, &m, &f);
        if (rc == 0)
            return;
        if (rc > 0) {
            if (m.kind == WIRE_REQUEST)
                dispatch_request(c, &m);
            else
                log_debug(conn_log(c), "connection %llu: ignored a %s from the client",
                          (unsigned long long)c->id,
                          m.kind == WIRE_RESPONSE ? "response" : "notification");
            continue;
        }
        if (!f.has_msgid) {
            char shown[LOG_ESCAPED_SIZE(sizeof(f.detail))];
            log_warn(conn_log(c), "connection %llu (pid %ld): %s; closing it",
                     (unsigned long long)c->id, (long)c->pid,
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

/* Tell a refused peer why before closing, as a notification it may read. */
static void refuse(struct conn *c, const char *code, const char *text)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uv_buf_t b;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_notify_head(&pk, MSG_NOTIFY_ERROR);
    msgpack_pack_map(&pk, 2);
    wire_pack_str(&pk, "code");
    wire_pack_str(&pk, code);
    wire_pack_str(&pk, "message");
    wire_pack_str(&pk, text);
    b = uv_buf_init(sb.data, (unsigned)sb.size);
    (void)uv_try_write((uv_stream_t *)&c->pipe, &b, 1);
    msgpack_sbuffer_destroy(&sb);
    conn_close(c, NULL);
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct server *srv = listener->data;
    const struct emad_opts *opts = srv->ctx->opts;
    struct ucred cred;
    socklen_t len = sizeof(cred);
    struct conn *c;
    uv_os_fd_t fd;
    char text[256];

    if (status < 0) {
        log_warn(srv->ctx->log, "accept: %s", uv_strerror(status));
        return;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL || uv_pipe_init(srv->ctx->loop, &c->pipe, 0) < 0) {
        free(c);
        log_error(srv->ctx->log, "out of memory accepting a connection");
        return;
    }
    c->srv = srv;
    c->id = ++srv->next_id;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    wire_decoder_init(&c->dec, opts->max_message, opts->max_depth);
    if (uv_accept(listener, (uv_stream_t *)&c->pipe) < 0) {
        conn_close(c, "accept failed");
        return;
    }
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        conn_close(c, "cannot read peer credentials");
        return;
    }
    c->uid = cred.uid;
    c->gid = cred.gid;
    c->pid = cred.pid;
    if (!peer_allowed(srv, fd, &cred)) {
        snprintf(text, sizeof(text),
                 "uid %ld is not allowed: emad (uid %ld) admits its own uid, root%s%s", (long)cred.uid,
                 (long)geteuid(), srv->ls.has_group ? " and members of group " : "",
                 srv->ls.has_group ? opts->allow_group : "");
        log_warn(srv->ctx->log, "refused connection from pid %ld: %s", (long)cred.pid, text);
        refuse(c, MSG_E_PERM, text);
        return;
    }
    if (srv->nconns > opts->max_connections) {
        snprintf(text, sizeof(text), "too many connections (limit %u, --max-connections)",
                 opts->max_connections);
        log_warn(srv->ctx->log, "refused connection from pid %ld: %s", (long)cred.pid, text);
        refuse(c, MSG_E_LIMIT, text);
        return;
    }
    log_debug(srv->ctx->log, "connection %llu from pid %ld uid %ld", (unsigned long long)c->id,
              (long)cred.pid, (long)cred.uid);
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

int server_start(struct server *srv, struct emad *ctx, const struct listen_socket *ls)
{
    int rc;

    memset(srv, 0, sizeof(*srv));
    srv->ctx = ctx;
    srv->ls = *ls;
    ctx->srv = srv;
    if ((rc = uv_pipe_init(ctx->loop, &srv->listener, 0)) < 0)
        return rc;
    srv->listener.data = srv;
    if ((rc = uv_pipe_open(&srv->listener, ls->fd)) < 0)
        goto err_close;
    /* The fd is already listening; uv_listen only starts watching it. */
    if ((rc = uv_listen((uv_stream_t *)&srv->listener, 128, on_connection)) < 0)
        goto err_close;
    return 0;

err_close:
    srv->listener_closed = false;
    uv_close((uv_handle_t *)&srv->listener, NULL);
    return rc;
}

static void on_listener_closed(uv_handle_t *h)
{
    struct server *srv = h->data;
    srv->listener_closed = true;
    maybe_stopped(srv);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    (void)status;
    free(req);
    conn_close(c, NULL);
}

void server_stop(struct server *srv, void (*on_stopped)(struct server *srv))
{
    if (srv->stopping)
        return;
    srv->stopping = true;
    srv->on_stopped = on_stopped;
    /* Unlink the path before closing the socket: a new emad may bind the
     * path at once, and must not have its socket removed by us. */
    listen_socket_unlink(&srv->ls);
    uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
    for (struct conn *c = srv->conns; c != NULL; c = c->next) {
        uv_shutdown_t *req;
        if (c->closing)
            continue;
        uv_read_stop((uv_stream_t *)&c->pipe);
        req = malloc(sizeof(*req));
        if (req == NULL) {
            conn_close(c, NULL);
            continue;
        }
        req->data = c;
        /* Replies already queued are flushed before the connection closes. */
        if (uv_shutdown(req, (uv_stream_t *)&c->pipe, on_shutdown) < 0) {
            free(req);
            conn_close(c, NULL);
        }
    }
}
