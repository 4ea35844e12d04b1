/* UTF-8 checks and boolean parsing; see text.h. */
#include "core/text.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/cleanup.h"

size_t utf8_char_len(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n;
    unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (p[0] == 0)
        return 0;
    if (p[0] < 0x80)
        return 1;
    if (p[0] < 0xc2) /* continuation byte, or the start of an overlong 2-byte form */
        return 0;
    if (p[0] < 0xe0) {
        n = 2;
    } else if (p[0] < 0xf0) {
        n = 3;
        if (p[0] == 0xe0)
            lo = 0xa0; /* overlong */
        else if (p[0] == 0xed)
            hi = 0x9f; /* UTF-16 surrogates */
    } else if (p[0] < 0xf5) {
        n = 4;
        if (p[0] == 0xf0)
            lo = 0x90; /* overlong */
        else if (p[0] == 0xf4)
            hi = 0x8f; /* past U+10FFFF */
    } else {
        return 0;
    }
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return n;
}

bool utf8_valid(const char *s)
{
    while (*s) {
        size_t n = utf8_char_len(s);
        if (n == 0)
            return false;
        s += n;
    }
    return true;
}

char *utf8_scrub(const char *s)
{
    size_t len = strlen(s);
    /* each byte becomes at most the 3 bytes of U+FFFD */
    char *out = malloc(len * (sizeof(UTF8_REPLACEMENT) - 1) + 1);
    if (!out)
        return NULL;
    char *w = out;
    while (*s) {
        size_t n = utf8_char_len(s);
        if (n == 0) {
            memcpy(w, UTF8_REPLACEMENT, sizeof(UTF8_REPLACEMENT) - 1);
            w += sizeof(UTF8_REPLACEMENT) - 1;
            s++;
        } else {
            memcpy(w, s, n);
            w += n;
            s += n;
        }
    }
    *w = '\0';
    return out;
}

int bool_parse(const char *s, bool dflt, bool *out)
{
    static const char *const truths[] = {"1", "t", "T", "TRUE", "true", "True"};
    static const char *const falsehoods[] = {"0", "f", "F", "FALSE", "false", "False"};
    _Static_assert(ARRAY_SIZE(truths) == ARRAY_SIZE(falsehoods), "one loop walks both");
    if (!s || !*s) {
        *out = dflt;
        return 0;
    }
    for (size_t i = 0; i < ARRAY_SIZE(truths); i++) {
        if (!strcmp(s, truths[i])) {
            *out = true;
            return 0;
        }
        if (!strcmp(s, falsehoods[i])) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}
