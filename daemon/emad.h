/*
 * emad.h - the daemon's context: what every module of emad may reach.
 * One instance lives in main.c; everything else takes it as an argument.
 */
#ifndef EMAD_EMAD_H
#define EMAD_EMAD_H

#include "log.h"
#include "opts.h"

#include <stdint.h>
#include <uv.h>

struct server;
struct registry;
struct pool;
struct metrics;

struct emad {
    uv_loop_t *loop;
    const struct emad_opts *opts;
    struct log *log;
    struct server *srv;
    struct registry *sessions;
    struct pool *pool;
    struct metrics *metrics; /* counters (metrics.h); changed on the loop thread only */
    uint64_t started_ns; /* uv_hrtime() at start, for uptime */
    double started_unix; /* the wall clock then (unix seconds), read once: the metrics'
                            emad_start_time_seconds must not move between scrapes */
};

#endif
