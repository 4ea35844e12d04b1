/* HTTP client of vmexportd (libcurl): login with token reuse, JSON requests, ranged reads with
 * retry and backoff.  One struct client per thread (a curl easy handle each); client_dup()
 * makes another connection sharing the settings and the token. */
#ifndef VMEXPORT_CLIENT_CLIENT_H
#define VMEXPORT_CLIENT_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct client_options {
    const char *server;   /* https://host:port (no path) */
    const char *user;
    const char *password;
    const char *cacert;   /* NULL: system trust store */
    const char *cert;     /* client certificate (mutual TLS) */
    const char *key;
    bool insecure;        /* do not verify the server certificate */
    unsigned retries;     /* for idempotent requests and range reads (0: 5) */
    const char *token_cache_dir; /* NULL: $XDG_CACHE_HOME or ~/.cache, + /vmexport */
};

struct client;

int client_new(const struct client_options *opt, struct client **out);
/* Another connection with the same options and token (for parallel transfers). */
int client_dup(struct client *c, struct client **out);
void client_free(struct client *c);

/* The last error, naming the server and the cause: "https://h:5544: login failed: invalid
 * credentials", "...: connection refused", "...: certificate verify failed (use --cacert)". */
const char *client_error(const struct client *c);

/* Log in unless a cached token for (server, user) is still valid for a minute more.  The token
 * is cached in a 0600 file.  Requests below log in on demand and once more on a 401. */
int client_login(struct client *c);

/* A JSON request: path under the server ("/api/v1/vms"), body NULL or JSON text (sent with
 * any method, e.g. PATCH).  out may be NULL when only the status matters.  On success
 * (2xx) *out holds the parsed body (NULL for 204); otherwise a negative errno: -ENOENT for 404,
 * -EACCES for 401, -EEXIST/-EBUSY for 409, -EINVAL for 400, -EIO for others; *status is the
 * HTTP status when a response came (may be NULL) and client_error() has the server's details. */
int client_json(struct client *c, const char *method, const char *path, const char *body,
                json_t **out, long *status);

/* Read [off, off + len) of a resource into buf with a Range request, retrying transient
 * failures (connection errors, 5xx) with exponential backoff.  *got = bytes received (len
 * unless the resource is shorter).  Counts bytes into the client's byte counter. */
int client_read_range(struct client *c, const char *path, uint64_t off, uint64_t len, void *buf,
                      size_t *got);

/* One range of client_read_ranges. */
struct client_range {
    uint64_t off, len;
};
/* Receives n bytes of a range read by client_read_ranges, at disk offset off: 0, or a negative
 * errno that stops the request. */
typedef int (*client_put_fn)(void *arg, uint64_t off, const void *data, size_t n);
/* Ranges in one client_read_ranges request: what vmexportd serves (docs/api.md). */
#define CLIENT_MAX_RANGES 64

/* Read n ranges of a resource (sorted, apart: none touches the next) in one request
 * (multipart/byteranges), handing their bytes to put in order as they arrive, retrying
 * transient failures like client_read_range (a retry hands bytes again from the start).  Every
 * byte asked for must come, nothing else.  Counts bytes into the client's byte counter. */
int client_read_ranges(struct client *c, const char *path, const struct client_range *ranges,
                       size_t n, client_put_fn put, void *arg);

/* Write buf to [off, off + len) of an upload transfer with "Content-Range: bytes A-B/total",
 * retrying transient failures like client_read_range.  Counts into client_bytes_sent. */
int client_put_range(struct client *c, const char *path, uint64_t off, const void *buf,
                     size_t len, uint64_t total);
uint64_t client_bytes_sent(const struct client *c);

/* Bytes of payload received by this client so far. */
uint64_t client_bytes_received(const struct client *c);
/* The body bytes those reads took on the wire: fewer when the server left blocks of zeros out
 * (sparse answers, docs/api.md). */
uint64_t client_bytes_on_wire(const struct client *c);

/* URL-escape one path segment (an ID) into a malloc'd string. */
char *client_escape(const char *segment);

#endif
