/* Composing a backing chain from the images of a directory (see chain.h): probe every regular
 * file, resolve each qcow2 image's backing file to one of the directory's files, then check that
 * the links form a single loop-free chain and order it base first. */
#include "fs/chain.h"

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
#include "core/strlist.h"

/* More files than any real chain has; bounds the work done on a wrong directory. */
#define CHAIN_MAX_FILES 4096
/* Tops listed in a "do not form one chain" error before "..." (each with its chain). */
#define CHAIN_LIST_MAX 8

#define NO_BACKING ((size_t)-1)

/* Work state of chain_build(): the directory's images in name order. */
struct build {
    const char *dir;
    struct chain_layer *files; /* in name order */
    size_t n;
    size_t *backing;  /* index of each file's backing file, or NO_BACKING */
    size_t *children; /* how many files name each file as their backing file */
};

static int chain_fail(struct chain *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int chain_fail(struct chain *c, int err, const char *fmt, ...)
{
    free(c->error);
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&c->error, fmt, ap) < 0)
        c->error = NULL;
    va_end(ap);
    return err;
}

/* A message assembled piece by piece (lists of files). */
struct msg {
    char *text;
    size_t len;
    FILE *f;
};

static int msg_open(struct msg *m)
{
    m->text = NULL;
    m->f = open_memstream(&m->text, &m->len);
    return m->f ? 0 : -ENOMEM;
}

/* Close the stream and hand the text to c->error. */
static int msg_fail(struct chain *c, struct msg *m, int err)
{
    if (fclose(m->f) != 0) {
        free(m->text);
        return chain_fail(c, -ENOMEM, "out of memory");
    }
    free(c->error);
    c->error = m->text;
    return err;
}

static void layer_free(struct chain_layer *l)
{
    free(l->name);
    free(l->path);
    image_info_free(&l->info);
}

static int cmp_layer_name(const void *a, const void *b)
{
    return strcmp(((const struct chain_layer *)a)->name, ((const struct chain_layer *)b)->name);
}

static int cmp_name(const char **a, const char **b)
{
    return strcmp(*a, *b);
}

static char *join_path(const char *dir, const char *name)
{
    size_t dl = strlen(dir);
    char *p;
    bool slash = dl > 0 && dir[dl - 1] == '/';
    if (asprintf(&p, "%s%s%s", dir, slash ? "" : "/", name) < 0)
        return NULL;
    return p;
}

/* The names of the directory's regular files (symbolic links followed), sorted. */
static int list_files(struct chain *c, const char *dir, string_list *names)
{
    DIR *d = opendir(dir);
    if (!d)
        return chain_fail(c, -errno, "%s", strerror(errno));
    names->max_len = CHAIN_MAX_FILES;
    int r = 0;
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, 0) < 0) {
            r = chain_fail(c, -errno, "%s: %s", e->d_name, strerror(errno));
            break;
        }
        if (!S_ISREG(st.st_mode))
            continue; /* subdirectories and devices are not part of the chain */
        char *name = strdup(e->d_name);
        if (!name || (r = string_list_append(names, name)) < 0) {
            free(name);
            r = r == -E2BIG ? chain_fail(c, r, "more than %d files", CHAIN_MAX_FILES)
                            : chain_fail(c, -ENOMEM, "out of memory");
            break;
        }
        errno = 0;
    }
    if (r == 0 && errno)
        r = chain_fail(c, -errno, "reading the directory: %s", strerror(errno));
    closedir(d);
    return r;
}

