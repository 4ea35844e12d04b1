/* Names of enum values: one table per enum, for parsing options and printing results. */
#ifndef VMEXPORT_CORE_NAMES_H
#define VMEXPORT_CORE_NAMES_H

#include <errno.h>
#include <stddef.h>
#include <string.h>

struct enum_name {
    int value;
    const char *name;
};

/* The name of value in the n entries of t, or "?". */
static inline const char *enum_name(const struct enum_name *t, size_t n, int value)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].value == value)
            return t[i].name;
    return "?";
}

/* The value named s (exactly): 0 with *value set, or -EINVAL with *value untouched. */
static inline int enum_parse(const struct enum_name *t, size_t n, const char *s, int *value)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(s, t[i].name) == 0) {
            *value = t[i].value;
            return 0;
        }
    }
    return -EINVAL;
}

#endif
