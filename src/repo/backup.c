/* Backups in the repository: the writer (locks, backup directory, manifests, backup.json last),
 * listing and lookup of committed backups, deletion, and the backup.json encoding.
 *
 * A backup lives in backups/<vm dir>/<id>/ where <vm dir> is the escaped VM ID (the real one is
 * inside backup.json) and <id> is "YYYYMMDDTHHMMSSZ-xxxxxx".  It exists once backup.json does;
 * a directory without one is a backup being written or one a crash interrupted (gc removes
 * those under the exclusive lock).
 */
#include "repo_internal.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/cleanup.h"
#include "core/hex.h"
#include "core/log.h"

#define BACKUP_FORMAT       "vmexport-backup"
#define BACKUP_JSON_VERSION 1
#define BACKUP_TIME_MAX     INT64_C(253402300799) /* 9999-12-31T23:59:59Z: 4-digit years */
#define BACKUP_ID_TRIES     16                    /* attempts at an unused random suffix */
#define BACKUP_MAX_DISKS    999999                /* disk-<n>.manifest has up to 6 digits */
#define BACKUP_ID_DATE_LEN  8                     /* "YYYYMMDD", then 'T' */
#define BACKUP_TIME_FORMAT  "%Y%m%dT%H%M%SZ"
#define BACKUP_UTC_FORMAT   "%Y-%m-%dT%H:%M:%SZ"
#define BACKUP_UTC_LEN      sizeof("YYYY-MM-DDTHH:MM:SSZ")
#define VM_LOCK_PREFIX      "vm-"
#define VM_LOCK_SUFFIX      ".lock"

struct backup_writer {
    struct repo *r;
    char *vm_id;
    char *vm_dir; /* escaped VM ID */
    char *id;
    char *rel_dir; /* backups/<vm dir>/<id> */
    int64_t time;
    struct store_lease *repo_lock; /* shared */
    struct store_lease *vm_lock;   /* exclusive */
    struct lease_keeper *keeper;   /* renews both */
    backup_disk_list disks;
};

/* ---- objects ---- */

static void disk_clear(struct backup_disk *d)
{
    free(d->name);
    free(d->change_id);
    free(d->manifest);
}

static void disks_reset(backup_disk_list *l)
{
    for (size_t i = 0; i < l->len; i++)
        disk_clear(&l->ptr[i]);
    backup_disk_list_reset(l);
}

void backup_clear(struct backup *b)
{
    free(b->id);
    free(b->vm_id);
    free(b->snapshot_id);
    free(b->server);
    free(b->vm_json);
    free(b->definition);
    free(b->definition_format);
    free(b->parent_id);
    disks_reset(&b->disks);
    memset(b, 0, sizeof(*b));
}

void backup_free(struct backup *b)
{
    if (!b)
        return;
    backup_clear(b);
    free(b);
}

void backup_list_free(backup_list *l)
{
    for (size_t i = 0; i < l->len; i++)
        backup_free(l->ptr[i]);
    backup_list_reset(l);
}

static int str_cmp_asc(const char **a, const char **b)
{
    return strcmp(*a, *b);
}

static int str_cmp_desc(const char **a, const char **b)
{
    return strcmp(*b, *a);
}

static int backup_cmp(const struct backup **a, const struct backup **b)
{
    if ((*a)->time != (*b)->time)
        return (*a)->time < (*b)->time ? -1 : 1;
    return strcmp((*a)->id, (*b)->id);
}

static char *strdup_null(const char *s, bool *fail)
{
    char *d = s ? strdup(s) : NULL;
    if (s && !d)
        *fail = true;
    return d;
}

static int disks_copy(const backup_disk_list *from, backup_disk_list *to)
{
    for (size_t i = 0; i < from->len; i++) {
        const struct backup_disk *s = &from->ptr[i];
        bool fail = false;
        struct backup_disk d = {
            .name = strdup_null(s->name, &fail),
            .size = s->size,
            .change_id = strdup_null(s->change_id, &fail),
            .manifest = strdup_null(s->manifest, &fail),
        };
        if (fail || backup_disk_list_append(to, d) < 0) {
            disk_clear(&d);
            return -ENOMEM;
        }
    }
    return 0;
}

bool backup_id_valid(const char *id)
{
    if (strnlen(id, BACKUP_ID_LEN + 1) != BACKUP_ID_LEN)
        return false;
    for (size_t i = 0; i < BACKUP_ID_LEN; i++) {
        char c = id[i];
        bool ok;
        if (i == BACKUP_ID_DATE_LEN)
            ok = c == 'T';
        else if (i == BACKUP_ID_TIME_LEN - 1)
            ok = c == 'Z';
        else if (i == BACKUP_ID_TIME_LEN)
            ok = c == '-';
        else if (i < BACKUP_ID_TIME_LEN)
            ok = c >= '0' && c <= '9';
        else
            ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
        if (!ok)
            return false;
    }
    return true;
}