/* Open and probe every file; b->files ends up sorted by name. */
static int probe_files(struct chain *c, struct build *b)
{
    string_list names = VECTOR_INIT;
    int r = list_files(c, b->dir, &names);
    if (r < 0)
        goto out;
    if (names.len == 0) {
        r = chain_fail(c, -ENODATA, "no image files in the directory");
        goto out;
    }
    string_list_sort(&names, cmp_name); /* deterministic errors; find_by_name() bsearches */
    b->files = calloc(names.len, sizeof(*b->files));
    b->backing = calloc(names.len, sizeof(*b->backing));
    b->children = calloc(names.len, sizeof(*b->children));
    if (!b->files || !b->backing || !b->children) {
        r = chain_fail(c, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < names.len; i++) {
        struct chain_layer *l = &b->files[b->n++];
        l->name = TAKE_PTR(names.ptr[i]);
        if (!(l->path = join_path(b->dir, l->name))) {
            r = chain_fail(c, -ENOMEM, "out of memory");
            goto out;
        }
        CLEANUP_CLOSE int fd = open(l->path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0) {
            r = chain_fail(c, -errno, "%s: %s", l->name, strerror(errno));
            goto out;
        }
        l->dev = st.st_dev;
        l->ino = st.st_ino;
        if ((r = image_probe_fd(fd, &l->info)) < 0) {
            r = chain_fail(c, r, "%s: %s", l->name, l->info.why);
            goto out;
        }
    }
out:
    string_list_free(&names);
    return r;
}

static size_t find_by_name(const struct build *b, const char *name)
{
    struct chain_layer key = {.name = (char *)name};
    const struct chain_layer *l = bsearch(&key, b->files, b->n, sizeof(*b->files), cmp_layer_name);
    return l ? (size_t)(l - b->files) : NO_BACKING;
}

static size_t find_by_identity(const struct build *b, const struct stat *st)
{
    for (size_t i = 0; i < b->n; i++)
        if (b->files[i].dev == st->st_dev && b->files[i].ino == st->st_ino)
            return i;
    return NO_BACKING;
}

/* qemu takes "proto:..." (a colon before any slash) as a protocol, and json:{...} as options. */
static bool has_protocol(const char *name)
{
    return name[strcspn(name, ":/")] == ':';
}

/* Find file i's backing file among the directory's files. */
static int resolve_backing(struct chain *c, struct build *b, size_t i)
{
    struct chain_layer *l = &b->files[i];
    const char *name = l->info.qcow2.backing_file;
    b->backing[i] = NO_BACKING;
    if (l->info.format != IMAGE_FORMAT_QCOW2 || !name)
        return 0;
    if (has_protocol(name))
        return chain_fail(c, -EOPNOTSUPP,
                          "%s: backing file %s is not a plain file name (protocol or json: "
                          "options), which is not supported",
                          l->name, name);

    /* As qemu: an absolute name as is, a relative one against the image's directory. */
    CLEANUP_FREE char *as_qemu = name[0] == '/' ? strdup(name) : join_path(b->dir, name);
    if (!as_qemu)
        return chain_fail(c, -ENOMEM, "out of memory");
    struct stat st;
    bool elsewhere = false;
    if (stat(as_qemu, &st) == 0) {
        size_t j = find_by_identity(b, &st);
        if (j != NO_BACKING) {
            b->backing[i] = j;
            return 0;
        }
        elsewhere = true;
    } else if (errno != ENOENT && errno != ENOTDIR) {
        return chain_fail(c, -errno, "%s: backing file %s: %s", l->name, name, strerror(errno));
    }

    /* A copied chain: the same file name in this directory. */
    const char *slash = strrchr(name, '/');
    const char *base = slash ? slash + 1 : name;
    size_t j = *base ? find_by_name(b, base) : NO_BACKING;
    if (j != NO_BACKING) {
        b->backing[i] = j;
        l->backing_by_name = true;
        return 0;
    }
    if (elsewhere)
        return chain_fail(c, -ENOENT,
                          "%s: backing file %s is not in the directory (a chain must be complete "
                          "in it)",
                          l->name, name);
    return chain_fail(c, -ENOENT, "%s: backing file %s not found", l->name, name);
}

/* The backing file must be in the format its child declares, if it declares one: qemu would
 * otherwise read it differently. */
static int check_backing_format(struct chain *c, const struct build *b, size_t i)
{
    const struct chain_layer *l = &b->files[i];
    if (b->backing[i] == NO_BACKING || !l->info.qcow2.backing_format)
        return 0;
    const struct chain_layer *p = &b->files[b->backing[i]];
    const char *actual = image_format_name(p->info.format);
    if (!strcmp(l->info.qcow2.backing_format, actual))
        return 0;
    return chain_fail(c, -EMEDIUMTYPE, "%s: backing file %s is a %s image, but %s declares %s",
                      l->name, p->name, actual, l->name, l->info.qcow2.backing_format);
}

/* Report a loop of backing files, if there is one. */
static int find_loop(struct chain *c, const struct build *b)
{
    enum { UNSEEN, ON_PATH, DONE };
    CLEANUP_FREE unsigned char *state = calloc(b->n, 1);
    CLEANUP_FREE size_t *path = calloc(b->n, sizeof(*path));
    if (!state || !path)
        return chain_fail(c, -ENOMEM, "out of memory");
    for (size_t i = 0; i < b->n; i++) {
        size_t len = 0, j = i;
        while (j != NO_BACKING && state[j] == UNSEEN) {
            state[j] = ON_PATH;
            path[len++] = j;
            j = b->backing[j];
        }
        if (j != NO_BACKING && state[j] == ON_PATH) {
            /* The loop is path[k..len) with path[k] == j; print it from its first file in name
             * order so that the message does not depend on where the walk started. */
            size_t k = 0;
            while (path[k] != j)
                k++;
            size_t first = k;
            for (size_t m = k; m < len; m++)
                if (path[m] < path[first])
                    first = m;
            struct msg m;
            if (msg_open(&m) < 0)
                return chain_fail(c, -ENOMEM, "out of memory");
            for (size_t n = 0; n < len - k; n++)
                fprintf(m.f, "%s -> ", b->files[path[k + (first - k + n) % (len - k)]].name);
            fprintf(m.f, "%s: backing chain loops", b->files[path[first]].name);
            return msg_fail(c, &m, -ELOOP);
        }
        for (size_t m = 0; m < len; m++)
            state[path[m]] = DONE;
    }
    return 0;
}

/* Exactly one base and one top, or the list of both. */
static int check_one_chain(struct chain *c, const struct build *b, size_t *top)
{
    size_t bases = 0, tops = 0;
    for (size_t i = 0; i < b->n; i++) {
        bases += b->backing[i] == NO_BACKING;
        if (b->children[i] == 0) {
            tops++;
            *top = i;
        }
    }
    if (bases == 1 && tops == 1)
        return 0;
    struct msg m;
    if (msg_open(&m) < 0)
        return chain_fail(c, -ENOMEM, "out of memory");
    fprintf(m.f, "the files do not form one chain: %zu base%s (", bases, bases == 1 ? "" : "s");
    for (size_t i = 0, n = 0; i < b->n; i++)
        if (b->backing[i] == NO_BACKING)
            fprintf(m.f, "%s%s", n++ ? ", " : "", b->files[i].name);
    fprintf(m.f, ") and %zu top%s (", tops, tops == 1 ? "" : "s");
    for (size_t i = 0, n = 0; i < b->n; i++)
        if (b->children[i] == 0)
            fprintf(m.f, "%s%s", n++ ? ", " : "", b->files[i].name);
    fprintf(m.f, "); chains:");
    for (size_t i = 0, n = 0; i < b->n; i++) {
        if (b->children[i] != 0)
            continue;
        if (n++ == CHAIN_LIST_MAX) {
            fprintf(m.f, " ...");
            break;
        }
        fprintf(m.f, "%s", n > 1 ? ";" : "");
        for (size_t j = i; j != NO_BACKING; j = b->backing[j])
            fprintf(m.f, " %s%s", b->files[j].name, b->backing[j] != NO_BACKING ? " ->" : "");
    }
    return msg_fail(c, &m, -ENOTUNIQ);
}

int chain_build(const char *dir, struct chain *c)
{
    memset(c, 0, sizeof(*c));
    struct build b = {.dir = dir};
    int r = probe_files(c, &b);
    for (size_t i = 0; r == 0 && i < b.n; i++)
        r = resolve_backing(c, &b, i);
    for (size_t i = 0; r == 0 && i < b.n; i++)
        r = check_backing_format(c, &b, i);
    if (r == 0) {
        for (size_t i = 0; i < b.n; i++)
            if (b.backing[i] != NO_BACKING)
                b.children[b.backing[i]]++;
        r = find_loop(c, &b);
    }
    size_t top = 0;
    if (r == 0)
        r = check_one_chain(c, &b, &top);
    if (r == 0) {
        /* One base, one top, no loop: the walk down from the top visits every file. */
        c->layers = calloc(b.n, sizeof(*c->layers));
        if (!c->layers) {
            r = chain_fail(c, -ENOMEM, "out of memory");
        } else {
            size_t k = b.n;
            for (size_t j = top; j != NO_BACKING; j = b.backing[j]) {
                c->layers[--k] = b.files[j];
                memset(&b.files[j], 0, sizeof(b.files[j]));
            }
            c->len = b.n;
        }
    }
    for (size_t i = 0; i < b.n; i++)
        layer_free(&b.files[i]);
    free(b.files);
    free(b.backing);
    free(b.children);
    return r;
}

void chain_free(struct chain *c)
{
    for (size_t i = 0; i < c->len; i++)
        layer_free(&c->layers[i]);
    free(c->layers);
    free(c->error);
    memset(c, 0, sizeof(*c));
}

int chain_check_readable(struct chain *c)
{
    for (size_t i = 0; i < c->len; i++) {
        const struct chain_layer *l = &c->layers[i];
        if (l->info.format != IMAGE_FORMAT_QCOW2)
            continue;
        if (l->info.qcow2.encrypted)
            return chain_fail(c, -EOPNOTSUPP,
                              "%s: encrypted (%s); reading it needs the key, which is not "
                              "supported",
                              l->name, qcow2_crypt_name(l->info.qcow2.crypt_method));
        if (l->info.qcow2.incompatible_features & QCOW2_INCOMPAT_CORRUPT)
            return chain_fail(c, -EOPNOTSUPP,
                              "%s: qemu marked the image corrupt; check and repair it first "
                              "('qemu-img check -r all %s')",
                              l->name, l->path);
    }
    return 0;
}
