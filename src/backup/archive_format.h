/* What the archive exporter (archive_export.c) and importer (archive_import.c) share: the member
 * names and version of the vmexport archive format (docs/archive-format.md) and a streaming
 * SHA-256 of a member's content. */
#ifndef VMEXPORT_BACKUP_ARCHIVE_FORMAT_H
#define VMEXPORT_BACKUP_ARCHIVE_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/hash.h"

/* vm.json identification. */
#define ARCHIVE_FORMAT_NAME    "vmexport-archive"
#define ARCHIVE_FORMAT_VERSION 1
#define ARCHIVE_VM_JSON        "vm.json"
#define ARCHIVE_TAR_MANIFEST   "SHA256SUMS"
#define ARCHIVE_OVF_SUFFIX     ".ovf"
#define ARCHIVE_MF_SUFFIX      ".mf"
/* Lower-case hex digits of a SHA-256 digest in a manifest line. */
#define ARCHIVE_HEX_DIGEST_LEN (2 * HASH_SIZE)
/* Seconds the engines wait for the repository lock (export) or the VM lock (import) when the
 * caller gives 0. */
#define ARCHIVE_LOCK_TIMEOUT 600

/* Streaming SHA-256 of a member's content (EVP context). */
struct member_digest {
    void *ctx;
};
int member_digest_begin(struct member_digest *d);
int member_digest_update(struct member_digest *d, const void *data, size_t len);
/* Final digest; frees the context (also on failure). */
int member_digest_end(struct member_digest *d, uint8_t out[HASH_SIZE]);
/* Free the context without a digest; harmless after end() or on a zeroed struct. */
void member_digest_discard(struct member_digest *d);

bool archive_ends_with(const char *s, const char *suffix);

#endif
