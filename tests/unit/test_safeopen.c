/* Unit tests of src/fs/safeopen.c: opening beneath a directory without following symlinks, by
 * openat2 and by the component walk that stands in for it: plain files open; a symlink as the
 * last component, as a directory on the way, or a ".." or absolute path are refused; mkdir -p
 * stops at a symlink; unique names are created in place.
 *
 * The tree (in a mkdtemp() directory in $TMPDIR, default /tmp):
 *   a/b/file          "data"
 *   a/link            -> b/file         (inside, still refused)
 *   a/out             -> /etc/passwd
 *   a/dirlink         -> b
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "fs/safeopen.h"

struct fixture {
    char dir[256];
    int dfd;
};

typedef int (*open_fn)(int dirfd, const char *rel, int flags, mode_t mode);

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(f->dir, sizeof(f->dir), "%s/vx-safeopen-XXXXXX", tmp);
    if (!mkdtemp(f->dir))
        return -1;
    f->dfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (f->dfd < 0 || mkdirat(f->dfd, "a", 0700) < 0 || mkdirat(f->dfd, "a/b", 0700) < 0)
        return -1;
    int fd = openat(f->dfd, "a/b/file", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, "data", 4) != 4)
        return -1;
    close(fd);
    if (symlinkat("b/file", f->dfd, "a/link") < 0 ||
        symlinkat("/etc/passwd", f->dfd, "a/out") < 0 || symlinkat("b", f->dfd, "a/dirlink") < 0)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    close(f->dfd);
    int r = system(cmd);
    free(f);
    return r == 0 ? 0 : -1;
}

static void check_opens(struct fixture *f, open_fn fn)
{
    char buf[8] = {0};
    int fd = fn(f->dfd, "a/b/file", O_RDONLY, 0);
    assert_true(fd >= 0);
    assert_int_equal(read(fd, buf, sizeof(buf)), 4);
    assert_memory_equal(buf, "data", 4);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    close(fd);
    fd = fn(f->dfd, "a//./b/file", O_RDONLY, 0); /* empty and "." components are harmless */
    assert_true(fd >= 0);
    close(fd);
    fd = fn(f->dfd, "a/b", O_RDONLY | O_DIRECTORY, 0);
    assert_true(fd >= 0);
    close(fd);
}

static void check_refuses(struct fixture *f, open_fn fn)
{
    assert_int_equal(fn(f->dfd, "a/link", O_RDONLY, 0), -ELOOP);
    assert_int_equal(fn(f->dfd, "a/out", O_RDONLY, 0), -ELOOP);
    assert_int_equal(fn(f->dfd, "a/dirlink/file", O_RDONLY, 0), -ELOOP);
    assert_int_equal(fn(f->dfd, "a/../a/b/file", O_RDONLY, 0), -EXDEV);
    assert_int_equal(fn(f->dfd, "..", O_RDONLY, 0), -EXDEV);
    assert_int_equal(fn(f->dfd, "/etc/passwd", O_RDONLY, 0), -EXDEV);
    assert_int_equal(fn(f->dfd, "", O_RDONLY, 0), -EXDEV);
    assert_int_equal(fn(f->dfd, "a/missing", O_RDONLY, 0), -ENOENT);
    /* O_CREAT through a symlink creates nothing where it points */
    assert_int_equal(fn(f->dfd, "a/dirlink/new", O_WRONLY | O_CREAT, 0600), -ELOOP);
    assert_int_equal(faccessat(f->dfd, "a/b/new", F_OK, 0), -1);
}

static void test_openat2(void **state)
{
    check_opens(*state, fs_openat_beneath);
    check_refuses(*state, fs_openat_beneath);
}

static void test_walk(void **state)
{
    check_opens(*state, fs_openat_beneath_walk);
    check_refuses(*state, fs_openat_beneath_walk);
}

static void test_absolute(void **state)
{
    struct fixture *f = *state;
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/a/b/file", f->dir);
    int fd = fs_open_nofollow(p, O_RDONLY, 0);
    assert_true(fd >= 0);
    close(fd);
    snprintf(p, sizeof(p), "%s/a/dirlink/file", f->dir);
    assert_int_equal(fs_open_nofollow(p, O_RDONLY, 0), -ELOOP);
    assert_int_equal(fs_open_nofollow("relative/path", O_RDONLY, 0), -EINVAL);
    assert_int_equal(fs_open_beneath(f->dir, "a/link", O_RDONLY, 0), -ELOOP);
    fd = fs_open_beneath(f->dir, "a/b/file", O_RDONLY, 0);
    assert_true(fd >= 0);
    close(fd);

    const char *name = NULL;
    snprintf(p, sizeof(p), "%s/a/b/file", f->dir);
    fd = fs_open_parent_nofollow(p, &name);
    assert_true(fd >= 0);
    assert_string_equal(name, "file");
    assert_int_equal(faccessat(fd, name, F_OK, 0), 0);
    close(fd);
    snprintf(p, sizeof(p), "%s/a/dirlink/file", f->dir);
    assert_int_equal(fs_open_parent_nofollow(p, &name), -ELOOP);
}

static void test_mkdirs(void **state)
{
    struct fixture *f = *state;
    int fd = fs_mkdirs_beneath(f->dfd, "a/b/c/d", 0700);
    assert_true(fd >= 0);
    close(fd);
    struct stat st;
    assert_int_equal(fstatat(f->dfd, "a/b/c/d", &st, AT_SYMLINK_NOFOLLOW), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0700);
    fd = fs_mkdirs_beneath(f->dfd, "a/b/c/d", 0700); /* exists: opened */
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(fs_mkdirs_beneath(f->dfd, "a/dirlink/x", 0700), -ELOOP);
    assert_int_equal(fstatat(f->dfd, "a/b/x", &st, 0), -1); /* nothing made where it points */
    assert_int_equal(fs_mkdirs_beneath(f->dfd, "a/dirlink", 0700), -ELOOP);
}

static void test_unique(void **state)
{
    struct fixture *f = *state;
    char *name = NULL;
    int fd = fs_create_unique_at(f->dfd, "t.", O_RDWR, 0600, &name);
    assert_true(fd >= 0);
    assert_int_equal(strlen(name), 2 + 6);
    assert_memory_equal(name, "t.", 2);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    close(fd);
    assert_int_equal(unlinkat(f->dfd, name, 0), 0);
    free(name);
    assert_int_equal(fs_create_unique_at(f->dfd, "a/t.", O_RDWR, 0600, &name), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_openat2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_walk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_absolute, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mkdirs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unique, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
