/* The repository's property test, run on the memory store and, when VMEXPORT_TEST_STORE_URL
 * names one (any URL store_open_url() takes: rados://POOL/NS, s3://BUCKET/PREFIX, a directory),
 * on that store, in a fresh namespace or prefix: generations of random workloads on two disks
 * (random writes, zeroed ranges, copied chunks, a partial last chunk), a backup after each
 * through the repository calls of the backup engine, prune and gc at random, and after every
 * generation every remaining backup restored and compared bit for bit and every chunk checked;
 * a flipped byte in a pack found by verify (and no read returning wrong bytes); on a URL
 * store also a backup process killed with SIGKILL mid-way: nothing visible, the next backup
 * reuses what it stored, gc (once its lease ran out) leaves the repository whole.
 * VMEXPORT_SEED repeats a run.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/log.h"
#include "repo/repo.h"
#include "repo/repo_internal.h" /* REPO_PACKS_DIR */
#include "repo/store.h"
#include "repo/store_mem.h"

#define CS         REPO_MIN_CHUNK_SIZE
#define DISKS      2
#define CHUNKS     24
#define DISK_SIZE  ((size_t)CHUNKS * CS - 3000) /* the last chunk partial */
#define GENS       6
#define KEEP_LAST  3
#define MAX_OPS    5
#define MAX_WRITE  (3 * CS)
#define ERR_LEN    512
#define T0         INT64_C(1700000000)
#define GEN_STEP   3600
#define GEN_PREFIX "gen-"
#define URL_ENV    "VMEXPORT_TEST_STORE_URL"
#define LEASE      "3" /* VMEXPORT_LEASE_SECONDS: a killed process's leases run out soon */
#define KILL_GEN   (GENS + 1)
#define LOCK_WAIT  60 /* seconds a backup may wait for a dead process's lease */
#define CHILD_ARG  "--killed-backup"

static const char *const VM = "vm property";
static const char *const DISK_NAMES[DISKS] = {"vda", "vdb"};

/* The disks of every generation (kept to compare restores with). */
static uint8_t images[KILL_GEN + 2][DISKS][DISK_SIZE];
static uint64_t rng;

static uint64_t rnd(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 2685821657736338717ull;
}

static void fill(uint8_t *p, size_t n, bool compressible)
{
    for (size_t i = 0; i < n; i++)
        p[i] = compressible ? (uint8_t)('a' + rnd() % 4) : (uint8_t)rnd();
}

/* New disks for generation gen: random chunks (some compressible), holes between. */
static void workload_from_scratch(unsigned gen)
{
    for (unsigned d = 0; d < DISKS; d++) {
        uint8_t *img = images[gen][d];
        memset(img, 0, DISK_SIZE);
        for (size_t c = 0; c < CHUNKS; c += 1 + rnd() % 3)
            fill(img + c * CS, c == CHUNKS - 1 ? DISK_SIZE - c * CS : CS, rnd() % 2);
    }
}

