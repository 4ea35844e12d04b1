/* FIEMAP and SEEK_DATA/SEEK_HOLE extent iterators; see fsmap.h. */
#include "fsmap.h"

#include <errno.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* Extents fetched per FIEMAP call: 1024 * 56 bytes = 56 KiB of buffer, few syscalls. */
#define FIEMAP_BATCH 1024

/* FIEMAP flags after which the physical address cannot be compared between two files:
 * delayed allocation has none yet, encoded (compressed) extents share one address for several
 * logical ranges, inline and tail-packed data live inside metadata blocks. */
#define FIEMAP_PHYS_UNRELIABLE                                                                     \
    (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_ENCODED |                      \
     FIEMAP_EXTENT_DATA_ENCRYPTED | FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_INLINE |        \
     FIEMAP_EXTENT_DATA_TAIL)

static int fiemap_fill(struct fs_map *m)
{
    m->fm->fm_start = m->pos;
    m->fm->fm_length = FIEMAP_MAX_OFFSET - m->pos;
    /* Sync once so delayed allocations get real addresses; later batches need not. */
    m->fm->fm_flags = (m->synced || (m->flags & FS_MAP_NO_SYNC)) ? 0 : FIEMAP_FLAG_SYNC;
    m->fm->fm_mapped_extents = 0;
    m->fm->fm_extent_count = FIEMAP_BATCH;
    if (ioctl(m->fd, FS_IOC_FIEMAP, m->fm) < 0)
        return -errno;
    m->synced = true;
    m->idx = 0;
    if (m->fm->fm_mapped_extents == 0)
        m->done = true;
    return 0;
}

int fs_map_open(struct fs_map *m, int fd, uint64_t size, unsigned flags)
{
    memset(m, 0, sizeof(*m));
    m->fd = fd;
    m->size = size;
    m->flags = flags;
    m->method = FS_MAP_SEEK;
    if (flags & FS_MAP_FORCE_SEEK)
        return 0;

    m->fm = calloc(1, sizeof(struct fiemap) + FIEMAP_BATCH * sizeof(struct fiemap_extent));
    if (!m->fm)
        return -ENOMEM;
    int r = fiemap_fill(m);
    if (r == -EOPNOTSUPP || r == -ENOTTY || r == -EBADR) {
        free(m->fm);
        m->fm = NULL;
        m->done = false;
        return 0; /* no FIEMAP here: SEEK_DATA/SEEK_HOLE */
    }
    if (r < 0) {
        fs_map_close(m);
        return r;
    }
    m->method = FS_MAP_FIEMAP;
    return 0;
}

void fs_map_close(struct fs_map *m)
{
    free(m->fm);
    m->fm = NULL;
}

static int fiemap_next(struct fs_map *m, struct extent *e)
{
    for (;;) {
        if (m->done && m->idx >= m->fm->fm_mapped_extents)
            return 0;
        if (m->idx >= m->fm->fm_mapped_extents) {
            int r = fiemap_fill(m);
            if (r < 0)
                return r;
            continue;
        }
        const struct fiemap_extent *fe = &m->fm->fm_extents[m->idx++];
        uint64_t start = fe->fe_logical, end = fe->fe_logical + fe->fe_length;

        if (fe->fe_flags & FIEMAP_EXTENT_LAST || m->idx == m->fm->fm_mapped_extents) {
            /* The next batch starts after this extent (an extent crossing the request start is
             * returned whole, so the position only moves forward). */
            if (end > m->pos)
                m->pos = end;
            if (fe->fe_flags & FIEMAP_EXTENT_LAST)
                m->done = true;
        }
        if (start < m->last_end)
            start = m->last_end; /* never hand out overlapping extents */
        if (end > m->size)
            end = m->size;
        if (start >= m->size) {
            m->done = true;
            m->idx = m->fm->fm_mapped_extents;
            return 0;
        }
        if (start >= end)
            continue;

        e->start = start;
        e->length = end - start;
        e->physical = fe->fe_physical + (start - fe->fe_logical);
        e->flags = 0;
        if (fe->fe_flags & FIEMAP_EXTENT_SHARED)
            e->flags |= EXTENT_SHARED;
        if (fe->fe_flags & FIEMAP_EXTENT_UNWRITTEN)
            e->flags |= EXTENT_UNWRITTEN;
        if (fe->fe_flags & FIEMAP_PHYS_UNRELIABLE)
            e->flags |= EXTENT_PHYS_UNKNOWN;
        m->last_end = end;
        return 1;
    }
}

static int seek_next(struct fs_map *m, struct extent *e)
{
    if (m->done || m->pos >= m->size)
        return 0;
    off_t data = lseek(m->fd, (off_t)m->pos, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) { /* no data after pos */
            m->done = true;
            return 0;
        }
        return -errno;
    }
    if ((uint64_t)data >= m->size) {
        m->done = true;
        return 0;
    }
    off_t hole = lseek(m->fd, data, SEEK_HOLE);
    if (hole < 0)
        return -errno;
    uint64_t end = (uint64_t)hole > m->size ? m->size : (uint64_t)hole;
    if (end <= (uint64_t)data)
        return -EIO; /* the file changed under us */
    e->start = (uint64_t)data;
    e->length = end - (uint64_t)data;
    e->physical = 0;
    e->flags = EXTENT_PHYS_UNKNOWN;
    m->pos = end;
    return 1;
}

int fs_map_next(struct fs_map *m, struct extent *e)
{
    return m->method == FS_MAP_FIEMAP ? fiemap_next(m, e) : seek_next(m, e);
}

static int fs_map_source_next(void *opaque, struct extent *e)
{
    return fs_map_next(opaque, e);
}

struct extent_source fs_map_source(struct fs_map *m)
{
    return (struct extent_source){.next = fs_map_source_next, .opaque = m};
}
