/* Scoped cleanup helpers (GCC/Clang cleanup attribute).
 *
 * A variable declared CLEANUP_FREE is freed when it leaves scope; CLEANUP_CLOSE closes a file
 * descriptor (values < 0 are ignored).  Early returns then cannot leak.  TAKE_PTR/TAKE_FD hand
 * ownership out of a scope.
 */
#ifndef VMEXPORT_CORE_CLEANUP_H
#define VMEXPORT_CORE_CLEANUP_H

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static inline void cleanup_free(void *p)
{
    free(*(void **)p);
}

static inline void cleanup_close(int *fd)
{
    if (*fd >= 0) {
        int saved = errno; /* close must not clobber the errno a caller is about to report */
        close(*fd);
        errno = saved;
    }
}

#define CLEANUP_FREE  __attribute__((cleanup(cleanup_free)))
#define CLEANUP_CLOSE __attribute__((cleanup(cleanup_close)))

#define TAKE_PTR(p)                                                                                \
    ({                                                                                             \
        __typeof__(p) take_ptr_tmp_ = (p);                                                         \
        (p) = NULL;                                                                                \
        take_ptr_tmp_;                                                                             \
    })

#define TAKE_FD(fd)                                                                                \
    ({                                                                                             \
        int take_fd_tmp_ = (fd);                                                                   \
        (fd) = -1;                                                                                 \
        take_fd_tmp_;                                                                              \
    })

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
