/* API routes of transfers, modelled on ovirt-imageio's images API: uploads of new disks
 * (restore to a host) and downloads of snapshot disks.
 *
 *   POST /api/v1/vms/{vm}/uploads          make a transfer for a new disk (bearer token)
 *   PUT, PATCH, OPTIONS, DELETE  .../{id}  write data / zero or flush / capabilities / cancel
 *   GET .../{id}/extents                   data and holes of what was written so far
 *   POST .../{id}/finalize                 publish the disk
 *
 *   POST /api/v1/vms/{vm}/downloads        make a transfer that reads a snapshot's disk
 *   GET, HEAD, OPTIONS, DELETE  .../{id}   read (with Range) / capabilities / end it
 *   GET .../{id}/extents                   data and holes of the snapshot's disk
 *
 * where ... is /api/v1/transfers (bearer token) or /images (the transfer ID is the credential,
 * as an imageio ticket).  PUT bodies are streamed to the partial file as they arrive (see the
 * begin hook in http.c); a download's data is served as the snapshot disk route serves it;
 * everything else is small JSON.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/log.h"
#include "server/upload.h"
#include "server/upload_range.h"
#include "server/server.h"

/* What OPTIONS announces, as ovirt-imageio does. */
#define TRANSFER_ALLOW       "OPTIONS, GET, PUT, PATCH, POST, DELETE"
#define TRANSFER_MAX_READERS 1
/* The methods of a download (its OPTIONS), and of an upload's data route (a 405). */
#define DOWNLOAD_ALLOW       "OPTIONS, GET, HEAD, DELETE"
#define UPLOAD_DATA_ALLOW    "OPTIONS, PUT, PATCH, POST, DELETE"
#define DOWNLOAD_MAX_READERS 8 /* a hint to clients, as imageio's; not a limit */
#define DOWNLOAD_PATH_SEGS   6 /* vms/{vm}/snapshots/{snap}/disks/{disk} */
#define API_TRANSFERS_PREFIX "/api/v1/transfers/"
#define IMAGEIO_PREFIX       "/images/"

/* ---- helpers ---- */

static struct disk_reader *download_open(struct request *rq, const struct transfer *t,
                                         char **locator, int *ret);

/* A JSON reply with one extra header. */
static int reply_json_header(struct request *rq, unsigned status, json_t *j, const char *header,
                             const char *value)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text)
        return MHD_NO;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    MHD_add_response_header(resp, header, value);
    return reply(rq, status, resp);
}

