/* The S3 store: a repository under s3://BUCKET/PREFIX on any S3-compatible object store,
 * through libcurl (SigV4 signing by CURLOPT_AWS_SIGV4, path-style URLs, the payload's SHA-256 in
 * x-amz-content-sha256) and libxml2 for the answers.
 *
 * Keys map to objects "PREFIX/key".  Objects are immutable and content-named: a put with
 * STORE_PUT_CREATE carries "If-None-Match: *" and an existing object answers 412 (created =
 * false).  Staged objects are held in memory and put conditionally at commit, so nothing is
 * visible before it.  Prefixes are virtual (they exist while a key lies under them; listing an
 * empty one walks nothing).  Listings
 * are ListObjectsV2 pages of 1000 with the delimiter "/", one page in memory at a time.  Deletes
 * are queued and sent as DeleteObjects batches of up to 1000 at a sync, a barrier, a listing,
 * a put of a queued key or close; a queued key already reads as missing.
 *
 * Locks are lease objects "NAME/<holder>.<shared|exclusive>.<seconds>" holding JSON {host, pid,
 * expires}: a holder creates its own, then lists the lock's others; a live conflicting one
 * makes it delete its own and wait.  A lease is live until its Last-Modified plus its seconds,
 * compared with the store's own Date (no clock of ours is trusted); renewing rewrites it.
 *
 * With Object Lock (repositories made with --lock-days), every put but a lease's carries
 * COMPLIANCE retention; deleting then means deleting the object's version, which the store
 * refuses (-EACCES) while it is retained.
 *
 * Requests failing with 5xx, a timeout or a lost connection are retried with exponential
 * backoff; handles are pooled (libcurl handles are used by one thread at a time).  Credentials
 * are given to libcurl only, never printed.
 */
#include "repo/store_s3.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "core/base64.h"
#include "core/cleanup.h"
#include "core/hex.h"
#include "core/lock.h"
#include "core/log.h"
#include "repo/repo_internal.h"

#define S3_AWS_ENDPOINT   "https://s3.amazonaws.com" /* us-east-1's endpoint */
#define S3_PAGE_KEYS      1000 /* keys per ListObjectsV2 page (the protocol's maximum) */
#define S3_DELETE_BATCH   1000 /* keys per DeleteObjects request (the protocol's maximum) */
#define S3_TRIES          5    /* attempts of a request failing with 5xx or a transport error */
#define S3_BACKOFF_MS     200  /* first retry delay, doubling */
#define S3_CONNECT_SECS   10
#define S3_STALL_SECS     30   /* a transfer slower than 1 byte/s this long is dropped */
#define S3_POOL_MAX       16   /* idle curl handles kept (one per uploading thread) */
#define S3_ERR_BODY_MAX   (64u << 10) /* the most of an error answer read */
#define S3_LIST_BODY_MAX  (8u << 20)  /* a page of 1000 keys is ~300 KiB */
#define S3_STAGE_MEMORY   (64u << 20) /* staged bytes held in memory, the rest in temp files */
#define S3_SPILL_DIR      "/var/tmp"  /* temp files of staged objects without TMPDIR */
#define S3_LEASE_HEX      8    /* random bytes naming a lease holder */
#define S3_LEASE_JITTER   100  /* ms of random extra wait after a conflict (no lock-step) */
#define SHA256_LEN        32
#define MD5_LEN           16
#define SECS_PER_DAY      86400
#define NS_PER_MS         1000000
#define HTTP_OK_MIN       200
#define HTTP_OK_MAX       299
#define HTTP_PARTIAL      206
#define HTTP_FORBIDDEN    403
#define HTTP_NOT_FOUND    404
#define HTTP_CONFLICT     409
#define HTTP_PRECONDITION 412
#define HTTP_RANGE        416
#define HTTP_SERVER_ERROR 500
#define HTTP_TOO_MANY     429

struct s3_store {
    struct store s;
    char *endpoint; /* without a trailing '/' */
    char *bucket;
    char *prefix; /* "" or "dir/.../" */
    char *sigv4;  /* "aws:amz:REGION:s3" */
    char *access_key, *secret_key;
    char *ca_file;
    unsigned lock_days;
    unsigned page_keys; /* keys per listing page */
    /* The last request found the endpoint unreachable after every retry: until one gets an
     * answer, requests try once (a backup failing with the endpoint gone fails in seconds,
     * not in S3_TRIES backoffs for each cleanup request). */
    atomic_bool unreachable;
    atomic_size_t staged_bytes; /* of staged objects held in memory */
    size_t stage_memory;        /* the most of them in memory */
    pthread_mutex_t mu; /* pool and delq */
    CURL *pool[S3_POOL_MAX];
    size_t npool;
    char **delq; /* full keys queued for deletion */
    size_t ndel;
};

struct store_staged {
    char *key;
    uint8_t *data; /* in memory, or */
    int fd;        /* in an unlinked temporary file */
    size_t len;
};

struct store_lease {
    char *lock;    /* the lock's full key prefix, "PREFIX/locks/x.lock/" */
    char *key;     /* the lease object's full key */
    char *version; /* its version in a versioned bucket, else NULL */
    char holder[2 * S3_LEASE_HEX + 1];
    bool exclusive;
    unsigned seconds;
};

/* ---- requests ---- */

struct s3_req {
    const char *method; /* GET, HEAD, PUT, POST, DELETE */
    const char *key;    /* full object key (URI-encoded here), NULL for the bucket */
    const char *query;  /* canonical query (sorted, encoded), NULL none */
    const void *body;
    size_t body_len;
    struct curl_slist *headers; /* extra headers */
    uint8_t *into;              /* answer body into this buffer, into_cap bytes */
    size_t into_cap;
    uint64_t max; /* the most of a 2xx body kept in memory (0: S3_ERR_BODY_MAX) */
};

struct s3_resp {
    long status;
    uint8_t *body; /* 2xx bodies without into, and error bodies */
    size_t len;    /* bytes received (into into, or in body) */
    bool too_big;  /* the body passed max or into_cap: transfer stopped */
    int64_t content_length;
    time_t date, last_modified;
    char version[128];
    char retain_until[64];
};

struct s3_xfer {
    CURL *h;
    const struct s3_req *q;
    struct s3_resp *p;
};

static struct s3_store *s3(struct store *s)
{
    return (struct s3_store *)s;
}

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int global_status;

static void global_init(void)
{
    global_status = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -ENOMEM;
    xmlInitParser();
}

static void resp_reset(struct s3_resp *p)
{
    free(p->body);
    *p = (struct s3_resp){.content_length = -1};
}

static size_t on_body(char *ptr, size_t size, size_t n, void *opaque)
{
    struct s3_xfer *x = opaque;
    size_t len = size * n;
    long code = 0;
    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &code);
    bool ok = code >= HTTP_OK_MIN && code <= HTTP_OK_MAX;
    if (ok && x->q->into) {
        if (len > x->q->into_cap - x->p->len) {
            x->p->too_big = true;
            return 0;
        }
        memcpy(x->q->into + x->p->len, ptr, len);
        x->p->len += len;
        return len;
    }
    uint64_t max = ok && x->q->max ? x->q->max : S3_ERR_BODY_MAX;
    if (len > max - x->p->len) {
        x->p->too_big = true;
        return 0;
    }
    uint8_t *grown = realloc(x->p->body, x->p->len + len + 1);
    if (!grown)
        return 0;
    memcpy(grown + x->p->len, ptr, len);
    x->p->body = grown;
    x->p->len += len;
    grown[x->p->len] = '\0';
    return len;
}

