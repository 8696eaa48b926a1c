/*
 * emactl - inspect and drive emad from the command line.
 */
#include "emaclient.h"
#include "json.h"
#include "segment.h"
#include "version.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
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

struct ctl {
    const char *socket; /* --socket, or NULL to resolve */
    bool json;          /* --json */
    bool dry_run;       /* gc --dry-run */
    const char *prefix; /* gc --prefix NAME, or NULL */
};

static void usage(FILE *fp)
{
    fputs(
"Usage: emactl [--socket PATH] [--json] COMMAND [ARGS]\n"
"Inspect and drive emad, the EMA daemon.\n"
"\n"
"Commands:\n"
"  status [SESSION]      the daemon (version, pid, uptime, workers, connections,\n"
"                        limits) and its sessions; with SESSION, only that one\n"
"  list                  one line per session: name, owner pid (or 'detached'),\n"
"                        tensors, params in MiB, updates, whether the EMA weights\n"
"                        are swapped in\n"
"  show SESSION          every field of one session's state: owner, segments,\n"
"                        sizes in MiB, smoothing and half-life, update interval,\n"
"                        start, started/active, updates, swaps, the requests\n"
"                        applied (seq), the last event's time, the last update's\n"
"                        duration (ms) and rate (GB/s moved; Gelem/s counting\n"
"                        4-byte shadow elements), and whether a crash of emad cut\n"
"                        an update short (interrupted)\n"
"  save SESSION [NAME]   write the session's state (config, counters, shadow) to\n"
"                        the file NAME (a name, not a path; default chosen by emad)\n"
"                        in emad's state directory; prints the path and size.\n"
"                        (Loading such a file is for the session's owner: see\n"
"                        emac_load in emaclient.h.)\n"
"  drop SESSION          remove a detached session and its shadow\n"
"  gc [--dry-run] [--prefix NAME]\n"
"                        remove stale shared-memory objects of emad from /dev/shm:\n"
"                        segments of trainers that are gone and shadows of emads\n"
"                        that are gone (see \"gc\" below); does not need emad\n"
"\n"
"Options (before or after the command):\n"
"  --socket PATH         emad's socket (default: $EMAD_SOCKET, else\n"
"                        $XDG_RUNTIME_DIR/emad.sock, else /run/emad/emad.sock)\n"
"  --json                print emad's reply as JSON instead of text: status the\n"
"                        whole reply, list the sessions array, show the session's\n"
"                        state map, save {path, bytes}, drop {}; gc an array of\n"
"                        {name, uid, bytes, kind, action, reason}, one per object,\n"
"                        kind \"segment\", \"shadow\" or \"unknown\", action\n"
"                        \"removed\", \"would remove\" or \"kept\"\n"
"  --dry-run             gc: remove nothing, say what would be removed\n"
"  --prefix NAME         gc: only objects whose name starts with /emad-NAME\n"
"                        (NAME may also be given as /emad-NAME)\n"
"  -h, --help            show this help and exit\n"
"  -V, --version         show the version and exit\n"
"\n"
"gc:\n"
"  emad's objects are the trainers' segments (/emad-NAME, holding an EMASEG01\n"
"  header) and emad's shadows (/emad-shadow-PID-HEX, PID being the emad that\n"
"  made them). gc reads /dev/shm and /proc directly: emad need not run, and\n"
"  --socket is not used. A normal user's gc looks only at objects owned by\n"
"  that user; root's gc looks at every user's. An object is removed (with\n"
"  shm_unlink) only when all of these hold:\n"
"    - it is a segment or a shadow: any other /emad-* object is not emad's\n"
"      and is left alone;\n"
"    - no process maps it or holds it open (/proc/PID/maps, /proc/PID/fd),\n"
"      which the kernel confirms by granting gc a write lease on it: the\n"
"      lease is refused while anyone else has the object open or mapped,\n"
"      even a process gc may not inspect, and an open() racing with gc waits\n"
"      until gc is done with the object. Where leases are not available,\n"
"      every process must have been readable;\n"
"    - for a shadow: its emad (PID) is not running;\n"
"    - for a segment: its swap_state is TRAIN. Otherwise its stash holds the\n"
"      only copy of the trainer's training weights; restore them with\n"
"      emac_segment_recover(), or remove the object by hand.\n"
"  Every object examined gets one line, \"removed NAME (owner uid N, SIZE, KIND,\n"
"  why)\" (\"would remove\" with --dry-run) or \"kept NAME: why\" (e.g. \"mapped\n"
"  by pid 1234 (python3)\"), then a summary line. A segment kept by a trainer\n"
"  for a later run (emac_segment_close, then emac_segment_open) counts as\n"
"  stale while no process has it mapped: run gc when no such restart is\n"
"  pending, or use --prefix.\n"
"\n"
"Environment:\n"
"  EMAD_SOCKET, XDG_RUNTIME_DIR   locate the socket when --socket is not given\n"
"\n"
"Exit status: 0 on success, 1 when emad reports an error or cannot be\n"
"reached, 2 on a usage error. Errors are printed as 'emactl: CODE: message'\n"
"with the protocol's error code (e.g. NOSESSION, PERM, STATE, IO, CONNECT).\n"
"gc exits 0 once it is done, whether or not anything was stale, and 1 when a\n"
"removal failed or /dev/shm or /proc could not be read ('emactl: SYSTEM: ...').\n"
"\n"
"Examples:\n"
"  emactl list\n"
"  emactl show trainer-1 --json\n"
"  emactl save trainer-1 before-lr-drop\n"
"  emactl drop trainer-1\n"
"  emactl gc --dry-run\n"
"  sudo emactl gc --json\n",
        fp);
}

