/* Counters for GET /metrics (Prometheus text format): requests by route and status, bytes
 * served and uploaded, snapshot counts and creation latency.  Lock-free: atomics only. */
#ifndef VMEXPORT_SERVER_METRICS_H
#define VMEXPORT_SERVER_METRICS_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#define METRICS_ROUTES   48 /* route table size upper bound */
#define METRICS_STATUSES 13 /* distinct status codes tracked, see metrics.c */
#define METRICS_BUCKETS  8  /* latency histogram buckets */

struct metrics {
    atomic_ullong requests[METRICS_ROUTES][METRICS_STATUSES];
    atomic_ullong bytes_served;
    atomic_ullong bytes_uploaded; /* disk bytes written by upload PUTs */
    atomic_ullong snapshots_created, snapshots_deleted, snapshot_failures;
    atomic_ullong create_latency_us_sum;
    atomic_ullong create_latency_bucket[METRICS_BUCKETS + 1]; /* last: +Inf */
    atomic_ullong login_failures;
};

void metrics_request(struct metrics *m, int route, unsigned status);
void metrics_snapshot_created(struct metrics *m, uint64_t latency_us);
/* Write the exposition text; route_names has METRICS_ROUTES entries (NULL for unused). */
void metrics_write(struct metrics *m, FILE *f, const char *const *route_names, int64_t ready,
                   int64_t creating);

#endif
