/* Local file commands: map (extent map of a file), clone (reflink or hashed sparse copy) and
 * diff (changed and zeroed ranges between two files). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/cleanup.h"
#include "core/extent.h"
#include "fs/clone.h"
#include "fs/fsdiff.h"
#include "fs/fsinfo.h"
#include "fs/fsmap.h"

/* ---- map ---------------------------------------------------------------------------------- */

static const struct cli_option map_options[] = {
    {"all", 'a', NULL, "also list unwritten extents (marked \"unwritten\":true)"},
    {NULL, 0, NULL, NULL},
};

static int map_run(int argc, char **argv)
{
    bool all = false;
    struct cli_args a = {0};
    int c;
    while ((c = cli_next(&a, &cmd_map, argc, argv)) > 0)
        all = true; /* --all, the only option of its own */
    if (c == CLI_EXIT)
        return a.status;
    bool json = a.json;
    int first = a.first;
    if (argc - first != 1)
        return cli_usage_error(&cmd_map, "expected one FILE");
    const char *path = argv[first];

    CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        fprintf(stderr, "vmexport map: %s: %s\n", path, strerror(errno));
        return EXIT_FAIL;
    }
    if (!S_ISREG(st.st_mode)) {
        fprintf(stderr, "vmexport map: %s: not a regular file\n", path);
        return EXIT_FAIL;
    }
    struct fs_info fi;
    int r = fs_info_fd(fd, &fi);
    struct fs_map m;
    if (r < 0 || (r = fs_map_open(&m, fd, (uint64_t)st.st_size, 0)) < 0) {
        fprintf(stderr, "vmexport map: %s: %s\n", path, strerror(-r));
        return EXIT_FAIL;
    }

    cli_buffer_stdout();
    const char *method = fs_map_has_physical(&m) ? "fiemap" : "seek";
    if (json)
        printf("{\"size\":%llu,\"block_size\":%u,\"method\":\"%s\",\"extents\":[",
               (unsigned long long)st.st_size, fi.block_size, method);
    else
        printf("# %s: %llu bytes, %s, block size %u, map from %s\n"
               "# %18s %18s %18s  flags\n",
               path, (unsigned long long)st.st_size, fi.name, fi.block_size, method, "start",
               "length", "physical_start");

    struct extent e;
    uint64_t n = 0, data = 0;
    while ((r = fs_map_next(&m, &e)) > 0) {
        if (!all && !extent_is_data(&e))
            continue;
        bool shared = e.flags & EXTENT_SHARED;
        if (json)
            printf("%s{\"start\":%llu,\"length\":%llu,\"physical_start\":%llu,\"shared\":%s%s}",
                   n ? "," : "", (unsigned long long)e.start, (unsigned long long)e.length,
                   (unsigned long long)e.physical, shared ? "true" : "false",
                   extent_is_data(&e) ? "" : ",\"unwritten\":true");
        else
            printf("  %18llu %18llu %18llu  %s%s%s\n", (unsigned long long)e.start,
                   (unsigned long long)e.length, (unsigned long long)e.physical,
                   shared ? "shared " : "", extent_is_data(&e) ? "" : "unwritten ",
                   e.flags & EXTENT_PHYS_UNKNOWN ? "physical-unknown" : "");
        n++;
        if (extent_is_data(&e))
            data += e.length;
    }
    fs_map_close(&m);
    if (r < 0) {
        fflush(stdout);
        fprintf(stderr, "vmexport map: %s: reading the extent map: %s\n", path, strerror(-r));
        return EXIT_FAIL;
    }
    if (json) {
        printf("]}\n");
    } else {
        char b[32];
        printf("# %llu extents, %s of data\n", (unsigned long long)n, cli_bytes(data, b, sizeof(b)));
    }
    return cli_finish_stdout();
}

