/* Repository commands: repo init, backups, restore, verify, prune, gc (backup is in
 * cmd_backup.c, its engine in backup/backup.c).
 */
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
#include "cli/upload.h"
#include "client/client.h"
#include "core/cleanup.h"
#include "core/hash.h"
#include "fs/fsinfo.h"
#include "fs/zero.h"
#include "repo/repo.h"

/* --jobs: at most this many. */
#define MAX_JOBS 64
/* Seconds a backup waits for another backup of the same VM to finish. */
#define VM_LOCK_TIMEOUT 600
/* Restore threads (reading, checking, decompressing and writing chunks) and upload
 * connections unless --jobs says otherwise. */
#define RESTORE_DEFAULT_JOBS 4
#define UPLOAD_DEFAULT_JOBS  2
/* Alignment of a restore thread's chunk buffer (a page). */
#define RESTORE_PAGE 4096
/* In the name of a disk being restored: DEST + this + a random mkostemp suffix. */
#define RESTORE_TMP_MARK ".vxrestore.tmp."

/* ---- shared option handling ---- */

struct repo_opts {
    const char *repo;
    const char *passphrase_file;
    bool json;
    unsigned jobs;
};

/* Open the repository named by the options. */
static struct repo *open_repo(const char *cmd, const struct repo_opts *o)
{
    return cli_open_repo(cmd, o->repo, o->passphrase_file);
}

static int parse_jobs(const char *s, unsigned *out)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (end == s || *end || v < 1 || v > MAX_JOBS)
        return -EINVAL;
    *out = (unsigned)v;
    return 0;
}

static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-')
        return -EINVAL;
    switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
    default: break;
    }
    if (*end == 'i')
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end)
        return -EINVAL;
    *out = v;
    return 0;
}

static void format_time(int64_t t, char *buf, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, len, "%Y-%m-%d %H:%M:%SZ", &tm);
}

/* Backups and disks become file names: no path tricks. */
static bool safe_name(const char *s)
{
    return s && *s && s[0] != '.' && !strchr(s, '/') && strlen(s) <= 255;
}

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

static int repo_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"encrypt", no_argument, NULL, 'e'},
        {"chunk-size", required_argument, NULL, 'c'},
        {"passphrase-file", required_argument, NULL, 'P'},
        {"compression-level", required_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool encrypt = false;
    uint64_t chunk = REPO_DEFAULT_CHUNK_SIZE;
    int level = 0;
    const char *pfile = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "ec:P:L:h", opts, NULL)) != -1) {
        switch (c) {
        case 'e':
            encrypt = true;
            break;
        case 'c':
            if (parse_size(optarg, &chunk) < 0 || chunk < REPO_MIN_CHUNK_SIZE ||
                chunk > REPO_MAX_CHUNK_SIZE || (chunk & (chunk - 1)))
                return cli_usage_error(&cmd_repo,
                                       "--chunk-size must be a power of two from 64K to 64M");
            break;
        case 'P':
            pfile = optarg;
            break;
        case 'L': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end || v < -7 || v > 19 || v == 0)
                return cli_usage_error(&cmd_repo, "--compression-level takes -7 to -1 or 1 to 19");
            level = (int)v;
            break;
        }
        case 'h':
            return cli_help(&cmd_repo);
        default:
            return cli_usage_error(&cmd_repo, "unknown option");
        }
    }
    if (argc - optind == 2 && !strcmp(argv[optind], "upgrade"))
        return repo_upgrade(argv[optind + 1], pfile);
    if (argc - optind != 2 || strcmp(argv[optind], "init"))
        return cli_usage_error(&cmd_repo, "expected 'init PATH' or 'upgrade PATH'");
    const char *path = argv[optind + 1];
    CLEANUP_FREE char *pass = NULL;
    if (encrypt && !(pass = cli_read_passphrase("repo init", pfile, true)))
        return EXIT_FAIL;
    struct repo_init_options io = {.chunk_size = (uint32_t)chunk, .passphrase = pass,
                                   .zstd_level = level};
    char err[512] = "";
    int r = repo_init(path, &io, err, sizeof(err));
    if (r < 0) {
        if (err[0]) /* the library's messages name the file they are about */
            fprintf(stderr, "vmexport repo init: %s\n", err);
        else
            fprintf(stderr, "vmexport repo init: %s: %s\n", path, strerror(-r));
        return EXIT_FAIL;
    }
    printf("initialised %s repository at %s (chunk size %llu KiB)\n",
           encrypt ? "an encrypted" : "a", path, (unsigned long long)(chunk >> 10));
    return EXIT_OK;
}

