/* Authentication of API users: passwords checked against a users file of crypt(3) hashes and,
 * when configured, PAM; a role per user; HS256 JWT bearer tokens issued at login and checked on
 * every request; revocation at logout; limits on failed logins.  Everything here may be called
 * from many threads at once.
 *
 * Users file: one "name:HASH" or "name:HASH:ROLE" per line, '#' comments and blank lines
 * ignored.  HASH is any hash crypt(3) understands (yescrypt "$y$", sha512crypt "$6$", ...);
 * ROLE is admin (the default), operator or reader.  Lines without ':', with an empty name or
 * hash, an unknown role, or a locked hash (starting with '!' or '*') are skipped and logged; for
 * a name listed twice the first line counts.  The file must be a regular file that others
 * cannot access and its group cannot write (it says who may log in and as what), at start, at
 * --check and at every reload.  PAM is asked only when the users file did not accept the
 * password (unknown user or wrong password); PAM users get the configured pam_role.
 *
 * JWT secret file: the HMAC-SHA256 key is the file's content without its trailing line end, and
 * must be at least 32 bytes long and not accessible by group or others.  When the file is missing
 * it is created with mode 0600 holding 32 random bytes (RAND_bytes) written as 64 lower-case hex
 * digits and a newline; the key is then that hex text.  The new file is written under a temporary
 * name (O_CREAT|O_EXCL) and linked into place, so nobody ever reads a half-written secret and two
 * daemons starting together agree on one secret.  The secret outlives restarts, and so do tokens.
 *
 * Tokens carry sub (the user), iss "vmexportd", iat, exp = iat + token_ttl (3600 when the
 * configuration says 0), a random jti, and either pwh, a keyed digest of the user's password
 * hash (users file), or "auth": "pam".  A bearer token is accepted only with alg HS256, a valid
 * signature (checked here in constant time, then again by libjwt), exp in the future, the right
 * issuer, a non-empty subject, not revoked, and: with pwh, its user still in the users file with
 * the same digest (so removing a user or changing the password and sending SIGHUP ends the
 * user's tokens); with "auth": "pam", PAM configured.  The role is the users file's current one
 * (or pam_role), never a claim.
 *
 * Logout revokes a token: its id (SHA-256 of the token text, which is canonical since the
 * signature covers everything else and is compared as text) goes into a set kept until the
 * token's exp, at most AUTH_REVOKED_MAX entries, and into the catalog, from which auth_open
 * loads the unexpired ones: a token revoked before a restart stays revoked after it.
 *
 * Verified tokens are remembered in a small cache (AUTH_CACHE_SLOTS entries) keyed by the exact
 * token text, so that a client sending the same token on every request costs one hash and one
 * constant-time comparison instead of two HMACs and a JSON parse.  An entry holds the token's
 * exp, user and role and the generation it was checked under; it is used only while exp is in
 * the future and the generation is current.  Every reload and every revocation starts a new
 * generation, so no entry outlives a change of the users or a logout.
 *
 * Failures are not told apart: unknown users cost one crypt(3) against a real hash like known
 * ones, and every failure is -EACCES.  Failed logins are counted per client address (IPv6 by
 * /64) and per user name: each user of the users file has its own count (kept across reloads),
 * and every other name and every address maps to one of AUTH_LIMIT_BUCKETS buckets of a fixed
 * table by HMAC under a random key, so nobody can choose which names or addresses share one.
 * Nothing is ever evicted.  An address may fail max_failures times, a user name
 * max_user_failures times, within failure_window seconds (counted from the first failure);
 * after that, and until the window has passed, its logins get -EAGAIN without any password
 * check; the log says when a count fills.  A success clears nothing: whoever holds one account
 * cannot reset a count with it.  Spraying one user from many addresses therefore meets the
 * user's limit, spraying many names from one address meets the address's, and neither can push
 * a victim's count out of a table: memory is fixed, and buckets only ever get shared, which makes
 * a limit stricter, never looser.  Logins still in progress count against both limits, so
 * concurrent guesses cannot overshoot them.
 */
#include "auth.h"

#include <arpa/inet.h>
#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <jwt.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <security/pam_appl.h>

#include "catalog/catalog.h"
#include "core/cleanup.h"
#include "core/clock.h"
#include "core/hex.h"
#include "core/log.h"
#include "core/vector.h"

#define AUTH_ISSUER                    "vmexportd"
#define AUTH_SECRET_MIN                32   /* bytes of HMAC key at least */
#define AUTH_SECRET_RANDOM             32   /* random bytes in a generated secret */
#define AUTH_SECRET_MAX                4096 /* larger secret files are refused */
#define AUTH_DEFAULT_TTL               3600
#define AUTH_DEFAULT_MAX_FAILURES      5  /* per address: one person mistyping */
#define AUTH_DEFAULT_MAX_USER_FAILURES 10 /* per user name: a few people or scripts at once */
#define AUTH_DEFAULT_WINDOW            60
/* Buckets of failed-login counts, per table.  4096 keeps the chance that a given user or
 * address shares its bucket with one of a few hundred others below 10%, in 2 x 96 KiB. */
#define AUTH_LIMIT_BUCKETS 4096
#define AUTH_TOKEN_MAX     8192 /* longer bearer tokens are refused unparsed */
#define AUTH_LOG_FIELD_MAX 64   /* characters of a user name or address in a log line */
#define AUTH_CACHE_SLOTS   64   /* verified tokens remembered (direct-mapped) */
#define AUTH_BIND_BYTES    16   /* bytes of the password-hash digest in a token (pwh) */
#define AUTH_BIND_TEXT     32   /* its base64url text holds 22 characters */
#define AUTH_JTI_BYTES     16   /* random bytes of a token's jti */
/* Revoked tokens remembered at most.  Each entry lives until its token expires, so this bounds
 * logouts per token_ttl (16384 in an hour is one every 0.2 s); a logout beyond it is refused
 * (the token then stays valid) rather than forgetting an earlier one. */
#define AUTH_REVOKED_MAX 16384
#define AUTH_PAM_SOURCE  "pam" /* value of the "auth" claim of PAM logins */

/* Hash that unknown users are checked against when the users file is empty: yescrypt with the
 * default cost, of a password nobody knows (the result is thrown away anyway). */
