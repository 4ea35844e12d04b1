/* The "qemu" provider: running QEMU processes and qemu-storage-daemons, driven over QMP.
 *
 *   [provider.live]
 *   type = qemu
 *   qmp_sockets = GLOB                       QMP sockets, one per VM (e.g. /run/qemu/ *.qmp)
 *   guest_agent_sockets = GLOB               optional: guest agent sockets, matched by VM ID
 *   scratch_dir = /var/lib/vmexport/scratch  copy-before-write images of live snapshots (0700)
 *   nbd_dir = /run/vmexport/nbd              sockets of the NBD servers started in the VMs
 *   scratch_limit = 0                        bytes per scratch image (0: no limit)
 *   snapshot_lifetime = 0                    seconds a snapshot keeps its data (0: no limit)
 *   freeze_timeout = 10                      seconds for the guest agent's freeze
 *
 * A VM's ID is its -name (query-name) or the socket's base name without extension.  Its disks
 * are the non-removable block devices (query-block), or for a qemu-storage-daemon the named
 * nodes no other node uses (its exported and top-level format nodes); CD-ROMs and read-only
 * nodes are listed but not snapshotted.
 *
 * A snapshot is one QMP transaction over all of a VM's disks: per disk node N a new dirty
 * bitmap (the checkpoint: persistent on qcow2, 64 KiB granularity), the disable of the chain's
 * previous one, and a blockdev-backup sync=none of N into a scratch qcow2 whose backing is N
 * (made before the transaction), so that the scratch node reads as N did at that instant while
 * the guest keeps writing.  The scratch node is then exported read-only over an NBD server the
 * provider starts in that QEMU on a unix socket in nbd_dir, and read with libnbd (core/nbdio).
 * Bitmap names carry the chain and a link to the previous checkpoint,
 * "vmexport.<chain>.<t>.<prev t>" (t: CLOCK_REALTIME ns, 16 hex digits), so that the changes
 * between two snapshots are the union of the bitmaps linked between them: merged into a
 * temporary bitmap, exported and read as the qemu:dirty-bitmap meta context.
 *
 * Every QMP exchange runs under a per-socket lock on a connection of its own (a QMP monitor
 * serves one client at a time).  A watcher thread ends snapshots whose scratch image outgrows
 * scratch_limit or that outlive snapshot_lifetime: their export and backup job go, the guest's
 * writes go on.  QEMU 7.2 cannot set on-cbw-error=break-snapshot on a backup job's filter (nor
 * insert a copy-before-write filter over a device's node without blockdev-replace), so a
 * scratch filesystem that fills up between two watcher rounds fails the guest's writes: keep
 * scratch_dir on a filesystem with room for scratch_limit per disk.
 */
#include "provider.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/lock.h"
#include "core/log.h"
#include "core/nbdio.h"
#include "provider/qga.h"
#include "provider/qmp.h"

#define QEMU_SCRATCH_DIR_DEFAULT "/var/lib/vmexport/scratch"
#define QEMU_NBD_DIR_DEFAULT     "/run/vmexport/nbd"
#define QEMU_DIR_MODE            0700 /* scratch images hold guest data */
#define QEMU_SCRATCH_MODE        0600
#define QEMU_FREEZE_TIMEOUT_S    10
#define QEMU_BITMAP_GRANULARITY  65536 /* QEMU's default for qcow2 clusters; the changes' unit */
#define QEMU_BITMAP_PREFIX       "vmexport."
#define QEMU_NAME_PREFIX         "vmx" /* our nodes, jobs and exports: vmx<kind><key> */
#define QEMU_KEY_SNAP_HEX        16    /* key: 16 hex digits of the snapshot ID ... */
#define QEMU_KEY_DISK_HEX        8     /* ... and 8 of a hash of the disk name */
#define QEMU_KEY_LEN             (QEMU_KEY_SNAP_HEX + QEMU_KEY_DISK_HEX)
#define QEMU_NODE_NAME_MAX       32       /* QEMU's node-name limit (31 characters) */
#define QEMU_JOB_POLL_NS         2000000L /* 2 ms: blockdev-create of a qcow2 takes ~30 ms */
#define QEMU_JOB_WAIT_MS         30000
#define QEMU_GONE_WAIT_MS        10000 /* for an export or job to go after its delete/cancel */
#define QEMU_WATCH_INTERVAL_S    1
#define QEMU_WALK_MAX            100000 /* links followed in one chain walk */
#define QEMU_T_HEX               16     /* digits of a checkpoint time: 64-bit ns in hex */
#define QEMU_FILTER_DEPTH_MAX    64 /* our filters stacked over one node (one per live snapshot) */
#define QEMU_WATCH_BATCH         16 /* snapshot disks ended per watcher round; more next round */
#define QEMU_REASON_MAX          256
#define QEMU_VM_ID_BYTES         256 /* provider_id_is_safe: at most 255 bytes */
#define STAT_BLOCK_BYTES         512 /* st_blocks unit */
#define QEMU_QDEV_PREFIX         "/machine/peripheral/"
#define QEMU_MAX_SOCKETS         4096
#define QEMU_ERR                 512
#define NS_PER_S                 1000000000LL
#define NS_PER_US                1000

static const char *const qemu_keys[] = {
    "qmp_sockets",   "guest_agent_sockets", "scratch_dir",    "nbd_dir",
    "scratch_limit", "snapshot_lifetime",   "freeze_timeout", NULL};

/* One lock per QMP socket path: one exchange at a time per monitor. */
struct qemu_sock_lock {
    char *path;
    pthread_mutex_t m;
    struct qemu_sock_lock *next;
};

/* A snapshot disk whose scratch image lives, for the watcher. */
struct qemu_live {
    char key[QEMU_KEY_LEN + 1];
    char *vm_id;
    char *snap;
    char *disk;
    int64_t created_ns; /* CLOCK_MONOTONIC */
    int broken;         /* 0, or why it was ended: -EFBIG scratch_limit, -ETIME snapshot_lifetime */
    bool ended;         /* its export, job and scratch image are gone */
    char reason[QEMU_REASON_MAX];
    struct qemu_live *next;
};

struct qemu_priv {
    char *name;
    char *qmp_glob, *qga_glob;
    char *scratch_dir, *nbd_dir;
    int scratch_dirfd;
    uint64_t scratch_limit; /* bytes, 0: none */
    uint64_t lifetime_s;    /* 0: none */
    uint64_t freeze_timeout_s;
    pthread_mutex_t lock; /* locks and live */
    struct qemu_sock_lock *locks;
    size_t n_locks;
    struct qemu_live *live;
    pthread_t watcher;
    bool watching, stopping;
    pthread_cond_t cond;
};

/* A locator, parsed.  It is never used as a path: names derive from the key. */
struct qemu_loc {
    char *vm, *disk, *node, *snap;
    uint64_t t;
    char key[QEMU_KEY_LEN + 1];
};

static void loc_clear(struct qemu_loc *l)
{
    free(l->vm);
    free(l->disk);
    free(l->node);
    free(l->snap);
    memset(l, 0, sizeof(*l));
}

/* An open QMP exchange with one VM: the socket's lock is held. */
struct qemu_conn {
    struct qmp *q;
    pthread_mutex_t *m;
    char *sock;
    char *vm_id;
};

static void conn_end(struct qemu_conn *c)
{
    qmp_close(c->q);
    if (c->m)
        pthread_mutex_unlock(c->m);
    free(c->sock);
    free(c->vm_id);
    memset(c, 0, sizeof(*c));
}

static uint64_t fnv1a64(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a offset basis and prime */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

static int64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static int64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static void sleep_ns(long ns)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = ns};
    nanosleep(&ts, NULL);
}

/* "vmx<kind><key>": names of our nodes, jobs, exports. */
static void obj_name(char out[QEMU_NODE_NAME_MAX], char kind, const char *key)
{
    snprintf(out, QEMU_NODE_NAME_MAX, QEMU_NAME_PREFIX "%c%s", kind, key);
}

static bool is_ours(const char *name)
{
    return name && !strncmp(name, QEMU_NAME_PREFIX, strlen(QEMU_NAME_PREFIX));
}

/* ---- per-socket locks ---- */

static pthread_mutex_t *sock_lock(struct qemu_priv *qp, const char *path)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&qp->lock);
    for (struct qemu_sock_lock *l = qp->locks; l; l = l->next)
        if (!strcmp(l->path, path))
            return &l->m;
    if (qp->n_locks >= QEMU_MAX_SOCKETS)
        return NULL;
    struct qemu_sock_lock *l = calloc(1, sizeof(*l));
    if (!l || !(l->path = strdup(path))) {
        free(l);
        return NULL;
    }
    pthread_mutex_init(&l->m, NULL);
    l->next = qp->locks;
    qp->locks = l;
    qp->n_locks++;
    return &l->m;
}

static int conn_open(struct qemu_priv *qp, const char *sock, struct qemu_conn *c, char *err,
                     size_t errlen)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_t *m = sock_lock(qp, sock);
    if (!m)
        return -ENOMEM;
    pthread_mutex_lock(m);
    c->m = m;
    c->sock = strdup(sock);
    int r = c->sock ? qmp_connect(sock, 0, &c->q, err, errlen) : -ENOMEM;
    if (r < 0)
        conn_end(c);
    return r;
}

static int qx(struct qemu_conn *c, const char *cmd, json_t *args, json_t **ret, char *err,
              size_t errlen)
{
    return qmp_execute(c->q, cmd, args, ret, err, errlen);
}

/* ---- VMs: sockets and IDs ---- */

/* The ID of the VM behind c: query-name, else the socket's base name without extension. */
static int conn_vm_id(struct qemu_conn *c, char **out)
{
    char err[QEMU_ERR];
    json_t *ret = NULL;
    const char *name = NULL;
    if (qx(c, "query-name", NULL, &ret, err, sizeof(err)) == 0)
        name = json_string_value(json_object_get(ret, "name"));
    char *id;
    if (name && name[0]) {
        id = strdup(name);
    } else {
        const char *base = strrchr(c->sock, '/');
        base = base ? base + 1 : c->sock;
        const char *dot = strrchr(base, '.');
        id = strndup(base, dot && dot != base ? (size_t)(dot - base) : strlen(base));
    }
    json_decref(ret);
    if (!id)
        return -ENOMEM;
    *out = id;
    return 0;
}

