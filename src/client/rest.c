/* Typed calls of the vmexportd REST API: every path and query string the command line sends
 * is built here, from escaped IDs (rest.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/rest.h"
#include "core/cleanup.h"

/* CLIENT_API_ROOT "/vms/{vm}" + ("/snapshots/{snap}" when snap) + ("/disks/{disk}" when disk)
 * + the formatted tail (starting with '/' or '?', or empty).  IDs are escaped.  malloc'd;
 * NULL when out of memory. */
static char *api_path(const char *vm, const char *snap, const char *disk, const char *tail_fmt, ...)
    __attribute__((format(printf, 4, 5)));

static char *api_path(const char *vm, const char *snap, const char *disk, const char *tail_fmt, ...)
{
    CLEANUP_FREE char *v = client_escape(vm);
    CLEANUP_FREE char *s = snap ? client_escape(snap) : NULL;
    CLEANUP_FREE char *d = disk ? client_escape(disk) : NULL;
    CLEANUP_FREE char *tail = NULL;
    va_list ap;
    va_start(ap, tail_fmt);
    int n = vasprintf(&tail, tail_fmt, ap);
    va_end(ap);
    if (n < 0) {
        tail = NULL;
        return NULL;
    }
    if (!v || (snap && !s) || (disk && !d))
        return NULL;
    char *p = NULL;
    if (asprintf(&p, CLIENT_API_ROOT "/vms/%s%s%s%s%s%s", v, s ? "/snapshots/" : "", s ? s : "",
                 d ? "/disks/" : "", d ? d : "", tail) < 0)
        return NULL;
    return p;
}

int client_list_vms(struct client *c, json_t **out)
{
    return client_json(c, "GET", CLIENT_API_ROOT "/vms", NULL, out, NULL);
}

int client_get_vm(struct client *c, const char *vm, json_t **out)
{
    CLEANUP_FREE char *path = api_path(vm, NULL, NULL, "%s", "");
    return path ? client_json(c, "GET", path, NULL, out, NULL) : -ENOMEM;
}

int client_list_snapshots(struct client *c, const char *vm, bool chunks, json_t **out)
{
    CLEANUP_FREE char *path =
        api_path(vm, NULL, NULL, "/snapshots%s", chunks ? "" : "?chunks=false");
    return path ? client_json(c, "GET", path, NULL, out, NULL) : -ENOMEM;
}

int client_create_snapshot(struct client *c, const char *vm, const char *label, bool chunks,
                           json_t **out)
{
    CLEANUP_FREE char *le = label ? client_escape(label) : NULL;
    if (label && !le)
        return -ENOMEM;
    CLEANUP_FREE char *path =
        api_path(vm, NULL, NULL, "/snapshots%s%s%s", chunks ? "" : "?chunks=false",
                 !label   ? ""
                 : chunks ? "?label="
                          : "&label=",
                 le ? le : "");
    return path ? client_json(c, "POST", path, NULL, out, NULL) : -ENOMEM;
}

int client_take_snapshot(struct client *c, const char *vm, const struct client_snapshot_request *rq,
                         bool chunks, json_t **out)
{
    json_t *body = json_object();
    json_t *disks = rq->disks ? json_array() : NULL;
    int r = body && (!rq->disks || disks) ? 0 : -ENOMEM;
    if (r == 0 && rq->label && json_object_set_new(body, "label", json_string(rq->label)) < 0)
        r = -ENOMEM;
    if (r == 0 && rq->chain && json_object_set_new(body, "chain", json_string(rq->chain)) < 0)
        r = -ENOMEM;
    for (size_t i = 0; r == 0 && disks && i < rq->ndisks; i++)
        if (json_array_append_new(disks, json_string(rq->disks[i])) < 0)
            r = -ENOMEM;
    if (r == 0 && disks && json_object_set(body, "disks", disks) < 0)
        r = -ENOMEM;
    CLEANUP_FREE char *text = r == 0 ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(disks);
    json_decref(body);
    CLEANUP_FREE char *path =
        api_path(vm, NULL, NULL, "/snapshots%s", chunks ? "" : "?chunks=false");
    if (!text || !path)
        return -ENOMEM;
    return client_json(c, "POST", path, text, out, NULL);
}

int client_release_snapshot(struct client *c, const char *vm, const char *snap)
{
    CLEANUP_FREE char *path = api_path(vm, snap, NULL, "?keepCheckpoint=true");
    return path ? client_json(c, "DELETE", path, NULL, NULL, NULL) : -ENOMEM;
}

int client_get_vm_definition(struct client *c, const char *vm, json_t **out)
{
    CLEANUP_FREE char *path = api_path(vm, NULL, NULL, "/definition");
    return path ? client_json(c, "GET", path, NULL, out, NULL) : -ENOMEM;
}

