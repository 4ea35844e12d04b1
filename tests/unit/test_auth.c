/* Unit tests for authentication (src/server/auth.c): logins against a users file of yescrypt and
 * sha512crypt hashes, the failed-login limit per address, JWT issue and verification (tampered,
 * foreign, expired, alg "none" and other forged tokens, wrong Authorization schemes), the JWT
 * secret file (creation, permissions, length), reloading, PAM fallback and concurrent use.
 *
 * Every test works in its own temporary directory, removed by the teardown.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <crypt.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jwt.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "catalog/catalog.h"
#include "core/log.h"
#include "server/auth.h"

#define ALICE_PW "correct horse battery staple"
#define BOB_PW   "Tr0ub4dor&3"
#define CAROL_PW "carol's password"
#define LOCK_PW  "locked-password"

struct fixture {
    char dir[64];
    char users[128];
    char secret[128];
    char alice_hash[CRYPT_OUTPUT_SIZE]; /* $6$ */
    char bob_hash[CRYPT_OUTPUT_SIZE];   /* $y$ */
    char carol_hash[CRYPT_OUTPUT_SIZE]; /* $y$ */
    char lock_hash[CRYPT_OUTPUT_SIZE];  /* $6$ of LOCK_PW */
    struct auth *a;
};

/* crypt(3) hash of password with a fresh setting for prefix ("$6$", "$y$"). */
static void hash_make(const char *prefix, const char *password, char *out)
{
    char setting[CRYPT_GENSALT_OUTPUT_SIZE];
    struct crypt_data *data = calloc(1, sizeof(*data));
    assert_non_null(data);
    assert_non_null(crypt_gensalt_rn(prefix, 0, NULL, 0, setting, sizeof(setting)));
    assert_memory_equal(setting, prefix, strlen(prefix));
    const char *h = crypt_r(password, setting, data);
    assert_non_null(h);
    assert_memory_equal(h, prefix, strlen(prefix));
    snprintf(out, CRYPT_OUTPUT_SIZE, "%s", h);
    free(data);
}

static void file_write(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    assert_int_equal(fchmod(fd, mode), 0);
    assert_int_equal(close(fd), 0);
}

