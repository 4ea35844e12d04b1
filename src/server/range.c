/* HTTP Range requests (RFC 9110, section 14) for the disk download route: parsing of
 * "Range: bytes=..." into satisfiable byte ranges (clipped to the resource, overlapping or touching
 * ones coalesced, the rest kept in request order), the strong ETag of a snapshot disk and the
 * If-Range rule.
 *
 * Grammar accepted (RFC 9110 sections 14.1.1 and 5.6.1):
 *   Range       = OWS range-unit "=" range-set OWS      ; unit "bytes", case-insensitive
 *   range-set   = 1#range-spec                           ; empty list elements are tolerated
 *   range-spec  = 1*DIGIT "-" [ 1*DIGIT ]  /  "-" 1*DIGIT
 * with optional whitespace (SP, HTAB) around each list element.  Numbers of any length are
 * compared exactly and saturate when converted, so nothing wraps around; a position beyond 63 bits
 * means "to the end" as a last-pos and is unsatisfiable as a first-pos.
 */
#include "range.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/cleanup.h"
#include "core/hash.h"

/* A range before clipping and merging, with the position of its range-spec in the header. */
struct pending_range {
    uint64_t start;
    uint64_t end; /* inclusive */
    size_t order;
};

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Value of a digit string, saturated at UINT64_MAX. */
static uint64_t digits_value(const char *s, size_t len)
{
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return UINT64_MAX;
        v = v * 10 + d;
    }
    return v;
}

/* Numeric comparison of two digit strings of any length: <0, 0 or >0. */
static int digits_compare(const char *a, size_t alen, const char *b, size_t blen)
{
    while (alen > 1 && *a == '0') {
        a++;
        alen--;
    }
    while (blen > 1 && *b == '0') {
        b++;
        blen--;
    }
    if (alen != blen)
        return alen < blen ? -1 : 1;
    return memcmp(a, b, alen);
}

/* Parses one non-empty range-spec s[0..len) (already trimmed).  On success sets *satisfiable and,
 * when it is, the range clipped to size.  -ENOENT when the syntax is invalid. */
static int range_spec_parse(const char *s, size_t len, uint64_t size, bool *satisfiable,
                            struct pending_range *r)
{
    size_t i = 0;
    while (i < len && is_digit(s[i]))
        i++;
    const char *first = s;
    size_t first_len = i;
    if (i == len || s[i] != '-')
        return -ENOENT;
    const char *last = s + i + 1;
    size_t last_len = len - i - 1;
    for (size_t j = 0; j < last_len; j++)
        if (!is_digit(last[j]))
            return -ENOENT;

    if (first_len == 0) {
        /* Suffix range "-n": the last n bytes. */
        if (last_len == 0)
            return -ENOENT;
        uint64_t n = digits_value(last, last_len);
        *satisfiable = n > 0 && size > 0;
        if (*satisfiable) {
            r->start = n >= size ? 0 : size - n;
            r->end = size - 1;
        }
        return 0;
    }

    if (last_len > 0 && digits_compare(last, last_len, first, first_len) < 0)
        return -ENOENT; /* "a-b" with b < a: an invalid range-spec */
    uint64_t start = digits_value(first, first_len);
    *satisfiable = start < size && start <= (uint64_t)INT64_MAX;
    if (*satisfiable) {
        uint64_t end = last_len > 0 ? digits_value(last, last_len) : UINT64_MAX;
        if (end > (uint64_t)INT64_MAX)
            end = UINT64_MAX; /* beyond any real offset: "to the end" */
        r->start = start;
        r->end = end < size - 1 ? end : size - 1;
    }
    return 0;
}

