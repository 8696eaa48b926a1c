/*
 * eio_shim.c - an LD_PRELOAD library for test_durable: emad's writes to chosen files fail with
 * EIO, or stall, so that a test can prove that a save which fails or is cut short leaves the
 * previous state file intact and is never reported as a success.
 *
 * Environment, read once when the library is loaded:
 *
 *   EMAD_TEST_EIO_MATCH  a substring of a path; only descriptors whose file's path contains it
 *                        are touched. Unset or empty: the shim does nothing.
 *   EMAD_TEST_EIO_AFTER  how many bytes a matching file may hold before its writes fail
 *                        (default 0). A write that would cross the limit is cut short at it (a
 *                        short write, as a filling disk gives) and the next one fails, so the
 *                        failure lands mid-file. Past the end of the file, every write succeeds
 *                        and only the fsync fails.
 *   EMAD_TEST_EIO_STALL  a path: instead of failing, the write or fsync that would fail creates
 *                        this file and blocks its thread for good. A test that waits for the file
 *                        to appear kills emad while the save is certainly midway, without
 *                        guessing how long to sleep.
 *   EMAD_TEST_EIO_DIR    the exact path of a directory: fsync and fdatasync of a descriptor open
 *                        on it fail with EIO (or stall), as they do when the disk fails while
 *                        the directory's new entries are written out. MATCH's substring would
 *                        also catch the files inside.
 *   EMAD_TEST_NO_ACL     set (to anything): setting a POSIX ACL fails with EOPNOTSUPP, as on a
 *                        /dev/shm mounted without ACL support, so that test_hostile can drive
 *                        emad's fallback of giving each shadow to its trainer's uid.
 *   EMAD_TEST_EIO_LOG    a file: every fsync, fdatasync and rename of emad (whatever the paths)
 *                        is appended to it as one line, "fsync PATH" or "rename FROM TO", in the
 *                        order emad made them, so that a test can prove that a directory was
 *                        synced after the rename it must make durable.
 *
 * write, pwrite and writev are limited by the file offset they write at; fsync and fdatasync of
 * a matching file always fail (or stall). A rename is logged once it has happened. Descriptors
 * are matched by their current path, read from /proc/self/fd at each call, rather than by
 * tracking open(): glibc's mkostemp() opens its file through an internal call that no
 * LD_PRELOAD can intercept. The lookup costs nothing
 * beside the writes of a test. Nothing here is mutable after load but the lazily resolved
 * pointers to the next definitions, so every thread of emad may call in at once.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>

static const char *match;      /* EMAD_TEST_EIO_MATCH; NULL: do nothing */
static uint64_t after;         /* EMAD_TEST_EIO_AFTER */
static const char *stall_path; /* EMAD_TEST_EIO_STALL; NULL: fail with EIO */
static const char *fail_dir;   /* EMAD_TEST_EIO_DIR; NULL: none */
static const char *log_path;   /* EMAD_TEST_EIO_LOG; NULL: no log */
static bool no_acl;            /* EMAD_TEST_NO_ACL */

__attribute__((constructor)) static void eio_shim_init(void)
{
    const char *m = getenv("EMAD_TEST_EIO_MATCH");
    const char *a = getenv("EMAD_TEST_EIO_AFTER");
    const char *s = getenv("EMAD_TEST_EIO_STALL");
    const char *dir = getenv("EMAD_TEST_EIO_DIR");
    const char *log = getenv("EMAD_TEST_EIO_LOG");

    after = a != NULL ? strtoull(a, NULL, 10) : 0;
    stall_path = s != NULL && s[0] != '\0' ? s : NULL;
    match = m != NULL && m[0] != '\0' ? m : NULL;
    fail_dir = dir != NULL && dir[0] != '\0' ? dir : NULL;
    log_path = log != NULL && log[0] != '\0' ? log : NULL;
    no_acl = getenv("EMAD_TEST_NO_ACL") != NULL;
}

/* The definition of name that this library hides (libc's, or a sanitizer's interceptor when
 * emad is built with one), looked up on first use: another library's constructor may write
 * before ours has run. Racing threads store the same pointer. */
static void *next_def(void **slot, const char *name)
{
    void *f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);

    if (f == NULL) {
        f = dlsym(RTLD_NEXT, name);
        __atomic_store_n(slot, f, __ATOMIC_RELEASE);
    }
    return f;
}

/* Declares `next`, the hidden definition of name (with name's own type, from libc's header). */
#define NEXT(name)                                                                           \
    static void *next_##name;                                                                \
    __typeof__(&name) next = (__typeof__(&name))next_def(&next_##name, #name);               \
    if (next == NULL) {                                                                      \
        errno = ENOSYS;                                                                      \
        return -1;                                                                           \
    }

/* fd's current path into path (PATH_MAX bytes); false if it has none. errno is kept. */
static bool fd_path(int fd, char *path)
{
    char link[32];
    int saved = errno;
    ssize_t n;

    if (fd < 0)
        return false;
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, path, PATH_MAX - 1);
    errno = saved;
    if (n < 0)
        return false;
    path[n] = '\0';
    return true;
}

