/* Unit tests of what the repository does for stores that are not local (S3, RADOS), run on the
 * memory store, which behaves like them (leases that expire, a request per call):
 *   - leases: a backup writer's and gc's leases are renewed by a thread, so a run longer than a
 *     lease keeps its locks (VMEXPORT_LEASE_SECONDS shortens it); one stalled past its lease
 *     loses them: the backup fails at its manifest or commit and leaves nothing visible, gc
 *     stops before deleting anything;
 *   - the local index cache (format 3): a second backup of the same data asks the store nothing
 *     about its chunks (one listing of index/), damaged, swapped or planted cache files are
 *     dropped and fetched again, never trusted, cached objects gc merged away are removed;
 *     files 0600 in 0700 directories.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/log.h"
#include "repo/repo.h"
#include "repo/repo_internal.h" /* lock_check, REPO_INDEX_DIR */
#include "repo/store_mem.h"

#define CS          REPO_MIN_CHUNK_SIZE
#define ERR_LEN     512
#define NCHUNKS     64 /* chunks of a test backup */
#define FLUSH_EVERY 16 /* chunks per batch flush: one index object each */
#define LEASE       "3" /* seconds: VMEXPORT_LEASE_SECONDS of the lease tests */
#define LEASE_S     3
#define NFTW_FDS    16
#define NAP_MS      100
#define WAIT_MS     15000 /* at most, for the keeper to notice a lost lease */
#define NS_PER_MS   1000000L
#define MS_PER_SEC  1000
#define T0          INT64_C(1700000000)

static void nap_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / MS_PER_SEC, .tv_nsec = (ms % MS_PER_SEC) * NS_PER_MS};
    nanosleep(&ts, NULL);
}

static void chunk_fill(uint8_t *buf, unsigned seed, uint64_t i)
{
    uint64_t x = 0x9e3779b97f4a7c15ULL * (1 + seed * 1000003ULL + i);
    for (size_t k = 0; k < CS; k++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[k] = (uint8_t)(x >> 32);
    }
}

/* Store n chunks of seed as the disk of m through a batch (a flush every FLUSH_EVERY). */
static int chunks_store(struct repo *r, struct manifest *m, unsigned seed, size_t n,
                        uint64_t *chunks_new)
{
    static uint8_t buf[CS];
    struct chunk_batch *b = NULL;
    int ret = repo_chunk_batch_new(r, &b);
    for (size_t i = 0; ret == 0 && i < n; i++) {
        struct chunk_id id;
        chunk_fill(buf, seed, i);
        repo_chunk_id(r, buf, CS, &id);
        ret = manifest_append(m, i, &id);
        if (ret == 0)
            ret = repo_chunk_batch_put(b, &id, buf, CS, NULL);
        if (ret == 0 && (i + 1) % FLUSH_EVERY == 0)
            ret = repo_chunk_batch_flush(b);
    }
    if (ret == 0)
        ret = repo_chunk_batch_flush(b);
    uint64_t existing, bytes;
    if (chunks_new)
        repo_chunk_batch_stats(b, chunks_new, &existing, &bytes);
    repo_chunk_batch_free(b);
    return ret;
}

/* A whole backup of n chunks of seed: 0 or the first error (the writer aborted). */
static int backup_make(struct repo *r, int64_t t, unsigned seed, size_t n, uint64_t *chunks_new)
{
    char err[ERR_LEN] = "";
    struct backup_writer *w = NULL;
    struct manifest m;
    struct backup info = {0};
    int ret = repo_backup_begin(r, "vm", t, 0, &w, err, sizeof(err));
    if (ret < 0)
        return ret;
    ret = manifest_new(&m, "sda", (uint64_t)n * CS, CS);
    if (ret == 0)
        ret = chunks_store(r, &m, seed, n, chunks_new);
    if (ret == 0)
        ret = repo_backup_add_disk(w, &m);
    if (ret == 0)
        ret = repo_backup_commit(w, &info);
    if (ret < 0)
        repo_backup_abort(w);
    manifest_free(&m);
    backup_clear(&info);
    return ret;
}

/* The newest backup restores to the n chunks of seed, bit for bit. */
static void check_restores(struct repo *r, unsigned seed, size_t n)
{
    static uint8_t want[CS], got[CS];
    struct backup *b = NULL;
    struct manifest m;
    assert_int_equal(repo_backup_latest(r, "vm", &b), 0);
    assert_int_equal(repo_manifest_read(r, b, "sda", &m), 0);
    assert_int_equal(manifest_chunks(&m), n);
    for (uint64_t i = 0; i < n; i++) {
        const struct manifest_entry *e = manifest_find(&m, i);
        size_t len = 0;
        assert_non_null(e);
        chunk_fill(want, seed, i);
        assert_int_equal(repo_chunk_read(r, &e->id, got, sizeof(got), &len), 0);
        assert_int_equal(len, CS);
        assert_memory_equal(got, want, CS);
    }
    manifest_free(&m);
    backup_free(b);
}

