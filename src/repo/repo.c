/* Backup repository: creation and opening, the config file, and the keys of encrypted
 * repositories (scrypt key-encryption key wrapping the data and chunk-ID keys with AES-GCM).
 *
 * The config of an encrypted repository carries a MAC ("mac": HMAC-SHA-256 under a key
 * derived from the two repository keys, over the canonical form of every other member), so
 * that whoever lacks the keys cannot change it: flip the chunk size, the format version, the
 * scrypt parameters, or drop the "encryption" section (which a passphrase given for a
 * repository without one then exposes).
 */
#include "repo_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <zstd.h>

#include "core/cleanup.h"
#include "core/hex.h"
#include "repo/store_s3.h"

#define CONFIG_FORMAT      "vmexport-repository"
#define CONFIG_COMPRESSION "zstd"
#define CONFIG_CIPHER      "aes-256-gcm"
#define CONFIG_KDF         "scrypt"
#define CONFIG_MAX_SIZE    (64 * 1024) /* a config is a few hundred bytes */

/* scrypt parameters written by repo_init (32 MiB, about 0.1 s) and the ones accepted from a
 * config: enough range for stronger settings, bounded so a config cannot demand absurd work. */
#define SCRYPT_N        32768
#define SCRYPT_R        8
#define SCRYPT_P        1
#define SCRYPT_MIN_N    1024
#define SCRYPT_MAX_N    (1u << 22)
#define SCRYPT_MAX_R    32
#define SCRYPT_MAX_P    16
#define SCRYPT_MAX_MEM  ((uint64_t)1 << 31)
#define SCRYPT_MEM_UNIT 128 /* bytes per N*r in scrypt's memory use */
#define SALT_SIZE       32
#define KEYS_LABEL      "vmexport-repository-keys:" /* AAD of the wrapped keys, then the ID */
/* The config MAC: its key is HMAC-SHA-256(data key || ID key, this label), so that no key is
 * used for two purposes; the MAC covers the config without "mac", serialized canonically. */
#define CONFIG_MAC_LABEL "vmexport-repository-config-mac"
#define CONFIG_MAC_FIELD "mac"
#define CONFIG_LOCK_DAYS "lock_days" /* S3 Object Lock retention of everything written */
#define CONFIG_CANONICAL (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII)

void chunk_id_to_hex(const struct chunk_id *id, char out[2 * HASH_SIZE + 1])
{
    hash_to_hex(id->b, out);
}

int chunk_id_from_hex(const char *hex, struct chunk_id *id)
{
    struct chunk_id tmp;
    int r = hex_decode(hex, tmp.b, HASH_SIZE);
    if (r == 0)
        *id = tmp;
    return r;
}

uint32_t repo_chunk_size(const struct repo *r)
{
    return r->chunk_size;
}

bool repo_encrypted(const struct repo *r)
{
    return r->encrypted;
}

const char *repo_path(const struct repo *r)
{
    return r->path;
}

const char *repo_id(const struct repo *r)
{
    return r->id;
}

unsigned repo_format_version(const struct repo *r)
{
    return r->format_version;
}

bool repo_config_unsealed(const struct repo *r)
{
    return r->config_unsealed;
}

int repo_check_writable(const struct repo *r, char *err, size_t errlen)
{
    if (!r->config_unsealed)
        return 0;
    repo_set_err(err, errlen,
                 "%s/%s: the config of this encrypted repository carries no MAC (it was made by "
                 "an older vmexport, or the MAC was removed): nothing is written until "
                 "'vmexport repo upgrade %s' has checked and sealed it",
                 r->path, REPO_CONFIG_NAME, r->path);
    return -EPERM;
}

bool repo_chunk_size_valid(uint64_t n)
{
    return n >= REPO_MIN_CHUNK_SIZE && n <= REPO_MAX_CHUNK_SIZE && (n & (n - 1)) == 0;
}

static bool scrypt_params_valid(uint64_t n, uint64_t r, uint64_t p)
{
    return n >= SCRYPT_MIN_N && n <= SCRYPT_MAX_N && (n & (n - 1)) == 0 && r >= 1 &&
           r <= SCRYPT_MAX_R && p >= 1 && p <= SCRYPT_MAX_P &&
           SCRYPT_MEM_UNIT * r * (n + p) <= SCRYPT_MAX_MEM;
}

