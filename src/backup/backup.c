/* The backup engine (backup.h): snapshot, plan, read, chunk, store, commit.
 *
 * Planning: the server says, per disk, which ranges hold changed data ("changedArea" with
 * zeroedInChanged=false) and which became zeros ("zeroedArea") since the disk's change ID in the
 * base snapshot, or which hold data at all ("*") for a first or full backup, a page of areas per
 * request (GET .../changes), so a very fragmented disk never needs one huge answer in memory.
 * Every chunk either list touches is rebuilt; the others are the previous manifest's.  The
 * touched chunks are a sorted list of indexes made from those pages (no bitmap of the disk):
 * memory follows the data or the change, never the disk's logical size.
 *
 * Reading: per disk, --jobs fetch threads read the touched chunks through the disk's source
 * (only the changed ranges, laid over the previous backup's chunk, or zeros), and hand them
 * through a bounded queue to two process threads per CPU that hash, compress and write them
 * into a chunk batch; holes are neither read nor cleared: a chunk's blocks outside the ranges
 * read are marked zero blocks (repo.h), which cost nothing to hash or store; a flush thread makes
 * the batch durable (one syncfs, then renames) every FLUSH_BYTES and at the end of the disk. Memory
 * stays bounded by the buffer pool: (jobs + process threads + 1) chunk buffers.  The first failure
 * (core/pool.h) stops every thread.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup/backup.h"
#include "backup/source.h"
#include "client/client.h"
#include "client/rest.h"
#include "core/cleanup.h"
#include "core/clock.h"
#include "core/extent.h"
#include "core/hash.h"
#include "core/hex.h"
#include "core/lock.h"
#include "core/names.h"
#include "core/pool.h"
#include "repo/repo.h"

/* Pending container bytes that make the flush thread sync and publish the batch: bounds the
 * work an interrupted backup loses (its temporary files are removed by gc). */
#define FLUSH_BYTES ((uint64_t)512 << 20)
/* Changed ranges of one chunk closer than this are read as one range (a request costs more
 * than reading a few more bytes). */
#define FETCH_GAP ((uint64_t)256 << 10)
/* More ranges than this in one chunk (after merging): read their whole span at once. */
#define FETCH_MAX_RANGES 16
/* A source that reads many ranges per request (https) gets the ranges of up to GROUP_CHUNKS
 * chunks, GROUP_BYTES of them at most, in one request: a request costs far more than a small
 * range (4 TiB disk, 65,536 scattered 4 KiB extents: 20.5 s with one request per chunk). */
#define GROUP_CHUNKS 16
#define GROUP_BYTES  ((uint64_t)4 << 20)
/* A chunk with more to read than this is read alone, range by range: multipart answers carry
 * blocks of zeros that a single range's sparse answer leaves out, and a request costs little
 * beside that much data. */
#define GROUP_RANGE_BYTES ((uint64_t)64 << 10)
/* Alignment of the chunk buffers: what O_DIRECT reads of local snapshot files need. */
#define DIRECT_ALIGN 4096
/* Process threads per CPU: each also waits for its chunk writes (O_DIRECT, synchronous), so
 * one per CPU leaves the CPUs idle during writes (8 GiB local backup: 4.8-5.1 s with 1 per CPU,
 * 4.4-4.5 s with 2; 3 gave nothing more and a third more memory). */
#define PROCESS_THREADS_PER_CPU 2
/* Process threads: at most this many. */
#define MAX_PROCESS_THREADS 16
/* Room for a source's reason for a failed read or open. */
#define WHY_MAX 512
/* The label this repository's backups give their snapshots on the server, followed by the
 * repository ID (its SHA-256 when the ID is not plain hex), so that the next backup
 * recognises one left by a backup that was killed. */
#define SNAPSHOT_LABEL_PREFIX "vmexport-backup:"

/* One disk: what to read and where to read it from. */
struct disk_plan {
    const char *name; /* in the snapshot answer */
    uint64_t size;
    const char *change_id; /* in the snapshot answer */
    uint64_t *todo;        /* the chunks to rebuild: indexes, strictly increasing */
    size_t ntodo, todo_cap;
    uint64_t touched_bytes;
    extent_list changed; /* ranges whose data must be read from the new snapshot */
    extent_list zeroed;  /* ranges that read as zeros now (an incremental disk's only) */
    struct manifest prev;
    bool have_prev;    /* prev holds the previous backup's manifest of the disk */
    const char *since; /* with have_prev: the disk's change ID in the previous backup */
    bool incremental;  /* the lists are the changes since prev's snapshot */
    char *full_reason; /* when not incremental: why (malloc'd) */
    struct source *src;
};

/* One chunk travelling from a fetch thread to a process thread. */
struct chunk_item {
    size_t k; /* position in the disk's todo list */
    uint64_t idx;
    size_t len;
    uint8_t *buf;
    uint64_t mask[CHUNK_MASK_WORDS]; /* zero blocks: not read, not cleared */
    struct extent want[FETCH_MAX_RANGES]; /* what to read, relative to the chunk */
    size_t nwant;
};

/* What became of one chunk of the todo list. */
struct chunk_result {
    struct chunk_id id;
    bool stored; /* false: all zeros */
};

struct backup_ctx {
    const struct backup_options *o;
    struct repo *repo;
    struct client **clients;
    unsigned jobs, nprocess;
    struct chunk_batch *batch;
    atomic_ullong chunks_reused, chunks_fetched, bytes_read;
    struct first_error fe;
    /* per disk */
    const struct disk_plan *plan;
    struct manifest *m;
    struct chunk_result *results; /* per todo entry */
    atomic_size_t next;
    /* the queue between fetch and process threads, and the pool of free items */
    pthread_mutex_t q_lock;
    pthread_cond_t q_full_cv, q_free_cv;
    struct chunk_item *items;
    struct chunk_item **free_items, **full_items;
    size_t nitems, nfree, full_head, nfull;
    unsigned fetchers_left;
    /* the flush thread */
    pthread_cond_t flush_cv;
    bool flush_wanted, flush_stop;
};

struct fetch_arg {
    struct backup_ctx *b;
    unsigned worker;
};

static void warn(struct backup_ctx *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void warn(struct backup_ctx *b, const char *fmt, ...)
{
    if (!b->o->warn)
        return;
    char msg[BACKUP_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    b->o->warn(b->o->opaque, msg);
}

static const char *store_error(int r)
{
    return r == -ENOSPC ? "no space left in the repository" : strerror(-r);
}

/* store_error() of the backup writer's calls (manifests, commit), where -ETIMEDOUT says that
 * the writer's lock lease was lost. */
static const char *writer_error(int r)
{
    if (r == -ETIMEDOUT)
        return "the repository lock's lease was lost (the backup was stalled or cut off from "
               "the store for longer than the lease, and gc may have run): nothing was committed";
    return store_error(r);
}

/* first_error's wake: every thread waiting on the queue sees the failure. */
static void wake_all(void *arg)
{
    struct backup_ctx *b = arg;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&b->q_lock);
    pthread_cond_broadcast(&b->q_full_cv);
    pthread_cond_broadcast(&b->q_free_cv);
}

/* ---- the queue ---- */

/* A free item, waiting for one; NULL once the run failed. */
static struct chunk_item *queue_get_free(struct backup_ctx *b)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&b->q_lock);
    while (!b->nfree && !first_error_failed(&b->fe))
        pthread_cond_wait(&b->q_free_cv, &b->q_lock);
    return first_error_failed(&b->fe) ? NULL : b->free_items[--b->nfree];
}

static void queue_put_free(struct backup_ctx *b, struct chunk_item *it)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&b->q_lock);
    b->free_items[b->nfree++] = it;
    pthread_cond_signal(&b->q_free_cv);
}

