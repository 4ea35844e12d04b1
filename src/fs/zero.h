/* Making a byte range of a file read as zeros, as cheaply as the filesystem allows; writing data
 * so that its blocks of zeros stay holes. */
#ifndef VMEXPORT_FS_ZERO_H
#define VMEXPORT_FS_ZERO_H

#include <stddef.h>
#include <stdint.h>

/* Punch a hole (space freed), else FALLOC_FL_ZERO_RANGE, else write zeros.  The file size does
 * not change.  0 or a negative errno. */
int fs_zero_range(int fd, uint64_t off, uint64_t len);

/* pwrite all of buf at off (retrying short writes and EINTR).  0 or a negative errno. */
int fs_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);

/* Write the runs of data of buf (len bytes for file offset off) and skip its 4 KiB blocks of
 * zeros (core/sparse.h, sparse_next_run): in a file that reads as zeros there (new, truncated
 * to its size) they stay holes.  *written (may be NULL) grows by the bytes written.  0 or a
 * negative errno. */
int fs_write_data_runs(int fd, const uint8_t *buf, size_t len, uint64_t off, uint64_t *written);

#endif
