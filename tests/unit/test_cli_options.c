/* Unit tests for src/cli/options.c: a command's own options merged with the common ones it
 * declares, their historical short forms, --jobs bounds, options a command does not take,
 * sizes, and the connection options taken out of argv wherever they are. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"

static const struct cli_option dl_options[] = {
    {"out-dir", 'o', "DIR", "where the files go"},
    {"hash", CLI_LONG_ONLY, "ALGO", "a long-only option"},
    {NULL, 0, NULL, NULL},
};

/* Like download: --json is -j, --jobs is -J. */
static const struct cli_command cmd_dl = {
    .name = "dl",
    .usage = "Usage: vmexport dl VM\n",
    .common = CLI_JSON | CLI_JOBS | CLI_CONNECTION,
    .options = dl_options,
    .json_short = 'j',
    .jobs_short = 'J',
    .jobs_max = 8,
};

/* Like backup: -r, -P, and --jobs is -j, --json is -J. */
static const struct cli_command cmd_bk = {
    .name = "bk",
    .usage = "Usage: vmexport bk VM\n",
    .common = CLI_REPO | CLI_PASSPHRASE | CLI_JSON | CLI_JOBS,
    .json_short = 'J',
    .jobs_short = 'j',
};

/* Parse a NULL-terminated list of words; returns the last cli_next() answer, with the own
 * options seen written to own[] as "key=value". */
static int parse(const struct cli_command *cmd, struct cli_args *a, char own[][64], char **argv)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    int c, n = 0;
    while ((c = cli_next(a, cmd, argc, argv)) > 0)
        snprintf(own[n++], 64, "%d=%s", c, a->arg ? a->arg : "");
    return c;
}

static void test_merged_short_forms(void **state)
{
    (void)state;
    char own[8][64];
    struct cli_args a = {0};
    char *argv[] = {"dl", "-J", "3", "-j", "-o", "out", "--hash=sha", "vm", "snap", NULL};
    assert_int_equal(parse(&cmd_dl, &a, own, argv), CLI_DONE);
    assert_int_equal(a.jobs, 3);
    assert_true(a.json);
    assert_string_equal(own[0], "111=out"); /* 'o' */
    assert_string_equal(own[1], "256=sha"); /* CLI_LONG_ONLY */
    assert_int_equal(a.first, 7);
    assert_string_equal(argv[a.first], "vm");

    /* The same letters mean the other option in a command that declares them so. */
    struct cli_args b = {0};
    char *argv2[] = {"bk", "-j", "5", "-J", "-r", "/repo", "-P", "/pf", "vm", NULL};
    assert_int_equal(parse(&cmd_bk, &b, own, argv2), CLI_DONE);
    assert_int_equal(b.jobs, 5);
    assert_true(b.json);
    assert_string_equal(b.repo, "/repo");
    assert_string_equal(b.passphrase_file, "/pf");
    assert_int_equal(b.first, 8);
}

static void test_long_forms_and_permutation(void **state)
{
    (void)state;
    char own[8][64];
    struct cli_args a = {0};
    char *argv[] = {"bk", "vm", "--repo", "/r", "--jobs=2", "--json", NULL};
    assert_int_equal(parse(&cmd_bk, &a, own, argv), CLI_DONE);
    assert_string_equal(a.repo, "/r");
    assert_int_equal(a.jobs, 2);
    assert_true(a.json);
    assert_null(a.passphrase_file);
    assert_string_equal(argv[a.first], "vm"); /* operands are moved after the options */
}

static void test_jobs_bounds(void **state)
{
    (void)state;
    char own[8][64];
    const char *bad[] = {"0", "9", "-1", "abc", "3x", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct cli_args a = {0};
        char *argv[] = {"dl", "--jobs", (char *)bad[i], "vm", NULL};
        assert_int_equal(parse(&cmd_dl, &a, own, argv), CLI_EXIT);
        assert_int_equal(a.status, EXIT_USAGE);
    }
    struct cli_args a = {0};
    char *argv[] = {"dl", "--jobs", "8", NULL}; /* the command's bound */
    assert_int_equal(parse(&cmd_dl, &a, own, argv), CLI_DONE);
    assert_int_equal(a.jobs, 8);
    struct cli_args b = {0};
    char *argv2[] = {"bk", "--jobs", "64", NULL}; /* the default bound */
    assert_int_equal(parse(&cmd_bk, &b, own, argv2), CLI_DONE);
    assert_int_equal(b.jobs, CLI_JOBS_MAX);
}

