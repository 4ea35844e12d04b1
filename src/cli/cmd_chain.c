/* The chain command: qcow2 snapshot chains kept in one directory (the oVirt restore flow).
 * "chain info" prints the chain composed from the images' backing file names, "chain flatten"
 * writes the guest-visible disk as a sparse raw file (qemu-img does the data work on the chain
 * checked here), "chain upload" flattens to a temporary file and uploads it to a VM. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/upload.h"
#include "core/cleanup.h"
#include "core/log.h"
#include "fs/chain.h"

/* Parallel upload connections unless --jobs says otherwise. */
#define DEFAULT_JOBS 4
/* flatten builds FILE + this (mkstemp fills the X's) next to FILE; a crash may leave it. */
#define FLATTEN_TMP_SUFFIX ".vxtmp.XXXXXX"
/* upload flattens into this file of $TMPDIR or of the directory containing DIR. */
#define UPLOAD_TMP_NAME "vmexport-chain-upload.XXXXXX"
/* qemu-img writes runs of zeros this long (and aligned) as holes. */
#define SPARSE_GRANULE "4k"
/* The qemu-img to run, unless the environment names another. */
#define QEMU_IMG_DEFAULT "qemu-img"
#define QEMU_IMG_ENV     "VMEXPORT_QEMU_IMG"
/* Guest disks are private: flattened files are readable by their owner only. */
#define OUTPUT_MODE 0600
/* st_blocks counts 512-byte units. */
#define STAT_BLOCK_SIZE 512

extern char **environ;

/* ---- cleanup on signals ------------------------------------------------------------------- */

/* While a temporary file exists, SIGINT, SIGTERM and SIGHUP remove it (and stop qemu-img)
 * before the process dies of the signal as it would have. */
static const int cleanup_signals[] = {SIGINT, SIGTERM, SIGHUP};
static char cleanup_path[PATH_MAX];
static volatile sig_atomic_t cleanup_armed;
static volatile sig_atomic_t cleanup_child; /* qemu-img's pid, or 0 */
static struct sigaction cleanup_saved[ARRAY_SIZE(cleanup_signals)];

static void cleanup_on_signal(int sig)
{
    if (cleanup_child > 0)
        kill((pid_t)cleanup_child, SIGTERM);
    if (cleanup_armed)
        unlink(cleanup_path);
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigaction(sig, &dfl, NULL);
    raise(sig);
}

static void cleanup_arm(const char *path)
{
    snprintf(cleanup_path, sizeof(cleanup_path), "%s", path);
    cleanup_armed = 1;
    struct sigaction sa = {.sa_handler = cleanup_on_signal};
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < ARRAY_SIZE(cleanup_signals); i++)
        sigaction(cleanup_signals[i], &sa, &cleanup_saved[i]);
}

static void cleanup_disarm(void)
{
    for (size_t i = 0; i < ARRAY_SIZE(cleanup_signals); i++)
        sigaction(cleanup_signals[i], &cleanup_saved[i], NULL);
    cleanup_armed = 0;
}

