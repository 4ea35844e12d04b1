/* Taking and removing snapshots of whole VMs.
 *
 * A snapshot is all of a VM's snapshot-compatible disks or none: it is recorded as "creating",
 * each disk is cloned (reflink or hashed copy), and any failure removes the clones made so far
 * and the record.  A crash mid-way leaves a "creating" record that snapshot_recover() cleans at
 * the next start.  Freeze/thaw commands, when configured, run around the clones (hook.c).
 *
 * Other users may write to VM directories and even plant links in snapshot areas: every file
 * here is opened without following symlinks (fs/safeopen.h), and a disk is cloned from the file
 * the provider listed (same st_dev and st_ino) or not at all.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/clock.h"
#include "core/log.h"
#include "fs/blockhash.h"
#include "fs/clone.h"
#include "fs/safeopen.h"
#include "server/server.h"

/* Directories made for snapshots are private to the daemon. */
#define SNAPSHOT_DIR_MODE 0700

static int uuid4(char out[37])
{
    uint8_t b[16];
    if (RAND_bytes(b, sizeof(b)) != 1)
        return -EIO;
    b[6] = (b[6] & 0x0f) | 0x40; /* version 4 */
    b[8] = (b[8] & 0x3f) | 0x80; /* RFC 4122 variant */
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
    return 0;
}

static uint64_t now_us(void)
{
    return (uint64_t)clock_monotonic_ns() / 1000u;
}

/* The directory that is to hold the snapshot disk path, created (mkdir -p, SNAPSHOT_DIR_MODE)
 * with no symlink followed, open; *name: path's last component. */
static int open_disk_dir(const char *path, const char **name)
{
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path || !slash[1])
        return -EINVAL;
    CLEANUP_FREE char *dir = strndup(path, (size_t)(slash - path));
    if (!dir)
        return -ENOMEM;
    *name = slash + 1;
    return fs_mkdirs_nofollow(dir, SNAPSHOT_DIR_MODE);
}

/* Remove the temporary files of an unfinished clone of name in dfd that a crash left beside
 * it: the clone's "<disk>.vxtmp.XXXXXX" and its sidecar's "<disk>.vxhash.tmp.XXXXXX".  The
 * directory belongs to one snapshot, so nothing else there has those names. */
static void remove_clone_temps(int dfd, const char *dir, const char *name)
{
    CLEANUP_FREE char *clone_tmp = NULL, *hash_tmp = NULL;
    if (asprintf(&clone_tmp, "%s" CLONE_TMP_SUFFIX, name) < 0)
        clone_tmp = NULL;
    if (asprintf(&hash_tmp, "%s" BLOCKHASH_SUFFIX BLOCKHASH_TMP_SUFFIX, name) < 0)
        hash_tmp = NULL;
    if (!clone_tmp || !hash_tmp)
        return;
    int fd = fcntl(dfd, F_DUPFD_CLOEXEC, 0); /* fdopendir takes it */
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strncmp(e->d_name, clone_tmp, strlen(clone_tmp)) ||
            !strncmp(e->d_name, hash_tmp, strlen(hash_tmp))) {
            if (unlinkat(dfd, e->d_name, 0) == 0)
                log_warn("removed %s/%s, left by an interrupted snapshot", dir, e->d_name);
        }
    }
    closedir(d);
}

/* rmdir of the absolute path dir when empty, without following symlinks; 0 when removed. */
static int remove_empty_dir(const char *dir)
{
    const char *name;
    CLEANUP_CLOSE int pfd = fs_open_parent_nofollow(dir, &name);
    if (pfd < 0)
        return pfd;
    return unlinkat(pfd, name, AT_REMOVEDIR) < 0 ? -errno : 0;
}

/* Remove a snapshot disk file, its sidecar, temporary files of an interrupted clone and its
 * now-empty parent directories (up to two levels: <snapshot>/ and, for dir providers, <vm>/),
 * all without following a symlink: one planted in the snapshot area leads nowhere. */
static int remove_disk_file(const char *path)
{
    const char *name;
    CLEANUP_CLOSE int dfd = fs_open_parent_nofollow(path, &name);
    if (dfd == -ENOENT)
        return 0;
    if (dfd < 0)
        return dfd;
    int r = 0;
    if (unlinkat(dfd, name, 0) < 0 && errno != ENOENT)
        r = -errno;
    blockhash_remove_at(dfd, name);
    CLEANUP_FREE char *dir = strndup(path, (size_t)(name - 1 - path));
    if (!dir)
        return r;
    remove_clone_temps(dfd, dir, name);
    if (remove_empty_dir(dir) == 0) {
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = '\0';
            remove_empty_dir(dir); /* fails harmlessly when not empty */
        }
    }
    return r;
}

