/*
 * emactl_session.c - the commands that ask emad about itself and its
 * sessions or act on one: status, list, show, save, drop, metrics.
 */
#include "emactl.h"
#include "version.h"

#include <inttypes.h>
#include <stdlib.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <string.h>

emac_client *ctl_connect(const struct ctl *ctl)
{
    struct emac_error err = {{0}, {0}};
    emac_client *c = NULL;

    if (emac_connect(ctl->socket, "emactl " EMAD_VERSION, &c, &err) < 0) {
        ctl_remote_error(ctl, "connect", &err);
        return NULL;
    }
    return c;
}

int ctl_get_status(const struct ctl *ctl, const char *session, emac_client **c,
                      struct emac_status **st)
{
    struct emac_error err = {{0}, {0}};

    if ((*c = ctl_connect(ctl)) == NULL)
        return -ECONNREFUSED;
    if (emac_status(*c, session, st, &err) < 0) {
        emac_disconnect(*c);
        return ctl_remote_error(ctl, "status", &err);
    }
    return 0;
}

/* ---- the sessions table, the same in status and list ---- */

static const struct ctl_column session_cols[] = {
    {"SESSION", false}, {"OWNER", false},  {"TENSORS", true},  {"PARAMS", true},
    {"SHADOW", true},   {"UPDATES", true}, {"STARTED", false}, {"ACTIVE", false},
};
#define NSESSION_COLS (sizeof(session_cols) / sizeof(session_cols[0]))

void ctl_owner_text(const struct emac_session_info *s, char *buf, size_t len)
{
    if (s->attached)
        snprintf(buf, len, "%ld", s->owner_pid);
    else
        snprintf(buf, len, "detached");
}

static int print_sessions_table(const struct ctl *ctl, const struct emac_status *st)
{
    struct ctl_table t;
    int rc = 0;

    ctl_table_init(&t, session_cols, NSESSION_COLS);
    for (size_t i = 0; i < st->nsessions && rc == 0; i++) {
        const struct emac_session_info *s = &st->session_list[i];
        char owner[24], tensors[24], params[32], shadow[32], updates[24];
        ctl_owner_text(s, owner, sizeof(owner));
        snprintf(tensors, sizeof(tensors), "%" PRIu64, s->tensors);
        ctl_mib(s->params_bytes, params, sizeof(params));
        ctl_mib(s->shadow_bytes, shadow, sizeof(shadow));
        snprintf(updates, sizeof(updates), "%" PRIu64, s->updates);
        const char *row[NSESSION_COLS] = {s->session,
                                          owner,
                                          tensors,
                                          params,
                                          shadow,
                                          updates,
                                          s->started ? "yes" : "no",
                                          s->active ? "yes" : "no"};
        rc = ctl_table_add(&t, row);
    }
    if (rc == 0)
        ctl_table_print(&t, stdout);
    else
        ctl_error(ctl, "NOMEM", "no memory for the table of %zu sessions", st->nsessions);
    ctl_table_free(&t);
    return rc;
}

/* ---- status ---- */

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

static int print_status_text(const struct ctl *ctl, const struct emac_status *st)
{
    char mib[32];

    printf("%s %s (protocol %u), pid %ld, up ", st->server, st->version, st->proto, st->pid);
    print_duration(st->uptime_seconds);
    printf("\n");
    printf("  socket       ");
    ctl_put_clean(stdout, st->socket[0] ? st->socket : "(inherited, unnamed)");
    printf("\n  state dir    ");
    ctl_put_clean(stdout, st->state_dir);
    printf("\n");
    printf("  workers      %u\n", st->workers);
    printf("  connections  %u (limit %u)\n", st->connections, st->max_connections);
    printf("  sessions     %u (limit %u)\n", st->sessions, st->max_sessions);
    ctl_mib(st->max_message, mib, sizeof(mib));
    printf("  max message  %s\n", mib);
    if (st->nsessions == 0)
        return 0;
    printf("\n");
    return print_sessions_table(ctl, st);
}

