/* Cleanup on interrupting signals; see signals.h. */
#include "core/signals.h"

#include <pthread.h>
#include <signal.h>
#include <stddef.h>

#include "core/cleanup.h"

static const int cleanup_signals[] = {SIGINT, SIGTERM, SIGHUP};
static void (*volatile cleanup_fn)(void);
static struct sigaction saved[ARRAY_SIZE(cleanup_signals)];

static void on_signal(int sig)
{
    void (*fn)(void) = cleanup_fn;
    if (fn)
        fn();
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigaction(sig, &dfl, NULL);
    raise(sig);
}

void signals_cleanup_arm(void (*cleanup)(void))
{
    cleanup_fn = cleanup;
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < ARRAY_SIZE(cleanup_signals); i++)
        sigaction(cleanup_signals[i], &sa, &saved[i]);
}

void signals_cleanup_disarm(void)
{
    for (size_t i = 0; i < ARRAY_SIZE(cleanup_signals); i++)
        sigaction(cleanup_signals[i], &saved[i], NULL);
    cleanup_fn = NULL;
}

void signals_cleanup_block(bool block)
{
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < ARRAY_SIZE(cleanup_signals); i++)
        sigaddset(&set, cleanup_signals[i]);
    pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}