/* Copy the header value (after "name:") into out, trimmed. */
static bool header_value(const char *line, size_t len, const char *name, char *out, size_t cap)
{
    size_t n = strlen(name);
    if (len <= n || strncasecmp(line, name, n) || line[n] != ':')
        return false;
    const char *v = line + n + 1;
    const char *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    size_t vlen = (size_t)(end - v) < cap - 1 ? (size_t)(end - v) : cap - 1;
    memcpy(out, v, vlen);
    out[vlen] = '\0';
    return true;
}

static size_t on_header(char *line, size_t size, size_t n, void *opaque)
{
    struct s3_xfer *x = opaque;
    size_t len = size * n;
    char v[128];
    if (len > 5 && !strncmp(line, "HTTP/", 5)) { /* a new answer (after 100 Continue) */
        x->p->content_length = -1;
        x->p->version[0] = x->p->retain_until[0] = '\0';
    } else if (header_value(line, len, "content-length", v, sizeof(v))) {
        x->p->content_length = strtoll(v, NULL, 10);
    } else if (header_value(line, len, "date", v, sizeof(v))) {
        x->p->date = curl_getdate(v, NULL);
    } else if (header_value(line, len, "last-modified", v, sizeof(v))) {
        x->p->last_modified = curl_getdate(v, NULL);
    } else if (header_value(line, len, "x-amz-version-id", x->p->version,
                            sizeof(x->p->version))) {
        if (!strcmp(x->p->version, "null")) /* an unversioned bucket's answer */
            x->p->version[0] = '\0';
    } else {
        header_value(line, len, "x-amz-object-lock-retain-until-date", x->p->retain_until,
                     sizeof(x->p->retain_until));
    }
    return len;
}

static void sha256_hex(const void *data, size_t len, char out[2 * SHA256_LEN + 1])
{
    uint8_t md[SHA256_LEN];
    unsigned mdlen = 0;
    EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
    hex_encode(md, SHA256_LEN, out);
}

/* Percent-encode s as S3 wants it (RFC 3986 unreserved kept; '/' kept when keep_slash). */
static char *uri_encode(const char *s, bool keep_slash)
{
    static const char digits[] = "0123456789ABCDEF";
    char *out = malloc(3 * strlen(s) + 1), *o = out;
    if (!out)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '.' || *p == '_' || *p == '~' || (keep_slash && *p == '/')) {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = digits[*p >> 4];
            *o++ = digits[*p & 0xf];
        }
    }
    *o = '\0';
    return out;
}

static CURL *handle_get(struct s3_store *m)
{
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
        if (m->npool)
            return m->pool[--m->npool];
    }
    return curl_easy_init();
}

static void handle_put(struct s3_store *m, CURL *h)
{
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
        if (m->npool < S3_POOL_MAX) {
            m->pool[m->npool++] = h;
            return;
        }
    }
    curl_easy_cleanup(h);
}

/* Whether a failed attempt is worth another: transport failures that a restarted or less busy
 * endpoint may not repeat. */
static bool transient(CURLcode c)
{
    switch (c) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_COULDNT_RESOLVE_HOST:
        return true;
    default:
        return false;
    }
}

static int curl_errno(CURLcode c)
{
    switch (c) {
    case CURLE_COULDNT_CONNECT:
        return -ECONNREFUSED;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    case CURLE_COULDNT_RESOLVE_HOST:
        return -EHOSTUNREACH;
    default:
        return -EIO;
    }
}

static void nap_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * NS_PER_MS};
    nanosleep(&ts, NULL);
}

/* One attempt of q on h. */
static CURLcode attempt(struct s3_store *m, CURL *h, const struct s3_req *q, const char *url,
                        struct curl_slist *headers, struct s3_resp *p)
{
    struct s3_xfer x = {.h = h, .q = q, .p = p};
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_AWS_SIGV4, m->sigv4);
    curl_easy_setopt(h, CURLOPT_USERNAME, m->access_key);
    curl_easy_setopt(h, CURLOPT_PASSWORD, m->secret_key);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, (long)S3_CONNECT_SECS);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long)S3_STALL_SECS);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &x);
    if (m->ca_file)
        curl_easy_setopt(h, CURLOPT_CAINFO, m->ca_file);
    if (!strcmp(q->method, "HEAD")) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (strcmp(q->method, "GET")) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, q->method);
        if (q->body || strcmp(q->method, "DELETE")) {
            /* The body from memory: libcurl signs it and resends it on a retry. */
            curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->body_len);
            curl_easy_setopt(h, CURLOPT_POSTFIELDS, q->body ? q->body : "");
        }
    }
    CURLcode c = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &p->status);
    return c;
}

/* Send q with retries; 0 with p->status set for any final HTTP answer (the caller maps it), or
 * a negative errno when the endpoint could not be reached or kept failing. */
static int s3_do(struct s3_store *m, const struct s3_req *q, struct s3_resp *p)
{
    CLEANUP_FREE char *path = q->key ? uri_encode(q->key, true) : strdup("");
    CLEANUP_FREE char *url = NULL;
    char sha[2 * SHA256_LEN + 1], hdr[sizeof(sha) + 32];
    *p = (struct s3_resp){.content_length = -1};
    if (!path || asprintf(&url, "%s/%s%s%s%s%s", m->endpoint, m->bucket, q->key ? "/" : "", path,
                          q->query ? "?" : "", q->query ? q->query : "") < 0) {
        url = NULL;
        return -ENOMEM;
    }
    sha256_hex(q->body ? q->body : "", q->body_len, sha);
    snprintf(hdr, sizeof(hdr), "x-amz-content-sha256: %s", sha);
    struct curl_slist *headers = NULL, *tail = NULL;
    for (const struct curl_slist *e = q->headers; e; e = e->next) {
        tail = curl_slist_append(headers, e->data);
        if (!tail)
            break;
        headers = tail;
    }
    /* Bodies are bytes, not a form (libcurl's default for a body from memory).  Blanking a
     * header ("Expect:") would break libcurl 7.88's signature: it signs it though not sent. */
    const char *fixed[] = {hdr, q->body ? "Content-Type: application/octet-stream" : NULL};
    for (size_t i = 0; i < ARRAY_SIZE(fixed) && fixed[i]; i++) {
        tail = curl_slist_append(headers, fixed[i]);
        if (!tail)
            break;
        headers = tail;
    }
    if (!tail) {
        curl_slist_free_all(headers);
        return -ENOMEM;
    }
    CURL *h = handle_get(m);
    if (!h) {
        curl_slist_free_all(headers);
        return -ENOMEM;
    }
    int ret = 0;
    long delay = S3_BACKOFF_MS;
    int tries = atomic_load(&m->unreachable) ? 1 : S3_TRIES;
    for (int i = 1;; i++) {
        resp_reset(p);
        CURLcode c = attempt(m, h, q, url, headers, p);
        bool too_big = c == CURLE_WRITE_ERROR && p->too_big;
        if (c == CURLE_OK || too_big)
            atomic_store(&m->unreachable, false);
        if (c == CURLE_OK || too_big) {
            if (p->status < HTTP_SERVER_ERROR && p->status != HTTP_TOO_MANY)
                break;
        } else if (!transient(c)) {
            log_error("S3 endpoint %s: %s %s/%s: %s", m->endpoint, q->method, m->bucket,
                      q->key ? q->key : "", curl_easy_strerror(c));
            ret = curl_errno(c);
            break;
        }
        if (i >= tries) {
            if (c != CURLE_OK)
                atomic_store(&m->unreachable, true);
            if (c == CURLE_OK)
                log_error("S3 endpoint %s: %s %s/%s: HTTP %ld after %d tries", m->endpoint,
                          q->method, m->bucket, q->key ? q->key : "", p->status, i);
            else
                log_error("S3 endpoint %s: %s %s/%s: %s after %d tries", m->endpoint, q->method,
                          m->bucket, q->key ? q->key : "", curl_easy_strerror(c), i);
            ret = c == CURLE_OK ? -EIO : curl_errno(c);
            break;
        }
        nap_ms(delay);
        delay *= 2;
    }
    handle_put(m, h);
    curl_slist_free_all(headers);
    if (ret < 0)
        resp_reset(p);
    return ret;
}