/* The glob's sockets, sorted (glob sorts). */
static int sockets_list(struct qemu_priv *qp, glob_t *g)
{
    int r = glob(qp->qmp_glob, 0, NULL, g);
    if (r == GLOB_NOMATCH) {
        g->gl_pathc = 0;
        return 0;
    }
    return r == 0 ? 0 : -EIO;
}

/* Connect to the VM vm_id: 0 and c (its lock held), -ENOENT, or another negative errno. */
static int vm_connect(struct qemu_priv *qp, const char *vm_id, struct qemu_conn *c, char *err,
                      size_t errlen)
{
    glob_t g = {0};
    int r = sockets_list(qp, &g);
    if (r < 0)
        return r;
    /* The socket named after the VM first: usually the one. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < g.gl_pathc; i++) {
            const char *p = g.gl_pathv[i], *base = strrchr(p, '/');
            base = base ? base + 1 : p;
            bool named = !strncmp(base, vm_id, strlen(vm_id)) &&
                         (base[strlen(vm_id)] == '.' || base[strlen(vm_id)] == '\0');
            if (named != (pass == 0))
                continue;
            char cerr[QEMU_ERR];
            if (conn_open(qp, p, c, cerr, sizeof(cerr)) < 0)
                continue; /* not a running QEMU (any more) */
            char *id = NULL;
            if (conn_vm_id(c, &id) == 0 && !strcmp(id, vm_id)) {
                c->vm_id = id;
                globfree(&g);
                return 0;
            }
            free(id);
            conn_end(c);
        }
    }
    if (g.gl_pathc)
        globfree(&g);
    snprintf(err, errlen, "VM %s: no running QEMU answers on %s", vm_id, qp->qmp_glob);
    return -ENOENT;
}

/* ---- the block graph ---- */

struct graph {
    json_t *g;     /* x-debug-query-block-graph */
    json_t *nodes; /* query-named-block-nodes flat */
};

static void graph_clear(struct graph *gr)
{
    json_decref(gr->g);
    json_decref(gr->nodes);
    memset(gr, 0, sizeof(*gr));
}

static int graph_read(struct qemu_conn *c, struct graph *gr, char *err, size_t errlen)
{
    memset(gr, 0, sizeof(*gr));
    int r = qx(c, "x-debug-query-block-graph", NULL, &gr->g, err, errlen);
    if (r == 0)
        r = qx(c, "query-named-block-nodes", json_pack("{s:b}", "flat", 1), &gr->nodes, err,
               errlen);
    if (r < 0)
        graph_clear(gr);
    return r;
}

static json_t *node_info(const struct graph *gr, const char *name)
{
    size_t i;
    json_t *n;
    json_array_foreach(gr->nodes, i, n)
    {
        const char *nn = json_string_value(json_object_get(n, "node-name"));
        if (nn && !strcmp(nn, name))
            return n;
    }
    return NULL;
}

static json_int_t graph_id(const struct graph *gr, const char *name)
{
    size_t i;
    json_t *n;
    json_array_foreach(json_object_get(gr->g, "nodes"), i, n)
    {
        const char *nn = json_string_value(json_object_get(n, "name"));
        if (nn && !strcmp(nn, name))
            return json_integer_value(json_object_get(n, "id"));
    }
    return -1;
}

static json_t *graph_node_by_id(const struct graph *gr, json_int_t id)
{
    size_t i;
    json_t *n;
    json_array_foreach(json_object_get(gr->g, "nodes"), i,
                       n) if (json_integer_value(json_object_get(n, "id")) == id) return n;
    return NULL;
}

/* The node under our filters: a device's top node is our copy-before-write filter while a
 * snapshot of it lives. */
static const char *graph_resolve(const struct graph *gr, const char *name)
{
    for (int depth = 0; name && is_ours(name) && depth < QEMU_FILTER_DEPTH_MAX; depth++) {
        json_int_t id = graph_id(gr, name);
        const char *next = NULL;
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(gr->g, "edges"), i, e)
        {
            const char *en = json_string_value(json_object_get(e, "name"));
            if (json_integer_value(json_object_get(e, "parent")) == id && en &&
                !strcmp(en, "file")) {
                json_t *child =
                    graph_node_by_id(gr, json_integer_value(json_object_get(e, "child")));
                next = json_string_value(json_object_get(child, "name"));
            }
        }
        name = next;
    }
    return name;
}

/* Whether a block-driver node other than ours uses the node id. */
static bool graph_has_parent(const struct graph *gr, json_int_t id)
{
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(gr->g, "edges"), i, e)
    {
        if (json_integer_value(json_object_get(e, "child")) != id)
            continue;
        json_t *p = graph_node_by_id(gr, json_integer_value(json_object_get(e, "parent")));
        const char *type = json_string_value(json_object_get(p, "type"));
        const char *name = json_string_value(json_object_get(p, "name"));
        if (type && !strcmp(type, "block-driver") && !is_ours(name))
            return true;
    }
    return false;
}

static int disk_add(struct vm *vm, const char *name, const char *dev, const char *path,
                    bool writable, uint64_t size)
{
    if (!provider_id_is_safe(name))
        return 0; /* a name that cannot be a URL component: not listed */
    struct vm_disk d = {0};
    d.name = strdup(name);
    d.device_name = strdup(dev);
    d.path = strdup(path ? path : "");
    d.mode = strdup(writable ? "w" : "r");
    d.size = size;
    d.snapshot_compatible = writable;
    d.snapshot_mode = writable ? strdup("fleece") : NULL;
    if (!d.name || !d.device_name || !d.path || !d.mode || (writable && !d.snapshot_mode) ||
        vm_disk_list_append(&vm->disks, d) < 0) {
        vm_disk_clear(&d);
        return -ENOMEM;
    }
    return 0;
}

static int disk_cmp(const struct vm_disk *a, const struct vm_disk *b)
{
    return strcmp(a->name, b->name);
}

/* The node name of a disk (the node snapshots take), from a listing. */
struct disk_node {
    char *disk, *node;
};

/* Build the VM behind c with its disks; nodes (optional) gets each snapshot-compatible disk's
 * node, as a JSON object disk -> node. */
static int vm_read(struct qemu_priv *qp, struct qemu_conn *c, struct vm **out, json_t **nodes)
{
    char err[QEMU_ERR];
    struct graph gr;
    int r = graph_read(c, &gr, err, sizeof(err));
    if (r < 0) {
        log_warn("[provider.%s] VM %s: %s", qp->name, c->vm_id, err);
        return r;
    }
    json_t *blk = NULL;
    r = qx(c, "query-block", NULL, &blk, err, sizeof(err));
    struct vm *vm = NULL;
    if (r == 0)
        r = vm_new(qp->name, c->vm_id, NULL, NULL, &vm);
    json_t *map = json_object();
    if (!map)
        r = r < 0 ? r : -ENOMEM;
    if (r == 0 && json_array_size(blk) > 0) {
        /* A QEMU with devices: its block devices with a medium. */
        size_t i;
        json_t *d;
        json_array_foreach(blk, i, d)
        {
            json_t *ins = json_object_get(d, "inserted");
            if (!ins)
                continue;
            const char *dev = json_string_value(json_object_get(d, "device"));
            const char *qdev = json_string_value(json_object_get(d, "qdev"));
            char name[256] = "";
            if (qdev && qdev[0]) {
                /* the device's ID (libvirt's alias): /machine/peripheral/ID/virtio-backend */
                const char *s = qdev;
                if (!strncmp(s, QEMU_QDEV_PREFIX, strlen(QEMU_QDEV_PREFIX)))
                    s += strlen(QEMU_QDEV_PREFIX);
                if (s[0] != '/')
                    snprintf(name, sizeof(name), "%.*s", (int)strcspn(s, "/"), s);
            }
            if (!name[0] && dev && dev[0])
                snprintf(name, sizeof(name), "%s", dev);
            const char *node =
                graph_resolve(&gr, json_string_value(json_object_get(ins, "node-name")));
            if (!name[0] || !node)
                continue;
            bool removable = json_is_true(json_object_get(d, "removable"));
            bool ro = json_is_true(json_object_get(ins, "ro"));
            json_t *ni = node_info(&gr, node);
            json_t *img = json_object_get(ni ? ni : ins, "image");
            char devname[300];
            snprintf(devname, sizeof(devname), "%s%s", name, removable ? ":cdrom" : "");
            r = disk_add(vm, name, devname, json_string_value(json_object_get(img, "filename")),
                         !removable && !ro,
                         (uint64_t)json_integer_value(json_object_get(img, "virtual-size")));
            if (r == 0 && !removable && !ro)
                r = json_object_set_new(map, name, json_string(node)) < 0 ? -ENOMEM : 0;
            if (r < 0)
                break;
        }
    } else if (r == 0) {
        /* A qemu-storage-daemon: named nodes that no other node uses. */
        size_t i;
        json_t *n;
        json_array_foreach(json_object_get(gr.g, "nodes"), i, n)
        {
            const char *type = json_string_value(json_object_get(n, "type"));
            const char *name = json_string_value(json_object_get(n, "name"));
            if (!type || strcmp(type, "block-driver") || !name || !name[0] || name[0] == '#' ||
                is_ours(name) ||
                graph_has_parent(&gr, json_integer_value(json_object_get(n, "id"))))
                continue;
            json_t *ni = node_info(&gr, name);
            if (!ni)
                continue;
            bool ro = json_is_true(json_object_get(ni, "ro"));
            json_t *img = json_object_get(ni, "image");
            r = disk_add(vm, name, name, json_string_value(json_object_get(ni, "file")), !ro,
                         (uint64_t)json_integer_value(json_object_get(img, "virtual-size")));
            if (r == 0 && !ro)
                r = json_object_set_new(map, name, json_string(name)) < 0 ? -ENOMEM : 0;
            if (r < 0)
                break;
        }
    }
    json_decref(blk);
    graph_clear(&gr);
    if (r < 0) {
        vm_free(vm);
        json_decref(map);
        return r;
    }
    vm_disk_list_sort(&vm->disks, disk_cmp);
    vm_update_snapshot_compatible(vm);
    *out = vm;
    if (nodes)
        *nodes = map;
    else
        json_decref(map);
    return 0;
}

