/* The RADOS store: a repository in a Ceph pool and namespace (rados://POOL/NAMESPACE) through
 * librados.
 *
 * Keys are object names in the namespace ("config", "packs/ab/<name>", "locks/repo.lock"), so
 * the objects read as the files of a directory repository.  A write is durable when librados
 * acknowledges it (every replica has it).  A put that replaces is one write_full, atomic; a put
 * that creates is one write operation of an exclusive create and a write_full, so that of two
 * creators one gets -EEXIST (*created false).  Staged puts wait in memory (up to STAGE_MEMORY
 * bytes in all, the rest in unlinked temporary files) and are written at commit, each an
 * exclusive create, a window of them in flight at once: nothing is visible before the commit, and
 * nothing of a staged put is ever left in the pool.
 *
 * Prefixes are virtual: a prefix exists while an object's name starts with it and a '/'.
 * Listing walks the namespace's objects (librados lists a namespace, not a prefix) and passes
 * on the direct children of the prefix, each sub-prefix once (a sorted set of the sub-prefixes
 * seen: the repository's fan-out is 256).  make_prefix, sync_prefix and barrier do nothing;
 * an exclusive make_prefix and remove_prefix look for any object under the prefix.
 *
 * Locks are cls_lock locks named LOCK_NAME on the lock's object (created by the lock), shared
 * or exclusive, with the lease as their duration: a holder that dies frees the lock when its
 * lease ends.  A renewal that finds the lease ended (by our clock or by the OSD's) answers
 * -ETIMEDOUT.
 *
 * Connecting is bounded (RADOS_MOUNT_TIMEOUT) and so is every operation (RADOS_OP_TIMEOUT), so
 * that a dead cluster fails in seconds; transient errors are retried with a backoff.
 */
#include "repo/store.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <rados/librados.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/strlist.h"
#include "repo/repo_internal.h"

#define DEFAULT_CEPH_ID "admin"
#define CLIENT_PREFIX   "client." /* of a cephx user name, not part of CEPH_ID */
/* Seconds to reach the monitors (client_mount_timeout) and for a monitor or OSD operation
 * (rados_mon_op_timeout, rados_osd_op_timeout) when ceph.conf does not ask for less. */
#define RADOS_MOUNT_TIMEOUT 10
#define RADOS_OP_TIMEOUT    30
/* Transient errors: tries, and the first pause (doubling). */
#define RETRY_TRIES    5
#define RETRY_FIRST_MS 200
#define NS_PER_MS      1000000
#define MS_PER_SEC     1000
/* Largest single read (rados_read returns an int). */
#define READ_PIECE ((size_t)64 << 20)
/* Largest object written when the cluster does not say (osd_max_write_size, MiB). */
#define DEFAULT_MAX_WRITE_MB 90
/* The cls_lock lock on a lock object, its tag (shared holders must agree) and cookies. */
#define LOCK_NAME    "vmexport"
#define LOCK_TAG     "vmexport"
#define COOKIE_BYTES 8
#define DESC_MAX     128
/* Staged bytes held in memory (VMEXPORT_RADOS_STAGE_MEMORY for tests), the rest in temporary
 * files in TMPDIR or SPILL_DIR; objects a commit has in flight at once. */
#define STAGE_MEMORY        ((size_t)64 << 20)
#define STAGE_MEM_ENV       "VMEXPORT_RADOS_STAGE_MEMORY"
#define SPILL_DIR           "/var/tmp"
#define COMMIT_WINDOW       16
#define COMMIT_WINDOW_BYTES ((size_t)64 << 20)

struct rados_store {
    struct store s;
    rados_t cluster;
    rados_ioctx_t io;
    size_t max_write;    /* largest object one write may carry */
    size_t stage_memory; /* staged bytes held in memory at most */
    pthread_mutex_t mu;  /* staged_memory */
    size_t staged_memory;
};

struct store_staged {
    char *key;
    uint8_t *data; /* in memory, or */
    int fd;        /* in an unlinked temporary file (-1: in memory) */
    size_t len;
};

