/* The container every chunk, manifest and backup.json is stored in: a 16-byte header, the
 * payload (a zstd frame, or the plain bytes when compression does not shrink them), and either
 * AES-256-GCM (encrypted repositories: nonce, ciphertext, tag) or a checksum (plain
 * repositories: XXH3-128 from container version 2 on, SHA-256 in version 1).  The container
 * version is the repository's format version.  From version 3 on a chunk with zero blocks is
 * stored sparse (flag 0x04): its plain data is a bitmap of its non-zero blocks and those blocks
 * only, so zeros are neither compressed nor stored.  Both bind the header and the file's identity
 * (its chunk ID or path), so a container moved to another name fails to open.  Layout:
 * docs/repository-format.md.
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
#define FLAG_SPARSE    0x04u /* version 3: bitmap of the non-zero blocks, then those blocks */
#define FLAGS_KNOWN    (FLAG_ZSTD | FLAG_ENCRYPTED)
#define FLAGS_KNOWN_V3 (FLAGS_KNOWN | FLAG_SPARSE)
#define SPARSE_FORMAT  3 /* the first container version with FLAG_SPARSE */
#define BITMAP_WORD    8 /* bytes of a bitmap word (u64le) */

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
static pthread_key_t cctx_key, dctx_key, seal_key, read_key, sparse_key;
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
                     pthread_key_create(&read_key, thread_buf_free) == 0 &&
                     pthread_key_create(&sparse_key, thread_buf_free) == 0;
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

/* Seal into buf (alloc bytes from seal_alloc_size, CONTAINER_ALIGN-aligned).  sparse_len: 0,
 * or the length of the chunk whose sparse form plain is (the header then records it). */
