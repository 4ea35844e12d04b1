/* Unit tests of repository format 3 (docs/repository-format.md): chunk IDs over the digests of
 * non-zero blocks (the ID of data is the ID of the same data given with a zero-block mask; a
 * one-byte change changes it; equal content from different masks gets equal IDs; the ID
 * matches the documented construction), sparse containers (round trips with and without the
 * mask, the last short block, marked blocks never read: they sit on PROT_NONE pages), forged
 * sparse payloads refused.  On the memory store, plain and encrypted.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/hash.h"
#include "core/log.h"
#include "repo/repo.h"
#include "repo/chunkset.h"
#include "repo/repo_internal.h" /* container_unseal_chunk for forged containers */
#include "repo/store_mem.h"

#define CS      REPO_MIN_CHUNK_SIZE /* 16 blocks of CHUNK_BLOCK */
#define NBLOCKS (CS / CHUNK_BLOCK)
#define PASS    "correct horse battery staple"
#define ERR_LEN 512
#define SHORT   (CS - 1000) /* a last chunk: its last block is short */

struct fixture {
    struct store *s;
    struct repo *r;
};

static struct fixture *fixture_new(const char *pass)
{
    char err[ERR_LEN] = "";
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    struct repo_init_options opt = {.chunk_size = CS, .passphrase = pass};
    assert_int_equal(store_mem_new("v3", &f->s), 0);
    assert_int_equal(repo_init_store(f->s, &opt, err, sizeof(err)), 0);
    if (repo_open_store(f->s, pass, &f->r, err, sizeof(err)) < 0)
        fail_msg("open: %s", err);
    assert_int_equal(repo_format_version(f->r), 3);
    return f;
}

static void fixture_free(struct fixture *f)
{
    repo_close(f->r);
    store_close(f->s);
    free(f);
}

/* A chunk buffer whose blocks are pages of their own (CHUNK_BLOCK is the page size here), so
 * that marked blocks can be made unreadable. */
static uint8_t *pages_new(void)
{
    assert_int_equal(sysconf(_SC_PAGESIZE), CHUNK_BLOCK);
    void *p = mmap(NULL, CS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    return p;
}

static void pages_protect(uint8_t *p, const uint64_t *mask, int prot)
{
    for (size_t k = 0; k < NBLOCKS; k++)
        if (chunk_mask_test(mask, k))
            assert_int_equal(mprotect(p + k * CHUNK_BLOCK, CHUNK_BLOCK, prot), 0);
}

static void fill(uint8_t *p, size_t len, unsigned seed)
{
    uint64_t x = 0x9e3779b97f4a7c15ULL * (seed + 1);
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)(x >> 32);
    }
}

/* A chunk of len bytes with data in blocks 1, 5 and the last one, zeros elsewhere; mask (may
 * be NULL) gets the zero blocks 0, 2, 3 (not all of them: unmarked zero blocks are found by
 * content). */
static void sparse_chunk(uint8_t *p, size_t len, uint64_t *mask)
{
    size_t last = (len - 1) / CHUNK_BLOCK;
    memset(p, 0, len);
    fill(p + 1 * CHUNK_BLOCK, CHUNK_BLOCK, 1);
    fill(p + 5 * CHUNK_BLOCK, CHUNK_BLOCK, 5);
    fill(p + last * CHUNK_BLOCK, len - last * CHUNK_BLOCK, 9);
    if (mask) {
        memset(mask, 0, CHUNK_MASK_WORDS * sizeof(*mask));
        chunk_mask_set(mask, 0);
        chunk_mask_set(mask, 2);
        chunk_mask_set(mask, 3);
    }
}

/* The documented ID of a plain repository's chunk. */
static void id_by_hand(const uint8_t *p, size_t len, struct chunk_id *id)
{
    static uint8_t msg[64 + NBLOCKS * (4 + HASH_SIZE)];
    size_t n = strlen("vmexport-chunk-v3");
    memcpy(msg, "vmexport-chunk-v3", n);
    uint64_t le = htole64(len);
    memcpy(msg + n, &le, 8);
    n += 8;
    for (size_t k = 0; k * CHUNK_BLOCK < len; k++) {
        size_t bl = len - k * CHUNK_BLOCK < CHUNK_BLOCK ? len - k * CHUNK_BLOCK : CHUNK_BLOCK;
        if (buf_is_zero(p + k * CHUNK_BLOCK, bl))
            continue;
        uint32_t k_le = htole32((uint32_t)k);
        memcpy(msg + n, &k_le, 4);
        assert_int_equal(hash_sha256(p + k * CHUNK_BLOCK, bl, msg + n + 4), 0);
        n += 4 + HASH_SIZE;
    }
    assert_int_equal(hash_sha256(msg, n, id->b), 0);
}