static void print_error(const struct emac_error *e)
{
    fprintf(stderr, "emactl: %s: %s\n", e->code, e->message);
}

static void print_duration(double s)
{
    unsigned long long t = (unsigned long long)s;
    if (t >= 86400)
        printf("%llud %02lluh %02llum", t / 86400, t % 86400 / 3600, t % 3600 / 60);
    else if (t >= 3600)
        printf("%lluh %02llum %02llus", t / 3600, t % 3600 / 60, t % 60);
    else if (t >= 60)
        printf("%llum %02llus", t / 60, t % 60);
    else
        printf("%.1fs", s);
}

static void print_mib(uint64_t bytes)
{
    printf("%.1f MiB", (double)bytes / (1024.0 * 1024.0));
}

static void print_status_text(const struct emac_status *st)
{
    printf("%s %s (protocol %u), pid %ld, up ", st->server, st->version, st->proto, st->pid);
    print_duration(st->uptime_seconds);
    printf("\n");
    printf("  socket       %s\n", st->socket[0] ? st->socket : "(inherited, unnamed)");
    printf("  state dir    %s\n", st->state_dir);
    printf("  workers      %u\n", st->workers);
    printf("  connections  %u (limit %u)\n", st->connections, st->max_connections);
    printf("  sessions     %u (limit %u)\n", st->sessions, st->max_sessions);
    printf("  max message  ");
    print_mib(st->max_message);
    printf("\n");
    if (st->nsessions == 0)
        return;
    printf("\n%-24s %-8s %8s %12s %12s %9s %-6s\n", "SESSION", "OWNER", "TENSORS", "PARAMS",
           "SHADOW", "UPDATES", "ACTIVE");
    for (size_t i = 0; i < st->nsessions; i++) {
        const struct emac_session_info *s = &st->session_list[i];
        char owner[24];
        if (s->attached)
            snprintf(owner, sizeof(owner), "%ld", s->owner_pid);
        else
            snprintf(owner, sizeof(owner), "detached");
        printf("%-24s %-8s %8" PRIu64 " %8.1f MiB %8.1f MiB %9" PRIu64 " %-6s\n", s->session,
               owner, s->tensors, (double)s->params_bytes / 1048576.0,
               (double)s->shadow_bytes / 1048576.0, s->updates,
               s->active ? "ema" : s->started ? "train" : "-");
    }
}

/* Print the msgpack reply as JSON: all of it (key NULL), or the value under
 * key, or (index >= 0) that element of the array under key. */
