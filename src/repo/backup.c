/* Backups in the repository: the writer (locks, backup directory, manifests, backup.json last),
 * listing and lookup of committed backups, deletion, and the backup.json encoding.
 *
 * A backup lives in backups/<vm dir>/<id>/ where <vm dir> is the escaped VM ID (the real one is
 * inside backup.json) and <id> is "YYYYMMDDTHHMMSSZ-xxxxxx".  It exists once backup.json does;
 * a directory without one is a backup being written or one a crash interrupted (gc removes
 * those under the exclusive lock).
 */
#include "repo_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"
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
    int vm_dir_fd; /* backups/<vm dir> */
    int dir_fd;    /* backups/<vm dir>/<id> */
    int repo_lock_fd;
    int vm_lock_fd;
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

void backup_free(struct backup *b)
{
    if (!b)
        return;
    free(b->id);
    free(b->vm_id);
    free(b->snapshot_id);
    free(b->server);
    free(b->vm_json);
    free(b->parent_id);
    disks_reset(&b->disks);
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
    CLEANUP_FREE char *b64 = repo_b64_encode(vm_id, strlen(vm_id));
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

static int json_get_uint(json_t *o, const char *key, bool optional, uint64_t *out)
{
    json_t *v = json_object_get(o, key);
    *out = 0;
    if (!v && optional)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -EBADMSG;
    *out = (uint64_t)json_integer_value(v);
    return 0;
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
    if (!b64 || repo_b64_decode(b64, &raw, &n) < 0 || memchr(raw, '\0', n))
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
        r = json_get_uint(o, "size", false, &d->size);
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
         json_get_uint(o, "version", false, &version) < 0 || version != BACKUP_JSON_VERSION ||
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
        if (json_get_uint(stats, "bytes_read", true, &b->bytes_read) < 0 ||
            json_get_uint(stats, "bytes_written", true, &b->bytes_written) < 0 ||
            json_get_uint(stats, "chunks_new", true, &b->chunks_new) < 0 ||
            json_get_uint(stats, "chunks_reused", true, &b->chunks_reused) < 0 ||
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
    if (w->dir_fd >= 0)
        close(w->dir_fd);
    if (w->vm_dir_fd >= 0)
        close(w->vm_dir_fd);
    lock_file_release(w->vm_lock_fd);
    lock_file_release(w->repo_lock_fd);
    disks_reset(&w->disks);
    free(w->vm_id);
    free(w->vm_dir);
    free(w->id);
    free(w->rel_dir);
    free(w);
}

/* Whether some VM already has a backup directory of this ID (IDs are unique repository-wide
 * so that repo_backup_get() finds one backup). */
static bool backup_id_in_use(int backups_fd, const char *id)
{
    DIR *d;
    int fd = fcntl(backups_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0 || !(d = fdopendir(fd))) {
        if (fd >= 0)
            close(fd);
        return false; /* the mkdir below still refuses a clash within the VM */
    }
    rewinddir(d);
    struct dirent *de;
    bool used = false;
    while (!used && (de = readdir(d))) {
        char rel[NAME_MAX + 1 + BACKUP_ID_LEN + 1];
        struct stat st;
        if (de->d_name[0] == '.')
            continue;
        snprintf(rel, sizeof(rel), "%s/%s", de->d_name, id);
        used = fstatat(backups_fd, rel, &st, AT_SYMLINK_NOFOLLOW) == 0;
    }
    closedir(d);
    return used;
}

/* Make id (just made by backup_id_make) sort after every backup of the same second already in
 * the VM directory, so that "the latest backup" (the greatest ID) is the one made last even
 * for several backups within one second (the VM lock serialises them).  Only the random part
 * changes: it is drawn above the greatest one in use, when there is room. */
static int backup_id_order(int vm_dir_fd, char id[BACKUP_ID_LEN + 1])
{
    int fd = fcntl(vm_dir_fd, F_DUPFD_CLOEXEC, 0);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return 0; /* ordering is best effort; uniqueness is checked by the caller */
    }
    rewinddir(d);
    struct dirent *de;
    long max = -1;
    while ((de = readdir(d))) {
        if (!backup_id_valid(de->d_name) || strncmp(de->d_name, id, BACKUP_ID_TIME_LEN))
            continue;
        long v = strtol(de->d_name + BACKUP_ID_TIME_LEN + 1, NULL, 16);
        if (v > max)
            max = v;
    }
    closedir(d);
    const long top = (1L << (8 * BACKUP_ID_RAND_BYTES)) - 1;
    if (max < 0 || max >= top)
        return 0;
    uint32_t rnd = 0;
    int ret = repo_random_bytes(&rnd, sizeof(rnd));
    if (ret < 0)
        return ret;
    unsigned long v = (unsigned long)(max + 1 + (long)(rnd % (uint32_t)(top - max)));
    static const char hex[] = "0123456789abcdef";
    for (int i = 2 * BACKUP_ID_RAND_BYTES - 1; i >= 0; i--, v >>= 4)
        id[BACKUP_ID_TIME_LEN + 1 + i] = hex[v & 0xf];
    return 0;
}

static int writer_make_dir(struct backup_writer *w, char *err, size_t errlen)
{
    struct repo *r = w->r;
    CLEANUP_CLOSE int backups_fd = -1;
    char id[BACKUP_ID_LEN + 1];

    int ret = repo_open_dir(r->dirfd, REPO_BACKUPS_DIR, &backups_fd);
    if (ret == 0)
        ret = repo_mkdir(backups_fd, w->vm_dir);
    if (ret == 0)
        ret = repo_open_dir(backups_fd, w->vm_dir, &w->vm_dir_fd);
    for (int i = 0; ret == 0 && i < BACKUP_ID_TRIES; i++) {
        ret = backup_id_make(w->time, id);
        if (ret == 0)
            ret = backup_id_order(w->vm_dir_fd, id);
        if (ret < 0 || backup_id_in_use(backups_fd, id))
            continue;
        if (mkdirat(w->vm_dir_fd, id, REPO_DIR_MODE) == 0) {
            w->id = strdup(id);
            break;
        }
        if (errno != EEXIST)
            ret = repo_write_errno(errno);
    }
    if (ret == 0 && !w->id)
        ret = -EEXIST;
    if (ret == 0 && fsync(w->vm_dir_fd) < 0)
        ret = repo_write_errno(errno);
    if (ret == 0)
        ret = repo_open_dir(w->vm_dir_fd, w->id, &w->dir_fd);
    if (ret == 0 && asprintf(&w->rel_dir, REPO_BACKUPS_DIR "/%s/%s", w->vm_dir, w->id) < 0)
        ret = -ENOMEM;
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
    w->vm_dir_fd = w->dir_fd = w->repo_lock_fd = w->vm_lock_fd = -1;

    ret = vm_id ? repo_vm_dir_name(vm_id, &w->vm_dir) : -EINVAL;
    if (ret < 0) {
        repo_set_err(err, errlen, "invalid VM ID (empty or containing '/')");
        goto fail;
    }
    ret = -ENOMEM;
    if (!(w->vm_id = strdup(vm_id)))
        goto fail;

    int64_t deadline = lock_deadline(lock_timeout);
    ret = lock_file_acquire(r, REPO_LOCK_NAME, false, deadline, &w->repo_lock_fd);
    if (ret < 0) {
        if (ret == -EBUSY)
            repo_set_err(err, errlen, "%s: the repository is locked for maintenance (gc or prune)",
                         r->path);
        else
            repo_set_err(err, errlen, "%s: cannot lock the repository: %s", r->path,
                         strerror(-ret));
        goto fail;
    }
    ret = -ENOMEM;
    if (asprintf(&lock_name, VM_LOCK_PREFIX "%s" VM_LOCK_SUFFIX, w->vm_dir) < 0)
        goto fail;
    ret = lock_file_acquire(r, lock_name, true, deadline, &w->vm_lock_fd);
    if (ret < 0) {
        if (ret == -EBUSY)
            repo_set_err(err, errlen, "%s: a backup of VM %s is already running", r->path,
                         w->vm_dir);
        else
            repo_set_err(err, errlen, "%s: cannot lock VM %s: %s", r->path, w->vm_dir,
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

const char *repo_backup_writer_id(const struct backup_writer *w)
{
    return w->id;
}

int repo_backup_add_disk(struct backup_writer *w, const struct manifest *m)
{
    char name[sizeof("disk-.manifest") + sizeof("999999")];
    CLEANUP_FREE char *rel = NULL;
    CLEANUP_FREE uint8_t *data = NULL;
    size_t len;

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
    int ret = manifest_encode(m, &data, &len);
    if (ret == 0)
        ret = repo_meta_write(w->r, w->dir_fd, name, rel, data, len);
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
     * directory fsyncs we cannot see) must be durable before backup.json makes it exist. */
    if (syncfs(w->dir_fd) < 0)
        return repo_write_errno(errno);
    ret = repo_meta_write(w->r, w->dir_fd, REPO_BACKUP_JSON, rel, text, strlen(text));
    if (ret < 0)
        return ret;
    writer_free(w);
    return 0;
}

void repo_backup_abort(struct backup_writer *w)
{
    if (!w)
        return;
    if (w->dir_fd >= 0) {
        /* A commit that failed after its rename may have left backup.json: it goes first. */
        if (unlinkat(w->dir_fd, REPO_BACKUP_JSON, 0) == 0)
            fsync(w->dir_fd);
        int ret = repo_remove_dir(w->vm_dir_fd, w->id, NULL);
        if (ret < 0)
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

/* The committed backups of one VM directory into out (may be NULL), only those of vm_id when it
 * is given.  Damaged ones go to damaged as "<vm dir>/<id>" when it is given, else they are
 * skipped with a warning. */
static int list_vm_dir(struct repo *r, const char *vm_dir, const char *vm_id, backup_list *out,
                       string_list *damaged)
{
    CLEANUP_FREE char *rel = NULL;
    int fd;
    if (asprintf(&rel, REPO_BACKUPS_DIR "/%s", vm_dir) < 0)
        return -ENOMEM;
    int ret = repo_open_dir(r->dirfd, rel, &fd);
    if (ret == -ENOENT || ret == -ENOTDIR)
        return 0;
    if (ret < 0)
        return ret;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -ENOMEM;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        struct backup *b;
        if (!backup_id_valid(de->d_name))
            continue;
        ret = backup_load(r, vm_dir, de->d_name, &b);
        if (ret == -ENOMEM)
            break;
        if (ret == -ENOENT) { /* being written, or a crash left it: not a backup */
            ret = 0;
            continue;
        }
        if (ret < 0 && damaged) {
            char *s = NULL;
            ret = asprintf(&s, "%s/%s", vm_dir, de->d_name) < 0 ? -ENOMEM : 0;
            if (ret == 0 && (ret = string_list_append(damaged, s)) < 0)
                free(s);
            if (ret < 0)
                break;
            continue;
        }
        if (ret < 0) {
            log_warn("%s/%s/%s/%s: skipped: %s", r->path, rel, de->d_name, REPO_BACKUP_JSON,
                     ret == -EBADMSG ? "damaged" : strerror(-ret));
            ret = 0;
            continue;
        }
        if (!out || (vm_id && strcmp(b->vm_id, vm_id))) {
            backup_free(b);
            continue;
        }
        ret = backup_list_append(out, b);
        if (ret < 0) {
            backup_free(b);
            break;
        }
    }
    closedir(d);
    return ret;
}

/* list_vm_dir() over every VM directory. */
static int list_all(struct repo *r, backup_list *out, string_list *damaged)
{
    int fd;
    int ret = repo_open_dir(r->dirfd, REPO_BACKUPS_DIR, &fd);
    if (ret < 0)
        return ret;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -ENOMEM;
    }
    struct dirent *de;
    while (ret == 0 && (de = readdir(d)))
        if (de->d_name[0] != '.' && !repo_is_tmp_name(de->d_name))
            ret = list_vm_dir(r, de->d_name, NULL, out, damaged);
    closedir(d);
    return ret;
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

/* The VM directory holding a committed backup of this ID: -ENOENT when none does. */
static int backup_find(struct repo *r, const char *id, char **vm_dir)
{
    *vm_dir = NULL;
    if (!backup_id_valid(id))
        return -ENOENT;
    int fd;
    int ret = repo_open_dir(r->dirfd, REPO_BACKUPS_DIR, &fd);
    if (ret < 0)
        return ret;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -ENOMEM;
    }
    struct dirent *de;
    ret = -ENOENT;
    while ((de = readdir(d))) {
        char rel[NAME_MAX + BACKUP_ID_LEN + sizeof(REPO_BACKUP_JSON) + 2];
        struct stat st;
        if (de->d_name[0] == '.')
            continue;
        snprintf(rel, sizeof(rel), "%s/%s/" REPO_BACKUP_JSON, de->d_name, id);
        if (fstatat(fd, rel, &st, 0) == 0) {
            *vm_dir = strdup(de->d_name);
            ret = *vm_dir ? 0 : -ENOMEM;
            break;
        }
    }
    closedir(d);
    return ret;
}

int repo_backup_get(struct repo *r, const char *id, struct backup **out)
{
    CLEANUP_FREE char *vm_dir = NULL;
    *out = NULL;
    int ret = backup_find(r, id, &vm_dir);
    return ret < 0 ? ret : backup_load(r, vm_dir, id, out);
}

int repo_backup_latest(struct repo *r, const char *vm_id, struct backup **out)
{
    CLEANUP_FREE char *vm_dir = NULL;
    CLEANUP_FREE char *rel = NULL;
    string_list ids = VECTOR_INIT;
    int fd;

    *out = NULL;
    if (!vm_id)
        return -EINVAL;
    int ret = repo_vm_dir_name(vm_id, &vm_dir);
    if (ret < 0)
        return ret == -EINVAL ? -ENOENT : ret;
    if (asprintf(&rel, REPO_BACKUPS_DIR "/%s", vm_dir) < 0)
        return -ENOMEM;
    ret = repo_open_dir(r->dirfd, rel, &fd);
    if (ret < 0)
        return ret == -ENOTDIR ? -ENOENT : ret;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -ENOMEM;
    }
    struct dirent *de;
    while (ret == 0 && (de = readdir(d))) {
        if (!backup_id_valid(de->d_name))
            continue;
        char *s = strdup(de->d_name);
        if (!s || string_list_append(&ids, s) < 0) {
            free(s);
            ret = -ENOMEM;
        }
    }
    closedir(d);

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
    CLEANUP_CLOSE int vm_fd = -1;
    CLEANUP_CLOSE int dir_fd = -1;

    int ret = backup_find(r, id, &vm_dir);
    if (ret < 0)
        return ret;
    if (asprintf(&rel, REPO_BACKUPS_DIR "/%s", vm_dir) < 0)
        return -ENOMEM;
    ret = repo_open_dir(r->dirfd, rel, &vm_fd);
    if (ret == 0)
        ret = repo_open_dir(vm_fd, id, &dir_fd);
    if (ret < 0)
        return ret;
    /* backup.json first and durably: from then on the backup does not exist. */
    if (unlinkat(dir_fd, REPO_BACKUP_JSON, 0) < 0)
        return -errno;
    if (fsync(dir_fd) < 0)
        return -errno;
    return repo_remove_dir(vm_fd, id, NULL);
}