/* Whole content of a (small) file, malloc'd. */
static char *file_read(const char *path)
{
    FILE *f = fopen(path, "re");
    assert_non_null(f);
    char *buf = calloc(1, 65536);
    assert_non_null(buf);
    size_t n = fread(buf, 1, 65535, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

static void users_write(struct fixture *f, const char *extra)
{
    char text[8192];
    snprintf(text, sizeof(text),
             "# vmexport users\n"
             "\n"
             "   \t\n"
             "alice:%s\n"
             "bob:%s\n"
             "  # indented comment\n"
             "carol:%s  \r\n"
             "locked:!%s\n"
             "star:*\n"
             "empty:\n"
             "nocolon\n"
             ":%s\n"
             "alice:%s\n"
             "%s",
             f->alice_hash, f->bob_hash, f->carol_hash, f->lock_hash, f->alice_hash, f->bob_hash,
             extra);
    file_write(f->users, text, 0600);
}

static void config_init(struct fixture *f, struct auth_config *cfg)
{
    *cfg = (struct auth_config){
        .users_file = f->users,
        .pam_service = NULL,
        .token_ttl = 3600,
        .jwt_secret_file = f->secret,
        .max_failures = 3,
        .failure_window = 60,
    };
}

static int fixture_setup(void **state)
{
    static struct fixture hashes; /* hashing is slow: done once */
    static bool have_hashes;
    struct fixture *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    if (!have_hashes) {
        hash_make("$6$", ALICE_PW, hashes.alice_hash);
        hash_make("$y$", BOB_PW, hashes.bob_hash);
        hash_make("$y$", CAROL_PW, hashes.carol_hash);
        hash_make("$6$", LOCK_PW, hashes.lock_hash);
        have_hashes = true;
    }
    memcpy(f->alice_hash, hashes.alice_hash, sizeof(f->alice_hash));
    memcpy(f->bob_hash, hashes.bob_hash, sizeof(f->bob_hash));
    memcpy(f->carol_hash, hashes.carol_hash, sizeof(f->carol_hash));
    memcpy(f->lock_hash, hashes.lock_hash, sizeof(f->lock_hash));

    snprintf(f->dir, sizeof(f->dir), "/tmp/test_auth.XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->users, sizeof(f->users), "%s/users", f->dir);
    snprintf(f->secret, sizeof(f->secret), "%s/jwt.secret", f->dir);
    users_write(f, "");
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    struct fixture *f = *state;
    auth_close(f->a);
    DIR *d = opendir(f->dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char path[512];
            snprintf(path, sizeof(path), "%s/%s", f->dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Opens f->a with the fixture's default configuration. */
static void auth_open_default(struct fixture *f)
{
    struct auth_config cfg;
    char err[256];
    config_init(f, &cfg);
    int r = auth_open(&f->a, &cfg, err, sizeof(err));
    if (r < 0)
        print_message("# auth_open: %d %s\n", r, err);
    assert_int_equal(r, 0);
    assert_non_null(f->a);
}

/* auth_login must give want; on success the token must name user. */
#define assert_login(a, user, pw, addr, want)                                                      \
    assert_login_at(__FILE__, __LINE__, (a), (user), (pw), (addr), (want))
static void assert_login_at(const char *file, int line, struct auth *a, const char *user,
                            const char *pw, const char *addr, int want)
{
    char *token = (char *)"garbage";
    int r = auth_login(a, user, pw, addr, &token, NULL);
    if (r != want) {
        print_message("# login of '%s' from %s: %d, want %d\n", user ? user : "(null)",
                      addr ? addr : "(null)", r, want);
        free(r == 0 ? token : NULL);
        _fail(file, line);
    }
    if (r < 0) {
        if (token != NULL)
            _fail(file, line);
        return;
    }
    if (!token)
        _fail(file, line);
    char header[8192], *who = NULL;
    snprintf(header, sizeof(header), "Bearer %s", token);
    free(token);
    if (auth_check_bearer(a, header, &who, NULL) != 0 || !who || strcmp(who, user) != 0) {
        print_message("# token of '%s' did not verify\n", user);
        free(who);
        _fail(file, line);
    }
    free(who);
}

/* auth_check_bearer must refuse the header with -EACCES and leave user NULL. */
#define assert_bearer_refused(a, header) assert_bearer_refused_at(__FILE__, __LINE__, (a), (header))
static void assert_bearer_refused_at(const char *file, int line, struct auth *a, const char *header)
{
    char *who = (char *)"garbage";
    int r = auth_check_bearer(a, header, &who, NULL);
    if (r != -EACCES || who != NULL) {
        print_message("# bearer \"%s\": %d, want -EACCES\n", header ? header : "(null)", r);
        free(r == 0 ? who : NULL);
        _fail(file, line);
    }
}

/* auth_check_bearer on "Bearer <token>" must give 0 and user. */
static void assert_bearer_ok(struct auth *a, const char *token, const char *user)
{
    char header[8192], *who = NULL;
    snprintf(header, sizeof(header), "Bearer %s", token);
    assert_int_equal(auth_check_bearer(a, header, &who, NULL), 0);
    assert_non_null(who);
    assert_string_equal(who, user);
    free(who);
}

static char *b64url(const void *data, size_t len)
{
    char *out = malloc(4 * (len / 3 + 1) + 1);
    assert_non_null(out);
    int n = EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    for (char *p = out; *p; p++)
        *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
    return out;
}

/* "header.payload.sig" from JSON header and payload and a literal signature part. */
static char *token_craft(const char *header_json, const char *payload_json, const char *sig)
{
    char *h = b64url(header_json, strlen(header_json));
    char *p = b64url(payload_json, strlen(payload_json));
    char *t = NULL;
    assert_true(asprintf(&t, "%s.%s.%s", h, p, sig) > 0);
    free(h);
    free(p);
    return t;
}

/* The pwh claim for a user with hash under key, as documented in auth.c: base64url of the first
 * 16 bytes of HMAC-SHA256(key, "pwh\0" name "\0" hash). */
static char *pwh_of(const char *key, const char *name, const char *hash)
{
    unsigned char msg[1024], mac[EVP_MAX_MD_SIZE];
    unsigned mac_len = 0;
    size_t nl = strlen(name), hl = strlen(hash);
    assert_true(4 + nl + 1 + hl <= sizeof(msg));
    memcpy(msg, "pwh", 4);
    memcpy(msg + 4, name, nl + 1);
    memcpy(msg + 4 + nl + 1, hash, hl);
    assert_non_null(HMAC(EVP_sha256(), key, (int)strlen(key), msg, 4 + nl + 1 + hl, mac, &mac_len));
    return b64url(mac, 16);
}

/* A token signed by libjwt with alg and the given key, with the given claims (NULL or <0:
 * absent). */
static char *token_sign_pwh(jwt_alg_t alg, const char *key, const char *sub, const char *iss,
                            long exp, const char *pwh)
{
    jwt_t *j = NULL;
    assert_int_equal(jwt_new(&j), 0);
    if (pwh)
        assert_int_equal(jwt_add_grant(j, "pwh", pwh), 0);
    if (sub)
        assert_int_equal(jwt_add_grant(j, "sub", sub), 0);
    if (iss)
        assert_int_equal(jwt_add_grant(j, "iss", iss), 0);
    assert_int_equal(jwt_add_grant_int(j, "iat", (long)time(NULL)), 0);
    if (exp >= 0)
        assert_int_equal(jwt_add_grant_int(j, "exp", exp), 0);
    assert_int_equal(jwt_set_alg(j, alg, (const unsigned char *)key, (int)strlen(key)), 0);
    char *t = jwt_encode_str(j);
    assert_non_null(t);
    jwt_free(j);
    return t;
}

/* The same, without pwh. */
static char *token_sign(jwt_alg_t alg, const char *key, const char *sub, const char *iss, long exp)
{
    return token_sign_pwh(alg, key, sub, iss, exp, NULL);
}

/* The HMAC key: the secret file without its newline. */
static char *secret_key(struct fixture *f)
{
    char *k = file_read(f->secret);
    size_t len = strlen(k);
    if (len && k[len - 1] == '\n')
        k[len - 1] = '\0';
    return k;
}

static void test_login_ok(void **state)
{
    struct fixture *f = *state;
    auth_open_default(f);
    assert_login(f->a, "alice", ALICE_PW, "192.0.2.1", 0); /* $6$ */
    assert_login(f->a, "bob", BOB_PW, "192.0.2.1", 0);     /* $y$ */
    assert_login(f->a, "carol", CAROL_PW, "192.0.2.1", 0); /* CRLF and trailing blanks */
    /* No client address at all is still one address for the limit. */
    assert_login(f->a, "alice", ALICE_PW, NULL, 0);
}

static void test_login_wrong_password(void **state)
{
    struct fixture *f = *state;
    auth_open_default(f);
    assert_login(f->a, "alice", "wrong", "192.0.2.1", -EACCES);
    assert_login(f->a, "alice", BOB_PW, "192.0.2.2", -EACCES);
    assert_login(f->a, "bob", ALICE_PW, "192.0.2.3", -EACCES);
    assert_login(f->a, "alice", ALICE_PW "x", "192.0.2.4", -EACCES);
    assert_login(f->a, "alice", "", "192.0.2.5", -EACCES);
    assert_login(f->a, "alice", NULL, "192.0.2.6", -EACCES);
    assert_login(f->a, "Alice", ALICE_PW, "192.0.2.7", -EACCES);
    /* The duplicate line with bob's hash did not replace alice's. */
    assert_login(f->a, "alice", ALICE_PW, "192.0.2.8", 0);
}

static void test_login_unknown_user(void **state)
{
    struct fixture *f = *state;
    auth_open_default(f);
    assert_login(f->a, "mallory", ALICE_PW, "192.0.2.1", -EACCES);
    assert_login(f->a, "", ALICE_PW, "192.0.2.2", -EACCES);
    assert_login(f->a, NULL, ALICE_PW, "192.0.2.3", -EACCES);
    /* Lines that are comments, locked, empty or malformed give no user. */
    assert_login(f->a, "locked", LOCK_PW, "192.0.2.4", -EACCES);
    assert_login(f->a, "locked", "!" LOCK_PW, "192.0.2.5", -EACCES);
    assert_login(f->a, "star", "", "192.0.2.6", -EACCES);
    assert_login(f->a, "star", "*", "192.0.2.7", -EACCES);
    assert_login(f->a, "empty", "", "192.0.2.8", -EACCES);
    assert_login(f->a, "empty", "x", "192.0.2.9", -EACCES);
    assert_login(f->a, "nocolon", "x", "192.0.2.10", -EACCES);
    assert_login(f->a, "# vmexport users", "x", "192.0.2.11", -EACCES);
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int double_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median time of n failed logins of user (fresh address each, so the limit stays out). */
static double login_time(struct auth *a, const char *user, int n, int *addr_seq)
{
    double t[16];
    assert_true(n <= 16);
    for (int i = 0; i < n; i++) {
        char addr[32], *token = NULL;
        snprintf(addr, sizeof(addr), "198.51.100.%d", (*addr_seq)++);
        double t0 = seconds_now();
        assert_int_equal(auth_login(a, user, "not the password", addr, &token, NULL), -EACCES);
        t[i] = seconds_now() - t0;
    }
    qsort(t, (size_t)n, sizeof(t[0]), double_cmp);
    return t[n / 2];
}

static void test_login_timing(void **state)
{
    struct fixture *f = *state;
    auth_open_default(f);
    /* An unknown user costs a password hash like a known one (the first user's, alice's $6$).
     * The bounds are loose: the point is that no hashing at all would be far faster. */
    int seq = 1;
    double known = login_time(f->a, "alice", 9, &seq);
    double unknown = login_time(f->a, "nobody", 9, &seq);
    print_message("# wrong password %.2f ms, unknown user %.2f ms\n", known * 1e3, unknown * 1e3);
    assert_true(unknown > known / 4);
    assert_true(unknown < known * 4);
}

static void test_rate_limit(void **state)
{
    struct fixture *f = *state;
    auth_open_default(f); /* 3 failures per 60 s */

    assert_login(f->a, "alice", "wrong1", "203.0.113.7", -EACCES);
    assert_login(f->a, "mallory", "wrong2", "203.0.113.7", -EACCES); /* unknown users count */
    assert_login(f->a, "alice", "wrong3", "203.0.113.7", -EACCES);
    /* Now even the right password is refused, without saying whether it was right. */
    assert_login(f->a, "alice", ALICE_PW, "203.0.113.7", -EAGAIN);
    assert_login(f->a, "bob", BOB_PW, "203.0.113.7", -EAGAIN);
    assert_login(f->a, "alice", "wrong4", "203.0.113.7", -EAGAIN);

    /* Other addresses are not affected. */
    assert_login(f->a, "alice", ALICE_PW, "203.0.113.8", 0);
    assert_login(f->a, "alice", ALICE_PW, "2001:db8::1", 0);
    assert_login(f->a, "alice", "wrong", "2001:db8::1", -EACCES);
    assert_login(f->a, "alice", "wrong", "2001:db8::1", -EACCES);
    /* A success clears nothing: whoever holds one account cannot reset a count with it. */
    assert_login(f->a, "bob", BOB_PW, "2001:db8::1", 0);
    assert_login(f->a, "alice", "wrong", "2001:db8::1", -EACCES);
    assert_login(f->a, "alice", ALICE_PW, "2001:db8::1", -EAGAIN);
    /* IPv6 addresses count by their /64. */
    assert_login(f->a, "bob", BOB_PW, "2001:db8::ffff:1", -EAGAIN);
    assert_login(f->a, "bob", BOB_PW, "2001:db8:0:1::1", 0);
    /* An IPv4-mapped IPv6 address is its IPv4 address. */
    assert_login(f->a, "bob", BOB_PW, "::ffff:203.0.113.7", -EAGAIN);

    /* Bearer tokens are not subject to the login limit. */
    char *token = NULL;
    assert_int_equal(auth_token_issue(f->a, "alice", (int64_t)time(NULL), &token), 0);
    assert_bearer_ok(f->a, token, "alice");
    free(token);
    assert_login(f->a, "alice", ALICE_PW, "203.0.113.7", -EAGAIN);
}

static void test_rate_limit_defaults(void **state)
{
    struct fixture *f = *state;
    struct auth_config cfg;
    char err[256];
    config_init(f, &cfg);
    cfg.max_failures = 0; /* 5 */
    cfg.failure_window = 0;
    assert_int_equal(auth_open(&f->a, &cfg, err, sizeof(err)), 0);
    for (int i = 0; i < 5; i++)
        assert_login(f->a, "bob", "wrong", "203.0.113.9", -EACCES);
    assert_login(f->a, "bob", BOB_PW, "203.0.113.9", -EAGAIN);
    assert_login(f->a, "bob", BOB_PW, "203.0.113.10", 0);
}

static void test_rate_limit_window(void **state)
{
    struct fixture *f = *state;
    struct auth_config cfg;
    char err[256];
    config_init(f, &cfg);
    cfg.max_failures = 2;
    cfg.failure_window = 1;
    assert_int_equal(auth_open(&f->a, &cfg, err, sizeof(err)), 0);
    assert_login(f->a, "alice", "wrong", "203.0.113.1", -EACCES);
    assert_login(f->a, "alice", "wrong", "203.0.113.1", -EACCES);
    assert_login(f->a, "alice", ALICE_PW, "203.0.113.1", -EAGAIN);
    struct timespec ts = {.tv_sec = 1, .tv_nsec = 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    /* The window has passed: a fresh allowance. */
    assert_login(f->a, "alice", "wrong", "203.0.113.1", -EACCES);
    assert_login(f->a, "alice", ALICE_PW, "203.0.113.1", 0);
}

/* Failing from hundreds of other addresses cannot push a blocked address out of the tables
 * (the old fixed table of 256 addresses evicted the least recently used one). */
static void test_rate_limit_no_eviction(void **state)
{
    struct fixture *f = *state;
    struct auth_config cfg;
    char err[256];
    config_init(f, &cfg);
    cfg.max_failures = 1;
    cfg.max_user_failures = 100000; /* this test is about addresses */
    assert_int_equal(auth_open(&f->a, &cfg, err, sizeof(err)), 0);

    assert_login(f->a, "alice", "wrong", "10.0.0.1", -EACCES);
    assert_login(f->a, "alice", ALICE_PW, "10.0.0.1", -EAGAIN);
    int refused = 0;
    for (int i = 0; i < 600; i++) {
        char addr[32], *token = NULL;
        snprintf(addr, sizeof(addr), "10.1.%d.%d", i / 250, i % 250);
        int r = auth_login(f->a, "nobody", "wrong", addr, &token, NULL);
        assert_true(r == -EACCES || r == -EAGAIN); /* -EAGAIN: a bucket shared with another */
        refused += r == -EAGAIN;
    }
    print_message("# %d of 600 fresh addresses shared a full bucket\n", refused);
    assert_true(refused < 300);
    assert_login(f->a, "alice", ALICE_PW, "10.0.0.1", -EAGAIN);
}

/* Spraying one user from 300 addresses gets no more password checks than the user's limit; the
 * right password is then refused from anywhere, and the time to wait is told. */
static void test_rate_limit_per_user(void **state)
{
    struct fixture *f = *state;
    struct auth_config cfg;
    char err[256];
    config_init(f, &cfg);
    cfg.max_failures = 5;
    cfg.max_user_failures = 10;
    cfg.failure_window = 60;
    assert_int_equal(auth_open(&f->a, &cfg, err, sizeof(err)), 0);

    int checked = 0, refused = 0;
    for (int i = 0; i < 300; i++) {
        char addr[32], *token = NULL;
        unsigned wait = 12345;
        snprintf(addr, sizeof(addr), "172.16.%d.%d", i / 200, i % 200 + 1);
        int r = auth_login(f->a, "alice", "guess", addr, &token, &wait);
        assert_true(r == -EACCES || r == -EAGAIN);
        if (r == -EACCES) {
            checked++;
            assert_int_equal(wait, 0);
        } else {
            refused++;
            assert_true(wait >= 1 && wait <= 60);
        }
    }
    assert_int_equal(checked, 10);
    assert_int_equal(refused, 290);
    assert_login(f->a, "alice", ALICE_PW, "192.0.2.200", -EAGAIN);
    /* Other users are not affected. */
    assert_login(f->a, "bob", BOB_PW, "192.0.2.201", 0);

    /* Names that are not users are limited the same way. */
    for (int i = 0; i < 10; i++) {
        char addr[32];
        snprintf(addr, sizeof(addr), "172.17.0.%d", i + 1);
        assert_login(f->a, "ghost", "guess", addr, -EACCES);
    }
    assert_login(f->a, "ghost", "guess", "172.17.1.1", -EAGAIN);
}

static void test_token_verifies(void **state)
{
    struct fixture *f = *state;
    auth_open_default(f);
    char *token = NULL;
    assert_int_equal(auth_token_issue(f->a, "dave", (int64_t)time(NULL), &token), -ENOENT);
    assert_null(token);
    assert_int_equal(auth_token_issue(f->a, "alice", (int64_t)time(NULL), &token), 0);
    assert_non_null(token);
    assert_bearer_ok(f->a, token, "alice");
    free(token);

    /* Names needing JSON escapes round-trip. */
    char extra[CRYPT_OUTPUT_SIZE + 64];
    snprintf(extra, sizeof(extra), "a \"quoted\" \\ name:%s\n", f->bob_hash);
    users_write(f, extra);
    assert_int_equal(auth_reload(f->a), 0);
    assert_int_equal(auth_token_issue(f->a, "a \"quoted\" \\ name", (int64_t)time(NULL), &token),
                     0);
    assert_bearer_ok(f->a, token, "a \"quoted\" \\ name");
    free(token);

    /* The claims are the documented ones. */
    assert_int_equal(auth_token_issue(f->a, "alice", 1700000000, &token), 0);
    char *key = secret_key(f);
    jwt_t *j = NULL;
    assert_int_equal(jwt_decode(&j, token, (unsigned char *)key, (int)strlen(key)), 0);
    char *pwh = pwh_of(key, "alice", f->alice_hash);
    free(key);
    assert_int_equal(jwt_get_alg(j), JWT_ALG_HS256);
    assert_string_equal(jwt_get_grant(j, "sub"), "alice");
    assert_string_equal(jwt_get_grant(j, "iss"), "vmexportd");
    assert_int_equal(jwt_get_grant_int(j, "iat"), 1700000000);
    assert_int_equal(jwt_get_grant_int(j, "exp"), 1700000000 + 3600);
    assert_string_equal(jwt_get_grant(j, "pwh"), pwh);
    assert_int_equal(strlen(jwt_get_grant(j, "jti")), 22);
    assert_null(jwt_get_grant(j, "auth"));
    assert_null(strstr(token, f->alice_hash));
    free(pwh);
    jwt_free(j);
    free(token);

    /* Two tokens of the same second differ (jti). */
    char *t2 = NULL;
    assert_int_equal(auth_token_issue(f->a, "alice", 1700000000, &token), 0);
    assert_int_equal(auth_token_issue(f->a, "alice", 1700000000, &t2), 0);
    assert_string_not_equal(token, t2);
    free(token);
    free(t2);

    /* No token for nobody. */
    token = NULL;
    assert_int_equal(auth_token_issue(f->a, "", (int64_t)time(NULL), &token), -EINVAL);
    assert_null(token);
}

static void test_token_tampered(void **state)
{
    struct fixture *f = *state;
    auth_open_default(f);
    char *token = NULL;
    long now = (long)time(NULL);
    assert_int_equal(auth_token_issue(f->a, "alice", now, &token), 0);
    char *dot1 = strchr(token, '.'), *dot2 = strrchr(token, '.');
    char header[8192];

    /* A payload naming someone else, with the original header and signature. */
    char payload[256];
    snprintf(payload, sizeof(payload),
             "{\"exp\":%ld,\"iat\":%ld,\"iss\":\"vmexportd\",\"sub\":\"admin\"}", now + 3600, now);
    char *p = b64url(payload, strlen(payload));
    snprintf(header, sizeof(header), "Bearer %.*s.%s%s", (int)(dot1 - token), token, p, dot2);
    free(p);
    assert_bearer_refused(f->a, header);

    /* One character of the payload changed. */
    for (char *c = dot1 + 1; c < dot2; c += 7) {
        snprintf(header, sizeof(header), "Bearer %s", token);
        char *h = header + strlen("Bearer ") + (c - token);
        *h = *h == 'A' ? 'B' : 'A';
        assert_bearer_refused(f->a, header);
    }
    /* One character of the signature changed, or the signature cut or dropped. */
    snprintf(header, sizeof(header), "Bearer %s", token);
    char *last = header + strlen(header) - 2;
    *last = *last == 'A' ? 'B' : 'A';
    assert_bearer_refused(f->a, header);
    snprintf(header, sizeof(header), "Bearer %.*s", (int)strlen(token) - 1, token);
    assert_bearer_refused(f->a, header);
    snprintf(header, sizeof(header), "Bearer %.*s", (int)(dot2 - token) + 1, token);
    assert_bearer_refused(f->a, header);
    snprintf(header, sizeof(header), "Bearer %.*s", (int)(dot2 - token), token);
    assert_bearer_refused(f->a, header);
    /* Extra segments or characters. */
    snprintf(header, sizeof(header), "Bearer %s.", token);
    assert_bearer_refused(f->a, header);
    snprintf(header, sizeof(header), "Bearer %s=", token);
    assert_bearer_refused(f->a, header);

    /* The untouched token still passes. */
    assert_bearer_ok(f->a, token, "alice");
    free(token);
}

static void test_token_foreign_secret(void **state)
{
    struct fixture *f = *state;
    auth_open_default(f);

    /* A second daemon with its own secret. */
    struct auth *other = NULL;
    struct auth_config cfg;
    char err[256], other_secret[160];
    config_init(f, &cfg);
    snprintf(other_secret, sizeof(other_secret), "%s/other.secret", f->dir);
    cfg.jwt_secret_file = other_secret;
    assert_int_equal(auth_open(&other, &cfg, err, sizeof(err)), 0);

    char *mine = NULL, *theirs = NULL, header[8192];
    assert_int_equal(auth_token_issue(f->a, "alice", (int64_t)time(NULL), &mine), 0);
    assert_int_equal(auth_token_issue(other, "alice", (int64_t)time(NULL), &theirs), 0);
    assert_bearer_ok(f->a, mine, "alice");
    assert_bearer_ok(other, theirs, "alice");
    snprintf(header, sizeof(header), "Bearer %s", theirs);
    assert_bearer_refused(f->a, header);
    snprintf(header, sizeof(header), "Bearer %s", mine);
    assert_bearer_refused(other, header);

    /* A token signed by libjwt with some other key. */
    char *t = token_sign(JWT_ALG_HS256, "0123456789abcdef0123456789abcdef", "alice", "vmexportd",
                         (long)time(NULL) + 600);
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);

    free(mine);
    free(theirs);
    auth_close(other);
}

static void test_token_expired(void **state)
{
    struct fixture *f = *state;
    auth_open_default(f); /* ttl 3600 */
    char *token = NULL, header[8192];
    int64_t now = (int64_t)time(NULL);

    assert_int_equal(auth_token_issue(f->a, "alice", now - 3600 - 10, &token), 0);
    snprintf(header, sizeof(header), "Bearer %s", token);
    assert_bearer_refused(f->a, header);
    free(token);

    assert_int_equal(auth_token_issue(f->a, "alice", now - 3600 * 24 * 365, &token), 0);
    snprintf(header, sizeof(header), "Bearer %s", token);
    assert_bearer_refused(f->a, header);
    free(token);

    /* exp == now is already expired; a token near the end of its life is still good. */
    assert_int_equal(auth_token_issue(f->a, "alice", now - 3600, &token), 0);
    snprintf(header, sizeof(header), "Bearer %s", token);
    assert_bearer_refused(f->a, header);
    free(token);
    assert_int_equal(auth_token_issue(f->a, "alice", now - 3600 + 120, &token), 0);
    assert_bearer_ok(f->a, token, "alice");
    free(token);
}

/* Verified tokens are cached: a cached token stops passing when it expires, and a token that
 * differs from a cached one in any byte gets the full check. */
static void test_token_cache(void **state)
{
    struct fixture *f = *state;
    auth_open_default(f); /* ttl 3600 */
    char *token = NULL, header[8192];
    int64_t now = (int64_t)time(NULL);

    assert_int_equal(auth_token_issue(f->a, "alice", now - 3600 + 2, &token), 0);
    assert_bearer_ok(f->a, token, "alice");
    assert_bearer_ok(f->a, token, "alice"); /* from the cache */
    snprintf(header, sizeof(header), "Bearer %s", token);
    char *last = header + strlen(header) - 1;
    *last = *last == 'A' ? 'B' : 'A';
    assert_bearer_refused(f->a, header);
    snprintf(header, sizeof(header), "Bearer %.*s", (int)strlen(token) - 1, token);
    assert_bearer_refused(f->a, header);
    assert_bearer_ok(f->a, token, "alice");
    while ((int64_t)time(NULL) < now + 2) {
        struct timespec step = {0, 100 * 1000 * 1000};
        nanosleep(&step, NULL);
    }
    snprintf(header, sizeof(header), "Bearer %s", token);
    assert_bearer_refused(f->a, header);
    assert_bearer_refused(f->a, header);
    free(token);
}

static void test_token_alg_none(void **state)
{
    struct fixture *f = *state;
    auth_open_default(f);
    long now = (long)time(NULL);
    char payload[256], header[8192];
    snprintf(payload, sizeof(payload),
             "{\"exp\":%ld,\"iat\":%ld,\"iss\":\"vmexportd\",\"sub\":\"alice\"}", now + 3600, now);

    char *t = token_craft("{\"alg\":\"none\",\"typ\":\"JWT\"}", payload, "");
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);

    t = token_craft("{\"alg\":\"none\"}", payload, "");
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);

    /* "none" with a genuine HS256 signature of something else glued on. */
    char *genuine = NULL;
    assert_int_equal(auth_token_issue(f->a, "alice", now, &genuine), 0);
    t = token_craft("{\"alg\":\"none\",\"typ\":\"JWT\"}", payload, strrchr(genuine, '.') + 1);
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);
    free(genuine);

    /* No header algorithm at all, or an unknown one. */
    t = token_craft("{\"typ\":\"JWT\"}", payload, "");
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);
    t = token_craft("{\"alg\":\"HS257\",\"typ\":\"JWT\"}", payload, "abc");
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);
}

static void test_token_claims(void **state)
{
    struct fixture *f = *state;
    auth_open_default(f);
    char *key = secret_key(f);
    long now = (long)time(NULL);
    char header[8192];

    /* Signed with the real key by libjwt: accepted when the claims are right (this checks the
     * forging below is otherwise sound) ... */
    char *pwh = pwh_of(key, "alice", f->alice_hash);
    char *t = token_sign_pwh(JWT_ALG_HS256, key, "alice", "vmexportd", now + 600, pwh);
    assert_bearer_ok(f->a, t, "alice");
    free(t);

    /* ... refused without pwh, with another user's, or with a PAM claim and no PAM, */
    t = token_sign(JWT_ALG_HS256, key, "alice", "vmexportd", now + 600);
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);
    t = token_sign_pwh(JWT_ALG_HS256, key, "bob", "vmexportd", now + 600, pwh);
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);
    free(pwh);
    jwt_t *jp = NULL;
    assert_int_equal(jwt_new(&jp), 0);
    assert_int_equal(jwt_add_grants_json(jp, "{\"sub\":\"alice\",\"iss\":\"vmexportd\","
                                             "\"auth\":\"pam\",\"exp\":99999999999}"),
                     0);
    assert_int_equal(jwt_set_alg(jp, JWT_ALG_HS256, (unsigned char *)key, (int)strlen(key)), 0);
    t = jwt_encode_str(jp);
    assert_non_null(t);
    jwt_free(jp);
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);

    /* ... refused with another HMAC algorithm, even with the right key, */
    t = token_sign(JWT_ALG_HS384, key, "alice", "vmexportd", now + 600);
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);
    t = token_sign(JWT_ALG_HS512, key, "alice", "vmexportd", now + 600);
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);

    /* without exp, */
    t = token_sign(JWT_ALG_HS256, key, "alice", "vmexportd", -1);
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);

    /* from another issuer or none, */
    t = token_sign(JWT_ALG_HS256, key, "alice", "someone-else", now + 600);
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);
    t = token_sign(JWT_ALG_HS256, key, "alice", NULL, now + 600);
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);

    /* without a subject or with an empty one, */
    t = token_sign(JWT_ALG_HS256, key, NULL, "vmexportd", now + 600);
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);
    t = token_sign(JWT_ALG_HS256, key, "", "vmexportd", now + 600);
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);

    /* or with exp not an integer. */
    jwt_t *j = NULL;
    assert_int_equal(jwt_new(&j), 0);
    assert_int_equal(jwt_add_grants_json(j, "{\"sub\":\"alice\",\"iss\":\"vmexportd\","
                                            "\"exp\":\"99999999999\"}"),
                     0);
    assert_int_equal(jwt_set_alg(j, JWT_ALG_HS256, (unsigned char *)key, (int)strlen(key)), 0);
    t = jwt_encode_str(j);
    assert_non_null(t);
    jwt_free(j);
    snprintf(header, sizeof(header), "Bearer %s", t);
    assert_bearer_refused(f->a, header);
    free(t);

    free(key);
}

