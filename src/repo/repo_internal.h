/* Private to src/repo: the repository handle and the helpers its files share (file I/O, the
 * container format, locks, names).  Not for use outside src/repo; see repo.h for the API and
 * docs/repository-format.md for the on-disk format.
 */
#ifndef VMEXPORT_REPO_REPO_INTERNAL_H
#define VMEXPORT_REPO_REPO_INTERNAL_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "repo.h"

/* ---- layout ---- */

#define REPO_CONFIG_NAME "config"
#define REPO_CHUNKS_DIR  "chunks"
#define REPO_BACKUPS_DIR "backups"
#define REPO_LOCKS_DIR   "locks"
#define REPO_LOCK_NAME   "repo.lock"
#define REPO_BACKUP_JSON "backup.json"
#define REPO_TMP_MARK    ".tmp." /* in every temporary file name */
#define REPO_FILE_MODE   0600
#define REPO_DIR_MODE    0700

#define REPO_KEY_SIZE 32 /* AES-256 and HMAC-SHA-256 keys */
#define REPO_ID_BYTES 16 /* random bytes of the repository ID (hex in the config) */
/* zstd level of new repositories: level 1 compresses VM data nearly as well as 3 (base64 text:
 * the same 1.33x) at twice the speed, and compression is a backup's largest CPU cost. */
#define REPO_DEFAULT_ZSTD 1

/* Plain size limit of a metadata container (manifest, backup.json): far above any real one, low
 * enough that a damaged length cannot ask for absurd memory. */
#define REPO_MAX_META_SIZE ((uint64_t)1 << 34)

/* Backup IDs: "YYYYMMDDTHHMMSSZ-" and 6 hex digits. */
#define BACKUP_ID_TIME_LEN   16
#define BACKUP_ID_RAND_BYTES 3
#define BACKUP_ID_LEN        (BACKUP_ID_TIME_LEN + 1 + 2 * BACKUP_ID_RAND_BYTES)

struct repo {
    char *path;
    int dirfd; /* the repository's root directory */
    uint32_t chunk_size;
    int zstd_level;
    unsigned format_version; /* REPO_MIN_FORMAT_VERSION .. REPO_FORMAT_VERSION */
    bool encrypted;
    uint8_t data_key[REPO_KEY_SIZE]; /* encrypts containers */
    uint8_t id_key[REPO_KEY_SIZE];   /* HMAC key of chunk IDs */
    char id[2 * REPO_ID_BYTES + 1];  /* the config's "id" (hex; older configs: any, truncated) */
    /* An encrypted repository whose config carries no MAC (written before configs had one):
     * read, but not written to until repo_config_seal() adds the MAC. */
    bool config_unsealed;
    void *config; /* the parsed config (json_t), kept for repo_config_seal() */

    /* repo_lock() state: one repository-wide lock per handle, counted. */
    pthread_mutex_t lock_mutex;
    int lock_fd;
    unsigned lock_depth;
    bool lock_exclusive;
};

/* Format a message into err (when err is not NULL). */
void repo_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A power of two within REPO_MIN_CHUNK_SIZE .. REPO_MAX_CHUNK_SIZE (repo.c). */
bool repo_chunk_size_valid(uint64_t n);
/* 0 when the repository may be written to; -EPERM and a message in err for an encrypted
 * repository whose config carries no MAC yet (repo.c).  Every writer checks this first. */
int repo_check_writable(const struct repo *r, char *err, size_t errlen);

/* ---- fileio.c ---- */

/* -errno of a failed write, with EDQUOT folded into -ENOSPC. */
int repo_write_errno(int e);
int repo_random_bytes(void *buf, size_t len);
/* 2 * nbytes hex digits of random data and a NUL into out. */
int repo_random_hex(char *out, size_t nbytes);
bool repo_is_tmp_name(const char *name);

/* Write a file atomically: a temporary name in dirfd, write, fsync, rename over name (replace)
 * or only if name does not exist yet (!replace: *created false when it did), fsync dirfd.  On
 * any failure the temporary file is removed. */
int repo_write_file(int dirfd, const char *name, const void *data, size_t len, bool replace,
                    bool *created);
