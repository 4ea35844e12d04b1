/* Benchmark of the extent map diff (extent_list_diff() and extent_diff_stream()).
 *
 * Builds a base map of N extents (default 1,000,000) and a new map derived from it the way a
 * day of guest writes on a reflinked image looks: about 1% of the extents rewritten in part
 * (split in three, btrfs-style) or whole, some punched, some now shared, the rest untouched.
 * Then times the diff over several repetitions, once into lists and once streaming into
 * counting sinks that build nothing.
 *
 *   bench_diff [extents [repetitions]]
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/extent.h"

#define BLOCK 4096ull

static uint64_t rng_state = 0x5eed5eed5eedull;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* In [0, n); n > 0. */
static uint64_t rnd(uint64_t n)
{
    return rng_next() % n;
}

static int push(extent_list *l, uint64_t start, uint64_t length, uint64_t physical, uint32_t flags)
{
    struct extent e = {.start = start, .length = length, .physical = physical, .flags = flags};
    return extent_list_append(l, e);
}

/* n extents of 4 KiB to 1 MiB with some holes between; returns the file size in *size. */
static int build_base(extent_list *l, size_t n, uint64_t *size)
{
    uint64_t pos = 0, phys = 1ull << 30;
    int r = extent_list_reserve(l, n);
    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        if (rnd(10) == 0)
            pos += (1 + rnd(64)) * BLOCK; /* a hole */
        uint64_t len = (1 + rnd(256)) * BLOCK;
        uint32_t flags = rnd(50) == 0 ? EXTENT_UNWRITTEN : rnd(10) == 0 ? EXTENT_SHARED : 0;
        if ((r = push(l, pos, len, phys, flags)) < 0)
            return r;
        pos += len;
        phys += len + (1 + rnd(16)) * BLOCK; /* never contiguous with the next */
    }
    *size = pos + (rnd(2) ? 0 : (1 + rnd(16)) * BLOCK);
    return 0;
}

/* The new map: base with ~1% of its extents rewritten (mostly a split around a few new
 * blocks, sometimes whole), ~0.3% punched, ~2% marked shared, the rest unchanged. */