static void test_bearer_scheme(void **state)
{
    struct fixture *f = *state;
    auth_open_default(f);
    char *token = NULL, header[8192];
    assert_int_equal(auth_token_issue(f->a, "alice", (int64_t)time(NULL), &token), 0);
    assert_bearer_ok(f->a, token, "alice");

    static const char *const bad[] = {
        "bearer %s",  "BEARER %s",   "Bearer  %s",   "Bearer\t%s",    " Bearer %s",
        "Bearer %s ", "Bearer %s\n", "Basic %s",     "Token %s",      "%s",
        "Bearer:%s",  "Bearer=%s",   "Bearer %s %s", "Bearer \"%s\"",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        /* The formats take the token once or twice. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        snprintf(header, sizeof(header), bad[i], token, token);
#pragma GCC diagnostic pop
        assert_bearer_refused(f->a, header);
    }
    assert_bearer_refused(f->a, NULL);
    assert_bearer_refused(f->a, "");
    assert_bearer_refused(f->a, "Bearer");
    assert_bearer_refused(f->a, "Bearer ");
    assert_bearer_refused(f->a, "Bearer  ");
    assert_bearer_refused(f->a, "Basic YWxpY2U6cGFzc3dvcmQ=");
    assert_bearer_refused(f->a, "Bearer ..");
    assert_bearer_refused(f->a, "Bearer a.b.c");
    assert_bearer_refused(f->a, "Bearer not-a-jwt");
    free(token);
}

static void test_secret_created(void **state)
{
    struct fixture *f = *state;
    struct stat st;
    assert_int_equal(stat(f->secret, &st), -1);
    mode_t old_umask = umask(0); /* the mode must not depend on the umask */
    auth_open_default(f);
    umask(old_umask);

    assert_int_equal(stat(f->secret, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_size, 65);
    char *text = file_read(f->secret);
    assert_int_equal(strspn(text, "0123456789abcdef"), 64);
    assert_string_equal(text + 64, "\n");

    /* Only the secret and the users file are left in the directory. */
    int entries = 0;
    DIR *d = opendir(f->dir);
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d));)
        entries += e->d_name[0] != '.';
    closedir(d);
    assert_int_equal(entries, 2);

    /* Reopening reuses it: tokens survive a restart. */
    char *token = NULL;
    assert_int_equal(auth_token_issue(f->a, "alice", (int64_t)time(NULL), &token), 0);
    auth_close(f->a);
    f->a = NULL;
    auth_open_default(f);
    char *again = file_read(f->secret);
    assert_string_equal(text, again);
    assert_bearer_ok(f->a, token, "alice");
    free(token);
    free(text);
    free(again);

    /* Two secrets made the same way differ. */
    struct auth *other = NULL;
    struct auth_config cfg;
    char err[256], other_secret[160];
    config_init(f, &cfg);
    snprintf(other_secret, sizeof(other_secret), "%s/other.secret", f->dir);
    cfg.jwt_secret_file = other_secret;
    assert_int_equal(auth_open(&other, &cfg, err, sizeof(err)), 0);
    text = file_read(f->secret);
    again = file_read(other_secret);
    assert_string_not_equal(text, again);
    free(text);
    free(again);
    auth_close(other);
}

