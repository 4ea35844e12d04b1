/* Fuzz target: the decoder of sparse answers (src/core/sparse.c), which the client runs on
 * what a server sends.  The first 2 bytes give the range length (at most 64 KiB), the rest is
 * the body, fed in pieces of varying size.  A body is rejected, or decodes to bytes that
 * encode (sparse_next_run, as vmexportd does) and decode back to themselves. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/sparse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CAP 65536

static int decode_all(const uint8_t *body, size_t n, uint64_t len, uint8_t *out, size_t step)
{
    struct sparse_decoder d;
    sparse_decoder_init(&d, out, CAP);
    for (size_t i = 0; i < n; i += step) {
        size_t k = n - i < step ? n - i : step;
        if (sparse_decode(&d, body + i, k) < 0)
            return -1;
    }
    return sparse_decode_finish(&d, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t out[CAP], again[CAP];
    static uint8_t body[CAP + (CAP / SPARSE_ZERO_UNIT + 2) * SPARSE_SEGMENT_HEADER];
    if (size < 2)
        return 0;
    uint64_t len = (uint64_t)data[0] | (uint64_t)data[1] << 8;
    size_t step = 1 + (data[0] ^ data[1]) % 97;
    data += 2;
    size -= 2;
    if (decode_all(data, size, len, out, step) < 0)
        return 0;

    size_t o = 0, pos = 0, run;
    uint64_t base = len * 7; /* any disk offset */
    while (sparse_next_run(out, (size_t)len, base, &pos, &run)) {
        assert(run > 0 && pos + run <= len);
        sparse_header_encode(body + o, pos, run);
        o += SPARSE_SEGMENT_HEADER;
        memcpy(body + o, out + pos, run);
        o += run;
        pos += run;
    }
    /* at most the data and one header per 4 KiB block (the first and last may be partial) */
    assert(o <= len + SPARSE_SEGMENT_HEADER * (len / SPARSE_ZERO_UNIT + 2));
    assert(decode_all(body, o, len, again, 4096) == 0);
    assert(!memcmp(out, again, (size_t)len));
    return 0;
}
