/* Test tool: random workloads on RBD images with librbd, for tests/integration/test-rbd.sh and
 * bench/bench-rbd.sh.  The cluster is the one of $CEPH_CONF, the user client.$CEPH_ID.
 *
 *   rbd_workload mix POOL[/NS] SEED OPS IMAGE...
 *       OPS random operations on each image (one connection for all): writes of random
 *       bytes at any byte offset (1 B to 128 KiB), zero writes (rbd_write_zeroes, up to
 *       64 KiB) and discards of whole objects (which remove the object: a diff reports them
 *       as no longer existing; librbd skips discards of parts of objects by default,
 *       rbd_skip_partial_discard, so those are not used).
 *   rbd_workload write POOL[/NS] IMAGE OFFSET LENGTH SEED    one write of random bytes
 *   rbd_workload discard POOL[/NS] IMAGE OFFSET LENGTH       one rbd_discard
 *   rbd_workload randwrite POOL[/NS] IMAGE SEED COUNT SIZE
 *       COUNT writes of SIZE random bytes at random SIZE-aligned offsets (benchmarks' changes)
 *   rbd_workload counter POOL[/NS] SECONDS IMAGE...
 *       write an increasing 8-byte counter at offset 0 of each image in turn (image 1 gets n,
 *       then image 2 gets n, ...) for SECONDS; fails if a write fails.  A consistent snapshot
 *       of the images then holds counters that never increase from one image to the next
 *       and differ by at most one.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rados/librados.h>
#include <rbd/librbd.h>

#define MAX_WRITE  (128 * 1024)
#define MAX_ZERO   (64 * 1024)
#define MAX_IMAGES 16
#define PCT_WRITE  80 /* out of 100 operations; the rest split between zeroes and discards */
#define PCT_ZERO   90
#define TIMEOUT_S  "60" /* librados' option string: seconds */

static uint64_t rng;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void fill(char *buf, size_t n)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)(next() >> 24);
}

static void die(const char *what, int r)
{
    fprintf(stderr, "rbd_workload: %s: %s\n", what, strerror(-r));
    exit(1);
}

static rados_t cluster;

static rados_ioctx_t pool_open(char *spec)
{
    rados_ioctx_t io;
    char *ns = strchr(spec, '/');
    if (ns)
        *ns++ = '\0';
    const char *id = getenv("CEPH_ID");
    int r = rados_create(&cluster, id && id[0] ? id : "admin");
    /* Waits long enough for a loaded machine (the tests' configuration says 10 s). */
    if (r < 0 || (r = rados_conf_read_file(cluster, NULL)) < 0 ||
        (r = rados_conf_set(cluster, "client_mount_timeout", TIMEOUT_S)) < 0 ||
        (r = rados_conf_set(cluster, "rados_mon_op_timeout", TIMEOUT_S)) < 0 ||
        (r = rados_conf_set(cluster, "rados_osd_op_timeout", TIMEOUT_S)) < 0 ||
        (r = rados_connect(cluster)) < 0)
        die("connecting", r);
    if ((r = rados_ioctx_create(cluster, spec, &io)) < 0)
        die(spec, r);
    rados_ioctx_set_namespace(io, ns);
    return io;
}

static rbd_image_t image_open(rados_ioctx_t io, const char *name)
{
    rbd_image_t img;
    int r = rbd_open(io, name, &img, NULL);
    if (r < 0)
        die(name, r);
    return img;
}

static int mix(rados_ioctx_t io, const char *name, uint64_t seed, long ops)
{
    rbd_image_t img = image_open(io, name);
    rbd_image_info_t info;
    int r = rbd_stat(img, &info, sizeof(info));
    if (r < 0)
        die("rbd_stat", r);
    static char buf[MAX_WRITE];
    rng = seed * 2654435761u + 1;
    for (long i = 0; i < ops; i++) {
        uint64_t kind = next() % 100, off = next() % info.size;
        if (kind < PCT_WRITE) {
            size_t len = 1 + next() % MAX_WRITE;
            if (len > info.size - off)
                len = info.size - off;
            fill(buf, len);
            ssize_t w = rbd_write(img, off, len, buf);
            if (w != (ssize_t)len)
                die("rbd_write", w < 0 ? (int)w : -EIO);
        } else if (kind < PCT_ZERO) {
            size_t len = 1 + next() % MAX_ZERO;
            if (len > info.size - off)
                len = info.size - off;
            ssize_t w = rbd_write_zeroes(img, off, len, 0, 0);
            if (w < 0)
                die("rbd_write_zeroes", (int)w);
        } else {
            uint64_t obj = off / info.obj_size * info.obj_size;
            uint64_t len = info.obj_size < info.size - obj ? info.obj_size : info.size - obj;
            if ((r = rbd_discard(img, obj, len)) < 0)
                die("rbd_discard", r);
        }
    }
    if ((r = rbd_flush(img)) < 0)
        die("rbd_flush", r);
    rbd_close(img);
    return 0;
}

