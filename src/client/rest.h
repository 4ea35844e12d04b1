/* Typed calls of the vmexportd REST API (docs/api.md): the one place that builds its paths and
 * query strings.  Each call escapes the IDs it is given, sends one request through
 * client_json() and returns what that returns: 0 with the parsed answer in *out (when out is
 * not NULL; the caller json_decref()s it), or a negative errno (-ENOENT for 404 ...) with the
 * server's details in client_error(). */
#ifndef VMEXPORT_CLIENT_REST_H
#define VMEXPORT_CLIENT_REST_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "client/client.h"

/* The API's root path. */
#define CLIENT_API_ROOT "/api/v1"

/* GET /vms: the array of VMs. */
int client_list_vms(struct client *c, json_t **out);

/* GET /vms/{vm}: one VM with its disks. */
int client_get_vm(struct client *c, const char *vm, json_t **out);

/* GET /vms/{vm}/snapshots: the VM's ready snapshots, oldest first; chunks false leaves the
 * extent lists out (quick for VMs with many snapshots). */
int client_list_snapshots(struct client *c, const char *vm, bool chunks, json_t **out);

/* POST /vms/{vm}/snapshots: take a snapshot of all the VM's disks.  label NULL: none; chunks
 * false: the answer leaves the extent lists out. */
int client_create_snapshot(struct client *c, const char *vm, const char *label, bool chunks,
                           json_t **out);

/* What a new snapshot is asked for beyond its VM (the POST's JSON body); NULL members are left
 * out, so the server's defaults apply. */
struct client_snapshot_request {
    const char *label;
    const char *chain;        /* the changed-block-tracking chain (provider_chain_valid) */
    const char *const *disks; /* only these disks (ndisks of them); NULL: every disk */
    size_t ndisks;
};

/* POST /vms/{vm}/snapshots with a request body.  -EINVAL (400) names a disk the VM does not
 * have or cannot snapshot, or a chain the server refuses. */
int client_take_snapshot(struct client *c, const char *vm, const struct client_snapshot_request *rq,
                         bool chunks, json_t **out);

/* DELETE /vms/{vm}/snapshots/{snap}?keepCheckpoint=true: release the snapshot's data (a live
 * VM's export and scratch image) but keep its checkpoint as the base of later changes.
 * -ENOENT when it is gone. */
int client_release_snapshot(struct client *c, const char *vm, const char *snap);

/* GET /vms/{vm}/definition: {"format": ..., "definition": ...}; -ENOENT when the provider keeps
 * no definition (or the VM is unknown). */
int client_get_vm_definition(struct client *c, const char *vm, json_t **out);

/* What GET /vms/{vm}/snapshots/{snap} lists; CLIENT_SNAPSHOT_QUERY_DEFAULT is the server's
 * default (what a 004 client gets). */
struct client_snapshot_query {
    const char *compare_to; /* NULL: each disk's data extents; else the changes since this
                             * older snapshot ("chunks" and "zeroed", "diff_mode") */
    bool chunks;            /* list extents at all */
    bool squash;            /* merge touching extents */
    bool zeroed_in_chunks;  /* with compare_to, "chunks" also covers the "zeroed" ranges;
                             * false: "chunks" are the changed data only */
};
#define CLIENT_SNAPSHOT_QUERY_DEFAULT                                                              \
    ((struct client_snapshot_query){.chunks = true, .squash = true, .zeroed_in_chunks = true})

/* GET /vms/{vm}/snapshots/{snap}.  q NULL: the default query. */
int client_get_snapshot(struct client *c, const char *vm, const char *snap,
                        const struct client_snapshot_query *q, json_t **out);

/* DELETE /vms/{vm}/snapshots/{snap}: -ENOENT when it is gone already. */
int client_delete_snapshot(struct client *c, const char *vm, const char *snap);

/* DELETE /vms/{vm}/snapshots: every snapshot of the VM. */
int client_purge_snapshots(struct client *c, const char *vm);

/* GET /vms/{vm}/snapshots/{snap}/disks/{disk}/changes (the VMware-style areas, one page from
 * start_offset).  change_id: "*" or the change ID of the disk in an older snapshot (-EINVAL
 * when the server knows no such older snapshot of the disk; -ESTALE when it answers 409: it can
 * no longer tell the changes since, e.g. a live VM's checkpoint was lost or belongs to another
 * chain, and client_error() says why).  zeroed_in_changed: the server's
 * default, "changedArea" also covers the "zeroedArea" ranges; false: only the changed data. */
int client_get_disk_changes(struct client *c, const char *vm, const char *snap, const char *disk,
                            const char *change_id, uint64_t start_offset, bool zeroed_in_changed,
                            json_t **out);

/* The path of a snapshot disk's data (GET/HEAD with Range), for client_read_range(): built
 * once per disk, used for every read.  malloc'd; NULL when out of memory. */
char *client_disk_data_path(const char *vm, const char *snap, const char *disk);

/* POST /vms/{vm}/uploads: start an upload transfer of a disk of size bytes in format ("raw").
 * *url: the transfer's path, malloc'd; its data goes with client_put_range(). */
int client_upload_start(struct client *c, const char *vm, const char *disk, uint64_t size,
                        const char *format, char **url);
/* PATCH {url} {"op":"zero"}: the range [off, off + len) of the transfer reads as zeros. */
int client_upload_zero(struct client *c, const char *url, uint64_t off, uint64_t len);
/* PATCH {url} {"op":"flush"}: what was written is durable. */
int client_upload_flush(struct client *c, const char *url);
/* POST {url}/finalize: the disk is complete; the server puts it in place. */
int client_upload_finalize(struct client *c, const char *url);
/* DELETE {url}: cancel the transfer; nothing half-written stays. */
int client_upload_cancel(struct client *c, const char *url);

#endif
