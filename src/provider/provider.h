/* Providers: where VMs and their disks come from; their snapshots, reads and changes.
 *
 * One file per provider type implements struct provider_ops (dir.c, ovm.c; both keep their
 * disks as files and share filedisk.c for snapshots, reads, diffs and uploads).  The layers
 * above see snapshot disks only as locators, readers (struct disk_reader) and change sinks.  A
 * provider instance is configured by one [provider.NAME] section.  VM and disk IDs seen in URLs are
 * only ever compared with what a provider lists; they are never joined into paths.
 */
#ifndef VMEXPORT_PROVIDER_PROVIDER_H
#define VMEXPORT_PROVIDER_PROVIDER_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "core/extent.h"
#include "core/vector.h"

struct vm_disk {
    char *name;            /* file name; the disk's ID in URLs */
    char *path;            /* absolute path of the disk file */
    char *device_name;     /* "xvda", "xvdb:cdrom", "sda" ... */
    char *mode;            /* "w" or "r" */
    uint64_t size;         /* bytes (0 if it cannot be read) */
    bool snapshot_compatible;
    char *snapshot_mode;   /* "reflink" or "copy" (NULL when not compatible) */
    char *repo_mountpoint; /* repository / provider root that holds the disk */
    /* Where the daemon opens the disk: an absolute path with no symlink in any component
     * (NULL when the disk cannot be snapshotted); and the file's identity when it was listed:
     * a snapshot clones this file or nothing (provider_disk_open). */
    char *real_path;
    uint64_t dev, ino;
};
DEFINE_VECTOR_TYPE(vm_disk_list, struct vm_disk);

struct vm {
    char *id;            /* the 004 "name": ID in URLs */
    char *friendly_name;
    char *uuid;
    const char *provider; /* provider instance name (not owned) */
    vm_disk_list disks;
    bool snapshot_compatible; /* every writable disk can be snapshotted */
};
DEFINE_VECTOR_TYPE(vm_list, struct vm *);

void vm_free(struct vm *vm);
void vm_list_free(vm_list *l); /* frees the VMs and resets the list */

/* Key/value settings of a [provider.NAME] section. */
struct provider_setting {
    const char *key, *value;
};
struct provider_config {
    const char *name; /* NAME of [provider.NAME] */
    const struct provider_setting *settings;
    size_t n_settings;
    /* Daemon-wide [snapshot] block_hash: the digest of copy-mode snapshots' block hashes
     * (NULL: the default). */
    const char *block_hash;
};
const char *provider_config_get(const struct provider_config *cfg, const char *key);

struct provider;

/* One disk of a snapshot being made (snapshot_create). */
struct provider_snapshot_disk {
    const struct vm_disk *disk; /* in: the VM's disk */
    const char *locator;        /* in: from snapshot_locate */
    uint64_t size;              /* out: bytes */
    char *mode;                 /* out: how it was taken, in the provider's words (shown) */
};

/* What a snapshot is asked for beyond its disks, and what the provider says back. */
#define PROVIDER_CHAIN_MAX 64 /* bytes of a chain ID: [A-Za-z0-9_-] */
#define PROVIDER_CHAIN_DEFAULT "default"
struct provider_snapshot_request {
    /* in: the changed-block-tracking chain the snapshot belongs to (one per client repository,
     * so that several repositories back up the same VM independently); never NULL. */
    const char *chain;
    bool frozen;        /* out: the guest's filesystems were frozen (guest agent) while taken */
    uint64_t frozen_us; /* out: for how long (0 when not frozen) */
};

/* Called around the snapshot of a VM's disks (freeze/thaw hooks): freeze returns 0 or a
 * negative errno and says why in err (no snapshot is taken then); thaw gets the result of the
 * snapshot so far. */
struct provider_quiesce {
    int (*freeze)(void *opaque, char *err, size_t errlen);
    void (*thaw)(void *opaque, int result);
    void *opaque;
};

/* ---- reading snapshot disks ---- */

/* disk_open flags. */
#define DISK_OPEN_STREAM 1u /* the reader will stream data: set up reads that skip the cache */
/* disk_reader_ops.pread flags.  DISK_READ_ONCE: the bytes are read once, so where they are not
 * cached they are read past the cache (when buf, off and n are multiples of direct_align). */
