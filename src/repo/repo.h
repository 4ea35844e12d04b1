/* The backup repository: content-addressed chunks and per-backup manifests in a directory.
 *
 *   PATH/config                  repository parameters (JSON, plain): format version, chunk
 *                                size, compression, and when encrypted the scrypt parameters,
 *                                the wrapped keys and a MAC of the whole config
 *   PATH/chunks/ab/<id hex>      one chunk in a container (zstd, optionally AES-256-GCM);
 *                                format 3: PATH/packs/ab/<name> (many chunk containers) and
 *                                PATH/index/<name> (chunk ID -> pack, offset, length)
 *   PATH/backups/<vm>/<backup id>/disk-<n>.manifest   offset -> chunk id or zero (container)
 *   PATH/backups/<vm>/<backup id>/backup.json         the backup's metadata (container);
 *                                written last: a backup exists only once this file does
 *   PATH/locks/                  lock files: repo.lock (shared by backups, restores and
 *                                verify; exclusive for gc and prune) and vm-<vm>.lock
 *                                (exclusive while backing that VM up)
 *
 * All storage goes through a store (store.h): a directory (store_local.c) by default.  Every
 * object is put atomically and durably; chunk batches (backups) stage their chunks and make a
 * flush's worth durable with one commit (one filesystem sync for a directory) before they
 * appear.
 * The format is documented in docs/repository-format.md; a repository of
 * another format version is refused.  Functions return 0 or a negative errno and, where an
 * err buffer is given, a message naming the file and the cause.  All functions on an open
 * repository are thread-safe.
 */
#ifndef VMEXPORT_REPO_REPO_H
#define VMEXPORT_REPO_REPO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/hash.h"
#include "core/strlist.h"
#include "core/vector.h"

/* The format version new repositories get, and the oldest one still read and written (a
 * repository keeps its version: containers written into it use that version's layout). */
#define REPO_FORMAT_VERSION     3
#define REPO_MIN_FORMAT_VERSION 1
/* 1 MiB: an incremental backup rebuilds every chunk its changes touch, so its cost follows the
 * chunk size (1% of an 8 GiB image changed in 1 MiB writes touched 76 chunks of 4 MiB, 7% of the
 * data; 79 chunks of 1 MiB, 2%); full backups run as fast, with a third of the memory.  Veeam's
 * default block is 1 MB too. */
#define REPO_DEFAULT_CHUNK_SIZE (1u << 20)
#define REPO_MIN_CHUNK_SIZE     (64u << 10)
#define REPO_MAX_CHUNK_SIZE     (64u << 20)

/* A chunk ID: SHA-256 of the plain data, or HMAC-SHA-256 under the repository's ID key when
 * encrypted (so chunk names reveal nothing about the content). */
struct chunk_id {
    uint8_t b[HASH_SIZE];
};

void chunk_id_to_hex(const struct chunk_id *id, char out[2 * HASH_SIZE + 1]);
int chunk_id_from_hex(const char *hex, struct chunk_id *id);

struct repo;

struct store_options;

struct repo_init_options {
    uint32_t chunk_size;     /* 0: REPO_DEFAULT_CHUNK_SIZE; power of two within the bounds */
    const char *passphrase;  /* NULL: not encrypted */
    int zstd_level;          /* 0: 3 */
    unsigned format_version; /* 0: REPO_FORMAT_VERSION; older ones for tests and old readers */
    const struct store_options *store; /* of a repository URL (store.h); NULL: the defaults */
};

/* Create a repository at path, a directory (which must not exist or be empty) or a URL
 * (store_open_url(): rados://POOL/NAMESPACE, s3://BUCKET/PREFIX, whose namespace or prefix
 * must hold nothing). */
int repo_init(const char *path, const struct repo_init_options *opt, char *err, size_t errlen);

/* Open a repository.  Encrypted ones need the passphrase: -EACCES and err "wrong passphrase"
 * (or "passphrase required").  -EPROTONOSUPPORT for an unknown format version.  The config of
 * an encrypted repository carries a MAC under the repository's keys: -EBADMSG when it does not
 * match (the config was changed without the keys).  A passphrase given for a repository whose
 * config says it is not encrypted is refused (-EPERM): the config may have been downgraded. */
int repo_open(const char *path, const char *passphrase, struct repo **out, char *err,
              size_t errlen);