static void assert_open_fails(struct fixture *f, int want, const char *what)
{
    struct auth_config cfg;
    char err[512] = "";
    config_init(f, &cfg);
    static char sentinel;
    struct auth *a = (struct auth *)&sentinel; /* must be reset to NULL */
    int r = auth_open(&a, &cfg, err, sizeof(err));
    print_message("# auth_open: %d: %s\n", r, err);
    assert_int_equal(r, want);
    assert_null(a);
    assert_non_null(strstr(err, f->secret));
    assert_non_null(strstr(err, what));
}

static void test_secret_permissions(void **state)
{
    struct fixture *f = *state;
    file_write(f->secret, "0123456789abcdef0123456789abcdef0123456789abcdef\n", 0644);
    assert_open_fails(f, -EPERM, "group or others");
    assert_int_equal(chmod(f->secret, 0604), 0);
    assert_open_fails(f, -EPERM, "group or others");
    assert_int_equal(chmod(f->secret, 0640), 0);
    assert_open_fails(f, -EPERM, "group or others");
    assert_int_equal(chmod(f->secret, 0620), 0);
    assert_open_fails(f, -EPERM, "group or others");
    /* The refused file was left alone. */
    char *text = file_read(f->secret);
    assert_string_equal(text, "0123456789abcdef0123456789abcdef0123456789abcdef\n");
    free(text);

    assert_int_equal(chmod(f->secret, 0400), 0);
    auth_open_default(f);
}

