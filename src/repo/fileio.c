/* File helpers of the backup repository: atomic writes (temporary name, write, fsync, rename,
 * directory fsync), bounded whole-file reads, directory creation and removal, the escaping of VM
 * IDs into directory names, random names and strict base64.
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

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "core/cleanup.h"
#include "fs/fsinfo.h"

#define TMP_RAND_BYTES 8          /* random bytes in a temporary file name */
#define TMP_NAME_TRIES 16         /* attempts at an unused temporary name */
#define IO_MAX_CHUNK   (1u << 30) /* largest single read()/write() request */

/* VM directory names: escaped IDs longer than VM_DIR_MAX keep a prefix of at most VM_DIR_KEEP
 * characters and get "~" and the ID's SHA-256 in hex. */
#define VM_DIR_MAX       200
#define VM_DIR_KEEP      128
#define VM_DIR_HASH_MARK '~'
#define ESCAPE_LEN       3 /* "%XX" */

static const char hex_digits[] = "0123456789ABCDEF";

int repo_write_errno(int e)
{
    return e == EDQUOT ? -ENOSPC : -e;
}

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
    static const char lower[] = "0123456789abcdef";
    for (size_t i = 0; i < nbytes; i++) {
        out[2 * i] = lower[raw[i] >> 4];
        out[2 * i + 1] = lower[raw[i] & 0xf];
    }
    out[2 * nbytes] = '\0';
    return 0;
}

bool repo_is_tmp_name(const char *name)
{
    return strstr(name, REPO_TMP_MARK) != NULL;
}

