/* vmexport prune: remove old backups by a retention policy (applied by repo_prune() in
 * repo/prune.c); this file parses the policy and reports what was removed. */
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

static const struct cli_option prune_options[] = {
    {"keep-last", 'l', "N", "keep the newest N backups"},
    {"keep-daily", 'd', "N", "keep the newest backup of each of the newest N days"},
    {"keep-weekly", 'w', "N", "... of each of the newest N ISO weeks"},
    {"keep-monthly", 'm', "N", "... of each of the newest N calendar months"},
    {"dry-run", 'n', NULL, "show what would be removed"},
    {NULL, 0, NULL, NULL},
};

static int prune_cmd(int argc, char **argv)
{
    struct prune_policy p = {0};
    bool dry = false, any = false;
    struct cli_args a = {0};
    int c;
    while ((c = cli_next(&a, &cmd_prune, argc, argv)) > 0) {
        unsigned *dst = c == 'l'   ? &p.keep_last
                        : c == 'd' ? &p.keep_daily
                        : c == 'w' ? &p.keep_weekly
                        : c == 'm' ? &p.keep_monthly
                                   : NULL;
        if (c == 'n')
            dry = true;
        if (dst) {
            char *end;
            unsigned long v = strtoul(a.arg, &end, 10);
            if (end == a.arg || *end || a.arg[0] == '-' || v > MAX_KEEP)
                return cli_usage_error(&cmd_prune, "keep counts are whole numbers");
            *dst = (unsigned)v;
            any = true;
        }
    }
    if (c == CLI_EXIT)
        return a.status;
    bool json = a.json;
    if (argc - a.first > 1)
        return cli_usage_error(&cmd_prune, "expected at most one VM");
    if (!any || (!p.keep_last && !p.keep_daily && !p.keep_weekly && !p.keep_monthly))
        return cli_usage_error(&cmd_prune, "give at least one non-zero --keep-* option "
                                           "(prune never removes every backup)");
    const char *only_vm = a.first < argc ? argv[a.first] : NULL;
    struct repo *repo = cli_open_repo("prune", a.repo, a.passphrase_file, &a.store);
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
    .usage = "Usage: vmexport prune --repo URL [VM] [--keep-last N] [--keep-daily N]\n"
             "                      [--keep-weekly N] [--keep-monthly N] [--dry-run] [--json]\n"
             "\n"
             "For each VM (or only VM), keep the backups the policy selects and remove the\n"
             "others.  --keep-last keeps the newest N; --keep-daily the newest backup of each\n"
             "of the newest N days that have one; --keep-weekly and --keep-monthly likewise per\n"
             "ISO week and calendar month (UTC).  A backup kept by any rule is kept.  Every\n"
             "backup is self-contained, so any of them can go.  Chunks are freed by\n"
             "'vmexport gc'.\n",
    .common = CLI_REPO | CLI_PASSPHRASE | CLI_JSON,
    .options = prune_options,
    .json_short = 'J',
    .json_help = "one JSON line per backup removed",
    .epilog = "At least one --keep-* option, non-zero, is required.\n"
              "\n"
              "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};