static int kek_derive(const char *passphrase, const uint8_t *salt, size_t salt_len, uint64_t n,
                      uint64_t r, uint64_t p, uint8_t kek[REPO_KEY_SIZE])
{
    if (EVP_PBE_scrypt(passphrase, strlen(passphrase), salt, salt_len, n, r, p, SCRYPT_MAX_MEM, kek,
                       REPO_KEY_SIZE) != 1)
        return -EIO;
    return 0;
}

/* AAD of the wrapped keys: a label and the repository ID. */
static int keys_aad(const char *repo_id, char **out)
{
    return asprintf(out, KEYS_LABEL "%s", repo_id) < 0 ? -ENOMEM : 0;
}

/* The config MAC of keys (data key then ID key) over cfg without its "mac" member. */
static int config_mac(const uint8_t keys[2 * REPO_KEY_SIZE], json_t *cfg, uint8_t mac[HASH_SIZE])
{
    uint8_t mac_key[HASH_SIZE];
    json_t *copy = json_copy(cfg);
    if (!copy)
        return -ENOMEM;
    json_object_del(copy, CONFIG_MAC_FIELD);
    char *text = json_dumps(copy, CONFIG_CANONICAL);
    json_decref(copy);
    if (!text)
        return -ENOMEM;
    int r = 0;
    if (!EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, keys, 2 * REPO_KEY_SIZE,
                   (const uint8_t *)CONFIG_MAC_LABEL, strlen(CONFIG_MAC_LABEL), mac_key,
                   sizeof(mac_key), NULL) ||
        !EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, mac_key, sizeof(mac_key),
                   (const uint8_t *)text, strlen(text), mac, HASH_SIZE, NULL))
        r = -EIO;
    OPENSSL_cleanse(mac_key, sizeof(mac_key));
    free(text);
    return r;
}

/* Set cfg's "mac" member. */
static int config_add_mac(const uint8_t keys[2 * REPO_KEY_SIZE], json_t *cfg)
{
    uint8_t mac[HASH_SIZE];
    int r = config_mac(keys, cfg, mac);
    if (r < 0)
        return r;
    char *b64 = base64_encode(mac, sizeof(mac));
    if (!b64)
        return -ENOMEM;
    r = json_object_set_new(cfg, CONFIG_MAC_FIELD, json_string(b64)) < 0 ? -ENOMEM : 0;
    free(b64);
    return r;
}

/* Write cfg as the config file (indented, a final newline), atomically; replace or create. */
static int config_store(struct store *st, json_t *cfg, bool replace)
{
    CLEANUP_FREE char *text = json_dumps(cfg, JSON_INDENT(2));
    if (!text)
        return -ENOMEM;
    size_t len = strlen(text);
    CLEANUP_FREE char *line = malloc(len + 2);
    if (!line)
        return -ENOMEM;
    memcpy(line, text, len);
    line[len] = '\n';
    bool created = false;
    int r = store_put(st, REPO_CONFIG_NAME, line, len + 1,
                      replace ? STORE_PUT_REPLACE : STORE_PUT_CREATE, &created);
    /* Creating: another repo init into the same place won the race. */
    return r == 0 && !created ? -EEXIST : r;
}

/* ---- init ---- */

