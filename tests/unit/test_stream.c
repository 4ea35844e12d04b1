/* Unit tests of segmented container streams (src/repo/stream.c): round trips in plain and
 * encrypted repositories, and every rearrangement of the stored object refused: a segment
 * moved to another object or position, duplicated, dropped, the stream cut or extended.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <endian.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "repo/repo.h"
#include "repo/store.h"
#include "repo/store_mem.h"
#include "repo/stream.h"

#define ERR_LEN   512
#define PASS      "stream test passphrase"
#define KEY       "backups/stream-a"
#define OTHER_KEY "backups/stream-b"
#define NSEG      5
#define SEG_BYTES 3000 /* bytes of data segment k: SEG_BYTES * k (segment 0 empty) */
#define ITEMS     12345
#define MAX_OBJ   (1u << 24)

struct fixture {
    struct store *s;
    struct repo *r;
    uint8_t *obj; /* the stored stream */
    size_t len;
    size_t off[NSEG + 2]; /* where each segment (and the end) starts; off[NSEG + 1] = len */
};

static void segment_data(unsigned k, uint8_t *buf)
{
    for (size_t i = 0; i < (size_t)SEG_BYTES * k; i++)
        buf[i] = (uint8_t)(i * 7 + k);
}

static struct fixture *setup(bool encrypted)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char err[ERR_LEN];
    struct repo_init_options opt = {.passphrase = encrypted ? PASS : NULL};
    assert_non_null(f);
    assert_int_equal(store_mem_new("stream", &f->s), 0);
    assert_int_equal(repo_init_store(f->s, &opt, err, sizeof(err)), 0);
    assert_int_equal(repo_open_store(f->s, encrypted ? PASS : NULL, &f->r, err, sizeof(err)), 0);

    struct stream_writer *w;
    uint8_t *buf = malloc((size_t)SEG_BYTES * NSEG);
    assert_non_null(buf);
    assert_int_equal(stream_writer_new(f->r, KEY, &w), 0);
    for (unsigned k = 0; k < NSEG; k++) {
        segment_data(k, buf);
        assert_int_equal(stream_writer_add(w, buf, (size_t)SEG_BYTES * k), 0);
    }
    assert_int_equal(stream_writer_put(w, ITEMS, STORE_PUT_REPLACE), 0);
    stream_writer_free(w);
    free(buf);

    assert_int_equal(store_get(f->s, KEY, MAX_OBJ, &f->obj, &f->len), 0);
    size_t off = 0;
    for (unsigned k = 0; k < NSEG + 1; k++) {
        uint32_t le;
        assert_true(off + sizeof(le) <= f->len);
        f->off[k] = off;
        memcpy(&le, f->obj + off, sizeof(le));
        off += sizeof(le) + le32toh(le);
    }
    assert_int_equal(off, f->len);
    f->off[NSEG + 1] = f->len;
    return f;
}

static void teardown(struct fixture *f)
{
    free(f->obj);
    repo_close(f->r);
    store_close(f->s);
    free(f);
}

/* Read the stream at key to its end: 0 with every segment as written, or the first error. */
static int read_all(struct repo *r, const char *key, uint64_t *items)
{
    struct stream_reader *rd;
    int ret = stream_reader_open(r, key, MAX_OBJ, &rd);
    if (ret < 0)
        return ret;
    uint8_t *want = malloc((size_t)SEG_BYTES * NSEG);
    assert_non_null(want);
    unsigned k = 0;
    const uint8_t *p;
    size_t len;
    while ((ret = stream_reader_next(rd, &p, &len)) == 1) {
        assert_true(k < NSEG);
        segment_data(k, want);
        assert_int_equal(len, (size_t)SEG_BYTES * k);
        if (len)
            assert_memory_equal(p, want, len);
        k++;
    }
    if (ret == 0) {
        assert_int_equal(k, NSEG);
        *items = stream_reader_items(rd);
        /* Past the end it stays at the end. */
        assert_int_equal(stream_reader_next(rd, &p, &len), 0);
    }
    free(want);
    stream_reader_free(rd);
    return ret;
}

/* Store the segments of f's object given by index (NSEG: the end segment), in order, at key. */
static void put_segments(struct fixture *f, const char *key, const unsigned *order, size_t n)
{
    uint8_t *buf = malloc(f->len * 2);
    size_t len = 0;
    assert_non_null(buf);
    for (size_t i = 0; i < n; i++) {
        size_t a = f->off[order[i]], b = f->off[order[i] + 1];
        memcpy(buf + len, f->obj + a, b - a);
        len += b - a;
    }
    assert_int_equal(store_put(f->s, key, buf, len, STORE_PUT_REPLACE, NULL), 0);
    free(buf);
}

