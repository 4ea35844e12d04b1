/* Unit tests of src/core/argv.c: command lines split into words as sh would split them, with
 * nothing expanded, and the characters that only a shell understands refused. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/argv.h"

/* s splits into exactly the words given (NULL-terminated). */
static void expect_words(const char *s, ...)
{
    char **argv = NULL, err[160] = "";
    size_t argc = 0;
    int r = argv_split(s, &argv, &argc, err, sizeof(err));
    if (r != 0)
        print_message("# %s: %s\n", s, err);
    assert_int_equal(r, 0);
    va_list ap;
    va_start(ap, s);
    size_t i = 0;
    for (const char *w; (w = va_arg(ap, const char *)); i++) {
        assert_true(i < argc);
        assert_string_equal(argv[i], w);
    }
    va_end(ap);
    assert_int_equal(argc, i);
    assert_null(argv[argc]);
    argv_free(argv);
}

/* s is refused and the message contains what. */
static void expect_refused(const char *s, const char *what)
{
    char **argv = NULL, err[160] = "";
    size_t argc = 0;
    assert_int_equal(argv_split(s, &argv, &argc, err, sizeof(err)), -EINVAL);
    if (!strstr(err, what))
        print_message("# %s: %s\n", s, err);
    assert_non_null(strstr(err, what));
}

static void test_plain(void **state)
{
    (void)state;
    expect_words("/usr/bin/fsfreeze", "/usr/bin/fsfreeze", NULL);
    expect_words("  /bin/hook   -f\t--vm  x \n", "/bin/hook", "-f", "--vm", "x", NULL);
    /* globs, ~ and = are plain characters */
    expect_words("/bin/hook * ~ a=b ?[x]", "/bin/hook", "*", "~", "a=b", "?[x]", NULL);
}

static void test_quotes(void **state)
{
    (void)state;
    expect_words("/bin/hook 'a b' \"c d\"", "/bin/hook", "a b", "c d", NULL);
    expect_words("/bin/hook 'it''s' \"x\"y'z'", "/bin/hook", "its", "xyz", NULL);
    expect_words("/bin/hook '$1 `x` \\ \"' ", "/bin/hook", "$1 `x` \\ \"", NULL);
    expect_words("/bin/hook \"a \\\" \\\\ \\$ \\` \\n\"", "/bin/hook", "a \" \\ $ ` \\n", NULL);
    expect_words("/bin/hook '' \"\"", "/bin/hook", "", "", NULL);
    expect_words("/bin/hook a\\ b \\$1 \\'", "/bin/hook", "a b", "$1", "'", NULL);
    expect_words("/bin/hook a\\\nb", "/bin/hook", "ab", NULL);
    expect_words("/bin/hook a#b '#c'", "/bin/hook", "a#b", "#c", NULL);
}

static void test_refused(void **state)
{
    (void)state;
    expect_refused("", "no command");
    expect_refused("   \t ", "no command");
    expect_refused("/bin/hook 'a", "unterminated single quote");
    expect_refused("/bin/hook \"a", "unterminated double quote");
    expect_refused("/bin/hook a\\", "backslash at the end");
    expect_refused("/bin/hook $1", "'$' needs a shell");
    expect_refused("/bin/hook \"$VMEXPORT_VM_ID\"", "'$' in double quotes");
    expect_refused("/bin/hook \"`id`\"", "'`' in double quotes");
    expect_refused("/bin/hook `id`", "'`' needs a shell");
    expect_refused("/bin/a | /bin/b", "'|' needs a shell");
    expect_refused("/bin/a; /bin/b", "';' needs a shell");
    expect_refused("/bin/a && /bin/b", "'&' needs a shell");
    expect_refused("/bin/a >/tmp/x", "'>' needs a shell");
    expect_refused("/bin/a </tmp/x", "'<' needs a shell");
    expect_refused("/bin/a $(id)", "'$' needs a shell");
    expect_refused("/bin/a (x)", "'(' needs a shell");
    expect_refused("/bin/a # comment", "'#' starts a shell comment");

    char many[4 * (ARGV_MAX_WORDS + 2)] = "/bin/a";
    for (int i = 0; i < ARGV_MAX_WORDS; i++)
        strcat(many, " x");
    expect_refused(many, "more than");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_quotes),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
