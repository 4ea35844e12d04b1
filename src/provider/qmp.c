/* The QMP client (qmp.h): one unix-socket connection, line-delimited JSON.
 *
 * QMP sends one JSON object per line: the greeting, then per command one answer ("return" or
 * "error"), with asynchronous events ("event") interleaved anywhere.  Reads go through a buffer
 * and poll(2) with the connection's deadline, so a QEMU that stops answering costs at most the
 * timeout.  Events read while waiting for an answer are queued (bounded) for qmp_wait_event.
 */
#include "qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"

#define QMP_READ_CHUNK 65536
#define QMP_LINE_MAX   (16u << 20) /* query-qmp-schema is ~200 KiB; a larger line is no QMP */
#define QMP_EVENTS_MAX 256         /* events kept for qmp_wait_event; older ones are dropped */
#define QMP_MS_PER_S   1000
#define QMP_NS_PER_MS  1000000

struct qmp {
    int fd;
    unsigned timeout_ms;
    char *buf; /* bytes read and not yet parsed: [0, len) */
    size_t len, cap;
    json_t *events; /* array of event objects */
    char error_class[QMP_ERROR_CLASS_MAX];
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * QMP_MS_PER_S + ts.tv_nsec / QMP_NS_PER_MS;
}

int qmp_fd(const struct qmp *q)
{
    return q->fd;
}

const char *qmp_error_class(const struct qmp *q)
{
    return q->error_class;
}

void qmp_events_clear(struct qmp *q)
{
    json_array_clear(q->events);
}

void qmp_close(struct qmp *q)
{
    if (!q)
        return;
    if (q->fd >= 0)
        close(q->fd);
    free(q->buf);
    json_decref(q->events);
    free(q);
}

/* Wait until fd is ready for events or the deadline (absolute, ms) passes. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r > 0)
            return 0;
    }
}

/* The next JSON line, parsed: 0 and *msg, or a negative errno. */
static int read_message(struct qmp *q, int64_t deadline, json_t **msg)
{
    for (;;) {
        char *nl = q->len ? memchr(q->buf, '\n', q->len) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - q->buf) + 1;
            json_error_t jerr;
            json_t *m = json_loadb(q->buf, n, 0, &jerr);
            memmove(q->buf, q->buf + n, q->len - n);
            q->len -= n;
            if (!m || !json_is_object(m)) {
                json_decref(m);
                return -EPROTO;
            }
            *msg = m;
            return 0;
        }
        if (q->len >= QMP_LINE_MAX)
            return -EPROTO;
        if (q->cap - q->len < QMP_READ_CHUNK) {
            size_t cap = q->cap + QMP_READ_CHUNK * 2;
            char *b = realloc(q->buf, cap);
            if (!b)
                return -ENOMEM;
            q->buf = b;
            q->cap = cap;
        }
        int r = wait_fd(q->fd, POLLIN, deadline);
        if (r < 0)
            return r;
        ssize_t got = recv(q->fd, q->buf + q->len, q->cap - q->len, MSG_DONTWAIT);
        if (got < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (got < 0)
            return -errno;
        if (got == 0)
            return -ECONNRESET;
        q->len += (size_t)got;
    }
}