static void queue_push_full(struct backup_ctx *b, struct chunk_item *it)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&b->q_lock);
    b->full_items[(b->full_head + b->nfull++) % b->nitems] = it;
    pthread_cond_signal(&b->q_full_cv);
}

/* The next chunk to process; NULL when the fetch threads are done and the queue is empty, or
 * the run failed. */
static struct chunk_item *queue_pop_full(struct backup_ctx *b)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&b->q_lock);
    while (!b->nfull && b->fetchers_left && !first_error_failed(&b->fe))
        pthread_cond_wait(&b->q_full_cv, &b->q_lock);
    if (!b->nfull || first_error_failed(&b->fe))
        return NULL;
    struct chunk_item *it = b->full_items[b->full_head];
    b->full_head = (b->full_head + 1) % b->nitems;
    b->nfull--;
    return it;
}

/* n fetch threads are done (or never started): the queue can drain. */
static void fetchers_done(struct backup_ctx *b, unsigned n)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&b->q_lock);
    b->fetchers_left -= n;
    pthread_cond_broadcast(&b->q_full_cv);
}

/* ---- fetch threads ---- */

/* Read [off, off + len) of the disk into buf through its source. */
static int fetch_range(struct backup_ctx *b, unsigned worker, uint64_t off, uint64_t len,
                       uint8_t *buf)
{
    char why[WHY_MAX];
    int r = source_pread(b->plan->src, worker, buf, len, off, why, sizeof(why));
    if (r < 0)
        return first_error_set(&b->fe, r,
                               "VM %s: disk %s: reading %" PRIu64 " bytes at %" PRIu64 ": %s",
                               b->o->vm, b->m->disk, len, off, why);
    atomic_fetch_add(&b->bytes_read, len);
    return 0;
}

/* The part of extent e inside the chunk [off, end), as offsets from off (e overlaps it). */
static struct extent extent_clip(const struct extent *e, uint64_t off, uint64_t end)
{
    uint64_t s = e->start > off ? e->start - off : 0;
    uint64_t x = (extent_end(e) < end ? extent_end(e) : end) - off;
    return (struct extent){.start = s, .length = x - s};
}

/* Mark every block of a chunk of len bytes a zero block: nothing read yet. */
static void mask_all(uint64_t *mask, size_t len)
{
    size_t nb = (len + CHUNK_BLOCK - 1) / CHUNK_BLOCK;
    memset(mask, 0, CHUNK_MASK_WORDS * sizeof(*mask));
    memset(mask, 0xff, nb / 64 * sizeof(*mask));
    if (nb % 64)
        mask[nb / 64] = ((uint64_t)1 << (nb % 64)) - 1;
}

/* Bytes [s, e) of the chunk (len bytes) are about to be read into buf: their blocks stop
 * being zero blocks, and the bytes of those blocks outside [s, e) are cleared. */
static void mask_unmark(uint8_t *buf, uint64_t *mask, size_t len, size_t s, size_t e)
{
    for (size_t k = s / CHUNK_BLOCK; k * CHUNK_BLOCK < e; k++) {
        if (!chunk_mask_test(mask, k))
            continue;
        size_t bs = k * CHUNK_BLOCK, be = bs + CHUNK_BLOCK < len ? bs + CHUNK_BLOCK : len;
        if (bs < s)
            memset(buf + bs, 0, s - bs);
        if (be > e)
            memset(buf + e, 0, be - e);
        mask[k / 64] &= ~((uint64_t)1 << (k % 64));
    }
}

/* Bytes [s, e) of the chunk (len bytes) in buf become zeros: the blocks inside are marked,
 * the rest cleared. */
static void mask_zero(uint8_t *buf, uint64_t *mask, size_t len, size_t s, size_t e)
{
    for (size_t k = s / CHUNK_BLOCK; k * CHUNK_BLOCK < e; k++) {
        if (chunk_mask_test(mask, k))
            continue;
        size_t bs = k * CHUNK_BLOCK, be = bs + CHUNK_BLOCK < len ? bs + CHUNK_BLOCK : len;
        if (bs >= s && be <= e) {
            chunk_mask_set(mask, k);
        } else {
            size_t a = bs > s ? bs : s, z = be < e ? be : e;
            memset(buf + a, 0, z - a);
        }
    }
}

/* Build chunk it->idx in it->buf and it->mask: only the changed ranges come from the source;
 * the rest is the previous backup's chunk with the zeroed ranges cleared (incremental) or
 * zeros (a first backup: outside the data extents a disk reads as zeros).  Zeros are zero
 * blocks of the mask where whole blocks are, never read nor written.  The server's changes
 * are block-precise and never under-report, so this gives the new snapshot's bytes exactly. */
static int fetch_chunk_plan(struct backup_ctx *b, struct chunk_item *it)
{
    const struct disk_plan *d = b->plan;
    const uint32_t cs = b->m->chunk_size;
    const uint64_t i = it->idx, off = i * cs, end = off + it->len;

    /* The ranges to read, relative to off: changed ranges clipped to the chunk, merged across
     * small gaps; too many become one span. */
    struct extent *want = it->want;
    size_t nwant = 0;
    bool span = false;
    for (size_t k = extent_list_find(&d->changed, off); k < d->changed.len; k++) {
        const struct extent *a = &d->changed.ptr[k];
        if (a->start >= end)
            break;
        struct extent part = extent_clip(a, off, end);
        uint64_t s = part.start, e = extent_end(&part);
        if (nwant && s <= extent_end(&want[nwant - 1]) + FETCH_GAP) {
            want[nwant - 1].length = e - want[nwant - 1].start;
        } else if (nwant == FETCH_MAX_RANGES) {
            span = true;
            want[nwant - 1].length = e - want[nwant - 1].start;
        } else {
            want[nwant++] = part;
        }
    }
    if (span) {
        want[0].length = extent_end(&want[nwant - 1]) - want[0].start;
        nwant = 1;
    }
    bool whole = nwant == 1 && want[0].start == 0 && want[0].length == it->len;

    /* The base the ranges are laid on. */
    const struct manifest_entry *pe = d->incremental ? manifest_find(&d->prev, i) : NULL;
    if (pe) {
        uint64_t plen = d->prev.disk_size - off < cs ? d->prev.disk_size - off : cs;
        if (off >= d->prev.disk_size || plen != it->len)
            whole = true; /* the chunk changed length: read it all */
    }
    /* Where the disk grew or shrank, read touched chunks past the old end whole. */
    if (d->incremental && d->prev.disk_size != d->size && end > d->prev.disk_size)
        whole = true;
    if (whole) {
        nwant = 1;
        want[0] = (struct extent){.start = 0, .length = it->len};
        memset(it->mask, 0, sizeof(it->mask));
    } else if (pe) {
        size_t got = 0;
        int r = repo_chunk_read_sparse(b->repo, &pe->id, it->buf, cs, &got, it->mask);
        if (r < 0 || got != it->len) {
            /* A damaged or missing base chunk: read the whole chunk again instead. */
            char hex[2 * HASH_SIZE + 1];
            chunk_id_to_hex(&pe->id, hex);
            warn(b,
                 "disk %s: previous chunk %s is %s; reading the whole chunk at %" PRIu64 " again",
                 b->m->disk, hex, r == -ENOENT ? "missing" : "damaged", off);
            nwant = 1;
            want[0] = (struct extent){.start = 0, .length = it->len};
            memset(it->mask, 0, sizeof(it->mask));
        } else {
            for (size_t k = extent_list_find(&d->zeroed, off); k < d->zeroed.len; k++) {
                const struct extent *a = &d->zeroed.ptr[k];
                if (a->start >= end)
                    break;
                struct extent part = extent_clip(a, off, end);
                mask_zero(it->buf, it->mask, it->len, (size_t)part.start,
                          (size_t)extent_end(&part));
            }
        }
    } else {
        mask_all(it->mask, it->len);
    }
    /* A range merged across a gap may cover zeroed bytes: they read as zeros. */
    for (size_t k = 0; k < nwant; k++)
        mask_unmark(it->buf, it->mask, it->len, (size_t)want[k].start,
                    (size_t)extent_end(&want[k]));
    it->nwant = nwant;
    return 0;
}

