/* Segmented container streams: see stream.h.  A segment's plain data is a kind byte (data or
 * end) and its payload; the end segment's payload is u64le data segment count ‖ u64le items.
 */
#include "stream.h"

#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"

#define SEG_DATA     0
#define SEG_END      1
#define SEG_KIND_LEN 1
#define SEG_LEN_SIZE sizeof(uint32_t)
#define END_PAYLOAD  (2 * sizeof(uint64_t))
/* "file:" + path + "#" + up to 20 digits. */
#define IDENT_FMT "file:%s#%llu"

struct stream_writer {
    struct repo *r;
    char *relpath;
    uint8_t *buf; /* the sealed segments so far */
    size_t len, cap;
    uint64_t segments; /* data segments written */
    uint8_t *plain;    /* kind byte + payload of the segment being sealed */
    size_t plain_cap;
    bool done;
};

struct stream_reader {
    struct repo *r;
    char *relpath;
    uint8_t *data; /* the object (stream_reader_new), or NULL: read a segment at a time */
    int fd;        /* a local file holding the object (stream_reader_open_fd), or -1 */
    uint8_t *cbuf; /* without data: the current segment's container */
    size_t cbuf_cap;
    size_t len, off;
    uint64_t segment; /* index of the next segment */
    uint64_t items;
    bool ended;
    uint8_t *plain; /* the last decoded segment */
    size_t plain_cap;
};

static char *segment_ident(const char *relpath, uint64_t k)
{
    char *s = NULL;
    return asprintf(&s, IDENT_FMT, relpath, (unsigned long long)k) < 0 ? NULL : s;
}

static int grow(uint8_t **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need) {
        if (n > SIZE_MAX / 2)
            return -ENOMEM;
        n *= 2;
    }
    uint8_t *q = realloc(*p, n);
    if (!q)
        return -ENOMEM;
    *p = q;
    *cap = n;
    return 0;
}

int stream_writer_new(struct repo *r, const char *relpath, struct stream_writer **out)
{
    *out = NULL;
    struct stream_writer *w = calloc(1, sizeof(*w));
    if (!w || !(w->relpath = strdup(relpath))) {
        free(w);
        return -ENOMEM;
    }
    w->r = r;
    *out = w;
    return 0;
}

/* Seal kind ‖ payload as the next segment and append it. */
static int add_segment(struct stream_writer *w, uint8_t kind, const void *payload, size_t len)
{
    if (w->done)
        return -EINVAL;
    if (len > STREAM_MAX_SEGMENT - SEG_KIND_LEN)
        return -EFBIG;
    int ret = grow(&w->plain, &w->plain_cap, len + SEG_KIND_LEN);
    if (ret < 0)
        return ret;
    w->plain[0] = kind;
    if (len)
        memcpy(w->plain + SEG_KIND_LEN, payload, len);

    /* The end segment is numbered after the data segments like any other. */
    CLEANUP_FREE char *ident = segment_ident(w->relpath, w->segments);
    CLEANUP_FREE uint8_t *c = NULL;
    size_t clen;
    if (!ident)
        return -ENOMEM;
    ret = container_seal(w->r, ident, w->plain, len + SEG_KIND_LEN, &c, &clen);
    if (ret < 0)
        return ret;
    if (clen > UINT32_MAX || w->len > SIZE_MAX - SEG_LEN_SIZE - clen)
        return -EFBIG;
    ret = grow(&w->buf, &w->cap, w->len + SEG_LEN_SIZE + clen);
    if (ret < 0)
        return ret;
    uint32_t le = htole32((uint32_t)clen);
    memcpy(w->buf + w->len, &le, sizeof(le));
    memcpy(w->buf + w->len + SEG_LEN_SIZE, c, clen);
    w->len += SEG_LEN_SIZE + clen;
    return 0;
}

int stream_writer_add(struct stream_writer *w, const void *plain, size_t len)
{
    int ret = add_segment(w, SEG_DATA, plain, len);
    if (ret == 0)
        w->segments++;
    return ret;
}

int stream_writer_take(struct stream_writer *w, uint64_t items, uint8_t **data, size_t *len)
{
    uint64_t end[2] = {htole64(w->segments), htole64(items)};
    *data = NULL;
    *len = 0;
    int ret = add_segment(w, SEG_END, end, sizeof(end));
    if (ret < 0)
        return ret;
    w->done = true;
    *data = w->buf;
    *len = w->len;
    w->buf = NULL;
    w->len = w->cap = 0;
    return 0;
}

int stream_writer_put(struct stream_writer *w, uint64_t items, enum store_put_mode mode)
{
    CLEANUP_FREE uint8_t *data = NULL;
    size_t len;
    int ret = stream_writer_take(w, items, &data, &len);
    return ret < 0 ? ret : store_put(w->r->store, w->relpath, data, len, mode, NULL);
}

void stream_writer_free(struct stream_writer *w)
{
    if (!w)
        return;
    free(w->relpath);
    free(w->buf);
    free(w->plain);
    free(w);
}

int stream_reader_new(struct repo *r, const char *relpath, uint8_t *data, size_t len,
                      struct stream_reader **out)
{
    *out = NULL;
    struct stream_reader *rd = calloc(1, sizeof(*rd));
    if (!rd || !(rd->relpath = strdup(relpath))) {
        free(rd);
        free(data);
        return -ENOMEM;
    }
    rd->r = r;
    rd->data = data;
    rd->fd = -1;
    rd->len = len;
    *out = rd;
    return 0;
}

