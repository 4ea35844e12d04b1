/* vmexport repo (init, upgrade) and vmexport backup; backups, restore, verify, prune and gc
 * have a file each (cmd_<name>.c).
 *
 * backup pulls a new snapshot from vmexportd.  For each disk it asks which areas changed since
 * the disk's state in the previous backup (the /changes API with that backup's change ID; "*"
 * for a first or --full backup), reads only those areas, with N parallel connections, lays them
 * over the previous backup's chunk (or zeros) to make each touched chunk, and takes every other
 * chunk from the previous manifest.  Each backup is thus a
 * synthetic full: it restores on its own and can be pruned independently.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/progress.h"
#include "cli/repo_open.h"
#include "client/client.h"
#include "client/rest.h"
#include "core/cleanup.h"
#include "core/hash.h"
#include "fs/fsinfo.h"
#include "fs/zero.h"
#include "repo/repo.h"

/* Parallel connections / threads unless --jobs says otherwise. */
#define DEFAULT_JOBS 4
#define MAX_JOBS     64
/* Seconds a backup waits for another backup of the same VM to finish. */
#define VM_LOCK_TIMEOUT 600

/* ---- shared option handling ---- */

struct repo_opts {
    const char *repo;
    const char *passphrase_file;
    bool json;
    unsigned jobs;
};

/* Open the repository named by the options. */
static struct repo *open_repo(const char *cmd, const struct repo_opts *o)
{
    return cli_open_repo(cmd, o->repo, o->passphrase_file);
}

static int parse_jobs(const char *s, unsigned *out)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (end == s || *end || v < 1 || v > MAX_JOBS)
        return -EINVAL;
    *out = (unsigned)v;
    return 0;
}

/* ---- repo init ---- */

/* repo upgrade: add the MAC to the config of an encrypted repository made by an older
 * vmexport, after showing the settings it vouches for. */
static int repo_upgrade(const char *path, const char *pfile)
{
    struct repo *r = cli_open_repo("repo upgrade", path, pfile);
    if (!r)
        return EXIT_FAIL;
    int ret = EXIT_OK;
    char err[512] = "";
    if (!repo_encrypted(r)) {
        printf("%s: not encrypted: its config has no MAC to add; nothing to do\n", path);
    } else if (!repo_config_unsealed(r)) {
        printf("%s: the config already carries its MAC; nothing to do\n", path);
    } else if (repo_config_seal(r, err, sizeof(err)) < 0) {
        fprintf(stderr, "vmexport repo upgrade: %s\n", err);
        ret = EXIT_FAIL;
    } else {
        printf("%s: sealed the config (chunk size %u KiB, format version %u) with a MAC under "
               "the repository key; check that these are the settings you chose\n",
               path, repo_chunk_size(r) >> 10, repo_format_version(r));
    }
    repo_close(r);
    return ret;
}

static const struct cli_option repo_options[] = {
    {"encrypt", 'e', NULL, "encrypt (asks for the passphrase twice on a terminal)"},
    {"chunk-size", 'c', "SIZE",
     "chunk size, e.g. 256K, 1M (default), 4M; an incremental\n"
     "backup rewrites every chunk a change touches, so\n"
     "small chunks make small incrementals"},
    {"compression-level", 'L', "N",
     "zstd level of what is written: 1 (default: fastest,\n"
     "about as small as 3 on disk images) to 19 (smallest,\n"
     "slow), or -7 to -1 (faster, larger)"},
    {NULL, 0, NULL, NULL},
};

static int repo_run(int argc, char **argv)
{
    bool encrypt = false;
    uint64_t chunk = REPO_DEFAULT_CHUNK_SIZE;
    int level = 0;
    struct cli_args a = {0};
    int c;
    while ((c = cli_next(&a, &cmd_repo, argc, argv)) > 0) {
        switch (c) {
        case 'e':
            encrypt = true;
            break;
        case 'c':
            if (cli_parse_size(a.arg, &chunk) < 0 || chunk < REPO_MIN_CHUNK_SIZE ||
                chunk > REPO_MAX_CHUNK_SIZE || (chunk & (chunk - 1)))
                return cli_usage_error(&cmd_repo,
                                       "--chunk-size must be a power of two from 64K to 64M");
            break;
        case 'L': {
            char *end;
            long v = strtol(a.arg, &end, 10);
            if (end == a.arg || *end || v < -7 || v > 19 || v == 0)
                return cli_usage_error(&cmd_repo, "--compression-level takes -7 to -1 or 1 to 19");
            level = (int)v;
            break;
        }
        }
    }
    if (c == CLI_EXIT)
        return a.status;
    const char *pfile = a.passphrase_file;
    int first = a.first;
    if (argc - first == 2 && !strcmp(argv[first], "upgrade"))
        return repo_upgrade(argv[first + 1], pfile);
    if (argc - first != 2 || strcmp(argv[first], "init"))
        return cli_usage_error(&cmd_repo, "expected 'init PATH' or 'upgrade PATH'");
    const char *path = argv[first + 1];
    CLEANUP_FREE char *pass = NULL;
    if (encrypt && !(pass = cli_read_passphrase("repo init", pfile, true)))
        return EXIT_FAIL;
    struct repo_init_options io = {.chunk_size = (uint32_t)chunk, .passphrase = pass,
                                   .zstd_level = level};
    char err[512] = "";
    int r = repo_init(path, &io, err, sizeof(err));
    if (r < 0) {
        if (err[0]) /* the library's messages name the file they are about */
            fprintf(stderr, "vmexport repo init: %s\n", err);
        else
            fprintf(stderr, "vmexport repo init: %s: %s\n", path, strerror(-r));
        return EXIT_FAIL;
    }
    printf("initialised %s repository at %s (chunk size %llu KiB)\n",
           encrypt ? "an encrypted" : "a", path, (unsigned long long)(chunk >> 10));
    return EXIT_OK;
}

