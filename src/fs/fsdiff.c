/* File diffs by extent maps, block hashes or reading; see fsdiff.h. */
#include "fsdiff.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/hash.h"
#include "core/names.h"
#include "fs/blockhash.h"
#include "fs/fsinfo.h"
#include "fs/fsmap.h"
#include "fs/safeopen.h"

/* Block size for read mode comparisons: the common filesystem block. */
#define READ_COMPARE_BLOCK 4096
/* Bytes read per call in hash and read modes. */
#define DIFF_BUFFER_SIZE (1024 * 1024)

static const struct enum_name diff_mode_names[] = {
    {DIFF_AUTO, "auto"}, {DIFF_REFLINK, "reflink"}, {DIFF_HASH, "hash"}, {DIFF_READ, "read"}};

DEFINE_ENUM_NAMES(diff_mode, enum diff_mode, diff_mode_names)

static int file_size(int fd, uint64_t *size)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISREG(st.st_mode))
        return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
    *size = (uint64_t)st.st_size;
    return 0;
}

/* Can the maps of the two files be compared by physical address? */
static bool reflink_usable(struct fs_diff *d, uint32_t *block_size)
{
    struct fs_info fb, fn;
    if (fs_info_fd(d->base_fd, &fb) < 0 || fs_info_fd(d->new_fd, &fn) < 0) {
        d->why = "cannot identify the filesystems";
        return false;
    }
    if (fb.dev != fn.dev) {
        d->why = "the files are on different filesystems";
        return false;
    }
    if (!fs_kind_may_reflink(fn.kind)) {
        d->why = "the filesystem does not share blocks between files (no reflink)";
        return false;
    }
    /* FIEMAP must give physical addresses for both. */
    struct fs_map m;
    if (fs_map_open(&m, d->base_fd, d->base_size, 0) < 0 || !fs_map_has_physical(&m)) {
        fs_map_close(&m);
        d->why = "the filesystem has no FIEMAP";
        return false;
    }
    fs_map_close(&m);
    *block_size = fn.block_size;
    return true;
}

