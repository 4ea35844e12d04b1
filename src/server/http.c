/* vmexportd's HTTP layer: libmicrohttpd set-up (TLS 1.2+, optional client certificates),
 * connection limits and timeouts, request bodies, routing of /api/v1 and /images paths,
 * authentication, replies, the access log and metrics.
 *
 * Bodies are collected in memory (64 KiB at most) and the route runs once they are complete,
 * except for streaming routes (upload data): those are routed and authenticated as soon as the
 * headers arrive, their begin hook checks the request, and the body goes to the route piece by
 * piece without any size limit.
 *
 * Threads: libmicrohttpd's event loop (epoll) on a pool of worker threads, so an idle or silent
 * connection costs a socket and no thread.  The workers run the fast routes (disk data, whose
 * responses read the file as they are sent; upload bodies; health) themselves.  Every other
 * route may block for long (a copy-mode snapshot copies whole disks; diffs, fsync, crypt(3) and
 * PAM), which would stall every connection of its worker: those run on a job pool (jobs.h)
 * while their connection is suspended, and the worker sends the answer when the job resumes it.
 * Operations that may take minutes (ROUTE_LONG) have a pool of their own, so that a storm of
 * copy-mode snapshots never holds up logins and listings.
 * Handlers share only the catalog (its own lock), the upload registry (its own lock), the token
 * and disk caches (their own locks) and atomics.
 *
 * Connections: at most max_connections_per_address from one address (libmicrohttpd closes
 * more at once); libmicrohttpd accepts a margin above max_connections, and a request on a
 * connection beyond max_connections is answered 503 with Retry-After and closed, so a full
 * daemon says so instead of dropping clients.  A new connection has header_timeout seconds of
 * silence for its TLS handshake and its request headers; once a request has arrived, its
 * connection may stay silent for connection_timeout (a slow answer, keep-alive).  Silence alone
 * does not stop a client that trickles a byte now and then, so the headers also have a total
 * time limit (deadline.h): header_timeout from the accept for the first request, and
 * connection_timeout + header_timeout from the end of the previous answer for the next ones on
 * a keep-alive connection.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/clock.h"
#include "core/hex.h"
#include "core/log.h"
#include "core/text.h"
#include "server/deadline.h"
#include "server/jobs.h"
#include "server/server.h"
#include "server/upload.h"

/* Largest request body accepted (login JSON): anything bigger is 413. */
#define REQUEST_BODY_MAX (64 * 1024)
/* Per-connection memory for headers and buffers inside libmicrohttpd. */
#define CONNECTION_MEMORY_LIMIT (256 * 1024)
/* Largest PEM file read (certificate chains included). */
#define PEM_MAX (1024 * 1024)
/* Connections libmicrohttpd accepts beyond max_connections, to answer them 503: an eighth more
 * and a few. */
#define CONNECTION_MARGIN(max) ((max) / 8 + 16)
/* Retry-After of a 503 when the daemon is full (seconds). */
#define BUSY_RETRY_AFTER "5"
/* Access log: longest path and query logged, and longest query value. */
#define LOG_PATH_MAX  512
#define LOG_VALUE_MAX 64
/* Characters of a transfer ID the logs keep (the ID is a credential). */
#define LOG_ID_KEEP 8

enum route_flags {
    ROUTE_PUBLIC = 1u << 0,  /* no token needed */
    ROUTE_IMAGEIO = 1u << 1, /* under /images/ (ovirt-imageio style), not under /api/v1 */
    /* Answers without blocking: runs on the event-loop worker, not on a job pool. */
    ROUTE_INLINE = 1u << 2,
    /* May take minutes (copies, diffs, fsync, unlinking big files): on the pool of long jobs. */
    ROUTE_LONG = 1u << 3,
};

enum job_state {
    JOB_NONE,
    JOB_QUEUED, /* the connection is suspended until the job has answered */
};

/* Per connection (libmicrohttpd's socket context). */
struct conn_state {
    bool over_limit;     /* accepted beyond max_connections: answered 503 */
    bool timeout_raised; /* a request arrived: header_timeout gave way to connection_timeout */
    /* On srv->deadlines from the accept to the close; a deadline while headers are awaited. */
    struct deadline_entry deadline;
};

struct route {
    const char *methods; /* space-separated */
    const char *pattern; /* segments; "*" matches one ID */
    int (*handler)(struct request *rq);
    unsigned flags;
    const char *name; /* metrics label */
    /* Streaming routes: called when the headers arrive (after authentication); answers at once
     * or sets rq->body_write.  handler then runs when the body has arrived. */
    int (*begin)(struct request *rq);
    /* Least privileged role that may use the route (not public ones); unset: admin only. */
    enum auth_role role;
};

/* The least privileged role of a route, in the table below (none: admin only). */
#define READER   .role = AUTH_ROLE_READER
#define OPERATOR .role = AUTH_ROLE_OPERATOR

/* Handlers by method for one path shape; the first matching path decides 405 vs dispatch.
 * Routes without ROUTE_INLINE run on a job pool: ROUTE_LONG ones on the pool of long jobs. */
