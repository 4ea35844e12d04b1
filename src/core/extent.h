/* Extent lists and their algebra.
 *
 * An extent is a logical byte range of a file, optionally with the physical address it maps to
 * on the device.  Lists are kept sorted by start and non-overlapping; extent_list_validate()
 * checks that, and every operation here assumes it (and asserts it in debug builds).
 *
 * The heart is the diff of two extent maps (extent_diff_stream()): a linear merge walk that
 * says which logical ranges of a newer file hold data that is not physically the same as in a
 * base file (changed), and which ranges were data in the base but are now holes or unwritten
 * (zeroed).  It works on streams so that maps of any size are diffed in bounded memory.
 */
#ifndef VMEXPORT_CORE_EXTENT_H
#define VMEXPORT_CORE_EXTENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vector.h"

/* The largest offset a file can have (off_t is signed 64-bit). */
#define EXTENT_OFFSET_MAX ((uint64_t)INT64_MAX)

enum extent_flags {
    EXTENT_SHARED = 1u << 0,        /* physical blocks are shared with another file (reflink) */
    EXTENT_UNWRITTEN = 1u << 1,     /* allocated but reads as zeros: not data */
    EXTENT_PHYS_UNKNOWN = 1u << 2,  /* physical address unknown or not comparable */
};

struct extent {
    uint64_t start;    /* logical offset in bytes */
    uint64_t length;   /* bytes, > 0 */
    uint64_t physical; /* device offset of start; meaningless with EXTENT_PHYS_UNKNOWN */
    uint32_t flags;    /* enum extent_flags */
};

static inline uint64_t extent_end(const struct extent *e)
{
    return e->start + e->length;
}

static inline bool extent_is_data(const struct extent *e)
{
    return !(e->flags & EXTENT_UNWRITTEN);
}

DEFINE_VECTOR_TYPE(extent_list, struct extent);

/* A pull-style source of extents in ascending order.  next() returns 1 and fills *e, 0 at the
 * end, or a negative errno. */
struct extent_source {
    int (*next)(void *opaque, struct extent *e);
    void *opaque;
};

/* A push-style consumer of ranges.  emit() returns 0 or a negative errno that stops the caller. */
struct extent_sink {
    int (*emit)(void *opaque, uint64_t start, uint64_t length);
    void *opaque;
};

/* 0 if the list is sorted, non-overlapping, has no zero-length extent and ends at or before
 * EXTENT_OFFSET_MAX; -EINVAL otherwise (-ERANGE for offsets past EXTENT_OFFSET_MAX). */
int extent_list_validate(const extent_list *l);

/* Appends, checking order and range; adjacent ranges with compatible attributes are merged. */
int extent_list_add(extent_list *l, const struct extent *e);

/* Append a plain logical range (no physical address); merges with a touching predecessor. */
int extent_list_add_range(extent_list *l, uint64_t start, uint64_t length);

/* Merge logically contiguous extents of the same kind (data or unwritten) in place: the
 * "squashChunks" rule.  The merged extent keeps the first physical address; it is marked
 * EXTENT_PHYS_UNKNOWN when the pieces were not physically contiguous. */
int extent_list_squash(extent_list *l);

/* out = ranges covered by both a and b (attributes and physical address taken from a). */
int extent_list_intersect(const extent_list *a, const extent_list *b, extent_list *out);

/* out = ranges of a not covered by b (attributes taken from a). */
int extent_list_subtract(const extent_list *a, const extent_list *b, extent_list *out);

/* Round every extent outward to multiples of chunk (a power of two or any non-zero value) and
 * merge what then overlaps or touches; results are clipped to limit (pass EXTENT_OFFSET_MAX for
 * none) and extents starting at or past limit are dropped.  Physical addresses become unknown
 * where an extent moved. */
int extent_list_align(extent_list *l, uint64_t chunk, uint64_t limit);

/* Index of the first extent ending after off (l->len when none): where a walk over the extents
 * overlapping [off, ...) starts.  Binary search, O(log n). */
size_t extent_list_find(const extent_list *l, uint64_t off);

/* Total number of bytes covered. */
uint64_t extent_list_bytes(const extent_list *l);

/* An extent_source reading from a list. */
struct extent_list_cursor {
    const extent_list *list;
    size_t i;
};
struct extent_source extent_list_source(struct extent_list_cursor *c, const extent_list *l);

/* An extent_sink appending ranges to a list. */
struct extent_sink extent_list_sink(extent_list *l);

/* Diff a newer map against a base map.
 *
 * Positions past a file's size count as holes.  For every logical range below new_size:
 *   - data in new, and not data at the same physical address in base  -> changed;
 *   - not data in new (hole or unwritten), data in base                 -> zeroed.
 * Extents with EXTENT_PHYS_UNKNOWN never match.  Both sources must be sorted and
 * non-overlapping (-EINVAL otherwise).  Output ranges are emitted in order, coalesced.
 * Applying the result to a copy of base (new bytes over changed, zeros over zeroed, truncate to
 * new_size) reproduces new, provided equal physical addresses imply equal data (reflink clones
 * whose base still exists). */
int extent_diff_stream(struct extent_source *base, uint64_t base_size, struct extent_source *new,
                       uint64_t new_size, struct extent_sink *changed, struct extent_sink *zeroed);

/* The same over two lists, appending to changed and zeroed. */
int extent_list_diff(const extent_list *base, uint64_t base_size, const extent_list *new,
                     uint64_t new_size, extent_list *changed, extent_list *zeroed);

#endif
