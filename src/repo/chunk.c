/* Chunks of the backup repository: content-addressed containers under chunks/<ab>/<id hex>.
 * IDs are SHA-256 (plain repositories) or HMAC-SHA-256 under the ID key (encrypted ones); a
 * chunk is written once, atomically, and the first of concurrent writers of one ID wins.
 */
#include "repo_internal.h"

#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "core/cleanup.h"
#include "core/hex.h"
#include "core/lock.h"
#include "core/log.h"

#define CHUNK_IDENT_PREFIX "chunk:"
#define CHUNK_IDENT_LEN    (sizeof(CHUNK_IDENT_PREFIX) + 2 * HASH_SIZE)
#define CHUNK_SUBDIR_LEN   2 /* hex digits of the first ID byte */

/* "chunks/ab/<id hex>" and its NUL: the directory's size counts the slash's place. */
#define CHUNK_KEY_LEN (CHUNK_DIR_LEN + CHUNK_NAME_LEN)

static int hmac_sha256(const uint8_t key[REPO_KEY_SIZE], const void *data, size_t len,
                       uint8_t out[HASH_SIZE])
{
    size_t n = 0;
    if (!EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, REPO_KEY_SIZE, data, len, out,
                   HASH_SIZE, &n) ||
        n != HASH_SIZE)
        return -EIO;
    return 0;
}

/* Format 3: the ID covers the chunk's length and the digest of each non-zero block with its
 * index, so zero blocks cost no hashing and equal content always gets the same ID, whichever
 * blocks a mask marked (docs/repository-format.md, "Chunk IDs"). */
#define CHUNK_ID_V3_LABEL   "vmexport-chunk-v3"
#define CHUNK_ID_V3_FORMAT  3
#define CHUNK_ID_V3_LEN_LE  8 /* u64le chunk length */
#define CHUNK_ID_V3_BLOCK_K 4 /* u32le block index */

static int chunk_id_v3(const struct repo *r, const void *data, size_t len,
                       const uint64_t *zero_blocks, struct chunk_id *id)
{
    const uint8_t *p = data;
    size_t nblocks = (len + CHUNK_BLOCK - 1) / CHUNK_BLOCK;
    size_t head = sizeof(CHUNK_ID_V3_LABEL) - 1 + CHUNK_ID_V3_LEN_LE;
    CLEANUP_FREE uint8_t *msg = malloc(head + nblocks * (CHUNK_ID_V3_BLOCK_K + HASH_SIZE));
    if (!msg)
        return -ENOMEM;
    memcpy(msg, CHUNK_ID_V3_LABEL, sizeof(CHUNK_ID_V3_LABEL) - 1);
    uint64_t len_le = htole64(len);
    memcpy(msg + sizeof(CHUNK_ID_V3_LABEL) - 1, &len_le, sizeof(len_le));
    size_t n = head;
    for (size_t k = 0; k < nblocks; k++) {
        size_t bl = len - k * CHUNK_BLOCK < CHUNK_BLOCK ? len - k * CHUNK_BLOCK : CHUNK_BLOCK;
        if (chunk_mask_test(zero_blocks, k) || buf_is_zero(p + k * CHUNK_BLOCK, bl))
            continue;
        uint32_t k_le = htole32((uint32_t)k);
        memcpy(msg + n, &k_le, sizeof(k_le));
        int ret = hash_sha256(p + k * CHUNK_BLOCK, bl, msg + n + sizeof(k_le));
        if (ret < 0)
            return ret;
        n += CHUNK_ID_V3_BLOCK_K + HASH_SIZE;
    }
    return r->encrypted ? hmac_sha256(r->id_key, msg, n, id->b) : hash_sha256(msg, n, id->b);
}

/* The ID of a chunk whose marked blocks are zeros (not read; none when zero_blocks is NULL).
 * Formats before 3 hash the plain bytes: they get no mask. */
