/*
 * dispatch.c - route requests to handlers through one table. The generic
 * part runs once for every method: look the method up, check the hello
 * rule, decode the params with the row's message descriptor (BADARG names
 * the field), call the handler with the typed request, free what decoding
 * allocated.
 */
#include "dispatch.h"

#include "metrics.h"
#include "server.h"
#include "session.h"
#include "version.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Every request body a handler may receive: decoded in place, on the stack. */
union request {
    struct msg_hello hello;
    struct msg_status status;
    struct msg_register reg;
    struct msg_event event;
    struct msg_swap swap;
    struct msg_file file;
    struct msg_close close;
    struct msg_drop drop;
    struct msg_empty empty;
    struct msg_snapshot snapshot;
};

typedef void (*handler_fn)(struct emad *ctx, struct peer *p, uint32_t msgid,
                           const union request *req);

enum {
    METHOD_ANYTIME = 1u << 0, /* allowed before hello (hello itself) */
};

struct method {
    const char *name;
    const struct msg_desc *params; /* decodes into the union member the handler reads */
    handler_fn fn;
    unsigned flags;
};

static const char *const features[] = {"status", "sessions", "pipelining", "save",
                                       "load",   "metrics",  "snapshots",  "export"};

static void handle_hello(struct emad *ctx, struct peer *p, uint32_t msgid,
                         const union request *r)
{
    const struct msg_hello *req = &r->hello;
    struct msg_hello_reply rep;
    struct msg_str feats[sizeof(features) / sizeof(features[0])];

    if (req->proto != WIRE_PROTO_VERSION) {
        peer_fail(p, msgid, MSG_E_VERSION,
                  "hello: protocol %llu is not supported; this emad %s speaks protocol %d",
                  (unsigned long long)req->proto, EMAD_VERSION, WIRE_PROTO_VERSION);
        return;
    }
    p->hello = true;
    if (msg_str_copy(req->client, p->client, sizeof(p->client)) < 0)
        snprintf(p->client, sizeof(p->client), "%.*s", (int)(sizeof(p->client) - 1),
                 req->client.ptr);
    char shown[LOG_ESCAPED_SIZE(sizeof(p->client))];
    log_debug(ctx->log, "connection %llu: hello from \"%s\" (pid %ld)",
              (unsigned long long)p->id,
              log_escape(p->client, strlen(p->client), shown, sizeof(shown)), (long)p->pid);
    for (size_t i = 0; i < sizeof(feats) / sizeof(feats[0]); i++)
        feats[i] = msg_str_c(features[i]);
    memset(&rep, 0, sizeof(rep));
    rep.proto = WIRE_PROTO_VERSION;
    rep.server = msg_str_c("emad " EMAD_VERSION);
    rep.pid = getpid();
    rep.workers = ctx->opts->workers;
    rep.features = feats;
    rep.nfeatures = sizeof(feats) / sizeof(feats[0]);
    peer_reply(p, msgid, &msg_hello_reply_desc, &rep);
}

static void handle_status(struct emad *ctx, struct peer *p, uint32_t msgid,
                          const union request *r)
{
    const struct msg_status *req = &r->status;
    struct msg_status_reply rep;
    int rc;

    memset(&rep, 0, sizeof(rep));
    rc = registry_states(ctx->sessions, p->uid, req, &rep.sessions, &rep.nsessions);
    if (rc == -ENOENT) {
        peer_fail(p, msgid, MSG_E_NOSESSION, "status: no session named \"%.*s\"",
                  (int)(req->session.len > 128 ? 128 : req->session.len), req->session.ptr);
        return;
    }
    if (rc < 0) {
        peer_fail(p, msgid, MSG_E_INTERNAL, "status: out of memory");
        return;
    }
    rep.server.server = msg_str_c("emad");
    rep.server.version = msg_str_c(EMAD_VERSION);
    rep.server.proto = WIRE_PROTO_VERSION;
    rep.server.pid = getpid();
    rep.server.uptime_seconds = (double)(uv_hrtime() - ctx->started_ns) / 1e9;
    rep.server.workers = ctx->opts->workers;
    rep.server.connections = ctx->srv->nconns;
    rep.server.sessions = ctx->sessions->count;
    rep.server.max_connections = ctx->opts->max_connections;
    rep.server.max_sessions = ctx->opts->max_sessions;
    rep.server.max_message = ctx->opts->max_message;
    rep.server.socket = msg_str_c(ctx->srv->ls.path);
    rep.server.state_dir = msg_str_c(ctx->opts->state_dir);
    peer_reply(p, msgid, &msg_status_reply_desc, &rep);
    registry_states_free(rep.sessions, rep.nsessions);
}

/* The register table's cross-field rules (row or column form) go beyond
 * what a descriptor checks. */