struct store_lease {
    char *oid;
    char cookie[2 * COOKIE_BYTES + 1];
    bool exclusive;
    int64_t expires_ms; /* CLOCK_MONOTONIC; INT64_MAX: no expiry */
};

static struct rados_store *rs_of(struct store *s)
{
    return (struct rados_store *)s;
}

/* ---- retries ---- */

static bool transient(int r)
{
    return r == -EAGAIN || r == -ENOTCONN || r == -ECONNRESET || r == -ESHUTDOWN ||
           r == -ECONNREFUSED;
}

/* Whether to try again after r (sleeping the backoff first); *attempt counts the tries.  A
 * timeout is not retried: librados resent the operation until RADOS_OP_TIMEOUT already. */
static bool retry(int r, unsigned *attempt)
{
    if (!transient(r) || ++*attempt >= RETRY_TRIES)
        return false;
    int64_t ms = (int64_t)RETRY_FIRST_MS << (*attempt - 1);
    struct timespec ts = {.tv_sec = ms / MS_PER_SEC, .tv_nsec = (ms % MS_PER_SEC) * NS_PER_MS};
    nanosleep(&ts, NULL);
    return true;
}

/* ---- objects ---- */

/* One write op of an exclusive create and the whole data: 0, or -EEXIST when key exists. */
static int create_exclusive(struct rados_store *rs, const char *key, const void *data, size_t len)
{
    int r;
    unsigned attempt = 0;
    do {
        rados_write_op_t op = rados_create_write_op();
        if (!op)
            return -ENOMEM;
        rados_write_op_create(op, LIBRADOS_CREATE_EXCLUSIVE, NULL);
        rados_write_op_write_full(op, data, len);
        r = rados_write_op_operate(op, rs->io, key, NULL, 0);
        rados_release_write_op(op);
    } while (retry(r, &attempt));
    return r;
}

static int rs_put(struct store *s, const char *key, const void *data, size_t len,
                  enum store_put_mode mode, bool *created)
{
    struct rados_store *rs = rs_of(s);
    *created = false;
    if (len > rs->max_write)
        return -EFBIG;
    int r;
    if (mode == STORE_PUT_REPLACE) {
        unsigned attempt = 0;
        do
            r = rados_write_full(rs->io, key, data, len);
        while (retry(r, &attempt));
        *created = r == 0;
        return r;
    }
    r = create_exclusive(rs, key, data, len);
    if (r == -EEXIST)
        return 0;
    *created = r == 0;
    return r;
}

/* Give back st's share of the staging memory and free it. */
static void staged_free(struct rados_store *rs, struct store_staged *st)
{
    if (st->fd >= 0) {
        close(st->fd);
    } else {
        pthread_mutex_lock(&rs->mu);
        rs->staged_memory -= st->len;
        pthread_mutex_unlock(&rs->mu);
    }
    free(st->key);
    free(st->data);
    free(st);
}

/* An unlinked temporary file holding the len bytes at data (in TMPDIR, else SPILL_DIR). */
static int spill_file(const void *data, size_t len)
{
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = SPILL_DIR;
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, REPO_FILE_MODE);
    if (fd < 0)
        return -errno;
    const uint8_t *p = data;
    size_t left = len;
    while (left) {
        ssize_t n = write(fd, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int r = n < 0 ? (errno == EDQUOT ? -ENOSPC : -errno) : -EIO;
            close(fd);
            return r;
        }
        p += n;
        left -= (size_t)n;
    }
    return fd;
}

/* Staged objects wait in memory up to rs->stage_memory bytes in all (a backup stages up to a
 * flush's worth, 512 MiB, before it commits), the others in unlinked temporary files. */
