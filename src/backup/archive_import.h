/* The archive importer: an archive written by the exporter (tar or OVA, possibly compressed;
 * docs/archive-format.md) turned into a new backup of a repository, without any terminal, for
 * `vmexport import`, the tests and the fuzz target.
 *
 * The archive is UNTRUSTED.  It is read in one pass; every disk member is cut into chunks of the
 * repository's chunk size as it streams in and stored; the backup is committed only once every
 * member has matched the manifest at the end.  On any failure the backup is aborted: no backup
 * becomes visible (chunks already stored stay unreferenced until gc). */
#ifndef VMEXPORT_BACKUP_ARCHIVE_IMPORT_H
#define VMEXPORT_BACKUP_ARCHIVE_IMPORT_H

#include <stddef.h>
#include <stdint.h>

#include "backup/archive_format.h"
#include "backup/progress.h"

struct repo;

struct archive_import_options {
    struct repo *repo; /* open, writable */
    /* The archive: data/size when data is not NULL, else read from fd (a file or a pipe; not
     * closed). */
    int fd;
    const void *data;
    size_t size;
    const char *vm_id;     /* the VM the backup is stored under; NULL: vm.json's */
    unsigned lock_timeout; /* seconds to wait for the VM lock; 0: ARCHIVE_LOCK_TIMEOUT */
    /* Largest disk accepted, in bytes; 0: no limit.  A disk's size is what the archive says
     * (holes cost nothing to claim), and the importer hashes every byte of it. */
    uint64_t max_disk_size;
    struct backup_progress progress; /* begin once (what NULL), then add */
};

struct archive_import_result {
    char *backup_id;     /* the new backup */
    char *vm_id;         /* the VM it is stored under */
    char *source_backup; /* the exported backup's ID from vm.json, or NULL */
    size_t disks;
    uint64_t bytes_read; /* archive bytes read (compressed, as given) */
    uint64_t bytes_written, chunks_new, chunks_reused;
};

/* Import; 0 with res filled (free with archive_import_result_free()), or a negative errno with
 * a message in err naming the member and the cause; several problems with the manifest are
 * listed one after the other, separated by "; ".  -EBADMSG when members do not match the
 * manifest, -EINVAL for a malformed or misordered archive, -EIO when it cannot be read or is
 * truncated, -EPROTONOSUPPORT for another archive version. */
int archive_import(const struct archive_import_options *o, struct archive_import_result *res,
                   char *err, size_t errlen);
void archive_import_result_free(struct archive_import_result *res);

#endif
