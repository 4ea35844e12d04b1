/* Unit tests for the repository's store interface (src/repo/store.h): the contract run with the
 * same body on the local store (a mkdtemp() directory), on the memory store and, when
 * VMEXPORT_TEST_RADOS=rados://POOL/NS names a Ceph pool (tests/integration/test-store-rados.sh
 * starts one), on the RADOS store in a fresh namespace NS-<random> per test (put, create
 * without replacing, staged puts invisible until committed, listings longer than a page with
 * deletions during the walk, prefixes, locks and leases; object stores have virtual prefixes),
 * the memory store's own faults and lease expiry, RADOS lease expiry on the OSD's clock, and a
 * repository on the memory store: init, open, a backup, gc.  VMEXPORT_TEST_S3=s3://BUCKET/PREFIX
 * (with VMEXPORT_S3_ENDPOINT and the AWS_* keys; tests/integration/test-store-s3.sh) runs the
 * contract and the repository on the S3 store under PREFIX/test-<random> per test, with
 * listing pages of 50 keys and staged objects in temporary files.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "repo/repo.h"
#include "repo/repo_internal.h" /* REPO_LEASE_SECONDS, REPO_TMP_MARK */
#include "repo/store.h"
#include "repo/store_mem.h"

#define MANY_KEYS  150 /* more than two pages of a memory store listing */
#define LEASE      30  /* seconds of the test leases */
#define NFTW_FDS   16
#define TEST_ALIGN STORE_ALIGN

struct fixture {
    char dir[PATH_MAX];
    struct store *s;
    bool local;
    bool virt; /* an object store: prefixes exist only while a key is under them */
};

/* Seconds of the RADOS lease expiry test's lease. */
#define SHORT_LEASE 2
#define RADOS_ENV   "VMEXPORT_TEST_RADOS"
#define S3_ENV      "VMEXPORT_TEST_S3"

