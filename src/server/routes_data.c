/* API routes that serve disk data: the bytes of a snapshot disk (Range, multipart/byteranges,
 * ETag, If-Range; short ranges read into memory, longer ones sent with sendfile on plain HTTP
 * and in 1 MiB blocks with TLS, past the page cache where the provider's reader allows; the
 * small parts of a multipart answer read ahead all at once, not one disk wait after another; a
 * single range without its blocks of zeros to clients that accept
 * application/vnd.vmexport.sparse) and VMware-style changed areas (QueryChangedDiskAreas, from
 * the provider's disk_changes).  Every disk is read through its provider's struct disk_reader,
 * opened from the catalog's locator and kept in the cache of open disks (disk_cache.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/clock.h"
#include "core/hex.h"
#include "core/log.h"
#include "core/sparse.h"
#include "core/jsonw.h"
#include "server/disk_cache.h"
#include "server/range.h"
#include "server/server.h"

/* Most areas in one /changes answer; startOffset continues (as VMware's API pages). */
#define CHANGES_PAGE_MAX 10000
/* Read size of multipart responses. */
#define MULTIPART_BLOCK (256 * 1024)

/* Look up VM snapshot disk from the URL: 0 and *snap, *disk; or a reply was queued (< 0 ret). */
static int lookup_disk(struct request *rq, struct snapshot **snap,
                       const struct snapshot_disk **disk, int *ret)
{
    int r = catalog_snapshot_get(rq->srv->catalog, rq->segs[1], rq->segs[3], snap);
    if (r == 0 && !strcmp((*snap)->status, "checkpoint")) {
        *ret = reply_error(rq, 409, "conflict",
                           "snapshot '%s' of VM '%s' keeps only its checkpoint: its data was "
                           "released (it can still be the base of changes)",
                           rq->segs[3], rq->segs[1]);
        snapshot_free(*snap);
        *snap = NULL;
        return -1;
    }
    if (r == -ENOENT || (r == 0 && strcmp((*snap)->status, "ready"))) {
        snapshot_free(*snap);
        *snap = NULL;
        *ret = reply_error(rq, 404, "not found", "snapshot '%s' of VM '%s' not found", rq->segs[3],
                           rq->segs[1]);
        return -1;
    }
    if (r < 0) {
        *ret = reply_errno(rq, r, "catalog");
        return -1;
    }
    for (size_t i = 0; i < (*snap)->disks.len; i++) {
        if (!strcmp((*snap)->disks.ptr[i].name, rq->segs[5])) {
            *disk = &(*snap)->disks.ptr[i];
            return 0;
        }
    }
    *ret = reply_error(rq, 404, "not found", "disk '%s' not in snapshot '%s'", rq->segs[5],
                       rq->segs[3]);
    snapshot_free(*snap);
    *snap = NULL;
    return -1;
}

/* The key of the disk named by the URL in the cache of open disks (disk_cache.h): VM, snapshot
 * and disk IDs, each with its NUL. */
static size_t disk_key(struct request *rq, char *key, size_t size)
{
    size_t n = 0;
    for (int i = 1; i <= 5; i += 2) {
        size_t len = strlen(rq->segs[i]) + 1;
        if (n + len > size)
            return 0;
        memcpy(key + n, rq->segs[i], len);
        n += len;
    }
    return n;
}

/* The snapshot disk the URL names, open, from the cache or the catalog: 0 and *out (release
 * with disk_file_unref); or a reply was queued (-1, *ret). */