/* ---- flattening --------------------------------------------------------------------------- */

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
static int run_convert(const char *cmd, const struct chain *c, const char *tmp)
{
    const char *qemu_img = getenv(QEMU_IMG_ENV);
    if (!qemu_img || !*qemu_img)
        qemu_img = QEMU_IMG_DEFAULT;
    CLEANUP_FREE char *opts = chain_image_opts(c);
    if (!opts) {
        fprintf(stderr, "vmexport %s: out of memory\n", cmd);
        return -ENOMEM;
    }
    char *argv[] = {(char *)qemu_img, "convert",      "-O", "raw",       "-S",
                    SPARSE_GRANULE,   "--image-opts", opts, (char *)tmp, NULL};
    log_debug("running %s convert -O raw -S %s --image-opts '%s' %s", qemu_img, SPARSE_GRANULE,
              opts, tmp);
    pid_t pid;
    int r = posix_spawnp(&pid, qemu_img, NULL, NULL, argv, environ);
    if (r != 0) {
        fprintf(stderr, "vmexport %s: cannot run %s: %s%s\n", cmd, qemu_img, strerror(r),
                r == ENOENT ? " (install qemu-utils, or set " QEMU_IMG_ENV ")" : "");
        return -r;
    }
    cleanup_child = pid;
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            r = -errno;
            cleanup_child = 0;
            fprintf(stderr, "vmexport %s: waiting for %s: %s\n", cmd, qemu_img, strerror(-r));
            return r;
        }
    }
    cleanup_child = 0;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    if (WIFEXITED(status))
        fprintf(stderr, "vmexport %s: %s convert of %s failed (exit status %d)\n", cmd, qemu_img,
                chain_top(c)->path, WEXITSTATUS(status));
    else
        fprintf(stderr, "vmexport %s: %s convert of %s killed by signal %d\n", cmd, qemu_img,
                chain_top(c)->path, WTERMSIG(status));
    return -EIO;
}

/* Flatten the chain into tmp (created by the caller) and make it durable; *data gets the bytes
 * allocated. */
static int flatten_into(const char *cmd, const struct chain *c, const char *tmp, uint64_t *data)
{
    int r = run_convert(cmd, c, tmp);
    if (r < 0)
        return r;
    CLEANUP_CLOSE int fd = open(tmp, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || fchmod(fd, OUTPUT_MODE) < 0 || fsync(fd) < 0) {
        r = -errno;
        fprintf(stderr, "vmexport %s: %s: %s\n", cmd, tmp, strerror(-r));
        return r;
    }
    if ((uint64_t)st.st_size != chain_top(c)->info.virtual_size) {
        fprintf(stderr,
                "vmexport %s: %s: qemu-img wrote %" PRIu64
                " bytes, the virtual size of %s is %" PRIu64 "\n",
                cmd, tmp, (uint64_t)st.st_size, chain_top(c)->name,
                chain_top(c)->info.virtual_size);
        return -EIO;
    }
    *data = (uint64_t)st.st_blocks * STAT_BLOCK_SIZE;
    return 0;
}

/* Build the chain of dir and check that qemu-img can read it; prints why not. */
static int load_chain(const char *cmd, const char *dir, struct chain *c, bool readable)
{
    int r = chain_build(dir, c);
    if (r == 0 && readable)
        r = chain_check_readable(c);
    if (r < 0)
        fprintf(stderr, "vmexport %s: %s: %s\n", cmd, dir, c->error ? c->error : strerror(-r));
    return r;
}

/* Put tmp in place at out: replacing it with force, else only if out does not exist. */
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

static void fsync_parent(const char *path)
{
    CLEANUP_FREE char *copy = strdup(path);
    if (!copy)
        return;
    char *slash = strrchr(copy, '/');
    const char *dir = slash ? (slash == copy ? "/" : (*slash = '\0', copy)) : ".";
    CLEANUP_CLOSE int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0)
        fsync(fd);
}

