/* Portable archives of backups: export and import.
 *
 * export writes one backup of a repository as a POSIX pax tar file that any tar can list and
 * extract, or as an OVA (the same tar with an OVF descriptor first).  Members, in this order:
 *
 *   <vm>.ovf            (OVA only) OVF 1.0 envelope: one File, Disk and disk Item per disk
 *   vm.json             the backup's metadata: VM, backup ID, time, snapshot, disks
 *   <disk>...           one raw image per disk, a GNU pax 1.0 sparse member whose holes are
 *                       the backup's all-zero chunks; data streamed chunk by chunk
 *   <vm>.mf | SHA256SUMS   SHA-256 of every member above, "SHA256(name)= hex" lines
 *
 * The digests are computed while the members are written, so the manifest comes last and the
 * repository is read once.  import reads such an archive in one pass (a pipe will do), cuts
 * every disk into chunks of the destination repository's size, stores them and writes the
 * manifests, and commits the backup only once every member has matched the manifest at the
 * end; otherwise the backup is aborted (chunks already stored stay for gc).  The format is
 * described in docs/archive-format.md.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/archive_lib.h"
#include "cli/cli.h"
#include "cli/repo_open.h"
#include "cli/progress.h"
#include "core/cleanup.h"
#include "core/hash.h"
#include "repo/repo.h"

/* vm.json identification. */
#define VXA_FORMAT        "vmexport-archive"
#define VXA_VERSION       1
#define VM_JSON_NAME      "vm.json"
#define TAR_MANIFEST_NAME "SHA256SUMS"
#define OVF_SUFFIX        ".ovf"
#define MF_SUFFIX         ".mf"
/* Longest member name written: the ustar name field holds 100 bytes with its terminator, and
 * libarchive records a sparse member's real name from that field. */
#define MEMBER_NAME_MAX 99
/* Longest base name taken from a VM ID for <vm>.ovf and <vm>.mf. */
#define VM_BASE_MAX 64
/* Metadata members (descriptor, vm.json, manifest) are read whole: at most this big. */
#define METADATA_MAX (16u << 20)
/* Seconds to wait for the repository lock (export) or the VM lock (import). */
#define LOCK_TIMEOUT 600
/* Block size of archive reads from a file or a pipe. */
#define READ_BLOCK_SIZE (64u << 10)
/* Permissions of members, and of the archive file before the umask. */
#define MEMBER_MODE 0644
#define OUTPUT_MODE 0666
/* OVF: the format URI of a raw disk image and the CIM resource type of a disk drive. */
#define OVF_RAW_FORMAT  "http://en.wikipedia.org/wiki/Byte"
#define RASD_DISK_DRIVE 17
#define HEX_DIGEST_LEN  (2 * HASH_SIZE)
/* Significant digits of "seconds" in JSON summaries. */
#define JSON_SECONDS_DIGITS 6

enum archive_kind { KIND_TAR, KIND_OVA };

/* ---- small helpers ---- */

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* Characters that are safe in a member name, a file name and an OVF href (a relative URI). */
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

static int parse_hex_digest(const char *s, uint8_t out[HASH_SIZE])
{
    for (size_t i = 0; i < HASH_SIZE; i++) {
        unsigned v = 0;
        for (size_t k = 0; k < 2; k++) {
            char c = s[2 * i + k];
            v <<= 4;
            if (c >= '0' && c <= '9')
                v |= (unsigned)(c - '0');
            else if (c >= 'a' && c <= 'f')
                v |= (unsigned)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F')
                v |= (unsigned)(c - 'A' + 10);
            else
                return -EINVAL;
        }
        out[i] = (uint8_t)v;
    }
    return 0;
}

/* Streaming SHA-256 of a member. */
struct digest {
    EVP_MD_CTX *ctx;
};

static int digest_begin(struct digest *d)
{
    d->ctx = EVP_MD_CTX_new();
    if (!d->ctx || EVP_DigestInit_ex(d->ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(d->ctx);
        d->ctx = NULL;
        return -ENOMEM;
    }
    return 0;
}

static int digest_update(struct digest *d, const void *data, size_t len)
{
    return EVP_DigestUpdate(d->ctx, data, len) == 1 ? 0 : -EIO;
}

static int digest_end(struct digest *d, uint8_t out[HASH_SIZE])
{
    unsigned n = 0;
    int r = EVP_DigestFinal_ex(d->ctx, out, &n) == 1 && n == HASH_SIZE ? 0 : -EIO;
    EVP_MD_CTX_free(d->ctx);
    d->ctx = NULL;
    return r;
}

static void digest_discard(struct digest *d)
{
    EVP_MD_CTX_free(d->ctx);
    d->ctx = NULL;
}

/* ---- repository ---- */

static struct repo *open_repository(const char *cmd, const char *path, const char *pass_file)
{
    return cli_open_repo(cmd, path, pass_file);
}

/* ---- export ---- */

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
    struct progress prog;
    uint8_t *buf, *zeros; /* chunk buffers */
    uint64_t data_bytes;  /* bytes of disk data written (holes excluded) */
    char err[512];
};

