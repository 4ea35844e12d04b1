/* Unit tests for the header deadlines of connections (src/server/deadline.c): a socket past its
 * deadline is shut down (its peer reads the end of the stream) and stays open; one whose
 * deadline was lifted (its headers arrived) or that left the watch is never touched; a new
 * deadline (keep-alive) is enforced like the first.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/deadline.h"

/* Generous bound for the sweeper to act after a 1 s deadline (milliseconds). */
#define WAIT_SHUT_MS 5000
/* Sweeps that pass before the untouched sockets are checked (milliseconds). */
#define SETTLE_MS 1500

/* Whether the peer of a socket pair sees the end of the stream within ms. */
static bool peer_sees_eof(int peer, int ms)
{
    struct pollfd p = {.fd = peer, .events = POLLIN};
    if (poll(&p, 1, ms) != 1)
        return false;
    char c;
    return read(peer, &c, 1) == 0;
}

static void test_deadlines(void **state)
{
    (void)state;
    enum { EXPIRES, LIFTED, REMOVED, RENEWED, N };
    int sp[N][2];
    struct deadline_entry e[N] = {0};
    for (int i = 0; i < N; i++)
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp[i]), 0);
    struct deadline_watch *w = NULL;
    assert_int_equal(deadline_watch_new(&w), 0);
    for (int i = 0; i < N; i++)
        deadline_watch_add(w, &e[i], sp[i][0], 1);
    deadline_watch_set(w, &e[LIFTED], 0);
    deadline_watch_remove(w, &e[REMOVED]);
    deadline_watch_set(w, &e[RENEWED], 0);
    deadline_watch_set(w, &e[RENEWED], 2);

    assert_true(peer_sees_eof(sp[EXPIRES][1], WAIT_SHUT_MS));
    assert_true(peer_sees_eof(sp[RENEWED][1], WAIT_SHUT_MS));
    struct timespec settle = {SETTLE_MS / 1000, (SETTLE_MS % 1000) * 1000000L};
    nanosleep(&settle, NULL);
    assert_false(peer_sees_eof(sp[LIFTED][1], 0));
    assert_false(peer_sees_eof(sp[REMOVED][1], 0));
    assert_int_equal(write(sp[LIFTED][0], "x", 1), 1);
    /* Shut down, not closed: the fd is still the connection's. */
    assert_true(fcntl(sp[EXPIRES][0], F_GETFD) >= 0);

    for (int i = 0; i < N; i++)
        if (i != REMOVED)
            deadline_watch_remove(w, &e[i]);
    deadline_watch_free(w);
    for (int i = 0; i < N; i++) {
        close(sp[i][0]);
        close(sp[i][1]);
    }
}

static void test_free_null(void **state)
{
    (void)state;
    deadline_watch_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deadlines),
        cmocka_unit_test(test_free_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