static int write_all(struct qmp *q, const char *s, size_t n, int64_t deadline)
{
    while (n) {
        int r = wait_fd(q->fd, POLLOUT, deadline);
        if (r < 0)
            return r;
        ssize_t w = send(q->fd, s, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (w < 0)
            return -errno;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static void queue_event(struct qmp *q, json_t *msg)
{
    if (json_array_size(q->events) >= QMP_EVENTS_MAX)
        json_array_remove(q->events, 0);
    json_array_append(q->events, msg);
}

int qmp_execute(struct qmp *q, const char *cmd, json_t *args, json_t **ret, char *err,
                size_t errlen)
{
    q->error_class[0] = '\0';
    json_t *m = json_pack("{s:s}", "execute", cmd);
    if (!m || (args && json_object_set_new(m, "arguments", args) < 0)) {
        json_decref(m);
        return -ENOMEM;
    }
    args = NULL;
    CLEANUP_FREE char *text = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    if (!text)
        return -ENOMEM;
    size_t n = strlen(text);
    int64_t deadline = now_ms() + q->timeout_ms;
    int r = write_all(q, text, n, deadline);
    if (r == 0)
        r = write_all(q, "\n", 1, deadline);
    while (r == 0) {
        json_t *msg = NULL;
        r = read_message(q, deadline, &msg);
        if (r < 0)
            break;
        if (json_object_get(msg, "event")) {
            queue_event(q, msg);
            json_decref(msg);
            continue;
        }
        json_t *rv = json_object_get(msg, "return");
        json_t *e = json_object_get(msg, "error");
        if (rv) {
            if (ret)
                *ret = json_incref(rv);
            json_decref(msg);
            return 0;
        }
        if (!json_is_object(e)) {
            json_decref(msg);
            r = -EPROTO;
            break;
        }
        const char *cls = json_string_value(json_object_get(e, "class"));
        const char *desc = json_string_value(json_object_get(e, "desc"));
        snprintf(q->error_class, sizeof(q->error_class), "%s", cls ? cls : "");
        snprintf(err, errlen, "%s: %s: %s", cmd, cls ? cls : "error", desc ? desc : "");
        r = cls && !strcmp(cls, "DeviceNotFound")    ? -ENOENT
            : cls && !strcmp(cls, "CommandNotFound") ? -EOPNOTSUPP
                                                     : -EIO;
        json_decref(msg);
        return r;
    }
    snprintf(err, errlen, "%s: %s", cmd,
             r == -ETIMEDOUT ? "no answer in time"
             : r == -EPROTO  ? "the answer is not QMP"
                             : strerror(-r));
    return r;
}

int qmp_wait_event(struct qmp *q, const char *name, qmp_event_match_fn match, void *opaque,
                   unsigned timeout_ms, json_t **data)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        size_t i;
        json_t *ev;
        json_array_foreach(q->events, i, ev)
        {
            const char *n = json_string_value(json_object_get(ev, "event"));
            json_t *d = json_object_get(ev, "data");
            if (n && !strcmp(n, name) && (!match || match(d, opaque))) {
                if (data)
                    *data = json_incref(d);
                json_array_remove(q->events, i);
                return 0;
            }
        }
        json_t *msg = NULL;
        int r = read_message(q, deadline, &msg);
        if (r < 0)
            return r;
        if (json_object_get(msg, "event"))
            queue_event(q, msg);
        json_decref(msg); /* an answer nobody waits for: ignored */
    }
}

int qmp_connect(const char *path, unsigned timeout_ms, struct qmp **out, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "QMP socket %s: path too long", path);
        return -ENAMETOOLONG;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    struct qmp *q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->timeout_ms = timeout_ms ? timeout_ms : QMP_TIMEOUT_MS_DEFAULT;
    q->events = json_array();
    q->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (!q->events || q->fd < 0) {
        int r = q->events ? -errno : -ENOMEM;
        qmp_close(q);
        return r;
    }
    int64_t deadline = now_ms() + q->timeout_ms;
    int r = 0;
    if (connect(q->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        r = -errno;
        if (r == -EINPROGRESS || r == -EAGAIN) {
            r = wait_fd(q->fd, POLLOUT, deadline);
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            if (r == 0 && getsockopt(q->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr)
                r = -soerr;
        }
        if (r < 0) {
            snprintf(err, errlen, "QMP socket %s: %s", path, strerror(-r));
            qmp_close(q);
            return r;
        }
    }
    json_t *greeting = NULL;
    r = read_message(q, deadline, &greeting);
    if (r == 0 && !json_object_get(greeting, "QMP"))
        r = -EPROTO;
    json_decref(greeting);
    if (r < 0) {
        snprintf(err, errlen, "QMP socket %s: %s", path,
                 r == -ETIMEDOUT ? "no greeting in time (another client holds the monitor?)"
                 : r == -EPROTO  ? "not a QMP monitor"
                                 : strerror(-r));
        qmp_close(q);
        return r;
    }
    char cerr[256];
    r = qmp_execute(q, "qmp_capabilities", NULL, NULL, cerr, sizeof(cerr));
    if (r < 0) {
        snprintf(err, errlen, "QMP socket %s: %s", path, cerr);
        qmp_close(q);
        return r;
    }
    *out = q;
    return 0;
}