const struct cli_command cmd_repo = {
    .name = "repo",
    .summary = "create a backup repository, or upgrade one",
    .run = repo_run,
    .usage = "Usage: vmexport repo init PATH [--encrypt] [--chunk-size SIZE] "
             "[--compression-level N]\n"
             "                         [--passphrase-file FILE]\n"
             "       vmexport repo upgrade PATH [--passphrase-file FILE]\n"
             "\n"
             "Create a backup repository in PATH (a new or empty directory).  Disks are split\n"
             "into fixed chunks of SIZE (default 1M, a power of two from 64K to 64M), named by\n"
             "their SHA-256, compressed with zstd and, with --encrypt, encrypted with\n"
             "AES-256-GCM under a random key that is stored wrapped by a key derived from the\n"
             "passphrase (scrypt).  Losing the passphrase loses the backups.  The config of an\n"
             "encrypted repository carries a MAC under its key: a config changed without the key\n"
             "(say, to drop the encryption or change the chunk size) is refused, and so is a\n"
             "passphrase given for a repository whose config says it is not encrypted.\n"
             "\n"
             "upgrade adds that MAC to the config of an encrypted repository made by an older\n"
             "vmexport, which until then can be read but not written to (backup, prune, gc).\n",
    .common = CLI_PASSPHRASE,
    .options = repo_options,
    .epilog = "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};

/* ---- backup ----
 *
 * Per disk, a pipeline: `jobs` fetch threads, one connection each, build chunks (reading only
 * the changed byte ranges of a chunk from the server and the rest from the previous backup's
 * chunk, or zeros), and hand them through a bounded queue to two process threads per CPU that
 * hash, compress and write them into a chunk batch; a flush thread makes the batch durable
 * (one syncfs, then renames) every FLUSH_BYTES and at the end of the disk.  Memory stays bounded
 * by the buffer pool: (jobs + process threads + 1) chunk buffers. */

/* Pending container bytes that make the flush thread sync and publish the batch: bounds the
 * work an interrupted backup loses (its temporary files are removed by gc). */
#define FLUSH_BYTES ((uint64_t)512 << 20)
/* Changed ranges of one chunk closer than this are read as one range (a request costs more
 * than reading a few more bytes). */
#define FETCH_GAP ((uint64_t)256 << 10)
/* More ranges than this in one chunk (after merging): read their whole span at once. */
#define FETCH_MAX_RANGES 16
/* Alignment of the chunk buffers: what O_DIRECT reads of local snapshot files need. */
#define DIRECT_ALIGN 4096
/* Process threads per CPU: each also waits for its chunk writes (O_DIRECT, synchronous), so
 * one per CPU leaves the CPUs idle during writes (8 GiB local backup: 4.8-5.1 s with 1 per CPU,
 * 4.4-4.5 s with 2; 3 gave nothing more and a third more memory). */
#define PROCESS_THREADS_PER_CPU 2
/* Process threads: at most this many. */
#define MAX_PROCESS_THREADS 16

/* A byte range of a disk. */
struct area {
    uint64_t start, length;
};
DEFINE_VECTOR_TYPE(area_list, struct area);

/* The part of area a inside the chunk [off, end), as offsets from off (a overlaps it). */
static struct area area_clip(const struct area *a, uint64_t off, uint64_t end)
{
    uint64_t s = a->start > off ? a->start - off : 0;
    uint64_t e = (a->start + a->length < end ? a->start + a->length : end) - off;
    return (struct area){s, e - s};
}

static int area_cmp(const struct area *a, const struct area *b)
{
    return a->start < b->start ? -1 : a->start > b->start;
}

/* Sort and merge overlapping or touching areas in place. */
static void area_list_normalize(area_list *l)
{
    area_list_sort(l, area_cmp);
    size_t n = 0;
    for (size_t i = 0; i < l->len; i++) {
        struct area a = l->ptr[i];
        if (n && a.start <= l->ptr[n - 1].start + l->ptr[n - 1].length) {
            uint64_t end = a.start + a.length;
            if (end > l->ptr[n - 1].start + l->ptr[n - 1].length)
                l->ptr[n - 1].length = end - l->ptr[n - 1].start;
        } else {
            l->ptr[n++] = a;
        }
    }
    l->len = n;
}

/* a = a minus b, both normalized. */
static int area_list_subtract(area_list *a, const area_list *b)
{
    area_list out = VECTOR_INIT;
    size_t k = 0;
    for (size_t i = 0; i < a->len; i++) {
        uint64_t s = a->ptr[i].start, e = s + a->ptr[i].length;
        while (k < b->len && b->ptr[k].start + b->ptr[k].length <= s)
            k++;
        for (size_t j = k; j < b->len && b->ptr[j].start < e && s < e; j++) {
            uint64_t bs = b->ptr[j].start, be = bs + b->ptr[j].length;
            if (bs > s && area_list_append(&out, (struct area){s, bs - s}) < 0)
                goto oom;
            if (be > s)
                s = be;
        }
        if (s < e && area_list_append(&out, (struct area){s, e - s}) < 0)
            goto oom;
    }
    area_list_reset(a);
    *a = out;
    return 0;
oom:
    area_list_reset(&out);
    return -ENOMEM;
}

/* Index of the first area of a normalized list ending after off. */
static size_t area_list_find(const area_list *l, uint64_t off)
{
    size_t lo = 0, hi = l->len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->ptr[mid].start + l->ptr[mid].length <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

struct disk_plan {
    const char *name;
    uint64_t size;
    const char *change_id;
    char *data_path;
    uint8_t *touched;
    uint64_t touched_bytes;
    area_list changed; /* normalized: ranges to read from the new snapshot (minus zeroed) */
    area_list zeroed;  /* normalized: ranges that read as zeros now */
    struct manifest prev;
    bool have_prev;
    bool incremental;
    int local_fd;  /* >= 0: the snapshot disk itself, opened on this host (transport "local") */
    int direct_fd; /* >= 0: the same file opened with O_DIRECT, for aligned reads */
};

/* How a backup reads the snapshot's bytes. */
enum transport { TRANSPORT_AUTO, TRANSPORT_HTTPS, TRANSPORT_LOCAL };

/* One chunk travelling from a fetch thread to a process thread. */
struct chunk_item {
    uint64_t idx;
    size_t len;
    uint8_t *buf;
};

struct backup_run {
    struct repo *repo;
    struct client **clients;
    unsigned jobs, nprocess;
    struct progress prog;
    struct chunk_batch *batch;
    atomic_ullong chunks_reused, chunks_fetched;
    atomic_ullong local_bytes; /* read from local snapshot files */
    /* per disk */
    const struct disk_plan *plan;
    struct manifest *m;
    uint64_t *todo;
    size_t ntodo;
    atomic_size_t next;
    atomic_int failed;
    pthread_mutex_t err_lock;
    char err[512];
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

struct worker_arg {
    struct backup_run *run;
    struct client *client;
};

static void run_fail(struct backup_run *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void run_fail(struct backup_run *b, const char *fmt, ...)
{
    pthread_mutex_lock(&b->err_lock);
    if (!atomic_load(&b->failed)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b->err, sizeof(b->err), fmt, ap);
        va_end(ap);
        atomic_store(&b->failed, 1);
    }
    pthread_mutex_unlock(&b->err_lock);
    /* Wake every thread waiting on the queue so that it sees the failure. */
    pthread_mutex_lock(&b->q_lock);
    pthread_cond_broadcast(&b->q_full_cv);
    pthread_cond_broadcast(&b->q_free_cv);
    pthread_mutex_unlock(&b->q_lock);
}

/* A free item, waiting for one; NULL once the run failed. */
static struct chunk_item *queue_get_free(struct backup_run *b)
{
    pthread_mutex_lock(&b->q_lock);
    while (!b->nfree && !atomic_load(&b->failed))
        pthread_cond_wait(&b->q_free_cv, &b->q_lock);
    struct chunk_item *it = atomic_load(&b->failed) ? NULL : b->free_items[--b->nfree];
    pthread_mutex_unlock(&b->q_lock);
    return it;
}

static void queue_put_free(struct backup_run *b, struct chunk_item *it)
{
    pthread_mutex_lock(&b->q_lock);
    b->free_items[b->nfree++] = it;
    pthread_cond_signal(&b->q_free_cv);
    pthread_mutex_unlock(&b->q_lock);
}

static void queue_push_full(struct backup_run *b, struct chunk_item *it)
{
    pthread_mutex_lock(&b->q_lock);
    b->full_items[(b->full_head + b->nfull++) % b->nitems] = it;
    pthread_cond_signal(&b->q_full_cv);
    pthread_mutex_unlock(&b->q_lock);
}

/* The next chunk to process; NULL when the fetch threads are done and the queue is empty, or
 * the run failed. */
static struct chunk_item *queue_pop_full(struct backup_run *b)
{
    pthread_mutex_lock(&b->q_lock);
    while (!b->nfull && b->fetchers_left && !atomic_load(&b->failed))
        pthread_cond_wait(&b->q_full_cv, &b->q_lock);
    struct chunk_item *it = NULL;
    if (b->nfull && !atomic_load(&b->failed)) {
        it = b->full_items[b->full_head];
        b->full_head = (b->full_head + 1) % b->nitems;
        b->nfull--;
    }
    pthread_mutex_unlock(&b->q_lock);
    return it;
}

static void fetcher_done(struct backup_run *b)
{
    pthread_mutex_lock(&b->q_lock);
    b->fetchers_left--;
    pthread_cond_broadcast(&b->q_full_cv);
    pthread_mutex_unlock(&b->q_lock);
}

/* Read [off, off + len) of the local snapshot file into buf: 0, or a negative errno
 * (-ENODATA: the file ended early).  Aligned reads bypass the page cache (O_DIRECT): a backup
 * reads each byte once, so caching it only costs copies and evicts the host's useful pages. */
static int local_read(const struct disk_plan *d, uint8_t *buf, uint64_t len, uint64_t off)
{
    size_t got = 0;
    int r = fs_pread_direct(d->local_fd, d->direct_fd, buf, len, off, &got);
    return r < 0 ? r : got < len ? -ENODATA : 0;
}

/* Read [off, off + len) of the disk into buf: from the local snapshot file when the disk was
 * opened on this host, else from the server. */
static int fetch_range(struct backup_run *b, struct client *c, uint64_t off, uint64_t len,
                       uint8_t *buf)
{
    if (b->plan->local_fd >= 0) {
        int r = local_read(b->plan, buf, len, off);
        if (r < 0) {
            run_fail(b, "disk %s: reading %" PRIu64 " bytes at %" PRIu64 " of the local snapshot "
                        "file: %s", b->m->disk, len, off,
                     r == -ENODATA ? "the file is shorter than the disk" : strerror(-r));
            return r;
        }
        atomic_fetch_add(&b->local_bytes, len);
        return 0;
    }
    size_t got = 0;
    int r = client_read_range(c, b->plan->data_path, off, len, buf, &got);
    if (r < 0 || got != len) {
        run_fail(b, "disk %s: reading %" PRIu64 " bytes at %" PRIu64 ": %s", b->m->disk, len, off,
                 r < 0 ? client_error(c) : "short read");
        return r < 0 ? r : -EIO;
    }
    return 0;
}

/* Build chunk it->idx in it->buf: only the changed ranges (minus the zeroed ones) come from the
 * server; the rest is the previous backup's chunk (incremental) or zeros (a first backup:
 * outside the changed areas, i.e. the data extents, a disk reads as zeros).  The diff is
 * block-precise and never under-reports, so this gives the new snapshot's bytes exactly. */
static int fetch_chunk(struct backup_run *b, struct client *c, struct chunk_item *it)
{
    const struct disk_plan *d = b->plan;
    const uint32_t cs = b->m->chunk_size;
    const uint64_t i = it->idx, off = i * cs, end = off + it->len;

    /* The ranges to read, relative to off: changed areas clipped to the chunk, merged across
     * small gaps; too many become one span. */
    struct area want[FETCH_MAX_RANGES];
    size_t nwant = 0;
    bool span = false;
    for (size_t k = area_list_find(&d->changed, off); k < d->changed.len; k++) {
        const struct area *a = &d->changed.ptr[k];
        if (a->start >= end)
            break;
        struct area part = area_clip(a, off, end);
        uint64_t s = part.start, e = part.start + part.length;
        if (nwant && s <= want[nwant - 1].start + want[nwant - 1].length + FETCH_GAP) {
            want[nwant - 1].length = e - want[nwant - 1].start;
        } else if (nwant == FETCH_MAX_RANGES) {
            span = true;
            want[nwant - 1].length = e - want[nwant - 1].start;
        } else {
            want[nwant++] = (struct area){s, e - s};
        }
    }
    if (span) {
        want[0].length = want[nwant - 1].start + want[nwant - 1].length - want[0].start;
        nwant = 1;
    }
    /* Reading the zeroed parts is never needed: they become zeros below. */
    bool whole = nwant == 1 && want[0].start == 0 && want[0].length == it->len;

    /* The base the ranges are laid on. */
    bool prev_base = d->incremental && d->have_prev && i < d->prev.n && !d->prev.e[i].zero;
    if (prev_base) {
        uint64_t plen = d->prev.disk_size - off < cs ? d->prev.disk_size - off : cs;
        if (off >= d->prev.disk_size || plen != it->len)
            whole = true; /* the chunk changed length: read it all */
    }
    /* Where the disk grew or shrank, read touched chunks past the old end whole, as before. */
    if (d->incremental && d->have_prev && d->prev.disk_size != d->size &&
        end > d->prev.disk_size)
        whole = true;
    if (whole) {
        nwant = 1;
        want[0] = (struct area){0, it->len};
    } else if (prev_base) {
        size_t got = 0;
        int r = repo_chunk_read(b->repo, &d->prev.e[i].id, it->buf, cs, &got);
        if (r < 0 || got != it->len) {
            /* A damaged or missing base chunk: read the whole chunk from the server instead. */
            char hex[2 * HASH_SIZE + 1];
            chunk_id_to_hex(&d->prev.e[i].id, hex);
            fprintf(stderr, "vmexport backup: warning: disk %s: previous chunk %s is %s; "
                            "reading the whole chunk at %" PRIu64 " again\n",
                    b->m->disk, hex, r == -ENOENT ? "missing" : "damaged", off);
            nwant = 1;
            want[0] = (struct area){0, it->len};
        } else {
            for (size_t k = area_list_find(&d->zeroed, off); k < d->zeroed.len; k++) {
                const struct area *a = &d->zeroed.ptr[k];
                if (a->start >= end)
                    break;
                struct area part = area_clip(a, off, end);
                memset(it->buf + part.start, 0, part.length);
            }
        }
    } else {
        memset(it->buf, 0, it->len);
    }
    for (size_t k = 0; k < nwant; k++) {
        int r = fetch_range(b, c, off + want[k].start, want[k].length, it->buf + want[k].start);
        if (r < 0)
            return r;
    }
    /* Zeroed ranges that a merged range read over came back as zeros from the server. */
    atomic_fetch_add(&b->chunks_fetched, 1);
    return 0;
}

static void *fetch_worker(void *opaque)
{
    struct worker_arg *a = opaque;
    struct backup_run *b = a->run;
    const uint32_t cs = b->m->chunk_size;
    for (;;) {
        size_t k = atomic_fetch_add(&b->next, 1);
        if (k >= b->ntodo || atomic_load(&b->failed))
            break;
        struct chunk_item *it = queue_get_free(b);
        if (!it)
            break;
        it->idx = b->todo[k];
        uint64_t off = it->idx * cs;
        it->len = b->m->disk_size - off < cs ? (size_t)(b->m->disk_size - off) : cs;
        if (fetch_chunk(b, a->client, it) < 0) {
            queue_put_free(b, it);
            break;
        }
        queue_push_full(b, it);
    }
    fetcher_done(b);
    return NULL;
}

static void request_flush(struct backup_run *b)
{
    pthread_mutex_lock(&b->q_lock);
    b->flush_wanted = true;
    pthread_cond_signal(&b->flush_cv);
    pthread_mutex_unlock(&b->q_lock);
}

static void *process_worker(void *opaque)
{
    struct backup_run *b = opaque;
    const uint32_t cs = b->m->chunk_size;
    struct chunk_item *it;
    while ((it = queue_pop_full(b))) {
        struct manifest_entry *e = &b->m->e[it->idx];
        if (buf_is_zero(it->buf, it->len)) {
            e->zero = true;
        } else {
            uint64_t pending = 0;
            repo_chunk_id(b->repo, it->buf, it->len, &e->id);
            e->zero = false;
            int r = repo_chunk_batch_put(b->batch, &e->id, it->buf, it->len, &pending);
            if (r < 0) {
                run_fail(b, "disk %s: storing the chunk at %" PRIu64 ": %s", b->m->disk,
                         it->idx * cs,
                         r == -ENOSPC ? "no space left in the repository" : strerror(-r));
                queue_put_free(b, it);
                break;
            }
            if (pending >= FLUSH_BYTES)
                request_flush(b);
        }
        progress_add(&b->prog, it->len);
        queue_put_free(b, it);
    }
    return NULL;
}

/* Flush the batch whenever asked, off the process threads' path; stops when told. */
static void *flush_worker(void *opaque)
{
    struct backup_run *b = opaque;
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
            run_fail(b, "disk %s: making chunks durable: %s", b->m->disk,
                     r == -ENOSPC ? "no space left in the repository" : strerror(-r));
        pthread_mutex_lock(&b->q_lock);
    }
    pthread_mutex_unlock(&b->q_lock);
    return NULL;
}

/* Mark chunks touched by the changed areas of a disk, page by page, and collect the changed
 * and zeroed areas.  change_id: "*" or the previous backup's.  Returns -ESTALE when the server
 * no longer knows change_id. */
static int mark_changes(struct client *c, const char *vm, const char *snap, struct disk_plan *d,
                        const char *change_id, uint32_t cs)
{
    const uint64_t size = d->size;
    uint64_t start = 0;
    for (;;) {
        json_t *j = NULL;
        int r = client_get_disk_changes(c, vm, snap, d->name, change_id, start, &j);
        if (r < 0)
            return r == -EINVAL && strcmp(change_id, "*") ? -ESTALE : r;
        uint64_t len = (uint64_t)json_integer_value(json_object_get(j, "length"));
        static const char *const kinds[] = {"changedArea", "zeroedArea"};
        for (size_t kind = 0; kind < ARRAY_SIZE(kinds) && r == 0; kind++) {
            area_list *l = kind == 0 ? &d->changed : &d->zeroed;
            size_t idx;
            json_t *a;
            json_array_foreach(json_object_get(j, kinds[kind]), idx, a) {
                uint64_t s = (uint64_t)json_integer_value(json_object_get(a, "start"));
                uint64_t n = (uint64_t)json_integer_value(json_object_get(a, "length"));
                if (n == 0 || s >= size)
                    continue;
                if (n > size - s)
                    n = size - s;
                if ((r = area_list_append(l, (struct area){s, n})) < 0)
                    break;
                /* zeroedArea is a subset of changedArea; marking both is robust anyway. */
                for (uint64_t i = s / cs; i <= (s + n - 1) / cs; i++) {
                    if (!(d->touched[i / 8] & (1u << (i % 8)))) {
                        d->touched[i / 8] |= (uint8_t)(1u << (i % 8));
                        d->touched_bytes += size - i * cs < cs ? size - i * cs : cs;
                    }
                }
            }
        }
        json_decref(j);
        if (r < 0)
            return r;
        if (len == 0 || start + len >= size)
            break;
        start += len;
    }
    area_list_normalize(&d->changed);
    area_list_normalize(&d->zeroed);
    return area_list_subtract(&d->changed, &d->zeroed);
}

static long process_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN) * PROCESS_THREADS_PER_CPU;
    return n < 1 ? 1 : n > MAX_PROCESS_THREADS ? MAX_PROCESS_THREADS : n;
}

