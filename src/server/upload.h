/* The registry of transfers: uploads of new disks (restore to a host), with their partial files
 * and the writers working in them, and downloads of snapshot disks (imageio-style read tickets,
 * for clients that cannot send a bearer token).
 *
 * A transfer is made by POST /api/v1/vms/{vm}/uploads and lives until it is finalized (its
 * partial file renamed to the disk), cancelled, or left without requests for [upload]
 * idle_timeout seconds (a reaper thread then removes it).  Each is recorded in the catalog from
 * before its partial file exists until after it is gone, so that the next start removes what a
 * crash left (uploads_open).  Partial disks are named by a digest of the ID, never the ID, in the
 * provider's private staging area; the provider writes them (provider.h, disk_writer).  Writers of
 * one transfer run in parallel on disjoint ranges; one whose range overlaps another's in flight is
 * refused.  A download is made by POST /api/v1/vms/{vm}/downloads, names a snapshot's disk, has no
 * file of its own and is not recorded in the catalog; it ends when cancelled or idle, as an upload.
 * All functions are thread-safe.
 */
#ifndef VMEXPORT_SERVER_UPLOAD_H
#define VMEXPORT_SERVER_UPLOAD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct server;
struct provider;
struct uploads;

#define UPLOAD_ID_BYTES 16                    /* transfer IDs: 128 random bits ... */
#define UPLOAD_ID_LEN   (2 * UPLOAD_ID_BYTES) /* ... in lower-case hex */
#define UPLOAD_SIZE_MAX (UINT64_C(1) << 62)   /* largest disk accepted */
/* IDs are credentials: logs show only their first characters, enough to tell them apart. */
#define UPLOAD_ID_LOGGED 8

enum transfer_direction {
    TRANSFER_UPLOAD,   /* writes a new disk */
    TRANSFER_DOWNLOAD, /* reads a snapshot's disk */
};

enum transfer_state {
    TRANSFER_CREATING,   /* reserved while its file is made; not found by upload_get */
    TRANSFER_ACTIVE,     /* accepting writes */
    TRANSFER_FINALIZING, /* being renamed into place; writes refused */
    TRANSFER_GONE,       /* finalized, cancelled or expired; freed with its last reference */
};

/* A range being written, [start, end). */
struct transfer_writer {
    uint64_t start, end;
    bool used;
    /* The range the slot's last write finished with: its writeback is started, not yet waited
     * for (upload_writeback).  Kept when the slot is claimed again. */
    uint64_t wb_start, wb_len;
};

struct transfer {
    /* Fixed once created: read freely while holding a reference. */
    char id[UPLOAD_ID_LEN + 1];
    enum transfer_direction direction;
    char *provider; /* instance name */
    char *vm_id;
    char *disk;
    char *snapshot;     /* downloads: the snapshot whose disk is read */
    char *partial_path; /* uploads only, as final_path, writer and the writers: the */
    char *final_path;   /* provider's locators of the partial disk and of the disk */
    uint64_t size;
    struct disk_writer *writer; /* the provider's, of the partial disk */
    /* The transfer's first failure to get written data onto the disk (writeback, fdatasync or
     * fsync: a negative errno), or 0.  Sticky: the kernel reports such an error once per file,
     * and the data it concerns may belong to a write answered already, so every later flush
     * and the finalize fail with it. */
    _Atomic int wb_err;

    /* upload.c only, under the registry's lock. */
    enum transfer_state state;
    unsigned refs;                   /* requests holding the transfer */
    uint64_t last_used_ms;           /* monotonic clock, for expiry */
    struct transfer_writer *writers; /* [upload] max_writers slots */
    struct transfer *next;
};

/* Open the registry of s: remove the partial files of uploads that a crash or a stop left
 * (logging each), then start the reaper. */
int uploads_open(struct server *s, struct uploads **out);
/* Stop the reaper and cancel the transfers still open (their partial files are removed). */
void uploads_close(struct uploads *u);
unsigned uploads_max_writers(const struct uploads *u);

/* A new transfer of disk `disk` (a new file) of VM vm_id with provider p, which creates the VM
 * when missing.  *out holds a reference (upload_put).  Errors, with err saying why:
 * -EINVAL names the provider cannot use, -EEXIST the disk exists, -EBUSY an upload of the disk
 * is in progress, -EMFILE too many uploads in progress, -ENOTDIR the VM's place is taken,
 * -EFBIG size too large for the filesystem, others from the filesystem or the catalog. */
int upload_create(struct uploads *u, struct provider *p, const char *vm_id, const char *disk,
                  uint64_t size, struct transfer **out, char *err, size_t errlen);
/* A new download of disk `disk` (size bytes) of snapshot snap_id of VM vm_id, which the
 * caller found ready.  *out holds a reference (upload_put).  -EMFILE too many transfers. */
int download_create(struct uploads *u, const char *provider, const char *vm_id, const char *snap_id,
                    const char *disk, uint64_t size, struct transfer **out, char *err,
                    size_t errlen);

/* The transfer with this ID, with a reference, or NULL (unknown, finished or expired).  Each
 * call counts as activity for the idle timeout. */
struct transfer *upload_get(struct uploads *u, const char *id);
void upload_put(struct uploads *u, struct transfer *t);
/* Whether t was cancelled, finalized or expired since it was got. */
bool upload_is_gone(struct uploads *u, struct transfer *t);

/* Claim [offset, offset + length) for writing: 0 and *slot, -ERANGE when the range is empty or
 * not inside the disk, -EBUSY when another writer's range overlaps, -EUSERS when max_writers are
 * writing, -EALREADY while finalizing, -ENOENT gone. */
int upload_write_begin(struct uploads *u, struct transfer *t, uint64_t offset, uint64_t length,
                       int *slot);
void upload_write_end(struct uploads *u, struct transfer *t, int slot);

/* Data operations, in a claimed range; -ERANGE for bytes outside the disk (the partial file
 * never grows past the disk's size). */
int upload_pwrite(struct transfer *t, const void *buf, size_t len, uint64_t offset);
/* Make a range read as zeros: punch a hole, else zero the range, else write zeros. */
int upload_zero(struct transfer *t, uint64_t offset, uint64_t length);
int upload_flush(struct transfer *t);
/* After a write of [offset, offset + length) in slot: wait until the slot's previous write is
 * on the disk and drop it from the page cache, and start writeback of this one, so an upload
 * keeps only a window of the disk cached on the host (disk_writer_ops.writeback).  0 or a negative
 * errno of the earlier writeback. */
int upload_writeback(struct uploads *u, struct transfer *t, int slot, uint64_t offset,
                     uint64_t length);

/* Flush the partial file and rename it to the disk (never over an existing file), then forget
 * the transfer.  -EFBIG when the partial file is not the disk's size (the transfer stays: cancel
 * it), -EBUSY while writers are in flight, -EEXIST when a file of the disk's name
 * appeared meanwhile (the transfer stays: cancel it), -EALREADY already finalizing, -ENOENT
 * gone. */
int upload_finalize(struct uploads *u, struct transfer *t, char *err, size_t errlen);
/* Remove the partial file (of an upload) and forget the transfer.  -EALREADY while finalizing,
 * -ENOENT gone. */
int upload_cancel(struct uploads *u, struct transfer *t);

#endif
