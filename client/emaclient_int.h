/*
 * emaclient_int.h - what the files of libemaclient share and users never
 * see. The layers, each calling only down:
 *
 *   conn.c       the connection: hello, requests out, replies in (kept for
 *                later claims), the stash restore when it drops
 *   reconnect.c  the policy and the backoff; a new connection, then the
 *                resume hook, then what was outstanding sent again
 *   segment.c    the trainer's shared-memory segments (no I/O to emad)
 *   session.c    sessions, events, swaps, save/load/drop; installs the hooks
 *   status.c     status, and the copies of session states out of replies
 *
 * The connection reaches the sessions only through struct client_hooks.
 */
#ifndef EMACLIENT_INT_H
#define EMACLIENT_INT_H

#include "emaclient.h"

#include "dtype.h"
#include "msg.h"
#include "names.h"
#include "segment.h"
#include "wire.h"

#include <stdarg.h>

#define CLIENT_MAX_REPLY (64u << 20)
#define SEG_NAME_LEN 256 /* NAME_MAX and a NUL; ours are "/emad-" and 16 hex digits */

/* A request sent and not yet claimed. owner is the session of an event
 * ticket (emac_event_wait checks it), NULL for the blocking calls. req
 * holds the encoded request while it may have to be sent again on a new
 * connection: until its send completes, and until its reply for the
 * requests that are safe to repeat (events and swaps, numbered by seq;
 * status). */
struct outstanding {
    uint32_t msgid;
    const emac_session *owner;
    char *req;
    size_t req_len;
    bool replay;          /* keep req until the reply */
    enum abandon {
        KEPT,             /* a reply will come, or it is sent again on reconnecting */
        NOT_REPEATABLE,   /* sent whole on a connection that was lost */
        GAVE_UP,          /* lost, and no new connection came within the timeout */
        SESSION_GONE,     /* its session could not be resumed */
    } abandoned;          /* not KEPT: its wait fails, saying why */
};

/* A reply that arrived while the client waited for another one: the array
 * [error, result] packed as msgpack, kept until its request is claimed. */
struct held {
    uint32_t msgid;
    char *data;
    size_t len;
};

/* What the connection asks of the layer above it, without naming it. */
struct client_hooks {
    /* The connection dropped: put the training weights back wherever a
     * swap may have left the EMA weights in the params. Lists the
     * sessions restored in note ("a", "b"); returns how many. */
    size_t (*restore)(emac_client *c, char *note, size_t notelen);
    /* A new connection said hello: register every session again with
     * resume. A session emad will not give back is marked gone and its
     * requests abandoned; any other failure fails the attempt (a negative
     * code, err filled). Requests sent from here never reconnect. */
    int (*resume)(emac_client *c, struct emac_error *err);
    /* The client is being freed: its sessions must stop using it. */
    void (*detach)(emac_client *c);
};

struct emac_client {
    int fd;
    uint32_t next_msgid;
    struct wire_decoder dec;
    char path[WIRE_SOCKET_PATH_MAX + 1];
    char server_name[64];
    struct emac_server info;
    bool lost;                 /* the connection is gone: every request fails */
    bool refused;              /* emad sent a refusal before closing: do not reconnect */
    struct emac_reconnect rc;  /* the reconnect policy */
    unsigned reconnects;       /* successful reconnects so far */
    unsigned seed;             /* for the backoff's jitter */
    char client_name[128];     /* hello's client, said again on reconnect */
    char lost_why[384];        /* why, and what was restored, for later errors */
    struct outstanding *outs;  /* requests sent, replies not claimed */
    size_t nouts, outs_cap;
    struct held *held;         /* replies received before they were claimed */
    size_t nheld, held_cap;
    msgpack_unpacked claimed;  /* the last held reply claimed: views point here */
    char *claimed_data;        /* and into its bytes */
    const struct client_hooks *hooks; /* NULL until a session is registered */
    emac_session *sessions;    /* registered on this client (session.c's list) */
};

/* NUL-terminated copies of a reply's strings, in one block. */
struct arena {
    char *buf;
    size_t used, cap;
};

struct seg_tensor {
    enum dtype dt;
    uint64_t *shape; /* NULL when the spec had none */
    size_t ndim;
    uint64_t *slice; /* emac_segment_set_slice: global_shape then offsets, ndim each; or NULL */
};

struct emac_segment {
    char name[SEG_NAME_LEN];
    void *base;
    uint64_t bytes;
    size_t n;
    struct emac_tensor *tensors; /* public view, in spec order */
    struct seg_tensor *meta;     /* what register sends besides */
    bool has_group;              /* emac_segment_set_group: sent with register */
    char group_job[129];
    uint64_t group_rank, group_world, group_replicas;
};