/* repo_open of a path or URL with the store options so (NULL: the defaults; repo_open uses
 * these). */
int repo_open_url(const char *url, const struct store_options *so, const char *passphrase,
                  struct repo **out, char *err, size_t errlen);
void repo_close(struct repo *r);

/* The same on a given store (store.h: a store_mem for tests, another backend), which the
 * caller keeps: it stays open after repo_close() and is closed by the caller.  repo_init and
 * repo_open are these on the store store_open_url() opens. */
struct store;
int repo_init_store(struct store *st, const struct repo_init_options *opt, char *err,
                    size_t errlen);
int repo_open_store(struct store *st, const char *passphrase, struct repo **out, char *err,
                    size_t errlen);

/* Format 3 on a store that is not local (S3, RADOS): whether index objects are kept in a
 * local cache ($VMEXPORT_CACHE_DIR or $XDG_CACHE_HOME/vmexport or ~/.cache/vmexport, then
 * <repo id>/index/), so that a backup, restore or verify reads only the ones it has not seen
 * (one listing of index/).  On by default there (the memory store: only with
 * VMEXPORT_CACHE_DIR); --no-cache turns it off. */
void repo_set_index_cache(struct repo *r, bool enabled);

uint32_t repo_chunk_size(const struct repo *r);
bool repo_encrypted(const struct repo *r);
const char *repo_path(const struct repo *r);
/* The repository's ID (hex), as its config records it. */
const char *repo_id(const struct repo *r);
unsigned repo_format_version(const struct repo *r);

/* An encrypted repository whose config has no MAC (made by a vmexport before configs had
 * one) opens for reading, but every write (backups, prune, gc) is refused with -EPERM until
 * repo_config_seal() has added the MAC.  repo_config_unsealed() tells whether that is so. */
bool repo_config_unsealed(const struct repo *r);
/* Add the MAC to such a config (atomically replacing the file); 0 when it has one already.
 * -EINVAL for an unencrypted repository (no key to compute one with). */
int repo_config_seal(struct repo *r, char *err, size_t errlen);

/* ---- chunks ---- */

/* ID of plain data (keyed when encrypted). */
void repo_chunk_id(const struct repo *r, const void *data, size_t len, struct chunk_id *id);

/* Store a chunk unless it exists (compress, encrypt, one atomic durable store_put).  *stored tells
 * whether it was written, *bytes_written how many bytes hit the disk (either may be NULL).
 * -ENOSPC when the filesystem is full (nothing half-written is left).  Format 3: a pack of one
 * chunk and an index object naming it; use a batch to store many. */
int repo_chunk_put(struct repo *r, const struct chunk_id *id, const void *data, size_t len,
                   bool *stored, uint64_t *bytes_written);
bool repo_chunk_exists(struct repo *r, const struct chunk_id *id);

/* Read, decrypt, decompress and check a chunk into buf (capacity cap >= chunk size); *len its
 * length.  -ENOENT missing; -EBADMSG damaged (bad header, authentication failure, bad zstd
 * frame, or the data does not hash to its ID).  The file is read with O_DIRECT where the file
 * system allows (a chunk is read once: the page cache would only add a copy) into a buffer the
 * calling thread keeps, one container's worth, until it exits. */
int repo_chunk_get(struct repo *r, const struct chunk_id *id, void *buf, size_t cap, size_t *len);
/* The same for reading data (restore): the decoded data is still checked against the chunk ID
 * (and an encrypted container's tag), which covers every byte returned, but a plain
 * container's own SHA-256 checksum is not recomputed: one hash pass instead of two.  Damage
 * that leaves the data intact (in the checksum bytes themselves) goes unnoticed here; verify
 * (repo_chunk_get) finds it. */
int repo_chunk_read(struct repo *r, const struct chunk_id *id, void *buf, size_t cap, size_t *len);

/* ---- chunks with known zero blocks (sparse disks: zeros cost nothing) ----
 *
 * A chunk is made of CHUNK_BLOCK-byte blocks (the last one may be shorter).  A zero-block mask
 * (bit i % 64 of word i / 64 for block i; CHUNK_MASK_WORDS words) marks blocks known to hold
 * zeros — holes of a sparse disk — whose bytes in the buffer are NOT read: the engine neither
 * reads nor clears them.  Blocks not marked may still be zeros (they are checked).  A NULL mask
 * marks none.  In a repository of format version 3 zero blocks are neither hashed, compressed
 * nor stored; in older ones the marked blocks are cleared in the buffer (hence not const) and
 * the chunk is the same as with the functions above. */
