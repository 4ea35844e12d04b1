/* Guest agent client (see qga.h): the framing and matching of replies, the socket with its
 * timeouts, and the freeze/thaw session that never leaves a guest frozen on purpose.
 *
 * A guest may stay frozen only as long as we hold it: every session whose freeze was sent is in
 * a registry until its thaw is confirmed.  A thaw that times out goes to a detached keeper
 * thread that retries until the agent answers; at exit() every registered session gets one more
 * thaw written to its socket.
 */
#include "provider/qga.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"

#define QGA_DELIMITER      0xFF  /* the agent's framing byte (guest-sync-delimited) */
#define QGA_READ_CHUNK     4096  /* bytes read from the socket at once */
#define QGA_ID_MAX         48    /* bytes of a command ID */
#define QGA_KEEPER_WAIT_MS 30000 /* one round of the keeper waiting for a hung agent's thaw */
#define QGA_KEEPER_ROUNDS  20    /* rounds before the keeper gives up (10 minutes) */
#define QGA_REGISTRY_MAX   64    /* sessions that may be frozen at once (one per VM) */
#define NS_PER_MS          1000000

struct qga {
    int fd;
    char *path;
    uint64_t seq;    /* commands sent: part of their IDs */
    char idbase[24]; /* random, per session */
    struct qga_framer fr;
    char rbuf[QGA_READ_CHUNK]; /* read but not yet framed: rbuf[roff, rlen) */
    size_t roff, rlen;
};

/* ---- framing ---- */

const char *qga_framer_next(struct qga_framer *fr, const char *data, size_t n, size_t *consumed)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)data[i];
        if (c == QGA_DELIMITER) {
            /* what came before the delimiter is an earlier client's leftover */
            fr->len = 0;
            fr->overflow = false;
        } else if (c == '\n') {
            bool whole = !fr->overflow && fr->len > 0;
            size_t len = fr->len;
            fr->len = 0;
            fr->overflow = false;
            if (whole) {
                fr->buf[len] = '\0';
                *consumed = i + 1;
                return fr->buf;
            }
        } else if (!fr->overflow) {
            if (fr->len + 1 < sizeof(fr->buf)) {
                fr->buf[fr->len++] = (char)c;
            } else {
                fr->len = 0;
                fr->overflow = true;
            }
        }
    }
    *consumed = n;
    return NULL;
}

char *qga_request(const char *command, const char *args_json, const char *id)
{
    json_t *req = json_pack("{s:s}", "execute", command);
    if (!req)
        return NULL;
    if (args_json) {
        json_t *args = json_loads(args_json, 0, NULL);
        if (!args || json_object_set_new(req, "arguments", args) < 0) {
            json_decref(req);
            return NULL;
        }
    }
    if (id && json_object_set_new(req, "id", json_string(id)) < 0) {
        json_decref(req);
        return NULL;
    }
    char *s = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (!s)
        return NULL;
    size_t len = strlen(s);
    char *line = realloc(s, len + 2);
    if (!line) {
        free(s);
        return NULL;
    }
    line[len] = '\n';
    line[len + 1] = '\0';
    return line;
}

int qga_reply_match(const char *line, const char *id, int64_t sync_id, char **ret, char *err,
                    size_t errlen)
{
    *ret = NULL;
    json_t *msg = json_loads(line, 0, NULL);
    if (!json_is_object(msg)) {
        json_decref(msg);
        return 0;
    }
    json_t *r = json_object_get(msg, "return");
    json_t *e = json_object_get(msg, "error");
    int match;
    if (sync_id != 0) {
        match = json_is_integer(r) && json_integer_value(r) == sync_id;
    } else {
        json_t *mid = json_object_get(msg, "id");
        match = id && json_is_string(mid) && strcmp(json_string_value(mid), id) == 0 &&
                (r || json_is_object(e));
    }
    if (!match) {
        json_decref(msg);
        return 0;
    }
    if (r) {
        *ret = json_dumps(r, JSON_COMPACT | JSON_ENCODE_ANY);
        json_decref(msg);
        return *ret ? 1 : -ENOMEM;
    }
    const char *desc = json_string_value(json_object_get(e, "desc"));
    snprintf(err, errlen, "%s", desc ? desc : "error without a description");
    json_decref(msg);
    return -EPROTO;
}

/* ---- the socket ---- */

static int remaining_ms(int64_t deadline)
{
    int64_t left = deadline - clock_monotonic_ns();
    if (left <= 0)
        return 0;
    return (int)((left + NS_PER_MS - 1) / NS_PER_MS);
}

