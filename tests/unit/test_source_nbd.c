/* Tests of the backup engine's NBD source (backup/source_nbd.c) against a real qemu-nbd serving
 * a raw file read-only on a unix socket: reads from several fetch threads match the file bit for
 * bit; a file_id that is no NBD URI, a socket not on this host or not a socket, a missing export
 * and an export of another size are refused with the reason.  Skipped without qemu-nbd. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backup/source.h"
#include "core/nbdio.h"

#define MIB       (1024ull * 1024)
#define DISK_SIZE (5 * MIB + 64 * 1024)
#define WORKERS   4
#define PIECE     (192 * 1024 + 512) /* uneven: reads straddle clusters */

struct fixture {
    char dir[64];
    char file[128], sock[128], pidfile[128];
    uint8_t *data;
    pid_t server;
};

static int run(char *const argv[])
{
    pid_t p = fork();
    if (p == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        execvp(argv[0], argv);
        _exit(127);
    }
    int st;
    if (p < 0 || waitpid(p, &st, 0) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/vmexport-source-nbd.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->file, sizeof(f->file), "%s/disk.raw", f->dir);
    snprintf(f->sock, sizeof(f->sock), "%s/nbd.sock", f->dir);
    snprintf(f->pidfile, sizeof(f->pidfile), "%s/nbd.pid", f->dir);
    f->data = malloc(DISK_SIZE);
    assert_non_null(f->data);
    unsigned seed = 7;
    for (size_t i = 0; i < DISK_SIZE; i++) {
        seed = seed * 1103515245u + 12345u;
        f->data[i] = (uint8_t)(seed >> 16);
    }
    memset(f->data + MIB, 0, MIB); /* a run of zeros reads as zeros too */
    int fd = open(f->file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, f->data, DISK_SIZE), (ssize_t)DISK_SIZE);
    close(fd);
    char *argv[] = {"qemu-nbd", "-t", "-e",    "8",      "-r",         "-f",       "raw",   "-x",
                    "disk",     "-k", f->sock, "--fork", "--pid-file", f->pidfile, f->file, NULL};
    if (run(argv) != 0) {
        *state = f;
        return 0; /* tests skip: f->server stays 0 */
    }
    FILE *pf = fopen(f->pidfile, "re");
    assert_non_null(pf);
    int pid = 0;
    assert_int_equal(fscanf(pf, "%d", &pid), 1);
    fclose(pf);
    f->server = pid;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->server > 0)
        kill(f->server, SIGTERM);
    unlink(f->file);
    unlink(f->pidfile);
    unlink(f->sock);
    rmdir(f->dir);
    free(f->data);
    free(f);
    return 0;
}

struct reader {
    struct source *s;
    uint8_t *buf;
    unsigned worker;
    int rc;
};

static void *read_thread(void *arg)
{
    struct reader *r = arg;
    char why[256];
    for (uint64_t off = (uint64_t)r->worker * PIECE; off < DISK_SIZE;
         off += (uint64_t)WORKERS * PIECE) {
        uint64_t len = DISK_SIZE - off < PIECE ? DISK_SIZE - off : PIECE;
        int rc = source_pread(r->s, r->worker, r->buf + off, len, off, why, sizeof(why));
        if (rc < 0) {
            r->rc = rc;
            break;
        }
    }
    return NULL;
}

static void test_nbd_reads(void **state)
{
    struct fixture *f = *state;
    if (f->server <= 0)
        skip();
    char *uri = nbdio_uri(f->sock, "disk");
    assert_non_null(uri);
    struct source_disk d = {
        .vm = "vm", .snapshot = "s", .name = "d0", .size = DISK_SIZE, .file_id = uri};
    assert_true(source_nbd_names_export(&d));
    struct source *s = NULL;
    char why[256] = "";
    assert_int_equal(source_nbd_open(&d, WORKERS, &s, why, sizeof(why)), 0);
    assert_string_equal(s->ops->name, "nbd");
    assert_int_equal(s->size, DISK_SIZE);
    uint8_t *buf = malloc(DISK_SIZE);
    assert_non_null(buf);
    memset(buf, 0xee, DISK_SIZE);
    pthread_t t[WORKERS];
    struct reader r[WORKERS];
    for (unsigned i = 0; i < WORKERS; i++) {
        r[i] = (struct reader){.s = s, .buf = buf, .worker = i};
        assert_int_equal(pthread_create(&t[i], NULL, read_thread, &r[i]), 0);
    }
    for (unsigned i = 0; i < WORKERS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(r[i].rc, 0);
    }
    assert_memory_equal(buf, f->data, DISK_SIZE);
    /* Past the end: refused, nothing read. */
    assert_true(source_pread(s, 0, buf, 4096, DISK_SIZE - 1024, why, sizeof(why)) < 0);
    free(buf);
    source_close(s);
    free(uri);
}

static void test_nbd_refusals(void **state)
{
    struct fixture *f = *state;
    struct source *s = NULL;
    char why[256] = "";

    /* A file identity or nothing: not an NBD export. */
    struct source_disk d = {.name = "d0", .size = DISK_SIZE, .file_id = "b00t:64768:1234"};
    assert_false(source_nbd_names_export(&d));
    assert_int_equal(source_nbd_open(&d, 1, &s, why, sizeof(why)), -ENOENT);
    d.file_id = NULL;
    assert_false(source_nbd_names_export(&d));
    assert_int_equal(source_nbd_open(&d, 1, &s, why, sizeof(why)), -ENOENT);

    /* A socket that is not on this host. */
    char *uri = nbdio_uri("/nonexistent/vmexport/nbd.sock", "disk");
    d.file_id = uri;
    assert_true(source_nbd_names_export(&d));
    assert_int_equal(source_nbd_open(&d, 1, &s, why, sizeof(why)), -ENOENT);
    assert_non_null(strstr(why, "/nonexistent/vmexport/nbd.sock"));
    free(uri);

    /* A path that is no socket. */
    uri = nbdio_uri(f->file, "disk");
    d.file_id = uri;
    assert_int_equal(source_nbd_open(&d, 1, &s, why, sizeof(why)), -ENOTSOCK);
    free(uri);
    assert_null(s);

    if (f->server <= 0)
        skip();
    /* No such export on the server. */
    uri = nbdio_uri(f->sock, "other");
    d.file_id = uri;
    assert_true(source_nbd_open(&d, 1, &s, why, sizeof(why)) < 0);
    assert_non_null(strstr(why, "\"other\""));
    free(uri);

    /* The export is not the disk: another size. */
    uri = nbdio_uri(f->sock, "disk");
    d.file_id = uri;
    d.size = DISK_SIZE + 4096;
    assert_int_equal(source_nbd_open(&d, 1, &s, why, sizeof(why)), -ESTALE);
    assert_non_null(strstr(why, "size"));
    free(uri);
    assert_null(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nbd_reads),
        cmocka_unit_test(test_nbd_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
