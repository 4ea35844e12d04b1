/* Repository locks, as leases of the store (store_lock): locks/repo.lock is held shared by
 * backups, restores and verify and exclusively by gc and prune; locks/vm-<vm>.lock exclusively
 * while a VM is backed up.  A waiting lock gives up at a deadline.  The local store implements
 * them with file locks, which the kernel drops when a process dies; stores without that rely on
 * the lease expiring (REPO_LEASE_SECONDS) unrenewed.
 */
#include "repo_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "core/lock.h"

int lock_file_acquire(struct repo *r, const char *name, bool exclusive, int64_t deadline_ms,
                      struct store_lease **out)
{
    char key[PATH_MAX];
    *out = NULL;
    if ((size_t)snprintf(key, sizeof(key), REPO_LOCKS_DIR "/%s", name) >= sizeof(key))
        return -ENAMETOOLONG;
    return store_lock(r->store, key, exclusive, REPO_LEASE_SECONDS, deadline_ms, out);
}

void lock_file_release(struct repo *r, struct store_lease *l)
{
    store_unlock(r->store, l);
}

/* The handle's lock state is guarded by lock_mutex, but the wait for the store's lock happens
 * outside it so that other threads can still unlock meanwhile. */
static int repo_lock_deadline(struct repo *r, bool exclusive, int64_t deadline, char *err,
                              size_t errlen)
{
    struct store_lease *lease = NULL;

    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&r->lock_mutex);
        if (r->lock_depth) {
            if (exclusive && !r->lock_exclusive) {
                repo_set_err(err, errlen, "%s: the repository lock is held shared by this handle",
                             r->path);
                return -EDEADLK;
            }
            r->lock_depth++;
            return 0;
        }
    }

    int ret = lock_file_acquire(r, REPO_LOCK_NAME, exclusive, deadline, &lease);
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

    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&r->lock_mutex);
    if (r->lock_depth == 0) {
        r->lock_lease = lease;
        r->lock_depth = 1;
        r->lock_exclusive = exclusive;
    } else {
        /* Another thread locked the handle while we waited: our lock coexisted with its one,
         * so both were shared; count ours in. */
        r->lock_depth++;
        lock_file_release(r, lease);
    }
    return 0;
}

int repo_lock(struct repo *r, bool exclusive, unsigned timeout, char *err, size_t errlen)
{
    return repo_lock_deadline(r, exclusive, store_deadline(timeout), err, errlen);
}

void repo_unlock(struct repo *r)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&r->lock_mutex);
    if (r->lock_depth && --r->lock_depth == 0) {
        lock_file_release(r, r->lock_lease);
        r->lock_lease = NULL;
        r->lock_exclusive = false;
    }
}

int lock_hold_exclusive(struct repo *r, bool *took, char *err, size_t errlen)
{
    *took = false;
    int ret = repo_lock_deadline(r, true, STORE_WAIT_FOREVER, err, errlen);
    if (ret == 0)
        *took = true; /* counted: the matching repo_unlock() only undoes this level */
    return ret;
}
