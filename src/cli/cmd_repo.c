/* Repository commands: repo init, backup, backups, restore, verify, prune, gc.
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
#include "cli/upload.h"
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
/* Restore threads (reading, checking, decompressing and writing chunks) and upload
 * connections unless --jobs says otherwise. */
#define RESTORE_DEFAULT_JOBS 4
#define UPLOAD_DEFAULT_JOBS  2
/* Alignment of a restore thread's chunk buffer (a page). */
#define RESTORE_PAGE 4096
/* In the name of a disk being restored: DEST + this + a random mkostemp suffix. */
#define RESTORE_TMP_MARK ".vxrestore.tmp."

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

static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-')
        return -EINVAL;
    switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
    default: break;
    }
    if (*end == 'i')
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end)
        return -EINVAL;
    *out = v;
    return 0;
}

static void format_time(int64_t t, char *buf, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, len, "%Y-%m-%d %H:%M:%SZ", &tm);
}

/* Backups and disks become file names: no path tricks. */
static bool safe_name(const char *s)
{
    return s && *s && s[0] != '.' && !strchr(s, '/') && strlen(s) <= 255;
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

static int repo_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"encrypt", no_argument, NULL, 'e'},
        {"chunk-size", required_argument, NULL, 'c'},
        {"passphrase-file", required_argument, NULL, 'P'},
        {"compression-level", required_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool encrypt = false;
    uint64_t chunk = REPO_DEFAULT_CHUNK_SIZE;
    int level = 0;
    const char *pfile = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "ec:P:L:h", opts, NULL)) != -1) {
        switch (c) {
        case 'e':
            encrypt = true;
            break;
        case 'c':
            if (parse_size(optarg, &chunk) < 0 || chunk < REPO_MIN_CHUNK_SIZE ||
                chunk > REPO_MAX_CHUNK_SIZE || (chunk & (chunk - 1)))
                return cli_usage_error(&cmd_repo,
                                       "--chunk-size must be a power of two from 64K to 64M");
            break;
        case 'P':
            pfile = optarg;
            break;
        case 'L': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end || v < -7 || v > 19 || v == 0)
                return cli_usage_error(&cmd_repo, "--compression-level takes -7 to -1 or 1 to 19");
            level = (int)v;
            break;
        }
        case 'h':
            return cli_help(&cmd_repo);
        default:
            return cli_usage_error(&cmd_repo, "unknown option");
        }
    }
    if (argc - optind == 2 && !strcmp(argv[optind], "upgrade"))
        return repo_upgrade(argv[optind + 1], pfile);
    if (argc - optind != 2 || strcmp(argv[optind], "init"))
        return cli_usage_error(&cmd_repo, "expected 'init PATH' or 'upgrade PATH'");
    const char *path = argv[optind + 1];
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
             "vmexport, which until then can be read but not written to (backup, prune, gc).\n"
             "\n"
             "Options:\n"
             "  --encrypt               encrypt (asks for the passphrase twice on a terminal)\n"
             "  --chunk-size SIZE       chunk size, e.g. 256K, 1M (default), 4M; an incremental\n"
             "                          backup rewrites every chunk a change touches, so\n"
             "                          small chunks make small incrementals\n"
             "  --compression-level N   zstd level of what is written: 1 (default: fastest,\n"
             "                          about as small as 3 on disk images) to 19 (smallest,\n"
             "                          slow), or -7 to -1 (faster, larger)\n"
             "  --passphrase-file FILE  read the passphrase from FILE (or VMEXPORT_PASSPHRASE)\n"
             "\n"
             "Exit status: 0 success, 1 failure, 2 bad usage.\n",
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

/* ---- backups ---- */

static int backups_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"repo", required_argument, NULL, 'r'},
        {"passphrase-file", required_argument, NULL, 'P'},
        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct repo_opts o = {0};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:P:Jh", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            o.repo = optarg;
            break;
        case 'P':
            o.passphrase_file = optarg;
            break;
        case 'J':
            o.json = true;
            break;
        case 'h':
            return cli_help(&cmd_backups);
        default:
            return cli_usage_error(&cmd_backups, "unknown option");
        }
    }
    if (argc - optind > 1)
        return cli_usage_error(&cmd_backups, "expected at most one VM");
    const char *vm = optind < argc ? argv[optind] : NULL;
    struct repo *repo = open_repo("backups", &o);
    if (!repo)
        return EXIT_FAIL;
    backup_list l = VECTOR_INIT;
    int r = repo_backup_list(repo, vm, &l);
    if (r < 0) {
        fprintf(stderr, "vmexport backups: %s: %s\n", repo_path(repo), strerror(-r));
        repo_close(repo);
        return EXIT_FAIL;
    }
    if (o.json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < l.len; i++) {
            struct backup *b = l.ptr[i];
            json_t *disks = json_array();
            for (size_t k = 0; k < b->disks.len; k++)
                json_array_append_new(disks, json_pack("{s:s, s:I, s:s?}", "name",
                                                       b->disks.ptr[k].name, "size",
                                                       (json_int_t)b->disks.ptr[k].size,
                                                       "change_id", b->disks.ptr[k].change_id));
            json_array_append_new(
                arr, json_pack("{s:s, s:s, s:s?, s:I, s:o, s:s?, s:I, s:I, s:I, s:I, s:f}", "id",
                               b->id, "vm", b->vm_id, "snapshot", b->snapshot_id, "time",
                               (json_int_t)b->time, "disks", disks, "parent", b->parent_id,
                               "bytes_read", (json_int_t)b->bytes_read, "bytes_written",
                               (json_int_t)b->bytes_written, "chunks_new",
                               (json_int_t)b->chunks_new, "chunks_reused",
                               (json_int_t)b->chunks_reused, "seconds", b->seconds));
        }
        char *text = json_dumps(arr, JSON_COMPACT);
        printf("%s\n", text ? text : "[]");
        free(text);
        json_decref(arr);
    } else {
        printf("%-24s %-20s %-20s %5s %10s  %s\n", "ID", "VM", "TIME", "DISKS", "SIZE", "KIND");
        for (size_t i = 0; i < l.len; i++) {
            struct backup *b = l.ptr[i];
            uint64_t size = 0;
            for (size_t k = 0; k < b->disks.len; k++)
                size += b->disks.ptr[k].size;
            char t[32], sz[32];
            format_time(b->time, t, sizeof(t));
            printf("%-24s %-20s %-20s %5zu %10s  %s\n", b->id, b->vm_id, t, b->disks.len,
                   cli_bytes(size, sz, sizeof(sz)), b->parent_id ? "incremental" : "full");
        }
    }
    backup_list_free(&l);
    repo_close(repo);
    return EXIT_OK;
}

