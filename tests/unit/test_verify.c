/* Unit tests for the verify engine (src/backup/verify.c), called directly on a small
 * repository with no terminal: a sound repository (every backup reported ok, each shared chunk
 * read once), a corrupted chunk (found, named with every backup, disk and offset that needs
 * it), a missing chunk, a damaged manifest, damaged backup metadata, one backup by ID, and a
 * deterministic sample.
 *
 * Every test works in its own mkdtemp() directory in $TMPDIR (default /tmp), removed after.
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
#include <sys/stat.h>

#include "backup/verify.h"
#include "core/log.h"
#include "repo/repo.h"

#define ERR_LEN       512
#define CS            REPO_MIN_CHUNK_SIZE /* chunk size of the test repository */
#define LOCK_WAIT     10                  /* seconds a test lets a lock wait */
#define NFTW_FDS      16
#define MAX_FINDINGS  64
#define SAMPLE_CHUNKS 64 /* chunks of the backup the sampling test makes */
#define VM            "vm1"
#define T0            1700000000

#define PATHF(buf, ...) assert_true((size_t)snprintf(buf, sizeof(buf), __VA_ARGS__) < sizeof(buf))

/* Backup 1: disk sda = [c1, zero, c2].  Backup 2: sda = [c1, c3], sdb = [c2].  So c1 and c2
 * are shared, c3 is backup 2's alone. */
struct fixture {
    char base[PATH_MAX];
    char path[PATH_MAX + 16]; /* base/repo */
    struct repo *r;
    struct chunk_id c1, c2, c3;
    char *b1, *b2; /* backup IDs */
};

struct finding {
    enum verify_finding_kind kind;
    char backup[128], disk[32];
    uint64_t offset;
    struct chunk_id id;
    int error;
};

struct findings {
    struct finding f[MAX_FINDINGS];
    size_t n;
};

static int rm_visit(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static struct chunk_id chunk_make(struct repo *r, uint64_t seed)
{
    uint8_t *buf = malloc(CS);
    assert_non_null(buf);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < CS; i++) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        buf[i] = (uint8_t)((s * 2685821657736338717ull) >> 56);
    }
    struct chunk_id id;
    repo_chunk_id(r, buf, CS, &id);
    assert_int_equal(repo_chunk_put(r, &id, buf, CS, NULL, NULL), 0);
    free(buf);
    return id;
}

/* Add a disk whose entries are ids (NULL: a zero chunk). */
static void disk_add(struct backup_writer *w, const char *name, const struct chunk_id **ids,
                     size_t n)
{
    struct manifest m;
    assert_int_equal(manifest_new(&m, name, (uint64_t)n * CS, CS), 0);
    for (size_t i = 0; i < n; i++)
        if (ids[i])
            assert_int_equal(manifest_append(&m, i, ids[i]), 0);
    assert_int_equal(repo_backup_add_disk(w, &m), 0);
    manifest_free(&m);
}

static struct backup_writer *begin(struct repo *r, int64_t t)
{
    char err[ERR_LEN] = "";
    struct backup_writer *w;
    int ret = repo_backup_begin(r, VM, t, LOCK_WAIT, &w, err, sizeof(err));
    if (ret < 0)
        print_message("# begin: %s\n", err);
    assert_int_equal(ret, 0);
    return w;
}

static char *commit(struct backup_writer *w)
{
    char *id = strdup(repo_backup_writer_id(w));
    struct backup *b = calloc(1, sizeof(*b));
    assert_non_null(b);
    assert_int_equal(repo_backup_commit(w, b), 0);
    backup_free(b);
    return id;
}