/* The two halves of repo_write_file: write data to a new temporary name in dirfd (returned
 * in tmp; fsynced when sync), removed again on failure; then move it into place (the temporary
 * file is removed on failure, and when !replace finds name existing: *created false).  Neither
 * fsyncs dirfd. */
int repo_write_tmp(int dirfd, const char *name, const void *data, size_t len, bool sync,
                   char tmp[NAME_MAX + 1]);
int repo_rename_tmp(int dirfd, const char *tmp, const char *name, bool replace, bool *created);
/* repo_write_tmp (no fsync) of a buffer from container_seal, bypassing the page cache where
 * the filesystem allows O_DIRECT (the CONTAINER_ALIGN multiples; the tail is written through
 * it): a chunk is written once and not read back soon, so caching it only costs a copy. */
int repo_write_tmp_direct(int dirfd, const char *name, const uint8_t *data, size_t len,
                          char tmp[NAME_MAX + 1]);
/* Read a whole regular file (at most max bytes, else -EBADMSG) into a new buffer. */
int repo_read_file(int dirfd, const char *name, uint64_t max, uint8_t **data, size_t *len);
/* Read the whole file name (at most max bytes, else -EBADMSG) into buf (cap bytes,
 * CONTAINER_ALIGN-aligned; -ENOBUFS when the file rounded up to CONTAINER_ALIGN does not fit),
 * bypassing the page cache (O_DIRECT) where the file system allows: a chunk is read once, so
 * caching it costs a copy and the host's memory; where the cache holds newer data the kernel
 * writes it first.  0 or a negative errno; *len is the file's size. */
int repo_read_file_direct(int dirfd, const char *name, uint64_t max, uint8_t *buf, size_t cap,
                          size_t *len);
/* mkdirat with the repository mode; an existing directory is fine.  A new one is made durable
 * by fsyncing dirfd. */
int repo_mkdir(int dirfd, const char *name);
int repo_open_dir(int dirfd, const char *name, int *out);
/* Remove every non-directory entry of directory name in parentfd, then the directory itself;
 * *bytes (may be NULL) accumulates the sizes removed. */
int repo_remove_dir(int parentfd, const char *name, uint64_t *bytes);

/* Directory-name form of a VM ID: bytes outside [A-Za-z0-9._-] and a leading '.' become %XX;
 * a name longer than the limit keeps a prefix and gets "~" and the SHA-256 of the ID. */
int repo_vm_dir_name(const char *vm_id, char **out);

/* Strict base64 (canonical, padded). */
char *repo_b64_encode(const void *data, size_t len);
int repo_b64_decode(const char *s, uint8_t **out, size_t *len);

/* ---- container.c ---- */

#define CONTAINER_HEADER_SIZE 16
#define CONTAINER_NONCE_SIZE  12
#define CONTAINER_TAG_SIZE    16
/* Bytes a container adds to its payload at most. */
#define CONTAINER_MAX_OVERHEAD (CONTAINER_HEADER_SIZE + CONTAINER_NONCE_SIZE + HASH_SIZE)

/* AES-256-GCM with the AAD given in pieces; decryption fails with -EBADMSG. */
int repo_gcm_encrypt(const uint8_t key[REPO_KEY_SIZE], const uint8_t nonce[CONTAINER_NONCE_SIZE],
                     const struct iovec *aad, size_t naad, const uint8_t *in, size_t len,
                     uint8_t *out, uint8_t tag[CONTAINER_TAG_SIZE]);
int repo_gcm_decrypt(const uint8_t key[REPO_KEY_SIZE], const uint8_t nonce[CONTAINER_NONCE_SIZE],
                     const struct iovec *aad, size_t naad, const uint8_t *in, size_t len,
                     uint8_t *out, const uint8_t tag[CONTAINER_TAG_SIZE]);

/* Build a container of plain data bound to ident (compressed when that helps, encrypted when
 * the repository is) into a new buffer (free()).  The buffer is CONTAINER_ALIGN-aligned, so
 * that its aligned head can be written with O_DIRECT (repo_write_tmp_direct). */
