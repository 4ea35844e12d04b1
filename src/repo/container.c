/* The container every chunk, manifest and backup.json is stored in: a 16-byte header, the
 * payload (a zstd frame, or the plain bytes when compression does not shrink them), and either
 * AES-256-GCM (encrypted repositories: nonce, ciphertext, tag) or a checksum (plain
 * repositories: XXH3-128 in container version 2, SHA-256 in version 1).  The container version
 * is the repository's format version.  Both bind the header and the file's identity (its chunk ID
 * or path), so a container moved to another name fails to open.  Layout: docs/repository-format.md.
 */
#include "repo_internal.h"

#include <endian.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <xxhash.h>
#include <zstd.h>

#include "core/cleanup.h"

static const uint8_t container_magic[4] = {'V', 'X', 'C', 'K'};
#define XXH128_SIZE    16
#define FLAG_ZSTD      0x01u
#define FLAG_ENCRYPTED 0x02u
#define FLAGS_KNOWN    (FLAG_ZSTD | FLAG_ENCRYPTED)

/* Header fields: offsets and sizes. */
#define OFF_MAGIC    0
#define OFF_VERSION  4
#define OFF_FLAGS    5
#define OFF_RESERVED 6
#define OFF_LENGTH   8
#define RESERVED_LEN 2

#define IDENT_CHUNK_PREFIX "chunk:"
#define IDENT_FILE_PREFIX  "file:"

/* EVP update calls take int lengths: feed big buffers in pieces. */
#define EVP_PIECE (1u << 30)

/* Per-thread state, kept between containers and freed when the thread exits: zstd contexts,
 * one of each kind (creating one per container costs megabytes of fresh, page-faulting
 * workspace every time), the sealing buffer of container_seal_thread and the reading buffer
 * of container_read_buffer_thread (same reason). */
static pthread_once_t thread_keys_once = PTHREAD_ONCE_INIT;
static pthread_key_t cctx_key, dctx_key, seal_key, read_key;
static bool thread_keys_ok;

/* One of the calling thread's buffers, grown on demand. */
struct thread_buf {
    uint8_t *p;
    size_t cap;
};

static void *cctx_new(void)
{
    return ZSTD_createCCtx();
}

static void cctx_free(void *p)
{
    ZSTD_freeCCtx(p);
}

static void *dctx_new(void)
{
    return ZSTD_createDCtx();
}

static void dctx_free(void *p)
{
    ZSTD_freeDCtx(p);
}

static void *thread_buf_new(void)
{
    return calloc(1, sizeof(struct thread_buf));
}

static void thread_buf_free(void *p)
{
    struct thread_buf *tb = p;
    free(tb->p);
    free(tb);
}

static void thread_keys_create(void)
{
    /* Without keys the zstd getters below return NULL (a context per call) and the thread
     * buffers cannot be had (-ENOMEM). */
    thread_keys_ok = pthread_key_create(&cctx_key, cctx_free) == 0 &&
                     pthread_key_create(&dctx_key, dctx_free) == 0 &&
                     pthread_key_create(&seal_key, thread_buf_free) == 0 &&
                     pthread_key_create(&read_key, thread_buf_free) == 0;
}

/* The calling thread's object under *key, made by make() on its first use (and given to
 * drop() when it cannot be kept); NULL on allocation failure.  The key is passed by address: it
 * is only set once thread_keys_create has run. */
static void *thread_object(const pthread_key_t *key, void *(*make)(void), void (*drop)(void *))
{
    pthread_once(&thread_keys_once, thread_keys_create);
    if (!thread_keys_ok)
        return NULL;
    void *p = pthread_getspecific(*key);
    if (!p && (p = make()) && pthread_setspecific(*key, p) != 0) {
        drop(p);
        p = NULL;
    }
    return p;
}

/* The calling thread's compression context (NULL on allocation failure). */
static ZSTD_CCtx *thread_cctx(void)
{
    return thread_object(&cctx_key, cctx_new, cctx_free);
}

static ZSTD_DCtx *thread_dctx(void)
{
    return thread_object(&dctx_key, dctx_new, dctx_free);
}