const struct cli_command cmd_map = {
    .name = "map",
    .summary = "print the data extents of a file",
    .run = map_run,
    .usage = "Usage: vmexport map [--json] [--all] FILE\n"
             "\n"
             "Print the extent map of FILE: the byte ranges that hold data, with the physical\n"
             "device offset each maps to and whether its blocks are shared with another file\n"
             "(a reflink clone).  The map comes from FIEMAP (after flushing delayed allocations)\n"
             "or, on filesystems without it, from SEEK_DATA/SEEK_HOLE, which gives no physical\n"
             "offsets.  Holes and preallocated (unwritten) ranges read as zeros and are not data.\n"
             "\n",
    .common = CLI_JSON,
    .options = map_options,
    .json_short = 'j',
    .json_help = "one JSON object: {\"size\":N,\"block_size\":N,\"method\":\"fiemap\"|\"seek\",\n"
                 "\"extents\":[{\"start\":N,\"length\":N,\"physical_start\":N,\"shared\":B}]}",
    .epilog = "The map is streamed: files with millions of extents use constant memory.\n"
              "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};

/* ---- clone -------------------------------------------------------------------------------- */

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
        printf("{\"mode\":\"%s\",\"size\":%llu,\"bytes_read\":%llu,\"bytes_written\":%llu",
               clone_mode_name(res.mode), (unsigned long long)res.size,
               (unsigned long long)res.bytes_read, (unsigned long long)res.bytes_written);
        if (res.mode == CLONE_COPY)
            printf(",\"hash\":\"%s\"", blockhash_algo_name(res.hash));
        printf("}\n");
    } else {
        char b1[32], b2[32];
        if (res.mode == CLONE_REFLINK)
            printf("%s -> %s: reflink clone, %s, no data copied\n", src, dst,
                   cli_bytes(res.size, b1, sizeof(b1)));
        else
            printf("%s -> %s: sparse copy, %s, %s of data written, %s block hashes in %s%s\n",
                   src, dst, cli_bytes(res.size, b1, sizeof(b1)),
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

/* ---- diff --------------------------------------------------------------------------------- */

/* Human output: one line per range, tagged. */
struct text_sink {
    const char *tag;
    uint64_t bytes, count;
    FILE *f;
};

static int text_emit(void *opaque, uint64_t start, uint64_t length)
{
    struct text_sink *t = opaque;
    t->bytes += length;
    t->count++;
    if (fprintf(t->f, "%-8s %18llu %18llu\n", t->tag, (unsigned long long)start,
                (unsigned long long)length) < 0)
        return -EIO;
    return 0;
}

struct json_sink {
    struct json_ranges j;
    uint64_t bytes, count;
};

static int json_emit(void *opaque, uint64_t start, uint64_t length)
{
    struct json_sink *s = opaque;
    s->bytes += length;
    s->count++;
    return json_ranges_add(&s->j, start, length);
}

static int copy_stream(FILE *from, FILE *to)
{
    char buf[65536];
    size_t n;
    rewind(from);
    while ((n = fread(buf, 1, sizeof(buf), from)) > 0)
        if (fwrite(buf, 1, n, to) != n)
            return -EIO;
    return ferror(from) ? -EIO : 0;
}

static const struct cli_option diff_options[] = {
    {"mode", 'm', "MODE", "force a mode; fails if it cannot be used (default auto)"},
    {NULL, 0, NULL, NULL},
};

static int diff_run(int argc, char **argv)
{
    enum diff_mode mode = DIFF_AUTO;
    struct cli_args a = {0};
    int c;
    while ((c = cli_next(&a, &cmd_diff, argc, argv)) > 0)
        if (diff_mode_parse(a.arg, &mode) < 0) /* --mode, the only option of its own */
            return cli_usage_error(&cmd_diff,
                                   "--mode must be auto, reflink, hash or read, not '%s'", a.arg);
    if (c == CLI_EXIT)
        return a.status;
    bool json = a.json;
    int first = a.first;
    if (argc - first != 2)
        return cli_usage_error(&cmd_diff, "expected BASE and NEW");
    const char *base = argv[first], *new = argv[first + 1];

    struct fs_diff d;
    int r = fs_diff_open(&d, base, new, mode);
    if (r == -EOPNOTSUPP) {
        fprintf(stderr, "vmexport diff: %s -> %s: %s mode impossible: %s\n", base, new,
                diff_mode_name(mode), d.why);
        return EXIT_FAIL;
    }
    if (r < 0) {
        /* Name the file that failed to open. */
        const char *which = access(base, R_OK) < 0 ? base : new;
        fprintf(stderr, "vmexport diff: %s: %s\n", which,
                r == -EINVAL ? "not a regular file" : strerror(-r));
        return EXIT_FAIL;
    }

    cli_buffer_stdout();
    if (json) {
        /* Changed ranges go straight out; zeroed ones wait in a temporary file so that both
         * arrays stream in constant memory. */
        FILE *zf = tmpfile();
        if (!zf) {
            fprintf(stderr, "vmexport diff: temporary file: %s\n", strerror(errno));
            fs_diff_close(&d);
            return EXIT_FAIL;
        }
        printf("{\"mode\":\"%s\",\"block_size\":%u,\"size\":%llu,\"base_size\":%llu,",
               diff_mode_name(d.mode), d.block_size, (unsigned long long)d.new_size,
               (unsigned long long)d.base_size);
        if (d.mode == DIFF_HASH)
            printf("\"hash\":\"%s\",", blockhash_algo_name(d.hash));
        struct json_sink cs, zs;
        memset(&cs, 0, sizeof(cs));
        memset(&zs, 0, sizeof(zs));
        json_ranges_begin(&cs.j, stdout, "changed");
        json_ranges_begin(&zs.j, zf, "zeroed");
        struct extent_sink ck = {.emit = json_emit, .opaque = &cs};
        struct extent_sink zk = {.emit = json_emit, .opaque = &zs};
        r = fs_diff_run(&d, &ck, &zk);
        json_ranges_end(&cs.j);
        json_ranges_end(&zs.j);
        if (r == 0) {
            fputc(',', stdout);
            r = copy_stream(zf, stdout);
            printf(",\"changed_bytes\":%llu,\"zeroed_bytes\":%llu}\n",
                   (unsigned long long)cs.bytes, (unsigned long long)zs.bytes);
        }
        fclose(zf);
    } else {
        struct text_sink cs = {.tag = "changed", .f = stdout};
        struct text_sink zs = {.tag = "zeroed", .f = stdout};
        struct extent_sink ck = {.emit = text_emit, .opaque = &cs};
        struct extent_sink zk = {.emit = text_emit, .opaque = &zs};
        printf("# %s -> %s: mode %s, block size %u, size %llu (base %llu)%s%s\n", base, new,
               diff_mode_name(d.mode), d.block_size, (unsigned long long)d.new_size,
               (unsigned long long)d.base_size, d.mode == DIFF_HASH ? ", digest " : "",
               d.mode == DIFF_HASH ? blockhash_algo_name(d.hash) : "");
        r = fs_diff_run(&d, &ck, &zk);
        if (r == 0) {
            char b1[32], b2[32];
            printf("# %s changed in %llu ranges, %s zeroed in %llu ranges\n",
                   cli_bytes(cs.bytes, b1, sizeof(b1)), (unsigned long long)cs.count,
                   cli_bytes(zs.bytes, b2, sizeof(b2)), (unsigned long long)zs.count);
        }
    }
    enum diff_mode used = d.mode;
    fs_diff_close(&d);
    if (r < 0) {
        fflush(stdout);
        fprintf(stderr, "vmexport diff: %s -> %s (%s mode): %s\n", base, new,
                diff_mode_name(used), strerror(-r));
        return EXIT_FAIL;
    }
    return cli_finish_stdout();
}

const struct cli_command cmd_diff = {
    .name = "diff",
    .summary = "list the byte ranges that changed between two files",
    .run = diff_run,
    .usage =
        "Usage: vmexport diff [--mode auto|reflink|hash|read] [--json] BASE NEW\n"
        "\n"
        "List the ranges of NEW that differ from BASE.  \"changed\" ranges hold new data;\n"
        "\"zeroed\" ranges were data in BASE and read as zeros in NEW (discard, punch-hole,\n"
        "zero-range).  Copying NEW's bytes over the changed ranges of a copy of BASE, writing\n"
        "zeros over the zeroed ranges and truncating it to NEW's size gives NEW exactly.\n"
        "The result may over-report, never under-report.\n"
        "\n"
        "Modes (auto picks the first that applies):\n"
        "  reflink  both files on one XFS/btrfs/OCFS2 filesystem and NEW a clone of BASE (or\n"
        "           the reverse): compare the FIEMAP extent maps; no data is read; precise\n"
        "           to the filesystem block.\n"
        "  hash     BASE was made by 'vmexport clone --mode copy' and has a fresh BASE.vxhash:\n"
        "           read NEW only, compare 64 KiB block digests (with the sidecar's\n"
        "           algorithm, xxh128 or sha256; see clone --hash).\n"
        "  read     read both files and compare 4 KiB blocks.\n"
        "\n",
    .common = CLI_JSON,
    .options = diff_options,
    .json_short = 'j',
    .json_help = "{\"mode\",\"block_size\",\"size\",\"base_size\",\"hash\" (hash mode),\n"
                 " \"changed\":[{\"start\",\"length\"}],\"zeroed\":[...],\n"
                 " \"changed_bytes\",\"zeroed_bytes\"}",
    .epilog = "Exit status: 0 success, 1 failure, 2 bad usage.\n",
};
