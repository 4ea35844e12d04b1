/* SHA-256 of buffers (OpenSSL libcrypto), and a check for all-zero buffers. */
#ifndef VMEXPORT_CORE_HASH_H
#define VMEXPORT_CORE_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HASH_SIZE 32 /* SHA-256 digest bytes */

int hash_sha256(const void *data, size_t len, uint8_t out[HASH_SIZE]);

/* Digest of len zero bytes, computed once per length and cached for the common one. */
int hash_sha256_zeros(size_t len, uint8_t out[HASH_SIZE]);

bool buf_is_zero(const void *data, size_t len);

/* Lower-case hex of a digest into out (2 * HASH_SIZE + 1 bytes). */
void hash_to_hex(const uint8_t digest[HASH_SIZE], char *out);

#endif