static int flatten(const char *dir, const char *out, bool force)
{
    const char *cmd = "chain flatten";
    struct chain c;
    if (load_chain(cmd, dir, &c, true) < 0) {
        chain_free(&c);
        return EXIT_FAIL;
    }
    struct stat st;
    if (stat(out, &st) == 0) {
        bool is_layer = false;
        for (size_t i = 0; i < c.len; i++)
            is_layer |= c.layers[i].dev == st.st_dev && c.layers[i].ino == st.st_ino;
        const char *why = is_layer              ? "is an image of the chain"
                          : S_ISDIR(st.st_mode) ? "is a directory"
                          : !force              ? "exists (use --force to replace it)"
                                                : NULL;
        if (why) {
            fprintf(stderr, "vmexport %s: %s %s\n", cmd, out, why);
            chain_free(&c);
            return EXIT_FAIL;
        }
    }
    CLEANUP_FREE char *tmp = NULL;
    int fd = -1;
    if (asprintf(&tmp, "%s%s", out, FLATTEN_TMP_SUFFIX) < 0) {
        tmp = NULL;
        errno = ENOMEM;
    } else {
        fd = mkostemp(tmp, O_CLOEXEC);
    }
    if (fd < 0) {
        fprintf(stderr, "vmexport %s: %s: creating a temporary file next to it: %s\n", cmd, out,
                strerror(errno));
        chain_free(&c);
        return EXIT_FAIL;
    }
    close(fd);
    cleanup_arm(tmp);
    uint64_t data = 0;
    int r = flatten_into(cmd, &c, tmp, &data);
    if (r == 0 && (r = install(tmp, out, force)) < 0)
        fprintf(stderr, "vmexport %s: %s: %s\n", cmd, out,
                r == -EEXIST ? "exists (use --force to replace it)" : strerror(-r));
    if (r < 0)
        unlink(tmp);
    cleanup_disarm();
    if (r == 0) {
        fsync_parent(out);
        char b1[32], b2[32];
        printf("%s: flattened %zu image%s (top %s) into %s: %s, %s of data\n", dir, c.len,
               c.len == 1 ? "" : "s", chain_top(&c)->name, out,
               cli_bytes(chain_top(&c)->info.virtual_size, b1, sizeof(b1)),
               cli_bytes(data, b2, sizeof(b2)));
    }
    chain_free(&c);
    return r == 0 ? EXIT_OK : EXIT_FAIL;
}

/* Where upload puts its temporary file: $TMPDIR, else the directory that contains dir. */
static char *upload_tmp_template(const char *dir)
{
    const char *tmpdir = getenv("TMPDIR");
    char *t = NULL;
    if (tmpdir && *tmpdir) {
        if (asprintf(&t, "%s/%s", tmpdir, UPLOAD_TMP_NAME) < 0)
            return NULL;
        return t;
    }
    CLEANUP_FREE char *real = realpath(dir, NULL);
    if (!real)
        return NULL;
    char *slash = strrchr(real, '/');
    if (slash == real)
        slash[1] = '\0'; /* dir is a directory of / */
    else if (slash)
        *slash = '\0';
    if (asprintf(&t, "%s%s%s", real, slash == real ? "" : "/", UPLOAD_TMP_NAME) < 0)
        return NULL;
    return t;
}

static int upload(const char *dir, const char *vm, const char *disk, unsigned jobs)
{
    const char *cmd = "chain upload";
    struct chain c;
    if (load_chain(cmd, dir, &c, true) < 0) {
        chain_free(&c);
        return EXIT_FAIL;
    }
    CLEANUP_FREE char *tmp = upload_tmp_template(dir);
    int fd = tmp ? mkostemp(tmp, O_CLOEXEC) : -1;
    if (fd < 0) {
        fprintf(stderr, "vmexport %s: creating a temporary file in %s: %s\n", cmd,
                getenv("TMPDIR") && *getenv("TMPDIR") ? "$TMPDIR" : "the directory above DIR",
                strerror(errno));
        chain_free(&c);
        return EXIT_FAIL;
    }
    close(fd);
    cleanup_arm(tmp);
    uint64_t data = 0;
    int ret = EXIT_FAIL;
    if (flatten_into(cmd, &c, tmp, &data) == 0) {
        char b1[32], b2[32];
        log_info("%s: flattened %zu images into %s (%s, %s of data)", dir, c.len, tmp,
                 cli_bytes(chain_top(&c)->info.virtual_size, b1, sizeof(b1)),
                 cli_bytes(data, b2, sizeof(b2)));
        ret = upload_sparse_file(cmd, tmp, vm, disk, jobs);
    }
    unlink(tmp);
    cleanup_disarm();
    chain_free(&c);
    return ret;
}

/* ---- info --------------------------------------------------------------------------------- */

