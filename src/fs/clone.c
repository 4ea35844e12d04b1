/* File clones: reflink where possible, sparse hashed copy otherwise; see clone.h. */
#include "clone.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/hash.h"
#include "core/names.h"
#include "fs/blockhash.h"
#include "fs/fsinfo.h"
#include "fs/safeopen.h"
#include "fs/zero.h"

/* Clones are private to the daemon whatever the source's mode: the source's permission bits
 * are kept within owner-only ones. */
#define CLONE_FILE_MODE 0600

/* Copy buffer: 16 hash blocks (1 MiB), big enough to keep syscalls off the profile. */
#define COPY_BUFFER_SIZE (16 * BLOCKHASH_BLOCK_SIZE)
/* Alignment of the copy buffers: what O_DIRECT reads need. */
#define COPY_ALIGN 4096

static const struct enum_name clone_mode_names[] = {
    {CLONE_AUTO, "auto"}, {CLONE_REFLINK, "reflink"}, {CLONE_COPY, "copy"}};

DEFINE_ENUM_NAMES(clone_mode, enum clone_mode, clone_mode_names)

/*
 * The hashed copy is a pipeline.  The calling thread walks the source's data extents and hands
 * them, in order, to a ring of COPY_SLOTS buffers; worker threads read any handed-out range,
 * hash its 64 KiB blocks and write its runs of data to the destination (fs_write_data_runs:
 * 4 KiB blocks of zeros stay holes, like cp --sparse=always), through the page cache (O_DIRECT
 * writes from the workers, out of order, were 1.7x slower on ext4), in whatever order they
 * finish; the calling thread then takes the buffers back in file order and appends their
 * digests to the sidecar, which must be sequential.  A run of whole hole blocks takes a slot
 * without a buffer, so holes keep their place in that order.  Writeback of the destination is
 * started behind the writes (sync_file_range) rather than all at the final fsync, and the
 * written-back pages are dropped from the cache behind it (copy_writeback).  Source
 * ranges that are not in the page cache (mincore) are read with O_DIRECT: no copy through the
 * cache, no eviction of the host's useful pages; since every worker reads its own range, up to
 * COPY_WORKERS reads are in flight, which a cold source needs while the destination's writeback
 * competes for the same disk (one read at a time: 9-11 s for the bench's cold 8 GiB copy).
 * Cached ranges are read through the cache.  Memory: COPY_SLOTS MiB.
 */
#define COPY_SLOTS     8
#define COPY_WORKERS   4            /* more than CPUs: workers also wait for their reads */
#define COPY_READAHEAD (32u << 20)  /* read-ahead hint kept this far ahead of the reads */
#define COPY_WRITEBACK (32u << 20)  /* start writeback of each this much copied data */
#define COPY_MERGE_GAP (256u << 10) /* holes shorter than this between data are read */
#define SLOT_BLOCKS    (COPY_BUFFER_SIZE / BLOCKHASH_BLOCK_SIZE)

enum slot_state { SLOT_FREE, SLOT_READY, SLOT_BUSY, SLOT_DONE };

/* The source as the workers read it. */
struct copy_source {
    int fd;
    int direct;         /* the source opened again with O_DIRECT, or -1 */
    const uint8_t *map; /* the source mapped (never touched: for mincore), or NULL */
    uint64_t map_len;
};

struct copy_slot {
    enum slot_state state;
    uint8_t *buf;     /* COPY_BUFFER_SIZE bytes */
    uint64_t pos;     /* file offset of the first block (a multiple of the block size) */
    uint64_t nblocks; /* blocks covered: read and hashed into buf, or zero blocks when hole */
    uint64_t valid;   /* bytes of the range that are file data (the rest is past EOF) */
    uint64_t got;     /* bytes the worker read */
    bool hole;        /* a run of whole hole blocks: no buffer, all digests are the zero one */
    uint64_t written; /* data bytes the worker wrote */
    int err;          /* the worker's failure, or 0 */
    uint8_t digests[SLOT_BLOCKS][BLOCKHASH_MAX_DIGEST];
};

struct copy_pipe {
    pthread_mutex_t lock;
    pthread_cond_t work; /* a slot became READY, or stop */
    pthread_cond_t done; /* a slot became DONE */
    struct copy_slot slots[COPY_SLOTS];
    uint64_t filled;    /* slots handed out so far (ring index = count % COPY_SLOTS) */
    uint64_t committed; /* slots taken back so far */
    bool stop;
    struct copy_source src;
    int out;
    enum blockhash_algo algo;
    size_t digest_size;
    const uint8_t *zero_digest;
};

