/* Snapshot a file: a reflink clone where the filesystem shares blocks (FICLONE on XFS and btrfs,
 * OCFS2_IOC_REFLINK on OCFS2), else a sparse copy that records a block-hash sidecar.
 *
 * The destination appears atomically: the clone is built under a temporary name in the
 * destination's directory, fsynced and renamed into place without replacing an existing file.
 * On any failure nothing is left at the destination.
 */
#ifndef VMEXPORT_FS_CLONE_H
#define VMEXPORT_FS_CLONE_H

#include <stdint.h>

#include "fs/blockhash.h"

/* The clone is built as DST + CLONE_TMP_SUFFIX + six random characters; a crash may leave it. */
#define CLONE_TMP_SUFFIX ".vxtmp."

enum clone_mode { CLONE_AUTO, CLONE_REFLINK, CLONE_COPY };

struct clone_result {
    enum clone_mode mode;   /* CLONE_REFLINK or CLONE_COPY: what was done */
    uint64_t size;          /* file size */
    uint64_t bytes_read;    /* bytes read from the source (copy mode; short holes between data are read too) */
    uint64_t bytes_written; /* data bytes written (copy mode; zero blocks are left as holes) */
    enum blockhash_algo hash; /* copy mode: the sidecar's digest */
};

const char *clone_mode_name(enum clone_mode mode);
int clone_mode_parse(const char *s, enum clone_mode *out);

/* Clone src to dst; a copy records hash digests in its sidecar.  Errors: -EEXIST dst exists; -EOPNOTSUPP reflink requested where the
 * filesystem cannot; -EXDEV reflink across filesystems; else the failing call's errno. */
int fs_clone(const char *src, const char *dst, enum clone_mode mode, enum blockhash_algo hash,
             struct clone_result *res);

/* Sparse, hashed copy from in to out (both open, out empty), recording digests in the sidecar
 * of out_path.  Exposed for the benchmarks and for snapshot code that owns its own files. */
int fs_copy_hashed(int in, int out, const char *out_path, enum blockhash_algo hash,
                   struct clone_result *res);

#endif
