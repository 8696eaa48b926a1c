/*
 * shm.c - POSIX shared memory for segments and shadows.
 */
#include "shm.h"
#include "errbuf.h"
#include "names.h"

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
#include <sys/xattr.h>
#include <unistd.h>

int shm_segment_open(const char *name, uid_t uid, struct shm_map *out, struct seg_geometry *geo,
                     char *err, size_t errlen)
{
    struct seg_header h;
    struct shm_guard g;
    struct shm_map m;
    struct stat st;
    char why[256];
    int fd, rc;

    out->base = NULL;
    out->len = 0;
    if (strncmp(name, SEG_NAME_PREFIX, strlen(SEG_NAME_PREFIX)) != 0 || strchr(name + 1, '/') ||
        strlen(name) > 255)
        return err_set(err, errlen, -EINVAL,
                    "shm \"%s\": a segment name has the form /emad-<name> (no other '/')", name);
    /* O_NOFOLLOW: /dev/shm is world-writable; a symlink there is never ours.
     * O_NONBLOCK: the owner may hold a lease on its object, and an open that
     * breaks a lease sleeps (up to fs.lease-break-time) on the loop thread,
     * freezing every session: fail at once instead. */
    fd = shm_open(name, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0);
    if (fd < 0 && errno == EWOULDBLOCK)
        return err_set(err, errlen, -EBUSY, "shm \"%s\" is leased by its owner (F_SETLEASE): "
                       "emad does not wait for a lease to break; release it and register again",
                       name);
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
    /* Anyone who can write the params can change what emad averages, and
     * what it swaps in: the segment is the trainer's alone (docs/protocol.md "Segment header"). */
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        rc = err_set(err, errlen, -EACCES, "shm \"%s\" has mode 0%03o: other users can write it; "
                  "create it with mode 0600 (or fchmod it to 0600) and register again", name,
                  (unsigned)(st.st_mode & 0777));
        goto err_close;
    }
    if ((uint64_t)st.st_size < SEG_HEADER_BYTES) {
        rc = err_set(err, errlen, -EINVAL, "shm \"%s\" is %lld bytes, smaller than a segment header",
                  name, (long long)st.st_size);
        goto err_close;
    }
    m.len = (size_t)st.st_size;
    m.base = mmap(NULL, m.len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m.base == MAP_FAILED) {
        rc = err_set(err, errlen, -errno, "shm \"%s\": mmap of %lld bytes: %s", name,
                  (long long)st.st_size, strerror(errno));
        goto err_close;
    }
    close(fd);
    /* One copy, checked: the trainer may rewrite the header, or shrink the
     * object, at any moment from now on. */
    shm_guard_enter(&g, &m);
    memcpy(&h, m.base, sizeof(h));
    if (shm_guard_leave(&g) < 0) {
        munmap(m.base, m.len);
        return err_set(err, errlen, -EINVAL, "shm \"%s\" shrank while emad read its header", name);
    }
    if (seg_header_check(&h, (uint64_t)m.len, why, sizeof(why)) < 0) {
        munmap(m.base, m.len);
        return err_set(err, errlen, -EINVAL, "shm \"%s\": %s", name, why);
    }
    geo->params_offset = h.params_offset;
    geo->params_bytes = h.params_bytes;
    geo->stash_offset = h.stash_offset;
    geo->segment_bytes = h.segment_bytes;
    *out = m;
    return 0;

err_close:
    close(fd);
    return rc;
}

/* The access ACL of a shadow, in the kernel's extended-attribute format
 * (linux/posix_acl_xattr.h): a version, then entries sorted by tag. */
#define ACL_XATTR_VERSION 2u
enum { ACL_TAG_USER_OBJ = 1, ACL_TAG_USER = 2, ACL_TAG_GROUP_OBJ = 4, ACL_TAG_MASK = 0x10,
       ACL_TAG_OTHER = 0x20 };
#define ACL_NO_ID UINT32_MAX

struct acl_entry {
    uint16_t tag;
    uint16_t perm;
    uint32_t id;
};

/* Let reader read the object and nobody but its owner (us) write it:
 * user::rw- user:<reader>:r-- group::--- mask::r-- other::---. A reader that
 * is not the owner can neither chmod, chown nor truncate it. */
static int grant_read(int fd, uid_t reader)
{
    struct {
        uint32_t version;
        struct acl_entry e[5];
    } __attribute__((packed)) acl = {
        ACL_XATTR_VERSION,
        {{ACL_TAG_USER_OBJ, 6, ACL_NO_ID},
         {ACL_TAG_USER, 4, (uint32_t)reader},
         {ACL_TAG_GROUP_OBJ, 0, ACL_NO_ID},
         {ACL_TAG_MASK, 4, ACL_NO_ID},
         {ACL_TAG_OTHER, 0, ACL_NO_ID}},
    };

    return fsetxattr(fd, "system.posix_acl_access", &acl, sizeof(acl), 0) < 0 ? -errno : 0;
}

/* Share a shadow emad owns with reader: the ACL, or where the file system
 * has none, the object itself (chown, 0400). */
