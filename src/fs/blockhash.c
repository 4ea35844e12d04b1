/* Block-hash sidecar files; see blockhash.h. */
#include "blockhash.h"

#include <endian.h>
#include <fcntl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/cleanup.h"
#include "core/names.h"
#include "fs/safeopen.h"

static const char blockhash_magic[8] = {'V', 'X', 'H', 'A', 'S', 'H', '\0', '\n'};
/* Version 1: SHA-256 digests, the algorithm field is zero.  Version 2: the algorithm field names
 * the digest; written for XXH3-128 (SHA-256 sidecars stay version 1, readable by older
 * vmexport versions). */
#define BLOCKHASH_VERSION_SHA256 1
#define BLOCKHASH_VERSION_ALGO   2
#define BLOCKHASH_HEADER_SIZE    64 /* fixed; unused bytes are zero */

struct blockhash_header {
    char magic[8];
    uint32_t version;
    uint32_t block_size;
    uint64_t file_size;
    uint64_t ino;
    int64_t mtime_sec;
    int64_t mtime_nsec;
    uint64_t nblocks;
    uint32_t algo; /* version 2: enum blockhash_algo; version 1: 0 */
    uint8_t reserved[4];
};
_Static_assert(sizeof(struct blockhash_header) == BLOCKHASH_HEADER_SIZE, "header layout");

static const struct enum_name blockhash_algo_names[] = {{BLOCKHASH_SHA256, "sha256"},
                                                        {BLOCKHASH_XXH128, "xxh128"}};

DEFINE_ENUM_NAMES(blockhash_algo, enum blockhash_algo, blockhash_algo_names)

size_t blockhash_digest_size(enum blockhash_algo algo)
{
    return algo == BLOCKHASH_XXH128 ? sizeof(XXH128_canonical_t) : HASH_SIZE;
}

int blockhash_digest(enum blockhash_algo algo, const void *data, size_t len,
                     uint8_t out[BLOCKHASH_MAX_DIGEST])
{
    if (algo == BLOCKHASH_SHA256)
        return hash_sha256(data, len, out);
    if (algo != BLOCKHASH_XXH128)
        return -EINVAL;
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(data, len));
    memcpy(out, c.digest, sizeof(c.digest));
    return 0;
}

int blockhash_zero_digest(enum blockhash_algo algo, size_t len, uint8_t out[BLOCKHASH_MAX_DIGEST])
{
    if (algo == BLOCKHASH_SHA256)
        return hash_sha256_zeros(len, out);
    CLEANUP_FREE void *zeros = calloc(1, len ? len : 1);
    if (!zeros)
        return -ENOMEM;
    return blockhash_digest(algo, zeros, len, out);
}

char *blockhash_sidecar_path(const char *data_path)
{
    char *p = NULL;
    return asprintf(&p, "%s%s", data_path, BLOCKHASH_SUFFIX) < 0 ? NULL : p;
}

