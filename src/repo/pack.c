/* Packs and the repository index (format 3): new chunks go into pack objects of up to
 * PACK_TARGET bytes instead of one object each, and index objects say where each chunk is.
 *
 *   packs/<ab>/<pack name>  chunk containers back to back (each bound to "chunk:<id>" as in
 *                           format 2, so each is self-verifying wherever it sits), then the
 *                           pack's own index (a container bound to "pack:<name>": ID, offset,
 *                           length of every chunk), then a footer: u64le length of that
 *                           container and "VXPKEND\0".  Immutable.
 *   index/<name>            a segmented stream (stream.c): a header segment, then one segment
 *                           per pack: its name and (ID, offset, length) of its chunks.
 *
 * A batch flush commits its packs (one barrier), then writes one index object naming them, so
 * a pack no index names is garbage a crash left (gc deletes it).  The loaded index is one
 * sorted array of 48-byte entries (lookups by binary search) plus a sorted delta of the
 * entries flushed since, merged into it when it grows past an eighth.  Layout and the crash
 * analysis of gc: docs/repository-format.md, "Packs and the index".
 */
#include "repo_internal.h"

#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/cleanup.h"
#include "core/hex.h"
#include "core/lock.h"
#include "core/log.h"
#include "core/vector.h"
#include "repo/chunkset.h"
#include "repo/stream.h"

/* 16 MiB, restic's pack size: a 1 MiB-chunk backup writes 16x fewer objects, a sparse one
 * (4 KiB containers) thousands of times fewer, while a pack stays a cheap unit to repack. */
#define PACK_TARGET (16u << 20)
/* Chunks of one pack at most: its index is one segment of an index object. */
#define PACK_MAX_CHUNKS 65536
/* A pack below this many bytes with a dead chunk is repacked whatever the dead share. */
#define PACK_SMALL (PACK_TARGET / 4)
/* Repack a pack when more than 1 / PACK_DEAD_SHARE of its chunk bytes are dead. */
#define PACK_DEAD_SHARE 5
/* What a chunk waiting for the flush counts for the flush decision at least, whatever its
 * container's size: it costs memory (its ID in the writer's set, its pack entry: ~100 bytes),
 * so a backup of a million tiny chunks flushes by count too (the engine's 512 MiB threshold:
 * every 131,072 chunks, ~20 MB), not once at the end with all of them held. */
#define PACK_PENDING_CHUNK_COST 4096
#define PACK_NAME_BYTES         32
#define PACK_FOOTER_MAGIC       "VXPKEND" /* and its NUL: 8 bytes */
#define PACK_FOOTER_SIZE        16
#define PACK_ENTRY_SIZE         (HASH_SIZE + 4 + 4) /* id, u32le offset, u32le length */
/* An index segment's head: the pack's name and u64le bytes of chunk containers in it. */
#define PACK_SEG_HEAD     (PACK_NAME_BYTES + 8)
#define PACK_IDENT_PREFIX "pack:"
#define INDEX_MAGIC       "vmexport-index-v3"
#define INDEX_NAME_BYTES  32
/* An index object is at most this big (1M chunks take 40 MB). */
#define INDEX_MAX_SIZE ((uint64_t)1 << 32)
/* Merge the delta into the main array when it holds more than 1 / DELTA_SHARE of it. */
#define DELTA_SHARE 8
#define DELTA_MIN   4096

struct pack_name {
    uint8_t b[PACK_NAME_BYTES];
};

/* 48 bytes: 1M chunks in 48 MB. */
struct index_entry {
    struct chunk_id id;
    uint32_t pack; /* into pack_index.packs */
    uint32_t off;
    uint32_t len;
    int32_t mark; /* pack_index_mark(): 0 unless a chunk set keeps a value here */
};

_Static_assert(sizeof(struct index_entry) == 48, "an index entry is 48 bytes");

struct pack_index {
    struct index_entry *main, *delta; /* each sorted by ID */
    size_t n_main, n_delta, cap_delta;
    struct pack_name *packs;
    uint64_t *pack_bytes; /* per pack: bytes of chunk containers it holds, live or not */
    size_t n_packs, cap_packs;
};

static void pack_name_hex(const struct pack_name *p, char out[2 * PACK_NAME_BYTES + 1])
{
    hash_to_hex(p->b, out); /* PACK_NAME_BYTES == HASH_SIZE */
}

static void pack_key(const struct pack_name *p, char key[PACK_KEY_LEN])
{
    char hex[2 * PACK_NAME_BYTES + 1];
    pack_name_hex(p, hex);
    snprintf(key, PACK_KEY_LEN, REPO_PACKS_DIR "/%.2s/%s", hex, hex);
}

static int entry_cmp(const void *a, const void *b)
{
    const struct index_entry *x = a, *y = b;
    int c = memcmp(x->id.b, y->id.b, HASH_SIZE);
    if (c)
        return c;
    return x->pack < y->pack ? -1 : x->pack > y->pack;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    v = htole32(v);
    memcpy(p, &v, sizeof(v));
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return le32toh(v);
}

/* ---- the loaded index ---- */

static void index_free(struct pack_index *x)
{
    if (!x)
        return;
    free(x->main);
    free(x->delta);
    free(x->packs);
    free(x->pack_bytes);
    free(x);
}