const struct cli_command cmd_repo = {
    .name = "repo",
    .summary = "create a backup repository, or upgrade one",
    .run = repo_run,
    .usage = "Usage: vmexport repo init PATH [--encrypt] [--chunk-size SIZE] "
             "[--compression-level N]\n"
             "                         [--passphrase-file FILE]\n"
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
             "upgrade adds that MAC to the config of an encrypted repository made by an older\n"
             "vmexport, which until then can be read but not written to (backup, prune, gc).\n"
             "\n"
             "Options:\n"
             "  --encrypt               encrypt (asks for the passphrase twice on a terminal)\n"
             "  --chunk-size SIZE       chunk size, e.g. 256K, 1M (default), 4M; an incremental\n"
             "                          backup rewrites every chunk a change touches, so\n"
             "                          small chunks make small incrementals\n"
             "  --compression-level N   zstd level of what is written: 1 (default: fastest,\n"
             "                          about as small as 3 on disk images) to 19 (smallest,\n"
             "                          slow), or -7 to -1 (faster, larger)\n"
             "  --passphrase-file FILE  read the passphrase from FILE (or VMEXPORT_PASSPHRASE)\n"
             "\n"
             "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};

/* ---- backups ---- */

static int backups_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"repo", required_argument, NULL, 'r'},
        {"passphrase-file", required_argument, NULL, 'P'},
        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct repo_opts o = {0};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:P:Jh", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            o.repo = optarg;
            break;
        case 'P':
            o.passphrase_file = optarg;
            break;
        case 'J':
            o.json = true;
            break;
        case 'h':
            return cli_help(&cmd_backups);
        default:
            return cli_usage_error(&cmd_backups, "unknown option");
        }
    }
    if (argc - optind > 1)
        return cli_usage_error(&cmd_backups, "expected at most one VM");
    const char *vm = optind < argc ? argv[optind] : NULL;
    struct repo *repo = open_repo("backups", &o);
    if (!repo)
        return EXIT_FAIL;
    backup_list l = VECTOR_INIT;
    int r = repo_backup_list(repo, vm, &l);
    if (r < 0) {
        fprintf(stderr, "vmexport backups: %s: %s\n", repo_path(repo), strerror(-r));
        repo_close(repo);
        return EXIT_FAIL;
    }
    if (o.json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < l.len; i++) {
            struct backup *b = l.ptr[i];
            json_t *disks = json_array();
            for (size_t k = 0; k < b->disks.len; k++)
                json_array_append_new(disks, json_pack("{s:s, s:I, s:s?}", "name",
                                                       b->disks.ptr[k].name, "size",
                                                       (json_int_t)b->disks.ptr[k].size,
                                                       "change_id", b->disks.ptr[k].change_id));
            json_array_append_new(
                arr, json_pack("{s:s, s:s, s:s?, s:I, s:o, s:s?, s:I, s:I, s:I, s:I, s:f}", "id",
                               b->id, "vm", b->vm_id, "snapshot", b->snapshot_id, "time",
                               (json_int_t)b->time, "disks", disks, "parent", b->parent_id,
                               "bytes_read", (json_int_t)b->bytes_read, "bytes_written",
                               (json_int_t)b->bytes_written, "chunks_new",
                               (json_int_t)b->chunks_new, "chunks_reused",
                               (json_int_t)b->chunks_reused, "seconds", b->seconds));
        }
        char *text = json_dumps(arr, JSON_COMPACT);
        printf("%s\n", text ? text : "[]");
        free(text);
        json_decref(arr);
    } else {
        printf("%-24s %-20s %-20s %5s %10s  %s\n", "ID", "VM", "TIME", "DISKS", "SIZE", "KIND");
        for (size_t i = 0; i < l.len; i++) {
            struct backup *b = l.ptr[i];
            uint64_t size = 0;
            for (size_t k = 0; k < b->disks.len; k++)
                size += b->disks.ptr[k].size;
            char t[32], sz[32];
            format_time(b->time, t, sizeof(t));
            printf("%-24s %-20s %-20s %5zu %10s  %s\n", b->id, b->vm_id, t, b->disks.len,
                   cli_bytes(size, sz, sizeof(sz)), b->parent_id ? "incremental" : "full");
        }
    }
    backup_list_free(&l);
    repo_close(repo);
    return EXIT_OK;
}

