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

#include <jansson.h>

#include "repo.h"
#include "store.h"

/* ---- layout ---- */

#define REPO_CONFIG_NAME  "config"
#define REPO_CHUNKS_DIR   "chunks"
#define REPO_PACKS_DIR    "packs" /* format 3: packs/<ab>/<pack name>, chunks in packs */
#define REPO_INDEX_DIR    "index" /* format 3: index/<name>, chunk ID -> pack, offset, length */
#define REPO_PACKS_FORMAT 3       /* the first format version that keeps chunks in packs */
#define REPO_BACKUPS_DIR  "backups"
#define REPO_LOCKS_DIR    "locks"
#define REPO_LOCK_NAME    "repo.lock"
#define REPO_BACKUP_JSON  "backup.json"
#define REPO_TMP_MARK     ".tmp." /* in every temporary file name */
#define REPO_FILE_MODE    0600
#define REPO_DIR_MODE     0700

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
    char *path;          /* the store's name, for messages */
    struct store *store; /* where everything is kept (store.h) */
    bool owns_store;     /* repo_close() closes it (repo_open); else the caller does */
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

    /* Format 3: the repository index (pack.c), loaded on the first chunk lookup. */
    pthread_mutex_t index_mutex;
    struct pack_index *index;

    /* Format 3 on stores that are not local: the local cache of index objects (index_cache.c),
     * its directory resolved on first use. */
    pthread_mutex_t cache_mutex;
    int cache_fd; /* -1: none */
    bool cache_resolved;
    bool cache_disabled; /* repo_set_index_cache(false) */

    /* repo_upgrade_copy(): the ID the next backup begun gets (the old backup's), or NULL. */
    const char *upgrade_backup_id;

    /* repo_lock() state: one repository-wide lock per handle, counted. */
    pthread_mutex_t lock_mutex;
    struct store_lease *lock_lease;
    struct lease_keeper *lock_keeper; /* renews lock_lease */
    unsigned lock_depth;
    bool lock_exclusive;
};

/* Format a message into err (when err is not NULL): the store's helper (store.h). */
#define repo_set_err store_set_err

/* A power of two within REPO_MIN_CHUNK_SIZE .. REPO_MAX_CHUNK_SIZE (repo.c). */
bool repo_chunk_size_valid(uint64_t n);
/* 0 when the repository may be written to; -EPERM and a message in err for an encrypted
 * repository whose config carries no MAC yet (repo.c).  Every writer checks this first. */
int repo_check_writable(const struct repo *r, char *err, size_t errlen);

/* ---- fileio.c ---- */

int repo_random_bytes(void *buf, size_t len);
/* 2 * nbytes hex digits of random data and a NUL into out. */
int repo_random_hex(char *out, size_t nbytes);
bool repo_is_tmp_name(const char *name);

/* store_del, where an object the store refuses to delete (-EACCES: retained by S3 Object Lock,
 * --lock-days) is kept with a warning and answers -ENOENT, which gc's callers skip. */
int repo_store_del(struct repo *r, const char *key, uint64_t *bytes);
/* Remove every object directly under prefix (sub-prefixes are left: removing the prefix then
 * fails), make that durable, then remove the prefix itself; *bytes (may be NULL) accumulates
 * the sizes removed. */
int repo_remove_dir(struct repo *r, const char *prefix, uint64_t *bytes);

/* Directory-name form of a VM ID: bytes outside [A-Za-z0-9._-] and a leading '.' become %XX;
 * a name longer than the limit keeps a prefix and gets "~" and the SHA-256 of the ID. */
int repo_vm_dir_name(const char *vm_id, char **out);

/* Strict base64 (canonical, padded): core/base64.h. */
#include "core/base64.h"

/* The non-negative integer member key of the JSON object o into *out (0 unless found): 0, or
 * -EBADMSG when it is missing (unless optional) or not such an integer. */
int repo_json_get_uint(json_t *o, const char *key, bool optional, uint64_t *out);

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
 * that its aligned head can be written with O_DIRECT (store_stage). */
#define CONTAINER_ALIGN STORE_ALIGN
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

