/* Snapshot disks kept as files, for the providers whose disks are files; see filedisk.h.
 *
 * Snapshots: each disk is cloned (fs_clone_at: reflink, or a hashed sparse copy) from the file
 * the provider listed (same st_dev and st_ino, provider_disk_open) into a directory made
 * without following symlinks; a failure removes what was made.  Deletion (filedisk_remove) is
 * the one place that removes a snapshot file, its sidecar, the temporary files of an
 * interrupted clone and the directories left empty, for rollbacks and deletions alike.
 * Readers: the file open read-only, plus an O_DIRECT descriptor and an untouched mapping (for
 * mincore) when the reader streams; read-ahead hints are posix_fadvise.  Uploads: a partial file, 0600, in the provider's staging
 * directory, renamed to the disk without replacing anything.
 */
#include "provider/filedisk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/log.h"
#include "fs/clone.h"
#include "fs/fsdiff.h"
#include "fs/fsinfo.h"
#include "fs/fsmap.h"
#include "fs/safeopen.h"
#include "fs/zero.h"

/* Directories made for snapshots are private to the daemon. */
#define SNAPSHOT_DIR_MODE 0700
/* Partial files hold whole disks: private to the daemon until renamed into place. */
#define UPLOAD_FILE_MODE 0600
/* Names of partial files before they moved to the staging directory (recovery only). */
#define LEGACY_PARTIAL_PREFIX ".vmexport-upload-"
#define PARTIAL_SUFFIX        ".partial"
/* Alignment of offsets, lengths and buffers that O_DIRECT reads need (fs_pread_direct). */
#define FILE_DIRECT_ALIGN 4096

_Static_assert(DISK_IDENTITY_MAX >= FS_FILE_ID_MAX, "a file ID fits a disk identity");

int filedisk_init(struct filedisk *fd, const struct provider_config *cfg, char *err, size_t errlen)
{
    fd->hash = BLOCKHASH_DEFAULT;
    if (cfg->block_hash && blockhash_algo_parse(cfg->block_hash, &fd->hash) < 0)
        return provider_fail(err, errlen, -EINVAL,
                             "[snapshot] block_hash: '%s' is not sha256 "
                             "or xxh128",
                             cfg->block_hash);
    return 0;
}

int filedisk_locate(const char *dir, const char *snap_id, const char *disk_name, char **out)
{
    if (asprintf(out, "%s/%s/%s", dir, snap_id, disk_name) < 0) {
        *out = NULL;
        return -ENOMEM;
    }
    return 0;
}

/* ---- removing snapshot files ---- */

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
static int filedisk_remove(const char *path)
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

int filedisk_snapshot_delete(struct provider *p, const char *locator)
{
    (void)p;
    return filedisk_remove(locator);
}

/* ---- taking snapshots ---- */

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

/* Clone the VM disk of d into d's locator: from the disk's file as listed, opened without
 * following symlinks, into the locator's directory made the same way. */
static int clone_disk(const struct filedisk *fdk, struct provider_snapshot_disk *d,
                      const char *snap_id, char *err, size_t errlen)
{
    const struct vm_disk *vd = d->disk;
    struct clone_result res;
    const char *name;
    CLEANUP_CLOSE int in = provider_disk_open(vd);
    if (in < 0) {
        snprintf(err, errlen, "snapshot %s: disk %s: opening %s: %s", snap_id, vd->name, vd->path,
                 in == -ELOOP    ? "a symlink is on the way; symlinks are not followed"
                 : in == -ESTALE ? "it is no longer the file that was listed (replaced meanwhile)"
                                 : strerror(-in));
        return in;
    }
    CLEANUP_CLOSE int dfd = open_disk_dir(d->locator, &name);
    if (dfd < 0) {
        snprintf(err, errlen, "snapshot %s: disk %s: creating the directory of %s: %s%s", snap_id,
                 vd->name, d->locator, strerror(-dfd),
                 dfd == -ELOOP ? " (a symlink in the snapshot area; symlinks are not followed)"
                               : "");
        return dfd;
    }
    bool reflink = vd->snapshot_mode && !strcmp(vd->snapshot_mode, PROVIDER_SNAPSHOT_REFLINK);
    int r = fs_clone_at(in, dfd, name, reflink ? CLONE_AUTO : CLONE_COPY, fdk->hash, &res);
    if (r < 0) {
        snprintf(err, errlen, "snapshot %s: disk %s: cloning %s to %s: %s", snap_id, vd->name,
                 vd->path, d->locator,
                 r == -ENOSPC ? "no space left on the repository" : strerror(-r));
        return r;
    }
    d->size = res.size;
    free(d->mode);
    d->mode =
        strdup(res.mode == CLONE_REFLINK ? PROVIDER_SNAPSHOT_REFLINK : PROVIDER_SNAPSHOT_COPY);
    return d->mode ? 0 : -ENOMEM;
}