const struct cli_command cmd_backups = {
    .name = "backups",
    .summary = "list the backups in a repository",
    .run = backups_run,
    .usage = "Usage: vmexport backups --repo PATH [VM] [--json]\n"
             "\n"
             "List the backups in the repository (of VM only, when given), oldest first, with\n"
             "their time (UTC), disks and total disk size.  \"incremental\" backups read only\n"
             "changed chunks from the server but, like full ones, restore on their own.\n"
             "\n"
             "Options:\n" REPO_OPTIONS_HELP
             "  --json                  a JSON array with every field\n"
             "\n"
             "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};

/* ---- restore ---- */

struct restore_run {
    struct repo *repo;
    const struct manifest *m;
    int fd; /* the temporary file */
    unsigned jobs;
    atomic_ullong next;
    atomic_int failed;
    struct progress prog;
    pthread_mutex_t err_lock;
    char err[512];
};

/* Each thread reads, checks (container checksum or tag, then the chunk ID) and decompresses a
 * chunk, then writes it; with more threads than CPUs the writes of some overlap the decoding
 * of others.  The runs of data are written (fs_write_data_runs: blocks of zeros stay holes in
 * the file, which was truncated to its size), through the page cache with the writeback behind
 * them: each thread
 * starts the writeback of the chunk it wrote, and waits for its previous chunk's and drops it
 * from the cache (fs_writeback_behind), so a restore keeps a few chunks per thread cached.
 * (Whole pages written with O_DIRECT instead were slower: 8 GiB image, 3 GiB of data, 3.2-3.7 s
 * against 2.9-3.1 s on a quiet machine, docs/benchmarks.md.) */
static void *restore_worker(void *opaque)
{
    struct restore_run *rr = opaque;
    const uint32_t cs = rr->m->chunk_size;
    uint64_t wb_off = 0, wb_len = 0;
    uint8_t *buf = NULL;
    if (posix_memalign((void **)&buf, RESTORE_PAGE, cs) != 0) {
        atomic_store(&rr->failed, 1);
        return NULL;
    }
    for (;;) {
        uint64_t i = atomic_fetch_add(&rr->next, 1);
        if (i >= rr->m->n || atomic_load(&rr->failed))
            break;
        const struct manifest_entry *e = &rr->m->e[i];
        uint64_t off = i * cs;
        uint64_t want = rr->m->disk_size - off < cs ? rr->m->disk_size - off : cs;
        if (e->zero) {
            progress_add(&rr->prog, want);
            continue;
        }
        size_t len = 0;
        int r = repo_chunk_read(rr->repo, &e->id, buf, cs, &len);
        if (r == 0 && len > want)
            r = -EBADMSG;
        if (r == 0)
            r = fs_write_data_runs(rr->fd, buf, len, off, NULL);
        if (r == 0 && (r = fs_writeback_behind(rr->fd, wb_off, wb_len, off, len)) == 0) {
            wb_off = off;
            wb_len = len;
        }
        if (r < 0) {
            char hex[2 * HASH_SIZE + 1];
            chunk_id_to_hex(&e->id, hex);
            pthread_mutex_lock(&rr->err_lock);
            if (!atomic_load(&rr->failed))
                snprintf(rr->err, sizeof(rr->err), "chunk %s at offset %" PRIu64 ": %s", hex,
                         off,
                         r == -EBADMSG ? "damaged (fails its checksum or authentication)"
                         : r == -ENOENT ? "missing from the repository"
                         : r == -ENOSPC ? "no space left on the destination"
                                        : strerror(-r));
            atomic_store(&rr->failed, 1);
            pthread_mutex_unlock(&rr->err_lock);
            break;
        }
        progress_add(&rr->prog, want);
    }
    free(buf);
    return NULL;
}

/* A disk restored under a temporary name next to its destination, waiting to be moved there. */
struct staged_disk {
    const char *disk;
    char *dest;
    char *tmp; /* the staged file; after an exchange, the destination's previous file */
    uint64_t size;
    int placed; /* STAGED, or how it was moved into place */
};
enum { STAGED, PLACED_NEW, PLACED_EXCHANGED, PLACED_REPLACED };

/* Restore one disk of b into a new temporary file next to dest (mkostemp: 0600, O_EXCL, a
 * random suffix, so nothing at dest or another writer's file is touched); the file is fsynced.
 * On failure the temporary file is removed and s->tmp is NULL. */
static int restore_stage(struct repo *repo, const struct backup *b, struct staged_disk *s,
                         unsigned jobs, bool json)
{
    struct manifest m = {0};
    int r = repo_manifest_read(repo, b, s->disk, &m);
    if (r < 0) {
        fprintf(stderr, "vmexport restore: backup %s: disk %s: manifest %s\n", b->id, s->disk,
                r == -EBADMSG ? "is damaged" : strerror(-r));
        return EXIT_FAIL;
    }
    if (asprintf(&s->tmp, "%s" RESTORE_TMP_MARK "XXXXXX", s->dest) < 0) {
        s->tmp = NULL;
        manifest_free(&m);
        return EXIT_FAIL;
    }
    int fd = mkostemp(s->tmp, O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "vmexport restore: %s: %s\n", s->dest, strerror(errno));
        free(s->tmp);
        s->tmp = NULL;
        manifest_free(&m);
        return EXIT_FAIL;
    }
    s->size = m.disk_size;
    struct restore_run rr = {.repo = repo, .m = &m, .fd = fd, .jobs = jobs};
    pthread_mutex_init(&rr.err_lock, NULL);
    if (ftruncate(fd, (off_t)m.disk_size) < 0) {
        snprintf(rr.err, sizeof(rr.err), "%s",
                 errno == ENOSPC || errno == EFBIG ? "no space left on the destination"
                                                   : strerror(errno));
        atomic_store(&rr.failed, 1);
    }
    progress_init(&rr.prog, "restore", m.disk_size, json);
    pthread_t th[MAX_JOBS];
    unsigned started = 0;
    for (unsigned t = 0; !atomic_load(&rr.failed) && t < jobs; t++)
        if (pthread_create(&th[t], NULL, restore_worker, &rr) == 0)
            started++;
    for (unsigned t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    progress_finish(&rr.prog);
    if (!atomic_load(&rr.failed) && fsync(fd) < 0) {
        snprintf(rr.err, sizeof(rr.err), "fsync: %s", strerror(errno));
        atomic_store(&rr.failed, 1);
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); /* the last chunks, clean now */
    close(fd);
    int ret = EXIT_OK;
    if (atomic_load(&rr.failed)) {
        fprintf(stderr, "vmexport restore: backup %s: disk %s: %s\n", b->id, s->disk,
                rr.err[0] ? rr.err : "failed");
        unlink(s->tmp);
        free(s->tmp);
        s->tmp = NULL;
        ret = EXIT_FAIL;
    }
    pthread_mutex_destroy(&rr.err_lock);
    manifest_free(&m);
    return ret;
}

/* While disks are staged, SIGINT, SIGTERM and SIGHUP remove the staged files (and the
 * directory the restore made) before the process dies of the signal as it would have; the
 * moves into place run with those signals blocked, so that they complete or are undone. */
static const int restore_signals[] = {SIGINT, SIGTERM, SIGHUP};
static struct staged_disk *volatile restore_sig_staged;
static volatile size_t restore_sig_n;
static const char *volatile restore_sig_dir; /* made by this restore, or NULL */
static struct sigaction restore_sig_saved[ARRAY_SIZE(restore_signals)];

static void restore_on_signal(int sig)
{
    struct staged_disk *s = restore_sig_staged;
    for (size_t i = 0; s && i < restore_sig_n; i++)
        if (s[i].tmp && s[i].placed == STAGED)
            unlink(s[i].tmp);
    if (restore_sig_dir)
        rmdir(restore_sig_dir);
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigaction(sig, &dfl, NULL);
    raise(sig);
}

static void restore_signals_arm(struct staged_disk *s, size_t n)
{
    restore_sig_n = n;
    restore_sig_staged = s;
    struct sigaction sa = {.sa_handler = restore_on_signal};
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < ARRAY_SIZE(restore_signals); i++)
        sigaction(restore_signals[i], &sa, &restore_sig_saved[i]);
}

