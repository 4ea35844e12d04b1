/* Tests of the RBD identity (provider/rbdio.c) that the rbd provider gives each snapshot disk
 * as its file_id and the backup engine's RBD source parses back: a round trip with and without
 * a namespace (percent-encoded where it holds other characters), and refusal of what the
 * format never produces (another scheme, missing parts, non-digits, overflow, bad escapes, an
 * empty or NUL-escaped namespace), so that a hostile server's file_id reads nothing else. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "provider/rbdio.h"

#define FSID "1b2eed76-4827-4648-ae54-36d0b0500a30"

static void roundtrip(const char *ns, const char *want)
{
    struct rbdio_ident id = {.pool_id = 7, .snap_id = 1234567890123ull}, back;
    strcpy(id.fsid, FSID);
    strcpy(id.ns, ns);
    strcpy(id.image_id, "1014ab7c3e9");
    char s[512];
    assert_int_equal(rbdio_ident_format(&id, s, sizeof(s)), 0);
    assert_string_equal(s, want);
    assert_int_equal(rbdio_ident_parse(s, &back), 0);
    assert_string_equal(back.fsid, FSID);
    assert_int_equal(back.pool_id, 7);
    assert_string_equal(back.ns, ns);
    assert_string_equal(back.image_id, "1014ab7c3e9");
    assert_true(back.snap_id == 1234567890123ull);
}

static void test_roundtrip(void **state)
{
    (void)state;
    roundtrip("", "rbd://" FSID "/7/1014ab7c3e9@1234567890123");
    roundtrip("tenant-1", "rbd://" FSID "/7/1014ab7c3e9@1234567890123?namespace=tenant-1");
    roundtrip("a b/c%", "rbd://" FSID "/7/1014ab7c3e9@1234567890123?namespace=a%20b%2Fc%25");
}

static void test_too_long(void **state)
{
    (void)state;
    struct rbdio_ident id = {.pool_id = 1, .snap_id = 2};
    strcpy(id.fsid, FSID);
    strcpy(id.image_id, "x");
    memset(id.ns, '%', sizeof(id.ns) - 1);
    char s[128];
    assert_int_equal(rbdio_ident_format(&id, s, sizeof(s)), -ENAMETOOLONG);
}

static void test_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "nbd+unix:///x?socket=/tmp/s",
        "rbd://",
        "rbd://" FSID,
        "rbd://" FSID "/7",
        "rbd://" FSID "/7/img",
        "rbd://" FSID "/7/img@",
        "rbd://" FSID "//img@1",
        "rbd:///7/img@1",
        "rbd://" FSID "/-7/img@1",
        "rbd://" FSID "/7x/img@1",
        "rbd://" FSID "/99999999999999999999/img@1",
        "rbd://" FSID "/7/img@18446744073709551616",
        "rbd://" FSID "/7/img@1x",
        "rbd://" FSID "/7/im/g@1",
        "rbd://" FSID "/7/@1",
        "rbd://" FSID "/7/img@1?namespace=",
        "rbd://" FSID "/7/img@1?ns=a",
        "rbd://" FSID "/7/img@1?namespace=a%2",
        "rbd://" FSID "/7/img@1?namespace=a%zz",
        "rbd://" FSID "/7/img@1?namespace=a%00b",
        "rbd://" FSID "/7/img@1?namespace=a b",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct rbdio_ident id;
        if (rbdio_ident_parse(bad[i], &id) != -EINVAL)
            fail_msg("accepted: %s", bad[i]);
    }
    struct rbdio_ident id;
    assert_int_equal(rbdio_ident_parse(NULL, &id), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_too_long),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