static int backup_id_make(int64_t t, char out[BACKUP_ID_LEN + 1])
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm) ||
        strftime(out, BACKUP_ID_TIME_LEN + 1, BACKUP_TIME_FORMAT, &tm) != BACKUP_ID_TIME_LEN)
        return -EINVAL;
    out[BACKUP_ID_TIME_LEN] = '-';
    return repo_random_hex(out + BACKUP_ID_TIME_LEN + 1, BACKUP_ID_RAND_BYTES);
}

/* ---- backup.json ---- */

static int json_set_str(json_t *o, const char *key, const char *s)
{
    json_t *v = s ? json_string(s) : json_null();
    if (!v)
        return -EINVAL; /* not UTF-8 */
    return json_object_set_new(o, key, v) < 0 ? -ENOMEM : 0;
}

static int json_set_uint(json_t *o, const char *key, uint64_t v)
{
    if (v > INT64_MAX)
        return -ERANGE;
    return json_object_set_new(o, key, json_integer((json_int_t)v)) < 0 ? -ENOMEM : 0;
}

/* The VM ID as text when it is UTF-8, else in base64 ("vm_id_base64"). */
static int json_set_vm_id(json_t *o, const char *vm_id)
{
    json_t *v = json_string(vm_id);
    if (v)
        return json_object_set_new(o, "vm_id", v) < 0 ? -ENOMEM : 0;
    CLEANUP_FREE char *b64 = base64_encode(vm_id, strlen(vm_id));
    if (!b64)
        return -ENOMEM;
    return json_set_str(o, "vm_id_base64", b64);
}

static int disk_to_json(const struct backup_disk *d, json_t *arr)
{
    json_t *o = json_object();
    int r = o ? 0 : -ENOMEM;
    if (r == 0)
        r = json_set_str(o, "name", d->name);
    if (r == 0)
        r = json_set_uint(o, "size", d->size);
    if (r == 0)
        r = json_set_str(o, "change_id", d->change_id);
    if (r == 0)
        r = json_set_str(o, "manifest", d->manifest);
    if (r == 0 && json_array_append(arr, o) < 0)
        r = -ENOMEM;
    json_decref(o);
    return r;
}

static int stats_to_json(const struct backup *b, json_t *o)
{
    json_t *s = json_object();
    int r = s ? 0 : -ENOMEM;
    if (r == 0)
        r = json_set_uint(s, "bytes_read", b->bytes_read);
    if (r == 0)
        r = json_set_uint(s, "bytes_written", b->bytes_written);
    if (r == 0)
        r = json_set_uint(s, "chunks_new", b->chunks_new);
    if (r == 0)
        r = json_set_uint(s, "chunks_reused", b->chunks_reused);
    if (r == 0 && json_object_set_new(s, "seconds", json_real(b->seconds)) < 0)
        r = -ENOMEM;
    if (r == 0 && json_object_set(o, "stats", s) < 0)
        r = -ENOMEM;
    json_decref(s);
    return r;
}

static int backup_to_json(const struct backup *b, char **out)
{
    char utc[BACKUP_UTC_LEN] = "";
    time_t tt = (time_t)b->time;
    struct tm tm;
    if (gmtime_r(&tt, &tm))
        strftime(utc, sizeof(utc), BACKUP_UTC_FORMAT, &tm);

    *out = NULL;
    json_t *o = json_object(), *disks = json_array();
    int r = o && disks ? 0 : -ENOMEM;
    if (r == 0)
        r = json_set_str(o, "format", BACKUP_FORMAT);
    if (r == 0 && json_object_set_new(o, "version", json_integer(BACKUP_JSON_VERSION)) < 0)
        r = -ENOMEM;
    if (r == 0)
        r = json_set_str(o, "id", b->id);
    if (r == 0)
        r = json_set_vm_id(o, b->vm_id);
    if (r == 0 && json_object_set_new(o, "time", json_integer(b->time)) < 0)
        r = -ENOMEM;
    if (r == 0)
        r = json_set_str(o, "time_utc", utc);
    if (r == 0)
        r = json_set_str(o, "snapshot_id", b->snapshot_id);
    if (r == 0)
        r = json_set_str(o, "server", b->server);
    if (r == 0)
        r = json_set_str(o, "parent_id", b->parent_id);
    if (r == 0)
        r = json_set_str(o, "vm_json", b->vm_json);
    if (r == 0 && b->definition)
        r = json_set_str(o, "definition_format", b->definition_format);
    if (r == 0 && b->definition)
        r = json_set_str(o, "definition", b->definition);
    for (size_t i = 0; r == 0 && i < b->disks.len; i++)
        r = disk_to_json(&b->disks.ptr[i], disks);
    if (r == 0 && json_object_set(o, "disks", disks) < 0)
        r = -ENOMEM;
    if (r == 0)
        r = stats_to_json(b, o);
    if (r == 0 && !(*out = json_dumps(o, JSON_INDENT(2))))
        r = -ENOMEM;
    json_decref(disks);
    json_decref(o);
    return r;
}

