/*
 * server.h - connections: accept with peer credentials, read and decode
 * requests, queue replies, enforce the per-connection limits, stop cleanly.
 * Complete requests go up through the handlers given at start; they answer
 * through the struct peer each request comes with (peer.h).
 */
#ifndef EMAD_SERVER_H
#define EMAD_SERVER_H

#include "emad.h"
#include "listen.h"
#include "msg.h"
#include "peer.h"
#include "wire.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

/* How long a stop waits for peers to read the replies of the work that
 * finished: a peer that does not read cannot hold emad's exit longer. */
#define SERVER_FLUSH_TIMEOUT_MS 5000

/* Bytes of read buffer every connection may hold outside --max-input-total:
 * a request of up to 64 KiB and the next read. Small peers always fit. */
#define SERVER_INPUT_FREE (128u << 10)

/* Reply bytes waiting for the peer: one growable buffer. */
struct outbuf {
    char *data;               /* malloc'd; NULL when empty */
    size_t size;              /* bytes of replies in it */
    size_t cap;               /* bytes allocated */
};

struct conn {
    uv_pipe_t pipe;           /* first: handle->data is unused, casts are safe */
    struct server *srv;
    struct conn *prev, *next; /* in srv->conns */
    uint64_t id;              /* for logs */
    struct peer peer;         /* what the layers above see: id, credentials, hello */
    struct wire_decoder dec;
    bool paused;              /* reading stopped: too many reply bytes queued */
    bool writing;             /* wreq is in flight with sending */
    bool out_failed;          /* a reply could not be allocated (the connection closes) */
    bool closing;
    bool closed;              /* the handle is closed; freed when refs drop to 0 */
    unsigned refs;            /* operations that will still reply to it: queued or
                                 running; --max-queued-requests bounds them */
    size_t op_bytes;          /* the memory of those operations, counted in queued */
    uv_write_t wreq;          /* the one write in flight: replies coalesce in out meanwhile */
    struct outbuf sending;    /* what wreq writes */
    struct outbuf out;        /* replies not yet handed to the socket */
    size_t queued;            /* bytes allocated for replies (sending + out) and for
                                 the operations that will reply (op_bytes), counted
                                 against --max-pending and, in srv, --max-pending-total */
    size_t in_held;           /* bytes of dec's buffer counted against --max-input-total:
                                 all of it once larger than SERVER_INPUT_FREE, else 0 */
    bool in_blocked;          /* reading stopped: the request needs more than
                                 --max-input-total leaves */
    uint64_t in_read_ms;      /* when bytes were last read (uv_now) */
    uint64_t accepted_ms;     /* when it was accepted (uv_now): --hello-timeout */
};

/* Where complete requests go: the layer above, wired by main.c. */
struct server_handlers {
    /* A decoded request from p; it is answered through p, now or later. */
    void (*request)(void *arg, struct peer *p, const struct wire_msg *m);
    /* p's connection is closed: no request of it follows. Operations that
     * hold p may still answer it (into the void) until they release it. */
    void (*closed)(void *arg, struct peer *p);
    void *arg;
};

struct server {
    struct emad *ctx;
    struct server_handlers up;
    uv_poll_t listener;       /* readable: connections to accept on ls.fd */
    uv_timer_t accept_timer;  /* accepting again after running out of descriptors */
    uv_timer_t flush_timer;   /* bounds the wait for peers to read at a stop */
    uv_timer_t fd_log_timer;  /* logs the peers refused since the last such line */
    uv_timer_t in_stall_timer; /* looks again at the requests waiting for --max-input-total */
    uv_timer_t hello_timer;   /* closes the connections past --hello-timeout */
    uv_timer_t resume_timer;  /* resumes, outside the operation that ended, the
                                 connections paused for their queued operations */
    int fd_err;               /* why they were refused: EMFILE or ENFILE */
    int spare_fd;             /* held to accept (and refuse) a peer when descriptors run out */
    uint64_t fd_refused;      /* peers refused for lack of descriptors, not yet logged */
    uint64_t fd_logged_ms;    /* when that was last logged (uv_now) */
    struct listen_socket ls;
    struct conn *conns;       /* open connections */
    unsigned nconns;
    unsigned nclosing;        /* of nconns, those closing: they take no place under the
                                 connection limits (a refused peer must not, even briefly) */
    size_t queued_total;      /* the sum of every connection's queued bytes */
    size_t in_total;          /* the sum of every connection's in_held */
    uint64_t next_id;
    bool stopping;            /* accepting and reading stopped */
    bool flushing;            /* connections close once their replies are written */
    bool listener_closed;
    bool flush_timer_closing;
    void (*on_stopped)(struct server *srv);
};

/* Take over ls and start accepting; requests go to up. 0 or a negative
 * libuv code. */
int server_start(struct server *srv, struct emad *ctx, const struct listen_socket *ls,
                 const struct server_handlers *up);
/* First step of a stop: stop accepting (the socket path is removed) and stop
 * reading requests. Replies of work already running still go out. */
void server_quiesce(struct server *srv);
/* Last step (quiesces first if needed): each connection closes once its
 * queued replies are written, or after SERVER_FLUSH_TIMEOUT_MS if its peer
 * does not read them; on_stopped runs once everything is closed. */
void server_stop(struct server *srv, void (*on_stopped)(struct server *srv));

/* Close c (its peer is told nothing more); why, if not NULL, is logged. */
void conn_close(struct conn *c, const char *why);

#endif
