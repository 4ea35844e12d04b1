/* Unit tests for src/core/pool.c, hex.c and lock.h: the first error wins and wakes waiters
 * exactly once, threads get their own argument, a pool joins every thread it started; strict
 * hex decoding; a scoped lock is released on every way out of its scope. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/hex.h"
#include "core/lock.h"
#include "core/pool.h"

#define N_THREADS 8

struct race {
    struct first_error fe;
    atomic_int wakes;
    unsigned index[N_THREADS];
    atomic_int ran;
};

static void count_wake(void *arg)
{
    struct race *r = arg;
    atomic_fetch_add(&r->wakes, 1);
}

static void *fail_worker(void *arg)
{
    unsigned *idx = arg;
    struct race *r = (struct race *)((char *)(idx - *idx) - offsetof(struct race, index));
    atomic_fetch_add(&r->ran, 1);
    first_error_set(&r->fe, -(int)(*idx + 1), "worker %u failed", *idx);
    return NULL;
}

static void test_first_error_race(void **state)
{
    (void)state;
    for (int round = 0; round < 50; round++) {
        struct race r = {0};
        first_error_init(&r.fe, count_wake, &r);
        assert_false(first_error_failed(&r.fe));
        assert_int_equal(first_error_code(&r.fe), 0);
        assert_string_equal(first_error_message(&r.fe), "");
        for (unsigned i = 0; i < N_THREADS; i++)
            r.index[i] = i;
        struct worker_pool p;
        assert_int_equal(worker_pool_start(&p, N_THREADS, fail_worker, r.index, sizeof(unsigned)),
                         0);
        worker_pool_join(&p);
        assert_int_equal(atomic_load(&r.ran), N_THREADS);
        assert_true(first_error_failed(&r.fe));
        assert_int_equal(atomic_load(&r.wakes), 1);
        /* the message and the code belong to the same (first) failure */
        int code = first_error_code(&r.fe);
        assert_true(code <= -1 && code >= -N_THREADS);
        char want[64];
        snprintf(want, sizeof(want), "worker %d failed", -code - 1);
        assert_string_equal(first_error_message(&r.fe), want);
        first_error_destroy(&r.fe);
    }
}

static void test_first_error_positive_is_eio(void **state)
{
    (void)state;
    struct first_error fe;
    first_error_init(&fe, NULL, NULL);
    assert_int_equal(first_error_set(&fe, 0, "no errno"), -EIO);
    assert_int_equal(first_error_set(&fe, -ENOSPC, "later"), -ENOSPC); /* dropped, returned */
    assert_int_equal(first_error_code(&fe), -EIO);
    assert_string_equal(first_error_message(&fe), "no errno");
    first_error_destroy(&fe);
}

static void *shared_worker(void *arg)
{
    atomic_fetch_add((atomic_int *)arg, 1);
    return NULL;
}

static void test_pool_shared_arg_and_reuse(void **state)
{
    (void)state;
    atomic_int n = 0;
    struct worker_pool p;
    assert_int_equal(worker_pool_start(&p, 5, shared_worker, &n, 0), 0);
    worker_pool_join(&p);
    assert_int_equal(atomic_load(&n), 5);
    assert_int_equal(worker_pool_start(&p, 0, shared_worker, &n, 0), 0);
    worker_pool_join(&p);
    assert_int_equal(atomic_load(&n), 5);
    assert_true(worker_pool_cpu_threads(0) >= 1);
    assert_int_equal(worker_pool_cpu_threads(1), 1);
}

static void test_hex(void **state)
{
    (void)state;
    const uint8_t in[] = {0x00, 0x9f, 0xa0, 0xff};
    char out[9];
    hex_encode(in, sizeof(in), out);
    assert_string_equal(out, "009fa0ff");
    hex_encode_upper(in, sizeof(in), out);
    assert_string_equal(out, "009FA0FF");
    uint8_t back[4];
    assert_int_equal(hex_decode("009fA0Ff", back, 4), 0);
    assert_memory_equal(back, in, 4);
    assert_int_equal(hex_decode("009fa0f", back, 4), -EINVAL);   /* short */
    assert_int_equal(hex_decode("009fa0ff0", back, 4), -EINVAL); /* long */
    assert_int_equal(hex_decode("009fa0fg", back, 4), -EINVAL);  /* not a digit */
    assert_int_equal(hex_decode("", back, 0), 0);
    assert_int_equal(hex_digit('/'), -1);
    assert_int_equal(hex_digit(':'), -1);
    assert_int_equal(hex_digit('@'), -1);
    assert_int_equal(hex_digit('G'), -1);
    assert_int_equal(hex_digit('`'), -1);
    assert_int_equal(hex_digit('g'), -1);
}

static pthread_mutex_t guarded = PTHREAD_MUTEX_INITIALIZER;

static int guarded_early_return(int x)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&guarded);
    if (x < 0)
        return -EINVAL;
    return x;
}

static void test_lock_guard(void **state)
{
    (void)state;
    assert_int_equal(guarded_early_return(-1), -EINVAL);
    assert_int_equal(pthread_mutex_trylock(&guarded), 0); /* released by the early return */
    pthread_mutex_unlock(&guarded);
    assert_int_equal(guarded_early_return(3), 3);
    assert_int_equal(pthread_mutex_trylock(&guarded), 0);
    pthread_mutex_unlock(&guarded);
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&guarded);
        assert_int_equal(pthread_mutex_trylock(&guarded), EBUSY); /* held inside */
    }
    assert_int_equal(pthread_mutex_trylock(&guarded), 0);
    pthread_mutex_unlock(&guarded);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_error_race),
        cmocka_unit_test(test_first_error_positive_is_eio),
        cmocka_unit_test(test_pool_shared_arg_and_reuse),
        cmocka_unit_test(test_hex),
        cmocka_unit_test(test_lock_guard),
    };
    return cmocka_run_group_tests_name("pool", tests, NULL, NULL);
}