static void handle_register(struct emad *ctx, struct peer *p, uint32_t msgid,
                            const union request *r)
{
    char err[256];

    if (msg_register_check(&r->reg, err, sizeof(err)) < 0)
        peer_fail(p, msgid, MSG_E_BADARG, "register: %s", err);
    else
        session_register(ctx->sessions, p, msgid, &r->reg);
}

static void handle_event(struct emad *ctx, struct peer *p, uint32_t msgid,
                         const union request *r)
{
    session_event(ctx->sessions, p, msgid, &r->event);
}

static void handle_swap(struct emad *ctx, struct peer *p, uint32_t msgid, const union request *r)
{
    session_swap(ctx->sessions, p, msgid, &r->swap);
}

static void handle_save(struct emad *ctx, struct peer *p, uint32_t msgid, const union request *r)
{
    session_save(ctx->sessions, p, msgid, &r->file);
}

static void handle_load(struct emad *ctx, struct peer *p, uint32_t msgid, const union request *r)
{
    session_load(ctx->sessions, p, msgid, &r->file);
}

static void handle_close(struct emad *ctx, struct peer *p, uint32_t msgid,
                         const union request *r)
{
    session_close(ctx->sessions, p, msgid, &r->close);
}

static void handle_drop(struct emad *ctx, struct peer *p, uint32_t msgid, const union request *r)
{
    session_drop(ctx->sessions, p, msgid, &r->drop);
}

static void handle_snapshot(struct emad *ctx, struct peer *p, uint32_t msgid,
                            const union request *r)
{
    session_snapshot(ctx->sessions, p, msgid, &r->snapshot);
}

static void handle_snapshots(struct emad *ctx, struct peer *p, uint32_t msgid,
                             const union request *r)
{
    session_snapshots(ctx->sessions, p, msgid, &r->snapshot);
}

/* The exposition of docs/running.md "Metrics": names of sessions are their
 * owners' data, so a peer other than root sees the per-session series of
 * its own uid's sessions only. */
static void handle_metrics(struct emad *ctx, struct peer *p, uint32_t msgid, const union request *r)
{
    struct metrics_text t = {0};
    struct msg_metrics_reply rep;

    (void)r;
    if (metrics_render_ctx(ctx, p->uid == 0, p->uid, &t) < 0) {
        peer_fail(p, msgid, MSG_E_INTERNAL, "metrics: out of memory");
    } else {
        rep.text.ptr = t.data;
        rep.text.len = t.len;
        peer_reply(p, msgid, &msg_metrics_reply_desc, &rep);
    }
    metrics_text_free(&t);
}

static const struct method methods[] = {
    {"hello", &msg_hello_desc, handle_hello, METHOD_ANYTIME},
    {"status", &msg_status_desc, handle_status, 0},
    {"register", &msg_register_desc, handle_register, 0},
    {"event", &msg_event_desc, handle_event, 0},
    {"swap", &msg_swap_desc, handle_swap, 0},
    {"save", &msg_file_desc, handle_save, 0},
    {"load", &msg_file_desc, handle_load, 0},
    {"close", &msg_close_desc, handle_close, 0},
    {"drop", &msg_drop_desc, handle_drop, 0},
    {"metrics", &msg_empty_desc, handle_metrics, 0},
    {"snapshot", &msg_snapshot_desc, handle_snapshot, 0},
    {"snapshots", &msg_snapshot_desc, handle_snapshots, 0},
};

static const struct method *find_method(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (strlen(methods[i].name) == len && memcmp(methods[i].name, name, len) == 0)
            return &methods[i];
    return NULL;
}

void dispatch_request(void *arg, struct peer *p, const struct wire_msg *m)
{
    struct emad *ctx = arg;
    const struct method *meth = find_method(m->method, m->method_len);
    int shown = (int)(m->method_len > 64 ? 64 : m->method_len);
    union request req;
    char err[256];
    int rc;

    if (!p->hello && !(meth != NULL && (meth->flags & METHOD_ANYTIME))) {
        peer_fail(p, m->msgid, MSG_E_NOHELLO,
                  "%.*s: the first request on a connection must be hello", shown, m->method);
        return;
    }
    if (meth == NULL) {
        peer_fail(p, m->msgid, MSG_E_NOMETHOD, "no method named \"%.*s\"", shown, m->method);
        return;
    }
    if ((rc = msg_decode(meth->params, m->params, &req, err, sizeof(err))) < 0) {
        if (rc == -ENOMEM)
            peer_fail(p, m->msgid, MSG_E_INTERNAL, "%s: out of memory decoding params",
                      meth->params->name);
        else
            peer_fail(p, m->msgid, MSG_E_BADARG, "%s: %s", meth->params->name, err);
        return;
    }
    meth->fn(ctx, p, m->msgid, &req);
    msg_free(meth->params, &req);
}

void dispatch_closed(void *arg, struct peer *p)
{
    struct emad *ctx = arg;

    registry_peer_closed(ctx->sessions, p);
}
