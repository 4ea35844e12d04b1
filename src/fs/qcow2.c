/* qcow2 header parser and the raw/qcow2 probe (see qcow2.h).  Written from the qcow2 format
 * specification: every field is big-endian; the header, its extensions and the backing file name
 * all lie in the first cluster of the image. */
#include "fs/qcow2.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "fs/fsinfo.h"

/* "QFI\xfb", the first four bytes of every qcow image. */
#define QCOW2_MAGIC 0x514649fbU

/* Byte offsets of the header fields. */
#define OFF_VERSION           4
#define OFF_BACKING_OFFSET    8
#define OFF_BACKING_SIZE      16
#define OFF_CLUSTER_BITS      20
#define OFF_SIZE              24
#define OFF_CRYPT_METHOD      32
#define OFF_L1_SIZE           36
#define OFF_L1_OFFSET         40
#define OFF_REFCOUNT_OFFSET   48
#define OFF_REFCOUNT_CLUSTERS 56
#define OFF_NB_SNAPSHOTS      60
#define OFF_SNAPSHOTS_OFFSET  64
/* Version 3 only. */
#define OFF_INCOMPATIBLE     72
#define OFF_COMPATIBLE       80
#define OFF_AUTOCLEAR        88
#define OFF_REFCOUNT_ORDER   96
#define OFF_HEADER_LENGTH    100
#define OFF_COMPRESSION_TYPE 104 /* present when header_length > 104 */

/* Header sizes: version 2 is fixed, version 3 gives its length (at least this much). */
#define V2_HEADER_LENGTH     72
#define V3_HEADER_MIN_LENGTH 104

#define MAGIC_LEN 4
/* Clusters from 512 bytes to 2 MiB: the spec's minimum, qemu's maximum. */
#define MIN_CLUSTER_BITS 9
#define MAX_CLUSTER_BITS 21
/* Refcounts are 16 bits wide in version 2; version 3 allows 1 to 64 bits. */
#define V2_REFCOUNT_ORDER  4
#define MAX_REFCOUNT_ORDER 6
/* Table entry sizes: L1 entries, and L2 entries without and with subclusters. */
#define L1_ENTRY_SIZE          8
#define L2_ENTRY_SIZE          8
#define L2_ENTRY_SIZE_EXTENDED 16
/* qemu refuses active L1 tables larger than 32 MiB and more than 65536 internal snapshots. */
#define MAX_L1_BYTES  (32ULL * 1024 * 1024)
#define MAX_SNAPSHOTS 65536
/* compression_type values. */
#define COMPRESSION_ZLIB 0
#define COMPRESSION_ZSTD 1

/* Header extensions: u32 type, u32 length, then the data padded to a multiple of 8 bytes. */
#define EXT_HEADER_LEN     8
#define EXT_ALIGN          8
#define EXT_END            0x00000000U
#define EXT_BACKING_FORMAT 0xE2792ACAU
#define EXT_DATA_FILE      0x44415441U /* "DATA" */
/* qemu keeps format names in 16 bytes with the terminating NUL. */
#define MAX_FORMAT_NAME 15
/* External data file names are limited like backing file names. */
#define MAX_DATA_FILE_NAME QCOW2_MAX_BACKING_NAME

/* Every disk is a whole number of 512-byte sectors. */
#define SECTOR_SIZE 512
/* Bytes read at the start of a file to recognise image formats. */
#define SNIFF_LEN 512

static uint32_t be32_at(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t be64_at(const uint8_t *p)
{
    return (uint64_t)be32_at(p) << 32 | be32_at(p + 4);
}

static int fail(char *why, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Record why in a QCOW2_WHY_LEN buffer; returns err. */
static int fail(char *why, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, QCOW2_WHY_LEN, fmt, ap);
    va_end(ap);
    return err;
}

/* Read up to len bytes at off, stopping early only at end of file; *got says how many. */
static int read_at(int fd, void *buf, size_t len, uint64_t off, size_t *got)
{
    return fs_pread_direct(fd, -1, buf, len, off, got); /* no O_DIRECT fd: plain reads */
}

/* Size of a regular file or block device. */
static int fd_size(int fd, uint64_t *size, char *why)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return fail(why, -errno, "%s", strerror(errno));
    if (S_ISREG(st.st_mode)) {
        *size = (uint64_t)st.st_size;
        return 0;
    }
    if (!S_ISBLK(st.st_mode))
        return fail(why, -EINVAL, "not a regular file or block device");
    off_t end = lseek(fd, 0, SEEK_END);
    if (end < 0)
        return fail(why, -errno, "finding the device size: %s", strerror(errno));
    *size = (uint64_t)end;
    return 0;
}

