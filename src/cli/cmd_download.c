/* vmexport download: a snapshot's disks into sparse local files, in full or as the changes
 * since an earlier snapshot (the engine is backup/download.c). */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backup/download.h"
#include "cli/cli.h"
#include "cli/remote.h"
#include "client/client.h"
#include "client/rest.h"
#include "core/clock.h"
#include "core/cleanup.h"
#include "core/jsonw.h"

#define DOWNLOAD_JOBS_DEFAULT 4
#define NS_PER_S              1e9

static int report(const struct download_request *rq, const struct download_result *res,
                  const char *out_dir, double secs, bool json)
{
    const char *vm = rq->vm, *snap = rq->snapshot, *prev = rq->base;
    if (json) {
        FILE *f = stdout;
        bool first = true;
        fputc('{', f);
        jw_kv_str(f, &first, "vm", vm);
        jw_kv_str(f, &first, "snapshot", snap);
        jw_kv_str(f, &first, "compared_to", prev);
        jw_kv_str(f, &first, "out_dir", out_dir);
        jw_key(f, &first, "disks");
        fputc('[', f);
        for (size_t i = 0; i < res->ndisks; i++) {
            const struct download_disk *d = &res->disks[i];
            bool dfirst = true;
            fputs(i ? ",{" : "{", f);
            jw_kv_str(f, &dfirst, "name", d->name);
            jw_kv_u64(f, &dfirst, "size", d->size);
            jw_kv_bool(f, &dfirst, "created", d->created);
            jw_kv_u64(f, &dfirst, "chunk_bytes", d->chunk_bytes);
            jw_kv_u64(f, &dfirst, "zeroed_bytes", d->zeroed_bytes);
            fputc('}', f);
        }
        fputc(']', f);
        jw_kv_u64(f, &first, "bytes_fetched", res->bytes_fetched);
        jw_kv_u64(f, &first, "bytes_transferred", res->bytes_transferred);
        jw_kv_u64(f, &first, "bytes_zeroed", res->bytes_zeroed);
        jw_key(f, &first, "seconds");
        fprintf(f, "%.3f}\n", secs);
        return cli_finish_stdout();
    }
    char b1[32], b2[32], b3[32];
    double rate = secs > 0 ? (double)res->bytes_fetched / secs : 0;
    printf("%s snapshot %s of %s into %s: %zu disks, %s fetched in %.2f s (%s/s)",
           prev ? "applied" : "downloaded", snap, vm, out_dir, res->ndisks,
           cli_bytes(res->bytes_fetched, b1, sizeof(b1)), secs,
           cli_bytes((uint64_t)rate, b2, sizeof(b2)));
    if (prev)
        printf(", changes since %s, %s zeroed", prev, cli_bytes(res->bytes_zeroed, b3, sizeof(b3)));
    printf("\n");
    return cli_finish_stdout();
}

static const struct cli_option download_options[] = {
    {"out-dir", 'o', "DIR", "where the disk files go (required)"},
    {"diff-from", 'd', "PREV", "apply the changes since snapshot PREV to the files in DIR"},
    {NULL, 0, NULL, NULL},
};

