/* A store in memory, for tests (store_mem.h): objects and explicit prefixes in one table (a
 * linear one: test repositories hold a few hundred objects), listings a page at a time without
 * the table's lock held during the callback, leases on a clock the test moves, and the faults
 * store_mem_fault() arms: failed, torn and full puts, failed gets, deletes and commits, crashes.
 */
#include "repo/store_mem.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cleanup.h"
#include "core/lock.h"
#include "core/vector.h"
#include "repo/repo_internal.h"

#define LIST_PAGE  64   /* entries a listing gathers per visit of the table */
#define REQ_KINDS  16   /* top-level prefixes whose requests are counted apart */
#define REQ_NAME   32   /* longest such prefix counted */
#define MS_PER_SEC 1000 /* lease seconds to clock milliseconds */

struct mem_obj {
    char *key;
    uint8_t *data;
    size_t len;
    bool prefix; /* an explicit prefix (directory) */
};

struct mem_lock {
    char *name;
    bool exclusive;
    int64_t expires_ms;
    uint64_t id;
};

struct store_staged {
    char *key;
    uint8_t *data;
    size_t len;
    bool live; /* in the store's list of staged objects (not orphaned by a crash) */
};

struct store_lease {
    uint64_t id;  /* its struct mem_lock */
    unsigned gen; /* the process generation that took it */
};

DEFINE_VECTOR_TYPE(mem_obj_list, struct mem_obj);
DEFINE_VECTOR_TYPE(mem_lock_list, struct mem_lock);
DEFINE_VECTOR_TYPE(mem_staged_list, struct store_staged *);

struct mem_store {
    struct store s;
    pthread_mutex_t mu; /* everything below */
    mem_obj_list objs;
    mem_lock_list locks;
    mem_staged_list staged; /* live staged objects, left as temporary ones by a crash */
    enum store_fault fault;
    unsigned countdown; /* matching calls until the fault fires */
    bool fired, crashed, full;
    unsigned gen; /* process generation: a restart starts the next */
    uint64_t next_lock_id;
    unsigned tmp_seq;
    int64_t clock_offset_ms;
    uint64_t requests; /* store_mem_requests() */
    struct {
        char name[REQ_NAME];
        uint64_t n;
    } req_by[REQ_KINDS];
};

static struct mem_store *mem(struct store *s)
{
    return (struct mem_store *)s;
}

static int64_t now_ms(const struct mem_store *m)
{
    return store_now_ms() + m->clock_offset_ms;
}

/* Count a request on key (by its first component).  Called locked. */
static void count(struct mem_store *m, const char *key)
{
    m->requests++;
    size_t n = strcspn(key, "/");
    if (n == 0 || n >= REQ_NAME)
        return;
    for (size_t i = 0; i < REQ_KINDS; i++) {
        if (!m->req_by[i].name[0]) {
            memcpy(m->req_by[i].name, key, n);
            m->req_by[i].name[n] = '\0';
        }
        if (strlen(m->req_by[i].name) == n && !strncmp(m->req_by[i].name, key, n)) {
            m->req_by[i].n++;
            return;
        }
    }
}

/* Whether the armed fault fires at this call of kind f (also counting it).  Called locked. */
static bool fault_hits(struct mem_store *m, enum store_fault f)
{
    if (m->fault != f || !m->countdown)
        return false;
    if (--m->countdown)
        return false;
    m->fired = true;
    return true;
}

/* The error a write gets before it acts: -EIO after a crash (or one now), -ENOSPC when full,
 * -EIO for an injected failure of kind f.  Called locked. */
static int write_check(struct mem_store *m, enum store_fault f);

/* ---- the table ---- */

static ssize_t find(const struct mem_store *m, const char *key)
{
    for (size_t i = 0; i < m->objs.len; i++)
        if (!strcmp(m->objs.ptr[i].key, key))
            return (ssize_t)i;
    return -1;
}

/* The part of key under prefix ("" the root), or NULL when key is not under it. */
static const char *under(const char *key, const char *prefix)
{
    size_t n = strlen(prefix);
    if (!n)
        return key;
    return !strncmp(key, prefix, n) && key[n] == '/' ? key + n + 1 : NULL;
}