static int disk_file_get(struct request *rq, struct disk_file **out, int *ret)
{
    struct server *srv = rq->srv;
    char key[3 * (ID_MAX + 1)];
    size_t len = disk_key(rq, key, sizeof(key));
    if (len && (*out = disk_cache_get(srv->disk_cache, key, len)))
        return 0;

    unsigned long long gen = disk_cache_gen(srv->disk_cache);
    struct snapshot *snap = NULL;
    const struct snapshot_disk *disk = NULL;
    if (lookup_disk(rq, &snap, &disk, ret) < 0)
        return -1;
    struct provider *p = server_provider(srv, snap->provider);
    struct disk_reader *reader = NULL;
    int r = p ? p->ops->disk_open(p, disk->locator, DISK_OPEN_STREAM, &reader) : -ENOENT;
    if (r == -EFBIG || r == -ETIME) {
        *ret = reply_error(rq, 410, "gone",
                           "snapshot '%s' disk '%s' was ended by its provider: %s; its data is "
                           "gone, take a new snapshot",
                           snap->id, disk->name,
                           r == -EFBIG ? "its scratch space reached scratch_limit"
                                       : "it outlived snapshot_lifetime");
        snapshot_free(snap);
        return -1;
    }
    if (r < 0) {
        *ret = p ? reply_error(rq, 500, "internal error", "snapshot '%s' disk '%s': %s: %s",
                               snap->id, disk->name, disk->locator, strerror(-r))
                 : reply_error(rq, 500, "internal error",
                               "snapshot '%s': provider '%s' is not configured", snap->id,
                               snap->provider);
        snapshot_free(snap);
        return -1;
    }
    struct disk_file *f = disk_file_new(reader, disk->locator);
    if (!f) {
        snapshot_free(snap);
        *ret = reply_error(rq, 500, "internal error", "out of memory");
        return -1;
    }
    http_etag(snap->id, disk->name, f->size, f->etag);
    snapshot_free(snap);
    if (len)
        disk_cache_put(srv->disk_cache, key, len, f, gen);
    *out = f;
    return 0;
}

/* ---- file ranges ---- */

/* Block size of TLS file responses: libmicrohttpd reads an fd response through its connection
 * buffer in small pieces, which caps TLS throughput; a callback with large blocks does not.
 * Plain HTTP keeps fd responses, which libmicrohttpd sends with sendfile(2). */
#define TLS_FILE_BLOCK     (1024 * 1024)
#define TLS_FILE_BLOCK_MIN 4096 /* for empty and tiny responses */
/* Ranges up to this size are read into memory when the request is answered. */
#define SMALL_RANGE_MAX (64 * 1024)
/* Alignment of the buffers of reads that may skip the page cache (DISK_READ_ONCE): at least
 * any reader's direct_align (4 KiB for files). */
#define DIRECT_ALIGN 4096

struct file_range {
    struct disk_file *file; /* a reference */
    uint64_t start;
    struct server *srv;
    uint8_t *bounce; /* TLS_FILE_BLOCK bytes, 4 KiB-aligned: for O_DIRECT reads; or NULL */
};

/* A block of a TLS response.  A backup reads each byte of a snapshot once, so bytes that are
 * not in the page cache are read with DISK_READ_ONCE (past the cache) into the bounce buffer,
 * aligned as the reader needs, and copied into libmicrohttpd's block (not aligned): in a VM the
 * page cache's fresh pages cost more than the copy (an 8 GiB backup over TLS spent a fifth of
 * its CPU time copying from the page cache).  Cached bytes and unaligned pieces are read
 * through the cache. */
static ssize_t file_range_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct file_range *f = cls;
    struct disk_reader *rd = f->file->reader;
    const uint64_t off = f->start + pos;
    size_t align = rd->direct_align;
    size_t n = max > TLS_FILE_BLOCK ? TLS_FILE_BLOCK : align ? max / align * align : 0;
    if (align && n && off % align == 0 && !rd->ops->cached(rd, off, n)) {
        if (!f->bounce)
            f->bounce = aligned_alloc(DIRECT_ALIGN, TLS_FILE_BLOCK);
        size_t got = 0;
        if (f->bounce && rd->ops->pread(rd, f->bounce, n, off, DISK_READ_ONCE, &got) == 0 &&
            got > 0) {
            memcpy(buf, f->bounce, got);
            return (ssize_t)got;
        }
    }
    size_t got = 0;
    if (rd->ops->pread(rd, buf, max, off, 0, &got) < 0 || got == 0)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    return (ssize_t)got;
}

static void file_range_free(void *cls)
{
    struct file_range *f = cls;
    disk_file_unref(f->srv->disk_cache, f->file);
    free(f->bounce);
    free(f);
}

/* A response of len bytes of fd from start, read now into memory: for short ranges, where
 * libmicrohttpd's fd and callback responses cost more than the data.  NULL when the read fails
 * or comes short. */
static struct MHD_Response *small_response(struct disk_reader *rd, uint64_t start, size_t len)
{
    char *buf = malloc(len ? len : 1);
    if (!buf)
        return NULL;
    size_t got = 0;
    if (rd->ops->pread(rd, buf, len, start, 0, &got) < 0 || got != len) {
        free(buf);
        return NULL;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE);
    if (!r)
        free(buf);
    return r;
}