static const struct route routes[] = {
    {"POST", "auth/login", route_login, ROUTE_PUBLIC, "login"},
    {"POST", "auth/logout", route_logout, 0, "logout", READER},
    {"GET", "vms", route_vms_list, 0, "vms", READER},
    {"GET", "vms/*", route_vm_get, 0, "vm", READER},
    {"GET", "vms/*/definition", route_vm_definition, 0, "vm_definition", READER},
    {"GET", "vms/*/snapshots", route_snapshots_list, 0, "snapshots", READER},
    {"POST", "vms/*/snapshots", route_snapshot_create, ROUTE_LONG, "snapshot_create", OPERATOR},
    {"DELETE", "vms/*/snapshots", route_snapshots_purge, ROUTE_LONG, "snapshots_purge", OPERATOR},
    {"GET", "vms/*/snapshots/*", route_snapshot_get, ROUTE_LONG, "snapshot", READER},
    {"DELETE", "vms/*/snapshots/*", route_snapshot_delete, ROUTE_LONG, "snapshot_delete",
     OPERATOR},
    {"GET HEAD", "vms/*/snapshots/*/disks/*", route_disk_data, ROUTE_INLINE, "disk", READER},
    {"GET", "vms/*/snapshots/*/disks/*/changes", route_disk_changes, ROUTE_LONG, "disk_changes",
     READER},
    {"GET", "snapshots", route_orphans_list, 0, "all_snapshots", READER},
    {"GET HEAD", "healthz", route_healthz, ROUTE_PUBLIC | ROUTE_INLINE, "healthz"},
    {"GET", "metrics", route_metrics, ROUTE_INLINE, "metrics"},
    {"POST", "vms/*/uploads", route_upload_create, 0, "upload_create", OPERATOR},
    {"POST", "vms/*/downloads", route_download_create, 0, "download_create", READER},
    /* Shared by uploads and downloads: a reader may use its downloads only (routes_upload.c
     * answers 403 for an upload). */
    {"GET HEAD", "transfers/*", route_transfer_get, ROUTE_INLINE, "transfer_get", READER},
    {"PUT", "transfers/*", route_transfer_put, ROUTE_LONG, "transfer_put",
     route_transfer_put_begin, OPERATOR},
    {"PATCH", "transfers/*", route_transfer_patch, ROUTE_LONG, "transfer_patch", OPERATOR},
    {"OPTIONS", "transfers/*", route_transfer_options, ROUTE_INLINE, "transfer_options", READER},
    {"DELETE", "transfers/*", route_transfer_cancel, ROUTE_LONG, "transfer_cancel", READER},
    {"GET", "transfers/*/extents", route_transfer_extents, ROUTE_LONG, "transfer_extents",
     READER},
    {"POST", "transfers/*/finalize", route_transfer_finalize, ROUTE_LONG, "transfer_finalize",
     OPERATOR},
    /* The same under /images/{id}: the unguessable transfer ID is the credential. */
    {"GET HEAD", "images/*", route_transfer_get, ROUTE_PUBLIC | ROUTE_IMAGEIO | ROUTE_INLINE,
     "image_get"},
    {"PUT", "images/*", route_transfer_put, ROUTE_PUBLIC | ROUTE_IMAGEIO | ROUTE_LONG, "image_put",
     route_transfer_put_begin},
    {"PATCH", "images/*", route_transfer_patch, ROUTE_PUBLIC | ROUTE_IMAGEIO | ROUTE_LONG,
     "image_patch"},
    {"OPTIONS", "images/*", route_transfer_options, ROUTE_PUBLIC | ROUTE_IMAGEIO | ROUTE_INLINE,
     "image_options"},
    {"DELETE", "images/*", route_transfer_cancel, ROUTE_PUBLIC | ROUTE_IMAGEIO | ROUTE_LONG,
     "image_cancel"},
    {"GET", "images/*/extents", route_transfer_extents, ROUTE_PUBLIC | ROUTE_IMAGEIO | ROUTE_LONG,
     "image_extents"},
    {"POST", "images/*/finalize", route_transfer_finalize,
     ROUTE_PUBLIC | ROUTE_IMAGEIO | ROUTE_LONG, "image_finalize"},
};
#define N_ROUTES ((int)ARRAY_SIZE(routes))
_Static_assert(ARRAY_SIZE(routes) < METRICS_ROUTES, "metrics has room for every route");
#define ROUTE_NONE N_ROUTES /* unmatched requests, for metrics */

static const char *route_metric_names[METRICS_ROUTES];

/* ---- replies ---- */

int reply_sized(struct request *rq, unsigned status, struct MHD_Response *resp, uint64_t bytes)
{
    if (!resp)
        return MHD_NO;
    if (rq->deferred) {
        /* Answered already while the body was arriving: the first answer stands. */
        MHD_destroy_response(resp);
        return MHD_YES;
    }
    rq->status = status;
    rq->resp_bytes = bytes;
    MHD_add_response_header(resp, "Server", "vmexportd/" VMEXPORT_VERSION);
    if (rq->defer_replies) {
        rq->deferred = resp;
        return MHD_YES;
    }
    int ret = MHD_queue_response(rq->conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

int reply(struct request *rq, unsigned status, struct MHD_Response *resp)
{
    return reply_sized(rq, status, resp, REQUEST_BYTES_UNKNOWN);
}

int reply_json(struct request *rq, unsigned status, void *json)
{
    json_t *j = json;
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) {
        /* json_pack refuses strings that are not UTF-8: answer rather than drop the
         * connection. */
        static const char fallback[] = "{\"error\":\"internal error\",\"details\":\"the answer "
                                       "could not be written as JSON\"}";
        log_error("%s: an answer could not be written as JSON", rq->method);
        struct MHD_Response *resp = MHD_create_response_from_buffer(
            sizeof(fallback) - 1, (void *)fallback, MHD_RESPMEM_PERSISTENT);
        if (resp)
            MHD_add_response_header(resp, "Content-Type", "application/json");
        return reply(rq, 500, resp);
    }
    size_t len = strlen(text);
    text[len] = '\0';
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    return reply_sized(rq, status, resp, len);
}

FILE *server_tmpfile(void)
{
    /* tmpfile() leaves its descriptor open across exec (glibc opens it without O_CLOEXEC). */
    int fd = open(P_tmpdir, O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
        char path[] = P_tmpdir "/vmexportd-XXXXXX"; /* no O_TMPFILE there: a name, at once gone */
        fd = mkostemp(path, O_CLOEXEC);
        if (fd >= 0)
            unlink(path);
    }
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, "w+");
    if (!f) {
        int e = errno;
        close(fd);
        errno = e;
    }
    return f;
}

