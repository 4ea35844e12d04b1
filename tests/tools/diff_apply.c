/* Test tool: apply a diff to a copy of the base file.
 *
 *   vmexport diff BASE NEW | diff_apply TARGET NEW
 *
 * Reads the text output of 'vmexport diff' ("changed START LENGTH", "zeroed START LENGTH" and a
 * "# ... size N ..." header), copies NEW's bytes over changed ranges of TARGET, writes zeros over
 * zeroed ranges and truncates TARGET to NEW's size.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BUF (1 << 20)

static void die(const char *what)
{
    fprintf(stderr, "diff_apply: %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: diff_apply TARGET NEW < diff.txt\n");
        return 2;
    }
    int t = open(argv[1], O_RDWR);
    int n = open(argv[2], O_RDONLY);
    if (t < 0 || n < 0)
        die("open");
    static char buf[BUF], zeros[BUF];
    char line[512];
    int64_t size = -1;
    while (fgets(line, sizeof(line), stdin)) {
        char tag[16];
        uint64_t s, l;
        const char *p = strstr(line, ", size ");
        if (line[0] == '#') {
            if (p && size < 0)
                size = strtoll(p + 7, NULL, 10);
            continue;
        }
        if (sscanf(line, "%15s %" SCNu64 " %" SCNu64, tag, &s, &l) != 3) {
            fprintf(stderr, "diff_apply: bad line: %s", line);
            return 1;
        }
        int changed = strcmp(tag, "changed") == 0;
        if (!changed && strcmp(tag, "zeroed") != 0) {
            fprintf(stderr, "diff_apply: bad tag: %s\n", tag);
            return 1;
        }
        while (l > 0) {
            size_t chunk = l < BUF ? l : BUF;
            const char *src = zeros;
            if (changed) {
                ssize_t r = pread(n, buf, chunk, (off_t)s);
                if (r < 0)
                    die("pread");
                memset(buf + r, 0, chunk - (size_t)r);
                src = buf;
            }
            if (pwrite(t, src, chunk, (off_t)s) != (ssize_t)chunk)
                die("pwrite");
            s += chunk;
            l -= chunk;
        }
    }
    if (size < 0) {
        fprintf(stderr, "diff_apply: no size header in the diff\n");
        return 1;
    }
    if (ftruncate(t, size) < 0)
        die("ftruncate");
    return close(t) < 0 ? 1 : 0;
}