static const char dummy_hash[] =
    "$y$j9T$37NrgLCo.Q6v6.bSSmV7C1$OLx/HoWP9/myWk.4qvRDiXUroERskZjrMkTMsrqpnM6";

static const char *const role_names[] = {
    [AUTH_ROLE_ADMIN] = "admin",
    [AUTH_ROLE_OPERATOR] = "operator",
    [AUTH_ROLE_READER] = "reader",
};

/* Failed logins of one user, or of whatever maps to one bucket. */
struct limit_bucket {
    unsigned failures;    /* within the window that began at window_start */
    unsigned pending;     /* logins being checked right now */
    int64_t window_start; /* ms, monotonic clock */
};

struct auth_user {
    char *name;
    char *hash;
    enum auth_role role;
    char bind[AUTH_BIND_TEXT]; /* pwh claim of its tokens: keyed digest of name and hash */
    struct limit_bucket limit; /* its failed logins (guarded by limit_lock); kept by reloads */
};
DEFINE_VECTOR_TYPE(auth_user_list, struct auth_user);

/* A token that passed the full check. */
struct token_slot {
    char *token; /* exact text after "Bearer "; NULL: slot free */
    size_t len;
    char *user; /* its sub claim */
    enum auth_role role;
    long exp;     /* its exp claim, Unix time */
    uint64_t gen; /* auth generation it was checked under */
};

/* A revoked token until it expires. */
struct revoked {
    unsigned char id[SHA256_DIGEST_LENGTH];
    int64_t exp; /* Unix time */
};
DEFINE_VECTOR_TYPE(revoked_list, struct revoked);

struct auth {
    char *users_file;  /* NULL: no users file */
    char *pam_service; /* NULL: no PAM */
    enum auth_role pam_role;
    unsigned token_ttl, max_failures, max_user_failures, failure_window;
    unsigned char *key;
    size_t key_len;
    struct catalog *catalog; /* NULL: revocations in memory only */

    pthread_mutex_t users_lock; /* guards users; taken before limit_lock */
    auth_user_list users;

    pthread_mutex_t limit_lock;  /* guards the buckets and the users' limit */
    unsigned char limit_key[32]; /* random: which keys share a bucket is unknown outside */
    struct limit_bucket addr_buckets[AUTH_LIMIT_BUCKETS];
    struct limit_bucket name_buckets[AUTH_LIMIT_BUCKETS]; /* names not in the users file */

    pthread_mutex_t revoked_lock; /* guards revoked */
    revoked_list revoked;

    /* Bumped after every change of users or revoked: cache entries of older generations are
     * not used. */
    atomic_uint_fast64_t gen;

    pthread_mutex_t cache_lock; /* guards cache */
    uint64_t cache_seed;        /* random: slot choice cannot be steered from outside */
    struct token_slot cache[AUTH_CACHE_SLOTS];
};

const char *auth_role_name(enum auth_role role)
{
    return (unsigned)role < ARRAY_SIZE(role_names) ? role_names[role] : "none";
}

int auth_role_parse(const char *text, enum auth_role *out)
{
    for (size_t i = 0; text && i < ARRAY_SIZE(role_names); i++) {
        if (strcmp(text, role_names[i]) == 0) {
            *out = (enum auth_role)i;
            return 0;
        }
    }
    return -EINVAL;
}