static int rs_stage(struct store *s, const char *key, const void *data, size_t len,
                    struct store_staged **out)
{
    struct rados_store *rs = rs_of(s);
    if (len > rs->max_write)
        return -EFBIG;
    struct store_staged *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    st->fd = -1;
    st->len = len;
    if (!(st->key = strdup(key))) {
        free(st);
        return -ENOMEM;
    }
    pthread_mutex_lock(&rs->mu);
    bool in_memory = rs->staged_memory + len <= rs->stage_memory;
    if (in_memory)
        rs->staged_memory += len;
    pthread_mutex_unlock(&rs->mu);
    if (!in_memory) {
        st->fd = spill_file(data, len);
        if (st->fd < 0) {
            int r = st->fd;
            free(st->key);
            free(st);
            return r;
        }
    } else if ((st->data = malloc(len ? len : 1))) {
        memcpy(st->data, data, len);
    } else {
        staged_free(rs, st);
        return -ENOMEM;
    }
    *out = st;
    return 0;
}

/* The bytes of st: in memory, or its file mapped (*map, unmapped by the caller). */
static int staged_bytes(struct store_staged *st, const char **bytes, void **map)
{
    *map = NULL;
    if (st->fd < 0) {
        *bytes = (const char *)st->data;
        return 0;
    }
    if (!st->len) {
        *bytes = "";
        return 0;
    }
    *map = mmap(NULL, st->len, PROT_READ, MAP_PRIVATE, st->fd, 0);
    if (*map == MAP_FAILED) {
        *map = NULL;
        return -errno;
    }
    *bytes = *map;
    return 0;
}

/* One exclusive create in flight. */
struct inflight {
    rados_write_op_t op;
    rados_completion_t comp;
    int r; /* set when it could not be sent */
};

/* Send the exclusive create of st; f->r is its error when it was not sent.  librados copies
 * the data into the operation, so a temporary file's mapping ends here. */
static void commit_send(struct rados_store *rs, struct store_staged *st, struct inflight *f)
{
    const char *bytes = NULL; /* set by staged_bytes: GCC -O3 cannot tell */
    void *map = NULL;
    *f = (struct inflight){0};
    f->r = staged_bytes(st, &bytes, &map);
    if (f->r < 0)
        return;
    f->op = rados_create_write_op();
    if (f->op && rados_aio_create_completion2(NULL, NULL, &f->comp) == 0) {
        rados_write_op_create(f->op, LIBRADOS_CREATE_EXCLUSIVE, NULL);
        rados_write_op_write_full(f->op, bytes, st->len);
        f->r = rados_aio_write_op_operate(f->op, rs->io, f->comp, st->key, NULL, 0);
    } else {
        f->comp = NULL;
        f->r = -ENOMEM;
    }
    if (map)
        munmap(map, st->len);
}

/* Wait for f (f->r: its error when it was not sent): 0, -EEXIST (someone created the key
 * first) or an error; transient errors are tried again synchronously. */
static int commit_wait(struct rados_store *rs, struct store_staged *st, struct inflight *f)
{
    int r = f->r;
    if (r == 0) {
        rados_aio_wait_for_complete(f->comp);
        r = rados_aio_get_return_value(f->comp);
    }
    if (f->comp)
        rados_aio_release(f->comp);
    if (f->op)
        rados_release_write_op(f->op);
    if (transient(r)) {
        const char *bytes = NULL;
        void *map = NULL;
        r = staged_bytes(st, &bytes, &map);
        if (r == 0)
            r = create_exclusive(rs, st->key, bytes, st->len);
        if (map)
            munmap(map, st->len);
    }
    return r;
}

/* Objects are sent in windows of at most COMMIT_WINDOW objects and COMMIT_WINDOW_BYTES (at
 * least one object), a window's all in flight at once: librados holds a copy of each. */
static int rs_commit(struct store *s, struct store_staged **staged, size_t n, bool *created)
{
    struct rados_store *rs = rs_of(s);
    struct inflight window[COMMIT_WINDOW];
    int ret = 0;
    for (size_t base = 0; base < n;) {
        size_t m = 0, bytes = 0;
        while (base + m < n && m < COMMIT_WINDOW &&
               (!m || bytes + staged[base + m]->len <= COMMIT_WINDOW_BYTES)) {
            bytes += staged[base + m]->len;
            if (ret == 0)
                commit_send(rs, staged[base + m], &window[m]);
            else
                window[m] = (struct inflight){.r = ret}; /* an earlier one failed */
            m++;
        }
        for (size_t i = 0; i < m; i++) {
            struct store_staged *st = staged[base + i];
            int r = commit_wait(rs, st, &window[i]);
            if (created)
                created[base + i] = r == 0;
            if (r < 0 && r != -EEXIST && ret == 0)
                ret = r;
            staged_free(rs, st);
            staged[base + i] = NULL;
        }
        base += m;
    }
    return ret;
}

