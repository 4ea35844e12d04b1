/* The backup engine: one VM from vmexportd into a repository, as a function.
 *
 * backup_run() takes a snapshot of the VM on the server, asks the server what changed on each
 * disk since its change ID in the VM's previous backup in the repository (GET .../changes with
 * zeroedInChanged=false, page by page: the changed data, and apart from it the ranges that
 * became zeros), or for a first or full backup, or when the server no longer has that
 * snapshot, which ranges hold data at all (changeId=*), reads only those through a source
 * (source.h: https, local or nbd), lays them over the previous backup's chunks (or zeros), and
 * stores every touched chunk; every other chunk comes from the previous manifest.  Each backup
 * is thus a synthetic full: it restores on its own and can be pruned independently.
 *
 * The snapshot is of the chosen disks (--disk, --exclude-disk) in this repository's chain
 * (backup_chain_id).  When the server cannot tell a disk's changes (409: a live VM's checkpoint
 * lost, inconsistent or of another chain) that disk is read in full and the result says why;
 * the others stay incremental.  After the commit the new snapshot's data is released on the
 * server (DELETE ?keepCheckpoint=true): only its checkpoint stays as the next base.  The VM's
 * definition (GET .../definition), when the server keeps one, is stored in the backup record.
 *
 * It prints nothing and never exits: it returns 0 or a negative errno, fills a result (figures,
 * IDs, and on failure a message naming the thing and the cause), and reports progress and
 * warnings through optional callbacks, so that tests can drive it without a terminal.
 */
#ifndef VMEXPORT_BACKUP_BACKUP_H
#define VMEXPORT_BACKUP_BACKUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct client;
struct repo;

/* Parallel connections / fetch threads: at most this many. */
#define BACKUP_MAX_JOBS 64
/* Seconds a backup waits for another backup of the same VM to finish. */
#define BACKUP_VM_LOCK_TIMEOUT 600
/* Size of the result's message buffer. */
#define BACKUP_ERROR_MAX 1024

/* How a backup reads the snapshot's bytes. */
enum backup_transport {
    BACKUP_TRANSPORT_AUTO,  /* per disk: nbd where the server names an NBD export on this host,
                             * local where the snapshot file is the server's, else https */
    BACKUP_TRANSPORT_HTTPS, /* through the server */
    BACKUP_TRANSPORT_LOCAL, /* the snapshot files on this host; fails where that is not possible */
    BACKUP_TRANSPORT_NBD,   /* the NBD exports on this host; fails where that is not possible */
    BACKUP_TRANSPORT_RBD,   /* the RBD snapshots, from the Ceph cluster with this host's
                             * credentials; fails where that is not possible */
};

struct backup_options {
    struct repo *repo;
    struct client *client; /* to the server; duplicated for the fetch threads */
    const char *server;    /* the server's URL, recorded in the backup; may be NULL */
    const char *vm;
    /* Only these disks (ndisks names; NULL: every disk the server snapshots), minus the nexclude
     * names in exclude_disks.  A name the VM does not have fails the backup before it starts. */
    const char *const *disks;
    size_t ndisks;
    const char *const *exclude_disks;
    size_t nexclude;
    bool full;               /* read every allocated range even when a base exists */
    unsigned jobs;           /* fetch threads and connections, 1 .. BACKUP_MAX_JOBS */
    unsigned keep_snapshots; /* server snapshots this repository keeps as bases */
    enum backup_transport transport;
    int64_t now; /* the backup's time (seconds since the epoch) */
    /* Optional.  start: the bytes the backup will read (called once, before reading);
     * progress: bytes done, from any worker thread; warn: a message (the backup goes on). */
    void (*start)(void *opaque, uint64_t total);
    void (*progress)(void *opaque, uint64_t bytes);
    void (*warn)(void *opaque, const char *msg);
    void *opaque;
};

/* How one disk was backed up. */
struct backup_disk_result {
    char *name;            /* malloc'd */
    bool incremental;      /* only the changes since the previous backup were read */
    char *full_reason;     /* malloc'd, when not incremental: why ("no previous backup of the
                            * disk", "--full", the server's reason it cannot tell the changes) */
    const char *transport; /* "https", "local", "nbd", "rbd" */
};

struct backup_result {
    char *backup_id;            /* malloc'd: the committed backup */
    char *snapshot_id;          /* malloc'd: the server snapshot it was read from */
    bool incremental;           /* it had a previous backup of the VM as its base */
    const char *transport;      /* "https", "local", "nbd", "rbd", or "mixed" across disks */
    uint64_t bytes_read;        /* of the disks */
    uint64_t bytes_transferred; /* over https (blocks of zeros are not sent) */
    uint64_t bytes_written;     /* into the repository */
    uint64_t chunks_new, chunks_reused, chunks_fetched;
    double seconds;
    struct backup_disk_result *disks; /* ndisks of them, in the snapshot's order */
    size_t ndisks;
    char *definition_format;      /* malloc'd: that of the VM definition stored with the
                                   * backup; NULL: none stored */
    char error[BACKUP_ERROR_MAX]; /* on failure: what failed and why */
};

/* Back up o->vm.  0, or a negative errno with res->error set.  Free res with
 * backup_result_free either way. */
int backup_run(const struct backup_options *o, struct backup_result *res);
void backup_result_free(struct backup_result *res);

/* The changed-block-tracking chain ID a repository's backups ask the server for (valid as
 * provider_chain_valid wants: "vmexport-" and hex digits of the repository ID), so that the
 * server's checkpoints of two repositories never mix.  malloc'd; NULL when out of memory. */
char *backup_chain_id(const struct repo *repo);

/* A --transport argument ("auto", "https", "local", "nbd", "rbd"): 0, or -EINVAL. */
int backup_transport_parse(const char *s, enum backup_transport *out);

#endif