static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int ms = remaining_ms(deadline);
        if (ms == 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r > 0)
            return 0;
    }
}

static int send_all(int fd, const char *buf, size_t n, int64_t deadline)
{
    while (n > 0) {
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                return -errno;
            int r = wait_fd(fd, POLLOUT, deadline);
            if (r < 0)
                return r;
            continue;
        }
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads until the reply to id (or the sync reply returning sync_id); *ret as qga_reply_match. */
static int recv_reply(struct qga *g, const char *id, int64_t sync_id, int64_t deadline, char **ret,
                      char *err, size_t errlen)
{
    for (;;) {
        while (g->roff < g->rlen) {
            size_t used;
            const char *line = qga_framer_next(&g->fr, g->rbuf + g->roff, g->rlen - g->roff, &used);
            g->roff += used;
            if (!line)
                break;
            int r = qga_reply_match(line, id, sync_id, ret, err, errlen);
            if (r != 0)
                return r;
        }
        int r = wait_fd(g->fd, POLLIN, deadline);
        if (r < 0)
            return r;
        ssize_t n = recv(g->fd, g->rbuf, sizeof(g->rbuf), 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -ECONNRESET;
        g->roff = 0;
        g->rlen = (size_t)n;
    }
}

static int connect_unix(const char *path, int64_t deadline)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int r = -errno;
        if (r == -EINPROGRESS || r == -EAGAIN) {
            r = wait_fd(fd, POLLOUT, deadline);
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            if (r == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
                r = -errno;
            else if (r == 0 && soerr)
                r = -soerr;
        }
        if (r < 0) {
            close(fd);
            return r;
        }
    }
    return fd;
}

static void say(char *err, size_t errlen, const struct qga *g, const char *path, const char *what,
                int r, int timeout_ms, const char *detail)
{
    const char *p = g ? g->path : path;
    if (!p)
        p = "?";
    if (r == -ETIMEDOUT)
        snprintf(err, errlen, "guest agent %s: %s: no answer within %d ms", p, what, timeout_ms);
    else if (r == -EPROTO)
        snprintf(err, errlen, "guest agent %s: %s: %s", p, what, detail);
    else if (r == -ECONNRESET)
        snprintf(err, errlen, "guest agent %s: %s: the connection was closed", p, what);
    else
        snprintf(err, errlen, "guest agent %s: %s: %s", p, what, strerror(-r));
}

int qga_open(const char *path, int timeout_ms, struct qga **out, char *err, size_t errlen)
{
    int64_t deadline = clock_monotonic_ns() + (int64_t)timeout_ms * NS_PER_MS;
    *out = NULL;
    struct qga *g = calloc(1, sizeof(*g));
    if (!g || !(g->path = strdup(path))) {
        free(g);
        return -ENOMEM;
    }
    uint32_t rnd[3];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        int r = -errno;
        qga_close(g);
        return r;
    }
    snprintf(g->idbase, sizeof(g->idbase), "vmx%08x%08x", rnd[0], rnd[1]);
    /* a positive int64 that fits a JSON number everywhere */
    int64_t sync_id = (int64_t)(rnd[2] & 0x7fffffffu) + 1;

    g->fd = connect_unix(path, deadline);
    if (g->fd < 0) {
        int r = g->fd;
        say(err, errlen, NULL, path, "connect", r, timeout_ms, NULL);
        free(g->path);
        free(g);
        return r;
    }
    char args[64];
    snprintf(args, sizeof(args), "{\"id\":%lld}", (long long)sync_id);
    char *req = qga_request("guest-sync-delimited", args, NULL);
    if (!req) {
        qga_close(g);
        return -ENOMEM;
    }
    /* 0xFF first: the agent drops a partial request an earlier client left */
    char ff = (char)QGA_DELIMITER;
    int r = send_all(g->fd, &ff, 1, deadline);
    if (r == 0)
        r = send_all(g->fd, req, strlen(req), deadline);
    free(req);
    char *ret = NULL, detail[256] = "";
    if (r == 0)
        r = recv_reply(g, NULL, sync_id, deadline, &ret, detail, sizeof(detail));
    free(ret);
    if (r < 0) {
        say(err, errlen, g, NULL, "guest-sync-delimited", r, timeout_ms, detail);
        qga_close(g);
        return r;
    }
    *out = g;
    return 0;
}

void qga_close(struct qga *g)
{
    if (!g)
        return;
    if (g->fd >= 0)
        close(g->fd);
    free(g->path);
    free(g);
}