const struct cli_command cmd_backups = {
    .name = "backups",
    .summary = "list the backups in a repository",
    .run = backups_run,
    .usage = "Usage: vmexport backups --repo PATH [VM] [--json]\n"
             "\n"
             "List the backups in the repository (of VM only, when given), oldest first, with\n"
             "their time (UTC), disks and total disk size.  \"incremental\" backups read only\n"
             "changed chunks from the server but, like full ones, restore on their own.\n"
             "\n"
             "Options:\n" REPO_OPTIONS_HELP
             "  --json                  a JSON array with every field\n"
             "\n"
             "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};

/* ---- restore ---- */

struct restore_run {
    struct repo *repo;
    const struct manifest *m;
    int fd; /* the temporary file */
    unsigned jobs;
    atomic_ullong next;
    atomic_int failed;
    struct progress prog;
    pthread_mutex_t err_lock;
    char err[512];
};

/* Each thread reads, checks (container checksum or tag, then the chunk ID) and decompresses a
 * chunk, then writes it; with more threads than CPUs the writes of some overlap the decoding
 * of others.  The runs of data are written (fs_write_data_runs: blocks of zeros stay holes in
 * the file, which was truncated to its size), through the page cache with the writeback behind
 * them: each thread
 * starts the writeback of the chunk it wrote, and waits for its previous chunk's and drops it
 * from the cache (fs_writeback_behind), so a restore keeps a few chunks per thread cached.
 * (Whole pages written with O_DIRECT instead were slower: 8 GiB image, 3 GiB of data, 3.2-3.7 s
 * against 2.9-3.1 s on a quiet machine, docs/benchmarks.md.) */
static void *restore_worker(void *opaque)
{
    struct restore_run *rr = opaque;
    const uint32_t cs = rr->m->chunk_size;
    uint64_t wb_off = 0, wb_len = 0;
    uint8_t *buf = NULL;
    if (posix_memalign((void **)&buf, RESTORE_PAGE, cs) != 0) {
        atomic_store(&rr->failed, 1);
        return NULL;
    }
    for (;;) {
        uint64_t i = atomic_fetch_add(&rr->next, 1);
        if (i >= rr->m->n || atomic_load(&rr->failed))
            break;
        const struct manifest_entry *e = &rr->m->e[i];
        uint64_t off = i * cs;
        uint64_t want = rr->m->disk_size - off < cs ? rr->m->disk_size - off : cs;
        if (e->zero) {
            progress_add(&rr->prog, want);
            continue;
        }
        size_t len = 0;
        int r = repo_chunk_read(rr->repo, &e->id, buf, cs, &len);
        if (r == 0 && len > want)
            r = -EBADMSG;
        if (r == 0)
            r = fs_write_data_runs(rr->fd, buf, len, off, NULL);
        if (r == 0 && (r = fs_writeback_behind(rr->fd, wb_off, wb_len, off, len)) == 0) {
            wb_off = off;
            wb_len = len;
        }
        if (r < 0) {
            char hex[2 * HASH_SIZE + 1];
            chunk_id_to_hex(&e->id, hex);
            pthread_mutex_lock(&rr->err_lock);
            if (!atomic_load(&rr->failed))
                snprintf(rr->err, sizeof(rr->err), "chunk %s at offset %" PRIu64 ": %s", hex,
                         off,
                         r == -EBADMSG ? "damaged (fails its checksum or authentication)"
                         : r == -ENOENT ? "missing from the repository"
                         : r == -ENOSPC ? "no space left on the destination"
                                        : strerror(-r));
            atomic_store(&rr->failed, 1);
            pthread_mutex_unlock(&rr->err_lock);
            break;
        }
        progress_add(&rr->prog, want);
    }
    free(buf);
    return NULL;
}

/* A disk restored under a temporary name next to its destination, waiting to be moved there. */
struct staged_disk {
    const char *disk;
    char *dest;
    char *tmp; /* the staged file; after an exchange, the destination's previous file */
    uint64_t size;
    int placed; /* STAGED, or how it was moved into place */
};
enum { STAGED, PLACED_NEW, PLACED_EXCHANGED, PLACED_REPLACED };

/* Restore one disk of b into a new temporary file next to dest (mkostemp: 0600, O_EXCL, a
 * random suffix, so nothing at dest or another writer's file is touched); the file is fsynced.
 * On failure the temporary file is removed and s->tmp is NULL. */
static int restore_stage(struct repo *repo, const struct backup *b, struct staged_disk *s,
                         unsigned jobs, bool json)
{
    struct manifest m = {0};
    int r = repo_manifest_read(repo, b, s->disk, &m);
    if (r < 0) {
        fprintf(stderr, "vmexport restore: backup %s: disk %s: manifest %s\n", b->id, s->disk,
                r == -EBADMSG ? "is damaged" : strerror(-r));
        return EXIT_FAIL;
    }
    if (asprintf(&s->tmp, "%s" RESTORE_TMP_MARK "XXXXXX", s->dest) < 0) {
        s->tmp = NULL;
        manifest_free(&m);
        return EXIT_FAIL;
    }
    int fd = mkostemp(s->tmp, O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "vmexport restore: %s: %s\n", s->dest, strerror(errno));
        free(s->tmp);
        s->tmp = NULL;
        manifest_free(&m);
        return EXIT_FAIL;
    }
    s->size = m.disk_size;
    struct restore_run rr = {.repo = repo, .m = &m, .fd = fd, .jobs = jobs};
    pthread_mutex_init(&rr.err_lock, NULL);
    if (ftruncate(fd, (off_t)m.disk_size) < 0) {
        snprintf(rr.err, sizeof(rr.err), "%s",
                 errno == ENOSPC || errno == EFBIG ? "no space left on the destination"
                                                   : strerror(errno));
        atomic_store(&rr.failed, 1);
    }
    progress_init(&rr.prog, "restore", m.disk_size, json);
    pthread_t th[MAX_JOBS];
    unsigned started = 0;
    for (unsigned t = 0; !atomic_load(&rr.failed) && t < jobs; t++)
        if (pthread_create(&th[t], NULL, restore_worker, &rr) == 0)
            started++;
    for (unsigned t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    progress_finish(&rr.prog);
    if (!atomic_load(&rr.failed) && fsync(fd) < 0) {
        snprintf(rr.err, sizeof(rr.err), "fsync: %s", strerror(errno));
        atomic_store(&rr.failed, 1);
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); /* the last chunks, clean now */
    close(fd);
    int ret = EXIT_OK;
    if (atomic_load(&rr.failed)) {
        fprintf(stderr, "vmexport restore: backup %s: disk %s: %s\n", b->id, s->disk,
                rr.err[0] ? rr.err : "failed");
        unlink(s->tmp);
        free(s->tmp);
        s->tmp = NULL;
        ret = EXIT_FAIL;
    }
    pthread_mutex_destroy(&rr.err_lock);
    manifest_free(&m);
    return ret;
}

/* While disks are staged, SIGINT, SIGTERM and SIGHUP remove the staged files (and the
 * directory the restore made) before the process dies of the signal as it would have; the
 * moves into place run with those signals blocked, so that they complete or are undone. */
static const int restore_signals[] = {SIGINT, SIGTERM, SIGHUP};
static struct staged_disk *volatile restore_sig_staged;
static volatile size_t restore_sig_n;
static const char *volatile restore_sig_dir; /* made by this restore, or NULL */
static struct sigaction restore_sig_saved[ARRAY_SIZE(restore_signals)];

static void restore_on_signal(int sig)
{
    struct staged_disk *s = restore_sig_staged;
    for (size_t i = 0; s && i < restore_sig_n; i++)
        if (s[i].tmp && s[i].placed == STAGED)
            unlink(s[i].tmp);
    if (restore_sig_dir)
        rmdir(restore_sig_dir);
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigaction(sig, &dfl, NULL);
    raise(sig);
}

static void restore_signals_arm(struct staged_disk *s, size_t n)
{
    restore_sig_n = n;
    restore_sig_staged = s;
    struct sigaction sa = {.sa_handler = restore_on_signal};
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < ARRAY_SIZE(restore_signals); i++)
        sigaction(restore_signals[i], &sa, &restore_sig_saved[i]);
}

