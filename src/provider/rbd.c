/* The "rbd" provider: Ceph RBD images as VM disks, through librados and librbd (no CLI).
 *
 *   [provider.ceph]
 *   type = rbd
 *   pool = rbd                  the pool of the images
 *   namespace = NS              optional RBD namespace in the pool
 *   ceph_conf = FILE            optional; default librados' search ($CEPH_CONF first)
 *   ceph_id = admin             optional; the client.<id> user (default $CEPH_ID, else admin)
 *   group_by = rbd_group        how images form VMs:
 *       rbd_group   each RBD group is a VM named after the group, its images the disks
 *       metadata    images whose metadata key vmexport.vm holds the VM's ID
 *       openstack   Nova's <uuid>_disk, <uuid>_disk.<suffix> and Cinder's volume-<uuid>: the
 *                   UUID is the VM's ID
 *
 * A disk's ID is its image name.  A snapshot of a VM is named vmexport-<snapshot ID>.  Where the
 * VM's images form one RBD group, it is one group snapshot (rbd_group_snap_create: writes to
 * every image are held while each image's snapshot is taken, so the disks are consistent with
 * each other); else one snapshot per image.  Either way inside the freeze/thaw hooks.
 *
 * Changes come from rbd_diff_iterate2 (whole_object = 0: byte ranges; a range that no longer
 * exists reads as zeros: zeroed) from the base snapshot to the new one.  Ceph 16 (Pacific)
 * takes the base of a diff only by name in the user namespace (a group snapshot's image
 * snapshots are in the group namespace: -ENOENT, measured), so a group snapshot also gets a
 * user snapshot of each image of the same name, taken just before it: the base of later diffs.
 * A diff from it may over-report what the guest wrote in between, never under-report.
 *
 * A locator is JSON: {"pool", "ns", "image", "id" (the image's ID, so that a renamed or
 * re-created image is never read in its place), "snap", "group" (when a group snapshot)}.
 * Snapshot disks are read with librbd (rbd_read2 on the image opened read-only at the snapshot);
 * their identity (rbdio.h) lets a client with Ceph credentials read them itself (the backup
 * engine's --transport rbd).  Uploads create an image named .vmexport-partial.<partial name>
 * (never listed), renamed to the disk's name when published (rbd_rename never replaces); it
 * joins the VM's group (created when missing) or gets its vmexport.vm metadata.
 */
#include "provider.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cleanup.h"
#include "core/log.h"
#include "provider/rbdio.h"

#define RBD_SNAP_PREFIX    "vmexport-"
#define RBD_PARTIAL_PREFIX ".vmexport-partial."
#define RBD_META_VM        "vmexport.vm" /* group_by = metadata: the VM an image belongs to */
#define RBD_MODE_GROUP     "rbd-group"   /* vm_disk.snapshot_mode, snapshot disks' mode */
#define RBD_MODE_IMAGE     "rbd-image"
#define RBD_METHOD         "rbd-diff" /* diff_mode of the changes (docs/api.md) */
#define RBD_LOCATOR_PREFIX "rbd:"     /* vm_disk.path and upload locators: rbd:POOL[/NS]/IMAGE */
#define RBD_NAME_MAX       RBDIO_NAME_MAX
#define RBD_LIST_FIRST     64 /* first guess of a listing's length; grown on -ERANGE */
#define RBD_LIST_MAX       PROVIDER_MAX_DIR_ENTRIES
#define RBD_UUID_LEN       36
#define RBD_DEVICE_PREFIX  "vd" /* device names as virtio-blk gives them: vda, vdb ... */
#define RBD_DEVICE_LETTERS 26
#define RBD_DEVICE_MAX     16
#define RBD_IO_MAX         (64u << 20) /* bytes per librbd call: well inside its int counts */
#define RBD_ERR            512

static const char *const rbd_keys[] = {"pool",    "namespace", "ceph_conf",
                                       "ceph_id", "group_by",  NULL};

enum rbd_group_by { GROUP_BY_RBD_GROUP, GROUP_BY_METADATA, GROUP_BY_OPENSTACK };
static const char *const group_by_names[] = {"rbd_group", "metadata", "openstack"};

struct rbd_priv {
    char *name;
    char *pool, *ns; /* ns: "" for the default namespace */
    enum rbd_group_by by;
    rados_t cluster;
    rados_ioctx_t io; /* the pool, in ns; librados I/O contexts are thread-safe for I/O */
    int64_t pool_id;
    char fsid[RBDIO_FSID_MAX];
};

/* ---- names ---- */

/* An image or group name we create or accept from a client: no '/' or '@' (the rbd tools'
 * separators), printable, not hidden (our partial images are). */