static int qga_command(struct qga *g, const char *command, const char *args, int timeout_ms,
                       char **ret, char *err, size_t errlen)
{
    int64_t deadline = clock_monotonic_ns() + (int64_t)timeout_ms * NS_PER_MS;
    char id[QGA_ID_MAX];
    snprintf(id, sizeof(id), "%s-%llu", g->idbase, (unsigned long long)++g->seq);
    char *req = qga_request(command, args, id);
    if (!req)
        return -ENOMEM;
    int r = send_all(g->fd, req, strlen(req), deadline);
    free(req);
    char detail[256] = "";
    if (r == 0)
        r = recv_reply(g, id, 0, deadline, ret, detail, sizeof(detail));
    if (r < 0)
        say(err, errlen, g, NULL, command, r, timeout_ms, detail);
    return r < 0 ? r : 0;
}

static int command_count(struct qga *g, const char *command, int timeout_ms, int *count, char *err,
                         size_t errlen)
{
    char *ret = NULL;
    int r = qga_command(g, command, NULL, timeout_ms, &ret, err, errlen);
    if (r < 0)
        return r;
    char *end;
    long n = strtol(ret, &end, 10);
    bool valid = *ret && !*end && n >= 0;
    free(ret);
    if (!valid) {
        snprintf(err, errlen, "guest agent %s: %s: the answer is not a count", g->path, command);
        return -EPROTO;
    }
    if (count)
        *count = (int)n;
    return 0;
}

int qga_freeze(struct qga *g, int timeout_ms, int *count, char *err, size_t errlen)
{
    return command_count(g, "guest-fsfreeze-freeze", timeout_ms, count, err, errlen);
}

int qga_thaw(struct qga *g, int timeout_ms, int *count, char *err, size_t errlen)
{
    return command_count(g, "guest-fsfreeze-thaw", timeout_ms, count, err, errlen);
}

int qga_status(struct qga *g, int timeout_ms, bool *frozen, char *err, size_t errlen)
{
    char *ret = NULL;
    int r = qga_command(g, "guest-fsfreeze-status", NULL, timeout_ms, &ret, err, errlen);
    if (r < 0)
        return r;
    if (strcmp(ret, "\"thawed\"") == 0) {
        *frozen = false;
    } else if (strcmp(ret, "\"frozen\"") == 0) {
        *frozen = true;
    } else {
        snprintf(err, errlen, "guest agent %s: guest-fsfreeze-status: unexpected answer %.40s",
                 g->path, ret);
        r = -EPROTO;
    }
    free(ret);
    return r;
}

int qga_socket_find(const char *pattern, const char *vm_id, char **path)
{
    *path = NULL;
    glob_t gl;
    int g = glob(pattern, GLOB_NOSORT, NULL, &gl);
    if (g == GLOB_NOMATCH)
        return -ENOENT;
    if (g != 0)
        return g == GLOB_NOSPACE ? -ENOMEM : -EIO;
    int r = -ENOENT;
    size_t idlen = strlen(vm_id);
    for (size_t i = 0; i < gl.gl_pathc && r == -ENOENT; i++) {
        const char *slash = strrchr(gl.gl_pathv[i], '/');
        const char *base = slash ? slash + 1 : gl.gl_pathv[i];
        const char *dot = strrchr(base, '.');
        size_t len = dot && dot != base ? (size_t)(dot - base) : strlen(base);
        if (len == idlen && memcmp(base, vm_id, idlen) == 0)
            r = (*path = strdup(gl.gl_pathv[i])) ? 0 : -ENOMEM;
    }
    globfree(&gl);
    return r;
}

/* ---- sessions that may be frozen ---- */

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static int registry[QGA_REGISTRY_MAX]; /* fds; -1 free */
static pthread_once_t registry_once = PTHREAD_ONCE_INIT;

/* At exit: one last thaw written to every session that may still be frozen (not waited for). */
static void registry_thaw_all(void)
{
    static const char thaw[] = "\xff{\"execute\":\"guest-fsfreeze-thaw\"}\n";
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < QGA_REGISTRY_MAX; i++)
        if (registry[i] >= 0 && send(registry[i], thaw, sizeof(thaw) - 1, MSG_NOSIGNAL) > 0)
            log_warn("guest agent: thawing a guest at exit");
    pthread_mutex_unlock(&registry_lock);
}

static void registry_init(void)
{
    for (size_t i = 0; i < QGA_REGISTRY_MAX; i++)
        registry[i] = -1;
    atexit(registry_thaw_all);
}

