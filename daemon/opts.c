/*
 * opts.c - emad's command line.
 */
#include "opts.h"
#include "errbuf.h"

#include "version.h"
#include "wire.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

enum {
    OPT_SOCKET = 256,
    OPT_SOCKET_MODE,
    OPT_ALLOW_GROUP,
    OPT_WORKERS,
    OPT_WORKER_NICE,
    OPT_CRASH_EXACT,
    OPT_STALL_FACTOR,
    OPT_STATE_DIR,
    OPT_LOG_LEVEL,
    OPT_LOG_FILE,
    OPT_MAX_MESSAGE,
    OPT_MAX_DEPTH,
    OPT_MAX_CONNECTIONS,
    OPT_MAX_SESSIONS,
    OPT_MAX_TENSORS,
    OPT_MAX_PENDING,
    OPT_MAX_SESSIONS_PER_UID,
    OPT_MAX_TENSORS_PER_UID,
    OPT_MAX_SHADOW_BYTES_PER_UID,
    OPT_MAX_PENDING_TOTAL,
    OPT_MAX_INPUT_TOTAL,
    OPT_MAX_STATE_FILES_PER_UID,
    OPT_MAX_STATE_BYTES_PER_UID,
    OPT_MAX_QUEUED_REQUESTS,
    OPT_MAX_CONNECTIONS_PER_UID,
    OPT_HELLO_TIMEOUT,
    OPT_METRICS,
    OPT_METRICS_TEXTFILE,
    OPT_METRICS_INTERVAL,
    OPT_INLINE_MAX,
};

static const struct option long_opts[] = {
    {"socket", required_argument, NULL, OPT_SOCKET},
    {"socket-mode", required_argument, NULL, OPT_SOCKET_MODE},
    {"allow-group", required_argument, NULL, OPT_ALLOW_GROUP},
    {"workers", required_argument, NULL, OPT_WORKERS},
    {"worker-nice", required_argument, NULL, OPT_WORKER_NICE},
    {"crash-exact", no_argument, NULL, OPT_CRASH_EXACT},
    {"stall-factor", required_argument, NULL, OPT_STALL_FACTOR},
    {"inline-max", required_argument, NULL, OPT_INLINE_MAX},
    {"state-dir", required_argument, NULL, OPT_STATE_DIR},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"log-file", required_argument, NULL, OPT_LOG_FILE},
    {"max-message", required_argument, NULL, OPT_MAX_MESSAGE},
    {"max-depth", required_argument, NULL, OPT_MAX_DEPTH},
    {"max-connections", required_argument, NULL, OPT_MAX_CONNECTIONS},
    {"max-sessions", required_argument, NULL, OPT_MAX_SESSIONS},
    {"max-tensors", required_argument, NULL, OPT_MAX_TENSORS},
    {"max-pending", required_argument, NULL, OPT_MAX_PENDING},
    {"max-sessions-per-uid", required_argument, NULL, OPT_MAX_SESSIONS_PER_UID},
    {"max-tensors-per-uid", required_argument, NULL, OPT_MAX_TENSORS_PER_UID},
    {"max-shadow-bytes-per-uid", required_argument, NULL, OPT_MAX_SHADOW_BYTES_PER_UID},
    {"max-pending-total", required_argument, NULL, OPT_MAX_PENDING_TOTAL},
    {"max-input-total", required_argument, NULL, OPT_MAX_INPUT_TOTAL},
    {"max-state-files-per-uid", required_argument, NULL, OPT_MAX_STATE_FILES_PER_UID},
    {"max-state-bytes-per-uid", required_argument, NULL, OPT_MAX_STATE_BYTES_PER_UID},
    {"max-queued-requests", required_argument, NULL, OPT_MAX_QUEUED_REQUESTS},
    {"max-connections-per-uid", required_argument, NULL, OPT_MAX_CONNECTIONS_PER_UID},
    {"hello-timeout", required_argument, NULL, OPT_HELLO_TIMEOUT},
    {"metrics", required_argument, NULL, OPT_METRICS},
    {"metrics-textfile", required_argument, NULL, OPT_METRICS_TEXTFILE},
    {"metrics-interval", required_argument, NULL, OPT_METRICS_INTERVAL},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

static const char *const level_names[] = {"error", "warn", "info", "debug"};

const char *opts_log_level_name(enum log_level l)
{
    return (unsigned)l < 4 ? level_names[l] : "?";
}