int reply_json_file(struct request *rq, unsigned status, FILE *f)
{
    if (fflush(f) != 0) {
        fclose(f);
        return reply_error(rq, 500, "internal error", "cannot write a temporary file");
    }
    struct stat st;
    int fd = fcntl(fileno(f), F_DUPFD_CLOEXEC, 0);
    fclose(f);
    if (fd < 0 || fstat(fd, &st) < 0) {
        if (fd >= 0)
            close(fd);
        return reply_error(rq, 500, "internal error", "temporary file: %s", strerror(errno));
    }
    struct MHD_Response *resp = MHD_create_response_from_fd_at_offset64((uint64_t)st.st_size, fd, 0);
    if (!resp) {
        close(fd);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    return reply_sized(rq, status, resp, (uint64_t)st.st_size);
}

int reply_error(struct request *rq, unsigned status, const char *error, const char *fmt, ...)
{
    char details[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(details, sizeof(details), fmt, ap);
    va_end(ap);
    /* Details may quote a name from a disk or a request argument, neither of them UTF-8 for
     * sure; JSON strings must be. */
    CLEANUP_FREE char *clean = utf8_scrub(details);
    if (status >= 500)
        log_error("%s %s: %s: %s", rq->method, rq->nsegs ? rq->segs[0] : "/", error,
                  clean ? clean : details);
    return reply_json(rq, status,
                      clean ? json_pack("{s:s, s:s}", "error", error, "details", clean) : NULL);
}

int reply_errno(struct request *rq, int r, const char *what)
{
    /* Callers answer "not found" and "bad request" themselves, where the client is at fault;
     * what reaches here is a fault of the server or its storage. */
    switch (-r) {
    case EBUSY:
        return reply_error(rq, 409, "conflict", "%s: busy, try again", what);
    case ENOSPC:
        return reply_error(rq, 507, "insufficient storage", "%s: no space left on device", what);
    default:
        return reply_error(rq, 500, "internal error", "%s: %s", what, strerror(-r));
    }
}

const char *request_arg(struct request *rq, const char *name)
{
    return MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, name);
}

int request_arg_bool(struct request *rq, const char *name, bool dflt, bool *out)
{
    return bool_parse(request_arg(rq, name), dflt, out);
}

int reply_bad_bool(struct request *rq, const char *name)
{
    return reply_error(rq, 400, "bad request",
                       "query parameter '%s' takes a boolean: 1, t, T, TRUE, true, True, 0, f, F, "
                       "FALSE, false or False",
                       name);
}

const char *request_header(struct request *rq, const char *name)
{
    return MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, name);
}

/* ---- routing ---- */

/* Split url into rq->segs below /api/v1 (or at the root for healthz/metrics).  A trailing slash
 * is allowed; empty segments in the middle are not.  Returns false for paths outside the API. */
static bool split_path(struct request *rq, const char *url)
{
    static const char prefix[] = "/api/v1";
    static const char images[] = "/images/";
    const char *p;
    if (!strncmp(url, prefix, sizeof(prefix) - 1) &&
        (url[sizeof(prefix) - 1] == '/' || url[sizeof(prefix) - 1] == '\0')) {
        p = url + sizeof(prefix) - 1;
    } else if (!strncmp(url, images, sizeof(images) - 1)) {
        p = url; /* segments "images", ID ... */
        rq->imageio = true;
    } else if (!strcmp(url, "/healthz") || !strcmp(url, "/metrics") || !strcmp(url, "/healthz/") ||
               !strcmp(url, "/metrics/")) {
        p = url;
    } else {
        return false;
    }
    while (*p == '/' && rq->nsegs < (int)ARRAY_SIZE(rq->segs)) {
        p++;
        if (*p == '\0')
            break; /* trailing slash */
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0)
            return false; /* "//" */
        rq->segs[rq->nsegs] = strndup(p, len);
        if (!rq->segs[rq->nsegs])
            return false;
        rq->nsegs++;
        p += len;
    }
    return *p == '\0';
}

static bool pattern_matches(const char *pattern, struct request *rq)
{
    int i = 0;
    const char *p = pattern;
    while (*p) {
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (i >= rq->nsegs)
            return false;
        if (!(len == 1 && *p == '*') && (strlen(rq->segs[i]) != len || strncmp(p, rq->segs[i], len)))
            return false;
        i++;
        p += len;
        if (*p == '/')
            p++;
    }
    return i == rq->nsegs;
}

/* Routes under /images/ and under /api/v1 never serve each other's paths. */
static bool route_matches(const struct route *rt, struct request *rq)
{
    return !(rt->flags & ROUTE_IMAGEIO) == !rq->imageio && pattern_matches(rt->pattern, rq);
}

static bool method_listed(const char *methods, const char *method)
{
    if (!strcmp(method, "HEAD"))
        method = "GET"; /* libmicrohttpd sends HEAD answers without their body */
    size_t ml = strlen(method);
    for (const char *p = methods; *p;) {
        const char *end = strchr(p, ' ');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == ml && !strncmp(p, method, len))
            return true;
        p += len;
        while (*p == ' ')
            p++;
    }
    return false;
}

