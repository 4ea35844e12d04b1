/* Unit tests of the cache of open snapshot disks (server/disk_cache.h): an entry found again,
 * no entry stored across an invalidation (a snapshot deletion), readers closed once the cache
 * and every request let go of them.  The readers are fakes that count their closes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "server/disk_cache.h"

struct fake_reader {
    struct disk_reader base;
    int *closes;
};

static void fake_close(struct disk_reader *r)
{
    struct fake_reader *f = (struct fake_reader *)r;
    (*f->closes)++;
    free(f);
}

static const struct disk_reader_ops fake_ops = {.close = fake_close};

static struct disk_file *fake_file(int *closes, uint64_t size)
{
    struct fake_reader *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    r->base.ops = &fake_ops;
    r->base.size = size;
    r->closes = closes;
    struct disk_file *f = disk_file_new(&r->base, "/snapshots/vm/s/disk.img");
    assert_non_null(f);
    assert_int_equal(f->size, size);
    return f;
}

static const char key_a[] = "vm\0s1\0disk.img", key_b[] = "vm\0s2\0disk.img";

static void test_get_put(void **state)
{
    (void)state;
    struct disk_cache *c = NULL;
    int closes = 0;
    assert_int_equal(disk_cache_new(&c), 0);
    assert_null(disk_cache_get(c, key_a, sizeof(key_a)));

    struct disk_file *f = fake_file(&closes, 42);
    disk_cache_put(c, key_a, sizeof(key_a), f, disk_cache_gen(c));
    disk_file_unref(c, f); /* the request is done; the cache keeps it */
    assert_int_equal(closes, 0);

    struct disk_file *g = disk_cache_get(c, key_a, sizeof(key_a));
    assert_ptr_equal(g, f);
    assert_null(disk_cache_get(c, key_b, sizeof(key_b)));
    /* a snapshot stops being ready: the cache forgets, the reading request keeps its disk */
    disk_cache_invalidate(c);
    assert_null(disk_cache_get(c, key_a, sizeof(key_a)));
    assert_int_equal(closes, 0);
    disk_file_unref(c, g);
    assert_int_equal(closes, 1);
    disk_cache_free(c);
}

static void test_put_after_invalidate(void **state)
{
    (void)state;
    struct disk_cache *c = NULL;
    int closes = 0;
    assert_int_equal(disk_cache_new(&c), 0);
    /* the generation is read before the catalog lookup; a deletion comes in between */
    unsigned long long gen = disk_cache_gen(c);
    disk_cache_invalidate(c);
    struct disk_file *f = fake_file(&closes, 1);
    disk_cache_put(c, key_a, sizeof(key_a), f, gen);
    assert_null(disk_cache_get(c, key_a, sizeof(key_a)));
    disk_file_unref(c, f);
    assert_int_equal(closes, 1); /* nothing held it open */

    /* entries still cached are closed with the cache */
    struct disk_file *g = fake_file(&closes, 2);
    disk_cache_put(c, key_b, sizeof(key_b), g, disk_cache_gen(c));
    disk_file_unref(c, g);
    assert_int_equal(closes, 1);
    disk_cache_free(c);
    assert_int_equal(closes, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_put),
        cmocka_unit_test(test_put_after_invalidate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
