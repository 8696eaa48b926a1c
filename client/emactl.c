/*
 * emactl - inspect and drive emad from the command line.
 */
#include "emaclient.h"
#include "json.h"
#include "version.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ctl {
    const char *socket; /* --socket, or NULL to resolve */
    bool json;          /* --json */
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
"                        start, started/active, updates, swaps, the last event's\n"
"                        time, and the last update's duration (ms) and rate (GB/s\n"
"                        moved; Gelem/s counting 4-byte shadow elements)\n"
"  save SESSION [NAME]   write the session's state (config, counters, shadow) to\n"
"                        the file NAME (a name, not a path; default chosen by emad)\n"
"                        in emad's state directory; prints the path and size.\n"
"                        (Loading such a file is for the session's owner: see\n"
"                        emac_load in emaclient.h.)\n"
"  drop SESSION          remove a detached session and its shadow\n"
"\n"
"Options (before or after the command):\n"
"  --socket PATH         emad's socket (default: $EMAD_SOCKET, else\n"
"                        $XDG_RUNTIME_DIR/emad.sock, else /run/emad/emad.sock)\n"
"  --json                print emad's reply as JSON instead of text: status the\n"
"                        whole reply, list the sessions array, show the session's\n"
"                        state map, save {path, bytes}, drop {}\n"
"  -h, --help            show this help and exit\n"
"  -V, --version         show the version and exit\n"
"\n"
"Environment:\n"
"  EMAD_SOCKET, XDG_RUNTIME_DIR   locate the socket when --socket is not given\n"
"\n"
"Exit status: 0 on success, 1 when emad reports an error or cannot be\n"
"reached, 2 on a usage error. Errors are printed as 'emactl: CODE: message'\n"
"with the protocol's error code (e.g. NOSESSION, PERM, STATE, IO, CONNECT).\n"
"\n"
"Examples:\n"
"  emactl list\n"
"  emactl show trainer-1 --json\n"
"  emactl save trainer-1 before-lr-drop\n"
"  emactl drop trainer-1\n",
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

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    struct ctl ctl = {NULL, false};
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
