/* Remote commands, talking to vmexportd over its REST API: vms, snapshots, snapshot
 * create|delete|purge, and download (a snapshot's disks into sparse local files, in full or as
 * the changes since an earlier snapshot, over parallel connections). */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "client/client.h"
#include "core/cleanup.h"
#include "fs/fsinfo.h"
#include "fs/zero.h"
#include "core/sparse.h"
#include "core/vector.h"

#define API "/api/v1"

/* Largest ranged GET of a download; bigger chunks are split. */
#define DOWNLOAD_PIECE_SIZE   (8u << 20)
#define DOWNLOAD_JOBS_DEFAULT 4
/* Length of an error message of a download. */
#define DOWNLOAD_ERROR_MAX 1024
/* "2026-11-23T09:10:49" of an RFC 3339 time: the CREATED column. */
#define CREATED_SECONDS_LEN 19
#define NS_PER_S            1e9

DEFINE_VECTOR_TYPE(str_vector, char *);

/* ---- shared helpers ---- */

static int finish_stdout(void)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "vmexport: writing output: %s\n", strerror(errno ? errno : EIO));
        return EXIT_FAIL;
    }
    return EXIT_OK;
}

static int print_json(const json_t *j)
{
    if (json_dumpf(j, stdout, JSON_COMPACT) < 0)
        return EXIT_FAIL;
    putchar('\n');
    return finish_stdout();
}

/* Report a failed request of command cmd and free the client. */
static int remote_fail(const char *cmd, struct client *c)
{
    fprintf(stderr, "vmexport %s: %s\n", cmd, client_error(c));
    client_free(c);
    return EXIT_FAIL;
}

/* API path "/api/v1/vms/VM" + "/snapshots/SNAP" (snap not NULL) + tail, IDs escaped. */
static char *vm_path(const char *vm, const char *snap, const char *tail)
{
    CLEANUP_FREE char *v = client_escape(vm);
    CLEANUP_FREE char *s = snap ? client_escape(snap) : NULL;
    char *p = NULL;
    if (!v || (snap && !s))
        return NULL;
    if (asprintf(&p, API "/vms/%s%s%s%s", v, snap ? "/snapshots/" : "", snap ? s : "", tail) < 0)
        return NULL;
    return p;
}

static uint64_t json_u64(const json_t *obj, const char *key)
{
    json_int_t v = json_integer_value(json_object_get(obj, key));
    return v > 0 ? (uint64_t)v : 0;
}

/* Sum of the integer member key of the objects in array. */
static uint64_t json_sum(const json_t *array, const char *key)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < json_array_size(array); i++)
        sum += json_u64(json_array_get(array, i), key);
    return sum;
}

/* A text table: cells row by row, columns padded to their widest cell. */
struct table {
    const char *const *headers;
    const bool *right; /* right-aligned columns (numbers) */
    size_t ncols;
    str_vector cells;
};

