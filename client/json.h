/*
 * json.h - print a msgpack object as JSON (emactl --json).
 */
#ifndef EMAD_JSON_H
#define EMAD_JSON_H

#include <msgpack.h>
#include <stddef.h>
#include <stdio.h>

/* Room for any number json_format_double() or json_format_float() writes,
 * with its NUL: "-2.2250738585072014e-308" is 24 characters. */
#define JSON_NUMBER_MAX 32

/* Write the shortest decimal text that strtod() reads back as exactly d
 * into buf (len bytes, JSON_NUMBER_MAX is enough): 7.024061303, 0.1, 1e-300,
 * 5e-324. A d with an integral value keeps a fraction, 7.0, so that a typed
 * reader still sees a float. Returns the length written, -EINVAL when d is
 * not finite (JSON has no text for it), -ENOSPC when len is too small. */
int json_format_double(double d, char *buf, size_t len);

/* json_format_double() for a single-precision value: the shortest text that
 * strtof() reads back as exactly f (0.1f is 0.1, not 0.10000000149011612). */
int json_format_float(float f, char *buf, size_t len);

/* Print o as JSON, indented by two spaces per level (indent < 0: on one
 * line). Floats in their shortest form (json_format_double); non-finite
 * floats become null; binary data becomes a hex string; extension types
 * null. */
void json_print(FILE *fp, const msgpack_object *o, int indent);

#endif
