/* The archive exporter (archive_export.h): one backup as a POSIX pax tar file or an OVA.
 *
 *   <vm>.ovf            (OVA only) OVF 1.0 envelope: one File, Disk and disk Item per disk
 *   vm.json             the backup's metadata: VM, backup ID, time, snapshot, disks
 *   <disk>...           one raw image per disk, a GNU pax 1.0 sparse member whose holes are
 *                       the backup's all-zero chunks; data streamed chunk by chunk
 *   <vm>.mf | SHA256SUMS   SHA-256 of every member above, "SHA256(name)= hex" lines
 *
 * The digests are computed while the members are written, so the manifest comes last and the
 * repository is read once.  The format is described in docs/archive-format.md.
 */
#include "backup/archive_export.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backup/archive_lib.h"
#include "core/base64.h"
#include "core/cleanup.h"
#include "core/hash.h"
#include "core/pool.h"
#include "core/text.h"
#include "repo/repo.h"

/* Longest member name written: the ustar name field holds 100 bytes with its terminator, and
 * libarchive records a sparse member's real name from that field. */
#define MEMBER_NAME_MAX 99
/* Longest base name taken from a VM ID for <vm>.ovf and <vm>.mf. */
#define VM_BASE_MAX 64
/* Permissions of members. */
#define MEMBER_MODE 0644
/* OVF: the format URI of a raw disk image and the CIM resource type of a disk drive. */
#define OVF_RAW_FORMAT  "http://en.wikipedia.org/wiki/Byte"
#define RASD_DISK_DRIVE 17

static bool portable_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           strchr("._~+,=@-", c) != NULL;
}

static bool portable_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MEMBER_NAME_MAX || s[0] == '.' || s[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!portable_char(s[i]))
            return false;
    return true;
}

