/*
 * dispatch.c - route requests to handlers. Every handler receives a request
 * whose envelope is already valid; it decodes its params through msg.h.
 */
#include "dispatch.h"

#include "session.h"
#include "version.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef void (*handler_fn)(struct conn *c, const struct wire_msg *m);

struct method {
    const char *name;
    handler_fn fn;
};

static const char *const features[] = {"status", "sessions", "pipelining", "save", "load"};

/* Decode params or answer BADARG; true when the handler may go on. */
static bool decode_params(struct conn *c, const struct wire_msg *m, const struct msg_desc *d,
                          void *out)
{
    char err[256];
    int rc = msg_decode(d, m->params, out, err, sizeof(err));

    if (rc == 0)
        return true;
    if (rc == -ENOMEM)
        conn_reply_error(c, m->msgid, MSG_E_INTERNAL, "%s: out of memory decoding params",
                         d->name);
    else
        conn_reply_error(c, m->msgid, MSG_E_BADARG, "%s: %s", d->name, err);
    return false;
}

static void handle_hello(struct conn *c, const struct wire_msg *m)
{
    struct msg_hello req;
    struct msg_hello_reply rep;
    struct msg_str feats[sizeof(features) / sizeof(features[0])];

    if (!decode_params(c, m, &msg_hello_desc, &req))
        return;
    if (req.proto != WIRE_PROTO_VERSION) {
        conn_reply_error(c, m->msgid, MSG_E_VERSION,
                         "hello: protocol %llu is not supported; this emad %s speaks protocol %d",
                         (unsigned long long)req.proto, EMAD_VERSION, WIRE_PROTO_VERSION);
        return;
    }
    c->hello = true;
    if (msg_str_copy(req.client, c->client, sizeof(c->client)) < 0)
        snprintf(c->client, sizeof(c->client), "%.*s", (int)(sizeof(c->client) - 1),
                 req.client.ptr);
    char shown[LOG_ESCAPED_SIZE(sizeof(c->client))];
    log_debug(c->srv->ctx->log, "connection %llu: hello from \"%s\" (pid %ld)",
              (unsigned long long)c->id,
              log_escape(c->client, strlen(c->client), shown, sizeof(shown)), (long)c->pid);
    for (size_t i = 0; i < sizeof(feats) / sizeof(feats[0]); i++)
        feats[i] = msg_str_c(features[i]);
    memset(&rep, 0, sizeof(rep));
    rep.proto = WIRE_PROTO_VERSION;
    rep.server = msg_str_c("emad " EMAD_VERSION);
    rep.pid = getpid();
    rep.workers = c->srv->ctx->opts->workers;
    rep.features = feats;
    rep.nfeatures = sizeof(feats) / sizeof(feats[0]);
    conn_reply(c, m->msgid, &msg_hello_reply_desc, &rep);
}

static void handle_status(struct conn *c, const struct wire_msg *m)
{
    const struct emad *ctx = c->srv->ctx;
    struct msg_status req;
    struct msg_status_reply rep;
    int rc;

    if (!decode_params(c, m, &msg_status_desc, &req))
        return;
    memset(&rep, 0, sizeof(rep));
    rc = registry_states(ctx->sessions, c->uid, &req, &rep.sessions, &rep.nsessions);
    if (rc == -ENOENT) {
        conn_reply_error(c, m->msgid, MSG_E_NOSESSION, "status: no session named \"%.*s\"",
                         (int)(req.session.len > 128 ? 128 : req.session.len), req.session.ptr);
        return;
    }
    if (rc < 0) {
        conn_reply_error(c, m->msgid, MSG_E_INTERNAL, "status: out of memory");
        return;
    }
    rep.server.server = msg_str_c("emad");
    rep.server.version = msg_str_c(EMAD_VERSION);
    rep.server.proto = WIRE_PROTO_VERSION;
    rep.server.pid = getpid();
    rep.server.uptime_seconds = (double)(uv_hrtime() - ctx->started_ns) / 1e9;
    rep.server.workers = ctx->opts->workers;
    rep.server.connections = c->srv->nconns;
    rep.server.sessions = ctx->sessions->count;
    rep.server.max_connections = ctx->opts->max_connections;
    rep.server.max_sessions = ctx->opts->max_sessions;
    rep.server.max_message = ctx->opts->max_message;
    rep.server.socket = msg_str_c(c->srv->ls.path);
    rep.server.state_dir = msg_str_c(ctx->opts->state_dir);
    conn_reply(c, m->msgid, &msg_status_reply_desc, &rep);
    free(rep.sessions);
}

static void handle_register(struct conn *c, const struct wire_msg *m)
{
    struct msg_register req;
    char err[256];
    int rc;

    if (!decode_params(c, m, &msg_register_desc, &req))
        return;
    if ((rc = msg_register_check(&req, err, sizeof(err))) < 0)
        conn_reply_error(c, m->msgid, MSG_E_BADARG, "register: %s", err);
    else
        session_register(c->srv->ctx->sessions, c, m->msgid, &req);
    msg_free(&msg_register_desc, &req);
}

static void handle_event(struct conn *c, const struct wire_msg *m)
{
    struct msg_event req;

    if (decode_params(c, m, &msg_event_desc, &req))
        session_event(c->srv->ctx->sessions, c, m->msgid, &req);
}

static void handle_swap(struct conn *c, const struct wire_msg *m)
{
    struct msg_swap req;

    if (decode_params(c, m, &msg_swap_desc, &req))
        session_swap(c->srv->ctx->sessions, c, m->msgid, &req);
}

static void handle_save(struct conn *c, const struct wire_msg *m)
{
    struct msg_file req;

    if (decode_params(c, m, &msg_file_desc, &req))
        session_save(c->srv->ctx->sessions, c, m->msgid, &req, false);
}

static void handle_load(struct conn *c, const struct wire_msg *m)
{
    struct msg_file req;

    if (decode_params(c, m, &msg_file_desc, &req))
        session_save(c->srv->ctx->sessions, c, m->msgid, &req, true);
}

static void handle_close(struct conn *c, const struct wire_msg *m)
{
    struct msg_close req;

    if (decode_params(c, m, &msg_close_desc, &req))
        session_close(c->srv->ctx->sessions, c, m->msgid, &req);
}

static void handle_drop(struct conn *c, const struct wire_msg *m)
{
    struct msg_drop req;

    if (decode_params(c, m, &msg_drop_desc, &req))
        session_drop(c->srv->ctx->sessions, c, m->msgid, &req);
}

static const struct method methods[] = {
    {"hello", handle_hello},   {"status", handle_status}, {"register", handle_register},
    {"event", handle_event},   {"swap", handle_swap},     {"save", handle_save},
    {"load", handle_load},     {"close", handle_close},   {"drop", handle_drop},
};

static const struct method *find_method(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (strlen(methods[i].name) == len && memcmp(methods[i].name, name, len) == 0)
            return &methods[i];
    return NULL;
}

void dispatch_request(struct conn *c, const struct wire_msg *m)
{
    const struct method *meth = find_method(m->method, m->method_len);
    int shown = (int)(m->method_len > 64 ? 64 : m->method_len);

    if (!c->hello && !(meth != NULL && meth->fn == handle_hello)) {
        conn_reply_error(c, m->msgid, MSG_E_NOHELLO,
                         "%.*s: the first request on a connection must be hello", shown,
                         m->method);
        return;
    }
    if (meth == NULL) {
        conn_reply_error(c, m->msgid, MSG_E_NOMETHOD, "no method named \"%.*s\"", shown,
                         m->method);
        return;
    }
    meth->fn(c, m);
}
