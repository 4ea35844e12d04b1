/* Generic growable arrays, defined once per element type.
 *
 *   DEFINE_VECTOR_TYPE(u64_vector, uint64_t);
 *   u64_vector v = VECTOR_INIT;
 *   if (u64_vector_append(&v, 42) < 0) ...
 *   u64_vector_reset(&v);
 *
 * Growth is geometric; every function returns 0 or a negative errno.  A vector may be given a
 * capacity limit (max_len) so that a list of unknown size cannot grow without bound: appending
 * past it fails with -E2BIG.
 */
#ifndef VMEXPORT_CORE_VECTOR_H
#define VMEXPORT_CORE_VECTOR_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define VECTOR_INIT {.ptr = NULL, .len = 0, .cap = 0, .max_len = 0}

/* First allocation of a vector, in elements; growth doubles from there. */
#define VECTOR_MIN_CAP 16

#define DEFINE_VECTOR_TYPE(name, type)                                                             \
    typedef struct {                                                                               \
        type *ptr;                                                                                 \
        size_t len;                                                                                \
        size_t cap;                                                                                \
        size_t max_len; /* 0: no limit beyond memory */                                            \
    } name;                                                                                        \
                                                                                                   \
    static inline __attribute__((unused)) int name##_reserve(name *v, size_t extra)                \
    {                                                                                              \
        if (extra > SIZE_MAX / sizeof(type) - v->len)                                              \
            return -ENOMEM;                                                                        \
        size_t want = v->len + extra;                                                              \
        if (v->max_len && want > v->max_len)                                                       \
            return -E2BIG;                                                                         \
        if (want <= v->cap)                                                                        \
            return 0;                                                                              \
        size_t cap = v->cap ? v->cap : VECTOR_MIN_CAP;                                             \
        while (cap < want)                                                                         \
            cap = cap > SIZE_MAX / 2 / sizeof(type) ? want : cap * 2;                              \
        type *p = realloc(v->ptr, cap * sizeof(type));                                             \
        if (!p)                                                                                    \
            return -ENOMEM;                                                                        \
        v->ptr = p;                                                                                \
        v->cap = cap;                                                                              \
        return 0;                                                                                  \
    }                                                                                              \
                                                                                                   \
    static inline __attribute__((unused)) int name##_append(name *v, type elem)                    \
    {                                                                                              \
        int r = name##_reserve(v, 1);                                                              \
        if (r < 0)                                                                                 \
            return r;                                                                              \
        v->ptr[v->len++] = elem;                                                                   \
        return 0;                                                                                  \
    }                                                                                              \
                                                                                                   \
    static inline __attribute__((unused)) void name##_reset(name *v)                               \
    {                                                                                              \
        free(v->ptr);                                                                              \
        v->ptr = NULL;                                                                             \
        v->len = v->cap = 0;                                                                       \
    }                                                                                              \
                                                                                                   \
    static inline __attribute__((unused)) void name##_clear(name *v)                               \
    {                                                                                              \
        v->len = 0;                                                                                \
    }                                                                                              \
                                                                                                   \
    static inline __attribute__((unused)) void name##_sort(name *v,                                \
                                                           int (*cmp)(const type *, const type *)) \
    {                                                                                              \
        if (v->len > 1)                                                                            \
            qsort(v->ptr, v->len, sizeof(type), (int (*)(const void *, const void *))cmp);         \
    }

#endif