static void format_utc(int64_t t, char *buf, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

struct export_disk {
    const char *name; /* the backup's disk name */
    char *member;     /* member (file) name in the archive */
    struct manifest m;
    uint64_t populated; /* bytes in non-zero chunks */
    char file_id[32], disk_id[32];
};

struct exporter {
    struct archive *a;
    struct repo *repo;
    const struct backup *b;
    int64_t mtime;
    FILE *mf; /* manifest text being built */
    char *mf_text;
    size_t mf_len;
    const struct backup_progress *prog;
    uint8_t *buf, *zeros; /* chunk buffers */
    uint64_t data_bytes;  /* bytes of disk data written (holes excluded) */
    struct first_error fe;
};

/* XML text or attribute value: escaped, control characters and invalid UTF-8 replaced. */
static void xml_put(FILE *f, const char *s)
{
    const char *p = s;
    while (*p) {
        unsigned char c = (unsigned char)*p;
        size_t n = utf8_char_len(p);
        if (n == 0) {
            fputc('?', f);
            p++;
            continue;
        }
        if (n > 1) {
            fwrite(p, 1, n, f);
            p += n;
            continue;
        }
        switch (c) {
        case '&':
            fputs("&amp;", f);
            break;
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '"':
            fputs("&quot;", f);
            break;
        case '\'':
            fputs("&apos;", f);
            break;
        default:
            fputc(c < 0x20 && c != '\t' ? '?' : c, f);
            break;
        }
        p++;
    }
}

/* The OVF 1.0 descriptor of the backup (text into *out). */
static int build_ovf(const struct backup *b, const char *vm_name, struct export_disk *d, size_t n,
                     char **out, size_t *len)
{
    FILE *f = open_memstream(out, len);
    if (!f)
        return -ENOMEM;
    fputs("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
          "<Envelope ovf:version=\"1.0\"\n"
          "    xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"\n"
          "    xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\"\n"
          "    xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
          "CIM_ResourceAllocationSettingData\"\n"
          "    xmlns:vssd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
          "CIM_VirtualSystemSettingData\"\n"
          "    xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n"
          "  <References>\n",
          f);
    for (size_t i = 0; i < n; i++) {
        fputs("    <File ovf:href=\"", f);
        xml_put(f, d[i].member);
        fprintf(f, "\" ovf:id=\"%s\" ovf:size=\"%" PRIu64 "\"/>\n", d[i].file_id, d[i].m.disk_size);
    }
    fputs("  </References>\n"
          "  <DiskSection>\n"
          "    <Info>Virtual disks: raw images</Info>\n",
          f);
    for (size_t i = 0; i < n; i++)
        fprintf(f,
                "    <Disk ovf:capacity=\"%" PRIu64 "\" ovf:capacityAllocationUnits=\"byte\" "
                "ovf:diskId=\"%s\" ovf:fileRef=\"%s\" ovf:format=\"%s\" "
                "ovf:populatedSize=\"%" PRIu64 "\"/>\n",
                d[i].m.disk_size, d[i].disk_id, d[i].file_id, OVF_RAW_FORMAT, d[i].populated);
    fputs("  </DiskSection>\n"
          "  <VirtualSystem ovf:id=\"",
          f);
    xml_put(f, b->vm_id);
    fputs("\">\n"
          "    <Info>A virtual machine exported by vmexport from backup ",
          f);
    xml_put(f, b->id);
    fputs("</Info>\n"
          "    <Name>",
          f);
    xml_put(f, vm_name);
    fputs("</Name>\n"
          "    <VirtualHardwareSection>\n"
          "      <Info>Virtual hardware: the disks of the backup</Info>\n"
          "      <System>\n"
          "        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n"
          "        <vssd:InstanceID>0</vssd:InstanceID>\n"
          "        <vssd:VirtualSystemIdentifier>",
          f);
    xml_put(f, b->vm_id);
    fputs("</vssd:VirtualSystemIdentifier>\n"
          "        <vssd:VirtualSystemType>vmexport</vssd:VirtualSystemType>\n"
          "      </System>\n",
          f);
    for (size_t i = 0; i < n; i++) {
        fprintf(f,
                "      <Item>\n"
                "        <rasd:AddressOnParent>%zu</rasd:AddressOnParent>\n"
                "        <rasd:ElementName>",
                i);
        xml_put(f, d[i].name);
        fprintf(f,
                "</rasd:ElementName>\n"
                "        <rasd:HostResource>ovf:/disk/%s</rasd:HostResource>\n"
                "        <rasd:InstanceID>%zu</rasd:InstanceID>\n"
                "        <rasd:ResourceType>%d</rasd:ResourceType>\n"
                "      </Item>\n",
                d[i].disk_id, i + 1, RASD_DISK_DRIVE);
    }
    fputs("    </VirtualHardwareSection>\n"
          "  </VirtualSystem>\n"
          "</Envelope>\n",
          f);
    return fclose(f) == 0 ? 0 : -ENOMEM;
}

/* vm.json: the backup's metadata (text into *out). */
static int build_vm_json(const struct backup *b, struct export_disk *d, size_t n,
                         uint32_t chunk_size, char **out)
{
    char utc[32];
    format_utc(b->time, utc, sizeof(utc));
    json_t *o = json_object();
    json_t *disks = json_array();
    if (!o || !disks) {
        json_decref(o);
        json_decref(disks);
        return -ENOMEM;
    }
    json_object_set_new(o, "format", json_string(ARCHIVE_FORMAT_NAME));
    json_object_set_new(o, "version", json_integer(ARCHIVE_FORMAT_VERSION));
    if (utf8_valid(b->vm_id)) {
        json_object_set_new(o, "vm_id", json_string(b->vm_id));
    } else {
        CLEANUP_FREE char *b64 = base64_encode(b->vm_id, strlen(b->vm_id));
        if (!b64) {
            json_decref(o);
            json_decref(disks);
            return -ENOMEM;
        }
        json_object_set_new(o, "vm_id_base64", json_string(b64));
    }
    json_t *vm = b->vm_json ? json_loads(b->vm_json, JSON_DECODE_ANY, NULL) : NULL;
    if (vm)
        json_object_set_new(o, "vm", vm);
    else if (b->vm_json && utf8_valid(b->vm_json))
        json_object_set_new(o, "vm_json", json_string(b->vm_json));
    json_object_set_new(o, "backup_id", json_string(b->id));
    json_object_set_new(o, "time", json_integer(b->time));
    json_object_set_new(o, "time_utc", json_string(utc));
    json_object_set_new(o, "snapshot_id",
                        b->snapshot_id && utf8_valid(b->snapshot_id) ? json_string(b->snapshot_id)
                                                                     : json_null());
    json_object_set_new(o, "server",
                        b->server && utf8_valid(b->server) ? json_string(b->server) : json_null());
    json_object_set_new(o, "chunk_size", json_integer(chunk_size));
    for (size_t i = 0; i < n; i++) {
        json_t *dj = json_pack(
            "{s:s, s:s, s:I, s:I, s:o}", "name", d[i].name, "file", d[i].member, "size",
            (json_int_t)d[i].m.disk_size, "populated_size", (json_int_t)d[i].populated, "change_id",
            d[i].m.change_id && utf8_valid(d[i].m.change_id) ? json_string(d[i].m.change_id)
                                                             : json_null());
        if (!dj || json_array_append_new(disks, dj) < 0) {
            json_decref(o);
            json_decref(disks);
            return -EINVAL;
        }
    }
    json_object_set_new(o, "disks", disks);
    *out = json_dumps(o, JSON_INDENT(2));
    json_decref(o);
    if (!*out)
        return -ENOMEM;
    /* json_dumps gives no final newline. */
    size_t len = strlen(*out);
    char *t = realloc(*out, len + 2);
    if (!t) {
        free(*out);
        *out = NULL;
        return -ENOMEM;
    }
    t[len] = '\n';
    t[len + 1] = '\0';
    *out = t;
    return 0;
}

static struct archive_entry *new_entry(const char *name, uint64_t size, int64_t mtime)
{
    struct archive_entry *e = sym_archive_entry_new();
    if (!e)
        return NULL;
    sym_archive_entry_set_pathname(e, name);
    sym_archive_entry_set_filetype(e, AE_IFREG);
    sym_archive_entry_set_perm(e, MEMBER_MODE);
    sym_archive_entry_set_size(e, (la_int64_t)size);
    sym_archive_entry_set_mtime(e, (time_t)mtime, 0);
    sym_archive_entry_set_uid(e, 0);
    sym_archive_entry_set_gid(e, 0);
    return e;
}

static void add_mf_line(struct exporter *x, const char *name, const uint8_t digest[HASH_SIZE])
{
    char hex[ARCHIVE_HEX_DIGEST_LEN + 1];
    hash_to_hex(digest, hex);
    fprintf(x->mf, "SHA256(%s)= %s\n", name, hex);
}

static int write_small_member(struct exporter *x, const char *name, const char *data, size_t len,
                              bool in_manifest)
{
    struct archive_entry *e = new_entry(name, len, x->mtime);
    if (!e)
        return -ENOMEM;
    int r = sym_archive_write_header(x->a, e);
    sym_archive_entry_free(e);
    if (r < ARCHIVE_WARN || (len && sym_archive_write_data(x->a, data, len) != (la_ssize_t)len) ||
        sym_archive_write_finish_entry(x->a) < ARCHIVE_WARN) {
        return first_error_set(&x->fe, -EIO, "member %s: %s", name, sym_archive_error_string(x->a));
    }
    if (in_manifest) {
        uint8_t digest[HASH_SIZE];
        if (hash_sha256(data, len, digest) < 0)
            return -EIO;
        add_mf_line(x, name, digest);
    }
    return 0;
}

static const char *chunk_error(int r)
{
    return r == -EBADMSG  ? "damaged (fails its checksum or authentication)"
           : r == -ENOENT ? "missing from the repository"
                          : strerror(-r);
}

/* One disk as a sparse member: holes are the all-zero chunks. */
static int write_disk_member(struct exporter *x, struct export_disk *d)
{
    const struct manifest *m = &d->m;
    const uint32_t cs = m->chunk_size;
    struct archive_entry *e = new_entry(d->member, m->disk_size, x->mtime);
    if (!e)
        return -ENOMEM;
    if (d->populated < m->disk_size) {
        /* Runs of stored chunks are the data; a run ending at the disk's end is cut there. */
        for (size_t k = 0; k < m->n_entries;) {
            size_t j = k + 1;
            while (j < m->n_entries && m->e[j].idx == m->e[j - 1].idx + 1)
                j++;
            uint64_t start = m->e[k].idx * cs, last = (m->e[j - 1].idx + 1) * cs;
            uint64_t end = last < m->disk_size ? last : m->disk_size;
            sym_archive_entry_sparse_add_entry(e, (la_int64_t)start, (la_int64_t)(end - start));
            k = j;
        }
        if (d->populated == 0) /* one empty data block at the end: all hole */
            sym_archive_entry_sparse_add_entry(e, (la_int64_t)m->disk_size, 0);
    }
    int r = sym_archive_write_header(x->a, e);
    sym_archive_entry_free(e);
    if (r < ARCHIVE_WARN) {
        return first_error_set(&x->fe, -EIO, "member %s: %s", d->member,
                               sym_archive_error_string(x->a));
    }
    struct member_digest dg;
    if (member_digest_begin(&dg) < 0)
        return -ENOMEM;
    /* Every write lies entirely within one data block or one hole of the member: chunks are
     * the units of both.  Hole bytes given to libarchive are skipped, not written. */
    const uint64_t nchunks = manifest_chunks(m);
    size_t k = 0;
    for (uint64_t i = 0; i < nchunks; i++) {
        uint64_t off = i * cs;
        size_t want = manifest_chunk_len(m, i);
        const uint8_t *data = x->zeros;
        if (k < m->n_entries && m->e[k].idx == i) {
            const struct chunk_id *id = &m->e[k++].id;
            size_t got = 0;
            r = repo_chunk_get(x->repo, id, x->buf, cs, &got);
            if (r == 0 && got != want)
                r = -EBADMSG;
            if (r < 0) {
                char hex[ARCHIVE_HEX_DIGEST_LEN + 1];
                chunk_id_to_hex(id, hex);
                first_error_set(&x->fe, r, "disk %s: chunk %s at offset %" PRIu64 ": %s", d->name,
                                hex, off, chunk_error(r));
                member_digest_discard(&dg);
                return r;
            }
            data = x->buf;
            x->data_bytes += want;
        }
        if (member_digest_update(&dg, data, want) < 0) {
            member_digest_discard(&dg);
            return -EIO;
        }
        if (sym_archive_write_data(x->a, data, want) != (la_ssize_t)want) {
            first_error_set(&x->fe, -EIO, "member %s: %s", d->member,
                            sym_archive_error_string(x->a));
            member_digest_discard(&dg);
            return -EIO;
        }
        backup_progress_add(x->prog, want);
    }
    uint8_t digest[HASH_SIZE];
    if (member_digest_end(&dg, digest) < 0)
        return -EIO;
    if (sym_archive_write_finish_entry(x->a) < ARCHIVE_WARN) {
        return first_error_set(&x->fe, -EIO, "member %s: %s", d->member,
                               sym_archive_error_string(x->a));
    }
    add_mf_line(x, d->member, digest);
    return 0;
}

/* Base of <vm>.ovf and <vm>.mf from the VM ID: portable characters only. */
static char *vm_base_name(const char *vm_id)
{
    size_t n = strlen(vm_id);
    if (n > VM_BASE_MAX)
        n = VM_BASE_MAX;
    char *s = malloc(n + sizeof("vm"));
    if (!s)
        return NULL;
    for (size_t i = 0; i < n; i++)
        s[i] = portable_char(vm_id[i]) ? vm_id[i] : '_';
    s[n] = '\0';
    if (n == 0)
        strcpy(s, "vm");
    if (s[0] == '.' || s[0] == '-')
        s[0] = '_';
    return s;
}

static bool reserved_member(const char *name, const char *ovf, const char *mf)
{
    return !strcmp(name, ARCHIVE_VM_JSON) || !strcmp(name, ARCHIVE_TAR_MANIFEST) ||
           !strcmp(name, ovf) || !strcmp(name, mf) || archive_ends_with(name, ARCHIVE_OVF_SUFFIX) ||
           archive_ends_with(name, ARCHIVE_MF_SUFFIX);
}

/* Member names of the disks: the disk name when it is portable and free, else disk-N.img. */
static int assign_members(struct export_disk *d, size_t n, const char *ovf, const char *mf)
{
    for (size_t i = 0; i < n; i++) {
        bool taken = !portable_name(d[i].name) || reserved_member(d[i].name, ovf, mf);
        for (size_t k = 0; k < i && !taken; k++)
            taken = !strcmp(d[k].member, d[i].name);
        if (!taken) {
            d[i].member = strdup(d[i].name);
        } else {
            for (unsigned v = 0; !d[i].member; v++) {
                char *s = NULL;
                if ((v ? asprintf(&s, "disk-%zu-%u.img", i, v) : asprintf(&s, "disk-%zu.img", i)) <
                    0)
                    return -ENOMEM;
                bool clash = false;
                for (size_t k = 0; k < n && !clash; k++)
                    clash = !strcmp(d[k].name, s) || (d[k].member && !strcmp(d[k].member, s));
                if (clash)
                    free(s);
                else
                    d[i].member = s;
            }
        }
        if (!d[i].member)
            return -ENOMEM;
        snprintf(d[i].file_id, sizeof(d[i].file_id), "file%zu", i + 1);
        snprintf(d[i].disk_id, sizeof(d[i].disk_id), "vmdisk%zu", i + 1);
    }
    return 0;
}

/* Bytes of the disk in stored (non-zero) chunks. */
static uint64_t populated_bytes(const struct manifest *m)
{
    uint64_t n = 0;
    for (size_t k = 0; k < m->n_entries; k++)
        n += manifest_chunk_len(m, m->e[k].idx);
    return n;
}

/* What the export holds besides the exporter: freed by export_state_free(). */
struct export_state {
    struct backup *b;
    struct export_disk *d;
    size_t n;
    char *base, *ovf_name, *mf_name, *ovf, *vmj;
    size_t ovf_len;
};

static void export_state_free(struct export_state *s)
{
    for (size_t i = 0; s->d && i < s->n; i++) {
        free(s->d[i].member);
        manifest_free(&s->d[i].m);
    }
    free(s->d);
    free(s->base);
    free(s->ovf_name);
    free(s->mf_name);
    free(s->ovf);
    free(s->vmj);
    backup_free(s->b);
}

/* Everything the archive says about the backup, before a byte is written: manifests, member
 * names, vm.json and the OVF descriptor. */
static int export_describe(struct exporter *x, struct export_state *s, enum archive_kind kind,
                           uint64_t *total)
{
    s->n = s->b->disks.len;
    s->d = calloc(s->n ? s->n : 1, sizeof(*s->d));
    s->base = vm_base_name(s->b->vm_id);
    if (!s->d || !s->base || asprintf(&s->ovf_name, "%s%s", s->base, ARCHIVE_OVF_SUFFIX) < 0) {
        s->ovf_name = NULL;
        return -ENOMEM;
    }
    if (kind == ARCHIVE_KIND_OVA ? asprintf(&s->mf_name, "%s%s", s->base, ARCHIVE_MF_SUFFIX) < 0
                                 : !(s->mf_name = strdup(ARCHIVE_TAR_MANIFEST))) {
        s->mf_name = NULL;
        return -ENOMEM;
    }
    *total = 0;
    for (size_t i = 0; i < s->n; i++) {
        s->d[i].name = s->b->disks.ptr[i].name;
        int r = repo_manifest_read(x->repo, s->b, s->d[i].name, &s->d[i].m);
        if (r < 0) {
            return first_error_set(&x->fe, r, "disk %s: manifest %s", s->d[i].name,
                                   r == -EBADMSG ? "is damaged" : strerror(-r));
        }
        s->d[i].populated = populated_bytes(&s->d[i].m);
        *total += s->d[i].m.disk_size;
    }
    if (assign_members(s->d, s->n, s->ovf_name, s->mf_name) < 0 ||
        build_vm_json(s->b, s->d, s->n, repo_chunk_size(x->repo), &s->vmj) < 0) {
        return first_error_set(
            &x->fe, -ENOMEM,
            "cannot describe the backup in vm.json (out of memory or names that are not "
            "UTF-8)");
    }
    if (kind == ARCHIVE_KIND_OVA) {
        const char *vm_name = s->b->vm_id;
        json_t *vj = s->b->vm_json ? json_loads(s->b->vm_json, 0, NULL) : NULL;
        const char *fn = json_string_value(json_object_get(vj, "friendly_name"));
        CLEANUP_FREE char *friendly = fn && *fn ? strdup(fn) : NULL;
        json_decref(vj);
        if (friendly)
            vm_name = friendly;
        if (build_ovf(s->b, vm_name, s->d, s->n, &s->ovf, &s->ovf_len) < 0)
            return -ENOMEM;
    }
    return 0;
}

/* The members, in order, into x->a (open on the output). */
static int export_write(struct exporter *x, struct export_state *s, enum archive_kind kind)
{
    int r = 0;
    if (kind == ARCHIVE_KIND_OVA)
        r = write_small_member(x, s->ovf_name, s->ovf, s->ovf_len, true);
    if (r == 0)
        r = write_small_member(x, ARCHIVE_VM_JSON, s->vmj, strlen(s->vmj), true);
    for (size_t i = 0; r == 0 && i < s->n; i++)
        r = write_disk_member(x, &s->d[i]);
    if (r == 0 && fflush(x->mf) != 0)
        r = -ENOMEM;
    if (r == 0)
        r = write_small_member(x, s->mf_name, x->mf_text, x->mf_len, false);
    if (r == 0 && sym_archive_write_close(x->a) != ARCHIVE_OK) {
        r = first_error_set(&x->fe, -EIO, "%s", sym_archive_error_string(x->a));
    }
    return r;
}

int archive_export(const struct archive_export_options *o, struct archive_export_result *res,
                   char *err, size_t errlen)
{
    *res = (struct archive_export_result){0};
    char why[512];
    if (archive_lib_load(why, sizeof(why)) < 0) {
        snprintf(err, errlen, "cannot load libarchive: %s", why);
        return -ELIBACC;
    }
    struct exporter x = {.repo = o->repo, .prog = &o->progress};
    struct export_state s = {0};
    int r = repo_lock(o->repo, false, o->lock_timeout ? o->lock_timeout : ARCHIVE_LOCK_TIMEOUT, why,
                      sizeof(why));
    if (r < 0) {
        snprintf(err, errlen, "%s: %s", repo_path(o->repo), why[0] ? why : strerror(-r));
        return r;
    }
    first_error_init(&x.fe, NULL, NULL);
    r = repo_backup_get(o->repo, o->backup_id, &s.b);
    if (r < 0) {
        snprintf(err, errlen, "backup %s: %s", o->backup_id,
                 r == -ENOENT    ? "not found"
                 : r == -EBADMSG ? "its metadata is damaged"
                                 : strerror(-r));
        goto out;
    }
    uint64_t total = 0;
    r = export_describe(&x, &s, o->kind, &total);
    if (r < 0)
        goto out;
    const uint32_t cs = repo_chunk_size(o->repo);
    x.b = s.b;
    x.mtime = s.b->time;
    x.buf = malloc(cs);
    x.zeros = calloc(1, cs);
    x.mf = open_memstream(&x.mf_text, &x.mf_len);
    x.a = sym_archive_write_new();
    if (!x.buf || !x.zeros || !x.mf || !x.a) {
        r = -ENOMEM;
        goto out;
    }
    if (sym_archive_write_set_format_pax(x.a) != ARCHIVE_OK ||
        sym_archive_write_open_fd(x.a, o->fd) != ARCHIVE_OK) {
        r = first_error_set(&x.fe, -EIO, "the output: %s", sym_archive_error_string(x.a));
        goto out;
    }
    backup_progress_begin(&o->progress, NULL, total);
    r = export_write(&x, &s, o->kind);
    if (r < 0)
        goto out;
    res->backup_id = strdup(s.b->id);
    res->vm_id = strdup(s.b->vm_id);
    if (!res->backup_id || !res->vm_id) {
        r = -ENOMEM;
        goto out;
    }
    res->disks = s.n;
    res->disk_bytes = total;
    res->data_bytes = x.data_bytes;
    res->archive_bytes = (uint64_t)sym_archive_filter_bytes(x.a, -1);

out:
    if (r < 0 && s.b)
        snprintf(err, errlen, "backup %s: %s", s.b->id,
                 *first_error_message(&x.fe) ? first_error_message(&x.fe) : strerror(-r));
    if (r < 0)
        archive_export_result_free(res);
    if (x.a)
        sym_archive_write_free(x.a);
    if (x.mf)
        fclose(x.mf);
    free(x.mf_text);
    free(x.buf);
    free(x.zeros);
    export_state_free(&s);
    first_error_destroy(&x.fe);
    repo_unlock(o->repo);
    return r;
}

void archive_export_result_free(struct archive_export_result *res)
{
    free(res->backup_id);
    free(res->vm_id);
    *res = (struct archive_export_result){0};
}