/* status and list: one status request, printed as JSON (the whole reply, or
 * only json_key's part) or as text. */
static int show_status(struct ctl *ctl, const char *session, const char *json_key,
                       int (*text)(const struct ctl *ctl, const struct emac_status *st))
{
    struct emac_status *st = NULL;
    emac_client *c = NULL;
    int rc;

    if ((rc = ctl_get_status(ctl, session, &c, &st)) < 0)
        return rc;
    if (ctl->json) {
        const void *raw;
        size_t len;
        emac_status_raw(st, &raw, &len);
        rc = ctl_print_json(ctl, raw, len, json_key, -1);
    } else {
        rc = text(ctl, st);
    }
    emac_status_free(st);
    emac_disconnect(c);
    return rc;
}

static int cmd_status(struct ctl *ctl, int argc, char **argv)
{
    return show_status(ctl, argc == 1 ? argv[0] : NULL, NULL, print_status_text);
}

const struct ctl_cmd ctl_cmd_status = {
    .name = "status",
    .args = "[SESSION]",
    .summary = "the daemon (version, pid, uptime, workers,\n"
               "connections, limits) and its sessions as list shows\n"
               "them; with SESSION, only that one",
    .help = "Show emad itself: its version and protocol, pid, uptime, socket, state\n"
            "directory, worker threads, open connections and sessions (each beside its\n"
            "limit) and the largest message it accepts; then its sessions, one row each,\n"
            "in the columns 'emactl list' prints (see 'emactl list --help'). With\n"
            "SESSION, only that session's row, or NOSESSION when emad holds no session of\n"
            "that name that you may see.\n"
            "\n"
            "JSON output: emad's whole reply, {\"server\": {...}, \"sessions\": [...]}, each\n"
            "session as 'emactl show --json' prints it.\n"
            "\n" CTL_DAEMON_EXIT_STATUS "\n"
            "Examples:\n"
            "  emactl status\n"
            "  emactl status trainer-1 --json\n",
    .min_args = 0,
    .max_args = 1,
    .opts = CTL_OPT_SOCKET | CTL_OPT_JSON,
    .run = cmd_status,
};

/* ---- list ---- */

/* The sessions, then a row per job of shard sessions (emactl_job.c). */
static int print_list(const struct ctl *ctl, const struct emac_status *st)
{
    int rc = print_sessions_table(ctl, st);
    return rc == 0 ? ctl_print_jobs(ctl, st) : rc;
}

static int cmd_list(struct ctl *ctl, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return show_status(ctl, NULL, "sessions", print_list);
}

const struct ctl_cmd ctl_cmd_list = {
    .name = "list",
    .args = "",
    .summary = "one row per session: name, owner pid (or\n"
               "'detached'), tensors, params and shadow in MiB,\n"
               "updates, whether the EMA has started and whether its\n"
               "weights are swapped in (active)",
    .help = "One row per session of emad that you may see (a header, then no rows when\n"
            "there is none):\n"
            "  SESSION  its name\n"
            "  OWNER    the pid of the trainer attached to it, or 'detached' (emad keeps\n"
            "           it until that trainer registers again with resume, or a drop)\n"
            "  TENSORS  how many tensors it averages\n"
            "  PARAMS   the size of the trainer's parameters, in MiB\n"
            "  SHADOW   the size of emad's shadow (the EMA weights), in MiB\n"
            "  UPDATES  the EMA updates done\n"
            "  STARTED  'yes' once the EMA has begun (at ema_start), else 'no'\n"
            "  ACTIVE   'yes' while the EMA weights are swapped into the params, else 'no'\n"
            "'emactl status' prints the same rows; 'emactl show' the same fields, and\n"
            "more, of one session.\n"
            "Then, when sessions belong to distributed jobs (register's group), one row\n"
            "per job: JOB, WORLD (its size), RANKS (sessions here / world), ATTACHED,\n"
            "MIN BATCH and MAX BATCH (of the ranks' last events), MISSING (ranks without\n"
            "a session here) and LAGGING (ranks below MAX BATCH); see 'emactl job'.\n"
            "\n"
            "JSON output: the array of sessions, each as 'emactl show --json' prints it.\n"
            "\n" CTL_DAEMON_EXIT_STATUS "\n"
            "Example:\n"
            "  emactl list\n",
    .min_args = 0,
    .max_args = 0,
    .opts = CTL_OPT_SOCKET | CTL_OPT_JSON,
    .run = cmd_list,
};

