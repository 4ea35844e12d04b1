/* The "dir" provider: a plain directory of VMs, for embedded use and tests.
 *
 *   [provider.lab]
 *   type = dir
 *   path = /srv/vms                  each non-hidden subdirectory is a VM, named after it
 *   snapshot_dir = /srv/vms/.snaps   default <path>/.vmexport-snapshots, same filesystem
 *
 * The disks of a VM are the regular files *.img, *.raw and *.qcow2 of its directory (no
 * symlinks, nothing hidden), named sda, sdb ... in name order.  Snapshots go to
 * <snapshot_dir>/<vm>/<snapshot>/<disk>, so that a reflink clone stays on the disk's filesystem.
 * Uploads of new disks are written to <path>/.vmexport-staging/<partial name> (a directory only
 * the daemon can read, hidden, so not a VM) and renamed to <path>/<vm>/<disk> when finished; the
 * VM directory is created when missing.  A VM directory on another filesystem than <path> gets
 * its own <path>/<vm>/.vmexport-staging, as a rename cannot cross filesystems.
 */
#include "provider.h"
#include "provider/filedisk.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/log.h"
#include "fs/safeopen.h"

#define DIR_SNAPSHOT_DIR_DEFAULT ".vmexport-snapshots" /* under path; hidden, so not a VM */
#define DIR_SNAPSHOT_DIR_MODE    0700                  /* snapshots hold whole disks */
#define DIR_VM_DIR_MODE          0700                  /* VM directories made for uploads */

/* Device names as the Linux sd driver gives them: sda ... sdz, sdaa ... */
#define DIR_DEVICE_PREFIX   "sd"
#define DIR_DEVICE_LETTERS  26
#define DIR_DEVICE_NAME_MAX 16 /* "sd" + letters for far more than PROVIDER_MAX_DISKS */

static const char *const dir_keys[] = {"path", "snapshot_dir", NULL};
static const char *const dir_disk_suffixes[] = {".img", ".raw", ".qcow2"};

struct dir_priv {
    struct filedisk fdk; /* first: filedisk.c's */
    char *root;         /* canonical path of "path" */
    char *snapshot_dir; /* canonical */
    dev_t snapshot_dev; /* to keep snapshot_dir out of the VM list when it lies under root */
    ino_t snapshot_ino;
    bool reflink; /* probed once at open */
};

static void dir_priv_free(struct dir_priv *dp)
{
    if (!dp)
        return;
    free(dp->root);
    free(dp->snapshot_dir);
    free(dp);
}

static int dir_open(struct provider *p, const struct provider_config *cfg, char *err, size_t errlen)
{
    const char *path = provider_config_get(cfg, "path");
    const char *snapshot_dir = provider_config_get(cfg, "snapshot_dir");
    CLEANUP_FREE char *root = NULL, *default_dir = NULL, *snap = NULL;
    struct stat st, sst;

    if (!path || !path[0])
        return provider_fail(err, errlen, -EINVAL,
                             "[provider.%s] path: missing (the directory that holds one "
                             "subdirectory per VM)",
                             cfg->name);
    if (stat(path, &st) < 0)
        return provider_fail_setting(err, errlen, -errno, cfg->name, "path", path);
    if (!S_ISDIR(st.st_mode))
        return provider_fail_setting(err, errlen, -ENOTDIR, cfg->name, "path", path);
    root = realpath(path, NULL);
    if (!root)
        return provider_fail_setting(err, errlen, -errno, cfg->name, "path", path);

    if (!snapshot_dir) {
        if (asprintf(&default_dir, "%s/%s", root, DIR_SNAPSHOT_DIR_DEFAULT) < 0) {
            default_dir = NULL;
            return -ENOMEM;
        }
        snapshot_dir = default_dir;
    } else if (!snapshot_dir[0]) {
        return provider_fail(err, errlen, -EINVAL, "[provider.%s] snapshot_dir: empty value",
                             cfg->name);
    }
    if (mkdir(snapshot_dir, DIR_SNAPSHOT_DIR_MODE) < 0 && errno != EEXIST)
        return provider_fail_setting(err, errlen, -errno, cfg->name, "snapshot_dir", snapshot_dir);
    if (stat(snapshot_dir, &sst) < 0)
        return provider_fail_setting(err, errlen, -errno, cfg->name, "snapshot_dir", snapshot_dir);
    if (!S_ISDIR(sst.st_mode))
        return provider_fail_setting(err, errlen, -ENOTDIR, cfg->name, "snapshot_dir",
                                     snapshot_dir);
    if (sst.st_dev != st.st_dev)
        return provider_fail(err, errlen, -EXDEV,
                             "[provider.%s] snapshot_dir: %s is not on the filesystem of path %s; "
                             "snapshots are reflink clones of the disks, which need both on one "
                             "filesystem",
                             cfg->name, snapshot_dir, path);
    snap = realpath(snapshot_dir, NULL);
    if (!snap)
        return provider_fail_setting(err, errlen, -errno, cfg->name, "snapshot_dir", snapshot_dir);

    struct filedisk fdk;
    int r = filedisk_init(&fdk, cfg, err, errlen);
    if (r < 0)
        return r;
    struct dir_priv *dp = calloc(1, sizeof(*dp));
    if (!dp)
        return -ENOMEM;
    dp->fdk = fdk;
    dp->root = TAKE_PTR(root);
    dp->snapshot_dir = TAKE_PTR(snap);
    dp->snapshot_dev = sst.st_dev;
    dp->snapshot_ino = sst.st_ino;
    dp->reflink = provider_probe_reflink(dp->snapshot_dir);
    p->priv = dp;
    log_debug("[provider.%s] %s: snapshots in %s (%s)", cfg->name, dp->root, dp->snapshot_dir,
              dp->reflink ? PROVIDER_SNAPSHOT_REFLINK : PROVIDER_SNAPSHOT_COPY);
    return 0;
}

