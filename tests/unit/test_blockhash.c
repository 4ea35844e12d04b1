/* Unit tests of the block-hash sidecars (src/fs/blockhash.c): the two digests against known
 * values (computed with Python's hashlib and xxhash modules), writer and reader round trips for
 * both, and every way a sidecar header can be wrong: refused as damaged (-EBADMSG) or stale
 * (-ESTALE), never half-read.
 *
 * Every test works in its own mkdtemp() directory in $TMPDIR (default /tmp), removed after.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "fs/blockhash.h"

#define BS        4096u /* block size of the test sidecars */
#define NBLOCKS   4     /* the data file: 3.5 blocks */
#define DATA_SIZE (3 * BS + BS / 2)

/* Header field offsets (docs/repository-format.md; the code has its own struct). */
#define H_VERSION    8
#define H_BLOCK_SIZE 12
#define H_FILE_SIZE  16
#define H_NBLOCKS    48
#define H_ALGO       56
#define H_SIZE       64

struct fixture {
    char dir[256];
    char data[PATH_MAX];
    char side[PATH_MAX];
    int fd;                      /* the data file, open */
    uint8_t bytes[NBLOCKS * BS]; /* the data, zero-padded to whole blocks */
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(f->dir, sizeof(f->dir), "%s/vx-blockhash-XXXXXX", tmp);
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->data, sizeof(f->data), "%s/disk.raw", f->dir);
    snprintf(f->side, sizeof(f->side), "%s/disk.raw" BLOCKHASH_SUFFIX, f->dir);
    srand(7);
    for (size_t i = 0; i < DATA_SIZE; i++)
        f->bytes[i] = (uint8_t)rand();
    memset(f->bytes + BS, 0, BS); /* block 1 is all zeros */
    f->fd = open(f->data, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (f->fd < 0 || pwrite(f->fd, f->bytes, DATA_SIZE, 0) != DATA_SIZE)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[512];
    close(f->fd);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

static void hex(const uint8_t *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void check_digest(enum blockhash_algo algo, const void *data, size_t len, const char *want)
{
    uint8_t d[BLOCKHASH_MAX_DIGEST];
    char got[2 * BLOCKHASH_MAX_DIGEST + 1];
    assert_int_equal(blockhash_digest(algo, data, len, d), 0);
    hex(d, blockhash_digest_size(algo), got);
    assert_string_equal(got, want);
}

static void test_names(void **state)
{
    (void)state;
    enum blockhash_algo a = 0;
    assert_int_equal(blockhash_algo_parse("xxh128", &a), 0);
    assert_int_equal(a, BLOCKHASH_XXH128);
    assert_int_equal(blockhash_algo_parse("sha256", &a), 0);
    assert_int_equal(a, BLOCKHASH_SHA256);
    const char *bad[] = {"", "SHA256", "xxh3", "xxh128 ", "md5"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        a = BLOCKHASH_XXH128;
        assert_int_equal(blockhash_algo_parse(bad[i], &a), -EINVAL);
        assert_int_equal(a, BLOCKHASH_XXH128); /* untouched */
    }
    assert_string_equal(blockhash_algo_name(BLOCKHASH_XXH128), "xxh128");
    assert_string_equal(blockhash_algo_name(BLOCKHASH_SHA256), "sha256");
    assert_int_equal(blockhash_digest_size(BLOCKHASH_XXH128), 16);
    assert_int_equal(blockhash_digest_size(BLOCKHASH_SHA256), 32);
    assert_int_equal(BLOCKHASH_DEFAULT, BLOCKHASH_XXH128);
}

static void test_known_digests(void **state)
{
    (void)state;
    static const uint8_t zeros[BS];
    check_digest(BLOCKHASH_XXH128, "", 0, "99aa06d3014798d86001c324468d497f");
    check_digest(BLOCKHASH_XXH128, "abc", 3, "06b05ab6733a618578af5f94892f3950");
    check_digest(BLOCKHASH_XXH128, zeros, BS, "3ee8dc4f9e7ee49593d76fe148c689ba");
    check_digest(BLOCKHASH_SHA256, "abc", 3,
                 "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /* The zero digest is the digest of zeros, for both, at several lengths. */
    const enum blockhash_algo algos[] = {BLOCKHASH_XXH128, BLOCKHASH_SHA256};
    const size_t lens[] = {BS, 65536, 1};
    for (size_t a = 0; a < ARRAY_SIZE(algos); a++) {
        for (size_t l = 0; l < ARRAY_SIZE(lens); l++) {
            uint8_t z[BLOCKHASH_MAX_DIGEST], d[BLOCKHASH_MAX_DIGEST];
            CLEANUP_FREE uint8_t *buf = calloc(1, lens[l]);
            assert_non_null(buf);
            assert_int_equal(blockhash_zero_digest(algos[a], lens[l], z), 0);
            assert_int_equal(blockhash_digest(algos[a], buf, lens[l], d), 0);
            assert_memory_equal(z, d, blockhash_digest_size(algos[a]));
        }
    }
    uint8_t d[BLOCKHASH_MAX_DIGEST];
    assert_int_equal(blockhash_digest((enum blockhash_algo)3, "abc", 3, d), -EINVAL);
}

/* Write the fixture's sidecar with algo: a digest per block, the last one zero-padded. */
static void write_sidecar(struct fixture *f, enum blockhash_algo algo)
{
    struct blockhash_writer w;
    assert_int_equal(blockhash_writer_open(&w, f->data, BS, algo), 0);
    for (size_t i = 0; i < NBLOCKS; i++) {
        uint8_t d[BLOCKHASH_MAX_DIGEST];
        assert_int_equal(blockhash_digest(algo, f->bytes + i * BS, BS, d), 0);
        assert_int_equal(blockhash_writer_add(&w, d), 0);
    }
    assert_int_equal(blockhash_writer_commit(&w, f->fd), 0);
}

static uint32_t header_u32(struct fixture *f, off_t off)
{
    uint32_t v = 0;
    CLEANUP_CLOSE int fd = open(f->side, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &v, sizeof(v), off), sizeof(v));
    return v; /* little-endian on the machines this runs on */
}

static void round_trip(struct fixture *f, enum blockhash_algo algo, uint32_t want_version,
                       uint32_t want_algo_field)
{
    write_sidecar(f, algo);
    struct stat st;
    size_t ds = blockhash_digest_size(algo);
    assert_int_equal(stat(f->side, &st), 0);
    assert_int_equal(st.st_size, H_SIZE + NBLOCKS * ds);
    assert_int_equal(header_u32(f, H_VERSION), want_version);
    assert_int_equal(header_u32(f, H_ALGO), want_algo_field);

    struct blockhash_reader r;
    assert_int_equal(blockhash_reader_open(&r, f->data, f->fd), 0);
    assert_int_equal(r.algo, algo);
    assert_int_equal(r.digest_size, ds);
    assert_int_equal(r.block_size, BS);
    assert_int_equal(r.nblocks, NBLOCKS);
    /* In order, out of order, and past the end (a zero block). */
    const uint64_t order[] = {0, 1, 2, 3, 2, 0, 3, 9, 1000000};
    for (size_t k = 0; k < ARRAY_SIZE(order); k++) {
        uint8_t got[BLOCKHASH_MAX_DIGEST], want[BLOCKHASH_MAX_DIGEST];
        uint64_t i = order[k];
        if (i < NBLOCKS)
            assert_int_equal(blockhash_digest(algo, f->bytes + i * BS, BS, want), 0);
        else
            assert_int_equal(blockhash_zero_digest(algo, BS, want), 0);
        assert_int_equal(blockhash_reader_get(&r, i, got), 0);
        assert_memory_equal(got, want, ds);
    }
    uint8_t z[BLOCKHASH_MAX_DIGEST], d1[BLOCKHASH_MAX_DIGEST];
    assert_int_equal(blockhash_zero_digest(algo, BS, z), 0);
    assert_int_equal(blockhash_reader_get(&r, 1, d1), 0);
    assert_memory_equal(d1, z, ds); /* block 1 is zeros */
    blockhash_reader_close(&r);
}

static void test_round_trip_xxh128(void **state)
{
    round_trip(*state, BLOCKHASH_XXH128, 2, BLOCKHASH_XXH128);
}

static void test_round_trip_sha256(void **state)
{
    /* SHA-256 sidecars stay version 1 (algorithm field zero): older readers take them. */
    round_trip(*state, BLOCKHASH_SHA256, 1, 0);
}

static void patch(struct fixture *f, off_t off, const void *bytes, size_t n)
{
    CLEANUP_CLOSE int fd = open(f->side, O_WRONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, bytes, n, off), (ssize_t)n);
}

static int reopen(struct fixture *f)
{
    struct blockhash_reader r;
    int e = blockhash_reader_open(&r, f->data, f->fd);
    if (e == 0) {
        assert_non_null(r.f);
        blockhash_reader_close(&r);
    }
    return e;
}

static void test_damaged(void **state)
{
    struct fixture *f = *state;
    const uint32_t u32s[][3] = {
        /* algo written, offset, value: each must be refused as damaged */
        {BLOCKHASH_XXH128, H_VERSION, 1},             /* version 1 with an algorithm field */
        {BLOCKHASH_XXH128, H_VERSION, 3},             /* unknown version */
        {BLOCKHASH_XXH128, H_ALGO, 0},                /* version 2 without an algorithm */
        {BLOCKHASH_XXH128, H_ALGO, 3},                /* unknown algorithm */
        {BLOCKHASH_XXH128, H_ALGO, BLOCKHASH_SHA256}, /* digests of the wrong size for it */
        {BLOCKHASH_SHA256, H_ALGO, BLOCKHASH_XXH128}, /* version 1 with an algorithm field */
        {BLOCKHASH_XXH128, H_BLOCK_SIZE, 0},
        {BLOCKHASH_XXH128, H_BLOCK_SIZE, BLOCKHASH_MAX_BLOCK_SIZE + 1},
        {BLOCKHASH_XXH128, H_BLOCK_SIZE, 2 * BS}, /* block count no longer matches */
        {BLOCKHASH_XXH128, H_NBLOCKS, NBLOCKS + 1},
        {BLOCKHASH_SHA256, H_NBLOCKS, NBLOCKS - 1},
        {BLOCKHASH_XXH128, 0, 0x41485857}, /* magic "WXHA..." */
    };
    for (size_t i = 0; i < ARRAY_SIZE(u32s); i++) {
        write_sidecar(f, (enum blockhash_algo)u32s[i][0]);
        assert_int_equal(reopen(f), 0);
        uint32_t v = u32s[i][2];
        patch(f, u32s[i][1], &v, sizeof(v));
        print_message("case %zu: offset %u = %u\n", i, u32s[i][1], v);
        assert_int_equal(reopen(f), -EBADMSG);
    }
    /* A huge block count whose digests' size wraps around to the sidecar's real size
     * (2^60 + 4 blocks of 1 byte, 16 bytes each): refused, not read as 4 blocks. */
    write_sidecar(f, BLOCKHASH_XXH128);
    uint64_t nb = (UINT64_C(1) << 60) + NBLOCKS;
    uint32_t one = 1;
    patch(f, H_BLOCK_SIZE, &one, sizeof(one));
    patch(f, H_FILE_SIZE, &nb, sizeof(nb));
    patch(f, H_NBLOCKS, &nb, sizeof(nb));
    assert_int_equal(reopen(f), -EBADMSG);
    /* Truncated digests, a byte too many, a truncated header. */
    const off_t sizes[] = {H_SIZE + NBLOCKS * 16 - 1, H_SIZE + NBLOCKS * 16 + 1, H_SIZE - 1, 0};
    for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
        write_sidecar(f, BLOCKHASH_XXH128);
        assert_int_equal(truncate(f->side, sizes[i]), 0);
        assert_int_equal(reopen(f), -EBADMSG);
    }
}

