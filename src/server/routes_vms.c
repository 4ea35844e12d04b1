/* API routes for login, VMs and snapshots (the 004 contract plus our fields).
 *
 * Snapshot bodies carry extent lists ("chunks") of any length; they are written to a temporary
 * file as they are computed and served from there, so memory stays bounded.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/log.h"
#include "fs/fsdiff.h"
#include "fs/fsinfo.h"
#include "fs/fsmap.h"
#include "server/jsonw.h"
#include "server/server.h"

/* ---- login ---- */

int route_login(struct request *rq)
{
    json_error_t jerr;
    json_t *body = rq->body ? json_loadb(rq->body, rq->body_len, 0, &jerr) : NULL;
    const char *user = NULL, *password = NULL;
    if (!body || json_unpack(body, "{s:s, s:s}", "username", &user, "password", &password) < 0) {
        json_decref(body);
        return reply_error(rq, 400, "bad request",
                           "expected a JSON body {\"username\": ..., \"password\": ...}");
    }
    char addr[64] = "unknown";
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(rq->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, addr, sizeof(addr));
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, addr, sizeof(addr));
    }
    char *token = NULL;
    int r = auth_login(rq->srv->auth, user, password, addr, &token);
    if (r == 0 && !rq->user)
        rq->user = strdup(user); /* for the access log */
    json_decref(body);
    if (r == -EAGAIN) {
        atomic_fetch_add(&rq->srv->metrics.login_failures, 1);
        return reply_error(rq, 401, "unauthorized",
                           "invalid credentials (too many failed attempts; wait a minute)");
    }
    if (r < 0) {
        atomic_fetch_add(&rq->srv->metrics.login_failures, 1);
        return reply_error(rq, 401, "unauthorized", "invalid credentials");
    }
    json_t *j = json_pack("{s:s, s:i}", "token", token, "expires_in", (json_int_t)rq->srv->cfg->token_ttl);
    free(token);
    return reply_json(rq, 200, j);
}

/* ---- VMs ---- */

static json_t *vm_to_json(struct server *s, const struct vm *vm)
{
    json_t *disks = json_array();
    for (size_t i = 0; i < vm->disks.len; i++) {
        const struct vm_disk *d = &vm->disks.ptr[i];
        json_array_append_new(
            disks, json_pack("{s:s, s:s, s:s, s:s, s:b, s:I, s:s?}", "name", d->name, "path",
                             d->path, "device_name", d->device_name ? d->device_name : "", "mode",
                             d->mode ? d->mode : "w", "snapshot_compatible",
                             d->snapshot_compatible, "size", (json_int_t)d->size,
                             "snapshot_mode", d->snapshot_mode));
    }
    json_t *snaps = json_array();
    snapshot_list l = VECTOR_INIT;
    if (catalog_snapshot_list(s->catalog, vm->id, "ready", &l) == 0)
        for (size_t i = 0; i < l.len; i++)
            json_array_append_new(snaps, json_string(l.ptr[i]->id));
    snapshot_list_free(&l);
    return json_pack("{s:s, s:s, s:s, s:o, s:b, s:o, s:s}", "friendly_name",
                     vm->friendly_name ? vm->friendly_name : vm->id, "name", vm->id, "uuid",
                     vm->uuid ? vm->uuid : "", "disks", disks, "snapshot_compatible",
                     vm->snapshot_compatible, "snapshots", snaps, "provider", vm->provider);
}

int server_vm_get(struct server *s, const char *vm_id, struct vm **vm, struct provider **p)
{
    for (size_t i = 0; i < s->n_providers; i++) {
        int r = s->providers[i]->ops->get(s->providers[i], vm_id, vm);
        if (r == 0) {
            (*vm)->provider = s->providers[i]->name;
            if (p)
                *p = s->providers[i];
            return 0;
        }
        if (r != -ENOENT)
            return r;
    }
    return -ENOENT;
}

struct provider *server_provider(struct server *s, const char *name)
{
    for (size_t i = 0; i < s->n_providers; i++)
        if (!strcmp(s->providers[i]->name, name))
            return s->providers[i];
    return NULL;
}

