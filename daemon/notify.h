/*
 * notify.h - the few lines of systemd's notification protocol emad needs
 * (READY=1, STOPPING=1), written by hand rather than linking libsystemd.
 */
#ifndef EMAD_NOTIFY_H
#define EMAD_NOTIFY_H

/* Send text to the datagram socket named by socket_path (NOTIFY_SOCKET's
 * value; '@' means the abstract namespace). 0 when socket_path is NULL or
 * empty (not under systemd), else 0 or -errno. */
int notify_send(const char *socket_path, const char *text);

#endif
