/*
 * exporter.c - the textfile and the HTTP page of the metrics (exporter.h).
 */
#include "exporter.h"

#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Write all of text to fd. 0 or a negative errno. */
static int write_all(int fd, const char *text, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, text, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        text += n;
        len -= (size_t)n;
    }
    return 0;
}

/* A reader (node_exporter) sees the old file or the new one, never half of
 * one: a temporary file in the same directory, renamed over the path. No
 * fsync: after a crash a stale or missing file is harmless. */
static int write_file(const char *path, const char *text, size_t len)
{
    char tmp[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int fd, rc;

    /* A leading dot: node_exporter reads *.prom only, and ls hides it. */
    if (slash != NULL)
        rc = snprintf(tmp, sizeof(tmp), "%.*s.%s.tmp%ld", (int)(slash + 1 - path), path, slash + 1,
                      (long)getpid());
    else
        rc = snprintf(tmp, sizeof(tmp), ".%s.tmp%ld", path, (long)getpid());
    if (rc < 0 || (size_t)rc >= sizeof(tmp))
        return -ENAMETOOLONG;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return -errno;
    /* 0644 whatever the umask: the collector may run as another user. */
    rc = fchmod(fd, 0644) < 0 ? -errno : write_all(fd, text, len);
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) < 0)
        rc = -errno;
    if (rc < 0)
        unlink(tmp);
    return rc;
}

int exporter_write_textfile(struct exporter *e)
{
    const char *path = e->ctx->opts->metrics_textfile;
    struct metrics_text t = {0};
    int rc;

    rc = metrics_render_ctx(e->ctx, true, 0, &t);
    if (rc == 0)
        rc = write_file(path, t.data, t.len);
    metrics_text_free(&t);
    if (rc < 0 && !e->textfile_failing)
        log_warn(e->ctx->log,
                 "--metrics-textfile %s: cannot write it: %s (logged once until a "
                 "write succeeds)",
                 path, strerror(-rc));
    else if (rc == 0 && e->textfile_failing)
        log_info(e->ctx->log, "--metrics-textfile %s: written again", path);
    e->textfile_failing = rc < 0;
    return rc;
}

static void on_textfile(uv_timer_t *t)
{
    exporter_write_textfile(t->data);
}

static void publish(struct exporter *e)
{
    struct metrics_text t = {0};

    /* Out of memory: the page served stays the previous one. */
    if (metrics_render_ctx(e->ctx, true, 0, &t) == 0) {
        httpd_publish(&e->httpd, t.data, t.len);
        return;
    }
    metrics_text_free(&t);
}

static void on_publish(uv_timer_t *t)
{
    publish(t->data);
}

int exporter_start(struct exporter *e, struct emad *ctx, char *err, size_t errlen)
{
    const struct emad_opts *o = ctx->opts;
    int rc;

    memset(e, 0, sizeof(*e));
    e->ctx = ctx;
    if (o->metrics_path[0] != '\0' || o->metrics_port != 0) {
        if ((rc = httpd_start(&e->httpd, o, err, errlen)) < 0)
            return rc;
        publish(e);
        uv_timer_init(ctx->loop, &e->publish_timer);
        e->publish_timer.data = e;
        e->publish_on = true;
        uv_timer_start(&e->publish_timer, on_publish, EXPORTER_PUBLISH_MS, EXPORTER_PUBLISH_MS);
        log_info(ctx->log, "serving metrics (GET /metrics) on %s", e->httpd.shown);
    }
    if (o->metrics_textfile[0] != '\0') {
        uint64_t ms = (uint64_t)o->metrics_interval_s * 1000;
        exporter_write_textfile(e);
        uv_timer_init(ctx->loop, &e->textfile_timer);
        e->textfile_timer.data = e;
        e->textfile_on = true;
        uv_timer_start(&e->textfile_timer, on_textfile, ms, ms);
    }
    return 0;
}

void exporter_stop(struct exporter *e)
{
    if (e->publish_on) {
        uv_close((uv_handle_t *)&e->publish_timer, NULL);
        httpd_stop(&e->httpd);
        e->publish_on = false;
    }
    if (e->textfile_on) {
        uv_close((uv_handle_t *)&e->textfile_timer, NULL);
        e->textfile_on = false;
    }
}