static json_t *layer_json(const struct chain_layer *l, const struct chain_layer *backing)
{
    const struct qcow2_info *q = &l->info.qcow2;
    bool qcow2 = l->info.format == IMAGE_FORMAT_QCOW2;
    json_t *o = json_object();
    if (!o)
        return NULL;
    int r = 0;
    r |= json_object_set_new(o, "name", json_string(l->name));
    r |= json_object_set_new(o, "path", json_string(l->path));
    r |= json_object_set_new(o, "format", json_string(image_format_name(l->info.format)));
    r |= json_object_set_new(o, "virtual_size", json_integer((json_int_t)l->info.virtual_size));
    r |= json_object_set_new(o, "file_size", json_integer((json_int_t)l->info.file_size));
    r |= json_object_set_new(o, "backing_file",
                             q->backing_file ? json_string(q->backing_file) : json_null());
    r |= json_object_set_new(o, "backing_format",
                             q->backing_format ? json_string(q->backing_format) : json_null());
    r |= json_object_set_new(o, "backing", backing ? json_string(backing->name) : json_null());
    r |= json_object_set_new(o, "backing_found_by_name", json_boolean(l->backing_by_name));
    if (qcow2) {
        r |= json_object_set_new(o, "version", json_integer(q->version));
        r |= json_object_set_new(o, "cluster_size", json_integer((json_int_t)q->cluster_size));
        r |= json_object_set_new(o, "encrypted",
                                 q->encrypted ? json_string(qcow2_crypt_name(q->crypt_method))
                                              : json_false());
        r |= json_object_set_new(o, "dirty",
                                 json_boolean(q->incompatible_features & QCOW2_INCOMPAT_DIRTY));
        r |= json_object_set_new(o, "corrupt",
                                 json_boolean(q->incompatible_features & QCOW2_INCOMPAT_CORRUPT));
        r |= json_object_set_new(o, "internal_snapshots", json_integer(q->nb_snapshots));
    }
    if (r) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int info_json(const char *dir, const struct chain *c)
{
    json_t *layers = json_array();
    json_t *root = json_object();
    int r = !layers || !root;
    for (size_t i = 0; !r && i < c->len; i++)
        r = json_array_append_new(layers, layer_json(&c->layers[i], i ? &c->layers[i - 1] : NULL));
    if (!r) {
        r |= json_object_set_new(root, "directory", json_string(dir));
        r |= json_object_set_new(root, "top", json_string(chain_top(c)->name));
        r |= json_object_set_new(root, "virtual_size",
                                 json_integer((json_int_t)chain_top(c)->info.virtual_size));
        r |= json_object_set(root, "layers", layers);
    }
    if (!r && (json_dumpf(root, stdout, JSON_COMPACT) < 0 || putchar('\n') == EOF))
        r = 1;
    json_decref(layers);
    json_decref(root);
    return r ? -EIO : 0;
}

static void info_text(const char *dir, const struct chain *c)
{
    char b[32];
    int w = (int)strlen("IMAGE");
    for (size_t i = 0; i < c->len; i++)
        if ((int)strlen(c->layers[i].name) > w)
            w = (int)strlen(c->layers[i].name);
    printf("%s: chain of %zu image%s, top %s, virtual size %s\n", dir, c->len,
           c->len == 1 ? "" : "s", chain_top(c)->name,
           cli_bytes(chain_top(c)->info.virtual_size, b, sizeof(b)));
    printf("  %3s  %-*s  %-8s  %12s  %s\n", "#", w, "IMAGE", "FORMAT", "VIRTUAL SIZE",
           "BACKING FILE");
    for (size_t i = 0; i < c->len; i++) {
        const struct chain_layer *l = &c->layers[i];
        const struct qcow2_info *q = &l->info.qcow2;
        char fmt[16];
        if (l->info.format == IMAGE_FORMAT_QCOW2)
            snprintf(fmt, sizeof(fmt), "qcow2 v%" PRIu32, q->version);
        else
            snprintf(fmt, sizeof(fmt), "raw");
        printf("  %3zu  %-*s  %-8s  %12s  ", i + 1, w, l->name, fmt,
               cli_bytes(l->info.virtual_size, b, sizeof(b)));
        if (!q->backing_file)
            printf("-");
        else if (q->backing_format)
            printf("%s (%s)", q->backing_file, q->backing_format);
        else
            printf("%s (format not declared)", q->backing_file);
        if (i > 0 && strcmp(q->backing_file, c->layers[i - 1].name))
            printf(" = %s%s", c->layers[i - 1].name, l->backing_by_name ? ", found by name" : "");
        if (q->encrypted)
            printf(", encrypted (%s)", qcow2_crypt_name(q->crypt_method));
        if (q->incompatible_features & QCOW2_INCOMPAT_CORRUPT)
            printf(", marked corrupt");
        if (q->incompatible_features & QCOW2_INCOMPAT_DIRTY)
            printf(", dirty");
        putchar('\n');
    }
}

static int info(const char *dir, bool json)
{
    struct chain c;
    if (load_chain("chain info", dir, &c, false) < 0) {
        chain_free(&c);
        return EXIT_FAIL;
    }
    int r = 0;
    if (json)
        r = info_json(dir, &c);
    else
        info_text(dir, &c);
    chain_free(&c);
    if (r < 0 || fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "vmexport chain info: writing output: %s\n", strerror(errno ? errno : EIO));
        return EXIT_FAIL;
    }
    return EXIT_OK;
}

