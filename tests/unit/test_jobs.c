/* Unit tests for the job pool of slow request handlers (src/server/jobs.c): every queued job
 * runs once, no more than the pool's threads run at once, drain waits for queued and running
 * jobs, and a drained pool refuses new jobs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdatomic.h>
#include <time.h>

#include "server/jobs.h"

#define POOL_THREADS 3
#define JOBS         50

struct counters {
    atomic_int done;
    atomic_int running;
    atomic_int max_running;
    atomic_int runs[JOBS];
};

struct job_arg {
    struct counters *c;
    int i;
};

static void slow_job(void *opaque)
{
    struct job_arg *a = opaque;
    int now = atomic_fetch_add(&a->c->running, 1) + 1;
    int seen = atomic_load(&a->c->max_running);
    while (now > seen && !atomic_compare_exchange_weak(&a->c->max_running, &seen, now))
        ;
    struct timespec ms = {0, 1000 * 1000};
    nanosleep(&ms, NULL);
    atomic_fetch_add(&a->c->runs[a->i], 1);
    atomic_fetch_sub(&a->c->running, 1);
    atomic_fetch_add(&a->c->done, 1);
}

static void test_all_jobs_run_bounded(void **state)
{
    (void)state;
    static struct counters c;
    static struct job_arg args[JOBS];
    struct job_pool *p = NULL;
    assert_int_equal(job_pool_new(POOL_THREADS, &p), 0);
    for (int i = 0; i < JOBS; i++) {
        args[i] = (struct job_arg){.c = &c, .i = i};
        assert_int_equal(job_pool_submit(p, slow_job, &args[i]), 0);
    }
    job_pool_drain(p);
    /* drain returned: every job has finished, each exactly once */
    assert_int_equal(atomic_load(&c.done), JOBS);
    for (int i = 0; i < JOBS; i++)
        assert_int_equal(atomic_load(&c.runs[i]), 1);
    assert_true(atomic_load(&c.max_running) <= POOL_THREADS);
    assert_true(atomic_load(&c.max_running) >= 1);
    /* a drained pool takes no more work */
    assert_int_equal(job_pool_submit(p, slow_job, &args[0]), -ESHUTDOWN);
    job_pool_free(p);
    assert_int_equal(atomic_load(&c.runs[0]), 1);
}

static void test_free_idle_and_null(void **state)
{
    (void)state;
    struct job_pool *p = NULL;
    assert_int_equal(job_pool_new(2, &p), 0);
    job_pool_free(p); /* no job ever queued */
    job_pool_free(NULL);
    job_pool_drain(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_jobs_run_bounded),
        cmocka_unit_test(test_free_idle_and_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