static int pending_compare_start(const void *a, const void *b)
{
    const struct pending_range *x = a, *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

static int pending_compare_order(const void *a, const void *b)
{
    const struct pending_range *x = a, *y = b;
    return x->order < y->order ? -1 : x->order > y->order;
}

int http_range_parse(const char *header, uint64_t size, byte_range_list *out)
{
    static const char unit[] = "bytes";
    struct pending_range ranges[HTTP_RANGE_MAX];
    size_t nspecs = 0, nranges = 0;

    byte_range_list_clear(out);
    if (!header)
        return -ENOENT;

    const char *p = header;
    while (is_ows(*p))
        p++;
    if (strncasecmp(p, unit, sizeof(unit) - 1) != 0 || p[sizeof(unit) - 1] != '=')
        return -ENOENT;
    p += sizeof(unit);

    /* Validate the whole set first: a syntax error anywhere means the header is ignored, even
     * when there are too many ranges or none is satisfiable. */
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *elem_end = comma ? comma : p + strlen(p);
        const char *b = p, *e = elem_end;
        while (b < e && is_ows(*b))
            b++;
        while (e > b && is_ows(e[-1]))
            e--;
        if (e > b) {
            bool satisfiable = false;
            struct pending_range r = {0};
            int ret = range_spec_parse(b, (size_t)(e - b), size, &satisfiable, &r);
            if (ret < 0)
                return ret;
            if (satisfiable && nspecs < HTTP_RANGE_MAX) {
                r.order = nspecs;
                ranges[nranges++] = r;
            }
            nspecs++;
        }
        if (!comma)
            break;
        p = comma + 1;
    }

    if (nspecs == 0)
        return -ENOENT; /* "bytes=" or only empty list elements */
    if (nspecs > HTTP_RANGE_MAX || nranges == 0)
        return -ERANGE;

    /* Coalesce overlapping or touching ranges in start order; a merged range keeps the earliest
     * position of its members, and the result goes back to request order. */
    qsort(ranges, nranges, sizeof(ranges[0]), pending_compare_start);
    size_t n = 0;
    for (size_t i = 0; i < nranges; i++) {
        struct pending_range *last = n ? &ranges[n - 1] : NULL;
        if (last && (ranges[i].start <= last->end || ranges[i].start - last->end == 1)) {
            if (ranges[i].end > last->end)
                last->end = ranges[i].end;
            if (ranges[i].order < last->order)
                last->order = ranges[i].order;
        } else {
            ranges[n++] = ranges[i];
        }
    }
    qsort(ranges, n, sizeof(ranges[0]), pending_compare_order);

    int r = byte_range_list_reserve(out, n);
    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        struct byte_range br = {.start = ranges[i].start, .end = ranges[i].end};
        r = byte_range_list_append(out, br);
        if (r < 0) {
            byte_range_list_clear(out);
            return r;
        }
    }
    return 0;
}

void http_etag(const char *snapshot_id, const char *disk, uint64_t size, char *out)
{
    char size_str[24];
    uint8_t digest[HASH_SIZE];
    char hex[2 * HASH_SIZE + 1];

    if (!snapshot_id)
        snapshot_id = "";
    if (!disk)
        disk = "";
    out[0] = '\0'; /* on failure: an empty tag, which never matches an If-Range */

    int slen = snprintf(size_str, sizeof(size_str), "%" PRIu64, size);
    size_t id_len = strlen(snapshot_id), disk_len = strlen(disk);
    size_t len = id_len + 1 + disk_len + 1 + (size_t)slen;
    CLEANUP_FREE char *buf = malloc(len);
    if (!buf)
        return;
    memcpy(buf, snapshot_id, id_len + 1);
    memcpy(buf + id_len + 1, disk, disk_len + 1);
    memcpy(buf + id_len + 1 + disk_len + 1, size_str, (size_t)slen);
    if (hash_sha256(buf, len, digest) < 0)
        return;
    hash_to_hex(digest, hex);
    snprintf(out, HTTP_ETAG_MAX, "\"%.32s\"", hex);
}

bool http_if_range_matches(const char *if_range, const char *etag)
{
    if (!if_range)
        return true;
    /* Only a strong tag (not "W/...", not a date) can match, compared byte for byte; the field's
     * surrounding whitespace is not part of the value. */
    if (!etag || etag[0] != '"')
        return false;
    while (is_ows(*if_range))
        if_range++;
    size_t len = strlen(if_range);
    while (len > 0 && is_ows(if_range[len - 1]))
        len--;
    return len == strlen(etag) && len >= 2 && memcmp(if_range, etag, len) == 0;
}

/* The q parameter of one media range's parameters (";q=0.5;x=y"): 1 when absent; 0 when it is
 * "0", "0.", "0.0" ... (only zero matters: an excluded type). */
static bool params_q_zero(const char *p, const char *end)
{
    while (p < end) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        if (!semi)
            return false;
        p = semi + 1;
        while (p < end && is_ows(*p))
            p++;
        if (end - p >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=') {
            p += 2;
            if (p >= end || *p != '0')
                return false;
            p++;
            if (p < end && *p == '.')
                for (p++; p < end && *p == '0'; p++)
                    ;
            while (p < end && is_ows(*p))
                p++;
            return p >= end || *p == ';';
        }
    }
    return false;
}

bool http_accepts(const char *accept, const char *media_type)
{
    if (!accept)
        return false;
    size_t tlen = strlen(media_type);
    const char *p = accept;
    while (*p) {
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        const char *s = p;
        while (s < end && is_ows(*s))
            s++;
        const char *e = s;
        while (e < end && *e != ';' && !is_ows(*e))
            e++;
        if ((size_t)(e - s) == tlen && !strncasecmp(s, media_type, tlen))
            return !params_q_zero(e, end);
        p = *end ? end + 1 : end;
    }
    return false;
}
