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
#include "core/text.h"
#include "core/jsonw.h"
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
    unsigned retry_after = 0;
    int r = auth_login(rq->srv->auth, user, password, addr, &token, &retry_after);
    if (r == 0 && !rq->user)
        rq->user = strdup(user); /* for the access log */
    json_decref(body);
    if (r == -EAGAIN) {
        atomic_fetch_add(&rq->srv->metrics.login_failures, 1);
        char details[128], seconds[16];
        snprintf(details, sizeof(details),
                 "too many failed logins from this address or for this user; retry in %u s",
                 retry_after);
        snprintf(seconds, sizeof(seconds), "%u", retry_after);
        json_t *j = json_pack("{s:s, s:s}", "error", "too many requests", "details", details);
        char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        struct MHD_Response *resp =
            text ? MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE)
                 : NULL;
        if (!resp) {
            free(text);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "application/json");
        MHD_add_response_header(resp, "Retry-After", seconds);
        return reply(rq, 429, resp);
    }
    if (r < 0) {
        atomic_fetch_add(&rq->srv->metrics.login_failures, 1);
        return reply_error(rq, 401, "unauthorized", "invalid credentials");
    }
    json_t *j = json_pack("{s:s, s:i}", "token", token, "expires_in", (json_int_t)rq->srv->cfg->token_ttl);
    free(token);
    return reply_json(rq, 200, j);
}

/* The token that authenticated this request stops working now rather than at its exp. */
int route_logout(struct request *rq)
{
    const char *authz = request_header(rq, MHD_HTTP_HEADER_AUTHORIZATION);
    int r = auth_revoke(rq->srv->auth, authz);
    if (r == -EACCES) /* revoked or expired since the route was authorized */
        return reply_error(rq, 401, "unauthorized", "the token is no longer valid");
    if (r == -ENOSPC)
        return reply_error(rq, 503, "service unavailable",
                           "too many revoked tokens are still unexpired; the token stays valid "
                           "until it expires");
    if (r < 0)
        return reply_errno(rq, r, "recording the revoked token");
    log_info("user '%s' logged out", rq->user);
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    return reply(rq, 204, resp);
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

static bool text_ok(const char *s)
{
    return !s || utf8_valid(s);
}

/* Whether every string of vm that an answer carries is UTF-8: JSON strings must be, names on
 * disk need not be.  When one is not, the VM is left out of the API (escaping would give it an
 * ID that names nothing) and a warning names it. */
static bool vm_is_utf8(const struct vm *vm, const char *provider)
{
    const char *what = NULL;
    if (!text_ok(vm->id))
        what = "its name";
    else if (!text_ok(vm->friendly_name) || !text_ok(vm->uuid))
        what = "its friendly name or UUID";
    for (size_t i = 0; !what && i < vm->disks.len; i++) {
        const struct vm_disk *d = &vm->disks.ptr[i];
        if (!text_ok(d->name) || !text_ok(d->path) || !text_ok(d->repo_mountpoint))
            what = "the name or path of a disk";
        else if (!text_ok(d->device_name) || !text_ok(d->mode) || !text_ok(d->snapshot_mode))
            what = "a disk's device name or mode";
    }
    if (!what)
        return true;
    CLEANUP_FREE char *shown = utf8_scrub(vm->id);
    log_warn("provider %s: VM '%s': %s is not UTF-8 (shown here with U+FFFD); the VM is left "
             "out of the API until it is renamed",
             provider, shown ? shown : "?", what);
    return false;
}

int server_vm_get(struct server *s, const char *vm_id, struct vm **vm, struct provider **p)
{
    for (size_t i = 0; i < s->n_providers; i++) {
        int r = s->providers[i]->ops->get(s->providers[i], vm_id, vm);
        if (r == 0 && !vm_is_utf8(*vm, s->providers[i]->name)) {
            vm_free(*vm);
            *vm = NULL;
            return -ENOENT;
        }
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
            if (!vm_is_utf8(l.ptr[j], s->providers[i]->name))
                continue;
            l.ptr[j]->provider = s->providers[i]->name;
            json_array_append_new(arr, vm_to_json(s, l.ptr[j]));
        }
        vm_list_free(&l);
    }
    return reply_json(rq, 200, arr);
}

