/* The progress callbacks every engine of backup/ reports through (restore, upload, archive
 * export and import): a piece of work begins with its size, bytes are added as they pass, and
 * the piece ends.  Every member may be NULL; the engines call them through the helpers below.
 * cli/progress.h draws them (progress_sink). */
#ifndef VMEXPORT_BACKUP_PROGRESS_H
#define VMEXPORT_BACKUP_PROGRESS_H

#include <stddef.h>
#include <stdint.h>

struct backup_progress {
    /* Work of total bytes begins, from the calling thread; what names it (a disk), or is NULL
     * when it is the whole run (an archive, whose total an import knows once vm.json is read). */
    void (*begin)(void *opaque, const char *what, uint64_t total);
    /* bytes more are done, from any worker thread, concurrently. */
    void (*add)(void *opaque, uint64_t bytes);
    /* The work begun is over, done or failed (from the calling thread). */
    void (*end)(void *opaque, const char *what);
    void *opaque;
};

static inline void backup_progress_begin(const struct backup_progress *p, const char *what,
                                         uint64_t total)
{
    if (p && p->begin)
        p->begin(p->opaque, what, total);
}

static inline void backup_progress_add(const struct backup_progress *p, uint64_t bytes)
{
    if (p && p->add)
        p->add(p->opaque, bytes);
}

static inline void backup_progress_end(const struct backup_progress *p, const char *what)
{
    if (p && p->end)
        p->end(p->opaque, what);
}

#endif