static struct repo *open_repo(struct store *s)
{
    char err[ERR_LEN] = "";
    struct repo *r = NULL;
    if (repo_open_store(s, NULL, &r, err, sizeof(err)) < 0)
        fail_msg("open: %s", err);
    return r;
}

static struct store *store_new_repo(void)
{
    char err[ERR_LEN] = "";
    struct store *s = NULL;
    struct repo_init_options opt = {.chunk_size = CS};
    assert_int_equal(store_mem_new("objstore", &s), 0);
    assert_int_equal(repo_init_store(s, &opt, err, sizeof(err)), 0);
    return s;
}

static size_t backup_count(struct repo *r)
{
    backup_list l = VECTOR_INIT;
    assert_int_equal(repo_backup_list(r, NULL, &l), 0);
    size_t n = l.len;
    backup_list_free(&l);
    return n;
}

/* ---- leases ---- */

/* Alive longer than its lease: the keeper renews, gc cannot take the lock, the backup commits.
 * Stalled past it (the store's clock moved on): gc takes the lock and removes the partial
 * backup, and the writer fails at its manifest with -ETIMEDOUT, leaving nothing visible. */
static void test_writer_lease(void **state)
{
    (void)state;
    char err[ERR_LEN] = "";
    struct store *s = store_new_repo();
    struct repo *r = open_repo(s), *other = open_repo(s);
    struct backup_writer *w = NULL;
    struct manifest m;
    struct backup info = {0};

    assert_int_equal(backup_make(r, T0, 1, 4, NULL), 0);

    assert_int_equal(repo_backup_begin(r, "vm", T0 + 60, 0, &w, err, sizeof(err)), 0);
    assert_int_equal(manifest_new(&m, "sda", 4 * CS, CS), 0);
    assert_int_equal(chunks_store(r, &m, 2, 4, NULL), 0);
    nap_ms(LEASE_S * MS_PER_SEC * 3 / 2); /* one and a half leases */
    assert_int_equal(repo_lock(other, true, 0, err, sizeof(err)), -EBUSY);
    assert_int_equal(repo_backup_add_disk(w, &m), 0);
    assert_int_equal(repo_backup_commit(w, &info), 0);
    backup_clear(&info);
    assert_int_equal(backup_count(other), 2);
    check_restores(other, 2, 4);

    /* Stalled: the store sees the leases expire; gc gets the lock meanwhile. */
    assert_int_equal(repo_backup_begin(r, "vm", T0 + 120, 0, &w, err, sizeof(err)), 0);
    manifest_free(&m);
    assert_int_equal(manifest_new(&m, "sda", 4 * CS, CS), 0);
    assert_int_equal(chunks_store(r, &m, 3, 4, NULL), 0);
    store_mem_advance(s, LEASE_S + 1);
    struct gc_stats gs;
    assert_int_equal(repo_gc(other, false, &gs, err, sizeof(err)), 0);
    assert_int_equal(gs.partial_backups_removed, 1);
    assert_int_equal(repo_backup_add_disk(w, &m), -ETIMEDOUT);
    repo_backup_abort(w);
    assert_int_equal(backup_count(other), 2);
    check_restores(other, 2, 4);
    pack_index_drop(other);
    assert_int_equal(repo_gc(other, true, &gs, err, sizeof(err)), 0);
    assert_int_equal(gs.chunks_deleted, 0);

    manifest_free(&m);
    repo_close(other);
    repo_close(r);
    store_close(s);
}

/* gc's exclusive lease: renewed while held longer than a lease (others stay out); once lost,
 * gc deletes nothing and says why. */
