/*
 * peer.h - what the request layers know of whoever sent a request: its
 * credentials, and four ways to answer it. The transport (server.c) fills
 * a struct peer for each connection and implements the operations; dispatch
 * and the session code answer through them and never name a connection,
 * so the calls between the layers go one way (the transport hands requests
 * up through the callbacks main.c gives it).
 */
#ifndef EMAD_PEER_H
#define EMAD_PEER_H

#include "msg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The longest error text a peer is sent (longer ones are cut). */
#define PEER_TEXT_MAX 512

struct peer;

struct peer_ops {
    /* Encode and queue the response to msgid; a failure closes the peer's
     * connection, so callers need not check. */
    void (*reply)(struct peer *p, uint32_t msgid, const struct msg_desc *d, const void *result);
    /* The error response {code, text} to msgid. */
    void (*fail)(struct peer *p, uint32_t msgid, const char *code, const char *text);
    /* An operation that will reply later holds the peer: it outlives its
     * connection until the matching release. bytes is the operation's
     * memory, counted against the peer's limits until then. */
    void (*hold)(struct peer *p, size_t bytes);
    void (*release)(struct peer *p, size_t bytes);
};

struct peer {
    const struct peer_ops *ops;
    uint64_t id;              /* for logs */
    uid_t uid;                /* credentials (SO_PEERCRED) */
    gid_t gid;
    pid_t pid;
    bool hello;               /* hello succeeded: set by dispatch, read by the transport's
                                 --hello-timeout */
    char client[64];          /* name given in hello */
};

static inline void peer_reply(struct peer *p, uint32_t msgid, const struct msg_desc *d,
                              const void *result)
{
    p->ops->reply(p, msgid, d, result);
}

static inline void peer_hold(struct peer *p, size_t bytes)
{
    p->ops->hold(p, bytes);
}

static inline void peer_release(struct peer *p, size_t bytes)
{
    p->ops->release(p, bytes);
}

/* The error response, its text formatted here (and escaped in the log by
 * the transport: it quotes what the peer sent). */
void peer_fail(struct peer *p, uint32_t msgid, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
