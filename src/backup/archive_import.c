/* The archive importer (archive_import.h): an UNTRUSTED tar or OVA into a new backup.
 *
 * One pass over the archive: a first member ending in .ovf is only checksummed; vm.json must
 * come before any disk and begins the backup (VM lock); each disk member is cut into chunks of
 * the destination repository's size as it streams in (holes and zero chunks become zero
 * entries) and its manifest written when the member ends; the manifest (*.mf or SHA256SUMS)
 * must be last.  Only then is every member compared with the manifest, and the backup is
 * committed when all match; on any failure it is aborted.  Every size, offset and name taken
 * from the archive is checked before it is used.
 */
#include "backup/archive_import.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup/archive_lib.h"
#include "core/base64.h"
#include "core/cleanup.h"
#include "core/clock.h"
#include "core/hash.h"
#include "core/hex.h"
#include "core/pool.h"
#include "repo/repo.h"

/* Metadata members (descriptor, vm.json, manifest) are read whole: at most this big. */
#define METADATA_MAX (16u << 20)
/* Block size of archive reads from a file or a pipe. */
#define READ_BLOCK_SIZE (64u << 10)
/* First buffer for a metadata member whose size the header does not give. */
#define METADATA_FIRST_CAP 4096
/* Most disks a vm.json may list: far above what any hypervisor gives a VM (VMware: 256), and
 * low enough that comparing names pairwise stays instant (a 16 MiB vm.json could list 500,000). */
#define MAX_DISKS 4096u
/* Chunk bytes an import stages before it makes them durable (as a backup's FLUSH_BYTES). */
#define IMPORT_FLUSH_BYTES ((uint64_t)512 << 20)
/* Members besides the disks that a manifest lists: the OVF descriptor and vm.json. */
#define MAX_METADATA_MEMBERS 2u

struct member_sum {
    char *name;
    uint8_t digest[HASH_SIZE];
    bool matched;
};

struct import_disk {
    char *name, *file, *change_id;
    uint64_t size;
    bool done;
};

struct importer {
    struct archive *a;
    struct repo *repo;
    struct member_sum *seen; /* members read, with their digests */
    size_t nseen;
    struct member_sum *listed; /* manifest lines */
    size_t nlisted;
    char *mf_name;
    json_t *vmj;
    struct import_disk *disks;
    size_t ndisks;
    char *vm_id;
    struct backup_writer *w;
    const struct backup_progress *prog;
    uint64_t max_disk_size; /* 0: no limit */
    uint8_t *buf, *zeros;
    struct chunk_batch *batch; /* the chunks, made durable before each disk's manifest */
    uint64_t bytes_written, chunks_new, chunks_reused;
    struct first_error fe; /* the first failure, or every mismatch with the manifest */
};

/* Append name and digest to the list *sums of *n (members seen, or listed in the manifest). */
static int member_sums_add(struct member_sum **sums, size_t *n, const char *name,
                           const uint8_t digest[HASH_SIZE])
{
    struct member_sum *t = realloc(*sums, (*n + 1) * sizeof(*t));
    if (!t)
        return -ENOMEM;
    *sums = t;
    t[*n].name = strdup(name);
    if (!t[*n].name)
        return -ENOMEM;
    memcpy(t[*n].digest, digest, HASH_SIZE);
    t[*n].matched = false;
    (*n)++;
    return 0;
}

static int record_member(struct importer *im, const char *name, const uint8_t digest[HASH_SIZE])
{
    return member_sums_add(&im->seen, &im->nseen, name, digest);
}

