/* Which filesystem a file lives on, and what it can do (reflink, FIEMAP). */
#ifndef VMEXPORT_FS_FSINFO_H
#define VMEXPORT_FS_FSINFO_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

enum fs_kind { FS_OTHER, FS_XFS, FS_BTRFS, FS_OCFS2, FS_EXT4, FS_TMPFS, FS_NFS };

struct fs_info {
    enum fs_kind kind;
    const char *name;    /* "xfs", "btrfs", ... or "unknown (0x1234)" style for others */
    uint32_t block_size; /* allocation unit: the granularity of extent maps */
    dev_t dev;           /* st_dev of the file */
    char name_buf[32];
};

int fs_info_fd(int fd, struct fs_info *out);

/* Can this filesystem share blocks between files at all (by kind)? */
bool fs_kind_may_reflink(enum fs_kind kind);

/* Try a real FICLONE between two anonymous files in dir: 1 if it works, 0 if not, < 0 on an
 * error that says nothing about reflink support (e.g. the directory is not writable). */
int fs_probe_reflink(const char *dir);

/* A string naming one file on this running host: the kernel's boot ID, st_dev and st_ino.  Two
 * processes that compute the same ID for a file they opened hold the same file on the same host
 * (a shared path on another host, e.g. over NFS, gives another device or boot ID).  The daemon
 * publishes it for each snapshot disk so that a client on the same host can read the disk
 * directly instead of over HTTPS.  0 or a negative errno. */
#define FS_FILE_ID_MAX 96
/* fd opened again, as a new open file description of the same file, with flags | O_DIRECT;
 * -1 where that is not possible (no /proc, a filesystem without O_DIRECT). */
int fs_reopen_direct(int fd, int flags);
/* Read up to len bytes at off into buf (*got: fewer only at the end of the file): through dfd
 * (O_DIRECT, from fs_reopen_direct) while offset, length and buffer are 4 KiB-aligned, the rest
 * (or all, when dfd < 0 or O_DIRECT refuses) through fd.  0 or a negative errno. */
int fs_pread_direct(int fd, int dfd, void *buf, size_t len, uint64_t off, size_t *got);
/* fsync of the directory that holds path (".", or "/" for a name in the root), so that a file
 * created or renamed there survives a crash.  0 or a negative errno. */
int fs_fsync_parent(const char *path);
/* Whether every page of [off, off + len) of a file is in the page cache, asked of a read-only
 * mapping of it (map_len bytes; never touched, so asking loads nothing).  Readers use it to
 * read cold data with O_DIRECT (no copy through the cache, no eviction of others' pages) and
 * warm data from the cache.  Unknown (no mapping, mincore failure) counts as cached. */
bool fs_range_cached(const void *map, uint64_t map_len, uint64_t off, uint64_t len);
/* Writeback behind a writer, so that a big copy keeps only a window of its output in the page
 * cache: wait until [done_off, done_off + done_len) (whose writeback an earlier call started;
 * done_len 0: nothing) is on the disk and drop those clean pages from the cache, then start
 * writeback of [off, off + len) without waiting.  Besides leaving other programs' cached data
 * alone, the writer then reuses the pages it frees, where touching new memory is costly (a
 * guest whose freed memory goes back to the host).  0, or the writeback's negative errno;
 * file systems without sync_file_range are not an error. */
int fs_writeback_behind(int fd, uint64_t done_off, uint64_t done_len, uint64_t off, uint64_t len);
int fs_file_id_fd(int fd, char out[FS_FILE_ID_MAX]);

#endif
