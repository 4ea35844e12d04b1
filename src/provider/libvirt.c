/* The "libvirt" provider: the domains of a libvirt connection, snapshotted live with libvirt's
 * checkpoints and pull-mode backup jobs, read over NBD.
 *
 *   [provider.kvm]
 *   type = libvirt
 *   uri = qemu:///system                 default
 *   scratch_dir = /var/lib/vmexport/scratch   where QEMU keeps what the guest overwrites while
 *                                        a snapshot lives; must be writable by QEMU's user
 *   nbd_dir = /run/vmexport/nbd          the sockets of the backup jobs' NBD servers; writable
 *                                        by QEMU's user (libvirt-qemu)
 *
 * A VM is a domain (ID: its name, UUID: its UUID); its disks are the <disk> elements of its
 * XML, named by their target ("vda").  Writable disks (device "disk", not <readonly/>) of a
 * running domain can be snapshotted, and those of a shut-off domain in a format
 * qemu-storage-daemon reads (qcow2, raw); CD-ROMs, floppies and read-only disks cannot.
 *
 * A snapshot is one virDomainBackupBegin: a pull-mode backup job whose NBD server exports each
 * disk's point-in-time view (export name = target), together with a new checkpoint
 * "vmexport.<chain>.<t_ns, 16 hex digits>.<snapshot ID>" that holds a persistent dirty bitmap of
 * every qcow2 disk.  Each qcow2 disk that has a bitmap in the chain's previous checkpoint is
 * backed up incrementally from it: the job then also exports the disk's changes since that
 * checkpoint (qemu:dirty-bitmap:backup-<target>), which is what disk_changes reads.  Changes
 * from any other base, and of raw disks (no persistent bitmaps), are -ESTALE: the client reads
 * the disk in full.  Libvirt runs one backup job per domain, so a running domain has one live
 * snapshot at a time: a new snapshot of the same chain ends the previous one's job (its
 * checkpoint stays, as the next base), one of another chain is refused (-EBUSY) while it lives.
 * Releasing a snapshot ends its job and removes its scratch files; deleting it also deletes its
 * checkpoint (libvirt merges its bitmap into the one before).  Everything is found again from
 * libvirt (checkpoint names, the job's XML), so the provider keeps no state of its own.
 *
 * A domain with a connected guest agent channel is frozen (virDomainFSFreeze) for the job's
 * start and thawed right after, on every path.
 *
 * A shut-off domain's snapshot is its files, read through a read-only qemu-storage-daemon; it
 * makes no checkpoint (libvirt 9.0 makes none for an inactive domain) but records the chain's
 * newest one as its position.  Its changes come from the persistent bitmaps of the qcow2
 * images (libvirt keeps every checkpoint's bitmap recording, and so does qemu-img or qemu-io
 * writing the image meanwhile): see "shut-off domains: changes from the images' bitmaps".
 */
#include "provider.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/log.h"
#include "core/nbdio.h"
#include "core/strlist.h"
#include "qmp.h"

#define LV_URI_DEFAULT         "qemu:///system"
#define LV_SCRATCH_DIR_DEFAULT "/var/lib/vmexport/scratch"
#define LV_NBD_DIR_DEFAULT     "/run/vmexport/nbd"

#define LV_CHECKPOINT_PREFIX "vmexport."
#define LV_SCRATCH_SUFFIX    ".qcow2"
#define LV_SOCKET_SUFFIX     ".sock"
#define LV_SNAPSHOT_MODE     "libvirt-backup"
#define LV_OFFLINE_MODE      "libvirt-offline" /* a shut-off domain's files, read-only */
#define LV_CHANGES_METHOD    "libvirt-checkpoint"
#define LV_OFFLINE_METHOD    "bitmap" /* a shut-off domain's snapshot: QEMU dirty bitmaps */
#define LV_AGENT_CHANNEL     "org.qemu.guest_agent.0"
#define LV_ID_MAX            64     /* bytes of a snapshot ID or disk target we accept */
#define LV_UUID_LEN          36     /* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" */
#define LV_TIME_HEX          16     /* digits of the checkpoint time */
#define LV_SOCKET_PATH_MAX   108    /* sizeof(sockaddr_un.sun_path) */
#define LV_URI_PROBE_EXPORT  "sdzz" /* a long usual target, to check that URIs fit */
/* An aborted backup job ends within ~10 ms on an idle host, after seconds on a loaded one.  Each
 * look at it takes the domain's job lock, which libvirt's handler of the job's end needs too:
 * look seldom enough not to starve it. */
#define LV_JOB_END_POLL_MS    100
#define LV_JOB_END_TIMEOUT_MS 30000
#define LV_JOB_ABORT_RETRY_MS 5000
/* How long libvirt may end an aborted job on its own before lv_job_blockjobs_settle helps. */
#define LV_JOB_SETTLE_AFTER_MS 200

static const char *const lv_keys[] = {"uri", "scratch_dir", "nbd_dir", NULL};

struct lv_priv {
    char *uri, *scratch_dir, *nbd_dir;
    pthread_mutex_t conn_lock; /* guards conn */
    virConnectPtr conn;        /* opened on first use, again when it died */
    pthread_mutex_t job_lock;  /* one snapshot create/release/delete at a time */
};

/* ---- libvirt plumbing ---- */

/* Libvirt prints every error on stderr unless told otherwise; we report them ourselves. */
static void lv_quiet(void *opaque, virErrorPtr e)
{
    (void)opaque;
    (void)e;
}

static const char *lv_errmsg(void)
{
    const char *m = virGetLastErrorMessage();
    return m ? m : "unknown libvirt error";
}

static bool lv_error_is(int code)
{
    virErrorPtr e = virGetLastError();
    return e && e->code == code;
}

/* A reference to the provider's connection (the caller virConnectClose()s it). */
static int lv_connect(struct lv_priv *lp, virConnectPtr *out, char *err, size_t errlen)
{
    pthread_mutex_lock(&lp->conn_lock);
    if (lp->conn && virConnectIsAlive(lp->conn) != 1) {
        virConnectClose(lp->conn);
        lp->conn = NULL;
    }
    if (!lp->conn)
        lp->conn = virConnectOpen(lp->uri);
    virConnectPtr c = lp->conn;
    if (c)
        virConnectRef(c);
    pthread_mutex_unlock(&lp->conn_lock);
    if (!c) {
        if (err)
            snprintf(err, errlen, "libvirt %s: %s", lp->uri, lv_errmsg());
        log_error("libvirt %s: %s", lp->uri, lv_errmsg());
        return -ECONNREFUSED;
    }
    *out = c;
    return 0;
}

static void lv_domain_free(virDomainPtr *d)
{
    if (*d)
        virDomainFree(*d);
}
static void lv_conn_close(virConnectPtr *c)
{
    if (*c)
        virConnectClose(*c);
}
static void lv_doc_free(xmlDocPtr *d)
{
    if (*d)
        xmlFreeDoc(*d);
}
#define CLEANUP_DOMAIN __attribute__((cleanup(lv_domain_free)))
#define CLEANUP_CONN   __attribute__((cleanup(lv_conn_close)))
#define CLEANUP_DOC    __attribute__((cleanup(lv_doc_free)))

/* The domain with this UUID: 0, -ENOENT when there is none. */
static int lv_domain_by_uuid(virConnectPtr c, const char *uuid, virDomainPtr *out)
{
    *out = virDomainLookupByUUIDString(c, uuid);
    if (*out)
        return 0;
    return lv_error_is(VIR_ERR_NO_DOMAIN) ? -ENOENT : -EIO;
}

/* ---- XML ---- */

