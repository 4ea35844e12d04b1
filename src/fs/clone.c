/* File clones: reflink where possible, sparse hashed copy otherwise; see clone.h. */
#include "clone.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/hash.h"
#include "fs/blockhash.h"
#include "fs/fsinfo.h"

/* OCFS2's reflink ioctl (fs/ocfs2/ocfs2_ioctl.h): creates new_path sharing old_path's blocks. */
struct ocfs2_reflink_args {
    uint64_t old_path;
    uint64_t new_path;
    uint64_t preserve; /* keep owner, mode and timestamps */
};
#define OCFS2_IOC_REFLINK _IOW('o', 4, struct ocfs2_reflink_args)

/* Copy buffer: 16 hash blocks (1 MiB), big enough to keep syscalls off the profile. */
#define COPY_BUFFER_SIZE (16 * BLOCKHASH_BLOCK_SIZE)
/* Granularity at which zero data is left as a hole in the copy, like cp --sparse=always. */
#define SPARSE_PAGE 4096

const char *clone_mode_name(enum clone_mode mode)
{
    switch (mode) {
    case CLONE_AUTO:
        return "auto";
    case CLONE_REFLINK:
        return "reflink";
    case CLONE_COPY:
        return "copy";
    }
    return "?";
}

int clone_mode_parse(const char *s, enum clone_mode *out)
{
    static const enum clone_mode modes[] = {CLONE_AUTO, CLONE_REFLINK, CLONE_COPY};
    for (size_t i = 0; i < ARRAY_SIZE(modes); i++) {
        if (strcmp(s, clone_mode_name(modes[i])) == 0) {
            *out = modes[i];
            return 0;
        }
    }
    return -EINVAL;
}

static int pread_full(int fd, void *buf, size_t len, uint64_t off, size_t *got)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break; /* end of file */
        done += (size_t)n;
    }
    *got = done;
    return 0;
}

static int pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, (const char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        done += (size_t)n;
    }
    return 0;
}

/* Write the non-zero pages of buf (file offset off), leaving zero pages as holes. */
static int write_sparse(int fd, const uint8_t *buf, size_t len, uint64_t off, uint64_t *written)
{
    size_t run = 0, run_len = 0;
    for (size_t p = 0; p < len; p += SPARSE_PAGE) {
        size_t n = len - p < SPARSE_PAGE ? len - p : SPARSE_PAGE;
        if (!buf_is_zero(buf + p, n)) {
            if (run_len == 0)
                run = p;
            run_len += n;
            continue;
        }
        if (run_len) {
            int r = pwrite_full(fd, buf + run, run_len, off + run);
            if (r < 0)
                return r;
            *written += run_len;
            run_len = 0;
        }
    }
    if (run_len) {
        int r = pwrite_full(fd, buf + run, run_len, off + run);
        if (r < 0)
            return r;
        *written += run_len;
    }
    return 0;
}

int fs_copy_hashed(int in, int out, const char *out_path, struct clone_result *res)
{
    const uint64_t hb = BLOCKHASH_BLOCK_SIZE;
    struct stat st;
    uint8_t zero_digest[HASH_SIZE], digest[HASH_SIZE];
    struct blockhash_writer hw;
    int r;

    if (fstat(in, &st) < 0)
        return -errno;
    uint64_t size = (uint64_t)st.st_size;
    if ((r = hash_sha256_zeros(hb, zero_digest)) < 0)
        return r;
    if (ftruncate(out, (off_t)size) < 0)
        return -errno;
    CLEANUP_FREE uint8_t *buf = aligned_alloc(SPARSE_PAGE, COPY_BUFFER_SIZE);
    if (!buf)
        return -ENOMEM;
    if ((r = blockhash_writer_open(&hw, out_path, BLOCKHASH_BLOCK_SIZE)) < 0)
        return r;
    posix_fadvise(in, 0, 0, POSIX_FADV_SEQUENTIAL);

    uint64_t pos = 0; /* always a multiple of hb */
    while (pos < size) {
        off_t data = lseek(in, (off_t)pos, SEEK_DATA);
        if (data < 0 && errno != ENXIO) {
            r = -errno;
            goto fail;
        }
        uint64_t dstart = data < 0 ? size : (uint64_t)data;
        if (dstart > size)
            dstart = size;
        /* Whole blocks of hole before the data: zeros, nothing to read. */
        for (; pos + hb <= dstart; pos += hb)
            if ((r = blockhash_writer_add(&hw, zero_digest)) < 0)
                goto fail;
        if (pos >= size)
            break;
        off_t hole = lseek(in, (off_t)dstart, SEEK_HOLE);
        if (hole < 0) {
            r = -errno;
            goto fail;
        }
        uint64_t dend = (uint64_t)hole < size ? (uint64_t)hole : size;
        if (dend <= pos)
            dend = pos + 1; /* the file shrank under us: still hash this block */
        while (pos < dend) {
            uint64_t want = dend - pos;
            want = (want + hb - 1) / hb * hb; /* whole blocks */
            if (want > COPY_BUFFER_SIZE)
                want = COPY_BUFFER_SIZE;
            size_t got = 0;
            if ((r = pread_full(in, buf, want, pos, &got)) < 0)
                goto fail;
            memset(buf + got, 0, want - got); /* past EOF reads as zeros */
            res->bytes_read += got;
            for (uint64_t b = 0; b < want; b += hb) {
                if (buf_is_zero(buf + b, hb)) {
                    r = blockhash_writer_add(&hw, zero_digest);
                } else {
                    if ((r = hash_sha256(buf + b, hb, digest)) < 0)
                        goto fail;
                    r = blockhash_writer_add(&hw, digest);
                    if (r >= 0) {
                        size_t len = pos + b + hb > size ? size - pos - b : hb;
                        r = write_sparse(out, buf + b, len, pos + b, &res->bytes_written);
                    }
                }
                if (r < 0)
                    goto fail;
            }
            pos += want;
        }
    }
    if (fsync(out) < 0) {
        r = -errno;
        goto fail;
    }
    res->size = size;
    res->mode = CLONE_COPY;
    return blockhash_writer_commit(&hw, out);

fail:
    blockhash_writer_abort(&hw);
    return r;
}