static int backup_disk(struct backup_run *b, struct disk_plan *d, struct manifest *m)
{
    const uint32_t cs = repo_chunk_size(b->repo);
    int r = manifest_new(m, d->name, d->size, cs);
    if (r < 0)
        return r;
    free(m->change_id);
    m->change_id = d->change_id ? strdup(d->change_id) : NULL;
    CLEANUP_FREE uint64_t *todo = malloc((m->n ? m->n : 1) * sizeof(*todo));
    if (!todo)
        return -ENOMEM;
    size_t ntodo = 0;
    for (uint64_t i = 0; i < m->n; i++) {
        if (d->touched[i / 8] & (1u << (i % 8))) {
            todo[ntodo++] = i;
        } else if (d->incremental && d->have_prev && i < d->prev.n) {
            m->e[i] = d->prev.e[i];
            if (!m->e[i].zero)
                atomic_fetch_add(&b->chunks_reused, 1);
        } else {
            m->e[i].zero = true;
        }
    }
    if (ntodo == 0)
        return 0;

    b->plan = d;
    b->m = m;
    b->todo = todo;
    b->ntodo = ntodo;
    atomic_store(&b->next, 0);
    unsigned nfetch = b->jobs < ntodo ? b->jobs : (unsigned)ntodo;
    unsigned nproc = b->nprocess < ntodo ? b->nprocess : (unsigned)ntodo;
    b->nitems = nfetch + nproc + 1;
    b->items = calloc(b->nitems, sizeof(*b->items));
    b->free_items = calloc(b->nitems, sizeof(*b->free_items));
    b->full_items = calloc(b->nitems, sizeof(*b->full_items));
    b->nfree = b->nfull = b->full_head = 0;
    bool oom = !b->items || !b->free_items || !b->full_items;
    for (size_t k = 0; !oom && k < b->nitems; k++) {
        if (!(b->items[k].buf = aligned_alloc(DIRECT_ALIGN, cs)))
            oom = true;
        else
            b->free_items[b->nfree++] = &b->items[k];
    }
    b->fetchers_left = nfetch;
    b->flush_wanted = b->flush_stop = false;

    pthread_t fth[MAX_JOBS], pth[MAX_PROCESS_THREADS], flusher;
    struct worker_arg args[MAX_JOBS];
    unsigned fstarted = 0, pstarted = 0;
    bool flusher_started = false;
    if (oom) {
        run_fail(b, "out of memory");
    } else {
        flusher_started = pthread_create(&flusher, NULL, flush_worker, b) == 0;
        for (unsigned t = 0; flusher_started && t < nproc; t++) {
            if (pthread_create(&pth[t], NULL, process_worker, b) != 0)
                break;
            pstarted++;
        }
        for (unsigned t = 0; pstarted && t < nfetch; t++) {
            args[t] = (struct worker_arg){.run = b, .client = b->clients[t]};
            if (pthread_create(&fth[t], NULL, fetch_worker, &args[t]) != 0)
                break;
            fstarted++;
        }
        if (fstarted < nfetch) {
            /* Account for the fetchers that did not start, so the queue can drain. */
            pthread_mutex_lock(&b->q_lock);
            b->fetchers_left -= nfetch - fstarted;
            pthread_cond_broadcast(&b->q_full_cv);
            pthread_mutex_unlock(&b->q_lock);
            if (fstarted == 0)
                run_fail(b, "cannot start worker threads");
        }
    }
    for (unsigned t = 0; t < fstarted; t++)
        pthread_join(fth[t], NULL);
    for (unsigned t = 0; t < pstarted; t++)
        pthread_join(pth[t], NULL);
    if (flusher_started) {
        pthread_mutex_lock(&b->q_lock);
        b->flush_stop = true;
        pthread_cond_signal(&b->flush_cv);
        pthread_mutex_unlock(&b->q_lock);
        pthread_join(flusher, NULL);
    } else if (!oom) {
        run_fail(b, "cannot start worker threads");
    }
    /* Everything the manifest names must be in place before it is written. */
    if (!atomic_load(&b->failed) && (r = repo_chunk_batch_flush(b->batch)) < 0)
        run_fail(b, "disk %s: making chunks durable: %s", m->disk,
                 r == -ENOSPC ? "no space left in the repository" : strerror(-r));
    for (size_t k = 0; b->items && k < b->nitems; k++)
        free(b->items[k].buf);
    free(b->items);
    free(b->free_items);
    free(b->full_items);
    b->items = NULL;
    b->free_items = b->full_items = NULL;
    b->todo = NULL;
    return atomic_load(&b->failed) ? -EIO : 0;
}

