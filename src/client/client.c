/* HTTP client of vmexportd (libcurl + jansson): login with a token cached on disk, JSON
 * requests, and ranged reads straight into the caller's buffer, with retries and exponential
 * backoff for transient failures.  See client.h.
 *
 * A struct client owns one curl easy handle (one connection, kept alive between requests).
 * Clients made by client_dup() share a struct client_shared: the options and the bearer token,
 * under a mutex, so that a token refreshed by one connection serves all of them.
 */
#include "client/client.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/hash.h"
#include "core/log.h"
#include "core/sparse.h"

/* Timeouts: connection set-up, and a transfer slower than 1 byte/s for a minute is dead. */
#define CONNECT_TIMEOUT_S   10L
#define LOW_SPEED_LIMIT_BPS 1L
#define LOW_SPEED_TIME_S    60L
/* Retries of transient failures when the options say 0, and the backoff between them. */
#define DEFAULT_RETRIES  5
#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS   5000
/* A token is used until this many seconds before it expires. */
#define TOKEN_MARGIN_S 60
/* Largest token accepted (from the server or the cache file). */
#define TOKEN_MAX 16384
/* Largest JSON answer accepted (snapshot lists with millions of chunks fit). */
#define JSON_RESPONSE_MAX ((size_t)1 << 30)
/* Bytes of an error answer kept for the message. */
#define ERROR_BODY_MAX 4096
/* Length of client_error() messages. */
#define CLIENT_ERROR_MAX 1024
/* First allocation of a JSON answer buffer. */
#define BODY_INITIAL_CAP 4096
/* multipart/byteranges answers: the longest boundary (RFC 2046: 70) and header line taken */
#define MULTIPART_BOUNDARY_MAX 70
#define MULTIPART_LINE_MAX     256

#define LOGIN_PATH   "/api/v1/auth/login"
#define CACHE_SUBDIR "vmexport"
#define USER_AGENT   "vmexport/" VMEXPORT_VERSION

#define MS_PER_S  1000L
#define NS_PER_MS 1000000L

struct client_shared {
    pthread_mutex_t lock; /* refs and the token fields */
    unsigned refs;
    char *server, *user, *password, *cacert, *cert, *key;
    bool insecure;
    unsigned retries;
    char *cache_dir, *cache_file; /* NULL when no cache directory is known */
    char *token;                  /* NULL before the first login */
    int64_t token_exp;            /* its "exp" (seconds since the epoch) */
    uint64_t token_gen;           /* bumped at every new token: a 401 logs in only once */
};

struct client {
    struct client_shared *sh;
    CURL *curl;
    char curl_err[CURL_ERROR_SIZE];
    char error[CLIENT_ERROR_MAX];
    long os_errno; /* of the last failed connect, from curl */
    uint64_t bytes;      /* payload received by client_read_range */
    uint64_t bytes_wire; /* its body bytes on the wire (less: blocks of zeros left out) */
    uint64_t bytes_sent; /* payload sent by client_put_range */
};

/* Where a response body goes: a growable buffer (JSON) or the caller's buffer (ranges). */
struct sink {
    CURL *curl;
    char *buf;
    size_t len, cap;
    size_t max;        /* growable: largest size accepted */
    bool fixed;        /* buf is the caller's, cap its length */
    uint64_t want_off; /* fixed: the offset asked for */
    /* Per attempt: */
    long status; /* known from the first body byte on */
    bool status_known, overflow, bad_range, too_large, no_memory, bad_sparse;
    bool have_range;
    uint64_t range_start, range_end;
    /* fixed: the answer came in the sparse encoding (core/sparse.h), decoded into buf */
    bool sparse;
    struct sparse_decoder dec;
    uint64_t wire; /* body bytes received */
    /* gather (client_read_ranges): the bytes go to put, not buf; the parts must be ranges */
    const struct client_range *ranges;
    size_t nranges;
    client_put_fn put;
    void *put_arg;
    bool multipart, bad_part; /* per attempt: multipart/byteranges; a part not asked for */
    char boundary[MULTIPART_BOUNDARY_MAX + 1];
    char line[MULTIPART_LINE_MAX];
    size_t line_len;
    size_t part;                /* parts begun */
    uint64_t part_at, part_left; /* the current part's next disk offset, bytes to come */
    bool in_part_headers, have_part_range, done;
    uint64_t delivered;
    char errbody[ERROR_BODY_MAX + 1]; /* start of a non-2xx body */
    size_t errlen;
};

enum request_flags {
    REQ_AUTH = 1u << 0,       /* send the bearer token (log in first when needed) */
    REQ_IDEMPOTENT = 1u << 1, /* may be repeated after an ambiguous failure */
};

/* ---- process-wide curl initialisation ---- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void curl_init_once(void)
{
    curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- small helpers ---- */

static char *strdup_or_null(const char *s, bool *failed)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *failed = true;
    return d;
}

static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static void set_error(struct client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_error(struct client *c, const char *fmt, ...)
{
    int n = snprintf(c->error, sizeof(c->error), "%s: ", c->sh->server);
    if (n < 0 || (size_t)n >= sizeof(c->error))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error + n, sizeof(c->error) - (size_t)n, fmt, ap);
    va_end(ap);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / MS_PER_S, .tv_nsec = (long)(ms % MS_PER_S) * NS_PER_MS};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* base64url (RFC 4648 section 5, padding optional) into out; returns the decoded length or -1. */
