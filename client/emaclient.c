/*
 * emaclient.c - connection, hello, status and error handling of libemaclient.
 */
#include "emaclient.h"

#include "msg.h"
#include "version.h"
#include "wire.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define CLIENT_MAX_REPLY (64u << 20)

struct emac_client {
    int fd;
    uint32_t next_msgid;
    struct wire_decoder dec;
    char path[WIRE_SOCKET_PATH_MAX + 1];
    char server_name[64];
    struct emac_server info;
};

struct status_box {
    struct emac_status pub; /* first: the pointer users hold */
    char *raw;              /* the result map as received */
    size_t raw_len;
    char *arena;            /* NUL-terminated copies of every string */
    size_t arena_used, arena_cap;
};

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

static int send_all(emac_client *c, const char *p, size_t n, struct emac_error *err)
{
    while (n > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return set_err(err, -errno, EMAC_E_DISCONNECTED, "sending to emad at %s: %s",
                           c->path, strerror(errno));
        p += w;
        n -= (size_t)w;
    }
    return 0;
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

/* Wait for the response to msgid. On success *result points into the
 * decoder (valid until the next call). */
static int wait_reply(emac_client *c, uint32_t msgid, const char *what,
                      const msgpack_object **result, struct emac_error *err)
{
    struct wire_msg m;
    struct wire_fault f;

    for (;;) {
        int rc = wire_decoder_next(&c->dec, &m, &f);
        if (rc < 0)
            return set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: bad reply from emad: %s", what,
                           f.detail);
        if (rc > 0) {
            if (m.kind == WIRE_NOTIFY && m.method_len == strlen(MSG_NOTIFY_ERROR) &&
                memcmp(m.method, MSG_NOTIFY_ERROR, m.method_len) == 0)
                return remote_error(m.params, err, what);
            if (m.kind != WIRE_RESPONSE || m.msgid != msgid)
                continue; /* not ours: nothing else is outstanding today */
            if (m.error->type != MSGPACK_OBJECT_NIL)
                return remote_error(m.error, err, what);
            *result = m.result;
            return 0;
        }
        size_t room;
        char *p = wire_decoder_reserve(&c->dec, 64u << 10, &room);
        if (p == NULL)
            return set_err(err, -ENOMEM, EMAC_E_BADREPLY, "%s: reply too large", what);
        ssize_t n = recv(c->fd, p, room, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return set_err(err, n == 0 ? -ECONNRESET : -errno, EMAC_E_DISCONNECTED,
                           "%s: emad closed the connection (%s)", what,
                           n == 0 ? "end of stream" : strerror(errno));
        wire_decoder_commit(&c->dec, (size_t)n);
    }
}

/* One request and its reply. The reply is decoded into rep by rep_desc
 * (views valid until the next call), and *raw (if not NULL) gets it as
 * msgpack bytes, malloc'd. */
static int call(emac_client *c, const char *method, const struct msg_desc *req_desc,
                const void *req, const struct msg_desc *rep_desc, void *rep, char **raw,
                size_t *raw_len, struct emac_error *err)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    const msgpack_object *result = NULL;
    uint32_t id = c->next_msgid++;
    char why[256];
    int rc;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, id, method);
    msg_encode(&pk, req_desc, req);
    rc = send_all(c, sb.data, sb.size, err);
    msgpack_sbuffer_destroy(&sb);
    if (rc < 0) {
        /* emad may have refused us with an explanation before closing:
         * report its reason rather than the broken pipe. */
        struct emac_error why;
        if (wait_reply(c, id, method, &result, &why) != -EREMOTEIO)
            return rc;
        if (err != NULL)
            *err = why;
        return -EREMOTEIO;
    }
    if ((rc = wait_reply(c, id, method, &result, err)) < 0)
        return rc;
    if (msg_decode(rep_desc, result, rep, why, sizeof(why)) < 0)
        return set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: bad reply from emad: %s", method,
                       why);
    if (raw != NULL) {
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_object(&pk, *result);
        *raw = sb.data;
        *raw_len = sb.size;
    }
    return 0;
}

