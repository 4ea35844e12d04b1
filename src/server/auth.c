/* Authentication of API users: passwords checked against a users file of crypt(3) hashes and,
 * when configured, PAM; HS256 JWT bearer tokens issued at login and checked on every request; a
 * per-address limit on failed logins.  Everything here may be called from many threads at once.
 *
 * Users file: one "name:HASH" per line, '#' comments and blank lines ignored.  HASH is any hash
 * crypt(3) understands (yescrypt "$y$", sha512crypt "$6$", ...).  Lines without ':', with an empty
 * name or hash, or with a locked hash (starting with '!' or '*') are skipped and logged; for a
 * name listed twice the first line counts.  PAM is asked only when the users file did not accept
 * the password (unknown user or wrong password).
 *
 * JWT secret file: the HMAC-SHA256 key is the file's content without its trailing line end, and
 * must be at least 32 bytes long and not accessible by group or others.  When the file is missing
 * it is created with mode 0600 holding 32 random bytes (RAND_bytes) written as 64 lower-case hex
 * digits and a newline; the key is then that hex text.  The new file is written under a temporary
 * name (O_CREAT|O_EXCL) and linked into place, so nobody ever reads a half-written secret and two
 * daemons starting together agree on one secret.
 *
 * Tokens carry sub (the user), iss "vmexportd", iat and exp = iat + token_ttl (3600 when the
 * configuration says 0; max_failures and failure_window default to 5 and 60).  A bearer token
 * is accepted only with alg HS256, a valid signature (checked here in constant time, then again
 * by libjwt), exp in the future, the right issuer and a non-empty subject.
 *
 * Verified tokens are remembered in a small cache (AUTH_CACHE_SLOTS entries) keyed by the exact
 * token text, so that a client sending the same token on every request costs one hash and one
 * constant-time comparison instead of two HMACs and a JSON parse.  An entry holds the token's exp
 * and is used only while exp is in the future; a token that is not byte for byte a verified one
 * gets the full check.  The secret never changes while the daemon runs, so an entry cannot
 * outlive the validity of its token.
 *
 * Failures are not told apart: unknown users cost one crypt(3) against a real hash like known
 * ones, and every failure is -EACCES.  Each address may fail max_failures times within
 * failure_window seconds (counted from its first failure); after that, and until the window has
 * passed, its logins get -EAGAIN without any password check.  Logins still in progress count
 * against the limit, so concurrent guesses cannot overshoot it.  Addresses are tracked in a fixed
 * table of AUTH_LIMIT_SLOTS entries; when it is full, the least recently used entry is dropped.
 */
#include "auth.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <jwt.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
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
#include <security/pam_appl.h>

#include "core/cleanup.h"
#include "core/log.h"
#include "core/vector.h"

#define AUTH_ISSUER               "vmexportd"
#define AUTH_SECRET_MIN           32   /* bytes of HMAC key at least */
#define AUTH_SECRET_RANDOM        32   /* random bytes in a generated secret */
#define AUTH_SECRET_MAX           4096 /* larger secret files are refused */
#define AUTH_DEFAULT_TTL          3600
#define AUTH_DEFAULT_MAX_FAILURES 5
#define AUTH_DEFAULT_WINDOW       60
#define AUTH_LIMIT_SLOTS          256
#define AUTH_ADDR_MAX             64   /* longer addresses are compared by this prefix */
#define AUTH_TOKEN_MAX            8192 /* longer bearer tokens are refused unparsed */
#define AUTH_LOG_FIELD_MAX        64   /* characters of a user name or address in a log line */
#define AUTH_CACHE_SLOTS          64   /* verified tokens remembered (direct-mapped) */

/* Hash that unknown users are checked against when the users file is empty: yescrypt with the
 * default cost, of a password nobody knows (the result is thrown away anyway). */
static const char dummy_hash[] =
    "$y$j9T$37NrgLCo.Q6v6.bSSmV7C1$OLx/HoWP9/myWk.4qvRDiXUroERskZjrMkTMsrqpnM6";

struct auth_user {
    char *name;
    char *hash;
};
DEFINE_VECTOR_TYPE(auth_user_list, struct auth_user);

/* Failed logins of one client address. */
struct failure_slot {
    char addr[AUTH_ADDR_MAX]; /* "": slot free */
    unsigned failures;        /* within the window that began at window_start */
    unsigned pending;         /* logins from addr being checked right now */
    int64_t window_start;     /* ms, monotonic clock */
    int64_t last_used;        /* ms, for eviction */
};