static void test_gc_lease(void **state)
{
    (void)state;
    char err[ERR_LEN] = "";
    struct store *s = store_new_repo();
    struct repo *r = open_repo(s), *other = open_repo(s);
    struct backup_writer *w = NULL;

    assert_int_equal(backup_make(r, T0, 1, 4, NULL), 0);
    /* A partial backup for gc to remove. */
    assert_int_equal(repo_backup_begin(other, "vm", T0 + 60, 0, &w, err, sizeof(err)), 0);
    repo_backup_abandon(w);

    assert_int_equal(repo_lock(r, true, 0, err, sizeof(err)), 0);
    nap_ms(LEASE_S * MS_PER_SEC * 3 / 2);
    assert_int_equal(repo_lock(other, false, 0, err, sizeof(err)), -EBUSY);
    assert_int_equal(lock_check(r), 0);

    store_mem_advance(s, LEASE_S + 1);
    assert_int_equal(repo_lock(other, false, 0, err, sizeof(err)), 0); /* it expired */
    int64_t until = store_now_ms() + WAIT_MS;
    while (lock_check(r) == 0 && store_now_ms() < until)
        nap_ms(NAP_MS);
    assert_int_equal(lock_check(r), -ETIMEDOUT);
    struct gc_stats gs;
    err[0] = '\0';
    assert_int_equal(repo_gc(r, false, &gs, err, sizeof(err)), -ETIMEDOUT);
    assert_non_null(strstr(err, "lease was lost"));
    assert_int_equal(gs.partial_backups_removed, 1); /* counted, then stopped before deleting */
    repo_unlock(other);
    repo_unlock(r);
    assert_int_equal(repo_gc(other, true, &gs, err, sizeof(err)), 0);
    assert_int_equal(gs.partial_backups_removed, 1); /* still there */
    check_restores(other, 1, 4);

    repo_close(other);
    repo_close(r);
    store_close(s);
}

/* ---- the index cache ---- */

static char cache_root[PATH_MAX];

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int cache_setup(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(cache_root, sizeof(cache_root), "%s/vmexport-cache-XXXXXX", tmp);
    assert_non_null(mkdtemp(cache_root));
    setenv("VMEXPORT_CACHE_DIR", cache_root, 1);
    return 0;
}

static int cache_teardown(void **state)
{
    (void)state;
    unsetenv("VMEXPORT_CACHE_DIR");
    nftw(cache_root, rm_entry, NFTW_FDS, FTW_DEPTH | FTW_PHYS);
    return 0;
}

struct names {
    char n[16][NAME_MAX + 1];
    size_t len;
};

static int name_entry(void *opaque, const struct store_entry *e)
{
    struct names *ns = opaque;
    if (!e->prefix && ns->len < 16)
        snprintf(ns->n[ns->len++], sizeof(ns->n[0]), "%s", e->name);
    return 0;
}

static void index_names(struct store *s, struct names *ns)
{
    ns->len = 0;
    assert_int_equal(store_list(s, REPO_INDEX_DIR, name_entry, ns), 0);
}

static void cache_path(struct repo *r, const char *name, char *out, size_t size)
{
    assert_true((size_t)snprintf(out, size, "%s/%s/%s%s%s", cache_root, repo_id(r),
                                 REPO_INDEX_DIR, *name ? "/" : "", name) < size);
}

static uint8_t *file_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static uint8_t buf[1 << 20];
    *len = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    uint8_t *copy = malloc(*len ? *len : 1);
    assert_non_null(copy);
    memcpy(copy, buf, *len);
    return copy;
}