/* XML text or attribute value: escaped, control characters and invalid UTF-8 replaced. */
static void xml_put(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned char c = *p;
        size_t n = c < 0x80             ? 1
                   : (c & 0xe0) == 0xc0 ? 2
                   : (c & 0xf0) == 0xe0 ? 3
                   : (c & 0xf8) == 0xf0 ? 4
                                        : 0;
        bool valid = n > 0 && !(n == 2 && c < 0xc2);
        for (size_t k = 1; valid && k < n; k++)
            valid = (p[k] & 0xc0) == 0x80;
        if (!valid) {
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

static bool valid_utf8(const char *s)
{
    json_t *j = json_string(s);
    json_decref(j);
    return j != NULL;
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
    json_object_set_new(o, "format", json_string(VXA_FORMAT));
    json_object_set_new(o, "version", json_integer(VXA_VERSION));
    if (valid_utf8(b->vm_id)) {
        json_object_set_new(o, "vm_id", json_string(b->vm_id));
    } else {
        size_t len = strlen(b->vm_id);
        CLEANUP_FREE char *b64 = malloc(4 * ((len + 2) / 3) + 1);
        if (!b64) {
            json_decref(o);
            json_decref(disks);
            return -ENOMEM;
        }
        EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)b->vm_id, (int)len);
        json_object_set_new(o, "vm_id_base64", json_string(b64));
    }
    json_t *vm = b->vm_json ? json_loads(b->vm_json, JSON_DECODE_ANY, NULL) : NULL;
    if (vm)
        json_object_set_new(o, "vm", vm);
    else if (b->vm_json && valid_utf8(b->vm_json))
        json_object_set_new(o, "vm_json", json_string(b->vm_json));
    json_object_set_new(o, "backup_id", json_string(b->id));
    json_object_set_new(o, "time", json_integer(b->time));
    json_object_set_new(o, "time_utc", json_string(utc));
    json_object_set_new(o, "snapshot_id",
                        b->snapshot_id && valid_utf8(b->snapshot_id) ? json_string(b->snapshot_id)
                                                                     : json_null());
    json_object_set_new(o, "server",
                        b->server && valid_utf8(b->server) ? json_string(b->server) : json_null());
    json_object_set_new(o, "chunk_size", json_integer(chunk_size));
    for (size_t i = 0; i < n; i++) {
        json_t *dj = json_pack(
            "{s:s, s:s, s:I, s:I, s:o}", "name", d[i].name, "file", d[i].member, "size",
            (json_int_t)d[i].m.disk_size, "populated_size", (json_int_t)d[i].populated, "change_id",
            d[i].m.change_id && valid_utf8(d[i].m.change_id) ? json_string(d[i].m.change_id)
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
    char hex[HEX_DIGEST_LEN + 1];
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
        snprintf(x->err, sizeof(x->err), "member %s: %s", name, sym_archive_error_string(x->a));
        return -EIO;
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
        for (uint64_t i = 0; i < m->n;) {
            if (m->e[i].zero) {
                i++;
                continue;
            }
            uint64_t j = i;
            while (j < m->n && !m->e[j].zero)
                j++;
            uint64_t start = i * cs, end = j * cs < m->disk_size ? j * cs : m->disk_size;
            sym_archive_entry_sparse_add_entry(e, (la_int64_t)start, (la_int64_t)(end - start));
            i = j;
        }
        if (d->populated == 0) /* one empty data block at the end: all hole */
            sym_archive_entry_sparse_add_entry(e, (la_int64_t)m->disk_size, 0);
    }
    int r = sym_archive_write_header(x->a, e);
    sym_archive_entry_free(e);
    if (r < ARCHIVE_WARN) {
        snprintf(x->err, sizeof(x->err), "member %s: %s", d->member,
                 sym_archive_error_string(x->a));
        return -EIO;
    }
    struct digest dg;
    if (digest_begin(&dg) < 0)
        return -ENOMEM;
    /* Every write lies entirely within one data block or one hole of the member: chunks are
     * the units of both.  Hole bytes given to libarchive are skipped, not written. */
    for (uint64_t i = 0; i < m->n; i++) {
        uint64_t off = i * cs;
        size_t want = m->disk_size - off < cs ? (size_t)(m->disk_size - off) : cs;
        const uint8_t *data = x->zeros;
        if (!m->e[i].zero) {
            size_t got = 0;
            r = repo_chunk_get(x->repo, &m->e[i].id, x->buf, cs, &got);
            if (r == 0 && got != want)
                r = -EBADMSG;
            if (r < 0) {
                char hex[HEX_DIGEST_LEN + 1];
                chunk_id_to_hex(&m->e[i].id, hex);
                snprintf(x->err, sizeof(x->err), "disk %s: chunk %s at offset %" PRIu64 ": %s",
                         d->name, hex, off, chunk_error(r));
                digest_discard(&dg);
                return r;
            }
            data = x->buf;
            x->data_bytes += want;
        }
        if (digest_update(&dg, data, want) < 0) {
            digest_discard(&dg);
            return -EIO;
        }
        if (sym_archive_write_data(x->a, data, want) != (la_ssize_t)want) {
            snprintf(x->err, sizeof(x->err), "member %s: %s", d->member,
                     sym_archive_error_string(x->a));
            digest_discard(&dg);
            return -EIO;
        }
        progress_add(&x->prog, want);
    }
    uint8_t digest[HASH_SIZE];
    if (digest_end(&dg, digest) < 0)
        return -EIO;
    if (sym_archive_write_finish_entry(x->a) < ARCHIVE_WARN) {
        snprintf(x->err, sizeof(x->err), "member %s: %s", d->member,
                 sym_archive_error_string(x->a));
        return -EIO;
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
    return !strcmp(name, VM_JSON_NAME) || !strcmp(name, TAR_MANIFEST_NAME) || !strcmp(name, ovf) ||
           !strcmp(name, mf) || ends_with(name, OVF_SUFFIX) || ends_with(name, MF_SUFFIX);
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

/* A temporary file next to out, with the permissions a new file would get. */
static int open_output(const char *out, char **tmp_out)
{
    char *tmp = NULL;
    if (asprintf(&tmp, "%s.vxexport.tmp.XXXXXX", out) < 0)
        return -ENOMEM;
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        fprintf(stderr, "vmexport export: %s: %s\n", out, strerror(e));
        free(tmp);
        return -e;
    }
    mode_t mask = umask(0);
    umask(mask);
    if (fchmod(fd, OUTPUT_MODE & ~mask) < 0) {
        int e = errno;
        fprintf(stderr, "vmexport export: %s: %s\n", tmp, strerror(e));
        close(fd);
        unlink(tmp);
        free(tmp);
        return -e;
    }
    *tmp_out = tmp;
    return fd;
}

/* Load libarchive (archive_lib.h) for command cmd: 0, or -1 after saying why. */
static int load_libarchive(const char *cmd)
{
    char why[512];
    if (archive_lib_load(why, sizeof(why)) == 0)
        return 0;
    fprintf(stderr, "vmexport %s: cannot load libarchive: %s\n", cmd, why);
    return -1;
}

static int export_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"repo", required_argument, NULL, 'r'},   {"passphrase-file", required_argument, NULL, 'P'},
        {"output", required_argument, NULL, 'o'}, {"format", required_argument, NULL, 'F'},
        {"force", no_argument, NULL, 'f'},        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *repo_arg = NULL, *pass_file = NULL, *out = NULL, *format = NULL;
    bool force = false, json = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:P:o:F:fJh", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            repo_arg = optarg;
            break;
        case 'P':
            pass_file = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'F':
            format = optarg;
            break;
        case 'f':
            force = true;
            break;
        case 'J':
            json = true;
            break;
        case 'h':
            return cli_help(&cmd_export);
        default:
            return cli_usage_error(&cmd_export, "unknown option");
        }
    }
    if (argc - optind != 1)
        return cli_usage_error(&cmd_export, "expected one BACKUP id");
    if (!out || !*out)
        return cli_usage_error(&cmd_export, "-o FILE is required ('-' for standard output)");
    enum archive_kind kind;
    if (format && !strcmp(format, "tar"))
        kind = KIND_TAR;
    else if (format && !strcmp(format, "ova"))
        kind = KIND_OVA;
    else if (format)
        return cli_usage_error(&cmd_export, "--format takes tar or ova, not '%s'", format);
    else
        kind = ends_with(out, ".ova") ? KIND_OVA : KIND_TAR;
    const char *backup_id = argv[optind];
    bool to_stdout = !strcmp(out, "-");
    if (to_stdout && isatty(STDOUT_FILENO)) {
        fprintf(stderr, "vmexport export: refusing to write an archive to a terminal\n");
        return EXIT_FAIL;
    }
    /* With the archive on standard output, reports go to standard error. */
    FILE *report = to_stdout ? stderr : stdout;
    double t0 = progress_now();

    struct export_state {
        struct repo *repo;
        struct backup *b;
        struct export_disk *d;
        size_t n;
        char *base, *ovf_name, *mf_name, *ovf, *vmj, *tmp;
        int fd;
    } s = {.fd = -1};
    struct exporter x = {0};
    int ret = EXIT_FAIL, r;
    size_t ovf_len = 0;

    if (!to_stdout) {
        struct stat st;
        if (!force && lstat(out, &st) == 0) {
            fprintf(stderr, "vmexport export: %s exists (use --force to overwrite it)\n", out);
            return EXIT_FAIL;
        }
    }
    if (load_libarchive("export") < 0)
        return EXIT_FAIL;
    s.repo = open_repository("export", repo_arg, pass_file);
    if (!s.repo)
        return EXIT_FAIL;
    char err[512] = "";
    r = repo_lock(s.repo, false, LOCK_TIMEOUT, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "vmexport export: %s: %s\n", repo_path(s.repo),
                err[0] ? err : strerror(-r));
        goto out;
    }
    r = repo_backup_get(s.repo, backup_id, &s.b);
    if (r < 0) {
        fprintf(stderr, "vmexport export: backup %s: %s\n", backup_id,
                r == -ENOENT    ? "not found (see 'vmexport backups')"
                : r == -EBADMSG ? "its metadata is damaged"
                                : strerror(-r));
        goto out;
    }
    s.n = s.b->disks.len;
    s.d = calloc(s.n ? s.n : 1, sizeof(*s.d));
    s.base = vm_base_name(s.b->vm_id);
    if (!s.d || !s.base || asprintf(&s.ovf_name, "%s%s", s.base, OVF_SUFFIX) < 0 ||
        asprintf(&s.mf_name, "%s%s", s.base, kind == KIND_OVA ? MF_SUFFIX : "") < 0) {
        fprintf(stderr, "vmexport export: out of memory\n");
        goto out;
    }
    if (kind == KIND_TAR) {
        free(s.mf_name);
        s.mf_name = strdup(TAR_MANIFEST_NAME);
        if (!s.mf_name)
            goto out;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < s.n; i++) {
        s.d[i].name = s.b->disks.ptr[i].name;
        r = repo_manifest_read(s.repo, s.b, s.d[i].name, &s.d[i].m);
        if (r < 0) {
            fprintf(stderr, "vmexport export: backup %s: disk %s: manifest %s\n", s.b->id,
                    s.d[i].name, r == -EBADMSG ? "is damaged" : strerror(-r));
            goto out;
        }
        const struct manifest *m = &s.d[i].m;
        for (uint64_t k = 0; k < m->n; k++)
            if (!m->e[k].zero)
                s.d[i].populated += m->disk_size - k * m->chunk_size < m->chunk_size
                                        ? m->disk_size - k * m->chunk_size
                                        : m->chunk_size;
        total += m->disk_size;
    }
    if (assign_members(s.d, s.n, s.ovf_name, s.mf_name) < 0 ||
        build_vm_json(s.b, s.d, s.n, repo_chunk_size(s.repo), &s.vmj) < 0) {
        fprintf(stderr,
                "vmexport export: backup %s: cannot describe the backup in vm.json "
                "(out of memory or names that are not UTF-8)\n",
                s.b->id);
        goto out;
    }
    if (kind == KIND_OVA) {
        const char *vm_name = s.b->vm_id;
        json_t *vj = s.b->vm_json ? json_loads(s.b->vm_json, 0, NULL) : NULL;
        const char *fn = json_string_value(json_object_get(vj, "friendly_name"));
        CLEANUP_FREE char *friendly = fn && *fn ? strdup(fn) : NULL;
        json_decref(vj);
        if (friendly)
            vm_name = friendly;
        if (build_ovf(s.b, vm_name, s.d, s.n, &s.ovf, &ovf_len) < 0) {
            fprintf(stderr, "vmexport export: out of memory\n");
            goto out;
        }
    }

    /* The output: a temporary file renamed at the end, or standard output. */
    if (to_stdout) {
        s.fd = STDOUT_FILENO;
    } else {
        s.fd = open_output(out, &s.tmp);
        if (s.fd < 0)
            goto out;
    }
    const uint32_t cs = repo_chunk_size(s.repo);
    x.repo = s.repo;
    x.b = s.b;
    x.mtime = s.b->time;
    x.buf = malloc(cs);
    x.zeros = calloc(1, cs);
    x.mf = open_memstream(&x.mf_text, &x.mf_len);
    x.a = sym_archive_write_new();
    if (!x.buf || !x.zeros || !x.mf || !x.a) {
        fprintf(stderr, "vmexport export: out of memory\n");
        goto out;
    }
    if (sym_archive_write_set_format_pax(x.a) != ARCHIVE_OK ||
        sym_archive_write_open_fd(x.a, s.fd) != ARCHIVE_OK) {
        fprintf(stderr, "vmexport export: %s: %s\n", out, sym_archive_error_string(x.a));
        goto out;
    }
    progress_init(&x.prog, "export", total, json && !to_stdout);
    r = 0;
    if (kind == KIND_OVA)
        r = write_small_member(&x, s.ovf_name, s.ovf, ovf_len, true);
    if (r == 0)
        r = write_small_member(&x, VM_JSON_NAME, s.vmj, strlen(s.vmj), true);
    for (size_t i = 0; r == 0 && i < s.n; i++)
        r = write_disk_member(&x, &s.d[i]);
    if (r == 0 && fflush(x.mf) != 0)
        r = -ENOMEM;
    if (r == 0)
        r = write_small_member(&x, s.mf_name, x.mf_text, x.mf_len, false);
    if (r == 0 && sym_archive_write_close(x.a) != ARCHIVE_OK) {
        snprintf(x.err, sizeof(x.err), "%s", sym_archive_error_string(x.a));
        r = -EIO;
    }
    progress_finish(&x.prog);
    if (r == 0 && !to_stdout && fsync(s.fd) < 0) {
        snprintf(x.err, sizeof(x.err), "fsync: %s", strerror(errno));
        r = -EIO;
    }
    if (r < 0) {
        fprintf(stderr, "vmexport export: backup %s: %s; %s\n", s.b->id,
                x.err[0] ? x.err : strerror(-r),
                to_stdout ? "the archive on standard output is incomplete" : "nothing was written");
        goto out;
    }
    if (!to_stdout) {
        close(s.fd);
        s.fd = -1;
        if ((force ? rename(s.tmp, out)
                   : renameat2(AT_FDCWD, s.tmp, AT_FDCWD, out, RENAME_NOREPLACE)) < 0) {
            fprintf(stderr, "vmexport export: %s: %s\n", out,
                    errno == EEXIST ? "exists (use --force to overwrite it)" : strerror(errno));
            goto out;
        }
        free(s.tmp);
        s.tmp = NULL;
    }
    uint64_t bytes = (uint64_t)sym_archive_filter_bytes(x.a, -1);
    if (json) {
        json_t *j =
            json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:f}", "type", "summary",
                      "backup", s.b->id, "vm", valid_utf8(s.b->vm_id) ? s.b->vm_id : "", "file",
                      out, "format", kind == KIND_OVA ? "ova" : "tar", "disks", (json_int_t)s.n,
                      "disk_bytes", (json_int_t)total, "data_bytes", (json_int_t)x.data_bytes,
                      "archive_bytes", (json_int_t)bytes, "seconds", progress_now() - t0);
        char *text =
            j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(JSON_SECONDS_DIGITS)) : NULL;
        fprintf(report, "%s\n", text ? text : "{}");
        free(text);
        json_decref(j);
    } else {
        char b1[32], b2[32];
        fprintf(report, "exported backup %s of VM %s (%zu disks, %s) to %s as %s (%s), %.1f s\n",
                s.b->id, s.b->vm_id, s.n, cli_bytes(total, b1, sizeof(b1)),
                to_stdout ? "standard output" : out, kind == KIND_OVA ? "OVA" : "tar",
                cli_bytes(bytes, b2, sizeof(b2)), progress_now() - t0);
    }
    ret = EXIT_OK;

