/*
 * opts.h - emad's command line, defaults and path rules. Pure: the
 * environment is passed in, nothing is opened, so every rule is testable.
 */
#ifndef EMAD_OPTS_H
#define EMAD_OPTS_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* --worker-nice: how far below emad's own priority the workers run. */
#define OPTS_DEFAULT_WORKER_NICE 10
/* --metrics-interval: seconds between two writes of --metrics-textfile. */
#define OPTS_DEFAULT_METRICS_INTERVAL 15
/* --stall-factor: a session is stalled after this many usual intervals without an update. */
#define OPTS_DEFAULT_STALL_FACTOR 10
/* --inline-max: updates and swaps moving at most this many bytes are done on the event loop's
 * thread (docs/performance.md "The fixed cost of an update"): an update of 1M f32 elements. */
#define OPTS_DEFAULT_INLINE_MAX (12u << 20)

enum log_level { LOG_LVL_ERROR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* The environment variables emad reads, and who it runs as. */
struct opts_env {
    const char *emad_socket;     /* EMAD_SOCKET */
    const char *xdg_runtime_dir; /* XDG_RUNTIME_DIR */
    const char *xdg_state_home;  /* XDG_STATE_HOME */
    const char *home;            /* HOME */
    uid_t uid;                   /* effective uid */
    long online_cpus;            /* default for --workers */
};

struct emad_opts {
    char socket_path[108];      /* resolved per docs/protocol.md "Transport" */
    unsigned socket_mode;       /* permission bits of the socket */
    char allow_group[64];       /* group admitted besides the owner and root; "" none */
    unsigned workers;           /* worker threads */
    unsigned worker_nice;       /* nice levels the workers run below emad (0-19) */
    bool crash_exact;           /* log updates so that one cut short by a crash is redone exactly */
    unsigned stall_factor;      /* a session is stalled after this many usual intervals (0 off) */
    uint64_t inline_max;        /* bytes moved up to which the loop thread does the work (0 never) */
    char state_dir[PATH_MAX];   /* where save/load put files */
    enum log_level log_level;
    char log_file[PATH_MAX];    /* "" means stderr */
    size_t max_message;         /* bytes of one message */
    unsigned max_depth;         /* nesting of one message */
    unsigned max_connections;
    unsigned max_sessions;
    uint64_t max_tensors;       /* per session */
    size_t max_pending;         /* reply bytes queued per connection before reading pauses */
    size_t max_pending_total;   /* ... and for all connections together */
    size_t max_input_total;     /* bytes of requests not yet complete, all connections */
    /* Per peer uid, over all its sessions (names are per uid too). */
    unsigned max_sessions_per_uid;
    uint64_t max_tensors_per_uid;
    uint64_t max_shadow_bytes_per_uid;
    /* Per peer uid: its state files in <state_dir>/users/<uid>/ (store.h, struct store_quota). */
    uint64_t max_state_files_per_uid;
    uint64_t max_state_bytes_per_uid;
    /* A peer's own denial of service: its connections, its queue, its hello. */
    unsigned max_queued_requests; /* operations queued or running per connection */
    unsigned max_connections_per_uid; /* root and emad's own uid are exempt */
    unsigned hello_timeout_s;   /* a connection without hello is closed after this */
    /* Metrics outside the socket (docs/running.md "Metrics"). --metrics is
     * either a Unix socket path (metrics_path) or a loopback address
     * (metrics_host, numeric, and metrics_port); "" and 0 when off. */
    char metrics_path[108];
    char metrics_host[64];
    unsigned metrics_port;
    char metrics_textfile[PATH_MAX]; /* "" none */
    unsigned metrics_interval_s;
};

enum opts_result { OPTS_RUN = 0, OPTS_HELP = 1, OPTS_VERSION = 2 };

/* Parse argv. Returns OPTS_RUN, OPTS_HELP, OPTS_VERSION, or -EINVAL with a
 * message naming the option in err. */
int opts_parse(struct emad_opts *o, int argc, char **argv, const struct opts_env *env,
               char *err, size_t errlen);
/* The text of --help. */
void opts_usage(FILE *fp, const char *argv0);
/* Default state directory: $XDG_STATE_HOME/emad, /var/lib/emad for root,
 * else $HOME/.local/state/emad. -ENOENT when none applies. */
int opts_default_state_dir(const struct opts_env *env, char *out, size_t outlen);
/* Parse a size with an optional K, M or G suffix (powers of 1024). */
int opts_parse_size(const char *s, uint64_t min, uint64_t max, uint64_t *out);
const char *opts_log_level_name(enum log_level l);

#endif