/* The "encryption" object of a new config; fills in the two keys. */
static int encryption_new(const char *passphrase, const char *repo_id, uint8_t *keys, json_t **out,
                          char *err, size_t errlen)
{
    uint8_t salt[SALT_SIZE], nonce[CONTAINER_NONCE_SIZE], kek[REPO_KEY_SIZE];
    uint8_t wrapped[2 * REPO_KEY_SIZE + CONTAINER_TAG_SIZE];
    CLEANUP_FREE char *aad = NULL;

    int r = repo_random_bytes(keys, 2 * REPO_KEY_SIZE);
    if (r == 0)
        r = repo_random_bytes(salt, sizeof(salt));
    if (r == 0)
        r = repo_random_bytes(nonce, sizeof(nonce));
    if (r == 0)
        r = keys_aad(repo_id, &aad);
    if (r == 0)
        r = kek_derive(passphrase, salt, sizeof(salt), SCRYPT_N, SCRYPT_R, SCRYPT_P, kek);
    if (r == 0) {
        struct iovec iov = {.iov_base = aad, .iov_len = strlen(aad)};
        r = repo_gcm_encrypt(kek, nonce, &iov, 1, keys, 2 * REPO_KEY_SIZE, wrapped,
                             wrapped + 2 * REPO_KEY_SIZE);
    }
    OPENSSL_cleanse(kek, sizeof(kek));
    if (r < 0) {
        repo_set_err(err, errlen, "cannot create the repository keys: %s", strerror(-r));
        return r;
    }

    CLEANUP_FREE char *salt_b64 = base64_encode(salt, sizeof(salt));
    CLEANUP_FREE char *nonce_b64 = base64_encode(nonce, sizeof(nonce));
    CLEANUP_FREE char *wrapped_b64 = base64_encode(wrapped, sizeof(wrapped));
    if (!salt_b64 || !nonce_b64 || !wrapped_b64)
        return -ENOMEM;
    *out = json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:s, s:s}", "cipher", CONFIG_CIPHER, "kdf",
                     CONFIG_KDF, "N", (json_int_t)SCRYPT_N, "r", (json_int_t)SCRYPT_R, "p",
                     (json_int_t)SCRYPT_P, "salt", salt_b64, "nonce", nonce_b64, "wrapped_keys",
                     wrapped_b64);
    return *out ? 0 : -ENOMEM;
}

static int config_write(struct store *st, const char *path, const struct repo_init_options *opt,
                        char *err, size_t errlen)
{
    const char *passphrase = opt->passphrase;
    char repo_id[2 * REPO_ID_BYTES + 1];
    uint8_t keys[2 * REPO_KEY_SIZE];
    json_t *enc = json_null();

    int r = repo_random_hex(repo_id, REPO_ID_BYTES);
    if (r < 0)
        return r;
    if (passphrase) {
        r = encryption_new(passphrase, repo_id, keys, &enc, err, errlen);
        if (r < 0) {
            OPENSSL_cleanse(keys, sizeof(keys));
            return r;
        }
    }
    json_t *cfg = json_pack("{s:s, s:i, s:I, s:s, s:i, s:s, s:o}", "format", CONFIG_FORMAT,
                            "version", (int)opt->format_version, "chunk_size",
                            (json_int_t)opt->chunk_size, "compression", CONFIG_COMPRESSION,
                            "compression_level", opt->zstd_level, "id", repo_id, "encryption", enc);
    if (!cfg)
        r = -ENOMEM;
    unsigned lock_days = opt->store ? opt->store->lock_days : 0;
    if (r == 0 && lock_days &&
        json_object_set_new(cfg, CONFIG_LOCK_DAYS, json_integer((json_int_t)lock_days)) < 0)
        r = -ENOMEM;
    if (r == 0 && passphrase)
        r = config_add_mac(keys, cfg);
    OPENSSL_cleanse(keys, sizeof(keys)); /* open() unwraps them again */
    if (r == 0)
        r = config_store(st, cfg, false);
    json_decref(cfg);
    if (r < 0)
        repo_set_err(err, errlen, "%s/%s: cannot write: %s", path, REPO_CONFIG_NAME, strerror(-r));
    return r;
}

/* Check the options of repo_init (NULL: the defaults) and fill in their defaults: 0, or
 * -EINVAL with a message. */