static int fixture_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    const char *tmp = getenv("TMPDIR");
    char tmpl[PATH_MAX];
    if (!f || (size_t)snprintf(tmpl, sizeof(tmpl), "%s/vmexport-test-verify-XXXXXX",
                               tmp && *tmp ? tmp : "/tmp") >= sizeof(tmpl))
        return -1;
    if (!mkdtemp(tmpl) || !realpath(tmpl, f->base))
        return -1;
    PATHF(f->path, "%s/repo", f->base);
    char err[ERR_LEN] = "";
    /* Format 2: the damage tests pick chunk files (format 3: test_repo_v3). */
    struct repo_init_options io = {.chunk_size = CS, .format_version = 2};
    if (repo_init(f->path, &io, err, sizeof(err)) < 0 ||
        repo_open(f->path, NULL, &f->r, err, sizeof(err)) < 0)
        return -1;
    f->c1 = chunk_make(f->r, 1);
    f->c2 = chunk_make(f->r, 2);
    f->c3 = chunk_make(f->r, 3);

    struct backup_writer *w = begin(f->r, T0);
    disk_add(w, "sda", (const struct chunk_id *[]){&f->c1, NULL, &f->c2}, 3);
    f->b1 = commit(w);
    w = begin(f->r, T0 + 60);
    disk_add(w, "sda", (const struct chunk_id *[]){&f->c1, &f->c3}, 2);
    disk_add(w, "sdb", (const struct chunk_id *[]){&f->c2}, 1);
    f->b2 = commit(w);
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    struct fixture *f = *state;
    repo_close(f->r);
    nftw(f->base, rm_visit, NFTW_FDS, FTW_DEPTH | FTW_PHYS);
    free(f->b1);
    free(f->b2);
    free(f);
    return 0;
}

/* ---- helpers ---- */

static void collect(void *opaque, const struct verify_finding *vf)
{
    struct findings *fs = opaque;
    assert_true(fs->n < MAX_FINDINGS);
    struct finding *f = &fs->f[fs->n++];
    *f = (struct finding){.kind = vf->kind, .offset = vf->offset, .id = vf->id, .error = vf->error};
    snprintf(f->backup, sizeof(f->backup), "%s", vf->backup);
    snprintf(f->disk, sizeof(f->disk), "%s", vf->disk ? vf->disk : "");
}

static int run(struct fixture *f, const char *backup, double sample, struct findings *fs,
               struct verify_result *res)
{
    memset(fs, 0, sizeof(*fs));
    struct verify_options o = {.repo = f->r,
                               .backup_id = backup,
                               .sample = sample,
                               .lock_timeout = LOCK_WAIT,
                               .report = collect,
                               .opaque = fs};
    return verify_run(&o, res);
}

static size_t count_kind(const struct findings *fs, enum verify_finding_kind k)
{
    size_t n = 0;
    for (size_t i = 0; i < fs->n; i++)
        n += fs->f[i].kind == k;
    return n;
}

static const struct finding *find(const struct findings *fs, enum verify_finding_kind k,
                                  const char *backup, const char *disk)
{
    for (size_t i = 0; i < fs->n; i++)
        if (fs->f[i].kind == k && !strcmp(fs->f[i].backup, backup) && !strcmp(fs->f[i].disk, disk))
            return &fs->f[i];
    return NULL;
}

static void chunk_file(struct fixture *f, const struct chunk_id *id, char *out, size_t size)
{
    char hex[2 * HASH_SIZE + 1];
    chunk_id_to_hex(id, hex);
    assert_true((size_t)snprintf(out, size, "%s/chunks/%.2s/%s", f->path, hex, hex) < size);
}

/* Flip a byte at pos (negative: from the end) of a file. */
static void file_flip(const char *path, long pos)
{
    FILE *fp = fopen(path, "r+b");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    long at = pos < 0 ? ftell(fp) + pos : pos;
    assert_int_equal(fseek(fp, at, SEEK_SET), 0);
    int c = fgetc(fp);
    assert_int_equal(fseek(fp, at, SEEK_SET), 0);
    fputc(c ^ 0x40, fp);
    assert_int_equal(fclose(fp), 0);
}

/* The path of a file in a backup's directory. */
static void backup_file(struct fixture *f, const char *id, const char *name, char *out, size_t size)
{
    assert_true((size_t)snprintf(out, size, "%s/backups/%s/%s/%s", f->path, VM, id, name) < size);
}