static bool has_children(const struct mem_store *m, const char *prefix)
{
    for (size_t i = 0; i < m->objs.len; i++)
        if (under(m->objs.ptr[i].key, prefix))
            return true;
    return false;
}

/* 1 a prefix, 0 an object, -ENOENT neither. */
static int kind_of(const struct mem_store *m, const char *key)
{
    if (!*key)
        return 1;
    ssize_t i = find(m, key);
    if (i >= 0)
        return m->objs.ptr[i].prefix ? 1 : 0;
    return has_children(m, key) ? 1 : -ENOENT;
}

/* A copy of the len bytes at data (never NULL unless out of memory, also for len 0). */
static uint8_t *bytes_dup(const void *data, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (copy && len)
        memcpy(copy, data, len);
    return copy;
}

static int insert(struct mem_store *m, const char *key, const void *data, size_t len, bool prefix)
{
    struct mem_obj o = {
        .key = strdup(key), .data = bytes_dup(data, len), .len = len, .prefix = prefix};
    if (!o.key || !o.data || mem_obj_list_append(&m->objs, o) < 0) {
        free(o.key);
        free(o.data);
        return -ENOMEM;
    }
    return 0;
}

static void remove_at(struct mem_store *m, size_t i)
{
    free(m->objs.ptr[i].key);
    free(m->objs.ptr[i].data);
    m->objs.ptr[i] = m->objs.ptr[--m->objs.len];
}

/* The directory part of key into a new string ("" for the root). */
static char *parent_of(const char *key)
{
    const char *slash = strrchr(key, '/');
    return strndup(key, slash ? (size_t)(slash - key) : 0);
}

/* Make prefix, one level only (its parent must be one, as in a directory store); an existing
 * one is fine unless exclusive.  Called locked. */
static int make_prefix(struct mem_store *m, const char *prefix, bool exclusive)
{
    int kind = kind_of(m, prefix);
    if (kind == 0)
        return -ENOTDIR;
    if (kind == 1)
        return exclusive ? -EEXIST : 0;
    CLEANUP_FREE char *parent = parent_of(prefix);
    if (!parent)
        return -ENOMEM;
    if (kind_of(m, parent) != 1)
        return -ENOENT;
    return insert(m, prefix, NULL, 0, true);
}

/* Make key's parent prefix when missing. */
static int make_parent(struct mem_store *m, const char *key)
{
    CLEANUP_FREE char *parent = parent_of(key);
    return parent ? make_prefix(m, parent, false) : -ENOMEM;
}

/* Put data under key (create or replace).  Called locked. */
static int store_object(struct mem_store *m, const char *key, const void *data, size_t len,
                        bool replace, bool *created)
{
    *created = false;
    ssize_t i = find(m, key);
    if (i >= 0 && m->objs.ptr[i].prefix)
        return -EISDIR;
    if (i >= 0 && !replace)
        return 0;
    if (i >= 0) {
        uint8_t *copy = bytes_dup(data, len);
        if (!copy)
            return -ENOMEM;
        free(m->objs.ptr[i].data);
        m->objs.ptr[i].data = copy;
        m->objs.ptr[i].len = len;
        *created = true;
        return 0;
    }
    int r = make_parent(m, key);
    if (r == 0)
        r = insert(m, key, data, len, false);
    *created = r == 0;
    return r;
}

/* Leave data under a temporary name next to key, as an interrupted write does. */
static void leave_tmp(struct mem_store *m, const char *key, const void *data, size_t len)
{
    char name[PATH_MAX];
    bool created;
    if ((size_t)snprintf(name, sizeof(name), "%s" REPO_TMP_MARK "crash%u", key, m->tmp_seq++) <
        sizeof(name))
        store_object(m, name, data, len, true, &created);
}

/* The process dies: staged objects stay behind as temporary files.  Called locked. */
static void crash_locked(struct mem_store *m)
{
    m->crashed = true;
    for (size_t i = 0; i < m->staged.len; i++) {
        leave_tmp(m, m->staged.ptr[i]->key, m->staged.ptr[i]->data, m->staged.ptr[i]->len);
        m->staged.ptr[i]->live = false;
    }
    m->staged.len = 0;
}

