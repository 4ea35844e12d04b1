/* The range an upload PUT writes; see upload_range.h.
 *
 * Every number is checked against the transfer's size before anything is computed from it, so
 * no combination of values (reversed, at UINT64_MAX, longer than the disk) yields a range that
 * wraps around or reaches past the disk.
 */
#include "server/upload_range.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <strings.h>

#define CONTENT_RANGE_UNIT "bytes "
#define UNKNOWN_TOTAL      '*'

/* An unsigned decimal with no sign, space or overflow; advances *s. */
static bool parse_u64(const char **s, uint64_t *out)
{
    const char *p = *s;
    uint64_t v = 0;
    if (*p < '0' || *p > '9')
        return false;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *s = p;
    *out = v;
    return true;
}

/* "bytes FIRST-LAST/TOTAL", TOTAL a number or "*" (then *has_total false).  Syntax only. */
static bool parse_content_range(const char *v, uint64_t *first, uint64_t *last, uint64_t *total,
                                bool *has_total)
{
    if (strncasecmp(v, CONTENT_RANGE_UNIT, sizeof(CONTENT_RANGE_UNIT) - 1))
        return false;
    const char *p = v + sizeof(CONTENT_RANGE_UNIT) - 1;
    while (*p == ' ')
        p++;
    if (!parse_u64(&p, first) || *p++ != '-' || !parse_u64(&p, last) || *p++ != '/')
        return false;
    *has_total = p[0] != UNKNOWN_TOTAL;
    if (!*has_total)
        return p[1] == '\0';
    return parse_u64(&p, total) && *p == '\0';
}

int upload_range_parse(const char *content_range, const char *content_length, bool chunked,
                       uint64_t size, struct upload_range *out, char *err, size_t errlen)
{
    uint64_t body_len = 0;
    const char *cl = content_length;
    if (cl && (!parse_u64(&cl, &body_len) || *cl != '\0')) {
        snprintf(err, errlen, "malformed Content-Length");
        return -EINVAL;
    }
    bool known = !chunked; /* without Content-Length nor chunks, the body is empty */
    if (size == 0) {
        snprintf(err, errlen, "the transfer has no bytes to write");
        return -ERANGE;
    }

    if (!content_range) {
        /* imageio: without Content-Range, the body goes at offset 0. */
        if (known && body_len > size) {
            snprintf(err, errlen,
                     "the body of %" PRIu64 " bytes is longer than the disk's %" PRIu64, body_len,
                     size);
            return -ERANGE;
        }
        *out = (struct upload_range){.offset = 0, .length = known ? body_len : size};
        return 0;
    }

    uint64_t first, last, total = 0;
    bool has_total;
    if (!parse_content_range(content_range, &first, &last, &total, &has_total)) {
        snprintf(err, errlen,
                 "Content-Range must be 'bytes FIRST-LAST/SIZE' or 'bytes FIRST-LAST/*'");
        return -EINVAL;
    }
    if (first > last) {
        snprintf(err, errlen, "Content-Range bytes %" PRIu64 "-%" PRIu64 " ends before it starts",
                 first, last);
        return -EINVAL;
    }
    if (has_total && total != size) {
        snprintf(err, errlen, "Content-Range is for %" PRIu64 " bytes; the disk has %" PRIu64,
                 total, size);
        return -ERANGE;
    }
    if (last >= size) {
        snprintf(err, errlen, "bytes %" PRIu64 "-%" PRIu64 " end beyond the disk's %" PRIu64, first,
                 last, size);
        return -ERANGE;
    }
    /* first <= last < size: no overflow below. */
    uint64_t length = last - first + 1;
    if (known && body_len > length) {
        snprintf(err, errlen, "the body of %" PRIu64 " bytes is longer than its range of %" PRIu64,
                 body_len, length);
        return -ERANGE;
    }
    if (known && body_len < length) {
        snprintf(err, errlen, "the body of %" PRIu64 " bytes is shorter than its range of %" PRIu64,
                 body_len, length);
        return -EINVAL;
    }
    *out = (struct upload_range){.offset = first, .length = length, .exact = true};
    return 0;
}

bool upload_range_fits(const struct upload_range *r, uint64_t received, size_t len)
{
    return received <= r->length && len <= r->length - received;
}
