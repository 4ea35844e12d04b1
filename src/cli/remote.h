/* What the commands that talk to vmexportd share: printing the server's JSON, a failed
 * request's message, text tables.  The requests themselves are client/rest.h's. */
#ifndef VMEXPORT_CLI_REMOTE_H
#define VMEXPORT_CLI_REMOTE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/vector.h"

struct client;

/* The server's JSON on one line of stdout (jansson escapes every string).  An exit status. */
int remote_print_json(const json_t *j);

/* Report a failed request of command cmd ("vmexport CMD: ...") and free the client; returns
 * EXIT_FAIL. */
int remote_fail(const char *cmd, struct client *c);

/* Sum of the integer member key of the objects in array (negative values count 0). */
uint64_t remote_json_sum(const json_t *array, const char *key);

DEFINE_VECTOR_TYPE(str_vector, char *);

/* A text table: cells row by row, columns padded to their widest cell. */
struct table {
    const char *const *headers;
    const bool *right; /* right-aligned columns (numbers) */
    size_t ncols;
    str_vector cells;
};

int table_add(struct table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void table_print(struct table *t);
void table_free(struct table *t);

#endif
