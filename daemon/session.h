/*
 * session.h - sessions: one trainer's segment, its shadow, its EMA state and
 * the FIFO of its operations. Every change to a session goes through that
 * FIFO, so requests touching a session run in arrival order, and the data
 * work of each operation runs on the worker pool.
 *
 * This header is the sessions' interface to the rest of emad, and the
 * layout of the shadow object (which a restarted emad reads back). What the
 * session files share among themselves is in session_impl.h:
 *   registry.c  the sessions of every uid: names, lookup, limits, status
 *   session.c   one session's life: register, resume, close, drop; the
 *               request handlers that queue operations
 *   op.c        the FIFO of operations and their phases (loop thread)
 *   chunk.c     the operations' data work (worker threads only)
 *   record.c    the shadow's header and crash records
 *   persist.c   state files, journals, restart and adoption
 *   plan.c      tensors in chunks
 * The rules for session and tensor names are the contract's (proto/names.h).
 */
#ifndef EMAD_SESSION_H
#define EMAD_SESSION_H

#include "ema.h"
#include "emad.h"
#include "kernel.h"
#include "kernel_multi.h"
#include "msg.h"
#include "names.h"
#include "shm.h"

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct peer;
struct session;

/*
 * The shadow object starts with a header page that emad keeps current after
 * every operation: a restarted emad (even after SIGKILL) finds in it the
 * session's counters, and whether an operation on the shadow was cut short.
 * The tensors' shadows follow, at the offsets register reports. A session registered with
 * several profiles (config.profiles, profile.h) holds one shadow per profile, back to back:
 * profile p's tensors lie p * area_bytes after those offsets, area_bytes being one shadow's
 * bytes rounded up to SEG_TENSOR_ALIGN (status reports each profile's shadow_offset). With one
 * profile the object is laid out exactly as it was before profiles existed.
 */
#define SHADOW_HEADER_BYTES 4096u

/*
 * Clients number their events and swaps (seq) so that after a lost
 * connection they can send again whatever was not answered. The outcome of
 * the last few is remembered (in the shadow header, so that it survives a
 * crash of emad): an update already applied is answered from the record,
 * never applied twice.
 */
#define SEQ_RECORDS 16u

struct seq_record {
    uint64_t seq;              /* 0: empty */
    uint64_t updates;
    uint8_t action;            /* enum ema_action */
    uint8_t active;
    uint8_t started;
    uint8_t pad[5];
};
#define SHADOW_MAGIC "EMASHAD1"

struct shadow_header {
    char magic[8];          /* SHADOW_MAGIC */
    uint64_t seq_begun;     /* operations that started writing the shadow */
    uint64_t seq_done;      /* ... and that finished; differs after a cut-short one */
    uint64_t updates;
    uint64_t swaps;
    uint32_t started;
    uint32_t active;
    uint32_t has_last_time;
    uint32_t has_last_duration;
    uint64_t last_batch;
    uint64_t last_epoch;
    double last_duration;
    uint64_t interrupted;   /* a restart found seq_begun != seq_done (sticky until load) */
    uint64_t last_seq;      /* the highest client request seq applied */
    struct seq_record recent[SEQ_RECORDS];
    uint64_t home;          /* which state directory's emad made it (registry.home) */
    /* The event whose tensor work the redo records describe (see redo_rec). */
    uint64_t redo_of;       /* its seq_begun */
    uint64_t pending_seq;   /* its client seq (0: none) */
    uint32_t pending_action;/* its enum ema_action */
    uint32_t redo_pending;  /* cut short, taken back: waiting to be sent again */
    uint64_t redo_nchunks;  /* records that follow the shadow */
    uint64_t pending_batch; /* its time: a replay must carry the same */
    uint64_t pending_epoch;
    /* A session of replicas: the time of the leaders' last batch_end ([0]) and epoch_end ([1])
     * applied, bit k of has_end set when [k] is (zero in a header an older emad wrote: then
     * nothing is taken for a replay, as before). */
    uint32_t has_end;
    uint32_t pad_end;
    uint64_t end_batch[2];
    uint64_t end_epoch[2];
};

/*
 * A session with profiles keeps each profile's counters in the header page too, after struct
 * shadow_header (a session without profiles leaves these bytes zero, as they always were).
 */
#define SHADOW_PROFILES_AT 2048u
#define SHADOW_PROFILES_MAGIC "EMAPROF1"

struct shadow_profile_rec {
    char name[40];           /* NUL-terminated */
    uint64_t updates;
    uint64_t last_batch;
    double last_decay;
    uint32_t started;
    uint32_t has_last_decay;
};

struct shadow_profiles {
    char magic[8];           /* SHADOW_PROFILES_MAGIC */
    uint64_t count;
    struct shadow_profile_rec p[8];
};

_Static_assert(sizeof(struct shadow_header) <= SHADOW_PROFILES_AT, "header overlaps profiles");
_Static_assert(SHADOW_PROFILES_AT + sizeof(struct shadow_profiles) <= SHADOW_HEADER_BYTES,
               "profile records past the header page");

