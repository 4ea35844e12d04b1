/* vmexport gc: free the chunks no backup uses (repo_gc() in repo/gc.c does the work); this
 * file parses the options and prints the counts. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/repo_open.h"
#include "core/jsonw.h"
#include "repo/repo.h"

static void print_stats(const struct gc_stats *st, bool dry, bool json)
{
    if (json) {
        bool first = true;
        putchar('{');
        jw_kv_str(stdout, &first, "type", "summary");
        jw_kv_bool(stdout, &first, "dry_run", dry);
        jw_kv_u64(stdout, &first, "chunks_total", st->chunks_total);
        jw_kv_u64(stdout, &first, "chunks_deleted", st->chunks_deleted);
        jw_kv_u64(stdout, &first, "bytes_freed", st->bytes_freed);
        jw_kv_u64(stdout, &first, "temp_files_removed", st->temp_files_removed);
        jw_kv_u64(stdout, &first, "partial_backups_removed", st->partial_backups_removed);
        puts("}");
        return;
    }
    char b[32];
    printf("%s%" PRIu64 " of %" PRIu64 " chunks unreferenced, %s %s; %" PRIu64
           " temporary files and %" PRIu64 " partial backups %s\n",
           dry ? "(dry run) " : "", st->chunks_deleted, st->chunks_total,
           cli_bytes(st->bytes_freed, b, sizeof(b)), dry ? "would be freed" : "freed",
           st->temp_files_removed, st->partial_backups_removed, dry ? "found" : "removed");
}

static const struct cli_option gc_options[] = {
    {"dry-run", 'n', NULL, "count only"},
    {NULL, 0, NULL, NULL},
};

static int gc_cmd(int argc, char **argv)
{
    bool dry = false;
    struct cli_args a = {0};
    int c;
    while ((c = cli_next(&a, &cmd_gc, argc, argv)) > 0)
        if (c == 'n')
            dry = true;
    if (c == CLI_EXIT)
        return a.status;
    bool json = a.json;
    if (argc != a.first)
        return cli_usage_error(&cmd_gc, "unexpected argument");
    struct repo *repo = cli_open_repo("gc", a.repo, a.passphrase_file, &a.store);
    if (!repo)
        return EXIT_FAIL;
    struct gc_stats st = {0};
    char err[512] = "";
    int r = repo_gc(repo, dry, &st, err, sizeof(err));
    repo_close(repo);
    if (r < 0) {
        fprintf(stderr, "vmexport gc: %s\n", err[0] ? err : strerror(-r));
        return EXIT_FAIL;
    }
    print_stats(&st, dry, json);
    return EXIT_OK;
}

const struct cli_command cmd_gc = {
    .name = "gc",
    .summary = "free chunks no backup uses",
    .run = gc_cmd,
    .usage = "Usage: vmexport gc --repo URL [--dry-run] [--json]\n"
             "\n"
             "Delete the chunks that no backup references (after prune), the temporary files\n"
             "and the partial backups that interrupted runs left.  Waits for running backups\n"
             "and holds the repository exclusively while it works.\n",
    .common = CLI_REPO | CLI_PASSPHRASE | CLI_JSON,
    .options = gc_options,
    .json_short = 'J',
    .json_help = "a JSON summary",
    .epilog = "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};