static void restore_signals_disarm(void)
{
    for (size_t i = 0; i < ARRAY_SIZE(restore_signals); i++)
        sigaction(restore_signals[i], &restore_sig_saved[i], NULL);
    restore_sig_staged = NULL;
    restore_sig_dir = NULL;
}

/* Block (or unblock) the restore's signals in the calling thread. */
static void restore_signals_block(bool block)
{
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < ARRAY_SIZE(restore_signals); i++)
        sigaddset(&set, restore_signals[i]);
    pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}

/* fsync the directory holding path, so that the renames into it are durable. */
static void dir_sync_of(const char *path)
{
    CLEANUP_FREE char *copy = strdup(path);
    if (!copy)
        return;
    char *slash = strrchr(copy, '/');
    const char *dir = slash ? (slash == copy ? "/" : (*slash = '\0', copy)) : ".";
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Move every staged disk to its destination, all or none.  A new name is taken with
 * RENAME_NOREPLACE; with force an existing file is swapped with the staged one
 * (RENAME_EXCHANGE), its old content kept under the temporary name until every disk is in
 * place, so that a failure half-way puts every earlier destination back as it was. */
static int restore_commit(struct staged_disk *s, size_t n, bool force)
{
    size_t i = 0;
    int e = 0;
    for (; i < n; i++) {
        if (renameat2(AT_FDCWD, s[i].tmp, AT_FDCWD, s[i].dest, RENAME_NOREPLACE) == 0) {
            s[i].placed = PLACED_NEW;
            continue;
        }
        e = errno;
        if (e == EEXIST && force) {
            if (renameat2(AT_FDCWD, s[i].tmp, AT_FDCWD, s[i].dest, RENAME_EXCHANGE) == 0) {
                s[i].placed = PLACED_EXCHANGED;
                continue;
            }
            e = errno;
            /* A filesystem without RENAME_EXCHANGE (NFS): replace, without a way back. */
            if (e == EINVAL && rename(s[i].tmp, s[i].dest) == 0) {
                s[i].placed = PLACED_REPLACED;
                continue;
            }
            e = e == EINVAL ? errno : e;
        }
        fprintf(stderr, "vmexport restore: %s: %s\n", s[i].dest,
                e == EEXIST ? "exists (use --force to overwrite it)" : strerror(e));
        break;
    }
    if (i == n) {
        for (size_t k = 0; k < n; k++) {
            if (s[k].placed == PLACED_EXCHANGED)
                unlink(s[k].tmp); /* the replaced file */
            dir_sync_of(s[k].dest);
        }
        return EXIT_OK;
    }
    /* Undo, newest first: what was new is removed, what was swapped is swapped back (the
     * restored file, at the temporary name again, is removed by the caller). */
    while (i-- > 0) {
        if (s[i].placed == PLACED_REPLACED) {
            fprintf(stderr, "vmexport restore: %s: was replaced (the filesystem cannot swap "
                            "files back)\n", s[i].dest);
            continue;
        }
        int r = s[i].placed == PLACED_NEW
                    ? unlink(s[i].dest)
                    : renameat2(AT_FDCWD, s[i].tmp, AT_FDCWD, s[i].dest, RENAME_EXCHANGE);
        if (r < 0)
            fprintf(stderr, "vmexport restore: %s: cannot undo the restore: %s\n", s[i].dest,
                    strerror(errno));
        else
            s[i].placed = STAGED;
    }
    return EXIT_FAIL;
}

static int restore_run_cmd(int argc, char **argv)
{
    static const struct option opts[] = {
        {"repo", required_argument, NULL, 'r'},
        {"passphrase-file", required_argument, NULL, 'P'},
        {"disk", required_argument, NULL, 'd'},
        {"to", required_argument, NULL, 't'},
        {"upload", required_argument, NULL, 'u'},
        {"force", no_argument, NULL, 'f'},
        {"jobs", required_argument, NULL, 'j'},
        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct repo_opts o = {.jobs = 0};
    const char *disk = NULL, *to = NULL, *upload_vm = NULL;
    bool force = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:P:d:t:u:fj:Jh", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            o.repo = optarg;
            break;
        case 'P':
            o.passphrase_file = optarg;
            break;
        case 'd':
            disk = optarg;
            break;
        case 't':
            to = optarg;
            break;
        case 'u':
            upload_vm = optarg;
            break;
        case 'f':
            force = true;
            break;
        case 'j':
            if (parse_jobs(optarg, &o.jobs) < 0)
                return cli_usage_error(&cmd_restore, "--jobs takes 1 to %d", MAX_JOBS);
            break;
        case 'J':
            o.json = true;
            break;
        case 'h':
            return cli_help(&cmd_restore);
        default:
            return cli_usage_error(&cmd_restore, "unknown option");
        }
    }
    if (argc - optind != 1)
        return cli_usage_error(&cmd_restore, "expected one BACKUP id");
    if (!to == !upload_vm)
        return cli_usage_error(&cmd_restore, "give one of --to FILE|DIR and --upload VM");
    if (!o.jobs)
        o.jobs = upload_vm ? UPLOAD_DEFAULT_JOBS : RESTORE_DEFAULT_JOBS;
    struct repo *repo = open_repo("restore", &o);
    if (!repo)
        return EXIT_FAIL;
    struct backup *b = NULL;
    struct staged_disk *staged = NULL;
    size_t nstaged = 0;
    bool made_dir = false, staging = false;
    int ret = EXIT_FAIL;
    char err[512] = "";
    int r = repo_lock(repo, false, VM_LOCK_TIMEOUT, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "vmexport restore: %s: %s\n", repo_path(repo), err);
        goto out;
    }
    r = repo_backup_get(repo, argv[optind], &b);
    if (r < 0) {
        fprintf(stderr, "vmexport restore: backup %s: %s\n", argv[optind],
                r == -ENOENT    ? "not found (see 'vmexport backups')"
                : r == -EBADMSG ? "its metadata is damaged"
                                : strerror(-r));
        goto out;
    }
    if (disk) {
        bool found = false;
        for (size_t i = 0; i < b->disks.len; i++)
            found = found || !strcmp(b->disks.ptr[i].name, disk);
        if (!found) {
            fprintf(stderr, "vmexport restore: backup %s has no disk '%s'\n", b->id, disk);
            goto out;
        }
    }
    if (upload_vm) {
        ret = upload_backup("restore", repo, b, disk, upload_vm, o.jobs, o.json);
        goto out;
    }
    /* Every disk is staged (restored under a temporary name next to its destination) before
     * any is moved into place: a failure leaves the destination as it was. */
    struct stat st;
    bool to_dir = (!disk && b->disks.len != 1) || (stat(to, &st) == 0 && S_ISDIR(st.st_mode));
    staged = calloc(b->disks.len, sizeof(*staged));
    if (!staged)
        goto out;
    for (size_t i = 0; i < b->disks.len; i++) {
        const char *name = b->disks.ptr[i].name;
        if (disk && strcmp(name, disk))
            continue;
        struct staged_disk *s = &staged[nstaged++];
        s->disk = name;
        if (!to_dir) {
            s->dest = strdup(to);
        } else if (!safe_name(name)) {
            fprintf(stderr, "vmexport restore: disk name '%s' cannot be a file name\n", name);
            goto out;
        } else if (asprintf(&s->dest, "%s/%s", to, name) < 0) {
            s->dest = NULL;
        }
        if (!s->dest)
            goto out;
        /* Refuse before writing anything what the final rename would refuse. */
        if (lstat(s->dest, &st) == 0 && (!force || S_ISDIR(st.st_mode))) {
            fprintf(stderr, "vmexport restore: %s %s\n", s->dest,
                    S_ISDIR(st.st_mode) ? "is a directory"
                                        : "exists (use --force to overwrite it)");
            goto out;
        }
    }
    restore_signals_arm(staged, nstaged);
    staging = true;
    if (to_dir) {
        if (mkdir(to, 0755) == 0) {
            made_dir = true;
            restore_sig_dir = to;
        } else if (errno != EEXIST) {
            fprintf(stderr, "vmexport restore: %s: %s\n", to, strerror(errno));
            goto out;
        }
    }
    for (size_t i = 0; i < nstaged; i++)
        if (restore_stage(repo, b, &staged[i], o.jobs, o.json) != EXIT_OK)
            goto out;
    restore_signals_block(true);
    r = restore_commit(staged, nstaged, force);
    restore_sig_dir = NULL; /* the disks are in place, or the caller removes what is left */
    restore_signals_block(false);
    if (r != EXIT_OK)
        goto out;
    for (size_t i = 0; i < nstaged; i++) {
        free(staged[i].tmp);
        staged[i].tmp = NULL;
        if (!o.json) {
            char sz[32];
            printf("restored disk %s of backup %s to %s (%s)\n", staged[i].disk, b->id,
                   staged[i].dest, cli_bytes(staged[i].size, sz, sizeof(sz)));
        } else {
            printf("{\"type\":\"restored\",\"backup\":\"%s\",\"disk\":\"%s\",\"to\":\"%s\","
                   "\"size\":%" PRIu64 "}\n", b->id, staged[i].disk, staged[i].dest,
                   staged[i].size);
        }
    }
    ret = EXIT_OK;