/* A chunk's container (format 3: sparse when it has a zero block; the blocks zero_blocks
 * marks are not read) into the calling thread's buffer, as container_seal_thread. */
int container_seal_chunk(const struct repo *r, const char *ident, const void *data, size_t len,
                         const uint64_t *zero_blocks, const uint8_t **out, size_t *outlen);
/* Open a chunk's container into out (cap bytes): as container_unseal (checksum) or
 * container_unseal_data (!checksum), expanding a sparse one: its zero blocks are cleared, or
 * with zero_blocks (CHUNK_MASK_WORDS words, may be NULL) left unwritten and marked there. */
int container_unseal_chunk(const struct repo *r, const char *ident, uint8_t *file, size_t flen,
                           uint64_t max_plain, bool checksum, void *out, size_t cap, size_t *len,
                           uint64_t *zero_blocks);

/* container_unseal without the checksum of a plain container (encrypted ones are always
 * authenticated): only for callers that then check the data against its SHA-256, which covers
 * every byte returned (chunk reads checked against their ID). */
int container_unseal_data(const struct repo *r, const char *ident, uint8_t *file, size_t flen,
                          uint64_t max_plain, void *out, size_t cap, size_t *len);

/* Metadata containers, bound to their key (path relative to the repository root): written
 * atomically and durably (replacing), read back (the result is NUL-terminated). */
int repo_meta_write(struct repo *r, const char *relpath, const void *plain, size_t len);
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

/* ---- pack.c (format 3: chunks in packs, found through the repository index) ---- */

struct pack_index;
/* "packs/ab/<64 hex>" and its NUL. */
#define PACK_KEY_LEN (sizeof(REPO_PACKS_DIR "/ab/") + 2 * HASH_SIZE)

/* Where chunk id is: its pack's key and the container's offset and length there.  Loads the
 * index on first use; -ENOENT when no index names the chunk. */
int pack_index_find(struct repo *r, const struct chunk_id *id, char key[PACK_KEY_LEN],
                    uint64_t *off, uint32_t *len);
/* Forget the loaded index (the next lookup loads it again: another process may have changed
 * it, gc). */
void pack_index_drop(struct repo *r);
void pack_index_free(struct repo *r);
/* A value kept per indexed chunk for chunk_set_use_index() (chunkset.h): *old gets id's value
 * and, unless value is CHUNK_STATE_UNKNOWN (0), value replaces it.  Loads the index on first
 * use; -ENOENT when no index names id. */
int pack_index_mark(struct repo *r, const struct chunk_id *id, int8_t value, int8_t *old);
/* Clear every value pack_index_mark() kept. */
void pack_index_clear_marks(struct repo *r);
/* Every chunk ID the index names, each once, sorted (free()). */
int pack_index_ids(struct repo *r, struct chunk_id **ids, size_t *n);

/* Chunks being packed by a batch: added containers go into a pack of up to PACK_TARGET bytes,
 * staged when full; a flush commits the staged packs (one barrier), then writes one index
 * object naming them (durable), then adds them to the loaded index. */
struct pack_writer;
int pack_writer_new(struct repo *r, struct pack_writer **out);
/* Add the sealed container of chunk id: 1 when the writer has the chunk already (nothing
 * added), 0 added; *pending (may be NULL): bytes waiting for the flush, each chunk counted
 * as at least PACK_PENDING_CHUNK_COST (pack.c). */
int pack_writer_add(struct pack_writer *w, const struct chunk_id *id, const uint8_t *container,
                    size_t len, uint64_t *pending);
/* *chunks and *bytes (may be NULL) get the chunks and pack bytes made durable added. */
int pack_writer_flush(struct pack_writer *w, uint64_t *chunks, uint64_t *bytes);
void pack_writer_free(struct pack_writer *w);

/* gc of the packs: mark what backups reference, then run (docs/repository-format.md, "gc"). */
struct pack_gc;
int pack_gc_new(struct repo *r, struct pack_gc **out);
void pack_gc_mark(struct pack_gc *g, const struct chunk_id *id);
/* Delete packs nothing marked lives in, repack those mostly dead (all with some dead chunk when
 * force), write one index, delete the old index objects and packs, orphan packs and temporary
 * objects; count only with dry_run. */
