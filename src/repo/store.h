/* The repository's storage interface: a store holds named objects (keys are paths relative to
 * the repository root, "chunks/ab/ab34...", "backups/<vm>/<id>/backup.json") and leased locks.
 * The repository code (src/repo) reaches its storage only through these functions, so that a
 * new backend (an object store: S3, RADOS) is one file behind this vtable:
 *
 *   store_local.c  a directory (every file descriptor, sync and file lock of the repository)
 *   store_mem.c    memory, for tests, with fault injection (store_mem.h)
 *   store_rados.c  a Ceph RADOS pool and namespace through librados (rados://POOL/NAMESPACE)
 *   store_s3.c     an S3 bucket and prefix through libcurl's SigV4 (s3://BUCKET/PREFIX)
 *
 * store_open_url() picks the store a repository URL names; anything that is not a URL of a
 * known scheme is a local path.
 *
 * What a store must guarantee (docs/repository-format.md, "The store interface"):
 * - put is atomic and durable: after a crash a key holds the whole new object, the whole old
 *   one, or (if it had none) nothing; when put returns 0 the object survives a crash.
 *   STORE_PUT_CREATE never replaces: of concurrent creators of one key exactly one wins and the
 *   others get *created = false (their data equal by content addressing).
 * - staged puts (stage, then commit) write objects that are neither visible nor durable until
 *   one commit makes all of them durable (one barrier) and then visible, without replacing.
 *   Until then a crash may leave their bytes behind only under names containing ".tmp."
 *   (REPO_TMP_MARK), never under the key.
 * - barrier makes every put, commit and delete completed so far durable, including other
 *   processes' (the local store syncs its filesystem).
 * - a delete is durable after sync_prefix of its prefix (or a barrier).
 * - list walks the entries directly under a prefix ("dir/": objects and sub-prefixes, like S3's
 *   delimiter "/"), one at a time or a page at a time: never the whole listing in memory.  An
 *   entry deleted by the callback is fine; entries added during the walk may or may not show.
 * - on an object store (RADOS, S3) prefixes are virtual: a prefix exists while a key is under
 *   it; make_prefix (unless exclusive), sync_prefix and barrier do nothing; a put needs no
 *   parent made; listing a prefix with nothing under it is empty (0, not -ENOENT); an exclusive
 *   make_prefix is -EEXIST and remove_prefix -ENOTEMPTY only when a key is under the prefix.
 * - locks are leases: shared or exclusive, held until released or until the lease expires
 *   unrenewed (a store without process-death detection relies on the expiry; the local store's
 *   file locks are released by the kernel and never expire).
 * Every function returns 0 or a negative errno; a full store answers -ENOSPC.  All functions
 * are thread-safe.
 */
#ifndef VMEXPORT_REPO_STORE_H
#define VMEXPORT_REPO_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Buffers given to store_stage and store_get_into are aligned to this (O_DIRECT). */
#define STORE_ALIGN 4096
/* A lock waits forever when its deadline is this. */
#define STORE_WAIT_FOREVER (-1)

struct store;
struct store_staged; /* an object written by store_stage, not yet committed */
struct store_lease;  /* a lock held */

enum store_put_mode {
    STORE_PUT_REPLACE, /* create or replace */
    STORE_PUT_CREATE,  /* create only: an existing object wins (*created false) */
};

struct store_entry {
    const char *name; /* the entry's name under the prefix (no '/') */
    bool prefix;      /* a sub-prefix (a directory) rather than an object */
};

struct store_stat {
    bool prefix;   /* a prefix (directory) rather than an object */
    uint64_t size; /* an object's size in bytes */
};

/* List callback: 0 goes on; any other return stops the walk and store_list returns it (a
 * negative errno, or a positive "found"). */
typedef int (*store_list_fn)(void *opaque, const struct store_entry *e);

