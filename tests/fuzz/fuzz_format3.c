/* Fuzz target: the decoders of format 3 repository files, which a damaged or hostile store can
 * hand back.  The first byte picks the decoder (low two bits) and the repository (bit 7: the
 * encrypted one, keys as fuzz_container: bytes 0x42 and 0x24; else plain); the rest is the file:
 *
 *   0  a segmented stream (stream.c), read segment by segment to its end segment;
 *   1  a v3 manifest (manifest_load from the store): its entries are strictly increasing chunk
 *      indexes inside the disk, and it saves and loads back to the same manifest;
 *   2  an index object (32 bytes of name, then the object stored at index/<name hex>, which
 *      its segments are bound to; pack.c, what chunk lookups and gc read): every ID it names
 *      is listed once, sorted, and found;
 *   3  a chunk's container (32 bytes of chunk ID, then the container bound to "chunk:<ID>"),
 *      opened by container_unseal_chunk with and without a zero-block mask, then packed (the
 *      real pack writer) and read back by repo_chunk_read_sparse: both expansions have the
 *      header's length and the same bytes (marked blocks are zeros), the read agrees with them.
 *
 * (The chunk read skips the checksum of a plain container: the chunk ID covers the data.)
 * Every input is rejected with a negative errno (-EBADMSG for damage) or decodes consistently.
 * Repositories live on the in-memory store (store_mem.c), a fresh one per input.
 *
 * Built with -DGEN (without libFuzzer, see the end) it writes the seed corpus into the directory
 * given: valid files of each kind made by the real writers. */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/hex.h"
#include "repo/repo_internal.h"
#include "repo/store_mem.h"
#include "repo/stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHUNK_SIZE       REPO_MIN_CHUNK_SIZE
#define INDEX_NAME_BYTES 32

static struct repo plain = {.zstd_level = 1,
                            .format_version = 3,
                            .chunk_size = CHUNK_SIZE,
                            .index_mutex = PTHREAD_MUTEX_INITIALIZER,
                            .lock_mutex = PTHREAD_MUTEX_INITIALIZER,
                            .path = "fuzz"};
static struct repo enc = {.zstd_level = 1,
                          .format_version = 3,
                          .chunk_size = CHUNK_SIZE,
                          .encrypted = true,
                          .index_mutex = PTHREAD_MUTEX_INITIALIZER,
                          .lock_mutex = PTHREAD_MUTEX_INITIALIZER,
                          .path = "fuzz"};

static void repos_init(void)
{
    if (!enc.data_key[0]) {
        memset(enc.data_key, 0x42, sizeof(enc.data_key));
        memset(enc.id_key, 0x24, sizeof(enc.id_key));
    }
}

/* A new empty store with the repository's top-level prefixes (as repo_init makes them). */
static struct store *new_store(void)
{
    struct store *s = NULL;
    assert(store_mem_new("fuzz", &s) == 0);
    assert(store_make_prefix(s, REPO_PACKS_DIR, false) == 0);
    assert(store_make_prefix(s, REPO_INDEX_DIR, false) == 0);
    assert(store_make_prefix(s, "fuzz", false) == 0);
    return s;
}

static bool documented(int ret)
{
    if (getenv("FUZZ_FORMAT3_VERBOSE")) /* which seeds decode */
        fprintf(stderr, "fuzz_format3: rejected: %d\n", ret);
    return ret == -EBADMSG || ret == -ENOMEM || ret == -ENOBUFS;
}

static uint8_t *copy(const uint8_t *data, size_t size)
{
    uint8_t *p = malloc(size ? size : 1);
    assert(p);
    memcpy(p, data, size);
    return p;
}

static void fuzz_stream(struct repo *r, const uint8_t *data, size_t size)
{
    struct stream_reader *rd = NULL;
    assert(stream_reader_new(r, "fuzz/stream", copy(data, size), size, &rd) == 0);
    const uint8_t *p;
    size_t len;
    int ret;
    while ((ret = stream_reader_next(rd, &p, &len)) == 1) {
        assert(len < STREAM_MAX_SEGMENT);
        if (len)
            assert(p && (p[0] | p[len - 1]) < 256); /* readable */
    }
    assert(ret == 0 || documented(ret));
    if (ret == 0)
        assert(stream_reader_next(rd, &p, &len) <= 0); /* nothing after the end */
    stream_reader_free(rd);
}

