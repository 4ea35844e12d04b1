/* Unit tests of the guest agent client (provider/qga.c): the framing of the agent's stream
 * (junk, 0xFF delimiters, split and oversized messages), requests, the matching of replies by
 * ID, and the client against a fake agent on a unix socket: junk before the sync reply, a reply
 * to another ID skipped, an agent error reported, and a peer that accepts but never answers
 * timing out.  The tiny guest's real agent is tested in tests/integration/test-guest-agent.sh.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/clock.h"
#include "provider/qga.h"

#define ERR_LEN       512
#define SHORT_TIMEOUT 200  /* ms: a fake peer that never answers */
#define GENEROUS      5000 /* ms: a fake peer that answers at once */
#define NS_PER_MS     1000000

/* Feeds data in pieces of `piece` bytes and collects the messages. */
static int frame_all(const char *data, size_t n, size_t piece, char out[][256], int max)
{
    static struct qga_framer fr;
    memset(&fr, 0, sizeof(fr));
    int k = 0;
    for (size_t off = 0; off < n;) {
        size_t len = n - off < piece ? n - off : piece;
        size_t used = 0;
        const char *line;
        while ((line = qga_framer_next(&fr, data + off, len, &used))) {
            assert_true(k < max);
            snprintf(out[k++], 256, "%s", line);
            off += used;
            len -= used;
        }
        off += used;
    }
    return k;
}

static void test_framer_junk_and_delimiters(void **state)
{
    (void)state;
    static const char stream[] = "{\"return\": 1, \"id\": \"old\"}\n"
                                 "{\"partial\": tr\xff{\"return\": 77}\n"
                                 "\n\n{\"return\": {}, \"id\": \"x-1\"}\n";
    for (size_t piece = 1; piece <= sizeof(stream); piece++) {
        char out[8][256];
        int n = frame_all(stream, sizeof(stream) - 1, piece, out, 8);
        assert_int_equal(n, 3);
        assert_string_equal(out[0], "{\"return\": 1, \"id\": \"old\"}");
        assert_string_equal(out[1], "{\"return\": 77}"); /* the junk before 0xFF is gone */
        assert_string_equal(out[2], "{\"return\": {}, \"id\": \"x-1\"}");
    }
}

static void test_framer_oversized_dropped(void **state)
{
    (void)state;
    size_t big = QGA_MSG_MAX + 100;
    char *data = malloc(big + 64);
    assert_non_null(data);
    memset(data, 'a', big);
    data[big] = '\n';
    strcpy(data + big + 1, "{\"return\": 5}\n");
    char out[4][256];
    int n = frame_all(data, strlen(data), 4096, out, 4);
    assert_int_equal(n, 1);
    assert_string_equal(out[0], "{\"return\": 5}");
    free(data);
}

static void test_request(void **state)
{
    (void)state;
    char *line = qga_request("guest-sync-delimited", "{\"id\": 12345}", NULL);
    assert_non_null(line);
    size_t len = strlen(line);
    assert_true(len > 1 && line[len - 1] == '\n');
    json_t *j = json_loads(line, JSON_DISABLE_EOF_CHECK, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "execute")), "guest-sync-delimited");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "arguments"), "id")),
                     12345);
    assert_null(json_object_get(j, "id"));
    json_decref(j);
    free(line);

    line = qga_request("guest-fsfreeze-freeze", NULL, "abc-1");
    j = json_loads(line, JSON_DISABLE_EOF_CHECK, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "id")), "abc-1");
    assert_null(json_object_get(j, "arguments"));
    json_decref(j);
    free(line);

    assert_null(qga_request("x", "{not json", "id")); /* bad arguments are refused */
}

