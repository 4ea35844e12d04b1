/* Reading the header of qcow2 images (versions 2 and 3) and telling qcow2 from raw images.
 *
 * Only the metadata needed to compose and check a backing chain is read: the fixed header, the
 * header extensions (backing file format, external data file) and the backing file name, all of
 * which live in the image's first cluster.  Every offset and length read from the file is
 * checked against the cluster and the file size before use, so truncated or garbage files give
 * an error with a reason, never a crash or a read outside the buffer.  Guest data, L2 tables and
 * refcounts are not read (qemu-img does the data work).
 */
#ifndef VMEXPORT_FS_QCOW2_H
#define VMEXPORT_FS_QCOW2_H

#include <stdbool.h>
#include <stdint.h>

/* Longest backing file name accepted, in bytes (qemu's limit as well). */
#define QCOW2_MAX_BACKING_NAME 1023

/* Room for the reason of a failure, e.g. "truncated: the L1 table ends at ... beyond ...". */
#define QCOW2_WHY_LEN 256

/* crypt_method values. */
#define QCOW2_CRYPT_NONE 0
#define QCOW2_CRYPT_AES  1 /* legacy AES-CBC, qemu no longer creates it */
#define QCOW2_CRYPT_LUKS 2

/* Incompatible feature bits (v3).  An image with a bit we do not know cannot be read. */
#define QCOW2_INCOMPAT_DIRTY       (1ULL << 0) /* refcounts may be stale (lazy refcounts) */
#define QCOW2_INCOMPAT_CORRUPT     (1ULL << 1) /* qemu found corruption and flagged the image */
#define QCOW2_INCOMPAT_DATA_FILE   (1ULL << 2) /* guest data lives in an external file */
#define QCOW2_INCOMPAT_COMPRESSION (1ULL << 3) /* compression_type field is meaningful */
#define QCOW2_INCOMPAT_EXTL2       (1ULL << 4) /* extended L2 entries (subclusters) */
#define QCOW2_INCOMPAT_KNOWN                                                                       \
    (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | QCOW2_INCOMPAT_DATA_FILE |                    \
     QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_EXTL2)

/* Compatible feature bits (v3). */
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ULL << 0)

/* Autoclear feature bits (v3). */
#define QCOW2_AUTOCLEAR_BITMAPS  (1ULL << 0) /* the bitmaps extension is consistent */
#define QCOW2_AUTOCLEAR_DATA_RAW (1ULL << 1) /* the external data file is a valid raw image */

struct qcow2_info {
    uint32_t version;      /* 2 or 3 */
    uint32_t cluster_bits; /* 9 .. 21 */
    uint64_t cluster_size; /* 1 << cluster_bits */
    uint64_t virtual_size; /* guest-visible size in bytes */
    uint64_t file_size;    /* size of the image file itself */
    uint32_t crypt_method; /* QCOW2_CRYPT_* */
    bool encrypted;        /* crypt_method != QCOW2_CRYPT_NONE */
    uint32_t l1_size;      /* entries of the active L1 table */
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots; /* internal snapshots */
    uint64_t snapshots_offset;
    uint64_t incompatible_features; /* QCOW2_INCOMPAT_* (0 for v2) */
    uint64_t compatible_features;   /* QCOW2_COMPAT_* (0 for v2) */
    uint64_t autoclear_features;    /* QCOW2_AUTOCLEAR_* (0 for v2) */
    uint32_t refcount_order;        /* refcount width is 1 << refcount_order bits (4 for v2) */
    uint32_t header_length;         /* 72 for v2 */
    uint8_t compression_type;       /* 0 zlib, 1 zstd */
    char *backing_file;      /* backing file name as stored (malloc'd), NULL when there is none */
    char *backing_format;    /* from the backing format extension (malloc'd), NULL if absent */
    char *data_file;         /* from the external data file extension (malloc'd), NULL if absent */
    char why[QCOW2_WHY_LEN]; /* on failure: what is wrong */
};

/* Read the qcow2 header of the image open on fd (a regular file or a block device; the file
 * offset is not used).  Returns 0, or a negative errno with out->why set:
 *   -EMEDIUMTYPE  not a qcow2 image (no "QFI\xfb" magic)
 *   -EOPNOTSUPP   a qcow2 image this code cannot use: version other than 2 or 3, an unknown
 *                 incompatible feature, or an external data file (out->data_file tells which;
 *                 the rest of out is filled in for reporting)
 *   -EINVAL       corrupt or truncated header (out->why says which field and why)
 *   -ENOMEM, or the errno of a failed read.
 * out is zeroed first; call qcow2_info_free(out) afterwards whatever the result. */
int qcow2_info_read(int fd, struct qcow2_info *out);

void qcow2_info_free(struct qcow2_info *info);

/* "aes", "luks" or "none". */
const char *qcow2_crypt_name(uint32_t crypt_method);

/* Image formats told apart by image_probe(). */
enum image_format { IMAGE_FORMAT_RAW, IMAGE_FORMAT_QCOW2 };

/* "raw" or "qcow2": the names qemu uses for the formats. */
const char *image_format_name(enum image_format format);

struct image_info {
    enum image_format format;
    uint64_t virtual_size;   /* guest-visible size: the qcow2 size, or the file size if raw */
    uint64_t file_size;      /* size of the file (or block device) */
    struct qcow2_info qcow2; /* format == IMAGE_FORMAT_QCOW2 (zeroed for raw) */
    char why[QCOW2_WHY_LEN]; /* on failure: what is wrong */
};

/* Tell what disk image path (or the image open on fd) is.  A file with the qcow2 magic must
 * have a valid header (see qcow2_info_read for the errors).  Anything else is a raw image if it
 * looks like one: it must not start with the signature of another image format qemu knows
 * (vmdk, vhdx, vpc, vdi, qed, qcow version 1, LUKS) and its size must be a non-zero multiple of
 * 512 bytes, as every disk is; otherwise -EMEDIUMTYPE, "not a disk image: ...".  Returns 0 or a
 * negative errno with out->why set; call image_info_free(out) afterwards in every case. */
int image_probe(const char *path, struct image_info *out);
int image_probe_fd(int fd, struct image_info *out);

void image_info_free(struct image_info *info);

#endif
