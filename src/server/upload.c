/* The registry of uploads of new disks; see upload.h.
 *
 * One mutex guards the list of transfers and each transfer's state, references and writer
 * slots; it is held only for those few fields, never across I/O.  Data is written with pwrite
 * on the transfer's shared descriptor, outside the lock, by as many requests as there are
 * disjoint claimed ranges.  A transfer leaves the list when it is finalized, cancelled or
 * expires, and is freed when its last reference is dropped.
 */
#include "server/upload.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/clock.h"
#include "core/hash.h"
#include "core/hex.h"
#include "core/log.h"
#include "server/server.h"

/* Partial file names: "upload-" and the first hex digits of SHA-256(tag, ID), ".partial". */
#define PARTIAL_NAME_TAG    "vmexport upload partial file\n"
#define PARTIAL_NAME_PREFIX "upload-"
#define PARTIAL_NAME_SUFFIX ".partial"
#define PARTIAL_NAME_DIGITS 32
#define PARTIAL_NAME_MAX                                                                           \
    (sizeof(PARTIAL_NAME_PREFIX) + PARTIAL_NAME_DIGITS + sizeof(PARTIAL_NAME_SUFFIX))
/* A transfer ID in a log line: its first UPLOAD_ID_LOGGED characters. */
#define LOG_ID         "%.*s"
#define LOG_ID_ARG(id) (int)UPLOAD_ID_LOGGED, (id)
/* How often the reaper looks for idle transfers. */
#define UPLOAD_REAP_INTERVAL_MS 500
/* Transfers open at once, all VMs together (each holds a file descriptor). */
#define UPLOAD_MAX_TRANSFERS 1024

#define MS_PER_S  1000u
#define NS_PER_MS 1000000u

struct uploads {
    struct server *srv;
    pthread_mutex_t lock;
    pthread_cond_t wake; /* the reaper's timer, and its stop signal */
    pthread_t reaper;
    bool reaper_running, stopping;
    struct transfer *list;
    uint64_t idle_ms;
    unsigned max_writers;
};

static uint64_t now_ms(void)
{
    return (uint64_t)clock_monotonic_ns() / NS_PER_MS;
}

static int transfer_id_new(char out[UPLOAD_ID_LEN + 1])
{
    uint8_t b[UPLOAD_ID_BYTES];
    if (RAND_bytes(b, sizeof(b)) != 1)
        return -EIO;
    hex_encode(b, sizeof(b), out);
    return 0;
}

/* The name of the partial file of upload id: a digest of the ID, so that whoever sees the name
 * cannot get the ID from it, while the next start can tell that a recorded file is the
 * upload's own (uploads_recover). */
static int partial_name(const char *id, char out[PARTIAL_NAME_MAX])
{
    char tagged[sizeof(PARTIAL_NAME_TAG) + UPLOAD_ID_LEN];
    int n = snprintf(tagged, sizeof(tagged), "%s%s", PARTIAL_NAME_TAG, id);
    if (n < 0 || (size_t)n >= sizeof(tagged))
        return -EINVAL;
    uint8_t digest[HASH_SIZE];
    char hex[2 * HASH_SIZE + 1];
    int r = hash_sha256(tagged, (size_t)n, digest);
    if (r < 0)
        return r;
    hash_to_hex(digest, hex);
    snprintf(out, PARTIAL_NAME_MAX, "%s%.*s%s", PARTIAL_NAME_PREFIX, PARTIAL_NAME_DIGITS, hex,
             PARTIAL_NAME_SUFFIX);
    return 0;
}

static void transfer_free(struct transfer *t)
{
    if (!t)
        return;
    disk_writer_close(t->writer);
    free(t->provider);
    free(t->vm_id);
    free(t->disk);
    free(t->snapshot);
    free(t->partial_path);
    free(t->final_path);
    free(t->writers);
    free(t);
}

/* Take t out of the list.  Called with the lock held. */
static void list_remove(struct uploads *u, struct transfer *t)
{
    for (struct transfer **pp = &u->list; *pp; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            t->next = NULL;
            return;
        }
    }
}

/* Remove the partial file of a transfer that left the list, and its catalog record (uploads);
 * log the end of the transfer. */
