/* Unit tests for HTTP Range handling (src/server/range.c): parsing of single, multiple, suffix and
 * open-ended ranges, unsatisfiable and invalid sets, coalescing of overlapping ranges, numbers
 * beyond 64 bits, empty resources, the range count limit, ETags, If-Range and Accept.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/range.h"

/* A literal array of {start, end} pairs and its length. */
#define RANGES(...)                                                                                \
    (const uint64_t[][2]){__VA_ARGS__},                                                            \
        (sizeof((const uint64_t[][2]){__VA_ARGS__}) / sizeof(uint64_t[2]))

static int list_setup(void **state)
{
    byte_range_list *l = calloc(1, sizeof(*l));
    if (!l)
        return -1;
    *state = l;
    return 0;
}

static int list_teardown(void **state)
{
    byte_range_list *l = *state;
    byte_range_list_reset(l);
    free(l);
    return 0;
}

/* Parsing header for size must return 0 and exactly the ranges want, in that order. */
#define assert_parse(l, header, size, ...)                                                         \
    assert_parse_at(__FILE__, __LINE__, (l), (header), (size), __VA_ARGS__)
static void assert_parse_at(const char *file, int line, byte_range_list *l, const char *header,
                            uint64_t size, const uint64_t (*want)[2], size_t n)
{
    int r = http_range_parse(header, size, l);
    bool ok = r == 0 && l->len == n;
    for (size_t i = 0; ok && i < n; i++)
        ok = l->ptr[i].start == want[i][0] && l->ptr[i].end == want[i][1];
    if (!ok) {
        print_message("# header \"%s\" size %" PRIu64 ": returned %d, %zu ranges\n", header, size,
                      r, l->len);
        for (size_t i = 0; r == 0 && i < l->len; i++)
            print_message("#   got %" PRIu64 "-%" PRIu64 "\n", l->ptr[i].start, l->ptr[i].end);
        for (size_t i = 0; i < n; i++)
            print_message("#   want %" PRIu64 "-%" PRIu64 "\n", want[i][0], want[i][1]);
        _fail(file, line);
    }
}

/* Parsing header for size must fail with err and leave the list empty. */
#define assert_parse_error(l, header, size, err)                                                   \
    assert_parse_error_at(__FILE__, __LINE__, (l), (header), (size), (err))
static void assert_parse_error_at(const char *file, int line, byte_range_list *l,
                                  const char *header, uint64_t size, int err)
{
    /* Something stale in the list must not survive a failure. */
    struct byte_range stale = {.start = 7, .end = 8};
    if (byte_range_list_append(l, stale) < 0)
        _fail(file, line);
    int r = http_range_parse(header, size, l);
    if (r != err || l->len != 0) {
        print_message("# header \"%s\" size %" PRIu64 ": returned %d (%zu ranges), want %d\n",
                      header ? header : "(null)", size, r, l->len, err);
        _fail(file, line);
    }
}

static void test_single(void **state)
{
    byte_range_list *l = *state;
    assert_parse(l, "bytes=0-99", 1000, RANGES({0, 99}));
    assert_parse(l, "bytes=0-0", 1000, RANGES({0, 0}));
    assert_parse(l, "bytes=999-999", 1000, RANGES({999, 999}));
    assert_parse(l, "bytes=10-999", 1000, RANGES({10, 999}));
    /* Last position beyond the end: clipped. */
    assert_parse(l, "bytes=900-2000", 1000, RANGES({900, 999}));
    /* Leading zeros are plain decimal. */
    assert_parse(l, "bytes=007-0010", 1000, RANGES({7, 10}));
    /* The unit is case-insensitive. */
    assert_parse(l, "Bytes=1-2", 1000, RANGES({1, 2}));
    assert_parse(l, "BYTES=1-2", 1000, RANGES({1, 2}));
}

static void test_multiple(void **state)
{
    byte_range_list *l = *state;
    assert_parse(l, "bytes=0-9,20-29", 1000, RANGES({0, 9}, {20, 29}));
    assert_parse(l, "bytes=0-9,20-29,40-49,-10", 1000,
                 RANGES({0, 9}, {20, 29}, {40, 49}, {990, 999}));
    /* Request order is kept for ranges that are not merged. */
    assert_parse(l, "bytes=500-599,0-9", 1000, RANGES({500, 599}, {0, 9}));
    assert_parse(l, "bytes=-10,0-9", 1000, RANGES({990, 999}, {0, 9}));
    /* Unsatisfiable members are dropped, the others served. */
    assert_parse(l, "bytes=0-5,2000-3000,10-", 1000, RANGES({0, 5}, {10, 999}));
    assert_parse(l, "bytes=1000-,-0,3-4", 1000, RANGES({3, 4}));
}

