/* Fuzz target: vmexportd's request handling end to end — libmicrohttpd's parser, the router,
 * authentication, the JSON bodies of login and uploads, query parameters, Range headers and
 * every route — by sending each input as raw bytes of an HTTP request to a real server running
 * in this process (plain HTTP on 127.0.0.1, a dir provider with one small VM, a fresh SQLite
 * catalog).  Inputs may say @TOKEN@ (a valid bearer token), @SNAP@ (a ready snapshot of VM
 * web01) and @XFER@ (an open upload transfer): the harness replaces them, so that the fuzzer
 * reaches the routes behind login.  Whatever the input, the server answers with an HTTP status
 * line or closes the connection, never a 5xx for a request it could parse (except 503 when a
 * limit is reached), and keeps serving: /healthz must still answer 200 afterwards.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "core/log.h"
#include "daemon/config.h"
#include "server/server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct server *srv;
static struct server_config cfg; /* the server's (it keeps pointers into it) */
static unsigned port;
static char workdir[64]; /* the server's files, removed at exit */
static char token[2048], snap[64], xfer[128];

static void put_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert(f && fputs(text, f) >= 0 && fclose(f) == 0);
}

/* An input's exchange ends when the server has sent nothing for SILENCE_MS after the request,
 * or nothing more for SILENCE_MORE_MS once it has answered (the rest of an answer follows at
 * once; a kept-alive connection then idles).  The server only closes a kept-alive or
 * unfinished request at its timeouts (header_timeout, then connection_timeout: 1 s each), which
 * made the seed corpus alone take over three minutes; every answer of this small set-up comes
 * within milliseconds, and a server that hangs is still caught by the /healthz check that
 * follows each input. */
#define SILENCE_MS      150
#define SILENCE_MORE_MS 30

/* One request; the answer (NUL-terminated, cut to cap - 1 bytes) in out; its length.  The
 * exchange ends when the server closes or after silence_ms without a byte from it (more_ms once
 * it has sent some). */
static size_t exchange(const void *req, size_t len, char *out, size_t cap, int silence_ms,
                       int more_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert(fd >= 0);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    /* Close with a reset: tens of thousands of connections would otherwise leave their
     * ephemeral ports in TIME_WAIT, where servers started after this cannot bind(). */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        fprintf(stderr, "fuzz_http: connect: %s\n", strerror(errno));
        abort();
    }
    size_t done = 0;
    while (done < len) {
        ssize_t n = send(fd, (const char *)req + done, len - done, MSG_NOSIGNAL);
        if (n <= 0)
            break; /* the server may close early on a bad request */
        done += (size_t)n;
    }
    shutdown(fd, SHUT_WR);
    size_t got = 0;
    for (;;) {
        char buf[65536];
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, got ? more_ms : silence_ms) <= 0)
            break; /* silent: the answer, if any, is complete */
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0)
            break;
        size_t k = (size_t)n < cap - 1 - got ? (size_t)n : cap - 1 - got;
        memcpy(out + got, buf, k);
        got += k;
    }
    out[got] = '\0';
    close(fd);
    return got;
}

/* A request from text: the status of the answer; its body (after the blank line) in body. */
static int simple(const char *req, char *body, size_t cap)
{
    static char resp[1 << 16];
    exchange(req, strlen(req), resp, sizeof(resp), 10000, 10000); /* Connection: close */
    int status = 0;
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1)
        return 0;
    const char *b = strstr(resp, "\r\n\r\n");
    snprintf(body, cap, "%s", b ? b + 4 : "");
    return status;
}

/* The string value of "key":"..." in a JSON text (no escapes expected). */
static void json_str(const char *json, const char *key, char *out, size_t cap)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":\"", key);
    const char *p = strstr(json, pat);
    assert(p);
    p += strlen(pat);
    const char *e = strchr(p, '"');
    assert(e && (size_t)(e - p) < cap);
    memcpy(out, p, (size_t)(e - p));
    out[e - p] = '\0';
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) < 0 ? -1 : 0;
}