static int init_options(const struct repo_init_options *opt, struct repo_init_options *out,
                        char *err, size_t errlen)
{
    static const struct repo_init_options defaults = {0};
    if (!opt)
        opt = &defaults;
    *out = *opt;
    if (!out->chunk_size)
        out->chunk_size = REPO_DEFAULT_CHUNK_SIZE;
    if (!out->zstd_level)
        out->zstd_level = REPO_DEFAULT_ZSTD;
    if (!out->format_version)
        out->format_version = REPO_FORMAT_VERSION;
    if (out->format_version < REPO_MIN_FORMAT_VERSION ||
        out->format_version > REPO_FORMAT_VERSION) {
        repo_set_err(err, errlen, "format version %u is not between %d and %d", out->format_version,
                     REPO_MIN_FORMAT_VERSION, REPO_FORMAT_VERSION);
        return -EINVAL;
    }
    if (!repo_chunk_size_valid(out->chunk_size)) {
        repo_set_err(err, errlen, "chunk size %u is not a power of two between %u and %u",
                     out->chunk_size, REPO_MIN_CHUNK_SIZE, REPO_MAX_CHUNK_SIZE);
        return -EINVAL;
    }
    if (out->zstd_level < ZSTD_minCLevel() || out->zstd_level > ZSTD_maxCLevel()) {
        repo_set_err(err, errlen, "zstd level %d is not between %d and %d", out->zstd_level,
                     ZSTD_minCLevel(), ZSTD_maxCLevel());
        return -EINVAL;
    }
    if (out->passphrase && !*out->passphrase) {
        repo_set_err(err, errlen, "the passphrase is empty");
        return -EINVAL;
    }
    return 0;
}

/* The layout of a new repository in an empty store (opt checked by init_options); the config
 * comes last: a store without one is not a repository. */
static int init_layout(struct store *st, const struct repo_init_options *opt, char *err,
                       size_t errlen)
{
    static const char *const subdirs[] = {REPO_CHUNKS_DIR, REPO_BACKUPS_DIR, REPO_LOCKS_DIR};
    static const char *const subdirs_v3[] = {REPO_PACKS_DIR, REPO_INDEX_DIR, REPO_BACKUPS_DIR,
                                             REPO_LOCKS_DIR};
    bool v3 = opt->format_version >= REPO_PACKS_FORMAT;
    for (size_t i = 0; i < (v3 ? ARRAY_SIZE(subdirs_v3) : ARRAY_SIZE(subdirs)); i++) {
        const char *dir = v3 ? subdirs_v3[i] : subdirs[i];
        int r = store_make_prefix(st, dir, false);
        if (r < 0) {
            repo_set_err(err, errlen, "%s/%s: %s", store_name(st), dir, strerror(-r));
            return r;
        }
    }
    return config_write(st, store_name(st), opt, err, errlen);
}

int repo_init_store(struct store *st, const struct repo_init_options *opt, char *err, size_t errlen)
{
    struct repo_init_options o;
    int r = init_options(opt, &o, err, errlen);
    return r < 0 ? r : init_layout(st, &o, err, errlen);
}

int repo_init(const char *path, const struct repo_init_options *opt, char *err, size_t errlen)
{
    /* Checked before anything is created: bad options leave no directory behind. */
    struct repo_init_options o;
    int r = init_options(opt, &o, err, errlen);
    if (r < 0)
        return r;

    struct store *st = NULL;
    r = store_open_url(path, o.store, true, &st, err, errlen);
    if (r < 0)
        return r;
    r = init_layout(st, &o, err, errlen);
    store_close(st);
    return r;
}

/* ---- open ---- */

static const char *json_get_str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* Decode a base64 field that must be exactly len bytes. */
static int b64_field(json_t *o, const char *key, uint8_t *out, size_t len)
{
    const char *s = json_get_str(o, key);
    CLEANUP_FREE uint8_t *buf = NULL;
    size_t n;
    if (!s || base64_decode(s, &buf, &n) < 0 || n != len)
        return -EBADMSG;
    memcpy(out, buf, len);
    return 0;
}

/* Check cfg's MAC under keys: 0, or -EBADMSG with a message.  A missing MAC marks the
 * repository unsealed (read-only until sealed). */