static int index_add_pack(struct pack_index *x, const struct pack_name *p, uint64_t bytes,
                          uint32_t *no)
{
    if (x->n_packs == x->cap_packs) {
        size_t cap = x->cap_packs ? 2 * x->cap_packs : 64;
        struct pack_name *n = realloc(x->packs, cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        x->packs = n;
        uint64_t *b = realloc(x->pack_bytes, cap * sizeof(*b));
        if (!b)
            return -ENOMEM;
        x->pack_bytes = b;
        x->cap_packs = cap;
    }
    if (x->n_packs >= UINT32_MAX)
        return -EFBIG;
    x->packs[x->n_packs] = *p;
    x->pack_bytes[x->n_packs] = bytes;
    *no = (uint32_t)x->n_packs++;
    return 0;
}

static int delta_reserve(struct pack_index *x, size_t more)
{
    if (x->n_delta + more <= x->cap_delta)
        return 0;
    size_t cap = x->cap_delta ? x->cap_delta : 1024;
    while (cap < x->n_delta + more)
        cap *= 2;
    struct index_entry *n = realloc(x->delta, cap * sizeof(*n));
    if (!n)
        return -ENOMEM;
    x->delta = n;
    x->cap_delta = cap;
    return 0;
}

/* Sort the delta (entries appended since) and merge it into main when big enough. */
static int index_settle(struct pack_index *x, size_t sorted_before)
{
    if (x->n_delta > sorted_before)
        qsort(x->delta, x->n_delta, sizeof(*x->delta), entry_cmp);
    if (x->n_delta <= DELTA_MIN || x->n_delta * DELTA_SHARE <= x->n_main)
        return 0;
    /* Merge from the back, in place in main grown to hold both. */
    size_t n = x->n_main + x->n_delta;
    struct index_entry *m = realloc(x->main, (n ? n : 1) * sizeof(*m));
    if (!m)
        return -ENOMEM;
    x->main = m;
    size_t i = x->n_main, j = x->n_delta, k = n;
    while (j > 0) {
        if (i > 0 && entry_cmp(&m[i - 1], &x->delta[j - 1]) > 0)
            m[--k] = m[--i];
        else
            m[--k] = x->delta[--j];
    }
    x->n_main = n;
    x->n_delta = 0;
    free(x->delta); /* it grew to an eighth of main: not kept empty */
    x->delta = NULL;
    x->cap_delta = 0;
    return 0;
}

/* Add one pack segment of an index object (name, then entries) to x's delta. */
static int index_add_segment(struct pack_index *x, const uint8_t *p, size_t len)
{
    if (len < PACK_SEG_HEAD || (len - PACK_SEG_HEAD) % PACK_ENTRY_SIZE)
        return -EBADMSG;
    size_t n = (len - PACK_SEG_HEAD) / PACK_ENTRY_SIZE;
    struct pack_name name;
    uint64_t bytes;
    uint32_t no;
    memcpy(name.b, p, PACK_NAME_BYTES);
    memcpy(&bytes, p + PACK_NAME_BYTES, sizeof(bytes));
    int ret = index_add_pack(x, &name, le64toh(bytes), &no);
    if (ret == 0)
        ret = delta_reserve(x, n);
    if (ret < 0)
        return ret;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *e = p + PACK_SEG_HEAD + i * PACK_ENTRY_SIZE;
        struct index_entry *d = &x->delta[x->n_delta++];
        memcpy(d->id.b, e, HASH_SIZE);
        d->pack = no;
        d->off = get_u32(e + HASH_SIZE);
        d->len = get_u32(e + HASH_SIZE + 4);
        d->mark = 0;
    }
    return 0;
}

/* Add the index object rd reads (and frees) to x.  *entries gets its entry count.  On failure
 * x is left as it was. */
static int index_parse(struct pack_index *x, struct stream_reader *rd, uint64_t *entries)
{
    const uint8_t *p;
    size_t len;
    uint64_t n = 0, before = x->n_delta;
    size_t packs_before = x->n_packs;
    int ret = stream_reader_next(rd, &p, &len);
    if (ret > 0 && (len != sizeof(INDEX_MAGIC) - 1 || memcmp(p, INDEX_MAGIC, len)))
        ret = -EBADMSG;
    else if (ret == 0)
        ret = -EBADMSG; /* no header */
    while (ret > 0 && (ret = stream_reader_next(rd, &p, &len)) > 0) {
        int added = index_add_segment(x, p, len);
        ret = added < 0 ? added : 1;
    }
    n = x->n_delta - before;
    if (ret == 0 && stream_reader_items(rd) != n)
        ret = -EBADMSG;
    stream_reader_free(rd);
    *entries = n;
    if (ret < 0) {
        x->n_delta = before;
        x->n_packs = packs_before;
    }
    return ret;
}

/* Read index/<name> from the local cache (index_cache.c) when it has a copy that passes every
 * check, else from the store, keeping a copy.  -EAGAIN: no usable copy. */
static int index_read_cached(struct repo *r, struct pack_index *x, const char *name,
                             const char *key, uint64_t *entries)
{
    struct stream_reader *rd = NULL;
    int fd = index_cache_open(r, name);
    if (fd >= 0) {
        int ret = stream_reader_open_fd(r, key, fd, INDEX_MAX_SIZE, &rd);
        if (ret == 0)
            ret = index_parse(x, rd, entries);
        if (ret == 0 || ret == -ENOMEM)
            return ret;
        log_warn("%s: the cached copy of %s is damaged (%s): fetched again", r->path, key,
                 strerror(-ret));
        index_cache_drop(r, name);
    } else if (fd != -ENOENT) { /* not a file (a symbolic link, a directory): replaced */
        index_cache_drop(r, name);
    }
    /* One request for the whole object, kept locally, then checked as any copy. */
    uint8_t *data = NULL;
    size_t len;
    int ret = store_get(r->store, key, INDEX_MAX_SIZE, &data, &len);
    if (ret < 0)
        return ret;
    index_cache_put(r, name, data, len);
    ret = stream_reader_new(r, key, data, len, &rd); /* takes data */
    if (ret == 0)
        ret = index_parse(x, rd, entries);
    if (ret < 0)
        index_cache_drop(r, name); /* the store's object is damaged: keep no copy */
    return ret;
}

/* Read the index object index/<name> into x.  *entries gets its entry count. */
static int index_read_object(struct repo *r, struct pack_index *x, const char *name,
                             uint64_t *entries)
{
    char key[sizeof(REPO_INDEX_DIR "/") + 2 * INDEX_NAME_BYTES];
    struct stream_reader *rd = NULL;
    snprintf(key, sizeof(key), REPO_INDEX_DIR "/%s", name);
    if (index_cache_enabled(r))
        return index_read_cached(r, x, name, key, entries);
    int ret = stream_reader_open(r, key, INDEX_MAX_SIZE, &rd);
    if (ret < 0)
        return ret;
    return index_parse(x, rd, entries);
}