int route_vms_list(struct request *rq)
{
    struct server *s = rq->srv;
    json_t *arr = json_array();
    for (size_t i = 0; i < s->n_providers; i++) {
        vm_list l = VECTOR_INIT;
        int r = s->providers[i]->ops->list(s->providers[i], &l);
        if (r < 0) {
            vm_list_free(&l);
            json_decref(arr);
            return reply_errno(rq, r, s->providers[i]->name);
        }
        for (size_t j = 0; j < l.len; j++) {
            l.ptr[j]->provider = s->providers[i]->name;
            json_array_append_new(arr, vm_to_json(s, l.ptr[j]));
        }
        vm_list_free(&l);
    }
    return reply_json(rq, 200, arr);
}

int route_vm_get(struct request *rq)
{
    struct vm *vm = NULL;
    int r = server_vm_get(rq->srv, rq->segs[1], &vm, NULL);
    if (r < 0)
        return r == -ENOENT ? reply_error(rq, 404, "not found", "VM '%s' not found", rq->segs[1])
                            : reply_errno(rq, r, "VM");
    json_t *j = vm_to_json(rq->srv, vm);
    vm_free(vm);
    return reply_json(rq, 200, j);
}

/* ---- snapshot bodies ---- */

/* Physical address lookups along a file's map, for ranges given in ascending order. */
struct phys_cursor {
    struct fs_map map;
    struct extent cur;
    bool have, done, open;
};

static uint64_t phys_at(struct phys_cursor *c, uint64_t pos)
{
    while (!c->done && (!c->have || extent_end(&c->cur) <= pos)) {
        int r = fs_map_next(&c->map, &c->cur);
        c->have = r > 0;
        c->done = r <= 0;
    }
    if (c->have && c->cur.start <= pos && !(c->cur.flags & EXTENT_PHYS_UNKNOWN))
        return c->cur.physical + (pos - c->cur.start);
    return 0;
}

struct chunk_writer {
    FILE *f;
    bool first;
    uint64_t count;
    struct phys_cursor *phys;
};

static void chunk_write(struct chunk_writer *w, uint64_t start, uint64_t length, uint64_t phys)
{
    fprintf(w->f, "%s{\"start\":%llu,\"length\":%llu,\"physical_start\":%llu}",
            w->first ? "" : ",", (unsigned long long)start, (unsigned long long)length,
            (unsigned long long)phys);
    w->first = false;
    w->count++;
}

static int chunk_emit(void *opaque, uint64_t start, uint64_t length)
{
    struct chunk_writer *w = opaque;
    chunk_write(w, start, length, w->phys ? phys_at(w->phys, start) : 0);
    return ferror(w->f) ? -EIO : 0;
}

/* "chunks": the data extents of path, squashed (004 squashChunks) when asked. */
static int write_chunks_full(FILE *f, const char *path, uint64_t size, bool squash)
{
    CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct fs_map m;
    int r = fs_map_open(&m, fd, size, 0);
    if (r < 0)
        return r;
    struct chunk_writer w = {.f = f, .first = true};
    struct extent e, pend = {0};
    bool have = false;
    while ((r = fs_map_next(&m, &e)) > 0) {
        if (!extent_is_data(&e))
            continue;
        if (have && squash && extent_end(&pend) == e.start) {
            pend.length += e.length;
            continue;
        }
        if (have)
            chunk_write(&w, pend.start, pend.length, pend.physical);
        pend = e;
        have = true;
    }
    if (have && r == 0)
        chunk_write(&w, pend.start, pend.length, pend.physical);
    fs_map_close(&m);
    return r;
}

