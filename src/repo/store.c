/* The store interface's dispatch (store.h): opening the store a repository URL names, the
 * calls through a store's vtable, and what every store shares: the monotonic clock of lock
 * deadlines and the poll of a waiting lock.
 */
#include "repo/store.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"

#define LOCK_POLL_MS 50 /* how often a waiting lock retries */
#define NS_PER_MS    1000000
#define MS_PER_SEC   1000

void store_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

enum store_url_kind store_url_kind(const char *url)
{
    if (!strncmp(url, STORE_URL_RADOS, strlen(STORE_URL_RADOS)))
        return STORE_URL_KIND_RADOS;
    if (!strncmp(url, STORE_URL_S3, strlen(STORE_URL_S3)))
        return STORE_URL_KIND_S3;
    return STORE_URL_LOCAL;
}

static int open_local(const char *path, bool create, struct store **out, char *err, size_t errlen)
{
    int r = create ? store_local_create(path, out) : store_local_open(path, out);
    if (r == -EEXIST && create)
        store_set_err(err, errlen, "%s: exists and is not an empty directory", path);
    else if (r < 0)
        store_set_err(err, errlen, "%s: %s", path, strerror(-r));
    return r;
}

#ifndef VMEXPORT_HAVE_RADOS
int store_rados_open(const char *url, const char *where, const struct store_options *o, bool create,
                     struct store **out, char *err, size_t errlen)
{
    (void)where;
    (void)o;
    (void)create;
    (void)out;
    store_set_err(err, errlen,
                  "%s: this vmexport was built without librados: RADOS repositories are not "
                  "available (install librados-dev and rebuild)",
                  url);
    return -EPROTONOSUPPORT;
}
#endif

#ifndef VMEXPORT_HAVE_S3
int store_s3_open(const char *url, const char *where, const struct store_options *o, bool create,
                  struct store **out, char *err, size_t errlen)
{
    (void)where;
    (void)o;
    (void)create;
    (void)out;
    store_set_err(err, errlen, "%s: S3 repositories are not available in this vmexport", url);
    return -EPROTONOSUPPORT;
}
#endif

int store_open_url(const char *url, const struct store_options *o, bool create, struct store **out,
                   char *err, size_t errlen)
{
    static const struct store_options defaults = {0};
    *out = NULL;
    store_set_err(err, errlen, "%s", "");
    if (!o)
        o = &defaults;
    switch (store_url_kind(url)) {
    case STORE_URL_KIND_RADOS:
        return store_rados_open(url, url + strlen(STORE_URL_RADOS), o, create, out, err, errlen);
    case STORE_URL_KIND_S3:
        return store_s3_open(url, url + strlen(STORE_URL_S3), o, create, out, err, errlen);
    case STORE_URL_LOCAL:
        break;
    }
    return open_local(url, create, out, err, errlen);
}

int store_put(struct store *s, const char *key, const void *data, size_t len,
              enum store_put_mode mode, bool *created)
{
    bool dummy;
    return s->ops->put(s, key, data, len, mode, created ? created : &dummy);
}

int store_stage(struct store *s, const char *key, const void *data, size_t len,
                struct store_staged **out)
{
    *out = NULL;
    return s->ops->stage(s, key, data, len, out);
}

int store_commit(struct store *s, struct store_staged **staged, size_t n, bool *created)
{
    return s->ops->commit(s, staged, n, created);
}

void store_discard(struct store *s, struct store_staged *st)
{
    if (st)
        s->ops->discard(s, st);
}

int store_get(struct store *s, const char *key, uint64_t max, uint8_t **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    return s->ops->get(s, key, max, data, len);
}

int store_get_into(struct store *s, const char *key, uint64_t max, uint8_t *buf, size_t cap,
                   size_t *len)
{
    *len = 0;
    return s->ops->get_into(s, key, max, buf, cap, len);
}

int store_get_range(struct store *s, const char *key, uint64_t off, size_t len, uint8_t *buf)
{
    return s->ops->get_range(s, key, off, len, buf);
}

int store_exists(struct store *s, const char *key, bool *prefix)
{
    struct store_stat st;
    int r = s->ops->stat(s, key, &st);
    if (r == 0 && prefix)
        *prefix = st.prefix;
    return r;
}