struct store_ops {
    const char *kind; /* "local", "mem" */
    int (*put)(struct store *s, const char *key, const void *data, size_t len,
               enum store_put_mode mode, bool *created);
    int (*stage)(struct store *s, const char *key, const void *data, size_t len,
                 struct store_staged **out);
    int (*commit)(struct store *s, struct store_staged **staged, size_t n, bool *created);
    void (*discard)(struct store *s, struct store_staged *st);
    int (*get)(struct store *s, const char *key, uint64_t max, uint8_t **data, size_t *len);
    int (*get_into)(struct store *s, const char *key, uint64_t max, uint8_t *buf, size_t cap,
                    size_t *len);
    int (*get_range)(struct store *s, const char *key, uint64_t off, size_t len, uint8_t *buf);
    int (*stat)(struct store *s, const char *key, struct store_stat *st);
    int (*list)(struct store *s, const char *prefix, store_list_fn fn, void *opaque);
    /* Optional (NULL: store_walk recurses with list): every object under a prefix in one
     * pass, for stores whose listing reads everything anyway. */
    int (*walk)(struct store *s, const char *prefix, store_list_fn fn, void *opaque);
    int (*del)(struct store *s, const char *key, uint64_t *bytes);
    int (*sync_prefix)(struct store *s, const char *prefix);
    int (*make_prefix)(struct store *s, const char *prefix, bool exclusive);
    int (*remove_prefix)(struct store *s, const char *prefix);
    int (*barrier)(struct store *s);
    int (*lock)(struct store *s, const char *name, bool exclusive, unsigned lease_seconds,
                int64_t deadline_ms, struct store_lease **out);
    int (*renew)(struct store *s, struct store_lease *l, unsigned lease_seconds);
    void (*unlock)(struct store *s, struct store_lease *l);
    void (*close)(struct store *s);
};

/* The common head of every store; implementations embed it first. */
struct store {
    const struct store_ops *ops;
    char *name; /* for messages: the directory, "mem:..." */
};

/* Store key: atomically and durably (see above).  *created (may be NULL) tells whether the
 * object was written (always true for REPLACE).  A missing parent prefix one level up is made
 * (so "chunks/ab/<id>" works before "chunks/ab" exists); deeper ones are -ENOENT. */
int store_put(struct store *s, const char *key, const void *data, size_t len,
              enum store_put_mode mode, bool *created);

/* Write key's data staged: not visible (store_exists says no) and not durable until committed.
 * data is STORE_ALIGN-aligned when the caller can (the local store then bypasses the page
 * cache for the aligned head). */
int store_stage(struct store *s, const char *key, const void *data, size_t len,
                struct store_staged **out);
/* Make the n staged objects durable with one barrier, then visible each without replacing
 * (created[i] false when the key existed already; created may be NULL).  Every staged object
 * is consumed, also on failure: those not yet visible are discarded. */
int store_commit(struct store *s, struct store_staged **staged, size_t n, bool *created);
/* Drop a staged object that will not be committed. */
void store_discard(struct store *s, struct store_staged *st);

/* The whole object (at most max bytes, else -EBADMSG) into a new buffer (free()); -ENOENT. */
int store_get(struct store *s, const char *key, uint64_t max, uint8_t **data, size_t *len);
/* The same into buf: cap bytes, STORE_ALIGN-aligned; -ENOBUFS when the object rounded up to
 * STORE_ALIGN does not fit. */
int store_get_into(struct store *s, const char *key, uint64_t max, uint8_t *buf, size_t cap,
                   size_t *len);
/* len bytes of the object key from offset off into buf (one chunk out of a pack): -ENOENT
 * missing, -EBADMSG when the range passes the object's end. */
int store_get_range(struct store *s, const char *key, uint64_t off, size_t len, uint8_t *buf);
/* 0 when key is an object or a prefix (*prefix, may be NULL, tells which), else -ENOENT. */
int store_exists(struct store *s, const char *key, bool *prefix);
/* The same with an object's size. */
int store_stat(struct store *s, const char *key, struct store_stat *st);
/* Walk the entries directly under prefix (no trailing '/'; "" the root).  -ENOENT when the
 * prefix does not exist; -ENOTDIR when it is an object. */
int store_list(struct store *s, const char *prefix, store_list_fn fn, void *opaque);
/* Walk every object under prefix at any depth ("" the whole store), in no particular order:
 * fn gets its key relative to prefix ("ab/<name>" under "packs") and e->prefix false.  Deleting
 * during the walk is fine.  Where a store lists a prefix by reading all its keys (RADOS lists
 * a whole namespace), this is one pass where store_list needs one per prefix: use it for walks
 * of a whole tree (gc's search for temporary objects and orphan packs).  -ENOENT and -ENOTDIR
 * as store_list. */
int store_walk(struct store *s, const char *prefix, store_list_fn fn, void *opaque);
/* Delete an object (not durable until store_sync_prefix of its prefix); *bytes (may be NULL)
 * gets its size added.  -ENOENT when missing. */