#define CHUNK_BLOCK      4096u
#define CHUNK_MASK_WORDS (REPO_MAX_CHUNK_SIZE / CHUNK_BLOCK / 64)
struct chunk_batch;

static inline bool chunk_mask_test(const uint64_t *mask, size_t block)
{
    return mask && (mask[block / 64] >> (block % 64)) & 1;
}
static inline void chunk_mask_set(uint64_t *mask, size_t block)
{
    mask[block / 64] |= (uint64_t)1 << (block % 64);
}

/* Whether every byte of the chunk is zero (the blocks the mask marks count as zeros). */
bool repo_chunk_is_zero(const void *data, size_t len, const uint64_t *zero_blocks);
/* The chunk's ID, like repo_chunk_id() of the data with the marked blocks zeros. */
void repo_chunk_id_sparse(const struct repo *r, void *data, size_t len, const uint64_t *zero_blocks,
                          struct chunk_id *id);
/* repo_chunk_batch_put() of the same chunk. */
int repo_chunk_batch_put_sparse(struct chunk_batch *b, const struct chunk_id *id, void *data,
                                size_t len, const uint64_t *zero_blocks, uint64_t *pending_bytes);
/* repo_chunk_read() that may leave zero blocks unwritten: with zero_blocks (CHUNK_MASK_WORDS
 * words, may be NULL), the blocks it marks are zeros whose bytes in buf were not written; with
 * NULL every byte is written. */
int repo_chunk_read_sparse(struct repo *r, const struct chunk_id *id, void *buf, size_t cap,
                           size_t *len, uint64_t *zero_blocks);
/* repo_chunk_get (the container's own checksum checked too: verify) handing back the mask like
 * repo_chunk_read_sparse: zero blocks are neither written into buf nor hashed. */
int repo_chunk_get_sparse(struct repo *r, const struct chunk_id *id, void *buf, size_t cap,
                          size_t *len, uint64_t *zero_blocks);

/* Call fn for every chunk present (format 3: named by the index, each once, sorted; older: every
 * chunk file, order unspecified); stops at fn's negative return. */
int repo_chunk_foreach(struct repo *r, int (*fn)(void *opaque, const struct chunk_id *id),
                       void *opaque);
/* Delete a chunk (format 3: repacks its pack without it and rewrites the index, as gc does:
 * for tests and repairs, not for bulk use); -ENOENT when missing. */
int repo_chunk_delete(struct repo *r, const struct chunk_id *id);

/* ---- chunk batches: many chunks made durable at once (for backups) ---- */

/* A chunk put into a batch is staged in the store, not yet durable (nothing when it exists
 * already); repo_chunk_batch_flush() makes every pending one durable with one store commit (one
 * filesystem sync for a directory) and only then moves them into place, so a chunk name never
 * points at data that is not on disk. Until flushed, a batch's chunks are not in the repository
 * (repo_chunk_exists() is false). Thread-safe; the caller holds a backup writer (whose commit makes
 * the names durable).  Format 3: chunks go into 16 MiB packs (staged as they fill; memory: two
 * packs being built), and a flush commits the packs, then writes one index object naming them
 * (durable) before the chunks become findable. */
struct chunk_batch;
int repo_chunk_batch_new(struct repo *r, struct chunk_batch **out);
/* *pending_bytes (may be NULL): container bytes waiting for the flush after this put, to
 * decide when to flush (format 3: each chunk counts for at least 4 KiB there, the memory a
 * pending chunk holds, so that flushing at a byte threshold also bounds the count). */
int repo_chunk_batch_put(struct chunk_batch *b, const struct chunk_id *id, const void *data,
                         size_t len, uint64_t *pending_bytes);
/* Commit: make every pending chunk durable, then move each into place.  On failure the pending
 * files are removed.  Other threads may keep putting while a flush runs. */
int repo_chunk_batch_flush(struct chunk_batch *b);
/* Chunks moved into place by flushes, found existing (at put or at flush), container bytes
 * written by the former. */
