/* Unit tests for the providers (src/provider): safe IDs, derived UUIDs, the config section check,
 * the "dir" provider and the "ovm" provider with its vm.cfg reader.  Every test builds its own
 * fixture tree under a mkdtemp() directory in $TMPDIR (default /tmp) and removes it afterwards.
 *
 * Snapshot modes depend on the filesystem of that directory: a disk's mode must be "reflink" or
 * "copy" and agree with a real reflink probe of the directory its snapshots go to.
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

#include "core/log.h"
#include "fs/fsinfo.h"
#include "provider/provider.h"

#define ERR_LEN              512
#define PATH_RING            8   /* fx() results alive at once */
#define LONG_ID_LEN          300 /* longer than any file name */
#define NFTW_FDS             16  /* descriptors nftw() may hold */
#define CFG_TOO_BIG          (1024 * 1024 + 1)
#define DEEP_NESTING         100  /* more list levels than the parser accepts */
#define SNAP_DIR_MODE        0700 /* what the dir provider creates */
#define DEFAULT_SNAPSHOT_DIR ".vmexport-snapshots"
#define MANY_DISKS           28 /* enough to pass sdz */

#define KIB 1024

struct fixture {
    char base[PATH_MAX]; /* canonical path of the mkdtemp() directory */
    struct provider *p;
    vm_list vms;
    struct vm *vm;
    char *path;
    char shm[PATH_MAX]; /* a directory on another filesystem, when a test made one */
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
    const char *tmp = getenv("TMPDIR"); /* e.g. an XFS mount, to see reflink snapshots */
    char tmpl[PATH_MAX];
    snprintf(tmpl, sizeof(tmpl), "%s/vmexport-test-provider-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!f || !mkdtemp(tmpl) || !realpath(tmpl, f->base)) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    struct fixture *f = *state;
    vm_list_free(&f->vms);
    vm_free(f->vm);
    free(f->path);
    provider_free(f->p);
    nftw(f->base, rm_visit, NFTW_FDS, FTW_DEPTH | FTW_PHYS);
    if (f->shm[0])
        nftw(f->shm, rm_visit, NFTW_FDS, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* base + "/" + the formatted path, in one of a few rotating buffers. */
static const char *fx(struct fixture *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static const char *fx(struct fixture *f, const char *fmt, ...)
{
    static char ring[PATH_RING][PATH_MAX];
    static unsigned next;
    char *out = ring[next++ % PATH_RING];
    size_t n = strlen(f->base);
    assert_true(n + 1 < PATH_MAX);
    memcpy(out, f->base, n);
    out[n++] = '/';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out + n, PATH_MAX - n, fmt, ap);
    va_end(ap);
    return out;
}

static void make_dir(const char *path)
{
    assert_int_equal(mkdir(path, 0755), 0);
}

static void make_file(const char *path, off_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, size), 0);
    close(fd);
}

static void write_bytes(const char *path, const char *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

static void write_text(const char *path, const char *text)
{
    write_bytes(path, text, strlen(text));
}

static void make_symlink(const char *target, const char *path)
{
    assert_int_equal(symlink(target, path), 0);
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int provider_open(struct fixture *f, const char *name, const struct provider_setting *s,
                         size_t n, char *err)
{
    struct provider_config cfg = {.name = name, .settings = s, .n_settings = n};
    provider_free(f->p);
    f->p = NULL;
    return provider_new(&cfg, &f->p, err, ERR_LEN);
}

static struct vm *find_vm(const vm_list *l, const char *id)
{
    for (size_t i = 0; i < l->len; i++)
        if (strcmp(l->ptr[i]->id, id) == 0)
            return l->ptr[i];
    return NULL;
}

static const struct vm_disk *find_disk(const struct vm *vm, const char *name)
{
    for (size_t i = 0; i < vm->disks.len; i++)
        if (strcmp(vm->disks.ptr[i].name, name) == 0)
            return &vm->disks.ptr[i];
    return NULL;
}

static void assert_str_or_null_equal(const char *a, const char *b)
{
    if (!a || !b)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

static void assert_vm_equal(const struct vm *a, const struct vm *b)
{
    assert_string_equal(a->id, b->id);
    assert_string_equal(a->friendly_name, b->friendly_name);
    assert_string_equal(a->uuid, b->uuid);
    assert_string_equal(a->provider, b->provider);
    assert_int_equal(a->snapshot_compatible, b->snapshot_compatible);
    assert_int_equal(a->disks.len, b->disks.len);
    for (size_t i = 0; i < a->disks.len; i++) {
        const struct vm_disk *x = &a->disks.ptr[i], *y = &b->disks.ptr[i];
        assert_string_equal(x->name, y->name);
        assert_string_equal(x->path, y->path);
        assert_string_equal(x->device_name, y->device_name);
        assert_string_equal(x->mode, y->mode);
        assert_int_equal(x->size, y->size);
        assert_int_equal(x->snapshot_compatible, y->snapshot_compatible);
        assert_str_or_null_equal(x->snapshot_mode, y->snapshot_mode);
        assert_str_or_null_equal(x->repo_mountpoint, y->repo_mountpoint);
    }
}

/* The mode a snapshot in dir must have, from an independent probe. */
static const char *expected_mode(const char *dir)
{
    return fs_probe_reflink(dir) == 1 ? PROVIDER_SNAPSHOT_REFLINK : PROVIDER_SNAPSHOT_COPY;
}

static void assert_disk(const struct vm_disk *d, const char *path, const char *device,
                        const char *mode, uint64_t size, bool compatible, const char *repo)
{
    assert_non_null(d);
    assert_string_equal(d->path, path);
    assert_string_equal(d->device_name, device);
    assert_string_equal(d->mode, mode);
    assert_int_equal(d->size, size);
    assert_int_equal(d->snapshot_compatible, compatible);
    assert_str_or_null_equal(d->repo_mountpoint, repo);
    if (compatible) {
        assert_non_null(d->snapshot_mode);
        assert_true(strcmp(d->snapshot_mode, PROVIDER_SNAPSHOT_REFLINK) == 0 ||
                    strcmp(d->snapshot_mode, PROVIDER_SNAPSHOT_COPY) == 0);
    } else {
        assert_null(d->snapshot_mode);
    }
}

/* ---- Everything under a directory, to show that nothing was created or changed ---------- */

static FILE *tree_out;

static int tree_visit(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)flag;
    (void)ftw;
    fprintf(tree_out, "%s %o %lld %lld.%09ld %lld.%09ld\n", path, (unsigned)st->st_mode,
            (long long)st->st_size, (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec,
            (long long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec);
    return 0;
}

static char *tree_listing(const char *dir)
{
    char *buf = NULL;
    size_t len = 0;
    tree_out = open_memstream(&buf, &len);
    assert_non_null(tree_out);
    assert_int_equal(nftw(dir, tree_visit, NFTW_FDS, FTW_PHYS), 0);
    fclose(tree_out);
    return buf;
}

/* ---- Capturing warnings ------------------------------------------------------------------ */

struct capture {
    int saved, fd;
};

static void capture_start(struct capture *c, const char *path)
{
    fflush(stderr);
    c->fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(c->fd >= 0);
    c->saved = dup(STDERR_FILENO);
    assert_true(c->saved >= 0);
    assert_int_equal(dup2(c->fd, STDERR_FILENO), STDERR_FILENO);
}

static char *capture_end(struct capture *c)
{
    fflush(stderr);
    dup2(c->saved, STDERR_FILENO);
    close(c->saved);
    off_t len = lseek(c->fd, 0, SEEK_END);
    assert_true(len >= 0);
    char *buf = calloc(1, (size_t)len + 1);
    assert_non_null(buf);
    assert_int_equal(pread(c->fd, buf, (size_t)len, 0), len);
    close(c->fd);
    return buf;
}

/* ---- Shared helpers ---------------------------------------------------------------------- */

static void test_id_is_safe(void **state)
{
    (void)state;
    char long_id[LONG_ID_LEN + 1];
    memset(long_id, 'a', LONG_ID_LEN);
    long_id[LONG_ID_LEN] = '\0';

    assert_true(provider_id_is_safe("vm1"));
    assert_true(provider_id_is_safe("0004fb0000060000ccaf98a0baa2c186"));
    assert_true(provider_id_is_safe("..."));
    assert_true(provider_id_is_safe("%2f")); /* safe, merely never listed */
    assert_false(provider_id_is_safe(NULL));
    assert_false(provider_id_is_safe(""));
    assert_false(provider_id_is_safe("."));
    assert_false(provider_id_is_safe(".."));
    assert_false(provider_id_is_safe("a/b"));
    assert_false(provider_id_is_safe("/"));
    assert_false(provider_id_is_safe("../etc"));
    assert_false(provider_id_is_safe(long_id));
    long_id[NAME_MAX] = '\0';
    assert_true(provider_id_is_safe(long_id));
    long_id[NAME_MAX] = 'a';
    long_id[NAME_MAX + 1] = '\0';
    assert_false(provider_id_is_safe(long_id));
}

static void test_derive_uuid(void **state)
{
    (void)state;
    char a[37], b[37], c[37];

    /* sha256("lab\0vm1"), version 5, RFC 4122 variant (checked with Python's hashlib). */
    provider_derive_uuid("lab", "vm1", a);
    assert_string_equal(a, "bd26a392-020e-5244-9813-3ab24515db9e");

    provider_derive_uuid("ab", "c", b);
    provider_derive_uuid("a", "bc", c);
    assert_string_not_equal(b, c);
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            assert_int_equal(b[i], '-');
        else
            assert_non_null(strchr("0123456789abcdef", b[i]));
    }
    assert_int_equal(b[36], '\0');
    assert_int_equal(b[14], '5');
    assert_non_null(strchr("89ab", b[19]));

    /* Stable, and names longer than any stack buffer work. */
    char big[2 * KIB];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    provider_derive_uuid(big, "vm", b);
    provider_derive_uuid(big, "vm", c);
    assert_string_equal(b, c);
}

static void test_ops_find(void **state)
{
    (void)state;
    assert_ptr_equal(provider_ops_find("dir"), &provider_dir_ops);
    assert_ptr_equal(provider_ops_find("ovm"), &provider_ovm_ops);
    assert_ptr_equal(provider_ops_find("libvirt"), &provider_libvirt_ops);
    assert_null(provider_ops_find("xen"));
    assert_null(provider_ops_find(""));
    assert_null(provider_ops_find(NULL));
}

static void test_config_get(void **state)
{
    (void)state;
    const struct provider_setting s[] = {{"type", "dir"}, {"path", "/a"}, {"path", "/b"}};
    struct provider_config cfg = {.name = "x", .settings = s, .n_settings = 3};
    assert_string_equal(provider_config_get(&cfg, "type"), "dir");
    assert_string_equal(provider_config_get(&cfg, "path"), "/b"); /* the later one wins */
    assert_null(provider_config_get(&cfg, "snapshot_dir"));
}

/* ---- Config errors ----------------------------------------------------------------------- */

static void test_config_errors(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN], want[ERR_LEN];
    make_dir(fx(f, "root"));
    make_file(fx(f, "file"), 0);

    const struct provider_setting unknown[] = {
        {"type", "dir"}, {"path", fx(f, "root")}, {"foo", "1"}};
    assert_int_equal(provider_open(f, "lab", unknown, 3, err), -EINVAL);
    assert_string_equal(err, "[provider.lab] unknown key 'foo' (known: type, path, snapshot_dir)");
    assert_null(f->p);

    const struct provider_setting unknown_ovm[] = {
        {"type", "ovm"}, {"repositories", fx(f, "root")}, {"path", "/x"}};
    assert_int_equal(provider_open(f, "o", unknown_ovm, 3, err), -EINVAL);
    assert_string_equal(err, "[provider.o] unknown key 'path' (known: type, repositories)");

    const struct provider_setting missing[] = {{"type", "dir"}, {"path", fx(f, "nope")}};
    assert_int_equal(provider_open(f, "lab", missing, 2, err), -ENOENT);
    snprintf(want, sizeof(want), "[provider.lab] path: %s: No such file or directory",
             fx(f, "nope"));
    assert_string_equal(err, want);

    const struct provider_setting not_dir[] = {{"type", "dir"}, {"path", fx(f, "file")}};
    assert_int_equal(provider_open(f, "lab", not_dir, 2, err), -ENOTDIR);
    snprintf(want, sizeof(want), "[provider.lab] path: %s: Not a directory", fx(f, "file"));
    assert_string_equal(err, want);

    const struct provider_setting no_path[] = {{"type", "dir"}};
    assert_int_equal(provider_open(f, "lab", no_path, 1, err), -EINVAL);
    assert_non_null(strstr(err, "[provider.lab] path: missing"));

    const struct provider_setting no_type[] = {{"path", fx(f, "root")}};
    assert_int_equal(provider_open(f, "lab", no_type, 1, err), -EINVAL);
    assert_string_equal(err, "[provider.lab] type: missing (known: dir, ovm, qemu, libvirt, rbd)");

    const struct provider_setting bad_type[] = {{"type", "xen"}};
    assert_int_equal(provider_open(f, "lab", bad_type, 1, err), -EINVAL);
    assert_string_equal(err, "[provider.lab] type: unknown provider type 'xen' (known: dir, ovm, qemu, libvirt, rbd)");

    const struct provider_setting bad_snap[] = {
        {"type", "dir"}, {"path", fx(f, "root")}, {"snapshot_dir", fx(f, "no/such")}};
    assert_int_equal(provider_open(f, "lab", bad_snap, 3, err), -ENOENT);
    snprintf(want, sizeof(want), "[provider.lab] snapshot_dir: %s: No such file or directory",
             fx(f, "no/such"));
    assert_string_equal(err, want);

    const struct provider_setting no_repos[] = {{"type", "ovm"}};
    assert_int_equal(provider_open(f, "o", no_repos, 1, err), -EINVAL);
    assert_non_null(strstr(err, "[provider.o] repositories: missing"));

    const struct provider_setting empty_repos[] = {{"type", "ovm"}, {"repositories", "  "}};
    assert_int_equal(provider_open(f, "o", empty_repos, 2, err), -EINVAL);
    assert_string_equal(err, "[provider.o] repositories: empty");

    char repos[2 * PATH_MAX + 2];
    snprintf(repos, sizeof(repos), "%s %s", fx(f, "root"), fx(f, "gone"));
    const struct provider_setting bad_repo[] = {{"type", "ovm"}, {"repositories", repos}};
    assert_int_equal(provider_open(f, "o", bad_repo, 2, err), -ENOENT);
    snprintf(want, sizeof(want), "[provider.o] repositories: %s: No such file or directory",
             fx(f, "gone"));
    assert_string_equal(err, want);

    snprintf(repos, sizeof(repos), "%s %s/", fx(f, "root"), fx(f, "root"));
    assert_int_equal(provider_open(f, "o", bad_repo, 2, err), -EINVAL);
    assert_non_null(strstr(err, "listed twice"));

    /* A small or absent buffer is never overrun. */
    char small[10];
    struct provider_config cfg = {.name = "lab", .settings = unknown, .n_settings = 3};
    assert_int_equal(provider_new(&cfg, &f->p, small, sizeof(small)), -EINVAL);
    assert_string_equal(small, "[provider");
    assert_int_equal(provider_new(&cfg, &f->p, NULL, 0), -EINVAL);
    assert_null(f->p);
}

/* ---- dir provider ------------------------------------------------------------------------ */

static void dir_open_at(struct fixture *f, const char *root)
{
    char err[ERR_LEN] = "";
    const struct provider_setting s[] = {{"type", "dir"}, {"path", root}};
    int r = provider_open(f, "lab", s, 2, err);
    if (r < 0)
        print_message("# %s\n", err);
    assert_int_equal(r, 0);
}

/*   root/a/b/deep.img           a is a VM without disks; a/b is not a VM
 *   root/alpha/{a.img,b.raw,c.qcow2} disks; notes.txt .hidden.img link.img sub.img/ are not
 *   root/beta/data.iso          a VM without disks
 *   root/.hiddenvm/x.img        hidden: not a VM
 *   root/file.img               a file: not a VM
 *   root/linkvm -> alpha        a symlink: not a VM
 *   x.img (next to root)        what ".." would find
 */
static void dir_tree(struct fixture *f)
{
    make_dir(fx(f, "root"));
    make_dir(fx(f, "root/a"));
    make_dir(fx(f, "root/a/b"));
    make_file(fx(f, "root/a/b/deep.img"), KIB);
    make_dir(fx(f, "root/alpha"));
    make_file(fx(f, "root/alpha/b.raw"), 2 * KIB);
    make_file(fx(f, "root/alpha/a.img"), KIB);
    make_file(fx(f, "root/alpha/c.qcow2"), 0);
    make_file(fx(f, "root/alpha/notes.txt"), 1);
    make_file(fx(f, "root/alpha/.hidden.img"), 1);
    make_file(fx(f, "root/alpha/img"), 1);
    make_symlink("a.img", fx(f, "root/alpha/link.img"));
    make_dir(fx(f, "root/alpha/sub.img"));
    make_dir(fx(f, "root/beta"));
    make_file(fx(f, "root/beta/data.iso"), 1);
    make_dir(fx(f, "root/.hiddenvm"));
    make_file(fx(f, "root/.hiddenvm/x.img"), 1);
    make_file(fx(f, "root/file.img"), 1);
    make_symlink("alpha", fx(f, "root/linkvm"));
    make_file(fx(f, "x.img"), 1);
}

static void test_dir_list(void **state)
{
    struct fixture *f = *state;
    char uuid[37];
    dir_tree(f);
    dir_open_at(f, fx(f, "root"));

    assert_int_equal(f->p->ops->list(f->p, &f->vms), 0);
    assert_int_equal(f->vms.len, 3);
    assert_string_equal(f->vms.ptr[0]->id, "a");
    assert_string_equal(f->vms.ptr[1]->id, "alpha");
    assert_string_equal(f->vms.ptr[2]->id, "beta");

    const struct vm *a = f->vms.ptr[0], *alpha = f->vms.ptr[1], *beta = f->vms.ptr[2];
    assert_int_equal(a->disks.len, 0);
    assert_false(a->snapshot_compatible); /* nothing to snapshot */
    assert_int_equal(beta->disks.len, 0);
    assert_false(beta->snapshot_compatible);

    assert_string_equal(alpha->friendly_name, "alpha");
    assert_string_equal(alpha->provider, "lab");
    provider_derive_uuid("lab", "alpha", uuid);
    assert_string_equal(alpha->uuid, uuid);
    assert_true(alpha->snapshot_compatible);
    assert_int_equal(alpha->disks.len, 3);
    const char *root = fx(f, "root");
    const char *mode = expected_mode(fx(f, "root/%s", DEFAULT_SNAPSHOT_DIR));
    assert_string_equal(alpha->disks.ptr[0].name, "a.img");
    assert_disk(&alpha->disks.ptr[0], fx(f, "root/alpha/a.img"), "sda", "w", KIB, true, root);
    assert_string_equal(alpha->disks.ptr[1].name, "b.raw");
    assert_disk(&alpha->disks.ptr[1], fx(f, "root/alpha/b.raw"), "sdb", "w", 2 * KIB, true, root);
    assert_string_equal(alpha->disks.ptr[2].name, "c.qcow2");
    assert_disk(&alpha->disks.ptr[2], fx(f, "root/alpha/c.qcow2"), "sdc", "w", 0, true, root);
    for (size_t i = 0; i < alpha->disks.len; i++)
        assert_string_equal(alpha->disks.ptr[i].snapshot_mode, mode);
}

/* A listed disk opens as long as it is the file that was listed: not once it is replaced by
 * another file or a symlink, nor through a VM directory replaced by a symlink. */
static void test_dir_disk_open(void **state)
{
    struct fixture *f = *state;
    dir_tree(f);
    dir_open_at(f, fx(f, "root"));
    assert_int_equal(f->p->ops->get(f->p, "alpha", &f->vm), 0);
    const struct vm_disk *d = find_disk(f->vm, "a.img");
    struct stat st;
    assert_int_equal(lstat(fx(f, "root/alpha/a.img"), &st), 0);
    assert_string_equal(d->real_path, fx(f, "root/alpha/a.img"));
    assert_int_equal(d->dev, (uint64_t)st.st_dev);
    assert_int_equal(d->ino, (uint64_t)st.st_ino);

    int fd = provider_disk_open(d);
    assert_true(fd >= 0);
    assert_int_equal(fcntl(fd, F_GETFL) & (O_ACCMODE | O_NONBLOCK), O_RDONLY);
    close(fd);

    /* the same name, another file */
    assert_int_equal(rename(fx(f, "root/alpha/a.img"), fx(f, "root/alpha/a.old")), 0);
    make_file(fx(f, "root/alpha/a.img"), KIB);
    assert_int_equal(provider_disk_open(d), -ESTALE);
    /* a symlink to the listed file itself */
    assert_int_equal(unlink(fx(f, "root/alpha/a.img")), 0);
    make_symlink("a.old", fx(f, "root/alpha/a.img"));
    assert_int_equal(provider_disk_open(d), -ELOOP);
    /* the VM directory a symlink to where the file now is */
    assert_int_equal(unlink(fx(f, "root/alpha/a.img")), 0);
    assert_int_equal(rename(fx(f, "root/alpha/a.old"), fx(f, "root/alpha/a.img")), 0);
    assert_int_equal(rename(fx(f, "root/alpha"), fx(f, "alpha.moved")), 0);
    make_symlink("../alpha.moved", fx(f, "root/alpha"));
    assert_int_equal(provider_disk_open(d), -ELOOP);
}

static void test_dir_device_names(void **state)
{
    struct fixture *f = *state;
    make_dir(fx(f, "root"));
    make_dir(fx(f, "root/many"));
    for (int i = 0; i < MANY_DISKS; i++)
        make_file(fx(f, "root/many/d%02d.raw", i), 0);
    dir_open_at(f, fx(f, "root"));

    assert_int_equal(f->p->ops->get(f->p, "many", &f->vm), 0);
    assert_int_equal(f->vm->disks.len, MANY_DISKS);
    assert_string_equal(f->vm->disks.ptr[0].device_name, "sda");
    assert_string_equal(f->vm->disks.ptr[25].device_name, "sdz");
    assert_string_equal(f->vm->disks.ptr[26].device_name, "sdaa");
    assert_string_equal(f->vm->disks.ptr[27].device_name, "sdab");
}

static void test_dir_get(void **state)
{
    struct fixture *f = *state;
    char long_id[LONG_ID_LEN + 1];
    memset(long_id, 'a', LONG_ID_LEN);
    long_id[LONG_ID_LEN] = '\0';
    dir_tree(f);
    dir_open_at(f, fx(f, "root"));

    assert_int_equal(f->p->ops->list(f->p, &f->vms), 0);
    for (size_t i = 0; i < f->vms.len; i++) {
        struct vm *vm = NULL;
        assert_int_equal(f->p->ops->get(f->p, f->vms.ptr[i]->id, &vm), 0);
        assert_vm_equal(vm, f->vms.ptr[i]);
        vm_free(vm);
    }

    const char *absent[] = {
        "..",       ".",        "",       "a/b",         long_id,     "%2f",
        "../x.img", "alpha/",   "/",      "alpha/a.img", ".hiddenvm", DEFAULT_SNAPSHOT_DIR,
        "linkvm",   "file.img", "nosuch", "a/../alpha",
    };
    char *before = tree_listing(f->base);
    for (size_t i = 0; i < sizeof(absent) / sizeof(absent[0]); i++) {
        struct vm *vm = NULL;
        int r = f->p->ops->get(f->p, absent[i], &vm);
        if (r != -ENOENT)
            print_message("# get(\"%s\") = %d\n", absent[i], r);
        assert_int_equal(r, -ENOENT);
        assert_null(vm);
    }
    char *after = tree_listing(f->base);
    assert_string_equal(before, after);
    free(before);
    free(after);
}

static void test_dir_snapshot_path(void **state)
{
    struct fixture *f = *state;
    struct stat st;
    dir_tree(f);
    dir_open_at(f, fx(f, "root"));

    const char *snaps = fx(f, "root/%s", DEFAULT_SNAPSHOT_DIR);
    assert_int_equal(lstat(snaps, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, SNAP_DIR_MODE);

    assert_int_equal(f->p->ops->get(f->p, "alpha", &f->vm), 0);
    const struct vm_disk *d = find_disk(f->vm, "b.raw");
    assert_non_null(d);
    assert_int_equal(f->p->ops->snapshot_locate(f->p, f->vm, d, "snap-1", &f->path), 0);
    assert_string_equal(f->path, fx(f, "root/%s/alpha/snap-1/b.raw", DEFAULT_SNAPSHOT_DIR));

    char *out = NULL;
    const char *bad_snaps[] = {"", ".", "..", "a/b", "../../x"};
    for (size_t i = 0; i < sizeof(bad_snaps) / sizeof(bad_snaps[0]); i++) {
        assert_int_equal(f->p->ops->snapshot_locate(f->p, f->vm, d, bad_snaps[i], &out), -EINVAL);
        assert_null(out);
    }
    /* A VM or disk that list could not have returned. */
    struct vm forged = *f->vm;
    forged.id = "..";
    assert_int_equal(f->p->ops->snapshot_locate(f->p, &forged, d, "s", &out), -EINVAL);
    struct vm_disk forged_disk = *d;
    forged_disk.name = "../b.raw";
    assert_int_equal(f->p->ops->snapshot_locate(f->p, f->vm, &forged_disk, "s", &out), -EINVAL);
    assert_null(out);

    /* Only a path: nothing was created. */
    assert_false(is_dir(fx(f, "root/%s/alpha", DEFAULT_SNAPSHOT_DIR)));
}

static void test_dir_snapshot_dir(void **state)
{
    struct fixture *f = *state;
    char err[ERR_LEN] = "";
    dir_tree(f);

    /* A visible snapshot directory under path is created, and is not a VM. */
    const struct provider_setting s[] = {
        {"type", "dir"}, {"path", fx(f, "root")}, {"snapshot_dir", fx(f, "root/snaps")}};
    assert_int_equal(provider_open(f, "lab", s, 3, err), 0);
    assert_true(is_dir(fx(f, "root/snaps")));
    assert_int_equal(f->p->ops->list(f->p, &f->vms), 0);
    assert_null(find_vm(&f->vms, "snaps"));
    assert_int_equal(f->vms.len, 3);
    assert_int_equal(f->p->ops->get(f->p, "snaps", &f->vm), -ENOENT);
    assert_false(is_dir(fx(f, "root/%s", DEFAULT_SNAPSHOT_DIR)));

    assert_int_equal(f->p->ops->get(f->p, "alpha", &f->vm), 0);
    assert_int_equal(f->p->ops->snapshot_locate(f->p, f->vm, &f->vm->disks.ptr[0], "s", &f->path), 0);
    assert_string_equal(f->path, fx(f, "root/snaps/alpha/s/a.img"));
    assert_string_equal(f->vm->disks.ptr[0].snapshot_mode, expected_mode(fx(f, "root/snaps")));

    /* On another filesystem, reflinks cannot work. */
    struct stat a, b;
    char tmpl[] = "/dev/shm/vmexport-test-provider-XXXXXX";
    if (!mkdtemp(tmpl)) {
        print_message("# no /dev/shm: cross-filesystem check skipped\n");
        return;
    }
    snprintf(f->shm, sizeof(f->shm), "%s", tmpl);
    assert_int_equal(stat(f->shm, &a), 0);
    assert_int_equal(stat(f->base, &b), 0);
    if (a.st_dev == b.st_dev) {
        print_message("# /dev/shm and /tmp are one filesystem: check skipped\n");
        return;
    }
    const struct provider_setting other[] = {
        {"type", "dir"}, {"path", fx(f, "root")}, {"snapshot_dir", f->shm}};
    assert_int_equal(provider_open(f, "lab", other, 3, err), -EXDEV);
    assert_non_null(strstr(err, "[provider.lab] snapshot_dir: "));
    assert_non_null(strstr(err, "reflink"));
    assert_non_null(strstr(err, "one filesystem"));
}

/* ---- ovm provider ------------------------------------------------------------------------ */

static void ovm_open_repos(struct fixture *f, const char *repos)
{
    char err[ERR_LEN] = "";
    const struct provider_setting s[] = {{"type", "ovm"}, {"repositories", repos}};
    int r = provider_open(f, "ovm", s, 2, err);
    if (r < 0)
        print_message("# %s\n", err);
    assert_int_equal(r, 0);
}

static void vm_cfg(struct fixture *f, const char *repo, const char *dir, const char *text)
{
    make_dir(fx(f, "%s/VirtualMachines/%s", repo, dir));
    write_text(fx(f, "%s/VirtualMachines/%s/vm.cfg", repo, dir), text);
}

/* Two repositories A and B, and a directory outside both. */
static void ovm_tree(struct fixture *f)
{
    make_dir(fx(f, "A"));
    make_dir(fx(f, "A/VirtualMachines"));
    make_dir(fx(f, "A/VirtualDisks"));
    make_dir(fx(f, "A/ISOs"));
    make_dir(fx(f, "B"));
    make_dir(fx(f, "B/VirtualMachines"));
    make_dir(fx(f, "B/VirtualDisks"));
    make_dir(fx(f, "outside"));
    make_file(fx(f, "A/VirtualDisks/a1.img"), 4 * KIB);
    make_file(fx(f, "A/VirtualDisks/a2.img"), 5 * KIB);
    make_file(fx(f, "A/VirtualDisks/a3.img"), 6 * KIB);
    make_file(fx(f, "A/VirtualDisks/a4.img"), 7 * KIB);
    make_file(fx(f, "A/ISOs/x.iso"), KIB);
    make_file(fx(f, "B/VirtualDisks/b1.img"), 8 * KIB);
    make_file(fx(f, "outside/o.img"), KIB);
    make_symlink("../../outside/o.img", fx(f, "A/VirtualDisks/escape.img"));
}

static void ovm_open_ab(struct fixture *f)
{
    char repos[2 * PATH_MAX + 2];
    snprintf(repos, sizeof(repos), "%s %s", fx(f, "A"), fx(f, "B"));
    ovm_open_repos(f, repos);
}

static char *cfgf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *cfgf(const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, fmt);
    assert_true(vasprintf(&s, fmt, ap) >= 0);
    va_end(ap);
    return s;
}

/* Writes a vm.cfg built from a format, then frees the text. */
#define VM_CFG(f, repo, dir, ...)                                                                  \
    do {                                                                                           \
        char *text_ = cfgf(__VA_ARGS__);                                                           \
        vm_cfg((f), (repo), (dir), text_);                                                         \
        free(text_);                                                                               \
    } while (0)

/* The VMs of the 004 rules; A and B stand for the repository paths. */
static void ovm_vms(struct fixture *f)
{
    char A[PATH_MAX], B[PATH_MAX], O[PATH_MAX];
    snprintf(A, sizeof(A), "%s", fx(f, "A"));
    snprintf(B, sizeof(B), "%s", fx(f, "B"));
    snprintf(O, sizeof(O), "%s", fx(f, "outside"));

    /* As Oracle VM Manager writes them. */
    VM_CFG(f, "A", "0004fb0000060000aaaa",
           "vif = ['mac=00:21:f6:00:00:01,bridge=0004fb0010a1b2c']\n"
           "OVM_simple_name = 'example-vm'\n"
           "disk = ['file:%s/VirtualDisks/a1.img,xvda,w', 'file:%s/ISOs/x.iso,xvdb:cdrom,r']\n"
           "uuid = '0004fb00-0006-0000-ccaf-98a0baa2c186'\n"
           "on_reboot = 'restart'\n"
           "cpu_weight = 27500\n"
           "memory = 2048\n"
           "OVM_high_availability = False\n"
           "OVM_description = ''\n"
           "name = '0004fb0000060000aaaa'\n"
           "vfb = ['type=vnc,vncunused=1,vnclisten=127.0.0.1,keymap=en-us']\n"
           "OVM_domain_type = 'xen_pvm'\n",
           A, A);
    VM_CFG(f, "A", "vm-phy",
           "name = 'vm-phy'\n"
           "disk = ['file:%s/VirtualDisks/a2.img,xvda,w', 'phy:/dev/mapper/x,xvdb,w']\n",
           A);
    VM_CFG(f, "B", "vm-multi",
           "# a comment line\n"
           "name = \"vm-multi\"   # trailing comment\n"
           "disk = [\n"
           "    'file:%s/VirtualDisks/b1.img,xvda,w',  # root disk\n"
           "    # 'file:%s/VirtualDisks/old.img,xvdc,w',\n"
           "\n"
           "    \"file:%s/VirtualDisks/a3.img,xvdb,w\",\n"
           "]\n"
           "memory = 1024\n",
           B, B, A);
    VM_CFG(f, "A", "vm-outside", "disk = ['file:%s/o.img,xvda,w']\n", O);
    VM_CFG(f, "A", "vm-missing", "disk = ['file:%s/VirtualDisks/gone.img,xvda,w']\n", A);
    VM_CFG(f, "A", "vm-noname", "disk = ['file:%s/VirtualDisks/a4.img,xvda,w']\n", A);
    VM_CFG(f, "A", "vm-ro",
           "disk = ['file:%s/VirtualDisks/a1.img,xvda,w', 'file:%s/VirtualDisks/a2.img,xvdb,r']\n",
           A, A);
    VM_CFG(f, "B", "vm-escape", "disk = ['file:%s/VirtualDisks/escape.img,xvda,w']\n", A);
    VM_CFG(f, "B", "vm-nodisk", "name = 'vm-nodisk'\nmemory = 512\n");
    VM_CFG(f, "B", "vm-empty-cdrom",
           "disk = [',hdc:cdrom,r', 'file:%s/VirtualDisks/b1.img,xvda,w']\n", B);
    /* Not VMs, quietly. */
    make_dir(fx(f, "A/VirtualMachines/no-cfg"));
    vm_cfg(f, "A", ".trash", "name = 'trash'\n");
    make_file(fx(f, "A/VirtualMachines/stray-file"), 1);
}

static const char *const ovm_ids[] = {
    "0004fb0000060000aaaa",
    "vm-empty-cdrom",
    "vm-escape",
    "vm-missing",
    "vm-multi",
    "vm-nodisk",
    "vm-noname",
    "vm-outside",
    "vm-phy",
    "vm-ro",
};

static void test_ovm_list(void **state)
{
    struct fixture *f = *state;
    char uuid[37];
    ovm_tree(f);
    ovm_vms(f);
    ovm_open_ab(f);

    assert_int_equal(f->p->ops->list(f->p, &f->vms), 0);
    if (f->vms.len != sizeof(ovm_ids) / sizeof(ovm_ids[0]))
        for (size_t i = 0; i < f->vms.len; i++)
            print_message("# listed %s\n", f->vms.ptr[i]->id);
    assert_int_equal(f->vms.len, sizeof(ovm_ids) / sizeof(ovm_ids[0]));
    for (size_t i = 0; i < f->vms.len; i++)
        assert_string_equal(f->vms.ptr[i]->id, ovm_ids[i]);

    char A[PATH_MAX], B[PATH_MAX];
    snprintf(A, sizeof(A), "%s", fx(f, "A"));
    snprintf(B, sizeof(B), "%s", fx(f, "B"));
    const char *mode_a = expected_mode(A), *mode_b = expected_mode(B);

    /* 004's first example: one file disk and an ISO. */
    const struct vm *vm = find_vm(&f->vms, "0004fb0000060000aaaa");
    assert_string_equal(vm->friendly_name, "example-vm");
    assert_string_equal(vm->uuid, "0004fb00-0006-0000-ccaf-98a0baa2c186");
    assert_string_equal(vm->provider, "ovm");
    assert_true(vm->snapshot_compatible);
    assert_int_equal(vm->disks.len, 2);
    assert_string_equal(vm->disks.ptr[0].name, "a1.img");
    assert_disk(&vm->disks.ptr[0], fx(f, "A/VirtualDisks/a1.img"), "xvda", "w", 4 * KIB, true, A);
    assert_string_equal(vm->disks.ptr[0].snapshot_mode, mode_a);
    assert_string_equal(vm->disks.ptr[1].name, "x.iso");
    assert_disk(&vm->disks.ptr[1], fx(f, "A/ISOs/x.iso"), "xvdb:cdrom", "r", KIB, false, A);

    /* A writable phy: disk cannot be snapshotted, so neither can the VM. */
    vm = find_vm(&f->vms, "vm-phy");
    assert_false(vm->snapshot_compatible);
    assert_disk(find_disk(vm, "a2.img"), fx(f, "A/VirtualDisks/a2.img"), "xvda", "w", 5 * KIB, true,
                A);
    assert_disk(find_disk(vm, "x"), "/dev/mapper/x", "xvdb", "w", 0, false, NULL);

    /* Several lines, comments, disks in both repositories. */
    vm = find_vm(&f->vms, "vm-multi");
    assert_true(vm->snapshot_compatible);
    assert_int_equal(vm->disks.len, 2);
    assert_disk(&vm->disks.ptr[0], fx(f, "B/VirtualDisks/b1.img"), "xvda", "w", 8 * KIB, true, B);
    assert_string_equal(vm->disks.ptr[0].snapshot_mode, mode_b);
    assert_disk(&vm->disks.ptr[1], fx(f, "A/VirtualDisks/a3.img"), "xvdb", "w", 6 * KIB, true, A);
    assert_string_equal(vm->disks.ptr[1].snapshot_mode, mode_a);

    /* Outside every repository, missing, or a symlink out of the repository. */
    vm = find_vm(&f->vms, "vm-outside");
    assert_false(vm->snapshot_compatible);
    assert_disk(&vm->disks.ptr[0], fx(f, "outside/o.img"), "xvda", "w", KIB, false, NULL);
    vm = find_vm(&f->vms, "vm-missing");
    assert_false(vm->snapshot_compatible);
    assert_disk(&vm->disks.ptr[0], fx(f, "A/VirtualDisks/gone.img"), "xvda", "w", 0, false, NULL);
    vm = find_vm(&f->vms, "vm-escape");
    assert_false(vm->snapshot_compatible);
    /* A symlink is not followed, not even for the size. */
    assert_disk(&vm->disks.ptr[0], fx(f, "A/VirtualDisks/escape.img"), "xvda", "w", 0, false, NULL);

    /* No name, OVM_simple_name or uuid: the directory name and a derived UUID. */
    vm = find_vm(&f->vms, "vm-noname");
    assert_string_equal(vm->friendly_name, "vm-noname");
    provider_derive_uuid("ovm", "vm-noname", uuid);
    assert_string_equal(vm->uuid, uuid);
    assert_true(vm->snapshot_compatible);

    /* A read-only disk does not keep the VM from being snapshotted. */
    vm = find_vm(&f->vms, "vm-ro");
    assert_true(vm->snapshot_compatible);
    assert_disk(&vm->disks.ptr[1], fx(f, "A/VirtualDisks/a2.img"), "xvdb", "r", 5 * KIB, false, A);

    vm = find_vm(&f->vms, "vm-nodisk");
    assert_int_equal(vm->disks.len, 0);
    assert_false(vm->snapshot_compatible);

    /* An empty cdrom drive is no disk. */
    vm = find_vm(&f->vms, "vm-empty-cdrom");
    assert_int_equal(vm->disks.len, 1);
    assert_string_equal(vm->disks.ptr[0].name, "b1.img");
    assert_true(vm->snapshot_compatible);
}

static void test_ovm_get(void **state)
{
    struct fixture *f = *state;
    char long_id[LONG_ID_LEN + 1];
    memset(long_id, 'a', LONG_ID_LEN);
    long_id[LONG_ID_LEN] = '\0';
    ovm_tree(f);
    ovm_vms(f);
    ovm_open_ab(f);

    assert_int_equal(f->p->ops->list(f->p, &f->vms), 0);
    for (size_t i = 0; i < f->vms.len; i++) {
        struct vm *vm = NULL;
        assert_int_equal(f->p->ops->get(f->p, f->vms.ptr[i]->id, &vm), 0);
        assert_vm_equal(vm, f->vms.ptr[i]);
        vm_free(vm);
    }
    const char *absent[] = {"..",       ".",      "",      "a/b",        long_id,           "%2f",
                            "no-cfg",   ".trash", "trash", "stray-file", "VirtualMachines", "../A",
                            "vm-multi/"};
    char *before = tree_listing(f->base);
    for (size_t i = 0; i < sizeof(absent) / sizeof(absent[0]); i++) {
        struct vm *vm = NULL;
        assert_int_equal(f->p->ops->get(f->p, absent[i], &vm), -ENOENT);
        assert_null(vm);
    }
    char *after = tree_listing(f->base);
    assert_string_equal(before, after);
    free(before);
    free(after);
}

static void test_ovm_snapshot_path(void **state)
{
    struct fixture *f = *state;
    char *out = NULL;
    ovm_tree(f);
    ovm_vms(f);
    ovm_open_ab(f);

    assert_int_equal(f->p->ops->get(f->p, "vm-multi", &f->vm), 0);
    const struct vm_disk *b1 = find_disk(f->vm, "b1.img"), *a3 = find_disk(f->vm, "a3.img");
    assert_int_equal(f->p->ops->snapshot_locate(f->p, f->vm, b1, "snap-1", &out), 0);
    assert_string_equal(out, fx(f, "B/CoriolisSnapshots/snap-1/b1.img"));
    free(out);
    assert_int_equal(f->p->ops->snapshot_locate(f->p, f->vm, a3, "snap-1", &out), 0);
    assert_string_equal(out, fx(f, "A/CoriolisSnapshots/snap-1/a3.img"));
    free(out);
    out = NULL;

    const char *bad_snaps[] = {"", ".", "..", "a/b"};
    for (size_t i = 0; i < sizeof(bad_snaps) / sizeof(bad_snaps[0]); i++)
        assert_int_equal(f->p->ops->snapshot_locate(f->p, f->vm, b1, bad_snaps[i], &out), -EINVAL);
    struct vm forged = *f->vm;
    forged.id = "../x";
    assert_int_equal(f->p->ops->snapshot_locate(f->p, &forged, b1, "s", &out), -EINVAL);
    struct vm_disk forged_disk = *b1;
    forged_disk.repo_mountpoint = "/tmp";
    assert_int_equal(f->p->ops->snapshot_locate(f->p, f->vm, &forged_disk, "s", &out), -EINVAL);
    forged_disk = *b1;
    forged_disk.name = "..";
    assert_int_equal(f->p->ops->snapshot_locate(f->p, f->vm, &forged_disk, "s", &out), -EINVAL);
    assert_null(out);

    /* A disk that cannot be snapshotted has no snapshot path. */
    vm_free(f->vm);
    f->vm = NULL;
    assert_int_equal(f->p->ops->get(f->p, "vm-phy", &f->vm), 0);
    assert_int_equal(f->p->ops->snapshot_locate(f->p, f->vm, find_disk(f->vm, "x"), "s", &out),
                     -EOPNOTSUPP);
    assert_null(out);
    assert_false(is_dir(fx(f, "A/CoriolisSnapshots")));
    assert_false(is_dir(fx(f, "B/CoriolisSnapshots")));
}

static void test_ovm_malformed(void **state)
{
    struct fixture *f = *state;
    struct capture cap;
    ovm_tree(f);
    char A[PATH_MAX];
    snprintf(A, sizeof(A), "%s", fx(f, "A"));

    VM_CFG(f, "A", "good", "disk = ['file:%s/VirtualDisks/a1.img,xvda,w']\n", A);
    vm_cfg(f, "A", "bad-list", "memory = 1\ndisk = ['file:/x.img,xvda,w'\nname = 'q'\n");
    vm_cfg(f, "A", "bad-open", "memory = 1\ndisk = ['a,b,w',\n  'c,d,w',\n");
    vm_cfg(f, "A", "bad-string", "memory = 1\n\nname = 'abc\n");
    vm_cfg(f, "A", "bad-garbage", "name = 'ok'\nthis is not python\n");
    vm_cfg(f, "A", "bad-entry", "name = 'bad-entry'\ndisk = [\n  'file:/x.img',\n]\n");
    vm_cfg(f, "A", "bad-mode", "disk = ['file:/x.img,xvda,q']\n");
    vm_cfg(f, "A", "bad-device", "disk = ['file:/x.img,,w']\n");
    vm_cfg(f, "A", "bad-id", "name = '../evil'\n");
    vm_cfg(f, "A", "bad-id2", "name = ''\n");
    vm_cfg(f, "A", "bad-type", "name = 42\n");
    vm_cfg(f, "A", "bad-disk-type", "disk = 'file:/x.img,xvda,w'\n");
    vm_cfg(f, "A", "bad-disk-items", "disk = ['file:/x.img,xvda,w', 3]\n");
    vm_cfg(f, "A", "bad-paren", "cpus = (0, 1)\n");
    vm_cfg(f, "A", "bad-trailing", "name = 'x' 'y'\n");
    vm_cfg(f, "A", "bad-close", "memory = ]\n");
    vm_cfg(f, "A", "bad-basename", "disk = ['file:/OVS/,xvda,w']\n");
    make_dir(fx(f, "A/VirtualMachines/bad-nul"));
    write_bytes(fx(f, "A/VirtualMachines/bad-nul/vm.cfg"), "name = 'a'\n\0\n", 13);
    make_dir(fx(f, "A/VirtualMachines/bad-nul-string"));
    write_bytes(fx(f, "A/VirtualMachines/bad-nul-string/vm.cfg"), "name = 'a\0b'\n", 13);

    char deep[2 * DEEP_NESTING + 16];
    int n = snprintf(deep, sizeof(deep), "x = ");
    for (int i = 0; i < DEEP_NESTING; i++)
        deep[n++] = '[';
    for (int i = 0; i < DEEP_NESTING; i++)
        deep[n++] = ']';
    deep[n] = '\0';
    vm_cfg(f, "A", "bad-deep", deep);

    /* Over 1 MiB: skipped before reading. */
    make_dir(fx(f, "A/VirtualMachines/bad-big"));
    make_file(fx(f, "A/VirtualMachines/bad-big/vm.cfg"), CFG_TOO_BIG);
    /* vm.cfg that is a directory, or a symlink. */
    make_dir(fx(f, "A/VirtualMachines/bad-cfgdir"));
    make_dir(fx(f, "A/VirtualMachines/bad-cfgdir/vm.cfg"));
    make_dir(fx(f, "A/VirtualMachines/bad-symlink"));
    make_symlink(fx(f, "A/VirtualMachines/good/vm.cfg"),
                 fx(f, "A/VirtualMachines/bad-symlink/vm.cfg"));
    /* A VM directory that is a symlink. */
    make_symlink("good", fx(f, "A/VirtualMachines/linked"));

    ovm_open_repos(f, A);
    capture_start(&cap, fx(f, "stderr.log"));
    int r = f->p->ops->list(f->p, &f->vms);
    char *log = capture_end(&cap);
    assert_int_equal(r, 0);
    assert_int_equal(f->vms.len, 1);
    assert_string_equal(f->vms.ptr[0]->id, "good");

    const char *expect[] = {
        "bad-list/vm.cfg:3: expected ',' or ']' in a list",
        "bad-open/vm.cfg:2: '[' is never closed",
        "bad-string/vm.cfg:3: unterminated string",
        "bad-garbage/vm.cfg:2: expected '=' after this",
        "bad-entry/vm.cfg:3: disk entry is not 'target,device,mode'",
        "bad-mode/vm.cfg:1: disk entry with an unknown mode 'q'",
        "bad-device/vm.cfg:1: disk entry without a device name",
        "bad-id/vm.cfg: the VM name cannot be used as an ID",
        "bad-id2/vm.cfg: the VM name cannot be used as an ID",
        "bad-type/vm.cfg:1: name: expected a quoted string",
        "bad-disk-type/vm.cfg:1: disk: expected a list of quoted strings",
        "bad-disk-items/vm.cfg:1: disk: expected a list of quoted strings",
        "bad-paren/vm.cfg:1: unexpected character '('",
        "bad-trailing/vm.cfg:1: name: unexpected text after the value",
        "bad-close/vm.cfg:1: expected a value",
        "bad-basename/vm.cfg:1: disk entry whose path has no usable file name",
        "bad-nul/vm.cfg:2: unexpected byte 0x00",
        "bad-nul-string/vm.cfg:1: NUL byte in a string",
        "bad-deep/vm.cfg:1: lists nested too deeply",
        "bad-big/vm.cfg: larger than 1048576 bytes",
        "bad-cfgdir/vm.cfg: not a regular file",
        "bad-symlink/vm.cfg: Too many levels of symbolic links",
    };
    for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
        if (!strstr(log, expect[i]))
            print_message("# missing from the log: %s\n", expect[i]);
        if (!strstr(log, expect[i]))
            print_message("# log: %s\n", log);
        assert_non_null(strstr(log, expect[i]));
    }
    /* Every warning names the full path of the file. */
    assert_non_null(strstr(log, fx(f, "A/VirtualMachines/bad-list/vm.cfg:3:")));
    assert_null(strstr(log, "no-cfg"));
    assert_null(strstr(log, "linked"));
    free(log);

    /* get() finds the same VMs; it leaves the warnings about other VMs to list(), and only
     * warns about the VM it was asked for. */
    capture_start(&cap, fx(f, "stderr.log"));
    assert_int_equal(f->p->ops->get(f->p, "q", &f->vm), -ENOENT);
    assert_int_equal(f->p->ops->get(f->p, "linked", &f->vm), -ENOENT);
    assert_int_equal(f->p->ops->get(f->p, "good", &f->vm), 0);
    log = capture_end(&cap);
    assert_string_equal(log, "");
    free(log);
    capture_start(&cap, fx(f, "stderr.log"));
    r = f->p->ops->get(f->p, "bad-entry", &f->vm);
    log = capture_end(&cap);
    assert_int_equal(r, -ENOENT);
    assert_non_null(strstr(log, "bad-entry/vm.cfg:3: disk entry is not"));
    assert_null(strstr(log, "bad-list"));
    free(log);
}

static void test_ovm_syntax(void **state)
{
    struct fixture *f = *state;
    char A[PATH_MAX];
    ovm_tree(f);
    snprintf(A, sizeof(A), "%s", fx(f, "A"));
    make_file(fx(f, "A/VirtualDisks/c,d.img"), 3 * KIB);

    VM_CFG(f, "A", "s1",
           "OVM_simple_name = 'first'\r\n"
           "OVM_simple_name = 'it\\'s \"q\" #1'\r\n" /* the later one wins */
           "uuid=\"0004FB00-0006-0000-CCAF-98A0BAA2C186\"\r\n"
           "cpus = [[0, 1], [2], []]\r\n"
           "weird = -1.5e3\r\n"
           "disk = \\\n"
           "  ['file:%s/VirtualDisks/c,d.img,xvda,w!',\n"
           "   'tap:aio:%s/VirtualDisks/a1.img,xvdb,w',\n"
           "   'phy:sdb,xvdc,r', ]  # done\n",
           A, A);
    /* Two disks with one name: neither can be snapshotted. */
    VM_CFG(f, "A", "s2",
           "disk = ['file:%s/VirtualDisks/a1.img,xvda,w', 'file:%s/ISOs/../VirtualDisks/a1.img,"
           "xvdb,w']\n",
           A, A);
    /* A uuid that is not one: derived instead. */
    VM_CFG(f, "A", "s3", "uuid = 'not-a-uuid'\n");
    /* Empty file: a VM without disks. */
    vm_cfg(f, "A", "s4", "");
    ovm_open_repos(f, A);

    assert_int_equal(f->p->ops->list(f->p, &f->vms), 0);
    assert_int_equal(f->vms.len, 4);

    const struct vm *vm = find_vm(&f->vms, "s1");
    assert_non_null(vm);
    assert_string_equal(vm->friendly_name, "it's \"q\" #1");
    assert_string_equal(vm->uuid, "0004FB00-0006-0000-CCAF-98A0BAA2C186");
    assert_int_equal(vm->disks.len, 3);
    assert_disk(find_disk(vm, "c,d.img"), fx(f, "A/VirtualDisks/c,d.img"), "xvda", "w", 3 * KIB,
                true, A);
    assert_disk(find_disk(vm, "a1.img"), fx(f, "A/VirtualDisks/a1.img"), "xvdb", "w", 4 * KIB,
                false, A); /* not file: */
    const struct vm_disk *phy = find_disk(vm, "sdb");
    assert_non_null(phy);
    assert_string_equal(phy->path, "/dev/sdb");
    assert_string_equal(phy->mode, "r");
    assert_false(phy->snapshot_compatible);
    assert_false(vm->snapshot_compatible); /* the tap:aio: disk is writable */

    vm = find_vm(&f->vms, "s2");
    assert_int_equal(vm->disks.len, 2);
    assert_false(vm->disks.ptr[0].snapshot_compatible);
    assert_false(vm->disks.ptr[1].snapshot_compatible);
    assert_null(vm->disks.ptr[0].snapshot_mode);
    assert_false(vm->snapshot_compatible);

    char uuid[37];
    vm = find_vm(&f->vms, "s3");
    provider_derive_uuid("ovm", "s3", uuid);
    assert_string_equal(vm->uuid, uuid);

    vm = find_vm(&f->vms, "s4");
    assert_string_equal(vm->friendly_name, "s4");
    assert_int_equal(vm->disks.len, 0);
}

static void test_ovm_duplicates(void **state)
{
    struct fixture *f = *state;
    char A[PATH_MAX], B[PATH_MAX], repos[3 * PATH_MAX + 3];
    ovm_tree(f);
    snprintf(A, sizeof(A), "%s", fx(f, "A"));
    snprintf(B, sizeof(B), "%s", fx(f, "B"));
    make_dir(fx(f, "C")); /* a repository without VirtualMachines */

    /* The same ID in both repositories: the first repository's wins, in list and get alike. */
    VM_CFG(f, "B", "dup-b", "name = 'dup'\ndisk = ['file:%s/VirtualDisks/b1.img,xvda,w']\n", B);
    VM_CFG(f, "A", "dup-a", "name = 'dup'\ndisk = ['file:%s/VirtualDisks/a1.img,xvda,w']\n", A);
    VM_CFG(f, "A", "dup-a2", "name = 'dup'\ndisk = ['file:%s/VirtualDisks/a2.img,xvda,w']\n", A);
    snprintf(repos, sizeof(repos), "%s\t%s %s", A, fx(f, "C"), B);
    ovm_open_repos(f, repos);

    assert_int_equal(f->p->ops->list(f->p, &f->vms), 0);
    assert_int_equal(f->vms.len, 1);
    assert_string_equal(f->vms.ptr[0]->disks.ptr[0].name, "a1.img");
    assert_int_equal(f->p->ops->get(f->p, "dup", &f->vm), 0);
    assert_vm_equal(f->vm, f->vms.ptr[0]);
}

static void test_ovm_nested_repos(void **state)
{
    struct fixture *f = *state;
    char repos[2 * PATH_MAX + 2];
    ovm_tree(f);
    /* A repository inside another: a disk belongs to the innermost one. */
    make_dir(fx(f, "A/inner"));
    make_file(fx(f, "A/inner/i.img"), KIB);
    VM_CFG(f, "A", "n", "disk = ['file:%s,xvda,w']\n", fx(f, "A/inner/i.img"));
    snprintf(repos, sizeof(repos), "%s %s", fx(f, "A"), fx(f, "A/inner"));
    ovm_open_repos(f, repos);

    assert_int_equal(f->p->ops->get(f->p, "n", &f->vm), 0);
    assert_disk(&f->vm->disks.ptr[0], fx(f, "A/inner/i.img"), "xvda", "w", KIB, true,
                fx(f, "A/inner"));
}

/* Disk paths are taken as spelled: a symlink inside the repository (even to another disk of
 * it) or a ".." keeps a disk from being snapshotted; a repository configured through a
 * symlink matches vm.cfg paths spelled either way, and the disk is opened at its canonical
 * place. */
static void test_ovm_symlinks(void **state)
{
    struct fixture *f = *state;
    char repos[PATH_MAX];
    ovm_tree(f);
    make_symlink("a4.img", fx(f, "A/VirtualDisks/inlink.img"));
    make_symlink("VirtualDisks", fx(f, "A/LinkedDisks"));
    make_symlink("A", fx(f, "Alink"));
    VM_CFG(f, "A", "s",
           "disk = ['file:%s,xvda,w', 'file:%s,xvdb,w', 'file:%s,xvdc,w', 'file:%s,xvdd,w']\n",
           fx(f, "A/VirtualDisks/inlink.img"), fx(f, "A/LinkedDisks/a2.img"),
           fx(f, "A/ISOs/../VirtualDisks/a3.img"), fx(f, "Alink/VirtualDisks/a1.img"));
    snprintf(repos, sizeof(repos), "%s", fx(f, "Alink"));
    ovm_open_repos(f, repos);

    assert_int_equal(f->p->ops->get(f->p, "s", &f->vm), 0);
    assert_int_equal(f->vm->disks.len, 4);
    for (size_t i = 0; i < 3; i++) {
        assert_false(f->vm->disks.ptr[i].snapshot_compatible);
        assert_null(f->vm->disks.ptr[i].real_path);
    }
    const struct vm_disk *d = &f->vm->disks.ptr[3];
    assert_true(d->snapshot_compatible);
    assert_string_equal(d->real_path, fx(f, "A/VirtualDisks/a1.img"));
    assert_string_equal(d->repo_mountpoint, fx(f, "A"));
    int fd = provider_disk_open(d);
    assert_true(fd >= 0);
    close(fd);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, fixture_setup, fixture_teardown)
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_id_is_safe),
        cmocka_unit_test(test_derive_uuid),
        cmocka_unit_test(test_ops_find),
        cmocka_unit_test(test_config_get),
        T(test_config_errors),
        T(test_dir_list),
        T(test_dir_disk_open),
        T(test_dir_device_names),
        T(test_dir_get),
        T(test_dir_snapshot_path),
        T(test_dir_snapshot_dir),
        T(test_ovm_list),
        T(test_ovm_get),
        T(test_ovm_snapshot_path),
        T(test_ovm_malformed),
        T(test_ovm_syntax),
        T(test_ovm_duplicates),
        T(test_ovm_nested_repos),
        T(test_ovm_symlinks),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