/* ---- show ---- */

static void print_session_text(const struct emac_session_info *s)
{
    char owner[24], mib[32];

    printf("session          ");
    ctl_put_clean(stdout, s->session);
    ctl_owner_text(s, owner, sizeof(owner));
    printf("\nowner            %s %s\n", owner,
           s->attached ? "(the pid of the trainer attached to it)"
                       : "(waiting for register with resume, or drop)");
    printf("segment          ");
    ctl_put_clean(stdout, s->shm);
    printf("\nshadow segment   ");
    ctl_put_clean(stdout, s->shadow_shm);
    printf("\ntensors          %" PRIu64 "\n", s->tensors);
    ctl_mib(s->params_bytes, mib, sizeof(mib));
    printf("params           %s (%" PRIu64 " bytes)\n", mib, s->params_bytes);
    ctl_mib(s->shadow_bytes, mib, sizeof(mib));
    printf("shadow           %s (%" PRIu64 " bytes)\n", mib, s->shadow_bytes);
    printf("smoothing        %.10g (each update keeps this share of the shadow)\n", s->smoothing);
    printf("half_life        ");
    ctl_put_clean(stdout, s->half_life ? s->half_life : "- (set by smoothing)");
    printf("\nupdate_interval  ");
    ctl_put_clean(stdout, s->update_interval);
    printf("\nema_start        ");
    ctl_put_clean(stdout, s->ema_start);
    printf("\nstarted          %s\n", s->started ? "yes" : "no (waiting for ema_start)");
    printf("active           %s\n", s->active ? "yes (the EMA weights are in the params)"
                                              : "no (the training weights are in the params)");
    printf("updates          %" PRIu64 "\n", s->updates);
    printf("swaps            %" PRIu64 "\n", s->swaps);
    printf("requests         %" PRIu64 " (the highest event/swap seq applied)\n", s->seq);
    if (s->interrupted)
        printf("interrupted      yes: an update was cut short by a crash of emad; until the "
               "trainer sends it again, or for good if another request came first, the shadow "
               "holds part of it (load a saved state to be sure)\n");
    else
        printf("interrupted      no\n");
    if (s->has_last_time) {
        printf("last time        batch %" PRIu64 ", epoch %" PRIu64, s->last_batch, s->last_epoch);
        if (s->has_last_duration)
            printf(", duration %.4g", s->last_duration);
        printf("\n");
    } else {
        printf("last time        - (no event yet)\n");
    }
    if (s->updates > 0 && s->last_update_seconds > 0) {
        /* An update reads the params and the shadow and writes the shadow:
         * its speed is the bytes it moves, which a memcpy's is comparable to. */
        double secs = s->last_update_seconds;
        double moved = (double)s->params_bytes + 2.0 * (double)s->shadow_bytes;
        printf("last update      %.3f ms, %.2f GB/s moved, %.2f Gelem/s\n", secs * 1e3,
               moved / secs / 1e9, (double)s->shadow_bytes / 4.0 / secs / 1e9);
    } else {
        printf("last update      - (none yet)\n");
    }
}