void repo_chunk_batch_stats(struct chunk_batch *b, uint64_t *chunks_new, uint64_t *chunks_existing,
                            uint64_t *bytes_written);
/* Free a batch, removing the temporary files of chunks not flushed. */
void repo_chunk_batch_free(struct chunk_batch *b);

/* ---- manifests: one per disk of a backup ---- */

/* A manifest in memory is sparse whatever its format version: an entry for each chunk that is
 * not all zeros, in increasing chunk index; chunk i covers [i * chunk_size, min((i + 1) *
 * chunk_size, disk_size)) and reads as zeros when it has no entry.  Memory follows the data,
 * never the disk's logical size (dense v1/v2 manifests are converted while decoding). */
struct manifest_entry {
    uint64_t idx; /* chunk index */
    struct chunk_id id;
};

struct manifest {
    char *disk; /* disk name */
    uint64_t disk_size;
    uint32_t chunk_size;
    char *change_id;     /* the disk's change ID on the server, or NULL */
    char *snapshot_path; /* the snapshot file it was read from (informational) */
    size_t n_entries;    /* entries: the chunks stored, strictly increasing idx */
    size_t cap_entries;
    struct manifest_entry *e;
};

/* Chunks of the disk: ceil(disk_size / chunk_size). */
static inline uint64_t manifest_chunks(const struct manifest *m)
{
    return m->disk_size / m->chunk_size + (m->disk_size % m->chunk_size != 0);
}
/* Length of chunk idx (< manifest_chunks(m)). */
static inline size_t manifest_chunk_len(const struct manifest *m, uint64_t idx)
{
    uint64_t off = idx * m->chunk_size;
    return m->disk_size - off < m->chunk_size ? (size_t)(m->disk_size - off) : m->chunk_size;
}

/* An empty manifest (every chunk zeros) of a disk. */
int manifest_new(struct manifest *m, const char *disk, uint64_t disk_size, uint32_t chunk_size);
void manifest_free(struct manifest *m);
/* Add chunk idx's ID: idx must be above every entry's and below manifest_chunks(m) (-EINVAL). */
int manifest_append(struct manifest *m, uint64_t idx, const struct chunk_id *id);
/* The entry of chunk idx, or NULL when it is zeros (binary search). */
const struct manifest_entry *manifest_find(const struct manifest *m, uint64_t idx);
/* Position of the first entry whose idx is >= idx (n_entries when none). */
size_t manifest_lower_bound(const struct manifest *m, uint64_t idx);

/* ---- backups ---- */

struct backup_disk {
    char *name;
    uint64_t size;
    char *change_id;
    char *manifest; /* file name inside the backup directory */
};
DEFINE_VECTOR_TYPE(backup_disk_list, struct backup_disk);

struct backup {
    char *id; /* e.g. "20261123T091500Z-5f3a9c" (time + random): unique, sortable */
    char *vm_id;
    char *snapshot_id; /* server snapshot it was taken from */
    char *server;      /* server URL */
    int64_t time;      /* Unix seconds when taken */
    char *vm_json;     /* the VM's metadata as the daemon gave it (JSON text) */
    /* The VM's definition as its platform keeps it (GET /vms/{vm}/definition: libvirt domain
     * XML, QEMU's devices as JSON, OVM's vm.cfg) and its format ("libvirt-xml" ...); both NULL
     * when the server gave none (older servers, the dir provider, older backups). */
    char *definition;
    char *definition_format;
    backup_disk_list disks;
    /* statistics of the run that made it */
    uint64_t bytes_read, bytes_written, chunks_new, chunks_reused;
    double seconds;
    char *parent_id; /* backup it was incremental against, or NULL */
};
DEFINE_VECTOR_TYPE(backup_list, struct backup *);
/* Free what b owns and zero it (b itself stays: a struct on the stack); backup_free also
 * frees b. */
void backup_clear(struct backup *b);
void backup_free(struct backup *b);
void backup_list_free(backup_list *l);

/* A backup being written.  begin() takes the repository lock (shared) and the VM lock
 * (exclusive, waiting up to timeout seconds; -EBUSY after). */
struct backup_writer;
int repo_backup_begin(struct repo *r, const char *vm_id, int64_t time, unsigned lock_timeout,
                      struct backup_writer **out, char *err, size_t errlen);