int stream_reader_open_fd(struct repo *r, const char *relpath, int fd, uint64_t max,
                          struct stream_reader **out)
{
    struct stat st;
    *out = NULL;
    if (fstat(fd, &st) < 0) {
        int ret = -errno;
        close(fd);
        return ret;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > max || (uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return -EBADMSG;
    }
    int ret = stream_reader_new(r, relpath, NULL, 0, out);
    if (ret < 0) {
        close(fd);
        return ret;
    }
    (*out)->fd = fd;
    (*out)->len = (size_t)st.st_size;
    return 0;
}

int stream_reader_open(struct repo *r, const char *relpath, uint64_t max,
                       struct stream_reader **out)
{
    /* The object is read a segment at a time (ranged reads): memory holds one segment, not
     * the object (a million-entry manifest or index object is 40 MB). */
    struct store_stat st;
    *out = NULL;
    int ret = store_stat(r->store, relpath, &st);
    if (ret < 0)
        return ret;
    if (st.size > max || st.size > SIZE_MAX)
        return -EBADMSG;
    ret = stream_reader_new(r, relpath, NULL, 0, out);
    if (ret == 0)
        (*out)->len = (size_t)st.size;
    return ret;
}

/* len bytes of the object at the reader's offset plus skip: a pointer into the object in
 * memory, or read into rd->cbuf. */
static int reader_bytes(struct stream_reader *rd, size_t skip, size_t len, uint8_t **p)
{
    if (rd->data) {
        *p = rd->data + rd->off + skip;
        return 0;
    }
    int ret = grow(&rd->cbuf, &rd->cbuf_cap, len ? len : 1);
    if (ret == 0 && rd->fd >= 0) {
        ssize_t n = pread(rd->fd, rd->cbuf, len, (off_t)(rd->off + skip));
        ret = n < 0 ? -errno : (size_t)n != len ? -EBADMSG : 0;
    } else if (ret == 0) {
        ret = store_get_range(rd->r->store, rd->relpath, rd->off + skip, len, rd->cbuf);
    }
    if (ret < 0)
        return ret == -ENOENT || ret == -ESPIPE ? -EBADMSG : ret;
    *p = rd->cbuf;
    return 0;
}

int stream_reader_next(struct stream_reader *rd, const uint8_t **plain, size_t *len)
{
    *plain = NULL;
    *len = 0;
    if (rd->ended)
        return 0;
    uint32_t le;
    /* Cut at a segment boundary before the end segment: truncated. */
    if (rd->len - rd->off < SEG_LEN_SIZE)
        return -EBADMSG;
    uint8_t *c;
    int ret = reader_bytes(rd, 0, SEG_LEN_SIZE, &c);
    if (ret < 0)
        return ret;
    memcpy(&le, c, sizeof(le));
    size_t clen = le32toh(le);
    if (clen > rd->len - rd->off - SEG_LEN_SIZE)
        return -EBADMSG;
    if (clen > STREAM_MAX_SEGMENT + CONTAINER_MAX_OVERHEAD)
        return -EBADMSG; /* longer than any segment (stored uncompressed unless smaller) */
    if ((ret = reader_bytes(rd, SEG_LEN_SIZE, clen, &c)) < 0)
        return ret;

    uint64_t announced;
    if (container_plain_size(c, clen, &announced) < 0 || announced > STREAM_MAX_SEGMENT ||
        announced < SEG_KIND_LEN)
        return -EBADMSG;
    ret = grow(&rd->plain, &rd->plain_cap, (size_t)announced);
    if (ret < 0)
        return ret;
    CLEANUP_FREE char *ident = segment_ident(rd->relpath, rd->segment);
    if (!ident)
        return -ENOMEM;
    size_t plen;
    ret = container_unseal(rd->r, ident, c, clen, STREAM_MAX_SEGMENT, rd->plain, rd->plain_cap,
                           &plen);
    if (ret < 0)
        return ret == -ENOBUFS ? -EBADMSG : ret;
    if (plen < SEG_KIND_LEN)
        return -EBADMSG;
    rd->off += SEG_LEN_SIZE + clen;

    if (rd->plain[0] == SEG_DATA) {
        rd->segment++;
        *plain = rd->plain + SEG_KIND_LEN;
        *len = plen - SEG_KIND_LEN;
        return 1;
    }
    uint64_t end[2];
    if (rd->plain[0] != SEG_END || plen != SEG_KIND_LEN + END_PAYLOAD || rd->off != rd->len)
        return -EBADMSG;
    memcpy(end, rd->plain + SEG_KIND_LEN, sizeof(end));
    if (le64toh(end[0]) != rd->segment)
        return -EBADMSG;
    rd->items = le64toh(end[1]);
    rd->ended = true;
    return 0;
}

uint64_t stream_reader_items(const struct stream_reader *rd)
{
    return rd->items;
}

void stream_reader_free(struct stream_reader *rd)
{
    if (!rd)
        return;
    free(rd->relpath);
    free(rd->data);
    if (rd->fd >= 0)
        close(rd->fd);
    free(rd->cbuf);
    free(rd->plain);
    free(rd);
}
