/* Taking and removing snapshots of whole VMs.
 *
 * A snapshot is all of a VM's snapshot-compatible disks or none: it is recorded as "creating"
 * with the locators the provider gives its disks, the provider snapshots them (all or none,
 * provider.h), and any failure removes the record.  A crash mid-way leaves a "creating" record
 * that snapshot_recover() cleans at the next start.  Freeze/thaw commands, when configured, run
 * around the provider's work (hook.c).  Removing a snapshot's disks, for a rollback, a
 * deletion or a recovery, is snapshot_disks_remove() and the provider's snapshot_delete.
 */
#include <errno.h>
#include <inttypes.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cleanup.h"
#include "core/clock.h"
#include "core/log.h"
#include "server/disk_cache.h"
#include "server/server.h"

static int uuid4(char out[37])
{
    uint8_t b[16];
    if (RAND_bytes(b, sizeof(b)) != 1)
        return -EIO;
    b[6] = (b[6] & 0x0f) | 0x40; /* version 4 */
    b[8] = (b[8] & 0x3f) | 0x80; /* RFC 4122 variant */
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
    return 0;
}

static uint64_t now_us(void)
{
    return (uint64_t)clock_monotonic_ns() / 1000u;
}

/* The disk of vm named name: snapshot disks are made from the VM's, one per name. */
static const struct vm_disk *vm_disk_of(const struct vm *vm, const char *name)
{
    for (size_t i = 0; i < vm->disks.len; i++)
        if (!strcmp(vm->disks.ptr[i].name, name))
            return &vm->disks.ptr[i];
    return NULL; /* not reached: snapshot_create made every snapshot disk from one of vm's */
}

/* The freeze/thaw hooks of the server, around the provider's snapshot (provider_quiesce). */
struct quiesce {
    struct server *s;
    const char *vm_id;
    const char *snap_id;
};

static int quiesce_freeze(void *opaque, char *err, size_t errlen)
{
    struct quiesce *q = opaque;
    const struct server_config *cfg = q->s->cfg;
    int r = hook_run(cfg->freeze_argv, q->vm_id, "freeze", cfg->hook_timeout);
    if (r < 0)
        snprintf(err, errlen, "VM %s: freeze command failed; no snapshot taken", q->vm_id);
    return r;
}

static void quiesce_thaw(void *opaque, int result)
{
    struct quiesce *q = opaque;
    const struct server_config *cfg = q->s->cfg;
    int tr = hook_run(cfg->thaw_argv, q->vm_id, "thaw", cfg->hook_timeout);
    if (result == 0 && tr < 0) {
        /* The data is consistent (frozen while taken); a failed thaw is the operator's to see. */
        log_warn("VM %s: thaw command failed after snapshot %s", q->vm_id, q->snap_id);
    }
}

/* Remove the disks of snap with its provider p (-ENOENT: p is NULL, no longer configured);
 * the first error, each logged. */
static int snapshot_disks_remove(struct provider *p, const struct snapshot *snap)
{
    if (!p) {
        log_error("snapshot %s: provider %s is not configured; its disks are left", snap->id,
                  snap->provider);
        return -ENOENT;
    }
    int first_err = 0;
    for (size_t i = 0; i < snap->disks.len; i++) {
        int e = p->ops->snapshot_delete(p, snap->disks.ptr[i].locator);
        if (e < 0 && !first_err) {
            first_err = e;
            log_error("snapshot %s: removing %s: %s", snap->id, snap->disks.ptr[i].locator,
                      strerror(-e));
        }
    }
    return first_err;
}

bool snapshot_label_valid(const char *label)
{
    size_t n = strnlen(label, SNAPSHOT_LABEL_MAX + 1);
    if (n == 0 || n > SNAPSHOT_LABEL_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = label[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("._:@+=/-", c)))
            return false;
    }
    return true;
}

/* Whether the client asked for disk name (rq->disks NULL: for every disk). */
static bool disk_wanted(const struct snapshot_request *rq, const char *name)
{
    if (!rq->disks)
        return true;
    for (const char *const *d = rq->disks; *d; d++)
        if (!strcmp(*d, name))
            return true;
    return false;
}

