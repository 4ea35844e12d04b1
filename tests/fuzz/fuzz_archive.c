/* Fuzz target: the archive importer (src/backup/archive_import.c), which reads UNTRUSTED tar and
 * OVA files, possibly compressed.  Each input is imported from memory into one repository (64
 * KiB chunks) on the in-memory store (repo/store_mem.c), so no file is written.  Properties: an
 * import that fails says why, with one of the documented codes, and leaves no backup visible; one
 * that succeeds leaves exactly one backup, whose disks are those it reported and whose manifests
 * read back with the sizes vm.json gave.  The backup is then deleted and, every GC_EVERY inputs, gc
 * removes the chunks left behind, so the repository stays small.  Disks are limited to MAX_DISK
 * bytes: the importer hashes every byte of a disk, holes included, so a size is a cost in time.
 *
 * A custom mutator recomputes the checksum of every tar header after libFuzzer's mutation, so
 * that mutated header fields (sizes, types, names) reach the importer instead of stopping at
 * libarchive's checksum test.  The seeds (corpus/archive/) were written by `vmexport export`
 * from small backups. */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup/archive_import.h"
#include "repo/repo.h"
#include "repo/store_mem.h"

#define MAX_DISK     (4u << 20)
#define GC_EVERY     256
#define ERR_LEN      2048
#define LOCK_TIMEOUT 1
/* ustar header: 512 bytes, "ustar" at 257, the checksum field (8 bytes) at 148, which counts as
 * spaces while the sum of the header's bytes is taken and holds it as 6 octal digits, NUL, space.
 */
#define TAR_BLOCK         512
#define TAR_MAGIC_OFFSET  257
#define TAR_CHKSUM_OFFSET 148
#define TAR_CHKSUM_LEN    8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

/* Give every block that looks like a ustar header its correct checksum. */
static void tar_fix_checksums(uint8_t *data, size_t size)
{
    for (size_t at = 0; at + TAR_BLOCK <= size; at += TAR_BLOCK) {
        uint8_t *h = data + at;
        if (memcmp(h + TAR_MAGIC_OFFSET, "ustar", 5))
            continue;
        memset(h + TAR_CHKSUM_OFFSET, ' ', TAR_CHKSUM_LEN);
        unsigned sum = 0;
        for (size_t i = 0; i < TAR_BLOCK; i++)
            sum += h[i];
        char field[TAR_CHKSUM_LEN + 1];
        snprintf(field, sizeof(field), "%06o", sum & 0777777);
        memcpy(h + TAR_CHKSUM_OFFSET, field, 6);
        h[TAR_CHKSUM_OFFSET + 6] = '\0';
    }
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    (void)seed;
    size = LLVMFuzzerMutate(data, size, max_size);
    tar_fix_checksums(data, size);
    return size;
}

static struct store *store;
static struct repo *repo;

static void cleanup(void)
{
    repo_close(repo);
    repo = NULL;
    store_close(store);
    store = NULL;
}

static void setup(void)
{
    char err[ERR_LEN] = "";
    assert(store_mem_new("fuzz", &store) == 0);
    atexit(cleanup);
    struct repo_init_options io = {.chunk_size = REPO_MIN_CHUNK_SIZE};
    int r = repo_init_store(store, &io, err, sizeof(err));
    if (r == 0)
        r = repo_open_store(store, NULL, &repo, err, sizeof(err));
    if (r < 0)
        fprintf(stderr, "fuzz_archive: repository in memory: %s\n", err);
    assert(r == 0);
}

static size_t backups(void)
{
    backup_list l = {0};
    assert(repo_backup_list(repo, NULL, &l) == 0);
    size_t n = l.len;
    backup_list_free(&l);
    return n;
}

/* The imported backup is what the importer reported. */
static void check_backup(const struct archive_import_result *res)
{
    assert(backups() == 1);
    struct backup *b = NULL;
    assert(repo_backup_get(repo, res->backup_id, &b) == 0);
    assert(!strcmp(b->vm_id, res->vm_id));
    assert(b->disks.len == res->disks);
    for (size_t i = 0; i < b->disks.len; i++) {
        struct manifest m;
        assert(repo_manifest_read(repo, b, b->disks.ptr[i].name, &m) == 0);
        assert(m.disk_size == b->disks.ptr[i].size && m.disk_size <= MAX_DISK);
        manifest_free(&m);
    }
    backup_free(b);
    assert(repo_backup_delete(repo, res->backup_id) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned runs;
    if (!repo)
        setup();
    struct archive_import_options o = {
        .repo = repo,
        .fd = -1,
        .data = size ? data : (const void *)"",
        .size = size,
        .lock_timeout = LOCK_TIMEOUT,
        .max_disk_size = MAX_DISK,
    };
    struct archive_import_result res;
    char err[ERR_LEN] = "";
    int r = archive_import(&o, &res, err, sizeof(err));
    if (r == 0) {
        check_backup(&res);
    } else {
        if (!err[0] || !(r == -EINVAL || r == -EIO || r == -EBADMSG || r == -EFBIG ||
                         r == -EPROTONOSUPPORT || r == -ENOMEM)) {
            fprintf(stderr, "fuzz_archive: import failed with %d (%s): '%s'\n", r, strerror(-r),
                    err);
            abort();
        }
        assert(res.backup_id == NULL);
        assert(backups() == 0);
    }
    archive_import_result_free(&res);
    if (++runs % GC_EVERY == 0) {
        struct gc_stats st;
        assert(repo_gc(repo, false, &st, err, sizeof(err)) == 0);
    }
    return 0;
}
