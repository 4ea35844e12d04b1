/* Opening beneath a directory without following symlinks; see safeopen.h.
 *
 * openat2 does the whole walk in the kernel.  Without it (kernels before 5.6, or a seccomp
 * filter that does not know it), the walk opens each directory on the way with O_PATH |
 * O_DIRECTORY | O_NOFOLLOW and the last component with O_NOFOLLOW: a symlink anywhere fails,
 * and since ".." is refused before the walk, nothing can climb out of the starting directory.
 */
#include "safeopen.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/cleanup.h"

/* Resolution rules of every open here: inside the starting directory, no symlinks at all. */
#define SAFEOPEN_RESOLVE (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
/* fs_create_unique_at: random characters after the prefix, and tries before giving up. */
#define UNIQUE_CHARS 6
#define UNIQUE_TRIES 100
/* openat2 calls interrupted (EINTR) or raced by renames (EAGAIN) before the walk is used. */
#define OPENAT2_TRIES 16

/* Set once openat2 said ENOSYS: the walk is used from then on. */
static atomic_bool openat2_missing;

bool fs_rel_path_is_beneath(const char *rel)
{
    if (!rel || !rel[0] || rel[0] == '/')
        return false;
    for (const char *p = rel; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return false;
        p += n;
        while (*p == '/')
            p++;
    }
    return true;
}