/* The fixture's store. */
static struct store *fixture_store(void **state)
{
    return ((struct fixture *)*state)->s;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup_local(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(f->dir, sizeof(f->dir), "%s/vmexport-store-XXXXXX", tmp);
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(store_local_open(f->dir, &f->s), 0);
    f->local = true;
    *state = f;
    return 0;
}

static int setup_rados(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->virt = true;
    *state = f;
    const char *url = getenv(RADOS_ENV);
    char rnd[9], full[PATH_MAX], err[512] = "";
    assert_int_equal(repo_random_hex(rnd, 4), 0);
    snprintf(full, sizeof(full), "%s%s%s", url,
             strchr(url + strlen(STORE_URL_RADOS), '/') ? "-" : "/", rnd);
    int r = store_open_url(full, NULL, true, &f->s, err, sizeof(err));
    if (r < 0)
        fail_msg("%s", err);
    return 0;
}

static int setup_s3(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->virt = true;
    *state = f;
    char rnd[17], full[PATH_MAX], err[512] = "";
    assert_int_equal(repo_random_hex(rnd, 8), 0);
    snprintf(full, sizeof(full), "%s/test-%s", getenv(S3_ENV), rnd);
    /* Pages of 50 keys: the listing tests cross pages as on the other stores.  Staged objects
     * go through temporary files (big backups' path; test-store-s3.sh's take the memory one). */
    setenv("VMEXPORT_S3_LIST_PAGE", "50", 1);
    setenv("VMEXPORT_S3_STAGE_MEMORY", "0", 1);
    int r = store_open_url(full, NULL, true, &f->s, err, sizeof(err));
    if (r < 0)
        fail_msg("%s", err);
    return 0;
}

/* Delete every object under prefix (an object store's test namespace). */
static int wipe(struct store *s, const char *prefix);

struct wipe_ctx {
    struct store *s;
    const char *prefix;
};

static int wipe_entry(void *opaque, const struct store_entry *e)
{
    struct wipe_ctx *w = opaque;
    char key[PATH_MAX];
    snprintf(key, sizeof(key), "%s%s%s", w->prefix, *w->prefix ? "/" : "", e->name);
    return e->prefix ? wipe(w->s, key) : store_del(w->s, key, NULL);
}

static int wipe(struct store *s, const char *prefix)
{
    struct wipe_ctx w = {.s = s, .prefix = prefix};
    return store_list(s, prefix, wipe_entry, &w);
}

static int setup_mem(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(store_mem_new("test", &f->s), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->virt && f->s)
        assert_int_equal(wipe(f->s, ""), 0);
    store_close(f->s);
    if (f->local)
        nftw(f->dir, rm_entry, NFTW_FDS, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static void get_equal(struct store *s, const char *key, const char *want)
{
    CLEANUP_FREE uint8_t *data = NULL;
    size_t len = 0;
    assert_int_equal(store_get(s, key, 1 << 20, &data, &len), 0);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(data, want, len);
}

/* ---- the contract, on both stores ---- */

static void test_put_get(void **state)
{
    struct store *s = fixture_store(state);
    bool virt = ((struct fixture *)*state)->virt;
    bool created = false, prefix = true;
    CLEANUP_FREE uint8_t *data = NULL;
    size_t len;

    assert_int_equal(store_make_prefix(s, "d", false), 0);
    assert_int_equal(store_put(s, "d/a", "one", 3, STORE_PUT_CREATE, &created), 0);
    assert_true(created);
    /* Create never replaces: the first object wins. */
    assert_int_equal(store_put(s, "d/a", "two", 3, STORE_PUT_CREATE, &created), 0);
    assert_false(created);
    get_equal(s, "d/a", "one");
    assert_int_equal(store_put(s, "d/a", "three", 5, STORE_PUT_REPLACE, &created), 0);
    get_equal(s, "d/a", "three");
    assert_int_equal(store_exists(s, "d/a", &prefix), 0);
    assert_false(prefix);
    assert_int_equal(store_exists(s, "d", &prefix), 0);
    assert_true(prefix);
    assert_int_equal(store_exists(s, "d/b", NULL), -ENOENT);
    assert_int_equal(store_get(s, "d/b", 100, &data, &len), -ENOENT);
    /* Too big for the caller's limit. */
    assert_int_equal(store_get(s, "d/a", 4, &data, &len), -EBADMSG);
    /* One missing level is made; two are not (virtual prefixes need no making). */
    assert_int_equal(store_put(s, "d/e/f", "x", 1, STORE_PUT_REPLACE, NULL), 0);
    get_equal(s, "d/e/f", "x");
    assert_int_equal(store_put(s, "g/h/i", "x", 1, STORE_PUT_REPLACE, NULL), virt ? 0 : -ENOENT);
    /* Into an aligned buffer. */
    uint8_t *buf = aligned_alloc(TEST_ALIGN, TEST_ALIGN);
    assert_non_null(buf);
    assert_int_equal(store_get_into(s, "d/a", 100, buf, TEST_ALIGN, &len), 0);
    assert_int_equal(len, 5);
    assert_memory_equal(buf, "three", 5);
    assert_int_equal(store_get_into(s, "d/a", 100, buf + 1, TEST_ALIGN - 1, &len), -ENOBUFS);
    free(buf);

    struct store_stat st;
    assert_int_equal(store_stat(s, "d/a", &st), 0);
    assert_int_equal(st.size, 5);
    uint64_t bytes = 0;
    assert_int_equal(store_del(s, "d/a", &bytes), 0);
    assert_int_equal(bytes, 5);
    assert_int_equal(store_sync_prefix(s, "d"), 0);
    assert_int_equal(store_exists(s, "d/a", NULL), -ENOENT);
    assert_int_equal(store_del(s, "d/a", NULL), -ENOENT);
}

static void test_staged(void **state)
{
    struct store *s = fixture_store(state);
    struct store_staged *st[3];
    bool created[3];

    assert_int_equal(store_make_prefix(s, "c", false), 0);
    assert_int_equal(store_put(s, "c/exists", "old", 3, STORE_PUT_REPLACE, NULL), 0);
    assert_int_equal(store_stage(s, "c/exists", "new", 3, &st[0]), 0);
    assert_int_equal(store_stage(s, "c/sub/x", "x", 1, &st[1]), 0); /* a missing level */
    assert_int_equal(store_stage(s, "c/y", "y", 1, &st[2]), 0);
    /* Not visible until committed. */
    assert_int_equal(store_exists(s, "c/sub/x", NULL), -ENOENT);
    assert_int_equal(store_exists(s, "c/y", NULL), -ENOENT);
    assert_int_equal(store_commit(s, st, 3, created), 0);
    assert_false(created[0]); /* never replaces */
    assert_true(created[1]);
    assert_true(created[2]);
    get_equal(s, "c/exists", "old");
    get_equal(s, "c/sub/x", "x");
    get_equal(s, "c/y", "y");
    /* A discarded one never appears. */
    struct store_staged *gone;
    assert_int_equal(store_stage(s, "c/z", "z", 1, &gone), 0);
    store_discard(s, gone);
    assert_int_equal(store_exists(s, "c/z", NULL), -ENOENT);
    assert_int_equal(store_commit(s, NULL, 0, NULL), 0);
}

struct walk {
    struct store *s;
    unsigned seen[MANY_KEYS];
    unsigned prefixes, others;
    bool delete_odd;
};

static int walk_entry(void *opaque, const struct store_entry *e)
{
    struct walk *w = opaque;
    unsigned i;
    char key[64];
    if (e->prefix) {
        w->prefixes++;
        return 0;
    }
    if (sscanf(e->name, "k%u", &i) != 1 || i >= MANY_KEYS) {
        w->others++;
        return 0;
    }
    w->seen[i]++;
    if (w->delete_odd && i % 2) {
        snprintf(key, sizeof(key), "l/%s", e->name);
        assert_int_equal(store_del(w->s, key, NULL), 0);
    }
    return 0;
}

static int walk_stop_at(void *opaque, const struct store_entry *e)
{
    unsigned *left = opaque;
    (void)e;
    return --*left ? 0 : 7;
}

static void test_list(void **state)
{
    struct store *s = fixture_store(state);
    bool virt = ((struct fixture *)*state)->virt;
    char key[64];

    assert_int_equal(store_make_prefix(s, "l", false), 0);
    for (unsigned i = 0; i < MANY_KEYS; i++) {
        snprintf(key, sizeof(key), "l/k%u", i);
        assert_int_equal(store_put(s, key, key, strlen(key), STORE_PUT_REPLACE, NULL), 0);
    }
    assert_int_equal(store_make_prefix(s, "l/sub", false), 0);
    assert_int_equal(store_put(s, "l/sub/deep", "d", 1, STORE_PUT_REPLACE, NULL), 0);

    /* Every entry once, deletions during the walk included. */
    struct walk w = {.s = s, .delete_odd = true};
    assert_int_equal(store_list(s, "l", walk_entry, &w), 0);
    for (unsigned i = 0; i < MANY_KEYS; i++)
        assert_int_equal(w.seen[i], 1);
    assert_int_equal(w.prefixes, 1);
    assert_int_equal(w.others, 0);
    struct walk again = {.s = s};
    assert_int_equal(store_list(s, "l", walk_entry, &again), 0);
    for (unsigned i = 0; i < MANY_KEYS; i++)
        assert_int_equal(again.seen[i], i % 2 ? 0 : 1);

    /* A callback's non-zero return stops the walk and is returned. */
    unsigned left = 3;
    assert_int_equal(store_list(s, "l", walk_stop_at, &left), 7);
    assert_int_equal(left, 0);
    /* A prefix with nothing under it: missing, or (virtual) empty. */
    struct walk none = {.s = s};
    assert_int_equal(store_list(s, "nothing", walk_entry, &none), virt ? 0 : -ENOENT);
    assert_int_equal(none.prefixes + none.others, 0);
    assert_int_equal(store_list(s, "l/k0", walk_entry, &w), -ENOTDIR);
}

struct deep {
    struct store *s;
    const char *prefix;
    char seen[8][64];
    unsigned n;
    bool delete;
};

static int deep_entry(void *opaque, const struct store_entry *e)
{
    struct deep *d = opaque;
    assert_false(e->prefix);
    assert_true(d->n < 8);
    snprintf(d->seen[d->n++], sizeof(d->seen[0]), "%s", e->name);
    if (d->delete) {
        char key[PATH_MAX];
        snprintf(key, sizeof(key), "%s%s%s", d->prefix, *d->prefix ? "/" : "", e->name);
        assert_int_equal(store_del(d->s, key, NULL), 0);
    }
    return 0;
}

static bool deep_saw(const struct deep *d, const char *name)
{
    for (unsigned i = 0; i < d->n; i++)
        if (!strcmp(d->seen[i], name))
            return true;
    return false;
}

/* store_walk: every object of a tree once, named from the walk's prefix. */
static void test_walk(void **state)
{
    struct store *s = fixture_store(state);
    static const char *const keys[] = {"w/x", "w/b/y", "w/b/c/z", "w2/v"};
    assert_int_equal(store_make_prefix(s, "w", false), 0);
    assert_int_equal(store_make_prefix(s, "w/b", false), 0);
    assert_int_equal(store_make_prefix(s, "w/b/c", false), 0);
    assert_int_equal(store_make_prefix(s, "w2", false), 0);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        assert_int_equal(store_put(s, keys[i], "d", 1, STORE_PUT_REPLACE, NULL), 0);

    struct deep d = {.s = s, .prefix = "w"};
    assert_int_equal(store_walk(s, "w", deep_entry, &d), 0);
    assert_int_equal(d.n, 3);
    assert_true(deep_saw(&d, "x") && deep_saw(&d, "b/y") && deep_saw(&d, "b/c/z"));
    struct deep all = {.s = s, .prefix = "", .delete = true};
    assert_int_equal(store_walk(s, "", deep_entry, &all), 0);
    assert_int_equal(all.n, 4);
    assert_true(deep_saw(&all, "w/b/c/z") && deep_saw(&all, "w2/v"));
    /* Every object was deleted during the walk. */
    struct deep none = {.s = s, .prefix = ""};
    assert_int_equal(store_walk(s, "", deep_entry, &none), 0);
    assert_int_equal(none.n, 0);
    assert_int_equal(store_put(s, "w2/v", "d", 1, STORE_PUT_REPLACE, NULL), 0);
    assert_int_equal(store_walk(s, "w2/v", deep_entry, &none), -ENOTDIR);
}

static void test_get_range(void **state)
{
    struct store *s = fixture_store(state);
    uint8_t buf[8];
    assert_int_equal(store_make_prefix(s, "r", false), 0);
    assert_int_equal(store_put(s, "r/o", "0123456789", 10, STORE_PUT_CREATE, NULL), 0);
    assert_int_equal(store_get_range(s, "r/o", 3, 4, buf), 0);
    assert_memory_equal(buf, "3456", 4);
    assert_int_equal(store_get_range(s, "r/o", 6, 4, buf), 0);
    assert_memory_equal(buf, "6789", 4);
    assert_int_equal(store_get_range(s, "r/o", 7, 4, buf), -EBADMSG);
    assert_int_equal(store_get_range(s, "r/o", 12, 1, buf), -EBADMSG);
    assert_int_equal(store_get_range(s, "r/missing", 0, 1, buf), -ENOENT);
}

static void test_prefixes(void **state)
{
    struct store *s = fixture_store(state);
    bool virt = ((struct fixture *)*state)->virt;
    assert_int_equal(store_make_prefix(s, "p", true), 0);
    /* A virtual prefix exists once a key is under it. */
    assert_int_equal(store_make_prefix(s, "p", true), virt ? 0 : -EEXIST);
    assert_int_equal(store_make_prefix(s, "p", false), 0);
    assert_int_equal(store_make_prefix(s, "q/r", false), virt ? 0 : -ENOENT);
    assert_int_equal(store_make_prefix(s, "p/r", true), 0);
    assert_int_equal(store_put(s, "p/r/o", "o", 1, STORE_PUT_REPLACE, NULL), 0);
    assert_int_equal(store_make_prefix(s, "p", true), -EEXIST);
    assert_int_equal(store_make_prefix(s, "p/r", true), -EEXIST);
    assert_int_equal(store_remove_prefix(s, "p/r"), -ENOTEMPTY);
    assert_int_equal(store_remove_prefix(s, "p"), -ENOTEMPTY);
    assert_int_equal(store_del(s, "p/r/o", NULL), 0);
    assert_int_equal(store_remove_prefix(s, "p/r"), 0);
    assert_int_equal(store_exists(s, "p/r", NULL), -ENOENT);
    assert_int_equal(store_remove_prefix(s, "p/r"), virt ? 0 : -ENOENT);
    assert_int_equal(store_barrier(s), 0);
}

static void test_locks(void **state)
{
    struct store *s = fixture_store(state);
    struct store_lease *a, *b, *c;
    int64_t now = store_deadline(0);

    /* The lock space is made on demand. */
    assert_int_equal(store_lock(s, "locks/l", false, LEASE, now, &a), 0);
    assert_int_equal(store_lock(s, "locks/l", false, LEASE, store_deadline(0), &b), 0);
    assert_int_equal(store_lock(s, "locks/l", true, LEASE, store_deadline(0), &c), -EBUSY);
    assert_null(c);
    assert_int_equal(store_renew(s, a, LEASE), 0);
    store_unlock(s, a);
    assert_int_equal(store_lock(s, "locks/l", true, LEASE, store_deadline(0), &c), -EBUSY);
    store_unlock(s, b);
    assert_int_equal(store_lock(s, "locks/l", true, LEASE, store_deadline(0), &c), 0);
    assert_int_equal(store_lock(s, "locks/l", false, LEASE, store_deadline(0), &a), -EBUSY);
    /* Another name is another lock. */
    assert_int_equal(store_lock(s, "locks/m", true, LEASE, store_deadline(0), &b), 0);
    store_unlock(s, b);
    store_unlock(s, c);
    store_unlock(s, NULL);
}

/* ---- the memory store's own behaviour ---- */

static void test_mem_lease_expiry(void **state)
{
    struct store *s = fixture_store(state);
    struct store_lease *a, *b;
    assert_int_equal(store_lock(s, "locks/l", true, LEASE, store_deadline(0), &a), 0);
    assert_int_equal(store_lock(s, "locks/l", true, LEASE, store_deadline(0), &b), -EBUSY);
    store_mem_advance(s, LEASE / 2);
    assert_int_equal(store_renew(s, a, LEASE), 0);
    store_mem_advance(s, LEASE / 2 + 1);
    assert_int_equal(store_lock(s, "locks/l", true, LEASE, store_deadline(0), &b), -EBUSY);
    /* Unrenewed past its lease: another holder may take it, and the first learns it lost it. */
    store_mem_advance(s, LEASE);
    assert_int_equal(store_lock(s, "locks/l", true, LEASE, store_deadline(0), &b), 0);
    assert_int_equal(store_renew(s, a, LEASE), -ETIMEDOUT);
    store_unlock(s, a); /* releases nothing of b's */
    struct store_lease *c;
    assert_int_equal(store_lock(s, "locks/l", false, LEASE, store_deadline(0), &c), -EBUSY);
    store_unlock(s, b);
}

/* RADOS: an unrenewed lease ends on the OSD's clock; its holder's renewal then fails. */
static void test_rados_lease_expiry(void **state)
{
    struct store *s = fixture_store(state);
    struct store_lease *a, *b, *c;
    assert_int_equal(store_lock(s, "locks/l", true, SHORT_LEASE, store_deadline(0), &a), 0);
    assert_int_equal(store_lock(s, "locks/l", false, LEASE, store_deadline(0), &b), -EBUSY);
    assert_int_equal(store_renew(s, a, SHORT_LEASE), 0);
    /* Waiting past the lease: the lock is free again. */
    assert_int_equal(store_lock(s, "locks/l", true, LEASE, store_deadline(3 * SHORT_LEASE), &b), 0);
    assert_int_equal(store_renew(s, a, LEASE), -ETIMEDOUT);
    store_unlock(s, a); /* releases nothing of b's */
    assert_int_equal(store_lock(s, "locks/l", false, LEASE, store_deadline(0), &c), -EBUSY);
    assert_int_equal(store_renew(s, b, LEASE), 0);
    store_unlock(s, b);
    assert_int_equal(store_lock(s, "locks/l", false, LEASE, store_deadline(0), &c), 0);
    store_unlock(s, c);
}

/* The race's worker (a process of its own, started by test_rados_create_race): put each of
 * RACE_KEYS keys with STORE_PUT_CREATE and its tag as data; the exit status is how many it
 * created (RACE_FAILED on an error). */
#define RACE_KEYS    40
#define RACE_WORKERS 4
#define RACE_FAILED  255
#define RACE_ENV     "VMEXPORT_TEST_RACE"

static int race_worker(const char *spec)
{
    char url[PATH_MAX], err[512];
    unsigned tag;
    if (sscanf(spec, "%u %4095s", &tag, url) != 2)
        return RACE_FAILED;
    struct store *s = NULL;
    if (store_open_url(url, NULL, false, &s, err, sizeof(err)) < 0) {
        fprintf(stderr, "race worker: %s\n", err);
        return RACE_FAILED;
    }
    int made = 0;
    for (unsigned i = 0; i < RACE_KEYS; i++) {
        char key[64], data[64];
        bool created = false;
        snprintf(key, sizeof(key), "race/k%u", i);
        snprintf(data, sizeof(data), "written by worker %u", tag);
        if (store_put(s, key, data, strlen(data), STORE_PUT_CREATE, &created) < 0) {
            made = RACE_FAILED;
            break;
        }
        made += created;
    }
    store_close(s);
    return made;
}

/* RADOS: processes creating the same keys at once: each key is created by exactly one, and
 * holds that one's data, whole. */
static void test_rados_create_race(void **state)
{
    struct store *s = fixture_store(state);
    pid_t pid[RACE_WORKERS];
    for (unsigned w = 0; w < RACE_WORKERS; w++) {
        char spec[PATH_MAX + 16];
        snprintf(spec, sizeof(spec), "%u %s", w, store_name(s));
        pid[w] = fork();
        assert_true(pid[w] >= 0);
        if (pid[w] == 0) {
            /* A fresh process (librados' threads do not survive a fork). */
            setenv(RACE_ENV, spec, 1);
            execl("/proc/self/exe", "test_store", (char *)NULL);
            _exit(RACE_FAILED);
        }
    }
    unsigned total = 0;
    for (unsigned w = 0; w < RACE_WORKERS; w++) {
        int status;
        assert_int_equal(waitpid(pid[w], &status, 0), pid[w]);
        assert_true(WIFEXITED(status));
        assert_int_not_equal(WEXITSTATUS(status), RACE_FAILED);
        total += (unsigned)WEXITSTATUS(status);
    }
    assert_int_equal(total, RACE_KEYS);
    for (unsigned i = 0; i < RACE_KEYS; i++) {
        char key[64];
        CLEANUP_FREE uint8_t *data = NULL;
        size_t len = 0;
        unsigned tag;
        snprintf(key, sizeof(key), "race/k%u", i);
        assert_int_equal(store_get(s, key, 100, &data, &len), 0);
        assert_true(len < 100);
        char text[100];
        memcpy(text, data, len);
        text[len] = '\0';
        assert_int_equal(sscanf(text, "written by worker %u", &tag), 1);
        assert_true(tag < RACE_WORKERS);
    }
}

/* Whether any key under prefix (recursively) holds REPO_TMP_MARK. */
static int tmp_walk(struct store *s, const char *prefix, unsigned *found);

struct tmp_ctx {
    struct store *s;
    const char *prefix;
    unsigned *found;
};

static int tmp_entry(void *opaque, const struct store_entry *e)
{
    struct tmp_ctx *t = opaque;
    char key[PATH_MAX];
    snprintf(key, sizeof(key), "%s%s%s", t->prefix, *t->prefix ? "/" : "", e->name);
    if (strstr(e->name, REPO_TMP_MARK))
        (*t->found)++;
    return e->prefix ? tmp_walk(t->s, key, t->found) : 0;
}

static int tmp_walk(struct store *s, const char *prefix, unsigned *found)
{
    struct tmp_ctx t = {.s = s, .prefix = prefix, .found = found};
    return store_list(s, prefix, tmp_entry, &t);
}

static void test_mem_faults(void **state)
{
    struct store *s = fixture_store(state);
    struct store_staged *st[2];
    bool created[2];
    unsigned tmp = 0;

    assert_int_equal(store_make_prefix(s, "f", false), 0);
    store_mem_fault(s, STORE_FAULT_PUT, 2);
    assert_int_equal(store_put(s, "f/a", "a", 1, STORE_PUT_REPLACE, NULL), 0);
    assert_false(store_mem_fault_fired(s));
    assert_int_equal(store_put(s, "f/b", "b", 1, STORE_PUT_REPLACE, NULL), -EIO);
    assert_true(store_mem_fault_fired(s));
    assert_int_equal(store_exists(s, "f/b", NULL), -ENOENT);
    assert_int_equal(store_put(s, "f/b", "b", 1, STORE_PUT_REPLACE, NULL), 0); /* one-off */

    store_mem_fault(s, STORE_FAULT_GET, 1);
    CLEANUP_FREE uint8_t *data = NULL;
    size_t len;
    assert_int_equal(store_get(s, "f/a", 10, &data, &len), -EIO);

    /* A commit failing halfway: what it published is whole. */
    store_mem_fault(s, STORE_FAULT_COMMIT, 1);
    assert_int_equal(store_stage(s, "f/c", "c", 1, &st[0]), 0);
    assert_int_equal(store_stage(s, "f/d", "d", 1, &st[1]), 0);
    assert_int_equal(store_commit(s, st, 2, created), -EIO);
    assert_true(created[0]);
    assert_false(created[1]);
    get_equal(s, "f/c", "c");
    assert_int_equal(store_exists(s, "f/d", NULL), -ENOENT);

    /* No space: every write until disarmed; deletes still work. */
    store_mem_fault(s, STORE_FAULT_NOSPC, 1);
    assert_int_equal(store_put(s, "f/e", "e", 1, STORE_PUT_REPLACE, NULL), -ENOSPC);
    assert_int_equal(store_stage(s, "f/e", "e", 1, &st[0]), -ENOSPC);
    assert_int_equal(store_del(s, "f/c", NULL), 0);
    store_mem_fault(s, STORE_FAULT_NONE, 0);
    assert_int_equal(store_put(s, "f/e", "e", 1, STORE_PUT_REPLACE, NULL), 0);

    /* A torn put: half its bytes under a temporary name, never under its key; then the
     * process is dead until restarted, and the staged object it had stays as a temporary. */
    assert_int_equal(store_stage(s, "f/g", "gg", 2, &st[0]), 0);
    store_mem_fault(s, STORE_FAULT_TEAR, 1);
    assert_int_equal(store_put(s, "f/h", "hhhh", 4, STORE_PUT_REPLACE, NULL), -EIO);
    assert_int_equal(store_get(s, "f/a", 10, &data, &len), -EIO);
    assert_int_equal(store_commit(s, st, 1, NULL), -EIO);
    store_mem_restart(s);
    assert_int_equal(store_exists(s, "f/h", NULL), -ENOENT);
    assert_int_equal(store_exists(s, "f/g", NULL), -ENOENT);
    assert_int_equal(tmp_walk(s, "", &tmp), 0);
    assert_int_equal(tmp, 2);
    get_equal(s, "f/a", "a");
}

/* ---- a repository on the memory store ---- */

static void test_mem_repo(void **state)
{
    struct store *s = fixture_store(state);
    struct repo *r = NULL;
    struct backup_writer *w = NULL;
    char err[256] = "";
    static uint8_t data[REPO_MIN_CHUNK_SIZE];
    /* Format 2: the keys are compared with a directory repository's chunk files. */
    struct repo_init_options opt = {.chunk_size = REPO_MIN_CHUNK_SIZE, .format_version = 2};

    assert_int_equal(repo_open_store(s, NULL, &r, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "no config file"));
    assert_int_equal(repo_init_store(s, &opt, err, sizeof(err)), 0);
    assert_int_equal(repo_open_store(s, NULL, &r, err, sizeof(err)), 0);
    assert_string_equal(repo_path(r), store_name(s));

    memset(data, 0x5a, sizeof(data));
    struct manifest m;
    assert_int_equal(manifest_new(&m, "sda", sizeof(data), REPO_MIN_CHUNK_SIZE), 0);
    struct chunk_id cid;
    repo_chunk_id(r, data, sizeof(data), &cid);
    assert_int_equal(manifest_append(&m, 0, &cid), 0);
    assert_int_equal(repo_backup_begin(r, "vm 1", 1700000000, 0, &w, err, sizeof(err)), 0);
    bool stored = false;
    assert_int_equal(repo_chunk_put(r, &m.e[0].id, data, sizeof(data), &stored, NULL), 0);
    assert_true(stored);
    assert_int_equal(repo_backup_add_disk(w, &m), 0);
    struct backup info = {0};
    assert_int_equal(repo_backup_commit(w, &info), 0);

    struct backup *b = NULL;
    assert_int_equal(repo_backup_latest(r, "vm 1", &b), 0);
    assert_string_equal(b->id, info.id);
    struct manifest back;
    assert_int_equal(repo_manifest_read(r, b, "sda", &back), 0);
    static uint8_t got[REPO_MIN_CHUNK_SIZE];
    size_t len = 0;
    assert_int_equal(repo_chunk_get(r, &back.e[0].id, got, sizeof(got), &len), 0);
    assert_int_equal(len, sizeof(data));
    assert_memory_equal(got, data, len);
    /* The same object keys as a directory repository. */
    char hex[2 * HASH_SIZE + 1], key[PATH_MAX];
    chunk_id_to_hex(&m.e[0].id, hex);
    snprintf(key, sizeof(key), "chunks/%.2s/%s", hex, hex);
    assert_int_equal(store_exists(s, key, NULL), 0);
    snprintf(key, sizeof(key), "backups/vm%%201/%s/backup.json", info.id);
    assert_int_equal(store_exists(s, key, NULL), 0);

    struct gc_stats gs;
    assert_int_equal(repo_gc(r, false, &gs, err, sizeof(err)), 0);
    assert_int_equal(gs.chunks_total, 1);
    assert_int_equal(gs.chunks_deleted, 0);
    assert_int_equal(repo_backup_delete(r, info.id), 0);
    assert_int_equal(repo_gc(r, false, &gs, err, sizeof(err)), 0);
    assert_int_equal(gs.chunks_deleted, 1);
    assert_false(repo_chunk_exists(r, &m.e[0].id));

    manifest_free(&m);
    manifest_free(&back);
    backup_free(b);
    free(info.id);
    free(info.vm_id);
    for (size_t i = 0; i < info.disks.len; i++) {
        free(info.disks.ptr[i].name);
        free(info.disks.ptr[i].change_id);
        free(info.disks.ptr[i].manifest);
    }
    backup_disk_list_reset(&info.disks);
    repo_close(r);
}

/* A backup writer whose lease ran out (a stalled process on a store without process-death
 * detection) must not commit: gc may have taken the lock meanwhile and deleted chunks the
 * backup references.  Its manifests and commit renew the lease while it is alive. */
static void test_mem_repo_lease_lost(void **state)
{
    struct store *s = fixture_store(state);
    struct repo *r = NULL;
    struct backup_writer *w = NULL;
    char err[256] = "";
    struct repo_init_options opt = {.chunk_size = REPO_MIN_CHUNK_SIZE};
    struct manifest m;

    assert_int_equal(repo_init_store(s, &opt, err, sizeof(err)), 0);
    assert_int_equal(repo_open_store(s, NULL, &r, err, sizeof(err)), 0);
    assert_int_equal(manifest_new(&m, "sda", 100, REPO_MIN_CHUNK_SIZE), 0);

    /* Alive: each manifest renews, so a run longer than one lease commits. */
    assert_int_equal(repo_backup_begin(r, "vm", 1700000000, 0, &w, err, sizeof(err)), 0);
    store_mem_advance(s, REPO_LEASE_SECONDS - 1);
    assert_int_equal(repo_backup_add_disk(w, &m), 0);
    store_mem_advance(s, REPO_LEASE_SECONDS - 1);
    struct backup info = {0};
    assert_int_equal(repo_backup_commit(w, &info), 0);
    free(info.id);
    free(info.vm_id);
    for (size_t i = 0; i < info.disks.len; i++) {
        free(info.disks.ptr[i].name);
        free(info.disks.ptr[i].change_id);
        free(info.disks.ptr[i].manifest);
    }
    backup_disk_list_reset(&info.disks);

    /* Stalled past its lease: gc gets the lock, and the writer may no longer write. */
    assert_int_equal(repo_backup_begin(r, "vm", 1700000100, 0, &w, err, sizeof(err)), 0);
    assert_int_equal(repo_lock(r, true, 0, err, sizeof(err)), -EBUSY);
    store_mem_advance(s, REPO_LEASE_SECONDS + 1);
    struct gc_stats gs;
    assert_int_equal(repo_gc(r, false, &gs, err, sizeof(err)), 0);
    assert_int_equal(gs.partial_backups_removed, 1);
    assert_int_equal(repo_backup_add_disk(w, &m), -ETIMEDOUT);
    repo_backup_abort(w);
    backup_list l = VECTOR_INIT;
    assert_int_equal(repo_backup_list(r, "vm", &l), 0);
    assert_int_equal(l.len, 1);
    backup_list_free(&l);

    manifest_free(&m);
    repo_close(r);
}

int main(void)
{
    const char *race = getenv(RACE_ENV);
    if (race)
        return race_worker(race);
#define BOTH(fn)                                                                                   \
    cmocka_unit_test_prestate_setup_teardown(fn, setup_local, teardown, NULL),                     \
        cmocka_unit_test_prestate_setup_teardown(fn, setup_mem, teardown, NULL)
#define MEM(fn)   cmocka_unit_test_prestate_setup_teardown(fn, setup_mem, teardown, NULL)
#define RADOS(fn) cmocka_unit_test_prestate_setup_teardown(fn, setup_rados, teardown, NULL)
#define S3(fn)    cmocka_unit_test_prestate_setup_teardown(fn, setup_s3, teardown, NULL)
    const struct CMUnitTest base[] = {
        BOTH(test_put_get),
        BOTH(test_staged),
        BOTH(test_list),
        BOTH(test_prefixes),
        BOTH(test_walk),
        BOTH(test_locks),
        BOTH(test_get_range),
        MEM(test_mem_lease_expiry),
        MEM(test_mem_faults),
        MEM(test_mem_repo),
        MEM(test_mem_repo_lease_lost),
    };
    /* The object stores', run only when their variable names a pool or a bucket. */
    const struct CMUnitTest rados[] = {
        RADOS(test_put_get),
        RADOS(test_staged),
        RADOS(test_list),
        RADOS(test_prefixes),
        RADOS(test_walk),
        RADOS(test_locks),
        RADOS(test_get_range),
        RADOS(test_rados_lease_expiry),
        RADOS(test_rados_create_race),
    };
    const struct CMUnitTest s3[] = {
        S3(test_put_get), S3(test_staged), S3(test_list),      S3(test_prefixes),
        S3(test_walk),    S3(test_locks),  S3(test_get_range), S3(test_mem_repo),
    };
    struct CMUnitTest tests[ARRAY_SIZE(base) + ARRAY_SIZE(rados) + ARRAY_SIZE(s3)];
    size_t n = 0;
    memcpy(tests, base, sizeof(base));
    n += ARRAY_SIZE(base);
    const char *url = getenv(RADOS_ENV);
    if (url && *url) {
        memcpy(tests + n, rados, sizeof(rados));
        n += ARRAY_SIZE(rados);
    } else {
        printf("# %s is not set: the RADOS store's %zu tests are skipped\n", RADOS_ENV,
               ARRAY_SIZE(rados));
    }
    url = getenv(S3_ENV);
    if (url && *url) {
        memcpy(tests + n, s3, sizeof(s3));
        n += ARRAY_SIZE(s3);
    } else {
        printf("# %s is not set: the S3 store's %zu tests are skipped\n", S3_ENV, ARRAY_SIZE(s3));
    }
    return _cmocka_run_group_tests("store", tests, n, NULL, NULL);
}
