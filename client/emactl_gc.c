/*
 * emactl_gc.c - emactl gc: stale shared-memory objects of emad in /dev/shm,
 * found by reading /dev/shm and /proc (emad need not run) and removed only
 * once the kernel confirms, by granting a write lease, that nobody uses them.
 */
#include "emactl.h"
#include "names.h"
#include "segment.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <msgpack.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* Where POSIX shared-memory objects live on Linux (glibc's shm_open). */
#define GC_SHM_DIR "/dev/shm"

enum gc_kind { GC_SEGMENT, GC_SHADOW, GC_UNKNOWN };

/* One /dev/shm/emad-* object gc considers. */
struct gc_obj {
    char name[NAME_MAX + 2]; /* "/emad-..." */
    dev_t dev;
    ino_t ino;
    uid_t uid;
    uint64_t bytes;
    bool regular;
    enum gc_kind kind;
    bool gone;            /* it vanished while gc ran: not reported */
    pid_t holder;         /* the first process found mapping it or holding it open */
    bool holder_maps;     /* ... mapping it (else: an open descriptor) */
    char holder_comm[32];
    const char *action;   /* "removed", "kept" or "would remove" */
    char reason[512];
};

/* What the walk through /proc learned beyond the holders. */
struct gc_scan {
    size_t unreadable;       /* processes whose maps or fds could not be read */
    pid_t unreadable_pid;    /* the first of them */
    char unreadable_comm[32];
    bool hidepid;            /* /proc hides other users' processes from us */
};

struct gc_list {
    struct gc_obj *v;
    size_t n, cap;
    size_t others;           /* objects of other users, not examined (not root) */
    dev_t shm_dev;           /* the device of /dev/shm */
};

static const char *gc_kind_name(enum gc_kind k)
{
    return k == GC_SEGMENT ? "segment" : k == GC_SHADOW ? "shadow" : "unknown";
}

static void gc_size(uint64_t bytes, char *buf, size_t len)
{
    if (bytes >= 1024 * 1024)
        snprintf(buf, len, "%.1f MiB", (double)bytes / (1024.0 * 1024.0));
    else if (bytes >= 1024)
        snprintf(buf, len, "%.1f KiB", (double)bytes / 1024.0);
    else
        snprintf(buf, len, "%" PRIu64 " bytes", bytes);
}

/* /proc/PID/comm into buf (without the newline). 0, or -errno. */
static int read_comm(pid_t pid, char *buf, size_t len)
{
    char path[64];
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "/proc/%ld/comm", (long)pid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return -errno;
    n = read(fd, buf, len - 1);
    int e = errno;
    close(fd);
    if (n < 0)
        return -e;
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    return 0;
}

/* Whether pid is a live emad: 1 yes, 0 no (no such process, another
 * program, or an emad that has exited and waits to be reaped), -errno when
 * /proc does not tell. */
static int emad_running(pid_t pid)
{
    char comm[32], path[64], buf[512];
    ssize_t n;
    int fd, rc = read_comm(pid, comm, sizeof(comm));

    if (rc == -ENOENT || rc == -ESRCH)
        return 0;
    if (rc < 0)
        return rc;
    if (strcmp(comm, "emad") != 0)
        return 0;
    /* "PID (COMM) STATE ...": a zombie (Z) or dead (X) emad holds nothing. */
    snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return errno == ENOENT || errno == ESRCH ? 0 : -errno;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return n == 0 ? 0 : -EIO;
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')');
    if (paren != NULL && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X'))
        return 0;
    return 1;
}

