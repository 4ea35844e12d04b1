/* The pool of threads for slow request handlers; see jobs.h.  A mutex-guarded FIFO of jobs and
 * two condition variables: one wakes idle threads, the other tells drain that the queue is empty
 * and no job is running. */
#include "server/jobs.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "core/lock.h"

struct job {
    job_fn fn;
    void *arg;
    struct job *next;
};

struct job_pool {
    pthread_mutex_t lock;
    pthread_cond_t wake; /* a job was queued, or the pool stops */
    pthread_cond_t idle; /* the queue emptied and nothing runs */
    struct job *head, *tail;
    unsigned running;
    bool draining, stopping;
    pthread_t *threads;
    unsigned n_threads;
};

static void *job_thread(void *opaque)
{
    struct job_pool *p = opaque;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->head && !p->stopping)
            pthread_cond_wait(&p->wake, &p->lock);
        if (!p->head)
            break; /* stopping, and nothing left */
        struct job *j = p->head;
        p->head = j->next;
        if (!p->head)
            p->tail = NULL;
        p->running++;
        pthread_mutex_unlock(&p->lock);
        j->fn(j->arg);
        free(j);
        pthread_mutex_lock(&p->lock);
        if (--p->running == 0 && !p->head)
            pthread_cond_broadcast(&p->idle);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int job_pool_new(unsigned threads, struct job_pool **out)
{
    struct job_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->threads = calloc(threads, sizeof(*p->threads));
    if (!p->threads) {
        free(p);
        return -ENOMEM;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->idle, NULL);
    for (unsigned i = 0; i < threads; i++) {
        int r = pthread_create(&p->threads[i], NULL, job_thread, p);
        if (r) {
            job_pool_free(p);
            return -r;
        }
        p->n_threads++;
    }
    *out = p;
    return 0;
}

int job_pool_submit(struct job_pool *p, job_fn fn, void *arg)
{
    struct job *j = malloc(sizeof(*j));
    if (!j)
        return -ENOMEM;
    *j = (struct job){.fn = fn, .arg = arg};
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&p->lock);
    if (p->draining) {
        free(j);
        return -ESHUTDOWN;
    }
    if (p->tail)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    pthread_cond_signal(&p->wake);
    return 0;
}

void job_pool_drain(struct job_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->draining = true;
    while (p->head || p->running)
        pthread_cond_wait(&p->idle, &p->lock);
    pthread_mutex_unlock(&p->lock);
}

void job_pool_free(struct job_pool *p)
{
    if (!p)
        return;
    job_pool_drain(p);
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->idle);
    pthread_mutex_destroy(&p->lock);
    free(p->threads);
    free(p);
}
