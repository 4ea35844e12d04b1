/* Output helpers of the command line: usage errors, stdout buffering and its final check, byte
 * counts, streamed JSON ranges. */
#include <errno.h>
#include <stdarg.h>
#include <string.h>

#include "cli/cli.h"
#include "core/jsonw.h"

int cli_usage_error(const struct cli_command *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "vmexport %s: ", cmd->name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    /* The synopsis is the usage text's first paragraph. */
    const char *end = strstr(cmd->usage, "\n\n");
    int len = end ? (int)(end - cmd->usage) : (int)strlen(cmd->usage);
    fprintf(stderr, "%.*s\nTry 'vmexport %s --help' for more.\n", len, cmd->usage, cmd->name);
    return EXIT_USAGE;
}

/* stdout buffer for long listings: fewer write(2) calls for maps of millions of extents. */
#define OUTPUT_BUFFER_SIZE (256 * 1024)

static char output_buffer[OUTPUT_BUFFER_SIZE];

void cli_buffer_stdout(void)
{
    setvbuf(stdout, output_buffer, _IOFBF, sizeof(output_buffer));
}

int cli_finish_stdout(void)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "vmexport: writing output: %s\n", strerror(errno ? errno : EIO));
        return EXIT_FAIL;
    }
    return EXIT_OK;
}

const char *cli_bytes(uint64_t n, char *buf, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v = (double)n;
    size_t u = 0;
    while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%llu B", (unsigned long long)n);
    else
        snprintf(buf, len, "%.1f %s", v, units[u]);
    return buf;
}

void json_ranges_begin(struct json_ranges *j, FILE *f, const char *key)
{
    j->f = f;
    j->first = true;
    jw_string(f, key);
    fputs(":[", f);
}

int json_ranges_add(struct json_ranges *j, uint64_t start, uint64_t length)
{
    if (fprintf(j->f, "%s{\"start\":%llu,\"length\":%llu}", j->first ? "" : ",",
                (unsigned long long)start, (unsigned long long)length) < 0)
        return -EIO;
    j->first = false;
    return 0;
}

void json_ranges_end(struct json_ranges *j)
{
    fputc(']', j->f);
}
