/* Ceph RBD plumbing shared by the rbd provider (provider/rbd.c) and the backup engine's RBD
 * source (backup/source_rbd.c): connecting to a cluster, the identity that names one snapshot
 * of one image on one cluster, and an in-order walk of rbd_diff_iterate2.
 *
 * An identity is "rbd://FSID/POOL-ID/IMAGE-ID@SNAP-ID", followed by "?namespace=NS" (NS
 * percent-encoded) when the image is in an RBD namespace: IDs, not names, so that a renamed or
 * re-created image or snapshot is never read in place of the one the daemon meant, and the
 * cluster's fsid, so that a client connected to another cluster never reads a same-named pool.
 */
#ifndef VMEXPORT_PROVIDER_RBDIO_H
#define VMEXPORT_PROVIDER_RBDIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <rados/librados.h>
#include <rbd/librbd.h>

#define RBDIO_DEFAULT_ID "admin" /* client.admin, as the rbd and rados tools default */
#define RBDIO_FSID_MAX   40      /* a UUID and its NUL */
#define RBDIO_NAME_MAX   256     /* image IDs and namespace names we accept */

/* Connect to the cluster of the configuration file conf (NULL: librados' search, $CEPH_CONF
 * first) as client.<id> (NULL: $CEPH_ID, else "admin"), with bounded waits: a monitor or OSD
 * that does not answer fails the call instead of hanging it.  err names the configuration, the
 * user and the cause (never a key). */
int rbdio_connect(const char *conf, const char *id, rados_t *out, char *err, size_t errlen);

/* One snapshot of one image of one cluster. */
struct rbdio_ident {
    char fsid[RBDIO_FSID_MAX];
    int64_t pool_id;
    char ns[RBDIO_NAME_MAX]; /* "" : the default namespace */
    char image_id[RBDIO_NAME_MAX];
    uint64_t snap_id;
};

/* The identity as a string into out (n bytes): 0, or -ENAMETOOLONG. */
int rbdio_ident_format(const struct rbdio_ident *id, char *out, size_t n);
/* 0, or -EINVAL when s is not an identity made by rbdio_ident_format. */
int rbdio_ident_parse(const char *s, struct rbdio_ident *out);

/* The I/O context of pool_id and namespace ns on cluster c: 0 or a negative errno. */
int rbdio_ioctx(rados_t c, int64_t pool_id, const char *ns, rados_ioctx_t *out);

/* The ranges of img (at the snapshot it is open at) that differ from its snapshot from (a
 * user-namespace snapshot name; NULL: from nothing, i.e. the data), in ascending order and
 * coalesced: emit(opaque, off, len, exists) with exists false for ranges that read as zeros
 * now.  librbd walks one stripe period at a time but may report the objects of a period out
 * of order; each period is sorted before it is emitted, so memory stays one period's ranges.
 * whole_object: object granularity (fast with the fast-diff feature).  0 or a negative errno
 * (the first one emit returned, or librbd's: -ENOENT when from does not exist). */
int rbdio_diff(rbd_image_t img, const char *from, bool whole_object,
               int (*emit)(void *opaque, uint64_t off, uint64_t len, bool exists), void *opaque);

#endif
