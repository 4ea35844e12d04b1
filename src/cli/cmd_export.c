/* vmexport export: one backup of a repository as a portable tar or OVA archive.  The options
 * and the output file are handled here (a temporary file renamed when complete, or standard
 * output); the archive itself is written by the exporter, backup/archive_export.c. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backup/archive_export.h"
#include "cli/cli.h"
#include "cli/progress.h"
#include "cli/repo_open.h"
#include "core/jsonw.h"
#include "repo/repo.h"

/* Permissions of the archive file before the umask. */
#define OUTPUT_MODE 0666

struct export_args {
    const char *repo, *pass_file, *out, *backup_id;
    struct store_options store;
    enum archive_kind kind;
    bool force, json, to_stdout;
};

static const struct cli_option export_options[] = {
    {"output", 'o', "FILE", "the archive to write, or '-' for standard output"},
    {"format", 'F', "tar|ova", "archive layout (default: ova when FILE ends in .ova,\nelse tar)"},
    {"force", 'f', NULL, "replace FILE if it exists"},
    {NULL, 0, NULL, NULL},
};

/* Options into a; EXIT_OK, or the exit status of a usage error or --help (*done set). */
static int parse_args(int argc, char **argv, struct export_args *a, bool *done)
{
    const char *format = NULL;
    struct cli_args ca = {0};
    int c;
    *done = true;
    while ((c = cli_next(&ca, &cmd_export, argc, argv)) > 0) {
        if (c == 'o')
            a->out = ca.arg;
        else if (c == 'F')
            format = ca.arg;
        else if (c == 'f')
            a->force = true;
    }
    if (c == CLI_EXIT)
        return ca.status;
    a->repo = ca.repo;
    a->pass_file = ca.passphrase_file;
    a->store = ca.store;
    a->json = ca.json;
    if (argc - ca.first != 1)
        return cli_usage_error(&cmd_export, "expected one BACKUP id");
    if (!a->out || !*a->out)
        return cli_usage_error(&cmd_export, "-o FILE is required ('-' for standard output)");
    if (format && !strcmp(format, "tar"))
        a->kind = ARCHIVE_KIND_TAR;
    else if (format && !strcmp(format, "ova"))
        a->kind = ARCHIVE_KIND_OVA;
    else if (format)
        return cli_usage_error(&cmd_export, "--format takes tar or ova, not '%s'", format);
    else
        a->kind = archive_ends_with(a->out, ".ova") ? ARCHIVE_KIND_OVA : ARCHIVE_KIND_TAR;
    a->backup_id = argv[ca.first];
    a->to_stdout = !strcmp(a->out, "-");
    *done = false;
    return EXIT_OK;
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

/* Make the finished temporary file durable and give it its name. */
static int publish_output(int fd, const char *tmp, const char *out, bool force)
{
    if (fsync(fd) < 0) {
        fprintf(stderr, "vmexport export: %s: fsync: %s; nothing was written\n", out,
                strerror(errno));
        return -1;
    }
    if ((force ? rename(tmp, out) : renameat2(AT_FDCWD, tmp, AT_FDCWD, out, RENAME_NOREPLACE)) <
        0) {
        fprintf(stderr, "vmexport export: %s: %s\n", out,
                errno == EEXIST ? "exists (use --force to overwrite it)" : strerror(errno));
        return -1;
    }
    return 0;
}

static void print_summary(FILE *f, const struct export_args *a,
                          const struct archive_export_result *res, double seconds)
{
    if (a->json) {
        bool first = true;
        fputc('{', f);
        jw_kv_str(f, &first, "type", "summary");
        jw_kv_str(f, &first, "backup", res->backup_id);
        jw_kv_str(f, &first, "vm", res->vm_id);
        jw_kv_str(f, &first, "file", a->out);
        jw_kv_str(f, &first, "format", a->kind == ARCHIVE_KIND_OVA ? "ova" : "tar");
        jw_kv_u64(f, &first, "disks", res->disks);
        jw_kv_u64(f, &first, "disk_bytes", res->disk_bytes);
        jw_kv_u64(f, &first, "data_bytes", res->data_bytes);
        jw_kv_u64(f, &first, "archive_bytes", res->archive_bytes);
        jw_key(f, &first, "seconds");
        fprintf(f, "%.6f}\n", seconds);
        return;
    }
    char b1[32], b2[32];
    fprintf(f, "exported backup %s of VM %s (%zu disks, %s) to %s as %s (%s), %.1f s\n",
            res->backup_id, res->vm_id, res->disks, cli_bytes(res->disk_bytes, b1, sizeof(b1)),
            a->to_stdout ? "standard output" : a->out, a->kind == ARCHIVE_KIND_OVA ? "OVA" : "tar",
            cli_bytes(res->archive_bytes, b2, sizeof(b2)), seconds);
}

static int export_run(int argc, char **argv)
{
    struct export_args a = {0};
    bool done;
    int rc = parse_args(argc, argv, &a, &done);
    if (done)
        return rc;
    if (a.to_stdout && isatty(STDOUT_FILENO)) {
        fprintf(stderr, "vmexport export: refusing to write an archive to a terminal\n");
        return EXIT_FAIL;
    }
    /* With the archive on standard output, reports go to standard error. */
    FILE *report = a.to_stdout ? stderr : stdout;
    double t0 = progress_now();
    struct stat st;
    if (!a.to_stdout && !a.force && lstat(a.out, &st) == 0) {
        fprintf(stderr, "vmexport export: %s exists (use --force to overwrite it)\n", a.out);
        return EXIT_FAIL;
    }
    struct repo *repo = cli_open_repo("export", a.repo, a.pass_file, &a.store);
    if (!repo)
        return EXIT_FAIL;
    char *tmp = NULL;
    int fd = a.to_stdout ? STDOUT_FILENO : open_output(a.out, &tmp);
    if (fd < 0) {
        repo_close(repo);
        return EXIT_FAIL;
    }
    struct progress_sink sink = {.what = "export", .json = a.json && !a.to_stdout};
    struct archive_export_options o = {
        .repo = repo,
        .backup_id = a.backup_id,
        .fd = fd,
        .kind = a.kind,
        .progress = progress_sink_callbacks(&sink),
    };
    struct archive_export_result res;
    char err[1024] = "";
    int r = archive_export(&o, &res, err, sizeof(err));
    progress_sink_finish(&sink);
    rc = EXIT_FAIL;
    if (r < 0)
        fprintf(stderr, "vmexport export: %s; %s\n", err,
                a.to_stdout ? "the archive on standard output is incomplete"
                            : "nothing was written");
    else if (a.to_stdout || publish_output(fd, tmp, a.out, a.force) == 0)
        rc = EXIT_OK;
    if (!a.to_stdout) {
        close(fd);
        if (rc != EXIT_OK)
            unlink(tmp);
        free(tmp);
    }
    if (rc == EXIT_OK)
        print_summary(report, &a, &res, progress_now() - t0);
    archive_export_result_free(&res);
    repo_close(repo);
    return rc;
}

const struct cli_command cmd_export = {
    .name = "export",
    .summary = "write a backup as a portable tar or OVA archive",
    .run = export_run,
    .usage = "Usage: vmexport export --repo URL BACKUP -o FILE [--format tar|ova] [--force]\n"
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
             "(then the summary goes to standard error).\n",
    .common = CLI_REPO | CLI_PASSPHRASE | CLI_JSON,
    .options = export_options,
    .json_short = 'J',
    .json_help = "progress lines and a JSON summary: backup, file, format,\n"
                 "disks, disk_bytes, data_bytes, archive_bytes, seconds",
    .epilog = "Exit status: 0 success, 1 failure (unknown backup, damaged data, existing FILE),\n"
              "2 bad usage.\n",
};