static void restore_signals_disarm(void)
{
    for (size_t i = 0; i < ARRAY_SIZE(restore_signals); i++)
        sigaction(restore_signals[i], &restore_sig_saved[i], NULL);
    restore_sig_staged = NULL;
    restore_sig_dir = NULL;
}

/* Block (or unblock) the restore's signals in the calling thread. */
static void restore_signals_block(bool block)
{
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < ARRAY_SIZE(restore_signals); i++)
        sigaddset(&set, restore_signals[i]);
    pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}

/* fsync the directory holding path, so that the renames into it are durable. */
static void dir_sync_of(const char *path)
{
    CLEANUP_FREE char *copy = strdup(path);
    if (!copy)
        return;
    char *slash = strrchr(copy, '/');
    const char *dir = slash ? (slash == copy ? "/" : (*slash = '\0', copy)) : ".";
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Move every staged disk to its destination, all or none.  A new name is taken with
 * RENAME_NOREPLACE; with force an existing file is swapped with the staged one
 * (RENAME_EXCHANGE), its old content kept under the temporary name until every disk is in
 * place, so that a failure half-way puts every earlier destination back as it was. */
static int restore_commit(struct staged_disk *s, size_t n, bool force)
{
    size_t i = 0;
    int e = 0;
    for (; i < n; i++) {
        if (renameat2(AT_FDCWD, s[i].tmp, AT_FDCWD, s[i].dest, RENAME_NOREPLACE) == 0) {
            s[i].placed = PLACED_NEW;
            continue;
        }
        e = errno;
        if (e == EEXIST && force) {
            if (renameat2(AT_FDCWD, s[i].tmp, AT_FDCWD, s[i].dest, RENAME_EXCHANGE) == 0) {
                s[i].placed = PLACED_EXCHANGED;
                continue;
            }
            e = errno;
            /* A filesystem without RENAME_EXCHANGE (NFS): replace, without a way back. */
            if (e == EINVAL && rename(s[i].tmp, s[i].dest) == 0) {
                s[i].placed = PLACED_REPLACED;
                continue;
            }
            e = e == EINVAL ? errno : e;
        }
        fprintf(stderr, "vmexport restore: %s: %s\n", s[i].dest,
                e == EEXIST ? "exists (use --force to overwrite it)" : strerror(e));
        break;
    }
    if (i == n) {
        for (size_t k = 0; k < n; k++) {
            if (s[k].placed == PLACED_EXCHANGED)
                unlink(s[k].tmp); /* the replaced file */
            dir_sync_of(s[k].dest);
        }
        return EXIT_OK;
    }
    /* Undo, newest first: what was new is removed, what was swapped is swapped back (the
     * restored file, at the temporary name again, is removed by the caller). */
    while (i-- > 0) {
        if (s[i].placed == PLACED_REPLACED) {
            fprintf(stderr, "vmexport restore: %s: was replaced (the filesystem cannot swap "
                            "files back)\n", s[i].dest);
            continue;
        }
        int r = s[i].placed == PLACED_NEW
                    ? unlink(s[i].dest)
                    : renameat2(AT_FDCWD, s[i].tmp, AT_FDCWD, s[i].dest, RENAME_EXCHANGE);
        if (r < 0)
            fprintf(stderr, "vmexport restore: %s: cannot undo the restore: %s\n", s[i].dest,
                    strerror(errno));
        else
            s[i].placed = STAGED;
    }
    return EXIT_FAIL;
}

static int restore_run_cmd(int argc, char **argv)
{
    static const struct option opts[] = {
        {"repo", required_argument, NULL, 'r'},
        {"passphrase-file", required_argument, NULL, 'P'},
        {"disk", required_argument, NULL, 'd'},
        {"to", required_argument, NULL, 't'},
        {"upload", required_argument, NULL, 'u'},
        {"force", no_argument, NULL, 'f'},
        {"jobs", required_argument, NULL, 'j'},
        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct repo_opts o = {.jobs = 0};
    const char *disk = NULL, *to = NULL, *upload_vm = NULL;
    bool force = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:P:d:t:u:fj:Jh", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            o.repo = optarg;
            break;
        case 'P':
            o.passphrase_file = optarg;
            break;
        case 'd':
            disk = optarg;
            break;
        case 't':
            to = optarg;
            break;
        case 'u':
            upload_vm = optarg;
            break;
        case 'f':
            force = true;
            break;
        case 'j':
            if (parse_jobs(optarg, &o.jobs) < 0)
                return cli_usage_error(&cmd_restore, "--jobs takes 1 to %d", MAX_JOBS);
            break;
        case 'J':
            o.json = true;
            break;
        case 'h':
            return cli_help(&cmd_restore);
        default:
            return cli_usage_error(&cmd_restore, "unknown option");
        }
    }
    if (argc - optind != 1)
        return cli_usage_error(&cmd_restore, "expected one BACKUP id");
    if (!to == !upload_vm)
        return cli_usage_error(&cmd_restore, "give one of --to FILE|DIR and --upload VM");
    if (!o.jobs)
        o.jobs = upload_vm ? UPLOAD_DEFAULT_JOBS : RESTORE_DEFAULT_JOBS;
    struct repo *repo = open_repo("restore", &o);
    if (!repo)
        return EXIT_FAIL;
    struct backup *b = NULL;
    struct staged_disk *staged = NULL;
    size_t nstaged = 0;
    bool made_dir = false, staging = false;
    int ret = EXIT_FAIL;
    char err[512] = "";
    int r = repo_lock(repo, false, VM_LOCK_TIMEOUT, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "vmexport restore: %s: %s\n", repo_path(repo), err);
        goto out;
    }
    r = repo_backup_get(repo, argv[optind], &b);
    if (r < 0) {
        fprintf(stderr, "vmexport restore: backup %s: %s\n", argv[optind],
                r == -ENOENT    ? "not found (see 'vmexport backups')"
                : r == -EBADMSG ? "its metadata is damaged"
                                : strerror(-r));
        goto out;
    }
    if (disk) {
        bool found = false;
        for (size_t i = 0; i < b->disks.len; i++)
            found = found || !strcmp(b->disks.ptr[i].name, disk);
        if (!found) {
            fprintf(stderr, "vmexport restore: backup %s has no disk '%s'\n", b->id, disk);
            goto out;
        }
    }
    if (upload_vm) {
        ret = upload_backup("restore", repo, b, disk, upload_vm, o.jobs, o.json);
        goto out;
    }
    /* Every disk is staged (restored under a temporary name next to its destination) before
     * any is moved into place: a failure leaves the destination as it was. */
    struct stat st;
    bool to_dir = (!disk && b->disks.len != 1) || (stat(to, &st) == 0 && S_ISDIR(st.st_mode));
    staged = calloc(b->disks.len, sizeof(*staged));
    if (!staged)
        goto out;
    for (size_t i = 0; i < b->disks.len; i++) {
        const char *name = b->disks.ptr[i].name;
        if (disk && strcmp(name, disk))
            continue;
        struct staged_disk *s = &staged[nstaged++];
        s->disk = name;
        if (!to_dir) {
            s->dest = strdup(to);
        } else if (!safe_name(name)) {
            fprintf(stderr, "vmexport restore: disk name '%s' cannot be a file name\n", name);
            goto out;
        } else if (asprintf(&s->dest, "%s/%s", to, name) < 0) {
            s->dest = NULL;
        }
        if (!s->dest)
            goto out;
        /* Refuse before writing anything what the final rename would refuse. */
        if (lstat(s->dest, &st) == 0 && (!force || S_ISDIR(st.st_mode))) {
            fprintf(stderr, "vmexport restore: %s %s\n", s->dest,
                    S_ISDIR(st.st_mode) ? "is a directory"
                                        : "exists (use --force to overwrite it)");
            goto out;
        }
    }
    restore_signals_arm(staged, nstaged);
    staging = true;
    if (to_dir) {
        if (mkdir(to, 0755) == 0) {
            made_dir = true;
            restore_sig_dir = to;
        } else if (errno != EEXIST) {
            fprintf(stderr, "vmexport restore: %s: %s\n", to, strerror(errno));
            goto out;
        }
    }
    for (size_t i = 0; i < nstaged; i++)
        if (restore_stage(repo, b, &staged[i], o.jobs, o.json) != EXIT_OK)
            goto out;
    restore_signals_block(true);
    r = restore_commit(staged, nstaged, force);
    restore_sig_dir = NULL; /* the disks are in place, or the caller removes what is left */
    restore_signals_block(false);
    if (r != EXIT_OK)
        goto out;
    for (size_t i = 0; i < nstaged; i++) {
        free(staged[i].tmp);
        staged[i].tmp = NULL;
        if (!o.json) {
            char sz[32];
            printf("restored disk %s of backup %s to %s (%s)\n", staged[i].disk, b->id,
                   staged[i].dest, cli_bytes(staged[i].size, sz, sizeof(sz)));
        } else {
            printf("{\"type\":\"restored\",\"backup\":\"%s\",\"disk\":\"%s\",\"to\":\"%s\","
                   "\"size\":%" PRIu64 "}\n", b->id, staged[i].disk, staged[i].dest,
                   staged[i].size);
        }
    }
    ret = EXIT_OK;
