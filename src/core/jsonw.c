/* Streaming JSON writer (escaping, U+FFFD for bytes that are not UTF-8); see jsonw.h. */
#include "core/jsonw.h"

#include <inttypes.h>

#include "core/text.h"

void jw_string(FILE *f, const char *s)
{
    if (!s) {
        fputs("null", f);
        return;
    }
    fputc('"', f);
    while (*s) {
        unsigned char c = (unsigned char)*s;
        size_t n = utf8_char_len(s);
        if (n == 0) {
            /* Names on disk need not be UTF-8; JSON must be. */
            fputs(UTF8_REPLACEMENT, f);
            n = 1;
        } else if (c == '"' || c == '\\') {
            fprintf(f, "\\%c", c);
        } else if (c < 0x20) {
            fprintf(f, "\\u%04x", c);
        } else {
            fwrite(s, 1, n, f);
        }
        s += n;
    }
    fputc('"', f);
}

void jw_key(FILE *f, bool *first, const char *key)
{
    if (!*first)
        fputc(',', f);
    *first = false;
    jw_string(f, key);
    fputc(':', f);
}

void jw_kv_str(FILE *f, bool *first, const char *key, const char *value)
{
    jw_key(f, first, key);
    jw_string(f, value);
}

void jw_kv_u64(FILE *f, bool *first, const char *key, uint64_t value)
{
    jw_key(f, first, key);
    fprintf(f, "%" PRIu64, value);
}

void jw_kv_bool(FILE *f, bool *first, const char *key, bool value)
{
    jw_key(f, first, key);
    fputs(value ? "true" : "false", f);
}