static void rs_discard(struct store *s, struct store_staged *st)
{
    staged_free(rs_of(s), st);
}

static int object_size(struct rados_store *rs, const char *key, uint64_t *size)
{
    int r;
    unsigned attempt = 0;
    time_t mtime;
    do
        r = rados_stat(rs->io, key, size, &mtime);
    while (retry(r, &attempt));
    return r;
}

/* len bytes of key from off into buf: -EBADMSG when the object ends before. */
static int read_range(struct rados_store *rs, const char *key, uint64_t off, size_t len,
                      uint8_t *buf)
{
    size_t got = 0;
    while (got < len) {
        size_t want = len - got > READ_PIECE ? READ_PIECE : len - got;
        int r;
        unsigned attempt = 0;
        do
            r = rados_read(rs->io, key, (char *)buf + got, want, off + got);
        while (retry(r, &attempt));
        if (r < 0)
            return r;
        if (r == 0)
            return -EBADMSG; /* shorter than asked (or it shrank under us) */
        got += (size_t)r;
    }
    return 0;
}

/* The size of key, at most max (else -EBADMSG). */
static int sized(struct rados_store *rs, const char *key, uint64_t max, size_t *size)
{
    uint64_t sz;
    int r = object_size(rs, key, &sz);
    if (r < 0)
        return r;
    if (sz > max || sz > SIZE_MAX)
        return -EBADMSG;
    *size = (size_t)sz;
    return 0;
}

static int rs_get(struct store *s, const char *key, uint64_t max, uint8_t **data, size_t *len)
{
    struct rados_store *rs = rs_of(s);
    size_t size;
    int r = sized(rs, key, max, &size);
    if (r < 0)
        return r;
    CLEANUP_FREE uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return -ENOMEM;
    r = read_range(rs, key, 0, size, buf);
    if (r < 0)
        return r;
    *data = TAKE_PTR(buf);
    *len = size;
    return 0;
}

static int rs_get_into(struct store *s, const char *key, uint64_t max, uint8_t *buf, size_t cap,
                       size_t *len)
{
    struct rados_store *rs = rs_of(s);
    size_t size;
    int r = sized(rs, key, max, &size);
    if (r < 0)
        return r;
    if ((size + STORE_ALIGN - 1) / STORE_ALIGN * STORE_ALIGN > cap || (uintptr_t)buf % STORE_ALIGN)
        return -ENOBUFS;
    r = read_range(rs, key, 0, size, buf);
    if (r == 0)
        *len = size;
    return r;
}

static int rs_get_range(struct store *s, const char *key, uint64_t off, size_t len, uint8_t *buf)
{
    return read_range(rs_of(s), key, off, len, buf);
}

/* ---- the namespace walk ---- */

/* Called with each object's name; non-zero stops the walk and is returned. */
typedef int (*object_fn)(void *opaque, const char *oid);

static int walk_objects(struct rados_store *rs, object_fn fn, void *opaque)
{
    rados_list_ctx_t ctx;
    int r;
    unsigned attempt = 0;
    do
        r = rados_nobjects_list_open(rs->io, &ctx);
    while (retry(r, &attempt));
    if (r < 0)
        return r;
    const char *entry;
    while ((r = rados_nobjects_list_next(ctx, &entry, NULL, NULL)) == 0) {
        r = fn(opaque, entry);
        if (r != 0)
            break;
    }
    rados_nobjects_list_close(ctx);
    return r == -ENOENT ? 0 : r; /* -ENOENT: the end */
}

/* The part of oid under prefix ("" the root), or NULL when it is not under it. */
static const char *under(const char *oid, const char *prefix, size_t plen)
{
    if (!plen)
        return oid;
    return !strncmp(oid, prefix, plen) && oid[plen] == '/' ? oid + plen + 1 : NULL;
}

