/* Time helpers: an RFC 3339 timestamp of now, and CLOCK_MONOTONIC nanoseconds (timeouts,
 * deadlines and durations of the server, the store's locks and the engines). */
#ifndef VMEXPORT_CORE_CLOCK_H
#define VMEXPORT_CORE_CLOCK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* The current UTC time as RFC 3339 with microseconds ("2026-11-23T09:15:00.123456Z"),
 * malloc'd; NULL when out of memory. */
static inline __attribute__((unused)) char *clock_rfc3339_now(void)
{
    struct timespec ts;
    struct tm tm;
    char buf[40];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, sizeof(buf) - n, ".%06ldZ", ts.tv_nsec / 1000);
    char *s = malloc(n + 9);
    if (s)
        snprintf(s, n + 9, "%s", buf);
    return s;
}

/* Nanoseconds of CLOCK_MONOTONIC: for timeouts, expiry and durations. */
static inline __attribute__((unused)) int64_t clock_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#endif
