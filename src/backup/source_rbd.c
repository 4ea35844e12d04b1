/* The RBD source: a snapshot disk of the rbd provider read straight from the Ceph cluster with
 * librbd, on any host with Ceph credentials (CEPH_CONF, CEPH_ID: the client's own, not the
 * daemon's), with no TLS and no copy through the daemon.  The daemon names the snapshot in the
 * disk's file_id (provider/rbdio.h: the cluster's fsid, pool, image and snapshot IDs); the
 * cluster reached must have that fsid and the snapshot the disk's size, so a same-named pool of
 * another cluster, or a re-created image, is never read.  Fetch threads share one image handle
 * (librbd is thread-safe). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup/source.h"
#include "provider/rbdio.h"

/* Reads are hints to the OSDs: each byte is read once, in order. */
#define RBD_SOURCE_OP_FLAGS (LIBRADOS_OP_FLAG_FADVISE_SEQUENTIAL | LIBRADOS_OP_FLAG_FADVISE_NOCACHE)
#define RBD_SOURCE_IO_MAX   (64u << 20) /* bytes per librbd call */

struct source_rbd {
    struct source s;
    rados_t cluster;
    rados_ioctx_t io;
    rbd_image_t img;
};

static int rbd_source_pread(struct source *s, unsigned worker, void *buf, uint64_t len,
                            uint64_t off, char *why, size_t whylen)
{
    (void)worker;
    struct source_rbd *x = (struct source_rbd *)s;
    for (uint64_t done = 0; done < len;) {
        size_t k = len - done < RBD_SOURCE_IO_MAX ? (size_t)(len - done) : RBD_SOURCE_IO_MAX;
        ssize_t r = rbd_read2(x->img, off + done, k, (char *)buf + done, RBD_SOURCE_OP_FLAGS);
        if (r <= 0) {
            int e = r < 0 ? (int)r : -ENODATA;
            snprintf(why, whylen, "the RBD snapshot: %s",
                     e == -ENODATA ? "it is shorter than the disk" : strerror(-e));
            return e;
        }
        done += (uint64_t)r;
    }
    return 0;
}

static void rbd_source_free(struct source_rbd *x)
{
    if (x->img)
        rbd_close(x->img);
    if (x->io)
        rados_ioctx_destroy(x->io);
    if (x->cluster)
        rados_shutdown(x->cluster);
    free(x);
}

static void rbd_source_close(struct source *s)
{
    rbd_source_free((struct source_rbd *)s);
}

static const struct source_ops rbd_ops = {
    .name = "rbd",
    .pread = rbd_source_pread,
    .close = rbd_source_close,
};

int source_rbd_open(const struct source_disk *d, struct source **out, char *why, size_t whylen)
{
    struct rbdio_ident id;
    if (!d->file_id || rbdio_ident_parse(d->file_id, &id) < 0) {
        snprintf(why, whylen,
                 "the server names no RBD snapshot for the disk (not an rbd "
                 "provider's disk?)");
        return -ENOENT;
    }
    struct source_rbd *x = calloc(1, sizeof(*x));
    if (!x) {
        snprintf(why, whylen, "out of memory");
        return -ENOMEM;
    }
    char fsid[RBDIO_FSID_MAX] = "";
    uint64_t size = 0;
    int r = rbdio_connect(NULL, NULL, &x->cluster, why, whylen);
    if (r < 0) {
        x->cluster = NULL;
        goto fail;
    }
    if ((r = rados_cluster_fsid(x->cluster, fsid, sizeof(fsid))) < 0) {
        snprintf(why, whylen, "the Ceph cluster's fsid: %s", strerror(-r));
        goto fail;
    }
    if (strcmp(fsid, id.fsid)) {
        snprintf(why, whylen, "this host's Ceph cluster (fsid %s) is not the server's (%s)", fsid,
                 id.fsid);
        r = -ESTALE;
        goto fail;
    }
    if ((r = rbdio_ioctx(x->cluster, id.pool_id, id.ns, &x->io)) < 0) {
        x->io = NULL;
        snprintf(why, whylen, "pool %lld of the Ceph cluster: %s", (long long)id.pool_id,
                 strerror(-r));
        goto fail;
    }
    if ((r = rbd_open_by_id_read_only(x->io, id.image_id, &x->img, NULL)) < 0) {
        x->img = NULL;
        snprintf(why, whylen, "RBD image %s (ID) of pool %lld: %s", id.image_id,
                 (long long)id.pool_id, strerror(-r));
        goto fail;
    }
    if ((r = rbd_snap_set_by_id(x->img, id.snap_id)) < 0 || (r = rbd_get_size(x->img, &size)) < 0) {
        snprintf(why, whylen, "snapshot %llu of RBD image %s: %s", (unsigned long long)id.snap_id,
                 id.image_id, strerror(-r));
        goto fail;
    }
    if (size != d->size) {
        snprintf(why, whylen,
                 "RBD snapshot %llu of image %s: size %llu differs from the disk's %llu",
                 (unsigned long long)id.snap_id, id.image_id, (unsigned long long)size,
                 (unsigned long long)d->size);
        r = -ESTALE;
        goto fail;
    }
    x->s = (struct source){.ops = &rbd_ops, .size = d->size};
    *out = &x->s;
    return 0;
fail:
    rbd_source_free(x);
    return r;
}