static bool ok(const struct s3_resp *p)
{
    return p->status >= HTTP_OK_MIN && p->status <= HTTP_OK_MAX;
}

/* The text of the first element named name under node (a direct child), or NULL. */
static xmlNode *child(xmlNode *node, const char *name)
{
    for (xmlNode *c = node ? node->children : NULL; c; c = c->next)
        if (c->type == XML_ELEMENT_NODE && !strcmp((const char *)c->name, name))
            return c;
    return NULL;
}

static char *child_text(xmlNode *node, const char *name)
{
    xmlNode *c = child(node, name);
    return c ? (char *)xmlNodeGetContent(c) : NULL;
}

static xmlDoc *parse_xml(const struct s3_resp *p)
{
    if (!p->body || !p->len || p->len > INT_MAX)
        return NULL;
    return xmlReadMemory((const char *)p->body, (int)p->len, NULL, NULL,
                         XML_PARSE_NONET | XML_PARSE_NOBLANKS | XML_PARSE_NOERROR |
                             XML_PARSE_NOWARNING);
}

/* The S3 error code of an error answer ("NoSuchBucket"), into code. */
static void error_code(const struct s3_resp *p, char *code, size_t cap)
{
    code[0] = '\0';
    xmlDoc *doc = parse_xml(p);
    if (!doc)
        return;
    xmlChar *c = (xmlChar *)child_text(xmlDocGetRootElement(doc), "Code");
    if (c)
        snprintf(code, cap, "%s", (const char *)c);
    xmlFree(c);
    xmlFreeDoc(doc);
}

/* The errno of a failed answer (not 2xx): -ENOENT for 404, -EACCES for 403, -ENOSPC for a
 * quota.  Logged for the unexpected ones. */
static int status_errno(struct s3_store *m, const struct s3_req *q, const struct s3_resp *p)
{
    char code[64];
    error_code(p, code, sizeof(code));
    if (!strcmp(code, "QuotaExceeded") || !strcmp(code, "EntityTooLarge"))
        return -ENOSPC;
    if (!strcmp(code, "NoSuchBucket")) {
        log_error("bucket %s does not exist (vmexport repo init creates it)", m->bucket);
        return -ENOENT;
    }
    switch (p->status) {
    case HTTP_NOT_FOUND:
        return -ENOENT;
    case HTTP_FORBIDDEN:
        if (strcmp(q->method, "DELETE"))
            log_error("S3 endpoint %s: %s %s/%s: access denied%s%s (check AWS_ACCESS_KEY_ID / "
                      "AWS_SECRET_ACCESS_KEY)",
                      m->endpoint, q->method, m->bucket, q->key ? q->key : "", *code ? ": " : "",
                      code);
        return -EACCES;
    case HTTP_RANGE:
        return -EBADMSG;
    default:
        log_error("S3 endpoint %s: %s %s/%s: HTTP %ld %s", m->endpoint, q->method, m->bucket,
                  q->key ? q->key : "", p->status, code);
        return -EIO;
    }
}

/* Send q and map a non-2xx answer to an errno. */
static int s3_call(struct s3_store *m, const struct s3_req *q, struct s3_resp *p)
{
    int r = s3_do(m, q, p);
    if (r == 0 && !ok(p))
        r = status_errno(m, q, p);
    return r;
}

/* The full object key of key: PREFIX + key. */
static char *full_key(const struct s3_store *m, const char *key)
{
    char *s = NULL;
    return asprintf(&s, "%s%s", m->prefix, key) < 0 ? NULL : s;
}

/* ---- the delete queue ---- */

static bool delq_has_locked(const struct s3_store *m, const char *full)
{
    for (size_t i = 0; i < m->ndel; i++)
        if (!strcmp(m->delq[i], full))
            return true;
    return false;
}

static bool delq_has(struct s3_store *m, const char *full)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    return delq_has_locked(m, full);
}

/* Append s to the growing buffer (NULL-safe on allocation failure: *ok turns false). */
static void buf_add(char **buf, size_t *len, bool *good, const char *s)
{
    size_t n = strlen(s);
    char *grown = *good ? realloc(*buf, *len + n + 1) : NULL;
    if (!grown) {
        *good = false;
        return;
    }
    memcpy(grown + *len, s, n + 1);
    *buf = grown;
    *len += n;
}

/* key with XML's special characters escaped. */
static void buf_add_xml(char **buf, size_t *len, bool *good, const char *s)
{
    char one[2] = "";
    for (; *s; s++) {
        switch (*s) {
        case '&':
            buf_add(buf, len, good, "&amp;");
            break;
        case '<':
            buf_add(buf, len, good, "&lt;");
            break;
        case '>':
            buf_add(buf, len, good, "&gt;");
            break;
        default:
            one[0] = *s;
            buf_add(buf, len, good, one);
        }
    }
}

/* The outcome of a DeleteObjects answer: missing keys are fine; a refused one is -EACCES. */
static int delete_result(struct s3_store *m, const struct s3_resp *p)
{
    xmlDoc *doc = parse_xml(p);
    if (!doc)
        return 0; /* quiet mode and nothing to report */
    int r = 0;
    for (xmlNode *c = xmlDocGetRootElement(doc)->children; c; c = c->next) {
        if (c->type != XML_ELEMENT_NODE || strcmp((const char *)c->name, "Error"))
            continue;
        xmlChar *code = (xmlChar *)child_text(c, "Code");
        xmlChar *key = (xmlChar *)child_text(c, "Key");
        if (!code || strcmp((const char *)code, "NoSuchKey")) {
            log_warn("S3 endpoint %s: cannot delete %s/%s: %s", m->endpoint, m->bucket,
                     key ? (const char *)key : "", code ? (const char *)code : "error");
            if (r == 0)
                r = code && !strcmp((const char *)code, "AccessDenied") ? -EACCES : -EIO;
        }
        xmlFree(code);
        xmlFree(key);
    }
    xmlFreeDoc(doc);
    return r;
}

/* Delete the queued keys with DeleteObjects. */
static int delq_flush(struct s3_store *m)
{
    char **keys;
    size_t n;
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
        keys = m->delq;
        n = m->ndel;
        m->delq = NULL;
        m->ndel = 0;
    }
    if (!n) {
        free(keys);
        return 0;
    }
    CLEANUP_FREE char *xml = NULL;
    size_t len = 0;
    bool good = true;
    buf_add(&xml, &len, &good, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Delete><Quiet>true</Quiet>");
    for (size_t i = 0; i < n; i++) {
        buf_add(&xml, &len, &good, "<Object><Key>");
        buf_add_xml(&xml, &len, &good, keys[i]);
        buf_add(&xml, &len, &good, "</Key></Object>");
        free(keys[i]);
    }
    free(keys);
    buf_add(&xml, &len, &good, "</Delete>");
    if (!good)
        return -ENOMEM;
    /* DeleteObjects wants the body's MD5. */
    uint8_t md[MD5_LEN];
    unsigned mdlen = 0;
    EVP_Digest(xml, len, md, &mdlen, EVP_md5(), NULL);
    CLEANUP_FREE char *md5 = base64_encode(md, sizeof(md));
    CLEANUP_FREE char *hdr = NULL;
    if (!md5 || asprintf(&hdr, "Content-MD5: %s", md5) < 0) {
        hdr = NULL;
        return -ENOMEM;
    }
    struct curl_slist one = {.data = hdr, .next = NULL};
    struct s3_req q = {
        .method = "POST", .query = "delete=", .body = xml, .body_len = len, .headers = &one};
    struct s3_resp p;
    int r = s3_call(m, &q, &p);
    if (r == 0)
        r = delete_result(m, &p);
    resp_reset(&p);
    return r;
}

