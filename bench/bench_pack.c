/* Chunk-store benchmark for repository format 3 (issue 19): hash and store N chunks of a
 * sparse disk, each chunk holding one non-zero CHUNK_BLOCK block with the rest marked as holes
 * (what the hole-aware backup engine hands the repository), through one chunk batch flushed
 * every 512 MiB of pending containers as the engine does.  Prints seconds, chunks, objects
 * written and peak RSS (VmHWM) as one JSON line; then (a fresh handle, as a restore) reads
 * every chunk back with repo_chunk_read_sparse and reports that time too.
 *
 *   bench_pack REPO_DIR FORMAT_VERSION [CHUNKS]     (REPO_DIR must not exist)
 *
 * Format 2 stores each chunk as its own file and hashes and compresses every chunk whole; 3
 * hashes and stores the non-zero block only and packs the containers.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "repo/repo.h"

#define DEFAULT_CHUNKS 65536
#define FLUSH_BYTES    ((uint64_t)512 << 20) /* as src/backup/backup.c */
#define CHUNK          REPO_DEFAULT_CHUNK_SIZE

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

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_pack REPO_DIR FORMAT_VERSION [CHUNKS]\n");
        return 2;
    }
    unsigned format = (unsigned)atoi(argv[2]);
    uint64_t n = argc > 3 ? strtoull(argv[3], NULL, 10) : DEFAULT_CHUNKS;
    char err[512] = "";
    struct repo_init_options opt = {.chunk_size = CHUNK, .format_version = format};
    struct repo *r = NULL;
    struct chunk_batch *b = NULL;
    if (repo_init(argv[1], &opt, err, sizeof(err)) < 0 ||
        repo_open(argv[1], NULL, &r, err, sizeof(err)) < 0) {
        fprintf(stderr, "bench_pack: %s\n", err);
        return 1;
    }
    static uint64_t mask[CHUNK_MASK_WORDS];
    uint8_t *buf = aligned_alloc(CHUNK_BLOCK, CHUNK);
    if (!buf || repo_chunk_batch_new(r, &b) < 0) {
        fprintf(stderr, "bench_pack: out of memory\n");
        return 1;
    }
    double t0 = now();
    for (uint64_t i = 0; i < n; i++) {
        /* One block of data at a place that moves with i; the others are holes, marked. */
        size_t k = i % (CHUNK / CHUNK_BLOCK);
        memset(mask, 0, sizeof(mask));
        for (size_t j = 0; j < CHUNK / CHUNK_BLOCK; j++)
            if (j != k)
                chunk_mask_set(mask, j);
        uint64_t x = 0x9e3779b97f4a7c15ULL * (i + 1);
        for (size_t j = 0; j < CHUNK_BLOCK; j += 8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            memcpy(buf + k * CHUNK_BLOCK + j, &x, 8);
        }
        struct chunk_id id;
        uint64_t pending = 0;
        repo_chunk_id_sparse(r, buf, CHUNK, mask, &id);
        int ret = repo_chunk_batch_put_sparse(b, &id, buf, CHUNK, mask, &pending);
        if (ret == 0 && pending >= FLUSH_BYTES)
            ret = repo_chunk_batch_flush(b);
        if (ret < 0) {
            fprintf(stderr, "bench_pack: chunk %" PRIu64 ": %s\n", i, strerror(-ret));
            return 1;
        }
    }
    int ret = repo_chunk_batch_flush(b);
    double t = now() - t0;
    uint64_t made, existing, bytes;
    repo_chunk_batch_stats(b, &made, &existing, &bytes);
    repo_chunk_batch_free(b);
    repo_close(r);
    if (ret < 0) {
        fprintf(stderr, "bench_pack: flush: %s\n", strerror(-ret));
        return 1;
    }
    long rss_store = vm_hwm_kib();

    /* Read back: the IDs again (cheap: one block each), each chunk read sparse. */
    if (repo_open(argv[1], NULL, &r, err, sizeof(err)) < 0) {
        fprintf(stderr, "bench_pack: %s\n", err);
        return 1;
    }
    double t1 = now();
    for (uint64_t i = 0; i < n; i++) {
        size_t k = i % (CHUNK / CHUNK_BLOCK), len = 0;
        memset(mask, 0, sizeof(mask));
        for (size_t j = 0; j < CHUNK / CHUNK_BLOCK; j++)
            if (j != k)
                chunk_mask_set(mask, j);
        uint64_t x = 0x9e3779b97f4a7c15ULL * (i + 1);
        for (size_t j = 0; j < CHUNK_BLOCK; j += 8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            memcpy(buf + k * CHUNK_BLOCK + j, &x, 8);
        }
        struct chunk_id id;
        repo_chunk_id_sparse(r, buf, CHUNK, mask, &id);
        ret = repo_chunk_read_sparse(r, &id, buf, CHUNK, &len, mask);
        if (ret < 0) {
            fprintf(stderr, "bench_pack: reading chunk %" PRIu64 ": %s\n", i, strerror(-ret));
            return 1;
        }
    }
    double t_read = now() - t1;
    repo_close(r);
    free(buf);
    printf("{\"format\": %u, \"chunks\": %" PRIu64 ", \"new\": %" PRIu64
           ", \"bytes_written\": %" PRIu64 ", \"seconds\": %.2f, \"peak_rss_kib\": %ld"
           ", \"read_seconds\": %.2f, \"peak_rss_kib_after_read\": %ld}\n",
           format, n, made, bytes, t, rss_store, t_read, vm_hwm_kib());
    return 0;
}
