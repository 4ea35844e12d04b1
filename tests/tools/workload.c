/* Test tool: apply a reproducible random workload to a file.
 *
 *   workload [--init] [--ops N] [--max-size BYTES] [--verbose] FILE SEED
 *
 * Operations: writes of random size and offset (random or all-zero data), punch-hole,
 * zero-range, fallocate (extending or keep-size), extend and truncate.  --init builds a base
 * image from an empty file: a realistic mix of data, holes and preallocated ranges.
 * The same SEED always gives the same operations.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_IO (512 * 1024)

static uint64_t rng_state;

static uint64_t rnd(void) /* xorshift64*: small, fast, reproducible */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

static uint64_t rnd_below(uint64_t n)
{
    return n ? rnd() % n : 0;
}

/* Offsets and lengths: mostly 4 KiB aligned, sometimes not, to exercise partial blocks. */
static uint64_t rnd_align(uint64_t v)
{
    return rnd_below(4) == 0 ? v : v & ~(uint64_t)4095;
}

static void die(const char *what)
{
    fprintf(stderr, "workload: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int verbose;

static void do_write(int fd, uint64_t off, uint64_t len, bool zeros)
{
    static uint8_t buf[MAX_IO];
    if (zeros) {
        memset(buf, 0, len);
    } else {
        for (uint64_t i = 0; i < len; i += 8) {
            uint64_t v = rnd();
            memcpy(buf + i, &v, len - i < 8 ? len - i : 8);
        }
    }
    if (verbose)
        fprintf(stderr, "write%s %" PRIu64 " %" PRIu64 "\n", zeros ? "-zeros" : "", off, len);
    if (pwrite(fd, buf, len, (off_t)off) != (ssize_t)len)
        die("pwrite");
}

static void do_fallocate(int fd, int mode, const char *name, uint64_t off, uint64_t len)
{
    if (verbose)
        fprintf(stderr, "%s %" PRIu64 " %" PRIu64 "\n", name, off, len);
    if (fallocate(fd, mode, (off_t)off, (off_t)len) < 0 && errno != EOPNOTSUPP)
        die(name);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"init", no_argument, NULL, 'i'},
        {"ops", required_argument, NULL, 'n'},
        {"max-size", required_argument, NULL, 's'},
        {"verbose", no_argument, NULL, 'v'},
        {NULL, 0, NULL, 0},
    };
    bool init = false;
    unsigned ops = 8;
    uint64_t max_size = 8 << 20;
    int c;
    while ((c = getopt_long(argc, argv, "in:s:v", opts, NULL)) != -1) {
        switch (c) {
        case 'i':
            init = true;
            break;
        case 'n':
            ops = (unsigned)strtoul(optarg, NULL, 0);
            break;
        case 's':
            max_size = strtoull(optarg, NULL, 0);
            break;
        case 'v':
            verbose = 1;
            break;
        default:
            return 2;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "usage: workload [--init] [--ops N] [--max-size B] FILE SEED\n");
        return 2;
    }
    rng_state = strtoull(argv[optind + 1], NULL, 0) * 0x9E3779B97F4A7C15ULL + 1;
    int fd = open(argv[optind], O_RDWR | O_CREAT, 0644);
    if (fd < 0)
        die(argv[optind]);

    if (init) {
        /* Base image: a few data regions, holes between, a couple of preallocated ranges. */
        if (ftruncate(fd, (off_t)max_size) < 0)
            die("ftruncate");
        for (unsigned i = 0; i < 12; i++) {
            uint64_t off = rnd_below(max_size) & ~(uint64_t)4095;
            uint64_t len = 4096 + (rnd_below(MAX_IO) & ~(uint64_t)4095);
            if (off + len > max_size)
                len = max_size - off;
            if (len == 0)
                continue;
            if (i % 4 == 3)
                do_fallocate(fd, FALLOC_FL_KEEP_SIZE, "prealloc", off, len);
            else
                do_write(fd, off, len, false);
        }
        if (fsync(fd) < 0)
            die("fsync");
        return 0;
    }

    for (unsigned i = 0; i < ops; i++) {
        struct stat st;
        if (fstat(fd, &st) < 0)
            die("fstat");
        uint64_t size = (uint64_t)st.st_size;
        uint64_t span = size > 4096 ? size : max_size;
        uint64_t off = rnd_align(rnd_below(span));
        uint64_t len = 1 + rnd_align(rnd_below(MAX_IO));
        if (len == 0)
            len = 4096;
        if (off + len > max_size)
            len = off < max_size ? max_size - off : 4096;
        switch (rnd_below(10)) {
        case 0: case 1: case 2: case 3:
            do_write(fd, off, len, false);
            break;
        case 4:
            do_write(fd, off, len, true);
            break;
        case 5:
            do_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "punch", off, len);
            break;
        case 6:
            do_fallocate(fd, FALLOC_FL_ZERO_RANGE, "zero-range", off, len);
            break;
        case 7:
            do_fallocate(fd, rnd_below(2) ? FALLOC_FL_KEEP_SIZE : 0, "fallocate", off, len);
            break;
        case 8: {
            uint64_t ns = size + 1 + rnd_below(max_size / 4);
            if (verbose)
                fprintf(stderr, "extend %" PRIu64 "\n", ns);
            if (ftruncate(fd, (off_t)ns) < 0)
                die("extend");
            break;
        }
        case 9: {
            uint64_t ns = rnd_align(rnd_below(size + 1));
            if (verbose)
                fprintf(stderr, "truncate %" PRIu64 "\n", ns);
            if (ftruncate(fd, (off_t)ns) < 0)
                die("truncate");
            break;
        }
        }
    }
    if (close(fd) < 0)
        die("close");
    return 0;
}