static int qemu_list(struct provider *p, vm_list *out)
{
    struct qemu_priv *qp = p->priv;
    glob_t g = {0};
    int r = sockets_list(qp, &g);
    if (r < 0)
        return r;
    for (size_t i = 0; i < g.gl_pathc && r == 0; i++) {
        struct qemu_conn c;
        char err[QEMU_ERR];
        if (conn_open(qp, g.gl_pathv[i], &c, err, sizeof(err)) < 0) {
            log_debug("[provider.%s] %s", qp->name, err);
            continue; /* a socket without a QEMU behind it */
        }
        struct vm *vm = NULL;
        if (conn_vm_id(&c, &c.vm_id) == 0 && provider_id_is_safe(c.vm_id) &&
            vm_read(qp, &c, &vm, NULL) == 0) {
            bool dup = false;
            for (size_t j = 0; j < out->len; j++)
                dup = dup || !strcmp(out->ptr[j]->id, vm->id);
            if (dup) {
                log_warn("[provider.%s] %s: VM ID %s is taken by another socket: not listed",
                         qp->name, g.gl_pathv[i], vm->id);
                vm_free(vm);
            } else if ((r = vm_list_append(out, vm)) < 0) {
                vm_free(vm);
            }
        }
        conn_end(&c);
    }
    if (g.gl_pathc)
        globfree(&g);
    if (r < 0) {
        vm_list_free(out);
        return r;
    }
    vm_list_sort_by_id(out);
    return 0;
}

static int qemu_get(struct provider *p, const char *vm_id, struct vm **out)
{
    struct qemu_priv *qp = p->priv;
    struct qemu_conn c;
    char err[QEMU_ERR];
    if (!provider_id_is_safe(vm_id))
        return -ENOENT;
    int r = vm_connect(qp, vm_id, &c, err, sizeof(err));
    if (r < 0)
        return r == -ENOENT ? r : -EIO;
    r = vm_read(qp, &c, out, NULL);
    conn_end(&c);
    return r;
}

/* ---- locators ---- */

static void loc_key(struct qemu_loc *l)
{
    size_t n = 0;
    for (const char *s = l->snap; *s && n < QEMU_KEY_SNAP_HEX; s++)
        if (*s != '-')
            l->key[n++] = *s;
    snprintf(l->key + n, sizeof(l->key) - n, "%08x", (unsigned)(fnv1a64(l->disk) & 0xffffffffu));
}

static bool snap_id_ok(const char *s)
{
    size_t hex = 0;
    for (; *s; s++) {
        if ((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f'))
            hex++;
        else if (*s != '-')
            return false;
    }
    return hex >= QEMU_KEY_SNAP_HEX;
}

static int loc_parse(const char *locator, struct qemu_loc *l)
{
    memset(l, 0, sizeof(*l));
    json_t *j = json_loads(locator, 0, NULL);
    const char *vm = json_string_value(json_object_get(j, "vm"));
    const char *disk = json_string_value(json_object_get(j, "disk"));
    const char *node = json_string_value(json_object_get(j, "node"));
    const char *snap = json_string_value(json_object_get(j, "snap"));
    const char *t = json_string_value(json_object_get(j, "t"));
    int r = -EINVAL;
    if (vm && disk && node && snap && t && snap_id_ok(snap) && strlen(t) == QEMU_T_HEX &&
        strspn(t, "0123456789abcdef") == QEMU_T_HEX) {
        l->vm = strdup(vm);
        l->disk = strdup(disk);
        l->node = strdup(node);
        l->snap = strdup(snap);
        l->t = strtoull(t, NULL, 16);
        r = l->vm && l->disk && l->node && l->snap ? 0 : -ENOMEM;
        if (r == 0)
            loc_key(l);
    }
    json_decref(j);
    if (r < 0)
        loc_clear(l);
    return r;
}

/* The node of the locator's disk now: node names given by QEMU (-drive) or libvirt change when
 * the process restarts, device IDs do not; the locator's node when the disk is not listed. */
static int loc_resolve_node(struct qemu_priv *qp, struct qemu_conn *c, struct qemu_loc *l)
{
    struct vm *vm = NULL;
    json_t *nodes = NULL;
    int r = vm_read(qp, c, &vm, &nodes);
    if (r < 0)
        return r;
    vm_free(vm);
    const char *node = json_string_value(json_object_get(nodes, l->disk));
    if (node && strcmp(node, l->node)) {
        char *n = strdup(node);
        if (!n) {
            json_decref(nodes);
            return -ENOMEM;
        }
        free(l->node);
        l->node = n;
    }
    json_decref(nodes);
    return 0;
}

static int qemu_snapshot_locate(struct provider *p, const struct vm *vm, const struct vm_disk *disk,
                                const char *snap_id, char **out)
{
    struct qemu_priv *qp = p->priv;
    if (!snap_id_ok(snap_id))
        return -EINVAL;
    if (!disk->snapshot_compatible)
        return -EOPNOTSUPP;
    /* The disk's node as the VM has it now. */
    struct qemu_conn c;
    char err[QEMU_ERR];
    int r = vm_connect(qp, vm->id, &c, err, sizeof(err));
    if (r < 0)
        return r;
    struct vm *now = NULL;
    json_t *nodes = NULL;
    r = vm_read(qp, &c, &now, &nodes);
    conn_end(&c);
    vm_free(now);
    if (r < 0)
        return r;
    const char *node = json_string_value(json_object_get(nodes, disk->name));
    if (!node) {
        json_decref(nodes);
        return -EOPNOTSUPP;
    }
    char t[17];
    snprintf(t, sizeof(t), "%016llx", (unsigned long long)realtime_ns());
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s}", "vm", vm->id, "disk", disk->name, "node",
                          node, "snap", snap_id, "t", t);
    json_decref(nodes);
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    if (!s)
        return -ENOMEM;
    *out = s;
    return 0;
}

/* ---- bitmaps ---- */

struct bitmap {
    char name[1024];
    char chain[PROVIDER_CHAIN_MAX + 1];
    uint64_t t, prev;
    bool recording, inconsistent, busy;
};

/* Parse "vmexport.<chain>.<t>.<prev>": false when the name is not ours. */
static bool bitmap_parse(const char *name, struct bitmap *b)
{
    size_t pl = strlen(QEMU_BITMAP_PREFIX);
    if (strncmp(name, QEMU_BITMAP_PREFIX, pl))
        return false;
    const char *chain = name + pl, *dot = strchr(chain, '.');
    if (!dot || dot == chain || (size_t)(dot - chain) > PROVIDER_CHAIN_MAX)
        return false;
    const char *t = dot + 1;
    if (strlen(t) != 2 * QEMU_T_HEX + 1 || t[QEMU_T_HEX] != '.' ||
        strspn(t, "0123456789abcdef") != QEMU_T_HEX ||
        strspn(t + QEMU_T_HEX + 1, "0123456789abcdef") != QEMU_T_HEX)
        return false;
    memset(b, 0, sizeof(*b));
    snprintf(b->name, sizeof(b->name), "%s", name);
    snprintf(b->chain, sizeof(b->chain), "%.*s", (int)(dot - chain), chain);
    b->t = strtoull(t, NULL, 16);
    b->prev = strtoull(t + QEMU_T_HEX + 1, NULL, 16);
    return true;
}

DEFINE_VECTOR_TYPE(bitmap_list, struct bitmap);

/* Our bitmaps on a node (from query-named-block-nodes). */
static int bitmaps_of(json_t *ni, bitmap_list *out)
{
    size_t i;
    json_t *b;
    json_array_foreach(json_object_get(ni, "dirty-bitmaps"), i, b)
    {
        const char *name = json_string_value(json_object_get(b, "name"));
        struct bitmap bm;
        if (!name || !bitmap_parse(name, &bm))
            continue;
        bm.recording = json_is_true(json_object_get(b, "recording"));
        bm.inconsistent = json_is_true(json_object_get(b, "inconsistent"));
        bm.busy = json_is_true(json_object_get(b, "busy"));
        if (bitmap_list_append(out, bm) < 0)
            return -ENOMEM;
    }
    return 0;
}

static const struct bitmap *bitmap_find(const bitmap_list *l, uint64_t t)
{
    for (size_t i = 0; i < l->len; i++)
        if (l->ptr[i].t == t)
            return &l->ptr[i];
    return NULL;
}

/* ---- waiting for QEMU ---- */

static bool export_exists(struct qemu_conn *c, const char *id, int *r)
{
    char err[QEMU_ERR];
    json_t *ex = NULL;
    *r = qx(c, "query-block-exports", NULL, &ex, err, sizeof(err));
    bool found = false;
    size_t i;
    json_t *e;
    json_array_foreach(ex, i, e)
    {
        const char *eid = json_string_value(json_object_get(e, "id"));
        found = found || (eid && !strcmp(eid, id));
    }
    json_decref(ex);
    return found;
}

/* The status of the job id ("" when there is none). */
static int job_status(struct qemu_conn *c, const char *id, char *status, size_t n, char *jerr,
                      size_t jerrlen)
{
    char err[QEMU_ERR];
    json_t *jobs = NULL;
    int r = qx(c, "query-jobs", NULL, &jobs, err, sizeof(err));
    if (r < 0)
        return r;
    status[0] = '\0';
    size_t i;
    json_t *j;
    json_array_foreach(jobs, i, j)
    {
        const char *jid = json_string_value(json_object_get(j, "id"));
        if (!jid || strcmp(jid, id))
            continue;
        const char *st = json_string_value(json_object_get(j, "status"));
        const char *e = json_string_value(json_object_get(j, "error"));
        snprintf(status, n, "%s", st ? st : "?");
        if (jerr)
            snprintf(jerr, jerrlen, "%s", e ? e : "");
    }
    json_decref(jobs);
    return 0;
}

/* Delete an export of ours and wait until it is gone (clients are cut off). */
static int export_del(struct qemu_conn *c, const char *id)
{
    char err[QEMU_ERR];
    int r;
    if (!export_exists(c, id, &r))
        return r;
    r = qx(c, "block-export-del", json_pack("{s:s, s:s}", "id", id, "mode", "hard"), NULL, err,
           sizeof(err));
    if (r < 0 && r != -ENOENT)
        log_warn("%s", err);
    for (int64_t end = monotonic_ns() + (int64_t)QEMU_GONE_WAIT_MS * 1000000;;) {
        if (!export_exists(c, id, &r))
            return r;
        if (monotonic_ns() > end)
            return -ETIMEDOUT;
        sleep_ns(QEMU_JOB_POLL_NS);
    }
}

