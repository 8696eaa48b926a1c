/*
 * emaclient.h - the C client of emad, the EMA daemon (libemaclient).
 *
 * emad keeps the exponential moving average of a trainer's weights in a
 * separate process. This library speaks its protocol (PROTOCOL.md, version
 * 1: msgpack-rpc over a Unix socket). This is the only header users include;
 * link with `pkg-config --libs emaclient`.
 *
 * Conventions
 *   - Functions return 0 on success or a negative errno-style code. When a
 *     struct emac_error is passed (it may be NULL), it is filled on failure:
 *     `code` is the contract's error code (BADARG, NOSESSION, ...) for errors
 *     emad reported, or one of the client-side codes below, and `message` a
 *     sentence naming the problem.
 *   - Results are returned through out-parameters and owned by the caller,
 *     who frees them with the matching *_free function.
 *
 * Thread safety
 *   An emac_client is not thread-safe: use one per thread, or serialise the
 *   calls on it. Distinct clients are independent. Results (emac_status)
 *   are plain memory and may be read from any thread.
 */
#ifndef EMACLIENT_H
#define EMACLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EMAC_PROTO_VERSION 1

/* Client-side error codes (besides the contract's codes of PROTOCOL.md §7). */
#define EMAC_E_CONNECT "CONNECT"           /* cannot reach emad at the socket path */
#define EMAC_E_DISCONNECTED "DISCONNECTED" /* emad closed the connection */
#define EMAC_E_BADREPLY "BADREPLY"         /* emad's reply did not follow the contract */
#define EMAC_E_USAGE "USAGE"               /* the caller passed invalid arguments */

/* ---- Errors ---- */

struct emac_error {
    char code[16];     /* "BADARG", "CONNECT", ...; "" when there was no error */
    char message[512]; /* human-readable, names the problem */
};

/* ---- Connections ---- */

typedef struct emac_client emac_client;

/* Resolve the socket path as emad does: explicit (if not NULL), then
 * $EMAD_SOCKET, then $XDG_RUNTIME_DIR/emad.sock, then /run/emad/emad.sock.
 * -ENAMETOOLONG if it does not fit a Unix socket address (107 bytes). */
int emac_socket_path(const char *explicit_path, char *out, size_t outlen);

/* Connect and say hello. socket_path may be NULL (resolved as above);
 * client_name identifies the caller in emad's logs. */
int emac_connect(const char *socket_path, const char *client_name, emac_client **out,
                 struct emac_error *err);
/* Close the connection and free the client. NULL is allowed. */
void emac_disconnect(emac_client *c);

/* What emad said in its hello reply. */
struct emac_server {
    const char *server; /* e.g. "emad 0.1.0" */
    unsigned proto;     /* protocol version */
    long pid;           /* emad's process id */
    unsigned workers;   /* worker threads */
};
const struct emac_server *emac_server_info(const emac_client *c);

/* ---- Status ---- */

/* One session, as status reports it (PROTOCOL.md §6). */
struct emac_session_info {
    const char *session;
    bool attached;             /* an owner connection is present */
    long owner_pid;            /* -1 while detached */
    uint64_t tensors;
    uint64_t params_bytes;
    uint64_t shadow_bytes;
    double smoothing;
    const char *half_life;     /* NULL when configured by smoothing */
    const char *update_interval;
    const char *ema_start;
    bool started;              /* the EMA has begun */
    bool active;               /* the EMA weights are swapped into the params */
    uint64_t updates;
    uint64_t swaps;
    bool has_last_time;        /* an event has been seen */
    uint64_t last_batch;
    uint64_t last_epoch;
    bool has_last_duration;
    double last_duration;
    double last_update_seconds; /* how long the last update took */
    const char *shm;            /* the trainer's segment */
    const char *shadow_shm;     /* the shadow's segment */
};

struct emac_status {
    const char *server;        /* "emad" */
    const char *version;       /* emad's version */
    unsigned proto;
    long pid;
    double uptime_seconds;
    unsigned workers;
    unsigned connections;      /* open connections, including this one */
    unsigned sessions;         /* sessions held */
    unsigned max_connections;
    unsigned max_sessions;
    uint64_t max_message;      /* bytes */
    const char *socket;        /* the path emad listens on ("" if unnamed) */
    const char *state_dir;     /* where save and load keep files */
    size_t nsessions;          /* entries in session_list */
    struct emac_session_info *session_list;
};

/* Ask for the daemon's status; session (may be NULL) restricts the list to
 * one session (NOSESSION if there is none of that name). */
int emac_status(emac_client *c, const char *session, struct emac_status **out,
                struct emac_error *err);
void emac_status_free(struct emac_status *st);
/* The status result exactly as received (a msgpack map), for tools that
 * print or forward it; valid until emac_status_free. */
void emac_status_raw(const struct emac_status *st, const void **data, size_t *len);

#ifdef __cplusplus
}
#endif

#endif
