/* Reading NBD exports with libnbd; see nbdio.h.
 *
 * A struct nbdio holds up to nconn libnbd handles to one export.  A caller takes a free handle
 * for one request (pread or one block status call) and gives it back; when every open handle is
 * busy and fewer than nconn are open, a new one is connected, else the caller waits.  A server
 * that takes fewer clients (its handshake does not come in NBDIO_EXTRA_CONNECT_MS) caps the pool
 * at the connections it took.  A handle whose connection died is closed when it comes back, so
 * the next request connects afresh.
 *
 * Block status walks ask at most NBDIO_STATUS_REQUEST_MAX bytes per request, copy the one reply
 * for the wanted context, give the handle back, and only then hand the runs (merged) to the
 * caller, so a callback may itself read from the same struct nbdio.
 */
#include "core/nbdio.h"

#include <errno.h>
#include <libnbd.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cleanup.h"
#include "core/hex.h"
#include "core/clock.h"
#include "core/lock.h"

/* Bytes asked per block status request: the NBD protocol allows 32-bit lengths; 1 GiB keeps a
 * reply for a fragmented dirty bitmap small (QEMU answers at most one extent per 64 KiB
 * bitmap granule: 16384 extents, 128 KiB). */
#define NBDIO_STATUS_REQUEST_MAX (1ull << 30)
/* Bytes per NBD read request when the server advertises no maximum block size (QEMU advertises
 * 32 MiB, the NBD protocol's recommended limit). */
#define NBDIO_READ_REQUEST_MAX (32u << 20)
#define NBDIO_CONNECTIONS_MAX  64u
/* Milliseconds a connection may take up to the end of its handshake: the first one of a pool
 * (the server is there and answers at once on the same host), and each one more (when it takes
 * longer the pool goes on with the connections it has). */
#define NBDIO_CONNECT_MS       30000
#define NBDIO_EXTRA_CONNECT_MS 3000

struct nbdio_conn {
    struct nbd_handle *h; /* NULL: slot free */
    bool busy;
};

struct nbdio {
    char *socket;
    char *export;
    char **contexts; /* NULL-terminated */
    uint64_t size;
    uint64_t read_max;
    unsigned nconn;
    unsigned cap;         /* connections the pool may open (nconn, fewer when the server
                           * would not take more) */
    pthread_mutex_t lock; /* guards conns[] and cap */
    pthread_cond_t freed; /* a handle became free or a slot opened */
    struct nbdio_conn conns[];
};

static int nbd_error_code(void)
{
    int e = nbd_get_errno();
    return e > 0 ? -e : -EIO;
}

/* Connects *out with every context of n within timeout_ms: 0, or a negative errno with err set
 * (-EOPNOTSUPP: a context the server lacks; -ETIMEDOUT: no handshake in time, as with a server
 * that takes fewer clients at once, e.g. qemu-nbd without -e, which holds the next one waiting). */
static int nbdio_connect(const struct nbdio *n, int timeout_ms, struct nbd_handle **out, char *err,
                         size_t errlen)
{
    struct nbd_handle *h = nbd_create();
    if (!h) {
        snprintf(err, errlen, "libnbd: %s", nbd_get_error());
        return -ENOMEM;
    }
    int r = nbd_set_export_name(h, n->export);
    for (size_t i = 0; r == 0 && n->contexts[i]; i++)
        r = nbd_add_meta_context(h, n->contexts[i]);
    if (r == 0)
        r = nbd_aio_connect_unix(h, n->socket);
    const int64_t deadline = clock_monotonic_ns() + (int64_t)timeout_ms * 1000000;
    while (r == 0 && nbd_aio_is_ready(h) != 1) {
        int64_t left_ms = (deadline - clock_monotonic_ns()) / 1000000;
        if (nbd_aio_is_dead(h) == 1 || nbd_aio_is_closed(h) == 1) {
            r = -1;
        } else if (left_ms <= 0) {
            snprintf(err, errlen, "NBD export \"%s\" on %s: no handshake within %d s", n->export,
                     n->socket, timeout_ms / 1000);
            nbd_close(h);
            return -ETIMEDOUT;
        } else if (nbd_poll(h, (int)left_ms) < 0) {
            r = -1;
        }
    }
    if (r < 0) {
        r = nbd_error_code();
        snprintf(err, errlen, "NBD export \"%s\" on %s: %s", n->export, n->socket, nbd_get_error());
        nbd_close(h);
        return r;
    }
    for (size_t i = 0; n->contexts[i]; i++) {
        if (nbd_can_meta_context(h, n->contexts[i]) != 1) {
            snprintf(err, errlen, "NBD export \"%s\" on %s has no meta context \"%s\"", n->export,
                     n->socket, n->contexts[i]);
            nbd_close(h);
            return -EOPNOTSUPP;
        }
    }
    *out = h;
    return 0;
}