static int print_json_raw(const void *data, size_t len, const char *key, long index)
{
    msgpack_unpacked u;
    const msgpack_object *o = NULL;
    size_t off = 0;
    int rc = 0;

    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, data, len, &off) == MSGPACK_UNPACK_SUCCESS) {
        o = &u.data;
        if (key != NULL) {
            const msgpack_object *v = NULL;
            for (uint32_t i = 0; o->type == MSGPACK_OBJECT_MAP && i < o->via.map.size; i++) {
                const msgpack_object *k = &o->via.map.ptr[i].key;
                if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
                    memcmp(k->via.str.ptr, key, k->via.str.size) == 0)
                    v = &o->via.map.ptr[i].val;
            }
            o = v;
        }
        if (o != NULL && index >= 0)
            o = o->type == MSGPACK_OBJECT_ARRAY && (uint64_t)index < o->via.array.size
                    ? &o->via.array.ptr[index]
                    : NULL;
    }
    if (o == NULL) {
        fprintf(stderr, "emactl: BADREPLY: cannot decode emad's reply\n");
        rc = 1;
    } else {
        json_print(stdout, o, 0);
        fputc('\n', stdout);
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}

static emac_client *ctl_connect(const struct ctl *ctl)
{
    struct emac_error err = {{0}, {0}};
    emac_client *c = NULL;

    if (emac_connect(ctl->socket, "emactl " EMAD_VERSION, &c, &err) < 0) {
        print_error(&err);
        return NULL;
    }
    return c;
}

/* Check the number of arguments of a command; 0 or the usage exit code. */
static int want_args(const char *cmd, int argc, int min, int max, const char *synopsis)
{
    if (argc >= min && argc <= max)
        return 0;
    fprintf(stderr, "emactl: usage: emactl %s %s\n", cmd, synopsis);
    return 2;
}

/* Fetch the status (of one session when session is not NULL). */
static int get_status(const struct ctl *ctl, const char *session, emac_client **c,
                      struct emac_status **st)
{
    struct emac_error err = {{0}, {0}};

    if ((*c = ctl_connect(ctl)) == NULL)
        return 1;
    if (emac_status(*c, session, st, &err) < 0) {
        print_error(&err);
        emac_disconnect(*c);
        return 1;
    }
    return 0;
}

static int cmd_status(const struct ctl *ctl, int argc, char **argv)
{
    struct emac_status *st = NULL;
    emac_client *c = NULL;
    int rc;

    if ((rc = want_args("status", argc, 0, 1, "[SESSION]")) != 0)
        return rc;
    if (get_status(ctl, argc == 1 ? argv[0] : NULL, &c, &st) != 0)
        return 1;
    if (ctl->json) {
        const void *raw;
        size_t len;
        emac_status_raw(st, &raw, &len);
        rc = print_json_raw(raw, len, NULL, -1);
    } else {
        print_status_text(st);
        rc = 0;
    }
    emac_status_free(st);
    emac_disconnect(c);
    return rc;
}

static int cmd_list(const struct ctl *ctl, int argc, char **argv)
{
    struct emac_status *st = NULL;
    emac_client *c = NULL;
    int rc = 0;

    (void)argv;
    if ((rc = want_args("list", argc, 0, 0, "")) != 0)
        return rc;
    if (get_status(ctl, NULL, &c, &st) != 0)
        return 1;
    if (ctl->json) {
        const void *raw;
        size_t len;
        emac_status_raw(st, &raw, &len);
        rc = print_json_raw(raw, len, "sessions", -1);
    } else {
        printf("%-32s %-10s %8s %12s %10s %-6s\n", "SESSION", "OWNER", "TENSORS", "PARAMS",
               "UPDATES", "ACTIVE");
        for (size_t i = 0; i < st->nsessions; i++) {
            const struct emac_session_info *s = &st->session_list[i];
            char owner[24];
            if (s->attached)
                snprintf(owner, sizeof(owner), "%ld", s->owner_pid);
            else
                snprintf(owner, sizeof(owner), "detached");
            printf("%-32s %-10s %8" PRIu64 " %8.1f MiB %10" PRIu64 " %-6s\n", s->session, owner,
                   s->tensors, (double)s->params_bytes / 1048576.0, s->updates,
                   s->active ? "yes" : "no");
        }
    }
    emac_status_free(st);
    emac_disconnect(c);
    return rc;
}

