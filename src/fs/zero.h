/* Making a byte range of a file read as zeros, as cheaply as the filesystem allows. */
#ifndef VMEXPORT_FS_ZERO_H
#define VMEXPORT_FS_ZERO_H

#include <stdint.h>

/* Punch a hole (space freed), else FALLOC_FL_ZERO_RANGE, else write zeros.  The file size does
 * not change.  0 or a negative errno. */
int fs_zero_range(int fd, uint64_t off, uint64_t len);

#endif