static xmlDocPtr lv_xml_parse(const char *text)
{
    if (!text)
        return NULL;
    /* No network, no entity expansion: the text is libvirt's, but a domain's metadata is not. */
    return xmlReadMemory(text, (int)strlen(text), "libvirt.xml", NULL,
                         XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
}

/* The string value of the XPath expression expr evaluated at node (malloc'ed; NULL when it is
 * empty). */
static char *lv_xpath_str(xmlDocPtr doc, xmlNodePtr node, const char *expr)
{
    xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
    if (!ctx)
        return NULL;
    ctx->node = node ? node : xmlDocGetRootElement(doc);
    char *s = NULL;
    xmlXPathObjectPtr o = xmlXPathEvalExpression((const xmlChar *)expr, ctx);
    if (o) {
        xmlChar *v = xmlXPathCastToString(o);
        if (v && v[0])
            s = strdup((const char *)v);
        xmlFree(v);
        xmlXPathFreeObject(o);
    }
    xmlXPathFreeContext(ctx);
    return s;
}

/* The nodes matching expr (the caller frees with xmlXPathFreeObject; NULL when none). */
static xmlXPathObjectPtr lv_xpath_nodes(xmlDocPtr doc, const char *expr)
{
    xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
    if (!ctx)
        return NULL;
    xmlXPathObjectPtr o = xmlXPathEvalExpression((const xmlChar *)expr, ctx);
    xmlXPathFreeContext(ctx);
    if (o && (!o->nodesetval || o->nodesetval->nodeNr == 0)) {
        xmlXPathFreeObject(o);
        o = NULL;
    }
    return o;
}

/* One <disk> of a domain's XML. */
struct lv_disk {
    char *target, *device, *source, *format, *type;
    bool readonly;
};
DEFINE_VECTOR_TYPE(lv_disk_list, struct lv_disk);

static void lv_disks_free(lv_disk_list *l)
{
    for (size_t i = 0; i < l->len; i++) {
        free(l->ptr[i].target);
        free(l->ptr[i].device);
        free(l->ptr[i].source);
        free(l->ptr[i].format);
        free(l->ptr[i].type);
    }
    lv_disk_list_reset(l);
}

static int lv_disks_parse(xmlDocPtr doc, lv_disk_list *out)
{
    xmlXPathObjectPtr o = lv_xpath_nodes(doc, "/domain/devices/disk");
    if (!o)
        return 0;
    int r = 0;
    for (int i = 0; i < o->nodesetval->nodeNr && r == 0; i++) {
        xmlNodePtr n = o->nodesetval->nodeTab[i];
        struct lv_disk d = {
            .target = lv_xpath_str(doc, n, "string(target/@dev)"),
            .device = lv_xpath_str(doc, n, "string(@device)"),
            .source = lv_xpath_str(doc, n, "string(source/@file | source/@dev | source/@name)"),
            .format = lv_xpath_str(doc, n, "string(driver/@type)"),
            .type = lv_xpath_str(doc, n, "string(@type)"),
        };
        char *ro = lv_xpath_str(doc, n, "string(count(readonly))");
        d.readonly = ro && strcmp(ro, "0") != 0;
        free(ro);
        if (!d.device)
            d.device = strdup("disk");
        if (!d.target || out->len >= PROVIDER_MAX_DISKS || lv_disk_list_append(out, d) < 0) {
            free(d.target);
            free(d.device);
            free(d.source);
            free(d.format);
            free(d.type);
            if (out->len >= PROVIDER_MAX_DISKS)
                r = -E2BIG;
        }
    }
    xmlXPathFreeObject(o);
    return r;
}

static bool lv_disk_writable(const struct lv_disk *d)
{
    return strcmp(d->device, "disk") == 0 && !d->readonly;
}

static bool lv_disk_qcow2(const struct lv_disk *d)
{
    return d->format && strcmp(d->format, "qcow2") == 0;
}

/* Whether a shut-off domain's disk can be read from its file: a local file or block device in
 * a format qemu-storage-daemon opens. */
static bool lv_disk_offline_readable(const struct lv_disk *d)
{
    return d->source && d->type && (!strcmp(d->type, "file") || !strcmp(d->type, "block")) &&
           d->format && (!strcmp(d->format, "qcow2") || !strcmp(d->format, "raw"));
}

static bool lv_name_safe(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > LV_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

/* ---- open, close, listing ---- */

static void lv_priv_free(struct lv_priv *lp)
{
    if (!lp)
        return;
    if (lp->conn)
        virConnectClose(lp->conn);
    pthread_mutex_destroy(&lp->conn_lock);
    pthread_mutex_destroy(&lp->job_lock);
    free(lp->uri);
    free(lp->scratch_dir);
    free(lp->nbd_dir);
    free(lp);
}

static int lv_dir_setting(const struct provider_config *cfg, const char *key, const char *def,
                          char **out, char *err, size_t errlen)
{
    const char *v = provider_config_get(cfg, key);
    if (!v)
        v = def;
    struct stat st;
    if (v[0] != '/')
        return provider_fail(err, errlen, -EINVAL, "[provider.%s] %s: %s: not an absolute path",
                             cfg->name, key, v);
    if (stat(v, &st) < 0)
        return provider_fail_setting(err, errlen, -errno, cfg->name, key, v);
    if (!S_ISDIR(st.st_mode))
        return provider_fail_setting(err, errlen, -ENOTDIR, cfg->name, key, v);
    *out = strdup(v);
    return *out ? 0 : -ENOMEM;
}

static int lv_open(struct provider *p, const struct provider_config *cfg, char *err, size_t errlen)
{
    if (virInitialize() < 0)
        return provider_fail(err, errlen, -EIO, "[provider.%s] libvirt: %s", cfg->name,
                             lv_errmsg());
    xmlInitParser();
    virSetErrorFunc(NULL, lv_quiet);
    struct lv_priv *lp = calloc(1, sizeof(*lp));
    if (!lp)
        return -ENOMEM;
    pthread_mutex_init(&lp->conn_lock, NULL);
    pthread_mutex_init(&lp->job_lock, NULL);
    const char *uri = provider_config_get(cfg, "uri");
    lp->uri = strdup(uri ? uri : LV_URI_DEFAULT);
    int r = lp->uri ? 0 : -ENOMEM;
    if (r == 0)
        r = lv_dir_setting(cfg, "scratch_dir", LV_SCRATCH_DIR_DEFAULT, &lp->scratch_dir, err,
                           errlen);
    if (r == 0)
        r = lv_dir_setting(cfg, "nbd_dir", LV_NBD_DIR_DEFAULT, &lp->nbd_dir, err, errlen);
    /* <nbd_dir>/<UUID>.sock must fit a unix socket address. */
    if (r == 0 &&
        strlen(lp->nbd_dir) + 1 + LV_UUID_LEN + strlen(LV_SOCKET_SUFFIX) >= LV_SOCKET_PATH_MAX)
        r = provider_fail(err, errlen, -ENAMETOOLONG,
                          "[provider.%s] nbd_dir: %s: too long for a unix socket path", cfg->name,
                          lp->nbd_dir);
    if (r < 0) {
        lv_priv_free(lp);
        return r;
    }
    /* A disk's identity is the NBD URI of its export, which a client on this host then reads
     * directly: it must fit, with the longest target we list. */
    CLEANUP_FREE char *probe = nbdio_uri(lp->nbd_dir, LV_URI_PROBE_EXPORT);
    if (probe && strlen(probe) + 1 + LV_UUID_LEN + strlen(LV_SOCKET_SUFFIX) >= DISK_IDENTITY_MAX)
        log_warn("[provider.%s] nbd_dir %s is too long for the NBD URIs of snapshot disks: "
                 "clients will read them through the daemon (https)",
                 cfg->name, lp->nbd_dir);
    p->priv = lp;
    return 0;
}

static void lv_close(struct provider *p)
{
    lv_priv_free(p->priv);
    p->priv = NULL;
}

static int lv_vm_from_domain(struct provider *p, virDomainPtr dom, struct vm **out)
{
    char uuid[VIR_UUID_STRING_BUFLEN];
    const char *name = virDomainGetName(dom);
    if (!name || virDomainGetUUIDString(dom, uuid) < 0)
        return -EIO;
    bool active = virDomainIsActive(dom) == 1;
    CLEANUP_FREE char *xml = virDomainGetXMLDesc(dom, 0);
    CLEANUP_DOC xmlDocPtr doc = lv_xml_parse(xml);
    if (!doc) {
        log_error("libvirt domain %s: no readable XML: %s", name, lv_errmsg());
        return -EIO;
    }
    struct vm *vm;
    int r = vm_new(p->name, name, NULL, uuid, &vm);
    if (r < 0)
        return r;
    lv_disk_list disks = {0};
    r = lv_disks_parse(doc, &disks);
    for (size_t i = 0; r == 0 && i < disks.len; i++) {
        const struct lv_disk *d = &disks.ptr[i];
        bool writable = lv_disk_writable(d);
        struct vm_disk vd = {
            .name = strdup(d->target),
            .path = strdup(d->source ? d->source : ""),
            .mode = strdup(writable ? "w" : "r"),
            .snapshot_compatible = writable && (active || lv_disk_offline_readable(d)),
        };
        if (strcmp(d->device, "disk") == 0)
            vd.device_name = strdup(d->target);
        else if (asprintf(&vd.device_name, "%s:%s", d->target, d->device) < 0)
            vd.device_name = NULL;
        if (vd.snapshot_compatible)
            vd.snapshot_mode = strdup(LV_SNAPSHOT_MODE);
        virDomainBlockInfo bi;
        if (d->source && virDomainGetBlockInfo(dom, d->target, &bi, 0) == 0)
            vd.size = bi.capacity;
        if (!vd.name || !vd.path || !vd.mode || !vd.device_name ||
            (vd.snapshot_compatible && !vd.snapshot_mode) ||
            vm_disk_list_append(&vm->disks, vd) < 0) {
            vm_disk_clear(&vd);
            r = -ENOMEM;
        }
    }
    lv_disks_free(&disks);
    if (r < 0) {
        vm_free(vm);
        return r;
    }
    vm_update_snapshot_compatible(vm);
    *out = vm;
    return 0;
}

static int lv_list(struct provider *p, vm_list *out)
{
    CLEANUP_CONN virConnectPtr c = NULL;
    int r = lv_connect(p->priv, &c, NULL, 0);
    if (r < 0)
        return r;
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(c, &doms, 0);
    if (n < 0) {
        log_error("libvirt: listing domains: %s", lv_errmsg());
        return -EIO;
    }
    vm_list l = {0};
    for (int i = 0; i < n; i++) {
        struct vm *vm = NULL;
        if (r == 0) {
            int e = lv_vm_from_domain(p, doms[i], &vm);
            if (e == -ENOMEM)
                r = e;
            /* a domain undefined while listed is simply not listed */
        }
        if (vm && vm_list_append(&l, vm) < 0) {
            vm_free(vm);
            r = -ENOMEM;
        }
        virDomainFree(doms[i]);
    }
    free(doms);
    if (r < 0) {
        vm_list_free(&l);
        return r;
    }
    vm_list_sort_by_id(&l);
    r = vm_list_move(out, &l);
    vm_list_free(&l);
    return r;
}

static int lv_get(struct provider *p, const char *vm_id, struct vm **out)
{
    if (!provider_id_is_safe(vm_id))
        return -ENOENT;
    CLEANUP_CONN virConnectPtr c = NULL;
    int r = lv_connect(p->priv, &c, NULL, 0);
    if (r < 0)
        return r;
    CLEANUP_DOMAIN virDomainPtr dom = virDomainLookupByName(c, vm_id);
    if (!dom)
        return lv_error_is(VIR_ERR_NO_DOMAIN) ? -ENOENT : -EIO;
    return lv_vm_from_domain(p, dom, out);
}

/* ---- locators, checkpoints, jobs ---- */

/* A locator: "<domain UUID>/<snapshot ID>/<disk target>". */
struct lv_locator {
    char uuid[LV_UUID_LEN + 1];
    char snap[LV_ID_MAX + 1];
    char target[LV_ID_MAX + 1];
};

static int lv_locator_parse(const char *s, struct lv_locator *l)
{
    const char *a = strchr(s, '/');
    const char *b = a ? strchr(a + 1, '/') : NULL;
    if (!a || !b || (size_t)(a - s) != LV_UUID_LEN || (size_t)(b - a - 1) > LV_ID_MAX ||
        strlen(b + 1) > LV_ID_MAX)
        return -EINVAL;
    memcpy(l->uuid, s, LV_UUID_LEN);
    l->uuid[LV_UUID_LEN] = '\0';
    memcpy(l->snap, a + 1, (size_t)(b - a - 1));
    l->snap[b - a - 1] = '\0';
    strcpy(l->target, b + 1);
    if (!lv_name_safe(l->uuid) || !lv_name_safe(l->snap) || !lv_name_safe(l->target))
        return -EINVAL;
    return 0;
}

/* The parts of a checkpoint name "vmexport.<chain>.<t hex16>.<snapshot ID>". */
struct lv_cpname {
    char chain[PROVIDER_CHAIN_MAX + 1];
    uint64_t t;
    char snap[LV_ID_MAX + 1];
};

static bool lv_cpname_parse(const char *name, struct lv_cpname *out)
{
    size_t pl = strlen(LV_CHECKPOINT_PREFIX);
    if (strncmp(name, LV_CHECKPOINT_PREFIX, pl) != 0)
        return false;
    const char *c = name + pl;
    const char *d1 = strchr(c, '.');
    if (!d1 || (size_t)(d1 - c) > PROVIDER_CHAIN_MAX)
        return false;
    const char *d2 = strchr(d1 + 1, '.');
    if (!d2 || d2 - d1 - 1 != LV_TIME_HEX || strlen(d2 + 1) > LV_ID_MAX)
        return false;
    memcpy(out->chain, c, (size_t)(d1 - c));
    out->chain[d1 - c] = '\0';
    char hex[LV_TIME_HEX + 1], *end;
    memcpy(hex, d1 + 1, LV_TIME_HEX);
    hex[LV_TIME_HEX] = '\0';
    out->t = strtoull(hex, &end, 16);
    strcpy(out->snap, d2 + 1);
    return *end == '\0' && provider_chain_valid(out->chain) && lv_name_safe(out->snap);
}

/* Our checkpoints of a domain: the one of snapshot snap (when snap), and the newest of chain
 * (when chain).  Names malloc'ed into *of_snap, *newest (NULL: none). */
static int lv_checkpoints_find(virDomainPtr dom, const char *snap, char **of_snap,
                               const char *chain, char **newest)
{
    virDomainCheckpointPtr *cps = NULL;
    int n = virDomainListAllCheckpoints(dom, &cps, 0);
    if (n < 0)
        return -EIO;
    uint64_t best = 0;
    int r = 0;
    for (int i = 0; i < n; i++) {
        struct lv_cpname cn;
        const char *name = virDomainCheckpointGetName(cps[i]);
        if (r == 0 && name && lv_cpname_parse(name, &cn)) {
            if (snap && of_snap && strcmp(cn.snap, snap) == 0 && !*of_snap &&
                !(*of_snap = strdup(name)))
                r = -ENOMEM;
            if (chain && newest && strcmp(cn.chain, chain) == 0 && (!*newest || cn.t > best)) {
                free(*newest);
                best = cn.t;
                if (!(*newest = strdup(name)))
                    r = -ENOMEM;
            }
        }
        virDomainCheckpointFree(cps[i]);
    }
    free(cps);
    return r;
}

/* Whether checkpoint cpname of dom has a bitmap of disk target. */
static bool lv_checkpoint_has_bitmap(virDomainPtr dom, const char *cpname, const char *target)
{
    virDomainCheckpointPtr cp = virDomainCheckpointLookupByName(dom, cpname, 0);
    if (!cp)
        return false;
    CLEANUP_FREE char *xml = virDomainCheckpointGetXMLDesc(cp, VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN);
    virDomainCheckpointFree(cp);
    CLEANUP_DOC xmlDocPtr doc = lv_xml_parse(xml);
    if (!doc)
        return false;
    char expr[128 + LV_ID_MAX];
    snprintf(expr, sizeof(expr), "string(/domaincheckpoint/disks/disk[@name='%s']/@checkpoint)",
             target);
    CLEANUP_FREE char *mode = lv_xpath_str(doc, NULL, expr);
    return mode && strcmp(mode, "bitmap") == 0;
}

static int lv_checkpoint_delete(virDomainPtr dom, const char *cpname)
{
    virDomainCheckpointPtr cp = virDomainCheckpointLookupByName(dom, cpname, 0);
    if (!cp)
        return lv_error_is(VIR_ERR_NO_DOMAIN_CHECKPOINT) ? 0 : -EIO;
    int r = virDomainCheckpointDelete(cp, 0) < 0 ? -EIO : 0;
    if (r < 0)
        log_error("libvirt: deleting checkpoint %s: %s", cpname, lv_errmsg());
    virDomainCheckpointFree(cp);
    return r;
}

/* The running backup job of a domain, as its XML says. */
struct lv_job {
    xmlDocPtr doc; /* NULL: no job */
    char *socket;
    char snap[LV_ID_MAX + 1]; /* "" when the job is not one of ours */
    bool offline;             /* no job: the qemu-storage-daemon of a shut-off domain */
};

static void lv_job_clear(struct lv_job *j)
{
    if (j->doc)
        xmlFreeDoc(j->doc);
    free(j->socket);
    memset(j, 0, sizeof(*j));
}
#define CLEANUP_JOB __attribute__((cleanup(lv_job_clear)))

/* The snapshot a scratch file of ours belongs to: "<scratch_dir>/<snap>.<target>.qcow2". */
static bool lv_scratch_snap(const struct lv_priv *lp, const char *file, char snap[LV_ID_MAX + 1])
{
    size_t dl = strlen(lp->scratch_dir);
    if (strncmp(file, lp->scratch_dir, dl) != 0 || file[dl] != '/')
        return false;
    const char *base = file + dl + 1;
    const char *dot = strchr(base, '.');
    if (!dot || (size_t)(dot - base) > LV_ID_MAX)
        return false;
    memcpy(snap, base, (size_t)(dot - base));
    snap[dot - base] = '\0';
    return lv_name_safe(snap);
}

static int lv_job_get(const struct lv_priv *lp, virDomainPtr dom, struct lv_job *j)
{
    memset(j, 0, sizeof(*j));
    char *xml = virDomainBackupGetXMLDesc(dom, 0);
    if (!xml)
        return lv_error_is(VIR_ERR_NO_DOMAIN_BACKUP) ? 0 : -EIO;
    j->doc = lv_xml_parse(xml);
    free(xml);
    if (!j->doc)
        return -EIO;
    j->socket = lv_xpath_str(j->doc, NULL, "string(/domainbackup/server/@socket)");
    CLEANUP_FREE char *scratch =
        lv_xpath_str(j->doc, NULL, "string(/domainbackup/disks/disk/scratch/@file)");
    if (!scratch || !lv_scratch_snap(lp, scratch, j->snap))
        j->snap[0] = '\0';
    return 0;
}

/* An attribute of the job's disk target (malloc'ed; NULL when absent). */
static char *lv_job_disk_attr(const struct lv_job *j, const char *target, const char *attr)
{
    char expr[128 + 2 * LV_ID_MAX];
    snprintf(expr, sizeof(expr), "string(/domainbackup/disks/disk[@name='%s']/@%s)", target, attr);
    return lv_xpath_str(j->doc, NULL, expr);
}

static int lv_scratch_path(const struct lv_priv *lp, const char *snap, const char *target,
                           char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "%s/%s.%s%s", lp->scratch_dir, snap, target, LV_SCRATCH_SUFFIX);
    return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

/* Removes the scratch files of snapshot snap: those the job names, and target's. */
static void lv_scratch_remove(const struct lv_priv *lp, const struct lv_job *j, const char *snap,
                              const char *target)
{
    int dfd = open(lp->scratch_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return;
    char name[NAME_MAX + 1];
    if (j && j->doc) {
        xmlXPathObjectPtr o = lv_xpath_nodes(j->doc, "/domainbackup/disks/disk[@name]");
        for (int i = 0; o && i < o->nodesetval->nodeNr; i++) {
            CLEANUP_FREE char *t = lv_xpath_str(j->doc, o->nodesetval->nodeTab[i], "string(@name)");
            if (t && lv_name_safe(t) &&
                snprintf(name, sizeof(name), "%s.%s%s", snap, t, LV_SCRATCH_SUFFIX) <
                    (int)sizeof(name))
                unlinkat(dfd, name, 0);
        }
        if (o)
            xmlXPathFreeObject(o);
    }
    if (target && snprintf(name, sizeof(name), "%s.%s%s", snap, target, LV_SCRATCH_SUFFIX) <
                      (int)sizeof(name))
        unlinkat(dfd, name, 0);
    close(dfd);
}

static int lv_qsd_stop(const struct lv_priv *lp, const char *uuid, const char *snap);

/* Has libvirt handle the end of the job's aborted block jobs now, in this call, rather than in
 * the domain's event queue.  Libvirt 9.0 handles there, in order, every change of the guest's
 * virtio-serial ports (VSERPORT_CHANGE: a guest program opening or closing a channel) with a
 * job that a backup job does not allow: each such event waits 30 s for the backup job to end,
 * and the end of the backup job waits behind them, so a guest that toggles a port once in 30 s
 * keeps the job open for good.  virDomainBlockJobAbort of a disk whose backup block job is
 * being cancelled fails ("still being ended"), but on its way out processes the block job's
 * new state (concluded) itself, which ends the backup job. */
static void lv_job_blockjobs_settle(virDomainPtr dom, const struct lv_job *j)
{
    xmlXPathObjectPtr o = lv_xpath_nodes(j->doc, "/domainbackup/disks/disk[@backup='yes']");
    for (int i = 0; o && i < o->nodesetval->nodeNr; i++) {
        CLEANUP_FREE char *t = lv_xpath_str(j->doc, o->nodesetval->nodeTab[i], "string(@name)");
        if (t && lv_name_safe(t) && virDomainBlockJobAbort(dom, t, 0) < 0)
            log_debug("domain %s: disk %s: settling the backup's block job: %s",
                      virDomainGetName(dom), t, lv_errmsg());
    }
    if (o)
        xmlXPathFreeObject(o);
}

/* Ends the backup job of snapshot snap, when it runs, and removes its scratch files.  Aborting
 * is asynchronous in libvirt (and fails while the job is already ending): wait until it is
 * gone, settling its block jobs (lv_job_blockjobs_settle) while it lingers. */
static int lv_job_end(const struct lv_priv *lp, virDomainPtr dom, const char *snap,
                      const char *target)
{
    char uuid[VIR_UUID_STRING_BUFLEN];
    int r = virDomainGetUUIDString(dom, uuid) < 0 ? -EIO : lv_qsd_stop(lp, uuid, snap);
    if (r < 0)
        return r;
    CLEANUP_JOB struct lv_job j;
    if ((r = lv_job_get(lp, dom, &j)) < 0)
        return r;
    bool ours = j.doc && strcmp(j.snap, snap) == 0;
    if (ours && virDomainAbortJob(dom) < 0)
        log_warn("domain %s: aborting the backup job of snapshot %s: %s", virDomainGetName(dom),
                 snap, lv_errmsg());
    for (unsigned waited = 0; ours; waited += LV_JOB_END_POLL_MS) {
        struct lv_job now;
        if ((r = lv_job_get(lp, dom, &now)) < 0)
            return r;
        ours = now.doc && strcmp(now.snap, snap) == 0;
        lv_job_clear(&now);
        if (ours && waited >= LV_JOB_END_TIMEOUT_MS) {
            log_error("libvirt domain %s: the backup job of snapshot %s did not end: %s",
                      virDomainGetName(dom), snap, lv_errmsg());
            return -EBUSY;
        }
        if (ours) {
            usleep(LV_JOB_END_POLL_MS * 1000u);
            /* an abort refused while libvirt held the domain's job lock: again */
            if (waited % LV_JOB_ABORT_RETRY_MS == 0 && virDomainAbortJob(dom) < 0)
                log_debug("domain %s: aborting the backup job of snapshot %s: %s",
                          virDomainGetName(dom), snap, lv_errmsg());
            if (waited >= LV_JOB_SETTLE_AFTER_MS)
                lv_job_blockjobs_settle(dom, &j);
        }
    }
    lv_scratch_remove(lp, &j, snap, target);
    return 0;
}

/* ---- snapshots ---- */

static int lv_snapshot_locate(struct provider *p, const struct vm *vm, const struct vm_disk *disk,
                              const char *snap_id, char **out)
{
    (void)p;
    if (!vm->uuid || strlen(vm->uuid) != LV_UUID_LEN || !lv_name_safe(vm->uuid) ||
        !lv_name_safe(snap_id) || !lv_name_safe(disk->name))
        return -EINVAL;
    if (!disk->snapshot_compatible)
        return -EOPNOTSUPP;
    return asprintf(out, "%s/%s/%s", vm->uuid, snap_id, disk->name) < 0 ? -ENOMEM : 0;
}

/* Whether the domain's guest agent channel is connected (freezing through it can work). */
static bool lv_agent_connected(xmlDocPtr doc)
{
    CLEANUP_FREE char *state = lv_xpath_str(
        doc, NULL, "string(/domain/devices/channel/target[@name='" LV_AGENT_CHANNEL "']/@state)");
    return state && strcmp(state, "connected") == 0;
}

static xmlNodePtr lv_xml_child(xmlNodePtr parent, const char *name)
{
    return xmlNewChild(parent, NULL, (const xmlChar *)name, NULL);
}
static void lv_xml_prop(xmlNodePtr n, const char *name, const char *value)
{
    xmlNewProp(n, (const xmlChar *)name, (const xmlChar *)value);
}

static char *lv_xml_dump(xmlDocPtr doc)
{
    xmlChar *buf = NULL;
    int len = 0;
    xmlDocDumpMemory(doc, &buf, &len);
    char *s = buf ? strndup((const char *)buf, (size_t)len) : NULL;
    xmlFree(buf);
    return s;
}

/* Whether disks (n of them) include the one with target. */
static const struct provider_snapshot_disk *lv_wanted(const struct provider_snapshot_disk *disks,
                                                      size_t n, const char *target)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(disks[i].disk->name, target) == 0)
            return &disks[i];
    return NULL;
}

/* The backup job's and the checkpoint's XML for a snapshot: every wanted disk backed up into its
 * scratch file (incrementally from prev where prev has its bitmap, when incremental), every
 * wanted qcow2 disk with a bitmap in the new checkpoint cpname. */
static int lv_snapshot_xml(const struct lv_priv *lp, virDomainPtr dom, const lv_disk_list *dd,
                           const char *uuid, const char *snap_id,
                           const struct provider_snapshot_disk *disks, size_t n, const char *cpname,
                           const char *prev, bool incremental, char **bxml, char **cxml)
{
    CLEANUP_DOC xmlDocPtr b = xmlNewDoc((const xmlChar *)"1.0");
    CLEANUP_DOC xmlDocPtr c = xmlNewDoc((const xmlChar *)"1.0");
    if (!b || !c)
        return -ENOMEM;
    xmlNodePtr broot = xmlNewNode(NULL, (const xmlChar *)"domainbackup");
    xmlNodePtr croot = xmlNewNode(NULL, (const xmlChar *)"domaincheckpoint");
    if (!broot || !croot)
        return -ENOMEM;
    xmlDocSetRootElement(b, broot);
    xmlDocSetRootElement(c, croot);
    lv_xml_prop(broot, "mode", "pull");
    char sock[PATH_MAX];
    snprintf(sock, sizeof(sock), "%s/%s%s", lp->nbd_dir, uuid, LV_SOCKET_SUFFIX);
    xmlNodePtr server = lv_xml_child(broot, "server");
    lv_xml_prop(server, "transport", "unix");
    lv_xml_prop(server, "socket", sock);
    xmlNodePtr bdisks = lv_xml_child(broot, "disks");
    xmlNewTextChild(croot, NULL, (const xmlChar *)"name", (const xmlChar *)cpname);
    xmlNodePtr cdisks = lv_xml_child(croot, "disks");
    for (size_t i = 0; i < dd->len; i++) {
        const struct lv_disk *d = &dd->ptr[i];
        bool wanted = lv_wanted(disks, n, d->target) != NULL;
        xmlNodePtr bd = lv_xml_child(bdisks, "disk");
        lv_xml_prop(bd, "name", d->target);
        lv_xml_prop(bd, "backup", wanted ? "yes" : "no");
        if (wanted) {
            char scratch[PATH_MAX];
            int r = lv_scratch_path(lp, snap_id, d->target, scratch, sizeof(scratch));
            if (r < 0)
                return r;
            lv_xml_prop(bd, "type", "file");
            if (incremental && prev && lv_checkpoint_has_bitmap(dom, prev, d->target)) {
                lv_xml_prop(bd, "backupmode", "incremental");
                lv_xml_prop(bd, "incremental", prev);
            } else {
                lv_xml_prop(bd, "backupmode", "full");
            }
            lv_xml_prop(lv_xml_child(bd, "scratch"), "file", scratch);
        }
        xmlNodePtr cd = lv_xml_child(cdisks, "disk");
        lv_xml_prop(cd, "name", d->target);
        lv_xml_prop(cd, "checkpoint", wanted && lv_disk_qcow2(d) ? "bitmap" : "no");
    }
    *bxml = lv_xml_dump(b);
    *cxml = lv_xml_dump(c);
    if (!*bxml || !*cxml) {
        free(*bxml);
        free(*cxml);
        return -ENOMEM;
    }
    return 0;
}

/* ---- shut-off domains: their disk files, exported read-only by a qemu-storage-daemon ----
 *
 * A snapshot of a shut-off domain is a qemu-storage-daemon that opens the domain's disks
 * read-only and exports them over NBD on the domain's socket (the same one a backup job
 * uses: one live snapshot per domain either way).  Its read-only opens take QEMU's shared
 * image locks, so the domain cannot start (and change the disks) while the snapshot lives;
 * releasing or deleting the snapshot stops it.  Its pidfile <scratch_dir>/<UUID>.<snapshot
 * ID>.qsd.pid says which snapshot it serves; its QMP monitor <nbd_dir>/<UUID>.qmp is how
 * disk_changes reads the images' bitmaps.  Disk target T is node d-T (format) over f-T (file),
 * exported as T. */

#define LV_QSD_PROGRAM    "qemu-storage-daemon"
#define LV_QSD_PID_SUFFIX ".qsd.pid"
#define LV_QMP_SUFFIX     ".qmp"
#define LV_QSD_ARGS_MAX   (12 + 6 * PROVIDER_MAX_DISKS) /* program, server, QMP, pidfile; disks */
#define LV_PID_TEXT_MAX   32
#define LV_NODE_MAX       32 /* bytes of a QEMU node name or ID, its NUL included */

static int lv_qsd_pidfile(const struct lv_priv *lp, const char *uuid, const char *snap, char *out,
                          size_t outlen)
{
    int n = snprintf(out, outlen, "%s/%s.%s%s", lp->scratch_dir, uuid, snap, LV_QSD_PID_SUFFIX);
    return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

/* Whether process pid runs with the argument arg (a zombie has no arguments). */
static bool lv_pid_has_arg(pid_t pid, const char *arg)
{
    char path[64], buf[8192];
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    for (ssize_t i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1)
        if (strcmp(buf + i, arg) == 0)
            return true;
    return false;
}

/* The qemu-storage-daemon serving snapshot snap of domain uuid: its PID, or 0. */
static pid_t lv_qsd_pid(const struct lv_priv *lp, const char *uuid, const char *snap)
{
    char pidfile[PATH_MAX], text[LV_PID_TEXT_MAX];
    if (lv_qsd_pidfile(lp, uuid, snap, pidfile, sizeof(pidfile)) < 0)
        return 0;
    int fd = open(pidfile, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    text[n] = '\0';
    long pid = strtol(text, NULL, 10);
    /* a PID reused by another process does not name our pidfile */
    return pid > 1 && pid <= INT_MAX && lv_pid_has_arg((pid_t)pid, pidfile) ? (pid_t)pid : 0;
}

static void lv_socket_path(const struct lv_priv *lp, const char *uuid, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s/%s%s", lp->nbd_dir, uuid, LV_SOCKET_SUFFIX);
}

static void lv_qmp_path(const struct lv_priv *lp, const char *uuid, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s/%s%s", lp->nbd_dir, uuid, LV_QMP_SUFFIX);
}

/* The qemu-storage-daemon's name of disk target's node or object: kind 'd' (format node), 'f'
 * (file node), 'e' (export ID), 'c' (the export of its changes); -ENAMETOOLONG when the
 * target is too long for one. */
static int lv_qsd_node(char kind, const char *target, char out[LV_NODE_MAX])
{
    int n = snprintf(out, LV_NODE_MAX, "%c-%s", kind, target);
    return n < 0 || n >= LV_NODE_MAX ? -ENAMETOOLONG : 0;
}

/* Stops the qemu-storage-daemon of snapshot snap (0 when none runs). */
static int lv_qsd_stop(const struct lv_priv *lp, const char *uuid, const char *snap)
{
    char pidfile[PATH_MAX], sock[PATH_MAX];
    int r = lv_qsd_pidfile(lp, uuid, snap, pidfile, sizeof(pidfile));
    if (r < 0)
        return r;
    pid_t pid = lv_qsd_pid(lp, uuid, snap);
    if (pid > 0) {
        /* SIGTERM waits for NBD clients (the daemon's open readers) to leave; the process
         * only reads, so killing it loses nothing */
        kill(pid, SIGKILL);
        for (unsigned waited = 0; lv_pid_has_arg(pid, pidfile); waited += LV_JOB_END_POLL_MS) {
            if (waited >= LV_JOB_END_TIMEOUT_MS) {
                log_error("snapshot %s: qemu-storage-daemon %d did not stop", snap, (int)pid);
                return -EBUSY;
            }
            usleep(LV_JOB_END_POLL_MS * 1000u);
        }
        lv_socket_path(lp, uuid, sock, sizeof(sock));
        unlink(sock);
        lv_qmp_path(lp, uuid, sock, sizeof(sock));
        unlink(sock);
    }
    unlink(pidfile);
    return 0;
}

/* The snapshot whose qemu-storage-daemon serves domain uuid (into snap): 1, or 0 when none. */
static int lv_qsd_find(const struct lv_priv *lp, const char *uuid, char snap[LV_ID_MAX + 1])
{
    DIR *d = opendir(lp->scratch_dir);
    if (!d)
        return 0;
    int found = 0;
    size_t ul = strlen(uuid), sl = strlen(LV_QSD_PID_SUFFIX);
    for (struct dirent *e; !found && (e = readdir(d));) {
        size_t nl = strlen(e->d_name);
        if (nl <= ul + 1 + sl || strncmp(e->d_name, uuid, ul) != 0 || e->d_name[ul] != '.' ||
            strcmp(e->d_name + nl - sl, LV_QSD_PID_SUFFIX) != 0 || nl - ul - 1 - sl > LV_ID_MAX)
            continue;
        memcpy(snap, e->d_name + ul + 1, nl - ul - 1 - sl);
        snap[nl - ul - 1 - sl] = '\0';
        found = lv_name_safe(snap) && lv_qsd_pid(lp, uuid, snap) > 0;
    }
    closedir(d);
    return found;
}

/* A JSON argument of qemu-storage-daemon (malloc'ed into the NULL-terminated list args). */
static int lv_arg_json(char **args, size_t *n, json_t *j)
{
    if (!j)
        return -ENOMEM;
    args[*n] = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return args[(*n)++] ? 0 : -ENOMEM;
}

static int lv_arg(char **args, size_t *n, const char *s)
{
    args[*n] = strdup(s);
    return args[(*n)++] ? 0 : -ENOMEM;
}

/* Starts the qemu-storage-daemon of a snapshot of the shut-off domain uuid over the wanted
 * disks of dd; returns once its exports are up (--daemonize). */
static int lv_qsd_start(const struct lv_priv *lp, const char *vm_id, const char *uuid,
                        const char *snap, const lv_disk_list *dd,
                        const struct provider_snapshot_disk *disks, size_t n, char *err,
                        size_t errlen)
{
    char pidfile[PATH_MAX], sock[PATH_MAX], qmp[PATH_MAX], chardev[2 * PATH_MAX + 64];
    int r = lv_qsd_pidfile(lp, uuid, snap, pidfile, sizeof(pidfile));
    if (r < 0)
        return r;
    lv_socket_path(lp, uuid, sock, sizeof(sock));
    lv_qmp_path(lp, uuid, qmp, sizeof(qmp));
    unlink(sock); /* left by a daemon that died */
    unlink(qmp);
    /* QEMU's option syntax: a comma in a value is doubled */
    size_t cl =
        (size_t)snprintf(chardev, sizeof(chardev), "socket,id=qmp,server=on,wait=off,path=");
    for (const char *c = qmp; *c && cl + 2 < sizeof(chardev); c++) {
        if (*c == ',')
            chardev[cl++] = ',';
        chardev[cl++] = *c;
    }
    chardev[cl] = '\0';
    char *args[LV_QSD_ARGS_MAX] = {NULL};
    size_t na = 0;
    /* the server first: --export needs it */
    if ((r = lv_arg(args, &na, LV_QSD_PROGRAM)) == 0 &&
        (r = lv_arg(args, &na, "--nbd-server")) == 0)
        r = lv_arg_json(args, &na,
                        json_pack("{s:{s:s, s:s}}", "addr", "type", "unix", "path", sock));
    if (r == 0 && (r = lv_arg(args, &na, "--chardev")) == 0 &&
        (r = lv_arg(args, &na, chardev)) == 0 && (r = lv_arg(args, &na, "--monitor")) == 0)
        r = lv_arg(args, &na, "chardev=qmp");
    for (size_t i = 0; r == 0 && i < dd->len; i++) {
        const struct lv_disk *d = &dd->ptr[i];
        if (!lv_wanted(disks, n, d->target))
            continue;
        if (!lv_disk_offline_readable(d)) {
            snprintf(err, errlen, "domain %s: disk %s cannot be read while it is shut off", vm_id,
                     d->target);
            r = -EOPNOTSUPP;
            break;
        }
        char file_node[LV_NODE_MAX], fmt_node[LV_NODE_MAX], name[LV_NODE_MAX];
        if ((r = lv_qsd_node('f', d->target, file_node)) < 0 ||
            (r = lv_qsd_node('d', d->target, fmt_node)) < 0 ||
            (r = lv_qsd_node('e', d->target, name)) < 0) {
            snprintf(err, errlen, "domain %s: disk target %s is too long", vm_id, d->target);
            break;
        }
        const char *drv = strcmp(d->type, "block") == 0 ? "host_device" : "file";
        if ((r = lv_arg(args, &na, "--blockdev")) < 0 ||
            (r = lv_arg_json(args, &na,
                             json_pack("{s:s, s:s, s:s, s:b}", "driver", drv, "node-name",
                                       file_node, "filename", d->source, "read-only", 1))) < 0 ||
            (r = lv_arg(args, &na, "--blockdev")) < 0 ||
            (r = lv_arg_json(args, &na,
                             json_pack("{s:s, s:s, s:s, s:b}", "driver", d->format, "node-name",
                                       fmt_node, "file", file_node, "read-only", 1))) < 0 ||
            (r = lv_arg(args, &na, "--export")) < 0 ||
            (r = lv_arg_json(args, &na,
                             json_pack("{s:s, s:s, s:s, s:s}", "type", "nbd", "id", name,
                                       "node-name", fmt_node, "name", d->target))) < 0)
            break;
    }
    if (r == 0 &&
        ((r = lv_arg(args, &na, "--daemonize")) < 0 || (r = lv_arg(args, &na, "--pidfile")) < 0 ||
         (r = lv_arg(args, &na, pidfile)) < 0))
        snprintf(err, errlen, "no memory");
    if (r == 0) {
        pid_t pid;
        int st = 0;
        r = posix_spawnp(&pid, LV_QSD_PROGRAM, NULL, NULL, args, environ);
        if (r != 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            snprintf(err, errlen,
                     "domain %s: qemu-storage-daemon could not open its disks read-only (%s)",
                     vm_id, r ? strerror(r) : "it failed: is the domain starting?");
            r = -EIO;
        }
    }
    for (size_t i = 0; i < na; i++)
        free(args[i]);
    return r;
}

/* ---- shut-off domains: positions in the chain ----
 *
 * A snapshot of a shut-off domain makes no checkpoint; its record <scratch_dir>/<UUID>.<snapshot
 * ID>.offline (JSON: "chain", "checkpoint": the chain's newest checkpoint when it was taken, or
 * null) says where its changes count from: changes since that checkpoint include those since
 * the snapshot.  The record lives until the snapshot is deleted (a released snapshot stays a
 * base).  A checkpoint that records name stays while they live: deleting its own snapshot
 * leaves it to them ("adopted"), and the last of them deletes it. */

#define LV_RECORD_SUFFIX ".offline"
#define LV_RECORD_TMP    ".tmp"
#define LV_RECORD_MAX    4096 /* bytes of a record */

struct lv_record {
    char chain[PROVIDER_CHAIN_MAX + 1];
    char *checkpoint; /* NULL: the chain had none */
    bool adopted;     /* its snapshot was deleted: the records delete it */
};

static void lv_record_clear(struct lv_record *rec)
{
    free(rec->checkpoint);
    memset(rec, 0, sizeof(*rec));
}
#define CLEANUP_RECORD __attribute__((cleanup(lv_record_clear)))

static int lv_record_name(const char *uuid, const char *snap, const char *suffix, char *out,
                          size_t outlen)
{
    int n = snprintf(out, outlen, "%s.%s%s%s", uuid, snap, LV_RECORD_SUFFIX, suffix);
    return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

/* The record of snapshot snap: 0, -ENOENT (none: not a shut-off domain's snapshot), -EINVAL
 * (unreadable). */
static int lv_record_read(const struct lv_priv *lp, const char *uuid, const char *snap,
                          struct lv_record *rec)
{
    memset(rec, 0, sizeof(*rec));
    char name[NAME_MAX + 1], text[LV_RECORD_MAX + 1];
    int r = lv_record_name(uuid, snap, "", name, sizeof(name));
    if (r < 0)
        return r;
    CLEANUP_CLOSE int dfd = open(lp->scratch_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    CLEANUP_CLOSE int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, text, LV_RECORD_MAX);
    if (n < 0)
        return -errno;
    text[n] = '\0';
    json_t *j = json_loads(text, 0, NULL);
    const char *chain = json_string_value(json_object_get(j, "chain"));
    const char *cp = json_string_value(json_object_get(j, "checkpoint"));
    struct lv_cpname cn;
    r = chain && provider_chain_valid(chain) && (!cp || lv_cpname_parse(cp, &cn)) ? 0 : -EINVAL;
    if (r == 0) {
        snprintf(rec->chain, sizeof(rec->chain), "%s", chain);
        rec->adopted = json_is_true(json_object_get(j, "adopted"));
        if (cp && !(rec->checkpoint = strdup(cp)))
            r = -ENOMEM;
    }
    json_decref(j);
    if (r == -EINVAL)
        log_error("libvirt: %s/%s: not a record of a shut-off snapshot", lp->scratch_dir, name);
    return r;
}

/* Writes (replaces) the record of snapshot snap: 0600, in place at once (rename). */
static int lv_record_write(const struct lv_priv *lp, const char *uuid, const char *snap,
                           const struct lv_record *rec)
{
    char name[NAME_MAX + 1], tmp[NAME_MAX + 1];
    int r = lv_record_name(uuid, snap, "", name, sizeof(name));
    if (r < 0 || (r = lv_record_name(uuid, snap, LV_RECORD_TMP, tmp, sizeof(tmp))) < 0)
        return r;
    json_t *j = json_pack("{s:s, s:s?, s:b}", "chain", rec->chain, "checkpoint", rec->checkpoint,
                          "adopted", rec->adopted);
    CLEANUP_FREE char *text = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    if (!text)
        return -ENOMEM;
    CLEANUP_CLOSE int dfd = open(lp->scratch_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    size_t len = strlen(text);
    r = write(fd, text, len) == (ssize_t)len && fsync(fd) == 0 ? 0 : -EIO;
    close(fd);
    if (r == 0 && renameat(dfd, tmp, dfd, name) < 0)
        r = -errno;
    if (r < 0) {
        unlinkat(dfd, tmp, 0);
        log_error("libvirt: writing %s/%s: %s", lp->scratch_dir, name, strerror(-r));
    }
    return r;
}

static void lv_record_remove(const struct lv_priv *lp, const char *uuid, const char *snap)
{
    char name[NAME_MAX + 1];
    int dfd = open(lp->scratch_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return;
    if (lv_record_name(uuid, snap, "", name, sizeof(name)) == 0)
        unlinkat(dfd, name, 0);
    close(dfd);
}

/* Marks the records of domain uuid that name checkpoint cp (but snapshot except's) adopted:
 * their number, or a negative errno. */
static int lv_records_adopt(const struct lv_priv *lp, const char *uuid, const char *cp,
                            const char *except)
{
    DIR *d = opendir(lp->scratch_dir);
    if (!d)
        return -errno;
    int n = 0;
    size_t ul = strlen(uuid), sl = strlen(LV_RECORD_SUFFIX);
    for (struct dirent *e; n >= 0 && (e = readdir(d));) {
        size_t nl = strlen(e->d_name);
        char snap[LV_ID_MAX + 1];
        if (nl <= ul + 1 + sl || strncmp(e->d_name, uuid, ul) != 0 || e->d_name[ul] != '.' ||
            strcmp(e->d_name + nl - sl, LV_RECORD_SUFFIX) != 0 || nl - ul - 1 - sl > LV_ID_MAX)
            continue;
        memcpy(snap, e->d_name + ul + 1, nl - ul - 1 - sl);
        snap[nl - ul - 1 - sl] = '\0';
        CLEANUP_RECORD struct lv_record rec = {0};
        if (!lv_name_safe(snap) || (except && strcmp(snap, except) == 0) ||
            lv_record_read(lp, uuid, snap, &rec) < 0 || !rec.checkpoint ||
            strcmp(rec.checkpoint, cp) != 0)
            continue;
        n++;
        if (!rec.adopted) {
            rec.adopted = true;
            int r = lv_record_write(lp, uuid, snap, &rec);
            n = r < 0 ? r : n;
        }
    }
    closedir(d);
    return n;
}

/* Whether checkpoint cpname of dom exists. */
static bool lv_checkpoint_exists(virDomainPtr dom, const char *cpname)
{
    virDomainCheckpointPtr cp = virDomainCheckpointLookupByName(dom, cpname, 0);
    if (cp)
        virDomainCheckpointFree(cp);
    return cp != NULL;
}

/* Where the changes of snapshot snap of dom count from. */
struct lv_position {
    char chain[PROVIDER_CHAIN_MAX + 1];
    char *checkpoint; /* NULL: none (see gone) */
    uint64_t t;       /* the checkpoint's time */
    bool offline;     /* a shut-off domain's snapshot: a record, not a checkpoint of its own */
    bool gone;        /* the record's checkpoint is gone */
};

static void lv_position_clear(struct lv_position *pos)
{
    free(pos->checkpoint);
    memset(pos, 0, sizeof(*pos));
}
#define CLEANUP_POSITION __attribute__((cleanup(lv_position_clear)))

/* The position of snapshot snap of domain dom (UUID uuid): its own checkpoint (a running
 * domain's snapshot) or its record's.  -ESTALE with err saying why when it has neither. */
static int lv_position_get(const struct lv_priv *lp, virDomainPtr dom, const char *uuid,
                           const char *snap, struct lv_position *pos, char *err, size_t errlen)
{
    memset(pos, 0, sizeof(*pos));
    int r = lv_checkpoints_find(dom, snap, &pos->checkpoint, NULL, NULL);
    if (r < 0) {
        snprintf(err, errlen, "domain %s: listing checkpoints: %s", uuid, lv_errmsg());
        return r;
    }
    struct lv_cpname cn;
    if (!pos->checkpoint) {
        CLEANUP_RECORD struct lv_record rec = {0};
        r = lv_record_read(lp, uuid, snap, &rec);
        if (r == -ENOENT || r == -EINVAL) {
            snprintf(err, errlen, "the checkpoint of snapshot %s is gone", snap);
            return -ESTALE;
        }
        if (r < 0)
            return r;
        pos->offline = true;
        snprintf(pos->chain, sizeof(pos->chain), "%s", rec.chain);
        if (rec.checkpoint && !lv_checkpoint_exists(dom, rec.checkpoint)) {
            pos->gone = true;
            return 0;
        }
        pos->checkpoint = TAKE_PTR(rec.checkpoint);
    }
    if (pos->checkpoint && !lv_cpname_parse(pos->checkpoint, &cn)) {
        snprintf(err, errlen, "checkpoint %s of snapshot %s is not one of vmexport",
                 pos->checkpoint, snap);
        return -ESTALE;
    }
    if (pos->checkpoint) {
        snprintf(pos->chain, sizeof(pos->chain), "%s", cn.chain);
        pos->t = cn.t;
    }
    return 0;
}

/* The sizes of a snapshot's disks, as the domain sees them now, and how they were taken. */
static int lv_disks_fill(virDomainPtr dom, const struct vm *vm,
                         struct provider_snapshot_disk *disks, size_t n, const char *mode,
                         char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        virDomainBlockInfo bi;
        if (virDomainGetBlockInfo(dom, disks[i].disk->name, &bi, 0) < 0) {
            snprintf(err, errlen, "domain %s: disk %s: size: %s", vm->id, disks[i].disk->name,
                     lv_errmsg());
            return -EIO;
        }
        disks[i].size = bi.capacity;
        if (!(disks[i].mode = strdup(mode)))
            return -ENOMEM;
    }
    return 0;
}

/* A snapshot of the shut-off domain vm: its qemu-storage-daemon (ending the one of an earlier
 * snapshot: one per domain), between the quiesce hooks, and its record of the chain's newest
 * checkpoint. */
static int lv_offline_snapshot(struct lv_priv *lp, virDomainPtr dom, const struct vm *vm,
                               const char *snap_id, const char *chain, const lv_disk_list *dd,
                               struct provider_snapshot_disk *disks, size_t n,
                               const struct provider_quiesce *q, char *err, size_t errlen)
{
    pthread_mutex_lock(&lp->job_lock);
    char old[LV_ID_MAX + 1];
    CLEANUP_RECORD struct lv_record rec = {0};
    snprintf(rec.chain, sizeof(rec.chain), "%s", chain);
    int r = lv_checkpoints_find(dom, NULL, NULL, chain, &rec.checkpoint);
    if (r < 0)
        snprintf(err, errlen, "domain %s: listing checkpoints: %s", vm->id, lv_errmsg());
    if (r == 0 && (r = lv_record_write(lp, vm->uuid, snap_id, &rec)) < 0)
        snprintf(err, errlen, "domain %s: writing the snapshot's record in %s: %s", vm->id,
                 lp->scratch_dir, strerror(-r));
    if (r == 0 && lv_qsd_find(lp, vm->uuid, old)) {
        log_info("domain %s: ending the live snapshot %s for a new one", vm->id, old);
        if ((r = lv_qsd_stop(lp, vm->uuid, old)) < 0)
            snprintf(err, errlen, "domain %s: the live snapshot %s does not end", vm->id, old);
    }
    bool hooked = false;
    if (r == 0 && q && q->freeze) {
        r = q->freeze(q->opaque, err, errlen);
        hooked = r == 0;
    }
    if (r == 0)
        r = lv_qsd_start(lp, vm->id, vm->uuid, snap_id, dd, disks, n, err, errlen);
    if (hooked && q->thaw)
        q->thaw(q->opaque, r);
    if (r == 0)
        r = lv_disks_fill(dom, vm, disks, n, LV_OFFLINE_MODE, err, errlen);
    if (r < 0) {
        lv_qsd_stop(lp, vm->uuid, snap_id);
        lv_record_remove(lp, vm->uuid, snap_id);
    }
    pthread_mutex_unlock(&lp->job_lock);
    return r;
}

static uint64_t lv_now_ns(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Frees the way for a new snapshot of chain: no backup job, or ours of the same chain (ended
 * then; its checkpoint stays). */
static int lv_job_make_room(const struct lv_priv *lp, virDomainPtr dom, const char *vm_id,
                            const char *chain, char *err, size_t errlen)
{
    CLEANUP_JOB struct lv_job j;
    int r = lv_job_get(lp, dom, &j);
    if (r < 0) {
        snprintf(err, errlen, "domain %s: reading its backup job: %s", vm_id, lv_errmsg());
        return r;
    }
    if (!j.doc)
        return 0;
    if (!j.snap[0]) {
        snprintf(err, errlen,
                 "domain %s runs a backup job that is not vmexport's (libvirt runs one per "
                 "domain)",
                 vm_id);
        return -EBUSY;
    }
    CLEANUP_FREE char *cp = NULL;
    if ((r = lv_checkpoints_find(dom, j.snap, &cp, NULL, NULL)) < 0)
        return r;
    struct lv_cpname cn;
    if (cp && lv_cpname_parse(cp, &cn) && strcmp(cn.chain, chain) != 0) {
        snprintf(err, errlen,
                 "domain %s: snapshot %s of chain %s is live (libvirt runs one backup job per "
                 "domain): release or delete it first",
                 vm_id, j.snap, cn.chain);
        return -EBUSY;
    }
    log_info("domain %s: ending the live snapshot %s for a new one of chain %s", vm_id, j.snap,
             chain);
    r = lv_job_end(lp, dom, j.snap, NULL);
    if (r < 0)
        snprintf(err, errlen, "domain %s: the backup job of live snapshot %s did not end: %s",
                 vm_id, j.snap, strerror(-r));
    return r;
}

static int lv_snapshot_create(struct provider *p, const struct vm *vm, const char *snap_id,
                              struct provider_snapshot_request *req,
                              struct provider_snapshot_disk *disks, size_t n,
                              const struct provider_quiesce *q, char *err, size_t errlen)
{
    struct lv_priv *lp = p->priv;
    req->frozen = false;
    req->frozen_us = 0;
    if (!provider_chain_valid(req->chain) || !lv_name_safe(snap_id) || !vm->uuid) {
        snprintf(err, errlen, "domain %s: invalid snapshot or chain ID", vm->id);
        return -EINVAL;
    }
    CLEANUP_CONN virConnectPtr c = NULL;
    int r = lv_connect(lp, &c, err, errlen);
    if (r < 0)
        return r;
    CLEANUP_DOMAIN virDomainPtr dom = NULL;
    if ((r = lv_domain_by_uuid(c, vm->uuid, &dom)) < 0) {
        snprintf(err, errlen, "domain %s: %s", vm->id, r == -ENOENT ? "gone" : lv_errmsg());
        return r;
    }
    bool active = virDomainIsActive(dom) == 1;
    CLEANUP_FREE char *xml = virDomainGetXMLDesc(dom, 0);
    CLEANUP_DOC xmlDocPtr doc = lv_xml_parse(xml);
    if (!doc) {
        snprintf(err, errlen, "domain %s: no readable XML: %s", vm->id, lv_errmsg());
        return -EIO;
    }
    lv_disk_list dd = {0};
    if ((r = lv_disks_parse(doc, &dd)) < 0) {
        lv_disks_free(&dd);
        return r;
    }
    for (size_t i = 0; i < n; i++) {
        bool found = false;
        for (size_t k = 0; k < dd.len; k++)
            found |=
                strcmp(dd.ptr[k].target, disks[i].disk->name) == 0 && lv_disk_writable(&dd.ptr[k]);
        if (!found) {
            snprintf(err, errlen, "domain %s: disk %s: gone or not writable any more", vm->id,
                     disks[i].disk->name);
            lv_disks_free(&dd);
            return -ESTALE;
        }
    }
    if (!active) {
        r = lv_offline_snapshot(lp, dom, vm, snap_id, req->chain, &dd, disks, n, q, err, errlen);
        lv_disks_free(&dd);
        return r;
    }
    pthread_mutex_lock(&lp->job_lock);
    CLEANUP_FREE char *prev = NULL, *bxml = NULL, *cxml = NULL;
    char cpname[sizeof(LV_CHECKPOINT_PREFIX) + PROVIDER_CHAIN_MAX + LV_TIME_HEX + LV_ID_MAX + 4];
    snprintf(cpname, sizeof(cpname), LV_CHECKPOINT_PREFIX "%s.%016" PRIx64 ".%s", req->chain,
             lv_now_ns(CLOCK_REALTIME), snap_id);
    char sock[PATH_MAX];
    snprintf(sock, sizeof(sock), "%s/%s%s", lp->nbd_dir, vm->uuid, LV_SOCKET_SUFFIX);
    r = lv_job_make_room(lp, dom, vm->id, req->chain, err, errlen);
    if (r == 0 && (r = lv_checkpoints_find(dom, NULL, NULL, req->chain, &prev)) < 0)
        snprintf(err, errlen, "domain %s: listing checkpoints: %s", vm->id, lv_errmsg());
    if (r == 0)
        unlink(sock); /* left by a job that ended with libvirtd down */
    bool freezing = false, hooked = false;
    if (r == 0 && q && q->freeze) {
        r = q->freeze(q->opaque, err, errlen);
        hooked = r == 0;
    }
    uint64_t t_freeze = 0;
    if (r == 0 && lv_agent_connected(doc)) {
        t_freeze = lv_now_ns(CLOCK_MONOTONIC);
        if (virDomainFSFreeze(dom, NULL, 0, 0) >= 0)
            freezing = true;
        else
            log_warn("domain %s: guest agent freeze failed, snapshot not frozen: %s", vm->id,
                     lv_errmsg());
    }
    for (int attempt = 0; r == 0 && attempt < 2; attempt++) {
        bool incremental = attempt == 0;
        free(bxml);
        free(cxml);
        bxml = cxml = NULL;
        r = lv_snapshot_xml(lp, dom, &dd, vm->uuid, snap_id, disks, n, cpname, prev, incremental,
                            &bxml, &cxml);
        if (r < 0)
            break;
        if (virDomainBackupBegin(dom, bxml, cxml, 0) == 0)
            break;
        if (incremental && prev) {
            /* e.g. the previous checkpoint's bitmap is inconsistent after a crash: no
             * incremental on a broken chain, every disk in full */
            log_warn("domain %s: incremental backup job from checkpoint %s refused (%s): "
                     "snapshot %s is taken in full",
                     vm->id, prev, lv_errmsg(), snap_id);
            lv_scratch_remove(lp, NULL, snap_id, NULL);
            for (size_t i = 0; i < n; i++)
                lv_scratch_remove(lp, NULL, snap_id, disks[i].disk->name);
            continue;
        }
        snprintf(err, errlen, "domain %s: starting the backup job: %s", vm->id, lv_errmsg());
        r = -EIO;
    }
    if (freezing) {
        if (virDomainFSThaw(dom, NULL, 0, 0) < 0)
            log_error("domain %s: guest agent thaw failed: %s", vm->id, lv_errmsg());
        req->frozen = true;
        req->frozen_us = (lv_now_ns(CLOCK_MONOTONIC) - t_freeze) / 1000u;
    }
    if (hooked && q->thaw)
        q->thaw(q->opaque, r);
    if (r == 0)
        r = lv_disks_fill(dom, vm, disks, n, LV_SNAPSHOT_MODE, err, errlen);
    if (r < 0 && bxml) {
        lv_job_end(lp, dom, snap_id, NULL);
        lv_checkpoint_delete(dom, cpname);
    }
    pthread_mutex_unlock(&lp->job_lock);
    lv_disks_free(&dd);
    return r;
}

static int lv_snapshot_release(struct provider *p, const char *locator)
{
    struct lv_priv *lp = p->priv;
    struct lv_locator l;
    if (lv_locator_parse(locator, &l) < 0)
        return -EINVAL;
    CLEANUP_CONN virConnectPtr c = NULL;
    int r = lv_connect(lp, &c, NULL, 0);
    if (r < 0)
        return r;
    CLEANUP_DOMAIN virDomainPtr dom = NULL;
    r = lv_domain_by_uuid(c, l.uuid, &dom);
    if (r == -ENOENT) {
        lv_scratch_remove(lp, NULL, l.snap, l.target);
        return lv_qsd_stop(lp, l.uuid, l.snap);
    }
    if (r < 0)
        return r;
    pthread_mutex_lock(&lp->job_lock);
    r = lv_job_end(lp, dom, l.snap, l.target);
    pthread_mutex_unlock(&lp->job_lock);
    return r;
}

static int lv_snapshot_delete(struct provider *p, const char *locator)
{
    struct lv_priv *lp = p->priv;
    struct lv_locator l;
    if (lv_locator_parse(locator, &l) < 0)
        return -EINVAL;
    int r = lv_snapshot_release(p, locator);
    if (r < 0)
        return r;
    CLEANUP_CONN virConnectPtr c = NULL;
    if ((r = lv_connect(lp, &c, NULL, 0)) < 0)
        return r;
    CLEANUP_DOMAIN virDomainPtr dom = NULL;
    r = lv_domain_by_uuid(c, l.uuid, &dom);
    if (r == -ENOENT) {
        lv_record_remove(lp, l.uuid, l.snap);
        return 0;
    }
    if (r < 0)
        return r;
    pthread_mutex_lock(&lp->job_lock);
    CLEANUP_FREE char *cp = NULL;
    CLEANUP_RECORD struct lv_record rec = {0};
    r = lv_checkpoints_find(dom, l.snap, &cp, NULL, NULL);
    if (r == 0 && cp) {
        /* the position of shut-off snapshots: theirs now */
        int n = lv_records_adopt(lp, l.uuid, cp, NULL);
        if (n > 0)
            log_info("domain %s: checkpoint %s stays: snapshots of the shut-off domain count "
                     "their changes from it",
                     virDomainGetName(dom), cp);
        r = n > 0 ? 0 : lv_checkpoint_delete(dom, cp);
    } else if (r == 0 && lv_record_read(lp, l.uuid, l.snap, &rec) == 0) {
        /* a shut-off snapshot: the last record of an adopted checkpoint deletes it */
        int n = rec.adopted && rec.checkpoint ? lv_records_adopt(lp, l.uuid, rec.checkpoint, l.snap)
                                              : 1;
        r = n == 0 ? lv_checkpoint_delete(dom, rec.checkpoint) : n < 0 ? n : 0;
        if (r == 0)
            lv_record_remove(lp, l.uuid, l.snap);
    }
    pthread_mutex_unlock(&lp->job_lock);
    return r;
}

/* ---- reading: an NBD export of the snapshot's backup job ---- */

struct lv_reader {
    struct disk_reader r;
    struct nbdio *nbd;
};

static int lv_reader_pread(struct disk_reader *dr, void *buf, size_t n, uint64_t off,
                           unsigned flags, size_t *got)
{
    (void)flags;
    struct lv_reader *lr = (struct lv_reader *)dr;
    *got = 0;
    if (off >= dr->size)
        return 0;
    if (n > dr->size - off)
        n = (size_t)(dr->size - off);
    int r = nbdio_pread(lr->nbd, buf, n, off);
    if (r < 0)
        return r;
    *got = n;
    return 0;
}

static bool lv_reader_cached(struct disk_reader *dr, uint64_t off, size_t n)
{
    (void)dr;
    (void)off;
    (void)n;
    return true; /* no page cache of ours to skip */
}

static int lv_reader_size(struct disk_reader *dr, uint64_t *size)
{
    *size = dr->size;
    return 0;
}

struct lv_map_ctx {
    struct disk_map_sink *sink;
};

static int lv_map_status(void *opaque, uint64_t off, uint64_t len, uint32_t flags)
{
    struct lv_map_ctx *m = opaque;
    if (flags & NBDIO_STATE_HOLE)
        return 0;
    struct extent e = {.start = off,
                       .length = len,
                       .physical = 0,
                       .flags = EXTENT_PHYS_UNKNOWN |
                                ((flags & NBDIO_STATE_ZERO) ? EXTENT_UNWRITTEN : 0)};
    return m->sink->emit(m->sink->opaque, &e);
}

static int lv_reader_map(struct disk_reader *dr, unsigned flags, struct disk_map_sink *sink)
{
    (void)flags;
    struct lv_reader *lr = (struct lv_reader *)dr;
    struct lv_map_ctx m = {.sink = sink};
    return nbdio_block_status(lr->nbd, NBDIO_CONTEXT_ALLOCATION, 0, dr->size, lv_map_status, &m);
}

static int lv_reader_dup_fd(struct disk_reader *dr)
{
    (void)dr;
    return -EOPNOTSUPP;
}

static void lv_reader_close(struct disk_reader *dr)
{
    struct lv_reader *lr = (struct lv_reader *)dr;
    nbdio_close(lr->nbd);
    free(lr);
}

static const struct disk_reader_ops lv_reader_ops = {
    .pread = lv_reader_pread,
    .cached = lv_reader_cached,
    .size = lv_reader_size,
    .map = lv_reader_map,
    .dup_fd = lv_reader_dup_fd,
    .close = lv_reader_close,
};

/* The live job of the snapshot at l and its export of l's disk: 0, or -ESTALE with err saying
 * why there is none. */
static int lv_export_find(struct provider *p, const struct lv_locator *l, struct lv_job *j,
                          char **export, char *err, size_t errlen)
{
    struct lv_priv *lp = p->priv;
    if (lv_qsd_pid(lp, l->uuid, l->snap) > 0) {
        char sock[PATH_MAX];
        lv_socket_path(lp, l->uuid, sock, sizeof(sock));
        j->offline = true;
        j->socket = strdup(sock);
        *export = strdup(l->target);
        return j->socket && *export ? 0 : -ENOMEM;
    }
    CLEANUP_CONN virConnectPtr c = NULL;
    int r = lv_connect(lp, &c, err, errlen);
    if (r < 0)
        return r;
    CLEANUP_DOMAIN virDomainPtr dom = NULL;
    r = lv_domain_by_uuid(c, l->uuid, &dom);
    if (r < 0) {
        snprintf(err, errlen, "domain %s: %s", l->uuid, r == -ENOENT ? "gone" : lv_errmsg());
        return r == -ENOENT ? -ESTALE : r;
    }
    if ((r = lv_job_get(lp, dom, j)) < 0) {
        snprintf(err, errlen, "domain %s: reading its backup job: %s", l->uuid, lv_errmsg());
        return r;
    }
    if (!j->doc || strcmp(j->snap, l->snap) != 0 || !j->socket) {
        snprintf(err, errlen, "snapshot %s is not live any more (its backup job ended)", l->snap);
        return -ESTALE;
    }
    *export = lv_job_disk_attr(j, l->target, "exportname");
    if (!*export) {
        snprintf(err, errlen, "snapshot %s has no export of disk %s", l->snap, l->target);
        return -ESTALE;
    }
    return 0;
}

static int lv_disk_open(struct provider *p, const char *locator, unsigned flags,
                        struct disk_reader **out)
{
    (void)flags;
    struct lv_locator l;
    if (lv_locator_parse(locator, &l) < 0)
        return -EINVAL;
    CLEANUP_JOB struct lv_job j = {0};
    CLEANUP_FREE char *export = NULL;
    char err[256];
    int r = lv_export_find(p, &l, &j, &export, err, sizeof(err));
    if (r < 0) {
        log_error("libvirt: opening %s: %s", locator, err);
        return r == -ESTALE ? -ENOENT : r;
    }
    struct lv_reader *lr = calloc(1, sizeof(*lr));
    if (!lr)
        return -ENOMEM;
    r = nbdio_open(j.socket, export, NULL, 0, &lr->nbd, err, sizeof(err));
    if (r < 0) {
        log_error("libvirt: opening %s: %s", locator, err);
        free(lr);
        return r;
    }
    lr->r.ops = &lv_reader_ops;
    lr->r.size = nbdio_size(lr->nbd);
    CLEANUP_FREE char *uri = nbdio_uri(j.socket, export);
    if (uri && strlen(uri) < sizeof(lr->r.identity))
        strcpy(lr->r.identity, uri);
    *out = &lr->r;
    return 0;
}

/* ---- changes: the job's export of the dirty bitmap since the base's checkpoint ---- */

struct lv_dirty_ctx {
    extent_list *dirty;
};

static int lv_dirty_status(void *opaque, uint64_t off, uint64_t len, uint32_t flags)
{
    struct lv_dirty_ctx *d = opaque;
    return (flags & NBDIO_STATE_DIRTY) ? extent_list_add_range(d->dirty, off, len) : 0;
}

struct lv_split_ctx {
    struct extent_sink *changed, *zeroed;
};

static int lv_split_status(void *opaque, uint64_t off, uint64_t len, uint32_t flags)
{
    struct lv_split_ctx *s = opaque;
    struct extent_sink *to = (flags & NBDIO_STATE_ZERO) ? s->zeroed : s->changed;
    return to->emit(to->opaque, off, len);
}

/* ---- shut-off domains: changes from the images' bitmaps ----
 *
 * The changes of disk T in snapshot N of a shut-off domain since base B: libvirt keeps the
 * bitmap of every checkpoint recording until the checkpoint is deleted (each holds every write
 * since its checkpoint, also those qemu-img or qemu-io make to the image while the domain is
 * off), so they are the union of the bitmaps of the chain's checkpoints from B's position on.
 * N's qemu-storage-daemon merges them into a temporary bitmap (QEMU 7.2 merges into a new
 * non-persistent bitmap of a read-only node, as long as the bitmaps merged are not exported),
 * exports it with T's data as changes/T, read as qemu:dirty-bitmap:; zeroed comes from
 * base:allocation.  Every bitmap walked must be in the image, consistent and recording, and a
 * raw image has none: otherwise -ESTALE with the reason (the client reads the disk in full). */

#define LV_CHANGES_BITMAP "vmexport-changes" /* temporary, never persistent */
#define LV_CHANGES_EXPORT "changes/"         /* + disk target */
#define LV_EXPORT_GONE_MS 5000
#define LV_EXPORT_POLL_MS 10
#define LV_QMP_ERR        256

/* The checkpoints of chain on dom at or after time t (names, malloc'ed into out). */
static int lv_chain_since(virDomainPtr dom, const char *chain, uint64_t t, string_list *out)
{
    virDomainCheckpointPtr *cps = NULL;
    int n = virDomainListAllCheckpoints(dom, &cps, 0);
    if (n < 0)
        return -EIO;
    int r = 0;
    for (int i = 0; i < n; i++) {
        struct lv_cpname cn;
        const char *name = virDomainCheckpointGetName(cps[i]);
        if (r == 0 && name && lv_cpname_parse(name, &cn) && strcmp(cn.chain, chain) == 0 &&
            cn.t >= t) {
            char *dup = strdup(name);
            if (!dup || string_list_append(out, dup) < 0) {
                free(dup);
                r = -ENOMEM;
            }
        }
        virDomainCheckpointFree(cps[i]);
    }
    free(cps);
    return r;
}

/* The entry named name of a QMP list (borrowed; NULL: none). */
static json_t *lv_json_named(json_t *list, const char *key, const char *name)
{
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e)
    {
        const char *v = json_string_value(json_object_get(e, key));
        if (v && strcmp(v, name) == 0)
            return e;
    }
    return NULL;
}

static bool lv_export_exists(struct qmp *q, const char *id)
{
    char err[LV_QMP_ERR];
    json_t *ex = NULL;
    bool found = qmp_execute(q, "query-block-exports", NULL, &ex, err, sizeof(err)) == 0 &&
                 lv_json_named(ex, "id", id) != NULL;
    json_decref(ex);
    return found;
}

/* Ends export id of the qemu-storage-daemon and waits until it is gone (its bitmaps free). */
static void lv_export_del(struct qmp *q, const char *id)
{
    char err[LV_QMP_ERR];
    if (!lv_export_exists(q, id))
        return;
    if (qmp_execute(q, "block-export-del", json_pack("{s:s, s:s}", "id", id, "mode", "hard"), NULL,
                    err, sizeof(err)) < 0)
        log_warn("libvirt: %s", err);
    for (unsigned waited = 0; waited < LV_EXPORT_GONE_MS && lv_export_exists(q, id);
         waited += LV_EXPORT_POLL_MS)
        usleep(LV_EXPORT_POLL_MS * 1000u);
}

/* Why bitmap cp of disk target's image (the node's entry ni) cannot count changes: NULL when
 * it can. */
static const char *lv_bitmap_flaw(json_t *ni, const char *cp)
{
    json_t *b = lv_json_named(json_object_get(ni, "dirty-bitmaps"), "name", cp);
    if (!b)
        return "is gone from the image (removed, e.g. by qemu-img, or the image replaced)";
    if (json_is_true(json_object_get(b, "inconsistent")))
        return "is inconsistent (QEMU stopped without saving it)";
    if (!json_is_true(json_object_get(b, "recording")))
        return "does not record writes (disabled by another program)";
    return NULL;
}

/* The changes of disk ln->target in the shut-off domain's snapshot ln since position pb (a
 * checkpoint of the same chain) into sc. */
static int lv_offline_changes(struct lv_priv *lp, virDomainPtr dom, const struct lv_locator *ln,
                              const struct lv_position *pb, struct lv_split_ctx *sc, char *err,
                              size_t errlen)
{
    char node[LV_NODE_MAX], exid[LV_NODE_MAX], qmp_path[PATH_MAX], sock[PATH_MAX];
    char export[sizeof(LV_CHANGES_EXPORT) + LV_ID_MAX], qerr[LV_QMP_ERR];
    char ctx[sizeof(NBDIO_CONTEXT_BITMAP_PREFIX) + sizeof(LV_CHANGES_BITMAP)];
    if (lv_qsd_node('d', ln->target, node) < 0 || lv_qsd_node('c', ln->target, exid) < 0)
        return -EINVAL;
    snprintf(export, sizeof(export), LV_CHANGES_EXPORT "%s", ln->target);
    snprintf(ctx, sizeof(ctx), NBDIO_CONTEXT_BITMAP_PREFIX "%s", LV_CHANGES_BITMAP);
    lv_qmp_path(lp, ln->uuid, qmp_path, sizeof(qmp_path));
    lv_socket_path(lp, ln->uuid, sock, sizeof(sock));
    string_list walk = VECTOR_INIT;
    struct qmp *q = NULL;
    json_t *nodes = NULL;
    struct nbdio *nbd = NULL;
    extent_list dirty = VECTOR_INIT;
    bool tmp_made = false, ex_made = false;
    int r = lv_chain_since(dom, pb->chain, pb->t, &walk);
    if (r < 0) {
        snprintf(err, errlen, "domain %s: listing checkpoints: %s", ln->uuid, lv_errmsg());
        string_list_free(&walk);
        return r;
    }
    /* one client at a time on the daemon's monitor */
    pthread_mutex_lock(&lp->job_lock);
    if (lv_qsd_pid(lp, ln->uuid, ln->snap) <= 0) {
        snprintf(err, errlen, "snapshot %s is not live any more (released)", ln->snap);
        r = -ESTALE;
        goto out;
    }
    if ((r = qmp_connect(qmp_path, 0, &q, err, errlen)) < 0) {
        /* e.g. a daemon started by an older vmexportd, without a monitor: read in full */
        r = -ESTALE;
        goto out;
    }
    if ((r = qmp_execute(q, "query-named-block-nodes", json_pack("{s:b}", "flat", 1), &nodes, err,
                         errlen)) < 0)
        goto out;
    json_t *ni = lv_json_named(nodes, "node-name", node);
    const char *drv = json_string_value(json_object_get(ni, "drv"));
    if (!drv) {
        snprintf(err, errlen, "snapshot %s has no disk %s", ln->snap, ln->target);
        r = -ESTALE;
        goto out;
    }
    if (strcmp(drv, "qcow2") != 0) {
        snprintf(err, errlen,
                 "disk %s is a %s image, which keeps no bitmaps of the checkpoints (qcow2 does)",
                 ln->target, drv);
        r = -ESTALE;
        goto out;
    }
    if (walk.len == 0) {
        snprintf(err, errlen, "checkpoint %s is gone", pb->checkpoint);
        r = -ESTALE;
        goto out;
    }
    for (size_t i = 0; i < walk.len; i++) {
        const char *flaw = lv_bitmap_flaw(ni, walk.ptr[i]);
        if (flaw) {
            snprintf(err, errlen, "disk %s: the bitmap of checkpoint %s %s", ln->target,
                     walk.ptr[i], flaw);
            r = -ESTALE;
            goto out;
        }
    }
    /* a temporary bitmap or export left by a call that died */
    lv_export_del(q, exid);
    qmp_execute(q, "block-dirty-bitmap-remove",
                json_pack("{s:s, s:s}", "node", node, "name", LV_CHANGES_BITMAP), NULL, qerr,
                sizeof(qerr));
    json_t *names = json_array();
    for (size_t i = 0; names && i < walk.len; i++)
        json_array_append_new(names, json_string(walk.ptr[i]));
    r = qmp_execute(
        q, "block-dirty-bitmap-add",
        json_pack("{s:s, s:s, s:b}", "node", node, "name", LV_CHANGES_BITMAP, "disabled", 1), NULL,
        err, errlen);
    tmp_made = r == 0;
    if (r == 0)
        r = qmp_execute(q, "block-dirty-bitmap-merge",
                        json_pack("{s:s, s:s, s:O}", "node", node, "target", LV_CHANGES_BITMAP,
                                  "bitmaps", names),
                        NULL, err, errlen);
    json_decref(names);
    if (r == 0) {
        r = qmp_execute(q, "block-export-add",
                        json_pack("{s:s, s:s, s:s, s:s, s:b, s:[s]}", "type", "nbd", "id", exid,
                                  "node-name", node, "name", export, "writable", 0, "bitmaps",
                                  LV_CHANGES_BITMAP),
                        NULL, err, errlen);
        ex_made = r == 0;
    }
    const char *contexts[] = {NBDIO_CONTEXT_ALLOCATION, ctx, NULL};
    if (r == 0 && (r = nbdio_open(sock, export, contexts, 1, &nbd, err, errlen)) == 0) {
        struct lv_dirty_ctx dc = {.dirty = &dirty};
        r = nbdio_block_status(nbd, ctx, 0, nbdio_size(nbd), lv_dirty_status, &dc);
        for (size_t i = 0; r == 0 && i < dirty.len; i++)
            r = nbdio_block_status(nbd, NBDIO_CONTEXT_ALLOCATION, dirty.ptr[i].start,
                                   dirty.ptr[i].length, lv_split_status, sc);
        if (r < 0)
            snprintf(err, errlen, "snapshot %s: disk %s: reading its bitmaps: %s", ln->snap,
                     ln->target, strerror(-r));
    }
out:
    nbdio_close(nbd);
    if (ex_made)
        lv_export_del(q, exid);
    if (tmp_made)
        qmp_execute(q, "block-dirty-bitmap-remove",
                    json_pack("{s:s, s:s}", "node", node, "name", LV_CHANGES_BITMAP), NULL, qerr,
                    sizeof(qerr));
    if (q)
        qmp_close(q);
    pthread_mutex_unlock(&lp->job_lock);
    json_decref(nodes);
    extent_list_reset(&dirty);
    string_list_free(&walk);
    return r;
}

static int lv_disk_changes(struct provider *p, const char *base, const char *new,
                           struct extent_sink *changed, struct extent_sink *zeroed,
                           const char **method, char *err, size_t errlen)
{
    struct lv_priv *lp = p->priv;
    if (method)
        *method = LV_CHANGES_METHOD;
    struct lv_locator lb, ln;
    if (lv_locator_parse(base, &lb) < 0 || lv_locator_parse(new, &ln) < 0 ||
        strcmp(lb.uuid, ln.uuid) != 0 || strcmp(lb.target, ln.target) != 0) {
        snprintf(err, errlen, "not two snapshots of the same libvirt disk");
        return -EINVAL;
    }
    if (strcmp(lb.snap, ln.snap) == 0)
        return 0; /* a snapshot has no changes since itself */
    CLEANUP_CONN virConnectPtr c = NULL;
    int r = lv_connect(lp, &c, err, errlen);
    if (r < 0)
        return r;
    CLEANUP_DOMAIN virDomainPtr dom = NULL;
    if ((r = lv_domain_by_uuid(c, ln.uuid, &dom)) < 0) {
        snprintf(err, errlen, "domain %s: %s", ln.uuid, r == -ENOENT ? "gone" : lv_errmsg());
        return r == -ENOENT ? -ESTALE : r;
    }
    CLEANUP_POSITION struct lv_position pb = {0}, pn = {0};
    if ((r = lv_position_get(lp, dom, ln.uuid, lb.snap, &pb, err, errlen)) < 0 ||
        (r = lv_position_get(lp, dom, ln.uuid, ln.snap, &pn, err, errlen)) < 0)
        return r;
    if (strcmp(pb.chain, pn.chain) != 0) {
        snprintf(err, errlen, "snapshot %s is of chain %s, snapshot %s of chain %s", lb.snap,
                 pb.chain, ln.snap, pn.chain);
        return -EXDEV;
    }
    if (!pb.checkpoint) {
        if (pb.gone)
            snprintf(err, errlen,
                     "snapshot %s was taken while the domain was shut off; the checkpoint it "
                     "counts its changes from is gone",
                     lb.snap);
        else
            snprintf(err, errlen,
                     "snapshot %s was taken while the domain was shut off, before chain %s had "
                     "a checkpoint",
                     lb.snap, pb.chain);
        return -ESTALE;
    }
    const char *cp_base = pb.checkpoint;
    struct lv_split_ctx sc = {.changed = changed, .zeroed = zeroed};
    if (pn.offline) {
        if (method)
            *method = LV_OFFLINE_METHOD;
        return lv_offline_changes(lp, dom, &ln, &pb, &sc, err, errlen);
    }
    CLEANUP_JOB struct lv_job j = {0};
    CLEANUP_FREE char *export = NULL;
    if ((r = lv_export_find(p, &ln, &j, &export, err, errlen)) < 0)
        return r;
    CLEANUP_FREE char *mode = lv_job_disk_attr(&j, ln.target, "backupmode");
    CLEANUP_FREE char *since = lv_job_disk_attr(&j, ln.target, "incremental");
    CLEANUP_FREE char *bitmap = lv_job_disk_attr(&j, ln.target, "exportbitmap");
    if (!mode || strcmp(mode, "incremental") != 0 || !since || !bitmap) {
        snprintf(err, errlen,
                 "disk %s of snapshot %s was taken in full (no bitmap of it in the chain's "
                 "previous checkpoint: raw disk, new disk or a broken bitmap)",
                 ln.target, ln.snap);
        return -ESTALE;
    }
    if (strcmp(since, cp_base) != 0) {
        snprintf(err, errlen,
                 "the changes of disk %s in snapshot %s are known since checkpoint %s only, "
                 "not since snapshot %s",
                 ln.target, ln.snap, since, lb.snap);
        return -ESTALE;
    }
    char ctx[sizeof(NBDIO_CONTEXT_BITMAP_PREFIX) + NAME_MAX];
    snprintf(ctx, sizeof(ctx), NBDIO_CONTEXT_BITMAP_PREFIX "%s", bitmap);
    const char *contexts[] = {NBDIO_CONTEXT_ALLOCATION, ctx, NULL};
    struct nbdio *nbd = NULL;
    if ((r = nbdio_open(j.socket, export, contexts, 1, &nbd, err, errlen)) < 0)
        return r;
    extent_list dirty = {0};
    struct lv_dirty_ctx dc = {.dirty = &dirty};
    r = nbdio_block_status(nbd, ctx, 0, nbdio_size(nbd), lv_dirty_status, &dc);
    for (size_t i = 0; r == 0 && i < dirty.len; i++)
        r = nbdio_block_status(nbd, NBDIO_CONTEXT_ALLOCATION, dirty.ptr[i].start,
                               dirty.ptr[i].length, lv_split_status, &sc);
    if (r < 0)
        snprintf(err, errlen, "snapshot %s: disk %s: reading its changes: %s", ln.snap, ln.target,
                 strerror(-r));
    extent_list_reset(&dirty);
    nbdio_close(nbd);
    return r;
}

/* ---- the domain's definition ---- */

static int lv_vm_definition(struct provider *p, const struct vm *vm, char **text,
                            const char **format)
{
    CLEANUP_CONN virConnectPtr c = NULL;
    int r = lv_connect(p->priv, &c, NULL, 0);
    if (r < 0)
        return r;
    CLEANUP_DOMAIN virDomainPtr dom = NULL;
    if ((r = lv_domain_by_uuid(c, vm->uuid, &dom)) < 0)
        return r;
    /* The persistent definition, without secrets (no VIR_DOMAIN_XML_SECURE). */
    *text = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE);
    if (!*text)
        return -EIO;
    *format = "libvirt-xml";
    return 0;
}

const struct provider_ops provider_libvirt_ops = {
    .type = "libvirt",
    .keys = lv_keys,
    .open = lv_open,
    .close = lv_close,
    .list = lv_list,
    .get = lv_get,
    .snapshot_locate = lv_snapshot_locate,
    .snapshot_create = lv_snapshot_create,
    .snapshot_delete = lv_snapshot_delete,
    .snapshot_release = lv_snapshot_release,
    .disk_open = lv_disk_open,
    .disk_changes = lv_disk_changes,
    .vm_definition = lv_vm_definition,
};