static int download_run(int argc, char **argv)
{
    const char *out_dir = NULL, *prev = NULL;
    struct cli_args a = {0};
    int c;
    while ((c = cli_next(&a, &cmd_download, argc, argv)) > 0) {
        if (c == 'o')
            out_dir = a.arg;
        else if (c == 'd')
            prev = a.arg;
    }
    if (c == CLI_EXIT)
        return a.status;
    unsigned jobs = a.jobs ? a.jobs : DOWNLOAD_JOBS_DEFAULT;
    bool json = a.json;
    int first = a.first;
    if (argc - first != 2)
        return cli_usage_error(&cmd_download, "expected VM and SNAPSHOT");
    if (!out_dir || !out_dir[0])
        return cli_usage_error(&cmd_download, "--out-dir DIR is required");
    if (prev && !prev[0])
        return cli_usage_error(&cmd_download, "--diff-from needs a snapshot ID");
    const char *vm = argv[first], *snap = argv[first + 1];

    int64_t t0 = clock_monotonic_ns();
    /* The output directory first: no need to ask the server when it cannot be written. */
    if (!prev && mkdir(out_dir, S_IRWXU | S_IRGRP | S_IXGRP | S_IROTH | S_IXOTH) < 0 &&
        errno != EEXIST) {
        fprintf(stderr, "vmexport download: %s: %s\n", out_dir, strerror(errno));
        return EXIT_FAIL;
    }
    CLEANUP_CLOSE int dirfd = open(out_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        fprintf(stderr, "vmexport download: %s: %s\n", out_dir, strerror(errno));
        return EXIT_FAIL;
    }

    struct client *cl = cli_client_connect("download");
    if (!cl)
        return EXIT_FAIL;
    /* zeroed_in_chunks false: the zeroed ranges are written as zeros here, not fetched (the
     * daemon lists them in "chunks" too for clients that read only "chunks"). */
    struct client_snapshot_query q = CLIENT_SNAPSHOT_QUERY_DEFAULT;
    q.compare_to = prev;
    q.zeroed_in_chunks = false;
    json_t *snapshot;
    if (client_get_snapshot(cl, vm, snap, &q, &snapshot) < 0)
        return remote_fail("download", cl);

    struct download_request rq = {.vm = vm,
                                  .snapshot = snap,
                                  .answer = snapshot,
                                  .base = prev,
                                  .dirfd = dirfd,
                                  .dir = out_dir,
                                  .jobs = jobs};
    struct download_result res;
    int r = download_snapshot(cl, &rq, &res);
    client_free(cl);
    int ret;
    if (r < 0) {
        fprintf(stderr, "vmexport download: %s/%s: %s\n", vm, snap, res.error);
        ret = EXIT_FAIL;
    } else {
        double secs = (double)(clock_monotonic_ns() - t0) / NS_PER_S;
        ret = report(&rq, &res, out_dir, secs, json);
    }
    download_result_free(&res);
    json_decref(snapshot);
    return ret;
}

const struct cli_command cmd_download = {
    .name = "download",
    .summary = "download a snapshot's disks (in full or the changes) into sparse files",
    .run = download_run,
    .usage =
        "Usage: vmexport download [--diff-from PREV] [--jobs N] [--json] -o DIR VM SNAPSHOT\n"
        "\n"
        "Download the disks of snapshot SNAPSHOT of VM into DIR, one sparse file per disk,\n"
        "named after the disk (names with '/' or starting with '.' are refused).\n"
        "\n"
        "Full download (no --diff-from): DIR is created if missing; each file is created (or\n"
        "truncated) to the disk's size and only the disk's data extents (the snapshot's chunks)\n"
        "are fetched, with ranged GETs of at most 8 MiB; holes and 4 KiB blocks of zeros stay\n"
        "holes.  vmexportd leaves blocks of zeros out of its answers (docs/api.md, \"Sparse\n"
        "answers\"); other servers send them, and they are still not written.\n"
        "\n"
        "Incremental (--diff-from PREV): DIR must hold the disks as of the older snapshot PREV\n"
        "(a previous download).  Only what changed since PREV is fetched: each file is set to\n"
        "the new size, the ranges that became zeros are punched out (or overwritten with zeros\n"
        "where the filesystem cannot punch holes) and the changed ranges are written in place\n"
        "(their blocks of zeros punched out too).\n"
        "Afterwards the files equal SNAPSHOT bit for bit.  A disk added since PREV is\n"
        "downloaded in full.  Keep PREV on the server until this has succeeded.\n"
        "\n"
        "The files are fsynced at the end; what is written leaves the page cache once it is on\n"
        "the disk.  A failed download leaves them incomplete: repeat it (a full one for a\n"
        "failed full download).\n"
        "\n",
    .common = CLI_JSON | CLI_JOBS | CLI_CONNECTION,
    .options = download_options,
    .json_short = 'j',
    .jobs_short = 'J',
    .json_help = "print {\"vm\",\"snapshot\",\"compared_to\",\"out_dir\",\n"
                 "\"disks\":[{\"name\",\"size\",\"created\",\"chunk_bytes\",\n"
                 "\"zeroed_bytes\"}],\"bytes_fetched\",\"bytes_transferred\",\n"
                 "\"bytes_zeroed\",\"seconds\"}: bytes_fetched counts the disk\n"
                 "bytes read, bytes_transferred the body bytes that came\n"
                 "over the network (fewer when the server left zeros out)",
    .jobs_help = "parallel connections, 1 to 64 (default 4)",
    .epilog = "Exit status: 0 success, 1 failure (unknown VM or snapshot, PREV not older, a file\n"
              "missing for --diff-from, server unreachable, write error ...), 2 bad usage.\n",
};