/* A string stored in the image (not NUL-terminated): must be 1..max bytes without NUL. */
static int copy_name(const uint8_t *p, uint32_t len, uint32_t max, const char *what, char **out,
                     char *why)
{
    if (len == 0 || len > max)
        return fail(why, -EINVAL, "%s is %" PRIu32 " bytes long (1 to %" PRIu32 " allowed)", what,
                    len, max);
    if (memchr(p, '\0', len))
        return fail(why, -EINVAL, "%s contains a NUL byte", what);
    *out = strndup((const char *)p, len);
    return *out ? 0 : fail(why, -ENOMEM, "out of memory");
}

/* Walk the header extensions in buf[start, end); buf holds buflen bytes of the file. */
static int parse_extensions(const uint8_t *buf, uint64_t buflen, uint64_t start, uint64_t end,
                            struct qcow2_info *out)
{
    uint64_t pos = start;
    while (pos < end && end - pos >= EXT_HEADER_LEN) {
        if (pos + EXT_HEADER_LEN > buflen)
            return fail(out->why, -EINVAL,
                        "truncated: header extension at offset %" PRIu64 " is past the end of "
                        "the file (%" PRIu64 " bytes)",
                        pos, out->file_size);
        uint32_t type = be32_at(buf + pos), len = be32_at(buf + pos + 4);
        if (type == EXT_END)
            return 0;
        uint64_t data = pos + EXT_HEADER_LEN;
        if (len > end - data)
            return fail(out->why, -EINVAL,
                        "header extension 0x%08" PRIx32 " at offset %" PRIu64 " claims %" PRIu32
                        " bytes, past the end of the extension area (%" PRIu64 ")",
                        type, pos, len, end);
        if (data + len > buflen)
            return fail(out->why, -EINVAL,
                        "truncated: header extension 0x%08" PRIx32 " at offset %" PRIu64
                        " is cut off by the end of the file",
                        type, pos);
        int r = 0;
        if (type == EXT_BACKING_FORMAT) {
            if (out->backing_format)
                return fail(out->why, -EINVAL, "two backing file format extensions");
            r = copy_name(buf + data, len, MAX_FORMAT_NAME, "the backing file format name",
                          &out->backing_format, out->why);
        } else if (type == EXT_DATA_FILE) {
            if (out->data_file)
                return fail(out->why, -EINVAL, "two external data file extensions");
            r = copy_name(buf + data, len, MAX_DATA_FILE_NAME, "the external data file name",
                          &out->data_file, out->why);
        }
        /* Any other extension (feature names, bitmaps, encryption header, ...) is skipped:
         * none changes which files the chain is made of. */
        if (r < 0)
            return r;
        uint64_t padded = ((uint64_t)len + EXT_ALIGN - 1) / EXT_ALIGN * EXT_ALIGN;
        pos = data + padded;
    }
    return 0; /* the area ends without an end marker: nothing more to read */
}