struct any_ctx {
    const char *prefix;
    size_t plen;
};

static int any_entry(void *opaque, const char *oid)
{
    struct any_ctx *c = opaque;
    const char *rest = under(oid, c->prefix, c->plen);
    return rest && *rest ? 1 : 0;
}

/* 1 when an object is under prefix ("" the whole namespace), 0 when none, or a negative errno. */
static int any_under(struct rados_store *rs, const char *prefix)
{
    struct any_ctx c = {.prefix = prefix, .plen = strlen(prefix)};
    return walk_objects(rs, any_entry, &c);
}

static int rs_stat(struct store *s, const char *key, struct store_stat *st)
{
    struct rados_store *rs = rs_of(s);
    if (!*key) {
        st->prefix = true;
        return 0;
    }
    st->prefix = false;
    int r = object_size(rs, key, &st->size);
    if (r != -ENOENT)
        return r;
    r = any_under(rs, key);
    if (r < 0)
        return r;
    st->prefix = true;
    return r ? 0 : -ENOENT;
}

struct list_ctx {
    const char *prefix;
    size_t plen;
    store_list_fn fn;
    void *opaque;
    string_list seen; /* sub-prefixes passed on, sorted */
};

/* Add name to the sorted set: 1 when it is new, 0 when it was there, -ENOMEM. */
static int seen_add(string_list *set, const char *name)
{
    size_t lo = 0, hi = set->len;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(set->ptr[mid], name);
        if (c == 0)
            return 0;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    char *copy = strdup(name);
    if (!copy || string_list_append(set, copy) < 0) {
        free(copy);
        return -ENOMEM;
    }
    memmove(set->ptr + lo + 1, set->ptr + lo, (set->len - 1 - lo) * sizeof(*set->ptr));
    set->ptr[lo] = copy;
    return 1;
}

static int list_entry(void *opaque, const char *oid)
{
    struct list_ctx *c = opaque;
    const char *rest = under(oid, c->prefix, c->plen);
    if (!rest || !*rest)
        return 0;
    const char *slash = strchr(rest, '/');
    if (!slash) {
        struct store_entry e = {.name = rest, .prefix = false};
        return c->fn(c->opaque, &e);
    }
    size_t n = (size_t)(slash - rest);
    if (!n || n > NAME_MAX)
        return 0; /* "a//b": no name a directory could have */
    char name[NAME_MAX + 1];
    memcpy(name, rest, n);
    name[n] = '\0';
    int r = seen_add(&c->seen, name);
    if (r <= 0)
        return r;
    struct store_entry e = {.name = name, .prefix = true};
    return c->fn(c->opaque, &e);
}

/* A prefix to walk must not be an object itself: 0, -ENOTDIR, or the store's error. */
static int prefix_not_object(struct rados_store *rs, const char *prefix)
{
    if (!*prefix)
        return 0;
    uint64_t size;
    int r = object_size(rs, prefix, &size);
    if (r == 0)
        return -ENOTDIR;
    return r == -ENOENT ? 0 : r;
}

static int rs_list(struct store *s, const char *prefix, store_list_fn fn, void *opaque)
{
    struct rados_store *rs = rs_of(s);
    int pr = prefix_not_object(rs, prefix);
    if (pr < 0)
        return pr;
    struct list_ctx c = {
        .prefix = prefix, .plen = strlen(prefix), .fn = fn, .opaque = opaque, .seen = VECTOR_INIT};
    int r = walk_objects(rs, list_entry, &c);
    string_list_free(&c.seen);
    return r;
}

struct deep_ctx {
    const char *prefix;
    size_t plen;
    store_list_fn fn;
    void *opaque;
};

static int deep_entry(void *opaque, const char *oid)
{
    struct deep_ctx *c = opaque;
    const char *rest = under(oid, c->prefix, c->plen);
    if (!rest || !*rest)
        return 0;
    struct store_entry e = {.name = rest, .prefix = false};
    return c->fn(c->opaque, &e);
}