out:
    if (staging)
        restore_signals_disarm();
    if (staged) {
        for (size_t i = 0; i < nstaged; i++) {
            if (staged[i].tmp && staged[i].placed == STAGED)
                unlink(staged[i].tmp);
            free(staged[i].tmp);
            free(staged[i].dest);
        }
        if (ret != EXIT_OK && made_dir)
            rmdir(to);
        if (ret != EXIT_OK && staging)
            fprintf(stderr, "vmexport restore: nothing was written to %s\n", to);
        free(staged);
    }
    backup_free(b);
    repo_close(repo);
    return ret;
}

const struct cli_command cmd_restore = {
    .name = "restore",
    .summary = "restore a backup's disks to files",
    .run = restore_run_cmd,
    .usage =
        "Usage: vmexport restore --repo PATH BACKUP [--disk NAME] --to FILE|DIR [--force]\n"
        "                        [--jobs N] [--json]\n"
        "       vmexport restore --repo PATH BACKUP [--disk NAME] --upload VM [--jobs N]\n"
        "\n"
        "With --upload, the disks are written back to a host through vmexportd's upload API\n"
        "into VM (created when missing; existing disks are never overwritten): data chunks\n"
        "as ranged PUTs from N connections, zero ranges as PATCH zero requests, then the\n"
        "transfer is finalized; on failure it is cancelled and no disk appears.\n"
        "\n"
        "Write the disks of BACKUP as sparse raw files.  With one disk (or --disk), --to\n"
        "names the file (or an existing directory to put it in); otherwise --to is a\n"
        "directory that receives one file per disk, named after the disk.  Every chunk's\n"
        "checksum (and, when encrypted, authentication tag) is checked; on any error nothing\n"
        "is left at the destination: every disk is first written under a temporary name\n"
        "next to its destination (DEST.vxrestore.tmp.XXXXXX, mode 0600), and only when all\n"
        "are complete are they renamed into place; with --force an existing file is\n"
        "swapped out and removed only then, so a failure leaves it as it was.\n"
        "What is written leaves the page cache once it is on the disk: restoring a big disk\n"
        "does not push the host's cached data out.\n"
        "\n"
        "Options:\n" REPO_OPTIONS_HELP
        "  --disk NAME             only this disk\n"
        "  --to FILE|DIR           destination file or directory\n"
        "  --upload VM             upload to the server instead (connection options below)\n"
        "  --force                 replace existing files\n"
        "  -j, --jobs N            parallel readers (default 4 with --to, 2 with --upload)\n"
        "  --json                  progress and results as JSON lines\n"
        "\n"
        "Exit status: 0 success, 1 failure (damaged or missing data, existing file), 2 usage.\n",
};

