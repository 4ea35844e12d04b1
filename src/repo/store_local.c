/* The local store: a repository in a directory.  This file holds every directory fd, openat,
 * fsync, syncfs and flock of the repository.
 *
 * Keys are paths relative to the directory.  A put writes a temporary file next to its key
 * ("<name>.tmp.<16 random hex digits>", O_EXCL, mode 0600), fsyncs it, renames it into place
 * (RENAME_NOREPLACE for STORE_PUT_CREATE) and fsyncs the directory.  A staged put writes the
 * temporary file without an fsync, through O_DIRECT for its aligned head where the filesystem
 * allows; a commit makes every one durable with one syncfs and only then renames them into
 * place, so that a name never points at data that is not on disk.  Locks are flock(2) on files
 * (created on demand, opened read-only on a read-only filesystem): they belong to an open file
 * description, so they work between threads as between processes, the kernel drops them when a
 * process dies, and their leases never expire.
 */
#include "repo/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "fs/fsinfo.h"
#include "repo/repo_internal.h"

#define TMP_RAND_BYTES 8          /* random bytes in a temporary file name */
#define TMP_NAME_TRIES 16         /* attempts at an unused temporary name */
#define IO_MAX_CHUNK   (1u << 30) /* largest single read()/write() request */

struct local_store {
    struct store s;
    int dirfd; /* the repository's root directory */
};

struct store_staged {
    char *key;
    char *tmp; /* the temporary file's key */
};

struct store_lease {
    int fd; /* holds the flock */
};

static int root_fd(struct store *s)
{
    return ((struct local_store *)s)->dirfd;
}

/* -errno of a failed write, with EDQUOT folded into -ENOSPC. */
static int write_errno(int e)
{
    return e == EDQUOT ? -ENOSPC : -e;
}

/* The directory part of key ("." for a key in the root) into dir. */
static int key_dir(const char *key, char dir[PATH_MAX])
{
    const char *slash = strrchr(key, '/');
    if (!slash)
        return snprintf(dir, PATH_MAX, ".") < PATH_MAX ? 0 : -ENAMETOOLONG;
    if ((size_t)(slash - key) >= PATH_MAX)
        return -ENAMETOOLONG;
    memcpy(dir, key, (size_t)(slash - key));
    dir[slash - key] = '\0';
    return 0;
}

static const char *key_base(const char *key)
{
    const char *slash = strrchr(key, '/');
    return slash ? slash + 1 : key;
}