struct emac_session {
    emac_client *c;          /* NULL once the client was disconnected */
    emac_session *next;      /* in c->sessions */
    emac_segment *seg;
    char *name;
    bool closed;             /* emac_close succeeded */
    bool restored;           /* the library copied the stash back */
    bool gone;               /* resume failed after a reconnect: unusable */
    char gone_why[640];
    uint64_t next_seq;       /* of the next event or swap */
    void *shadow_base;       /* read-only mapping of the shadow object */
    size_t shadow_map_bytes;
    struct emac_shadow *shadows;
    struct emac_session_info state; /* from the register reply */
    struct emac_profile_info *profiles; /* ... and its profiles (nprofiles) */
    size_t nprofiles;
    struct arena arena;
    uint64_t nonfinite;      /* the last event reply's non-finite params (0: none) */
    char nonfinite_tensor[NAMES_TENSOR_MAX + 1]; /* ... and the first tensor with one */
};

/* Whether a request may reconnect when the connection drops under it.
 * Those the reconnection itself sends (hello, resume) may not: a loss then
 * fails that attempt, and the backoff decides whether to try again. */
enum client_loss {
    LOSS_RECONNECTS,
    LOSS_FAILS,
};

/* ---- conn.c ---- */

int client_set_err(struct emac_error *err, int rc, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
struct outstanding *client_find_out(emac_client *c, uint32_t msgid);
void client_remove_out_at(emac_client *c, size_t i);
/* Forget the held reply i; its bytes are the caller's. */
char *client_take_held(emac_client *c, size_t i, size_t *len);
/* Write all of buf: 0 or -errno. */
int client_send_all(int fd, const char *buf, size_t len);
/* Connect a stream socket to path: 0 (*fd_out set) or -errno. */
int client_socket_connect(const char *path, int *fd_out);
/* hello on the current connection; fills c->info. */
int client_hello(emac_client *c, enum client_loss loss, struct emac_error *err);
/*
 * Send one request; *msgid tells which reply to wait for. replay: the
 * request may be sent again on a new connection until its reply comes
 * (events and swaps, which carry a seq; status). Any request whose send
 * failed is sent again after a reconnect: emad never saw all of it.
 */
int client_send(emac_client *c, const char *method, const struct msg_desc *req_desc,
                const void *req, const emac_session *owner, bool replay, enum client_loss loss,
                const char *what, uint32_t *msgid, struct emac_error *err);
/* Wait for msgid's reply and decode its result by rep_desc (views valid
 * until the next request); *raw (if not NULL) gets the result as msgpack
 * bytes, malloc'd. */
int client_wait_reply(emac_client *c, uint32_t msgid, enum client_loss loss, const char *what,
                      const struct msg_desc *rep_desc, void *rep, char **raw, size_t *raw_len,
                      struct emac_error *err);
/* One request and its reply. */
int client_call(emac_client *c, const char *method, const struct msg_desc *req_desc,
                const void *req, const struct msg_desc *rep_desc, void *rep, char **raw,
                size_t *raw_len, bool replay, enum client_loss loss, const char *what,
                struct emac_error *err);

/* ---- reconnect.c ---- */

/* The default policy, with EMAD_RECONNECT_TIMEOUT (seconds) applied. */
void client_reconnect_policy_from_env(struct emac_reconnect *r);
uint64_t client_now_ms(void);
/* Reconnect with a bounded, jittered exponential backoff (c->rc): 0 once a
 * new connection is up, the sessions resumed and what was outstanding
 * sent again; else DISCONNECTED, every outstanding request abandoned. */
int client_reconnect(emac_client *c, const char *what, struct emac_error *err);

/* ---- segment.c ---- */

/* Copy the stash back if swap_state says the EMA weights may be in the
 * params, after checking the header. 1 restored, 0 nothing to do, -EINVAL
 * bad header (why filled). */
int client_restore_mapping(void *base, uint64_t bytes, char *why, size_t whylen);

/* ---- status.c ---- */

/* A copy of s in a (NULL for a NULL s); "" if a is full, which cannot
 * happen for arenas sized from the reply. */
const char *client_arena_str(struct arena *a, struct msg_str s);
/* Bytes client_copy_session needs in an arena. */
size_t client_session_strings(const struct msg_session_state *s);
/* A session state's profiles: *out calloc'd (NULL when none), strings into a. 0 or -ENOMEM. */
int client_copy_profiles(struct arena *a, const struct msg_session_state *s,
                         struct emac_profile_info **out, size_t *n);
void client_copy_session(struct arena *a, struct emac_session_info *o,
                         const struct msg_session_state *s);

#endif
