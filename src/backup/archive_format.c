/* The streaming member digest and name helpers the archive exporter and importer share; see
 * archive_format.h. */
#include "backup/archive_format.h"

#include <errno.h>
#include <openssl/evp.h>
#include <string.h>

int member_digest_begin(struct member_digest *d)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        d->ctx = NULL;
        return -ENOMEM;
    }
    d->ctx = ctx;
    return 0;
}

int member_digest_update(struct member_digest *d, const void *data, size_t len)
{
    return EVP_DigestUpdate(d->ctx, data, len) == 1 ? 0 : -EIO;
}

int member_digest_end(struct member_digest *d, uint8_t out[HASH_SIZE])
{
    unsigned n = 0;
    int r = EVP_DigestFinal_ex(d->ctx, out, &n) == 1 && n == HASH_SIZE ? 0 : -EIO;
    member_digest_discard(d);
    return r;
}

void member_digest_discard(struct member_digest *d)
{
    EVP_MD_CTX_free(d->ctx);
    d->ctx = NULL;
}

bool archive_ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}
