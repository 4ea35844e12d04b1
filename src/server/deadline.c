/* Total time limits for the TLS handshake and request headers of connections (deadline.h).
 *
 * Safety against fd reuse: the sweeper shuts a socket down while it holds the watch's lock and
 * the entry is on the list; an entry leaves the list (under the same lock) in libmicrohttpd's
 * "connection closed" notification, which libmicrohttpd 0.9.75 calls before it closes the
 * socket (MHD_cleanup_connections and the failure path of new connections in daemon.c).  So
 * while the sweeper holds the lock, every fd on the list is still the connection's own socket,
 * and a number reused by a newer connection cannot be shut down by mistake. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include "core/clock.h"
#include "core/log.h"
#include "server/deadline.h"

/* How often the sweeper looks for connections past their deadline (milliseconds). */
#define SWEEP_INTERVAL_MS 500

struct deadline_watch {
    pthread_mutex_t lock;
    pthread_cond_t wake; /* stop requested */
    bool stop;
    struct deadline_entry head; /* list sentinel */
    pthread_t sweeper;
};

static int64_t now_us(void)
{
    return clock_monotonic_ns() / 1000;
}

/* Shut down every socket past its deadline; the number shut down. */
static unsigned sweep(struct deadline_watch *w)
{
    unsigned n = 0;
    int64_t now = now_us();
    for (struct deadline_entry *e = w->head.next; e != &w->head; e = e->next) {
        if (e->shut || !e->deadline_us || e->deadline_us > now)
            continue;
        /* Under the lock: the socket is still open (see the top of this file). */
        shutdown(e->fd, SHUT_RDWR);
        e->shut = true;
        n++;
    }
    return n;
}

static void *sweeper_main(void *arg)
{
    struct deadline_watch *w = arg;
    pthread_mutex_lock(&w->lock);
    while (!w->stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += SWEEP_INTERVAL_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        int e = 0;
        while (!w->stop && e != ETIMEDOUT)
            e = pthread_cond_timedwait(&w->wake, &w->lock, &until);
        if (w->stop)
            break;
        unsigned n = sweep(w);
        if (!n)
            continue;
        pthread_mutex_unlock(&w->lock);
        log_info("closed %u connection%s whose TLS handshake or request headers were not "
                 "complete in time ([server] header_timeout)",
                 n, n == 1 ? "" : "s");
        pthread_mutex_lock(&w->lock);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

int deadline_watch_new(struct deadline_watch **out)
{
    struct deadline_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->wake, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&w->lock, NULL);
    w->head.next = w->head.prev = &w->head;
    int e = pthread_create(&w->sweeper, NULL, sweeper_main, w);
    if (e) {
        pthread_cond_destroy(&w->wake);
        pthread_mutex_destroy(&w->lock);
        free(w);
        return -e;
    }
    *out = w;
    return 0;
}

void deadline_watch_free(struct deadline_watch *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stop = true;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->sweeper, NULL);
    pthread_cond_destroy(&w->wake);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

static int64_t deadline_of(unsigned seconds)
{
    return seconds ? now_us() + (int64_t)seconds * 1000000 : 0;
}

void deadline_watch_add(struct deadline_watch *w, struct deadline_entry *e, int fd,
                        unsigned seconds)
{
    e->fd = fd;
    e->shut = false;
    e->deadline_us = deadline_of(seconds);
    pthread_mutex_lock(&w->lock);
    e->prev = w->head.prev;
    e->next = &w->head;
    w->head.prev->next = e;
    w->head.prev = e;
    pthread_mutex_unlock(&w->lock);
}

void deadline_watch_set(struct deadline_watch *w, struct deadline_entry *e, unsigned seconds)
{
    int64_t d = deadline_of(seconds);
    pthread_mutex_lock(&w->lock);
    e->deadline_us = d;
    pthread_mutex_unlock(&w->lock);
}

void deadline_watch_remove(struct deadline_watch *w, struct deadline_entry *e)
{
    pthread_mutex_lock(&w->lock);
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->prev = e->next = NULL;
    pthread_mutex_unlock(&w->lock);
}