/* Cancel a job of ours and wait until it is gone. */
static int job_cancel(struct qemu_conn *c, const char *id)
{
    char err[QEMU_ERR], st[32];
    int r = job_status(c, id, st, sizeof(st), NULL, 0);
    if (r < 0 || !st[0])
        return r;
    r = qx(c, "block-job-cancel", json_pack("{s:s, s:b}", "device", id, "force", 1), NULL, err,
           sizeof(err));
    if (r < 0)
        log_debug("%s", err);
    for (int64_t end = monotonic_ns() + (int64_t)QEMU_GONE_WAIT_MS * 1000000;;) {
        if ((r = job_status(c, id, st, sizeof(st), NULL, 0)) < 0)
            return r;
        if (!st[0])
            return 0;
        if (!strcmp(st, "concluded"))
            qx(c, "job-dismiss", json_pack("{s:s}", "id", id), NULL, err, sizeof(err));
        if (monotonic_ns() > end)
            return -ETIMEDOUT;
        sleep_ns(QEMU_JOB_POLL_NS);
    }
}

static int node_del(struct qemu_conn *c, const char *node)
{
    char err[QEMU_ERR];
    int r = qx(c, "blockdev-del", json_pack("{s:s}", "node-name", node), NULL, err, sizeof(err));
    if (r == -ENOENT || (r == -EIO && strstr(err, "Failed to find node")))
        return 0;
    if (r < 0)
        log_warn("%s", err);
    return r;
}

/* ---- scratch images ---- */

static void scratch_file_name(char out[QEMU_KEY_LEN + 8], const char *key)
{
    snprintf(out, QEMU_KEY_LEN + 8, "%s.qcow2", key);
}

static int scratch_unlink(struct qemu_priv *qp, const char *key)
{
    char fn[QEMU_KEY_LEN + 8];
    scratch_file_name(fn, key);
    if (unlinkat(qp->scratch_dirfd, fn, 0) < 0 && errno != ENOENT)
        return -errno;
    return 0;
}

/* The scratch qcow2 of key over node (size bytes), as node vmxs<key>. */
static int scratch_make(struct qemu_priv *qp, struct qemu_conn *c, const char *key,
                        const char *node, uint64_t size, char *err, size_t errlen)
{
    char fn[QEMU_KEY_LEN + 8], path[PATH_MAX], pnode[QEMU_NODE_NAME_MAX], snode[QEMU_NODE_NAME_MAX],
        job[QEMU_NODE_NAME_MAX];
    scratch_file_name(fn, key);
    obj_name(pnode, 'p', key);
    obj_name(snode, 's', key);
    obj_name(job, 'c', key);
    snprintf(path, sizeof(path), "%s/%s", qp->scratch_dir, fn);
    int fd = openat(qp->scratch_dirfd, fn, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                    QEMU_SCRATCH_MODE);
    if (fd < 0) {
        int r = -errno;
        snprintf(err, errlen, "scratch image %s: %s", path, strerror(-r));
        return r;
    }
    close(fd);
    int r = qx(c, "blockdev-add",
               json_pack("{s:s, s:s, s:s, s:s}", "driver", "file", "node-name", pnode, "filename",
                         path, "discard", "unmap"),
               NULL, err, errlen);
    if (r == 0)
        r = qx(c, "blockdev-create",
               json_pack("{s:s, s:{s:s, s:s, s:I}}", "job-id", job, "options", "driver", "qcow2",
                         "file", pnode, "size", (json_int_t)size),
               NULL, err, errlen);
    if (r == 0) {
        char st[32], jerr[QEMU_ERR];
        for (int64_t end = monotonic_ns() + (int64_t)QEMU_JOB_WAIT_MS * 1000000;;) {
            if ((r = job_status(c, job, st, sizeof(st), jerr, sizeof(jerr))) < 0)
                break;
            if (!strcmp(st, "concluded") || !st[0])
                break;
            if (monotonic_ns() > end) {
                r = -ETIMEDOUT;
                snprintf(err, errlen, "blockdev-create %s: not done in time", path);
                break;
            }
            sleep_ns(QEMU_JOB_POLL_NS);
        }
        char derr[QEMU_ERR];
        qx(c, "job-dismiss", json_pack("{s:s}", "id", job), NULL, derr, sizeof(derr));
        if (r == 0 && jerr[0]) {
            snprintf(err, errlen, "blockdev-create %s: %s", path, jerr);
            r = -EIO;
        }
    }
    if (r == 0)
        r = qx(c, "blockdev-add",
               json_pack("{s:s, s:s, s:s, s:s, s:s}", "driver", "qcow2", "node-name", snode, "file",
                         pnode, "backing", node, "discard", "unmap"),
               NULL, err, errlen);
    return r;
}

/* Remove what scratch_make made (whatever exists of it). */
static void scratch_remove(struct qemu_priv *qp, struct qemu_conn *c, const char *key)
{
    char pnode[QEMU_NODE_NAME_MAX], snode[QEMU_NODE_NAME_MAX];
    obj_name(pnode, 'p', key);
    obj_name(snode, 's', key);
    if (c) {
        node_del(c, snode);
        node_del(c, pnode);
    }
    scratch_unlink(qp, key);
}

/* ---- NBD server ---- */

static void nbd_socket_path(struct qemu_priv *qp, const char *vm_id, char *out, size_t n)
{
    snprintf(out, n, "%s/%016llx", qp->nbd_dir, (unsigned long long)fnv1a64(vm_id));
}

/* Start our NBD server in the VM's QEMU: 0, or 1 when one runs already (ours from before, or
 * someone else's: the caller checks by connecting). */
static int nbd_server_ensure(struct qemu_priv *qp, struct qemu_conn *c, char *err, size_t errlen)
{
    char path[PATH_MAX];
    nbd_socket_path(qp, c->vm_id, path, sizeof(path));
    int r = qx(c, "nbd-server-start",
               json_pack("{s:{s:s, s:{s:s}}}", "addr", "type", "unix", "data", "path", path), NULL,
               err, errlen);
    if (r == -EIO && strstr(err, "already running"))
        return 1;
    return r;
}

/* ---- the watcher ---- */

static void live_add(struct qemu_priv *qp, const char *key, const char *vm, const char *snap,
                     const char *disk)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&qp->lock);
    for (struct qemu_live *l = qp->live; l; l = l->next)
        if (!strcmp(l->key, key))
            return;
    struct qemu_live *l = calloc(1, sizeof(*l));
    if (!l)
        return;
    snprintf(l->key, sizeof(l->key), "%s", key);
    l->vm_id = strdup(vm);
    l->snap = strdup(snap);
    l->disk = strdup(disk);
    l->created_ns = monotonic_ns();
    l->next = qp->live;
    qp->live = l;
}

static void live_free(struct qemu_live *l)
{
    free(l->vm_id);
    free(l->snap);
    free(l->disk);
    free(l);
}

static void live_remove(struct qemu_priv *qp, const char *key)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&qp->lock);
    for (struct qemu_live **pp = &qp->live; *pp; pp = &(*pp)->next) {
        if (!strcmp((*pp)->key, key)) {
            struct qemu_live *l = *pp;
            *pp = l->next;
            live_free(l);
            return;
        }
    }
}

/* Why the snapshot disk key was ended early: 0 when it was not, else the errno its reads get
 * and the reason in why. */
static int live_broken(struct qemu_priv *qp, const char *key, char *why, size_t n)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&qp->lock);
    why[0] = '\0';
    for (struct qemu_live *l = qp->live; l; l = l->next) {
        if (!strcmp(l->key, key) && l->broken) {
            snprintf(why, n, "%s", l->reason);
            return l->broken;
        }
    }
    return 0;
}

/* End a snapshot's data: its export, then its backup job (the guest's writes no longer
 * copy anything), its scratch node and file.  The checkpoint bitmap stays. */
static int data_end(struct qemu_priv *qp, struct qemu_conn *c, const char *key)
{
    char ex[QEMU_NODE_NAME_MAX], job[QEMU_NODE_NAME_MAX];
    obj_name(ex, 'e', key);
    obj_name(job, 'j', key);
    int r = 0, e;
    if (c) {
        if ((e = export_del(c, ex)) < 0)
            r = e;
        if ((e = job_cancel(c, job)) < 0 && !r)
            r = e;
    }
    scratch_remove(qp, c, key);
    return r;
}

/* Whether the snapshot disk l is over a limit now: sets its broken and reason. */
static bool live_check(struct qemu_priv *qp, struct qemu_live *l, int64_t now)
{
    char fn[QEMU_KEY_LEN + 8];
    scratch_file_name(fn, l->key);
    struct stat st;
    uint64_t used = fstatat(qp->scratch_dirfd, fn, &st, AT_SYMLINK_NOFOLLOW) == 0
                        ? (uint64_t)st.st_blocks * STAT_BLOCK_BYTES
                        : 0;
    bool over_limit = qp->scratch_limit && used > qp->scratch_limit;
    bool too_old = qp->lifetime_s && now - l->created_ns > (int64_t)qp->lifetime_s * NS_PER_S;
    if (over_limit)
        snprintf(l->reason, sizeof(l->reason),
                 "snapshot %s: disk %s: its scratch image grew to %llu bytes, over scratch_limit "
                 "%llu: the snapshot was ended (the guest's writes went on)",
                 l->snap, l->disk, (unsigned long long)used, (unsigned long long)qp->scratch_limit);
    else if (too_old)
        snprintf(l->reason, sizeof(l->reason),
                 "snapshot %s: disk %s: older than snapshot_lifetime %llu s: the snapshot was "
                 "ended (the guest's writes went on)",
                 l->snap, l->disk, (unsigned long long)qp->lifetime_s);
    else
        return false;
    l->broken = over_limit ? -EFBIG : -ETIME;
    return true;
}

/* One look at the live snapshots: a disk over a limit ends its whole snapshot (a backup needs
 * every disk of one instant). */
static void watch_round(struct qemu_priv *qp)
{
    struct over {
        char key[QEMU_KEY_LEN + 1];
        char vm[QEMU_VM_ID_BYTES];
        char reason[QEMU_REASON_MAX];
    } over[QEMU_WATCH_BATCH];
    size_t n = 0;
    int64_t now = monotonic_ns();
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&qp->lock);
        for (struct qemu_live *l = qp->live; l; l = l->next) {
            if (l->broken || !live_check(qp, l, now))
                continue;
            for (struct qemu_live *o = qp->live; o; o = o->next) {
                if (o != l && !o->broken && !strcmp(o->snap, l->snap)) {
                    o->broken = l->broken;
                    snprintf(o->reason, sizeof(o->reason), "%s", l->reason);
                }
            }
        }
        for (struct qemu_live *l = qp->live; l && n < ARRAY_SIZE(over); l = l->next) {
            if (!l->broken || l->ended)
                continue;
            l->ended = true;
            snprintf(over[n].key, sizeof(over[n].key), "%s", l->key);
            snprintf(over[n].vm, sizeof(over[n].vm), "%s", l->vm_id);
            snprintf(over[n].reason, sizeof(over[n].reason), "%s", l->reason);
            n++;
        }
    }
    for (size_t i = 0; i < n; i++) {
        log_error("[provider.%s] %s", qp->name, over[i].reason);
        struct qemu_conn c;
        char err[QEMU_ERR];
        if (vm_connect(qp, over[i].vm, &c, err, sizeof(err)) < 0) {
            scratch_remove(qp, NULL, over[i].key);
            continue;
        }
        data_end(qp, &c, over[i].key);
        conn_end(&c);
    }
}

