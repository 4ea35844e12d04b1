/* The download engine; see download.h.  The chunks of every disk are cut into pieces of at
 * most DOWNLOAD_PIECE_SIZE, which worker threads (one connection each) take in order, fetch
 * with a ranged GET and write as runs of data, leaving blocks of zeros as holes. */
#include "backup/download.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client/client.h"
#include "client/rest.h"
#include "core/cleanup.h"
#include "core/sparse.h"
#include "core/vector.h"
#include "fs/fsinfo.h"
#include "fs/zero.h"

/* Zeros between runs of data shorter than this are written over old data rather than punched
 * out: a hole punch per small gap would cost more than the write (downloads with a base). */
#define PUNCH_MIN ((size_t)64 << 10)

struct dl_disk {
    const json_t *chunks, *zeroed;
    bool in_base; /* a compareTo answer compared it with the base ("diff_mode") */
    int fd;
    char *url;
};

struct piece {
    size_t disk;
    uint64_t off, len;
};
DEFINE_VECTOR_TYPE(piece_vector, struct piece);

struct download {
    const struct download_request *rq;
    struct download_result *res;
    struct dl_disk *disks; /* beside res->disks */
    piece_vector pieces;
    atomic_size_t next;
    struct first_error fe;
};

struct worker {
    struct download *dl;
    struct client *c;
    int wb_fd; /* the worker's last piece, whose writeback is started (wb_len > 0) */
    uint64_t wb_off, wb_len;
};

/* Write a fetched piece: its runs of data (4 KiB blocks, core/sparse.h).  The blocks of zeros
 * between them stay holes in a new file; over old data (a download with a base) they are
 * punched out, or written when shorter than PUNCH_MIN. */
static int write_piece(int fd, bool fresh, const uint8_t *buf, size_t len, uint64_t off)
{
    size_t pos = 0, run, ws = 0, we = 0; /* [ws, we): data not written yet */
    int r = 0;
    for (;;) {
        bool more = sparse_next_run(buf, len, off, &pos, &run);
        size_t gap = pos - we; /* zeros since the data not written yet */
        if (more && we > ws && !fresh && gap < PUNCH_MIN) {
            we = pos + run; /* write the short gap with the data around it */
        } else {
            if (we > ws && (r = fs_pwrite_all(fd, buf + ws, we - ws, off + ws)) < 0)
                return r;
            if (!fresh && gap && (r = fs_zero_range(fd, off + we, gap)) < 0)
                return r;
            ws = pos;
            we = pos + run;
        }
        if (!more)
            return 0;
        pos += run;
    }
}

static void *worker_main(void *opaque)
{
    struct worker *w = opaque;
    struct download *dl = w->dl;
    CLEANUP_FREE uint8_t *buf = malloc(DOWNLOAD_PIECE_SIZE);
    if (!buf) {
        first_error_set(&dl->fe, -ENOMEM, "out of memory for a %u-byte buffer",
                        DOWNLOAD_PIECE_SIZE);
        return NULL;
    }
    while (!first_error_failed(&dl->fe)) {
        size_t i = atomic_fetch_add(&dl->next, 1);
        if (i >= dl->pieces.len)
            break;
        const struct piece *p = &dl->pieces.ptr[i];
        const struct download_disk *rd = &dl->res->disks[p->disk];
        struct dl_disk *d = &dl->disks[p->disk];
        size_t got;
        int r = client_read_range(w->c, d->url, p->off, p->len, buf, &got);
        if (r < 0) {
            first_error_set(&dl->fe, r, "disk %s: %s", rd->name, client_error(w->c));
            break;
        }
        if (got != p->len) {
            first_error_set(&dl->fe, -EPROTO,
                            "disk %s: the server sent %zu bytes at offset %llu, the snapshot "
                            "lists %llu",
                            rd->name, got, (unsigned long long)p->off, (unsigned long long)p->len);
            break;
        }
        r = write_piece(d->fd, rd->created, buf, got, p->off);
        /* Writeback behind the download: the worker's previous piece leaves the page cache
         * once on the disk, so a big disk does not flood it (the files are fsynced and
         * dropped at the end). */
        if (r == 0 && w->wb_len)
            r = fs_writeback_behind(w->wb_fd, w->wb_off, w->wb_len, 0, 0);
        if (r == 0)
            r = fs_writeback_behind(d->fd, 0, 0, p->off, got);
        if (r < 0) {
            first_error_set(&dl->fe, r, "%s/%s: writing %llu bytes at offset %llu: %s", dl->rq->dir,
                            rd->name, (unsigned long long)p->len, (unsigned long long)p->off,
                            strerror(-r));
            break;
        }
        w->wb_fd = d->fd;
        w->wb_off = p->off;
        w->wb_len = got;
    }
    return NULL;
}

