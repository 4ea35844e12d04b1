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

/* prefix_name() and prefix_parse() for the enum type, over the table t (an array of struct
 * enum_name): enum_name() and enum_parse() with the enum's own type.  Declare them in the
 * enum's header; this defines them in its source file. */
#define DEFINE_ENUM_NAMES(prefix, type, t)                                                         \
    const char *prefix##_name(type v)                                                              \
    {                                                                                              \
        return enum_name(t, sizeof(t) / sizeof((t)[0]), (int)v);                                   \
    }                                                                                              \
                                                                                                   \
    int prefix##_parse(const char *s, type *out)                                                   \
    {                                                                                              \
        int v = 0;                                                                                 \
        int r = enum_parse(t, sizeof(t) / sizeof((t)[0]), s, &v);                                  \
        if (r == 0)                                                                                \
            *out = (type)v;                                                                        \
        return r;                                                                                  \
    }

#endif
