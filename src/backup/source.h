/* A source: how the backup engine reads the bytes of one snapshot disk, like nbdcopy's rw_ops.
 *
 * The daemon always takes the snapshot and reports what changed (backup.c asks it through
 * client/); a source only reads.  It is opened from what the daemon said about the disk
 * (struct source_disk), reads ranges into the engine's buffers from several fetch threads at
 * once (thread i passes worker i, below the number of workers it was opened for), and closes.
 * Each way of reading is one file:
 *   - source_https.c: Range requests through the daemon, one connection per fetch thread;
 *   - source_local.c: the snapshot file itself, on the daemon's host (O_DIRECT), only when its
 *     identity and size are the daemon's;
 *   - source_nbd.c: the NBD export of a live VM's snapshot (file_id is its NBD URI), on the
 *     daemon's host, through core/nbdio.c;
 *   - source_rbd.c: the RBD snapshot of an rbd provider's disk (file_id names it, see
 *     provider/rbdio.h), from the Ceph cluster with this host's own Ceph credentials.
 */
#ifndef VMEXPORT_BACKUP_SOURCE_H
#define VMEXPORT_BACKUP_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/client.h"

/* What the daemon said about one disk of a snapshot. */
struct source_disk {
    const char *vm, *snapshot, *name;
    uint64_t size;
    const char *path;    /* the disk's file on the daemon's host; NULL when not said */
    const char *file_id; /* that file's identity (fs_file_id_fd), or the NBD URI of the export
                          * serving the disk (nbdio_uri); NULL when not said */
};

struct source;

struct source_ops {
    const char *name; /* "https", "local", "nbd", "rbd": the transport a backup reports */
    /* Read exactly len bytes at off into buf, on behalf of fetch thread worker.  0, or a
     * negative errno (-ENODATA: the disk ended early) with the cause in why. */
    int (*pread)(struct source *s, unsigned worker, void *buf, uint64_t len, uint64_t off,
                 char *why, size_t whylen);
    /* Optional (NULL: read range by range): read n ranges (sorted, apart; at most
     * SOURCE_MAX_RANGES) at once, handing their bytes to put in order (again from the start
     * when a request is repeated).  0, or a negative errno with the cause in why. */
    int (*read_ranges)(struct source *s, unsigned worker, const struct client_range *r, size_t n,
                       client_put_fn put, void *arg, char *why, size_t whylen);
    void (*close)(struct source *s);
};

/* Ranges of one read_ranges call. */
#define SOURCE_MAX_RANGES CLIENT_MAX_RANGES

/* The part every source shares; each implementation embeds it first. */
struct source {
    const struct source_ops *ops;
    uint64_t size;
};

static inline int source_pread(struct source *s, unsigned worker, void *buf, uint64_t len,
                               uint64_t off, char *why, size_t whylen)
{
    return s->ops->pread(s, worker, buf, len, off, why, whylen);
}

static inline void source_close(struct source *s)
{
    if (s)
        s->ops->close(s);
}

/* Read through the daemon: fetch thread i uses clients[i] (nclients of them, owned by the
 * caller, alive until the source is closed). */
int source_https_open(const struct source_disk *d, struct client *const *clients, unsigned nclients,
                      struct source **out, char *why, size_t whylen);

/* Read the snapshot file on this host; fails (-ENOENT, -ESTALE ...) with the reason in why when
 * the daemon named no file, it cannot be opened, or it is not the daemon's (another identity,
 * another size). */
int source_local_open(const struct source_disk *d, struct source **out, char *why, size_t whylen);

/* Whether the daemon names an NBD export (an NBD URI in file_id) for the disk. */
bool source_nbd_names_export(const struct source_disk *d);

/* Read the NBD export named by the disk's file_id over up to nconn connections; fails (-ENOENT,
 * -ESTALE ...) with the reason in why when file_id names no export, its socket is not on this
 * host, or the export is not the disk (another size). */
int source_nbd_open(const struct source_disk *d, unsigned nconn, struct source **out, char *why,
                    size_t whylen);

/* Read the RBD snapshot named by the disk's file_id with librbd (CEPH_CONF, CEPH_ID); fails
 * (-ENOENT, -ESTALE ...) with the reason in why when file_id names no RBD snapshot, the cluster
 * cannot be reached or is not the server's, or the snapshot is not the disk (another size). */
int source_rbd_open(const struct source_disk *d, struct source **out, char *why, size_t whylen);

#endif