/* ---- verify ---- */

/* Set of chunk IDs already checked, with the result: open addressing, grows by doubling. */
struct idset {
    struct chunk_id *ids;
    int8_t *state; /* 0 empty, 1 good, -1 damaged */
    size_t cap, len;
};

static size_t idset_slot(const struct idset *s, const struct chunk_id *id)
{
    uint64_t h;
    memcpy(&h, id->b, sizeof(h)); /* IDs are uniformly distributed hashes */
    size_t i = (size_t)h & (s->cap - 1);
    while (s->state[i] && memcmp(&s->ids[i], id, sizeof(*id)))
        i = (i + 1) & (s->cap - 1);
    return i;
}

static int idset_put(struct idset *s, const struct chunk_id *id, int8_t v)
{
    if ((s->len + 1) * 2 > s->cap) {
        struct idset n = {.cap = s->cap ? s->cap * 2 : 1024};
        n.ids = calloc(n.cap, sizeof(*n.ids));
        n.state = calloc(n.cap, 1);
        if (!n.ids || !n.state) {
            free(n.ids);
            free(n.state);
            return -ENOMEM;
        }
        for (size_t i = 0; i < s->cap; i++)
            if (s->state[i]) {
                size_t k = idset_slot(&n, &s->ids[i]);
                n.ids[k] = s->ids[i];
                n.state[k] = s->state[i];
                n.len++;
            }
        free(s->ids);
        free(s->state);
        *s = n;
    }
    size_t k = idset_slot(s, id);
    if (!s->state[k])
        s->len++;
    s->ids[k] = *id;
    s->state[k] = v;
    return 0;
}