static int table_add(struct table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int table_add(struct table *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *cell = NULL;
    int n = vasprintf(&cell, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -ENOMEM;
    int r = str_vector_append(&t->cells, cell);
    if (r < 0)
        free(cell);
    return r;
}

static void table_print(struct table *t)
{
    size_t width[t->ncols];
    for (size_t c = 0; c < t->ncols; c++)
        width[c] = strlen(t->headers[c]);
    for (size_t i = 0; i < t->cells.len; i++) {
        size_t len = strlen(t->cells.ptr[i]);
        if (len > width[i % t->ncols])
            width[i % t->ncols] = len;
    }
    for (size_t i = 0; i < t->ncols + t->cells.len; i++) {
        size_t c = i % t->ncols;
        const char *s = i < t->ncols ? t->headers[c] : t->cells.ptr[i - t->ncols];
        bool last = c + 1 == t->ncols;
        if (t->right[c])
            printf("%*s%s", (int)width[c], s, last ? "\n" : "  ");
        else if (last)
            printf("%s\n", s);
        else
            printf("%-*s  ", (int)width[c], s);
    }
}

static void table_free(struct table *t)
{
    for (size_t i = 0; i < t->cells.len; i++)
        free(t->cells.ptr[i]);
    str_vector_reset(&t->cells);
}

/* ---- vms ---- */

static int vms_run(int argc, char **argv)
{
    struct cli_args a = {0};
    if (cli_parse(&a, &cmd_vms, argc, argv) == CLI_EXIT)
        return a.status;
    bool json = a.json;
    int first = a.first, r;
    if (argc != first)
        return cli_usage_error(&cmd_vms, "unexpected argument '%s'", argv[first]);

    struct client *c = cli_client_connect("vms");
    if (!c)
        return EXIT_FAIL;
    json_t *vms;
    if (client_json(c, "GET", API "/vms", NULL, &vms, NULL) < 0)
        return remote_fail("vms", c);
    client_free(c);
    if (!json_is_array(vms)) {
        fprintf(stderr, "vmexport vms: the server's answer is not a list of VMs\n");
        json_decref(vms);
        return EXIT_FAIL;
    }
    if (json) {
        r = print_json(vms);
        json_decref(vms);
        return r;
    }

    static const char *const headers[] = {"NAME", "PROVIDER",  "DISKS",
                                          "SIZE", "SNAPSHOTS", "COMPATIBLE"};
    static const bool right[] = {false, false, true, true, true, false};
    struct table t = {
        .headers = headers, .right = right, .ncols = ARRAY_SIZE(headers), .cells = VECTOR_INIT};
    r = 0;
    for (size_t i = 0; i < json_array_size(vms); i++) {
        const json_t *vm = json_array_get(vms, i);
        const json_t *disks = json_object_get(vm, "disks");
        uint64_t size = json_sum(disks, "size");
        const char *name = json_string_value(json_object_get(vm, "name"));
        const char *provider = json_string_value(json_object_get(vm, "provider"));
        char b[32];
        if (r == 0)
            r = table_add(&t, "%s", name ? name : "?");
        if (r == 0)
            r = table_add(&t, "%s", provider ? provider : "-");
        if (r == 0)
            r = table_add(&t, "%zu", json_array_size(disks));
        if (r == 0)
            r = table_add(&t, "%s", cli_bytes(size, b, sizeof(b)));
        if (r == 0)
            r = table_add(&t, "%zu", json_array_size(json_object_get(vm, "snapshots")));
        if (r == 0)
            r = table_add(&t, "%s",
                          json_is_true(json_object_get(vm, "snapshot_compatible")) ? "yes" : "no");
    }
    json_decref(vms);
    if (r < 0) {
        table_free(&t);
        fprintf(stderr, "vmexport vms: %s\n", strerror(-r));
        return EXIT_FAIL;
    }
    table_print(&t);
    table_free(&t);
    return finish_stdout();
}

const struct cli_command cmd_vms = {
    .name = "vms",
    .summary = "list the VMs a vmexportd server exports",
    .run = vms_run,
    .usage = "Usage: vmexport vms [--json]\n"
             "\n"
             "List the VMs of every provider of the server: name, provider, number of disks,\n"
             "their total size, number of snapshots, and whether the VM can be snapshotted\n"
             "(every writable disk is a file in a known repository).\n"
             "\n",
    .common = CLI_JSON | CLI_CONNECTION,
    .json_short = 'j',
    .json_help = "print the server's JSON (GET /api/v1/vms) instead of a table",
    .epilog = "Exit status: 0 success, 1 failure (server unreachable, login refused ...),\n"
              "2 bad usage.\n",
};

/* ---- snapshots ---- */

static int snapshots_run(int argc, char **argv)
{
    struct cli_args a = {0};
    if (cli_parse(&a, &cmd_snapshots, argc, argv) == CLI_EXIT)
        return a.status;
    bool json = a.json;
    int first = a.first;
    if (argc - first != 1)
        return cli_usage_error(&cmd_snapshots, "expected one VM");
    const char *vm = argv[first];
    int r;

    CLEANUP_FREE char *path = vm_path(vm, NULL, "/snapshots?chunks=false");
    if (!path) {
        fprintf(stderr, "vmexport snapshots: out of memory\n");
        return EXIT_FAIL;
    }
    struct client *c = cli_client_connect("snapshots");
    if (!c)
        return EXIT_FAIL;
    json_t *snaps;
    if (client_json(c, "GET", path, NULL, &snaps, NULL) < 0)
        return remote_fail("snapshots", c);
    client_free(c);
    if (!json_is_array(snaps)) {
        fprintf(stderr, "vmexport snapshots: the server's answer is not a list of snapshots\n");
        json_decref(snaps);
        return EXIT_FAIL;
    }
    if (json) {
        r = print_json(snaps);
        json_decref(snaps);
        return r;
    }

    static const char *const headers[] = {"ID", "CREATED", "DISKS", "SIZE"};
    static const bool right[] = {false, false, true, true};
    struct table t = {
        .headers = headers, .right = right, .ncols = ARRAY_SIZE(headers), .cells = VECTOR_INIT};
    r = 0;
    for (size_t i = 0; i < json_array_size(snaps); i++) {
        const json_t *s = json_array_get(snaps, i);
        const json_t *disks = json_object_get(s, "disks");
        uint64_t size = json_sum(disks, "size");
        const char *id = json_string_value(json_object_get(s, "id"));
        const char *created = json_string_value(json_object_get(s, "created_at"));
        char b[32];
        if (r == 0)
            r = table_add(&t, "%s", id ? id : "?");
        if (r == 0 && created && strlen(created) > CREATED_SECONDS_LEN)
            r = table_add(&t, "%.*sZ", CREATED_SECONDS_LEN, created);
        else if (r == 0)
            r = table_add(&t, "%s", created ? created : "-");
        if (r == 0)
            r = table_add(&t, "%zu", json_array_size(disks));
        if (r == 0)
            r = table_add(&t, "%s", cli_bytes(size, b, sizeof(b)));
    }
    json_decref(snaps);
    if (r < 0) {
        table_free(&t);
        fprintf(stderr, "vmexport snapshots: %s\n", strerror(-r));
        return EXIT_FAIL;
    }
    table_print(&t);
    table_free(&t);
    return finish_stdout();
}

const struct cli_command cmd_snapshots = {
    .name = "snapshots",
    .summary = "list the snapshots of a VM on a vmexportd server",
    .run = snapshots_run,
    .usage = "Usage: vmexport snapshots [--json] VM\n"
             "\n"
             "List the ready snapshots of VM, oldest first: ID, creation time (UTC), number of\n"
             "disks and their total size.  Snapshots of a VM that no longer exists (orphans)\n"
             "are listed too.  The extent lists are not asked for, so this stays quick for VMs\n"
             "with many snapshots.\n"
             "\n",
    .common = CLI_JSON | CLI_CONNECTION,
    .json_short = 'j',
    .json_help = "print the server's JSON\n(GET /api/v1/vms/VM/snapshots?chunks=false)",
    .epilog = "Exit status: 0 success, 1 failure (unknown VM, server unreachable ...),\n"
              "2 bad usage.\n",
};

/* ---- snapshot create | delete | purge ---- */

static int snapshot_create(const char *vm, bool json)
{
    CLEANUP_FREE char *path = vm_path(vm, NULL, "/snapshots");
    if (!path) {
        fprintf(stderr, "vmexport snapshot: out of memory\n");
        return EXIT_FAIL;
    }
    struct client *c = cli_client_connect("snapshot");
    if (!c)
        return EXIT_FAIL;
    json_t *snap;
    if (client_json(c, "POST", path, NULL, &snap, NULL) < 0)
        return remote_fail("snapshot", c);
    client_free(c);
    int r;
    if (json) {
        r = print_json(snap);
    } else {
        const json_t *disks = json_object_get(snap, "disks");
        uint64_t size = json_sum(disks, "size"), data = 0;
        for (size_t i = 0; i < json_array_size(disks); i++)
            data += json_sum(json_object_get(json_array_get(disks, i), "chunks"), "length");
        const char *id = json_string_value(json_object_get(snap, "id"));
        char b1[32], b2[32];
        printf("created snapshot %s of %s: %zu disks, %s, %s of data\n", id ? id : "?", vm,
               json_array_size(disks), cli_bytes(size, b1, sizeof(b1)),
               cli_bytes(data, b2, sizeof(b2)));
        r = finish_stdout();
    }
    json_decref(snap);
    return r;
}

/* DELETE of one snapshot (snap) or of all of the VM's (snap NULL). */
static int snapshot_delete(const char *vm, const char *snap)
{
    CLEANUP_FREE char *path = snap ? vm_path(vm, snap, "") : vm_path(vm, NULL, "/snapshots");
    if (!path) {
        fprintf(stderr, "vmexport snapshot: out of memory\n");
        return EXIT_FAIL;
    }
    struct client *c = cli_client_connect("snapshot");
    if (!c)
        return EXIT_FAIL;
    json_t *answer;
    if (client_json(c, "DELETE", path, NULL, &answer, NULL) < 0)
        return remote_fail("snapshot", c);
    client_free(c);
    json_decref(answer);
    if (snap)
        printf("deleted snapshot %s of %s\n", snap, vm);
    else
        printf("deleted every snapshot of %s\n", vm);
    return finish_stdout();
}

static int snapshot_run(int argc, char **argv)
{
    struct cli_args a = {0};
    if (cli_parse(&a, &cmd_snapshot, argc, argv) == CLI_EXIT)
        return a.status;
    bool json = a.json;
    int first = a.first;
    int n = argc - first;
    if (n < 1)
        return cli_usage_error(&cmd_snapshot, "expected create, delete or purge");
    const char *sub = argv[first];
    if (!strcmp(sub, "create")) {
        if (n != 2)
            return cli_usage_error(&cmd_snapshot, "snapshot create: expected one VM");
        return snapshot_create(argv[first + 1], json);
    }
    if (json)
        return cli_usage_error(&cmd_snapshot, "--json goes with create only");
    if (!strcmp(sub, "delete")) {
        if (n != 3)
            return cli_usage_error(&cmd_snapshot, "snapshot delete: expected VM and SNAPSHOT");
        return snapshot_delete(argv[first + 1], argv[first + 2]);
    }
    if (!strcmp(sub, "purge")) {
        if (n != 2)
            return cli_usage_error(&cmd_snapshot, "snapshot purge: expected one VM");
        return snapshot_delete(argv[first + 1], NULL);
    }
    return cli_usage_error(&cmd_snapshot, "unknown subcommand '%s' (create, delete or purge)", sub);
}

const struct cli_command cmd_snapshot = {
    .name = "snapshot",
    .summary = "create or delete snapshots on a vmexportd server",
    .run = snapshot_run,
    .usage =
        "Usage: vmexport snapshot create [--json] VM\n"
        "       vmexport snapshot delete VM SNAPSHOT\n"
        "       vmexport snapshot purge VM\n"
        "\n"
        "create  take a snapshot of every snapshot-compatible disk of VM (reflink clones where\n"
        "        the filesystem can, sparse copies elsewhere; all disks or none) and print its\n"
        "        ID, its disks and how much data they hold.\n"
        "delete  delete one snapshot (its files and catalog record).\n"
        "purge   delete every snapshot of VM, also when the VM no longer exists.\n"
        "\n"
        "Keep the last snapshot you downloaded: 'vmexport download --diff-from' needs it.\n"
        "\n",
    .common = CLI_JSON | CLI_CONNECTION,
    .json_short = 'j',
    .json_help = "create: print the new snapshot's JSON (with its chunks)",
    .epilog = "Exit status: 0 success, 1 failure (unknown VM or snapshot, VM not snapshot\n"
              "compatible, server unreachable ...), 2 bad usage.\n",
};

/* ---- download ---- */

struct dl_disk {
    const char *name; /* in the snapshot JSON */
    uint64_t size;
    const json_t *chunks, *zeroed;
    bool in_base; /* a compareTo answer compared it with the base ("diff_mode") */
    bool fresh;   /* created empty here (full download, or a disk new since the base) */
    int fd;
    char *url;
    uint64_t chunk_bytes, zeroed_bytes;
};

struct piece {
    size_t disk;
    uint64_t off, len;
};
DEFINE_VECTOR_TYPE(piece_vector, struct piece);

struct download {
    const char *out_dir;
    struct dl_disk *disks;
    size_t ndisks;
    piece_vector pieces;
    atomic_size_t next;
    atomic_bool stop;
    pthread_mutex_t lock; /* error */
    char error[DOWNLOAD_ERROR_MAX];
};

struct worker {
    struct download *dl;
    struct client *c;
    pthread_t thread;
    bool started;
    int wb_fd; /* the worker's last piece, whose writeback is started (wb_len > 0) */
    uint64_t wb_off, wb_len;
};

static void dl_fail(struct download *dl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void dl_fail(struct download *dl, const char *fmt, ...)
{
    pthread_mutex_lock(&dl->lock);
    if (!dl->error[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(dl->error, sizeof(dl->error), fmt, ap);
        va_end(ap);
    }
    atomic_store(&dl->stop, true);
    pthread_mutex_unlock(&dl->lock);
}

/* Zeros between runs of data shorter than this are written over old data rather than punched
 * out: a hole punch per small gap would cost more than the write (downloads with a base). */
#define PUNCH_MIN ((size_t)64 << 10)

/* Write a fetched piece: its runs of data (4 KiB blocks, core/sparse.h).  The blocks of zeros
 * between them stay holes in a new file; over old data (a download with a base) they are
 * punched out, or written when shorter than PUNCH_MIN. */
static int write_piece(const struct dl_disk *d, const uint8_t *buf, size_t len, uint64_t off)
{
    size_t pos = 0, run, ws = 0, we = 0; /* [ws, we): data not written yet */
    int r = 0;
    for (;;) {
        bool more = sparse_next_run(buf, len, off, &pos, &run);
        size_t gap = pos - we; /* zeros since the data not written yet */
        if (more && we > ws && !d->fresh && gap < PUNCH_MIN) {
            we = pos + run; /* write the short gap with the data around it */
        } else {
            if (we > ws && (r = fs_pwrite_all(d->fd, buf + ws, we - ws, off + ws)) < 0)
                return r;
            if (!d->fresh && gap && (r = fs_zero_range(d->fd, off + we, gap)) < 0)
                return r;
            ws = pos;
            we = pos + run;
        }
        if (!more)
            return 0;
        pos += run;
    }
}

static void *worker_main(void *opaque)
{
    struct worker *w = opaque;
    struct download *dl = w->dl;
    CLEANUP_FREE uint8_t *buf = malloc(DOWNLOAD_PIECE_SIZE);
    if (!buf) {
        dl_fail(dl, "out of memory for a %u-byte buffer", DOWNLOAD_PIECE_SIZE);
        return NULL;
    }
    while (!atomic_load(&dl->stop)) {
        size_t i = atomic_fetch_add(&dl->next, 1);
        if (i >= dl->pieces.len)
            break;
        const struct piece *p = &dl->pieces.ptr[i];
        struct dl_disk *d = &dl->disks[p->disk];
        size_t got;
        int r = client_read_range(w->c, d->url, p->off, p->len, buf, &got);
        if (r < 0) {
            dl_fail(dl, "disk %s: %s", d->name, client_error(w->c));
            break;
        }
        if (got != p->len) {
            dl_fail(dl,
                    "disk %s: the server sent %zu bytes at offset %llu, the snapshot lists "
                    "%llu",
                    d->name, got, (unsigned long long)p->off, (unsigned long long)p->len);
            break;
        }
        r = write_piece(d, buf, got, p->off);
        /* Writeback behind the download: the worker's previous piece leaves the page cache
         * once on the disk, so a big disk does not flood it (the files are fsynced and
         * dropped at the end). */
        if (r == 0 && w->wb_len)
            r = fs_writeback_behind(w->wb_fd, w->wb_off, w->wb_len, 0, 0);
        if (r == 0)
            r = fs_writeback_behind(d->fd, 0, 0, p->off, got);
        if (r < 0) {
            dl_fail(dl, "%s/%s: writing %llu bytes at offset %llu: %s", dl->out_dir, d->name,
                    (unsigned long long)p->len, (unsigned long long)p->off, strerror(-r));
            break;
        }
        w->wb_fd = d->fd;
        w->wb_off = p->off;
        w->wb_len = got;
    }
    return NULL;
}

/* Fetch every piece over up to jobs connections (c and copies of it); bytes received added to
 * *fetched, and their body bytes on the wire to *transferred.  Returns 0 or -1 with dl->error
 * set. */
static int dl_fetch(struct download *dl, struct client *c, unsigned jobs, uint64_t *fetched,
                    uint64_t *transferred)
{
    if (dl->pieces.len == 0)
        return 0;
    if (jobs > dl->pieces.len)
        jobs = (unsigned)dl->pieces.len;
    struct worker *w = calloc(jobs, sizeof(*w));
    if (!w) {
        dl_fail(dl, "out of memory");
        return -1;
    }
    for (unsigned i = 0; i < jobs; i++) {
        w[i].dl = dl;
        int r = i == 0 ? (w[i].c = c, 0) : client_dup(c, &w[i].c);
        if (r < 0) {
            dl_fail(dl, "another connection: %s", strerror(-r));
            break;
        }
        r = pthread_create(&w[i].thread, NULL, worker_main, &w[i]);
        if (r != 0) {
            dl_fail(dl, "starting a download thread: %s", strerror(r));
            break;
        }
        w[i].started = true;
    }
    for (unsigned i = 0; i < jobs; i++) {
        if (w[i].started)
            pthread_join(w[i].thread, NULL);
        if (w[i].c) {
            *fetched += client_bytes_received(w[i].c);
            *transferred += client_bytes_on_wire(w[i].c);
        }
        if (i > 0)
            client_free(w[i].c);
    }
    free(w);
    return dl->error[0] ? -1 : 0;
}

static bool disk_name_ok(const char *name)
{
    return name && name[0] && name[0] != '.' && !strchr(name, '/');
}

/* Check the answer's disks and fill dl->disks. */
static int dl_read_disks(struct download *dl, const json_t *snap)
{
    const json_t *disks = json_object_get(snap, "disks");
    if (!json_is_array(disks)) {
        dl_fail(dl, "the server's snapshot has no disk list");
        return -1;
    }
    dl->ndisks = json_array_size(disks);
    dl->disks = calloc(dl->ndisks ? dl->ndisks : 1, sizeof(*dl->disks));
    if (!dl->disks) {
        dl_fail(dl, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < dl->ndisks; i++)
        dl->disks[i].fd = -1;
    for (size_t i = 0; i < dl->ndisks; i++) {
        const json_t *d = json_array_get(disks, i);
        struct dl_disk *dd = &dl->disks[i];
        dd->name = json_string_value(json_object_get(d, "name"));
        if (!disk_name_ok(dd->name)) {
            dl_fail(dl, "refusing disk name '%s': not a plain file name",
                    dd->name ? dd->name : "(none)");
            return -1;
        }
        for (size_t k = 0; k < i; k++)
            if (!strcmp(dl->disks[k].name, dd->name)) {
                dl_fail(dl, "disk name '%s' appears twice in the snapshot", dd->name);
                return -1;
            }
        const json_t *size = json_object_get(d, "size");
        dd->chunks = json_object_get(d, "chunks");
        dd->zeroed = json_object_get(d, "zeroed");
        if (!json_is_integer(size) || json_integer_value(size) < 0 || !json_is_array(dd->chunks)) {
            dl_fail(dl, "disk %s: the server's snapshot gives no size or no chunks", dd->name);
            return -1;
        }
        dd->size = (uint64_t)json_integer_value(size);
        dd->in_base = json_object_get(d, "diff_mode") != NULL;
    }
    return 0;
}

/* Open (creating when fresh) and size every disk file; with a base, zero the zeroed ranges. */
static int dl_prepare_files(struct download *dl, int dirfd, bool diff, const char *prev)
{
    /* A diff applies to the files of the base: all must be there before anything changes. */
    for (size_t i = 0; i < dl->ndisks; i++)
        dl->disks[i].fresh = !diff || !dl->disks[i].in_base;
    for (size_t i = 0; diff && i < dl->ndisks; i++) {
        struct dl_disk *d = &dl->disks[i];
        struct stat st;
        if (!d->fresh && fstatat(dirfd, d->name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            dl_fail(dl, "%s/%s: %s (--diff-from %s needs the disks of that snapshot there)",
                    dl->out_dir, d->name, strerror(errno), prev);
            return -1;
        }
    }
    for (size_t i = 0; i < dl->ndisks; i++) {
        struct dl_disk *d = &dl->disks[i];
        int flags = O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
        if (d->fresh)
            flags |= O_CREAT | O_TRUNC;
        d->fd = openat(dirfd, d->name, flags, S_IRUSR | S_IWUSR);
        struct stat st;
        if (d->fd < 0 || fstat(d->fd, &st) < 0) {
            dl_fail(dl, "%s/%s: %s", dl->out_dir, d->name, strerror(errno));
            return -1;
        }
        if (!S_ISREG(st.st_mode)) {
            dl_fail(dl, "%s/%s: not a regular file", dl->out_dir, d->name);
            return -1;
        }
        if (ftruncate(d->fd, (off_t)d->size) < 0) {
            dl_fail(dl, "%s/%s: setting the size to %llu: %s", dl->out_dir, d->name,
                    (unsigned long long)d->size, strerror(errno));
            return -1;
        }
        for (size_t k = 0; !d->fresh && k < json_array_size(d->zeroed); k++) {
            const json_t *z = json_array_get(d->zeroed, k);
            uint64_t off = json_u64(z, "start"), len = json_u64(z, "length");
            if (off >= d->size)
                continue;
            if (len > d->size - off)
                len = d->size - off;
            int r = fs_zero_range(d->fd, off, len);
            if (r < 0) {
                dl_fail(dl, "%s/%s: zeroing %llu bytes at offset %llu: %s", dl->out_dir, d->name,
                        (unsigned long long)len, (unsigned long long)off, strerror(-r));
                return -1;
            }
            d->zeroed_bytes += len;
        }
    }
    return 0;
}

/* Cut every chunk into pieces of at most DOWNLOAD_PIECE_SIZE. */
static int dl_plan(struct download *dl, const char *vm, const char *snap)
{
    for (size_t i = 0; i < dl->ndisks; i++) {
        struct dl_disk *d = &dl->disks[i];
        CLEANUP_FREE char *disk = client_escape(d->name);
        CLEANUP_FREE char *tail = NULL;
        if (disk && asprintf(&tail, "/disks/%s", disk) < 0)
            tail = NULL;
        if (!tail || !(d->url = vm_path(vm, snap, tail))) {
            dl_fail(dl, "out of memory");
            return -1;
        }
        for (size_t k = 0; k < json_array_size(d->chunks); k++) {
            const json_t *ch = json_array_get(d->chunks, k);
            uint64_t off = json_u64(ch, "start"), len = json_u64(ch, "length");
            if (off > d->size || len > d->size - off) {
                dl_fail(dl, "disk %s: chunk [%llu, +%llu) lies outside the disk (%llu bytes)",
                        d->name, (unsigned long long)off, (unsigned long long)len,
                        (unsigned long long)d->size);
                return -1;
            }
            d->chunk_bytes += len;
            while (len > 0) {
                uint64_t n = len < DOWNLOAD_PIECE_SIZE ? len : DOWNLOAD_PIECE_SIZE;
                if (piece_vector_append(&dl->pieces, (struct piece){i, off, n}) < 0) {
                    dl_fail(dl, "out of memory");
                    return -1;
                }
                off += n;
                len -= n;
            }
        }
    }
    return 0;
}

static int dl_sync(struct download *dl, int dirfd)
{
    for (size_t i = 0; i < dl->ndisks; i++) {
        if (fsync(dl->disks[i].fd) < 0) {
            dl_fail(dl, "%s/%s: fsync: %s", dl->out_dir, dl->disks[i].name, strerror(errno));
            return -1;
        }
        posix_fadvise(dl->disks[i].fd, 0, 0, POSIX_FADV_DONTNEED); /* the last pieces, clean now */
    }
    if (fsync(dirfd) < 0) {
        dl_fail(dl, "%s: fsync: %s", dl->out_dir, strerror(errno));
        return -1;
    }
    return 0;
}

static void dl_free(struct download *dl)
{
    for (size_t i = 0; dl->disks && i < dl->ndisks; i++) {
        if (dl->disks[i].fd >= 0)
            close(dl->disks[i].fd);
        free(dl->disks[i].url);
    }
    free(dl->disks);
    piece_vector_reset(&dl->pieces);
    pthread_mutex_destroy(&dl->lock);
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / NS_PER_S;
}

static int dl_report(const struct download *dl, const char *vm, const char *snap, const char *prev,
                     uint64_t fetched, uint64_t transferred, double secs, bool json)
{
    uint64_t zeroed = 0;
    for (size_t i = 0; i < dl->ndisks; i++)
        zeroed += dl->disks[i].zeroed_bytes;
    if (json) {
        json_t *disks = json_array();
        for (size_t i = 0; disks && i < dl->ndisks; i++) {
            const struct dl_disk *d = &dl->disks[i];
            json_array_append_new(disks, json_pack("{s:s, s:I, s:b, s:I, s:I}", "name", d->name,
                                                   "size", (json_int_t)d->size, "created", d->fresh,
                                                   "chunk_bytes", (json_int_t)d->chunk_bytes,
                                                   "zeroed_bytes", (json_int_t)d->zeroed_bytes));
        }
        json_t *j =
            json_pack("{s:s, s:s, s:s?, s:s, s:o, s:I, s:I, s:I, s:f}", "vm", vm, "snapshot", snap,
                      "compared_to", prev, "out_dir", dl->out_dir, "disks", disks, "bytes_fetched",
                      (json_int_t)fetched, "bytes_transferred", (json_int_t)transferred,
                      "bytes_zeroed", (json_int_t)zeroed, "seconds", secs);
        if (!j) {
            fprintf(stderr, "vmexport download: out of memory\n");
            return EXIT_FAIL;
        }
        int r = print_json(j);
        json_decref(j);
        return r;
    }
    char b1[32], b2[32], b3[32];
    double rate = secs > 0 ? (double)fetched / secs : 0;
    printf("%s snapshot %s of %s into %s: %zu disks, %s fetched in %.2f s (%s/s)",
           prev ? "applied" : "downloaded", snap, vm, dl->out_dir, dl->ndisks,
           cli_bytes(fetched, b1, sizeof(b1)), secs, cli_bytes((uint64_t)rate, b2, sizeof(b2)));
    if (prev)
        printf(", changes since %s, %s zeroed", prev, cli_bytes(zeroed, b3, sizeof(b3)));
    printf("\n");
    return finish_stdout();
}

static const struct cli_option download_options[] = {
    {"out-dir", 'o', "DIR", "where the disk files go (required)"},
    {"diff-from", 'd', "PREV", "apply the changes since snapshot PREV to the files in DIR"},
    {NULL, 0, NULL, NULL},
};

static int download_run(int argc, char **argv)
{
    const char *out_dir = NULL, *prev = NULL;
    struct cli_args a = {0};
    int c;
    while ((c = cli_next(&a, &cmd_download, argc, argv)) > 0) {
        if (c == 'o')
            out_dir = a.arg;
        else if (c == 'd')
            prev = a.arg;
    }
    if (c == CLI_EXIT)
        return a.status;
    unsigned jobs = a.jobs ? a.jobs : DOWNLOAD_JOBS_DEFAULT;
    bool json = a.json;
    int first = a.first;
    if (argc - first != 2)
        return cli_usage_error(&cmd_download, "expected VM and SNAPSHOT");
    if (!out_dir || !out_dir[0])
        return cli_usage_error(&cmd_download, "--out-dir DIR is required");
    if (prev && !prev[0])
        return cli_usage_error(&cmd_download, "--diff-from needs a snapshot ID");
    const char *vm = argv[first], *snap = argv[first + 1];

    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CLEANUP_FREE char *prev_esc = prev ? client_escape(prev) : NULL;
    CLEANUP_FREE char *query = NULL;
    /* zeroedInChunks=false: the zeroed ranges are written as zeros here, not fetched (the
     * daemon lists them in "chunks" too for clients that read only "chunks"). */
    if (prev && (!prev_esc || asprintf(&query, "?compareTo=%s&zeroedInChunks=false", prev_esc) < 0))
        query = NULL;
    CLEANUP_FREE char *path = (!prev || query) ? vm_path(vm, snap, prev ? query : "") : NULL;
    if (!path) {
        fprintf(stderr, "vmexport download: out of memory\n");
        return EXIT_FAIL;
    }
    /* The output directory first: no need to ask the server when it cannot be written. */
    if (!prev && mkdir(out_dir, S_IRWXU | S_IRGRP | S_IXGRP | S_IROTH | S_IXOTH) < 0 &&
        errno != EEXIST) {
        fprintf(stderr, "vmexport download: %s: %s\n", out_dir, strerror(errno));
        return EXIT_FAIL;
    }
    CLEANUP_CLOSE int dirfd = open(out_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        fprintf(stderr, "vmexport download: %s: %s\n", out_dir, strerror(errno));
        return EXIT_FAIL;
    }

    struct client *cl = cli_client_connect("download");
    if (!cl)
        return EXIT_FAIL;
    json_t *snapshot;
    if (client_json(cl, "GET", path, NULL, &snapshot, NULL) < 0)
        return remote_fail("download", cl);

    struct download dl = {.out_dir = out_dir, .pieces = VECTOR_INIT};
    pthread_mutex_init(&dl.lock, NULL);
    atomic_init(&dl.next, 0);
    atomic_init(&dl.stop, false);
    uint64_t fetched = 0, transferred = 0;
    int r = dl_read_disks(&dl, snapshot);
    if (r == 0)
        r = dl_plan(&dl, vm, snap);
    if (r == 0)
        r = dl_prepare_files(&dl, dirfd, prev != NULL, prev);
    if (r == 0)
        r = dl_fetch(&dl, cl, jobs, &fetched, &transferred);
    if (r == 0)
        r = dl_sync(&dl, dirfd);
    client_free(cl);
    int ret;
    if (r < 0) {
        fprintf(stderr, "vmexport download: %s/%s: %s\n", vm, snap, dl.error);
        ret = EXIT_FAIL;
    } else {
        ret = dl_report(&dl, vm, snap, prev, fetched, transferred, seconds_since(&t0), json);
    }
    dl_free(&dl);
    json_decref(snapshot);
    return ret;
}

const struct cli_command cmd_download = {
    .name = "download",
    .summary = "download a snapshot's disks (in full or the changes) into sparse files",
    .run = download_run,
    .usage =
        "Usage: vmexport download [--diff-from PREV] [--jobs N] [--json] -o DIR VM SNAPSHOT\n"
        "\n"
        "Download the disks of snapshot SNAPSHOT of VM into DIR, one sparse file per disk,\n"
        "named after the disk (names with '/' or starting with '.' are refused).\n"
        "\n"
        "Full download (no --diff-from): DIR is created if missing; each file is created (or\n"
        "truncated) to the disk's size and only the disk's data extents (the snapshot's chunks)\n"
        "are fetched, with ranged GETs of at most 8 MiB; holes and 4 KiB blocks of zeros stay\n"
        "holes.  vmexportd leaves blocks of zeros out of its answers (docs/api.md, \"Sparse\n"
        "answers\"); other servers send them, and they are still not written.\n"
        "\n"
        "Incremental (--diff-from PREV): DIR must hold the disks as of the older snapshot PREV\n"
        "(a previous download).  Only what changed since PREV is fetched: each file is set to\n"
        "the new size, the ranges that became zeros are punched out (or overwritten with zeros\n"
        "where the filesystem cannot punch holes) and the changed ranges are written in place\n"
        "(their blocks of zeros punched out too).\n"
        "Afterwards the files equal SNAPSHOT bit for bit.  A disk added since PREV is\n"
        "downloaded in full.  Keep PREV on the server until this has succeeded.\n"
        "\n"
        "The files are fsynced at the end; what is written leaves the page cache once it is on\n"
        "the disk.  A failed download leaves them incomplete: repeat it (a full one for a\n"
        "failed full download).\n"
        "\n",
    .common = CLI_JSON | CLI_JOBS | CLI_CONNECTION,
    .options = download_options,
    .json_short = 'j',
    .jobs_short = 'J',
    .json_help = "print {\"vm\",\"snapshot\",\"compared_to\",\"out_dir\",\n"
                 "\"disks\":[{\"name\",\"size\",\"created\",\"chunk_bytes\",\n"
                 "\"zeroed_bytes\"}],\"bytes_fetched\",\"bytes_transferred\",\n"
                 "\"bytes_zeroed\",\"seconds\"}: bytes_fetched counts the disk\n"
                 "bytes read, bytes_transferred the body bytes that came\n"
                 "over the network (fewer when the server left zeros out)",
    .jobs_help = "parallel connections, 1 to 64 (default 4)",
    .epilog = "Exit status: 0 success, 1 failure (unknown VM or snapshot, PREV not older, a file\n"
              "missing for --diff-from, server unreachable, write error ...), 2 bad usage.\n",
};
