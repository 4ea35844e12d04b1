/* Unit tests for the backup repository (src/repo): creation and opening (plain and encrypted,
 * every refusal), chunk round trips, deduplication, confidentiality and corruption detection
 * (flipped bytes, truncation, swapped files), manifests, the backup writer and the listing,
 * lookup and deletion of backups, crashes (uncommitted writers), gc, prune policies with fixed
 * times, concurrency (threads and processes putting the same chunks, writers of different VMs,
 * gc waiting for writers) and a full filesystem (a small tmpfs, when mounting is allowed).
 *
 * Every test works in its own mkdtemp() directory in $TMPDIR (default /tmp), removed after.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <zstd.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/hash.h"
#include "core/log.h"
#include "repo/repo.h"
#include "repo/repo_internal.h" /* container_seal, manifest_encode: for the fuzz test */

#define ERR_LEN       512
#define CS            REPO_MIN_CHUNK_SIZE /* chunk size of the test repositories */
#define SMALL         (CS / 8)            /* size of the chunks most tests store */
#define PASS          "correct horse battery staple"
#define MARKER_LEN    32
#define NFTW_FDS      16
#define LOCK_WAIT     10 /* seconds a test lets a lock wait */
#define THREADS       4
#define THREAD_CHUNKS 24 /* chunks each thread puts, THREAD_STRIDE apart: sets overlap */
#define THREAD_STRIDE 8
#define PROCS         3
#define PROC_CHUNKS   40
#define GC_WAIT_MS    300 /* how long gc must stay blocked behind a writer */
#define TMPFS_SIZE    "size=1m"
#define NS_PER_MS     1000000L
#define DAY           86400
#define FUZZ_ROUNDS   2000

/* Format a path into an array; fails the test when it does not fit. */
#define PATHF(buf, ...) assert_true((size_t)snprintf(buf, sizeof(buf), __VA_ARGS__) < sizeof(buf))

/* Fails the current test with a message when cond does not hold. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            print_message("# check failed: %s\n", #cond);                                          \
            print_message("# " __VA_ARGS__);                                                       \
            print_message("\n");                                                                   \
            _fail(__FILE__, __LINE__);                                                             \
        }                                                                                          \
    } while (0)

struct fixture {
    char base[PATH_MAX];      /* the mkdtemp() directory */
    char path[PATH_MAX + 16]; /* base/repo */
    struct repo *r;
    char mnt[PATH_MAX + 16]; /* a tmpfs mounted by the test, or "" */
    /* Format version repo_make creates: 0 is 2, the one-file-per-chunk layout most tests
     * look into; the format-independent ones run again on 3 (the default of repo init). */
    unsigned format;
};

