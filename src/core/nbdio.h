/* Reading NBD exports (QEMU's NBD server) with libnbd, for the providers that serve live VMs
 * (qemu, libvirt) and for the backup engine's NBD source.
 *
 * One struct nbdio is a small pool of connections to one export: reads may run in parallel from
 * several threads (each takes a free connection).  Block status walks report the export's meta
 * contexts: "base:allocation" (NBDIO_STATE_HOLE, NBDIO_STATE_ZERO) and
 * "qemu:dirty-bitmap:NAME" (NBDIO_STATE_DIRTY).
 */
#ifndef VMEXPORT_CORE_NBDIO_H
#define VMEXPORT_CORE_NBDIO_H

#include <stddef.h>
#include <stdint.h>

#define NBDIO_CONTEXT_ALLOCATION "base:allocation"
#define NBDIO_CONTEXT_BITMAP_PREFIX "qemu:dirty-bitmap:"
#define NBDIO_STATE_HOLE  1u /* base:allocation: not allocated */
#define NBDIO_STATE_ZERO  2u /* base:allocation: reads as zeros */
#define NBDIO_STATE_DIRTY 1u /* qemu:dirty-bitmap: set in the bitmap */

#define NBDIO_CONNECTIONS_DEFAULT 4

struct nbdio;

/* Connect to the export named export on the unix socket socket, with up to nconn connections
 * (0: NBDIO_CONNECTIONS_DEFAULT; more are opened when reads run in parallel), asking for the
 * meta contexts in contexts (NULL-terminated; NULL: base:allocation only).  err says why not
 * (no such socket, no such export, a context the server lacks). */
int nbdio_open(const char *socket, const char *export, const char *const *contexts,
               unsigned nconn, struct nbdio **out, char *err, size_t errlen);
void nbdio_close(struct nbdio *n);

/* The export's size in bytes. */
uint64_t nbdio_size(const struct nbdio *n);

/* Read len bytes at off (within the size) into buf: 0 or a negative errno.  Thread-safe. */
int nbdio_pread(struct nbdio *n, void *buf, size_t len, uint64_t off);

/* Receives runs of equal status flags, in order, each once; 0 or a negative errno that stops the
 * walk. */
typedef int (*nbdio_status_fn)(void *opaque, uint64_t off, uint64_t len, uint32_t flags);

/* The status of [off, off + len) in the meta context context (one asked for at open), adjacent
 * runs with equal flags merged.  Thread-safe.  Never holds more than one server reply. */
int nbdio_block_status(struct nbdio *n, const char *context, uint64_t off, uint64_t len,
                       nbdio_status_fn fn, void *opaque);

/* The NBD URI of an export on a unix socket ("nbd+unix:///EXPORT?socket=PATH", both
 * percent-encoded where needed): what a snapshot disk's file_id says when its data is an
 * export a client on the same host may read.  NULL on no memory. */
char *nbdio_uri(const char *socket, const char *export);
/* The socket and export of such a URI (malloc'ed): 0, or -EINVAL when uri is not one. */
int nbdio_uri_parse(const char *uri, char **socket, char **export);

#endif