/* A response of len bytes of file from start, or NULL.  A HEAD answer has no body to read. */
static struct MHD_Response *file_response(struct server *srv, struct disk_file *file,
                                          uint64_t start, uint64_t len, bool head)
{
    if (len <= SMALL_RANGE_MAX && !head)
        return small_response(file->reader, start, (size_t)len);
    /* libmicrohttpd closes the fd of the response: its own. */
    int fd = srv->cert_pem ? -EOPNOTSUPP : file->reader->ops->dup_fd(file->reader);
    if (fd >= 0) {
        struct MHD_Response *r = MHD_create_response_from_fd_at_offset64(len, fd, start);
        if (!r)
            close(fd);
        return r;
    }
    if (fd != -EOPNOTSUPP)
        return NULL;
    struct file_range *f = malloc(sizeof(*f));
    if (!f)
        return NULL;
    disk_file_ref(srv->disk_cache, file); /* the response's, dropped by file_range_free */
    *f = (struct file_range){.file = file, .start = start, .srv = srv};
    /* libmicrohttpd allocates the block with the response: no more than a short range needs. */
    size_t block = len < TLS_FILE_BLOCK ? (size_t)len : TLS_FILE_BLOCK;
    if (block < TLS_FILE_BLOCK_MIN)
        block = TLS_FILE_BLOCK_MIN;
    struct MHD_Response *r =
        MHD_create_response_from_callback(len, block, file_range_read, f, file_range_free);
    if (!r)
        file_range_free(f);
    return r;
}

/* ---- sparse responses (application/vnd.vmexport.sparse, core/sparse.h) ---- */

/* A range sent without its blocks of zeros: read in TLS_FILE_BLOCK blocks (O_DIRECT when not
 * cached, as above), each scanned for runs of data, sent as segments.  The body's length is
 * known only at its end: chunked transfer encoding. */
struct sparse_range {
    struct disk_file *file; /* a reference */
    struct server *srv;
    uint64_t start, len;
    uint64_t next;  /* offset (from start) of the next block to read */
    uint8_t *blk;   /* blk_cap bytes, DIRECT_ALIGN-aligned */
    size_t blk_cap; /* TLS_FILE_BLOCK, or the range rounded up to DIRECT_ALIGN if shorter */
    uint64_t blk_off;
    size_t blk_len, scan; /* bytes in blk; where the scan (or the current segment) is */
    size_t seg_left;      /* bytes of the current segment still to send, from blk + scan */
    uint8_t hdr[SPARSE_SEGMENT_HEADER];
    size_t hdr_left; /* bytes of hdr still to send */
};

/* Read the next block into s->blk: 0, or -1 (read error, or the file ended early). */
static int sparse_fill(struct sparse_range *s)
{
    struct disk_reader *rd = s->file->reader;
    size_t n = s->len - s->next < s->blk_cap ? (size_t)(s->len - s->next) : s->blk_cap;
    uint64_t off = s->start + s->next;
    size_t got = 0;
    if (rd->ops->pread(rd, s->blk, n, off, DISK_READ_ONCE, &got) < 0 || got != n)
        return -1;
    s->blk_off = s->next;
    s->blk_len = n;
    s->scan = 0;
    s->next += n;
    return 0;
}

static ssize_t sparse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct sparse_range *s = cls;
    size_t out = 0;
    while (out < max) {
        if (s->hdr_left) {
            size_t k = s->hdr_left < max - out ? s->hdr_left : max - out;
            memcpy(buf + out, s->hdr + SPARSE_SEGMENT_HEADER - s->hdr_left, k);
            s->hdr_left -= k;
            out += k;
        } else if (s->seg_left) {
            size_t k = s->seg_left < max - out ? s->seg_left : max - out;
            memcpy(buf + out, s->blk + s->scan, k);
            s->scan += k;
            s->seg_left -= k;
            out += k;
            atomic_fetch_add(&s->srv->metrics.bytes_served, (unsigned long long)k);
        } else if (s->scan < s->blk_len) {
            size_t run;
            if (sparse_next_run(s->blk, s->blk_len, s->start + s->blk_off, &s->scan, &run)) {
                sparse_header_encode(s->hdr, s->blk_off + s->scan, run);
                s->hdr_left = SPARSE_SEGMENT_HEADER;
                s->seg_left = run;
            }
        } else if (s->next < s->len) {
            if (sparse_fill(s) < 0)
                return MHD_CONTENT_READER_END_WITH_ERROR;
        } else {
            break;
        }
    }
    return out ? (ssize_t)out : MHD_CONTENT_READER_END_OF_STREAM;
}

