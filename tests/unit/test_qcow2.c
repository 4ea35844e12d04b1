/* Unit tests of the qcow2 header parser, the raw/qcow2 probe and the chain builder (src/fs/qcow2.c,
 * src/fs/chain.c).
 *
 * Images come from qemu-img (versions 2 and 3, cluster sizes, backing names absolute and
 * relative, backing format extension, encryption, external data files, other formats) and from a
 * small header writer of this file, which makes the precise corruptions: every field out of
 * range, extensions that overrun, names too long or with NUL bytes, truncation at every length,
 * and random byte flips (which must give an error or a sane result, never a crash).  Chains are
 * checked against 'qemu-img info --backing-chain --output=json'.
 *
 * Every test works in its own mkdtemp() directory in $TMPDIR (default /tmp), removed after.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "fs/chain.h"
#include "fs/qcow2.h"

#define NFTW_FDS    16
#define CMD_MAX     (3 * PATH_MAX)
#define QEMU_OUTPUT (1024 * 1024) /* largest qemu-img info output read */
#define FUZZ_ROUNDS 3000
#define FUZZ_SEED   12345
#define FUZZ_FLIPS  8 /* bytes changed per fuzz round */
/* qemu-img's key derivation benchmark fails at once ("Unable to get accurate CPU usage") in
 * 15-40% of the runs on a virtual machine, and a run that works takes ~2 s: many tries. */
#define LUKS_TRIES 40

/* Header field offsets, from the qcow2 specification (the parser has its own copy). */
#define H_VERSION           4
#define H_BACKING_OFFSET    8
#define H_BACKING_SIZE      16
#define H_CLUSTER_BITS      20
#define H_SIZE              24
#define H_CRYPT             32
#define H_L1_SIZE           36
#define H_L1_OFFSET         40
#define H_REFCOUNT_OFFSET   48
#define H_REFCOUNT_CLUSTERS 56
#define H_NB_SNAPSHOTS      60
#define H_SNAPSHOTS_OFFSET  64
#define H_INCOMPAT          72
#define H_REFCOUNT_ORDER    96
#define H_HEADER_LENGTH     100
#define H_COMPRESSION       104
#define V2_HEADER           72
#define V3_HEADER           112 /* with the compression type byte and padding, as qemu writes */
#define EXT_BACKING_FORMAT  0xE2792ACAU
#define EXT_DATA_FILE       0x44415441U
#define EXT_UNKNOWN         0x12345678U
#define CLUSTER_BITS        16
#define CLUSTER             (1u << CLUSTER_BITS)
#define MiB                 (1024ULL * 1024)
#define GiB                 (1024 * MiB)

/* Format a path into an array; fails the test when it does not fit. */
#define PATHF(buf, ...) assert_true((size_t)snprintf(buf, sizeof(buf), __VA_ARGS__) < sizeof(buf))

struct fixture {
    char dir[PATH_MAX];
};

static int rm_visit(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof(f->dir), "%s/vmexport-qcow2.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    nftw(f->dir, rm_visit, NFTW_FDS, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* Run a shell command (formatted); the test fails if it does not exit 0. */
static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void sh(const char *fmt, ...)
{
    char cmd[CMD_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof(cmd));
    int r = system(cmd);
    if (r != 0)
        print_message("# command failed (%d): %s\n", r, cmd);
    assert_int_equal(r, 0);
}

/* A LUKS-encrypted qcow2 image of 1 MiB.  qemu-img times its key derivation (2-13 s whatever
 * iter-time says) and fails now and then ("Unable to get accurate CPU usage"), so it gets
 * LUKS_TRIES tries, and is made once per run and copied after that. */
static char luks_cache_dir[] = "/tmp/vmexport-luks.XXXXXX";
static bool luks_dir_made; /* mkdtemp rewrote the template: never call it twice */
static bool luks_cached;

static void luks_cache_remove(void)
{
    char cmd[CMD_MAX];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", luks_cache_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", luks_cache_dir);
}

static void make_luks(const char *path)
{
    char cmd[CMD_MAX];
    if (!luks_dir_made) {
        assert_non_null(mkdtemp(luks_cache_dir));
        luks_dir_made = true;
        atexit(luks_cache_remove);
    }
    if (!luks_cached) {
        PATHF(cmd,
              "qemu-img create -q --object secret,id=s0,data=secret -f qcow2 "
              "-o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 "
              "'%s/enc.qcow2' 1M 2>/dev/null",
              luks_cache_dir);
        for (int i = 0; i < LUKS_TRIES && !luks_cached; i++)
            luks_cached = system(cmd) == 0;
        if (!luks_cached)
            fail_msg("could not create a LUKS image: %s", cmd);
    }
    sh("cp '%s/enc.qcow2' '%s'", luks_cache_dir, path);
}

static int probe(const char *path, struct image_info *info)
{
    int r = image_probe(path, info);
    if (r < 0)
        print_message("# %s: %s\n", path, info->why);
    return r;
}

static int read_header(const char *path, struct qcow2_info *q)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    int r = qcow2_info_read(fd, q);
    close(fd);
    return r;
}

/* ---- images made by qemu-img -------------------------------------------------------------- */