static int chunk_id_masked(const struct repo *r, const void *data, size_t len,
                           const uint64_t *zero_blocks, struct chunk_id *id)
{
    if (r->format_version >= CHUNK_ID_V3_FORMAT)
        return chunk_id_v3(r, data, len, zero_blocks, id);
    return r->encrypted ? hmac_sha256(r->id_key, data, len, id->b) : hash_sha256(data, len, id->b);
}

int chunk_id_compute(const struct repo *r, const void *data, size_t len, struct chunk_id *id)
{
    return chunk_id_masked(r, data, len, NULL, id);
}

void repo_chunk_id(const struct repo *r, const void *data, size_t len, struct chunk_id *id)
{
    /* Only an allocation failure inside libcrypto gets here.  A made-up ID would store data
     * under the wrong name, so stop rather than corrupt the repository. */
    if (chunk_id_compute(r, data, len, id) < 0) {
        log_error("cannot compute a chunk ID (libcrypto failure)");
        abort();
    }
}

void chunk_names(const struct chunk_id *id, char dir[CHUNK_DIR_LEN], char name[CHUNK_NAME_LEN])
{
    hash_to_hex(id->b, name);
    snprintf(dir, CHUNK_DIR_LEN, REPO_CHUNKS_DIR "/%.2s", name);
}

/* Whether name is exactly n lower-case hex digits (names are written in lower case only). */
static bool lower_hex(const char *name, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (hex_digit(name[i]) < 0 || (name[i] >= 'A' && name[i] <= 'F'))
            return false;
    return name[n] == '\0';
}

bool chunk_name_valid(const char *name)
{
    return lower_hex(name, 2 * HASH_SIZE);
}

static void chunk_ident(const char *hex, char out[CHUNK_IDENT_LEN])
{
    snprintf(out, CHUNK_IDENT_LEN, CHUNK_IDENT_PREFIX "%s", hex);
}

/* The chunk's key, "chunks/ab/<id hex>", and (unless NULL) the identity its container is
 * sealed with. */
static void chunk_key(const struct chunk_id *id, char key[CHUNK_KEY_LEN],
                      char ident[CHUNK_IDENT_LEN])
{
    char dir[CHUNK_DIR_LEN], name[CHUNK_NAME_LEN];
    chunk_names(id, dir, name);
    snprintf(key, CHUNK_KEY_LEN, "%s/%s", dir, name);
    if (ident)
        chunk_ident(name, ident);
}

static bool packed(const struct repo *r)
{
    return r->format_version >= REPO_PACKS_FORMAT;
}

bool repo_chunk_exists(struct repo *r, const struct chunk_id *id)
{
    if (packed(r)) {
        uint64_t off;
        uint32_t len;
        return pack_index_find(r, id, NULL, &off, &len) == 0;
    }
    char key[CHUNK_KEY_LEN];
    chunk_key(id, key, NULL);
    return store_exists(r->store, key, NULL) == 0;
}

/* The first steps of writing chunk id: 1 when the repository has it already (nothing to
 * write), else 0 with its container sealed (in the calling thread's buffer: *file, *flen) and
 * the key it goes under; or a negative errno.  zero_blocks: format 3 only (see repo.h). */
static int chunk_prepare(struct repo *r, const struct chunk_id *id, const void *data, size_t len,
                         const uint64_t *zero_blocks, char key[CHUNK_KEY_LEN], const uint8_t **file,
                         size_t *flen)
{
    char ident[CHUNK_IDENT_LEN];
    if (len > r->chunk_size)
        return -EINVAL;
    if (repo_chunk_exists(r, id))
        return 1;
    chunk_key(id, key, ident);
    return container_seal_chunk(r, ident, data, len, zero_blocks, file, flen);
}

