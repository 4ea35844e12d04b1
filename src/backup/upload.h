/* The upload engine (restore to a host): a disk into a VM through vmexportd's upload API, one
 * transfer per disk, data chunks as PUT with Content-Range from parallel connections, zero and
 * hole ranges as PATCH zero (never as bytes), then flush and finalize.  A failure cancels the
 * transfer, so nothing half-written becomes a disk.  It prints nothing: it returns a negative
 * errno, with the message and the figures in struct upload_result. */
#ifndef VMEXPORT_BACKUP_UPLOAD_H
#define VMEXPORT_BACKUP_UPLOAD_H

#include <stdbool.h>
#include <stdint.h>

#include "backup/progress.h"
#include "core/pool.h"

struct client;
struct repo;
struct backup;

/* Piece size of a file upload: big enough for throughput, small enough to retry cheaply. */
#define UPLOAD_FILE_CHUNK (4u << 20)

struct upload_result {
    uint64_t size;                   /* of the disk */
    uint64_t bytes_sent;             /* request bytes over the network */
    uint64_t zero_bytes;             /* sent as PATCH zero */
    uint64_t zero_requests;          /* the PATCH zero requests */
    char error[FIRST_ERROR_MSG_MAX]; /* after a failure: "VM x: disk y: why" */
};

/* Upload the (sparse) raw file open as fd as disk of vm over jobs connections (c and copies).
 * Holes are not read.  0, or a negative errno with res->error set. */
int upload_file(struct client *c, int fd, const char *vm, const char *disk, unsigned jobs,
                const struct backup_progress *progress, struct upload_result *res);

/* Upload disk of backup b in repo as disk of vm: zero chunks are never read.  0, or a negative
 * errno with res->error set (a damaged or missing chunk named). */
int upload_backup_disk(struct client *c, struct repo *repo, const struct backup *b,
                       const char *disk, const char *vm, unsigned jobs,
                       const struct backup_progress *progress, struct upload_result *res);

#endif