/* A token that passed the full check. */
struct token_slot {
    char *token; /* exact text after "Bearer "; NULL: slot free */
    size_t len;
    char *user; /* its sub claim */
    long exp;   /* its exp claim, Unix time */
};

struct auth {
    char *users_file;  /* NULL: no users file */
    char *pam_service; /* NULL: no PAM */
    unsigned token_ttl, max_failures, failure_window;
    unsigned char *key;
    size_t key_len;

    pthread_mutex_t users_lock; /* guards users */
    auth_user_list users;

    pthread_mutex_t limit_lock; /* guards slots */
    struct failure_slot slots[AUTH_LIMIT_SLOTS];

    pthread_mutex_t cache_lock; /* guards cache */
    uint64_t cache_seed;        /* random: slot choice cannot be steered from outside */
    struct token_slot cache[AUTH_CACHE_SLOTS];
};

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
    static const char hex[] = "0123456789abcdef";
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
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 0xf];
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
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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

/* Adds one line of a users file to users, or explains on the log why it is skipped. */
static int users_parse_line(const char *path, unsigned lineno, char *line, auth_user_list *users)
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
    const char *name = line, *hash = colon + 1;
    if (*name == '\0') {
        log_warn("%s:%u: empty user name, line ignored", path, lineno);
        return 0;
    }
    if (*hash == '\0') {
        log_warn("%s:%u: empty password hash for user '%s', line ignored", path, lineno, name);
        return 0;
    }
    if (*hash == '!' || *hash == '*') {
        log_info("%s:%u: account '%s' is locked, line ignored", path, lineno, name);
        return 0;
    }
    if (strlen(hash) >= CRYPT_OUTPUT_SIZE || strpbrk(hash, " \t:")) {
        log_warn("%s:%u: malformed password hash for user '%s', line ignored", path, lineno, name);
        return 0;
    }
    if (users_find(users, name)) {
        log_warn("%s:%u: user '%s' listed again, line ignored", path, lineno, name);
        return 0;
    }

    struct auth_user u = {.name = strdup(name), .hash = strdup(hash)};
    int r = u.name && u.hash ? auth_user_list_append(users, u) : -ENOMEM;
    if (r < 0) {
        free(u.name);
        free(u.hash);
    }
    return r;
}

static int users_load(const char *path, auth_user_list *out, char *err, size_t errlen)
{
    auth_user_list users = VECTOR_INIT;
    CLEANUP_FREE char *line = NULL;
    size_t cap = 0;
    unsigned lineno = 0;
    int r = 0;

    FILE *f = fopen(path, "re");
    if (!f) {
        r = -errno;
        err_set(err, errlen, "%s: cannot open users file: %s", path, strerror(-r));
        return r;
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
        r = users_parse_line(path, lineno, line, &users);
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
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[AUTH_SECRET_RANDOM];
    char text[2 * AUTH_SECRET_RANDOM + 1];
    int r = 0;

    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        err_set(err, errlen, "%s: cannot generate a JWT secret: no random bytes", path);
        return -EIO;
    }
    for (size_t i = 0; i < sizeof(raw); i++) {
        text[2 * i] = hex[raw[i] >> 4];
        text[2 * i + 1] = hex[raw[i] & 0xf];
    }
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
    r = pthread_mutex_init(&a->users_lock, NULL);
    if (r) {
        free(a);
        return -r;
    }
    r = pthread_mutex_init(&a->limit_lock, NULL);
    if (r) {
        pthread_mutex_destroy(&a->users_lock);
        free(a);
        return -r;
    }
    r = pthread_mutex_init(&a->cache_lock, NULL);
    if (r) {
        pthread_mutex_destroy(&a->users_lock);
        pthread_mutex_destroy(&a->limit_lock);
        free(a);
        return -r;
    }
    if (RAND_bytes((unsigned char *)&a->cache_seed, sizeof(a->cache_seed)) != 1) {
        err_set(err, errlen, "no random bytes for the token cache");
        r = -EIO;
        goto fail;
    }
    a->token_ttl = cfg->token_ttl ? cfg->token_ttl : AUTH_DEFAULT_TTL;
    a->max_failures = cfg->max_failures ? cfg->max_failures : AUTH_DEFAULT_MAX_FAILURES;
    a->failure_window = cfg->failure_window ? cfg->failure_window : AUTH_DEFAULT_WINDOW;

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
        r = users_load(a->users_file, &a->users, err, errlen);
        if (r < 0)
            goto fail;
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
    pthread_mutex_destroy(&a->cache_lock);
    free(a);
}