/* Queue full for deletion (flushing a full queue first). */
static int delq_add(struct s3_store *m, const char *full)
{
    for (;;) {
        {
            ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
            if (delq_has_locked(m, full))
                return 0;
            if (m->ndel < S3_DELETE_BATCH) {
                if (!m->delq) {
                    m->delq = calloc(S3_DELETE_BATCH, sizeof(*m->delq));
                    if (!m->delq)
                        return -ENOMEM;
                }
                char *copy = strdup(full);
                if (!copy)
                    return -ENOMEM;
                m->delq[m->ndel++] = copy;
                return 0;
            }
        }
        int r = delq_flush(m);
        if (r < 0)
            return r;
    }
}

/* ---- objects ---- */

/* The retention headers of a put when the repository is locked. */
static int retention_headers(const struct s3_store *m, const void *data, size_t len,
                             struct curl_slist **list)
{
    if (!m->lock_days)
        return 0;
    time_t until = time(NULL) + (time_t)m->lock_days * SECS_PER_DAY;
    struct tm tm;
    char date[64], hdr[128];
    gmtime_r(&until, &tm);
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm);
    uint8_t md[MD5_LEN];
    unsigned mdlen = 0;
    EVP_Digest(data ? data : "", len, md, &mdlen, EVP_md5(), NULL);
    CLEANUP_FREE char *md5 = base64_encode(md, sizeof(md));
    if (!md5)
        return -ENOMEM;
    const char *lines[3] = {"x-amz-object-lock-mode: COMPLIANCE", NULL, NULL};
    char md5hdr[64];
    snprintf(hdr, sizeof(hdr), "x-amz-object-lock-retain-until-date: %s", date);
    snprintf(md5hdr, sizeof(md5hdr), "Content-MD5: %s", md5);
    lines[1] = hdr;
    lines[2] = md5hdr;
    for (size_t i = 0; i < ARRAY_SIZE(lines); i++) {
        struct curl_slist *t = curl_slist_append(*list, lines[i]);
        if (!t)
            return -ENOMEM;
        *list = t;
    }
    return 0;
}

/* Put data under the full key; create: only when missing (*created false otherwise). */
static int put_full(struct s3_store *m, const char *full, const void *data, size_t len,
                    bool create, bool retain, bool *created, char *version, size_t vcap)
{
    *created = false;
    if (delq_has(m, full)) {
        int r = delq_flush(m); /* the delete must not come after the put */
        if (r < 0)
            return r;
    }
    struct curl_slist *headers = NULL;
    int r = retain ? retention_headers(m, data, len, &headers) : 0;
    if (r == 0 && create) {
        struct curl_slist *t = curl_slist_append(headers, "If-None-Match: *");
        if (!t)
            r = -ENOMEM;
        else
            headers = t;
    }
    if (r < 0) {
        curl_slist_free_all(headers);
        return r;
    }
    struct s3_req q = {
        .method = "PUT", .key = full, .body = data, .body_len = len, .headers = headers};
    struct s3_resp p;
    r = s3_do(m, &q, &p);
    if (r == 0 && ok(&p)) {
        *created = true;
        if (version)
            snprintf(version, vcap, "%s", p.version);
    } else if (r == 0 && create && (p.status == HTTP_PRECONDITION || p.status == HTTP_CONFLICT)) {
        r = 0; /* someone else's object of the same content won */
    } else if (r == 0) {
        r = status_errno(m, &q, &p);
    }
    resp_reset(&p);
    curl_slist_free_all(headers);
    return r;
}

static int s3_put(struct store *s, const char *key, const void *data, size_t len,
                  enum store_put_mode mode, bool *created)
{
    struct s3_store *m = s3(s);
    CLEANUP_FREE char *full = full_key(m, key);
    if (!full)
        return -ENOMEM;
    return put_full(m, full, data, len, mode == STORE_PUT_CREATE, true, created, NULL, 0);
}

static void s3_discard(struct store *s, struct store_staged *st)
{
    if (st->data)
        atomic_fetch_sub(&s3(s)->staged_bytes, st->len);
    if (st->fd >= 0)
        close(st->fd);
    free(st->key);
    free(st->data);
    free(st);
}

/* An unlinked temporary file holding data (O_TMPFILE, else a named one removed at once). */
static int spill(const void *data, size_t len, int *out)
{
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = S3_SPILL_DIR;
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, REPO_FILE_MODE);
    if (fd < 0) {
        char path[PATH_MAX];
        if ((size_t)snprintf(path, sizeof(path), "%s/vmexport-s3-XXXXXX", dir) >= sizeof(path))
            return -ENAMETOOLONG;
        fd = mkostemp(path, O_CLOEXEC);
        if (fd < 0)
            return -errno;
        unlink(path);
    }
    for (const uint8_t *p = data; len;) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = n < 0 ? errno : EIO;
            close(fd);
            return e == EDQUOT ? -ENOSPC : -e;
        }
        p += n;
        len -= (size_t)n;
    }
    *out = fd;
    return 0;
}

/* Staged objects wait in memory up to stage_memory bytes in all, beyond that in unlinked
 * temporary files: a backup stages up to its flush interval (512 MiB) of packs. */
static int s3_stage(struct store *s, const char *key, const void *data, size_t len,
                    struct store_staged **out)
{
    struct s3_store *m = s3(s);
    struct store_staged *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    st->fd = -1;
    st->len = len;
    st->key = strdup(key);
    if (!st->key) {
        s3_discard(s, st);
        return -ENOMEM;
    }
    int r = 0;
    if (atomic_fetch_add(&m->staged_bytes, len) + len <= m->stage_memory) {
        st->data = malloc(len ? len : 1);
        if (st->data)
            memcpy(st->data, data, len);
        else
            r = -ENOMEM;
    } else {
        r = spill(data, len, &st->fd);
    }
    if (!st->data)
        atomic_fetch_sub(&m->staged_bytes, len);
    if (r < 0) {
        s3_discard(s, st);
        return r;
    }
    *out = st;
    return 0;
}

/* Put one staged object, from memory or mapped from its file. */
static int commit_one(struct store *s, struct store_staged *st, bool *made)
{
    if (st->data || !st->len)
        return s3_put(s, st->key, st->data ? (const void *)st->data : "", st->len, STORE_PUT_CREATE,
                      made);
    void *map = mmap(NULL, st->len, PROT_READ, MAP_PRIVATE, st->fd, 0);
    if (map == MAP_FAILED)
        return -errno;
    int r = s3_put(s, st->key, map, st->len, STORE_PUT_CREATE, made);
    munmap(map, st->len);
    return r;
}

static int s3_commit(struct store *s, struct store_staged **staged, size_t n, bool *created)
{
    int r = 0;
    for (size_t i = 0; i < n; i++) {
        bool made = false;
        if (r == 0)
            r = commit_one(s, staged[i], &made);
        if (created)
            created[i] = made;
        s3_discard(s, staged[i]);
        staged[i] = NULL;
    }
    return r;
}

/* GET key into p (into q's buffer when given). */
static int get_full(struct s3_store *m, const char *key, struct s3_req *q, struct s3_resp *p)
{
    CLEANUP_FREE char *full = full_key(m, key);
    if (!full)
        return -ENOMEM;
    if (delq_has(m, full))
        return -ENOENT;
    q->method = "GET";
    q->key = full;
    int r = s3_do(m, q, p);
    if (r == 0 && p->too_big)
        return -EBADMSG;
    if (r == 0 && !ok(p))
        r = status_errno(m, q, p);
    return r;
}