#define DISK_READ_ONCE 1u
/* disk_reader_ops.advise hints. */
enum disk_advice {
    DISK_ADVISE_WILLNEED, /* read soon: start reading now, without waiting */
    DISK_ADVISE_DONE,     /* read once and done: need not stay in the page cache */
};
/* disk_reader_ops.map flags. */
#define DISK_MAP_LOGICAL 1u /* data and holes only, as reads see them (no physical addresses) */

/* Receives a disk's allocated extents in order (data, or EXTENT_UNWRITTEN for ranges that are
 * allocated but read as zeros); 0 or a negative errno that stops the map. */
struct disk_map_sink {
    int (*emit)(void *opaque, const struct extent *e);
    void *opaque;
};

#define DISK_IDENTITY_MAX 512 /* bytes of disk_reader.identity, its NUL included: an NBD URI
                               * of a unix socket fits, percent-encoded */

struct disk_reader;
struct disk_reader_ops {
    /* Read n bytes at off into buf: 0 and *got (fewer only at the end of the disk). */
    int (*pread)(struct disk_reader *r, void *buf, size_t n, uint64_t off, unsigned flags,
                 size_t *got);
    /* Whether reading [off, off + n) would come from the page cache (true when unknown or
     * when the reader has no cache): callers skip their bounce buffers then. */
    bool (*cached)(struct disk_reader *r, uint64_t off, size_t n);
    /* The disk's size now. */
    int (*size)(struct disk_reader *r, uint64_t *size);
    /* The extents of [0, size) into sink (flags: DISK_MAP_*). */
    int (*map)(struct disk_reader *r, unsigned flags, struct disk_map_sink *sink);
    /* A new descriptor of the data that sendfile(2) can send from (the caller closes it), or
     * -EOPNOTSUPP. */
    int (*dup_fd)(struct disk_reader *r);
    /* Optional (NULL: no hints): DISK_ADVISE_WILLNEED starts reading [off, off + n) into the
     * page cache and returns at once, so that many small reads are in flight together, not one
     * after the other; DISK_ADVISE_DONE lets those bytes leave the cache once read. */
    void (*advise)(struct disk_reader *r, uint64_t off, uint64_t n, enum disk_advice advice);
    void (*close)(struct disk_reader *r);
};

/* An open snapshot disk.  Thread-safe: reads may run in parallel. */
struct disk_reader {
    const struct disk_reader_ops *ops;
    uint64_t size;                    /* at open */
    size_t direct_align;              /* see DISK_READ_ONCE; 0: reads never skip the cache */
    char identity[DISK_IDENTITY_MAX]; /* names the data on this host ("" unknown): a client
                                       * on the same host may read it directly */
};

static inline void disk_reader_close(struct disk_reader *r)
{
    if (r)
        r->ops->close(r);
}

/* ---- writing uploaded disks ---- */

struct disk_writer;
struct disk_writer_ops {
    /* Create the partial disk, size bytes long, reading as zeros.  err says why not (-EFBIG:
     * too large for the provider). */
    int (*create)(struct disk_writer *w, uint64_t size, char *err, size_t errlen);
    int (*pwrite)(struct disk_writer *w, const void *buf, size_t len, uint64_t off);
    /* Make a range read as zeros, as cheaply as the provider can. */
    int (*zero)(struct disk_writer *w, uint64_t off, uint64_t len);
    /* Data written so far is durable (fdatasync). */
    int (*flush)(struct disk_writer *w);
    /* Everything is durable, metadata included (fsync). */
    int (*sync)(struct disk_writer *w);
    /* Keep a writer's window of the page cache: wait for [done_off, +done_len) to be written
     * and drop it from the cache, start writing [off, +len). */
    int (*writeback)(struct disk_writer *w, uint64_t done_off, uint64_t done_len, uint64_t off,
                     uint64_t len);
    int (*size)(struct disk_writer *w, uint64_t *size);
    /* The data and holes of the partial disk, as disk_reader_ops.map with DISK_MAP_LOGICAL. */
    int (*map)(struct disk_writer *w, uint64_t size, struct disk_map_sink *sink);
    /* Publish the partial disk as the VM's disk, never replacing one (-EEXIST). */
    int (*publish)(struct disk_writer *w);
    /* Remove the partial disk (0 when gone already). */
    int (*remove)(struct disk_writer *w);
    void (*close)(struct disk_writer *w);
};

struct disk_writer {
    const struct disk_writer_ops *ops;
    char *partial; /* locator of the partial disk: recorded in the catalog, shown in messages */
    char *final;   /* locator of the disk once published */
};

