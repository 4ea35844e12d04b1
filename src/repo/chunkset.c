/* The chunk-ID set of gc and verify (see chunkset.h): open addressing with linear probing, kept
 * at most half full, doubling when it would be more.
 */
#include "repo/chunkset.h"

#include "repo_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_SET_MIN_CAP 1024 /* slots of a new set; a power of two */
#define CHUNK_SET_LOAD    2    /* grow when more than 1 / CHUNK_SET_LOAD of the slots are used */

static size_t id_hash(const struct chunk_id *id)
{
    size_t h;
    memcpy(&h, id->b, sizeof(h)); /* IDs are uniformly distributed digests */
    return h;
}

/* The slot holding id, or the empty slot where it would go (*found false).  s->cap > 0. */
static size_t slot_of(const struct chunk_set *s, const struct chunk_id *id, bool *found)
{
    size_t mask = s->cap - 1;
    for (size_t i = id_hash(id) & mask;; i = (i + 1) & mask) {
        if (s->state[i] == CHUNK_STATE_UNKNOWN) {
            *found = false;
            return i;
        }
        if (!memcmp(s->ids[i].b, id->b, sizeof(id->b))) {
            *found = true;
            return i;
        }
    }
}

static int grow(struct chunk_set *s)
{
    size_t cap = s->cap ? s->cap * 2 : CHUNK_SET_MIN_CAP;
    if (cap < s->cap || cap > SIZE_MAX / sizeof(struct chunk_id))
        return -ENOMEM;
    struct chunk_set n = {.repo = s->repo,
                          .in_index = s->in_index,
                          .ids = malloc(cap * sizeof(*n.ids)),
                          .state = calloc(cap, 1),
                          .cap = cap};
    if (!n.ids || !n.state) {
        free(n.ids);
        free(n.state);
        return -ENOMEM;
    }
    for (size_t i = 0; i < s->cap; i++) {
        bool found;
        if (s->state[i] == CHUNK_STATE_UNKNOWN)
            continue;
        size_t k = slot_of(&n, &s->ids[i], &found);
        n.ids[k] = s->ids[i];
        n.state[k] = s->state[i];
        n.len++;
    }
    free(s->ids);
    free(s->state);
    *s = n;
    return 0;
}

/* The slot for id, growing first when adding one more could pass the load limit. */
static int slot_for_put(struct chunk_set *s, const struct chunk_id *id, size_t *slot, bool *found)
{
    if ((s->len + 1) * CHUNK_SET_LOAD > s->cap) {
        int r = grow(s);
        if (r < 0)
            return r;
    }
    *slot = slot_of(s, id, found);
    return 0;
}

void chunk_set_use_index(struct chunk_set *s, struct repo *r)
{
    if (r->format_version >= REPO_PACKS_FORMAT)
        s->repo = r;
}

int chunk_set_put(struct chunk_set *s, const struct chunk_id *id, int8_t state)
{
    size_t k;
    bool found;
    if (state == CHUNK_STATE_UNKNOWN)
        return -EINVAL;
    if (s->repo) {
        int8_t old = CHUNK_STATE_UNKNOWN;
        int m = pack_index_mark(s->repo, id, state, &old);
        if (m == 0) {
            s->in_index += old == CHUNK_STATE_UNKNOWN;
            return 0;
        }
        if (m != -ENOENT)
            return m;
    }
    int r = slot_for_put(s, id, &k, &found);
    if (r < 0)
        return r;
    if (!found) {
        s->ids[k] = *id;
        s->len++;
    }
    s->state[k] = state;
    return 0;
}

int chunk_set_add(struct chunk_set *s, const struct chunk_id *id)
{
    size_t k;
    bool found;
    if (s->repo && chunk_set_has(s, id))
        return 0;
    if (s->repo)
        return chunk_set_put(s, id, CHUNK_STATE_PRESENT);
    int r = slot_for_put(s, id, &k, &found);
    if (r < 0 || found)
        return r;
    s->ids[k] = *id;
    s->state[k] = CHUNK_STATE_PRESENT;
    s->len++;
    return 0;
}

int8_t chunk_set_get(const struct chunk_set *s, const struct chunk_id *id)
{
    bool found;
    int8_t v;
    if (s->repo && pack_index_mark(s->repo, id, CHUNK_STATE_UNKNOWN, &v) == 0)
        return v;
    if (!s->cap)
        return CHUNK_STATE_UNKNOWN;
    size_t k = slot_of(s, id, &found);
    return found ? s->state[k] : CHUNK_STATE_UNKNOWN;
}

bool chunk_set_has(const struct chunk_set *s, const struct chunk_id *id)
{
    return chunk_set_get(s, id) != CHUNK_STATE_UNKNOWN;
}

size_t chunk_set_len(const struct chunk_set *s)
{
    return s->len + s->in_index;
}

void chunk_set_free(struct chunk_set *s)
{
    if (s->repo)
        pack_index_clear_marks(s->repo);
    free(s->ids);
    free(s->state);
    *s = (struct chunk_set)CHUNK_SET_INIT;
}
