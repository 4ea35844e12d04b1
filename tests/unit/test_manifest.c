/* Unit tests of manifests (src/repo/manifest.c): the sparse in-memory form (append, find), the
 * dense encoding of format versions 1 and 2 byte for byte as documented, and the segmented
 * stream of format 3 (forced on a repository here): round trips across several segments, a
 * stored size that follows the entries and not the disk, and damaged streams refused.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <endian.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/hex.h"
#include "repo/repo.h"
#include "repo/repo_internal.h" /* manifest_encode/save/load, the format version to force */
#include "repo/store.h"
#include "repo/store_mem.h"
#include "repo/stream.h"

#define ERR_LEN     512
#define PASS        "manifest test passphrase"
#define CS          REPO_MIN_CHUNK_SIZE
#define BIG_CS      REPO_DEFAULT_CHUNK_SIZE
#define TIB         ((uint64_t)1 << 40)
#define KEY         "backups/m.manifest"
#define MANY        150000 /* entries: three segments of at most 65,536 */
#define MAX_OBJ     ((uint64_t)1 << 30)
#define FEW         10
#define SMALL_OBJ   4096 /* a v3 manifest of FEW entries of a 64 TiB disk stays under this */
#define ENTRY_BYTES (sizeof(uint64_t) + HASH_SIZE)

static struct repo *open_repo(struct store **s, bool encrypted, unsigned version)
{
    char err[ERR_LEN];
    struct repo *r;
    struct repo_init_options opt = {.chunk_size = CS, .passphrase = encrypted ? PASS : NULL};
    assert_int_equal(store_mem_new("manifest", s), 0);
    assert_int_equal(repo_init_store(*s, &opt, err, sizeof(err)), 0);
    assert_int_equal(repo_open_store(*s, encrypted ? PASS : NULL, &r, err, sizeof(err)), 0);
    r->format_version = version; /* what a repository of that version reads and writes */
    return r;
}

static void close_repo(struct repo *r, struct store *s)
{
    repo_close(r);
    store_close(s);
}

static void id_of(uint64_t i, struct chunk_id *id)
{
    for (size_t k = 0; k < HASH_SIZE; k++)
        id->b[k] = (uint8_t)((i >> (8 * (k % 8))) ^ (k * 31));
}

static void test_sparse_api(void **state)
{
    (void)state;
    struct manifest m;
    struct chunk_id id;
    assert_int_equal(manifest_new(&m, "sda", 64 * TIB, BIG_CS), 0);
    assert_int_equal(manifest_chunks(&m), 64 * TIB / BIG_CS);
    assert_int_equal(m.n_entries, 0);
    for (uint64_t i = 0; i < 1000; i++) {
        id_of(i * 7919, &id);
        assert_int_equal(manifest_append(&m, i * 7919, &id), 0);
    }
    id_of(0, &id);
    assert_int_equal(manifest_append(&m, 999 * 7919, &id), -EINVAL);          /* repeated */
    assert_int_equal(manifest_append(&m, 5, &id), -EINVAL);                   /* out of order */
    assert_int_equal(manifest_append(&m, manifest_chunks(&m), &id), -EINVAL); /* beyond */
    for (uint64_t i = 0; i < 1000 * 7919; i += 1000) {
        const struct manifest_entry *e = manifest_find(&m, i);
        assert_int_equal(e != NULL, i % 7919 == 0);
        if (e) {
            id_of(i, &id);
            assert_memory_equal(e->id.b, id.b, HASH_SIZE);
        }
    }
    assert_int_equal(manifest_lower_bound(&m, 1), 1);
    assert_int_equal(manifest_lower_bound(&m, 7919), 1);
    assert_int_equal(manifest_lower_bound(&m, UINT64_MAX), 1000);
    /* Memory follows the entries: the last chunk of a 64 TiB disk is as cheap as the first. */
    assert_true(m.cap_entries < 4096);
    assert_int_equal(manifest_chunk_len(&m, manifest_chunks(&m) - 1), BIG_CS);
    manifest_free(&m);

    assert_int_equal(manifest_new(&m, "sdb", 3 * (uint64_t)CS + 100, CS), 0);
    assert_int_equal(manifest_chunks(&m), 4);
    assert_int_equal(manifest_chunk_len(&m, 3), 100);
    manifest_free(&m);
}