int filedisk_snapshot_create(struct provider *p, const struct vm *vm, const char *snap_id,
                             struct provider_snapshot_request *req,
                             struct provider_snapshot_disk *disks, size_t n,
                             const struct provider_quiesce *q, char *err, size_t errlen)
{
    (void)vm; /* each disk names its file */
    (void)req; /* file snapshots keep no chain: their changes come from the files themselves */
    const struct filedisk *fdk = p->priv;
    int r = q && q->freeze ? q->freeze(q->opaque, err, errlen) : 0;
    if (r < 0)
        return r;
    size_t done = 0;
    for (; done < n; done++)
        if ((r = clone_disk(fdk, &disks[done], snap_id, err, errlen)) < 0)
            break;
    if (q && q->thaw)
        q->thaw(q->opaque, r);
    if (r < 0) {
        /* The disk that failed too: its temporary files and the directories made for it. */
        for (size_t i = 0; i <= done && i < n; i++)
            filedisk_remove(disks[i].locator);
    }
    return r;
}

/* ---- reading ---- */

struct file_reader {
    struct disk_reader base;
    int fd;
    int direct_fd; /* the same file with O_DIRECT, or -1 */
    void *map;     /* the file mapped read-only, never touched: for mincore; or NULL */
    uint64_t map_len;
};

static int fr_pread(struct disk_reader *r, void *buf, size_t n, uint64_t off, unsigned flags,
                    size_t *got)
{
    struct file_reader *f = (struct file_reader *)r;
    /* A backup reads each byte once: bytes not in the page cache skip it (in a VM the cache's
     * fresh pages cost more than the copy); cached bytes are read from the cache. */
    int dfd = (flags & DISK_READ_ONCE) && f->direct_fd >= 0 &&
                      !fs_range_cached(f->map, f->map_len, off, n)
                  ? f->direct_fd
                  : -1;
    return fs_pread_direct(f->fd, dfd, buf, n, off, got);
}

static bool fr_cached(struct disk_reader *r, uint64_t off, size_t n)
{
    struct file_reader *f = (struct file_reader *)r;
    return f->direct_fd < 0 || fs_range_cached(f->map, f->map_len, off, n);
}

static int fd_size(int fd, uint64_t *size)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    *size = (uint64_t)st.st_size;
    return 0;
}

static int fr_size(struct disk_reader *r, uint64_t *size)
{
    return fd_size(((struct file_reader *)r)->fd, size);
}

/* The extents of fd's first size bytes into sink. */
static int fd_map(int fd, uint64_t size, unsigned flags, struct disk_map_sink *sink)
{
    struct fs_map m;
    int r = fs_map_open(&m, fd, size, flags & DISK_MAP_LOGICAL ? FS_MAP_FORCE_SEEK : 0);
    if (r < 0)
        return r;
    struct extent e;
    while ((r = fs_map_next(&m, &e)) > 0)
        if ((r = sink->emit(sink->opaque, &e)) < 0)
            break;
    fs_map_close(&m);
    return r;
}

static int fr_map(struct disk_reader *r, unsigned flags, struct disk_map_sink *sink)
{
    return fd_map(((struct file_reader *)r)->fd, r->size, flags, sink);
}

static int fr_dup_fd(struct disk_reader *r)
{
    int fd = fcntl(((struct file_reader *)r)->fd, F_DUPFD_CLOEXEC, 0);
    return fd < 0 ? -errno : fd;
}

