/* The upload engine; see upload.h.  Worker threads (one connection each) take chunk indexes
 * in order: a chunk that holds data is PUT, an all-zero one is only marked; afterwards the
 * runs of marked chunks go out as few PATCH zero requests. */
#include "backup/upload.h"

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client/client.h"
#include "client/rest.h"
#include "core/cleanup.h"
#include "core/hash.h"
#include "core/lock.h"
#include "fs/fsinfo.h"
#include "repo/repo.h"

/* Where chunk data comes from.  read() fills buf (len bytes) or says the chunk is all zeros. */
struct upload_source {
    uint64_t size;
    uint32_t chunk;
    int (*read)(void *ctx, uint64_t idx, uint8_t *buf, size_t len, bool *zero, char *err,
                size_t errlen);
    void *ctx;
};

struct upload_job {
    const struct upload_source *src;
    const struct backup_progress *progress;
    const char *url; /* transfer path */
    atomic_ullong next;
    uint64_t *data;       /* the chunks sent (indexes, any order): memory follows the data,
                           * never the disk's size; the others are zeros */
    size_t ndata, data_cap;
    pthread_mutex_t lock; /* data */
    atomic_ullong zero_bytes;
    struct first_error fe;
};

struct upload_worker {
    struct upload_job *job;
    struct client *client;
};

/* Record chunk i as sent. */
static int data_add(struct upload_job *j, uint64_t i)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&j->lock);
    if (j->ndata == j->data_cap) {
        size_t cap = j->data_cap ? j->data_cap * 2 : 64;
        uint64_t *d = cap < SIZE_MAX / sizeof(*d) ? realloc(j->data, cap * sizeof(*d)) : NULL;
        if (!d)
            return -ENOMEM;
        j->data = d;
        j->data_cap = cap;
    }
    j->data[j->ndata++] = i;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void *worker_main(void *opaque)
{
    struct upload_worker *w = opaque;
    struct upload_job *j = w->job;
    const struct upload_source *src = j->src;
    uint64_t n = (src->size + src->chunk - 1) / src->chunk;
    CLEANUP_FREE uint8_t *buf = malloc(src->chunk);
    if (!buf) {
        first_error_set(&j->fe, -ENOMEM, "out of memory");
        return NULL;
    }
    for (;;) {
        uint64_t i = atomic_fetch_add(&j->next, 1);
        if (i >= n || first_error_failed(&j->fe))
            break;
        uint64_t off = i * src->chunk;
        size_t len = src->size - off < src->chunk ? (size_t)(src->size - off) : src->chunk;
        bool zero = false;
        char err[256] = "";
        int r = src->read(src->ctx, i, buf, len, &zero, err, sizeof(err));
        if (r < 0) {
            first_error_set(&j->fe, r, "reading %zu bytes at %" PRIu64 ": %s", len, off,
                            err[0] ? err : strerror(-r));
            break;
        }
        if (zero) {
            atomic_fetch_add(&j->zero_bytes, len);
        } else if ((r = client_put_range(w->client, j->url, off, buf, len, src->size)) < 0) {
            first_error_set(&j->fe, r, "%s", client_error(w->client));
            break;
        } else if ((r = data_add(j, i)) < 0) {
            first_error_set(&j->fe, r, "out of memory");
            break;
        }
        backup_progress_add(j->progress, len);
    }
    return NULL;
}

/* Start the transfer of disk into vm: its URL, or NULL with res->error and *err set. */
static char *transfer_start(struct client *c, const struct upload_source *src, const char *vm,
                            const char *disk, struct upload_result *res, int *err)
{
    char *url = NULL;
    int r = client_upload_start(c, vm, disk, src->size, "raw", &url);
    if (r == -EPROTO)
        snprintf(res->error, sizeof(res->error), "the server gave no transfer URL");
    else if (r < 0)
        snprintf(res->error, sizeof(res->error), "VM %s: disk %s: starting the upload: %s", vm,
                 disk, r == -ENOMEM ? "out of memory" : client_error(c));
    *err = r;
    return url;
}