static int8_t idset_get(const struct idset *s, const struct chunk_id *id)
{
    return s->cap ? s->state[idset_slot(s, id)] : 0;
}

static int verify_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"repo", required_argument, NULL, 'r'},
        {"passphrase-file", required_argument, NULL, 'P'},
        {"sample", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct repo_opts o = {0};
    double sample = 100;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:P:s:Jh", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            o.repo = optarg;
            break;
        case 'P':
            o.passphrase_file = optarg;
            break;
        case 's': {
            char *end;
            sample = strtod(optarg, &end);
            if (end == optarg || (*end && strcmp(end, "%")) || sample <= 0 || sample > 100)
                return cli_usage_error(&cmd_verify, "--sample takes a percentage in (0, 100]");
            break;
        }
        case 'J':
            o.json = true;
            break;
        case 'h':
            return cli_help(&cmd_verify);
        default:
            return cli_usage_error(&cmd_verify, "unknown option");
        }
    }
    if (argc - optind > 1)
        return cli_usage_error(&cmd_verify, "expected at most one BACKUP");
    struct repo *repo = open_repo("verify", &o);
    if (!repo)
        return EXIT_FAIL;
    char err[512] = "";
    int r = repo_lock(repo, false, VM_LOCK_TIMEOUT, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "vmexport verify: %s: %s\n", repo_path(repo), err);
        repo_close(repo);
        return EXIT_FAIL;
    }
    backup_list l = VECTOR_INIT;
    uint64_t damaged_backups = 0, chunks_checked = 0, chunks_damaged = 0;
    if (optind < argc) {
        struct backup *b = NULL;
        r = repo_backup_get(repo, argv[optind], &b);
        if (r == -EBADMSG) {
            printf("backup %s: DAMAGED: its metadata (backup.json) cannot be read\n",
                   argv[optind]);
            damaged_backups++;
        } else if (r < 0) {
            fprintf(stderr, "vmexport verify: backup %s: %s\n", argv[optind],
                    r == -ENOENT ? "not found" : strerror(-r));
            repo_close(repo);
            return EXIT_FAIL;
        } else {
            backup_list_append(&l, b);
        }
    } else {
        r = repo_backup_list(repo, NULL, &l);
        if (r < 0) {
            fprintf(stderr, "vmexport verify: %s: %s\n", repo_path(repo), strerror(-r));
            repo_close(repo);
            return EXIT_FAIL;
        }
        string_list bad = VECTOR_INIT;
        if (repo_backup_list_damaged(repo, &bad) == 0)
            for (size_t i = 0; i < bad.len; i++) {
                printf("backup %s: DAMAGED: its metadata (backup.json) cannot be read\n",
                       bad.ptr[i]);
                damaged_backups++;
            }
        string_list_free(&bad);
    }

    struct idset seen = {0};
    const uint32_t cs = repo_chunk_size(repo);
    uint8_t *buf = malloc(cs);
    uint32_t threshold = (uint32_t)(sample / 100.0 * (double)UINT32_MAX);
    for (size_t i = 0; buf && i < l.len; i++) {
        struct backup *b = l.ptr[i];
        bool bad = false;
        for (size_t k = 0; k < b->disks.len; k++) {
            struct manifest m = {0};
            r = repo_manifest_read(repo, b, b->disks.ptr[k].name, &m);
            if (r < 0) {
                printf("backup %s: disk %s: DAMAGED manifest (%s)\n", b->id,
                       b->disks.ptr[k].name, r == -EBADMSG ? "fails its checks" : strerror(-r));
                bad = true;
                continue;
            }
            for (uint64_t e = 0; e < m.n; e++) {
                if (m.e[e].zero)
                    continue;
                uint32_t pick;
                memcpy(&pick, m.e[e].id.b + 8, sizeof(pick)); /* deterministic sample */
                if (sample < 100 && pick > threshold)
                    continue;
                int8_t st = idset_get(&seen, &m.e[e].id);
                if (!st) {
                    size_t len;
                    int g = repo_chunk_get(repo, &m.e[e].id, buf, cs, &len);
                    st = g == 0 ? 1 : (int8_t)-1;
                    if (g == -ENOENT)
                        st = -2;
                    idset_put(&seen, &m.e[e].id, st);
                    chunks_checked++;
                    if (st < 0)
                        chunks_damaged++;
                }
                if (st < 0) {
                    char hex[2 * HASH_SIZE + 1];
                    chunk_id_to_hex(&m.e[e].id, hex);
                    printf("backup %s: disk %s: offset %" PRIu64 ": chunk %s %s\n", b->id,
                           m.disk, e * (uint64_t)m.chunk_size, hex,
                           st == -2 ? "MISSING" : "DAMAGED");
                    bad = true;
                }
            }
            manifest_free(&m);
        }
        if (bad)
            damaged_backups++;
        else if (!o.json)
            printf("backup %s: ok\n", b->id);
    }
    free(buf);
    free(seen.ids);
    free(seen.state);
    if (o.json)
        printf("{\"type\":\"summary\",\"backups\":%zu,\"damaged_backups\":%" PRIu64
               ",\"chunks_checked\":%" PRIu64 ",\"chunks_damaged\":%" PRIu64 "}\n",
               l.len, damaged_backups, chunks_checked, chunks_damaged);
    else
        printf("%zu backups checked, %" PRIu64 " damaged; %" PRIu64 " chunks read, %" PRIu64
               " bad\n", l.len, damaged_backups, chunks_checked, chunks_damaged);
    backup_list_free(&l);
    repo_close(repo);
    return damaged_backups ? EXIT_FAIL : EXIT_OK;
}