static bool index_name_valid(const char *name)
{
    if (strlen(name) != 2 * INDEX_NAME_BYTES)
        return false;
    for (const char *c = name; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
            return false;
    return true;
}

struct name_list_ctx {
    string_list *names;
};

static int name_list_entry(void *opaque, const struct store_entry *e)
{
    struct name_list_ctx *c = opaque;
    if (e->prefix || !index_name_valid(e->name))
        return 0;
    char *copy = strdup(e->name);
    if (!copy || string_list_append(c->names, copy) < 0) {
        free(copy);
        return -ENOMEM;
    }
    return 0;
}

/* The names of the index objects. */
static int index_names(struct repo *r, string_list *names)
{
    struct name_list_ctx c = {.names = names};
    int ret = store_list(r->store, REPO_INDEX_DIR, name_list_entry, &c);
    return ret == -ENOENT ? 0 : ret;
}

/* Load every index object into a new index (names: when not NULL, gets their names). */
static int index_load(struct repo *r, struct pack_index **out, string_list *names_out)
{
    string_list names = VECTOR_INIT;
    struct pack_index *x = calloc(1, sizeof(*x));
    int ret = x ? index_names(r, &names) : -ENOMEM;
    if (ret == 0 && index_cache_enabled(r))
        index_cache_prune(r, &names, index_name_valid);
    for (size_t i = 0; ret == 0 && i < names.len; i++) {
        uint64_t n;
        ret = index_read_object(r, x, names.ptr[i], &n);
        if (ret < 0)
            log_error("%s/%s/%s: cannot read the index object: %s", r->path, REPO_INDEX_DIR,
                      names.ptr[i], ret == -EBADMSG ? "damaged" : strerror(-ret));
    }
    if (ret == 0 && x->n_delta) {
        /* The entries read become main, sorted, in their own buffer trimmed to size (no copy:
         * a merge into a second array would hold both, twice the memory at a million). */
        qsort(x->delta, x->n_delta, sizeof(*x->delta), entry_cmp);
        struct index_entry *m = realloc(x->delta, x->n_delta * sizeof(*m));
        x->main = m ? m : x->delta;
        x->n_main = x->n_delta;
        x->delta = NULL;
        x->n_delta = x->cap_delta = 0;
    }
    if (ret < 0 || !names_out)
        string_list_free(&names);
    else
        *names_out = names;
    if (ret < 0) {
        index_free(x);
        return ret;
    }
    *out = x;
    return 0;
}

static const struct index_entry *search(const struct index_entry *a, size_t n,
                                        const struct chunk_id *id)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = memcmp(a[mid].id.b, id->b, HASH_SIZE);
        if (c == 0)
            return &a[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* The entry of id in the loaded index (loading it first), or NULL; *ret: 0 or the load's error.
 * Called with r->index_mutex held. */
static struct index_entry *index_lookup(struct repo *r, const struct chunk_id *id, int *ret)
{
    *ret = 0;
    if (!r->index && (*ret = index_load(r, &r->index, NULL)) < 0)
        return NULL;
    const struct index_entry *e = search(r->index->main, r->index->n_main, id);
    if (!e)
        e = search(r->index->delta, r->index->n_delta, id);
    return (struct index_entry *)e;
}

int pack_index_find(struct repo *r, const struct chunk_id *id, char key[PACK_KEY_LEN],
                    uint64_t *off, uint32_t *len)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&r->index_mutex);
    int ret;
    const struct index_entry *e = index_lookup(r, id, &ret);
    if (!e)
        return ret < 0 ? ret : -ENOENT;
    if (key)
        pack_key(&r->index->packs[e->pack], key);
    *off = e->off;
    *len = e->len;
    return 0;
}

int pack_index_mark(struct repo *r, const struct chunk_id *id, int8_t value, int8_t *old)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&r->index_mutex);
    int ret;
    struct index_entry *e = index_lookup(r, id, &ret);
    if (!e)
        return ret < 0 ? ret : -ENOENT;
    *old = (int8_t)e->mark;
    if (value != 0)
        e->mark = value;
    return 0;
}

void pack_index_clear_marks(struct repo *r)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&r->index_mutex);
    struct pack_index *x = r->index;
    for (size_t i = 0; x && i < x->n_main; i++)
        x->main[i].mark = 0;
    for (size_t i = 0; x && i < x->n_delta; i++)
        x->delta[i].mark = 0;
}

void pack_index_drop(struct repo *r)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&r->index_mutex);
    index_free(r->index);
    r->index = NULL;
}

void pack_index_free(struct repo *r)
{
    index_free(r->index);
    r->index = NULL;
}

int pack_index_ids(struct repo *r, struct chunk_id **ids, size_t *n)
{
    struct pack_index *x = NULL;
    *ids = NULL;
    *n = 0;
    int ret = index_load(r, &x, NULL);
    if (ret < 0)
        return ret;
    struct chunk_id *out = malloc((x->n_main ? x->n_main : 1) * sizeof(*out));
    if (!out) {
        index_free(x);
        return -ENOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < x->n_main; i++)
        if (!k || memcmp(out[k - 1].b, x->main[i].id.b, HASH_SIZE))
            out[k++] = x->main[i].id;
    index_free(x);
    *ids = out;
    *n = k;
    return 0;
}

/* ---- writing packs ---- */

struct pack_entry {
    struct chunk_id id;
    uint32_t off, len;
};
DEFINE_VECTOR_TYPE(pack_entry_list, struct pack_entry);

/* A pack being filled, or staged and waiting for the flush. */
struct pack_build {
    struct pack_name name;
    uint8_t *buf; /* STORE_ALIGN-aligned (the local store writes it with O_DIRECT) */
    size_t len, cap;
    uint64_t chunk_bytes; /* the containers' bytes (len before the pack's index) */
    pack_entry_list entries;
    struct store_staged *staged;
};
DEFINE_VECTOR_TYPE(pack_build_list, struct pack_build);

