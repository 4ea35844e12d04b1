/* vmexport repo: create a backup repository (init), or add the config MAC to an old one
 * (upgrade).  The other repository commands have a file each (cmd_backup.c, cmd_restore.c...). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/progress.h"
#include "cli/repo_open.h"
#include "client/client.h"
#include "client/rest.h"
#include "core/cleanup.h"
#include "core/hash.h"
#include "fs/fsinfo.h"
#include "fs/zero.h"
#include "repo/repo.h"

/* ---- repo init ---- */

/* repo upgrade: add the MAC to the config of an encrypted repository made by an older
 * vmexport, after showing the settings it vouches for. */
static int repo_upgrade(const char *path, const char *pfile)
{
    struct repo *r = cli_open_repo("repo upgrade", path, pfile);
    if (!r)
        return EXIT_FAIL;
    int ret = EXIT_OK;
    char err[512] = "";
    if (!repo_encrypted(r)) {
        printf("%s: not encrypted: its config has no MAC to add; nothing to do\n", path);
    } else if (!repo_config_unsealed(r)) {
        printf("%s: the config already carries its MAC; nothing to do\n", path);
    } else if (repo_config_seal(r, err, sizeof(err)) < 0) {
        fprintf(stderr, "vmexport repo upgrade: %s\n", err);
        ret = EXIT_FAIL;
    } else {
        printf("%s: sealed the config (chunk size %u KiB, format version %u) with a MAC under "
               "the repository key; check that these are the settings you chose\n",
               path, repo_chunk_size(r) >> 10, repo_format_version(r));
    }
    repo_close(r);
    return ret;
}

static const struct cli_option repo_options[] = {
    {"encrypt", 'e', NULL, "encrypt (asks for the passphrase twice on a terminal)"},
    {"chunk-size", 'c', "SIZE",
     "chunk size, e.g. 256K, 1M (default), 4M; an incremental\n"
     "backup rewrites every chunk a change touches, so\n"
     "small chunks make small incrementals"},
    {"compression-level", 'L', "N",
     "zstd level of what is written: 1 (default: fastest,\n"
     "about as small as 3 on disk images) to 19 (smallest,\n"
     "slow), or -7 to -1 (faster, larger)"},
    {"format-version", 'F', "N",
     "repository format: 3 (default: packs, zero blocks\n"
     "cost nothing) or 2 (one file per chunk, readable by\n"
     "vmexport before format 3); 1 only for tests"},
    {NULL, 0, NULL, NULL},
};

static int repo_run(int argc, char **argv)
{
    bool encrypt = false;
    uint64_t chunk = REPO_DEFAULT_CHUNK_SIZE;
    int level = 0;
    unsigned format = REPO_FORMAT_VERSION;
    struct cli_args a = {0};
    int c;
    while ((c = cli_next(&a, &cmd_repo, argc, argv)) > 0) {
        switch (c) {
        case 'e':
            encrypt = true;
            break;
        case 'c':
            if (cli_parse_size(a.arg, &chunk) < 0 || chunk < REPO_MIN_CHUNK_SIZE ||
                chunk > REPO_MAX_CHUNK_SIZE || (chunk & (chunk - 1)))
                return cli_usage_error(&cmd_repo,
                                       "--chunk-size must be a power of two from 64K to 64M");
            break;
        case 'L': {
            char *end;
            long v = strtol(a.arg, &end, 10);
            if (end == a.arg || *end || v < -7 || v > 19 || v == 0)
                return cli_usage_error(&cmd_repo, "--compression-level takes -7 to -1 or 1 to 19");
            level = (int)v;
            break;
        }
        case 'F': {
            char *end;
            long v = strtol(a.arg, &end, 10);
            if (end == a.arg || *end || v < REPO_MIN_FORMAT_VERSION || v > REPO_FORMAT_VERSION)
                return cli_usage_error(&cmd_repo, "--format-version takes 1 to 3");
            format = (unsigned)v;
            break;
        }
        }
    }
    if (c == CLI_EXIT)
        return a.status;
    const char *pfile = a.passphrase_file;
    int first = a.first;
    if (argc - first == 2 && !strcmp(argv[first], "upgrade"))
        return repo_upgrade(argv[first + 1], pfile);
    if (argc - first != 2 || strcmp(argv[first], "init"))
        return cli_usage_error(&cmd_repo, "expected 'init PATH' or 'upgrade PATH'");
    const char *path = argv[first + 1];
    CLEANUP_FREE char *pass = NULL;
    if (encrypt && !(pass = cli_read_passphrase("repo init", pfile, true)))
        return EXIT_FAIL;
    struct repo_init_options io = {.chunk_size = (uint32_t)chunk,
                                   .passphrase = pass,
                                   .zstd_level = level,
                                   .format_version = format};
    char err[512] = "";
    int r = repo_init(path, &io, err, sizeof(err));
    if (r < 0) {
        if (err[0]) /* the library's messages name the file they are about */
            fprintf(stderr, "vmexport repo init: %s\n", err);
        else
            fprintf(stderr, "vmexport repo init: %s: %s\n", path, strerror(-r));
        return EXIT_FAIL;
    }
    printf("initialised %s repository at %s (chunk size %llu KiB, format version %u)\n",
           encrypt ? "an encrypted" : "a", path, (unsigned long long)(chunk >> 10), format);
    return EXIT_OK;
}

const struct cli_command cmd_repo = {
    .name = "repo",
    .summary = "create a backup repository, or upgrade one",
    .run = repo_run,
    .usage = "Usage: vmexport repo init PATH [--encrypt] [--chunk-size SIZE] "
             "[--compression-level N]\n"
             "                         [--format-version N] [--passphrase-file FILE]\n"
             "       vmexport repo upgrade PATH [--passphrase-file FILE]\n"
             "\n"
             "Create a backup repository in PATH (a new or empty directory).  Disks are split\n"
             "into fixed chunks of SIZE (default 1M, a power of two from 64K to 64M), named by\n"
             "their SHA-256, compressed with zstd and, with --encrypt, encrypted with\n"
             "AES-256-GCM under a random key that is stored wrapped by a key derived from the\n"
             "passphrase (scrypt).  Losing the passphrase loses the backups.  The config of an\n"
             "encrypted repository carries a MAC under its key: a config changed without the key\n"
             "(say, to drop the encryption or change the chunk size) is refused, and so is a\n"
             "passphrase given for a repository whose config says it is not encrypted.\n"
             "\n"
             "Format 3 (the default) does not hash or store the zero 4 KiB blocks of a chunk\n"
             "and keeps chunks in packs of up to 16 MiB found through an index; format 2\n"
             "(--format-version 2) stores one file per chunk and is what older vmexport reads.\n"
             "\n"
             "upgrade adds that MAC to the config of an encrypted repository made by an older\n"
             "vmexport, which until then can be read but not written to (backup, prune, gc).\n",
    .common = CLI_PASSPHRASE,
    .options = repo_options,
    .epilog = "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};