static void ids(const char *pass)
{
    struct fixture *f = fixture_new(pass);
    uint8_t *a = pages_new(), *b = pages_new();
    uint64_t mask[CHUNK_MASK_WORDS], other[CHUNK_MASK_WORDS] = {0};
    struct chunk_id plain, masked, changed, from_other;

    for (size_t len = CS; len >= SHORT; len -= CS - SHORT) {
        sparse_chunk(a, len, mask);
        repo_chunk_id(f->r, a, len, &plain);
        if (!pass) {
            struct chunk_id want;
            id_by_hand(a, len, &want);
            assert_memory_equal(plain.b, want.b, HASH_SIZE);
        }
        /* The same content with the mask: marked blocks unreadable, so never read. */
        pages_protect(a, mask, PROT_NONE);
        repo_chunk_id_sparse(f->r, a, len, mask, &masked);
        assert_true(repo_chunk_is_zero(a, CHUNK_BLOCK, mask) == true);
        assert_false(repo_chunk_is_zero(a, len, mask));
        pages_protect(a, mask, PROT_READ | PROT_WRITE);
        assert_memory_equal(plain.b, masked.b, HASH_SIZE);

        /* Equal content, another mask (blocks 3 and 4, one of them not zero by the mask of a
         * would be wrong: only zero blocks may be marked). */
        sparse_chunk(b, len, NULL);
        chunk_mask_set(other, 4);
        chunk_mask_set(other, 6);
        repo_chunk_id_sparse(f->r, b, len, other, &from_other);
        assert_memory_equal(plain.b, from_other.b, HASH_SIZE);

        /* One byte changed: another ID, in a data block and in a zero block. */
        b[5 * CHUNK_BLOCK + 17] ^= 1;
        repo_chunk_id(f->r, b, len, &changed);
        assert_memory_not_equal(plain.b, changed.b, HASH_SIZE);
        b[5 * CHUNK_BLOCK + 17] ^= 1;
        b[2 * CHUNK_BLOCK + 100] = 1;
        repo_chunk_id(f->r, b, len, &changed);
        assert_memory_not_equal(plain.b, changed.b, HASH_SIZE);
        /* The length counts: the same blocks in a longer chunk are another chunk. */
        b[2 * CHUNK_BLOCK + 100] = 0;
        sparse_chunk(b, len, NULL);
        repo_chunk_id(f->r, b, len - 1 > SHORT ? SHORT : CS, &changed);
        assert_memory_not_equal(plain.b, changed.b, HASH_SIZE);
    }
    munmap(a, CS);
    munmap(b, CS);
    fixture_free(f);
}

static void test_ids_plain(void **state)
{
    (void)state;
    ids(NULL);
}

static void test_ids_encrypted(void **state)
{
    (void)state;
    ids(PASS);
}

/* Store through a batch with the mask (marked pages unreadable), then read back: sparse (the
 * mask of the blocks not written) and whole (zeros written). */