/*
 * Crash-exact updates. The shadow object ends with one record per chunk of
 * the plan. An event's tensor work goes block by block: the chunk's record
 * says which block is being written (undo_at), the kernel stores each old
 * shadow value into the record's undo just before writing the new one (the
 * rest of undo holding UNDO_UNSET), then done_to moves past the block.
 * Stores retire in program order, so after SIGKILL a record tells exactly
 * which elements the cut-short event wrote (those of a block caught halfway
 * are put back from undo), and the event sent again writes the others
 * only: applied once, as if nothing had happened.
 *
 * A session of K > 1 profiles writes blocks of REDO_BLOCK_ELEMS / K elements (redo_block_elems)
 * and, before writing one, copies the block of every shadow it writes (undo_profiles says which)
 * into undo, profile p's at p * n elements: the K shadows fit where one was.
 */
#define REDO_BLOCK_ELEMS 2048u
#define REDO_NONE UINT64_MAX
/* The byte undo is filled with before a block: all ones, a NaN. */
#define UNDO_UNSET 0xff

struct redo_rec {
    uint64_t seq;        /* the header's redo_of this record belongs to */
    uint64_t done_to;    /* elements of the chunk (plan order) written for good */
    uint64_t undo_at;    /* the block whose old values undo holds, REDO_NONE: none */
    uint64_t undo_count; /* elements in undo */
    uint64_t undo_profiles; /* K > 1 profiles: bit p, undo holds profile p's block */
    uint64_t pad[3];
    unsigned char undo[REDO_BLOCK_ELEMS * 8];
};

struct registry {
    struct emad *ctx;
    struct session *head;
    unsigned count;
    const struct kernel_ops *kops;
    const struct kernel_multi_ops *mops; /* the updates of sessions with profiles */
    void (*drained)(struct registry *r); /* called once no operation is left */
    char live_dir[PATH_MAX];             /* journals of running sessions ("" none) */
    uint64_t home;                       /* a hash of the state directory's path */
    bool share_warned;                   /* the no-ACL fallback was logged once */
    unsigned snap_in_flight;             /* snapshot writes not yet done (snapshot.h) */
};

int registry_init(struct registry *r, struct emad *ctx);
/* Unmap everything and remove the shadows (at exit). */
void registry_free(struct registry *r);
/* At a clean stop, write every session to dir (one state file each, with
 * its tensor table and owner); at the next start, bring them back detached
 * with their shadow and state, and remove the files. save_all returns 0 or
 * -EIO if a session could not be kept; restore_all the number restored or
 * -errno. They touch tensor data on the calling thread: only while the
 * daemon serves no one. */
int registry_save_all(struct registry *r, const char *dir);
int registry_restore_all(struct registry *r, const char *dir);
/* While emad runs, each session also has a journal in live_dir (its table,
 * config, owner and shadow name; written at register and load, removed at
 * close and drop). After a crash of emad the shadow objects remain: adopt_all
 * takes every journaled session whose shadow is intact back, detached, with
 * the counters of the shadow's header. Returns the number adopted or -errno. */
int registry_adopt_all(struct registry *r);
/* Whether the start-up collection of stale shadows must spare name: the
 * shadow of one of the sessions, or one made by an emad of another state
 * directory (whose own restart takes it back). */
bool registry_owns_shadow(void *registry, const char *name);
/* The peer's connection is gone: its sessions become detached. */
void registry_peer_closed(struct registry *r, struct peer *p);
/* The once-a-second health check of every session (stalls, docs/running.md "Health"); logs a
 * session that has just stalled. now_ns is uv_hrtime(). */
void registry_health_tick(struct registry *r, uint64_t now_ns);
/* Call cb once no operation is queued or running (at shutdown). */
void registry_drain(struct registry *r, void (*cb)(struct registry *r));

/* Request handlers: each answers the request (now or when its work is done). */
void session_register(struct registry *r, struct peer *p, uint32_t msgid,
                      const struct msg_register *req);
void session_event(struct registry *r, struct peer *p, uint32_t msgid,
                   const struct msg_event *req);
void session_swap(struct registry *r, struct peer *p, uint32_t msgid, const struct msg_swap *req);
void session_save(struct registry *r, struct peer *p, uint32_t msgid, const struct msg_file *req);
void session_load(struct registry *r, struct peer *p, uint32_t msgid, const struct msg_file *req);
void session_close(struct registry *r, struct peer *p, uint32_t msgid,
                   const struct msg_close *req);
void session_drop(struct registry *r, struct peer *p, uint32_t msgid, const struct msg_drop *req);
/* snapshot (after the queued events) and snapshots (the files of the peer's session). */
void session_snapshot(struct registry *r, struct peer *p, uint32_t msgid,
                      const struct msg_snapshot *req);
void session_snapshots(struct registry *r, struct peer *p, uint32_t msgid,
                       const struct msg_snapshot *req);
/* The state of every session visible to peer uid (all for root), or of the
 * one named by req (-ENOENT if none). Names are per uid: a peer names its
 * own sessions; root names its own, else the only one of that name (all of
 * them when several users have it), else "<uid>:<name>", which is how
 * other users' sessions are listed to root. *out is malloc'd, its strings
 * point into the sessions and stay valid until the loop runs again. */
int registry_states(struct registry *r, uid_t uid, const struct msg_status *req,
                    struct msg_session_state **out, size_t *n);
/* Free what registry_states made (with tensors: each session's table). */
void registry_states_free(struct msg_session_state *st, size_t n);

#endif
