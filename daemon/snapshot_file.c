/*
 * snapshot_file.c - the snapshot files (snapshot.h): their directories, their writing, their
 * retention and their listing. Runs on a thread of libuv's pool (snap_write) or the loop
 * (snap_list, a readdir of one directory); reads no session, only a job's buffers.
 */
#include "snapshot.h"

#include "durable.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

/* The access ACL of a snapshot directory or file, in the kernel's extended-attribute format
 * (linux/posix_acl_xattr.h): emad's own rights, and perm for the session's owner. */
struct acl_entry {
    uint16_t tag;
    uint16_t perm;
    uint32_t id;
} __attribute__((packed));

/*
 * Let uid read (perm 4) or read and list (perm 5) what fd is. Only where emad runs as another
 * uid (a system instance); where the file system has no ACLs the owner cannot read the files
 * directly and docs/running.md says so. The owner never gets write: it cannot plant a link or
 * a file where emad writes.
 */
static void share_with(int fd, uid_t uid, unsigned perm, unsigned own)
{
    struct {
        uint32_t version;
        struct acl_entry e[5];
    } __attribute__((packed)) acl = {
        2u,
        {{1, (uint16_t)own, UINT32_MAX},
         {2, (uint16_t)perm, (uint32_t)uid},
         {4, 0, UINT32_MAX},
         {0x10, (uint16_t)perm, UINT32_MAX},
         {0x20, 0, UINT32_MAX}},
    };

    if (uid == geteuid())
        return;
    (void)fsetxattr(fd, "system.posix_acl_access", &acl, sizeof(acl), 0);
}

/* Open (making it when create) the directory name under dfd, never through a link, and check
 * that it is emad's and that no one else may write it. */