static int gcm_run(bool enc, const uint8_t *key, const uint8_t *nonce, const struct iovec *aad,
                   size_t naad, const uint8_t *in, size_t len, uint8_t *out, uint8_t *tag)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int outl = 0, r = -EIO;
    if (!ctx)
        return -ENOMEM;
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, CONTAINER_NONCE_SIZE, NULL) != 1 ||
        EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, enc) != 1)
        goto out;
    for (size_t i = 0; i < naad; i++) {
        const uint8_t *p = aad[i].iov_base;
        for (size_t done = 0; done < aad[i].iov_len;) {
            size_t n = aad[i].iov_len - done > EVP_PIECE ? EVP_PIECE : aad[i].iov_len - done;
            if (EVP_CipherUpdate(ctx, NULL, &outl, p + done, (int)n) != 1)
                goto out;
            done += n;
        }
    }
    for (size_t done = 0; done < len;) {
        size_t n = len - done > EVP_PIECE ? EVP_PIECE : len - done;
        if (EVP_CipherUpdate(ctx, out + done, &outl, in + done, (int)n) != 1 || (size_t)outl != n)
            goto out;
        done += n;
    }
    if (!enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, CONTAINER_TAG_SIZE, tag) != 1)
        goto out;
    if (EVP_CipherFinal_ex(ctx, out + len, &outl) != 1) {
        r = enc ? -EIO : -EBADMSG; /* decryption: the tag does not match */
        goto out;
    }
    if (enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, CONTAINER_TAG_SIZE, tag) != 1)
        goto out;
    r = 0;
out:
    EVP_CIPHER_CTX_free(ctx);
    return r;
}

int repo_gcm_encrypt(const uint8_t key[REPO_KEY_SIZE], const uint8_t nonce[CONTAINER_NONCE_SIZE],
                     const struct iovec *aad, size_t naad, const uint8_t *in, size_t len,
                     uint8_t *out, uint8_t tag[CONTAINER_TAG_SIZE])
{
    return gcm_run(true, key, nonce, aad, naad, in, len, out, tag);
}

int repo_gcm_decrypt(const uint8_t key[REPO_KEY_SIZE], const uint8_t nonce[CONTAINER_NONCE_SIZE],
                     const struct iovec *aad, size_t naad, const uint8_t *in, size_t len,
                     uint8_t *out, const uint8_t tag[CONTAINER_TAG_SIZE])
{
    int r = gcm_run(false, key, nonce, aad, naad, in, len, out, (uint8_t *)tag);
    if (r < 0)
        OPENSSL_cleanse(out, len); /* never hand out unauthenticated plaintext */
    return r;
}

/* Bytes after the payload: the GCM tag, or the checksum of a plain container. */
static size_t container_trailer(const struct repo *r)
{
    return r->encrypted ? CONTAINER_TAG_SIZE : r->format_version >= 2 ? XXH128_SIZE : HASH_SIZE;
}

/* The check of plain containers, over the header, the identity and the payload: XXH3-128
 * (canonical, big-endian) from version 2 on; SHA-256 in version 1.  It guards against damage,
 * not forgery (a plain repository has no key), so a fast non-cryptographic hash is enough: the
 * chunk ID, SHA-256 of the plain data, is still checked by every reader of chunk data. */
static int container_checksum(const struct repo *r, const uint8_t *header, const char *ident,
                              const uint8_t *payload, size_t len, uint8_t *out)
{
    if (r->format_version >= 2) {
        XXH3_state_t *st = XXH3_createState();
        if (!st)
            return -ENOMEM;
        int ret = -EIO;
        if (XXH3_128bits_reset(st) == XXH_OK &&
            XXH3_128bits_update(st, header, CONTAINER_HEADER_SIZE) == XXH_OK &&
            XXH3_128bits_update(st, ident, strlen(ident)) == XXH_OK &&
            XXH3_128bits_update(st, payload, len) == XXH_OK) {
            XXH128_canonical_t c;
            XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
            memcpy(out, c.digest, XXH128_SIZE);
            ret = 0;
        }
        XXH3_freeState(st);
        return ret;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int n = 0;
    int ret = -EIO;
    if (!ctx)
        return -ENOMEM;
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
        EVP_DigestUpdate(ctx, header, CONTAINER_HEADER_SIZE) == 1 &&
        EVP_DigestUpdate(ctx, ident, strlen(ident)) == 1 &&
        EVP_DigestUpdate(ctx, payload, len) == 1 && EVP_DigestFinal_ex(ctx, out, &n) == 1 &&
        n == HASH_SIZE)
        ret = 0;
    EVP_MD_CTX_free(ctx);
    return ret;
}

