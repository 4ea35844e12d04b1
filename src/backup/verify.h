/* The verify engine: read back what the backups of a repository reference and check it.
 *
 * Every manifest of the backups (or of one backup) is read, and every chunk they reference is
 * read, decrypted, decompressed and checked against its ID, once however many backups share
 * it; a sample reads a deterministic fraction of the chunks (chosen by ID, so the same ones
 * each run).  What is found is reported through a callback as it is found (the caller prints
 * it); the counts come back in a result.  Nothing is printed here. */
#ifndef VMEXPORT_BACKUP_VERIFY_H
#define VMEXPORT_BACKUP_VERIFY_H

#include <stdbool.h>
#include <stdint.h>

#include "repo/repo.h"

enum verify_finding_kind {
    VERIFY_BACKUP_OK,        /* a backup whose manifests and chunks all passed */
    VERIFY_METADATA_DAMAGED, /* backup.json cannot be read or checked */
    VERIFY_MANIFEST_DAMAGED, /* a disk's manifest cannot be read (error: why) */
    VERIFY_CHUNK_DAMAGED,    /* a chunk fails its checks */
    VERIFY_CHUNK_MISSING,    /* a chunk is not in the repository */
};

/* One thing found.  Strings are valid during the callback only. */
struct verify_finding {
    enum verify_finding_kind kind;
    const char *backup; /* its ID ("VM/ID" as stored, for damaged metadata found by listing) */
    const char *disk;   /* the disk, for manifests and chunks */
    uint64_t offset;    /* the chunk's offset in the disk */
    struct chunk_id id; /* the chunk */
    int error;          /* negative errno, for a damaged manifest */
};

struct verify_options {
    struct repo *repo;
    const char *backup_id; /* only this backup; NULL: every backup */
    double sample;         /* percentage of the chunks to read, in (0, 100]; 0 means 100 */
    unsigned lock_timeout; /* seconds to wait for a gc or prune holding the repository */
    /* Called (from the calling thread) for each finding; may be NULL. */
    void (*report)(void *opaque, const struct verify_finding *f);
    void *opaque;
};

struct verify_result {
    uint64_t backups;         /* backups whose metadata could be read and that were checked */
    uint64_t damaged_backups; /* backups with damaged metadata, manifests or chunks */
    uint64_t chunks_checked;  /* distinct chunks read */
    uint64_t chunks_damaged;  /* of those, damaged or missing */
    char err[512];            /* when verify_run fails: the thing and the cause */
};

/* Check the backups.  0 when the check ran (damage is counted in res, not an error); a
 * negative errno when it could not (the lock, a backup not found, out of memory), with
 * res->err saying why. */
int verify_run(const struct verify_options *o, struct verify_result *res);

#endif
