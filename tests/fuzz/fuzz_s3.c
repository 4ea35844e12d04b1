/* Fuzz target: the S3 store's parsers of the service's answers (src/repo/store_s3.c): the body
 * read as an error answer, a DeleteObjects result, an Object Lock configuration and a
 * ListObjectsV2 page.  The first byte is the length of the listed prefix (0..15).  A page's
 * entries never have an empty name; anything else is not a page (-EBADMSG) or out of memory. */
#include <assert.h>
#include <errno.h>
#include <stdint.h>

#include "core/log.h"
#include "repo/store_s3.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    log_set_level(LOG_LEVEL_ERROR); /* a DeleteObjects result's errors are warnings */
    size_t plen = 0;
    if (size) {
        plen = data[0] & 15;
        data++;
        size--;
    }
    int r = store_s3_parse_answer(data, size, plen);
    assert(r >= 0 || r == -EBADMSG || r == -ENOMEM);
    return 0;
}
