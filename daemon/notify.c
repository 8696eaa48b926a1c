/*
 * notify.c - sd_notify(3) without libsystemd.
 */
#include "notify.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int notify_send(const char *socket_path, const char *text)
{
    struct sockaddr_un sa;
    size_t n;
    int fd, rc = 0;

    if (socket_path == NULL || socket_path[0] == '\0')
        return 0;
    n = strlen(socket_path);
    if ((socket_path[0] != '/' && socket_path[0] != '@') || n >= sizeof(sa.sun_path))
        return -EINVAL;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, socket_path, n);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0';
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (sendto(fd, text, strlen(text), MSG_NOSIGNAL, (struct sockaddr *)&sa,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)) < 0)
        rc = -errno;
    close(fd);
    return rc;
}
