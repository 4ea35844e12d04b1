/* Segmented container streams (repository format 3): one stored object made of segments, each a
 * u32le length and a container (container.c) bound to the identity "file:<path>#<k>" for
 * segment k, so that a segment cannot be moved to another object or another position.  The
 * writer ends every stream with an end segment recording the number of data segments and the
 * caller's item count (entries, chunks), so that a stream cut at a segment boundary, a
 * duplicated, dropped or reordered segment, or bytes after the end are all refused
 * (-EBADMSG).  Used by v3 manifests (manifest.c) and the repository's index objects.
 * Memory: the writer keeps the sealed segments until it stores them (the object's size); the
 * reader keeps the object and one decoded segment, never the decoded whole.
 * Layout: docs/repository-format.md, "Segmented streams".  Private to src/repo.
 */
#ifndef VMEXPORT_REPO_STREAM_H
#define VMEXPORT_REPO_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "repo_internal.h"

/* Largest plain segment (data and the segment's kind byte): far above what the writers put in
 * one (65,536 manifest entries take 2.6 MB), low enough that a damaged header cannot make the
 * reader allocate absurd memory. */
#define STREAM_MAX_SEGMENT ((size_t)64 << 20)

struct stream_writer;

/* A new stream that will be stored at relpath (the key it is bound to). */
int stream_writer_new(struct repo *r, const char *relpath, struct stream_writer **out);
/* Append one data segment (len <= STREAM_MAX_SEGMENT - 1; may be 0). */
int stream_writer_add(struct stream_writer *w, const void *plain, size_t len);
/* Append the end segment recording items and hand back the whole object (free()); the writer
 * takes no more segments. */
int stream_writer_take(struct stream_writer *w, uint64_t items, uint8_t **data, size_t *len);
/* stream_writer_take, then store the object at its key (store_put, atomic and durable). */
int stream_writer_put(struct stream_writer *w, uint64_t items, enum store_put_mode mode);
void stream_writer_free(struct stream_writer *w);

struct stream_reader;

/* Read the object at relpath (at most max bytes: -EBADMSG beyond; -ENOENT missing). */
int stream_reader_open(struct repo *r, const char *relpath, uint64_t max,
                       struct stream_reader **out);
/* The same over a local file holding the object (the index cache: pack.c), read a segment at a
 * time with pread; the reader takes fd (closed with it).  The segments are bound to relpath as
 * when read from the store, so a file holding anything but that object is refused. */
int stream_reader_open_fd(struct repo *r, const char *relpath, int fd, uint64_t max,
                          struct stream_reader **out);
/* The same over an object already in memory (the reader takes data: free()d with it). */
int stream_reader_new(struct repo *r, const char *relpath, uint8_t *data, size_t len,
                      struct stream_reader **out);
/* The next data segment: 1 and *plain, *len (valid until the next call); 0 once the end
 * segment has been read and checked (nothing follows it, the segment count matches): then
 * stream_reader_items() is the count the writer recorded.  -EBADMSG when the stream is
 * damaged, truncated or rearranged. */
int stream_reader_next(struct stream_reader *rd, const uint8_t **plain, size_t *len);
uint64_t stream_reader_items(const struct stream_reader *rd);
void stream_reader_free(struct stream_reader *rd);

#endif
