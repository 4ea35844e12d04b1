/* vmexport backup: parse the options, run the backup engine (backup/backup.h), print its
 * progress and its summary (text, or one JSON line through core/jsonw.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backup/backup.h"
#include "cli/cli.h"
#include "cli/options.h"
#include "cli/progress.h"
#include "cli/repo_open.h"
#include "client/client.h"
#include "core/cleanup.h"
#include "core/jsonw.h"
#include "repo/repo.h"

/* Parallel connections / fetch threads unless --jobs says otherwise. */
#define DEFAULT_JOBS 4
/* --keep-snapshots: at most this many. */
#define MAX_KEEP_SNAPSHOTS 1000

/* The progress display, started once the engine knows how much it will read. */
struct backup_ui {
    struct progress prog;
    bool json, started;
};

static void on_start(void *opaque, uint64_t total)
{
    struct backup_ui *ui = opaque;
    progress_init(&ui->prog, "backup", total, ui->json);
    ui->started = true;
}

static void on_progress(void *opaque, uint64_t bytes)
{
    struct backup_ui *ui = opaque;
    progress_add(&ui->prog, bytes);
}

static void on_warn(void *opaque, const char *msg)
{
    (void)opaque;
    fprintf(stderr, "vmexport backup: warning: %s\n", msg);
}

/* The summary line of --json. */
static void print_json_summary(const char *vm, const struct backup_result *res)
{
    bool first = true;
    fputc('{', stdout);
    jw_kv_str(stdout, &first, "type", "summary");
    jw_kv_str(stdout, &first, "backup", res->backup_id);
    jw_kv_str(stdout, &first, "vm", vm);
    jw_kv_str(stdout, &first, "snapshot", res->snapshot_id);
    jw_kv_bool(stdout, &first, "incremental", res->incremental);
    jw_kv_u64(stdout, &first, "bytes_read", res->bytes_read);
    jw_kv_u64(stdout, &first, "bytes_transferred", res->bytes_transferred);
    jw_kv_u64(stdout, &first, "bytes_written", res->bytes_written);
    jw_kv_u64(stdout, &first, "chunks_new", res->chunks_new);
    jw_kv_u64(stdout, &first, "chunks_reused", res->chunks_reused);
    jw_kv_u64(stdout, &first, "chunks_fetched", res->chunks_fetched);
    jw_kv_str(stdout, &first, "transport", res->transport);
    jw_kv_str(stdout, &first, "definition_format", res->definition_format);
    jw_key(stdout, &first, "disks");
    fputc('[', stdout);
    for (size_t i = 0; i < res->ndisks; i++) {
        const struct backup_disk_result *d = &res->disks[i];
        bool dfirst = true;
        fputs(i ? ",{" : "{", stdout);
        jw_kv_str(stdout, &dfirst, "name", d->name);
        jw_kv_bool(stdout, &dfirst, "incremental", d->incremental);
        jw_kv_str(stdout, &dfirst, "full_reason", d->incremental ? NULL : d->full_reason);
        jw_kv_str(stdout, &dfirst, "transport", d->transport);
        fputc('}', stdout);
    }
    fputc(']', stdout);
    jw_key(stdout, &first, "seconds");
    printf("%.3f}\n", res->seconds);
}

static void print_text_summary(const char *vm, const struct backup_result *res)
{
    char b1[32], b2[32];
    printf("backup %s of VM %s (snapshot %s, %s, %s): read %s, wrote %s, %" PRIu64
           " new chunks, %" PRIu64 " reused, %.1f s\n",
           res->backup_id, vm, res->snapshot_id, res->incremental ? "incremental" : "full",
           res->transport, cli_bytes(res->bytes_read, b1, sizeof(b1)),
           cli_bytes(res->bytes_written, b2, sizeof(b2)), res->chunks_new, res->chunks_reused,
           res->seconds);
    for (size_t i = 0; i < res->ndisks; i++) {
        const struct backup_disk_result *d = &res->disks[i];
        if (d->incremental)
            printf("  disk %s: incremental (%s)\n", d->name, d->transport);
        else
            printf("  disk %s: full (%s): %s\n", d->name, d->transport,
                   d->full_reason ? d->full_reason : "no base");
    }
    if (res->definition_format)
        printf("  VM definition stored (%s)\n", res->definition_format);
}