static ssize_t base64url_decode(const char *in, size_t len, uint8_t *out, size_t out_cap)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = in[i];
        int v;
        if (ch >= 'A' && ch <= 'Z')
            v = ch - 'A';
        else if (ch >= 'a' && ch <= 'z')
            v = ch - 'a' + 26;
        else if (ch >= '0' && ch <= '9')
            v = ch - '0' + 52;
        else if (ch == '-' || ch == '+')
            v = 62;
        else if (ch == '_' || ch == '/')
            v = 63;
        else if (ch == '=')
            break;
        else
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n >= out_cap)
                return -1;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    return (ssize_t)n;
}

/* The "exp" claim of a JWT (the payload is decoded, the signature is the server's business). */
static int jwt_exp(const char *token, int64_t *exp)
{
    const char *p = strchr(token, '.');
    if (!p)
        return -EINVAL;
    p++;
    const char *end = strchr(p, '.');
    if (!end)
        return -EINVAL;
    size_t len = (size_t)(end - p);
    CLEANUP_FREE uint8_t *payload = malloc(len + 1);
    if (!payload)
        return -ENOMEM;
    ssize_t n = base64url_decode(p, len, payload, len + 1);
    if (n <= 0)
        return -EINVAL;
    json_t *j = json_loadb((const char *)payload, (size_t)n, 0, NULL);
    json_t *e = j ? json_object_get(j, "exp") : NULL;
    int r = -EINVAL;
    if (json_is_integer(e)) {
        *exp = json_integer_value(e);
        r = 0;
    }
    json_decref(j);
    return r;
}

static bool token_fresh(int64_t exp)
{
    return exp - TOKEN_MARGIN_S > (int64_t)time(NULL);
}

/* ---- token cache ---- */

static int cache_paths(struct client_shared *sh, const char *dir)
{
    CLEANUP_FREE char *base = NULL;
    if (dir) {
        base = strdup(dir);
    } else {
        const char *xdg = getenv("XDG_CACHE_HOME");
        const char *home = getenv("HOME");
        int n = -1;
        if (xdg && xdg[0] == '/')
            n = asprintf(&base, "%s/%s", xdg, CACHE_SUBDIR);
        else if (home && home[0] == '/')
            n = asprintf(&base, "%s/.cache/%s", home, CACHE_SUBDIR);
        else
            return 0; /* no cache: log in every time */
        if (n < 0)
            base = NULL;
    }
    if (!base)
        return -ENOMEM;
    CLEANUP_FREE char *key = NULL;
    if (asprintf(&key, "%s\n%s", sh->server, sh->user) < 0)
        return -ENOMEM;
    uint8_t digest[HASH_SIZE];
    int r = hash_sha256(key, strlen(key), digest);
    if (r < 0)
        return r;
    char hex[2 * HASH_SIZE + 1];
    hash_to_hex(digest, hex);
    if (asprintf(&sh->cache_file, "%s/token-%s", base, hex) < 0) {
        sh->cache_file = NULL;
        return -ENOMEM;
    }
    sh->cache_dir = TAKE_PTR(base);
    return 0;
}

/* mkdir -p with mode for the directories it creates. */
static int mkdir_parents(const char *path, mode_t mode)
{
    CLEANUP_FREE char *p = strdup(path);
    if (!p)
        return -ENOMEM;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char saved = *s;
        *s = '\0';
        if (mkdir(p, mode) < 0 && errno != EEXIST)
            return -errno;
        *s = saved;
        if (saved == '\0')
            return 0;
    }
}

/* Load a still-fresh token from the cache file (ours, mode 0600); false when there is none. */
static bool cache_load(struct client_shared *sh)
{
    if (!sh->cache_file)
        return false;
    CLEANUP_CLOSE int fd = open(sh->cache_file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return false;
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & (S_IRWXG | S_IRWXO)) ||
        st.st_size <= 0 || st.st_size >= TOKEN_MAX) {
        log_debug("token cache %s: not a private file of ours, ignored", sh->cache_file);
        return false;
    }
    char buf[TOKEN_MAX];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    int64_t exp;
    if (jwt_exp(buf, &exp) < 0 || !token_fresh(exp))
        return false;
    char *t = strdup(buf);
    explicit_bzero(buf, sizeof(buf));
    if (!t)
        return false;
    free_secret(sh->token);
    sh->token = t;
    sh->token_exp = exp;
    sh->token_gen++;
    log_debug("using the cached token %s", sh->cache_file);
    return true;
}

/* Store the token: temporary file (0600) in the cache directory, then rename. */
static void cache_save(struct client_shared *sh)
{
    if (!sh->cache_file)
        return;
    int r = mkdir_parents(sh->cache_dir, S_IRWXU);
    CLEANUP_FREE char *tmp = NULL;
    if (r == 0 && asprintf(&tmp, "%s.tmp.XXXXXX", sh->cache_file) < 0) {
        tmp = NULL;
        r = -ENOMEM;
    }
    int fd = -1;
    if (r == 0 && (fd = mkostemp(tmp, O_CLOEXEC)) < 0)
        r = -errno;
    if (r == 0) {
        size_t len = strlen(sh->token);
        if (fchmod(fd, S_IRUSR | S_IWUSR) < 0 || write(fd, sh->token, len) != (ssize_t)len ||
            write(fd, "\n", 1) != 1)
            r = errno ? -errno : -EIO;
        if (close(fd) < 0 && r == 0)
            r = -errno;
        if (r == 0 && rename(tmp, sh->cache_file) < 0)
            r = -errno;
        if (r < 0)
            unlink(tmp);
    }
    if (r < 0)
        log_warn("token cache %s: %s (the next command will log in again)", sh->cache_file,
                 strerror(-r));
}

