/* The sparse encoding of byte ranges (see sparse.h): finding runs of data, decoding a body. */
#include "core/sparse.h"

#include <endian.h>
#include <errno.h>
#include <string.h>

#include "core/hash.h"

void sparse_header_encode(uint8_t out[SPARSE_SEGMENT_HEADER], uint64_t offset, uint64_t length)
{
    uint64_t le[2] = {htole64(offset), htole64(length)};
    memcpy(out, le, sizeof(le));
}

/* Bytes from pos to the end of its SPARSE_ZERO_UNIT block (disk-aligned), within len. */
static size_t unit_at(size_t len, uint64_t base, size_t pos)
{
    size_t to_boundary = SPARSE_ZERO_UNIT - (size_t)((base + pos) % SPARSE_ZERO_UNIT);
    return len - pos < to_boundary ? len - pos : to_boundary;
}

bool sparse_next_run(const uint8_t *buf, size_t len, uint64_t base, size_t *pos, size_t *run)
{
    size_t p = *pos;
    while (p < len) {
        size_t u = unit_at(len, base, p);
        if (!buf_is_zero(buf + p, u))
            break;
        p += u;
    }
    *pos = p;
    if (p >= len) {
        *run = 0;
        return false;
    }
    size_t e = p + unit_at(len, base, p);
    while (e < len) {
        size_t u = unit_at(len, base, e);
        if (buf_is_zero(buf + e, u))
            break;
        e += u;
    }
    *run = e - p;
    return true;
}

void sparse_decoder_init(struct sparse_decoder *d, void *buf, size_t cap)
{
    memset(d, 0, sizeof(*d));
    d->buf = buf;
    d->cap = cap;
}

int sparse_decode(struct sparse_decoder *d, const uint8_t *data, size_t n)
{
    while (n) {
        if (d->left) {
            size_t k = d->left < n ? (size_t)d->left : n;
            memcpy(d->buf + d->at, data, k);
            d->at += k;
            d->left -= k;
            data += k;
            n -= k;
            continue;
        }
        size_t k = SPARSE_SEGMENT_HEADER - d->hdr_have;
        if (k > n)
            k = n;
        memcpy(d->hdr + d->hdr_have, data, k);
        d->hdr_have += k;
        data += k;
        n -= k;
        if (d->hdr_have < SPARSE_SEGMENT_HEADER)
            break;
        d->hdr_have = 0;
        uint64_t le[2];
        memcpy(le, d->hdr, sizeof(le));
        uint64_t off = le64toh(le[0]), len = le64toh(le[1]);
        if (len == 0 || off < d->end || off > d->cap || len > d->cap - off)
            return -EBADMSG;
        memset(d->buf + d->end, 0, (size_t)(off - d->end));
        d->at = off;
        d->left = len;
        d->end = off + len;
    }
    return 0;
}

int sparse_decode_finish(struct sparse_decoder *d, uint64_t len)
{
    if (d->left || d->hdr_have || len > d->cap || d->end > len)
        return -EBADMSG;
    memset(d->buf + d->end, 0, (size_t)(len - d->end));
    d->end = len;
    return 0;
}
