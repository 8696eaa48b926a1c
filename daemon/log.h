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
void log_msg(struct log *lg, enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_error(lg, ...) log_msg(lg, LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(lg, ...) log_msg(lg, LOG_LVL_WARN, __VA_ARGS__)
#define log_info(lg, ...) log_msg(lg, LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(lg, ...) log_msg(lg, LOG_LVL_DEBUG, __VA_ARGS__)

#endif
