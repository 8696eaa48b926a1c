/*
 * emactl - inspect and drive emad from the command line.
 *
 * This file is the command table and what every command shares: options,
 * arguments, help. The commands live in emactl_session.c (those that ask
 * emad), emactl_gc.c (gc) and emactl_ckpt.c (consolidate), which do not, and
 * emactl_top.c.
 */
#include "emactl.h"
#include "version.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmd_help(struct ctl *ctl, int argc, char **argv);

static const struct ctl_cmd ctl_cmd_help = {
    .name = "help",
    .args = "[COMMAND]",
    .summary = "this overview, or the manual of COMMAND (as\n"
               "emactl COMMAND --help prints it)",
    .help = "Print the overview of emactl's commands and options, or with COMMAND the\n"
            "manual of that command: what it does, what it prints as text and as JSON,\n"
            "its exit status and examples.\n"
            "\n"
            "Exit status: 0; 2 when COMMAND is not one of emactl's.\n"
            "\n"
            "Example:\n"
            "  emactl help gc\n",
    .min_args = 0,
    .max_args = 1,
    .opts = 0,
    .run = cmd_help,
};

static const struct ctl_cmd *const commands[] = {
    &ctl_cmd_status, &ctl_cmd_list,    &ctl_cmd_show,        &ctl_cmd_save, &ctl_cmd_drop,
    &ctl_cmd_top,    &ctl_cmd_gc,      &ctl_cmd_metrics,     &ctl_cmd_consolidate,
    &ctl_cmd_snapshots, &ctl_cmd_snapshot,
    &ctl_cmd_posthoc, &ctl_cmd_export,
    &ctl_cmd_job,
    &ctl_cmd_help,
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

/* The options, each with the CTL_OPT_* bit that lets a command take it. */
static const struct ctl_option {
    struct option getopt;
    unsigned bit;
    const char *synopsis; /* for the Options section */
    const char *help;
} options[] = {
    {{"socket", required_argument, NULL, 's'},
     CTL_OPT_SOCKET,
     "--socket PATH",
     "emad's socket (default: $EMAD_SOCKET, else\n"
     "$XDG_RUNTIME_DIR/emad.sock, else /run/emad/emad.sock)"},
    {{"json", no_argument, NULL, 'j'},
     CTL_OPT_JSON,
     "--json",
     "print JSON instead of text (each command's manual\n"
     "says what); floats in the shortest form that reads\n"
     "back the same"},
    {{"dry-run", no_argument, NULL, 'n'},
     CTL_OPT_DRY_RUN,
     "--dry-run",
     "gc: remove nothing, say what would be removed"},
    {{"prefix", required_argument, NULL, 'p'},
     CTL_OPT_PREFIX,
     "--prefix NAME",
     "gc: only objects whose name starts with\n"
     "/emad-NAME (NAME may also be given as /emad-NAME)"},
    {{"interval", required_argument, NULL, 'i'},
     CTL_OPT_INTERVAL,
     "--interval SECONDS",
     "top: seconds between frames, 0.1 to 3600\n"
     "(default 1)"},
    {{"iterations", required_argument, NULL, 'N'},
     CTL_OPT_ITERATIONS,
     "--iterations N",
     "top: print N frames one after the other and exit"},
    {{"out", required_argument, NULL, 'o'},
     CTL_OPT_OUT,
     "--out FILE",
     "consolidate, posthoc, export: the safetensors\n"
     "file to write"},
    {{"dtype", required_argument, NULL, 'd'},
     CTL_OPT_DTYPE,
     "--dtype DTYPE",
     "consolidate, posthoc, export: f32, bf16 or f16\n"
     "for the float tensors (default: consolidate,\n"
     "each tensor's own; posthoc, export: f32)"},
    {{"sigma-rel", required_argument, NULL, 'r'},
     CTL_OPT_SIGMA_REL,
     "--sigma-rel X",
     "posthoc: the EMA width to reconstruct, in\n"
     "(0, 0.28867)"},
    {{"batch", required_argument, NULL, 'b'},
     CTL_OPT_BATCH,
     "--batch B",
     "posthoc: the batch to reconstruct at (default:\n"
     "the latest snapshot's)"},
    {{"profile", required_argument, NULL, 'P'},
     CTL_OPT_PROFILE,
     "--profile NAME",
     "export, consolidate: the profile (default: the eval\n"
     "profile)"},
};
#define NOPTIONS (sizeof(options) / sizeof(options[0]))

static const struct ctl_cmd *find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i]->name, name) == 0)
            return commands[i];
    return NULL;
}

