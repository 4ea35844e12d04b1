/* Flattening a snapshot chain with qemu-img; see flatten.h. */
#include "backup/flatten.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "fs/fsinfo.h"
#include "core/log.h"
#include "fs/chain.h"

/* qemu-img writes runs of zeros this long (and aligned) as holes. */
#define SPARSE_GRANULE "4k"
/* st_blocks counts 512-byte units. */
#define STAT_BLOCK_SIZE 512

extern char **environ;

/* flatten builds FILE + this (mkstemp fills the X's) next to FILE. */
#define FLATTEN_TMP_SUFFIX ".vxtmp.XXXXXX"

/* What an interrupting signal must undo: qemu-img's pid while it runs, else 0, and the
 * temporary file of chain_flatten_file while it exists. */
static volatile sig_atomic_t flatten_child;
static char flatten_tmp[PATH_MAX];
static volatile sig_atomic_t flatten_tmp_set;

void flatten_interrupted(void)
{
    if (flatten_child > 0)
        kill((pid_t)flatten_child, SIGTERM);
    if (flatten_tmp_set)
        unlink(flatten_tmp);
}

/* Append s to the qemu option string f, doubling commas (QemuOpts' escape). */
static void put_opt_value(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == ',')
            fputc(',', f);
        fputc(*s, f);
    }
}

/* qemu-img --image-opts description of the whole chain: every layer's file and format are
 * given, so qemu reads exactly the files checked here and never follows (or probes) the names
 * stored in the images, which may be stale paths of a copied chain. */
static char *chain_image_opts(const struct chain *c)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return NULL;
    for (size_t depth = 0; depth < c->len; depth++) {
        const struct chain_layer *l = &c->layers[c->len - 1 - depth];
        const char *sep = depth ? "," : "";
        fputs(sep, f);
        for (size_t k = 0; k < depth; k++)
            fputs("backing.", f);
        fprintf(f, "driver=%s,", image_format_name(l->info.format));
        for (size_t k = 0; k < depth; k++)
            fputs("backing.", f);
        fputs("file.driver=file,", f);
        for (size_t k = 0; k < depth; k++)
            fputs("backing.", f);
        fputs("file.filename=", f);
        put_opt_value(f, l->path);
    }
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

/* Run qemu-img convert: the chain's guest-visible content into the raw file tmp. */
static int run_convert(const struct chain *c, const char *tmp, char *err, size_t errlen)
{
    const char *qemu_img = getenv(QEMU_IMG_ENV);
    if (!qemu_img || !*qemu_img)
        qemu_img = QEMU_IMG_DEFAULT;
    CLEANUP_FREE char *opts = chain_image_opts(c);
    if (!opts) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    char *argv[] = {(char *)qemu_img, "convert",      "-O", "raw",       "-S",
                    SPARSE_GRANULE,   "--image-opts", opts, (char *)tmp, NULL};
    log_debug("running %s convert -O raw -S %s --image-opts '%s' %s", qemu_img, SPARSE_GRANULE,
              opts, tmp);
    pid_t pid;
    int r = posix_spawnp(&pid, qemu_img, NULL, NULL, argv, environ);
    if (r != 0) {
        snprintf(err, errlen, "cannot run %s: %s%s", qemu_img, strerror(r),
                 r == ENOENT ? " (install qemu-utils, or set " QEMU_IMG_ENV ")" : "");
        return -r;
    }
    flatten_child = pid;
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            r = -errno;
            flatten_child = 0;
            snprintf(err, errlen, "waiting for %s: %s", qemu_img, strerror(-r));
            return r;
        }
    }
    flatten_child = 0;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    if (WIFEXITED(status))
        snprintf(err, errlen, "%s convert of %s failed (exit status %d)", qemu_img,
                 chain_top(c)->path, WEXITSTATUS(status));
    else
        snprintf(err, errlen, "%s convert of %s killed by signal %d", qemu_img, chain_top(c)->path,
                 WTERMSIG(status));
    return -EIO;
}

int chain_flatten(const struct chain *c, const char *tmp, uint64_t *data, char *err, size_t errlen)
{
    int r = run_convert(c, tmp, err, errlen);
    if (r < 0)
        return r;
    CLEANUP_CLOSE int fd = open(tmp, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || fchmod(fd, FLATTEN_OUTPUT_MODE) < 0 || fsync(fd) < 0) {
        r = -errno;
        snprintf(err, errlen, "%s: %s", tmp, strerror(-r));
        return r;
    }
    if ((uint64_t)st.st_size != chain_top(c)->info.virtual_size) {
        snprintf(err, errlen,
                 "%s: qemu-img wrote %" PRIu64 " bytes, the virtual size of %s is %" PRIu64, tmp,
                 (uint64_t)st.st_size, chain_top(c)->name, chain_top(c)->info.virtual_size);
        return -EIO;
    }
    *data = (uint64_t)st.st_blocks * STAT_BLOCK_SIZE;
    return 0;
}

/* Put tmp in place at out: replacing out with force, else only if it does not exist
 * (-EEXIST). */
static int install(const char *tmp, const char *out, bool force)
{
    if (force)
        return rename(tmp, out) < 0 ? -errno : 0;
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, out, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -errno;
    /* A filesystem without RENAME_NOREPLACE: link() refuses an existing name as well. */
    if (link(tmp, out) < 0)
        return -errno;
    unlink(tmp);
    return 0;
}

int chain_flatten_file(const struct chain *c, const char *out, bool force, uint64_t *data,
                       char *err, size_t errlen)
{
    struct stat st;
    if (stat(out, &st) == 0) {
        bool is_layer = false;
        for (size_t i = 0; i < c->len; i++)
            is_layer |= c->layers[i].dev == st.st_dev && c->layers[i].ino == st.st_ino;
        const char *why = is_layer              ? "is an image of the chain"
                          : S_ISDIR(st.st_mode) ? "is a directory"
                          : !force              ? "exists (use --force to replace it)"
                                                : NULL;
        if (why) {
            snprintf(err, errlen, "%s %s", out, why);
            return is_layer ? -EINVAL : S_ISDIR(st.st_mode) ? -EISDIR : -EEXIST;
        }
    }
    int n = snprintf(flatten_tmp, sizeof(flatten_tmp), "%s%s", out, FLATTEN_TMP_SUFFIX);
    int fd = n < (int)sizeof(flatten_tmp) ? mkostemp(flatten_tmp, O_CLOEXEC)
                                          : (errno = ENAMETOOLONG, -1);
    if (fd < 0) {
        int r = -errno;
        snprintf(err, errlen, "%s: creating a temporary file next to it: %s", out, strerror(-r));
        return r;
    }
    close(fd);
    flatten_tmp_set = 1;
    int r = chain_flatten(c, flatten_tmp, data, err, errlen);
    if (r == 0 && (r = install(flatten_tmp, out, force)) < 0)
        snprintf(err, errlen, "%s: %s", out,
                 r == -EEXIST ? "exists (use --force to replace it)" : strerror(-r));
    if (r < 0)
        unlink(flatten_tmp);
    flatten_tmp_set = 0;
    if (r == 0)
        fs_fsync_parent(out); /* best effort: the data is synced */
    return r;
}
