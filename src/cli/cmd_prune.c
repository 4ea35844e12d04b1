/* vmexport prune: remove old backups by a retention policy (applied by repo_prune() in
 * repo/prune.c); this file parses the policy and reports what was removed. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/repo_open.h"
#include "core/jsonw.h"
#include "repo/repo.h"

/* A keep count larger than this is a typo: no VM has that many backups. */
#define MAX_KEEP 100000

static void print_removed(const struct backup *b, bool dry, bool json)
{
    if (!json) {
        printf("%s %s  %s\n", dry ? "would remove" : "removed", b->id, b->vm_id);
        return;
    }
    bool first = true;
    putchar('{');
    jw_kv_str(stdout, &first, "type", "remove");
    jw_kv_str(stdout, &first, "backup", b->id);
    jw_kv_str(stdout, &first, "vm", b->vm_id);
    jw_key(stdout, &first, "time");
    printf("%" PRId64, b->time);
    jw_kv_bool(stdout, &first, "dry_run", dry);
    puts("}");
}

static int prune_cmd(int argc, char **argv)
{
    static const struct option opts[] = {
        {"repo", required_argument, NULL, 'r'},
        {"passphrase-file", required_argument, NULL, 'P'},
        {"keep-last", required_argument, NULL, 'l'},
        {"keep-daily", required_argument, NULL, 'd'},
        {"keep-weekly", required_argument, NULL, 'w'},
        {"keep-monthly", required_argument, NULL, 'm'},
        {"dry-run", no_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *repo_arg = NULL, *pfile = NULL;
    struct prune_policy p = {0};
    bool dry = false, json = false, any = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:P:l:d:w:m:nJh", opts, NULL)) != -1) {
        unsigned *dst = NULL;
        switch (c) {
        case 'r':
            repo_arg = optarg;
            break;
        case 'P':
            pfile = optarg;
            break;
        case 'l':
            dst = &p.keep_last;
            break;
        case 'd':
            dst = &p.keep_daily;
            break;
        case 'w':
            dst = &p.keep_weekly;
            break;
        case 'm':
            dst = &p.keep_monthly;
            break;
        case 'n':
            dry = true;
            break;
        case 'J':
            json = true;
            break;
        case 'h':
            return cli_help(&cmd_prune);
        default:
            return cli_usage_error(&cmd_prune, "unknown option");
        }
        if (dst) {
            char *end;
            unsigned long v = strtoul(optarg, &end, 10);
            if (end == optarg || *end || optarg[0] == '-' || v > MAX_KEEP)
                return cli_usage_error(&cmd_prune, "keep counts are whole numbers");
            *dst = (unsigned)v;
            any = true;
        }
    }
    if (argc - optind > 1)
        return cli_usage_error(&cmd_prune, "expected at most one VM");
    if (!any || (!p.keep_last && !p.keep_daily && !p.keep_weekly && !p.keep_monthly))
        return cli_usage_error(&cmd_prune, "give at least one non-zero --keep-* option "
                                           "(prune never removes every backup)");
    const char *only_vm = optind < argc ? argv[optind] : NULL;
    struct repo *repo = cli_open_repo("prune", repo_arg, pfile);
    if (!repo)
        return EXIT_FAIL;
    /* The repository applies the policy per VM under its exclusive lock; we report. */
    backup_list removed = VECTOR_INIT, left = VECTOR_INIT;
    char err[512] = "";
    int r = repo_prune(repo, only_vm, &p, CLI_LOCK_TIMEOUT, dry, &removed, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "vmexport prune: %s: %s\n", repo_path(repo), err[0] ? err : strerror(-r));
        backup_list_free(&removed);
        repo_close(repo);
        return EXIT_FAIL;
    }
    for (size_t i = 0; i < removed.len; i++)
        print_removed(removed.ptr[i], dry, json);
    size_t kept = 0;
    if (repo_backup_list(repo, only_vm, &left) == 0)
        kept = left.len - (dry ? removed.len : 0);
    if (!json)
        printf("%zu kept, %zu %s%s\n", kept, removed.len, dry ? "would be removed" : "removed",
               dry || !removed.len ? "" : " (run 'vmexport gc' to free their chunks)");
    backup_list_free(&left);
    backup_list_free(&removed);
    repo_close(repo);
    return EXIT_OK;
}

const struct cli_command cmd_prune = {
    .name = "prune",
    .summary = "remove old backups by a retention policy",
    .run = prune_cmd,
    .usage = "Usage: vmexport prune --repo PATH [VM] [--keep-last N] [--keep-daily N]\n"
             "                      [--keep-weekly N] [--keep-monthly N] [--dry-run] [--json]\n"
             "\n"
             "For each VM (or only VM), keep the backups the policy selects and remove the\n"
             "others.  --keep-last keeps the newest N; --keep-daily the newest backup of each\n"
             "of the newest N days that have one; --keep-weekly and --keep-monthly likewise per\n"
             "ISO week and calendar month (UTC).  A backup kept by any rule is kept.  Every\n"
             "backup is self-contained, so any of them can go.  Chunks are freed by\n"
             "'vmexport gc'.\n"
             "\n"
             "Options:\n" REPO_OPTIONS_HELP
             "  --keep-last/daily/weekly/monthly N   the policy (at least one, non-zero)\n"
             "  -n, --dry-run           show what would be removed\n"
             "  --json                  one JSON line per backup removed\n"
             "\n"
             "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};