int repo_chunk_put(struct repo *r, const struct chunk_id *id, const void *data, size_t len,
                   bool *stored, uint64_t *bytes_written)
{
    char key[CHUNK_KEY_LEN];
    bool created = false;

    if (repo_check_writable(r, NULL, 0) < 0)
        return -EPERM;
    if (stored)
        *stored = false;
    if (bytes_written)
        *bytes_written = 0;

    const uint8_t *file = NULL;
    size_t flen;
    int ret = chunk_prepare(r, id, data, len, NULL, key, &file, &flen);
    if (ret != 0)
        return ret < 0 ? ret : 0;
    if (packed(r)) { /* a pack of one chunk and its index: batches are the way to write many */
        struct pack_writer *w = NULL;
        uint64_t n = 0, bytes = 0;
        ret = pack_writer_new(r, &w);
        if (ret == 0)
            ret = pack_writer_add(w, id, file, flen, NULL);
        if (ret == 0)
            ret = pack_writer_flush(w, &n, &bytes);
        pack_writer_free(w);
        if (ret < 0)
            return ret;
        if (stored)
            *stored = n > 0;
        if (bytes_written)
            *bytes_written = flen;
        return 0;
    }
    ret = store_put(r->store, key, file, flen, STORE_PUT_CREATE, &created);
    if (ret < 0)
        return ret;
    if (stored)
        *stored = created;
    if (bytes_written)
        *bytes_written = created ? flen : 0;
    return 0;
}

/* Read chunk id's container out of its pack into file (max bytes): one ranged read.  A chunk
 * the loaded index lacks, or whose pack is gone (another process's gc repacked it), is looked
 * up once more in the index as it is now. */
static int chunk_read_packed(struct repo *r, const struct chunk_id *id, uint8_t *file, size_t max,
                             size_t *flen)
{
    char key[PACK_KEY_LEN];
    int ret = -ENOENT;
    for (int attempt = 0; attempt < 2 && ret == -ENOENT; attempt++) {
        uint64_t off;
        uint32_t len;
        if (attempt)
            pack_index_drop(r);
        ret = pack_index_find(r, id, key, &off, &len);
        if (ret == 0 && len > max)
            ret = -EBADMSG;
        if (ret == 0)
            ret = store_get_range(r->store, key, off, len, file);
        if (ret == 0)
            *flen = len;
    }
    return ret;
}

static int chunk_get(struct repo *r, const struct chunk_id *id, bool checksum, void *buf,
                     size_t cap, size_t *len, uint64_t *zero_blocks)
{
    char ident[CHUNK_IDENT_LEN], rel[CHUNK_KEY_LEN];
    size_t flen = 0, fcap;
    struct chunk_id got;
    const size_t max = (size_t)r->chunk_size + CONTAINER_MAX_OVERHEAD;

    *len = 0;
    chunk_key(id, rel, ident);
    uint8_t *file = container_read_buffer_thread(max, &fcap);
    if (!file)
        return -ENOMEM;
    int ret = packed(r) ? chunk_read_packed(r, id, file, max, &flen)
                        : store_get_into(r->store, rel, max, file, fcap, &flen);
    if (ret < 0)
        return ret;
    ret = container_unseal_chunk(r, ident, file, flen, r->chunk_size, checksum, buf, cap, len,
                                 zero_blocks);
    if (ret < 0)
        return ret;
    ret = chunk_id_masked(r, buf, *len, zero_blocks, &got);
    if (ret < 0)
        return ret;
    if (CRYPTO_memcmp(got.b, id->b, HASH_SIZE)) {
        *len = 0;
        return -EBADMSG;
    }
    return 0;
}

int repo_chunk_get(struct repo *r, const struct chunk_id *id, void *buf, size_t cap, size_t *len)
{
    return chunk_get(r, id, true, buf, cap, len, NULL);
}

int repo_chunk_read(struct repo *r, const struct chunk_id *id, void *buf, size_t cap, size_t *len)
{
    return chunk_get(r, id, false, buf, cap, len, NULL);
}