/* The runs of zero chunks as PATCH zero, coalesced; then flush and finalize. */
static void transfer_finish(struct client *c, struct upload_job *j, struct upload_result *res)
{
    const struct upload_source *src = j->src;
    uint64_t n = (src->size + src->chunk - 1) / src->chunk;
    qsort(j->data, j->ndata, sizeof(*j->data), cmp_u64);
    /* The gaps between the chunks sent, and after the last. */
    uint64_t i = 0;
    for (size_t d = 0; d <= j->ndata && !first_error_failed(&j->fe); d++) {
        uint64_t k = d < j->ndata ? j->data[d] : n;
        if (k > i) {
            uint64_t off = i * src->chunk;
            uint64_t end = k * src->chunk < src->size ? k * src->chunk : src->size;
            int r = client_upload_zero(c, j->url, off, end - off);
            if (r < 0)
                first_error_set(&j->fe, r, "%s", client_error(c));
            res->zero_requests++;
        }
        i = k + 1;
    }
    int r;
    if (!first_error_failed(&j->fe) && (r = client_upload_flush(c, j->url)) < 0)
        first_error_set(&j->fe, r, "%s", client_error(c));
    if (!first_error_failed(&j->fe) && (r = client_upload_finalize(c, j->url)) < 0)
        first_error_set(&j->fe, r, "finalize: %s", client_error(c));
}

/* Upload one disk from src into vm. */
static int upload_run(struct client *c, const struct upload_source *src, const char *vm,
                      const char *disk, unsigned jobs, const struct backup_progress *progress,
                      struct upload_result *res)
{
    memset(res, 0, sizeof(*res));
    res->size = src->size;
    int r = 0;
    CLEANUP_FREE char *url = transfer_start(c, src, vm, disk, res, &r);
    if (!url)
        return r;

    uint64_t sent_before = client_bytes_sent(c); /* c may have served earlier disks */
    struct upload_job j = {.src = src, .progress = progress, .url = url};
    pthread_mutex_init(&j.lock, NULL);
    first_error_init(&j.fe, NULL, NULL);
    if (jobs < 1)
        jobs = 1;
    struct upload_worker *w = calloc(jobs, sizeof(*w));
    if (!w)
        first_error_set(&j.fe, -ENOMEM, "out of memory");
    unsigned opened = 0;
    for (; w && opened < jobs && !first_error_failed(&j.fe); opened++) {
        w[opened].job = &j;
        if (opened == 0)
            w[0].client = c;
        else if ((r = client_dup(c, &w[opened].client)) < 0)
            first_error_set(&j.fe, r, "opening connection %u: %s", opened + 1, client_error(c));
    }
    if (opened && !w[opened - 1].client)
        opened--; /* the connection that could not be opened */
    if (!first_error_failed(&j.fe)) {
        struct worker_pool pool;
        r = worker_pool_start(&pool, opened, worker_main, w, sizeof(*w));
        if (r < 0)
            first_error_set(&j.fe, r, "starting an upload thread: %s", strerror(-r));
        worker_pool_join(&pool);
    }
    transfer_finish(c, &j, res);

    res->bytes_sent = 0 - sent_before;
    for (unsigned k = 0; k < opened; k++)
        res->bytes_sent += client_bytes_sent(w[k].client);
    for (unsigned k = 1; k < opened; k++)
        client_free(w[k].client);
    res->zero_bytes = atomic_load(&j.zero_bytes);
    r = first_error_code(&j.fe);
    if (r < 0) {
        client_upload_cancel(c, url); /* nothing half-written stays */
        snprintf(res->error, sizeof(res->error), "VM %s: disk %s: %s (upload cancelled)", vm, disk,
                 first_error_message(&j.fe));
    }
    free(w);
    free(j.data);
    first_error_destroy(&j.fe);
    pthread_mutex_destroy(&j.lock);
    return r;
}