static void test_reply_match(void **state)
{
    (void)state;
    char err[ERR_LEN], *ret;
    /* sync replies match by value */
    assert_int_equal(qga_reply_match("{\"return\": 42}", NULL, 42, &ret, err, ERR_LEN), 1);
    assert_string_equal(ret, "42");
    free(ret);
    assert_int_equal(qga_reply_match("{\"return\": 41}", NULL, 42, &ret, err, ERR_LEN), 0);
    assert_null(ret);
    /* command replies match by ID only */
    assert_int_equal(
        qga_reply_match("{\"return\": 2, \"id\": \"a-2\"}", "a-1", 0, &ret, err, ERR_LEN), 0);
    assert_int_equal(qga_reply_match("{\"return\": 2}", "a-1", 0, &ret, err, ERR_LEN), 0);
    assert_int_equal(
        qga_reply_match("{\"return\": \"frozen\", \"id\": \"a-1\"}", "a-1", 0, &ret, err, ERR_LEN),
        1);
    assert_string_equal(ret, "\"frozen\"");
    free(ret);
    /* errors carry the agent's description */
    assert_int_equal(
        qga_reply_match("{\"error\": {\"class\": \"GenericError\", \"desc\": \"fsfreeze "
                        "is disabled\"}, \"id\": \"a-1\"}",
                        "a-1", 0, &ret, err, ERR_LEN),
        -EPROTO);
    assert_string_equal(err, "fsfreeze is disabled");
    assert_null(ret);
    /* junk */
    assert_int_equal(qga_reply_match("not json", "a-1", 0, &ret, err, ERR_LEN), 0);
    assert_int_equal(qga_reply_match("[1,2]", "a-1", 0, &ret, err, ERR_LEN), 0);
    assert_int_equal(
        qga_reply_match("{\"event\": \"X\", \"id\": \"a-1\"}", "a-1", 0, &ret, err, ERR_LEN), 0);
}

/* ---- a fake agent ---- */

enum fake_mode {
    FAKE_ANSWERS, /* junk, then answers sync and commands (freeze fails when asked to) */
    FAKE_SILENT,  /* accepts and reads, never answers */
};

struct fake {
    char path[108];
    int lfd;
    enum fake_mode mode;
    bool freeze_fails;
    int freeze_delay_ms; /* the freeze answers this late (an agent busy in its freeze hook) */
    _Atomic int frozen;
    _Atomic int thaws;
    _Atomic int bad_requests; /* checked by the test's thread: cmocka asserts only there */
    pthread_t thread;
};

/* A client may be gone before its answer is sent (a process that sent its thaw at exit does not
 * wait for it): a failed send ends the connection, it is not a failure of the test. */
static bool fake_reply(int fd, const char *s)
{
    return send(fd, s, strlen(s), MSG_NOSIGNAL) == (ssize_t)strlen(s);
}

