/* The sparse encoding of a byte range, media type "application/vnd.vmexport.sparse": how
 * vmexportd sends a disk range without its blocks of zeros when the client asks for it
 * (docs/api.md, "Sparse responses").
 *
 * The body is a sequence of segments, each a 16-byte header (offset and length, unsigned 64-bit
 * little-endian; the offset relative to the first byte of the range) followed by length bytes
 * of data.  Segments are in increasing order, do not overlap, have a non-zero length and end
 * inside the range; every byte of the range outside them is zero.  A range of zeros has an
 * empty body.  The sender leaves out whole SPARSE_ZERO_UNIT blocks of zeros (aligned to disk
 * offsets) and may send zeros too.
 */
#ifndef VMEXPORT_CORE_SPARSE_H
#define VMEXPORT_CORE_SPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SPARSE_MEDIA_TYPE     "application/vnd.vmexport.sparse"
#define SPARSE_SEGMENT_HEADER 16
#define SPARSE_ZERO_UNIT      4096

void sparse_header_encode(uint8_t out[SPARSE_SEGMENT_HEADER], uint64_t offset, uint64_t length);

/* The next run of data in buf (len bytes holding the disk bytes from disk offset base) at or
 * after *pos: true and [*pos, *pos + *run) when one is found (*pos moves to its start); false
 * when the rest of buf is zeros (*pos = len).  Runs are made of SPARSE_ZERO_UNIT blocks aligned
 * to disk offsets (the first and last may be partial: buf need not be aligned); a run ends at
 * the first block of zeros or at the end of buf. */
bool sparse_next_run(const uint8_t *buf, size_t len, uint64_t base, size_t *pos, size_t *run);

/* A streaming decoder into a caller's buffer of cap bytes. */
struct sparse_decoder {
    uint8_t *buf;
    size_t cap;
    uint8_t hdr[SPARSE_SEGMENT_HEADER];
    size_t hdr_have; /* bytes of the next header received */
    uint64_t at;     /* where the current segment's next byte goes */
    uint64_t left;   /* bytes of the current segment still to come */
    uint64_t end;    /* end of the last segment: bytes before it are written (or zeroed) */
};

void sparse_decoder_init(struct sparse_decoder *d, void *buf, size_t cap);
/* Feed n bytes of the body: 0, or -EBADMSG when they break the format (a segment out of order,
 * empty or past cap). */
int sparse_decode(struct sparse_decoder *d, const uint8_t *data, size_t n);
/* The body is complete and the range is len bytes (<= cap): zero what no segment covered.
 * 0, or -EBADMSG (the body stopped inside a segment or header, or a segment ends past len). */
int sparse_decode_finish(struct sparse_decoder *d, uint64_t len);

#endif