static void test_secret_short(void **state)
{
    struct fixture *f = *state;
    file_write(f->secret, "", 0600);
    assert_open_fails(f, -EINVAL, "shorter than 32 bytes");
    file_write(f->secret, "0123456789abcdef0123456789abcde", 0600); /* 31 */
    assert_open_fails(f, -EINVAL, "shorter than 32 bytes");
    file_write(f->secret, "0123456789abcdef0123456789abcde\n", 0600); /* 31 + newline */
    assert_open_fails(f, -EINVAL, "shorter than 32 bytes");

    assert_int_equal(unlink(f->secret), 0);
    assert_int_equal(mkdir(f->secret, 0700), 0);
    assert_open_fails(f, -EINVAL, "not a regular file");
    assert_int_equal(rmdir(f->secret), 0);

    file_write(f->secret, "0123456789abcdef0123456789abcdef", 0600); /* 32 */
    auth_open_default(f);
    /* That key is used as is. */
    char *pwh = pwh_of("0123456789abcdef0123456789abcdef", "alice", f->alice_hash);
    char *t = token_sign_pwh(JWT_ALG_HS256, "0123456789abcdef0123456789abcdef", "alice",
                             "vmexportd", (long)time(NULL) + 60, pwh);
    free(pwh);
    assert_bearer_ok(f->a, t, "alice");
    free(t);
}

