/* Fuzz target: the Range header parser and If-Range matching (src/server/range.c).  The first
 * 8 bytes are the resource size, the rest the header (also tried as If-Range and Accept).  A parsed
 * range set is never empty, holds at most HTTP_RANGE_MAX ranges, and every range lies inside the
 * resource. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/range.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t rsize = 0;
    if (size >= sizeof(rsize)) {
        memcpy(&rsize, data, sizeof(rsize));
        data += sizeof(rsize);
        size -= sizeof(rsize);
    }
    rsize >>= (rsize & 63); /* small sizes too */
    char *header = malloc(size + 1);
    if (!header)
        return 0;
    memcpy(header, data, size);
    header[size] = '\0';

    byte_range_list ranges = VECTOR_INIT;
    int r = http_range_parse(header, rsize, &ranges);
    assert(r == 0 || r == -ENOENT || r == -ERANGE);
    if (r == 0) {
        assert(ranges.len >= 1 && ranges.len <= HTTP_RANGE_MAX);
        for (size_t i = 0; i < ranges.len; i++)
            assert(ranges.ptr[i].start <= ranges.ptr[i].end && ranges.ptr[i].end < rsize);
    }
    byte_range_list_reset(&ranges);

    char etag[HTTP_ETAG_MAX];
    http_etag("snap", "disk", rsize, etag);
    assert(http_if_range_matches(etag, etag));
    (void)http_if_range_matches(header, etag);
    (void)http_accepts(header, "application/vnd.vmexport.sparse");
    free(header);
    return 0;
}