static void sparse_free(void *cls)
{
    struct sparse_range *s = cls;
    disk_file_unref(s->srv->disk_cache, s->file);
    free(s->blk);
    free(s);
}

static struct MHD_Response *sparse_response(struct server *srv, struct disk_file *file,
                                            uint64_t start, uint64_t len)
{
    struct sparse_range *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    /* a short range needs no more (a 4 KiB read must not fault in a 1 MiB buffer) */
    s->blk_cap = len < TLS_FILE_BLOCK
                     ? (size_t)(len + DIRECT_ALIGN - 1) / DIRECT_ALIGN * DIRECT_ALIGN
                     : TLS_FILE_BLOCK;
    s->blk = aligned_alloc(DIRECT_ALIGN, s->blk_cap);
    if (!s->blk) {
        free(s);
        return NULL;
    }
    disk_file_ref(srv->disk_cache, file); /* the response's, dropped by sparse_free */
    s->file = file;
    s->srv = srv;
    s->start = start;
    s->len = len;
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, TLS_FILE_BLOCK,
                                                               sparse_read, s, sparse_free);
    if (!r)
        sparse_free(s);
    return r;
}

/* ---- multipart/byteranges ---- */

/* Parts of a multipart answer up to this size (a backup's scattered extents: 4 KiB) are read
 * ahead when the answer is made (DISK_ADVISE_WILLNEED), all at once, MULTIPART_PREFETCH_MAX
 * bytes at most: their reads are in flight together instead of one after the other, each a
 * wait for the disk (4 TiB disk, 65,536 scattered 4 KiB extents: the daemon waited on 65,536
 * O_DIRECT reads in turn).  They are read through the page cache, and the span they cover
 * leaves it when the answer ends (DISK_ADVISE_DONE, one call).  Larger parts are read when
 * sent, past the cache (DISK_READ_ONCE). */
#define MULTIPART_PREFETCH_PART (256 * 1024)
#define MULTIPART_PREFETCH_MAX  (4 * 1024 * 1024)

struct part {
    char *header; /* boundary line and part headers */
    size_t header_len;
    uint64_t start, len;
    bool prefetched; /* read ahead: read through the page cache */
};

struct multipart {
    struct disk_file *file; /* a reference */
    struct part *parts;
    size_t n;
    char *trailer; /* closing boundary */
    size_t trailer_len;
    struct server *srv;
    uint8_t *bounce;               /* MULTIPART_BOUNCE bytes, DIRECT_ALIGN-aligned, once needed */
    uint64_t drop_start, drop_end; /* the span of the parts read ahead (drop_end 0: none) */
};

/* Aligned pieces of parts are read through a bounce buffer of this size with DISK_READ_ONCE:
 * past the cache where not cached, without readahead (a backup's scattered 4 KiB extents made
 * the kernel read ahead 128 KiB of holes into the cache for each). */
#define MULTIPART_BOUNCE (64 * 1024)

/* Start reading the small parts (MULTIPART_PREFETCH_PART, MULTIPART_PREFETCH_MAX in all). */
static void multipart_prefetch(struct multipart *m)
{
    struct disk_reader *rd = m->file->reader;
    uint64_t budget = MULTIPART_PREFETCH_MAX;
    if (!rd->ops->advise)
        return;
    for (size_t i = 0; i < m->n; i++) {
        struct part *p = &m->parts[i];
        if (p->len > MULTIPART_PREFETCH_PART || p->len > budget)
            continue;
        rd->ops->advise(rd, p->start, p->len, DISK_ADVISE_WILLNEED);
        p->prefetched = true;
        budget -= p->len;
        if (m->drop_end == 0 || p->start < m->drop_start)
            m->drop_start = p->start;
        if (p->start + p->len > m->drop_end)
            m->drop_end = p->start + p->len;
    }
}

/* One piece of the body at pos: bytes copied or read into buf (at most max), 0 at its end,
 * or -1 on a read error. */