/* Open a snapshot disk on this host for transport "local": the server's disk object names the
 * file (path) and its identity (file_id: boot ID, device and inode, see fs_file_id_fd); the
 * file opened must have that identity and the disk's size, so a same-named file elsewhere
 * (another host sharing the path, a replaced file) is never read.  0, or -1 with the reason in
 * why. */
static int open_local(const json_t *dj, struct disk_plan *d, char *why, size_t whylen)
{
    const char *path = json_string_value(json_object_get(dj, "path"));
    const char *want = json_string_value(json_object_get(dj, "file_id"));
    if (!path || !want) {
        snprintf(why, whylen, "the server gives no file identity for the disk");
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        snprintf(why, whylen, "%s: %s", path, strerror(errno));
        return -1;
    }
    char have[FS_FILE_ID_MAX];
    struct stat st;
    int r = fs_file_id_fd(fd, have);
    if (r < 0 || strcmp(have, want)) {
        snprintf(why, whylen, "%s: %s", path,
                 r < 0 ? strerror(-r) : "not the server's file (another host, or replaced)");
    } else if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != d->size) {
        snprintf(why, whylen, "%s: size differs from the disk's", path);
    } else {
        posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        d->local_fd = fd;
        d->direct_fd = fs_reopen_direct(fd, O_RDONLY); /* for aligned reads; -1: none */
        return 0;
    }
    close(fd);
    return -1;
}

