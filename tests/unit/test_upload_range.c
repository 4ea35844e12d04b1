/* Unit tests for what an upload PUT may write (src/server/upload_range.c): ranges at the start,
 * middle and end of a disk; reversed ranges, with and without the size; numbers at and beyond
 * 2^64 - 1; Content-Length equal to, shorter and longer than the range; chunked bodies; no
 * Content-Range; and the piece-by-piece check of a body, one byte over included.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "server/upload_range.h"

#define MIB   1048576u
#define CHUNK true
#define KNOWN false

/* upload_range_parse with room for the reason; the reason must be given when refused. */
static int parse(const char *cr, const char *cl, bool chunked, uint64_t size,
                 struct upload_range *r)
{
    char err[256] = "";
    int ret = upload_range_parse(cr, cl, chunked, size, r, err, sizeof(err));
    if (ret < 0)
        assert_true(err[0] != '\0');
    return ret;
}

static void test_accepted(void **state)
{
    (void)state;
    struct upload_range r;
    assert_int_equal(parse("bytes 0-99/*", "100", KNOWN, MIB, &r), 0);
    assert_true(r.offset == 0 && r.length == 100 && r.exact);
    assert_int_equal(parse("bytes 4096-8191/1048576", NULL, CHUNK, MIB, &r), 0);
    assert_true(r.offset == 4096 && r.length == 4096 && r.exact);
    assert_int_equal(parse("BYTES  1048575-1048575/*", "1", KNOWN, MIB, &r), 0);
    assert_true(r.offset == MIB - 1 && r.length == 1);
    assert_int_equal(parse("bytes 0-1048575/*", NULL, CHUNK, MIB, &r), 0);
    assert_true(r.offset == 0 && r.length == MIB);
}

static void test_reversed(void **state)
{
    (void)state;
    struct upload_range r;
    assert_int_equal(parse("bytes 4095-0/*", NULL, CHUNK, 4096, &r), -EINVAL);
    assert_int_equal(parse("bytes 4095-0/*", "4096", KNOWN, 4096, &r), -EINVAL);
    assert_int_equal(parse("bytes 1048000-10/*", NULL, CHUNK, MIB, &r), -EINVAL);
    assert_int_equal(parse("bytes 1048000-10/1048576", NULL, CHUNK, MIB, &r), -EINVAL);
    assert_int_equal(parse("bytes 18446744073709551615-0/*", NULL, CHUNK, MIB, &r), -EINVAL);
    assert_int_equal(parse("bytes 1-0/*", "0", KNOWN, MIB, &r), -EINVAL);
}

static void test_huge(void **state)
{
    (void)state;
    struct upload_range r;
    /* 2^64 - 1 fits 64 bits but not the disk; 2^64 does not fit. */
    assert_int_equal(
        parse("bytes 18446744073709551615-18446744073709551615/*", NULL, CHUNK, MIB, &r), -ERANGE);
    assert_int_equal(parse("bytes 1048575-18446744073709551615/*", NULL, CHUNK, MIB, &r), -ERANGE);
    assert_int_equal(parse("bytes 0-18446744073709551616/*", NULL, CHUNK, MIB, &r), -EINVAL);
    assert_int_equal(parse("bytes 0-1/18446744073709551615", NULL, CHUNK, MIB, &r), -ERANGE);
    assert_int_equal(parse("bytes 0-3/*", "18446744073709551616", KNOWN, MIB, &r), -EINVAL);
    assert_int_equal(parse(NULL, "18446744073709551615", KNOWN, MIB, &r), -ERANGE);
}

static void test_beyond_and_sizes(void **state)
{
    (void)state;
    struct upload_range r;
    assert_int_equal(parse("bytes 1048576-1048577/*", "2", KNOWN, MIB, &r), -ERANGE);
    assert_int_equal(parse("bytes 0-3/999", "4", KNOWN, MIB, &r), -ERANGE);
    assert_int_equal(parse("bytes 0-3/*", "5", KNOWN, MIB, &r), -ERANGE);  /* longer */
    assert_int_equal(parse("bytes 0-3/*", "3", KNOWN, MIB, &r), -EINVAL);  /* shorter */
    assert_int_equal(parse("bytes 0-3/*", NULL, KNOWN, MIB, &r), -EINVAL); /* no body */
    assert_int_equal(parse("bytes 0-3/*", "4x", KNOWN, MIB, &r), -EINVAL);
    assert_int_equal(parse("bytes 0-3/*", "4", KNOWN, 0, &r), -ERANGE);
}

static void test_malformed(void **state)
{
    (void)state;
    struct upload_range r;
    const char *bad[] = {
        "bytes=0-3",    "bytes 0-3",    "bytes -3/*", "bytes 0-/*",    "bytes 0-3/",
        "bytes 0-3/*x", "bytes +0-3/*", "bits 0-3/*", "bytes 0 - 3/*", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(parse(bad[i], NULL, CHUNK, MIB, &r), -EINVAL);
}

static void test_no_content_range(void **state)
{
    (void)state;
    struct upload_range r;
    assert_int_equal(parse(NULL, "100", KNOWN, MIB, &r), 0);
    assert_true(r.offset == 0 && r.length == 100 && !r.exact);
    assert_int_equal(parse(NULL, NULL, KNOWN, MIB, &r), 0);
    assert_true(r.length == 0);
    assert_int_equal(parse(NULL, NULL, CHUNK, MIB, &r), 0);
    assert_true(r.offset == 0 && r.length == MIB && !r.exact);
    assert_int_equal(parse(NULL, "1048577", KNOWN, MIB, &r), -ERANGE);
}

static void test_fits(void **state)
{
    (void)state;
    struct upload_range r = {.offset = 4096, .length = 4096, .exact = true};
    assert_true(upload_range_fits(&r, 0, 4096));
    assert_false(upload_range_fits(&r, 0, 4097)); /* one byte over */
    assert_true(upload_range_fits(&r, 4000, 96));
    assert_false(upload_range_fits(&r, 4000, 97)); /* one byte over, in a later piece */
    assert_true(upload_range_fits(&r, 4096, 0));
    assert_false(upload_range_fits(&r, 4096, 1));
    assert_false(upload_range_fits(&r, 4097, 0)); /* never past the range, even when empty */
    assert_false(upload_range_fits(&r, 0, SIZE_MAX));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepted),  cmocka_unit_test(test_reversed),
        cmocka_unit_test(test_huge),      cmocka_unit_test(test_beyond_and_sizes),
        cmocka_unit_test(test_malformed), cmocka_unit_test(test_no_content_range),
        cmocka_unit_test(test_fits),
    };
    return cmocka_run_group_tests_name("upload_range", tests, NULL, NULL);
}
