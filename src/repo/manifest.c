/* Manifests: which chunk holds each chunk-sized piece of a backed-up disk, stored at
 * backups/<vm>/<id>/disk-<n>.manifest.  In memory a manifest is sparse (entries for the chunks
 * stored only, repo.h).  Format versions 1 and 2 store it dense, one entry per chunk, in one
 * container (converted while encoding and decoding, byte for byte as before); format 3 stores
 * the sparse entries in a segmented stream (stream.h): a header segment, entry segments of at
 * most MANIFEST_SEGMENT_ENTRIES entries, and the stream's end segment with the entry count.
 * Layout: docs/repository-format.md, "Manifests".
 */
#include "repo_internal.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/cleanup.h"
#include "stream.h"

static const uint8_t manifest_magic[4] = {'V', 'X', 'M', 'F'};
#define MANIFEST_VERSION         1  /* the dense encoding (format versions 1 and 2) */
#define MANIFEST_VERSION_V3      3  /* the header segment of a format 3 manifest stream */
#define MANIFEST_V3_FIXED        24 /* magic .. reserved of that header, before the strings */
#define MANIFEST_V3_ENTRY        (sizeof(uint64_t) + HASH_SIZE) /* u64le idx, ID */
#define MANIFEST_SEGMENT_ENTRIES 65536
#define MANIFEST_MIN_CAP         16
#define MANIFEST_FIXED_SIZE      32         /* magic .. n, before the strings */
#define MANIFEST_NO_STRING       UINT32_MAX /* length of an absent string */
#define MANIFEST_MAX_STRING      65536      /* disk names, change IDs, paths */
#define ENTRY_ZERO               0
#define ENTRY_CHUNK              1
#define MANIFEST_NAME_PREFIX     "disk-"
#define MANIFEST_NAME_SUFFIX     ".manifest"
#define MANIFEST_MAX_DIGITS      6

static uint64_t entries_for(uint64_t disk_size, uint32_t chunk_size)
{
    return disk_size / chunk_size + (disk_size % chunk_size != 0);
}

int manifest_new(struct manifest *m, const char *disk, uint64_t disk_size, uint32_t chunk_size)
{
    memset(m, 0, sizeof(*m));
    if (!disk || !*disk || strlen(disk) > MANIFEST_MAX_STRING || !repo_chunk_size_valid(chunk_size))
        return -EINVAL;
    if (!(m->disk = strdup(disk)))
        return -ENOMEM;
    m->disk_size = disk_size;
    m->chunk_size = chunk_size;
    return 0;
}

void manifest_free(struct manifest *m)
{
    if (!m)
        return;
    free(m->disk);
    free(m->change_id);
    free(m->snapshot_path);
    free(m->e);
    memset(m, 0, sizeof(*m));
}

int manifest_append(struct manifest *m, uint64_t idx, const struct chunk_id *id)
{
    if (idx >= entries_for(m->disk_size, m->chunk_size) ||
        (m->n_entries && idx <= m->e[m->n_entries - 1].idx))
        return -EINVAL;
    if (m->n_entries == m->cap_entries) {
        size_t cap = m->cap_entries ? m->cap_entries * 2 : MANIFEST_MIN_CAP;
        if (cap > SIZE_MAX / sizeof(*m->e))
            return -ENOMEM;
        struct manifest_entry *e = realloc(m->e, cap * sizeof(*e));
        if (!e)
            return -ENOMEM;
        m->e = e;
        m->cap_entries = cap;
    }
    m->e[m->n_entries++] = (struct manifest_entry){.idx = idx, .id = *id};
    return 0;
}

size_t manifest_lower_bound(const struct manifest *m, uint64_t idx)
{
    size_t lo = 0, hi = m->n_entries;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->e[mid].idx < idx)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

const struct manifest_entry *manifest_find(const struct manifest *m, uint64_t idx)
{
    size_t k = manifest_lower_bound(m, idx);
    return k < m->n_entries && m->e[k].idx == idx ? &m->e[k] : NULL;
}

/* Entries strictly increasing and within the disk: what every encoder checks first. */
static bool entries_valid(const struct manifest *m)
{
    uint64_t n = entries_for(m->disk_size, m->chunk_size);
    if (m->n_entries && !m->e)
        return false;
    for (size_t k = 0; k < m->n_entries; k++)
        if (m->e[k].idx >= n || (k && m->e[k].idx <= m->e[k - 1].idx))
            return false;
    return true;
}

