/* Unit tests for the restore engine (src/backup/restore.c), called directly on a small
 * repository with no terminal: every disk restored bit for bit and sparse, one disk to a file,
 * the progress callbacks, existing destinations (refused, or swapped with force), damaged and
 * missing chunks (an error naming the chunk and nothing left at the destination, an existing
 * file untouched), unknown backups and disks, and a signal arriving while disks are staged.
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
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backup/restore.h"
#include "core/log.h"
#include "repo/repo.h"

#define ERR_LEN   512
#define CS        REPO_MIN_CHUNK_SIZE /* chunk size of the test repository */
#define LOCK_WAIT 10                  /* seconds a test lets a lock wait */
#define NFTW_FDS  16
#define VM        "vm-\"quoted\""
/* Disk a.img: chunks 0 random, 1 zero, 2 half random then zeros, 3 equal to 0, 4 random. */
#define A_CHUNKS 5
#define A_SIZE   ((uint64_t)A_CHUNKS * CS)
/* Disk b.img: an odd size, its last chunk short. */
#define B_SIZE ((uint64_t)2 * CS + 12345)

#define PATHF(buf, ...) assert_true((size_t)snprintf(buf, sizeof(buf), __VA_ARGS__) < sizeof(buf))

struct fixture {
    char base[PATH_MAX];
    char path[PATH_MAX + 16]; /* base/repo */
    struct repo *r;
    uint8_t *a, *b; /* the disks' contents */
    struct backup *backup;
    struct chunk_id b_last; /* the id of b.img's last chunk */
};

static int rm_visit(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void fill_random(uint8_t *p, size_t len, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < len; i++) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        p[i] = (uint8_t)((s * 2685821657736338717ull) >> 56);
    }
}

/* Store a disk's chunks and fill its manifest entries. */
static void disk_store(struct repo *r, struct manifest *m, const uint8_t *data)
{
    for (uint64_t i = 0; i < manifest_chunks(m); i++) {
        uint64_t off = i * CS, len = m->disk_size - off < CS ? m->disk_size - off : CS;
        bool zero = true;
        for (uint64_t k = 0; k < len && zero; k++)
            zero = !data[off + k];
        if (zero)
            continue;
        struct chunk_id id;
        repo_chunk_id(r, data + off, len, &id);
        assert_int_equal(manifest_append(m, i, &id), 0);
        assert_int_equal(repo_chunk_put(r, &id, data + off, len, NULL, NULL), 0);
    }
}

