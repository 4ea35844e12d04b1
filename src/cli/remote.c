/* What the commands that talk to vmexportd share; see remote.h. */
#include "cli/remote.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "client/client.h"
#include "core/cleanup.h"

int remote_print_json(const json_t *j)
{
    if (json_dumpf(j, stdout, JSON_COMPACT) < 0)
        return EXIT_FAIL;
    putchar('\n');
    return cli_finish_stdout();
}

bool remote_list_done(const char *cmd, json_t *list, const char *what, bool json, int *status)
{
    if (!json_is_array(list)) {
        fprintf(stderr, "vmexport %s: the server's answer is not a list of %s\n", cmd, what);
        *status = EXIT_FAIL;
    } else if (json) {
        *status = remote_print_json(list);
    } else {
        return false;
    }
    json_decref(list);
    return true;
}

int remote_fail(const char *cmd, struct client *c)
{
    fprintf(stderr, "vmexport %s: %s\n", cmd, client_error(c));
    client_free(c);
    return EXIT_FAIL;
}

static uint64_t json_u64(const json_t *obj, const char *key)
{
    json_int_t v = json_integer_value(json_object_get(obj, key));
    return v > 0 ? (uint64_t)v : 0;
}

uint64_t remote_json_sum(const json_t *array, const char *key)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < json_array_size(array); i++)
        sum += json_u64(json_array_get(array, i), key);
    return sum;
}

int table_add(struct table *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *cell = NULL;
    int n = vasprintf(&cell, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -ENOMEM;
    int r = str_vector_append(&t->cells, cell);
    if (r < 0)
        free(cell);
    return r;
}

void table_print(struct table *t)
{
    size_t width[t->ncols];
    for (size_t c = 0; c < t->ncols; c++)
        width[c] = strlen(t->headers[c]);
    for (size_t i = 0; i < t->cells.len; i++) {
        size_t len = strlen(t->cells.ptr[i]);
        if (len > width[i % t->ncols])
            width[i % t->ncols] = len;
    }
    for (size_t i = 0; i < t->ncols + t->cells.len; i++) {
        size_t c = i % t->ncols;
        const char *s = i < t->ncols ? t->headers[c] : t->cells.ptr[i - t->ncols];
        bool last = c + 1 == t->ncols;
        if (t->right[c])
            printf("%*s%s", (int)width[c], s, last ? "\n" : "  ");
        else if (last)
            printf("%s\n", s);
        else
            printf("%-*s  ", (int)width[c], s);
    }
}

void table_free(struct table *t)
{
    for (size_t i = 0; i < t->cells.len; i++)
        free(t->cells.ptr[i]);
    str_vector_reset(&t->cells);
}

int table_finish(const char *cmd, struct table *t, int r)
{
    if (r < 0) {
        table_free(t);
        fprintf(stderr, "vmexport %s: %s\n", cmd, strerror(-r));
        return EXIT_FAIL;
    }
    table_print(t);
    table_free(t);
    return cli_finish_stdout();
}