static int seal_into(const struct repo *r, const char *ident, const void *plain, size_t len,
                     uint64_t sparse_len, uint8_t *buf, size_t alloc, size_t *outlen)
{
    size_t nonce_len = r->encrypted ? CONTAINER_NONCE_SIZE : 0;
    size_t trailer = container_trailer(r);
    size_t bound = alloc - CONTAINER_HEADER_SIZE - nonce_len - trailer;
    uint8_t *payload = buf + CONTAINER_HEADER_SIZE + nonce_len;
    uint8_t flags = (r->encrypted ? FLAG_ENCRYPTED : 0) | (sparse_len ? FLAG_SPARSE : 0);
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
    header_write(r, buf, flags, sparse_len ? sparse_len : len);

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
    int ret = seal_into(r, ident, plain, len, 0, buf, alloc, outlen);
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

static int seal_thread(const struct repo *r, const char *ident, const void *plain, size_t len,
                       uint64_t sparse_len, const uint8_t **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    size_t alloc = seal_alloc_size(r, len);
    if (!alloc)
        return -EFBIG;
    struct thread_buf *sb = thread_buffer(&seal_key, alloc);
    if (!sb)
        return -ENOMEM;
    int ret = seal_into(r, ident, plain, len, sparse_len, sb->p, sb->cap, outlen);
    if (ret == 0)
        *out = sb->p;
    return ret;
}

int container_seal_thread(const struct repo *r, const char *ident, const void *plain, size_t len,
                          const uint8_t **out, size_t *outlen)
{
    return seal_thread(r, ident, plain, len, 0, out, outlen);
}

/* ---- sparse chunks (format 3) ----
 *
 * Plain data of a sparse chunk of len bytes in n = ceil(len / CHUNK_BLOCK) blocks:
 * ceil(n / 64) u64le bitmap words (bit k % 64 of word k / 64: block k is stored), then the
 * stored blocks back to back (the last block of the chunk may be shorter). */

static size_t chunk_blocks(uint64_t len)
{
    return (size_t)((len + CHUNK_BLOCK - 1) / CHUNK_BLOCK);
}

static size_t bitmap_bytes(uint64_t len)
{
    return (chunk_blocks(len) + 63) / 64 * BITMAP_WORD;
}

static size_t block_len(uint64_t len, size_t k)
{
    uint64_t rest = len - (uint64_t)k * CHUNK_BLOCK;
    return rest < CHUNK_BLOCK ? (size_t)rest : CHUNK_BLOCK;
}

/* The sparse form of a chunk into the calling thread's sparse buffer (*out, *outlen): 1 when
 * the chunk has a zero block (a marked one, or one whose bytes are all zeros), 0 when it has
 * none (it is stored as it is), or -ENOMEM.  Marked blocks are not read. */
static int sparse_encode(const uint8_t *data, size_t len, const uint64_t *zero_blocks,
                         const uint8_t **out, size_t *outlen)
{
    uint64_t bitmap[CHUNK_MASK_WORDS] = {0};
    size_t n = chunk_blocks(len), stored = 0;
    bool any_zero = false;
    for (size_t k = 0; k < n; k++) {
        size_t bl = block_len(len, k);
        if (chunk_mask_test(zero_blocks, k) || buf_is_zero(data + k * CHUNK_BLOCK, bl)) {
            any_zero = true;
            continue;
        }
        chunk_mask_set(bitmap, k);
        stored += bl;
    }
    if (!any_zero)
        return 0;
    size_t head = bitmap_bytes(len);
    struct thread_buf *tb = thread_buffer(&sparse_key, head + stored);
    if (!tb)
        return -ENOMEM;
    for (size_t w = 0; w < head / BITMAP_WORD; w++) {
        uint64_t le = htole64(bitmap[w]);
        memcpy(tb->p + w * BITMAP_WORD, &le, BITMAP_WORD);
    }
    uint8_t *p = tb->p + head;
    for (size_t k = 0; k < n; k++)
        if (chunk_mask_test(bitmap, k)) {
            size_t bl = block_len(len, k);
            memcpy(p, data + k * CHUNK_BLOCK, bl);
            p += bl;
        }
    *out = tb->p;
    *outlen = head + stored;
    return 1;
}

/* Expand the sparse form src (srclen bytes) of a chunk of len bytes into out: stored blocks
 * copied, zero blocks cleared, or, with zero_blocks (cleared by the caller), left unwritten and
 * marked.  -EBADMSG when the bitmap does not match the length. */
static int sparse_decode(const uint8_t *src, size_t srclen, uint64_t len, uint8_t *out,
                         uint64_t *zero_blocks)
{
    uint64_t bitmap[CHUNK_MASK_WORDS];
    size_t n = chunk_blocks(len), head = bitmap_bytes(len), want = head;
    if (n > CHUNK_MASK_WORDS * 64 || srclen < head)
        return -EBADMSG;
    for (size_t w = 0; w < head / BITMAP_WORD; w++) {
        uint64_t le;
        memcpy(&le, src + w * BITMAP_WORD, BITMAP_WORD);
        bitmap[w] = le64toh(le);
    }
    if (n % 64 && bitmap[n / 64] >> (n % 64)) /* bits past the last block */
        return -EBADMSG;
    for (size_t k = 0; k < n; k++)
        if (chunk_mask_test(bitmap, k))
            want += block_len(len, k);
    if (want != srclen)
        return -EBADMSG;
    const uint8_t *p = src + head;
    for (size_t k = 0; k < n; k++) {
        size_t bl = block_len(len, k);
        if (chunk_mask_test(bitmap, k)) {
            memcpy(out + k * CHUNK_BLOCK, p, bl);
            p += bl;
        } else if (zero_blocks) {
            chunk_mask_set(zero_blocks, k);
        } else {
            memset(out + k * CHUNK_BLOCK, 0, bl);
        }
    }
    return 0;
}

int container_seal_chunk(const struct repo *r, const char *ident, const void *data, size_t len,
                         const uint64_t *zero_blocks, const uint8_t **out, size_t *outlen)
{
    const uint8_t *sparse = NULL;
    size_t slen = 0;
    if (r->format_version >= SPARSE_FORMAT) {
        int ret = sparse_encode(data, len, zero_blocks, &sparse, &slen);
        if (ret < 0)
            return ret;
        if (ret > 0)
            return seal_thread(r, ident, sparse, slen, len, out, outlen);
    }
    return seal_thread(r, ident, data, len, 0, out, outlen);
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
    uint64_t plain_len;  /* the header's length: the chunk's length when sparse */
    uint64_t stored_len; /* the payload's plain length (the sparse form when sparse) */
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
    uint8_t known = r->format_version >= SPARSE_FORMAT ? FLAGS_KNOWN_V3 : FLAGS_KNOWN;
    if ((v->flags & ~known) || file[OFF_RESERVED] || file[OFF_RESERVED + 1])
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

    /* Cheap consistency checks before the caller allocates plain_len bytes.  A sparse payload
     * holds the bitmap and at most the chunk's bytes. */
    v->stored_len = v->plain_len;
    uint64_t lo = v->plain_len, hi = v->plain_len;
    if (v->flags & FLAG_SPARSE) {
        if (v->plain_len > (uint64_t)CHUNK_MASK_WORDS * 64 * CHUNK_BLOCK)
            return -EBADMSG;
        lo = bitmap_bytes(v->plain_len);
        hi = lo + v->plain_len;
    }
    if (v->flags & FLAG_ZSTD) {
        size_t frame = ZSTD_findFrameCompressedSize(v->payload, v->plen);
        unsigned long long content = ZSTD_getFrameContentSize(v->payload, v->plen);
        if (content == ZSTD_CONTENTSIZE_UNKNOWN || content == ZSTD_CONTENTSIZE_ERROR ||
            content < lo || content > hi || ZSTD_isError(frame) || frame != v->plen)
            return -EBADMSG;
        v->stored_len = content;
    } else if (v->plen < lo || v->plen > hi) {
        return -EBADMSG;
    } else {
        v->stored_len = v->plen;
    }
    return 0;
}

static int container_extract(const struct container_view *v, void *out, size_t cap, size_t *len)
{
    if (v->flags & FLAG_SPARSE) /* only chunks are sparse (container_unseal_chunk) */
        return -EBADMSG;
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

int container_unseal_chunk(const struct repo *r, const char *ident, uint8_t *file, size_t flen,
                           uint64_t max_plain, bool checksum, void *out, size_t cap, size_t *len,
                           uint64_t *zero_blocks)
{
    struct container_view v;
    *len = 0;
    if (zero_blocks)
        memset(zero_blocks, 0, CHUNK_MASK_WORDS * sizeof(*zero_blocks));
    int ret = container_verify(r, ident, file, flen, max_plain, checksum, &v);
    if (ret < 0)
        return ret;
    if (!(v.flags & FLAG_SPARSE))
        return container_extract(&v, out, cap, len);
    if (v.plain_len > cap)
        return -ENOBUFS;
    const uint8_t *src = v.payload;
    if (v.flags & FLAG_ZSTD) {
        struct thread_buf *tb = thread_buffer(&sparse_key, (size_t)v.stored_len);
        if (!tb)
            return -ENOMEM;
        ZSTD_DCtx *dctx = thread_dctx();
        size_t d = dctx ? ZSTD_decompressDCtx(dctx, tb->p, (size_t)v.stored_len, v.payload, v.plen)
                        : ZSTD_decompress(tb->p, (size_t)v.stored_len, v.payload, v.plen);
        if (ZSTD_isError(d) || d != v.stored_len)
            return -EBADMSG;
        src = tb->p;
    }
    ret = sparse_decode(src, (size_t)v.stored_len, v.plain_len, out, zero_blocks);
    if (ret < 0)
        return ret;
    *len = (size_t)v.plain_len;
    return 0;
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