static void fuzz_manifest(struct repo *r, const uint8_t *data, size_t size)
{
    struct manifest m, back;
    assert(store_put(r->store, "fuzz/m", data, size, STORE_PUT_REPLACE, NULL) == 0);
    int ret = manifest_load(r, "fuzz/m", &m);
    if (ret < 0) {
        assert(documented(ret));
        return;
    }
    assert(m.disk && *m.disk && repo_chunk_size_valid(m.chunk_size));
    for (size_t k = 0; k < m.n_entries; k++) {
        assert(m.e[k].idx < manifest_chunks(&m));
        assert(k == 0 || m.e[k - 1].idx < m.e[k].idx);
    }
    assert(manifest_save(r, "fuzz/m2", &m) == 0);
    assert(manifest_load(r, "fuzz/m2", &back) == 0);
    assert(!strcmp(back.disk, m.disk) && back.disk_size == m.disk_size &&
           back.chunk_size == m.chunk_size && back.n_entries == m.n_entries);
    assert(!back.change_id == !m.change_id &&
           (!m.change_id || !strcmp(back.change_id, m.change_id)));
    assert(!back.snapshot_path == !m.snapshot_path &&
           (!m.snapshot_path || !strcmp(back.snapshot_path, m.snapshot_path)));
    for (size_t k = 0; k < m.n_entries; k++)
        assert(back.e[k].idx == m.e[k].idx && !memcmp(back.e[k].id.b, m.e[k].id.b, HASH_SIZE));
    manifest_free(&back);
    manifest_free(&m);
}

static void fuzz_index(struct repo *r, const uint8_t *data, size_t size)
{
    if (size < INDEX_NAME_BYTES)
        return;
    char key[sizeof(REPO_INDEX_DIR "/") + 2 * INDEX_NAME_BYTES];
    memcpy(key, REPO_INDEX_DIR "/", sizeof(REPO_INDEX_DIR));
    hex_encode(data, INDEX_NAME_BYTES, key + sizeof(REPO_INDEX_DIR));
    data += INDEX_NAME_BYTES;
    size -= INDEX_NAME_BYTES;
    assert(store_put(r->store, key, data, size, STORE_PUT_REPLACE, NULL) == 0);
    struct chunk_id *ids = NULL;
    size_t n = 0;
    int ret = pack_index_ids(r, &ids, &n);
    if (ret < 0) {
        assert(documented(ret));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        assert(i == 0 || memcmp(ids[i - 1].b, ids[i].b, HASH_SIZE) < 0);
        char pkey[PACK_KEY_LEN];
        uint64_t off;
        uint32_t len;
        assert(pack_index_find(r, &ids[i], pkey, &off, &len) == 0);
        assert(!strncmp(pkey, REPO_PACKS_DIR "/", sizeof(REPO_PACKS_DIR)));
    }
    free(ids);
}