void opts_usage(FILE *fp, const char *argv0)
{
    fprintf(fp,
"Usage: %s [OPTION]...\n"
"Keep the exponential moving average (EMA) of trainers' model weights in a\n"
"separate process. Trainers share their tensors through POSIX shared memory\n"
"and send events over a Unix socket; emad updates fp32 shadow copies on its\n"
"worker threads and swaps them in for evaluation and checkpoints.\n"
"\n"
"Socket:\n"
"  --socket PATH           listen on PATH (default: $EMAD_SOCKET, else\n"
"                          $XDG_RUNTIME_DIR/emad.sock, else /run/emad/emad.sock);\n"
"                          at most %d bytes. A missing parent directory is\n"
"                          created with mode 0700. A stale socket is removed; a\n"
"                          live one (another emad) makes emad refuse to start.\n"
"  --socket-mode MODE      octal permission bits of the socket (default 0600)\n"
"  --allow-group NAME      also admit peers whose primary or supplementary group\n"
"                          is NAME (default: only emad's own uid and root)\n"
"\n"
"Work:\n"
"  --workers N             worker threads for updates and swaps\n"
"                          (default: the number of online CPUs)\n"
"  --worker-nice N         run the workers N nice levels below emad's other\n"
"                          threads, 0 to 19 (default 10): the event loop and the\n"
"                          trainers then preempt a busy worker as soon as they\n"
"                          wake, so a small session's reply does not wait for\n"
"                          the scheduler's tick behind a large session's update.\n"
"                          In emad's own cgroup (systemd) this does not change\n"
"                          emad's CPU share against other processes; started\n"
"                          from the same session as CPU-bound programs, the\n"
"                          workers get less CPU than they would at 0\n"
"  --inline-max SIZE       do an update or swap that reads and writes at most\n"
"                          SIZE bytes (K, M, G suffixes; up to 1G) on the event\n"
"                          loop's own thread instead of a worker's (default 12M,\n"
"                          an update of 1M f32 elements: 4 bytes of params read,\n"
"                          4 of shadow read and 4 written per element; 0: always\n"
"                          a worker). Waking a worker and being woken by it costs\n"
"                          more than such an update; meanwhile the other\n"
"                          sessions' requests wait (about 1 to 3 ms at 12M), and\n"
"                          the work runs at emad's priority, not --worker-nice's\n"
"  --crash-exact           write updates block by block, saving each block's old\n"
"                          values as it goes, so that an update cut short by a\n"
"                          crash of emad is applied exactly once when the\n"
"                          trainer sends it again (libemaclient does, after it\n"
"                          reconnects). Costs 10-15 %% of the update's\n"
"                          throughput. Without it, the update sent again is\n"
"                          applied over the part written before the crash, and\n"
"                          the session is marked interrupted\n"
"  --stall-factor N        call a session stalled when its trainer is attached\n"
"                          and has sent no update for N times its usual interval\n"
"                          between updates (a moving average), and at least 2 s\n"
"                          (default 10; 0 turns the check off). Checked once a\n"
"                          second; shown in status and logged; the next update\n"
"                          clears it\n"
"  --state-dir DIR         where save and load keep session files, and emad the\n"
"                          journals of running sessions (live/) and the sessions a\n"
"                          stop keeps (sessions/); one emad per directory (a\n"
"                          second exits, naming the first) (default:\n"
"                          $XDG_STATE_HOME/emad, /var/lib/emad for root, else\n"
"                          $HOME/.local/state/emad)\n"
"\n"
"Limits (sizes take a K, M or G suffix):\n"
"  --max-message BYTES     largest message (default 16M); bigger requests get\n"
"                          LIMIT, other oversized input closes the connection\n"
"  --max-depth N           deepest nesting of arrays and maps (default 8, max 31)\n"
"  --max-connections N     open connections (default 1024); more are refused\n"
"                          with LIMIT. emad raises its soft open-file limit\n"
"                          (RLIMIT_NOFILE) to fit N plus 64 + 2 per worker for\n"
"                          files; if the hard limit is lower, N is lowered to\n"
"                          fit, with a warning in the log\n"
"  --max-sessions N        sessions in the daemon (default 1024)\n"
"  --max-tensors N         tensors in one session (default 1000000)\n"
"  --max-pending BYTES     memory held for a connection's unread replies, and\n"
"                          its requests queued in sessions, before emad stops\n"
"                          reading its requests (default 16M); it reads again\n"
"                          once they are down to half\n"
"  --max-pending-total BYTES  the same for all connections together (default\n"
"                          256M): over it, the connections holding the most\n"
"                          stop being read first; a peer that reads its replies\n"
"                          holds none and is not stopped\n"
"  --max-input-total BYTES  memory for requests not yet received in full, all\n"
"                          connections together (default 256M), beyond the 128K\n"
"                          each one always has: requests needing more wait, the\n"
"                          largest first. If none of those holding it goes on\n"
"                          (each needs more, or its peer sent nothing for 5 s),\n"
"                          the one holding the most is closed with LIMIT. One\n"
"                          connection alone may always take --max-message\n"
"  --max-queued-requests N  requests of one connection queued or running in\n"
"                          sessions (default 256); at N emad stops reading the\n"
"                          connection, and reads again once they are down to\n"
"                          half. Their memory also counts in --max-pending and\n"
"                          --max-pending-total\n"
"  --max-connections-per-uid N  open connections of one user (default 64);\n"
"                          more are refused with LIMIT. Root and emad's own uid\n"
"                          are exempt, and 1/16 of --max-connections (at least\n"
"                          one, when it is 2 or more) is kept for them: other\n"
"                          users together cannot take every connection\n"
"  --hello-timeout SECONDS  close, with LIMIT, a connection that has not\n"
"                          completed hello within SECONDS (default 10)\n"
"  --max-sessions-per-uid N  sessions of one user (default 64)\n"
"  --max-tensors-per-uid N   tensors in all sessions of one user\n"
"                          (default 4000000)\n"
"  --max-shadow-bytes-per-uid BYTES  shadow memory of one user (default\n"
"                          64G); over any of the three, register gets LIMIT\n"
"  --max-state-files-per-uid N  state files one user's saves may keep (default\n"
"                          64), temp files of saves in progress included\n"
"  --max-state-bytes-per-uid BYTES  their size in all (default 256G). A save\n"
"                          over either gets LIMIT and writes nothing; one that\n"
"                          replaces a file of the same name counts without it.\n"
"                          No request deletes a state file: remove them from\n"
"                          STATE-DIR/users/UID/ as emad's user or root. Root's\n"
"                          saves count too; emad's journals and kept sessions\n"
"                          do not\n"
"\n"
"Logging:\n"
"  --log-level LEVEL       error, warn, info or debug (default info)\n"
"  --log-file PATH         append to PATH instead of stderr; SIGHUP reopens it\n"
"\n"
"Metrics (Prometheus text format; the endpoint and the textfile carry every\n"
"session's series, labelled with its owner's uid and its name: whoever can\n"
"reach the address or read the file sees them; 'emactl metrics' shows a user\n"
"other than root only their own sessions):\n"
"  --metrics ADDRESS       serve GET /metrics over HTTP on ADDRESS (default:\n"
"                          off): HOST:PORT, HOST being a loopback address\n"
"                          (localhost, 127.0.0.1 or another 127.x.y.z, or\n"
"                          [::1]), which every local user can reach; or a path\n"
"                          holding a '/', a Unix socket that emad creates with\n"
"                          mode 0600 (owned by emad's user) and removes at exit.\n"
"                          Other hosts are refused: put a proxy with access\n"
"                          control in front to export further. The page is\n"
"                          rendered once a second\n"
"  --metrics-textfile PATH  write the metrics to PATH every --metrics-interval,\n"
"                          for node_exporter's textfile collector (which reads\n"
"                          *.prom files): a temporary file in the same\n"
"                          directory, mode 0644 (readable by every user who\n"
"                          can enter the directory: keep it in one only the\n"
"                          exporter's user can), renamed over PATH\n"
"  --metrics-interval SECONDS  seconds between two writes of the textfile, 1\n"
"                          to 3600 (default 15)\n"
"\n"
"  -h, --help              show this help and exit\n"
"  -V, --version           show the version and exit\n"
"\n"
"Signals: SIGTERM and SIGINT stop accepting and reading requests, finish the\n"
"requests already received, send their replies (waiting at most 5 s for a peer\n"
"to read them), remove the socket and exit 0; SIGHUP reopens the log file.\n"
"\n"
"Environment:\n"
"  EMAD_SOCKET, XDG_RUNTIME_DIR   socket path, as above\n"
"  XDG_STATE_HOME, HOME           state directory, as above\n"
"  LISTEN_FDS, LISTEN_PID         systemd socket activation: listen on the\n"
"                                 inherited socket (fd 3) instead of --socket\n"
"  NOTIFY_SOCKET                  systemd notification: READY=1 once listening,\n"
"                                 STOPPING=1 on shutdown\n"
"\n"
"Exit status: 0 after a clean stop, 1 on a startup error, 2 on a usage error.\n"
"See emactl(1) to inspect a running emad.\n",
            argv0, WIRE_SOCKET_PATH_MAX);
}

