/* Extent lists and their algebra; see extent.h.
 *
 * All operations are single linear passes over sorted input.  The diff is a merge walk over two
 * streams that cuts the logical address space into segments on which both maps are constant and
 * classifies each segment once, so its cost is O(n + m) and its memory O(1).
 */
#include "extent.h"

#include <assert.h>
#include <errno.h>

static int extent_check(const struct extent *e)
{
    if (e->length == 0)
        return -EINVAL;
    if (e->start > EXTENT_OFFSET_MAX || e->length > EXTENT_OFFSET_MAX - e->start)
        return -ERANGE;
    return 0;
}

int extent_list_validate(const extent_list *l)
{
    uint64_t prev_end = 0;

    for (size_t i = 0; i < l->len; i++) {
        const struct extent *e = &l->ptr[i];
        int r = extent_check(e);
        if (r < 0)
            return r;
        if (i > 0 && e->start < prev_end)
            return -EINVAL;
        prev_end = extent_end(e);
    }
    return 0;
}

/* Would b, placed right after a, read as one extent with a's attributes? */
static bool extent_mergeable(const struct extent *a, const struct extent *b)
{
    if (extent_end(a) != b->start || a->flags != b->flags)
        return false;
    if (a->flags & EXTENT_PHYS_UNKNOWN)
        return true;
    return a->physical + a->length == b->physical;
}

int extent_list_add(extent_list *l, const struct extent *e)
{
    int r = extent_check(e);
    if (r < 0)
        return r;
    if (l->len > 0) {
        struct extent *last = &l->ptr[l->len - 1];
        if (e->start < extent_end(last))
            return -EINVAL;
        if (extent_mergeable(last, e)) {
            last->length += e->length;
            return 0;
        }
    }
    return extent_list_append(l, *e);
}

int extent_list_add_range(extent_list *l, uint64_t start, uint64_t length)
{
    struct extent e = {.start = start, .length = length, .flags = EXTENT_PHYS_UNKNOWN};
    return extent_list_add(l, &e);
}

int extent_list_squash(extent_list *l)
{
    int r = extent_list_validate(l);
    if (r < 0)
        return r;

    size_t w = 0;
    for (size_t i = 0; i < l->len; i++) {
        struct extent e = l->ptr[i];
        if (w > 0) {
            struct extent *last = &l->ptr[w - 1];
            bool same_kind = (last->flags & EXTENT_UNWRITTEN) == (e.flags & EXTENT_UNWRITTEN);
            if (same_kind && extent_end(last) == e.start) {
                bool contiguous = !((last->flags | e.flags) & EXTENT_PHYS_UNKNOWN) &&
                                  last->physical + last->length == e.physical;
                if (!contiguous)
                    last->flags |= EXTENT_PHYS_UNKNOWN;
                last->flags |= e.flags & EXTENT_SHARED;
                last->length += e.length;
                continue;
            }
        }
        l->ptr[w++] = e;
    }
    l->len = w;
    return 0;
}

/* The piece [start, end) of e, with its physical address moved along. */
static struct extent extent_slice(const struct extent *e, uint64_t start, uint64_t end)
{
    assert(start >= e->start && end <= extent_end(e) && start < end);
    struct extent s = *e;
    s.physical = e->physical + (start - e->start);
    s.start = start;
    s.length = end - start;
    return s;
}

/* Append the piece [start, end) of e to out; an empty piece adds nothing. */
static int extent_list_add_slice(extent_list *out, const struct extent *e, uint64_t start,
                                 uint64_t end)
{
    if (start >= end)
        return 0;
    struct extent piece = extent_slice(e, start, end);
    return extent_list_add(out, &piece);
}

/* out = the pieces of a that b covers (covered) or those it does not (!covered), attributes
 * taken from a: one merge walk serves intersection and difference. */