/* Checks of the fixed header fields that need no more than the first 104 bytes. */
static int check_fields(struct qcow2_info *out)
{
    char *why = out->why;
    if (out->cluster_bits < MIN_CLUSTER_BITS || out->cluster_bits > MAX_CLUSTER_BITS)
        return fail(why, -EINVAL, "cluster_bits is %" PRIu32 " (must be %d to %d)",
                    out->cluster_bits, MIN_CLUSTER_BITS, MAX_CLUSTER_BITS);
    const uint64_t cs = out->cluster_size;
    if (out->version == 3) {
        if (out->header_length < V3_HEADER_MIN_LENGTH || out->header_length > cs)
            return fail(why, -EINVAL,
                        "header_length is %" PRIu32 " (must be %d to the cluster size %" PRIu64 ")",
                        out->header_length, V3_HEADER_MIN_LENGTH, cs);
        if (out->refcount_order > MAX_REFCOUNT_ORDER)
            return fail(why, -EINVAL, "refcount_order is %" PRIu32 " (at most %d)",
                        out->refcount_order, MAX_REFCOUNT_ORDER);
    }
    if (out->crypt_method > QCOW2_CRYPT_LUKS)
        return fail(why, -EINVAL, "unknown encryption method %" PRIu32, out->crypt_method);
    if (out->crypt_method == QCOW2_CRYPT_LUKS && out->version < 3)
        return fail(why, -EINVAL, "LUKS encryption in a version 2 image");
    if (out->virtual_size > INT64_MAX)
        return fail(why, -EINVAL, "virtual size %" PRIu64 " is too large", out->virtual_size);

    /* The active L1 table must cover the virtual size and lie inside the file; an image cut
     * short after its header fails here. */
    uint64_t l2_entry =
        out->incompatible_features & QCOW2_INCOMPAT_EXTL2 ? L2_ENTRY_SIZE_EXTENDED : L2_ENTRY_SIZE;
    uint64_t per_l1_entry = cs * (cs / l2_entry); /* bytes of guest data one L2 table maps */
    uint64_t l1_needed = out->virtual_size / per_l1_entry + !!(out->virtual_size % per_l1_entry);
    if ((uint64_t)out->l1_size * L1_ENTRY_SIZE > MAX_L1_BYTES)
        return fail(why, -EINVAL, "L1 table of %" PRIu32 " entries is too large", out->l1_size);
    if (out->l1_size < l1_needed)
        return fail(why, -EINVAL,
                    "L1 table of %" PRIu32 " entries is too small for the virtual size %" PRIu64
                    " (needs %" PRIu64 ")",
                    out->l1_size, out->virtual_size, l1_needed);
    if (out->l1_size > 0) {
        if (out->l1_table_offset == 0 || out->l1_table_offset % cs)
            return fail(why, -EINVAL, "L1 table offset %" PRIu64 " is not cluster aligned",
                        out->l1_table_offset);
        uint64_t l1_bytes = (uint64_t)out->l1_size * L1_ENTRY_SIZE;
        if (out->l1_table_offset > out->file_size ||
            l1_bytes > out->file_size - out->l1_table_offset)
            return fail(why, -EINVAL,
                        "truncated: the L1 table (offset %" PRIu64 ", %" PRIu64
                        " bytes) ends past the end of the file (%" PRIu64 " bytes)",
                        out->l1_table_offset, l1_bytes, out->file_size);
    }
    if (out->refcount_table_offset == 0 || out->refcount_table_offset % cs ||
        out->refcount_table_clusters == 0)
        return fail(why, -EINVAL,
                    "invalid refcount table (offset %" PRIu64 ", %" PRIu32 " clusters)",
                    out->refcount_table_offset, out->refcount_table_clusters);
    if (out->refcount_table_offset >= out->file_size)
        return fail(why, -EINVAL,
                    "truncated: the refcount table at offset %" PRIu64
                    " is past the end of the file (%" PRIu64 " bytes)",
                    out->refcount_table_offset, out->file_size);
    if (out->nb_snapshots > MAX_SNAPSHOTS)
        return fail(why, -EINVAL, "%" PRIu32 " internal snapshots (at most %d)", out->nb_snapshots,
                    MAX_SNAPSHOTS);
    if (out->nb_snapshots > 0 && (out->snapshots_offset == 0 || out->snapshots_offset % cs ||
                                  out->snapshots_offset >= out->file_size))
        return fail(why, -EINVAL, "snapshot table offset %" PRIu64 " is invalid",
                    out->snapshots_offset);
    return 0;
}

/* Checks of the backing file name's location (before it is read). */
static int check_backing_location(uint64_t off, uint32_t len, const struct qcow2_info *out,
                                  char *why)
{
    if (len > QCOW2_MAX_BACKING_NAME)
        return fail(why, -EINVAL, "backing file name is %" PRIu32 " bytes long (at most %d)", len,
                    QCOW2_MAX_BACKING_NAME);
    if (off < out->header_length)
        return fail(why, -EINVAL, "backing file name at offset %" PRIu64 " overlaps the header",
                    off);
    if (off > out->cluster_size || len > out->cluster_size - off)
        return fail(why, -EINVAL,
                    "backing file name (offset %" PRIu64 ", %" PRIu32
                    " bytes) is not inside the first cluster",
                    off, len);
    if (off + len > out->file_size)
        return fail(why, -EINVAL,
                    "truncated: the backing file name (offset %" PRIu64 ", %" PRIu32
                    " bytes) is past the end of the file (%" PRIu64 " bytes)",
                    off, len, out->file_size);
    return 0;
}

