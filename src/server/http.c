/* vmexportd's HTTP layer: libmicrohttpd set-up (TLS 1.2+, optional client certificates),
 * request bodies, routing of /api/v1 and /images paths, authentication, replies and metrics.
 *
 * Bodies are collected in memory (64 KiB at most) and the route runs once they are complete,
 * except for streaming routes (upload data): those are routed and authenticated as soon as the
 * headers arrive, their begin hook checks the request, and the body goes to the route piece by
 * piece without any size limit.
 *
 * Threads: one per connection (MHD_USE_THREAD_PER_CONNECTION), so a long download never waits
 * for another; handlers share only the catalog (its own lock), the upload registry (its own
 * lock), the token and disk caches (their own locks) and atomics.  An epoll thread pool was
 * measured against it (docs/benchmarks.md, section 4): about a quarter less CPU per 4 KiB
 * request, no clear gain in requests per second, and every slow handler (copy-mode snapshots,
 * diffs, upload bodies, logins) would stall all the connections of its pool thread.
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
#include "core/log.h"
#include "core/text.h"
#include "server/server.h"
#include "server/upload.h"

/* Largest request body accepted (login JSON): anything bigger is 413. */
#define REQUEST_BODY_MAX (64 * 1024)
/* Per-connection memory for headers and buffers inside libmicrohttpd. */
#define CONNECTION_MEMORY_LIMIT (256 * 1024)
/* TLS 1.2 minimum, GnuTLS's secure defaults otherwise. */
#define TLS_PRIORITIES "SECURE:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"
/* Largest PEM file read (certificate chains included). */
#define PEM_MAX (1024 * 1024)