static int s3_get(struct store *s, const char *key, uint64_t max, uint8_t **data, size_t *len)
{
    struct s3_store *m = s3(s);
    struct s3_req q = {.max = max ? max : 1};
    struct s3_resp p;
    int r = get_full(m, key, &q, &p);
    if (r == 0 && max == 0 && p.len)
        r = -EBADMSG;
    if (r == 0 && !p.body)
        p.body = calloc(1, 1); /* an empty object */
    if (r == 0 && !p.body)
        r = -ENOMEM;
    if (r == 0) {
        *data = p.body;
        *len = p.len;
        p.body = NULL;
    }
    resp_reset(&p);
    return r;
}

static int s3_get_into(struct store *s, const char *key, uint64_t max, uint8_t *buf, size_t cap,
                       size_t *len)
{
    struct s3_store *m = s3(s);
    if ((uintptr_t)buf % STORE_ALIGN)
        return -ENOBUFS;
    struct s3_req q = {.into = buf, .into_cap = max < cap ? (size_t)max : cap};
    struct s3_resp p;
    int r = get_full(m, key, &q, &p);
    if (r == -EBADMSG && p.content_length >= 0 && (uint64_t)p.content_length <= max)
        r = -ENOBUFS; /* fits the limit, not the buffer */
    if (r == 0 && (p.len + STORE_ALIGN - 1) / STORE_ALIGN * STORE_ALIGN > cap)
        r = -ENOBUFS;
    if (r == 0)
        *len = p.len;
    resp_reset(&p);
    return r;
}

static int s3_stat_object(struct s3_store *m, const char *full, struct s3_resp *p)
{
    struct s3_req q = {.method = "HEAD", .key = full};
    return s3_call(m, &q, p);
}

static int s3_get_range(struct store *s, const char *key, uint64_t off, size_t len, uint8_t *buf)
{
    struct s3_store *m = s3(s);
    char range[64];
    if (len == 0) {
        CLEANUP_FREE char *full = full_key(m, key);
        struct s3_resp p;
        int r = full ? s3_stat_object(m, full, &p) : -ENOMEM;
        if (r == 0 && (p.content_length < 0 || off > (uint64_t)p.content_length))
            r = -EBADMSG;
        resp_reset(&p);
        return r;
    }
    snprintf(range, sizeof(range), "Range: bytes=%llu-%llu", (unsigned long long)off,
             (unsigned long long)(off + len - 1));
    struct curl_slist one = {.data = range, .next = NULL};
    struct s3_req q = {.headers = &one, .into = buf, .into_cap = len};
    struct s3_resp p;
    int r = get_full(m, key, &q, &p);
    /* A 200 would be the whole object: only a 206 of exactly len bytes is the range. */
    if (r == 0 && (p.status != HTTP_PARTIAL || p.len != len))
        r = -EBADMSG;
    resp_reset(&p);
    return r;
}

/* ---- listings ---- */

struct s3_item {
    char *name; /* relative to the listed prefix, without a trailing '/' */
    bool prefix;
    uint64_t size;
    time_t mtime;
};

struct s3_page {
    struct s3_item *items;
    size_t n;
    char *next; /* continuation token, NULL at the end */
    time_t date;
};

static void page_clear(struct s3_page *pg)
{
    for (size_t i = 0; i < pg->n; i++)
        free(pg->items[i].name);
    free(pg->items);
    free(pg->next);
    *pg = (struct s3_page){0};
}

static time_t parse_iso8601(const char *s)
{
    struct tm tm = {0};
    if (!s || !strptime(s, "%Y-%m-%dT%H:%M:%S", &tm))
        return 0;
    return timegm(&tm);
}

/* Add an entry named full (minus the prefix of length plen, and a trailing '/'). */
static int page_add(struct s3_page *pg, size_t cap, const char *full, size_t plen, bool prefix,
                    uint64_t size, time_t mtime)
{
    if (strlen(full) <= plen || pg->n == cap)
        return 0;
    char *name = strdup(full + plen);
    if (!name)
        return -ENOMEM;
    size_t n = strlen(name);
    if (prefix && n && name[n - 1] == '/')
        name[n - 1] = '\0';
    pg->items[pg->n++] = (struct s3_item){.name = name, .prefix = prefix, .size = size,
                                          .mtime = mtime};
    return 0;
}

static int page_parse(const struct s3_resp *p, size_t plen, struct s3_page *pg)
{
    xmlDoc *doc = parse_xml(p);
    if (!doc)
        return -EBADMSG;
    xmlNode *root = xmlDocGetRootElement(doc);
    size_t cap = 0;
    for (xmlNode *c = root->children; c; c = c->next)
        cap++;
    pg->items = calloc(cap ? cap : 1, sizeof(*pg->items));
    int r = pg->items ? 0 : -ENOMEM;
    for (xmlNode *c = root->children; r == 0 && c; c = c->next) {
        if (c->type != XML_ELEMENT_NODE)
            continue;
        const char *name = (const char *)c->name;
        if (!strcmp(name, "Contents")) {
            xmlChar *key = (xmlChar *)child_text(c, "Key");
            xmlChar *size = (xmlChar *)child_text(c, "Size");
            xmlChar *lm = (xmlChar *)child_text(c, "LastModified");
            if (key)
                r = page_add(pg, cap, (const char *)key, plen, false,
                             size ? strtoull((const char *)size, NULL, 10) : 0,
                             parse_iso8601((const char *)lm));
            xmlFree(key);
            xmlFree(size);
            xmlFree(lm);
        } else if (!strcmp(name, "CommonPrefixes")) {
            xmlChar *pre = (xmlChar *)child_text(c, "Prefix");
            if (pre)
                r = page_add(pg, cap, (const char *)pre, plen, true, 0, 0);
            xmlFree(pre);
        } else if (!strcmp(name, "NextContinuationToken")) {
            xmlChar *tok = xmlNodeGetContent(c);
            free(pg->next);
            pg->next = tok ? strdup((const char *)tok) : NULL;
            xmlFree(tok);
        }
    }
    xmlChar *trunc = (xmlChar *)child_text(root, "IsTruncated");
    if (!trunc || strcmp((const char *)trunc, "true")) {
        free(pg->next);
        pg->next = NULL;
    }
    xmlFree(trunc);
    xmlFreeDoc(doc);
    pg->date = p->date;
    return r;
}

/* One ListObjectsV2 page of the keys under the full prefix pfx ("a/b/"), with the delimiter
 * "/" when delim, after token (NULL at the start), at most max_keys. */
static int list_page(struct s3_store *m, const char *pfx, bool delim, const char *token,
                     unsigned max_keys, struct s3_page *pg)
{
    *pg = (struct s3_page){0};
    CLEANUP_FREE char *epfx = uri_encode(pfx, false);
    CLEANUP_FREE char *etok = token ? uri_encode(token, false) : NULL;
    CLEANUP_FREE char *query = NULL;
    if (!epfx || (token && !etok))
        return -ENOMEM;
    /* The canonical query: parameters sorted by name. */
    if (asprintf(&query, "%s%s%s%slist-type=2&max-keys=%u&prefix=%s",
                 token ? "continuation-token=" : "", token ? etok : "", token ? "&" : "",
                 delim ? "delimiter=%2F&" : "", max_keys, epfx) < 0) {
        query = NULL;
        return -ENOMEM;
    }
    struct s3_req q = {.method = "GET", .query = query, .max = S3_LIST_BODY_MAX};
    struct s3_resp p;
    int r = s3_call(m, &q, &p);
    if (r == 0)
        r = page_parse(&p, strlen(pfx), pg);
    resp_reset(&p);
    if (r < 0)
        page_clear(pg);
    return r;
}

/* Whether any key lies under the full prefix pfx ("a/b/"). */
static int any_under(struct s3_store *m, const char *pfx, bool *any)
{
    struct s3_page pg;
    int r = list_page(m, pfx, false, NULL, 1, &pg);
    *any = r == 0 && pg.n > 0;
    page_clear(&pg);
    return r;
}

/* The page being walked by this thread's store_list, so that a delete from the callback knows
 * the object's size without asking the store. */
