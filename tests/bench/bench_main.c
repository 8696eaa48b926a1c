/*
 * emabench - the C benchmark programs of emad, one binary with subcommands.
 *
 * Usage: emabench SUBCOMMAND --socket PATH [options]
 * Run by tests/bench/run (`make bench`, `make bench-quick`), which starts emad for each group,
 * merges the JSON records this prints (one per line on stdout) and prints the table.
 */
#include "bench.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static const struct {
    const char *name;
    int (*fn)(const struct bopts *);
    const char *help;
} cmds[] = {
    {"update", cmd_update, "update throughput per --dtypes and --sizes, vs a plain C loop"},
    {"small", cmd_small, "--count tensors of --elems elements vs one tensor of that size"},
    {"swap", cmd_swap, "swap in / swap out per --dtypes and --sizes, vs memcpy"},
    {"health", cmd_health, "update with health signals vs without, per --dtypes and --sizes"},
    {"rtt", cmd_rtt, "no-op event round trip (--iters), vs a raw Unix-socket echo"},
    {"fairness", cmd_fairness, "small session (--elems) round trip while --sizes[0] updates"},
    {"overlap", cmd_overlap, "stall of batch_end after computing --ks times the update"},
    {"sessions", cmd_sessions, "--counts sessions sharing --sizes[0] elements, vs one session"},
    {"memory", cmd_memory, "emad's RSS holding a --sizes[0] session, vs its shadow bytes"},
    {"register", cmd_register, "register --count tensors of --elems, vs one tensor"},
    {"hostile", cmd_hostile, "round trips beside --count half-sent connections and a client "
                             "that never reads, vs emad idle"},
    {"metrics", cmd_metrics, "no-op round trips while --port's /metrics is scraped 10 times "
                             "a second, vs unscraped"},
    {"kprofiles", cmd_kprofiles, "in process: K = 1,2,4,8 profiles in one pass vs K passes"},
    {"khealth", cmd_khealth, "in process: the update kernel with health signals vs without"},
    {"kprof", cmd_kprof, "K = 1,2,4,8 profiles in one session vs K sessions of one profile"},
    {"snapwrite", cmd_snapwrite, "update round trip while a --sizes[0] snapshot is written, "
                                 "vs idle"},
};

static void usage(FILE *f)
{
    fprintf(f, "Usage: emabench SUBCOMMAND --socket PATH [--workers N] [--dtypes f32,bf16]\n"
               "         [--sizes 1M,16M] [--counts 1,2,8] [--ks 0.5,1] [--budget ELEMS]\n"
               "         [--seconds S] [--iters N] [--count N] [--elems N] [--port P]\n"
               "         [--reps N] (interleaved repetitions of each comparison, default 7)\n"
               "         [--placements same,cross,unpinned] (rtt; default same,cross)\n"
               "Talks to a running emad; prints one JSON record per line. Subcommands:\n");
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        fprintf(f, "  %-9s %s\n", cmds[i].name, cmds[i].help);
}

static uint64_t parse_elems(const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    uint64_t mul = 1;
    if (*end == 'K' || *end == 'k')
        mul = 1u << 10, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1u << 20, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1u << 30, end++;
    if (errno || end == s || *end || v < 0)
        die("bad number: %s", s);
    return (uint64_t)(v * (double)mul);
}

/* Split a comma-separated list; returns the count. */
static size_t split(char *s, char **out)
{
    size_t n = 0;
    for (char *tok = strtok(s, ","); tok && n < BENCH_MAX_LIST; tok = strtok(NULL, ","))
        out[n++] = tok;
    return n;
}

int main(int argc, char **argv)
{
    struct bopts o = {.workers = 1, .budget = 1u << 26, .seconds = 1, .iters = 1000,
                      .count = 100000, .elems = 320, .reps = 7};
    char *list[BENCH_MAX_LIST];

    bench_segment_cleanup_install();

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    o.dtypes[0] = "f32", o.ndtypes = 1;
    o.sizes[0] = 16u << 20, o.nsizes = 1;
    o.counts[0] = 1, o.ncounts = 1;
    o.ks[0] = 2, o.nks = 1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            die("%s: missing value", a);
        i++;
        if (strcmp(a, "--socket") == 0)
            o.socket = v;
        else if (strcmp(a, "--workers") == 0)
            o.workers = (unsigned)parse_elems(v);
        else if (strcmp(a, "--dtypes") == 0) {
            o.ndtypes = split(v, list);
            for (size_t k = 0; k < o.ndtypes; k++)
                o.dtypes[k] = list[k];
        } else if (strcmp(a, "--sizes") == 0) {
            o.nsizes = split(v, list);
            for (size_t k = 0; k < o.nsizes; k++)
                o.sizes[k] = parse_elems(list[k]);
        } else if (strcmp(a, "--counts") == 0) {
            o.ncounts = split(v, list);
            for (size_t k = 0; k < o.ncounts; k++)
                o.counts[k] = parse_elems(list[k]);
        } else if (strcmp(a, "--ks") == 0) {
            o.nks = split(v, list);
            for (size_t k = 0; k < o.nks; k++)
                o.ks[k] = strtod(list[k], NULL);
        } else if (strcmp(a, "--budget") == 0)
            o.budget = parse_elems(v);
        else if (strcmp(a, "--seconds") == 0)
            o.seconds = strtod(v, NULL);
        else if (strcmp(a, "--iters") == 0)
            o.iters = parse_elems(v);
        else if (strcmp(a, "--count") == 0)
            o.count = parse_elems(v);
        else if (strcmp(a, "--elems") == 0)
            o.elems = parse_elems(v);
        else if (strcmp(a, "--port") == 0)
            o.port = (unsigned)parse_elems(v);
        else if (strcmp(a, "--reps") == 0)
            o.reps = (unsigned)parse_elems(v);
        else if (strcmp(a, "--placements") == 0)
            o.placements = v;
        else {
            usage(stderr);
            return 2;
        }
    }
    if (o.socket == NULL)
        die("--socket is required");
    if (o.workers == 0)
        o.workers = 1;
    if (o.reps < 1 || o.reps > BENCH_MAX_REPS)
        die("--reps %u: want 1 to %d (5 or more for a median and a spread worth reading)",
            o.reps, BENCH_MAX_REPS);
    signal(SIGPIPE, SIG_IGN);
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        if (strcmp(argv[1], cmds[i].name) == 0)
            return cmds[i].fn(&o);
    usage(stderr);
    return 2;
}