/* Build chunk it->idx (fetch_chunk_plan), reading its ranges one by one. */
static int fetch_chunk(struct backup_ctx *b, unsigned worker, struct chunk_item *it)
{
    int r = fetch_chunk_plan(b, it);
    const uint64_t off = it->idx * b->m->chunk_size;
    for (size_t k = 0; r == 0 && k < it->nwant; k++)
        r = fetch_range(b, worker, off + it->want[k].start, it->want[k].length,
                        it->buf + it->want[k].start);
    if (r == 0)
        atomic_fetch_add(&b->chunks_fetched, 1);
    return r;
}

/* The chunks of one grouped request, in increasing order, and where the bytes go. */
struct group {
    struct backup_ctx *b;
    struct chunk_item *items[GROUP_CHUNKS];
    size_t n, cur; /* cur: the item the last bytes went to (bytes come in order) */
    struct client_range ranges[SOURCE_MAX_RANGES];
    size_t nranges;
    uint64_t bytes;
};

/* Bytes of the group's ranges into their chunks' buffers. */
static int group_put(void *arg, uint64_t off, const void *data, size_t n)
{
    struct group *g = arg;
    const uint32_t cs = g->b->m->chunk_size;
    const uint8_t *p = data;
    while (n) {
        uint64_t idx = off / cs;
        if (g->cur >= g->n || g->items[g->cur]->idx > idx)
            g->cur = 0; /* a repeated request starts again */
        while (g->cur < g->n && g->items[g->cur]->idx < idx)
            g->cur++;
        if (g->cur == g->n || g->items[g->cur]->idx != idx)
            return -EPROTO;
        struct chunk_item *it = g->items[g->cur];
        size_t at = (size_t)(off - idx * cs);
        if (at >= it->len)
            return -EPROTO;
        size_t k = it->len - at < n ? it->len - at : n;
        memcpy(it->buf + at, p, k);
        off += k;
        p += k;
        n -= k;
    }
    return 0;
}

/* Add the planned ranges of it (the group's last chunk) to the group's request, joining
 * ranges that touch. */
static void group_add_ranges(struct group *g, const struct chunk_item *it, uint32_t cs)
{
    for (size_t k = 0; k < it->nwant; k++) {
        uint64_t off = it->idx * cs + it->want[k].start, len = it->want[k].length;
        struct client_range *last = g->nranges ? &g->ranges[g->nranges - 1] : NULL;
        if (last && last->off + last->len == off)
            last->len += len;
        else
            g->ranges[g->nranges++] = (struct client_range){.off = off, .len = len};
        g->bytes += len;
    }
}

/* Fetch-thread loop for a source that reads many ranges at once: claim chunks, plan them and
 * read up to GROUP_CHUNKS of them (GROUP_BYTES, SOURCE_MAX_RANGES) in one request. */
static void fetch_groups(struct backup_ctx *b, unsigned worker)
{
    const uint32_t cs = b->m->chunk_size;
    struct group g = {.b = b};
    bool more = true;
    while (more) {
        g.n = g.cur = g.nranges = 0;
        g.bytes = 0;
        while (g.n < GROUP_CHUNKS && g.bytes < GROUP_BYTES &&
               g.nranges + FETCH_MAX_RANGES <= SOURCE_MAX_RANGES) {
            size_t k = atomic_fetch_add(&b->next, 1);
            if (k >= b->plan->ntodo || first_error_failed(&b->fe)) {
                more = false;
                break;
            }
            struct chunk_item *it = queue_get_free(b);
            if (!it) {
                more = false;
                break;
            }
            it->k = k;
            it->idx = b->plan->todo[k];
            uint64_t off = it->idx * cs;
            it->len = b->m->disk_size - off < cs ? (size_t)(b->m->disk_size - off) : cs;
            if (fetch_chunk_plan(b, it) < 0) {
                queue_put_free(b, it);
                more = false;
                break;
            }
            uint64_t bytes = 0;
            for (size_t w = 0; w < it->nwant; w++)
                bytes += it->want[w].length;
            if (bytes > GROUP_RANGE_BYTES) {
                /* Big ranges go alone: their blocks of zeros need not cross the network
                 * (sparse answers are for single ranges). */
                int r = 0;
                for (size_t w = 0; r == 0 && w < it->nwant; w++)
                    r = fetch_range(b, worker, off + it->want[w].start, it->want[w].length,
                                    it->buf + it->want[w].start);
                if (r < 0) {
                    queue_put_free(b, it);
                    more = false;
                    break;
                }
                atomic_fetch_add(&b->chunks_fetched, 1);
                queue_push_full(b, it);
                continue;
            }
            g.items[g.n++] = it;
            group_add_ranges(&g, it, cs);
        }
        int r = first_error_failed(&b->fe) ? -ECANCELED : 0;
        if (r == 0 && g.nranges) {
            char why[WHY_MAX];
            r = b->plan->src->ops->read_ranges(b->plan->src, worker, g.ranges, g.nranges,
                                               group_put, &g, why, sizeof(why));
            if (r < 0) {
                first_error_set(&b->fe, r,
                                "VM %s: disk %s: reading %zu ranges from %" PRIu64 " on: %s",
                                b->o->vm, b->m->disk, g.nranges, g.ranges[0].off, why);
            } else {
                atomic_fetch_add(&b->bytes_read, g.bytes);
            }
        }
        for (size_t i = 0; i < g.n; i++) {
            if (r < 0) {
                queue_put_free(b, g.items[i]);
            } else {
                atomic_fetch_add(&b->chunks_fetched, 1);
                queue_push_full(b, g.items[i]);
            }
        }
        if (r < 0)
            more = false;
    }
}

static void *fetch_worker(void *opaque)
{
    struct fetch_arg *a = opaque;
    struct backup_ctx *b = a->b;
    const uint32_t cs = b->m->chunk_size;
    if (b->plan->src->ops->read_ranges) {
        fetch_groups(b, a->worker);
        fetchers_done(b, 1);
        return NULL;
    }
    for (;;) {
        size_t k = atomic_fetch_add(&b->next, 1);
        if (k >= b->plan->ntodo || first_error_failed(&b->fe))
            break;
        struct chunk_item *it = queue_get_free(b);
        if (!it)
            break;
        it->k = k;
        it->idx = b->plan->todo[k];
        uint64_t off = it->idx * cs;
        it->len = b->m->disk_size - off < cs ? (size_t)(b->m->disk_size - off) : cs;
        if (fetch_chunk(b, a->worker, it) < 0) {
            queue_put_free(b, it);
            break;
        }
        queue_push_full(b, it);
    }
    fetchers_done(b, 1);
    return NULL;
}

/* ---- process and flush threads ---- */

static void request_flush(struct backup_ctx *b)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&b->q_lock);
    b->flush_wanted = true;
    pthread_cond_signal(&b->flush_cv);
}

static void *process_worker(void *opaque)
{
    struct backup_ctx *b = opaque;
    const uint32_t cs = b->m->chunk_size;
    struct chunk_item *it;
    while ((it = queue_pop_full(b))) {
        struct chunk_result *res = &b->results[it->k];
        if (repo_chunk_is_zero(it->buf, it->len, it->mask)) {
            res->stored = false;
        } else {
            uint64_t pending = 0;
            repo_chunk_id_sparse(b->repo, it->buf, it->len, it->mask, &res->id);
            res->stored = true;
            int r = repo_chunk_batch_put_sparse(b->batch, &res->id, it->buf, it->len, it->mask,
                                                &pending);
            if (r < 0) {
                first_error_set(&b->fe, r, "VM %s: disk %s: storing the chunk at %" PRIu64 ": %s",
                                b->o->vm, b->m->disk, it->idx * cs, store_error(r));
                queue_put_free(b, it);
                break;
            }
            if (pending >= FLUSH_BYTES)
                request_flush(b);
        }
        if (b->o->progress)
            b->o->progress(b->o->opaque, it->len);
        queue_put_free(b, it);
    }
    return NULL;
}