/* Every disk rq names is a compatible disk of vm: 0, or -ENOENT and err. */
static int disks_check(const struct vm *vm, const struct snapshot_request *rq, char *err,
                       size_t errlen)
{
    for (const char *const *d = rq->disks; d && *d; d++) {
        const struct vm_disk *vd = vm_disk_of(vm, *d);
        if (!vd) {
            snprintf(err, errlen, "VM %s has no disk '%s'", vm->id, *d);
            return -ENOENT;
        }
        if (!vd->snapshot_compatible) {
            snprintf(err, errlen, "VM %s: disk '%s' cannot be snapshotted (read-only, removable "
                     "or not in a known repository)", vm->id, *d);
            return -ENOENT;
        }
    }
    return 0;
}

int snapshot_create(struct server *s, struct provider *p, const struct vm *vm,
                    const struct snapshot_request *rq, struct snapshot **out, char *err,
                    size_t errlen)
{
    uint64_t t0 = now_us();
    const char *label = rq->label;
    const char *chain = rq->chain ? rq->chain : PROVIDER_CHAIN_DEFAULT;
    int r = disks_check(vm, rq, err, errlen);
    if (r < 0)
        return r;
    char id[37];
    r = uuid4(id);
    if (r < 0) {
        snprintf(err, errlen, "no random numbers for a snapshot ID");
        return r;
    }
    struct snapshot *snap = calloc(1, sizeof(*snap));
    if (!snap)
        return -ENOMEM;
    snap->id = strdup(id);
    snap->vm_id = strdup(vm->id);
    snap->provider = strdup(p->name);
    snap->created_at = clock_rfc3339_now();
    snap->status = strdup("creating");
    snap->label = label ? strdup(label) : NULL;
    snap->chain = strdup(chain);
    if (!snap->id || !snap->vm_id || !snap->provider || !snap->created_at || !snap->status ||
        (label && !snap->label) || !snap->chain) {
        snapshot_free(snap);
        return -ENOMEM;
    }
    for (size_t i = 0; i < vm->disks.len; i++) {
        const struct vm_disk *vd = &vm->disks.ptr[i];
        if (!vd->snapshot_compatible || !disk_wanted(rq, vd->name))
            continue;
        struct snapshot_disk d = {0};
        d.name = strdup(vd->name);
        d.parent_path = strdup(vd->path);
        d.repo_mountpoint = vd->repo_mountpoint ? strdup(vd->repo_mountpoint) : NULL;
        /* what the provider listed; its snapshot_create says what it did */
        d.mode = strdup(vd->snapshot_mode ? vd->snapshot_mode : "");
        if (asprintf(&d.change_id, "%s/%zu", id, i) < 0)
            d.change_id = NULL;
        r = p->ops->snapshot_locate(p, vm, vd, id, &d.locator);
        if (r < 0 || !d.name || !d.parent_path || !d.mode || !d.change_id ||
            snapshot_disk_list_append(&snap->disks, d) < 0) {
            free(d.name);
            free(d.parent_path);
            free(d.repo_mountpoint);
            free(d.mode);
            free(d.change_id);
            free(d.locator);
            snprintf(err, errlen, "VM %s: disk %s: no snapshot location: %s", vm->id, vd->name,
                     strerror(r < 0 ? -r : ENOMEM));
            snapshot_free(snap);
            return r < 0 ? r : -ENOMEM;
        }
    }
    if (snap->disks.len == 0) {
        snprintf(err, errlen, "VM %s has no snapshot-compatible disk", vm->id);
        snapshot_free(snap);
        return -EINVAL;
    }
    struct provider_snapshot_disk *pd = calloc(snap->disks.len, sizeof(*pd));
    if (!pd) {
        snapshot_free(snap);
        return -ENOMEM;
    }
    for (size_t i = 0; i < snap->disks.len; i++) {
        pd[i].disk = vm_disk_of(vm, snap->disks.ptr[i].name);
        pd[i].locator = snap->disks.ptr[i].locator;
    }

    if ((r = catalog_snapshot_add(s->catalog, snap)) < 0) {
        snprintf(err, errlen, "catalog: %s", strerror(-r));
        free(pd);
        snapshot_free(snap);
        return r;
    }
    struct quiesce qs = {.s = s, .vm_id = vm->id, .snap_id = id};
    struct provider_quiesce q = {.freeze = quiesce_freeze, .thaw = quiesce_thaw, .opaque = &qs};
    struct provider_snapshot_request req = {.chain = chain};
    r = p->ops->snapshot_create(p, vm, id, &req, pd, snap->disks.len, &q, err, errlen);
    snap->frozen = req.frozen;
    snap->frozen_us = req.frozen_us;
    for (size_t i = 0; r == 0 && i < snap->disks.len; i++) {
        /* Sizes and modes became known while snapshotting. */
        snap->disks.ptr[i].size = pd[i].size;
        if (pd[i].mode) {
            free(snap->disks.ptr[i].mode);
            snap->disks.ptr[i].mode = TAKE_PTR(pd[i].mode);
        }
    }
    for (size_t i = 0; i < snap->disks.len; i++)
        free(pd[i].mode);
    free(pd);
    if (r < 0)
        goto rollback;
    /* Record sizes and modes with the final status, in one step. */
    free(snap->status);
    snap->status = strdup("ready");
    r = snap->status ? catalog_snapshot_finish(s->catalog, snap) : -ENOMEM;
    if (r < 0) {
        snprintf(err, errlen, "catalog: %s", strerror(-r));
        snapshot_disks_remove(p, snap);
        goto rollback;
    }
    metrics_snapshot_created(&s->metrics, now_us() - t0);
    if (snap->frozen)
        log_info("snapshot %s of VM %s: %zu disks in %.3f s, guest frozen for %.1f ms", id,
                 vm->id, snap->disks.len, (double)(now_us() - t0) / 1e6,
                 (double)snap->frozen_us / 1000.0);
    else
        log_info("snapshot %s of VM %s: %zu disks in %.3f s", id, vm->id, snap->disks.len,
                 (double)(now_us() - t0) / 1e6);
    *out = snap;
    return 0;

rollback:
    catalog_snapshot_remove(s->catalog, id);
    atomic_fetch_add(&s->metrics.snapshot_failures, 1);
    log_error("%s", err);
    snapshot_free(snap);
    return r;
}