/* ---- command line ------------------------------------------------------------------------- */

static const struct cli_option chain_options[] = {
    {"output", 'o', "FILE", "flatten: the raw file to write"},
    {"force", 'f', NULL, "flatten: replace FILE if it exists (never an image of the chain)"},
    {"to", 't', "VM", "upload: the VM to upload to"},
    {"disk", 'd', "NAME", "upload: the name of the disk in VM"},
    {NULL, 0, NULL, NULL},
};

static int chain_run(int argc, char **argv)
{
    bool force = false;
    const char *out = NULL, *vm = NULL, *disk = NULL;
    struct cli_args a = {0};
    int c;
    while ((c = cli_next(&a, &cmd_chain, argc, argv)) > 0) {
        switch (c) {
        case 'o':
            out = a.arg;
            break;
        case 'f':
            force = true;
            break;
        case 't':
            vm = a.arg;
            break;
        case 'd':
            disk = a.arg;
            break;
        }
    }
    if (c == CLI_EXIT)
        return a.status;
    bool json = a.json;
    unsigned jobs = a.jobs ? a.jobs : DEFAULT_JOBS;
    int first = a.first;
    int n = argc - first;
    if (n < 1)
        return cli_usage_error(&cmd_chain, "expected info, flatten or upload");
    const char *sub = argv[first];
    bool is_info = !strcmp(sub, "info"), is_flatten = !strcmp(sub, "flatten"),
         is_upload = !strcmp(sub, "upload");
    if (!is_info && !is_flatten && !is_upload)
        return cli_usage_error(&cmd_chain, "unknown subcommand '%s' (info, flatten or upload)",
                               sub);
    if (n != 2)
        return cli_usage_error(&cmd_chain, "%s: expected one DIR", sub);
    const char *dir = argv[first + 1];

    /* Options of the other subcommands are mistakes, not something to ignore. */
    const char *stray = json && !is_info       ? "--json"
                        : out && !is_flatten   ? "--output"
                        : force && !is_flatten ? "--force"
                        : vm && !is_upload     ? "--to"
                        : disk && !is_upload   ? "--disk"
                        : a.jobs && !is_upload ? "--jobs"
                                               : NULL;
    if (stray)
        return cli_usage_error(&cmd_chain, "%s does not go with chain %s", stray, sub);
    if (is_info)
        return info(dir, json);
    if (is_flatten) {
        if (!out || !*out)
            return cli_usage_error(&cmd_chain, "flatten: -o FILE is required");
        return flatten(dir, out, force);
    }
    if (!vm || !*vm || !disk || !*disk)
        return cli_usage_error(&cmd_chain, "upload: --to VM and --disk NAME are required");
    return upload(dir, vm, disk, jobs);
}

