/* Authentication of API users: passwords from a users file (crypt(3) hashes: yescrypt, $6$, ...)
 * and optionally PAM; a role per user; JWT bearer tokens (HS256, libjwt) issued at login, bound
 * to the user's current password hash and revocable at logout; limits on failed logins per
 * address and per user name.  Every failure looks the same to the caller (-EACCES), whatever
 * its cause. */
#ifndef VMEXPORT_SERVER_AUTH_H
#define VMEXPORT_SERVER_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct catalog;

/* What a user may do.  Ordered from most to least privileged; zero is admin, the role of a
 * users-file line that names none (files written before roles existed) and of a route that
 * names none (a new route is admin-only until someone decides otherwise). */
enum auth_role {
    AUTH_ROLE_ADMIN = 0,    /* everything */
    AUTH_ROLE_OPERATOR = 1, /* snapshots, downloads, uploads, and what a reader may do */
    AUTH_ROLE_READER = 2,   /* lists and downloads */
};

/* "admin", "operator", "reader". */
const char *auth_role_name(enum auth_role role);
/* 0 and *out, or -EINVAL for any other text. */
int auth_role_parse(const char *text, enum auth_role *out);
/* Whether a user with role have may use something that needs role need. */
static inline bool auth_role_allows(enum auth_role have, enum auth_role need)
{
    return have <= need;
}

struct auth_config {
    const char *users_file;      /* lines "name:HASH[:ROLE]"; '#' comments and blank lines
                                    ignored; refused when group-writable or accessible by
                                    others */
    const char *pam_service;     /* NULL or "": no PAM */
    enum auth_role pam_role;     /* role of users who logged in through PAM */
    unsigned token_ttl;          /* seconds a token lives */
    const char *jwt_secret_file; /* created 0600 with 32 random bytes when missing */
    unsigned max_failures;       /* failed logins per address per window before -EAGAIN (5) */
    unsigned max_user_failures;  /* failed logins per user name per window, from any address
                                    (10) */
    unsigned failure_window;     /* seconds (60) */
    struct catalog *catalog;     /* where revoked tokens are kept across restarts; NULL: in
                                    memory only */
};

struct auth;

/* Load the users file, the JWT secret and the revoked tokens.  On failure, err gets a message
 * naming the file and the cause. */
int auth_open(struct auth **out, const struct auth_config *cfg, char *err, size_t errlen);
void auth_close(struct auth *a);

/* Re-read the users file (e.g. on SIGHUP).  0 or a negative errno (the old list stays).  Tokens
 * of users no longer listed, or whose password hash changed, stop working. */
int auth_reload(struct auth *a);

/* Check user/password for a client address.  0 and *token (malloc'd JWT) on success;
 * -EACCES wrong user or password; -EAGAIN too many recent failures from client_addr or for
 * user, and *retry_after (when not NULL) the seconds until logins may be tried again. */
int auth_login(struct auth *a, const char *user, const char *password, const char *client_addr,
               char **token, unsigned *retry_after);

/* Check an Authorization header value: exactly "Bearer <jwt>", valid HS256 signature, not
 * expired, issued by this daemon, not revoked, its user still listed with the same password
 * hash (or logged in through PAM).  0, *user (malloc'd) and *role (when not NULL) on success,
 * -EACCES otherwise. */
int auth_check_bearer(struct auth *a, const char *authorization, char **user, enum auth_role *role);

/* Revoke the token of an Authorization header until it expires (logout).  0; -EACCES when the
 * header does not hold a valid token; -ENOSPC when too many revoked tokens are still
 * unexpired; another negative errno when the catalog cannot record it (nothing revoked). */
int auth_revoke(struct auth *a, const char *authorization);

/* Make a token for a user of the users file directly (tests).  now: Unix time.  -ENOENT when
 * user is not listed. */
int auth_token_issue(struct auth *a, const char *user, int64_t now, char **token);

#endif