static void header_write(const struct repo *r, uint8_t *h, uint8_t flags, uint64_t plain_len)
{
    memcpy(h + OFF_MAGIC, container_magic, sizeof(container_magic));
    h[OFF_VERSION] = (uint8_t)r->format_version;
    h[OFF_FLAGS] = flags;
    memset(h + OFF_RESERVED, 0, RESERVED_LEN);
    uint64_t le = htole64(plain_len);
    memcpy(h + OFF_LENGTH, &le, sizeof(le));
}

/* The allocation container_seal needs for len plain bytes, a multiple of CONTAINER_ALIGN; 0
 * when len is too big. */
static size_t seal_alloc_size(const struct repo *r, size_t len)
{
    size_t bound = ZSTD_compressBound(len);
    if (ZSTD_isError(bound) || bound < len || bound > SIZE_MAX - CONTAINER_MAX_OVERHEAD)
        return 0;
    size_t alloc = CONTAINER_HEADER_SIZE + (r->encrypted ? CONTAINER_NONCE_SIZE : 0) + bound +
                   container_trailer(r);
    return (alloc + CONTAINER_ALIGN - 1) / CONTAINER_ALIGN * CONTAINER_ALIGN;
}

/* Seal into buf (alloc bytes from seal_alloc_size, CONTAINER_ALIGN-aligned). */
static int seal_into(const struct repo *r, const char *ident, const void *plain, size_t len,
                     uint8_t *buf, size_t alloc, size_t *outlen)
{
    size_t nonce_len = r->encrypted ? CONTAINER_NONCE_SIZE : 0;
    size_t trailer = container_trailer(r);
    size_t bound = alloc - CONTAINER_HEADER_SIZE - nonce_len - trailer;
    uint8_t *payload = buf + CONTAINER_HEADER_SIZE + nonce_len;
    uint8_t flags = r->encrypted ? FLAG_ENCRYPTED : 0;
    size_t plen = len;

    *outlen = 0;
    if (len) {
        ZSTD_CCtx *cctx = thread_cctx();
        size_t z = cctx ? ZSTD_compressCCtx(cctx, payload, bound, plain, len, r->zstd_level)
                        : ZSTD_compress(payload, bound, plain, len, r->zstd_level);
        if (!ZSTD_isError(z) && z < len) {
            plen = z;
            flags |= FLAG_ZSTD;
        }
    }
    if (!(flags & FLAG_ZSTD) && len)
        memcpy(payload, plain, len);
    header_write(r, buf, flags, len);

    int ret;
    if (r->encrypted) {
        uint8_t *nonce = buf + CONTAINER_HEADER_SIZE;
        struct iovec aad[] = {
            {.iov_base = buf, .iov_len = CONTAINER_HEADER_SIZE},
            {.iov_base = (void *)ident, .iov_len = strlen(ident)},
        };
        ret = repo_random_bytes(nonce, CONTAINER_NONCE_SIZE);
        if (ret == 0)
            ret = repo_gcm_encrypt(r->data_key, nonce, aad, ARRAY_SIZE(aad), payload, plen, payload,
                                   payload + plen);
    } else {
        ret = container_checksum(r, buf, ident, payload, plen, payload + plen);
    }
    if (ret < 0)
        return ret;
    *outlen = CONTAINER_HEADER_SIZE + nonce_len + plen + trailer;
    return 0;
}

int container_seal(const struct repo *r, const char *ident, const void *plain, size_t len,
                   uint8_t **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    size_t alloc = seal_alloc_size(r, len);
    if (!alloc)
        return -EFBIG;
    CLEANUP_FREE uint8_t *buf = aligned_alloc(CONTAINER_ALIGN, alloc);
    if (!buf)
        return -ENOMEM;
    int ret = seal_into(r, ident, plain, len, buf, alloc, outlen);
    if (ret < 0)
        return ret;
    *out = TAKE_PTR(buf);
    return 0;
}