static void roundtrip(const char *pass)
{
    struct fixture *f = fixture_new(pass);
    uint8_t *a = pages_new(), *want = malloc(CS), *out = malloc(CS);
    uint64_t mask[CHUNK_MASK_WORDS], got_mask[CHUNK_MASK_WORDS];
    assert_non_null(want);
    assert_non_null(out);

    for (size_t len = CS; len >= SHORT; len -= CS - SHORT) {
        struct chunk_batch *b = NULL;
        struct chunk_id id;
        uint64_t objs0, bytes0, objs1, bytes1, chunks_new, existing, written;
        size_t got = 0;
        sparse_chunk(a, len, mask);
        memcpy(want, a, len);
        store_mem_usage(f->s, &objs0, &bytes0);
        assert_int_equal(repo_chunk_batch_new(f->r, &b), 0);
        pages_protect(a, mask, PROT_NONE);
        repo_chunk_id_sparse(f->r, a, len, mask, &id);
        assert_false(repo_chunk_exists(f->r, &id));
        assert_int_equal(repo_chunk_batch_put_sparse(b, &id, a, len, mask, NULL), 0);
        assert_int_equal(repo_chunk_batch_flush(b), 0);
        pages_protect(a, mask, PROT_READ | PROT_WRITE);
        repo_chunk_batch_stats(b, &chunks_new, &existing, &written);
        repo_chunk_batch_free(b);
        assert_int_equal(chunks_new, 1);
        /* Random data does not compress: the three data blocks and little more are stored. */
        store_mem_usage(f->s, &objs1, &bytes1);
        assert_true(bytes1 - bytes0 < 3 * CHUNK_BLOCK + 1024);
        assert_true(written < 3 * CHUNK_BLOCK + 512);
        assert_true(repo_chunk_exists(f->r, &id));

        memset(out, 0xAA, CS);
        assert_int_equal(repo_chunk_read_sparse(f->r, &id, out, CS, &got, got_mask), 0);
        assert_int_equal(got, len);
        for (size_t k = 0; k * CHUNK_BLOCK < len; k++) {
            size_t bl = len - k * CHUNK_BLOCK < CHUNK_BLOCK ? len - k * CHUNK_BLOCK : CHUNK_BLOCK;
            bool data = k == 1 || k == 5 || k == (len - 1) / CHUNK_BLOCK;
            assert_int_equal(chunk_mask_test(got_mask, k), !data);
            if (data)
                assert_memory_equal(out + k * CHUNK_BLOCK, want + k * CHUNK_BLOCK, bl);
            else
                assert_int_equal(out[k * CHUNK_BLOCK], 0xAA); /* not written */
        }
        memset(out, 0xAA, CS);
        assert_int_equal(repo_chunk_get(f->r, &id, out, CS, &got), 0);
        assert_int_equal(got, len);
        assert_memory_equal(out, want, len);
        assert_int_equal(repo_chunk_read(f->r, &id, out, CS, &got), 0);
        assert_memory_equal(out, want, len);

        /* The same content put without a mask is the same chunk (dedup exact). */
        struct chunk_id again;
        repo_chunk_id(f->r, want, len, &again);
        assert_memory_equal(again.b, id.b, HASH_SIZE);
        bool stored = true;
        assert_int_equal(repo_chunk_put(f->r, &again, want, len, &stored, NULL), 0);
        assert_false(stored);
    }

    /* A chunk whose last short block is the zero one, and a dense chunk (no zero block). */
    memset(want, 0, CS);
    fill(want, (NBLOCKS - 1) * CHUNK_BLOCK, 3);
    for (int dense = 0; dense < 2; dense++) {
        struct chunk_id id;
        size_t got = 0, len = dense ? CS : SHORT;
        if (dense)
            fill(want, CS, 4);
        repo_chunk_id(f->r, want, len, &id);
        assert_int_equal(repo_chunk_put(f->r, &id, want, len, NULL, NULL), 0);
        memset(out, 0xAA, CS);
        assert_int_equal(repo_chunk_read_sparse(f->r, &id, out, CS, &got, got_mask), 0);
        assert_int_equal(got, len);
        for (size_t k = 0; k < NBLOCKS; k++)
            assert_int_equal(chunk_mask_test(got_mask, k), !dense && k == NBLOCKS - 1);
        assert_memory_equal(out, want, dense ? CS : (NBLOCKS - 1) * CHUNK_BLOCK);
        assert_int_equal(repo_chunk_get(f->r, &id, out, CS, &got), 0);
        assert_memory_equal(out, want, len);
    }
    munmap(a, CS);
    free(want);
    free(out);
    fixture_free(f);
}

static void test_sparse_roundtrip_plain(void **state)
{
    (void)state;
    roundtrip(NULL);
}

static void test_sparse_roundtrip_encrypted(void **state)
{
    (void)state;
    roundtrip(PASS);
}

/* A plain format 3 container built by hand: header, payload (not compressed), XXH3-128. */
static size_t forge(uint8_t *out, const char *ident, uint8_t flags, uint64_t len,
                    const uint8_t *payload, size_t plen)
{
    memcpy(out, "VXCK", 4);
    out[4] = 3;
    out[5] = flags;
    out[6] = out[7] = 0;
    uint64_t le = htole64(len);
    memcpy(out + 8, &le, 8);
    memcpy(out + CONTAINER_HEADER_SIZE, payload, plen);
    XXH3_state_t *st = XXH3_createState();
    assert_non_null(st);
    XXH3_128bits_reset(st);
    XXH3_128bits_update(st, out, CONTAINER_HEADER_SIZE);
    XXH3_128bits_update(st, ident, strlen(ident));
    XXH3_128bits_update(st, payload, plen);
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
    XXH3_freeState(st);
    memcpy(out + CONTAINER_HEADER_SIZE + plen, c.digest, sizeof(c.digest));
    return CONTAINER_HEADER_SIZE + plen + sizeof(c.digest);
}

/* Sparse payloads whose bitmap does not match their length are refused (-EBADMSG), also when
 * their checksum is right; a correct one (the control) opens. */