out:
    if (x.a)
        sym_archive_write_free(x.a);
    if (x.mf)
        fclose(x.mf);
    free(x.mf_text);
    free(x.buf);
    free(x.zeros);
    if (s.fd >= 0 && !to_stdout)
        close(s.fd);
    if (s.tmp) {
        unlink(s.tmp);
        free(s.tmp);
    }
    for (size_t i = 0; s.d && i < s.n; i++) {
        free(s.d[i].member);
        manifest_free(&s.d[i].m);
    }
    free(s.d);
    free(s.base);
    free(s.ovf_name);
    free(s.mf_name);
    free(s.ovf);
    free(s.vmj);
    backup_free(s.b);
    repo_close(s.repo);
    return ret;
}

const struct cli_command cmd_export = {
    .name = "export",
    .summary = "write a backup as a portable tar or OVA archive",
    .run = export_run,
    .usage = "Usage: vmexport export --repo PATH BACKUP -o FILE [--format tar|ova] [--force]\n"
             "                       [--passphrase-file FILE] [--json]\n"
             "\n"
             "Write the disks and metadata of BACKUP as one archive that is usable without\n"
             "vmexport: a POSIX pax tar file that GNU tar and bsdtar list and extract.  Members,\n"
             "in order:\n"
             "\n"
             "  VM.ovf       (ova only) an OVF 1.0 descriptor: the VM, one disk per disk, raw\n"
             "               images (format http://en.wikipedia.org/wiki/Byte)\n"
             "  vm.json      the backup's metadata: VM, backup ID, time, snapshot, disks with\n"
             "               their sizes, change IDs and member names\n"
             "  DISK         one raw image per disk, named after the disk (disk-N.img when the\n"
             "               name is not a portable file name), stored sparse: chunks of zeros\n"
             "               take no space and extract as holes\n"
             "  VM.mf        (ova) or SHA256SUMS (tar): \"SHA256(member)= hex\" for every member\n"
             "               above; 'sha256sum -c' checks the extracted files against it\n"
             "\n"
             "VM is the VM ID with characters other than letters, digits and ._~+,=@- replaced.\n"
             "Data is read from the repository chunk by chunk, checked, and streamed; checksums\n"
             "are computed on the way, so the archive is written in one pass.  FILE is built\n"
             "under a temporary name and renamed when complete; '-' writes to standard output\n"
             "(then the summary goes to standard error).\n"
             "\n"
             "Options:\n" REPO_OPTIONS_HELP
             "  -o, --output FILE       the archive to write, or '-' for standard output\n"
             "  --format tar|ova        archive layout (default: ova when FILE ends in .ova,\n"
             "                          else tar)\n"
             "  --force                 replace FILE if it exists\n"
             "  --json                  progress lines and a JSON summary: backup, file, format,\n"
             "                          disks, disk_bytes, data_bytes, archive_bytes, seconds\n"
             "  -h, --help              this help\n"
             "\n"
             "Exit status: 0 success, 1 failure (unknown backup, damaged data, existing FILE),\n"
             "2 bad usage.\n",
};