static int build_new(const extent_list *base, extent_list *l, uint64_t *next_phys)
{
    int r = extent_list_reserve(l, base->len + base->len / 40 + 16);
    if (r < 0)
        return r;
    for (size_t i = 0; i < base->len; i++) {
        const struct extent *e = &base->ptr[i];
        uint64_t blocks = e->length / BLOCK;
        uint64_t dice = rnd(10000);
        if (dice < 80) { /* a few blocks rewritten: the extent splits in up to three */
            uint64_t at = rnd(blocks), k = 1 + rnd(blocks - at < 16 ? blocks - at : 16);
            uint64_t x = at * BLOCK, y = (at + k) * BLOCK;
            if (x > 0 && (r = push(l, e->start, x, e->physical, e->flags)) < 0)
                return r;
            if ((r = push(l, e->start + x, y - x, *next_phys, 0)) < 0)
                return r;
            *next_phys += y - x + BLOCK;
            if (y < e->length &&
                (r = push(l, e->start + y, e->length - y, e->physical + y, e->flags)) < 0)
                return r;
        } else if (dice < 100) { /* rewritten whole */
            if ((r = push(l, e->start, e->length, *next_phys, 0)) < 0)
                return r;
            *next_phys += e->length + BLOCK;
        } else if (dice < 130) { /* the tail punched, or all of it */
            uint64_t keep = rnd(blocks) * BLOCK;
            if (keep > 0 && (r = push(l, e->start, keep, e->physical, e->flags)) < 0)
                return r;
        } else if (dice < 330) { /* a snapshot shares it now */
            if ((r = push(l, e->start, e->length, e->physical, e->flags | EXTENT_SHARED)) < 0)
                return r;
        } else {
            if ((r = push(l, e->start, e->length, e->physical, e->flags)) < 0)
                return r;
        }
    }
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Sorts t and reports the best and the median. */
static void summarize(double *t, size_t n, double *best, double *median)
{
    qsort(t, n, sizeof(*t), cmp_double);
    *best = t[0];
    *median = n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
}

struct counter {
    size_t ranges;
    uint64_t bytes;
};

static int count_emit(void *opaque, uint64_t start, uint64_t length)
{
    struct counter *c = opaque;
    (void)start;
    c->ranges++;
    c->bytes += length;
    return 0;
}

static int parse_count(const char *s, unsigned long long min, unsigned long long max,
                       unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    unsigned long long n = 1000000, reps = 7;
    if (argc > 3 || (argc > 1 && parse_count(argv[1], 1, 100000000, &n) < 0) ||
        (argc > 2 && parse_count(argv[2], 1, 1000, &reps) < 0)) {
        fprintf(stderr, "usage: %s [extents (1..100000000) [repetitions (1..1000)]]\n", argv[0]);
        return 2;
    }

    extent_list base = VECTOR_INIT, new = VECTOR_INIT, changed = VECTOR_INIT, zeroed = VECTOR_INIT;
    double *times = calloc(reps, sizeof(*times));
    uint64_t base_size = 0, next_phys = 1ull << 50;
    int r = -ENOMEM;
    if (!times || (r = build_base(&base, n, &base_size)) < 0 ||
        (r = build_new(&base, &new, &next_phys)) < 0) {
        fprintf(stderr, "building the maps: %s\n", strerror(-r));
        return 1;
    }
    uint64_t new_size = base_size;

    /* Into lists. */
    for (unsigned long long i = 0; i < reps; i++) {
        extent_list_clear(&changed);
        extent_list_clear(&zeroed);
        double t0 = now();
        r = extent_list_diff(&base, base_size, &new, new_size, &changed, &zeroed);
        times[i] = now() - t0;
        if (r < 0) {
            fprintf(stderr, "extent_list_diff: %s\n", strerror(-r));
            return 1;
        }
    }
    double best, median;
    summarize(times, reps, &best, &median);
    printf("diff %zu x %zu extents: best %.6f s, median %.6f s (%.1f M extents/s); "
           "changed %zu ranges (%" PRIu64 " bytes), zeroed %zu ranges (%" PRIu64 " bytes)\n",
           base.len, new.len, best, median, (double)(base.len + new.len) / best / 1e6,
           changed.len, extent_list_bytes(&changed), zeroed.len, extent_list_bytes(&zeroed));

    /* Streaming into counters. */
    struct counter cc = {0}, cz = {0};
    for (unsigned long long i = 0; i < reps; i++) {
        struct extent_list_cursor cb, cn;
        struct extent_source sb = extent_list_source(&cb, &base);
        struct extent_source sn = extent_list_source(&cn, &new);
        cc = (struct counter){0};
        cz = (struct counter){0};
        struct extent_sink kc = {.emit = count_emit, .opaque = &cc};
        struct extent_sink kz = {.emit = count_emit, .opaque = &cz};
        double t0 = now();
        r = extent_diff_stream(&sb, base_size, &sn, new_size, &kc, &kz);
        times[i] = now() - t0;
        if (r < 0) {
            fprintf(stderr, "extent_diff_stream: %s\n", strerror(-r));
            return 1;
        }
    }
    summarize(times, reps, &best, &median);
    printf("stream %zu x %zu extents: best %.6f s, median %.6f s (%.1f M extents/s); "
           "changed %zu ranges, zeroed %zu ranges\n",
           base.len, new.len, best, median, (double)(base.len + new.len) / best / 1e6, cc.ranges,
           cz.ranges);

    int status = 0;
    if (cc.ranges != changed.len || cz.ranges != zeroed.len ||
        cc.bytes != extent_list_bytes(&changed) || cz.bytes != extent_list_bytes(&zeroed)) {
        fprintf(stderr, "stream and list results differ\n");
        status = 1;
    }

    extent_list_reset(&base);
    extent_list_reset(&new);
    extent_list_reset(&changed);
    extent_list_reset(&zeroed);
    free(times);
    return status;
}