static void *watch_main(void *arg)
{
    struct qemu_priv *qp = arg;
    pthread_mutex_lock(&qp->lock);
    while (!qp->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += QEMU_WATCH_INTERVAL_S;
        pthread_cond_timedwait(&qp->cond, &qp->lock, &ts);
        if (qp->stopping)
            break;
        pthread_mutex_unlock(&qp->lock);
        watch_round(qp);
        pthread_mutex_lock(&qp->lock);
    }
    pthread_mutex_unlock(&qp->lock);
    return NULL;
}

/* ---- guest agent hook ----
 *
 * Called around the transaction, after the server's freeze hook and before its thaw hook.
 * provider/qga.c (guest agent: guest-sync-delimited, guest-fsfreeze-*) fills these in: find
 * the agent socket of vm_id in qp->qga_glob, freeze within qp->freeze_timeout_s, and thaw on
 * every path.  *frozen says whether the guest's filesystems are frozen now. */
struct qemu_guest {
    struct qga_freeze fz;
    int timeout_ms;
};

static int qemu_guest_freeze(struct qemu_priv *qp, const char *vm_id, struct qemu_guest **g,
                             bool *frozen, char *err, size_t errlen)
{
    *g = NULL;
    *frozen = false;
    if (!qp->qga_glob)
        return 0;
    CLEANUP_FREE char *path = NULL;
    int r = qga_socket_find(qp->qga_glob, vm_id, &path);
    if (r == -ENOENT)
        return 0; /* no agent for this VM: the snapshot is crash-consistent */
    if (r < 0) {
        snprintf(err, errlen, "VM %s: guest_agent_sockets %s: %s", vm_id, qp->qga_glob,
                 strerror(-r));
        return r;
    }
    struct qemu_guest *n = calloc(1, sizeof(*n));
    if (!n)
        return -ENOMEM;
    n->timeout_ms = qp->freeze_timeout_s == 0               ? QGA_TIMEOUT_MS_DEFAULT
                    : qp->freeze_timeout_s > INT_MAX / 1000 ? INT_MAX
                                                            : (int)qp->freeze_timeout_s * 1000;
    char qerr[QEMU_ERR];
    r = qga_freeze_begin(&n->fz, path, n->timeout_ms, qerr, sizeof(qerr));
    if (r < 0) {
        /* qga_freeze_begin thawed (or keeps thawing) whatever it may have frozen */
        snprintf(err, errlen, "VM %s: %s", vm_id, qerr);
        free(n);
        return r;
    }
    *g = n;
    *frozen = n->fz.count > 0;
    return 0;
}

/* Thaw (when frozen) and forget g; result: the snapshot's.  How long the guest was frozen, from
 * the freeze sent to the thaw confirmed, in microseconds (0: unknown, the thaw failed). */
static uint64_t qemu_guest_thaw(struct qemu_priv *qp, struct qemu_guest *g, int result)
{
    (void)qp;
    if (!g)
        return 0;
    char err[QEMU_ERR];
    uint64_t frozen_us = 0;
    if (qga_freeze_end(&g->fz, g->timeout_ms, err, sizeof(err)) < 0) {
        log_error("%s (after a %s snapshot)", err, result == 0 ? "successful" : "failed");
    } else {
        frozen_us = g->fz.frozen_us;
        log_info("guest agent: %d filesystems frozen for %.1f ms (freeze sent to thaw confirmed)",
                 g->fz.count, (double)frozen_us / 1000.0);
    }
    free(g);
    return frozen_us;
}

/* ---- snapshots ---- */

struct sdisk {
    struct qemu_loc loc;
    bool qcow2;
    uint64_t size;
    char bitmap[1024];   /* the new checkpoint */
    bitmap_list disable; /* the chain's recording bitmaps, disabled by the transaction */
    bool scratch, exported;
};

/* Undo a snapshot_create after its transaction ran (done) or before it. */
static void create_undo(struct qemu_priv *qp, struct qemu_conn *c, struct sdisk *sd, size_t n,
                        bool done)
{
    char err[QEMU_ERR];
    for (size_t i = 0; i < n; i++) {
        if (done) {
            data_end(qp, c, sd[i].loc.key);
            qx(c, "block-dirty-bitmap-remove",
               json_pack("{s:s, s:s}", "node", sd[i].loc.node, "name", sd[i].bitmap), NULL, err,
               sizeof(err));
            for (size_t k = 0; k < sd[i].disable.len; k++)
                qx(c, "block-dirty-bitmap-enable",
                   json_pack("{s:s, s:s}", "node", sd[i].loc.node, "name",
                             sd[i].disable.ptr[k].name),
                   NULL, err, sizeof(err));
        } else if (sd[i].scratch) {
            scratch_remove(qp, c, sd[i].loc.key);
        }
    }
}

static int qemu_snapshot_create(struct provider *p, const struct vm *vm, const char *snap_id,
                                struct provider_snapshot_request *req,
                                struct provider_snapshot_disk *disks, size_t n,
                                const struct provider_quiesce *q, char *err, size_t errlen)
{
    struct qemu_priv *qp = p->priv;
    if (!provider_chain_valid(req->chain)) {
        snprintf(err, errlen, "chain %s: not a chain ID", req->chain);
        return -EINVAL;
    }
    struct sdisk *sd = calloc(n ? n : 1, sizeof(*sd));
    if (!sd)
        return -ENOMEM;
    int r = 0;
    for (size_t i = 0; i < n && r == 0; i++) {
        r = loc_parse(disks[i].locator, &sd[i].loc);
        if (r == 0 && (strcmp(sd[i].loc.vm, vm->id) || strcmp(sd[i].loc.snap, snap_id)))
            r = -EINVAL;
        for (size_t k = 0; r == 0 && k < i; k++)
            if (!strcmp(sd[k].loc.key, sd[i].loc.key))
                r = -EINVAL;
        if (r < 0)
            snprintf(err, errlen, "VM %s: disk %s: not a locator of this snapshot", vm->id,
                     disks[i].disk ? disks[i].disk->name : "?");
    }
    struct qemu_conn c = {0};
    struct graph gr = {0};
    json_t *actions = NULL;
    bool transaction_done = false;
    if (r == 0)
        r = vm_connect(qp, vm->id, &c, err, errlen);
    for (size_t i = 0; i < n && r == 0; i++)
        r = loc_resolve_node(qp, &c, &sd[i].loc);
    /* Stale bitmaps of ours go first: inconsistent ones can never be a base again. */
    if (r == 0 && (r = graph_read(&c, &gr, err, errlen)) == 0) {
        for (size_t i = 0; i < n && r == 0; i++) {
            json_t *ni = node_info(&gr, sd[i].loc.node);
            if (!ni) {
                snprintf(err, errlen, "VM %s: disk %s: node %s is gone", vm->id, sd[i].loc.disk,
                         sd[i].loc.node);
                r = -ENOENT;
                break;
            }
            const char *drv = json_string_value(json_object_get(ni, "drv"));
            sd[i].qcow2 = drv && !strcmp(drv, "qcow2");
            sd[i].size = (uint64_t)json_integer_value(
                json_object_get(json_object_get(ni, "image"), "virtual-size"));
            bitmap_list bl = VECTOR_INIT;
            r = bitmaps_of(ni, &bl);
            uint64_t prev = 0;
            for (size_t k = 0; r == 0 && k < bl.len; k++) {
                struct bitmap *b = &bl.ptr[k];
                char berr[QEMU_ERR];
                if (b->inconsistent) {
                    log_warn("VM %s: disk %s: removing the inconsistent checkpoint %s (QEMU "
                             "stopped without saving it)",
                             vm->id, sd[i].loc.disk, b->name);
                    qx(&c, "block-dirty-bitmap-remove",
                       json_pack("{s:s, s:s}", "node", sd[i].loc.node, "name", b->name), NULL, berr,
                       sizeof(berr));
                    continue;
                }
                if (strcmp(b->chain, req->chain) || !b->recording)
                    continue;
                if (b->t >= sd[i].loc.t) {
                    snprintf(err, errlen,
                             "VM %s: disk %s: a later snapshot of chain %s was taken meanwhile; "
                             "try again",
                             vm->id, sd[i].loc.disk, req->chain);
                    r = -EBUSY;
                    break;
                }
                if (b->t > prev)
                    prev = b->t;
                r = bitmap_list_append(&sd[i].disable, *b);
            }
            bitmap_list_reset(&bl);
            snprintf(sd[i].bitmap, sizeof(sd[i].bitmap), QEMU_BITMAP_PREFIX "%s.%016llx.%016llx",
                     req->chain, (unsigned long long)sd[i].loc.t, (unsigned long long)prev);
        }
    }
    /* Scratch images, before any freeze: their making takes the longest. */
    int64_t t_start = monotonic_ns(), t_tx = 0, t_tx_end = 0;
    for (size_t i = 0; i < n && r == 0; i++) {
        sd[i].scratch = true;
        r = scratch_make(qp, &c, sd[i].loc.key, sd[i].loc.node, sd[i].size, err, errlen);
    }
    /* The transaction. */
    if (r == 0 && !(actions = json_array()))
        r = -ENOMEM;
    for (size_t i = 0; i < n && r == 0; i++) {
        char snode[QEMU_NODE_NAME_MAX], fnode[QEMU_NODE_NAME_MAX], job[QEMU_NODE_NAME_MAX];
        obj_name(snode, 's', sd[i].loc.key);
        obj_name(fnode, 'f', sd[i].loc.key);
        obj_name(job, 'j', sd[i].loc.key);
        json_array_append_new(
            actions, json_pack("{s:s, s:{s:s, s:s, s:b, s:i}}", "type", "block-dirty-bitmap-add",
                               "data", "node", sd[i].loc.node, "name", sd[i].bitmap, "persistent",
                               sd[i].qcow2, "granularity", QEMU_BITMAP_GRANULARITY));
        for (size_t k = 0; k < sd[i].disable.len; k++)
            json_array_append_new(actions,
                                  json_pack("{s:s, s:{s:s, s:s}}", "type",
                                            "block-dirty-bitmap-disable", "data", "node",
                                            sd[i].loc.node, "name", sd[i].disable.ptr[k].name));
        json_array_append_new(actions, json_pack("{s:s, s:{s:s, s:s, s:s, s:s, s:s}}", "type",
                                                 "blockdev-backup", "data", "job-id", job, "device",
                                                 sd[i].loc.node, "target", snode, "sync", "none",
                                                 "filter-node-name", fnode));
    }
    bool server_frozen = false;
    if (r == 0 && q && q->freeze) {
        r = q->freeze(q->opaque, err, errlen);
        server_frozen = r == 0;
    }
    if (r == 0) {
        struct qemu_guest *g = NULL;
        bool frozen = false;
        int64_t t0 = monotonic_ns();
        r = qemu_guest_freeze(qp, vm->id, &g, &frozen, err, errlen);
        if (r == 0) {
            t_tx = monotonic_ns();
            r = qx(&c, "transaction", json_pack("{s:O}", "actions", actions), NULL, err, errlen);
            t_tx_end = monotonic_ns();
            transaction_done = r == 0;
            uint64_t frozen_us = qemu_guest_thaw(qp, g, r);
            req->frozen = frozen;
            /* the agent's measure; when the thaw failed, the time since the agent was asked */
            if (frozen)
                req->frozen_us =
                    frozen_us ? frozen_us : (uint64_t)(monotonic_ns() - t0) / NS_PER_US;
        }
    }
    if (server_frozen && q->thaw)
        q->thaw(q->opaque, r);
    /* The exports. */
    int started = 0;
    if (r == 0)
        r = started = nbd_server_ensure(qp, &c, err, errlen);
    for (size_t i = 0; i < n && r >= 0; i++) {
        char snode[QEMU_NODE_NAME_MAX], ex[QEMU_NODE_NAME_MAX];
        obj_name(snode, 's', sd[i].loc.key);
        obj_name(ex, 'e', sd[i].loc.key);
        r = qx(&c, "block-export-add",
               json_pack("{s:s, s:s, s:s, s:s, s:b}", "type", "nbd", "id", ex, "node-name", snode,
                         "name", ex, "writable", 0),
               NULL, err, errlen);
        sd[i].exported = r == 0;
    }
    if (r >= 0 && started == 1 && n > 0) {
        /* A server ran already: ours from before, or one we cannot reach. */
        char sock[PATH_MAX], ex[QEMU_NODE_NAME_MAX], nerr[QEMU_ERR];
        nbd_socket_path(qp, vm->id, sock, sizeof(sock));
        obj_name(ex, 'e', sd[0].loc.key);
        struct nbdio *nb = NULL;
        if (nbdio_open(sock, ex, NULL, 1, &nb, nerr, sizeof(nerr)) < 0) {
            snprintf(err, errlen,
                     "VM %s: its QEMU runs an NBD server that vmexport did not start (QEMU has "
                     "one per process; stop it with nbd-server-stop): %s",
                     vm->id, nerr);
            r = -EBUSY;
        }
        nbdio_close(nb);
    }
    if (r >= 0) {
        r = 0;
        log_info("VM %s: snapshot %s of %zu disks: scratch images %.1f ms, transaction %.1f ms, "
                 "exports %.1f ms",
                 vm->id, snap_id, n, (double)(t_tx - t_start) / 1e6,
                 (double)(t_tx_end - t_tx) / 1e6, (double)(monotonic_ns() - t_tx_end) / 1e6);
        for (size_t i = 0; i < n; i++) {
            disks[i].size = sd[i].size;
            disks[i].mode = strdup("fleece");
            live_add(qp, sd[i].loc.key, vm->id, snap_id, sd[i].loc.disk);
        }
    } else if (c.q) {
        create_undo(qp, &c, sd, n, transaction_done);
    }
    json_decref(actions);
    graph_clear(&gr);
    if (c.q || c.m)
        conn_end(&c);
    for (size_t i = 0; i < n; i++) {
        loc_clear(&sd[i].loc);
        bitmap_list_reset(&sd[i].disable);
    }
    free(sd);
    /* The VM or a node vanished: not "no such disk in the request", which -ENOENT means. */
    return r == -ENOENT ? -ENODEV : r;
}

