/* Unit tests of core/nbdio.c's NBD URIs (the reads and block status walks are tested against a
 * real qemu-nbd in tests/integration/test-nbdio.sh). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/nbdio.h"

static void roundtrip(const char *sock, const char *exp, const char *want)
{
    char *uri = nbdio_uri(sock, exp);
    assert_non_null(uri);
    if (want)
        assert_string_equal(uri, want);
    char *s = NULL, *e = NULL;
    assert_int_equal(nbdio_uri_parse(uri, &s, &e), 0);
    assert_string_equal(s, sock);
    assert_string_equal(e, exp);
    free(s);
    free(e);
    free(uri);
}

static void test_uri_roundtrip(void **state)
{
    (void)state;
    roundtrip("/run/vmexport/nbd/vm1.sock", "vm1-disk0",
              "nbd+unix:///vm1-disk0?socket=/run/vmexport/nbd/vm1.sock");
    roundtrip("/tmp/a b&c=d?e#f+g%h", "ex port/with?odd&chars%", NULL);
    roundtrip("/s", "", "nbd+unix:///?socket=/s");
    roundtrip("/tmp/ü", "ü", "nbd+unix:///%C3%BC?socket=/tmp/%C3%BC");
}

static void test_uri_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "nbd://host/export",
        "nbd+unix:///export",                  /* no socket */
        "nbd+unix:///export?socket=",          /* empty socket */
        "nbd+unix:///export?socket=relative",  /* not absolute */
        "nbd+unix:///export?tls=on&socket=/s", /* other parameters */
        "nbd+unix:///export?socket=/s&tls=on",
        "nbd+unix:///e%0?socket=/s",  /* short escape */
        "nbd+unix:///e%zz?socket=/s", /* not hex */
        "nbd+unix:///e%00?socket=/s", /* NUL */
        "nbd+unix:///e?socket=/s%",
        "nbd+unix:///e#frag?socket=/s",
        "/var/lib/images/disk.img",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *s = NULL, *e = NULL;
        assert_int_equal(nbdio_uri_parse(bad[i], &s, &e), -EINVAL);
        assert_null(s);
        assert_null(e);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uri_roundtrip),
        cmocka_unit_test(test_uri_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
