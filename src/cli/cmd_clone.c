/* vmexport clone: a point-in-time copy of a file, a reflink clone or a sparse copy with a
 * block-hash sidecar. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/cleanup.h"
#include "core/jsonw.h"
#include "fs/clone.h"
#include "fs/fsinfo.h"

static void clone_explain(const char *src, const char *dst, int r, enum clone_mode mode)
{
    struct fs_info fi = {.name = "this filesystem"};
    int fd = open(src, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        fs_info_fd(fd, &fi);
        close(fd);
    }
    fprintf(stderr, "vmexport clone: %s -> %s: ", src, dst);
    if (r == -EEXIST)
        fprintf(stderr, "%s already exists (remove it first; clone never overwrites)\n", dst);
    else if (r == -EOPNOTSUPP && mode == CLONE_REFLINK)
        fprintf(stderr,
                "reflink not supported on %s (use --mode copy or --mode auto, or keep disks on "
                "XFS with reflink=1, btrfs or OCFS2)\n",
                fi.name);
    else if (r == -EXDEV)
        fprintf(stderr, "source and destination are on different filesystems; a reflink "
                        "needs both on one (use --mode copy)\n");
    else if (r == -EISDIR)
        fprintf(stderr, "%s is a directory, not a disk image\n", src);
    else if (r == -EINVAL)
        fprintf(stderr, "%s is not a regular file\n", src);
    else if (r == -ENOSPC)
        fprintf(stderr, "no space left on the destination filesystem (nothing was left at %s)\n",
                dst);
    else
        fprintf(stderr, "%s\n", strerror(-r));
}

/* Key of --hash, which has no short form. */
#define KEY_HASH CLI_LONG_ONLY

static const struct cli_option clone_options[] = {
    {"mode", 'm', "MODE", "auto, reflink or copy (default auto)"},
    {"hash", KEY_HASH, "ALGO",
     "digest of a copy's blocks: xxh128 (default; XXH3-128, hashes far\n"
     "faster than the disk reads, detects any accidental change) or\n"
     "sha256 (about 10x the CPU; also resists blocks crafted to collide,\n"
     "for disks written by someone you do not trust)"},
    {NULL, 0, NULL, NULL},
};

static int clone_run(int argc, char **argv)
{
    enum clone_mode mode = CLONE_AUTO;
    enum blockhash_algo hash = BLOCKHASH_DEFAULT;
    struct cli_args a = {0};
    int c;
    while ((c = cli_next(&a, &cmd_clone, argc, argv)) > 0) {
        if (c == 'm' && clone_mode_parse(a.arg, &mode) < 0)
            return cli_usage_error(&cmd_clone, "--mode must be auto, reflink or copy, not '%s'",
                                   a.arg);
        if (c == KEY_HASH && blockhash_algo_parse(a.arg, &hash) < 0)
            return cli_usage_error(&cmd_clone, "--hash must be xxh128 or sha256, not '%s'", a.arg);
    }
    if (c == CLI_EXIT)
        return a.status;
    bool json = a.json;
    int first = a.first;
    if (argc - first != 2)
        return cli_usage_error(&cmd_clone, "expected SRC and DST");
    const char *src = argv[first], *dst = argv[first + 1];

    struct clone_result res;
    int r = fs_clone(src, dst, mode, hash, &res);
    if (r < 0) {
        clone_explain(src, dst, r, mode);
        return EXIT_FAIL;
    }
    if (json) {
        bool first_key = true;
        putchar('{');
        jw_kv_str(stdout, &first_key, "mode", clone_mode_name(res.mode));
        jw_kv_u64(stdout, &first_key, "size", res.size);
        jw_kv_u64(stdout, &first_key, "bytes_read", res.bytes_read);
        jw_kv_u64(stdout, &first_key, "bytes_written", res.bytes_written);
        if (res.mode == CLONE_COPY)
            jw_kv_str(stdout, &first_key, "hash", blockhash_algo_name(res.hash));
        printf("}\n");
    } else {
        char b1[32], b2[32];
        if (res.mode == CLONE_REFLINK)
            printf("%s -> %s: reflink clone, %s, no data copied\n", src, dst,
                   cli_bytes(res.size, b1, sizeof(b1)));
        else
            printf("%s -> %s: sparse copy, %s, %s of data written, %s block hashes in %s%s\n", src,
                   dst, cli_bytes(res.size, b1, sizeof(b1)),
                   cli_bytes(res.bytes_written, b2, sizeof(b2)), blockhash_algo_name(res.hash), dst,
                   BLOCKHASH_SUFFIX);
    }
    return cli_finish_stdout();
}

const struct cli_command cmd_clone = {
    .name = "clone",
    .summary = "snapshot a file (reflink clone or hashed sparse copy)",
    .run = clone_run,
    .usage =
        "Usage: vmexport clone [--mode auto|reflink|copy] [--hash xxh128|sha256] [--json] SRC DST\n"
        "\n"
        "Make DST a point-in-time copy of SRC.\n"
        "\n"
        "  reflink  share SRC's blocks (FICLONE on XFS, btrfs and OCFS2):\n"
        "           instant, no data copied; later diffs compare extent maps and read no data.\n"
        "  copy     sparse copy: holes and all-zero blocks stay holes; a digest per 64 KiB\n"
        "           block (--hash) is recorded in DST.vxhash so a later diff against DST reads\n"
        "           only the newer file.  Uncached parts of SRC are read with O_DIRECT, and\n"
        "           DST's pages leave the page cache once written back: a copy of a large disk\n"
        "           does not push the host's cached data out.\n"
        "  auto     reflink where the filesystem can, else copy (default).\n"
        "\n"
        "DST must not exist.  It appears atomically (temporary file, fsync, rename); on any\n"
        "failure nothing is left at DST.\n"
        "\n",
    .common = CLI_JSON,
    .options = clone_options,
    .json_short = 'j',
    .json_help = "print {\"mode\",\"size\",\"bytes_read\",\"bytes_written\"} and, for\n"
                 "a copy, \"hash\"",
    .epilog = "Exit status: 0 success, 1 failure (e.g. reflink not supported), 2 bad usage.\n",
};