/* ---- sources ---- */

struct file_source {
    int fd;
    uint32_t chunk;
};

static int file_read(void *ctx, uint64_t idx, uint8_t *buf, size_t len, bool *zero, char *err,
                     size_t errlen)
{
    (void)err;
    (void)errlen;
    struct file_source *fs = ctx;
    uint64_t off = idx * fs->chunk;
    off_t data = lseek(fs->fd, (off_t)off, SEEK_DATA);
    if ((data < 0 && errno == ENXIO) || (data >= 0 && (uint64_t)data >= off + len)) {
        *zero = true; /* a hole: nothing to read */
        return 0;
    }
    size_t done = 0;
    int r = fs_pread_direct(fs->fd, -1, buf, len, off, &done);
    if (r < 0)
        return r;
    memset(buf + done, 0, len - done);
    *zero = buf_is_zero(buf, len);
    return 0;
}

/* upload_run between the progress's begin and end. */
static int upload_one(struct client *c, const struct upload_source *src, const char *vm,
                      const char *disk, unsigned jobs, const struct backup_progress *progress,
                      struct upload_result *res)
{
    backup_progress_begin(progress, disk, src->size);
    int r = upload_run(c, src, vm, disk, jobs, progress, res);
    backup_progress_end(progress, disk);
    return r;
}

int upload_file(struct client *c, int fd, const char *vm, const char *disk, unsigned jobs,
                const struct backup_progress *progress, struct upload_result *res)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int r = -errno;
        snprintf(res->error, sizeof(res->error), "%s", strerror(-r));
        return r;
    }
    struct file_source fs = {.fd = fd, .chunk = UPLOAD_FILE_CHUNK};
    struct upload_source src = {
        .size = (uint64_t)st.st_size, .chunk = UPLOAD_FILE_CHUNK, .read = file_read, .ctx = &fs};
    return upload_one(c, &src, vm, disk, jobs, progress, res);
}

struct repo_source {
    struct repo *repo;
    const struct manifest *m;
};

static int repo_read(void *ctx, uint64_t idx, uint8_t *buf, size_t len, bool *zero, char *err,
                     size_t errlen)
{
    struct repo_source *rs = ctx;
    const struct manifest_entry *e = manifest_find(rs->m, idx);
    if (!e) {
        *zero = true;
        return 0;
    }
    size_t got = 0;
    int r = repo_chunk_get(rs->repo, &e->id, buf, rs->m->chunk_size, &got);
    if (r < 0 || got > len) {
        char hex[2 * HASH_SIZE + 1];
        chunk_id_to_hex(&e->id, hex);
        snprintf(err, errlen, "chunk %s: %s", hex,
                 r == -EBADMSG || r == 0 ? "damaged"
                 : r == -ENOENT          ? "missing"
                                         : strerror(-r));
        return r < 0 ? r : -EBADMSG;
    }
    memset(buf + got, 0, len - got);
    *zero = false;
    return 0;
}

int upload_backup_disk(struct client *c, struct repo *repo, const struct backup *b,
                       const char *disk, const char *vm, unsigned jobs,
                       const struct backup_progress *progress, struct upload_result *res)
{
    struct manifest m = {0};
    int r = repo_manifest_read(repo, b, disk, &m);
    if (r < 0) {
        memset(res, 0, sizeof(*res));
        snprintf(res->error, sizeof(res->error), "backup %s: disk %s: manifest %s", b->id, disk,
                 r == -EBADMSG ? "is damaged" : strerror(-r));
        return r;
    }
    struct repo_source rs = {.repo = repo, .m = &m};
    struct upload_source src = {
        .size = m.disk_size, .chunk = m.chunk_size, .read = repo_read, .ctx = &rs};
    r = upload_one(c, &src, vm, disk, jobs, progress, res);
    manifest_free(&m);
    return r;
}