static void fake_serve(struct fake *f, int fd)
{
    static struct qga_framer fr;
    memset(&fr, 0, sizeof(fr));
    /* what an earlier client left in the stream */
    if (!fake_reply(fd, "{\"return\": 999, \"id\": \"stale\"}\n{\"retu"))
        return;
    char buf[4096];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) {
        size_t off = 0, used;
        const char *line;
        while (off < (size_t)n &&
               (line = qga_framer_next(&fr, buf + off, (size_t)n - off, &used))) {
            off += used;
            if (f->mode == FAKE_SILENT)
                continue;
            json_t *j = json_loads(line, 0, NULL);
            const char *cmd = json_string_value(json_object_get(j, "execute"));
            const char *id = json_string_value(json_object_get(j, "id"));
            if (!cmd) {
                f->bad_requests++;
                json_decref(j);
                continue;
            }
            if (!id)
                id = "";
            char out[512];
            if (strcmp(cmd, "guest-sync-delimited") == 0) {
                long long v =
                    json_integer_value(json_object_get(json_object_get(j, "arguments"), "id"));
                /* a reply to another ID first: must be skipped */
                snprintf(out, sizeof(out), "\xff{\"return\": %lld}\n\xff{\"return\": %lld}\n",
                         v + 1, v);
            } else if (strcmp(cmd, "guest-fsfreeze-freeze") == 0 && f->freeze_fails) {
                snprintf(out, sizeof(out),
                         "{\"return\": 3, \"id\": \"other\"}\n{\"error\": {\"class\": "
                         "\"GenericError\", \"desc\": \"fsfreeze hook failed\"}, \"id\": \"%s\"}\n",
                         id);
            } else if (strcmp(cmd, "guest-fsfreeze-freeze") == 0) {
                usleep((useconds_t)f->freeze_delay_ms * 1000);
                f->frozen = 1;
                snprintf(out, sizeof(out), "{\"return\": 1, \"id\": \"%s\"}\n", id);
            } else if (strcmp(cmd, "guest-fsfreeze-thaw") == 0) {
                f->thaws++;
                snprintf(out, sizeof(out), "{\"return\": %d, \"id\": \"%s\"}\n", f->frozen, id);
                f->frozen = 0;
            } else if (strcmp(cmd, "guest-fsfreeze-status") == 0) {
                snprintf(out, sizeof(out), "{\"return\": \"%s\", \"id\": \"%s\"}\n",
                         f->frozen ? "frozen" : "thawed", id);
            } else {
                snprintf(out, sizeof(out), "{\"error\": {\"desc\": \"unknown\"}, \"id\": \"%s\"}\n",
                         id);
            }
            json_decref(j);
            if (!fake_reply(fd, out))
                return;
        }
    }
}

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    int fd;
    while ((fd = accept(f->lfd, NULL, NULL)) >= 0) {
        fake_serve(f, fd);
        close(fd);
    }
    return NULL;
}

static void fake_start(struct fake *f, enum fake_mode mode)
{
    memset(f, 0, sizeof(*f));
    f->mode = mode;
    snprintf(f->path, sizeof(f->path), "/tmp/vmexport-qga-test.%d.sock", (int)getpid());
    unlink(f->path);
    f->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(f->lfd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f->path);
    assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(f->lfd, 4), 0);
    assert_int_equal(pthread_create(&f->thread, NULL, fake_main, f), 0);
}

static void fake_stop(struct fake *f)
{
    shutdown(f->lfd, SHUT_RDWR);
    close(f->lfd);
    pthread_join(f->thread, NULL);
    unlink(f->path);
    assert_int_equal(f->bad_requests, 0);
}

static void test_session(void **state)
{
    (void)state;
    struct fake f;
    fake_start(&f, FAKE_ANSWERS);
    char err[ERR_LEN];
    struct qga_freeze fz;
    assert_int_equal(qga_freeze_begin(&fz, f.path, GENEROUS, err, ERR_LEN), 0);
    assert_int_equal(fz.count, 1);
    assert_int_equal(f.frozen, 1);
    assert_int_equal(qga_freeze_end(&fz, GENEROUS, err, ERR_LEN), 0);
    assert_int_equal(f.frozen, 0);
    assert_int_equal(f.thaws, 1);
    fake_stop(&f);
}

static void test_freeze_error_thaws(void **state)
{
    (void)state;
    struct fake f;
    fake_start(&f, FAKE_ANSWERS);
    f.freeze_fails = true;
    char err[ERR_LEN];
    struct qga_freeze fz;
    assert_int_equal(qga_freeze_begin(&fz, f.path, GENEROUS, err, ERR_LEN), -EPROTO);
    assert_non_null(strstr(err, "guest-fsfreeze-freeze: fsfreeze hook failed"));
    assert_non_null(strstr(err, f.path));
    assert_int_equal(f.thaws, 1); /* thawed anyway: a failed freeze may have frozen some */
    fake_stop(&f);
}

