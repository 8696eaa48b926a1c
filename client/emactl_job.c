/*
 * emactl_job.c - the sessions of a distributed job seen together (docs/protocol.md "Shard
 * sessions"): 'emactl list' adds a row per job, 'emactl job JOB' a row per rank. A job's ranks
 * are sessions registered with the same group job; a rank with no session is missing, a rank
 * whose last batch is below the highest of the job lags.
 */
#include "emactl.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the sessions of one job say together. */
struct job_view {
    const char *job;
    uint64_t world;     /* the largest world a session of it names */
    size_t sessions;    /* sessions in it */
    size_t ranks;       /* ranks they hold (a session of replicas holds several) */
    size_t attached;
    uint64_t min_batch, max_batch; /* of the sessions that have seen an event */
    bool any_batch;
    bool world_differs; /* its sessions disagree on the world size */
};

static uint64_t batch_of(const struct emac_session_info *s)
{
    return s->has_last_time ? s->last_batch : 0;
}

/* Whether session i belongs to job. */
static bool of_job(const struct emac_status *st, size_t i, const char *job)
{
    const struct emac_group *g = emac_status_group(st, i);

    return g != NULL && strcmp(g->job, job) == 0;
}

/* Whether session i holds rank r of its job: its own rank, or one of its replicas'. */
static bool holds_rank(const struct emac_status *st, size_t i, uint64_t r)
{
    const struct emac_group *g = emac_status_group(st, i);
    const uint64_t *ranks;
    size_t n = emac_status_replica_ranks(st, i, &ranks);

    if (n == 0)
        return g != NULL && g->rank == r;
    for (size_t k = 0; k < n; k++)
        if (ranks[k] == r)
            return true;
    return false;
}

/* The ranks session i holds: its replicas' when it has some attached, else its own. */
static size_t ranks_of(const struct emac_status *st, size_t i, const uint64_t **ranks)
{
    const struct emac_group *g = emac_status_group(st, i);
    size_t n = emac_status_replica_ranks(st, i, ranks);

    if (n > 0)
        return n;
    *ranks = &g->rank;
    return 1;
}

static void job_view(const struct emac_status *st, const char *job, struct job_view *v)
{
    memset(v, 0, sizeof(*v));
    v->job = job;
    for (size_t i = 0; i < st->nsessions; i++) {
        const struct emac_group *g = emac_status_group(st, i);
        const struct emac_session_info *s = &st->session_list[i];
        if (!of_job(st, i, job))
            continue;
        if (v->sessions > 0 && g->world != v->world)
            v->world_differs = true;
        if (g->world > v->world)
            v->world = g->world;
        v->sessions++;
        const uint64_t *ranks;
        v->ranks += ranks_of(st, i, &ranks);
        v->attached += s->attached;
        uint64_t b = batch_of(s);
        if (!v->any_batch || b < v->min_batch)
            v->min_batch = b;
        if (!v->any_batch || b > v->max_batch)
            v->max_batch = b;
        v->any_batch = true;
    }
}

/* The ranks below world that no session of job holds, as "2,5" (at most len bytes, "..." when
 * cut); "-" when none. */
static void missing_ranks(const struct emac_status *st, const struct job_view *v, char *buf,
                          size_t len)
{
    size_t at = 0, shown = 0;

    buf[0] = '\0';
    for (uint64_t r = 0; r < v->world; r++) {
        bool found = false;
        for (size_t i = 0; i < st->nsessions && !found; i++)
            found = of_job(st, i, v->job) && holds_rank(st, i, r);
        if (found)
            continue;
        if (at + 24 >= len) {
            snprintf(buf + at, len - at, "...");
            return;
        }
        at += (size_t)snprintf(buf + at, len - at, "%s%" PRIu64, shown++ ? "," : "", r);
    }
    if (shown == 0)
        snprintf(buf, len, "-");
}