/* "chunks" (changed) and "zeroed" of disk against base_path, and the "diff_mode" used. */
static int write_chunks_diff(FILE *f, const struct snapshot_disk *d, const char *base_path)
{
    struct fs_diff diff;
    int r = fs_diff_open(&diff, base_path, d->path, DIFF_AUTO);
    if (r < 0)
        return r;
    FILE *zf = tmpfile();
    if (!zf) {
        r = -errno;
        fs_diff_close(&diff);
        return r;
    }
    struct phys_cursor pc = {0};
    CLEANUP_CLOSE int fd = open(d->path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0 && fs_map_open(&pc.map, fd, d->size, 0) == 0)
        pc.open = true;
    else
        pc.done = true;
    struct chunk_writer cw = {.f = f, .first = true, .phys = &pc};
    struct chunk_writer zw = {.f = zf, .first = true};
    struct extent_sink cs = {.emit = chunk_emit, .opaque = &cw};
    struct extent_sink zs = {.emit = chunk_emit, .opaque = &zw};
    fputs("\"chunks\":[", f);
    r = fs_diff_run(&diff, &cs, &zs);
    fputs("],\"zeroed\":[", f);
    if (r == 0) {
        char buf[65536];
        size_t n;
        rewind(zf);
        /* zeroed ranges have no data, so no physical address: "physical_start" is 0 */
        while ((n = fread(buf, 1, sizeof(buf), zf)) > 0)
            fwrite(buf, 1, n, f);
    }
    fputs("]", f);
    bool first = false;
    jw_kv_str(f, &first, "diff_mode", diff_mode_name(diff.mode));
    fclose(zf);
    if (pc.open)
        fs_map_close(&pc.map);
    fs_diff_close(&diff);
    return r;
}

static const struct snapshot_disk *snapshot_disk_find(const struct snapshot *s, const char *name)
{
    for (size_t i = 0; i < s->disks.len; i++)
        if (!strcmp(s->disks.ptr[i].name, name))
            return &s->disks.ptr[i];
    return NULL;
}

/* One snapshot object.  base: compareTo snapshot or NULL. */
static int write_snapshot(FILE *f, const struct snapshot *s, bool chunks, bool squash,
                          const struct snapshot *base)
{
    bool first = true;
    fputc('{', f);
    jw_kv_str(f, &first, "id", s->id);
    jw_kv_str(f, &first, "vm_id", s->vm_id);
    jw_kv_str(f, &first, "vmID", s->vm_id); /* the 004 README spelling */
    jw_kv_str(f, &first, "provider", s->provider);
    jw_kv_str(f, &first, "created_at", s->created_at);
    jw_kv_str(f, &first, "parent_id", s->parent_id);
    jw_kv_str(f, &first, "status", s->status);
    if (base)
        jw_kv_str(f, &first, "compared_to", base->id);
    jw_key(f, &first, "disks");
    fputc('[', f);
    for (size_t i = 0; i < s->disks.len; i++) {
        const struct snapshot_disk *d = &s->disks.ptr[i];
        bool df = true;
        fputs(i ? ",{" : "{", f);
        jw_kv_str(f, &df, "name", d->name);
        jw_kv_str(f, &df, "path", d->path);
        jw_kv_str(f, &df, "parent_path", d->parent_path);
        jw_kv_str(f, &df, "snapshot_id", s->id);
        jw_kv_str(f, &df, "snapshotID", s->id);
        jw_kv_str(f, &df, "repo_mountpoint", d->repo_mountpoint);
        jw_kv_u64(f, &df, "size", d->size);
        jw_kv_str(f, &df, "change_id", d->change_id);
        jw_kv_str(f, &df, "snapshot_mode", d->mode);
        char file_id[FS_FILE_ID_MAX];
        if (fs_file_id_path(d->path, file_id) == 0)
            jw_kv_str(f, &df, "file_id", file_id);
        if (chunks) {
            fputc(',', f);
            int r;
            const struct snapshot_disk *bd = base ? snapshot_disk_find(base, d->name) : NULL;
            if (base && bd) {
                r = write_chunks_diff(f, d, bd->path);
            } else {
                fputs("\"chunks\":[", f);
                r = write_chunks_full(f, d->path, d->size, squash);
                fputs(base ? "],\"zeroed\":[]" : "]", f);
            }
            if (r < 0) {
                log_error("snapshot %s: disk %s: extent map of %s: %s", s->id, d->name, d->path,
                          strerror(-r));
                return r;
            }
        }
        fputc('}', f);
    }
    fputs("]}", f);
    return ferror(f) ? -EIO : 0;
}

static bool arg_bool(struct request *rq, const char *name, bool dflt, bool *bad)
{
    const char *v = request_arg(rq, name);
    if (!v)
        return dflt;
    if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "True"))
        return true;
    if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "False"))
        return false;
    *bad = true;
    return dflt;
}