static void err_set(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void err_set(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Copies untrusted text for a log line: printable ASCII as is, anything else as \xHH, cut to
 * AUTH_LOG_FIELD_MAX characters.  out must hold 4 * AUTH_LOG_FIELD_MAX + 4 bytes. */
#define LOG_FIELD_SIZE (4 * AUTH_LOG_FIELD_MAX + 4)
static const char *log_field(const char *s, char *out)
{
    size_t n = 0, i = 0;
    if (!s)
        s = "";
    for (; i < AUTH_LOG_FIELD_MAX && s[i]; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
            out[n++] = (char)c;
        } else {
            out[n++] = '\\';
            out[n++] = 'x';
            hex_encode(&c, 1, out + n);
            n += 2;
        }
    }
    if (s[i]) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
    return out;
}

static int64_t monotonic_ms(void)
{
    return clock_monotonic_ns() / 1000000;
}

static void users_free(auth_user_list *users)
{
    for (size_t i = 0; i < users->len; i++) {
        free(users->ptr[i].name);
        free(users->ptr[i].hash);
    }
    auth_user_list_reset(users);
}

static const struct auth_user *users_find(const auth_user_list *users, const char *name)
{
    for (size_t i = 0; i < users->len; i++)
        if (strcmp(users->ptr[i].name, name) == 0)
            return &users->ptr[i];
    return NULL;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* base64url without padding of len bytes into out (4 * ceil(len / 3) + 1 bytes). */
static void base64url(const unsigned char *in, size_t len, char *out)
{
    int n = EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    while (n > 0 && out[n - 1] == '=')
        n--;
    for (int i = 0; i < n; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    out[n] = '\0';
}

/* The pwh claim of a user's tokens: HMAC-SHA256 under the token key of "pwh", the name and the
 * password hash, cut to AUTH_BIND_BYTES.  It changes with the hash, and tells nothing about the
 * hash to whoever holds a token. */
static int user_bind(const struct auth *a, struct auth_user *u)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned mac_len = 0;
    size_t nl = strlen(u->name), hl = strlen(u->hash);
    CLEANUP_FREE unsigned char *msg = malloc(4 + nl + 1 + hl);
    if (!msg)
        return -ENOMEM;
    memcpy(msg, "pwh", 4); /* with its NUL: the name cannot run into the label */
    memcpy(msg + 4, u->name, nl + 1);
    memcpy(msg + 4 + nl + 1, u->hash, hl);
    if (!HMAC(EVP_sha256(), a->key, (int)a->key_len, msg, 4 + nl + 1 + hl, mac, &mac_len) ||
        mac_len < AUTH_BIND_BYTES)
        return -EIO;
    _Static_assert(4 * ((AUTH_BIND_BYTES + 2) / 3) + 1 <= AUTH_BIND_TEXT, "room for pwh");
    base64url(mac, AUTH_BIND_BYTES, u->bind);
    return 0;
}

/* Adds one line of a users file to users, or explains on the log why it is skipped. */
static int users_parse_line(const struct auth *a, const char *path, unsigned lineno, char *line,
                            auth_user_list *users)
{
    size_t len = strlen(line);
    while (len > 0 && is_blank(line[len - 1]))
        line[--len] = '\0';
    while (*line == ' ' || *line == '\t')
        line++;
    if (*line == '\0' || *line == '#')
        return 0;

    char *colon = strchr(line, ':');
    if (!colon) {
        log_warn("%s:%u: no ':' between user name and hash, line ignored", path, lineno);
        return 0;
    }
    *colon = '\0';
    char *name = line, *hash = colon + 1;
    enum auth_role role = AUTH_ROLE_ADMIN;
    if (*name == '\0') {
        log_warn("%s:%u: empty user name, line ignored", path, lineno);
        return 0;
    }
    /* crypt(3) hashes never hold ':', so a second one starts the role. */
    char *role_text = strchr(hash, ':');
    if (role_text) {
        *role_text++ = '\0';
        if (auth_role_parse(role_text, &role) < 0) {
            char role_log[4 * AUTH_LOG_FIELD_MAX + 4];
            log_warn("%s:%u: unknown role '%s' for user '%s' (admin, operator or reader), line "
                     "ignored",
                     path, lineno, log_field(role_text, role_log), name);
            return 0;
        }
    }
    if (*hash == '\0') {
        log_warn("%s:%u: empty password hash for user '%s', line ignored", path, lineno, name);
        return 0;
    }
    if (*hash == '!' || *hash == '*') {
        log_info("%s:%u: account '%s' is locked, line ignored", path, lineno, name);
        return 0;
    }
    if (strlen(hash) >= CRYPT_OUTPUT_SIZE || strpbrk(hash, " \t")) {
        log_warn("%s:%u: malformed password hash for user '%s', line ignored", path, lineno, name);
        return 0;
    }
    if (users_find(users, name)) {
        log_warn("%s:%u: user '%s' listed again, line ignored", path, lineno, name);
        return 0;
    }

    struct auth_user u = {.name = strdup(name), .hash = strdup(hash), .role = role};
    int r = u.name && u.hash ? user_bind(a, &u) : -ENOMEM;
    if (r == 0)
        r = auth_user_list_append(users, u);
    if (r < 0) {
        free(u.name);
        free(u.hash);
    }
    return r;
}

static int users_load(const struct auth *a, const char *path, auth_user_list *out, char *err,
                      size_t errlen)
{
    auth_user_list users = VECTOR_INIT;
    CLEANUP_FREE char *line = NULL;
    size_t cap = 0;
    unsigned lineno = 0;
    struct stat st;
    int r = 0;

    FILE *f = fopen(path, "re");
    if (!f) {
        r = -errno;
        err_set(err, errlen, "%s: cannot open users file: %s", path, strerror(-r));
        return r;
    }
    /* Checked on the open file: what is read is what was checked. */
    if (fstat(fileno(f), &st) < 0) {
        r = -errno;
        err_set(err, errlen, "%s: cannot stat users file: %s", path, strerror(-r));
        fclose(f);
        return r;
    }
    if (!S_ISREG(st.st_mode)) {
        err_set(err, errlen, "%s: users file is not a regular file", path);
        fclose(f);
        return -EINVAL;
    }
    if (st.st_mode & (S_IRWXO | S_IWGRP)) {
        err_set(err, errlen,
                "%s: users file is accessible by others or writable by its group (mode %04o); "
                "it must be 0600 or 0640 (chmod 600 %s)",
                path, (unsigned)(st.st_mode & 07777), path);
        fclose(f);
        return -EPERM;
    }
    for (;;) {
        errno = 0;
        ssize_t n = getline(&line, &cap, f);
        if (n < 0) {
            if (!feof(f)) /* a read error or no memory, not the end of the file */
                r = errno ? -errno : -EIO;
            break;
        }
        lineno++;
        if (memchr(line, '\0', (size_t)n)) {
            log_warn("%s:%u: NUL byte in line, line ignored", path, lineno);
            continue;
        }
        r = users_parse_line(a, path, lineno, line, &users);
        if (r < 0)
            break;
    }
    fclose(f);
    if (r < 0) {
        err_set(err, errlen, "%s: cannot read users file: %s", path, strerror(-r));
        users_free(&users);
        return r;
    }
    if (users.len == 0)
        log_warn("%s: no usable users", path);
    *out = users;
    return 0;
}

/* Writes a new random secret to path, atomically: fails with -EEXIST if path exists. */
static int secret_create(const char *path, char *err, size_t errlen)
{
    unsigned char raw[AUTH_SECRET_RANDOM];
    char text[2 * AUTH_SECRET_RANDOM + 1];
    int r = 0;

    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        err_set(err, errlen, "%s: cannot generate a JWT secret: no random bytes", path);
        return -EIO;
    }
    hex_encode(raw, sizeof(raw), text);
    text[sizeof(text) - 1] = '\n';
    OPENSSL_cleanse(raw, sizeof(raw));

    CLEANUP_FREE char *tmp = NULL;
    if (asprintf(&tmp, "%s.XXXXXX", path) < 0) {
        tmp = NULL;
        OPENSSL_cleanse(text, sizeof(text));
        return -ENOMEM;
    }
    CLEANUP_CLOSE int fd = mkostemp(tmp, O_CLOEXEC); /* O_CREAT|O_EXCL, mode 0600 */
    if (fd < 0) {
        r = -errno;
        OPENSSL_cleanse(text, sizeof(text));
        err_set(err, errlen, "%s: cannot create JWT secret: %s", path, strerror(-r));
        return r;
    }
    size_t done = 0;
    while (done < sizeof(text) && r == 0) {
        ssize_t n = write(fd, text + done, sizeof(text) - done);
        if (n < 0 && errno != EINTR)
            r = -errno;
        else if (n > 0)
            done += (size_t)n;
    }
    OPENSSL_cleanse(text, sizeof(text));
    if (r == 0 && fchmod(fd, 0600) < 0)
        r = -errno;
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (r == 0 && link(tmp, path) < 0)
        r = -errno;
    unlink(tmp);
    if (r < 0 && r != -EEXIST)
        err_set(err, errlen, "%s: cannot create JWT secret: %s", path, strerror(-r));
    else if (r == 0)
        log_info("%s: created a new JWT secret", path);
    return r;
}

static int secret_load(struct auth *a, const char *path, char *err, size_t errlen)
{
    unsigned char buf[AUTH_SECRET_MAX + 1];
    size_t len = 0;
    struct stat st;
    int r = 0;

    CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0 && errno == ENOENT) {
        r = secret_create(path, err, errlen);
        if (r < 0 && r != -EEXIST)
            return r;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    }
    if (fd < 0) {
        r = -errno;
        err_set(err, errlen, "%s: cannot open JWT secret: %s", path, strerror(-r));
        return r;
    }
    if (fstat(fd, &st) < 0) {
        r = -errno;
        err_set(err, errlen, "%s: cannot stat JWT secret: %s", path, strerror(-r));
        return r;
    }
    if (!S_ISREG(st.st_mode)) {
        err_set(err, errlen, "%s: JWT secret is not a regular file", path);
        return -EINVAL;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        err_set(err, errlen,
                "%s: JWT secret is accessible by group or others (mode %04o); it must be 0600 "
                "or stricter",
                path, (unsigned)(st.st_mode & 07777));
        return -EPERM;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            err_set(err, errlen, "%s: cannot read JWT secret: %s", path, strerror(-r));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == sizeof(buf)) {
            err_set(err, errlen, "%s: JWT secret is larger than %d bytes", path, AUTH_SECRET_MAX);
            r = -EFBIG;
            goto out;
        }
    }
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    if (len > 0 && buf[len - 1] == '\r')
        len--;
    if (len < AUTH_SECRET_MIN) {
        err_set(err, errlen, "%s: JWT secret is shorter than %d bytes (%zu)", path, AUTH_SECRET_MIN,
                len);
        r = -EINVAL;
        goto out;
    }
    a->key = malloc(len);
    if (!a->key) {
        r = -ENOMEM;
        goto out;
    }
    memcpy(a->key, buf, len);
    a->key_len = len;
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    return r;
}

