/* Extent maps of files, streamed from FIEMAP (with physical addresses) or, where FIEMAP is not
 * supported, from SEEK_DATA/SEEK_HOLE (logical ranges only).
 *
 * A map is read in batches, so memory stays bounded whatever the number of extents.  Extents are
 * clipped to the file size given at open; unwritten (preallocated) extents are reported with
 * EXTENT_UNWRITTEN and are not data.
 */
#ifndef VMEXPORT_FS_FSMAP_H
#define VMEXPORT_FS_FSMAP_H

#include <stdbool.h>
#include <stdint.h>

#include "core/extent.h"

enum fs_map_flags {
    FS_MAP_NO_SYNC = 1u << 0,    /* skip FIEMAP_FLAG_SYNC (the file is known to be flushed) */
    FS_MAP_FORCE_SEEK = 1u << 1, /* use SEEK_DATA/SEEK_HOLE even where FIEMAP works */
};

enum fs_map_method { FS_MAP_FIEMAP, FS_MAP_SEEK };

struct fs_map {
    int fd;
    uint64_t size;
    unsigned flags;
    enum fs_map_method method;
    uint64_t pos;  /* where the next request starts */
    bool done;
    bool synced;
    struct fiemap *fm; /* FIEMAP batch buffer */
    unsigned idx;      /* next extent of the batch to hand out */
    uint64_t last_end;
};

/* Prepare to map fd (not owned) of the given size.  Decides FIEMAP or SEEK with a first call. */
int fs_map_open(struct fs_map *m, int fd, uint64_t size, unsigned flags);
void fs_map_close(struct fs_map *m);

/* 1 and *e filled, 0 at the end, or a negative errno. */
int fs_map_next(struct fs_map *m, struct extent *e);

struct extent_source fs_map_source(struct fs_map *m);

static inline bool fs_map_has_physical(const struct fs_map *m)
{
    return m->method == FS_MAP_FIEMAP;
}

#endif