/* Delete snapshot sid of the VM vm on the server; a failure (other than "already
 * gone") is a warning, since the backup itself is done or failed already.  what: "old" ... */
static void delete_snapshot(struct client *cl, const char *vm, const char *sid, const char *what)
{
    int r = client_delete_snapshot(cl, vm, sid);
    if (r < 0 && r != -ENOENT)
        fprintf(stderr, "vmexport backup: warning: deleting the %s snapshot %s: %s\n", what, sid,
                client_error(cl));
}

/* The label this repository's backups give their snapshots on the server, so that the next
 * backup recognises one left by a backup that was killed: "vmexport-backup:" and the
 * repository ID (its SHA-256 when the ID is not plain hex). */
#define SNAPSHOT_LABEL_PREFIX "vmexport-backup:"
static char *snapshot_label(const struct repo *repo)
{
    const char *id = repo_id(repo);
    char hex[2 * HASH_SIZE + 1];
    if (!*id || strspn(id, "0123456789abcdef") != strlen(id)) {
        uint8_t d[HASH_SIZE];
        if (hash_sha256(id, strlen(id), d) < 0)
            return NULL;
        hash_to_hex(d, hex);
        id = hex;
    }
    char *label = NULL;
    return asprintf(&label, SNAPSHOT_LABEL_PREFIX "%s", id) < 0 ? NULL : label;
}

