/*
 * exporter.h - the metrics outside the socket (docs/running.md "Metrics"):
 * --metrics-textfile rewritten every --metrics-interval, and the page of
 * --metrics (httpd.h) rendered once a second. Both by timers on the loop
 * thread, the only thread that reads the daemon's state.
 */
#ifndef EMAD_EXPORTER_H
#define EMAD_EXPORTER_H

#include "emad.h"
#include "httpd.h"

#include <stdbool.h>
#include <uv.h>

/* How often the HTTP page is rendered, ms. */
#define EXPORTER_PUBLISH_MS 1000

struct exporter {
    struct emad *ctx;
    uv_timer_t textfile_timer;
    uv_timer_t publish_timer;
    bool textfile_on;
    bool publish_on;
    bool textfile_failing; /* the last write failed (logged once until one succeeds) */
    struct httpd httpd;
};

/* Start what ctx->opts asks for (nothing when neither option is given): the
 * HTTP thread listening, the first page and textfile written. 0, or a
 * negative errno with err naming the option and the cause. */
int exporter_start(struct exporter *e, struct emad *ctx, char *err, size_t errlen);
/* Stop the timers (closed on the loop) and the HTTP thread; the textfile is
 * left as last written. */
void exporter_stop(struct exporter *e);
/* Write the textfile now: 0 or a negative errno (logged). */
int exporter_write_textfile(struct exporter *e);

#endif