/* The ranks of job whose last batch is below the job's highest, as missing_ranks lists. */
static void lagging_ranks(const struct emac_status *st, const struct job_view *v, char *buf,
                          size_t len)
{
    size_t at = 0, shown = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < st->nsessions; i++) {
        if (!of_job(st, i, v->job) || batch_of(&st->session_list[i]) >= v->max_batch)
            continue;
        const uint64_t *ranks;
        size_t n = ranks_of(st, i, &ranks);
        for (size_t k = 0; k < n; k++) {
            if (at + 24 >= len) {
                snprintf(buf + at, len - at, "...");
                return;
            }
            at += (size_t)snprintf(buf + at, len - at, "%s%" PRIu64, shown++ ? "," : "",
                                   ranks[k]);
        }
    }
    if (shown == 0)
        snprintf(buf, len, "-");
}

static const struct ctl_column job_cols[] = {
    {"JOB", false},       {"WORLD", true},     {"RANKS", true},   {"ATTACHED", true},
    {"MIN BATCH", true},  {"MAX BATCH", true}, {"MISSING", false}, {"LAGGING", false},
};
#define NJOB_COLS (sizeof(job_cols) / sizeof(job_cols[0]))

int ctl_print_jobs(const struct ctl *ctl, const struct emac_status *st)
{
    struct ctl_table t;
    int rc = 0;
    bool any = false;

    ctl_table_init(&t, job_cols, NJOB_COLS);
    for (size_t i = 0; i < st->nsessions && rc == 0; i++) {
        const struct emac_group *g = emac_status_group(st, i);
        bool seen = false;
        if (g == NULL)
            continue;
        /* Each job once, at its first session. */
        for (size_t k = 0; k < i && !seen; k++)
            seen = of_job(st, k, g->job);
        if (seen)
            continue;
        struct job_view v;
        char world[24], ranks[48], attached[24], lo[24], hi[24], missing[128], lag[128];
        job_view(st, g->job, &v);
        snprintf(world, sizeof(world), "%" PRIu64 "%s", v.world, v.world_differs ? "?" : "");
        snprintf(ranks, sizeof(ranks), "%zu/%" PRIu64, v.ranks, v.world);
        snprintf(attached, sizeof(attached), "%zu", v.attached);
        snprintf(lo, sizeof(lo), "%" PRIu64, v.min_batch);
        snprintf(hi, sizeof(hi), "%" PRIu64, v.max_batch);
        missing_ranks(st, &v, missing, sizeof(missing));
        lagging_ranks(st, &v, lag, sizeof(lag));
        const char *row[NJOB_COLS] = {g->job, world, ranks, attached, lo, hi, missing, lag};
        rc = ctl_table_add(&t, row);
        any = true;
    }
    if (rc == 0 && any) {
        printf("\n");
        ctl_table_print(&t, stdout);
    } else if (rc < 0) {
        ctl_error(ctl, "NOMEM", "no memory for the table of jobs");
    }
    ctl_table_free(&t);
    return rc;
}

/* ---- job ---- */

static const struct ctl_column rank_cols[] = {
    {"RANK", true}, {"SESSION", false}, {"OWNER", false}, {"BATCH", true},
    {"UPDATES", true}, {"REPLICAS", true}, {"STATE", false},
};
#define NRANK_COLS (sizeof(rank_cols) / sizeof(rank_cols[0]))

