/* Zeroing file ranges; see zero.h. */
#include "fs/zero.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/sparse.h"

/* Size of the zero buffer written where no fallocate mode works (NFS v3, some FUSE). */
#define ZERO_WRITE_BLOCK (1024 * 1024)

static bool mode_unsupported(int e)
{
    return e == EOPNOTSUPP || e == ENOSYS || e == EINVAL;
}

int fs_zero_range(int fd, uint64_t off, uint64_t len)
{
    if (len == 0)
        return 0;
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
        return 0;
    if (!mode_unsupported(errno))
        return -errno;
    if (fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
        return 0;
    if (!mode_unsupported(errno))
        return -errno;
    CLEANUP_FREE char *zeros = calloc(1, ZERO_WRITE_BLOCK);
    if (!zeros)
        return -ENOMEM;
    while (len > 0) {
        size_t n = len < ZERO_WRITE_BLOCK ? (size_t)len : ZERO_WRITE_BLOCK;
        ssize_t w = pwrite(fd, zeros, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        off += (uint64_t)w;
        len -= (uint64_t)w;
    }
    return 0;
}

int fs_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int fs_write_data_runs(int fd, const uint8_t *buf, size_t len, uint64_t off, uint64_t *written)
{
    size_t pos = 0, run;
    while (sparse_next_run(buf, len, off, &pos, &run)) {
        int r = fs_pwrite_all(fd, buf + pos, run, off + pos);
        if (r < 0)
            return r;
        if (written)
            *written += run;
        pos += run;
    }
    return 0;
}