static void test_open_errors(void **state)
{
    struct fixture *f = *state;
    struct auth_config cfg;
    char err[512] = "";
    struct auth *a = NULL;

    /* A configured users file must exist. */
    config_init(f, &cfg);
    char missing[160];
    snprintf(missing, sizeof(missing), "%s/no-such-users", f->dir);
    cfg.users_file = missing;
    assert_int_equal(auth_open(&a, &cfg, err, sizeof(err)), -ENOENT);
    assert_null(a);
    assert_non_null(strstr(err, missing));

    /* A secret in a directory that does not exist cannot be created. */
    config_init(f, &cfg);
    snprintf(missing, sizeof(missing), "%s/no-such-dir/secret", f->dir);
    cfg.jwt_secret_file = missing;
    assert_int_equal(auth_open(&a, &cfg, err, sizeof(err)), -ENOENT);
    assert_null(a);
    assert_non_null(strstr(err, missing));

    /* No secret file configured. */
    config_init(f, &cfg);
    cfg.jwt_secret_file = NULL;
    assert_int_equal(auth_open(&a, &cfg, err, sizeof(err)), -EINVAL);
    assert_null(a);
    assert_true(err[0] != '\0');
}

static void test_no_users_file(void **state)
{
    struct fixture *f = *state;
    struct auth_config cfg;
    char err[256];
    config_init(f, &cfg);
    cfg.users_file = NULL;
    assert_int_equal(auth_open(&f->a, &cfg, err, sizeof(err)), 0);
    assert_login(f->a, "alice", ALICE_PW, "192.0.2.1", -EACCES);
    assert_login(f->a, "nobody", "", "192.0.2.2", -EACCES);
    assert_int_equal(auth_reload(f->a), 0);
    char *token = NULL;
    assert_int_equal(auth_token_issue(f->a, "alice", (int64_t)time(NULL), &token), -ENOENT);
    assert_null(token);
    auth_close(f->a);
    f->a = NULL;

    cfg.users_file = "";
    assert_int_equal(auth_open(&f->a, &cfg, err, sizeof(err)), 0);
    assert_login(f->a, "alice", ALICE_PW, "192.0.2.3", -EACCES);
}

static void test_reload(void **state)
{
    struct fixture *f = *state;
    auth_open_default(f);
    assert_login(f->a, "erin", ALICE_PW, "192.0.2.1", -EACCES);

    char extra[CRYPT_OUTPUT_SIZE + 16];
    snprintf(extra, sizeof(extra), "erin:%s\n", f->alice_hash);
    users_write(f, extra);
    assert_int_equal(auth_reload(f->a), 0);
    assert_login(f->a, "erin", ALICE_PW, "192.0.2.2", 0);
    assert_login(f->a, "alice", ALICE_PW, "192.0.2.2", 0);

    /* A users file that cannot be read keeps the previous list. */
    assert_int_equal(unlink(f->users), 0);
    assert_int_equal(auth_reload(f->a), -ENOENT);
    assert_login(f->a, "erin", ALICE_PW, "192.0.2.3", 0);

    /* Removing a user takes effect, also for the tokens already issued (cached or not); the
     * tokens of users still listed with the same hash keep working. */
    char *token = NULL, *kept = NULL, header[8192];
    assert_int_equal(auth_token_issue(f->a, "bob", (int64_t)time(NULL), &token), 0);
    assert_int_equal(auth_token_issue(f->a, "alice", (int64_t)time(NULL), &kept), 0);
    assert_bearer_ok(f->a, token, "bob"); /* now in the cache */
    assert_bearer_ok(f->a, kept, "alice");
    snprintf(extra, sizeof(extra), "alice:%s\n", f->alice_hash);
    file_write(f->users, extra, 0600);
    assert_int_equal(auth_reload(f->a), 0);
    assert_login(f->a, "bob", BOB_PW, "192.0.2.4", -EACCES);
    assert_login(f->a, "erin", ALICE_PW, "192.0.2.5", -EACCES);
    assert_login(f->a, "alice", ALICE_PW, "192.0.2.6", 0);
    snprintf(header, sizeof(header), "Bearer %s", token);
    assert_bearer_refused(f->a, header);
    assert_bearer_ok(f->a, kept, "alice");
    free(token);

    /* A new password hash for alice ends her tokens; logging in with the new one works. */
    snprintf(extra, sizeof(extra), "alice:%s\n", f->bob_hash);
    file_write(f->users, extra, 0600);
    assert_int_equal(auth_reload(f->a), 0);
    snprintf(header, sizeof(header), "Bearer %s", kept);
    assert_bearer_refused(f->a, header);
    assert_login(f->a, "alice", ALICE_PW, "192.0.2.7", -EACCES);
    assert_login(f->a, "alice", BOB_PW, "192.0.2.8", 0);
    /* The same hash again (a rewrite of the file that changes nothing) keeps tokens working. */
    assert_int_equal(auth_token_issue(f->a, "alice", (int64_t)time(NULL), &token), 0);
    assert_int_equal(auth_reload(f->a), 0);
    assert_bearer_ok(f->a, token, "alice");
    free(token);
    free(kept);
}