/* Delete the VM's snapshots that carry this repository's label but belong to no committed
 * backup: a backup of this VM into this repository made them and was killed before its commit
 * (one that failed deletes its own).  Called holding the VM's backup lock, so no backup of the
 * VM into this repository is running. */
static void delete_stale_snapshots(struct client *cl, struct repo *repo, const char *vm,
                                   const char *label)
{
    json_t *snaps = NULL;
    backup_list all = VECTOR_INIT;
    if (client_list_snapshots(cl, vm, false, &snaps) < 0) {
        fprintf(stderr, "vmexport backup: warning: VM %s: listing snapshots: %s\n", vm,
                client_error(cl));
        return;
    }
    if (repo_backup_list(repo, vm, &all) < 0) {
        json_decref(snaps);
        return;
    }
    size_t i;
    json_t *s;
    for (i = 0; i < json_array_size(snaps) && (s = json_array_get(snaps, i)); i++) {
        const char *sid = json_string_value(json_object_get(s, "id"));
        const char *sl = json_string_value(json_object_get(s, "label"));
        if (!sid || !sl || strcmp(sl, label))
            continue;
        bool used = false;
        for (size_t k = 0; k < all.len && !used; k++)
            used = all.ptr[k]->snapshot_id && !strcmp(all.ptr[k]->snapshot_id, sid);
        if (!used)
            delete_snapshot(cl, vm, sid, "stale (left by an interrupted backup)");
    }
    backup_list_free(&all);
    json_decref(snaps);
}