static int rm_visit(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static int fixture_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    const char *tmp = getenv("TMPDIR");
    char tmpl[PATH_MAX];
    if ((size_t)snprintf(tmpl, sizeof(tmpl), "%s/vmexport-test-repo-XXXXXX",
                         tmp && *tmp ? tmp : "/tmp") >= sizeof(tmpl))
        return -1;
    if (!f || !mkdtemp(tmpl) || !realpath(tmpl, f->base)) {
        free(f);
        return -1;
    }
    if ((size_t)snprintf(f->path, sizeof(f->path), "%s/repo", f->base) >= sizeof(f->path)) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

/* The same fixture making format 3 repositories. */
static int fixture_setup_v3(void **state)
{
    int r = fixture_setup(state);
    if (r == 0)
        ((struct fixture *)*state)->format = 3;
    return r;
}

static int fixture_teardown(void **state)
{
    struct fixture *f = *state;
    repo_close(f->r);
    if (*f->mnt)
        umount2(f->mnt, MNT_DETACH);
    nftw(f->base, rm_visit, NFTW_FDS, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* ---- helpers ---- */

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: deterministic data for a given seed */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static void fill_random(void *buf, size_t len, uint64_t seed)
{
    uint8_t *p = buf;
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(rng_next(&s) >> 56);
}

/* Unix time of a UTC date. */
static int64_t utc(int y, int mo, int d, int h, int mi)
{
    struct tm tm = {
        .tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi};
    return (int64_t)timegm(&tm);
}

static void repo_make_at(struct fixture *f, const char *path, const char *pass)
{
    char err[ERR_LEN] = "";
    struct repo_init_options opt = {
        .chunk_size = CS, .passphrase = pass, .format_version = f->format ? f->format : 2};
    int r = repo_init(path, &opt, err, sizeof(err));
    CHECK(r == 0, "repo_init: %d %s", r, err);
    r = repo_open(path, pass, &f->r, err, sizeof(err));
    CHECK(r == 0, "repo_open: %d %s", r, err);
}

static void repo_make(struct fixture *f, const char *pass)
{
    repo_make_at(f, f->path, pass);
}

/* Store chunk number n (SMALL random bytes from seed n). */
static struct chunk_id chunk_make(struct repo *r, uint64_t n)
{
    uint8_t *buf = malloc(SMALL);
    struct chunk_id id;
    assert_non_null(buf);
    fill_random(buf, SMALL, n);
    repo_chunk_id(r, buf, SMALL, &id);
    assert_int_equal(repo_chunk_put(r, &id, buf, SMALL, NULL, NULL), 0);
    free(buf);
    return id;
}

static bool chunk_ok(struct repo *r, const struct chunk_id *id)
{
    uint8_t *buf = malloc(CS);
    size_t len;
    assert_non_null(buf);
    int ret = repo_chunk_get(r, id, buf, CS, &len);
    free(buf);
    return ret == 0;
}

/* Bytes of a plain container's checksum in this repository. */
static size_t plain_trailer(const struct repo *r)
{
    return r->format_version >= 2 ? 16 : HASH_SIZE;
}

static void chunk_path(struct fixture *f, const struct chunk_id *id, char *out, size_t size)
{
    char hex[2 * HASH_SIZE + 1];
    chunk_id_to_hex(id, hex);
    assert_true((size_t)snprintf(out, size, "%s/chunks/%.2s/%s", f->path, hex, hex) < size);
}

static uint8_t *file_read(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

static void file_write(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static bool file_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static int tmp_count;
static int tmp_visit(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (strstr(path + ftw->base, ".tmp."))
        tmp_count++;
    return 0;
}

static int count_tmp_files(const char *root)
{
    tmp_count = 0;
    nftw(root, tmp_visit, NFTW_FDS, FTW_PHYS);
    return tmp_count;
}

static bool buf_contains(const uint8_t *hay, size_t n, const uint8_t *needle, size_t m)
{
    for (size_t i = 0; i + m <= n; i++)
        if (!memcmp(hay + i, needle, m))
            return true;
    return false;
}

/* A committed backup of vm at time t with one disk "sda" whose chunks are the given ones
 * (nids of them, each a full chunk except that the disk size makes the last SMALL long); its ID
 * is returned (free it). */
static char *backup_make(struct repo *r, const char *vm, int64_t t, const struct chunk_id *ids,
                         size_t nids)
{
    char err[ERR_LEN] = "";
    struct backup_writer *w;
    struct manifest m;
    int ret = repo_backup_begin(r, vm, t, LOCK_WAIT, &w, err, sizeof(err));
    CHECK(ret == 0, "begin: %d %s", ret, err);
    uint64_t size = nids ? (uint64_t)(nids - 1) * CS + SMALL : 0;
    assert_int_equal(manifest_new(&m, "sda", size, CS), 0);
    for (size_t i = 0; i < nids; i++)
        assert_int_equal(manifest_append(&m, i, &ids[i]), 0);
    assert_int_equal(repo_backup_add_disk(w, &m), 0);
    manifest_free(&m);
    char *id = strdup(repo_backup_writer_id(w));
    struct backup *b = calloc(1, sizeof(*b));
    assert_non_null(b);
    assert_int_equal(repo_backup_commit(w, b), 0);
    backup_free(b);
    return id;
}

static size_t backup_count(struct repo *r, const char *vm)
{
    backup_list l = VECTOR_INIT;
    assert_int_equal(repo_backup_list(r, vm, &l), 0);
    size_t n = l.len;
    backup_list_free(&l);
    return n;
}

static json_t *config_load(struct fixture *f)
{
    char p[PATH_MAX + 16];
    PATHF(p, "%s/config", f->path);
    json_t *cfg = json_load_file(p, 0, NULL);
    assert_non_null(cfg);
    return cfg;
}

static void config_store(struct fixture *f, json_t *cfg)
{
    char p[PATH_MAX + 16];
    PATHF(p, "%s/config", f->path);
    assert_int_equal(json_dump_file(cfg, p, JSON_INDENT(2)), 0);
}

/* ---- init / open ---- */

static void test_init_open_plain(void **state)
{
    struct fixture *f = *state;
    f->format = REPO_FORMAT_VERSION;
    repo_make(f, NULL);
    assert_int_equal(repo_chunk_size(f->r), CS);
    assert_false(repo_encrypted(f->r));
    assert_string_equal(repo_path(f->r), f->path);

    json_t *cfg = config_load(f);
    assert_string_equal(json_string_value(json_object_get(cfg, "format")), "vmexport-repository");
    assert_int_equal(json_integer_value(json_object_get(cfg, "version")), REPO_FORMAT_VERSION);
    assert_int_equal(json_integer_value(json_object_get(cfg, "chunk_size")), CS);
    assert_string_equal(json_string_value(json_object_get(cfg, "compression")), "zstd");
    assert_true(json_is_null(json_object_get(cfg, "encryption")));
    assert_true(strlen(json_string_value(json_object_get(cfg, "id"))) > 0);
    json_decref(cfg);

    /* The default chunk size, and a pre-existing empty directory. */
    char p2[PATH_MAX + 16], err[ERR_LEN];
    struct repo *r2;
    PATHF(p2, "%s/empty", f->base);
    assert_int_equal(mkdir(p2, 0700), 0);
    assert_int_equal(repo_init(p2, NULL, err, sizeof(err)), 0);
    assert_int_equal(repo_open(p2, NULL, &r2, err, sizeof(err)), 0);
    assert_int_equal(repo_chunk_size(r2), REPO_DEFAULT_CHUNK_SIZE);
    assert_int_equal(repo_format_version(r2), REPO_FORMAT_VERSION);
    assert_int_equal(REPO_FORMAT_VERSION, 3);
    repo_close(r2);
    assert_int_equal(count_tmp_files(f->base), 0);
}

static void test_init_open_encrypted(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    struct repo *r2 = NULL;

    repo_make(f, PASS);
    assert_true(repo_encrypted(f->r));

    json_t *cfg = config_load(f);
    json_t *enc = json_object_get(cfg, "encryption");
    assert_true(json_is_object(enc));
    assert_string_equal(json_string_value(json_object_get(enc, "cipher")), "aes-256-gcm");
    assert_string_equal(json_string_value(json_object_get(enc, "kdf")), "scrypt");
    assert_int_equal(json_integer_value(json_object_get(enc, "N")), 32768);
    assert_int_equal(json_integer_value(json_object_get(enc, "r")), 8);
    assert_int_equal(json_integer_value(json_object_get(enc, "p")), 1);
    assert_non_null(json_string_value(json_object_get(enc, "salt")));
    assert_non_null(json_string_value(json_object_get(enc, "nonce")));
    assert_non_null(json_string_value(json_object_get(enc, "wrapped_keys")));
    json_decref(cfg);

    assert_int_equal(repo_open(f->path, "wrong", &r2, err, sizeof(err)), -EACCES);
    assert_null(r2);
    CHECK(strstr(err, "wrong passphrase"), "err: %s", err);
    assert_int_equal(repo_open(f->path, NULL, &r2, err, sizeof(err)), -EACCES);
    CHECK(strstr(err, "passphrase required"), "err: %s", err);

    /* A second handle gets the same keys: it reads what the first wrote. */
    struct chunk_id id = chunk_make(f->r, 1);
    assert_int_equal(repo_open(f->path, PASS, &r2, err, sizeof(err)), 0);
    assert_true(chunk_ok(r2, &id));
    repo_close(r2);
}

static void test_init_errors(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN];
    static const uint32_t bad_sizes[] = {1000, 3 * CS, REPO_MIN_CHUNK_SIZE / 2,
                                         REPO_MAX_CHUNK_SIZE * 2};
    for (size_t i = 0; i < ARRAY_SIZE(bad_sizes); i++) {
        struct repo_init_options opt = {.chunk_size = bad_sizes[i]};
        err[0] = '\0';
        assert_int_equal(repo_init(f->path, &opt, err, sizeof(err)), -EINVAL);
        CHECK(strstr(err, "chunk size"), "err: %s", err);
        assert_false(file_exists(f->path));
    }
    struct repo_init_options empty_pass = {.passphrase = ""};
    assert_int_equal(repo_init(f->path, &empty_pass, err, sizeof(err)), -EINVAL);
    struct repo_init_options bad_level = {.zstd_level = 1000};
    assert_int_equal(repo_init(f->path, &bad_level, err, sizeof(err)), -EINVAL);

    /* Existing repository, non-empty directory, a file. */
    repo_make(f, NULL);
    assert_int_equal(repo_init(f->path, NULL, err, sizeof(err)), -EEXIST);
    CHECK(strstr(err, "not an empty directory"), "err: %s", err);
    char p[PATH_MAX + 16];
    PATHF(p, "%s/file", f->base);
    file_write(p, "x", 1);
    assert_int_equal(repo_init(p, NULL, err, sizeof(err)), -EEXIST);
}

static void test_open_errors(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    struct repo *r = NULL;

    /* Not a repository: an empty directory, a missing path. */
    assert_int_equal(repo_open(f->base, NULL, &r, err, sizeof(err)), -ENOENT);
    CHECK(strstr(err, "not a vmexport repository (no config file)"), "err: %s", err);
    assert_int_equal(repo_open(f->path, NULL, &r, err, sizeof(err)), -ENOENT);
    CHECK(strstr(err, f->path) && strstr(err, "No such file or directory"), "err: %s", err);
    assert_null(r);

    repo_make(f, NULL);
    repo_close(f->r);
    f->r = NULL;

    /* Unknown format version. */
    json_t *cfg = config_load(f);
    json_object_set_new(cfg, "version", json_integer(REPO_FORMAT_VERSION + 1));
    config_store(f, cfg);
    assert_int_equal(repo_open(f->path, NULL, &r, err, sizeof(err)), -EPROTONOSUPPORT);
    CHECK(strstr(err, "repository format version 4 is not supported by this vmexport "
                      "(supports 1 to 3)"),
          "err: %s", err);
    json_object_set_new(cfg, "version", json_integer(0));
    config_store(f, cfg);
    assert_int_equal(repo_open(f->path, NULL, &r, err, sizeof(err)), -EPROTONOSUPPORT);

    /* Bad chunk size, wrong format, garbage. */
    json_object_set_new(cfg, "version", json_integer(1));
    json_object_set_new(cfg, "chunk_size", json_integer(12345));
    config_store(f, cfg);
    assert_int_equal(repo_open(f->path, NULL, &r, err, sizeof(err)), -EBADMSG);
    json_object_set_new(cfg, "chunk_size", json_integer(CS));
    json_object_set_new(cfg, "format", json_string("something-else"));
    config_store(f, cfg);
    assert_int_equal(repo_open(f->path, NULL, &r, err, sizeof(err)), -EBADMSG);
    json_object_set_new(cfg, "format", json_string("vmexport-repository"));
    json_object_set_new(cfg, "encryption", json_string("yes"));
    config_store(f, cfg);
    assert_int_equal(repo_open(f->path, NULL, &r, err, sizeof(err)), -EBADMSG);
    json_object_set_new(cfg, "encryption", json_null());
    config_store(f, cfg);
    assert_int_equal(repo_open(f->path, NULL, &r, err, sizeof(err)), 0);
    repo_close(r);
    json_decref(cfg);

    char p[PATH_MAX + 16];
    PATHF(p, "%s/config", f->path);
    file_write(p, "{\"format\": ", strlen("{\"format\": "));
    assert_int_equal(repo_open(f->path, NULL, &r, err, sizeof(err)), -EBADMSG);
    assert_null(r);
}

static void test_open_encrypted_tampered(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    struct repo *r = NULL;

    repo_make(f, PASS);
    repo_close(f->r);
    f->r = NULL;
    json_t *cfg = config_load(f);
    json_t *enc = json_object_get(cfg, "encryption");

    /* Another salt derives another key: it looks like a wrong passphrase. */
    char *salt = strdup(json_string_value(json_object_get(enc, "salt")));
    char zeros[45]; /* base64 of 32 zero bytes */
    memset(zeros, 'A', 43);
    zeros[43] = '=';
    zeros[44] = '\0';
    json_object_set_new(enc, "salt", json_string(zeros));
    config_store(f, cfg);
    assert_int_equal(repo_open(f->path, PASS, &r, err, sizeof(err)), -EACCES);
    /* Absurd scrypt parameters and bad base64 are refused before any work. */
    json_object_set_new(enc, "salt", json_string(salt));
    json_object_set_new(enc, "N", json_integer(1ll << 40));
    config_store(f, cfg);
    assert_int_equal(repo_open(f->path, PASS, &r, err, sizeof(err)), -EBADMSG);
    json_object_set_new(enc, "N", json_integer(32768));
    json_object_set_new(enc, "nonce", json_string("not base64!"));
    config_store(f, cfg);
    assert_int_equal(repo_open(f->path, PASS, &r, err, sizeof(err)), -EBADMSG);
    free(salt);
    json_decref(cfg);
}

/* Open f->path with pass: the return code, the message in err. */
static int reopen(struct fixture *f, const char *pass, char *err)
{
    struct repo *r = NULL;
    err[0] = '\0';
    int ret = repo_open(f->path, pass, &r, err, ERR_LEN);
    assert_true((ret == 0) == (r != NULL));
    repo_close(r);
    return ret;
}

/* A passphrase given for a repository whose config says "not encrypted" is refused: the
 * config may have been downgraded by someone who removed its encryption section. */
static void test_open_plain_with_passphrase(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN];
    repo_make(f, NULL);
    assert_int_equal(reopen(f, PASS, err), -EPERM);
    CHECK(strstr(err, "a passphrase was given, but the repository's config says it is not "
                      "encrypted"),
          "err: %s", err);
    assert_int_equal(reopen(f, NULL, err), 0);
    json_t *cfg = config_load(f);
    assert_string_equal(repo_id(f->r), json_string_value(json_object_get(cfg, "id")));
    json_decref(cfg);
}

/* Every change to an encrypted repository's config made without the key is refused, before
 * anything is written; the untouched config still opens. */
static void test_config_mac(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN], p[PATH_MAX + 16];
    repo_make(f, PASS);
    assert_false(repo_config_unsealed(f->r));
    repo_close(f->r);
    f->r = NULL;
    PATHF(p, "%s/config", f->path);
    json_t *orig = config_load(f);
    CHECK(json_is_string(json_object_get(orig, "mac")), "a new encrypted config has a MAC");

    struct {
        const char *what, *key, *subkey;
        json_t *value; /* NULL: remove the member */
        int want;
    } cases[] = {
        {"chunk size", "chunk_size", NULL, json_integer(CS * 2), -EBADMSG},
        {"compression level", "compression_level", NULL, json_integer(19), -EBADMSG},
        {"format version", "version", NULL, json_integer(1), -EBADMSG},
        {"an added member", "comment", NULL, json_string("x"), -EBADMSG},
        {"the MAC itself", "mac", NULL, json_string("AAAA"), -EBADMSG},
        {"the scrypt N", "encryption", "N", json_integer(1024), -EACCES},
        {"the scrypt p", "encryption", "p", json_integer(2), -EACCES},
        {"the encryption section (MAC kept)", "encryption", NULL, json_null(), -EBADMSG},
        {"the encryption section (member removed)", "encryption", NULL, NULL, -EBADMSG},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        json_t *cfg = json_deep_copy(orig);
        json_t *target = cases[i].subkey ? json_object_get(cfg, cases[i].key) : cfg;
        const char *key = cases[i].subkey ? cases[i].subkey : cases[i].key;
        if (cases[i].value)
            json_object_set_new(target, key, cases[i].value);
        else
            json_object_del(target, key);
        config_store(f, cfg);
        json_decref(cfg);
        struct stat before;
        assert_int_equal(stat(p, &before), 0);
        int ret = reopen(f, PASS, err);
        CHECK(ret == cases[i].want, "%s changed: open gave %d (%s), want %d", cases[i].what, ret,
              err, cases[i].want);
        if (ret == -EBADMSG)
            CHECK(strstr(err, "the config was changed by someone without the repository key") ||
                      strstr(err, "no \"encryption\" settings: they were removed"),
                  "%s: err: %s", cases[i].what, err);
        else
            CHECK(strstr(err, "key-derivation settings were changed"), "%s: err: %s", cases[i].what,
                  err);
        struct stat after;
        assert_int_equal(stat(p, &after), 0);
        CHECK(after.st_ino == before.st_ino && after.st_size == before.st_size,
              "%s: the config was rewritten", cases[i].what);
    }
    /* Encryption section and MAC both removed: a plain config, which a passphrase exposes. */
    json_t *cfg = json_deep_copy(orig);
    json_object_set_new(cfg, "encryption", json_null());
    json_object_del(cfg, "mac");
    config_store(f, cfg);
    json_decref(cfg);
    assert_int_equal(reopen(f, PASS, err), -EPERM);

    config_store(f, orig);
    assert_int_equal(reopen(f, PASS, err), 0);
    json_decref(orig);
    assert_int_equal(count_tmp_files(f->base), 0);
}

/* The config of an encrypted repository from before configs had a MAC: read, not written to,
 * until repo_config_seal(); then sealed like a new one. */
static void test_config_legacy_unsealed(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    repo_make(f, PASS);
    struct chunk_id id = chunk_make(f->r, 7);
    repo_close(f->r);
    f->r = NULL;
    json_t *cfg = config_load(f);
    json_object_del(cfg, "mac");
    config_store(f, cfg);
    json_decref(cfg);

    assert_int_equal(repo_open(f->path, PASS, &f->r, err, sizeof(err)), 0);
    assert_true(repo_config_unsealed(f->r));
    assert_true(chunk_ok(f->r, &id)); /* reading works */
    struct backup_writer *w = NULL;
    assert_int_equal(repo_backup_begin(f->r, "vm", 100, 0, &w, err, sizeof(err)), -EPERM);
    assert_null(w);
    CHECK(strstr(err, "carries no MAC") && strstr(err, "vmexport repo upgrade"), "err: %s", err);
    uint8_t data[SMALL] = {1};
    struct chunk_id id2;
    repo_chunk_id(f->r, data, sizeof(data), &id2);
    assert_int_equal(repo_chunk_put(f->r, &id2, data, sizeof(data), NULL, NULL), -EPERM);
    struct chunk_batch *batch = NULL;
    assert_int_equal(repo_chunk_batch_new(f->r, &batch), -EPERM);
    assert_int_equal(repo_gc(f->r, false, NULL, err, sizeof(err)), -EPERM);
    assert_int_equal(repo_gc(f->r, true, NULL, err, sizeof(err)), 0); /* dry run: reads only */
    struct prune_policy keep1 = {.keep_last = 1};
    assert_int_equal(repo_prune(f->r, NULL, &keep1, 0, false, NULL, err, sizeof(err)), -EPERM);

    assert_int_equal(repo_config_seal(f->r, err, sizeof(err)), 0);
    assert_false(repo_config_unsealed(f->r));
    assert_int_equal(repo_backup_begin(f->r, "vm", 100, 0, &w, err, sizeof(err)), 0);
    repo_backup_abort(w);
    repo_close(f->r);
    f->r = NULL;
    cfg = config_load(f);
    CHECK(json_is_string(json_object_get(cfg, "mac")), "sealed config has a MAC");
    json_object_set_new(cfg, "chunk_size", json_integer(CS * 4));
    config_store(f, cfg);
    assert_int_equal(reopen(f, PASS, err), -EBADMSG); /* and is now checked */
    json_object_set_new(cfg, "chunk_size", json_integer(CS));
    config_store(f, cfg);
    json_decref(cfg);
    assert_int_equal(repo_open(f->path, PASS, &f->r, err, sizeof(err)), 0);
    assert_true(chunk_ok(f->r, &id));
    assert_int_equal(repo_config_seal(f->r, err, sizeof(err)), 0); /* nothing to do */

    /* A plain repository has no key to seal with. */
    char p2[PATH_MAX + 16];
    struct repo *r2;
    PATHF(p2, "%s/plain", f->base);
    assert_int_equal(repo_init(p2, NULL, err, sizeof(err)), 0);
    assert_int_equal(repo_open(p2, NULL, &r2, err, sizeof(err)), 0);
    assert_false(repo_config_unsealed(r2));
    assert_int_equal(repo_config_seal(r2, err, sizeof(err)), -EINVAL);
    repo_close(r2);
}

/* ---- chunks ---- */

static void test_chunk_id_hex(void **state)
{
    (void)state;
    struct chunk_id id, back;
    char hex[2 * HASH_SIZE + 1];
    for (int i = 0; i < HASH_SIZE; i++)
        id.b[i] = (uint8_t)(i * 7 + 3);
    chunk_id_to_hex(&id, hex);
    assert_int_equal(strlen(hex), 2 * HASH_SIZE);
    assert_int_equal(chunk_id_from_hex(hex, &back), 0);
    assert_memory_equal(id.b, back.b, HASH_SIZE);
    for (char *c = hex; *c; c++) /* upper case is accepted */
        if (*c >= 'a' && *c <= 'f')
            *c = (char)(*c - 'a' + 'A');
    assert_int_equal(chunk_id_from_hex(hex, &back), 0);
    assert_memory_equal(id.b, back.b, HASH_SIZE);
    assert_int_equal(chunk_id_from_hex("abc", &back), -EINVAL);
    hex[10] = 'g';
    assert_int_equal(chunk_id_from_hex(hex, &back), -EINVAL);
    char longer[2 * HASH_SIZE + 2];
    memset(longer, 'a', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    assert_int_equal(chunk_id_from_hex(longer, &back), -EINVAL);
}

static void chunk_roundtrips(struct fixture *f)
{
    struct repo *r = f->r;
    uint8_t *data = malloc(CS + 1), *out = malloc(CS);
    size_t len;
    bool stored;
    uint64_t written;
    assert_non_null(data);
    assert_non_null(out);

    struct {
        const char *what;
        size_t len;
        bool compressible;
    } cases[] = {
        {"random", SMALL, false},          {"compressible", CS, true}, {"empty", 0, false},
        {"exactly chunk_size", CS, false}, {"one byte", 1, false},
    };
    for (size_t c = 0; c < ARRAY_SIZE(cases); c++) {
        struct chunk_id id, check;
        if (cases[c].compressible) {
            for (size_t i = 0; i < cases[c].len; i++)
                data[i] = (uint8_t)("vmexport "[i % 9]);
        } else {
            fill_random(data, cases[c].len, 100 + c);
        }
        repo_chunk_id(r, data, cases[c].len, &id);
        if (!repo_encrypted(r)) {
            /* Plain repositories name chunks by their SHA-256. */
            assert_int_equal(hash_sha256(data, cases[c].len, check.b), 0);
            assert_memory_equal(id.b, check.b, HASH_SIZE);
        }
        assert_false(repo_chunk_exists(r, &id));
        assert_int_equal(repo_chunk_put(r, &id, data, cases[c].len, &stored, &written), 0);
        CHECK(stored && written > 0, "%s: stored %d written %llu", cases[c].what, stored,
              (unsigned long long)written);
        if (cases[c].compressible)
            CHECK(written < cases[c].len / 10, "%s: %llu bytes", cases[c].what,
                  (unsigned long long)written);
        assert_true(repo_chunk_exists(r, &id));
        memset(out, 0xAA, CS);
        assert_int_equal(repo_chunk_get(r, &id, out, CS, &len), 0);
        assert_int_equal(len, cases[c].len);
        if (len)
            assert_memory_equal(out, data, len);

        /* Deduplication. */
        assert_int_equal(repo_chunk_put(r, &id, data, cases[c].len, &stored, &written), 0);
        assert_false(stored);
        assert_int_equal(written, 0);
    }

    /* Too big to put; a buffer too small to get. */
    struct chunk_id id;
    fill_random(data, CS + 1, 7);
    repo_chunk_id(r, data, CS + 1, &id);
    assert_int_equal(repo_chunk_put(r, &id, data, CS + 1, &stored, NULL), -EINVAL);
    repo_chunk_id(r, data, CS, &id);
    assert_int_equal(repo_chunk_put(r, &id, data, CS, NULL, NULL), 0);
    assert_int_equal(repo_chunk_get(r, &id, out, CS - 1, &len), -ENOBUFS);

    /* IDs of the same data differ between keyed repositories and plain ones. */
    struct chunk_id sha;
    repo_chunk_id(r, data, CS, &id);
    assert_int_equal(hash_sha256(data, CS, sha.b), 0);
    assert_int_equal(memcmp(id.b, sha.b, HASH_SIZE) != 0, repo_encrypted(r));

    assert_int_equal(count_tmp_files(f->path), 0);
    free(data);
    free(out);
}

static void test_chunk_roundtrip_plain(void **state)
{
    struct fixture *f = *state;
    repo_make(f, NULL);
    chunk_roundtrips(f);
}

static void test_chunk_roundtrip_encrypted(void **state)
{
    struct fixture *f = *state;
    repo_make(f, PASS);
    chunk_roundtrips(f);
}

/* Incompressible data with a marker in it: plain repositories store it as is, encrypted ones
 * must not show it. */
static void test_chunk_confidential(void **state)
{
    struct fixture *f = *state;
    uint8_t *data = malloc(SMALL), marker[MARKER_LEN];
    char plain_path[PATH_MAX + 16], p[PATH_MAX + 128];
    assert_non_null(data);
    fill_random(data, SMALL, 42);
    for (int i = 0; i < MARKER_LEN; i++)
        marker[i] = (uint8_t)("SECRET-MARKER-0123456789-abcdef!"[i]);
    memcpy(data + SMALL / 2, marker, MARKER_LEN);

    for (int enc = 0; enc < 2; enc++) {
        struct chunk_id id;
        size_t len;
        PATHF(plain_path, "%s/%s", f->base, enc ? "enc" : "plain");
        repo_make_at(f, plain_path, enc ? PASS : NULL);
        repo_chunk_id(f->r, data, SMALL, &id);
        assert_int_equal(repo_chunk_put(f->r, &id, data, SMALL, NULL, NULL), 0);
        char hex[2 * HASH_SIZE + 1];
        chunk_id_to_hex(&id, hex);
        PATHF(p, "%s/chunks/%.2s/%s", plain_path, hex, hex);
        uint8_t *file = file_read(p, &len);
        assert_non_null(file);
        assert_memory_equal(file, "VXCK", 4);
        CHECK(buf_contains(file, len, marker, MARKER_LEN) == !enc, "enc=%d", enc);
        free(file);
        repo_close(f->r);
        f->r = NULL;
    }
    free(data);
}

static void corruption(struct fixture *f)
{
    struct repo *r = f->r;
    uint8_t *buf = malloc(CS);
    char pa[PATH_MAX + 128], pb[PATH_MAX + 128];
    size_t len, flen;
    assert_non_null(buf);

    /* Small chunks keep the byte-by-byte loops short. */
    uint8_t small[200], plain[2][200];
    struct chunk_id a, b;
    fill_random(small, sizeof(small), 5);
    memcpy(plain[0], small, sizeof(small));
    repo_chunk_id(r, small, sizeof(small), &a);
    assert_int_equal(repo_chunk_put(r, &a, small, sizeof(small), NULL, NULL), 0);
    memset(small, 'z', sizeof(small)); /* compressible: a zstd frame inside */
    memcpy(plain[1], small, sizeof(small));
    repo_chunk_id(r, small, sizeof(small), &b);
    assert_int_equal(repo_chunk_put(r, &b, small, sizeof(small), NULL, NULL), 0);
    chunk_path(f, &a, pa, sizeof(pa));
    chunk_path(f, &b, pb, sizeof(pb));

    const char *paths[] = {pa, pb};
    const struct chunk_id *ids[] = {&a, &b};
    for (int k = 0; k < 2; k++) {
        uint8_t *orig = file_read(paths[k], &flen);
        assert_non_null(orig);
        /* Every single flipped byte. */
        for (size_t i = 0; i < flen; i++) {
            orig[i] ^= 0x01;
            file_write(paths[k], orig, flen);
            int ret = repo_chunk_get(r, ids[k], buf, CS, &len);
            CHECK(ret == -EBADMSG, "flip at %zu of %zu: %d", i, flen, ret);
            /* repo_chunk_read (restore) skips a plain container's checksum: it must return
             * the exact data for a flip in the checksum itself, and otherwise either refuse
             * or (a flip zstd ignores) still return exactly the original data: never other
             * data, since the ID of what it returns is checked. */
            bool in_sum = !repo_encrypted(r) && i >= flen - plain_trailer(r);
            ret = repo_chunk_read(r, ids[k], buf, CS, &len);
            CHECK(ret == -EBADMSG || (ret == 0 && !repo_encrypted(r)) || (in_sum && ret == 0),
                  "read: flip at %zu of %zu: %d", i, flen, ret);
            CHECK(!in_sum || ret == 0, "read: flip in the checksum at %zu: %d", i, ret);
            if (ret == 0)
                CHECK(len == sizeof(plain[k]) && !memcmp(buf, plain[k], len),
                      "read: flip at %zu returned other data", i);
            orig[i] ^= 0x01;
        }
        /* Every truncation, and garbage appended. */
        for (size_t n = 0; n < flen; n++) {
            file_write(paths[k], orig, n);
            int ret = repo_chunk_get(r, ids[k], buf, CS, &len);
            CHECK(ret == -EBADMSG, "truncated to %zu of %zu: %d", n, flen, ret);
            ret = repo_chunk_read(r, ids[k], buf, CS, &len);
            CHECK(ret == -EBADMSG, "read: truncated to %zu of %zu: %d", n, flen, ret);
        }
        uint8_t *longer = malloc(flen + 1);
        memcpy(longer, orig, flen);
        longer[flen] = 0;
        file_write(paths[k], longer, flen + 1);
        assert_int_equal(repo_chunk_get(r, ids[k], buf, CS, &len), -EBADMSG);
        free(longer);
        /* Random garbage of various sizes. */
        for (size_t n = 1; n < 4096; n = n * 3 + 1) {
            uint8_t *junk = malloc(n);
            fill_random(junk, n, n);
            if (n >= 4)
                memcpy(junk, "VXCK", 4);
            file_write(paths[k], junk, n);
            assert_int_equal(repo_chunk_get(r, ids[k], buf, CS, &len), -EBADMSG);
            free(junk);
        }
        file_write(paths[k], orig, flen);
        assert_int_equal(repo_chunk_get(r, ids[k], buf, CS, &len), 0);
        free(orig);
    }

    /* Swapped files: each is a valid container, of another ID. */
    char tmp[PATH_MAX + 140];
    PATHF(tmp, "%s.swap", pa);
    assert_int_equal(rename(pa, tmp), 0);
    assert_int_equal(rename(pb, pa), 0);
    assert_int_equal(rename(tmp, pb), 0);
    assert_int_equal(repo_chunk_get(r, &a, buf, CS, &len), -EBADMSG);
    assert_int_equal(repo_chunk_get(r, &b, buf, CS, &len), -EBADMSG);

    /* Missing. */
    assert_int_equal(unlink(pa), 0);
    assert_int_equal(repo_chunk_get(r, &a, buf, CS, &len), -ENOENT);
    assert_false(repo_chunk_exists(r, &a));
    free(buf);
}

static void test_chunk_corruption_plain(void **state)
{
    struct fixture *f = *state;
    repo_make(f, NULL);
    corruption(f);
}

/* Turn the fixture's fresh repository into a format version 1 one (as an older vmexport made
 * it) and reopen it. */
static void repo_make_v1(struct fixture *f, const char *pass)
{
    char err[ERR_LEN] = "";
    repo_make(f, pass);
    repo_close(f->r);
    f->r = NULL;
    json_t *cfg = config_load(f);
    json_object_set_new(cfg, "version", json_integer(1));
    json_object_del(cfg, "mac"); /* version 1 configs had none */
    config_store(f, cfg);
    json_decref(cfg);
    int r = repo_open(f->path, pass, &f->r, err, sizeof(err));
    CHECK(r == 0, "repo_open v1: %d %s", r, err);
    assert_int_equal(f->r->format_version, 1);
    if (pass) { /* what 'vmexport repo upgrade' does, before anything is written */
        r = repo_config_seal(f->r, err, sizeof(err));
        CHECK(r == 0, "repo_config_seal v1: %d %s", r, err);
    }
}

/* Version 1 repositories are still read and written, with their own container layout
 * (version byte 1, SHA-256 checksum); new ones are version 2 (XXH3-128 checksum). */
static void test_format_versions(void **state)
{
    struct fixture *f = *state;
    const struct {
        unsigned version;
        const char *pass;
        size_t trailer;
    } cases[] = {{2, NULL, 16}, {1, NULL, HASH_SIZE}, {2, PASS, 16}, {1, PASS, 16}};
    for (size_t c = 0; c < ARRAY_SIZE(cases); c++) {
        if (cases[c].version == 1)
            repo_make_v1(f, cases[c].pass);
        else
            repo_make(f, cases[c].pass);
        assert_int_equal(f->r->format_version, cases[c].version);
        uint8_t data[3000], out[3000];
        size_t len, flen;
        char path[PATH_MAX + 128];
        fill_random(data, sizeof(data), 77 + c); /* incompressible: stored raw */
        struct chunk_id id;
        repo_chunk_id(f->r, data, sizeof(data), &id);
        assert_int_equal(repo_chunk_put(f->r, &id, data, sizeof(data), NULL, NULL), 0);
        chunk_path(f, &id, path, sizeof(path));
        uint8_t *file = file_read(path, &flen);
        assert_non_null(file);
        assert_int_equal(file[4], cases[c].version);
        size_t nonce = cases[c].pass ? CONTAINER_NONCE_SIZE : 0;
        CHECK(flen == CONTAINER_HEADER_SIZE + nonce + sizeof(data) + cases[c].trailer,
              "case %zu: container of %zu bytes", c, flen);
        assert_int_equal(repo_chunk_get(f->r, &id, out, sizeof(out), &len), 0);
        assert_true(len == sizeof(data) && !memcmp(out, data, len));
        /* A container of the other version is refused. */
        file[4] = (uint8_t)(3 - cases[c].version);
        file_write(path, file, flen);
        assert_int_equal(repo_chunk_get(f->r, &id, out, sizeof(out), &len), -EBADMSG);
        free(file);
        repo_close(f->r);
        f->r = NULL;
        char cmd[PATH_MAX + 16];
        PATHF(cmd, "rm -rf '%s'", f->path);
        assert_int_equal(system(cmd), 0);
    }
}

static void test_chunk_corruption_plain_v1(void **state)
{
    struct fixture *f = *state;
    repo_make_v1(f, NULL);
    corruption(f);
}

static void test_chunk_corruption_encrypted(void **state)
{
    struct fixture *f = *state;
    repo_make(f, PASS);
    corruption(f);
}

/* A chunk of a plain repository copied into an encrypted one (and the other way) is refused. */
static void test_chunk_cross_repo(void **state)
{
    struct fixture *f = *state;
    char pp[PATH_MAX + 16], pe[PATH_MAX + 16], src[PATH_MAX + 128], dst[PATH_MAX + 128];
    struct repo *plain, *enc;
    uint8_t data[300], out[CS];
    struct chunk_id id;
    size_t len;

    PATHF(pp, "%s/plain", f->base);
    PATHF(pe, "%s/enc", f->base);
    repo_make_at(f, pp, NULL);
    plain = f->r;
    repo_make_at(f, pe, PASS);
    enc = f->r;
    f->r = NULL;

    fill_random(data, sizeof(data), 9);
    repo_chunk_id(enc, data, sizeof(data), &id);
    assert_int_equal(repo_chunk_put(plain, &id, data, sizeof(data), NULL, NULL), 0);
    char hex[2 * HASH_SIZE + 1];
    chunk_id_to_hex(&id, hex);
    PATHF(src, "%s/chunks/%.2s/%s", pp, hex, hex);
    PATHF(dst, "%s/chunks/%.2s", pe, hex);
    mkdir(dst, 0700);
    PATHF(dst, "%s/chunks/%.2s/%s", pe, hex, hex);
    size_t flen;
    uint8_t *file = file_read(src, &flen);
    file_write(dst, file, flen);
    free(file);
    assert_int_equal(repo_chunk_get(enc, &id, out, sizeof(out), &len), -EBADMSG);
    /* In the plain repository it is stored under an ID that is not its SHA-256. */
    assert_int_equal(repo_chunk_get(plain, &id, out, sizeof(out), &len), -EBADMSG);
    repo_close(plain);
    repo_close(enc);
}

struct foreach_ctx {
    size_t n;
    size_t stop_after;
    struct chunk_id seen[16];
};

static int foreach_fn(void *opaque, const struct chunk_id *id)
{
    struct foreach_ctx *c = opaque;
    if (c->n < ARRAY_SIZE(c->seen))
        c->seen[c->n] = *id;
    c->n++;
    return c->stop_after && c->n >= c->stop_after ? -ECANCELED : 0;
}

static bool seen(const struct foreach_ctx *c, const struct chunk_id *id)
{
    for (size_t i = 0; i < c->n && i < ARRAY_SIZE(c->seen); i++)
        if (!memcmp(c->seen[i].b, id->b, HASH_SIZE))
            return true;
    return false;
}

static void test_chunk_foreach_delete(void **state)
{
    struct fixture *f = *state;
    struct chunk_id ids[10];
    repo_make(f, NULL);
    for (int i = 0; i < 10; i++)
        ids[i] = chunk_make(f->r, (uint64_t)i);

    /* Stray files are not chunks. */
    char p[PATH_MAX + 64];
    PATHF(p, "%s/chunks/zz", f->path);
    assert_int_equal(mkdir(p, 0700), 0);
    PATHF(p, "%s/chunks/zz/notachunk", f->path);
    file_write(p, "x", 1);

    struct foreach_ctx c = {0};
    assert_int_equal(repo_chunk_foreach(f->r, foreach_fn, &c), 0);
    assert_int_equal(c.n, 10);
    for (int i = 0; i < 10; i++)
        assert_true(seen(&c, &ids[i]));

    assert_int_equal(repo_chunk_delete(f->r, &ids[3]), 0);
    assert_int_equal(repo_chunk_delete(f->r, &ids[3]), -ENOENT);
    memset(&c, 0, sizeof(c));
    assert_int_equal(repo_chunk_foreach(f->r, foreach_fn, &c), 0);
    assert_int_equal(c.n, 9);
    assert_false(seen(&c, &ids[3]));

    struct foreach_ctx stop = {.stop_after = 4};
    assert_int_equal(repo_chunk_foreach(f->r, foreach_fn, &stop), -ECANCELED);
    assert_int_equal(stop.n, 4);
}

/* Containers authenticated with the real key but inconsistent inside (what a bug or the key's
 * holder could make): refused, and nothing is written past a buffer. */
static void forged_write_at(struct fixture *f, const char *path, const char *ident, uint8_t flags,
                            uint64_t plain_len, const uint8_t *payload, size_t plen)
{
    size_t flen = CONTAINER_HEADER_SIZE + CONTAINER_NONCE_SIZE + plen + CONTAINER_TAG_SIZE;
    uint8_t *file = calloc(1, flen);
    assert_non_null(file);
    memcpy(file, "VXCK", 4);
    file[4] = (uint8_t)f->r->format_version;
    file[5] = flags;
    for (int i = 0; i < 8; i++)
        file[8 + i] = (uint8_t)(plain_len >> (8 * i));
    uint8_t *nonce = file + CONTAINER_HEADER_SIZE, *ct = nonce + CONTAINER_NONCE_SIZE;
    fill_random(nonce, CONTAINER_NONCE_SIZE, plen);
    struct iovec aad[] = {{.iov_base = file, .iov_len = CONTAINER_HEADER_SIZE},
                          {.iov_base = (void *)ident, .iov_len = strlen(ident)}};
    assert_int_equal(repo_gcm_encrypt(f->r->data_key, nonce, aad, 2, payload, plen, ct, ct + plen),
                     0);
    file_write(path, file, flen);
    free(file);
}

static void forged_write(struct fixture *f, const struct chunk_id *id, uint8_t flags,
                         uint64_t plain_len, const uint8_t *payload, size_t plen)
{
    char path[2 * PATH_MAX], hex[2 * HASH_SIZE + 1], ident[sizeof("chunk:") + 2 * HASH_SIZE];
    chunk_id_to_hex(id, hex);
    PATHF(ident, "chunk:%s", hex);
    chunk_path(f, id, path, sizeof(path));
    forged_write_at(f, path, ident, flags, plain_len, payload, plen);
}

static void test_container_forged(void **state)
{
    struct fixture *f = *state;
    repo_make(f, PASS);
    uint8_t data[100], *out = malloc(CS);
    size_t len;
    fill_random(data, sizeof(data), 3);
    struct chunk_id id = chunk_make(f->r, 1); /* creates the file and its directory */

    static const struct {
        uint8_t flags;
        uint64_t plain_len;
    } cases[] = {
        {0x02, 10},               /* raw, shorter than the payload */
        {0x02, 200},              /* raw, longer */
        {0x03, 100},              /* "zstd", not a frame */
        {0x06, 100},              /* unknown flag */
        {0x02, (uint64_t)CS + 1}, /* over the chunk size */
        {0x02, UINT64_MAX},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        forged_write(f, &id, cases[i].flags, cases[i].plain_len, data, sizeof(data));
        int ret = repo_chunk_get(f->r, &id, out, CS, &len);
        CHECK(ret == -EBADMSG, "case %zu: %d", i, ret);
    }
    /* A real frame announcing another length than the header. */
    uint8_t frame[64];
    memset(out, 'a', 1000);
    size_t fl = ZSTD_compress(frame, sizeof(frame), out, 1000, 1);
    assert_false(ZSTD_isError(fl));
    forged_write(f, &id, 0x03, 999, frame, fl);
    assert_int_equal(repo_chunk_get(f->r, &id, out, CS, &len), -EBADMSG);
    /* Metadata buffers are sized from the header: a short one must not be overrun. */
    char meta[2 * PATH_MAX];
    uint8_t *text;
    PATHF(meta, "%s/forged", f->path);
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        forged_write_at(f, meta, "file:forged", cases[i].flags, cases[i].plain_len, data,
                        sizeof(data));
        int ret = repo_meta_read(f->r, "forged", &text, &len);
        CHECK(ret == -EBADMSG, "meta case %zu: %d", i, ret);
    }
    /* Consistent, but not the data of this ID. */
    forged_write(f, &id, 0x02, sizeof(data), data, sizeof(data));
    assert_int_equal(repo_chunk_get(f->r, &id, out, CS, &len), -EBADMSG);
    free(out);
}

/* ---- manifests and backups ---- */

static void test_manifest_new(void **state)
{
    (void)state;
    struct manifest m;
    static const struct {
        uint64_t size;
        uint64_t n;
    } cases[] = {{0, 0}, {1, 1}, {CS, 1}, {CS + 1, 2}, {10 * (uint64_t)CS, 10}};
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        assert_int_equal(manifest_new(&m, "sda", cases[i].size, CS), 0);
        assert_int_equal(manifest_chunks(&m), cases[i].n);
        assert_string_equal(m.disk, "sda");
        assert_int_equal(m.chunk_size, CS);
        assert_null(m.change_id);
        assert_int_equal(m.n_entries, 0); /* every chunk zeros */
        for (uint64_t k = 0; k < cases[i].n; k++)
            assert_null(manifest_find(&m, k));
        manifest_free(&m);
    }
    assert_int_equal(manifest_new(&m, "sda", 1, 1000), -EINVAL);
    assert_int_equal(manifest_new(&m, "", 1, CS), -EINVAL);
    manifest_free(&m); /* harmless on a failed/zeroed manifest */
}

static void manifest_roundtrip(struct fixture *f)
{
    struct repo *r = f->r;
    char err[ERR_LEN] = "";
    struct backup_writer *w;
    struct manifest m, m2, back;
    const uint64_t n = 37;

    assert_int_equal(repo_backup_begin(r, "vm1", 1700000000, 0, &w, err, sizeof(err)), 0);
    assert_int_equal(manifest_new(&m, "sda", n * CS - 5, CS), 0);
    m.change_id = strdup("change-42");
    m.snapshot_path = strdup("/snapshots/x/sda.img");
    for (uint64_t i = 0; i < n; i++) {
        if (i % 3 == 0)
            continue; /* zero */
        struct chunk_id id;
        fill_random(id.b, HASH_SIZE, i);
        assert_int_equal(manifest_append(&m, i, &id), 0);
    }
    /* Out of order, repeated or beyond the disk: refused. */
    struct chunk_id junk = {{0}};
    assert_int_equal(manifest_append(&m, n - 3, &junk), -EINVAL); /* the last is n - 2 */
    assert_int_equal(manifest_append(&m, n - 2, &junk), -EINVAL);
    assert_int_equal(manifest_append(&m, n, &junk), -EINVAL);
    assert_int_equal(repo_backup_add_disk(w, &m), 0);
    assert_int_equal(manifest_new(&m2, "sdb with spaces", 0, CS), 0);
    assert_int_equal(repo_backup_add_disk(w, &m2), 0);
    assert_int_equal(repo_backup_add_disk(w, &m2), -EEXIST); /* same disk twice */
    struct manifest other;
    assert_int_equal(manifest_new(&other, "sdc", CS, CS * 2), 0);
    assert_int_equal(repo_backup_add_disk(w, &other), -EINVAL); /* another chunk size */
    manifest_free(&other);

    struct backup *b = calloc(1, sizeof(*b));
    assert_int_equal(repo_backup_commit(w, b), 0);
    assert_int_equal(b->disks.len, 2);
    assert_string_equal(b->disks.ptr[0].name, "sda");
    assert_string_equal(b->disks.ptr[0].change_id, "change-42");
    assert_int_equal(b->disks.ptr[0].size, n * CS - 5);

    struct backup *got;
    assert_int_equal(repo_backup_get(r, b->id, &got), 0);
    assert_int_equal(repo_manifest_read(r, got, "sda", &back), 0);
    assert_string_equal(back.disk, "sda");
    assert_int_equal(back.disk_size, m.disk_size);
    assert_int_equal(back.chunk_size, CS);
    assert_int_equal(manifest_chunks(&back), n);
    assert_string_equal(back.change_id, "change-42");
    assert_string_equal(back.snapshot_path, "/snapshots/x/sda.img");
    assert_int_equal(back.n_entries, m.n_entries);
    for (uint64_t i = 0; i < n; i++) {
        const struct manifest_entry *a = manifest_find(&m, i), *z = manifest_find(&back, i);
        assert_int_equal(!a, i % 3 == 0);
        assert_int_equal(!a, !z);
        if (a)
            assert_memory_equal(z->id.b, a->id.b, HASH_SIZE);
    }
    manifest_free(&back);
    assert_int_equal(repo_manifest_read(r, got, "sdb with spaces", &back), 0);
    assert_int_equal(manifest_chunks(&back), 0);
    assert_int_equal(back.n_entries, 0);
    assert_null(back.change_id);
    assert_null(back.snapshot_path);
    manifest_free(&back);
    assert_int_equal(repo_manifest_read(r, got, "nope", &back), -ENOENT);

    manifest_free(&m);
    manifest_free(&m2);
    backup_free(got);
    backup_free(b);
}

static void test_manifest_roundtrip_plain(void **state)
{
    struct fixture *f = *state;
    repo_make(f, NULL);
    manifest_roundtrip(f);
}

static void test_manifest_roundtrip_encrypted(void **state)
{
    struct fixture *f = *state;
    repo_make(f, PASS);
    manifest_roundtrip(f);
}

static bool id_format_ok(const char *id, const char *time_part)
{
    if (strlen(id) != 23 || strncmp(id, time_part, 16) || id[16] != '-')
        return false;
    return strspn(id + 17, "0123456789abcdef") == 6;
}

static void test_backup_lifecycle(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    struct backup_writer *w;
    repo_make(f, PASS);
    struct repo *r = f->r;
    struct chunk_id c[3] = {chunk_make(r, 1), chunk_make(r, 2), chunk_make(r, 3)};

    const int64_t t0 = utc(2026, 11, 23, 9, 15);
    assert_int_equal(repo_backup_begin(r, "vm-a", t0, 0, &w, err, sizeof(err)), 0);
    CHECK(id_format_ok(repo_backup_writer_id(w), "20261123T091500Z"), "id %s",
          repo_backup_writer_id(w));
    struct manifest m;
    assert_int_equal(manifest_new(&m, "disk0", 2 * CS, CS), 0);
    assert_int_equal(manifest_append(&m, 0, &c[0]), 0);
    m.change_id = strdup("cid-1");
    assert_int_equal(repo_backup_add_disk(w, &m), 0);
    manifest_free(&m);
    struct backup *b = calloc(1, sizeof(*b));
    b->snapshot_id = strdup("snap-1");
    b->server = strdup("https://server:8443");
    b->vm_json = strdup("{\"name\": \"vm a\", \"cpus\": 2}");
    b->bytes_read = 1234;
    b->bytes_written = 567;
    b->chunks_new = 3;
    b->chunks_reused = 4;
    b->seconds = 1.5;
    b->time = 1; /* replaced by the writer's */
    assert_int_equal(repo_backup_commit(w, b), 0);
    assert_int_equal(b->time, t0);
    assert_string_equal(b->vm_id, "vm-a");

    struct backup *got;
    assert_int_equal(repo_backup_get(r, b->id, &got), 0);
    assert_string_equal(got->id, b->id);
    assert_string_equal(got->vm_id, "vm-a");
    assert_string_equal(got->snapshot_id, "snap-1");
    assert_string_equal(got->server, "https://server:8443");
    assert_string_equal(got->vm_json, b->vm_json);
    assert_null(got->parent_id);
    assert_int_equal(got->time, t0);
    assert_int_equal(got->bytes_read, 1234);
    assert_int_equal(got->bytes_written, 567);
    assert_int_equal(got->chunks_new, 3);
    assert_int_equal(got->chunks_reused, 4);
    assert_true(got->seconds == 1.5);
    assert_int_equal(got->disks.len, 1);
    assert_string_equal(got->disks.ptr[0].name, "disk0");
    assert_string_equal(got->disks.ptr[0].change_id, "cid-1");
    assert_string_equal(got->disks.ptr[0].manifest, "disk-0.manifest");
    backup_free(got);

    /* More backups: an older and a newer one of vm-a, one of a VM with an awkward ID. */
    const char *odd_vm = ".. odd/vm%\xff\x01";
    char err2[ERR_LEN];
    assert_int_equal(repo_backup_begin(r, odd_vm, t0, 0, &w, err2, sizeof(err2)), -EINVAL);
    odd_vm = ".. odd vm%\xff\x01\n";
    char *older = backup_make(r, "vm-a", t0 - DAY, &c[1], 1);
    char *newer = backup_make(r, "vm-a", t0 + DAY, &c[2], 1);
    char *odd = backup_make(r, odd_vm, t0, c, 3);
    char *empty = backup_make(r, "vm-b", t0 - 2 * DAY, NULL, 0);

    backup_list l = VECTOR_INIT;
    assert_int_equal(repo_backup_list(r, NULL, &l), 0);
    assert_int_equal(l.len, 5);
    assert_string_equal(l.ptr[0]->id, empty);
    assert_string_equal(l.ptr[1]->id, older);
    for (size_t i = 1; i < l.len; i++)
        CHECK(l.ptr[i - 1]->time < l.ptr[i]->time || (l.ptr[i - 1]->time == l.ptr[i]->time &&
                                                      strcmp(l.ptr[i - 1]->id, l.ptr[i]->id) < 0),
              "order at %zu", i);
    assert_string_equal(l.ptr[4]->id, newer);
    backup_list_free(&l);
    assert_int_equal(backup_count(r, "vm-a"), 3);
    assert_int_equal(backup_count(r, odd_vm), 1);
    assert_int_equal(backup_count(r, "nobody"), 0);

    /* The odd VM ID survives, stored in an escaped directory name. */
    assert_int_equal(repo_backup_get(r, odd, &got), 0);
    assert_string_equal(got->vm_id, odd_vm);
    struct manifest back;
    assert_int_equal(repo_manifest_read(r, got, "sda", &back), 0);
    assert_int_equal(manifest_chunks(&back), 3);
    assert_int_equal(back.n_entries, 3);
    manifest_free(&back);
    backup_free(got);
    char p[PATH_MAX + 64];
    PATHF(p, "%s/backups/%%2E.%%20odd%%20vm%%25%%FF%%01%%0A/%s", f->path, odd);
    CHECK(file_exists(p), "%s", p);

    assert_int_equal(repo_backup_latest(r, "vm-a", &got), 0);
    assert_string_equal(got->id, newer);
    backup_free(got);
    assert_int_equal(repo_backup_latest(r, "nobody", &got), -ENOENT);
    assert_int_equal(repo_backup_get(r, "20261123T091500Z-000000", &got), -ENOENT);
    assert_int_equal(repo_backup_get(r, "../../config", &got), -ENOENT);

    /* Delete: gone from get, list and latest. */
    assert_int_equal(repo_backup_delete(r, newer), 0);
    assert_int_equal(repo_backup_get(r, newer, &got), -ENOENT);
    assert_int_equal(repo_backup_delete(r, newer), -ENOENT);
    assert_int_equal(repo_backup_latest(r, "vm-a", &got), 0);
    assert_string_equal(got->id, b->id);
    backup_free(got);
    assert_int_equal(backup_count(r, NULL), 4);

    /* Out-of-range times and bad VM IDs. */
    assert_int_equal(repo_backup_begin(r, "vm-a", -1, 0, &w, err, sizeof(err)), -EINVAL);
    assert_int_equal(repo_backup_begin(r, "", t0, 0, &w, err, sizeof(err)), -EINVAL);
    assert_int_equal(count_tmp_files(f->path), 0);

    string_list dmg = VECTOR_INIT;
    assert_int_equal(repo_backup_list_damaged(r, &dmg), 0);
    assert_int_equal(dmg.len, 0);
    string_list_free(&dmg);

    free(older);
    free(newer);
    free(odd);
    free(empty);
    backup_free(b);
}

static void test_backup_long_vm_id(void **state)
{
    struct fixture *f = *state;
    char vm[600];
    repo_make(f, NULL);
    /* Two IDs too long for a file name even unescaped, equal in their first 500 bytes. */
    memset(vm, '#', sizeof(vm) - 1);
    vm[sizeof(vm) - 1] = '\0';
    char *a = backup_make(f->r, vm, 1000, NULL, 0);
    vm[sizeof(vm) - 2] = 'x';
    char *b = backup_make(f->r, vm, 1000, NULL, 0);
    assert_int_equal(backup_count(f->r, vm), 1);
    assert_int_equal(backup_count(f->r, NULL), 2);
    struct backup *got;
    assert_int_equal(repo_backup_get(f->r, b, &got), 0);
    assert_string_equal(got->vm_id, vm);
    backup_free(got);
    free(a);
    free(b);
}

static void test_backup_abort(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    struct backup_writer *w;
    repo_make(f, NULL);
    struct chunk_id c = chunk_make(f->r, 1);

    assert_int_equal(repo_backup_begin(f->r, "vm", 5000, 0, &w, err, sizeof(err)), 0);
    char dir[PATH_MAX + 64];
    PATHF(dir, "%s/backups/vm/%s", f->path, repo_backup_writer_id(w));
    struct manifest m;
    assert_int_equal(manifest_new(&m, "sda", SMALL, CS), 0);
    assert_int_equal(manifest_append(&m, 0, &c), 0);
    assert_int_equal(repo_backup_add_disk(w, &m), 0);
    manifest_free(&m);
    assert_true(file_exists(dir));
    repo_backup_abort(w);
    assert_false(file_exists(dir));
    assert_int_equal(backup_count(f->r, NULL), 0);

    /* The locks went with it: the VM can be backed up again at once. */
    assert_int_equal(repo_backup_begin(f->r, "vm", 5000, 0, &w, err, sizeof(err)), 0);
    repo_backup_abort(w);
    repo_backup_abort(NULL);
}

static void test_backup_same_vm_busy(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    struct backup_writer *w1, *w2;
    repo_make(f, NULL);

    assert_int_equal(repo_backup_begin(f->r, "vm", 100, 0, &w1, err, sizeof(err)), 0);
    assert_int_equal(repo_backup_begin(f->r, "vm", 200, 0, &w2, err, sizeof(err)), -EBUSY);
    CHECK(strstr(err, "already running"), "err: %s", err);
    /* A timeout waits (here for nothing: 1 s, then gives up). */
    time_t start = time(NULL);
    assert_int_equal(repo_backup_begin(f->r, "vm", 200, 1, &w2, err, sizeof(err)), -EBUSY);
    assert_true(time(NULL) - start >= 1);
    struct backup *b = calloc(1, sizeof(*b));
    assert_int_equal(repo_backup_commit(w1, b), 0);
    backup_free(b);
    assert_int_equal(repo_backup_begin(f->r, "vm", 200, 0, &w2, err, sizeof(err)), 0);
    repo_backup_abort(w2);

    /* Repository locks: counted per handle, exclusive against other holders. */
    struct repo *r2;
    assert_int_equal(repo_open(f->path, NULL, &r2, err, sizeof(err)), 0);
    assert_int_equal(repo_lock(f->r, false, 0, err, sizeof(err)), 0);
    assert_int_equal(repo_lock(f->r, false, 0, err, sizeof(err)), 0);
    assert_int_equal(repo_lock(f->r, true, 0, err, sizeof(err)), -EDEADLK);
    assert_int_equal(repo_lock(r2, true, 0, err, sizeof(err)), -EBUSY);
    assert_int_equal(repo_lock(r2, false, 0, err, sizeof(err)), 0);
    repo_unlock(r2);
    repo_unlock(f->r);
    assert_int_equal(repo_lock(r2, true, 0, err, sizeof(err)), -EBUSY);
    repo_unlock(f->r);
    assert_int_equal(repo_lock(r2, true, 0, err, sizeof(err)), 0);
    assert_int_equal(repo_backup_begin(f->r, "vm", 300, 0, &w2, err, sizeof(err)), -EBUSY);
    CHECK(strstr(err, "maintenance"), "err: %s", err);
    repo_unlock(r2);
    repo_close(r2);
}

/* backup.json or a manifest damaged: reported, skipped, and gc refuses to guess. */
static void test_backup_damaged(void **state)
{
    struct fixture *f = *state;
    repo_make(f, PASS);
    struct chunk_id c[2] = {chunk_make(f->r, 1), chunk_make(f->r, 2)};
    char *good = backup_make(f->r, "vm", 1000, &c[0], 1);
    char *bad = backup_make(f->r, "vm", 2000, &c[1], 1);
    char p[PATH_MAX + 128];
    size_t len;

    PATHF(p, "%s/backups/vm/%s/backup.json", f->path, bad);
    uint8_t *orig = file_read(p, &len);
    assert_non_null(orig);
    orig[len / 2] ^= 0x40;
    file_write(p, orig, len);
    struct backup *got;
    assert_int_equal(repo_backup_get(f->r, bad, &got), -EBADMSG);
    assert_int_equal(backup_count(f->r, NULL), 1);
    assert_int_equal(repo_backup_latest(f->r, "vm", &got), 0);
    assert_string_equal(got->id, good);
    backup_free(got);
    string_list dmg = VECTOR_INIT;
    assert_int_equal(repo_backup_list_damaged(f->r, &dmg), 0);
    assert_int_equal(dmg.len, 1);
    char want[64];
    PATHF(want, "vm/%s", bad);
    assert_string_equal(dmg.ptr[0], want);
    string_list_free(&dmg);
    orig[len / 2] ^= 0x40;
    file_write(p, orig, len);
    free(orig);

    /* A manifest moved to another backup fails: it is bound to its path. */
    char pg[PATH_MAX + 128], pb[PATH_MAX + 128];
    PATHF(pg, "%s/backups/vm/%s/disk-0.manifest", f->path, good);
    PATHF(pb, "%s/backups/vm/%s/disk-0.manifest", f->path, bad);
    size_t blen;
    orig = file_read(pb, &blen);
    uint8_t *moved = file_read(pg, &len);
    assert_non_null(orig);
    assert_non_null(moved);
    file_write(pb, moved, len);
    assert_int_equal(repo_backup_get(f->r, bad, &got), 0);
    struct manifest m;
    assert_int_equal(repo_manifest_read(f->r, got, "sda", &m), -EBADMSG);
    backup_free(got);
    free(moved);

    /* gc cannot know what that manifest referenced: it deletes nothing. */
    char err[ERR_LEN] = "";
    struct gc_stats st;
    struct chunk_id orphan = chunk_make(f->r, 99);
    assert_int_equal(repo_gc(f->r, false, &st, err, sizeof(err)), -EBADMSG);
    CHECK(strstr(err, "no chunk was deleted"), "err: %s", err);
    assert_true(repo_chunk_exists(f->r, &orphan));
    file_write(pb, orig, blen);
    free(orig);
    assert_int_equal(repo_gc(f->r, false, &st, err, sizeof(err)), 0);
    assert_int_equal(st.chunks_deleted, 1);
    assert_false(repo_chunk_exists(f->r, &orphan));
    free(good);
    free(bad);
}

/* A writer that never commits nor aborts (a crash): invisible, and gc cleans it up. */
static void test_partial_backup_gc(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    struct backup_writer *w;
    repo_make(f, NULL);
    struct chunk_id kept = chunk_make(f->r, 1);
    char *committed = backup_make(f->r, "vm", 1000, &kept, 1);

    assert_int_equal(repo_backup_begin(f->r, "vm", 2000, 0, &w, err, sizeof(err)), 0);
    char *partial = strdup(repo_backup_writer_id(w));
    struct chunk_id lost = chunk_make(f->r, 2);
    struct manifest m;
    assert_int_equal(manifest_new(&m, "sda", SMALL, CS), 0);
    assert_int_equal(manifest_append(&m, 0, &lost), 0);
    assert_int_equal(repo_backup_add_disk(w, &m), 0);
    manifest_free(&m);
    repo_backup_abandon(w);

    struct backup *got;
    assert_int_equal(backup_count(f->r, NULL), 1);
    assert_int_equal(repo_backup_get(f->r, partial, &got), -ENOENT);
    assert_int_equal(repo_backup_latest(f->r, "vm", &got), 0);
    assert_string_equal(got->id, committed);
    backup_free(got);

    /* Temporary files of interrupted writes, here and there. */
    char p[PATH_MAX + 128];
    PATHF(p, "%s/config.tmp.0123456789abcdef", f->path);
    file_write(p, "{}", 2);
    PATHF(p, "%s/chunks/ab", f->path);
    mkdir(p, 0700);
    PATHF(p, "%s/chunks/ab/abab.tmp.0123", f->path);
    file_write(p, "x", 1);
    PATHF(p, "%s/backups/vm/%s/backup.json.tmp.42", f->path, committed);
    file_write(p, "x", 1);

    struct gc_stats st;
    assert_int_equal(repo_gc(f->r, true, &st, err, sizeof(err)), 0);
    assert_int_equal(st.partial_backups_removed, 1);
    assert_int_equal(st.temp_files_removed, 3);
    assert_int_equal(st.chunks_total, 2);
    assert_int_equal(st.chunks_deleted, 1);
    assert_int_equal(count_tmp_files(f->path), 3); /* dry run */
    assert_true(repo_chunk_exists(f->r, &lost));

    assert_int_equal(repo_gc(f->r, false, &st, err, sizeof(err)), 0);
    assert_int_equal(st.partial_backups_removed, 1);
    assert_int_equal(st.temp_files_removed, 3);
    assert_int_equal(st.chunks_deleted, 1);
    assert_true(st.bytes_freed > 0);
    assert_int_equal(count_tmp_files(f->path), 0);
    PATHF(p, "%s/backups/vm/%s", f->path, partial);
    assert_false(file_exists(p));
    assert_false(repo_chunk_exists(f->r, &lost));
    assert_true(chunk_ok(f->r, &kept));
    assert_int_equal(backup_count(f->r, NULL), 1);

    assert_int_equal(repo_gc(f->r, false, &st, err, sizeof(err)), 0);
    assert_int_equal(st.chunks_deleted + st.partial_backups_removed + st.temp_files_removed, 0);
    free(partial);
    free(committed);
}

static void test_gc_exact(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    struct gc_stats st;
    struct chunk_id c[10];
    repo_make(f, PASS);
    for (int i = 0; i < 10; i++)
        c[i] = chunk_make(f->r, (uint64_t)i);
    char *a = backup_make(f->r, "vm1", 1000, &c[0], 5); /* 0..4 */
    char *b = backup_make(f->r, "vm2", 2000, &c[3], 5); /* 3..7; 8, 9 unreferenced */

    assert_int_equal(repo_gc(f->r, true, &st, err, sizeof(err)), 0);
    assert_int_equal(st.chunks_total, 10);
    assert_int_equal(st.chunks_deleted, 2);
    for (int i = 0; i < 10; i++)
        assert_true(repo_chunk_exists(f->r, &c[i]));

    assert_int_equal(repo_gc(f->r, false, &st, err, sizeof(err)), 0);
    assert_int_equal(st.chunks_deleted, 2);
    for (int i = 0; i < 10; i++)
        assert_int_equal(repo_chunk_exists(f->r, &c[i]), i < 8);

    assert_int_equal(repo_backup_delete(f->r, a), 0);
    assert_int_equal(repo_gc(f->r, false, &st, err, sizeof(err)), 0);
    assert_int_equal(st.chunks_total, 8);
    assert_int_equal(st.chunks_deleted, 3);
    for (int i = 0; i < 10; i++)
        assert_int_equal(repo_chunk_exists(f->r, &c[i]), i >= 3 && i < 8);
    for (int i = 3; i < 8; i++)
        assert_true(chunk_ok(f->r, &c[i]));

    /* An empty VM directory goes too; gc under a lock the caller already holds. */
    char p[PATH_MAX + 64];
    PATHF(p, "%s/backups/vm1", f->path);
    assert_false(file_exists(p));
    assert_int_equal(repo_lock(f->r, true, 0, err, sizeof(err)), 0);
    assert_int_equal(repo_gc(f->r, false, &st, err, sizeof(err)), 0);
    repo_unlock(f->r);
    assert_int_equal(repo_backup_delete(f->r, b), 0);
    assert_int_equal(repo_gc(f->r, false, &st, err, sizeof(err)), 0);
    assert_int_equal(st.chunks_deleted, 5);
    free(a);
    free(b);
}

/* Authenticated containers holding mutated plain content (what anyone who can write to a plain
 * repository can make): the decoders answer 0 or -EBADMSG and never crash. */
static void seal_write(struct repo *r, const char *base, const char *rel, const void *data,
                       size_t len)
{
    char ident[PATH_MAX], p[2 * PATH_MAX];
    uint8_t *file;
    size_t flen;
    PATHF(ident, "file:%s", rel);
    PATHF(p, "%s/%s", base, rel);
    assert_int_equal(container_seal(r, ident, data, len, &file, &flen), 0);
    file_write(p, file, flen);
    free(file);
}

static void mutate(uint8_t *buf, size_t len, uint64_t *s)
{
    int edits = 1 + (int)(rng_next(s) % 4);
    for (int k = 0; k < edits && len; k++) {
        size_t at = rng_next(s) % len;
        switch (rng_next(s) % 3) {
        case 0:
            buf[at] ^= (uint8_t)(1u << (rng_next(s) % 8));
            break;
        case 1:
            buf[at] = (uint8_t)rng_next(s);
            break;
        default:
            buf[at] = (uint8_t)(rng_next(s) % 2 ? 0xff : 0);
            break;
        }
    }
}

static void test_metadata_fuzz(void **state)
{
    struct fixture *f = *state;
    repo_make(f, NULL);
    struct chunk_id c[3] = {chunk_make(f->r, 1), chunk_make(f->r, 2), chunk_make(f->r, 3)};
    char *id = backup_make(f->r, "vm", 1000, c, 3);
    char rel_m[PATH_MAX], rel_b[PATH_MAX];
    PATHF(rel_m, "backups/vm/%s/disk-0.manifest", id);
    PATHF(rel_b, "backups/vm/%s/backup.json", id);

    struct backup *b;
    struct manifest m;
    assert_int_equal(repo_backup_get(f->r, id, &b), 0);
    assert_int_equal(repo_manifest_read(f->r, b, "sda", &m), 0);
    uint8_t *enc;
    size_t enc_len;
    assert_int_equal(manifest_encode(&m, &enc, &enc_len), 0);
    manifest_free(&m);

    /* Every byte of the manifest's container flipped: authentication catches it. */
    char pm[2 * PATH_MAX];
    size_t flen;
    PATHF(pm, "%s/%s", f->path, rel_m);
    uint8_t *file = file_read(pm, &flen);
    for (size_t i = 0; i < flen; i++) {
        file[i] ^= 0x80;
        file_write(pm, file, flen);
        assert_int_equal(repo_manifest_read(f->r, b, "sda", &m), -EBADMSG);
        file[i] ^= 0x80;
    }
    free(file);

    /* Mutated, truncated and extended plain manifests. */
    uint8_t *buf = malloc(enc_len + 64);
    uint64_t seed = 12345;
    int accepted = 0;
    for (int round = 0; round < FUZZ_ROUNDS; round++) {
        size_t len = enc_len;
        memcpy(buf, enc, enc_len);
        if (round % 5 == 0)
            len = rng_next(&seed) % enc_len;
        else if (round % 5 == 1)
            len = enc_len + rng_next(&seed) % 64;
        else
            mutate(buf, len, &seed);
        if (len > enc_len)
            fill_random(buf + enc_len, len - enc_len, seed);
        seal_write(f->r, f->path, rel_m, buf, len);
        int ret = repo_manifest_read(f->r, b, "sda", &m);
        CHECK(ret == 0 || ret == -EBADMSG, "round %d: %d", round, ret);
        accepted += ret == 0;
        manifest_free(&m);
    }
    print_message("# manifest fuzz: %d of %d mutations accepted (changed IDs)\n", accepted,
                  FUZZ_ROUNDS);
    free(buf);
    free(enc);

    /* Mutated backup.json text. */
    char pb[2 * PATH_MAX];
    uint8_t *text;
    size_t tlen;
    PATHF(pb, "%s/%s", f->path, rel_b);
    {
        uint8_t *raw = file_read(pb, &flen);
        assert_int_equal(container_unseal(f->r, rel_b, raw, flen, 1 << 20, NULL, 0, &tlen),
                         -EBADMSG); /* wrong ident */
        free(raw);
    }
    assert_int_equal(repo_meta_read(f->r, rel_b, &text, &tlen), 0);
    buf = malloc(tlen + 1);
    for (int round = 0; round < FUZZ_ROUNDS; round++) {
        size_t len = round % 4 == 0 ? rng_next(&seed) % tlen : tlen;
        memcpy(buf, text, tlen);
        if (round % 4)
            mutate(buf, len, &seed);
        seal_write(f->r, f->path, rel_b, buf, len);
        struct backup *got = NULL;
        int ret = repo_backup_get(f->r, id, &got);
        CHECK(ret == 0 || ret == -EBADMSG, "round %d: %d", round, ret);
        backup_list l = VECTOR_INIT;
        assert_int_equal(repo_backup_list(f->r, NULL, &l), 0);
        assert_true(l.len <= 1);
        backup_list_free(&l);
        backup_free(got);
    }
    free(buf);
    free(text);
    backup_free(b);
    free(id);
}

/* ---- concurrency ---- */

struct put_thread {
    struct repo *r;
    int t;
    pthread_barrier_t *barrier;
    unsigned stored;
    int failures;
};

static void *put_main(void *arg)
{
    struct put_thread *pt = arg;
    uint8_t *buf = malloc(SMALL);
    pthread_barrier_wait(pt->barrier);
    for (int i = 0; i < THREAD_CHUNKS; i++) {
        struct chunk_id id;
        bool stored;
        fill_random(buf, SMALL, (uint64_t)(pt->t * THREAD_STRIDE + i));
        repo_chunk_id(pt->r, buf, SMALL, &id);
        if (repo_chunk_put(pt->r, &id, buf, SMALL, &stored, NULL) < 0)
            pt->failures++;
        pt->stored += stored;
    }
    free(buf);
    return NULL;
}

static void test_concurrent_puts_threads(void **state)
{
    struct fixture *f = *state;
    pthread_t th[THREADS];
    struct put_thread pt[THREADS];
    pthread_barrier_t barrier;
    repo_make(f, PASS);

    pthread_barrier_init(&barrier, NULL, THREADS);
    for (int t = 0; t < THREADS; t++) {
        pt[t] = (struct put_thread){.r = f->r, .t = t, .barrier = &barrier};
        assert_int_equal(pthread_create(&th[t], NULL, put_main, &pt[t]), 0);
    }
    unsigned stored = 0;
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(pt[t].failures, 0);
        stored += pt[t].stored;
    }
    pthread_barrier_destroy(&barrier);

    /* Each distinct chunk was stored exactly once, and all are intact. */
    unsigned distinct = (THREADS - 1) * THREAD_STRIDE + THREAD_CHUNKS;
    assert_int_equal(stored, distinct);
    struct foreach_ctx c = {0};
    assert_int_equal(repo_chunk_foreach(f->r, foreach_fn, &c), 0);
    assert_int_equal(c.n, distinct);
    uint8_t *buf = malloc(SMALL);
    for (unsigned i = 0; i < distinct; i++) {
        struct chunk_id id;
        fill_random(buf, SMALL, i);
        repo_chunk_id(f->r, buf, SMALL, &id);
        assert_true(chunk_ok(f->r, &id));
    }
    free(buf);
    assert_int_equal(count_tmp_files(f->path), 0);
}