static __thread const struct s3_page *walk_page;
static __thread const char *walk_prefix;

static bool walk_size(const char *full, uint64_t *size)
{
    if (!walk_page)
        return false;
    size_t n = strlen(walk_prefix);
    if (strncmp(full, walk_prefix, n))
        return false;
    for (size_t i = 0; i < walk_page->n; i++)
        if (!walk_page->items[i].prefix && !strcmp(walk_page->items[i].name, full + n)) {
            *size = walk_page->items[i].size;
            return true;
        }
    return false;
}

/* The full prefix of a key prefix: "PREFIX/key/" ("PREFIX/" for ""). */
static char *full_prefix(const struct s3_store *m, const char *prefix)
{
    char *s = NULL;
    return asprintf(&s, "%s%s%s", m->prefix, prefix, *prefix ? "/" : "") < 0 ? NULL : s;
}

static int s3_list(struct store *s, const char *prefix, store_list_fn fn, void *opaque)
{
    struct s3_store *m = s3(s);
    CLEANUP_FREE char *pfx = full_prefix(m, prefix);
    if (!pfx)
        return -ENOMEM;
    int r = delq_flush(m); /* deleted keys are not listed */
    if (r < 0)
        return r;
    CLEANUP_FREE char *token = NULL;
    bool first = true;
    const struct s3_page *outer_page = walk_page;
    const char *outer_prefix = walk_prefix;
    do {
        struct s3_page pg;
        r = list_page(m, pfx, true, token, m->page_keys, &pg);
        if (r < 0)
            return r;
        if (first && !pg.n && *prefix) {
            /* Nothing under it: an object of that name, or an empty (virtual) prefix. */
            CLEANUP_FREE char *full = full_key(m, prefix);
            struct s3_resp p;
            r = full ? s3_stat_object(m, full, &p) : -ENOMEM;
            resp_reset(&p);
            page_clear(&pg);
            return r == 0 ? -ENOTDIR : r == -ENOENT ? 0 : r;
        }
        first = false;
        walk_page = &pg;
        walk_prefix = pfx;
        for (size_t i = 0; r == 0 && i < pg.n; i++) {
            struct store_entry e = {.name = pg.items[i].name, .prefix = pg.items[i].prefix};
            r = fn(opaque, &e);
        }
        walk_page = outer_page;
        walk_prefix = outer_prefix;
        free(token);
        token = TAKE_PTR(pg.next);
        page_clear(&pg);
    } while (r == 0 && token);
    return r;
}

static int s3_stat(struct store *s, const char *key, struct store_stat *st)
{
    struct s3_store *m = s3(s);
    if (!*key) {
        st->prefix = true;
        return 0;
    }
    CLEANUP_FREE char *full = full_key(m, key);
    if (!full)
        return -ENOMEM;
    if (delq_has(m, full))
        return -ENOENT;
    struct s3_resp p;
    int r = s3_stat_object(m, full, &p);
    if (r == 0)
        st->size = p.content_length > 0 ? (uint64_t)p.content_length : 0;
    resp_reset(&p);
    if (r != -ENOENT)
        return r;
    CLEANUP_FREE char *pfx = full_prefix(m, key);
    bool any = false;
    r = pfx ? delq_flush(m) : -ENOMEM;
    if (r == 0)
        r = any_under(m, pfx, &any);
    if (r == 0 && !any)
        r = -ENOENT;
    st->prefix = r == 0;
    return r;
}

/* ---- deletion and prefixes ---- */

/* Delete one version of a locked repository's object: the store refuses it while retained. */
static int del_version(struct s3_store *m, const char *full, const char *version)
{
    CLEANUP_FREE char *ever = uri_encode(version, false);
    CLEANUP_FREE char *query = NULL;
    if (!ever || asprintf(&query, "versionId=%s", ever) < 0) {
        query = NULL;
        return -ENOMEM;
    }
    struct s3_req q = {.method = "DELETE", .key = full, .query = query};
    struct s3_resp p;
    int r = s3_call(m, &q, &p);
    resp_reset(&p);
    return r;
}

static int s3_del(struct store *s, const char *key, uint64_t *bytes)
{
    struct s3_store *m = s3(s);
    CLEANUP_FREE char *full = full_key(m, key);
    if (!full)
        return -ENOMEM;
    if (delq_has(m, full))
        return -ENOENT;
    uint64_t size = 0;
    if (m->lock_days || !walk_size(full, &size)) {
        struct s3_resp p;
        int r = s3_stat_object(m, full, &p);
        size = p.content_length > 0 ? (uint64_t)p.content_length : 0;
        char version[sizeof(p.version)];
        snprintf(version, sizeof(version), "%s", p.version);
        resp_reset(&p);
        if (r < 0)
            return r;
        if (*version) {
            /* A versioned (locked) bucket: a plain delete would only hide the object. */
            r = del_version(m, full, version);
            if (r == 0)
                *bytes += size;
            return r;
        }
    }
    int r = delq_add(m, full);
    if (r == 0)
        *bytes += size;
    return r;
}

static int s3_sync_prefix(struct store *s, const char *prefix)
{
    (void)prefix;
    return delq_flush(s3(s));
}

static int s3_make_prefix(struct store *s, const char *prefix, bool exclusive)
{
    struct s3_store *m = s3(s);
    if (!exclusive)
        return 0;
    CLEANUP_FREE char *pfx = full_prefix(m, prefix);
    bool any = false;
    int r = pfx ? delq_flush(m) : -ENOMEM;
    if (r == 0)
        r = any_under(m, pfx, &any);
    return r == 0 && any ? -EEXIST : r;
}

static int s3_remove_prefix(struct store *s, const char *prefix)
{
    struct s3_store *m = s3(s);
    CLEANUP_FREE char *pfx = full_prefix(m, prefix);
    bool any = false;
    int r = pfx ? delq_flush(m) : -ENOMEM;
    if (r == 0)
        r = any_under(m, pfx, &any);
    return r == 0 && any ? -ENOTEMPTY : r;
}

static int s3_barrier(struct store *s)
{
    return delq_flush(s3(s));
}

/* ---- leases ---- */

static void lease_free(struct store_lease *l)
{
    if (!l)
        return;
    free(l->lock);
    free(l->key);
    free(l->version);
    free(l);
}

/* Write (create or rewrite) the lease object of l for seconds from now. */
static int lease_write(struct s3_store *m, struct store_lease *l, unsigned seconds)
{
    char host[HOST_NAME_MAX + 1] = "";
    gethostname(host, sizeof(host) - 1);
    json_t *o = json_pack("{s:s, s:I, s:I, s:s}", "host", host, "pid", (json_int_t)getpid(),
                          "expires", (json_int_t)(time(NULL) + seconds), "mode",
                          l->exclusive ? "exclusive" : "shared");
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    CLEANUP_FREE char *key = NULL;
    if (!text || asprintf(&key, "%s%s.%s.%u", l->lock, l->holder,
                          l->exclusive ? "exclusive" : "shared", seconds) < 0) {
        free(text);
        return -ENOMEM;
    }
    char version[sizeof(((struct s3_resp *)0)->version)] = "";
    bool created;
    int r = put_full(m, key, text, strlen(text), false, false, &created, version,
                     sizeof(version));
    free(text);
    if (r < 0)
        return r;
    /* The previous object of this lease (another name, or an older version) goes. */
    if (l->key && (strcmp(l->key, key) || l->version)) {
        if (l->version)
            del_version(m, l->key, l->version);
        else if (strcmp(l->key, key))
            delq_add(m, l->key), delq_flush(m);
    }
    free(l->key);
    free(l->version);
    l->key = TAKE_PTR(key);
    l->version = *version ? strdup(version) : NULL;
    l->seconds = seconds;
    return 0;
}