static ssize_t multipart_piece(struct multipart *m, uint64_t pos, char *buf, size_t max)
{
    for (size_t i = 0; i < m->n; i++) {
        struct part *p = &m->parts[i];
        if (pos < p->header_len) {
            size_t n = p->header_len - pos < max ? p->header_len - (size_t)pos : max;
            memcpy(buf, p->header + pos, n);
            return (ssize_t)n;
        }
        pos -= p->header_len;
        if (pos < p->len) {
            size_t n = p->len - pos < max ? (size_t)(p->len - pos) : max;
            size_t got = 0;
            struct disk_reader *rd = m->file->reader;
            uint64_t at = p->start + pos;
            if (p->prefetched) {
                if (rd->ops->pread(rd, buf, n, at, 0, &got) < 0 || got == 0)
                    return -1;
                atomic_fetch_add(&m->srv->metrics.bytes_served, (unsigned long long)got);
                return (ssize_t)got;
            }
            size_t whole = n < MULTIPART_BOUNCE ? n / DIRECT_ALIGN * DIRECT_ALIGN : MULTIPART_BOUNCE;
            if (rd->direct_align && DIRECT_ALIGN % rd->direct_align == 0 &&
                at % DIRECT_ALIGN == 0 && whole > 0 &&
                (m->bounce || (m->bounce = aligned_alloc(DIRECT_ALIGN, MULTIPART_BOUNCE)))) {
                if (rd->ops->pread(rd, m->bounce, whole, at, DISK_READ_ONCE, &got) < 0 ||
                    got == 0)
                    return -1;
                memcpy(buf, m->bounce, got);
            } else if (rd->ops->pread(rd, buf, n, at, 0, &got) < 0 || got == 0) {
                return -1;
            }
            atomic_fetch_add(&m->srv->metrics.bytes_served, (unsigned long long)got);
            return (ssize_t)got;
        }
        pos -= p->len;
    }
    if (pos < m->trailer_len) {
        size_t n = m->trailer_len - pos < max ? m->trailer_len - (size_t)pos : max;
        memcpy(buf, m->trailer + pos, n);
        return (ssize_t)n;
    }
    return 0;
}

/* Fills buf with as many pieces as fit: many small parts (a backup's scattered extents) go
 * out in few TLS records, not two per part. */
static ssize_t multipart_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct multipart *m = cls;
    size_t out = 0;
    while (out < max) {
        ssize_t n = multipart_piece(m, pos + out, buf + out, max - out);
        if (n < 0)
            return out ? (ssize_t)out : MHD_CONTENT_READER_END_WITH_ERROR;
        if (n == 0)
            break;
        out += (size_t)n;
    }
    return out ? (ssize_t)out : MHD_CONTENT_READER_END_OF_STREAM;
}

static void multipart_free(void *cls)
{
    struct multipart *m = cls;
    for (size_t i = 0; i < m->n; i++)
        free(m->parts[i].header);
    if (m->drop_end)
        m->file->reader->ops->advise(m->file->reader, m->drop_start, m->drop_end - m->drop_start,
                                     DISK_ADVISE_DONE);
    free(m->parts);
    free(m->trailer);
    free(m->bounce);
    disk_file_unref(m->srv->disk_cache, m->file);
    free(m);
}