static void test_sparse_forged(void **state)
{
    (void)state;
    struct fixture *f = fixture_new(NULL);
    const char *ident = "chunk:forged";
    static uint8_t payload[CS + 64], file[CS + 256], out[CS];
    const uint8_t SPARSE = 0x04;
    struct {
        const char *what;
        uint64_t len;   /* chunk length in the header */
        uint64_t word0; /* the bitmap (one word: 16 blocks) */
        size_t blocks;  /* bytes of blocks after it */
        int want;
    } cases[] = {
        {"correct: blocks 0 and 3", CS, 0x9, 2 * CHUNK_BLOCK, 0},
        {"correct: only the short last block", SHORT, 1u << 15, SHORT - 15 * CHUNK_BLOCK, 0},
        {"more bits than blocks stored", CS, 0x7, 2 * CHUNK_BLOCK, -EBADMSG},
        {"fewer bits than blocks stored", CS, 0x1, 2 * CHUNK_BLOCK, -EBADMSG},
        {"a bit past the last block", CS - CHUNK_BLOCK, 0x8001, 2 * CHUNK_BLOCK, -EBADMSG},
        {"a full block for the short last one", SHORT, 1u << 15, CHUNK_BLOCK, -EBADMSG},
        {"no room for the bitmap", CS, 0, 0, -EBADMSG},
        {"longer than the chunk size", 2 * CS, 0x1, CHUNK_BLOCK, -EBADMSG},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        size_t head = cases[c].len > CS ? 8 * ((cases[c].len / CHUNK_BLOCK + 63) / 64) : 8;
        uint64_t le = htole64(cases[c].word0);
        memset(payload, 0x5A, sizeof(payload));
        memcpy(payload, &le, 8);
        size_t plen = cases[c].word0 || cases[c].blocks ? head + cases[c].blocks : 4;
        size_t flen = forge(file, ident, SPARSE, cases[c].len, payload, plen);
        size_t got = 0;
        int ret =
            container_unseal_chunk(f->r, ident, file, flen, CS, true, out, sizeof(out), &got, NULL);
        if (ret != cases[c].want)
            fail_msg("%s: %d, want %d", cases[c].what, ret, cases[c].want);
        if (ret == 0)
            assert_int_equal(got, cases[c].len);
    }
    /* A container of another version is refused (format 2 has no sparse flag). */
    uint64_t le = htole64(0x9);
    memcpy(payload, &le, 8);
    size_t flen = forge(file, ident, SPARSE, CS, payload, 8 + 2 * CHUNK_BLOCK);
    size_t got = 0;
    assert_int_equal(
        container_unseal_chunk(f->r, ident, file, flen, CS, true, out, sizeof(out), &got, NULL), 0);
    file[4] = 2;
    assert_int_equal(
        container_unseal_chunk(f->r, ident, file, flen, CS, true, out, sizeof(out), &got, NULL),
        -EBADMSG);
    fixture_free(f);
}

/* ---- packs and the index ---- */

struct count {
    struct store *s;
    const char *prefix;
    unsigned objects;
};

static int count_entry(void *opaque, const struct store_entry *e)
{
    struct count *c = opaque;
    char key[512];
    snprintf(key, sizeof(key), "%s/%s", c->prefix, e->name);
    if (!e->prefix) {
        c->objects++;
        return 0;
    }
    struct count sub = {.s = c->s, .prefix = key};
    int ret = store_list(c->s, key, count_entry, &sub);
    c->objects += sub.objects;
    return ret == -ENOENT ? 0 : ret;
}

/* Objects under prefix, at any depth. */
static unsigned objects_under(struct store *s, const char *prefix)
{
    struct count c = {.s = s, .prefix = prefix};
    int ret = store_list(s, prefix, count_entry, &c);
    assert_true(ret == 0 || ret == -ENOENT);
    return c.objects;
}

static struct repo *reopen(struct fixture *f)
{
    char err[ERR_LEN] = "";
    repo_close(f->r);
    f->r = NULL;
    if (repo_open_store(f->s, NULL, &f->r, err, sizeof(err)) < 0)
        fail_msg("open: %s", err);
    return f->r;
}

/* n chunks of CS pseudo-random bytes (fill from seed on) into one pack: their IDs in ids. */
static void store_random_chunks(struct fixture *f, struct chunk_id *ids, unsigned n, unsigned seed)
{
    static uint8_t buf[CS];
    struct chunk_batch *b = NULL;
    assert_int_equal(repo_chunk_batch_new(f->r, &b), 0);
    for (unsigned i = 0; i < n; i++) {
        fill(buf, CS, seed + i);
        repo_chunk_id(f->r, buf, CS, &ids[i]);
        assert_int_equal(repo_chunk_batch_put(b, &ids[i], buf, CS, NULL), 0);
    }
    assert_int_equal(repo_chunk_batch_flush(b), 0);
    repo_chunk_batch_free(b);
}

/* A backup of VM "vm" whose disk "sda" (n chunks of CS) holds ids[i] at chunk i for i = from,
 * from + step, ... below n, zeros elsewhere. */
static void commit_backup(struct fixture *f, const struct chunk_id *ids, unsigned n, unsigned from,
                          unsigned step)
{
    char err[ERR_LEN] = "";
    struct backup_writer *w = NULL;
    struct manifest m;
    assert_int_equal(repo_backup_begin(f->r, "vm", 1700000000, 0, &w, err, sizeof(err)), 0);
    assert_int_equal(manifest_new(&m, "sda", (uint64_t)n * CS, CS), 0);
    for (unsigned i = from; i < n; i += step)
        assert_int_equal(manifest_append(&m, i, &ids[i]), 0);
    assert_int_equal(repo_backup_add_disk(w, &m), 0);
    struct backup *info = calloc(1, sizeof(*info));
    assert_non_null(info);
    assert_int_equal(repo_backup_commit(w, info), 0);
    backup_free(info);
    manifest_free(&m);
}