static void transfer_discard(struct uploads *u, struct transfer *t, const char *why)
{
    if (t->direction == TRANSFER_DOWNLOAD) {
        log_info("download " LOG_ID " of VM %s snapshot %s disk %s %s", LOG_ID_ARG(t->id), t->vm_id,
                 t->snapshot, t->disk, why);
        return;
    }
    int e = t->writer->ops->remove(t->writer);
    if (e < 0)
        log_error("upload " LOG_ID " of VM %s disk %s: removing %s: %s", LOG_ID_ARG(t->id),
                  t->vm_id, t->disk, t->partial_path, strerror(-e));
    int r = catalog_upload_remove(u->srv->catalog, t->id);
    if (r < 0 && r != -ENOENT)
        log_error("upload " LOG_ID ": removing its catalog record: %s (removed at the next start)",
                  LOG_ID_ARG(t->id), strerror(-r));
    log_info("upload " LOG_ID " of VM %s disk %s %s: removed %s", LOG_ID_ARG(t->id), t->vm_id,
             t->disk, why, t->partial_path);
}

/* ---- recovery and the reaper ---- */

/* Remove the partial disk of rec with the providers that take uploads (records name no
 * provider: each provider removes only partial disks of its own, named after their upload, and
 * refuses others with -EPERM).  -ENOENT when no provider takes uploads. */
static int upload_discard(struct server *s, const struct upload_record *rec)
{
    char name[PARTIAL_NAME_MAX];
    if (strlen(rec->id) != UPLOAD_ID_LEN || partial_name(rec->id, name) < 0)
        return -EPERM;
    int r = -ENOENT;
    for (size_t i = 0; i < s->n_providers; i++) {
        struct provider *p = s->providers[i];
        if (!p->ops->upload_discard)
            continue;
        r = p->ops->upload_discard(p, rec->partial_path, rec->id, name);
        if (r != -EPERM)
            break;
    }
    return r;
}

/* Remove the partial files of uploads recorded by an earlier run: a crash or a stop ended
 * them, and nothing half-written may ever become a disk. */
static int uploads_recover(struct uploads *u)
{
    upload_record_list l = VECTOR_INIT;
    int r = catalog_upload_list(u->srv->catalog, &l);
    for (size_t i = 0; r == 0 && i < l.len; i++) {
        const struct upload_record *rec = &l.ptr[i];
        /* A damaged catalog must not make the daemon delete some other file: the provider
         * removes only partial disks named after their upload.  (An old-style name holds the
         * ID of a transfer the restart ended: logging it gives away no credential.) */
        int e = upload_discard(u->srv, rec);
        if (e == -EPERM) {
            log_error("upload " LOG_ID ": recorded partial file %s is not named after the "
                      "upload; left alone",
                      LOG_ID_ARG(rec->id), rec->partial_path);
        } else if (e == 0) {
            log_warn("upload " LOG_ID " of VM %s disk %s (%s) was interrupted by a restart: "
                     "removed %s",
                     LOG_ID_ARG(rec->id), rec->vm_id, rec->disk, rec->created_at,
                     rec->partial_path);
        } else if (e == -ENOENT) {
            log_warn("upload " LOG_ID " of VM %s disk %s (%s) was interrupted by a restart: no "
                     "partial file left",
                     LOG_ID_ARG(rec->id), rec->vm_id, rec->disk, rec->created_at);
        } else {
            r = e;
            log_error("upload " LOG_ID ": removing %s: %s (retried at the next start)",
                      LOG_ID_ARG(rec->id), rec->partial_path, strerror(-r));
            break;
        }
        int cr = catalog_upload_remove(u->srv->catalog, rec->id);
        if (cr < 0 && cr != -ENOENT)
            r = cr;
    }
    upload_record_list_free(&l);
    return r;
}

static void *reaper_main(void *arg)
{
    struct uploads *u = arg;
    pthread_mutex_lock(&u->lock);
    while (!u->stopping) {
        struct timespec deadline;
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        uint64_t ns = (uint64_t)deadline.tv_nsec + (uint64_t)UPLOAD_REAP_INTERVAL_MS * NS_PER_MS;
        deadline.tv_sec += (time_t)(ns / (NS_PER_MS * MS_PER_S));
        deadline.tv_nsec = (long)(ns % (NS_PER_MS * MS_PER_S));
        pthread_cond_timedwait(&u->wake, &u->lock, &deadline);
        if (u->stopping)
            break;
        uint64_t now = now_ms();
        struct transfer *expired = NULL;
        for (struct transfer **pp = &u->list; *pp;) {
            struct transfer *t = *pp;
            if (t->state == TRANSFER_ACTIVE && t->refs == 0 &&
                now - t->last_used_ms >= u->idle_ms) {
                *pp = t->next;
                t->state = TRANSFER_GONE;
                t->next = expired;
                expired = t;
            } else {
                pp = &t->next;
            }
        }
        pthread_mutex_unlock(&u->lock);
        /* Out of the list with no reference: nobody else can reach them. */
        while (expired) {
            struct transfer *t = expired;
            expired = t->next;
            char why[64];
            snprintf(why, sizeof(why), "expired (%llu s without requests)",
                     (unsigned long long)(u->idle_ms / MS_PER_S));
            transfer_discard(u, t, why);
            transfer_free(t);
        }
        pthread_mutex_lock(&u->lock);
    }
    pthread_mutex_unlock(&u->lock);
    return NULL;
}

