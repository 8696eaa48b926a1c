/*
 * conn.c - libemaclient's connection to emad: hello, requests out and
 * replies in (a reply to a request not yet claimed is kept for its claim),
 * and, when the connection drops, the stash restore (through the hooks)
 * and the hand-over to reconnect.c. Never calls into sessions directly.
 */
#include "emaclient_int.h"

#include "version.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int client_set_err(struct emac_error *err, int rc, const char *code, const char *fmt, ...)
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
/* ---- requests out, replies in ---- */

struct outstanding *client_find_out(emac_client *c, uint32_t msgid)
{
    for (size_t i = 0; i < c->nouts; i++)
        if (c->outs[i].msgid == msgid)
            return &c->outs[i];
    return NULL;
}

void client_remove_out_at(emac_client *c, size_t i)
{
    free(c->outs[i].req);
    c->outs[i] = c->outs[--c->nouts];
}

static void remove_out(emac_client *c, uint32_t msgid)
{
    struct outstanding *o = client_find_out(c, msgid);
    if (o != NULL)
        client_remove_out_at(c, (size_t)(o - c->outs));
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

char *client_take_held(emac_client *c, size_t i, size_t *len)
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
        return client_set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: malformed error from emad: %s",
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
    return client_set_err(err, -ENOTCONN, EMAC_E_DISCONNECTED, "%s: not connected to emad: %s", what,
                   c->lost_why);
}

/*
 * The connection is gone (end of stream, reset, broken pipe). Whatever
 * happened to emad, a segment whose swap_state is not TRAIN has the
 * training weights in its stash: have them copied back now, so that the
 * trainer never goes on with the EMA weights without knowing.
 */
static int connection_lost(emac_client *c, int rc, const char *what, const char *why,
                           struct emac_error *err)
{
    char note[256] = "";
    size_t count = c->hooks != NULL ? c->hooks->restore(c, note, sizeof(note)) : 0;

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
    return client_set_err(err, rc, EMAC_E_DISCONNECTED, "%s: %s", what, c->lost_why);
}

static bool may_reconnect(const emac_client *c, enum client_loss loss)
{
    return loss == LOSS_RECONNECTS && c->rc.enabled && !c->refused;
}

/* The connection is gone: restore the segments (connection_lost), then,
 * where the policy and loss allow, reconnect. 0 once a new connection is up
 * and the sessions resumed (the caller goes on), else a negative code with
 * err. */
static int connection_down(emac_client *c, int rc, enum client_loss loss, const char *what,
                           const char *why, struct emac_error *err)
{
    int lost = connection_lost(c, rc, what, why, err);

    if (!may_reconnect(c, loss))
        return lost;
    return client_reconnect(c, what, err);
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
static int read_message(emac_client *c, enum client_loss loss, const char *what,
                        struct wire_msg *m, struct emac_error *err)
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
            return client_set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: bad reply from emad: %s", what,
                           f.detail);
        }
        if (rc > 0)
            return 0;
        ssize_t n = recv_more(c, 0);
        if (n > 0)
            continue;
        if (n == -ENOMEM)
            return client_set_err(err, -ENOMEM, EMAC_E_BADREPLY, "%s: reply too large", what);
        int e = n == 0 ? ECONNRESET : (int)-n;
        rc = connection_down(c, -e, loss, what, n == 0 ? "end of stream" : strerror(e), err);
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
        c->claimed_data = client_take_held(c, i, &len);
        remove_out(c, msgid);
        if (msgpack_unpack_next(&c->claimed, c->claimed_data, len, &off) !=
            MSGPACK_UNPACK_SUCCESS)
            return client_set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: kept reply unreadable", what);
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
    struct outstanding *o = client_find_out(c, msgid);
    enum abandon why = o ? o->abandoned : KEPT;

    if (why == KEPT)
        return 0;
    remove_out(c, msgid);
    if (why == NOT_REPEATABLE)
        return client_set_err(err, -ENOTCONN, EMAC_E_DISCONNECTED,
                       "%s: the connection to emad was lost while the request was in flight; "
                       "the client reconnected, but this request is not one that can safely "
                       "be sent twice, and it may or may not have been carried out: check "
                       "(emac_status) and retry", what);
    if (why == SESSION_GONE)
        return client_set_err(err, -ENOTCONN, EMAC_E_DISCONNECTED,
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
static int wait_response(emac_client *c, uint32_t msgid, enum client_loss loss,
                         const char *what, const msgpack_object **error,
                         const msgpack_object **result, struct emac_error *err)
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
        if ((rc = read_message(c, loss, what, &m, err)) < 0) {
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
        if (client_find_out(c, m.msgid) != NULL && hold_reply(c, &m) < 0)
            return client_set_err(err, -ENOMEM, EMAC_E_BADREPLY, "%s: out of memory", what);
    }
}

int client_wait_reply(emac_client *c, uint32_t msgid, enum client_loss loss, const char *what,
                      const struct msg_desc *rep_desc, void *rep, char **raw, size_t *raw_len,
                      struct emac_error *err)
{
    const msgpack_object *error = NULL, *result = NULL;
    char why[256];
    int rc;

