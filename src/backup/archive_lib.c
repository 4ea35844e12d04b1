/* libarchive loaded with dlopen on first use: see archive_lib.h for why. */
#include "backup/archive_lib.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#define ARCHIVE_LIB_DEFINE(name) __typeof__(name) *sym_##name;
ARCHIVE_LIB_SYMBOLS(ARCHIVE_LIB_DEFINE)
#undef ARCHIVE_LIB_DEFINE

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static void *handle; /* the loaded library; never closed */

static void clear_symbols(void)
{
#define ARCHIVE_LIB_CLEAR(name) sym_##name = NULL;
    ARCHIVE_LIB_SYMBOLS(ARCHIVE_LIB_CLEAR)
#undef ARCHIVE_LIB_CLEAR
}

/* Resolve every symbol from h: 0, or -1 naming the first one missing. */
static int resolve(void *h, const char *soname, char *err, size_t errlen)
{
    void *p;
#define ARCHIVE_LIB_RESOLVE(name)                                                                  \
    if (!(p = dlsym(h, #name))) {                                                                  \
        snprintf(err, errlen, "%s has no function %s (libarchive 3 is needed)", soname, #name);    \
        return -1;                                                                                 \
    }                                                                                              \
    sym_##name = (__typeof__(name) *)p;
    ARCHIVE_LIB_SYMBOLS(ARCHIVE_LIB_RESOLVE)
#undef ARCHIVE_LIB_RESOLVE
    return 0;
}

int archive_lib_load_from(const char *soname, char *err, size_t errlen)
{
    int ret = 0;
    pthread_mutex_lock(&load_lock);
    if (!handle) {
        void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            const char *why = dlerror();
            snprintf(err, errlen, "%s (install the package libarchive13)", why ? why : soname);
            ret = -1;
        } else if (resolve(h, soname, err, errlen) < 0) {
            clear_symbols();
            dlclose(h);
            ret = -1;
        } else {
            handle = h;
        }
    }
    pthread_mutex_unlock(&load_lock);
    return ret;
}

int archive_lib_load(char *err, size_t errlen)
{
    return archive_lib_load_from(ARCHIVE_LIB_SONAME, err, errlen);
}