int uploads_open(struct server *s, struct uploads **out)
{
    struct uploads *u = calloc(1, sizeof(*u));
    if (!u)
        return -ENOMEM;
    u->srv = s;
    u->idle_ms = (uint64_t)s->cfg->upload_idle_timeout * MS_PER_S;
    u->max_writers = s->cfg->upload_max_writers;
    pthread_mutex_init(&u->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&u->wake, &ca);
    pthread_condattr_destroy(&ca);

    int r = uploads_recover(u);
    if (r < 0)
        log_warn("removing the partial files of interrupted uploads: %s (will retry at the next "
                 "start)",
                 strerror(-r));
    int e = pthread_create(&u->reaper, NULL, reaper_main, u);
    if (e != 0) {
        uploads_close(u);
        return -e;
    }
    u->reaper_running = true;
    *out = u;
    return 0;
}

void uploads_close(struct uploads *u)
{
    if (!u)
        return;
    pthread_mutex_lock(&u->lock);
    u->stopping = true;
    pthread_cond_signal(&u->wake);
    pthread_mutex_unlock(&u->lock);
    if (u->reaper_running)
        pthread_join(u->reaper, NULL);
    /* No request runs any more: what is left can never be finished by its client. */
    while (u->list) {
        struct transfer *t = u->list;
        u->list = t->next;
        t->state = TRANSFER_GONE;
        if (t->partial_path || t->direction == TRANSFER_DOWNLOAD)
            transfer_discard(u, t, "cancelled by the daemon's stop");
        if (t->refs == 0)
            transfer_free(t);
        else
            log_warn("transfer " LOG_ID ": still referenced at stop; not freed", LOG_ID_ARG(t->id));
    }
    pthread_cond_destroy(&u->wake);
    pthread_mutex_destroy(&u->lock);
    free(u);
}

unsigned uploads_max_writers(const struct uploads *u)
{
    return u->max_writers;
}

/* ---- transfers ---- */

/* Reserve a place in the list for t (state CREATING), unless the same disk is being uploaded
 * already (uploads) or too many transfers are open. */
static int transfer_reserve(struct uploads *u, struct transfer *t, char *err, size_t errlen)
{
    int r = 0;
    size_t n = 0;
    pthread_mutex_lock(&u->lock);
    for (struct transfer *o = u->list; o; o = o->next) {
        n++;
        if (t->direction == TRANSFER_UPLOAD && o->direction == TRANSFER_UPLOAD &&
            !strcmp(o->provider, t->provider) && !strcmp(o->vm_id, t->vm_id) &&
            !strcmp(o->disk, t->disk)) {
            /* The other transfer's ID is its client's secret: not told here. */
            snprintf(err, errlen, "an upload of disk '%s' of VM '%s' is already in progress",
                     t->disk, t->vm_id);
            r = -EBUSY;
            break;
        }
    }
    if (r == 0 && n >= UPLOAD_MAX_TRANSFERS) {
        snprintf(err, errlen, "too many transfers in progress (%d); finish or cancel some",
                 UPLOAD_MAX_TRANSFERS);
        r = -EMFILE;
    }
    if (r == 0) {
        t->state = TRANSFER_CREATING;
        t->next = u->list;
        u->list = t;
    }
    pthread_mutex_unlock(&u->lock);
    return r;
}

/* Give t its ID and reserve its place in the list (transfer_reserve); on failure t is freed. */
static int transfer_register(struct uploads *u, struct transfer *t, char *err, size_t errlen)
{
    int r = transfer_id_new(t->id);
    if (r < 0)
        snprintf(err, errlen, "no random numbers for a transfer ID");
    else
        r = transfer_reserve(u, t, err, errlen);
    if (r < 0)
        transfer_free(t);
    return r;
}