/* Adds one row of the catalog's revoked tokens to the set (auth_open).  Every unexpired one is
 * kept, even beyond AUTH_REVOKED_MAX (concurrent logouts may overshoot it a little): forgetting
 * one would make its token valid again. */
static int revoked_load_one(void *arg, const char *id_hex, int64_t exp)
{
    struct auth *a = arg;
    struct revoked rv = {.exp = exp};
    if (strlen(id_hex) != 2 * sizeof(rv.id))
        return 0; /* not one of ours */
    for (size_t i = 0; i < sizeof(rv.id); i++) {
        unsigned hi, lo;
        if (sscanf(id_hex + 2 * i, "%1x%1x", &hi, &lo) != 2)
            return 0;
        rv.id[i] = (unsigned char)(hi << 4 | lo);
    }
    return revoked_list_append(&a->revoked, rv);
}

int auth_open(struct auth **out, const struct auth_config *cfg, char *err, size_t errlen)
{
    int r;

    *out = NULL;
    err_set(err, errlen, "%s", "");
    if (!cfg || !cfg->jwt_secret_file || !cfg->jwt_secret_file[0]) {
        err_set(err, errlen, "no JWT secret file configured");
        return -EINVAL;
    }

    struct auth *a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    pthread_mutex_t *locks[] = {&a->users_lock, &a->limit_lock, &a->revoked_lock, &a->cache_lock};
    for (size_t i = 0; i < ARRAY_SIZE(locks); i++) {
        r = pthread_mutex_init(locks[i], NULL);
        if (r) {
            while (i-- > 0)
                pthread_mutex_destroy(locks[i]);
            free(a);
            return -r;
        }
    }
    atomic_init(&a->gen, 1);
    if (RAND_bytes((unsigned char *)&a->cache_seed, sizeof(a->cache_seed)) != 1 ||
        RAND_bytes(a->limit_key, sizeof(a->limit_key)) != 1) {
        err_set(err, errlen, "no random bytes for the token cache and login limits");
        r = -EIO;
        goto fail;
    }
    a->token_ttl = cfg->token_ttl ? cfg->token_ttl : AUTH_DEFAULT_TTL;
    a->max_failures = cfg->max_failures ? cfg->max_failures : AUTH_DEFAULT_MAX_FAILURES;
    a->max_user_failures =
        cfg->max_user_failures ? cfg->max_user_failures : AUTH_DEFAULT_MAX_USER_FAILURES;
    a->failure_window = cfg->failure_window ? cfg->failure_window : AUTH_DEFAULT_WINDOW;
    a->pam_role = cfg->pam_role;
    a->catalog = cfg->catalog;

    if (cfg->users_file && cfg->users_file[0]) {
        a->users_file = strdup(cfg->users_file);
        if (!a->users_file) {
            r = -ENOMEM;
            goto fail;
        }
    }
    if (cfg->pam_service && cfg->pam_service[0]) {
        a->pam_service = strdup(cfg->pam_service);
        if (!a->pam_service) {
            r = -ENOMEM;
            goto fail;
        }
    }

    r = secret_load(a, cfg->jwt_secret_file, err, errlen);
    if (r < 0)
        goto fail;
    if (a->users_file) {
        r = users_load(a, a->users_file, &a->users, err, errlen);
        if (r < 0)
            goto fail;
    }
    if (a->catalog) {
        r = catalog_token_revoked_list(a->catalog, (int64_t)time(NULL), revoked_load_one, a);
        if (r < 0) {
            err_set(err, errlen, "cannot read the revoked tokens from the catalog: %s",
                    strerror(-r));
            goto fail;
        }
    }
    *out = a;
    return 0;

fail:
    if (r == -ENOMEM && err && errlen && !err[0])
        err_set(err, errlen, "out of memory");
    auth_close(a);
    return r;
}