/* ---- one HTTP exchange ---- */

static void sink_reset(struct sink *s)
{
    s->len = 0;
    s->status = 0;
    s->status_known = s->overflow = s->bad_range = s->too_large = s->no_memory = false;
    s->bad_sparse = s->sparse = false;
    s->have_range = false;
    s->multipart = s->bad_part = s->in_part_headers = s->have_part_range = s->done = false;
    s->line_len = s->part = 0;
    s->part_at = s->part_left = s->delivered = 0;
    s->wire = 0;
    s->errlen = 0;
    s->errbody[0] = '\0';
}

/* Hand n bytes of the range starting at disk offset off to the gather sink's put, in order. */
static int gather_put(struct sink *s, uint64_t off, const uint8_t *data, size_t n)
{
    if (n == 0)
        return 0;
    s->delivered += n;
    return s->put(s->put_arg, off, data, n);
}

/* One line of a multipart body outside the parts' data (CR LF stripped). */
static int multipart_line(struct sink *s, const char *line)
{
    size_t bl = strlen(s->boundary);
    static const char content_range[] = "content-range:";
    if (line[0] == '-' && line[1] == '-' && !strncmp(line + 2, s->boundary, bl)) {
        if (!strcmp(line + 2 + bl, "--")) {
            s->done = true;
            return s->part == s->nranges ? 0 : -1;
        }
        if (line[2 + bl] != '\0' || s->part == s->nranges || s->done)
            return -1;
        s->in_part_headers = true;
        s->have_part_range = false;
        return 0;
    }
    if (!s->in_part_headers)
        return 0; /* preamble */
    if (line[0] == '\0') {
        if (!s->have_part_range)
            return -1;
        s->in_part_headers = false;
        const struct client_range *r = &s->ranges[s->part++];
        s->part_at = r->off;
        s->part_left = r->len;
        return 0;
    }
    if (!strncasecmp(line, content_range, sizeof(content_range) - 1)) {
        /* Ranges asked for are sorted and apart: the server sends each as its part, in order. */
        unsigned long long a, b;
        const struct client_range *r = &s->ranges[s->part];
        if (sscanf(line + sizeof(content_range) - 1, " bytes %llu-%llu/", &a, &b) != 2 ||
            a != r->off || b + 1 - a != r->len)
            return -1;
        s->have_part_range = true;
    }
    return 0;
}

/* Body bytes of a gather request: one range (206 with Content-Range) or multipart/byteranges
 * whose parts are exactly the ranges asked for.  -1: anything else. */
static int gather_body(struct sink *s, const uint8_t *data, size_t n)
{
    if (s->status != 206)
        return -1;
    if (!s->multipart) {
        const struct client_range *r = &s->ranges[0];
        if (s->nranges != 1 || !s->have_range || s->range_start != r->off ||
            s->range_end + 1 - s->range_start != r->len || n > r->len - s->delivered)
            return -1;
        return gather_put(s, r->off + s->delivered, data, n);
    }
    while (n) {
        if (s->part_left) {
            size_t k = s->part_left < n ? (size_t)s->part_left : n;
            if (gather_put(s, s->part_at, data, k) < 0)
                return -1;
            s->part_at += k;
            s->part_left -= k;
            data += k;
            n -= k;
            continue;
        }
        uint8_t c = *data++;
        n--;
        if (c != '\n') {
            if (s->line_len + 1 >= sizeof(s->line))
                return -1;
            s->line[s->line_len++] = (char)c;
            continue;
        }
        if (s->line_len && s->line[s->line_len - 1] == '\r')
            s->line_len--;
        s->line[s->line_len] = '\0';
        s->line_len = 0;
        if (multipart_line(s, s->line) < 0)
            return -1;
    }
    return 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *opaque)
{
    struct sink *s = opaque;
    size_t n = size * nmemb;
    if (!s->status_known) {
        curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &s->status);
        s->status_known = true;
    }
    if (s->status < 200 || s->status >= 300) {
        size_t keep = ERROR_BODY_MAX - s->errlen < n ? ERROR_BODY_MAX - s->errlen : n;
        memcpy(s->errbody + s->errlen, data, keep);
        s->errlen += keep;
        s->errbody[s->errlen] = '\0';
        return n;
    }
    if (s->put) {
        s->wire += n;
        if (gather_body(s, (const uint8_t *)data, n) < 0) {
            s->bad_part = true;
            return 0;
        }
        return n;
    }
    if (s->fixed) {
        /* 206 must be the range asked for; 200 (Range ignored) only from offset 0. */
        if ((s->status == 206 && (!s->have_range || s->range_start != s->want_off)) ||
            (s->status != 206 && s->want_off != 0)) {
            s->bad_range = true;
            return 0;
        }
        s->wire += n;
        if (s->sparse) {
            if (sparse_decode(&s->dec, (const uint8_t *)data, n) < 0) {
                s->bad_sparse = true;
                return 0;
            }
            return n;
        }
        if (n > s->cap - s->len) {
            s->overflow = true;
            return 0;
        }
        memcpy(s->buf + s->len, data, n);
        s->len += n;
        return n;
    }
    if (n > s->max - s->len) {
        s->too_large = true;
        return 0;
    }
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : BODY_INITIAL_CAP;
        while (cap < s->len + n + 1)
            cap *= 2;
        char *p = realloc(s->buf, cap);
        if (!p) {
            s->no_memory = true;
            return 0;
        }
        s->buf = p;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, n);
    s->len += n;
    s->buf[s->len] = '\0';
    return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *opaque)
{
    struct sink *s = opaque;
    size_t n = size * nmemb;
    static const char status_line[] = "HTTP/";
    static const char content_range[] = "content-range:";
    static const char content_type[] = "content-type:";
    if (n >= sizeof(status_line) - 1 && !strncmp(data, status_line, sizeof(status_line) - 1)) {
        s->have_range = false; /* a new response (after 100 Continue, say) */
        s->sparse = false;
    } else if (s->fixed && n > sizeof(content_type) - 1 &&
               !strncasecmp(data, content_type, sizeof(content_type) - 1)) {
        const char *v = data + sizeof(content_type) - 1, *end = data + n;
        while (v < end && (*v == ' ' || *v == '\t'))
            v++;
        size_t tlen = strlen(SPARSE_MEDIA_TYPE);
        static const char mp[] = "multipart/byteranges;";
        if (s->put && (size_t)(end - v) > sizeof(mp) - 1 && !strncasecmp(v, mp, sizeof(mp) - 1)) {
            const char *bnd = strstr(v, "boundary=");
            size_t bl = 0;
            if (bnd) {
                bnd += strlen("boundary=");
                while (bnd + bl < end && !strchr(" \t;\r\n\"", bnd[bl]))
                    bl++;
            }
            if (bl > 0 && bl <= MULTIPART_BOUNDARY_MAX) {
                memcpy(s->boundary, bnd, bl);
                s->boundary[bl] = '\0';
                s->multipart = true;
            }
        } else if ((size_t)(end - v) >= tlen && !strncasecmp(v, SPARSE_MEDIA_TYPE, tlen) &&
            ((size_t)(end - v) == tlen || strchr(" \t;\r\n", v[tlen]))) {
            s->sparse = true;
            sparse_decoder_init(&s->dec, s->buf, s->cap);
        }
    } else if (n > sizeof(content_range) - 1 &&
               !strncasecmp(data, content_range, sizeof(content_range) - 1)) {
        char line[128];
        size_t len = n < sizeof(line) - 1 ? n : sizeof(line) - 1;
        memcpy(line, data, len);
        line[len] = '\0';
        unsigned long long a, b;
        if (sscanf(line + sizeof(content_range) - 1, " bytes %llu-%llu/", &a, &b) == 2 && a <= b) {
            s->have_range = true;
            s->range_start = a;
            s->range_end = b;
        }
    }
    return n;
}

