/* Shared pieces of the vmexport command line: command table entries, exit codes, helpers. */
#ifndef VMEXPORT_CLI_CLI_H
#define VMEXPORT_CLI_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "cli/options.h"

/* Exit codes of every command. */
#define EXIT_OK    0
#define EXIT_FAIL  1 /* the operation failed */
#define EXIT_USAGE 2 /* bad command line */

struct cli_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
    /* Synopsis and description; with neither `common` nor `options`, the whole help. */
    const char *usage;
    /* The options it takes (cli/options.h), from which cli_next() parses and cli_help()
     * prints them: */
    unsigned common;                   /* CLI_* groups of common options */
    const struct cli_option *options;  /* its own, ending with {NULL}; NULL: none */
    char json_short, jobs_short;       /* short forms of --json and --jobs here, or 0 */
    unsigned jobs_max;                 /* --jobs takes 1 to this; 0: CLI_JOBS_MAX */
    const char *json_help, *jobs_help; /* what --json prints, what --jobs N means here */
    const char *epilog;                /* after the options: notes, "Exit status: ..." */
};

/* Commands implemented in cmd_*.c. */
extern const struct cli_command cmd_map, cmd_clone, cmd_diff;
/* Remote commands (cmd_vms.c, cmd_snapshots.c: snapshots and snapshot, cmd_download.c). */
extern const struct cli_command cmd_vms, cmd_snapshots, cmd_snapshot, cmd_download;
/* Repository commands (one cmd_<name>.c each). */
extern const struct cli_command cmd_repo, cmd_backup, cmd_backups, cmd_restore, cmd_verify,
    cmd_prune, cmd_gc;
/* qcow2 chains (cmd_chain.c) and portable archives (cmd_export.c, cmd_import.c). */
extern const struct cli_command cmd_chain, cmd_export, cmd_import;

/* Options accepted anywhere on the command line (before or after the command name); main.c
 * takes them out of argv before the command parses the rest.  Environment variables fill what
 * the command line leaves unset. */
struct cli_globals {
    const char *server;        /* --server URL          (VMEXPORT_SERVER) */
    const char *user;          /* --user NAME           (VMEXPORT_USER) */
    const char *password_file; /* --password-file FILE  (VMEXPORT_PASSWORD holds the password) */
    const char *cacert;        /* --cacert FILE         (VMEXPORT_CACERT) */
    const char *cert, *key;    /* --cert FILE --key FILE (mutual TLS) */
    bool insecure;             /* --insecure */
    bool verbose;              /* -v, --verbose */
};
extern struct cli_globals cli_globals;

/* Remove the global options (connection, -v) from argv (in place, keeping order; stops at
 * "--"), storing them in cli_globals.  Returns the new argc, or -1 after printing a usage
 * error.  The table of these options is in options.c. */
int cli_globals_extract(int argc, char **argv);

struct client;
/* A client from cli_globals and the environment, logged in.  On failure prints a message
 * ("vmexport CMD: ...") and returns NULL. */
struct client *cli_client_connect(const char *cmd);

/* Print a usage error and the command's synopsis; returns EXIT_USAGE. */
int cli_usage_error(const struct cli_command *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Print the help of cmd to stdout: its usage, then "Options:" with a line per option (its
 * own, then the common ones it takes), the connection options when it takes them, and its
 * epilog.  Returns EXIT_OK. */
int cli_help(const struct cli_command *cmd);

/* A large buffer for stdout (long listings). */
void cli_buffer_stdout(void);
/* Flush stdout: EXIT_OK, or EXIT_FAIL after saying that writing the output failed. */
int cli_finish_stdout(void);

/* Human-readable byte count ("1.5 GiB") into buf. */
const char *cli_bytes(uint64_t n, char *buf, size_t len);

/* Streaming JSON: "[...]" arrays of {"start":N,"length":N} written as ranges come in. */
struct json_ranges {
    FILE *f;
    bool first;
};
void json_ranges_begin(struct json_ranges *j, FILE *f, const char *key);
int json_ranges_add(struct json_ranges *j, uint64_t start, uint64_t length);
void json_ranges_end(struct json_ranges *j);

#endif