static void round_trip(bool encrypted)
{
    struct fixture *f = setup(encrypted);
    uint64_t items = 0;
    assert_int_equal(read_all(f->r, KEY, &items), 0);
    assert_int_equal(items, ITEMS);
    teardown(f);
}

static void test_round_trip_plain(void **state)
{
    (void)state;
    round_trip(false);
}

static void test_round_trip_encrypted(void **state)
{
    (void)state;
    round_trip(true);
}

static void test_empty_stream(void **state)
{
    (void)state;
    struct fixture *f = setup(false);
    struct stream_writer *w;
    struct stream_reader *rd;
    const uint8_t *p;
    size_t len;
    assert_int_equal(stream_writer_new(f->r, OTHER_KEY, &w), 0);
    assert_int_equal(stream_writer_put(w, 0, STORE_PUT_REPLACE), 0);
    /* Finished: no more segments. */
    assert_int_equal(stream_writer_add(w, "x", 1), -EINVAL);
    stream_writer_free(w);
    assert_int_equal(stream_reader_open(f->r, OTHER_KEY, MAX_OBJ, &rd), 0);
    assert_int_equal(stream_reader_next(rd, &p, &len), 0);
    assert_int_equal(stream_reader_items(rd), 0);
    stream_reader_free(rd);
    teardown(f);
}

/* Every rearrangement of the segments (the end segment is index NSEG). */
static void rearranged(bool encrypted)
{
    struct fixture *f = setup(encrypted);
    uint64_t items;
    static const unsigned swapped[] = {0, 2, 1, 3, 4, 5};
    static const unsigned duplicated[] = {0, 1, 1, 2, 3, 4, 5};
    static const unsigned dropped[] = {0, 1, 3, 4, 5};
    static const unsigned no_end[] = {0, 1, 2, 3, 4};
    static const unsigned end_twice[] = {0, 1, 2, 3, 4, 5, 5};
    static const unsigned trailing[] = {0, 1, 2, 3, 4, 5, 0};
    static const struct {
        const unsigned *order;
        size_t n;
    } cases[] = {
        {swapped, sizeof(swapped) / sizeof(*swapped)},
        {duplicated, sizeof(duplicated) / sizeof(*duplicated)},
        {dropped, sizeof(dropped) / sizeof(*dropped)},
        {no_end, sizeof(no_end) / sizeof(*no_end)},
        {end_twice, sizeof(end_twice) / sizeof(*end_twice)},
        {trailing, sizeof(trailing) / sizeof(*trailing)},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        put_segments(f, OTHER_KEY, cases[i].order, cases[i].n);
        assert_int_equal(read_all(f->r, OTHER_KEY, &items), -EBADMSG);
    }

    /* The intact object moved to another key: bound to its own. */
    assert_int_equal(store_put(f->s, OTHER_KEY, f->obj, f->len, STORE_PUT_REPLACE, NULL), 0);
    assert_int_equal(read_all(f->r, OTHER_KEY, &items), -EBADMSG);

    /* Cut anywhere: at every length short of the whole, in steps. */
    for (size_t cut = 0; cut < f->len; cut += 97) {
        assert_int_equal(store_put(f->s, KEY, f->obj, cut, STORE_PUT_REPLACE, NULL), 0);
        assert_int_equal(read_all(f->r, KEY, &items), -EBADMSG);
    }
    /* One bit flipped in each segment. */
    for (unsigned k = 0; k <= NSEG; k++) {
        uint8_t *copy = malloc(f->len);
        assert_non_null(copy);
        memcpy(copy, f->obj, f->len);
        copy[(f->off[k] + f->off[k + 1]) / 2] ^= 0x10;
        assert_int_equal(store_put(f->s, KEY, copy, f->len, STORE_PUT_REPLACE, NULL), 0);
        assert_int_equal(read_all(f->r, KEY, &items), -EBADMSG);
        free(copy);
    }
    teardown(f);
}

static void test_rearranged_plain(void **state)
{
    (void)state;
    rearranged(false);
}

static void test_rearranged_encrypted(void **state)
{
    (void)state;
    rearranged(true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_plain),     cmocka_unit_test(test_round_trip_encrypted),
        cmocka_unit_test(test_empty_stream),         cmocka_unit_test(test_rearranged_plain),
        cmocka_unit_test(test_rearranged_encrypted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