/* One walk of the namespace for the whole tree. */
static int rs_walk(struct store *s, const char *prefix, store_list_fn fn, void *opaque)
{
    struct rados_store *rs = rs_of(s);
    int pr = prefix_not_object(rs, prefix);
    if (pr < 0)
        return pr;
    struct deep_ctx c = {.prefix = prefix, .plen = strlen(prefix), .fn = fn, .opaque = opaque};
    return walk_objects(rs, deep_entry, &c);
}

static int rs_del(struct store *s, const char *key, uint64_t *bytes)
{
    struct rados_store *rs = rs_of(s);
    uint64_t size;
    int r = object_size(rs, key, &size);
    if (r < 0)
        return r;
    unsigned attempt = 0;
    do
        r = rados_remove(rs->io, key);
    while (retry(r, &attempt));
    if (r == 0)
        *bytes += size;
    return r;
}

static int rs_noop_prefix(struct store *s, const char *prefix)
{
    (void)s;
    (void)prefix;
    return 0; /* every write is durable when acknowledged */
}

static int rs_make_prefix(struct store *s, const char *prefix, bool exclusive)
{
    if (!exclusive)
        return 0;
    int r = any_under(rs_of(s), prefix);
    return r < 0 ? r : r ? -EEXIST : 0;
}

static int rs_remove_prefix(struct store *s, const char *prefix)
{
    int r = any_under(rs_of(s), prefix);
    return r < 0 ? r : r ? -ENOTEMPTY : 0;
}

static int rs_barrier(struct store *s)
{
    (void)s;
    return 0;
}

/* ---- locks ---- */

/* Take (or with flags LIBRADOS_LOCK_FLAG_MUST_RENEW, extend) the cls_lock of l. */
static int lock_call(struct rados_store *rs, struct store_lease *l, unsigned lease_seconds,
                     uint8_t flags)
{
    char host[HOST_NAME_MAX + 1] = "?", desc[DESC_MAX];
    gethostname(host, sizeof(host));
    host[sizeof(host) - 1] = '\0';
    snprintf(desc, sizeof(desc), "vmexport on %.64s, pid %ld", host, (long)getpid());
    struct timeval tv = {.tv_sec = lease_seconds, .tv_usec = 0};
    struct timeval *duration = lease_seconds ? &tv : NULL;
    int r;
    unsigned attempt = 0;
    do
        r = l->exclusive
                ? rados_lock_exclusive(rs->io, l->oid, LOCK_NAME, l->cookie, desc, duration, flags)
                : rados_lock_shared(rs->io, l->oid, LOCK_NAME, l->cookie, LOCK_TAG, desc, duration,
                                    flags);
    while (retry(r, &attempt));
    return r;
}

static int64_t lease_end(int64_t start_ms, unsigned lease_seconds)
{
    return lease_seconds ? start_ms + (int64_t)lease_seconds * MS_PER_SEC : INT64_MAX;
}

static void lease_free(struct store_lease *l)
{
    free(l->oid);
    free(l);
}

static int rs_lock(struct store *s, const char *name, bool exclusive, unsigned lease_seconds,
                   int64_t deadline_ms, struct store_lease **out)
{
    struct rados_store *rs = rs_of(s);
    struct store_lease *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->exclusive = exclusive;
    l->oid = strdup(name);
    int r = l->oid ? repo_random_hex(l->cookie, COOKIE_BYTES) : -ENOMEM;
    while (r == 0) {
        int64_t start = store_now_ms();
        r = lock_call(rs, l, lease_seconds, 0);
        if (r == 0) {
            l->expires_ms = lease_end(start, lease_seconds);
            *out = l;
            return 0;
        }
        if (r == -EBUSY)
            r = store_lock_wait(deadline_ms);
    }
    lease_free(l);
    return r;
}

static int rs_renew(struct store *s, struct store_lease *l, unsigned lease_seconds)
{
    int64_t start = store_now_ms();
    if (start >= l->expires_ms)
        return -ETIMEDOUT; /* another holder may have taken it meanwhile */
    int r = lock_call(rs_of(s), l, lease_seconds, LIBRADOS_LOCK_FLAG_MUST_RENEW);
    if (r == -ENOENT || r == -EBUSY)
        return -ETIMEDOUT; /* the OSD dropped it as expired, or someone else holds it */
    if (r == 0)
        l->expires_ms = lease_end(start, lease_seconds);
    return r;
}