/* A free connected handle (connecting one more while fewer than n->cap are open or being
 * opened), or NULL with *rc set.  When an extra connection fails while others are open, the
 * pool stays at the ones it has: a server may take fewer clients than asked for. */
static struct nbdio_conn *conn_take(struct nbdio *n, int *rc)
{
    pthread_mutex_lock(&n->lock);
    for (;;) {
        struct nbdio_conn *empty = NULL;
        unsigned used = 0;
        for (unsigned i = 0; i < n->nconn; i++) {
            if (n->conns[i].h && !n->conns[i].busy) {
                n->conns[i].busy = true;
                pthread_mutex_unlock(&n->lock);
                return &n->conns[i];
            }
            if (n->conns[i].h || n->conns[i].busy)
                used++;
            else if (!empty)
                empty = &n->conns[i];
        }
        if (empty && used < n->cap) {
            empty->busy = true; /* reserved while connecting, outside the lock */
            pthread_mutex_unlock(&n->lock);
            char err[256];
            struct nbd_handle *h = NULL;
            int r = nbdio_connect(n, used ? NBDIO_EXTRA_CONNECT_MS : NBDIO_CONNECT_MS, &h, err,
                                  sizeof(err));
            pthread_mutex_lock(&n->lock);
            if (r == 0) {
                empty->h = h;
                pthread_mutex_unlock(&n->lock);
                return empty;
            }
            empty->busy = false;
            pthread_cond_broadcast(&n->freed);
            unsigned open = 0;
            for (unsigned i = 0; i < n->nconn; i++)
                open += n->conns[i].h != NULL;
            if (open == 0) {
                *rc = r;
                pthread_mutex_unlock(&n->lock);
                return NULL;
            }
            n->cap = open; /* wait for one of those */
        }
        pthread_cond_wait(&n->freed, &n->lock);
    }
}

static void conn_give(struct nbdio *n, struct nbdio_conn *c)
{
    struct nbd_handle *dead = NULL;
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&n->lock);
        if (nbd_aio_is_ready(c->h) != 1)
            dead = TAKE_PTR(c->h);
        c->busy = false;
        pthread_cond_signal(&n->freed);
    }
    if (dead)
        nbd_close(dead);
}

int nbdio_open(const char *socket, const char *export, const char *const *contexts, unsigned nconn,
               struct nbdio **out, char *err, size_t errlen)
{
    static const char *const default_contexts[] = {NBDIO_CONTEXT_ALLOCATION, NULL};
    if (!contexts)
        contexts = default_contexts;
    if (nconn == 0)
        nconn = NBDIO_CONNECTIONS_DEFAULT;
    if (nconn > NBDIO_CONNECTIONS_MAX)
        nconn = NBDIO_CONNECTIONS_MAX;
    size_t ncontexts = 0;
    while (contexts[ncontexts])
        ncontexts++;

    struct nbdio *n = calloc(1, sizeof(*n) + nconn * sizeof(n->conns[0]));
    if (!n) {
        snprintf(err, errlen, "no memory");
        return -ENOMEM;
    }
    n->nconn = n->cap = nconn;
    pthread_mutex_init(&n->lock, NULL);
    pthread_cond_init(&n->freed, NULL);
    n->socket = strdup(socket);
    n->export = strdup(export);
    n->contexts = calloc(ncontexts + 1, sizeof(char *));
    bool oom = !n->socket || !n->export || !n->contexts;
    for (size_t i = 0; !oom && i < ncontexts; i++)
        oom = !(n->contexts[i] = strdup(contexts[i]));
    if (oom) {
        nbdio_close(n);
        snprintf(err, errlen, "no memory");
        return -ENOMEM;
    }

