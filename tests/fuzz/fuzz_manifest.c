/* Fuzz target: the manifest decoder (src/repo/manifest.c).  Any input is either rejected or
 * decodes into a manifest that encodes back to exactly the same bytes (the format has one
 * encoding per manifest), and whose entry count matches its size. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "repo/repo_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct manifest m;
    if (manifest_decode(data, size, &m) < 0)
        return 0;
    assert(m.disk && *m.disk);
    assert(m.n == (m.disk_size + m.chunk_size - 1) / m.chunk_size);
    uint8_t *enc = NULL;
    size_t len = 0;
    assert(manifest_encode(&m, &enc, &len) == 0);
    assert(len == size && !memcmp(enc, data, size));
    free(enc);
    manifest_free(&m);
    return 0;
}