static int config_mac_check(struct repo *r, json_t *cfg, const uint8_t keys[2 * REPO_KEY_SIZE],
                            const char *cfg_path, char *err, size_t errlen)
{
    json_t *stored = json_object_get(cfg, CONFIG_MAC_FIELD);
    if (!stored) {
        r->config_unsealed = true;
        return 0;
    }
    uint8_t want[HASH_SIZE], got[HASH_SIZE];
    int ret = b64_field(cfg, CONFIG_MAC_FIELD, got, sizeof(got));
    if (ret == 0 && (ret = config_mac(keys, cfg, want)) < 0)
        return ret;
    if (ret < 0 || CRYPTO_memcmp(want, got, sizeof(want)) != 0) {
        repo_set_err(err, errlen,
                     "%s: the config was changed by someone without the repository key (its "
                     "MAC does not match): refusing to use it",
                     cfg_path);
        return -EBADMSG;
    }
    return 0;
}

static int keys_unwrap(struct repo *r, json_t *cfg, json_t *enc, const char *repo_id,
                       const char *passphrase, const char *cfg_path, char *err, size_t errlen)
{
    uint64_t n, rr, p;
    uint8_t salt[SALT_SIZE], nonce[CONTAINER_NONCE_SIZE], kek[REPO_KEY_SIZE];
    uint8_t wrapped[2 * REPO_KEY_SIZE + CONTAINER_TAG_SIZE], keys[2 * REPO_KEY_SIZE];
    const char *cipher = json_get_str(enc, "cipher"), *kdf = json_get_str(enc, "kdf");

    if (!cipher || strcmp(cipher, CONFIG_CIPHER) || !kdf || strcmp(kdf, CONFIG_KDF)) {
        repo_set_err(err, errlen, "%s: unsupported cipher or key derivation", cfg_path);
        return -EBADMSG;
    }
    if (repo_json_get_uint(enc, "N", false, &n) < 0 ||
        repo_json_get_uint(enc, "r", false, &rr) < 0 ||
        repo_json_get_uint(enc, "p", false, &p) < 0 || !scrypt_params_valid(n, rr, p) ||
        b64_field(enc, "salt", salt, sizeof(salt)) < 0 ||
        b64_field(enc, "nonce", nonce, sizeof(nonce)) < 0 ||
        b64_field(enc, "wrapped_keys", wrapped, sizeof(wrapped)) < 0) {
        repo_set_err(err, errlen, "%s: invalid \"encryption\" settings", cfg_path);
        return -EBADMSG;
    }
    if (!passphrase) {
        repo_set_err(err, errlen, "%s: the repository is encrypted: passphrase required", r->path);
        return -EACCES;
    }

    CLEANUP_FREE char *aad = NULL;
    int ret = keys_aad(repo_id, &aad);
    if (ret == 0)
        ret = kek_derive(passphrase, salt, sizeof(salt), n, rr, p, kek);
    if (ret == 0) {
        struct iovec iov = {.iov_base = aad, .iov_len = strlen(aad)};
        ret = repo_gcm_decrypt(kek, nonce, &iov, 1, wrapped, sizeof(keys), keys,
                               wrapped + sizeof(keys));
    }
    OPENSSL_cleanse(kek, sizeof(kek));
    if (ret == -EBADMSG) {
        /* Changed scrypt parameters or salt derive another key too: say so when the config
         * would have been checked. */
        repo_set_err(err, errlen, "%s: wrong passphrase%s", r->path,
                     json_object_get(cfg, CONFIG_MAC_FIELD)
                         ? " (or the config's key-derivation settings were changed)"
                         : "");
        return -EACCES;
    }
    if (ret < 0) {
        repo_set_err(err, errlen, "%s: cannot derive the keys: %s", r->path, strerror(-ret));
        return ret;
    }
    ret = config_mac_check(r, cfg, keys, cfg_path, err, errlen);
    if (ret < 0) {
        OPENSSL_cleanse(keys, sizeof(keys));
        return ret;
    }
    memcpy(r->data_key, keys, REPO_KEY_SIZE);
    memcpy(r->id_key, keys + REPO_KEY_SIZE, REPO_KEY_SIZE);
    OPENSSL_cleanse(keys, sizeof(keys));
    r->encrypted = true;
    return 0;
}