/* ---- tests ---- */

static void test_verify_sound(void **state)
{
    struct fixture *f = *state;
    struct findings fs;
    struct verify_result res;
    assert_int_equal(run(f, NULL, 0, &fs, &res), 0);
    assert_int_equal(res.backups, 2);
    assert_int_equal(res.damaged_backups, 0);
    assert_int_equal(res.chunks_checked, 3); /* c1 and c2 are shared, read once */
    assert_int_equal(res.chunks_damaged, 0);
    assert_int_equal(fs.n, 2);
    assert_int_equal(fs.f[0].kind, VERIFY_BACKUP_OK);
    assert_string_equal(fs.f[0].backup, f->b1); /* oldest first */
    assert_string_equal(fs.f[1].backup, f->b2);
}

/* A corrupted chunk shared by both backups is read once and named with each of them, with
 * its disk and offset; the chunks around it still pass. */
static void test_verify_corrupted_chunk(void **state)
{
    struct fixture *f = *state;
    char path[PATH_MAX + 128];
    chunk_file(f, &f->c2, path, sizeof(path));
    file_flip(path, -CS / 2);
    struct findings fs;
    struct verify_result res;
    assert_int_equal(run(f, NULL, 100, &fs, &res), 0);
    assert_int_equal(res.backups, 2);
    assert_int_equal(res.damaged_backups, 2);
    assert_int_equal(res.chunks_checked, 3);
    assert_int_equal(res.chunks_damaged, 1);
    assert_int_equal(count_kind(&fs, VERIFY_CHUNK_DAMAGED), 2);
    assert_int_equal(count_kind(&fs, VERIFY_BACKUP_OK), 0);
    const struct finding *d = find(&fs, VERIFY_CHUNK_DAMAGED, f->b1, "sda");
    assert_non_null(d);
    assert_int_equal(d->offset, 2 * (uint64_t)CS);
    assert_memory_equal(&d->id, &f->c2, sizeof(f->c2));
    d = find(&fs, VERIFY_CHUNK_DAMAGED, f->b2, "sdb");
    assert_non_null(d);
    assert_int_equal(d->offset, 0);
    assert_memory_equal(&d->id, &f->c2, sizeof(f->c2));

    /* Only backup 2's own chunk damaged: backup 1 passes. */
    assert_int_equal(repo_chunk_delete(f->r, &f->c2), 0);
    chunk_make(f->r, 2);
    chunk_file(f, &f->c3, path, sizeof(path));
    file_flip(path, -CS / 2);
    assert_int_equal(run(f, NULL, 100, &fs, &res), 0);
    assert_int_equal(res.damaged_backups, 1);
    assert_non_null(find(&fs, VERIFY_BACKUP_OK, f->b1, ""));
    d = find(&fs, VERIFY_CHUNK_DAMAGED, f->b2, "sda");
    assert_non_null(d);
    assert_int_equal(d->offset, CS);
}

static void test_verify_missing_chunk(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(repo_chunk_delete(f->r, &f->c3), 0);
    struct findings fs;
    struct verify_result res;
    assert_int_equal(run(f, NULL, 0, &fs, &res), 0);
    assert_int_equal(res.damaged_backups, 1);
    assert_int_equal(res.chunks_damaged, 1);
    assert_int_equal(count_kind(&fs, VERIFY_CHUNK_MISSING), 1);
    const struct finding *d = find(&fs, VERIFY_CHUNK_MISSING, f->b2, "sda");
    assert_non_null(d);
    assert_memory_equal(&d->id, &f->c3, sizeof(f->c3));
}