#define MANY     5000 /* small chunks: past the index's delta limit (4096) */
#define MANY_LEN 300
#define FLUSHES  5

/* Many chunks through a batch: nothing visible before the flush, everything after; one pack
 * and one index object per flush; found again by a fresh handle (the index loaded from its
 * objects); a chunk read is one store read. */
static void test_packs_batch(void **state)
{
    (void)state;
    struct fixture *f = fixture_new(NULL);
    static uint8_t buf[MANY_LEN], out[CS];
    static struct chunk_id ids[MANY];
    struct chunk_batch *b = NULL;
    assert_int_equal(repo_chunk_batch_new(f->r, &b), 0);
    for (unsigned i = 0; i < MANY; i++) {
        fill(buf, sizeof(buf), 1000 + i);
        repo_chunk_id(f->r, buf, sizeof(buf), &ids[i]);
        assert_int_equal(repo_chunk_batch_put(b, &ids[i], buf, sizeof(buf), NULL), 0);
        /* Put twice: stored once. */
        assert_int_equal(repo_chunk_batch_put(b, &ids[i], buf, sizeof(buf), NULL), 0);
        assert_false(repo_chunk_exists(f->r, &ids[i]));
        if ((i + 1) % (MANY / FLUSHES) == 0) {
            assert_int_equal(repo_chunk_batch_flush(b), 0);
            assert_true(repo_chunk_exists(f->r, &ids[i]));
        }
    }
    uint64_t chunks_new, existing, written;
    repo_chunk_batch_stats(b, &chunks_new, &existing, &written);
    repo_chunk_batch_free(b);
    assert_int_equal(chunks_new, MANY);
    assert_int_equal(existing, MANY);
    assert_int_equal(objects_under(f->s, REPO_PACKS_DIR), FLUSHES);
    assert_int_equal(objects_under(f->s, REPO_INDEX_DIR), FLUSHES);
    assert_int_equal(objects_under(f->s, "chunks"), 0);
    for (unsigned i = 0; i < MANY; i++)
        assert_true(repo_chunk_exists(f->r, &ids[i]));

    reopen(f);
    size_t len = 0;
    for (unsigned i = 0; i < MANY; i += 97) {
        assert_int_equal(repo_chunk_get(f->r, &ids[i], out, sizeof(out), &len), 0);
        fill(buf, sizeof(buf), 1000 + i);
        assert_int_equal(len, MANY_LEN);
        assert_memory_equal(out, buf, len);
    }
    /* With the index loaded, reading a chunk is one store read: a failure armed at the second
     * read does not fire. */
    store_mem_fault(f->s, STORE_FAULT_GET, 2);
    assert_int_equal(repo_chunk_read(f->r, &ids[7], out, sizeof(out), &len), 0);
    assert_false(store_mem_fault_fired(f->s));
    store_mem_fault(f->s, STORE_FAULT_NONE, 0);

    /* foreach sees each chunk once; delete repacks the chunk's pack without it. */
    assert_int_equal(repo_chunk_delete(f->r, &ids[3]), 0);
    assert_false(repo_chunk_exists(f->r, &ids[3]));
    assert_int_equal(repo_chunk_get(f->r, &ids[3], out, sizeof(out), &len), -ENOENT);
    assert_int_equal(repo_chunk_delete(f->r, &ids[3]), -ENOENT);
    assert_int_equal(repo_chunk_get(f->r, &ids[4], out, sizeof(out), &len), 0);
    assert_int_equal(objects_under(f->s, REPO_PACKS_DIR), FLUSHES);
    assert_int_equal(objects_under(f->s, REPO_INDEX_DIR), 1); /* gc writes one index */
    reopen(f);
    for (unsigned i = 0; i < MANY; i++)
        assert_true(repo_chunk_exists(f->r, &ids[i]) == (i != 3));
    fixture_free(f);
}

/* gc on packs: a backup references every other chunk of a pack; gc repacks the live ones into
 * a new pack (the old one deleted), deletes a pack with nothing live, and a pack no index names
 * (a crash between a pack's commit and its index) goes too. */