/* Connect to the VM of a locator: 0, or -ENOENT when the VM runs no more. */
static int loc_connect(struct qemu_priv *qp, const char *locator, struct qemu_loc *l,
                       struct qemu_conn *c, char *err, size_t errlen)
{
    int r = loc_parse(locator, l);
    if (r < 0) {
        snprintf(err, errlen, "not a qemu locator");
        return r;
    }
    r = vm_connect(qp, l->vm, c, err, errlen);
    if (r == 0 && (r = loc_resolve_node(qp, c, l)) < 0)
        conn_end(c);
    if (r < 0)
        loc_clear(l);
    return r;
}

/* End the data of the snapshot disk at locator: its export, backup job, scratch node and file.
 * *connected tells whether its QEMU runs: then l and c stay open for the caller (loc_clear,
 * conn_end); when the QEMU is gone, only its scratch file was left to remove. */
static int data_release(struct qemu_priv *qp, const char *locator, struct qemu_loc *l,
                        struct qemu_conn *c, bool *connected)
{
    char err[QEMU_ERR];
    *connected = false;
    int r = loc_connect(qp, locator, l, c, err, sizeof(err));
    if (r == -ENOENT && loc_parse(locator, l) == 0) {
        r = scratch_unlink(qp, l->key);
        live_remove(qp, l->key);
        loc_clear(l);
        return r;
    }
    if (r < 0)
        return r;
    *connected = true;
    r = data_end(qp, c, l->key);
    live_remove(qp, l->key);
    return r;
}

static int qemu_snapshot_release(struct provider *p, const char *locator)
{
    struct qemu_loc l;
    struct qemu_conn c;
    bool connected;
    int r = data_release(p->priv, locator, &l, &c, &connected);
    if (connected) {
        conn_end(&c);
        loc_clear(&l);
    }
    return r;
}

/* The newest checkpoint b of a chain (still recording: no later snapshot of the chain) goes
 * when its snapshot is deleted, typically by a backup that failed: fold it into the previous
 * checkpoint, which records again from then on, in one transaction, so that the next snapshot
 * is still incremental from the previous one's.  0, or -ENOENT when there is no usable
 * previous checkpoint (then b and what it links to are removed as for any other). */
static int checkpoint_fold(struct qemu_conn *c, const struct qemu_loc *l, const bitmap_list *bl,
                           const struct bitmap *b)
{
    const struct bitmap *prev = b->prev && b->prev < b->t ? bitmap_find(bl, b->prev) : NULL;
    if (!prev || strcmp(prev->chain, b->chain) || prev->inconsistent || prev->recording ||
        b->inconsistent)
        return -ENOENT;
    char err[QEMU_ERR];
    json_t *actions = json_pack(
        "[{s:s, s:{s:s, s:s, s:[s]}}, {s:s, s:{s:s, s:s}}, {s:s, s:{s:s, s:s}}]", "type",
        "block-dirty-bitmap-merge", "data", "node", l->node, "target", prev->name, "bitmaps",
        b->name, "type", "block-dirty-bitmap-enable", "data", "node", l->node, "name", prev->name,
        "type", "block-dirty-bitmap-remove", "data", "node", l->node, "name", b->name);
    int r = actions ? qx(c, "transaction", json_pack("{s:o}", "actions", actions), NULL, err,
                         sizeof(err))
                    : -ENOMEM;
    if (r < 0) {
        log_warn("VM %s: disk %s: folding checkpoint %s into %s: %s", l->vm, l->disk, b->name,
                 prev->name, err);
        return -ENOENT;
    }
    return 0;
}

static int qemu_snapshot_delete(struct provider *p, const char *locator)
{
    struct qemu_loc l;
    struct qemu_conn c;
    char err[QEMU_ERR];
    bool connected;
    int r = data_release(p->priv, locator, &l, &c, &connected);
    if (!connected)
        return r; /* the QEMU is gone, and its bitmaps with it or in its images */
    /* The checkpoint and the older ones of its chain linked from it. */
    struct graph gr;
    bitmap_list bl = VECTOR_INIT;
    if (graph_read(&c, &gr, err, sizeof(err)) == 0) {
        json_t *ni = node_info(&gr, l.node);
        if (ni && bitmaps_of(ni, &bl) == 0) {
            const struct bitmap *b = bitmap_find(&bl, l.t);
            char chain[PROVIDER_CHAIN_MAX + 1] = "";
            if (b)
                snprintf(chain, sizeof(chain), "%s", b->chain);
            if (b && b->recording && checkpoint_fold(&c, &l, &bl, b) == 0)
                b = NULL; /* the previous checkpoint is the chain's newest again */
            for (int k = 0; b && k < QEMU_WALK_MAX && !strcmp(b->chain, chain); k++) {
                int e = qx(&c, "block-dirty-bitmap-remove",
                           json_pack("{s:s, s:s}", "node", l.node, "name", b->name), NULL, err,
                           sizeof(err));
                if (e < 0) {
                    log_warn("VM %s: disk %s: %s", l.vm, l.disk, err);
                    if (r == 0)
                        r = e;
                    break;
                }
                uint64_t prev = b->prev;
                b = prev && prev < b->t ? bitmap_find(&bl, prev) : NULL;
            }
        }
        graph_clear(&gr);
    }
    bitmap_list_reset(&bl);
    conn_end(&c);
    loc_clear(&l);
    return r;
}

/* ---- reading ---- */

struct qemu_reader {
    struct disk_reader r;
    struct nbdio *n;
};

static int qreader_pread(struct disk_reader *dr, void *buf, size_t n, uint64_t off, unsigned flags,
                         size_t *got)
{
    (void)flags;
    struct qemu_reader *qr = (struct qemu_reader *)dr;
    uint64_t size = nbdio_size(qr->n);
    *got = 0;
    if (off >= size)
        return 0;
    if (n > size - off)
        n = (size_t)(size - off);
    int r = n ? nbdio_pread(qr->n, buf, n, off) : 0;
    if (r == 0)
        *got = n;
    return r;
}