static void test_v3_header(void **state)
{
    struct fixture *f = *state;
    char p[PATH_MAX];
    PATHF(p, "%s/v3.qcow2", f->dir);
    sh("qemu-img create -q -f qcow2 -o compat=1.1 '%s' 1G", p);
    struct qcow2_info q;
    assert_int_equal(read_header(p, &q), 0);
    assert_int_equal(q.version, 3);
    assert_int_equal(q.cluster_bits, CLUSTER_BITS);
    assert_int_equal(q.cluster_size, CLUSTER);
    assert_int_equal(q.virtual_size, GiB);
    assert_false(q.encrypted);
    assert_int_equal(q.header_length, V3_HEADER);
    assert_int_equal(q.refcount_order, 4);
    assert_int_equal(q.l1_size, 2); /* 512 MiB per L2 table of 64 KiB clusters */
    assert_null(q.backing_file);
    assert_null(q.backing_format);
    assert_null(q.data_file);
    qcow2_info_free(&q);

    struct image_info info;
    assert_int_equal(probe(p, &info), 0);
    assert_int_equal(info.format, IMAGE_FORMAT_QCOW2);
    assert_int_equal(info.virtual_size, GiB);
    assert_string_equal(image_format_name(info.format), "qcow2");
    image_info_free(&info);
}

static void test_v2_header_with_backing(void **state)
{
    struct fixture *f = *state;
    char base[PATH_MAX], top[PATH_MAX];
    PATHF(base, "%s/base.qcow2", f->dir);
    PATHF(top, "%s/top.qcow2", f->dir);
    sh("qemu-img create -q -f qcow2 -o compat=0.10 '%s' 100M", base);
    sh("qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 '%s' 200M", top);
    struct qcow2_info q;
    assert_int_equal(read_header(base, &q), 0);
    assert_int_equal(q.version, 2);
    assert_int_equal(q.header_length, V2_HEADER);
    assert_int_equal(q.incompatible_features, 0);
    assert_null(q.backing_file);
    qcow2_info_free(&q);

    assert_int_equal(read_header(top, &q), 0);
    assert_int_equal(q.version, 2);
    assert_int_equal(q.virtual_size, 200 * MiB);
    assert_non_null(q.backing_file);
    assert_string_equal(q.backing_file, "base.qcow2");
    assert_non_null(q.backing_format);
    assert_string_equal(q.backing_format, "qcow2");
    qcow2_info_free(&q);
}

static void test_cluster_sizes(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *opt;
        uint32_t bits;
        const char *size;
        uint64_t bytes;
    } cases[] = {
        {"cluster_size=512", 9, "10M", 10 * MiB},
        {"cluster_size=4k", 12, "1G", GiB},
        {"cluster_size=2M", 21, "100G", 100 * GiB},
        {"extended_l2=on", 16, "3G", 3 * GiB},
        {"compression_type=zstd", 16, "1M", MiB},
        {"lazy_refcounts=on,refcount_bits=64", 16, "0", 0},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char p[PATH_MAX];
        PATHF(p, "%s/c%zu.qcow2", f->dir, i);
        sh("qemu-img create -q -f qcow2 -o %s '%s' %s", cases[i].opt, p, cases[i].size);
        struct qcow2_info q;
        int r = read_header(p, &q);
        if (r < 0)
            print_message("# %s: %s\n", cases[i].opt, q.why);
        assert_int_equal(r, 0);
        assert_int_equal(q.cluster_bits, cases[i].bits);
        assert_int_equal(q.virtual_size, cases[i].bytes);
        qcow2_info_free(&q);
    }
}

