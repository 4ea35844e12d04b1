/* The restore engine; see restore.h.  Three steps: plan (a destination per disk, refusing
 * before anything is written what the final rename would refuse), stage (each disk restored by
 * worker threads into a temporary file next to its destination), commit (every staged file
 * renamed into place, all or none). */
#include "backup/restore.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/pool.h"
#include "core/signals.h"
#include "fs/fsinfo.h"
#include "fs/zero.h"

/* Alignment of a worker's chunk buffer (a page). */
#define RESTORE_PAGE 4096
/* Bytes of data a restore thread writes before it starts their writeback (and waits for the
 * previous window's): per chunk, a sparse disk's scattered small extents were written one
 * 4 KiB write at a time (4 TiB, 65,536 x 4 KiB: 8.7 s, against cp's 2.6 s). */
#define WRITEBACK_WINDOW ((uint64_t)8 << 20)
/* Mode of a directory a restore makes for the disks (as mkdir(1) would). */
#define RESTORE_DIR_MODE 0755

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Append "; note" to a message already in err. */
static void add_note(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void add_note(char *err, size_t errlen, const char *fmt, ...)
{
    size_t used = strlen(err);
    if (used + 2 >= errlen)
        return;
    if (used) {
        memcpy(err + used, "; ", 3);
        used += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + used, errlen - used, fmt, ap);
    va_end(ap);
}

/* What a failure to read or write a chunk means to the user. */
static const char *chunk_error(int r)
{
    return r == -EBADMSG  ? "damaged (fails its checksum or authentication)"
           : r == -ENOENT ? "missing from the repository"
           : r == -ENOSPC ? "no space left on the destination"
                          : strerror(-r);
}

/* ---- stage: one disk into a temporary file ---- */

struct stage_run {
    struct repo *repo;
    const struct manifest *m;
    const struct backup_progress *progress;
    int fd; /* the temporary file */
    atomic_ullong next;
    struct first_error fe;
};

static void stage_advance(struct stage_run *s, uint64_t bytes)
{
    backup_progress_add(s->progress, bytes);
}

/* Write the blocks of chunk data buf (len bytes at off) that the zero-block mask does not
 * mark: runs of them, through fs_write_data_runs (zeros inside stay holes too). */
static int write_chunk_blocks(int fd, const uint8_t *buf, size_t len, uint64_t off,
                              const uint64_t *mask)
{
    size_t nb = (len + CHUNK_BLOCK - 1) / CHUNK_BLOCK;
    for (size_t k = 0; k < nb;) {
        if (chunk_mask_test(mask, k)) {
            k++;
            continue;
        }
        size_t j = k + 1;
        while (j < nb && !chunk_mask_test(mask, j))
            j++;
        size_t s = k * CHUNK_BLOCK, e = j * CHUNK_BLOCK < len ? j * CHUNK_BLOCK : len;
        int r = fs_write_data_runs(fd, buf + s, e - s, off + s, NULL);
        if (r < 0)
            return r;
        k = j;
    }
    return 0;
}

/* The bytes of a chunk of len bytes outside its zero blocks (mask). */
static uint64_t data_bytes(size_t len, const uint64_t *mask)
{
    size_t nb = (len + CHUNK_BLOCK - 1) / CHUNK_BLOCK, zero = 0;
    for (size_t w = 0; w < (nb + 63) / 64; w++)
        zero += (size_t)__builtin_popcountll(mask[w]);
    uint64_t z = (uint64_t)zero * CHUNK_BLOCK;
    return z >= len ? 0 : len - z;
}

/* Each thread takes the manifest's entries (the stored chunks: the rest of the file, truncated
 * to its size, stays a hole) one at a time, reads, checks (container checksum or tag, then the
 * chunk ID) and decompresses a chunk, then writes it; with more threads than CPUs the writes
 * of some overlap the decoding of others.  Only the chunk's non-zero blocks are written, in
 * runs of data (fs_write_data_runs: blocks of zeros stay holes in the file), through the page
 * cache with the writeback behind them: each thread starts the writeback of the chunks it wrote
 * once they hold WRITEBACK_WINDOW bytes, and waits for its previous window's and drops it from
 * the cache (fs_writeback_behind), so a restore keeps a few windows per thread cached.  (Whole pages written with O_DIRECT instead
 * were slower: 8 GiB image, 3 GiB of data, 3.2-3.7 s against 2.9-3.1 s on a quiet machine,
 * docs/benchmarks.md.) */
static void *stage_worker(void *opaque)
{
    struct stage_run *s = opaque;
    const uint32_t cs = s->m->chunk_size;
    uint64_t wb_off = 0, wb_len = 0, win_off = 0, win_bytes = 0;
    uint8_t *buf = NULL;
    uint64_t mask[CHUNK_MASK_WORDS];
    if (posix_memalign((void **)&buf, RESTORE_PAGE, cs) != 0) {
        first_error_set(&s->fe, -ENOMEM, "a chunk buffer: %s", strerror(ENOMEM));
        return NULL;
    }
    for (;;) {
        uint64_t k = atomic_fetch_add(&s->next, 1);
        if (k >= s->m->n_entries || first_error_failed(&s->fe))
            break;
        const struct manifest_entry *e = &s->m->e[k];
        uint64_t off = e->idx * cs;
        uint64_t want = manifest_chunk_len(s->m, e->idx);
        size_t len = 0;
        int r = repo_chunk_read_sparse(s->repo, &e->id, buf, cs, &len, mask);
        if (r == 0 && len > want)
            r = -EBADMSG;
        if (r == 0)
            r = write_chunk_blocks(s->fd, buf, len, off, mask);
        /* The window: this thread's chunks since the last writeback (increasing offsets). */
        if (r == 0 && win_bytes == 0)
            win_off = off;
        win_bytes += data_bytes(len, mask);
        if (r == 0 && win_bytes >= WRITEBACK_WINDOW) {
            uint64_t win_len = off + len - win_off;
            if ((r = fs_writeback_behind(s->fd, wb_off, wb_len, win_off, win_len)) == 0) {
                wb_off = win_off;
                wb_len = win_len;
                win_bytes = 0;
            }
        }
        if (r < 0) {
            char hex[2 * HASH_SIZE + 1];
            chunk_id_to_hex(&e->id, hex);
            first_error_set(&s->fe, r, "chunk %s at offset %" PRIu64 ": %s", hex, off,
                            chunk_error(r));
            break;
        }
        stage_advance(s, want);
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

/* Write the manifest's disk into fd (truncated to its size) with jobs threads, then fsync. */
static int stage_write(struct stage_run *s, unsigned jobs)
{
    if (ftruncate(s->fd, (off_t)s->m->disk_size) < 0) {
        int e = errno == EFBIG ? ENOSPC : errno;
        return first_error_set(&s->fe, -e, "%s", chunk_error(-e));
    }
    /* The chunks without an entry are zeros: already there, as a hole. */
    uint64_t stored = 0;
    for (size_t k = 0; k < s->m->n_entries; k++)
        stored += manifest_chunk_len(s->m, s->m->e[k].idx);
    stage_advance(s, s->m->disk_size - stored);
    struct worker_pool pool;
    if (jobs > s->m->n_entries)
        jobs = s->m->n_entries ? (unsigned)s->m->n_entries : 1;
    int r = worker_pool_start(&pool, jobs, stage_worker, s, 0);
    if (r < 0)
        first_error_set(&s->fe, r, "starting a restore thread: %s", strerror(-r));
    worker_pool_join(&pool);
    if (!first_error_failed(&s->fe) && fsync(s->fd) < 0)
        first_error_set(&s->fe, -errno, "fsync: %s", strerror(errno));
    posix_fadvise(s->fd, 0, 0, POSIX_FADV_DONTNEED); /* the last chunks, clean now */
    return first_error_code(&s->fe);
}

/* Restore one disk of b into a new temporary file next to its destination (mkostemp: 0600,
 * O_EXCL, a random suffix, so nothing at dest or another writer's file is touched); the file
 * is fsynced.  On failure the temporary file is removed and d->tmp is NULL. */
static int stage_disk(const struct restore_options *o, struct staged_disk *d, char *err,
                      size_t errlen)
{
    const struct backup *b = o->backup;
    struct manifest m = {0};
    int r = repo_manifest_read(o->repo, b, d->disk, &m);
    if (r < 0) {
        set_err(err, errlen, "backup %s: disk %s: manifest %s", b->id, d->disk,
                r == -EBADMSG ? "is damaged" : strerror(-r));
        return r;
    }
    if (asprintf(&d->tmp, "%s" RESTORE_TMP_MARK "XXXXXX", d->dest) < 0) {
        d->tmp = NULL;
        manifest_free(&m);
        set_err(err, errlen, "%s: %s", d->dest, strerror(ENOMEM));
        return -ENOMEM;
    }
    int fd = mkostemp(d->tmp, O_CLOEXEC);
    if (fd < 0) {
        r = -errno;
        set_err(err, errlen, "%s: %s", d->dest, strerror(errno));
        free(d->tmp);
        d->tmp = NULL;
        manifest_free(&m);
        return r;
    }
    d->size = m.disk_size;
    struct stage_run s = {.repo = o->repo, .m = &m, .progress = &o->progress, .fd = fd};
    first_error_init(&s.fe, NULL, NULL);
    backup_progress_begin(&o->progress, d->disk, m.disk_size);
    r = stage_write(&s, o->jobs ? o->jobs : 1);
    backup_progress_end(&o->progress, d->disk);
    close(fd);
    if (r < 0) {
        set_err(err, errlen, "backup %s: disk %s: %s", b->id, d->disk, first_error_message(&s.fe));
        unlink(d->tmp);
        free(d->tmp);
        d->tmp = NULL;
    }
    first_error_destroy(&s.fe);
    manifest_free(&m);
    return r;
}

/* ---- signals: staged files do not outlive an interrupted restore ---- */

/* While disks are staged, SIGINT, SIGTERM and SIGHUP remove the staged files (and the
 * directory the restore made) before the process dies of the signal as it would have
 * (core/signals.h); the moves into place run with those signals blocked, so that they complete
 * or are undone.  The handler reads what to remove from here. */
static struct staged_disk *volatile restore_sig_staged;
static volatile size_t restore_sig_n;
static const char *volatile restore_sig_dir; /* made by this restore, or NULL */

static void restore_on_signal(void)
{
    struct staged_disk *s = restore_sig_staged;
    for (size_t i = 0; s && i < restore_sig_n; i++)
        if (s[i].tmp && s[i].placed == STAGED)
            unlink(s[i].tmp);
    if (restore_sig_dir)
        rmdir(restore_sig_dir);
}

static void restore_signals_arm(struct staged_disk *s, size_t n)
{
    restore_sig_n = n;
    restore_sig_staged = s;
    signals_cleanup_arm(restore_on_signal);
}

static void restore_signals_disarm(void)
{
    signals_cleanup_disarm();
    restore_sig_staged = NULL;
    restore_sig_dir = NULL;
}

/* ---- commit: every staged disk into place, all or none ---- */

/* Move every staged disk to its destination, all or none.  A new name is taken with
 * RENAME_NOREPLACE; with force an existing file is swapped with the staged one
 * (RENAME_EXCHANGE), its old content kept under the temporary name until every disk is in
 * place, so that a failure half-way puts every earlier destination back as it was. */
static int restore_commit(struct staged_disk *s, size_t n, bool force, char *err, size_t errlen)
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
        set_err(err, errlen, "%s: %s", s[i].dest,
                e == EEXIST ? "exists (use --force to overwrite it)" : strerror(e));
        break;
    }
    if (i == n) {
        for (size_t k = 0; k < n; k++) {
            if (s[k].placed == PLACED_EXCHANGED)
                unlink(s[k].tmp);       /* the replaced file */
            fs_fsync_parent(s[k].dest); /* best effort: the data is synced */
        }
        return 0;
    }
    /* Undo, newest first: what was new is removed, what was swapped is swapped back (the
     * restored file, at the temporary name again, is removed by the caller). */
    while (i-- > 0) {
        if (s[i].placed == PLACED_REPLACED) {
            add_note(err, errlen, "%s: was replaced (the filesystem cannot swap files back)",
                     s[i].dest);
            continue;
        }
        int r = s[i].placed == PLACED_NEW
                    ? unlink(s[i].dest)
                    : renameat2(AT_FDCWD, s[i].tmp, AT_FDCWD, s[i].dest, RENAME_EXCHANGE);
        if (r < 0)
            add_note(err, errlen, "%s: cannot undo the restore: %s", s[i].dest, strerror(errno));
        else
            s[i].placed = STAGED;
    }
    return -e;
}

/* ---- the whole restore ---- */

/* Backups and disks become file names: no path tricks. */
static bool safe_name(const char *s)
{
    return s && *s && s[0] != '.' && !strchr(s, '/') && strlen(s) <= 255;
}

int restore_find_backup(struct repo *repo, const char *id, const char *disk, unsigned lock_timeout,
                        struct backup **out, char *err, size_t errlen)
{
    *out = NULL;
    char why[256] = "";
    int r = repo_lock(repo, false, lock_timeout, why, sizeof(why));
    if (r < 0) {
        set_err(err, errlen, "%s: %s", repo_path(repo), why[0] ? why : strerror(-r));
        return r;
    }
    struct backup *b = NULL;
    r = repo_backup_get(repo, id, &b);
    if (r < 0) {
        set_err(err, errlen, "backup %s: %s", id,
                r == -ENOENT    ? "not found (see 'vmexport backups')"
                : r == -EBADMSG ? "its metadata is damaged"
                                : strerror(-r));
        repo_unlock(repo);
        return r;
    }
    bool found = !disk;
    for (size_t i = 0; !found && i < b->disks.len; i++)
        found = !strcmp(b->disks.ptr[i].name, disk);
    if (!found) {
        set_err(err, errlen, "backup %s has no disk '%s'", b->id, disk);
        backup_free(b);
        repo_unlock(repo);
        return -ENOENT;
    }
    *out = b;
    return 0;
}

/* A destination for each disk restored into s[] (*n of them); nothing is written yet. */
static int restore_plan(const struct restore_options *o, bool to_dir, struct staged_disk *s,
                        size_t *n, char *err, size_t errlen)
{
    const struct backup *b = o->backup;
    for (size_t i = 0; i < b->disks.len; i++) {
        const char *name = b->disks.ptr[i].name;
        if (o->disk && strcmp(name, o->disk))
            continue;
        struct staged_disk *d = &s[(*n)++];
        d->disk = name;
        if (!to_dir) {
            d->dest = strdup(o->to);
        } else if (!safe_name(name)) {
            set_err(err, errlen, "disk name '%s' cannot be a file name", name);
            return -EINVAL;
        } else if (asprintf(&d->dest, "%s/%s", o->to, name) < 0) {
            d->dest = NULL;
        }
        if (!d->dest) {
            set_err(err, errlen, "%s", strerror(ENOMEM));
            return -ENOMEM;
        }
        /* Refuse before writing anything what the final rename would refuse. */
        struct stat st;
        if (lstat(d->dest, &st) == 0 && (!o->force || S_ISDIR(st.st_mode))) {
            set_err(err, errlen, "%s %s", d->dest,
                    S_ISDIR(st.st_mode) ? "is a directory"
                                        : "exists (use --force to overwrite it)");
            return S_ISDIR(st.st_mode) ? -EISDIR : -EEXIST;
        }
    }
    return 0;
}

int restore_run(const struct restore_options *o, struct restore_result *res)
{
    *res = (struct restore_result){.disks = VECTOR_INIT};
    const struct backup *b = o->backup;
    if (!o->to || o->jobs > RESTORE_MAX_JOBS) {
        set_err(res->err, sizeof(res->err), "no destination, or more than %d jobs",
                RESTORE_MAX_JOBS);
        return -EINVAL;
    }
    struct stat st;
    bool to_dir = (!o->disk && b->disks.len != 1) || (stat(o->to, &st) == 0 && S_ISDIR(st.st_mode));
    bool made_dir = false;
    size_t n = 0;
    struct staged_disk *s = calloc(b->disks.len ? b->disks.len : 1, sizeof(*s));
    if (!s) {
        set_err(res->err, sizeof(res->err), "%s", strerror(ENOMEM));
        return -ENOMEM;
    }
    int r = restore_plan(o, to_dir, s, &n, res->err, sizeof(res->err));
    if (r == 0 && (r = restored_disk_list_reserve(&res->disks, n)) < 0)
        set_err(res->err, sizeof(res->err), "%s", strerror(-r));
    if (r < 0)
        goto out;
    if (o->handle_signals)
        restore_signals_arm(s, n);
    res->started = true;
    if (to_dir) {
        if (mkdir(o->to, RESTORE_DIR_MODE) == 0) {
            made_dir = true;
            if (o->handle_signals)
                restore_sig_dir = o->to;
        } else if (errno != EEXIST) {
            r = -errno;
            set_err(res->err, sizeof(res->err), "%s: %s", o->to, strerror(errno));
            goto out;
        }
    }
    for (size_t i = 0; i < n && r == 0; i++)
        r = stage_disk(o, &s[i], res->err, sizeof(res->err));
    if (r < 0)
        goto out;
    if (o->handle_signals)
        signals_cleanup_block(true);
    r = restore_commit(s, n, o->force, res->err, sizeof(res->err));
    if (o->handle_signals) {
        restore_sig_dir = NULL; /* the disks are in place, or what is left is removed below */
        signals_cleanup_block(false);
    }
    for (size_t i = 0; r == 0 && i < n; i++) /* reserved: cannot fail */
        res->disks.ptr[res->disks.len++] = (struct restored_disk){
            .disk = s[i].disk, .dest = TAKE_PTR(s[i].dest), .size = s[i].size};
out:
    if (o->handle_signals && res->started)
        restore_signals_disarm();
    for (size_t i = 0; i < n; i++) {
        if (s[i].tmp && s[i].placed == STAGED)
            unlink(s[i].tmp);
        free(s[i].tmp);
        free(s[i].dest);
    }
    free(s);
    if (r < 0 && made_dir)
        rmdir(o->to);
    return r;
}

void restore_result_free(struct restore_result *res)
{
    for (size_t i = 0; i < res->disks.len; i++)
        free(res->disks.ptr[i].dest);
    restored_disk_list_reset(&res->disks);
}