static int write_check(struct mem_store *m, enum store_fault f)
{
    if (m->crashed)
        return -EIO;
    if (fault_hits(m, STORE_FAULT_CRASH)) {
        crash_locked(m);
        return -EIO;
    }
    if (f != STORE_FAULT_DEL && fault_hits(m, STORE_FAULT_NOSPC))
        m->full = true;
    if (m->full && f != STORE_FAULT_DEL)
        return -ENOSPC;
    return fault_hits(m, f) ? -EIO : 0;
}

/* The error a put or a stage of data under key gets before it acts: write_check's, or -EIO
 * for a torn put, which leaves half of data behind as a temporary object and crashes.  Called
 * locked. */
static int put_check(struct mem_store *m, const char *key, const void *data, size_t len)
{
    if (!m->crashed && fault_hits(m, STORE_FAULT_TEAR)) {
        leave_tmp(m, key, data, len / 2);
        crash_locked(m);
        return -EIO;
    }
    return write_check(m, STORE_FAULT_PUT);
}

/* ---- objects ---- */

static int mem_put(struct store *s, const char *key, const void *data, size_t len,
                   enum store_put_mode mode, bool *created)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    *created = false;
    count(m, key);
    int r = put_check(m, key, data, len);
    if (r < 0)
        return r;
    return store_object(m, key, data, len, mode == STORE_PUT_REPLACE, created);
}

static void staged_free(struct store_staged *st)
{
    free(st->key);
    free(st->data);
    free(st);
}

/* Take st out of the list of live staged objects.  Called locked. */
static void unlist_staged(struct mem_store *m, struct store_staged *st)
{
    for (size_t i = 0; st->live && i < m->staged.len; i++)
        if (m->staged.ptr[i] == st) {
            m->staged.ptr[i] = m->staged.ptr[--m->staged.len];
            st->live = false;
        }
}

static int mem_stage(struct store *s, const char *key, const void *data, size_t len,
                     struct store_staged **out)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    int r = put_check(m, key, data, len);
    if (r < 0)
        return r;
    struct store_staged *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    st->key = strdup(key);
    st->data = bytes_dup(data, len);
    st->len = len;
    if (!st->key || !st->data || mem_staged_list_append(&m->staged, st) < 0) {
        staged_free(st);
        return -ENOMEM;
    }
    st->live = true;
    *out = st;
    return 0;
}

static int mem_commit(struct store *s, struct store_staged **staged, size_t n, bool *created)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    int r = n ? write_check(m, STORE_FAULT_COMMIT) : 0;
    /* An injected commit failure publishes the first half: each published object is whole and
     * durable, as on an object store that puts them one by one. */
    size_t publish = r == -EIO && !m->crashed ? n / 2 : r < 0 ? 0 : n;
    for (size_t i = 0; i < n; i++) {
        bool made = false;
        count(m, staged[i]->key); /* each object is uploaded at the commit */
        unlist_staged(m, staged[i]);
        if (i < publish) {
            int pr = store_object(m, staged[i]->key, staged[i]->data, staged[i]->len, false, &made);
            if (pr < 0 && r == 0) {
                r = pr;
                publish = i;
            }
        }
        if (created)
            created[i] = made;
        staged_free(staged[i]);
        staged[i] = NULL;
    }
    return r;
}

static void mem_discard(struct store *s, struct store_staged *st)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    unlist_staged(m, st);
    staged_free(st);
}

/* The object key for reading, or a negative errno.  Called locked. */
static int read_check(struct mem_store *m, const char *key, uint64_t max, ssize_t *at)
{
    count(m, key);
    if (m->crashed || fault_hits(m, STORE_FAULT_GET))
        return -EIO;
    ssize_t i = find(m, key);
    if (i < 0)
        return -ENOENT;
    if (m->objs.ptr[i].prefix || m->objs.ptr[i].len > max)
        return -EBADMSG;
    *at = i;
    return 0;
}

static int mem_get(struct store *s, const char *key, uint64_t max, uint8_t **data, size_t *len)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    ssize_t i;
    int r = read_check(m, key, max, &i);
    if (r < 0)
        return r;
    uint8_t *buf = bytes_dup(m->objs.ptr[i].data, m->objs.ptr[i].len);
    if (!buf)
        return -ENOMEM;
    *data = buf;
    *len = m->objs.ptr[i].len;
    return 0;
}