    /* The first connection says now whether the export and its contexts exist. */
    struct nbd_handle *h = NULL;
    int r = nbdio_connect(n, NBDIO_CONNECT_MS, &h, err, errlen);
    if (r < 0) {
        nbdio_close(n);
        return r;
    }
    int64_t size = nbd_get_size(h);
    int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    if (size < 0) {
        snprintf(err, errlen, "NBD export \"%s\" on %s: %s", export, socket, nbd_get_error());
        nbd_close(h);
        nbdio_close(n);
        return -EIO;
    }
    n->size = (uint64_t)size;
    n->read_max =
        max > 0 && (uint64_t)max < NBDIO_READ_REQUEST_MAX ? (uint64_t)max : NBDIO_READ_REQUEST_MAX;
    n->conns[0].h = h;
    *out = n;
    return 0;
}

void nbdio_close(struct nbdio *n)
{
    if (!n)
        return;
    for (unsigned i = 0; i < n->nconn; i++) {
        if (n->conns[i].h) {
            nbd_shutdown(n->conns[i].h, 0);
            nbd_close(n->conns[i].h);
        }
    }
    if (n->contexts) {
        for (size_t i = 0; n->contexts[i]; i++)
            free(n->contexts[i]);
        free(n->contexts);
    }
    free(n->socket);
    free(n->export);
    pthread_cond_destroy(&n->freed);
    pthread_mutex_destroy(&n->lock);
    free(n);
}

uint64_t nbdio_size(const struct nbdio *n)
{
    return n->size;
}

int nbdio_pread(struct nbdio *n, void *buf, size_t len, uint64_t off)
{
    if (off > n->size || len > n->size - off)
        return -EINVAL;
    int rc = 0;
    struct nbdio_conn *c = conn_take(n, &rc);
    if (!c)
        return rc;
    char *p = buf;
    while (len > 0) {
        size_t chunk = len < n->read_max ? len : (size_t)n->read_max;
        if (nbd_pread(c->h, p, chunk, off, 0) < 0) {
            rc = nbd_error_code();
            break;
        }
        p += chunk;
        off += chunk;
        len -= chunk;
    }
    conn_give(n, c);
    return rc;
}

/* The extents of one reply for one context, clamped to the request. */
struct status_reply {
    const char *context;
    uint64_t off;   /* where the next extent starts */
    uint64_t end;   /* end of the request */
    uint64_t *runs; /* pairs: length, flags */
    size_t nruns;
    size_t cap;
    int err;
};

static int status_collect(void *opaque, const char *metacontext, uint64_t offset, uint32_t *entries,
                          size_t nr_entries, int *error)
{
    struct status_reply *s = opaque;
    if (strcmp(metacontext, s->context) != 0 || s->err)
        return 0;
    if (offset != s->off) {
        s->err = -EPROTO; /* a reply must continue where the previous chunk ended */
        *error = EPROTO;
        return -1;
    }
    for (size_t i = 0; i + 1 < nr_entries && s->off < s->end; i += 2) {
        uint64_t len = entries[i];
        if (len == 0)
            break;
        if (len > s->end - s->off)
            len = s->end - s->off;
        if (s->nruns == s->cap) {
            size_t cap = s->cap ? s->cap * 2 : 64;
            uint64_t *runs = realloc(s->runs, cap * 2 * sizeof(uint64_t));
            if (!runs) {
                s->err = -ENOMEM;
                *error = ENOMEM;
                return -1;
            }
            s->runs = runs;
            s->cap = cap;
        }
        s->runs[2 * s->nruns] = len;
        s->runs[2 * s->nruns + 1] = entries[i + 1];
        s->nruns++;
        s->off += len;
    }
    return 0;
}

/* A run being merged with the ones after it. */
struct status_pending {
    uint64_t off, len;
    uint32_t flags;
};

static int status_emit(struct status_pending *p, uint64_t len, uint32_t flags, nbdio_status_fn fn,
                       void *opaque)
{
    if (p->len > 0 && p->flags == flags) {
        p->len += len;
        return 0;
    }
    if (p->len > 0) {
        int r = fn(opaque, p->off, p->len, p->flags);
        if (r < 0)
            return r;
    }
    p->off += p->len;
    p->len = len;
    p->flags = flags;
    return 0;
}