static void test_gc_repack(void **state)
{
    (void)state;
    struct fixture *f = fixture_new(NULL);
    enum { N = 12 };
    static uint8_t buf[CS], out[CS];
    struct chunk_id ids[N], gone[N];
    char err[ERR_LEN] = "";
    store_random_chunks(f, ids, N, 50);
    store_random_chunks(f, gone, N, 500); /* a second pack, all dead */
    /* An orphan: a pack committed whose index was never written. */
    static const uint8_t junk[100] = {1};
    assert_int_equal(
        store_put(f->s, "packs/ab/ab00000000000000000000000000000000000000000000000000000000000000",
                  junk, sizeof(junk), STORE_PUT_CREATE, NULL),
        0);
    assert_int_equal(objects_under(f->s, REPO_PACKS_DIR), 3);
    commit_backup(f, ids, N, 0, 2); /* odd chunks: zeros (no entry) */

    struct gc_stats gs;
    assert_int_equal(repo_gc(f->r, true, &gs, err, sizeof(err)), 0); /* dry run: counts */
    assert_int_equal(gs.chunks_total, 2 * N);
    assert_int_equal(gs.chunks_deleted, N + N / 2);
    assert_int_equal(objects_under(f->s, REPO_PACKS_DIR), 3);
    assert_int_equal(repo_gc(f->r, false, &gs, err, sizeof(err)), 0);
    assert_int_equal(gs.chunks_deleted, N + N / 2);
    assert_true(gs.bytes_freed > (uint64_t)N * CS);           /* random data: incompressible */
    assert_int_equal(objects_under(f->s, REPO_PACKS_DIR), 1); /* the repacked one */
    assert_int_equal(objects_under(f->s, REPO_INDEX_DIR), 1);
    reopen(f);
    for (unsigned i = 0; i < N; i++) {
        size_t len = 0;
        assert_false(repo_chunk_exists(f->r, &gone[i]));
        if (i % 2) {
            assert_false(repo_chunk_exists(f->r, &ids[i]));
            continue;
        }
        assert_int_equal(repo_chunk_get(f->r, &ids[i], out, sizeof(out), &len), 0);
        fill(buf, CS, 50 + i);
        assert_memory_equal(out, buf, CS);
    }
    /* Nothing left for another gc. */
    assert_int_equal(repo_gc(f->r, false, &gs, err, sizeof(err)), 0);
    assert_int_equal(gs.chunks_deleted, 0);
    assert_int_equal(gs.bytes_freed, 0);
    fixture_free(f);
}

struct first_pack {
    struct store *s;
    char key[256];
};

static int first_pack_entry(void *opaque, const struct store_entry *e)
{
    struct first_pack *fp = opaque;
    char dir[64];
    snprintf(dir, sizeof(dir), REPO_PACKS_DIR "/%s", e->name);
    return snprintf(fp->key, sizeof(fp->key), "%s", dir) > 0 ? 1 : -EIO;
}

static int first_object_entry(void *opaque, const struct store_entry *e)
{
    struct first_pack *fp = opaque;
    size_t n = strlen(fp->key);
    snprintf(fp->key + n, sizeof(fp->key) - n, "/%s", e->name);
    return 1;
}

/* A damaged byte in a pack: the chunk it falls in is refused (-EBADMSG) by get and read, its
 * neighbours in the same pack still read; a truncated pack makes the chunks past the cut
 * -EBADMSG, not wrong data. */
static void test_pack_damage(void **state)
{
    (void)state;
    struct fixture *f = fixture_new(NULL);
    enum { N = 4 };
    static uint8_t buf[CS], out[CS];
    struct chunk_id ids[N];
    store_random_chunks(f, ids, N, 70);

    struct first_pack fp = {.s = f->s};
    assert_int_equal(store_list(f->s, REPO_PACKS_DIR, first_pack_entry, &fp), 1);
    assert_int_equal(store_list(f->s, fp.key, first_object_entry, &fp), 1);
    uint8_t *pack = NULL;
    size_t plen = 0;
    assert_int_equal(store_get(f->s, fp.key, UINT64_MAX, &pack, &plen), 0);
    assert_true(plen > N * CS); /* random data is stored raw */
    /* Chunks are stored in the order put: the second one covers [CS + header, 2 CS + ...). */
    pack[CS + CS / 2] ^= 0x40;
    assert_int_equal(store_put(f->s, fp.key, pack, plen, STORE_PUT_REPLACE, NULL), 0);
    size_t len = 0;
    int bad = -1;
    for (unsigned i = 0; i < N; i++) {
        int g = repo_chunk_get(f->r, &ids[i], out, sizeof(out), &len);
        int rd = repo_chunk_read(f->r, &ids[i], out, sizeof(out), &len);
        if (g == -EBADMSG) {
            assert_int_equal(rd, -EBADMSG);
            assert_int_equal(bad, -1);
            bad = (int)i;
            continue;
        }
        assert_int_equal(g, 0);
        assert_int_equal(rd, 0);
        fill(buf, CS, 70 + i);
        assert_memory_equal(out, buf, CS);
    }
    assert_int_equal(bad, 1);
    /* Cut in the third chunk: it and the fourth are refused. */
    assert_int_equal(store_put(f->s, fp.key, pack, 2 * CS + CS / 2, STORE_PUT_REPLACE, NULL), 0);
    assert_int_equal(repo_chunk_get(f->r, &ids[0], out, sizeof(out), &len), 0);
    assert_int_equal(repo_chunk_get(f->r, &ids[2], out, sizeof(out), &len), -EBADMSG);
    assert_int_equal(repo_chunk_read(f->r, &ids[3], out, sizeof(out), &len), -EBADMSG);
    free(pack);
    fixture_free(f);
}