int store_del(struct store *s, const char *key, uint64_t *bytes);
/* Make the deletions and creations directly under prefix durable. */
int store_sync_prefix(struct store *s, const char *prefix);
/* Create prefix (durably); exclusive: -EEXIST when it exists.  Its parent must exist. */
int store_make_prefix(struct store *s, const char *prefix, bool exclusive);
/* Remove an empty prefix (durably): -ENOTEMPTY when it holds anything, -ENOENT missing. */
int store_remove_prefix(struct store *s, const char *prefix);
/* Make everything completed so far durable (by anyone). */
int store_barrier(struct store *s);

/* Take lock name (a key under the store's lock space) shared or exclusive for lease_seconds,
 * waiting until deadline_ms (CLOCK_MONOTONIC milliseconds; STORE_WAIT_FOREVER): -EBUSY after.
 * Other holders whose lease expired do not count. */
int store_lock(struct store *s, const char *name, bool exclusive, unsigned lease_seconds,
               int64_t deadline_ms, struct store_lease **out);
/* Extend a lease by lease_seconds from now: -ETIMEDOUT when it had expired (someone else may
 * have taken the lock meanwhile: what it protected must be considered lost). */
int store_renew(struct store *s, struct store_lease *l, unsigned lease_seconds);
/* Release a lock (NULL: nothing). */
void store_unlock(struct store *s, struct store_lease *l);

void store_close(struct store *s);
const char *store_name(const struct store *s);

/* CLOCK_MONOTONIC milliseconds, and the deadline timeout_seconds from now. */
int64_t store_now_ms(void);
int64_t store_deadline(unsigned timeout_seconds);
/* Sleep until the next poll of a waiting lock, at most until deadline_ms: -EBUSY when it has
 * passed (for stores whose locks are polled). */
int store_lock_wait(int64_t deadline_ms);

/* ---- opening a store by URL ---- */

#define STORE_URL_RADOS "rados://" /* rados://POOL/NAMESPACE (NAMESPACE may be empty) */
#define STORE_URL_S3    "s3://"    /* s3://BUCKET/PREFIX (PREFIX may be empty) */

/* What a store needs besides its URL.  NULL members (and a NULL struct store_options) take the
 * environment or the default: settings, never secrets (credentials come from the environment
 * or from files the backend's library reads, and are never printed). */
struct store_options {
    const char *s3_endpoint; /* https://HOST:PORT of the S3 service (VMEXPORT_S3_ENDPOINT) */
    const char *s3_ca_file;  /* CA certificate of that endpoint (default: system trust) */
    const char *s3_region;   /* SigV4 region (AWS_DEFAULT_REGION) */
    unsigned lock_days;      /* creating an S3 store: Object Lock retention in days, 0 none */
    const char *ceph_conf;   /* ceph.conf (CEPH_CONF; else librados' default search) */
    const char *ceph_id;     /* cephx user without "client." (CEPH_ID; default "admin") */
};

enum store_url_kind {
    STORE_URL_LOCAL, /* a path */
    STORE_URL_KIND_RADOS,
    STORE_URL_KIND_S3,
};

/* Which store url names. */
enum store_url_kind store_url_kind(const char *url);

/* Open the store url names (a path, rados://, s3://) with the options o (may be NULL).
 * create: make a new store for a new repository: a local directory is made (or an empty one
 * accepted), an object store must hold nothing under its namespace or prefix (S3 creates a
 * missing bucket); -EEXIST when it holds something.  Without create the store must exist
 * (-ENOENT: no such directory, pool or bucket).  On failure err says why, naming url (as given:
 * it holds no secret) and the cause. */
int store_open_url(const char *url, const struct store_options *o, bool create, struct store **out,
                   char *err, size_t errlen);

/* vsnprintf into err (NULL or errlen 0: nothing), for the stores' messages. */
void store_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- the implementations ---- */

/* Open the directory path as a store (it must exist).  read-only filesystems work for reads
 * and locks. */
int store_local_open(const char *path, struct store **out);
/* Create the directory path (0700) or accept an existing empty one, made durable in its parent,
 * and open it: -EEXIST when it is not an empty directory. */
int store_local_create(const char *path, struct store **out);

/* The object stores, as store_open_url() calls them: where is the URL after its scheme
 * ("POOL/NAMESPACE", "BUCKET/PREFIX"), url the whole URL (for the store's name and
 * messages).  They exist only when vmexport was built with their library (librados, and
 * libcurl for S3); store_open_url() says so otherwise. */
int store_rados_open(const char *url, const char *where, const struct store_options *o, bool create,
                     struct store **out, char *err, size_t errlen);
int store_s3_open(const char *url, const char *where, const struct store_options *o, bool create,
                  struct store **out, char *err, size_t errlen);

#endif