static void rs_unlock(struct store *s, struct store_lease *l)
{
    rados_unlock(rs_of(s)->io, l->oid, LOCK_NAME, l->cookie); /* -ENOENT: it had expired */
    lease_free(l);
}

static void rs_close(struct store *s)
{
    struct rados_store *rs = rs_of(s);
    if (rs->io)
        rados_ioctx_destroy(rs->io);
    if (rs->cluster)
        rados_shutdown(rs->cluster);
    pthread_mutex_destroy(&rs->mu);
    free(s->name);
    free(rs);
}

static const struct store_ops rados_ops = {
    .kind = "rados",
    .put = rs_put,
    .stage = rs_stage,
    .commit = rs_commit,
    .discard = rs_discard,
    .get = rs_get,
    .get_into = rs_get_into,
    .get_range = rs_get_range,
    .stat = rs_stat,
    .list = rs_list,
    .walk = rs_walk,
    .del = rs_del,
    .sync_prefix = rs_noop_prefix,
    .make_prefix = rs_make_prefix,
    .remove_prefix = rs_remove_prefix,
    .barrier = rs_barrier,
    .lock = rs_lock,
    .renew = rs_renew,
    .unlock = rs_unlock,
    .close = rs_close,
};

/* ---- connecting ---- */

/* Lower the timeout option to seconds when ceph.conf leaves it higher or unbounded (0). */
static void cap_timeout(rados_t cluster, const char *option, unsigned seconds)
{
    char buf[64];
    if (rados_conf_get(cluster, option, buf, sizeof(buf)) == 0) {
        double v = strtod(buf, NULL);
        if (v > 0 && v <= seconds)
            return;
    }
    snprintf(buf, sizeof(buf), "%u", seconds);
    rados_conf_set(cluster, option, buf);
}

/* Configure and connect rs->cluster as client.id; err says why not. */
static int connect_cluster(struct rados_store *rs, const char *url, const char *id,
                           const char *conf, char *err, size_t errlen)
{
    int r = rados_create(&rs->cluster, id);
    if (r < 0) {
        store_set_err(err, errlen, "%s: librados: %s", url, strerror(-r));
        return r;
    }
    /* Our messages say what failed; librados' own would repeat it on stderr. */
    rados_conf_set(rs->cluster, "log_to_stderr", "false");
    rados_conf_set(rs->cluster, "err_to_stderr", "false");
    r = rados_conf_read_file(rs->cluster, conf);
    if (r < 0) {
        if (conf)
            store_set_err(err, errlen, "%s: ceph.conf %s: %s", url, conf, strerror(-r));
        else
            store_set_err(err, errlen,
                          "%s: no ceph.conf found in the default places (give one with "
                          "CEPH_CONF or --ceph-conf)",
                          url);
        return r;
    }
    rados_conf_parse_env(rs->cluster, NULL); /* CEPH_ARGS */
    /* No admin socket: a ceph.conf naming one per client name would have every vmexport
     * process of one user on one path, and a process resumed after a pause (SIGSTOP) then
     * answered another's probe of it on a closed connection: SIGPIPE killed it. */
    rados_conf_set(rs->cluster, "admin_socket", "");
    const char *keyring = getenv("CEPH_KEYRING");
    if (keyring && *keyring)
        rados_conf_set(rs->cluster, "keyring", keyring);
    cap_timeout(rs->cluster, "client_mount_timeout", RADOS_MOUNT_TIMEOUT);
    cap_timeout(rs->cluster, "rados_mon_op_timeout", RADOS_MOUNT_TIMEOUT);
    cap_timeout(rs->cluster, "rados_osd_op_timeout", RADOS_OP_TIMEOUT);

    r = rados_connect(rs->cluster);
    if (r == 0)
        return 0;
    char mons[256] = "";
    rados_conf_get(rs->cluster, "mon_host", mons, sizeof(mons));
    const char *conf_name = conf ? conf : "the default ceph.conf";
    if (r == -ETIMEDOUT || r == -ECONNREFUSED)
        store_set_err(err, errlen,
                      "%s: no answer from the Ceph monitors (%s, from %s) within %d s: is the "
                      "cluster up?",
                      url, mons[0] ? mons : "none configured", conf_name, RADOS_MOUNT_TIMEOUT);
    else if (r == -EACCES || r == -EPERM || r == -ENOENT)
        store_set_err(err, errlen,
                      "%s: Ceph refused client.%s: no valid key for it (check CEPH_ID or "
                      "--ceph-id, and the keyring %s names)",
                      url, id, conf_name);
    else if (r == -EINVAL && !mons[0])
        store_set_err(err, errlen, "%s: %s names no Ceph monitor (mon_host)", url, conf_name);
    else
        store_set_err(err, errlen, "%s: cannot connect to Ceph as client.%s: %s", url, id,
                      strerror(-r));
    return r;
}