struct pack_writer {
    struct repo *r;
    size_t buf_cap;   /* every pack buffer's size (pack_buf_cap) */
    bool write_index; /* flush writes an index object (batches; gc writes its own) */
    bool dedup;       /* skip IDs added before (batches; gc adds each live ID once) */
    pthread_mutex_t mu;
    struct pack_build cur;
    pack_build_list staged;
    struct chunk_set pending; /* IDs in cur and staged */
    uint64_t pending_bytes;
    uint8_t *spare; /* a pack buffer kept for the next pack */
};

/* A pack buffer holds a full pack, its index and footer: mapped (not malloc'd: buffers of
 * ~17 MiB from the heap fragmented it to 170 MiB over 65,536 chunks), and reused. */
static size_t pack_buf_cap(const struct repo *r)
{
    size_t n = PACK_TARGET + r->chunk_size + CONTAINER_MAX_OVERHEAD + 4 +
               (size_t)PACK_MAX_CHUNKS * PACK_ENTRY_SIZE + CONTAINER_MAX_OVERHEAD +
               PACK_FOOTER_SIZE;
    return (n + STORE_ALIGN - 1) / STORE_ALIGN * STORE_ALIGN;
}

/* Called with w->mu held. */
static uint8_t *buf_get(struct pack_writer *w)
{
    uint8_t *p = w->spare;
    w->spare = NULL;
    if (p)
        return p;
    p = mmap(NULL, w->buf_cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Called without w->mu held. */
static void buf_put(struct pack_writer *w, uint8_t *p)
{
    if (!p)
        return;
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&w->mu);
        if (!w->spare) {
            /* Kept mapped (no heap churn) but its pages given back: an idle buffer costs no
             * memory (17 MiB of RSS otherwise; they fault in again as zeros when reused). */
            madvise(p, w->buf_cap, MADV_DONTNEED);
            w->spare = p;
            return;
        }
    }
    munmap(p, w->buf_cap);
}

/* Called without w->mu held. */
static void build_free(struct pack_writer *w, struct pack_build *b)
{
    buf_put(w, b->buf);
    pack_entry_list_reset(&b->entries);
    if (b->staged)
        store_discard(w->r->store, b->staged);
    memset(b, 0, sizeof(*b));
}

/* Room for more bytes in b; a buffer is taken with w->mu held (the pack being filled). */
static int build_reserve(struct pack_writer *w, struct pack_build *b, size_t more)
{
    if (!b->buf) {
        if (!(b->buf = buf_get(w)))
            return -ENOMEM;
        b->cap = w->buf_cap;
    }
    return b->len + more <= b->cap ? 0 : -EFBIG;
}

/* The plain data of a pack's own index: u32le count, then the entries. */
static uint8_t *pack_index_plain(const struct pack_build *b, size_t *len)
{
    *len = 4 + b->entries.len * PACK_ENTRY_SIZE;
    uint8_t *p = malloc(*len);
    if (!p)
        return NULL;
    put_u32(p, (uint32_t)b->entries.len);
    for (size_t i = 0; i < b->entries.len; i++) {
        uint8_t *e = p + 4 + i * PACK_ENTRY_SIZE;
        memcpy(e, b->entries.ptr[i].id.b, HASH_SIZE);
        put_u32(e + HASH_SIZE, b->entries.ptr[i].off);
        put_u32(e + HASH_SIZE + 4, b->entries.ptr[i].len);
    }
    return p;
}

/* Append the pack's index and footer, then stage it (its buffer back to the writer). */
static int build_finish(struct pack_writer *w, struct pack_build *b)
{
    struct repo *r = w->r;
    char key[PACK_KEY_LEN], ident[sizeof(PACK_IDENT_PREFIX) + 2 * PACK_NAME_BYTES];
    char hex[2 * PACK_NAME_BYTES + 1];
    size_t plen, clen;
    pack_name_hex(&b->name, hex);
    snprintf(ident, sizeof(ident), PACK_IDENT_PREFIX "%s", hex);
    CLEANUP_FREE uint8_t *plain = pack_index_plain(b, &plen);
    CLEANUP_FREE uint8_t *c = NULL;
    if (!plain)
        return -ENOMEM;
    b->chunk_bytes = b->len;
    int ret = container_seal(r, ident, plain, plen, &c, &clen);
    if (ret == 0)
        ret = build_reserve(w, b, clen + PACK_FOOTER_SIZE);
    if (ret < 0)
        return ret;
    memcpy(b->buf + b->len, c, clen);
    b->len += clen;
    uint64_t le = htole64(clen);
    memcpy(b->buf + b->len, &le, sizeof(le));
    memcpy(b->buf + b->len + sizeof(le), PACK_FOOTER_MAGIC, sizeof(PACK_FOOTER_MAGIC));
    b->len += PACK_FOOTER_SIZE;
    pack_key(&b->name, key);
    ret = store_stage(r->store, key, b->buf, b->len, &b->staged);
    buf_put(w, b->buf); /* the staged object holds the bytes now */
    b->buf = NULL;
    b->cap = 0;
    return ret;
}

int pack_writer_new(struct repo *r, struct pack_writer **out)
{
    struct pack_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->r = r;
    w->buf_cap = pack_buf_cap(r);
    w->write_index = true;
    w->dedup = true;
    pthread_mutex_init(&w->mu, NULL);
    w->staged = (pack_build_list)VECTOR_INIT;
    *out = w;
    return 0;
}

/* Stage the pack b taken out of the writer, then list it as staged (or drop it on failure). */
static int writer_stage(struct pack_writer *w, struct pack_build *b)
{
    int ret = build_finish(w, b);
    if (ret == 0) {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&w->mu);
        ret = pack_build_list_append(&w->staged, *b);
    }
    if (ret < 0)
        build_free(w, b);
    return ret;
}

