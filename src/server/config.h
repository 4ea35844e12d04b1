/* The configuration of the HTTP API server: listening, TLS, limits, authentication, the
 * catalog, freeze/thaw hooks, uploads and the providers' sections.  Filled by the daemon
 * (daemon/config.c reads it from vmexportd.conf); the server only reads it, and keeps pointers
 * into it while it runs. */
#ifndef VMEXPORT_SERVER_CONFIG_H
#define VMEXPORT_SERVER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "provider/provider.h"
#include "server/auth.h"

struct config_provider {
    char *name;
    struct provider_setting *settings; /* keys and values owned here */
    size_t n_settings;
};

struct server_config {
    char *file;
    char *listen_host;
    uint16_t listen_port;
    char *certificate, *key, *ca_certificate;
    bool insecure_http;
    unsigned max_connections, connection_timeout, shutdown_grace;
    unsigned max_connections_per_address, header_timeout;
    unsigned worker_threads; /* 0: two per CPU, at least 4 */
    unsigned job_threads;
    char *tls_priorities;

    char *users_file, *pam_service, *jwt_secret_file;
    unsigned token_ttl;
    enum auth_role pam_role;
    unsigned login_failures_per_address, login_failures_per_user, login_failure_window;

    char *db_file;

    /* Hooks: the command lines as written, and split into words (core/argv.h) at load; run
     * without a shell, with the VM ID appended as one more argument. */
    char *freeze_command, *thaw_command;
    char **freeze_argv, **thaw_argv;
    unsigned hook_timeout;
    /* [snapshot] block_hash, for the providers (provider_config.block_hash): the digest of
     * copy-mode snapshots' sidecars, a static string; NULL: the providers' default. */
    const char *block_hash;

    unsigned upload_idle_timeout, upload_max_writers;

    struct config_provider *providers;
    size_t n_providers;
};

#endif