int qcow2_info_read(int fd, struct qcow2_info *out)
{
    memset(out, 0, sizeof(*out));
    char *why = out->why;
    int r = fd_size(fd, &out->file_size, why);
    if (r < 0)
        return r;

    uint8_t hdr[V3_HEADER_MIN_LENGTH];
    size_t got = 0;
    if ((r = read_at(fd, hdr, sizeof(hdr), 0, &got)) < 0)
        return fail(why, r, "reading the header: %s", strerror(-r));
    if (got < MAGIC_LEN || be32_at(hdr) != QCOW2_MAGIC)
        return fail(why, -EMEDIUMTYPE, "not a qcow2 image (no QFI\\xfb magic)");
    if (got < OFF_VERSION + sizeof(uint32_t))
        return fail(why, -EINVAL, "truncated: the file has %zu bytes", got);
    out->version = be32_at(hdr + OFF_VERSION);
    if (out->version != 2 && out->version != 3)
        return fail(why, -EOPNOTSUPP, "qcow version %" PRIu32 " is not supported (only 2 and 3)",
                    out->version);
    size_t fixed = out->version == 2 ? V2_HEADER_LENGTH : V3_HEADER_MIN_LENGTH;
    if (got < fixed)
        return fail(why, -EINVAL,
                    "truncated: the file has %zu bytes, a version %" PRIu32 " header needs %zu",
                    got, out->version, fixed);

    uint64_t backing_offset = be64_at(hdr + OFF_BACKING_OFFSET);
    uint32_t backing_size = be32_at(hdr + OFF_BACKING_SIZE);
    out->cluster_bits = be32_at(hdr + OFF_CLUSTER_BITS);
    out->virtual_size = be64_at(hdr + OFF_SIZE);
    out->crypt_method = be32_at(hdr + OFF_CRYPT_METHOD);
    out->encrypted = out->crypt_method != QCOW2_CRYPT_NONE;
    out->l1_size = be32_at(hdr + OFF_L1_SIZE);
    out->l1_table_offset = be64_at(hdr + OFF_L1_OFFSET);
    out->refcount_table_offset = be64_at(hdr + OFF_REFCOUNT_OFFSET);
    out->refcount_table_clusters = be32_at(hdr + OFF_REFCOUNT_CLUSTERS);
    out->nb_snapshots = be32_at(hdr + OFF_NB_SNAPSHOTS);
    out->snapshots_offset = be64_at(hdr + OFF_SNAPSHOTS_OFFSET);
    if (out->version == 3) {
        out->incompatible_features = be64_at(hdr + OFF_INCOMPATIBLE);
        out->compatible_features = be64_at(hdr + OFF_COMPATIBLE);
        out->autoclear_features = be64_at(hdr + OFF_AUTOCLEAR);
        out->refcount_order = be32_at(hdr + OFF_REFCOUNT_ORDER);
        out->header_length = be32_at(hdr + OFF_HEADER_LENGTH);
    } else {
        out->refcount_order = V2_REFCOUNT_ORDER;
        out->header_length = V2_HEADER_LENGTH;
    }
    /* Shift only once cluster_bits is known to be sane. */
    if (out->cluster_bits >= MIN_CLUSTER_BITS && out->cluster_bits <= MAX_CLUSTER_BITS)
        out->cluster_size = 1ULL << out->cluster_bits;
    if ((r = check_fields(out)) < 0)
        return r;
    if (out->header_length > out->file_size)
        return fail(why, -EINVAL, "truncated: the header is %" PRIu32 " bytes, the file %" PRIu64,
                    out->header_length, out->file_size);
    if (backing_offset && (r = check_backing_location(backing_offset, backing_size, out, why)) < 0)
        return r;

    /* Everything else is in the first cluster (or what the file has of it). */
    uint64_t buflen = out->cluster_size < out->file_size ? out->cluster_size : out->file_size;
    CLEANUP_FREE uint8_t *buf = malloc(buflen);
    if (!buf)
        return fail(why, -ENOMEM, "out of memory");
    if ((r = read_at(fd, buf, buflen, 0, &got)) < 0)
        return fail(why, r, "reading the first cluster: %s", strerror(-r));
    if (got < buflen)
        return fail(why, -EINVAL, "truncated while reading: the file shrank");

    if (out->header_length > OFF_COMPRESSION_TYPE)
        out->compression_type = buf[OFF_COMPRESSION_TYPE];
    bool compression_bit = out->incompatible_features & QCOW2_INCOMPAT_COMPRESSION;
    if (!compression_bit && out->compression_type != COMPRESSION_ZLIB)
        return fail(why, -EINVAL,
                    "compression type %u is set without the compression type feature bit",
                    out->compression_type);
    if (compression_bit && out->compression_type > COMPRESSION_ZSTD)
        return fail(why, -EOPNOTSUPP, "unknown compression type %u", out->compression_type);

    /* Extensions run from the end of the header to the backing file name, or to the end of the
     * first cluster. */
    uint64_t ext_end = backing_offset ? backing_offset : out->cluster_size;
    if ((r = parse_extensions(buf, buflen, out->header_length, ext_end, out)) < 0)
        return r;

    /* An empty name means no backing file, as for qemu. */
    if (backing_offset && backing_size > 0 &&
        (r = copy_name(buf + backing_offset, backing_size, QCOW2_MAX_BACKING_NAME,
                       "the backing file name", &out->backing_file, why)) < 0)
        return r;

    uint64_t unknown = out->incompatible_features & ~QCOW2_INCOMPAT_KNOWN;
    if (unknown)
        return fail(why, -EOPNOTSUPP, "unknown incompatible features 0x%" PRIx64 " (newer qemu?)",
                    unknown);
    if (out->incompatible_features & QCOW2_INCOMPAT_DATA_FILE || out->data_file)
        return fail(why, -EOPNOTSUPP,
                    "guest data is in an external data file (%s), which is not supported",
                    out->data_file ? out->data_file : "name not recorded in the image");
    return 0;
}