/* The calling thread's buffer under *key, CONTAINER_ALIGN-aligned and at least size bytes
 * (rounded up to CONTAINER_ALIGN); NULL when memory runs out. */
static struct thread_buf *thread_buffer(const pthread_key_t *key, size_t size)
{
    struct thread_buf *tb = thread_object(key, thread_buf_new, thread_buf_free);
    if (!tb)
        return NULL;
    size = (size + CONTAINER_ALIGN - 1) / CONTAINER_ALIGN * CONTAINER_ALIGN;
    if (tb->cap < size) {
        uint8_t *p = aligned_alloc(CONTAINER_ALIGN, size);
        if (!p)
            return NULL;
        free(tb->p);
        tb->p = p;
        tb->cap = size;
    }
    return tb;
}

int container_seal_thread(const struct repo *r, const char *ident, const void *plain, size_t len,
                          const uint8_t **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    size_t alloc = seal_alloc_size(r, len);
    if (!alloc)
        return -EFBIG;
    struct thread_buf *sb = thread_buffer(&seal_key, alloc);
    if (!sb)
        return -ENOMEM;
    int ret = seal_into(r, ident, plain, len, sb->p, sb->cap, outlen);
    if (ret == 0)
        *out = sb->p;
    return ret;
}

uint8_t *container_read_buffer_thread(size_t size, size_t *cap)
{
    struct thread_buf *rb = thread_buffer(&read_key, size);
    *cap = rb ? rb->cap : 0;
    return rb ? rb->p : NULL;
}

int container_plain_size(const uint8_t *file, size_t flen, uint64_t *len)
{
    uint64_t le;
    if (flen < CONTAINER_HEADER_SIZE || memcmp(file, container_magic, sizeof(container_magic)))
        return -EBADMSG;
    memcpy(&le, file + OFF_LENGTH, sizeof(le));
    *len = le64toh(le);
    return 0;
}

/* A container checked and decrypted in place, its payload not yet decompressed. */
struct container_view {
    uint8_t *payload;
    size_t plen;
    uint64_t plain_len;
    uint8_t flags;
};

/* checksum false: skip the checksum of a plain container (the caller checks the decoded data
 * against its SHA-256 instead, which covers every byte it returns). */
static int container_verify(const struct repo *r, const char *ident, uint8_t *file, size_t flen,
                            uint64_t max_plain, bool checksum, struct container_view *v)
{
    if (container_plain_size(file, flen, &v->plain_len) < 0 ||
        file[OFF_VERSION] != r->format_version)
        return -EBADMSG;
    v->flags = file[OFF_FLAGS];
    if ((v->flags & ~FLAGS_KNOWN) || file[OFF_RESERVED] || file[OFF_RESERVED + 1])
        return -EBADMSG;
    /* A plain container in an encrypted repository would be a forgery, and the other way round
     * a container from another repository. */
    if (!!(v->flags & FLAG_ENCRYPTED) != r->encrypted || v->plain_len > max_plain)
        return -EBADMSG;

    size_t nonce_len = r->encrypted ? CONTAINER_NONCE_SIZE : 0;
    size_t trailer = container_trailer(r);
    if (flen < CONTAINER_HEADER_SIZE + nonce_len + trailer)
        return -EBADMSG;
    v->plen = flen - CONTAINER_HEADER_SIZE - nonce_len - trailer;
    v->payload = file + CONTAINER_HEADER_SIZE + nonce_len;

    int ret;
    if (r->encrypted) {
        struct iovec aad[] = {
            {.iov_base = file, .iov_len = CONTAINER_HEADER_SIZE},
            {.iov_base = (void *)ident, .iov_len = strlen(ident)},
        };
        ret = repo_gcm_decrypt(r->data_key, file + CONTAINER_HEADER_SIZE, aad, ARRAY_SIZE(aad),
                               v->payload, v->plen, v->payload, v->payload + v->plen);
    } else if (checksum) {
        uint8_t sum[HASH_SIZE];
        ret = container_checksum(r, file, ident, v->payload, v->plen, sum);
        if (ret == 0 && CRYPTO_memcmp(sum, v->payload + v->plen, trailer))
            ret = -EBADMSG;
    } else {
        ret = 0;
    }
    if (ret < 0)
        return ret;

    /* Cheap consistency checks before the caller allocates plain_len bytes. */
    if (v->flags & FLAG_ZSTD) {
        size_t frame = ZSTD_findFrameCompressedSize(v->payload, v->plen);
        if (ZSTD_getFrameContentSize(v->payload, v->plen) != v->plain_len || ZSTD_isError(frame) ||
            frame != v->plen)
            return -EBADMSG;
    } else if (v->plen != v->plain_len) {
        return -EBADMSG;
    }
    return 0;
}