int emac_connect(const char *socket_path, const char *client_name, emac_client **out,
                 struct emac_error *err)
{
    struct sockaddr_un sa;
    struct msg_hello hello;
    struct msg_hello_reply rep;
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
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        rc = set_err(err, -errno, EMAC_E_CONNECT, "socket: %s", strerror(errno));
        goto err_free;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, c->path, strlen(c->path));
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        rc = set_err(err, -e, EMAC_E_CONNECT, "cannot connect to emad at %s: %s%s", c->path,
                     strerror(e),
                     e == ENOENT || e == ECONNREFUSED
                         ? " (is emad running? set --socket or EMAD_SOCKET)"
                         : e == EACCES ? " (no permission: ask for --allow-group)" : "");
        goto err_free;
    }
    memset(&hello, 0, sizeof(hello));
    hello.proto = EMAC_PROTO_VERSION;
    hello.client = msg_str_c(client_name ? client_name : "libemaclient " EMAD_VERSION);
    hello.has_pid = true;
    hello.pid = getpid();
    rc = call(c, "hello", &msg_hello_desc, &hello, &msg_hello_reply_desc, &rep, NULL, NULL, err);
    if (rc < 0)
        goto err_free;
    snprintf(c->server_name, sizeof(c->server_name), "%.*s", (int)rep.server.len,
             rep.server.ptr);
    c->info.server = c->server_name;
    c->info.proto = (unsigned)rep.proto;
    c->info.pid = (long)rep.pid;
    c->info.workers = (unsigned)rep.workers;
    msg_free(&msg_hello_reply_desc, &rep);
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
    if (c->fd >= 0)
        close(c->fd);
    wire_decoder_free(&c->dec);
    free(c);
}

/* ---- status ---- */

static const char *arena_str(struct status_box *b, struct msg_str s)
{
    char *p;
    if (s.ptr == NULL)
        return NULL;
    if (b->arena_used + s.len + 1 > b->arena_cap)
        return ""; /* cannot happen: the arena is sized from the reply */
    p = b->arena + b->arena_used;
    if (s.len)
        memcpy(p, s.ptr, s.len);
    p[s.len] = '\0';
    b->arena_used += s.len + 1;
    return p;
}

static void copy_session(struct status_box *b, struct emac_session_info *o,
                         const struct msg_session_state *s)
{
    o->session = arena_str(b, s->session);
    o->attached = s->attached;
    o->owner_pid = s->has_owner_pid ? (long)s->owner_pid : -1;
    o->tensors = s->tensors;
    o->params_bytes = s->params_bytes;
    o->shadow_bytes = s->shadow_bytes;
    o->smoothing = s->smoothing;
    o->half_life = s->has_half_life ? arena_str(b, s->half_life) : NULL;
    o->update_interval = arena_str(b, s->update_interval);
    o->ema_start = arena_str(b, s->ema_start);
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
    o->shm = arena_str(b, s->shm);
    o->shadow_shm = arena_str(b, s->shadow_shm);
}

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
        return set_err(err, -ENOMEM, EMAC_E_BADREPLY, "out of memory");
    rc = call(c, "status", &msg_status_desc, &req, &msg_status_reply_desc, &rep, &b->raw,
              &b->raw_len, err);
    if (rc < 0) {
        free(b);
        return rc;
    }
    /* Every string of the reply fits in the reply's own size, plus a NUL
     * for each, which takes at least one byte of msgpack header. */
    b->arena_cap = 2 * b->raw_len + 16;
    b->arena = malloc(b->arena_cap);
    b->pub.session_list = rep.nsessions ? calloc(rep.nsessions, sizeof(*b->pub.session_list))
                                        : NULL;
    if (b->arena == NULL || (rep.nsessions && b->pub.session_list == NULL)) {
        msg_free(&msg_status_reply_desc, &rep);
        emac_status_free(&b->pub);
        return set_err(err, -ENOMEM, EMAC_E_BADREPLY, "out of memory");
    }
    b->pub.server = arena_str(b, rep.server.server);
    b->pub.version = arena_str(b, rep.server.version);
    b->pub.proto = (unsigned)rep.server.proto;
    b->pub.pid = (long)rep.server.pid;
    b->pub.uptime_seconds = rep.server.uptime_seconds;
    b->pub.workers = (unsigned)rep.server.workers;
    b->pub.connections = (unsigned)rep.server.connections;
    b->pub.sessions = (unsigned)rep.server.sessions;
    b->pub.max_connections = (unsigned)rep.server.max_connections;
    b->pub.max_sessions = (unsigned)rep.server.max_sessions;
    b->pub.max_message = rep.server.max_message;
    b->pub.socket = arena_str(b, rep.server.socket);
    b->pub.state_dir = arena_str(b, rep.server.state_dir);
    b->pub.nsessions = rep.nsessions;
    for (size_t i = 0; i < rep.nsessions; i++)
        copy_session(b, &b->pub.session_list[i], &rep.sessions[i]);
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
    free(b->arena);
    free(b->raw);
    free(b);
}

void emac_status_raw(const struct emac_status *st, const void **data, size_t *len)
{
    const struct status_box *b = (const struct status_box *)st;
    *data = b->raw;
    *len = b->raw_len;
}
