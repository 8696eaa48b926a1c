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
 * the object is a regular shm object owned by uid, and its header passes
 * seg_header_check. err names the problem. */
int shm_segment_open(const char *name, uid_t uid, struct shm_map *out, char *err, size_t errlen);
/* Create a shadow object with an unpredictable name (/emad-shadow-<pid>-<random>,
 * O_EXCL, 0600) of at least bytes, mapped read-write. When owner differs
 * from our uid the object is given to owner, read-only, so the trainer can
 * map it but not change it. */
int shm_shadow_create(uid_t owner, size_t bytes, char *name, size_t namelen, struct shm_map *out,
                      char *err, size_t errlen);
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
 * then faults. Around every access to a trainer's mapping, a thread enters
 * a guard naming that mapping; a fault inside it maps anonymous memory over
 * the rest of the mapping (so the access completes, on zeros), and the
 * guard reports -EFAULT when left. A fault anywhere else is a real crash.
 */
struct shm_guard {
    char *base;
    size_t len;
    volatile sig_atomic_t faulted;
};

/* Install the SIGBUS handler (once, at start). 0 or -errno. */
int shm_guard_install(void);
void shm_guard_enter(struct shm_guard *g, const struct shm_map *m);
/* 0, or -EFAULT if the mapping faulted since enter (it is then unusable:
 * unmap it). */
int shm_guard_leave(struct shm_guard *g);

#endif
