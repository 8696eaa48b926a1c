/*
 * main.c - emad: options, signals, systemd glue. The only globals of the
 * daemon live here (none are needed: the context is a local of main).
 */
#include "dispatch.h"
#include "emad.h"
#include "exporter.h"
#include "httpd.h"
#include "listen.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "opts.h"
#include "pool.h"
#include "server.h"
#include "session.h"
#include "shm.h"
#include "store.h"
#include "version.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <uv.h>

struct daemon {
    struct emad ctx;
    struct emad_opts opts;
    struct log log;
    struct server srv;
    struct registry sessions;
    struct pool pool;
    struct metrics metrics;
    struct exporter exporter; /* --metrics, --metrics-textfile */
    int sig_fd;               /* signalfd of SIGTERM, SIGINT and SIGHUP */
    uv_poll_t sig_poll;       /* readable: one of them arrived */
    const char *notify_socket;
    uv_timer_t watchdog;      /* pings systemd while the workers make progress */
    uv_timer_t health_tick;   /* the sessions' stall check, once a second */
    bool watchdog_on;
    bool watchdog_withheld;   /* the last tick found the pool stuck */
    uint64_t watchdog_progress;
    int state_lock;           /* flock on <state-dir>/.lock, held until exit */
};

static void on_watchdog(uv_timer_t *t)
{
    struct daemon *d = t->data;

    /* A stuck worker must make systemd restart us: ping only while the pool
     * moves (or has nothing to do). */
    if (pool_alive(&d->pool, &d->watchdog_progress)) {
        if (d->watchdog_withheld)
            log_info(&d->log, "worker pool progressing again; watchdog pings resumed");
        d->watchdog_withheld = false;
        notify_send(d->notify_socket, "WATCHDOG=1");
    } else if (!d->watchdog_withheld) {
        d->watchdog_withheld = true;
        log_warn(&d->log, "worker pool made no progress for %.0f ms with work queued; "
                 "withholding the watchdog ping", (double)uv_timer_get_repeat(t));
    }
}

/* systemd's WATCHDOG_USEC (and WATCHDOG_PID, when set, naming us): ping at
 * half the interval. */
static int start_watchdog(struct daemon *d)
{
    const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    unsigned long long us;

    if (usec == NULL || d->notify_socket == NULL)
        return 0;
    if (pid != NULL && atol(pid) != (long)getpid())
        return 0;
    us = strtoull(usec, NULL, 10);
    if (us < 2000)
        return 0;
    uv_timer_init(d->ctx.loop, &d->watchdog);
    d->watchdog.data = d;
    d->watchdog_on = true;
    log_info(&d->log, "watchdog: pinging every %llu ms", us / 2000);
    return uv_timer_start(&d->watchdog, on_watchdog, us / 2000, us / 2000);
}

static void close_sig_fd(uv_handle_t *h)
{
    struct daemon *d = h->data;

    close(d->sig_fd);
    d->sig_fd = -1;
}

static void on_health_tick(uv_timer_t *t)
{
    struct daemon *d = t->data;

    registry_health_tick(&d->sessions, uv_hrtime());
}

static void close_signals(struct daemon *d)
{
    uv_close((uv_handle_t *)&d->health_tick, NULL);
    if (d->watchdog_on)
        uv_close((uv_handle_t *)&d->watchdog, NULL);
    uv_close((uv_handle_t *)&d->sig_poll, close_sig_fd);
}

static void log_stale(void *arg, const char *name)
{
    log_info(arg, "removed stale shadow %s (its emad is gone)", name);
}

/* Where sessions wait for the next start after a clean stop. */
static void kept_dir(const struct daemon *d, char *out, size_t len)
{
    if (snprintf(out, len, "%s/sessions", d->opts.state_dir) >= (int)len)
        out[0] = '\0';
}

/* Last step of a stop: no connection and no work left. */
static void on_drained(struct registry *r)
{
    struct daemon *d = (struct daemon *)((char *)r - offsetof(struct daemon, sessions));
    char dir[PATH_MAX];

    kept_dir(d, dir, sizeof(dir));
    if (dir[0] != '\0' && registry_save_all(&d->sessions, dir) < 0)
        log_error(&d->log, "some sessions could not be kept for the next start (see above)");
    exporter_stop(&d->exporter);
    pool_destroy(&d->pool);
    registry_free(&d->sessions);
    log_info(&d->log, "stopped");
    close_signals(d);
}