static void lease_remove(struct s3_store *m, struct store_lease *l)
{
    if (!l->key)
        return;
    if (l->version) {
        del_version(m, l->key, l->version);
    } else {
        struct s3_req q = {.method = "DELETE", .key = l->key};
        struct s3_resp p;
        s3_call(m, &q, &p);
        resp_reset(&p);
    }
    free(l->key);
    l->key = NULL;
    free(l->version);
    l->version = NULL;
}

/* Parse a lease name "<holder>.<mode>.<seconds>". */
static bool lease_parse(const char *name, char *holder, size_t hcap, bool *exclusive,
                        unsigned *seconds)
{
    const char *dot = strchr(name, '.');
    if (!dot || (size_t)(dot - name) >= hcap)
        return false;
    memcpy(holder, name, (size_t)(dot - name));
    holder[dot - name] = '\0';
    char mode[16];
    if (sscanf(dot + 1, "%15[a-z].%u", mode, seconds) != 2)
        return false;
    *exclusive = !strcmp(mode, "exclusive");
    return *exclusive || !strcmp(mode, "shared");
}

/* Whether another live lease of l's lock conflicts with it: 1 yes, 0 no.  Expired leases are
 * deleted on the way. */
static int lease_conflicts(struct s3_store *m, const struct store_lease *l)
{
    CLEANUP_FREE char *token = NULL;
    int found = 0;
    do {
        struct s3_page pg;
        int r = list_page(m, l->lock, true, token, S3_PAGE_KEYS, &pg);
        if (r < 0)
            return r;
        time_t now = pg.date ? pg.date : time(NULL);
        for (size_t i = 0; i < pg.n; i++) {
            char holder[64];
            bool excl;
            unsigned secs;
            if (pg.items[i].prefix ||
                !lease_parse(pg.items[i].name, holder, sizeof(holder), &excl, &secs) ||
                !strcmp(holder, l->holder))
                continue;
            if (pg.items[i].mtime + (time_t)secs < now) {
                CLEANUP_FREE char *full = NULL;
                if (asprintf(&full, "%s%s", l->lock, pg.items[i].name) >= 0)
                    delq_add(m, full);
                else
                    full = NULL;
                continue;
            }
            if (excl || l->exclusive)
                found = 1;
        }
        free(token);
        token = TAKE_PTR(pg.next);
        page_clear(&pg);
    } while (!found && token);
    delq_flush(m);
    return found;
}

static int s3_lock(struct store *s, const char *name, bool exclusive, unsigned lease_seconds,
                   int64_t deadline_ms, struct store_lease **out)
{
    struct s3_store *m = s3(s);
    struct store_lease *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->exclusive = exclusive;
    int r = repo_random_hex(l->holder, S3_LEASE_HEX);
    if (r == 0 && asprintf(&l->lock, "%s%s/", m->prefix, name) < 0) {
        l->lock = NULL;
        r = -ENOMEM;
    }
    while (r == 0) {
        r = lease_write(m, l, lease_seconds);
        if (r == 0)
            r = lease_conflicts(m, l);
        if (r == 0) {
            *out = l;
            return 0;
        }
        lease_remove(m, l);
        if (r > 0) {
            uint32_t rnd = 0;
            repo_random_bytes(&rnd, sizeof(rnd));
            r = store_lock_wait(deadline_ms);
            if (r == 0 && (deadline_ms == STORE_WAIT_FOREVER ||
                           deadline_ms - store_now_ms() > S3_LEASE_JITTER))
                nap_ms(rnd % S3_LEASE_JITTER);
        }
    }
    lease_free(l);
    return r;
}

static int s3_renew(struct store *s, struct store_lease *l, unsigned lease_seconds)
{
    struct s3_store *m = s3(s);
    if (!l->key)
        return -ETIMEDOUT;
    struct s3_resp p;
    int r = s3_stat_object(m, l->key, &p);
    time_t now = p.date ? p.date : time(NULL);
    bool expired = r == 0 && p.last_modified + (time_t)l->seconds < now;
    resp_reset(&p);
    if (r == -ENOENT || expired) {
        lease_remove(m, l);
        return -ETIMEDOUT;
    }
    return r < 0 ? r : lease_write(m, l, lease_seconds);
}

static void s3_unlock(struct store *s, struct store_lease *l)
{
    lease_remove(s3(s), l);
    lease_free(l);
}

/* ---- the store ---- */

static void s3_close(struct store *s)
{
    struct s3_store *m = s3(s);
    if (m->sigv4) /* opened: deletions still queued are sent */
        delq_flush(m);
    for (size_t i = 0; i < m->npool; i++)
        curl_easy_cleanup(m->pool[i]);
    for (size_t i = 0; i < m->ndel; i++)
        free(m->delq[i]);
    free(m->delq);
    pthread_mutex_destroy(&m->mu);
    free(m->endpoint);
    free(m->bucket);
    free(m->prefix);
    free(m->sigv4);
    if (m->secret_key)
        explicit_bzero(m->secret_key, strlen(m->secret_key));
    free(m->access_key);
    free(m->secret_key);
    free(m->ca_file);
    free(m->s.name);
    free(m);
}

static const struct store_ops s3_ops = {
    .kind = "s3",
    .put = s3_put,
    .stage = s3_stage,
    .commit = s3_commit,
    .discard = s3_discard,
    .get = s3_get,
    .get_into = s3_get_into,
    .get_range = s3_get_range,
    .stat = s3_stat,
    .list = s3_list,
    .del = s3_del,
    .sync_prefix = s3_sync_prefix,
    .make_prefix = s3_make_prefix,
    .remove_prefix = s3_remove_prefix,
    .barrier = s3_barrier,
    .lock = s3_lock,
    .renew = s3_renew,
    .unlock = s3_unlock,
    .close = s3_close,
};

void store_s3_set_lock_days(struct store *s, unsigned days)
{
    if (s && !strcmp(s->ops->kind, "s3"))
        s3(s)->lock_days = days;
}

static const char *param_or_env(const char *given, const char *env)
{
    if (given && *given)
        return given;
    const char *v = getenv(env);
    return v && *v ? v : NULL;
}

/* Split where ("BUCKET/PREFIX", from url) into the store's bucket and prefix ("" or "dir/"). */
static int parse_url(struct s3_store *m, const char *url, const char *where, char *err,
                     size_t errlen)
{
    const char *b = where;
    const char *slash = strchr(b, '/');
    size_t blen = slash ? (size_t)(slash - b) : strlen(b);
    if (!blen) {
        store_set_err(err, errlen, "%s: no bucket name (s3://BUCKET/PREFIX)", url);
        return -EINVAL;
    }
    m->bucket = strndup(b, blen);
    const char *pre = slash ? slash + 1 : "";
    size_t plen = strlen(pre);
    while (plen && pre[plen - 1] == '/')
        plen--;
    if (!m->bucket || asprintf(&m->prefix, "%.*s%s", (int)plen, pre, plen ? "/" : "") < 0) {
        m->prefix = NULL;
        return -ENOMEM;
    }
    for (const char *p = m->bucket; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' ||
              *p == '_')) {
            store_set_err(err, errlen, "%s: bucket name \"%s\" has a character S3 does not allow",
                         url, m->bucket);
            return -EINVAL;
        }
    if (strstr(m->prefix, "//")) {
        store_set_err(err, errlen, "%s: empty path component in the prefix", url);
        return -EINVAL;
    }
    return 0;
}