static int fixture_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    const char *tmp = getenv("TMPDIR");
    char tmpl[PATH_MAX];
    if (!f || (size_t)snprintf(tmpl, sizeof(tmpl), "%s/vmexport-test-restore-XXXXXX",
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

    f->a = calloc(1, A_SIZE);
    f->b = calloc(1, B_SIZE);
    assert_non_null(f->a);
    assert_non_null(f->b);
    fill_random(f->a, CS, 1);
    fill_random(f->a + 2 * CS, CS / 2, 2);
    memcpy(f->a + 3 * CS, f->a, CS);
    fill_random(f->a + 4 * CS, CS, 4);
    fill_random(f->b, B_SIZE, 5);

    struct backup_writer *w;
    assert_int_equal(repo_backup_begin(f->r, VM, 1700000000, LOCK_WAIT, &w, err, sizeof(err)), 0);
    struct manifest m;
    assert_int_equal(manifest_new(&m, "a.img", A_SIZE, CS), 0);
    disk_store(f->r, &m, f->a);
    assert_int_equal(repo_backup_add_disk(w, &m), 0);
    manifest_free(&m);
    assert_int_equal(manifest_new(&m, "b.img", B_SIZE, CS), 0);
    disk_store(f->r, &m, f->b);
    assert_int_equal(m.e[m.n_entries - 1].idx, manifest_chunks(&m) - 1);
    f->b_last = m.e[m.n_entries - 1].id;
    assert_int_equal(repo_backup_add_disk(w, &m), 0);
    manifest_free(&m);
    char *id = strdup(repo_backup_writer_id(w));
    struct backup *b = calloc(1, sizeof(*b));
    assert_non_null(b);
    assert_int_equal(repo_backup_commit(w, b), 0);
    backup_free(b);
    assert_int_equal(restore_find_backup(f->r, id, NULL, LOCK_WAIT, &f->backup, err, sizeof(err)),
                     0);
    free(id);
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    struct fixture *f = *state;
    backup_free(f->backup);
    repo_close(f->r);
    nftw(f->base, rm_visit, NFTW_FDS, FTW_DEPTH | FTW_PHYS);
    free(f->a);
    free(f->b);
    free(f);
    return 0;
}

/* ---- helpers ---- */

/* Whether the file at path holds exactly len bytes equal to want. */
static bool file_is(const char *path, const uint8_t *want, uint64_t len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return false;
    uint8_t *got = malloc(len + 1);
    size_t n = got ? fread(got, 1, len + 1, fp) : 0;
    fclose(fp);
    bool same = got && n == len && !memcmp(got, want, len);
    free(got);
    return same;
}

static int count_visit_n;
static int count_visit(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    if (strstr(path + ftw->base, RESTORE_TMP_MARK))
        count_visit_n++;
    return 0;
}

/* Staged files left anywhere under the test directory. */
static int staged_files(struct fixture *f)
{
    count_visit_n = 0;
    nftw(f->base, count_visit, NFTW_FDS, FTW_PHYS);
    return count_visit_n;
}

static void chunk_file(struct fixture *f, const struct chunk_id *id, char *out, size_t size)
{
    char hex[2 * HASH_SIZE + 1];
    chunk_id_to_hex(id, hex);
    assert_true((size_t)snprintf(out, size, "%s/chunks/%.2s/%s", f->path, hex, hex) < size);
}

/* Flip a byte in the middle of a chunk's container. */
static void chunk_damage(struct fixture *f, const struct chunk_id *id)
{
    char path[PATH_MAX + 128];
    chunk_file(f, id, path, sizeof(path));
    FILE *fp = fopen(path, "r+b");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    long mid = ftell(fp) / 2;
    assert_int_equal(fseek(fp, mid, SEEK_SET), 0);
    int c = fgetc(fp);
    assert_int_equal(fseek(fp, mid, SEEK_SET), 0);
    fputc(c ^ 0x40, fp);
    assert_int_equal(fclose(fp), 0);
}

struct counts {
    atomic_ullong bytes;
    unsigned begun, ended;
    uint64_t sizes;
};

static void count_begin(void *opaque, const char *disk, uint64_t size)
{
    struct counts *c = opaque;
    assert_non_null(disk);
    c->begun++;
    c->sizes += size;
}

static void count_advance(void *opaque, uint64_t bytes)
{
    struct counts *c = opaque;
    atomic_fetch_add(&c->bytes, bytes);
}

static void count_end(void *opaque, const char *disk)
{
    struct counts *c = opaque;
    (void)disk;
    c->ended++;
}

static struct restore_options options(struct fixture *f, const char *to, unsigned jobs)
{
    return (struct restore_options){.repo = f->r, .backup = f->backup, .to = to, .jobs = jobs};
}

/* ---- tests ---- */

static void restore_all(struct fixture *f, unsigned jobs)
{
    char dir[PATH_MAX + 32], a[PATH_MAX + 64], b[PATH_MAX + 64];
    PATHF(dir, "%s/out-%u", f->base, jobs);
    PATHF(a, "%s/a.img", dir);
    PATHF(b, "%s/b.img", dir);
    struct counts c = {0};
    struct restore_options o = options(f, dir, jobs);
    o.progress = (struct backup_progress){
        .begin = count_begin, .add = count_advance, .end = count_end, .opaque = &c};
    struct restore_result res;
    int r = restore_run(&o, &res);
    if (r != 0)
        print_message("# restore_run: %d %s\n", r, res.err);
    assert_int_equal(r, 0);
    assert_int_equal(res.disks.len, 2);
    assert_string_equal(res.disks.ptr[0].disk, "a.img");
    assert_string_equal(res.disks.ptr[0].dest, a);
    assert_int_equal(res.disks.ptr[0].size, A_SIZE);
    assert_string_equal(res.disks.ptr[1].disk, "b.img");
    assert_int_equal(res.disks.ptr[1].size, B_SIZE);
    restore_result_free(&res);
    assert_true(file_is(a, f->a, A_SIZE));
    assert_true(file_is(b, f->b, B_SIZE));
    struct stat st;
    assert_int_equal(stat(a, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    /* The zero chunk and the zero half of chunk 2 stay holes (unless the filesystem cannot
     * make holes, as few can't). */
    assert_true((uint64_t)st.st_blocks * 512 <= A_SIZE - CS);
    assert_int_equal(c.begun, 2);
    assert_int_equal(c.ended, 2);
    assert_int_equal(c.sizes, A_SIZE + B_SIZE);
    assert_int_equal(atomic_load(&c.bytes), A_SIZE + B_SIZE);
    assert_int_equal(staged_files(f), 0);
}

static void test_restore_all_disks(void **state)
{
    restore_all(*state, 1);
    restore_all(*state, 8);
}

static void test_restore_one_disk_to_file(void **state)
{
    struct fixture *f = *state;
    char out[PATH_MAX + 32];
    PATHF(out, "%s/one.raw", f->base);
    struct restore_options o = options(f, out, 2);
    o.disk = "b.img";
    struct restore_result res;
    assert_int_equal(restore_run(&o, &res), 0);
    assert_int_equal(res.disks.len, 1);
    restore_result_free(&res);
    assert_true(file_is(out, f->b, B_SIZE));

    /* An existing directory receives the file under the disk's name. */
    char dir[PATH_MAX + 32], in_dir[PATH_MAX + 64];
    PATHF(dir, "%s/d", f->base);
    PATHF(in_dir, "%s/a.img", dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    o = options(f, dir, 2);
    o.disk = "a.img";
    assert_int_equal(restore_run(&o, &res), 0);
    restore_result_free(&res);
    assert_true(file_is(in_dir, f->a, A_SIZE));
}

static void test_restore_existing(void **state)
{
    struct fixture *f = *state;
    char out[PATH_MAX + 32];
    PATHF(out, "%s/exists.raw", f->base);
    FILE *fp = fopen(out, "wb");
    assert_non_null(fp);
    fputs("precious", fp);
    fclose(fp);
    struct restore_options o = options(f, out, 2);
    o.disk = "b.img";
    struct restore_result res;
    assert_int_equal(restore_run(&o, &res), -EEXIST);
    assert_false(res.started);
    assert_non_null(strstr(res.err, "exists (use --force"));
    restore_result_free(&res);
    assert_true(file_is(out, (const uint8_t *)"precious", 8));

    o.force = true;
    assert_int_equal(restore_run(&o, &res), 0);
    restore_result_free(&res);
    assert_true(file_is(out, f->b, B_SIZE));
    assert_int_equal(staged_files(f), 0);
}

/* A damaged chunk in the second disk: the first disk was staged, yet nothing is left, and an
 * existing file given --force keeps its content. */
static void test_restore_damaged_chunk(void **state)
{
    struct fixture *f = *state;
    chunk_damage(f, &f->b_last);
    char hex[2 * HASH_SIZE + 1];
    chunk_id_to_hex(&f->b_last, hex);

    char dir[PATH_MAX + 32];
    PATHF(dir, "%s/new", f->base);
    struct restore_options o = options(f, dir, 3);
    struct restore_result res;
    assert_int_equal(restore_run(&o, &res), -EBADMSG);
    assert_true(res.started);
    assert_non_null(strstr(res.err, hex));
    assert_non_null(strstr(res.err, "disk b.img"));
    assert_non_null(strstr(res.err, "damaged"));
    assert_int_equal(res.disks.len, 0);
    restore_result_free(&res);
    struct stat st;
    assert_int_equal(lstat(dir, &st), -1); /* the directory it made is gone */

    char old[PATH_MAX + 32], a[PATH_MAX + 64];
    PATHF(old, "%s/old", f->base);
    PATHF(a, "%s/a.img", old);
    assert_int_equal(mkdir(old, 0700), 0);
    FILE *fp = fopen(a, "wb");
    assert_non_null(fp);
    fputs("old a", fp);
    fclose(fp);
    o = options(f, old, 3);
    o.force = true;
    assert_int_equal(restore_run(&o, &res), -EBADMSG);
    restore_result_free(&res);
    assert_true(file_is(a, (const uint8_t *)"old a", 5));
    assert_int_equal(staged_files(f), 0);
}

static void test_restore_missing_chunk(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(repo_chunk_delete(f->r, &f->b_last), 0);
    char out[PATH_MAX + 32];
    PATHF(out, "%s/m.raw", f->base);
    struct restore_options o = options(f, out, 2);
    o.disk = "b.img";
    struct restore_result res;
    assert_int_equal(restore_run(&o, &res), -ENOENT);
    assert_non_null(strstr(res.err, "missing from the repository"));
    restore_result_free(&res);
    struct stat st;
    assert_int_equal(lstat(out, &st), -1);
    assert_int_equal(staged_files(f), 0);
}

static void test_restore_find_backup(void **state)
{
    struct fixture *f = *state;
    struct backup *b = (struct backup *)1;
    char err[ERR_LEN] = "";
    assert_int_equal(restore_find_backup(f->r, "nope", NULL, LOCK_WAIT, &b, err, sizeof(err)),
                     -ENOENT);
    assert_null(b);
    assert_non_null(strstr(err, "backup nope: not found"));
    assert_int_equal(
        restore_find_backup(f->r, f->backup->id, "c.img", LOCK_WAIT, &b, err, sizeof(err)),
        -ENOENT);
    assert_non_null(strstr(err, "no disk 'c.img'"));
    assert_int_equal(
        restore_find_backup(f->r, f->backup->id, "a.img", LOCK_WAIT, &b, err, sizeof(err)), 0);
    assert_string_equal(b->vm_id, VM);
    backup_free(b);
    repo_unlock(f->r);
}

/* SIGTERM while a disk is staged: the child dies of it, and removes the staged files and the
 * directory it made first. */
static void raise_term(void *opaque, uint64_t bytes)
{
    (void)opaque;
    (void)bytes;
    raise(SIGTERM);
}

static void test_restore_signal(void **state)
{
    struct fixture *f = *state;
    char dir[PATH_MAX + 32];
    PATHF(dir, "%s/sig", f->base);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct restore_options o = options(f, dir, 1);
        o.handle_signals = true;
        o.progress.add = raise_term;
        struct restore_result res;
        restore_run(&o, &res);
        _exit(0); /* not reached: the signal kills */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGTERM);
    struct stat st;
    assert_int_equal(lstat(dir, &st), -1);
    assert_int_equal(staged_files(f), 0);
}

int main(void)
{
    log_set_level(LOG_LEVEL_ERROR); /* damaged-chunk warnings are expected */
#define T(fn) cmocka_unit_test_setup_teardown(fn, fixture_setup, fixture_teardown)
    const struct CMUnitTest tests[] = {
        T(test_restore_all_disks),     T(test_restore_one_disk_to_file),
        T(test_restore_existing),      T(test_restore_damaged_chunk),
        T(test_restore_missing_chunk), T(test_restore_find_backup),
        T(test_restore_signal),
    };
    return cmocka_run_group_tests_name("restore", tests, NULL, NULL);
}
