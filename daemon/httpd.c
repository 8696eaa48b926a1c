/*
 * httpd.c - GET /metrics over HTTP (httpd.h), with GNU libmicrohttpd.
 */
#include "httpd.h"

#include "errbuf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
/* Scrapers are few: a bound on the connections and on an idle one's life
 * keeps a misbehaving client from holding the thread's resources. */
#define HTTPD_MAX_CONNECTIONS HTTPD_CONNECTIONS
#define HTTPD_IDLE_TIMEOUT_S 10u

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned status, const char *text,
                              const char *allow)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result rc;

    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    if (allow != NULL)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

/* On the HTTP thread: copy the snapshot out, nothing else. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    struct httpd *h = cls;
    struct MHD_Response *r;
    enum MHD_Result rc;
    char *copy;
    size_t len;

    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)req_cls;
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return answer(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "emad serves GET /metrics only\n",
                      "GET, HEAD");
    if (strcmp(url, "/metrics") != 0)
        return answer(conn, MHD_HTTP_NOT_FOUND, "emad serves its metrics at /metrics\n", NULL);
    pthread_mutex_lock(&h->lock);
    len = h->snap_len;
    copy = h->snap != NULL ? malloc(len + 1) : NULL;
    if (copy != NULL)
        memcpy(copy, h->snap, len);
    pthread_mutex_unlock(&h->lock);
    if (copy == NULL)
        return answer(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "emad's metrics are not ready\n", NULL);
    r = MHD_create_response_from_buffer(len, copy, MHD_RESPMEM_MUST_FREE);
    if (r == NULL) {
        free(copy);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_TYPE);
    rc = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return rc;
}

/* A socket file at path: refuse when something listens there, remove it
 * when it is stale (left by an emad that was killed). */
static int clear_stale(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) < 0)
        return errno == ENOENT
                   ? 0
                   : err_set(err, errlen, -errno, "--metrics %s: %s", path, strerror(errno));
    if (!S_ISSOCK(st.st_mode))
        return err_set(err, errlen, -EEXIST, "--metrics %s: exists and is not a socket", path);
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return err_set(err, errlen, -errno, "socket: %s", strerror(errno));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 0 : errno;
    close(fd);
    if (rc == 0)
        return err_set(err, errlen, -EADDRINUSE, "--metrics %s: something listens there already",
                       path);
    if (rc != ECONNREFUSED)
        return err_set(err, errlen, -rc, "--metrics %s: %s", path, strerror(rc));
    if (unlink(path) < 0 && errno != ENOENT)
        return err_set(err, errlen, -errno, "--metrics %s: cannot remove the stale socket: %s",
                       path, strerror(errno));
    return 0;
}