/* A big pack with a few dead chunks is kept as it is (repacking 16 MiB to free a little is not
 * worth it): the dead chunks leave the index (not found, counted deleted), their bytes stay
 * until more of the pack dies; the next gc finds nothing to do. */
static void test_gc_keeps_mostly_live(void **state)
{
    (void)state;
    struct fixture *f = fixture_new(NULL);
    enum { N = 80, DEAD = 3 }; /* 80 x 64 KiB random: a 5 MiB pack, above the small limit */
    static uint8_t buf[CS], out[CS];
    static struct chunk_id ids[N];
    char err[ERR_LEN] = "";
    store_random_chunks(f, ids, N, 900);
    uint64_t objs0, bytes0, objs1, bytes1;
    commit_backup(f, ids, N, DEAD, 1);
    store_mem_usage(f->s, &objs0, &bytes0);

    struct gc_stats gs;
    assert_int_equal(repo_gc(f->r, false, &gs, err, sizeof(err)), 0);
    assert_int_equal(gs.chunks_total, N);
    assert_int_equal(gs.chunks_deleted, DEAD);
    assert_int_equal(gs.bytes_freed, 0);
    store_mem_usage(f->s, &objs1, &bytes1);
    assert_true(bytes1 + (uint64_t)DEAD * 64 > bytes0 && bytes1 < bytes0); /* the index shrank */
    assert_int_equal(objects_under(f->s, REPO_PACKS_DIR), 1);
    reopen(f);
    for (unsigned i = 0; i < N; i++) {
        size_t len = 0;
        if (i < DEAD) {
            assert_false(repo_chunk_exists(f->r, &ids[i]));
            continue;
        }
        assert_int_equal(repo_chunk_read(f->r, &ids[i], out, sizeof(out), &len), 0);
        fill(buf, CS, 900 + i);
        assert_memory_equal(out, buf, CS);
    }
    assert_int_equal(repo_gc(f->r, false, &gs, err, sizeof(err)), 0);
    assert_int_equal(gs.chunks_deleted, 0);
    assert_int_equal(gs.bytes_freed, 0);
    fixture_free(f);
}

/* ---- format 2 written by the code before format 3 ---- */

#define FIX_CS   65536u
#define FIX_SIZE (3 * FIX_CS + 1000)

/* The disk tests/fixtures/repo-v2-unit/make-fixture.c backed up. */
static void fixture_disk(uint8_t *p)
{
    static const char text[] = "vmexport format 2 fixture ";
    for (size_t i = 0; i < FIX_CS; i++)
        p[i] = (uint8_t)text[i % (sizeof(text) - 1)];
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (size_t i = FIX_CS; i < 2 * FIX_CS; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)(x >> 32);
    }
    memset(p + 2 * FIX_CS, 0, FIX_CS);
    for (size_t i = 3 * FIX_CS; i < FIX_SIZE; i++)
        p[i] = (uint8_t)('a' + i % 26);
}

/* The fixture repositories (plain and encrypted) restore bit-exact, verify, and stay format 2
 * when written to: a new chunk is a file of its own under chunks/. */
static void test_v2_fixture(void **state)
{
    (void)state;
    static uint8_t disk[FIX_SIZE], out[FIX_CS], more[FIX_CS];
    fixture_disk(disk);
    for (int enc = 0; enc < 2; enc++) {
        char tmpl[] = "/tmp/vmexport-test-v2-XXXXXX", cmd[512], err[ERR_LEN] = "";
        assert_non_null(mkdtemp(tmpl));
        snprintf(cmd, sizeof(cmd), "cp -r '%s/repo-v2-unit/%s' '%s/repo'", VMEXPORT_FIXTURES,
                 enc ? "encrypted" : "plain", tmpl);
        assert_int_equal(system(cmd), 0);
        char path[256];
        snprintf(path, sizeof(path), "%s/repo", tmpl);
        struct repo *r = NULL;
        if (repo_open(path, enc ? "fixture" : NULL, &r, err, sizeof(err)) < 0)
            fail_msg("open the fixture: %s", err);
        assert_int_equal(repo_format_version(r), 2);
        backup_list l = VECTOR_INIT;
        assert_int_equal(repo_backup_list(r, "vm1", &l), 0);
        assert_int_equal(l.len, 1);
        assert_string_equal(l.ptr[0]->snapshot_id, "fixture-snapshot");
        struct manifest m;
        assert_int_equal(repo_manifest_read(r, l.ptr[0], "sda", &m), 0);
        assert_int_equal(m.disk_size, FIX_SIZE);
        assert_int_equal(m.n_entries, 3); /* chunk 2 is zeros */
        static const uint64_t idx[] = {0, 1, 3};
        for (size_t k = 0; k < m.n_entries; k++) {
            size_t len = 0, want = idx[k] == 3 ? 1000 : FIX_CS;
            uint64_t mask[CHUNK_MASK_WORDS];
            assert_int_equal(m.e[k].idx, idx[k]);
            assert_int_equal(repo_chunk_get(r, &m.e[k].id, out, sizeof(out), &len), 0);
            assert_int_equal(len, want);
            assert_memory_equal(out, disk + idx[k] * FIX_CS, len);
            assert_int_equal(repo_chunk_read_sparse(r, &m.e[k].id, out, sizeof(out), &len, mask),
                             0);
            assert_memory_equal(out, disk + idx[k] * FIX_CS, len);
        }
        manifest_free(&m);
        backup_list_free(&l);

        /* Written in its own layout. */
        struct chunk_id id;
        char hex[2 * HASH_SIZE + 1], file[512];
        struct stat st;
        fill(more, sizeof(more), 4242);
        repo_chunk_id(r, more, sizeof(more), &id);
        assert_int_equal(repo_chunk_put(r, &id, more, sizeof(more), NULL, NULL), 0);
        chunk_id_to_hex(&id, hex);
        snprintf(file, sizeof(file), "%s/chunks/%.2s/%s", path, hex, hex);
        assert_int_equal(stat(file, &st), 0);
        snprintf(file, sizeof(file), "%s/packs", path);
        assert_int_not_equal(stat(file, &st), 0);
        repo_close(r);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpl);
        assert_int_equal(system(cmd), 0);
    }
}