bool chunk_subdir_valid(const char *name)
{
    return lower_hex(name, CHUNK_SUBDIR_LEN);
}

struct chunk_walk {
    struct repo *r;
    int (*fn)(void *opaque, const struct chunk_id *id);
    void *opaque;
    const char *sub; /* the chunks/ subdirectory being walked */
};

static int chunk_walk_file(void *opaque, const struct store_entry *e)
{
    struct chunk_walk *w = opaque;
    struct chunk_id id;
    if (e->prefix || !chunk_name_valid(e->name) || strncmp(e->name, w->sub, CHUNK_SUBDIR_LEN) ||
        chunk_id_from_hex(e->name, &id) < 0)
        return 0;
    return w->fn(w->opaque, &id);
}

static int chunk_walk_subdir(void *opaque, const struct store_entry *e)
{
    struct chunk_walk *w = opaque;
    char prefix[CHUNK_DIR_LEN];
    if (!e->prefix || !chunk_subdir_valid(e->name))
        return 0;
    snprintf(prefix, sizeof(prefix), REPO_CHUNKS_DIR "/%s", e->name);
    w->sub = e->name;
    int ret = store_list(w->r->store, prefix, chunk_walk_file, w);
    return ret == -ENOENT || ret == -ENOTDIR ? 0 : ret;
}

int repo_chunk_foreach(struct repo *r, int (*fn)(void *opaque, const struct chunk_id *id),
                       void *opaque)
{
    if (packed(r)) {
        CLEANUP_FREE struct chunk_id *ids = NULL;
        size_t n;
        int ret = pack_index_ids(r, &ids, &n);
        for (size_t i = 0; ret == 0 && i < n; i++)
            ret = fn(opaque, &ids[i]);
        return ret;
    }
    struct chunk_walk w = {.r = r, .fn = fn, .opaque = opaque};
    return store_list(r->store, REPO_CHUNKS_DIR, chunk_walk_subdir, &w);
}

/* Format 3: gc with every other chunk alive, repacking the chunk's pack without it. */
static int chunk_delete_packed(struct repo *r, const struct chunk_id *id)
{
    CLEANUP_FREE struct chunk_id *ids = NULL;
    struct pack_gc *g = NULL;
    size_t n;
    bool found = false;
    int ret = pack_index_ids(r, &ids, &n);
    if (ret == 0)
        ret = pack_gc_new(r, &g);
    for (size_t i = 0; ret == 0 && i < n; i++) {
        if (memcmp(ids[i].b, id->b, HASH_SIZE))
            pack_gc_mark(g, &ids[i]);
        else
            found = true;
    }
    if (ret == 0 && !found)
        ret = -ENOENT;
    if (ret == 0)
        ret = pack_gc_run(g, false, true, NULL);
    pack_gc_free(g);
    return ret;
}

int repo_chunk_delete(struct repo *r, const struct chunk_id *id)
{
    if (packed(r))
        return chunk_delete_packed(r, id);
    char dir[CHUNK_DIR_LEN], name[CHUNK_NAME_LEN], key[CHUNK_KEY_LEN];
    chunk_names(id, dir, name);
    snprintf(key, sizeof(key), "%s/%s", dir, name);
    int ret = store_del(r->store, key, NULL);
    return ret < 0 ? ret : store_sync_prefix(r->store, dir);
}

/* ---- batches ----
 *
 * A chunk put into a batch is staged in the store (the local store: a temporary file in its
 * chunks/ab directory, not synced).  A flush commits every staged chunk: one barrier
 * makes them durable (the local store: one filesystem sync) and only then do they appear under
 * their names, so that a chunk name can never point at data that is not on disk (a later backup
 * trusts an existing name without reading it).  Their names become durable with the barrier
 * of repo_backup_commit() before backup.json is written.  This replaces two syncs (file and
 * directory) per chunk by one filesystem sync per flush. */

