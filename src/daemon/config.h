/* vmexportd configuration: an INI file (inih), every key documented in 'vmexportd --help', read
 * into the server's configuration (server/config.h).
 * Unknown sections or keys, bad values and missing files stop the daemon at start with a
 * message naming the file, the line or key, and the cause. */
#ifndef VMEXPORT_DAEMON_CONFIG_H
#define VMEXPORT_DAEMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server/config.h"

/* Defaults (also in the --help text). */
#define CONFIG_DEFAULT_LISTEN          "127.0.0.1:5544"
#define CONFIG_DEFAULT_TOKEN_TTL       3600
/* Idle connections cost no thread (event loop), only a socket and a little memory. */
#define CONFIG_DEFAULT_MAX_CONNECTIONS 1024
#define CONFIG_DEFAULT_MAX_PER_ADDRESS 64  /* connections from one client address */
#define CONFIG_DEFAULT_CONN_TIMEOUT    60  /* seconds a connection may stay idle */
#define CONFIG_DEFAULT_HEADER_TIMEOUT  10  /* seconds for the TLS handshake and first headers */
#define CONFIG_DEFAULT_JOB_THREADS     8   /* blocking requests at once, per pool (http.c) */
/* TLS 1.2 and 1.3 only; forward-secret key exchange (ECDHE; TLS 1.3's own) and AEAD ciphers
 * only: no RSA key exchange, no CBC, no SHA-1 MACs. */
#define CONFIG_DEFAULT_TLS_PRIORITIES                                                              \
    "SECURE:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:-CIPHER-ALL:"      \
    "+AES-256-GCM:+AES-128-GCM:+CHACHA20-POLY1305:-MAC-ALL:+AEAD"
#define CONFIG_DEFAULT_SHUTDOWN_GRACE  30  /* seconds running downloads get after SIGTERM */
#define CONFIG_DEFAULT_HOOK_TIMEOUT    60  /* seconds for freeze/thaw commands */
#define CONFIG_DEFAULT_UPLOAD_IDLE     300 /* seconds an upload may go without requests */
#define CONFIG_DEFAULT_UPLOAD_WRITERS  8   /* parallel writers of one upload */
#define CONFIG_DEFAULT_LOGIN_PER_ADDR  5   /* failed logins per address per window */
#define CONFIG_DEFAULT_LOGIN_PER_USER  10  /* failed logins per user name per window */
#define CONFIG_DEFAULT_LOGIN_WINDOW    60  /* seconds */

/* Parse and check path.  On failure err holds "FILE:LINE: ..." or "FILE: [section] key: ...". */
int config_load(struct server_config *cfg, const char *path, char *err, size_t errlen);
void config_free(struct server_config *cfg);

/* The documented keys, for --help. */
extern const char config_help[];

#endif
