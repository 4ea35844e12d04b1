/* vmexport restore: the disks of a backup back to files (the engine in backup/restore.c) or,
 * with --upload, to a host through vmexportd's upload API (cli/upload.c over backup/upload.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup/define.h"
#include "backup/definition.h"
#include "backup/restore.h"
#include "cli/cli.h"
#include "cli/progress.h"
#include "cli/repo_open.h"
#include "cli/upload.h"
#include "core/cleanup.h"
#include "core/jsonw.h"

/* Restore threads (reading, checking, decompressing and writing chunks) and upload
 * connections unless --jobs says otherwise. */
#define RESTORE_DEFAULT_JOBS 4
#define UPLOAD_DEFAULT_JOBS  2

static void print_restored(const struct backup *b, const struct restored_disk *d, bool json)
{
    if (!json) {
        char sz[32];
        printf("restored disk %s of backup %s to %s (%s)\n", d->disk, b->id, d->dest,
               cli_bytes(d->size, sz, sizeof(sz)));
        return;
    }
    bool first = true;
    putchar('{');
    jw_kv_str(stdout, &first, "type", "restored");
    jw_kv_str(stdout, &first, "backup", b->id);
    jw_kv_str(stdout, &first, "disk", d->disk);
    jw_kv_str(stdout, &first, "to", d->dest);
    jw_kv_u64(stdout, &first, "size", d->size);
    puts("}");
}

enum { OPT_DEFINE = CLI_LONG_ONLY, OPT_URI };

/* --define: the backup's VM definition, defined on the libvirt at uri with the restored disks. */
static int define_vm(const struct backup *b, const struct restore_result *res, const char *uri,
                     bool json)
{
    char err[512];
    CLEANUP_FREE char *name = NULL;
    const char *format = NULL, *text = NULL;
    int r = backup_definition_get(b, &format, &text);
    if (r < 0)
        snprintf(err, sizeof(err), "backup %s holds no VM definition", b->id);
    else
        r = restore_define(uri, format, text, res->disks.ptr, res->disks.len, &name, err,
                           sizeof(err));
    if (r < 0) {
        fprintf(stderr, "vmexport restore: --define: %s\n", err);
        return EXIT_FAIL;
    }
    if (!json) {
        printf("defined domain %s on %s\n", name, uri);
        return EXIT_OK;
    }
    bool first = true;
    putchar('{');
    jw_kv_str(stdout, &first, "type", "defined");
    jw_kv_str(stdout, &first, "backup", b->id);
    jw_kv_str(stdout, &first, "domain", name);
    jw_kv_str(stdout, &first, "uri", uri);
    puts("}");
    return EXIT_OK;
}

static const struct cli_option restore_options[] = {
    {"disk", 'd', "NAME", "only this disk"},
    {"to", 't', "FILE|DIR", "destination file or directory"},
    {"upload", 'u', "VM", "upload to the server instead (connection options below)"},
    {"force", 'f', NULL, "replace existing files"},
    {"definition-out", 'D', "FILE", "write the VM definition stored with the backup to FILE"},
    {"define", OPT_DEFINE, NULL, "then define the VM on a libvirt host with the restored disks"},
    {"uri", OPT_URI, "URI", "libvirt connection of --define (default " DEFINE_URI_DEFAULT ")"},
    {NULL, 0, NULL, NULL},
};

