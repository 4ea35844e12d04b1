/* The backup repository: content-addressed chunks and per-backup manifests in a directory.
 *
 *   PATH/config             repository parameters (JSON): format version, chunk size, cipher,
 *                           scrypt parameters and the wrapped data key when encrypted
 *   PATH/chunks/ab/<id>     one chunk: zstd-compressed, optionally AES-256-GCM encrypted
 *   PATH/backups/<vm>/<backup-id>/<n>.manifest   offset -> chunk id or zero, per disk
 *   PATH/backups/<vm>/<backup-id>/backup.json     the backup's metadata; written last: a
 *                           backup exists only once this file does
 *   PATH/locks/             flock files: one per VM (backup = exclusive, restore = shared)
 *                           and one for the whole repository (gc/prune = exclusive)
 *
 * Every file is written to a temporary name, fsynced and renamed.  The format is documented in
 * docs/repository-format.md; a repository of another version is refused.
 */
#ifndef VMEXPORT_REPO_REPO_H
#define VMEXPORT_REPO_REPO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/hash.h"

#define REPO_FORMAT_VERSION     1
#define REPO_DEFAULT_CHUNK_SIZE (4u << 20) /* 4 MiB */
#define REPO_MIN_CHUNK_SIZE     (64u << 10)
#define REPO_MAX_CHUNK_SIZE     (64u << 20)

/* A chunk ID: SHA-256 of the plain data, or HMAC-SHA-256 under the repository's ID key when
 * encrypted (so chunk names reveal nothing about the content). */
struct chunk_id {
    uint8_t b[HASH_SIZE];
};

struct repo;

struct repo_init_options {
    uint32_t chunk_size;    /* 0: default */
    const char *passphrase; /* NULL: not encrypted */
    int zstd_level;         /* 0: default (3) */
};

/* Create a new repository at path (must not exist or be an empty directory). */
int repo_init(const char *path, const struct repo_init_options *opt, char *err, size_t errlen);

/* Open an existing repository.  passphrase is needed when it is encrypted (-EACCES when wrong or
 * missing; err says which). */
int repo_open(const char *path, const char *passphrase, struct repo **out, char *err,
              size_t errlen);
void repo_close(struct repo *r);

uint32_t repo_chunk_size(const struct repo *r);
bool repo_encrypted(const struct repo *r);
const char *repo_path(const struct repo *r);

/* ID of plain data (keyed when encrypted). */
void repo_chunk_id(const struct repo *r, const void *data, size_t len, struct chunk_id *id);

/* Store a chunk (compress, encrypt, temp + fsync + rename).  *stored = false when it existed.
 * Thread-safe. */
int repo_chunk_put(struct repo *r, const struct chunk_id *id, const void *data, size_t len,
                   bool *stored, uint64_t *bytes_written);
bool repo_chunk_exists(struct repo *r, const struct chunk_id *id);
/* Read, decrypt, decompress and check a chunk into buf (capacity cap); *len its size.
 * -EBADMSG when damaged (bad tag, bad frame, hash mismatch), -ENOENT when missing. */
int repo_chunk_get(struct repo *r, const struct chunk_id *id, void *buf, size_t cap, size_t *len);

void chunk_id_to_hex(const struct chunk_id *id, char out[2 * HASH_SIZE + 1]);
int chunk_id_from_hex(const char *hex, struct chunk_id *id);

#endif