static void test_verify_damaged_manifest(void **state)
{
    struct fixture *f = *state;
    struct backup *b;
    assert_int_equal(repo_backup_get(f->r, f->b2, &b), 0);
    char path[PATH_MAX + 256];
    backup_file(f, f->b2, b->disks.ptr[1].manifest, path, sizeof(path));
    backup_free(b);
    file_flip(path, -1);
    struct findings fs;
    struct verify_result res;
    assert_int_equal(run(f, NULL, 0, &fs, &res), 0);
    assert_int_equal(res.damaged_backups, 1);
    const struct finding *d = find(&fs, VERIFY_MANIFEST_DAMAGED, f->b2, "sdb");
    assert_non_null(d);
    assert_int_equal(d->error, -EBADMSG);
    assert_non_null(find(&fs, VERIFY_BACKUP_OK, f->b1, ""));
}

static void test_verify_damaged_metadata(void **state)
{
    struct fixture *f = *state;
    char path[PATH_MAX + 256];
    backup_file(f, f->b1, "backup.json", path, sizeof(path));
    file_flip(path, -1);
    struct findings fs;
    struct verify_result res;
    assert_int_equal(run(f, NULL, 0, &fs, &res), 0);
    assert_int_equal(res.backups, 1); /* the other one */
    assert_int_equal(res.damaged_backups, 1);
    assert_int_equal(count_kind(&fs, VERIFY_METADATA_DAMAGED), 1);
    assert_non_null(strstr(fs.f[0].backup, f->b1));
    /* Asked for by ID, it is reported the same way. */
    assert_int_equal(run(f, f->b1, 0, &fs, &res), 0);
    assert_int_equal(res.damaged_backups, 1);
    assert_int_equal(count_kind(&fs, VERIFY_METADATA_DAMAGED), 1);
}

static void test_verify_one_backup(void **state)
{
    struct fixture *f = *state;
    struct findings fs;
    struct verify_result res;
    assert_int_equal(run(f, f->b1, 0, &fs, &res), 0);
    assert_int_equal(res.backups, 1);
    assert_int_equal(res.chunks_checked, 2);
    assert_int_equal(fs.n, 1);
    assert_string_equal(fs.f[0].backup, f->b1);
    assert_int_equal(run(f, "20000101T000000Z-000000", 0, &fs, &res), -ENOENT);
    assert_non_null(strstr(res.err, "not found"));
    assert_int_equal(run(f, NULL, 150, &fs, &res), -EINVAL);
}

/* A sample reads a part of the chunks, the same part on every run. */
static void test_verify_sample(void **state)
{
    struct fixture *f = *state;
    struct backup_writer *w = begin(f->r, T0 + 120);
    struct chunk_id ids[SAMPLE_CHUNKS];
    const struct chunk_id *p[SAMPLE_CHUNKS];
    for (size_t i = 0; i < SAMPLE_CHUNKS; i++) {
        ids[i] = chunk_make(f->r, 100 + i);
        p[i] = &ids[i];
    }
    disk_add(w, "big", p, SAMPLE_CHUNKS);
    free(commit(w));
    struct findings fs;
    struct verify_result all, half, again;
    assert_int_equal(run(f, NULL, 100, &fs, &all), 0);
    assert_int_equal(all.chunks_checked, SAMPLE_CHUNKS + 3);
    assert_int_equal(run(f, NULL, 50, &fs, &half), 0);
    assert_true(half.chunks_checked > 0 && half.chunks_checked < all.chunks_checked);
    assert_int_equal(run(f, NULL, 50, &fs, &again), 0);
    assert_int_equal(again.chunks_checked, half.chunks_checked);
}

int main(void)
{
    log_set_level(LOG_LEVEL_ERROR); /* damaged-file warnings are expected */
#define T(fn) cmocka_unit_test_setup_teardown(fn, fixture_setup, fixture_teardown)
    const struct CMUnitTest tests[] = {
        T(test_verify_sound),
        T(test_verify_corrupted_chunk),
        T(test_verify_missing_chunk),
        T(test_verify_damaged_manifest),
        T(test_verify_damaged_metadata),
        T(test_verify_one_backup),
        T(test_verify_sample),
    };
    return cmocka_run_group_tests_name("verify", tests, NULL, NULL);
}