enum route_flags {
    ROUTE_PUBLIC = 1u << 0,  /* no token needed */
    ROUTE_IMAGEIO = 1u << 1, /* under /images/ (ovirt-imageio style), not under /api/v1 */
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

/* Handlers by method for one path shape; the first matching path decides 405 vs dispatch. */
static const struct route routes[] = {
    {"POST", "auth/login", route_login, ROUTE_PUBLIC, "login"},
    {"POST", "auth/logout", route_logout, 0, "logout", READER},
    {"GET", "vms", route_vms_list, 0, "vms", READER},
    {"GET", "vms/*", route_vm_get, 0, "vm", READER},
    {"GET", "vms/*/snapshots", route_snapshots_list, 0, "snapshots", READER},
    {"POST", "vms/*/snapshots", route_snapshot_create, 0, "snapshot_create", OPERATOR},
    {"DELETE", "vms/*/snapshots", route_snapshots_purge, 0, "snapshots_purge", OPERATOR},
    {"GET", "vms/*/snapshots/*", route_snapshot_get, 0, "snapshot", READER},
    {"DELETE", "vms/*/snapshots/*", route_snapshot_delete, 0, "snapshot_delete", OPERATOR},
    {"GET HEAD", "vms/*/snapshots/*/disks/*", route_disk_data, 0, "disk", READER},
    {"GET", "vms/*/snapshots/*/disks/*/changes", route_disk_changes, 0, "disk_changes", READER},
    {"GET", "snapshots", route_orphans_list, 0, "all_snapshots", READER},
    {"GET HEAD", "healthz", route_healthz, ROUTE_PUBLIC, "healthz"},
    {"GET", "metrics", route_metrics, 0, "metrics"},
    {"POST", "vms/*/uploads", route_upload_create, 0, "upload_create", OPERATOR},
    {"POST", "vms/*/downloads", route_download_create, 0, "download_create", READER},
    /* Shared by uploads and downloads: a reader may use its downloads only (routes_upload.c
     * answers 403 for an upload). */
    {"GET HEAD", "transfers/*", route_transfer_get, 0, "transfer_get", READER},
    {"PUT", "transfers/*", route_transfer_put, 0, "transfer_put", route_transfer_put_begin,
     OPERATOR},
    {"PATCH", "transfers/*", route_transfer_patch, 0, "transfer_patch", OPERATOR},
    {"OPTIONS", "transfers/*", route_transfer_options, 0, "transfer_options", READER},
    {"DELETE", "transfers/*", route_transfer_cancel, 0, "transfer_cancel", READER},
    {"GET", "transfers/*/extents", route_transfer_extents, 0, "transfer_extents", READER},
    {"POST", "transfers/*/finalize", route_transfer_finalize, 0, "transfer_finalize", OPERATOR},
    /* The same under /images/{id}: the unguessable transfer ID is the credential. */
    {"GET HEAD", "images/*", route_transfer_get, ROUTE_PUBLIC | ROUTE_IMAGEIO, "image_get"},
    {"PUT", "images/*", route_transfer_put, ROUTE_PUBLIC | ROUTE_IMAGEIO, "image_put",
     route_transfer_put_begin},
    {"PATCH", "images/*", route_transfer_patch, ROUTE_PUBLIC | ROUTE_IMAGEIO, "image_patch"},
    {"OPTIONS", "images/*", route_transfer_options, ROUTE_PUBLIC | ROUTE_IMAGEIO, "image_options"},
    {"DELETE", "images/*", route_transfer_cancel, ROUTE_PUBLIC | ROUTE_IMAGEIO, "image_cancel"},
    {"GET", "images/*/extents", route_transfer_extents, ROUTE_PUBLIC | ROUTE_IMAGEIO,
     "image_extents"},
    {"POST", "images/*/finalize", route_transfer_finalize, ROUTE_PUBLIC | ROUTE_IMAGEIO,
     "image_finalize"},
};
#define N_ROUTES ((int)ARRAY_SIZE(routes))
_Static_assert(ARRAY_SIZE(routes) < METRICS_ROUTES, "metrics has room for every route");
#define ROUTE_NONE N_ROUTES /* unmatched requests, for metrics */

static const char *route_metric_names[METRICS_ROUTES];

/* ---- replies ---- */

int reply(struct request *rq, unsigned status, struct MHD_Response *resp)
{
    if (!resp)
        return MHD_NO;
    if (rq->deferred) {
        /* Answered already while the body was arriving: the first answer stands. */
        MHD_destroy_response(resp);
        return MHD_YES;
    }
    rq->status = status;
    MHD_add_response_header(resp, "Server", "vmexportd/" VMEXPORT_VERSION);
    if (rq->defer_replies) {
        rq->deferred = resp;
        return MHD_YES;
    }
    int ret = MHD_queue_response(rq->conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
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
    return reply(rq, status, resp);
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
    return reply(rq, status, resp);
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
        return routes[i].handler(rq);
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
    rq->defer_replies = false;
    if (!rq->deferred)
        return routes[rq->route].handler(rq);
    struct MHD_Response *resp = rq->deferred;
    rq->deferred = NULL;
    int ret = MHD_queue_response(rq->conn, rq->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

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
        *con_cls = rq;
        atomic_fetch_add(&srv->active_requests, 1);
        return request_begin(rq, url); /* headers seen; body (if any) follows */
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
    (void)conn;
    (void)toe;
    struct server *srv = cls;
    struct request *rq = *con_cls;
    if (!rq)
        return;
    metrics_request(&srv->metrics, rq->route, rq->status ? rq->status : 500);
    if (rq->release)
        rq->release(rq);
    if (rq->deferred)
        MHD_destroy_response(rq->deferred); /* the connection ended before the answer */
    for (int i = 0; i < rq->nsegs; i++)
        free(rq->segs[i]);
    free(rq->user);
    free(rq->body);
    free(rq);
    *con_cls = NULL;
    atomic_fetch_sub(&srv->active_requests, 1);
}

/* Percent-decoding of paths and arguments.  A decoded NUL would silently cut an ID short
 * ("web01%00x" read as "web01"), so it becomes a control byte that ids_are_sane() rejects. */
#define DECODED_NUL_MARKER '\x01'

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static size_t unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    char *w = s;
    for (const char *r = s; *r; r++) {
        int hi, lo;
        if (r[0] == '%' && (hi = hexval(r[1])) >= 0 && (lo = hexval(r[2])) >= 0) {
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

int server_start(struct server *s, char *err, size_t errlen)
{
    const struct daemon_config *cfg = s->cfg;
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
    for (int i = 0; i < N_ROUTES; i++)
        route_metric_names[i] = routes[i].name;
    route_metric_names[ROUTE_NONE] = "unmatched";

    struct sockaddr_storage ss = {0};
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    /* poll(), not select(): select cannot watch a descriptor >= FD_SETSIZE (1024), so a busy
     * daemon (max_connections of several hundred, each download holding a socket and two file
     * descriptors) would silently drop every further connection. */
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG | MHD_USE_ITC;
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

    struct MHD_OptionItem tls_opts[] = {
        {s->cert_pem ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, s->cert_pem},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, s->key_pem},
        {MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)TLS_PRIORITIES},
        {s->ca_pem ? MHD_OPTION_HTTPS_MEM_TRUST : MHD_OPTION_END, 0, s->ca_pem},
        {MHD_OPTION_END, 0, NULL},
    };
    s->mhd = MHD_start_daemon(
        flags, cfg->listen_port, NULL, NULL, access_handler, s, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_log, NULL, MHD_OPTION_SOCK_ADDR, &ss,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->connection_timeout,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY_LIMIT,
        MHD_OPTION_NOTIFY_COMPLETED, request_completed, s, MHD_OPTION_UNESCAPE_CALLBACK, unescape,
        NULL, MHD_OPTION_ARRAY, tls_opts, MHD_OPTION_END);
    if (!s->mhd) {
        snprintf(err, errlen,
                 "cannot listen on %s:%u%s (address in use, not local, or a bad certificate/key "
                 "pair; run with -v for details)",
                 cfg->listen_host, cfg->listen_port, cfg->insecure_http ? "" : " with TLS");
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
    MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
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
    return reply(rq, 200, resp);
}
