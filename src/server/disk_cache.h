/* The cache of open snapshot disks, shared by the data routes (routes_data.c) and the code that
 * deletes snapshots (snapshot.c), which empties it before a snapshot's disks go.
 *
 * A download of a disk in small ranges asks the catalog the same question for every request,
 * and a catalog lookup (two SQL statements under the catalog's lock) costs more than the rest of
 * a 4 KiB request; opening the disk again costs a path walk.  The answer -- the VM's snapshot is
 * ready and has this disk -- stays true until the snapshot is deleted, so the disk stays open in
 * a small cache, shared (reference-counted) by the requests that read it.  Deleting a snapshot
 * marks it "deleting" in the catalog, then calls disk_cache_invalidate (a new generation, and
 * the cache emptied) before the provider removes anything: an entry is stored only if the
 * generation read before its catalog lookup is still current, so no entry can outlive a
 * deletion and hold a removed disk's space.  An entry is also used for DISK_CACHE_TTL_MS at most
 * (a bound should anything else edit the catalog).
 */
#ifndef VMEXPORT_SERVER_DISK_CACHE_H
#define VMEXPORT_SERVER_DISK_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "provider/provider.h"
#include "server/range.h"

struct disk_cache;

/* An open snapshot disk. */
struct disk_file {
    struct disk_reader *reader;
    unsigned refs; /* the cache's and the requests'; guarded by the cache lock */
    char *locator; /* for error messages */
    uint64_t size; /* when opened; etag is for this size */
    char etag[HTTP_ETAG_MAX];
};

int disk_cache_new(struct disk_cache **out);
void disk_cache_free(struct disk_cache *c);
/* A snapshot stops being ready: a new generation, and every cached disk forgotten (closed once
 * no request reads it). */
void disk_cache_invalidate(struct disk_cache *c);
/* The generation now: read it before asking the catalog, give it to disk_cache_put. */
unsigned long long disk_cache_gen(struct disk_cache *c);

/* The cached disk of key (len bytes), with a reference for the caller; NULL when not cached or
 * no longer valid. */
struct disk_file *disk_cache_get(struct disk_cache *c, const char *key, size_t len);
/* Cache f for key if the generation is still gen.  Best effort. */
void disk_cache_put(struct disk_cache *c, const char *key, size_t len, struct disk_file *f,
                    unsigned long long gen);

/* A new disk_file of reader (taken) with one reference; NULL when out of memory (the reader is
 * closed then). */
struct disk_file *disk_file_new(struct disk_reader *reader, const char *locator);
/* Another reference to f; dropping the last one closes the reader. */
void disk_file_ref(struct disk_cache *c, struct disk_file *f);
void disk_file_unref(struct disk_cache *c, struct disk_file *f);

#endif