/* A metadata member, whole (NUL-terminated); record: note its digest for the manifest. */
static int read_small(struct importer *im, struct archive_entry *e, const char *name, bool record,
                      char **out, size_t *len)
{
    bool sized = sym_archive_entry_size_is_set(e);
    la_int64_t declared = sym_archive_entry_size(e);
    if (sized && (declared < 0 || declared > (la_int64_t)METADATA_MAX)) {
        return first_error_set(&im->fe, -EFBIG,
                               "member %s: size %" PRId64 " is not within 0 to %u MiB", name,
                               (int64_t)declared, METADATA_MAX >> 20);
    }
    /* at least 1, so that doubling grows it */
    size_t cap = sized ? (size_t)declared + 1 : METADATA_FIRST_CAP, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return -ENOMEM;
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > METADATA_MAX) {
                free(buf);
                return first_error_set(&im->fe, -EFBIG, "member %s is larger than %u MiB", name,
                                       METADATA_MAX >> 20);
            }
            char *t = realloc(buf, cap * 2);
            if (!t) {
                free(buf);
                return -ENOMEM;
            }
            buf = t;
            cap *= 2;
        }
        la_ssize_t got = sym_archive_read_data(im->a, buf + n, cap - n - 1);
        if (got < 0) {
            free(buf);
            return first_error_set(&im->fe, -EIO, "member %s: %s", name,
                                   sym_archive_error_string(im->a));
        }
        if (got == 0)
            break;
        n += (size_t)got;
    }
    buf[n] = '\0';
    uint8_t digest[HASH_SIZE];
    if (record && (hash_sha256(buf, n, digest) < 0 || record_member(im, name, digest) < 0)) {
        free(buf);
        return -ENOMEM;
    }
    *out = buf;
    *len = n;
    return 0;
}