static void print_session_text(const struct emac_session_info *s)
{
    printf("session          %s\n", s->session);
    if (s->attached)
        printf("owner            pid %ld (attached)\n", s->owner_pid);
    else
        printf("owner            none (detached: waiting for register with resume, or drop)\n");
    printf("segment          %s\n", s->shm);
    printf("shadow segment   %s\n", s->shadow_shm);
    printf("tensors          %" PRIu64 "\n", s->tensors);
    printf("params           ");
    print_mib(s->params_bytes);
    printf(" (%" PRIu64 " bytes)\n", s->params_bytes);
    printf("shadow           ");
    print_mib(s->shadow_bytes);
    printf(" (%" PRIu64 " bytes)\n", s->shadow_bytes);
    printf("smoothing        %.10g (each update keeps this share of the shadow)\n", s->smoothing);
    printf("half_life        %s\n", s->half_life ? s->half_life : "- (set by smoothing)");
    printf("update_interval  %s\n", s->update_interval);
    printf("ema_start        %s\n", s->ema_start);
    printf("started          %s\n", s->started ? "yes" : "no (waiting for ema_start)");
    printf("active           %s\n", s->active ? "yes (the EMA weights are in the params)"
                                              : "no (the training weights are in the params)");
    printf("updates          %" PRIu64 "\n", s->updates);
    printf("swaps            %" PRIu64 "\n", s->swaps);
    printf("requests         %" PRIu64 " (the highest event/swap seq applied)\n", s->seq);
    if (s->interrupted)
        printf("interrupted      yes: an update was cut short by a crash of emad; until the "
               "trainer sends it again, or for good if another request came first, the shadow "
               "holds part of it (load a saved state to be sure)\n");
    if (s->has_last_time) {
        printf("last time        batch %" PRIu64 ", epoch %" PRIu64, s->last_batch, s->last_epoch);
        if (s->has_last_duration)
            printf(", duration %.4g", s->last_duration);
        printf("\n");
    } else {
        printf("last time        - (no event yet)\n");
    }
    if (s->updates > 0 && s->last_update_seconds > 0) {
        /* The update reads the params and the shadow and writes the
         * shadow: its speed is bytes moved (NOTES.md). */
        double secs = s->last_update_seconds;
        double moved = (double)s->params_bytes + 2.0 * (double)s->shadow_bytes;
        printf("last update      %.3f ms, %.2f GB/s moved, %.2f Gelem/s\n", secs * 1e3,
               moved / secs / 1e9, (double)s->shadow_bytes / 4.0 / secs / 1e9);
    } else {
        printf("last update      - (none yet)\n");
    }
}

static int cmd_show(const struct ctl *ctl, int argc, char **argv)
{
    struct emac_status *st = NULL;
    emac_client *c = NULL;
    int rc;

    if ((rc = want_args("show", argc, 1, 1, "SESSION")) != 0)
        return rc;
    if (get_status(ctl, argv[0], &c, &st) != 0)
        return 1;
    if (st->nsessions != 1) {
        fprintf(stderr, "emactl: BADREPLY: status of \"%s\" lists %zu sessions\n", argv[0],
                st->nsessions);
        rc = 1;
    } else if (ctl->json) {
        const void *raw;
        size_t len;
        emac_status_raw(st, &raw, &len);
        rc = print_json_raw(raw, len, "sessions", 0);
    } else {
        print_session_text(&st->session_list[0]);
    }
    emac_status_free(st);
    emac_disconnect(c);
    return rc;
}

