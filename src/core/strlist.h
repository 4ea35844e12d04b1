/* A list of owned strings. */
#ifndef VMEXPORT_CORE_STRLIST_H
#define VMEXPORT_CORE_STRLIST_H

#include <stdlib.h>

#include "core/vector.h"

DEFINE_VECTOR_TYPE(string_list, char *);

static inline __attribute__((unused)) void string_list_free(string_list *l)
{
    for (size_t i = 0; i < l->len; i++)
        free(l->ptr[i]);
    string_list_reset(l);
}

#endif
