/* Unit tests of the provider seam (provider.h): snapshots, readers, changes and uploads driven
 * through provider_ops alone, for the "dir" and "ovm" providers (both on provider/filedisk.c).
 *
 * Each test builds its tree under a mkdtemp() directory in $TMPDIR (default /tmp): on XFS or
 * btrfs the snapshots are reflink clones, elsewhere hashed copies; the expected mode comes from
 * an independent reflink probe.  tests/integration/test-provider-seam.sh runs this program on
 * an XFS loop filesystem, on ext4 and on tmpfs.
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
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/extent.h"
#include "fs/fsdiff.h"
#include "fs/fsinfo.h"
#include "provider/provider.h"

#define ERR_LEN   512
#define NFTW_FDS  16
#define KIB       1024
#define MIB       (1024 * 1024)
#define DISK_SIZE (4 * MIB)
#define BLOCK     (64 * KIB) /* block-hash precision: changes are written in whole blocks */
#define SMALL     (1 * MIB)

struct fixture {
    char base[PATH_MAX];
    struct provider *p;
    struct vm *vm;
    bool ovm;
    char disk_a[PATH_MAX], disk_b[PATH_MAX]; /* the VM's disk files */
};

static int rm_visit(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static const char *at(struct fixture *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static const char *at(struct fixture *f, const char *fmt, ...)
{
    static char ring[8][PATH_MAX];
    static unsigned next;
    char *out = ring[next++ % 8];
    int n = snprintf(out, PATH_MAX, "%s/", f->base);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out + n, PATH_MAX - (size_t)n, fmt, ap);
    va_end(ap);
    return out;
}

static void fill(uint8_t *buf, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)(seed * 31 + i * 7 + (i >> 9));
}

/* Writes BLOCK bytes of pattern seed at off of path (no truncation). */
static void write_block(const char *path, uint64_t off, unsigned seed)
{
    static uint8_t buf[BLOCK];
    fill(buf, sizeof(buf), seed);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, buf, sizeof(buf), (off_t)off), (ssize_t)sizeof(buf));
    assert_int_equal(fsync(fd), 0);
    close(fd);
}

static void punch_block(const char *path, uint64_t off)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, BLOCK),
                     0);
    assert_int_equal(fsync(fd), 0);
    close(fd);
}

static void make_disk(const char *path, uint64_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    close(fd);
}

static char *read_all(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    char *buf = malloc((size_t)st.st_size + 1);
    assert_non_null(buf);
    assert_int_equal(pread(fd, buf, (size_t)st.st_size, 0), st.st_size);
    close(fd);
    *len = (size_t)st.st_size;
    return buf;
}

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static int setup(void **state, bool ovm)
{
    struct fixture *f = calloc(1, sizeof(*f));
    const char *tmp = getenv("TMPDIR");
    char tmpl[PATH_MAX];
    snprintf(tmpl, sizeof(tmpl), "%s/vmexport-test-seam-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!f || !mkdtemp(tmpl) || !realpath(tmpl, f->base)) {
        free(f);
        return -1;
    }
    f->ovm = ovm;
    char err[ERR_LEN] = "";
    int r;
    if (ovm) {
        mkdir(at(f, "R"), 0755);
        mkdir(at(f, "R/VirtualMachines"), 0755);
        mkdir(at(f, "R/VirtualMachines/vm1"), 0755);
        mkdir(at(f, "R/VirtualDisks"), 0755);
        snprintf(f->disk_a, PATH_MAX, "%s", at(f, "R/VirtualDisks/a.img"));
        snprintf(f->disk_b, PATH_MAX, "%s", at(f, "R/VirtualDisks/b.img"));
        FILE *cfg = fopen(at(f, "R/VirtualMachines/vm1/vm.cfg"), "w");
        if (!cfg)
            return -1;
        fprintf(cfg, "name = 'vm1'\ndisk = ['file:%s,xvda,w', 'file:%s,xvdb,w']\n", f->disk_a,
                f->disk_b);
        fclose(cfg);
        const char *repo = at(f, "R");
        const struct provider_setting s[] = {{"type", "ovm"}, {"repositories", repo}};
        struct provider_config pc = {.name = "ovm", .settings = s, .n_settings = 2};
        r = provider_new(&pc, &f->p, err, sizeof(err));
    } else {
        mkdir(at(f, "vms"), 0755);
        mkdir(at(f, "vms/vm1"), 0755);
        snprintf(f->disk_a, PATH_MAX, "%s", at(f, "vms/vm1/a.img"));
        snprintf(f->disk_b, PATH_MAX, "%s", at(f, "vms/vm1/b.img"));
        const char *root = at(f, "vms");
        const struct provider_setting s[] = {{"type", "dir"}, {"path", root}};
        struct provider_config pc = {.name = "lab", .settings = s, .n_settings = 2};
        r = provider_new(&pc, &f->p, err, sizeof(err));
    }
    if (r < 0) {
        print_message("# %s\n", err);
        return -1;
    }
    make_disk(f->disk_a, DISK_SIZE);
    make_disk(f->disk_b, SMALL);
    write_block(f->disk_a, 0, 1);
    write_block(f->disk_a, MIB, 2);
    write_block(f->disk_a, 3 * MIB, 3);
    write_block(f->disk_b, 0, 4);
    *state = f;
    return 0;
}

