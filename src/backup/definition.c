/* The VM definition stored with a backup; see definition.h.  The file is written under a
 * temporary name next to its destination, made durable, then renamed into place, so that a
 * failure never leaves half a definition (or destroys the file it was to replace). */
#include "backup/definition.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "repo/repo.h"

/* Mode of a written definition: it may name hosts, paths and networks of the VM. */
#define DEFINITION_FILE_MODE 0600

int backup_definition_get(const struct backup *b, const char **format, const char **text)
{
    if (!b->definition)
        return -ENOENT;
    *format = b->definition_format ? b->definition_format : "";
    *text = b->definition;
    return 0;
}

static int write_all(int fd, const char *s, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, s, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        s += n;
        len -= (size_t)n;
    }
    return 0;
}

int backup_definition_write(const struct backup *b, const char *path, bool force, char *err,
                            size_t errlen)
{
    const char *format, *text;
    if (backup_definition_get(b, &format, &text) < 0) {
        snprintf(err, errlen, "backup %s has no VM definition (its server kept none)", b->id);
        return -ENOENT;
    }
    struct stat st;
    if (!force && lstat(path, &st) == 0) {
        snprintf(err, errlen, "%s exists (use --force to replace it)", path);
        return -EEXIST;
    }
    CLEANUP_FREE char *tmp = NULL;
    if (asprintf(&tmp, "%s.vxdef.tmp.XXXXXX", path) < 0) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    CLEANUP_CLOSE int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        int r = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(-r));
        return r;
    }
    int r = fchmod(fd, DEFINITION_FILE_MODE) < 0 ? -errno : 0;
    if (r == 0)
        r = write_all(fd, text, strlen(text));
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno;
    if (r < 0) {
        unlink(tmp);
        snprintf(err, errlen, "%s: %s", path, strerror(-r));
    }
    return r;
}
