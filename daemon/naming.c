/*
 * naming.c - the rules for session and tensor names.
 */
#include "session.h"

#include <stdint.h>

bool session_name_qualified(const char *s, size_t len)
{
    size_t i = 0;

    while (i < len && s[i] >= '0' && s[i] <= '9')
        i++;
    return i > 0 && i < len && s[i] == ':';
}

bool session_name_valid(const char *s, size_t len)
{
    if (len == 0 || len > SESSION_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == ':' ||
                  ch == '/' || ch == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* Well-formed UTF-8 (no overlongs, no surrogates), 1..1024 bytes, no NUL. */
bool tensor_name_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;

    if (len == 0 || len > TENSOR_NAME_MAX)
        return false;
    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        uint32_t cp;
        if (c == 0)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            n = 1, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3, cp = c & 0x07;
        else
            return false;
        if (i + n >= len)
            return false; /* truncated sequence */
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}
