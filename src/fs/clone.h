/* Snapshot a file: a reflink clone where the filesystem shares blocks (FICLONE on XFS, btrfs and
 * OCFS2), else a sparse copy that records a block-hash sidecar.
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

/* Clone the regular file open as in to dst_name in the directory dst_dir; a copy records hash
 * digests in its sidecar.  The clone is made under a temporary name created in dst_dir (no
 * symlink followed) and renamed to dst_name, never replacing a file; it reads only from in.
 * Errors: -EEXIST dst exists; -EOPNOTSUPP reflink requested where the filesystem cannot;
 * -EXDEV reflink across filesystems; -EINVAL in is not a regular file; else the failing call's
 * errno. */
int fs_clone_at(int in, int dst_dir, const char *dst_name, enum clone_mode mode,
                enum blockhash_algo hash, struct clone_result *res);

/* The same from paths, as given on a command line (symlinks are followed). */
int fs_clone(const char *src, const char *dst, enum clone_mode mode, enum blockhash_algo hash,
             struct clone_result *res);

/* Sparse, hashed copy from in to out (both open, out empty), recording digests in the sidecar
 * of out_name in the directory out_dir.  Exposed for the benchmarks and for snapshot code that
 * owns its own files. */
int fs_copy_hashed(int in, int out, int out_dir, const char *out_name, enum blockhash_algo hash,
                   struct clone_result *res);

#endif