out:
    if (staging)
        restore_signals_disarm();
    if (staged) {
        for (size_t i = 0; i < nstaged; i++) {
            if (staged[i].tmp && staged[i].placed == STAGED)
                unlink(staged[i].tmp);
            free(staged[i].tmp);
            free(staged[i].dest);
        }
        if (ret != EXIT_OK && made_dir)
            rmdir(to);
        if (ret != EXIT_OK && staging)
            fprintf(stderr, "vmexport restore: nothing was written to %s\n", to);
        free(staged);
    }
    backup_free(b);
    repo_close(repo);
    return ret;
}

const struct cli_command cmd_restore = {
    .name = "restore",
    .summary = "restore a backup's disks to files",
    .run = restore_run_cmd,
    .usage =
        "Usage: vmexport restore --repo PATH BACKUP [--disk NAME] --to FILE|DIR [--force]\n"
        "                        [--jobs N] [--json]\n"
        "       vmexport restore --repo PATH BACKUP [--disk NAME] --upload VM [--jobs N]\n"
        "\n"
        "With --upload, the disks are written back to a host through vmexportd's upload API\n"
        "into VM (created when missing; existing disks are never overwritten): data chunks\n"
        "as ranged PUTs from N connections, zero ranges as PATCH zero requests, then the\n"
        "transfer is finalized; on failure it is cancelled and no disk appears.\n"
        "\n"
        "Write the disks of BACKUP as sparse raw files.  With one disk (or --disk), --to\n"
        "names the file (or an existing directory to put it in); otherwise --to is a\n"
        "directory that receives one file per disk, named after the disk.  Every chunk's\n"
        "checksum (and, when encrypted, authentication tag) is checked; on any error nothing\n"
        "is left at the destination: every disk is first written under a temporary name\n"
        "next to its destination (DEST.vxrestore.tmp.XXXXXX, mode 0600), and only when all\n"
        "are complete are they renamed into place; with --force an existing file is\n"
        "swapped out and removed only then, so a failure leaves it as it was.\n"
        "What is written leaves the page cache once it is on the disk: restoring a big disk\n"
        "does not push the host's cached data out.\n"
        "\n"
        "Options:\n" REPO_OPTIONS_HELP
        "  --disk NAME             only this disk\n"
        "  --to FILE|DIR           destination file or directory\n"
        "  --upload VM             upload to the server instead (connection options below)\n"
        "  --force                 replace existing files\n"
        "  -j, --jobs N            parallel readers (default 4 with --to, 2 with --upload)\n"
        "  --json                  progress and results as JSON lines\n"
        "\n"
        "Exit status: 0 success, 1 failure (damaged or missing data, existing file), 2 usage.\n",
};