static int setup_dir(void **state)
{
    return setup(state, false);
}

static int setup_ovm(void **state)
{
    return setup(state, true);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    vm_free(f->vm);
    provider_free(f->p);
    nftw(f->base, rm_visit, NFTW_FDS, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static void load_vm(struct fixture *f)
{
    vm_free(f->vm);
    f->vm = NULL;
    assert_int_equal(f->p->ops->get(f->p, "vm1", &f->vm), 0);
    assert_int_equal(f->vm->disks.len, 2);
    assert_true(f->vm->snapshot_compatible);
}

/* Counts the quiesce calls; freeze fails with fail_freeze when it is not 0. */
struct hooks {
    int freezes, thaws, thaw_result, fail_freeze;
};

static int hook_freeze(void *opaque, char *err, size_t errlen)
{
    struct hooks *h = opaque;
    h->freezes++;
    if (h->fail_freeze)
        snprintf(err, errlen, "freeze refused by the test");
    return h->fail_freeze;
}

static void hook_thaw(void *opaque, int result)
{
    struct hooks *h = opaque;
    h->thaws++;
    h->thaw_result = result;
}

/* A snapshot of both disks of vm1 named snap: the locators (to free) in loc[2]. */
static int snap(struct fixture *f, const char *id, char *loc[2], struct hooks *h, char *err)
{
    struct provider_snapshot_disk d[2] = {{0}};
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(f->p->ops->snapshot_locate(f->p, f->vm, &f->vm->disks.ptr[i], id, &loc[i]),
                         0);
        d[i].disk = &f->vm->disks.ptr[i];
        d[i].locator = loc[i];
    }
    struct provider_quiesce q = {.freeze = hook_freeze, .thaw = hook_thaw, .opaque = h};
    struct provider_snapshot_request req = {.chain = PROVIDER_CHAIN_DEFAULT};
    int r = f->p->ops->snapshot_create(f->p, f->vm, id, &req, d, 2, &q, err, ERR_LEN);
    for (size_t i = 0; i < 2; i++) {
        if (r == 0) {
            char dir[PATH_MAX];
            snprintf(dir, sizeof(dir), "%s", loc[i]);
            *strrchr(dir, '/') = '\0';
            const char *want =
                fs_probe_reflink(dir) == 1 ? PROVIDER_SNAPSHOT_REFLINK : PROVIDER_SNAPSHOT_COPY;
            assert_non_null(d[i].mode);
            assert_string_equal(d[i].mode, want);
            print_message("# snapshot mode %s\n", d[i].mode);
            assert_int_equal(d[i].size, f->vm->disks.ptr[i].size);
        }
        free(d[i].mode);
    }
    return r;
}

static void free_locs(char *loc[2])
{
    free(loc[0]);
    free(loc[1]);
}

/* ---- readers ---- */

struct map_out {
    extent_list data;
    uint64_t end; /* checks order */
};

static int map_emit(void *opaque, const struct extent *e)
{
    struct map_out *m = opaque;
    assert_true(e->start >= m->end);
    m->end = extent_end(e);
    return extent_is_data(e) ? extent_list_add_range(&m->data, e->start, e->length) : 0;
}

/* Whether [start, start + len) lies inside the data of l. */
static bool covered(const extent_list *l, uint64_t start, uint64_t len)
{
    for (size_t i = 0; i < l->len; i++)
        if (l->ptr[i].start <= start && extent_end(&l->ptr[i]) >= start + len)
            return true;
    return false;
}

static bool touches(const extent_list *l, uint64_t start, uint64_t len)
{
    for (size_t i = 0; i < l->len; i++)
        if (l->ptr[i].start < start + len && extent_end(&l->ptr[i]) > start)
            return true;
    return false;
}

static void check_reader(struct fixture *f, const char *locator, const char *orig)
{
    struct disk_reader *rd = NULL;
    assert_int_equal(f->p->ops->disk_open(f->p, locator, DISK_OPEN_STREAM, &rd), 0);
    size_t len;
    char *want = read_all(orig, &len);
    assert_int_equal(rd->size, len);
    uint64_t size = 0;
    assert_int_equal(rd->ops->size(rd, &size), 0);
    assert_int_equal(size, len);
    assert_true(rd->identity[0] != '\0');

    /* all of it, in reads that skip the cache where they can, and an unaligned one */
    char *got = aligned_alloc(4096, len);
    assert_non_null(got);
    size_t n = 0;
    assert_int_equal(rd->ops->pread(rd, got, len, 0, DISK_READ_ONCE, &n), 0);
    assert_int_equal(n, len);
    assert_memory_equal(got, want, len);
    assert_int_equal(rd->ops->pread(rd, got, 1000, BLOCK / 2 + 17, 0, &n), 0);
    assert_int_equal(n, 1000);
    assert_memory_equal(got, want + BLOCK / 2 + 17, 1000);
    /* short only at the end */
    assert_int_equal(rd->ops->pread(rd, got, 2 * BLOCK, len - BLOCK, 0, &n), 0);
    assert_int_equal(n, BLOCK);

    /* the map: the written blocks are data, the untouched middle is not */
    for (unsigned flags = 0; flags <= DISK_MAP_LOGICAL; flags += DISK_MAP_LOGICAL) {
        struct map_out m = {.data = VECTOR_INIT};
        assert_int_equal(rd->ops->map(rd, flags, &(struct disk_map_sink){map_emit, &m}), 0);
        static const char zeros[BLOCK];
        if (memcmp(want, zeros, BLOCK)) /* the first block, unless the VM discarded it */
            assert_true(covered(&m.data, 0, BLOCK));
        else
            assert_false(touches(&m.data, 0, BLOCK));
        assert_true(len < 2 * MIB || covered(&m.data, MIB, BLOCK));
        assert_false(touches(&m.data, len / 2 + BLOCK, 4 * BLOCK));
        assert_true(m.end <= len);
        extent_list_reset(&m.data);
    }

    /* a descriptor of the same data, for sendfile */
    int fd = rd->ops->dup_fd(rd);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, got, 16, 0), 16);
    assert_memory_equal(got, want, 16);

    /* read-ahead hints (multipart answers): the bytes read after WILLNEED are the data, from
     * the page cache; DONE takes them out of it (where the reader tells cached pages: not on
     * tmpfs, whose pages are the file).  Written back first: only clean pages leave the cache
     * at once. */
    assert_non_null(rd->ops->advise);
    assert_int_equal(fdatasync(fd), 0);
    rd->ops->advise(rd, BLOCK, 2 * BLOCK, DISK_ADVISE_WILLNEED);
    assert_int_equal(rd->ops->pread(rd, got, 2 * BLOCK, BLOCK, 0, &n), 0);
    assert_int_equal(n, 2 * BLOCK);
    assert_memory_equal(got, want + BLOCK, 2 * BLOCK);
    if (rd->direct_align && rd->ops->cached(rd, BLOCK, 2 * BLOCK)) {
        rd->ops->advise(rd, BLOCK, 2 * BLOCK, DISK_ADVISE_DONE);
        assert_false(rd->ops->cached(rd, BLOCK, BLOCK));
        assert_false(rd->ops->cached(rd, 2 * BLOCK, BLOCK));
    }
    close(fd);
    free(got);
    free(want);
    disk_reader_close(rd);
}