bool manifest_name_valid(const char *name)
{
    size_t pre = strlen(MANIFEST_NAME_PREFIX);
    if (strncmp(name, MANIFEST_NAME_PREFIX, pre))
        return false;
    const char *d = name + pre;
    size_t digits = strspn(d, "0123456789");
    if (digits == 0 || digits > MANIFEST_MAX_DIGITS || (digits > 1 && d[0] == '0'))
        return false;
    return strcmp(d + digits, MANIFEST_NAME_SUFFIX) == 0;
}

/* ---- encoding ---- */

static size_t string_size(const char *s)
{
    return sizeof(uint32_t) + (s ? strlen(s) : 0);
}

static uint8_t *put_u32(uint8_t *p, uint32_t v)
{
    v = htole32(v);
    memcpy(p, &v, sizeof(v));
    return p + sizeof(v);
}

static uint8_t *put_u64(uint8_t *p, uint64_t v)
{
    v = htole64(v);
    memcpy(p, &v, sizeof(v));
    return p + sizeof(v);
}

static uint8_t *put_string(uint8_t *p, const char *s)
{
    if (!s)
        return put_u32(p, MANIFEST_NO_STRING);
    size_t n = strlen(s);
    p = put_u32(p, (uint32_t)n);
    memcpy(p, s, n);
    return p + n;
}

/* The header's strings: valid and within the limit. */
static bool strings_valid(const struct manifest *m)
{
    const char *strings[] = {m->disk, m->change_id, m->snapshot_path};
    if (!m->disk || !*m->disk)
        return false;
    for (size_t i = 0; i < ARRAY_SIZE(strings); i++)
        if (strings[i] && strlen(strings[i]) > MANIFEST_MAX_STRING)
            return false;
    return true;
}

int manifest_encode(const struct manifest *m, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (!strings_valid(m) || !repo_chunk_size_valid(m->chunk_size) || !entries_valid(m))
        return -EINVAL;
    const char *strings[] = {m->disk, m->change_id, m->snapshot_path};
    uint64_t n = entries_for(m->disk_size, m->chunk_size);

    /* One kind byte per chunk and an ID per stored chunk. */
    uint64_t size = MANIFEST_FIXED_SIZE + string_size(m->disk) + string_size(m->change_id) +
                    string_size(m->snapshot_path);
    if (n > (UINT64_MAX - size) / (1 + HASH_SIZE))
        return -EFBIG;
    size += n + (uint64_t)m->n_entries * HASH_SIZE;
    if (size > REPO_MAX_META_SIZE || size > SIZE_MAX)
        return -EFBIG;

    uint8_t *buf = malloc((size_t)size);
    if (!buf)
        return -ENOMEM;
    uint8_t *p = buf;
    memcpy(p, manifest_magic, sizeof(manifest_magic));
    p += sizeof(manifest_magic);
    p = put_u32(p, MANIFEST_VERSION);
    p = put_u64(p, m->disk_size);
    p = put_u32(p, m->chunk_size);
    p = put_u32(p, 0); /* reserved */
    p = put_u64(p, n);
    for (size_t i = 0; i < ARRAY_SIZE(strings); i++)
        p = put_string(p, strings[i]);
    size_t k = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (k < m->n_entries && m->e[k].idx == i) {
            *p++ = ENTRY_CHUNK;
            memcpy(p, m->e[k++].id.b, HASH_SIZE);
            p += HASH_SIZE;
        } else {
            *p++ = ENTRY_ZERO;
        }
    }
    *out = buf;
    *len = (size_t)(p - buf);
    return 0;
}

/* ---- decoding ---- */

struct reader {
    const uint8_t *p;
    size_t left;
};

static int get_bytes(struct reader *rd, void *out, size_t n)
{
    if (rd->left < n)
        return -EBADMSG;
    memcpy(out, rd->p, n);
    rd->p += n;
    rd->left -= n;
    return 0;
}

static int get_u32(struct reader *rd, uint32_t *v)
{
    int r = get_bytes(rd, v, sizeof(*v));
    *v = le32toh(*v);
    return r;
}

static int get_u64(struct reader *rd, uint64_t *v)
{
    int r = get_bytes(rd, v, sizeof(*v));
    *v = le64toh(*v);
    return r;
}