static void setup_handle(struct client *c)
{
    struct client_shared *sh = c->sh;
    CURL *h = c->curl;
    curl_easy_reset(h);
    c->curl_err[0] = '\0';
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->curl_err);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_S);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, LOW_SPEED_LIMIT_BPS);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, LOW_SPEED_TIME_S);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https,http");
    curl_easy_setopt(h, CURLOPT_USERAGENT, USER_AGENT);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (sh->cacert)
        curl_easy_setopt(h, CURLOPT_CAINFO, sh->cacert);
    if (sh->cert)
        curl_easy_setopt(h, CURLOPT_SSLCERT, sh->cert);
    if (sh->key)
        curl_easy_setopt(h, CURLOPT_SSLKEY, sh->key);
    if (sh->insecure) {
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
    }
}

/* One attempt of a request.  Returns curl's result; s->status is the HTTP status (0: none). */
/* A binary request body (PUT of disk data). */
struct put_body {
    const void *data;
    size_t len;
    const char *content_range; /* "bytes A-B/N" */
};

static CURLcode attempt(struct client *c, const char *method, const char *path, const char *body,
                        const char *range, const char *token, struct sink *s,
                        const struct put_body *put)
{
    CLEANUP_FREE char *url = NULL;
    CLEANUP_FREE char *auth = NULL;
    CLEANUP_FREE char *crange = NULL; /* before any goto: the cleanup runs at every exit */
    if (asprintf(&url, "%s%s", c->sh->server, path) < 0) {
        url = NULL;
        return CURLE_OUT_OF_MEMORY;
    }
    struct curl_slist *headers = NULL, *h;
    if (token) {
        if (asprintf(&auth, "Authorization: Bearer %s", token) < 0) {
            auth = NULL;
            return CURLE_OUT_OF_MEMORY;
        }
        if (!(h = curl_slist_append(headers, auth)))
            goto oom;
        headers = h;
    }
    if (!range) {
        if (!(h = curl_slist_append(headers, "Accept: application/json")))
            goto oom;
        headers = h;
    } else if (s->fixed && !s->put) {
        /* Blocks of zeros need not cross the network (vmexportd; other servers send all). */
        if (!(h = curl_slist_append(headers, "Accept: " SPARSE_MEDIA_TYPE
                                                ", application/octet-stream")))
            goto oom;
        headers = h;
    }
    if (body) {
        if (!(h = curl_slist_append(headers, "Content-Type: application/json")))
            goto oom;
        headers = h;
    }
    if (put) {
        if (asprintf(&crange, "Content-Range: %s", put->content_range) < 0) {
            crange = NULL;
            goto oom;
        }
        /* No "Expect: 100-continue" round trip before every chunk. */
        const char *extra[] = {"Content-Type: application/octet-stream", "Expect:", crange};
        for (size_t i = 0; i < ARRAY_SIZE(extra); i++) {
            if (!(h = curl_slist_append(headers, extra[i])))
                goto oom;
            headers = h;
        }
    }

    setup_handle(c);
    CURL *e = c->curl;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, s);
    if (range)
        curl_easy_setopt(e, CURLOPT_RANGE, range);
    if (!strcmp(method, "GET")) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (!strcmp(method, "HEAD")) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (put || body || !strcmp(method, "POST")) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, put ? put->data : body ? body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)(put ? put->len : body ? strlen(body) : 0));
        if (strcmp(method, "POST"))
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    sink_reset(s);
    s->curl = e;
    CURLcode cr = curl_easy_perform(e);
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    c->os_errno = 0;
    curl_easy_getinfo(e, CURLINFO_OS_ERRNO, &c->os_errno);
    s->status = status;
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(headers);
    if (auth)
        explicit_bzero(auth, strlen(auth));
    log_debug("%s %s%s%s -> %s (HTTP %ld)", method, path, range ? " bytes=" : "",
              range ? range : "", cr == CURLE_OK ? "ok" : curl_easy_strerror(cr), status);
    return cr;