int snapshot_delete(struct server *s, struct snapshot *snap)
{
    int r = catalog_snapshot_set_status(s->catalog, snap->id, "deleting");
    if (r < 0)
        return r;
    /* After the status change, so that no lookup from now on can cache it as ready; before the
     * disks go, so that the cache holds none of them open. */
    disk_cache_invalidate(s->disk_cache);
    r = snapshot_disks_remove(server_provider(s, snap->provider), snap);
    if (r < 0)
        return r; /* stays "deleting"; retried by the next delete or start */
    if ((r = catalog_snapshot_remove(s->catalog, snap->id)) < 0)
        return r;
    atomic_fetch_add(&s->metrics.snapshots_deleted, 1);
    return 0;
}

int snapshot_release(struct server *s, struct snapshot *snap)
{
    struct provider *p = server_provider(s, snap->provider);
    if (!p)
        return -ENOENT;
    if (!p->ops->snapshot_release)
        return 0; /* nothing to release: the snapshot stays whole */
    /* Before the data goes, so that no lookup from now on can cache it as ready.  Released
     * again when asked again (after a failure: the provider's release is idempotent). */
    int r = catalog_snapshot_set_status(s->catalog, snap->id, "checkpoint");
    if (r < 0)
        return r;
    disk_cache_invalidate(s->disk_cache);
    for (size_t i = 0; i < snap->disks.len; i++) {
        int e = p->ops->snapshot_release(p, snap->disks.ptr[i].locator);
        if (e < 0 && r == 0) {
            r = e;
            log_error("snapshot %s: releasing %s: %s", snap->id, snap->disks.ptr[i].locator,
                      strerror(-e));
        }
    }
    if (r == 0) {
        free(snap->status);
        snap->status = strdup("checkpoint");
    }
    return r;
}

int snapshot_recover(struct server *s)
{
    snapshot_list l = VECTOR_INIT;
    int r = catalog_recover(s->catalog, &l);
    for (size_t i = 0; r == 0 && i < l.len; i++) {
        log_warn("snapshot %s of VM %s was left '%s' by a crash: removing it", l.ptr[i]->id,
                 l.ptr[i]->vm_id, l.ptr[i]->status);
        r = snapshot_delete(s, l.ptr[i]);
        if (r == -ENOENT && !server_provider(s, l.ptr[i]->provider))
            r = 0; /* logged; kept for when the provider is configured again */
    }
    snapshot_list_free(&l);
    return r;
}
