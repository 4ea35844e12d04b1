/* A set of chunk IDs with a small value per ID: the one table gc (the chunks backups reference)
 * and verify (the chunks already checked: ok or bad) use.  Open addressing over the ID's first
 * bytes (IDs are uniformly distributed digests), growing by doubling; not thread-safe.
 *
 *   struct chunk_set s = CHUNK_SET_INIT;
 *   chunk_set_put(&s, &id, CHUNK_STATE_OK);        0 or -ENOMEM
 *   if (chunk_set_get(&s, &id) == CHUNK_STATE_UNKNOWN) ...   not in the set
 *   chunk_set_free(&s);
 */
#ifndef VMEXPORT_REPO_CHUNKSET_H
#define VMEXPORT_REPO_CHUNKSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "repo/repo.h"

/* Values a set holds per ID.  UNKNOWN (0) means "not in the set" and cannot be stored; any
 * other non-zero int8_t can (PRESENT for plain membership, as gc uses it). */
enum chunk_state {
    CHUNK_STATE_UNKNOWN = 0,
    CHUNK_STATE_OK = 1,
    CHUNK_STATE_BAD = -1,
};
#define CHUNK_STATE_PRESENT CHUNK_STATE_OK

struct chunk_set {
    struct repo *repo; /* chunk_set_use_index(): values of indexed IDs kept in its index */
    size_t in_index;   /* IDs whose value is kept there */
    struct chunk_id *ids;
    int8_t *state; /* per slot: CHUNK_STATE_UNKNOWN when empty */
    size_t cap;    /* slots: 0 or a power of two */
    size_t len;    /* IDs held */
};
#define CHUNK_SET_INIT                                                                             \
    {                                                                                              \
        0                                                                                          \
    }

/* Set id's value (adding it when absent).  -EINVAL for CHUNK_STATE_UNKNOWN, -ENOMEM. */
int chunk_set_put(struct chunk_set *s, const struct chunk_id *id, int8_t state);
/* Add id with CHUNK_STATE_PRESENT unless it is in the set already (its value is kept). */
int chunk_set_add(struct chunk_set *s, const struct chunk_id *id);
/* id's value, CHUNK_STATE_UNKNOWN when it is not in the set. */
int8_t chunk_set_get(const struct chunk_set *s, const struct chunk_id *id);
bool chunk_set_has(const struct chunk_set *s, const struct chunk_id *id);
size_t chunk_set_len(const struct chunk_set *s);
/* Keep the value of every ID the index of r (a format-3 repository) names in that index's
 * entry instead of the table: no memory per chunk (verify of a million chunks would otherwise
 * hold a second table of them); other IDs, and all of an older format, go into the table as
 * before.  One such set per repository at a time, freed before r is closed. */
void chunk_set_use_index(struct chunk_set *s, struct repo *r);
/* Free the tables (and clear the values kept in an index); s is empty (CHUNK_SET_INIT)
 * again. */
void chunk_set_free(struct chunk_set *s);

#endif