/* 416 with "Content-Range: bytes * / SIZE" telling the disk's size. */
static int reply_out_of_range(struct request *rq, uint64_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int reply_out_of_range(struct request *rq, uint64_t size, const char *fmt, ...)
{
    char details[512], range[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(details, sizeof(details), fmt, ap);
    va_end(ap);
    snprintf(range, sizeof(range), "bytes */%" PRIu64, size);
    return reply_json_header(
        rq, 416, json_pack("{s:s, s:s}", "error", "range not satisfiable", "details", details),
        MHD_HTTP_HEADER_CONTENT_RANGE, range);
}

/* A failure of the server or its storage, with err saying what failed. */
static int reply_failure(struct request *rq, int r, const char *err)
{
    if (r == -ENOSPC)
        return reply_error(rq, 507, "insufficient storage", "%s: no space left on device", err);
    return reply_error(rq, 500, "internal error", "%s", err);
}

static int reply_no_transfer(struct request *rq)
{
    return reply_error(rq, 404, "not found",
                       "transfer '%s' not found (unknown, finalized, cancelled or expired)",
                       rq->segs[1]);
}

/* The transfer named in the URL, with a reference; NULL when a 404 was queued (*ret). */
static struct transfer *transfer_lookup(struct request *rq, int *ret)
{
    struct transfer *t = upload_get(rq->srv->uploads, rq->segs[1]);
    if (!t) {
        *ret = reply_no_transfer(rq);
        return NULL;
    }
    /* The /api/v1/transfers routes a reader may use serve its downloads only. */
    if (!rq->imageio && t->direction == TRANSFER_UPLOAD &&
        !auth_role_allows(rq->role, AUTH_ROLE_OPERATOR)) {
        upload_put(rq->srv->uploads, t);
        *ret = reply_error(rq, 403, "forbidden",
                           "user '%s' has role %s, which may not use an upload", rq->user,
                           auth_role_name(rq->role));
        return NULL;
    }
    return t;
}

/* 405 for a method the transfer's direction does not have (writing a download, reading an
 * upload). */
static int reply_wrong_direction(struct request *rq, const struct transfer *t)
{
    bool download = t->direction == TRANSFER_DOWNLOAD;
    return reply_json_header(
        rq, 405,
        json_pack("{s:s, s:s+}", "error", "method not allowed", "details",
                  download ? "transfer is a download: " : "transfer is an upload: ",
                  download ? DOWNLOAD_ALLOW : UPLOAD_DATA_ALLOW),
        "Allow", download ? DOWNLOAD_ALLOW : UPLOAD_DATA_ALLOW);
}

/* A claim of [offset, offset + length) refused by upload_write_begin. */
static int reply_claim_refused(struct request *rq, const struct transfer *t, int r, uint64_t offset,
                               uint64_t length)
{
    uint64_t last = offset + length - 1;
    switch (-r) {
    case EBUSY:
        return reply_error(rq, 409, "conflict",
                           "bytes %" PRIu64 "-%" PRIu64 " overlap a write in progress", offset,
                           last);
    case EUSERS:
        return reply_error(rq, 409, "conflict",
                           "%u writers are writing this transfer already ([upload] max_writers)",
                           uploads_max_writers(rq->srv->uploads));
    case EALREADY:
        return reply_error(rq, 409, "conflict", "transfer '%s' is being finalized", rq->segs[1]);
    case ERANGE:
        return reply_out_of_range(
            rq, t->size, "bytes %" PRIu64 "-%" PRIu64 " are not inside the disk", offset, last);
    default:
        return reply_no_transfer(rq);
    }
}

/* imageio's "flush" query parameter: y or n, or a boolean as request_arg_bool reads it; absent
 * or empty, *flush keeps its value. */
static bool arg_flush(struct request *rq, bool *flush)
{
    const char *v = request_arg(rq, "flush");
    if (v && (!strcmp(v, "y") || !strcmp(v, "n"))) {
        *flush = v[0] == 'y';
        return true;
    }
    return request_arg_bool(rq, "flush", *flush, flush) == 0;
}

/* RFC 3339 UTC time, seconds from now. */
static void rfc3339_in(unsigned seconds, char *buf, size_t len)
{
    time_t when = time(NULL) + (time_t)seconds;
    struct tm tm;
    gmtime_r(&when, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- POST /api/v1/vms/{vm}/uploads ---- */

/* The provider that will hold the new disk: the VM's, or for a new VM the one asked for, else
 * the first that can create disks.  NULL when a reply was queued (*ret). */
static struct provider *upload_provider(struct request *rq, const char *vm_id, const char *disk,
                                        const char *wanted, int *ret)
{
    struct server *s = rq->srv;
    struct vm *vm = NULL;
    struct provider *p = NULL;
    int r = server_vm_get(s, vm_id, &vm, &p);
    if (r < 0 && r != -ENOENT) {
        *ret = reply_errno(rq, r, "VM");
        return NULL;
    }
    if (r == 0) {
        bool exists = false;
        for (size_t i = 0; i < vm->disks.len; i++)
            exists |= !strcmp(vm->disks.ptr[i].name, disk);
        vm_free(vm);
        if (wanted && strcmp(wanted, p->name))
            *ret = reply_error(rq, 409, "conflict", "VM '%s' belongs to provider %s, not %s", vm_id,
                               p->name, wanted);
        else if (!p->ops->upload_open)
            *ret = reply_error(rq, 409, "conflict", "provider %s cannot create disks", p->name);
        else if (exists)
            *ret = reply_error(rq, 409, "conflict", "VM '%s' already has a disk '%s'", vm_id, disk);
        else
            return p;
        return NULL;
    }
    if (wanted) {
        p = server_provider(s, wanted);
        if (!p)
            *ret = reply_error(rq, 400, "bad request", "no provider named '%s'", wanted);
        else if (!p->ops->upload_open)
            *ret = reply_error(rq, 409, "conflict", "provider %s cannot create disks", p->name);
        return p && p->ops->upload_open ? p : NULL;
    }
    for (size_t i = 0; i < s->n_providers; i++)
        if (s->providers[i]->ops->upload_open)
            return s->providers[i];
    *ret = reply_error(rq, 409, "conflict", "provider %s cannot create disks",
                       s->n_providers ? s->providers[0]->name : "(none)");
    return NULL;
}

/* Make the transfer and answer 201 with it. */
static int upload_start(struct request *rq, struct provider *p, const char *vm_id, const char *disk,
                        uint64_t size)
{
    struct transfer *t = NULL;
    char err[512] = "";
    int r = upload_create(rq->srv->uploads, p, vm_id, disk, size, &t, err, sizeof(err));
    if (r == -EINVAL || r == -EFBIG)
        return reply_error(rq, 400, "bad request", "%s", err);
    if (r == -EEXIST || r == -EBUSY || r == -EMFILE || r == -ENOTDIR || r == -EOPNOTSUPP)
        return reply_error(rq, 409, "conflict", "%s", err);
    if (r < 0)
        return reply_failure(rq, r, err[0] ? err : strerror(-r));
    char expires[40];
    rfc3339_in(rq->srv->cfg->upload_idle_timeout, expires, sizeof(expires));
    json_t *j = json_pack("{s:s, s:s+, s:s+, s:s, s:s, s:I, s:s, s:s, s:s}", "id", t->id, "url",
                          API_TRANSFERS_PREFIX, t->id, "imageio_url", IMAGEIO_PREFIX, t->id, "vm",
                          t->vm_id, "disk", t->disk, "size", (json_int_t)t->size, "format", "raw",
                          "provider", t->provider, "expires_at", expires);
    upload_put(rq->srv->uploads, t);
    return reply_json(rq, 201, j);
}

int route_upload_create(struct request *rq)
{
    const char *vm_id = rq->segs[1];
    json_error_t jerr;
    json_t *body = rq->body ? json_loadb(rq->body, rq->body_len, 0, &jerr) : NULL;
    const char *disk = NULL, *format = "raw", *wanted = NULL;
    json_int_t size = 0;
    int ret = MHD_NO;
    struct provider *p;
    if (!body || json_unpack(body, "{s:s, s:I, s?:s, s?:s}", "disk", &disk, "size", &size, "format",
                             &format, "provider", &wanted) < 0)
        ret = reply_error(rq, 400, "bad request",
                          "expected a JSON body {\"disk\": NAME, \"size\": BYTES, "
                          "\"format\": \"raw\"}");
    else if (size <= 0 || (uint64_t)size > UPLOAD_SIZE_MAX)
        ret = reply_error(rq, 400, "bad request",
                          "size must be at least 1 byte and at most 2^62 bytes");
    else if (strcmp(format, "raw"))
        ret =
            reply_error(rq, 400, "bad request", "format '%s' is not supported (only raw)", format);
    else if (!provider_id_is_safe(disk) || !provider_id_is_safe(vm_id))
        ret = reply_error(rq, 400, "bad request", "unsafe disk name '%s'", disk);
    else if ((p = upload_provider(rq, vm_id, disk, wanted, &ret)) != NULL)
        ret = upload_start(rq, p, vm_id, disk, (uint64_t)size);
    json_decref(body);
    return ret;
}

/* ---- PUT .../{id}: data ---- */

struct put_ctx {
    struct transfer *t;
    int slot;                  /* claimed range, or -1 */
    struct upload_range range; /* where the body goes; claimed when not empty */
    uint64_t received;         /* bytes of the body written so far */
    uint64_t wb_done;          /* bytes of the body whose writeback is started (upload_writeback) */
    bool flush;
};

static void put_release(struct request *rq)
{
    struct put_ctx *c = rq->ctx;
    if (c->t) {
        upload_write_end(rq->srv->uploads, c->t, c->slot);
        upload_put(rq->srv->uploads, c->t);
    }
    free(c);
    rq->ctx = NULL;
}

/* A long body's writeback is started (and the part before dropped from the page cache) every
 * this many bytes, not only at its end. */
#define PUT_WRITEBACK ((uint64_t)32 << 20)

/* Writeback behind the request's writes (upload_writeback) of what it wrote since the last
 * call: 0 or a negative errno. */
static int put_writeback(struct request *rq)
{
    struct put_ctx *c = rq->ctx;
    if (c->received == c->wb_done)
        return 0;
    int r = upload_writeback(rq->srv->uploads, c->t, c->slot, c->range.offset + c->wb_done,
                             c->received - c->wb_done);
    if (r == 0)
        c->wb_done = c->received;
    return r;
}

static int reply_writeback_failed(struct request *rq, int r)
{
    struct put_ctx *c = rq->ctx;
    char err[512];
    snprintf(err, sizeof(err), "writing back %s: %s", c->t->partial_path, strerror(-r));
    return reply_failure(rq, r, err);
}

static void put_body_write(struct request *rq, const char *data, size_t len)
{
    struct put_ctx *c = rq->ctx;
    /* Nothing of a piece that would reach past the range is written. */
    if (!upload_range_fits(&c->range, c->received, len)) {
        reply_out_of_range(rq, c->t->size,
                           "the body is longer than the %" PRIu64 " bytes of its range at %" PRIu64,
                           c->range.length, c->range.offset);
        return;
    }
    int r = upload_pwrite(c->t, data, len, c->range.offset + c->received);
    if (r < 0) {
        char err[512];
        snprintf(err, sizeof(err), "writing %s at %" PRIu64 ": %s", c->t->partial_path,
                 c->range.offset + c->received, strerror(-r));
        reply_failure(rq, r, err);
        return;
    }
    c->received += len;
    atomic_fetch_add(&rq->srv->metrics.bytes_uploaded, (unsigned long long)len);
    if (c->received - c->wb_done >= PUT_WRITEBACK && (r = put_writeback(rq)) < 0)
        reply_writeback_failed(rq, r);
}

int route_transfer_put_begin(struct request *rq)
{
    struct put_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return MHD_NO;
    c->slot = -1;
    rq->ctx = c;
    rq->release = put_release;
    int ret = MHD_NO;
    if (!(c->t = transfer_lookup(rq, &ret)))
        return ret;
    if (c->t->direction != TRANSFER_UPLOAD)
        return reply_wrong_direction(rq, c->t);
    uint64_t size = c->t->size;
    c->flush = true; /* imageio's default */
    if (!arg_flush(rq, &c->flush))
        return reply_error(rq, 400, "bad request",
                           "query parameter 'flush' takes y or n, or a boolean: 1, t, T, TRUE, "
                           "true, True, 0, f, F, FALSE, false or False");

    const char *te = request_header(rq, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    char err[512];
    int r = upload_range_parse(request_header(rq, MHD_HTTP_HEADER_CONTENT_RANGE),
                               request_header(rq, MHD_HTTP_HEADER_CONTENT_LENGTH),
                               te && strcasestr(te, "chunked"), size, &c->range, err, sizeof(err));
    if (r == -ERANGE)
        return reply_out_of_range(rq, size, "%s", err);
    if (r < 0)
        return reply_error(rq, 400, "bad request", "%s", err);
    if (c->range.length > 0) {
        r = upload_write_begin(rq->srv->uploads, c->t, c->range.offset, c->range.length, &c->slot);
        if (r < 0)
            return reply_claim_refused(rq, c->t, r, c->range.offset, c->range.length);
    }
    rq->body_write = put_body_write;
    return MHD_YES;
}

int route_transfer_put(struct request *rq)
{
    struct put_ctx *c = rq->ctx;
    if (c->range.exact && c->received < c->range.length)
        return reply_error(rq, 400, "bad request",
                           "the body of %" PRIu64 " bytes is shorter than its range of %" PRIu64,
                           c->received, c->range.length);
    if (upload_is_gone(rq->srv->uploads, c->t))
        return reply_error(rq, 404, "not found", "transfer '%s' was cancelled during the write",
                           rq->segs[1]);
    int wr = put_writeback(rq);
    if (wr < 0)
        return reply_writeback_failed(rq, wr);
    if (c->flush && c->received > 0) {
        int r = upload_flush(c->t);
        if (r < 0) {
            char err[512];
            snprintf(err, sizeof(err), "flushing %s: %s", c->t->partial_path, strerror(-r));
            return reply_failure(rq, r, err);
        }
    }
    return reply_json(rq, 200, json_object());
}

/* ---- PATCH .../{id}: zero, flush ---- */

static int patch_zero(struct request *rq, struct transfer *t, json_t *body)
{
    json_int_t offset = -1, size = -1;
    int flush = 0;
    if (json_unpack(body, "{s:I, s:I, s?:b}", "offset", &offset, "size", &size, "flush", &flush) <
            0 ||
        offset < 0 || size <= 0)
        return reply_error(rq, 400, "bad request",
                           "zero needs {\"op\": \"zero\", \"offset\": N, \"size\": N > 0, "
                           "\"flush\": BOOL}");
    if ((uint64_t)offset + (uint64_t)size > t->size)
        return reply_out_of_range(rq, t->size,
                                  "bytes %" PRIu64 "-%" PRIu64 " end beyond the disk's %" PRIu64,
                                  (uint64_t)offset, (uint64_t)offset + (uint64_t)size - 1, t->size);
    int slot;
    int r = upload_write_begin(rq->srv->uploads, t, (uint64_t)offset, (uint64_t)size, &slot);
    if (r < 0)
        return reply_claim_refused(rq, t, r, (uint64_t)offset, (uint64_t)size);
    r = upload_zero(t, (uint64_t)offset, (uint64_t)size);
    if (r == 0 && flush)
        r = upload_flush(t);
    upload_write_end(rq->srv->uploads, t, slot);
    if (r < 0) {
        char err[512];
        snprintf(err, sizeof(err), "zeroing %s at %" PRIu64 ": %s", t->partial_path,
                 (uint64_t)offset, strerror(-r));
        return reply_failure(rq, r, err);
    }
    if (upload_is_gone(rq->srv->uploads, t))
        return reply_error(rq, 404, "not found", "transfer '%s' was cancelled during the write",
                           rq->segs[1]);
    return reply_json(rq, 200, json_object());
}

int route_transfer_patch(struct request *rq)
{
    int ret = MHD_NO;
    struct transfer *t = transfer_lookup(rq, &ret);
    if (!t)
        return ret;
    if (t->direction != TRANSFER_UPLOAD) {
        ret = reply_wrong_direction(rq, t);
        upload_put(rq->srv->uploads, t);
        return ret;
    }
    json_error_t jerr;
    json_t *body = rq->body ? json_loadb(rq->body, rq->body_len, 0, &jerr) : NULL;
    const char *op = NULL;
    if (!body || json_unpack(body, "{s:s}", "op", &op) < 0) {
        ret = reply_error(rq, 400, "bad request",
                          "expected a JSON body {\"op\": \"zero\" or \"flush\", ...}");
    } else if (!strcmp(op, "zero")) {
        ret = patch_zero(rq, t, body);
    } else if (!strcmp(op, "flush")) {
        int r = upload_flush(t);
        if (r < 0) {
            char err[512];
            snprintf(err, sizeof(err), "flushing %s: %s", t->partial_path, strerror(-r));
            ret = reply_failure(rq, r, err);
        } else {
            ret = reply_json(rq, 200, json_object());
        }
    } else {
        ret = reply_error(rq, 400, "bad request", "op '%s' is not supported (zero, flush)", op);
    }
    json_decref(body);
    upload_put(rq->srv->uploads, t);
    return ret;
}

/* ---- OPTIONS .../{id} ---- */

int route_transfer_options(struct request *rq)
{
    int ret = MHD_NO;
    struct transfer *t = transfer_lookup(rq, &ret);
    if (!t)
        return ret;
    bool download = t->direction == TRANSFER_DOWNLOAD;
    upload_put(rq->srv->uploads, t);
    if (download)
        return reply_json_header(rq, 200,
                                 json_pack("{s:[s], s:i, s:i, s:n}", "features", "extents",
                                           "max_readers", DOWNLOAD_MAX_READERS, "max_writers", 0,
                                           "unix_socket"),
                                 "Allow", DOWNLOAD_ALLOW);
    json_t *j = json_pack("{s:[sss], s:i, s:i, s:n}", "features", "extents", "zero", "flush",
                          "max_readers", TRANSFER_MAX_READERS, "max_writers",
                          (int)uploads_max_writers(rq->srv->uploads), "unix_socket");
    return reply_json_header(rq, 200, j, "Allow", TRANSFER_ALLOW);
}

/* ---- GET .../{id}/extents ---- */

static void extent_write(FILE *f, bool *first, uint64_t start, uint64_t length, bool zero)
{
    fprintf(f, "%s{\"start\":%" PRIu64 ",\"length\":%" PRIu64 ",\"zero\":%s,\"hole\":%s}",
            *first ? "" : ",", start, length, zero ? "true" : "false", zero ? "true" : "false");
    *first = false;
}

/* Data and holes of a disk (the partial disk, a snapshot's disk) covering [0, size), from
 * their maps (DISK_MAP_LOGICAL: data and holes as reads see them). */
struct extents_out {
    FILE *f;
    bool first;
    uint64_t pos; /* end of what was written */
};

static int extents_emit(void *opaque, const struct extent *e)
{
    struct extents_out *o = opaque;
    if (!extent_is_data(e) || e->start < o->pos)
        return 0;
    if (e->start > o->pos)
        extent_write(o->f, &o->first, o->pos, e->start - o->pos, true);
    extent_write(o->f, &o->first, e->start, e->length, false);
    o->pos = extent_end(e);
    return 0;
}

int route_transfer_extents(struct request *rq)
{
    int ret = MHD_NO;
    struct transfer *t = transfer_lookup(rq, &ret);
    if (!t)
        return ret;
    const char *context = request_arg(rq, "context");
    FILE *f = NULL;
    int r = 0;
    struct disk_reader *rd = NULL;
    CLEANUP_FREE char *locator = NULL;
    if (context && strcmp(context, "zero")) {
        ret = reply_error(rq, 400, "bad request", "context '%s' is not supported (only zero)",
                          context);
    } else if (t->direction == TRANSFER_DOWNLOAD && !(rd = download_open(rq, t, &locator, &ret))) {
        /* answered */
    } else if (!(f = server_tmpfile())) {
        ret = reply_errno(rq, -errno, "temporary file");
    } else {
        struct extents_out o = {.f = f, .first = true};
        struct disk_map_sink sink = {.emit = extents_emit, .opaque = &o};
        fputc('[', f);
        r = rd ? rd->ops->map(rd, DISK_MAP_LOGICAL, &sink)
               : t->writer->ops->map(t->writer, t->size, &sink);
        if (r == 0 && o.pos < t->size)
            extent_write(f, &o.first, o.pos, t->size - o.pos, true);
        fputc(']', f);
        if (r == 0 && ferror(f))
            r = -EIO;
        if (r < 0) {
            fclose(f);
            char err[512];
            snprintf(err, sizeof(err), "extents of %s: %s", locator ? locator : t->partial_path,
                     strerror(-r));
            ret = reply_failure(rq, r, err);
        } else {
            ret = reply_json_file(rq, 200, f);
        }
    }
    disk_reader_close(rd);
    upload_put(rq->srv->uploads, t);
    return ret;
}

/* ---- POST .../{id}/finalize ---- */

int route_transfer_finalize(struct request *rq)
{
    int ret = MHD_NO;
    struct transfer *t = transfer_lookup(rq, &ret);
    if (!t)
        return ret;
    char err[512] = "";
    int r = t->direction == TRANSFER_UPLOAD ? upload_finalize(rq->srv->uploads, t, err, sizeof(err))
                                            : -EBADF;
    if (r == -EBADF)
        ret = reply_wrong_direction(rq, t);
    else if (r == -ENOENT)
        ret = reply_no_transfer(rq);
    else if (r == -EBUSY || r == -EALREADY || r == -EEXIST)
        ret = reply_error(rq, 409, "conflict", "%s", err);
    else if (r < 0)
        ret = reply_failure(rq, r, err);
    else
        ret = reply_json(rq, 200,
                         json_pack("{s:s, s:s, s:s, s:I, s:s}", "vm", t->vm_id, "disk", t->disk,
                                   "path", t->final_path, "size", (json_int_t)t->size, "provider",
                                   t->provider));
    upload_put(rq->srv->uploads, t);
    return ret;
}

/* ---- downloads ---- */

/* The snapshot of download t, ready, and its disk; NULL when a 404 or 500 was queued (*ret). */
static struct snapshot *download_snapshot(struct request *rq, const char *vm_id,
                                          const char *snap_id, const char *disk,
                                          const struct snapshot_disk **d, int *ret)
{
    struct snapshot *snap = NULL;
    int r = catalog_snapshot_get(rq->srv->catalog, vm_id, snap_id, &snap);
    if (r == -ENOENT || (r == 0 && strcmp(snap->status, "ready"))) {
        *ret =
            reply_error(rq, 404, "not found", "snapshot '%s' of VM '%s' not found", snap_id, vm_id);
    } else if (r < 0) {
        *ret = reply_errno(rq, r, "catalog");
        return NULL;
    } else {
        for (size_t i = 0; i < snap->disks.len; i++)
            if (!strcmp(snap->disks.ptr[i].name, disk)) {
                *d = &snap->disks.ptr[i];
                return snap;
            }
        *ret = reply_error(rq, 404, "not found", "disk '%s' not in snapshot '%s'", disk, snap_id);
    }
    snapshot_free(snap);
    return NULL;
}

/* The snapshot disk of download t, open, and its locator (*locator, to free); NULL when a reply
 * was queued (*ret). */
static struct disk_reader *download_open(struct request *rq, const struct transfer *t,
                                         char **locator, int *ret)
{
    const struct snapshot_disk *d = NULL;
    struct snapshot *snap = download_snapshot(rq, t->vm_id, t->snapshot, t->disk, &d, ret);
    if (!snap)
        return NULL;
    struct provider *p = server_provider(rq->srv, snap->provider);
    struct disk_reader *rd = NULL;
    int r = p ? p->ops->disk_open(p, d->locator, 0, &rd) : -ENOENT;
    if (r < 0) {
        *ret =
            reply_error(rq, 500, "internal error", "snapshot '%s' disk '%s': %s: %s", snap->id,
                        d->name, d->locator, p ? strerror(-r) : "its provider is not configured");
    } else if (!(*locator = strdup(d->locator))) {
        disk_reader_close(rd);
        rd = NULL;
        *ret = reply_error(rq, 500, "internal error", "out of memory");
    }
    snapshot_free(snap);
    return rd;
}

int route_download_create(struct request *rq)
{
    const char *vm_id = rq->segs[1];
    json_error_t jerr;
    json_t *body = rq->body ? json_loadb(rq->body, rq->body_len, 0, &jerr) : NULL;
    const char *snap_id = NULL, *disk = NULL;
    int ret = MHD_NO;
    const struct snapshot_disk *d = NULL;
    struct snapshot *snap = NULL;
    if (!body || json_unpack(body, "{s:s, s:s}", "snapshot", &snap_id, "disk", &disk) < 0) {
        ret = reply_error(rq, 400, "bad request",
                          "expected a JSON body {\"snapshot\": SNAPSHOT, \"disk\": DISK}");
    } else if (!provider_id_is_safe(snap_id) || !provider_id_is_safe(disk)) {
        ret = reply_error(rq, 400, "bad request", "unsafe snapshot or disk name");
    } else if ((snap = download_snapshot(rq, vm_id, snap_id, disk, &d, &ret)) != NULL) {
        struct transfer *t = NULL;
        char err[512] = "";
        int r = download_create(rq->srv->uploads, snap->provider, snap->vm_id, snap->id, d->name,
                                d->size, &t, err, sizeof(err));
        if (r == -EMFILE) {
            ret = reply_error(rq, 409, "conflict", "%s", err);
        } else if (r < 0) {
            ret = reply_failure(rq, r, err[0] ? err : strerror(-r));
        } else {
            char expires[40];
            rfc3339_in(rq->srv->cfg->upload_idle_timeout, expires, sizeof(expires));
            json_t *j =
                json_pack("{s:s, s:s+, s:s+, s:s, s:s, s:s, s:s, s:I, s:s, s:s, s:s}", "id", t->id,
                          "url", API_TRANSFERS_PREFIX, t->id, "imageio_url", IMAGEIO_PREFIX, t->id,
                          "direction", "download", "vm", t->vm_id, "snapshot", t->snapshot, "disk",
                          t->disk, "size", (json_int_t)t->size, "format", "raw", "provider",
                          t->provider, "expires_at", expires);
            upload_put(rq->srv->uploads, t);
            ret = reply_json(rq, 201, j);
        }
        snapshot_free(snap);
    }
    json_decref(body);
    return ret;
}

/* GET and HEAD of a download: answered exactly as GET .../snapshots/{snap}/disks/{disk} (Range,
 * multiple ranges, sparse answers, ETag and If-Range), by that route, with the request's path
 * replaced by the snapshot disk's. */
int route_transfer_get(struct request *rq)
{
    int ret = MHD_NO;
    struct transfer *t = transfer_lookup(rq, &ret);
    if (!t)
        return ret;
    if (t->direction != TRANSFER_DOWNLOAD) {
        ret = reply_wrong_direction(rq, t);
        upload_put(rq->srv->uploads, t);
        return ret;
    }
    const char *path[DOWNLOAD_PATH_SEGS] = {"vms",       t->vm_id, "snapshots",
                                            t->snapshot, "disks",  t->disk};
    char *segs[DOWNLOAD_PATH_SEGS] = {NULL};
    bool ok = true;
    for (int i = 0; i < DOWNLOAD_PATH_SEGS; i++)
        ok &= (segs[i] = strdup(path[i])) != NULL;
    upload_put(rq->srv->uploads, t);
    if (!ok) {
        for (int i = 0; i < DOWNLOAD_PATH_SEGS; i++)
            free(segs[i]);
        return reply_error(rq, 500, "internal error", "out of memory");
    }
    for (int i = 0; i < rq->nsegs; i++)
        free(rq->segs[i]);
    memcpy(rq->segs, segs, sizeof(segs));
    rq->nsegs = DOWNLOAD_PATH_SEGS;
    return route_disk_data(rq);
}

/* ---- DELETE .../{id} ---- */

int route_transfer_cancel(struct request *rq)
{
    int ret = MHD_NO;
    struct transfer *t = transfer_lookup(rq, &ret);
    if (!t)
        return ret;
    int r = upload_cancel(rq->srv->uploads, t);
    upload_put(rq->srv->uploads, t);
    if (r == -EALREADY)
        return reply_error(rq, 409, "conflict", "transfer '%s' is being finalized", rq->segs[1]);
    if (r < 0)
        return reply_no_transfer(rq);
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    return reply(rq, 204, resp);
}