/* ---- import ---- */

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
    const char *src;         /* FILE as given, for messages */
    struct member_sum *seen; /* members read, with their digests */
    size_t nseen;
    struct member_sum *listed; /* manifest lines */
    size_t nlisted;
    char *mf_name;
    json_t *vmj;
    struct import_disk *disks;
    size_t ndisks;
    struct backup_writer *w;
    struct progress prog;
    bool prog_on;
    uint8_t *buf, *zeros;
    uint64_t bytes_written, chunks_new, chunks_reused;
    char err[512];
};

static void imp_fail(struct importer *im, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void imp_fail(struct importer *im, const char *fmt, ...)
{
    if (im->err[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(im->err, sizeof(im->err), fmt, ap);
    va_end(ap);
}

static int record_member(struct importer *im, const char *name, const uint8_t digest[HASH_SIZE])
{
    struct member_sum *t = realloc(im->seen, (im->nseen + 1) * sizeof(*t));
    if (!t)
        return -ENOMEM;
    im->seen = t;
    t[im->nseen].name = strdup(name);
    if (!t[im->nseen].name)
        return -ENOMEM;
    memcpy(t[im->nseen].digest, digest, HASH_SIZE);
    t[im->nseen].matched = false;
    im->nseen++;
    return 0;
}

/* A metadata member, whole (NUL-terminated); record: note its digest for the manifest. */
static int read_small(struct importer *im, struct archive_entry *e, const char *name, bool record,
                      char **out, size_t *len)
{
    if (sym_archive_entry_size_is_set(e) && sym_archive_entry_size(e) > (la_int64_t)METADATA_MAX) {
        imp_fail(im, "member %s is larger than %u MiB", name, METADATA_MAX >> 20);
        return -EFBIG;
    }
    size_t cap = sym_archive_entry_size_is_set(e) ? (size_t)sym_archive_entry_size(e) + 1 : 4096,
           n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return -ENOMEM;
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > METADATA_MAX) {
                free(buf);
                imp_fail(im, "member %s is larger than %u MiB", name, METADATA_MAX >> 20);
                return -EFBIG;
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
            imp_fail(im, "member %s: %s", name, sym_archive_error_string(im->a));
            return -EIO;
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
            imp_fail(im, "manifest %s, line %u: only SHA256 digests are supported", name, lineno);
            return -EINVAL;
        }
        char *p = line + strlen(algo);
        while (*p == ' ')
            p++;
        char *q = line + n;
        bool ok = *p == '(' && q - p > HEX_DIGEST_LEN + 2;
        uint8_t digest[HASH_SIZE];
        if (ok) {
            q -= HEX_DIGEST_LEN;
            ok = parse_hex_digest(q, digest) == 0;
            while (ok && q > p && q[-1] == ' ')
                q--;
            ok = ok && q > p && q[-1] == '=';
            q--;
            while (ok && q > p && q[-1] == ' ')
                q--;
            ok = ok && q > p + 1 && q[-1] == ')';
        }
        if (!ok) {
            imp_fail(im, "manifest %s, line %u: expected 'SHA256(NAME)= HEX'", name, lineno);
            return -EINVAL;
        }
        q[-1] = '\0';
        const char *member = p + 1;
        for (size_t i = 0; i < im->nlisted; i++)
            if (!strcmp(im->listed[i].name, member)) {
                imp_fail(im, "manifest %s lists %s twice", name, member);
                return -EINVAL;
            }
        struct member_sum *t = realloc(im->listed, (im->nlisted + 1) * sizeof(*t));
        if (!t)
            return -ENOMEM;
        im->listed = t;
        t[im->nlisted].name = strdup(member);
        if (!t[im->nlisted].name)
            return -ENOMEM;
        memcpy(t[im->nlisted].digest, digest, HASH_SIZE);
        t[im->nlisted].matched = false;
        im->nlisted++;
    }
    return 0;
}

/* Checks vm.json and takes the disks from it. */
static int parse_vm_json(struct importer *im, const char *text)
{
    json_error_t jerr;
    im->vmj = json_loads(text, 0, &jerr);
    if (!im->vmj) {
        imp_fail(im, "vm.json: line %d: %s", jerr.line, jerr.text);
        return -EINVAL;
    }
    const char *fmt = json_string_value(json_object_get(im->vmj, "format"));
    json_t *ver = json_object_get(im->vmj, "version");
    if (!fmt || strcmp(fmt, VXA_FORMAT) || !json_is_integer(ver)) {
        imp_fail(im, "vm.json: not a vmexport archive (format is not \"%s\")", VXA_FORMAT);
        return -EINVAL;
    }
    if (json_integer_value(ver) != VXA_VERSION) {
        imp_fail(im,
                 "vm.json: archive version %" JSON_INTEGER_FORMAT " is not supported "
                 "(supports %d)",
                 json_integer_value(ver), VXA_VERSION);
        return -EPROTONOSUPPORT;
    }
    if (!json_is_integer(json_object_get(im->vmj, "time"))) {
        imp_fail(im, "vm.json: no time");
        return -EINVAL;
    }
    json_t *disks = json_object_get(im->vmj, "disks");
    if (!json_is_array(disks)) {
        imp_fail(im, "vm.json: no disks");
        return -EINVAL;
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
            imp_fail(im, "vm.json: disk %zu lacks a name, file or size", i);
            return -EINVAL;
        }
        for (size_t k = 0; k < i; k++)
            if (!strcmp(im->disks[k].name, name) || !strcmp(im->disks[k].file, file)) {
                imp_fail(im, "vm.json: disk %s or member %s appears twice", name, file);
                return -EINVAL;
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
    size_t len = strlen(b64);
    unsigned char *out = calloc(1, len + 1);
    if (!out)
        return NULL;
    int n = EVP_DecodeBlock(out, (const unsigned char *)b64, (int)len);
    if (n <= 0) {
        free(out);
        return NULL;
    }
    /* EVP_DecodeBlock counts the padding as zero bytes; the ID holds no NUL. */
    return (char *)out;
}

/* Store a chunk-sized piece (or mark it zero) into entry i of m. */
static int store_chunk(struct importer *im, struct manifest *m, uint64_t i, const uint8_t *data,
                       size_t len)
{
    if (buf_is_zero(data, len)) {
        m->e[i].zero = true;
        return 0;
    }
    bool stored = false;
    uint64_t written = 0;
    repo_chunk_id(im->repo, data, len, &m->e[i].id);
    m->e[i].zero = false;
    int r = repo_chunk_put(im->repo, &m->e[i].id, data, len, &stored, &written);
    if (r < 0) {
        imp_fail(im, "disk %s: storing the chunk at offset %" PRIu64 ": %s", m->disk,
                 i * m->chunk_size,
                 r == -ENOSPC ? "no space left in the repository" : strerror(-r));
        return r;
    }
    im->bytes_written += written;
    if (stored)
        im->chunks_new++;
    else
        im->chunks_reused++;
    return 0;
}

/* Chunk a disk member into the repository at its chunk size; its digest is recorded. */
static int import_disk(struct importer *im, struct archive_entry *e, struct import_disk *d,
                       const char *member)
{
    if (sym_archive_entry_size(e) != (la_int64_t)d->size) {
        imp_fail(im, "member %s: size %" PRId64 " differs from vm.json's %" PRIu64, member,
                 (int64_t)sym_archive_entry_size(e), d->size);
        return -EINVAL;
    }
    const uint32_t cs = repo_chunk_size(im->repo);
    struct manifest m;
    int r = manifest_new(&m, d->name, d->size, cs);
    if (r < 0) {
        imp_fail(im, "disk %s: %s", d->name, strerror(-r));
        return r;
    }
    if (d->change_id && !(m.change_id = strdup(d->change_id))) {
        manifest_free(&m);
        return -ENOMEM;
    }
    struct digest dg;
    if (digest_begin(&dg) < 0) {
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
            imp_fail(im, "member %s: %s", member, sym_archive_error_string(im->a));
            r = -EIO;
            goto done;
        }
        if (off < 0 || (uint64_t)off < pos || (uint64_t)off > d->size ||
            len > d->size - (uint64_t)off) {
            imp_fail(im,
                     "member %s: data at offset %" PRId64 " is out of order or beyond its "
                     "size",
                     member, (int64_t)off);
            r = -EINVAL;
            goto done;
        }
        const uint8_t *p = block;
        uint64_t o = (uint64_t)off;
        pos = o + len;
        while (len > 0) {
            uint64_t idx = o / cs;
            while (cur < idx) { /* finish chunk cur, then any holes before idx */
                size_t clen = d->size - cur * cs < cs ? (size_t)(d->size - cur * cs) : cs;
                const uint8_t *data = dirty ? im->buf : im->zeros;
                if ((r = digest_update(&dg, data, clen)) < 0 ||
                    (dirty && (r = store_chunk(im, &m, cur, data, clen)) < 0))
                    goto done;
                if (dirty)
                    memset(im->buf, 0, cs);
                dirty = false;
                if (im->prog_on)
                    progress_add(&im->prog, clen);
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
    for (; cur < m.n; cur++) {
        size_t clen = d->size - cur * cs < cs ? (size_t)(d->size - cur * cs) : cs;
        const uint8_t *data = dirty ? im->buf : im->zeros;
        if ((r = digest_update(&dg, data, clen)) < 0 ||
            (dirty && (r = store_chunk(im, &m, cur, data, clen)) < 0))
            goto done;
        if (dirty)
            memset(im->buf, 0, cs);
        dirty = false;
        if (im->prog_on)
            progress_add(&im->prog, clen);
    }
    uint8_t digest[HASH_SIZE];
    if ((r = digest_end(&dg, digest)) < 0 || (r = record_member(im, member, digest)) < 0)
        goto done;
    r = repo_backup_add_disk(im->w, &m);
    if (r < 0)
        imp_fail(im, "disk %s: writing the manifest: %s", d->name,
                 r == -ENOSPC ? "no space left in the repository" : strerror(-r));
    d->done = r == 0;
done:
    digest_discard(&dg);
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

/* Compare the digests of the members read with the manifest; report every difference. */
static int check_manifest(struct importer *im)
{
    int bad = 0;
    for (size_t i = 0; i < im->nseen; i++) {
        struct member_sum *s = &im->seen[i];
        struct member_sum *l = NULL;
        for (size_t k = 0; k < im->nlisted && !l; k++)
            if (!strcmp(im->listed[k].name, s->name))
                l = &im->listed[k];
        if (!l) {
            fprintf(stderr, "vmexport import: %s: member %s is not in the manifest %s\n", im->src,
                    s->name, im->mf_name);
            bad++;
            continue;
        }
        l->matched = true;
        if (memcmp(l->digest, s->digest, HASH_SIZE)) {
            fprintf(stderr,
                    "vmexport import: %s: member %s does not match its SHA-256 in the "
                    "manifest %s (damaged or tampered with)\n",
                    im->src, s->name, im->mf_name);
            bad++;
        }
    }
    for (size_t k = 0; k < im->nlisted; k++)
        if (!im->listed[k].matched) {
            fprintf(stderr,
                    "vmexport import: %s: member %s is in the manifest %s but missing "
                    "from the archive\n",
                    im->src, im->listed[k].name, im->mf_name);
            bad++;
        }
    return bad ? -EBADMSG : 0;
}

static int import_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"repo", required_argument, NULL, 'r'}, {"passphrase-file", required_argument, NULL, 'P'},
        {"vm", required_argument, NULL, 'm'},   {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0},
    };
    const char *repo_arg = NULL, *pass_file = NULL, *vm_opt = NULL;
    bool json = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:P:m:Jh", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            repo_arg = optarg;
            break;
        case 'P':
            pass_file = optarg;
            break;
        case 'm':
            vm_opt = optarg;
            break;
        case 'J':
            json = true;
            break;
        case 'h':
            return cli_help(&cmd_import);
        default:
            return cli_usage_error(&cmd_import, "unknown option");
        }
    }
    if (argc - optind != 1)
        return cli_usage_error(&cmd_import, "expected one FILE ('-' for standard input)");
    if (vm_opt && (!*vm_opt || strchr(vm_opt, '/')))
        return cli_usage_error(&cmd_import, "--vm NAME must be non-empty and without '/'");
    const char *file = argv[optind];
    bool from_stdin = !strcmp(file, "-");
    double t0 = progress_now();

    struct importer im = {.src = from_stdin ? "standard input" : file};
    int ret = EXIT_FAIL, r = 0;
    CLEANUP_FREE char *vm_id = NULL;
    CLEANUP_FREE char *backup_id = NULL;
    struct backup *info = NULL;
    if (load_libarchive("import") < 0)
        return EXIT_FAIL;
    im.repo = open_repository("import", repo_arg, pass_file);
    if (!im.repo)
        return EXIT_FAIL;
    const uint32_t cs = repo_chunk_size(im.repo);
    im.buf = calloc(1, cs);
    im.zeros = calloc(1, cs);
    im.a = sym_archive_read_new();
    if (!im.buf || !im.zeros || !im.a) {
        fprintf(stderr, "vmexport import: out of memory\n");
        goto out;
    }
    sym_archive_read_support_format_tar(im.a);
    sym_archive_read_support_filter_all(im.a);
    r = from_stdin ? sym_archive_read_open_fd(im.a, STDIN_FILENO, READ_BLOCK_SIZE)
                   : sym_archive_read_open_filename(im.a, file, READ_BLOCK_SIZE);
    if (r != ARCHIVE_OK) {
        fprintf(stderr, "vmexport import: %s: %s\n", im.src, sym_archive_error_string(im.a));
        goto out;
    }

    bool have_vmj = false;
    r = 0;
    for (size_t nmember = 0; r == 0; nmember++) {
        struct archive_entry *e;
        int rr = sym_archive_read_next_header(im.a, &e);
        if (rr == ARCHIVE_EOF)
            break;
        if (rr < ARCHIVE_WARN) {
            imp_fail(&im, "%s", sym_archive_error_string(im.a));
            r = -EIO;
            break;
        }
        const char *name = member_name(sym_archive_entry_pathname(e) ?: "");
        if (im.mf_name) {
            imp_fail(&im, "member %s follows the manifest %s, which must be last", name,
                     im.mf_name);
            r = -EINVAL;
            break;
        }
        if (!*name || strchr(name, '/') || sym_archive_entry_filetype(e) != AE_IFREG) {
            imp_fail(&im, "member %s is not a plain file at the top of the archive", name);
            r = -EINVAL;
            break;
        }
        for (size_t k = 0; k < im.nseen; k++)
            if (!strcmp(im.seen[k].name, name)) {
                imp_fail(&im, "member %s appears twice", name);
                r = -EINVAL;
            }
        if (r < 0)
            break;
        struct import_disk *disk = NULL;
        for (size_t k = 0; k < im.ndisks && !disk; k++)
            if (!strcmp(im.disks[k].file, name))
                disk = &im.disks[k];
        char *text = NULL;
        size_t len = 0;
        if (disk) {
            r = import_disk(&im, e, disk, name);
        } else if (nmember == 0 && ends_with(name, OVF_SUFFIX)) {
            r = read_small(&im, e, name, true, &text, &len); /* the descriptor: only checked */
        } else if (!strcmp(name, VM_JSON_NAME) && !have_vmj) {
            r = read_small(&im, e, name, true, &text, &len);
            if (r == 0)
                r = parse_vm_json(&im, text);
            if (r == 0 && !(vm_id = import_vm_id(&im, vm_opt))) {
                imp_fail(&im, "vm.json names no VM: use --vm NAME");
                r = -EINVAL;
            }
            char err[512] = "";
            json_int_t t = json_integer_value(json_object_get(im.vmj, "time"));
            if (r == 0 && (r = repo_backup_begin(im.repo, vm_id, (int64_t)t, LOCK_TIMEOUT, &im.w,
                                                 err, sizeof(err))) < 0)
                imp_fail(&im, "%s: %s", repo_path(im.repo), err[0] ? err : strerror(-r));
            if (r == 0) {
                uint64_t total = 0;
                for (size_t k = 0; k < im.ndisks; k++)
                    total += im.disks[k].size;
                progress_init(&im.prog, "import", total, json);
                im.prog_on = true;
            }
            have_vmj = r == 0;
        } else if (ends_with(name, MF_SUFFIX) || !strcmp(name, TAR_MANIFEST_NAME)) {
            im.mf_name = strdup(name);
            if (!im.mf_name) {
                r = -ENOMEM;
                break;
            }
            r = read_small(&im, e, name, false, &text, &len); /* it does not list itself */
            if (r == 0)
                r = parse_mf(&im, name, text);
        } else if (!have_vmj) {
            imp_fail(&im, "member %s comes before vm.json (not a vmexport archive?)", name);
            r = -EINVAL;
        } else {
            imp_fail(&im, "unexpected member %s (not a disk listed in vm.json)", name);
            r = -EINVAL;
        }
        free(text);
    }
    if (im.prog_on) {
        progress_finish(&im.prog);
        im.prog_on = false;
    }
    if (r == 0 && !have_vmj) {
        imp_fail(&im, "no vm.json (not a vmexport archive?)");
        r = -EINVAL;
    }
    if (r == 0 && !im.mf_name) {
        imp_fail(&im, "no manifest (VM%s or %s) at its end", MF_SUFFIX, TAR_MANIFEST_NAME);
        r = -EINVAL;
    }
    if (r < 0) {
        fprintf(stderr, "vmexport import: %s: %s; no backup was created\n", im.src,
                im.err[0] ? im.err : strerror(-r));
        goto out;
    }
    if (check_manifest(&im) < 0) {
        fprintf(stderr,
                "vmexport import: %s: the archive does not match its manifest; no "
                "backup was created\n",
                im.src);
        goto out;
    }
    for (size_t k = 0; k < im.ndisks; k++)
        if (!im.disks[k].done) {
            fprintf(stderr,
                    "vmexport import: %s: disk %s (member %s) is missing; no backup was "
                    "created\n",
                    im.src, im.disks[k].name, im.disks[k].file);
            goto out;
        }

    info = calloc(1, sizeof(*info));
    if (!info)
        goto out;
    const char *snap = json_string_value(json_object_get(im.vmj, "snapshot_id"));
    const char *server = json_string_value(json_object_get(im.vmj, "server"));
    json_t *vm = json_object_get(im.vmj, "vm");
    const char *vm_text = json_string_value(json_object_get(im.vmj, "vm_json"));
    info->snapshot_id = strdup(snap ? snap : "");
    info->server = server ? strdup(server) : NULL;
    info->vm_json = vm        ? json_dumps(vm, JSON_COMPACT | JSON_ENCODE_ANY)
                    : vm_text ? strdup(vm_text)
                              : NULL;
    info->time = (int64_t)json_integer_value(json_object_get(im.vmj, "time"));
    info->bytes_read = (uint64_t)sym_archive_filter_bytes(im.a, -1);
    info->bytes_written = im.bytes_written;
    info->chunks_new = im.chunks_new;
    info->chunks_reused = im.chunks_reused;
    info->seconds = progress_now() - t0;
    backup_id = strdup(repo_backup_writer_id(im.w));
    if (!info->snapshot_id || !backup_id)
        goto out;
    r = repo_backup_commit(im.w, info);
    if (r < 0) {
        fprintf(stderr, "vmexport import: %s: committing the backup: %s\n", repo_path(im.repo),
                r == -ENOSPC ? "no space left in the repository" : strerror(-r));
        goto out;
    }
    im.w = NULL;
    if (json) {
        json_t *j = json_pack(
            "{s:s, s:s, s:s, s:s?, s:I, s:I, s:I, s:I, s:I, s:f}", "type", "summary", "backup",
            backup_id, "vm", valid_utf8(vm_id) ? vm_id : "", "source_backup",
            json_string_value(json_object_get(im.vmj, "backup_id")), "disks", (json_int_t)im.ndisks,
            "bytes_read", (json_int_t)info->bytes_read, "bytes_written",
            (json_int_t)im.bytes_written, "chunks_new", (json_int_t)im.chunks_new, "chunks_reused",
            (json_int_t)im.chunks_reused, "seconds", progress_now() - t0);
        char *text =
            j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(JSON_SECONDS_DIGITS)) : NULL;
        printf("%s\n", text ? text : "{}");
        free(text);
        json_decref(j);
    } else {
        char b1[32], b2[32];
        printf("imported backup %s of VM %s from %s: %zu disks, read %s, wrote %s, %" PRIu64
               " new chunks, %" PRIu64 " reused, %.1f s\n",
               backup_id, vm_id, im.src, im.ndisks, cli_bytes(info->bytes_read, b1, sizeof(b1)),
               cli_bytes(im.bytes_written, b2, sizeof(b2)), im.chunks_new, im.chunks_reused,
               progress_now() - t0);
    }
    ret = EXIT_OK;