static void dir_close(struct provider *p)
{
    dir_priv_free(p->priv);
    p->priv = NULL;
}

static bool dir_is_disk_name(const char *name)
{
    size_t n = strlen(name);
    if (name[0] == '.')
        return false;
    for (size_t i = 0; i < ARRAY_SIZE(dir_disk_suffixes); i++) {
        size_t s = strlen(dir_disk_suffixes[i]);
        if (n > s && strcmp(name + n - s, dir_disk_suffixes[i]) == 0)
            return true;
    }
    return false;
}

/* The name of the index-th disk (from 0): bijective base 26, as "sdz" is followed by "sdaa". */
static void dir_device_name(size_t index, char out[DIR_DEVICE_NAME_MAX])
{
    char letters[DIR_DEVICE_NAME_MAX];
    size_t n = 0, i = index + 1;
    while (i > 0 && n < sizeof(letters) - sizeof(DIR_DEVICE_PREFIX)) {
        i--;
        letters[n++] = (char)('a' + i % DIR_DEVICE_LETTERS);
        i /= DIR_DEVICE_LETTERS;
    }
    size_t o = sizeof(DIR_DEVICE_PREFIX) - 1;
    memcpy(out, DIR_DEVICE_PREFIX, o);
    while (n > 0)
        out[o++] = letters[--n];
    out[o] = '\0';
}

static int dir_disk_add(const struct dir_priv *dp, struct vm *vm, const char *name,
                        const struct stat *st)
{
    char device[DIR_DEVICE_NAME_MAX];
    struct vm_disk d = {0};

    dir_device_name(vm->disks.len, device);
    d.name = strdup(name);
    if (asprintf(&d.path, "%s/%s/%s", dp->root, vm->id, name) < 0)
        d.path = NULL;
    d.device_name = strdup(device);
    d.mode = strdup("w");
    d.size = st->st_size > 0 ? (uint64_t)st->st_size : 0;
    d.snapshot_compatible = true;
    d.snapshot_mode = strdup(dp->reflink ? PROVIDER_SNAPSHOT_REFLINK : PROVIDER_SNAPSHOT_COPY);
    d.repo_mountpoint = strdup(dp->root);
    d.real_path = d.path ? strdup(d.path) : NULL; /* root is canonical, names are components */
    d.dev = (uint64_t)st->st_dev;
    d.ino = (uint64_t)st->st_ino;
    int r = -ENOMEM;
    if (d.name && d.path && d.device_name && d.mode && d.snapshot_mode && d.repo_mountpoint &&
        d.real_path)
        r = vm_disk_list_append(&vm->disks, d);
    if (r < 0)
        vm_disk_clear(&d);
    return r;
}