/* Fetch every piece over up to rq->jobs connections (c and copies of it). */
static int dl_fetch(struct download *dl, struct client *c)
{
    unsigned jobs = dl->rq->jobs ? dl->rq->jobs : 1;
    if (dl->pieces.len == 0)
        return 0;
    if (jobs > dl->pieces.len)
        jobs = (unsigned)dl->pieces.len;
    CLEANUP_FREE struct worker *w = calloc(jobs, sizeof(*w));
    if (!w)
        return first_error_set(&dl->fe, -ENOMEM, "out of memory");
    unsigned opened = 0;
    for (; opened < jobs; opened++) {
        w[opened].dl = dl;
        int r = opened == 0 ? (w[0].c = c, 0) : client_dup(c, &w[opened].c);
        if (r < 0) {
            first_error_set(&dl->fe, r, "another connection: %s", strerror(-r));
            break;
        }
    }
    struct worker_pool pool;
    int r = worker_pool_start(&pool, opened, worker_main, w, sizeof(*w));
    if (r < 0)
        first_error_set(&dl->fe, r, "starting a download thread: %s", strerror(-r));
    worker_pool_join(&pool);
    for (unsigned i = 0; i < opened; i++) {
        dl->res->bytes_fetched += client_bytes_received(w[i].c);
        dl->res->bytes_transferred += client_bytes_on_wire(w[i].c);
        if (i > 0)
            client_free(w[i].c);
    }
    return first_error_code(&dl->fe);
}

static bool disk_name_ok(const char *name)
{
    return name && name[0] && name[0] != '.' && !strchr(name, '/');
}

static uint64_t json_u64(const json_t *obj, const char *key)
{
    json_int_t v = json_integer_value(json_object_get(obj, key));
    return v > 0 ? (uint64_t)v : 0;
}

/* Check the answer's disks and fill dl->disks and res->disks. */
static int dl_read_disks(struct download *dl)
{
    const json_t *disks = json_object_get(dl->rq->answer, "disks");
    if (!json_is_array(disks))
        return first_error_set(&dl->fe, -EPROTO, "the server's snapshot has no disk list");
    size_t n = json_array_size(disks);
    dl->disks = calloc(n ? n : 1, sizeof(*dl->disks));
    dl->res->disks = calloc(n ? n : 1, sizeof(*dl->res->disks));
    if (!dl->disks || !dl->res->disks)
        return first_error_set(&dl->fe, -ENOMEM, "out of memory");
    dl->res->ndisks = n;
    for (size_t i = 0; i < n; i++)
        dl->disks[i].fd = -1;
    for (size_t i = 0; i < n; i++) {
        const json_t *d = json_array_get(disks, i);
        struct download_disk *rd = &dl->res->disks[i];
        struct dl_disk *dd = &dl->disks[i];
        rd->name = json_string_value(json_object_get(d, "name"));
        if (!disk_name_ok(rd->name))
            return first_error_set(&dl->fe, -EPROTO,
                                   "refusing disk name '%s': not a plain file name",
                                   rd->name ? rd->name : "(none)");
        for (size_t k = 0; k < i; k++)
            if (!strcmp(dl->res->disks[k].name, rd->name))
                return first_error_set(&dl->fe, -EPROTO,
                                       "disk name '%s' appears twice in the snapshot", rd->name);
        const json_t *size = json_object_get(d, "size");
        dd->chunks = json_object_get(d, "chunks");
        dd->zeroed = json_object_get(d, "zeroed");
        if (!json_is_integer(size) || json_integer_value(size) < 0 || !json_is_array(dd->chunks))
            return first_error_set(&dl->fe, -EPROTO,
                                   "disk %s: the server's snapshot gives no size or no chunks",
                                   rd->name);
        rd->size = (uint64_t)json_integer_value(size);
        dd->in_base = json_object_get(d, "diff_mode") != NULL;
    }
    return 0;
}