void qcow2_info_free(struct qcow2_info *info)
{
    free(info->backing_file);
    free(info->backing_format);
    free(info->data_file);
    info->backing_file = info->backing_format = info->data_file = NULL;
}

const char *qcow2_crypt_name(uint32_t crypt_method)
{
    switch (crypt_method) {
    case QCOW2_CRYPT_NONE:
        return "none";
    case QCOW2_CRYPT_AES:
        return "aes";
    case QCOW2_CRYPT_LUKS:
        return "luks";
    default:
        return "unknown";
    }
}

const char *image_format_name(enum image_format format)
{
    return format == IMAGE_FORMAT_QCOW2 ? "qcow2" : "raw";
}

/* Signatures of image formats that are neither raw nor qcow2 version 2/3. */
struct signature {
    const char *format;
    size_t offset;
    const char *bytes;
    size_t len;
};

static const struct signature other_formats[] = {
    {"vmdk", 0, "KDMV", 4},
    {"vmdk descriptor", 0, "# Disk DescriptorFile", 21},
    {"vhdx", 0, "vhdxfile", 8},
    {"vpc (vhd)", 0, "conectix", 8},
    {"vdi", 64, "\x7f\x10\xda\xbe", 4}, /* 0xbeda107f, little-endian */
    {"qed", 0, "QED\0", 4},
    {"luks", 0, "LUKS\xba\xbe", 6},
    {"parallels", 0, "WithoutFreeSpace", 16},
    {"parallels", 0, "WithouFreSpacExt", 16},
};

int image_probe_fd(int fd, struct image_info *out)
{
    memset(out, 0, sizeof(*out));
    int r = fd_size(fd, &out->file_size, out->why);
    if (r < 0)
        return r;
    uint8_t head[SNIFF_LEN];
    size_t got = 0;
    if ((r = read_at(fd, head, sizeof(head), 0, &got)) < 0)
        return fail(out->why, r, "reading: %s", strerror(-r));

    if (got >= MAGIC_LEN && be32_at(head) == QCOW2_MAGIC) {
        out->format = IMAGE_FORMAT_QCOW2;
        r = qcow2_info_read(fd, &out->qcow2);
        memcpy(out->why, out->qcow2.why, sizeof(out->why));
        out->virtual_size = out->qcow2.virtual_size;
        return r;
    }
    for (size_t i = 0; i < ARRAY_SIZE(other_formats); i++) {
        const struct signature *s = &other_formats[i];
        if (got >= s->offset + s->len && !memcmp(head + s->offset, s->bytes, s->len))
            return fail(out->why, -EMEDIUMTYPE,
                        "a %s image; only raw and qcow2 images are supported", s->format);
    }
    if (out->file_size == 0)
        return fail(out->why, -EMEDIUMTYPE, "not a disk image: empty file");
    if (out->file_size % SECTOR_SIZE)
        return fail(out->why, -EMEDIUMTYPE,
                    "not a disk image: %" PRIu64 " bytes is not a multiple of %d", out->file_size,
                    SECTOR_SIZE);
    out->format = IMAGE_FORMAT_RAW;
    out->virtual_size = out->file_size;
    return 0;
}

int image_probe(const char *path, struct image_info *out)
{
    CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        memset(out, 0, sizeof(*out));
        return fail(out->why, -e, "%s", strerror(e));
    }
    return image_probe_fd(fd, out);
}

void image_info_free(struct image_info *info)
{
    qcow2_info_free(&info->qcow2);
}
