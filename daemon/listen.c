/*
 * listen.c - create or adopt the listening Unix socket.
 */
#include "listen.h"
#include "errbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define SD_LISTEN_FDS_START 3

static int adopt_inherited(struct listen_socket *ls, const char *listen_pid,
                           const char *listen_fds, char *err, size_t errlen)
{
    int fd = SD_LISTEN_FDS_START, type = 0, acc = 0;
    socklen_t len = sizeof(type);
    struct sockaddr_un sa;
    socklen_t salen = sizeof(sa);

    if (atoi(listen_fds) != 1)
        return err_set(err, errlen, -EINVAL, "LISTEN_FDS=%s: emad takes exactly one socket",
                    listen_fds);
    (void)listen_pid;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM)
        return err_set(err, errlen, -ENOTSOCK, "inherited fd 3 is not a stream socket");
    len = sizeof(acc);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) < 0 || !acc)
        return err_set(err, errlen, -EINVAL, "inherited fd 3 is not a listening socket");
    memset(&sa, 0, sizeof(sa));
    if (getsockname(fd, (struct sockaddr *)&sa, &salen) < 0 || sa.sun_family != AF_UNIX)
        return err_set(err, errlen, -EAFNOSUPPORT, "inherited fd 3 is not a Unix socket");
    if (salen > offsetof(struct sockaddr_un, sun_path) && sa.sun_path[0] != '\0')
        snprintf(ls->path, sizeof(ls->path), "%.*s",
                 (int)(salen - offsetof(struct sockaddr_un, sun_path)), sa.sun_path);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    ls->fd = fd;
    ls->inherited = true;
    return 0;
}

/* Make the socket's directory if it is missing: only the last component, so a
 * typo in a parent is reported rather than silently created. */
static int ensure_dir(const char *sock, const struct listen_socket *ls, char *err, size_t errlen)
{
    char buf[108];
    struct stat st;
    const char *dir;

    snprintf(buf, sizeof(buf), "%s", sock);
    dir = dirname(buf);
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return err_set(err, errlen, -ENOTDIR, "%s (the socket's directory) is not a directory",
                        dir);
        return 0;
    }
    if (errno != ENOENT)
        return err_set(err, errlen, -errno, "cannot use socket directory %s: %s", dir,
                    strerror(errno));
    /* Group members need search permission to reach the socket. */
    mode_t mode = ls->has_group ? 0750 : 0700;
    if (mkdir(dir, mode) < 0)
        return err_set(err, errlen, -errno, "cannot create socket directory %s: %s", dir,
                    strerror(errno));
    if (ls->has_group && (chown(dir, (uid_t)-1, ls->group) < 0 || chmod(dir, mode) < 0))
        return err_set(err, errlen, -errno, "cannot give socket directory %s to its group: %s", dir,
                    strerror(errno));
    return 0;
}

/* A socket file exists at path: refuse if someone answers there, remove it if
 * it is stale. */
static int clear_stale(const char *path, struct log *lg, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : err_set(err, errlen, -errno, "cannot check %s: %s", path,
                                          strerror(errno));
    if (!S_ISSOCK(st.st_mode))
        return err_set(err, errlen, -EEXIST,
                    "%s exists and is not a socket; remove it or choose another --socket", path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return err_set(err, errlen, -errno, "socket: %s", strerror(errno));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    if (rc == 0) {
        struct ucred cred;
        socklen_t len = sizeof(cred);
        long pid = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 ? cred.pid : -1;
        close(fd);
        return err_set(err, errlen, -EADDRINUSE,
                    "%s is a live socket (another emad, pid %ld, is listening there); stop it "
                    "or choose another --socket", path, pid);
    }
    rc = errno;
    close(fd);
    if (rc != ECONNREFUSED)
        return err_set(err, errlen, -rc, "cannot check whether %s is in use: %s", path,
                    strerror(rc));
    if (unlink(path) < 0 && errno != ENOENT)
        return err_set(err, errlen, -errno, "cannot remove stale socket %s: %s", path,
                    strerror(errno));
    log_info(lg, "removed stale socket %s", path);
    return 0;
}

static int bind_path(struct listen_socket *ls, const struct emad_opts *opts, struct log *lg,
                     char *err, size_t errlen)
{
    const char *path = opts->socket_path;
    struct sockaddr_un sa;
    mode_t old_umask;
    int fd, rc;

    if (strlen(path) >= sizeof(sa.sun_path))
        return err_set(err, errlen, -ENAMETOOLONG, "socket path %s is too long", path);
    if ((rc = ensure_dir(path, ls, err, errlen)) < 0)
        return rc;
    if ((rc = clear_stale(path, lg, err, errlen)) < 0)
        return rc;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return err_set(err, errlen, -errno, "socket: %s", strerror(errno));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    /* Bind with no permission for anyone but us, then widen: the socket is
     * never reachable with more rights than asked for, not even briefly. */
    old_umask = umask(0177);
    rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old_umask);
    if (rc < 0) {
        rc = -errno;
        close(fd);
        if (rc == -EADDRINUSE)
            return err_set(err, errlen, rc, "%s is already in use (another emad starting?)", path);
        return err_set(err, errlen, rc, "cannot bind %s: %s", path, strerror(-rc));
    }
    if (chmod(path, opts->socket_mode) < 0 ||
        (ls->has_group && chown(path, (uid_t)-1, ls->group) < 0)) {
        rc = -errno;
        unlink(path);
        close(fd);
        return err_set(err, errlen, rc, "cannot set permissions of %s: %s", path, strerror(-rc));
    }
    if (listen(fd, 128) < 0) {
        rc = -errno;
        unlink(path);
        close(fd);
        return err_set(err, errlen, rc, "cannot listen on %s: %s", path, strerror(-rc));
    }
    ls->fd = fd;
    snprintf(ls->path, sizeof(ls->path), "%s", path);
    return 0;
}

int listen_socket_open(struct listen_socket *ls, const struct emad_opts *opts,
                       const char *listen_pid, const char *listen_fds, struct log *lg, char *err,
                       size_t errlen)
{
    memset(ls, 0, sizeof(*ls));
    ls->fd = -1;
    if (opts->allow_group[0] != '\0') {
        struct group *gr = getgrnam(opts->allow_group);
        if (gr == NULL)
            return err_set(err, errlen, -ENOENT, "--allow-group %s: no such group",
                        opts->allow_group);
        ls->has_group = true;
        ls->group = gr->gr_gid;
    }
    if (listen_pid != NULL && listen_fds != NULL && atol(listen_pid) == (long)getpid())
        return adopt_inherited(ls, listen_pid, listen_fds, err, errlen);
    return bind_path(ls, opts, lg, err, errlen);
}

void listen_socket_unlink(struct listen_socket *ls)
{
    if (!ls->inherited && ls->path[0] != '\0')
        unlink(ls->path);
}