static int mem_get_into(struct store *s, const char *key, uint64_t max, uint8_t *buf, size_t cap,
                        size_t *len)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    ssize_t i;
    int r = read_check(m, key, max, &i);
    if (r < 0)
        return r;
    size_t n = m->objs.ptr[i].len;
    if ((n + STORE_ALIGN - 1) / STORE_ALIGN * STORE_ALIGN > cap || (uintptr_t)buf % STORE_ALIGN)
        return -ENOBUFS;
    memcpy(buf, m->objs.ptr[i].data, n);
    *len = n;
    return 0;
}

static int mem_get_range(struct store *s, const char *key, uint64_t off, size_t len, uint8_t *buf)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    ssize_t i;
    int r = read_check(m, key, UINT64_MAX, &i);
    if (r < 0)
        return r;
    size_t n = m->objs.ptr[i].len;
    if (off > n || len > n - off)
        return -EBADMSG;
    memcpy(buf, m->objs.ptr[i].data + off, len);
    return 0;
}

static int mem_stat(struct store *s, const char *key, struct store_stat *st)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    count(m, key);
    if (m->crashed)
        return -EIO;
    ssize_t i = find(m, key);
    if (i >= 0) {
        st->prefix = m->objs.ptr[i].prefix;
        st->size = m->objs.ptr[i].len;
        return 0;
    }
    if (!*key || has_children(m, key)) {
        st->prefix = true;
        return 0;
    }
    return -ENOENT;
}

/* ---- listing ---- */

struct page_entry {
    char *name;
    bool prefix;
};

/* Add the child name to the sorted page of at most LIST_PAGE entries (merging a name seen
 * again: an object's path below it makes it a prefix). */
static int page_add(struct page_entry *page, size_t *n, const char *name, bool prefix)
{
    size_t at = 0;
    while (at < *n && strcmp(page[at].name, name) < 0)
        at++;
    if (at < *n && !strcmp(page[at].name, name)) {
        page[at].prefix |= prefix;
        return 0;
    }
    if (at == LIST_PAGE)
        return 0;
    if (*n == LIST_PAGE) {
        free(page[LIST_PAGE - 1].name);
        (*n)--;
    }
    char *copy = strdup(name);
    if (!copy)
        return -ENOMEM;
    memmove(page + at + 1, page + at, (*n - at) * sizeof(*page));
    page[at] = (struct page_entry){.name = copy, .prefix = prefix};
    (*n)++;
    return 0;
}

/* The next page of children of prefix after the name last ("" at the start): the LIST_PAGE
 * smallest names greater than last.  Called locked. */
static int page_fill(const struct mem_store *m, const char *prefix, const char *last,
                     struct page_entry *page, size_t *n)
{
    char child[PATH_MAX];
    *n = 0;
    for (size_t i = 0; i < m->objs.len; i++) {
        const char *rest = under(m->objs.ptr[i].key, prefix);
        if (!rest || !*rest)
            continue;
        const char *slash = strchr(rest, '/');
        size_t len = slash ? (size_t)(slash - rest) : strlen(rest);
        if (len >= sizeof(child))
            return -ENAMETOOLONG;
        memcpy(child, rest, len);
        child[len] = '\0';
        if (strcmp(child, last) <= 0)
            continue;
        int r = page_add(page, n, child, slash || m->objs.ptr[i].prefix);
        if (r < 0)
            return r;
    }
    return 0;
}

static void page_clear(struct page_entry *page, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(page[i].name);
}

static int mem_list(struct store *s, const char *prefix, store_list_fn fn, void *opaque)
{
    struct mem_store *m = mem(s);
    struct page_entry page[LIST_PAGE];
    char last[PATH_MAX] = "";
    for (;;) {
        size_t n = 0;
        int r;
        {
            ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
            count(m, prefix); /* a page */
            if (m->crashed)
                return -EIO;
            r = kind_of(m, prefix);
            if (r == 0)
                return -ENOTDIR;
            if (r < 0)
                return r;
            r = page_fill(m, prefix, last, page, &n);
        }
        /* The callback runs unlocked: it may read, delete or list in turn. */
        for (size_t i = 0; r == 0 && i < n; i++) {
            struct store_entry e = {.name = page[i].name, .prefix = page[i].prefix};
            r = fn(opaque, &e);
        }
        if (n)
            snprintf(last, sizeof(last), "%s", page[n - 1].name);
        page_clear(page, n);
        if (r != 0 || n < LIST_PAGE)
            return r;
    }
}

