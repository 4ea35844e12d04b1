/* The snapshot catalog: which snapshots exist, of which VM, with which disks (the providers'
 * locators); which uploads of new disks are in progress (so that a restart can remove their
 * partial files); and which login tokens were revoked at logout (so that a restart does not
 * revive them).
 *
 * SQLite in WAL mode with synchronous=FULL, so the catalog survives kill -9 and power loss at any
 * point.  A snapshot is recorded as "creating" before its files are made and "ready" after; one
 * being deleted is "deleting" until its files are gone.  catalog_recover() lists what a crash
 * left half-done so the daemon can finish the job at start.  All functions are thread-safe.
 */
#ifndef VMEXPORT_CATALOG_CATALOG_H
#define VMEXPORT_CATALOG_CATALOG_H

#include <stdbool.h>
#include <stdint.h>

#include "core/vector.h"

struct snapshot_disk {
    char *name;            /* disk ID (file name) */
    /* Where the provider keeps this snapshot disk, in its own words (provider.h): only the
     * provider interprets it.  File-disk providers' locators are the snapshot files' paths,
     * as earlier versions stored them (column "path"). */
    char *locator;
    char *parent_path;     /* the VM's disk it was taken from */
    char *repo_mountpoint;
    char *change_id;       /* "<snapshot id>/<n>": VMware-style change ID of this disk state */
    char *mode;            /* how the provider took it ("reflink", "copy" ...), shown */
    uint64_t size;
};
DEFINE_VECTOR_TYPE(snapshot_disk_list, struct snapshot_disk);

struct snapshot {
    char *id;
    char *vm_id;
    char *provider;
    char *created_at; /* RFC 3339, UTC */
    char *parent_id;  /* previous snapshot of the VM, or NULL */
    char *status;     /* "creating", "ready", "checkpoint" (data released, changes since it
                       * still known), "deleting" */
    char *label;      /* the client's label given at creation, or NULL */
    char *chain;      /* the changed-block-tracking chain it belongs to (NULL: older catalogs,
                       * meaning the default chain) */
    bool frozen;      /* the guest's filesystems were frozen while it was taken */
    uint64_t frozen_us;
    int64_t seq;      /* creation order across the catalog */
    snapshot_disk_list disks;
};
DEFINE_VECTOR_TYPE(snapshot_list, struct snapshot *);

void snapshot_free(struct snapshot *s);
void snapshot_list_free(snapshot_list *l);

/* catalog_snapshot_list status that matches "ready" and "checkpoint" snapshots. */
#define SNAPSHOT_STATUS_LISTED "listed"

struct catalog;

/* Open (creating when missing) the catalog; err gets "file: cause" on failure. */
int catalog_open(struct catalog **out, const char *db_file, char *err, size_t errlen);
void catalog_close(struct catalog *c);

/* Record a new snapshot (status taken from s, normally "creating") with its disks.  Sets s->seq
 * and s->parent_id (the newest ready snapshot of the same VM) when NULL. */
int catalog_snapshot_add(struct catalog *c, struct snapshot *s);
/* Store the disks' sizes and modes and the status of s, in one transaction. */
int catalog_snapshot_finish(struct catalog *c, const struct snapshot *s);
int catalog_snapshot_set_status(struct catalog *c, const char *id, const char *status);
/* Remove the snapshot and its disks from the catalog. */
int catalog_snapshot_remove(struct catalog *c, const char *id);

/* -ENOENT when missing.  get() requires the VM to match; find() does not. */
int catalog_snapshot_get(struct catalog *c, const char *vm_id, const char *id,
                         struct snapshot **out);
int catalog_snapshot_find(struct catalog *c, const char *id, struct snapshot **out);
/* The snapshot whose disk has this change ID, and that disk's name. */
int catalog_snapshot_by_change_id(struct catalog *c, const char *change_id, struct snapshot **out,
                                  char **disk_name);

/* Snapshots of a VM (vm_id NULL: all), oldest first; status NULL: any. */
int catalog_snapshot_list(struct catalog *c, const char *vm_id, const char *status,
                          snapshot_list *out);

/* Snapshots left "creating" or "deleting" by a crash. */
int catalog_recover(struct catalog *c, snapshot_list *out);

/* Number of snapshots by status, for metrics. */
int catalog_count(struct catalog *c, const char *status, int64_t *n);

/* ---- uploads of new disks in progress ----
 *
 * A row exists while an upload's partial file may exist: added before the file is created,
 * removed after it was renamed into place or deleted.  The rows found at start are uploads a
 * crash or stop interrupted; the daemon deletes their partial files. */
struct upload_record {
    char *id;
    char *vm_id;
    char *disk;
    char *partial_path; /* the provider's locators (disk_writer): partial disk, final disk */
    char *final_path;
    uint64_t size;
    char *created_at; /* RFC 3339, UTC */
};
DEFINE_VECTOR_TYPE(upload_record_list, struct upload_record);

void upload_record_clear(struct upload_record *u); /* frees the strings */
void upload_record_list_free(upload_record_list *l);

int catalog_upload_add(struct catalog *c, const struct upload_record *u);
/* -ENOENT when there is no such row. */
int catalog_upload_remove(struct catalog *c, const char *id);
/* Every recorded upload, oldest first. */
int catalog_upload_list(struct catalog *c, upload_record_list *out);

/* ---- login tokens revoked at logout ----
 *
 * A row per revoked token (id: a digest of the token, never the token) until it expires. */
/* Records a revoked token (exp: when it expires, Unix time) and drops the rows expired by now. */
int catalog_token_revoke(struct catalog *c, const char *id, int64_t exp, int64_t now);
/* Removes the rows that expired by now, then calls fn for every other one; stops at the first
 * negative return of fn and returns it. */
int catalog_token_revoked_list(struct catalog *c, int64_t now,
                               int (*fn)(void *arg, const char *id, int64_t exp), void *arg);

#endif
