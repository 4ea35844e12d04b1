/* Fuzz target: the container format of chunks and metadata (src/repo/container.c), for a plain
 * and an encrypted repository.  The input is both a container to open (rejected, or opened
 * into at most max_plain bytes) and plain data that must seal and open back to itself. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "repo/repo_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_PLAIN (1u << 20)

static void one(const struct repo *r, const uint8_t *data, size_t size)
{
    static uint8_t out[MAX_PLAIN];
    uint8_t *file = malloc(size ? size : 1);
    assert(file);
    memcpy(file, data, size);
    size_t len = 0;
    int ret = container_unseal(r, "fuzz", file, size, MAX_PLAIN, out, sizeof(out), &len);
    assert(ret == 0 || ret == -EBADMSG || ret == -ENOBUFS || ret == -ENOMEM);
    if (ret == 0)
        assert(len <= MAX_PLAIN);
    memcpy(file, data, size);
    ret = container_unseal_data(r, "fuzz", file, size, MAX_PLAIN, out, sizeof(out), &len);
    assert(ret == 0 || ret == -EBADMSG || ret == -ENOBUFS || ret == -ENOMEM);
    free(file);

    if (size > MAX_PLAIN)
        return;
    uint8_t *sealed = NULL;
    size_t slen = 0;
    assert(container_seal(r, "fuzz", data, size, &sealed, &slen) == 0);
    assert(slen <= size + CONTAINER_MAX_OVERHEAD);
    assert(container_unseal(r, "fuzz", sealed, slen, MAX_PLAIN, out, sizeof(out), &len) == 0);
    assert(len == size && !memcmp(out, data, size));
    free(sealed);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct repo plain = {.zstd_level = 1};
    static struct repo enc = {.zstd_level = 1, .encrypted = true};
    if (!enc.data_key[0]) {
        memset(enc.data_key, 0x42, sizeof(enc.data_key));
        memset(enc.id_key, 0x24, sizeof(enc.id_key));
    }
    one(&plain, data, size);
    one(&enc, data, size);
    return 0;
}