int auth_reload(struct auth *a)
{
    char err[512];
    auth_user_list users = VECTOR_INIT, old;

    if (!a->users_file)
        return 0;
    int r = users_load(a->users_file, &users, err, sizeof(err));
    if (r < 0) {
        log_error("%s; keeping the previous users", err);
        return r;
    }
    pthread_mutex_lock(&a->users_lock);
    old = a->users;
    a->users = users;
    pthread_mutex_unlock(&a->users_lock);
    users_free(&old);
    return 0;
}

/* Checks a password against the users file.  Runs crypt(3) exactly once whether or not the user
 * is known, so both cases take about the same time. */
static bool users_verify(struct auth *a, const char *user, const char *password)
{
    char hash[CRYPT_OUTPUT_SIZE];
    bool known = false;

    pthread_mutex_lock(&a->users_lock);
    const struct auth_user *u = users_find(&a->users, user);
    if (u)
        known = true;
    else if (a->users.len > 0)
        u = &a->users.ptr[0]; /* a real hash of this file: the same algorithm and cost */
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

/* The slot of addr, or NULL; called with limit_lock held. */
static struct failure_slot *limit_find(struct auth *a, const char *addr)
{
    for (size_t i = 0; i < AUTH_LIMIT_SLOTS; i++)
        if (a->slots[i].addr[0] && strncmp(a->slots[i].addr, addr, AUTH_ADDR_MAX - 1) == 0)
            return &a->slots[i];
    return NULL;
}

/* Starts a login attempt from addr: -EAGAIN when it has used up its failures. */
static int limit_begin(struct auth *a, const char *addr)
{
    int64_t now = monotonic_ms(), window = (int64_t)a->failure_window * 1000;
    int r = 0;

    pthread_mutex_lock(&a->limit_lock);
    struct failure_slot *s = limit_find(a, addr);
    if (s && s->failures > 0 && now - s->window_start >= window)
        s->failures = 0;
    if (s && s->failures + s->pending >= a->max_failures) {
        r = -EAGAIN;
        goto out;
    }
    if (!s) {
        /* A free slot, else the least recently used one, preferring those not in use. */
        for (size_t i = 0; i < AUTH_LIMIT_SLOTS; i++) {
            struct failure_slot *c = &a->slots[i];
            if (!c->addr[0]) {
                s = c;
                break;
            }
            if (!s || (c->pending == 0 && s->pending > 0) ||
                ((c->pending == 0) == (s->pending == 0) && c->last_used < s->last_used))
                s = c;
        }
        memset(s, 0, sizeof(*s));
        snprintf(s->addr, sizeof(s->addr), "%s", addr);
    }
    s->pending++;
    s->last_used = now;
out:
    pthread_mutex_unlock(&a->limit_lock);
    return r;
}

/* Ends a login attempt started by limit_begin(). */
static void limit_end(struct auth *a, const char *addr, bool failed)
{
    int64_t now = monotonic_ms(), window = (int64_t)a->failure_window * 1000;
    bool blocked = false;

    pthread_mutex_lock(&a->limit_lock);
    struct failure_slot *s = limit_find(a, addr);
    if (s) {
        if (s->pending > 0)
            s->pending--;
        if (failed) {
            if (s->failures == 0 || now - s->window_start >= window) {
                s->failures = 0;
                s->window_start = now;
            }
            s->failures++;
            blocked = s->failures == a->max_failures;
        } else {
            s->failures = 0;
        }
        s->last_used = now;
        if (s->failures == 0 && s->pending == 0)
            s->addr[0] = '\0';
    }
    pthread_mutex_unlock(&a->limit_lock);

    if (blocked) {
        char addr_log[LOG_FIELD_SIZE];
        log_warn("%u failed logins from %s, refusing its logins for %u s", a->max_failures,
                 log_field(addr, addr_log), a->failure_window);
    }
}

int auth_login(struct auth *a, const char *user, const char *password, const char *client_addr,
               char **token)
{
    if (!a || !token)
        return -EINVAL;
    *token = NULL;
    const char *addr = client_addr && client_addr[0] ? client_addr : "unknown";

    if (limit_begin(a, addr) < 0)
        return -EAGAIN;

    bool usable = user && user[0] && password && password[0];
    bool ok = users_verify(a, usable ? user : "", usable ? password : "");
    ok = ok && usable;
    if (!ok && usable && a->pam_service)
        ok = pam_verify(a, user, password, addr);

    int r = ok ? auth_token_issue(a, user, (int64_t)time(NULL), token) : -EACCES;
    limit_end(a, addr, !ok);
    if (!ok) {
        char user_log[LOG_FIELD_SIZE], addr_log[LOG_FIELD_SIZE];
        log_warn("login failed for user '%s' from %s", log_field(user, user_log),
                 log_field(addr, addr_log));
    }
    return r;
}

int auth_token_issue(struct auth *a, const char *user, int64_t now, char **token)
{
    jwt_t *jwt = NULL;
    int r;

    if (!a || !token || !user || !user[0])
        return -EINVAL;
    *token = NULL;
    if (now < 0 || now > (int64_t)LONG_MAX - (int64_t)a->token_ttl)
        return -EOVERFLOW;

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

/* 1 and *user (malloc'd) when token is a verified, unexpired token; 0 when it is not cached;
 * -ENOMEM. */
static int cache_lookup(struct auth *a, const char *token, size_t len, char **user)
{
    size_t i = cache_slot(a, token, len);
    long now = (long)time(NULL);
    int r = 0;
    pthread_mutex_lock(&a->cache_lock);
    struct token_slot *t = &a->cache[i];
    if (t->token && t->len == len && CRYPTO_memcmp(t->token, token, len) == 0) {
        if (t->exp > now) {
            *user = strdup(t->user);
            r = *user ? 1 : -ENOMEM;
        } else { /* expired: forget it; the full check refuses it */
            free(t->token);
            free(t->user);
            *t = (struct token_slot){0};
        }
    }
    pthread_mutex_unlock(&a->cache_lock);
    return r;
}

/* Remember a token that passed the full check (best effort: no memory, no entry). */
static void cache_store(struct auth *a, const char *token, size_t len, const char *user, long exp)
{
    struct token_slot n = {
        .token = strndup(token, len), .len = len, .user = strdup(user), .exp = exp};
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

int auth_check_bearer(struct auth *a, const char *authorization, char **user)
{
    static const char scheme[] = "Bearer ";
    static const char token_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                      "0123456789-_.";
    jwt_t *jwt = NULL;
    int r = -EACCES;

    if (!a || !user)
        return -EINVAL;
    *user = NULL;
    if (!authorization || strncmp(authorization, scheme, sizeof(scheme) - 1) != 0)
        return -EACCES;
    const char *token = authorization + sizeof(scheme) - 1;
    size_t len = strlen(token);
    if (len == 0 || len > AUTH_TOKEN_MAX || strspn(token, token_chars) != len)
        return -EACCES;
    const char *dot1 = strchr(token, '.');
    const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    if (!dot1 || !dot2 || strchr(dot2 + 1, '.') || dot1 == token || dot2 == dot1 + 1)
        return -EACCES;
    r = cache_lookup(a, token, len, user);
    if (r != 0)
        return r > 0 ? 0 : r;
    r = -EACCES;
    if (!signature_valid(a, token, len))
        return -EACCES;

    if (jwt_decode(&jwt, token, a->key, (int)a->key_len) != 0 || !jwt)
        goto out;
    if (jwt_get_alg(jwt) != JWT_ALG_HS256)
        goto out;
    errno = 0;
    long exp = jwt_get_grant_int(jwt, "exp"); /* 0 for a non-integer value */
    if (errno || exp <= (long)time(NULL))
        goto out;
    const char *iss = jwt_get_grant(jwt, "iss");
    if (!iss || strcmp(iss, AUTH_ISSUER) != 0)
        goto out;
    const char *sub = jwt_get_grant(jwt, "sub");
    if (!sub || !sub[0])
        goto out;
    *user = strdup(sub);
    r = *user ? 0 : -ENOMEM;
    if (r == 0)
        cache_store(a, token, len, sub, exp);
out:
    jwt_free(jwt);
    return r;
}
