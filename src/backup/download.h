/* The download engine: a snapshot's disks from vmexportd into sparse local files, in full or
 * as the changes since an older snapshot whose files are already there, over parallel ranged
 * GETs.  It prints nothing: it returns a negative errno, with the message and the figures in
 * struct download_result. */
#ifndef VMEXPORT_BACKUP_DOWNLOAD_H
#define VMEXPORT_BACKUP_DOWNLOAD_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/pool.h"

struct client;

/* Largest ranged GET of a download; bigger chunks are split. */
#define DOWNLOAD_PIECE_SIZE (8u << 20)

struct download_request {
    const char *vm, *snapshot;
    /* The snapshot's answer: GET .../snapshots/SNAP, or with ?compareTo=BASE&
     * zeroedInChunks=false when the files of BASE are in the directory. */
    const json_t *answer;
    const char *base; /* that BASE, NULL for a full download */
    int dirfd;        /* the directory of the disk files */
    const char *dir;  /* its name, for messages */
    unsigned jobs;    /* connections, 1 to CLI_JOBS_MAX */
};

struct download_disk {
    const char *name; /* points into the request's answer */
    uint64_t size;
    bool created;                       /* created empty here (full, or new since the base) */
    uint64_t chunk_bytes, zeroed_bytes; /* what was fetched, what was zeroed */
};

struct download_result {
    struct download_disk *disks;
    size_t ndisks;
    uint64_t bytes_fetched;     /* disk bytes read */
    uint64_t bytes_transferred; /* body bytes over the network (fewer: zeros left out) */
    uint64_t bytes_zeroed;
    char error[FIRST_ERROR_MSG_MAX]; /* after a failure: what failed and why */
};

/* Apply rq->answer to the files in rq->dirfd over rq->jobs connections (c and copies of it):
 * open or create and size every disk file, zero the zeroed ranges, fetch the chunks, fsync.
 * A diff first checks that every disk of the base is there.  0, or a negative errno with
 * res->error set; free res with download_result_free either way. */
int download_snapshot(struct client *c, const struct download_request *rq,
                      struct download_result *res);
void download_result_free(struct download_result *res);

#endif
