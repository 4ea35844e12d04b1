/* Manifests: which chunk holds each chunk-sized piece of a backed-up disk, in a compact
 * little-endian binary encoding stored in a container (backups/<vm>/<id>/disk-<n>.manifest).
 * Layout: docs/repository-format.md, "Manifests".
 */
#include "repo_internal.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/cleanup.h"

static const uint8_t manifest_magic[4] = {'V', 'X', 'M', 'F'};
#define MANIFEST_VERSION     1
#define MANIFEST_FIXED_SIZE  32         /* magic .. n, before the strings */
#define MANIFEST_NO_STRING   UINT32_MAX /* length of an absent string */
#define MANIFEST_MAX_STRING  65536      /* disk names, change IDs, paths */
#define ENTRY_ZERO           0
#define ENTRY_CHUNK          1
#define MANIFEST_NAME_PREFIX "disk-"
#define MANIFEST_NAME_SUFFIX ".manifest"
#define MANIFEST_MAX_DIGITS  6

static uint64_t entries_for(uint64_t disk_size, uint32_t chunk_size)
{
    return disk_size / chunk_size + (disk_size % chunk_size != 0);
}

int manifest_new(struct manifest *m, const char *disk, uint64_t disk_size, uint32_t chunk_size)
{
    memset(m, 0, sizeof(*m));
    if (!disk || !*disk || strlen(disk) > MANIFEST_MAX_STRING || !repo_chunk_size_valid(chunk_size))
        return -EINVAL;
    uint64_t n = entries_for(disk_size, chunk_size);
    if (n > SIZE_MAX / sizeof(struct manifest_entry))
        return -EFBIG;
    m->e = calloc(n ? (size_t)n : 1, sizeof(*m->e));
    m->disk = strdup(disk);
    if (!m->e || !m->disk) {
        manifest_free(m);
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < n; i++)
        m->e[i].zero = true;
    m->disk_size = disk_size;
    m->chunk_size = chunk_size;
    m->n = n;
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

int manifest_encode(const struct manifest *m, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (!m->disk || !*m->disk || !repo_chunk_size_valid(m->chunk_size) ||
        m->n != entries_for(m->disk_size, m->chunk_size) || (m->n && !m->e))
        return -EINVAL;
    const char *strings[] = {m->disk, m->change_id, m->snapshot_path};
    for (size_t i = 0; i < ARRAY_SIZE(strings); i++)
        if (strings[i] && strlen(strings[i]) > MANIFEST_MAX_STRING)
            return -EINVAL;

    uint64_t chunks = 0;
    for (uint64_t i = 0; i < m->n; i++)
        chunks += !m->e[i].zero;
    /* One kind byte per entry and an ID per stored chunk. */
    uint64_t size = MANIFEST_FIXED_SIZE + string_size(m->disk) + string_size(m->change_id) +
                    string_size(m->snapshot_path);
    if (m->n > (UINT64_MAX - size) / (1 + HASH_SIZE))
        return -EFBIG;
    size += m->n + chunks * HASH_SIZE;
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
    p = put_u64(p, m->n);
    for (size_t i = 0; i < ARRAY_SIZE(strings); i++)
        p = put_string(p, strings[i]);
    for (uint64_t i = 0; i < m->n; i++) {
        if (m->e[i].zero) {
            *p++ = ENTRY_ZERO;
        } else {
            *p++ = ENTRY_CHUNK;
            memcpy(p, m->e[i].id.b, HASH_SIZE);
            p += HASH_SIZE;
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
    ret = -ENOMEM;
    m->e = malloc(n ? (size_t)n * sizeof(*m->e) : 1);
    if (!m->e)
        goto fail;
    ret = -EBADMSG;
    for (uint64_t i = 0; i < n; i++) {
        uint8_t kind;
        if (get_bytes(&rd, &kind, 1) < 0)
            goto fail;
        if (kind == ENTRY_ZERO) {
            memset(&m->e[i], 0, sizeof(m->e[i]));
            m->e[i].zero = true;
        } else if (kind == ENTRY_CHUNK) {
            m->e[i].zero = false;
            if (get_bytes(&rd, m->e[i].id.b, HASH_SIZE) < 0)
                goto fail;
        } else {
            goto fail;
        }
    }
    if (rd.left)
        goto fail;
    m->disk_size = disk_size;
    m->chunk_size = chunk_size;
    m->n = n;
    return 0;
fail:
    manifest_free(m);
    return ret;
}

int manifest_load(struct repo *r, const char *relpath, struct manifest *m)
{
    CLEANUP_FREE uint8_t *plain = NULL;
    size_t len;
    memset(m, 0, sizeof(*m));
    int ret = repo_meta_read(r, relpath, &plain, &len);
    return ret < 0 ? ret : manifest_decode(plain, len, m);
}