int opts_parse_size(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;
    unsigned shift = 0;

    if (s == NULL || !isdigit((unsigned char)s[0]))
        return -EINVAL;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0)
        return -ERANGE;
    if (*end == 'K' || *end == 'k')
        shift = 10, end++;
    else if (*end == 'M' || *end == 'm')
        shift = 20, end++;
    else if (*end == 'G' || *end == 'g')
        shift = 30, end++;
    if (*end != '\0')
        return -EINVAL;
    if (shift && v > (UINT64_MAX >> shift))
        return -ERANGE;
    v <<= shift;
    if (v < min || v > max)
        return -ERANGE;
    *out = v;
    return 0;
}

static int parse_uint(const char *name, const char *s, uint64_t min, uint64_t max, uint64_t *out,
                      bool sized, char *err, size_t errlen)
{
    uint64_t v;
    int rc = 0;

    if (sized) {
        rc = opts_parse_size(s, min, max, &v);
    } else {
        char *end;
        errno = 0;
        if (!isdigit((unsigned char)s[0]))
            rc = -EINVAL;
        else {
            v = strtoull(s, &end, 10);
            if (errno != 0 || *end != '\0')
                rc = errno ? -ERANGE : -EINVAL;
            else if (v < min || v > max)
                rc = -ERANGE;
        }
    }
    if (rc == -ERANGE)
        return err_set(err, errlen, -EINVAL, "--%s %s: out of range (%llu to %llu)", name, s,
                    (unsigned long long)min, (unsigned long long)max);
    if (rc < 0)
        return err_set(err, errlen, -EINVAL, "--%s %s: not a%s number", name, s,
                    sized ? " size (digits with an optional K, M or G)" : "n unsigned");
    *out = v;
    return 0;
}

