/* Worker threads and the first error among them; see pool.h. */
#include "core/pool.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/lock.h"

void first_error_init(struct first_error *fe, void (*wake)(void *arg), void *wake_arg)
{
    pthread_mutex_init(&fe->lock, NULL);
    atomic_init(&fe->failed, false);
    fe->err = 0;
    fe->msg[0] = '\0';
    fe->wake = wake;
    fe->wake_arg = wake_arg;
}

void first_error_destroy(struct first_error *fe)
{
    pthread_mutex_destroy(&fe->lock);
}

int first_error_set(struct first_error *fe, int err, const char *fmt, ...)
{
    if (err >= 0)
        err = -EIO;
    bool first = false;
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&fe->lock);
        if (!atomic_load(&fe->failed)) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(fe->msg, sizeof(fe->msg), fmt, ap);
            va_end(ap);
            fe->err = err;
            atomic_store(&fe->failed, true);
            first = true;
        }
    }
    if (first && fe->wake)
        fe->wake(fe->wake_arg);
    return err;
}

bool first_error_failed(struct first_error *fe)
{
    return atomic_load(&fe->failed);
}

int first_error_code(struct first_error *fe)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&fe->lock);
    return fe->err;
}

const char *first_error_message(struct first_error *fe)
{
    return fe->msg;
}

int worker_pool_start(struct worker_pool *p, unsigned n, void *(*fn)(void *), void *args,
                      size_t arg_size)
{
    p->threads = NULL;
    p->started = 0;
    if (n == 0)
        return 0;
    p->threads = calloc(n, sizeof(*p->threads));
    if (!p->threads)
        return -ENOMEM;
    for (unsigned i = 0; i < n; i++) {
        int r = pthread_create(&p->threads[i], NULL, fn, (char *)args + (size_t)i * arg_size);
        if (r)
            return -r;
        p->started++;
    }
    return 0;
}

void worker_pool_join(struct worker_pool *p)
{
    for (unsigned i = 0; i < p->started; i++)
        pthread_join(p->threads[i], NULL);
    free(p->threads);
    p->threads = NULL;
    p->started = 0;
}

unsigned worker_pool_cpu_threads(unsigned max)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    if (max && (unsigned long)n > max)
        n = max;
    return (unsigned)n;
}