static int gc_obj_cmp(const void *a, const void *b)
{
    const struct gc_obj *x = a, *y = b;
    if (x->ino != y->ino)
        return x->ino < y->ino ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int gc_name_cmp(const void *a, const void *b)
{
    return strcmp(((const struct gc_obj *)a)->name, ((const struct gc_obj *)b)->name);
}

static int gc_ino_cmp(const void *key, const void *elem)
{
    ino_t ino = *(const ino_t *)key;
    const struct gc_obj *o = elem;
    return ino < o->ino ? -1 : ino > o->ino ? 1 : 0;
}

/* Note that pid maps (or holds open) the object dev/ino, if it is one of
 * ours and nobody was noted for it yet. */
static void gc_note_holder(struct gc_list *l, dev_t dev, ino_t ino, pid_t pid, bool maps)
{
    struct gc_obj *o;

    if (dev != l->shm_dev || l->n == 0)
        return;
    o = bsearch(&ino, l->v, l->n, sizeof(*o), gc_ino_cmp);
    if (o == NULL)
        return;
    /* Equal inodes sit side by side (sorted by inode): a hard link has two
     * names; mark all of them. */
    while (o > l->v && o[-1].ino == ino)
        o--;
    for (; o < l->v + l->n && o->ino == ino; o++) {
        if (o->holder != 0 || !o->regular)
            continue;
        o->holder = pid;
        o->holder_maps = maps;
        if (read_comm(pid, o->holder_comm, sizeof(o->holder_comm)) < 0)
            snprintf(o->holder_comm, sizeof(o->holder_comm), "?");
    }
}

/* Whether /proc is mounted with hidepid (other users' processes invisible
 * or unreadable to us, without an error to tell us). */
static bool proc_hidepid(void)
{
    FILE *fp = fopen("/proc/self/mountinfo", "re");
    char *line = NULL;
    size_t cap = 0;
    bool hidden = false;

    if (fp == NULL)
        return true; /* cannot tell: assume the worst */
    while (getline(&line, &cap, fp) > 0) {
        /* "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS...] - FSTYPE SOURCE SUPEROPTS" */
        char mnt[64];
        const char *sep = strstr(line, " - ");
        if (sscanf(line, "%*s %*s %*s %*s %63s", mnt) != 1 || strcmp(mnt, "/proc") != 0 ||
            sep == NULL)
            continue;
        const char *h = strstr(sep, "hidepid=");
        if (h != NULL && strncmp(h + 8, "0", 1) != 0 && strncmp(h + 8, "off", 3) != 0)
            hidden = true;
    }
    free(line);
    fclose(fp);
    return hidden;
}

static void gc_note_unreadable(struct gc_scan *sc, pid_t pid)
{
    if (sc->unreadable++ == 0) {
        sc->unreadable_pid = pid;
        if (read_comm(pid, sc->unreadable_comm, sizeof(sc->unreadable_comm)) < 0)
            snprintf(sc->unreadable_comm, sizeof(sc->unreadable_comm), "?");
    }
}

/* Walk /proc: every process's mappings (/proc/PID/maps: device and inode of
 * each mapped file) and open descriptors (/proc/PID/fd/N, stat() through
 * the link), noting who holds each object of l. Processes we may not read
 * are counted in sc. -errno when /proc cannot be read at all. */
static int gc_scan_proc(struct gc_list *l, struct gc_scan *sc)
{
    DIR *proc = opendir("/proc");
    struct dirent *de;
    char *line = NULL;
    size_t cap = 0;
    pid_t self = getpid();

    if (proc == NULL)
        return -errno;
    sc->hidepid = geteuid() != 0 && proc_hidepid();
    while ((de = readdir(proc)) != NULL) {
        char path[96], *end;
        long pid = strtol(de->d_name, &end, 10);
        if (*end != '\0' || pid <= 0 || pid == (long)self)
            continue;

        snprintf(path, sizeof(path), "/proc/%ld/maps", pid);
        FILE *fp = fopen(path, "re");
        if (fp == NULL) {
            if (errno == EACCES || errno == EPERM)
                gc_note_unreadable(sc, (pid_t)pid);
            continue; /* ENOENT, ESRCH: it has exited */
        }
        while (getline(&line, &cap, fp) > 0) {
            /* "START-END PERMS OFFSET MAJ:MIN INODE [PATH]" */
            unsigned int maj, min;
            unsigned long long ino;
            if (sscanf(line, "%*s %*s %*s %x:%x %llu", &maj, &min, &ino) == 3 && ino != 0)
                gc_note_holder(l, makedev(maj, min), (ino_t)ino, (pid_t)pid, true);
        }
        fclose(fp);

        snprintf(path, sizeof(path), "/proc/%ld/fd", pid);
        DIR *fds = opendir(path);
        if (fds == NULL) {
            if (errno == EACCES || errno == EPERM)
                gc_note_unreadable(sc, (pid_t)pid);
            continue;
        }
        struct dirent *fe;
        while ((fe = readdir(fds)) != NULL) {
            struct stat st;
            if (fe->d_name[0] == '.')
                continue;
            /* stat() follows the magic link to the open file itself, even
             * one whose name is gone or seen through another mount. */
            if (fstatat(dirfd(fds), fe->d_name, &st, 0) == 0 && S_ISREG(st.st_mode))
                gc_note_holder(l, st.st_dev, st.st_ino, (pid_t)pid, false);
        }
        closedir(fds);
    }
    free(line);
    closedir(proc);
    return 0;
}

/* List /dev/shm/emad-<prefix>* into l: every uid's when we are root, else
 * only ours (the others are counted). -errno when /dev/shm cannot be read. */
static int gc_list_objects(int dirfd_shm, const char *prefix, struct gc_list *l)
{
    char want[NAME_MAX + 1];
    struct dirent *de;
    struct stat st;
    uid_t me = geteuid();
    int fd = dup(dirfd_shm);
    DIR *dir;

    if (fd < 0 || fstat(fd, &st) < 0 || (dir = fdopendir(fd)) == NULL) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return -e;
    }
    l->shm_dev = st.st_dev;
    snprintf(want, sizeof(want), "emad-%s", prefix);
    while ((de = readdir(dir)) != NULL) {
        if (strncmp(de->d_name, want, strlen(want)) != 0)
            continue;
        if (fstatat(dirfd_shm, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* removed meanwhile */
        if (me != 0 && st.st_uid != me) {
            l->others++;
            continue;
        }
        if (l->n == l->cap) {
            size_t cap = l->cap ? 2 * l->cap : 16;
            struct gc_obj *v = realloc(l->v, cap * sizeof(*v));
            if (v == NULL) {
                closedir(dir);
                return -ENOMEM;
            }
            l->v = v;
            l->cap = cap;
        }
        struct gc_obj *o = &l->v[l->n++];
        memset(o, 0, sizeof(*o));
        snprintf(o->name, sizeof(o->name), "/%s", de->d_name);
        o->dev = st.st_dev;
        o->ino = st.st_ino;
        o->uid = st.st_uid;
        o->bytes = (uint64_t)st.st_size;
        o->regular = S_ISREG(st.st_mode);
        o->kind = GC_UNKNOWN;
    }
    closedir(dir);
    if (l->n > 0)
        qsort(l->v, l->n, sizeof(l->v[0]), gc_obj_cmp);
    return 0;
}

/* Why an object nobody was seen holding may still be in use: the walk
 * through /proc was incomplete. "" when it was complete. */
static void gc_blind_spot(const struct gc_scan *sc, char *buf, size_t len)
{
    if (sc->unreadable > 0)
        snprintf(buf, len, "emactl may not read the mappings of %zu process%s (e.g. pid %ld, %s)",
                 sc->unreadable, sc->unreadable == 1 ? "" : "es", (long)sc->unreadable_pid,
                 sc->unreadable_comm);
    else if (sc->hidepid)
        snprintf(buf, len, "/proc is mounted with hidepid, hiding other users' processes");
    else
        buf[0] = '\0';
}

/* Decide about one object and act. 0, or -errno after reporting that the
 * removal failed. */
static int gc_one(const struct ctl *ctl, int dirfd_shm, struct gc_obj *o, const struct gc_scan *sc)
{
    const char *base = o->name + 1;
    char blind[256];
    struct seg_header h;
    ssize_t hn = 0;
    struct stat st;
    pid_t spid = 0;
    int fd, rc = 0;

    memset(&h, 0, sizeof(h));
    o->action = "kept";
    if (!o->regular) {
        snprintf(o->reason, sizeof(o->reason), "not a regular file, so not emad's");
        return 0;
    }
    /* O_NONBLOCK: if someone holds a lease on it (another gc at work), fail
     * at once instead of waiting for the lease to be broken. */
    fd = openat(dirfd_shm, base, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            o->gone = true;
        else if (errno == EWOULDBLOCK)
            snprintf(o->reason, sizeof(o->reason), "in use: another process holds a lease on it "
                     "(another gc at work?)");
        else
            snprintf(o->reason, sizeof(o->reason), "cannot open it: %s", strerror(errno));
        return 0;
    }
    if (fstat(fd, &st) < 0 || st.st_ino != o->ino || st.st_dev != o->dev) {
        snprintf(o->reason, sizeof(o->reason), "replaced while gc ran; run gc again");
        close(fd);
        return 0;
    }
    o->bytes = (uint64_t)st.st_size;

    /* Ours? Shadows by their name; segments by their header. */
    if ((spid = (pid_t)names_shadow_pid(base)) != 0) {
        o->kind = GC_SHADOW;
    } else {
        hn = pread(fd, &h, sizeof(h), 0);
        if (hn < (ssize_t)sizeof(h.magic) || memcmp(h.magic, SEG_MAGIC, sizeof(h.magic)) != 0) {
            snprintf(o->reason, sizeof(o->reason),
                     "not an emad segment (no " SEG_MAGIC " header), so not emad's");
            close(fd);
            return 0;
        }
        o->kind = GC_SEGMENT;
    }

    /* Live? */
    if (o->holder != 0) {
        snprintf(o->reason, sizeof(o->reason), "%s by pid %ld (%s)",
                 o->holder_maps ? "mapped" : "open", (long)o->holder, o->holder_comm);
        close(fd);
        return 0;
    }
    if (spid != 0) {
        int e = emad_running(spid);
        if (e > 0) {
            snprintf(o->reason, sizeof(o->reason), "its emad (pid %ld) is running", (long)spid);
            close(fd);
            return 0;
        }
        if (e < 0) {
            snprintf(o->reason, sizeof(o->reason), "cannot tell whether its emad (pid %ld) is "
                     "running: %s", (long)spid, strerror(-e));
            close(fd);
            return 0;
        }
    }
    /* The stash holds the only copy of the training weights until
     * swap_state is TRAIN again: never throw it away. */
    if (o->kind == GC_SEGMENT && hn == (ssize_t)sizeof(h) && h.swap_state != SEG_TRAIN) {
        snprintf(o->reason, sizeof(o->reason),
                 "its stash holds the training weights (swap_state %s); restore them with "
                 "emac_segment_recover(), or remove it by hand",
                 h.swap_state == SEG_STASHED ? "STASHED" : h.swap_state == SEG_EMA ? "EMA"
                                                                            : "unknown");
        close(fd);
        return 0;
    }
    /* Nobody was seen holding it. A write lease proves it: the kernel grants
     * one only while no one else has the file open or mapped, and while we
     * hold it, anyone opening the file waits until we let go. */
    bool leased = fcntl(fd, F_SETLEASE, F_WRLCK) == 0;
    int lease_errno = leased ? 0 : errno;
    gc_blind_spot(sc, blind, sizeof(blind));
    if (lease_errno == EAGAIN) {
        if (blind[0])
            snprintf(o->reason, sizeof(o->reason), "in use: open or mapped by a process that "
                     "emactl may not inspect (%s)", blind);
        else
            snprintf(o->reason, sizeof(o->reason), "in use: the kernel reports it open or mapped "
                     "(by a process that started using it while gc ran, or in another "
                     "namespace)");
        close(fd);
        return 0;
    }
    if (!leased && blind[0]) {
        snprintf(o->reason, sizeof(o->reason), "cannot prove it unused: %s, and the kernel "
                 "refused a lease (%s)", blind, strerror(lease_errno));
        close(fd);
        return 0;
    }

    /* Where leases are not available (fs.leases-enable=0) and every process
     * could be read, /proc alone has shown it unused. */
    if (o->kind == GC_SHADOW)
        snprintf(o->reason, sizeof(o->reason), "its emad (pid %ld) is gone; not mapped or open "
                 "by any process", (long)spid);
    else
        snprintf(o->reason, sizeof(o->reason), "not mapped or open by any process");
    if (ctl->dry_run) {
        o->action = "would remove";
    } else if (fstatat(dirfd_shm, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        o->gone = true; /* someone else removed it meanwhile */
    } else if (st.st_ino != o->ino || st.st_dev != o->dev) {
        o->action = "kept";
        snprintf(o->reason, sizeof(o->reason), "replaced while gc ran; run gc again");
    } else if (shm_unlink(o->name) == 0) {
        o->action = "removed";
    } else if (errno == ENOENT) {
        o->gone = true;
    } else {
        int e = errno;
        ctl_error(ctl, "SYSTEM", "cannot remove %s: %s", o->name, strerror(e));
        snprintf(o->reason, sizeof(o->reason), "cannot remove it: %s", strerror(e));
        rc = -e;
    }
    if (leased)
        fcntl(fd, F_SETLEASE, F_UNLCK);
    close(fd);
    return rc;
}

static int gc_print_json(const struct ctl *ctl, const struct gc_list *l)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    size_t n = 0;

    for (size_t i = 0; i < l->n; i++)
        n += !l->v[i].gone;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, n);
    for (size_t i = 0; i < l->n; i++) {
        const struct gc_obj *o = &l->v[i];
        const char *kind = gc_kind_name(o->kind);
        if (o->gone)
            continue;
        msgpack_pack_map(&pk, 6);
        msgpack_pack_str_with_body(&pk, "name", 4);
        msgpack_pack_str_with_body(&pk, o->name, strlen(o->name));
        msgpack_pack_str_with_body(&pk, "uid", 3);
        msgpack_pack_uint64(&pk, o->uid);
        msgpack_pack_str_with_body(&pk, "bytes", 5);
        msgpack_pack_uint64(&pk, o->bytes);
        msgpack_pack_str_with_body(&pk, "kind", 4);
        msgpack_pack_str_with_body(&pk, kind, strlen(kind));
        msgpack_pack_str_with_body(&pk, "action", 6);
        msgpack_pack_str_with_body(&pk, o->action, strlen(o->action));
        msgpack_pack_str_with_body(&pk, "reason", 6);
        msgpack_pack_str_with_body(&pk, o->reason, strlen(o->reason));
    }
    int rc = ctl_print_json(ctl, sb.data, sb.size, NULL, -1);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

static void gc_print_text(const struct gc_list *l, bool dry_run)
{
    size_t removed = 0, kept = 0;
    uint64_t freed = 0;
    char size[32];

    for (size_t i = 0; i < l->n; i++) {
        const struct gc_obj *o = &l->v[i];
        if (o->gone)
            continue;
        if (strcmp(o->action, "kept") == 0) {
            kept++;
            printf("kept ");
            ctl_put_clean(stdout, o->name);
            printf(": ");
            ctl_put_clean(stdout, o->reason);
            printf("\n");
            continue;
        }
        removed++;
        freed += o->bytes;
        gc_size(o->bytes, size, sizeof(size));
        printf("%s ", o->action);
        ctl_put_clean(stdout, o->name);
        printf(" (owner uid %ld, %s, %s, ", (long)o->uid, size,
               o->kind == GC_SEGMENT ? "trainer segment" : gc_kind_name(o->kind));
        ctl_put_clean(stdout, o->reason);
        printf(")\n");
    }
    gc_size(freed, size, sizeof(size));
    if (dry_run)
        printf("gc (dry run): %zu would be removed (%s), %zu kept; nothing was removed", removed,
               size, kept);
    else
        printf("gc: %zu removed (%s freed), %zu kept", removed, size, kept);
    if (l->others > 0)
        printf("; %zu object%s of other users not examined (only root collects them)", l->others,
               l->others == 1 ? "" : "s");
    printf("\n");
}

static int cmd_gc(struct ctl *ctl, int argc, char **argv)
{
    struct gc_list l = {NULL, 0, 0, 0, 0};
    struct gc_scan sc = {0, 0, "", false};
    const char *prefix = ctl->prefix ? ctl->prefix : "";
    int rc, failed = 0;

    (void)argc;
    (void)argv;
    /* "--prefix /emad-foo" means "--prefix foo". */
    if (strncmp(prefix, SEG_NAME_PREFIX, strlen(SEG_NAME_PREFIX)) == 0)
        prefix += strlen(SEG_NAME_PREFIX);
    if (strchr(prefix, '/') != NULL || strlen(prefix) > NAME_MAX - 5)
        return ctl_usage_error(ctl, "--prefix %s: a name after /emad-, without '/'",
                               ctl->prefix);
    /* A lease we hold is broken by someone's open(): the kernel tells us
     * with SIGIO, whose default action would end emactl. We let go of the
     * lease soon anyway. */
    signal(SIGIO, SIG_IGN);

    int dfd = open(GC_SHM_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        rc = -errno;
        ctl_error(ctl, "SYSTEM", "cannot open %s: %s", GC_SHM_DIR, strerror(-rc));
        return rc;
    }
    if ((rc = gc_list_objects(dfd, prefix, &l)) < 0) {
        ctl_error(ctl, "SYSTEM", "cannot list %s: %s", GC_SHM_DIR, strerror(-rc));
        goto out;
    }
    if (l.n > 0 && (rc = gc_scan_proc(&l, &sc)) < 0) {
        ctl_error(ctl, "SYSTEM", "cannot read /proc: %s", strerror(-rc));
        goto out;
    }
    for (size_t i = 0; i < l.n; i++) {
        int e = gc_one(ctl, dfd, &l.v[i], &sc);
        if (e < 0 && failed == 0)
            failed = e;
    }
    if (l.n > 0)
        qsort(l.v, l.n, sizeof(l.v[0]), gc_name_cmp);
    if (ctl->json)
        rc = gc_print_json(ctl, &l);
    else
        gc_print_text(&l, ctl->dry_run);
    if (rc == 0)
        rc = failed;
out:
    close(dfd);
    free(l.v);
    return rc;
}

const struct ctl_cmd ctl_cmd_gc = {
    .name = "gc",
    .args = "[--dry-run] [--prefix NAME]",
    .summary = "remove stale shared-memory objects of emad from\n"
               "/dev/shm: segments of trainers that are gone and\n"
               "shadows of emads that are gone; emad need not run",
    .help =
        "Remove stale shared-memory objects of emad from /dev/shm.\n"
        "\n"
        "emad's objects are the trainers' segments (/emad-NAME, holding an EMASEG01\n"
        "header) and emad's shadows (/emad-shadow-PID-HEX, PID being the emad that\n"
        "made them). gc reads /dev/shm and /proc directly: emad need not run, and\n"
        "--socket is not used. A normal user's gc looks only at objects owned by\n"
        "that user; root's gc looks at every user's. An object is removed (with\n"
        "shm_unlink) only when all of these hold:\n"
        "  - it is a segment or a shadow: any other /emad-* object is not emad's\n"
        "    and is left alone;\n"
        "  - no process maps it or holds it open (/proc/PID/maps, /proc/PID/fd),\n"
        "    which the kernel confirms by granting gc a write lease on it: the\n"
        "    lease is refused while anyone else has the object open or mapped,\n"
        "    even a process gc may not inspect, and an open() racing with gc waits\n"
        "    until gc is done with the object. Where leases are not available,\n"
        "    every process must have been readable;\n"
        "  - for a shadow: its emad (PID) is not running;\n"
        "  - for a segment: its swap_state is TRAIN. Otherwise its stash holds the\n"
        "    only copy of the trainer's training weights; restore them with\n"
        "    emac_segment_recover(), or remove the object by hand.\n"
        "A segment kept by a trainer for a later run (emac_segment_close, then\n"
        "emac_segment_open) counts as stale while no process has it mapped: run gc\n"
        "when no such restart is pending, or use --prefix.\n"
        "\n"
        "Output: one line per object examined, \"removed NAME (owner uid N, SIZE,\n"
        "KIND, why)\" (\"would remove\" with --dry-run) or \"kept NAME: why\" (e.g.\n"
        "\"mapped by pid 1234 (python3)\"), then a summary line.\n"
        "\n"
        "JSON output: an array of {name, uid, bytes, kind, action, reason}, one per\n"
        "object, kind \"segment\", \"shadow\" or \"unknown\", action \"removed\",\n"
        "\"would remove\" or \"kept\".\n"
        "\n"
        "Exit status: 0 once gc is done, whether or not anything was stale; 1 when a\n"
        "removal failed or /dev/shm or /proc could not be read (emactl: SYSTEM: gc:\n"
        "message); 2 on a usage error.\n"
        "\n"
        "Examples:\n"
        "  emactl gc --dry-run\n"
        "  emactl gc --prefix trainer-\n"
        "  sudo emactl gc --json\n",
    .min_args = 0,
    .max_args = 0,
    .opts = CTL_OPT_SOCKET | CTL_OPT_JSON | CTL_OPT_DRY_RUN | CTL_OPT_PREFIX,
    .run = cmd_gc,
};
