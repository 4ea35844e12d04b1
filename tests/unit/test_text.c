/* Unit tests for src/core/text.c: UTF-8 validity at every kind of malformed sequence (overlong,
 * surrogate, past U+10FFFF, truncated, stray continuation), scrubbing to U+FFFD, and booleans
 * exactly as Go's strconv.ParseBool takes them. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/text.h"

static void test_utf8_valid(void **state)
{
    (void)state;
    assert_true(utf8_valid(""));
    assert_true(utf8_valid("web01"));
    assert_true(utf8_valid("caf\xc3\xa9"));           /* é */
    assert_true(utf8_valid("\xe2\x82\xac"));          /* € */
    assert_true(utf8_valid("\xf0\x9f\x92\xbe disk")); /* U+1F4BE */
    assert_true(utf8_valid("\xf4\x8f\xbf\xbf"));      /* U+10FFFF, the last code point */
    assert_true(utf8_valid("\xed\x9f\xbf"));          /* U+D7FF, before the surrogates */
    assert_true(utf8_valid("\xee\x80\x80"));          /* U+E000, after them */
    assert_false(utf8_valid("\xff\xfe"));             /* never in UTF-8 */
    assert_false(utf8_valid("a\x80"));                /* stray continuation byte */
    assert_false(utf8_valid("\xc0\xaf"));             /* overlong '/' */
    assert_false(utf8_valid("\xc1\xbf"));             /* overlong */
    assert_false(utf8_valid("\xe0\x80\xaf"));         /* overlong 3-byte '/' */
    assert_false(utf8_valid("\xf0\x80\x80\xaf"));     /* overlong 4-byte '/' */
    assert_false(utf8_valid("\xed\xa0\x80"));         /* U+D800, a surrogate */
    assert_false(utf8_valid("\xf4\x90\x80\x80"));     /* U+110000 */
    assert_false(utf8_valid("\xf5\x80\x80\x80"));     /* lead byte past U+10FFFF */
    assert_false(utf8_valid("\xc3"));                 /* truncated at the end */
    assert_false(utf8_valid("\xe2\x82"));             /* truncated at the end */
    assert_false(utf8_valid("\xe2\x82x"));            /* truncated by an ASCII byte */
    assert_false(utf8_valid("\xf0\x9f\x92"));         /* truncated 4-byte */
}

static void test_utf8_char_len(void **state)
{
    (void)state;
    assert_int_equal(utf8_char_len("a"), 1);
    assert_int_equal(utf8_char_len("\xc3\xa9"), 2);
    assert_int_equal(utf8_char_len("\xe2\x82\xac"), 3);
    assert_int_equal(utf8_char_len("\xf0\x9f\x92\xbe"), 4);
    assert_int_equal(utf8_char_len(""), 0);
    assert_int_equal(utf8_char_len("\xff"), 0);
}

static void test_utf8_scrub(void **state)
{
    (void)state;
    char *s = utf8_scrub("\xff\xfe");
    assert_non_null(s);
    assert_string_equal(s, UTF8_REPLACEMENT UTF8_REPLACEMENT);
    assert_true(utf8_valid(s));
    free(s);
    s = utf8_scrub("VM 'a\xe2\x82' caf\xc3\xa9");
    assert_non_null(s);
    assert_string_equal(s, "VM 'a" UTF8_REPLACEMENT UTF8_REPLACEMENT "' caf\xc3\xa9");
    free(s);
    s = utf8_scrub("plain");
    assert_string_equal(s, "plain");
    free(s);
}

static void test_bool_parse(void **state)
{
    (void)state;
    static const char *const truths[] = {"1", "t", "T", "TRUE", "true", "True"};
    static const char *const falsehoods[] = {"0", "f", "F", "FALSE", "false", "False"};
    static const char *const invalid[] = {"yes", "no",        "y",     "n",     "tRUE", "TrUe",
                                          "2",   "-1",        " true", "true ", "01",   "on",
                                          "off", "false\x01", "FaLse", "tt"};
    bool v;
    for (size_t i = 0; i < sizeof(truths) / sizeof(truths[0]); i++) {
        v = false;
        assert_int_equal(bool_parse(truths[i], false, &v), 0);
        assert_true(v);
        v = true;
        assert_int_equal(bool_parse(falsehoods[i], true, &v), 0);
        assert_false(v);
    }
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        v = true;
        assert_int_equal(bool_parse(invalid[i], false, &v), -EINVAL);
        assert_true(v); /* untouched */
    }
    /* absent or empty: the default */
    assert_int_equal(bool_parse(NULL, true, &v), 0);
    assert_true(v);
    assert_int_equal(bool_parse("", false, &v), 0);
    assert_false(v);
    assert_int_equal(bool_parse("", true, &v), 0);
    assert_true(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_valid),
        cmocka_unit_test(test_utf8_char_len),
        cmocka_unit_test(test_utf8_scrub),
        cmocka_unit_test(test_bool_parse),
    };
    return cmocka_run_group_tests_name("text", tests, NULL, NULL);
}
