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

/* The answer list of a listing command cmd, a JSON array of what ("VMs"): when it is not an
 * array (an error naming what) or json is set (it is printed), frees it, sets *status to the
 * exit status and returns true; else returns false and the caller prints its table. */
bool remote_list_done(const char *cmd, json_t *list, const char *what, bool json, int *status);

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
/* End a table filled until r (0 or the first negative errno of table_add): print it, or report
 * r as command cmd's error; frees it.  An exit status. */
int table_finish(const char *cmd, struct table *t, int r);

#endif
