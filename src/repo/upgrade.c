/* repo upgrade --format-version 3 (see repo.h, repo_upgrade_copy): every committed backup of an
 * older repository copied into a new format-3 one: the same backup IDs, VMs, times, metadata
 * and definitions; each chunk read (checked against its old ID), given its format-3 ID (zero
 * blocks skipped; all-zero chunks become absent entries) and stored through a chunk batch into
 * packs.  The caller swaps the directories (cmd_repo.c).
 */
#include "repo_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "core/cleanup.h"

/* Flush the batch when this many container bytes wait (as the backup engines do). */
#define UPGRADE_FLUSH_BYTES ((uint64_t)512 << 20)

static char *dup_or_null(const char *s, bool *fail)
{
    char *d = s ? strdup(s) : NULL;
    if (s && !d)
        *fail = true;
    return d;
}

/* Copy one disk of backup b into the writer w; chunks through batch. */
static int copy_disk(struct repo *src, struct repo *dst, struct chunk_batch *batch,
                     struct backup_writer *w, const struct backup *b, const char *disk,
                     uint8_t *buf, char *err, size_t errlen)
{
    struct manifest m, nm;
    int ret = repo_manifest_read(src, b, disk, &m);
    if (ret < 0) {
        repo_set_err(err, errlen, "backup %s, disk %s: cannot read the manifest: %s", b->id, disk,
                     ret == -EBADMSG ? "damaged" : strerror(-ret));
        return ret;
    }
    ret = manifest_new(&nm, m.disk, m.disk_size, m.chunk_size);
    if (ret < 0) {
        manifest_free(&m);
        return ret;
    }
    bool fail = false;
    nm.change_id = dup_or_null(m.change_id, &fail);
    nm.snapshot_path = dup_or_null(m.snapshot_path, &fail);
    if (fail)
        ret = -ENOMEM;
    for (size_t i = 0; ret == 0 && i < m.n_entries; i++) {
        size_t len = 0;
        uint64_t pending = 0;
        struct chunk_id id;
        ret = repo_chunk_read(src, &m.e[i].id, buf, m.chunk_size, &len);
        if (ret < 0) {
            char hex[2 * HASH_SIZE + 1];
            chunk_id_to_hex(&m.e[i].id, hex);
            repo_set_err(err, errlen, "backup %s, disk %s: chunk %s: %s", b->id, disk, hex,
                         ret == -EBADMSG  ? "damaged"
                         : ret == -ENOENT ? "missing"
                                          : strerror(-ret));
            break;
        }
        if (len != manifest_chunk_len(&m, m.e[i].idx)) {
            ret = -EBADMSG;
            repo_set_err(err, errlen, "backup %s, disk %s: chunk %" PRIu64 " has the wrong length",
                         b->id, disk, m.e[i].idx);
            break;
        }
        if (repo_chunk_is_zero(buf, len, NULL))
            continue; /* format 3: an all-zero chunk is no chunk */
        repo_chunk_id(dst, buf, len, &id);
        ret = repo_chunk_batch_put(batch, &id, buf, len, &pending);
        if (ret == 0 && pending >= UPGRADE_FLUSH_BYTES)
            ret = repo_chunk_batch_flush(batch);
        if (ret == 0)
            ret = manifest_append(&nm, m.e[i].idx, &id);
    }
    if (ret == 0)
        ret = repo_backup_add_disk(w, &nm);
    manifest_free(&m);
    manifest_free(&nm);
    return ret;
}

int repo_upgrade_copy(struct repo *src, struct repo *dst,
                      void (*progress)(void *opaque, const struct backup *b), void *opaque,
                      char *err, size_t errlen)
{
    backup_list l = VECTOR_INIT;
    struct chunk_batch *batch = NULL;
    if (err && errlen)
        *err = '\0';
    if (repo_format_version(dst) < REPO_PACKS_FORMAT || src->chunk_size != dst->chunk_size)
        return -EINVAL;
    CLEANUP_FREE uint8_t *buf = malloc(src->chunk_size);
    int ret = buf ? repo_backup_list(src, NULL, &l) : -ENOMEM;
    if (ret == 0)
        ret = repo_chunk_batch_new(dst, &batch);
    for (size_t i = 0; ret == 0 && i < l.len; i++) {
        struct backup *b = l.ptr[i];
        struct backup_writer *w = NULL;
        if (progress)
            progress(opaque, b);
        dst->upgrade_backup_id = b->id; /* the backup keeps its ID */
        ret = repo_backup_begin(dst, b->vm_id, b->time, 0, &w, err, errlen);
        dst->upgrade_backup_id = NULL;
        if (ret < 0)
            break;
        for (size_t k = 0; ret == 0 && k < b->disks.len; k++)
            ret = copy_disk(src, dst, batch, w, b, b->disks.ptr[k].name, buf, err, errlen);
        if (ret == 0)
            ret = repo_chunk_batch_flush(batch); /* the chunks durable before backup.json */
        if (ret == 0)
            ret = repo_backup_commit(w, b);
        if (ret < 0) {
            repo_backup_abort(w);
            if (err && errlen && !*err)
                repo_set_err(err, errlen, "backup %s: %s", b->id, strerror(-ret));
        }
    }
    repo_chunk_batch_free(batch);
    backup_list_free(&l);
    if (ret < 0 && err && errlen && !*err)
        repo_set_err(err, errlen, "%s: %s", src->path, strerror(-ret));
    return ret;
}
