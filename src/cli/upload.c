/* Disk uploads through vmexportd's upload API; see upload.h. */
#include "cli/upload.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/progress.h"
#include "client/client.h"
#include "core/cleanup.h"
#include "core/hash.h"
#include "repo/repo.h"

/* Piece size of a file upload: big enough for throughput, small enough to retry cheaply. */
#define FILE_UPLOAD_CHUNK (4u << 20)
#define UPLOAD_MAX_JOBS   64

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
    const char *url; /* transfer path */
    atomic_ullong next;
    atomic_int failed;
    uint8_t *zero_map; /* bit per chunk: all zeros */
    struct progress prog;
    atomic_ullong zero_bytes;
    pthread_mutex_t lock;
    char err[512];
};

struct upload_worker {
    struct upload_job *job;
    struct client *client;
};

static void job_fail(struct upload_job *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void job_fail(struct upload_job *j, const char *fmt, ...)
{
    pthread_mutex_lock(&j->lock);
    if (!atomic_load(&j->failed)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->err, sizeof(j->err), fmt, ap);
        va_end(ap);
        atomic_store(&j->failed, 1);
    }
    pthread_mutex_unlock(&j->lock);
}

static void *upload_worker_run(void *opaque)
{
    struct upload_worker *w = opaque;
    struct upload_job *j = w->job;
    const struct upload_source *src = j->src;
    uint64_t n = (src->size + src->chunk - 1) / src->chunk;
    uint8_t *buf = malloc(src->chunk);
    if (!buf) {
        job_fail(j, "out of memory");
        return NULL;
    }
    for (;;) {
        uint64_t i = atomic_fetch_add(&j->next, 1);
        if (i >= n || atomic_load(&j->failed))
            break;
        uint64_t off = i * src->chunk;
        size_t len = src->size - off < src->chunk ? (size_t)(src->size - off) : src->chunk;
        bool zero = false;
        char err[256] = "";
        int r = src->read(src->ctx, i, buf, len, &zero, err, sizeof(err));
        if (r < 0) {
            job_fail(j, "reading %zu bytes at %" PRIu64 ": %s", len, off,
                     err[0] ? err : strerror(-r));
            break;
        }
        if (zero) {
            pthread_mutex_lock(&j->lock);
            j->zero_map[i / 8] |= (uint8_t)(1u << (i % 8));
            pthread_mutex_unlock(&j->lock);
            atomic_fetch_add(&j->zero_bytes, len);
        } else if ((r = client_put_range(w->client, j->url, off, buf, len, src->size)) < 0) {
            job_fail(j, "%s", client_error(w->client));
            break;
        }
        progress_add(&j->prog, len);
    }
    free(buf);
    return NULL;
}

