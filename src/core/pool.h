/* Worker threads and the first error among them.
 *
 * Every engine that runs work in parallel (backup, restore, download, upload) starts its
 * threads with worker_pool_start and joins them with worker_pool_join, and records failures in
 * one struct first_error (the archive engines use it too, without threads): the first failure
 * wins (its errno and message are what the user sees), later ones are dropped, and every thread
 * polls first_error_failed() to stop early.  A wake callback lets threads blocked on a queue
 * see the failure at once.
 */
#ifndef VMEXPORT_CORE_POOL_H
#define VMEXPORT_CORE_POOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#define FIRST_ERROR_MSG_MAX 1024

struct first_error {
    pthread_mutex_t lock;
    atomic_bool failed;
    int err;                       /* negative errno of the first failure; 0 before one */
    char msg[FIRST_ERROR_MSG_MAX]; /* its message */
    void (*wake)(void *arg);       /* optional: called once, after the first failure */
    void *wake_arg;
};

/* wake (may be NULL) is called without fe's lock held, from the failing thread. */
void first_error_init(struct first_error *fe, void (*wake)(void *arg), void *wake_arg);
void first_error_destroy(struct first_error *fe);

/* Records a failure unless one is recorded already.  err is a negative errno (a positive or
 * zero value is stored as -EIO); the message is formatted like printf.  Returns err, so that
 * `return first_error_set(fe, r, "...")` reads naturally. */
int first_error_set(struct first_error *fe, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Cheap to poll from any thread. */
bool first_error_failed(struct first_error *fe);
/* The first failure's errno (0 when none) and message ("" when none); read after the threads
 * are joined, or under no concurrent first_error_set. */
int first_error_code(struct first_error *fe);
const char *first_error_message(struct first_error *fe);

struct worker_pool {
    pthread_t *threads;
    unsigned started;
};

/* Starts n threads; thread i runs fn((char *)args + i * arg_size) (arg_size 0: every thread
 * gets args itself).  0, or a negative errno when a thread could not be started: the threads
 * already started keep running, and worker_pool_join must still be called. */
int worker_pool_start(struct worker_pool *p, unsigned n, void *(*fn)(void *), void *args,
                      size_t arg_size);
/* Joins every started thread and frees the pool's memory; the pool can be started again. */
void worker_pool_join(struct worker_pool *p);

/* Number of threads for CPU-bound work: online processors, at least 1, at most max. */
unsigned worker_pool_cpu_threads(unsigned max);

#endif
