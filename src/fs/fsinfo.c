/* Filesystem identification via statfs(2) magic numbers, and a reflink probe. */
#include "fsinfo.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "core/cleanup.h"

/* Not in <linux/magic.h>; from fs/ocfs2/ocfs2_fs.h. */
#define OCFS2_SUPER_MAGIC_VALUE 0x7461636f

/* Size of the block written by the reflink probe: one page is enough to allocate an extent. */
#define PROBE_BLOCK_SIZE 4096

static const struct {
    unsigned long magic;
    enum fs_kind kind;
    const char *name;
} fs_magics[] = {
    {XFS_SUPER_MAGIC, FS_XFS, "xfs"},
    {BTRFS_SUPER_MAGIC, FS_BTRFS, "btrfs"},
    {OCFS2_SUPER_MAGIC_VALUE, FS_OCFS2, "ocfs2"},
    {EXT4_SUPER_MAGIC, FS_EXT4, "ext4"},
    {TMPFS_MAGIC, FS_TMPFS, "tmpfs"},
    {NFS_SUPER_MAGIC, FS_NFS, "nfs"},
};

int fs_info_fd(int fd, struct fs_info *out)
{
    struct statfs sfs;
    struct stat st;

    memset(out, 0, sizeof(*out));
    if (fstatfs(fd, &sfs) < 0 || fstat(fd, &st) < 0)
        return -errno;

    out->kind = FS_OTHER;
    snprintf(out->name_buf, sizeof(out->name_buf), "fs 0x%lx", (unsigned long)sfs.f_type);
    out->name = out->name_buf;
    for (size_t i = 0; i < ARRAY_SIZE(fs_magics); i++) {
        if ((unsigned long)sfs.f_type == fs_magics[i].magic) {
            out->kind = fs_magics[i].kind;
            out->name = fs_magics[i].name;
        }
    }
    out->block_size = sfs.f_bsize > 0 ? (uint32_t)sfs.f_bsize : (uint32_t)st.st_blksize;
    out->dev = st.st_dev;
    return 0;
}

bool fs_kind_may_reflink(enum fs_kind kind)
{
    return kind == FS_XFS || kind == FS_BTRFS || kind == FS_OCFS2;
}

int fs_probe_reflink(const char *dir)
{
    static const char block[PROBE_BLOCK_SIZE] = {1};
    CLEANUP_CLOSE int a = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (a < 0)
        return -errno;
    CLEANUP_CLOSE int b = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (b < 0)
        return -errno;
    if (pwrite(a, block, sizeof(block), 0) != (ssize_t)sizeof(block) || fsync(a) < 0)
        return -errno;
    return ioctl(b, FICLONE, a) == 0 ? 1 : 0;
}

/* The boot ID, read once: "" when /proc is not there (then no ID is given at all). */
static pthread_once_t boot_id_once = PTHREAD_ONCE_INIT;
static char boot_id[40];

static void boot_id_read(void)
{
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    char buf[64];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 32)
        return;
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    if (strlen(buf) < sizeof(boot_id))
        memcpy(boot_id, buf, strlen(buf) + 1);
}

int fs_file_id_fd(int fd, char out[FS_FILE_ID_MAX])
{
    struct stat st;
    out[0] = '\0';
    pthread_once(&boot_id_once, boot_id_read);
    if (!boot_id[0])
        return -ENOENT;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISREG(st.st_mode))
        return -EINVAL;
    snprintf(out, FS_FILE_ID_MAX, "%s:%llu:%llu", boot_id, (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    return 0;
}

int fs_reopen_direct(int fd, int flags)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    int d = open(path, flags | O_DIRECT | O_CLOEXEC);
    struct stat a, b;
    if (d >= 0 &&
        (fstat(fd, &a) < 0 || fstat(d, &b) < 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino)) {
        close(d);
        d = -1;
    }
    return d;
}

#define DIRECT_ALIGN 4096

int fs_pread_direct(int fd, int dfd, void *buf, size_t len, uint64_t off, size_t *got)
{
    uint8_t *p = buf;
    size_t done = 0;
    int use = dfd >= 0 && off % DIRECT_ALIGN == 0 && len % DIRECT_ALIGN == 0 &&
                      (uintptr_t)buf % DIRECT_ALIGN == 0
                  ? dfd
                  : fd;
    while (done < len) {
        ssize_t n = pread(use, p + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EINVAL && use == dfd) {
            use = fd; /* O_DIRECT refused after all: read through the page cache */
            continue;
        }
        if (n < 0)
            return -errno;
        if (n == 0)
            break; /* end of file */
        done += (size_t)n;
        if (use == dfd && n % DIRECT_ALIGN)
            use = fd; /* a short direct read left the rest unaligned */
    }
    *got = done;
    return 0;
}

/* mincore() is asked about this much of a mapping at a time (a page status byte each). */
#define CACHED_PIECE (1u << 20)

bool fs_range_cached(const void *map, uint64_t map_len, uint64_t off, uint64_t len)
{
    unsigned char vec[CACHED_PIECE / DIRECT_ALIGN];
    if (!map || off >= map_len)
        return true;
    if (len > map_len - off)
        len = map_len - off;
    /* mincore takes a page-aligned address */
    uint64_t pos = off / DIRECT_ALIGN * DIRECT_ALIGN, end = off + len;
    while (pos < end) {
        uint64_t n = end - pos < CACHED_PIECE ? end - pos : CACHED_PIECE;
        if (mincore((void *)((const uint8_t *)map + pos), n, vec) < 0)
            return true;
        for (size_t i = 0; i < (n + DIRECT_ALIGN - 1) / DIRECT_ALIGN; i++)
            if (!(vec[i] & 1))
                return false;
        pos += n;
    }
    return true;
}

int fs_writeback_behind(int fd, uint64_t done_off, uint64_t done_len, uint64_t off, uint64_t len)
{
    if (done_len) {
        if (sync_file_range(fd, (off_t)done_off, (off_t)done_len,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                SYNC_FILE_RANGE_WAIT_AFTER) < 0 &&
            errno != EINVAL && errno != ENOSYS && errno != ESPIPE)
            return -errno;
        posix_fadvise(fd, (off_t)done_off, (off_t)done_len, POSIX_FADV_DONTNEED);
    }
    if (len)
        sync_file_range(fd, (off_t)off, (off_t)len, SYNC_FILE_RANGE_WRITE);
    return 0;
}

int fs_fsync_parent(const char *path)
{
    CLEANUP_FREE char *copy = strdup(path);
    if (!copy)
        return -ENOMEM;
    char *slash = strrchr(copy, '/');
    const char *dir = slash ? (slash == copy ? "/" : (*slash = '\0', copy)) : ".";
    CLEANUP_CLOSE int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) < 0)
        return -errno;
    return 0;
}
