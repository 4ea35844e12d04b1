/* The restore engine: write the disks of a backup as sparse raw files, all or none.
 *
 * Every disk is first restored under a temporary name next to its destination
 * (DEST.vxrestore.tmp.XXXXXX, mode 0600) by worker threads that read, check and decompress the
 * chunks and write their data runs (blocks of zeros stay holes); only when every disk is
 * complete and fsynced are they renamed into place, one by one, undoing the earlier ones if a
 * later one fails.  With force an existing file is swapped out (RENAME_EXCHANGE) and removed
 * only once every disk is in place.  A failure thus leaves every destination as it was.
 *
 * Nothing is printed: progress goes to optional callbacks, the outcome to a result struct, and
 * failures come back as a negative errno with a message naming the thing and the cause. */
#ifndef VMEXPORT_BACKUP_RESTORE_H
#define VMEXPORT_BACKUP_RESTORE_H

#include <stdbool.h>
#include <stdint.h>

#include "backup/progress.h"
#include "core/vector.h"
#include "repo/repo.h"

/* In the name of a disk being restored: DEST + this + a random mkostemp suffix. */
#define RESTORE_TMP_MARK ".vxrestore.tmp."
/* Worker threads of a restore at most. */
#define RESTORE_MAX_JOBS 64

struct restore_options {
    struct repo *repo;
    const struct backup *backup; /* from restore_find_backup() */
    const char *disk;            /* only this disk; NULL: every disk */
    /* The destination: the file of the one disk restored (one disk, or disk given) unless it
     * is an existing directory; otherwise a directory (made when missing) that receives one
     * file per disk, named after the disk. */
    const char *to;
    bool force;    /* replace existing files */
    unsigned jobs; /* worker threads, 1 to RESTORE_MAX_JOBS */
    /* Remove the staged files (and a directory this restore made) when SIGINT, SIGTERM or
     * SIGHUP arrives while disks are staged, then die of the signal as the process would have;
     * the moves into place run with those signals blocked.  For one restore at a time. */
    bool handle_signals;
    struct backup_progress progress; /* begin and end once a disk */
};

/* A disk put in place. */
struct restored_disk {
    const char *disk; /* its name, in the backup */
    char *dest;       /* the file it was written to */
    uint64_t size;
};
DEFINE_VECTOR_TYPE(restored_disk_list, struct restored_disk);

struct restore_result {
    restored_disk_list disks; /* on success, in the backup's order */
    /* On failure: whether writing had begun; the destination was left as it was anyway. */
    bool started;
    char err[512]; /* on failure: the thing and the cause */
};

/* Take the repository lock (shared, waiting up to lock_timeout seconds for a gc or prune),
 * then find backup id and check that it has disk (when not NULL).  -ENOENT for an unknown
 * backup or disk, -EBADMSG for damaged metadata; err says which. */
int restore_find_backup(struct repo *repo, const char *id, const char *disk, unsigned lock_timeout,
                        struct backup **out, char *err, size_t errlen);

/* Restore the disks.  0, or a negative errno (-EEXIST: a destination exists and force is
 * off; -EBADMSG: damaged data; -ENOENT: a chunk is missing; -ENOSPC) with res->err set.  Free
 * res with restore_result_free() in either case. */
int restore_run(const struct restore_options *o, struct restore_result *res);
void restore_result_free(struct restore_result *res);

#endif
