/* Total time limits for connections that have not sent their request headers yet.
 * libmicrohttpd's connection timeout counts silence only, so a client that trickles one byte of
 * its TLS handshake or its headers every few seconds would keep its connection for ever.  Each
 * such connection is registered here with a deadline; a sweeper thread shuts down the socket of
 * any connection still waiting for its headers past its deadline (shutdown(2), not close: the
 * event loop then sees the end of the stream and closes the connection itself). */
#ifndef VMEXPORT_SERVER_DEADLINE_H
#define VMEXPORT_SERVER_DEADLINE_H

#include <stdbool.h>
#include <stdint.h>

struct deadline_watch;

/* One watched connection; embedded in the connection's own state.  Fields are the watch's. */
struct deadline_entry {
    struct deadline_entry *prev, *next;
    int fd;
    int64_t deadline_us; /* CLOCK_MONOTONIC; 0: no deadline (its headers have arrived) */
    bool shut;           /* shut down already, waiting for the event loop to close it */
};

/* Start the sweeper thread: 0 or a negative errno. */
int deadline_watch_new(struct deadline_watch **out);
/* Stop the sweeper and free the watch (NULL is fine); no entry may still be added. */
void deadline_watch_free(struct deadline_watch *w);
/* Watch the connection on fd: it must have its headers within seconds from now. */
void deadline_watch_add(struct deadline_watch *w, struct deadline_entry *e, int fd,
                        unsigned seconds);
/* A new deadline for e (seconds from now), or none (seconds 0: its headers have arrived). */
void deadline_watch_set(struct deadline_watch *w, struct deadline_entry *e, unsigned seconds);
/* Stop watching e.  Must be called before the connection's socket is closed: once this has
 * returned, the sweeper never touches that fd number again. */
void deadline_watch_remove(struct deadline_watch *w, struct deadline_entry *e);

#endif
