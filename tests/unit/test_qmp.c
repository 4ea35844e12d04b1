/* Unit tests of the QMP client (provider/qmp.h) against a real qemu-storage-daemon: greeting
 * and capabilities, answers and error classes, events set aside while a command runs and found
 * by qmp_wait_event, close-on-exec; and against sockets that are not QMP: one that never
 * greets (timeout), one that greets with garbage, none at all.  Skips where
 * qemu-storage-daemon is not installed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "provider/qmp.h"

#define QSD           "/usr/bin/qemu-storage-daemon"
#define ERR_LEN       512
#define SHORT_MS      300  /* a read that must time out */
#define START_WAIT_MS 5000 /* qemu-storage-daemon's QMP is ready in ~10 ms */
#define POLL_NS       5000000L
#define DISK_SIZE     (1 << 20)

struct fixture {
    char dir[PATH_MAX];
    char sock[PATH_MAX + 16];
    pid_t pid;
};

static void sleep_poll(void)
{
    struct timespec ts = {0, POLL_NS};
    nanosleep(&ts, NULL);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "%s/qmp-test.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->sock, sizeof(f->sock), "%s/m.sock", f->dir);
    f->pid = -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->pid > 0) {
        kill(f->pid, SIGKILL);
        waitpid(f->pid, NULL, 0);
    }
    char path[PATH_MAX + 16];
    const char *names[] = {"m.sock", "d.qcow2", "x.sock", "y.sock"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", f->dir, names[i]);
        unlink(path);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Start qemu-storage-daemon with a monitor on f->sock; false when it is not installed. */
static bool qsd_start(struct fixture *f)
{
    if (access(QSD, X_OK) != 0)
        return false;
    char chardev[PATH_MAX + 96];
    snprintf(chardev, sizeof(chardev), "socket,id=m,path=%s,server=on,wait=off", f->sock);
    f->pid = fork();
    assert_true(f->pid >= 0);
    if (f->pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execl(QSD, QSD, "--chardev", chardev, "--monitor", "chardev=m", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < START_WAIT_MS * 1000000L / POLL_NS; i++) {
        struct stat st;
        if (stat(f->sock, &st) == 0)
            return true;
        sleep_poll();
    }
    fail_msg("qemu-storage-daemon did not create %s", f->sock);
    return false;
}

static void test_execute(void **state)
{
    struct fixture *f = *state;
    if (!qsd_start(f))
        skip();
    struct qmp *q = NULL;
    char err[ERR_LEN] = "";
    assert_int_equal(qmp_connect(f->sock, 0, &q, err, sizeof(err)), 0);
    int fl = fcntl(qmp_fd(q), F_GETFD);
    assert_true(fl >= 0 && (fl & FD_CLOEXEC));

    json_t *ret = NULL;
    assert_int_equal(qmp_execute(q, "query-block-exports", NULL, &ret, err, sizeof(err)), 0);
    assert_true(json_is_array(ret));
    assert_int_equal(json_array_size(ret), 0);
    json_decref(ret);

    /* errors: class and description, mapped to an errno */
    assert_int_equal(qmp_execute(q, "no-such-command", NULL, NULL, err, sizeof(err)), -EOPNOTSUPP);
    assert_string_equal(qmp_error_class(q), "CommandNotFound");
    assert_non_null(strstr(err, "no-such-command: CommandNotFound"));
    assert_int_equal(qmp_execute(q, "blockdev-del", json_pack("{s:s}", "node-name", "nope"), NULL,
                                 err, sizeof(err)),
                     -EIO);
    assert_string_equal(qmp_error_class(q), "GenericError");
    assert_non_null(strstr(err, "nope"));

    /* a job: its events arrive while other commands run; qmp_wait_event finds them after */
    char file[PATH_MAX + 16];
    snprintf(file, sizeof(file), "%s/d.qcow2", f->dir);
    int fd = open(file, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(qmp_execute(q, "blockdev-add",
                                 json_pack("{s:s, s:s, s:s}", "driver", "file", "node-name", "f0",
                                           "filename", file),
                                 NULL, err, sizeof(err)),
                     0);
    assert_int_equal(qmp_execute(q, "blockdev-create",
                                 json_pack("{s:s, s:{s:s, s:s, s:i}}", "job-id", "j0", "options",
                                           "driver", "qcow2", "file", "f0", "size", DISK_SIZE),
                                 NULL, err, sizeof(err)),
                     0);
    json_t *data = NULL;
    assert_int_equal(qmp_wait_event(q, "JOB_STATUS_CHANGE", NULL, NULL, START_WAIT_MS, &data), 0);
    assert_string_equal(json_string_value(json_object_get(data, "id")), "j0");
    json_decref(data);
    /* a status that never comes: the wait ends at its timeout */
    assert_int_equal(qmp_wait_event(q, "NO_SUCH_EVENT", NULL, NULL, SHORT_MS, NULL), -ETIMEDOUT);
    qmp_close(q);

    /* the file is a qcow2 now */
    char magic[4] = {0};
    fd = open(file, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(read(fd, magic, 4), 4);
    close(fd);
    assert_memory_equal(magic, "QFI\xfb", 4);
}

static int listen_at(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 4), 0);
    return fd;
}

static void *garbage_server(void *arg)
{
    int lfd = *(int *)arg;
    int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (c >= 0) {
        const char msg[] = "{\"hello\": 1}\n";
        ssize_t w = write(c, msg, sizeof(msg) - 1);
        (void)w;
        sleep_poll();
        close(c);
    }
    return NULL;
}

static void test_not_qmp(void **state)
{
    struct fixture *f = *state;
    struct qmp *q = NULL;
    char err[ERR_LEN] = "", path[PATH_MAX + 16];

    /* nothing there */
    snprintf(path, sizeof(path), "%s/none.sock", f->dir);
    assert_int_equal(qmp_connect(path, SHORT_MS, &q, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "none.sock"));

    /* a listener that never greets: another client holds the monitor */
    snprintf(path, sizeof(path), "%s/x.sock", f->dir);
    int lfd = listen_at(path);
    assert_int_equal(qmp_connect(path, SHORT_MS, &q, err, sizeof(err)), -ETIMEDOUT);
    assert_non_null(strstr(err, "no greeting"));
    close(lfd);

    /* a greeting that is not QMP */
    snprintf(path, sizeof(path), "%s/y.sock", f->dir);
    lfd = listen_at(path);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, garbage_server, &lfd), 0);
    assert_int_equal(qmp_connect(path, START_WAIT_MS, &q, err, sizeof(err)), -EPROTO);
    assert_non_null(strstr(err, "not a QMP monitor"));
    pthread_join(t, NULL);
    close(lfd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_execute, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_qmp, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
