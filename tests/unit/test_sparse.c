/* Unit tests for the sparse encoding of byte ranges (src/core/sparse.c): finding runs of data
 * in disk-aligned 4 KiB blocks from any starting offset, and decoding bodies (whole, byte by
 * byte, malformed: out of order, overlapping, empty segments, past the range, cut short).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/sparse.h"

#define U SPARSE_ZERO_UNIT

/* Encode buf (disk bytes from base) as the daemon does: every run of data as one segment. */
static size_t encode(const uint8_t *buf, size_t len, uint64_t base, uint8_t *out)
{
    size_t o = 0, pos = 0, run;
    while (sparse_next_run(buf, len, base, &pos, &run)) {
        sparse_header_encode(out + o, pos, run);
        o += SPARSE_SEGMENT_HEADER;
        memcpy(out + o, buf + pos, run);
        o += run;
        pos += run;
    }
    assert_int_equal(pos, len);
    return o;
}

static void test_next_run(void **state)
{
    (void)state;
    static uint8_t b[8 * U];
    size_t pos = 0, run = 0;
    /* all zeros: no run */
    assert_false(sparse_next_run(b, sizeof(b), 0, &pos, &run));
    assert_int_equal(pos, sizeof(b));
    /* one byte in block 2, one in block 3, one in block 6: runs [2U, 4U) and [6U, 7U) */
    b[2 * U + 5] = 1;
    b[3 * U] = 1;
    b[7 * U - 1] = 1;
    pos = 0;
    assert_true(sparse_next_run(b, sizeof(b), 0, &pos, &run));
    assert_int_equal(pos, 2 * U);
    assert_int_equal(run, 2 * U);
    pos += run;
    assert_true(sparse_next_run(b, sizeof(b), 0, &pos, &run));
    assert_int_equal(pos, 6 * U);
    assert_int_equal(run, U);
    pos += run;
    assert_false(sparse_next_run(b, sizeof(b), 0, &pos, &run));
    assert_int_equal(pos, sizeof(b));

    /* blocks follow disk offsets: with base 100 the first block of buf is U - 100 bytes long */
    pos = 0;
    assert_true(sparse_next_run(b, sizeof(b), 100, &pos, &run));
    assert_int_equal(pos, 2 * U - 100); /* disk block 2 starts at buf offset 2U - 100 */
    assert_int_equal(run, 2 * U);
    /* a buffer shorter than a block, starting mid-block */
    pos = 0;
    assert_true(sparse_next_run(b + 2 * U + 5, 1, 2 * U + 5, &pos, &run));
    assert_int_equal(pos, 0);
    assert_int_equal(run, 1);
    /* the run ends at the end of buf even inside a block */
    pos = 0;
    assert_true(sparse_next_run(b, 3 * U + 10, 0, &pos, &run));
    assert_int_equal(pos, 2 * U);
    assert_int_equal(run, U + 10);
    /* empty buffer */
    pos = 0;
    assert_false(sparse_next_run(b, 0, 0, &pos, &run));
    assert_int_equal(pos, 0);
}

/* Random layouts at random bases: decoding the encoding gives the bytes back, whole and fed
 * byte by byte; the encoding leaves out every all-zero disk block. */