/* Clone the VM disk vd into the snapshot disk d: from vd's file as listed, opened without
 * following symlinks, into d's directory made the same way. */
static int clone_disk(struct server *s, const struct vm_disk *vd, struct snapshot_disk *d,
                      const char *snap_id, char *err, size_t errlen)
{
    struct clone_result res;
    const char *name;
    CLEANUP_CLOSE int in = vd ? provider_disk_open(vd) : -ENOENT;
    if (in < 0) {
        snprintf(err, errlen, "snapshot %s: disk %s: opening %s: %s", snap_id, d->name,
                 d->parent_path,
                 in == -ELOOP    ? "a symlink is on the way; symlinks are not followed"
                 : in == -ESTALE ? "it is no longer the file that was listed (replaced meanwhile)"
                                 : strerror(-in));
        return in;
    }
    CLEANUP_CLOSE int dfd = open_disk_dir(d->path, &name);
    if (dfd < 0) {
        snprintf(err, errlen, "snapshot %s: disk %s: creating the directory of %s: %s%s", snap_id,
                 d->name, d->path, strerror(-dfd),
                 dfd == -ELOOP ? " (a symlink in the snapshot area; symlinks are not followed)"
                               : "");
        return dfd;
    }
    enum clone_mode mode = !strcmp(d->mode, "reflink") ? CLONE_AUTO : CLONE_COPY;
    int r = fs_clone_at(in, dfd, name, mode, s->cfg->block_hash, &res);
    if (r < 0) {
        snprintf(err, errlen, "snapshot %s: disk %s: cloning %s to %s: %s", snap_id, d->name,
                 d->parent_path, d->path,
                 r == -ENOSPC ? "no space left on the repository" : strerror(-r));
        return r;
    }
    d->size = res.size;
    free(d->mode);
    d->mode = strdup(res.mode == CLONE_REFLINK ? "reflink" : "copy");
    return d->mode ? 0 : -ENOMEM;
}

/* The disk of vm named name: snapshot disks are made from the VM's, one per name. */
static const struct vm_disk *vm_disk_of(const struct vm *vm, const char *name)
{
    for (size_t i = 0; i < vm->disks.len; i++)
        if (!strcmp(vm->disks.ptr[i].name, name))
            return &vm->disks.ptr[i];
    return NULL; /* not reached: snapshot_create made every snapshot disk from one of vm's */
}

bool snapshot_label_valid(const char *label)
{
    size_t n = strnlen(label, SNAPSHOT_LABEL_MAX + 1);
    if (n == 0 || n > SNAPSHOT_LABEL_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = label[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("._:@+=/-", c)))
            return false;
    }
    return true;
}

int snapshot_create(struct server *s, struct provider *p, const struct vm *vm, const char *label,
                    struct snapshot **out, char *err, size_t errlen)
{
    uint64_t t0 = now_us();
    char id[37];
    int r = uuid4(id);
    if (r < 0) {
        snprintf(err, errlen, "no random numbers for a snapshot ID");
        return r;
    }
    struct snapshot *snap = calloc(1, sizeof(*snap));
    if (!snap)
        return -ENOMEM;
    snap->id = strdup(id);
    snap->vm_id = strdup(vm->id);
    snap->provider = strdup(p->name);
    snap->created_at = clock_rfc3339_now();
    snap->status = strdup("creating");
    snap->label = label ? strdup(label) : NULL;
    if (!snap->id || !snap->vm_id || !snap->provider || !snap->created_at || !snap->status ||
        (label && !snap->label)) {
        snapshot_free(snap);
        return -ENOMEM;
    }
    for (size_t i = 0; i < vm->disks.len; i++) {
        const struct vm_disk *vd = &vm->disks.ptr[i];
        if (!vd->snapshot_compatible)
            continue;
        struct snapshot_disk d = {0};
        d.name = strdup(vd->name);
        d.parent_path = strdup(vd->path);
        d.repo_mountpoint = vd->repo_mountpoint ? strdup(vd->repo_mountpoint) : NULL;
        d.mode = strdup(vd->snapshot_mode ? vd->snapshot_mode : "copy");
        if (asprintf(&d.change_id, "%s/%zu", id, i) < 0)
            d.change_id = NULL;
        r = p->ops->snapshot_path(p, vm, vd, id, &d.path);
        if (r < 0 || !d.name || !d.parent_path || !d.mode || !d.change_id ||
            snapshot_disk_list_append(&snap->disks, d) < 0) {
            free(d.name);
            free(d.parent_path);
            free(d.repo_mountpoint);
            free(d.mode);
            free(d.change_id);
            free(d.path);
            snprintf(err, errlen, "VM %s: disk %s: no snapshot location: %s", vm->id, vd->name,
                     strerror(r < 0 ? -r : ENOMEM));
            snapshot_free(snap);
            return r < 0 ? r : -ENOMEM;
        }
    }
    if (snap->disks.len == 0) {
        snprintf(err, errlen, "VM %s has no snapshot-compatible disk", vm->id);
        snapshot_free(snap);
        return -EINVAL;
    }

