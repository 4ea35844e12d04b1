/* The NBD source: a snapshot disk read straight from the NBD export that serves it (a live
 * VM's point-in-time view, exported by the qemu or libvirt provider on a unix socket), on the
 * daemon's own host, with no TLS and no copy through the daemon.  The daemon names the export
 * in the disk's file_id as an NBD URI (nbdio_uri); the export opened must have the disk's size.
 * Fetch threads share one core/nbdio.c pool of as many connections as there are threads. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backup/source.h"
#include "core/cleanup.h"
#include "core/nbdio.h"

struct source_nbd {
    struct source s;
    struct nbdio *n;
};

static int nbd_source_pread(struct source *s, unsigned worker, void *buf, uint64_t len,
                            uint64_t off, char *why, size_t whylen)
{
    (void)worker; /* the pool hands each read a free connection */
    struct source_nbd *nb = (struct source_nbd *)s;
    int r = nbdio_pread(nb->n, buf, len, off);
    if (r < 0)
        snprintf(why, whylen, "the NBD export: %s", strerror(-r));
    return r;
}

static void nbd_source_close(struct source *s)
{
    struct source_nbd *nb = (struct source_nbd *)s;
    nbdio_close(nb->n);
    free(nb);
}

static const struct source_ops nbd_ops = {
    .name = "nbd",
    .pread = nbd_source_pread,
    .close = nbd_source_close,
};

bool source_nbd_names_export(const struct source_disk *d)
{
    CLEANUP_FREE char *sock = NULL;
    CLEANUP_FREE char *exp = NULL;
    return d->file_id && nbdio_uri_parse(d->file_id, &sock, &exp) == 0;
}

int source_nbd_open(const struct source_disk *d, unsigned nconn, struct source **out, char *why,
                    size_t whylen)
{
    CLEANUP_FREE char *sock = NULL;
    CLEANUP_FREE char *exp = NULL;
    if (!d->file_id || nbdio_uri_parse(d->file_id, &sock, &exp) < 0) {
        snprintf(why, whylen, "the server names no NBD export for the disk");
        return -ENOENT;
    }
    struct stat st;
    if (stat(sock, &st) < 0) {
        int r = -errno;
        snprintf(why, whylen, "%s: %s (not this host?)", sock, strerror(-r));
        return r;
    }
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(why, whylen, "%s: not a socket", sock);
        return -ENOTSOCK;
    }
    struct nbdio *n = NULL;
    int r = nbdio_open(sock, exp, NULL, nconn, &n, why, whylen);
    if (r < 0)
        return r;
    if (nbdio_size(n) != d->size) {
        snprintf(why, whylen, "NBD export \"%s\" on %s: size %llu differs from the disk's %llu",
                 exp, sock, (unsigned long long)nbdio_size(n), (unsigned long long)d->size);
        nbdio_close(n);
        return -ESTALE;
    }
    struct source_nbd *nb = calloc(1, sizeof(*nb));
    if (!nb) {
        nbdio_close(n);
        snprintf(why, whylen, "out of memory");
        return -ENOMEM;
    }
    nb->s = (struct source){.ops = &nbd_ops, .size = d->size};
    nb->n = n;
    *out = &nb->s;
    return 0;
}