static bool name_ok(const char *s)
{
    size_t n = s ? strnlen(s, RBD_NAME_MAX) : 0;
    if (n == 0 || n >= RBD_NAME_MAX || s[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == '/' || s[i] == '@' || s[i] == 0x7f)
            return false;
    return true;
}

static bool uuid_ok(const char *s, size_t n)
{
    if (n != RBD_UUID_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

/* group_by = openstack: the VM of an image named <uuid>_disk, <uuid>_disk.<suffix> (Nova) or
 * volume-<uuid> (Cinder), into vm; false for other names. */
static bool openstack_vm_of(const char *image, char vm[RBD_UUID_LEN + 1])
{
    static const char nova[] = "_disk", cinder[] = "volume-";
    size_t n = strlen(image);
    const char *u = NULL;
    if (n == sizeof(cinder) - 1 + RBD_UUID_LEN && !strncmp(image, cinder, sizeof(cinder) - 1))
        u = image + sizeof(cinder) - 1;
    else if (n >= RBD_UUID_LEN + sizeof(nova) - 1 &&
             !strncmp(image + RBD_UUID_LEN, nova, sizeof(nova) - 1)) {
        const char *rest = image + RBD_UUID_LEN + sizeof(nova) - 1;
        if (rest[0] == '\0' || (rest[0] == '.' && rest[1]))
            u = image;
    }
    if (!u || !uuid_ok(u, RBD_UUID_LEN))
        return false;
    memcpy(vm, u, RBD_UUID_LEN);
    vm[RBD_UUID_LEN] = '\0';
    return true;
}

/* "rbd:POOL/IMAGE" or "rbd:POOL/NS/IMAGE". */
static char *image_locator(const struct rbd_priv *rp, const char *image)
{
    char *s = NULL;
    if (asprintf(&s, RBD_LOCATOR_PREFIX "%s%s%s/%s", rp->pool, rp->ns[0] ? "/" : "", rp->ns,
                 image) < 0)
        return NULL;
    return s;
}

/* The index-th device name from 0: bijective base 26, as "vdz" is followed by "vdaa". */
static void device_name(size_t index, char out[RBD_DEVICE_MAX])
{
    char letters[RBD_DEVICE_MAX];
    size_t n = 0, i = index + 1;
    while (i > 0 && n < sizeof(letters) - sizeof(RBD_DEVICE_PREFIX)) {
        i--;
        letters[n++] = (char)('a' + i % RBD_DEVICE_LETTERS);
        i /= RBD_DEVICE_LETTERS;
    }
    size_t o = sizeof(RBD_DEVICE_PREFIX) - 1;
    memcpy(out, RBD_DEVICE_PREFIX, o);
    while (n > 0)
        out[o++] = letters[--n];
    out[o] = '\0';
}

/* ---- listings (each grown until librbd stops answering -ERANGE) ---- */

static void specs_free(rbd_image_spec_t *specs, size_t n)
{
    if (specs)
        rbd_image_spec_list_cleanup(specs, n);
    free(specs);
}

static int images_list(struct rbd_priv *rp, rbd_image_spec_t **out, size_t *n)
{
    size_t max = RBD_LIST_FIRST;
    for (;;) {
        rbd_image_spec_t *specs = calloc(max, sizeof(*specs));
        if (!specs)
            return -ENOMEM;
        size_t want = max;
        int r = rbd_list2(rp->io, specs, &want);
        if (r >= 0) {
            *out = specs;
            *n = want;
            return 0;
        }
        free(specs);
        if (r != -ERANGE || want <= max || want > RBD_LIST_MAX)
            return r == -ERANGE ? -E2BIG : r;
        max = want;
    }
}

/* The groups' names, NUL-separated, in *names (*len bytes). */
static int groups_list(struct rbd_priv *rp, char **names, size_t *len)
{
    size_t size = RBD_LIST_FIRST * 16;
    for (;;) {
        char *buf = calloc(1, size + 1);
        if (!buf)
            return -ENOMEM;
        size_t want = size;
        int r = rbd_group_list(rp->io, buf, &want);
        if (r >= 0) {
            *names = buf;
            *len = (size_t)r;
            return 0;
        }
        free(buf);
        if (r != -ERANGE || want <= size || want > RBD_LIST_MAX * RBD_NAME_MAX)
            return r == -ERANGE ? -E2BIG : r;
        size = want;
    }
}

static int group_images(struct rbd_priv *rp, const char *group, rbd_group_image_info_t **out,
                        size_t *n)
{
    size_t max = RBD_LIST_FIRST;
    for (;;) {
        rbd_group_image_info_t *imgs = calloc(max, sizeof(*imgs));
        if (!imgs)
            return -ENOMEM;
        size_t want = max;
        int r = rbd_group_image_list(rp->io, group, imgs, sizeof(*imgs), &want);
        if (r >= 0) {
            *out = imgs;
            *n = want;
            return 0;
        }
        free(imgs);
        if (r != -ERANGE || want <= max || want > PROVIDER_MAX_DISKS)
            return r == -ERANGE ? -E2BIG : r;
        max = want;
    }
}

/* ---- VMs ---- */

/* Add image name as a disk of vm (compatible: in our pool); 0, or -ENOENT when it is gone. */
static int disk_add(struct rbd_priv *rp, struct vm *vm, const char *image, bool compatible)
{
    uint64_t size = 0;
    if (compatible) {
        rbd_image_t img;
        int r = rbd_open_read_only(rp->io, image, &img, NULL);
        if (r < 0)
            return r;
        r = rbd_get_size(img, &size);
        rbd_close(img);
        if (r < 0)
            return r;
    }
    struct vm_disk d = {0};
    d.name = strdup(image);
    d.path = image_locator(rp, image);
    d.mode = strdup("w");
    d.size = size;
    d.snapshot_compatible = compatible;
    d.snapshot_mode =
        compatible ? strdup(rp->by == GROUP_BY_RBD_GROUP ? RBD_MODE_GROUP : RBD_MODE_IMAGE) : NULL;
    d.repo_mountpoint = image_locator(rp, "");
    int r = -ENOMEM;
    if (d.name && d.path && d.mode && (!compatible || d.snapshot_mode) && d.repo_mountpoint) {
        char *slash = strrchr(d.repo_mountpoint, '/');
        *slash = '\0'; /* rbd:POOL[/NS] */
        r = vm_disk_list_append(&vm->disks, d);
    }
    if (r < 0)
        vm_disk_clear(&d);
    return r;
}

static int disk_cmp(const struct vm_disk *a, const struct vm_disk *b)
{
    return strcmp(a->name, b->name);
}

/* Disks in name order with their device names; the VM's compatibility. */
static int vm_finish(struct vm *vm)
{
    vm_disk_list_sort(&vm->disks, disk_cmp);
    for (size_t i = 0; i < vm->disks.len; i++) {
        char dev[RBD_DEVICE_MAX];
        device_name(i, dev);
        if (!(vm->disks.ptr[i].device_name = strdup(dev)))
            return -ENOMEM;
    }
    vm_update_snapshot_compatible(vm);
    return 0;
}

/* group_by = rbd_group: the VM of group (-ENOENT: no such group). */
static int group_vm_load(struct provider *p, const char *group, struct vm **out)
{
    struct rbd_priv *rp = p->priv;
    rbd_group_image_info_t *imgs = NULL;
    size_t n = 0;
    int r = group_images(rp, group, &imgs, &n);
    if (r < 0)
        return r;
    struct vm *vm = NULL;
    r = vm_new(p->name, group, NULL, NULL, &vm);
    for (size_t i = 0; r == 0 && i < n; i++) {
        const rbd_group_image_info_t *g = &imgs[i];
        if (g->state != RBD_GROUP_IMAGE_STATE_ATTACHED ||
            !strncmp(g->name, RBD_PARTIAL_PREFIX, sizeof(RBD_PARTIAL_PREFIX) - 1))
            continue;
        if (g->pool != rp->pool_id)
            log_warn("[provider.%s] group %s: image %s is in another pool (%" PRId64
                     "): listed, not snapshotted",
                     p->name, group, g->name, g->pool);
        r = disk_add(rp, vm, g->name, g->pool == rp->pool_id);
        if (r == -ENOENT)
            r = 0; /* removed meanwhile */
    }
    rbd_group_image_list_cleanup(imgs, sizeof(*imgs), n);
    free(imgs);
    if (r == 0)
        r = vm_finish(vm);
    if (r < 0) {
        vm_free(vm);
        return r;
    }
    *out = vm;
    return 0;
}

static int group_by_group_list(struct provider *p, const char *only, vm_list *out)
{
    struct rbd_priv *rp = p->priv;
    CLEANUP_FREE char *names = NULL;
    size_t len = 0;
    int r = groups_list(rp, &names, &len);
    if (r < 0)
        return r;
    if (only) {
        /* Ceph 16 lists no images, and no error, for a group that does not exist. */
        bool found = false;
        for (size_t o = 0; o < len && names[o] && !found; o += strlen(names + o) + 1)
            found = !strcmp(names + o, only);
        if (!found)
            return -ENOENT;
        struct vm *vm = NULL;
        r = group_vm_load(p, only, &vm);
        if (r < 0)
            return r;
        r = vm_list_append(out, vm);
        if (r < 0)
            vm_free(vm);
        return r;
    }
    for (size_t o = 0; o < len && names[o]; o += strlen(names + o) + 1) {
        struct vm *vm = NULL;
        r = group_vm_load(p, names + o, &vm);
        if (r == -ENOENT)
            continue; /* removed meanwhile */
        if (r == 0 && (r = vm_list_append(out, vm)) < 0)
            vm_free(vm);
        if (r < 0)
            return r;
    }
    return 0;
}

/* One image of a VM, for the group_by modes that find VMs image by image. */
struct member {
    char *vm, *image;
};
DEFINE_VECTOR_TYPE(member_list, struct member);

static int member_cmp(const struct member *a, const struct member *b)
{
    int c = strcmp(a->vm, b->vm);
    return c ? c : strcmp(a->image, b->image);
}

static void members_free(member_list *l)
{
    for (size_t i = 0; i < l->len; i++) {
        free(l->ptr[i].vm);
        free(l->ptr[i].image);
    }
    member_list_reset(l);
}

/* The VM image belongs to, into vm (RBD_NAME_MAX bytes): 1, 0 for none, or a negative errno. */
static int image_vm(struct provider *p, const char *image, char vm[RBD_NAME_MAX])
{
    struct rbd_priv *rp = p->priv;
    if (!strncmp(image, RBD_PARTIAL_PREFIX, sizeof(RBD_PARTIAL_PREFIX) - 1))
        return 0;
    if (rp->by == GROUP_BY_OPENSTACK)
        return openstack_vm_of(image, vm) ? 1 : 0;
    rbd_image_t img;
    int r = rbd_open_read_only(rp->io, image, &img, NULL);
    if (r < 0)
        return r == -ENOENT ? 0 : r;
    size_t n = RBD_NAME_MAX; /* Ceph 16 leaves it as it is on success */
    memset(vm, 0, RBD_NAME_MAX);
    r = rbd_metadata_get(img, RBD_META_VM, vm, &n);
    rbd_close(img);
    if (r == -ENOENT)
        return 0;
    if (r < 0 || vm[RBD_NAME_MAX - 1] != '\0' || !provider_id_is_safe(vm)) {
        log_warn("[provider.%s] image %s: metadata %s: %s; not a disk of any VM", p->name, image,
                 RBD_META_VM, r < 0 ? strerror(-r) : "not a usable VM ID");
        return 0;
    }
    return 1;
}

static int members_list(struct provider *p, const char *only, vm_list *out)
{
    struct rbd_priv *rp = p->priv;
    rbd_image_spec_t *specs = NULL;
    size_t n = 0;
    member_list ms = VECTOR_INIT;
    vm_list vms = VECTOR_INIT;
    int r = images_list(rp, &specs, &n);
    for (size_t i = 0; r >= 0 && i < n; i++) {
        char vm[RBD_NAME_MAX];
        r = image_vm(p, specs[i].name, vm);
        if (r <= 0 || (only && strcmp(vm, only)))
            continue;
        struct member m = {.vm = strdup(vm), .image = strdup(specs[i].name)};
        if (!m.vm || !m.image || (r = member_list_append(&ms, m)) < 0) {
            free(m.vm);
            free(m.image);
            r = -ENOMEM;
        }
    }
    specs_free(specs, n);
    if (r < 0)
        goto out;
    member_list_sort(&ms, member_cmp);
    struct vm *vm = NULL;
    r = 0;
    for (size_t i = 0; r == 0 && i < ms.len; i++) {
        if (!vm || strcmp(vm->id, ms.ptr[i].vm)) {
            if (vm && ((r = vm_finish(vm)) < 0 || (r = vm_list_append(&vms, vm)) < 0))
                break;
            vm = NULL;
            const char *uuid = rp->by == GROUP_BY_OPENSTACK ? ms.ptr[i].vm : NULL;
            if ((r = vm_new(p->name, ms.ptr[i].vm, NULL, uuid, &vm)) < 0)
                break;
        }
        r = disk_add(rp, vm, ms.ptr[i].image, true);
        if (r == -ENOENT)
            r = 0;
    }
    if (r == 0 && vm && ((r = vm_finish(vm)) < 0 || (r = vm_list_append(&vms, vm)) == 0))
        vm = NULL;
    vm_free(vm);
    if (r == 0 && only && vms.len == 0)
        r = -ENOENT;
    if (r == 0)
        r = vm_list_move(out, &vms);
out:
    members_free(&ms);
    vm_list_free(&vms);
    return r;
}

static int vms_load(struct provider *p, const char *only, vm_list *out)
{
    struct rbd_priv *rp = p->priv;
    vm_list l = VECTOR_INIT;
    int r =
        rp->by == GROUP_BY_RBD_GROUP ? group_by_group_list(p, only, &l) : members_list(p, only, &l);
    if (r == 0) {
        vm_list_sort_by_id(&l);
        r = vm_list_move(out, &l);
    }
    vm_list_free(&l);
    return r;
}

static int rbdp_list(struct provider *p, vm_list *out)
{
    int r = vms_load(p, NULL, out);
    if (r < 0)
        log_warn("[provider.%s] listing the VMs: %s", p->name, strerror(-r));
    return r;
}

static int rbdp_get(struct provider *p, const char *vm_id, struct vm **out)
{
    if (!provider_id_is_safe(vm_id))
        return -ENOENT;
    vm_list l = VECTOR_INIT;
    int r = vms_load(p, vm_id, &l);
    if (r == 0 && l.len == 1) {
        *out = l.ptr[0];
        vm_list_reset(&l);
        return 0;
    }
    vm_list_free(&l);
    return r == -ENOMEM ? r : -ENOENT;
}

/* ---- locators ---- */

struct rbd_loc {
    char *pool, *ns, *image, *id, *snap, *group; /* group: NULL unless a group snapshot */
};

static void loc_clear(struct rbd_loc *l)
{
    free(l->pool);
    free(l->ns);
    free(l->image);
    free(l->id);
    free(l->snap);
    free(l->group);
    memset(l, 0, sizeof(*l));
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Parse a locator of this provider's pool and namespace: 0, or -EINVAL. */
static int loc_parse(const struct rbd_priv *rp, const char *locator, struct rbd_loc *l)
{
    memset(l, 0, sizeof(*l));
    json_t *j = json_loads(locator, 0, NULL);
    const char *group = json_string_value(json_object_get(j, "group"));
    l->pool = dup_or_null(json_string_value(json_object_get(j, "pool")));
    l->ns = dup_or_null(json_string_value(json_object_get(j, "ns")));
    l->image = dup_or_null(json_string_value(json_object_get(j, "image")));
    l->id = dup_or_null(json_string_value(json_object_get(j, "id")));
    l->snap = dup_or_null(json_string_value(json_object_get(j, "snap")));
    l->group = dup_or_null(group);
    json_decref(j);
    if (!l->pool || !l->ns || !l->image || !l->id || !l->snap || (group && !l->group) ||
        strcmp(l->pool, rp->pool) || strcmp(l->ns, rp->ns) ||
        strncmp(l->snap, RBD_SNAP_PREFIX, sizeof(RBD_SNAP_PREFIX) - 1) || !l->id[0] ||
        strlen(l->id) >= RBD_NAME_MAX) {
        loc_clear(l);
        return -EINVAL;
    }
    return 0;
}

/* The ID of the snapshot of img that l names (its group snapshot's image snapshot, or the user
 * snapshot): 0, or -ENOENT. */
static int snap_find(const struct rbd_priv *rp, rbd_image_t img, const struct rbd_loc *l,
                     uint64_t *id)
{
    int max = RBD_LIST_FIRST, n;
    rbd_snap_info_t *s = NULL;
    for (;;) {
        s = calloc((size_t)max, sizeof(*s));
        if (!s)
            return -ENOMEM;
        int want = max;
        n = rbd_snap_list(img, s, &want);
        if (n >= 0)
            break;
        free(s);
        if (n != -ERANGE || want <= max)
            return n == -ERANGE ? -E2BIG : n;
        max = want;
    }
    int r = -ENOENT;
    for (int i = 0; i < n && r == -ENOENT; i++) {
        rbd_snap_namespace_type_t t;
        if (rbd_snap_get_namespace_type(img, s[i].id, &t) < 0)
            continue;
        if (!l->group) {
            if (t == RBD_SNAP_NAMESPACE_TYPE_USER && !strcmp(s[i].name, l->snap))
                r = 0;
        } else if (t == RBD_SNAP_NAMESPACE_TYPE_GROUP) {
            rbd_snap_group_namespace_t g;
            if (rbd_snap_get_group_namespace(img, s[i].id, &g, sizeof(g)) < 0)
                continue;
            if (g.group_pool == rp->pool_id && !strcmp(g.group_name, l->group) &&
                !strcmp(g.group_snap_name, l->snap))
                r = 0;
            rbd_snap_group_namespace_cleanup(&g, sizeof(g));
        }
        if (r == 0)
            *id = s[i].id;
    }
    rbd_snap_list_end(s);
    free(s);
    return r;
}

/* The image of l, open read-only at its snapshot (its ID in *snap_id when not NULL). */
static int loc_open(const struct rbd_priv *rp, const struct rbd_loc *l, rbd_image_t *out,
                    uint64_t *snap_id)
{
    rbd_image_t img;
    uint64_t id = 0;
    int r = rbd_open_by_id_read_only(rp->io, l->id, &img, NULL);
    if (r < 0)
        return r;
    if ((r = snap_find(rp, img, l, &id)) < 0 || (r = rbd_snap_set_by_id(img, id)) < 0) {
        rbd_close(img);
        return r;
    }
    if (snap_id)
        *snap_id = id;
    *out = img;
    return 0;
}

/* The group of image (the empty string when none) into group; 0 or a negative errno. */
static int image_group(const struct rbd_priv *rp, const char *image, char group[RBD_NAME_MAX],
                       char id[RBD_NAME_MAX])
{
    rbd_image_t img;
    int r = rbd_open_read_only(rp->io, image, &img, NULL);
    if (r < 0)
        return r;
    rbd_group_info_t g = {0};
    r = rbd_get_group(img, &g, sizeof(g));
    if (r == 0 && id)
        r = rbd_get_id(img, id, RBD_NAME_MAX);
    rbd_close(img);
    if (r < 0)
        return r;
    group[0] = '\0';
    if (g.name && g.name[0] && g.pool == rp->pool_id && strlen(g.name) < RBD_NAME_MAX)
        strcpy(group, g.name);
    rbd_group_info_cleanup(&g, sizeof(g));
    return 0;
}

/* The group every snapshot-compatible disk of vm is in, or "" when they do not form one. */
static int vm_group(const struct rbd_priv *rp, const struct vm *vm, char group[RBD_NAME_MAX])
{
    char g[RBD_NAME_MAX];
    bool first = true;
    group[0] = '\0';
    for (size_t i = 0; i < vm->disks.len; i++) {
        if (!vm->disks.ptr[i].snapshot_compatible)
            continue;
        int r = image_group(rp, vm->disks.ptr[i].name, g, NULL);
        if (r < 0)
            return r;
        if (!g[0] || (!first && strcmp(g, group))) {
            group[0] = '\0';
            return 0;
        }
        strcpy(group, g);
        first = false;
    }
    return 0;
}

static bool snap_id_ok(const char *s)
{
    size_t n = strnlen(s, PROVIDER_CHAIN_MAX + 1);
    if (n == 0 || n > PROVIDER_CHAIN_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

static int rbdp_snapshot_locate(struct provider *p, const struct vm *vm, const struct vm_disk *disk,
                                const char *snap_id, char **out)
{
    struct rbd_priv *rp = p->priv;
    if (!snap_id_ok(snap_id))
        return -EINVAL;
    if (!disk->snapshot_compatible)
        return -EOPNOTSUPP;
    char group[RBD_NAME_MAX], own[RBD_NAME_MAX], id[RBD_NAME_MAX], snap[RBD_NAME_MAX];
    int r = image_group(rp, disk->name, own, id);
    if (r == 0 && own[0])
        r = vm_group(rp, vm, group);
    else
        group[0] = '\0';
    if (r < 0)
        return r;
    snprintf(snap, sizeof(snap), RBD_SNAP_PREFIX "%s", snap_id);
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s}", "pool", rp->pool, "ns", rp->ns, "image",
                          disk->name, "id", id, "snap", snap);
    if (j && group[0])
        json_object_set_new(j, "group", json_string(group));
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    if (!s)
        return -ENOMEM;
    *out = s;
    return 0;
}

/* ---- snapshots ---- */

/* Remove the user snapshot l->snap of l's image; 0 when it (or the image) is gone. */
static int user_snap_remove(const struct rbd_priv *rp, const struct rbd_loc *l)
{
    rbd_image_t img;
    int r = rbd_open_by_id(rp->io, l->id, &img, NULL);
    if (r == -ENOENT)
        return 0;
    if (r < 0)
        return r;
    r = rbd_snap_remove(img, l->snap);
    rbd_close(img);
    return r == -ENOENT ? 0 : r;
}

static int rbdp_snapshot_delete(struct provider *p, const char *locator)
{
    struct rbd_priv *rp = p->priv;
    struct rbd_loc l;
    int r = loc_parse(rp, locator, &l);
    if (r < 0)
        return r;
    if (l.group) {
        r = rbd_group_snap_remove(rp->io, l.group, l.snap);
        if (r == -ENOENT)
            r = 0; /* removed with another disk of the snapshot, or never made */
    }
    int e = user_snap_remove(rp, &l);
    loc_clear(&l);
    return r < 0 ? r : e;
}

static int rbdp_snapshot_create(struct provider *p, const struct vm *vm, const char *snap_id,
                                struct provider_snapshot_request *req,
                                struct provider_snapshot_disk *disks, size_t n,
                                const struct provider_quiesce *q, char *err, size_t errlen)
{
    (void)req; /* RBD snapshots serve every chain: a diff needs only its two snapshots */
    struct rbd_priv *rp = p->priv;
    struct rbd_loc *locs = calloc(n ? n : 1, sizeof(*locs));
    rbd_image_t *imgs = calloc(n ? n : 1, sizeof(*imgs));
    bool *made = calloc(n ? n : 1, sizeof(*made));
    size_t opened = 0;
    bool group_made = false, frozen = false;
    const char *group = NULL;
    int r = locs && imgs && made ? 0 : -ENOMEM;
    if (r < 0)
        snprintf(err, errlen, "snapshot %s: out of memory", snap_id);
    for (size_t i = 0; r == 0 && i < n; i++) {
        if ((r = loc_parse(rp, disks[i].locator, &locs[i])) < 0) {
            snprintf(err, errlen, "snapshot %s: disk %s: bad locator", snap_id,
                     disks[i].disk->name);
            break;
        }
        const char *g = locs[i].group;
        if (i == 0)
            group = g;
        else if ((g == NULL) != (group == NULL) || (g && strcmp(g, group))) {
            snprintf(err, errlen,
                     "snapshot %s: the RBD groups of VM %s's images changed while it was "
                     "taken; try again",
                     snap_id, vm->id);
            r = -EAGAIN;
        }
    }
    /* Opened before the freeze, which then lasts only as long as the snapshots. */
    while (r == 0 && opened < n) {
        r = rbd_open_by_id(rp->io, locs[opened].id, &imgs[opened], NULL);
        if (r < 0)
            snprintf(err, errlen, "snapshot %s: disk %s: opening RBD image %s/%s: %s", snap_id,
                     locs[opened].image, rp->pool, locs[opened].image,
                     r == -ENOENT ? "gone (removed or re-created since it was listed)"
                                  : strerror(-r));
        else
            opened++;
    }
    if (r == 0 && q && q->freeze) {
        r = q->freeze(q->opaque, err, errlen);
        frozen = r == 0;
    }
    /* The user snapshots: the snapshot itself, or the base of later diffs of a group's. */
    for (size_t i = 0; r == 0 && i < n; i++) {
        r = rbd_snap_create(imgs[i], locs[i].snap);
        made[i] = r == 0;
        if (r < 0)
            snprintf(err, errlen, "snapshot %s: disk %s: creating RBD snapshot %s/%s@%s: %s",
                     snap_id, locs[i].image, rp->pool, locs[i].image, locs[i].snap,
                     r == -ENOSPC ? "no space left in the pool" : strerror(-r));
    }
    for (size_t i = 0; i < opened; i++)
        rbd_close(imgs[i]); /* ours hold no lock the group snapshot must take back */
    if (r == 0 && group) {
        r = rbd_group_snap_create(rp->io, group, locs[0].snap);
        group_made = r == 0;
        if (r < 0)
            snprintf(err, errlen, "snapshot %s: creating RBD group snapshot %s/%s@%s: %s", snap_id,
                     rp->pool, group, locs[0].snap, strerror(-r));
    }
    if (frozen && q->thaw)
        q->thaw(q->opaque, r);
    for (size_t i = 0; r == 0 && i < n; i++) {
        rbd_image_t img;
        r = loc_open(rp, &locs[i], &img, NULL);
        if (r == 0) {
            r = rbd_get_size(img, &disks[i].size);
            rbd_close(img);
        }
        free(disks[i].mode);
        disks[i].mode = r == 0 ? strdup(group ? RBD_MODE_GROUP : RBD_MODE_IMAGE) : NULL;
        if (r == 0 && !disks[i].mode)
            r = -ENOMEM;
        if (r < 0)
            snprintf(err, errlen, "snapshot %s: disk %s: reading the new snapshot: %s", snap_id,
                     locs[i].image, strerror(-r));
    }
    if (r < 0) {
        if (group_made)
            rbd_group_snap_remove(rp->io, group, locs[0].snap);
        for (size_t i = 0; i < n; i++)
            if (made[i])
                user_snap_remove(rp, &locs[i]);
    }
    for (size_t i = 0; locs && i < n; i++)
        loc_clear(&locs[i]);
    free(locs);
    free(imgs);
    free(made);
    return r;
}

/* ---- reading ---- */

struct rbd_reader {
    struct disk_reader r;
    rbd_image_t img; /* librbd images are thread-safe: reads run in parallel */
};

static int reader_pread(struct disk_reader *dr, void *buf, size_t n, uint64_t off, unsigned flags,
                        size_t *got)
{
    struct rbd_reader *rr = (struct rbd_reader *)dr;
    int op = flags & DISK_READ_ONCE
                 ? LIBRADOS_OP_FLAG_FADVISE_SEQUENTIAL | LIBRADOS_OP_FLAG_FADVISE_NOCACHE
                 : 0;
    *got = 0;
    if (off >= dr->size)
        return 0;
    if (n > dr->size - off)
        n = (size_t)(dr->size - off);
    while (*got < n) {
        size_t k = n - *got < RBD_IO_MAX ? n - *got : RBD_IO_MAX;
        ssize_t r = rbd_read2(rr->img, off + *got, k, (char *)buf + *got, op);
        if (r < 0)
            return (int)r;
        if (r == 0)
            break;
        *got += (size_t)r;
    }
    return 0;
}

static bool reader_cached(struct disk_reader *dr, uint64_t off, size_t n)
{
    (void)dr, (void)off, (void)n;
    return true; /* no page cache of ours between the reader and the OSDs */
}

static int reader_size(struct disk_reader *dr, uint64_t *size)
{
    return rbd_get_size(((struct rbd_reader *)dr)->img, size);
}

struct map_ctx {
    struct disk_map_sink *sink;
};

static int map_emit(void *opaque, uint64_t off, uint64_t len, bool exists)
{
    struct map_ctx *m = opaque;
    if (!exists)
        return 0;
    struct extent e = {.start = off, .length = len, .flags = EXTENT_PHYS_UNKNOWN};
    return m->sink->emit(m->sink->opaque, &e);
}

/* The data of img: object by object (fast with the object map; an object holding a few written
 * bytes counts whole, which over-reports data, as the contract allows). */
static int image_map(rbd_image_t img, struct disk_map_sink *sink)
{
    struct map_ctx m = {.sink = sink};
    return rbdio_diff(img, NULL, true, map_emit, &m);
}

static int reader_map(struct disk_reader *dr, unsigned flags, struct disk_map_sink *sink)
{
    (void)flags; /* no physical addresses, no unwritten ranges: always logical */
    return image_map(((struct rbd_reader *)dr)->img, sink);
}

static int reader_dup_fd(struct disk_reader *dr)
{
    (void)dr;
    return -EOPNOTSUPP;
}

static void reader_close(struct disk_reader *dr)
{
    struct rbd_reader *rr = (struct rbd_reader *)dr;
    rbd_close(rr->img);
    free(rr);
}

static const struct disk_reader_ops reader_ops = {
    .pread = reader_pread,
    .cached = reader_cached,
    .size = reader_size,
    .map = reader_map,
    .dup_fd = reader_dup_fd,
    .close = reader_close,
};

static int rbdp_disk_open(struct provider *p, const char *locator, unsigned flags,
                          struct disk_reader **out)
{
    (void)flags;
    struct rbd_priv *rp = p->priv;
    struct rbd_loc l;
    int r = loc_parse(rp, locator, &l);
    if (r < 0)
        return r;
    struct rbdio_ident id = {.pool_id = rp->pool_id};
    struct rbd_reader *rr = calloc(1, sizeof(*rr));
    r = rr ? loc_open(rp, &l, &rr->img, &id.snap_id) : -ENOMEM;
    if (r == 0 && (r = rbd_get_size(rr->img, &rr->r.size)) < 0)
        rbd_close(rr->img);
    if (r < 0) {
        free(rr);
        loc_clear(&l);
        return r;
    }
    rr->r.ops = &reader_ops;
    snprintf(id.fsid, sizeof(id.fsid), "%s", rp->fsid);
    snprintf(id.ns, sizeof(id.ns), "%s", rp->ns);
    snprintf(id.image_id, sizeof(id.image_id), "%s", l.id);
    if (rbdio_ident_format(&id, rr->r.identity, sizeof(rr->r.identity)) < 0)
        rr->r.identity[0] = '\0';
    loc_clear(&l);
    *out = &rr->r;
    return 0;
}

/* ---- changes ---- */

struct changes_ctx {
    struct extent_sink *changed, *zeroed;
};

static int changes_emit(void *opaque, uint64_t off, uint64_t len, bool exists)
{
    struct changes_ctx *x = opaque;
    struct extent_sink *s = exists ? x->changed : x->zeroed;
    return s->emit(s->opaque, off, len);
}

static int rbdp_disk_changes(struct provider *p, const char *base, const char *new,
                             struct extent_sink *changed, struct extent_sink *zeroed,
                             const char **method, char *err, size_t errlen)
{
    struct rbd_priv *rp = p->priv;
    if (method)
        *method = RBD_METHOD;
    struct rbd_loc lb, ln;
    if (loc_parse(rp, base, &lb) < 0)
        return -EINVAL;
    int r = loc_parse(rp, new, &ln);
    if (r < 0) {
        loc_clear(&lb);
        return r;
    }
    rbd_image_t img;
    if (strcmp(lb.id, ln.id)) {
        snprintf(err, errlen, "the base snapshot is of another image (%s was re-created)",
                 ln.image);
        r = -ESTALE;
    } else if ((r = loc_open(rp, &ln, &img, NULL)) < 0) {
        snprintf(err, errlen, "RBD image %s/%s at snapshot %s: %s", rp->pool, ln.image, ln.snap,
                 strerror(-r));
    } else {
        struct changes_ctx x = {.changed = changed, .zeroed = zeroed};
        r = rbdio_diff(img, lb.snap, false, changes_emit, &x);
        rbd_close(img);
        if (r == -ENOENT || r == -EINVAL) {
            snprintf(err, errlen, "%s",
                     r == -ENOENT ? "the base snapshot's RBD snapshot is gone"
                                  : "the base snapshot is newer than this one");
            r = -ESTALE;
        } else if (r < 0) {
            snprintf(err, errlen, "rbd_diff_iterate2 of %s/%s from %s: %s", rp->pool, ln.image,
                     lb.snap, strerror(-r));
        }
    }
    loc_clear(&lb);
    loc_clear(&ln);
    return r;
}

/* ---- uploads ---- */

struct rbd_writer {
    struct disk_writer w;
    struct rbd_priv *rp;
    char *vm_id;
    char *image; /* the partial image's name */
    char *disk;  /* the published name */
    rbd_image_t img;
    bool open;
};

static int wr_create(struct disk_writer *w, uint64_t size, char *err, size_t errlen)
{
    struct rbd_writer *x = (struct rbd_writer *)w;
    int order = 0; /* the pool's default object size */
    int r = rbd_create(x->rp->io, x->image, size, &order);
    if (r < 0) {
        snprintf(err, errlen, "creating RBD image %s/%s of %llu bytes: %s", x->rp->pool, x->image,
                 (unsigned long long)size, strerror(-r));
        return r;
    }
    r = rbd_open(x->rp->io, x->image, &x->img, NULL);
    x->open = r == 0;
    if (r == 0 && x->rp->by == GROUP_BY_METADATA)
        r = rbd_metadata_set(x->img, RBD_META_VM, x->vm_id);
    if (r < 0) {
        snprintf(err, errlen, "RBD image %s/%s: %s", x->rp->pool, x->image, strerror(-r));
        if (x->open)
            rbd_close(x->img);
        x->open = false;
        rbd_remove(x->rp->io, x->image);
    }
    return r;
}

static int wr_pwrite(struct disk_writer *w, const void *buf, size_t len, uint64_t off)
{
    struct rbd_writer *x = (struct rbd_writer *)w;
    for (size_t done = 0; done < len;) {
        size_t k = len - done < RBD_IO_MAX ? len - done : RBD_IO_MAX;
        ssize_t r = rbd_write2(x->img, off + done, k, (const char *)buf + done, 0);
        if (r < 0)
            return (int)r;
        if ((size_t)r != k)
            return -EIO;
        done += k;
    }
    return 0;
}

static int wr_zero(struct disk_writer *w, uint64_t off, uint64_t len)
{
    struct rbd_writer *x = (struct rbd_writer *)w;
    /* Not rbd_discard: librbd skips discards of parts of objects (rbd_skip_partial_discard),
     * which would leave the data. */
    while (len > 0) {
        size_t k = len < RBD_IO_MAX ? (size_t)len : RBD_IO_MAX;
        ssize_t r = rbd_write_zeroes(x->img, off, k, 0, 0);
        if (r < 0)
            return (int)r;
        off += k;
        len -= k;
    }
    return 0;
}

static int wr_flush(struct disk_writer *w)
{
    return rbd_flush(((struct rbd_writer *)w)->img);
}

static int wr_writeback(struct disk_writer *w, uint64_t done_off, uint64_t done_len, uint64_t off,
                        uint64_t len)
{
    (void)w, (void)done_off, (void)done_len, (void)off, (void)len;
    return 0; /* no page cache here */
}

static int wr_size(struct disk_writer *w, uint64_t *size)
{
    return rbd_get_size(((struct rbd_writer *)w)->img, size);
}

static int wr_map(struct disk_writer *w, uint64_t size, struct disk_map_sink *sink)
{
    (void)size;
    return image_map(((struct rbd_writer *)w)->img, sink);
}

static int wr_publish(struct disk_writer *w)
{
    struct rbd_writer *x = (struct rbd_writer *)w;
    struct rbd_priv *rp = x->rp;
    if (x->open) {
        int r = rbd_flush(x->img);
        rbd_close(x->img);
        x->open = false;
        if (r < 0)
            return r;
    }
    bool grouped = false;
    if (rp->by == GROUP_BY_RBD_GROUP) {
        int r = rbd_group_create(rp->io, x->vm_id);
        if (r == 0)
            log_info("[provider.%s] created RBD group %s/%s for an upload", rp->name, rp->pool,
                     x->vm_id);
        else if (r != -EEXIST)
            return r;
        /* Under its partial name (never listed) until renamed. */
        if ((r = rbd_group_image_add(rp->io, x->vm_id, rp->io, x->image)) < 0)
            return r;
        grouped = true;
    }
    int r = rbd_rename(rp->io, x->image, x->disk);
    if (r < 0 && grouped)
        rbd_group_image_remove(rp->io, x->vm_id, rp->io, x->image);
    return r;
}

static int wr_remove(struct disk_writer *w)
{
    struct rbd_writer *x = (struct rbd_writer *)w;
    if (x->open) {
        rbd_close(x->img);
        x->open = false;
    }
    int r = rbd_remove(x->rp->io, x->image);
    return r == -ENOENT ? 0 : r;
}

static void wr_close(struct disk_writer *w)
{
    struct rbd_writer *x = (struct rbd_writer *)w;
    if (x->open)
        rbd_close(x->img);
    free(x->vm_id);
    free(x->image);
    free(x->disk);
    free(w->partial);
    free(w->final);
    free(x);
}

static const struct disk_writer_ops writer_ops = {
    .create = wr_create,
    .pwrite = wr_pwrite,
    .zero = wr_zero,
    .flush = wr_flush,
    .sync = wr_flush,
    .writeback = wr_writeback,
    .size = wr_size,
    .map = wr_map,
    .publish = wr_publish,
    .remove = wr_remove,
    .close = wr_close,
};

static char *partial_image(const char *partial_name)
{
    char *s = NULL;
    if (asprintf(&s, RBD_PARTIAL_PREFIX "%s", partial_name) < 0)
        return NULL;
    return s;
}

static int rbdp_upload_open(struct provider *p, const char *vm_id, const char *disk,
                            const char *partial_name, struct disk_writer **out, char *err,
                            size_t errlen)
{
    struct rbd_priv *rp = p->priv;
    char vm[RBD_UUID_LEN + 1];
    bool ok = name_ok(disk) && provider_id_is_safe(vm_id) && name_ok(partial_name);
    if (ok && rp->by == GROUP_BY_RBD_GROUP)
        ok = name_ok(vm_id);
    if (ok && rp->by == GROUP_BY_OPENSTACK)
        ok = openstack_vm_of(disk, vm) && !strcmp(vm, vm_id);
    if (!ok) {
        snprintf(err, errlen, "provider %s cannot use VM '%s' with disk '%s' (bad name%s)", p->name,
                 vm_id, disk,
                 rp->by == GROUP_BY_OPENSTACK
                     ? ": a disk of VM UUID is named UUID_disk, UUID_disk.SUFFIX or volume-UUID"
                     : "");
        return -EINVAL;
    }
    rbd_image_t img;
    int r = rbd_open_read_only(rp->io, disk, &img, NULL);
    if (r == 0) {
        rbd_close(img);
        snprintf(err, errlen, "pool %s already has an RBD image named '%s'", rp->pool, disk);
        return -EEXIST;
    }
    if (r != -ENOENT) {
        snprintf(err, errlen, "RBD image %s/%s: %s", rp->pool, disk, strerror(-r));
        return r;
    }
    struct rbd_writer *x = calloc(1, sizeof(*x));
    if (!x)
        return -ENOMEM;
    x->w.ops = &writer_ops;
    x->rp = rp;
    x->vm_id = strdup(vm_id);
    x->image = partial_image(partial_name);
    x->disk = strdup(disk);
    x->w.partial = x->image ? image_locator(rp, x->image) : NULL;
    x->w.final = image_locator(rp, disk);
    if (!x->vm_id || !x->image || !x->disk || !x->w.partial || !x->w.final) {
        wr_close(&x->w);
        return -ENOMEM;
    }
    *out = &x->w;
    return 0;
}

static int rbdp_upload_discard(struct provider *p, const char *partial, const char *id,
                               const char *partial_name)
{
    (void)id;
    struct rbd_priv *rp = p->priv;
    /* Only a partial image of this pool named after the upload: a damaged catalog must not
     * make the daemon remove some other image. */
    CLEANUP_FREE char *image = partial_image(partial_name);
    CLEANUP_FREE char *mine = image ? image_locator(rp, image) : NULL;
    if (!mine)
        return -ENOMEM;
    if (strcmp(partial, mine))
        return -EPERM;
    char group[RBD_NAME_MAX];
    int r = image_group(rp, image, group, NULL);
    if (r == 0 && group[0]) /* a publish interrupted between its two steps */
        rbd_group_image_remove(rp->io, group, rp->io, image);
    r = rbd_remove(rp->io, image);
    return r;
}

/* ---- the provider ---- */

static void priv_free(struct rbd_priv *rp)
{
    if (!rp)
        return;
    if (rp->io)
        rados_ioctx_destroy(rp->io);
    if (rp->cluster)
        rados_shutdown(rp->cluster);
    free(rp->name);
    free(rp->pool);
    free(rp->ns);
    free(rp);
}

static void rbdp_close_provider(struct provider *p)
{
    priv_free(p->priv);
    p->priv = NULL;
}

static int rbdp_open_provider(struct provider *p, const struct provider_config *cfg, char *err,
                              size_t errlen)
{
    const char *pool = provider_config_get(cfg, "pool");
    const char *ns = provider_config_get(cfg, "namespace");
    const char *conf = provider_config_get(cfg, "ceph_conf");
    const char *id = provider_config_get(cfg, "ceph_id");
    const char *by = provider_config_get(cfg, "group_by");
    if (!pool || !pool[0])
        return provider_fail(err, errlen, -EINVAL,
                             "[provider.%s] pool: missing (the Ceph pool of the RBD images)",
                             cfg->name);
    if (conf && !conf[0])
        return provider_fail(err, errlen, -EINVAL, "[provider.%s] ceph_conf: empty value",
                             cfg->name);
    struct rbd_priv *rp = calloc(1, sizeof(*rp));
    if (!rp)
        return -ENOMEM;
    rp->by = GROUP_BY_RBD_GROUP;
    if (by) {
        size_t i = 0;
        while (i < ARRAY_SIZE(group_by_names) && strcmp(by, group_by_names[i]))
            i++;
        if (i == ARRAY_SIZE(group_by_names)) {
            priv_free(rp);
            return provider_fail(err, errlen, -EINVAL,
                                 "[provider.%s] group_by: '%s' is not rbd_group, metadata or "
                                 "openstack",
                                 cfg->name, by);
        }
        rp->by = (enum rbd_group_by)i;
    }
    rp->name = strdup(cfg->name);
    rp->pool = strdup(pool);
    rp->ns = strdup(ns ? ns : "");
    if (!rp->name || !rp->pool || !rp->ns) {
        priv_free(rp);
        return -ENOMEM;
    }
    char cerr[RBD_ERR];
    int r = rbdio_connect(conf, id, &rp->cluster, cerr, sizeof(cerr));
    if (r < 0) {
        priv_free(rp);
        return provider_fail(err, errlen, r, "[provider.%s] %s", cfg->name, cerr);
    }
    r = rados_ioctx_create(rp->cluster, pool, &rp->io);
    if (r < 0) {
        rp->io = NULL;
        priv_free(rp);
        return provider_fail(err, errlen, r, "[provider.%s] pool: %s: %s", cfg->name, pool,
                             r == -ENOENT ? "no such pool in the Ceph cluster" : strerror(-r));
    }
    rados_ioctx_set_namespace(rp->io, rp->ns[0] ? rp->ns : NULL);
    rp->pool_id = rados_ioctx_get_id(rp->io);
    if ((r = rados_cluster_fsid(rp->cluster, rp->fsid, sizeof(rp->fsid))) < 0) {
        priv_free(rp);
        return provider_fail(err, errlen, r, "[provider.%s] the Ceph cluster's fsid: %s", cfg->name,
                             strerror(-r));
    }
    if (rp->ns[0]) {
        bool exists = false;
        r = rbd_namespace_exists(rp->io, rp->ns, &exists);
        if (r < 0 || !exists) {
            r = r < 0 ? r : -ENOENT;
            priv_free(rp);
            return provider_fail(err, errlen, r, "[provider.%s] namespace: %s: %s", cfg->name, ns,
                                 r == -ENOENT ? "no such RBD namespace in the pool" : strerror(-r));
        }
    }
    /* A user without access to the pool fails here, not at the first request. */
    size_t n = 0;
    rbd_image_spec_t *specs = NULL;
    if ((r = images_list(rp, &specs, &n)) < 0) {
        priv_free(rp);
        return provider_fail(err, errlen, r, "[provider.%s] pool %s: listing the RBD images: %s%s",
                             cfg->name, pool, strerror(-r),
                             r == -EPERM || r == -EACCES ? " (the Ceph user's caps do not allow it)"
                                                         : "");
    }
    specs_free(specs, n);
    p->priv = rp;
    log_debug("[provider.%s] RBD pool %s%s%s (id %" PRId64 ") of cluster %s, VMs by %s", cfg->name,
              pool, rp->ns[0] ? "/" : "", rp->ns, rp->pool_id, rp->fsid, group_by_names[rp->by]);
    return 0;
}

const struct provider_ops provider_rbd_ops = {
    .type = "rbd",
    .keys = rbd_keys,
    .open = rbdp_open_provider,
    .close = rbdp_close_provider,
    .list = rbdp_list,
    .get = rbdp_get,
    .snapshot_locate = rbdp_snapshot_locate,
    .snapshot_create = rbdp_snapshot_create,
    .snapshot_delete = rbdp_snapshot_delete,
    .disk_open = rbdp_disk_open,
    .disk_changes = rbdp_disk_changes,
    .upload_open = rbdp_upload_open,
    .upload_discard = rbdp_upload_discard,
};