static int share_shadow(int fd, const char *name, uid_t reader, enum shm_share *share, char *err,
                        size_t errlen)
{
    int rc;

    *share = SHM_SHARE_OWN;
    if (reader == geteuid())
        return 0;
    if ((rc = grant_read(fd, reader)) == 0) {
        *share = SHM_SHARE_ACL;
        return 0;
    }
    if (rc != -EOPNOTSUPP && rc != -ENOTSUP)
        return err_set(err, errlen, rc, "shadow %s: cannot let uid %ld read it (ACL): %s", name,
                       (long)reader, strerror(-rc));
    if (fchown(fd, reader, (gid_t)-1) < 0 || fchmod(fd, 0400) < 0)
        return err_set(err, errlen, -errno, "shadow %s: cannot give it to uid %ld: %s", name,
                       (long)reader, strerror(errno));
    *share = SHM_SHARE_CHOWN;
    return 0;
}

int shm_shadow_create(uid_t reader, size_t bytes, char *name, size_t namelen, struct shm_map *out,
                      enum shm_share *share, char *err, size_t errlen)
{
    unsigned char rnd[NAMES_SHADOW_RANDOM];
    size_t len = bytes < SEG_PAGE ? SEG_PAGE : bytes; /* mmap refuses 0 bytes */
    void *base;
    int fd = -1, rc;

    out->base = NULL;
    out->len = 0;
    for (int attempt = 0; attempt < 8 && fd < 0; attempt++) {
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
            return err_set(err, errlen, -EIO, "getrandom: %s", strerror(errno));
        if (names_shadow_format(name, namelen, (long)getpid(), rnd) < 0)
            return err_set(err, errlen, -ENAMETOOLONG, "cannot name a shadow in %zu bytes",
                           namelen);
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
    if ((rc = share_shadow(fd, name, reader, share, err, errlen)) < 0)
        goto err_unlink;
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

int shm_shadow_open(const char *name, uid_t reader, size_t bytes, struct shm_map *out,
                    enum shm_share *share, char *err, size_t errlen)
{
    struct stat st;
    void *base;
    int fd, rc;

    out->base = NULL;
    out->len = 0;
    *share = SHM_SHARE_OWN;
    /* O_NONBLOCK: a trainer given its shadow (no ACLs) may lease it. */
    fd = shm_open(name, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0);
    if (fd < 0)
        return err_set(err, errlen, -errno, "shadow %s: cannot open: %s", name, strerror(errno));
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        (st.st_uid != geteuid() && st.st_uid != reader) || (uint64_t)st.st_size != bytes) {
        rc = err_set(err, errlen, -ENOENT, "shadow %s is missing or not as journaled", name);
        goto out;
    }
    /* Made by an emad that gave shadows away (no ACLs then, or an older
     * emad): take it back, so that its reader can no longer resize it. */
    if (st.st_uid != geteuid()) {
        if (fchown(fd, geteuid(), (gid_t)-1) < 0 || fchmod(fd, 0600) < 0)
            *share = SHM_SHARE_CHOWN;
        else if ((rc = share_shadow(fd, name, reader, share, err, errlen)) < 0)
            goto out;
    }
    base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = err_set(err, errlen, -errno, "shadow %s: mmap of %zu bytes: %s", name, bytes,
                     strerror(errno));
        goto out;
    }
    out->base = base;
    out->len = bytes;
    rc = 0;
out:
    close(fd);
    return rc;
}

int shm_collect_stale_shadows(bool (*in_use)(void *arg, const char *name), void *in_use_arg,
                              void (*cb)(void *arg, const char *name), void *arg)
{
    struct dirent *e;
    int removed = 0;
    DIR *d = opendir("/dev/shm");

    if (d == NULL)
        return -errno;
    while ((e = readdir(d)) != NULL) {
        char name[300];
        struct stat st;
        /* Only names of the form emad gives its shadows (names.h): 0 for
         * anything else, which is not ours to remove. */
        long pid = names_shadow_pid(e->d_name);
        if (pid == 0)
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

    for (int i = 0; g != NULL && i < 2; i++) {
        if (g->base[i] == NULL || addr < g->base[i] || addr >= g->base[i] + g->len[i])
            continue;
        char *page = (char *)((uintptr_t)addr & ~(uintptr_t)(SEG_PAGE - 1));
        /* Zeros from here to the end: the faulting access is retried and
         * succeeds; the caller learns of it when it leaves the guard. */
        if (mmap(page, (size_t)(g->base[i] + g->len[i] - page), PROT_READ | PROT_WRITE,
                 MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED) {
            g->faulted |= 1 << i;
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

void shm_guard_enter2(struct shm_guard *g, const struct shm_map *a, const struct shm_map *b)
{
    g->base[0] = a->base;
    g->len[0] = a->len;
    g->base[1] = b != NULL ? b->base : NULL;
    g->len[1] = b != NULL ? b->len : 0;
    g->faulted = 0;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    active_guard = g;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

void shm_guard_enter(struct shm_guard *g, const struct shm_map *m)
{
    shm_guard_enter2(g, m, NULL);
}

int shm_guard_leave(struct shm_guard *g)
{
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    active_guard = NULL;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    return g->faulted ? -EFAULT : 0;
}
