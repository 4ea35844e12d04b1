/* Checks on text from outside: UTF-8 validity (every string in a JSON answer must be UTF-8, and
 * directory and file names need not be) and booleans as the 004 exporter's Go code parsed them. */
#ifndef VMEXPORT_CORE_TEXT_H
#define VMEXPORT_CORE_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* The UTF-8 replacement character U+FFFD, written in place of bytes that are not UTF-8. */
#define UTF8_REPLACEMENT "\xef\xbf\xbd"

/* Length (1 to 4) of the well-formed UTF-8 sequence at s, or 0 when s starts with a byte that
 * begins none (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF) or with NUL. */
size_t utf8_char_len(const char *s);

/* Whether all of s is well-formed UTF-8. */
bool utf8_valid(const char *s);

/* A copy of s with every byte that is not part of a well-formed sequence replaced by U+FFFD;
 * NULL when out of memory. */
char *utf8_scrub(const char *s);

/* A boolean as Go's strconv.ParseBool reads it ("1 t T TRUE true True" and
 * "0 f F FALSE false False"); NULL or "" give dflt.  0 with *out set, or -EINVAL. */
int bool_parse(const char *s, bool dflt, bool *out);

#endif