static int extent_list_overlay(const extent_list *a, const extent_list *b, bool covered,
                               extent_list *out)
{
    int r;
    if ((r = extent_list_validate(a)) < 0 || (r = extent_list_validate(b)) < 0)
        return r;

    size_t j = 0;
    for (size_t i = 0; i < a->len; i++) {
        const struct extent *ea = &a->ptr[i];
        uint64_t pos = ea->start; /* where the part of ea not yet passed on starts */
        while (j < b->len && extent_end(&b->ptr[j]) <= ea->start)
            j++;
        for (size_t k = j; k < b->len && b->ptr[k].start < extent_end(ea); k++) {
            const struct extent *eb = &b->ptr[k];
            uint64_t s = ea->start > eb->start ? ea->start : eb->start;
            uint64_t e = extent_end(ea) < extent_end(eb) ? extent_end(ea) : extent_end(eb);
            /* [pos, s) is a gap in b, [s, e) covered by eb. */
            if ((r = extent_list_add_slice(out, ea, covered ? s : pos, covered ? e : s)) < 0)
                return r;
            if (e > pos)
                pos = e;
        }
        if (!covered && (r = extent_list_add_slice(out, ea, pos, extent_end(ea))) < 0)
            return r;
    }
    return 0;
}

int extent_list_intersect(const extent_list *a, const extent_list *b, extent_list *out)
{
    return extent_list_overlay(a, b, true, out);
}

int extent_list_subtract(const extent_list *a, const extent_list *b, extent_list *out)
{
    return extent_list_overlay(a, b, false, out);
}

int extent_list_align(extent_list *l, uint64_t chunk, uint64_t limit)
{
    if (chunk == 0)
        return -EINVAL;
    int r = extent_list_validate(l);
    if (r < 0)
        return r;
    if (limit > EXTENT_OFFSET_MAX)
        limit = EXTENT_OFFSET_MAX; /* rounding up must not carry an end past the largest offset */

    size_t w = 0;
    for (size_t i = 0; i < l->len; i++) {
        struct extent e = l->ptr[i];
        if (e.start >= limit)
            continue; /* wholly past the limit */
        uint64_t s = e.start - e.start % chunk;
        uint64_t end = extent_end(&e);
        if (end >= limit) {
            end = limit;
        } else if (end % chunk != 0) {
            uint64_t add = chunk - end % chunk;
            end = add > limit - end ? limit : end + add;
        }
        if (s >= end)
            continue; /* entirely past the limit */
        if (s != e.start || end != extent_end(&e))
            e.flags |= EXTENT_PHYS_UNKNOWN;
        e.start = s;
        e.length = end - s;

        if (w > 0 && e.start <= extent_end(&l->ptr[w - 1])) {
            struct extent *last = &l->ptr[w - 1];
            if (!extent_mergeable(last, &e))
                last->flags = (last->flags & e.flags & EXTENT_UNWRITTEN) | EXTENT_PHYS_UNKNOWN;
            if (extent_end(&e) > extent_end(last))
                last->length = extent_end(&e) - last->start;
            continue;
        }
        l->ptr[w++] = e;
    }
    l->len = w;
    return 0;
}