static int backup_run_cmd(int argc, char **argv)
{
    static const struct option opts[] = {
        {"repo", required_argument, NULL, 'r'},
        {"passphrase-file", required_argument, NULL, 'P'},
        {"full", no_argument, NULL, 'f'},
        {"jobs", required_argument, NULL, 'j'},
        {"keep-snapshots", required_argument, NULL, 'k'},
        {"transport", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct repo_opts o = {.jobs = DEFAULT_JOBS};
    bool full = false;
    unsigned keep_snapshots = 1;
    enum transport transport = TRANSPORT_AUTO;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:P:fj:k:t:Jh", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            o.repo = optarg;
            break;
        case 'P':
            o.passphrase_file = optarg;
            break;
        case 'f':
            full = true;
            break;
        case 'j':
            if (parse_jobs(optarg, &o.jobs) < 0)
                return cli_usage_error(&cmd_backup, "--jobs takes 1 to %d", MAX_JOBS);
            break;
        case 'k': {
            char *end;
            unsigned long v = strtoul(optarg, &end, 10);
            if (end == optarg || *end || v > 1000)
                return cli_usage_error(&cmd_backup, "--keep-snapshots takes 0 to 1000");
            keep_snapshots = (unsigned)v;
            break;
        }
        case 't':
            if (!strcmp(optarg, "auto"))
                transport = TRANSPORT_AUTO;
            else if (!strcmp(optarg, "https"))
                transport = TRANSPORT_HTTPS;
            else if (!strcmp(optarg, "local"))
                transport = TRANSPORT_LOCAL;
            else
                return cli_usage_error(&cmd_backup, "--transport takes auto, https or local");
            break;
        case 'J':
            o.json = true;
            break;
        case 'h':
            return cli_help(&cmd_backup);
        default:
            return cli_usage_error(&cmd_backup, "unknown option");
        }
    }
    if (argc - optind != 1)
        return cli_usage_error(&cmd_backup, "expected one VM");
    const char *vm = argv[optind];
    double t0 = progress_now();

    struct repo *repo = open_repo("backup", &o);
    if (!repo)
        return EXIT_FAIL;
    struct client *cl = cli_client_connect("backup");
    if (!cl) {
        repo_close(repo);
        return EXIT_FAIL;
    }

    int ret = EXIT_FAIL, r;
    json_t *vmj = NULL, *snapj = NULL;
    char *vm_json = NULL, *snap_id = NULL;
    struct backup_writer *w = NULL;
    struct backup *prev = NULL;
    struct disk_plan *plans = NULL;
    size_t nplans = 0;
    struct manifest *mans = NULL;
    struct backup_run b = {.repo = repo, .jobs = o.jobs, .nprocess = (unsigned)process_threads()};
    pthread_mutex_init(&b.err_lock, NULL);
    pthread_mutex_init(&b.q_lock, NULL);
    pthread_cond_init(&b.q_full_cv, NULL);
    pthread_cond_init(&b.q_free_cv, NULL);
    pthread_cond_init(&b.flush_cv, NULL);
    CLEANUP_FREE char *backup_id = NULL;
    CLEANUP_FREE char *label = snapshot_label(repo);
    if (!label)
        goto out;

    if ((r = client_get_vm(cl, vm, &vmj)) < 0) {
        fprintf(stderr, "vmexport backup: VM %s: %s\n", vm, client_error(cl));
        goto out;
    }
    vm_json = json_dumps(vmj, JSON_COMPACT);

    char err[512] = "";
    int64_t now = getenv("VMEXPORT_NOW") ? strtoll(getenv("VMEXPORT_NOW"), NULL, 10)
                                         : (int64_t)time(NULL);
    if ((r = repo_backup_begin(repo, vm, now, VM_LOCK_TIMEOUT, &w, err, sizeof(err))) < 0) {
        fprintf(stderr, "vmexport backup: %s: %s\n", repo_path(repo), err[0] ? err : strerror(-r));
        goto out;
    }
    if (!full && repo_backup_latest(repo, vm, &prev) < 0)
        prev = NULL;
    delete_stale_snapshots(cl, repo, vm, label);

    if ((r = client_create_snapshot(cl, vm, label, false, &snapj)) < 0) {
        fprintf(stderr, "vmexport backup: VM %s: creating a snapshot: %s\n", vm, client_error(cl));
        goto out;
    }
    snap_id = strdup(json_string_value(json_object_get(snapj, "id")) ?: "");
    json_t *disks = json_object_get(snapj, "disks");
    nplans = json_array_size(disks);
    plans = calloc(nplans ? nplans : 1, sizeof(*plans));
    mans = calloc(nplans ? nplans : 1, sizeof(*mans));
    if (!plans || !mans || !snap_id || !*snap_id)
        goto out;
    for (size_t i = 0; i < nplans; i++)
        plans[i].local_fd = plans[i].direct_fd = -1;

    /* Plan every disk: which chunks to read. */
    const uint32_t cs = repo_chunk_size(repo);
    uint64_t total = 0;
    size_t nlocal = 0;
    for (size_t i = 0; i < nplans; i++) {
        json_t *dj = json_array_get(disks, i);
        struct disk_plan *d = &plans[i];
        d->name = json_string_value(json_object_get(dj, "name"));
        d->size = (uint64_t)json_integer_value(json_object_get(dj, "size"));
        d->change_id = json_string_value(json_object_get(dj, "change_id"));
        if (!d->name || !(d->data_path = client_disk_data_path(vm, snap_id, d->name)))
            goto out;
        uint64_t n = (d->size + cs - 1) / cs;
        d->touched = calloc(n / 8 + 1, 1);
        if (!d->touched)
            goto out;
        const char *since = "*";
        if (prev) {
            for (size_t k = 0; k < prev->disks.len; k++) {
                if (strcmp(prev->disks.ptr[k].name, d->name) || !prev->disks.ptr[k].change_id)
                    continue;
                if (repo_manifest_read(repo, prev, d->name, &d->prev) == 0) {
                    d->have_prev = true;
                    since = prev->disks.ptr[k].change_id;
                }
            }
        }
        r = mark_changes(cl, vm, snap_id, d, since, cs);
        if (r == -ESTALE) { /* the previous snapshot is gone from the server */
            memset(d->touched, 0, n / 8 + 1);
            d->touched_bytes = 0;
            area_list_clear(&d->changed);
            area_list_clear(&d->zeroed);
            r = mark_changes(cl, vm, snap_id, d, "*", cs);
        } else if (r == 0 && strcmp(since, "*")) {
            d->incremental = true;
            /* The last chunk changes length when the size changes: read it again. */
            if (d->prev.disk_size != d->size && n > 0) {
                uint64_t last = (d->prev.disk_size < d->size ? d->prev.disk_size : d->size);
                uint64_t i0 = last ? (last - 1) / cs : 0;
                for (uint64_t k2 = i0; k2 <= i0 + 1 && k2 < n; k2++)
                    if (!(d->touched[k2 / 8] & (1u << (k2 % 8)))) {
                        d->touched[k2 / 8] |= (uint8_t)(1u << (k2 % 8));
                        d->touched_bytes += d->size - k2 * cs < cs ? d->size - k2 * cs : cs;
                    }
            }
        }
        if (r < 0) {
            fprintf(stderr, "vmexport backup: VM %s: disk %s: changed areas: %s\n", vm, d->name,
                    client_error(cl));
            goto out;
        }
        total += d->touched_bytes;

        if (transport != TRANSPORT_HTTPS) {
            char why[256];
            if (open_local(dj, d, why, sizeof(why)) == 0) {
                nlocal++;
            } else if (transport == TRANSPORT_LOCAL) {
                fprintf(stderr, "vmexport backup: VM %s: disk %s: cannot read the snapshot "
                                "locally (--transport local): %s\n", vm, d->name, why);
                goto out;
            }
        }
    }
    const char *transport_used = nlocal == 0 ? "https" : nlocal == nplans ? "local" : "mixed";

    /* Connections for the workers. */
    b.clients = calloc(o.jobs, sizeof(*b.clients));
    if (!b.clients)
        goto out;
    b.clients[0] = cl;
    for (unsigned t = 1; t < o.jobs; t++)
        if (client_dup(cl, &b.clients[t]) < 0) {
            fprintf(stderr, "vmexport backup: opening connection %u: %s\n", t + 1,
                    client_error(cl));
            goto out;
        }
    if ((r = repo_chunk_batch_new(repo, &b.batch)) < 0)
        goto out;
    progress_init(&b.prog, "backup", total, o.json);
    for (size_t i = 0; i < nplans; i++) {
        if ((r = backup_disk(&b, &plans[i], &mans[i])) < 0) {
            progress_finish(&b.prog);
            fprintf(stderr, "vmexport backup: VM %s: %s\n", vm,
                    b.err[0] ? b.err : strerror(-r));
            goto out;
        }
        if ((r = repo_backup_add_disk(w, &mans[i])) < 0) {
            progress_finish(&b.prog);
            fprintf(stderr, "vmexport backup: VM %s: disk %s: writing the manifest: %s\n", vm,
                    plans[i].name, r == -ENOSPC ? "no space left in the repository" : strerror(-r));
            goto out;
        }
    }
    progress_finish(&b.prog);

    uint64_t bytes_read = atomic_load(&b.local_bytes), bytes_transferred = 0;
    for (unsigned t = 0; t < o.jobs; t++) {
        bytes_read += client_bytes_received(b.clients[t]);
        bytes_transferred += client_bytes_on_wire(b.clients[t]);
    }
    struct backup *info = calloc(1, sizeof(*info));
    if (!info)
        goto out;
    info->snapshot_id = strdup(snap_id);
    info->server = cli_globals.server ? strdup(cli_globals.server) : NULL;
    info->time = now;
    info->vm_json = vm_json ? strdup(vm_json) : NULL;
    info->bytes_read = bytes_read;
    uint64_t existing = 0;
    repo_chunk_batch_stats(b.batch, &info->chunks_new, &existing, &info->bytes_written);
    info->chunks_reused = atomic_load(&b.chunks_reused) + existing;
    info->seconds = progress_now() - t0;
    info->parent_id = prev ? strdup(prev->id) : NULL;
    backup_id = strdup(repo_backup_writer_id(w));
    if ((r = repo_backup_commit(w, info)) < 0) {
        fprintf(stderr, "vmexport backup: VM %s: committing the backup: %s\n", vm,
                r == -ENOSPC ? "no space left in the repository" : strerror(-r));
        backup_free(info);
        goto out; /* w is still ours: aborted below */
    }
    w = NULL; /* committed: the writer is freed */
    struct backup stats = *info;
    stats.disks = (backup_disk_list)VECTOR_INIT;

    /* Keep the newest keep_snapshots snapshots this repository used as bases; delete older. */
    backup_list all = VECTOR_INIT;
    unsigned kept = 0;
    if (repo_backup_list(repo, vm, &all) == 0) {
        for (size_t i = all.len; i-- > 0;) {
            const char *sid = all.ptr[i]->snapshot_id;
            bool seen = false;
            for (size_t k = i + 1; k < all.len; k++)
                seen = seen || !strcmp(all.ptr[k]->snapshot_id, sid);
            if (seen)
                continue;
            if (kept++ < keep_snapshots)
                continue;
            delete_snapshot(cl, vm, sid, "old");
        }
    }
    backup_list_free(&all);

    if (o.json) {
        printf("{\"type\":\"summary\",\"backup\":\"%s\",\"vm\":\"%s\",\"snapshot\":\"%s\","
               "\"incremental\":%s,\"bytes_read\":%" PRIu64 ",\"bytes_transferred\":%" PRIu64
               ",\"bytes_written\":%" PRIu64
               ",\"chunks_new\":%" PRIu64 ",\"chunks_reused\":%" PRIu64
               ",\"chunks_fetched\":%llu,\"transport\":\"%s\",\"seconds\":%.3f}\n",
               backup_id, vm, snap_id, prev ? "true" : "false", stats.bytes_read,
               bytes_transferred, stats.bytes_written, stats.chunks_new, stats.chunks_reused,
               (unsigned long long)atomic_load(&b.chunks_fetched), transport_used,
               progress_now() - t0);
    } else {
        char b1[32], b2[32];
        printf("backup %s of VM %s (snapshot %s, %s, %s): read %s, wrote %s, %" PRIu64
               " new chunks, %" PRIu64 " reused, %.1f s\n",
               backup_id, vm, snap_id, prev ? "incremental" : "full", transport_used,
               cli_bytes(stats.bytes_read, b1, sizeof(b1)),
               cli_bytes(stats.bytes_written, b2, sizeof(b2)), stats.chunks_new,
               stats.chunks_reused, progress_now() - t0);
    }
    backup_free(info);
    ret = EXIT_OK;

out:
    if (w)
        repo_backup_abort(w);
    /* No backup uses the snapshot a failed run made: do not leave it on the server. */
    if (ret != EXIT_OK && snap_id && *snap_id)
        delete_snapshot(cl, vm, snap_id, "unused");
    if (b.clients) {
        for (unsigned t = 1; t < o.jobs; t++)
            if (b.clients[t])
                client_free(b.clients[t]);
        free(b.clients);
    }
    for (size_t i = 0; i < nplans; i++) {
        if (plans[i].local_fd >= 0)
            close(plans[i].local_fd);
        if (plans[i].direct_fd >= 0)
            close(plans[i].direct_fd);
        free(plans[i].data_path);
        free(plans[i].touched);
        area_list_reset(&plans[i].changed);
        area_list_reset(&plans[i].zeroed);
        if (plans[i].have_prev)
            manifest_free(&plans[i].prev);
        manifest_free(&mans[i]);
    }
    free(plans);
    free(mans);
    backup_free(prev);
    json_decref(vmj);
    json_decref(snapj);
    free(vm_json);
    free(snap_id);
    repo_chunk_batch_free(b.batch);
    pthread_mutex_destroy(&b.err_lock);
    pthread_mutex_destroy(&b.q_lock);
    pthread_cond_destroy(&b.q_full_cv);
    pthread_cond_destroy(&b.q_free_cv);
    pthread_cond_destroy(&b.flush_cv);
    client_free(cl);
    repo_close(repo);
    return ret;
}

