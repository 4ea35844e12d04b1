/* Authentication of API users: passwords from a users file (crypt(3) hashes: yescrypt, $6$, ...)
 * and optionally PAM; JWT bearer tokens (HS256, libjwt) issued at login; a per-address limit on
 * failed logins.  Every failure looks the same to the caller (-EACCES), whatever its cause. */
#ifndef VMEXPORT_SERVER_AUTH_H
#define VMEXPORT_SERVER_AUTH_H

#include <stddef.h>
#include <stdint.h>

struct auth_config {
    const char *users_file;      /* lines "name:HASH"; '#' comments and blank lines ignored */
    const char *pam_service;     /* NULL or "": no PAM */
    unsigned token_ttl;          /* seconds a token lives */
    const char *jwt_secret_file; /* created 0600 with 32 random bytes when missing */
    unsigned max_failures;       /* failed logins per address per window before -EAGAIN (5) */
    unsigned failure_window;     /* seconds (60) */
};

struct auth;

/* Load the users file and the JWT secret.  On failure, err gets a message naming the file and
 * the cause. */
int auth_open(struct auth **out, const struct auth_config *cfg, char *err, size_t errlen);
void auth_close(struct auth *a);

/* Re-read the users file (e.g. on SIGHUP).  0 or a negative errno (the old list stays). */
int auth_reload(struct auth *a);

/* Check user/password for a client address.  0 and *token (malloc'd JWT) on success;
 * -EACCES wrong user or password; -EAGAIN too many recent failures from client_addr. */
int auth_login(struct auth *a, const char *user, const char *password, const char *client_addr,
               char **token);

/* Check an Authorization header value: exactly "Bearer <jwt>", valid HS256 signature, not
 * expired, issued by this daemon.  0 and *user (malloc'd) on success, -EACCES otherwise. */
int auth_check_bearer(struct auth *a, const char *authorization, char **user);

/* Make a token directly (tests, and the login path).  now: Unix time. */
int auth_token_issue(struct auth *a, const char *user, int64_t now, char **token);

#endif