void auth_close(struct auth *a)
{
    if (!a)
        return;
    users_free(&a->users);
    revoked_list_reset(&a->revoked);
    if (a->key) {
        OPENSSL_cleanse(a->key, a->key_len);
        free(a->key);
    }
    for (size_t i = 0; i < AUTH_CACHE_SLOTS; i++) {
        free(a->cache[i].token);
        free(a->cache[i].user);
    }
    free(a->users_file);
    free(a->pam_service);
    pthread_mutex_destroy(&a->users_lock);
    pthread_mutex_destroy(&a->limit_lock);
    pthread_mutex_destroy(&a->revoked_lock);
    pthread_mutex_destroy(&a->cache_lock);
    free(a);
}

int auth_reload(struct auth *a)
{
    char err[512];
    auth_user_list users = VECTOR_INIT, old;

    if (!a->users_file)
        return 0;
    int r = users_load(a, a->users_file, &users, err, sizeof(err));
    if (r < 0) {
        log_error("%s; keeping the previous users", err);
        return r;
    }
    pthread_mutex_lock(&a->users_lock);
    pthread_mutex_lock(&a->limit_lock);
    /* Failed logins stay counted: a reload must not reset a limit. */
    for (size_t i = 0; i < users.len; i++) {
        const struct auth_user *was = users_find(&a->users, users.ptr[i].name);
        if (was)
            users.ptr[i].limit = was->limit;
    }
    old = a->users;
    a->users = users;
    pthread_mutex_unlock(&a->limit_lock);
    pthread_mutex_unlock(&a->users_lock);
    atomic_fetch_add(&a->gen, 1); /* after the swap: see auth_check_bearer */
    users_free(&old);
    return 0;
}

/* Checks a password against the users file.  Runs crypt(3) exactly once whether or not the user
 * is known, so both cases take about the same time.  On a match, *bind gets the user's pwh. */
static bool users_verify(struct auth *a, const char *user, const char *password,
                         char bind[AUTH_BIND_TEXT])
{
    char hash[CRYPT_OUTPUT_SIZE];
    bool known = false;

    pthread_mutex_lock(&a->users_lock);
    const struct auth_user *u = users_find(&a->users, user);
    if (u) {
        known = true;
        memcpy(bind, u->bind, AUTH_BIND_TEXT);
    } else if (a->users.len > 0) {
        u = &a->users.ptr[0]; /* a real hash of this file: the same algorithm and cost */
    }
    snprintf(hash, sizeof(hash), "%s", u ? u->hash : dummy_hash);
    pthread_mutex_unlock(&a->users_lock);

    struct crypt_data *data = calloc(1, sizeof(*data));
    if (!data)
        return false;
    const char *result = crypt_rn(password, hash, data, (int)sizeof(*data));
    size_t hash_len = strlen(hash);
    bool match = result && strlen(result) == hash_len && CRYPTO_memcmp(result, hash, hash_len) == 0;
    OPENSSL_cleanse(data, sizeof(*data));
    free(data);
    return known && match;
}

struct pam_answers {
    const char *password;
};

/* PAM conversation: answers password prompts (echo off) with the password; other questions
 * cannot be answered. */
static int pam_conversation(int n, const struct pam_message **msg, struct pam_response **resp,
                            void *data)
{
    const struct pam_answers *ans = data;
    if (n <= 0 || n > PAM_MAX_NUM_MSG)
        return PAM_CONV_ERR;
    struct pam_response *r = calloc((size_t)n, sizeof(*r));
    if (!r)
        return PAM_BUF_ERR;
    for (int i = 0; i < n; i++) {
        switch (msg[i]->msg_style) {
        case PAM_PROMPT_ECHO_OFF:
            r[i].resp = strdup(ans->password);
            if (!r[i].resp)
                goto fail;
            break;
        case PAM_ERROR_MSG:
        case PAM_TEXT_INFO:
            break;
        default:
            goto fail;
        }
    }
    *resp = r;
    return PAM_SUCCESS;

fail:
    for (int i = 0; i < n; i++) {
        if (r[i].resp) {
            OPENSSL_cleanse(r[i].resp, strlen(r[i].resp));
            free(r[i].resp);
        }
    }
    free(r);
    return PAM_CONV_ERR;
}

static bool pam_verify(struct auth *a, const char *user, const char *password, const char *addr)
{
    struct pam_answers ans = {.password = password};
    struct pam_conv conv = {.conv = pam_conversation, .appdata_ptr = &ans};
    pam_handle_t *pamh = NULL;

    int r = pam_start(a->pam_service, user, &conv, &pamh);
    if (r != PAM_SUCCESS) {
        log_error("PAM service '%s': cannot start: %s", a->pam_service,
                  pamh ? pam_strerror(pamh, r) : "error");
        if (pamh)
            pam_end(pamh, r);
        return false;
    }
    r = pam_set_item(pamh, PAM_RHOST, addr);
    if (r == PAM_SUCCESS)
        r = pam_authenticate(pamh, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK);
    if (r == PAM_SUCCESS)
        r = pam_acct_mgmt(pamh, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK);
    if (r == PAM_SUCCESS) {
        /* A module may map the name; the token must name who was actually checked. */
        const void *item = NULL;
        if (pam_get_item(pamh, PAM_USER, &item) != PAM_SUCCESS || !item || strcmp(item, user) != 0)
            r = PAM_USER_UNKNOWN;
    }
    pam_end(pamh, r);
    return r == PAM_SUCCESS;
}

/* The text an address is counted under: IPv6 addresses by their /64 (one site or host has
 * them all), IPv4 (also IPv4-mapped IPv6) and anything else as they are.  out: 64 bytes. */
#define ADDR_KEY_SIZE 64
static void addr_key(const char *addr, char out[ADDR_KEY_SIZE])
{
    struct in6_addr in6;
    if (inet_pton(AF_INET6, addr, &in6) == 1) {
        if (IN6_IS_ADDR_V4MAPPED(&in6)) {
            inet_ntop(AF_INET, &in6.s6_addr[12], out, ADDR_KEY_SIZE);
            return;
        }
        memset(&in6.s6_addr[8], 0, 8);
        inet_ntop(AF_INET6, &in6, out, ADDR_KEY_SIZE - 3);
        strcat(out, "/64");
        return;
    }
    snprintf(out, ADDR_KEY_SIZE, "%s", addr);
}

