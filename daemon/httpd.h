/*
 * httpd.h - the metrics over HTTP (--metrics): GET /metrics answered by
 * GNU libmicrohttpd on a thread of its own, from a snapshot the loop
 * publishes (exporter.c). The HTTP thread reads nothing of the daemon but
 * that snapshot, under a mutex: it is off the hot path and never waits for
 * the loop.
 */
#ifndef EMAD_HTTPD_H
#define EMAD_HTTPD_H

#include "opts.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

struct MHD_Daemon;

/* The scrapers served at once; with the listening socket and the thread's own descriptors,
 * what --metrics adds to emad's descriptors beside its connections (main.c fd_reserve). */
#define HTTPD_CONNECTIONS 32u
#define HTTPD_DESCRIPTORS (HTTPD_CONNECTIONS + 4u)

struct httpd {
    struct MHD_Daemon *mhd;
    int fd;               /* the listening socket (MHD closes it at stop) */
    char path[108];       /* the Unix socket's path, removed at stop; "" for TCP */
    char shown[160];      /* the address, for logs */
    pthread_mutex_t lock; /* guards snap and snap_len */
    char *snap;           /* the last published page; NULL before the first */
    size_t snap_len;
};

/* Listen on o's --metrics address and start serving. 0, or a negative
 * errno with err naming the address and the cause. */
int httpd_start(struct httpd *h, const struct emad_opts *o, char *err, size_t errlen);
/* Replace the page served (text is taken over: h frees it). */
void httpd_publish(struct httpd *h, char *text, size_t len);
/* Stop the thread (it finishes the requests it is answering), close the
 * socket, remove its path. */
void httpd_stop(struct httpd *h);

#endif
