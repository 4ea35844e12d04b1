/* Streaming JSON writer; see jsonw.h. */
#include "jsonw.h"

#include <inttypes.h>

void jw_string(FILE *f, const char *s)
{
    if (!s) {
        fputs("null", f);
        return;
    }
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
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