static int sub_dir(int dfd, const char *name, mode_t mode, bool create, const char *path,
                   char *err, size_t errlen)
{
    struct stat st;
    int fd;

    if (create && mkdirat(dfd, name, mode) < 0 && errno != EEXIST) {
        int e = errno;
        snprintf(err, errlen, "cannot make %s/%s: %s", path, name, strerror(e));
        return -e;
    }
    if ((fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
        int e = errno;
        if (e != ENOENT)
            snprintf(err, errlen, "cannot open %s/%s: %s%s", path, name, strerror(e),
                     e == ELOOP || e == ENOTDIR ? " (a link or not a directory: remove it)" : "");
        return -e;
    }
    if (fstat(fd, &st) < 0 || st.st_uid != geteuid() || (st.st_mode & 022) != 0) {
        snprintf(err, errlen, "%s/%s: not owned by emad's uid %ld or writable by others: "
                 "remove it", path, name, (long)geteuid());
        close(fd);
        return -EPERM;
    }
    /* The mode exactly, whatever the umask was. */
    if (create && (st.st_mode & 07777) != mode)
        (void)fchmod(fd, mode);
    return fd;
}

/* The session's snapshot directory: its descriptor, and its path into path. */
static int open_session_dir(const char *state_dir, uid_t uid, const char *dirname, bool create,
                            char *path, size_t pathlen, char *err, size_t errlen)
{
    char uidname[32];
    int sd, a, b, c;

    snprintf(uidname, sizeof(uidname), "%lu", (unsigned long)uid);
    if (snprintf(path, pathlen, "%s/" SNAP_DIR "/%s/%s", state_dir, uidname, dirname) >=
        (int)pathlen) {
        snprintf(err, errlen, "snapshot directory of %s: path too long", dirname);
        return -ENAMETOOLONG;
    }
    if ((sd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot open the state directory %s: %s", state_dir, strerror(e));
        return -e;
    }
    /* snapshots/ may be crossed by anyone (to reach their own directory), listed by no one. */
    a = sub_dir(sd, SNAP_DIR, 0711, create, state_dir, err, errlen);
    close(sd);
    if (a < 0)
        return a;
    char p1[PATH_MAX + 64];
    snprintf(p1, sizeof(p1), "%s/" SNAP_DIR, state_dir);
    b = sub_dir(a, uidname, 0700, create, p1, err, errlen);
    close(a);
    if (b < 0)
        return b;
    if (create)
        share_with(b, uid, 5, 7);
    char p2[PATH_MAX + 128];
    snprintf(p2, sizeof(p2), "%s/%s", p1, uidname);
    c = sub_dir(b, dirname, 0700, create, p2, err, errlen);
    close(b);
    if (c >= 0 && create)
        share_with(c, uid, 5, 7);
    return c;
}

int snap_name_parse(const char *name, char *profile, size_t plen, uint64_t *batch,
                    enum dtype *dtype)
{
    size_t len = strlen(name), sl = strlen(SNAP_SUFFIX);

    if (len <= sl || strcmp(name + len - sl, SNAP_SUFFIX) != 0 || name[0] == '.')
        return -EINVAL;
    len -= sl;
    const char *dot = memrchr(name, '.', len);
    if (dot == NULL || dtype_from_name(dot + 1, (size_t)(name + len - dot - 1), dtype) < 0 ||
        (*dtype != DTYPE_F32 && *dtype != DTYPE_BF16 && *dtype != DTYPE_F16))
        return -EINVAL;
    const char *dash = memrchr(name, '-', (size_t)(dot - name));
    if (dash == NULL || dash + 1 == dot || dash == name)
        return -EINVAL;
    uint64_t b = 0;
    for (const char *q = dash + 1; q < dot; q++) {
        if (*q < '0' || *q > '9' || b > (UINT64_MAX - 9) / 10)
            return -EINVAL;
        b = b * 10 + (uint64_t)(*q - '0');
    }
    size_t pl = (size_t)(dash - name);
    if (!profile_name_valid(name, pl) || pl >= plen)
        return -EINVAL;
    memcpy(profile, name, pl);
    profile[pl] = '\0';
    *batch = b;
    return 0;
}

/* Delete the oldest files of profile beyond keep, in the directory dfd. */
static void retain(int dfd, const char *profile, uint64_t keep)
{
    /* A descriptor of its own: a dup would share the offset the previous readdir left at the
     * end. */
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    uint64_t *batches = NULL;
    char (*names)[PROFILE_NAME_MAX + 64] = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;

    if (d == NULL) {
        if (fd >= 0)
            close(fd);
        return;
    }
    while ((e = readdir(d)) != NULL) {
        char prof[PROFILE_NAME_MAX + 1];
        uint64_t b;
        enum dtype dt;
        if (strlen(e->d_name) >= sizeof(names[0]) ||
            snap_name_parse(e->d_name, prof, sizeof(prof), &b, &dt) < 0 ||
            strcmp(prof, profile) != 0)
            continue;
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 16;
            uint64_t *nb = realloc(batches, nc * sizeof(*nb));
            if (nb != NULL)
                batches = nb;
            void *nn = realloc(names, nc * sizeof(*names));
            if (nn != NULL)
                names = nn;
            if (nb == NULL || nn == NULL)
                break;
            cap = nc;
        }
        batches[n] = b;
        snprintf(names[n], sizeof(names[n]), "%s", e->d_name);
        n++;
    }
    closedir(d);
    /* The oldest first: n is small (snapshots of one profile), a selection does. */
    while (keep > 0 && n > keep) {
        size_t o = 0;
        for (size_t i = 1; i < n; i++)
            if (batches[i] < batches[o])
                o = i;
        (void)unlinkat(dfd, names[o], 0);
        batches[o] = batches[n - 1];
        memcpy(names[o], names[n - 1], sizeof(names[0]));
        n--;
    }
    free(batches);
    free(names);
}

static int write_one(struct snap_job *j, struct snap_prof *sp, int dfd, const char *dpath)
{
    char gamma[40], sigma[40], batch[24], epoch[24];
    struct st_meta *meta = calloc(8 + j->nshard_meta, sizeof(*meta));
    size_t nm = 0;
    struct durable d;
    struct st_writer w;
    struct stat st;
    char why[400];
    int rc;

    if (meta == NULL) {
        snprintf(why, sizeof(why), "out of memory");
        rc = -ENOMEM;
        goto err;
    }
    snprintf(gamma, sizeof(gamma), "%.17g", sp->gamma);
    snprintf(sigma, sizeof(sigma), "%.17g", sp->sigma_rel);
    snprintf(batch, sizeof(batch), "%" PRIu64, sp->batch);
    snprintf(epoch, sizeof(epoch), "%" PRIu64, j->epoch);
    meta[nm++] = (struct st_meta){"session", j->session};
    meta[nm++] = (struct st_meta){"profile", sp->name};
    meta[nm++] = (struct st_meta){"gamma", gamma};
    if (sp->has_sigma_rel)
        meta[nm++] = (struct st_meta){"sigma_rel", sigma};
    meta[nm++] = (struct st_meta){"batch", batch};
    meta[nm++] = (struct st_meta){"epoch", epoch};
    meta[nm++] = (struct st_meta){"dtype", dtype_name(j->cfg.dtype)};
    meta[nm++] = (struct st_meta){"format", "pt"};
    if (j->nshard_meta > 0) /* shard_meta is NULL for a session without slices */
        memcpy(meta + nm, j->shard_meta, j->nshard_meta * sizeof(*meta));
    nm += j->nshard_meta;
    if ((rc = durable_open(&d, dfd, sp->file, 0600, why, sizeof(why))) < 0)
        goto err;
    if ((rc = st_writer_begin(&w, d.fd, j->tensors, j->ntensors, meta, nm, why,
                              sizeof(why))) < 0 ||
        (rc = st_writer_write(&w, sp->buf, j->data_bytes, why, sizeof(why))) < 0 ||
        (rc = st_writer_finish(&w, why, sizeof(why))) < 0) {
        durable_abort(&d);
        goto err;
    }
    share_with(d.fd, j->uid, 4, 6);
    sp->bytes = fstat(d.fd, &st) == 0 ? (uint64_t)st.st_size : 0;
    if ((rc = durable_commit(&d, why, sizeof(why))) < 0)
        goto err;
    free(meta);
    return 0;
err:
    free(meta);
    snprintf(j->err, sizeof(j->err), "snapshot of session %.128s, profile %s, batch %" PRIu64
             " (%s): %.400s; the previous snapshots are kept", j->session, sp->name, sp->batch,
             sp->file, why);
    (void)dpath; /* durable.h's message names the path */
    return rc;
}

int snap_write(struct snap_job *j)
{
    char *dpath = j->dpath;
    int dfd, rc = 0;

    if ((dfd = open_session_dir(j->state_dir, j->uid, j->dirname, true, dpath, sizeof(j->dpath),
                                j->err, sizeof(j->err))) < 0)
        return dfd;
    for (unsigned p = 0; p < j->nprof; p++) {
        int r = write_one(j, &j->prof[p], dfd, dpath);
        if (r < 0) {
            rc = rc < 0 ? rc : r;
            continue;
        }
        if (j->cfg.keep > 0)
            retain(dfd, j->prof[p].name, j->cfg.keep);
    }
    close(dfd);
    return rc;
}

static int entry_cmp(const void *a, const void *b)
{
    const struct msg_snapshot_entry *x = a, *y = b;
    size_t n = x->profile.len < y->profile.len ? x->profile.len : y->profile.len;
    int c = memcmp(x->profile.ptr, y->profile.ptr, n);

    if (c != 0)
        return c;
    if (x->profile.len != y->profile.len)
        return x->profile.len < y->profile.len ? -1 : 1;
    return x->batch < y->batch ? -1 : x->batch > y->batch;
}

int snap_list(const char *state_dir, uid_t uid, const char *session,
              struct msg_snapshot_entry **out, size_t *n, char **pool, char *err, size_t errlen)
{
    char dirname[STORE_NAME_MAX + 1], dpath[PATH_MAX];
    struct msg_snapshot_entry *v = NULL;
    char *strs = NULL;
    size_t cnt = 0, cap = 0, used = 0, scap = 0;
    int dfd, rc = 0;

    *out = NULL;
    *n = 0;
    *pool = NULL;
    if (store_default_name(session, strlen(session), dirname, sizeof(dirname)) < 0)
        return 0; /* no directory can have been made for it */
    if ((dfd = open_session_dir(state_dir, uid, dirname, false, dpath, sizeof(dpath), err,
                                errlen)) < 0)
        return dfd == -ENOENT ? 0 : dfd;
    DIR *d = fdopendir(dfd);
    if (d == NULL) {
        close(dfd);
        return -errno;
    }
    struct dirent *e;
    /* Offsets into strs first (it moves as it grows), pointers at the end. */
    while ((e = readdir(d)) != NULL) {
        char prof[PROFILE_NAME_MAX + 1];
        uint64_t b;
        enum dtype dt;
        struct stat st;
        if (snap_name_parse(e->d_name, prof, sizeof(prof), &b, &dt) < 0 ||
            fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
            continue;
        size_t need = strlen(dpath) + 1 + strlen(e->d_name) + 1 + strlen(prof) + 1;
        if (cnt == cap || used + need > scap) {
            size_t nc = cnt == cap ? (cap ? 2 * cap : 16) : cap;
            size_t ns = used + need > scap ? 2 * (used + need) + 4096 : scap;
            void *nv = realloc(v, nc * sizeof(*v));
            if (nv != NULL)
                v = nv;
            void *np = realloc(strs, ns);
            if (np != NULL)
                strs = np;
            if (nv == NULL || np == NULL) {
                rc = -ENOMEM;
                snprintf(err, errlen, "snapshots: out of memory");
                break;
            }
            cap = nc;
            scap = ns;
        }
        struct msg_snapshot_entry *o = &v[cnt++];
        int fl = sprintf(strs + used, "%s/%s", dpath, e->d_name);
        o->file.ptr = (const char *)(uintptr_t)used;
        o->file.len = (size_t)fl;
        used += (size_t)fl + 1;
        int pl = sprintf(strs + used, "%s", prof);
        o->profile.ptr = (const char *)(uintptr_t)used;
        o->profile.len = (size_t)pl;
        used += (size_t)pl + 1;
        o->batch = b;
        o->dtype = msg_str_c(dtype_name(dt));
        o->bytes = (uint64_t)st.st_size;
    }
    closedir(d);
    if (rc < 0) {
        free(v);
        free(strs);
        return rc;
    }
    for (size_t i = 0; i < cnt; i++) {
        v[i].file.ptr = strs + (uintptr_t)v[i].file.ptr;
        v[i].profile.ptr = strs + (uintptr_t)v[i].profile.ptr;
    }
    if (cnt > 1)
        qsort(v, cnt, sizeof(*v), entry_cmp);
    *out = v;
    *n = cnt;
    *pool = strs;
    return 0;
}
