/* Streaming JSON writing to a FILE: the server's responses too large to build in memory
 * (extent lists of any length), and the --json output of the command line's commands, so that
 * no ID or name can break it.  Keys and strings are escaped, bytes that are not UTF-8 written as
 * U+FFFD; numbers are written as integers. */
#ifndef VMEXPORT_CORE_JSONW_H
#define VMEXPORT_CORE_JSONW_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

void jw_string(FILE *f, const char *s); /* "..." escaped, or null for NULL */
/* ,"key":value pieces; *first tracks whether a comma is needed. */
void jw_key(FILE *f, bool *first, const char *key);
void jw_kv_str(FILE *f, bool *first, const char *key, const char *value);
void jw_kv_u64(FILE *f, bool *first, const char *key, uint64_t value);
void jw_kv_bool(FILE *f, bool *first, const char *key, bool value);

#endif
