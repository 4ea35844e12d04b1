/* Block-hash sidecars: a digest per fixed-size block of a file, written while a copy-mode
 * snapshot is taken, so that a later diff against that snapshot reads only the newer file.
 *
 * The digest is XXH3-128 by default (libxxhash: about ten times the speed of SHA-256 with
 * SHA-NI, so a copy is bound by its I/O, not by hashing), or SHA-256 where block contents may
 * be crafted to collide on purpose.  A sidecar names its algorithm; readers take both.
 *
 * The sidecar of DATA lives at DATA + BLOCKHASH_SUFFIX.  It records the identity of DATA (inode,
 * size, mtime) at the time it was written; a sidecar whose file changed since is stale and
 * ignored.  Each digest covers exactly block_size bytes, the last block zero-padded, so a block
 * past the end of a file hashes like a block of zeros.  Format: docs/repository-format.md.
 */
#ifndef VMEXPORT_FS_BLOCKHASH_H
#define VMEXPORT_FS_BLOCKHASH_H

#include <stdint.h>
#include <stdio.h>

#include "core/hash.h"

#define BLOCKHASH_SUFFIX ".vxhash"
/* A sidecar is written as its path + BLOCKHASH_TMP_SUFFIX + six random characters. */
#define BLOCKHASH_TMP_SUFFIX     ".tmp."
#define BLOCKHASH_BLOCK_SIZE     (64u * 1024) /* 64 KiB: 0.05% of the data in digests */
#define BLOCKHASH_MAX_BLOCK_SIZE (16u << 20)  /* readers refuse larger blocks */
#define BLOCKHASH_MAX_DIGEST     32           /* bytes of the longest digest (SHA-256) */

enum blockhash_algo {
    BLOCKHASH_SHA256 = 1, /* 32 bytes; sidecar version 1 */
    BLOCKHASH_XXH128 = 2, /* 16 bytes, XXH3-128 seed 0, canonical (big-endian); version 2 */
};
#define BLOCKHASH_DEFAULT BLOCKHASH_XXH128

/* "sha256" / "xxh128"; parse returns -EINVAL for anything else. */
const char *blockhash_algo_name(enum blockhash_algo algo);
int blockhash_algo_parse(const char *s, enum blockhash_algo *out);
size_t blockhash_digest_size(enum blockhash_algo algo);
/* Digest of len bytes (digest_size bytes of out are set). */
int blockhash_digest(enum blockhash_algo algo, const void *data, size_t len,
                     uint8_t out[BLOCKHASH_MAX_DIGEST]);
/* Digest of len zero bytes. */
int blockhash_zero_digest(enum blockhash_algo algo, size_t len, uint8_t out[BLOCKHASH_MAX_DIGEST]);

/* Sidecars hold only digests, but of the daemon's private snapshots: owner only. */
#define BLOCKHASH_FILE_MODE 0600

/* data_path + BLOCKHASH_SUFFIX (free()), or NULL when out of memory. */
char *blockhash_sidecar_path(const char *data_path);

struct blockhash_writer {
    FILE *f;
    int dirfd;      /* the directory of the data file */
    char *tmp_name; /* in dirfd: written, then renamed to name */
    char *name;
    enum blockhash_algo algo;
    size_t digest_size;
    uint32_t block_size;
    uint64_t nblocks;
};

/* Start a sidecar for the file that will be at data_path. */
int blockhash_writer_open(struct blockhash_writer *w, const char *data_path, uint32_t block_size,
                          enum blockhash_algo algo);
/* The same for the file that will be data_name in the directory dirfd (a single component; the
 * sidecar is created without following symlinks). */
int blockhash_writer_openat(struct blockhash_writer *w, int dirfd, const char *data_name,
                            uint32_t block_size, enum blockhash_algo algo);
/* Append the next block's digest (the writer's digest size). */
int blockhash_writer_add(struct blockhash_writer *w, const uint8_t *digest);
/* Record data_fd's identity, fsync and move the sidecar into place. */
int blockhash_writer_commit(struct blockhash_writer *w, int data_fd);
/* Drop an uncommitted sidecar (no-op after commit). */
void blockhash_writer_abort(struct blockhash_writer *w);

struct blockhash_reader {
    FILE *f;
    enum blockhash_algo algo;
    size_t digest_size;
    uint32_t block_size;
    uint64_t nblocks;
    uint64_t next;                             /* index of the digest the stream is positioned at */
    uint8_t zero_digest[BLOCKHASH_MAX_DIGEST]; /* of a block of zeros */
};

/* Open the sidecar of data_path and check it against data_fd.  -ENOENT: none; -ESTALE: the file
 * changed since; -EBADMSG: not a valid sidecar. */
int blockhash_reader_open(struct blockhash_reader *r, const char *data_path, int data_fd);
/* The same with the sidecar already open (sidecar_fd is the reader's, even on failure). */
int blockhash_reader_open_fd(struct blockhash_reader *r, int sidecar_fd, int data_fd);
/* Digest of block i (digest_size bytes); blocks past the recorded ones read as zero blocks. */
int blockhash_reader_get(struct blockhash_reader *r, uint64_t i, uint8_t out[BLOCKHASH_MAX_DIGEST]);
void blockhash_reader_close(struct blockhash_reader *r);

/* Remove the sidecar of data_path, or of data_name in dirfd, if there is one. */
int blockhash_remove(const char *data_path);
int blockhash_remove_at(int dirfd, const char *data_name);

#endif