/* ---- changes ---- */

static int list_emit(void *opaque, uint64_t start, uint64_t length)
{
    return extent_list_add_range(opaque, start, length);
}

static void assert_lists_equal(const extent_list *a, const extent_list *b)
{
    assert_int_equal(a->len, b->len);
    for (size_t i = 0; i < a->len; i++) {
        assert_int_equal(a->ptr[i].start, b->ptr[i].start);
        assert_int_equal(a->ptr[i].length, b->ptr[i].length);
    }
}

/* ---- the tests ---- */

static void test_snapshot_read_diff_delete(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    char *s1[2] = {0}, *s2[2] = {0};
    struct hooks h = {0};
    load_vm(f);

    assert_int_equal(snap(f, "s1", s1, &h, err), 0);
    assert_int_equal(h.freezes, 1);
    assert_int_equal(h.thaws, 1);
    assert_int_equal(h.thaw_result, 0);
    /* the snapshot is private to the daemon */
    struct stat st;
    assert_int_equal(lstat(s1[0], &st), 0);
    assert_true(S_ISREG(st.st_mode));
    check_reader(f, s1[0], f->disk_a);
    check_reader(f, s1[1], f->disk_b);

    /* the VM writes on: new data at 2 MiB, a discarded first block, the rest untouched */
    write_block(f->disk_a, 2 * MIB, 5);
    punch_block(f->disk_a, 0);
    load_vm(f);
    assert_int_equal(snap(f, "s2", s2, &h, err), 0);
    check_reader(f, s2[0], f->disk_a);

    extent_list ch = VECTOR_INIT, z = VECTOR_INIT;
    const char *method = NULL;
    struct extent_sink cs = {list_emit, &ch}, zs = {list_emit, &z};
    assert_int_equal(f->p->ops->disk_changes(f->p, s1[0], s2[0], &cs, &zs, &method, err, ERR_LEN), 0);
    assert_non_null(method);
    /* never under-reports; block-precise: the unchanged blocks are not reported */
    assert_true(covered(&ch, 2 * MIB, BLOCK));
    assert_true(covered(&z, 0, BLOCK));
    assert_false(touches(&ch, MIB, BLOCK));
    assert_false(touches(&ch, 3 * MIB, BLOCK));
    assert_false(touches(&z, MIB, 3 * MIB));
    assert_false(touches(&ch, 0, BLOCK)); /* zeroed, not changed */

    /* exactly what fs/fsdiff.h says of the two files */
    extent_list fch = VECTOR_INIT, fz = VECTOR_INIT;
    struct fs_diff d;
    assert_int_equal(fs_diff_open(&d, s1[0], s2[0], DIFF_AUTO), 0);
    struct extent_sink fcs = {list_emit, &fch}, fzs = {list_emit, &fz};
    assert_int_equal(fs_diff_run(&d, &fcs, &fzs), 0);
    assert_string_equal(method, diff_mode_name(d.mode));
    fs_diff_close(&d);
    assert_lists_equal(&ch, &fch);
    assert_lists_equal(&z, &fz);
    /* reflink snapshots diff by their maps; copies by their block hashes */
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", s1[0]);
    *strrchr(dir, '/') = '\0';
    assert_string_equal(method, fs_probe_reflink(dir) == 1 ? "reflink" : "hash");
    print_message("# diff method %s\n", method);

    /* the second disk did not change */
    extent_list ch2 = VECTOR_INIT, z2 = VECTOR_INIT;
    struct extent_sink cs2 = {list_emit, &ch2}, zs2 = {list_emit, &z2};
    assert_int_equal(f->p->ops->disk_changes(f->p, s1[1], s2[1], &cs2, &zs2, NULL, err, ERR_LEN), 0);
    assert_int_equal(ch2.len, 0);
    assert_int_equal(z2.len, 0);

    /* deletion removes each disk, its sidecar and the snapshot's directory; twice is fine */
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(f->p->ops->snapshot_delete(f->p, s1[i]), 0);
        assert_false(exists(s1[i]));
        char sidecar[PATH_MAX + 16];
        snprintf(sidecar, sizeof(sidecar), "%s.vxhash", s1[i]);
        assert_false(exists(sidecar));
        assert_int_equal(f->p->ops->snapshot_delete(f->p, s1[i]), 0);
    }
    snprintf(dir, sizeof(dir), "%s", s1[0]);
    *strrchr(dir, '/') = '\0';
    assert_false(exists(dir));
    assert_true(exists(s2[0])); /* the other snapshot stays readable */
    check_reader(f, s2[0], f->disk_a);
    struct disk_reader *rd = NULL;
    assert_int_equal(f->p->ops->disk_open(f->p, s1[0], 0, &rd), -ENOENT);

    extent_list_reset(&ch);
    extent_list_reset(&z);
    extent_list_reset(&fch);
    extent_list_reset(&fz);
    extent_list_reset(&ch2);
    extent_list_reset(&z2);
    free_locs(s1);
    free_locs(s2);
}

