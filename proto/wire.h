/*
 * wire.h - msgpack-rpc framing for the emad protocol (docs/protocol.md "Framing", "Limits").
 *
 * The decoder is incremental: bytes are fed as they arrive, a scanner walks
 * the msgpack headers once (never re-scanning a partial message), and only a
 * message that is complete and within the limits is unpacked (by our own
 * wire_unpack(), into the objects msgpack-c would make). Nothing is therefore
 * ever allocated from a declared length larger than the bytes actually
 * received. Shared by emad and libemaclient; knows nothing of
 * sockets or of the daemon.
 */
#ifndef EMAD_WIRE_H
#define EMAD_WIRE_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WIRE_PROTO_VERSION 1
#define WIRE_DEFAULT_MAX_MESSAGE (16u << 20) /* one message, bytes */
#define WIRE_DEFAULT_MAX_DEPTH 8             /* nesting of arrays and maps */
#define WIRE_HARD_MAX_DEPTH 32               /* msgpack-c's own stack; ours must stay below */
#define WIRE_SOCKET_PATH_MAX 107             /* sun_path less its terminating NUL */

/* Message kinds, as the first element of the msgpack-rpc array. */
enum wire_kind {
    WIRE_REQUEST = 0,  /* [0, msgid, method, [params]] */
    WIRE_RESPONSE = 1, /* [1, msgid, error, result] */
    WIRE_NOTIFY = 2,   /* [2, method, [params]] */
};

/* A decoded message. Pointers refer to the decoder's buffer and zone and stay
 * valid until the next call of wire_decoder_next(), _feed(), _reserve() or
 * _free() on that decoder. */
struct wire_msg {
    enum wire_kind kind;
    uint32_t msgid;                /* request, response */
    const char *method;            /* request, notification: not NUL-terminated */
    size_t method_len;
    const msgpack_object *params;  /* request, notification: the one map */
    const msgpack_object *error;   /* response: nil or {code, message} */
    const msgpack_object *result;  /* response */
    size_t bytes;                  /* size of the message on the wire */
};

/* Why a message could not be delivered. has_msgid tells whether the sender
 * can be answered (an error response) or the connection must be closed. */
struct wire_fault {
    int code;       /* -EMSGSIZE too big, -EPROTO bad shape, -EBADMSG not msgpack, -ELOOP too deep */
    bool has_msgid; /* a request whose msgid was found: answer it and go on */
    uint32_t msgid;
    char detail[160]; /* human text naming the problem */
};

/* Incremental scanner state: where we are inside the current message. */
struct wire_scan {
    uint32_t depth;                          /* containers currently open */
    uint64_t left[WIRE_HARD_MAX_DEPTH + 1];  /* objects still expected per level */
    uint64_t skip;                           /* payload bytes still to pass over */
    uint8_t hdr[9];                          /* a header split across reads */
    uint8_t hdr_len;                         /* bytes of hdr gathered */
    uint8_t hdr_need;                        /* bytes hdr needs in all (0: none pending) */
};

struct wire_decoder {
    size_t max_message;   /* limit on one message's bytes */
    unsigned max_depth;   /* limit on nesting */
    char *buf;            /* received bytes; [head, len) not yet consumed */
    size_t head, len, cap;
    size_t scanned;       /* bytes after head already walked by the scanner */
    struct wire_scan scan;
    bool discarding;      /* skipping the rest of an oversized message */
    bool broken;          /* a fatal fault happened: the stream cannot be resynchronised */
    bool have_unpacked;   /* obj and zone hold the message last returned */
    bool zone_ready;      /* zone is initialised */
    bool scan_only;       /* never try a whole message first (the fuzzer's
                             comparison of the scanner with wire_unpack) */
    msgpack_zone zone;    /* the objects of one message; reused, not remade, per message */
    msgpack_object obj;
};

/* Decoder */
int wire_decoder_init(struct wire_decoder *d, size_t max_message, unsigned max_depth);
/* Release the buffer and any decoded message. The decoder is then empty
 * and may be used again as it is (a server gives back the buffer a large
 * request grew, between requests); its limits and any skip of an oversized
 * message in progress are kept. */
void wire_decoder_free(struct wire_decoder *d);
/* Append received bytes. -ENOMEM, or -EMSGSIZE if the buffer would exceed its
 * bound (only possible when the caller ignored a fault). */
int wire_decoder_feed(struct wire_decoder *d, const void *data, size_t n);
/* Room for reading straight into the buffer: returns a pointer with at least
 * *room bytes (up to want), then wire_decoder_commit(n) after reading. */
char *wire_decoder_reserve(struct wire_decoder *d, size_t want, size_t *room);
void wire_decoder_commit(struct wire_decoder *d, size_t n);
/* 1: *msg holds a message; 0: more bytes needed; -1: *fault describes a
 * message that was dropped (has_msgid: answer it; else close the connection). */
int wire_decoder_next(struct wire_decoder *d, struct wire_msg *msg, struct wire_fault *fault);
/* Bytes buffered but not yet consumed (for per-connection accounting). */
size_t wire_decoder_pending(const struct wire_decoder *d);

/* Unpack the one msgpack object at data[*off, len) into *out, as msgpack-c
 * 4.0's msgpack_unpack() does: the same object types and values (a signed
 * encoding of a non-negative integer is POSITIVE_INTEGER; float 32 is
 * FLOAT32), strings, bins and exts pointing into data, arrays and maps
 * allocated from zone. On success *off moves past the object (bytes may
 * follow it). Containers nest at most max_depth (<= WIRE_HARD_MAX_DEPTH)
 * levels, an empty one counting as one, else -ELOOP; -EBADMSG for bytes that
 * are not one complete object (reserved byte 0xc1, cut short, a count larger
 * than the bytes left), -ENOMEM, -EINVAL. Nothing is read outside
 * data[*off, len) and nothing allocated beyond a multiple of those bytes. */
int wire_unpack(const char *data, size_t len, size_t *off, msgpack_zone *zone,
                unsigned max_depth, msgpack_object *out);

/* Encoding: the envelope of each kind. After the *_head calls the caller packs
 * exactly one map (the params or the result). */
void wire_pack_request_head(msgpack_packer *pk, uint32_t msgid, const char *method);
void wire_pack_notify_head(msgpack_packer *pk, const char *method);
void wire_pack_response_head(msgpack_packer *pk, uint32_t msgid);
void wire_pack_response_error(msgpack_packer *pk, uint32_t msgid, const char *code,
                              const char *message);
void wire_pack_str(msgpack_packer *pk, const char *s);

/* Socket path resolution (§1): opt (--socket), then env EMAD_SOCKET, then
 * $XDG_RUNTIME_DIR/emad.sock, then /run/emad/emad.sock. Environment values
 * are passed in so that the rule is testable. -ENAMETOOLONG when the result
 * does not fit a sockaddr_un; -EINVAL for an empty or relative-less value. */
int wire_socket_path(const char *opt, const char *env_socket, const char *env_runtime_dir,
                     char *out, size_t outlen);

#endif