/* Make the partial disk: recorded in the catalog first, so that no crash can leave a file
 * the next start does not know of. */
static int transfer_make_file(struct uploads *u, struct transfer *t, bool *recorded, char *err,
                              size_t errlen)
{
    CLEANUP_FREE char *created_at = clock_rfc3339_now();
    if (!created_at)
        return -ENOMEM;
    struct upload_record rec = {
        .id = t->id,
        .vm_id = t->vm_id,
        .disk = t->disk,
        .partial_path = t->partial_path,
        .final_path = t->final_path,
        .size = t->size,
        .created_at = created_at,
    };
    int r = catalog_upload_add(u->srv->catalog, &rec);
    if (r < 0) {
        snprintf(err, errlen, "catalog: recording the upload: %s", strerror(-r));
        return r;
    }
    *recorded = true;
    return t->writer->ops->create(t->writer, t->size, err, errlen);
}

/* A new transfer of size bytes with its names copied (snap_id NULL for an upload) and room for
 * nwriters writers; NULL when out of memory. */
static struct transfer *transfer_new(enum transfer_direction direction, const char *provider,
                                     const char *vm_id, const char *snap_id, const char *disk,
                                     uint64_t size, size_t nwriters)
{
    struct transfer *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->direction = direction;
    t->size = size;
    t->provider = strdup(provider);
    t->vm_id = strdup(vm_id);
    t->snapshot = snap_id ? strdup(snap_id) : NULL;
    t->disk = strdup(disk);
    t->writers = nwriters ? calloc(nwriters, sizeof(*t->writers)) : NULL;
    if (!t->provider || !t->vm_id || (snap_id && !t->snapshot) || !t->disk ||
        (nwriters && !t->writers)) {
        transfer_free(t);
        return NULL;
    }
    return t;
}

/* A registered transfer is ready for requests (under u->lock). */
static void transfer_activate_locked(struct transfer *t)
{
    t->state = TRANSFER_ACTIVE;
    t->refs = 1;
    t->last_used_ms = now_ms();
}

int upload_create(struct uploads *u, struct provider *p, const char *vm_id, const char *disk,
                  uint64_t size, struct transfer **out, char *err, size_t errlen)
{
    if (!p->ops->upload_open) {
        snprintf(err, errlen, "provider %s cannot create disks", p->name);
        return -EOPNOTSUPP;
    }
    struct transfer *t =
        transfer_new(TRANSFER_UPLOAD, p->name, vm_id, NULL, disk, size, u->max_writers);
    if (!t)
        return -ENOMEM;
    int r = transfer_register(u, t, err, errlen);
    if (r < 0)
        return r;
    bool recorded = false;
    char name[PARTIAL_NAME_MAX];
    r = partial_name(t->id, name);
    if (r == 0)
        r = p->ops->upload_open(p, vm_id, disk, name, &t->writer, err, errlen);
    if (r == 0 && (!(t->partial_path = strdup(t->writer->partial)) ||
                   !(t->final_path = strdup(t->writer->final))))
        r = -ENOMEM;
    if (r == 0)
        r = transfer_make_file(u, t, &recorded, err, errlen);

    pthread_mutex_lock(&u->lock);
    if (r == 0) {
        transfer_activate_locked(t);
    } else {
        list_remove(u, t);
    }
    pthread_mutex_unlock(&u->lock);
    if (r < 0) {
        if (recorded)
            catalog_upload_remove(u->srv->catalog, t->id);
        transfer_free(t);
        return r;
    }
    log_info("upload " LOG_ID " of VM %s disk %s (%llu bytes) started in %s", LOG_ID_ARG(t->id),
             t->vm_id, t->disk, (unsigned long long)t->size, t->partial_path);
    *out = t;
    return 0;
}

int download_create(struct uploads *u, const char *provider, const char *vm_id, const char *snap_id,
                    const char *disk, uint64_t size, struct transfer **out, char *err,
                    size_t errlen)
{
    struct transfer *t = transfer_new(TRANSFER_DOWNLOAD, provider, vm_id, snap_id, disk, size, 0);
    if (!t)
        return -ENOMEM;
    int r = transfer_register(u, t, err, errlen);
    if (r < 0)
        return r;
    pthread_mutex_lock(&u->lock);
    transfer_activate_locked(t);
    pthread_mutex_unlock(&u->lock);
    log_info("download " LOG_ID " of VM %s snapshot %s disk %s (%llu bytes) started",
             LOG_ID_ARG(t->id), t->vm_id, t->snapshot, t->disk, (unsigned long long)t->size);
    *out = t;
    return 0;
}