static int randwrite(rados_ioctx_t io, const char *name, uint64_t seed, long count, size_t size)
{
    rbd_image_t img = image_open(io, name);
    uint64_t isize;
    int r = rbd_get_size(img, &isize);
    if (r < 0)
        die("rbd_get_size", r);
    char *buf = malloc(size);
    if (!buf || size == 0 || isize < size)
        die("randwrite", -EINVAL);
    rng = seed * 2654435761u + 1;
    for (long i = 0; i < count; i++) {
        uint64_t off = next() % (isize / size) * size;
        fill(buf, size);
        ssize_t w = rbd_write(img, off, size, buf);
        if (w != (ssize_t)size)
            die("rbd_write", w < 0 ? (int)w : -EIO);
    }
    if ((r = rbd_flush(img)) < 0)
        die("rbd_flush", r);
    free(buf);
    rbd_close(img);
    return 0;
}

static int counter(rados_ioctx_t io, double seconds, char **names, int n)
{
    rbd_image_t imgs[MAX_IMAGES];
    for (int i = 0; i < n; i++)
        imgs[i] = image_open(io, names[i]);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t c = 0;
    do {
        c++;
        for (int i = 0; i < n; i++) {
            ssize_t w = rbd_write(imgs[i], 0, sizeof(c), (const char *)&c);
            if (w != (ssize_t)sizeof(c))
                die("counter write", w < 0 ? (int)w : -EIO);
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 < seconds);
    for (int i = 0; i < n; i++)
        rbd_close(imgs[i]);
    printf("%" PRIu64 "\n", c);
    return 0;
}

int main(int argc, char **argv)
{
    int r = 0;
    if (argc >= 6 && !strcmp(argv[1], "mix")) {
        rados_ioctx_t io = pool_open(argv[2]);
        uint64_t seed = strtoull(argv[3], NULL, 0);
        for (int i = 5; i < argc && r == 0; i++)
            r = mix(io, argv[i], seed + (uint64_t)i, strtol(argv[4], NULL, 0));
        rados_ioctx_destroy(io);
    } else if (argc == 7 && !strcmp(argv[1], "write")) {
        rados_ioctx_t io = pool_open(argv[2]);
        rbd_image_t img = image_open(io, argv[3]);
        size_t len = strtoull(argv[5], NULL, 0);
        char *buf = malloc(len ? len : 1);
        rng = strtoull(argv[6], NULL, 0) * 2654435761u + 1;
        fill(buf, len);
        ssize_t w = rbd_write(img, strtoull(argv[4], NULL, 0), len, buf);
        if (w != (ssize_t)len)
            die("rbd_write", w < 0 ? (int)w : -EIO);
        free(buf);
        rbd_close(img);
        rados_ioctx_destroy(io);
    } else if (argc == 6 && !strcmp(argv[1], "discard")) {
        rados_ioctx_t io = pool_open(argv[2]);
        rbd_image_t img = image_open(io, argv[3]);
        if ((r = rbd_discard(img, strtoull(argv[4], NULL, 0), strtoull(argv[5], NULL, 0))) < 0)
            die("rbd_discard", r);
        rbd_close(img);
        rados_ioctx_destroy(io);
    } else if (argc == 7 && !strcmp(argv[1], "randwrite")) {
        rados_ioctx_t io = pool_open(argv[2]);
        r = randwrite(io, argv[3], strtoull(argv[4], NULL, 0), strtol(argv[5], NULL, 0),
                      strtoull(argv[6], NULL, 0));
        rados_ioctx_destroy(io);
    } else if (argc >= 5 && argc - 4 <= MAX_IMAGES && !strcmp(argv[1], "counter")) {
        rados_ioctx_t io = pool_open(argv[2]);
        r = counter(io, strtod(argv[3], NULL), argv + 4, argc - 4);
        rados_ioctx_destroy(io);
    } else {
        fprintf(stderr, "usage: rbd_workload mix POOL[/NS] SEED OPS IMAGE...\n"
                        "       rbd_workload write POOL[/NS] IMAGE OFFSET LENGTH SEED\n"
                        "       rbd_workload discard POOL[/NS] IMAGE OFFSET LENGTH\n"
                        "       rbd_workload randwrite POOL[/NS] IMAGE SEED COUNT SIZE\n"
                        "       rbd_workload counter POOL[/NS] SECONDS IMAGE...\n");
        return 2;
    }
    rados_shutdown(cluster);
    return r ? 1 : 0;
}