static void test_suffix(void **state)
{
    byte_range_list *l = *state;
    assert_parse(l, "bytes=-100", 1000, RANGES({900, 999}));
    assert_parse(l, "bytes=-1", 1000, RANGES({999, 999}));
    assert_parse(l, "bytes=-1000", 1000, RANGES({0, 999}));
    /* Longer than the resource: all of it. */
    assert_parse(l, "bytes=-5000", 1000, RANGES({0, 999}));
    assert_parse(l, "bytes=-1", 1, RANGES({0, 0}));
    /* A zero-length suffix is valid syntax but unsatisfiable. */
    assert_parse_error(l, "bytes=-0", 1000, -ERANGE);
    assert_parse_error(l, "bytes=-000", 1000, -ERANGE);
}

static void test_open_ended(void **state)
{
    byte_range_list *l = *state;
    assert_parse(l, "bytes=500-", 1000, RANGES({500, 999}));
    assert_parse(l, "bytes=0-", 1000, RANGES({0, 999}));
    assert_parse(l, "bytes=999-", 1000, RANGES({999, 999}));
    assert_parse_error(l, "bytes=1000-", 1000, -ERANGE);
}

static void test_unsatisfiable(void **state)
{
    byte_range_list *l = *state;
    assert_parse_error(l, "bytes=1000-1000", 1000, -ERANGE);
    assert_parse_error(l, "bytes=1000-2000", 1000, -ERANGE);
    assert_parse_error(l, "bytes=5000-", 1000, -ERANGE);
    assert_parse_error(l, "bytes=1000-,2000-3000,-0", 1000, -ERANGE);
}

static void test_overlap_merge(void **state)
{
    byte_range_list *l = *state;
    assert_parse(l, "bytes=0-99,50-150", 1000, RANGES({0, 150}));
    assert_parse(l, "bytes=50-150,0-99", 1000, RANGES({0, 150}));
    /* Touching ranges merge, a gap of one byte does not. */
    assert_parse(l, "bytes=0-99,100-199", 1000, RANGES({0, 199}));
    assert_parse(l, "bytes=0-99,101-199", 1000, RANGES({0, 99}, {101, 199}));
    /* Contained, duplicated and chained ranges. */
    assert_parse(l, "bytes=0-999,10-20", 1000, RANGES({0, 999}));
    assert_parse(l, "bytes=5-9,5-9,5-9", 1000, RANGES({5, 9}));
    assert_parse(l, "bytes=0-9,30-39,10-19,20-29", 1000, RANGES({0, 39}));
    /* Suffix and open-ended ranges merge with what they overlap after clipping. */
    assert_parse(l, "bytes=900-,-200", 1000, RANGES({800, 999}));
    assert_parse(l, "bytes=0-5000,-10", 1000, RANGES({0, 999}));
    /* A merged range takes the place of its earliest member. */
    assert_parse(l, "bytes=500-599,0-99,50-150", 1000, RANGES({500, 599}, {0, 150}));
    assert_parse(l, "bytes=50-150,500-599,0-99", 1000, RANGES({0, 150}, {500, 599}));
    /* Ranges meeting at the end of a resource of maximal size. */
    assert_parse(l, "bytes=0-18446744073709551613,18446744073709551613-", UINT64_MAX,
                 RANGES({0, UINT64_MAX - 1}));
}

static void test_whitespace(void **state)
{
    byte_range_list *l = *state;
    assert_parse(l, "bytes=0-1, 5-6", 1000, RANGES({0, 1}, {5, 6}));
    assert_parse(l, "bytes=0-1 ,\t5-6", 1000, RANGES({0, 1}, {5, 6}));
    assert_parse(l, "  bytes=0-1,5-6 \t", 1000, RANGES({0, 1}, {5, 6}));
    assert_parse(l, "bytes= 0-1", 1000, RANGES({0, 1}));
    /* Empty list elements are tolerated (RFC 9110 section 5.6.1.2). */
    assert_parse(l, "bytes=0-1,,5-6,", 1000, RANGES({0, 1}, {5, 6}));
    assert_parse(l, "bytes=, ,0-1", 1000, RANGES({0, 1}));
    /* But not whitespace inside a range-spec or around the '='. */
    assert_parse_error(l, "bytes=0 -1", 1000, -ENOENT);
    assert_parse_error(l, "bytes=0- 1", 1000, -ENOENT);
    assert_parse_error(l, "bytes=- 1", 1000, -ENOENT);
    assert_parse_error(l, "bytes =0-1", 1000, -ENOENT);
}