static void fr_advise(struct disk_reader *r, uint64_t off, uint64_t n, enum disk_advice advice)
{
    /* a hint: a failure only costs the speed it was for */
    (void)posix_fadvise(((struct file_reader *)r)->fd, (off_t)off, (off_t)n,
                        advice == DISK_ADVISE_WILLNEED ? POSIX_FADV_WILLNEED : POSIX_FADV_DONTNEED);
}

static void fr_close(struct disk_reader *r)
{
    struct file_reader *f = (struct file_reader *)r;
    close(f->fd);
    if (f->direct_fd >= 0)
        close(f->direct_fd);
    if (f->map)
        munmap(f->map, f->map_len);
    free(f);
}

static const struct disk_reader_ops file_reader_ops = {
    .pread = fr_pread,
    .cached = fr_cached,
    .size = fr_size,
    .map = fr_map,
    .dup_fd = fr_dup_fd,
    .advise = fr_advise,
    .close = fr_close,
};

int filedisk_disk_open(struct provider *p, const char *locator, unsigned flags,
                       struct disk_reader **out)
{
    (void)p;
    struct stat st;
    /* No symlink anywhere in the path: one planted in the snapshot area serves nothing. */
    int fd = fs_open_nofollow(locator, O_RDONLY, 0);
    if (fd < 0)
        return fd;
    int r = fstat(fd, &st) < 0 ? -errno : S_ISREG(st.st_mode) ? 0 : -EINVAL;
    if (r < 0) {
        close(fd);
        return r;
    }
    struct file_reader *f = calloc(1, sizeof(*f));
    if (!f) {
        close(fd);
        return -ENOMEM;
    }
    f->base.ops = &file_reader_ops;
    f->base.size = (uint64_t)st.st_size;
    f->fd = fd;
    f->direct_fd = -1;
    if (fs_file_id_fd(fd, f->base.identity) < 0)
        f->base.identity[0] = '\0';
    if (flags & DISK_OPEN_STREAM) {
        f->direct_fd = fs_reopen_direct(fd, O_RDONLY);
        if (f->direct_fd >= 0)
            f->base.direct_align = FILE_DIRECT_ALIGN;
        if (f->direct_fd >= 0 && f->base.size) {
            void *m = mmap(NULL, f->base.size, PROT_READ, MAP_SHARED, fd, 0);
            if (m != MAP_FAILED) {
                f->map = m;
                f->map_len = f->base.size;
            }
        }
    }
    *out = &f->base;
    return 0;
}

/* ---- changes ---- */

int filedisk_disk_changes(struct provider *p, const char *base, const char *new,
                          struct extent_sink *changed, struct extent_sink *zeroed,
                          const char **method, char *err, size_t errlen)
{
    (void)p;
    struct fs_diff d;
    int r = fs_diff_open_nofollow(&d, base, new, DIFF_AUTO);
    if (r < 0) {
        snprintf(err, errlen, "cannot compare the snapshot files: %s", strerror(-r));
        return r;
    }
    r = fs_diff_run(&d, changed, zeroed);
    if (method)
        *method = diff_mode_name(d.mode);
    fs_diff_close(&d);
    return r;
}

/* ---- uploads ---- */

struct file_writer {
    struct disk_writer base;
    int fd;      /* the partial file, read-write, once created */
    int stagefd; /* the directory of the partial file */
    char *partial_name;
};

/* unlink(path), without following a symlink on the way to it: 0 or a negative errno. */
static int unlink_nofollow(const char *path)
{
    const char *name;
    CLEANUP_CLOSE int dirfd = fs_open_parent_nofollow(path, &name);
    if (dirfd < 0)
        return dirfd;
    return unlinkat(dirfd, name, 0) < 0 ? -errno : 0;
}

static int fw_create(struct disk_writer *w, uint64_t size, char *err, size_t errlen)
{
    struct file_writer *f = (struct file_writer *)w;
    f->fd = openat(f->stagefd, f->partial_name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                   UPLOAD_FILE_MODE);
    if (f->fd < 0) {
        int r = -errno;
        snprintf(err, errlen, "creating %s: %s", w->partial, strerror(-r));
        return r;
    }
    if (ftruncate(f->fd, (off_t)size) < 0) {
        int r = -errno;
        snprintf(err, errlen, "making %s %llu bytes long: %s", w->partial, (unsigned long long)size,
                 r == -EFBIG || r == -EINVAL ? "too large for the filesystem" : strerror(-r));
        unlinkat(f->stagefd, f->partial_name, 0);
        return r == -EINVAL ? -EFBIG : r;
    }
    return 0;
}

