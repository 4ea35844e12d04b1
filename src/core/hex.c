/* Hexadecimal encoding and strict decoding; see hex.h. */
#include "core/hex.h"

#include <errno.h>
#include <string.h>

static void encode(const void *in, size_t n, char *out, const char digits[16])
{
    const uint8_t *p = in;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 0xf];
    }
    out[2 * n] = '\0';
}

void hex_encode(const void *in, size_t n, char *out)
{
    encode(in, n, out, "0123456789abcdef");
}

void hex_encode_upper(const void *in, size_t n, char *out)
{
    encode(in, n, out, "0123456789ABCDEF");
}

int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int hex_decode(const char *text, void *out, size_t n)
{
    if (strnlen(text, 2 * n + 1) != 2 * n)
        return -EINVAL;
    uint8_t *p = out;
    for (size_t i = 0; i < n; i++) {
        int hi = hex_digit(text[2 * i]), lo = hex_digit(text[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        p[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}