static int write_all(int fd, const uint8_t *p, size_t len)
{
    while (len) {
        ssize_t n = write(fd, p, len > IO_MAX_CHUNK ? IO_MAX_CHUNK : len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return repo_write_errno(errno);
        }
        if (n == 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Move tmp to name.  Without replace, an existing name wins: tmp is removed and *created is
 * false.  Filesystems without RENAME_NOREPLACE fall back to link(2), then to a plain rename
 * (the files have equal content, so replacing is harmless). */
static int rename_into_place(int dirfd, const char *tmp, const char *name, bool replace,
                             bool *created)
{
    *created = true;
    if (replace)
        return renameat(dirfd, tmp, dirfd, name) < 0 ? -errno : 0;
    if (renameat2(dirfd, tmp, dirfd, name, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno == EEXIST) {
        *created = false;
        unlinkat(dirfd, tmp, 0);
        return 0;
    }
    if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
        return -errno;
    int linked = linkat(dirfd, tmp, dirfd, name, 0);
    if (linked == 0 || errno == EEXIST) {
        *created = linked == 0;
        unlinkat(dirfd, tmp, 0);
        return 0;
    }
    return renameat(dirfd, tmp, dirfd, name) < 0 ? -errno : 0;
}

/* Create a new temporary file for name in dirfd, its name in tmp; returns its fd. */
static int tmp_create(int dirfd, const char *name, char tmp[NAME_MAX + 1])
{
    char rnd[2 * TMP_RAND_BYTES + 1];
    int fd = -1;

    tmp[0] = '\0';
    for (int i = 0; i < TMP_NAME_TRIES && fd < 0; i++) {
        int r = repo_random_hex(rnd, TMP_RAND_BYTES);
        if (r < 0)
            return r;
        if ((size_t)snprintf(tmp, NAME_MAX + 1, "%s" REPO_TMP_MARK "%s", name, rnd) >=
            NAME_MAX + 1)
            return -ENAMETOOLONG;
        fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, REPO_FILE_MODE);
        if (fd < 0 && errno != EEXIST)
            return repo_write_errno(errno);
    }
    return fd < 0 ? -EEXIST : fd;
}

int repo_write_tmp(int dirfd, const char *name, const void *data, size_t len, bool sync,
                   char tmp[NAME_MAX + 1])
{
    int fd = tmp_create(dirfd, name, tmp);
    if (fd < 0)
        return fd;

    int r = write_all(fd, data, len);
    if (r == 0 && sync && fsync(fd) < 0)
        r = repo_write_errno(errno);
    if (close(fd) < 0 && r == 0)
        r = repo_write_errno(errno);
    if (r < 0)
        unlinkat(dirfd, tmp, 0);
    return r;
}

int repo_write_tmp_direct(int dirfd, const char *name, const uint8_t *data, size_t len,
                          char tmp[NAME_MAX + 1])
{
    int fd = tmp_create(dirfd, name, tmp);
    if (fd < 0)
        return fd;
    /* The aligned head goes with O_DIRECT; the tail (under CONTAINER_ALIGN bytes) through the
     * page cache, which costs a small copy where trimming a padded write back with ftruncate
     * cost a journalled size change per file (a third of the write's time on ext4). */
    size_t head = len / CONTAINER_ALIGN * CONTAINER_ALIGN;
    size_t done = 0;
    int r = 0;
    int fl = fcntl(fd, F_GETFL);
    if (head && (uintptr_t)data % CONTAINER_ALIGN == 0 && fl >= 0 &&
        fcntl(fd, F_SETFL, fl | O_DIRECT) == 0) {
        r = write_all(fd, data, head);
        if (r == 0)
            done = head;
        else if (r == -EINVAL && (ftruncate(fd, 0) < 0 || lseek(fd, 0, SEEK_SET) < 0))
            r = repo_write_errno(errno); /* O_DIRECT refused for this write: start again */
        else if (r == -EINVAL)
            r = 0;
        if (r == 0 && done < len && fcntl(fd, F_SETFL, fl) < 0)
            r = repo_write_errno(errno);
    }
    if (r == 0 && done < len)
        r = write_all(fd, data + done, len - done);
    if (close(fd) < 0 && r == 0)
        r = repo_write_errno(errno);
    if (r < 0)
        unlinkat(dirfd, tmp, 0);
    return r;
}

int repo_rename_tmp(int dirfd, const char *tmp, const char *name, bool replace, bool *created)
{
    int r = rename_into_place(dirfd, tmp, name, replace, created);
    if (r < 0) {
        unlinkat(dirfd, tmp, 0);
        *created = false;
    }
    return r;
}

int repo_write_file(int dirfd, const char *name, const void *data, size_t len, bool replace,
                    bool *created)
{
    char tmp[NAME_MAX + 1];
    bool dummy;

    if (!created)
        created = &dummy;
    *created = false;
    int r = repo_write_tmp(dirfd, name, data, len, true, tmp);
    if (r == 0)
        r = repo_rename_tmp(dirfd, tmp, name, replace, created);
    if (r < 0)
        return r;
    /* Also when another writer's file won: it must be durable before we report success. */
    if (fsync(dirfd) < 0)
        return repo_write_errno(errno);
    return 0;
}

/* Open dirfd/name for reading: a regular file of at most max bytes (else -EBADMSG), its
 * size in *size.  The fd, or a negative errno. */
static int open_regular(int dirfd, const char *name, uint64_t max, size_t *size)
{
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0) {
        int r = -errno;
        close(fd);
        return r;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > max || (uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return -EBADMSG;
    }
    *size = (size_t)st.st_size;
    return fd;
}

int repo_read_file(int dirfd, const char *name, uint64_t max, uint8_t **data, size_t *len)
{
    size_t size = 0;
    *data = NULL;
    *len = 0;
    CLEANUP_CLOSE int fd = open_regular(dirfd, name, max, &size);
    if (fd < 0)
        return fd;
    CLEANUP_FREE uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return -ENOMEM;
    size_t got = 0;
    while (got < size) {
        size_t want = size - got > IO_MAX_CHUNK ? IO_MAX_CHUNK : size - got;
        ssize_t n = read(fd, buf + got, want);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EBADMSG; /* shrank under us */
        got += (size_t)n;
    }
    *data = TAKE_PTR(buf);
    *len = size;
    return 0;
}

int repo_read_file_direct(int dirfd, const char *name, uint64_t max, uint8_t *buf, size_t cap,
                          size_t *len)
{
    size_t size = 0;
    *len = 0;
    CLEANUP_CLOSE int fd = open_regular(dirfd, name, max, &size);
    if (fd < 0)
        return fd;
    /* Direct reads ask for whole blocks; the kernel stops them at the end of the file. */
    size_t want = (size + CONTAINER_ALIGN - 1) / CONTAINER_ALIGN * CONTAINER_ALIGN;
    if (want > cap || (uintptr_t)buf % CONTAINER_ALIGN)
        return -ENOBUFS;
    CLEANUP_CLOSE int dfd = fs_reopen_direct(fd, O_RDONLY); /* -1: buffered only */
    size_t got = 0;
    int r = fs_pread_direct(fd, dfd, buf, want, 0, &got);
    if (r < 0)
        return r;
    if (got != size)
        return -EBADMSG; /* the file changed size under us */
    *len = size;
    return 0;
}

int repo_mkdir(int dirfd, const char *name)
{
    if (mkdirat(dirfd, name, REPO_DIR_MODE) < 0)
        return errno == EEXIST ? 0 : repo_write_errno(errno);
    return fsync(dirfd) < 0 ? repo_write_errno(errno) : 0;
}

int repo_open_dir(int dirfd, const char *name, int *out)
{
    *out = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return *out < 0 ? -errno : 0;
}

int repo_remove_dir(int parentfd, const char *name, uint64_t *bytes)
{
    int fd;
    int r = repo_open_dir(parentfd, name, &fd);
    if (r < 0)
        return r;
    DIR *d = fdopendir(fd);
    if (!d) {
        r = -errno;
        close(fd);
        return r;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        struct stat st;
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || S_ISDIR(st.st_mode))
            continue; /* rmdir below reports what is left */
        if (unlinkat(fd, de->d_name, 0) < 0) {
            r = -errno;
            break;
        }
        if (bytes)
            *bytes += (uint64_t)st.st_size;
    }
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    closedir(d);
    if (r == 0 && unlinkat(parentfd, name, AT_REMOVEDIR) < 0)
        r = -errno;
    if (r == 0 && fsync(parentfd) < 0)
        r = -errno;
    return r;
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
            s[o++] = hex_digits[c >> 4];
            s[o++] = hex_digits[c & 0xf];
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

char *repo_b64_encode(const void *data, size_t len)
{
    if (len > INT_MAX / 2)
        return NULL;
    char *s = malloc(4 * ((len + 2) / 3) + 1);
    if (s)
        EVP_EncodeBlock((unsigned char *)s, data, (int)len);
    return s;
}

int repo_b64_decode(const char *s, uint8_t **out, size_t *len)
{
    size_t n = strlen(s);
    *out = NULL;
    *len = 0;
    if (n % 4 || n > INT_MAX / 2)
        return -EBADMSG;
    size_t pad = (n && s[n - 1] == '=') + (n > 1 && s[n - 2] == '=');
    CLEANUP_FREE uint8_t *buf = malloc(n / 4 * 3 + 1);
    if (!buf)
        return -ENOMEM;
    int got = EVP_DecodeBlock(buf, (const unsigned char *)s, (int)n);
    if (got < 0 || (size_t)got != n / 4 * 3)
        return -EBADMSG;
    size_t dlen = (size_t)got - pad;
    /* Only the canonical spelling: re-encoding must give the input back. */
    CLEANUP_FREE char *again = repo_b64_encode(buf, dlen);
    if (!again)
        return -ENOMEM;
    if (strcmp(again, s))
        return -EBADMSG;
    *out = TAKE_PTR(buf);
    *len = dlen;
    return 0;
}
