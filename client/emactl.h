/*
 * emactl.h - what emactl's files share: one entry of the command table, the
 * context of one invocation, and the output every command prints through.
 *
 * Contents
 *   commands     CTL_OPT_*, struct ctl, struct ctl_cmd, CTL_EUSAGE, the
 *                commands (emactl_session.c, emactl_gc.c)
 *   errors       ctl_error, ctl_usage_error, ctl_remote_error
 *   output       ctl_put_clean, ctl_mib, ctl_print_json
 *   tables       struct ctl_column, struct ctl_table, ctl_table_*
 */
#ifndef EMAD_EMACTL_H
#define EMAD_EMACTL_H

#include "emaclient.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- commands ---- */

/* The options a command accepts (struct ctl_cmd.opts); main() refuses the
 * others, naming the commands that take them. --help is every command's. */
#define CTL_OPT_SOCKET 0x1u      /* --socket PATH */
#define CTL_OPT_JSON 0x2u        /* --json */
#define CTL_OPT_DRY_RUN 0x4u     /* --dry-run */
#define CTL_OPT_PREFIX 0x8u      /* --prefix NAME */
#define CTL_OPT_INTERVAL 0x10u   /* --interval SECONDS */
#define CTL_OPT_ITERATIONS 0x20u /* --iterations N */
#define CTL_OPT_OUT 0x40u        /* --out FILE */
#define CTL_OPT_DTYPE 0x80u      /* --dtype DTYPE */
#define CTL_OPT_SIGMA_REL 0x100u /* --sigma-rel X */
#define CTL_OPT_BATCH 0x200u     /* --batch B */
#define CTL_OPT_PROFILE 0x400u   /* --profile NAME */

/* One invocation: the command the user typed and the options given. */
struct ctl {
    const struct ctl_cmd *cmd; /* what every message names */
    const char *socket;        /* --socket, or NULL to resolve */
    bool json;                 /* --json */
    bool dry_run;              /* --dry-run */
    const char *prefix;        /* --prefix NAME, or NULL */
    const char *interval;      /* --interval SECONDS, or NULL (checked by the command) */
    const char *iterations;    /* --iterations N, or NULL (likewise) */
    const char *out;           /* --out FILE, or NULL */
    const char *dtype;         /* --dtype DTYPE, or NULL */
    const char *sigma_rel;     /* --sigma-rel X, or NULL (checked by the command) */
    const char *batch;         /* --batch B, or NULL (likewise) */
    const char *profile;       /* --profile NAME, or NULL */
};

/* A command returns 0, CTL_EUSAGE after a usage error it reported (exit
 * status 2), or another negative errno after any other error it reported
 * (exit status 1). */
#define CTL_EUSAGE (-EINVAL)

/* One entry of the command table. main() does the generic work once: finds
 * the command, refuses options it does not take and a wrong number of
 * arguments, prints its --help; run() only does the command's own. */
struct ctl_cmd {
    const char *name;    /* "show" */
    const char *args;    /* its arguments in the synopsis: "SESSION [NAME]", "" */
    const char *summary; /* what it does, for the overview of emactl --help */
    const char *help;    /* the body of emactl NAME --help, after the synopsis */
    int min_args;        /* arguments after the name */
    int max_args;
    unsigned opts; /* CTL_OPT_* accepted */
    int (*run)(struct ctl *ctl, int argc, char **argv);
};

extern const struct ctl_cmd ctl_cmd_status, ctl_cmd_list, ctl_cmd_show, ctl_cmd_save,
    ctl_cmd_drop, ctl_cmd_metrics;       /* emactl_session.c */
extern const struct ctl_cmd ctl_cmd_gc;  /* emactl_gc.c */
extern const struct ctl_cmd ctl_cmd_top; /* emactl_top.c */
extern const struct ctl_cmd ctl_cmd_consolidate; /* emactl_ckpt.c */
extern const struct ctl_cmd ctl_cmd_snapshots, ctl_cmd_snapshot; /* emactl_snap.c */
extern const struct ctl_cmd ctl_cmd_posthoc, ctl_cmd_export;       /* emactl_posthoc.c */
extern const struct ctl_cmd ctl_cmd_job; /* emactl_job.c */
/* Fetch the status (of one session when session is not NULL) on a new connection; the caller
 * frees both. 0, or a negative errno reported (emactl_session.c). */
