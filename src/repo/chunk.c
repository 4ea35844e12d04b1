/* Chunks of the backup repository: content-addressed containers under chunks/<ab>/<id hex>.
 * IDs are SHA-256 (plain repositories) or HMAC-SHA-256 under the ID key (encrypted ones); a
 * chunk is written once, atomically, and the first of concurrent writers of one ID wins.
 */
#include "repo_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "core/cleanup.h"
#include "core/log.h"

#define CHUNK_IDENT_PREFIX "chunk:"
#define CHUNK_IDENT_LEN    (sizeof(CHUNK_IDENT_PREFIX) + 2 * HASH_SIZE)
#define CHUNK_SUBDIR_LEN   2 /* hex digits of the first ID byte */

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

int chunk_id_compute(const struct repo *r, const void *data, size_t len, struct chunk_id *id)
{
    return r->encrypted ? hmac_sha256(r->id_key, data, len, id->b) : hash_sha256(data, len, id->b);
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

bool chunk_name_valid(const char *name)
{
    for (size_t i = 0; i < 2 * HASH_SIZE; i++) {
        char c = name[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return name[2 * HASH_SIZE] == '\0';
}

static void chunk_ident(const char *hex, char out[CHUNK_IDENT_LEN])
{
    snprintf(out, CHUNK_IDENT_LEN, CHUNK_IDENT_PREFIX "%s", hex);
}

/* Open chunks/ab, creating it (durably) when it is missing. */
static int chunk_dir_open(struct repo *r, const char *dir, int *fd)
{
    int ret = repo_open_dir(r->dirfd, dir, fd);
    if (ret != -ENOENT)
        return ret;
    CLEANUP_CLOSE int chunks = -1;
    ret = repo_open_dir(r->dirfd, REPO_CHUNKS_DIR, &chunks);
    if (ret == 0)
        ret = repo_mkdir(chunks, dir + sizeof(REPO_CHUNKS_DIR));
    return ret < 0 ? ret : repo_open_dir(r->dirfd, dir, fd);
}

bool repo_chunk_exists(struct repo *r, const struct chunk_id *id)
{
    char dir[CHUNK_DIR_LEN], name[CHUNK_NAME_LEN], rel[CHUNK_DIR_LEN + CHUNK_NAME_LEN];
    struct stat st;
    chunk_names(id, dir, name);
    snprintf(rel, sizeof(rel), "%s/%s", dir, name);
    return fstatat(r->dirfd, rel, &st, 0) == 0;
}

int repo_chunk_put(struct repo *r, const struct chunk_id *id, const void *data, size_t len,
                   bool *stored, uint64_t *bytes_written)
{
    char dir[CHUNK_DIR_LEN], name[CHUNK_NAME_LEN], ident[CHUNK_IDENT_LEN];
    bool created = false;

    if (repo_check_writable(r, NULL, 0) < 0)
        return -EPERM;
    if (stored)
        *stored = false;
    if (bytes_written)
        *bytes_written = 0;
    if (len > r->chunk_size)
        return -EINVAL;
    if (repo_chunk_exists(r, id))
        return 0;

    chunk_names(id, dir, name);
    chunk_ident(name, ident);
    const uint8_t *file = NULL;
    size_t flen;
    int ret = container_seal_thread(r, ident, data, len, &file, &flen);
    if (ret < 0)
        return ret;
    CLEANUP_CLOSE int dfd = -1;
    ret = chunk_dir_open(r, dir, &dfd);
    if (ret == 0)
        ret = repo_write_file(dfd, name, file, flen, false, &created);
    if (ret < 0)
        return ret;
    if (stored)
        *stored = created;
    if (bytes_written)
        *bytes_written = created ? flen : 0;
    return 0;
}

static int chunk_get(struct repo *r, const struct chunk_id *id, bool checksum, void *buf,
                     size_t cap, size_t *len)
{
    char dir[CHUNK_DIR_LEN], name[CHUNK_NAME_LEN], ident[CHUNK_IDENT_LEN];
    char rel[CHUNK_DIR_LEN + CHUNK_NAME_LEN];
    size_t flen, fcap;
    struct chunk_id got;
    const size_t max = (size_t)r->chunk_size + CONTAINER_MAX_OVERHEAD;

    *len = 0;
    chunk_names(id, dir, name);
    chunk_ident(name, ident);
    snprintf(rel, sizeof(rel), "%s/%s", dir, name);
    uint8_t *file = container_read_buffer_thread(max, &fcap);
    if (!file)
        return -ENOMEM;
    int ret = repo_read_file_direct(r->dirfd, rel, max, file, fcap, &flen);
    if (ret < 0)
        return ret;
    ret = checksum ? container_unseal(r, ident, file, flen, r->chunk_size, buf, cap, len)
                   : container_unseal_data(r, ident, file, flen, r->chunk_size, buf, cap, len);
    if (ret < 0)
        return ret;
    ret = chunk_id_compute(r, buf, *len, &got);
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
    return chunk_get(r, id, true, buf, cap, len);
}

int repo_chunk_read(struct repo *r, const struct chunk_id *id, void *buf, size_t cap, size_t *len)
{
    return chunk_get(r, id, false, buf, cap, len);
}

bool chunk_subdir_valid(const char *name)
{
    return strlen(name) == CHUNK_SUBDIR_LEN && strspn(name, "0123456789abcdef") == CHUNK_SUBDIR_LEN;
}

static int chunk_subdir_foreach(int subfd, const char *sub,
                                int (*fn)(void *opaque, const struct chunk_id *id), void *opaque)
{
    DIR *d = fdopendir(subfd);
    if (!d) {
        int ret = -errno;
        close(subfd);
        return ret;
    }
    struct dirent *de;
    int ret = 0;
    errno = 0;
    while ((de = readdir(d))) {
        struct chunk_id id;
        if (!chunk_name_valid(de->d_name) || strncmp(de->d_name, sub, CHUNK_SUBDIR_LEN) ||
            chunk_id_from_hex(de->d_name, &id) < 0)
            continue;
        ret = fn(opaque, &id);
        if (ret < 0)
            break;
        errno = 0;
    }
    if (ret == 0 && errno)
        ret = -errno;
    closedir(d);
    return ret;
}

int repo_chunk_foreach(struct repo *r, int (*fn)(void *opaque, const struct chunk_id *id),
                       void *opaque)
{
    int fd;
    int ret = repo_open_dir(r->dirfd, REPO_CHUNKS_DIR, &fd);
    if (ret < 0)
        return ret;
    DIR *d = fdopendir(fd);
    if (!d) {
        ret = -errno;
        close(fd);
        return ret;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        int subfd;
        if (!chunk_subdir_valid(de->d_name))
            continue;
        ret = repo_open_dir(fd, de->d_name, &subfd);
        if (ret == -ENOENT || ret == -ENOTDIR) {
            ret = 0;
            continue;
        }
        if (ret < 0)
            break;
        ret = chunk_subdir_foreach(subfd, de->d_name, fn, opaque);
        if (ret < 0)
            break;
    }
    closedir(d);
    return ret;
}

int repo_chunk_delete(struct repo *r, const struct chunk_id *id)
{
    char dir[CHUNK_DIR_LEN], name[CHUNK_NAME_LEN];
    CLEANUP_CLOSE int dfd = -1;
    chunk_names(id, dir, name);
    int ret = repo_open_dir(r->dirfd, dir, &dfd);
    if (ret < 0)
        return ret;
    if (unlinkat(dfd, name, 0) < 0)
        return -errno;
    return fsync(dfd) < 0 ? -errno : 0;
}

/* ---- batches ----
 *
 * A chunk put into a batch goes to a temporary file in its chunks/ab directory without an
 * fsync.  A flush makes every pending file durable with one syncfs and only then renames them
 * into place, so that a chunk name can never point at data that is not on disk (a later
 * backup trusts an existing name without reading it).  Their directory entries become durable
 * with the syncfs of repo_backup_commit() before backup.json is written.  This replaces two
 * fsyncs (file and directory) per chunk by one syncfs per flush. */

#define CHUNK_SUBDIRS 256 /* chunks/00 .. chunks/ff */

struct chunk_pending {
    uint8_t subdir;            /* first ID byte: chunks/<subdir> */
    char name[CHUNK_NAME_LEN]; /* the chunk's file name */
    char tmp[NAME_MAX + 1];    /* its temporary file */
    uint64_t bytes;            /* container size */
};
DEFINE_VECTOR_TYPE(chunk_pending_list, struct chunk_pending);

struct chunk_batch {
    struct repo *r;
    pthread_mutex_t lock;         /* the fields below */
    int subdir_fd[CHUNK_SUBDIRS]; /* opened on demand; -1 before */
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
    for (size_t i = 0; i < CHUNK_SUBDIRS; i++)
        b->subdir_fd[i] = -1;
    b->pending = (chunk_pending_list)VECTOR_INIT;
    *out = b;
    return 0;
}

/* The fd of chunks/<sub>, created (not yet durably: the flush's syncfs does that) when
 * missing.  Called with b->lock held. */
static int batch_subdir_locked(struct chunk_batch *b, uint8_t sub, int *fd)
{
    if (b->subdir_fd[sub] >= 0) {
        *fd = b->subdir_fd[sub];
        return 0;
    }
    char name[CHUNK_SUBDIR_LEN + 1];
    snprintf(name, sizeof(name), "%02x", sub);
    CLEANUP_CLOSE int chunks = -1;
    int ret = repo_open_dir(b->r->dirfd, REPO_CHUNKS_DIR, &chunks);
    if (ret < 0)
        return ret;
    if (mkdirat(chunks, name, REPO_DIR_MODE) < 0 && errno != EEXIST)
        return repo_write_errno(errno);
    ret = repo_open_dir(chunks, name, &b->subdir_fd[sub]);
    if (ret < 0)
        return ret;
    *fd = b->subdir_fd[sub];
    return 0;
}

int repo_chunk_batch_put(struct chunk_batch *b, const struct chunk_id *id, const void *data,
                         size_t len, uint64_t *pending_bytes)
{
    struct repo *r = b->r;
    char dir[CHUNK_DIR_LEN], ident[CHUNK_IDENT_LEN];
    struct chunk_pending p = {.subdir = id->b[0]};

    if (pending_bytes)
        *pending_bytes = 0;
    if (len > r->chunk_size)
        return -EINVAL;
    if (repo_chunk_exists(r, id)) {
        pthread_mutex_lock(&b->lock);
        b->chunks_existing++;
        pthread_mutex_unlock(&b->lock);
        return 0;
    }
    chunk_names(id, dir, p.name);
    chunk_ident(p.name, ident);
    const uint8_t *file = NULL;
    size_t flen;
    int ret = container_seal_thread(r, ident, data, len, &file, &flen);
    if (ret < 0)
        return ret;
    int dfd = -1;
    pthread_mutex_lock(&b->lock);
    ret = batch_subdir_locked(b, p.subdir, &dfd);
    pthread_mutex_unlock(&b->lock);
    if (ret < 0)
        return ret;
    ret = repo_write_tmp_direct(dfd, p.name, file, flen, p.tmp);
    if (ret < 0)
        return ret;
    p.bytes = flen;
    pthread_mutex_lock(&b->lock);
    ret = chunk_pending_list_append(&b->pending, p);
    if (ret == 0) {
        b->pending_bytes += flen;
        if (pending_bytes)
            *pending_bytes = b->pending_bytes;
    }
    pthread_mutex_unlock(&b->lock);
    if (ret < 0)
        unlinkat(dfd, p.tmp, 0);
    return ret;
}

int repo_chunk_batch_flush(struct chunk_batch *b)
{
    pthread_mutex_lock(&b->lock);
    chunk_pending_list list = b->pending;
    b->pending = (chunk_pending_list)VECTOR_INIT;
    b->pending_bytes = 0;
    pthread_mutex_unlock(&b->lock);

    int ret = 0;
    if (list.len && syncfs(b->r->dirfd) < 0)
        ret = repo_write_errno(errno);
    uint64_t created_n = 0, existing_n = 0, bytes = 0;
    for (size_t i = 0; i < list.len; i++) {
        struct chunk_pending *p = &list.ptr[i];
        int dfd = b->subdir_fd[p->subdir]; /* opened by the put that queued p */
        if (ret < 0) {
            unlinkat(dfd, p->tmp, 0);
            continue;
        }
        bool created = false;
        ret = repo_rename_tmp(dfd, p->tmp, p->name, false, &created);
        if (ret < 0)
            continue;
        if (created) {
            created_n++;
            bytes += p->bytes;
        } else {
            existing_n++;
        }
    }
    chunk_pending_list_reset(&list);
    pthread_mutex_lock(&b->lock);
    b->chunks_new += created_n;
    b->chunks_existing += existing_n;
    b->bytes_written += bytes;
    pthread_mutex_unlock(&b->lock);
    return ret;
}

void repo_chunk_batch_stats(struct chunk_batch *b, uint64_t *chunks_new, uint64_t *chunks_existing,
                            uint64_t *bytes_written)
{
    pthread_mutex_lock(&b->lock);
    *chunks_new = b->chunks_new;
    *chunks_existing = b->chunks_existing;
    *bytes_written = b->bytes_written;
    pthread_mutex_unlock(&b->lock);
}

void repo_chunk_batch_free(struct chunk_batch *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->pending.len; i++)
        unlinkat(b->subdir_fd[b->pending.ptr[i].subdir], b->pending.ptr[i].tmp, 0);
    chunk_pending_list_reset(&b->pending);
    for (size_t i = 0; i < CHUNK_SUBDIRS; i++)
        if (b->subdir_fd[i] >= 0)
            close(b->subdir_fd[i]);
    pthread_mutex_destroy(&b->lock);
    free(b);
}