int pack_writer_add(struct pack_writer *w, const struct chunk_id *id, const uint8_t *container,
                    size_t len, uint64_t *pending)
{
    struct pack_build full = {0};
    bool have_full = false;
    int ret;
    if (pending)
        *pending = 0;
    if (len > UINT32_MAX)
        return -EFBIG;
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&w->mu);
        if (w->dedup && chunk_set_has(&w->pending, id))
            return 1;
        struct pack_build *c = &w->cur;
        if (c->entries.len && (c->len + len > PACK_TARGET || c->entries.len >= PACK_MAX_CHUNKS)) {
            full = *c;
            have_full = true;
            memset(c, 0, sizeof(*c));
        }
        if (!c->entries.len && !c->buf) {
            c->entries = (pack_entry_list)VECTOR_INIT;
            if ((ret = repo_random_bytes(c->name.b, PACK_NAME_BYTES)) < 0)
                goto out;
        }
        struct pack_entry e = {.id = *id, .off = (uint32_t)c->len, .len = (uint32_t)len};
        if ((ret = build_reserve(w, c, len)) < 0 ||
            (ret = pack_entry_list_append(&c->entries, e)) < 0 ||
            (w->dedup && (ret = chunk_set_add(&w->pending, id)) < 0))
            goto out;
        memcpy(c->buf + c->len, container, len);
        c->len += len;
        w->pending_bytes += len;
        if (pending)
            *pending = w->pending_bytes + (uint64_t)w->pending.len * PACK_PENDING_CHUNK_COST;
    out:;
    }
    if (have_full) {
        int sret = writer_stage(w, &full);
        if (ret == 0)
            ret = sret;
    }
    return ret;
}

/* The entry numbers of x->main grouped by pack: (*order)[(*start)[p] .. (*start)[p + 1]) are
 * pack p's, in offset order within the index's ID order (free() both). */
static int order_by_pack(const struct pack_index *x, uint32_t **order, size_t **start)
{
    size_t np = x->n_packs;
    *order = malloc((x->n_main ? x->n_main : 1) * sizeof(**order));
    *start = calloc(np + 2, sizeof(**start));
    CLEANUP_FREE size_t *fill = malloc((np + 1) * sizeof(*fill));
    if (!*order || !*start || !fill) {
        free(*order);
        free(*start);
        *order = NULL;
        *start = NULL;
        return -ENOMEM;
    }
    size_t *st = *start;
    for (size_t i = 0; i < x->n_main; i++)
        st[x->main[i].pack + 1]++;
    for (size_t p = 0; p < np; p++)
        st[p + 1] += st[p];
    memcpy(fill, st, (np + 1) * sizeof(*fill));
    for (size_t i = 0; i < x->n_main; i++)
        (*order)[fill[x->main[i].pack]++] = (uint32_t)i;
    return 0;
}

/* Room for len bytes in *seg (capacity *cap). */
static int seg_reserve(uint8_t **seg, size_t *cap, size_t len)
{
    if (len <= *cap)
        return 0;
    free(*seg);
    *seg = malloc(len);
    *cap = *seg ? len : 0;
    return *seg ? 0 : -ENOMEM;
}

static void seg_head(uint8_t *seg, const struct pack_name *name, uint64_t bytes)
{
    memcpy(seg, name->b, PACK_NAME_BYTES);
    bytes = htole64(bytes);
    memcpy(seg + PACK_NAME_BYTES, &bytes, sizeof(bytes));
}

static void seg_entry(uint8_t *seg, size_t k, const struct chunk_id *id, uint32_t off, uint32_t len)
{
    uint8_t *e = seg + PACK_SEG_HEAD + k * PACK_ENTRY_SIZE;
    memcpy(e, id->b, HASH_SIZE);
    put_u32(e + HASH_SIZE, off);
    put_u32(e + HASH_SIZE + 4, len);
}

static bool bit_test(const uint64_t *bits, size_t i)
{
    return (bits[i / 64] >> (i % 64)) & 1;
}

/* Write one index object naming the new packs (all their entries) and, for gc, the kept packs
 * of the index keep (kept[p]) with their live entries only (bit i of live for entry i). */
static int index_write(struct repo *r, const struct pack_build *packs, size_t n,
                       const struct pack_index *keep, const bool *kept, const uint64_t *live)
{
    char name[2 * INDEX_NAME_BYTES + 1], key[sizeof(REPO_INDEX_DIR "/") + 2 * INDEX_NAME_BYTES];
    struct stream_writer *sw = NULL;
    uint64_t items = 0;
    int ret = repo_random_hex(name, INDEX_NAME_BYTES);
    if (ret < 0)
        return ret;
    snprintf(key, sizeof(key), REPO_INDEX_DIR "/%s", name);
    ret = stream_writer_new(r, key, &sw);
    if (ret < 0)
        return ret;
    ret = stream_writer_add(sw, INDEX_MAGIC, sizeof(INDEX_MAGIC) - 1);
    CLEANUP_FREE uint8_t *seg = NULL;
    size_t seg_cap = 0;
    for (size_t i = 0; ret == 0 && i < n; i++) {
        size_t cnt = packs[i].entries.len;
        ret = seg_reserve(&seg, &seg_cap, PACK_SEG_HEAD + cnt * PACK_ENTRY_SIZE);
        if (ret < 0)
            break;
        seg_head(seg, &packs[i].name, packs[i].chunk_bytes);
        for (size_t k = 0; k < cnt; k++)
            seg_entry(seg, k, &packs[i].entries.ptr[k].id, packs[i].entries.ptr[k].off,
                      packs[i].entries.ptr[k].len);
        items += cnt;
        ret = stream_writer_add(sw, seg, PACK_SEG_HEAD + cnt * PACK_ENTRY_SIZE);
    }
    if (keep) {
        CLEANUP_FREE uint32_t *order = NULL;
        CLEANUP_FREE size_t *start = NULL;
        if (ret == 0)
            ret = order_by_pack(keep, &order, &start);
        for (size_t p = 0; ret == 0 && p < keep->n_packs; p++) {
            size_t all = start[p + 1] - start[p], cnt = 0;
            if (!kept[p])
                continue;
            ret = seg_reserve(&seg, &seg_cap, PACK_SEG_HEAD + all * PACK_ENTRY_SIZE);
            if (ret < 0)
                break;
            seg_head(seg, &keep->packs[p], keep->pack_bytes[p]);
            for (size_t k = 0; k < all; k++) {
                size_t i = order[start[p] + k];
                if (live && !bit_test(live, i))
                    continue; /* dead: its bytes stay in the pack until it is repacked */
                seg_entry(seg, cnt++, &keep->main[i].id, keep->main[i].off, keep->main[i].len);
            }
            items += cnt;
            ret = stream_writer_add(sw, seg, PACK_SEG_HEAD + cnt * PACK_ENTRY_SIZE);
        }
    }
    CLEANUP_FREE uint8_t *data = NULL;
    size_t len;
    if (ret == 0)
        ret = stream_writer_take(sw, items, &data, &len);
    if (ret == 0)
        ret = store_put(r->store, key, data, len, STORE_PUT_CREATE, NULL);
    if (ret == 0 && index_cache_enabled(r))
        index_cache_put(r, name, data, len); /* the next backup need not fetch it */
    stream_writer_free(sw);
    return ret;
}