static void test_stale_and_missing(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(reopen(f), -ENOENT);
    write_sidecar(f, BLOCKHASH_XXH128);
    assert_int_equal(reopen(f), 0);
    /* Any write to the data moves its mtime: the sidecar no longer describes it. */
    const struct timespec times[2] = {{0, UTIME_OMIT}, {1000000000, 0}};
    assert_int_equal(futimens(f->fd, times), 0);
    assert_int_equal(reopen(f), -ESTALE);
    write_sidecar(f, BLOCKHASH_XXH128);
    assert_int_equal(ftruncate(f->fd, DATA_SIZE + 1), 0);
    assert_int_equal(reopen(f), -ESTALE);
    assert_int_equal(blockhash_remove(f->data), 0);
    assert_int_equal(reopen(f), -ENOENT);
    assert_int_equal(blockhash_remove(f->data), 0); /* none: not an error */
}

static void test_writer_errors(void **state)
{
    struct fixture *f = *state;
    struct blockhash_writer w;
    assert_int_equal(blockhash_writer_open(&w, f->data, BS, (enum blockhash_algo)0), -EINVAL);
    assert_int_equal(blockhash_writer_open(&w, f->data, BS, (enum blockhash_algo)3), -EINVAL);
    /* An aborted sidecar leaves nothing behind. */
    assert_int_equal(blockhash_writer_open(&w, f->data, BS, BLOCKHASH_XXH128), 0);
    uint8_t d[BLOCKHASH_MAX_DIGEST] = {0};
    assert_int_equal(blockhash_writer_add(&w, d), 0);
    blockhash_writer_abort(&w);
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "test -z \"$(ls -A '%s' | grep -v '^disk.raw$')\"", f->dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(reopen(f), -ENOENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_known_digests),
        cmocka_unit_test_setup_teardown(test_round_trip_xxh128, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_trip_sha256, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_and_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
