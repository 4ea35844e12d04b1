/* Unit tests for the chunk-ID set of gc and verify (src/repo/chunkset.c): membership, values
 * (ok/bad) and their update, growth past many doublings with every ID still found, IDs that
 * share their hash bytes (probing), and freeing back to an empty set.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "core/hash.h"
#include "repo/chunkset.h"

#define MANY 50000 /* IDs of the growth test: many doublings from the first table */

/* A deterministic ID of n: its SHA-256, uniformly spread like real IDs. */
static struct chunk_id id_of(uint64_t n)
{
    struct chunk_id id;
    assert_int_equal(hash_sha256(&n, sizeof(n), id.b), 0);
    return id;
}

static void test_empty(void **state)
{
    (void)state;
    struct chunk_set s = CHUNK_SET_INIT;
    struct chunk_id a = id_of(1);
    assert_false(chunk_set_has(&s, &a));
    assert_int_equal(chunk_set_get(&s, &a), CHUNK_STATE_UNKNOWN);
    assert_int_equal(chunk_set_len(&s), 0);
    assert_int_equal(chunk_set_put(&s, &a, CHUNK_STATE_UNKNOWN), -EINVAL);
    chunk_set_free(&s);
}

static void test_values(void **state)
{
    (void)state;
    struct chunk_set s = CHUNK_SET_INIT;
    struct chunk_id a = id_of(1), b = id_of(2), c = id_of(3);
    assert_int_equal(chunk_set_add(&s, &a), 0);
    assert_int_equal(chunk_set_put(&s, &b, CHUNK_STATE_BAD), 0);
    assert_true(chunk_set_has(&s, &a));
    assert_int_equal(chunk_set_get(&s, &a), CHUNK_STATE_PRESENT);
    assert_int_equal(chunk_set_get(&s, &b), CHUNK_STATE_BAD);
    assert_false(chunk_set_has(&s, &c));
    /* add keeps an existing value; put replaces it; neither counts an ID twice. */
    assert_int_equal(chunk_set_add(&s, &b), 0);
    assert_int_equal(chunk_set_get(&s, &b), CHUNK_STATE_BAD);
    assert_int_equal(chunk_set_put(&s, &b, CHUNK_STATE_OK), 0);
    assert_int_equal(chunk_set_get(&s, &b), CHUNK_STATE_OK);
    assert_int_equal(chunk_set_len(&s), 2);
    chunk_set_free(&s);
    assert_int_equal(chunk_set_len(&s), 0);
    assert_false(chunk_set_has(&s, &a));
}

static void test_growth(void **state)
{
    (void)state;
    struct chunk_set s = CHUNK_SET_INIT;
    for (uint64_t i = 0; i < MANY; i++) {
        struct chunk_id id = id_of(i);
        assert_int_equal(chunk_set_put(&s, &id, i % 2 ? CHUNK_STATE_OK : CHUNK_STATE_BAD), 0);
    }
    assert_int_equal(chunk_set_len(&s), MANY);
    for (uint64_t i = 0; i < MANY; i++) {
        struct chunk_id id = id_of(i);
        assert_int_equal(chunk_set_get(&s, &id), i % 2 ? CHUNK_STATE_OK : CHUNK_STATE_BAD);
    }
    for (uint64_t i = MANY; i < MANY + 1000; i++) {
        struct chunk_id id = id_of(i);
        assert_false(chunk_set_has(&s, &id));
    }
    chunk_set_free(&s);
}

/* IDs equal in their hash bytes (the first 8) all land on one probe chain. */
static void test_collisions(void **state)
{
    (void)state;
    struct chunk_set s = CHUNK_SET_INIT;
    struct chunk_id ids[300];
    for (size_t i = 0; i < 300; i++) {
        memset(ids[i].b, 0xab, sizeof(ids[i].b));
        memcpy(ids[i].b + 16, &i, sizeof(i));
        assert_int_equal(chunk_set_add(&s, &ids[i]), 0);
    }
    for (size_t i = 0; i < 300; i++)
        assert_true(chunk_set_has(&s, &ids[i]));
    struct chunk_id other = ids[0];
    other.b[31] ^= 1;
    assert_false(chunk_set_has(&s, &other));
    assert_int_equal(chunk_set_len(&s), 300);
    chunk_set_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_growth),
        cmocka_unit_test(test_collisions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