struct chunk_pending {
    struct store_staged *staged;
    uint64_t bytes; /* container size */
};
DEFINE_VECTOR_TYPE(chunk_pending_list, struct chunk_pending);

struct chunk_batch {
    struct repo *r;
    struct pack_writer *packs; /* format 3: chunks go into packs */
    pthread_mutex_t lock;      /* the fields below */
    chunk_pending_list pending;
    uint64_t pending_bytes;
    uint64_t chunks_new, chunks_existing, bytes_written;
};

int repo_chunk_batch_new(struct repo *r, struct chunk_batch **out)
{
    *out = NULL;
    if (repo_check_writable(r, NULL, 0) < 0)
        return -EPERM;
    struct chunk_batch *b = calloc(1, sizeof(*b));
    if (!b)
        return -ENOMEM;
    b->r = r;
    pthread_mutex_init(&b->lock, NULL);
    b->pending = (chunk_pending_list)VECTOR_INIT;
    if (packed(r)) {
        int ret = pack_writer_new(r, &b->packs);
        if (ret < 0) {
            repo_chunk_batch_free(b);
            return ret;
        }
    }
    *out = b;
    return 0;
}

static int batch_put(struct chunk_batch *b, const struct chunk_id *id, const void *data, size_t len,
                     const uint64_t *zero_blocks, uint64_t *pending_bytes)
{
    struct repo *r = b->r;
    char key[CHUNK_KEY_LEN];
    struct chunk_pending p = {0};

    if (pending_bytes)
        *pending_bytes = 0;
    const uint8_t *file = NULL;
    size_t flen;
    int ret = chunk_prepare(r, id, data, len, zero_blocks, key, &file, &flen);
    if (ret > 0) {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&b->lock);
        b->chunks_existing++;
        return 0;
    }
    if (ret < 0)
        return ret;
    if (b->packs) {
        ret = pack_writer_add(b->packs, id, file, flen, pending_bytes);
        if (ret > 0) {
            ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&b->lock);
            b->chunks_existing++;
        }
        return ret < 0 ? ret : 0;
    }
    ret = store_stage(r->store, key, file, flen, &p.staged);
    if (ret < 0)
        return ret;
    p.bytes = flen;
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&b->lock);
        ret = chunk_pending_list_append(&b->pending, p);
        if (ret == 0) {
            b->pending_bytes += flen;
            if (pending_bytes)
                *pending_bytes = b->pending_bytes;
        }
    }
    if (ret < 0)
        store_discard(r->store, p.staged);
    return ret;
}

int repo_chunk_batch_put(struct chunk_batch *b, const struct chunk_id *id, const void *data,
                         size_t len, uint64_t *pending_bytes)
{
    return batch_put(b, id, data, len, NULL, pending_bytes);
}

int repo_chunk_batch_flush(struct chunk_batch *b)
{
    if (b->packs) {
        uint64_t n = 0, bytes = 0;
        int ret = pack_writer_flush(b->packs, &n, &bytes);
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&b->lock);
        b->chunks_new += n;
        b->bytes_written += bytes;
        return ret;
    }
    chunk_pending_list list;
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&b->lock);
        list = b->pending;
        b->pending = (chunk_pending_list)VECTOR_INIT;
        b->pending_bytes = 0;
    }
    if (!list.len)
        return 0;

    int ret = 0;
    CLEANUP_FREE struct store_staged **staged = calloc(list.len, sizeof(*staged));
    CLEANUP_FREE bool *created = calloc(list.len, sizeof(*created));
    if (!staged || !created) {
        ret = -ENOMEM;
        for (size_t i = 0; i < list.len; i++)
            store_discard(b->r->store, list.ptr[i].staged);
        chunk_pending_list_reset(&list);
        return ret;
    }
    for (size_t i = 0; i < list.len; i++)
        staged[i] = list.ptr[i].staged;
    ret = store_commit(b->r->store, staged, list.len, created);
    uint64_t created_n = 0, existing_n = 0, bytes = 0;
    for (size_t i = 0; i < list.len; i++) {
        if (created[i]) {
            created_n++;
            bytes += list.ptr[i].bytes;
        } else if (ret == 0) {
            existing_n++;
        }
    }
    chunk_pending_list_reset(&list);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&b->lock);
    b->chunks_new += created_n;
    b->chunks_existing += existing_n;
    b->bytes_written += bytes;
    return ret;
}

