/* Diff of two files: which byte ranges of NEW differ from BASE (changed) and which must become
 * zeros (zeroed).  Three ways, the cheapest that is sound:
 *   reflink: both on one reflink-capable filesystem: compare the FIEMAP maps, read no data;
 *   hash:    BASE has a fresh block-hash sidecar: read NEW only and compare digests;
 *   read:    read both and compare.
 * Results are streamed to sinks; memory does not grow with the file or the number of extents.
 */
#ifndef VMEXPORT_FS_FSDIFF_H
#define VMEXPORT_FS_FSDIFF_H

#include <stdbool.h>
#include <stdint.h>

#include "core/extent.h"
#include "fs/blockhash.h"

enum diff_mode { DIFF_AUTO, DIFF_REFLINK, DIFF_HASH, DIFF_READ };

struct fs_diff {
    int base_fd, new_fd;
    char *base_path;
    enum diff_mode mode;
    uint32_t block_size; /* precision of the result */
    enum blockhash_algo hash; /* DIFF_HASH: the base sidecar's digest */
    uint64_t base_size, new_size;
    const char *why; /* when a requested mode is impossible: the reason, for messages */
    bool nofollow;   /* opened by fs_diff_open_nofollow */
};

const char *diff_mode_name(enum diff_mode mode);
int diff_mode_parse(const char *s, enum diff_mode *out);

/* Open both files and choose the mode (want = DIFF_AUTO: the best available).  A mode that was
 * asked for but cannot be used fails with -EOPNOTSUPP and d->why set. */
int fs_diff_open(struct fs_diff *d, const char *base, const char *new, enum diff_mode want);
/* The same for absolute paths in which no component may be a symlink, the base's sidecar
 * included (fs/safeopen.h): for the daemon, which opens files in directories others write. */
int fs_diff_open_nofollow(struct fs_diff *d, const char *base, const char *new,
                          enum diff_mode want);
int fs_diff_run(struct fs_diff *d, struct extent_sink *changed, struct extent_sink *zeroed);
void fs_diff_close(struct fs_diff *d);

#endif