static void test_late_freeze_is_thawed(void **state)
{
    (void)state;
    struct fake f;
    fake_start(&f, FAKE_ANSWERS);
    f.freeze_delay_ms = 3 * SHORT_TIMEOUT;
    char err[ERR_LEN];
    struct qga_freeze fz;
    assert_int_equal(qga_freeze_begin(&fz, f.path, SHORT_TIMEOUT, err, ERR_LEN), -ETIMEDOUT);
    assert_non_null(strstr(err, "guest-fsfreeze-freeze: no answer within 200 ms"));
    /* the freeze happened after we gave up; the thaw queued behind it undid it */
    assert_int_equal(f.thaws, 1);
    assert_int_equal(f.frozen, 0);
    fake_stop(&f);
}

static void test_thaw_at_exit(void **state)
{
    (void)state;
    struct fake f;
    fake_start(&f, FAKE_ANSWERS);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* a daemon that exits while the guest is frozen */
        char err[ERR_LEN];
        struct qga_freeze fz;
        _exit(qga_freeze_begin(&fz, f.path, GENEROUS, err, ERR_LEN) == 0 ? (exit(0), 0) : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    for (int i = 0; i < GENEROUS / 10 && f.frozen; i++)
        usleep(10000);
    assert_int_equal(f.frozen, 0);
    assert_int_equal(f.thaws, 1);
    fake_stop(&f);
}

static void test_silent_peer_times_out(void **state)
{
    (void)state;
    struct fake f;
    fake_start(&f, FAKE_SILENT);
    char err[ERR_LEN];
    struct qga *g = NULL;
    int64_t t0 = clock_monotonic_ns();
    assert_int_equal(qga_open(f.path, SHORT_TIMEOUT, &g, err, ERR_LEN), -ETIMEDOUT);
    assert_null(g);
    assert_true(clock_monotonic_ns() - t0 < (int64_t)GENEROUS * NS_PER_MS);
    assert_non_null(strstr(err, "guest-sync-delimited: no answer within 200 ms"));
    fake_stop(&f);
}

static void test_no_agent(void **state)
{
    (void)state;
    char err[ERR_LEN];
    struct qga *g = NULL;
    assert_int_equal(qga_open("/nonexistent/qga.sock", SHORT_TIMEOUT, &g, err, ERR_LEN), -ENOENT);
    assert_non_null(strstr(err, "guest agent /nonexistent/qga.sock: connect:"));
}

static void test_socket_find(void **state)
{
    (void)state;
    char dir[] = "/tmp/vmexport-qga-find.XXXXXX";
    assert_non_null(mkdtemp(dir));
    static const char *const names[] = {"web1.sock", "web10.qga", "db.x.sock", "noext"};
    char p[256], pattern[256];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
        FILE *f = fopen(p, "w");
        assert_non_null(f);
        fclose(f);
    }
    snprintf(pattern, sizeof(pattern), "%s/*", dir);
    char *path = NULL;
    assert_int_equal(qga_socket_find(pattern, "web1", &path), 0);
    snprintf(p, sizeof(p), "%s/web1.sock", dir);
    assert_string_equal(path, p); /* not web10 */
    free(path);
    assert_int_equal(qga_socket_find(pattern, "db.x", &path), 0); /* the last extension only */
    free(path);
    assert_int_equal(qga_socket_find(pattern, "noext", &path), 0);
    free(path);
    assert_int_equal(qga_socket_find(pattern, "web", &path), -ENOENT);
    assert_null(path);
    snprintf(pattern, sizeof(pattern), "%s/*.none", dir);
    assert_int_equal(qga_socket_find(pattern, "web1", &path), -ENOENT);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_framer_junk_and_delimiters),
        cmocka_unit_test(test_framer_oversized_dropped),
        cmocka_unit_test(test_request),
        cmocka_unit_test(test_reply_match),
        cmocka_unit_test(test_session),
        cmocka_unit_test(test_freeze_error_thaws),
        cmocka_unit_test(test_late_freeze_is_thawed),
        cmocka_unit_test(test_thaw_at_exit),
        cmocka_unit_test(test_silent_peer_times_out),
        cmocka_unit_test(test_no_agent),
        cmocka_unit_test(test_socket_find),
    };
    return cmocka_run_group_tests_name("qga", tests, NULL, NULL);
}