/* Make the bucket (with Object Lock when lock_days). */
static int bucket_create(struct s3_store *m, const char *region, char *err, size_t errlen)
{
    CLEANUP_FREE char *body = NULL;
    struct curl_slist *headers = NULL;
    /* AWS wants the region named unless it is us-east-1; others ignore it or accept it. */
    if (strcmp(region, S3_DEFAULT_REGION) && strstr(m->endpoint, "amazonaws.com") &&
        asprintf(&body,
                 "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                 "<LocationConstraint>%s</LocationConstraint></CreateBucketConfiguration>",
                 region) < 0) {
        body = NULL;
        return -ENOMEM;
    }
    if (m->lock_days) {
        headers = curl_slist_append(NULL, "x-amz-bucket-object-lock-enabled: true");
        if (!headers)
            return -ENOMEM;
    }
    struct s3_req q = {.method = "PUT",
                       .body = body,
                       .body_len = body ? strlen(body) : 0,
                       .headers = headers};
    struct s3_resp p;
    int r = s3_do(m, &q, &p);
    char code[64] = "";
    if (r == 0 && !ok(&p))
        error_code(&p, code, sizeof(code));
    if (r == 0 && !ok(&p) && strcmp(code, "BucketAlreadyOwnedByYou")) {
        r = p.status == HTTP_FORBIDDEN ? -EACCES : -EIO;
        store_set_err(err, errlen, "%s: cannot create bucket %s: HTTP %ld %s%s", m->s.name,
                     m->bucket, p.status, code,
                     r == -EACCES ? " (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)" : "");
    } else if (r < 0) {
        store_set_err(err, errlen, "%s: cannot reach the S3 endpoint %s: %s", m->s.name,
                     m->endpoint, strerror(-r));
    }
    resp_reset(&p);
    curl_slist_free_all(headers);
    return r;
}

/* Whether the existing bucket has Object Lock enabled. */
static int bucket_locked(struct s3_store *m, bool *locked)
{
    struct s3_req q = {.method = "GET", .query = "object-lock="};
    struct s3_resp p;
    *locked = false;
    int r = s3_do(m, &q, &p);
    if (r == 0 && ok(&p)) {
        xmlDoc *doc = parse_xml(&p);
        xmlChar *en = doc ? (xmlChar *)child_text(xmlDocGetRootElement(doc), "ObjectLockEnabled")
                          : NULL;
        *locked = en && !strcmp((const char *)en, "Enabled");
        xmlFree(en);
        xmlFreeDoc(doc);
    }
    resp_reset(&p);
    return r;
}

/* Check that the bucket exists and the keys work (HEAD bucket); make it when create. */
static int bucket_check(struct s3_store *m, const char *region, bool create, char *err,
                        size_t errlen)
{
    struct s3_req q = {.method = "HEAD"};
    struct s3_resp p;
    int r = s3_do(m, &q, &p);
    long status = p.status;
    resp_reset(&p);
    if (r < 0) {
        store_set_err(err, errlen, "%s: cannot reach the S3 endpoint %s: %s", m->s.name,
                     m->endpoint, strerror(-r));
        return r;
    }
    if (status == HTTP_FORBIDDEN) {
        store_set_err(err, errlen,
                     "%s: access denied to bucket %s at %s (check AWS_ACCESS_KEY_ID / "
                     "AWS_SECRET_ACCESS_KEY)",
                     m->s.name, m->bucket, m->endpoint);
        return -EACCES;
    }
    if (status == HTTP_NOT_FOUND && create)
        return bucket_create(m, region, err, errlen);
    if (status == HTTP_NOT_FOUND) {
        store_set_err(err, errlen, "%s: bucket %s does not exist (vmexport repo init creates it)",
                     m->s.name, m->bucket);
        return -ENOENT;
    }
    if (status < HTTP_OK_MIN || status > HTTP_OK_MAX) {
        store_set_err(err, errlen,
                     "%s: bucket %s at %s: HTTP %ld (a wrong region? AWS_DEFAULT_REGION is %s)",
                     m->s.name, m->bucket, m->endpoint, status, region);
        return -EIO;
    }
    if (create && m->lock_days) {
        bool locked = false;
        r = bucket_locked(m, &locked);
        if (r == 0 && !locked) {
            store_set_err(err, errlen,
                         "%s: bucket %s exists without Object Lock: --lock-days needs a bucket "
                         "created with it (let vmexport repo init create the bucket)",
                         m->s.name, m->bucket);
            return -EINVAL;
        }
    }
    return r;
}

int store_s3_open(const char *url, const char *where, const struct store_options *o, bool create,
                  struct store **out, char *err, size_t errlen)
{
    static const struct store_options none = {0};
    const struct store_options *pp = o ? o : &none;
    *out = NULL;
    pthread_once(&global_once, global_init);
    if (global_status < 0)
        return global_status;
    const char *key = getenv("AWS_ACCESS_KEY_ID"), *secret = getenv("AWS_SECRET_ACCESS_KEY");
    if (!key || !*key || !secret || !*secret) {
        store_set_err(err, errlen, "%s: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", url);
        return -EINVAL;
    }
    struct s3_store *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->s.ops = &s3_ops;
    pthread_mutex_init(&m->mu, NULL);
    const char *region = param_or_env(pp->s3_region, "AWS_DEFAULT_REGION");
    if (!region)
        region = S3_DEFAULT_REGION;
    const char *endpoint = param_or_env(pp->s3_endpoint, "VMEXPORT_S3_ENDPOINT");
    const char *ca = param_or_env(pp->s3_ca_file, "VMEXPORT_S3_CA");
    int r = 0;
    m->s.name = strdup(url);
    m->access_key = strdup(key);
    m->secret_key = strdup(secret);
    m->ca_file = ca ? strdup(ca) : NULL;
    m->lock_days = pp->lock_days;
    /* Tests shorten the pages to cross page boundaries with a few keys. */
    const char *page = getenv("VMEXPORT_S3_LIST_PAGE");
    m->page_keys = page && atoi(page) > 0 && atoi(page) < S3_PAGE_KEYS ? (unsigned)atoi(page)
                                                                        : S3_PAGE_KEYS;
    /* ... and may send every staged object through a temporary file. */
    const char *mem = getenv("VMEXPORT_S3_STAGE_MEMORY");
    m->stage_memory = mem && *mem ? strtoull(mem, NULL, 10) : S3_STAGE_MEMORY;
    if (endpoint)
        m->endpoint = strdup(endpoint);
    else if (!strcmp(region, S3_DEFAULT_REGION))
        m->endpoint = strdup(S3_AWS_ENDPOINT);
    else if (asprintf(&m->endpoint, "https://s3.%s.amazonaws.com", region) < 0)
        m->endpoint = NULL;
    if (!m->s.name || !m->access_key || !m->secret_key || (ca && !m->ca_file) || !m->endpoint ||
        asprintf(&m->sigv4, "aws:amz:%s:s3", region) < 0) {
        m->sigv4 = NULL;
        r = -ENOMEM;
    }
    if (r == 0) {
        size_t n = strlen(m->endpoint);
        while (n && m->endpoint[n - 1] == '/')
            m->endpoint[--n] = '\0';
        if (strncmp(m->endpoint, "http://", 7) && strncmp(m->endpoint, "https://", 8)) {
            store_set_err(err, errlen, "S3 endpoint %s: not an http:// or https:// URL",
                         m->endpoint);
            r = -EINVAL;
        }
    }
    if (r == 0)
        r = parse_url(m, url, where, err, errlen);
    if (r == 0)
        r = bucket_check(m, region, create, err, errlen);
    if (r == 0 && create) {
        CLEANUP_FREE char *pfx = strdup(m->prefix);
        bool any = false;
        r = pfx ? any_under(m, pfx, &any) : -ENOMEM;
        if (r == 0 && any) {
            store_set_err(err, errlen, "%s: exists and is not empty", url);
            r = -EEXIST;
        }
    }
    if (r < 0) {
        if (r == -ENOMEM)
            store_set_err(err, errlen, "%s: %s", url, strerror(-r));
        free(m->sigv4);
        m->sigv4 = NULL; /* nothing to flush */
        s3_close(&m->s);
        return r;
    }
    *out = &m->s;
    return 0;
}