/* The users file must not be accessible by others nor writable by its group: refused at open
 * and at reload (which keeps the previous users). */
static void test_users_file_permissions(void **state)
{
    struct fixture *f = *state;
    static const mode_t refused[] = {0644, 0604, 0602, 0601, 0620, 0660, 0666};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        assert_int_equal(chmod(f->users, refused[i]), 0);
        struct auth_config cfg;
        char err[512] = "";
        config_init(f, &cfg);
        struct auth *a = NULL;
        assert_int_equal(auth_open(&a, &cfg, err, sizeof(err)), -EPERM);
        assert_null(a);
        assert_non_null(strstr(err, f->users));
        assert_non_null(strstr(err, "accessible by others"));
    }
    assert_int_equal(chmod(f->users, 0640), 0);
    auth_open_default(f);
    assert_login(f->a, "alice", ALICE_PW, "192.0.2.1", 0);

    char extra[CRYPT_OUTPUT_SIZE + 16];
    snprintf(extra, sizeof(extra), "erin:%s\n", f->alice_hash);
    users_write(f, extra);
    assert_int_equal(chmod(f->users, 0644), 0);
    assert_int_equal(auth_reload(f->a), -EPERM);
    assert_login(f->a, "erin", ALICE_PW, "192.0.2.2", -EACCES);
    assert_login(f->a, "alice", ALICE_PW, "192.0.2.3", 0);
    assert_int_equal(chmod(f->users, 0600), 0);
    assert_int_equal(auth_reload(f->a), 0);
    assert_login(f->a, "erin", ALICE_PW, "192.0.2.4", 0);
}

/* A role per users-file line (admin when none), taken from the current file at every check. */
static void test_roles(void **state)
{
    struct fixture *f = *state;
    char extra[8 * CRYPT_OUTPUT_SIZE];
    snprintf(extra, sizeof(extra),
             "rd:%s:reader\n"
             "op:%s:operator\n"
             "ad:%s:admin\n"
             "bad:%s:root\n"
             "empty:%s:\n",
             f->alice_hash, f->alice_hash, f->alice_hash, f->alice_hash, f->alice_hash);
    users_write(f, extra);
    auth_open_default(f);
    static const struct {
        const char *user;
        enum auth_role role;
    } want[] = {{"alice", AUTH_ROLE_ADMIN},
                {"rd", AUTH_ROLE_READER},
                {"op", AUTH_ROLE_OPERATOR},
                {"ad", AUTH_ROLE_ADMIN}};
    char *tokens[4] = {NULL};
    for (size_t i = 0; i < 4; i++) {
        char header[8192], *who = NULL;
        enum auth_role role = (enum auth_role)99;
        assert_int_equal(auth_login(f->a, want[i].user, ALICE_PW, "192.0.2.1", &tokens[i], NULL),
                         0);
        snprintf(header, sizeof(header), "Bearer %s", tokens[i]);
        assert_int_equal(auth_check_bearer(f->a, header, &who, &role), 0);
        assert_string_equal(who, want[i].user);
        assert_int_equal(role, want[i].role);
        free(who);
        /* again, from the cache */
        assert_int_equal(auth_check_bearer(f->a, header, &who, &role), 0);
        assert_int_equal(role, want[i].role);
        free(who);
    }
    /* Unknown or empty roles make the line unusable, not an admin. */
    assert_login(f->a, "bad", ALICE_PW, "192.0.2.2", -EACCES);
    assert_login(f->a, "empty", ALICE_PW, "192.0.2.3", -EACCES);

    /* A changed role applies to the tokens already issued after the reload. */
    snprintf(extra, sizeof(extra), "rd:%s:admin\nop:%s:reader\n", f->alice_hash, f->alice_hash);
    file_write(f->users, extra, 0600);
    assert_int_equal(auth_reload(f->a), 0);
    char header[8192], *who = NULL;
    enum auth_role role;
    snprintf(header, sizeof(header), "Bearer %s", tokens[1]);
    assert_int_equal(auth_check_bearer(f->a, header, &who, &role), 0);
    assert_int_equal(role, AUTH_ROLE_ADMIN);
    free(who);
    snprintf(header, sizeof(header), "Bearer %s", tokens[2]);
    assert_int_equal(auth_check_bearer(f->a, header, &who, &role), 0);
    assert_int_equal(role, AUTH_ROLE_READER);
    free(who);
    for (size_t i = 0; i < 4; i++)
        free(tokens[i]);

    enum auth_role r;
    assert_int_equal(auth_role_parse("operator", &r), 0);
    assert_int_equal(r, AUTH_ROLE_OPERATOR);
    assert_int_equal(auth_role_parse("Admin", &r), -EINVAL);
    assert_int_equal(auth_role_parse("", &r), -EINVAL);
    assert_true(auth_role_allows(AUTH_ROLE_ADMIN, AUTH_ROLE_READER));
    assert_true(auth_role_allows(AUTH_ROLE_OPERATOR, AUTH_ROLE_OPERATOR));
    assert_false(auth_role_allows(AUTH_ROLE_READER, AUTH_ROLE_OPERATOR));
    assert_false(auth_role_allows(AUTH_ROLE_OPERATOR, AUTH_ROLE_ADMIN));
    assert_string_equal(auth_role_name(AUTH_ROLE_READER), "reader");
}

/* A user's own failed-login count survives reloads. */
static void test_rate_limit_reload(void **state)
{
    struct fixture *f = *state;
    struct auth_config cfg;
    char err[256];
    config_init(f, &cfg);
    cfg.max_user_failures = 2;
    assert_int_equal(auth_open(&f->a, &cfg, err, sizeof(err)), 0);
    assert_login(f->a, "alice", "wrong", "192.0.2.1", -EACCES);
    assert_login(f->a, "alice", "wrong", "192.0.2.2", -EACCES);
    assert_login(f->a, "alice", ALICE_PW, "192.0.2.3", -EAGAIN);
    assert_int_equal(auth_reload(f->a), 0);
    assert_login(f->a, "alice", ALICE_PW, "192.0.2.4", -EAGAIN);
    assert_login(f->a, "bob", BOB_PW, "192.0.2.5", 0);
}

/* Logout: a revoked token is refused (also when it was cached), others are not; with a catalog
 * the revocation survives a restart. */
static int count_row(void *arg, const char *id, int64_t exp)
{
    (void)id;
    (void)exp;
    (*(int *)arg)++;
    return 0;
}