/* The answer to a failed look-up of the request's VM (rq->segs[1]): 404 when it is not there. */
static int reply_vm_error(struct request *rq, int r)
{
    return r == -ENOENT ? reply_error(rq, 404, "not found", "VM '%s' not found", rq->segs[1])
                        : reply_errno(rq, r, "VM");
}

int route_vm_get(struct request *rq)
{
    struct vm *vm = NULL;
    int r = server_vm_get(rq->srv, rq->segs[1], &vm, NULL);
    if (r < 0)
        return reply_vm_error(rq, r);
    json_t *j = vm_to_json(rq->srv, vm);
    vm_free(vm);
    return reply_json(rq, 200, j);
}

/* ---- snapshot bodies ---- */

/* Physical address lookups along a disk's map, spooled to a temporary file (memory stays
 * bounded however many extents there are), for ranges given in ascending order. */
struct phys_cursor {
    FILE *map; /* struct extent records; NULL: no addresses known */
    struct extent cur;
    bool have, done;
};

static int spool_extent(void *opaque, const struct extent *e)
{
    return fwrite(e, sizeof(*e), 1, opaque) == 1 ? 0 : -EIO;
}

/* Spool the map of rd into c (no addresses when that fails: they are informative only). */
static void phys_open(struct phys_cursor *c, struct disk_reader *rd)
{
    *c = (struct phys_cursor){.done = true};
    FILE *m = rd ? server_tmpfile() : NULL;
    if (!m)
        return;
    struct disk_map_sink sink = {.emit = spool_extent, .opaque = m};
    if (rd->ops->map(rd, 0, &sink) < 0 || fflush(m) != 0) {
        fclose(m);
        return;
    }
    rewind(m);
    c->map = m;
    c->done = false;
}

static void phys_close(struct phys_cursor *c)
{
    if (c->map)
        fclose(c->map);
}

static uint64_t phys_at(struct phys_cursor *c, uint64_t pos)
{
    while (!c->done && (!c->have || extent_end(&c->cur) <= pos)) {
        c->have = fread(&c->cur, sizeof(c->cur), 1, c->map) == 1;
        c->done = !c->have;
    }
    if (c->have && c->cur.start <= pos && !(c->cur.flags & EXTENT_PHYS_UNKNOWN))
        return c->cur.physical + (pos - c->cur.start);
    return 0;
}

struct chunk_writer {
    FILE *f;
    bool first;
    uint64_t count;
    /* write_chunks_full: the chunk not written yet, and whether chunks that touch merge */
    struct extent pend;
    bool have, squash;
};

static void chunk_write(struct chunk_writer *w, uint64_t start, uint64_t length, uint64_t phys)
{
    fprintf(w->f, "%s{\"start\":%llu,\"length\":%llu,\"physical_start\":%llu}",
            w->first ? "" : ",", (unsigned long long)start, (unsigned long long)length,
            (unsigned long long)phys);
    w->first = false;
    w->count++;
}

static int chunk_emit(void *opaque, const struct extent *e)
{
    struct chunk_writer *w = opaque;
    if (!extent_is_data(e))
        return 0;
    if (w->have && w->squash && extent_end(&w->pend) == e->start) {
        w->pend.length += e->length;
        return 0;
    }
    if (w->have)
        chunk_write(w, w->pend.start, w->pend.length, w->pend.physical);
    w->pend = *e;
    w->have = true;
    return 0;
}

/* "chunks": the data extents of the disk rd, squashed (004 squashChunks) when asked. */
static int write_chunks_full(FILE *f, struct disk_reader *rd, bool squash)
{
    struct chunk_writer w = {.f = f, .first = true, .squash = squash};
    struct disk_map_sink sink = {.emit = chunk_emit, .opaque = &w};
    int r = rd->ops->map(rd, 0, &sink);
    if (w.have && r == 0)
        chunk_write(&w, w.pend.start, w.pend.length, w.pend.physical);
    return r;
}

/* What a snapshot body lists: query arguments chunks, squashChunks and zeroedInChunks. */
struct chunk_opts {
    bool chunks;           /* list extents at all */
    bool squash;           /* merge chunks that touch */
    bool zeroed_in_chunks; /* with compareTo, "chunks" covers "zeroed" too (see below) */
};