/* Bind and listen; the Unix socket 0600 before anyone may connect. */
static int listen_on(struct httpd *h, const struct emad_opts *o, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int one = 1, rc;

    memset(&ss, 0, sizeof(ss));
    if (o->metrics_path[0] != '\0') {
        struct sockaddr_un *sa = (struct sockaddr_un *)&ss;
        if ((rc = clear_stale(o->metrics_path, err, errlen)) < 0)
            return rc;
        sa->sun_family = AF_UNIX;
        memcpy(sa->sun_path, o->metrics_path, strlen(o->metrics_path));
        len = sizeof(*sa);
        snprintf(h->shown, sizeof(h->shown), "%s", o->metrics_path);
    } else if (strchr(o->metrics_host, ':') != NULL) {
        struct sockaddr_in6 *sa = (struct sockaddr_in6 *)&ss;
        sa->sin6_family = AF_INET6;
        sa->sin6_port = htons((uint16_t)o->metrics_port);
        inet_pton(AF_INET6, o->metrics_host, &sa->sin6_addr);
        len = sizeof(*sa);
        snprintf(h->shown, sizeof(h->shown), "[%s]:%u", o->metrics_host, o->metrics_port);
    } else {
        struct sockaddr_in *sa = (struct sockaddr_in *)&ss;
        sa->sin_family = AF_INET;
        sa->sin_port = htons((uint16_t)o->metrics_port);
        inet_pton(AF_INET, o->metrics_host, &sa->sin_addr);
        len = sizeof(*sa);
        snprintf(h->shown, sizeof(h->shown), "%s:%u", o->metrics_host, o->metrics_port);
    }
    if ((h->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return err_set(err, errlen, -errno, "--metrics %s: socket: %s%s", h->shown, strerror(errno),
                       errno == EAFNOSUPPORT ? " (under emad.service, which allows Unix "
                                               "sockets only, use a path or see docs/running.md "
                                               "\"Metrics\")"
                                             : "");
    if (ss.ss_family != AF_UNIX)
        setsockopt(h->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(h->fd, (struct sockaddr *)&ss, len) < 0) {
        rc = -errno;
        goto fail;
    }
    if (ss.ss_family == AF_UNIX) {
        snprintf(h->path, sizeof(h->path), "%s", o->metrics_path);
        if (chmod(h->path, 0600) < 0) {
            rc = -errno;
            goto fail;
        }
    }
    if (listen(h->fd, 16) < 0) {
        rc = -errno;
        goto fail;
    }
    return 0;
fail:
    err_set(err, errlen, rc, "--metrics %s: cannot listen there: %s", h->shown, strerror(-rc));
    close(h->fd);
    h->fd = -1;
    if (h->path[0] != '\0')
        unlink(h->path);
    h->path[0] = '\0';
    return rc;
}

int httpd_start(struct httpd *h, const struct emad_opts *o, char *err, size_t errlen)
{
    /* The faults stay deliverable; the signals emad answers go to the loop
     * thread's signalfd, never to the HTTP thread, which inherits this mask. */
    static const int sync_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS};
    sigset_t all, old;
    int rc;

    memset(h, 0, sizeof(*h));
    h->fd = -1;
    if ((rc = listen_on(h, o, err, errlen)) < 0)
        return rc;
    pthread_mutex_init(&h->lock, NULL);
    sigfillset(&all);
    for (size_t i = 0; i < sizeof(sync_signals) / sizeof(sync_signals[0]); i++)
        sigdelset(&all, sync_signals[i]);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    /* AUTO: epoll or poll, never select(), which cannot watch a descriptor numbered 1024 or
     * more (emad raises its limit past that to fit --max-connections). */
    h->mhd = MHD_start_daemon(MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ITC, 0, NULL, NULL,
                              on_request, h, MHD_OPTION_LISTEN_SOCKET, h->fd,
                              MHD_OPTION_CONNECTION_LIMIT, HTTPD_MAX_CONNECTIONS,
                              MHD_OPTION_CONNECTION_TIMEOUT, HTTPD_IDLE_TIMEOUT_S, MHD_OPTION_END);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (h->mhd == NULL) {
        err_set(err, errlen, -EIO, "--metrics %s: libmicrohttpd could not start", h->shown);
        close(h->fd);
        h->fd = -1;
        if (h->path[0] != '\0')
            unlink(h->path);
        pthread_mutex_destroy(&h->lock);
        return -EIO;
    }
    return 0;
}

void httpd_publish(struct httpd *h, char *text, size_t len)
{
    char *old;

    pthread_mutex_lock(&h->lock);
    old = h->snap;
    h->snap = text;
    h->snap_len = len;
    pthread_mutex_unlock(&h->lock);
    free(old);
}

void httpd_stop(struct httpd *h)
{
    if (h->mhd == NULL)
        return;
    /* Quiesced, MHD hands the listening socket back rather than closing it
     * itself: closed here, once, whatever MHD's version does. */
    MHD_socket fd = MHD_quiesce_daemon(h->mhd);
    MHD_stop_daemon(h->mhd);
    h->mhd = NULL;
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    h->fd = -1;
    if (h->path[0] != '\0')
        unlink(h->path);
    free(h->snap);
    h->snap = NULL;
    pthread_mutex_destroy(&h->lock);
}
