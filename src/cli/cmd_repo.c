/* vmexport repo: create a backup repository (init), add the config MAC to an old one or
 * convert it to the current format (upgrade).  The other repository commands have a file each
 * (cmd_backup.c, cmd_restore.c...). */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
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
#include "backup/verify.h"
#include "repo/repo.h"
#include "repo/store.h"

/* ---- repo init ---- */

/* repo upgrade: add the MAC to the config of an encrypted repository made by an older
 * vmexport, after showing the settings it vouches for. */
static int repo_upgrade(const char *path, const char *pfile, const struct store_options *so)
{
    struct repo *r = cli_open_repo("repo upgrade", path, pfile, so);
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

/* ---- repo upgrade --format-version 3 ----
 *
 * The old repository at PATH is copied into PATH.upgrade-tmp (a new format-3 repository with the
 * same chunk size and passphrase; every backup with its ID, time and metadata), the copy is
 * verified, then the two directories are exchanged atomically (renameat2 RENAME_EXCHANGE) and
 * the old one is renamed PATH.format<N>-<time>, kept for the user to delete.  PATH is a whole
 * repository at every moment: a crash before the exchange leaves the old one (a rerun removes
 * the unfinished copy and starts again), a crash after it the new one (a rerun renames the old
 * one it finds in PATH.upgrade-tmp). */

#define UPGRADE_TMP_SUFFIX ".upgrade-tmp"
/* Tests: kill the process at this point ("copied": before the exchange; "exchanged": after it,
 * before the old one is renamed), as a crash would. */
#define UPGRADE_KILL_ENV "VMEXPORT_TEST_UPGRADE_KILL"

static void upgrade_kill_point(const char *point)
{
    const char *at = getenv(UPGRADE_KILL_ENV);
    if (at && !strcmp(at, point))
        raise(SIGKILL);
}

/* The "version" of the config in dir: 0 when it has none (no repository there). */
static unsigned config_version(const char *dir)
{
    CLEANUP_FREE char *path = NULL;
    if (asprintf(&path, "%s/config", dir) < 0)
        return 0;
    json_t *o = json_load_file(path, 0, NULL);
    json_t *v = o ? json_object_get(o, "version") : NULL;
    unsigned n =
        json_is_integer(v) && json_integer_value(v) > 0 ? (unsigned)json_integer_value(v) : 0;
    json_decref(o);
    return n;
}

static uint64_t tree_bytes;

static int tree_size_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)p;
    (void)f;
    if (flag == FTW_F)
        tree_bytes += (uint64_t)st->st_blocks * 512;
    return 0;
}

static int tree_remove_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)f;
    return (flag == FTW_DP ? rmdir(p) : unlink(p)) < 0 ? -1 : 0;
}

/* fsync the directory holding path. */
static int sync_parent(const char *path)
{
    CLEANUP_FREE char *dir = strdup(path);
    if (!dir)
        return -ENOMEM;
    char *slash = strrchr(dir, '/');
    const char *d = slash ? (slash == dir ? "/" : (*slash = '\0', dir)) : ".";
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int ret = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return ret;
}

/* Rename the old repository (now at tmp) to PATH.format<version>-<UTC time>; print it. */
static int upgrade_keep_old(const char *path, const char *tmp, unsigned version)
{
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
    CLEANUP_FREE char *old = NULL;
    if (asprintf(&old, "%s.format%u-%s", path, version, stamp) < 0)
        return EXIT_FAIL;
    if (rename(tmp, old) < 0 || sync_parent(path) < 0) {
        fprintf(stderr, "vmexport repo upgrade: %s: cannot rename to %s: %s\n", tmp, old,
                strerror(errno));
        return EXIT_FAIL;
    }
    printf("%s: now format version 3; the old repository (format %u) is kept as %s: delete it "
           "once you no longer need it\n",
           path, version, old);
    return EXIT_OK;
}

static void upgrade_progress(void *opaque, const struct backup *b)
{
    (void)opaque;
    fprintf(stderr, "copying backup %s of %s\n", b->id, b->vm_id);
}

