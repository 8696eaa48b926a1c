/*
 * shm.h - open, verify and map trainers' segments; create shadows.
 */
#ifndef EMAD_SHM_H
#define EMAD_SHM_H

#include "segment.h"

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct shm_map {
    void *base;  /* NULL when not mapped */
    size_t len;
};

/* Open the trainer's segment by name (no O_CREAT) and map it read-write.
 * Refused (-EACCES, -EINVAL, ...) unless the name has the form /emad-*,
 * the object is a regular shm object owned by uid that no other user may
 * write (group and others have no write bit), and its header passes
 * seg_header_check. The header is copied once (under the SIGBUS guard) and
 * checked; *geo is that checked copy's geometry, the only one emad uses
 * from then on: the trainer may rewrite its header at any time. err names
 * the problem. */
int shm_segment_open(const char *name, uid_t uid, struct shm_map *out, struct seg_geometry *geo,
                     char *err, size_t errlen);

/* How a shadow is shared with its trainer (reader uid). */
enum shm_share {
    SHM_SHARE_OWN,  /* the reader is emad's own uid: nothing to grant */
    SHM_SHARE_ACL,  /* emad owns it (0600); an access ACL entry lets the reader read */
    SHM_SHARE_CHOWN /* the file system has no ACLs: given to the reader, mode 0400 */
};

/* Create a shadow object with an unpredictable name (/emad-shadow-<pid>-<random>,
 * O_EXCL, 0600) of at least bytes, mapped read-write. The object stays
 * emad's: reader (the trainer's uid) gets read access through a POSIX ACL
 * entry, so it can map it but neither write, resize nor chmod it. Only
 * where the file system refuses ACLs is it given to reader with mode 0400
 * (*share says which). */
int shm_shadow_create(uid_t reader, size_t bytes, char *name, size_t namelen, struct shm_map *out,
                      enum shm_share *share, char *err, size_t errlen);
/* Open an existing shadow (a crashed emad's, taken back) of exactly bytes,
 * owned by us or by reader, and map it read-write. One that reader owns
 * is taken back (chown to us, the ACL as above) where we can. */
int shm_shadow_open(const char *name, uid_t reader, size_t bytes, struct shm_map *out,
                    enum shm_share *share, char *err, size_t errlen);
void shm_unmap(struct shm_map *m);
/* Remove the shadows a dead emad of our uid left in /dev/shm (named
 * /emad-shadow-<pid>-..., pid no longer running). A running pid, even a
 * reused one, keeps its objects: never remove what may be live, nor what
 * in_use claims (shadows taken back after a crash). Returns the
 * number removed; names go to the log through cb (may be NULL). */
int shm_collect_stale_shadows(bool (*in_use)(void *arg, const char *name), void *in_use_arg,
                              void (*cb)(void *arg, const char *name), void *arg);

/*
 * SIGBUS guard, in the style of libwayland's wl_shm: a trainer may shrink
 * its segment (ftruncate) while emad reads or writes it, and the access
 * then faults; so may a shadow that could not be kept from its trainer (no
 * ACLs) or whose trainer is emad's own uid. Around every access to such a
 * mapping, a thread enters a guard naming it (or two); a fault inside one
 * maps anonymous memory over the rest of that mapping (so the access
 * completes, on zeros), and the guard reports -EFAULT when left. A fault
 * anywhere else is a real crash.
 */
struct shm_guard {
    char *base[2];                 /* the mappings guarded (NULL: none) */
    size_t len[2];
    volatile sig_atomic_t faulted; /* bit i: mapping i faulted */
};

/* Install the SIGBUS handler (once, at start). 0 or -errno. */
int shm_guard_install(void);
void shm_guard_enter(struct shm_guard *g, const struct shm_map *m);
/* Guard two mappings at once (b may be NULL): the segment and the shadow a
 * kernel reads and writes together. */
void shm_guard_enter2(struct shm_guard *g, const struct shm_map *a, const struct shm_map *b);
/* 0, or -EFAULT if a mapping faulted since enter (it is then unusable:
 * unmap it; g->faulted says which). */
int shm_guard_leave(struct shm_guard *g);

#endif
