/* Benchmark helper: compare two sparse files extent by extent, in time proportional to their
 * data, not their size (cmp would read every zero of a 64 TiB disk).
 *
 *   sparsecmp FILE1 FILE2
 *
 * The files must have the same size.  Walks the union of both files' data ranges (SEEK_DATA /
 * SEEK_HOLE): every range where either holds data is read from both and compared (a hole
 * reads as zeros, so data against a hole must be zeros).  Prints the bytes compared and exits
 * 0 when equal, 1 with the first differing offset when not, 2 on an error.  Built by the bench/
 * scripts with cc; not part of the Meson build.
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
#include <sys/stat.h>
#include <unistd.h>

#define BUF_LEN (1u << 20) /* bytes read from each file at a time */

/* next_data: the first data offset at or after pos, or size when none (ENXIO). */
static int next_data(int fd, off_t pos, off_t size, off_t *out)
{
    off_t r = lseek(fd, pos, SEEK_DATA);
    if (r < 0) {
        if (errno != ENXIO)
            return -errno;
        r = size;
    }
    *out = r;
    return 0;
}

/* next_hole: the first hole offset at or after pos (the end of the file counts as one). */
static int next_hole(int fd, off_t pos, off_t size, off_t *out)
{
    off_t r = lseek(fd, pos, SEEK_HOLE);
    if (r < 0) {
        if (errno != ENXIO)
            return -errno;
        r = size;
    }
    *out = r;
    return 0;
}

static int read_full(int fd, uint8_t *buf, size_t len, off_t off)
{
    while (len) {
        ssize_t n = pread(fd, buf, len, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO; /* the file shrank under us */
        buf += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: sparsecmp FILE1 FILE2\n");
        return 2;
    }
    int fd[2];
    struct stat st[2];
    for (int i = 0; i < 2; i++) {
        fd[i] = open(argv[1 + i], O_RDONLY | O_CLOEXEC);
        if (fd[i] < 0 || fstat(fd[i], &st[i]) < 0) {
            fprintf(stderr, "sparsecmp: %s: %s\n", argv[1 + i], strerror(errno));
            return 2;
        }
    }
    if (st[0].st_size != st[1].st_size) {
        printf("sparsecmp: sizes differ: %" PRId64 " vs %" PRId64 "\n", (int64_t)st[0].st_size,
               (int64_t)st[1].st_size);
        return 1;
    }
    const off_t size = st[0].st_size;
    uint8_t *buf[2] = {malloc(BUF_LEN), malloc(BUF_LEN)};
    if (!buf[0] || !buf[1]) {
        perror("sparsecmp: malloc");
        return 2;
    }
    uint64_t compared = 0;
    off_t pos = 0;
    int err = 0;
    while (pos < size) {
        off_t d[2];
        for (int i = 0; i < 2 && !err; i++)
            err = next_data(fd[i], pos, size, &d[i]);
        if (err)
            break;
        off_t start = d[0] < d[1] ? d[0] : d[1];
        if (start >= size)
            break;
        /* [start, end): each file is all data or all hole there */
        off_t end = size;
        for (int i = 0; i < 2 && !err; i++) {
            off_t b = d[i];
            if (d[i] == start)
                err = next_hole(fd[i], start, size, &b);
            if (b < end)
                end = b;
        }
        if (err)
            break;
        for (off_t off = start; off < end && !err;) {
            size_t n = end - off < (off_t)BUF_LEN ? (size_t)(end - off) : BUF_LEN;
            for (int i = 0; i < 2 && !err; i++)
                err = read_full(fd[i], buf[i], n, off);
            if (err)
                break;
            if (memcmp(buf[0], buf[1], n) != 0) {
                size_t k = 0;
                while (buf[0][k] == buf[1][k])
                    k++;
                printf("sparsecmp: %s %s differ at byte offset %" PRId64 "\n", argv[1], argv[2],
                       (int64_t)(off + (off_t)k));
                return 1;
            }
            compared += n;
            off += (off_t)n;
        }
        pos = end;
    }
    if (err) {
        fprintf(stderr, "sparsecmp: %s / %s: %s\n", argv[1], argv[2], strerror(-err));
        return 2;
    }
    printf("%" PRIu64 "\n", compared);
    free(buf[0]);
    free(buf[1]);
    return 0;
}
