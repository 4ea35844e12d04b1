/* Unit tests of the archive engines (src/backup/archive_export.c, archive_import.c), called
 * directly: a backup written through the repository API is exported as tar and OVA, imported
 * into a repository of another chunk size and read back bit for bit; truncated, tampered,
 * reordered, malformed and oversized archives are refused with a message naming the problem and no
 * backup (nor a manifest of one) visible in the repository; progress callbacks see every byte.
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
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backup/archive_export.h"
#include "backup/archive_import.h"
#include "backup/archive_lib.h"
#include "repo/repo.h"

#define ERR_LEN   2048
#define SRC_CS    REPO_MIN_CHUNK_SIZE       /* chunk size of the source repository */
#define DST_CS    (2 * REPO_MIN_CHUNK_SIZE) /* and of the destination: re-chunked on import */
#define NFTW_FDS  16
#define LOCK_WAIT 10
#define VM        "web \"01\""
#define TIME      1795425300
/* The test VM's disks: a sparse one (data in chunks 1, 4 and the short last one) and a full
 * random one whose last chunk is short. */
#define SPARSE_SIZE (8 * SRC_CS + 4096)
#define FULL_SIZE   (3 * SRC_CS + 5000)

struct disk {
    const char *name;
    uint64_t size;
    uint8_t *data;
};

struct fixture {
    char base[PATH_MAX];
    struct repo *src, *dst;
    struct disk disks[2];
    char *backup_id;
    uint8_t *tar, *ova; /* exported archives */
    size_t tar_len, ova_len;
};

static int rm_visit(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

/* Deterministic bytes (xorshift) that compress badly. */
static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed | 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)x;
    }
}

static struct repo *new_repo(const char *base, const char *name, uint32_t cs)
{
    char path[PATH_MAX + 32], err[ERR_LEN] = "";
    snprintf(path, sizeof(path), "%s/%s", base, name);
    struct repo_init_options io = {.chunk_size = cs};
    assert_int_equal(repo_init(path, &io, err, sizeof(err)), 0);
    struct repo *r = NULL;
    assert_int_equal(repo_open(path, NULL, &r, err, sizeof(err)), 0);
    return r;
}

/* A backup of the fixture's disks in f->src under vm, as a backup run would write it; its ID
 * (malloc'd). */
static char *write_backup(struct fixture *f, const char *vm)
{
    char err[ERR_LEN] = "";
    struct backup_writer *w = NULL;
    assert_int_equal(repo_backup_begin(f->src, vm, TIME, LOCK_WAIT, &w, err, sizeof(err)), 0);
    for (size_t d = 0; d < 2; d++) {
        struct manifest m;
        assert_int_equal(manifest_new(&m, f->disks[d].name, f->disks[d].size, SRC_CS), 0);
        m.change_id = strdup("snap-1/0");
        for (uint64_t i = 0; i < manifest_chunks(&m); i++) {
            uint64_t off = i * SRC_CS;
            size_t len = f->disks[d].size - off < SRC_CS ? f->disks[d].size - off : SRC_CS;
            const uint8_t *p = f->disks[d].data + off;
            bool zero = true;
            for (size_t k = 0; k < len && zero; k++)
                zero = p[k] == 0;
            if (!zero) {
                struct chunk_id id;
                repo_chunk_id(f->src, p, len, &id);
                assert_int_equal(manifest_append(&m, i, &id), 0);
                assert_int_equal(repo_chunk_put(f->src, &id, p, len, NULL, NULL), 0);
            }
        }
        assert_int_equal(repo_backup_add_disk(w, &m), 0);
        manifest_free(&m);
    }
    char *id = strdup(repo_backup_writer_id(w));
    struct backup *b = calloc(1, sizeof(*b));
    b->snapshot_id = strdup("snap-1");
    b->server = strdup("https://h:8443");
    b->vm_json = strdup("{\"name\":\"web 01\",\"friendly_name\":\"Web <01>\"}");
    assert_int_equal(repo_backup_commit(w, b), 0);
    backup_free(b);
    return id;
}