/* Flush the batch whenever asked, off the process threads' path; stops when told. */
static void *flush_worker(void *opaque)
{
    struct backup_ctx *b = opaque;
    pthread_mutex_lock(&b->q_lock);
    for (;;) {
        while (!b->flush_wanted && !b->flush_stop)
            pthread_cond_wait(&b->flush_cv, &b->q_lock);
        if (!b->flush_wanted)
            break;
        b->flush_wanted = false;
        pthread_mutex_unlock(&b->q_lock);
        int r = repo_chunk_batch_flush(b->batch);
        if (r < 0)
            first_error_set(&b->fe, r, "VM %s: disk %s: making chunks durable: %s", b->o->vm,
                            b->m->disk, store_error(r));
        pthread_mutex_lock(&b->q_lock);
    }
    pthread_mutex_unlock(&b->q_lock);
    return NULL;
}

static void flush_stop(struct backup_ctx *b)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&b->q_lock);
    b->flush_stop = true;
    pthread_cond_signal(&b->flush_cv);
}

/* The queue's buffers for one disk: (fetch + process threads + 1) chunks. */
static int queue_alloc(struct backup_ctx *b, size_t nitems, uint32_t cs)
{
    b->nitems = nitems;
    b->items = calloc(nitems, sizeof(*b->items));
    b->free_items = calloc(nitems, sizeof(*b->free_items));
    b->full_items = calloc(nitems, sizeof(*b->full_items));
    b->nfree = b->nfull = b->full_head = 0;
    if (!b->items || !b->free_items || !b->full_items)
        return -ENOMEM;
    for (size_t k = 0; k < nitems; k++) {
        if (!(b->items[k].buf = aligned_alloc(DIRECT_ALIGN, cs)))
            return -ENOMEM;
        b->free_items[b->nfree++] = &b->items[k];
    }
    return 0;
}

static void queue_free(struct backup_ctx *b)
{
    for (size_t k = 0; b->items && k < b->nitems; k++)
        free(b->items[k].buf);
    free(b->items);
    free(b->free_items);
    free(b->full_items);
    b->items = NULL;
    b->free_items = b->full_items = NULL;
}

/* The manifest m of disk d from the previous manifest's untouched chunks (when incremental)
 * and the touched ones' results, merged in chunk order. */
static int merge_manifest(struct backup_ctx *b, const struct disk_plan *d, struct manifest *m)
{
    const uint64_t n = manifest_chunks(m);
    size_t p = 0, k = 0;
    const size_t np = d->incremental ? d->prev.n_entries : 0;
    int r = 0;
    while (r == 0 && (p < np || k < d->ntodo)) {
        uint64_t pi = p < np ? d->prev.e[p].idx : UINT64_MAX;
        uint64_t ti = k < d->ntodo ? d->todo[k] : UINT64_MAX;
        if (pi < ti) {
            if (pi < n) {
                r = manifest_append(m, pi, &d->prev.e[p].id);
                atomic_fetch_add(&b->chunks_reused, 1);
            }
            p++;
        } else {
            if (b->results[k].stored)
                r = manifest_append(m, ti, &b->results[k].id);
            p += pi == ti;
            k++;
        }
    }
    return r < 0 ? first_error_set(&b->fe, r, "disk %s: %s", d->name, strerror(-r)) : 0;
}

/* Fill manifest m of disk d: the untouched chunks from the previous manifest (or zeros), the
 * touched ones read, stored and made durable.  0, or a negative errno with b->fe set. */
static int backup_disk(struct backup_ctx *b, struct disk_plan *d, struct manifest *m)
{
    const uint32_t cs = repo_chunk_size(b->repo);
    int r = manifest_new(m, d->name, d->size, cs);
    if (r < 0)
        return first_error_set(&b->fe, r, "disk %s: %s", d->name, strerror(-r));
    free(m->change_id);
    m->change_id = d->change_id ? strdup(d->change_id) : NULL;
    const size_t ntodo = d->ntodo;
    if (ntodo == 0)
        return merge_manifest(b, d, m);
    CLEANUP_FREE struct chunk_result *results = calloc(ntodo, sizeof(*results));
    if (!results)
        return first_error_set(&b->fe, -ENOMEM, "out of memory");

    b->plan = d;
    b->m = m;
    b->results = results;
    atomic_store(&b->next, 0);
    unsigned nfetch = b->jobs < ntodo ? b->jobs : (unsigned)ntodo;
    unsigned nproc = b->nprocess < ntodo ? b->nprocess : (unsigned)ntodo;
    b->fetchers_left = nfetch;
    b->flush_wanted = b->flush_stop = false;
    struct fetch_arg args[BACKUP_MAX_JOBS];
    for (unsigned t = 0; t < nfetch; t++)
        args[t] = (struct fetch_arg){.b = b, .worker = t};

    struct worker_pool flusher = {0}, procs = {0}, fetchers = {0};
    /* A fetch thread holds a group of chunks at once where the source reads them together. */
    size_t per_fetch = d->src->ops->read_ranges ? GROUP_CHUNKS : 1;
    if ((r = queue_alloc(b, nfetch * per_fetch + nproc + 1, cs)) < 0) {
        first_error_set(&b->fe, r, "out of memory");
        fetchers_done(b, nfetch);
    } else if ((r = worker_pool_start(&flusher, 1, flush_worker, b, 0)) < 0 ||
               (r = worker_pool_start(&procs, nproc, process_worker, b, 0)) < 0) {
        first_error_set(&b->fe, r, "cannot start worker threads: %s", strerror(-r));
        fetchers_done(b, nfetch);
    } else if ((r = worker_pool_start(&fetchers, nfetch, fetch_worker, args, sizeof(*args))) < 0) {
        fetchers_done(b, nfetch - fetchers.started);
        if (fetchers.started == 0)
            first_error_set(&b->fe, r, "cannot start worker threads: %s", strerror(-r));
    }
    worker_pool_join(&fetchers);
    worker_pool_join(&procs);
    flush_stop(b);
    worker_pool_join(&flusher);
    /* Everything the manifest names must be in place before it is written. */
    if (!first_error_failed(&b->fe) && (r = repo_chunk_batch_flush(b->batch)) < 0)
        first_error_set(&b->fe, r, "VM %s: disk %s: making chunks durable: %s", b->o->vm, m->disk,
                        store_error(r));
    queue_free(b);
    if (!first_error_failed(&b->fe))
        merge_manifest(b, d, m);
    b->results = NULL;
    return first_error_failed(&b->fe) ? first_error_code(&b->fe) : 0;
}

/* ---- planning ---- */

/* Add chunk i to d's todo list (kept strictly increasing by the callers: i above the last, or
 * sorted afterwards). */
static int todo_add(struct disk_plan *d, uint64_t i, uint32_t cs)
{
    if (d->ntodo == d->todo_cap) {
        size_t cap = d->todo_cap ? d->todo_cap * 2 : 64;
        uint64_t *t = cap < SIZE_MAX / sizeof(*t) ? realloc(d->todo, cap * sizeof(*t)) : NULL;
        if (!t)
            return -ENOMEM;
        d->todo = t;
        d->todo_cap = cap;
    }
    d->todo[d->ntodo++] = i;
    d->touched_bytes += d->size - i * cs < cs ? d->size - i * cs : cs;
    return 0;
}

