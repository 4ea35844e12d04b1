/* The chain command: qcow2 snapshot chains kept in one directory (the oVirt restore flow).
 * "chain info" prints the chain composed from the images' backing file names, "chain flatten"
 * writes the guest-visible disk as a sparse raw file (qemu-img does the data work on the chain
 * checked here), "chain upload" flattens to a temporary file and uploads it to a VM. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backup/flatten.h"
#include "cli/cli.h"
#include "core/signals.h"
#include "cli/upload.h"
#include "core/cleanup.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "fs/chain.h"

/* Parallel upload connections unless --jobs says otherwise. */
#define DEFAULT_JOBS 4
/* upload flattens into this file of $TMPDIR or of the directory containing DIR. */
#define UPLOAD_TMP_NAME "vmexport-chain-upload.XXXXXX"

/* ---- flattening --------------------------------------------------------------------------- */

/* The temporary file of upload while it exists, removed by an interrupting signal. */
static char upload_tmp[PATH_MAX];
static volatile sig_atomic_t upload_tmp_set;

static void on_interrupt(void)
{
    flatten_interrupted();
    if (upload_tmp_set)
        unlink(upload_tmp);
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

static int flatten(const char *dir, const char *out, bool force)
{
    const char *cmd = "chain flatten";
    struct chain c;
    if (load_chain(cmd, dir, &c, true) < 0) {
        chain_free(&c);
        return EXIT_FAIL;
    }
    uint64_t data = 0;
    char err[FLATTEN_ERROR_MAX];
    signals_cleanup_arm(on_interrupt);
    int r = chain_flatten_file(&c, out, force, &data, err, sizeof(err));
    signals_cleanup_disarm();
    if (r < 0)
        fprintf(stderr, "vmexport %s: %s\n", cmd, err);
    if (r == 0) {
        char b1[32], b2[32];
        printf("%s: flattened %zu image%s (top %s) into %s: %s, %s of data\n", dir, c.len,
               c.len == 1 ? "" : "s", chain_top(&c)->name, out,
               cli_bytes(chain_top(&c)->info.virtual_size, b1, sizeof(b1)),
               cli_bytes(data, b2, sizeof(b2)));
    }
    chain_free(&c);
    return r == 0 ? EXIT_OK : EXIT_FAIL;
}

/* Where upload puts its temporary file: $TMPDIR, else the directory that contains dir.  0,
 * or -1 with errno set. */
static int upload_tmp_make(const char *dir)
{
    const char *tmpdir = getenv("TMPDIR");
    CLEANUP_FREE char *real = tmpdir && *tmpdir ? NULL : realpath(dir, NULL);
    if (!(tmpdir && *tmpdir) && !real)
        return -1;
    char *slash = real ? strrchr(real, '/') : NULL;
    if (slash == real && slash)
        slash[1] = '\0'; /* dir is a directory of / */
    else if (slash)
        *slash = '\0';
    const char *parent = real ? real : tmpdir;
    size_t n = (size_t)snprintf(upload_tmp, sizeof(upload_tmp), "%s%s%s", parent,
                                !strcmp(parent, "/") ? "" : "/", UPLOAD_TMP_NAME);
    if (n >= sizeof(upload_tmp)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = mkostemp(upload_tmp, O_CLOEXEC);
    if (fd < 0)
        return -1;
    close(fd);
    upload_tmp_set = 1;
    return 0;
}

static int upload(const char *dir, const char *vm, const char *disk, unsigned jobs)
{
    const char *cmd = "chain upload";
    struct chain c;
    if (load_chain(cmd, dir, &c, true) < 0) {
        chain_free(&c);
        return EXIT_FAIL;
    }
    signals_cleanup_arm(on_interrupt);
    if (upload_tmp_make(dir) < 0) {
        fprintf(stderr, "vmexport %s: creating a temporary file in %s: %s\n", cmd,
                getenv("TMPDIR") && *getenv("TMPDIR") ? "$TMPDIR" : "the directory above DIR",
                strerror(errno));
        signals_cleanup_disarm();
        chain_free(&c);
        return EXIT_FAIL;
    }
    uint64_t data = 0;
    char err[FLATTEN_ERROR_MAX];
    int ret = EXIT_FAIL;
    if (chain_flatten(&c, upload_tmp, &data, err, sizeof(err)) < 0) {
        fprintf(stderr, "vmexport %s: %s\n", cmd, err);
    } else {
        char b1[32], b2[32];
        log_info("%s: flattened %zu images into %s (%s, %s of data)", dir, c.len, upload_tmp,
                 cli_bytes(chain_top(&c)->info.virtual_size, b1, sizeof(b1)),
                 cli_bytes(data, b2, sizeof(b2)));
        ret = upload_sparse_file(cmd, upload_tmp, vm, disk, jobs);
    }
    unlink(upload_tmp);
    upload_tmp_set = 0;
    signals_cleanup_disarm();
    chain_free(&c);
    return ret;
}

/* ---- info --------------------------------------------------------------------------------- */

static void layer_json(FILE *f, const struct chain_layer *l, const struct chain_layer *backing)
{
    const struct qcow2_info *q = &l->info.qcow2;
    bool first = true;
    fputc('{', f);
    jw_kv_str(f, &first, "name", l->name);
    jw_kv_str(f, &first, "path", l->path);
    jw_kv_str(f, &first, "format", image_format_name(l->info.format));
    jw_kv_u64(f, &first, "virtual_size", l->info.virtual_size);
    jw_kv_u64(f, &first, "file_size", l->info.file_size);
    jw_kv_str(f, &first, "backing_file", q->backing_file); /* null when none */
    jw_kv_str(f, &first, "backing_format", q->backing_format);
    jw_kv_str(f, &first, "backing", backing ? backing->name : NULL);
    jw_kv_bool(f, &first, "backing_found_by_name", l->backing_by_name);
    if (l->info.format == IMAGE_FORMAT_QCOW2) {
        jw_kv_u64(f, &first, "version", q->version);
        jw_kv_u64(f, &first, "cluster_size", q->cluster_size);
        if (q->encrypted)
            jw_kv_str(f, &first, "encrypted", qcow2_crypt_name(q->crypt_method));
        else
            jw_kv_bool(f, &first, "encrypted", false);
        jw_kv_bool(f, &first, "dirty", q->incompatible_features & QCOW2_INCOMPAT_DIRTY);
        jw_kv_bool(f, &first, "corrupt", q->incompatible_features & QCOW2_INCOMPAT_CORRUPT);
        jw_kv_u64(f, &first, "internal_snapshots", q->nb_snapshots);
    }
    fputc('}', f);
}

static void info_json(const char *dir, const struct chain *c)
{
    FILE *f = stdout;
    bool first = true;
    fputc('{', f);
    jw_kv_str(f, &first, "directory", dir);
    jw_kv_str(f, &first, "top", chain_top(c)->name);
    jw_kv_u64(f, &first, "virtual_size", chain_top(c)->info.virtual_size);
    jw_key(f, &first, "layers");
    fputc('[', f);
    for (size_t i = 0; i < c->len; i++) {
        if (i)
            fputc(',', f);
        layer_json(f, &c->layers[i], i ? &c->layers[i - 1] : NULL);
    }
    fputs("]}\n", f);
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
    if (json)
        info_json(dir, &c);
    else
        info_text(dir, &c);
    chain_free(&c);
    return cli_finish_stdout();
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
