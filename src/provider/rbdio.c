/* Ceph RBD plumbing shared by the rbd provider and the RBD source: see rbdio.h. */
#include "provider/rbdio.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/vector.h"

/* Bounded waits (seconds, librados' option strings): the defaults wait 300 s for a monitor and
 * for ever for an OSD, which would hang a daemon's start or a request on a sick cluster. */
#define RBDIO_MOUNT_TIMEOUT  "15"
#define RBDIO_MON_OP_TIMEOUT "30"
#define RBDIO_OSD_OP_TIMEOUT "120" /* one 4 MiB object read under load stays far below */

#define RBDIO_SCHEME   "rbd://"
#define RBDIO_NS_ARG   "?namespace="
#define RBDIO_HEX      "0123456789ABCDEF"
#define RBDIO_ERR_HINT 160

static const char *connect_hint(int r, const char *id)
{
    static __thread char hint[RBDIO_ERR_HINT];
    switch (r) {
    case -ENOENT:
        snprintf(hint, sizeof(hint), " (no keyring holds a key for client.%s?)", id);
        return hint;
    case -EACCES:
    case -EPERM:
        snprintf(hint, sizeof(hint), " (client.%s or its key is not accepted by the monitors)", id);
        return hint;
    case -ETIMEDOUT:
        return " (no monitor answered)";
    default:
        return "";
    }
}

int rbdio_connect(const char *conf, const char *id, rados_t *out, char *err, size_t errlen)
{
    if (!id || !id[0])
        id = getenv("CEPH_ID");
    if (!id || !id[0])
        id = RBDIO_DEFAULT_ID;
    const char *shown = conf ? conf : getenv("CEPH_CONF") ? getenv("CEPH_CONF") : "(default)";
    rados_t c;
    int r = rados_create(&c, id);
    if (r < 0) {
        snprintf(err, errlen, "Ceph client.%s: %s", id, strerror(-r));
        return r;
    }
    r = rados_conf_read_file(c, conf);
    if (r < 0) {
        snprintf(err, errlen, "Ceph configuration %s: %s%s", shown, strerror(-r),
                 conf ? "" : " (set ceph_conf, or CEPH_CONF)");
        rados_shutdown(c);
        return r;
    }
    if ((r = rados_conf_set(c, "client_mount_timeout", RBDIO_MOUNT_TIMEOUT)) < 0 ||
        (r = rados_conf_set(c, "rados_mon_op_timeout", RBDIO_MON_OP_TIMEOUT)) < 0 ||
        (r = rados_conf_set(c, "rados_osd_op_timeout", RBDIO_OSD_OP_TIMEOUT)) < 0 ||
        (r = rados_connect(c)) < 0) {
        snprintf(err, errlen, "connecting to the Ceph cluster of %s as client.%s: %s%s", shown, id,
                 strerror(-r), connect_hint(r, id));
        rados_shutdown(c);
        return r;
    }
    *out = c;
    return 0;
}

/* ---- identities ---- */

static bool ns_char_plain(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.';
}

int rbdio_ident_format(const struct rbdio_ident *id, char *out, size_t n)
{
    int k = snprintf(out, n, RBDIO_SCHEME "%s/%" PRId64 "/%s@%" PRIu64, id->fsid, id->pool_id,
                     id->image_id, id->snap_id);
    if (k < 0 || (size_t)k >= n)
        return -ENAMETOOLONG;
    size_t o = (size_t)k;
    if (id->ns[0]) {
        size_t a = sizeof(RBDIO_NS_ARG) - 1;
        if (o + a >= n)
            return -ENAMETOOLONG;
        memcpy(out + o, RBDIO_NS_ARG, a);
        o += a;
        for (const unsigned char *s = (const unsigned char *)id->ns; *s; s++) {
            if (o + 4 > n)
                return -ENAMETOOLONG;
            if (ns_char_plain(*s)) {
                out[o++] = (char)*s;
            } else {
                out[o++] = '%';
                out[o++] = RBDIO_HEX[*s >> 4];
                out[o++] = RBDIO_HEX[*s & 15];
            }
        }
        out[o] = '\0';
    }
    return 0;
}

static int hexval(char c)
{
    const char *p = c ? strchr(RBDIO_HEX, c) : NULL;
    return p ? (int)(p - RBDIO_HEX) : -1;
}

/* The digits of s up to stop, as a number: 0, or -EINVAL. */
static int parse_u64(const char *s, const char *stop, uint64_t *out)
{
    uint64_t v = 0;
    if (s == stop)
        return -EINVAL;
    for (; s < stop; s++) {
        if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10)
            return -EINVAL;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 0;
}