/* The names of the commands that take the option of bit (0: of all of
 * them), as "gc" or "status, list and show". */
static void join_commands(unsigned bit, char *buf, size_t len)
{
    size_t n = 0, count = 0, total = 0;

    for (size_t i = 0; i < NCOMMANDS; i++)
        total += bit == 0 || (commands[i]->opts & bit) != 0;
    buf[0] = '\0';
    for (size_t i = 0; i < NCOMMANDS && n < len; i++) {
        if (bit != 0 && !(commands[i]->opts & bit))
            continue;
        count++;
        n += (size_t)snprintf(buf + n, len - n, "%s%s",
                              count == 1       ? ""
                              : count == total ? " and "
                                               : ", ",
                              commands[i]->name);
    }
}

/* "NAME  help" lines, help's continuation lines indented under it. */
static void print_item(FILE *fp, const char *name, const char *help)
{
    int col = fprintf(fp, "  %s", name);
    for (const char *line = help; *line;) {
        size_t n = strcspn(line, "\n");
        if (col > 22) {
            fputc('\n', fp);
            col = 0;
        }
        fprintf(fp, "%*s%.*s\n", 24 - col, "", (int)n, line);
        col = 0;
        line += n + (line[n] == '\n');
    }
}

static void print_options(FILE *fp, unsigned opts)
{
    for (size_t i = 0; i < NOPTIONS; i++)
        if (opts & options[i].bit)
            print_item(fp, options[i].synopsis, options[i].help);
    print_item(fp, "-h, --help", "show this help and exit");
}

static void usage(FILE *fp)
{
    fputs("Usage: emactl [--socket PATH] [--json] COMMAND [ARGS]\n"
          "       emactl COMMAND --help\n"
          "Inspect and drive emad, the EMA daemon.\n"
          "\n"
          "Commands:\n",
          fp);
    for (size_t i = 0; i < NCOMMANDS; i++) {
        char name[64];
        snprintf(name, sizeof(name), "%s%s%s", commands[i]->name, commands[i]->args[0] ? " " : "",
                 commands[i]->args);
        print_item(fp, name, commands[i]->summary);
    }
    fputs("\nOptions (before or after the command; each command's manual lists its own):\n", fp);
    print_options(fp, ~0u);
    print_item(fp, "-V, --version", "show the version and exit");
    fputs("\n"
          "Environment:\n"
          "  EMAD_SOCKET, XDG_RUNTIME_DIR   locate the socket when --socket is not given\n"
          "\n"
          "Exit status: 0 on success, 1 when emad reports an error or cannot be\n"
          "reached, 2 on a usage error. Errors are printed as\n"
          "'emactl: CODE: COMMAND: message' with the protocol's error code (e.g.\n"
          "NOSESSION, PERM, STATE, IO, CONNECT), SYSTEM for gc's, USAGE for usage errors.\n"
          "\n"
          "Examples:\n"
          "  emactl list\n"
          "  emactl show trainer-1 --json\n"
          "  emactl save trainer-1 before-lr-drop\n"
          "  emactl drop trainer-1\n"
          "  emactl top\n"
          "  emactl gc --dry-run\n"
          "  emactl consolidate ckpt/emad-checkpoint.json --out ema.safetensors\n"
          "  emactl posthoc trainer-1 --sigma-rel 0.08 --out ema-0.08.safetensors\n"
          "  emactl help show\n",
          fp);
}

static void command_help(const struct ctl_cmd *cmd, FILE *fp)
{
    fprintf(fp, "Usage: emactl %s%s%s\n\n%s\nOptions:\n", cmd->name, cmd->args[0] ? " " : "",
            cmd->args, cmd->help);
    print_options(fp, cmd->opts);
}

static int cmd_help(struct ctl *ctl, int argc, char **argv)
{
    const struct ctl_cmd *cmd;
    char names[128];

    if (argc == 0) {
        usage(stdout);
        return 0;
    }
    if ((cmd = find_command(argv[0])) == NULL) {
        join_commands(0, names, sizeof(names));
        return ctl_usage_error(ctl, "unknown command \"%s\"; the commands are %s", argv[0], names);
    }
    command_help(cmd, stdout);
    return 0;
}

/* A usage error found while parsing, reported once the command is known. */
struct parse_error {
    char message[256];
};