int opts_default_state_dir(const struct opts_env *env, char *out, size_t outlen)
{
    int n;

    if (env->xdg_state_home != NULL && env->xdg_state_home[0] == '/')
        n = snprintf(out, outlen, "%s/emad", env->xdg_state_home);
    else if (env->uid == 0)
        n = snprintf(out, outlen, "/var/lib/emad");
    else if (env->home != NULL && env->home[0] == '/')
        n = snprintf(out, outlen, "%s/.local/state/emad", env->home);
    else
        return -ENOENT;
    if (n < 0 || (size_t)n >= outlen)
        return -ENAMETOOLONG;
    return 0;
}

static bool valid_group_name(const char *s)
{
    if (s[0] == '\0' || strlen(s) >= 64)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.' && *s != '$')
            return false;
    return true;
}

/* --metrics: a Unix socket path (it holds a '/') or HOST:PORT on loopback.
 * The endpoint serves every user's session names: the loopback rule keeps
 * them on this machine. */
static int parse_metrics_address(struct emad_opts *o, const char *s, char *err, size_t errlen)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    unsigned char addr[16];
    uint64_t port;

    if (strchr(s, '/') != NULL) {
        if (strlen(s) > WIRE_SOCKET_PATH_MAX)
            return err_set(err, errlen, -EINVAL, "--metrics %s: a Unix socket path is at most %d "
                           "bytes", s, WIRE_SOCKET_PATH_MAX);
        snprintf(o->metrics_path, sizeof(o->metrics_path), "%s", s);
        return 0;
    }
    if (colon == NULL || colon == s || (size_t)(colon - s) >= sizeof(host))
        return err_set(err, errlen, -EINVAL, "--metrics %s: expected HOST:PORT (e.g. "
                       "127.0.0.1:9469) or the path of a Unix socket, which holds a '/' (e.g. "
                       "./%s)", s, s);
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    if (parse_uint("metrics", colon + 1, 1, 65535, &port, false, err, errlen) < 0)
        return err_set(err, errlen, -EINVAL, "--metrics %s: the port must be a number from 1 to "
                       "65535", s);
    if (strcmp(host, "localhost") == 0) {
        snprintf(o->metrics_host, sizeof(o->metrics_host), "127.0.0.1");
    } else if (inet_pton(AF_INET, host, addr) == 1) {
        if (addr[0] != 127)
            goto not_loopback;
        snprintf(o->metrics_host, sizeof(o->metrics_host), "%s", host);
    } else if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        host[strlen(host) - 1] = '\0';
        if (inet_pton(AF_INET6, host + 1, addr) != 1)
            return err_set(err, errlen, -EINVAL, "--metrics %s: not an IPv6 address in brackets",
                           s);
        static const unsigned char loop6[16] = {[15] = 1};
        if (memcmp(addr, loop6, 16) != 0)
            goto not_loopback;
        snprintf(o->metrics_host, sizeof(o->metrics_host), "%s", host + 1);
    } else {
        return err_set(err, errlen, -EINVAL, "--metrics %s: HOST must be localhost, an IPv4 "
                       "address or an IPv6 address in brackets", s);
    }
    o->metrics_port = (unsigned)port;
    return 0;