oom:
    curl_slist_free_all(headers);
    return CURLE_OUT_OF_MEMORY;
}

/* Failures worth another attempt: nothing was sent (connect failed), or the request may be
 * repeated and the answer was lost or a server-side error. */
static bool transient(CURLcode cr, long status, unsigned flags)
{
    bool again = flags & REQ_IDEMPOTENT;
    switch (cr) {
    case CURLE_OK:
        return again && status >= 500;
    case CURLE_COULDNT_CONNECT:
        return true;
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
        return again;
    default:
        return false;
    }
}

/* Message and errno for a transfer that failed below HTTP. */
static int curl_failure(struct client *c, CURLcode cr, const struct sink *s, const char *path)
{
    const char *why = c->curl_err[0] ? c->curl_err : curl_easy_strerror(cr);
    struct client_shared *sh = c->sh;
    switch (cr) {
    case CURLE_COULDNT_CONNECT:
        if (c->os_errno == ECONNREFUSED) {
            set_error(c, "connection refused (is vmexportd running there?)");
            return -ECONNREFUSED;
        }
        if (c->os_errno > 0) {
            set_error(c, "cannot connect: %s", strerror((int)c->os_errno));
            return -(int)c->os_errno;
        }
        set_error(c, "cannot connect: %s", why);
        return -EHOSTUNREACH;
    case CURLE_COULDNT_RESOLVE_HOST:
        set_error(c, "unknown host: %s", why);
        return -EHOSTUNREACH;
    case CURLE_OPERATION_TIMEDOUT:
        set_error(c, "timed out: %s", why);
        return -ETIMEDOUT;
    case CURLE_PEER_FAILED_VERIFICATION:
        if (sh->cacert)
            set_error(c,
                      "certificate verify failed: %s (is %s the CA that signed the server's "
                      "certificate?)",
                      why, sh->cacert);
        else
            set_error(c, "certificate verify failed: %s (use --cacert)", why);
        return -EPROTO;
    case CURLE_SSL_CACERT_BADFILE:
        set_error(c, "CA certificate %s: cannot be read or holds no certificate (%s)",
                  sh->cacert ? sh->cacert : "(system)", why);
        return -EINVAL;
    case CURLE_SSL_CERTPROBLEM:
        set_error(c, "client certificate %s: %s", sh->cert ? sh->cert : "", why);
        return -EINVAL;
    case CURLE_SSL_CONNECT_ERROR:
        set_error(c, "TLS handshake failed: %s", why);
        return -EPROTO;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        set_error(c, "not a server URL (want https://HOST:PORT): %s", why);
        return -EINVAL;
    case CURLE_OUT_OF_MEMORY:
        set_error(c, "out of memory");
        return -ENOMEM;
    case CURLE_WRITE_ERROR:
        if (s->overflow) {
            set_error(c, "%s: the server sent more than the %zu bytes asked for (Range ignored)",
                      path, s->cap);
            return -EPROTO;
        }
        if (s->bad_part) {
            set_error(c, "%s: the server answered other ranges than asked for", path);
            return -EPROTO;
        }
        if (s->bad_sparse) {
            set_error(c, "%s: malformed sparse answer (a segment out of order or past the range)",
                      path);
            return -EPROTO;
        }
        if (s->bad_range) {
            set_error(c, "%s: the server answered another range than bytes %llu-", path,
                      (unsigned long long)s->want_off);
            return -EPROTO;
        }
        if (s->too_large) {
            set_error(c, "%s: answer larger than %zu bytes", path, s->max);
            return -EFBIG;
        }
        if (s->no_memory) {
            set_error(c, "%s: out of memory for the answer", path);
            return -ENOMEM;
        }
        set_error(c, "%s: %s", path, why);
        return -EIO;
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
        set_error(c, "connection lost: %s", why);
        return -ECONNRESET;
    default:
        set_error(c, "%s", why);
        return -EIO;
    }
}

/* The server's "details" of an error answer, or its text, or nothing. */
static void error_details(const struct sink *s, char *out, size_t len)
{
    out[0] = '\0';
    json_t *j = s->errlen ? json_loadb(s->errbody, s->errlen, 0, NULL) : NULL;
    const char *d = j ? json_string_value(json_object_get(j, "details")) : NULL;
    const char *e = j ? json_string_value(json_object_get(j, "error")) : NULL;
    if (d && d[0])
        snprintf(out, len, "%s", d);
    else if (e && e[0])
        snprintf(out, len, "%s", e);
    else if (!j && s->errlen)
        snprintf(out, len, "%.*s", (int)strcspn(s->errbody, "\r\n"), s->errbody);
    json_decref(j);
}