/* The VM must exist, or at least have snapshots in the catalog (VM deleted since). */
static int vm_known(struct request *rq, const char *vm_id)
{
    struct vm *vm = NULL;
    int r = server_vm_get(rq->srv, vm_id, &vm, NULL);
    vm_free(vm);
    if (r != -ENOENT)
        return r;
    snapshot_list l = VECTOR_INIT;
    r = catalog_snapshot_list(rq->srv->catalog, vm_id, NULL, &l);
    if (r == 0 && l.len == 0)
        r = -ENOENT;
    snapshot_list_free(&l);
    return r;
}

static int reply_snapshot_list(struct request *rq, snapshot_list *l)
{
    bool bad = false;
    bool chunks = arg_bool(rq, "chunks", true, &bad);
    bool squash = arg_bool(rq, "squashChunks", true, &bad);
    if (bad)
        return reply_error(rq, 400, "bad request", "chunks and squashChunks take true or false");
    FILE *f = tmpfile();
    if (!f)
        return reply_errno(rq, -errno, "temporary file");
    fputc('[', f);
    int r = 0;
    for (size_t i = 0; r == 0 && i < l->len; i++) {
        if (i)
            fputc(',', f);
        r = write_snapshot(f, l->ptr[i], chunks, squash, NULL);
    }
    fputc(']', f);
    if (r < 0) {
        fclose(f);
        return reply_errno(rq, r, "snapshot list");
    }
    return reply_json_file(rq, 200, f);
}

int route_snapshots_list(struct request *rq)
{
    int r = vm_known(rq, rq->segs[1]);
    if (r < 0)
        return r == -ENOENT ? reply_error(rq, 404, "not found", "VM '%s' not found", rq->segs[1])
                            : reply_errno(rq, r, "VM");
    snapshot_list l = VECTOR_INIT;
    r = catalog_snapshot_list(rq->srv->catalog, rq->segs[1], "ready", &l);
    int ret = r < 0 ? reply_errno(rq, r, "catalog") : reply_snapshot_list(rq, &l);
    snapshot_list_free(&l);
    return ret;
}

int route_orphans_list(struct request *rq)
{
    bool bad = false;
    bool orphaned = arg_bool(rq, "orphaned", false, &bad);
    if (bad)
        return reply_error(rq, 400, "bad request", "orphaned takes true or false");
    snapshot_list all = VECTOR_INIT, out = VECTOR_INIT;
    int r = catalog_snapshot_list(rq->srv->catalog, NULL, "ready", &all);
    for (size_t i = 0; r == 0 && i < all.len; i++) {
        struct vm *vm = NULL;
        int g = server_vm_get(rq->srv, all.ptr[i]->vm_id, &vm, NULL);
        vm_free(vm);
        if (g < 0 && g != -ENOENT) {
            r = g;
            break;
        }
        if (!orphaned || g == -ENOENT) {
            if ((r = snapshot_list_append(&out, all.ptr[i])) < 0)
                break;
            all.ptr[i] = NULL;
        }
    }
    int ret = r < 0 ? reply_errno(rq, r, "catalog") : reply_snapshot_list(rq, &out);
    snapshot_list_free(&all);
    snapshot_list_free(&out);
    return ret;
}

int route_snapshot_create(struct request *rq)
{
    struct vm *vm = NULL;
    struct provider *p = NULL;
    int r = server_vm_get(rq->srv, rq->segs[1], &vm, &p);
    if (r < 0)
        return r == -ENOENT ? reply_error(rq, 404, "not found", "VM '%s' not found", rq->segs[1])
                            : reply_errno(rq, r, "VM");
    if (!vm->snapshot_compatible) {
        int ret = vm->disks.len == 0
                      ? reply_error(rq, 409, "conflict", "VM '%s' has no disks", vm->id)
                      : reply_error(rq, 409, "conflict",
                                    "VM '%s' is not snapshot compatible: a writable disk is not a "
                                    "file in a known repository (see snapshot_compatible of its "
                                    "disks)",
                                    vm->id);
        vm_free(vm);
        return ret;
    }
    char err[512] = "";
    struct snapshot *snap = NULL;
    r = snapshot_create(rq->srv, p, vm, &snap, err, sizeof(err));
    vm_free(vm);
    if (r < 0)
        return reply_error(rq, r == -ENOSPC ? 507 : 500, "snapshot failed", "%s", err);
    bool bad = false;
    bool chunks = arg_bool(rq, "chunks", true, &bad);
    FILE *f = tmpfile();
    if (!f) {
        snapshot_free(snap);
        return reply_errno(rq, -errno, "temporary file");
    }
    r = write_snapshot(f, snap, chunks, true, NULL);
    snapshot_free(snap);
    if (r < 0) {
        fclose(f);
        return reply_errno(rq, r, "snapshot");
    }
    return reply_json_file(rq, 201, f);
}