static void fuzz_chunk(struct repo *r, const uint8_t *data, size_t size)
{
    static uint8_t full[CHUNK_SIZE], masked[CHUNK_SIZE], back[CHUNK_SIZE];
    static uint64_t mask[CHUNK_MASK_WORDS], mask2[CHUNK_MASK_WORDS];
    struct chunk_id id;
    if (size < HASH_SIZE)
        return;
    memcpy(id.b, data, HASH_SIZE);
    data += HASH_SIZE;
    size -= HASH_SIZE;
    char hex[2 * HASH_SIZE + 1], ident[sizeof("chunk:") + 2 * HASH_SIZE];
    hex_encode(id.b, HASH_SIZE, hex);
    snprintf(ident, sizeof(ident), "chunk:%s", hex);

    /* Two expansions of the same container: every byte written, or marked zero blocks left. */
    size_t flen = 0, mlen = 0;
    uint8_t *file = copy(data, size);
    int ret = container_unseal_chunk(r, ident, file, size, CHUNK_SIZE, false, full, sizeof(full),
                                     &flen, NULL);
    free(file);
    file = copy(data, size);
    memset(mask, 0, sizeof(mask));
    memset(masked, 0xa5, sizeof(masked));
    int ret2 = container_unseal_chunk(r, ident, file, size, CHUNK_SIZE, false, masked,
                                      sizeof(masked), &mlen, mask);
    free(file);
    assert(ret == ret2);
    /* With the checksum of a plain container: the same result, or rejected. */
    size_t clen = 0;
    file = copy(data, size);
    int cret = container_unseal_chunk(r, ident, file, size, CHUNK_SIZE, true, back, sizeof(back),
                                      &clen, NULL);
    free(file);
    assert(cret == 0 ? ret == 0 && clen == flen && !memcmp(back, full, flen) : documented(cret));
    if (ret < 0) {
        assert(documented(ret));
    } else {
        uint64_t hlen;
        assert(container_plain_size(data, size, &hlen) == 0 && hlen == flen);
        assert(flen == mlen && flen <= CHUNK_SIZE);
        for (size_t b = 0; b * CHUNK_BLOCK < flen; b++) {
            size_t at = b * CHUNK_BLOCK, n = flen - at < CHUNK_BLOCK ? flen - at : CHUNK_BLOCK;
            if (chunk_mask_test(mask, b)) {
                for (size_t i = 0; i < n; i++)
                    assert(full[at + i] == 0);
            } else {
                assert(!memcmp(full + at, masked + at, n));
            }
        }
        for (size_t b = (flen + CHUNK_BLOCK - 1) / CHUNK_BLOCK; b < CHUNK_MASK_WORDS * 64; b++)
            assert(!chunk_mask_test(mask, b));
        /* The chunk's real ID, so that the read below gets as far as the data check. */
        repo_chunk_id(r, full, flen, &id);
    }

    /* The same container through a pack and the index: repo_chunk_read_sparse. */
    struct pack_writer *w = NULL;
    if (size > CHUNK_SIZE + CONTAINER_MAX_OVERHEAD)
        return;
    assert(pack_writer_new(r, &w) == 0);
    assert(pack_writer_add(w, &id, data, size, NULL) == 0);
    assert(pack_writer_flush(w, NULL, NULL) == 0);
    pack_writer_free(w);
    size_t rlen = 0;
    memset(mask2, 0, sizeof(mask2));
    int rret = repo_chunk_read_sparse(r, &id, back, sizeof(back), &rlen, mask2);
    if (ret < 0) {
        assert(rret < 0 && documented(rret));
        return;
    }
    assert(rret == 0 && rlen == flen && !memcmp(mask, mask2, sizeof(mask)));
    for (size_t b = 0; b * CHUNK_BLOCK < flen; b++) {
        size_t at = b * CHUNK_BLOCK, n = flen - at < CHUNK_BLOCK ? flen - at : CHUNK_BLOCK;
        if (!chunk_mask_test(mask, b))
            assert(!memcmp(full + at, back + at, n));
    }
    assert(repo_chunk_read_sparse(r, &id, back, sizeof(back), &rlen, NULL) == 0);
    assert(rlen == flen && !memcmp(full, back, flen));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    repos_init();
    struct repo *r = data[0] & 0x80 ? &enc : &plain;
    r->store = new_store();
    switch (data[0] & 3) {
    case 0:
        fuzz_stream(r, data + 1, size - 1);
        break;
    case 1:
        fuzz_manifest(r, data + 1, size - 1);
        break;
    case 2:
        fuzz_index(r, data + 1, size - 1);
        break;
    default:
        fuzz_chunk(r, data + 1, size - 1);
        break;
    }
    pack_index_free(r);
    store_close(r->store);
    r->store = NULL;
    return 0;
}

#ifdef GEN
/* The seed corpus, made by the real writers: cc -DGEN ... then ./a.out DIR. */
static void out(const char *dir, const char *name, uint8_t kind, const uint8_t *p, size_t len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert(f);
    assert(fwrite(&kind, 1, 1, f) == 1 && fwrite(p, 1, len, f) == len);
    fclose(f);
}

static void get(struct repo *r, const char *key, uint8_t **p, size_t *len)
{
    assert(store_get(r->store, key, UINT64_MAX, p, len) == 0);
}

static int index_name(void *opaque, const struct store_entry *e)
{
    if (!e->prefix && strlen(e->name) == 2 * INDEX_NAME_BYTES)
        strcpy(opaque, e->name);
    return 0;
}