/* The documented example (docs/repository-format.md, "Manifests"), byte for byte. */
static void test_dense_encoding_documented(void **state)
{
    (void)state;
    static const char doc_hex[] = "5658"
                                  "4d4601000000640003000000000000000100000000000400000000000000"
                                  "03000000736461020000006331060000002f732f73646100015c01f6a8c98d"
                                  "c84654c356a9bd0420a808cfb93ebe33edf2416193661b9423d10000";
    uint8_t want[sizeof(doc_hex) / 2];
    assert_int_equal(hex_decode(doc_hex, want, sizeof(want)), 0);
    struct manifest m, back;
    struct chunk_id id;
    memcpy(id.b, want + sizeof(want) - 2 - HASH_SIZE, HASH_SIZE);
    assert_int_equal(manifest_new(&m, "sda", 196708, CS), 0);
    m.change_id = strdup("c1");
    m.snapshot_path = strdup("/s/sda");
    assert_int_equal(manifest_append(&m, 1, &id), 0);
    uint8_t *enc;
    size_t len;
    assert_int_equal(manifest_encode(&m, &enc, &len), 0);
    assert_int_equal(len, sizeof(want));
    assert_memory_equal(enc, want, len);

    /* Decoded into the sparse form and encoded again: the same bytes. */
    assert_int_equal(manifest_decode(enc, len, &back), 0);
    assert_int_equal(back.n_entries, 1);
    assert_int_equal(back.e[0].idx, 1);
    uint8_t *again;
    size_t len2;
    assert_int_equal(manifest_encode(&back, &again, &len2), 0);
    assert_int_equal(len2, len);
    assert_memory_equal(again, enc, len);
    free(again);
    free(enc);
    manifest_free(&back);
    manifest_free(&m);
}

/* A manifest of n entries spread over a disk of size bytes. */
static void manifest_make(struct manifest *m, uint64_t size, uint32_t cs, size_t n)
{
    assert_int_equal(manifest_new(m, "vda", size, cs), 0);
    m->change_id = strdup("change-7");
    uint64_t chunks = manifest_chunks(m), step = chunks / n;
    for (size_t k = 0; k < n; k++) {
        struct chunk_id id;
        id_of(k * step + k % 3, &id);
        assert_int_equal(manifest_append(m, k * step + k % 3, &id), 0);
    }
}

static void assert_same(const struct manifest *a, const struct manifest *b)
{
    assert_string_equal(a->disk, b->disk);
    assert_int_equal(a->disk_size, b->disk_size);
    assert_int_equal(a->chunk_size, b->chunk_size);
    assert_true(!a->change_id == !b->change_id);
    if (a->change_id)
        assert_string_equal(a->change_id, b->change_id);
    assert_true(!a->snapshot_path == !b->snapshot_path);
    assert_int_equal(a->n_entries, b->n_entries);
    for (size_t k = 0; k < a->n_entries; k++) {
        assert_int_equal(a->e[k].idx, b->e[k].idx);
        assert_memory_equal(a->e[k].id.b, b->e[k].id.b, HASH_SIZE);
    }
}

static void v3_round_trip(bool encrypted)
{
    struct store *s;
    struct repo *r = open_repo(&s, encrypted, 3);
    struct manifest m, back;
    manifest_make(&m, 64 * TIB, CS, MANY);
    assert_int_equal(manifest_save(r, KEY, &m), 0);
    assert_int_equal(manifest_load(r, KEY, &back), 0);
    assert_same(&m, &back);
    manifest_free(&back);
    manifest_free(&m);

    /* A few entries of a 64 TiB disk: a small object (a dense one would hold 2^30 entries). */
    struct store_stat st;
    manifest_make(&m, 64 * TIB, CS, FEW);
    assert_int_equal(manifest_save(r, KEY, &m), 0);
    assert_int_equal(store_stat(s, KEY, &st), 0);
    assert_true(st.size < SMALL_OBJ);
    assert_int_equal(manifest_load(r, KEY, &back), 0);
    assert_same(&m, &back);
    manifest_free(&back);

    /* A v3 stream is not a v2 container and the other way round: refused, never misread. */
    r->format_version = 2;
    assert_int_equal(manifest_load(r, KEY, &back), -EBADMSG);
    assert_int_equal(manifest_save(r, KEY, &m), 0);
    r->format_version = 3;
    assert_int_equal(manifest_load(r, KEY, &back), -EBADMSG);
    manifest_free(&m);
    close_repo(r, s);
}

static void test_v3_round_trip_plain(void **state)
{
    (void)state;
    v3_round_trip(false);
}

static void test_v3_round_trip_encrypted(void **state)
{
    (void)state;
    v3_round_trip(true);
}