/* ---- verify ---- */

/* Set of chunk IDs already checked, with the result: open addressing, grows by doubling. */
struct idset {
    struct chunk_id *ids;
    int8_t *state; /* 0 empty, 1 good, -1 damaged */
    size_t cap, len;
};

static size_t idset_slot(const struct idset *s, const struct chunk_id *id)
{
    uint64_t h;
    memcpy(&h, id->b, sizeof(h)); /* IDs are uniformly distributed hashes */
    size_t i = (size_t)h & (s->cap - 1);
    while (s->state[i] && memcmp(&s->ids[i], id, sizeof(*id)))
        i = (i + 1) & (s->cap - 1);
    return i;
}

static int idset_put(struct idset *s, const struct chunk_id *id, int8_t v)
{
    if ((s->len + 1) * 2 > s->cap) {
        struct idset n = {.cap = s->cap ? s->cap * 2 : 1024};
        n.ids = calloc(n.cap, sizeof(*n.ids));
        n.state = calloc(n.cap, 1);
        if (!n.ids || !n.state) {
            free(n.ids);
            free(n.state);
            return -ENOMEM;
        }
        for (size_t i = 0; i < s->cap; i++)
            if (s->state[i]) {
                size_t k = idset_slot(&n, &s->ids[i]);
                n.ids[k] = s->ids[i];
                n.state[k] = s->state[i];
                n.len++;
            }
        free(s->ids);
        free(s->state);
        *s = n;
    }
    size_t k = idset_slot(s, id);
    if (!s->state[k])
        s->len++;
    s->ids[k] = *id;
    s->state[k] = v;
    return 0;
}

static int8_t idset_get(const struct idset *s, const struct chunk_id *id)
{
    return s->cap ? s->state[idset_slot(s, id)] : 0;
}