const struct cli_command cmd_chain = {
    .name = "chain",
    .summary = "qcow2 snapshot chains: show, flatten to raw, upload",
    .run = chain_run,
    .usage =
        "Usage: vmexport chain info DIR [--json]\n"
        "       vmexport chain flatten DIR -o FILE [--force]\n"
        "       vmexport chain upload DIR --to VM --disk NAME [--jobs N]\n"
        "\n"
        "Work with the snapshot chain of one disk kept in directory DIR, as oVirt restores\n"
        "it: each qcow2 image names its backing file, from the top image (what the guest\n"
        "sees) down to the base (no backing file).\n"
        "\n"
        "Every regular file in DIR must be a disk image; subdirectories are ignored.  Images\n"
        "are qcow2 (version 2 or 3, read by vmexport's own header parser) or raw: a file that\n"
        "is not qcow2, carries no other image format's signature and is a non-zero multiple\n"
        "of 512 bytes.  Anything else (notes, checksums, oVirt .meta files) is an error;\n"
        "move it out of DIR.  Raw images have no backing file.\n"
        "\n"
        "Backing file names are resolved as qemu does: an absolute name as is, a relative\n"
        "name against DIR.  Copied chains often still carry old paths, so when that path does\n"
        "not exist, or is not one of DIR's files, the file of DIR with the same basename is\n"
        "used (info says \"found by name\").  The chain is made of DIR's files only.  They\n"
        "must form exactly one chain: one base, one top, no loop, and each backing file in\n"
        "the format its image declares.  Errors name the files involved.\n"
        "\n"
        "info     print the chain base first: each image's format, virtual size and backing\n"
        "         file name as stored (and the file of DIR it resolved to, if another name).\n"
        "flatten  write the guest-visible content of the top image to FILE as a sparse raw\n"
        "         image.  The chain is checked first; then qemu-img reads exactly the files\n"
        "         found ('qemu-img convert -O raw -S 4k --image-opts' naming every layer's\n"
        "         file and format, so stale paths inside the images are not followed).  FILE\n"
        "         is written as FILE.vxtmp.XXXXXX next to it, fsynced and renamed into place:\n"
        "         it never exists half-written.  FILE gets mode 0600.\n"
        "upload   flatten to a temporary sparse file, upload it as disk NAME of VM through\n"
        "         vmexportd's upload API, and remove it.  The temporary file is made in\n"
        "         $TMPDIR if set, else in the directory that contains DIR (the chain's own\n"
        "         storage: /tmp is often too small); it needs as much space as the disk has\n"
        "         data (connection options below).\n"
        "\n"
        "Encrypted images and images qemu marked corrupt cannot be flattened or uploaded.\n"
        "Interrupting flatten or upload removes the temporary file.\n"
        "\n",
    .common = CLI_JSON | CLI_JOBS | CLI_CONNECTION,
    .options = chain_options,
    .jobs_short = 'j',
    .json_help = "info: one JSON object {\"directory\",\"top\",\"virtual_size\",\n"
                 "\"layers\":[{\"name\",\"path\",\"format\",\"virtual_size\",\n"
                 "\"file_size\",\"backing_file\",\"backing_format\",\"backing\",\n"
                 "\"backing_found_by_name\"}]}, layers base first; qcow2 layers add\n"
                 "\"version\",\"cluster_size\",\"encrypted\",\"dirty\",\"corrupt\",\n"
                 "\"internal_snapshots\"",
    .jobs_help = "upload: parallel connections, 1 to 64 (default 4)",
    .epilog = "Environment:\n"
              "  VMEXPORT_QEMU_IMG  the qemu-img to run (default: qemu-img from PATH, package\n"
              "                     qemu-utils)\n"
              "  TMPDIR             where upload writes its temporary file\n"
              "\n"
              "Exit status: 0 success, 1 failure (broken chain, qemu-img or upload failed), 2 bad\n"
              "usage.\n",
};