void repo_chunk_batch_stats(struct chunk_batch *b, uint64_t *chunks_new, uint64_t *chunks_existing,
                            uint64_t *bytes_written)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&b->lock);
    *chunks_new = b->chunks_new;
    *chunks_existing = b->chunks_existing;
    *bytes_written = b->bytes_written;
}

void repo_chunk_batch_free(struct chunk_batch *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->pending.len; i++)
        store_discard(b->r->store, b->pending.ptr[i].staged);
    chunk_pending_list_reset(&b->pending);
    pack_writer_free(b->packs);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

/* ---- chunks with known zero blocks ----
 *
 * Format 3 skips the marked blocks everywhere (ID, container); older formats have no zero
 * blocks: their chunks are the plain bytes, so the marked blocks are cleared first. */

static void chunk_fill_zeros(void *data, size_t len, const uint64_t *zero_blocks)
{
    if (!zero_blocks)
        return;
    for (size_t k = 0; k * CHUNK_BLOCK < len; k++)
        if (chunk_mask_test(zero_blocks, k)) {
            size_t n = len - k * CHUNK_BLOCK < CHUNK_BLOCK ? len - k * CHUNK_BLOCK : CHUNK_BLOCK;
            memset((uint8_t *)data + k * CHUNK_BLOCK, 0, n);
        }
}

bool repo_chunk_is_zero(const void *data, size_t len, const uint64_t *zero_blocks)
{
    if (!zero_blocks)
        return buf_is_zero(data, len);
    for (size_t k = 0; k * CHUNK_BLOCK < len; k++) {
        size_t n = len - k * CHUNK_BLOCK < CHUNK_BLOCK ? len - k * CHUNK_BLOCK : CHUNK_BLOCK;
        if (!chunk_mask_test(zero_blocks, k) &&
            !buf_is_zero((const uint8_t *)data + k * CHUNK_BLOCK, n))
            return false;
    }
    return true;
}

void repo_chunk_id_sparse(const struct repo *r, void *data, size_t len, const uint64_t *zero_blocks,
                          struct chunk_id *id)
{
    if (r->format_version < CHUNK_ID_V3_FORMAT) {
        chunk_fill_zeros(data, len, zero_blocks);
        zero_blocks = NULL;
    }
    /* As repo_chunk_id: only a libcrypto or allocation failure gets here. */
    if (chunk_id_masked(r, data, len, zero_blocks, id) < 0) {
        log_error("cannot compute a chunk ID (out of memory or libcrypto failure)");
        abort();
    }
}

int repo_chunk_batch_put_sparse(struct chunk_batch *b, const struct chunk_id *id, void *data,
                                size_t len, const uint64_t *zero_blocks, uint64_t *pending_bytes)
{
    if (b->r->format_version < CHUNK_ID_V3_FORMAT) {
        chunk_fill_zeros(data, len, zero_blocks);
        zero_blocks = NULL;
    }
    return batch_put(b, id, data, len, zero_blocks, pending_bytes);
}

int repo_chunk_read_sparse(struct repo *r, const struct chunk_id *id, void *buf, size_t cap,
                           size_t *len, uint64_t *zero_blocks)
{
    return chunk_get(r, id, false, buf, cap, len, zero_blocks);
}

int repo_chunk_get_sparse(struct repo *r, const struct chunk_id *id, void *buf, size_t cap,
                          size_t *len, uint64_t *zero_blocks)
{
    return chunk_get(r, id, true, buf, cap, len, zero_blocks);
}