static int verify_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"repo", required_argument, NULL, 'r'},
        {"passphrase-file", required_argument, NULL, 'P'},
        {"sample", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct repo_opts o = {0};
    double sample = 100;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:P:s:Jh", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            o.repo = optarg;
            break;
        case 'P':
            o.passphrase_file = optarg;
            break;
        case 's': {
            char *end;
            sample = strtod(optarg, &end);
            if (end == optarg || (*end && strcmp(end, "%")) || sample <= 0 || sample > 100)
                return cli_usage_error(&cmd_verify, "--sample takes a percentage in (0, 100]");
            break;
        }
        case 'J':
            o.json = true;
            break;
        case 'h':
            return cli_help(&cmd_verify);
        default:
            return cli_usage_error(&cmd_verify, "unknown option");
        }
    }
    if (argc - optind > 1)
        return cli_usage_error(&cmd_verify, "expected at most one BACKUP");
    struct repo *repo = open_repo("verify", &o);
    if (!repo)
        return EXIT_FAIL;
    char err[512] = "";
    int r = repo_lock(repo, false, VM_LOCK_TIMEOUT, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "vmexport verify: %s: %s\n", repo_path(repo), err);
        repo_close(repo);
        return EXIT_FAIL;
    }
    backup_list l = VECTOR_INIT;
    uint64_t damaged_backups = 0, chunks_checked = 0, chunks_damaged = 0;
    if (optind < argc) {
        struct backup *b = NULL;
        r = repo_backup_get(repo, argv[optind], &b);
        if (r == -EBADMSG) {
            printf("backup %s: DAMAGED: its metadata (backup.json) cannot be read\n",
                   argv[optind]);
            damaged_backups++;
        } else if (r < 0) {
            fprintf(stderr, "vmexport verify: backup %s: %s\n", argv[optind],
                    r == -ENOENT ? "not found" : strerror(-r));
            repo_close(repo);
            return EXIT_FAIL;
        } else {
            backup_list_append(&l, b);
        }
    } else {
        r = repo_backup_list(repo, NULL, &l);
        if (r < 0) {
            fprintf(stderr, "vmexport verify: %s: %s\n", repo_path(repo), strerror(-r));
            repo_close(repo);
            return EXIT_FAIL;
        }
        string_list bad = VECTOR_INIT;
        if (repo_backup_list_damaged(repo, &bad) == 0)
            for (size_t i = 0; i < bad.len; i++) {
                printf("backup %s: DAMAGED: its metadata (backup.json) cannot be read\n",
                       bad.ptr[i]);
                damaged_backups++;
            }
        string_list_free(&bad);
    }

    struct idset seen = {0};
    const uint32_t cs = repo_chunk_size(repo);
    uint8_t *buf = malloc(cs);
    uint32_t threshold = (uint32_t)(sample / 100.0 * (double)UINT32_MAX);
    for (size_t i = 0; buf && i < l.len; i++) {
        struct backup *b = l.ptr[i];
        bool bad = false;
        for (size_t k = 0; k < b->disks.len; k++) {
            struct manifest m = {0};
            r = repo_manifest_read(repo, b, b->disks.ptr[k].name, &m);
            if (r < 0) {
                printf("backup %s: disk %s: DAMAGED manifest (%s)\n", b->id,
                       b->disks.ptr[k].name, r == -EBADMSG ? "fails its checks" : strerror(-r));
                bad = true;
                continue;
            }
            for (uint64_t e = 0; e < m.n; e++) {
                if (m.e[e].zero)
                    continue;
                uint32_t pick;
                memcpy(&pick, m.e[e].id.b + 8, sizeof(pick)); /* deterministic sample */
                if (sample < 100 && pick > threshold)
                    continue;
                int8_t st = idset_get(&seen, &m.e[e].id);
                if (!st) {
                    size_t len;
                    int g = repo_chunk_get(repo, &m.e[e].id, buf, cs, &len);
                    st = g == 0 ? 1 : (int8_t)-1;
                    if (g == -ENOENT)
                        st = -2;
                    idset_put(&seen, &m.e[e].id, st);
                    chunks_checked++;
                    if (st < 0)
                        chunks_damaged++;
                }
                if (st < 0) {
                    char hex[2 * HASH_SIZE + 1];
                    chunk_id_to_hex(&m.e[e].id, hex);
                    printf("backup %s: disk %s: offset %" PRIu64 ": chunk %s %s\n", b->id,
                           m.disk, e * (uint64_t)m.chunk_size, hex,
                           st == -2 ? "MISSING" : "DAMAGED");
                    bad = true;
                }
            }
            manifest_free(&m);
        }
        if (bad)
            damaged_backups++;
        else if (!o.json)
            printf("backup %s: ok\n", b->id);
    }
    free(buf);
    free(seen.ids);
    free(seen.state);
    if (o.json)
        printf("{\"type\":\"summary\",\"backups\":%zu,\"damaged_backups\":%" PRIu64
               ",\"chunks_checked\":%" PRIu64 ",\"chunks_damaged\":%" PRIu64 "}\n",
               l.len, damaged_backups, chunks_checked, chunks_damaged);
    else
        printf("%zu backups checked, %" PRIu64 " damaged; %" PRIu64 " chunks read, %" PRIu64
               " bad\n", l.len, damaged_backups, chunks_checked, chunks_damaged);
    backup_list_free(&l);
    repo_close(repo);
    return damaged_backups ? EXIT_FAIL : EXIT_OK;
}