int main(int argc, char **argv)
{
    struct option longopts[NOPTIONS + 3];
    struct ctl ctl = {NULL, NULL, false, false, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    struct parse_error perr = {""};
    unsigned given = 0;
    bool help = false;
    int c;

    for (size_t i = 0; i < NOPTIONS; i++)
        longopts[i] = options[i].getopt;
    longopts[NOPTIONS] = (struct option){"help", no_argument, NULL, 'h'};
    longopts[NOPTIONS + 1] = (struct option){"version", no_argument, NULL, 'V'};
    longopts[NOPTIONS + 2] = (struct option){NULL, 0, NULL, 0};

    opterr = 0;
    /* Options may follow the command ("emactl status --json"): getopt's
     * default permutation collects them from anywhere. */
    while ((c = getopt_long(argc, argv, ":hV", longopts, NULL)) != -1) {
        switch (c) {
        case 's':
            ctl.socket = optarg;
            given |= CTL_OPT_SOCKET;
            break;
        case 'j':
            ctl.json = true;
            given |= CTL_OPT_JSON;
            break;
        case 'n':
            ctl.dry_run = true;
            given |= CTL_OPT_DRY_RUN;
            break;
        case 'p':
            ctl.prefix = optarg;
            given |= CTL_OPT_PREFIX;
            break;
        case 'i':
            ctl.interval = optarg;
            given |= CTL_OPT_INTERVAL;
            break;
        case 'N':
            ctl.iterations = optarg;
            given |= CTL_OPT_ITERATIONS;
            break;
        case 'o':
            ctl.out = optarg;
            given |= CTL_OPT_OUT;
            break;
        case 'd':
            ctl.dtype = optarg;
            given |= CTL_OPT_DTYPE;
            break;
        case 'r':
            ctl.sigma_rel = optarg;
            given |= CTL_OPT_SIGMA_REL;
            break;
        case 'b':
            ctl.batch = optarg;
            given |= CTL_OPT_BATCH;
            break;
        case 'P':
            ctl.profile = optarg;
            given |= CTL_OPT_PROFILE;
            break;
        case 'h':
            help = true;
            break;
        case 'V':
            printf("emactl %s (protocol %d)\n", EMAD_VERSION, EMAC_PROTO_VERSION);
            return 0;
        case ':':
            if (perr.message[0] == '\0')
                snprintf(perr.message, sizeof(perr.message), "option %s needs an argument",
                         argv[optind - 1]);
            break;
        default:
            if (perr.message[0] != '\0')
                break;
            if (optopt != 0) /* a short one, perhaps among others: "-xj" */
                snprintf(perr.message, sizeof(perr.message), "unknown option -%c", optopt);
            else
                snprintf(perr.message, sizeof(perr.message), "unknown option %s", argv[optind - 1]);
            break;
        }
    }
    if (optind >= argc) {
        if (perr.message[0] != '\0') {
            ctl_usage_error(NULL, "%s", perr.message);
            return 2;
        }
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    const char *name = argv[optind];
    int nargs = argc - optind - 1;
    char **args = argv + optind + 1;
    if ((ctl.cmd = find_command(name)) == NULL) {
        char names[128];
        join_commands(0, names, sizeof(names));
        ctl_usage_error(NULL, "unknown command \"%s\"; the commands are %s", name, names);
        return 2;
    }
    if (perr.message[0] != '\0') {
        ctl_usage_error(&ctl, "%s", perr.message);
        return 2;
    }
    if (help) {
        command_help(ctl.cmd, stdout);
        return 0;
    }
    for (size_t i = 0; i < NOPTIONS; i++) {
        if ((given & options[i].bit) && !(ctl.cmd->opts & options[i].bit)) {
            char takers[128];
            join_commands(options[i].bit, takers, sizeof(takers));
            ctl_usage_error(&ctl, "--%s applies to %s only", options[i].getopt.name, takers);
            return 2;
        }
    }
    if (nargs < ctl.cmd->min_args) {
        ctl_usage_error(&ctl, "missing arguments: expects %s", ctl.cmd->args);
        return 2;
    }
    if (nargs > ctl.cmd->max_args) {
        ctl_usage_error(&ctl, "unexpected argument \"%s\"", args[ctl.cmd->max_args]);
        return 2;
    }
    int rc = ctl.cmd->run(&ctl, nargs, args);
    return rc == 0 ? 0 : rc == CTL_EUSAGE ? 2 : 1;
}