struct transfer *upload_get(struct uploads *u, const char *id)
{
    if (strlen(id) != UPLOAD_ID_LEN)
        return NULL;
    struct transfer *found = NULL;
    pthread_mutex_lock(&u->lock);
    /* IDs are credentials: compared in constant time, and every entry is compared. */
    for (struct transfer *t = u->list; t; t = t->next)
        if (CRYPTO_memcmp(t->id, id, UPLOAD_ID_LEN) == 0 &&
            (t->state == TRANSFER_ACTIVE || t->state == TRANSFER_FINALIZING))
            found = t;
    if (found) {
        found->refs++;
        found->last_used_ms = now_ms();
    }
    pthread_mutex_unlock(&u->lock);
    return found;
}

void upload_put(struct uploads *u, struct transfer *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&u->lock);
    t->refs--;
    t->last_used_ms = now_ms();
    bool last = t->refs == 0 && t->state == TRANSFER_GONE;
    pthread_mutex_unlock(&u->lock);
    if (last)
        transfer_free(t);
}

bool upload_is_gone(struct uploads *u, struct transfer *t)
{
    pthread_mutex_lock(&u->lock);
    bool gone = t->state == TRANSFER_GONE;
    pthread_mutex_unlock(&u->lock);
    return gone;
}

int upload_write_begin(struct uploads *u, struct transfer *t, uint64_t offset, uint64_t length,
                       int *slot)
{
    if (t->direction != TRANSFER_UPLOAD)
        return -EBADF;
    if (length == 0 || offset >= t->size || length > t->size - offset)
        return -ERANGE;
    uint64_t end = offset + length;
    int r = 0, free_slot = -1;
    pthread_mutex_lock(&u->lock);
    if (t->state == TRANSFER_FINALIZING)
        r = -EALREADY;
    else if (t->state != TRANSFER_ACTIVE)
        r = -ENOENT;
    for (unsigned i = 0; r == 0 && i < u->max_writers; i++) {
        const struct transfer_writer *w = &t->writers[i];
        if (!w->used) {
            if (free_slot < 0)
                free_slot = (int)i;
        } else if (offset < w->end && w->start < end) {
            r = -EBUSY;
        }
    }
    if (r == 0 && free_slot < 0)
        r = -EUSERS;
    if (r == 0) {
        struct transfer_writer *w = &t->writers[free_slot];
        w->start = offset;
        w->end = end;
        w->used = true;
        *slot = free_slot;
    }
    pthread_mutex_unlock(&u->lock);
    return r;
}

void upload_write_end(struct uploads *u, struct transfer *t, int slot)
{
    if (slot < 0)
        return;
    pthread_mutex_lock(&u->lock);
    t->writers[slot].used = false;
    t->last_used_ms = now_ms();
    pthread_mutex_unlock(&u->lock);
}

/* Whether [offset, offset + length) lies inside the disk. */
static bool in_disk(const struct transfer *t, uint64_t offset, uint64_t length)
{
    return offset <= t->size && length <= t->size - offset;
}

int upload_pwrite(struct transfer *t, const void *buf, size_t len, uint64_t offset)
{
    if (!in_disk(t, offset, len))
        return -ERANGE;
    return t->writer->ops->pwrite(t->writer, buf, len, offset);
}

int upload_zero(struct transfer *t, uint64_t offset, uint64_t length)
{
    if (!in_disk(t, offset, length))
        return -ERANGE;
    return t->writer->ops->zero(t->writer, offset, length);
}

/* r, remembered in t->wb_err when it is the transfer's first failure to get data onto the
 * disk. */
static int wb_failed(struct transfer *t, int r)
{
    int none = 0;
    if (r < 0)
        atomic_compare_exchange_strong(&t->wb_err, &none, r);
    return r;
}

int upload_flush(struct transfer *t)
{
    int r = atomic_load(&t->wb_err);
    if (r == 0)
        r = wb_failed(t, t->writer->ops->flush(t->writer));
    return r;
}