int store_stat(struct store *s, const char *key, struct store_stat *st)
{
    *st = (struct store_stat){0};
    return s->ops->stat(s, key, st);
}

int store_list(struct store *s, const char *prefix, store_list_fn fn, void *opaque)
{
    return s->ops->list(s, prefix, fn, opaque);
}

/* store_walk by recursion with store_list: the key under the walk's prefix so far in rel. */
struct walk_ctx {
    struct store *s;
    const char *top; /* the walk's prefix */
    char rel[PATH_MAX];
    store_list_fn fn;
    void *opaque;
};

static int walk_dir(struct walk_ctx *w);

static int walk_entry(void *opaque, const struct store_entry *e)
{
    struct walk_ctx *w = opaque;
    size_t len = strlen(w->rel);
    if ((size_t)snprintf(w->rel + len, sizeof(w->rel) - len, "%s%s", len ? "/" : "", e->name) >=
        sizeof(w->rel) - len) {
        w->rel[len] = '\0';
        return -ENAMETOOLONG;
    }
    int r;
    if (e->prefix) {
        r = walk_dir(w);
        if (r == -ENOENT || r == -ENOTDIR)
            r = 0; /* gone meanwhile */
    } else {
        struct store_entry obj = {.name = w->rel, .prefix = false};
        r = w->fn(w->opaque, &obj);
    }
    w->rel[len] = '\0';
    return r;
}

static int walk_dir(struct walk_ctx *w)
{
    char key[PATH_MAX];
    const char *sep = *w->top && *w->rel ? "/" : "";
    if ((size_t)snprintf(key, sizeof(key), "%s%s%s", w->top, sep, w->rel) >= sizeof(key))
        return -ENAMETOOLONG;
    return w->s->ops->list(w->s, key, walk_entry, w);
}

int store_walk(struct store *s, const char *prefix, store_list_fn fn, void *opaque)
{
    if (s->ops->walk)
        return s->ops->walk(s, prefix, fn, opaque);
    struct walk_ctx *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    *w = (struct walk_ctx){.s = s, .top = prefix, .fn = fn, .opaque = opaque};
    int r = walk_dir(w);
    free(w);
    return r;
}

int store_del(struct store *s, const char *key, uint64_t *bytes)
{
    uint64_t dummy = 0;
    return s->ops->del(s, key, bytes ? bytes : &dummy);
}

int store_sync_prefix(struct store *s, const char *prefix)
{
    return s->ops->sync_prefix(s, prefix);
}

int store_make_prefix(struct store *s, const char *prefix, bool exclusive)
{
    return s->ops->make_prefix(s, prefix, exclusive);
}

int store_remove_prefix(struct store *s, const char *prefix)
{
    return s->ops->remove_prefix(s, prefix);
}

int store_barrier(struct store *s)
{
    return s->ops->barrier(s);
}

int store_lock(struct store *s, const char *name, bool exclusive, unsigned lease_seconds,
               int64_t deadline_ms, struct store_lease **out)
{
    *out = NULL;
    return s->ops->lock(s, name, exclusive, lease_seconds, deadline_ms, out);
}

int store_renew(struct store *s, struct store_lease *l, unsigned lease_seconds)
{
    return s->ops->renew(s, l, lease_seconds);
}

void store_unlock(struct store *s, struct store_lease *l)
{
    if (l)
        s->ops->unlock(s, l);
}

void store_close(struct store *s)
{
    if (s)
        s->ops->close(s);
}

const char *store_name(const struct store *s)
{
    return s->name;
}

int64_t store_now_ms(void)
{
    return (int64_t)(clock_monotonic_ns() / NS_PER_MS);
}

int64_t store_deadline(unsigned timeout_seconds)
{
    return store_now_ms() + (int64_t)timeout_seconds * MS_PER_SEC;
}

int store_lock_wait(int64_t deadline_ms)
{
    int64_t nap = LOCK_POLL_MS;
    if (deadline_ms != STORE_WAIT_FOREVER) {
        int64_t left = deadline_ms - store_now_ms();
        if (left <= 0)
            return -EBUSY;
        if (left < nap)
            nap = left;
    }
    struct timespec ts = {.tv_sec = 0, .tv_nsec = nap * NS_PER_MS};
    nanosleep(&ts, NULL);
    return 0;
}
