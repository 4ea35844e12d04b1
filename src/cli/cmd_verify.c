/* vmexport verify: check that backups can be restored (the engine in backup/verify.c); this
 * file parses the options and prints what the engine finds. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup/verify.h"
#include "cli/cli.h"
#include "cli/repo_open.h"
#include "core/jsonw.h"

static const char *const finding_type[] = {
    [VERIFY_BACKUP_OK] = "ok",
    [VERIFY_METADATA_DAMAGED] = "damaged_metadata",
    [VERIFY_MANIFEST_DAMAGED] = "damaged_manifest",
    [VERIFY_CHUNK_DAMAGED] = "damaged_chunk",
    [VERIFY_CHUNK_MISSING] = "missing_chunk",
};

static void print_json(const struct verify_finding *f)
{
    bool first = true;
    putchar('{');
    jw_kv_str(stdout, &first, "type", finding_type[f->kind]);
    jw_kv_str(stdout, &first, "backup", f->backup);
    if (f->disk)
        jw_kv_str(stdout, &first, "disk", f->disk);
    if (f->kind == VERIFY_CHUNK_DAMAGED || f->kind == VERIFY_CHUNK_MISSING) {
        char hex[2 * HASH_SIZE + 1];
        chunk_id_to_hex(&f->id, hex);
        jw_kv_u64(stdout, &first, "offset", f->offset);
        jw_kv_str(stdout, &first, "chunk", hex);
    }
    puts("}");
}

static void print_text(const struct verify_finding *f)
{
    char hex[2 * HASH_SIZE + 1];
    switch (f->kind) {
    case VERIFY_BACKUP_OK:
        printf("backup %s: ok\n", f->backup);
        break;
    case VERIFY_METADATA_DAMAGED:
        printf("backup %s: DAMAGED: its metadata (backup.json) cannot be read\n", f->backup);
        break;
    case VERIFY_MANIFEST_DAMAGED:
        printf("backup %s: disk %s: DAMAGED manifest (%s)\n", f->backup, f->disk,
               f->error == -EBADMSG ? "fails its checks" : strerror(-f->error));
        break;
    case VERIFY_CHUNK_DAMAGED:
    case VERIFY_CHUNK_MISSING:
        chunk_id_to_hex(&f->id, hex);
        printf("backup %s: disk %s: offset %" PRIu64 ": chunk %s %s\n", f->backup, f->disk,
               f->offset, hex, f->kind == VERIFY_CHUNK_MISSING ? "MISSING" : "DAMAGED");
        break;
    }
}

/* With --json, one line per damaged thing (a backup that passed is implied by the summary). */
static void on_finding(void *opaque, const struct verify_finding *f)
{
    bool json = *(const bool *)opaque;
    if (!json)
        print_text(f);
    else if (f->kind != VERIFY_BACKUP_OK)
        print_json(f);
}

static const struct cli_option verify_options[] = {
    {"sample", 's', "PCT", "check only this percentage of the chunks"},
    {NULL, 0, NULL, NULL},
};

static int verify_cmd(int argc, char **argv)
{
    double sample = 100;
    struct cli_args a = {0};
    int c;
    while ((c = cli_next(&a, &cmd_verify, argc, argv)) > 0) {
        if (c == 's') {
            char *end;
            sample = strtod(a.arg, &end);
            if (end == a.arg || (*end && strcmp(end, "%")) || sample <= 0 || sample > 100)
                return cli_usage_error(&cmd_verify, "--sample takes a percentage in (0, 100]");
        }
    }
    if (c == CLI_EXIT)
        return a.status;
    bool json = a.json;
    if (argc - a.first > 1)
        return cli_usage_error(&cmd_verify, "expected at most one BACKUP");
    struct repo *repo = cli_open_repo("verify", a.repo, a.passphrase_file, &a.store);
    if (!repo)
        return EXIT_FAIL;
    struct verify_options o = {
        .repo = repo,
        .backup_id = a.first < argc ? argv[a.first] : NULL,
        .sample = sample,
        .lock_timeout = CLI_LOCK_TIMEOUT,
        .report = on_finding,
        .opaque = &json,
    };
    struct verify_result res;
    int r = verify_run(&o, &res);
    repo_close(repo);
    if (r < 0) {
        fprintf(stderr, "vmexport verify: %s\n", res.err);
        return EXIT_FAIL;
    }
    if (json) {
        bool first = true;
        putchar('{');
        jw_kv_str(stdout, &first, "type", "summary");
        jw_kv_u64(stdout, &first, "backups", res.backups);
        jw_kv_u64(stdout, &first, "damaged_backups", res.damaged_backups);
        jw_kv_u64(stdout, &first, "chunks_checked", res.chunks_checked);
        jw_kv_u64(stdout, &first, "chunks_damaged", res.chunks_damaged);
        puts("}");
    } else {
        printf("%" PRIu64 " backups checked, %" PRIu64 " damaged; %" PRIu64 " chunks read, %" PRIu64
               " bad\n",
               res.backups, res.damaged_backups, res.chunks_checked, res.chunks_damaged);
    }
    return res.damaged_backups ? EXIT_FAIL : EXIT_OK;
}

const struct cli_command cmd_verify = {
    .name = "verify",
    .summary = "check that backups can be restored",
    .run = verify_cmd,
    .usage = "Usage: vmexport verify --repo URL [BACKUP] [--sample PCT] [--json]\n"
             "\n"
             "Read every manifest and every chunk the backups (or BACKUP) reference, decrypt,\n"
             "decompress and check each against its ID.  Damaged or missing chunks are named\n"
             "with the backups, disks and offsets that need them.  Each chunk is read once\n"
             "however many backups share it.  --sample checks a deterministic PCT% of the\n"
             "chunks (by ID), for quick periodic checks.\n",
    .common = CLI_REPO | CLI_PASSPHRASE | CLI_JSON,
    .options = verify_options,
    .json_short = 'J',
    .json_help = "JSON lines: one per damaged or missing thing (type\n"
                 "damaged_metadata, damaged_manifest, damaged_chunk or\n"
                 "missing_chunk), then a summary",
    .epilog = "Exit status: 0 all good, 1 damage found or failure, 2 bad usage.\n",
};