/* The configured limit of one write (osd_max_write_size, in MiB). */
static size_t max_write_size(rados_t cluster)
{
    char buf[64];
    long mb = DEFAULT_MAX_WRITE_MB;
    if (rados_conf_get(cluster, "osd_max_write_size", buf, sizeof(buf)) == 0) {
        long v = strtol(buf, NULL, 10);
        if (v > 0)
            mb = v;
    }
    return (size_t)mb << 20;
}

int store_rados_open(const char *url, const char *where, const struct store_options *o, bool create,
                     struct store **out, char *err, size_t errlen)
{
    const char *slash = strchr(where, '/');
    size_t pool_len = slash ? (size_t)(slash - where) : strlen(where);
    if (!pool_len) {
        store_set_err(err, errlen, "%s: no pool: the URL is rados://POOL/NAMESPACE", url);
        return -EINVAL;
    }
    CLEANUP_FREE char *pool = strndup(where, pool_len);
    const char *ns = slash ? slash + 1 : "";
    const char *id = o->ceph_id ? o->ceph_id : getenv("CEPH_ID");
    if (!id || !*id)
        id = DEFAULT_CEPH_ID;
    if (!strncmp(id, CLIENT_PREFIX, strlen(CLIENT_PREFIX)))
        id += strlen(CLIENT_PREFIX);
    const char *conf = o->ceph_conf ? o->ceph_conf : getenv("CEPH_CONF");
    if (conf && !*conf)
        conf = NULL;

    struct rados_store *rs = calloc(1, sizeof(*rs));
    if (!rs || !pool || !(rs->s.name = strdup(url))) {
        free(rs);
        return -ENOMEM;
    }
    rs->s.ops = &rados_ops;
    pthread_mutex_init(&rs->mu, NULL);
    const char *mem = getenv(STAGE_MEM_ENV);
    rs->stage_memory = mem && *mem ? (size_t)strtoull(mem, NULL, 10) : STAGE_MEMORY;
    int r = connect_cluster(rs, url, id, conf, err, errlen);
    if (r == 0) {
        rs->max_write = max_write_size(rs->cluster);
        r = rados_ioctx_create(rs->cluster, pool, &rs->io);
        if (r == -ENOENT)
            store_set_err(err, errlen,
                          "%s: Ceph pool %s does not exist (create it: ceph osd pool create %s)",
                          url, pool, pool);
        else if (r < 0)
            store_set_err(err, errlen, "%s: pool %s: %s", url, pool, strerror(-r));
    }
    if (r == 0)
        rados_ioctx_set_namespace(rs->io, ns);
    if (r == 0 && create) {
        r = any_under(rs, "");
        if (r > 0) {
            store_set_err(err, errlen,
                          "%s: the namespace holds objects already: a new repository needs an "
                          "empty one",
                          url);
            r = -EEXIST;
        } else if (r < 0) {
            store_set_err(err, errlen, "%s: cannot list the namespace: %s", url, strerror(-r));
        }
    }
    if (r < 0) {
        rs_close(&rs->s);
        return r;
    }
    *out = &rs->s;
    return 0;
}