    if ((rc = wait_response(c, msgid, loss, what, &error, &result, err)) < 0)
        return rc;
    if (error->type != MSGPACK_OBJECT_NIL)
        return remote_error(error, err, what);
    if (msg_decode(rep_desc, result, rep, why, sizeof(why)) < 0)
        return client_set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: bad reply from emad: %s", what, why);
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

int client_send_all(int fd, const char *buf, size_t len)
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
            if (m.kind == WIRE_RESPONSE && client_find_out(c, m.msgid) != NULL &&
                hold_reply(c, &m) < 0)
                return 0;
            continue;
        }
        if (recv_more(c, MSG_DONTWAIT) <= 0)
            return 0;
    }
}

int client_send(emac_client *c, const char *method, const struct msg_desc *req_desc,
                const void *req, const emac_session *owner, bool replay, enum client_loss loss,
                const char *what, uint32_t *msgid, struct emac_error *err)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    struct outstanding *o;
    uint32_t id;
    int rc;

    if (c->lost) {
        if (!may_reconnect(c, loss))
            return lost_error(c, what, err);
        if ((rc = client_reconnect(c, what, err)) < 0)
            return rc;
    }
    id = c->next_msgid++;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, id, method);
    msg_encode(&pk, req_desc, req);
    if (sb.data == NULL || add_out(c, id, owner, sb.data, sb.size, replay) < 0) {
        msgpack_sbuffer_destroy(&sb);
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
    }
    o = client_find_out(c, id);
    rc = client_send_all(c->fd, o->req, o->req_len);
    if (rc == 0) {
        if (!replay) {
            o = client_find_out(c, id);
            free(o->req);
            o->req = NULL;
        }
        *msgid = id;
        return 0;
    }
    /* Either emad's refusal (a notification), or the connection is gone:
     * then reconnecting sends this request again, with the others. */
    if ((rc = read_refusal(c, what, err)) < 0 ||
        (rc = connection_down(c, rc, loss, what, "broken pipe", err)) < 0) {
        remove_out(c, id); /* the caller is told it failed: never send it later */
        return rc;
    }
    *msgid = id;
    return 0;
}

int client_call(emac_client *c, const char *method, const struct msg_desc *req_desc,
                const void *req, const struct msg_desc *rep_desc, void *rep, char **raw,
                size_t *raw_len, bool replay, enum client_loss loss, const char *what,
                struct emac_error *err)
{
    uint32_t id;
    int rc = client_send(c, method, req_desc, req, NULL, replay, loss, what, &id, err);

    if (rc < 0)
        return rc;
    return client_wait_reply(c, id, loss, what, rep_desc, rep, raw, raw_len, err);
}
int client_socket_connect(const char *path, int *fd_out)
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

int client_hello(emac_client *c, enum client_loss loss, struct emac_error *err)
{
    struct msg_hello hello;
    struct msg_hello_reply rep;
    int rc;

    memset(&hello, 0, sizeof(hello));
    hello.proto = EMAC_PROTO_VERSION;
    hello.client = msg_str_c(c->client_name);
    hello.has_pid = true;
    hello.pid = getpid();
    rc = client_call(c, "hello", &msg_hello_desc, &hello, &msg_hello_reply_desc, &rep, NULL, NULL,
                     false, loss, "hello", err);
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
int emac_connect(const char *socket_path, const char *client_name, emac_client **out,
                 struct emac_error *err)
{
    emac_client *c;
    int rc;

    if (out == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_connect: out is NULL");
    *out = NULL;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return client_set_err(err, -ENOMEM, EMAC_E_CONNECT, "out of memory");
    c->fd = -1;
    c->next_msgid = 1;
    msgpack_unpacked_init(&c->claimed);
    snprintf(c->client_name, sizeof(c->client_name), "%s",
             client_name ? client_name : "libemaclient " EMAD_VERSION);
    c->seed = (unsigned)getpid() ^ (unsigned)client_now_ms();
    rc = emac_socket_path(socket_path, c->path, sizeof(c->path));
    if (rc < 0) {
        if (rc == -ENAMETOOLONG)
            client_set_err(err, rc, EMAC_E_USAGE, "socket path is longer than %d bytes",
                    WIRE_SOCKET_PATH_MAX);
        else
            client_set_err(err, rc, EMAC_E_USAGE, "socket path is empty");
        goto err_free;
    }
    wire_decoder_init(&c->dec, CLIENT_MAX_REPLY, WIRE_DEFAULT_MAX_DEPTH);
    if ((rc = client_socket_connect(c->path, &c->fd)) < 0) {
        int e = -rc;
        client_set_err(err, rc, EMAC_E_CONNECT, "cannot connect to emad at %s: %s%s", c->path,
                strerror(e),
                e == ENOENT || e == ECONNREFUSED
                    ? " (is emad running? set --socket or EMAD_SOCKET)"
                    : e == EACCES ? " (no permission: ask for --allow-group)" : "");
        goto err_free;
    }
    /* The first hello is not retried: a caller that cannot connect at all
     * is told at once. The policy applies from here on. */
    if ((rc = client_hello(c, LOSS_FAILS, err)) < 0)
        goto err_free;
    client_reconnect_policy_from_env(&c->rc);
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
    if (c->hooks != NULL)
        c->hooks->detach(c);
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
