/* Builds a repository with a million chunks quickly, for bench/bench-million.sh (issue 19:
 * "a repository with a million chunks stays under 128 MiB RSS"): N chunks of 64 KiB, each one
 * non-zero 4 KiB block (the others holes) holding a counter, so that the chunks are distinct
 * but compress to almost nothing; stored through one chunk batch as a backup engine does.
 * Then two backups of VM "million" reference them: the first a disk of all N chunks, the
 * second a disk of the even ones only, so that pruning the first leaves every pack half dead
 * (gc repacks all of them).
 *
 *   bench_million REPO_DIR CHUNKS        (REPO_DIR must not exist; format 3, chunk size 64 KiB)
 *
 * Prints seconds and peak RSS (VmHWM) as one JSON line.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "repo/repo.h"

#define CHUNK       (64u << 10)
#define BLOCKS      (CHUNK / CHUNK_BLOCK)
#define FLUSH_BYTES ((uint64_t)512 << 20) /* as src/backup/backup.c */
#define VM          "million"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long vm_hwm_kib(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, "VmHWM:", 6))
            kib = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return kib;
}

/* Chunk i: block i % BLOCKS holds i + 1 in its first 8 bytes, the rest are holes (mask). */
static void make_chunk(uint64_t i, uint8_t *buf, uint64_t *mask)
{
    size_t k = i % BLOCKS;
    memset(mask, 0, CHUNK_MASK_WORDS * sizeof(*mask));
    for (size_t j = 0; j < BLOCKS; j++)
        if (j != k)
            chunk_mask_set(mask, j);
    memset(buf + k * CHUNK_BLOCK, 0, CHUNK_BLOCK);
    uint64_t v = i + 1;
    memcpy(buf + k * CHUNK_BLOCK, &v, sizeof(v));
}

/* One backup of VM with one disk referencing chunks 0, step, 2 * step ... of ids. */
static int add_backup(struct repo *r, const struct chunk_id *ids, uint64_t n, uint64_t step,
                      const char *disk, int64_t time)
{
    char err[512] = "";
    struct backup_writer *w = NULL;
    struct manifest m;
    int ret = repo_backup_begin(r, VM, time, 0, &w, err, sizeof(err));
    if (ret < 0) {
        fprintf(stderr, "bench_million: %s\n", err);
        return ret;
    }
    ret = manifest_new(&m, disk, n * CHUNK, CHUNK);
    for (uint64_t i = 0; ret == 0 && i < n; i += step)
        ret = manifest_append(&m, i, &ids[i]);
    if (ret == 0)
        ret = repo_backup_add_disk(w, &m);
    struct backup b = {.snapshot_id = "bench", .server = "bench"};
    if (ret == 0)
        ret = repo_backup_commit(w, &b);
    else
        repo_backup_abort(w);
    manifest_free(&m);
    b.snapshot_id = NULL;
    b.server = NULL;
    free(b.id);
    free(b.vm_id);
    for (size_t i = 0; i < b.disks.len; i++) {
        free(b.disks.ptr[i].name);
        free(b.disks.ptr[i].change_id);
        free(b.disks.ptr[i].manifest);
    }
    free(b.disks.ptr);
    return ret;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_million REPO_DIR CHUNKS\n");
        return 2;
    }
    uint64_t n = strtoull(argv[2], NULL, 10);
    char err[512] = "";
    struct repo_init_options opt = {.chunk_size = CHUNK};
    struct repo *r = NULL;
    struct chunk_batch *b = NULL;
    if (repo_init(argv[1], &opt, err, sizeof(err)) < 0 ||
        repo_open(argv[1], NULL, &r, err, sizeof(err)) < 0) {
        fprintf(stderr, "bench_million: %s\n", err);
        return 1;
    }
    static uint64_t mask[CHUNK_MASK_WORDS];
    uint8_t *buf = aligned_alloc(CHUNK_BLOCK, CHUNK);
    struct chunk_id *ids = malloc((n ? n : 1) * sizeof(*ids));
    if (!buf || !ids || repo_chunk_batch_new(r, &b) < 0) {
        fprintf(stderr, "bench_million: out of memory\n");
        return 1;
    }
    double t0 = now();
    int ret = 0;
    for (uint64_t i = 0; ret == 0 && i < n; i++) {
        uint64_t pending = 0;
        make_chunk(i, buf, mask);
        repo_chunk_id_sparse(r, buf, CHUNK, mask, &ids[i]);
        ret = repo_chunk_batch_put_sparse(b, &ids[i], buf, CHUNK, mask, &pending);
        if (ret == 0 && pending >= FLUSH_BYTES)
            ret = repo_chunk_batch_flush(b);
    }
    if (ret == 0)
        ret = repo_chunk_batch_flush(b);
    repo_chunk_batch_free(b);
    if (ret == 0)
        ret = add_backup(r, ids, n, 1, "all", 1700000000);
    if (ret == 0)
        ret = add_backup(r, ids, n, 2, "even", 1700086400);
    repo_close(r);
    free(ids);
    free(buf);
    if (ret < 0) {
        fprintf(stderr, "bench_million: %s\n", strerror(-ret));
        return 1;
    }
    printf("{\"chunks\": %" PRIu64 ", \"seconds\": %.2f, \"peak_rss_kib\": %ld}\n", n, now() - t0,
           vm_hwm_kib());
    return 0;
}