static int config_parse(struct repo *r, const char *text, size_t len, const char *passphrase,
                        char *err, size_t errlen)
{
    CLEANUP_FREE char *cfg_path = NULL;
    json_error_t jerr;
    uint64_t version, chunk_size;
    int ret = -EBADMSG;

    if (asprintf(&cfg_path, "%s/%s", r->path, REPO_CONFIG_NAME) < 0)
        return -ENOMEM;
    json_t *cfg = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(cfg)) {
        repo_set_err(err, errlen, "%s: not a vmexport repository config (%s)", cfg_path,
                     cfg ? "not an object" : jerr.text);
        goto out;
    }
    const char *format = json_get_str(cfg, "format");
    if (!format || strcmp(format, CONFIG_FORMAT)) {
        repo_set_err(err, errlen, "%s: not a vmexport repository config (format is not \"%s\")",
                     cfg_path, CONFIG_FORMAT);
        goto out;
    }
    if (repo_json_get_uint(cfg, "version", false, &version) < 0) {
        repo_set_err(err, errlen, "%s: invalid \"version\"", cfg_path);
        goto out;
    }
    if (version < REPO_MIN_FORMAT_VERSION || version > REPO_FORMAT_VERSION) {
        repo_set_err(err, errlen,
                     "%s: repository format version %llu is not supported by this vmexport "
                     "(supports %d to %d)",
                     r->path, (unsigned long long)version, REPO_MIN_FORMAT_VERSION,
                     REPO_FORMAT_VERSION);
        ret = -EPROTONOSUPPORT;
        goto out;
    }
    r->format_version = (unsigned)version;
    if (repo_json_get_uint(cfg, "chunk_size", false, &chunk_size) < 0 ||
        !repo_chunk_size_valid(chunk_size)) {
        repo_set_err(err, errlen, "%s: invalid \"chunk_size\"", cfg_path);
        goto out;
    }
    r->chunk_size = (uint32_t)chunk_size;
    const char *compression = json_get_str(cfg, "compression");
    if (!compression || strcmp(compression, CONFIG_COMPRESSION)) {
        repo_set_err(err, errlen, "%s: unsupported \"compression\"", cfg_path);
        goto out;
    }
    json_t *level = json_object_get(cfg, "compression_level");
    r->zstd_level = REPO_DEFAULT_ZSTD;
    if (level) {
        if (!json_is_integer(level) || json_integer_value(level) < ZSTD_minCLevel() ||
            json_integer_value(level) > ZSTD_maxCLevel()) {
            repo_set_err(err, errlen, "%s: invalid \"compression_level\"", cfg_path);
            goto out;
        }
        r->zstd_level = (int)json_integer_value(level);
    }
    const char *repo_id = json_get_str(cfg, "id");
    if (!repo_id || !*repo_id) {
        repo_set_err(err, errlen, "%s: missing \"id\"", cfg_path);
        goto out;
    }
    snprintf(r->id, sizeof(r->id), "%s", repo_id);
    json_t *enc = json_object_get(cfg, "encryption");
    if (json_is_object(enc)) {
        ret = keys_unwrap(r, cfg, enc, repo_id, passphrase, cfg_path, err, errlen);
    } else if (enc && !json_is_null(enc)) {
        repo_set_err(err, errlen, "%s: invalid \"encryption\"", cfg_path);
    } else if (json_object_get(cfg, CONFIG_MAC_FIELD)) {
        /* Only encrypted configs get a MAC: this one lost its encryption settings. */
        repo_set_err(err, errlen,
                     "%s: the config carries a MAC but no \"encryption\" settings: they were "
                     "removed; refusing to use it",
                     cfg_path);
    } else if (passphrase) {
        repo_set_err(err, errlen,
                     "%s: a passphrase was given, but the repository's config says it is not "
                     "encrypted: refusing to go on (if it was created without --encrypt, give "
                     "no passphrase; otherwise its config was changed to downgrade it)",
                     r->path);
        ret = -EPERM;
    } else {
        ret = 0;
    }
    if (ret == 0) {
        r->config = cfg;
        cfg = NULL;
    }
out:
    json_decref(cfg);
    return ret;
}