static const struct cli_option backup_options[] = {
    {"full", 'f', NULL, "read every allocated chunk even if a base exists"},
    {"keep-snapshots", 'k', "N", "server snapshots to keep as bases (default 1)"},
    {"disk", 'd', "NAME", "back up only this disk (repeatable)"},
    {"exclude-disk", 'x', "NAME", "leave this disk out (repeatable)"},
    {"transport", 't', "MODE",
     "how the disks' bytes are read: https (from the server),\n"
     "local (the snapshot files themselves, when this runs on\n"
     "the server's host: no TLS, no copies through the daemon,\n"
     "no page cache (O_DIRECT) where the filesystem allows;\n"
     "fails when a disk's file is not the server's), nbd (the\n"
     "NBD export of a live VM's snapshot, on the server's host;\n"
     "fails when the server names none or its socket is not\n"
     "here), rbd (the RBD snapshot of an rbd provider's disk,\n"
     "read from the Ceph cluster with this host's credentials:\n"
     "CEPH_CONF, CEPH_ID), or auto (the default, per disk: nbd\n"
     "where possible, else local, else https).  The server still\n"
     "takes the\n"
     "snapshot and says what changed."},
    {NULL, 0, NULL, NULL},
};

static int backup_cmd(int argc, char **argv)
{
    struct backup_options o = {.keep_snapshots = 1};
    struct cli_args a = {0};
    /* --disk and --exclude-disk names: at most one per argument */
    CLEANUP_FREE const char **disks = calloc((size_t)argc + 1, sizeof(*disks));
    CLEANUP_FREE const char **excluded = calloc((size_t)argc + 1, sizeof(*excluded));
    if (!disks || !excluded) {
        fprintf(stderr, "vmexport backup: out of memory\n");
        return EXIT_FAIL;
    }
    o.disks = disks;
    o.exclude_disks = excluded;
    int c;
    while ((c = cli_next(&a, &cmd_backup, argc, argv)) > 0) {
        char *end;
        unsigned long v;
        switch (c) {
        case 'f':
            o.full = true;
            break;
        case 'k':
            v = strtoul(a.arg, &end, 10);
            if (end == a.arg || *end || v > MAX_KEEP_SNAPSHOTS)
                return cli_usage_error(&cmd_backup, "--keep-snapshots takes 0 to %d",
                                       MAX_KEEP_SNAPSHOTS);
            o.keep_snapshots = (unsigned)v;
            break;
        case 'd':
            disks[o.ndisks++] = a.arg;
            break;
        case 'x':
            excluded[o.nexclude++] = a.arg;
            break;
        case 't':
            if (backup_transport_parse(a.arg, &o.transport) < 0)
                return cli_usage_error(&cmd_backup,
                                       "--transport takes auto, https, local, nbd or rbd");
            break;
        default:
            break;
        }
    }
    if (c == CLI_EXIT)
        return a.status;
    o.jobs = a.jobs ? a.jobs : DEFAULT_JOBS;
    const bool json = a.json;
    if (argc - a.first != 1)
        return cli_usage_error(&cmd_backup, "expected one VM");
    o.vm = argv[a.first];
    /* VMEXPORT_NOW: the backup's time, for tests of retention. */
    const char *now = getenv("VMEXPORT_NOW");
    o.now = now ? strtoll(now, NULL, 10) : (int64_t)time(NULL);

    if (!(o.repo = cli_open_repo("backup", a.repo, a.passphrase_file, &a.store)))
        return EXIT_FAIL;
    if (!(o.client = cli_client_connect("backup"))) {
        repo_close(o.repo);
        return EXIT_FAIL;
    }
    struct backup_ui ui = {.json = json};
    o.server = cli_globals.server;
    o.start = on_start;
    o.progress = on_progress;
    o.warn = on_warn;
    o.opaque = &ui;
    struct backup_result res;
    int r = backup_run(&o, &res);
    if (ui.started)
        progress_finish(&ui.prog);
    if (r < 0)
        fprintf(stderr, "vmexport backup: %s\n", res.error[0] ? res.error : strerror(-r));
    else if (json)
        print_json_summary(o.vm, &res);
    else
        print_text_summary(o.vm, &res);
    backup_result_free(&res);
    client_free(o.client);
    repo_close(o.repo);
    return r < 0 ? EXIT_FAIL : EXIT_OK;
}