static void test_roundtrip(void **state)
{
    (void)state;
    enum { N = 12 * U };
    static uint8_t buf[N], body[N + (N / U + 2) * SPARSE_SEGMENT_HEADER], out[N];
    srandom(42);
    for (int round = 0; round < 300; round++) {
        size_t len = (size_t)random() % N;
        uint64_t base = (uint64_t)random() % (3 * U);
        memset(buf, 0, sizeof(buf));
        for (size_t k = 0, writes = (size_t)random() % 6; k < writes && len; k++) {
            size_t at = (size_t)random() % len, n = 1 + (size_t)random() % U;
            for (size_t i = at; i < at + n && i < len; i++)
                buf[i] = (uint8_t)(1 + random() % 255);
        }
        size_t blen = encode(buf, len, base, body);
        /* the body holds no all-zero block: data bytes <= the blocks with a non-zero byte */
        size_t data_blocks = 0;
        for (size_t p = 0; p < len;) {
            size_t e = (size_t)(((base + p) / U + 1) * U - base);
            if (e > len)
                e = len;
            for (size_t i = p; i < e; i++)
                if (buf[i]) {
                    data_blocks++;
                    break;
                }
            p = e;
        }
        assert_true(blen <= data_blocks * (U + SPARSE_SEGMENT_HEADER));

        struct sparse_decoder d;
        memset(out, 0xee, sizeof(out));
        sparse_decoder_init(&d, out, sizeof(out));
        assert_int_equal(sparse_decode(&d, body, blen), 0);
        assert_int_equal(sparse_decode_finish(&d, len), 0);
        assert_memory_equal(out, buf, len);

        memset(out, 0xee, sizeof(out));
        sparse_decoder_init(&d, out, len);
        for (size_t i = 0; i < blen; i++)
            assert_int_equal(sparse_decode(&d, body + i, 1), 0);
        assert_int_equal(sparse_decode_finish(&d, len), 0);
        assert_memory_equal(out, buf, len);
    }
}

/* Decode the segments {off, len} (data bytes 0xab) into a 64-byte buffer; the finish result. */
static int decode_segments(const uint64_t (*seg)[2], size_t n, size_t cut, uint64_t len)
{
    uint8_t body[512], out[64];
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        sparse_header_encode(body + o, seg[i][0], seg[i][1]);
        o += SPARSE_SEGMENT_HEADER;
        size_t k = seg[i][1] < 64 ? (size_t)seg[i][1] : 64;
        memset(body + o, 0xab, k);
        o += k;
    }
    struct sparse_decoder d;
    sparse_decoder_init(&d, out, sizeof(out));
    int r = sparse_decode(&d, body, o > cut ? o - cut : 0);
    if (r < 0)
        return r;
    return sparse_decode_finish(&d, len);
}

#define SEGS(...)                                                                                  \
    (const uint64_t[][2]){__VA_ARGS__},                                                            \
        (sizeof((const uint64_t[][2]){__VA_ARGS__}) / sizeof(uint64_t[2]))

static void test_malformed(void **state)
{
    (void)state;
    assert_int_equal(decode_segments(SEGS({0, 4}, {8, 4}), 0, 64), 0);
    assert_int_equal(decode_segments(SEGS({0, 4}, {4, 4}), 0, 8), 0);         /* adjacent: fine */
    assert_int_equal(decode_segments(SEGS({8, 4}, {0, 4}), 0, 64), -EBADMSG); /* out of order */
    assert_int_equal(decode_segments(SEGS({0, 8}, {4, 8}), 0, 64), -EBADMSG); /* overlapping */
    assert_int_equal(decode_segments(SEGS({0, 0}), 0, 64), -EBADMSG);         /* empty */
    assert_int_equal(decode_segments(SEGS({60, 8}), 0, 64), -EBADMSG);        /* past cap */
    assert_int_equal(decode_segments(SEGS({UINT64_MAX - 1, 4}), 0, 64), -EBADMSG);
    assert_int_equal(decode_segments(SEGS({4, UINT64_MAX}), 0, 64), -EBADMSG);
    assert_int_equal(decode_segments(SEGS({0, 4}, {8, 4}), 0, 10), -EBADMSG); /* past len */
    assert_int_equal(decode_segments(SEGS({0, 4}), 1, 64), -EBADMSG);         /* data cut short */
    assert_int_equal(decode_segments(SEGS({0, 4}), 6, 64), -EBADMSG);         /* header cut short */
    assert_int_equal(decode_segments(SEGS({0, 4}), 0, 65), -EBADMSG);         /* len past cap */
    assert_int_equal(decode_segments(SEGS({0, 4}), 20, 64), 0); /* no body: all zeros */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_next_run),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