/* The bucket of key in a table ('a' addresses, 'u' user names), by HMAC under limit_key. */
static struct limit_bucket *limit_bucket(struct auth *a, char table, const char *key)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned mac_len = 0;
    size_t len = strlen(key);
    CLEANUP_FREE unsigned char *msg = malloc(len + 1);
    uint32_t i = 0;
    if (msg) {
        msg[0] = (unsigned char)table;
        memcpy(msg + 1, key, len);
        if (HMAC(EVP_sha256(), a->limit_key, (int)sizeof(a->limit_key), msg, len + 1, mac,
                 &mac_len) &&
            mac_len >= sizeof(i))
            memcpy(&i, mac, sizeof(i));
    }
    /* Without memory or HMAC, every key shares bucket 0: stricter, never looser. */
    return table == 'a' ? &a->addr_buckets[i % AUTH_LIMIT_BUCKETS]
                        : &a->name_buckets[i % AUTH_LIMIT_BUCKETS];
}

/* Seconds until b stops refusing, or 0 when it takes another attempt; called with limit_lock
 * held.  A window that has passed starts over. */
static unsigned bucket_wait(struct limit_bucket *b, unsigned max, int64_t now, int64_t window)
{
    if (b->failures > 0 && now - b->window_start >= window)
        b->failures = 0;
    if (b->failures + b->pending < max)
        return 0;
    if (b->failures == 0) /* only logins in progress: they end within a second or so */
        return 1;
    int64_t left = b->window_start + window - now;
    return left > 0 ? (unsigned)((left + 999) / 1000) : 1;
}

/* Counts a failure into b; true when that fills it.  Called with limit_lock held. */
static bool bucket_fail(struct limit_bucket *b, unsigned max, int64_t now, int64_t window)
{
    if (b->failures == 0 || now - b->window_start >= window) {
        b->failures = 0;
        b->window_start = now;
    }
    b->failures++;
    return b->failures == max;
}

/* The buckets a login attempt counts in.  A user of the users file has its own (found again
 * by name at the end: a reload may have moved it); any other name shares a hashed one. */
struct login_limit {
    struct limit_bucket *addr;
    struct limit_bucket *name; /* NULL: the user's own */
};

/* The bucket of the login attempt's user name; called with users_lock and limit_lock held. */
static struct limit_bucket *limit_user_bucket(struct auth *a, const struct login_limit *l,
                                              const char *user)
{
    if (l->name)
        return l->name;
    struct auth_user *u = (struct auth_user *)users_find(&a->users, user);
    return u ? &u->limit : NULL;
}

/* Starts a login attempt: -EAGAIN and *retry_after when the address's or the user name's
 * bucket is full, else 0 with both counting this attempt as pending. */
static int limit_begin(struct auth *a, const char *addr, const char *user, struct login_limit *l,
                       unsigned *retry_after)
{
    int64_t now = monotonic_ms(), window = (int64_t)a->failure_window * 1000;
    char key[ADDR_KEY_SIZE];
    addr_key(addr, key);
    l->addr = limit_bucket(a, 'a', key);
    struct limit_bucket *hashed = limit_bucket(a, 'u', user);

    pthread_mutex_lock(&a->users_lock);
    pthread_mutex_lock(&a->limit_lock);
    l->name = users_find(&a->users, user) ? NULL : hashed;
    struct limit_bucket *ub = limit_user_bucket(a, l, user);
    unsigned wait_addr = bucket_wait(l->addr, a->max_failures, now, window);
    unsigned wait_user = bucket_wait(ub, a->max_user_failures, now, window);
    if (wait_addr == 0 && wait_user == 0) {
        l->addr->pending++;
        ub->pending++;
    }
    pthread_mutex_unlock(&a->limit_lock);
    pthread_mutex_unlock(&a->users_lock);
    *retry_after = wait_addr > wait_user ? wait_addr : wait_user;
    return *retry_after ? -EAGAIN : 0;
}

/* Ends a login attempt started by limit_begin(); logs when a failure fills a bucket. */
static void limit_end(struct auth *a, const struct login_limit *l, const char *addr,
                      const char *user, bool failed)
{
    int64_t now = monotonic_ms(), window = (int64_t)a->failure_window * 1000;
    bool addr_full = false, user_full = false;

    pthread_mutex_lock(&a->users_lock);
    pthread_mutex_lock(&a->limit_lock);
    struct limit_bucket *ub = limit_user_bucket(a, l, user); /* NULL: removed meanwhile */
    if (l->addr->pending > 0)
        l->addr->pending--;
    if (ub && ub->pending > 0)
        ub->pending--;
    if (failed) {
        addr_full = bucket_fail(l->addr, a->max_failures, now, window);
        user_full = ub && bucket_fail(ub, a->max_user_failures, now, window);
    }
    pthread_mutex_unlock(&a->limit_lock);
    pthread_mutex_unlock(&a->users_lock);

    char addr_log[LOG_FIELD_SIZE], user_log[LOG_FIELD_SIZE];
    if (addr_full)
        log_warn("login limit: %u failed logins from %s within %u s; refusing logins from it "
                 "until the %u s have passed",
                 a->max_failures, log_field(addr, addr_log), a->failure_window, a->failure_window);
    if (user_full)
        log_warn("login limit: %u failed logins for user '%s' within %u s, the last from %s; "
                 "refusing its logins from any address until the %u s have passed",
                 a->max_user_failures, log_field(user, user_log), a->failure_window,
                 log_field(addr, addr_log), a->failure_window);
}

static int token_make(struct auth *a, const char *user, int64_t now, const char *bind,
                      char **token);

int auth_login(struct auth *a, const char *user, const char *password, const char *client_addr,
               char **token, unsigned *retry_after)
{
    if (!a || !token)
        return -EINVAL;
    *token = NULL;
    unsigned wait = 0;
    if (retry_after)
        *retry_after = 0;
    const char *addr = client_addr && client_addr[0] ? client_addr : "unknown";
    const char *name = user ? user : "";
    bool usable = name[0] && password && password[0];

    struct login_limit l;
    if (limit_begin(a, addr, name, &l, &wait) < 0) {
        if (retry_after)
            *retry_after = wait;
        return -EAGAIN;
    }

    char bind[AUTH_BIND_TEXT];
    bool ok = users_verify(a, usable ? user : "", usable ? password : "", bind);
    ok = ok && usable;
    bool pam = false;
    if (!ok && usable && a->pam_service)
        ok = pam = pam_verify(a, user, password, addr);

    int r = ok ? token_make(a, user, (int64_t)time(NULL), pam ? NULL : bind, token) : -EACCES;
    limit_end(a, &l, addr, name, !ok);
    if (!ok) {
        char user_log[LOG_FIELD_SIZE], addr_log[LOG_FIELD_SIZE];
        log_warn("login failed for user '%s' from %s", log_field(user, user_log),
                 log_field(addr, addr_log));
    }
    return r;
}