/* Generation gen's disks from the previous generation's, by a random workload. */
static void workload(unsigned gen)
{
    if (gen == 0) {
        workload_from_scratch(gen);
        return;
    }
    for (unsigned d = 0; d < DISKS; d++) {
        uint8_t *img = images[gen][d];
        memcpy(img, images[gen - 1][d], DISK_SIZE);
        unsigned ops = 1 + rnd() % MAX_OPS;
        for (unsigned k = 0; k < ops; k++) {
            size_t off = rnd() % DISK_SIZE, len = 1 + rnd() % MAX_WRITE;
            if (len > DISK_SIZE - off)
                len = DISK_SIZE - off;
            switch (rnd() % 3) {
            case 0:
                fill(img + off, len, rnd() % 2);
                break;
            case 1:
                memset(img + off, 0, len);
                break;
            default: { /* a chunk copied over another: equal chunks */
                size_t from = rnd() % (CHUNKS - 1), to = rnd() % (CHUNKS - 1);
                memmove(img + to * CS, img + from * CS, CS);
            }
            }
        }
    }
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* Back generation gen up (batches flushed per disk, and after half of the first disk when
 * stop_fd is given: then a byte is written to it and the process waits to be killed). */
static int backup_gen(struct repo *r, unsigned gen, uint64_t *chunks_new, int stop_fd,
                      unsigned lock_wait)
{
    char err[ERR_LEN] = "";
    struct backup_writer *w = NULL;
    struct chunk_batch *batch = NULL;
    struct manifest m[DISKS] = {0};
    int ret = repo_backup_begin(r, VM, T0 + (int64_t)gen * GEN_STEP, lock_wait, &w, err,
                                sizeof(err));
    if (ret < 0)
        return ret;
    ret = repo_chunk_batch_new(r, &batch);
    for (unsigned d = 0; ret == 0 && d < DISKS; d++) {
        ret = manifest_new(&m[d], DISK_NAMES[d], DISK_SIZE, CS);
        for (uint64_t c = 0; ret == 0 && c < CHUNKS; c++) {
            const uint8_t *p = images[gen][d] + c * CS;
            size_t len = c == CHUNKS - 1 ? DISK_SIZE - c * CS : CS;
            if (stop_fd >= 0 && d == 0 && c == CHUNKS / 2) {
                ret = repo_chunk_batch_flush(batch);
                if (ret < 0 || write(stop_fd, "x", 1) != 1)
                    _exit(2);
                pause();
            }
            if (all_zero(p, len))
                continue;
            struct chunk_id id;
            repo_chunk_id(r, p, len, &id);
            ret = manifest_append(&m[d], c, &id);
            if (ret == 0)
                ret = repo_chunk_batch_put(batch, &id, p, len, NULL);
        }
        if (ret == 0)
            ret = repo_chunk_batch_flush(batch);
        if (ret == 0)
            ret = repo_backup_add_disk(w, &m[d]);
    }
    struct backup info = {0};
    char snap[32];
    snprintf(snap, sizeof(snap), GEN_PREFIX "%u", gen);
    info.snapshot_id = snap;
    if (ret == 0)
        ret = repo_backup_commit(w, &info);
    else
        repo_backup_abort(w);
    info.snapshot_id = NULL;
    backup_clear(&info);
    uint64_t existing, bytes;
    repo_chunk_batch_stats(batch, chunks_new, &existing, &bytes);
    repo_chunk_batch_free(batch);
    for (unsigned d = 0; d < DISKS; d++)
        manifest_free(&m[d]);
    return ret;
}

struct verify_result {
    unsigned backups, damaged, wrong;
};

/* On a URL store only the newest backup is checked after each generation (every one at the
 * end): a request there costs milliseconds, not nanoseconds. */
static bool newest_only;

/* Every backup (the newest with newest_only): every chunk checked (repo_chunk_get) and read as
 * a restore does, compared with the generation's disks; zeros where the manifest has no
 * entry. */
static void verify_all(struct repo *r, struct verify_result *v)
{
    static uint8_t buf[CS];
    backup_list l = VECTOR_INIT;
    memset(v, 0, sizeof(*v));
    assert_int_equal(repo_backup_list(r, VM, &l), 0);
    for (size_t k = newest_only && l.len ? l.len - 1 : 0; k < l.len; k++) {
        unsigned gen;
        assert_non_null(l.ptr[k]->snapshot_id);
        assert_int_equal(sscanf(l.ptr[k]->snapshot_id, GEN_PREFIX "%u", &gen), 1);
        v->backups++;
        for (unsigned d = 0; d < DISKS; d++) {
            struct manifest m;
            assert_int_equal(repo_manifest_read(r, l.ptr[k], DISK_NAMES[d], &m), 0);
            for (uint64_t c = 0; c < CHUNKS; c++) {
                const uint8_t *want = images[gen][d] + c * CS;
                size_t len = c == CHUNKS - 1 ? DISK_SIZE - c * CS : CS, got = 0;
                const struct manifest_entry *e = manifest_find(&m, c);
                if (!e) {
                    if (!all_zero(want, len))
                        v->wrong++;
                    continue;
                }
                if (repo_chunk_get(r, &e->id, buf, sizeof(buf), &got) < 0)
                    v->damaged++;
                int ret = repo_chunk_read(r, &e->id, buf, sizeof(buf), &got);
                if (ret == 0 && (got != len || memcmp(buf, want, len)))
                    v->wrong++;
            }
            manifest_free(&m);
        }
    }
    backup_list_free(&l);
}

static unsigned backups_listed(struct repo *r)
{
    backup_list l = VECTOR_INIT;
    assert_int_equal(repo_backup_list(r, VM, &l), 0);
    unsigned n = (unsigned)l.len;
    backup_list_free(&l);
    return n;
}

static void check_whole(struct repo *r, unsigned want_backups)
{
    if (want_backups)
        assert_int_equal(backups_listed(r), want_backups);
    struct verify_result v;
    verify_all(r, &v);
    assert_int_equal(v.wrong, 0);
    assert_int_equal(v.damaged, 0);
    if (want_backups && !newest_only)
        assert_int_equal(v.backups, want_backups);
    if (newest_only && want_backups)
        assert_int_equal(v.backups, 1);
}

/* ---- stores ---- */

struct wipe_ctx {
    struct store *s;
    const char *prefix;
};

static int wipe_entry(void *opaque, const struct store_entry *e);

static void wipe(struct store *s, const char *prefix)
{
    struct wipe_ctx c = {.s = s, .prefix = prefix};
    store_list(s, prefix, wipe_entry, &c);
}

static int wipe_entry(void *opaque, const struct store_entry *e)
{
    struct wipe_ctx *c = opaque;
    char key[PATH_MAX];
    snprintf(key, sizeof(key), "%s%s%s", c->prefix, *c->prefix ? "/" : "", e->name);
    if (e->prefix)
        wipe(c->s, key);
    else
        store_del(c->s, key, NULL);
    return 0;
}

/* A fresh namespace or prefix under the URL store: url with a random suffix. */
static char test_url[PATH_MAX];

static struct store *url_store(bool create)
{
    char err[ERR_LEN] = "";
    struct store *s = NULL;
    int ret = store_open_url(test_url, NULL, create, &s, err, sizeof(err));
    if (ret < 0)
        fail_msg("%s: %s", test_url, err);
    return s;
}

/* A flipped byte in a pack: verify finds it, no read returns wrong bytes; put back, whole. */
static void corruption(struct store *s, struct repo *r)
{
    /* A chunk the newest backup references: where it sits in its pack. */
    struct backup *b = NULL;
    struct manifest m;
    assert_int_equal(repo_backup_latest(r, VM, &b), 0);
    assert_int_equal(repo_manifest_read(r, b, DISK_NAMES[0], &m), 0);
    assert_true(m.n_entries > 0);
    char key[PACK_KEY_LEN];
    uint64_t off;
    uint32_t clen;
    assert_int_equal(pack_index_find(r, &m.e[m.n_entries / 2].id, key, &off, &clen), 0);
    manifest_free(&m);
    backup_free(b);

    uint8_t *data = NULL;
    size_t len;
    assert_int_equal(store_get(s, key, UINT64_MAX, &data, &len), 0);
    uint8_t *bad = malloc(len);
    assert_non_null(bad);
    memcpy(bad, data, len);
    bad[off + clen / 2] ^= 0x20;
    assert_int_equal(store_put(s, key, bad, len, STORE_PUT_REPLACE, NULL), 0);
    struct verify_result v;
    verify_all(r, &v);
    print_message("# flipped byte in %s: %u chunk reads failed, %u wrong\n", key, v.damaged,
                  v.wrong);
    assert_true(v.damaged > 0);
    assert_int_equal(v.wrong, 0);
    assert_int_equal(store_put(s, key, data, len, STORE_PUT_REPLACE, NULL), 0);
    check_whole(r, 0);
    free(bad);
    free(data);
}

static struct repo *open_repo(struct store *s)
{
    char err[ERR_LEN] = "";
    struct repo *r = NULL;
    if (repo_open_store(s, NULL, &r, err, sizeof(err)) < 0)
        fail_msg("open: %s", err);
    return r;
}

/* A backup process killed with SIGKILL after it flushed some chunks: nothing visible; the next
 * backup reuses what it stored; gc, once the dead process's lease ran out, leaves the
 * repository whole. */
static void kill_images(uint64_t seed)
{
    rng = seed;
    workload_from_scratch(KILL_GEN);
}

/* The killed process (the test binary run again: a fresh librados or libcurl). */
static int killed_child(char **argv)
{
    snprintf(test_url, sizeof(test_url), "%s", argv[3]);
    kill_images(strtoull(argv[2], NULL, 0));
    struct store *cs = url_store(false);
    struct repo *cr = open_repo(cs);
    uint64_t made;
    backup_gen(cr, KILL_GEN, &made, atoi(argv[4]), 0);
    return 1; /* not reached: killed */
}

static void killed_backup(struct store *s, struct repo *r, unsigned backups)
{
    int pipefd[2];
    uint64_t seed = rnd() | 1;
    kill_images(seed);
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char seed_s[32], fd_s[16];
        close(pipefd[0]);
        snprintf(seed_s, sizeof(seed_s), "%" PRIu64, seed);
        snprintf(fd_s, sizeof(fd_s), "%d", pipefd[1]);
        execl("/proc/self/exe", "test_repo_property", CHILD_ARG, seed_s, test_url, fd_s,
              (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    char c;
    assert_int_equal(read(pipefd[0], &c, 1), 1);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(pipefd[0]);
    check_whole(r, backups);

    /* The next backup (another process: a fresh handle) waits for the dead process's lease on
     * the VM to run out. */
    uint64_t made = 0;
    struct repo *next = open_repo(s);
    assert_int_equal(backup_gen(next, KILL_GEN, &made, -1, LOCK_WAIT), 0);
    repo_close(next);
    pack_index_drop(r);
    /* The chunks the killed process flushed (the first half of the first disk) are reused. */
    uint64_t total = 0, flushed = 0;
    for (unsigned d = 0; d < DISKS; d++)
        for (uint64_t k = 0; k < CHUNKS; k++) {
            size_t len = k == CHUNKS - 1 ? DISK_SIZE - k * CS : CS;
            bool data = !all_zero(images[KILL_GEN][d] + k * CS, len);
            total += data;
            flushed += data && d == 0 && k < CHUNKS / 2;
        }
    print_message("# after the killed backup: %" PRIu64 " new chunks of %" PRIu64
                  " (%" PRIu64 " stored by the killed process)\n",
                  made, total, flushed);
    assert_true(flushed > 0);
    assert_int_equal(made, total - flushed);
    char err[ERR_LEN] = "";
    struct gc_stats gs;
    /* After the lease; on object stores the dead backup's directory exists only once it held
     * an object (its prefix is virtual): none of it may stay. */
    assert_int_equal(repo_gc(r, false, &gs, err, sizeof(err)), 0);
    assert_true(gs.partial_backups_removed <= 1);
    assert_int_equal(repo_gc(r, true, &gs, err, sizeof(err)), 0);
    assert_int_equal(gs.partial_backups_removed, 0);
    check_whole(r, backups + 1);
}

static void property(struct store *s, bool url)
{
    char err[ERR_LEN] = "";
    struct repo_init_options opt = {.chunk_size = CS};
    assert_int_equal(repo_init_store(s, &opt, err, sizeof(err)), 0);
    struct repo *r = open_repo(s);
    unsigned kept = 0;
    int64_t t0 = store_now_ms();
    newest_only = url;
    for (unsigned gen = 0; gen < GENS; gen++) {
        workload(gen);
        uint64_t made = 0;
        assert_int_equal(backup_gen(r, gen, &made, -1, 0), 0);
        kept++;
        if (rnd() % 2) {
            struct prune_policy p = {.keep_last = KEEP_LAST};
            assert_int_equal(repo_prune(r, VM, &p, 0, false, NULL, err, sizeof(err)), 0);
            kept = kept > KEEP_LAST ? KEEP_LAST : kept;
        }
        if (rnd() % 2) {
            struct gc_stats gs;
            assert_int_equal(repo_gc(r, false, &gs, err, sizeof(err)), 0);
        }
        /* A fresh handle (another process): the index loaded anew. */
        repo_close(r);
        r = open_repo(s);
        check_whole(r, kept);
        print_message("# generation %u done at %.1f s\n", gen,
                      (double)(store_now_ms() - t0) / 1000);
    }
    struct gc_stats gs0;
    assert_int_equal(repo_gc(r, false, &gs0, err, sizeof(err)), 0);
    corruption(s, r);
    if (url)
        killed_backup(s, r, kept);
    print_message("# corruption and kill done at %.1f s\n", (double)(store_now_ms() - t0) / 1000);
    struct gc_stats gs;
    assert_int_equal(repo_gc(r, false, &gs, err, sizeof(err)), 0);
    assert_int_equal(repo_gc(r, true, &gs, err, sizeof(err)), 0);
    assert_int_equal(gs.chunks_deleted, 0);
    newest_only = false;
    check_whole(r, 0);
    repo_close(r);
}

static void seed_rng(void)
{
    const char *e = getenv("VMEXPORT_SEED");
    rng = e && *e ? strtoull(e, NULL, 0) : (uint64_t)time(NULL) * 2654435761u + (uint64_t)getpid();
    if (!rng)
        rng = 1;
    print_message("# seed %" PRIu64 " (VMEXPORT_SEED repeats it)\n", rng);
}

static void test_property_mem(void **state)
{
    (void)state;
    struct store *s = NULL;
    seed_rng();
    assert_int_equal(store_mem_new("property", &s), 0);
    property(s, false);
    store_close(s);
}

static void test_property_url(void **state)
{
    (void)state;
    const char *url = getenv(URL_ENV);
    if (!url || !*url) {
        print_message("# %s not set: the property test on a URL store is skipped\n", URL_ENV);
        skip();
    }
    seed_rng();
    char suffix[17];
    assert_int_equal(repo_random_hex(suffix, 8), 0);
    snprintf(test_url, sizeof(test_url), "%s%s%s", url, url[strlen(url) - 1] == '/' ? "" : "-",
             suffix);
    print_message("# on %s\n", test_url);
    char cache[PATH_MAX];
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(cache, sizeof(cache), "%s/vmexport-property-cache-XXXXXX", tmp);
    assert_non_null(mkdtemp(cache));
    setenv("VMEXPORT_CACHE_DIR", cache, 1);
    struct store *s = url_store(true);
    property(s, true);
    wipe(s, "");
    store_close(s);
    CLEANUP_FREE char *rm = NULL;
    assert_true(asprintf(&rm, "rm -rf '%s'", cache) > 0);
    assert_int_equal(system(rm), 0);
    unsetenv("VMEXPORT_CACHE_DIR");
}

int main(int argc, char **argv)
{
    log_set_level(LOG_LEVEL_ERROR); /* damaged chunks are expected in the corruption step */
    setenv(REPO_LEASE_ENV, LEASE, 1);
    if (argc == 5 && !strcmp(argv[1], CHILD_ARG))
        return killed_child(argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_property_mem),
        cmocka_unit_test(test_property_url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
