/* Benchmark helper: write a regular pattern of chunks into a file, fast.
 *
 *   mkfrag [-z] [-s SEED] FILE OFFSET LENGTH STRIDE CHUNK
 *
 * Writes CHUNK bytes at OFFSET, OFFSET+STRIDE, OFFSET+2*STRIDE, ... while the chunk starts
 * before OFFSET+LENGTH (the last chunk is cut at OFFSET+LENGTH).  With STRIDE > CHUNK the
 * gaps stay holes, so a filesystem gives one extent per chunk; with STRIDE == CHUNK the
 * range is written contiguously.  The data is pseudo-random (incompressible, never an
 * all-zero 4 KiB page) or, with -z, zeros that are really written (allocated blocks that
 * read as zeros).  FILE is created if missing and never truncated; it is fsynced at the end.
 * Sizes accept a K, M or G suffix (powers of 1024).  Built by the bench/ scripts with cc;
 * not part of the Meson build.
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_BUF (8u << 20) /* contiguous ranges are written in pieces of this size */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* xorshift64*: plenty for filler data, several GB/s. */
static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static void fill_random(uint8_t *buf, size_t len)
{
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v = rng_next() | 1; /* never a zero word, so never a zero page */
        memcpy(buf + i, &v, 8);
    }
    for (; i < len; i++)
        buf[i] = (uint8_t)(rng_next() | 1);
}

static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return -1;
    switch (*end) {
    case 'G': case 'g': v <<= 10; /* fall through */
    case 'M': case 'm': v <<= 10; /* fall through */
    case 'K': case 'k': v <<= 10; end++; break;
    case '\0': break;
    default: return -1;
    }
    if (*end)
        return -1;
    *out = v;
    return 0;
}

static int write_full(int fd, const uint8_t *buf, size_t len, uint64_t off)
{
    while (len) {
        ssize_t n = pwrite(fd, buf, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: mkfrag [-z] [-s SEED] FILE OFFSET LENGTH STRIDE CHUNK\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int zeros = 0, opt;
    while ((opt = getopt(argc, argv, "zs:")) != -1) {
        if (opt == 'z')
            zeros = 1;
        else if (opt == 's')
            rng_state ^= strtoull(optarg, NULL, 0) * 0x9e3779b97f4a7c15ull + 1;
        else
            usage();
    }
    if (argc - optind != 5)
        usage();
    const char *path = argv[optind];
    uint64_t offset, length, stride, chunk;
    if (parse_size(argv[optind + 1], &offset) || parse_size(argv[optind + 2], &length) ||
        parse_size(argv[optind + 3], &stride) || parse_size(argv[optind + 4], &chunk) ||
        chunk == 0 || stride < chunk)
        usage();
    if (rng_state == 0)
        rng_state = 1;

    size_t buf_len = chunk < MAX_BUF ? (size_t)chunk : MAX_BUF;
    uint8_t *buf = malloc(buf_len);
    if (!buf) {
        perror("malloc");
        return 1;
    }
    if (zeros)
        memset(buf, 0, buf_len);
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    const uint64_t end = offset + length;
    uint64_t nchunks = 0;
    for (uint64_t pos = offset; pos < end; pos += stride) {
        uint64_t left = chunk < end - pos ? chunk : end - pos;
        for (uint64_t done = 0; done < left;) {
            size_t n = left - done < buf_len ? (size_t)(left - done) : buf_len;
            if (!zeros)
                fill_random(buf, n);
            if (write_full(fd, buf, n, pos + done) < 0) {
                perror(path);
                return 1;
            }
            done += n;
        }
        nchunks++;
    }
    if (fsync(fd) < 0 || close(fd) < 0) {
        perror(path);
        return 1;
    }
    free(buf);
    printf("%" PRIu64 "\n", nchunks);
    return 0;
}