static int status_errno(long status, const char *details)
{
    switch (status) {
    case 400:
        return -EINVAL;
    case 401:
        return -EACCES;
    case 403:
        return -EPERM;
    case 404:
        return -ENOENT;
    case 409:
        return strstr(details, "busy") ? -EBUSY : -EEXIST;
    case 429:
        return -EAGAIN;
    default:
        return -EIO;
    }
}

/* Message and errno for a non-2xx answer. */
static int http_failure(struct client *c, const struct sink *s, const char *what)
{
    char details[ERROR_BODY_MAX];
    error_details(s, details, sizeof(details));
    if (details[0])
        set_error(c, "%s%s (HTTP %ld)", what, details, s->status);
    else
        set_error(c, "%sHTTP %ld without an error message (is this a vmexportd server?)", what,
                  s->status);
    return status_errno(s->status, details);
}

/* ---- login ---- */

static int request(struct client *c, const char *method, const char *path, const char *body,
                   const char *range, unsigned flags, struct sink *s, const struct put_body *put);

/* Log in with the password (c->sh->lock held).  Unless force, a fresh cached token will do. */
static int login_locked(struct client *c, bool force)
{
    struct client_shared *sh = c->sh;
    if (!force && cache_load(sh))
        return 0;
    json_t *req = json_pack("{s:s, s:s}", "username", sh->user, "password", sh->password);
    char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (!text) {
        set_error(c, "login: out of memory");
        return -ENOMEM;
    }
    struct sink s = {.max = TOKEN_MAX * 2};
    int r = request(c, "POST", LOGIN_PATH, text, NULL, REQ_IDEMPOTENT, &s, NULL);
    free_secret(text);
    if (r < 0)
        goto out;
    if (s.status != 200) {
        r = http_failure(c, &s, "login failed: ");
        goto out;
    }
    json_t *j = json_loadb(s.buf ? s.buf : "", s.len, 0, NULL);
    const char *token = j ? json_string_value(json_object_get(j, "token")) : NULL;
    json_t *ttl = j ? json_object_get(j, "expires_in") : NULL;
    int64_t exp = 0;
    bool has_exp = token && jwt_exp(token, &exp) == 0;
    if (!token || !token[0]) {
        set_error(c, "login: the answer holds no token");
        r = -EPROTO;
    } else if (!has_exp && !json_is_integer(ttl)) {
        set_error(c, "login: the token has no expiry");
        r = -EPROTO;
    } else {
        if (!has_exp) /* not a JWT we can read: trust expires_in */
            exp = (int64_t)time(NULL) + json_integer_value(ttl);
        char *t = strdup(token);
        if (!t) {
            r = -ENOMEM;
            set_error(c, "login: out of memory");
        } else {
            free_secret(sh->token);
            sh->token = t;
            sh->token_exp = exp;
            sh->token_gen++;
            log_debug("logged in to %s as %s", sh->server, sh->user);
            cache_save(sh);
        }
    }
    json_decref(j);
out:
    if (s.buf)
        explicit_bzero(s.buf, s.len);
    free(s.buf);
    return r;
}

int client_login(struct client *c)
{
    struct client_shared *sh = c->sh;
    pthread_mutex_lock(&sh->lock);
    int r = sh->token && token_fresh(sh->token_exp) ? 0 : login_locked(c, false);
    pthread_mutex_unlock(&sh->lock);
    return r;
}

/* A copy of a fresh token (logging in when needed) and its generation. */
static int current_token(struct client *c, char **token, uint64_t *gen)
{
    struct client_shared *sh = c->sh;
    pthread_mutex_lock(&sh->lock);
    int r = 0;
    if (!sh->token || !token_fresh(sh->token_exp))
        r = login_locked(c, false);
    if (r == 0) {
        *token = strdup(sh->token);
        *gen = sh->token_gen;
        if (!*token) {
            set_error(c, "out of memory");
            r = -ENOMEM;
        }
    }
    pthread_mutex_unlock(&sh->lock);
    return r;
}

/* After a 401 with token generation gen: log in again, unless another connection already has. */
static int relogin(struct client *c, uint64_t gen)
{
    struct client_shared *sh = c->sh;
    pthread_mutex_lock(&sh->lock);
    int r = sh->token_gen == gen ? login_locked(c, true) : 0;
    pthread_mutex_unlock(&sh->lock);
    return r;
}

/* A request with retries (transient failures, backoff) and one new login after a 401.
 * Returns 0 when an HTTP answer came (s->status), else a negative errno with the message set. */
static int request(struct client *c, const char *method, const char *path, const char *body,
                   const char *range, unsigned flags, struct sink *s, const struct put_body *put)
{
    unsigned retries = c->sh->retries, tries = 0, delay = BACKOFF_FIRST_MS;
    bool relogged = false;
    for (;;) {
        CLEANUP_FREE char *token = NULL;
        uint64_t gen = 0;
        if (flags & REQ_AUTH) {
            int r = current_token(c, &token, &gen);
            if (r < 0)
                return r;
        }
        CURLcode cr = attempt(c, method, path, body, range, token, s, put);
        if (token)
            explicit_bzero(token, strlen(token));
        if (cr == CURLE_OK && s->status == 401 && (flags & REQ_AUTH) && !relogged) {
            relogged = true;
            log_debug("%s %s: token refused, logging in again", method, path);
            int r = relogin(c, gen);
            if (r < 0)
                return r;
            continue;
        }
        if (transient(cr, s->status, flags) && tries < retries) {
            tries++;
            log_debug("%s %s: %s, retry %u of %u in %u ms", method, path,
                      cr == CURLE_OK ? "server error" : curl_easy_strerror(cr), tries, retries,
                      delay);
            sleep_ms(delay);
            delay = delay * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : delay * 2;
            continue;
        }
        if (cr != CURLE_OK)
            return curl_failure(c, cr, s, path);
        return 0;
    }
}