const char *repo_backup_writer_id(const struct backup_writer *w);
/* Write one disk's manifest (durable when this returns). */
int repo_backup_add_disk(struct backup_writer *w, const struct manifest *m);
/* Write backup.json last (b->id, vm_id and disks are filled in from the writer). */
int repo_backup_commit(struct backup_writer *w, struct backup *b);
/* (Addition.) On success commit also sets b->time to begin()'s time (the ID is made from it),
 * releases the locks and frees w; on failure w stays valid: call repo_backup_abort(). */
/* Remove what was written (manifests) and release the locks; always frees w. */
void repo_backup_abort(struct backup_writer *w);
/* Release the locks and free w but leave the files as they are, as a crash would: the backup
 * directory stays without backup.json (not listed; repo_gc() removes it).  For tests. */
void repo_backup_abandon(struct backup_writer *w);

/* Committed backups (those with a readable backup.json), oldest first; vm_id NULL: all.
 * Damaged backup.json files are skipped with a warning (verify reports them). */
int repo_backup_list(struct repo *r, const char *vm_id, backup_list *out);
/* Backups whose directory has a backup.json that cannot be read or checked ("VM/ID" strings,
 * VM as stored on disk), for verify to report. */
int repo_backup_list_damaged(struct repo *r, string_list *out);
/* One backup by ID: -ENOENT; -EBADMSG damaged. */
int repo_backup_get(struct repo *r, const char *id, struct backup **out);
/* Newest committed backup of a VM: -ENOENT when none. */
int repo_backup_latest(struct repo *r, const char *vm_id, struct backup **out);
int repo_manifest_read(struct repo *r, const struct backup *b, const char *disk,
                       struct manifest *out);
/* Delete a backup (backup.json first, so it disappears atomically, then its manifests). */
int repo_backup_delete(struct repo *r, const char *id);

/* ---- maintenance ---- */

/* Copy every committed backup of src (any format) into dst, a new empty repository of format 3
 * with src's chunk size: the same backup IDs, VMs, times and metadata; each chunk read and
 * checked, stored under its format-3 ID (all-zero ones become absent).  For `repo upgrade`,
 * which makes dst next to src and swaps the directories; progress (may be NULL) is called
 * before each backup.  A damaged or missing chunk fails the copy, naming it in err. */
int repo_upgrade_copy(struct repo *src, struct repo *dst,
                      void (*progress)(void *opaque, const struct backup *b), void *opaque,
                      char *err, size_t errlen);

/* Repository-wide lock for gc and prune (exclusive) or restore/verify (shared). */
int repo_lock(struct repo *r, bool exclusive, unsigned timeout, char *err, size_t errlen);
void repo_unlock(struct repo *r);

struct gc_stats {
    uint64_t chunks_total, chunks_deleted, bytes_freed, temp_files_removed, partial_backups_removed;
};
/* Delete chunks no backup references, temporary files and partial backups left by crashes.
 * Takes the repository lock exclusively.  dry_run: count only. */
int repo_gc(struct repo *r, bool dry_run, struct gc_stats *st, char *err, size_t errlen);

/* ---- prune policy ---- */

struct prune_policy {
    unsigned keep_last;    /* the newest N */
    unsigned keep_daily;   /* the newest backup of each of the newest N days that have one */
    unsigned keep_weekly;  /* ... of each ISO week */
    unsigned keep_monthly; /* ... of each calendar month */
};

/* Decide which of n backups of one VM (times in Unix seconds, any order) to keep: keep[i].
 * Days, weeks and months are UTC.  A policy of all zeros keeps nothing. */
void prune_select(const int64_t *times, size_t n, const struct prune_policy *p, bool *keep);

/* Apply a policy to the committed backups of one VM (vm_id) or of every VM (NULL), each VM on
 * its own: delete the backups prune_select() does not keep, holding the repository lock
 * exclusively (waiting up to lock_timeout seconds).  Unreferenced chunks are left to repo_gc().
 * An all-zero policy is refused (-EINVAL) rather than deleting every backup.  removed (may be
 * NULL) receives the backups deleted, or that would be with dry_run; the caller frees it with
 * backup_list_free() also on failure. */
int repo_prune(struct repo *r, const char *vm_id, const struct prune_policy *p,
               unsigned lock_timeout, bool dry_run, backup_list *removed, char *err, size_t errlen);

#endif
