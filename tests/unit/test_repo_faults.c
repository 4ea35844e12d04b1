/* Fault injection into the repository on the memory store (store_mem.h): a small run (an
 * incremental backup of two disks made through the same repo calls as the backup engine, then
 * prune, gc and a verify that restores every backup) with one fault injected at its Nth store
 * call, for N = 1, 2, ... until the fault no longer fires, for every kind of fault: failed puts,
 * gets, commits and deletes, a torn put, a full store, a crash.  After each faulty run (and a
 * restart and lease expiry when it crashed):
 *   - every visible backup restores to exactly the bytes it was made from, and every chunk it
 *     references exists and decodes: no referenced chunk was ever deleted;
 *   - no read during the faulty run returned wrong data;
 *   - the next run without faults succeeds, and its gc leaves no temporary object and no
 *     backup directory without backup.json behind.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cleanup.h"
#include "core/log.h"
#include "repo/chunkset.h"
#include "repo/repo.h"
#include "repo/repo_internal.h" /* REPO_LEASE_SECONDS, REPO_TMP_MARK */
#include "repo/store_mem.h"

#define CS         REPO_MIN_CHUNK_SIZE
#define DISKS      2
#define CHUNKS     6 /* per disk; the last one partial */
#define DISK_SIZE  (CHUNKS * CS - 1000)
#define ZERO_CHUNK 3                   /* always all zeros: a zero manifest entry */
#define T0         INT64_C(1700000000) /* time of generation 0 */
#define GEN_STEP   3600                /* seconds between generations */
#define KEEP_LAST  2                   /* the prune policy of every run */
#define MAX_STEPS  2000                /* a run has far fewer store calls of one kind */
#define ERR_LEN    512
#define GEN_PREFIX "gen-"

static const char *const VM = "vm one";
static const char *const DISK_NAMES[DISKS] = {"sda", "sdb"};

/* ---- the data of each generation ---- */

/* Which version of chunk i a generation holds: even chunks change in every generation, odd
 * ones never (so incrementals both reuse and replace chunks). */
static unsigned chunk_version(unsigned gen, uint64_t i)
{
    return i % 2 ? 0 : gen;
}

static size_t chunk_len(uint64_t i)
{
    uint64_t off = i * CS;
    return DISK_SIZE - off < CS ? (size_t)(DISK_SIZE - off) : CS;
}

