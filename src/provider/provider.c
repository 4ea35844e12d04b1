/* Provider plumbing shared by every provider type: VM lists, the config section check that
 * turns a [provider.NAME] section into an open provider, safe IDs, derived UUIDs and the
 * reflink probe; and the provider table, which maps a section's "type =" to its provider_ops
 * (provider_ops_find).  The provider types themselves live in one file each (dir.c, ovm.c).
 */
#include "provider.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/hash.h"
#include "core/hex.h"
#include "core/log.h"
#include "fs/fsinfo.h"
#include "fs/safeopen.h"

/* Longest ID accepted: NAME_MAX, so that an ID can always be one path component. */
#define PROVIDER_ID_MAX 255

/* provider_derive_uuid: bytes of a UUID, where its version and variant live, their values. */
#define UUID_BYTES           16
#define UUID_VERSION_BYTE    6
#define UUID_VERSION_MASK    0x0f /* keeps the low nibble */
#define UUID_VERSION_5       0x50 /* name-based (SHA) layout, RFC 4122 section 4.3 */
#define UUID_VARIANT_BYTE    8
#define UUID_VARIANT_MASK    0x3f /* keeps the low six bits */
#define UUID_VARIANT_RFC4122 0x80 /* bits 10xxxxxx */
/* Hash input that fits here needs no allocation; longer names fall back to malloc. */
#define UUID_INPUT_STACK 512

static const struct provider_ops *const provider_types[] = {
    &provider_dir_ops,
    &provider_ovm_ops,
    &provider_qemu_ops,
    &provider_libvirt_ops,
    &provider_rbd_ops,
};

void vm_disk_clear(struct vm_disk *disk)
{
    free(disk->name);
    free(disk->path);
    free(disk->device_name);
    free(disk->mode);
    free(disk->snapshot_mode);
    free(disk->repo_mountpoint);
    free(disk->real_path);
    memset(disk, 0, sizeof(*disk));
}

void vm_free(struct vm *vm)
{
    if (!vm)
        return;
    for (size_t i = 0; i < vm->disks.len; i++)
        vm_disk_clear(&vm->disks.ptr[i]);
    vm_disk_list_reset(&vm->disks);
    free(vm->id);
    free(vm->friendly_name);
    free(vm->uuid);
    free(vm);
}

void vm_list_free(vm_list *l)
{
    for (size_t i = 0; i < l->len; i++)
        vm_free(l->ptr[i]);
    vm_list_reset(l);
}

int vm_new(const char *provider, const char *id, const char *friendly_name, const char *uuid,
           struct vm **out)
{
    char derived[37];
    struct vm *vm = calloc(1, sizeof(*vm));
    if (!vm)
        return -ENOMEM;
    if (!uuid) {
        provider_derive_uuid(provider, id, derived);
        uuid = derived;
    }
    vm->provider = provider;
    vm->disks.max_len = PROVIDER_MAX_DISKS;
    vm->id = strdup(id);
    vm->friendly_name = strdup(friendly_name ? friendly_name : id);
    vm->uuid = strdup(uuid);
    if (!vm->id || !vm->friendly_name || !vm->uuid) {
        vm_free(vm);
        return -ENOMEM;
    }
    *out = vm;
    return 0;
}

void vm_update_snapshot_compatible(struct vm *vm)
{
    bool any = false, all_writable = true;
    for (size_t i = 0; i < vm->disks.len; i++) {
        const struct vm_disk *d = &vm->disks.ptr[i];
        any = any || d->snapshot_compatible;
        if (d->mode && strcmp(d->mode, "w") == 0 && !d->snapshot_compatible)
            all_writable = false;
    }
    vm->snapshot_compatible = any && all_writable;
}

/* The vector's comparator type: const applies to the pointed-to VM, as the macro spells it. */
static int vm_cmp_id(const struct vm **a, const struct vm **b)
{
    return strcmp((*a)->id, (*b)->id);
}

void vm_list_sort_by_id(vm_list *l)
{
    vm_list_sort(l, vm_cmp_id);
}

int vm_list_move(vm_list *dst, vm_list *src)
{
    int r = vm_list_reserve(dst, src->len);
    if (r < 0)
        return r;
    for (size_t i = 0; i < src->len; i++)
        dst->ptr[dst->len++] = src->ptr[i];
    vm_list_reset(src);
    return 0;
}