/* IDs from URLs: bounded, printable UTF-8, never "." or "..", no NUL or control bytes. */
static bool ids_are_sane(struct request *rq)
{
    for (int i = 0; i < rq->nsegs; i++) {
        const char *s = rq->segs[i];
        size_t len = strlen(s);
        if (len > ID_MAX || !strcmp(s, ".") || !strcmp(s, "..") || !utf8_valid(s))
            return false;
        for (const unsigned char *c = (const unsigned char *)s; *c; c++)
            if (*c < 0x20 || *c == 0x7f || *c == '\\')
                return false;
    }
    return true;
}

/* With mutual TLS, the client certificate must verify against the configured CA. */
static bool client_cert_ok(struct request *rq)
{
    if (!rq->srv->ca_pem)
        return true;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(rq->conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (!ci || !ci->tls_session)
        return false;
    gnutls_session_t session = (gnutls_session_t)ci->tls_session;
    unsigned int status = 0;
    unsigned int n = 0;
    if (!gnutls_certificate_get_peers(session, &n) || n == 0)
        return false;
    if (gnutls_certificate_verify_peers2(session, &status) != GNUTLS_E_SUCCESS)
        return false;
    return status == 0;
}

/* Public routes pass; others need a valid bearer token (rq->user and rq->role are set from it)
 * and then, for rq->denied, a role the route allows. */
static bool request_authorized(struct request *rq, const struct route *rt)
{
    if (rt->flags & ROUTE_PUBLIC)
        return true;
    const char *authz = request_header(rq, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!authz || auth_check_bearer(rq->srv->auth, authz, &rq->user, &rq->role) != 0)
        return false;
    rq->denied = !auth_role_allows(rq->role, rt->role);
    return true;
}

/* 401 without a valid token, 403 when the token's role may not use the route. */
static int reply_unauthorized(struct request *rq)
{
    if (rq->denied)
        return reply_error(rq, 403, "forbidden",
                           "user '%s' has role %s, which may not use this route", rq->user,
                           auth_role_name(rq->role));
    return reply_error(rq, 401, "unauthorized",
                       "a valid 'Authorization: Bearer <token>' header is required "
                       "(POST /api/v1/auth/login)");
}

/* The route for this path and method, or -1. */
static int route_find(struct request *rq)
{
    for (int i = 0; i < N_ROUTES; i++)
        if (route_matches(&routes[i], rq) && method_listed(routes[i].methods, rq->method))
            return i;
    return -1;
}

/* ---- slow routes on the job pool ---- */

static void request_job(void *opaque)
{
    struct request *rq = opaque;
    struct MHD_Connection *conn = rq->conn;
    rq->job_handler(rq); /* its answer goes to rq->deferred (defer_replies) */
    /* rq belongs to libmicrohttpd again from here: it may end the request at once. */
    MHD_resume_connection(conn);
}

/* Run the route's handler on a job pool; the connection sleeps meanwhile (no timeout, no
 * reads), and access_handler sends the answer when the job resumes it. */
static int request_offload(struct request *rq, const struct route *rt)
{
    struct job_pool *pool = rt->flags & ROUTE_LONG ? rq->srv->jobs_long : rq->srv->jobs;
    rq->defer_replies = true;
    rq->job_handler = rt->handler;
    rq->job_state = JOB_QUEUED;
    MHD_suspend_connection(rq->conn);
    int r = job_pool_submit(pool, request_job, rq);
    if (r == 0)
        return MHD_YES; /* rq is the job's until it resumes the connection */
    /* Not queued: the refusal goes the way of a job's answer. */
    if (r == -ESHUTDOWN)
        reply_error(rq, 503, "service unavailable", "the daemon is stopping");
    else
        reply_errno(rq, r, "queueing the request");
    MHD_resume_connection(rq->conn);
    return MHD_YES;
}

/* The answer of a job (or of a streaming route's body): queue it, or close the connection when
 * the route gave none. */
static int request_send_deferred(struct request *rq)
{
    rq->job_state = JOB_NONE;
    rq->defer_replies = false;
    struct MHD_Response *resp = rq->deferred;
    rq->deferred = NULL;
    if (!resp)
        return MHD_NO;
    int ret = MHD_queue_response(rq->conn, rq->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static int route_run(struct request *rq, const struct route *rt)
{
    return rt->flags & ROUTE_INLINE ? rt->handler(rq) : request_offload(rq, rt);
}

static int dispatch(struct request *rq)
{
    const struct route *path_match = NULL;
    for (int i = 0; i < N_ROUTES; i++) {
        if (!route_matches(&routes[i], rq))
            continue;
        if (!path_match)
            path_match = &routes[i];
        if (!method_listed(routes[i].methods, rq->method))
            continue;
        rq->route = i;
        if (!request_authorized(rq, &routes[i]) || rq->denied)
            return reply_unauthorized(rq);
        return route_run(rq, &routes[i]);
    }
    if (path_match) {
        /* Only authenticated callers learn which methods a path has. */
        rq->route = (int)(path_match - routes);
        if (!request_authorized(rq, path_match))
            return reply_unauthorized(rq);
        char allow[64] = "";
        for (int i = 0; i < N_ROUTES; i++) {
            if (strcmp(routes[i].pattern, path_match->pattern))
                continue;
            char methods[32];
            snprintf(methods, sizeof(methods), "%s", routes[i].methods);
            for (char *save = NULL, *m = strtok_r(methods, " ", &save); m;
                 m = strtok_r(NULL, " ", &save)) {
                size_t used = strlen(allow);
                snprintf(allow + used, sizeof(allow) - used, "%s%s", used ? ", " : "", m);
            }
        }
        struct MHD_Response *resp;
        json_t *j = json_pack("{s:s, s:s}", "error", "method not allowed", "details", allow);
        char *text = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
        MHD_add_response_header(resp, "Allow", allow);
        MHD_add_response_header(resp, "Content-Type", "application/json");
        return reply(rq, 405, resp);
    }
    return reply_error(rq, 404, "not found", "no such API route");
}

/* Whether the client waits for "100 Continue" before it sends the body. */
static bool expects_continue(struct request *rq)
{
    const char *expect = request_header(rq, MHD_HTTP_HEADER_EXPECT);
    return expect && !strcasecmp(expect, "100-continue");
}

/* When the headers have arrived: split the path and, for a streaming route, authenticate and
 * run its begin hook now, so that the body can go straight to the route.  Everything else is
 * decided when the body is complete, in the documented order of checks. */
static int request_begin(struct request *rq, const char *url)
{
    rq->path_ok = split_path(rq, url);
    if (!rq->path_ok || !ids_are_sane(rq) || !client_cert_ok(rq))
        return MHD_YES;
    int i = route_find(rq);
    if (i < 0 || !routes[i].begin)
        return MHD_YES;
    rq->route = i;
    rq->streaming = true;
    /* An answer now spares a client that waits for "100 Continue" sending the body; any other
     * client is already sending it, so the answer waits until the body has been read (and
     * discarded) rather than cutting the connection under the client's feet. */
    rq->defer_replies = !expects_continue(rq);
    int ret = request_authorized(rq, &routes[i]) && !rq->denied ? routes[i].begin(rq)
                                                                : reply_unauthorized(rq);
    rq->defer_replies = true; /* no response can be queued while the body arrives */
    return ret;
}

/* The body of a streaming route has arrived: send the answer given meanwhile, or run the
 * route. */
static int request_end_streaming(struct request *rq)
{
    if (rq->deferred)
        return request_send_deferred(rq);
    rq->defer_replies = false;
    return route_run(rq, &routes[rq->route]);
}

/* ---- connection limits ---- */

/* libmicrohttpd (0.9.75, daemon.c) sends MHD_CONNECTION_NOTIFY_CLOSED before it closes the
 * socket, which deadline.c relies on: the entry leaves the watch while its fd is still open. */
static void notify_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                              enum MHD_ConnectionNotificationCode toe)
{
    struct server *srv = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        struct conn_state *cs = calloc(1, sizeof(*cs));
        unsigned n = atomic_fetch_add(&srv->connections, 1) + 1;
        if (cs) {
            cs->over_limit = n > srv->cfg->max_connections;
            const union MHD_ConnectionInfo *ci =
                MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
            if (ci && srv->deadlines)
                deadline_watch_add(srv->deadlines, &cs->deadline, ci->connect_fd,
                                   srv->cfg->header_timeout);
        }
        *socket_context = cs;
    } else {
        atomic_fetch_sub(&srv->connections, 1);
        struct conn_state *cs = *socket_context;
        if (cs && cs->deadline.next)
            deadline_watch_remove(srv->deadlines, &cs->deadline);
        free(cs);
        *socket_context = NULL;
    }
}

static struct conn_state *conn_state_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* 503 and close: the daemon has max_connections open. */
static int reply_busy(struct request *rq)
{
    json_t *j = json_pack("{s:s, s:s}", "error", "service unavailable", "details",
                          "too many connections ([server] max_connections); try again later");
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    struct MHD_Response *resp =
        text ? MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE) : NULL;
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, BUSY_RETRY_AFTER);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    return reply_sized(rq, 503, resp, strlen(text));
}