/* An optional string member: absent or null gives NULL; another type is an error. */
static int json_get_opt_str(json_t *o, const char *key, char **out)
{
    json_t *v = json_object_get(o, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return -EBADMSG;
    *out = strdup(json_string_value(v));
    return *out ? 0 : -ENOMEM;
}

static int vm_id_from_json(json_t *o, char **out)
{
    json_t *v = json_object_get(o, "vm_id");
    *out = NULL;
    if (json_is_string(v)) {
        *out = strdup(json_string_value(v));
        return *out ? 0 : -ENOMEM;
    }
    const char *b64 = json_string_value(json_object_get(o, "vm_id_base64"));
    CLEANUP_FREE uint8_t *raw = NULL;
    size_t n;
    if (!b64 || base64_decode(b64, &raw, &n) < 0 || memchr(raw, '\0', n))
        return -EBADMSG;
    char *s = malloc(n + 1);
    if (!s)
        return -ENOMEM;
    memcpy(s, raw, n);
    s[n] = '\0';
    *out = s;
    return 0;
}

static int disk_from_json(json_t *o, struct backup_disk *d)
{
    memset(d, 0, sizeof(*d));
    int r = json_is_object(o) ? 0 : -EBADMSG;
    if (r == 0)
        r = json_get_opt_str(o, "name", &d->name);
    if (r == 0)
        r = repo_json_get_uint(o, "size", false, &d->size);
    if (r == 0)
        r = json_get_opt_str(o, "change_id", &d->change_id);
    if (r == 0)
        r = json_get_opt_str(o, "manifest", &d->manifest);
    if (r == 0 && (!d->name || !*d->name || !d->manifest || !manifest_name_valid(d->manifest)))
        r = -EBADMSG;
    if (r < 0)
        disk_clear(d);
    return r;
}

static int backup_from_json(const char *text, size_t len, struct backup **out)
{
    *out = NULL;
    json_t *o = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
    struct backup *b = calloc(1, sizeof(*b));
    int r = o && b ? 0 : (b ? -EBADMSG : -ENOMEM);
    const char *format = json_string_value(json_object_get(o, "format"));
    json_t *time = json_object_get(o, "time"), *disks = json_object_get(o, "disks");
    json_t *stats = json_object_get(o, "stats");
    uint64_t version = 0;

    if (r == 0 &&
        (!format || strcmp(format, BACKUP_FORMAT) ||
         repo_json_get_uint(o, "version", false, &version) < 0 || version != BACKUP_JSON_VERSION ||
         !json_is_integer(time) || !json_is_array(disks) || (stats && !json_is_object(stats))))
        r = -EBADMSG;
    if (r == 0)
        r = json_get_opt_str(o, "id", &b->id);
    if (r == 0 && (!b->id || !backup_id_valid(b->id)))
        r = -EBADMSG;
    if (r == 0)
        r = vm_id_from_json(o, &b->vm_id);
    if (r == 0)
        r = json_get_opt_str(o, "snapshot_id", &b->snapshot_id);
    if (r == 0)
        r = json_get_opt_str(o, "server", &b->server);
    if (r == 0)
        r = json_get_opt_str(o, "parent_id", &b->parent_id);
    if (r == 0)
        r = json_get_opt_str(o, "vm_json", &b->vm_json);
    if (r == 0)
        r = json_get_opt_str(o, "definition_format", &b->definition_format);
    if (r == 0)
        r = json_get_opt_str(o, "definition", &b->definition);
    if (r == 0)
        b->time = json_integer_value(time);
    for (size_t i = 0; r == 0 && i < json_array_size(disks); i++) {
        struct backup_disk d;
        r = disk_from_json(json_array_get(disks, i), &d);
        if (r == 0 && backup_disk_list_append(&b->disks, d) < 0) {
            disk_clear(&d);
            r = -ENOMEM;
        }
    }
    if (r == 0 && stats) {
        json_t *secs = json_object_get(stats, "seconds");
        if (repo_json_get_uint(stats, "bytes_read", true, &b->bytes_read) < 0 ||
            repo_json_get_uint(stats, "bytes_written", true, &b->bytes_written) < 0 ||
            repo_json_get_uint(stats, "chunks_new", true, &b->chunks_new) < 0 ||
            repo_json_get_uint(stats, "chunks_reused", true, &b->chunks_reused) < 0 ||
            (secs && !json_is_number(secs)))
            r = -EBADMSG;
        else
            b->seconds = json_number_value(secs);
    }
    json_decref(o);
    if (r < 0) {
        backup_free(b);
        return r;
    }
    *out = b;
    return 0;
}

/* Read backups/<vm dir>/<id>/backup.json and check it belongs there. */
static int backup_load(struct repo *r, const char *vm_dir, const char *id, struct backup **out)
{
    CLEANUP_FREE char *rel = NULL;
    CLEANUP_FREE uint8_t *text = NULL;
    CLEANUP_FREE char *dir_of_vm = NULL;
    struct backup *b = NULL;
    size_t len;

    *out = NULL;
    if (asprintf(&rel, REPO_BACKUPS_DIR "/%s/%s/" REPO_BACKUP_JSON, vm_dir, id) < 0)
        return -ENOMEM;
    int ret = repo_meta_read(r, rel, &text, &len);
    if (ret == 0)
        ret = backup_from_json((const char *)text, len, &b);
    if (ret < 0)
        return ret;
    ret = repo_vm_dir_name(b->vm_id, &dir_of_vm);
    if (ret == 0 && (strcmp(b->id, id) || strcmp(dir_of_vm, vm_dir)))
        ret = -EBADMSG;
    if (ret == -EINVAL)
        ret = -EBADMSG;
    if (ret < 0) {
        backup_free(b);
        return ret;
    }
    *out = b;
    return 0;
}

/* ---- writer ---- */

static void writer_free(struct backup_writer *w)
{
    lease_keeper_stop(w->keeper);
    lock_file_release(w->r, w->vm_lock);
    lock_file_release(w->r, w->repo_lock);
    disks_reset(&w->disks);
    free(w->vm_id);
    free(w->vm_dir);
    free(w->id);
    free(w->rel_dir);
    free(w);
}

/* Whether some VM already has a backup directory of this ID (IDs are unique repository-wide
 * so that repo_backup_get() finds one backup). */
struct id_use_walk {
    struct repo *r;
    const char *id;
};

static int id_use_entry(void *opaque, const struct store_entry *e)
{
    struct id_use_walk *w = opaque;
    char key[NAME_MAX + sizeof(REPO_BACKUPS_DIR) + BACKUP_ID_LEN + 3];
    if (e->name[0] == '.' || !e->prefix)
        return 0;
    snprintf(key, sizeof(key), REPO_BACKUPS_DIR "/%s/%s", e->name, w->id);
    return store_exists(w->r->store, key, NULL) == 0 ? 1 : 0;
}

static bool backup_id_in_use(struct repo *r, const char *id)
{
    struct id_use_walk w = {.r = r, .id = id};
    /* A listing that fails says "not in use": making the directory still refuses a clash
     * within the VM. */
    return store_list(r->store, REPO_BACKUPS_DIR, id_use_entry, &w) > 0;
}

struct id_order_walk {
    const char *id;
    long max; /* greatest random part of the same second, -1 when none */
};

static int id_order_entry(void *opaque, const struct store_entry *e)
{
    struct id_order_walk *w = opaque;
    if (!backup_id_valid(e->name) || strncmp(e->name, w->id, BACKUP_ID_TIME_LEN))
        return 0;
    long v = strtol(e->name + BACKUP_ID_TIME_LEN + 1, NULL, 16);
    if (v > w->max)
        w->max = v;
    return 0;
}

/* Make id (just made by backup_id_make) sort after every backup of the same second already in
 * the VM directory, so that "the latest backup" (the greatest ID) is the one made last even
 * for several backups within one second (the VM lock serialises them).  Only the random part
 * changes: it is drawn above the greatest one in use, when there is room. */
static int backup_id_order(struct repo *r, const char *vm_prefix, char id[BACKUP_ID_LEN + 1])
{
    struct id_order_walk w = {.id = id, .max = -1};
    if (store_list(r->store, vm_prefix, id_order_entry, &w) < 0)
        return 0; /* ordering is best effort; uniqueness is checked by the caller */
    const long top = (1L << (8 * BACKUP_ID_RAND_BYTES)) - 1;
    if (w.max < 0 || w.max >= top)
        return 0;
    uint32_t rnd = 0;
    int ret = repo_random_bytes(&rnd, sizeof(rnd));
    if (ret < 0)
        return ret;
    unsigned long v = (unsigned long)(w.max + 1 + (long)(rnd % (uint32_t)(top - w.max)));
    uint8_t raw[BACKUP_ID_RAND_BYTES];
    for (int i = BACKUP_ID_RAND_BYTES - 1; i >= 0; i--, v >>= 8)
        raw[i] = (uint8_t)(v & 0xff);
    hex_encode(raw, sizeof(raw), id + BACKUP_ID_TIME_LEN + 1);
    return 0;
}

static int writer_make_dir(struct backup_writer *w, char *err, size_t errlen)
{
    struct repo *r = w->r;
    CLEANUP_FREE char *vm_prefix = NULL;
    char id[BACKUP_ID_LEN + 1];

    if (asprintf(&vm_prefix, REPO_BACKUPS_DIR "/%s", w->vm_dir) < 0)
        return -ENOMEM;
    int ret = store_make_prefix(r->store, vm_prefix, false);
    for (int i = 0; ret == 0 && i < BACKUP_ID_TRIES; i++) {
        if (r->upgrade_backup_id) { /* repo_upgrade_copy(): the old backup's ID */
            ret = backup_id_valid(r->upgrade_backup_id) ? 0 : -EINVAL;
            if (ret == 0)
                memcpy(id, r->upgrade_backup_id, sizeof(id));
        } else {
            ret = backup_id_make(w->time, id);
            if (ret == 0)
                ret = backup_id_order(r, vm_prefix, id);
        }
        if (ret < 0 || backup_id_in_use(r, id))
            continue;
        free(w->rel_dir);
        if (asprintf(&w->rel_dir, "%s/%s", vm_prefix, id) < 0) {
            w->rel_dir = NULL;
            ret = -ENOMEM;
            break;
        }
        ret = store_make_prefix(r->store, w->rel_dir, true);
        if (ret == 0) {
            w->id = strdup(id);
            ret = w->id ? 0 : -ENOMEM;
            break;
        }
        if (ret == -EEXIST)
            ret = 0;
    }
    if (ret == 0 && !w->id)
        ret = -EEXIST;
    if (ret < 0)
        repo_set_err(err, errlen, "%s/%s/%s: cannot create the backup directory: %s", r->path,
                     REPO_BACKUPS_DIR, w->vm_dir, strerror(-ret));
    return ret;
}

int repo_backup_begin(struct repo *r, const char *vm_id, int64_t time, unsigned lock_timeout,
                      struct backup_writer **out, char *err, size_t errlen)
{
    CLEANUP_FREE char *lock_name = NULL;

    *out = NULL;
    int ret = repo_check_writable(r, err, errlen);
    if (ret < 0)
        return ret;
    if (time < 0 || time > BACKUP_TIME_MAX) {
        repo_set_err(err, errlen, "backup time %lld is out of range", (long long)time);
        return -EINVAL;
    }
    struct backup_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->r = r;
    w->time = time;

    ret = vm_id ? repo_vm_dir_name(vm_id, &w->vm_dir) : -EINVAL;
    if (ret < 0) {
        repo_set_err(err, errlen, "invalid VM ID (empty or containing '/')");
        goto fail;
    }
    ret = -ENOMEM;
    if (!(w->vm_id = strdup(vm_id)))
        goto fail;

    int64_t deadline = store_deadline(lock_timeout);
    /* The VM first, then the repository: a backup waiting for another one of its VM (or for
     * a dead holder's lease to run out) holds no lease that could expire unrenewed meanwhile,
     * and only backups take VM locks, so the order cannot deadlock with gc or prune. */
    ret = -ENOMEM;
    if (asprintf(&lock_name, VM_LOCK_PREFIX "%s" VM_LOCK_SUFFIX, w->vm_dir) < 0)
        goto fail;
    ret = lock_file_acquire(r, lock_name, true, deadline, &w->vm_lock);
    if (ret < 0) {
        if (ret == -EBUSY)
            repo_set_err(err, errlen, "%s: a backup of VM %s is already running", r->path,
                         w->vm_dir);
        else
            repo_set_err(err, errlen, "%s: cannot lock VM %s: %s", r->path, w->vm_dir,
                         strerror(-ret));
        goto fail;
    }
    ret = lock_file_acquire(r, REPO_LOCK_NAME, false, deadline, &w->repo_lock);
    if (ret < 0) {
        if (ret == -EBUSY)
            repo_set_err(err, errlen, "%s: the repository is locked for maintenance (gc or prune)",
                         r->path);
        else
            repo_set_err(err, errlen, "%s: cannot lock the repository: %s", r->path,
                         strerror(-ret));
        goto fail;
    }
    /* A wait for gc may have outlasted the VM lock's lease: extend it from now, as the repo's. */
    ret = store_renew(r->store, w->vm_lock, repo_lease_seconds());
    if (ret < 0) {
        repo_set_err(err, errlen,
                     "%s: the lock of VM %s ran out while waiting for the repository "
                     "lock: %s",
                     r->path, w->vm_dir, strerror(-ret));
        goto fail;
    }
    struct store_lease *held[] = {w->repo_lock, w->vm_lock};
    ret = lease_keeper_start(r, held, sizeof(held) / sizeof(held[0]), &w->keeper);
    if (ret < 0) {
        repo_set_err(err, errlen, "%s: cannot start renewing the backup's locks: %s", r->path,
                     strerror(-ret));
        goto fail;
    }
    ret = writer_make_dir(w, err, errlen);
    if (ret < 0)
        goto fail;
    *out = w;
    return 0;
fail:
    writer_free(w);
    return ret;
}

/* Extend the writer's leases (its keeper renews them meanwhile too): -ETIMEDOUT when one
 * expired (gc may have run meanwhile, so what the backup references can no longer be trusted
 * to exist). */
static int writer_renew(struct backup_writer *w)
{
    int ret = w->keeper ? lease_keeper_renew(w->keeper) : 0;
    if (ret == 0 && !w->keeper)
        ret = store_renew(w->r->store, w->repo_lock, repo_lease_seconds());
    if (ret == 0 && !w->keeper)
        ret = store_renew(w->r->store, w->vm_lock, repo_lease_seconds());
    if (ret == -ETIMEDOUT)
        log_error("%s/%s: the backup's lock lease was lost (the process was stalled or cut off "
                  "from the store for more than %u s, and gc may have run): it cannot be committed",
                  w->r->path, w->rel_dir, repo_lease_seconds());
    else if (ret < 0)
        log_error("%s/%s: cannot renew the backup's lock lease: %s", w->r->path, w->rel_dir,
                  strerror(-ret));
    return ret;
}

const char *repo_backup_writer_id(const struct backup_writer *w)
{
    return w->id;
}

int repo_backup_add_disk(struct backup_writer *w, const struct manifest *m)
{
    char name[sizeof("disk-.manifest") + sizeof("999999")];
    CLEANUP_FREE char *rel = NULL;

    if (m->chunk_size != w->r->chunk_size || !m->disk)
        return -EINVAL;
    for (size_t i = 0; i < w->disks.len; i++)
        if (!strcmp(w->disks.ptr[i].name, m->disk))
            return -EEXIST;
    if (w->disks.len >= BACKUP_MAX_DISKS)
        return -E2BIG;
    snprintf(name, sizeof(name), "disk-%zu.manifest", w->disks.len);
    if (asprintf(&rel, "%s/%s", w->rel_dir, name) < 0)
        return -ENOMEM;
    int ret = writer_renew(w);
    if (ret == 0)
        ret = manifest_save(w->r, rel, m);
    if (ret < 0)
        return ret;

    bool fail = false;
    struct backup_disk d = {
        .name = strdup_null(m->disk, &fail),
        .size = m->disk_size,
        .change_id = strdup_null(m->change_id, &fail),
        .manifest = strdup_null(name, &fail),
    };
    if (fail || backup_disk_list_append(&w->disks, d) < 0) {
        disk_clear(&d);
        return -ENOMEM;
    }
    return 0;
}

int repo_backup_commit(struct backup_writer *w, struct backup *b)
{
    CLEANUP_FREE char *text = NULL;
    CLEANUP_FREE char *rel = NULL;

    free(b->id);
    free(b->vm_id);
    disks_reset(&b->disks);
    b->id = strdup(w->id);
    b->vm_id = strdup(w->vm_id);
    b->time = w->time; /* the ID was made from it */
    if (!b->id || !b->vm_id || disks_copy(&w->disks, &b->disks) < 0)
        return -ENOMEM;
    if (asprintf(&rel, "%s/" REPO_BACKUP_JSON, w->rel_dir) < 0)
        return -ENOMEM;
    int ret = backup_to_json(b, &text);
    if (ret < 0)
        return ret;
    /* Everything this backup references (its chunks, possibly written by other processes whose
     * directory syncs we cannot see) must be durable before backup.json makes it exist. */
    ret = store_barrier(w->r->store);
    if (ret == 0)
        ret = writer_renew(w);
    if (ret == 0)
        ret = repo_meta_write(w->r, rel, text, strlen(text));
    if (ret < 0)
        return ret;
    writer_free(w);
    return 0;
}

void repo_backup_abort(struct backup_writer *w)
{
    if (!w)
        return;
    if (w->id) {
        /* A commit that failed after its rename may have left backup.json: it goes first. */
        CLEANUP_FREE char *json = NULL;
        if (asprintf(&json, "%s/" REPO_BACKUP_JSON, w->rel_dir) >= 0 &&
            store_del(w->r->store, json, NULL) == 0)
            store_sync_prefix(w->r->store, w->rel_dir);
        int ret = repo_remove_dir(w->r, w->rel_dir, NULL);
        if (ret < 0 && ret != -ENOENT) /* ENOENT: gc removed it (the writer's lease was lost) */
            log_warn("%s/%s: cannot remove the aborted backup: %s", w->r->path, w->rel_dir,
                     strerror(-ret));
    }
    writer_free(w);
}

void repo_backup_abandon(struct backup_writer *w)
{
    if (w)
        writer_free(w);
}

/* ---- listing ---- */

struct vm_dir_walk {
    struct repo *r;
    const char *vm_dir;
    const char *prefix; /* backups/<vm dir> */
    const char *vm_id;
    backup_list *out;
    string_list *damaged;
};

static int vm_dir_entry(void *opaque, const struct store_entry *e)
{
    struct vm_dir_walk *w = opaque;
    struct backup *b;
    if (!backup_id_valid(e->name))
        return 0;
    int ret = backup_load(w->r, w->vm_dir, e->name, &b);
    if (ret == -ENOMEM)
        return ret;
    if (ret == -ENOENT) /* being written, or a crash left it: not a backup */
        return 0;
    if (ret < 0 && w->damaged) {
        char *s = NULL;
        ret = asprintf(&s, "%s/%s", w->vm_dir, e->name) < 0 ? -ENOMEM : 0;
        if (ret == 0 && (ret = string_list_append(w->damaged, s)) < 0)
            free(s);
        return ret;
    }
    if (ret < 0) {
        log_warn("%s/%s/%s/%s: skipped: %s", w->r->path, w->prefix, e->name, REPO_BACKUP_JSON,
                 ret == -EBADMSG ? "damaged" : strerror(-ret));
        return 0;
    }
    if (!w->out || (w->vm_id && strcmp(b->vm_id, w->vm_id))) {
        backup_free(b);
        return 0;
    }
    ret = backup_list_append(w->out, b);
    if (ret < 0)
        backup_free(b);
    return ret;
}

/* The committed backups of one VM directory into out (may be NULL), only those of vm_id when it
 * is given.  Damaged ones go to damaged as "<vm dir>/<id>" when it is given, else they are
 * skipped with a warning. */
static int list_vm_dir(struct repo *r, const char *vm_dir, const char *vm_id, backup_list *out,
                       string_list *damaged)
{
    CLEANUP_FREE char *rel = NULL;
    if (asprintf(&rel, REPO_BACKUPS_DIR "/%s", vm_dir) < 0)
        return -ENOMEM;
    struct vm_dir_walk w = {
        .r = r, .vm_dir = vm_dir, .prefix = rel, .vm_id = vm_id, .out = out, .damaged = damaged};
    int ret = store_list(r->store, rel, vm_dir_entry, &w);
    return ret == -ENOENT || ret == -ENOTDIR ? 0 : ret;
}

struct all_walk {
    struct repo *r;
    backup_list *out;
    string_list *damaged;
};

static int all_entry(void *opaque, const struct store_entry *e)
{
    struct all_walk *w = opaque;
    if (e->name[0] == '.' || repo_is_tmp_name(e->name))
        return 0;
    return list_vm_dir(w->r, e->name, NULL, w->out, w->damaged);
}

/* list_vm_dir() over every VM directory. */
static int list_all(struct repo *r, backup_list *out, string_list *damaged)
{
    struct all_walk w = {.r = r, .out = out, .damaged = damaged};
    return store_list(r->store, REPO_BACKUPS_DIR, all_entry, &w);
}

int repo_backup_list(struct repo *r, const char *vm_id, backup_list *out)
{
    backup_list l = VECTOR_INIT;
    int ret = 0;

    *out = l;
    if (vm_id) {
        CLEANUP_FREE char *vm_dir = NULL;
        ret = repo_vm_dir_name(vm_id, &vm_dir);
        if (ret == -EINVAL)
            return 0; /* no such VM can have backups */
        if (ret == 0)
            ret = list_vm_dir(r, vm_dir, vm_id, &l, NULL);
    } else {
        ret = list_all(r, &l, NULL);
    }
    if (ret < 0) {
        backup_list_free(&l);
        return ret;
    }
    backup_list_sort(&l, backup_cmp);
    *out = l;
    return 0;
}

int repo_backup_list_damaged(struct repo *r, string_list *out)
{
    string_list l = VECTOR_INIT;
    *out = l;
    int ret = list_all(r, NULL, &l);
    if (ret < 0) {
        string_list_free(&l);
        return ret;
    }
    string_list_sort(&l, str_cmp_asc);
    *out = l;
    return 0;
}

struct find_walk {
    struct repo *r;
    const char *id;
    char *vm_dir; /* found */
};

static int find_entry(void *opaque, const struct store_entry *e)
{
    struct find_walk *w = opaque;
    char key[sizeof(REPO_BACKUPS_DIR) + NAME_MAX + BACKUP_ID_LEN + sizeof(REPO_BACKUP_JSON) + 3];
    if (e->name[0] == '.')
        return 0;
    snprintf(key, sizeof(key), REPO_BACKUPS_DIR "/%s/%s/" REPO_BACKUP_JSON, e->name, w->id);
    if (store_exists(w->r->store, key, NULL) < 0)
        return 0;
    w->vm_dir = strdup(e->name);
    return w->vm_dir ? 1 : -ENOMEM;
}

/* The VM directory holding a committed backup of this ID: -ENOENT when none does. */
static int backup_find(struct repo *r, const char *id, char **vm_dir)
{
    *vm_dir = NULL;
    if (!backup_id_valid(id))
        return -ENOENT;
    struct find_walk w = {.r = r, .id = id};
    int ret = store_list(r->store, REPO_BACKUPS_DIR, find_entry, &w);
    if (ret < 0)
        return ret;
    if (!w.vm_dir)
        return -ENOENT;
    *vm_dir = w.vm_dir;
    return 0;
}

int repo_backup_get(struct repo *r, const char *id, struct backup **out)
{
    CLEANUP_FREE char *vm_dir = NULL;
    *out = NULL;
    int ret = backup_find(r, id, &vm_dir);
    return ret < 0 ? ret : backup_load(r, vm_dir, id, out);
}

static int id_collect(void *opaque, const struct store_entry *e)
{
    string_list *ids = opaque;
    if (!backup_id_valid(e->name))
        return 0;
    char *s = strdup(e->name);
    if (!s || string_list_append(ids, s) < 0) {
        free(s);
        return -ENOMEM;
    }
    return 0;
}

int repo_backup_latest(struct repo *r, const char *vm_id, struct backup **out)
{
    CLEANUP_FREE char *vm_dir = NULL;
    CLEANUP_FREE char *rel = NULL;
    string_list ids = VECTOR_INIT;

    *out = NULL;
    if (!vm_id)
        return -EINVAL;
    int ret = repo_vm_dir_name(vm_id, &vm_dir);
    if (ret < 0)
        return ret == -EINVAL ? -ENOENT : ret;
    if (asprintf(&rel, REPO_BACKUPS_DIR "/%s", vm_dir) < 0)
        return -ENOMEM;
    ret = store_list(r->store, rel, id_collect, &ids);
    if (ret == -ENOTDIR)
        ret = -ENOENT;

    /* IDs start with the time in a fixed-width form: the greatest ID is the newest backup. */
    string_list_sort(&ids, str_cmp_desc);
    for (size_t i = 0; ret == 0 && i < ids.len; i++) {
        struct backup *b;
        int lr = backup_load(r, vm_dir, ids.ptr[i], &b);
        if (lr == 0 && strcmp(b->vm_id, vm_id)) {
            backup_free(b);
            continue;
        }
        if (lr == 0) {
            *out = b;
            break;
        }
        if (lr == -ENOMEM)
            ret = lr;
        else if (lr != -ENOENT)
            log_warn("%s/%s/%s/%s: skipped: %s", r->path, rel, ids.ptr[i], REPO_BACKUP_JSON,
                     lr == -EBADMSG ? "damaged" : strerror(-lr));
    }
    string_list_free(&ids);
    if (ret == 0 && !*out)
        ret = -ENOENT;
    return ret;
}

int repo_manifest_read(struct repo *r, const struct backup *b, const char *disk,
                       struct manifest *out)
{
    CLEANUP_FREE char *vm_dir = NULL;
    CLEANUP_FREE char *rel = NULL;
    const struct backup_disk *d = NULL;

    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < b->disks.len && !d; i++)
        if (!strcmp(b->disks.ptr[i].name, disk))
            d = &b->disks.ptr[i];
    if (!d)
        return -ENOENT;
    if (!manifest_name_valid(d->manifest) || !backup_id_valid(b->id))
        return -EBADMSG;
    int ret = repo_vm_dir_name(b->vm_id, &vm_dir);
    if (ret < 0)
        return ret == -EINVAL ? -EBADMSG : ret;
    if (asprintf(&rel, REPO_BACKUPS_DIR "/%s/%s/%s", vm_dir, b->id, d->manifest) < 0)
        return -ENOMEM;
    ret = manifest_load(r, rel, out);
    if (ret < 0)
        return ret;
    if (strcmp(out->disk, disk) || out->disk_size != d->size || out->chunk_size != r->chunk_size) {
        manifest_free(out);
        return -EBADMSG;
    }
    return 0;
}

int repo_backup_delete(struct repo *r, const char *id)
{
    CLEANUP_FREE char *vm_dir = NULL;
    CLEANUP_FREE char *rel = NULL;
    CLEANUP_FREE char *json = NULL;

    int ret = backup_find(r, id, &vm_dir);
    if (ret < 0)
        return ret;
    if (asprintf(&rel, REPO_BACKUPS_DIR "/%s/%s", vm_dir, id) < 0 ||
        asprintf(&json, "%s/" REPO_BACKUP_JSON, rel) < 0)
        return -ENOMEM;
    /* backup.json first and durably: from then on the backup does not exist. */
    ret = store_del(r->store, json, NULL);
    if (ret == 0)
        ret = store_sync_prefix(r->store, rel);
    if (ret == 0)
        ret = repo_remove_dir(r, rel, NULL);
    return ret;
}