static void file_write(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* The cache holds exactly the store's index objects, byte for byte, 0600 in 0700 dirs. */
static void check_cache_mirrors(struct store *s, struct repo *r)
{
    struct names ns;
    char path[PATH_MAX + 64];
    struct stat st;
    index_names(s, &ns);
    cache_path(r, "", path, sizeof(path));
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    size_t files = 0;
    CLEANUP_FREE char *cmd = NULL;
    for (size_t i = 0; i < ns.len; i++) {
        cache_path(r, ns.n[i], path, sizeof(path));
        assert_int_equal(lstat(path, &st), 0);
        assert_true(S_ISREG(st.st_mode));
        assert_int_equal(st.st_mode & 0777, 0600);
        size_t flen, slen;
        CLEANUP_FREE uint8_t *f = file_read(path, &flen);
        CLEANUP_FREE uint8_t *o = NULL;
        char key[PATH_MAX];
        snprintf(key, sizeof(key), REPO_INDEX_DIR "/%s", ns.n[i]);
        assert_int_equal(store_get(s, key, UINT64_MAX, &o, &slen), 0);
        assert_int_equal(flen, slen);
        assert_memory_equal(f, o, slen);
        files++;
    }
    /* Nothing else in the directory. */
    cache_path(r, "", path, sizeof(path));
    assert_true(asprintf(&cmd, "test $(ls -A '%s' | wc -l) -eq %zu", path, files) > 0);
    assert_int_equal(system(cmd), 0);
}

static void test_cache_requests(void **state)
{
    (void)state;
    struct store *s = store_new_repo();
    struct repo *r = open_repo(s);
    uint64_t made = 0;
    assert_int_equal(backup_make(r, T0, 7, NCHUNKS, &made), 0);
    assert_int_equal(made, NCHUNKS);
    struct names ns;
    index_names(s, &ns);
    assert_int_equal(ns.len, NCHUNKS / FLUSH_EVERY);
    check_cache_mirrors(s, r); /* written as they were made */
    repo_close(r);

    /* A new process backs the same data up: the index comes from the cache. */
    r = open_repo(s);
    store_mem_requests_reset(s);
    made = 1;
    assert_int_equal(backup_make(r, T0 + 60, 7, NCHUNKS, &made), 0);
    assert_int_equal(made, 0);
    uint64_t index_reqs = store_mem_requests(s, REPO_INDEX_DIR);
    uint64_t total = store_mem_requests(s, NULL);
    print_message("# second backup of %d chunks: %llu requests, %llu on index/\n", NCHUNKS,
                  (unsigned long long)total, (unsigned long long)index_reqs);
    assert_int_equal(index_reqs, 1); /* one listing */
    assert_int_equal(store_mem_requests(s, REPO_PACKS_DIR), 0);
    assert_true(total < NCHUNKS / 2);
    check_restores(r, 7, NCHUNKS);
    repo_close(r);

    /* Without the cache every index object is read from the store. */
    r = open_repo(s);
    repo_set_index_cache(r, false);
    store_mem_requests_reset(s);
    assert_int_equal(backup_make(r, T0 + 120, 7, NCHUNKS, NULL), 0);
    assert_true(store_mem_requests(s, REPO_INDEX_DIR) > ns.len);
    repo_close(r);
    store_close(s);
}

static void test_cache_untrusted(void **state)
{
    (void)state;
    struct store *s = store_new_repo();
    struct repo *r = open_repo(s);
    char err[ERR_LEN] = "";
    char a[PATH_MAX + 64], b[PATH_MAX + 64], planted[PATH_MAX + 64];
    assert_int_equal(backup_make(r, T0, 5, NCHUNKS, NULL), 0);
    struct names ns;
    index_names(s, &ns);
    assert_true(ns.len >= 3);

    /* A flipped byte in one copy, another copy replaced by a third one's bytes (valid, but
     * bound to another name), a planted object the store does not list. */
    cache_path(r, ns.n[0], a, sizeof(a));
    cache_path(r, ns.n[1], b, sizeof(b));
    size_t len;
    CLEANUP_FREE uint8_t *bytes = file_read(a, &len);
    bytes[len / 2] ^= 0x40;
    file_write(a, bytes, len);
    free(bytes);
    bytes = file_read(b, &len);
    cache_path(r, ns.n[2], b, sizeof(b));
    file_write(b, bytes, len);
    cache_path(r, "", planted, sizeof(planted));
    strncat(planted, "/0000000000000000000000000000000000000000000000000000000000000000",
            sizeof(planted) - strlen(planted) - 1);
    file_write(planted, bytes, len);
    repo_close(r);

    r = open_repo(s);
    store_mem_requests_reset(s);
    assert_int_equal(backup_make(r, T0 + 60, 5, NCHUNKS, NULL), 0);
    /* The listing, then the two damaged objects fetched again. */
    assert_int_equal(store_mem_requests(s, REPO_INDEX_DIR), 3);
    assert_int_equal(store_mem_requests(s, REPO_PACKS_DIR), 0);
    check_restores(r, 5, NCHUNKS);
    check_cache_mirrors(s, r);
    assert_int_equal(access(planted, F_OK), -1);

    /* A symbolic link where a copy should be: replaced, not followed. */
    cache_path(r, ns.n[0], a, sizeof(a));
    assert_int_equal(unlink(a), 0);
    assert_int_equal(symlink(planted, a), 0);
    repo_close(r);
    r = open_repo(s);
    assert_int_equal(backup_make(r, T0 + 120, 5, NCHUNKS, NULL), 0);
    check_cache_mirrors(s, r);

    /* gc merges the index objects: the copies of the old ones go at the next load. */
    struct gc_stats gs;
    backup_list l = VECTOR_INIT;
    assert_int_equal(repo_backup_list(r, NULL, &l), 0);
    assert_int_equal(repo_backup_delete(r, l.ptr[0]->id), 0);
    backup_list_free(&l);
    assert_int_equal(repo_gc(r, false, &gs, err, sizeof(err)), 0);
    index_names(s, &ns);
    assert_int_equal(ns.len, 1);
    repo_close(r);
    r = open_repo(s);
    check_restores(r, 5, NCHUNKS);
    check_cache_mirrors(s, r);
    repo_close(r);
    store_close(s);
}

int main(void)
{
    log_set_level(LOG_LEVEL_ERROR); /* the damaged copies' warnings are expected */
    setenv(REPO_LEASE_ENV, LEASE, 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writer_lease),
        cmocka_unit_test(test_gc_lease),
        cmocka_unit_test_setup_teardown(test_cache_requests, cache_setup, cache_teardown),
        cmocka_unit_test_setup_teardown(test_cache_untrusted, cache_setup, cache_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
