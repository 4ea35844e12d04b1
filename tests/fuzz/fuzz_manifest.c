/* Fuzz target: the manifest decoder (src/repo/manifest.c).  Any input is either rejected or
 * decodes into a manifest that encodes back to exactly the same bytes (the format has one
 * encoding per manifest), and whose entries (the stored chunks) are strictly increasing chunk
 * indexes inside the disk. */
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
    for (size_t k = 0; k < m.n_entries; k++) {
        assert(m.e[k].idx < manifest_chunks(&m));
        assert(k == 0 || m.e[k - 1].idx < m.e[k].idx);
    }
    uint8_t *enc = NULL;
    size_t len = 0;
    assert(manifest_encode(&m, &enc, &len) == 0);
    assert(len == size && !memcmp(enc, data, size));
    free(enc);
    manifest_free(&m);
    return 0;
}