static inline void disk_writer_close(struct disk_writer *w)
{
    if (w)
        w->ops->close(w);
}

struct provider_ops {
    const char *type; /* value of "type =" */
    /* Known keys besides "type", NULL-terminated: the config loader rejects others. */
    const char *const *keys;
    /* Check settings, allocate priv.  On error, err names the key and the cause. */
    int (*open)(struct provider *p, const struct provider_config *cfg, char *err, size_t errlen);
    void (*close)(struct provider *p);
    /* All VMs, in a stable order. */
    int (*list)(struct provider *p, vm_list *out);
    /* One VM by ID: 0, or -ENOENT. */
    int (*get)(struct provider *p, const char *vm_id, struct vm **out);
    /* ---- snapshots (each provider owns its snapshots; the catalog keeps only locators) ----
     *
     * A locator is the provider's string for one snapshot disk: stored by the catalog, given
     * back to the provider, never interpreted elsewhere.  Where the snapshot snap_id of disk is
     * to be: *out, before anything is made (so that a crash leaves a record that can be
     * cleaned up).  -EINVAL for IDs the provider cannot use, -EOPNOTSUPP for a disk it cannot
     * snapshot. */
    int (*snapshot_locate)(struct provider *p, const struct vm *vm, const struct vm_disk *disk,
                           const char *snap_id, char **out);
    /* Snapshot the n disks of vm at their locators (snapshot_locate), all or none: when one
     * fails, those made are removed.  q (NULL: none) is called around the disks' snapshots:
     * freeze before the first (its failure takes no snapshot), thaw after the last.  Fills
     * each disk's size and mode.  err says which disk failed and why (-ENOSPC: no space). */
    int (*snapshot_create)(struct provider *p, const struct vm *vm, const char *snap_id,
                           struct provider_snapshot_request *req,
                           struct provider_snapshot_disk *disks, size_t n,
                           const struct provider_quiesce *q, char *err, size_t errlen);
    /* Remove one snapshot disk and whatever an interrupted snapshot_create left of it; 0 when
     * it is already gone. */
    int (*snapshot_delete)(struct provider *p, const char *locator);
    /* Optional (NULL: nothing to release, the snapshot stays whole).  End the data of one
     * snapshot disk (its export, scratch image) but keep what disk_changes needs of it as a
     * base (its checkpoint); snapshot_delete later removes the rest.  0 when released already. */
    int (*snapshot_release)(struct provider *p, const char *locator);
    /* The snapshot disk at locator, open for reading (flags: DISK_OPEN_*).  A live snapshot
     * that the provider ended to spare its guest: -EFBIG (its scratch space reached the
     * configured limit) or -ETIME (it outlived its configured lifetime). */
    int (*disk_open)(struct provider *p, const char *locator, unsigned flags,
                     struct disk_reader **out);
    /* The changes from the snapshot disk base to the later one new (both locators of this
     * provider, snapshots of the same disk): ranges whose data may differ into changed, ranges
     * that were data in base and read as zeros now into zeroed, both in order, at the
     * provider's block precision; may over-report, never under-report.  *method (static)
     * names how they were found.  -ESTALE when the changes since base cannot be told any more
     * (checkpoint gone, inconsistent after a crash, chain broken), -EXDEV when base belongs to
     * another chain: err says why, and the client reads the disk in full. */
    int (*disk_changes)(struct provider *p, const char *base, const char *new,
                        struct extent_sink *changed, struct extent_sink *zeroed,
                        const char **method, char *err, size_t errlen);
    /* Optional (NULL: none).  The VM's definition as the platform keeps it, for backups: *text
     * (malloc'ed, the caller frees) in *format (static): "libvirt-xml", "qemu-qmp-json",
     * "ovm-vm.cfg". */
    int (*vm_definition)(struct provider *p, const struct vm *vm, char **text,
                         const char **format);