/* Chunks stored through a batch, of sizes whose containers end before, at and after a multiple
 * of the O_DIRECT alignment: each reads back intact and its file has exactly the container's
 * length (no padding left behind), and no temporary file remains after the flush. */
static void test_chunk_batch_tails(void **state)
{
    struct fixture *f = *state;
    /* plain container = 16-byte header + raw payload (random data does not compress) + 16-byte
     * XXH3-128 trailer */
    const size_t overhead = 32, align = 4096;
    const size_t sizes[] = {1,
                            align - overhead - 1,
                            align - overhead,
                            align - overhead + 1,
                            2 * align - overhead,
                            3 * align + 17,
                            CS - 1,
                            CS};
    struct chunk_id ids[ARRAY_SIZE(sizes)];
    repo_make(f, NULL);
    struct chunk_batch *b = NULL;
    assert_int_equal(repo_chunk_batch_new(f->r, &b), 0);
    uint8_t *buf = malloc(CS), *back = malloc(CS);
    assert_non_null(buf);
    assert_non_null(back);
    for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
        fill_random(buf, sizes[i], 1000 + i);
        repo_chunk_id(f->r, buf, sizes[i], &ids[i]);
        uint64_t pending = 0;
        assert_int_equal(repo_chunk_batch_put(b, &ids[i], buf, sizes[i], &pending), 0);
        assert_true(pending > 0);
    }
    assert_int_equal(repo_chunk_batch_flush(b), 0);
    uint64_t created = 0, existing = 0, bytes = 0, want_bytes = 0;
    repo_chunk_batch_stats(b, &created, &existing, &bytes);
    repo_chunk_batch_free(b);
    assert_int_equal(created, ARRAY_SIZE(sizes));
    assert_int_equal(existing, 0);
    for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
        char hex[2 * HASH_SIZE + 1], path[PATH_MAX + 200];
        struct stat st;
        size_t len = 0;
        chunk_id_to_hex(&ids[i], hex);
        PATHF(path, "%s/chunks/%.2s/%s", f->path, hex, hex);
        assert_int_equal(stat(path, &st), 0);
        CHECK((size_t)st.st_size == sizes[i] + overhead, "size %zu: file of %lld bytes", sizes[i],
              (long long)st.st_size);
        want_bytes += sizes[i] + overhead;
        fill_random(buf, sizes[i], 1000 + i);
        assert_int_equal(repo_chunk_get(f->r, &ids[i], back, CS, &len), 0);
        assert_int_equal(len, sizes[i]);
        assert_memory_equal(back, buf, len);
    }
    assert_int_equal(bytes, want_bytes);
    assert_int_equal(count_tmp_files(f->path), 0);
    free(buf);
    free(back);
}