static void on_stopped(struct server *srv)
{
    struct daemon *d = (struct daemon *)((char *)srv - offsetof(struct daemon, srv));
    /* Nothing was read since the stop began and the operations had ended;
     * closing connections queues none, but the registry says so itself. */
    registry_drain(&d->sessions, on_drained);
}

/* Every operation received before the stop has ended: its reply is queued. */
static void on_ops_ended(struct registry *r)
{
    struct daemon *d = (struct daemon *)((char *)r - offsetof(struct daemon, sessions));

    server_stop(&d->srv, on_stopped);
}

static void on_signal(struct daemon *d, int signum)
{

    if (signum == SIGHUP) {
        if (log_reopen(&d->log) == 0)
            log_info(&d->log, "SIGHUP: log file reopened");
        return;
    }
    if (d->srv.stopping)
        return;
    log_info(&d->log, "%s: stopping", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    notify_send(d->notify_socket, "STOPPING=1");
    /* A clean stop must be at least as kind as a crash: the requests already
     * received finish and are answered (the peers that read get every reply)
     * before the connections close. Nothing new is accepted or read. */
    server_quiesce(&d->srv);
    registry_drain(&d->sessions, on_ops_ended);
}

/* Descriptors kept for what is not a connection: the log, the listening
 * and spare sockets, the loop's own, state files and journals (a save on
 * each worker at once, with its directory), shared-memory objects while
 * they are opened. */
static rlim_t fd_reserve(const struct emad_opts *o)
{
    bool http = o->metrics_path[0] != '\0' || o->metrics_port != 0;
    return 64 + 2 * (rlim_t)o->workers + (http ? HTTPD_DESCRIPTORS : 0);
}

/* Each connection holds a descriptor. systemd starts services with a soft
 * RLIMIT_NOFILE of 1024, below the default --max-connections: raise the soft
 * limit as far as needed (never past the hard one), and lower
 * --max-connections to what fits, so that accept() does not run out of
 * descriptors before the limit is reached. 0, or -EMFILE with err set. */
static int fit_fd_limit(struct emad_opts *o, struct log *lg, char *err, size_t errlen)
{
    rlim_t reserve = fd_reserve(o), want = (rlim_t)o->max_connections + reserve;
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
        log_warn(lg, "cannot read the open-file limit: %s", strerror(errno));
        return 0;
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        rlim_t old = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
        if (rl.rlim_cur > old && setrlimit(RLIMIT_NOFILE, &rl) == 0) {
            log_info(lg, "open-file limit raised from %llu to %llu (--max-connections %u and %llu "
                     "for files)", (unsigned long long)old, (unsigned long long)rl.rlim_cur,
                     o->max_connections, (unsigned long long)reserve);
        } else {
            rl.rlim_cur = old;
        }
    }
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want)
        return 0;
    if (rl.rlim_cur <= reserve + 1) {
        snprintf(err, errlen, "the open-file limit (RLIMIT_NOFILE %llu, hard %llu) leaves no room "
                 "for connections: emad keeps %llu descriptors for files; raise it "
                 "(LimitNOFILE= under systemd, else ulimit -n)", (unsigned long long)rl.rlim_cur,
                 (unsigned long long)rl.rlim_max, (unsigned long long)reserve);
        return -EMFILE;
    }
    log_warn(lg, "--max-connections %u does not fit under the open-file limit (RLIMIT_NOFILE "
             "%llu, hard %llu) with %llu descriptors kept for files: serving at most %llu "
             "connections; raise the hard limit (LimitNOFILE= under systemd, else ulimit -Hn)",
             o->max_connections, (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
             (unsigned long long)reserve, (unsigned long long)(rl.rlim_cur - reserve));
    o->max_connections = (unsigned)(rl.rlim_cur - reserve);
    return 0;
}

/* Every signal the loop answers arrives through the signalfd, read on the
 * loop thread like any other event: no handler runs asynchronously (under
 * ThreadSanitizer, one that arrived between two calls waited for the next
 * event, as long as the loop's longest timer). */