/* A profile's settings, " key value" each, as emad reports them. */
static void print_settings(const struct emac_profile *c)
{
    const char *strs[][2] = {{"half_life", c->half_life},
                             {"update_interval", c->update_interval},
                             {"ema_start", c->ema_start}};
    const struct {
        const char *key;
        bool has;
        double v;
    } nums[] = {{"smoothing", c->has_smoothing, c->smoothing}, {"decay", c->has_decay, c->decay},
                {"min_decay", c->has_min_decay, c->min_decay},
                {"inv_gamma", c->has_inv_gamma, c->inv_gamma}, {"power", c->has_power, c->power},
                {"sigma_rel", c->has_sigma_rel, c->sigma_rel}, {"gamma", c->has_gamma, c->gamma}};

    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        if (strs[i][1] == NULL)
            continue;
        printf(" %s ", strs[i][0]);
        ctl_put_clean(stdout, strs[i][1]);
    }
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++)
        if (nums[i].has)
            printf(" %s %.10g", nums[i].key, nums[i].v);
    if (c->has_update_after_step)
        printf(" update_after_step %" PRIu64, c->update_after_step);
}

/* The profiles of a session registered with them (docs/protocol.md "Profiles"), one line each;
 * nothing for a session without. */
static void print_profiles_text(const struct emac_status *st)
{
    const struct emac_profile_info *p;
    size_t n = emac_status_profiles(st, 0, &p);

    for (size_t i = 0; i < n; i++) {
        printf("%-17s", i == 0 ? "profiles" : "");
        ctl_put_clean(stdout, p[i].name);
        printf(" (");
        ctl_put_clean(stdout, p[i].schedule);
        printf("%s):", p[i].eval ? ", eval" : "");
        print_settings(&p[i].config);
        printf("; %" PRIu64 " updates", p[i].updates);
        if (p[i].has_last_batch)
            printf(", last at batch %" PRIu64, p[i].last_batch);
        if (p[i].has_last_decay)
            printf(" with decay %.10g", p[i].last_decay);
        if (!p[i].started)
            printf(", not started");
        printf("\n");
        if (!p[i].has_health)
            continue;
        /* Its own health: the distance and no-op of its shadow (the session's lines above say
         * the rest). */
        printf("%-17s  health: %" PRIu64 " updates checked, distance ", "",
               p[i].health.updates_checked);
        if (!p[i].health.has_distance)
            printf("-");
        else if (!isfinite(p[i].health.distance))
            printf("%g (poisoned)", p[i].health.distance);
        else
            printf("%.6g", p[i].health.distance);
        printf(", %" PRIu64 " no-op updates%s\n", p[i].health.noop_updates,
               p[i].health.last_update_noop ? " (the last one: noop)" : "");
    }
}

/* The health lines of show (docs/running.md "Health"); h NULL: an emad without them. */
static void print_health_text(const struct emac_health *h)
{
    if (h == NULL) {
        printf("health           - (this emad does not report it)\n");
        return;
    }
    if (!h->enabled) {
        printf("health           off (registered with health false)\n");
        return;
    }
    printf("health           on, non-finite params: %s; %" PRIu64 " updates checked\n",
           h->on_nonfinite != NULL && strcmp(h->on_nonfinite, "apply") == 0
               ? "applied (on_nonfinite apply)"
               : "skipped (on_nonfinite skip)",
           h->updates_checked);
    printf("alarms           ");
    if (h->nalarms == 0)
        printf("none");
    for (size_t i = 0; i < h->nalarms; i++) {
        printf("%s", i ? ", " : "");
        ctl_put_clean(stdout, h->alarms[i]);
    }
    printf("\ndistance         ");
    if (!h->has_distance)
        printf("- (no update checked yet)\n");
    else if (!isfinite(h->distance))
        printf("%g: the shadow holds NaN or Inf values (poisoned)\n", h->distance);
    else
        printf("%.6g (RMS of shadow - params before the last update)\n", h->distance);
    printf("non-finite       %" PRIu64 " param elements in %" PRIu64 " updates", h->nonfinite_total,
           h->nonfinite_updates);
    if (h->has_last_nonfinite) {
        printf("; the last at update %" PRIu64 ": %" PRIu64 ", the first in tensor \"",
               h->last_nonfinite_update, h->last_nonfinite_count);
        ctl_put_clean(stdout, h->last_nonfinite_tensor);
        printf("\"");
    }
    printf("\nno-op updates    %" PRIu64 " (the last one %s)\n", h->noop_updates,
           h->last_update_noop ? "changed no shadow element" : "changed the shadow");
    printf("interval         ");
    if (h->has_interval)
        printf("%.3f s between updates, usually", h->interval);
    else
        printf("- (fewer than two updates)");
    printf("; %s\n", h->stalled ? "stalled: no update for far longer, trainer attached"
                                : "not stalled");
}