/* container_seal_thread: the calling thread's buffer is reused across sizes (large, small,
 * large again, compressible and not) and every container it gives opens to its plain data and,
 * in a plain repository, is byte for byte what container_seal makes; another thread's
 * containers never overwrite this thread's. */
struct seal_other {
    struct repo *r;
    const uint8_t *plain;
    int failures;
};

static void *seal_other_main(void *opaque)
{
    struct seal_other *o = opaque;
    for (int i = 0; i < 8; i++) {
        const uint8_t *file = NULL;
        size_t flen = 0;
        if (container_seal_thread(o->r, "chunk:other", o->plain, CS, &file, &flen) != 0 || !flen)
            o->failures++;
    }
    return NULL;
}

static void seal_thread_cases(struct fixture *f)
{
    struct repo *r = f->r;
    const size_t sizes[] = {17, CS, 1, SMALL, 0, CS - 5, 4000, CS};
    uint8_t *plain = malloc(CS), *copy = malloc(CS + 4096), *out = malloc(CS), *other = malloc(CS);
    assert_non_null(plain);
    assert_non_null(copy);
    assert_non_null(out);
    assert_non_null(other);
    fill_random(other, CS, 4242);
    for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
        const size_t len = sizes[i];
        if (i % 2 == 0)
            memset(plain, 'a' + (int)i, len); /* compressible */
        else
            fill_random(plain, len, 500 + i);
        const uint8_t *file = NULL;
        size_t flen = 0;
        assert_int_equal(container_seal_thread(r, "chunk:test", plain, len, &file, &flen), 0);
        assert_non_null(file);
        assert_true(flen > len / 2 || i % 2 == 0); /* random data is stored as it is */
        assert_int_equal((uintptr_t)file % CONTAINER_ALIGN, 0);
        assert_true(flen <= CS + 4096);
        memcpy(copy, file, flen);

        /* A second thread sealing meanwhile uses its own buffer. */
        struct seal_other o = {.r = r, .plain = other};
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, seal_other_main, &o), 0);
        pthread_join(th, NULL);
        assert_int_equal(o.failures, 0);
        assert_memory_equal(file, copy, flen);

        if (!repo_encrypted(r)) {
            uint8_t *fresh = NULL;
            size_t fresh_len = 0;
            assert_int_equal(container_seal(r, "chunk:test", plain, len, &fresh, &fresh_len), 0);
            assert_int_equal(fresh_len, flen);
            assert_memory_equal(fresh, file, flen);
            free(fresh);
        }
        size_t got = SIZE_MAX;
        memset(out, 0x5a, CS);
        assert_int_equal(container_unseal(r, "chunk:test", copy, flen, CS, out, CS, &got), 0);
        assert_int_equal(got, len);
        if (len)
            assert_memory_equal(out, plain, len);
        /* Bound to its ident. */
        memcpy(copy, file, flen);
        assert_int_equal(container_unseal(r, "chunk:else", copy, flen, CS, out, CS, &got),
                         -EBADMSG);
    }
    free(plain);
    free(copy);
    free(out);
    free(other);
}