/* ENOTDIR from a walk step: a symlink in the place of a directory says ELOOP, as openat2 does. */
static int walk_error(int dirfd, const char *name)
{
    int e = errno;
    struct stat st;
    if (e == ENOTDIR && fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
        return -ELOOP;
    return -e;
}

/* Walk rel beneath dirfd.  Directories on the way are opened with O_PATH; when mkdir_mode is
 * not 0, missing ones are created.  The last component is opened with flags. */
static int walk(int dirfd, const char *rel, int flags, mode_t mode, mode_t mkdir_mode)
{
    CLEANUP_FREE char *copy = strdup(rel);
    if (!copy)
        return -ENOMEM;
    int cur = dirfd; /* not owned while it is dirfd */
    char *save = NULL;
    char *comp = strtok_r(copy, "/", &save);
    int fd = -1;
    while (comp) {
        char *next = strtok_r(NULL, "/", &save);
        if (!next) {
            fd = openat(cur, comp, flags | O_NOFOLLOW | O_CLOEXEC, mode);
            if (fd < 0 && errno == ENOENT && mkdir_mode) {
                if (mkdirat(cur, comp, mkdir_mode) < 0 && errno != EEXIST) {
                    fd = -errno;
                    break;
                }
                fd = openat(cur, comp, flags | O_NOFOLLOW | O_CLOEXEC, mode);
            }
            if (fd < 0)
                fd = walk_error(cur, comp);
            break;
        }
        int d = openat(cur, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (d < 0 && errno == ENOENT && mkdir_mode) {
            if (mkdirat(cur, comp, mkdir_mode) == 0 || errno == EEXIST)
                d = openat(cur, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        if (d < 0) {
            fd = walk_error(cur, comp);
            break;
        }
        if (cur != dirfd)
            close(cur);
        cur = d;
        comp = next;
    }
    if (cur != dirfd)
        close(cur);
    return fd;
}

int fs_openat_beneath_walk(int dirfd, const char *rel, int flags, mode_t mode)
{
    if (!fs_rel_path_is_beneath(rel))
        return -EXDEV;
    return walk(dirfd, rel, flags, mode, 0);
}

int fs_openat_beneath(int dirfd, const char *rel, int flags, mode_t mode)
{
    if (!fs_rel_path_is_beneath(rel))
        return -EXDEV;
    if (!atomic_load(&openat2_missing)) {
        /* openat2 refuses a mode without O_CREAT or O_TMPFILE (which includes O_DIRECTORY). */
        bool creates = (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
        struct open_how how = {
            .flags = (uint64_t)(flags | O_NOFOLLOW | O_CLOEXEC),
            .mode = creates ? mode : 0,
            .resolve = SAFEOPEN_RESOLVE,
        };
        for (int tries = 0; tries < OPENAT2_TRIES; tries++) {
            long fd = syscall(SYS_openat2, dirfd, rel, &how, sizeof(how));
            if (fd >= 0)
                return (int)fd;
            if (errno == EINTR || errno == EAGAIN) /* EAGAIN: a rename raced the lookup */
                continue;
            if (errno == ENOTDIR) /* O_DIRECTORY on a symlink: say ELOOP, as for the rest */
                return walk_error(dirfd, rel);
            if (errno != ENOSYS)
                return -errno;
            atomic_store(&openat2_missing, true);
            break;
        }
    }
    /* No openat2, or renames kept racing it: the walk gives the same guarantees. */
    return walk(dirfd, rel, flags, mode, 0);
}

/* "/" for walks of absolute paths, and abs without its leading slashes in *rel. */
static int open_slash(const char *abs, const char **rel)
{
    if (!abs || abs[0] != '/')
        return -EINVAL;
    while (*abs == '/')
        abs++;
    *rel = abs;
    int fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int fs_open_nofollow(const char *abs, int flags, mode_t mode)
{
    const char *rel;
    CLEANUP_CLOSE int root = open_slash(abs, &rel);
    if (root < 0)
        return root;
    if (!rel[0]) { /* "/" itself */
        int fd = openat(root, ".", flags | O_CLOEXEC, mode);
        return fd < 0 ? -errno : fd;
    }
    return fs_openat_beneath(root, rel, flags, mode);
}

int fs_open_beneath(const char *root, const char *rel, int flags, mode_t mode)
{
    CLEANUP_CLOSE int dfd = fs_open_nofollow(root, O_PATH | O_DIRECTORY, 0);
    if (dfd < 0)
        return dfd;
    return fs_openat_beneath(dfd, rel, flags, mode);
}

int fs_mkdirs_beneath(int dirfd, const char *rel, mode_t mode)
{
    if (!fs_rel_path_is_beneath(rel))
        return -EXDEV;
    return walk(dirfd, rel, O_RDONLY | O_DIRECTORY, 0, mode);
}

int fs_mkdirs_nofollow(const char *abs, mode_t mode)
{
    const char *rel;
    CLEANUP_CLOSE int root = open_slash(abs, &rel);
    if (root < 0)
        return root;
    if (!rel[0])
        return -EINVAL;
    return fs_mkdirs_beneath(root, rel, mode);
}

int fs_open_parent_nofollow(const char *abs, const char **name)
{
    if (!abs || abs[0] != '/')
        return -EINVAL;
    size_t n = strlen(abs);
    while (n > 1 && abs[n - 1] == '/') /* "a/b/" names b */
        n--;
    const char *slash = memrchr(abs, '/', n);
    if (!slash || slash + 1 >= abs + n)
        return -EINVAL;
    if (abs[n] != '\0') /* a trailing slash: no name to point to in abs */
        return -EINVAL;
    CLEANUP_FREE char *dir = strndup(abs, (size_t)(slash - abs));
    if (!dir)
        return -ENOMEM;
    int fd = fs_open_nofollow(dir[0] ? dir : "/", O_RDONLY | O_DIRECTORY, 0);
    if (fd >= 0)
        *name = slash + 1;
    return fd;
}

int fs_create_unique_at(int dirfd, const char *prefix, int flags, mode_t mode, char **name)
{
    static const char chars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    size_t plen = strlen(prefix);
    if (!plen || strchr(prefix, '/'))
        return -EINVAL;
    char *n = malloc(plen + UNIQUE_CHARS + 1);
    if (!n)
        return -ENOMEM;
    memcpy(n, prefix, plen);
    n[plen + UNIQUE_CHARS] = '\0';
    for (int tries = 0; tries < UNIQUE_TRIES; tries++) {
        unsigned char rnd[UNIQUE_CHARS];
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
            int e = errno ? -errno : -EIO;
            free(n);
            return e;
        }
        for (size_t i = 0; i < UNIQUE_CHARS; i++)
            n[plen + i] = chars[rnd[i] % (sizeof(chars) - 1)];
        int fd = openat(dirfd, n, flags | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
        if (fd >= 0) {
            *name = n;
            return fd;
        }
        if (errno != EEXIST) {
            int e = -errno;
            free(n);
            return e;
        }
    }
    free(n);
    return -EEXIST;
}
