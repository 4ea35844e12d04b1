/* The one option table of the command line.  A command declares, in its struct cli_command,
 * which groups of common options it takes (--repo, --passphrase-file, the connection options,
 * --json, --jobs) and a table of its own options; cli_next() runs getopt_long over the two
 * merged, fills struct cli_args with the common ones and hands the command its own one at a
 * time; cli_help() prints the command's help with one line per option from the same tables.
 *
 *     struct cli_args a = {0};
 *     int c;
 *     while ((c = cli_next(&a, &cmd_download, argc, argv)) > 0) {
 *         switch (c) {
 *         case 'o': out_dir = a.arg; break;
 *         ...
 *         }
 *     }
 *     if (c == CLI_EXIT)
 *         return a.status;           (after --help, or a usage error already printed)
 *     ... operands are argv[a.first] .. argv[argc - 1]
 */
#ifndef VMEXPORT_CLI_OPTIONS_H
#define VMEXPORT_CLI_OPTIONS_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "repo/store.h"

struct cli_command;

/* Groups of common options (struct cli_command.common). */
enum cli_common {
    CLI_REPO = 1u << 0,       /* --repo PATH, short -r (env VMEXPORT_REPO at open time) */
    CLI_PASSPHRASE = 1u << 1, /* --passphrase-file FILE, short -P (env VMEXPORT_PASSPHRASE) */
    /* --server --user --password-file --cacert --cert --key --insecure -v: main.c takes them
     * out of argv wherever they are (cli_globals_extract), so this group adds only their help. */
    CLI_CONNECTION = 1u << 2,
    CLI_JSON = 1u << 3, /* --json; short form: struct cli_command.json_short */
    CLI_JOBS = 1u << 4, /* --jobs N, 1 to jobs_max; short form: jobs_short */
    /* --ceph-conf --ceph-id --s3-endpoint --s3-ca: how to reach a repository given by URL
     * (rados://, s3://); implied by CLI_REPO. */
    CLI_STORE = 1u << 5,
};

/* Largest --jobs of any command, and the default bound. */
#define CLI_JOBS_MAX 64

/* Keys of options without a short form start here (getopt returns them like letters). */
#define CLI_LONG_ONLY 256

/* One option of a command.  A key below CLI_LONG_ONLY is also its short form (-k). */
struct cli_option {
    const char *name; /* long name, without "--"; NULL ends a table */
    int key;          /* what cli_next() returns for it */
    const char *arg;  /* name of its value in the help ("FILE"), NULL: it takes none */
    const char *help; /* its help; '\n' starts a continuation line */
};

/* Most options one command takes, common ones included. */
#define CLI_OPTIONS_MAX 40

/* What cli_next() returns besides an option's key. */
#define CLI_DONE 0  /* every option is read: the operands start at argv[a.first] */
#define CLI_EXIT -1 /* the command is to return a.status (help printed, or a usage error) */

/* The parsed command line.  Zero it before the first cli_next(). */
struct cli_args {
    const char *repo;            /* --repo, NULL when not given */
    const char *passphrase_file; /* --passphrase-file, NULL when not given */
    struct store_options store;  /* --ceph-conf...: NULL members when not given */
    bool json;                   /* --json */
    unsigned jobs;               /* --jobs, 0 when not given (the command picks its default) */
    int first;                   /* argv index of the first operand, after CLI_DONE */
    const char *arg;             /* the value of the option whose key cli_next() returned */
    int status;                  /* the exit status, after CLI_EXIT */
    /* private: the merged getopt_long table */
    bool started;
    struct option table[CLI_OPTIONS_MAX + 1];
    char shortopts[3 * CLI_OPTIONS_MAX + 2]; /* ":", then "k:" or "k" per option */
};

/* The next option of argv (argv[0] is the command name) for cmd: its key when it is one of
 * the command's own, else CLI_DONE or CLI_EXIT.  Common options are stored in *a; bad values of
 * them, unknown options and --help end with CLI_EXIT (the message already printed). */
int cli_next(struct cli_args *a, const struct cli_command *cmd, int argc, char **argv);

/* cli_next() for a command that has no options of its own: CLI_DONE or CLI_EXIT. */
int cli_parse(struct cli_args *a, const struct cli_command *cmd, int argc, char **argv);

/* Parse a size: digits with an optional K, M or G (powers of 1024), then an optional "i" and
 * "B" ("256K", "4MiB", "1G").  -EINVAL for anything else. */
int cli_parse_size(const char *s, uint64_t *out);

/* Parse a job count from 1 to max.  -EINVAL for anything else. */
int cli_parse_jobs(const char *s, unsigned max, unsigned *out);

/* The "Connection options" paragraph (main.c's help, and commands with CLI_CONNECTION). */
void cli_print_connection_help(FILE *f);

#endif
