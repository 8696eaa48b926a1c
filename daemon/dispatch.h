/*
 * dispatch.h - method name -> handler, the hello rule and error replies:
 * the layer between the transport (server.h) and the sessions (session.h).
 */
#ifndef EMAD_DISPATCH_H
#define EMAD_DISPATCH_H

#include "peer.h"
#include "wire.h"

/* The server's handlers (struct server_handlers), arg being the daemon's
 * struct emad. Handle one decoded request; the reply may be sent now or
 * later. */
void dispatch_request(void *ctx, struct peer *p, const struct wire_msg *m);
/* p's connection closed: its sessions become detached. */
void dispatch_closed(void *ctx, struct peer *p);

#endif