const struct cli_command cmd_backup = {
    .name = "backup",
    .summary = "back up a VM into a repository (incremental when possible)",
    .run = backup_run_cmd,
    .usage =
        "Usage: vmexport backup VM --repo PATH [--full] [--jobs N] [--keep-snapshots N]\n"
        "                      [--transport auto|https|local] [--json]\n"
        "\n"
        "Take a snapshot of VM on the server and store its disks in the repository.\n"
        "When the snapshot of the VM's previous backup still exists on the server, only the\n"
        "areas that changed since (new data, block-precise from the server) are read, laid\n"
        "over the previous backup's chunks; discarded ranges become zeros without reading;\n"
        "every other chunk is taken from the previous backup.  Otherwise\n"
        "the backup is full, still skipping holes.  Every backup is a synthetic full: it\n"
        "restores on its own and can be pruned independently.  Chunks already in the\n"
        "repository are not stored again, so an interrupted backup's work (up to its last\n"
        "flush: every 512 MiB written) is reused by the next run; an interrupted backup\n"
        "itself never becomes visible.\n"
        "\n"
        "The new snapshot stays on the server as the base of the next backup; older snapshots\n"
        "this repository used as bases are deleted, keeping the newest N (--keep-snapshots,\n"
        "default 1).  Snapshots carry the label vmexport-backup:<repository ID>, so that\n"
        "those of backups that were killed before they completed are deleted by the next\n"
        "backup of the VM into the same repository; other snapshots are never touched.\n"
        "\n"
        "Options:\n" REPO_OPTIONS_HELP
        "  --full                  read every allocated chunk even if a base exists\n"
        "  -j, --jobs N            parallel connections (default 4)\n"
        "  --keep-snapshots N      server snapshots to keep as bases (default 1)\n"
        "  --transport MODE        how the disks' bytes are read: https (from the server),\n"
        "                          local (the snapshot files themselves, when this runs on\n"
        "                          the server's host: no TLS, no copies through the daemon,\n"
        "                          no page cache (O_DIRECT) where the filesystem allows;\n"
        "                          fails when a disk's file is not the server's), or auto\n"
        "                          (the default: local where possible, else https).  The\n"
        "                          server still takes the snapshot and says what changed.\n"
        "  --json                  progress lines and a summary as JSON: bytes_read (of\n"
        "                          the disks), bytes_transferred (over https: blocks of\n"
        "                          zeros are not sent), bytes_written, chunks_new,\n"
        "                          chunks_reused, chunks_fetched, transport (local,\n"
        "                          https, or mixed across disks), seconds\n"
        "  -h, --help              this help\n"
        "\n"
        "Connection options (also accepted before the command name):\n"
        "  --server URL  --user NAME  --password-file FILE  --cacert FILE\n"
        "  --cert FILE --key FILE  --insecure   (env VMEXPORT_SERVER, VMEXPORT_USER,\n"
        "  VMEXPORT_PASSWORD, VMEXPORT_CACERT)\n"
        "\n"
        "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};