static int fw_pwrite(struct disk_writer *w, const void *buf, size_t len, uint64_t off)
{
    return fs_pwrite_all(((struct file_writer *)w)->fd, buf, len, off);
}

static int fw_zero(struct disk_writer *w, uint64_t off, uint64_t len)
{
    return fs_zero_range(((struct file_writer *)w)->fd, off, len);
}

static int fw_flush(struct disk_writer *w)
{
    return fdatasync(((struct file_writer *)w)->fd) < 0 ? -errno : 0;
}

static int fw_sync(struct disk_writer *w)
{
    return fsync(((struct file_writer *)w)->fd) < 0 ? -errno : 0;
}

static int fw_writeback(struct disk_writer *w, uint64_t done_off, uint64_t done_len, uint64_t off,
                        uint64_t len)
{
    return fs_writeback_behind(((struct file_writer *)w)->fd, done_off, done_len, off, len);
}

static int fw_size(struct disk_writer *w, uint64_t *size)
{
    return fd_size(((struct file_writer *)w)->fd, size);
}

static int fw_map(struct disk_writer *w, uint64_t size, struct disk_map_sink *sink)
{
    return fd_map(((struct file_writer *)w)->fd, size, DISK_MAP_LOGICAL, sink);
}

/* Publish partial as final, failing with -EEXIST rather than replacing anything. */
static int rename_noreplace(const char *partial, const char *final)
{
    const char *pname, *fname;
    CLEANUP_CLOSE int pfd = fs_open_parent_nofollow(partial, &pname);
    if (pfd < 0)
        return pfd;
    CLEANUP_CLOSE int ffd = fs_open_parent_nofollow(final, &fname);
    if (ffd < 0)
        return ffd;
    if (renameat2(pfd, pname, ffd, fname, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -errno;
    /* No RENAME_NOREPLACE here: link() never replaces either.  A crash between the two steps
     * leaves both names; the next start removes the partial one. */
    if (linkat(pfd, pname, ffd, fname, 0) < 0)
        return -errno;
    if (unlinkat(pfd, pname, 0) < 0)
        log_warn("%s: removing after publishing it as %s: %s", partial, final, strerror(errno));
    return 0;
}

static int fsync_parent(const char *path)
{
    const char *name;
    CLEANUP_CLOSE int fd = fs_open_parent_nofollow(path, &name);
    if (fd < 0)
        return fd;
    return fsync(fd) < 0 ? -errno : 0;
}

/* A disk published into a set-group-ID directory gets the directory's group, as a file made
 * there would have (it was made in the staging directory, which may not be set-group-ID): a
 * daemon running as its own user with group access to the VM directories keeps the disks in
 * that group.  Best effort: a failure is logged, the disk is still published. */
static void inherit_setgid_group(struct file_writer *f)
{
    const char *name;
    CLEANUP_CLOSE int dirfd = fs_open_parent_nofollow(f->base.final, &name);
    struct stat dir, st;
    if (dirfd < 0 || fstat(dirfd, &dir) < 0 || !S_ISDIR(dir.st_mode) || !(dir.st_mode & S_ISGID) ||
        fstat(f->fd, &st) < 0 || st.st_gid == dir.st_gid)
        return;
    if (fchown(f->fd, (uid_t)-1, dir.st_gid) < 0)
        log_warn("upload: giving %s the group %u of its set-group-ID directory: %s", f->base.final,
                 (unsigned)dir.st_gid, strerror(errno));
}

static int fw_publish(struct disk_writer *w)
{
    struct file_writer *f = (struct file_writer *)w;
    posix_fadvise(f->fd, 0, 0, POSIX_FADV_DONTNEED); /* clean now: leave the cache to the VMs */
    inherit_setgid_group(f);
    int r = rename_noreplace(w->partial, w->final);
    if (r < 0)
        return r;
    int e = fsync_parent(w->final);
    if (e < 0)
        log_warn("upload: syncing the directory of %s: %s", w->final, strerror(-e));
    /* The staging directory too: its partial file must not come back after a crash, when the
     * catalog no longer knows of it. */
    if ((e = fsync_parent(w->partial)) < 0)
        log_warn("upload: syncing the directory of %s: %s", w->partial, strerror(-e));
    return 0;
}

static int fw_remove(struct disk_writer *w)
{
    int r = unlink_nofollow(w->partial);
    return r == -ENOENT ? 0 : r;
}

static void fw_close(struct disk_writer *w)
{
    struct file_writer *f = (struct file_writer *)w;
    if (f->fd >= 0)
        close(f->fd);
    if (f->stagefd >= 0)
        close(f->stagefd);
    free(f->partial_name);
    free(w->partial);
    free(w->final);
    free(f);
}

static const struct disk_writer_ops file_writer_ops = {
    .create = fw_create,
    .pwrite = fw_pwrite,
    .zero = fw_zero,
    .flush = fw_flush,
    .sync = fw_sync,
    .writeback = fw_writeback,
    .size = fw_size,
    .map = fw_map,
    .publish = fw_publish,
    .remove = fw_remove,
    .close = fw_close,
};

int filedisk_upload_open(const char *partial, const char *final, const char *vm_id,
                         const char *disk, struct disk_writer **out, char *err, size_t errlen)
{
    struct stat st;
    const char *final_name, *partial_name;
    CLEANUP_CLOSE int vmfd = fs_open_parent_nofollow(final, &final_name);
    if (vmfd < 0 || fstatat(vmfd, final_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        int r = vmfd < 0 ? vmfd : -EEXIST;
        if (r == -EEXIST)
            snprintf(err, errlen, "VM '%s' already has a file named '%s'", vm_id, disk);
        else
            snprintf(err, errlen, "%s: %s%s", final, strerror(-r),
                     r == -ELOOP ? " (a symlink on the way; symlinks are not followed)" : "");
        return r;
    }
    if (errno != ENOENT) {
        int r = -errno;
        snprintf(err, errlen, "%s: %s", final, strerror(-r));
        return r;
    }
    int stagefd = fs_open_parent_nofollow(partial, &partial_name);
    if (stagefd < 0) {
        snprintf(err, errlen, "%s: %s", partial, strerror(-stagefd));
        return stagefd;
    }
    struct file_writer *f = calloc(1, sizeof(*f));
    if (f) {
        f->base.ops = &file_writer_ops;
        f->fd = -1;
        f->stagefd = stagefd;
        f->partial_name = strdup(partial_name);
        f->base.partial = strdup(partial);
        f->base.final = strdup(final);
    }
    if (!f || !f->partial_name || !f->base.partial || !f->base.final) {
        if (f)
            fw_close(&f->base);
        else
            close(stagefd);
        return -ENOMEM;
    }
    *out = &f->base;
    return 0;
}

int filedisk_upload_discard(struct provider *p, const char *partial, const char *id,
                            const char *partial_name)
{
    (void)p;
    /* A damaged catalog must not make the daemon delete some other file: partial files are
     * always named after their upload, in a staging directory (or, by earlier versions, after
     * the ID itself). */
    const char *base = strrchr(partial, '/');
    if (!base)
        return -EPERM;
    size_t dir_len = (size_t)(base - partial);
    size_t staging_len = sizeof(PROVIDER_UPLOAD_STAGING_DIR) - 1;
    bool in_staging = dir_len > staging_len && partial[dir_len - staging_len - 1] == '/' &&
                      !strncmp(base - staging_len, PROVIDER_UPLOAD_STAGING_DIR, staging_len);
    CLEANUP_FREE char *legacy = NULL;
    if (asprintf(&legacy, "%s%s%s", LEGACY_PARTIAL_PREFIX, id, PARTIAL_SUFFIX) < 0) {
        legacy = NULL;
        return -ENOMEM;
    }
    if (!(in_staging && !strcmp(base + 1, partial_name)) && strcmp(base + 1, legacy))
        return -EPERM;
    return unlink_nofollow(partial);
}
