/*
 * dispatch.h - method name -> handler, the hello rule and error replies.
 */
#ifndef EMAD_DISPATCH_H
#define EMAD_DISPATCH_H

#include "server.h"

/* Handle one decoded request; the reply may be sent now or later. */
void dispatch_request(struct conn *c, const struct wire_msg *m);

#endif