/* Manifest lines "SHA256(name)= hex" (spaces around '=' and before '(' tolerated). */
static int parse_mf(struct importer *im, const char *name, char *text)
{
    unsigned lineno = 0;
    for (char *line = text, *next; line && *line; line = next) {
        lineno++;
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        size_t n = strlen(line);
        while (n && (line[n - 1] == '\r' || line[n - 1] == ' '))
            line[--n] = '\0';
        if (!n)
            continue;
        static const char algo[] = "SHA256";
        if (strncmp(line, algo, strlen(algo))) {
            return first_error_set(&im->fe, -EINVAL,
                                   "manifest %s, line %u: only SHA256 digests are supported", name,
                                   lineno);
        }
        char *p = line + strlen(algo);
        while (*p == ' ')
            p++;
        char *q = line + n;
        bool ok = *p == '(' && q - p > ARCHIVE_HEX_DIGEST_LEN + 2;
        uint8_t digest[HASH_SIZE];
        if (ok) {
            q -= ARCHIVE_HEX_DIGEST_LEN;
            ok = hex_decode(q, digest, HASH_SIZE) == 0;
            while (ok && q > p && q[-1] == ' ')
                q--;
            ok = ok && q > p && q[-1] == '=';
            q--;
            while (ok && q > p && q[-1] == ' ')
                q--;
            ok = ok && q > p + 1 && q[-1] == ')';
        }
        if (!ok) {
            return first_error_set(&im->fe, -EINVAL,
                                   "manifest %s, line %u: expected 'SHA256(NAME)= HEX'", name,
                                   lineno);
        }
        q[-1] = '\0';
        const char *member = p + 1;
        for (size_t i = 0; i < im->nlisted; i++)
            if (!strcmp(im->listed[i].name, member)) {
                return first_error_set(&im->fe, -EINVAL, "manifest %s lists %s twice", name,
                                       member);
            }
        if (im->nlisted >= MAX_DISKS + MAX_METADATA_MEMBERS) {
            return first_error_set(&im->fe, -EINVAL,
                                   "manifest %s lists more members than an archive holds", name);
        }
        int r = member_sums_add(&im->listed, &im->nlisted, member, digest);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Checks vm.json and takes the disks from it. */
static int parse_vm_json(struct importer *im, const char *text)
{
    json_error_t jerr;
    im->vmj = json_loads(text, 0, &jerr);
    if (!im->vmj)
        return first_error_set(&im->fe, -EINVAL, "vm.json: line %d: %s", jerr.line, jerr.text);
    const char *fmt = json_string_value(json_object_get(im->vmj, "format"));
    json_t *ver = json_object_get(im->vmj, "version");
    if (!fmt || strcmp(fmt, ARCHIVE_FORMAT_NAME) || !json_is_integer(ver)) {
        return first_error_set(&im->fe, -EINVAL,
                               "vm.json: not a vmexport archive (format is not \"%s\")",
                               ARCHIVE_FORMAT_NAME);
    }
    if (json_integer_value(ver) != ARCHIVE_FORMAT_VERSION) {
        return first_error_set(&im->fe, -EPROTONOSUPPORT,
                               "vm.json: archive version %" JSON_INTEGER_FORMAT " is not supported "
                               "(supports %d)",
                               json_integer_value(ver), ARCHIVE_FORMAT_VERSION);
    }
    if (!json_is_integer(json_object_get(im->vmj, "time")))
        return first_error_set(&im->fe, -EINVAL, "vm.json: no time");
    json_t *disks = json_object_get(im->vmj, "disks");
    if (!json_is_array(disks))
        return first_error_set(&im->fe, -EINVAL, "vm.json: no disks");
    if (json_array_size(disks) > MAX_DISKS) {
        return first_error_set(&im->fe, -EINVAL,
                               "vm.json: %zu disks, more than the %u a VM may have",
                               json_array_size(disks), MAX_DISKS);
    }
    im->ndisks = json_array_size(disks);
    im->disks = calloc(im->ndisks ? im->ndisks : 1, sizeof(*im->disks));
    if (!im->disks)
        return -ENOMEM;
    for (size_t i = 0; i < im->ndisks; i++) {
        json_t *d = json_array_get(disks, i);
        const char *name = json_string_value(json_object_get(d, "name"));
        const char *file = json_string_value(json_object_get(d, "file"));
        const char *cid = json_string_value(json_object_get(d, "change_id"));
        json_t *size = json_object_get(d, "size");
        if (!name || !*name || !file || !*file || !json_is_integer(size) ||
            json_integer_value(size) < 0) {
            return first_error_set(&im->fe, -EINVAL, "vm.json: disk %zu lacks a name, file or size",
                                   i);
        }
        for (size_t k = 0; k < i; k++)
            if (!strcmp(im->disks[k].name, name) || !strcmp(im->disks[k].file, file)) {
                return first_error_set(&im->fe, -EINVAL,
                                       "vm.json: disk %s or member %s appears twice", name, file);
            }
        im->disks[i].name = strdup(name);
        im->disks[i].file = strdup(file);
        im->disks[i].change_id = cid ? strdup(cid) : NULL;
        im->disks[i].size = (uint64_t)json_integer_value(size);
        if (!im->disks[i].name || !im->disks[i].file || (cid && !im->disks[i].change_id))
            return -ENOMEM;
    }
    return 0;
}

/* The VM ID of the imported backup: --vm, else vm.json's. */
static char *import_vm_id(struct importer *im, const char *vm_opt)
{
    if (vm_opt)
        return strdup(vm_opt);
    const char *id = json_string_value(json_object_get(im->vmj, "vm_id"));
    if (id && *id)
        return strdup(id);
    const char *b64 = json_string_value(json_object_get(im->vmj, "vm_id_base64"));
    if (!b64 || !*b64)
        return NULL;
    uint8_t *raw = NULL;
    size_t n = 0;
    if (base64_decode(b64, &raw, &n) < 0 || n == 0 || memchr(raw, '\0', n)) {
        free(raw);
        return NULL; /* not canonical base64 of an ID: no VM named */
    }
    raw[n] = '\0'; /* base64_decode leaves a spare byte */
    return (char *)raw;
}

static int store_failed(struct importer *im, const struct manifest *m, uint64_t i, int r)
{
    return first_error_set(&im->fe, r, "disk %s: storing the chunk at offset %" PRIu64 ": %s",
                           m->disk, i * m->chunk_size,
                           r == -ENOSPC ? "no space left in the repository" : strerror(-r));
}

/* Store chunk i (chunks come in increasing order) and add it to m, unless it is zeros.  The
 * chunks go into one batch (format 3: a few packs and one index object per flush, not a pack
 * per chunk), flushed every IMPORT_FLUSH_BYTES and before each manifest. */
static int store_chunk(struct importer *im, struct manifest *m, uint64_t i, const uint8_t *data,
                       size_t len)
{
    if (buf_is_zero(data, len))
        return 0;
    struct chunk_id id;
    uint64_t pending = 0;
    repo_chunk_id(im->repo, data, len, &id);
    int r = manifest_append(m, i, &id);
    if (r == 0 && !im->batch)
        r = repo_chunk_batch_new(im->repo, &im->batch);
    if (r == 0)
        r = repo_chunk_batch_put(im->batch, &id, data, len, &pending);
    if (r == 0 && pending >= IMPORT_FLUSH_BYTES)
        r = repo_chunk_batch_flush(im->batch);
    return r < 0 ? store_failed(im, m, i, r) : 0;
}

/* Chunk a disk member into the repository at its chunk size; its digest is recorded. */
/* Finish chunk cur of the disk of m: its bytes (im->buf when dirty, else zeros) go into the
 * member's digest and, unless zero, into the repository; im->buf is zeroed for the next. */
static int chunk_finish(struct importer *im, struct manifest *m, struct member_digest *dg,
                        uint64_t cur, bool *dirty)
{
    const uint64_t cs = m->chunk_size;
    size_t clen = m->disk_size - cur * cs < cs ? (size_t)(m->disk_size - cur * cs) : (size_t)cs;
    const uint8_t *data = *dirty ? im->buf : im->zeros;
    int r = member_digest_update(dg, data, clen);
    if (r == 0 && *dirty)
        r = store_chunk(im, m, cur, data, clen);
    if (r < 0)
        return r;
    if (*dirty)
        memset(im->buf, 0, cs);
    *dirty = false;
    backup_progress_add(im->prog, clen);
    return 0;
}

static int import_disk(struct importer *im, struct archive_entry *e, struct import_disk *d,
                       const char *member)
{
    if (sym_archive_entry_size(e) != (la_int64_t)d->size) {
        return first_error_set(&im->fe, -EINVAL,
                               "member %s: size %" PRId64 " differs from vm.json's %" PRIu64,
                               member, (int64_t)sym_archive_entry_size(e), d->size);
    }
    const uint32_t cs = repo_chunk_size(im->repo);
    struct manifest m;
    int r = manifest_new(&m, d->name, d->size, cs);
    if (r < 0)
        return first_error_set(&im->fe, r, "disk %s: %s", d->name, strerror(-r));
    if (d->change_id && !(m.change_id = strdup(d->change_id))) {
        manifest_free(&m);
        return -ENOMEM;
    }
    struct member_digest dg;
    if (member_digest_begin(&dg) < 0) {
        manifest_free(&m);
        return -ENOMEM;
    }
    /* cur: the chunk being filled in im->buf (zeroed, so holes read as zeros); pos: the end
     * of the data seen so far.  A chunk is finished when data beyond it arrives. */
    uint64_t cur = 0, pos = 0;
    bool dirty = false;
    for (;;) {
        const void *block;
        size_t len;
        la_int64_t off;
        int rr = sym_archive_read_data_block(im->a, &block, &len, &off);
        if (rr == ARCHIVE_EOF)
            break;
        if (rr < ARCHIVE_WARN) {
            r = first_error_set(&im->fe, -EIO, "member %s: %s", member,
                                sym_archive_error_string(im->a));
            goto done;
        }
        if (off < 0 || (uint64_t)off < pos || (uint64_t)off > d->size ||
            len > d->size - (uint64_t)off) {
            r = first_error_set(&im->fe, -EINVAL,
                                "member %s: data at offset %" PRId64
                                " is out of order or beyond its size",
                                member, (int64_t)off);
            goto done;
        }
        const uint8_t *p = block;
        uint64_t o = (uint64_t)off;
        pos = o + len;
        while (len > 0) {
            uint64_t idx = o / cs;
            while (cur < idx) { /* finish chunk cur, then any holes before idx */
                if ((r = chunk_finish(im, &m, &dg, cur, &dirty)) < 0)
                    goto done;
                cur++;
            }
            size_t in = (size_t)(o % cs);
            size_t take = len < cs - in ? len : cs - in;
            memcpy(im->buf + in, p, take);
            dirty = true;
            p += take;
            o += take;
            len -= take;
        }
    }
    for (; cur < manifest_chunks(&m); cur++)
        if ((r = chunk_finish(im, &m, &dg, cur, &dirty)) < 0)
            goto done;
    uint8_t digest[HASH_SIZE];
    if ((r = member_digest_end(&dg, digest)) < 0 || (r = record_member(im, member, digest)) < 0)
        goto done;
    /* Every chunk the manifest names is durable and findable before it is written. */
    if (im->batch && (r = repo_chunk_batch_flush(im->batch)) < 0) {
        store_failed(im, &m, manifest_chunks(&m), r);
        goto done;
    }
    r = repo_backup_add_disk(im->w, &m);
    if (r < 0)
        first_error_set(&im->fe, r, "disk %s: writing the manifest: %s", d->name,
                        r == -ENOSPC ? "no space left in the repository" : strerror(-r));
    d->done = r == 0;
done:
    member_digest_discard(&dg);
    manifest_free(&m);
    return r;
}

/* Leading "./" is tolerated; anything with a directory part is not one of ours. */
static const char *member_name(const char *path)
{
    while (path[0] == '.' && path[1] == '/')
        path += 2;
    return path;
}

/* Problems found with the manifest, listed one after the other, separated by "; ". */
struct problems {
    char text[FIRST_ERROR_MSG_MAX];
    unsigned n;
};

static void problem_add(struct problems *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void problem_add(struct problems *p, const char *fmt, ...)
{
    size_t used = strlen(p->text);
    if (used && used + 2 < sizeof(p->text)) {
        memcpy(p->text + used, "; ", 3);
        used += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->text + used, sizeof(p->text) - used, fmt, ap);
    va_end(ap);
    p->n++;
}

/* Compare the digests of the members read with the manifest; report every difference. */
static int check_manifest(struct importer *im)
{
    struct problems p = {""};
    for (size_t i = 0; i < im->nseen; i++) {
        struct member_sum *s = &im->seen[i];
        struct member_sum *l = NULL;
        for (size_t k = 0; k < im->nlisted && !l; k++)
            if (!strcmp(im->listed[k].name, s->name))
                l = &im->listed[k];
        if (!l) {
            problem_add(&p, "member %s is not in the manifest %s", s->name, im->mf_name);
            continue;
        }
        l->matched = true;
        if (memcmp(l->digest, s->digest, HASH_SIZE))
            problem_add(&p,
                        "member %s does not match its SHA-256 in the manifest %s (damaged or "
                        "tampered with)",
                        s->name, im->mf_name);
    }
    for (size_t k = 0; k < im->nlisted; k++)
        if (!im->listed[k].matched)
            problem_add(&p, "member %s is in the manifest %s but missing from the archive",
                        im->listed[k].name, im->mf_name);
    for (size_t k = 0; k < im->ndisks; k++)
        if (!im->disks[k].done)
            problem_add(&p, "disk %s (member %s) is missing", im->disks[k].name, im->disks[k].file);
    return p.n ? first_error_set(&im->fe, -EBADMSG, "%s", p.text) : 0;
}

/* vm.json: parse it, choose the VM and begin the backup. */
static int begin_from_vm_json(struct importer *im, const char *text, const char *vm_opt,
                              unsigned lock_timeout)
{
    int r = parse_vm_json(im, text);
    if (r < 0)
        return r;
    im->vm_id = import_vm_id(im, vm_opt);
    if (!im->vm_id)
        return first_error_set(&im->fe, -EINVAL, "vm.json names no VM: use --vm NAME");
    uint64_t total = 0;
    for (size_t k = 0; k < im->ndisks; k++) {
        if (im->max_disk_size && im->disks[k].size > im->max_disk_size) {
            return first_error_set(&im->fe, -EFBIG,
                                   "vm.json: disk %s: %" PRIu64 " bytes, more than the %" PRIu64
                                   " allowed",
                                   im->disks[k].name, im->disks[k].size, im->max_disk_size);
        }
        total += im->disks[k].size;
    }
    char err[512] = "";
    json_int_t t = json_integer_value(json_object_get(im->vmj, "time"));
    r = repo_backup_begin(im->repo, im->vm_id, (int64_t)t, lock_timeout, &im->w, err, sizeof(err));
    if (r < 0) {
        return first_error_set(&im->fe, r, "%s: %s", repo_path(im->repo),
                               err[0] ? err : strerror(-r));
    }
    backup_progress_begin(im->prog, NULL, total);
    return 0;
}

/* One member, whose header e was just read. */
static int import_member(struct importer *im, struct archive_entry *e, size_t nmember,
                         const char *vm_opt, unsigned lock_timeout)
{
    const char *name = member_name(sym_archive_entry_pathname(e) ?: "");
    if (im->mf_name) {
        return first_error_set(&im->fe, -EINVAL,
                               "member %s follows the manifest %s, which must be last", name,
                               im->mf_name);
    }
    if (!*name || strchr(name, '/') || sym_archive_entry_filetype(e) != AE_IFREG) {
        return first_error_set(&im->fe, -EINVAL,
                               "member %s is not a plain file at the top of the archive", name);
    }
    for (size_t k = 0; k < im->nseen; k++)
        if (!strcmp(im->seen[k].name, name))
            return first_error_set(&im->fe, -EINVAL, "member %s appears twice", name);
    struct import_disk *disk = NULL;
    for (size_t k = 0; k < im->ndisks && !disk; k++)
        if (!strcmp(im->disks[k].file, name))
            disk = &im->disks[k];
    CLEANUP_FREE char *text = NULL;
    size_t len = 0;
    int r;
    if (disk) {
        r = import_disk(im, e, disk, name);
    } else if (nmember == 0 && archive_ends_with(name, ARCHIVE_OVF_SUFFIX)) {
        r = read_small(im, e, name, true, &text, &len); /* the descriptor: only checked */
    } else if (!strcmp(name, ARCHIVE_VM_JSON) && !im->w) {
        r = read_small(im, e, name, true, &text, &len);
        if (r == 0)
            r = begin_from_vm_json(im, text, vm_opt, lock_timeout);
    } else if (archive_ends_with(name, ARCHIVE_MF_SUFFIX) || !strcmp(name, ARCHIVE_TAR_MANIFEST)) {
        im->mf_name = strdup(name);
        if (!im->mf_name)
            return -ENOMEM;
        r = read_small(im, e, name, false, &text, &len); /* it does not list itself */
        if (r == 0)
            r = parse_mf(im, name, text);
    } else if (!im->w) {
        r = first_error_set(&im->fe, -EINVAL,
                            "member %s comes before vm.json (not a vmexport archive?)", name);
    } else {
        r = first_error_set(&im->fe, -EINVAL, "unexpected member %s (not a disk listed in vm.json)",
                            name);
    }
    return r;
}

/* Every member, then the checks that need the whole archive. */
static int import_members(struct importer *im, const struct archive_import_options *o)
{
    unsigned lock_timeout = o->lock_timeout ? o->lock_timeout : ARCHIVE_LOCK_TIMEOUT;
    for (size_t nmember = 0;; nmember++) {
        struct archive_entry *e;
        int rr = sym_archive_read_next_header(im->a, &e);
        if (rr == ARCHIVE_EOF)
            break;
        if (rr < ARCHIVE_WARN)
            return first_error_set(&im->fe, -EIO, "%s", sym_archive_error_string(im->a));
        int r = import_member(im, e, nmember, o->vm_id, lock_timeout);
        if (r < 0)
            return r;
    }
    if (!im->w)
        return first_error_set(&im->fe, -EINVAL, "no vm.json (not a vmexport archive?)");
    if (!im->mf_name) {
        return first_error_set(&im->fe, -EINVAL, "no manifest (VM%s or %s) at its end",
                               ARCHIVE_MF_SUFFIX, ARCHIVE_TAR_MANIFEST);
    }
    return check_manifest(im);
}

/* The backup's record from vm.json, committed. */
static int import_commit(struct importer *im, struct archive_import_result *res, int64_t t0)
{
    struct backup *info = calloc(1, sizeof(*info));
    if (!info)
        return -ENOMEM;
    const char *snap = json_string_value(json_object_get(im->vmj, "snapshot_id"));
    const char *server = json_string_value(json_object_get(im->vmj, "server"));
    const char *source = json_string_value(json_object_get(im->vmj, "backup_id"));
    json_t *vm = json_object_get(im->vmj, "vm");
    const char *vm_text = json_string_value(json_object_get(im->vmj, "vm_json"));
    info->snapshot_id = strdup(snap ? snap : "");
    info->server = server ? strdup(server) : NULL;
    info->vm_json = vm        ? json_dumps(vm, JSON_COMPACT | JSON_ENCODE_ANY)
                    : vm_text ? strdup(vm_text)
                              : NULL;
    info->time = (int64_t)json_integer_value(json_object_get(im->vmj, "time"));
    info->bytes_read = (uint64_t)sym_archive_filter_bytes(im->a, -1);
    if (im->batch)
        repo_chunk_batch_stats(im->batch, &im->chunks_new, &im->chunks_reused, &im->bytes_written);
    info->bytes_written = im->bytes_written;
    info->chunks_new = im->chunks_new;
    info->chunks_reused = im->chunks_reused;
    info->seconds = (double)(clock_monotonic_ns() - t0) / 1e9;
    res->backup_id = strdup(repo_backup_writer_id(im->w));
    res->vm_id = strdup(im->vm_id);
    res->source_backup = source ? strdup(source) : NULL;
    int r = 0;
    if (!info->snapshot_id || !res->backup_id || !res->vm_id || (source && !res->source_backup))
        r = -ENOMEM;
    if (r == 0) {
        r = repo_backup_commit(im->w, info);
        if (r < 0)
            first_error_set(&im->fe, r, "%s: committing the backup: %s", repo_path(im->repo),
                            r == -ENOSPC ? "no space left in the repository" : strerror(-r));
    }
    if (r == 0) {
        im->w = NULL;
        res->disks = im->ndisks;
        res->bytes_read = info->bytes_read;
        res->bytes_written = im->bytes_written;
        res->chunks_new = im->chunks_new;
        res->chunks_reused = im->chunks_reused;
    }
    backup_free(info);
    return r;
}

static void importer_free(struct importer *im)
{
    repo_chunk_batch_free(im->batch);
    if (im->w)
        repo_backup_abort(im->w);
    if (im->a)
        sym_archive_read_free(im->a);
    for (size_t i = 0; i < im->nseen; i++)
        free(im->seen[i].name);
    free(im->seen);
    for (size_t i = 0; i < im->nlisted; i++)
        free(im->listed[i].name);
    free(im->listed);
    for (size_t i = 0; im->disks && i < im->ndisks; i++) {
        free(im->disks[i].name);
        free(im->disks[i].file);
        free(im->disks[i].change_id);
    }
    free(im->disks);
    free(im->mf_name);
    free(im->vm_id);
    json_decref(im->vmj);
    free(im->buf);
    free(im->zeros);
}

int archive_import(const struct archive_import_options *o, struct archive_import_result *res,
                   char *err, size_t errlen)
{
    *res = (struct archive_import_result){0};
    int64_t t0 = clock_monotonic_ns();
    char why[512];
    if (archive_lib_load(why, sizeof(why)) < 0) {
        snprintf(err, errlen, "cannot load libarchive: %s", why);
        return -ELIBACC;
    }
    struct importer im = {.repo = o->repo, .prog = &o->progress, .max_disk_size = o->max_disk_size};
    first_error_init(&im.fe, NULL, NULL);
    const uint32_t cs = repo_chunk_size(o->repo);
    int r = -ENOMEM;
    im.buf = calloc(1, cs);
    im.zeros = calloc(1, cs);
    im.a = sym_archive_read_new();
    if (!im.buf || !im.zeros || !im.a)
        goto out;
    sym_archive_read_support_format_tar(im.a);
    sym_archive_read_support_filter_all(im.a);
    r = o->data ? sym_archive_read_open_memory(im.a, o->data, o->size)
                : sym_archive_read_open_fd(im.a, o->fd, READ_BLOCK_SIZE);
    if (r != ARCHIVE_OK) {
        r = first_error_set(&im.fe, -EIO, "%s", sym_archive_error_string(im.a));
        goto out;
    }
    r = import_members(&im, o);
    if (r == 0)
        r = import_commit(&im, res, t0);
out:
    if (r < 0) {
        const char *msg = first_error_message(&im.fe);
        snprintf(err, errlen, "%s", *msg ? msg : strerror(-r));
        archive_import_result_free(res);
    }
    importer_free(&im);
    first_error_destroy(&im.fe);
    return r;
}

void archive_import_result_free(struct archive_import_result *res)
{
    free(res->backup_id);
    free(res->vm_id);
    free(res->source_backup);
    *res = (struct archive_import_result){0};
}