static void test_not_taken(void **state)
{
    (void)state;
    char own[8][64];
    /* dl takes no --repo, bk no own options: usage errors, not silently ignored. */
    struct cli_args a = {0};
    char *argv[] = {"dl", "--repo", "/r", "vm", NULL};
    assert_int_equal(parse(&cmd_dl, &a, own, argv), CLI_EXIT);
    assert_int_equal(a.status, EXIT_USAGE);
    struct cli_args b = {0};
    char *argv2[] = {"bk", "-o", "x", NULL};
    assert_int_equal(parse(&cmd_bk, &b, own, argv2), CLI_EXIT);
    assert_int_equal(b.status, EXIT_USAGE);
    struct cli_args c = {0};
    char *argv3[] = {"bk", "--repo", NULL}; /* value missing */
    assert_int_equal(parse(&cmd_bk, &c, own, argv3), CLI_EXIT);
    assert_int_equal(c.status, EXIT_USAGE);
}

static void test_help(void **state)
{
    (void)state;
    char own[8][64];
    struct cli_args a = {0};
    char *argv[] = {"dl", "--help", NULL};
    /* The help goes to stdout, which speaks TAP here: catch it in a file and check it. */
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    FILE *f = tmpfile();
    assert_non_null(f);
    dup2(fileno(f), STDOUT_FILENO);
    int c = parse(&cmd_dl, &a, own, argv);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    assert_int_equal(c, CLI_EXIT);
    assert_int_equal(a.status, EXIT_OK);
    char help[8192];
    rewind(f);
    size_t n = fread(help, 1, sizeof(help) - 1, f);
    fclose(f);
    help[n] = '\0';
    /* Own options, then the common ones with this command's short forms, then connection. */
    assert_non_null(strstr(help, "Usage: vmexport dl VM\n\nOptions:\n"));
    assert_non_null(strstr(help, "  -o, --out-dir DIR       where the files go\n"));
    assert_non_null(strstr(help, "  --hash ALGO             a long-only option\n"));
    assert_non_null(strstr(help, "  -j, --json "));
    assert_non_null(strstr(help, "  -J, --jobs N "));
    assert_non_null(strstr(help, "  -h, --help              this help\n"));
    assert_non_null(strstr(help, "Connection options"));
    assert_non_null(strstr(help, "  --password-file FILE "));
    assert_null(strstr(help, "--repo"));
}

static void test_size(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(cli_parse_size("256K", &v), 0);
    assert_int_equal(v, 256 << 10);
    assert_int_equal(cli_parse_size("4MiB", &v), 0);
    assert_int_equal(v, 4 << 20);
    assert_int_equal(cli_parse_size("1g", &v), 0);
    assert_int_equal(v, 1ull << 30);
    assert_int_equal(cli_parse_size("512", &v), 0);
    assert_int_equal(v, 512);
    assert_int_equal(cli_parse_size("1x", &v), -EINVAL);
    assert_int_equal(cli_parse_size("-1", &v), -EINVAL);
    assert_int_equal(cli_parse_size("", &v), -EINVAL);
    assert_int_equal(cli_parse_size("M", &v), -EINVAL);
    assert_int_equal(cli_parse_size("99999999999999G", &v), -EINVAL); /* overflows */
}

static void test_globals_extract(void **state)
{
    (void)state;
    memset(&cli_globals, 0, sizeof(cli_globals));
    char *argv[] = {"vmexport", "--server=https://h:1",
                    "vms",      "--insecure",
                    "--user",   "u",
                    "-v",       "--",
                    "--key",    "k",
                    NULL};
    int argc = cli_globals_extract(10, argv);
    assert_int_equal(argc, 5);
    assert_string_equal(argv[1], "vms");
    assert_string_equal(argv[2], "--"); /* after "--" nothing is taken */
    assert_string_equal(argv[3], "--key");
    assert_null(argv[5]);
    assert_string_equal(cli_globals.server, "https://h:1");
    assert_string_equal(cli_globals.user, "u");
    assert_true(cli_globals.insecure);
    assert_true(cli_globals.verbose);
    assert_null(cli_globals.key);

    char *bad[] = {"vmexport", "vms", "--cacert", NULL};
    assert_int_equal(cli_globals_extract(3, bad), -1);
    char *empty[] = {"vmexport", "--user=", "vms", NULL};
    assert_int_equal(cli_globals_extract(3, empty), -1);
    /* A longer option that starts like one of them is the command's. */
    char *longer[] = {"vmexport", "x", "--serverish", NULL};
    assert_int_equal(cli_globals_extract(3, longer), 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merged_short_forms),
        cmocka_unit_test(test_long_forms_and_permutation),
        cmocka_unit_test(test_jobs_bounds),
        cmocka_unit_test(test_not_taken),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_size),
        cmocka_unit_test(test_globals_extract),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