static struct MHD_Response *multipart_response(struct server *srv, struct disk_file *file,
                                               const byte_range_list *ranges, uint64_t size,
                                               bool head, char *content_type, size_t ct_len)
{
    uint8_t rnd[12];
    char boundary[32];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        return NULL;
    hex_encode(rnd, sizeof(rnd), boundary);
    snprintf(content_type, ct_len, "multipart/byteranges; boundary=%s", boundary);

    struct multipart *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    disk_file_ref(srv->disk_cache, file); /* the response's, dropped by multipart_free */
    m->file = file;
    m->srv = srv;
    m->parts = calloc(ranges->len, sizeof(*m->parts));
    uint64_t total = 0;
    bool oom = !m->parts;
    for (size_t i = 0; !oom && i < ranges->len; i++) {
        struct part *p = &m->parts[i];
        p->start = ranges->ptr[i].start;
        p->len = ranges->ptr[i].end - ranges->ptr[i].start + 1;
        int n = asprintf(&p->header,
                         "%s--%s\r\nContent-Type: application/octet-stream\r\n"
                         "Content-Range: bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64 "\r\n\r\n",
                         i ? "\r\n" : "", boundary, ranges->ptr[i].start, ranges->ptr[i].end, size);
        if (n < 0) {
            p->header = NULL;
            oom = true;
            break;
        }
        m->n = i + 1;
        p->header_len = (size_t)n;
        total += p->header_len + p->len;
    }
    int n = oom ? -1 : asprintf(&m->trailer, "\r\n--%s--\r\n", boundary);
    if (n < 0) {
        m->trailer = NULL;
        multipart_free(m);
        return NULL;
    }
    m->trailer_len = (size_t)n;
    total += m->trailer_len;
    if (!head)
        multipart_prefetch(m);
    /* libmicrohttpd allocates (and zeroes) the block with each answer: no more than it needs */
    size_t block = total < MULTIPART_BLOCK ? (size_t)total : MULTIPART_BLOCK;
    if (block < TLS_FILE_BLOCK_MIN)
        block = TLS_FILE_BLOCK_MIN;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(total, block, multipart_read, m, multipart_free);
    if (!resp)
        multipart_free(m);
    return resp;
}

int route_disk_data(struct request *rq)
{
    /* The catalog matched the snapshot and disk IDs exactly: they are the URL's. */
    const char *snap_id = rq->segs[3], *disk_name = rq->segs[5];
    struct disk_file *file = NULL;
    int ret;
    if (disk_file_get(rq, &file, &ret) < 0)
        return ret;

    uint64_t size;
    int r = file->reader->ops->size(file->reader, &size);
    if (r < 0) {
        ret = reply_error(rq, 500, "internal error", "snapshot '%s' disk '%s': %s: %s", snap_id,
                          disk_name, file->locator, strerror(-r));
        disk_file_unref(rq->srv->disk_cache, file);
        return ret;
    }
    char etag[HTTP_ETAG_MAX];
    if (size == file->size)
        memcpy(etag, file->etag, sizeof(etag));
    else
        http_etag(snap_id, disk_name, size, etag);

    const char *range = request_header(rq, MHD_HTTP_HEADER_RANGE);
    const char *if_range = request_header(rq, MHD_HTTP_HEADER_IF_RANGE);
    bool is_head = !strcmp(rq->method, "HEAD");
    byte_range_list ranges = VECTOR_INIT;
    r = -ENOENT;
    if (range && http_if_range_matches(if_range, etag))
        r = http_range_parse(range, size, &ranges);

    struct MHD_Response *resp = NULL;
    unsigned status = 200;
    uint64_t body_bytes = REQUEST_BYTES_UNKNOWN; /* for the access log */
    char content_range[96] = "";
    char content_type[96] = "application/octet-stream";
    if (r == -ERANGE) {
        snprintf(content_range, sizeof(content_range), "bytes */%" PRIu64, size);
        resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        status = 416;
        body_bytes = 0;
    } else if (r == 0 && ranges.len == 1) {
        uint64_t len = ranges.ptr[0].end - ranges.ptr[0].start + 1;
        snprintf(content_range, sizeof(content_range), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64,
                 ranges.ptr[0].start, ranges.ptr[0].end, size);
        status = 206;
        if (!is_head &&
            http_accepts(request_header(rq, MHD_HTTP_HEADER_ACCEPT), SPARSE_MEDIA_TYPE)) {
            /* counted as sent, without the zeros */
            resp = sparse_response(rq->srv, file, ranges.ptr[0].start, len);
            snprintf(content_type, sizeof(content_type), "%s", SPARSE_MEDIA_TYPE);
        } else {
            resp = file_response(rq->srv, file, ranges.ptr[0].start, len, is_head);
            body_bytes = len;
            if (!is_head)
                atomic_fetch_add(&rq->srv->metrics.bytes_served, len);
        }
    } else if (r == 0) {
        resp = multipart_response(rq->srv, file, &ranges, size, is_head, content_type,
                                  sizeof(content_type));
        status = 206;
    } else {
        resp = file_response(rq->srv, file, 0, size, is_head);
        body_bytes = size;
        if (!is_head)
            atomic_fetch_add(&rq->srv->metrics.bytes_served, size);
    }
    byte_range_list_reset(&ranges);
    disk_file_unref(rq->srv->disk_cache, file);
    if (!resp)
        return reply_error(rq, 500, "internal error", "cannot create the response");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCEPT_RANGES, "bytes");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_VARY, "Accept"); /* a range may come sparse */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
    if (status != 416)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (content_range[0])
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_RANGE, content_range);
    return reply_sized(rq, status, resp, body_bytes);
}