static uint8_t *put_u64(uint8_t *p, uint64_t v)
{
    v = htole64(v);
    memcpy(p, &v, sizeof(v));
    return p + sizeof(v);
}

/* A stream of the header of m and the entry segments given (idx lists; n per segment), with
 * items as the end segment's count; 0 or the load's error. */
static int load_crafted(struct repo *r, const struct manifest *m, bool header, const uint64_t *idx,
                        const size_t *per, size_t nseg, uint64_t items)
{
    struct stream_writer *w;
    struct manifest back;
    assert_int_equal(stream_writer_new(r, KEY, &w), 0);
    if (header) {
        /* The header as the encoder writes it: save m, take its first segment. */
        struct stream_reader *rd;
        const uint8_t *p;
        size_t len;
        assert_int_equal(manifest_save(r, KEY, m), 0);
        assert_int_equal(stream_reader_open(r, KEY, MAX_OBJ, &rd), 0);
        assert_int_equal(stream_reader_next(rd, &p, &len), 1);
        assert_int_equal(stream_writer_add(w, p, len), 0);
        stream_reader_free(rd);
    }
    for (size_t g = 0, at = 0; g < nseg; g++) {
        uint8_t buf[8 * ENTRY_BYTES], *p = buf;
        assert_true(per[g] <= 8);
        for (size_t k = 0; k < per[g]; k++, at++) {
            struct chunk_id id;
            id_of(idx[at], &id);
            p = put_u64(p, idx[at]);
            memcpy(p, id.b, HASH_SIZE);
            p += HASH_SIZE;
        }
        assert_int_equal(stream_writer_add(w, buf, (size_t)(p - buf)), 0);
    }
    assert_int_equal(stream_writer_put(w, items, STORE_PUT_REPLACE), 0);
    stream_writer_free(w);
    int ret = manifest_load(r, KEY, &back);
    manifest_free(&back);
    return ret;
}

static void test_v3_damaged(void **state)
{
    (void)state;
    struct store *s;
    struct repo *r = open_repo(&s, false, 3);
    struct manifest m;
    assert_int_equal(manifest_new(&m, "vda", 10 * (uint64_t)CS, CS), 0);
    static const uint64_t ok[] = {1, 4, 9};
    static const uint64_t unordered[] = {4, 1, 9};
    static const uint64_t repeated[] = {1, 4, 4};
    static const uint64_t beyond[] = {1, 4, 10};
    static const size_t two_one[] = {2, 1}, empty_seg[] = {2, 0, 1};

    assert_int_equal(load_crafted(r, &m, true, ok, two_one, 2, 3), 0);
    assert_int_equal(load_crafted(r, &m, true, ok, two_one, 2, 2), -EBADMSG);  /* count */
    assert_int_equal(load_crafted(r, &m, false, ok, two_one, 2, 3), -EBADMSG); /* no header */
    assert_int_equal(load_crafted(r, &m, true, unordered, two_one, 2, 3), -EBADMSG);
    assert_int_equal(load_crafted(r, &m, true, repeated, two_one, 2, 3), -EBADMSG);
    assert_int_equal(load_crafted(r, &m, true, beyond, two_one, 2, 3), -EBADMSG);
    assert_int_equal(load_crafted(r, &m, true, ok, empty_seg, 3, 3), -EBADMSG);

    /* An entry segment cut inside an entry. */
    struct stream_writer *w;
    struct manifest back;
    assert_int_equal(manifest_save(r, KEY, &m), 0);
    struct stream_reader *rd;
    const uint8_t *p;
    size_t len;
    assert_int_equal(stream_reader_open(r, KEY, MAX_OBJ, &rd), 0);
    assert_int_equal(stream_reader_next(rd, &p, &len), 1);
    assert_int_equal(stream_writer_new(r, KEY, &w), 0);
    assert_int_equal(stream_writer_add(w, p, len), 0);
    stream_reader_free(rd);
    uint8_t part[ENTRY_BYTES - 1] = {0};
    assert_int_equal(stream_writer_add(w, part, sizeof(part)), 0);
    assert_int_equal(stream_writer_put(w, 0, STORE_PUT_REPLACE), 0);
    stream_writer_free(w);
    assert_int_equal(manifest_load(r, KEY, &back), -EBADMSG);
    manifest_free(&m);
    close_repo(r, s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sparse_api),
        cmocka_unit_test(test_dense_encoding_documented),
        cmocka_unit_test(test_v3_round_trip_plain),
        cmocka_unit_test(test_v3_round_trip_encrypted),
        cmocka_unit_test(test_v3_damaged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