/* ---- access log ---- */

static int64_t monotonic_us(void)
{
    return clock_monotonic_ns() / 1000;
}

/* Append s to buf (size LOG_PATH_MAX + 1, used *n), at most max bytes of it, with bytes that
 * could forge or garble a log line (controls, spaces, quotes, non-ASCII) as %XX. */
static void log_append(char *buf, size_t *n, const char *s, size_t max)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; s[i] && i < max && *n + 3 < LOG_PATH_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c > 0x20 && c < 0x7f && c != '"' && c != '%') {
            buf[(*n)++] = (char)c;
        } else {
            buf[(*n)++] = '%';
            buf[(*n)++] = hex[c >> 4];
            buf[(*n)++] = hex[c & 15];
        }
    }
    buf[*n] = '\0';
}

/* Query arguments whose values are credentials and never logged. */
static bool arg_is_secret(const char *key)
{
    static const char *const secret_words[] = {"token", "key", "secret", "pass",
                                               "auth",  "sig", "cred",   "ticket"};
    for (size_t i = 0; i < ARRAY_SIZE(secret_words); i++)
        if (strcasestr(key, secret_words[i]))
            return true;
    return false;
}

struct log_args {
    char *buf;
    size_t *n;
    bool first;
};

static enum MHD_Result log_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *value)
{
    (void)kind;
    struct log_args *la = cls;
    log_append(la->buf, la->n, la->first ? "?" : "&", 1);
    la->first = false;
    log_append(la->buf, la->n, key, LOG_VALUE_MAX);
    if (!value)
        return MHD_YES;
    log_append(la->buf, la->n, "=", 1);
    if (arg_is_secret(key))
        log_append(la->buf, la->n, "...", 3);
    else
        log_append(la->buf, la->n, value, LOG_VALUE_MAX);
    return MHD_YES;
}

/* The path of the request as the access log shows it: transfer IDs (credentials under /images/
 * and bearer-protected under /api/v1/transfers/) cut to their first LOG_ID_KEEP characters,
 * query values that look like credentials replaced by "...". */
