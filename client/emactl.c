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
"  status [SESSION]    the daemon (version, pid, uptime, workers, connections,\n"
"                      limits) and its sessions; with SESSION, only that one\n"
"\n"
"Options (before or after the command):\n"
"  --socket PATH       emad's socket (default: $EMAD_SOCKET, else\n"
"                      $XDG_RUNTIME_DIR/emad.sock, else /run/emad/emad.sock)\n"
"  --json              print the reply as JSON instead of text\n"
"  -h, --help          show this help and exit\n"
"  -V, --version       show the version and exit\n"
"\n"
"Exit status: 0 on success, 1 when emad reports an error or cannot be\n"
"reached, 2 on a usage error. Errors are printed as 'emactl: CODE: message'\n"
"with the protocol's error code (e.g. NOSESSION, PERM, CONNECT).\n",
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

static int print_json_raw(const void *data, size_t len)
{
    msgpack_unpacked u;
    size_t off = 0;
    int rc = 0;

    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, data, len, &off) != MSGPACK_UNPACK_SUCCESS) {
        fprintf(stderr, "emactl: BADREPLY: cannot decode emad's reply\n");
        rc = 1;
    } else {
        json_print(stdout, &u.data, 0);
        fputc('\n', stdout);
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}

static int cmd_status(const struct ctl *ctl, int argc, char **argv)
{
    struct emac_error err = {{0}, {0}};
    struct emac_status *st = NULL;
    emac_client *c = NULL;
    const char *session = NULL;
    int rc;

    if (argc > 1) {
        fprintf(stderr, "emactl: status takes at most one SESSION\n");
        return 2;
    }
    if (argc == 1)
        session = argv[0];
    if (emac_connect(ctl->socket, "emactl " EMAD_VERSION, &c, &err) < 0) {
        print_error(&err);
        return 1;
    }
    rc = emac_status(c, session, &st, &err);
    if (rc < 0) {
        print_error(&err);
        emac_disconnect(c);
        return 1;
    }
    if (ctl->json) {
        const void *raw;
        size_t len;
        emac_status_raw(st, &raw, &len);
        rc = print_json_raw(raw, len);
    } else {
        print_status_text(st);
        rc = 0;
    }
    emac_status_free(st);
    emac_disconnect(c);
    return rc;
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
    if (strcmp(cmd, "status") == 0)
        return cmd_status(&ctl, argc - optind - 1, argv + optind + 1);
    fprintf(stderr, "emactl: unknown command \"%s\"\nTry 'emactl --help'.\n", cmd);
    return 2;
}