/* ---- deletion and prefixes ---- */

static int mem_del(struct store *s, const char *key, uint64_t *bytes)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    count(m, key);
    int r = write_check(m, STORE_FAULT_DEL);
    if (r < 0)
        return r;
    ssize_t i = find(m, key);
    if (i < 0)
        return has_children(m, key) ? -EISDIR : -ENOENT;
    if (m->objs.ptr[i].prefix)
        return -EISDIR;
    *bytes += m->objs.ptr[i].len;
    remove_at(m, (size_t)i);
    return 0;
}

static int mem_sync_prefix(struct store *s, const char *prefix)
{
    struct mem_store *m = mem(s);
    (void)prefix; /* everything is durable at once */
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    return m->crashed ? -EIO : 0;
}

static int mem_make_prefix(struct store *s, const char *prefix, bool exclusive)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    return m->crashed ? -EIO : make_prefix(m, prefix, exclusive);
}

static int mem_remove_prefix(struct store *s, const char *prefix)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    if (m->crashed)
        return -EIO;
    if (has_children(m, prefix))
        return -ENOTEMPTY;
    ssize_t i = find(m, prefix);
    if (i < 0)
        return -ENOENT;
    if (!m->objs.ptr[i].prefix)
        return -ENOTDIR;
    remove_at(m, (size_t)i);
    return 0;
}

static int mem_barrier(struct store *s)
{
    return mem_sync_prefix(s, "");
}

/* ---- leases ---- */

static void lock_remove_at(struct mem_store *m, size_t i)
{
    free(m->locks.ptr[i].name);
    m->locks.ptr[i] = m->locks.ptr[--m->locks.len];
}

/* Drop the locks whose lease expired.  Called locked. */
static void expire_locks(struct mem_store *m)
{
    int64_t now = now_ms(m);
    for (size_t i = 0; i < m->locks.len;) {
        if (m->locks.ptr[i].expires_ms <= now) {
            lock_remove_at(m, i);
        } else {
            i++;
        }
    }
}

/* Take name when no other holder conflicts: 1 taken, 0 busy, or a negative errno. */
static int try_lock(struct mem_store *m, const char *name, bool exclusive, unsigned lease_seconds,
                    struct store_lease *l)
{
    expire_locks(m);
    for (size_t i = 0; i < m->locks.len; i++)
        if (!strcmp(m->locks.ptr[i].name, name) && (exclusive || m->locks.ptr[i].exclusive))
            return 0;
    struct mem_lock k = {.name = strdup(name),
                         .exclusive = exclusive,
                         .expires_ms = now_ms(m) + (int64_t)lease_seconds * MS_PER_SEC,
                         .id = ++m->next_lock_id};
    if (!k.name || mem_lock_list_append(&m->locks, k) < 0) {
        free(k.name);
        return -ENOMEM;
    }
    l->id = k.id;
    l->gen = m->gen;
    return 1;
}

static int mem_lock(struct store *s, const char *name, bool exclusive, unsigned lease_seconds,
                    int64_t deadline_ms, struct store_lease **out)
{
    struct mem_store *m = mem(s);
    struct store_lease *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    for (;;) {
        int r;
        {
            ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
            count(m, name);
            r = m->crashed ? -EIO : try_lock(m, name, exclusive, lease_seconds, l);
        }
        if (r == 0)
            r = store_lock_wait(deadline_ms);
        if (r < 0) {
            free(l);
            return r;
        }
        if (r == 1) {
            *out = l;
            return 0;
        }
    }
}

static ssize_t lock_index(const struct mem_store *m, const struct store_lease *l)
{
    for (size_t i = 0; i < m->locks.len; i++)
        if (m->locks.ptr[i].id == l->id)
            return (ssize_t)i;
    return -1;
}