out:
    if (im.prog_on)
        progress_finish(&im.prog);
    if (im.w)
        repo_backup_abort(im.w);
    backup_free(info);
    if (im.a)
        sym_archive_read_free(im.a);
    for (size_t i = 0; i < im.nseen; i++)
        free(im.seen[i].name);
    free(im.seen);
    for (size_t i = 0; i < im.nlisted; i++)
        free(im.listed[i].name);
    free(im.listed);
    for (size_t i = 0; im.disks && i < im.ndisks; i++) {
        free(im.disks[i].name);
        free(im.disks[i].file);
        free(im.disks[i].change_id);
    }
    free(im.disks);
    free(im.mf_name);
    json_decref(im.vmj);
    free(im.buf);
    free(im.zeros);
    repo_close(im.repo);
    return ret;
}

const struct cli_command cmd_import = {
    .name = "import",
    .summary = "create a backup from a tar or OVA archive made by export",
    .run = import_run,
    .usage =
        "Usage: vmexport import FILE --repo PATH [--vm NAME] [--passphrase-file FILE] [--json]\n"
        "\n"
        "Read an archive written by 'vmexport export' (tar or OVA, possibly compressed;\n"
        "FILE '-' reads standard input) and store it in the repository as a new backup of\n"
        "the VM named in its vm.json (or NAME), with the original backup's time, snapshot\n"
        "and change IDs.  Disks are cut into chunks of the repository's chunk size as they\n"
        "stream in; holes and zero chunks take no space.\n"
        "\n"
        "Every member is checked against the manifest (VM.mf or SHA256SUMS, the last\n"
        "member).  A member that is missing, extra, repeated or whose SHA-256 differs fails\n"
        "the import, naming the member, and no backup is created (chunks already stored\n"
        "are left for 'vmexport gc').\n"
        "\n"
        "Options:\n" REPO_OPTIONS_HELP
        "  --vm NAME               store the backup under this VM ID\n"
        "  --json                  progress lines and a JSON summary: backup, vm,\n"
        "                          source_backup, disks, bytes_read, bytes_written,\n"
        "                          chunks_new, chunks_reused, seconds\n"
        "  -h, --help              this help\n"
        "\n"
        "Exit status: 0 success, 1 failure (unreadable, damaged or tampered archive), 2 bad\n"
        "usage.\n",
};