/* ---- changed areas ---- */

/* Keeps the first CHANGES_PAGE_MAX + 1 ranges at or after start, clipped to start. */
struct area_page {
    extent_list l;
    uint64_t from;
    uint64_t dropped; /* start of the first range not kept (UINT64_MAX: none) */
};

static int area_emit(void *opaque, uint64_t start, uint64_t length)
{
    struct area_page *p = opaque;
    uint64_t end = start + length;
    if (end <= p->from)
        return 0;
    if (p->l.len > CHANGES_PAGE_MAX) {
        if (start < p->dropped)
            p->dropped = start;
        return 0;
    }
    if (start < p->from)
        start = p->from;
    return extent_list_add_range(&p->l, start, end - start);
}

/* area_emit of the data extents of a disk's map. */
static int area_emit_data(void *opaque, const struct extent *e)
{
    return extent_is_data(e) ? area_emit(opaque, e->start, e->length) : 0;
}

static void write_areas(FILE *f, const char *key, const extent_list *l, uint64_t upto, bool *first)
{
    jw_key(f, first, key);
    fputc('[', f);
    bool afirst = true;
    for (size_t i = 0; i < l->len && l->ptr[i].start < upto; i++) {
        uint64_t len = extent_end(&l->ptr[i]) > upto ? upto - l->ptr[i].start : l->ptr[i].length;
        fprintf(f, "%s{\"start\":%" PRIu64 ",\"length\":%" PRIu64 "}", afirst ? "" : ",",
                l->ptr[i].start, len);
        afirst = false;
    }
    fputc(']', f);
}

