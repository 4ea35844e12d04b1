/* The https source: a snapshot disk read through the daemon with Range requests, one
 * connection (struct client) per fetch thread, many ranges per request where the engine groups
 * them (multipart/byteranges); blocks of zeros the daemon leaves out of its
 * sparse answers arrive as zeros (client_read_range). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "backup/source.h"
#include "client/client.h"
#include "client/rest.h"

struct source_https {
    struct source s;
    char *path; /* the disk's data path, built once */
    struct client *const *clients;
    unsigned nclients;
};

static int https_pread(struct source *s, unsigned worker, void *buf, uint64_t len, uint64_t off,
                       char *why, size_t whylen)
{
    struct source_https *h = (struct source_https *)s;
    struct client *c = h->clients[worker % h->nclients];
    size_t got = 0;
    int r = client_read_range(c, h->path, off, len, buf, &got);
    if (r < 0) {
        snprintf(why, whylen, "%s", client_error(c));
        return r;
    }
    if (got != len) {
        snprintf(why, whylen, "short read");
        return -ENODATA;
    }
    return 0;
}

static int https_read_ranges(struct source *s, unsigned worker, const struct client_range *r,
                             size_t n, client_put_fn put, void *arg, char *why, size_t whylen)
{
    struct source_https *h = (struct source_https *)s;
    struct client *c = h->clients[worker % h->nclients];
    int ret = client_read_ranges(c, h->path, r, n, put, arg);
    if (ret < 0)
        snprintf(why, whylen, "%s", client_error(c));
    return ret;
}

static void https_close(struct source *s)
{
    struct source_https *h = (struct source_https *)s;
    free(h->path);
    free(h);
}

static const struct source_ops https_ops = {
    .name = "https",
    .pread = https_pread,
    .read_ranges = https_read_ranges,
    .close = https_close,
};

int source_https_open(const struct source_disk *d, struct client *const *clients, unsigned nclients,
                      struct source **out, char *why, size_t whylen)
{
    if (nclients == 0)
        return -EINVAL;
    struct source_https *h = calloc(1, sizeof(*h));
    if (h)
        h->path = client_disk_data_path(d->vm, d->snapshot, d->name);
    if (!h || !h->path) {
        free(h);
        snprintf(why, whylen, "out of memory");
        return -ENOMEM;
    }
    h->s = (struct source){.ops = &https_ops, .size = d->size};
    h->clients = clients;
    h->nclients = nclients;
    *out = &h->s;
    return 0;
}
