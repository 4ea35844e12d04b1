/* The archive exporter: one backup of a repository written as a portable POSIX pax tar file or
 * OVA (docs/archive-format.md) to a file descriptor, without any terminal, for `vmexport export`
 * and the tests.
 *
 * Members, in order: <vm>.ovf (OVA only), vm.json, one sparse raw image per disk, and the
 * manifest (<vm>.mf or SHA256SUMS) with the SHA-256 of every member before it.  The data is read
 * one chunk at a time, each chunk checked against its ID, and streamed; the digests are computed
 * on the way, so the repository is read once and memory use is about two chunks. */
#ifndef VMEXPORT_BACKUP_ARCHIVE_EXPORT_H
#define VMEXPORT_BACKUP_ARCHIVE_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include "backup/archive_format.h"
#include "backup/progress.h"

struct repo;

enum archive_kind {
    ARCHIVE_KIND_TAR, /* vm.json, disks, SHA256SUMS */
    ARCHIVE_KIND_OVA, /* <vm>.ovf, vm.json, disks, <vm>.mf */
};

struct archive_export_options {
    struct repo *repo; /* open; the engine takes its lock (shared) for the run */
    const char *backup_id;
    int fd; /* the archive is written here (not closed, not fsynced) */
    enum archive_kind kind;
    unsigned lock_timeout; /* seconds to wait for the repository lock; 0: ARCHIVE_LOCK_TIMEOUT */
    struct backup_progress progress; /* begin once (what NULL), then add */
};

struct archive_export_result {
    char *backup_id, *vm_id; /* malloc'd: archive_export_result_free() */
    size_t disks;
    uint64_t disk_bytes;    /* sum of the disks' sizes */
    uint64_t data_bytes;    /* bytes of stored chunks written (holes excluded) */
    uint64_t archive_bytes; /* bytes written to fd */
};

/* Export; 0 or a negative errno with a message in err naming the backup, the disk or member and
 * the cause (e.g. "backup X: disk sda: chunk ... at offset 1048576: damaged").  On failure
 * what was written to fd is an incomplete archive. */
int archive_export(const struct archive_export_options *o, struct archive_export_result *res,
                   char *err, size_t errlen);
void archive_export_result_free(struct archive_export_result *res);

#endif