static bool reflink_unsupported(int err)
{
    return err == EOPNOTSUPP || err == ENOTTY || err == EINVAL || err == ENOSYS;
}

/* OCFS2 creates the new file itself, from paths. */
static int clone_ocfs2(const char *src, const char *tmp_path)
{
    struct ocfs2_reflink_args args = {
        .old_path = (uint64_t)(uintptr_t)src,
        .new_path = (uint64_t)(uintptr_t)tmp_path,
        .preserve = 1,
    };
    CLEANUP_FREE char *dir_copy = strdup(tmp_path);
    if (!dir_copy)
        return -ENOMEM;
    CLEANUP_CLOSE int dfd = open(dirname(dir_copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    if (ioctl(dfd, OCFS2_IOC_REFLINK, &args) < 0)
        return -errno;
    return 0;
}

static int fsync_parent(const char *path)
{
    CLEANUP_FREE char *copy = strdup(path);
    if (!copy)
        return -ENOMEM;
    CLEANUP_CLOSE int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0)
        return -errno;
    return 0;
}

int fs_clone(const char *src, const char *dst, enum clone_mode mode, struct clone_result *res)
{
    struct stat st, dst_st;
    struct fs_info src_fs, dst_fs;
    int r;

    memset(res, 0, sizeof(*res));
    CLEANUP_CLOSE int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -errno;
    if (fstat(in, &st) < 0)
        return -errno;
    if (!S_ISREG(st.st_mode))
        return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
    if (lstat(dst, &dst_st) == 0)
        return -EEXIST;
    if ((r = fs_info_fd(in, &src_fs)) < 0)
        return r;

    CLEANUP_FREE char *tmp = NULL;
    if (asprintf(&tmp, "%s" CLONE_TMP_SUFFIX "XXXXXX", dst) < 0)
        return -ENOMEM;
    CLEANUP_CLOSE int out = mkostemp(tmp, O_CLOEXEC);
    if (out < 0)
        return -errno;
    if ((r = fs_info_fd(out, &dst_fs)) < 0)
        goto fail;

    bool done = false;
    if (mode != CLONE_COPY) {
        if (src_fs.dev != dst_fs.dev && mode == CLONE_REFLINK) {
            r = -EXDEV;
            goto fail;
        }
        if (dst_fs.kind == FS_OCFS2 && src_fs.dev == dst_fs.dev) {
            close(TAKE_FD(out));
            unlink(tmp); /* OCFS2 insists on creating the file itself */
            r = clone_ocfs2(src, tmp);
            if (r == 0)
                done = true;
            out = open(tmp, O_RDWR | O_CLOEXEC | (r == 0 ? 0 : O_CREAT | O_EXCL), 0600);
            if (out < 0) {
                r = -errno;
                goto fail;
            }
        } else if (src_fs.dev == dst_fs.dev) {
            r = ioctl(out, FICLONE, in) == 0 ? 0 : -errno;
            if (r == 0)
                done = true;
        } else {
            r = -EXDEV;
        }
        if (!done && (mode == CLONE_REFLINK || !(reflink_unsupported(-r) || r == -EXDEV))) {
            if (reflink_unsupported(-r))
                r = -EOPNOTSUPP;
            goto fail;
        }
        if (done) {
            res->mode = CLONE_REFLINK;
            res->size = (uint64_t)st.st_size;
            if (fsync(out) < 0) {
                r = -errno;
                goto fail;
            }
        }
    }
    if (!done && (r = fs_copy_hashed(in, out, dst, res)) < 0)
        goto fail;

    if (fchmod(out, st.st_mode & 07777) < 0) {
        r = -errno;
        goto fail;
    }
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dst, RENAME_NOREPLACE) < 0) {
        r = -errno;
        goto fail;
    }
    return fsync_parent(dst);

fail:
    unlink(tmp);
    if (res->mode == CLONE_COPY)
        blockhash_remove(dst);
    memset(res, 0, sizeof(*res));
    return r;
}