/* The content of chunk i of disk d in generation gen (zeros for ZERO_CHUNK). */
static void chunk_data(unsigned gen, unsigned d, uint64_t i, uint8_t *buf)
{
    size_t len = chunk_len(i);
    if (i == ZERO_CHUNK) {
        memset(buf, 0, len);
        return;
    }
    uint64_t x = 0x9e3779b97f4a7c15ULL * (1 + d * 131 + i * 7919 + chunk_version(gen, i) * 104729);
    for (size_t k = 0; k < len; k++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[k] = (uint8_t)(x >> 24) & 0x3f; /* compressible, like real disks */
    }
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

static int gen_of(const struct backup *b, unsigned *gen)
{
    return b->snapshot_id && sscanf(b->snapshot_id, GEN_PREFIX "%u", gen) == 1 ? 0 : -EBADMSG;
}

/* ---- the run: the repo calls of the backup engine (src/cli/cmd_repo.c), prune, gc, verify */

struct run_stats {
    unsigned wrong_reads; /* reads that returned 0 with other bytes than were written */
};

/* An incremental backup of generation gen: unchanged chunks keep the previous manifest's IDs,
 * changed ones are read from the previous backup as the base (the engine patches changed
 * ranges onto it; a missing or damaged base makes it read the whole chunk again), then stored
 * through a chunk batch flushed at the end of each disk; manifests; backup.json last. */
static int backup_run(struct repo *r, unsigned gen, struct run_stats *rs)
{
    char err[ERR_LEN] = "";
    struct backup_writer *w = NULL;
    struct chunk_batch *batch = NULL;
    struct backup *prev = NULL;
    unsigned prev_gen = 0;
    struct manifest mans[DISKS] = {0}, prevm[DISKS] = {0};
    bool have_prev[DISKS] = {false};
    static uint8_t buf[CS], base[CS];

    int ret = repo_backup_begin(r, VM, T0 + (int64_t)gen * GEN_STEP, 0, &w, err, sizeof(err));
    if (ret < 0)
        return ret;
    if (repo_backup_latest(r, VM, &prev) < 0 || gen_of(prev, &prev_gen) < 0) {
        backup_free(prev);
        prev = NULL;
    }
    ret = repo_chunk_batch_new(r, &batch);
    for (unsigned d = 0; ret == 0 && d < DISKS; d++) {
        ret = manifest_new(&mans[d], DISK_NAMES[d], DISK_SIZE, CS);
        if (ret < 0)
            break;
        if (prev && repo_manifest_read(r, prev, DISK_NAMES[d], &prevm[d]) == 0)
            have_prev[d] = true;
        for (uint64_t i = 0; ret == 0 && i < manifest_chunks(&mans[d]); i++) {
            size_t len = chunk_len(i);
            chunk_data(gen, d, i, buf);
            bool unchanged = have_prev[d] && chunk_version(gen, i) == chunk_version(prev_gen, i);
            const struct manifest_entry *pe = have_prev[d] ? manifest_find(&prevm[d], i) : NULL;
            if (unchanged) {
                if (pe)
                    ret = manifest_append(&mans[d], i, &pe->id);
                continue;
            }
            if (pe) {
                size_t got = 0;
                int br = repo_chunk_read(r, &pe->id, base, sizeof(base), &got);
                uint8_t *want = malloc(CS);
                assert_non_null(want);
                chunk_data(prev_gen, d, i, want);
                if (br == 0 && (got != len || memcmp(base, want, len)))
                    rs->wrong_reads++;
                free(want);
            }
            if (all_zero(buf, len))
                continue;
            struct chunk_id id;
            repo_chunk_id(r, buf, len, &id);
            ret = manifest_append(&mans[d], i, &id);
            if (ret == 0)
                ret = repo_chunk_batch_put(batch, &id, buf, len, NULL);
        }
        if (ret == 0)
            ret = repo_chunk_batch_flush(batch);
        if (ret == 0)
            ret = repo_backup_add_disk(w, &mans[d]);
    }
    struct backup info = {0};
    char snap[32];
    snprintf(snap, sizeof(snap), GEN_PREFIX "%u", gen);
    info.snapshot_id = snap;
    if (ret == 0)
        ret = repo_backup_commit(w, &info);
    if (ret < 0)
        repo_backup_abort(w);
    info.snapshot_id = NULL;
    free(info.id);
    free(info.vm_id);
    for (size_t i = 0; i < info.disks.len; i++) {
        free(info.disks.ptr[i].name);
        free(info.disks.ptr[i].change_id);
        free(info.disks.ptr[i].manifest);
    }
    backup_disk_list_reset(&info.disks);
    repo_chunk_batch_free(batch);
    for (unsigned d = 0; d < DISKS; d++) {
        manifest_free(&mans[d]);
        manifest_free(&prevm[d]);
    }
    backup_free(prev);
    return ret;
}

/* Verify as the verify command does: under the shared lock, every backup, every disk: every
 * referenced chunk read, checked (chunk set: each once) and compared with the bytes it was
 * made from.  strict: any failure fails the test; else failures are allowed (faults) but a
 * read that succeeds must return the right bytes. */
static int verify_run(struct repo *r, bool strict, struct run_stats *rs)
{
    char err[ERR_LEN] = "";
    backup_list l = VECTOR_INIT;
    struct chunk_set seen = CHUNK_SET_INIT;
    static uint8_t buf[CS], want[CS];

    int ret = repo_lock(r, false, 0, err, sizeof(err));
    if (ret < 0)
        return ret;
    ret = repo_backup_list(r, NULL, &l);
    for (size_t k = 0; ret == 0 && k < l.len; k++) {
        struct backup *b = l.ptr[k];
        unsigned gen = 0;
        ret = gen_of(b, &gen);
        if (strict)
            assert_int_equal(ret, 0);
        for (size_t d = 0; ret == 0 && d < b->disks.len; d++) {
            struct manifest m;
            ret = repo_manifest_read(r, b, b->disks.ptr[d].name, &m);
            if (strict)
                assert_int_equal(ret, 0);
            for (uint64_t i = 0; ret == 0 && i < manifest_chunks(&m); i++) {
                size_t len = chunk_len(i), got = 0;
                chunk_data(gen, (unsigned)d, i, want);
                const struct manifest_entry *me = manifest_find(&m, i);
                if (!me) {
                    assert_true(all_zero(want, len));
                    continue;
                }
                int8_t st = chunk_set_get(&seen, &me->id);
                if (st == CHUNK_STATE_UNKNOWN) {
                    int g = repo_chunk_get(r, &me->id, buf, sizeof(buf), &got);
                    st = g == 0 ? CHUNK_STATE_OK : CHUNK_STATE_BAD;
                    if (strict && g < 0)
                        fail_msg("backup %s disk %zu chunk %" PRIu64 ": %s", b->id, d, i,
                                 strerror(-g));
                    if (g == 0 && chunk_set_put(&seen, &me->id, st) < 0)
                        ret = -ENOMEM;
                    if (g < 0)
                        ret = g;
                }
                /* Restore: the data path read, compared byte for byte. */
                if (ret == 0) {
                    int g = repo_chunk_read(r, &me->id, buf, sizeof(buf), &got);
                    if (strict)
                        assert_int_equal(g, 0);
                    if (g == 0 && (got != len || memcmp(buf, want, len)))
                        rs->wrong_reads++;
                    if (g < 0)
                        ret = g;
                }
            }
            manifest_free(&m);
        }
    }
    backup_list_free(&l);
    chunk_set_free(&seen);
    repo_unlock(r);
    return ret;
}

/* One run: backup of gen, prune, gc, verify; stops at the first failure, as a process whose
 * command failed would before the next command. */
static int full_run(struct repo *r, unsigned gen, bool strict, struct run_stats *rs)
{
    char err[ERR_LEN] = "";
    struct prune_policy p = {.keep_last = KEEP_LAST};
    struct gc_stats gs;
    int ret = backup_run(r, gen, rs);
    if (strict && ret < 0)
        fail_msg("backup of generation %u: %s", gen, strerror(-ret));
    if (ret == 0)
        ret = repo_prune(r, NULL, &p, 0, false, NULL, err, sizeof(err));
    if (strict && ret < 0)
        fail_msg("prune: %s", err);
    if (ret == 0)
        ret = repo_gc(r, false, &gs, err, sizeof(err));
    if (strict && ret < 0)
        fail_msg("gc: %s", err);
    if (ret == 0)
        ret = verify_run(r, strict, rs);
    return ret;
}

/* ---- checks ---- */

struct leftovers {
    struct store *s;
    const char *prefix;
    unsigned tmp, partial;
};

static int leftover_entry(void *opaque, const struct store_entry *e);

static void leftovers_walk(struct leftovers *lo, const char *prefix)
{
    struct leftovers sub = {.s = lo->s, .prefix = prefix};
    int ret = store_list(lo->s, prefix, leftover_entry, &sub);
    assert_true(ret == 0 || ret == -ENOENT);
    lo->tmp += sub.tmp;
    lo->partial += sub.partial;
}

static int leftover_entry(void *opaque, const struct store_entry *e)
{
    struct leftovers *lo = opaque;
    char key[PATH_MAX];
    snprintf(key, sizeof(key), "%s%s%s", lo->prefix, *lo->prefix ? "/" : "", e->name);
    if (strstr(e->name, REPO_TMP_MARK))
        lo->tmp++;
    if (!e->prefix)
        return 0;
    /* backups/<vm>/<id>: a backup directory must hold backup.json. */
    if (!strncmp(key, "backups/", 8) && strchr(key + 8, '/') &&
        !strchr(strchr(key + 8, '/') + 1, '/')) {
        char json[PATH_MAX + 16];
        snprintf(json, sizeof(json), "%s/backup.json", key);
        if (store_exists(lo->s, json, NULL) < 0)
            lo->partial++;
    }
    leftovers_walk(lo, key);
    return 0;
}

/* Every visible backup restores and every chunk it references decodes. */
static void check_restorable(struct repo *r, const char *when)
{
    struct run_stats rs = {0};
    int ret = verify_run(r, true, &rs);
    if (ret < 0)
        fail_msg("%s: verify: %s", when, strerror(-ret));
    assert_int_equal(rs.wrong_reads, 0);
}

static struct repo *open_repo(struct store *s)
{
    char err[ERR_LEN] = "";
    struct repo *r = NULL;
    if (repo_open_store(s, NULL, &r, err, sizeof(err)) < 0)
        fail_msg("open: %s", err);
    return r;
}

/* The scenario with fault f at its nth call: false when the fault did not fire (the run has
 * fewer such calls). */
static bool scenario(unsigned format, enum store_fault f, unsigned n)
{
    char err[ERR_LEN] = "";
    struct store *s = NULL;
    struct repo_init_options opt = {.chunk_size = CS, .format_version = format};
    struct run_stats rs = {0};
    char when[64];

    assert_int_equal(store_mem_new("faults", &s), 0);
    assert_int_equal(repo_init_store(s, &opt, err, sizeof(err)), 0);
    struct repo *r = open_repo(s);
    /* Two generations before: the faulty run's backup is an incremental, its prune deletes. */
    for (unsigned gen = 1; gen <= KEEP_LAST; gen++)
        assert_int_equal(full_run(r, gen, true, &rs), 0);
    backup_list before = VECTOR_INIT;
    assert_int_equal(repo_backup_list(r, NULL, &before), 0);

    store_mem_fault(s, f, n);
    full_run(r, KEEP_LAST + 1, false, &rs);
    bool fired = store_mem_fault_fired(s);
    assert_int_equal(rs.wrong_reads, 0);
    repo_close(r); /* a crashed process's handle releases nothing */
    store_mem_restart(s);
    if (f == STORE_FAULT_TEAR || f == STORE_FAULT_CRASH)
        store_mem_advance(s, REPO_LEASE_SECONDS + 1); /* the dead process's leases run out */

    snprintf(when, sizeof(when), "format %u: fault %d at call %u", format, (int)f, n);
    r = open_repo(s);
    check_restorable(r, when);
    /* The newest backup that existed before is still there (prune keeps the last ones, and a
     * failed run never removes more). */
    struct backup *b = NULL;
    assert_int_equal(repo_backup_get(r, before.ptr[before.len - 1]->id, &b), 0);
    backup_free(b);
    backup_list_free(&before);

    /* The next run succeeds and cleans up. */
    assert_int_equal(full_run(r, KEEP_LAST + 2, true, &rs), 0);
    check_restorable(r, when);
    backup_list l = VECTOR_INIT;
    assert_int_equal(repo_backup_list(r, NULL, &l), 0);
    assert_int_equal(l.len, KEEP_LAST);
    unsigned newest = 0;
    assert_int_equal(gen_of(l.ptr[l.len - 1], &newest), 0);
    assert_int_equal(newest, KEEP_LAST + 2);
    backup_list_free(&l);
    struct leftovers lo = {.s = s, .prefix = ""};
    leftovers_walk(&lo, "");
    if (lo.tmp || lo.partial)
        fail_msg("%s: %u temporary objects and %u partial backups left after gc", when, lo.tmp,
                 lo.partial);
    /* Nothing left for another gc: no orphan pack or chunk, nothing dead kept. */
    struct gc_stats again;
    char err2[ERR_LEN] = "";
    assert_int_equal(repo_gc(r, true, &again, err2, sizeof(err2)), 0);
    if (again.chunks_deleted || again.bytes_freed || again.temp_files_removed)
        fail_msg("%s: a second gc would delete %" PRIu64 " chunks, %" PRIu64 " bytes", when,
                 again.chunks_deleted, again.bytes_freed);

    repo_close(r);
    store_close(s);
    return fired;
}

/* Every N from 1 until the fault no longer fires, on format 3 (packs: the faulty run's gc
 * repacks the first generation's packs, whose even chunks died with its prune) and on format 2
 * (a file per chunk). */
static void fault_every_step(enum store_fault f)
{
    static const unsigned formats[] = {3, 2};
    for (size_t k = 0; k < sizeof(formats) / sizeof(formats[0]); k++) {
        unsigned n = 1;
        while (scenario(formats[k], f, n)) {
            n++;
            assert_true(n < MAX_STEPS);
        }
        print_message("# format %u: fault %d: injected at each of %u calls\n", formats[k], (int)f,
                      n - 1);
        assert_true(n > 1); /* the run made at least one such call */
    }
}

static void test_fail_put(void **state)
{
    (void)state;
    fault_every_step(STORE_FAULT_PUT);
}

static void test_fail_get(void **state)
{
    (void)state;
    fault_every_step(STORE_FAULT_GET);
}

static void test_fail_commit(void **state)
{
    (void)state;
    fault_every_step(STORE_FAULT_COMMIT);
}

static void test_fail_del(void **state)
{
    (void)state;
    fault_every_step(STORE_FAULT_DEL);
}

static void test_torn_put(void **state)
{
    (void)state;
    fault_every_step(STORE_FAULT_TEAR);
}

static void test_no_space(void **state)
{
    (void)state;
    fault_every_step(STORE_FAULT_NOSPC);
}

static void test_crash(void **state)
{
    (void)state;
    fault_every_step(STORE_FAULT_CRASH);
}

int main(void)
{
    log_set_level(LOG_LEVEL_ERROR); /* the faults' warnings are expected */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fail_put),    cmocka_unit_test(test_fail_get),
        cmocka_unit_test(test_fail_commit), cmocka_unit_test(test_fail_del),
        cmocka_unit_test(test_torn_put),    cmocka_unit_test(test_no_space),
        cmocka_unit_test(test_crash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