not_loopback:
    return err_set(err, errlen, -EINVAL, "--metrics %s: not a loopback address; the endpoint "
                   "shows every user's sessions, so emad serves it on loopback (127.0.0.0/8, "
                   "[::1]) or a Unix socket only", s);
}

int opts_parse(struct emad_opts *o, int argc, char **argv, const struct opts_env *env,
               char *err, size_t errlen)
{
    const char *socket_opt = NULL;
    const char *state_opt = NULL;
    uint64_t v;
    int c, rc;

    memset(o, 0, sizeof(*o));
    o->socket_mode = 0600;
    o->workers = env->online_cpus > 0 ? (unsigned)env->online_cpus : 1;
    o->worker_nice = OPTS_DEFAULT_WORKER_NICE;
    o->log_level = LOG_LVL_INFO;
    o->max_message = WIRE_DEFAULT_MAX_MESSAGE;
    o->max_depth = WIRE_DEFAULT_MAX_DEPTH;
    o->max_connections = 1024;
    o->max_sessions = 1024;
    o->max_tensors = 1000000;
    o->max_pending = 16u << 20;
    o->max_sessions_per_uid = 64;
    o->max_tensors_per_uid = 4000000;
    o->max_shadow_bytes_per_uid = 64ull << 30;
    o->max_pending_total = 256u << 20;
    o->max_input_total = 256u << 20;
    o->max_state_files_per_uid = 64;
    o->max_state_bytes_per_uid = 256ull << 30;
    o->max_queued_requests = 256;
    o->max_connections_per_uid = 64;
    o->hello_timeout_s = 10;
    o->metrics_interval_s = OPTS_DEFAULT_METRICS_INTERVAL;
    o->stall_factor = OPTS_DEFAULT_STALL_FACTOR;
    o->inline_max = OPTS_DEFAULT_INLINE_MAX;

    optind = 0; /* full reset, so that tests may parse several times */
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hV", long_opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            return OPTS_HELP;
        case 'V':
            return OPTS_VERSION;
        case OPT_SOCKET:
            socket_opt = optarg;
            break;
        case OPT_SOCKET_MODE: {
            char *end;
            unsigned long m;
            errno = 0;
            m = strtoul(optarg, &end, 8);
            /* strtoul() would also take a sign or leading blanks: "-0" is no mode. */
            if (!isdigit((unsigned char)optarg[0]) || *end != '\0' || errno != 0 || m > 0777)
                return err_set(err, errlen, -EINVAL, "--socket-mode %s: expected octal permission bits "
                            "such as 0600 or 0660", optarg);
            o->socket_mode = (unsigned)m;
            break;
        }
        case OPT_ALLOW_GROUP:
            if (!valid_group_name(optarg))
                return err_set(err, errlen, -EINVAL, "--allow-group %s: not a valid group name", optarg);
            snprintf(o->allow_group, sizeof(o->allow_group), "%s", optarg);
            break;
        case OPT_WORKERS:
            if ((rc = parse_uint("workers", optarg, 1, 1024, &v, false, err, errlen)) < 0)
                return rc;
            o->workers = (unsigned)v;
            break;
        case OPT_WORKER_NICE:
            if ((rc = parse_uint("worker-nice", optarg, 0, 19, &v, false, err, errlen)) < 0)
                return rc;
            o->worker_nice = (unsigned)v;
            break;
        case OPT_CRASH_EXACT:
            o->crash_exact = true;
            break;
        case OPT_STALL_FACTOR:
            if ((rc = parse_uint("stall-factor", optarg, 0, 1000000, &v, false, err, errlen)) < 0)
                return rc;
            if (v == 1)
                return err_set(err, errlen, -EINVAL, "--stall-factor 1: a session would be "
                               "stalled at its usual pace; give 2 or more, or 0 for no check");
            o->stall_factor = (unsigned)v;
            break;
        case OPT_INLINE_MAX:
            if ((rc = parse_uint("inline-max", optarg, 0, 1ull << 30, &v, true, err, errlen)) < 0)
                return rc;
            o->inline_max = v;
            break;
        case OPT_STATE_DIR:
            if (optarg[0] == '\0')
                return err_set(err, errlen, -EINVAL, "--state-dir: empty path");
            state_opt = optarg;
            break;
        case OPT_LOG_LEVEL: {
            int l;
            for (l = 0; l < 4 && strcmp(optarg, level_names[l]) != 0; l++)
                ;
            if (l == 4)
                return err_set(err, errlen, -EINVAL, "--log-level %s: expected error, warn, info or debug",
                            optarg);
            o->log_level = (enum log_level)l;
            break;
        }
        case OPT_LOG_FILE:
            if (optarg[0] == '\0' || strlen(optarg) >= sizeof(o->log_file))
                return err_set(err, errlen, -EINVAL, "--log-file: empty or too long path");
            snprintf(o->log_file, sizeof(o->log_file), "%s", optarg);
            break;
        case OPT_MAX_MESSAGE:
            if ((rc = parse_uint("max-message", optarg, 64, 1u << 30, &v, true, err, errlen)) < 0)
                return rc;
            o->max_message = (size_t)v;
            break;
        case OPT_MAX_DEPTH:
            if ((rc = parse_uint("max-depth", optarg, 4, WIRE_HARD_MAX_DEPTH - 1, &v, false, err,
                                 errlen)) < 0)
                return rc;
            o->max_depth = (unsigned)v;
            break;
        case OPT_MAX_CONNECTIONS:
            if ((rc = parse_uint("max-connections", optarg, 1, 1u << 20, &v, false, err,
                                 errlen)) < 0)
                return rc;
            o->max_connections = (unsigned)v;
            break;
        case OPT_MAX_SESSIONS:
            if ((rc = parse_uint("max-sessions", optarg, 1, 1u << 20, &v, false, err, errlen)) < 0)
                return rc;
            o->max_sessions = (unsigned)v;
            break;
        case OPT_MAX_TENSORS:
            if ((rc = parse_uint("max-tensors", optarg, 1, 1ull << 32, &v, false, err,
                                 errlen)) < 0)
                return rc;
            o->max_tensors = v;
            break;
        case OPT_MAX_PENDING:
            if ((rc = parse_uint("max-pending", optarg, 4096, 1ull << 34, &v, true, err,
                                 errlen)) < 0)
                return rc;
            o->max_pending = (size_t)v;
            break;
        case OPT_MAX_SESSIONS_PER_UID:
            if ((rc = parse_uint("max-sessions-per-uid", optarg, 1, 1u << 20, &v, false, err,
                                 errlen)) < 0)
                return rc;
            o->max_sessions_per_uid = (unsigned)v;
            break;
        case OPT_MAX_TENSORS_PER_UID:
            if ((rc = parse_uint("max-tensors-per-uid", optarg, 1, 1ull << 40, &v, false, err,
                                 errlen)) < 0)
                return rc;
            o->max_tensors_per_uid = v;
            break;
        case OPT_MAX_SHADOW_BYTES_PER_UID:
            if ((rc = parse_uint("max-shadow-bytes-per-uid", optarg, 4096, 1ull << 50, &v, true,
                                 err, errlen)) < 0)
                return rc;
            o->max_shadow_bytes_per_uid = v;
            break;
        case OPT_MAX_PENDING_TOTAL:
            if ((rc = parse_uint("max-pending-total", optarg, 4096, 1ull << 40, &v, true, err,
                                 errlen)) < 0)
                return rc;
            o->max_pending_total = (size_t)v;
            break;
        case OPT_MAX_INPUT_TOTAL:
            if ((rc = parse_uint("max-input-total", optarg, 4096, 1ull << 40, &v, true, err,
                                 errlen)) < 0)
                return rc;
            o->max_input_total = (size_t)v;
            break;
        case OPT_MAX_STATE_FILES_PER_UID:
            if ((rc = parse_uint("max-state-files-per-uid", optarg, 1, 1u << 20, &v, false, err,
                                 errlen)) < 0)
                return rc;
            o->max_state_files_per_uid = v;
            break;
        case OPT_MAX_STATE_BYTES_PER_UID:
            if ((rc = parse_uint("max-state-bytes-per-uid", optarg, 4096, 1ull << 50, &v, true,
                                 err, errlen)) < 0)
                return rc;
            o->max_state_bytes_per_uid = v;
            break;
        case OPT_MAX_QUEUED_REQUESTS:
            if ((rc = parse_uint("max-queued-requests", optarg, 2, 1u << 20, &v, false, err,
                                 errlen)) < 0)
                return rc;
            o->max_queued_requests = (unsigned)v;
            break;
        case OPT_MAX_CONNECTIONS_PER_UID:
            if ((rc = parse_uint("max-connections-per-uid", optarg, 1, 1u << 20, &v, false, err,
                                 errlen)) < 0)
                return rc;
            o->max_connections_per_uid = (unsigned)v;
            break;
        case OPT_HELLO_TIMEOUT:
            if ((rc = parse_uint("hello-timeout", optarg, 1, 3600, &v, false, err, errlen)) < 0)
                return rc;
            o->hello_timeout_s = (unsigned)v;
            break;
        case OPT_METRICS:
            o->metrics_path[0] = o->metrics_host[0] = '\0';
            o->metrics_port = 0;
            if ((rc = parse_metrics_address(o, optarg, err, errlen)) < 0)
                return rc;
            break;
        case OPT_METRICS_TEXTFILE:
            if (optarg[0] == '\0' || strlen(optarg) >= sizeof(o->metrics_textfile) - 32)
                return err_set(err, errlen, -EINVAL, "--metrics-textfile: empty or too long path");
            snprintf(o->metrics_textfile, sizeof(o->metrics_textfile), "%s", optarg);
            break;
        case OPT_METRICS_INTERVAL:
            if ((rc = parse_uint("metrics-interval", optarg, 1, 3600, &v, false, err, errlen)) < 0)
                return rc;
            o->metrics_interval_s = (unsigned)v;
            break;
        case ':':
            return err_set(err, errlen, -EINVAL, "option %s needs an argument", argv[optind - 1]);
        default:
            /* Within a group of short options ("-xq") optind has not moved past the group
             * yet, so argv[optind - 1] is its neighbour: name the letter instead. A long
             * option leaves optopt 0, or the value of "--help=x" / "--version=x". */
            if (optopt > 0 && optopt < 256 && optopt != 'h' && optopt != 'V')
                return err_set(err, errlen, -EINVAL, "unknown option -%c", optopt);
            return err_set(err, errlen, -EINVAL, "unknown option %s", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return err_set(err, errlen, -EINVAL, "unexpected argument \"%s\" (emad takes options only)",
                    argv[optind]);

    rc = wire_socket_path(socket_opt, env->emad_socket, env->xdg_runtime_dir, o->socket_path,
                          sizeof(o->socket_path));
    if (rc == -ENAMETOOLONG)
        return err_set(err, errlen, -EINVAL, "socket path is longer than %d bytes (the limit of a Unix "
                    "socket address); choose a shorter --socket", WIRE_SOCKET_PATH_MAX);
    if (rc < 0)
        return err_set(err, errlen, -EINVAL, "--socket: empty path");

    if (state_opt != NULL) {
        if (strlen(state_opt) >= sizeof(o->state_dir))
            return err_set(err, errlen, -EINVAL, "--state-dir: path too long");
        snprintf(o->state_dir, sizeof(o->state_dir), "%s", state_opt);
    } else if (opts_default_state_dir(env, o->state_dir, sizeof(o->state_dir)) < 0) {
        return err_set(err, errlen, -EINVAL, "no state directory: set --state-dir, XDG_STATE_HOME or HOME");
    }
    return OPTS_RUN;
}