    /* ---- uploads of new disks (optional: NULL when the provider cannot create disks) ----
     *
     * Prepare the upload of the new disk `disk` of VM vm_id, creating the VM when it does not
     * exist yet: *out knows where the partial disk partial_name goes (private to the daemon,
     * never listed as a disk) and where it is published, but nothing is created yet
     * (disk_writer_ops.create).  -EINVAL for a VM or disk name the provider cannot use,
     * -ENOTDIR when the VM's place is taken by something that is not a VM, -EPERM when the
     * staging area is not the daemon's own, -EEXIST when the VM has such a disk; err says
     * which. */
    int (*upload_open)(struct provider *p, const char *vm_id, const char *disk,
                       const char *partial_name, struct disk_writer **out, char *err,
                       size_t errlen);
    /* Remove the partial disk at partial (a writer's partial locator, recorded by an earlier
     * run of the daemon) if it is the partial disk of upload id (named partial_name, or after
     * the ID by older versions): 0 removed, -ENOENT gone already, -EPERM when it is not the
     * upload's own (left alone). */
    int (*upload_discard)(struct provider *p, const char *partial, const char *id,
                          const char *partial_name);
};

struct provider {
    const struct provider_ops *ops;
    char *name;
    void *priv;
};

extern const struct provider_ops provider_dir_ops, provider_ovm_ops, provider_qemu_ops;
extern const struct provider_ops provider_libvirt_ops, provider_rbd_ops;

/* Whether s is a usable chain ID (provider_snapshot_request.chain). */
bool provider_chain_valid(const char *s);

/* Find ops by type name; NULL if unknown. */
const struct provider_ops *provider_ops_find(const char *type);

/* Create and open a provider from a config section; err explains failures. */
int provider_new(const struct provider_config *cfg, struct provider **out, char *err,
                 size_t errlen);
void provider_free(struct provider *p);

/* Helpers shared by providers. */
bool provider_id_is_safe(const char *id); /* non-empty, <= 255 bytes, no '/', not . or .. */
/* A stable UUID (v5-style layout) derived from provider and VM names, for providers that have
 * none of their own.  out: 37 bytes. */
void provider_derive_uuid(const char *provider, const char *vm_id, char out[37]);

/* ---- Helpers for provider implementations (provider.c) ---- */

/* The directory of the partial files of uploads (upload_open): hidden, so never a VM. */
#define PROVIDER_UPLOAD_STAGING_DIR  ".vmexport-staging"
#define PROVIDER_UPLOAD_STAGING_MODE 0700

/* Values of vm_disk.snapshot_mode. */
#define PROVIDER_SNAPSHOT_REFLINK "reflink"
#define PROVIDER_SNAPSHOT_COPY    "copy"

/* Upper bounds that keep a hostile or broken tree from growing lists without limit. */
#define PROVIDER_MAX_DIR_ENTRIES 100000 /* names read from one directory */
#define PROVIDER_MAX_DISKS       1024   /* disks of one VM */

/* A new VM owning copies of the strings; friendly_name NULL means id, uuid NULL means derived. */
int vm_new(const char *provider, const char *id, const char *friendly_name, const char *uuid,
           struct vm **out);
void vm_disk_clear(struct vm_disk *disk); /* frees the disk's strings */
/* Sets vm->snapshot_compatible: at least one compatible disk and every "w" disk compatible. */
void vm_update_snapshot_compatible(struct vm *vm);
void vm_list_sort_by_id(vm_list *l);
/* Appends the VMs of src to dst (all or nothing) and empties src. */
int vm_list_move(vm_list *dst, vm_list *src);

/* For open(): formats a message into err (when err is not NULL) and returns r. */
int provider_fail(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The same for a setting whose value could not be used: "[provider.NAME] key: value: cause",
 * the cause being strerror(-r). */
int provider_fail_setting(char *err, size_t errlen, int r, const char *provider, const char *key,
                          const char *value);

/* Whether snapshots in dir can be reflink clones: a real FICLONE probe, or when the probe
 * cannot run (read-only directory, no O_TMPFILE), a guess from the filesystem type. */
bool provider_probe_reflink(const char *dir);

/* The disk's file, open read-only: opened by its real_path without following symlinks, and
 * still the regular file that was listed (same st_dev and st_ino).  A descriptor, -ELOOP when
 * a symlink is on the way, -ESTALE when the file is no longer the listed one (replaced, or not
 * a regular file), -ENOENT, or another negative errno. */
int provider_disk_open(const struct vm_disk *disk);

/* Non-hidden names in a directory (not "." or ".."), sorted with strcmp. */
DEFINE_VECTOR_TYPE(provider_name_list, char *);
int provider_names_read(int dirfd, provider_name_list *out); /* out: an empty list */
void provider_names_free(provider_name_list *l); /* frees the names and resets the list */
#define CLEANUP_NAMES __attribute__((cleanup(provider_names_free)))

#endif
