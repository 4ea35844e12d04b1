/* Strict base64 over OpenSSL's EVP block coder; see base64.h. */
#include "core/base64.h"

#include <errno.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "core/cleanup.h"

char *base64_encode(const void *data, size_t len)
{
    if (len > INT_MAX / 2)
        return NULL;
    char *s = malloc(4 * ((len + 2) / 3) + 1);
    if (s)
        EVP_EncodeBlock((unsigned char *)s, data, (int)len);
    return s;
}

int base64_decode(const char *s, uint8_t **out, size_t *len)
{
    size_t n = strlen(s);
    *out = NULL;
    *len = 0;
    if (n % 4 || n > INT_MAX / 2)
        return -EBADMSG;
    size_t pad = (n && s[n - 1] == '=') + (n > 1 && s[n - 2] == '=');
    CLEANUP_FREE uint8_t *buf = malloc(n / 4 * 3 + 1);
    if (!buf)
        return -ENOMEM;
    int got = EVP_DecodeBlock(buf, (const unsigned char *)s, (int)n);
    if (got < 0 || (size_t)got != n / 4 * 3)
        return -EBADMSG;
    size_t dlen = (size_t)got - pad;
    /* Only the canonical spelling: re-encoding must give the input back. */
    CLEANUP_FREE char *again = base64_encode(buf, dlen);
    if (!again)
        return -ENOMEM;
    if (strcmp(again, s))
        return -EBADMSG;
    *out = TAKE_PTR(buf);
    *len = dlen;
    return 0;
}
