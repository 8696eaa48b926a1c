/*
 * log.h - emad's log: stderr or a file that SIGHUP reopens (for logrotate).
 */
#ifndef EMAD_LOG_H
#define EMAD_LOG_H

#include "opts.h"

#include <limits.h>
#include <stdio.h>

struct log {
    FILE *fp;              /* stderr or the opened file */
    enum log_level level;  /* messages above it are dropped */
    char path[PATH_MAX];   /* "" for stderr */
};

/* Open path for appending ("" or NULL: stderr). 0 or -errno. */
int log_open(struct log *lg, const char *path, enum log_level level);
/* Reopen the file after rotation; on failure keep writing to the old one. */
int log_reopen(struct log *lg);
void log_close(struct log *lg);
/* A longer message is cut, ending in "...". */
#define LOG_LINE_MAX 8192

/* One line: control characters in the message are written as \xNN. */
void log_msg(struct log *lg, enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Room for a peer's string of n bytes once escaped by log_escape (each byte
 * may become \xNN) plus the NUL. */
#define LOG_ESCAPED_SIZE(n) ((n) * 4 + 1)

/* Copy the len bytes at s into out (outlen > 0 bytes, NUL-terminated) fit for
 * one log line: control characters (C0, DEL and C1), '"', '\\' and bytes that
 * are not well-formed UTF-8 become \xNN, so that a peer's string can neither
 * forge a line nor hide in quotes. Valid UTF-8 is kept. What does not fit
 * ends in "..." (never cutting an escape or a character). Returns out, for
 * use as a printf argument. Everything a peer sends (client, session, tensor,
 * method and file names) goes through it before reaching the log. */
const char *log_escape(const char *s, size_t len, char *out, size_t outlen);

#define log_error(lg, ...) log_msg(lg, LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(lg, ...) log_msg(lg, LOG_LVL_WARN, __VA_ARGS__)
#define log_info(lg, ...) log_msg(lg, LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(lg, ...) log_msg(lg, LOG_LVL_DEBUG, __VA_ARGS__)

#endif
