/* Hexadecimal text: encoding bytes and decoding them back, strictly.
 *
 * Every place that prints a digest, an ID or a percent-escape, or reads one back, uses these
 * two functions, so that case rules and length checks are the same everywhere.
 */
#ifndef VMEXPORT_CORE_HEX_H
#define VMEXPORT_CORE_HEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Lower-case hex of n bytes into out, which holds 2 * n + 1 bytes (NUL-terminated). */
void hex_encode(const void *in, size_t n, char *out);

/* Upper-case variant (percent-escapes in URLs). */
void hex_encode_upper(const void *in, size_t n, char *out);

/* The value of one hex digit (either case), or -1. */
int hex_digit(char c);

/* Decodes exactly 2 * n hex digits (either case) of text into n bytes of out.  text must be
 * exactly 2 * n characters long (it is read up to its NUL, at most 2 * n + 1 bytes).  0, or
 * -EINVAL for another length or a character that is not a hex digit (out is then undefined). */
int hex_decode(const char *text, void *out, size_t n);

#endif
