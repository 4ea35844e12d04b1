/* libarchive, loaded on first use.
 *
 * Only `vmexport export` and `vmexport import` read or write tar files, yet linking libarchive
 * makes every vmexport process map it and its dependencies (ICU, libxml2, nettle, liblzma,
 * libstdc++ ...) at start: about 13 ms of a cold start, a twentieth of a small incremental
 * backup.  So the archive commands call archive_lib_load() first and then libarchive through
 * the sym_archive_* pointers below, which have the types of the functions in <archive.h>.
 */
#ifndef VMEXPORT_BACKUP_ARCHIVE_LIB_H
#define VMEXPORT_BACKUP_ARCHIVE_LIB_H

#include <archive.h>
#include <archive_entry.h>
#include <stddef.h>

/* The library's file name (ABI version 13: libarchive 3.x). */
#define ARCHIVE_LIB_SONAME "libarchive.so.13"

/* Every libarchive function vmexport calls. */
#define ARCHIVE_LIB_SYMBOLS(X)                                                                     \
    X(archive_error_string)                                                                        \
    X(archive_filter_bytes)                                                                        \
    X(archive_entry_new)                                                                           \
    X(archive_entry_free)                                                                          \
    X(archive_entry_filetype)                                                                      \
    X(archive_entry_pathname)                                                                      \
    X(archive_entry_size)                                                                          \
    X(archive_entry_size_is_set)                                                                   \
    X(archive_entry_set_filetype)                                                                  \
    X(archive_entry_set_gid)                                                                       \
    X(archive_entry_set_mtime)                                                                     \
    X(archive_entry_set_pathname)                                                                  \
    X(archive_entry_set_perm)                                                                      \
    X(archive_entry_set_size)                                                                      \
    X(archive_entry_set_uid)                                                                       \
    X(archive_entry_sparse_add_entry)                                                              \
    X(archive_read_new)                                                                            \
    X(archive_read_free)                                                                           \
    X(archive_read_support_filter_all)                                                             \
    X(archive_read_support_format_tar)                                                             \
    X(archive_read_open_fd)                                                                        \
    X(archive_read_open_memory)                                                                    \
    X(archive_read_next_header)                                                                    \
    X(archive_read_data)                                                                           \
    X(archive_read_data_block)                                                                     \
    X(archive_write_new)                                                                           \
    X(archive_write_free)                                                                          \
    X(archive_write_set_format_pax)                                                                \
    X(archive_write_open_fd)                                                                       \
    X(archive_write_header)                                                                        \
    X(archive_write_data)                                                                          \
    X(archive_write_finish_entry)                                                                  \
    X(archive_write_close)

#define ARCHIVE_LIB_DECLARE(name) extern __typeof__(name) *sym_##name;
ARCHIVE_LIB_SYMBOLS(ARCHIVE_LIB_DECLARE)
#undef ARCHIVE_LIB_DECLARE

/* Load ARCHIVE_LIB_SONAME and set every sym_archive_* pointer; once loaded, later calls return
 * 0 at once.  0, or -1 with the reason in err (e.g. "libarchive.so.13: cannot open shared
 * object file: No such file or directory (install the package libarchive13)"). */
int archive_lib_load(char *err, size_t errlen);

/* The same from a given file name, for tests.  A failed load leaves the pointers NULL. */
int archive_lib_load_from(const char *soname, char *err, size_t errlen);

#endif
