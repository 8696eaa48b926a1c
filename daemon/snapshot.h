/*
 * snapshot.h - snapshots of a session's power profiles (docs/protocol.md "Snapshots"): every
 * snapshot_every batches, and on request, each power profile's shadow becomes a safetensors
 * file in the state directory, for post-hoc EMA (docs/posthoc.md).
 *
 * Two steps, so that the disk never stalls the session's next update:
 *   1. the copy (chunk.c chunk_snapshot, a phase of the event on the worker pool): each power
 *      profile's shadow into a buffer of the job, converted to the snapshot dtype; the event is
 *      answered once it is done, like any other;
 *   2. the write (snapshot_file.c, a libuv threadpool thread, outside the session's FIFO): each
 *      buffer to its file (temp file, fsync, rename: proto/durable.h), then the retention.
 * The write's result comes back to the loop (snap_start's callback): a failure is logged,
 * counted and reported on the session's next event reply and in status.
 *
 * Where the files live (docs/running.md "State directory"):
 *   <state dir>/snapshots/                   0711, emad's
 *       <uid>/                               0700, emad's; an ACL lets uid read and list it
 *           <session file name>/             the same (store_default_name of the session)
 *               <profile>-<batch>.<dtype>.safetensors   0600 + the ACL's read for uid
 * Every directory is opened relative to the one above it, never through a link, and refused
 * unless it is emad's and no one else may write it; files are written by durable.h under that
 * descriptor. Clients name no path: the session name (mapped) and the profile names (their own
 * safe alphabet) are the only parts that come from them.
 */
#ifndef EMAD_SNAPSHOT_H
#define EMAD_SNAPSHOT_H

#include "dtype.h"
#include "msg.h"
#include "names.h"
#include "profile.h"
#include "safetensors.h"
#include "store.h"

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#define SNAP_DIR "snapshots"
#define SNAP_SUFFIX ".safetensors"

struct session;
struct op;
struct registry;

/* A session's snapshot settings; every == 0: none but on request. */
struct snap_config {
    uint64_t every;  /* batches */
    enum dtype dtype;/* f32, bf16 or f16 */
    uint64_t keep;   /* files kept per profile; 0: all */
};

/* The dtype a snapshot or an export is written in: "f32", "bf16" or "f16" (0), or -EINVAL. */
int snap_dtype_parse(struct msg_str name, enum dtype *out);
/*
 * The snapshot settings of config c (NULL: the defaults) into out. has_power: the session has a
 * power profile (snapshot_every is refused without one: nothing would be snapshotted). -EINVAL
 * with a message naming the field.
 */
int snap_config_set(struct snap_config *out, const struct msg_config *c, bool has_power,
                    char *err, size_t errlen);
/* Whether an update at batch is followed by a snapshot. */
bool snap_due(const struct snap_config *c, uint64_t batch);

/* One profile of a job. */
struct snap_prof {
    unsigned index;              /* in the session's profiles */
    char name[PROFILE_NAME_MAX + 1];
    double gamma;
    bool has_sigma_rel;
    double sigma_rel;            /* configured by sigma_rel, or computed from gamma */
    uint64_t batch;              /* the batch of its last update: what its shadow is */
    char *buf;                   /* the shadow, converted: data_bytes */
    char file[PROFILE_NAME_MAX + 64]; /* its file's name */
    uint64_t bytes;              /* the file's size once written */
};

/* A snapshot of a session: made on the loop, filled by the copy, written by the writer. */
struct snap_job {
    uv_work_t work;
    struct session *s;           /* held: s->snap_pending counts the job until its callback */
    struct op *op;               /* a snapshot request waiting for the files, or NULL */
    uid_t uid;                   /* the session's owner */
    char state_dir[PATH_MAX];
    char session[NAMES_SESSION_MAX + 1];
    char dirname[STORE_NAME_MAX + 1]; /* the session's directory name */
    char dpath[PATH_MAX];        /* its path (snap_write) */
    struct snap_config cfg;
    uint64_t epoch;
    size_t ntensors;
    struct st_tensor *tensors;   /* names point into names */
    uint64_t *off;               /* each tensor's byte offset in a buffer */
    char *names;
    struct st_meta *shard_meta;  /* a shard session's metadata (job, rank, world_size,
                                    slice.NAME: docs/scaleout.md "The shard files") */
    size_t nshard_meta;
    char *shard_pool;            /* its strings */
    uint64_t data_bytes;         /* of one profile's buffer */
    unsigned nprof;
    struct snap_prof prof[PROFILE_MAX];
    void (*done)(struct snap_job *j); /* snap_start's callback */
    int rc;                      /* the write's result, with err */
    char err[1024];
};

/*
 * A job for s's power profiles that have been updated (on the loop thread). -ENOENT with a
 * message when there is none, -ENOMEM.
 */
int snap_job_new(struct session *s, struct snap_job **out, char *err, size_t errlen);
/*
 * A job exporting s's profile of that name (any schedule) in dtype, replacing the previous export
 * of that profile and dtype. -ESRCH with a message when s has no such profile, -ENOMEM.
 */
int snap_job_export(struct session *s, const char *profile, enum dtype dtype,
                    struct snap_job **out, char *err, size_t errlen);
void snap_job_free(struct snap_job *j);

/*
 * Write j's files on a thread of libuv's pool, then call done on the loop (j->rc and j->err say
 * how it went). s->snap_pending and the registry's count of writes in flight cover it until then.
 */
void snap_start(struct snap_job *j, void (*done)(struct snap_job *j));

/* ---- snapshot_file.c: the writer's side (any thread) ---- */

/* Write every profile's file, then apply the retention. 0, or the first -errno with j->err. */
int snap_write(struct snap_job *j);

/*
 * The snapshot files of uid's session (by name) in state_dir, by profile then batch: *out
 * (malloc'd, *n entries; its strings point into *pool, malloc'd too). No directory: none.
 * 0, or -errno with a message.
 */
int snap_list(const char *state_dir, uid_t uid, const char *session, struct msg_snapshot_entry **out,
              size_t *n, char **pool, char *err, size_t errlen);

/* The name of a snapshot file, parsed: 0, or -EINVAL for a name that is not one. */
int snap_name_parse(const char *name, char *profile, size_t plen, uint64_t *batch,
                    enum dtype *dtype);

#endif