static void test_revoke(void **state)
{
    struct fixture *f = *state;
    char db[160], err[256];
    snprintf(db, sizeof(db), "%s/catalog.db", f->dir);
    struct catalog *cat = NULL;
    assert_int_equal(catalog_open(&cat, db, err, sizeof(err)), 0);
    struct auth_config cfg;
    config_init(f, &cfg);
    cfg.catalog = cat;
    assert_int_equal(auth_open(&f->a, &cfg, err, sizeof(err)), 0);

    char *t1 = NULL, *t2 = NULL, h1[8192], h2[8192];
    assert_int_equal(auth_token_issue(f->a, "alice", (int64_t)time(NULL), &t1), 0);
    assert_int_equal(auth_token_issue(f->a, "alice", (int64_t)time(NULL), &t2), 0);
    snprintf(h1, sizeof(h1), "Bearer %s", t1);
    snprintf(h2, sizeof(h2), "Bearer %s", t2);
    assert_bearer_ok(f->a, t1, "alice"); /* cached */
    assert_bearer_ok(f->a, t2, "alice");
    assert_int_equal(auth_revoke(f->a, h1), 0);
    assert_bearer_refused(f->a, h1);
    assert_bearer_ok(f->a, t2, "alice");
    /* A revoked, forged or missing token cannot be revoked (again). */
    assert_int_equal(auth_revoke(f->a, h1), -EACCES);
    assert_int_equal(auth_revoke(f->a, "Bearer a.b.c"), -EACCES);
    assert_int_equal(auth_revoke(f->a, NULL), -EACCES);

    /* Restart on the same catalog and secret. */
    auth_close(f->a);
    f->a = NULL;
    assert_int_equal(auth_open(&f->a, &cfg, err, sizeof(err)), 0);
    assert_bearer_refused(f->a, h1);
    assert_bearer_ok(f->a, t2, "alice");
    /* Without the catalog the revocation would be forgotten: the catalog is what keeps it. */
    auth_close(f->a);
    f->a = NULL;
    cfg.catalog = NULL;
    assert_int_equal(auth_open(&f->a, &cfg, err, sizeof(err)), 0);
    assert_bearer_ok(f->a, t1, "alice");
    auth_close(f->a);
    f->a = NULL;

    /* Rows of expired tokens are dropped when the catalog is read. */
    assert_int_equal(catalog_token_revoke(cat, "00", (int64_t)time(NULL) - 10, 0), 0);
    cfg.catalog = cat;
    assert_int_equal(auth_open(&f->a, &cfg, err, sizeof(err)), 0);
    int rows = 0;
    assert_int_equal(catalog_token_revoked_list(cat, 0, count_row, &rows), 0);
    assert_int_equal(rows, 1); /* t1's */
    auth_close(f->a);
    f->a = NULL;
    catalog_close(cat);
    free(t1);
    free(t2);
}

static void test_pam_fallback(void **state)
{
    struct fixture *f = *state;
    struct auth_config cfg;
    char err[256];
    config_init(f, &cfg);
    /* A service without its own PAM file falls back to "other"; no such user exists there. */
    cfg.pam_service = "vmexport-unit-test";
    assert_int_equal(auth_open(&f->a, &cfg, err, sizeof(err)), 0);
    assert_login(f->a, "vmexport-no-such-user", "password", "192.0.2.1", -EACCES);
    /* Users of the file do not need PAM. */
    assert_login(f->a, "alice", ALICE_PW, "192.0.2.2", 0);
    auth_close(f->a);
    f->a = NULL;

    /* PAM alone. */
    cfg.users_file = NULL;
    assert_int_equal(auth_open(&f->a, &cfg, err, sizeof(err)), 0);
    assert_login(f->a, "alice", ALICE_PW, "192.0.2.3", -EACCES);
}

/* Failed logins are logged with the user and address, never with the password; control
 * characters in the user name cannot forge log lines. */
static void test_log_failed_login(void **state)
{
    struct fixture *f = *state;
    auth_open_default(f);
    char logpath[160];
    snprintf(logpath, sizeof(logpath), "%s/log", f->dir);
    fflush(stderr);
    log_set_level(LOG_LEVEL_WARN);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    close(fd);

    char *token = NULL;
    int r1 = auth_login(f->a, "alice", "hunter2-secret", "192.0.2.77", &token, NULL);
    int r2 = auth_login(f->a, "eve\nvmexport: login ok", "pw-secret-2", "192.0.2.78", &token, NULL);
    int r3 = auth_login(f->a, "alice", ALICE_PW, "192.0.2.79", &token, NULL);
    free(token);

    fflush(stderr);
    log_set_level(LOG_LEVEL_ERROR);
    dup2(saved, STDERR_FILENO);
    close(saved);
    assert_int_equal(r1, -EACCES);
    assert_int_equal(r2, -EACCES);
    assert_int_equal(r3, 0);

    char *log = file_read(logpath);
    for (char *line = log, *end; *line; line = end + (*end != '\0')) {
        end = strchrnul(line, '\n');
        print_message("# log: %.*s\n", (int)(end - line), line);
    }
    assert_non_null(strstr(log, "login failed for user 'alice' from 192.0.2.77"));
    assert_non_null(strstr(log, "login failed for user 'eve\\x0avmexport: login ok' from"));
    assert_null(strstr(log, "hunter2"));
    assert_null(strstr(log, "pw-secret"));
    assert_null(strstr(log, ALICE_PW));
    assert_null(strstr(log, "192.0.2.79"));
    free(log);
}

struct thread_arg {
    struct auth *a;
    struct fixture *f;
    int id;
    int errors;
};

static void *thread_main(void *p)
{
    struct thread_arg *t = p;
    for (int i = 0; i < 8; i++) {
        char addr[32], *token = NULL, *who = NULL, header[8192];
        snprintf(addr, sizeof(addr), "10.%d.0.%d", t->id, i % 2);
        int r;
        switch (i % 4) {
        case 0:
            r = auth_login(t->a, "alice", ALICE_PW, addr, &token, NULL);
            t->errors += r != 0;
            break;
        case 1:
            r = auth_login(t->a, "bob", "wrong", addr, &token, NULL);
            t->errors += r != -EACCES;
            break;
        case 2:
            r = auth_token_issue(t->a, "carol", (int64_t)time(NULL), &token);
            t->errors += r != 0;
            break;
        default:
            t->errors += auth_reload(t->a) != 0;
            break;
        }
        if (token) {
            snprintf(header, sizeof(header), "Bearer %s", token);
            t->errors += auth_check_bearer(t->a, header, &who, NULL) != 0;
            free(who);
            free(token);
        }
    }
    return NULL;
}

static void test_threads(void **state)
{
    struct fixture *f = *state;
    struct auth_config cfg;
    char err[256];
    config_init(f, &cfg);
    cfg.max_failures = 100;
    cfg.max_user_failures = 100;
    assert_int_equal(auth_open(&f->a, &cfg, err, sizeof(err)), 0);

    enum { N = 8 };
    pthread_t th[N];
    struct thread_arg args[N];
    for (int i = 0; i < N; i++) {
        args[i] = (struct thread_arg){.a = f->a, .f = f, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, thread_main, &args[i]), 0);
    }
    int errors = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        errors += args[i].errors;
    }
    assert_int_equal(errors, 0);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, fixture_setup, fixture_teardown)
    const struct CMUnitTest tests[] = {
        T(test_login_ok),
        T(test_login_wrong_password),
        T(test_login_unknown_user),
        T(test_login_timing),
        T(test_rate_limit),
        T(test_rate_limit_defaults),
        T(test_rate_limit_window),
        T(test_rate_limit_no_eviction),
        T(test_rate_limit_per_user),
        T(test_token_verifies),
        T(test_token_tampered),
        T(test_token_foreign_secret),
        T(test_token_expired),
        T(test_token_cache),
        T(test_token_alg_none),
        T(test_token_claims),
        T(test_bearer_scheme),
        T(test_secret_created),
        T(test_secret_permissions),
        T(test_secret_short),
        T(test_open_errors),
        T(test_no_users_file),
        T(test_reload),
        T(test_users_file_permissions),
        T(test_roles),
        T(test_rate_limit_reload),
        T(test_revoke),
        T(test_pam_fallback),
        T(test_log_failed_login),
        T(test_threads),
    };
#undef T
    log_init("test_auth", LOG_LEVEL_ERROR); /* the log test turns warnings on for itself */
    return cmocka_run_group_tests_name("auth", tests, NULL, NULL);
}