/* A string, or NULL when absent (only if optional). */
static int get_string(struct reader *rd, bool optional, char **out)
{
    uint32_t n;
    *out = NULL;
    if (get_u32(rd, &n) < 0)
        return -EBADMSG;
    if (n == MANIFEST_NO_STRING)
        return optional ? 0 : -EBADMSG;
    if (n > MANIFEST_MAX_STRING || n > rd->left || memchr(rd->p, '\0', n))
        return -EBADMSG;
    char *s = malloc((size_t)n + 1);
    if (!s)
        return -ENOMEM;
    memcpy(s, rd->p, n);
    s[n] = '\0';
    rd->p += n;
    rd->left -= n;
    *out = s;
    return 0;
}

int manifest_decode(const uint8_t *p, size_t len, struct manifest *m)
{
    struct reader rd = {.p = p, .left = len};
    uint8_t magic[sizeof(manifest_magic)];
    uint32_t version, chunk_size, reserved;
    uint64_t disk_size, n;
    int ret;

    memset(m, 0, sizeof(*m));
    if (get_bytes(&rd, magic, sizeof(magic)) < 0 || memcmp(magic, manifest_magic, sizeof(magic)) ||
        get_u32(&rd, &version) < 0 || version != MANIFEST_VERSION || get_u64(&rd, &disk_size) < 0 ||
        get_u32(&rd, &chunk_size) < 0 || !repo_chunk_size_valid(chunk_size) ||
        get_u32(&rd, &reserved) < 0 || reserved || get_u64(&rd, &n) < 0 ||
        n != entries_for(disk_size, chunk_size))
        return -EBADMSG;

    if ((ret = get_string(&rd, false, &m->disk)) < 0 ||
        (ret = get_string(&rd, true, &m->change_id)) < 0 ||
        (ret = get_string(&rd, true, &m->snapshot_path)) < 0)
        goto fail;
    ret = -EBADMSG;
    if (!*m->disk || n > rd.left) /* every entry takes at least one byte */
        goto fail;
    m->disk_size = disk_size;
    m->chunk_size = chunk_size;
    for (uint64_t i = 0; i < n; i++) {
        uint8_t kind;
        struct chunk_id id;
        ret = -EBADMSG;
        if (get_bytes(&rd, &kind, 1) < 0)
            goto fail;
        if (kind == ENTRY_CHUNK) {
            if (get_bytes(&rd, id.b, HASH_SIZE) < 0)
                goto fail;
            if ((ret = manifest_append(m, i, &id)) < 0)
                goto fail;
        } else if (kind != ENTRY_ZERO) {
            goto fail;
        }
    }
    ret = -EBADMSG;
    if (rd.left)
        goto fail;
    return 0;
fail:
    manifest_free(m);
    return ret;
}

/* ---- format 3: a segmented stream ---- */

static int encode_header_v3(const struct manifest *m, uint8_t **out, size_t *len)
{
    size_t size = MANIFEST_V3_FIXED + string_size(m->disk) + string_size(m->change_id) +
                  string_size(m->snapshot_path);
    uint8_t *buf = malloc(size), *p = buf;
    if (!buf)
        return -ENOMEM;
    memcpy(p, manifest_magic, sizeof(manifest_magic));
    p += sizeof(manifest_magic);
    p = put_u32(p, MANIFEST_VERSION_V3);
    p = put_u64(p, m->disk_size);
    p = put_u32(p, m->chunk_size);
    p = put_u32(p, 0); /* reserved */
    p = put_string(p, m->disk);
    p = put_string(p, m->change_id);
    p = put_string(p, m->snapshot_path);
    *out = buf;
    *len = (size_t)(p - buf);
    return 0;
}

static int save_v3(struct repo *r, const char *relpath, const struct manifest *m)
{
    struct stream_writer *w = NULL;
    CLEANUP_FREE uint8_t *head = NULL;
    CLEANUP_FREE uint8_t *seg = NULL;
    size_t hlen;
    int ret = encode_header_v3(m, &head, &hlen);
    if (ret == 0)
        ret = stream_writer_new(r, relpath, &w);
    if (ret == 0)
        ret = stream_writer_add(w, head, hlen);
    size_t per = m->n_entries < MANIFEST_SEGMENT_ENTRIES ? m->n_entries : MANIFEST_SEGMENT_ENTRIES;
    if (ret == 0 && !(seg = malloc(per ? per * MANIFEST_V3_ENTRY : 1)))
        ret = -ENOMEM;
    for (size_t k = 0; ret == 0 && k < m->n_entries; k += per) {
        size_t n = m->n_entries - k < per ? m->n_entries - k : per;
        uint8_t *p = seg;
        for (size_t j = 0; j < n; j++) {
            p = put_u64(p, m->e[k + j].idx);
            memcpy(p, m->e[k + j].id.b, HASH_SIZE);
            p += HASH_SIZE;
        }
        ret = stream_writer_add(w, seg, (size_t)(p - seg));
    }
    if (ret == 0)
        ret = stream_writer_put(w, m->n_entries, STORE_PUT_REPLACE);
    stream_writer_free(w);
    return ret;
}

