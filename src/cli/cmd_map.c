/* vmexport map: the extent map of a file (FIEMAP, or SEEK_DATA/SEEK_HOLE where there is none),
 * as text or streamed JSON. */
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
#include "fs/fsinfo.h"
#include "fs/fsmap.h"

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
    if (json) {
        bool first_key = true;
        putchar('{');
        jw_kv_u64(stdout, &first_key, "size", (uint64_t)st.st_size);
        jw_kv_u64(stdout, &first_key, "block_size", fi.block_size);
        jw_kv_str(stdout, &first_key, "method", method);
        jw_key(stdout, &first_key, "extents");
        putchar('[');
    } else {
        printf("# %s: %llu bytes, %s, block size %u, map from %s\n"
               "# %18s %18s %18s  flags\n",
               path, (unsigned long long)st.st_size, fi.name, fi.block_size, method, "start",
               "length", "physical_start");
    }

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
        printf("# %llu extents, %s of data\n", (unsigned long long)n,
               cli_bytes(data, b, sizeof(b)));
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