static int open_dir(int parent, const char *name, int *out)
{
    *out = openat(parent, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return *out < 0 ? -errno : 0;
}

static int fsync_dir(int parent, const char *name)
{
    CLEANUP_CLOSE int fd = -1;
    int r = open_dir(parent, name, &fd);
    if (r == 0 && fsync(fd) < 0)
        r = write_errno(errno);
    return r;
}

/* mkdirat with the repository mode; an existing directory is fine.  A new one is made durable
 * by fsyncing its parent when durable. */
static int make_dir(int root, const char *path, bool durable, bool exclusive)
{
    if (mkdirat(root, path, REPO_DIR_MODE) < 0)
        return errno == EEXIST && !exclusive ? 0 : write_errno(errno);
    if (!durable)
        return 0;
    char parent[PATH_MAX];
    int r = key_dir(path, parent);
    return r < 0 ? r : fsync_dir(root, parent);
}

/* Make the directory of key when it is missing (one level: its parent must exist). */
static int make_key_dir(int root, const char *key, bool durable)
{
    char dir[PATH_MAX];
    int r = key_dir(key, dir);
    return r < 0 ? r : make_dir(root, dir, durable, false);
}

static int write_all(int fd, const uint8_t *p, size_t len)
{
    while (len) {
        ssize_t n = write(fd, p, len > IO_MAX_CHUNK ? IO_MAX_CHUNK : len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return write_errno(errno);
        }
        if (n == 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Create a new temporary file for key (its key in tmp, PATH_MAX bytes), making key's directory
 * when missing (durably when durable); returns its fd. */
static int tmp_create(int root, const char *key, bool durable, char *tmp)
{
    char rnd[2 * TMP_RAND_BYTES + 1];
    int fd = -1;
    bool made_dir = false;

    tmp[0] = '\0';
    for (int i = 0; i < TMP_NAME_TRIES && fd < 0; i++) {
        int r = repo_random_hex(rnd, TMP_RAND_BYTES);
        if (r < 0)
            return r;
        if ((size_t)snprintf(tmp, PATH_MAX, "%s" REPO_TMP_MARK "%s", key, rnd) >= PATH_MAX ||
            strlen(key_base(tmp)) > NAME_MAX)
            return -ENAMETOOLONG;
        fd = openat(root, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, REPO_FILE_MODE);
        if (fd < 0 && errno == ENOENT && !made_dir) {
            made_dir = true;
            r = make_key_dir(root, key, durable);
            if (r < 0)
                return r;
            i--; /* not a name clash: try again */
            continue;
        }
        if (fd < 0 && errno != EEXIST)
            return write_errno(errno);
    }
    return fd < 0 ? -EEXIST : fd;
}

/* Move tmp to key.  Without replace, an existing key wins: tmp is removed and *created is
 * false.  Filesystems without RENAME_NOREPLACE fall back to link(2), then to a plain rename
 * (the files have equal content, so replacing is harmless).  tmp is removed on failure. */
static int rename_into_place(int root, const char *tmp, const char *key, bool replace,
                             bool *created)
{
    int r = 0;
    *created = true;
    if (replace) {
        if (renameat(root, tmp, root, key) < 0)
            r = -errno;
    } else if (renameat2(root, tmp, root, key, RENAME_NOREPLACE) == 0) {
        return 0;
    } else if (errno == EEXIST) {
        *created = false;
        unlinkat(root, tmp, 0);
        return 0;
    } else if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) {
        r = -errno;
    } else {
        int linked = linkat(root, tmp, root, key, 0);
        if (linked == 0 || errno == EEXIST) {
            *created = linked == 0;
            unlinkat(root, tmp, 0);
            return 0;
        }
        if (renameat(root, tmp, root, key) < 0)
            r = -errno;
    }
    if (r < 0) {
        unlinkat(root, tmp, 0);
        *created = false;
    }
    return r;
}

static int local_put(struct store *s, const char *key, const void *data, size_t len,
                     enum store_put_mode mode, bool *created)
{
    int root = root_fd(s);
    char tmp[PATH_MAX], dir[PATH_MAX];

    *created = false;
    int r = key_dir(key, dir);
    if (r < 0)
        return r;
    int fd = tmp_create(root, key, true, tmp);
    if (fd < 0)
        return fd;
    r = write_all(fd, data, len);
    if (r == 0 && fsync(fd) < 0)
        r = write_errno(errno);
    if (close(fd) < 0 && r == 0)
        r = write_errno(errno);
    if (r < 0) {
        unlinkat(root, tmp, 0);
        return r;
    }
    r = rename_into_place(root, tmp, key, mode == STORE_PUT_REPLACE, created);
    if (r < 0)
        return r;
    /* Also when another writer's file won: it must be durable before we report success. */
    return fsync_dir(root, dir);
}

/* Write data into the new file fd: the aligned head with O_DIRECT, the tail (under STORE_ALIGN
 * bytes) through the page cache, which costs a small copy where trimming a padded write back
 * with ftruncate cost a journalled size change per file (a third of the write's time on ext4).
 * A chunk is written once and not read back soon, so caching it only costs a copy. */
static int write_direct(int fd, const uint8_t *data, size_t len)
{
    size_t head = len / STORE_ALIGN * STORE_ALIGN;
    size_t done = 0;
    int r = 0;
    int fl = fcntl(fd, F_GETFL);
    if (head && (uintptr_t)data % STORE_ALIGN == 0 && fl >= 0 &&
        fcntl(fd, F_SETFL, fl | O_DIRECT) == 0) {
        r = write_all(fd, data, head);
        if (r == 0)
            done = head;
        else if (r == -EINVAL && (ftruncate(fd, 0) < 0 || lseek(fd, 0, SEEK_SET) < 0))
            r = write_errno(errno); /* O_DIRECT refused for this write: start again */
        else if (r == -EINVAL)
            r = 0;
        if (r == 0 && done < len && fcntl(fd, F_SETFL, fl) < 0)
            r = write_errno(errno);
    }
    if (r == 0 && done < len)
        r = write_all(fd, data + done, len - done);
    return r;
}

static void staged_free(struct store_staged *st)
{
    free(st->key);
    free(st->tmp);
    free(st);
}

static int local_stage(struct store *s, const char *key, const void *data, size_t len,
                       struct store_staged **out)
{
    int root = root_fd(s);
    char tmp[PATH_MAX];
    struct store_staged *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    /* A missing directory is made without an fsync: the commit's syncfs covers it. */
    int fd = tmp_create(root, key, false, tmp);
    if (fd < 0) {
        free(st);
        return fd;
    }
    int r = write_direct(fd, data, len);
    if (close(fd) < 0 && r == 0)
        r = write_errno(errno);
    if (r == 0 && (!(st->key = strdup(key)) || !(st->tmp = strdup(tmp))))
        r = -ENOMEM;
    if (r < 0) {
        unlinkat(root, tmp, 0);
        staged_free(st);
        return r;
    }
    *out = st;
    return 0;
}

static int local_commit(struct store *s, struct store_staged **staged, size_t n, bool *created)
{
    int root = root_fd(s);
    int r = 0;
    if (n && syncfs(root) < 0)
        r = write_errno(errno);
    for (size_t i = 0; i < n; i++) {
        bool made = false;
        if (r < 0)
            unlinkat(root, staged[i]->tmp, 0);
        else
            r = rename_into_place(root, staged[i]->tmp, staged[i]->key, false, &made);
        if (created)
            created[i] = made;
        staged_free(staged[i]);
        staged[i] = NULL;
    }
    return r;
}

static void local_discard(struct store *s, struct store_staged *st)
{
    unlinkat(root_fd(s), st->tmp, 0);
    staged_free(st);
}

/* Open key for reading: a regular file of at most max bytes (else -EBADMSG), its size in
 * *size.  The fd, or a negative errno. */
static int open_regular(int root, const char *key, uint64_t max, size_t *size)
{
    int fd = openat(root, key, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0) {
        int r = -errno;
        close(fd);
        return r;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > max || (uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return -EBADMSG;
    }
    *size = (size_t)st.st_size;
    return fd;
}

/* Read exactly len bytes of fd at off into buf: 0, a negative errno, or -EBADMSG when the file
 * ends first (it shrank under us). */
static int pread_exact(int fd, uint8_t *buf, size_t len, uint64_t off)
{
    size_t got = 0;
    int r = fs_pread_direct(fd, -1, buf, len, off, &got); /* -1: through the page cache */
    return r < 0 ? r : got == len ? 0 : -EBADMSG;
}

static int local_get(struct store *s, const char *key, uint64_t max, uint8_t **data, size_t *len)
{
    size_t size = 0;
    CLEANUP_CLOSE int fd = open_regular(root_fd(s), key, max, &size);
    if (fd < 0)
        return fd;
    CLEANUP_FREE uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return -ENOMEM;
    int r = pread_exact(fd, buf, size, 0);
    if (r < 0)
        return r;
    *data = TAKE_PTR(buf);
    *len = size;
    return 0;
}

/* Bypasses the page cache (O_DIRECT) where the file system allows: a chunk is read once, so
 * caching it costs a copy and the host's memory; where the cache holds newer data the kernel
 * writes it first. */
static int local_get_into(struct store *s, const char *key, uint64_t max, uint8_t *buf, size_t cap,
                          size_t *len)
{
    size_t size = 0;
    CLEANUP_CLOSE int fd = open_regular(root_fd(s), key, max, &size);
    if (fd < 0)
        return fd;
    /* Direct reads ask for whole blocks; the kernel stops them at the end of the file. */
    size_t want = (size + STORE_ALIGN - 1) / STORE_ALIGN * STORE_ALIGN;
    if (want > cap || (uintptr_t)buf % STORE_ALIGN)
        return -ENOBUFS;
    CLEANUP_CLOSE int dfd = fs_reopen_direct(fd, O_RDONLY); /* -1: buffered only */
    size_t got = 0;
    int r = fs_pread_direct(fd, dfd, buf, want, 0, &got);
    if (r < 0)
        return r;
    if (got != size)
        return -EBADMSG; /* the file changed size under us */
    *len = size;
    return 0;
}

static int local_get_range(struct store *s, const char *key, uint64_t off, size_t len, uint8_t *buf)
{
    size_t size = 0;
    CLEANUP_CLOSE int fd = open_regular(root_fd(s), key, UINT64_MAX, &size);
    if (fd < 0)
        return fd;
    if (off > size || len > size - off)
        return -EBADMSG;
    return pread_exact(fd, buf, len, off);
}

static int local_stat(struct store *s, const char *key, struct store_stat *out)
{
    struct stat st;
    if (fstatat(root_fd(s), key, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOTDIR ? -ENOENT : -errno;
    out->prefix = S_ISDIR(st.st_mode);
    out->size = (uint64_t)st.st_size;
    return 0;
}

static int local_list(struct store *s, const char *prefix, store_list_fn fn, void *opaque)
{
    int fd;
    int r = open_dir(root_fd(s), *prefix ? prefix : ".", &fd);
    if (r < 0)
        return r;
    DIR *d = fdopendir(fd);
    if (!d) {
        r = -errno;
        close(fd);
        return r;
    }
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        bool dir = de->d_type == DT_DIR;
        if (de->d_type == DT_UNKNOWN) {
            struct stat st;
            dir = fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
        }
        struct store_entry e = {.name = de->d_name, .prefix = dir};
        r = fn(opaque, &e);
        if (r != 0)
            break;
        errno = 0;
    }
    if (r == 0 && errno)
        r = -errno;
    closedir(d);
    return r;
}

static int local_del(struct store *s, const char *key, uint64_t *bytes)
{
    int root = root_fd(s);
    struct stat st;
    if (fstatat(root, key, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    if (S_ISDIR(st.st_mode))
        return -EISDIR;
    if (unlinkat(root, key, 0) < 0)
        return -errno;
    *bytes += (uint64_t)st.st_size;
    return 0;
}

static int local_sync_prefix(struct store *s, const char *prefix)
{
    return fsync_dir(root_fd(s), *prefix ? prefix : ".");
}

static int local_make_prefix(struct store *s, const char *prefix, bool exclusive)
{
    return make_dir(root_fd(s), prefix, true, exclusive);
}

static int local_remove_prefix(struct store *s, const char *prefix)
{
    int root = root_fd(s);
    char parent[PATH_MAX];
    int r = key_dir(prefix, parent);
    if (r < 0)
        return r;
    if (unlinkat(root, prefix, AT_REMOVEDIR) < 0)
        return errno == EEXIST ? -ENOTEMPTY : -errno;
    return fsync_dir(root, parent);
}

static int local_barrier(struct store *s)
{
    return syncfs(root_fd(s)) < 0 ? write_errno(errno) : 0;
}

/* Open (creating) the lock file key; read-only when the repository cannot be written to,
 * which flock does not need. */
static int lock_file_open(int root, const char *key)
{
    int fd = openat(root, key, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, REPO_FILE_MODE);
    if (fd < 0 && errno == ENOENT && make_key_dir(root, key, true) == 0)
        fd = openat(root, key, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, REPO_FILE_MODE);
    if (fd < 0 && (errno == EROFS || errno == EACCES))
        fd = openat(root, key, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    return fd < 0 ? -errno : fd;
}

/* Waiting polls LOCK_NB so that it can give up at a deadline; waiting forever blocks. */
static int local_lock(struct store *s, const char *name, bool exclusive, unsigned lease_seconds,
                      int64_t deadline_ms, struct store_lease **out)
{
    (void)lease_seconds; /* the kernel releases a dead process's flock: no expiry needed */
    CLEANUP_CLOSE int fd = lock_file_open(root_fd(s), name);
    int op = exclusive ? LOCK_EX : LOCK_SH;
    if (fd < 0)
        return fd;
    for (;;) {
        if (flock(fd, op | (deadline_ms == STORE_WAIT_FOREVER ? 0 : LOCK_NB)) == 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno != EWOULDBLOCK)
            return -errno;
        int r = store_lock_wait(deadline_ms);
        if (r < 0)
            return r;
    }
    struct store_lease *l = malloc(sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->fd = TAKE_FD(fd);
    *out = l;
    return 0;
}

static int local_renew(struct store *s, struct store_lease *l, unsigned lease_seconds)
{
    (void)s;
    (void)l;
    (void)lease_seconds;
    return 0; /* held until released or the process dies */
}

static void local_unlock(struct store *s, struct store_lease *l)
{
    (void)s;
    close(l->fd); /* drops the flock */
    free(l);
}

static void local_close(struct store *s)
{
    struct local_store *ls = (struct local_store *)s;
    if (ls->dirfd >= 0)
        close(ls->dirfd);
    free(s->name);
    free(ls);
}

static const struct store_ops local_ops = {
    .kind = "local",
    .put = local_put,
    .stage = local_stage,
    .commit = local_commit,
    .discard = local_discard,
    .get = local_get,
    .get_into = local_get_into,
    .get_range = local_get_range,
    .stat = local_stat,
    .list = local_list,
    .del = local_del,
    .sync_prefix = local_sync_prefix,
    .make_prefix = local_make_prefix,
    .remove_prefix = local_remove_prefix,
    .barrier = local_barrier,
    .lock = local_lock,
    .renew = local_renew,
    .unlock = local_unlock,
    .close = local_close,
};

int store_local_open(const char *path, struct store **out)
{
    *out = NULL;
    struct local_store *ls = calloc(1, sizeof(*ls));
    if (!ls)
        return -ENOMEM;
    ls->s.ops = &local_ops;
    ls->dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (ls->dirfd < 0) {
        int r = -errno;
        free(ls);
        return r;
    }
    if (!(ls->s.name = strdup(path))) {
        local_close(&ls->s);
        return -ENOMEM;
    }
    *out = &ls->s;
    return 0;
}

static int dir_check_empty(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return -errno;
    struct dirent *de;
    int r = 0;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            r = -EEXIST;
            break;
        }
    closedir(d);
    return r;
}

/* Make the new directory path's entry durable in its parent. */
static void parent_sync(const char *path)
{
    CLEANUP_FREE char *copy = strdup(path);
    if (!copy)
        return;
    char *slash = strrchr(copy, '/');
    const char *parent = ".";
    if (slash == copy)
        parent = "/";
    else if (slash) {
        *slash = '\0';
        parent = copy;
    }
    CLEANUP_CLOSE int fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0)
        fsync(fd);
}

int store_local_create(const char *path, struct store **out)
{
    *out = NULL;
    if (mkdir(path, REPO_DIR_MODE) < 0) {
        int r = -errno;
        if (r == -EEXIST)
            r = dir_check_empty(path);
        if (r == -ENOTDIR)
            r = -EEXIST;
        if (r < 0)
            return r;
    } else {
        parent_sync(path);
    }
    return store_local_open(path, out);
}