static void teardown(void)
{
    if (srv) {
        server_stop(srv, 0);
        server_free(srv);
        srv = NULL;
        config_free(&cfg);
    }
    if (workdir[0])
        nftw(workdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_init("fuzz_http", LOG_LEVEL_ERROR);
    char dir[] = "/tmp/vmexport-fuzz-http-XXXXXX";
    assert(mkdtemp(dir));
    snprintf(workdir, sizeof(workdir), "%s", dir);
    atexit(teardown);
    char p[512], cfgtext[2048];
    snprintf(p, sizeof(p), "%s/vms", dir);
    assert(mkdir(p, 0755) == 0);
    snprintf(p, sizeof(p), "%s/vms/web01", dir);
    assert(mkdir(p, 0755) == 0);
    snprintf(p, sizeof(p), "%s/vms/web01/disk.img", dir);
    put_file(p, "some disk data, then zeros");
    assert(truncate(p, 8192) == 0);
    char users[512];
    snprintf(users, sizeof(users), "admin:%s\n", crypt("secret", "$6$fuzzfuzzfuzz$"));
    snprintf(p, sizeof(p), "%s/users", dir);
    put_file(p, users);
    assert(chmod(p, 0600) == 0); /* the daemon refuses a users file others may read */

    srandom((unsigned)getpid());
    for (int attempt = 0;; attempt++) {
        assert(attempt < 50);
        port = 10000 + (unsigned)(random() % 20000); /* below the ephemeral ports */
        snprintf(cfgtext, sizeof(cfgtext),
                 "[server]\nlisten = 127.0.0.1:%u\ninsecure_http = true\nshutdown_grace = 1\n"
                 /* An input that stops inside its headers or body is answered by a close
                  * after these (the event loop does not end a connection at the client's
                  * half-close while it waits for more of a request). */
                 "header_timeout = 1\nconnection_timeout = 1\n"
                 "[auth]\nusers_file = %s/users\njwt_secret_file = %s/jwt.key\n"
                 "[catalog]\ndb_file = %s/catalog.db\n"
                 "[provider.local]\ntype = dir\npath = %s/vms\n",
                 port, dir, dir, dir, dir);
        snprintf(p, sizeof(p), "%s/vmexportd.conf", dir);
        put_file(p, cfgtext);
        char err[512];
        if (srv) {
            server_free(srv);
            srv = NULL;
            config_free(&cfg);
        }
        assert(config_load(&cfg, p, err, sizeof(err)) == 0);
        assert(server_new(&cfg, &srv, err, sizeof(err)) == 0);
        if (server_start(srv, err, sizeof(err)) == 0)
            break; /* else the port is taken: another one */
    }

    static char body[1 << 16];
    char req[4096];
    const char login[] = "{\"username\":\"admin\",\"password\":\"secret\"}";
    snprintf(req, sizeof(req),
             "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
             strlen(login), login);
    assert(simple(req, body, sizeof(body)) == 200);
    json_str(body, "token", token, sizeof(token));
    snprintf(req, sizeof(req),
             "POST /api/v1/vms/web01/snapshots HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
             "Content-Length: 0\r\nConnection: close\r\n\r\n",
             token);
    assert(simple(req, body, sizeof(body)) == 201);
    json_str(body, "id", snap, sizeof(snap));
    const char up[] = "{\"disk\":\"restored.img\",\"size\":65536}";
    snprintf(req, sizeof(req),
             "POST /api/v1/vms/web01/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
             "Content-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
             token, strlen(up), up);
    int st = simple(req, body, sizeof(body));
    if (st == 201)
        json_str(body, "id", xfer, sizeof(xfer));
    else
        snprintf(xfer, sizeof(xfer), "no-transfer");
}

/* data with @TOKEN@, @SNAP@ and @XFER@ replaced, into a new buffer. */
static char *expand(const uint8_t *data, size_t size, size_t *out_len)
{
    const struct {
        const char *mark, *value;
    } subst[] = {{"@TOKEN@", token}, {"@SNAP@", snap}, {"@XFER@", xfer}};
    size_t cap = size * 8 + 4096, n = 0;
    char *out = malloc(cap);
    assert(out);
    for (size_t i = 0; i < size;) {
        bool done = false;
        for (size_t k = 0; k < sizeof(subst) / sizeof(subst[0]) && !done; k++) {
            size_t ml = strlen(subst[k].mark), vl = strlen(subst[k].value);
            if (size - i >= ml && !memcmp(data + i, subst[k].mark, ml) && n + vl < cap) {
                memcpy(out + n, subst[k].value, vl);
                n += vl;
                i += ml;
                done = true;
            }
        }
        if (!done) {
            if (n + 1 >= cap)
                break;
            out[n++] = (char)data[i++];
        }
    }
    *out_len = n;
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char resp[1 << 20];
    if (!srv)
        setup();
    size_t len;
    char *req = expand(data, size, &len);
    size_t got = exchange(req, len, resp, sizeof(resp), SILENCE_MS, SILENCE_MORE_MS);
    free(req);
    if (got) {
        int status = 0;
        assert(!strncmp(resp, "HTTP/1.", 7));
        assert(sscanf(resp, "HTTP/1.%*d %d", &status) == 1);
        assert(status >= 100 && status <= 599);
        if (status >= 500 && status != 503 && status != 505) {
            fprintf(stderr, "fuzz_http: status %d for a request; answer:\n%.2000s\n", status, resp);
            abort();
        }
    }
    static char body[4096];
    int st =
        simple("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", body, sizeof(body));
    if (st != 200) {
        fprintf(stderr, "fuzz_http: /healthz answered %d after the input\n", st);
        abort();
    }
    return 0;
}