/* Read [off, off + len) of the source (fewer bytes at its end): from the page cache when it
 * is all there (a warm source), else with O_DIRECT, which skips the copy through the page
 * cache and leaves the cache to others (a cold source is read once). */
static int copy_read(const struct copy_source *src, uint8_t *buf, size_t len, uint64_t off,
                     size_t *got)
{
    if (src->direct >= 0 && !fs_range_cached(src->map, src->map_len, off, len))
        return fs_pread_direct(src->fd, src->direct, buf, len, off, got);
    return fs_pread_direct(src->fd, -1, buf, len, off, got);
}

/* Read the range of a slot, hash its blocks and write its non-zero pages. */
static void copy_slot_process(struct copy_pipe *p, struct copy_slot *s)
{
    const uint64_t hb = BLOCKHASH_BLOCK_SIZE;
    const size_t want = s->nblocks * hb;
    size_t got = 0;
    int r;

    s->written = 0;
    if ((r = copy_read(&p->src, s->buf, want, s->pos, &got)) < 0) {
        s->err = r;
        return;
    }
    memset(s->buf + got, 0, want - got); /* past EOF reads as zeros */
    s->got = got;
    if (s->valid > got)
        s->valid = got;
    for (uint64_t i = 0; i < s->nblocks && r == 0; i++) {
        const uint8_t *b = s->buf + i * hb;
        if (buf_is_zero(b, hb)) {
            memcpy(s->digests[i], p->zero_digest, p->digest_size);
            continue;
        }
        if ((r = blockhash_digest(p->algo, b, hb, s->digests[i])) < 0)
            break;
        uint64_t len = s->valid > i * hb ? s->valid - i * hb : 0;
        if (len > hb)
            len = hb;
        r = fs_write_data_runs(p->out, b, len, s->pos + i * hb, &s->written);
    }
    s->err = r;
}

