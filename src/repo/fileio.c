/* Helpers of the backup repository: removing a directory-like prefix through the store, the
 * escaping of VM IDs into directory names, random names and reading integers out of its JSON
 * files.  (The file I/O itself is the store's: store_local.c; strict base64 is core/base64.c.)
 */
#include "repo_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "core/cleanup.h"
#include "core/log.h"
#include "core/hex.h"

/* VM directory names: escaped IDs longer than VM_DIR_MAX keep a prefix of at most VM_DIR_KEEP
 * characters and get "~" and the ID's SHA-256 in hex. */
#define VM_DIR_MAX       200
#define VM_DIR_KEEP      128
#define VM_DIR_HASH_MARK '~'
#define ESCAPE_LEN       3 /* "%XX" */

int repo_random_bytes(void *buf, size_t len)
{
    if (len > INT_MAX)
        return -EINVAL;
    return RAND_bytes(buf, (int)len) == 1 ? 0 : -EIO;
}

int repo_random_hex(char *out, size_t nbytes)
{
    uint8_t raw[HASH_SIZE];
    if (nbytes > sizeof(raw))
        return -EINVAL;
    int r = repo_random_bytes(raw, nbytes);
    if (r < 0)
        return r;
    hex_encode(raw, nbytes, out);
    return 0;
}

bool repo_is_tmp_name(const char *name)
{
    return strstr(name, REPO_TMP_MARK) != NULL;
}

struct remove_walk {
    struct repo *r;
    const char *prefix;
    uint64_t *bytes;
    bool kept; /* the store refused to delete some object */
};

int repo_store_del(struct repo *r, const char *key, uint64_t *bytes)
{
    int ret = store_del(r->store, key, bytes);
    if (ret != -EACCES)
        return ret;
    log_warn("%s/%s: kept: the store refuses to delete it (retained by its object lock, or "
             "not allowed to these keys)",
             r->path, key);
    return -ENOENT;
}

static int remove_entry(void *opaque, const struct store_entry *e)
{
    struct remove_walk *w = opaque;
    CLEANUP_FREE char *key = NULL;
    if (e->prefix)
        return 0; /* removing the prefix below reports what is left */
    if (asprintf(&key, "%s/%s", w->prefix, e->name) < 0)
        return -ENOMEM;
    int r = store_del(w->r->store, key, w->bytes);
    if (r == -EACCES) {
        w->kept = true;
        r = repo_store_del(w->r, key, w->bytes); /* says so */
    }
    return r == -ENOENT ? 0 : r;
}

int repo_remove_dir(struct repo *r, const char *prefix, uint64_t *bytes)
{
    uint64_t dummy = 0;
    struct remove_walk w = {.r = r, .prefix = prefix, .bytes = bytes ? bytes : &dummy};
    int ret = store_list(r->store, prefix, remove_entry, &w);
    if (ret == 0)
        ret = store_sync_prefix(r->store, prefix);
    if (ret == 0 && !w.kept) /* objects the store retains keep their prefix */
        ret = store_remove_prefix(r->store, prefix);
    return ret;
}

static bool vm_char_plain(unsigned char c, bool first)
{
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
        return true;
    return c == '_' || c == '-' || (c == '.' && !first);
}

int repo_vm_dir_name(const char *vm_id, char **out)
{
    size_t n = strlen(vm_id);
    *out = NULL;
    if (n == 0 || strchr(vm_id, '/'))
        return -EINVAL;
    if (n > (SIZE_MAX - 2 * HASH_SIZE - 2) / ESCAPE_LEN)
        return -ENOMEM;

    char *s = malloc(ESCAPE_LEN * n + 2 * HASH_SIZE + 2);
    if (!s)
        return -ENOMEM;
    size_t o = 0, cut = 0;
    bool cut_set = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)vm_id[i];
        bool plain = vm_char_plain(c, i == 0);
        size_t need = plain ? 1 : ESCAPE_LEN;
        if (!cut_set && o + need > VM_DIR_KEEP) {
            cut = o;
            cut_set = true;
        }
        if (plain) {
            s[o++] = (char)c;
        } else {
            s[o++] = '%';
            hex_encode_upper(&c, 1, s + o);
            o += 2;
        }
    }
    if (o > VM_DIR_MAX) {
        uint8_t digest[HASH_SIZE];
        int r = hash_sha256(vm_id, n, digest);
        if (r < 0) {
            free(s);
            return r;
        }
        o = cut;
        s[o++] = VM_DIR_HASH_MARK;
        hash_to_hex(digest, s + o);
        o += 2 * HASH_SIZE;
    }
    s[o] = '\0';
    *out = s;
    return 0;
}

int repo_json_get_uint(json_t *o, const char *key, bool optional, uint64_t *out)
{
    json_t *v = json_object_get(o, key);
    *out = 0;
    if (!v && optional)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -EBADMSG;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}