int main(int argc, char **argv)
{
    assert(argc == 2);
    repos_init();
    for (int e = 0; e < 2; e++) {
        struct repo *r = e ? &enc : &plain;
        uint8_t k = e ? 0x80 : 0;
        const char *tag = e ? "enc" : "plain";
        char name[128];
        uint8_t *p;
        size_t len;
        r->store = new_store();

        /* Streams: empty, and three segments. */
        struct stream_writer *sw;
        assert(stream_writer_new(r, "fuzz/stream", &sw) == 0);
        assert(stream_writer_take(sw, 0, &p, &len) == 0);
        stream_writer_free(sw);
        snprintf(name, sizeof(name), "stream-empty-%s", tag);
        out(argv[1], name, k | 0, p, len);
        free(p);
        assert(stream_writer_new(r, "fuzz/stream", &sw) == 0);
        assert(stream_writer_add(sw, "header", 6) == 0 && stream_writer_add(sw, "", 0) == 0 &&
               stream_writer_add(sw, "abcabcabcabcabcabcabcabcabcabc", 30) == 0);
        assert(stream_writer_take(sw, 7, &p, &len) == 0);
        stream_writer_free(sw);
        snprintf(name, sizeof(name), "stream-3-%s", tag);
        out(argv[1], name, k | 0, p, len);
        free(p);

        /* Manifests: no entries; a few with a change ID. */
        struct manifest m = {
            .disk = "sda", .disk_size = 5 * CHUNK_SIZE + 7, .chunk_size = CHUNK_SIZE};
        assert(manifest_save(r, "fuzz/m", &m) == 0);
        get(r, "fuzz/m", &p, &len);
        snprintf(name, sizeof(name), "manifest-empty-%s", tag);
        out(argv[1], name, k | 1, p, len);
        free(p);
        m.change_id = "52 aa-1/7";
        m.snapshot_path = "[ds] vm/vm-000001.vmdk";
        for (uint64_t i = 0; i < 6; i += 2) {
            struct chunk_id id;
            memset(id.b, (int)i + 1, HASH_SIZE);
            assert(manifest_append(&m, i, &id) == 0);
        }
        assert(manifest_save(r, "fuzz/m", &m) == 0);
        free(m.e);
        get(r, "fuzz/m", &p, &len);
        snprintf(name, sizeof(name), "manifest-3-%s", tag);
        out(argv[1], name, k | 1, p, len);
        free(p);

        /* A chunk with a hole (sparse container), a dense one, an all-zero one; each packed,
         * the pack's index object kept for kind 2. */
        static uint8_t chunk[CHUNK_SIZE];
        static uint64_t zb[CHUNK_MASK_WORDS];
        struct pack_writer *w;
        assert(pack_writer_new(r, &w) == 0);
        for (int c = 0; c < 3; c++) {
            memset(zb, 0, sizeof(zb));
            size_t clen = c == 2 ? CHUNK_SIZE : CHUNK_SIZE - 100;
            for (size_t i = 0; i < clen; i++)
                chunk[i] = c == 2 ? 0 : (uint8_t)(i * 7 + c);
            if (c == 0) {
                memset(chunk + CHUNK_BLOCK, 0, 3 * CHUNK_BLOCK);
                chunk_mask_set(zb, 1);
                chunk_mask_set(zb, 2);
            }
            struct chunk_id id;
            repo_chunk_id(r, chunk, clen, &id);
            char hex[2 * HASH_SIZE + 1], ident[sizeof("chunk:") + 2 * HASH_SIZE];
            hex_encode(id.b, HASH_SIZE, hex);
            snprintf(ident, sizeof(ident), "chunk:%s", hex);
            const uint8_t *cont;
            size_t contlen;
            assert(container_seal_chunk(r, ident, chunk, clen, c == 1 ? NULL : zb, &cont,
                                        &contlen) == 0);
            uint8_t *f = malloc(HASH_SIZE + contlen);
            memcpy(f, id.b, HASH_SIZE);
            memcpy(f + HASH_SIZE, cont, contlen);
            snprintf(name, sizeof(name), "chunk-%s-%s",
                     c == 0   ? "sparse"
                     : c == 1 ? "dense"
                              : "zero",
                     tag);
            out(argv[1], name, k | 3, f, HASH_SIZE + contlen);
            assert(pack_writer_add(w, &id, cont, contlen, NULL) == 0);
            free(f);
        }
        assert(pack_writer_flush(w, NULL, NULL) == 0);
        pack_writer_free(w);
        /* The one index object the flush wrote: its name, then its bytes. */
        char iname[2 * INDEX_NAME_BYTES + 1] = "";
        assert(store_list(r->store, REPO_INDEX_DIR, index_name, iname) == 0 && iname[0]);
        snprintf(name, sizeof(name), REPO_INDEX_DIR "/%s", iname);
        get(r, name, &p, &len);
        uint8_t *f = malloc(INDEX_NAME_BYTES + len);
        assert(f && hex_decode(iname, f, INDEX_NAME_BYTES) == 0);
        memcpy(f + INDEX_NAME_BYTES, p, len);
        snprintf(name, sizeof(name), "index-3-%s", tag);
        out(argv[1], name, k | 2, f, INDEX_NAME_BYTES + len);
        free(f);
        free(p);
        pack_index_free(r);
        store_close(r->store);
        r->store = NULL;
    }
    return 0;
}
#endif