/* A file of the diff, by path: as given, or with no symlink in any component. */
static int diff_open_file(const struct fs_diff *d, const char *path)
{
    if (d->nofollow)
        return fs_open_nofollow(path, O_RDONLY, 0);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

/* The sidecar of the base file, checked against it. */
static int diff_sidecar_open(const struct fs_diff *d, struct blockhash_reader *hr)
{
    if (!d->nofollow)
        return blockhash_reader_open(hr, d->base_path, d->base_fd);
    CLEANUP_FREE char *path = blockhash_sidecar_path(d->base_path);
    if (!path)
        return -ENOMEM;
    int fd = fs_open_nofollow(path, O_RDONLY, 0);
    if (fd < 0)
        return fd;
    return blockhash_reader_open_fd(hr, fd, d->base_fd);
}

static int diff_open(struct fs_diff *d, const char *base, const char *new, enum diff_mode want,
                     bool nofollow)
{
    int r;
    memset(d, 0, sizeof(*d));
    d->nofollow = nofollow;
    d->base_fd = d->new_fd = -1;
    d->base_fd = diff_open_file(d, base);
    if (d->base_fd < 0) {
        r = d->base_fd;
        d->base_fd = -1;
        return r;
    }
    d->new_fd = diff_open_file(d, new);
    if (d->new_fd < 0) {
        r = d->new_fd;
        d->new_fd = -1;
        fs_diff_close(d);
        return r;
    }
    d->base_path = strdup(base);
    if (!d->base_path) {
        fs_diff_close(d);
        return -ENOMEM;
    }
    if ((r = file_size(d->base_fd, &d->base_size)) < 0 ||
        (r = file_size(d->new_fd, &d->new_size)) < 0) {
        fs_diff_close(d);
        return r;
    }

    /* A fresh sidecar means BASE is a copy, not a clone: its blocks are not shared with NEW,
     * so comparing digests beats comparing maps.  Otherwise maps, where they are comparable. */
    if (want == DIFF_AUTO || want == DIFF_HASH) {
        struct blockhash_reader hr;
        r = diff_sidecar_open(d, &hr);
        if (r == 0) {
            d->mode = DIFF_HASH;
            d->block_size = hr.block_size;
            d->hash = hr.algo;
            blockhash_reader_close(&hr);
            return 0;
        }
        if (want == DIFF_HASH) {
            d->why = r == -ESTALE    ? "the base changed after its block hashes were recorded"
                     : r == -ENOENT  ? "the base has no block-hash sidecar (" BLOCKHASH_SUFFIX
                                       "); it was not made by a copy-mode clone"
                     : r == -EBADMSG ? "the base's block-hash sidecar is damaged"
                                     : "the base's block-hash sidecar cannot be read";
            fs_diff_close(d);
            return -EOPNOTSUPP;
        }
    }
    uint32_t bs;
    if (want == DIFF_AUTO || want == DIFF_REFLINK) {
        if (reflink_usable(d, &bs)) {
            d->mode = DIFF_REFLINK;
            d->block_size = bs;
            return 0;
        }
        if (want == DIFF_REFLINK) {
            fs_diff_close(d);
            return -EOPNOTSUPP;
        }
    }
    d->mode = DIFF_READ;
    d->block_size = READ_COMPARE_BLOCK;
    return 0;
}

int fs_diff_open(struct fs_diff *d, const char *base, const char *new, enum diff_mode want)
{
    return diff_open(d, base, new, want, false);
}

int fs_diff_open_nofollow(struct fs_diff *d, const char *base, const char *new, enum diff_mode want)
{
    return diff_open(d, base, new, want, true);
}

void fs_diff_close(struct fs_diff *d)
{
    if (d->base_fd >= 0)
        close(d->base_fd);
    if (d->new_fd >= 0)
        close(d->new_fd);
    d->base_fd = d->new_fd = -1;
    free(d->base_path);
    d->base_path = NULL;
}

static int diff_reflink(struct fs_diff *d, struct extent_sink *changed, struct extent_sink *zeroed)
{
    struct fs_map mb, mn;
    int r = fs_map_open(&mb, d->base_fd, d->base_size, 0);
    if (r < 0)
        return r;
    if ((r = fs_map_open(&mn, d->new_fd, d->new_size, 0)) < 0) {
        fs_map_close(&mb);
        return r;
    }
    struct extent_source sb = fs_map_source(&mb), sn = fs_map_source(&mn);
    r = extent_diff_stream(&sb, d->base_size, &sn, d->new_size, changed, zeroed);
    fs_map_close(&mb);
    fs_map_close(&mn);
    return r;
}

/* Coalescing output shared by the content-comparing modes. */
struct range_out {
    struct extent_sink *sink;
    uint64_t start, len;
};

static int range_out_add(struct range_out *o, uint64_t start, uint64_t len)
{
    if (o->len && o->start + o->len == start) {
        o->len += len;
        return 0;
    }
    int r = o->len ? o->sink->emit(o->sink->opaque, o->start, o->len) : 0;
    o->start = start;
    o->len = len;
    return r;
}

static int range_out_flush(struct range_out *o)
{
    int r = o->len ? o->sink->emit(o->sink->opaque, o->start, o->len) : 0;
    o->len = 0;
    return r;
}

/* Read [off, off+len) of fd into buf, zero-filling past the end of the file. */
static int read_padded(int fd, uint8_t *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    int r = fs_pread_direct(fd, -1, buf, len, off, &done); /* no O_DIRECT fd: plain reads */
    if (r < 0)
        return r;
    memset(buf + done, 0, len - done);
    return 0;
}

/* Next offset >= pos where fd has data (its size if none). */
static uint64_t next_data(int fd, uint64_t pos, uint64_t size)
{
    if (pos >= size)
        return size;
    off_t o = lseek(fd, (off_t)pos, SEEK_DATA);
    if (o < 0)
        return errno == ENXIO ? size : pos; /* unsure: treat as data */
    return (uint64_t)o < size ? (uint64_t)o : size;
}

/* Classify one block of new against base: equal, new all zero (zeroed) or changed. */
static int classify(struct range_out *chg, struct range_out *zer, bool equal, bool new_zero,
                    uint64_t off, uint64_t len)
{
    if (equal)
        return 0;
    return new_zero ? range_out_add(zer, off, len) : range_out_add(chg, off, len);
}

static int diff_hash(struct fs_diff *d, struct extent_sink *changed, struct extent_sink *zeroed)
{
    struct blockhash_reader hr;
    int r = diff_sidecar_open(d, &hr);
    if (r < 0)
        return r;
    const uint64_t bs = hr.block_size;
    const size_t ds = hr.digest_size;
    const uint8_t *zero_digest = hr.zero_digest;
    uint8_t want[BLOCKHASH_MAX_DIGEST], got[BLOCKHASH_MAX_DIGEST];
    struct range_out chg = {.sink = changed}, zer = {.sink = zeroed};
    CLEANUP_FREE uint8_t *buf = malloc(DIFF_BUFFER_SIZE > bs ? DIFF_BUFFER_SIZE : bs);
    if (!buf) {
        blockhash_reader_close(&hr);
        return -ENOMEM;
    }
    size_t per_read = DIFF_BUFFER_SIZE > bs ? DIFF_BUFFER_SIZE / bs * bs : bs;

    for (uint64_t pos = 0; pos < d->new_size;) {
        uint64_t data = next_data(d->new_fd, pos, d->new_size) / bs * bs;
        /* Blocks wholly in a hole of new: zeros; changed only if base had data there. */
        for (; pos < data; pos += bs) {
            if ((r = blockhash_reader_get(&hr, pos / bs, want)) < 0)
                goto out;
            uint64_t len = pos + bs > d->new_size ? d->new_size - pos : bs;
            bool base_zero = memcmp(want, zero_digest, ds) == 0;
            if ((r = classify(&chg, &zer, base_zero, true, pos, len)) < 0)
                goto out;
        }
        if (pos >= d->new_size)
            break;
        uint64_t n = d->new_size - pos < per_read ? d->new_size - pos : per_read;
        n = (n + bs - 1) / bs * bs;
        if ((r = read_padded(d->new_fd, buf, n, pos)) < 0)
            goto out;
        for (uint64_t b = 0; b < n && pos + b < d->new_size; b += bs) {
            uint64_t off = pos + b;
            uint64_t len = off + bs > d->new_size ? d->new_size - off : bs;
            bool new_zero = buf_is_zero(buf + b, bs);
            if (new_zero)
                memcpy(got, zero_digest, ds);
            else if ((r = blockhash_digest(hr.algo, buf + b, bs, got)) < 0)
                goto out;
            if ((r = blockhash_reader_get(&hr, off / bs, want)) < 0)
                goto out;
            if ((r = classify(&chg, &zer, memcmp(want, got, ds) == 0, new_zero, off, len)) < 0)
                goto out;
        }
        pos += n;
    }
    if ((r = range_out_flush(&chg)) < 0)
        goto out;
    r = range_out_flush(&zer);
out:
    blockhash_reader_close(&hr);
    return r;
}

static int diff_read(struct fs_diff *d, struct extent_sink *changed, struct extent_sink *zeroed)
{
    const uint64_t bs = READ_COMPARE_BLOCK;
    struct range_out chg = {.sink = changed}, zer = {.sink = zeroed};
    CLEANUP_FREE uint8_t *bb = malloc(DIFF_BUFFER_SIZE);
    CLEANUP_FREE uint8_t *nb = malloc(DIFF_BUFFER_SIZE);
    if (!bb || !nb)
        return -ENOMEM;
    int r;

    for (uint64_t pos = 0; pos < d->new_size;) {
        /* Skip what is a hole in both. */
        uint64_t nd = next_data(d->new_fd, pos, d->new_size);
        uint64_t bd = next_data(d->base_fd, pos, d->base_size < d->new_size ? d->base_size
                                                                              : d->new_size);
        if (pos >= d->base_size)
            bd = d->new_size;
        uint64_t data = (nd < bd ? nd : bd) / bs * bs;
        if (data > pos) {
            pos = data;
            continue;
        }
        uint64_t n = d->new_size - pos < DIFF_BUFFER_SIZE ? d->new_size - pos : DIFF_BUFFER_SIZE;
        n = (n + bs - 1) / bs * bs;
        if ((r = read_padded(d->new_fd, nb, n, pos)) < 0)
            return r;
        if (pos >= d->base_size)
            memset(bb, 0, n);
        else if ((r = read_padded(d->base_fd, bb, n, pos)) < 0)
            return r;
        /* read_padded reads past base's end as zeros only up to the file's end; bytes of base
         * beyond base_size must count as zeros even if base is longer than new. */
        if (pos + n > d->base_size && pos < d->base_size)
            memset(bb + (d->base_size - pos), 0, pos + n - d->base_size);
        for (uint64_t b = 0; b < n && pos + b < d->new_size; b += bs) {
            uint64_t off = pos + b;
            uint64_t len = off + bs > d->new_size ? d->new_size - off : bs;
            bool equal = memcmp(bb + b, nb + b, bs) == 0;
            if ((r = classify(&chg, &zer, equal, !equal && buf_is_zero(nb + b, bs), off, len)) < 0)
                return r;
        }
        pos += n;
    }
    if ((r = range_out_flush(&chg)) < 0)
        return r;
    return range_out_flush(&zer);
}

int fs_diff_run(struct fs_diff *d, struct extent_sink *changed, struct extent_sink *zeroed)
{
    switch (d->mode) {
    case DIFF_REFLINK:
        return diff_reflink(d, changed, zeroed);
    case DIFF_HASH:
        return diff_hash(d, changed, zeroed);
    case DIFF_READ:
    case DIFF_AUTO:
        break;
    }
    return diff_read(d, changed, zeroed);
}