/* Upload one disk from src into VM.  Returns 0 or a negative errno (message printed). */
static int upload_one(const char *cmd, struct client *c, const struct upload_source *src,
                      const char *vm, const char *disk, unsigned jobs, bool json)
{
    double t0 = progress_now();
    CLEANUP_FREE char *vm_esc = client_escape(vm);
    CLEANUP_FREE char *path = NULL;
    json_t *req = json_pack("{s:s, s:I, s:s}", "disk", disk, "size", (json_int_t)src->size,
                            "format", "raw");
    CLEANUP_FREE char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (!vm_esc || !body || asprintf(&path, "/api/v1/vms/%s/uploads", vm_esc) < 0)
        return -ENOMEM;
    json_t *t = NULL;
    int r = client_json(c, "POST", path, body, &t, NULL);
    if (r < 0) {
        fprintf(stderr, "vmexport %s: VM %s: disk %s: starting the upload: %s\n", cmd, vm, disk,
                client_error(c));
        return r;
    }
    CLEANUP_FREE char *url = strdup(json_string_value(json_object_get(t, "url")) ?: "");
    json_decref(t);
    if (!url || !*url) {
        fprintf(stderr, "vmexport %s: the server gave no transfer URL\n", cmd);
        return -EPROTO;
    }

    uint64_t n = (src->size + src->chunk - 1) / src->chunk;
    uint64_t sent_before = client_bytes_sent(c); /* c may have served earlier disks */
    struct upload_job j = {.src = src, .url = url};
    pthread_mutex_init(&j.lock, NULL);
    j.zero_map = calloc(n / 8 + 1, 1);
    struct client *conns[UPLOAD_MAX_JOBS] = {c};
    pthread_t th[UPLOAD_MAX_JOBS];
    struct upload_worker args[UPLOAD_MAX_JOBS];
    unsigned started = 0, opened = 1;
    if (jobs > UPLOAD_MAX_JOBS)
        jobs = UPLOAD_MAX_JOBS;
    if (!j.zero_map)
        job_fail(&j, "out of memory");
    for (; opened < jobs && !atomic_load(&j.failed); opened++)
        if (client_dup(c, &conns[opened]) < 0)
            job_fail(&j, "opening connection %u: %s", opened + 1, client_error(c));
    progress_init(&j.prog, "upload", src->size, json);
    for (unsigned k = 0; k < opened && !atomic_load(&j.failed); k++) {
        args[k] = (struct upload_worker){.job = &j, .client = conns[k]};
        if (pthread_create(&th[k], NULL, upload_worker_run, &args[k]) == 0)
            started++;
    }
    for (unsigned k = 0; k < started; k++)
        pthread_join(th[k], NULL);
    progress_finish(&j.prog);

    /* Zero runs as PATCH zero, coalesced. */
    uint64_t zero_runs = 0;
    for (uint64_t i = 0; i < n && !atomic_load(&j.failed);) {
        if (!(j.zero_map[i / 8] & (1u << (i % 8)))) {
            i++;
            continue;
        }
        uint64_t k = i;
        while (k < n && (j.zero_map[k / 8] & (1u << (k % 8))))
            k++;
        uint64_t off = i * src->chunk;
        uint64_t end = k * src->chunk < src->size ? k * src->chunk : src->size;
        char zb[128];
        snprintf(zb, sizeof(zb), "{\"op\":\"zero\",\"offset\":%" PRIu64 ",\"size\":%" PRIu64 "}",
                 off, end - off);
        if (client_json(c, "PATCH", url, zb, NULL, NULL) < 0)
            job_fail(&j, "%s", client_error(c));
        zero_runs++;
        i = k;
    }
    if (!atomic_load(&j.failed) &&
        client_json(c, "PATCH", url, "{\"op\":\"flush\"}", NULL, NULL) < 0)
        job_fail(&j, "%s", client_error(c));
    CLEANUP_FREE char *fin = NULL;
    if (!atomic_load(&j.failed) && asprintf(&fin, "%s/finalize", url) >= 0 &&
        client_json(c, "POST", fin, NULL, NULL, NULL) < 0)
        job_fail(&j, "finalize: %s", client_error(c));

    uint64_t sent = 0 - sent_before;
    for (unsigned k = 0; k < opened; k++)
        sent += client_bytes_sent(conns[k]);
    for (unsigned k = 1; k < opened; k++)
        client_free(conns[k]);
    free(j.zero_map);
    r = 0;
    if (atomic_load(&j.failed)) {
        client_json(c, "DELETE", url, NULL, NULL, NULL); /* cancel: nothing half-written stays */
        fprintf(stderr, "vmexport %s: VM %s: disk %s: %s (upload cancelled)\n", cmd, vm, disk,
                j.err);
        r = -EIO;
    } else if (json) {
        printf("{\"type\":\"uploaded\",\"vm\":\"%s\",\"disk\":\"%s\",\"size\":%" PRIu64
               ",\"bytes_sent\":%" PRIu64 ",\"zero_bytes\":%llu,\"zero_requests\":%" PRIu64
               ",\"seconds\":%.3f}\n",
               vm, disk, src->size, sent, (unsigned long long)atomic_load(&j.zero_bytes),
               zero_runs, progress_now() - t0);
    } else {
        char b1[32], b2[32];
        printf("uploaded disk %s of VM %s: %s, %s of data sent, zeros in %" PRIu64
               " requests, %.1f s\n",
               disk, vm, cli_bytes(src->size, b1, sizeof(b1)), cli_bytes(sent, b2, sizeof(b2)),
               zero_runs, progress_now() - t0);
    }
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
    while (done < len) {
        ssize_t r = pread(fs->fd, buf + done, len - done, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            break;
        done += (size_t)r;
    }
    memset(buf + done, 0, len - done);
    *zero = buf_is_zero(buf, len);
    return 0;
}

int upload_sparse_file(const char *cmd, const char *path, const char *vm, const char *disk,
                       unsigned jobs)
{
    CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        fprintf(stderr, "vmexport %s: %s: %s\n", cmd, path, strerror(errno));
        return EXIT_FAIL;
    }
    struct client *c = cli_client_connect(cmd);
    if (!c)
        return EXIT_FAIL;
    struct file_source fs = {.fd = fd, .chunk = FILE_UPLOAD_CHUNK};
    struct upload_source src = {
        .size = (uint64_t)st.st_size, .chunk = FILE_UPLOAD_CHUNK, .read = file_read, .ctx = &fs};
    int r = upload_one(cmd, c, &src, vm, disk, jobs ? jobs : 4, false);
    client_free(c);
    return r < 0 ? EXIT_FAIL : EXIT_OK;
}

