/* The HTTP API server of vmexportd: state shared by the route handlers, and the entry points
 * the daemon calls.  http.c owns libmicrohttpd and routing; routes_*.c answer requests;
 * snapshot.c creates and deletes snapshots through the providers; disk_cache.c keeps snapshot
 * disks open between data requests; upload.c keeps the uploads of new disks; metrics.c counts.
 * The server reaches disk data only through the providers (provider.h). */
#ifndef VMEXPORT_SERVER_SERVER_H
#define VMEXPORT_SERVER_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "catalog/catalog.h"
#include "provider/provider.h"
#include "server/config.h"
#include "server/auth.h"
#include "server/metrics.h"

struct MHD_Connection;
struct MHD_Response;
struct uploads;
struct disk_cache;
struct job_pool;
struct deadline_watch;

struct server {
    const struct server_config *cfg;
    struct provider **providers;
    size_t n_providers;
    struct catalog *catalog;
    struct auth *auth;
    struct metrics metrics;
    struct MHD_Daemon *mhd;
    char *cert_pem, *key_pem, *ca_pem;
    atomic_uint active_requests;
    struct uploads *uploads; /* upload.c */
    /* disk_cache.h: the disks of recently read snapshots, open, so that data requests skip
     * the catalog; emptied whenever a ready snapshot stops being ready. */
    struct disk_cache *disk_cache;
    /* http.c: where routes that may block run (jobs.h): long operations (snapshots, diffs,
     * fsync) on their own pool, so that they never hold up logins and listings. */
    struct job_pool *jobs, *jobs_long;
    atomic_uint connections;     /* open connections (libmicrohttpd's notifications) */
    /* http.c: total time limits for TLS handshakes and request headers (deadline.h). */
    struct deadline_watch *deadlines;
};

/* Set up everything from the configuration (providers, catalog, auth) without changing any
 * snapshot or upload; err explains a failure. */
int server_new(const struct server_config *cfg, struct server **out, char *err, size_t errlen);
/* Finish or remove the snapshots a crash left half-done, remove the partial files of uploads
 * that a crash or stop interrupted, start the upload registry, and listen. */
int server_start(struct server *s, char *err, size_t errlen);
/* Check what server_start would refuse in the TLS set-up without listening: the priority
 * string, the certificate and key files (parsable, the key matching the certificate), the CA. */
int server_tls_check(const struct server_config *cfg, char *err, size_t errlen);
/* The number of connections libmicrohttpd accepts at most: max_connections and a margin, on
 * which requests are answered 503 rather than the connection being dropped unanswered. */
unsigned server_connection_hard_limit(const struct server_config *cfg);
/* Stop accepting; wait up to grace seconds for running requests; stop. */
void server_stop(struct server *s, unsigned grace);
void server_free(struct server *s);

/* ---- request context, shared by http.c and the routes ---- */

#define ID_MAX 255 /* longest VM, snapshot or disk ID accepted in a URL */

struct request {
    struct server *srv;
    struct MHD_Connection *conn;
    const char *method;
    char *segs[8]; /* URL path segments after /api/v1 */
    int nsegs;
    int route;     /* index into the route table, for metrics */
    unsigned status;
    char *user;
    enum auth_role role; /* of user, from the users file (or pam_role) */
    bool denied;         /* user's role may not use the route: 403 */
    char *body;
    size_t body_len;
    bool body_too_large;
    bool imageio;   /* path under /images/: the transfer ID in it is the credential */
    bool path_ok;   /* the URL was split into segs (done when the headers arrive) */
    bool streaming; /* the route takes its body through body_write, without a size limit */
    /* While the body of a streaming route arrives, libmicrohttpd takes no response: a reply
     * is kept here (the rest of the body is then discarded) and sent when the body ends. */
    bool defer_replies;
    struct MHD_Response *deferred;
    /* Streaming routes: set by the route's begin hook; gets the body piece by piece. */
    void (*body_write)(struct request *rq, const char *data, size_t len);
    /* Called once when the request ends, however it ends, to release what ctx holds. */
    void (*release)(struct request *rq);
    void *ctx;
    /* Slow routes run on the job pool while the connection is suspended (http.c). */
    int (*job_handler)(struct request *rq);
    int job_state;      /* http.c: JOB_NONE, JOB_QUEUED; the answer is in deferred */
    bool answered_busy; /* 503 at the headers (too many connections); the rest is ignored */
    /* Access log (with -v): the path with secrets cut, when the headers arrived, body size. */
    char *log_path;
    int64_t start_us;
    uint64_t resp_bytes; /* REQUEST_BYTES_UNKNOWN unless the route said */
};

#define REQUEST_BYTES_UNKNOWN UINT64_MAX