#define CONTAINER_ALIGN 4096
int container_seal(const struct repo *r, const char *ident, const void *plain, size_t len,
                   uint8_t **out, size_t *outlen);
/* container_seal into the calling thread's own buffer, kept for its next call: *out (not to be
 * freed) is valid until that call or the thread's exit.  For chunk writers (repo_chunk_put,
 * chunk batches), which would otherwise fault in a fresh chunk-sized buffer for every chunk;
 * each thread that writes chunks keeps one container's worth of memory until it exits. */
int container_seal_thread(const struct repo *r, const char *ident, const void *plain, size_t len,
                          const uint8_t **out, size_t *outlen);
/* The calling thread's buffer for reading containers: CONTAINER_ALIGN-aligned (for O_DIRECT),
 * at least size bytes (*cap: its size), kept for the thread's next call and freed at its exit;
 * NULL when memory runs out.  Chunk readers use it instead of a fresh allocation per chunk. */
uint8_t *container_read_buffer_thread(size_t size, size_t *cap);
/* Plain length a container's header announces (not yet authenticated). */
int container_plain_size(const uint8_t *file, size_t flen, uint64_t *len);
/* Check and open a container read into file (decrypted in place) into out: -EBADMSG when it is
 * damaged, bound to another ident or longer than max_plain; -ENOBUFS when cap is too small. */
int container_unseal(const struct repo *r, const char *ident, uint8_t *file, size_t flen,
                     uint64_t max_plain, void *out, size_t cap, size_t *len);

/* container_unseal without the checksum of a plain container (encrypted ones are always
 * authenticated): only for callers that then check the data against its SHA-256, which covers
 * every byte returned (chunk reads checked against their ID). */
int container_unseal_data(const struct repo *r, const char *ident, uint8_t *file, size_t flen,
                          uint64_t max_plain, void *out, size_t cap, size_t *len);

/* Metadata containers, bound to their path relative to the repository root: written into
 * dirfd/name, read from relpath (the result is NUL-terminated). */
int repo_meta_write(struct repo *r, int dirfd, const char *name, const char *relpath,
                    const void *plain, size_t len);
int repo_meta_read(struct repo *r, const char *relpath, uint8_t **plain, size_t *len);

/* ---- chunk.c ---- */

/* The chunk ID of data; fails only when libcrypto does. */
int chunk_id_compute(const struct repo *r, const void *data, size_t len, struct chunk_id *id);
/* "chunks/ab" for a chunk of ID ab... (dir, 10 bytes) and its file name (65 bytes). */
#define CHUNK_DIR_LEN  (sizeof(REPO_CHUNKS_DIR "/ab"))
#define CHUNK_NAME_LEN (2 * HASH_SIZE + 1)
void chunk_names(const struct chunk_id *id, char dir[CHUNK_DIR_LEN], char name[CHUNK_NAME_LEN]);
bool chunk_name_valid(const char *name);
/* Two lower-case hex digits: a chunks/ subdirectory. */
bool chunk_subdir_valid(const char *name);

/* ---- manifest.c ---- */

bool manifest_name_valid(const char *name);
int manifest_encode(const struct manifest *m, uint8_t **out, size_t *len);
int manifest_decode(const uint8_t *p, size_t len, struct manifest *m);
int manifest_load(struct repo *r, const char *relpath, struct manifest *m);

/* ---- backup.c ---- */

bool backup_id_valid(const char *id);

/* ---- lock.c ---- */

/* Take a flock on locks/name, shared or exclusive, polling until deadline_ms (CLOCK_MONOTONIC
 * milliseconds; -1 waits forever).  -EBUSY when the deadline passes. */
int lock_file_acquire(struct repo *r, const char *name, bool exclusive, int64_t deadline_ms,
                      int *fd_out);
void lock_file_release(int fd);
int64_t lock_deadline(unsigned timeout_seconds);
/* Make sure the handle holds the repository lock exclusively, waiting as long as it takes; *took
 * tells whether it was taken here (release with repo_unlock). */
int lock_hold_exclusive(struct repo *r, bool *took, char *err, size_t errlen);

#endif