static char *log_path_of(struct MHD_Connection *conn, const char *url)
{
    static const char *const id_prefixes[] = {"/images/", "/api/v1/transfers/"};
    char *buf = malloc(LOG_PATH_MAX + 1);
    if (!buf)
        return NULL;
    size_t n = 0;
    buf[0] = '\0';
    const char *rest = url;
    for (size_t i = 0; i < ARRAY_SIZE(id_prefixes); i++) {
        size_t pl = strlen(id_prefixes[i]);
        if (strncmp(url, id_prefixes[i], pl))
            continue;
        log_append(buf, &n, url, pl);
        const char *id = url + pl;
        size_t idl = strcspn(id, "/");
        log_append(buf, &n, id, idl < LOG_ID_KEEP ? idl : LOG_ID_KEEP);
        if (idl > LOG_ID_KEEP)
            log_append(buf, &n, "...", 3);
        rest = id + idl;
        break;
    }
    log_append(buf, &n, rest, LOG_PATH_MAX);
    struct log_args la = {.buf = buf, .n = &n, .first = true};
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, log_arg, &la);
    return buf;
}

static void client_address(struct MHD_Connection *conn, char *addr, size_t len)
{
    snprintf(addr, len, "-");
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, addr, (socklen_t)len);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, addr, (socklen_t)len);
}

/* One line per request: address, method and path, status (or "-": no answer was sent), body
 * bytes ("-": not known in advance), milliseconds from the headers to the end, user. */
static void access_log(struct request *rq, enum MHD_RequestTerminationCode toe)
{
    char addr[INET6_ADDRSTRLEN + 1], status[16], bytes[24];
    client_address(rq->conn, addr, sizeof(addr));
    if (rq->status)
        snprintf(status, sizeof(status), "%u", rq->status);
    else
        snprintf(status, sizeof(status), "-");
    if (!strcmp(rq->method, "HEAD"))
        snprintf(bytes, sizeof(bytes), "0");
    else if (rq->resp_bytes == REQUEST_BYTES_UNKNOWN)
        snprintf(bytes, sizeof(bytes), "-");
    else
        snprintf(bytes, sizeof(bytes), "%llu", (unsigned long long)rq->resp_bytes);
    double ms = (double)(monotonic_us() - rq->start_us) / 1000.0;
    char user[LOG_PATH_MAX + 1] = "-";
    size_t user_len = 0;
    if (rq->user)
        log_append(user, &user_len, rq->user, ID_MAX);
    log_info("access: %s \"%s %s\" %s %s %.1f ms %s%s", addr, rq->method,
             rq->log_path ? rq->log_path : "-", status, bytes, ms, user,
             toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed early)");
}

/* ---- requests ---- */

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
    (void)version;
    struct server *srv = cls;
    struct request *rq = *con_cls;

    if (!rq) {
        rq = calloc(1, sizeof(*rq));
        if (!rq)
            return MHD_NO;
        rq->srv = srv;
        rq->conn = conn;
        rq->method = method;
        rq->route = ROUTE_NONE;
        rq->resp_bytes = REQUEST_BYTES_UNKNOWN;
        rq->start_us = monotonic_us();
        *con_cls = rq;
        atomic_fetch_add(&srv->active_requests, 1);
        if (log_get_level() >= LOG_LEVEL_INFO)
            rq->log_path = log_path_of(conn, url);
        struct conn_state *cs = conn_state_of(conn);
        if (cs && cs->deadline.next) /* the headers have arrived in time */
            deadline_watch_set(srv->deadlines, &cs->deadline, 0);
        if (!cs || cs->over_limit) {
            rq->answered_busy = true;
            return reply_busy(rq);
        }
        if (!cs->timeout_raised) {
            /* The client has spoken: from now on, silence is allowed for connection_timeout
             * (a slow answer, keep-alive), no longer just header_timeout. */
            MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT,
                                      (unsigned)srv->cfg->connection_timeout);
            cs->timeout_raised = true;
        }
        return request_begin(rq, url); /* headers seen; body (if any) follows */
    }
    if (rq->job_state == JOB_QUEUED)
        return request_send_deferred(rq); /* the job has answered and resumed us */
    if (rq->answered_busy) {
        *upload_data_size = 0; /* any body is discarded */
        return MHD_YES;
    }
    if (rq->streaming && *upload_data_size > 0) {
        size_t len = *upload_data_size;
        *upload_data_size = 0;
        if (!rq->deferred && rq->body_write)
            rq->body_write(rq, upload_data, len);
        return MHD_YES; /* after an answer, the rest of the body is discarded */
    }
    if (rq->streaming)
        return request_end_streaming(rq);
    if (*upload_data_size > 0) {
        if (rq->body_len + *upload_data_size > REQUEST_BODY_MAX) {
            rq->body_too_large = true;
        } else {
            char *nb = realloc(rq->body, rq->body_len + *upload_data_size + 1);
            if (!nb)
                return MHD_NO;
            memcpy(nb + rq->body_len, upload_data, *upload_data_size);
            rq->body = nb;
            rq->body_len += *upload_data_size;
            rq->body[rq->body_len] = '\0';
        }
        *upload_data_size = 0;
        return MHD_YES;
    }

    if (!client_cert_ok(rq))
        return reply_error(rq, 401, "unauthorized",
                           "a client certificate signed by the configured CA is required");
    if (rq->body_too_large)
        return reply_error(rq, 413, "payload too large", "request bodies are limited to %d bytes",
                           REQUEST_BODY_MAX);
    if (!rq->path_ok)
        return reply_error(rq, 404, "not found", "no such API route");
    if (!ids_are_sane(rq))
        return reply_error(rq, 400, "bad request", "malformed or over-long ID in the URL");
    return dispatch(rq);
}

