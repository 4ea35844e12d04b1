/* Providers: where VMs and their disks come from, and where their snapshots go.
 *
 * One file per provider type implements struct provider_ops (dir.c, ovm.c).  A provider
 * instance is configured by one [provider.NAME] section.  VM and disk IDs seen in URLs are only
 * ever compared with what a provider lists; they are never joined into paths.
 */
#ifndef VMEXPORT_PROVIDER_PROVIDER_H
#define VMEXPORT_PROVIDER_PROVIDER_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

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
};
const char *provider_config_get(const struct provider_config *cfg, const char *key);

struct provider;

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
    /* Path where the snapshot snap_id of disk should be created (parents created by the
     * caller); must be on the same filesystem as the disk so that reflinks work. */
    int (*snapshot_path)(struct provider *p, const struct vm *vm, const struct vm_disk *disk,
                         const char *snap_id, char **out);
    /* Optional (NULL: the provider cannot create disks).  Where an upload of the new disk
     * `disk` of VM vm_id goes, creating the VM when it does not exist yet: *partial_path, the
     * file partial_name written while the upload runs, in a directory named
     * PROVIDER_UPLOAD_STAGING_DIR that only the daemon can read (created, mode 0700), never
     * listed as a disk and on the filesystem of *final_path, so that a rename publishes it;
     * *final_path, the disk once finished.  Neither file is created.  -EINVAL for a VM or disk
     * name the provider cannot use, -ENOTDIR when the VM's place is taken by something that is
     * not a VM, -EPERM when the staging directory is not the daemon's own. */
    int (*upload_paths)(struct provider *p, const char *vm_id, const char *disk,
                        const char *partial_name, char **partial_path, char **final_path);
};

struct provider {
    const struct provider_ops *ops;
    char *name;
    void *priv;
};

extern const struct provider_ops provider_dir_ops, provider_ovm_ops;

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

/* The directory of the partial files of uploads (upload_paths): hidden, so never a VM. */
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