static void registry_set(int fd, bool on)
{
    pthread_once(&registry_once, registry_init);
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < QGA_REGISTRY_MAX; i++) {
        if (on && registry[i] < 0) {
            registry[i] = fd;
            break;
        }
        if (!on && registry[i] == fd) {
            registry[i] = -1;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
}

/* Thaws and checks; 0 once the guest says thawed. */
/* Where thaw_checked says how long the guest was frozen: from since_ns to the thaw's answer. */
struct thaw_clock {
    int64_t since_ns;
    uint64_t *frozen_us;
};

static int thaw_checked(struct qga *g, int timeout_ms, const struct thaw_clock *clk, char *err,
                        size_t errlen)
{
    int r = qga_thaw(g, timeout_ms, NULL, err, errlen);
    if (clk)
        *clk->frozen_us = (uint64_t)(clock_monotonic_ns() - clk->since_ns) / 1000;
    if (r < 0)
        return r;
    bool frozen = true;
    r = qga_status(g, timeout_ms, &frozen, err, errlen);
    if (r < 0)
        return r;
    if (frozen) {
        snprintf(err, errlen, "guest agent %s: still frozen after guest-fsfreeze-thaw", g->path);
        return -EBUSY;
    }
    return 0;
}

/* Detached: keeps thawing a guest whose agent did not confirm the thaw in time. */
static void *keeper_main(void *arg)
{
    struct qga *g = arg;
    char err[512];
    for (int round = 0; round < QGA_KEEPER_ROUNDS; round++) {
        int r = thaw_checked(g, QGA_KEEPER_WAIT_MS, NULL, err, sizeof(err));
        if (r == 0) {
            log_info("guest agent %s: guest thawed after a late answer", g->path);
            registry_set(g->fd, false);
            qga_close(g);
            return NULL;
        }
        if (r == -ECONNRESET || r == -EPIPE) {
            /* reconnect: the agent's socket stays, only our connection went */
            struct qga *n = NULL;
            if (qga_open(g->path, QGA_KEEPER_WAIT_MS, &n, err, sizeof(err)) == 0) {
                registry_set(n->fd, true);
                registry_set(g->fd, false);
                qga_close(g);
                g = n;
            } else {
                sleep(1);
            }
        }
    }
    log_error("guest agent %s: gave up thawing the guest: %s", g->path, err);
    registry_set(g->fd, false);
    qga_close(g);
    return NULL;
}

static void keeper_start(struct qga *g)
{
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &a, keeper_main, g) != 0) {
        log_error("guest agent %s: cannot start the thread that thaws the guest", g->path);
        registry_set(g->fd, false);
        qga_close(g);
    }
    pthread_attr_destroy(&a);
}

/* After a failed freeze or at the end: thaw now or hand over to the keeper.  clk (NULL: not
 * wanted) gets how long the guest was frozen. */
static int thaw_or_keep(struct qga *g, int timeout_ms, const struct thaw_clock *clk, char *err,
                        size_t errlen)
{
    int r = thaw_checked(g, timeout_ms, clk, err, errlen);
    if (r == 0) {
        registry_set(g->fd, false);
        qga_close(g);
        return 0;
    }
    log_warn("%s; still trying to thaw in the background", err);
    keeper_start(g);
    return r;
}

int qga_freeze_begin(struct qga_freeze *f, const char *path, int timeout_ms, char *err,
                     size_t errlen)
{
    memset(f, 0, sizeof(*f));
    int r = qga_open(path, timeout_ms, &f->g, err, errlen);
    if (r < 0)
        return r;
    registry_set(f->g->fd, true);
    f->t_frozen_ns = clock_monotonic_ns();
    r = qga_freeze(f->g, timeout_ms, &f->count, err, errlen);
    if (r < 0) {
        /* The freeze may still happen after we stopped waiting (the agent runs requests in
         * order): the thaw queued behind it undoes it.  Wait for that longer than for the
         * freeze itself. */
        char terr[512];
        int wait = timeout_ms > QGA_KEEPER_WAIT_MS / 3 ? timeout_ms : QGA_KEEPER_WAIT_MS / 3;
        thaw_or_keep(f->g, wait, NULL, terr, sizeof(terr));
        f->g = NULL;
        return r;
    }
    return 0;
}

int qga_freeze_end(struct qga_freeze *f, int timeout_ms, char *err, size_t errlen)
{
    if (!f->g)
        return 0;
    struct qga *g = f->g;
    f->g = NULL;
    struct thaw_clock clk = {.since_ns = f->t_frozen_ns, .frozen_us = &f->frozen_us};
    return thaw_or_keep(g, timeout_ms, &clk, err, errlen);
}
