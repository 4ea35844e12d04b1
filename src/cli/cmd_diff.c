/* vmexport diff: the changed and zeroed ranges between two files, by extent maps, block hashes
 * or reading. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/cleanup.h"
#include "core/extent.h"
#include "core/jsonw.h"
#include "fs/fsdiff.h"

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
        bool first_key = true;
        putchar('{');
        jw_kv_str(stdout, &first_key, "mode", diff_mode_name(d.mode));
        jw_kv_u64(stdout, &first_key, "block_size", d.block_size);
        jw_kv_u64(stdout, &first_key, "size", d.new_size);
        jw_kv_u64(stdout, &first_key, "base_size", d.base_size);
        if (d.mode == DIFF_HASH)
            jw_kv_str(stdout, &first_key, "hash", blockhash_algo_name(d.hash));
        putchar(','); /* the range arrays follow */
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
            printf(",\"changed_bytes\":%llu,\"zeroed_bytes\":%llu}\n", (unsigned long long)cs.bytes,
                   (unsigned long long)zs.bytes);
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
        fprintf(stderr, "vmexport diff: %s -> %s (%s mode): %s\n", base, new, diff_mode_name(used),
                strerror(-r));
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
