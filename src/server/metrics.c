/* Prometheus counters; see metrics.h. */
#include "metrics.h"

#include <inttypes.h>

static const unsigned metrics_statuses[METRICS_STATUSES] = {200, 201, 204, 206, 400, 401, 404,
                                                            405, 409, 413, 416, 500, 507};
/* Snapshot creation latency buckets, seconds. */
static const double metrics_bucket_le[METRICS_BUCKETS] = {0.01, 0.025, 0.05, 0.1,
                                                          0.25, 0.5,   1,    5};

static int status_index(unsigned status)
{
    for (int i = 0; i < METRICS_STATUSES; i++)
        if (metrics_statuses[i] == status)
            return i;
    return status >= 500 ? 11 : 4; /* other 5xx as 500, other 4xx as 400 */
}

void metrics_request(struct metrics *m, int route, unsigned status)
{
    if (route < 0 || route >= METRICS_ROUTES)
        return;
    atomic_fetch_add(&m->requests[route][status_index(status)], 1);
}

void metrics_snapshot_created(struct metrics *m, uint64_t latency_us)
{
    atomic_fetch_add(&m->snapshots_created, 1);
    atomic_fetch_add(&m->create_latency_us_sum, latency_us);
    int b = 0;
    while (b < METRICS_BUCKETS && (double)latency_us / 1e6 > metrics_bucket_le[b])
        b++;
    atomic_fetch_add(&m->create_latency_bucket[b], 1);
}

void metrics_write(struct metrics *m, FILE *f, const char *const *route_names, int64_t ready,
                   int64_t creating)
{
    fprintf(f, "# HELP vmexport_http_requests_total HTTP requests by route and status.\n"
               "# TYPE vmexport_http_requests_total counter\n");
    for (int r = 0; r < METRICS_ROUTES; r++) {
        if (!route_names[r])
            continue;
        for (int s = 0; s < METRICS_STATUSES; s++) {
            unsigned long long n = atomic_load(&m->requests[r][s]);
            if (n)
                fprintf(f, "vmexport_http_requests_total{route=\"%s\",status=\"%u\"} %llu\n",
                        route_names[r], metrics_statuses[s], n);
        }
    }
    fprintf(f,
            "# HELP vmexport_bytes_served_total Disk bytes sent to clients.\n"
            "# TYPE vmexport_bytes_served_total counter\n"
            "vmexport_bytes_served_total %llu\n"
            "# HELP vmexport_bytes_uploaded_total Disk bytes received by uploads.\n"
            "# TYPE vmexport_bytes_uploaded_total counter\n"
            "vmexport_bytes_uploaded_total %llu\n"
            "# HELP vmexport_snapshots Snapshots in the catalog by status.\n"
            "# TYPE vmexport_snapshots gauge\n"
            "vmexport_snapshots{status=\"ready\"} %" PRId64 "\n"
            "vmexport_snapshots{status=\"creating\"} %" PRId64 "\n"
            "# HELP vmexport_snapshots_created_total Snapshots created since start.\n"
            "# TYPE vmexport_snapshots_created_total counter\n"
            "vmexport_snapshots_created_total %llu\n"
            "# HELP vmexport_snapshots_deleted_total Snapshots deleted since start.\n"
            "# TYPE vmexport_snapshots_deleted_total counter\n"
            "vmexport_snapshots_deleted_total %llu\n"
            "# HELP vmexport_snapshot_failures_total Snapshot creations that failed.\n"
            "# TYPE vmexport_snapshot_failures_total counter\n"
            "vmexport_snapshot_failures_total %llu\n"
            "# HELP vmexport_login_failures_total Failed logins.\n"
            "# TYPE vmexport_login_failures_total counter\n"
            "vmexport_login_failures_total %llu\n",
            (unsigned long long)atomic_load(&m->bytes_served),
            (unsigned long long)atomic_load(&m->bytes_uploaded), ready, creating,
            (unsigned long long)atomic_load(&m->snapshots_created),
            (unsigned long long)atomic_load(&m->snapshots_deleted),
            (unsigned long long)atomic_load(&m->snapshot_failures),
            (unsigned long long)atomic_load(&m->login_failures));
    fprintf(f, "# HELP vmexport_snapshot_create_seconds Snapshot creation latency.\n"
               "# TYPE vmexport_snapshot_create_seconds histogram\n");
    unsigned long long cum = 0;
    for (int b = 0; b < METRICS_BUCKETS; b++) {
        cum += atomic_load(&m->create_latency_bucket[b]);
        fprintf(f, "vmexport_snapshot_create_seconds_bucket{le=\"%g\"} %llu\n",
                metrics_bucket_le[b], cum);
    }
    cum += atomic_load(&m->create_latency_bucket[METRICS_BUCKETS]);
    fprintf(f,
            "vmexport_snapshot_create_seconds_bucket{le=\"+Inf\"} %llu\n"
            "vmexport_snapshot_create_seconds_sum %.6f\n"
            "vmexport_snapshot_create_seconds_count %llu\n",
            cum, (double)atomic_load(&m->create_latency_us_sum) / 1e6, cum);
}
