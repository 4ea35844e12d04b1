/* vmexportd: the snapshot exporter daemon.  Loads the configuration, starts the HTTP API and
 * waits for signals: SIGHUP reloads the users file, SIGTERM/SIGINT stop gracefully. */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "core/log.h"
#include "daemon/config.h"
#include "server/server.h"

static void usage(FILE *f)
{
    fprintf(f, "Usage: vmexportd --config FILE [--verbose] [--check]\n"
               "\n"
               "Serve VM disk snapshots over HTTPS: list VMs, take reflink snapshots, report\n"
               "changed blocks between snapshots, and stream disk data with Range requests.\n"
               "The REST API (under /api/v1) is a superset of the Coriolis OVM exporter's; see\n"
               "docs/api.md.\n"
               "\n"
               "Options:\n"
               "  -c, --config FILE  configuration file (required)\n"
               "  -v, --verbose      log each request (address, method and path with transfer\n"
               "                     IDs and credentials cut, status, bytes, milliseconds,\n"
               "                     user) and decisions (repeat for debug)\n"
               "      --check        check the configuration (listen address, TLS certificate,\n"
               "                     key and priorities too), open the catalog and exit\n"
               "  -h, --help         this help\n"
               "  -V, --version      print the version\n"
               "\n"
               "Everything the daemon creates (catalog, snapshots, uploads) is private to its\n"
               "user: it runs with umask 077, whatever umask it was started with.\n"
               "\n"
               "Signals: SIGHUP reloads the users file (the tokens of users removed from it,\n"
               "or whose password hash changed, stop working; roles apply at once); SIGTERM\n"
               "and SIGINT stop accepting connections, let running requests finish\n"
               "(shutdown_grace) and exit.\n"
               "\n");
    fputs(config_help, f);
    fprintf(f, "\nExit status: 0 clean stop, 1 failure, 2 bad usage.\n");
}

/* Files and directories the daemon creates hold disks, credentials and transfer IDs: none is
 * readable by other users, whatever the umask it was started with.  Each is also created with
 * its own explicit mode. */
#define DAEMON_UMASK 077

/* Allocations from this size up get their own mapping (glibc's default: 128 KiB, adapting). */
#define DAEMON_MMAP_THRESHOLD (32 << 20)
/* Free heap memory above this much is given back to the system. */
#define DAEMON_TRIM_THRESHOLD (64 << 20)

/* Descriptors one connection may hold: its socket, a snapshot file opened twice (buffered and
 * O_DIRECT), and one spare (an upload's file, a catalog read). */
#define FDS_PER_CONNECTION 4
#define FDS_RESERVED       64 /* listening socket, catalog, logs, hooks, epoll and wake-up fds */

/* Raise the soft limit on open descriptors to the hard one: the default soft limit (1024) is
 * kept low for programs that use select(); this one polls, and each connection holds several
 * descriptors.  Warn when even the hard limit is below what max_connections may need. */
static void raise_nofile_limit(const struct server_config *cfg)
{
    /* libmicrohttpd accepts a margin above max_connections (to answer 503). */
    unsigned connections = server_connection_hard_limit(cfg);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t from = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
            log_info("open files limit raised from %llu to %llu", (unsigned long long)from,
                     (unsigned long long)rl.rlim_cur);
        else if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
            return;
    }
    unsigned long long need = (unsigned long long)connections * FDS_PER_CONNECTION + FDS_RESERVED;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need)
        log_warn("open files limit %llu is below the %llu that max_connections = %u may need; "
                 "raise it (ulimit -n, or LimitNOFILE= in a systemd unit) or lower "
                 "max_connections",
                 (unsigned long long)rl.rlim_cur, need, cfg->max_connections);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"verbose", no_argument, NULL, 'v'},
        {"check", no_argument, NULL, 'C'},        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0},
    };
    const char *config_file = NULL;
    bool check = false;
    int verbose = 0, c;
    umask(DAEMON_UMASK);
    /* libmicrohttpd allocates each TLS response's 1 MiB block with the response; from glibc's
     * default mmap threshold up, every one is fresh memory, and in a VM touching fresh pages
     * cost the daemon most of its CPU time when serving whole disks (4 GiB in 1 MiB ranges:
     * 9 s).  Keep such blocks in the heap to be reused; memory stays bounded by the blocks in
     * use at once (one per TLS download), as before. */
    mallopt(M_MMAP_THRESHOLD, DAEMON_MMAP_THRESHOLD);
    mallopt(M_TRIM_THRESHOLD, DAEMON_TRIM_THRESHOLD);
    log_init("vmexportd", LOG_LEVEL_WARN);
    while ((c = getopt_long(argc, argv, "c:vhV", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config_file = optarg;
            break;
        case 'v':
            verbose++;
            break;
        case 'C':
            check = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("vmexportd %s\n", VMEXPORT_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!config_file || optind != argc) {
        fprintf(stderr, "vmexportd: %s\nTry 'vmexportd --help'.\n",
                config_file ? "unexpected argument" : "--config FILE is required");
        return 2;
    }
    log_set_level(verbose >= 2 ? LOG_LEVEL_DEBUG : verbose ? LOG_LEVEL_INFO : LOG_LEVEL_WARN);

    /* Signals are taken synchronously by this thread; server threads inherit the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct server_config cfg;
    char err[1024] = "";
    if (config_load(&cfg, config_file, err, sizeof(err)) < 0) {
        log_error("%s", err);
        config_free(&cfg);
        return 1;
    }
    raise_nofile_limit(&cfg);
    struct server *srv = NULL;
    if (server_new(&cfg, &srv, err, sizeof(err)) < 0) {
        log_error("%s", err);
        config_free(&cfg);
        return 1;
    }
    if (check) {
        printf("%s: configuration OK (%zu providers)\n", config_file, cfg.n_providers);
        server_free(srv);
        config_free(&cfg);
        return 0;
    }
    if (server_start(srv, err, sizeof(err)) < 0) {
        log_error("%s", err);
        server_free(srv);
        config_free(&cfg);
        return 1;
    }
    fprintf(stderr, "vmexportd: listening on %s://%s:%u\n", cfg.insecure_http ? "http" : "https",
            cfg.listen_host, cfg.listen_port);

    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            int r = auth_reload(srv->auth);
            if (r < 0)
                log_error("SIGHUP: reloading the users file: %s (keeping the old one)",
                          strerror(-r));
            else
                log_warn("SIGHUP: users file reloaded");
            continue;
        }
        log_warn("signal %d: stopping (running requests get up to %u s)", sig,
                 cfg.shutdown_grace);
        break;
    }
    server_stop(srv, cfg.shutdown_grace);
    server_free(srv);
    config_free(&cfg);
    return 0;
}