static int print_job(const struct ctl *ctl, const struct emac_status *st, const char *job)
{
    struct job_view v;
    struct ctl_table t;
    int rc = 0;

    job_view(st, job, &v);
    if (v.sessions == 0) {
        ctl_error(ctl, "NOSESSION", "no session of job \"%s\" that you may see", job);
        return -ENOENT;
    }
    char missing[128], lag[128];
    missing_ranks(st, &v, missing, sizeof(missing));
    lagging_ranks(st, &v, lag, sizeof(lag));
    printf("job ");
    ctl_put_clean(stdout, job);
    printf(": world %" PRIu64 "%s, %zu of its ranks present in %zu sessions (%zu attached), "
           "batches %" PRIu64 " to %" PRIu64 "\n  missing  %s\n  lagging  %s\n\n", v.world,
           v.world_differs ? " (its sessions disagree)" : "", v.ranks, v.sessions, v.attached,
           v.min_batch, v.max_batch, missing, lag);
    ctl_table_init(&t, rank_cols, NRANK_COLS);
    /* By rank: a job has few enough ranks per node for a quadratic walk. */
    for (uint64_t r = 0; r < v.world && rc == 0; r++) {
        for (size_t i = 0; i < st->nsessions && rc == 0; i++) {
            const struct emac_session_info *s = &st->session_list[i];
            if (!of_job(st, i, job) || !holds_rank(st, i, r))
                continue;
            char rank[24], owner[24], batch[24], updates[24], replicas[24];
            snprintf(rank, sizeof(rank), "%" PRIu64, r);
            ctl_owner_text(s, owner, sizeof(owner));
            snprintf(batch, sizeof(batch), "%" PRIu64, batch_of(s));
            snprintf(updates, sizeof(updates), "%" PRIu64, s->updates);
            snprintf(replicas, sizeof(replicas), "%" PRIu64, emac_status_group(st, i)->replicas);
            const char *state = batch_of(s) < v.max_batch ? "lagging" : "ok";
            const char *row[NRANK_COLS] = {rank, s->session, owner, batch, updates, replicas,
                                           state};
            rc = ctl_table_add(&t, row);
        }
    }
    if (rc == 0)
        ctl_table_print(&t, stdout);
    else
        ctl_error(ctl, "NOMEM", "no memory for the table of ranks");
    ctl_table_free(&t);
    return rc;
}

static int cmd_job(struct ctl *ctl, int argc, char **argv)
{
    struct emac_status *st = NULL;
    emac_client *c;
    int rc;

    (void)argc;
    if ((rc = ctl_get_status(ctl, NULL, &c, &st)) < 0)
        return rc;
    if (ctl->json) {
        /* The sessions of the job, each as 'emactl show --json' prints it but on one line of its
         * own (JSON lines, for scripts). */
        const void *raw;
        size_t len;
        bool any = false;
        emac_status_raw(st, &raw, &len);
        rc = 0;
        for (size_t i = 0; i < st->nsessions && rc == 0; i++) {
            if (!of_job(st, i, argv[0]))
                continue;
            any = true;
            rc = ctl_print_json_line(ctl, raw, len, "sessions", (long)i);
        }
        if (rc == 0 && !any) {
            ctl_error(ctl, "NOSESSION", "no session of job \"%s\" that you may see", argv[0]);
            rc = -ENOENT;
        }
    } else {
        rc = print_job(ctl, st, argv[0]);
    }
    emac_status_free(st);
    emac_disconnect(c);
    return rc;
}

const struct ctl_cmd ctl_cmd_job = {
    .name = "job",
    .args = "JOB",
    .summary = "the sessions of a distributed job, one row per\n"
               "rank: missing ranks, lowest and highest batch, the\n"
               "ranks that lag",
    .help = "The sessions registered with the group job JOB (shard sessions, see\n"
            "docs/scaleout.md), together: the world size, how many of its ranks have a\n"
            "session here and how many are attached, the lowest and highest batch of\n"
            "their last events, the ranks without a session (missing: not registered on\n"
            "this node's emad, or closed) and the ranks whose last batch is below the\n"
            "highest (lagging); then one row per rank:\n"
            "  RANK      its rank in the job\n"
            "  SESSION   its session\n"
            "  OWNER     the pid of the trainer attached to it, or 'detached'\n"
            "  BATCH     the batch of its last event\n"
            "  UPDATES   the EMA updates done\n"
            "  REPLICAS  the ranks of the node holding the same slices, as registered\n"
            "  STATE     'lagging' or 'ok'\n"
            "One emad serves one node: a job spread over several nodes shows here only\n"
            "this node's ranks, and the others as missing. 'emactl list' prints one\n"
            "summary row per job after the sessions.\n"
            "\n"
            "JSON output: each session of the job with the fields 'emactl show --json'\n"
            "prints, one JSON object per line. NOSESSION when no session belongs to JOB.\n"
            "\n" CTL_DAEMON_EXIT_STATUS "\n"
            "Example:\n"
            "  emactl job llama-70b\n",
    .min_args = 1,
    .max_args = 1,
    .opts = CTL_OPT_SOCKET | CTL_OPT_JSON,
    .run = cmd_job,
};