const struct cli_command cmd_backup = {
    .name = "backup",
    .summary = "back up a VM into a repository (incremental when possible)",
    .run = backup_cmd,
    .usage = "Usage: vmexport backup VM --repo URL [--full] [--jobs N] [--keep-snapshots N]\n"
             "                      [--disk NAME]... [--exclude-disk NAME]...\n"
             "                      [--transport auto|https|local|nbd|rbd] [--json]\n"
             "\n"
             "Take a snapshot of VM on the server and store its disks in the repository.\n"
             "When the snapshot of the VM's previous backup still exists on the server, only the\n"
             "areas that changed since (new data, block-precise from the server) are read, laid\n"
             "over the previous backup's chunks; discarded ranges become zeros without reading;\n"
             "every other chunk is taken from the previous backup.  Otherwise\n"
             "the backup is full, still skipping holes.  Every backup is a synthetic full: it\n"
             "restores on its own and can be pruned independently.  Chunks already in the\n"
             "repository are not stored again, so an interrupted backup's work (up to its last\n"
             "flush: every 512 MiB written) is reused by the next run; an interrupted backup\n"
             "itself never becomes visible.\n"
             "\n"
             "Only the disks named with --disk are backed up (default: every disk the server can\n"
             "snapshot; CD-ROMs and read-only disks are not), minus those named with\n"
             "--exclude-disk; a name the VM does not have is an error.  When the server can no\n"
             "longer tell a disk's changes (a live VM's checkpoint lost after a crash, removed,\n"
             "or of another repository's chain), that disk is backed up in full and the summary\n"
             "says why; the other disks stay incremental.  The VM's definition (libvirt XML,\n"
             "QEMU's devices, OVM's vm.cfg), when the server keeps one, is stored with the backup\n"
             "(vmexport restore BACKUP --definition-out FILE).\n"
             "\n"
             "The new snapshot stays on the server as the base of the next backup (of a live VM\n"
             "only its checkpoint: its data is released once the backup is committed); older\n"
             "snapshots this repository used as bases are deleted, keeping the newest N\n"
             "(--keep-snapshots, default 1).  Snapshots carry the label\n"
             "vmexport-backup:<repository ID> and the chain vmexport-<repository ID>, so that\n"
             "those of backups that were killed before they completed are deleted by the next\n"
             "backup of the VM into the same repository; other snapshots are never touched.\n"
             "\n",
    .common = CLI_REPO | CLI_PASSPHRASE | CLI_CONNECTION | CLI_JSON | CLI_JOBS,
    .options = backup_options,
    .json_short = 'J',
    .jobs_short = 'j',
    .jobs_max = BACKUP_MAX_JOBS,
    .json_help = "progress lines and a summary as JSON: bytes_read (of\n"
                 "the disks), bytes_transferred (over https: blocks of\n"
                 "zeros are not sent), bytes_written, chunks_new,\n"
                 "chunks_reused, chunks_fetched, transport (local,\n"
                 "https, nbd, rbd, or mixed across disks), definition_format\n"
                 "(null: no definition stored), disks (name, incremental,\n"
                 "full_reason, transport), seconds",
    .jobs_help = "parallel connections (default 4)",
    .epilog = "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};
