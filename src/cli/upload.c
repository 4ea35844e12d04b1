/* Disk uploads from the command line; see upload.h.  The work is backup/upload.c's; this
 * connects, shows progress and reports each disk as a line of text or of JSON. */
#include "cli/upload.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backup/upload.h"
#include "cli/cli.h"
#include "cli/progress.h"
#include "client/client.h"
#include "core/cleanup.h"
#include "core/jsonw.h"
#include "repo/repo.h"

/* Connections of a file upload when the caller gives 0. */
#define UPLOAD_DEFAULT_JOBS 4

/* The line that reports an uploaded disk. */
static void report(const char *vm, const char *disk, const struct upload_result *res, double secs,
                   bool json)
{
    if (json) {
        bool first = true;
        putchar('{');
        jw_kv_str(stdout, &first, "type", "uploaded");
        jw_kv_str(stdout, &first, "vm", vm);
        jw_kv_str(stdout, &first, "disk", disk);
        jw_kv_u64(stdout, &first, "size", res->size);
        jw_kv_u64(stdout, &first, "bytes_sent", res->bytes_sent);
        jw_kv_u64(stdout, &first, "zero_bytes", res->zero_bytes);
        jw_kv_u64(stdout, &first, "zero_requests", res->zero_requests);
        jw_key(stdout, &first, "seconds");
        printf("%.3f}\n", secs);
    } else {
        char b1[32], b2[32];
        printf("uploaded disk %s of VM %s: %s, %s of data sent, zeros in %llu requests, %.1f s\n",
               disk, vm, cli_bytes(res->size, b1, sizeof(b1)),
               cli_bytes(res->bytes_sent, b2, sizeof(b2)), (unsigned long long)res->zero_requests,
               secs);
    }
}

int upload_sparse_file(const char *cmd, const char *path, const char *vm, const char *disk,
                       unsigned jobs)
{
    CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        fprintf(stderr, "vmexport %s: %s: %s\n", cmd, path, strerror(errno));
        return EXIT_FAIL;
    }
    struct client *c = cli_client_connect(cmd);
    if (!c)
        return EXIT_FAIL;
    double t0 = progress_now();
    struct progress_sink prog = {.what = "upload"};
    struct backup_progress up = progress_sink_callbacks(&prog);
    struct upload_result res;
    int r = upload_file(c, fd, vm, disk, jobs ? jobs : UPLOAD_DEFAULT_JOBS, &up, &res);
    client_free(c);
    if (r < 0) {
        fprintf(stderr, "vmexport %s: %s\n", cmd, res.error);
        return EXIT_FAIL;
    }
    report(vm, disk, &res, progress_now() - t0, false);
    return cli_finish_stdout();
}

int upload_backup(const char *cmd, struct repo *repo, const struct backup *b, const char *disk,
                  const char *vm, unsigned jobs, bool json)
{
    struct client *c = cli_client_connect(cmd);
    if (!c)
        return EXIT_FAIL;
    int ret = EXIT_OK;
    for (size_t i = 0; i < b->disks.len && ret == EXIT_OK; i++) {
        const char *name = b->disks.ptr[i].name;
        if (disk && strcmp(disk, name))
            continue;
        double t0 = progress_now();
        struct progress_sink prog = {.what = "upload", .json = json};
        struct backup_progress up = progress_sink_callbacks(&prog);
        struct upload_result res;
        int r = upload_backup_disk(c, repo, b, name, vm, jobs, &up, &res);
        if (r < 0) {
            fprintf(stderr, "vmexport %s: %s\n", cmd, res.error);
            ret = EXIT_FAIL;
        } else {
            report(vm, name, &res, progress_now() - t0, json);
        }
    }
    client_free(c);
    return ret == EXIT_OK ? cli_finish_stdout() : ret;
}