static void *copy_worker(void *arg)
{
    struct copy_pipe *p = arg;

    pthread_mutex_lock(&p->lock);
    while (!p->stop) { /* stop: the feeder is done, or failed and drops what is left */
        struct copy_slot *s = NULL;
        /* The oldest ready slot first, so the in-order commit waits least. */
        for (uint64_t n = p->committed; n < p->filled; n++) {
            if (p->slots[n % COPY_SLOTS].state == SLOT_READY) {
                s = &p->slots[n % COPY_SLOTS];
                break;
            }
        }
        if (!s) {
            pthread_cond_wait(&p->work, &p->lock);
            continue;
        }
        s->state = SLOT_BUSY;
        pthread_mutex_unlock(&p->lock);
        copy_slot_process(p, s);
        pthread_mutex_lock(&p->lock);
        s->state = SLOT_DONE;
        pthread_cond_broadcast(&p->done);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* State of the calling thread while it feeds the pipeline. */
struct copy_feed {
    struct copy_pipe *pipe;
    struct blockhash_writer *hw;
    struct clone_result *res;
    uint64_t copied_to;  /* end of the data committed so far */
    uint64_t flushed_to; /* writeback started up to here */
    uint64_t dropped_to; /* written back and out of the page cache up to here */
};

/* Writeback of the destination behind the copy (fs_writeback_behind): wait for the previous
 * window's and drop its pages, start the new one's.  At most about two windows of the
 * destination stay in the page cache instead of all of it (8 GiB bench image on a guest with
 * free page reporting, cold: 7.1-8.3 s -> 4.7 s; warm: 4.5-8.3 s -> 2.5 s; docs/benchmarks.md).
 * Errors of the writeback are returned here (the final fsync would also report them). */
static int copy_writeback(struct copy_feed *f)
{
    int r = fs_writeback_behind(f->pipe->out, f->dropped_to, f->flushed_to - f->dropped_to,
                                f->flushed_to, f->copied_to - f->flushed_to);
    if (r < 0)
        return r;
    f->dropped_to = f->flushed_to;
    f->flushed_to = f->copied_to;
    return 0;
}

/* Take back the oldest slot once its worker is done: its digests go to the sidecar. */
static int copy_commit_oldest(struct copy_feed *f)
{
    struct copy_pipe *p = f->pipe;
    struct copy_slot *s = &p->slots[p->committed % COPY_SLOTS];
    int r = 0;

    pthread_mutex_lock(&p->lock);
    while (s->state != SLOT_DONE)
        pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);

    if (s->err < 0)
        return s->err;
    for (uint64_t i = 0; i < s->nblocks && r == 0; i++)
        r = blockhash_writer_add(f->hw, s->hole ? p->zero_digest : s->digests[i]);
    if (r < 0)
        return r;
    f->res->bytes_read += s->got;
    f->res->bytes_written += s->written;
    if (!s->hole)
        f->copied_to = s->pos + s->nblocks * BLOCKHASH_BLOCK_SIZE;
    if (f->copied_to >= f->flushed_to + COPY_WRITEBACK && (r = copy_writeback(f)) < 0)
        return r;
    pthread_mutex_lock(&p->lock);
    s->state = SLOT_FREE;
    p->committed++;
    pthread_mutex_unlock(&p->lock);
    return 0;
}

/* The next slot to fill, committing the oldest when the ring is full. */
static int copy_next_slot(struct copy_feed *f, struct copy_slot **out)
{
    struct copy_pipe *p = f->pipe;
    if (p->filled - p->committed == COPY_SLOTS) {
        int r = copy_commit_oldest(f);
        if (r < 0)
            return r;
    }
    *out = &p->slots[p->filled % COPY_SLOTS];
    return 0;
}

/* Hand a slot to the workers (or, for a hole, straight to the commit). */
static void copy_submit(struct copy_pipe *p, struct copy_slot *s)
{
    pthread_mutex_lock(&p->lock);
    s->state = s->hole ? SLOT_DONE : SLOT_READY;
    p->filled++;
    if (!s->hole)
        pthread_cond_signal(&p->work);
    pthread_mutex_unlock(&p->lock);
}

static int copy_add_hole(struct copy_feed *f, uint64_t pos, uint64_t nblocks)
{
    struct copy_slot *s;
    int r = copy_next_slot(f, &s);
    if (r < 0)
        return r;
    s->hole = true;
    s->pos = pos;
    s->nblocks = nblocks;
    s->valid = 0;
    s->got = 0;
    s->written = 0;
    s->err = 0;
    copy_submit(f->pipe, s);
    return 0;
}

/* Hand the whole blocks covering [pos, dend) of the source to the workers. */
static int copy_add_data(struct copy_feed *f, uint64_t size, uint64_t pos, uint64_t dend)
{
    const struct copy_source *src = &f->pipe->src;
    const uint64_t hb = BLOCKHASH_BLOCK_SIZE;
    uint64_t ra_to = pos;

    while (pos < dend) {
        struct copy_slot *s;
        int r;
        uint64_t want = (dend - pos + hb - 1) / hb * hb;
        if (want > COPY_BUFFER_SIZE)
            want = COPY_BUFFER_SIZE;
        if (src->direct < 0 && dend - pos > COPY_BUFFER_SIZE && ra_to < dend &&
            ra_to < pos + COPY_READAHEAD / 2) {
            /* Keep the kernel's reads a little ahead of the workers'. */
            uint64_t from = ra_to > pos ? ra_to : pos;
            ra_to = from + COPY_READAHEAD < dend ? from + COPY_READAHEAD : dend;
            posix_fadvise(src->fd, (off_t)from, (off_t)(ra_to - from), POSIX_FADV_WILLNEED);
        }
        if ((r = copy_next_slot(f, &s)) < 0)
            return r;
        s->hole = false;
        s->pos = pos;
        s->nblocks = want / hb;
        s->valid = pos + want > size ? size - pos : want;
        s->got = 0;
        s->written = 0;
        s->err = 0;
        copy_submit(f->pipe, s);
        pos += want;
    }
    return 0;
}

/* Extend the data range [pos, *dend) over the holes shorter than COPY_MERGE_GAP that follow
 * it, up to COPY_BUFFER_SIZE: the holes are read as zeros (no disk I/O) with the data around
 * them, so a fragmented image (4 KiB of data every 16 KiB, say) is read in large requests
 * instead of one per fragment, and with two lseek calls per buffer instead of per fragment. */
static int copy_merge_small_holes(int fd, uint64_t size, uint64_t pos, uint64_t *dend)
{
    while (*dend < size && *dend - pos < COPY_BUFFER_SIZE) {
        off_t data = lseek(fd, (off_t)*dend, SEEK_DATA);
        if (data < 0)
            return errno == ENXIO ? 0 : -errno;
        if ((uint64_t)data >= size || (uint64_t)data - *dend >= COPY_MERGE_GAP)
            return 0;
        off_t hole = lseek(fd, data, SEEK_HOLE);
        if (hole < 0)
            return -errno;
        if ((uint64_t)hole <= *dend)
            return 0; /* the file changed under us */
        *dend = (uint64_t)hole < size ? (uint64_t)hole : size;
    }
    return 0;
}

/* Walk the source's data and holes, feeding the pipeline; then drain it. */
static int copy_feed_all(struct copy_feed *f, uint64_t size)
{
    const uint64_t hb = BLOCKHASH_BLOCK_SIZE;
    uint64_t pos = 0; /* always a multiple of hb */
    int r;

    while (pos < size) {
        off_t data = lseek(f->pipe->src.fd, (off_t)pos, SEEK_DATA);
        if (data < 0 && errno != ENXIO)
            return -errno;
        uint64_t dstart = data < 0 ? size : (uint64_t)data;
        if (dstart > size)
            dstart = size;
        /* Whole blocks of hole before the data: zeros, nothing to read. */
        uint64_t holes = dstart > pos ? (dstart - pos) / hb : 0;
        if (dstart == size)
            holes = (size - pos + hb - 1) / hb; /* no more data: the tail is a hole */
        if (holes) {
            if ((r = copy_add_hole(f, pos, holes)) < 0)
                return r;
            pos += holes * hb;
        }
        if (pos >= size)
            break;
        off_t hole = lseek(f->pipe->src.fd, (off_t)dstart, SEEK_HOLE);
        if (hole < 0)
            return -errno;
        uint64_t dend = (uint64_t)hole < size ? (uint64_t)hole : size;
        if (dend <= pos)
            dend = pos + 1; /* the file shrank under us: still hash this block */
        if ((r = copy_merge_small_holes(f->pipe->src.fd, size, pos, &dend)) < 0)
            return r;
        if ((r = copy_add_data(f, size, pos, dend)) < 0)
            return r;
        pos = (dend + hb - 1) / hb * hb;
    }
    while (f->pipe->committed < f->pipe->filled)
        if ((r = copy_commit_oldest(f)) < 0)
            return r;
    return 0;
}

int fs_copy_hashed(int in, int out, int out_dir, const char *out_name, enum blockhash_algo algo,
                   struct clone_result *res)
{
    const uint64_t hb = BLOCKHASH_BLOCK_SIZE;
    struct stat st;
    uint8_t zero_digest[BLOCKHASH_MAX_DIGEST];
    struct blockhash_writer hw;
    struct copy_pipe pipe = {.src = {.fd = in, .direct = -1},
                             .out = out,
                             .algo = algo,
                             .digest_size = blockhash_digest_size(algo),
                             .zero_digest = zero_digest};
    struct copy_feed feed = {.pipe = &pipe, .res = res};
    pthread_t workers[COPY_WORKERS];
    unsigned nworkers = 0;
    int r;

    if (fstat(in, &st) < 0)
        return -errno;
    uint64_t size = (uint64_t)st.st_size;
    if ((r = blockhash_zero_digest(algo, hb, zero_digest)) < 0)
        return r;
    if (ftruncate(out, (off_t)size) < 0)
        return -errno;
    if ((r = blockhash_writer_openat(&hw, out_dir, out_name, BLOCKHASH_BLOCK_SIZE, algo)) < 0)
        return r;
    posix_fadvise(in, 0, 0, POSIX_FADV_SEQUENTIAL);
    if (size && (pipe.src.direct = fs_reopen_direct(in, O_RDONLY)) >= 0) {
        void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, in, 0);
        if (map != MAP_FAILED) {
            pipe.src.map = map;
            pipe.src.map_len = size;
        } else {
            close(pipe.src.direct); /* no way to tell a warm source: read it through the cache */
            pipe.src.direct = -1;
        }
    }

    pthread_mutex_init(&pipe.lock, NULL);
    pthread_cond_init(&pipe.work, NULL);
    pthread_cond_init(&pipe.done, NULL);
    for (size_t i = 0; i < COPY_SLOTS; i++) {
        pipe.slots[i].buf = aligned_alloc(COPY_ALIGN, COPY_BUFFER_SIZE);
        if (!pipe.slots[i].buf) {
            r = -ENOMEM;
            goto out;
        }
    }
    for (; nworkers < COPY_WORKERS; nworkers++) {
        int e = pthread_create(&workers[nworkers], NULL, copy_worker, &pipe);
        if (e) {
            r = -e;
            goto out;
        }
    }

    feed.hw = &hw;
    r = copy_feed_all(&feed, size);

out:
    /* On failure, let the workers finish what they hold (their buffers are still in use). */
    pthread_mutex_lock(&pipe.lock);
    pipe.stop = true;
    pthread_cond_broadcast(&pipe.work);
    pthread_mutex_unlock(&pipe.lock);
    for (unsigned i = 0; i < nworkers; i++)
        pthread_join(workers[i], NULL);
    for (size_t i = 0; i < COPY_SLOTS; i++)
        free(pipe.slots[i].buf);
    pthread_cond_destroy(&pipe.done);
    pthread_cond_destroy(&pipe.work);
    pthread_mutex_destroy(&pipe.lock);
    if (pipe.src.map)
        munmap((void *)pipe.src.map, pipe.src.map_len);
    if (pipe.src.direct >= 0)
        close(pipe.src.direct);

    if (r == 0 && fsync(out) < 0)
        r = -errno;
    if (r == 0) /* the last windows, now clean */
        posix_fadvise(out, (off_t)feed.dropped_to, 0, POSIX_FADV_DONTNEED);
    if (r < 0) {
        blockhash_writer_abort(&hw);
        return r;
    }
    res->size = size;
    res->mode = CLONE_COPY;
    res->hash = algo;
    return blockhash_writer_commit(&hw, out);
}