/* The ranges a diff emits into one sink, kept in order in a temporary file (memory stays
 * bounded however many there are) and read back as {start, length} pairs. */
static int spool_emit(void *opaque, uint64_t start, uint64_t length)
{
    const uint64_t range[2] = {start, length};
    return fwrite(range, sizeof(range), 1, opaque) == 1 ? 0 : -EIO;
}

static bool spool_next(FILE *f, uint64_t range[2])
{
    return f && fread(range, 2 * sizeof(uint64_t), 1, f) == 1;
}

/* "chunks", "zeroed" and "diff_mode" of disk d (open as rd, or NULL) of provider p against
 * the snapshot disk base of the same disk.
 *
 * The 004 client reads only "chunks" of a compareTo answer: listing just the changed ranges
 * would leave the data of discarded ranges in its copy.  So by default "chunks" also covers the
 * "zeroed" ranges (a GET of them returns zeros), merged in order; a client that writes zeros
 * over "zeroed" itself asks zeroedInChunks=false and gets the changed ranges only. */
static int write_chunks_diff(FILE *f, struct provider *p, const struct snapshot_disk *d,
                             struct disk_reader *rd, const char *base, const struct chunk_opts *o,
                             char *cerr, size_t cerrlen)
{
    const char *method = NULL;
    int r = 0;
    FILE *cf = server_tmpfile(), *zf = server_tmpfile();
    if (!cf || !zf) {
        r = -errno;
        goto out;
    }
    struct extent_sink cs = {.emit = spool_emit, .opaque = cf};
    struct extent_sink zs = {.emit = spool_emit, .opaque = zf};
    r = p->ops->disk_changes(p, base, d->locator, &cs, &zs, &method, cerr, cerrlen);
    if (r == 0 && (fflush(cf) != 0 || fflush(zf) != 0))
        r = -EIO;
    if (r < 0)
        goto out;
    rewind(cf);
    rewind(zf);

    struct phys_cursor pc;
    phys_open(&pc, rd);
    struct chunk_writer cw = {.f = f, .first = true};
    uint64_t c[2], z[2];
    bool have_c = spool_next(cf, c), have_z = o->zeroed_in_chunks && spool_next(zf, z);
    uint64_t pend[3] = {0}; /* start, length, physical */
    bool have_pend = false;
    fputs("\"chunks\":[", f);
    while (have_c || have_z) {
        bool changed = have_c && (!have_z || c[0] < z[0]);
        const uint64_t *next = changed ? c : z;
        if (have_pend && o->squash && pend[0] + pend[1] == next[0]) {
            pend[1] += next[1];
        } else {
            if (have_pend)
                chunk_write(&cw, pend[0], pend[1], pend[2]);
            /* zeroed ranges have no data, so no physical address: "physical_start" is 0 */
            pend[0] = next[0];
            pend[1] = next[1];
            pend[2] = changed ? phys_at(&pc, next[0]) : 0;
            have_pend = true;
        }
        if (changed)
            have_c = spool_next(cf, c);
        else
            have_z = spool_next(zf, z);
    }
    if (have_pend)
        chunk_write(&cw, pend[0], pend[1], pend[2]);
    phys_close(&pc);
    fputs("],\"zeroed\":[", f);
    rewind(zf);
    struct chunk_writer zw = {.f = f, .first = true};
    while (spool_next(zf, z))
        chunk_write(&zw, z[0], z[1], 0);
    fputs("]", f);
    bool first = false;
    jw_kv_str(f, &first, "diff_mode", method);
    if (ferror(cf) || ferror(zf))
        r = -EIO;
out:
    if (cf)
        fclose(cf);
    if (zf)
        fclose(zf);
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
static int write_snapshot(struct server *srv, FILE *f, const struct snapshot *s,
                          const struct chunk_opts *o, const struct snapshot *base)
{
    struct provider *p = server_provider(srv, s->provider);
    bool first = true;
    fputc('{', f);
    jw_kv_str(f, &first, "id", s->id);
    jw_kv_str(f, &first, "vm_id", s->vm_id);
    jw_kv_str(f, &first, "vmID", s->vm_id); /* the 004 README spelling */
    jw_kv_str(f, &first, "provider", s->provider);
    jw_kv_str(f, &first, "created_at", s->created_at);
    jw_kv_str(f, &first, "parent_id", s->parent_id);
    jw_kv_str(f, &first, "status", s->status);
    jw_kv_str(f, &first, "label", s->label);
    jw_kv_str(f, &first, "chain", s->chain ? s->chain : PROVIDER_CHAIN_DEFAULT);
    jw_kv_bool(f, &first, "frozen", s->frozen);
    if (s->frozen) {
        jw_key(f, &first, "frozenMs");
        fprintf(f, "%.3f", (double)s->frozen_us / 1000.0);
    }
    /* a "checkpoint" snapshot has released its data: only changes since it remain */
    bool has_data = strcmp(s->status, "checkpoint") != 0;
    jw_kv_bool(f, &first, "hasData", has_data);
    if (base)
        jw_kv_str(f, &first, "compared_to", base->id);
    jw_key(f, &first, "disks");
    fputc('[', f);
    for (size_t i = 0; i < s->disks.len; i++) {
        const struct snapshot_disk *d = &s->disks.ptr[i];
        bool df = true;
        fputs(i ? ",{" : "{", f);
        jw_kv_str(f, &df, "name", d->name);
        jw_kv_str(f, &df, "path", d->locator); /* 004: where the snapshot is */
        jw_kv_str(f, &df, "parent_path", d->parent_path);
        jw_kv_str(f, &df, "snapshot_id", s->id);
        jw_kv_str(f, &df, "snapshotID", s->id);
        jw_kv_str(f, &df, "repo_mountpoint", d->repo_mountpoint);
        jw_kv_u64(f, &df, "size", d->size);
        jw_kv_str(f, &df, "change_id", d->change_id);
        jw_kv_str(f, &df, "snapshot_mode", d->mode);
        if (!has_data) {
            fputc('}', f);
            continue;
        }
        struct disk_reader *rd = NULL;
        char cerr[256] = "";
        int r = p ? p->ops->disk_open(p, d->locator, 0, &rd) : -ENOENT;
        if (r == 0 && rd->identity[0])
            jw_kv_str(f, &df, "file_id", rd->identity);
        if (o->chunks) {
            fputc(',', f);
            const struct snapshot_disk *bd = base ? snapshot_disk_find(base, d->name) : NULL;
            if (r < 0) {
                /* reported below */
            } else if (base && bd &&
                       (r = write_chunks_diff(f, p, d, rd, bd->locator, o, cerr,
                                              sizeof(cerr))) != -ESTALE &&
                       r != -EXDEV) {
                /* written, or failed */
            } else {
                /* No base, or the provider cannot tell the changes since it (nothing written
                 * yet then): every data area, which over-reports the changes but never misses
                 * one. */
                bool no_changes = r == -ESTALE || r == -EXDEV;
                fputs("\"chunks\":[", f);
                r = write_chunks_full(f, rd, o->squash);
                fputs(base ? "],\"zeroed\":[]" : "]", f);
                if (no_changes) {
                    bool nf = false;
                    jw_kv_str(f, &nf, "diff_mode", "full");
                    jw_kv_str(f, &nf, "diff_reason", cerr);
                }
            }
            if (r < 0) {
                log_error("snapshot %s: disk %s: extent map of %s: %s", s->id, d->name, d->locator,
                          p ? strerror(-r) : "its provider is not configured");
                disk_reader_close(rd);
                return r;
            }
        }
        disk_reader_close(rd);
        fputc('}', f);
    }
    fputs("]}", f);
    return ferror(f) ? -EIO : 0;
}

/* A boolean query argument (request_arg_bool); *bad names the first one that is not. */
static bool arg_bool(struct request *rq, const char *name, bool dflt, const char **bad)
{
    bool v;
    if (request_arg_bool(rq, name, dflt, &v) < 0) {
        if (!*bad)
            *bad = name;
        return dflt;
    }
    return v;
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
    const char *bad = NULL;
    bool chunks = arg_bool(rq, "chunks", true, &bad);
    bool squash = arg_bool(rq, "squashChunks", true, &bad);
    if (bad)
        return reply_bad_bool(rq, bad);
    struct chunk_opts opts = {.chunks = chunks, .squash = squash};
    FILE *f = server_tmpfile();
    if (!f)
        return reply_errno(rq, -errno, "temporary file");
    fputc('[', f);
    int r = 0;
    for (size_t i = 0; r == 0 && i < l->len; i++) {
        if (i)
            fputc(',', f);
        r = write_snapshot(rq->srv, f, l->ptr[i], &opts, NULL);
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
        return reply_vm_error(rq, r);
    snapshot_list l = VECTOR_INIT;
    r = catalog_snapshot_list(rq->srv->catalog, rq->segs[1], SNAPSHOT_STATUS_LISTED, &l);
    int ret = r < 0 ? reply_errno(rq, r, "catalog") : reply_snapshot_list(rq, &l);
    snapshot_list_free(&l);
    return ret;
}

int route_orphans_list(struct request *rq)
{
    const char *bad = NULL;
    bool orphaned = arg_bool(rq, "orphaned", false, &bad);
    if (bad)
        return reply_bad_bool(rq, bad);
    snapshot_list all = VECTOR_INIT, out = VECTOR_INIT;
    int r = catalog_snapshot_list(rq->srv->catalog, NULL, SNAPSHOT_STATUS_LISTED, &all);
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
    const char *bad = NULL;
    bool chunks = arg_bool(rq, "chunks", true, &bad);
    if (bad)
        return reply_bad_bool(rq, bad); /* before a snapshot is taken for nothing */
    struct vm *vm = NULL;
    struct provider *p = NULL;
    int r = server_vm_get(rq->srv, rq->segs[1], &vm, &p);
    if (r < 0)
        return reply_vm_error(rq, r);
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
    /* label in the query (004) or the optional JSON body, which may also say chain and disks */
    json_t *body = NULL;
    struct snapshot_request sr = {.label = request_arg(rq, "label")};
    CLEANUP_FREE const char **disks = NULL;
    char err[512] = "";
    if (rq->body_len > 0) {
        json_error_t jerr;
        json_t *jd = NULL;
        const char *jlabel = NULL;
        body = json_loadb(rq->body, rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
        if (!body || json_unpack_ex(body, &jerr, JSON_STRICT, "{s?s, s?s, s?o}", "label", &jlabel,
                                    "chain", &sr.chain, "disks", &jd) < 0) {
            snprintf(err, sizeof(err), "%s", jerr.text);
        } else if (jd && (!json_is_array(jd) || json_array_size(jd) == 0 ||
                          json_array_size(jd) > PROVIDER_MAX_DISKS)) {
            snprintf(err, sizeof(err), "disks: a non-empty array of disk names");
        } else if (jd && !(disks = calloc(json_array_size(jd) + 1, sizeof(*disks)))) {
            snprintf(err, sizeof(err), "out of memory");
        } else {
            for (size_t i = 0; jd && i < json_array_size(jd); i++)
                if (!(disks[i] = json_string_value(json_array_get(jd, i))))
                    snprintf(err, sizeof(err), "disks: a non-empty array of disk names");
            sr.disks = disks;
            if (jlabel)
                sr.label = jlabel;
        }
        if (err[0]) {
            json_decref(body);
            vm_free(vm);
            return reply_error(rq, 400, "bad request",
                               "expected an empty body or a JSON object {\"label\": ..., "
                               "\"chain\": ..., \"disks\": [...]}: %s",
                               err);
        }
    }
    if (sr.label && !snapshot_label_valid(sr.label)) {
        json_decref(body);
        vm_free(vm);
        return reply_error(rq, 400, "bad request",
                           "label: 1 to %d characters of A-Z a-z 0-9 . _ : @ + = / -",
                           SNAPSHOT_LABEL_MAX);
    }
    if (sr.chain && !provider_chain_valid(sr.chain)) {
        json_decref(body);
        vm_free(vm);
        return reply_error(rq, 400, "bad request", "chain: 1 to %d characters of A-Z a-z 0-9 _ -",
                           PROVIDER_CHAIN_MAX);
    }
    struct snapshot *snap = NULL;
    r = snapshot_create(rq->srv, p, vm, &sr, &snap, err, sizeof(err));
    json_decref(body);
    vm_free(vm);
    if (r == -ENOENT)
        return reply_error(rq, 400, "bad request", "%s", err);
    if (r < 0)
        return reply_error(rq, r == -ENOSPC ? 507 : r == -EBUSY ? 409 : 500, "snapshot failed",
                           "%s", err);
    FILE *f = server_tmpfile();
    if (!f) {
        snapshot_free(snap);
        return reply_errno(rq, -errno, "temporary file");
    }
    struct chunk_opts opts = {.chunks = chunks, .squash = true};
    r = write_snapshot(rq->srv, f, snap, &opts, NULL);
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
    if (r == -ENOENT ||
        (r == 0 && strcmp(snap->status, "ready") && strcmp(snap->status, "checkpoint"))) {
        snapshot_free(snap);
        return reply_error(rq, 404, "not found", "snapshot '%s' of VM '%s' not found",
                           rq->segs[3], rq->segs[1]);
    }
    if (r < 0)
        return reply_errno(rq, r, "catalog");
    const char *bad = NULL;
    bool squash = arg_bool(rq, "squashChunks", true, &bad);
    bool chunks = arg_bool(rq, "chunks", true, &bad);
    bool zeroed_in_chunks = arg_bool(rq, "zeroedInChunks", true, &bad);
    if (bad) {
        snapshot_free(snap);
        return reply_bad_bool(rq, bad);
    }
    const char *cmp = request_arg(rq, "compareTo");
    if (cmp && *cmp) {
        r = catalog_snapshot_find(rq->srv->catalog, cmp, &base);
        int ret = -1;
        if (r == -ENOENT ||
            (r == 0 && strcmp(base->status, "ready") && strcmp(base->status, "checkpoint")))
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
    FILE *f = server_tmpfile();
    if (!f) {
        snapshot_free(snap);
        snapshot_free(base);
        return reply_errno(rq, -errno, "temporary file");
    }
    struct chunk_opts opts = {
        .chunks = chunks, .squash = squash, .zeroed_in_chunks = zeroed_in_chunks};
    r = write_snapshot(rq->srv, f, snap, &opts, base);
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
    bool keep_checkpoint;
    if (request_arg_bool(rq, "keepCheckpoint", false, &keep_checkpoint) < 0) {
        snapshot_free(snap);
        return reply_bad_bool(rq, "keepCheckpoint");
    }
    if (keep_checkpoint) {
        r = snapshot_release(rq->srv, snap);
        snapshot_free(snap);
        if (r < 0)
            return reply_errno(rq, r, "snapshot release");
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        return reply(rq, 204, resp);
    }
    r = snapshot_delete(rq->srv, snap);
    snapshot_free(snap);
    if (r < 0)
        return reply_errno(rq, r, "snapshot delete");
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    return reply(rq, 204, resp);
}

int route_vm_definition(struct request *rq)
{
    struct vm *vm = NULL;
    struct provider *p = NULL;
    int r = server_vm_get(rq->srv, rq->segs[1], &vm, &p);
    if (r < 0)
        return reply_vm_error(rq, r);
    if (!p->ops->vm_definition) {
        vm_free(vm);
        return reply_error(rq, 404, "not found",
                           "provider %s (type %s) keeps no definition of its VMs", p->name,
                           p->ops->type);
    }
    CLEANUP_FREE char *text = NULL;
    const char *format = NULL;
    r = p->ops->vm_definition(p, vm, &text, &format);
    vm_free(vm);
    if (r < 0)
        return reply_errno(rq, r, "VM definition");
    FILE *f = server_tmpfile();
    if (!f)
        return reply_errno(rq, -errno, "temporary file");
    bool first = true;
    fputc('{', f);
    jw_kv_str(f, &first, "vm_id", rq->segs[1]);
    jw_kv_str(f, &first, "format", format);
    jw_kv_str(f, &first, "definition", text);
    fputc('}', f);
    return reply_json_file(rq, 200, f);
}

int route_snapshots_purge(struct request *rq)
{
    int r = vm_known(rq, rq->segs[1]);
    if (r < 0)
        return reply_vm_error(rq, r);
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