const struct cli_command cmd_verify = {
    .name = "verify",
    .summary = "check that backups can be restored",
    .run = verify_run,
    .usage = "Usage: vmexport verify --repo PATH [BACKUP] [--sample PCT] [--json]\n"
             "\n"
             "Read every manifest and every chunk the backups (or BACKUP) reference, decrypt,\n"
             "decompress and check each against its ID.  Damaged or missing chunks are named\n"
             "with the backups, disks and offsets that need them.  Each chunk is read once\n"
             "however many backups share it.  --sample checks a deterministic PCT% of the\n"
             "chunks (by ID), for quick periodic checks.\n"
             "\n"
             "Options:\n" REPO_OPTIONS_HELP
             "  --sample PCT            check only this percentage of the chunks\n"
             "  --json                  a JSON summary\n"
             "\n"
             "Exit status: 0 all good, 1 damage found or failure, 2 bad usage.\n",
};

/* ---- prune ---- */

static int prune_run(int argc, char **argv)
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
    struct repo_opts o = {0};
    struct prune_policy p = {0};
    bool dry = false, any = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:P:l:d:w:m:nJh", opts, NULL)) != -1) {
        unsigned *dst = NULL;
        switch (c) {
        case 'r':
            o.repo = optarg;
            break;
        case 'P':
            o.passphrase_file = optarg;
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
            o.json = true;
            break;
        case 'h':
            return cli_help(&cmd_prune);
        default:
            return cli_usage_error(&cmd_prune, "unknown option");
        }
        if (dst) {
            char *end;
            unsigned long v = strtoul(optarg, &end, 10);
            if (end == optarg || *end || optarg[0] == '-' || v > 100000)
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
    struct repo *repo = open_repo("prune", &o);
    if (!repo)
        return EXIT_FAIL;
    /* The repository applies the policy per VM under its exclusive lock; we report. */
    backup_list removed = VECTOR_INIT, left = VECTOR_INIT;
    char err[512] = "";
    int r = repo_prune(repo, only_vm, &p, VM_LOCK_TIMEOUT, dry, &removed, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "vmexport prune: %s: %s\n", repo_path(repo),
                err[0] ? err : strerror(-r));
        backup_list_free(&removed);
        repo_close(repo);
        return EXIT_FAIL;
    }
    for (size_t i = 0; i < removed.len; i++) {
        const struct backup *b = removed.ptr[i];
        if (o.json)
            printf("{\"type\":\"remove\",\"backup\":\"%s\",\"vm\":\"%s\",\"time\":%" PRId64
                   ",\"dry_run\":%s}\n",
                   b->id, b->vm_id, b->time, dry ? "true" : "false");
        else
            printf("%s %s  %s\n", dry ? "would remove" : "removed", b->id, b->vm_id);
    }
    size_t kept = 0;
    if (repo_backup_list(repo, only_vm, &left) == 0)
        kept = left.len - (dry ? removed.len : 0);
    if (!o.json)
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
    .run = prune_run,
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

/* ---- gc ---- */

static int gc_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"repo", required_argument, NULL, 'r'},
        {"passphrase-file", required_argument, NULL, 'P'},
        {"dry-run", no_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct repo_opts o = {0};
    bool dry = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:P:nJh", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            o.repo = optarg;
            break;
        case 'P':
            o.passphrase_file = optarg;
            break;
        case 'n':
            dry = true;
            break;
        case 'J':
            o.json = true;
            break;
        case 'h':
            return cli_help(&cmd_gc);
        default:
            return cli_usage_error(&cmd_gc, "unknown option");
        }
    }
    if (argc != optind)
        return cli_usage_error(&cmd_gc, "unexpected argument");
    struct repo *repo = open_repo("gc", &o);
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
    if (o.json) {
        printf("{\"type\":\"summary\",\"dry_run\":%s,\"chunks_total\":%" PRIu64
               ",\"chunks_deleted\":%" PRIu64 ",\"bytes_freed\":%" PRIu64
               ",\"temp_files_removed\":%" PRIu64 ",\"partial_backups_removed\":%" PRIu64 "}\n",
               dry ? "true" : "false", st.chunks_total, st.chunks_deleted, st.bytes_freed,
               st.temp_files_removed, st.partial_backups_removed);
    } else {
        char b[32];
        printf("%s%" PRIu64 " of %" PRIu64 " chunks unreferenced, %s %s; %" PRIu64
               " temporary files and %" PRIu64 " partial backups %s\n",
               dry ? "(dry run) " : "", st.chunks_deleted, st.chunks_total,
               cli_bytes(st.bytes_freed, b, sizeof(b)), dry ? "would be freed" : "freed",
               st.temp_files_removed, st.partial_backups_removed, dry ? "found" : "removed");
    }
    return EXIT_OK;
}

const struct cli_command cmd_gc = {
    .name = "gc",
    .summary = "free chunks no backup uses",
    .run = gc_run,
    .usage = "Usage: vmexport gc --repo PATH [--dry-run] [--json]\n"
             "\n"
             "Delete the chunks that no backup references (after prune), the temporary files\n"
             "and the partial backups that interrupted runs left.  Waits for running backups\n"
             "and holds the repository exclusively while it works.\n"
             "\n"
             "Options:\n" REPO_OPTIONS_HELP
             "  -n, --dry-run           count only\n"
             "  --json                  a JSON summary\n"
             "\n"
             "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};