static void test_seal_thread_plain(void **state)
{
    struct fixture *f = *state;
    repo_make(f, NULL);
    seal_thread_cases(f);
}

static void test_seal_thread_encrypted(void **state)
{
    struct fixture *f = *state;
    repo_make(f, PASS);
    seal_thread_cases(f);
}

/* ---- direct whole-file reads (chunk files) ---- */

#define RD_MAX ((size_t)(1 << 20) + CONTAINER_MAX_OVERHEAD) /* a 1 MiB chunk's container */

/* store_get_into of the local store on directory dir: sizes around the block boundaries, data still
 * dirty in the page cache (the kernel must write it before a direct read), an overwrite of a synced
 * file, and the errors. */
static void read_direct_cases(const char *dir)
{
    struct store *st = NULL;
    assert_int_equal(store_local_open(dir, &st), 0);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(dfd >= 0);
    size_t cap = 0;
    uint8_t *buf = container_read_buffer_thread(RD_MAX, &cap);
    assert_non_null(buf);
    assert_true(cap >= RD_MAX && cap % CONTAINER_ALIGN == 0);
    assert_int_equal((uintptr_t)buf % CONTAINER_ALIGN, 0);
    CLEANUP_FREE uint8_t *data = malloc(RD_MAX);
    assert_non_null(data);
    char path[PATH_MAX + 16];
    PATHF(path, "%s/f", dir);

    static const size_t sizes[] = {0, 1, 4095, 4096, 4097, 65536 + 13, RD_MAX - 1, RD_MAX};
    for (size_t k = 0; k < ARRAY_SIZE(sizes); k++) {
        size_t n = sizes[k], len = 12345;
        fill_random(data, RD_MAX, k + 1);
        file_write(path, data, n); /* not synced: dirty in the page cache */
        memset(buf, 0xa5, cap);
        CHECK(store_get_into(st, "f", RD_MAX, buf, cap, &len) == 0, "size %zu", n);
        CHECK(len == n && memcmp(buf, data, n) == 0, "size %zu: got %zu bytes", n, len);
    }
    /* Synced, dropped from the cache, then its middle overwritten through the cache. */
    CLEANUP_CLOSE int fd = open(path, O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(fsync(fd), 0);
    assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    memset(data + 5000, 0x3c, 70000);
    assert_int_equal(pwrite(fd, data + 5000, 70000, 5000), 70000);
    size_t len = 0;
    assert_int_equal(store_get_into(st, "f", RD_MAX, buf, cap, &len), 0);
    assert_int_equal(len, RD_MAX);
    assert_memory_equal(buf, data, RD_MAX);

    /* Over the limit, a buffer too small or unaligned, not a regular file, missing. */
    assert_int_equal(store_get_into(st, "f", RD_MAX - 1, buf, cap, &len), -EBADMSG);
    assert_int_equal(store_get_into(st, "f", RD_MAX, buf, RD_MAX / 2, &len), -ENOBUFS);
    assert_int_equal(store_get_into(st, "f", RD_MAX, buf + 1, cap - 4096, &len), -ENOBUFS);
    assert_int_equal(mkdirat(dfd, "d", 0700), 0);
    assert_int_equal(store_get_into(st, "d", RD_MAX, buf, cap, &len), -EBADMSG);
    assert_int_equal(store_get_into(st, "missing", RD_MAX, buf, cap, &len), -ENOENT);
    /* The thread keeps its buffer: asking for less returns the same one. */
    size_t cap2 = 0;
    assert_ptr_equal(container_read_buffer_thread(4096, &cap2), buf);
    assert_int_equal(cap2, cap);
    close(dfd);
    store_close(st);
}

static void test_read_file_direct(void **state)
{
    struct fixture *f = *state;
    read_direct_cases(f->base);
    /* tmpfs has no O_DIRECT: the same through the page cache. */
    PATHF(f->mnt, "%s/mnt", f->base);
    assert_int_equal(mkdir(f->mnt, 0700), 0);
    if (mount("tmpfs", f->mnt, "tmpfs", 0, "size=8m") < 0) {
        print_message("# cannot mount a tmpfs (%s): tmpfs case skipped\n", strerror(errno));
        f->mnt[0] = '\0';
        return;
    }
    read_direct_cases(f->mnt);
}

/* Processes putting the same chunks: each child exits with how many it stored. */
static void test_concurrent_puts_processes(void **state)
{
    struct fixture *f = *state;
    pid_t pids[PROCS];
    int go[2];
    repo_make(f, NULL);
    assert_int_equal(pipe(go), 0);

    for (int k = 0; k < PROCS; k++) {
        pids[k] = fork();
        assert_true(pids[k] >= 0);
        if (pids[k] == 0) {
            struct repo *r;
            char err[ERR_LEN], c;
            int stored_n = 0;
            close(go[1]);
            if (repo_open(f->path, NULL, &r, err, sizeof(err)) < 0)
                _exit(255);
            if (read(go[0], &c, 1) < 0) /* wait for the start: EOF when the parent closes */
                _exit(255);
            uint8_t *buf = malloc(SMALL);
            for (int i = 0; i < PROC_CHUNKS; i++) {
                struct chunk_id id;
                bool stored;
                fill_random(buf, SMALL, (uint64_t)i);
                repo_chunk_id(r, buf, SMALL, &id);
                if (repo_chunk_put(r, &id, buf, SMALL, &stored, NULL) < 0)
                    _exit(255);
                stored_n += stored;
            }
            free(buf);
            repo_close(r);
            _exit(stored_n);
        }
    }
    close(go[0]);
    close(go[1]); /* start */
    int total = 0;
    for (int k = 0; k < PROCS; k++) {
        int status;
        assert_int_equal(waitpid(pids[k], &status, 0), pids[k]);
        assert_true(WIFEXITED(status));
        assert_int_not_equal(WEXITSTATUS(status), 255);
        total += WEXITSTATUS(status);
    }
    assert_int_equal(total, PROC_CHUNKS);
    uint8_t *buf = malloc(SMALL);
    for (int i = 0; i < PROC_CHUNKS; i++) {
        struct chunk_id id;
        fill_random(buf, SMALL, (uint64_t)i);
        repo_chunk_id(f->r, buf, SMALL, &id);
        assert_true(chunk_ok(f->r, &id));
    }
    free(buf);
    assert_int_equal(count_tmp_files(f->path), 0);
}

struct writer_thread {
    struct repo *r;
    const char *vm;
    pthread_barrier_t *barrier;
    int ret;
    char err[ERR_LEN];
};

static void *writer_main(void *arg)
{
    struct writer_thread *wt = arg;
    struct backup_writer *w;
    struct manifest m;
    uint8_t buf[SMALL];
    struct chunk_id id;

    wt->ret = repo_backup_begin(wt->r, wt->vm, 1000, LOCK_WAIT, &w, wt->err, sizeof(wt->err));
    /* Both threads hold their locks at once before either goes on. */
    pthread_barrier_wait(wt->barrier);
    if (wt->ret < 0)
        return NULL;
    fill_random(buf, sizeof(buf), (uint64_t)wt->vm[2]);
    repo_chunk_id(wt->r, buf, sizeof(buf), &id);
    wt->ret = repo_chunk_put(wt->r, &id, buf, sizeof(buf), NULL, NULL);
    if (wt->ret == 0)
        wt->ret = manifest_new(&m, "sda", sizeof(buf), CS);
    if (wt->ret == 0) {
        wt->ret = manifest_append(&m, 0, &id);
        if (wt->ret == 0)
            wt->ret = repo_backup_add_disk(w, &m);
        manifest_free(&m);
    }
    struct backup *b = calloc(1, sizeof(*b));
    if (wt->ret == 0)
        wt->ret = repo_backup_commit(w, b);
    else
        repo_backup_abort(w);
    backup_free(b);
    return NULL;
}

static void test_two_writers_threads(void **state)
{
    struct fixture *f = *state;
    pthread_t th[2];
    struct writer_thread wt[2];
    pthread_barrier_t barrier;
    const char *vms[2] = {"vm1", "vm2"};
    repo_make(f, NULL);

    pthread_barrier_init(&barrier, NULL, 2);
    for (int i = 0; i < 2; i++) {
        wt[i] = (struct writer_thread){.r = f->r, .vm = vms[i], .barrier = &barrier};
        assert_int_equal(pthread_create(&th[i], NULL, writer_main, &wt[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        CHECK(wt[i].ret == 0, "writer %d: %d %s", i, wt[i].ret, wt[i].err);
    }
    pthread_barrier_destroy(&barrier);
    assert_int_equal(backup_count(f->r, "vm1"), 1);
    assert_int_equal(backup_count(f->r, "vm2"), 1);
}

struct gc_thread {
    struct repo *r;
    atomic_bool done;
    int ret;
    struct gc_stats st;
};

static void *gc_main(void *arg)
{
    struct gc_thread *gt = arg;
    char err[ERR_LEN];
    gt->ret = repo_gc(gt->r, false, &gt->st, err, sizeof(err));
    atomic_store(&gt->done, true);
    return NULL;
}

static void test_gc_waits_for_writer(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    struct backup_writer *w;
    pthread_t th;
    repo_make(f, NULL);

    assert_int_equal(repo_backup_begin(f->r, "vm", 1000, 0, &w, err, sizeof(err)), 0);
    /* The writer's new chunk is referenced by nothing committed yet. */
    struct chunk_id id = chunk_make(f->r, 1);
    assert_int_equal(repo_lock(f->r, true, 0, err, sizeof(err)), -EBUSY);

    struct gc_thread gt = {.r = f->r};
    atomic_init(&gt.done, false);
    assert_int_equal(pthread_create(&th, NULL, gc_main, &gt), 0);
    struct timespec nap = {.tv_sec = 0, .tv_nsec = GC_WAIT_MS * NS_PER_MS};
    nanosleep(&nap, NULL);
    assert_false(atomic_load(&gt.done));

    struct manifest m;
    assert_int_equal(manifest_new(&m, "sda", SMALL, CS), 0);
    assert_int_equal(manifest_append(&m, 0, &id), 0);
    assert_int_equal(repo_backup_add_disk(w, &m), 0);
    manifest_free(&m);
    struct backup *b = calloc(1, sizeof(*b));
    assert_int_equal(repo_backup_commit(w, b), 0);
    backup_free(b);

    pthread_join(th, NULL);
    assert_int_equal(gt.ret, 0);
    assert_int_equal(gt.st.chunks_deleted, 0);
    assert_true(chunk_ok(f->r, &id));
}

/* ---- prune ---- */

/* keep must be exactly the listed indices (-1 ends the list). */
static void check_keep(const bool *keep, size_t n, const int *want, const char *what)
{
    bool w[64] = {false};
    for (size_t i = 0; want[i] >= 0; i++)
        w[want[i]] = true;
    for (size_t i = 0; i < n; i++)
        CHECK(keep[i] == w[i], "%s: index %zu keep=%d, want %d", what, i, keep[i], w[i]);
}

static void test_prune_select(void **state)
{
    (void)state;
    /* Index: time (UTC), ISO week.  Given in no particular order. */
    const int64_t times[] = {
        utc(2024, 1, 1, 10, 0),   /* 0: Mon, 2024-W01 */
        utc(2024, 1, 8, 8, 0),    /* 4: Mon, 2024-W02 */
        utc(2024, 1, 1, 22, 0),   /* 1: Mon, 2024-W01, the newest of 2024-01-01 */
        utc(2024, 1, 31, 23, 59), /* 5: Wed, 2024-W05 */
        utc(2024, 1, 2, 9, 0),    /* 2: Tue, 2024-W01 */
        utc(2024, 1, 7, 12, 0),   /* 3: Sun, 2024-W01 */
        utc(2024, 2, 1, 0, 0),    /* 6: Thu, 2024-W05 */
        utc(2024, 2, 15, 12, 0),  /* 7: Thu, 2024-W07 */
        utc(2023, 12, 31, 12, 0), /* 8: Sun, 2023-W52 */
        utc(2022, 1, 2, 12, 0),   /* 9: Sun, 2021-W52 (ISO year 2021) */
        utc(2021, 1, 1, 12, 0),   /* 11: Fri, 2020-W53 */
        utc(2020, 12, 31, 12, 0), /* 10: Thu, 2020-W53 */
    };
    /* The position in times[] of the backup numbered k in the comments above. */
    const int pos[12] = {0, 2, 4, 5, 1, 3, 6, 7, 8, 9, 11, 10};
    const size_t n = ARRAY_SIZE(times);
    bool keep[ARRAY_SIZE(times)];

    struct {
        struct prune_policy p;
        int want[13]; /* backup numbers, -1 terminated */
        const char *what;
    } cases[] = {
        {{0, 0, 0, 0}, {-1}, "nothing"},
        {{3, 0, 0, 0}, {7, 6, 5, -1}, "last 3"},
        {{100, 0, 0, 0}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, -1}, "last 100"},
        {{0, 4, 0, 0}, {7, 6, 5, 4, -1}, "daily 4"},
        {{0, 7, 0, 0}, {7, 6, 5, 4, 3, 2, 1, -1}, "daily 7"},
        {{0, 3, 0, 0}, {7, 6, 5, -1}, "daily 3"},
        {{0, 0, 3, 0}, {7, 6, 4, -1}, "weekly 3"},
        {{0, 0, 10, 0}, {7, 6, 4, 3, 8, 9, 11, -1}, "weekly 10"},
        {{0, 0, 0, 3}, {7, 5, 8, -1}, "monthly 3"},
        {{0, 0, 0, 100}, {7, 5, 8, 9, 11, 10, -1}, "monthly 100"},
        {{1, 2, 2, 2}, {7, 6, 5, -1}, "last 1 daily 2 weekly 2 monthly 2"},
        {{0, 1, 0, 4}, {7, 5, 8, 9, -1}, "daily 1 monthly 4"},
        {{2, 0, 5, 0}, {7, 6, 4, 3, 8, -1}, "last 2 weekly 5"},
    };
    for (size_t c = 0; c < ARRAY_SIZE(cases); c++) {
        int want[13];
        size_t k;
        for (k = 0; cases[c].want[k] >= 0; k++)
            want[k] = pos[cases[c].want[k]];
        want[k] = -1;
        memset(keep, 0xff, sizeof(keep));
        prune_select(times, n, &cases[c].p, keep);
        check_keep(keep, n, want, cases[c].what);
    }

    /* Equal times: the later in the input counts as newer. */
    const int64_t same[] = {1000, 1000, 1000};
    bool k3[3];
    prune_select(same, 3, &(struct prune_policy){.keep_last = 1}, k3);
    check_keep(k3, 3, (int[]){2, -1}, "tie last");
    prune_select(same, 3, &(struct prune_policy){.keep_daily = 5}, k3);
    check_keep(k3, 3, (int[]){2, -1}, "tie daily");
    prune_select(NULL, 0, &(struct prune_policy){.keep_last = 1}, NULL);

    /* A day boundary in UTC: 23:59:59 and 00:00:00 are different days. */
    const int64_t edge[] = {utc(2024, 3, 10, 0, 0) - 1, utc(2024, 3, 10, 0, 0)};
    bool k2[2];
    prune_select(edge, 2, &(struct prune_policy){.keep_daily = 2}, k2);
    check_keep(k2, 2, (int[]){0, 1, -1}, "midnight");
}

static void test_repo_prune(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    backup_list removed = VECTOR_INIT;
    repo_make(f, NULL);
    char *ids[6];
    for (int i = 0; i < 4; i++)
        ids[i] = backup_make(f->r, "vm1", 1000 + i * DAY, NULL, 0);
    for (int i = 4; i < 6; i++)
        ids[i] = backup_make(f->r, "vm2", 1000 + i * DAY, NULL, 0);

    struct prune_policy none = {0}, last2 = {.keep_last = 2};
    assert_int_equal(repo_prune(f->r, NULL, &none, 0, false, &removed, err, sizeof(err)), -EINVAL);
    backup_list_free(&removed);

    assert_int_equal(repo_prune(f->r, NULL, &last2, 0, true, &removed, err, sizeof(err)), 0);
    assert_int_equal(removed.len, 2);
    assert_string_equal(removed.ptr[0]->id, ids[0]);
    assert_string_equal(removed.ptr[1]->id, ids[1]);
    backup_list_free(&removed);
    assert_int_equal(backup_count(f->r, NULL), 6);

    /* One VM only, then all. */
    struct prune_policy last1 = {.keep_last = 1};
    assert_int_equal(repo_prune(f->r, "vm2", &last1, 0, false, &removed, err, sizeof(err)), 0);
    assert_int_equal(removed.len, 1);
    assert_string_equal(removed.ptr[0]->id, ids[4]);
    backup_list_free(&removed);
    assert_int_equal(repo_prune(f->r, NULL, &last2, 0, false, NULL, err, sizeof(err)), 0);
    backup_list l = VECTOR_INIT;
    assert_int_equal(repo_backup_list(f->r, NULL, &l), 0);
    assert_int_equal(l.len, 3);
    assert_string_equal(l.ptr[0]->id, ids[2]);
    assert_string_equal(l.ptr[1]->id, ids[3]);
    assert_string_equal(l.ptr[2]->id, ids[5]);
    backup_list_free(&l);

    /* Prune waits for the exclusive lock: a writer blocks it. */
    struct backup_writer *w;
    assert_int_equal(repo_backup_begin(f->r, "vm3", 99, 0, &w, err, sizeof(err)), 0);
    assert_int_equal(repo_prune(f->r, NULL, &last2, 0, false, NULL, err, sizeof(err)), -EBUSY);
    repo_backup_abort(w);
    for (int i = 0; i < 6; i++)
        free(ids[i]);
}

/* ---- full filesystem ---- */

static void test_enospc(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    PATHF(f->mnt, "%s/mnt", f->base);
    assert_int_equal(mkdir(f->mnt, 0700), 0);
    if (mount("tmpfs", f->mnt, "tmpfs", 0, TMPFS_SIZE) < 0) {
        print_message("# cannot mount a tmpfs (%s): skipped\n", strerror(errno));
        f->mnt[0] = '\0';
        skip();
        return;
    }
    char path[PATH_MAX + 16];
    PATHF(path, "%s/repo", f->mnt);
    repo_make_at(f, path, PASS);

    uint8_t *buf = malloc(CS);
    int ret = 0, n;
    struct chunk_id first;
    for (n = 0; n < 64 && ret == 0; n++) {
        struct chunk_id id;
        fill_random(buf, CS, (uint64_t)n);
        repo_chunk_id(f->r, buf, CS, &id);
        if (n == 0)
            first = id;
        ret = repo_chunk_put(f->r, &id, buf, CS, NULL, NULL);
    }
    CHECK(ret == -ENOSPC, "after %d chunks: %d", n, ret);
    assert_int_equal(count_tmp_files(path), 0);
    assert_true(chunk_ok(f->r, &first));

    /* Metadata too: a backup cannot be written, and nothing is left behind. */
    struct backup_writer *w;
    ret = repo_backup_begin(f->r, "vm", 1000, 0, &w, err, sizeof(err));
    if (ret == 0) {
        struct manifest m;
        assert_int_equal(manifest_new(&m, "sda", 4096ull * CS, CS), 0);
        for (uint64_t i = 0; i < manifest_chunks(&m); i++) {
            struct chunk_id id;
            fill_random(id.b, HASH_SIZE, i); /* incompressible: about 130 KiB */
            assert_int_equal(manifest_append(&m, i, &id), 0);
        }
        ret = repo_backup_add_disk(w, &m);
        manifest_free(&m);
        CHECK(ret == -ENOSPC, "add_disk: %d", ret);
        repo_backup_abort(w);
    } else {
        CHECK(ret == -ENOSPC, "begin: %d %s", ret, err);
    }
    assert_int_equal(count_tmp_files(path), 0);
    free(buf);
    repo_close(f->r);
    f->r = NULL;
    assert_int_equal(umount(f->mnt), 0);
    f->mnt[0] = '\0';
}

int main(void)
{
    log_set_level(LOG_LEVEL_ERROR); /* damaged-file warnings are expected */
#define T(fn) cmocka_unit_test_setup_teardown(fn, fixture_setup, fixture_teardown)
#define T3(fn)                                                                                     \
    {                                                                                              \
#fn "_v3", fn, fixture_setup_v3, fixture_teardown, NULL                                    \
    }
    const struct CMUnitTest tests[] = {
        T(test_init_open_plain),
        T(test_init_open_encrypted),
        T(test_init_errors),
        T(test_open_errors),
        T(test_open_encrypted_tampered),
        T(test_open_plain_with_passphrase),
        T(test_config_mac),
        T(test_config_legacy_unsealed),
        T(test_chunk_id_hex),
        T(test_chunk_roundtrip_plain),
        T(test_chunk_roundtrip_encrypted),
        T(test_chunk_confidential),
        T(test_chunk_corruption_plain),
        T(test_chunk_corruption_plain_v1),
        T(test_format_versions),
        T(test_chunk_corruption_encrypted),
        T(test_chunk_cross_repo),
        T(test_container_forged),
        T(test_chunk_foreach_delete),
        T(test_manifest_new),
        T(test_manifest_roundtrip_plain),
        T(test_manifest_roundtrip_encrypted),
        T(test_backup_lifecycle),
        T(test_backup_long_vm_id),
        T(test_backup_abort),
        T(test_backup_same_vm_busy),
        T(test_backup_damaged),
        T(test_metadata_fuzz),
        T(test_partial_backup_gc),
        T(test_gc_exact),
        T(test_chunk_batch_tails),
        T(test_seal_thread_plain),
        T(test_seal_thread_encrypted),
        T(test_read_file_direct),
        T(test_concurrent_puts_threads),
        T(test_concurrent_puts_processes),
        T(test_two_writers_threads),
        T(test_gc_waits_for_writer),
        T(test_prune_select),
        T(test_repo_prune),
        T(test_enospc),
        /* Format 3 (packs): the tests above that do not look at chunk files or count stores
         * (concurrent writers of one chunk may each pack it: duplicates are allowed). */
        T3(test_chunk_roundtrip_encrypted),
        T3(test_manifest_roundtrip_plain),
        T3(test_backup_lifecycle),
        T3(test_gc_exact),
        T3(test_two_writers_threads),
        T3(test_gc_waits_for_writer),
        T3(test_repo_prune),
        T3(test_enospc),
    };
#undef T
#undef T3
    return cmocka_run_group_tests(tests, NULL, NULL);
}