/* Whether fd's file is one to fail. errno is kept: the caller's call decides it. */
static bool matches(int fd)
{
    char path[PATH_MAX];

    return match != NULL && fd_path(fd, path) && strstr(path, match) != NULL;
}

/* Whether fd is open on EMAD_TEST_EIO_DIR itself. */
static bool is_fail_dir(int fd)
{
    char path[PATH_MAX];

    return fail_dir != NULL && fd_path(fd, path) && strcmp(path, fail_dir) == 0;
}

/* Append "what a b" to EMAD_TEST_EIO_LOG in one write (O_APPEND: lines of threads that log at
 * once do not interleave). errno is kept. */
static void log_line(const char *what, const char *a, const char *b)
{
    char line[2 * PATH_MAX + 32];
    int saved = errno, fd, n;

    if (log_path == NULL)
        return;
    n = snprintf(line, sizeof(line), "%s %s%s%s\n", what, a, b != NULL ? " " : "",
                 b != NULL ? b : "");
    fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0) {
        if (n > 0 && (size_t)n < sizeof(line) && write(fd, line, (size_t)n) < 0)
            n = -1; /* nothing to do: the test sees the line missing */
        close(fd);
    }
    errno = saved;
}

/* The path a syscall's (dirfd, name) pair names, into out (PATH_MAX bytes). */
static void at_path(int dirfd, const char *name, char *out)
{
    char dir[PATH_MAX];

    int n;

    if (name[0] == '/' || dirfd == AT_FDCWD || !fd_path(dirfd, dir))
        n = snprintf(out, PATH_MAX, "%s", name);
    else
        n = snprintf(out, PATH_MAX, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_MAX)
        snprintf(out, PATH_MAX, "(too long)");
}

/* Log an fsync of fd. */
static void log_sync(int fd)
{
    char path[PATH_MAX];

    if (log_path != NULL && fd_path(fd, path))
        log_line("fsync", path, NULL);
}

/* How many of len bytes written at offset off stay below the limit. */
static size_t room(off_t off, size_t len)
{
    uint64_t at = off > 0 ? (uint64_t)off : 0;

    if (at >= after)
        return 0;
    return after - at < len ? (size_t)(after - at) : len;
}

/* The failure itself: EIO, or with EMAD_TEST_EIO_STALL, tell the test and never return. */
static int fault(void)
{
    if (stall_path != NULL) {
        int fd = open(stall_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd >= 0)
            close(fd);
        for (;;)
            pause();
    }
    errno = EIO;
    return -1;
}

ssize_t write(int fd, const void *buf, size_t len)
{
    NEXT(write);
    off_t off;
    size_t n;

    if (len == 0 || !matches(fd) || (off = lseek(fd, 0, SEEK_CUR)) < 0)
        return next(fd, buf, len);
    if ((n = room(off, len)) == 0)
        return fault();
    return next(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
    NEXT(pwrite);
    size_t n;

    if (len == 0 || !matches(fd))
        return next(fd, buf, len, off);
    if ((n = room(off, len)) == 0)
        return fault();
    return next(fd, buf, n, off);
}

/* On 64-bit glibc pwrite64 is another name of pwrite; a caller may use either. */
ssize_t pwrite64(int fd, const void *buf, size_t len, off64_t off)
{
    return pwrite(fd, buf, len, (off_t)off);
}

/* A writev that would cross the limit fails whole: trimming the vector buys no coverage. */
ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
    NEXT(writev);
    size_t len = 0;
    off_t off;

    for (int i = 0; i < iovcnt; i++)
        len += iov[i].iov_len;
    if (len == 0 || !matches(fd) || (off = lseek(fd, 0, SEEK_CUR)) < 0)
        return next(fd, iov, iovcnt);
    if (room(off, len) < len)
        return fault();
    return next(fd, iov, iovcnt);
}

int fsync(int fd)
{
    NEXT(fsync);

    log_sync(fd);
    return matches(fd) || is_fail_dir(fd) ? fault() : next(fd);
}

int fdatasync(int fd)
{
    NEXT(fdatasync);

    log_sync(fd);
    return matches(fd) || is_fail_dir(fd) ? fault() : next(fd);
}

int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
    NEXT(renameat);
    char from[PATH_MAX], to[PATH_MAX];
    int rc = next(olddirfd, oldpath, newdirfd, newpath);

    if (rc == 0 && log_path != NULL) {
        at_path(olddirfd, oldpath, from);
        at_path(newdirfd, newpath, to);
        log_line("rename", from, to);
    }
    return rc;
}

int rename(const char *oldpath, const char *newpath)
{
    return renameat(AT_FDCWD, oldpath, AT_FDCWD, newpath);
}

int fsetxattr(int fd, const char *name, const void *value, size_t size, int flags)
{
    NEXT(fsetxattr);

    if (no_acl && strncmp(name, "system.posix_acl_", 17) == 0) {
        errno = EOPNOTSUPP;
        return -1;
    }
    return next(fd, name, value, size, flags);
}