/* A token for user: with its pwh bind (users file), or marked as a PAM login (bind NULL). */
static int token_make(struct auth *a, const char *user, int64_t now, const char *bind, char **token)
{
    jwt_t *jwt = NULL;
    unsigned char jti_raw[AUTH_JTI_BYTES];
    char jti[2 * AUTH_JTI_BYTES + 1];
    int r;

    if (!a || !token || !user || !user[0])
        return -EINVAL;
    *token = NULL;
    if (now < 0 || now > (int64_t)LONG_MAX - (int64_t)a->token_ttl)
        return -EOVERFLOW;
    if (RAND_bytes(jti_raw, sizeof(jti_raw)) != 1)
        return -EIO;
    base64url(jti_raw, sizeof(jti_raw), jti);

    r = jwt_new(&jwt);
    if (r)
        return -r;
    r = jwt_add_grant(jwt, "iss", AUTH_ISSUER);
    if (!r)
        r = jwt_add_grant(jwt, "sub", user);
    if (!r)
        r = jwt_add_grant_int(jwt, "iat", (long)now);
    if (!r)
        r = jwt_add_grant_int(jwt, "exp", (long)(now + (int64_t)a->token_ttl));
    if (!r)
        r = jwt_add_grant(jwt, "jti", jti);
    if (!r)
        r = bind ? jwt_add_grant(jwt, "pwh", bind) : jwt_add_grant(jwt, "auth", AUTH_PAM_SOURCE);
    if (!r)
        r = jwt_set_alg(jwt, JWT_ALG_HS256, a->key, (int)a->key_len);
    if (!r) {
        errno = 0;
        *token = jwt_encode_str(jwt); /* malloc'd by libjwt 1.x */
        if (!*token)
            r = errno ? errno : ENOMEM;
    }
    jwt_free(jwt);
    return -r;
}

int auth_token_issue(struct auth *a, const char *user, int64_t now, char **token)
{
    char bind[AUTH_BIND_TEXT];
    if (!a || !token || !user || !user[0])
        return -EINVAL;
    *token = NULL;
    pthread_mutex_lock(&a->users_lock);
    const struct auth_user *u = users_find(&a->users, user);
    bool known = u != NULL;
    if (known)
        memcpy(bind, u->bind, sizeof(bind));
    pthread_mutex_unlock(&a->users_lock);
    return known ? token_make(a, user, now, bind, token) : -ENOENT;
}

/* Checks the HS256 signature of a compact JWS "header.payload.signature" in constant time. */
static bool signature_valid(struct auth *a, const char *token, size_t len)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    char b64[2 * EVP_MAX_MD_SIZE];

    const char *dot = strrchr(token, '.');
    if (!dot)
        return false;
    size_t signed_len = (size_t)(dot - token), sig_len = len - signed_len - 1;
    if (!HMAC(EVP_sha256(), a->key, (int)a->key_len, (const unsigned char *)token, signed_len, mac,
              &mac_len))
        return false;
    int n = EVP_EncodeBlock((unsigned char *)b64, mac, (int)mac_len);
    /* base64 to base64url without padding */
    while (n > 0 && b64[n - 1] == '=')
        n--;
    for (int i = 0; i < n; i++)
        b64[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i];
    bool ok = sig_len == (size_t)n && CRYPTO_memcmp(b64, dot + 1, sig_len) == 0;
    OPENSSL_cleanse(mac, sizeof(mac));
    return ok;
}

/* FNV-1a over the token, started from a random seed. */
static size_t cache_slot(const struct auth *a, const char *token, size_t len)
{
    uint64_t h = a->cache_seed ^ 14695981039346656037ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)token[i];
        h *= 1099511628211ull;
    }
    return (size_t)(h ^ (h >> 32)) % AUTH_CACHE_SLOTS;
}

/* 1 and *user (malloc'd), *role when token is a verified, unexpired token of the current
 * generation; 0 when it is not cached; -ENOMEM. */
static int cache_lookup(struct auth *a, const char *token, size_t len, char **user,
                        enum auth_role *role)
{
    size_t i = cache_slot(a, token, len);
    long now = (long)time(NULL);
    uint64_t gen = atomic_load(&a->gen);
    int r = 0;
    pthread_mutex_lock(&a->cache_lock);
    struct token_slot *t = &a->cache[i];
    if (t->token && t->len == len && CRYPTO_memcmp(t->token, token, len) == 0) {
        if (t->exp > now && t->gen == gen) {
            *user = strdup(t->user);
            *role = t->role;
            r = *user ? 1 : -ENOMEM;
        } else { /* expired or checked before a change: forget it; the full check decides */
            free(t->token);
            free(t->user);
            *t = (struct token_slot){0};
        }
    }
    pthread_mutex_unlock(&a->cache_lock);
    return r;
}

/* Remember a token that passed the full check (best effort: no memory, no entry). */
static void cache_store(struct auth *a, const char *token, size_t len, const char *user,
                        enum auth_role role, long exp, uint64_t gen)
{
    struct token_slot n = {.token = strndup(token, len),
                           .len = len,
                           .user = strdup(user),
                           .role = role,
                           .exp = exp,
                           .gen = gen};
    if (!n.token || !n.user) {
        free(n.token);
        free(n.user);
        return;
    }
    size_t i = cache_slot(a, token, len);
    pthread_mutex_lock(&a->cache_lock);
    struct token_slot old = a->cache[i];
    a->cache[i] = n;
    pthread_mutex_unlock(&a->cache_lock);
    free(old.token);
    free(old.user);
}

static void token_id(const char *token, size_t len, unsigned char id[SHA256_DIGEST_LENGTH])
{
    SHA256((const unsigned char *)token, len, id);
}