/* The VM in subdirectory id of rootfd: 0, -ENOENT when that is not a VM, or an error. */
static int dir_vm_load(struct provider *p, int rootfd, const char *id, struct vm **out)
{
    const struct dir_priv *dp = p->priv;
    CLEANUP_NAMES provider_name_list names = VECTOR_INIT;
    struct stat st;
    struct vm *vm = NULL;

    if (fstatat(rootfd, id, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    if (!S_ISDIR(st.st_mode) || (st.st_dev == dp->snapshot_dev && st.st_ino == dp->snapshot_ino))
        return -ENOENT;
    CLEANUP_CLOSE int fd = openat(rootfd, id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOTDIR || errno == ELOOP ? -ENOENT : -errno; /* replaced meanwhile */
    int r = provider_names_read(fd, &names);
    if (r < 0)
        return r;

    r = vm_new(p->name, id, NULL, NULL, &vm);
    if (r < 0)
        return r;
    for (size_t i = 0; i < names.len; i++) {
        if (!dir_is_disk_name(names.ptr[i]))
            continue;
        if (fstatat(fd, names.ptr[i], &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
            continue; /* gone meanwhile, a symlink, a directory ... */
        r = dir_disk_add(dp, vm, names.ptr[i], &st);
        if (r < 0) {
            vm_free(vm);
            return r;
        }
    }
    vm_update_snapshot_compatible(vm);
    *out = vm;
    return 0;
}

static int dir_list(struct provider *p, vm_list *out)
{
    const struct dir_priv *dp = p->priv;
    CLEANUP_NAMES provider_name_list names = VECTOR_INIT;
    vm_list vms = VECTOR_INIT;

    CLEANUP_CLOSE int rootfd = fs_open_nofollow(dp->root, O_RDONLY | O_DIRECTORY, 0);
    if (rootfd < 0) {
        int r = rootfd;
        log_warn("[provider.%s] %s: %s", p->name, dp->root, strerror(-r));
        return r;
    }
    int r = provider_names_read(rootfd, &names);
    if (r < 0) {
        log_warn("[provider.%s] %s: %s", p->name, dp->root, strerror(-r));
        return r;
    }
    for (size_t i = 0; i < names.len; i++) {
        struct vm *vm = NULL;
        r = dir_vm_load(p, rootfd, names.ptr[i], &vm);
        if (r == -ENOMEM)
            goto fail;
        if (r < 0) {
            if (r != -ENOENT)
                log_warn("[provider.%s] %s/%s: %s; skipped", p->name, dp->root, names.ptr[i],
                         strerror(-r));
            continue;
        }
        r = vm_list_append(&vms, vm);
        if (r < 0) {
            vm_free(vm);
            goto fail;
        }
    }
    vm_list_sort_by_id(&vms);
    r = vm_list_move(out, &vms);
fail:
    vm_list_free(&vms);
    return r;
}

static int dir_get(struct provider *p, const char *vm_id, struct vm **out)
{
    const struct dir_priv *dp = p->priv;

    /* Checked before vm_id comes near a path; hidden names are never listed. */
    if (!provider_id_is_safe(vm_id) || vm_id[0] == '.')
        return -ENOENT;
    CLEANUP_CLOSE int rootfd = fs_open_nofollow(dp->root, O_RDONLY | O_DIRECTORY, 0);
    if (rootfd < 0)
        return rootfd;
    int r = dir_vm_load(p, rootfd, vm_id, out);
    /* Whatever list would skip is not found. */
    return r == -ENOMEM ? r : r < 0 ? -ENOENT : 0;
}

static int dir_snapshot_locate(struct provider *p, const struct vm *vm, const struct vm_disk *disk,
                               const char *snap_id, char **out)
{
    const struct dir_priv *dp = p->priv;

    if (!provider_id_is_safe(vm->id) || !provider_id_is_safe(disk->name) ||
        !provider_id_is_safe(snap_id))
        return -EINVAL;
    CLEANUP_FREE char *vm_dir = NULL;
    if (asprintf(&vm_dir, "%s/%s", dp->snapshot_dir, vm->id) < 0) {
        vm_dir = NULL;
        return -ENOMEM;
    }
    return filedisk_locate(vm_dir, snap_id, disk->name, out);
}

/* The staging directory of uploads in the directory parentfd: made when missing; one that
 * exists must be a directory of the daemon's user, not a link, and is made private again if its
 * mode was changed.  Its device in *dev. */
static int dir_staging(struct provider *p, int parentfd, const char *parent, dev_t *dev)
{
    if (mkdirat(parentfd, PROVIDER_UPLOAD_STAGING_DIR, PROVIDER_UPLOAD_STAGING_MODE) < 0 &&
        errno != EEXIST)
        return -errno;
    CLEANUP_CLOSE int fd = openat(parentfd, PROVIDER_UPLOAD_STAGING_DIR,
                                  O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        int r = errno == ELOOP || errno == ENOTDIR ? -EPERM : -errno;
        log_error("[provider.%s] %s/%s: %s", p->name, parent, PROVIDER_UPLOAD_STAGING_DIR,
                  r == -EPERM ? "not a directory (a link?); uploads refused" : strerror(errno));
        return r;
    }
    if (st.st_uid != geteuid()) {
        log_error("[provider.%s] %s/%s belongs to user %u, not to the daemon; uploads refused",
                  p->name, parent, PROVIDER_UPLOAD_STAGING_DIR, (unsigned)st.st_uid);
        return -EPERM;
    }
    if ((st.st_mode & 07777) != PROVIDER_UPLOAD_STAGING_MODE &&
        fchmod(fd, PROVIDER_UPLOAD_STAGING_MODE) < 0)
        return -errno;
    *dev = st.st_dev;
    return 0;
}

static int dir_upload_paths(struct provider *p, const char *vm_id, const char *disk,
                            const char *partial_name, char **partial_path, char **final_path)
{
    const struct dir_priv *dp = p->priv;
    struct stat st;

    /* Hidden names would never be listed: a hidden VM or disk could never be read back. */
    if (!provider_id_is_safe(vm_id) || vm_id[0] == '.' || !provider_id_is_safe(disk) ||
        !dir_is_disk_name(disk) || !provider_id_is_safe(partial_name))
        return -EINVAL;
    CLEANUP_CLOSE int rootfd = open(dp->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0)
        return -errno;
    if (mkdirat(rootfd, vm_id, DIR_VM_DIR_MODE) == 0)
        log_info("[provider.%s] created VM directory %s/%s for an upload", p->name, dp->root,
                 vm_id);
    else if (errno != EEXIST)
        return -errno;
    /* What list would not show as a VM (a symlink, a file, the snapshot directory) is not one. */
    if (fstatat(rootfd, vm_id, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    if (!S_ISDIR(st.st_mode) || (st.st_dev == dp->snapshot_dev && st.st_ino == dp->snapshot_ino))
        return -ENOTDIR;
    dev_t staging_dev;
    int r = dir_staging(p, rootfd, dp->root, &staging_dev);
    if (r < 0)
        return r;
    bool own_staging = staging_dev != st.st_dev; /* the VM directory is a mount point */
    if (own_staging) {
        CLEANUP_CLOSE int vmfd =
            openat(rootfd, vm_id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (vmfd < 0)
            return -errno;
        CLEANUP_FREE char *vm_dir = NULL;
        if (asprintf(&vm_dir, "%s/%s", dp->root, vm_id) < 0) {
            vm_dir = NULL;
            return -ENOMEM;
        }
        if ((r = dir_staging(p, vmfd, vm_dir, &staging_dev)) < 0)
            return r;
    }
    char *partial = NULL, *final = NULL;
    if ((own_staging ? asprintf(&partial, "%s/%s/%s/%s", dp->root, vm_id,
                                PROVIDER_UPLOAD_STAGING_DIR, partial_name)
                     : asprintf(&partial, "%s/%s/%s", dp->root, PROVIDER_UPLOAD_STAGING_DIR,
                                partial_name)) < 0)
        partial = NULL;
    if (asprintf(&final, "%s/%s/%s", dp->root, vm_id, disk) < 0)
        final = NULL;
    if (!partial || !final) {
        free(partial);
        free(final);
        return -ENOMEM;
    }
    *partial_path = partial;
    *final_path = final;
    return 0;
}

static int dir_upload_open(struct provider *p, const char *vm_id, const char *disk,
                           const char *partial_name, struct disk_writer **out, char *err,
                           size_t errlen)
{
    CLEANUP_FREE char *partial = NULL, *final = NULL;
    int r = dir_upload_paths(p, vm_id, disk, partial_name, &partial, &final);
    if (r == -EINVAL)
        snprintf(err, errlen, "provider %s cannot use VM '%s' with disk '%s' (bad name)", p->name,
                 vm_id, disk);
    else if (r == -ENOTDIR)
        snprintf(err, errlen, "provider %s: VM '%s' is taken by something that is not a VM",
                 p->name, vm_id);
    else if (r < 0)
        snprintf(err, errlen, "provider %s: VM '%s': %s", p->name, vm_id, strerror(-r));
    if (r < 0)
        return r;
    return filedisk_upload_open(partial, final, vm_id, disk, out, err, errlen);
}

const struct provider_ops provider_dir_ops = {
    .type = "dir",
    .keys = dir_keys,
    .open = dir_open,
    .close = dir_close,
    .list = dir_list,
    .get = dir_get,
    .snapshot_locate = dir_snapshot_locate,
    .snapshot_create = filedisk_snapshot_create,
    .snapshot_delete = filedisk_snapshot_delete,
    .disk_open = filedisk_disk_open,
    .disk_changes = filedisk_disk_changes,
    .upload_open = dir_upload_open,
    .upload_discard = filedisk_upload_discard,
};