static void request_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                              enum MHD_RequestTerminationCode toe)
{
    struct server *srv = cls;
    struct request *rq = *con_cls;
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        /* Keep-alive: the next request's headers are due within connection_timeout (silence
         * allowed) and header_timeout (to send them). */
        struct conn_state *cs = conn_state_of(conn);
        if (cs && cs->deadline.next)
            deadline_watch_set(srv->deadlines, &cs->deadline,
                               srv->cfg->connection_timeout + srv->cfg->header_timeout);
    }
    if (!rq)
        return;
    metrics_request(&srv->metrics, rq->route, rq->status ? rq->status : 500);
    if (log_get_level() >= LOG_LEVEL_INFO)
        access_log(rq, toe);
    if (rq->release)
        rq->release(rq);
    if (rq->deferred)
        MHD_destroy_response(rq->deferred); /* the connection ended before the answer */
    for (int i = 0; i < rq->nsegs; i++)
        free(rq->segs[i]);
    free(rq->user);
    free(rq->body);
    free(rq->log_path);
    free(rq);
    *con_cls = NULL;
    atomic_fetch_sub(&srv->active_requests, 1);
}

/* Percent-decoding of paths and arguments.  A decoded NUL would silently cut an ID short
 * ("web01%00x" read as "web01"), so it becomes a control byte that ids_are_sane() rejects. */
#define DECODED_NUL_MARKER '\x01'

static size_t unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    char *w = s;
    for (const char *r = s; *r; r++) {
        int hi, lo;
        if (r[0] == '%' && (hi = hex_digit(r[1])) >= 0 && (lo = hex_digit(r[2])) >= 0) {
            char c = (char)(hi * 16 + lo);
            *w++ = c ? c : DECODED_NUL_MARKER;
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
    return (size_t)(w - s);
}

/* ---- set-up ---- */

static int read_pem(const char *path, char **out, char *err, size_t errlen, const char *key)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(err, errlen, "[server] %s: %s: %s", key, path, strerror(errno));
        return -errno;
    }
    char *buf = malloc(PEM_MAX + 1);
    size_t n = buf ? fread(buf, 1, PEM_MAX, f) : 0;
    fclose(f);
    if (!buf || n == 0 || n == PEM_MAX || !strstr(buf, "-----BEGIN")) {
        if (buf)
            buf[n < PEM_MAX ? n : PEM_MAX] = '\0';
        snprintf(err, errlen, "[server] %s: %s: not a PEM file", key, path);
        free(buf);
        return -EINVAL;
    }
    buf[n] = '\0';
    *out = buf;
    return 0;
}

/* MHD's log callback: a printf format from libmicrohttpd with its arguments. */
__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t len = strlen(msg);
    while (len && msg[len - 1] == '\n')
        msg[--len] = '\0';
    log_info("http: %s", msg);
}

int server_tls_check(const struct server_config *cfg, char *err, size_t errlen)
{
    gnutls_priority_t prio;
    const char *where = NULL;
    int r = gnutls_priority_init(&prio, cfg->tls_priorities, &where);
    if (r < 0) {
        snprintf(err, errlen, "%s: [server] tls_priorities: %s at '%.40s'", cfg->file,
                 gnutls_strerror(r), where ? where : "");
        return -EINVAL;
    }
    gnutls_priority_deinit(prio);
    if (cfg->insecure_http)
        return 0;
    gnutls_certificate_credentials_t cred;
    if (gnutls_certificate_allocate_credentials(&cred) < 0)
        return -ENOMEM;
    r = gnutls_certificate_set_x509_key_file2(cred, cfg->certificate, cfg->key, GNUTLS_X509_FMT_PEM,
                                              NULL, 0);
    if (r == GNUTLS_E_CERTIFICATE_KEY_MISMATCH)
        snprintf(err, errlen, "%s: [server] key: %s is not the key of the certificate %s",
                 cfg->file, cfg->key, cfg->certificate);
    else if (r < 0)
        snprintf(err, errlen, "%s: [server] certificate %s and key %s: %s", cfg->file,
                 cfg->certificate, cfg->key, gnutls_strerror(r));
    if (r >= 0 && cfg->ca_certificate) {
        r = gnutls_certificate_set_x509_trust_file(cred, cfg->ca_certificate, GNUTLS_X509_FMT_PEM);
        if (r <= 0)
            snprintf(err, errlen, "%s: [server] ca_certificate: %s: %s", cfg->file,
                     cfg->ca_certificate, r < 0 ? gnutls_strerror(r) : "no certificate in it");
        r = r <= 0 ? -1 : 0;
    }
    gnutls_certificate_free_credentials(cred);
    return r < 0 ? -EINVAL : 0;
}

unsigned server_connection_hard_limit(const struct server_config *cfg)
{
    return cfg->max_connections + CONNECTION_MARGIN(cfg->max_connections);
}

/* Event-loop workers: worker_threads, or WORKERS_PER_CPU per CPU and at least WORKERS_MIN.  More
 * than one per CPU: a worker also reads the disk for the responses it sends, and a read that
 * waits for the disk stalls the other connections of its worker meanwhile. */
#define WORKERS_MIN     4
#define WORKERS_PER_CPU 2
static unsigned worker_count(const struct server_config *cfg)
{
    if (cfg->worker_threads)
        return cfg->worker_threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN) * WORKERS_PER_CPU;
    return n > WORKERS_MIN ? (unsigned)n : WORKERS_MIN;
}