const struct cli_command cmd_verify = {
    .name = "verify",
    .summary = "check that backups can be restored",
    .run = verify_run,
    .usage = "Usage: vmexport verify --repo PATH [BACKUP] [--sample PCT] [--json]\n"
             "\n"
             "Read every manifest and every chunk the backups (or BACKUP) reference, decrypt,\n"
             "decompress and check each against its ID.  Damaged or missing chunks are named\n"
             "with the backups, disks and offsets that need them.  Each chunk is read once\n"
             "however many backups share it.  --sample checks a deterministic PCT% of the\n"
             "chunks (by ID), for quick periodic checks.\n"
             "\n"
             "Options:\n" REPO_OPTIONS_HELP
             "  --sample PCT            check only this percentage of the chunks\n"
             "  --json                  a JSON summary\n"
             "\n"
             "Exit status: 0 all good, 1 damage found or failure, 2 bad usage.\n",
};

/* ---- prune ---- */

static int prune_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"repo", required_argument, NULL, 'r'},
        {"passphrase-file", required_argument, NULL, 'P'},
        {"keep-last", required_argument, NULL, 'l'},
        {"keep-daily", required_argument, NULL, 'd'},
        {"keep-weekly", required_argument, NULL, 'w'},
        {"keep-monthly", required_argument, NULL, 'm'},
        {"dry-run", no_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct repo_opts o = {0};
    struct prune_policy p = {0};
    bool dry = false, any = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:P:l:d:w:m:nJh", opts, NULL)) != -1) {
        unsigned *dst = NULL;
        switch (c) {
        case 'r':
            o.repo = optarg;
            break;
        case 'P':
            o.passphrase_file = optarg;
            break;
        case 'l':
            dst = &p.keep_last;
            break;
        case 'd':
            dst = &p.keep_daily;
            break;
        case 'w':
            dst = &p.keep_weekly;
            break;
        case 'm':
            dst = &p.keep_monthly;
            break;
        case 'n':
            dry = true;
            break;
        case 'J':
            o.json = true;
            break;
        case 'h':
            return cli_help(&cmd_prune);
        default:
            return cli_usage_error(&cmd_prune, "unknown option");
        }
        if (dst) {
            char *end;
            unsigned long v = strtoul(optarg, &end, 10);
            if (end == optarg || *end || optarg[0] == '-' || v > 100000)
                return cli_usage_error(&cmd_prune, "keep counts are whole numbers");
            *dst = (unsigned)v;
            any = true;
        }
    }
    if (argc - optind > 1)
        return cli_usage_error(&cmd_prune, "expected at most one VM");
    if (!any || (!p.keep_last && !p.keep_daily && !p.keep_weekly && !p.keep_monthly))
        return cli_usage_error(&cmd_prune, "give at least one non-zero --keep-* option "
                                           "(prune never removes every backup)");
    const char *only_vm = optind < argc ? argv[optind] : NULL;
    struct repo *repo = open_repo("prune", &o);
    if (!repo)
        return EXIT_FAIL;
    /* The repository applies the policy per VM under its exclusive lock; we report. */
    backup_list removed = VECTOR_INIT, left = VECTOR_INIT;
    char err[512] = "";
    int r = repo_prune(repo, only_vm, &p, VM_LOCK_TIMEOUT, dry, &removed, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "vmexport prune: %s: %s\n", repo_path(repo),
                err[0] ? err : strerror(-r));
        backup_list_free(&removed);
        repo_close(repo);
        return EXIT_FAIL;
    }
    for (size_t i = 0; i < removed.len; i++) {
        const struct backup *b = removed.ptr[i];
        if (o.json)
            printf("{\"type\":\"remove\",\"backup\":\"%s\",\"vm\":\"%s\",\"time\":%" PRId64
                   ",\"dry_run\":%s}\n",
                   b->id, b->vm_id, b->time, dry ? "true" : "false");
        else
            printf("%s %s  %s\n", dry ? "would remove" : "removed", b->id, b->vm_id);
    }
    size_t kept = 0;
    if (repo_backup_list(repo, only_vm, &left) == 0)
        kept = left.len - (dry ? removed.len : 0);
    if (!o.json)
        printf("%zu kept, %zu %s%s\n", kept, removed.len, dry ? "would be removed" : "removed",
               dry || !removed.len ? "" : " (run 'vmexport gc' to free their chunks)");
    backup_list_free(&left);
    backup_list_free(&removed);
    repo_close(repo);
    return EXIT_OK;
}