static int repo_upgrade_format(const char *path_arg, const char *pfile, unsigned format)
{
    const char *cmd = "vmexport repo upgrade";
    if (format != REPO_FORMAT_VERSION) {
        fprintf(stderr, "%s: --format-version: only %u (the current format) can be upgraded to\n",
                cmd, REPO_FORMAT_VERSION);
        return EXIT_USAGE;
    }
    if (store_url_kind(path_arg) != STORE_URL_LOCAL) {
        fprintf(stderr,
                "%s: %s: only a repository in a local directory can be converted to format "
                "%u (the conversion exchanges two directories); make a new one with 'vmexport "
                "repo init' instead\n",
                cmd, path_arg, REPO_FORMAT_VERSION);
        return EXIT_FAIL;
    }
    CLEANUP_FREE char *path = strdup(path_arg);
    CLEANUP_FREE char *tmp = NULL;
    if (!path)
        return EXIT_FAIL;
    for (size_t n = strlen(path); n > 1 && path[n - 1] == '/'; n--)
        path[n - 1] = '\0';
    if (asprintf(&tmp, "%s" UPGRADE_TMP_SUFFIX, path) < 0)
        return EXIT_FAIL;

    /* What an interrupted run left. */
    unsigned have = config_version(path), left = config_version(tmp);
    struct stat st;
    if (lstat(tmp, &st) == 0) {
        if (have >= REPO_FORMAT_VERSION && left && left < REPO_FORMAT_VERSION)
            return upgrade_keep_old(path, tmp, left); /* crashed after the exchange */
        if (!S_ISDIR(st.st_mode) || nftw(tmp, tree_remove_entry, 16, FTW_DEPTH | FTW_PHYS) < 0) {
            fprintf(stderr, "%s: %s: cannot remove what an interrupted upgrade left: %s\n", cmd,
                    tmp, strerror(errno));
            return EXIT_FAIL;
        }
        fprintf(stderr, "removed %s, left by an interrupted upgrade\n", tmp);
    }
    struct repo *src = cli_open_repo("repo upgrade", path, pfile, NULL);
    if (!src)
        return EXIT_FAIL;
    unsigned from = repo_format_version(src);
    if (from >= REPO_FORMAT_VERSION) {
        printf("%s: already format version %u; nothing to do\n", path, from);
        repo_close(src);
        return EXIT_OK;
    }
    int ret = EXIT_FAIL;
    char err[512] = "";
    CLEANUP_FREE char *pass = NULL;
    struct repo *dst = NULL;
    struct statvfs vfs;
    /* Exclusive: no backup, prune or gc changes it while it is copied. */
    if (repo_lock(src, true, CLI_LOCK_TIMEOUT, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s: %s\n", cmd, err);
        repo_close(src);
        return EXIT_FAIL;
    }
    tree_bytes = 0;
    if (nftw(path, tree_size_entry, 16, FTW_PHYS) < 0 || statvfs(path, &vfs) < 0) {
        fprintf(stderr, "%s: %s: %s\n", cmd, path, strerror(errno));
        goto out;
    }
    uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    if (avail < tree_bytes) {
        fprintf(stderr,
                "%s: %s: the upgrade makes a copy next to the repository and needs up to %" PRIu64
                " MiB free there; %" PRIu64 " MiB are available: nothing was changed\n",
                cmd, path, (tree_bytes >> 20) + 1, avail >> 20);
        goto out;
    }
    if (repo_encrypted(src) && !(pass = cli_read_passphrase("repo upgrade", pfile, false)))
        goto out;
    struct repo_init_options io = {.chunk_size = repo_chunk_size(src),
                                   .passphrase = pass,
                                   .format_version = REPO_FORMAT_VERSION};
    if (repo_init(tmp, &io, err, sizeof(err)) < 0 ||
        repo_open(tmp, pass, &dst, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s: %s\n", cmd, err);
        goto out;
    }
    if (repo_upgrade_copy(src, dst, upgrade_progress, NULL, err, sizeof(err)) < 0) {
        fprintf(stderr,
                "%s: %s: nothing was changed (the unfinished copy %s is removed by the "
                "next run)\n",
                cmd, err, tmp);
        goto out;
    }
    struct verify_options vo = {.repo = dst, .lock_timeout = CLI_LOCK_TIMEOUT};
    struct verify_result vr;
    if (verify_run(&vo, &vr) < 0 || vr.damaged_backups) {
        fprintf(stderr, "%s: the copy %s does not verify (%s): nothing was changed\n", cmd, tmp,
                vr.err[0] ? vr.err : "damaged backups");
        goto out;
    }
    repo_close(dst);
    dst = NULL;
    upgrade_kill_point("copied");
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_EXCHANGE) < 0 || sync_parent(path) < 0) {
        fprintf(stderr, "%s: cannot exchange %s and %s: %s: nothing was changed\n", cmd, tmp, path,
                strerror(errno));
        goto out;
    }
    upgrade_kill_point("exchanged");
    repo_unlock(src);
    repo_close(src);
    src = NULL;
    ret = upgrade_keep_old(path, tmp, from);
out:
    repo_close(dst);
    if (src) {
        repo_unlock(src);
        repo_close(src);
    }
    return ret;
}