int upload_writeback(struct uploads *u, struct transfer *t, int slot, uint64_t offset,
                     uint64_t length)
{
    pthread_mutex_lock(&u->lock);
    struct transfer_writer *w = &t->writers[slot];
    uint64_t wb_start = w->wb_start, wb_len = w->wb_len;
    w->wb_start = offset;
    w->wb_len = length;
    pthread_mutex_unlock(&u->lock);
    return wb_failed(t, t->writer->ops->writeback(t->writer, wb_start, wb_len, offset, length));
}

/* Back to ACTIVE after a finalize that could not publish the disk. */
static void transfer_reactivate(struct uploads *u, struct transfer *t)
{
    pthread_mutex_lock(&u->lock);
    t->state = TRANSFER_ACTIVE;
    pthread_mutex_unlock(&u->lock);
}

/* 0 when t may be finalized or cancelled, -EALREADY while it is being finalized, -ENOENT
 * when it is gone (under u->lock). */
static int transfer_active_locked(const struct transfer *t)
{
    if (t->state == TRANSFER_FINALIZING)
        return -EALREADY;
    return t->state == TRANSFER_ACTIVE ? 0 : -ENOENT;
}

int upload_finalize(struct uploads *u, struct transfer *t, char *err, size_t errlen)
{
    int r = 0;
    if (t->direction != TRANSFER_UPLOAD) {
        snprintf(err, errlen, "a download has nothing to finalize");
        return -EBADF;
    }
    pthread_mutex_lock(&u->lock);
    r = transfer_active_locked(t);
    if (r == 0) {
        for (unsigned i = 0; i < u->max_writers; i++)
            if (t->writers[i].used)
                r = -EBUSY;
        if (r == 0)
            t->state = TRANSFER_FINALIZING;
    }
    pthread_mutex_unlock(&u->lock);
    if (r == -EALREADY)
        snprintf(err, errlen, "transfer %s is being finalized", t->id);
    else if (r == -ENOENT)
        snprintf(err, errlen, "transfer %s is gone", t->id);
    else if (r == -EBUSY)
        snprintf(err, errlen, "transfer %s has writes in progress; finalize after they end", t->id);
    if (r < 0)
        return r;

    if ((r = atomic_load(&t->wb_err)) < 0 ||
        (r = wb_failed(t, t->writer->ops->sync(t->writer))) < 0) {
        snprintf(err, errlen, "flushing %s: %s", t->partial_path, strerror(-r));
        transfer_reactivate(u, t);
        return r;
    }
    /* Writes never reach past the disk, but something else may have changed the file. */
    uint64_t size;
    if ((r = t->writer->ops->size(t->writer, &size)) < 0) {
        snprintf(err, errlen, "%s: %s", t->partial_path, strerror(-r));
        transfer_reactivate(u, t);
        return r;
    }
    if (size != t->size) {
        snprintf(err, errlen,
                 "%s is %llu bytes, not the disk's %llu; not published (cancel the transfer)",
                 t->partial_path, (unsigned long long)size, (unsigned long long)t->size);
        transfer_reactivate(u, t);
        return -EFBIG;
    }
    if ((r = t->writer->ops->publish(t->writer)) < 0) {
        if (r == -EEXIST)
            snprintf(err, errlen,
                     "a file named '%s' appeared in VM '%s' during the upload; cancel this "
                     "transfer and upload under another name",
                     t->disk, t->vm_id);
        else
            snprintf(err, errlen, "renaming %s to %s: %s", t->partial_path, t->final_path,
                     strerror(-r));
        transfer_reactivate(u, t);
        return r;
    }
    int e = catalog_upload_remove(u->srv->catalog, t->id);
    if (e < 0 && e != -ENOENT)
        log_error("upload " LOG_ID ": removing its catalog record: %s (removed at the next start)",
                  LOG_ID_ARG(t->id), strerror(-e));
    pthread_mutex_lock(&u->lock);
    t->state = TRANSFER_GONE;
    list_remove(u, t);
    pthread_mutex_unlock(&u->lock);
    log_info("upload " LOG_ID " finished: VM %s disk %s (%llu bytes) is %s", LOG_ID_ARG(t->id),
             t->vm_id, t->disk, (unsigned long long)t->size, t->final_path);
    return 0;
}

int upload_cancel(struct uploads *u, struct transfer *t)
{
    int r = 0;
    pthread_mutex_lock(&u->lock);
    r = transfer_active_locked(t);
    if (r == 0) {
        t->state = TRANSFER_GONE;
        list_remove(u, t);
    }
    pthread_mutex_unlock(&u->lock);
    if (r == 0)
        transfer_discard(u, t, "cancelled");
    return r;
}