int pack_gc_run(struct pack_gc *g, bool dry_run, bool force, struct gc_stats *st);
void pack_gc_free(struct pack_gc *g);

/* ---- index_cache.c (the local copy of index objects: pack.c reads through it) ---- */

/* Whether the handle keeps index objects in a local cache. */
bool index_cache_enabled(struct repo *r);
/* The cached copy of index/<name> opened for reading (an fd), or -ENOENT. */
int index_cache_open(struct repo *r, const char *name);
/* Keep data as the copy of index/<name> (atomically; a failure only warns). */
void index_cache_put(struct repo *r, const char *name, const void *data, size_t len);
/* Remove the copy of index/<name> (it failed its checks). */
void index_cache_drop(struct repo *r, const char *name);
/* Remove the copies of index objects (names valid() accepts) that names, the store's listing,
 * does not hold. */
void index_cache_prune(struct repo *r, const string_list *names, bool (*valid)(const char *));
void index_cache_close(struct repo *r);

/* ---- manifest.c ---- */

bool manifest_name_valid(const char *name);
int manifest_encode(const struct manifest *m, uint8_t **out, size_t *len);
int manifest_decode(const uint8_t *p, size_t len, struct manifest *m);
/* Read or write the manifest at relpath in the repository's format (dense container before
 * version 3, a segmented stream from 3 on). */
int manifest_load(struct repo *r, const char *relpath, struct manifest *m);
int manifest_save(struct repo *r, const char *relpath, const struct manifest *m);

/* ---- backup.c ---- */

bool backup_id_valid(const char *id);

/* ---- lock.c ---- */

/* How long a lease lasts unrenewed (stores whose locks can outlive their holder): a holder
 * renews it every third of that (a lease keeper's thread), so only a process stalled or cut
 * off from the store for this long loses it.  VMEXPORT_LEASE_SECONDS (1 .. REPO_LEASE_MAX)
 * overrides it, for tests of lost leases. */
#define REPO_LEASE_SECONDS 600
#define REPO_LEASE_MAX     86400
#define REPO_LEASE_ENV     "VMEXPORT_LEASE_SECONDS"
/* The lease in seconds: VMEXPORT_LEASE_SECONDS when valid, else REPO_LEASE_SECONDS. */
unsigned repo_lease_seconds(void);

/* A thread renewing leases every repo_lease_seconds() / 3, so that a holder busy for longer
 * than a lease (one long disk of a backup, a long gc) keeps its locks.  Only on stores whose
 * leases expire (not "local": its file locks live as long as the process); there *out is NULL
 * and the functions below take NULL as "held for ever". */
struct lease_keeper;
int lease_keeper_start(struct repo *r, struct store_lease *const *leases, size_t n,
                       struct lease_keeper **out);
/* Renew every lease now: 0, -ETIMEDOUT once one was lost (a renewal said so, or the last
 * successful one is older than a lease: the process was stalled), else the store's error (the
 * leases may still be held: the keeper tries again). */
int lease_keeper_renew(struct lease_keeper *k);
/* Without asking the store: -ETIMEDOUT when a lease was lost or may have expired since the last
 * renewal, else 0.  Checked before every deletion of gc and prune. */
int lease_keeper_check(struct lease_keeper *k);
/* Stop renewing (the leases are released by the caller after this). */
void lease_keeper_stop(struct lease_keeper *k);
/* lease_keeper_check() of the handle's repository lock (repo_lock). */
int lock_check(struct repo *r);

/* Take locks/name, shared or exclusive, waiting until deadline_ms (store_deadline();
 * STORE_WAIT_FOREVER).  -EBUSY when the deadline passes. */
int lock_file_acquire(struct repo *r, const char *name, bool exclusive, int64_t deadline_ms,
                      struct store_lease **out);
void lock_file_release(struct repo *r, struct store_lease *l);
/* Make sure the handle holds the repository lock exclusively, waiting as long as it takes; *took
 * tells whether it was taken here (release with repo_unlock). */
int lock_hold_exclusive(struct repo *r, bool *took, char *err, size_t errlen);

#endif