int route_disk_changes(struct request *rq)
{
    struct snapshot *snap = NULL, *base = NULL;
    const struct snapshot_disk *disk = NULL;
    char *base_disk = NULL;
    int ret;
    if (lookup_disk(rq, &snap, &disk, &ret) < 0)
        return ret;

    const char *change_id = request_arg(rq, "changeId");
    const char *so = request_arg(rq, "startOffset");
    bool zeroed_in_changed;
    if (request_arg_bool(rq, "zeroedInChanged", true, &zeroed_in_changed) < 0) {
        snapshot_free(snap);
        return reply_bad_bool(rq, "zeroedInChanged");
    }
    uint64_t start = 0;
    if (so) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(so, &end, 10);
        if (errno || end == so || *end || so[0] < '0' || so[0] > '9') {
            snapshot_free(snap);
            return reply_error(rq, 400, "bad request", "startOffset must be a byte offset");
        }
        start = v;
    }
    if (!change_id || !*change_id) {
        snapshot_free(snap);
        return reply_error(rq, 400, "bad request",
                           "changeId is required: '*' for all allocated areas, or the change_id "
                           "of an older snapshot of this disk");
    }
    if (start > disk->size) {
        uint64_t size = disk->size; /* disk lives in snap */
        snapshot_free(snap);
        return reply_error(
            rq, 400, "bad request",
            "startOffset %" PRIu64 " is past the end of the disk (%" PRIu64 " bytes)", start, size);
    }

    const struct snapshot_disk *bd = NULL;
    if (strcmp(change_id, "*")) {
        int r = catalog_snapshot_by_change_id(rq->srv->catalog, change_id, &base, &base_disk);
        if (r < 0 || strcmp(base->vm_id, snap->vm_id) || strcmp(base_disk, disk->name) ||
            base->seq > snap->seq ||
            (strcmp(base->status, "ready") && strcmp(base->status, "checkpoint"))) {
            ret = reply_error(rq, 400, "bad request",
                              "changeId '%s' is not the change ID of this disk in an older "
                              "snapshot of this VM",
                              change_id);
            snapshot_free(snap);
            snapshot_free(base);
            free(base_disk);
            return ret;
        }
        for (size_t i = 0; i < base->disks.len; i++)
            if (!strcmp(base->disks.ptr[i].name, disk->name))
                bd = &base->disks.ptr[i];
    }

    /* changed = areas a VMware-style client must copy (new data and zeroed ranges: reading a
     * zeroed range gives zeros, so a client unaware of zeroedArea still restores correctly);
     * zeroed = the subset it may write as zeros without reading.  zeroedInChanged=false: changed
     * holds the new data only, for a client that writes zeroed itself. */
    struct area_page changed = {.l = VECTOR_INIT, .from = start, .dropped = UINT64_MAX};
    struct area_page zeroed = {.l = VECTOR_INIT, .from = start, .dropped = UINT64_MAX};
    uint64_t complete_below = UINT64_MAX; /* every area below this offset is in the lists */
    char cerr[256] = ""; /* why the provider cannot tell the changes */
    int r = 0;
    struct provider *p = server_provider(rq->srv, snap->provider);
    if (!p) {
        r = -ENOENT;
    } else if (bd) {
        struct area_page chp = {.l = VECTOR_INIT, .from = start, .dropped = UINT64_MAX};
        struct extent_sink cs = {.emit = area_emit, .opaque = &chp};
        struct extent_sink zs = {.emit = area_emit, .opaque = &zeroed};
        r = p->ops->disk_changes(p, bd->locator, disk->locator, &cs, &zs, NULL, cerr,
                                 sizeof(cerr));
        if (zeroed_in_changed) {
            /* union of the two sorted lists */
            extent_list ch = VECTOR_INIT;
            size_t i = 0, j = 0;
            while (r == 0 && (i < chp.l.len || j < zeroed.l.len)) {
                const struct extent *e;
                if (j >= zeroed.l.len ||
                    (i < chp.l.len && chp.l.ptr[i].start < zeroed.l.ptr[j].start))
                    e = &chp.l.ptr[i++];
                else
                    e = &zeroed.l.ptr[j++];
                r = extent_list_add_range(&ch, e->start, e->length);
            }
            extent_list_reset(&chp.l);
            changed.l = ch;
        } else {
            changed.l = chp.l; /* the changed data only */
        }
        complete_below = chp.dropped < zeroed.dropped ? chp.dropped : zeroed.dropped;
    } else {
        struct disk_reader *rd = NULL;
        r = p->ops->disk_open(p, disk->locator, 0, &rd);
        if (r == 0) {
            struct disk_map_sink sink = {.emit = area_emit_data, .opaque = &changed};
            r = rd->ops->map(rd, 0, &sink);
            disk_reader_close(rd);
        }
        complete_below = changed.dropped;
    }
    if (r == -ESTALE || r == -EXDEV) {
        ret = reply_error(rq, 409, "checkpoint",
                          "no changes of disk '%s' since changeId '%s': %s; read the disk in full "
                          "(changeId=*)",
                          disk->name, change_id, cerr[0] ? cerr : strerror(-r));
        goto out;
    }
    if (r < 0) {
        ret = reply_errno(rq, r, "changed areas");
        goto out;
    }

    /* The page ends before the first area of either list that did not fit, else at the end of
     * the disk. */
    uint64_t upto = disk->size < complete_below ? disk->size : complete_below;
    if (changed.l.len > CHANGES_PAGE_MAX && changed.l.ptr[CHANGES_PAGE_MAX].start < upto)
        upto = changed.l.ptr[CHANGES_PAGE_MAX].start;
    if (zeroed.l.len > CHANGES_PAGE_MAX && zeroed.l.ptr[CHANGES_PAGE_MAX].start < upto)
        upto = zeroed.l.ptr[CHANGES_PAGE_MAX].start;
    FILE *f = server_tmpfile();
    if (!f) {
        ret = reply_errno(rq, -errno, "temporary file");
        goto out;
    }
    bool first = true;
    fputc('{', f);
    jw_kv_u64(f, &first, "startOffset", start);
    jw_kv_u64(f, &first, "length", upto - start);
    write_areas(f, "changedArea", &changed.l, upto, &first);
    write_areas(f, "zeroedArea", &zeroed.l, upto, &first);
    jw_kv_str(f, &first, "changeId", disk->change_id);
    jw_kv_u64(f, &first, "diskSize", disk->size);
    fputc('}', f);
    ret = reply_json_file(rq, 200, f);
out:
    extent_list_reset(&changed.l);
    extent_list_reset(&zeroed.l);
    snapshot_free(snap);
    snapshot_free(base);
    free(base_disk);
    return ret;
}
