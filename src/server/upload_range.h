/* Which bytes of a transfer an upload PUT may write, from its Content-Range, Content-Length and
 * Transfer-Encoding headers, decided completely before a byte of the body is written; and the
 * check of each piece of the body as it arrives.  Pure functions, fuzzed by
 * tests/fuzz/fuzz_upload_range.c. */
#ifndef VMEXPORT_SERVER_UPLOAD_RANGE_H
#define VMEXPORT_SERVER_UPLOAD_RANGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The range a PUT writes: [offset, offset + length), always inside the transfer. */
struct upload_range {
    uint64_t offset;
    uint64_t length;
    bool exact; /* a Content-Range was given: the body must fill the range */
};

/* The range a PUT with these headers (NULL: absent) writes into a transfer of size bytes (at
 * least 1).  A Content-Range "bytes FIRST-LAST/SIZE" (SIZE a number or an asterisk) needs
 * FIRST <= LAST < size, and a numeric SIZE equal to size; without one the body goes at offset 0.
 * A body whose length is known (Content-Length, or no body: not chunked) must be as long as
 * the range.  Returns 0 and *out; -EINVAL for a malformed header, a reversed range or a body
 * shorter than its range (answered 400); -ERANGE for a range that ends beyond the transfer, a
 * SIZE that is not the transfer's, or a body longer than its range (416).  err says why. */
int upload_range_parse(const char *content_range, const char *content_length, bool chunked,
                       uint64_t size, struct upload_range *out, char *err, size_t errlen);

/* Whether a piece of len bytes of the body, after received bytes of it, stays in the range. */
bool upload_range_fits(const struct upload_range *r, uint64_t received, size_t len);

#endif