static int mem_renew(struct store *s, struct store_lease *l, unsigned lease_seconds)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    m->requests++;
    if (m->crashed)
        return -EIO;
    expire_locks(m);
    ssize_t i = lock_index(m, l);
    if (i < 0 || l->gen != m->gen)
        return -ETIMEDOUT;
    m->locks.ptr[i].expires_ms = now_ms(m) + (int64_t)lease_seconds * MS_PER_SEC;
    return 0;
}

static void mem_unlock(struct store *s, struct store_lease *l)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    m->requests++;
    /* A crashed process releases nothing: its leases run out. */
    ssize_t i = m->crashed || l->gen != m->gen ? -1 : lock_index(m, l);
    if (i >= 0)
        lock_remove_at(m, (size_t)i);
    free(l);
}

/* ---- the store ---- */

static void mem_close(struct store *s)
{
    struct mem_store *m = mem(s);
    for (size_t i = 0; i < m->objs.len; i++) {
        free(m->objs.ptr[i].key);
        free(m->objs.ptr[i].data);
    }
    for (size_t i = 0; i < m->locks.len; i++)
        free(m->locks.ptr[i].name);
    for (size_t i = 0; i < m->staged.len; i++)
        m->staged.ptr[i]->live = false; /* their owners free them */
    mem_obj_list_reset(&m->objs);
    mem_lock_list_reset(&m->locks);
    mem_staged_list_reset(&m->staged);
    pthread_mutex_destroy(&m->mu);
    free(s->name);
    free(m);
}

static const struct store_ops mem_ops = {
    .kind = "mem",
    .put = mem_put,
    .stage = mem_stage,
    .commit = mem_commit,
    .discard = mem_discard,
    .get = mem_get,
    .get_into = mem_get_into,
    .get_range = mem_get_range,
    .stat = mem_stat,
    .list = mem_list,
    .del = mem_del,
    .sync_prefix = mem_sync_prefix,
    .make_prefix = mem_make_prefix,
    .remove_prefix = mem_remove_prefix,
    .barrier = mem_barrier,
    .lock = mem_lock,
    .renew = mem_renew,
    .unlock = mem_unlock,
    .close = mem_close,
};

int store_mem_new(const char *name, struct store **out)
{
    *out = NULL;
    struct mem_store *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->s.ops = &mem_ops;
    pthread_mutex_init(&m->mu, NULL);
    if (asprintf(&m->s.name, "mem:%s", name) < 0) {
        m->s.name = NULL;
        mem_close(&m->s);
        return -ENOMEM;
    }
    *out = &m->s;
    return 0;
}

void store_mem_fault(struct store *s, enum store_fault f, unsigned n)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    m->fault = n ? f : STORE_FAULT_NONE;
    m->countdown = f == STORE_FAULT_NONE ? 0 : n;
    m->fired = false;
    m->full = false;
}

bool store_mem_fault_fired(const struct store *s)
{
    struct mem_store *m = (struct mem_store *)s;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    return m->fired;
}

void store_mem_crash(struct store *s)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    crash_locked(m);
}

void store_mem_restart(struct store *s)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    m->crashed = false;
    m->full = false;
    m->fault = STORE_FAULT_NONE;
    m->countdown = 0;
    m->gen++;
}

void store_mem_advance(struct store *s, unsigned seconds)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    m->clock_offset_ms += (int64_t)seconds * MS_PER_SEC;
}

void store_mem_usage(const struct store *s, uint64_t *objects, uint64_t *bytes)
{
    struct mem_store *m = (struct mem_store *)s;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    *objects = *bytes = 0;
    for (size_t i = 0; i < m->objs.len; i++)
        if (!m->objs.ptr[i].prefix) {
            (*objects)++;
            *bytes += m->objs.ptr[i].len;
        }
}

uint64_t store_mem_requests(const struct store *s, const char *prefix)
{
    struct mem_store *m = (struct mem_store *)s;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    if (!prefix)
        return m->requests;
    for (size_t i = 0; i < REQ_KINDS; i++)
        if (!strcmp(m->req_by[i].name, prefix))
            return m->req_by[i].n;
    return 0;
}

void store_mem_requests_reset(struct store *s)
{
    struct mem_store *m = mem(s);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&m->mu);
    m->requests = 0;
    memset(m->req_by, 0, sizeof(m->req_by));
}