static void on_signalfd(uv_poll_t *h, int status, int events)
{
    struct daemon *d = h->data;
    struct signalfd_siginfo si;

    (void)status;
    (void)events;
    while (read(d->sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
        on_signal(d, (int)si.ssi_signo);
}

/* Block the signals emad answers (the threads started later inherit the
 * mask: every one of them then stays pending until the loop reads it) and
 * watch them. 0 or a negative errno. */
static int start_signals(struct daemon *d)
{
    sigset_t set;
    int rc;

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    if ((rc = pthread_sigmask(SIG_BLOCK, &set, NULL)) != 0)
        return -rc;
    if ((d->sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) < 0)
        return -errno;
    if ((rc = uv_poll_init(d->ctx.loop, &d->sig_poll, d->sig_fd)) < 0)
        return rc;
    d->sig_poll.data = d;
    return uv_poll_start(&d->sig_poll, UV_READABLE, on_signalfd);
}

int main(int argc, char **argv)
{
    struct daemon d;
    struct opts_env env;
    struct listen_socket ls;
    char err[512];
    int rc;

    memset(&d, 0, sizeof(d));
    env.emad_socket = getenv("EMAD_SOCKET");
    env.xdg_runtime_dir = getenv("XDG_RUNTIME_DIR");
    env.xdg_state_home = getenv("XDG_STATE_HOME");
    env.home = getenv("HOME");
    env.uid = geteuid();
    env.online_cpus = sysconf(_SC_NPROCESSORS_ONLN);

    rc = opts_parse(&d.opts, argc, argv, &env, err, sizeof(err));
    if (rc == OPTS_HELP) {
        opts_usage(stdout, argv[0]);
        return 0;
    }
    if (rc == OPTS_VERSION) {
        printf("emad %s (protocol %d)\n", EMAD_VERSION, WIRE_PROTO_VERSION);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "emad: %s\nTry 'emad --help' for more information.\n", err);
        return 2;
    }
    if ((rc = log_open(&d.log, d.opts.log_file, d.opts.log_level)) < 0) {
        fprintf(stderr, "emad: cannot open log file %s: %s\n", d.opts.log_file, strerror(-rc));
        return 1;
    }
    if (fit_fd_limit(&d.opts, &d.log, err, sizeof(err)) < 0) {
        log_error(&d.log, "%s", err);
        log_close(&d.log);
        return 1;
    }
    /* A client that vanishes mid-reply must not kill the daemon, nor a
     * trainer that shrinks its segment under the workers (shm.c). */
    signal(SIGPIPE, SIG_IGN);
    if ((rc = shm_guard_install()) < 0) {
        log_error(&d.log, "cannot install the SIGBUS guard: %s", strerror(-rc));
        log_close(&d.log);
        return 1;
    }

    d.ctx.loop = uv_default_loop();
    d.ctx.opts = &d.opts;
    d.ctx.log = &d.log;
    d.ctx.started_ns = uv_hrtime();
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    d.ctx.started_unix = (double)wall.tv_sec + (double)wall.tv_nsec / 1e9;
    d.notify_socket = getenv("NOTIFY_SOCKET");

    d.ctx.sessions = &d.sessions;
    d.ctx.pool = &d.pool;
    d.ctx.metrics = &d.metrics;
    registry_init(&d.sessions, &d.ctx);

    /* Before the socket accepts: from then on a supervisor may signal us at
     * any moment, and the default actions would kill us without cleanup. */
    if ((rc = start_signals(&d)) < 0) {
        log_error(&d.log, "cannot watch SIGTERM, SIGINT and SIGHUP: %s", strerror(-rc));
        log_close(&d.log);
        return 1;
    }

    rc = listen_socket_open(&ls, &d.opts, getenv("LISTEN_PID"), getenv("LISTEN_FDS"), &d.log,
                            err, sizeof(err));
    /* Children (none today) must not think the socket is theirs. */
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (rc < 0) {
        log_error(&d.log, "%s", err);
        log_close(&d.log);
        return 1;
    }
    /* The workers start only once the socket is ours: every failure above
     * exits without workers to stop. */
    if ((rc = pool_init(&d.pool, d.ctx.loop, d.opts.workers)) < 0) {
        log_error(&d.log, "cannot start %u worker threads: %s", d.opts.workers, strerror(-rc));
        goto err_socket;
    }
    if ((rc = pool_set_priority(&d.pool, (int)d.opts.worker_nice)) < 0)
        log_warn(&d.log, "cannot lower the worker threads' priority by %u: %s (small sessions "
                 "may wait behind large updates)", d.opts.worker_nice, strerror(-rc));
    /* The state directory is this emad's alone (another would take its
     * sessions and remove its temp files); the lock goes with the process. */
    char dir[PATH_MAX];
    if ((d.state_lock = store_lock_dir(d.opts.state_dir, err, sizeof(err))) < 0) {
        log_error(&d.log, "%s", err);
        goto err_pool;
    }
    /* Saves that a crash cut short left temp files: no one finishes them. */
    const char *const subdirs[] = {"", "/sessions", "/live"};
    for (size_t i = 0; i < sizeof(subdirs) / sizeof(subdirs[0]); i++) {
        if (snprintf(dir, sizeof(dir), "%s%s", d.opts.state_dir, subdirs[i]) >= (int)sizeof(dir))
            continue;
        if ((rc = store_remove_temps(dir, err, sizeof(err))) > 0)
            log_info(&d.log, "removed %d temp files of saves cut short in %s", rc, dir);
        else if (rc < 0)
            log_warn(&d.log, "%s", err);
    }
    /* Sessions come back: those a clean stop kept, then those a crashed emad
     * left running (journal + shadow object). */
    kept_dir(&d, dir, sizeof(dir));
    if (dir[0] != '\0' && (rc = registry_restore_all(&d.sessions, dir)) > 0)
        log_info(&d.log, "%d sessions restored from %s", rc, dir);
    else if (rc < 0)
        log_warn(&d.log, "cannot read kept sessions in %s: %s", dir, strerror(-rc));
    if ((rc = registry_adopt_all(&d.sessions)) > 0)
        log_info(&d.log, "%d sessions taken back after a crash of emad", rc);
    /* Whatever else dead emads of ours left in /dev/shm is no one's now. */
    if ((rc = shm_collect_stale_shadows(registry_owns_shadow, &d.sessions, log_stale, &d.log)) > 0)
        log_info(&d.log, "removed %d stale shadows of emad processes that are gone", rc);
    /* The metrics once the state directory is ours and its sessions are back: a second emad
     * that cannot start does not overwrite the first one's textfile, and the first page
     * holds the restored sessions. Served from before the first request is answered. */
    if (exporter_start(&d.exporter, &d.ctx, err, sizeof(err)) < 0) {
        log_error(&d.log, "%s", err);
        goto err_pool;
    }
    /* The transport hands requests up to dispatch, which calls the sessions. */
    const struct server_handlers up = {dispatch_request, dispatch_closed, &d.ctx};
    if ((rc = server_start(&d.srv, &d.ctx, &ls, &up)) < 0) {
        log_error(&d.log, "cannot serve %s: %s", ls.path, uv_strerror(rc));
        goto err_pool;
    }

    log_info(&d.log, "emad %s listening on %s%s (pid %ld, %u workers, state in %s)",
             EMAD_VERSION, ls.path[0] ? ls.path : "(unnamed socket)",
             ls.inherited ? " (from systemd)" : "", (long)getpid(), d.opts.workers,
             d.opts.state_dir);
    uv_timer_init(d.ctx.loop, &d.health_tick);
    d.health_tick.data = &d;
    uv_timer_start(&d.health_tick, on_health_tick, 1000, 1000);
    if ((rc = start_watchdog(&d)) < 0)
        log_warn(&d.log, "cannot start the watchdog timer: %s", uv_strerror(rc));
    /* Test-only hooks: stall one chunk (the first, or the one after
     * EMAD_TEST_STALL_AFTER chunks), to prove that the watchdog stops pinging
     * when the pool is stuck and that a crash mid-update is reported. */
    if (getenv("EMAD_TEST_STALL_MS") != NULL)
        pool_stall_next(&d.pool, (unsigned)atoi(getenv("EMAD_TEST_STALL_MS")),
                        getenv("EMAD_TEST_STALL_AFTER") ? (unsigned)atoi(
                                                              getenv("EMAD_TEST_STALL_AFTER"))
                                                        : 0);
    if ((rc = notify_send(d.notify_socket, "READY=1")) < 0)
        log_warn(&d.log, "cannot send READY=1 to NOTIFY_SOCKET %s: %s", d.notify_socket,
                 strerror(-rc));
    else if (d.notify_socket != NULL)
        log_debug(&d.log, "sent READY=1 to %s", d.notify_socket);

    rc = uv_run(d.ctx.loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(d.ctx.loop);
    if (rc < 0)
        log_warn(&d.log, "event loop closed with handles open: %s", uv_strerror(rc));
    log_close(&d.log);
    return 0;

err_pool:
    pool_destroy(&d.pool);
err_socket:
    exporter_stop(&d.exporter);
    listen_socket_unlink(&ls);
    log_close(&d.log);
    return 1;
}