static int cmd_save(const struct ctl *ctl, int argc, char **argv)
{
    struct emac_error err = {{0}, {0}};
    struct emac_file f;
    emac_client *c;
    const char *name;
    int rc;

    if ((rc = want_args("save", argc, 1, 2, "SESSION [NAME]")) != 0)
        return rc;
    name = argc == 2 ? argv[1] : NULL;
    if ((c = ctl_connect(ctl)) == NULL)
        return 1;
    rc = emac_save(c, argv[0], name, &f, &err);
    emac_disconnect(c);
    if (rc < 0) {
        print_error(&err);
        return 1;
    }
    if (ctl->json) {
        /* The reply is {path, bytes}: print it as emad sent it. */
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 2);
        msgpack_pack_str_with_body(&pk, "path", 4);
        msgpack_pack_str_with_body(&pk, f.path, strlen(f.path));
        msgpack_pack_str_with_body(&pk, "bytes", 5);
        msgpack_pack_uint64(&pk, f.bytes);
        rc = print_json_raw(sb.data, sb.size, NULL, -1);
        msgpack_sbuffer_destroy(&sb);
        return rc;
    }
    printf("saved session \"%s\" to %s (%" PRIu64 " bytes)\n", argv[0], f.path, f.bytes);
    return 0;
}

static int cmd_drop(const struct ctl *ctl, int argc, char **argv)
{
    struct emac_error err = {{0}, {0}};
    emac_client *c;
    int rc;

    if ((rc = want_args("drop", argc, 1, 1, "SESSION")) != 0)
        return rc;
    if ((c = ctl_connect(ctl)) == NULL)
        return 1;
    rc = emac_drop(c, argv[0], &err);
    emac_disconnect(c);
    if (rc < 0) {
        print_error(&err);
        return 1;
    }
    if (ctl->json)
        printf("{}\n");
    else
        printf("dropped session \"%s\"\n", argv[0]);
    return 0;
}

/* ---- gc: stale shared-memory objects in /dev/shm ---- */

/* Where POSIX shared-memory objects live on Linux (glibc's shm_open). */
#define GC_SHM_DIR "/dev/shm"
#define GC_SHADOW_PREFIX "emad-shadow-"

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

/* Print s with control characters and DEL escaped as \xNN: names in
 * /dev/shm and process names are chosen by whoever made them. */
static void put_clean(const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch < 0x20 || ch == 0x7f)
            printf("\\x%02x", ch);
        else
            putchar(ch);
    }
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

/* The pid of a shadow's name, "emad-shadow-<pid>-<hex>" (daemon/shm.c), or
 * 0 when the name does not have that form. */