static bool reflink_unsupported(int err)
{
    return err == EOPNOTSUPP || err == ENOTTY || err == EINVAL || err == ENOSYS;
}

int fs_clone_at(int in, int dst_dir, const char *dst_name, enum clone_mode mode,
                enum blockhash_algo hash, struct clone_result *res)
{
    struct stat st, dst_st;
    struct fs_info src_fs, dst_fs;
    int r;

    memset(res, 0, sizeof(*res));
    if (!dst_name[0] || strchr(dst_name, '/'))
        return -EINVAL;
    if (fstat(in, &st) < 0)
        return -errno;
    if (!S_ISREG(st.st_mode))
        return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
    if (fstatat(dst_dir, dst_name, &dst_st, AT_SYMLINK_NOFOLLOW) == 0)
        return -EEXIST;
    if ((r = fs_info_fd(in, &src_fs)) < 0)
        return r;

    CLEANUP_FREE char *prefix = NULL, *tmp = NULL;
    if (asprintf(&prefix, "%s" CLONE_TMP_SUFFIX, dst_name) < 0) {
        prefix = NULL;
        return -ENOMEM;
    }
    CLEANUP_CLOSE int out = fs_create_unique_at(dst_dir, prefix, O_RDWR, CLONE_FILE_MODE, &tmp);
    if (out < 0)
        return out;
    if ((r = fs_info_fd(out, &dst_fs)) < 0)
        goto fail;