static int cmd_show(struct ctl *ctl, int argc, char **argv)
{
    struct emac_status *st = NULL;
    emac_client *c = NULL;
    int rc;

    (void)argc;
    if ((rc = ctl_get_status(ctl, argv[0], &c, &st)) < 0)
        return rc;
    if (st->nsessions != 1) {
        ctl_error(ctl, "BADREPLY", "emad's status of \"%s\" lists %zu sessions", argv[0],
                  st->nsessions);
        rc = -EBADMSG;
    } else if (ctl->json) {
        const void *raw;
        size_t len;
        emac_status_raw(st, &raw, &len);
        rc = ctl_print_json(ctl, raw, len, "sessions", 0);
    } else {
        print_session_text(&st->session_list[0]);
        const struct emac_group *g = emac_status_group(st, 0);
        if (g != NULL) {
            printf("group            job ");
            ctl_put_clean(stdout, g->job);
            printf(", rank %" PRIu64 " of %" PRIu64 ", %" PRIu64 " replica%s\n", g->rank,
                   g->world, g->replicas, g->replicas == 1 ? "" : "s");
        }
        uint64_t attached, diverged;
        if (emac_status_replicas(st, 0, &attached, &diverged))
            printf("replicas         %" PRIu64 " attached (the leader included); %" PRIu64
                   " divergence%s found\n", attached, diverged, diverged == 1 ? "" : "s");
        print_health_text(emac_status_health(st, 0));
        print_profiles_text(st);
    }
    emac_status_free(st);
    emac_disconnect(c);
    return rc;
}