static bool qreader_cached(struct disk_reader *dr, uint64_t off, size_t n)
{
    (void)dr, (void)off, (void)n;
    return true; /* no page cache of ours between the reader and QEMU */
}

static int qreader_size(struct disk_reader *dr, uint64_t *size)
{
    *size = nbdio_size(((struct qemu_reader *)dr)->n);
    return 0;
}

struct map_ctx {
    struct disk_map_sink *sink;
    unsigned flags;
};

static int map_status(void *opaque, uint64_t off, uint64_t len, uint32_t flags)
{
    struct map_ctx *m = opaque;
    if (flags & NBDIO_STATE_HOLE)
        return 0;
    bool zero = flags & NBDIO_STATE_ZERO;
    if (zero && (m->flags & DISK_MAP_LOGICAL))
        return 0;
    struct extent e = {
        .start = off, .length = len, .flags = EXTENT_PHYS_UNKNOWN | (zero ? EXTENT_UNWRITTEN : 0)};
    return m->sink->emit(m->sink->opaque, &e);
}

static int qreader_map(struct disk_reader *dr, unsigned flags, struct disk_map_sink *sink)
{
    struct qemu_reader *qr = (struct qemu_reader *)dr;
    struct map_ctx m = {.sink = sink, .flags = flags};
    return nbdio_block_status(qr->n, NBDIO_CONTEXT_ALLOCATION, 0, nbdio_size(qr->n), map_status,
                              &m);
}

static int qreader_dup_fd(struct disk_reader *dr)
{
    (void)dr;
    return -EOPNOTSUPP;
}

static void qreader_close(struct disk_reader *dr)
{
    struct qemu_reader *qr = (struct qemu_reader *)dr;
    nbdio_close(qr->n);
    free(qr);
}

static const struct disk_reader_ops qreader_ops = {
    .pread = qreader_pread,
    .cached = qreader_cached,
    .size = qreader_size,
    .map = qreader_map,
    .dup_fd = qreader_dup_fd,
    .close = qreader_close,
};

static int qemu_disk_open(struct provider *p, const char *locator, unsigned flags,
                          struct disk_reader **out)
{
    (void)flags;
    struct qemu_priv *qp = p->priv;
    struct qemu_loc l;
    if (loc_parse(locator, &l) < 0)
        return -EINVAL;
    char why[256];
    int broken = live_broken(qp, l.key, why, sizeof(why));
    if (broken) {
        /* reads say File too large (scratch_limit) or Timer expired (snapshot_lifetime) */
        log_error("[provider.%s] %s", qp->name, why);
        loc_clear(&l);
        return broken;
    }
    char sock[PATH_MAX], ex[QEMU_NODE_NAME_MAX], err[QEMU_ERR];
    nbd_socket_path(qp, l.vm, sock, sizeof(sock));
    obj_name(ex, 'e', l.key);
    struct qemu_reader *qr = calloc(1, sizeof(*qr));
    int r = qr ? nbdio_open(sock, ex, NULL, 0, &qr->n, err, sizeof(err)) : -ENOMEM;
    if (r < 0) {
        if (qr)
            log_debug("[provider.%s] snapshot %s: disk %s: %s", qp->name, l.snap, l.disk, err);
        free(qr);
        loc_clear(&l);
        return r == -ENOMEM ? r : -ENOENT;
    }
    qr->r.ops = &qreader_ops;
    qr->r.size = nbdio_size(qr->n);
    /* Snapshots of an earlier run of the daemon are watched from their first read on. */
    live_add(qp, l.key, l.vm, l.snap, l.disk);
    CLEANUP_FREE char *uri = nbdio_uri(sock, ex);
    if (uri && strlen(uri) < sizeof(qr->r.identity))
        memcpy(qr->r.identity, uri, strlen(uri) + 1);
    loc_clear(&l);
    *out = &qr->r;
    return 0;
}

/* ---- changes ---- */

struct changes_ctx {
    struct nbdio *n;
    bool zeroes; /* base:allocation of the snapshot says what reads as zeros */
    struct extent_sink *changed, *zeroed;
    int r;
};

static int alloc_status(void *opaque, uint64_t off, uint64_t len, uint32_t flags)
{
    struct changes_ctx *x = opaque;
    struct extent_sink *s = (flags & NBDIO_STATE_ZERO) ? x->zeroed : x->changed;
    return s->emit(s->opaque, off, len);
}

/* The dirty ranges, collected first: a block status walk is not re-entered from its callback. */
static int dirty_status(void *opaque, uint64_t off, uint64_t len, uint32_t flags)
{
    extent_list *l = opaque;
    if (!(flags & NBDIO_STATE_DIRTY))
        return 0;
    return extent_list_add_range(l, off, len);
}

static int changes_emit(struct changes_ctx *x, const extent_list *dirty)
{
    int r = 0;
    for (size_t i = 0; i < dirty->len && r == 0; i++) {
        const struct extent *e = &dirty->ptr[i];
        r = x->zeroes ? nbdio_block_status(x->n, NBDIO_CONTEXT_ALLOCATION, e->start, e->length,
                                           alloc_status, x)
                      : x->changed->emit(x->changed->opaque, e->start, e->length);
    }
    return r;
}

static int qemu_disk_changes(struct provider *p, const char *base, const char *new,
                             struct extent_sink *changed, struct extent_sink *zeroed,
                             const char **method, char *err, size_t errlen)
{
    struct qemu_priv *qp = p->priv;
    if (method)
        *method = "bitmap"; /* docs/api.md: diff_mode of QEMU dirty bitmaps */
    struct qemu_loc lb, ln;
    if (loc_parse(base, &lb) < 0)
        return -EINVAL;
    struct qemu_conn c;
    int r = loc_connect(qp, new, &ln, &c, err, errlen);
    if (r < 0) {
        loc_clear(&lb);
        if (r == -ENOENT)
            snprintf(err, errlen, "the VM's QEMU is gone: its checkpoints with it");
        return r == -ENOENT ? -ESTALE : r;
    }
    struct graph gr = {0};
    bitmap_list bl = VECTOR_INIT, walk = VECTOR_INIT;
    char tmp[QEMU_NODE_NAME_MAX], ex[QEMU_NODE_NAME_MAX], snode[QEMU_NODE_NAME_MAX];
    obj_name(tmp, 't', ln.key);
    obj_name(ex, 'd', ln.key);
    obj_name(snode, 's', ln.key);
    bool tmp_made = false, ex_made = false;
    struct nbdio *nb = NULL;
    if (strcmp(lb.vm, ln.vm) || strcmp(lb.disk, ln.disk)) {
        snprintf(err, errlen, "the snapshots are not of the same disk");
        r = -EINVAL;
        goto out;
    }
    if ((r = graph_read(&c, &gr, err, errlen)) < 0)
        goto out;
    json_t *ni = node_info(&gr, ln.node);
    if (!ni) {
        snprintf(err, errlen, "node %s of disk %s is gone", ln.node, ln.disk);
        r = -ESTALE;
        goto out;
    }
    if ((r = bitmaps_of(ni, &bl)) < 0)
        goto out;
    const struct bitmap *bn = bitmap_find(&bl, ln.t), *bb = bitmap_find(&bl, lb.t);
    if (bb && bn && strcmp(bb->chain, bn->chain)) {
        snprintf(err, errlen, "the base snapshot belongs to chain %s, this one to chain %s",
                 bb->chain, bn->chain);
        r = -EXDEV;
        goto out;
    }
    if (!bn) {
        snprintf(err, errlen, "the checkpoint of snapshot %s is gone from node %s", ln.snap,
                 ln.node);
        r = -ESTALE;
        goto out;
    }
    if (lb.t > ln.t) {
        snprintf(err, errlen, "the base snapshot %s is newer than %s", lb.snap, ln.snap);
        r = -ESTALE;
        goto out;
    }
    /* Walk back from the new checkpoint to the base's. */
    uint64_t cur = bn->prev, last = bn->t;
    for (int k = 0; lb.t < ln.t; k++) {
        const struct bitmap *b = cur ? bitmap_find(&bl, cur) : NULL;
        if ((!cur || k >= QEMU_WALK_MAX || cur >= last) && !bb) {
            snprintf(err, errlen,
                     "the checkpoint of the base snapshot %s (chain %s) is gone from node %s: "
                     "removed, lost when QEMU restarted (raw disks keep none), removed as "
                     "inconsistent after a crash, or the image was moved or changed by another "
                     "program",
                     lb.snap, bn->chain, ln.node);
            r = -ESTALE;
            goto out;
        }
        if (!cur || k >= QEMU_WALK_MAX || cur >= last) {
            snprintf(err, errlen,
                     "chain %s is broken before checkpoint %016llx (no earlier checkpoint "
                     "recorded: a snapshot of the chain was deleted)",
                     bn->chain, (unsigned long long)last);
            r = -ESTALE;
            goto out;
        }
        if (!b) {
            snprintf(err, errlen,
                     "checkpoint %s.%016llx is gone from node %s (removed, or the image was "
                     "moved or changed by another program)",
                     bn->chain, (unsigned long long)cur, ln.node);
            r = -ESTALE;
            goto out;
        }
        if (strcmp(b->chain, bn->chain)) {
            snprintf(err, errlen, "checkpoint %s links to %s of another chain", bn->name, b->name);
            r = -ESTALE;
            goto out;
        }
        if (b->inconsistent) {
            snprintf(err, errlen, "checkpoint %s is inconsistent (QEMU stopped without saving it)",
                     b->name);
            r = -ESTALE;
            goto out;
        }
        if ((r = bitmap_list_append(&walk, *b)) < 0)
            goto out;
        if (b->t <= lb.t)
            break;
        last = b->t;
        cur = b->prev;
    }
    if (walk.len == 0)
        goto out; /* the same snapshot: no changes */
    /* The union into a temporary bitmap, exported with the snapshot's data when it has any. */
    export_del(&c, ex);
    char rerr[QEMU_ERR];
    qx(&c, "block-dirty-bitmap-remove", json_pack("{s:s, s:s}", "node", ln.node, "name", tmp), NULL,
       rerr, sizeof(rerr));
    r = qx(&c, "block-dirty-bitmap-add",
           json_pack("{s:s, s:s, s:b, s:i}", "node", ln.node, "name", tmp, "disabled", 1,
                     "granularity", QEMU_BITMAP_GRANULARITY),
           NULL, err, errlen);
    tmp_made = r == 0;
    json_t *names = json_array();
    for (size_t i = 0; r == 0 && i < walk.len; i++)
        json_array_append_new(names, json_string(walk.ptr[i].name));
    if (r == 0)
        r = qx(&c, "block-dirty-bitmap-merge",
               json_pack("{s:s, s:s, s:O}", "node", ln.node, "target", tmp, "bitmaps", names), NULL,
               err, errlen);
    json_decref(names);
    bool has_data = node_info(&gr, snode) != NULL;
    if (r == 0) {
        r = nbd_server_ensure(qp, &c, err, errlen);
        r = r > 0 ? 0 : r;
    }
    if (r == 0) {
        r = qx(&c, "block-export-add",
               json_pack("{s:s, s:s, s:s, s:s, s:b, s:[{s:s, s:s}]}", "type", "nbd", "id", ex,
                         "node-name", has_data ? snode : ln.node, "name", ex, "writable", 0,
                         "bitmaps", "node", ln.node, "name", tmp),
               NULL, err, errlen);
        ex_made = r == 0;
    }
    if (r == 0) {
        char sock[PATH_MAX], ctx[QEMU_NODE_NAME_MAX + 32];
        nbd_socket_path(qp, ln.vm, sock, sizeof(sock));
        snprintf(ctx, sizeof(ctx), NBDIO_CONTEXT_BITMAP_PREFIX "%s", tmp);
        const char *ctxs[] = {NBDIO_CONTEXT_ALLOCATION, ctx, NULL};
        r = nbdio_open(sock, ex, ctxs, 1, &nb, err, errlen);
        if (r == 0) {
            struct changes_ctx x = {
                .n = nb, .zeroes = has_data, .changed = changed, .zeroed = zeroed};
            extent_list dirty = VECTOR_INIT;
            r = nbdio_block_status(nb, ctx, 0, nbdio_size(nb), dirty_status, &dirty);
            if (r == 0)
                r = changes_emit(&x, &dirty);
            extent_list_reset(&dirty);
            if (r < 0)
                snprintf(err, errlen, "reading the dirty bitmap: %s", strerror(-r));
        }
    }
out:
    nbdio_close(nb);
    if (ex_made)
        export_del(&c, ex);
    if (tmp_made) {
        char terr[QEMU_ERR];
        qx(&c, "block-dirty-bitmap-remove", json_pack("{s:s, s:s}", "node", ln.node, "name", tmp),
           NULL, terr, sizeof(terr));
    }
    bitmap_list_reset(&bl);
    bitmap_list_reset(&walk);
    graph_clear(&gr);
    conn_end(&c);
    loc_clear(&lb);
    loc_clear(&ln);
    return r;
}