static void test_invalid(void **state)
{
    byte_range_list *l = *state;
    static const char *const bad[] = {
        "",
        "   ",
        "bytes",
        "bytes=",
        "bytes= ",
        "bytes=,",
        "bytes=, ,",
        "bytes 0-1",
        "bytes:0-1",
        "bytesx=0-1",
        "xbytes=0-1",
        "items=0-1",
        "lines=0-1",
        "=0-1",
        "bytes=abc",
        "bytes=-",
        "bytes=--1",
        "bytes=1--2",
        "bytes=0-1-2",
        "bytes=+1-2",
        "bytes=1-+2",
        "bytes=-+2",
        "bytes=0x10-20",
        "bytes=1.5-2",
        "bytes=1-2;",
        "bytes=1-2 3-4",
        "bytes=1",
        "bytes=1-0",
        "bytes=10-9",
        "bytes=0-1,5-4",
        "bytes=0-1,x",
        "bytes=0-1\r\n",
        "bytes==0-1",
        "bytes=0-1,bytes=2-3",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_parse_error(l, bad[i], 1000, -ENOENT);
    assert_parse_error(l, NULL, 1000, -ENOENT);
    /* An invalid member invalidates the whole set, even next to unsatisfiable ones. */
    assert_parse_error(l, "bytes=5000-,9-8", 1000, -ENOENT);
    assert_parse_error(l, "bytes=-0,abc", 1000, -ENOENT);
}

static void test_huge_numbers(void **state)
{
    byte_range_list *l = *state;
    /* Beyond 64 bits as a last position: to the end. */
    assert_parse(l, "bytes=0-99999999999999999999999999999", 1000, RANGES({0, 999}));
    assert_parse(l, "bytes=0-18446744073709551616", 1000, RANGES({0, 999}));
    assert_parse(l, "bytes=10-18446744073709551615", 1000, RANGES({10, 999}));
    /* As a suffix length: the whole resource. */
    assert_parse(l, "bytes=-99999999999999999999999999999", 1000, RANGES({0, 999}));
    /* As a first position: unsatisfiable, never wrapped round to something small. */
    assert_parse_error(l, "bytes=18446744073709551616-", 1000, -ERANGE);
    assert_parse_error(l, "bytes=18446744073709551617-18446744073709551618", 1000, -ERANGE);
    assert_parse_error(l, "bytes=36893488147419103232-", 1000, -ERANGE);
    assert_parse_error(l, "bytes=99999999999999999999999999999-", 1000, -ERANGE);
    /* b < a is detected even when both saturate. */
    assert_parse_error(l, "bytes=18446744073709551617-18446744073709551616", 1000, -ENOENT);
    assert_parse_error(l, "bytes=99999999999999999999999999999-99999999999999999999999999998", 1000,
                       -ENOENT);
    /* Leading zeros do not make a number big. */
    assert_parse(l, "bytes=00000000000000000000000000005-000000000000000000000000000009", 1000,
                 RANGES({5, 9}));
    assert_parse_error(l, "bytes=0000000000000000000000000009-5", 1000, -ENOENT);
    /* 63 bits is the limit for positions, whatever the size. */
    assert_parse(l, "bytes=9223372036854775806-9223372036854775807", UINT64_MAX,
                 RANGES({9223372036854775806ull, 9223372036854775807ull}));
    assert_parse_error(l, "bytes=9223372036854775808-", UINT64_MAX, -ERANGE);
    assert_parse(l, "bytes=5-9223372036854775808", UINT64_MAX, RANGES({5, UINT64_MAX - 1}));
    assert_parse(l, "bytes=-18446744073709551615", UINT64_MAX, RANGES({0, UINT64_MAX - 1}));
    assert_parse(l, "bytes=-1", UINT64_MAX, RANGES({UINT64_MAX - 1, UINT64_MAX - 1}));
}

static void test_size_zero(void **state)
{
    byte_range_list *l = *state;
    assert_parse_error(l, "bytes=0-", 0, -ERANGE);
    assert_parse_error(l, "bytes=0-0", 0, -ERANGE);
    assert_parse_error(l, "bytes=0-99", 0, -ERANGE);
    assert_parse_error(l, "bytes=-1", 0, -ERANGE);
    assert_parse_error(l, "bytes=-0", 0, -ERANGE);
    assert_parse_error(l, "bytes=-99999999999999999999999", 0, -ERANGE);
    assert_parse_error(l, "bytes=0-0,-5,3-", 0, -ERANGE);
    /* Syntax is still checked first. */
    assert_parse_error(l, "bytes=abc", 0, -ENOENT);
    assert_parse_error(l, "bytes=5-1", 0, -ENOENT);
}

/* Builds "bytes=" followed by n range-specs "k-k" with k = i * mul for i = 0..n-1, each followed
 * by an empty list element when extra_commas. */
static char *ranges_build(size_t n, uint64_t mul, bool extra_commas)
{
    size_t cap = 16 + n * 48;
    char *s = malloc(cap);
    assert_non_null(s);
    size_t len = (size_t)snprintf(s, cap, "bytes=");
    for (size_t i = 0; i < n; i++) {
        uint64_t k = (uint64_t)i * mul;
        len += (size_t)snprintf(s + len, cap - len, "%s%" PRIu64 "-%" PRIu64 "%s", i ? "," : "", k,
                                k, extra_commas ? "," : "");
    }
    return s;
}

static void test_too_many(void **state)
{
    byte_range_list *l = *state;

    /* HTTP_RANGE_MAX separate ranges are served ... */
    char *s = ranges_build(HTTP_RANGE_MAX, 10, false);
    assert_int_equal(http_range_parse(s, 1000000, l), 0);
    assert_int_equal(l->len, HTTP_RANGE_MAX);
    for (size_t i = 0; i < l->len; i++) {
        assert_int_equal(l->ptr[i].start, i * 10);
        assert_int_equal(l->ptr[i].end, i * 10);
    }
    free(s);

    /* ... one more is refused, */
    s = ranges_build(HTTP_RANGE_MAX + 1, 10, false);
    assert_parse_error(l, s, 1000000, -ERANGE);
    free(s);

    /* counting the range-specs of the request, even if they would coalesce, */
    s = ranges_build(HTTP_RANGE_MAX + 1, 0, false);
    assert_parse_error(l, s, 1000000, -ERANGE);
    free(s);
    s = ranges_build(1000, 1, false);
    assert_parse_error(l, s, 1000000, -ERANGE);
    free(s);

    /* while a syntax error still makes the header ignored. */
    s = ranges_build(HTTP_RANGE_MAX + 1, 10, false);
    size_t len = strlen(s);
    char *t = realloc(s, len + 8);
    assert_non_null(t);
    strcpy(t + len, ",9-1");
    assert_parse_error(l, t, 1000000, -ENOENT);
    free(t);

    /* Empty list elements do not count. */
    s = ranges_build(HTTP_RANGE_MAX, 10, true);
    assert_int_equal(http_range_parse(s, 1000000, l), 0);
    assert_int_equal(l->len, HTTP_RANGE_MAX);
    free(s);
}

static void test_list_limit(void **state)
{
    byte_range_list *l = *state;
    /* A caller's capacity limit on the list is reported, not overrun. */
    l->max_len = 1;
    assert_int_equal(http_range_parse("bytes=0-1,5-6", 100, l), -E2BIG);
    assert_int_equal(l->len, 0);
    assert_parse(l, "bytes=0-1", 100, RANGES({0, 1}));
}

static void test_etag(void **state)
{
    (void)state;
    char a[HTTP_ETAG_MAX], b[HTTP_ETAG_MAX];

    /* Strong, quoted, 32 lower-case hex digits: SHA-256("snap-1\0vda\01048576"). */
    http_etag("snap-1", "vda", 1048576, a);
    assert_string_equal(a, "\"cd675c96199587769e040cf22c011f2c\"");
    assert_true(strlen(a) < HTTP_ETAG_MAX);

    /* Stable. */
    http_etag("snap-1", "vda", 1048576, b);
    assert_string_equal(a, b);

    /* Distinct when any part differs, including where the separators fall. */
    http_etag("snap-2", "vda", 1048576, b);
    assert_string_not_equal(a, b);
    http_etag("snap-1", "vdb", 1048576, b);
    assert_string_not_equal(a, b);
    http_etag("snap-1", "vda", 1048577, b);
    assert_string_not_equal(a, b);
    http_etag("snap-1v", "da", 1048576, a);
    http_etag("snap-1", "vda", 1048576, b);
    assert_string_not_equal(a, b);
    http_etag("ab", "c", 12, a);
    http_etag("a", "bc", 12, b);
    assert_string_not_equal(a, b);
    http_etag("a", "b1", 2, a);
    http_etag("a", "b", 12, b);
    assert_string_not_equal(a, b);

    /* Empty and extreme values still give a well-formed tag. */
    http_etag("", "", 0, a);
    assert_int_equal(strlen(a), 34);
    http_etag("x", "y", UINT64_MAX, a);
    assert_int_equal(strlen(a), 34);
    assert_int_equal(a[0], '"');
    assert_int_equal(a[33], '"');
    for (int i = 1; i < 33; i++)
        assert_non_null(strchr("0123456789abcdef", a[i]));
}

static void test_if_range(void **state)
{
    (void)state;
    char etag[HTTP_ETAG_MAX], other[HTTP_ETAG_MAX], weak[HTTP_ETAG_MAX + 2];
    http_etag("snap-1", "vda", 4096, etag);
    http_etag("snap-2", "vda", 4096, other);
    snprintf(weak, sizeof(weak), "W/%s", etag);

    assert_true(http_if_range_matches(NULL, etag));
    assert_true(http_if_range_matches(etag, etag));

    char padded[HTTP_ETAG_MAX + 4];
    snprintf(padded, sizeof(padded), " %s\t", etag);
    assert_true(http_if_range_matches(padded, etag));

    assert_false(http_if_range_matches(other, etag));
    assert_false(http_if_range_matches(weak, etag));
    assert_false(http_if_range_matches("Wed, 21 Oct 2015 07:28:00 GMT", etag));
    assert_false(http_if_range_matches("", etag));
    assert_false(http_if_range_matches("*", etag));
    assert_false(http_if_range_matches("\"\"", etag));

    /* Prefixes, extensions, the tag without quotes and other case. */
    char buf[2 * HTTP_ETAG_MAX + 8];
    snprintf(buf, sizeof(buf), "%.*s", (int)strlen(etag) - 1, etag);
    assert_false(http_if_range_matches(buf, etag));
    snprintf(buf, sizeof(buf), "%sx", etag);
    assert_false(http_if_range_matches(buf, etag));
    snprintf(buf, sizeof(buf), "%.*s", (int)strlen(etag) - 2, etag + 1);
    assert_false(http_if_range_matches(buf, etag));
    snprintf(buf, sizeof(buf), "%s, %s", other, etag);
    assert_false(http_if_range_matches(buf, etag));
    snprintf(buf, sizeof(buf), "%s", etag);
    for (char *p = buf; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    assert_false(http_if_range_matches(buf, etag));

    /* Nothing matches a weak or missing entity tag. */
    assert_false(http_if_range_matches(weak, weak));
    assert_false(http_if_range_matches("", ""));
}

static void test_accepts(void **state)
{
    (void)state;
    static const struct {
        const char *accept;
        bool want;
    } cases[] = {
        {"application/vnd.vmexport.sparse", true},
        {"Application/VND.vmexport.SPARSE", true},
        {"application/vnd.vmexport.sparse, application/octet-stream", true},
        {"text/html,  application/vnd.vmexport.sparse ;q=0.5", true},
        {"application/vnd.vmexport.sparse;q=0.001", true},
        {"application/vnd.vmexport.sparse;level=1;q=1", true},
        {",,application/vnd.vmexport.sparse,", true},
        {"application/vnd.vmexport.sparse;q=0.01", true},
        {"application/vnd.vmexport.sparse;q=0x", true}, /* not zero */
        /* not asked for by name, or excluded */
        {NULL, false},
        {"", false},
        {"*/*", false},
        {"application/*", false},
        {"application/vnd.vmexport.sparsex", false},
        {"application/vnd.vmexport.spars", false},
        {"xapplication/vnd.vmexport.sparse", false},
        {"application/vnd.vmexport.sparse;q=0", false},
        {"application/vnd.vmexport.sparse; q=0.000", false},
        {"application/vnd.vmexport.sparse;Q=0.", false},
        {"application/vnd.vmexport.sparse;q=0 ;x=1", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        bool got = http_accepts(cases[i].accept, "application/vnd.vmexport.sparse");
        if (got != cases[i].want)
            fail_msg("Accept: %s -> %d, want %d", cases[i].accept ? cases[i].accept : "(none)", got,
                     cases[i].want);
    }
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, list_setup, list_teardown)
    const struct CMUnitTest tests[] = {
        T(test_single),
        T(test_multiple),
        T(test_suffix),
        T(test_open_ended),
        T(test_unsatisfiable),
        T(test_overlap_merge),
        T(test_whitespace),
        T(test_invalid),
        T(test_huge_numbers),
        T(test_size_zero),
        T(test_too_many),
        T(test_list_limit),
        cmocka_unit_test(test_etag),
        cmocka_unit_test(test_if_range),
        cmocka_unit_test(test_accepts),
    };
#undef T
    return cmocka_run_group_tests_name("range", tests, NULL, NULL);
}