static pid_t shadow_pid(const char *name)
{
    const char *p = name + strlen(GC_SHADOW_PREFIX);
    char *end;
    long pid;

    if (strncmp(name, GC_SHADOW_PREFIX, strlen(GC_SHADOW_PREFIX)) != 0 || *p < '1' || *p > '9')
        return 0;
    errno = 0;
    pid = strtol(p, &end, 10);
    if (errno != 0 || pid <= 0 || pid > INT_MAX || *end != '-' || end[1] == '\0')
        return 0;
    for (p = end + 1; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return (pid_t)pid;
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

/* Decide about one object and act. Returns -1 when a removal failed. */
static int gc_one(int dirfd_shm, struct gc_obj *o, const struct gc_scan *sc, bool dry_run)
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
    if ((spid = shadow_pid(base)) != 0) {
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
     * swap_state is TRAIN again (PROTOCOL.md §3): never throw it away. */
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
    if (dry_run) {
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
        fprintf(stderr, "emactl: SYSTEM: cannot remove %s: %s\n", o->name, strerror(e));
        snprintf(o->reason, sizeof(o->reason), "cannot remove it: %s", strerror(e));
        rc = -1;
    }
    if (leased)
        fcntl(fd, F_SETLEASE, F_UNLCK);
    close(fd);
    return rc;
}

static void gc_print_json(const struct gc_list *l)
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
    print_json_raw(sb.data, sb.size, NULL, -1);
    msgpack_sbuffer_destroy(&sb);
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
            put_clean(o->name);
            printf(": ");
            put_clean(o->reason);
            printf("\n");
            continue;
        }
        removed++;
        freed += o->bytes;
        gc_size(o->bytes, size, sizeof(size));
        printf("%s ", o->action);
        put_clean(o->name);
        printf(" (owner uid %ld, %s, %s, ", (long)o->uid, size,
               o->kind == GC_SEGMENT ? "trainer segment" : gc_kind_name(o->kind));
        put_clean(o->reason);
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

static int cmd_gc(const struct ctl *ctl, int argc, char **argv)
{
    struct gc_list l = {NULL, 0, 0, 0, 0};
    struct gc_scan sc = {0, 0, "", false};
    const char *prefix = ctl->prefix ? ctl->prefix : "";
    int rc, errors = 0;

    (void)argv;
    if ((rc = want_args("gc", argc, 0, 0, "[--dry-run] [--prefix NAME]")) != 0)
        return rc;
    /* "--prefix /emad-foo" means "--prefix foo". */
    if (strncmp(prefix, SEG_NAME_PREFIX, strlen(SEG_NAME_PREFIX)) == 0)
        prefix += strlen(SEG_NAME_PREFIX);
    if (strchr(prefix, '/') != NULL || strlen(prefix) > NAME_MAX - 5) {
        fprintf(stderr, "emactl: --prefix %s: a name after /emad-, without '/'\n", ctl->prefix);
        return 2;
    }
    /* A lease we hold is broken by someone's open(): the kernel tells us
     * with SIGIO, whose default action would end emactl. We let go of the
     * lease soon anyway. */
    signal(SIGIO, SIG_IGN);

    int dfd = open(GC_SHM_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        fprintf(stderr, "emactl: SYSTEM: cannot open %s: %s\n", GC_SHM_DIR, strerror(errno));
        return 1;
    }
    if ((rc = gc_list_objects(dfd, prefix, &l)) < 0) {
        fprintf(stderr, "emactl: SYSTEM: cannot list %s: %s\n", GC_SHM_DIR, strerror(-rc));
        close(dfd);
        free(l.v);
        return 1;
    }
    if (l.n > 0 && (rc = gc_scan_proc(&l, &sc)) < 0) {
        fprintf(stderr, "emactl: SYSTEM: cannot read /proc: %s\n", strerror(-rc));
        close(dfd);
        free(l.v);
        return 1;
    }
    for (size_t i = 0; i < l.n; i++)
        if (gc_one(dfd, &l.v[i], &sc, ctl->dry_run) < 0)
            errors++;
    close(dfd);
    if (l.n > 0)
        qsort(l.v, l.n, sizeof(l.v[0]), gc_name_cmp);
    if (ctl->json)
        gc_print_json(&l);
    else
        gc_print_text(&l, ctl->dry_run);
    free(l.v);
    return errors > 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},
        {"dry-run", no_argument, NULL, 'n'},
        {"prefix", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    struct ctl ctl = {NULL, false, false, NULL};
    int c;

    opterr = 0;
    /* Options may follow the command ("emactl status --json"): getopt's
     * default permutation collects them from anywhere. */
    while ((c = getopt_long(argc, argv, ":hV", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            ctl.socket = optarg;
            break;
        case 'j':
            ctl.json = true;
            break;
        case 'n':
            ctl.dry_run = true;
            break;
        case 'p':
            ctl.prefix = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("emactl %s (protocol %d)\n", EMAD_VERSION, EMAC_PROTO_VERSION);
            return 0;
        case ':':
            fprintf(stderr, "emactl: option %s needs an argument\n", argv[optind - 1]);
            return 2;
        default:
            fprintf(stderr, "emactl: unknown option %s\nTry 'emactl --help'.\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind];
    int nargs = argc - optind - 1;
    char **args = argv + optind + 1;
    if (strcmp(cmd, "gc") == 0)
        return cmd_gc(&ctl, nargs, args);
    if (ctl.dry_run || ctl.prefix != NULL) {
        fprintf(stderr, "emactl: %s applies to gc only\nTry 'emactl --help'.\n",
                ctl.dry_run ? "--dry-run" : "--prefix");
        return 2;
    }
    if (strcmp(cmd, "status") == 0)
        return cmd_status(&ctl, nargs, args);
    if (strcmp(cmd, "list") == 0)
        return cmd_list(&ctl, nargs, args);
    if (strcmp(cmd, "show") == 0)
        return cmd_show(&ctl, nargs, args);
    if (strcmp(cmd, "save") == 0)
        return cmd_save(&ctl, nargs, args);
    if (strcmp(cmd, "drop") == 0)
        return cmd_drop(&ctl, nargs, args);
    fprintf(stderr, "emactl: unknown command \"%s\"\nTry 'emactl --help'.\n", cmd);
    return 2;
}