size_t extent_list_find(const extent_list *l, uint64_t off)
{
    size_t lo = 0, hi = l->len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (extent_end(&l->ptr[mid]) <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

uint64_t extent_list_bytes(const extent_list *l)
{
    uint64_t total = 0;
    for (size_t i = 0; i < l->len; i++)
        total += l->ptr[i].length;
    return total;
}

static int list_source_next(void *opaque, struct extent *e)
{
    struct extent_list_cursor *c = opaque;
    if (c->i >= c->list->len)
        return 0;
    *e = c->list->ptr[c->i++];
    return 1;
}

struct extent_source extent_list_source(struct extent_list_cursor *c, const extent_list *l)
{
    c->list = l;
    c->i = 0;
    return (struct extent_source){.next = list_source_next, .opaque = c};
}

static int list_sink_emit(void *opaque, uint64_t start, uint64_t length)
{
    return extent_list_add_range(opaque, start, length);
}

struct extent_sink extent_list_sink(extent_list *l)
{
    return (struct extent_sink){.emit = list_sink_emit, .opaque = l};
}

/* One side of the merge walk: the current extent of a stream, clipped to the file size. */
struct walk {
    struct extent_source *src;
    uint64_t limit;    /* file size: nothing at or past it exists */
    uint64_t last_end; /* end of the previous extent read, to check ordering */
    struct extent cur;
    bool have;
    bool done;
};

/* Make cur the first extent that ends after pos, or set done. */
static int walk_seek(struct walk *w, uint64_t pos)
{
    while (!w->done && (!w->have || extent_end(&w->cur) <= pos)) {
        struct extent e;
        int r = w->src->next(w->src->opaque, &e);
        if (r < 0)
            return r;
        w->have = false;
        if (r == 0) {
            w->done = true;
            break;
        }
        if ((r = extent_check(&e)) < 0)
            return r;
        if (e.start < w->last_end)
            return -EINVAL;
        w->last_end = extent_end(&e);
        if (e.start >= w->limit) {
            w->done = true; /* sorted input: nothing further can be below the size */
            break;
        }
        if (extent_end(&e) > w->limit)
            e.length = w->limit - e.start;
        w->cur = e;
        w->have = true;
    }
    return 0;
}

/* Coalesces adjacent ranges before handing them to a sink. */
struct pending {
    struct extent_sink *sink;
    uint64_t start, length;
};

static int pending_flush(struct pending *p)
{
    if (p->length == 0)
        return 0;
    int r = p->sink->emit(p->sink->opaque, p->start, p->length);
    p->length = 0;
    return r;
}

static int pending_add(struct pending *p, uint64_t start, uint64_t end)
{
    if (p->length > 0 && p->start + p->length == start) {
        p->length += end - start;
        return 0;
    }
    int r = pending_flush(p);
    p->start = start;
    p->length = end - start;
    return r;
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

int extent_diff_stream(struct extent_source *base, uint64_t base_size, struct extent_source *new,
                       uint64_t new_size, struct extent_sink *changed, struct extent_sink *zeroed)
{
    if (base_size > EXTENT_OFFSET_MAX || new_size > EXTENT_OFFSET_MAX)
        return -ERANGE;

    struct walk b = {.src = base, .limit = base_size};
    struct walk n = {.src = new, .limit = new_size};
    struct pending chg = {.sink = changed};
    struct pending zer = {.sink = zeroed};
    uint64_t pos = 0;
    int r;

    while (pos < new_size) {
        if ((r = walk_seek(&b, pos)) < 0 || (r = walk_seek(&n, pos)) < 0)
            return r;
        if (!b.have && !n.have)
            break; /* holes on both sides up to new_size */

        bool in_b = b.have && b.cur.start <= pos;
        bool in_n = n.have && n.cur.start <= pos;
        uint64_t end = new_size;
        if (b.have)
            end = min_u64(end, in_b ? extent_end(&b.cur) : b.cur.start);
        if (n.have)
            end = min_u64(end, in_n ? extent_end(&n.cur) : n.cur.start);
        assert(end > pos);

        bool b_data = in_b && extent_is_data(&b.cur);
        bool n_data = in_n && extent_is_data(&n.cur);
        if (n_data) {
            bool same = b_data && !((b.cur.flags | n.cur.flags) & EXTENT_PHYS_UNKNOWN) &&
                        b.cur.physical + (pos - b.cur.start) ==
                            n.cur.physical + (pos - n.cur.start);
            if (!same && (r = pending_add(&chg, pos, end)) < 0)
                return r;
        } else if (b_data) {
            if ((r = pending_add(&zer, pos, end)) < 0)
                return r;
        }
        pos = end;
    }

    if ((r = pending_flush(&chg)) < 0)
        return r;
    return pending_flush(&zer);
}

int extent_list_diff(const extent_list *base, uint64_t base_size, const extent_list *new,
                     uint64_t new_size, extent_list *changed, extent_list *zeroed)
{
    struct extent_list_cursor cb, cn;
    struct extent_source sb = extent_list_source(&cb, base);
    struct extent_source sn = extent_list_source(&cn, new);
    struct extent_sink kc = extent_list_sink(changed);
    struct extent_sink kz = extent_list_sink(zeroed);
    return extent_diff_stream(&sb, base_size, &sn, new_size, &kc, &kz);
}