int client_get_snapshot(struct client *c, const char *vm, const char *snap,
                        const struct client_snapshot_query *q, json_t **out)
{
    const struct client_snapshot_query dflt = CLIENT_SNAPSHOT_QUERY_DEFAULT;
    if (!q)
        q = &dflt;
    CLEANUP_FREE char *ce = q->compare_to ? client_escape(q->compare_to) : NULL;
    if (q->compare_to && !ce)
        return -ENOMEM;
    /* Only what differs from the server's defaults: the path a 004 client would send. */
    const char *args[4];
    size_t n = 0;
    if (!q->chunks)
        args[n++] = "chunks=false";
    if (!q->squash)
        args[n++] = "squashChunks=false";
    if (q->compare_to && !q->zeroed_in_chunks)
        args[n++] = "zeroedInChunks=false";
    CLEANUP_FREE char *path =
        api_path(vm, snap, NULL, "%s%s%s%s%s%s%s%s", ce ? "?compareTo=" : "", ce ? ce : "",
                 n > 0 ? (ce ? "&" : "?") : "", n > 0 ? args[0] : "", n > 1 ? "&" : "",
                 n > 1 ? args[1] : "", n > 2 ? "&" : "", n > 2 ? args[2] : "");
    return path ? client_json(c, "GET", path, NULL, out, NULL) : -ENOMEM;
}

int client_delete_snapshot(struct client *c, const char *vm, const char *snap)
{
    CLEANUP_FREE char *path = api_path(vm, snap, NULL, "%s", "");
    return path ? client_json(c, "DELETE", path, NULL, NULL, NULL) : -ENOMEM;
}

int client_purge_snapshots(struct client *c, const char *vm)
{
    CLEANUP_FREE char *path = api_path(vm, NULL, NULL, "/snapshots");
    return path ? client_json(c, "DELETE", path, NULL, NULL, NULL) : -ENOMEM;
}

int client_get_disk_changes(struct client *c, const char *vm, const char *snap, const char *disk,
                            const char *change_id, uint64_t start_offset, bool zeroed_in_changed,
                            json_t **out)
{
    CLEANUP_FREE char *ce = client_escape(change_id);
    if (!ce)
        return -ENOMEM;
    CLEANUP_FREE char *path =
        api_path(vm, snap, disk, "/changes?changeId=%s&startOffset=%" PRIu64 "%s", ce, start_offset,
                 zeroed_in_changed ? "" : "&zeroedInChanged=false");
    if (!path)
        return -ENOMEM;
    long status = 0;
    int r = client_json(c, "GET", path, NULL, out, &status);
    return r < 0 && status == 409 ? -ESTALE : r;
}

char *client_disk_data_path(const char *vm, const char *snap, const char *disk)
{
    return api_path(vm, snap, disk, "%s", "");
}

int client_upload_start(struct client *c, const char *vm, const char *disk, uint64_t size,
                        const char *format, char **url)
{
    *url = NULL;
    json_t *req =
        json_pack("{s:s, s:I, s:s}", "disk", disk, "size", (json_int_t)size, "format", format);
    CLEANUP_FREE char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    CLEANUP_FREE char *path = api_path(vm, NULL, NULL, "/uploads");
    if (!body || !path)
        return -ENOMEM;
    json_t *t = NULL;
    int r = client_json(c, "POST", path, body, &t, NULL);
    if (r < 0)
        return r;
    const char *u = json_string_value(json_object_get(t, "url"));
    bool have_url = u && *u; /* u points into t: decided before t is freed */
    *url = have_url ? strdup(u) : NULL;
    json_decref(t);
    if (!have_url)
        return -EPROTO; /* the server gave no transfer URL */
    return *url ? 0 : -ENOMEM;
}

int client_upload_zero(struct client *c, const char *url, uint64_t off, uint64_t len)
{
    char body[128];
    snprintf(body, sizeof(body), "{\"op\":\"zero\",\"offset\":%" PRIu64 ",\"size\":%" PRIu64 "}",
             off, len);
    return client_json(c, "PATCH", url, body, NULL, NULL);
}

int client_upload_flush(struct client *c, const char *url)
{
    return client_json(c, "PATCH", url, "{\"op\":\"flush\"}", NULL, NULL);
}

int client_upload_finalize(struct client *c, const char *url)
{
    CLEANUP_FREE char *fin = NULL;
    if (asprintf(&fin, "%s/finalize", url) < 0)
        return -ENOMEM;
    return client_json(c, "POST", fin, NULL, NULL, NULL);
}

int client_upload_cancel(struct client *c, const char *url)
{
    return client_json(c, "DELETE", url, NULL, NULL, NULL);
}