const struct cli_command cmd_prune = {
    .name = "prune",
    .summary = "remove old backups by a retention policy",
    .run = prune_run,
    .usage = "Usage: vmexport prune --repo PATH [VM] [--keep-last N] [--keep-daily N]\n"
             "                      [--keep-weekly N] [--keep-monthly N] [--dry-run] [--json]\n"
             "\n"
             "For each VM (or only VM), keep the backups the policy selects and remove the\n"
             "others.  --keep-last keeps the newest N; --keep-daily the newest backup of each\n"
             "of the newest N days that have one; --keep-weekly and --keep-monthly likewise per\n"
             "ISO week and calendar month (UTC).  A backup kept by any rule is kept.  Every\n"
             "backup is self-contained, so any of them can go.  Chunks are freed by\n"
             "'vmexport gc'.\n"
             "\n"
             "Options:\n" REPO_OPTIONS_HELP
             "  --keep-last/daily/weekly/monthly N   the policy (at least one, non-zero)\n"
             "  -n, --dry-run           show what would be removed\n"
             "  --json                  one JSON line per backup removed\n"
             "\n"
             "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};

/* ---- gc ---- */

static int gc_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"repo", required_argument, NULL, 'r'},
        {"passphrase-file", required_argument, NULL, 'P'},
        {"dry-run", no_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct repo_opts o = {0};
    bool dry = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:P:nJh", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            o.repo = optarg;
            break;
        case 'P':
            o.passphrase_file = optarg;
            break;
        case 'n':
            dry = true;
            break;
        case 'J':
            o.json = true;
            break;
        case 'h':
            return cli_help(&cmd_gc);
        default:
            return cli_usage_error(&cmd_gc, "unknown option");
        }
    }
    if (argc != optind)
        return cli_usage_error(&cmd_gc, "unexpected argument");
    struct repo *repo = open_repo("gc", &o);
    if (!repo)
        return EXIT_FAIL;
    struct gc_stats st = {0};
    char err[512] = "";
    int r = repo_gc(repo, dry, &st, err, sizeof(err));
    repo_close(repo);
    if (r < 0) {
        fprintf(stderr, "vmexport gc: %s\n", err[0] ? err : strerror(-r));
        return EXIT_FAIL;
    }
    if (o.json) {
        printf("{\"type\":\"summary\",\"dry_run\":%s,\"chunks_total\":%" PRIu64
               ",\"chunks_deleted\":%" PRIu64 ",\"bytes_freed\":%" PRIu64
               ",\"temp_files_removed\":%" PRIu64 ",\"partial_backups_removed\":%" PRIu64 "}\n",
               dry ? "true" : "false", st.chunks_total, st.chunks_deleted, st.bytes_freed,
               st.temp_files_removed, st.partial_backups_removed);
    } else {
        char b[32];
        printf("%s%" PRIu64 " of %" PRIu64 " chunks unreferenced, %s %s; %" PRIu64
               " temporary files and %" PRIu64 " partial backups %s\n",
               dry ? "(dry run) " : "", st.chunks_deleted, st.chunks_total,
               cli_bytes(st.bytes_freed, b, sizeof(b)), dry ? "would be freed" : "freed",
               st.temp_files_removed, st.partial_backups_removed, dry ? "found" : "removed");
    }
    return EXIT_OK;
}

const struct cli_command cmd_gc = {
    .name = "gc",
    .summary = "free chunks no backup uses",
    .run = gc_run,
    .usage = "Usage: vmexport gc --repo PATH [--dry-run] [--json]\n"
             "\n"
             "Delete the chunks that no backup references (after prune), the temporary files\n"
             "and the partial backups that interrupted runs left.  Waits for running backups\n"
             "and holds the repository exclusively while it works.\n"
             "\n"
             "Options:\n" REPO_OPTIONS_HELP
             "  -n, --dry-run           count only\n"
             "  --json                  a JSON summary\n"
             "\n"
             "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};