    bool done = false;
    if (mode != CLONE_COPY) {
        /* FICLONE on the open files, OCFS2 included (Linux 4.10 and later): OCFS2's own
         * OCFS2_IOC_REFLINK takes paths, which a symlink could redirect. */
        if (src_fs.dev == dst_fs.dev) {
            r = ioctl(out, FICLONE, in) == 0 ? 0 : -errno;
            if (r == 0)
                done = true;
        } else {
            r = -EXDEV;
        }
        if (!done && (mode == CLONE_REFLINK || !(reflink_unsupported(-r) || r == -EXDEV))) {
            if (reflink_unsupported(-r))
                r = -EOPNOTSUPP;
            goto fail;
        }
        if (done) {
            res->mode = CLONE_REFLINK;
            res->size = (uint64_t)st.st_size;
            if (fsync(out) < 0) {
                r = -errno;
                goto fail;
            }
        }
    }
    if (!done && (r = fs_copy_hashed(in, out, dst_dir, dst_name, hash, res)) < 0)
        goto fail;

    if (fchmod(out, st.st_mode & CLONE_FILE_MODE) < 0) {
        r = -errno;
        goto fail;
    }
    if (renameat2(dst_dir, tmp, dst_dir, dst_name, RENAME_NOREPLACE) < 0) {
        r = -errno;
        goto fail;
    }
    return fsync(dst_dir) < 0 ? -errno : 0;

fail:
    unlinkat(dst_dir, tmp, 0);
    if (res->mode == CLONE_COPY)
        blockhash_remove_at(dst_dir, dst_name);
    memset(res, 0, sizeof(*res));
    return r;
}

int fs_clone(const char *src, const char *dst, enum clone_mode mode, enum blockhash_algo hash,
             struct clone_result *res)
{
    memset(res, 0, sizeof(*res));
    CLEANUP_CLOSE int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -errno;
    CLEANUP_FREE char *dir_copy = strdup(dst), *name_copy = strdup(dst);
    if (!dir_copy || !name_copy)
        return -ENOMEM;
    CLEANUP_CLOSE int dfd = open(dirname(dir_copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    return fs_clone_at(in, dfd, basename(name_copy), mode, hash, res);
}
