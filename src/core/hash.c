/* Hashing helpers over OpenSSL's EVP interface (uses SHA-NI where the CPU has it). */
#include "hash.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "core/hex.h"

static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    /* Fetching once avoids a provider lookup on every call. */
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

int hash_sha256(const void *data, size_t len, uint8_t out[HASH_SIZE])
{
    unsigned int n = 0;
    pthread_once(&sha256_once, sha256_fetch);
    if (!sha256_md)
        return -ENOSYS;
    if (EVP_Digest(data, len, out, &n, sha256_md, NULL) != 1 || n != HASH_SIZE)
        return -EIO;
    return 0;
}

int hash_sha256_zeros(size_t len, uint8_t out[HASH_SIZE])
{
    static __thread size_t cached_len;
    static __thread uint8_t cached[HASH_SIZE];
    static __thread bool have;

    if (have && cached_len == len) {
        memcpy(out, cached, HASH_SIZE);
        return 0;
    }
    void *zeros = calloc(1, len ? len : 1);
    if (!zeros)
        return -ENOMEM;
    int r = hash_sha256(zeros, len, out);
    free(zeros);
    if (r < 0)
        return r;
    memcpy(cached, out, HASH_SIZE);
    cached_len = len;
    have = true;
    return 0;
}

bool buf_is_zero(const void *data, size_t len)
{
    const unsigned char *p = data;
    /* Check a 16-byte head by hand, then compare the buffer with itself shifted by 16: if the
     * head is zero and every byte equals the one 16 before it, all bytes are zero. */
    size_t head = len < 16 ? len : 16;
    for (size_t i = 0; i < head; i++)
        if (p[i])
            return false;
    return len <= 16 || memcmp(p, p + 16, len - 16) == 0;
}

void hash_to_hex(const uint8_t digest[HASH_SIZE], char *out)
{
    hex_encode(digest, HASH_SIZE, out);
}