/* Add flushed packs to the loaded index (when loaded: else the next load reads them). */
static int index_note(struct repo *r, const struct pack_build *packs, size_t n)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&r->index_mutex);
    struct pack_index *x = r->index;
    if (!x)
        return 0;
    int ret = 0;
    size_t before = x->n_delta;
    for (size_t i = 0; ret == 0 && i < n; i++) {
        uint32_t no;
        ret = index_add_pack(x, &packs[i].name, packs[i].chunk_bytes, &no);
        if (ret == 0)
            ret = delta_reserve(x, packs[i].entries.len);
        for (size_t k = 0; ret == 0 && k < packs[i].entries.len; k++)
            x->delta[x->n_delta++] = (struct index_entry){.id = packs[i].entries.ptr[k].id,
                                                          .pack = no,
                                                          .off = packs[i].entries.ptr[k].off,
                                                          .len = packs[i].entries.ptr[k].len};
    }
    if (ret == 0)
        ret = index_settle(x, before);
    if (ret < 0) { /* load again on the next lookup */
        index_free(x);
        r->index = NULL;
    }
    return 0;
}

/* Take everything pending out of the writer and commit it: the packs in *out (n). */
static int writer_commit(struct pack_writer *w, pack_build_list *out)
{
    struct pack_build cur;
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&w->mu);
        cur = w->cur;
        memset(&w->cur, 0, sizeof(w->cur));
        *out = w->staged;
        w->staged = (pack_build_list)VECTOR_INIT;
        chunk_set_free(&w->pending);
        w->pending_bytes = 0;
    }
    int ret = 0;
    if (cur.entries.len) {
        ret = build_finish(w, &cur);
        if (ret == 0)
            ret = pack_build_list_append(out, cur);
        if (ret < 0)
            build_free(w, &cur);
    } else {
        build_free(w, &cur);
    }
    if (!out->len)
        return ret;
    CLEANUP_FREE struct store_staged **st = calloc(out->len, sizeof(*st));
    if (!st) {
        ret = -ENOMEM;
    } else {
        for (size_t i = 0; i < out->len; i++) {
            st[i] = out->ptr[i].staged;
            out->ptr[i].staged = NULL;
        }
        int cret = store_commit(w->r->store, st, out->len, NULL);
        if (ret == 0)
            ret = cret;
    }
    return ret;
}

static void builds_free(struct pack_writer *w, pack_build_list *l)
{
    for (size_t i = 0; i < l->len; i++)
        build_free(w, &l->ptr[i]);
    pack_build_list_reset(l);
}

int pack_writer_flush(struct pack_writer *w, uint64_t *chunks, uint64_t *bytes)
{
    pack_build_list l = VECTOR_INIT;
    int ret = writer_commit(w, &l);
    if (ret == 0 && l.len && w->write_index)
        ret = index_write(w->r, l.ptr, l.len, NULL, NULL, NULL);
    if (ret == 0 && w->write_index)
        ret = index_note(w->r, l.ptr, l.len);
    if (ret == 0)
        for (size_t i = 0; i < l.len; i++) {
            if (chunks)
                *chunks += l.ptr[i].entries.len;
            if (bytes)
                *bytes += l.ptr[i].len;
        }
    builds_free(w, &l);
    return ret;
}