/* A million chunks in bounded memory: a chunk set on the index keeps the values of indexed IDs
 * in the index's entries (no table: verify holds no second copy of the IDs), others in its
 * table; freeing it clears them.  A batch counts each pending chunk as at least 4 KiB. */
static void test_set_on_index(void **state)
{
    (void)state;
    struct fixture *f = fixture_new(NULL);
    static uint8_t buf[CS];
    struct chunk_id ids[8], other;
    struct chunk_batch *b = NULL;
    uint64_t pending = 0;
    assert_int_equal(repo_chunk_batch_new(f->r, &b), 0);
    for (unsigned i = 0; i < 8; i++) {
        memset(buf, 0, sizeof(buf));
        buf[0] = (uint8_t)(i + 1); /* tiny containers */
        repo_chunk_id(f->r, buf, sizeof(buf), &ids[i]);
        assert_int_equal(repo_chunk_batch_put(b, &ids[i], buf, sizeof(buf), &pending), 0);
    }
    assert_true(pending >= 8 * 4096);
    assert_int_equal(repo_chunk_batch_flush(b), 0);
    repo_chunk_batch_free(b);
    memset(other.b, 0x5a, sizeof(other.b));

    struct chunk_set s = CHUNK_SET_INIT;
    chunk_set_use_index(&s, f->r);
    for (unsigned i = 0; i < 8; i++)
        assert_int_equal(chunk_set_put(&s, &ids[i], i % 2 ? CHUNK_STATE_OK : CHUNK_STATE_BAD), 0);
    assert_int_equal(chunk_set_add(&s, &ids[1]), 0);
    assert_int_equal(s.cap, 0); /* nothing in the table */
    assert_int_equal(chunk_set_len(&s), 8);
    for (unsigned i = 0; i < 8; i++)
        assert_int_equal(chunk_set_get(&s, &ids[i]), i % 2 ? CHUNK_STATE_OK : CHUNK_STATE_BAD);
    assert_int_equal(chunk_set_get(&s, &other), CHUNK_STATE_UNKNOWN);
    assert_int_equal(chunk_set_put(&s, &other, -2), 0); /* not indexed: the table */
    assert_true(s.cap > 0);
    assert_int_equal(chunk_set_get(&s, &other), -2);
    assert_int_equal(chunk_set_len(&s), 9);
    chunk_set_free(&s);
    /* A new set sees none of the old values. */
    chunk_set_use_index(&s, f->r);
    for (unsigned i = 0; i < 8; i++)
        assert_int_equal(chunk_set_get(&s, &ids[i]), CHUNK_STATE_UNKNOWN);
    assert_int_equal(chunk_set_get(&s, &other), CHUNK_STATE_UNKNOWN);
    chunk_set_free(&s);
    fixture_free(f);
}

int main(void)
{
    log_set_level(LOG_LEVEL_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_plain),
        cmocka_unit_test(test_ids_encrypted),
        cmocka_unit_test(test_sparse_roundtrip_plain),
        cmocka_unit_test(test_sparse_roundtrip_encrypted),
        cmocka_unit_test(test_sparse_forged),
        cmocka_unit_test(test_packs_batch),
        cmocka_unit_test(test_gc_repack),
        cmocka_unit_test(test_pack_damage),
        cmocka_unit_test(test_gc_keeps_mostly_live),
        cmocka_unit_test(test_v2_fixture),
        cmocka_unit_test(test_set_on_index),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