static void test_snapshot_all_or_nothing(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    char *loc[2] = {0};
    struct hooks h = {0};
    load_vm(f);

    /* the second disk is replaced after it was listed (the old file kept, so that the new one
     * cannot reuse its inode): no snapshot of either disk */
    char old[PATH_MAX + 8];
    snprintf(old, sizeof(old), "%s.old", f->disk_b);
    assert_int_equal(rename(f->disk_b, old), 0);
    make_disk(f->disk_b, SMALL);
    assert_int_equal(snap(f, "s3", loc, &h, err), -ESTALE);
    assert_non_null(strstr(err, "b.img"));
    assert_int_equal(h.freezes, 1);
    assert_int_equal(h.thaws, 1);
    assert_int_equal(h.thaw_result, -ESTALE);
    for (size_t i = 0; i < 2; i++)
        assert_false(exists(loc[i]));
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", loc[0]);
    *strrchr(dir, '/') = '\0';
    assert_false(exists(dir));
    free_locs(loc);
    assert_int_equal(rename(old, f->disk_b), 0);

    /* a failed freeze takes nothing and thaws nothing */
    load_vm(f);
    struct hooks hf = {.fail_freeze = -ECANCELED};
    assert_int_equal(snap(f, "s4", loc, &hf, err), -ECANCELED);
    assert_string_equal(err, "freeze refused by the test");
    assert_int_equal(hf.thaws, 0);
    assert_false(exists(loc[0]));
    assert_false(exists(loc[1]));
    free_locs(loc);

    /* and then it works */
    load_vm(f);
    struct hooks ok = {0};
    assert_int_equal(snap(f, "s5", loc, &ok, err), 0);
    check_reader(f, loc[1], f->disk_b);
    free_locs(loc);
}

