/* vmexport import: a tar or OVA archive written by export into a new backup.  The options and
 * the input (a file or standard input) are handled here; the archive is read, checked and
 * stored by the importer, backup/archive_import.c. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backup/archive_import.h"
#include "cli/cli.h"
#include "cli/progress.h"
#include "cli/repo_open.h"
#include "core/jsonw.h"
#include "repo/repo.h"

static void print_summary(const struct archive_import_result *res, const char *src, bool json,
                          double seconds)
{
    if (json) {
        bool first = true;
        fputc('{', stdout);
        jw_kv_str(stdout, &first, "type", "summary");
        jw_kv_str(stdout, &first, "backup", res->backup_id);
        jw_kv_str(stdout, &first, "vm", res->vm_id);
        if (res->source_backup)
            jw_kv_str(stdout, &first, "source_backup", res->source_backup);
        jw_kv_u64(stdout, &first, "disks", res->disks);
        jw_kv_u64(stdout, &first, "bytes_read", res->bytes_read);
        jw_kv_u64(stdout, &first, "bytes_written", res->bytes_written);
        jw_kv_u64(stdout, &first, "chunks_new", res->chunks_new);
        jw_kv_u64(stdout, &first, "chunks_reused", res->chunks_reused);
        jw_key(stdout, &first, "seconds");
        printf("%.6f}\n", seconds);
        return;
    }
    char b1[32], b2[32];
    printf("imported backup %s of VM %s from %s: %zu disks, read %s, wrote %s, %llu new chunks, "
           "%llu reused, %.1f s\n",
           res->backup_id, res->vm_id, src, res->disks, cli_bytes(res->bytes_read, b1, sizeof(b1)),
           cli_bytes(res->bytes_written, b2, sizeof(b2)), (unsigned long long)res->chunks_new,
           (unsigned long long)res->chunks_reused, seconds);
}

static const struct cli_option import_options[] = {
    {"vm", 'm', "NAME", "store the backup under this VM ID"},
    {NULL, 0, NULL, NULL},
};

static int import_run(int argc, char **argv)
{
    const char *vm_opt = NULL;
    struct cli_args ca = {0};
    int c;
    while ((c = cli_next(&ca, &cmd_import, argc, argv)) > 0)
        if (c == 'm')
            vm_opt = ca.arg;
    if (c == CLI_EXIT)
        return ca.status;
    const char *repo_arg = ca.repo, *pass_file = ca.passphrase_file;
    bool json = ca.json;
    int first = ca.first;
    if (argc - first != 1)
        return cli_usage_error(&cmd_import, "expected one FILE ('-' for standard input)");
    if (vm_opt && (!*vm_opt || strchr(vm_opt, '/')))
        return cli_usage_error(&cmd_import, "--vm NAME must be non-empty and without '/'");
    const char *file = argv[first];
    bool from_stdin = !strcmp(file, "-");
    const char *src = from_stdin ? "standard input" : file;
    double t0 = progress_now();

    struct repo *repo = cli_open_repo("import", repo_arg, pass_file, &ca.store);
    if (!repo)
        return EXIT_FAIL;
    int fd = from_stdin ? STDIN_FILENO : open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        fprintf(stderr, "vmexport import: %s: %s\n", src, strerror(errno));
        repo_close(repo);
        return EXIT_FAIL;
    }
    struct progress_sink sink = {.what = "import", .json = json};
    struct archive_import_options o = {
        .repo = repo,
        .fd = fd,
        .vm_id = vm_opt,
        .progress = progress_sink_callbacks(&sink),
    };
    struct archive_import_result res;
    char err[2048] = "";
    int r = archive_import(&o, &res, err, sizeof(err));
    progress_sink_finish(&sink);
    if (!from_stdin)
        close(fd);
    if (r < 0)
        fprintf(stderr, "vmexport import: %s: %s; no backup was created\n", src, err);
    else
        print_summary(&res, src, json, progress_now() - t0);
    archive_import_result_free(&res);
    repo_close(repo);
    return r < 0 ? EXIT_FAIL : EXIT_OK;
}

const struct cli_command cmd_import = {
    .name = "import",
    .summary = "create a backup from a tar or OVA archive made by export",
    .run = import_run,
    .usage =
        "Usage: vmexport import FILE --repo URL [--vm NAME] [--passphrase-file FILE] [--json]\n"
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
        "are left for 'vmexport gc').\n",
    .common = CLI_REPO | CLI_PASSPHRASE | CLI_JSON,
    .options = import_options,
    .json_short = 'J',
    .json_help = "progress lines and a JSON summary: backup, vm,\n"
                 "source_backup, disks, bytes_read, bytes_written,\n"
                 "chunks_new, chunks_reused, seconds",
    .epilog = "Exit status: 0 success, 1 failure (unreadable, damaged or tampered archive), 2 bad\n"
              "usage.\n",
};