const struct ctl_cmd ctl_cmd_show = {
    .name = "show",
    .args = "SESSION",
    .summary = "every field of one session's state: owner, segments,\n"
               "sizes, smoothing and half-life, update interval,\n"
               "start, started/active, updates, swaps, the requests\n"
               "applied (seq), the last event's time, the last\n"
               "update's duration and speed, whether a crash of\n"
               "emad cut an update short (interrupted), and the\n"
               "health signals",
    .help = "Every field of the session SESSION, one per line:\n"
            "  session          its name\n"
            "  owner            the pid of the trainer attached to it, or 'detached'\n"
            "  segment          the trainer's shared-memory segment (params and stash)\n"
            "  shadow segment   emad's segment holding the EMA weights\n"
            "  tensors          how many tensors it averages\n"
            "  params, shadow   their sizes in MiB, and in bytes\n"
            "  smoothing        the share of the shadow each update keeps\n"
            "  half_life        the configured half-life, or '-' when set by smoothing\n"
            "  update_interval  how often the EMA is updated\n"
            "  ema_start        when the EMA begins\n"
            "  started          'yes' once the EMA has begun, else 'no'\n"
            "  active           'yes' while the EMA weights are swapped into the\n"
            "                   params, else 'no'\n"
            "  updates, swaps   how many were done\n"
            "  requests         the highest event or swap request number (seq) applied\n"
            "  interrupted      'yes' when a crash of emad cut an update short and the\n"
            "                   shadow holds part of it, else 'no'\n"
            "  last time        the trainer's clock at the last event (batch, epoch,\n"
            "                   duration)\n"
            "  last update      how long the last update took, in ms, and its speed: GB/s\n"
            "                   moved (params read, shadow read and written) and Gelem/s\n"
            "                   (4-byte shadow elements)\n"
            "  health           'on' or 'off' (register's health), what is done with NaN\n"
            "                   or Inf params (on_nonfinite), and the updates checked\n"
            "  alarms           'none', or: nonfinite (the last update had NaN or Inf\n"
            "                   params), poisoned (the shadow holds NaN or Inf), noop\n"
            "                   (the last update changed nothing), stalled (no update for\n"
            "                   --stall-factor usual intervals, trainer attached)\n"
            "  distance         RMS of shadow - params before the last update, over the\n"
            "                   finite params\n"
            "  non-finite       NaN or Inf param elements seen, in how many updates, and\n"
            "                   the last such update with its first tensor\n"
            "  no-op updates    updates that changed no shadow element\n"
            "  interval         the usual time between updates, and whether stalled\n"
            "  profiles         with profiles: each one's settings and counters, and under\n"
            "                   it its own health (updates checked, distance, no-op updates)\n"
            "  group            a shard session's job, rank, world size and replicas\n"
            "  replicas         with replicas: how many are attached, and the divergences\n"
            "                   found (docs/scaleout.md \"Replicas\")\n"
            "See 'Health' in docs/running.md for what each alarm means and what to do.\n"
            "The owner, sizes, updates, started and active are shown as in 'emactl list'.\n"
            "\n"
            "JSON output: the session's state map as emad sent it, every field by its\n"
            "protocol name (owner_pid, params_bytes, last_update_seconds, ...); the\n"
            "health signals in its map \"health\" (a NaN or Inf distance prints as null:\n"
            "the \"poisoned\" alarm tells it from one not known yet).\n"
            "\n" CTL_DAEMON_EXIT_STATUS "\n"
            "Examples:\n"
            "  emactl show trainer-1\n"
            "  emactl show trainer-1 --json\n",
    .min_args = 1,
    .max_args = 1,
    .opts = CTL_OPT_SOCKET | CTL_OPT_JSON,
    .run = cmd_show,
};

/* ---- save ---- */

static int cmd_save(struct ctl *ctl, int argc, char **argv)
{
    struct emac_error err = {{0}, {0}};
    struct emac_file f;
    emac_client *c;
    int rc;

    if ((c = ctl_connect(ctl)) == NULL)
        return -ECONNREFUSED;
    rc = emac_save(c, argv[0], argc == 2 ? argv[1] : NULL, &f, &err);
    emac_disconnect(c);
    if (rc < 0)
        return ctl_remote_error(ctl, "save", &err);
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
        rc = ctl_print_json(ctl, sb.data, sb.size, NULL, -1);
        msgpack_sbuffer_destroy(&sb);
        return rc;
    }
    printf("saved session \"%s\" to ", argv[0]);
    ctl_put_clean(stdout, f.path);
    printf(" (%" PRIu64 " bytes)\n", f.bytes);
    return 0;
}

const struct ctl_cmd ctl_cmd_save = {
    .name = "save",
    .args = "SESSION [NAME]",
    .summary = "write the session's state (config, counters,\n"
               "shadow) to the file NAME in emad's state directory;\n"
               "prints the path and size",
    .help = "Have emad write the state of SESSION (its configuration, counters and\n"
            "shadow) to the file NAME in emad's state directory ('state dir' in\n"
            "'emactl status'). NAME is a file name, not a path; without it, emad\n"
            "chooses one. Prints the file's path and size. Loading such a file is for\n"
            "the session's owner: see emac_load in emaclient.h.\n"
            "\n"
            "JSON output: {\"path\": PATH, \"bytes\": SIZE}.\n"
            "\n" CTL_DAEMON_EXIT_STATUS "\n"
            "Example:\n"
            "  emactl save trainer-1 before-lr-drop\n",
    .min_args = 1,
    .max_args = 2,
    .opts = CTL_OPT_SOCKET | CTL_OPT_JSON,
    .run = cmd_save,
};