/* A snapshot file that is a symlink is never read. */
static void test_reader_no_symlinks(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    char *loc[2] = {0};
    struct hooks h = {0};
    load_vm(f);
    assert_int_equal(snap(f, "s6", loc, &h, err), 0);
    assert_int_equal(unlink(loc[1]), 0);
    assert_int_equal(symlink(f->disk_a, loc[1]), 0);
    struct disk_reader *rd = NULL;
    assert_int_equal(f->p->ops->disk_open(f->p, loc[1], 0, &rd), -ELOOP);
    assert_null(rd);
    /* deleting removes the link, not what it points to */
    assert_int_equal(f->p->ops->snapshot_delete(f->p, loc[1]), 0);
    assert_false(exists(loc[1]));
    assert_true(exists(f->disk_a));
    free_locs(loc);
}

static void test_upload_writer(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    struct disk_writer *w = NULL;
    const char *name = "upload-0123456789abcdef0123456789abcdef.partial";
    if (!f->p->ops->upload_open) {
        assert_true(f->ovm); /* ovm takes no uploads */
        return;
    }
    assert_int_equal(f->p->ops->upload_open(f->p, "vm1", "a.img", name, &w, err, ERR_LEN), -EEXIST);
    assert_int_equal(f->p->ops->upload_open(f->p, "vm2", "new.img", name, &w, err, ERR_LEN), 0);
    assert_false(exists(w->partial));
    assert_int_equal(w->ops->create(w, SMALL, err, ERR_LEN), 0);
    struct stat st;
    assert_int_equal(lstat(w->partial, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_size, SMALL);
    static uint8_t buf[BLOCK];
    fill(buf, sizeof(buf), 9);
    assert_int_equal(w->ops->pwrite(w, buf, sizeof(buf), BLOCK), 0);
    assert_int_equal(w->ops->zero(w, 0, BLOCK), 0);
    assert_int_equal(w->ops->flush(w), 0);
    assert_int_equal(w->ops->writeback(w, 0, 0, BLOCK, BLOCK), 0);
    struct map_out m = {.data = VECTOR_INIT};
    assert_int_equal(w->ops->map(w, SMALL, &(struct disk_map_sink){map_emit, &m}), 0);
    assert_true(covered(&m.data, BLOCK, BLOCK));
    assert_false(touches(&m.data, 4 * BLOCK, SMALL - 4 * BLOCK));
    extent_list_reset(&m.data);
    uint64_t size = 0;
    assert_int_equal(w->ops->size(w, &size), 0);
    assert_int_equal(size, SMALL);
    assert_int_equal(w->ops->sync(w), 0);
    assert_int_equal(w->ops->publish(w), 0);
    assert_false(exists(w->partial));
    size_t len;
    char *data = read_all(w->final, &len);
    assert_int_equal(len, SMALL);
    assert_memory_equal(data + BLOCK, buf, BLOCK);
    free(data);
    char partial[PATH_MAX];
    snprintf(partial, sizeof(partial), "%s", w->partial);
    disk_writer_close(w);

    /* the published disk is listed */
    struct vm *vm = NULL;
    assert_int_equal(f->p->ops->get(f->p, "vm2", &vm), 0);
    assert_int_equal(vm->disks.len, 1);
    assert_string_equal(vm->disks.ptr[0].name, "new.img");
    vm_free(vm);

    /* recovery removes only partial files named after their upload */
    int fd = open(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(f->p->ops->upload_discard(f->p, f->disk_a, "x", name), -EPERM);
    assert_true(exists(f->disk_a));
    assert_int_equal(f->p->ops->upload_discard(f->p, partial, "0123", name), 0);
    assert_false(exists(partial));
    assert_int_equal(f->p->ops->upload_discard(f->p, partial, "0123", name), -ENOENT);
}

int main(void)
{
#define T(fn, s) cmocka_unit_test_setup_teardown(fn, s, teardown)
    const struct CMUnitTest tests[] = {
        T(test_snapshot_read_diff_delete, setup_dir),
        T(test_snapshot_read_diff_delete, setup_ovm),
        T(test_snapshot_all_or_nothing, setup_dir),
        T(test_snapshot_all_or_nothing, setup_ovm),
        T(test_reader_no_symlinks, setup_dir),
        T(test_reader_no_symlinks, setup_ovm),
        T(test_upload_writer, setup_dir),
        T(test_upload_writer, setup_ovm),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
