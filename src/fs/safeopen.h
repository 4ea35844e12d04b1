/* Opening files under directories that other users may write to, without following symlinks.
 *
 * vmexportd runs as root and opens disks, clones and sidecars in VM directories and snapshot
 * areas.  Anyone who can write there could put a symlink where a disk was (to /etc/shadow,
 * say) between the moment a file is listed and the moment it is opened.  Everything the daemon
 * opens there goes through these functions: a path relative to a directory descriptor is
 * resolved beneath it and with no symlink in any component (openat2 with RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS; where the kernel has no openat2, one component at a time with
 * O_NOFOLLOW).  A relative path may not be empty, absolute or contain "..".
 *
 * Absolute paths (fs_open_nofollow and friends) are the same walk beneath "/": they suit paths
 * made of a canonical root (realpath() at configuration time) and IDs that are single
 * components, such as snapshot disk paths.  Such a path names exactly the file it spells.
 *
 * Every descriptor returned is close-on-exec.  Functions return a descriptor or 0, or a negative
 * errno: -ELOOP for a symlink on the way, -EXDEV for a path that would leave its directory.
 */
#ifndef VMEXPORT_FS_SAFEOPEN_H
#define VMEXPORT_FS_SAFEOPEN_H

#include <stdbool.h>
#include <sys/types.h>

/* Open rel beneath dirfd (open(2) flags; mode with O_CREAT).  O_NOFOLLOW and O_CLOEXEC are
 * added. */
int fs_openat_beneath(int dirfd, const char *rel, int flags, mode_t mode);

/* The same, always by the component walk that stands in for openat2 (for the tests). */
int fs_openat_beneath_walk(int dirfd, const char *rel, int flags, mode_t mode);

/* Open the absolute path abs with no symlink in any of its components. */
int fs_open_nofollow(const char *abs, int flags, mode_t mode);

/* Open the root directory root (absolute, no symlinks) and rel beneath it. */
int fs_open_beneath(const char *root, const char *rel, int flags, mode_t mode);

/* mkdir -p of rel beneath dirfd, creating missing directories with mode and following no
 * symlink: the last directory, open O_RDONLY | O_DIRECTORY. */
int fs_mkdirs_beneath(int dirfd, const char *rel, mode_t mode);

/* The same for an absolute path, beneath "/". */
int fs_mkdirs_nofollow(const char *abs, mode_t mode);

/* The directory that holds the absolute path abs, open O_RDONLY | O_DIRECTORY with no symlink
 * on the way; *name points to abs's last component.  -EINVAL when abs has no parent. */
int fs_open_parent_nofollow(const char *abs, const char **name);

/* Create a new file prefix + six random characters in dirfd (O_CREAT | O_EXCL, no symlink
 * followed), open with flags (O_RDWR or O_WRONLY, ...) and mode.  *name: the name (free()). */
int fs_create_unique_at(int dirfd, const char *prefix, int flags, mode_t mode, char **name);

/* Whether rel can be resolved beneath a directory: not empty, not absolute, no "..". */
bool fs_rel_path_is_beneath(const char *rel);

#endif
