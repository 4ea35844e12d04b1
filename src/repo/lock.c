/* Repository locks: flock(2) on files in locks/.  repo.lock is held shared by backups, restores
 * and verify and exclusively by gc and prune; vm-<vm>.lock exclusively while a VM is backed up.
 * Waiting polls LOCK_NB so that it can give up at a deadline.  flock locks belong to an open
 * file description, so they work between threads of one process as between processes, and the
 * kernel drops them when a process dies.
 */
#include "repo_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"

#define LOCK_POLL_MS 50 /* how often a waiting lock retries */
#define MS_PER_SEC   1000
#define NS_PER_MS    1000000

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * MS_PER_SEC + ts.tv_nsec / NS_PER_MS;
}

int64_t lock_deadline(unsigned timeout_seconds)
{
    return now_ms() + (int64_t)timeout_seconds * MS_PER_SEC;
}

/* Open (creating) locks/name; read-only when the repository cannot be written to, which
 * flock does not need. */
static int lock_file_open(struct repo *r, const char *name, int *fd_out)
{
    char rel[PATH_MAX];
    if ((size_t)snprintf(rel, sizeof(rel), REPO_LOCKS_DIR "/%s", name) >= sizeof(rel))
        return -ENAMETOOLONG;
    int fd = openat(r->dirfd, rel, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, REPO_FILE_MODE);
    if (fd < 0 && errno == ENOENT && repo_mkdir(r->dirfd, REPO_LOCKS_DIR) == 0)
        fd = openat(r->dirfd, rel, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, REPO_FILE_MODE);
    if (fd < 0 && (errno == EROFS || errno == EACCES))
        fd = openat(r->dirfd, rel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    *fd_out = fd;
    return 0;
}

int lock_file_acquire(struct repo *r, const char *name, bool exclusive, int64_t deadline_ms,
                      int *fd_out)
{
    CLEANUP_CLOSE int fd = -1;
    int op = exclusive ? LOCK_EX : LOCK_SH;

    *fd_out = -1;
    int ret = lock_file_open(r, name, &fd);
    if (ret < 0)
        return ret;
    for (;;) {
        if (flock(fd, op | (deadline_ms < 0 ? 0 : LOCK_NB)) == 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno != EWOULDBLOCK)
            return -errno;
        int64_t left = deadline_ms - now_ms();
        if (left <= 0)
            return -EBUSY;
        int64_t nap = left < LOCK_POLL_MS ? left : LOCK_POLL_MS;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = nap * NS_PER_MS};
        nanosleep(&ts, NULL);
    }
    *fd_out = TAKE_FD(fd);
    return 0;
}

void lock_file_release(int fd)
{
    if (fd >= 0)
        close(fd); /* drops the flock */
}

/* The handle's lock state is guarded by lock_mutex, but the wait for the flock happens outside
 * it so that other threads can still unlock meanwhile. */
static int repo_lock_deadline(struct repo *r, bool exclusive, int64_t deadline, char *err,
                              size_t errlen)
{
    int ret = 0, fd = -1;

    pthread_mutex_lock(&r->lock_mutex);
    if (r->lock_depth) {
        if (exclusive && !r->lock_exclusive) {
            repo_set_err(err, errlen, "%s: the repository lock is held shared by this handle",
                         r->path);
            ret = -EDEADLK;
        } else {
            r->lock_depth++;
        }
        pthread_mutex_unlock(&r->lock_mutex);
        return ret;
    }
    pthread_mutex_unlock(&r->lock_mutex);

    ret = lock_file_acquire(r, REPO_LOCK_NAME, exclusive, deadline, &fd);
    if (ret == -EBUSY) {
        repo_set_err(err, errlen,
                     exclusive ? "%s: the repository is in use (backups, restores or maintenance "
                                 "running)"
                               : "%s: the repository is locked for maintenance (gc or prune)",
                     r->path);
        return ret;
    }
    if (ret < 0) {
        repo_set_err(err, errlen, "%s/%s/%s: %s", r->path, REPO_LOCKS_DIR, REPO_LOCK_NAME,
                     strerror(-ret));
        return ret;
    }

    pthread_mutex_lock(&r->lock_mutex);
    if (r->lock_depth == 0) {
        r->lock_fd = fd;
        r->lock_depth = 1;
        r->lock_exclusive = exclusive;
    } else {
        /* Another thread locked the handle while we waited: our flock coexisted with its
         * one, so both were shared; count ours in. */
        r->lock_depth++;
        lock_file_release(fd);
    }
    pthread_mutex_unlock(&r->lock_mutex);
    return 0;
}

int repo_lock(struct repo *r, bool exclusive, unsigned timeout, char *err, size_t errlen)
{
    return repo_lock_deadline(r, exclusive, lock_deadline(timeout), err, errlen);
}

void repo_unlock(struct repo *r)
{
    pthread_mutex_lock(&r->lock_mutex);
    if (r->lock_depth && --r->lock_depth == 0) {
        lock_file_release(r->lock_fd);
        r->lock_fd = -1;
        r->lock_exclusive = false;
    }
    pthread_mutex_unlock(&r->lock_mutex);
}

int lock_hold_exclusive(struct repo *r, bool *took, char *err, size_t errlen)
{
    *took = false;
    int ret = repo_lock_deadline(r, true, -1, err, errlen);
    if (ret == 0)
        *took = true; /* counted: the matching repo_unlock() only undoes this level */
    return ret;
}