static void test_backing_names(void **state)
{
    struct fixture *f = *state;
    char sub[PATH_MAX], base[PATH_MAX], abs_top[PATH_MAX], rel_top[PATH_MAX], raw[PATH_MAX],
        raw_top[PATH_MAX];
    PATHF(sub, "%s/sub", f->dir);
    PATHF(base, "%s/sub/base.qcow2", f->dir);
    PATHF(abs_top, "%s/abs.qcow2", f->dir);
    PATHF(rel_top, "%s/rel.qcow2", f->dir);
    PATHF(raw, "%s/base.raw", f->dir);
    PATHF(raw_top, "%s/on-raw.qcow2", f->dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    sh("qemu-img create -q -f qcow2 '%s' 64M", base);
    sh("qemu-img create -q -f qcow2 -b '%s' -F qcow2 '%s'", base, abs_top);
    sh("cd '%s' && qemu-img create -q -f qcow2 -b sub/base.qcow2 -F qcow2 rel.qcow2", f->dir);
    sh("qemu-img create -q -f raw '%s' 32M", raw);
    sh("qemu-img create -q -f qcow2 -b base.raw -F raw '%s'", raw_top);

    struct qcow2_info q;
    assert_int_equal(read_header(abs_top, &q), 0);
    assert_string_equal(q.backing_file, base);
    assert_string_equal(q.backing_format, "qcow2");
    assert_int_equal(q.virtual_size, 64 * MiB); /* qemu-img took the size from the backing file */
    qcow2_info_free(&q);

    assert_int_equal(read_header(rel_top, &q), 0);
    assert_string_equal(q.backing_file, "sub/base.qcow2");
    qcow2_info_free(&q);

    assert_int_equal(read_header(raw_top, &q), 0);
    assert_string_equal(q.backing_file, "base.raw");
    assert_string_equal(q.backing_format, "raw");
    assert_int_equal(q.virtual_size, 32 * MiB);
    qcow2_info_free(&q);
}

static void test_raw_file(void **state)
{
    struct fixture *f = *state;
    char p[PATH_MAX];
    PATHF(p, "%s/disk.raw", f->dir);
    sh("qemu-img create -q -f raw '%s' 5M && printf 'hello' | dd of='%s' conv=notrunc "
       "status=none",
       p, p);
    struct image_info info;
    assert_int_equal(probe(p, &info), 0);
    assert_int_equal(info.format, IMAGE_FORMAT_RAW);
    assert_string_equal(image_format_name(info.format), "raw");
    assert_int_equal(info.virtual_size, 5 * MiB);
    assert_int_equal(info.file_size, 5 * MiB);
    assert_null(info.qcow2.backing_file);
    image_info_free(&info);

    struct qcow2_info q;
    assert_int_equal(read_header(p, &q), -EMEDIUMTYPE);
    assert_non_null(strstr(q.why, "not a qcow2 image"));
    qcow2_info_free(&q);
}

static void test_not_images(void **state)
{
    struct fixture *f = *state;
    char p[PATH_MAX];
    struct image_info info;

    PATHF(p, "%s/notes.txt", f->dir);
    sh("echo 'not a disk' >'%s'", p);
    assert_int_equal(image_probe(p, &info), -EMEDIUMTYPE);
    assert_non_null(strstr(info.why, "not a disk image"));
    image_info_free(&info);

    PATHF(p, "%s/empty", f->dir);
    sh(": >'%s'", p);
    assert_int_equal(image_probe(p, &info), -EMEDIUMTYPE);
    assert_non_null(strstr(info.why, "empty"));
    image_info_free(&info);

    assert_int_equal(image_probe(f->dir, &info), -EINVAL); /* a directory */
    image_info_free(&info);

    PATHF(p, "%s/missing", f->dir);
    assert_int_equal(image_probe(p, &info), -ENOENT);
    image_info_free(&info);

    static const struct {
        const char *fmt, *name;
        int err;
    } other[] = {
        {"vmdk", "vmdk", -EMEDIUMTYPE},     {"vdi", "vdi", -EMEDIUMTYPE},
        {"vpc", "vpc", -EMEDIUMTYPE},       {"vhdx", "vhdx", -EMEDIUMTYPE},
        {"qed", "qed", -EMEDIUMTYPE},       {"parallels", "parallels", -EMEDIUMTYPE},
        {"qcow", "version 1", -EOPNOTSUPP},
    };
    for (size_t i = 0; i < ARRAY_SIZE(other); i++) {
        PATHF(p, "%s/img.%s", f->dir, other[i].fmt);
        sh("qemu-img create -q -f %s '%s' 8M", other[i].fmt, p);
        int r = image_probe(p, &info);
        if (r != other[i].err || !strstr(info.why, other[i].name))
            print_message("# %s: %d %s\n", other[i].fmt, r, info.why);
        assert_int_equal(r, other[i].err);
        assert_non_null(strstr(info.why, other[i].name));
        image_info_free(&info);
    }
}

static void test_encrypted(void **state)
{
    struct fixture *f = *state;
    char p[PATH_MAX];
    PATHF(p, "%s/enc.qcow2", f->dir);
    make_luks(p);
    struct qcow2_info q;
    assert_int_equal(read_header(p, &q), 0);
    assert_true(q.encrypted);
    assert_int_equal(q.crypt_method, QCOW2_CRYPT_LUKS);
    assert_string_equal(qcow2_crypt_name(q.crypt_method), "luks");
    qcow2_info_free(&q);
}

static void test_external_data_file(void **state)
{
    struct fixture *f = *state;
    char p[PATH_MAX];
    PATHF(p, "%s/ext.qcow2", f->dir);
    sh("cd '%s' && qemu-img create -q -f qcow2 -o data_file=ext.data ext.qcow2 16M", f->dir);
    struct qcow2_info q;
    assert_int_equal(read_header(p, &q), -EOPNOTSUPP);
    assert_non_null(q.data_file); /* reported... */
    assert_string_equal(q.data_file, "ext.data");
    assert_true(q.incompatible_features & QCOW2_INCOMPAT_DATA_FILE);
    assert_non_null(strstr(q.why, "external data file (ext.data)")); /* ...and refused */
    qcow2_info_free(&q);
}

/* ---- synthetic headers -------------------------------------------------------------------- */

struct spec {
    uint32_t version;
    uint64_t size;
    const char *backing;     /* NULL: none */
    const char *backing_fmt; /* NULL: no extension */
    const char *data_file;   /* NULL: no extension */
    bool unknown_ext;        /* add an extension the parser must skip */
};

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

static size_t put_ext(uint8_t *p, uint32_t type, const void *data, uint32_t len)
{
    put32(p, type);
    put32(p + 4, len);
    memcpy(p + 8, data, len);
    return 8 + (len + 7) / 8 * 8;
}

/* A minimal image of 3 clusters of 64 KiB: header, extensions and backing name in the first,
 * the refcount table in the second, the L1 table in the third.  Returns the extension area's
 * offset through *ext (where tests plant broken extensions). */
static size_t build(uint8_t *buf, const struct spec *s, size_t *ext)
{
    const size_t len = 3 * CLUSTER;
    memset(buf, 0, len);
    memcpy(buf, "QFI\xfb", 4);
    put32(buf + H_VERSION, s->version);
    put32(buf + H_CLUSTER_BITS, CLUSTER_BITS);
    put64(buf + H_SIZE, s->size);
    uint64_t per_l1 = (uint64_t)CLUSTER * (CLUSTER / 8);
    put32(buf + H_L1_SIZE, (uint32_t)((s->size + per_l1 - 1) / per_l1));
    put64(buf + H_L1_OFFSET, 2 * CLUSTER);
    put64(buf + H_REFCOUNT_OFFSET, CLUSTER);
    put32(buf + H_REFCOUNT_CLUSTERS, 1);
    size_t pos = V2_HEADER;
    if (s->version == 3) {
        put32(buf + H_REFCOUNT_ORDER, 4);
        put32(buf + H_HEADER_LENGTH, V3_HEADER);
        pos = V3_HEADER;
    }
    *ext = pos;
    if (s->unknown_ext)
        pos += put_ext(buf + pos, EXT_UNKNOWN, "skip me!!", 9);
    if (s->backing_fmt)
        pos += put_ext(buf + pos, EXT_BACKING_FORMAT, s->backing_fmt,
                       (uint32_t)strlen(s->backing_fmt));
    if (s->data_file) {
        pos += put_ext(buf + pos, EXT_DATA_FILE, s->data_file, (uint32_t)strlen(s->data_file));
        put64(buf + H_INCOMPAT, QCOW2_INCOMPAT_DATA_FILE);
    }
    pos += 8; /* end of extensions */
    if (s->backing) {
        size_t n = strlen(s->backing);
        put64(buf + H_BACKING_OFFSET, pos);
        put32(buf + H_BACKING_SIZE, (uint32_t)n);
        memcpy(buf + pos, s->backing, n);
    }
    return len;
}

static void write_file(const char *path, const uint8_t *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    close(fd);
}

/* Parse buf[0, len) as a file; returns the result, q filled. */
static int parse_buf(const struct fixture *f, const uint8_t *buf, size_t len, struct qcow2_info *q)
{
    char p[PATH_MAX];
    PATHF(p, "%s/synthetic.qcow2", f->dir);
    write_file(p, buf, len);
    return read_header(p, q);
}

static void test_synthetic_valid(void **state)
{
    struct fixture *f = *state;
    uint8_t *buf = malloc(3 * CLUSTER);
    assert_non_null(buf);
    size_t ext;
    for (uint32_t version = 2; version <= 3; version++) {
        struct spec s = {.version = version,
                         .size = 3 * GiB,
                         .backing = "/some/old/path/base image.qcow2",
                         .backing_fmt = "qcow2",
                         .unknown_ext = true};
        size_t len = build(buf, &s, &ext);
        struct qcow2_info q;
        int r = parse_buf(f, buf, len, &q);
        if (r < 0)
            print_message("# %s\n", q.why);
        assert_int_equal(r, 0);
        assert_int_equal(q.version, version);
        assert_int_equal(q.virtual_size, 3 * GiB);
        assert_string_equal(q.backing_file, s.backing);
        assert_string_equal(q.backing_format, "qcow2");
        qcow2_info_free(&q);

        /* qemu reads the same from these headers. */
        char p[PATH_MAX], cmd[CMD_MAX];
        PATHF(p, "%s/synthetic.qcow2", f->dir);
        PATHF(cmd, "qemu-img info --output=json -f qcow2 '%s'", p);
        FILE *pipe = popen(cmd, "r");
        assert_non_null(pipe);
        json_error_t err;
        json_t *j = json_loadf(pipe, 0, &err);
        assert_int_equal(pclose(pipe), 0);
        assert_non_null(j);
        assert_int_equal(json_integer_value(json_object_get(j, "virtual-size")), 3 * GiB);
        assert_string_equal(json_string_value(json_object_get(j, "backing-filename")), s.backing);
        assert_string_equal(json_string_value(json_object_get(j, "backing-filename-format")),
                            "qcow2");
        json_decref(j);
    }
    /* No backing file; an empty backing name means none as well. */
    struct spec s = {.version = 3, .size = MiB};
    size_t len = build(buf, &s, &ext);
    struct qcow2_info q;
    assert_int_equal(parse_buf(f, buf, len, &q), 0);
    assert_null(q.backing_file);
    qcow2_info_free(&q);
    put64(buf + H_BACKING_OFFSET, ext + 8);
    assert_int_equal(parse_buf(f, buf, len, &q), 0);
    assert_null(q.backing_file);
    qcow2_info_free(&q);
    free(buf);
}

/* One corruption of a valid v3 header: the field change and the error expected. */
struct corruption {
    const char *what;
    size_t off;
    int width; /* 4 or 8 bytes, 1 for a byte */
    uint64_t value;
    int err;
    const char *why; /* a piece of the expected reason */
};

static void test_synthetic_corrupt(void **state)
{
    struct fixture *f = *state;
    uint8_t *buf = malloc(3 * CLUSTER), *orig = malloc(3 * CLUSTER);
    assert_non_null(buf);
    assert_non_null(orig);
    size_t ext;
    struct spec s = {.version = 3, .size = GiB, .backing = "base.qcow2", .backing_fmt = "qcow2"};
    size_t len = build(orig, &s, &ext);
    /* Where build() put the backing name: after "qcow2" (8 + 8 bytes) and the end marker. */
    const size_t name_off = ext + 16 + 8;
    const struct corruption cases[] = {
        {"version 1", H_VERSION, 4, 1, -EOPNOTSUPP, "version 1"},
        {"version 4", H_VERSION, 4, 4, -EOPNOTSUPP, "version 4"},
        {"version garbage", H_VERSION, 4, 0xdeadbeef, -EOPNOTSUPP, "not supported"},
        {"cluster_bits 8", H_CLUSTER_BITS, 4, 8, -EINVAL, "cluster_bits"},
        {"cluster_bits 22", H_CLUSTER_BITS, 4, 22, -EINVAL, "cluster_bits"},
        {"cluster_bits huge", H_CLUSTER_BITS, 4, 0xffffffff, -EINVAL, "cluster_bits"},
        {"size too big for L1", H_SIZE, 8, 2 * GiB, -EINVAL, "too small"},
        {"size 2^63", H_SIZE, 8, 1ULL << 63, -EINVAL, "too large"},
        {"crypt method 3", H_CRYPT, 4, 3, -EINVAL, "encryption"},
        {"L1 huge", H_L1_SIZE, 4, 0xffffffff, -EINVAL, "too large"},
        {"L1 unaligned", H_L1_OFFSET, 8, 2 * CLUSTER + 8, -EINVAL, "aligned"},
        {"L1 past EOF", H_L1_OFFSET, 8, 100ULL * CLUSTER, -EINVAL, "truncated"},
        {"L1 at 2^64-64K", H_L1_OFFSET, 8, UINT64_MAX - CLUSTER + 1, -EINVAL, "truncated"},
        {"no refcount table", H_REFCOUNT_OFFSET, 8, 0, -EINVAL, "refcount"},
        {"refcount table past EOF", H_REFCOUNT_OFFSET, 8, 64ULL * CLUSTER, -EINVAL, "truncated"},
        {"refcount clusters 0", H_REFCOUNT_CLUSTERS, 4, 0, -EINVAL, "refcount"},
        {"snapshots huge", H_NB_SNAPSHOTS, 4, 0xffffffff, -EINVAL, "snapshots"},
        {"snapshot table unaligned", H_NB_SNAPSHOTS, 4, 1, -EINVAL, "snapshot table"},
        {"refcount_order 7", H_REFCOUNT_ORDER, 4, 7, -EINVAL, "refcount_order"},
        {"header_length 100", H_HEADER_LENGTH, 4, 100, -EINVAL, "header_length"},
        {"header_length > cluster", H_HEADER_LENGTH, 4, CLUSTER + 8, -EINVAL, "header_length"},
        {"header_length 2^32-1", H_HEADER_LENGTH, 4, 0xffffffff, -EINVAL, "header_length"},
        {"unknown incompatible bit", H_INCOMPAT, 8, 1ULL << 40, -EOPNOTSUPP, "unknown"},
        {"compression without bit", H_COMPRESSION, 1, 1, -EINVAL, "compression"},
        {"backing name 1024 bytes", H_BACKING_SIZE, 4, 1024, -EINVAL, "at most 1023"},
        {"backing name 2^32-1 bytes", H_BACKING_SIZE, 4, 0xffffffff, -EINVAL, "at most 1023"},
        {"backing name in header", H_BACKING_OFFSET, 8, 8, -EINVAL, "overlaps"},
        {"backing name past cluster", H_BACKING_OFFSET, 8, CLUSTER - 4, -EINVAL, "first cluster"},
        {"backing name at 2^64-1", H_BACKING_OFFSET, 8, UINT64_MAX, -EINVAL, "first cluster"},
        {"NUL in backing name", name_off + 2, 1, 0, -EINVAL, "NUL"},
        {"extension overruns", ext + 4, 4, CLUSTER, -EINVAL, "past the end"},
        {"extension length 2^32-1", ext + 4, 4, 0xffffffff, -EINVAL, "past the end"},
        {"format name too long", ext + 4, 4, 16, -EINVAL, "format name"},
        {"empty format name", ext + 4, 4, 0, -EINVAL, "format name"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        const struct corruption *c = &cases[i];
        memcpy(buf, orig, len);
        if (c->width == 8)
            put64(buf + c->off, c->value);
        else if (c->width == 4)
            put32(buf + c->off, (uint32_t)c->value);
        else
            buf[c->off] = (uint8_t)c->value;
        struct qcow2_info q;
        int r = parse_buf(f, buf, len, &q);
        if (r != c->err || !strstr(q.why, c->why))
            print_message("# %s: got %d (%s), want %d (%s)\n", c->what, r, q.why, c->err, c->why);
        assert_int_equal(r, c->err);
        assert_non_null(strstr(q.why, c->why));
        qcow2_info_free(&q);
    }

    /* Names that fit their extension but break the rules. */
    struct qcow2_info q;
    const char *fmt17 = "abcdefghijklmnopq";
    struct spec long_fmt = {.version = 3, .size = MiB, .backing = "b", .backing_fmt = fmt17};
    len = build(buf, &long_fmt, &ext);
    assert_int_equal(parse_buf(f, buf, len, &q), -EINVAL);
    assert_non_null(strstr(q.why, "format name"));
    qcow2_info_free(&q);

    /* Two backing format extensions. */
    struct spec two = {.version = 3, .size = MiB, .backing_fmt = "raw"};
    len = build(buf, &two, &ext);
    put_ext(buf + ext + 16, EXT_BACKING_FORMAT, "raw", 3);
    assert_int_equal(parse_buf(f, buf, len, &q), -EINVAL);
    assert_non_null(strstr(q.why, "two backing file format"));
    qcow2_info_free(&q);

    /* The external data file: reported, refused. */
    struct spec data = {.version = 3, .size = MiB, .data_file = "/dev/sdz"};
    len = build(buf, &data, &ext);
    assert_int_equal(parse_buf(f, buf, len, &q), -EOPNOTSUPP);
    assert_string_equal(q.data_file, "/dev/sdz");
    qcow2_info_free(&q);
    put64(buf + H_INCOMPAT, 0); /* the extension without the bit: still refused */
    assert_int_equal(parse_buf(f, buf, len, &q), -EOPNOTSUPP);
    qcow2_info_free(&q);
    put64(buf + H_INCOMPAT, QCOW2_INCOMPAT_DATA_FILE); /* the bit without a name */
    put32(buf + ext, EXT_UNKNOWN);
    assert_int_equal(parse_buf(f, buf, len, &q), -EOPNOTSUPP);
    assert_null(q.data_file);
    qcow2_info_free(&q);

    /* A backing name of exactly 1023 bytes is fine. */
    char name[QCOW2_MAX_BACKING_NAME + 1];
    memset(name, 'n', QCOW2_MAX_BACKING_NAME);
    name[QCOW2_MAX_BACKING_NAME] = '\0';
    struct spec longest = {.version = 2, .size = MiB, .backing = name};
    len = build(buf, &longest, &ext);
    assert_int_equal(parse_buf(f, buf, len, &q), 0);
    assert_int_equal(strlen(q.backing_file), QCOW2_MAX_BACKING_NAME);
    qcow2_info_free(&q);
    free(buf);
    free(orig);
}

/* Every truncation of qemu-made images (v2 and v3, with backing name and extensions) fails. */
static void test_truncated(void **state)
{
    struct fixture *f = *state;
    for (int version = 2; version <= 3; version++) {
        char p[PATH_MAX], t[PATH_MAX];
        PATHF(p, "%s/full%d.qcow2", f->dir, version);
        PATHF(t, "%s/cut.qcow2", f->dir);
        sh("cd '%s' && qemu-img create -q -f qcow2 -o compat=%s base 8M && "
           "qemu-img create -q -f qcow2 -o compat=%s -b base -F qcow2 full%d.qcow2",
           f->dir, version == 2 ? "0.10" : "1.1", version == 2 ? "0.10" : "1.1", version);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        struct stat st;
        assert_int_equal(fstat(fd, &st), 0);
        size_t size = (size_t)st.st_size;
        uint8_t *buf = malloc(size);
        assert_non_null(buf);
        assert_int_equal(pread(fd, buf, size, 0), (ssize_t)size);
        close(fd);
        /* Every length up to 1 KiB (header, extensions, backing name), then steps. */
        for (size_t cut = 0; cut < size; cut += cut < 1024 ? 1 : 509) {
            write_file(t, buf, cut);
            struct qcow2_info q;
            int r = read_header(t, &q);
            if (r == 0)
                print_message("# v%d cut at %zu parsed\n", version, cut);
            assert_true(r < 0);
            assert_true(q.why[0] != '\0');
            qcow2_info_free(&q);
            struct image_info info;
            assert_true(image_probe(t, &info) < 0);
            image_info_free(&info);
        }
        write_file(t, buf, size);
        struct qcow2_info q;
        assert_int_equal(read_header(t, &q), 0);
        qcow2_info_free(&q);
        free(buf);
    }
}

/* Random byte changes in the first 1 KiB: an error with a reason, or a result within bounds. */
static void test_fuzz(void **state)
{
    struct fixture *f = *state;
    uint8_t *buf = malloc(3 * CLUSTER), *orig = malloc(3 * CLUSTER);
    assert_non_null(buf);
    assert_non_null(orig);
    size_t ext;
    struct spec s = {.version = 3, .size = GiB, .backing = "base.qcow2", .backing_fmt = "qcow2"};
    size_t len = build(orig, &s, &ext);
    srand(FUZZ_SEED);
    unsigned ok = 0;
    for (int round = 0; round < FUZZ_ROUNDS; round++) {
        memcpy(buf, orig, len);
        for (int k = 0; k < FUZZ_FLIPS; k++) {
            /* Mostly the fixed header, where every byte matters. */
            size_t span = rand() % 2 ? V3_HEADER : 1024;
            size_t off = (size_t)rand() % span;
            buf[off] = (uint8_t)rand();
        }
        bool truncate = rand() % 8 == 0;
        size_t cut = truncate ? (size_t)rand() % len : len;
        struct qcow2_info q;
        int r = parse_buf(f, buf, cut, &q);
        if (r == 0) {
            ok++;
            assert_true(q.version == 2 || q.version == 3);
            assert_true(q.cluster_bits >= 9 && q.cluster_bits <= 21);
            assert_true(!q.backing_file || strlen(q.backing_file) <= QCOW2_MAX_BACKING_NAME);
            assert_true(q.virtual_size <= INT64_MAX);
        } else {
            assert_true(q.why[0] != '\0');
        }
        qcow2_info_free(&q);
    }
    print_message("# fuzz: %u of %d mutated headers still parse\n", ok, FUZZ_ROUNDS);
    free(buf);
    free(orig);
}

/* ---- chains ------------------------------------------------------------------------------- */

/* The chain of dir must be, base first, what qemu-img info --backing-chain says of its top. */
static void assert_matches_qemu(const struct chain *c)
{
    char cmd[CMD_MAX];
    PATHF(cmd, "qemu-img info --backing-chain --output=json '%s'", chain_top(c)->path);
    FILE *pipe = popen(cmd, "r");
    assert_non_null(pipe);
    json_error_t err;
    json_t *j = json_loadf(pipe, 0, &err);
    assert_int_equal(pclose(pipe), 0);
    assert_non_null(j);
    assert_int_equal(json_array_size(j), c->len);
    for (size_t i = 0; i < c->len; i++) {
        /* qemu lists the top first. */
        const json_t *e = json_array_get(j, c->len - 1 - i);
        const struct chain_layer *l = &c->layers[i];
        const char *name = json_string_value(json_object_get(e, "filename"));
        assert_non_null(name);
        const char *slash = strrchr(name, '/');
        assert_string_equal(slash ? slash + 1 : name, l->name);
        assert_string_equal(json_string_value(json_object_get(e, "format")),
                            image_format_name(l->info.format));
        assert_int_equal(json_integer_value(json_object_get(e, "virtual-size")),
                         l->info.virtual_size);
    }
    json_decref(j);
}

static int build_chain(const char *dir, struct chain *c)
{
    int r = chain_build(dir, c);
    if (r < 0)
        print_message("# chain of %s: %s\n", dir, c->error);
    return r;
}

static void test_chain_order(void **state)
{
    struct fixture *f = *state;
    /* Names in an order unrelated to the chain's; relative and absolute backing names; a raw
     * base; growing virtual sizes. */
    sh("cd '%s' && qemu-img create -q -f raw m.raw 16M && "
       "qemu-img create -q -f qcow2 -b m.raw -F raw z.qcow2 && "
       "qemu-img create -q -f qcow2 -b \"$PWD/z.qcow2\" -F qcow2 a.qcow2 32M && "
       "qemu-img create -q -f qcow2 -o compat=0.10 -b a.qcow2 -F qcow2 k.qcow2 && "
       "mkdir ignored.d",
       f->dir);
    struct chain c;
    assert_int_equal(build_chain(f->dir, &c), 0);
    assert_int_equal(c.len, 4);
    static const char *const order[] = {"m.raw", "z.qcow2", "a.qcow2", "k.qcow2"};
    for (size_t i = 0; i < c.len; i++) {
        assert_string_equal(c.layers[i].name, order[i]);
        assert_false(c.layers[i].backing_by_name);
    }
    assert_int_equal(c.layers[0].info.format, IMAGE_FORMAT_RAW);
    assert_int_equal(chain_top(&c)->info.virtual_size, 32 * MiB);
    assert_int_equal(chain_check_readable(&c), 0);
    assert_matches_qemu(&c);
    chain_free(&c);
}

static void test_chain_single(void **state)
{
    struct fixture *f = *state;
    sh("qemu-img create -q -f qcow2 '%s/only.qcow2' 1M", f->dir);
    struct chain c;
    assert_int_equal(build_chain(f->dir, &c), 0);
    assert_int_equal(c.len, 1);
    assert_string_equal(chain_top(&c)->name, "only.qcow2");
    assert_matches_qemu(&c);
    chain_free(&c);
}

static void test_chain_moved(void **state)
{
    struct fixture *f = *state;
    /* Made in old/ with absolute names, then moved: the names point nowhere, so the files of
     * the directory with the same basenames are used. */
    sh("cd '%s' && mkdir old && cd old && qemu-img create -q -f qcow2 base.qcow2 8M && "
       "qemu-img create -q -f qcow2 -b \"$PWD/base.qcow2\" -F qcow2 mid.qcow2 && "
       "qemu-img create -q -f qcow2 -b \"$PWD/mid.qcow2\" -F qcow2 top.qcow2 && cd .. && "
       "mv old new",
       f->dir);
    char dir[PATH_MAX];
    PATHF(dir, "%s/new", f->dir);
    struct chain c;
    assert_int_equal(build_chain(dir, &c), 0);
    assert_int_equal(c.len, 3);
    assert_string_equal(c.layers[0].name, "base.qcow2");
    assert_false(c.layers[0].backing_by_name);
    assert_true(c.layers[1].backing_by_name);
    assert_true(c.layers[2].backing_by_name);
    assert_string_equal(chain_top(&c)->name, "top.qcow2");
    chain_free(&c);

    /* The old path exists again but outside the directory: still the directory's files. */
    sh("mkdir '%s/old' && cp '%s/new/base.qcow2' '%s/old/'", f->dir, f->dir, f->dir);
    assert_int_equal(build_chain(dir, &c), 0);
    assert_true(c.layers[1].backing_by_name);
    chain_free(&c);

    /* Without a same-named file in the directory, the outside file is not followed. */
    sh("mv '%s/new/base.qcow2' '%s/new/renamed.qcow2'", f->dir, f->dir);
    assert_int_equal(chain_build(dir, &c), -ENOENT);
    assert_non_null(strstr(c.error, "mid.qcow2: backing file "));
    assert_non_null(strstr(c.error, "/old/base.qcow2 is not in the directory"));
    chain_free(&c);
}

static void test_chain_errors(void **state)
{
    struct fixture *f = *state;
    char d[PATH_MAX];
    struct chain c;

    /* Empty directory (a subdirectory does not count). */
    PATHF(d, "%s/empty", f->dir);
    sh("mkdir -p '%s/sub'", d);
    assert_int_equal(chain_build(d, &c), -ENODATA);
    assert_non_null(strstr(c.error, "no image files"));
    chain_free(&c);

    /* Missing directory. */
    PATHF(d, "%s/none", f->dir);
    assert_int_equal(chain_build(d, &c), -ENOENT);
    chain_free(&c);

    /* Missing base. */
    PATHF(d, "%s/missing", f->dir);
    sh("mkdir '%s' && cd '%s' && qemu-img create -q -f qcow2 base.qcow2 1M && "
       "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 b.qcow2 && rm base.qcow2",
       d, d);
    assert_int_equal(chain_build(d, &c), -ENOENT);
    assert_string_equal(c.error, "b.qcow2: backing file base.qcow2 not found");
    chain_free(&c);

    /* A loop made with rebase -u. */
    PATHF(d, "%s/loop", f->dir);
    sh("mkdir '%s' && cd '%s' && qemu-img create -q -f qcow2 a.qcow2 1M && "
       "qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2 && "
       "qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 c.qcow2 && "
       "qemu-img rebase -u -b b.qcow2 -F qcow2 a.qcow2",
       d, d);
    assert_int_equal(chain_build(d, &c), -ELOOP);
    assert_string_equal(c.error, "a.qcow2 -> b.qcow2 -> a.qcow2: backing chain loops");
    chain_free(&c);
    sh("cd '%s' && qemu-img rebase -u -b a.qcow2 -F qcow2 a.qcow2 && rm c.qcow2 b.qcow2", d);
    assert_int_equal(chain_build(d, &c), -ELOOP);
    assert_string_equal(c.error, "a.qcow2 -> a.qcow2: backing chain loops");
    chain_free(&c);

    /* Two unrelated chains. */
    PATHF(d, "%s/two", f->dir);
    sh("mkdir '%s' && cd '%s' && qemu-img create -q -f qcow2 a.qcow2 1M && "
       "qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2 && "
       "qemu-img create -q -f qcow2 x.qcow2 1M && "
       "qemu-img create -q -f qcow2 -b x.qcow2 -F qcow2 y.qcow2",
       d, d);
    assert_int_equal(chain_build(d, &c), -ENOTUNIQ);
    assert_string_equal(c.error, "the files do not form one chain: 2 bases (a.qcow2, x.qcow2) "
                                 "and 2 tops (b.qcow2, y.qcow2); chains: b.qcow2 -> a.qcow2; "
                                 "y.qcow2 -> x.qcow2");
    chain_free(&c);

    /* Two tops on one base (a fork). */
    sh("cd '%s' && rm x.qcow2 y.qcow2 && qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 "
       "c.qcow2",
       d);
    assert_int_equal(chain_build(d, &c), -ENOTUNIQ);
    assert_non_null(strstr(c.error, "1 base (a.qcow2) and 2 tops (b.qcow2, c.qcow2)"));
    chain_free(&c);

    /* A file that is not an image. */
    PATHF(d, "%s/junk", f->dir);
    sh("mkdir '%s' && cd '%s' && qemu-img create -q -f qcow2 a.qcow2 1M && "
       "head -c 777 /dev/urandom >junk.bin",
       d, d);
    assert_int_equal(chain_build(d, &c), -EMEDIUMTYPE);
    assert_non_null(strstr(c.error, "junk.bin: not a disk image"));
    chain_free(&c);

    /* A corrupt qcow2 file. */
    sh("cd '%s' && rm junk.bin && printf 'QFI\\373\\0\\0\\0\\3' >bad.qcow2 && "
       "head -c 600 /dev/zero >>bad.qcow2",
       d);
    assert_int_equal(chain_build(d, &c), -EINVAL);
    assert_non_null(strstr(c.error, "bad.qcow2: "));
    chain_free(&c);

    /* A backing file in another format than declared. */
    PATHF(d, "%s/fmt", f->dir);
    sh("mkdir '%s' && cd '%s' && qemu-img create -q -f qcow2 base.img 1M && "
       "qemu-img create -q -f qcow2 -b base.img -F qcow2 top.qcow2 && "
       "qemu-img rebase -u -b base.img -F raw top.qcow2",
       d, d);
    assert_int_equal(chain_build(d, &c), -EMEDIUMTYPE);
    assert_string_equal(c.error, "top.qcow2: backing file base.img is a qcow2 image, but top.qcow2 "
                                 "declares raw");
    chain_free(&c);

    /* A protocol name. */
    PATHF(d, "%s/proto", f->dir);
    sh("mkdir '%s' && cd '%s' && qemu-img create -q -f qcow2 a.qcow2 1M && "
       "qemu-img rebase -u -b nbd://localhost/x -F raw a.qcow2",
       d, d);
    assert_int_equal(chain_build(d, &c), -EOPNOTSUPP);
    assert_non_null(strstr(c.error, "a.qcow2: backing file nbd://localhost/x is not a plain"));
    chain_free(&c);
}

static void test_chain_unreadable(void **state)
{
    struct fixture *f = *state;
    char p[PATH_MAX];
    PATHF(p, "%s/enc.qcow2", f->dir);
    make_luks(p);
    struct chain c;
    assert_int_equal(build_chain(f->dir, &c), 0);
    assert_int_equal(chain_check_readable(&c), -EOPNOTSUPP);
    assert_non_null(strstr(c.error, "enc.qcow2: encrypted (luks)"));
    chain_free(&c);

    /* The corrupt bit (byte 79 holds bits 0-7 of the incompatible features). */
    sh("cd '%s' && rm enc.qcow2 && qemu-img create -q -f qcow2 c.qcow2 1M && "
       "printf '\\002' | dd of=c.qcow2 bs=1 seek=79 conv=notrunc status=none",
       f->dir);
    assert_int_equal(build_chain(f->dir, &c), 0);
    assert_int_equal(chain_check_readable(&c), -EOPNOTSUPP);
    assert_non_null(strstr(c.error, "c.qcow2: qemu marked the image corrupt"));
    chain_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_v3_header, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_header_with_backing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cluster_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backing_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raw_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_images, setup, teardown),
        cmocka_unit_test_setup_teardown(test_encrypted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_external_data_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_synthetic_valid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_synthetic_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fuzz, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_single, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_moved, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_unreadable, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