int nbdio_block_status(struct nbdio *n, const char *context, uint64_t off, uint64_t len,
                       nbdio_status_fn fn, void *opaque)
{
    bool asked = false;
    for (size_t i = 0; n->contexts[i] && !asked; i++)
        asked = strcmp(n->contexts[i], context) == 0;
    if (!asked || off > n->size || len > n->size - off)
        return -EINVAL;

    uint64_t end = off + len;
    struct status_pending pending = {.off = off};
    CLEANUP_FREE uint64_t *runs = NULL;
    size_t cap = 0;
    while (off < end) {
        uint64_t count =
            end - off < NBDIO_STATUS_REQUEST_MAX ? end - off : NBDIO_STATUS_REQUEST_MAX;
        struct status_reply s = {
            .context = context, .off = off, .end = off + count, .runs = runs, .cap = cap};
        int rc = 0;
        struct nbdio_conn *c = conn_take(n, &rc);
        if (!c)
            return rc;
        int r =
            nbd_block_status(c->h, count, off,
                             (nbd_extent_callback){.callback = status_collect, .user_data = &s}, 0);
        if (r < 0 && !s.err)
            s.err = nbd_error_code();
        conn_give(n, c);
        runs = s.runs;
        cap = s.cap;
        if (s.err)
            return s.err;
        if (s.off == off)
            return -EPROTO; /* no extent for the context: the walk would not advance */
        for (size_t i = 0; i < s.nruns; i++) {
            r = status_emit(&pending, runs[2 * i], (uint32_t)runs[2 * i + 1], fn, opaque);
            if (r < 0)
                return r;
        }
        off = s.off;
    }
    if (pending.len > 0)
        return fn(opaque, pending.off, pending.len, pending.flags);
    return 0;
}

/* RFC 3986 unreserved characters, and '/' which both the export (a path) and the socket keep. */
static bool uri_plain(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~' || c == '/';
}

static size_t uri_encode(char *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (uri_plain(*p)) {
            if (out)
                out[n] = (char)*p;
            n++;
        } else {
            if (out) {
                out[n] = '%';
                out[n + 1] = hex[*p >> 4];
                out[n + 2] = hex[*p & 15];
            }
            n += 3;
        }
    }
    return n;
}

#define NBDIO_URI_PREFIX       "nbd+unix:///"
#define NBDIO_URI_SOCKET_PARAM "?socket="

char *nbdio_uri(const char *socket, const char *export)
{
    size_t len = strlen(NBDIO_URI_PREFIX) + uri_encode(NULL, export) +
                 strlen(NBDIO_URI_SOCKET_PARAM) + uri_encode(NULL, socket) + 1;
    char *uri = malloc(len);
    if (!uri)
        return NULL;
    size_t n = strlen(NBDIO_URI_PREFIX);
    memcpy(uri, NBDIO_URI_PREFIX, n);
    n += uri_encode(uri + n, export);
    memcpy(uri + n, NBDIO_URI_SOCKET_PARAM, strlen(NBDIO_URI_SOCKET_PARAM));
    n += strlen(NBDIO_URI_SOCKET_PARAM);
    n += uri_encode(uri + n, socket);
    uri[n] = '\0';
    return uri;
}

/* The percent-decoded copy of [s, s + len), or NULL (bad escape, NUL byte, no memory). */
static char *uri_decode(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '%') {
            int hi = i + 2 < len ? hex_digit(s[i + 1]) : -1;
            int lo = hi < 0 ? -1 : hex_digit(s[i + 2]);
            if (lo < 0 || hi * 16 + lo == 0) {
                free(out);
                return NULL;
            }
            out[n++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (c == '?' || c == '#' || c == '&') {
            free(out);
            return NULL;
        } else {
            out[n++] = c;
        }
    }
    out[n] = '\0';
    return out;
}

int nbdio_uri_parse(const char *uri, char **socket, char **export)
{
    size_t plen = strlen(NBDIO_URI_PREFIX);
    if (strncmp(uri, NBDIO_URI_PREFIX, plen) != 0)
        return -EINVAL;
    const char *path = uri + plen;
    const char *query = strchr(path, '?');
    if (!query || strncmp(query, NBDIO_URI_SOCKET_PARAM, strlen(NBDIO_URI_SOCKET_PARAM)) != 0)
        return -EINVAL;
    const char *sock = query + strlen(NBDIO_URI_SOCKET_PARAM);
    CLEANUP_FREE char *e = uri_decode(path, (size_t)(query - path));
    CLEANUP_FREE char *s = uri_decode(sock, strlen(sock));
    if (!e || !s || s[0] != '/')
        return -EINVAL;
    *socket = TAKE_PTR(s);
    *export = TAKE_PTR(e);
    return 0;
}
