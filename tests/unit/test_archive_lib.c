/* Unit tests of the on-demand libarchive loader (src/backup/archive_lib.c).  The order matters:
 * failed loads first, then the real one, which stays loaded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "backup/archive_lib.h"

static void assert_no_symbols(void)
{
#define CHECK_NULL(name) assert_null(sym_##name);
    ARCHIVE_LIB_SYMBOLS(CHECK_NULL)
#undef CHECK_NULL
}

/* A library that is not there: an error naming it and the package, no pointer set. */
static void test_missing_library(void **state)
{
    (void)state;
    char err[512] = "";
    assert_int_equal(archive_lib_load_from("libvmexport-no-such-library.so.0", err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "libvmexport-no-such-library.so.0"));
    assert_non_null(strstr(err, "libarchive13"));
    assert_no_symbols();
}

/* A library that loads but is not libarchive: the first missing function is named and no
 * pointer stays set. */
static void test_wrong_library(void **state)
{
    (void)state;
    char err[512] = "";
    assert_int_equal(archive_lib_load_from("libz.so.1", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "libz.so.1 has no function archive_error_string"));
    assert_no_symbols();
}

/* The real library: every pointer set and working; loading again is a no-op. */
static void test_load(void **state)
{
    (void)state;
    char err[512] = "";
    assert_int_equal(archive_lib_load(err, sizeof(err)), 0);
#define CHECK_SET(name) assert_non_null(sym_##name);
    ARCHIVE_LIB_SYMBOLS(CHECK_SET)
#undef CHECK_SET
    struct archive_entry *e = sym_archive_entry_new();
    assert_non_null(e);
    sym_archive_entry_set_pathname(e, "disk-0.raw");
    sym_archive_entry_set_size(e, 12345);
    assert_string_equal(sym_archive_entry_pathname(e), "disk-0.raw");
    assert_int_equal(sym_archive_entry_size(e), 12345);
    sym_archive_entry_free(e);
    void *first = (void *)sym_archive_write_new;
    assert_int_equal(archive_lib_load(err, sizeof(err)), 0);
    assert_ptr_equal((void *)sym_archive_write_new, first);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_missing_library),
        cmocka_unit_test(test_wrong_library),
        cmocka_unit_test(test_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