/* ---- drop ---- */

static int cmd_drop(struct ctl *ctl, int argc, char **argv)
{
    struct emac_error err = {{0}, {0}};
    emac_client *c;
    int rc;

    (void)argc;
    if ((c = ctl_connect(ctl)) == NULL)
        return -ECONNREFUSED;
    rc = emac_drop(c, argv[0], &err);
    emac_disconnect(c);
    if (rc < 0)
        return ctl_remote_error(ctl, "drop", &err);
    if (ctl->json)
        printf("{}\n");
    else
        printf("dropped session \"%s\"\n", argv[0]);
    return 0;
}

const struct ctl_cmd ctl_cmd_drop = {
    .name = "drop",
    .args = "SESSION",
    .summary = "remove a detached session and its shadow",
    .help = "Remove the session SESSION and its shadow from emad. Only a detached\n"
            "session (OWNER 'detached' in 'emactl list') can be dropped: while its\n"
            "trainer is attached, emad answers STATE.\n"
            "\n"
            "JSON output: {}.\n"
            "\n" CTL_DAEMON_EXIT_STATUS "\n"
            "Example:\n"
            "  emactl drop trainer-1\n",
    .min_args = 1,
    .max_args = 1,
    .opts = CTL_OPT_SOCKET | CTL_OPT_JSON,
    .run = cmd_drop,
};

/* ---- metrics ---- */

static int cmd_metrics(struct ctl *ctl, int argc, char **argv)
{
    struct emac_error err = {{0}, {0}};
    emac_client *c;
    char *text = NULL;
    int rc;

    (void)argc;
    (void)argv;
    if ((c = ctl_connect(ctl)) == NULL)
        return -ECONNREFUSED;
    rc = emac_metrics(c, &text, &err);
    emac_disconnect(c);
    if (rc < 0)
        return ctl_remote_error(ctl, "metrics", &err);
    if (ctl->json) {
        /* emad's reply as it was: {"text": ...}. */
        msgpack_sbuffer sb;
        msgpack_packer pk;
        size_t len = strlen(text);
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 1);
        msgpack_pack_str_with_body(&pk, "text", 4);
        msgpack_pack_str_with_body(&pk, text, len);
        rc = ctl_print_json(ctl, sb.data, sb.size, NULL, -1);
        msgpack_sbuffer_destroy(&sb);
    } else {
        /* The exposition escapes what others chose (session names) itself. */
        fputs(text, stdout);
    }
    free(text);
    return rc;
}

const struct ctl_cmd ctl_cmd_metrics = {
    .name = "metrics",
    .args = "",
    .summary = "emad's metrics in the Prometheus text format",
    .help = "Print emad's metrics in the Prometheus text exposition format 0.0.4: its\n"
            "counters (updates, swaps, errors by code, state file operations), gauges\n"
            "(sessions by state, connections, queued operations) and histograms\n"
            "(update and state file durations), then one set of series per session,\n"
            "labelled session=\"<uid>:<name>\". docs/running.md, section \"Metrics\",\n"
            "describes every series.\n"
            "\n"
            "Session names are their owners' data: unless you are root, the per-session\n"
            "series are those of your own sessions only. The series of every session are\n"
            "also served by emad --metrics and written by emad --metrics-textfile, where\n"
            "the operator chooses who may read them.\n"
            "\n"
            "JSON output: {\"text\": \"...\"}, the same text as one string.\n"
            "\n" CTL_DAEMON_EXIT_STATUS "\n"
            "Examples:\n"
            "  emactl metrics\n"
            "  emactl metrics | grep '^emad_updates_total'\n",
    .min_args = 0,
    .max_args = 0,
    .opts = CTL_OPT_SOCKET | CTL_OPT_JSON,
    .run = cmd_metrics,
};
