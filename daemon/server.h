/*
 * server.h - connections: accept with peer credentials, read and decode
 * requests, queue replies, enforce the per-connection limits, stop cleanly.
 */
#ifndef EMAD_SERVER_H
#define EMAD_SERVER_H

#include "emad.h"
#include "listen.h"
#include "msg.h"
#include "wire.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

struct conn {
    uv_pipe_t pipe;           /* first: handle->data is unused, casts are safe */
    struct server *srv;
    struct conn *prev, *next; /* in srv->conns */
    uint64_t id;              /* for logs */
    struct wire_decoder dec;
    uid_t uid;                /* peer credentials (SO_PEERCRED) */
    gid_t gid;
    pid_t pid;
    bool hello;               /* hello succeeded */
    bool paused;              /* reading stopped: too many replies queued */
    bool closing;
    bool closed;              /* the handle is closed; freed when refs drop to 0 */
    unsigned refs;            /* operations that will still reply to it */
    char client[64];          /* name given in hello */
};

struct server {
    struct emad *ctx;
    uv_pipe_t listener;
    struct listen_socket ls;
    struct conn *conns;       /* open connections */
    unsigned nconns;
    uint64_t next_id;
    bool stopping;
    bool listener_closed;
    void (*on_stopped)(struct server *srv);
};

/* Take over ls and start accepting. 0 or a negative libuv code. */
int server_start(struct server *srv, struct emad *ctx, const struct listen_socket *ls);
/* Stop accepting, flush replies, close every connection, remove the socket;
 * on_stopped runs once everything is closed. */
void server_stop(struct server *srv, void (*on_stopped)(struct server *srv));

/* Replies. Each takes care of encoding and queueing; failures close the
 * connection, so callers need not check. */
void conn_reply(struct conn *c, uint32_t msgid, const struct msg_desc *d, const void *result);
void conn_reply_error(struct conn *c, uint32_t msgid, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void conn_close(struct conn *c, const char *why);
/* Operations in flight hold a reference: the struct outlives the socket
 * until they have replied (into the void, if the peer is gone). */
void conn_ref(struct conn *c);
void conn_unref(struct conn *c);
/* Tell the server that in-flight work ended (it may be waiting to stop). */
void server_check_stopped(struct server *srv);

#endif
