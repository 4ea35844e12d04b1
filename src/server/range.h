/* HTTP Range requests (RFC 9110, section 14): parsing "Range: bytes=..." against a resource
 * size, and the ETag / If-Range rules of the disk download route. */
#ifndef VMEXPORT_SERVER_RANGE_H
#define VMEXPORT_SERVER_RANGE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/vector.h"

/* At most this many ranges are served in one multipart response (more: 416). */
#define HTTP_RANGE_MAX 64

struct byte_range {
    uint64_t start;
    uint64_t end; /* inclusive, as in Content-Range */
};
DEFINE_VECTOR_TYPE(byte_range_list, struct byte_range);

/* Parse header (the value of Range) for a resource of size bytes into out: satisfiable ranges
 * clipped to the size, in request order, overlapping or touching ones merged when sorted.
 * Returns:
 *   0        out holds >= 1 range;
 *  -ENOENT   not a valid "bytes=" range set: the header must be ignored (serve 200);
 *  -ERANGE   valid syntax but nothing satisfiable, or more than HTTP_RANGE_MAX ranges (416).
 * Handles "a-b", "a-" (open-ended), "-n" (suffix), whitespace around commas, and values that do
 * not fit 63 bits (treated as "to the end" for end positions, unsatisfiable for starts). */
int http_range_parse(const char *header, uint64_t size, byte_range_list *out);

/* Strong entity tag for immutable snapshot data: "\"<hex>\"" from the identifying strings and
 * the size.  out must hold HTTP_ETAG_MAX bytes. */
#define HTTP_ETAG_MAX 48
void http_etag(const char *snapshot_id, const char *disk, uint64_t size, char *out);

/* Should the Range header be honoured given this If-Range value (NULL: absent)?  True when
 * absent or when it is exactly the strong ETag; false for any date or other tag. */
bool http_if_range_matches(const char *if_range, const char *etag);

/* Whether an Accept header (NULL: none) names media_type exactly (case-insensitive), without
 * q=0.  Wildcard media ranges do not count: the caller offers a type only to clients that ask
 * for it by name. */
bool http_accepts(const char *accept, const char *media_type);

#endif