const char *provider_config_get(const struct provider_config *cfg, const char *key)
{
    /* A key given twice: the later one wins, as it would in most INI readers. */
    const char *value = NULL;
    for (size_t i = 0; i < cfg->n_settings; i++)
        if (cfg->settings[i].key && strcmp(cfg->settings[i].key, key) == 0)
            value = cfg->settings[i].value;
    return value;
}

const struct provider_ops *provider_ops_find(const char *type)
{
    if (!type)
        return NULL;
    for (size_t i = 0; i < ARRAY_SIZE(provider_types); i++)
        if (strcmp(provider_types[i]->type, type) == 0)
            return provider_types[i];
    return NULL;
}

/* Appends to err at *off, never past errlen; keeps err terminated. */
static void __attribute__((format(printf, 4, 5)))
err_append(char *err, size_t errlen, size_t *off, const char *fmt, ...)
{
    if (!err || *off >= errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err + *off, errlen - *off, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    *off = (size_t)n >= errlen - *off ? errlen : *off + (size_t)n;
}

static void err_append_types(char *err, size_t errlen, size_t *off)
{
    err_append(err, errlen, off, " (known:");
    for (size_t i = 0; i < ARRAY_SIZE(provider_types); i++)
        err_append(err, errlen, off, "%s %s", i ? "," : "", provider_types[i]->type);
    err_append(err, errlen, off, ")");
}

static bool ops_key_is_known(const struct provider_ops *ops, const char *key)
{
    if (strcmp(key, "type") == 0)
        return true;
    for (const char *const *k = ops->keys; k && *k; k++)
        if (strcmp(*k, key) == 0)
            return true;
    return false;
}

int provider_new(const struct provider_config *cfg, struct provider **out, char *err, size_t errlen)
{
    size_t off = 0;
    assert(cfg && cfg->name && out);
    if (err && errlen)
        err[0] = '\0';

    const char *type = provider_config_get(cfg, "type");
    const struct provider_ops *ops = provider_ops_find(type);
    if (!ops) {
        if (type)
            err_append(err, errlen, &off, "[provider.%s] type: unknown provider type '%s'",
                       cfg->name, type);
        else
            err_append(err, errlen, &off, "[provider.%s] type: missing", cfg->name);
        err_append_types(err, errlen, &off);
        return -EINVAL;
    }

    for (size_t i = 0; i < cfg->n_settings; i++) {
        const char *key = cfg->settings[i].key;
        if (key && ops_key_is_known(ops, key))
            continue;
        err_append(err, errlen, &off, "[provider.%s] unknown key '%s' (known: type", cfg->name,
                   key ? key : "");
        for (const char *const *k = ops->keys; k && *k; k++)
            err_append(err, errlen, &off, ", %s", *k);
        err_append(err, errlen, &off, ")");
        return -EINVAL;
    }

    struct provider *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->ops = ops;
    p->name = strdup(cfg->name);
    if (!p->name) {
        free(p);
        return -ENOMEM;
    }
    /* open() cleans up after itself on failure, so close() is not called then. */
    int r = ops->open(p, cfg, err, errlen);
    if (r < 0) {
        if (err && errlen && !err[0])
            snprintf(err, errlen, "[provider.%s] %s", cfg->name, strerror(-r));
        free(p->name);
        free(p);
        return r;
    }
    *out = p;
    return 0;
}

void provider_free(struct provider *p)
{
    if (!p)
        return;
    if (p->ops && p->ops->close)
        p->ops->close(p);
    free(p->name);
    free(p);
}

bool provider_chain_valid(const char *s)
{
    size_t n = s ? strnlen(s, PROVIDER_CHAIN_MAX + 1) : 0;
    if (n == 0 || n > PROVIDER_CHAIN_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-'))
            return false;
    return true;
}

bool provider_id_is_safe(const char *id)
{
    if (!id || !id[0] || strlen(id) > PROVIDER_ID_MAX)
        return false;
    if (strchr(id, '/'))
        return false;
    return strcmp(id, ".") != 0 && strcmp(id, "..") != 0;
}

void provider_derive_uuid(const char *provider, const char *vm_id, char out[37])
{
    size_t lp = strlen(provider), lv = strlen(vm_id), n = lp + 1 + lv;
    uint8_t stack[UUID_INPUT_STACK], digest[HASH_SIZE];
    CLEANUP_FREE uint8_t *heap = NULL;
    uint8_t *buf = stack;

    if (n > sizeof(stack)) {
        heap = malloc(n);
        buf = heap;
    }
    /* The NUL keeps ("ab", "c") and ("a", "bc") apart. */
    if (buf) {
        memcpy(buf, provider, lp);
        buf[lp] = '\0';
        memcpy(buf + lp + 1, vm_id, lv);
    }
    /* No error return in this interface, and a made-up UUID would be worse than stopping: both
     * failures (out of memory, libcrypto without SHA-256) leave the daemon unusable anyway. */
    if (!buf || hash_sha256(buf, n, digest) < 0) {
        log_error("cannot derive the UUID of VM %s (provider %s)", vm_id, provider);
        abort();
    }

    digest[UUID_VERSION_BYTE] = (digest[UUID_VERSION_BYTE] & UUID_VERSION_MASK) | UUID_VERSION_5;
    digest[UUID_VARIANT_BYTE] =
        (digest[UUID_VARIANT_BYTE] & UUID_VARIANT_MASK) | UUID_VARIANT_RFC4122;

    char *o = out;
    for (int i = 0; i < UUID_BYTES; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) /* 8-4-4-4-12 */
            *o++ = '-';
        hex_encode(&digest[i], 1, o);
        o += 2;
    }
    *o = '\0';
}

int provider_fail(char *err, size_t errlen, int r, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return r;
}

int provider_fail_setting(char *err, size_t errlen, int r, const char *provider, const char *key,
                          const char *value)
{
    return provider_fail(err, errlen, r, "[provider.%s] %s: %s: %s", provider, key, value,
                         strerror(-r));
}

bool provider_probe_reflink(const char *dir)
{
    int r = fs_probe_reflink(dir);
    if (r >= 0)
        return r == 1;

    /* The probe could not run; the filesystem type is the next best answer. */
    struct fs_info info;
    CLEANUP_CLOSE int fd = fs_open_nofollow(dir, O_RDONLY | O_DIRECTORY, 0);
    bool guess = fd >= 0 && fs_info_fd(fd, &info) == 0 && fs_kind_may_reflink(info.kind);
    log_warn("%s: cannot probe reflink support (%s); assuming %s snapshots", dir, strerror(-r),
             guess ? PROVIDER_SNAPSHOT_REFLINK : PROVIDER_SNAPSHOT_COPY);
    return guess;
}

static int name_cmp(const char **a, const char **b)
{
    return strcmp(*a, *b);
}

void provider_names_free(provider_name_list *l)
{
    for (size_t i = 0; i < l->len; i++)
        free(l->ptr[i]);
    provider_name_list_reset(l);
}

int provider_names_read(int dirfd, provider_name_list *out)
{
    provider_name_list names = VECTOR_INIT;
    int r = 0;

    assert(out->len == 0);
    names.max_len = PROVIDER_MAX_DIR_ENTRIES;
    /* fdopendir() takes the descriptor it is given; the caller keeps dirfd. */
    int fd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        r = -errno;
        close(fd);
        return r;
    }
    rewinddir(d); /* the duplicate shares the caller's offset */
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            r = -errno;
            break;
        }
        if (e->d_name[0] == '.')
            continue;
        char *s = strdup(e->d_name);
        if (!s) {
            r = -ENOMEM;
            break;
        }
        r = provider_name_list_append(&names, s);
        if (r < 0) {
            free(s);
            break;
        }
    }
    closedir(d);
    if (r < 0) {
        provider_names_free(&names);
        return r;
    }
    provider_name_list_sort(&names, name_cmp);
    *out = names;
    return 0;
}

int provider_disk_open(const struct vm_disk *disk)
{
    struct stat st;
    if (!disk->real_path)
        return -EOPNOTSUPP;
    /* O_NONBLOCK: a FIFO swapped in must not hang the caller before the type check. */
    int fd = fs_open_nofollow(disk->real_path, O_RDONLY | O_NONBLOCK | O_NOCTTY, 0);
    if (fd < 0)
        return fd;
    if (fstat(fd, &st) < 0) {
        int r = -errno;
        close(fd);
        return r;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_dev != disk->dev ||
        (uint64_t)st.st_ino != disk->ino) {
        close(fd);
        return -ESTALE;
    }
    /* Regular files ignore O_NONBLOCK; cleared all the same, for whoever reads the fd. */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}
