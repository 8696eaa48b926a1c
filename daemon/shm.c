/*
 * shm.c - POSIX shared memory for segments and shadows.
 */
#include "shm.h"
#include "errbuf.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

int shm_segment_open(const char *name, uid_t uid, struct shm_map *out, char *err, size_t errlen)
{
    struct stat st;
    char why[256];
    void *base;
    int fd, rc;

    out->base = NULL;
    out->len = 0;
    if (strncmp(name, SEG_NAME_PREFIX, strlen(SEG_NAME_PREFIX)) != 0 || strchr(name + 1, '/') ||
        strlen(name) > 255)
        return err_set(err, errlen, -EINVAL,
                    "shm \"%s\": a segment name has the form /emad-<name> (no other '/')", name);
    /* O_NOFOLLOW: /dev/shm is world-writable; a symlink there is never ours. */
    fd = shm_open(name, O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0);
    if (fd < 0)
        return err_set(err, errlen, -errno, "shm \"%s\": cannot open: %s", name, strerror(errno));
    if (fstat(fd, &st) < 0) {
        rc = err_set(err, errlen, -errno, "shm \"%s\": fstat: %s", name, strerror(errno));
        goto err_close;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = err_set(err, errlen, -EINVAL, "shm \"%s\" is not a regular shared-memory object", name);
        goto err_close;
    }
    if (st.st_uid != uid) {
        rc = err_set(err, errlen, -EACCES, "shm \"%s\" belongs to uid %ld, not to the peer (uid %ld)",
                  name, (long)st.st_uid, (long)uid);
        goto err_close;
    }
    if ((uint64_t)st.st_size < SEG_HEADER_BYTES) {
        rc = err_set(err, errlen, -EINVAL, "shm \"%s\" is %lld bytes, smaller than a segment header",
                  name, (long long)st.st_size);
        goto err_close;
    }
    base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = err_set(err, errlen, -errno, "shm \"%s\": mmap of %lld bytes: %s", name,
                  (long long)st.st_size, strerror(errno));
        goto err_close;
    }
    close(fd);
    if (seg_header_check(base, (uint64_t)st.st_size, why, sizeof(why)) < 0) {
        munmap(base, (size_t)st.st_size);
        return err_set(err, errlen, -EINVAL, "shm \"%s\": %s", name, why);
    }
    out->base = base;
    out->len = (size_t)st.st_size;
    return 0;

err_close:
    close(fd);
    return rc;
}

int shm_shadow_create(uid_t owner, size_t bytes, char *name, size_t namelen, struct shm_map *out,
                      char *err, size_t errlen)
{
    uint8_t rnd[12];
    size_t len = bytes < SEG_PAGE ? SEG_PAGE : bytes; /* mmap refuses 0 bytes */
    void *base;
    int fd = -1, rc;

    out->base = NULL;
    out->len = 0;
    for (int attempt = 0; attempt < 8 && fd < 0; attempt++) {
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
            return err_set(err, errlen, -EIO, "getrandom: %s", strerror(errno));
        /* The pid lets a garbage collector tell a dead emad's shadows from a
         * live one's; the random part makes the name unpredictable. */
        snprintf(name, namelen,
                 "/emad-shadow-%ld-%02x%02x%02x%02x%02x%02x%02x%02x%02x%02x%02x%02x",
                 (long)getpid(), rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7],
                 rnd[8], rnd[9], rnd[10], rnd[11]);
        fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST)
            return err_set(err, errlen, -errno, "cannot create shadow %s: %s", name,
                        strerror(errno));
    }
    if (fd < 0)
        return err_set(err, errlen, -EEXIST, "cannot find a free shadow name");
    if (ftruncate(fd, (off_t)len) < 0) {
        rc = err_set(err, errlen, -errno, "shadow %s: cannot size it to %zu bytes: %s", name, len,
                  strerror(errno));
        goto err_unlink;
    }
    /* Reserve the memory now: tmpfs allocates lazily, and a shadow that does
     * not fit would otherwise fault (SIGBUS) on its first write. */
    if ((rc = posix_fallocate(fd, 0, (off_t)len)) != 0) {
        rc = err_set(err, errlen, -rc, "shadow %s: cannot reserve %zu bytes in /dev/shm: %s", name,
                  len, strerror(rc));
        goto err_unlink;
    }
    if (owner != geteuid() && (fchown(fd, owner, (gid_t)-1) < 0 || fchmod(fd, 0400) < 0)) {
        rc = err_set(err, errlen, -errno, "shadow %s: cannot give it to uid %ld: %s", name,
                  (long)owner, strerror(errno));
        goto err_unlink;
    }
    base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = err_set(err, errlen, -errno, "shadow %s: mmap of %zu bytes: %s", name, len,
                  strerror(errno));
        goto err_unlink;
    }
    close(fd);
    out->base = base;
    out->len = len;
    return 0;

err_unlink:
    shm_unlink(name);
    close(fd);
    return rc;
}

int shm_collect_stale_shadows(bool (*in_use)(void *arg, const char *name), void *in_use_arg,
                              void (*cb)(void *arg, const char *name), void *arg)
{
    const char *prefix = "emad-shadow-";
    struct dirent *e;
    int removed = 0;
    DIR *d = opendir("/dev/shm");

    if (d == NULL)
        return -errno;
    while ((e = readdir(d)) != NULL) {
        char name[300], *end;
        struct stat st;
        long pid;
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
            continue;
        pid = strtol(e->d_name + strlen(prefix), &end, 10);
        if (end == e->d_name + strlen(prefix) || *end != '-' || pid <= 0)
            continue;
        if (pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode) ||
            st.st_uid != geteuid())
            continue;
        snprintf(name, sizeof(name), "/%s", e->d_name);
        if (in_use != NULL && in_use(in_use_arg, name))
            continue;
        if (shm_unlink(name) == 0) {
            removed++;
            if (cb != NULL)
                cb(arg, name);
        }
    }
    closedir(d);
    return removed;
}

void shm_unmap(struct shm_map *m)
{
    if (m->base != NULL)
        munmap(m->base, m->len);
    m->base = NULL;
    m->len = 0;
}

/* The guard of the mapping this thread is touching. Thread-local state is
 * the only way a signal handler can know what the interrupted code was
 * doing; nothing else in emad keeps state outside its context structs. */
static __thread struct shm_guard *active_guard;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
    struct shm_guard *g = active_guard;
    char *addr = si->si_addr;
    (void)uc;

    if (g != NULL && addr >= g->base && addr < g->base + g->len) {
        char *page = (char *)((uintptr_t)addr & ~(uintptr_t)(SEG_PAGE - 1));
        /* Zeros from here to the end: the faulting access is retried and
         * succeeds; the caller learns of it when it leaves the guard. */
        if (mmap(page, (size_t)(g->base + g->len - page), PROT_READ | PROT_WRITE,
                 MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED) {
            g->faulted = 1;
            return;
        }
    }
    /* Not ours: crash as SIGBUS would have crashed us. */
    signal(sig, SIG_DFL);
    raise(sig);
}

int shm_guard_install(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGBUS, &sa, NULL) < 0 ? -errno : 0;
}

void shm_guard_enter(struct shm_guard *g, const struct shm_map *m)
{
    g->base = m->base;
    g->len = m->len;
    g->faulted = 0;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    active_guard = g;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

int shm_guard_leave(struct shm_guard *g)
{
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    active_guard = NULL;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    return g->faulted ? -EFAULT : 0;
}