int rbdio_ident_parse(const char *s, struct rbdio_ident *out)
{
    memset(out, 0, sizeof(*out));
    if (!s || strncmp(s, RBDIO_SCHEME, sizeof(RBDIO_SCHEME) - 1))
        return -EINVAL;
    s += sizeof(RBDIO_SCHEME) - 1;
    const char *slash = strchr(s, '/');
    if (!slash || slash == s || (size_t)(slash - s) >= sizeof(out->fsid))
        return -EINVAL;
    memcpy(out->fsid, s, (size_t)(slash - s));
    s = slash + 1;
    slash = strchr(s, '/');
    uint64_t pool;
    if (!slash || parse_u64(s, slash, &pool) < 0 || pool > INT64_MAX)
        return -EINVAL;
    out->pool_id = (int64_t)pool;
    s = slash + 1;
    const char *at = strchr(s, '@');
    if (!at || at == s || (size_t)(at - s) >= sizeof(out->image_id) || memchr(s, '/', at - s))
        return -EINVAL;
    memcpy(out->image_id, s, (size_t)(at - s));
    s = at + 1;
    const char *q = strchr(s, '?');
    const char *end = q ? q : s + strlen(s);
    if (parse_u64(s, end, &out->snap_id) < 0)
        return -EINVAL;
    if (!q)
        return 0;
    if (strncmp(q, RBDIO_NS_ARG, sizeof(RBDIO_NS_ARG) - 1))
        return -EINVAL;
    size_t o = 0;
    for (s = q + sizeof(RBDIO_NS_ARG) - 1; *s; s++) {
        int c = (unsigned char)*s;
        if (c == '%') {
            int h = hexval(s[1]), l = h >= 0 ? hexval(s[2]) : -1;
            if (l < 0)
                return -EINVAL;
            c = h * 16 + l;
            s += 2;
        } else if (!ns_char_plain((unsigned char)c)) {
            return -EINVAL;
        }
        if (c == 0 || o + 1 >= sizeof(out->ns))
            return -EINVAL;
        out->ns[o++] = (char)c;
    }
    return o ? 0 : -EINVAL;
}

int rbdio_ioctx(rados_t c, int64_t pool_id, const char *ns, rados_ioctx_t *out)
{
    int r = rados_ioctx_create2(c, pool_id, out);
    if (r < 0)
        return r;
    rados_ioctx_set_namespace(*out, ns && ns[0] ? ns : NULL);
    return 0;
}

/* ---- in-order diffs ---- */

struct diff_range {
    uint64_t off, len;
    bool exists;
};
DEFINE_VECTOR_TYPE(diff_range_list, struct diff_range);

struct diff_walk {
    uint64_t period;     /* bytes of one stripe period: librbd's unit of work */
    uint64_t period_end; /* end of the period being collected */
    uint64_t done;       /* everything before was emitted */
    diff_range_list buf; /* the period's ranges */
    struct diff_range pend;
    bool have_pend;
    int (*emit)(void *opaque, uint64_t off, uint64_t len, bool exists);
    void *opaque;
    int r;
};

static int range_cmp(const struct diff_range *a, const struct diff_range *b)
{
    return a->off < b->off ? -1 : a->off > b->off;
}

static int walk_put(struct diff_walk *w, const struct diff_range *d)
{
    if (w->have_pend && w->pend.exists == d->exists && w->pend.off + w->pend.len == d->off) {
        w->pend.len += d->len;
        return 0;
    }
    if (w->have_pend) {
        int r = w->emit(w->opaque, w->pend.off, w->pend.len, w->pend.exists);
        if (r < 0)
            return r;
    }
    w->pend = *d;
    w->have_pend = true;
    return 0;
}

static int walk_flush(struct diff_walk *w)
{
    diff_range_list_sort(&w->buf, range_cmp);
    for (size_t i = 0; i < w->buf.len; i++) {
        const struct diff_range *d = &w->buf.ptr[i];
        if (d->off < w->done) /* overlapping or out of its period: not librbd's contract */
            return -EPROTO;
        int r = walk_put(w, d);
        if (r < 0)
            return r;
        w->done = d->off + d->len;
    }
    diff_range_list_clear(&w->buf);
    return 0;
}

static int walk_cb(uint64_t off, size_t len, int exists, void *arg)
{
    struct diff_walk *w = arg;
    if (len == 0)
        return 0;
    if (off >= w->period_end) {
        if ((w->r = walk_flush(w)) < 0)
            return w->r;
        w->period_end = (off / w->period + 1) * w->period;
    }
    struct diff_range d = {.off = off, .len = len, .exists = exists != 0};
    if ((w->r = diff_range_list_append(&w->buf, d)) < 0)
        return w->r;
    return 0;
}

int rbdio_diff(rbd_image_t img, const char *from, bool whole_object,
               int (*emit)(void *opaque, uint64_t off, uint64_t len, bool exists), void *opaque)
{
    rbd_image_info_t info;
    uint64_t size, stripes = 1;
    int r = rbd_stat(img, &info, sizeof(info));
    if (r < 0)
        return r;
    size = info.size;
    if ((r = rbd_get_stripe_count(img, &stripes)) < 0)
        return r;
    struct diff_walk w = {
        .period = info.obj_size * (stripes ? stripes : 1), .emit = emit, .opaque = opaque};
    if (w.period == 0)
        return -EINVAL;
    /* include_parent: a clone's data from its parent is data of the image. */
    r = rbd_diff_iterate2(img, from, 0, size, 1, whole_object ? 1 : 0, walk_cb, &w);
    if (r < 0 && w.r < 0)
        r = w.r; /* ours, as emit or the walk returned it */
    if (r >= 0)
        r = walk_flush(&w);
    if (r >= 0 && w.have_pend)
        r = emit(opaque, w.pend.off, w.pend.len, w.pend.exists);
    diff_range_list_reset(&w.buf);
    return r < 0 ? r : 0;
}
