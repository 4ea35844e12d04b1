/* vmexport backups: list the backups of a repository, as a table or a JSON array, or the
 * chunks one backup's disks are made of (--chunks). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/repo_open.h"
#include "core/jsonw.h"
#include "repo/repo.h"

static void format_time(int64_t t, char *buf, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, len, "%Y-%m-%d %H:%M:%SZ", &tm);
}

/* One backup as a JSON object with every field. */
static void print_json(FILE *f, const struct backup *b)
{
    bool first = true;
    fputc('{', f);
    jw_kv_str(f, &first, "id", b->id);
    jw_kv_str(f, &first, "vm", b->vm_id);
    jw_kv_str(f, &first, "snapshot", b->snapshot_id); /* null when unknown */
    jw_key(f, &first, "time");
    fprintf(f, "%lld", (long long)b->time);
    jw_key(f, &first, "disks");
    fputc('[', f);
    for (size_t k = 0; k < b->disks.len; k++) {
        const struct backup_disk *d = &b->disks.ptr[k];
        bool dfirst = true;
        fputs(k ? ",{" : "{", f);
        jw_kv_str(f, &dfirst, "name", d->name);
        jw_kv_u64(f, &dfirst, "size", d->size);
        jw_kv_str(f, &dfirst, "change_id", d->change_id);
        fputc('}', f);
    }
    fputc(']', f);
    jw_kv_str(f, &first, "parent", b->parent_id); /* null for a full backup */
    /* the format of the VM definition stored with it; null: none */
    jw_kv_str(f, &first, "definition_format", b->definition ? b->definition_format : NULL);
    jw_kv_u64(f, &first, "bytes_read", b->bytes_read);
    jw_kv_u64(f, &first, "bytes_written", b->bytes_written);
    jw_kv_u64(f, &first, "chunks_new", b->chunks_new);
    jw_kv_u64(f, &first, "chunks_reused", b->chunks_reused);
    jw_key(f, &first, "seconds");
    fprintf(f, "%.3f", b->seconds);
    fputc('}', f);
}

static void print_table(const backup_list *l)
{
    printf("%-24s %-20s %-20s %5s %10s  %s\n", "ID", "VM", "TIME", "DISKS", "SIZE", "KIND");
    for (size_t i = 0; i < l->len; i++) {
        const struct backup *b = l->ptr[i];
        uint64_t size = 0;
        for (size_t k = 0; k < b->disks.len; k++)
            size += b->disks.ptr[k].size;
        char t[32], sz[32];
        format_time(b->time, t, sizeof(t));
        printf("%-24s %-20s %-20s %5zu %10s  %s\n", b->id, b->vm_id, t, b->disks.len,
               cli_bytes(size, sz, sizeof(sz)), b->parent_id ? "incremental" : "full");
    }
}

/* The stored chunks of every disk of backup id, one line each: disk, offset, chunk ID (hex);
 * chunks of zeros have none.  Streams the manifests: one disk's entries in memory at a time. */
static int print_chunks(struct repo *repo, const char *id)
{
    struct backup *b = NULL;
    int r = repo_backup_get(repo, id, &b);
    if (r < 0) {
        fprintf(stderr, "vmexport backups: backup %s: %s\n", id,
                r == -EBADMSG ? "damaged" : strerror(-r));
        return EXIT_FAIL;
    }
    for (size_t k = 0; k < b->disks.len; k++) {
        struct manifest m;
        const char *disk = b->disks.ptr[k].name;
        if ((r = repo_manifest_read(repo, b, disk, &m)) < 0) {
            fprintf(stderr, "vmexport backups: backup %s: disk %s: manifest %s\n", id, disk,
                    r == -EBADMSG ? "is damaged" : strerror(-r));
            break;
        }
        for (size_t i = 0; i < m.n_entries; i++) {
            char hex[2 * HASH_SIZE + 1];
            chunk_id_to_hex(&m.e[i].id, hex);
            printf("%s %" PRIu64 " %s\n", disk, m.e[i].idx * m.chunk_size, hex);
        }
        manifest_free(&m);
    }
    backup_free(b);
    return r < 0 ? EXIT_FAIL : EXIT_OK;
}

enum { OPT_CHUNKS = CLI_LONG_ONLY };

static const struct cli_option backups_options[] = {
    {"chunks", OPT_CHUNKS, "BACKUP", "list the chunks of BACKUP's disks: disk, offset, chunk ID"},
    {NULL, 0, NULL, NULL},
};

static int backups_cmd(int argc, char **argv)
{
    struct cli_args a = {0};
    const char *chunks = NULL;
    int c;
    while ((c = cli_next(&a, &cmd_backups, argc, argv)) > 0)
        if (c == OPT_CHUNKS)
            chunks = a.arg;
    if (c == CLI_EXIT)
        return a.status;
    bool json = a.json;
    if (argc - a.first > 1 || (chunks && argc != a.first))
        return cli_usage_error(&cmd_backups,
                               chunks ? "--chunks takes no VM" : "expected at most one VM");
    const char *vm = a.first < argc ? argv[a.first] : NULL;
    struct repo *repo = cli_open_repo("backups", a.repo, a.passphrase_file, &a.store);
    if (!repo)
        return EXIT_FAIL;
    if (chunks) {
        int st = print_chunks(repo, chunks);
        repo_close(repo);
        return st;
    }
    backup_list l = VECTOR_INIT;
    int r = repo_backup_list(repo, vm, &l);
    if (r < 0) {
        fprintf(stderr, "vmexport backups: %s: %s\n", repo_path(repo), strerror(-r));
        repo_close(repo);
        return EXIT_FAIL;
    }
    if (json) {
        putchar('[');
        for (size_t i = 0; i < l.len; i++) {
            if (i)
                putchar(',');
            print_json(stdout, l.ptr[i]);
        }
        puts("]");
    } else {
        print_table(&l);
    }
    backup_list_free(&l);
    repo_close(repo);
    return EXIT_OK;
}

const struct cli_command cmd_backups = {
    .name = "backups",
    .summary = "list the backups in a repository",
    .run = backups_cmd,
    .usage = "Usage: vmexport backups --repo URL [VM] [--json]\n"
             "       vmexport backups --repo URL --chunks BACKUP\n"
             "\n"
             "List the backups in the repository (of VM only, when given), oldest first, with\n"
             "their time (UTC), disks and total disk size.  \"incremental\" backups read only\n"
             "changed chunks from the server but, like full ones, restore on their own.\n"
             "With --chunks, list the chunks BACKUP's disks are made of, one line each: disk,\n"
             "offset, chunk ID (chunks of zeros are not stored and not listed).\n",
    .common = CLI_REPO | CLI_PASSPHRASE | CLI_JSON,
    .json_short = 'J',
    .json_help = "a JSON array with every field",
    .options = backups_options,
    .epilog = "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};
