/*
 * json.h - print a msgpack object as JSON (emactl --json).
 */
#ifndef EMAD_JSON_H
#define EMAD_JSON_H

#include <msgpack.h>
#include <stdio.h>

/* Print o as JSON, indented by two spaces per level. Non-finite floats
 * become null; binary data becomes a hex string; extension types null. */
void json_print(FILE *fp, const msgpack_object *o, int indent);

#endif
