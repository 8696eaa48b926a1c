/*
 * listen.h - the listening socket: inherited from systemd, or created at the
 * resolved path with the checks a shared daemon needs (live or stale socket,
 * runtime directory, permissions).
 */
#ifndef EMAD_LISTEN_H
#define EMAD_LISTEN_H

#include "log.h"
#include "opts.h"

#include <stdbool.h>
#include <sys/types.h>

struct listen_socket {
    int fd;               /* listening, non-blocking, close-on-exec */
    bool inherited;       /* from systemd: the path is systemd's, never unlink it */
    char path[108];       /* bound path ("" if the inherited socket has none) */
    bool has_group;       /* --allow-group resolved */
    gid_t group;
};

/* Fill ls from the environment's LISTEN_FDS/LISTEN_PID (when they name this
 * process) or by binding opts->socket_path. 0, or a negative errno with a
 * message for the user in err. */
int listen_socket_open(struct listen_socket *ls, const struct emad_opts *opts,
                       const char *listen_pid, const char *listen_fds, struct log *lg, char *err,
                       size_t errlen);
/* Remove the socket file if we created it. */
void listen_socket_unlink(struct listen_socket *ls);

#endif