/* Queue a response; take ownership of resp.  Returns the MHD result. */
int reply(struct request *rq, unsigned status, struct MHD_Response *resp);
/* The same, with the size of the body for the access log. */
int reply_sized(struct request *rq, unsigned status, struct MHD_Response *resp, uint64_t bytes);
/* JSON body from a jansson value (stolen). */
int reply_json(struct request *rq, unsigned status, void *json);
/* JSON body from a finished temporary file (taken). */
int reply_json_file(struct request *rq, unsigned status, FILE *f);
/* An anonymous temporary file as tmpfile() makes, but close-on-exec like every descriptor of the
 * daemon (hooks must not inherit one).  NULL with errno set. */
FILE *server_tmpfile(void);
/* {"error": error, "details": printf(...)} */
int reply_error(struct request *rq, unsigned status, const char *error, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Map a negative errno of an operation to a status and error reply. */
int reply_errno(struct request *rq, int r, const char *what);

const char *request_arg(struct request *rq, const char *name);
/* A boolean query argument, as the 004 exporter's Go strconv.ParseBool read it (1 t T TRUE true
 * True, 0 f F FALSE false False); absent or empty: dflt.  0 with *out set, or -EINVAL. */
int request_arg_bool(struct request *rq, const char *name, bool dflt, bool *out);
/* 400 naming a boolean query argument that request_arg_bool refused. */
int reply_bad_bool(struct request *rq, const char *name);
const char *request_header(struct request *rq, const char *name);

/* Route handlers (routes_vms.c, routes_data.c). */
int route_login(struct request *rq);
int route_logout(struct request *rq);
int route_vms_list(struct request *rq);
int route_vm_get(struct request *rq);
int route_snapshots_list(struct request *rq);
int route_snapshot_create(struct request *rq);
int route_snapshots_purge(struct request *rq);
int route_snapshot_get(struct request *rq);
int route_snapshot_delete(struct request *rq);
int route_vm_definition(struct request *rq);
int route_orphans_list(struct request *rq);
int route_disk_data(struct request *rq);
int route_disk_changes(struct request *rq);
int route_healthz(struct request *rq);
int route_metrics(struct request *rq);
/* routes_upload.c: uploads of new disks and downloads of snapshot disks, under
 * /api/v1/transfers/{id} and /images/{id}. */
int route_upload_create(struct request *rq);
int route_download_create(struct request *rq);
int route_transfer_get(struct request *rq);       /* GET and HEAD of a download's data */
int route_transfer_put_begin(struct request *rq); /* when the headers arrive */
int route_transfer_put(struct request *rq);       /* when the body has arrived */
int route_transfer_patch(struct request *rq);
int route_transfer_options(struct request *rq);
int route_transfer_extents(struct request *rq);
int route_transfer_finalize(struct request *rq);
int route_transfer_cancel(struct request *rq);

/* ---- helpers for routes ---- */

/* Find a VM among the providers: 0 and *vm (free with vm_free), -ENOENT. */
int server_vm_get(struct server *s, const char *vm_id, struct vm **vm, struct provider **p);
struct provider *server_provider(struct server *s, const char *name);

/* hook.c: run the hook cmd (words, NULL-terminated; NULL: none) with vm_id appended, what
 * ("freeze" or "thaw") in $VMEXPORT_HOOK, killed after timeout_s.  0; -ETIMEDOUT; -ECANCELED
 * when it failed (logged); or the errno of what could not be set up. */
int hook_run(char *const *cmd, const char *vm_id, const char *what, unsigned timeout_s);

/* snapshot.c */
/* What a client asks of a new snapshot. */
struct snapshot_request {
    const char *label;        /* the client's, kept with it (NULL: none) */
    const char *chain;        /* changed-block-tracking chain (NULL: PROVIDER_CHAIN_DEFAULT) */
    const char *const *disks; /* only these disks, by name (NULL-terminated; NULL: every
                               * compatible disk) */
};
/* Snapshot the compatible disks of vm that rq asks for.  -ENOENT (err says which) when rq
 * names a disk the VM does not have or cannot snapshot. */
int snapshot_create(struct server *s, struct provider *p, const struct vm *vm,
                    const struct snapshot_request *rq, struct snapshot **out, char *err,
                    size_t errlen);
/* A snapshot label: 1 to SNAPSHOT_LABEL_MAX bytes of [A-Za-z0-9._:@+=/-]. */
#define SNAPSHOT_LABEL_MAX 128
bool snapshot_label_valid(const char *label);
int snapshot_delete(struct server *s, struct snapshot *snap);
/* End the data of snap but keep its checkpoint (provider snapshot_release): status
 * "checkpoint".  Providers without checkpoints keep the snapshot whole ("ready"). */
int snapshot_release(struct server *s, struct snapshot *snap);
int snapshot_recover(struct server *s);

#endif