/* Export the fixture's backup as kind into memory (through a memfd). */
static int export_to_memory(struct fixture *f, const char *id, enum archive_kind kind,
                            uint8_t **out, size_t *len, char *err)
{
    int fd = memfd_create("archive", MFD_CLOEXEC);
    assert_true(fd >= 0);
    struct archive_export_options o = {.repo = f->src, .backup_id = id, .fd = fd, .kind = kind};
    struct archive_export_result res;
    int r = archive_export(&o, &res, err, ERR_LEN);
    if (r == 0) {
        struct stat st;
        assert_int_equal(fstat(fd, &st), 0);
        assert_int_equal((uint64_t)st.st_size, res.archive_bytes);
        assert_string_equal(res.backup_id, id);
        assert_int_equal(res.disks, 2);
        assert_int_equal(res.disk_bytes, SPARSE_SIZE + FULL_SIZE);
        /* sparse.img stores chunks 1, 4 and the last (4096 bytes); full.img all */
        assert_int_equal(res.data_bytes, 2 * SRC_CS + 4096 + FULL_SIZE);
        *len = (size_t)st.st_size;
        *out = malloc(*len);
        assert_int_equal(pread(fd, *out, *len, 0), (ssize_t)*len);
    }
    archive_export_result_free(&res);
    close(fd);
    return r;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    const char *tmp = getenv("TMPDIR");
    snprintf(f->base, sizeof(f->base), "%s/test-archive-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(f->base))
        return -1;
    f->src = new_repo(f->base, "src", SRC_CS);
    f->dst = new_repo(f->base, "dst", DST_CS);
    f->disks[0] = (struct disk){"sparse.img", SPARSE_SIZE, calloc(1, SPARSE_SIZE)};
    fill_random(f->disks[0].data + SRC_CS, SRC_CS, 11);
    fill_random(f->disks[0].data + 4 * SRC_CS + 100, 200, 23); /* a few bytes: the chunk stored */
    fill_random(f->disks[0].data + 8 * SRC_CS, 4096, 35);
    /* a disk named like a reserved member: stored as member disk-1.img */
    f->disks[1] = (struct disk){"SHA256SUMS", FULL_SIZE, malloc(FULL_SIZE)};
    fill_random(f->disks[1].data, FULL_SIZE, 47);
    f->backup_id = write_backup(f, VM);
    char err[ERR_LEN] = "";
    assert_int_equal(export_to_memory(f, f->backup_id, ARCHIVE_KIND_TAR, &f->tar, &f->tar_len, err),
                     0);
    assert_int_equal(export_to_memory(f, f->backup_id, ARCHIVE_KIND_OVA, &f->ova, &f->ova_len, err),
                     0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    repo_close(f->src);
    repo_close(f->dst);
    nftw(f->base, rm_visit, NFTW_FDS, FTW_DEPTH | FTW_PHYS);
    for (size_t d = 0; d < 2; d++)
        free(f->disks[d].data);
    free(f->backup_id);
    free(f->tar);
    free(f->ova);
    free(f);
    return 0;
}

/* Progress seen by the callbacks. */
struct seen {
    uint64_t total, added;
    unsigned begins;
};

static void seen_begin(void *opaque, const char *what, uint64_t total)
{
    struct seen *s = opaque;
    assert_null(what);
    s->total = total;
    s->begins++;
}

static void seen_add(void *opaque, uint64_t bytes)
{
    struct seen *s = opaque;
    s->added += bytes;
}

static int import_memory(struct repo *r, const void *data, size_t len, const char *vm,
                         struct archive_import_result *res, char *err, struct seen *seen)
{
    struct archive_import_options o = {
        .repo = r,
        .fd = -1,
        .data = data,
        .size = len,
        .vm_id = vm,
        .lock_timeout = LOCK_WAIT,
        .progress = {.begin = seen_begin, .add = seen_add, .opaque = seen},
    };
    return archive_import(&o, res, err, ERR_LEN);
}

/* Number of committed backups in r. */
static size_t backups_in(struct repo *r)
{
    backup_list l = {0};
    assert_int_equal(repo_backup_list(r, NULL, &l), 0);
    size_t n = l.len;
    backup_list_free(&l);
    return n;
}

static int count_visit(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)ftw;
    static const char suffix[] = ".manifest";
    size_t n = strlen(path);
    return flag == FTW_F && n > strlen(suffix) && !strcmp(path + n - strlen(suffix), suffix);
}

/* No backup, nor a manifest of a partial one, in the destination repository. */
static void assert_nothing_visible(struct fixture *f)
{
    assert_int_equal(backups_in(f->dst), 0);
    char dir[PATH_MAX + 32];
    snprintf(dir, sizeof(dir), "%s/dst/backups", f->base);
    assert_int_equal(nftw(dir, count_visit, NFTW_FDS, FTW_PHYS), 0);
}

/* The disks of backup id in r equal the fixture's, byte for byte. */
static void assert_same_disks(struct fixture *f, struct repo *r, const char *id)
{
    struct backup *b = NULL;
    assert_int_equal(repo_backup_get(r, id, &b), 0);
    assert_int_equal(b->disks.len, 2);
    uint32_t cs = repo_chunk_size(r);
    uint8_t *buf = malloc(cs);
    for (size_t d = 0; d < 2; d++) {
        struct manifest m;
        assert_string_equal(b->disks.ptr[d].name, f->disks[d].name);
        assert_int_equal(repo_manifest_read(r, b, f->disks[d].name, &m), 0);
        assert_int_equal(m.disk_size, f->disks[d].size);
        assert_string_equal(m.change_id, "snap-1/0");
        for (uint64_t i = 0; i < manifest_chunks(&m); i++) {
            uint64_t off = i * cs;
            size_t want = f->disks[d].size - off < cs ? f->disks[d].size - off : cs;
            const struct manifest_entry *me = manifest_find(&m, i);
            if (!me) {
                for (size_t k = 0; k < want; k++)
                    assert_int_equal(f->disks[d].data[off + k], 0);
                continue;
            }
            size_t got = 0;
            assert_int_equal(repo_chunk_get(r, &me->id, buf, cs, &got), 0);
            assert_int_equal(got, want);
            assert_memory_equal(buf, f->disks[d].data + off, want);
        }
        manifest_free(&m);
    }
    free(buf);
    assert_string_equal(b->snapshot_id, "snap-1");
    assert_string_equal(b->server, "https://h:8443");
    assert_int_equal(b->time, TIME);
    backup_free(b);
}

static size_t find_once(const uint8_t *hay, size_t len, const uint8_t *needle, size_t n);

/* Both layouts round trip bit-exact into a repository of another chunk size. */
static void test_round_trip(void **state)
{
    struct fixture *f = *state;
    const uint8_t *archives[] = {f->tar, f->ova};
    const size_t lens[] = {f->tar_len, f->ova_len};
    for (size_t k = 0; k < 2; k++) {
        struct archive_import_result res;
        struct seen seen = {0};
        char err[ERR_LEN] = "";
        int r = import_memory(f->dst, archives[k], lens[k], NULL, &res, err, &seen);
        if (r < 0)
            print_message("# import: %s\n", err);
        assert_int_equal(r, 0);
        assert_string_equal(res.vm_id, VM);
        assert_string_equal(res.source_backup, f->backup_id);
        assert_int_equal(res.disks, 2);
        assert_int_equal(res.bytes_read, lens[k]);
        assert_int_equal(seen.begins, 1);
        assert_int_equal(seen.total, SPARSE_SIZE + FULL_SIZE);
        assert_int_equal(seen.added, SPARSE_SIZE + FULL_SIZE);
        assert_same_disks(f, f->dst, res.backup_id);
        /* the second import stores nothing new */
        assert_true(k == 0 ? res.chunks_new > 0 : res.chunks_new == 0);
        archive_import_result_free(&res);
    }
    assert_int_equal(backups_in(f->dst), 2);
}

/* A VM ID that is not UTF-8 travels as vm_id_base64 and comes back byte for byte. */
static void test_vm_not_utf8(void **state)
{
    struct fixture *f = *state;
    static const char odd[] = "\xff\xfe odd";
    char *id = write_backup(f, odd);
    uint8_t *tar = NULL;
    size_t len = 0;
    char err[ERR_LEN] = "";
    assert_int_equal(export_to_memory(f, id, ARCHIVE_KIND_OVA, &tar, &len, err), 0);
    static const char b64[] = "\"vm_id_base64\": \"//4gb2Rk\"";
    find_once(tar, len, (const uint8_t *)b64, strlen(b64));
    struct archive_import_result res;
    struct seen seen = {0};
    assert_int_equal(import_memory(f->dst, tar, len, NULL, &res, err, &seen), 0);
    assert_string_equal(res.vm_id, odd);
    assert_same_disks(f, f->dst, res.backup_id);
    archive_import_result_free(&res);
    free(tar);
    free(id);
}

/* --vm stores the backup under another VM. */
static void test_vm_override(void **state)
{
    struct fixture *f = *state;
    struct archive_import_result res;
    struct seen seen = {0};
    char err[ERR_LEN] = "";
    assert_int_equal(import_memory(f->dst, f->tar, f->tar_len, "copy", &res, err, &seen), 0);
    assert_string_equal(res.vm_id, "copy");
    backup_list l = {0};
    assert_int_equal(repo_backup_list(f->dst, "copy", &l), 0);
    assert_int_equal(l.len, 1);
    backup_list_free(&l);
    archive_import_result_free(&res);
}

/* Every truncation point up to the manifest's last line fails, with a message and nothing
 * visible.  (Past it only the end-of-archive blocks are lost, which tar readers accept.) */
static void test_truncated(void **state)
{
    struct fixture *f = *state;
    static const char last_line[] = "SHA256(disk-1.img)= ";
    size_t mf = find_once(f->tar, f->tar_len, (const uint8_t *)last_line, strlen(last_line));
    const size_t cuts[] = {0, 100, 512, f->tar_len / 3, f->tar_len / 2, mf - 512, mf, mf + 30};
    for (size_t k = 0; k < sizeof(cuts) / sizeof(cuts[0]); k++) {
        struct archive_import_result res;
        struct seen seen = {0};
        char err[ERR_LEN] = "";
        int r = import_memory(f->dst, f->tar, cuts[k], NULL, &res, err, &seen);
        if (r == 0)
            print_message("# cut at %zu of %zu imported\n", cuts[k], f->tar_len);
        assert_true(r < 0);
        assert_true(err[0] != '\0');
        assert_null(res.backup_id);
        assert_nothing_visible(f);
    }
}

/* Find needle (n bytes) exactly once in hay; its offset. */
static size_t find_once(const uint8_t *hay, size_t len, const uint8_t *needle, size_t n)
{
    size_t at = SIZE_MAX;
    for (size_t i = 0; i + n <= len; i++)
        if (!memcmp(hay + i, needle, n)) {
            assert_int_equal(at, SIZE_MAX);
            at = i;
        }
    assert_int_not_equal(at, SIZE_MAX);
    return at;
}

/* A flipped byte in a disk's data or in vm.json: -EBADMSG naming the member, nothing visible. */
static void test_tampered(void **state)
{
    struct fixture *f = *state;
    static const char vm_time[] = "\"time\": 1795425300";
    struct {
        const uint8_t *needle;
        size_t len;
        const char *member;
    } spots[] = {
        {f->disks[1].data + 2 * SRC_CS + 77, 64, "member disk-1.img does not match"},
        {f->disks[0].data + 4 * SRC_CS + 100, 64, "member sparse.img does not match"},
        {(const uint8_t *)vm_time, strlen(vm_time), "member vm.json does not match"},
    };
    for (size_t k = 0; k < sizeof(spots) / sizeof(spots[0]); k++) {
        uint8_t *bad = malloc(f->ova_len);
        memcpy(bad, f->ova, f->ova_len);
        size_t at = find_once(bad, f->ova_len, spots[k].needle, spots[k].len);
        bad[at + spots[k].len - 2] ^= 1; /* in vm.json: a digit of the time */
        struct archive_import_result res;
        struct seen seen = {0};
        char err[ERR_LEN] = "";
        int r = import_memory(f->dst, bad, f->ova_len, NULL, &res, err, &seen);
        if (!strstr(err, spots[k].member))
            print_message("# error: %s\n", err);
        assert_int_equal(r, -EBADMSG);
        assert_non_null(strstr(err, spots[k].member));
        assert_nothing_visible(f);
        free(bad);
    }
}

/* A member of a hand-made archive: a regular file unless type is set. */
struct member {
    const char *name;
    const char *data;
    unsigned type; /* AE_IFREG when 0 */
};

/* A pax tar of the members, in order, into *out (malloc'd). */
static size_t make_tar(const struct member *m, size_t n, uint8_t **out)
{
    char err[ERR_LEN];
    assert_int_equal(archive_lib_load(err, sizeof(err)), 0);
    int fd = memfd_create("tar", MFD_CLOEXEC);
    assert_true(fd >= 0);
    struct archive *a = sym_archive_write_new();
    assert_int_equal(sym_archive_write_set_format_pax(a), ARCHIVE_OK);
    assert_int_equal(sym_archive_write_open_fd(a, fd), ARCHIVE_OK);
    for (size_t i = 0; i < n; i++) {
        struct archive_entry *e = sym_archive_entry_new();
        size_t len = m[i].data ? strlen(m[i].data) : 0;
        sym_archive_entry_set_pathname(e, m[i].name);
        sym_archive_entry_set_filetype(e, m[i].type ? m[i].type : AE_IFREG);
        sym_archive_entry_set_perm(e, 0644);
        sym_archive_entry_set_size(e, (la_int64_t)len);
        assert_true(sym_archive_write_header(a, e) >= ARCHIVE_WARN);
        if (len)
            assert_int_equal(sym_archive_write_data(a, m[i].data, len), (la_ssize_t)len);
        sym_archive_entry_free(e);
    }
    assert_int_equal(sym_archive_write_close(a), ARCHIVE_OK);
    sym_archive_write_free(a);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    *out = malloc((size_t)st.st_size);
    assert_int_equal(pread(fd, *out, (size_t)st.st_size, 0), st.st_size);
    close(fd);
    return (size_t)st.st_size;
}

#define VM_JSON_ONE_DISK                                                                           \
    "{\"format\":\"vmexport-archive\",\"version\":1,\"vm_id\":\"v\",\"time\":1,"                   \
    "\"disks\":[{\"name\":\"d\",\"file\":\"d.img\",\"size\":4}]}"

/* Archives out of order or with foreign members: refused naming the member, nothing visible. */
static void test_malformed(void **state)
{
    struct fixture *f = *state;
    static const struct member disk_first[] = {{"d.img", "abcd"}, {"vm.json", VM_JSON_ONE_DISK}};
    static const struct member after_mf[] = {
        {"vm.json", VM_JSON_ONE_DISK}, {"d.img", "abcd"}, {"SHA256SUMS", ""}, {"late.txt", "x"}};
    static const struct member dir[] = {{"vm.json", VM_JSON_ONE_DISK}, {"sub", NULL, AE_IFDIR}};
    static const struct member twice[] = {{"vm.json", VM_JSON_ONE_DISK}, {"vm.json", "{}"}};
    static const struct member escape[] = {{"vm.json", VM_JSON_ONE_DISK}, {"../d.img", "abcd"}};
    static const struct member other_version[] = {
        {"vm.json", "{\"format\":\"vmexport-archive\",\"version\":2}"}};
    static const struct member short_disk[] = {{"vm.json", VM_JSON_ONE_DISK}, {"d.img", "abc"}};
    static const struct member bad_mf[] = {
        {"vm.json", VM_JSON_ONE_DISK}, {"d.img", "abcd"}, {"SHA256SUMS", "MD5(d.img)= 00\n"}};
    const struct {
        const struct member *m;
        size_t n;
        int code;
        const char *says;
    } cases[] = {
        {disk_first, 2, -EINVAL, "member d.img comes before vm.json"},
        {after_mf, 4, -EINVAL, "member late.txt follows the manifest SHA256SUMS"},
        {dir, 2, -EINVAL, "member sub/ is not a plain file"},
        {twice, 2, -EINVAL, "member vm.json appears twice"},
        {escape, 2, -EINVAL, "member ../d.img is not a plain file at the top"},
        {other_version, 1, -EPROTONOSUPPORT, "archive version 2 is not supported"},
        {short_disk, 2, -EINVAL, "member d.img: size 3 differs from vm.json's 4"},
        {bad_mf, 3, -EINVAL, "manifest SHA256SUMS, line 1: only SHA256"},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        uint8_t *tar = NULL;
        size_t len = make_tar(cases[k].m, cases[k].n, &tar);
        struct archive_import_result res;
        struct seen seen = {0};
        char err[ERR_LEN] = "";
        int r = import_memory(f->dst, tar, len, NULL, &res, err, &seen);
        if (r != cases[k].code || !strstr(err, cases[k].says))
            print_message("# case %zu: %d: %s\n", k, r, err);
        assert_int_equal(r, cases[k].code);
        assert_non_null(strstr(err, cases[k].says));
        assert_nothing_visible(f);
        free(tar);
    }
}

/* A vm.json listing more disks than a VM may have is refused before any pairwise check. */
static void test_too_many_disks(void **state)
{
    struct fixture *f = *state;
    enum { N = 4097 };
    size_t cap = 100 + N * 64, used = 0;
    char *json = malloc(cap);
    used += (size_t)snprintf(json + used, cap - used,
                             "{\"format\":\"vmexport-archive\",\"version\":1,\"vm_id\":\"v\","
                             "\"time\":1,\"disks\":[");
    for (int i = 0; i < N; i++)
        used += (size_t)snprintf(json + used, cap - used,
                                 "%s{\"name\":\"d%d\",\"file\":\"f%d\",\"size\":0}", i ? "," : "",
                                 i, i);
    snprintf(json + used, cap - used, "]}");
    const struct member m[] = {{"vm.json", json}};
    uint8_t *tar = NULL;
    size_t len = make_tar(m, 1, &tar);
    struct archive_import_result res;
    struct seen seen = {0};
    char err[ERR_LEN] = "";
    assert_int_equal(import_memory(f->dst, tar, len, NULL, &res, err, &seen), -EINVAL);
    assert_non_null(strstr(err, "4097 disks"));
    assert_nothing_visible(f);
    free(tar);
    free(json);
}

/* Not an archive, and an archive with a disk larger than the limit. */
static void test_refused(void **state)
{
    struct fixture *f = *state;
    struct archive_import_result res;
    struct seen seen = {0};
    char err[ERR_LEN] = "";
    static const char junk[] = "not an archive at all, just some text that is long enough";
    assert_true(import_memory(f->dst, junk, sizeof(junk), NULL, &res, err, &seen) < 0);
    assert_true(err[0] != '\0');
    struct archive_import_options o = {
        .repo = f->dst,
        .data = f->tar,
        .size = f->tar_len,
        .max_disk_size = SPARSE_SIZE - 1,
    };
    err[0] = '\0';
    assert_int_equal(archive_import(&o, &res, err, ERR_LEN), -EFBIG);
    assert_non_null(strstr(err, "disk sparse.img"));
    assert_nothing_visible(f);
    assert_int_equal(seen.begins, 0);
}

/* An unknown backup: -ENOENT naming it. */
static void test_export_unknown(void **state)
{
    struct fixture *f = *state;
    uint8_t *out = NULL;
    size_t len = 0;
    char err[ERR_LEN] = "";
    assert_int_equal(
        export_to_memory(f, "20000101T000000Z-000000", ARCHIVE_KIND_TAR, &out, &len, err), -ENOENT);
    assert_non_null(strstr(err, "backup 20000101T000000Z-000000: not found"));
    assert_null(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vm_override, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vm_not_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tampered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_many_disks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_unknown, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