void pack_writer_free(struct pack_writer *w)
{
    if (!w)
        return;
    build_free(w, &w->cur);
    builds_free(w, &w->staged);
    chunk_set_free(&w->pending);
    if (w->spare)
        munmap(w->spare, w->buf_cap);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

/* ---- gc ---- */

struct pack_gc {
    struct repo *r;
    struct pack_index *x; /* loaded fresh (main only) */
    string_list index_names;
    uint64_t *live; /* a bit per entry of x->main */
};

int pack_gc_new(struct repo *r, struct pack_gc **out)
{
    struct pack_gc *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    g->r = r;
    int ret = index_load(r, &g->x, &g->index_names);
    if (ret == 0 && !(g->live = calloc(g->x->n_main / 64 + 1, sizeof(*g->live))))
        ret = -ENOMEM;
    if (ret < 0) {
        pack_gc_free(g);
        return ret;
    }
    *out = g;
    return 0;
}

void pack_gc_mark(struct pack_gc *g, const struct chunk_id *id)
{
    const struct index_entry *e = search(g->x->main, g->x->n_main, id);
    if (!e)
        return; /* missing: verify reports it */
    /* The first of equal IDs is the one kept (duplicates die with their packs). */
    size_t i = (size_t)(e - g->x->main);
    while (i > 0 && !memcmp(g->x->main[i - 1].id.b, id->b, HASH_SIZE))
        i--;
    g->live[i / 64] |= (uint64_t)1 << (i % 64);
}

void pack_gc_free(struct pack_gc *g)
{
    if (!g)
        return;
    index_free(g->x);
    string_list_free(&g->index_names);
    free(g->live);
    free(g);
}

static bool is_live(const struct pack_gc *g, size_t i)
{
    return (g->live[i / 64] >> (i % 64)) & 1;
}

/* Copy the live chunks of pack p into the writer (one read of the pack). */
static int repack_one(struct pack_gc *g, struct pack_writer *w, uint32_t p, const uint32_t *order,
                      const size_t *start)
{
    char key[PACK_KEY_LEN];
    pack_key(&g->x->packs[p], key);
    CLEANUP_FREE uint8_t *data = NULL;
    size_t len;
    int ret = store_get(g->r->store, key, UINT64_MAX, &data, &len);
    if (ret < 0)
        return ret;
    for (size_t k = start[p]; ret >= 0 && k < start[p + 1]; k++) {
        size_t i = order[k];
        const struct index_entry *e = &g->x->main[i];
        if (!is_live(g, i))
            continue;
        if ((uint64_t)e->off + e->len > len)
            return -EBADMSG;
        ret = pack_writer_add(w, &e->id, data + e->off, e->len, NULL);
    }
    return ret < 0 ? ret : 0;
}

struct tmp_walk {
    struct pack_gc *g;
    const char *prefix;
    const struct pack_name *keep; /* sorted names of the packs the index names */
    size_t n_keep;
    bool dry_run;
    struct gc_stats *st;
    bool removed;
};

static int name_cmp(const void *a, const void *b)
{
    return memcmp(a, b, PACK_NAME_BYTES);
}

/* In packs/<ab>/: temporary objects, and packs no index names (a crash before their index). */
static int orphan_entry(void *opaque, const struct store_entry *e)
{
    struct tmp_walk *w = opaque;
    char key[PACK_KEY_LEN + 64];
    struct pack_name name;
    if (e->prefix)
        return 0;
    bool tmp = repo_is_tmp_name(e->name);
    if (!tmp && (strlen(e->name) != 2 * PACK_NAME_BYTES ||
                 hex_decode(e->name, name.b, PACK_NAME_BYTES) < 0 ||
                 bsearch(&name, w->keep, w->n_keep, sizeof(name), name_cmp)))
        return 0;
    if ((size_t)snprintf(key, sizeof(key), "%s/%s", w->prefix, e->name) >= sizeof(key))
        return 0;
    int ret;
    if (w->dry_run) {
        struct store_stat s;
        ret = store_stat(w->g->r->store, key, &s);
        if (ret == 0)
            w->st->bytes_freed += s.size;
    } else {
        ret = lock_check(w->g->r);
        if (ret == 0)
            ret = repo_store_del(w->g->r, key, &w->st->bytes_freed);
    }
    if (ret == -ENOENT)
        return 0;
    if (ret < 0)
        return ret;
    w->removed = true;
    if (tmp)
        w->st->temp_files_removed++;
    return 0;
}

static int orphan_subdir(void *opaque, const struct store_entry *e)
{
    struct tmp_walk *w = opaque;
    char dir[sizeof(REPO_PACKS_DIR "/ab")];
    if (!e->prefix || !chunk_subdir_valid(e->name))
        return orphan_entry(w, e); /* a temporary object directly under packs/ */
    snprintf(dir, sizeof(dir), REPO_PACKS_DIR "/%s", e->name);
    struct tmp_walk sub = *w;
    sub.prefix = dir;
    sub.removed = false;
    int ret = store_list(w->g->r->store, dir, orphan_entry, &sub);
    if (ret == -ENOENT)
        return 0;
    if (ret == 0 && sub.removed && !w->dry_run)
        ret = store_sync_prefix(w->g->r->store, dir);
    return ret;
}

static int index_tmp_entry(void *opaque, const struct store_entry *e)
{
    struct tmp_walk *w = opaque;
    char key[sizeof(REPO_INDEX_DIR "/") + NAME_MAX];
    if (e->prefix || !repo_is_tmp_name(e->name) ||
        (size_t)snprintf(key, sizeof(key), REPO_INDEX_DIR "/%s", e->name) >= sizeof(key))
        return 0;
    int ret = w->dry_run ? 0 : lock_check(w->g->r);
    if (ret == 0 && !w->dry_run)
        ret = repo_store_del(w->g->r, key, &w->st->bytes_freed);
    if (ret == 0) {
        w->st->temp_files_removed++;
        w->removed = true;
    }
    return ret == -ENOENT ? 0 : ret;
}

/* Remove orphan packs and temporary objects under packs/ and index/ (the packs the index names
 * are keep, sorted). */
static int remove_orphans(struct pack_gc *g, const struct pack_name *keep, size_t n_keep,
                          bool dry_run, struct gc_stats *st)
{
    struct tmp_walk w = {.g = g,
                         .prefix = REPO_PACKS_DIR,
                         .keep = keep,
                         .n_keep = n_keep,
                         .dry_run = dry_run,
                         .st = st};
    int ret = store_list(g->r->store, REPO_PACKS_DIR, orphan_subdir, &w);
    if (ret == -ENOENT)
        ret = 0;
    if (ret < 0)
        return ret;
    w.removed = false;
    ret = store_list(g->r->store, REPO_INDEX_DIR, index_tmp_entry, &w);
    if (ret == -ENOENT)
        return 0;
    if (ret == 0 && w.removed && !dry_run)
        ret = store_sync_prefix(g->r->store, REPO_INDEX_DIR);
    return ret;
}

struct numbered_name {
    struct pack_name name;
    uint32_t no;
};

/* By name, then number: the lowest number of a repeated name comes first. */
static int numbered_cmp(const void *a, const void *b)
{
    const struct numbered_name *x = a, *y = b;
    int c = name_cmp(&x->name, &y->name);
    return c ? c : x->no < y->no ? -1 : x->no > y->no;
}

int pack_gc_run(struct pack_gc *g, bool dry_run, bool force, struct gc_stats *st)
{
    struct pack_index *x = g->x;
    struct repo *r = g->r;
    size_t np = x->n_packs;
    CLEANUP_FREE uint64_t *total = calloc(np + 1, sizeof(*total));
    CLEANUP_FREE uint64_t *dead = calloc(np + 1, sizeof(*dead));
    CLEANUP_FREE uint64_t *live_bytes = calloc(np + 1, sizeof(*live_bytes));
    CLEANUP_FREE bool *kept = calloc(np + 1, sizeof(*kept));
    CLEANUP_FREE bool *seen = calloc(np + 1, sizeof(*seen));
    if (!total || !dead || !live_bytes || !kept || !seen)
        return -ENOMEM;

    /* Pack names may repeat (a crash between gc's index and the deletion of the old ones):
     * the same pack under two numbers is one pack. */
    CLEANUP_FREE uint32_t *canon = malloc((np + 1) * sizeof(*canon));
    CLEANUP_FREE struct numbered_name *by_name = malloc((np + 1) * sizeof(*by_name));
    if (!canon || !by_name)
        return -ENOMEM;
    for (size_t p = 0; p < np; p++)
        by_name[p] = (struct numbered_name){.name = x->packs[p], .no = (uint32_t)p};
    qsort(by_name, np, sizeof(*by_name), numbered_cmp);
    for (size_t k = 0; k < np; k++)
        canon[by_name[k].no] = k && !name_cmp(&by_name[k - 1].name, &by_name[k].name)
                                   ? canon[by_name[k - 1].no]
                                   : by_name[k].no;
    /* A pack's dead bytes: what it holds (recorded in the index) minus its live entries.  An
     * entry not live (unreferenced, or a second copy) leaves the index at this gc; its bytes
     * stay in a kept pack until the pack is repacked. */
    bool dead_entry = false;
    for (size_t i = 0; i < x->n_main; i++) {
        struct index_entry *e = &x->main[i];
        e->pack = canon[e->pack];
        seen[e->pack] = true;
        if (is_live(g, i))
            live_bytes[e->pack] += e->len;
        else
            dead_entry = true;
        bool first = i == 0 || memcmp(x->main[i - 1].id.b, e->id.b, HASH_SIZE);
        if (st && first) {
            st->chunks_total++;
            if (!is_live(g, i)) /* the first copy of an ID is the live one when any is */
                st->chunks_deleted++;
        }
    }
    for (size_t p = 0; p < np; p++) {
        total[p] = x->pack_bytes[p];
        dead[p] = total[p] > live_bytes[p] ? total[p] - live_bytes[p] : 0;
    }

    /* Decide: keep, repack or delete each pack. */
    struct pack_writer *w = NULL;
    int ret = pack_writer_new(r, &w);
    if (ret < 0)
        return ret;
    w->write_index = false;
    w->dedup = false; /* no set of the live IDs: the live entries are unique (pack_gc_mark) */
    bool changed = g->index_names.len > 1 || dead_entry;
    CLEANUP_FREE uint32_t *order = NULL;
    CLEANUP_FREE size_t *start = NULL;
    if (ret == 0)
        ret = order_by_pack(x, &order, &start);
    for (size_t p = 0; ret == 0 && p < np; p++) {
        if (canon[p] != p || !seen[p])
            continue;
        kept[p] = true;
        if (!dead[p])
            continue;
        bool all_dead = live_bytes[p] == 0;
        bool repack = force || dead[p] * PACK_DEAD_SHARE > total[p] || total[p] < PACK_SMALL;
        if (!all_dead && !repack)
            continue;
        kept[p] = false;
        changed = true;
        if (!all_dead && !dry_run)
            ret = repack_one(g, w, (uint32_t)p, order, start);
    }
    pack_build_list made = VECTOR_INIT;
    if (ret == 0 && !dry_run && changed)
        ret = writer_commit(w, &made);

    /* One new index covering the kept and the new packs, durable before anything goes. */
    if (ret == 0 && !dry_run && changed)
        ret = index_write(r, made.ptr, made.len, x, kept, g->live);
    if (ret == 0 && !dry_run && changed) {
        for (size_t i = 0; ret == 0 && i < g->index_names.len; i++) {
            char key[sizeof(REPO_INDEX_DIR "/") + 2 * INDEX_NAME_BYTES];
            snprintf(key, sizeof(key), REPO_INDEX_DIR "/%s", g->index_names.ptr[i]);
            ret = lock_check(r);
            if (ret == 0)
                ret = repo_store_del(r, key, NULL);
            if (ret == -ENOENT)
                ret = 0;
        }
        if (ret == 0)
            ret = store_sync_prefix(r->store, REPO_INDEX_DIR);
    }
    /* Packs not kept: their chunks are dead or copied (the index naming them is gone). */
    uint64_t freed = 0;
    for (size_t p = 0; ret == 0 && p < np; p++) {
        if (canon[p] != p || !seen[p] || kept[p])
            continue;
        char key[PACK_KEY_LEN];
        pack_key(&x->packs[p], key);
        if (dry_run) {
            struct store_stat s;
            if (store_stat(r->store, key, &s) == 0)
                freed += s.size;
            continue;
        }
        ret = lock_check(r);
        if (ret == 0)
            ret = repo_store_del(r, key, &freed);
        if (ret == -ENOENT)
            ret = 0;
    }
    if (ret == 0 && !dry_run && changed)
        ret = store_barrier(r->store); /* the deletions durable */
    uint64_t written = 0;
    for (size_t i = 0; i < made.len; i++)
        written += made.ptr[i].len;
    if (st)
        st->bytes_freed += freed > written ? freed - written : 0;

    /* Orphans: packs no index names any more (the ones just deleted, and crash leftovers). */
    size_t n_keep = 0;
    CLEANUP_FREE struct pack_name *keep = malloc((np + made.len + 1) * sizeof(*keep));
    if (ret == 0 && !keep)
        ret = -ENOMEM;
    for (size_t p = 0; ret == 0 && p < np; p++)
        if (canon[p] == p && seen[p] && (kept[p] || dry_run || !changed))
            keep[n_keep++] = x->packs[p];
    for (size_t i = 0; ret == 0 && i < made.len; i++)
        keep[n_keep++] = made.ptr[i].name;
    builds_free(w, &made);
    pack_writer_free(w);
    if (ret == 0) {
        qsort(keep, n_keep, sizeof(*keep), name_cmp);
        ret = remove_orphans(g, keep, n_keep, dry_run, st ? st : &(struct gc_stats){0});
    }
    if (!dry_run)
        pack_index_drop(r);
    return ret;
}