static int restore_cmd(int argc, char **argv)
{
    const char *disk = NULL, *to = NULL, *upload_vm = NULL, *definition_out = NULL, *uri = NULL;
    bool force = false, define = false;
    struct cli_args a = {0};
    int c;
    while ((c = cli_next(&a, &cmd_restore, argc, argv)) > 0) {
        if (c == 'd')
            disk = a.arg;
        else if (c == 't')
            to = a.arg;
        else if (c == 'u')
            upload_vm = a.arg;
        else if (c == 'f')
            force = true;
        else if (c == 'D')
            definition_out = a.arg;
        else if (c == OPT_DEFINE)
            define = true;
        else if (c == OPT_URI)
            uri = a.arg;
    }
    if (c == CLI_EXIT)
        return a.status;
    bool json = a.json;
    unsigned jobs = a.jobs;
    int first = a.first;
    if (argc - first != 1)
        return cli_usage_error(&cmd_restore, "expected one BACKUP id");
    if ((to && upload_vm) || (!to && !upload_vm && !definition_out))
        return cli_usage_error(&cmd_restore,
                               "give one of --to FILE|DIR and --upload VM (or --definition-out)");
    if ((define || uri) && !to)
        return cli_usage_error(&cmd_restore, "--define and --uri need --to");
    if (uri && !define)
        return cli_usage_error(&cmd_restore, "--uri goes with --define");
    if (!jobs)
        jobs = upload_vm ? UPLOAD_DEFAULT_JOBS : RESTORE_DEFAULT_JOBS;
    struct repo *repo = cli_open_repo("restore", a.repo, a.passphrase_file, &a.store);
    if (!repo)
        return EXIT_FAIL;
    struct backup *b = NULL;
    char err[512];
    if (restore_find_backup(repo, argv[first], disk, CLI_LOCK_TIMEOUT, &b, err, sizeof(err)) < 0) {
        fprintf(stderr, "vmexport restore: %s\n", err);
        repo_close(repo);
        return EXIT_FAIL;
    }
    int ret = EXIT_OK;
    if (definition_out) {
        if (backup_definition_write(b, definition_out, force, err, sizeof(err)) < 0) {
            fprintf(stderr, "vmexport restore: %s\n", err);
            backup_free(b);
            repo_close(repo);
            return EXIT_FAIL;
        }
        if (json) {
            bool kfirst = true;
            putchar('{');
            jw_kv_str(stdout, &kfirst, "type", "definition");
            jw_kv_str(stdout, &kfirst, "backup", b->id);
            jw_kv_str(stdout, &kfirst, "format", b->definition_format);
            jw_kv_str(stdout, &kfirst, "to", definition_out);
            puts("}");
        } else {
            printf("wrote the VM definition (%s) of backup %s to %s\n",
                   b->definition_format ? b->definition_format : "?", b->id, definition_out);
        }
    }
    if (upload_vm) {
        ret = upload_backup("restore", repo, b, disk, upload_vm, jobs, json);
    } else if (to) {
        struct progress_sink bar = {.what = "restore", .json = json};
        struct restore_options o = {
            .repo = repo,
            .backup = b,
            .disk = disk,
            .to = to,
            .force = force,
            .jobs = jobs,
            .handle_signals = true,
            .progress = progress_sink_callbacks(&bar),
        };
        struct restore_result res;
        ret = restore_run(&o, &res) < 0 ? EXIT_FAIL : EXIT_OK;
        if (ret != EXIT_OK) {
            fprintf(stderr, "vmexport restore: %s\n", res.err);
            if (res.started)
                fprintf(stderr, "vmexport restore: nothing was written to %s\n", to);
        }
        for (size_t i = 0; i < res.disks.len; i++)
            print_restored(b, &res.disks.ptr[i], json);
        if (ret == EXIT_OK && define)
            ret = define_vm(b, &res, uri ? uri : DEFINE_URI_DEFAULT, json);
        restore_result_free(&res);
    }
    backup_free(b);
    repo_close(repo);
    return ret;
}

const struct cli_command cmd_restore = {
    .name = "restore",
    .summary = "restore a backup's disks to files",
    .run = restore_cmd,
    .usage = "Usage: vmexport restore --repo URL BACKUP [--disk NAME] --to FILE|DIR [--force]\n"
             "                        [--jobs N] [--json]\n"
             "                        [--define [--uri URI]]\n"
             "       vmexport restore --repo URL BACKUP [--disk NAME] --upload VM [--jobs N]\n"
             "       vmexport restore --repo URL BACKUP --definition-out FILE [--force]\n"
             "\n"
             "Write the disks of BACKUP as sparse raw files.  With one disk (or --disk), --to\n"
             "names the file (or an existing directory to put it in); otherwise --to is a\n"
             "directory that receives one file per disk, named after the disk.  Every chunk's\n"
             "checksum (and, when encrypted, authentication tag) is checked; on any error nothing\n"
             "is left at the destination: every disk is first written under a temporary name\n"
             "next to its destination (DEST.vxrestore.tmp.XXXXXX, mode 0600), and only when all\n"
             "are complete are they renamed into place; with --force an existing file is\n"
             "swapped out and removed only then, so a failure leaves it as it was.\n"
             "With --define, the VM definition stored with the backup (a libvirt domain) is then\n"
             "defined on the libvirt at URI with its disks on the restored files (not started):\n"
             "under its own name and UUID when the host has neither, else as NAME-restored-N\n"
             "with a new UUID and new MAC addresses; writable disks that were not restored are\n"
             "left out of it, never pointed at the original's files.\n"
             "What is written leaves the page cache once it is on the disk: restoring a big disk\n"
             "does not push the host's cached data out.\n"
             "\n"
             "With --upload, the disks are written back to a host through vmexportd's upload API\n"
             "into VM (created when missing; existing disks are never overwritten): data chunks\n"
             "as ranged PUTs from N connections, zero ranges as PATCH zero requests, then the\n"
             "transfer is finalized; on failure it is cancelled and no disk appears.\n"
             "\n"
             "With --definition-out (alone or with the above), the VM's definition stored with\n"
             "the backup (libvirt domain XML, QEMU's devices as JSON, OVM's vm.cfg) is written\n"
             "to FILE (mode 0600); it fails when the backup has none.\n",
    .common = CLI_REPO | CLI_PASSPHRASE | CLI_JSON | CLI_JOBS | CLI_CONNECTION,
    .options = restore_options,
    .json_short = 'J',
    .jobs_short = 'j',
    .jobs_max = RESTORE_MAX_JOBS,
    .json_help = "progress and results as JSON lines",
    .jobs_help = "readers with --to (default 4), connections with --upload (2)",
    .epilog = "Exit status: 0 success, 1 failure (damaged or missing data, existing file), 2 bad "
              "usage.\n",
};