int repo_config_seal(struct repo *r, char *err, size_t errlen)
{
    if (!r->encrypted) {
        repo_set_err(err, errlen, "%s: not encrypted: its config has no key to be sealed with",
                     r->path);
        return -EINVAL;
    }
    if (!r->config_unsealed)
        return 0;
    uint8_t keys[2 * REPO_KEY_SIZE];
    memcpy(keys, r->data_key, REPO_KEY_SIZE);
    memcpy(keys + REPO_KEY_SIZE, r->id_key, REPO_KEY_SIZE);
    int ret = config_add_mac(keys, r->config);
    OPENSSL_cleanse(keys, sizeof(keys));
    if (ret == 0)
        ret = config_store(r->store, r->config, true);
    if (ret < 0) {
        json_object_del(r->config, CONFIG_MAC_FIELD);
        repo_set_err(err, errlen, "%s/%s: cannot write: %s", r->path, REPO_CONFIG_NAME,
                     strerror(-ret));
        return ret;
    }
    r->config_unsealed = false;
    return 0;
}

/* Open a repository in st; on success the handle owns st when owns. */
static int open_store(struct store *st, bool owns, const char *passphrase, struct repo **out,
                      char *err, size_t errlen)
{
    *out = NULL;
    struct repo *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    pthread_mutex_init(&r->lock_mutex, NULL);
    pthread_mutex_init(&r->index_mutex, NULL);
    pthread_mutex_init(&r->cache_mutex, NULL);
    r->cache_fd = -1;
    r->store = st;
    r->path = strdup(store_name(st));
    CLEANUP_FREE uint8_t *text = NULL; /* before any goto: the cleanup runs at every exit */
    int ret = -ENOMEM;
    if (!r->path)
        goto fail;

    size_t len;
    ret = store_get(st, REPO_CONFIG_NAME, CONFIG_MAX_SIZE, &text, &len);
    if (ret == -ENOENT) {
        repo_set_err(err, errlen, "%s: not a vmexport repository (no config file)", r->path);
        goto fail;
    }
    if (ret < 0) {
        repo_set_err(err, errlen, "%s/%s: %s", r->path, REPO_CONFIG_NAME,
                     ret == -EBADMSG ? "not a vmexport repository config" : strerror(-ret));
        goto fail;
    }
    ret = config_parse(r, (const char *)text, len, passphrase, err, errlen);
    if (ret < 0)
        goto fail;
    /* An S3 repository made with --lock-days retains everything it writes (store_s3.c). */
    json_int_t lock_days = json_integer_value(json_object_get(r->config, CONFIG_LOCK_DAYS));
    if (lock_days > 0)
        store_s3_set_lock_days(st, (unsigned)lock_days);
    r->owns_store = owns;
    *out = r;
    return 0;
fail:
    repo_close(r); /* does not own st yet */
    return ret;
}

int repo_open_store(struct store *st, const char *passphrase, struct repo **out, char *err,
                    size_t errlen)
{
    return open_store(st, false, passphrase, out, err, errlen);
}

int repo_open_url(const char *url, const struct store_options *so, const char *passphrase,
                  struct repo **out, char *err, size_t errlen)
{
    struct store *st = NULL;
    *out = NULL;
    int ret = store_open_url(url, so, false, &st, err, errlen);
    if (ret < 0)
        return ret;
    ret = open_store(st, true, passphrase, out, err, errlen);
    if (ret < 0)
        store_close(st);
    return ret;
}

int repo_open(const char *path, const char *passphrase, struct repo **out, char *err, size_t errlen)
{
    return repo_open_url(path, NULL, passphrase, out, err, errlen);
}

void repo_close(struct repo *r)
{
    if (!r)
        return;
    lease_keeper_stop(r->lock_keeper);
    if (r->lock_lease)
        lock_file_release(r, r->lock_lease);
    if (r->owns_store)
        store_close(r->store);
    OPENSSL_cleanse(r->data_key, sizeof(r->data_key));
    OPENSSL_cleanse(r->id_key, sizeof(r->id_key));
    json_decref(r->config);
    pack_index_free(r);
    index_cache_close(r);
    pthread_mutex_destroy(&r->cache_mutex);
    pthread_mutex_destroy(&r->index_mutex);
    pthread_mutex_destroy(&r->lock_mutex);
    free(r->path);
    free(r);
}
