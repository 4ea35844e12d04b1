/* Strict base64 (RFC 4648, padded): what the repository's JSON files and the archives' vm.json
 * store binary values and VM IDs that are not UTF-8 in.  Decoding accepts only the canonical
 * spelling, so that one value has one text. */
#ifndef VMEXPORT_CORE_BASE64_H
#define VMEXPORT_CORE_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* The base64 text of len bytes, malloc'd; NULL when out of memory or too long. */
char *base64_encode(const void *data, size_t len);

/* The bytes of s into *out (malloc'd, one spare byte) and *len: 0, -ENOMEM, or -EBADMSG when
 * s is not canonical base64 (wrong length, other characters, non-zero padding bits). */
int base64_decode(const char *s, uint8_t **out, size_t *len);

#endif