/* Whether the token with this id was revoked; forgets revocations of expired tokens. */
static bool revoked_has(struct auth *a, const unsigned char id[SHA256_DIGEST_LENGTH])
{
    int64_t now = (int64_t)time(NULL);
    bool found = false;
    pthread_mutex_lock(&a->revoked_lock);
    for (size_t i = 0; i < a->revoked.len;) {
        struct revoked *rv = &a->revoked.ptr[i];
        if (rv->exp <= now) { /* the token is refused as expired anyway */
            *rv = a->revoked.ptr[--a->revoked.len];
            continue;
        }
        if (CRYPTO_memcmp(rv->id, id, SHA256_DIGEST_LENGTH) == 0)
            found = true;
        i++;
    }
    pthread_mutex_unlock(&a->revoked_lock);
    return found;
}

/* Splits "Bearer <token>" and checks the token's shape: the token and its length, or NULL. */
static const char *bearer_token(const char *authorization, size_t *len)
{
    static const char scheme[] = "Bearer ";
    static const char token_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                      "0123456789-_.";
    if (!authorization || strncmp(authorization, scheme, sizeof(scheme) - 1) != 0)
        return NULL;
    const char *token = authorization + sizeof(scheme) - 1;
    *len = strlen(token);
    if (*len == 0 || *len > AUTH_TOKEN_MAX || strspn(token, token_chars) != *len)
        return NULL;
    const char *dot1 = strchr(token, '.');
    const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    if (!dot1 || !dot2 || strchr(dot2 + 1, '.') || dot1 == token || dot2 == dot1 + 1)
        return NULL;
    return token;
}

/* The full check of a token's signature and claims, and of its user against the current users
 * file: 0, *user (malloc'd), *role and *exp, or -EACCES / -ENOMEM. */
static int token_verify(struct auth *a, const char *token, size_t len, char **user,
                        enum auth_role *role, long *exp)
{
    jwt_t *jwt = NULL;
    int r = -EACCES;

    if (!signature_valid(a, token, len))
        return -EACCES;
    if (jwt_decode(&jwt, token, a->key, (int)a->key_len) != 0 || !jwt)
        goto out;
    if (jwt_get_alg(jwt) != JWT_ALG_HS256)
        goto out;
    errno = 0;
    *exp = jwt_get_grant_int(jwt, "exp"); /* 0 for a non-integer value */
    if (errno || *exp <= (long)time(NULL))
        goto out;
    const char *iss = jwt_get_grant(jwt, "iss");
    if (!iss || strcmp(iss, AUTH_ISSUER) != 0)
        goto out;
    const char *sub = jwt_get_grant(jwt, "sub");
    if (!sub || !sub[0])
        goto out;
    const char *pwh = jwt_get_grant(jwt, "pwh");
    const char *source = jwt_get_grant(jwt, "auth");
    if (pwh) {
        /* Its user must still be listed with the password hash the token was issued for. */
        size_t pl = strlen(pwh);
        bool match = false;
        pthread_mutex_lock(&a->users_lock);
        const struct auth_user *u = users_find(&a->users, sub);
        if (u && strlen(u->bind) == pl && CRYPTO_memcmp(u->bind, pwh, pl) == 0) {
            match = true;
            *role = u->role;
        }
        pthread_mutex_unlock(&a->users_lock);
        if (!match)
            goto out;
    } else if (source && strcmp(source, AUTH_PAM_SOURCE) == 0 && a->pam_service) {
        *role = a->pam_role;
    } else {
        goto out; /* not issued by this version, or PAM no longer configured */
    }
    unsigned char id[SHA256_DIGEST_LENGTH];
    token_id(token, len, id);
    if (revoked_has(a, id))
        goto out;
    *user = strdup(sub);
    r = *user ? 0 : -ENOMEM;
out:
    jwt_free(jwt);
    return r;
}

int auth_check_bearer(struct auth *a, const char *authorization, char **user, enum auth_role *role)
{
    enum auth_role role_any;
    size_t len = 0;
    long exp = 0;

    if (!a || !user)
        return -EINVAL;
    *user = NULL;
    if (!role)
        role = &role_any;
    const char *token = bearer_token(authorization, &len);
    if (!token)
        return -EACCES;
    int r = cache_lookup(a, token, len, user, role);
    if (r != 0)
        return r > 0 ? 0 : r;
    /* The generation is read before the check: a reload or revocation that the check may have
     * missed has bumped it by the time the entry is stored, so the entry is never used. */
    uint64_t gen = atomic_load(&a->gen);
    r = token_verify(a, token, len, user, role, &exp);
    if (r == 0)
        cache_store(a, token, len, *user, *role, exp, gen);
    return r;
}

int auth_revoke(struct auth *a, const char *authorization)
{
    enum auth_role role;
    char *user = NULL;
    size_t len = 0;
    long exp = 0;

    if (!a)
        return -EINVAL;
    const char *token = bearer_token(authorization, &len);
    if (!token)
        return -EACCES;
    int r = token_verify(a, token, len, &user, &role, &exp);
    free(user);
    if (r < 0)
        return r;

    struct revoked rv = {.exp = exp};
    token_id(token, len, rv.id);
    (void)revoked_has(a, rv.id); /* drops the expired entries */
    pthread_mutex_lock(&a->revoked_lock);
    bool full = a->revoked.len >= AUTH_REVOKED_MAX;
    pthread_mutex_unlock(&a->revoked_lock);
    if (full) {
        log_warn("logout refused: %d revoked tokens are still unexpired", AUTH_REVOKED_MAX);
        return -ENOSPC;
    }
    if (a->catalog) {
        char hex[2 * SHA256_DIGEST_LENGTH + 1];
        hex_encode(rv.id, sizeof(rv.id), hex);
        r = catalog_token_revoke(a->catalog, hex, (int64_t)exp, (int64_t)time(NULL));
        if (r < 0)
            return r;
    }
    pthread_mutex_lock(&a->revoked_lock);
    r = revoked_list_append(&a->revoked, rv);
    pthread_mutex_unlock(&a->revoked_lock);
    if (r < 0)
        return r;
    atomic_fetch_add(&a->gen, 1); /* after the append: see auth_check_bearer */
    return 0;
}