/* Open (creating when fresh) and size every disk file; with a base, zero the zeroed ranges. */
static int dl_prepare_files(struct download *dl)
{
    const struct download_request *rq = dl->rq;
    struct download_result *res = dl->res;
    /* A diff applies to the files of the base: all must be there before anything changes. */
    for (size_t i = 0; i < res->ndisks; i++)
        res->disks[i].created = !rq->base || !dl->disks[i].in_base;
    for (size_t i = 0; rq->base && i < res->ndisks; i++) {
        struct stat st;
        if (!res->disks[i].created &&
            fstatat(rq->dirfd, res->disks[i].name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            return first_error_set(&dl->fe, -errno,
                                   "%s/%s: %s (--diff-from %s needs the disks of that snapshot "
                                   "there)",
                                   rq->dir, res->disks[i].name, strerror(errno), rq->base);
    }
    for (size_t i = 0; i < res->ndisks; i++) {
        struct download_disk *rd = &res->disks[i];
        struct dl_disk *d = &dl->disks[i];
        int flags = O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
        if (rd->created)
            flags |= O_CREAT | O_TRUNC;
        d->fd = openat(rq->dirfd, rd->name, flags, S_IRUSR | S_IWUSR);
        struct stat st;
        if (d->fd < 0 || fstat(d->fd, &st) < 0)
            return first_error_set(&dl->fe, -errno, "%s/%s: %s", rq->dir, rd->name,
                                   strerror(errno));
        if (!S_ISREG(st.st_mode))
            return first_error_set(&dl->fe, -EINVAL, "%s/%s: not a regular file", rq->dir,
                                   rd->name);
        if (ftruncate(d->fd, (off_t)rd->size) < 0)
            return first_error_set(&dl->fe, -errno, "%s/%s: setting the size to %llu: %s", rq->dir,
                                   rd->name, (unsigned long long)rd->size, strerror(errno));
        for (size_t k = 0; !rd->created && k < json_array_size(d->zeroed); k++) {
            const json_t *z = json_array_get(d->zeroed, k);
            uint64_t off = json_u64(z, "start"), len = json_u64(z, "length");
            if (off >= rd->size)
                continue;
            if (len > rd->size - off)
                len = rd->size - off;
            int r = fs_zero_range(d->fd, off, len);
            if (r < 0)
                return first_error_set(&dl->fe, r, "%s/%s: zeroing %llu bytes at offset %llu: %s",
                                       rq->dir, rd->name, (unsigned long long)len,
                                       (unsigned long long)off, strerror(-r));
            rd->zeroed_bytes += len;
            res->bytes_zeroed += len;
        }
    }
    return 0;
}

/* Cut every chunk into pieces of at most DOWNLOAD_PIECE_SIZE. */
static int dl_plan(struct download *dl)
{
    for (size_t i = 0; i < dl->res->ndisks; i++) {
        struct download_disk *rd = &dl->res->disks[i];
        struct dl_disk *d = &dl->disks[i];
        d->url = client_disk_data_path(dl->rq->vm, dl->rq->snapshot, rd->name);
        if (!d->url)
            return first_error_set(&dl->fe, -ENOMEM, "out of memory");
        for (size_t k = 0; k < json_array_size(d->chunks); k++) {
            const json_t *ch = json_array_get(d->chunks, k);
            uint64_t off = json_u64(ch, "start"), len = json_u64(ch, "length");
            if (off > rd->size || len > rd->size - off)
                return first_error_set(
                    &dl->fe, -EPROTO,
                    "disk %s: chunk [%llu, +%llu) lies outside the disk (%llu bytes)", rd->name,
                    (unsigned long long)off, (unsigned long long)len, (unsigned long long)rd->size);
            rd->chunk_bytes += len;
            while (len > 0) {
                uint64_t n = len < DOWNLOAD_PIECE_SIZE ? len : DOWNLOAD_PIECE_SIZE;
                if (piece_vector_append(&dl->pieces, (struct piece){i, off, n}) < 0)
                    return first_error_set(&dl->fe, -ENOMEM, "out of memory");
                off += n;
                len -= n;
            }
        }
    }
    return 0;
}

static int dl_sync(struct download *dl)
{
    for (size_t i = 0; i < dl->res->ndisks; i++) {
        if (fsync(dl->disks[i].fd) < 0)
            return first_error_set(&dl->fe, -errno, "%s/%s: fsync: %s", dl->rq->dir,
                                   dl->res->disks[i].name, strerror(errno));
        posix_fadvise(dl->disks[i].fd, 0, 0, POSIX_FADV_DONTNEED); /* the last pieces, clean now */
    }
    if (fsync(dl->rq->dirfd) < 0)
        return first_error_set(&dl->fe, -errno, "%s: fsync: %s", dl->rq->dir, strerror(errno));
    return 0;
}

int download_snapshot(struct client *c, const struct download_request *rq,
                      struct download_result *res)
{
    memset(res, 0, sizeof(*res));
    struct download dl = {.rq = rq, .res = res, .pieces = VECTOR_INIT};
    atomic_init(&dl.next, 0);
    first_error_init(&dl.fe, NULL, NULL);
    int r = dl_read_disks(&dl);
    if (r == 0)
        r = dl_plan(&dl);
    if (r == 0)
        r = dl_prepare_files(&dl);
    if (r == 0)
        r = dl_fetch(&dl, c);
    if (r == 0)
        r = dl_sync(&dl);
    if (r < 0)
        snprintf(res->error, sizeof(res->error), "%s", first_error_message(&dl.fe));
    for (size_t i = 0; dl.disks && i < res->ndisks; i++) {
        if (dl.disks[i].fd >= 0)
            close(dl.disks[i].fd);
        free(dl.disks[i].url);
    }
    free(dl.disks);
    piece_vector_reset(&dl.pieces);
    first_error_destroy(&dl.fe);
    return r;
}

void download_result_free(struct download_result *res)
{
    free(res->disks);
    res->disks = NULL;
    res->ndisks = 0;
}