/* The chunks the ranges of d->changed and d->zeroed touch (both sorted), in order, each once:
 * d->todo.  Its size follows the ranges, never the disk's. */
static int mark_touched(struct disk_plan *d, uint32_t cs)
{
    const extent_list *l[] = {&d->changed, &d->zeroed};
    size_t pos[2] = {0, 0};
    for (;;) {
        /* The range that starts first of the two lists' next ones. */
        int w = -1;
        for (int j = 0; j < 2; j++)
            if (pos[j] < l[j]->len && (w < 0 || l[j]->ptr[pos[j]].start < l[w]->ptr[pos[w]].start))
                w = j;
        if (w < 0)
            return 0;
        const struct extent *e = &l[w]->ptr[pos[w]++];
        uint64_t first = e->start / cs, last = (extent_end(e) - 1) / cs;
        if (d->ntodo && first <= d->todo[d->ntodo - 1])
            first = d->todo[d->ntodo - 1] + 1;
        for (uint64_t i = first; i <= last; i++) {
            int r = todo_add(d, i, cs);
            if (r < 0)
                return r;
        }
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The {start, length} objects of a snapshot answer's array into l, clipped to size.  The
 * server lists them in order (-EPROTO otherwise). */
static int ranges_from_json(const json_t *arr, uint64_t size, extent_list *l)
{
    size_t idx;
    const json_t *a;
    json_array_foreach(arr, idx, a)
    {
        json_int_t s = json_integer_value(json_object_get(a, "start"));
        json_int_t n = json_integer_value(json_object_get(a, "length"));
        if (s < 0 || n <= 0 || (uint64_t)s >= size)
            continue;
        uint64_t len = (uint64_t)n > size - (uint64_t)s ? size - (uint64_t)s : (uint64_t)n;
        int r = extent_list_add_range(l, (uint64_t)s, len);
        if (r < 0)
            return r == -ENOMEM ? r : -EPROTO;
    }
    return 0;
}

/* Page through the server's changed areas of disk d since change_id ("*": its data extents)
 * into d->changed (the changed data only: zeroedInChanged=false) and d->zeroed; one page in
 * memory at a time.  0, -EPROTO for an answer that does not page through the disk, or the
 * client's error (-EINVAL: the server knows no such older snapshot of the disk). */
static int read_changes(struct client *cl, const char *vm, const char *snap_id, struct disk_plan *d,
                        const char *change_id)
{
    for (uint64_t start = 0; start < d->size;) {
        json_t *j = NULL;
        int r = client_get_disk_changes(cl, vm, snap_id, d->name, change_id, start, false, &j);
        if (r < 0)
            return r;
        json_int_t len = json_integer_value(json_object_get(j, "length"));
        if (len <= 0 || (uint64_t)len > d->size - start)
            r = -EPROTO; /* every page before the end covers some of the disk */
        if (r == 0)
            r = ranges_from_json(json_object_get(j, "changedArea"), d->size, &d->changed);
        if (r == 0)
            r = ranges_from_json(json_object_get(j, "zeroedArea"), d->size, &d->zeroed);
        json_decref(j);
        if (r < 0)
            return r;
        start += (uint64_t)len;
    }
    return 0;
}

/* The server's own words in the client's message of a failed changes request ("URL: GET
 * PATH/changes?...: DETAILS (HTTP 409)"): DETAILS, malloc'd; the whole message when it has
 * another form.  NULL when out of memory. */
static char *changes_error_details(const char *msg)
{
    const char *p = strstr(msg, "/changes?");
    const char *d = p ? strstr(p, ": ") : NULL;
    d = d ? d + 2 : msg;
    size_t n = strlen(d);
    const char *tail = strstr(d, " (HTTP ");
    if (tail && strchr(tail, ')') == d + n - 1)
        n = (size_t)(tail - d);
    return strndup(d, n);
}

/* The ranges to read of disk d from the server: the changes since its change ID in the previous
 * backup when the server still has that snapshot and can tell them, else its data extents
 * (d->full_reason says why); and the chunks they touch.  0 or a negative errno (the client's
 * message in client_error()). */
static int plan_disk(struct client *cl, const char *vm, const char *snap_id, struct disk_plan *d,
                     uint32_t cs, bool full)
{
    bool incremental = d->have_prev;
    int r = read_changes(cl, vm, snap_id, d, incremental ? d->since : "*");
    if ((r == -EINVAL || r == -ESTALE) && incremental) {
        /* -EINVAL: the base snapshot is gone from the server; -ESTALE (409): the server can no
         * longer tell the changes since it (a live VM's checkpoint lost, inconsistent, or of
         * another chain).  Never an incremental then: the whole disk is read. */
        CLEANUP_FREE char *why = r == -ESTALE ? changes_error_details(client_error(cl)) : NULL;
        if (r == -EINVAL)
            d->full_reason = strdup("the previous backup's snapshot is no longer on the server");
        else if (!why ||
                 asprintf(&d->full_reason, "the server cannot tell the changes: %s", why) < 0)
            d->full_reason = NULL;
        if (!d->full_reason)
            return -ENOMEM;
        extent_list_reset(&d->changed);
        extent_list_reset(&d->zeroed);
        incremental = false;
        r = read_changes(cl, vm, snap_id, d, "*");
    } else if (!incremental) {
        d->full_reason = strdup(full ? "--full" : "no previous backup of the disk");
        if (!d->full_reason)
            return -ENOMEM;
    }
    if (r < 0)
        return r;
    d->incremental = incremental;
    if ((r = mark_touched(d, cs)) < 0)
        return r;
    /* The last chunk changes length when the size changes: read it again. */
    uint64_t n = (d->size + cs - 1) / cs;
    if (incremental && d->prev.disk_size != d->size && n > 0) {
        uint64_t last = d->prev.disk_size < d->size ? d->prev.disk_size : d->size;
        uint64_t i0 = last ? (last - 1) / cs : 0;
        size_t before = d->ntodo;
        for (uint64_t k = i0; k <= i0 + 1 && k < n; k++) {
            bool have = false;
            for (size_t j = 0; j < before && !have; j++)
                have = d->todo[j] == k;
            if (!have && (r = todo_add(d, k, cs)) < 0)
                return r;
        }
        if (d->ntodo != before)
            qsort(d->todo, d->ntodo, sizeof(*d->todo), cmp_u64);
    }
    return 0;
}

/* Open disk d's source as o->transport asks (auto: nbd where the server names an NBD export
 * this host reaches, else local where the snapshot file is the server's, else https).  0
 * (*transport says which), or a negative errno with the message in fe. */
static int open_source(struct backup_ctx *b, const char *snap_id, const json_t *dj,
                       struct disk_plan *d, const char **transport)
{
    const struct source_disk sd = {
        .vm = b->o->vm,
        .snapshot = snap_id,
        .name = d->name,
        .size = d->size,
        .path = json_string_value(json_object_get(dj, "path")),
        .file_id = json_string_value(json_object_get(dj, "file_id")),
    };
    char why[WHY_MAX];
    int r;
    const enum backup_transport t = b->o->transport;
    if (t == BACKUP_TRANSPORT_RBD) {
        r = source_rbd_open(&sd, &d->src, why, sizeof(why));
        if (r < 0)
            return first_error_set(&b->fe, r,
                                   "VM %s: disk %s: cannot read the RBD snapshot "
                                   "(--transport rbd): %s",
                                   b->o->vm, d->name, why);
        goto opened;
    }
    if (t == BACKUP_TRANSPORT_NBD || (t == BACKUP_TRANSPORT_AUTO && source_nbd_names_export(&sd))) {
        r = source_nbd_open(&sd, b->jobs, &d->src, why, sizeof(why));
        if (r == 0)
            goto opened;
        if (t == BACKUP_TRANSPORT_NBD)
            return first_error_set(&b->fe, r,
                                   "VM %s: disk %s: cannot read the snapshot's NBD export "
                                   "(--transport nbd): %s",
                                   b->o->vm, d->name, why);
        /* No such socket: the client runs on another host, as auto expects; anything else
         * (a socket that does not answer, another size) is worth a word. */
        if (r != -ENOENT)
            warn(b, "VM %s: disk %s: reading through the server: %s", b->o->vm, d->name, why);
    } else if (t != BACKUP_TRANSPORT_HTTPS) {
        r = source_local_open(&sd, &d->src, why, sizeof(why));
        if (r == 0)
            goto opened;
        if (t == BACKUP_TRANSPORT_LOCAL)
            return first_error_set(&b->fe, r,
                                   "VM %s: disk %s: cannot read the snapshot locally "
                                   "(--transport local): %s",
                                   b->o->vm, d->name, why);
    }
    r = source_https_open(&sd, b->clients, b->jobs, &d->src, why, sizeof(why));
    if (r < 0)
        return first_error_set(&b->fe, r, "VM %s: disk %s: %s", b->o->vm, d->name, why);
opened:
    *transport = d->src->ops->name;
    return 0;
}

/* ---- server snapshots ---- */

/* Delete snapshot sid of the VM on the server; a failure (other than "already gone") is a
 * warning, since the backup itself is done or failed already.  what: "old" ... */
static void delete_snapshot(struct backup_ctx *b, const char *sid, const char *what)
{
    int r = client_delete_snapshot(b->o->client, b->o->vm, sid);
    if (r < 0 && r != -ENOENT)
        warn(b, "deleting the %s snapshot %s: %s", what, sid, client_error(b->o->client));
}

static char *snapshot_label(const struct repo *repo)
{
    const char *id = repo_id(repo);
    char hex[2 * HASH_SIZE + 1];
    if (!*id || strspn(id, "0123456789abcdef") != strlen(id)) {
        uint8_t d[HASH_SIZE];
        if (hash_sha256(id, strlen(id), d) < 0)
            return NULL;
        hex_encode(d, HASH_SIZE, hex);
        id = hex;
    }
    char *label = NULL;
    return asprintf(&label, SNAPSHOT_LABEL_PREFIX "%s", id) < 0 ? NULL : label;
}

/* Delete the VM's snapshots that carry this repository's label but belong to no committed
 * backup: a backup of this VM into this repository made them and was killed before its commit
 * (one that failed deletes its own).  Called holding the VM's backup lock, so no backup of the
 * VM into this repository is running. */
static void delete_stale_snapshots(struct backup_ctx *b, const char *label)
{
    json_t *snaps = NULL;
    backup_list all = VECTOR_INIT;
    if (client_list_snapshots(b->o->client, b->o->vm, false, &snaps) < 0) {
        warn(b, "VM %s: listing snapshots: %s", b->o->vm, client_error(b->o->client));
        return;
    }
    if (repo_backup_list(b->repo, b->o->vm, &all) < 0) {
        json_decref(snaps);
        return;
    }
    size_t i;
    json_t *s;
    json_array_foreach(snaps, i, s)
    {
        const char *sid = json_string_value(json_object_get(s, "id"));
        const char *sl = json_string_value(json_object_get(s, "label"));
        if (!sid || !sl || strcmp(sl, label))
            continue;
        bool used = false;
        for (size_t k = 0; k < all.len && !used; k++)
            used = all.ptr[k]->snapshot_id && !strcmp(all.ptr[k]->snapshot_id, sid);
        if (!used)
            delete_snapshot(b, sid, "stale (left by an interrupted backup)");
    }
    backup_list_free(&all);
    json_decref(snaps);
}

/* Keep the newest keep snapshots this repository used as bases for the VM; delete older. */
static void delete_old_snapshots(struct backup_ctx *b, unsigned keep)
{
    backup_list all = VECTOR_INIT;
    unsigned kept = 0;
    if (repo_backup_list(b->repo, b->o->vm, &all) == 0) {
        for (size_t i = all.len; i-- > 0;) {
            const char *sid = all.ptr[i]->snapshot_id;
            bool seen = !sid;
            for (size_t k = i + 1; k < all.len && !seen; k++)
                seen = all.ptr[k]->snapshot_id && !strcmp(all.ptr[k]->snapshot_id, sid);
            if (seen || kept++ < keep)
                continue;
            delete_snapshot(b, sid, "old");
        }
    }
    backup_list_free(&all);
}

/* ---- the run ---- */

/* The chain ID's prefix; the repository's hex ID follows, cut to fit PROVIDER_CHAIN_MAX (64). */
#define CHAIN_PREFIX  "vmexport-"
#define CHAIN_HEX_MAX (64 - (sizeof(CHAIN_PREFIX) - 1))

/* The repository's ID as hex: itself when it is plain hex, else its SHA-256. */
static int repo_hex_id(const struct repo *repo, char hex[2 * HASH_SIZE + 1])
{
    const char *id = repo_id(repo);
    if (*id && strspn(id, "0123456789abcdef") == strlen(id) && strlen(id) <= 2 * HASH_SIZE) {
        snprintf(hex, 2 * HASH_SIZE + 1, "%s", id);
        return 0;
    }
    uint8_t d[HASH_SIZE];
    if (hash_sha256(id, strlen(id), d) < 0)
        return -ENOMEM;
    hex_encode(d, HASH_SIZE, hex);
    return 0;
}

char *backup_chain_id(const struct repo *repo)
{
    char hex[2 * HASH_SIZE + 1];
    char *chain = NULL;
    if (repo_hex_id(repo, hex) < 0 ||
        asprintf(&chain, CHAIN_PREFIX "%.*s", (int)CHAIN_HEX_MAX, hex) < 0)
        return NULL;
    return chain;
}

/* The VM answer's disk named name, or NULL. */
static const json_t *vm_disk(const json_t *vmj, const char *name)
{
    size_t i;
    const json_t *dj;
    json_array_foreach(json_object_get(vmj, "disks"), i, dj)
    {
        const char *n = json_string_value(json_object_get(dj, "name"));
        if (n && !strcmp(n, name))
            return dj;
    }
    return NULL;
}

/* The disks to ask the snapshot for (o->disks, o->exclude_disks against the VM answer vmj) into
 * *sel (pointers into vmj or o; *nsel of them), or *sel NULL when every disk is wanted.  0, or a
 * negative errno with the message in fe (a name the VM does not have, a disk it cannot
 * snapshot, nothing left). */
static int select_disks(struct backup_ctx *b, const json_t *vmj, const char ***sel, size_t *nsel)
{
    const struct backup_options *o = b->o;
    *sel = NULL;
    *nsel = 0;
    for (size_t k = 0; k < o->ndisks + o->nexclude; k++) {
        const char *name = k < o->ndisks ? o->disks[k] : o->exclude_disks[k - o->ndisks];
        const json_t *dj = vm_disk(vmj, name);
        if (!dj)
            return first_error_set(&b->fe, -ENOENT, "VM %s has no disk '%s' (%s)", o->vm, name,
                                   k < o->ndisks ? "--disk" : "--exclude-disk");
        if (k < o->ndisks && json_is_false(json_object_get(dj, "snapshot_compatible")))
            return first_error_set(&b->fe, -EINVAL,
                                   "VM %s: disk '%s' cannot be snapshotted (read-only or "
                                   "removable) (--disk)",
                                   o->vm, name);
    }
    if (!o->nexclude && !o->ndisks)
        return 0;
    const json_t *disks = json_object_get(vmj, "disks");
    const char **list = calloc(json_array_size(disks) + o->ndisks + 1, sizeof(*list));
    if (!list)
        return first_error_set(&b->fe, -ENOMEM, "out of memory");
    size_t n = 0;
    if (o->ndisks) {
        for (size_t k = 0; k < o->ndisks; k++)
            list[n++] = o->disks[k];
    } else {
        size_t i;
        const json_t *dj;
        json_array_foreach(disks, i, dj)
        {
            const char *name = json_string_value(json_object_get(dj, "name"));
            if (name && !json_is_false(json_object_get(dj, "snapshot_compatible")))
                list[n++] = name;
        }
    }
    /* Drop the excluded names and repeats. */
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        bool drop = false;
        for (size_t k = 0; k < o->nexclude && !drop; k++)
            drop = !strcmp(list[i], o->exclude_disks[k]);
        for (size_t k = 0; k < kept && !drop; k++)
            drop = !strcmp(list[i], list[k]);
        if (!drop)
            list[kept++] = list[i];
    }
    if (kept == 0) {
        free(list);
        return first_error_set(&b->fe, -EINVAL, "VM %s: no disk left to back up (--exclude-disk)",
                               o->vm);
    }
    *sel = list;
    *nsel = kept;
    return 0;
}

/* The VM's definition from the server into *text and *format (malloc'd), both NULL when it
 * keeps none (404: older servers, the dir provider); another failure is a warning. */
static void fetch_definition(struct backup_ctx *b, char **text, char **format)
{
    json_t *j = NULL;
    *text = *format = NULL;
    int r = client_get_vm_definition(b->o->client, b->o->vm, &j);
    if (r == -ENOENT)
        return;
    const char *t = json_string_value(json_object_get(j, "definition"));
    const char *f = json_string_value(json_object_get(j, "format"));
    if (r < 0 || !t || !f) {
        warn(b, "VM %s: its definition is not stored with the backup: %s", b->o->vm,
             r < 0 ? client_error(b->o->client) : "the server's answer has none");
    } else if (!(*text = strdup(t)) || !(*format = strdup(f))) {
        free(*text);
        *text = NULL;
        warn(b, "VM %s: its definition is not stored with the backup: out of memory", b->o->vm);
    }
    json_decref(j);
}

/* The previous backup's manifest of disk d, when that backup has the disk with a change ID. */
static void read_prev_manifest(struct backup_ctx *b, const struct backup *prev, struct disk_plan *d)
{
    for (size_t k = 0; prev && k < prev->disks.len && !d->have_prev; k++) {
        if (strcmp(prev->disks.ptr[k].name, d->name) || !prev->disks.ptr[k].change_id)
            continue;
        d->have_prev = repo_manifest_read(b->repo, prev, d->name, &d->prev) == 0;
        d->since = prev->disks.ptr[k].change_id;
    }
}

/* Plan every disk of the snapshot answer snapj: the changes since prev's snapshot where the
 * server still has it and the disk is in prev, else the data extents.  Returns the bytes to
 * read in *total. */
static int plan_disks(struct backup_ctx *b, const json_t *snapj, const char *snap_id,
                      const struct backup *prev, struct disk_plan *plans, size_t nplans,
                      uint64_t *total)
{
    const uint32_t cs = repo_chunk_size(b->repo);
    struct client *cl = b->o->client;
    *total = 0;
    for (size_t i = 0; i < nplans; i++) {
        const json_t *dj = json_array_get(json_object_get(snapj, "disks"), i);
        struct disk_plan *d = &plans[i];
        d->name = json_string_value(json_object_get(dj, "name"));
        d->size = (uint64_t)json_integer_value(json_object_get(dj, "size"));
        d->change_id = json_string_value(json_object_get(dj, "change_id"));
        if (!d->name)
            return first_error_set(&b->fe, -EPROTO, "VM %s: the server names no disk %zu", b->o->vm,
                                   i);
        read_prev_manifest(b, prev, d);
        int r = plan_disk(cl, b->o->vm, snap_id, d, cs, b->o->full);
        if (r < 0)
            return first_error_set(&b->fe, r, "VM %s: disk %s: changed areas: %s", b->o->vm,
                                   d->name,
                                   r == -EPROTO   ? "the server's answer is no valid page of areas"
                                   : r == -ENOMEM ? "out of memory"
                                                  : client_error(cl));
        *total += d->touched_bytes;
    }
    return 0;
}

static const struct enum_name transport_names[] = {
    {BACKUP_TRANSPORT_AUTO, "auto"},
    {BACKUP_TRANSPORT_HTTPS, "https"},
    {BACKUP_TRANSPORT_LOCAL, "local"},
    {BACKUP_TRANSPORT_NBD, "nbd"},
    {BACKUP_TRANSPORT_RBD, "rbd"},
};

int backup_transport_parse(const char *s, enum backup_transport *out)
{
    int v;
    int r = enum_parse(transport_names, ARRAY_SIZE(transport_names), s, &v);
    if (r == 0)
        *out = (enum backup_transport)v;
    return r;
}

void backup_result_free(struct backup_result *res)
{
    free(res->backup_id);
    free(res->snapshot_id);
    res->backup_id = res->snapshot_id = NULL;
    for (size_t i = 0; i < res->ndisks; i++) {
        free(res->disks[i].name);
        free(res->disks[i].full_reason);
    }
    free(res->disks);
    res->disks = NULL;
    res->ndisks = 0;
    free(res->definition_format);
    res->definition_format = NULL;
}

/* Commit the backup: its record names the disks written and the run's figures. */
static int commit(struct backup_ctx *b, struct backup_writer *w, const char *snap_id,
                  const char *vm_json, char **definition, char **definition_format,
                  const struct backup *prev, int64_t t0, struct backup_result *res)
{
    struct backup *info = calloc(1, sizeof(*info));
    if (!info)
        return first_error_set(&b->fe, -ENOMEM, "out of memory");
    info->snapshot_id = strdup(snap_id);
    info->server = b->o->server ? strdup(b->o->server) : NULL;
    info->time = b->o->now;
    info->vm_json = vm_json ? strdup(vm_json) : NULL;
    info->definition = TAKE_PTR(*definition);
    info->definition_format = TAKE_PTR(*definition_format);
    if (info->definition_format)
        res->definition_format = strdup(info->definition_format);
    info->bytes_read = res->bytes_read;
    uint64_t existing = 0;
    repo_chunk_batch_stats(b->batch, &info->chunks_new, &existing, &info->bytes_written);
    info->chunks_reused = atomic_load(&b->chunks_reused) + existing;
    info->seconds = (double)(clock_monotonic_ns() - t0) / 1e9;
    info->parent_id = prev ? strdup(prev->id) : NULL;
    res->backup_id = strdup(repo_backup_writer_id(w));
    res->chunks_new = info->chunks_new;
    res->chunks_reused = info->chunks_reused;
    res->bytes_written = info->bytes_written;
    int r = res->backup_id ? repo_backup_commit(w, info) : -ENOMEM;
    backup_free(info);
    if (r < 0)
        return first_error_set(&b->fe, r, "VM %s: committing the backup: %s", b->o->vm,
                               writer_error(r));
    return 0;
}

int backup_run(const struct backup_options *o, struct backup_result *res)
{
    *res = (struct backup_result){.transport = "https"};
    const int64_t t0 = clock_monotonic_ns();
    struct backup_ctx b = {
        .o = o,
        .repo = o->repo,
        .jobs = o->jobs < 1                 ? 1
                : o->jobs > BACKUP_MAX_JOBS ? BACKUP_MAX_JOBS
                                            : o->jobs,
        .nprocess = worker_pool_cpu_threads(MAX_PROCESS_THREADS / PROCESS_THREADS_PER_CPU) *
                    PROCESS_THREADS_PER_CPU,
    };
    first_error_init(&b.fe, wake_all, &b);
    pthread_mutex_init(&b.q_lock, NULL);
    pthread_cond_init(&b.q_full_cv, NULL);
    pthread_cond_init(&b.q_free_cv, NULL);
    pthread_cond_init(&b.flush_cv, NULL);

    struct client *cl = o->client;
    /* The caller's connection may have served earlier runs: count only this one's bytes. */
    const uint64_t wire_before = client_bytes_on_wire(cl);
    struct backup_writer *w = NULL;
    struct backup *prev = NULL;
    struct disk_plan *plans = NULL;
    struct manifest *mans = NULL;
    size_t nplans = 0;
    json_t *vmj = NULL, *snapj = NULL;
    CLEANUP_FREE char *vm_json = NULL;
    CLEANUP_FREE char *snap_id = NULL;
    CLEANUP_FREE char *label = snapshot_label(o->repo);
    CLEANUP_FREE char *chain = backup_chain_id(o->repo);
    CLEANUP_FREE char *definition = NULL;
    CLEANUP_FREE char *definition_format = NULL;
    CLEANUP_FREE const char **sel = NULL;
    size_t nsel = 0;
    bool committed = false;
    int r;
    if (!label || !chain) {
        first_error_set(&b.fe, -ENOMEM, "out of memory");
        goto out;
    }
    if ((r = client_get_vm(cl, o->vm, &vmj)) < 0) {
        first_error_set(&b.fe, r, "VM %s: %s", o->vm, client_error(cl));
        goto out;
    }
    vm_json = json_dumps(vmj, JSON_COMPACT);
    if (select_disks(&b, vmj, &sel, &nsel) < 0)
        goto out;
    fetch_definition(&b, &definition, &definition_format);

    char err[512] = "";
    if ((r = repo_backup_begin(o->repo, o->vm, o->now, BACKUP_VM_LOCK_TIMEOUT, &w, err,
                               sizeof(err))) < 0) {
        first_error_set(&b.fe, r, "%s: %s", repo_path(o->repo), err[0] ? err : strerror(-r));
        goto out;
    }
    if (!o->full && repo_backup_latest(o->repo, o->vm, &prev) < 0)
        prev = NULL;
    delete_stale_snapshots(&b, label);

    const struct client_snapshot_request sreq = {
        .label = label, .chain = chain, .disks = sel, .ndisks = nsel};
    if ((r = client_take_snapshot(cl, o->vm, &sreq, false, &snapj)) < 0) {
        first_error_set(&b.fe, r, "VM %s: creating a snapshot: %s", o->vm, client_error(cl));
        goto out;
    }
    snap_id = strdup(json_string_value(json_object_get(snapj, "id")) ?: "");
    nplans = json_array_size(json_object_get(snapj, "disks"));
    plans = calloc(nplans ? nplans : 1, sizeof(*plans));
    mans = calloc(nplans ? nplans : 1, sizeof(*mans));
    if (!plans || !mans || !snap_id) {
        first_error_set(&b.fe, -ENOMEM, "out of memory");
        goto out;
    }
    if (!*snap_id) {
        first_error_set(&b.fe, -EPROTO, "VM %s: the server's snapshot has no ID", o->vm);
        goto out;
    }
    res->snapshot_id = strdup(snap_id);
    res->incremental = prev != NULL;
    if (!(res->disks = calloc(nplans ? nplans : 1, sizeof(*res->disks)))) {
        first_error_set(&b.fe, -ENOMEM, "out of memory");
        goto out;
    }

    uint64_t total = 0;
    if (plan_disks(&b, snapj, snap_id, prev, plans, nplans, &total) < 0)
        goto out;

    /* Connections for the fetch threads, then a source per disk. */
    if (!(b.clients = calloc(b.jobs, sizeof(*b.clients)))) {
        first_error_set(&b.fe, -ENOMEM, "out of memory");
        goto out;
    }
    b.clients[0] = cl;
    for (unsigned t = 1; t < b.jobs; t++)
        if ((r = client_dup(cl, &b.clients[t])) < 0) {
            first_error_set(&b.fe, r, "opening connection %u: %s", t + 1, client_error(cl));
            goto out;
        }
    for (size_t i = 0; i < nplans; i++) {
        const char *t = NULL;
        if (open_source(&b, snap_id, json_array_get(json_object_get(snapj, "disks"), i), &plans[i],
                        &t) < 0)
            goto out;
        res->transport = i == 0 || !strcmp(res->transport, t) ? t : "mixed";
        struct backup_disk_result *dr = &res->disks[res->ndisks++];
        dr->incremental = plans[i].incremental;
        dr->transport = t;
        dr->full_reason = TAKE_PTR(plans[i].full_reason);
        if (!(dr->name = strdup(plans[i].name))) {
            first_error_set(&b.fe, -ENOMEM, "out of memory");
            goto out;
        }
    }

    if ((r = repo_chunk_batch_new(o->repo, &b.batch)) < 0) {
        first_error_set(&b.fe, r, "%s: %s", repo_path(o->repo), store_error(r));
        goto out;
    }
    if (o->start)
        o->start(o->opaque, total);
    for (size_t i = 0; i < nplans; i++) {
        if (backup_disk(&b, &plans[i], &mans[i]) < 0)
            goto out;
        if ((r = repo_backup_add_disk(w, &mans[i])) < 0) {
            first_error_set(&b.fe, r, "VM %s: disk %s: writing the manifest: %s", o->vm,
                            plans[i].name, writer_error(r));
            goto out;
        }
    }
    res->bytes_read = atomic_load(&b.bytes_read);
    res->bytes_transferred = 0 - wire_before;
    for (unsigned t = 0; t < b.jobs; t++)
        res->bytes_transferred += client_bytes_on_wire(b.clients[t]);
    res->chunks_fetched = atomic_load(&b.chunks_fetched);
    if (commit(&b, w, snap_id, vm_json, &definition, &definition_format, prev, t0, res) < 0)
        goto out; /* w is still ours: aborted below */
    w = NULL;     /* committed: the writer is freed */
    committed = true;
    /* Only the checkpoint of the new snapshot is the next backup's base: its data (a live VM's
     * export and scratch image, which grows with the guest's writes) goes now.  With
     * --keep-snapshots 0 it goes entirely, below. */
    if (o->keep_snapshots > 0 && (r = client_release_snapshot(cl, o->vm, snap_id)) < 0 &&
        r != -ENOENT)
        warn(&b, "releasing the data of snapshot %s: %s", snap_id, client_error(cl));
    delete_old_snapshots(&b, o->keep_snapshots);

out:
    if (w)
        repo_backup_abort(w);
    /* No backup uses the snapshot a failed run made: do not leave it on the server. */
    if (!committed && snap_id && *snap_id)
        delete_snapshot(&b, snap_id, "unused");
    if (b.clients) {
        for (unsigned t = 1; t < b.jobs; t++)
            if (b.clients[t])
                client_free(b.clients[t]);
        free(b.clients);
    }
    for (size_t i = 0; i < nplans; i++) {
        source_close(plans[i].src);
        free(plans[i].todo);
        free(plans[i].full_reason);
        extent_list_reset(&plans[i].changed);
        extent_list_reset(&plans[i].zeroed);
        if (plans[i].have_prev)
            manifest_free(&plans[i].prev);
        manifest_free(&mans[i]);
    }
    free(plans);
    free(mans);
    backup_free(prev);
    json_decref(vmj);
    json_decref(snapj);
    repo_chunk_batch_free(b.batch);
    res->seconds = (double)(clock_monotonic_ns() - t0) / 1e9;
    r = committed ? 0 : first_error_code(&b.fe);
    if (!committed && r == 0)
        r = -EIO;
    snprintf(res->error, sizeof(res->error), "%s", committed ? "" : first_error_message(&b.fe));
    first_error_destroy(&b.fe);
    pthread_mutex_destroy(&b.q_lock);
    pthread_cond_destroy(&b.q_full_cv);
    pthread_cond_destroy(&b.q_free_cv);
    pthread_cond_destroy(&b.flush_cv);
    return r;
}