int ctl_get_status(const struct ctl *ctl, const char *session, emac_client **c,
                   struct emac_status **st);
/* A session's owner as every command shows it: the trainer's pid, or "detached". */
void ctl_owner_text(const struct emac_session_info *s, char *buf, size_t len);
/* After list's sessions: one row per job of the shard sessions, if any (emactl_job.c). */
int ctl_print_jobs(const struct ctl *ctl, const struct emac_status *st);

/* A connection to emad (ctl->socket), or NULL after reporting why (emactl_session.c). */
emac_client *ctl_connect(const struct ctl *ctl);

/* The exit status paragraph of the manuals of commands that talk to emad. */
#define CTL_DAEMON_EXIT_STATUS                                                                     \
    "Exit status: 0 on success; 1 when emad reports an error or cannot be reached\n"               \
    "(emactl: CODE: COMMAND: message, CODE being the protocol's error code, e.g.\n"                \
    "NOSESSION, PERM, STATE, IO, or CONNECT); 2 on a usage error.\n"

/* ---- errors: "emactl: CODE: COMMAND: message" on stderr ---- */

/* Report an error of the command ctl->cmd (the program's, when NULL). */
void ctl_error(const struct ctl *ctl, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Report a usage error (code USAGE) and how to get the command's help;
 * returns CTL_EUSAGE. */
int ctl_usage_error(const struct ctl *ctl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Report what libemaclient said, e: emad names the request it was sent,
 * method ("status" when emactl show asked), which is replaced by the
 * command the user typed. Returns -EREMOTEIO. */
int ctl_remote_error(const struct ctl *ctl, const char *method, const struct emac_error *e);
/* An error of libemaclient's own work (no request to emad): printed; code USAGE (a value the
 * library refuses) gives CTL_EUSAGE (exit 2), any other rc (a CTL_EUSAGE rc, -EINVAL as well,
 * becomes -EBADMSG: a malformed file exits 1, not 2). */
int ctl_library_error(const struct ctl *ctl, const struct emac_error *err, int rc);

/* ---- output ---- */

/* Print s to fp with control characters and DEL escaped as \xNN: session
 * names, names in /dev/shm and process names are chosen by others. */
void ctl_put_clean(FILE *fp, const char *s);

/* A session's byte count as every command shows it: "12.5 MiB". */
void ctl_mib(uint64_t bytes, char *buf, size_t len);

/* Print the msgpack data (len bytes) as JSON on stdout: all of it (key
 * NULL), or the value under key, or (index >= 0) that element of the array
 * under key. 0, or -EBADMSG after reporting that it cannot be decoded. */
int ctl_print_json(const struct ctl *ctl, const void *data, size_t len, const char *key,
                   long index);
/* ctl_print_json on one line: for output of one JSON document per line. */
int ctl_print_json_line(const struct ctl *ctl, const void *data, size_t len, const char *key,
                        long index);

/* ---- tables: aligned columns, two spaces apart, no trailing spaces ---- */

#define CTL_TABLE_MAX_COLS 16

struct ctl_column {
    const char *head; /* "SESSION" */
    bool right;       /* right-aligned (numbers) */
};

struct ctl_table {
    const struct ctl_column *cols;
    size_t ncols;
    char **cells; /* nrows * ncols, row by row, escaped copies */
    size_t nrows, cap;
};

/* An empty table of the ncols (at most CTL_TABLE_MAX_COLS) columns cols,
 * which must outlive it. */
void ctl_table_init(struct ctl_table *t, const struct ctl_column *cols, size_t ncols);
/* Append a row of ncols cells (escaped as ctl_put_clean does). 0, -ENOMEM. */
int ctl_table_add(struct ctl_table *t, const char *const cells[]);
/* Print the heads and the rows, each column as wide as its widest cell. */
void ctl_table_print(const struct ctl_table *t, FILE *fp);
void ctl_table_free(struct ctl_table *t);

#endif
