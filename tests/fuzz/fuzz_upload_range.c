/* Fuzz target: what an upload PUT may write (src/server/upload_range.c), from its Content-Range,
 * Content-Length and Transfer-Encoding, and the check of each piece of its body.
 *
 * Input: 8 bytes of the transfer's size, 1 byte of flags (1 chunked, 2 a Content-Length, 4 a
 * Content-Range), then the Content-Range and Content-Length values and the body's piece
 * lengths (one byte each, times 61), separated by newlines.  Properties: the result is 0,
 * -EINVAL or -ERANGE, a refusal with a reason; an accepted range lies inside [0, size), is never
 * reversed (with a Content-Range it holds exactly FIRST..LAST as the header says, FIRST <= LAST <
 * size) and a known body length equals it; the pieces of a body accepted one after the other never
 * reach past the range. */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "server/upload_range.h"

#define FLAG_CHUNKED        1
#define FLAG_CONTENT_LENGTH 2
#define FLAG_CONTENT_RANGE  4
#define PIECE_UNIT          61 /* odd, so pieces fall anywhere against ranges */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The next newline-separated field of [*p, end) as a string (malloc'd). */
static char *field(const uint8_t **p, const uint8_t *end)
{
    const uint8_t *nl = memchr(*p, '\n', (size_t)(end - *p));
    size_t len = (size_t)((nl ? nl : end) - *p);
    char *s = malloc(len + 1);
    if (!s)
        abort();
    memcpy(s, *p, len);
    s[len] = '\0';
    *p = nl ? nl + 1 : end;
    return s;
}

/* FIRST and LAST of a Content-Range the parser accepted, read independently of it. */
static void reference_range(const char *cr, uint64_t *first, uint64_t *last)
{
    assert(strncasecmp(cr, "bytes ", 6) == 0);
    const char *p = cr + 6;
    while (*p == ' ')
        p++;
    char *e;
    *first = strtoull(p, &e, 10);
    assert(*e == '-');
    *last = strtoull(e + 1, &e, 10);
    assert(*e == '/');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t tsize = 0;
    uint8_t flags = 0;
    if (size >= sizeof(tsize)) {
        memcpy(&tsize, data, sizeof(tsize));
        data += sizeof(tsize);
        size -= sizeof(tsize);
    }
    tsize >>= (tsize & 63); /* small sizes too */
    if (size >= 1) {
        flags = data[0];
        data++;
        size--;
    }
    const uint8_t *p = data, *end = data + size;
    char *cr = field(&p, end);
    char *cl = field(&p, end);
    bool chunked = flags & FLAG_CHUNKED;

    struct upload_range r;
    char err[256] = "";
    int ret = upload_range_parse(flags & FLAG_CONTENT_RANGE ? cr : NULL,
                                 flags & FLAG_CONTENT_LENGTH ? cl : NULL, chunked, tsize, &r, err,
                                 sizeof(err));
    assert(ret == 0 || ret == -EINVAL || ret == -ERANGE);
    if (ret < 0) {
        assert(err[0]); /* a refusal says why */
    } else {
        assert(tsize > 0 && r.offset < tsize && r.length <= tsize - r.offset);
        if (flags & FLAG_CONTENT_RANGE) {
            uint64_t first, last;
            reference_range(cr, &first, &last);
            assert(r.exact && r.length >= 1 && first <= last && last < tsize);
            assert(r.offset == first && r.offset + r.length - 1 == last);
        } else {
            assert(!r.exact && r.offset == 0);
        }
        if (!chunked) /* a known body length is the range's */
            assert(r.length == (flags & FLAG_CONTENT_LENGTH ? strtoull(cl, NULL, 10) : 0));
        /* The body, piece by piece, as http.c hands it to the route. */
        uint64_t received = 0;
        for (; p < end; p++) {
            size_t len = (size_t)*p * PIECE_UNIT;
            if (!upload_range_fits(&r, received, len))
                break;
            received += len;
            assert(received <= r.length && r.offset + received <= tsize);
        }
    }
    free(cr);
    free(cl);
    return 0;
}
