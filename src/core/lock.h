/* Scoped mutex guards: the lock is released when the scope ends, on every return path.
 *
 *     ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&s->lock);
 *     if (bad)
 *         return -EINVAL;   // unlocked here
 *
 * One guard per scope (the variable's name is fixed); a nested block may take another lock.
 */
#ifndef VMEXPORT_CORE_LOCK_H
#define VMEXPORT_CORE_LOCK_H

#include <pthread.h>

static inline void lock_guard_release(pthread_mutex_t **m)
{
    if (*m)
        pthread_mutex_unlock(*m);
}

static inline pthread_mutex_t *lock_guard_acquire(pthread_mutex_t *m)
{
    pthread_mutex_lock(m);
    return m;
}

#define LOCK_GUARD_CAT_(a, b) a##b
#define LOCK_GUARD_CAT(a, b)  LOCK_GUARD_CAT_(a, b)

/* Locks mutex (a pthread_mutex_t *) until the end of the enclosing scope. */
#define ACQUIRE_LOCK_FOR_CURRENT_SCOPE(mutex)                                                      \
    __attribute__((cleanup(lock_guard_release), unused)) pthread_mutex_t *LOCK_GUARD_CAT(          \
        lock_guard_, __LINE__) = lock_guard_acquire(mutex)

#endif