static int container_extract(const struct container_view *v, void *out, size_t cap, size_t *len)
{
    if (v->plain_len > cap)
        return -ENOBUFS;
    if (v->flags & FLAG_ZSTD) {
        ZSTD_DCtx *dctx = thread_dctx();
        size_t d = dctx ? ZSTD_decompressDCtx(dctx, out, (size_t)v->plain_len, v->payload, v->plen)
                        : ZSTD_decompress(out, (size_t)v->plain_len, v->payload, v->plen);
        if (ZSTD_isError(d) || d != v->plain_len)
            return -EBADMSG;
    } else if (v->plen) {
        memcpy(out, v->payload, v->plen);
    }
    *len = (size_t)v->plain_len;
    return 0;
}

static int unseal(const struct repo *r, const char *ident, uint8_t *file, size_t flen,
                  uint64_t max_plain, bool checksum, void *out, size_t cap, size_t *len)
{
    struct container_view v;
    *len = 0;
    int ret = container_verify(r, ident, file, flen, max_plain, checksum, &v);
    return ret < 0 ? ret : container_extract(&v, out, cap, len);
}

int container_unseal(const struct repo *r, const char *ident, uint8_t *file, size_t flen,
                     uint64_t max_plain, void *out, size_t cap, size_t *len)
{
    return unseal(r, ident, file, flen, max_plain, true, out, cap, len);
}

int container_unseal_data(const struct repo *r, const char *ident, uint8_t *file, size_t flen,
                          uint64_t max_plain, void *out, size_t cap, size_t *len)
{
    return unseal(r, ident, file, flen, max_plain, false, out, cap, len);
}

static char *file_ident(const char *relpath)
{
    char *s = NULL;
    return asprintf(&s, IDENT_FILE_PREFIX "%s", relpath) < 0 ? NULL : s;
}

int repo_meta_write(struct repo *r, const char *relpath, const void *plain, size_t len)
{
    CLEANUP_FREE char *ident = file_ident(relpath);
    CLEANUP_FREE uint8_t *file = NULL;
    size_t flen;
    if (!ident)
        return -ENOMEM;
    int ret = container_seal(r, ident, plain, len, &file, &flen);
    if (ret < 0)
        return ret;
    return store_put(r->store, relpath, file, flen, STORE_PUT_REPLACE, NULL);
}

int repo_meta_read(struct repo *r, const char *relpath, uint8_t **plain, size_t *len)
{
    CLEANUP_FREE char *ident = file_ident(relpath);
    CLEANUP_FREE uint8_t *file = NULL;
    struct container_view v;
    size_t flen;

    *plain = NULL;
    *len = 0;
    if (!ident)
        return -ENOMEM;
    /* A payload is never larger than its plain data (compression is used only when it shrinks
     * it), so the plain limit bounds the file too. */
    int ret =
        store_get(r->store, relpath, REPO_MAX_META_SIZE + CONTAINER_MAX_OVERHEAD, &file, &flen);
    if (ret < 0)
        return ret;
    ret = container_verify(r, ident, file, flen, REPO_MAX_META_SIZE, true, &v);
    if (ret < 0)
        return ret;
    if (v.plain_len >= SIZE_MAX)
        return -EFBIG;
    CLEANUP_FREE uint8_t *buf = malloc((size_t)v.plain_len + 1);
    if (!buf)
        return -ENOMEM;
    ret = container_extract(&v, buf, (size_t)v.plain_len, len);
    if (ret < 0)
        return ret;
    buf[*len] = '\0';
    *plain = TAKE_PTR(buf);
    return 0;
}