int server_start(struct server *s, char *err, size_t errlen)
{
    const struct server_config *cfg = s->cfg;
    /* Here rather than in server_new: 'vmexportd --check' must not remove the half-made
     * snapshots or partial uploads of a daemon that is running. */
    int r = snapshot_recover(s);
    if (r < 0)
        log_warn("recovering half-done snapshots: %s (will retry at the next start)",
                 strerror(-r));
    r = uploads_open(s, &s->uploads);
    if (r < 0) {
        snprintf(err, errlen, "starting the upload registry: %s", strerror(-r));
        return r;
    }
    r = job_pool_new(cfg->job_threads, &s->jobs);
    if (r == 0)
        r = job_pool_new(cfg->job_threads, &s->jobs_long);
    if (r < 0) {
        snprintf(err, errlen, "starting 2 x %u job threads: %s", cfg->job_threads, strerror(-r));
        return r;
    }
    for (int i = 0; i < N_ROUTES; i++)
        route_metric_names[i] = routes[i].name;
    route_metric_names[ROUTE_NONE] = "unmatched";

    struct sockaddr_storage ss = {0};
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    unsigned flags =
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (inet_pton(AF_INET, cfg->listen_host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(cfg->listen_port);
    } else if (inet_pton(AF_INET6, cfg->listen_host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(cfg->listen_port);
        flags |= MHD_USE_IPv6;
    } else {
        snprintf(err, errlen, "%s: [server] listen: '%s' is not an IP address", cfg->file,
                 cfg->listen_host);
        return -EINVAL;
    }

    if (!cfg->insecure_http) {
        flags |= MHD_USE_TLS;
        if ((r = read_pem(cfg->certificate, &s->cert_pem, err, errlen, "certificate")) < 0 ||
            (r = read_pem(cfg->key, &s->key_pem, err, errlen, "key")) < 0)
            return r;
        if (cfg->ca_certificate &&
            (r = read_pem(cfg->ca_certificate, &s->ca_pem, err, errlen, "ca_certificate")) < 0)
            return r;
    }

    /* Before the daemon: connections are registered from the first accept on. */
    r = deadline_watch_new(&s->deadlines);
    if (r < 0) {
        snprintf(err, errlen, "starting the header deadline thread: %s", strerror(-r));
        return r;
    }

    struct MHD_OptionItem tls_opts[] = {
        {s->cert_pem ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, s->cert_pem},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, s->key_pem},
        {MHD_OPTION_HTTPS_PRIORITIES, 0, cfg->tls_priorities},
        {s->ca_pem ? MHD_OPTION_HTTPS_MEM_TRUST : MHD_OPTION_END, 0, s->ca_pem},
        {MHD_OPTION_END, 0, NULL},
    };
    s->mhd = MHD_start_daemon(
        flags, cfg->listen_port, NULL, NULL, access_handler, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
        NULL, MHD_OPTION_SOCK_ADDR, &ss, MHD_OPTION_THREAD_POOL_SIZE, worker_count(cfg),
        MHD_OPTION_CONNECTION_LIMIT, server_connection_hard_limit(cfg),
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, cfg->max_connections_per_address,
        MHD_OPTION_CONNECTION_TIMEOUT, cfg->header_timeout, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)CONNECTION_MEMORY_LIMIT, MHD_OPTION_NOTIFY_COMPLETED, request_completed, s,
        MHD_OPTION_NOTIFY_CONNECTION, notify_connection, s, MHD_OPTION_UNESCAPE_CALLBACK, unescape,
        NULL, MHD_OPTION_ARRAY, tls_opts, MHD_OPTION_END);
    if (!s->mhd) {
        snprintf(err, errlen,
                 "cannot listen on %s:%u%s (address in use, not local, or a bad certificate/key "
                 "pair; run with -v for details)",
                 cfg->listen_host, cfg->listen_port, cfg->insecure_http ? "" : " with TLS");
        deadline_watch_free(s->deadlines);
        s->deadlines = NULL;
        return -EADDRINUSE;
    }
    return 0;
}

void server_stop(struct server *s, unsigned grace)
{
    if (!s->mhd)
        return;
    MHD_socket sock = MHD_quiesce_daemon(s->mhd);
    if (sock != MHD_INVALID_SOCKET)
        close(sock);
    struct timespec step = {0, 50 * 1000 * 1000};
    for (unsigned waited = 0; atomic_load(&s->active_requests) > 0 && waited < grace * 20;
         waited++)
        nanosleep(&step, NULL);
    if (atomic_load(&s->active_requests) > 0)
        log_warn("stopping with %u requests still running after %u s",
                 atomic_load(&s->active_requests), grace);
    /* libmicrohttpd must not stop with suspended connections: every job resumes its own, and
     * jobs that run already cannot be interrupted (a snapshot in the middle of its copy). */
    job_pool_drain(s->jobs);
    job_pool_drain(s->jobs_long);
    MHD_stop_daemon(s->mhd); /* closes every connection: none is watched any more */
    s->mhd = NULL;
    deadline_watch_free(s->deadlines);
    s->deadlines = NULL;
}

int route_healthz(struct request *rq)
{
    return reply_json(rq, 200, json_pack("{s:s}", "status", "ok"));
}

int route_metrics(struct request *rq)
{
    FILE *f = server_tmpfile();
    if (!f)
        return reply_errno(rq, -errno, "metrics");
    int64_t ready = 0, creating = 0;
    catalog_count(rq->srv->catalog, "ready", &ready);
    catalog_count(rq->srv->catalog, "creating", &creating);
    metrics_write(&rq->srv->metrics, f, route_metric_names, ready, creating);
    if (fflush(f) != 0) {
        fclose(f);
        return reply_error(rq, 500, "internal error", "metrics: cannot write");
    }
    struct stat st;
    int fd = fcntl(fileno(f), F_DUPFD_CLOEXEC, 0);
    fclose(f);
    if (fd < 0 || fstat(fd, &st) < 0)
        return reply_error(rq, 500, "internal error", "metrics");
    struct MHD_Response *resp = MHD_create_response_from_fd_at_offset64((uint64_t)st.st_size, fd, 0);
    MHD_add_response_header(resp, "Content-Type", "text/plain; version=0.0.4");
    return reply_sized(rq, 200, resp, (uint64_t)st.st_size);
}