    if ((r = catalog_snapshot_add(s->catalog, snap)) < 0) {
        snprintf(err, errlen, "catalog: %s", strerror(-r));
        snapshot_free(snap);
        return r;
    }
    if ((r = hook_run(s->cfg->freeze_argv, vm->id, "freeze", s->cfg->hook_timeout)) < 0) {
        snprintf(err, errlen, "VM %s: freeze command failed; no snapshot taken", vm->id);
        goto rollback;
    }
    size_t done = 0;
    for (; done < snap->disks.len; done++) {
        struct snapshot_disk *d = &snap->disks.ptr[done];
        if ((r = clone_disk(s, vm_disk_of(vm, d->name), d, id, err, errlen)) < 0)
            break;
    }
    int tr = hook_run(s->cfg->thaw_argv, vm->id, "thaw", s->cfg->hook_timeout);
    if (r == 0 && tr < 0) {
        /* The data is consistent (frozen while cloned); a failed thaw is the operator's to see. */
        log_warn("VM %s: thaw command failed after snapshot %s", vm->id, id);
    }
    if (r < 0) {
        /* The disk that failed too: its temporary files and the directories made for it. */
        for (size_t i = 0; i <= done && i < snap->disks.len; i++)
            remove_disk_file(snap->disks.ptr[i].path);
        goto rollback;
    }
    /* Sizes became known while cloning: record them with the final status, in one step. */
    free(snap->status);
    snap->status = strdup("ready");
    r = snap->status ? catalog_snapshot_finish(s->catalog, snap) : -ENOMEM;
    if (r < 0) {
        snprintf(err, errlen, "catalog: %s", strerror(-r));
        for (size_t i = 0; i < snap->disks.len; i++)
            remove_disk_file(snap->disks.ptr[i].path);
        goto rollback;
    }
    metrics_snapshot_created(&s->metrics, now_us() - t0);
    log_info("snapshot %s of VM %s: %zu disks in %.3f s", id, vm->id, snap->disks.len,
             (double)(now_us() - t0) / 1e6);
    *out = snap;
    return 0;

rollback:
    catalog_snapshot_remove(s->catalog, id);
    atomic_fetch_add(&s->metrics.snapshot_failures, 1);
    log_error("%s", err);
    snapshot_free(snap);
    return r;
}

int snapshot_delete(struct server *s, struct snapshot *snap)
{
    int r = catalog_snapshot_set_status(s->catalog, snap->id, "deleting");
    if (r < 0)
        return r;
    /* After the status change, so that no lookup from now on can cache it as ready; before the
     * files go, so that the cache holds none of them open. */
    atomic_fetch_add(&s->snapshots_gen, 1);
    disk_cache_clear(s->disk_cache);
    int first_err = 0;
    for (size_t i = 0; i < snap->disks.len; i++) {
        int e = remove_disk_file(snap->disks.ptr[i].path);
        if (e < 0 && !first_err) {
            first_err = e;
            log_error("snapshot %s: removing %s: %s", snap->id, snap->disks.ptr[i].path,
                      strerror(-e));
        }
    }
    if (first_err)
        return first_err; /* stays "deleting"; retried by the next delete or start */
    if ((r = catalog_snapshot_remove(s->catalog, snap->id)) < 0)
        return r;
    atomic_fetch_add(&s->metrics.snapshots_deleted, 1);
    return 0;
}

int snapshot_recover(struct server *s)
{
    snapshot_list l = VECTOR_INIT;
    int r = catalog_recover(s->catalog, &l);
    for (size_t i = 0; r == 0 && i < l.len; i++) {
        log_warn("snapshot %s of VM %s was left '%s' by a crash: removing it", l.ptr[i]->id,
                 l.ptr[i]->vm_id, l.ptr[i]->status);
        r = snapshot_delete(s, l.ptr[i]);
    }
    snapshot_list_free(&l);
    return r;
}
