/* Shared pieces of the vmexport command line: command table entries, exit codes, helpers. */
#ifndef VMEXPORT_CLI_CLI_H
#define VMEXPORT_CLI_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* Exit codes of every command. */
#define EXIT_OK    0
#define EXIT_FAIL  1 /* the operation failed */
#define EXIT_USAGE 2 /* bad command line */

struct cli_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
    const char *usage; /* full man-page style help */
};

/* Commands implemented in cmd_*.c. */
extern const struct cli_command cmd_map, cmd_clone, cmd_diff;

/* Print a usage error and the command's synopsis; returns EXIT_USAGE. */
int cli_usage_error(const struct cli_command *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Print help of cmd to stdout; returns EXIT_OK. */
int cli_help(const struct cli_command *cmd);

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