/* ---- public API ---- */

static int client_alloc(struct client_shared *sh, struct client **out)
{
    struct client *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->curl = curl_easy_init();
    if (!c->curl) {
        free(c);
        return -ENOMEM;
    }
    c->sh = sh;
    *out = c;
    return 0;
}

static void shared_free(struct client_shared *sh)
{
    pthread_mutex_destroy(&sh->lock);
    free(sh->server);
    free(sh->user);
    free_secret(sh->password);
    free(sh->cacert);
    free(sh->cert);
    free(sh->key);
    free(sh->cache_dir);
    free(sh->cache_file);
    free_secret(sh->token);
    free(sh);
}

int client_new(const struct client_options *opt, struct client **out)
{
    *out = NULL;
    if (!opt->server || !opt->server[0] || !opt->user || !opt->password)
        return -EINVAL;
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_result != CURLE_OK)
        return -EIO;
    struct client_shared *sh = calloc(1, sizeof(*sh));
    if (!sh)
        return -ENOMEM;
    pthread_mutex_init(&sh->lock, NULL);
    sh->refs = 1;
    bool failed = false;
    /* "host:port" means https; a trailing slash is dropped so paths join cleanly. */
    if (strstr(opt->server, "://")) {
        sh->server = strdup_or_null(opt->server, &failed);
    } else if (asprintf(&sh->server, "https://%s", opt->server) < 0) {
        sh->server = NULL;
        failed = true;
    }
    if (sh->server) {
        size_t len = strlen(sh->server);
        while (len > 0 && sh->server[len - 1] == '/')
            sh->server[--len] = '\0';
    }
    sh->user = strdup_or_null(opt->user, &failed);
    sh->password = strdup_or_null(opt->password, &failed);
    sh->cacert = strdup_or_null(opt->cacert, &failed);
    sh->cert = strdup_or_null(opt->cert, &failed);
    sh->key = strdup_or_null(opt->key, &failed);
    sh->insecure = opt->insecure;
    sh->retries = opt->retries ? opt->retries : DEFAULT_RETRIES;
    int r = failed ? -ENOMEM : cache_paths(sh, opt->token_cache_dir);
    struct client *c = NULL;
    if (r == 0)
        r = client_alloc(sh, &c);
    if (r < 0) {
        shared_free(sh);
        return r;
    }
    *out = c;
    return 0;
}

int client_dup(struct client *c, struct client **out)
{
    struct client_shared *sh = c->sh;
    pthread_mutex_lock(&sh->lock);
    sh->refs++;
    pthread_mutex_unlock(&sh->lock);
    int r = client_alloc(sh, out);
    if (r < 0) {
        pthread_mutex_lock(&sh->lock);
        sh->refs--;
        pthread_mutex_unlock(&sh->lock);
    }
    return r;
}

void client_free(struct client *c)
{
    if (!c)
        return;
    struct client_shared *sh = c->sh;
    curl_easy_cleanup(c->curl);
    free(c);
    pthread_mutex_lock(&sh->lock);
    bool last = --sh->refs == 0;
    pthread_mutex_unlock(&sh->lock);
    if (last)
        shared_free(sh);
}

const char *client_error(const struct client *c)
{
    return c->error[0] ? c->error : "no error";
}

int client_json(struct client *c, const char *method, const char *path, const char *body,
                json_t **out, long *status)
{
    if (out)
        *out = NULL;
    if (status)
        *status = 0;
    c->error[0] = '\0';
    unsigned flags = REQ_AUTH;
    if (strcmp(method, "POST") != 0)
        flags |= REQ_IDEMPOTENT; /* GET, HEAD, DELETE, PUT */
    struct sink s = {.max = JSON_RESPONSE_MAX};
    int r = request(c, method, path, body, NULL, flags, &s, NULL);
    if (status)
        *status = s.status;
    if (r == 0 && (s.status < 200 || s.status >= 300)) {
        CLEANUP_FREE char *what = NULL;
        if (asprintf(&what, "%s %s: ", method, path) < 0)
            what = NULL;
        r = http_failure(c, &s, what ? what : "");
    } else if (r == 0 && s.len > 0 && out) { /* out NULL: the caller wants the status only */
        json_error_t jerr;
        *out = json_loadb(s.buf, s.len, 0, &jerr);
        if (!*out) {
            set_error(c, "%s %s: the answer is not JSON: %s", method, path, jerr.text);
            r = -EBADMSG;
        }
    }
    free(s.buf);
    return r;
}