static int decode_header_v3(const uint8_t *p, size_t len, struct manifest *m)
{
    struct reader rd = {.p = p, .left = len};
    uint8_t magic[sizeof(manifest_magic)];
    uint32_t version, chunk_size, reserved;
    uint64_t disk_size;
    int ret;
    if (get_bytes(&rd, magic, sizeof(magic)) < 0 || memcmp(magic, manifest_magic, sizeof(magic)) ||
        get_u32(&rd, &version) < 0 || version != MANIFEST_VERSION_V3 ||
        get_u64(&rd, &disk_size) < 0 || get_u32(&rd, &chunk_size) < 0 ||
        !repo_chunk_size_valid(chunk_size) || get_u32(&rd, &reserved) < 0 || reserved)
        return -EBADMSG;
    if ((ret = get_string(&rd, false, &m->disk)) < 0 ||
        (ret = get_string(&rd, true, &m->change_id)) < 0 ||
        (ret = get_string(&rd, true, &m->snapshot_path)) < 0)
        return ret;
    if (!*m->disk || rd.left)
        return -EBADMSG;
    m->disk_size = disk_size;
    m->chunk_size = chunk_size;
    return 0;
}

static int load_v3(struct repo *r, const char *relpath, struct manifest *m)
{
    struct stream_reader *rd = NULL;
    const uint8_t *p;
    size_t len;
    int ret = stream_reader_open(r, relpath, REPO_MAX_META_SIZE, &rd);
    if (ret < 0)
        return ret;
    ret = stream_reader_next(rd, &p, &len);
    if (ret == 1)
        ret = decode_header_v3(p, len, m);
    else if (ret == 0)
        ret = -EBADMSG; /* no header */
    while (ret == 0 && (ret = stream_reader_next(rd, &p, &len)) == 1) {
        /* Entry segments hold at least one entry, whole entries only. */
        if (len == 0 || len % MANIFEST_V3_ENTRY ||
            len / MANIFEST_V3_ENTRY > MANIFEST_SEGMENT_ENTRIES) {
            ret = -EBADMSG;
            break;
        }
        struct reader er = {.p = p, .left = len};
        ret = 0;
        while (ret == 0 && er.left) {
            uint64_t idx = 0;
            struct chunk_id id;
            if (get_u64(&er, &idx) < 0 || get_bytes(&er, id.b, HASH_SIZE) < 0)
                ret = -EBADMSG;
            else
                ret = manifest_append(m, idx, &id);
            if (ret == -EINVAL)
                ret = -EBADMSG; /* out of order, repeated or beyond the disk */
        }
    }
    if (ret == 0 && stream_reader_items(rd) != m->n_entries)
        ret = -EBADMSG;
    stream_reader_free(rd);
    if (ret < 0)
        manifest_free(m);
    return ret;
}

int manifest_save(struct repo *r, const char *relpath, const struct manifest *m)
{
    if (!strings_valid(m) || !repo_chunk_size_valid(m->chunk_size) || !entries_valid(m))
        return -EINVAL;
    if (r->format_version >= MANIFEST_VERSION_V3)
        return save_v3(r, relpath, m);
    CLEANUP_FREE uint8_t *data = NULL;
    size_t len;
    int ret = manifest_encode(m, &data, &len);
    return ret < 0 ? ret : repo_meta_write(r, relpath, data, len);
}

int manifest_load(struct repo *r, const char *relpath, struct manifest *m)
{
    memset(m, 0, sizeof(*m));
    if (r->format_version >= MANIFEST_VERSION_V3)
        return load_v3(r, relpath, m);
    CLEANUP_FREE uint8_t *plain = NULL;
    size_t len;
    int ret = repo_meta_read(r, relpath, &plain, &len);
    return ret < 0 ? ret : manifest_decode(plain, len, m);
}