/* The directory of path, open, and its last component in *name (or -EINVAL). */
static int open_dir_of(const char *path, const char **name)
{
    const char *slash = strrchr(path, '/');
    *name = slash ? slash + 1 : path;
    if (!**name)
        return -EINVAL;
    CLEANUP_FREE char *dir =
        !slash ? strdup(".") : strndup(path, slash == path ? 1 : (size_t)(slash - path));
    if (!dir)
        return -ENOMEM;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int blockhash_writer_open(struct blockhash_writer *w, const char *data_path, uint32_t block_size,
                          enum blockhash_algo algo)
{
    const char *name;
    CLEANUP_CLOSE int dfd = open_dir_of(data_path, &name);
    memset(w, 0, sizeof(*w));
    if (dfd < 0)
        return dfd;
    return blockhash_writer_openat(w, dfd, name, block_size, algo);
}

int blockhash_writer_openat(struct blockhash_writer *w, int dirfd, const char *data_name,
                            uint32_t block_size, enum blockhash_algo algo)
{
    CLEANUP_FREE char *prefix = NULL;
    memset(w, 0, sizeof(*w));
    w->dirfd = -1;
    if (algo != BLOCKHASH_SHA256 && algo != BLOCKHASH_XXH128)
        return -EINVAL;
    w->algo = algo;
    w->digest_size = blockhash_digest_size(algo);
    w->block_size = block_size;
    w->name = blockhash_sidecar_path(data_name);
    if (!w->name || asprintf(&prefix, "%s" BLOCKHASH_TMP_SUFFIX, w->name) < 0) {
        prefix = NULL;
        blockhash_writer_abort(w);
        return -ENOMEM;
    }
    w->dirfd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
    if (w->dirfd < 0) {
        int r = -errno;
        blockhash_writer_abort(w);
        return r;
    }
    int fd = fs_create_unique_at(w->dirfd, prefix, O_WRONLY, BLOCKHASH_FILE_MODE, &w->tmp_name);
    if (fd < 0) {
        blockhash_writer_abort(w);
        return fd;
    }
    w->f = fdopen(fd, "w");
    if (!w->f) {
        int r = -errno;
        close(fd);
        blockhash_writer_abort(w);
        return r;
    }
    /* Room for the header, filled in at commit when the data file's identity is final. */
    static const uint8_t zero_header[BLOCKHASH_HEADER_SIZE];
    if (fwrite(zero_header, sizeof(zero_header), 1, w->f) != 1) {
        blockhash_writer_abort(w);
        return -EIO;
    }
    return 0;
}

int blockhash_writer_add(struct blockhash_writer *w, const uint8_t *digest)
{
    if (fwrite(digest, w->digest_size, 1, w->f) != 1)
        return errno ? -errno : -EIO;
    w->nblocks++;
    return 0;
}

int blockhash_writer_commit(struct blockhash_writer *w, int data_fd)
{
    struct stat st;
    if (fstat(data_fd, &st) < 0)
        return -errno;

    struct blockhash_header h = {0};
    memcpy(h.magic, blockhash_magic, sizeof(h.magic));
    if (w->algo == BLOCKHASH_SHA256) {
        h.version = htole32(BLOCKHASH_VERSION_SHA256);
    } else {
        h.version = htole32(BLOCKHASH_VERSION_ALGO);
        h.algo = htole32((uint32_t)w->algo);
    }
    h.block_size = htole32(w->block_size);
    h.file_size = htole64((uint64_t)st.st_size);
    h.ino = htole64((uint64_t)st.st_ino);
    h.mtime_sec = (int64_t)htole64((uint64_t)st.st_mtim.tv_sec);
    h.mtime_nsec = (int64_t)htole64((uint64_t)st.st_mtim.tv_nsec);
    h.nblocks = htole64(w->nblocks);

    if (fflush(w->f) != 0 || pwrite(fileno(w->f), &h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
        fsync(fileno(w->f)) < 0) {
        int r = errno ? -errno : -EIO;
        blockhash_writer_abort(w);
        return r;
    }
    if (renameat(w->dirfd, w->tmp_name, w->dirfd, w->name) < 0) {
        int r = -errno;
        blockhash_writer_abort(w);
        return r;
    }
    fclose(w->f);
    w->f = NULL;
    free(w->tmp_name);
    w->tmp_name = NULL;
    blockhash_writer_abort(w); /* only frees now */
    return 0;
}

void blockhash_writer_abort(struct blockhash_writer *w)
{
    if (w->f) {
        fclose(w->f);
        if (w->tmp_name)
            unlinkat(w->dirfd, w->tmp_name, 0);
    }
    w->f = NULL;
    if (w->dirfd >= 0)
        close(w->dirfd);
    w->dirfd = -1;
    free(w->tmp_name);
    free(w->name);
    w->tmp_name = w->name = NULL;
}

int blockhash_reader_open(struct blockhash_reader *r, const char *data_path, int data_fd)
{
    memset(r, 0, sizeof(*r));
    CLEANUP_FREE char *path = blockhash_sidecar_path(data_path);
    if (!path)
        return -ENOMEM;
    /* A sidecar is never a symlink; one that is was not written here. */
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    return blockhash_reader_open_fd(r, fd, data_fd);
}

int blockhash_reader_open_fd(struct blockhash_reader *r, int sidecar_fd, int data_fd)
{
    memset(r, 0, sizeof(*r));
    FILE *f = fdopen(sidecar_fd, "r");
    if (!f) {
        int e = -errno;
        close(sidecar_fd);
        return e;
    }

    struct blockhash_header h;
    struct stat st, sst;
    if (fread(&h, sizeof(h), 1, f) != 1 || memcmp(h.magic, blockhash_magic, sizeof(h.magic)) ||
        le32toh(h.block_size) == 0 || le32toh(h.block_size) > BLOCKHASH_MAX_BLOCK_SIZE ||
        fstat(fileno(f), &sst) < 0) {
        fclose(f);
        return -EBADMSG;
    }
    uint32_t version = le32toh(h.version), algo = le32toh(h.algo);
    if (version == BLOCKHASH_VERSION_SHA256 && algo == 0)
        r->algo = BLOCKHASH_SHA256;
    else if (version == BLOCKHASH_VERSION_ALGO &&
             (algo == BLOCKHASH_SHA256 || algo == BLOCKHASH_XXH128))
        r->algo = (enum blockhash_algo)algo;
    else {
        fclose(f);
        return -EBADMSG;
    }
    r->digest_size = blockhash_digest_size(r->algo);
    r->block_size = le32toh(h.block_size);
    r->nblocks = le64toh(h.nblocks);
    uint64_t want_blocks = (le64toh(h.file_size) + r->block_size - 1) / r->block_size;
    if (r->nblocks != want_blocks ||
        r->nblocks > (UINT64_MAX - BLOCKHASH_HEADER_SIZE) / r->digest_size ||
        (uint64_t)sst.st_size != BLOCKHASH_HEADER_SIZE + r->nblocks * r->digest_size) {
        fclose(f);
        return -EBADMSG;
    }
    int e = fstat(data_fd, &st) < 0 ? -errno : 0;
    if (e == 0)
        e = blockhash_zero_digest(r->algo, r->block_size, r->zero_digest);
    if (e < 0) {
        fclose(f);
        return e;
    }
    if ((uint64_t)st.st_size != le64toh(h.file_size) || (uint64_t)st.st_ino != le64toh(h.ino) ||
        st.st_mtim.tv_sec != (int64_t)le64toh((uint64_t)h.mtime_sec) ||
        st.st_mtim.tv_nsec != (int64_t)le64toh((uint64_t)h.mtime_nsec)) {
        fclose(f);
        return -ESTALE;
    }
    r->f = f;
    return 0;
}

int blockhash_reader_get(struct blockhash_reader *r, uint64_t i, uint8_t out[BLOCKHASH_MAX_DIGEST])
{
    if (i >= r->nblocks) {
        memcpy(out, r->zero_digest, r->digest_size);
        return 0;
    }
    if (i != r->next) {
        if (fseeko(r->f, (off_t)(BLOCKHASH_HEADER_SIZE + i * r->digest_size), SEEK_SET) < 0)
            return -errno;
        r->next = i;
    }
    if (fread(out, r->digest_size, 1, r->f) != 1)
        return -EBADMSG;
    r->next++;
    return 0;
}

void blockhash_reader_close(struct blockhash_reader *r)
{
    if (r->f)
        fclose(r->f);
    r->f = NULL;
}

int blockhash_remove(const char *data_path)
{
    CLEANUP_FREE char *path = blockhash_sidecar_path(data_path);
    if (!path)
        return -ENOMEM;
    if (unlink(path) < 0 && errno != ENOENT)
        return -errno;
    return 0;
}

int blockhash_remove_at(int dirfd, const char *data_name)
{
    CLEANUP_FREE char *name = blockhash_sidecar_path(data_name);
    if (!name)
        return -ENOMEM;
    if (unlinkat(dirfd, name, 0) < 0 && errno != ENOENT)
        return -errno;
    return 0;
}
