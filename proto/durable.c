/*
 * durable.c - temp file, fsync, rename, fsync the directory (see durable.h).
 */
#include "durable.h"

#include "errbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

static void durable_free(struct durable *d)
{
    if (d->dfd >= 0 && d->dfd != AT_FDCWD)
        close(d->dfd);
    d->dfd = -1;
    free(d->name);
    free(d->tmp);
    d->name = NULL;
    d->tmp = NULL;
}

/* A unique "."-hidden name beside the target; the fd or -errno. */
static int open_temp(struct durable *d, mode_t mode)
{
    static const char alnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    size_t n = strlen(d->name);
    unsigned char rnd[8];

    d->tmp = malloc(n + 16);
    if (d->tmp == NULL)
        return -ENOMEM;
    for (int attempt = 0; attempt < 100; attempt++) {
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
            return -EIO;
        memcpy(d->tmp, ".", 1);
        memcpy(d->tmp + 1, d->name, n);
        memcpy(d->tmp + 1 + n, ".tmp.", 5);
        for (int i = 0; i < 8; i++)
            d->tmp[n + 6 + i] = alnum[rnd[i] % (sizeof(alnum) - 1)];
        d->tmp[n + 14] = '\0';
        /* 0600 until fchmod: nobody else may open it while it is being written. */
        int fd = openat(d->dfd, d->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                        0600);
        if (fd >= 0) {
            if (fchmod(fd, mode) != 0) {
                int rc = -errno;
                close(fd);
                unlinkat(d->dfd, d->tmp, 0);
                return rc;
            }
            return fd;
        }
        if (errno != EEXIST)
            return -errno;
    }
    return -EEXIST;
}

int durable_open(struct durable *d, int dirfd, const char *path, mode_t mode, char *err,
                 size_t errlen)
{
    const char *slash;
    int rc;

    d->fd = -1;
    d->dfd = -1;
    d->name = NULL;
    d->tmp = NULL;
    if (path == NULL || path[0] == '\0')
        return err_set(err, errlen, -EINVAL, "no output path given");
    slash = strrchr(path, '/');
    if (slash != NULL && slash[1] == '\0')
        return err_set(err, errlen, -EISDIR, "%s: the path names a directory, not a file",
                       path);
    if (slash == NULL) {
        /* Its own descriptor of the caller's directory: the caller keeps dirfd. */
        d->dfd = dirfd == AT_FDCWD ? AT_FDCWD : fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
        if (d->dfd == -1)
            return err_set(err, errlen, -errno, "%s: cannot use its directory: %s", path,
                           strerror(errno));
        d->name = strdup(path);
    } else {
        /* "/x" lives in "/", "a/x" in "a". */
        size_t dlen = slash == path ? 1 : (size_t)(slash - path);
        char *dir = strndup(path, dlen);
        if (dir == NULL)
            return err_set(err, errlen, -ENOMEM, "%s: out of memory", path);
        d->dfd = openat(dirfd, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        rc = -errno;
        free(dir);
        if (d->dfd < 0) {
            d->dfd = -1;
            return err_set(err, errlen, rc, "%s: cannot open its directory: %s", path,
                           strerror(-rc));
        }
        d->name = strdup(slash + 1);
    }
    if (d->name == NULL) {
        durable_free(d);
        return err_set(err, errlen, -ENOMEM, "%s: out of memory", path);
    }
    /* rename() would replace a device node or an empty directory as readily as a file: a
     * mistyped path (/dev/sda) must fail, not vanish. A link is replaced, never followed. */
    struct stat st;
    if (fstatat(d->dfd, d->name, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISREG(st.st_mode) &&
        !S_ISLNK(st.st_mode)) {
        durable_free(d);
        return err_set(err, errlen, -EEXIST, "%s exists and is not a regular file: not replaced",
                       path);
    }
    rc = open_temp(d, mode);
    if (rc < 0) {
        free(d->tmp); /* never created: nothing to unlink */
        d->tmp = NULL;
        durable_free(d);
        return err_set(err, errlen, rc, "%s: cannot create a temporary file beside it: %s",
                       path, strerror(-rc));
    }
    d->fd = rc;
    return 0;
}

void durable_abort(struct durable *d)
{
    if (d->fd >= 0)
        close(d->fd);
    d->fd = -1;
    if (d->tmp != NULL && d->dfd != -1)
        unlinkat(d->dfd, d->tmp, 0);
    durable_free(d);
}

int durable_commit(struct durable *d, char *err, size_t errlen)
{
    int rc;

    if (d->fd < 0) {
        durable_abort(d);
        return err_set(err, errlen, -EBADF, "durable_commit: no file open");
    }
    /* The data must be on disk before the rename makes it the file of record; otherwise a
     * crash could leave the new name pointing at a file without its data. */
    if (fsync(d->fd) != 0) {
        rc = -errno;
        err_set(err, errlen, rc, "%s: fsync failed: %s", d->name, strerror(-rc));
        durable_abort(d);
        return rc;
    }
    /* close() reports delayed write errors on some file systems (NFS). */
    rc = close(d->fd);
    d->fd = -1;
    if (rc != 0) {
        rc = -errno;
        err_set(err, errlen, rc, "%s: close failed: %s", d->name, strerror(-rc));
        durable_abort(d);
        return rc;
    }
    if (renameat(d->dfd, d->tmp, d->dfd, d->name) != 0) {
        rc = -errno;
        err_set(err, errlen, rc, "%s: cannot rename the temporary file over it: %s", d->name,
                strerror(-rc));
        durable_abort(d);
        return rc;
    }
    free(d->tmp);
    d->tmp = NULL;
    /* The rename is durable only once the directory is. */
    if (d->dfd == AT_FDCWD)
        d->dfd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    rc = d->dfd >= 0 && fsync(d->dfd) == 0 ? 0 : -errno;
    if (rc < 0)
        err_set(err, errlen, rc, "%s: written, but fsync of its directory failed: %s", d->name,
                strerror(-rc));
    durable_free(d);
    return rc;
}

int durable_write_all(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;

    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0) /* a regular file never does this; do not spin if one does */
            return -EIO;
        p += (size_t)n;
        len -= (size_t)n;
    }
    return 0;
}