/* ---- the VM's definition ---- */

static int qemu_vm_definition(struct provider *p, const struct vm *vm, char **text,
                              const char **format)
{
    struct qemu_priv *qp = p->priv;
    struct qemu_conn c;
    char err[QEMU_ERR];
    int r = vm_connect(qp, vm->id, &c, err, sizeof(err));
    if (r < 0)
        return r;
    static const char *const cmds[][2] = {
        {"query-name", "name"},
        {"query-block", "block"},
        {"query-named-block-nodes", "nodes"},
        {"query-block-exports", "exports"},
        {"query-pci", "pci"},
    };
    json_t *def = json_object();
    for (size_t i = 0; def && i < ARRAY_SIZE(cmds) && r == 0; i++) {
        json_t *ret = NULL;
        json_t *args =
            !strcmp(cmds[i][0], "query-named-block-nodes") ? json_pack("{s:b}", "flat", 1) : NULL;
        int e = qx(&c, cmds[i][0], args, &ret, err, sizeof(err));
        if (e == -EOPNOTSUPP)
            continue; /* qemu-storage-daemon: no query-name, no PCI */
        if (e < 0) {
            r = e;
            break;
        }
        /* Our own nodes and exports are the snapshot's, not the VM's. */
        if (json_is_array(ret)) {
            for (size_t k = json_array_size(ret); k-- > 0;) {
                json_t *o = json_array_get(ret, k);
                if (is_ours(json_string_value(json_object_get(o, "node-name"))) ||
                    is_ours(json_string_value(json_object_get(o, "id"))))
                    json_array_remove(ret, k);
            }
        }
        json_object_set_new(def, cmds[i][1], ret);
    }
    conn_end(&c);
    char *s = r == 0 && def ? json_dumps(def, JSON_INDENT(1) | JSON_SORT_KEYS) : NULL;
    json_decref(def);
    if (r < 0)
        return r;
    if (!s)
        return -ENOMEM;
    *text = s;
    *format = "qemu-qmp-json";
    return 0;
}

/* ---- open/close ---- */

static int parse_u64(const char *s, uint64_t *out)
{
    if (!s || !*s || *s == '-')
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -EINVAL;
    *out = v;
    return 0;
}

/* A directory of ours: made 0700 when missing; canonical path into *out. */
static int own_dir(const char *path, char **out)
{
    if (mkdir(path, QEMU_DIR_MODE) < 0 && errno != EEXIST) {
        /* parents too: /run/vmexport/nbd */
        char tmp[PATH_MAX];
        snprintf(tmp, sizeof(tmp), "%s", path);
        for (char *s = tmp + 1; *s; s++) {
            if (*s != '/')
                continue;
            *s = '\0';
            if (mkdir(tmp, QEMU_DIR_MODE) < 0 && errno != EEXIST)
                return -errno;
            *s = '/';
        }
        if (mkdir(path, QEMU_DIR_MODE) < 0 && errno != EEXIST)
            return -errno;
    }
    struct stat st;
    if (lstat(path, &st) < 0)
        return -errno;
    if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
    if (st.st_uid != geteuid() || (st.st_mode & 077))
        return -EPERM; /* scratch images and sockets must be the daemon's alone */
    *out = realpath(path, NULL);
    return *out ? 0 : -errno;
}

static void qemu_close(struct provider *p)
{
    struct qemu_priv *qp = p->priv;
    if (!qp)
        return;
    if (qp->watching) {
        pthread_mutex_lock(&qp->lock);
        qp->stopping = true;
        pthread_cond_signal(&qp->cond);
        pthread_mutex_unlock(&qp->lock);
        pthread_join(qp->watcher, NULL);
    }
    while (qp->locks) {
        struct qemu_sock_lock *l = qp->locks;
        qp->locks = l->next;
        pthread_mutex_destroy(&l->m);
        free(l->path);
        free(l);
    }
    while (qp->live) {
        struct qemu_live *l = qp->live;
        qp->live = l->next;
        live_free(l);
    }
    if (qp->scratch_dirfd >= 0)
        close(qp->scratch_dirfd);
    pthread_mutex_destroy(&qp->lock);
    pthread_cond_destroy(&qp->cond);
    free(qp->name);
    free(qp->qmp_glob);
    free(qp->qga_glob);
    free(qp->scratch_dir);
    free(qp->nbd_dir);
    free(qp);
    p->priv = NULL;
}

static int qemu_open(struct provider *p, const struct provider_config *cfg, char *err,
                     size_t errlen)
{
    const char *qmp = provider_config_get(cfg, "qmp_sockets");
    const char *qga = provider_config_get(cfg, "guest_agent_sockets");
    const char *scratch = provider_config_get(cfg, "scratch_dir");
    const char *nbd = provider_config_get(cfg, "nbd_dir");
    const char *keys[] = {"scratch_limit", "snapshot_lifetime", "freeze_timeout"};
    uint64_t vals[] = {0, 0, QEMU_FREEZE_TIMEOUT_S};
    if (!qmp || !qmp[0] || qmp[0] != '/')
        return provider_fail(err, errlen, -EINVAL,
                             "[provider.%s] qmp_sockets: missing or not absolute (a glob of the "
                             "QMP sockets of the VMs, e.g. /run/qemu/*.qmp)",
                             cfg->name);
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        const char *v = provider_config_get(cfg, keys[i]);
        if (v && parse_u64(v, &vals[i]) < 0)
            return provider_fail_setting(err, errlen, -EINVAL, cfg->name, keys[i], v);
    }
    struct qemu_priv *qp = calloc(1, sizeof(*qp));
    if (!qp)
        return -ENOMEM;
    qp->scratch_dirfd = -1;
    pthread_mutex_init(&qp->lock, NULL);
    pthread_cond_init(&qp->cond, NULL);
    p->priv = qp;
    qp->scratch_limit = vals[0];
    qp->lifetime_s = vals[1];
    qp->freeze_timeout_s = vals[2];
    qp->name = strdup(cfg->name);
    qp->qmp_glob = strdup(qmp);
    qp->qga_glob = qga && qga[0] ? strdup(qga) : NULL;
    if (!qp->name || !qp->qmp_glob || (qga && qga[0] && !qp->qga_glob)) {
        qemu_close(p);
        return -ENOMEM;
    }
    if (!scratch)
        scratch = QEMU_SCRATCH_DIR_DEFAULT;
    if (!nbd)
        nbd = QEMU_NBD_DIR_DEFAULT;
    int r = own_dir(scratch, &qp->scratch_dir);
    if (r < 0) {
        qemu_close(p);
        return provider_fail_setting(err, errlen, r, cfg->name, "scratch_dir", scratch);
    }
    if ((r = own_dir(nbd, &qp->nbd_dir)) < 0) {
        qemu_close(p);
        return provider_fail_setting(err, errlen, r, cfg->name, "nbd_dir", nbd);
    }
    qp->scratch_dirfd = open(qp->scratch_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (qp->scratch_dirfd < 0) {
        r = -errno;
        qemu_close(p);
        return provider_fail_setting(err, errlen, r, cfg->name, "scratch_dir", scratch);
    }
    if (qp->scratch_limit || qp->lifetime_s) {
        if ((r = -pthread_create(&qp->watcher, NULL, watch_main, qp)) < 0) {
            qemu_close(p);
            return provider_fail(err, errlen, r, "[provider.%s] no watcher thread", cfg->name);
        }
        qp->watching = true;
    }
    return 0;
}

const struct provider_ops provider_qemu_ops = {
    .type = "qemu",
    .keys = qemu_keys,
    .open = qemu_open,
    .close = qemu_close,
    .list = qemu_list,
    .get = qemu_get,
    .snapshot_locate = qemu_snapshot_locate,
    .snapshot_create = qemu_snapshot_create,
    .snapshot_delete = qemu_snapshot_delete,
    .snapshot_release = qemu_snapshot_release,
    .disk_open = qemu_disk_open,
    .disk_changes = qemu_disk_changes,
    .vm_definition = qemu_vm_definition,
};