struct repo_source {
    struct repo *repo;
    const struct manifest *m;
};

static int repo_read(void *ctx, uint64_t idx, uint8_t *buf, size_t len, bool *zero, char *err,
                     size_t errlen)
{
    struct repo_source *rs = ctx;
    const struct manifest_entry *e = &rs->m->e[idx];
    if (e->zero) {
        *zero = true;
        return 0;
    }
    size_t got = 0;
    int r = repo_chunk_get(rs->repo, &e->id, buf, rs->m->chunk_size, &got);
    if (r < 0 || got > len) {
        char hex[2 * HASH_SIZE + 1];
        chunk_id_to_hex(&e->id, hex);
        snprintf(err, errlen, "chunk %s: %s", hex,
                 r == -EBADMSG || r == 0 ? "damaged" : r == -ENOENT ? "missing" : strerror(-r));
        return r < 0 ? r : -EBADMSG;
    }
    memset(buf + got, 0, len - got);
    *zero = false;
    return 0;
}

int upload_backup(const char *cmd, struct repo *repo, const struct backup *b, const char *disk,
                  const char *vm, unsigned jobs, bool json)
{
    struct client *c = cli_client_connect(cmd);
    if (!c)
        return EXIT_FAIL;
    int ret = EXIT_OK;
    for (size_t i = 0; i < b->disks.len && ret == EXIT_OK; i++) {
        const char *name = b->disks.ptr[i].name;
        if (disk && strcmp(disk, name))
            continue;
        struct manifest m = {0};
        int r = repo_manifest_read(repo, b, name, &m);
        if (r < 0) {
            fprintf(stderr, "vmexport %s: backup %s: disk %s: manifest %s\n", cmd, b->id, name,
                    r == -EBADMSG ? "is damaged" : strerror(-r));
            ret = EXIT_FAIL;
            break;
        }
        struct repo_source rs = {.repo = repo, .m = &m};
        struct upload_source src = {
            .size = m.disk_size, .chunk = m.chunk_size, .read = repo_read, .ctx = &rs};
        if (upload_one(cmd, c, &src, vm, name, jobs, json) < 0)
            ret = EXIT_FAIL;
        manifest_free(&m);
    }
    client_free(c);
    return ret;
}