int route_snapshot_get(struct request *rq)
{
    struct snapshot *snap = NULL, *base = NULL;
    int r = catalog_snapshot_get(rq->srv->catalog, rq->segs[1], rq->segs[3], &snap);
    if (r == -ENOENT || (r == 0 && strcmp(snap->status, "ready"))) {
        snapshot_free(snap);
        return reply_error(rq, 404, "not found", "snapshot '%s' of VM '%s' not found",
                           rq->segs[3], rq->segs[1]);
    }
    if (r < 0)
        return reply_errno(rq, r, "catalog");
    bool bad = false;
    bool squash = arg_bool(rq, "squashChunks", true, &bad);
    bool chunks = arg_bool(rq, "chunks", true, &bad);
    if (bad) {
        snapshot_free(snap);
        return reply_error(rq, 400, "bad request", "squashChunks and chunks take true or false");
    }
    const char *cmp = request_arg(rq, "compareTo");
    if (cmp && *cmp) {
        r = catalog_snapshot_find(rq->srv->catalog, cmp, &base);
        int ret = -1;
        if (r == -ENOENT || (r == 0 && strcmp(base->status, "ready")))
            ret = reply_error(rq, 404, "not found", "compareTo snapshot '%s' not found", cmp);
        else if (r < 0)
            ret = reply_errno(rq, r, "catalog");
        else if (strcmp(base->vm_id, snap->vm_id))
            ret = reply_error(rq, 409, "conflict", "compareTo snapshot '%s' belongs to VM '%s'",
                              cmp, base->vm_id);
        else if (base->seq >= snap->seq)
            ret = reply_error(rq, 400, "bad request",
                              "compareTo snapshot '%s' is not older than '%s'", cmp, snap->id);
        if (ret != -1) {
            snapshot_free(snap);
            snapshot_free(base);
            return ret;
        }
    }
    FILE *f = tmpfile();
    if (!f) {
        snapshot_free(snap);
        snapshot_free(base);
        return reply_errno(rq, -errno, "temporary file");
    }
    r = write_snapshot(f, snap, chunks, squash, base);
    snapshot_free(snap);
    snapshot_free(base);
    if (r < 0) {
        fclose(f);
        return reply_errno(rq, r, "snapshot");
    }
    return reply_json_file(rq, 200, f);
}

int route_snapshot_delete(struct request *rq)
{
    struct snapshot *snap = NULL;
    int r = catalog_snapshot_get(rq->srv->catalog, rq->segs[1], rq->segs[3], &snap);
    if (r == -ENOENT)
        return reply_error(rq, 404, "not found", "snapshot '%s' of VM '%s' not found",
                           rq->segs[3], rq->segs[1]);
    if (r < 0)
        return reply_errno(rq, r, "catalog");
    if (!strcmp(snap->status, "creating")) {
        snapshot_free(snap);
        return reply_error(rq, 409, "conflict", "snapshot '%s' is still being created",
                           rq->segs[3]);
    }
    r = snapshot_delete(rq->srv, snap);
    snapshot_free(snap);
    if (r < 0)
        return reply_errno(rq, r, "snapshot delete");
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    return reply(rq, 204, resp);
}

int route_snapshots_purge(struct request *rq)
{
    int r = vm_known(rq, rq->segs[1]);
    if (r < 0)
        return r == -ENOENT ? reply_error(rq, 404, "not found", "VM '%s' not found", rq->segs[1])
                            : reply_errno(rq, r, "VM");
    snapshot_list l = VECTOR_INIT;
    r = catalog_snapshot_list(rq->srv->catalog, rq->segs[1], NULL, &l);
    for (size_t i = 0; r == 0 && i < l.len; i++)
        r = snapshot_delete(rq->srv, l.ptr[i]);
    snapshot_list_free(&l);
    if (r < 0)
        return reply_errno(rq, r, "snapshot purge");
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    return reply(rq, 204, resp);
}