/* Options without a short form. */
enum { KEY_LOCK_DAYS = CLI_LONG_ONLY };
/* Longest Object Lock retention --lock-days takes (100 years). */
#define LOCK_DAYS_MAX 36500

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
    {"lock-days", KEY_LOCK_DAYS, "N",
     "s3:// only: the bucket is made with S3 Object Lock\n"
     "and every object is kept N days (1 to 36500): not\n"
     "deleted or replaced before, by anyone"},
    {NULL, 0, NULL, NULL},
};

static int repo_run(int argc, char **argv)
{
    bool encrypt = false;
    uint64_t chunk = REPO_DEFAULT_CHUNK_SIZE;
    int level = 0;
    unsigned format = REPO_FORMAT_VERSION;
    bool format_given = false;
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
            format_given = true;
            break;
        }
        case KEY_LOCK_DAYS: {
            char *end;
            long v = strtol(a.arg, &end, 10);
            if (end == a.arg || *end || v < 1 || v > LOCK_DAYS_MAX)
                return cli_usage_error(&cmd_repo, "--lock-days takes 1 to %d", LOCK_DAYS_MAX);
            a.store.lock_days = (unsigned)v;
            break;
        }
        }
    }
    if (c == CLI_EXIT)
        return a.status;
    const char *pfile = a.passphrase_file;
    int first = a.first;
    if (argc - first == 2 && !strcmp(argv[first], "upgrade"))
        return format_given ? repo_upgrade_format(argv[first + 1], pfile, format)
                            : repo_upgrade(argv[first + 1], pfile, &a.store);
    if (argc - first != 2 || strcmp(argv[first], "init"))
        return cli_usage_error(&cmd_repo, "expected 'init URL' or 'upgrade URL'");
    const char *path = argv[first + 1];
    if (a.store.lock_days && store_url_kind(path) != STORE_URL_KIND_S3)
        return cli_usage_error(&cmd_repo, "--lock-days is for s3:// repositories only");
    CLEANUP_FREE char *pass = NULL;
    if (encrypt && !(pass = cli_read_passphrase("repo init", pfile, true)))
        return EXIT_FAIL;
    struct repo_init_options io = {.chunk_size = (uint32_t)chunk,
                                   .passphrase = pass,
                                   .zstd_level = level,
                                   .format_version = format,
                                   .store = &a.store};
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
    .usage = "Usage: vmexport repo init URL [--encrypt] [--chunk-size SIZE] "
             "[--compression-level N]\n"
             "                         [--format-version N] [--passphrase-file FILE]\n"
             "       vmexport repo upgrade URL [--format-version 3] [--passphrase-file FILE]\n"
             "\n"
             "Create a backup repository at URL: a new or empty directory, rados://POOL/NAMESPACE\n"
             "(a Ceph pool, which must exist, and a namespace in it, empty for the default one,\n"
             "holding no object yet) or s3://BUCKET/PREFIX (made when missing).  Every\n"
             "repository command takes such a URL (--repo or VMEXPORT_REPO).  Disks are split\n"
             "into fixed chunks of SIZE (default 1M, a power of two from 64K to 64M), named by\n"
             "a hash of their content (format 3: a SHA-256 over the SHA-256 digests of their\n"
             "non-zero 4 KiB blocks; format 2: the SHA-256 of the chunk; with --encrypt an\n"
             "HMAC-SHA-256 under a secret key instead, so that names reveal nothing of the\n"
             "data), compressed with zstd and, with --encrypt, encrypted with\n"
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
             "An s3:// repository is reached with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,\n"
             "AWS_DEFAULT_REGION (default us-east-1) and --s3-endpoint (VMEXPORT_S3_ENDPOINT;\n"
             "default AWS's endpoint of the region).  With --lock-days N its bucket is made\n"
             "with S3 Object Lock and every object is retained N days: prune and gc keep (and\n"
             "report) what the bucket refuses to delete.\n"
             "\n"
             "upgrade adds that MAC to the config of an encrypted repository made by an older\n"
             "vmexport, which until then can be read but not written to (backup, prune, gc).\n"
             "With --format-version 3 it converts a format 1 or 2 repository in a directory\n"
             "PATH to format 3: every backup (same IDs, times and metadata; each chunk read,\n"
             "checked and stored anew) is copied into PATH.upgrade-tmp, the copy is verified,\n"
             "then the two directories are exchanged atomically and the old repository is kept\n"
             "as PATH.format<N>-<time> for you to delete.  It needs free space for the copy\n"
             "(checked first) and holds the repository locked meanwhile.  Interrupted at any\n"
             "point, PATH is the old or the new repository, whole; run it again to finish.  An\n"
             "encrypted repository keeps its passphrase (its keys are new).  Repositories given\n"
             "by URL are refused: make a new one there.\n",
    .common = CLI_PASSPHRASE | CLI_STORE,
    .options = repo_options,
    .epilog = "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};
