/* The local source: a snapshot disk read from its file on the daemon's own host, with no TLS
 * and no copies through the daemon.  The daemon names the file (path) and its identity
 * (file_id: boot ID, device and inode, see fs_file_id_fd); the file opened must have that
 * identity and the disk's size, so a same-named file elsewhere (another host sharing the path,
 * a replaced file) is never read.  Aligned reads bypass the page cache (O_DIRECT): a backup
 * reads each byte once, so caching it only costs copies and evicts the host's useful pages. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backup/source.h"
#include "fs/fsinfo.h"

struct source_local {
    struct source s;
    int fd;        /* the snapshot file */
    int direct_fd; /* the same file opened with O_DIRECT for aligned reads; -1: none */
};

static int local_pread(struct source *s, unsigned worker, void *buf, uint64_t len, uint64_t off,
                       char *why, size_t whylen)
{
    (void)worker; /* pread at an offset: threads share the descriptors */
    struct source_local *l = (struct source_local *)s;
    size_t got = 0;
    int r = fs_pread_direct(l->fd, l->direct_fd, buf, len, off, &got);
    if (r == 0 && got < len)
        r = -ENODATA;
    if (r < 0)
        snprintf(why, whylen, "the local snapshot file: %s",
                 r == -ENODATA ? "the file is shorter than the disk" : strerror(-r));
    return r;
}

static void local_close(struct source *s)
{
    struct source_local *l = (struct source_local *)s;
    close(l->fd);
    if (l->direct_fd >= 0)
        close(l->direct_fd);
    free(l);
}

static const struct source_ops local_ops = {
    .name = "local",
    .pread = local_pread,
    .close = local_close,
};

int source_local_open(const struct source_disk *d, struct source **out, char *why, size_t whylen)
{
    if (!d->path || !d->file_id) {
        snprintf(why, whylen, "the server gives no file identity for the disk");
        return -ENOENT;
    }
    int fd = open(d->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        int r = -errno;
        snprintf(why, whylen, "%s: %s", d->path, strerror(-r));
        return r;
    }
    char have[FS_FILE_ID_MAX];
    struct stat st;
    int r = fs_file_id_fd(fd, have);
    if (r < 0) {
        snprintf(why, whylen, "%s: %s", d->path, strerror(-r));
    } else if (strcmp(have, d->file_id)) {
        snprintf(why, whylen, "%s: not the server's file (another host, or replaced)", d->path);
        r = -ESTALE;
    } else if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != d->size) {
        snprintf(why, whylen, "%s: size differs from the disk's", d->path);
        r = -ESTALE;
    } else {
        struct source_local *l = calloc(1, sizeof(*l));
        if (!l) {
            snprintf(why, whylen, "out of memory");
            close(fd);
            return -ENOMEM;
        }
        posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        l->s = (struct source){.ops = &local_ops, .size = d->size};
        l->fd = fd;
        l->direct_fd = fs_reopen_direct(fd, O_RDONLY);
        *out = &l->s;
        return 0;
    }
    close(fd);
    return r;
}
