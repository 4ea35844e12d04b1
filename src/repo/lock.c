/* Repository locks, as leases of the store (store_lock): locks/repo.lock is held shared by
 * backups, restores and verify and exclusively by gc and prune; locks/vm-<vm>.lock exclusively
 * while a VM is backed up.  A waiting lock gives up at a deadline.  The local store implements
 * them with file locks, which the kernel drops when a process dies; stores without that rely on
 * the lease expiring (repo_lease_seconds()) unrenewed, and their holders keep them with a lease
 * keeper: a thread renewing every third of the lease.  A holder that was stalled longer than a
 * lease (SIGSTOP, a network cut) learns at its next renewal or check that it lost the lock:
 * gc and prune stop before deleting more, a backup fails at its next manifest or its commit.
 */
#include "repo_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/lock.h"
#include "core/log.h"

#define LEASE_RENEW_SHARE 3    /* renew every lease / 3: two renewals may fail before loss */
#define LEASE_MAX_HELD    2    /* leases one keeper renews (a backup: repository and VM) */
#define MS_PER_SEC        1000 /* lease seconds to milliseconds */
#define NS_PER_MS         1000000L

unsigned repo_lease_seconds(void)
{
    const char *env = getenv(REPO_LEASE_ENV);
    if (env && *env) {
        char *end;
        unsigned long v = strtoul(env, &end, 10);
        if (!*end && v >= 1 && v <= REPO_LEASE_MAX)
            return (unsigned)v;
    }
    return REPO_LEASE_SECONDS;
}

/* ---- lease keepers ---- */

struct lease_keeper {
    struct repo *r;
    struct store_lease *leases[LEASE_MAX_HELD];
    size_t n;
    unsigned lease_s;
    pthread_t thread;
    pthread_mutex_t mu; /* stop and cv */
    pthread_cond_t cv;
    bool stop;
    pthread_mutex_t renew_mu; /* one renewal at a time (the thread's, the holder's) */
    _Atomic int lost;         /* 0, or -ETIMEDOUT once a lease was lost */
    _Atomic int64_t valid_until_ms; /* CLOCK_MONOTONIC: the leases hold until then at least */
};

static int keeper_lost(struct lease_keeper *k)
{
    atomic_store(&k->lost, -ETIMEDOUT);
    return -ETIMEDOUT;
}

int lease_keeper_check(struct lease_keeper *k)
{
    if (!k)
        return 0;
    if (atomic_load(&k->lost))
        return -ETIMEDOUT;
    return store_now_ms() < atomic_load(&k->valid_until_ms) ? 0 : keeper_lost(k);
}

int lease_keeper_renew(struct lease_keeper *k)
{
    if (!k)
        return 0;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&k->renew_mu);
    /* Measured from before the requests: the store extends each lease from when it gets it. */
    int64_t t0 = store_now_ms();
    int ret = lease_keeper_check(k);
    for (size_t i = 0; ret == 0 && i < k->n; i++)
        ret = store_renew(k->r->store, k->leases[i], k->lease_s);
    if (ret == 0)
        atomic_store(&k->valid_until_ms, t0 + (int64_t)k->lease_s * MS_PER_SEC);
    else if (ret == -ETIMEDOUT)
        keeper_lost(k);
    return ret;
}

static void *keeper_main(void *arg)
{
    struct lease_keeper *k = arg;
    int64_t interval_ms = (int64_t)k->lease_s * MS_PER_SEC / LEASE_RENEW_SHARE;
    for (;;) {
        {
            ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&k->mu);
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            int64_t ns = until.tv_nsec + (interval_ms % MS_PER_SEC) * NS_PER_MS;
            until.tv_sec += (time_t)(interval_ms / MS_PER_SEC + ns / (MS_PER_SEC * NS_PER_MS));
            until.tv_nsec = (long)(ns % (MS_PER_SEC * NS_PER_MS));
            while (!k->stop && pthread_cond_timedwait(&k->cv, &k->mu, &until) == 0)
                ;
            if (k->stop)
                return NULL;
        }
        int ret = lease_keeper_renew(k);
        if (ret == -ETIMEDOUT) {
            log_warn("%s: a lock lease was lost (the process was stalled or cut off from the "
                     "store for more than %u s)",
                     k->r->path, k->lease_s);
            return NULL;
        }
        if (ret < 0) /* the leases may still hold: the next turn tries again */
            log_warn("%s: cannot renew a lock lease: %s", k->r->path, strerror(-ret));
    }
}

int lease_keeper_start(struct repo *r, struct store_lease *const *leases, size_t n,
                       struct lease_keeper **out)
{
    *out = NULL;
    if (!strcmp(r->store->ops->kind, "local") || n == 0)
        return 0;
    if (n > LEASE_MAX_HELD)
        return -EINVAL;
    struct lease_keeper *k = calloc(1, sizeof(*k));
    if (!k)
        return -ENOMEM;
    k->r = r;
    k->n = n;
    memcpy(k->leases, leases, n * sizeof(*leases));
    k->lease_s = repo_lease_seconds();
    /* Taken just now, for a whole lease. */
    atomic_store(&k->valid_until_ms, store_now_ms() + (int64_t)k->lease_s * MS_PER_SEC);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&k->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&k->mu, NULL);
    pthread_mutex_init(&k->renew_mu, NULL);
    int ret = -pthread_create(&k->thread, NULL, keeper_main, k);
    if (ret < 0) {
        pthread_cond_destroy(&k->cv);
        pthread_mutex_destroy(&k->mu);
        pthread_mutex_destroy(&k->renew_mu);
        free(k);
        return ret;
    }
    *out = k;
    return 0;
}

void lease_keeper_stop(struct lease_keeper *k)
{
    if (!k)
        return;
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&k->mu);
        k->stop = true;
        pthread_cond_signal(&k->cv);
    }
    pthread_join(k->thread, NULL);
    pthread_cond_destroy(&k->cv);
    pthread_mutex_destroy(&k->mu);
    pthread_mutex_destroy(&k->renew_mu);
    free(k);
}

int lock_check(struct repo *r)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&r->lock_mutex);
    return lease_keeper_check(r->lock_keeper);
}

/* ---- the repository's locks ---- */

int lock_file_acquire(struct repo *r, const char *name, bool exclusive, int64_t deadline_ms,
                      struct store_lease **out)
{
    char key[PATH_MAX];
    *out = NULL;
    if ((size_t)snprintf(key, sizeof(key), REPO_LOCKS_DIR "/%s", name) >= sizeof(key))
        return -ENAMETOOLONG;
    return store_lock(r->store, key, exclusive, repo_lease_seconds(), deadline_ms, out);
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
        ret = lease_keeper_start(r, &lease, 1, &r->lock_keeper);
        if (ret < 0) {
            lock_file_release(r, lease);
            repo_set_err(err, errlen, "%s: cannot start renewing the lock: %s", r->path,
                         strerror(-ret));
            return ret;
        }
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
        lease_keeper_stop(r->lock_keeper);
        r->lock_keeper = NULL;
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
