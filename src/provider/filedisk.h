/* Snapshot disks kept as files, shared by the providers whose disks are files (dir, ovm).
 *
 * A locator is the absolute path of the snapshot file, with no symlink in any component (the
 * catalogs of earlier versions stored exactly that, so they are read unchanged).  A snapshot is
 * a reflink clone where the disk's filesystem shares blocks, else a sparse copy with a
 * block-hash sidecar (fs/clone.h); changes come from the two files' extent maps or the sidecar
 * (fs/fsdiff.h); reads use O_DIRECT for data not in the page cache.  Uploads are written to a
 * partial file in a private staging directory and renamed into place.  Every file is opened
 * relative to a checked directory without following symlinks (fs/safeopen.h).
 *
 * A provider using these functions puts struct filedisk first in its priv.
 */
#ifndef VMEXPORT_PROVIDER_FILEDISK_H
#define VMEXPORT_PROVIDER_FILEDISK_H

#include "fs/blockhash.h"
#include "provider/provider.h"

struct filedisk {
    enum blockhash_algo hash; /* digest of copy-mode snapshots' sidecars */
};

/* Settings shared by file-disk providers (cfg->block_hash); err names the cause. */
int filedisk_init(struct filedisk *fd, const struct provider_config *cfg, char *err, size_t errlen);

/* The provider_ops functions, for p whose priv starts with struct filedisk. */
int filedisk_snapshot_create(struct provider *p, const struct vm *vm, const char *snap_id,
                             struct provider_snapshot_request *req,
                             struct provider_snapshot_disk *disks, size_t n,
                             const struct provider_quiesce *q, char *err, size_t errlen);
int filedisk_snapshot_delete(struct provider *p, const char *locator);
int filedisk_disk_open(struct provider *p, const char *locator, unsigned flags,
                       struct disk_reader **out);
int filedisk_disk_changes(struct provider *p, const char *base, const char *new,
                          struct extent_sink *changed, struct extent_sink *zeroed,
                          const char **method, char *err, size_t errlen);
int filedisk_upload_discard(struct provider *p, const char *partial, const char *id,
                            const char *partial_name);

/* The locator of the snapshot snap_id of the disk named disk_name in the directory dir:
 * dir/snap_id/disk_name. */
int filedisk_locate(const char *dir, const char *snap_id, const char *disk_name, char **out);

/* A writer of the upload whose partial file is the absolute path partial and whose disk will
 * be final (neither created yet; final must not exist: -EEXIST).  err says why not. */
int filedisk_upload_open(const char *partial, const char *final, const char *vm_id,
                         const char *disk, struct disk_writer **out, char *err, size_t errlen);

#endif