int client_read_range(struct client *c, const char *path, uint64_t off, uint64_t len, void *buf,
                      size_t *got)
{
    *got = 0;
    c->error[0] = '\0';
    if (len == 0)
        return 0;
    if (len > SIZE_MAX || off + len < off) {
        set_error(c, "%s: bad range %llu+%llu", path, (unsigned long long)off,
                  (unsigned long long)len);
        return -EINVAL;
    }
    char range[64];
    snprintf(range, sizeof(range), "%llu-%llu", (unsigned long long)off,
             (unsigned long long)(off + len - 1));
    struct sink s = {.buf = buf, .cap = (size_t)len, .fixed = true, .want_off = off};
    int r = request(c, "GET", path, NULL, range, REQ_AUTH | REQ_IDEMPOTENT, &s, NULL);
    if (r < 0)
        return r;
    if (s.status == 416)
        return 0; /* off is at or past the end */
    if (s.status != 200 && s.status != 206) {
        CLEANUP_FREE char *what = NULL;
        if (asprintf(&what, "GET %s bytes %s: ", path, range) < 0)
            what = NULL;
        return http_failure(c, &s, what ? what : "");
    }
    if (s.sparse) {
        /* 206 with the range asked for (checked at the first body byte; an empty body has
         * none, so again here). */
        uint64_t n = s.have_range ? s.range_end - s.range_start + 1 : 0;
        if (s.status != 206 || !s.have_range || s.range_start != off || n > len ||
            sparse_decode_finish(&s.dec, n) < 0) {
            set_error(c, "GET %s bytes %s: malformed sparse answer (%s)", path, range,
                      s.status != 206 || !s.have_range ? "no Content-Range"
                      : s.range_start != off || n > len ? "another range than asked for"
                                                        : "it ends inside a segment");
            return -EPROTO;
        }
        s.len = (size_t)n;
    }
    *got = s.len;
    c->bytes += s.len;
    c->bytes_wire += s.wire;
    return 0;
}

int client_read_ranges(struct client *c, const char *path, const struct client_range *ranges,
                       size_t n, client_put_fn put, void *arg)
{
    c->error[0] = '\0';
    if (n == 0)
        return 0;
    if (n > CLIENT_MAX_RANGES) {
        set_error(c, "%s: %zu ranges in one request (at most %d)", path, n, CLIENT_MAX_RANGES);
        return -EINVAL;
    }
    /* "A-B," per range */
    size_t cap = n * 42 + 1, len = 0, want = 0;
    CLEANUP_FREE char *range = malloc(cap);
    if (!range)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const struct client_range *r = &ranges[i];
        if (r->len == 0 || r->off + r->len < r->off ||
            (i && r->off <= ranges[i - 1].off + ranges[i - 1].len)) {
            set_error(c, "%s: ranges not sorted apart at %llu+%llu", path,
                      (unsigned long long)r->off, (unsigned long long)r->len);
            return -EINVAL;
        }
        len += (size_t)snprintf(range + len, cap - len, "%s%llu-%llu", i ? "," : "",
                                (unsigned long long)r->off,
                                (unsigned long long)(r->off + r->len - 1));
        want += r->len;
    }
    struct sink s = {.fixed = true, .ranges = ranges, .nranges = n, .put = put, .put_arg = arg};
    int r = request(c, "GET", path, NULL, range, REQ_AUTH | REQ_IDEMPOTENT, &s, NULL);
    if (r < 0)
        return r;
    if (s.status != 206) {
        CLEANUP_FREE char *what = NULL;
        if (asprintf(&what, "GET %s (%zu ranges): ", path, n) < 0)
            what = NULL;
        return http_failure(c, &s, what ? what : "");
    }
    if (s.delivered != want || (s.multipart && !s.done)) {
        set_error(c, "GET %s (%zu ranges): %llu of %zu bytes came", path, n,
                  (unsigned long long)s.delivered, want);
        return -EPROTO;
    }
    c->bytes += want;
    c->bytes_wire += s.wire;
    return 0;
}

int client_put_range(struct client *c, const char *path, uint64_t off, const void *buf,
                     size_t len, uint64_t total)
{
    c->error[0] = '\0';
    if (len == 0 || off + len < off || off + len > total) {
        set_error(c, "%s: bad range %llu+%zu of %llu", path, (unsigned long long)off, len,
                  (unsigned long long)total);
        return -EINVAL;
    }
    char range[96];
    snprintf(range, sizeof(range), "bytes %llu-%llu/%llu", (unsigned long long)off,
             (unsigned long long)(off + len - 1), (unsigned long long)total);
    struct put_body put = {.data = buf, .len = len, .content_range = range};
    struct sink s = {.max = JSON_RESPONSE_MAX};
    /* Each PUT's data need not be on the disk before the answer: the caller flushes once at the
     * end (imageio's default is a flush per PUT). */
    CLEANUP_FREE char *url = NULL;
    if (asprintf(&url, "%s?flush=n", path) < 0)
        return -ENOMEM;
    /* A PUT of a range is idempotent: retried like a read. */
    int r = request(c, "PUT", url, NULL, NULL, REQ_AUTH | REQ_IDEMPOTENT, &s, &put);
    if (r == 0 && (s.status < 200 || s.status >= 300)) {
        CLEANUP_FREE char *what = NULL;
        if (asprintf(&what, "PUT %s %s: ", path, range) < 0)
            what = NULL;
        r = http_failure(c, &s, what ? what : "");
    }
    if (r == 0)
        c->bytes_sent += len;
    free(s.buf);
    return r;
}

uint64_t client_bytes_sent(const struct client *c)
{
    return c->bytes_sent;
}

uint64_t client_bytes_received(const struct client *c)
{
    return c->bytes;
}

uint64_t client_bytes_on_wire(const struct client *c)
{
    return c->bytes_wire;
}

char *client_escape(const char *segment)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t len = strlen(segment);
    if (len > (SIZE_MAX - 1) / 3)
        return NULL;
    char *out = malloc(3 * len + 1), *p = out;
    if (!out)
        return NULL;
    for (const unsigned char *s = (const unsigned char *)segment; *s; s++) {
        /* RFC 3986 unreserved characters stay as they are. */
        if ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
            *s == '-' || *s == '.' || *s == '_' || *s == '~') {
            *p++ = (char)*s;
        } else {
            *p++ = '%';
            *p++ = hex[*s >> 4];
            *p++ = hex[*s & 0xf];
        }
    }
    *p = '\0';
    return out;
}
