/* The local cache of format 3's index objects, for repositories on stores that are not local
 * (S3, RADOS): the index is read at the start of every backup, restore and verify, and on an
 * object store that costs requests per segment of every index object.  Index objects are
 * immutable and their names random (never reused), so a copy made once stays right:
 *
 *   $VMEXPORT_CACHE_DIR/<repo id>/index/<name>         (or $XDG_CACHE_HOME/vmexport/...,
 *                                                        ~/.cache/vmexport/...)
 *
 * Directories 0700, files 0600, created atomically (O_TMPFILE, linked when whole).  A cached
 * file is read through the same segmented-stream reader as the object in the store, bound to
 * its key: a damaged or swapped file fails its checksums or MACs and is dropped and fetched
 * again (pack.c), never trusted.  The store's listing of index/ stays the truth: cached objects
 * it does not name are removed (gc merged them), missing ones fetched.  The local store and
 * handles told so (repo_set_index_cache; VMEXPORT_NO_CACHE, which vmexport --no-cache sets)
 * use no cache; the memory store of the tests only with VMEXPORT_CACHE_DIR set.
 */
#include "repo_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/lock.h"
#include "core/log.h"

#define CACHE_DIR_ENV  "VMEXPORT_CACHE_DIR"
#define CACHE_OFF_ENV  "VMEXPORT_NO_CACHE" /* non-empty: no cache (vmexport --no-cache) */
#define CACHE_APP_DIR  "vmexport"
#define CACHE_HOME_DIR ".cache" /* under $HOME without $XDG_CACHE_HOME */
#define PROC_FD_LEN    sizeof("/proc/self/fd/-2147483648")

void repo_set_index_cache(struct repo *r, bool enabled)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&r->cache_mutex);
    r->cache_disabled = !enabled;
    if (!enabled && r->cache_fd >= 0) {
        close(r->cache_fd);
        r->cache_fd = -1;
    }
    r->cache_resolved = !enabled;
}

/* The sub-directory name of dirfd, made 0700 when missing and opened without following a
 * symbolic link; one of another user is refused (-EPERM), one open to others closed. */
static int open_subdir(int dirfd, const char *name)
{
    if (mkdirat(dirfd, name, REPO_DIR_MODE) < 0 && errno != EEXIST)
        return -errno;
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_uid != geteuid() ||
        ((st.st_mode & 077) && fchmod(fd, REPO_DIR_MODE) < 0)) {
        close(fd);
        return -EPERM;
    }
    return fd;
}

/* Open (making them) the directories of path's components below the directory base. */
static int open_path(const char *base, const char *const *names, size_t n)
{
    if (mkdir(base, REPO_DIR_MODE) < 0 && errno != EEXIST)
        return -errno;
    int fd = open(base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    for (size_t i = 0; i < n; i++) {
        int sub = open_subdir(fd, names[i]);
        close(fd);
        if (sub < 0)
            return sub;
        fd = sub;
    }
    return fd;
}

static bool id_usable(const char *id)
{
    if (!*id)
        return false;
    for (const char *c = id; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
            return false;
    return true;
}

/* Resolve the cache directory once per handle.  Called with cache_mutex held. */
static void cache_resolve(struct repo *r)
{
    if (r->cache_resolved)
        return;
    r->cache_resolved = true;
    const char *kind = r->store->ops->kind;
    const char *env = getenv(CACHE_DIR_ENV);
    bool explicit_dir = env && *env;
    const char *off = getenv(CACHE_OFF_ENV);
    if (r->cache_disabled || (off && *off) || !strcmp(kind, "local") || (!strcmp(kind, "mem") && !explicit_dir) ||
        r->format_version < REPO_PACKS_FORMAT || !id_usable(r->id))
        return;
    const char *names[4];
    size_t n = 0;
    CLEANUP_FREE char *base = NULL;
    if (explicit_dir) {
        base = strdup(env);
    } else if ((env = getenv("XDG_CACHE_HOME")) && *env == '/') {
        base = strdup(env);
        names[n++] = CACHE_APP_DIR;
    } else if ((env = getenv("HOME")) && *env == '/') {
        if (asprintf(&base, "%s/" CACHE_HOME_DIR, env) < 0)
            base = NULL;
        names[n++] = CACHE_APP_DIR;
    } else {
        return; /* nowhere to keep it: every load reads the store */
    }
    names[n++] = r->id;
    names[n++] = REPO_INDEX_DIR;
    int fd = base ? open_path(base, names, n) : -ENOMEM;
    if (fd < 0) {
        log_warn("%s: no local index cache (%s/%s/%s: %s): the index is read from the store",
                 r->path, base ? base : "?", r->id, REPO_INDEX_DIR, strerror(-fd));
        return;
    }
    r->cache_fd = fd;
}

/* The cache directory's fd (owned by the handle), or -1. */
static int cache_fd(struct repo *r)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&r->cache_mutex);
    cache_resolve(r);
    return r->cache_fd;
}

bool index_cache_enabled(struct repo *r)
{
    return cache_fd(r) >= 0;
}

int index_cache_open(struct repo *r, const char *name)
{
    int dir = cache_fd(r);
    if (dir < 0)
        return -ENOENT;
    int fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

void index_cache_drop(struct repo *r, const char *name)
{
    int dir = cache_fd(r);
    if (dir >= 0)
        unlinkat(dir, name, 0);
}

static int write_all(int fd, const uint8_t *p, size_t len)
{
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

void index_cache_put(struct repo *r, const char *name, const void *data, size_t len)
{
    int dir = cache_fd(r);
    if (dir < 0)
        return;
    /* Unnamed until whole: a crash or a full disk leaves no partial file under the name. */
    int fd = openat(dir, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, REPO_FILE_MODE);
    if (fd < 0)
        return; /* no O_TMPFILE here: not cached */
    char proc[PROC_FD_LEN];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    int ret = write_all(fd, data, len);
    if (ret == 0 && linkat(AT_FDCWD, proc, dir, name, AT_SYMLINK_FOLLOW) < 0 && errno != EEXIST)
        ret = -errno;
    if (ret < 0)
        log_warn("%s: cannot cache the index object %s: %s", r->path, name, strerror(-ret));
    close(fd);
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void index_cache_prune(struct repo *r, const string_list *names, bool (*valid)(const char *))
{
    int dir = cache_fd(r);
    if (dir < 0)
        return;
    CLEANUP_FREE char **sorted = malloc((names->len ? names->len : 1) * sizeof(*sorted));
    int fd = dup(dir);
    DIR *d = sorted && fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return;
    }
    if (names->len)
        memcpy(sorted, names->ptr, names->len * sizeof(*sorted));
    qsort(sorted, names->len, sizeof(*sorted), name_cmp);
    rewinddir(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        if (!valid(n) || bsearch(&n, sorted, names->len, sizeof(*sorted), name_cmp))
            continue;
        unlinkat(dir, n, 0); /* gc merged it away */
    }
    closedir(d);
}

void index_cache_close(struct repo *r)
{
    if (r->cache_fd >= 0)
        close(r->cache_fd);
    r->cache_fd = -1;
}
