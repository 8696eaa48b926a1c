/*
 * durable.h - replace a file so that a crash or a full disk leaves either the old file or the
 * whole new one: a temp file beside it (unique name, O_EXCL), written by the caller, fsynced,
 * renamed over the target, the directory fsynced. On any failure the temp file is removed and
 * the target is untouched.
 *
 *   struct durable d;
 *   durable_open(&d, AT_FDCWD, "out.safetensors", 0644, err, errlen);
 *   ... write(d.fd, ...) ...                  (on an error of the caller's: durable_abort(&d))
 *   durable_commit(&d, err, errlen);          (cleans up whatever it returns)
 */
#ifndef EMAD_DURABLE_H
#define EMAD_DURABLE_H

#include <stddef.h>
#include <sys/types.h>

struct durable {
    int fd;        /* the temp file, open for writing; -1 once committed or aborted */
    int dfd;       /* the target's directory */
    char *name;    /* the target's name in dfd (its last component) */
    char *tmp;     /* the temp file's name in dfd */
};

/*
 * Create the temp file for path (relative to dirfd, or AT_FDCWD; its directory must exist; the
 * caller keeps dirfd, which d never closes)
 * with mode (e.g. 0600 or 0644, before the umask is not applied: fchmod sets it exactly).
 * The target's last component is never followed if it is a link: rename replaces the link.
 * An existing target that is neither a regular file nor a link is refused (-EEXIST).
 * 0 or -errno, with a message naming the path.
 */
int durable_open(struct durable *d, int dirfd, const char *path, mode_t mode, char *err,
                 size_t errlen);

/* fsync, close, rename over the target, fsync the directory. 0 or -errno (the temp file is
 * removed, the target untouched, on a failure before the rename; a failed directory fsync
 * after it is reported, the file then being in place but perhaps not durable). Frees d. */
int durable_commit(struct durable *d, char *err, size_t errlen);

/* Close and remove the temp file; frees d. Safe to call twice. */
void durable_abort(struct durable *d);

/* write() all of buf across short writes and EINTR: 0 or -errno. */
int durable_write_all(int fd, const void *buf, size_t len);

#endif
