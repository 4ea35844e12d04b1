/* A freeze/thaw hook for tests/integration/test-security-hooks.sh that reports what it was
 * given: hook_probe OUT [ARGS...] appends to the file OUT
 *
 *   argc N                 arguments after OUT (as "$#" of a script whose $1 is OUT would be)
 *   arg [VALUE]            each of them, between brackets
 *   fd N -> TARGET         each open descriptor, the one used to list them left out
 *   env NAME=VALUE         each environment variable
 *   end
 *
 * A compiled program rather than a script, because a shell keeps the script itself open on a
 * descriptor of its own, which would hide what the daemon passed.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    /* Listed before OUT is opened, so that only inherited descriptors show. */
    char fds[4096] = "";
    size_t n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 3;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d))
            continue;
        char link[300], target[512] = "";
        snprintf(link, sizeof(link), "/proc/self/fd/%s", e->d_name);
        ssize_t t = readlink(link, target, sizeof(target) - 1);
        if (t > 0)
            target[t] = '\0';
        int w = snprintf(fds + n, sizeof(fds) - n, "fd %s -> %s\n", e->d_name, target);
        if (w > 0 && (size_t)w < sizeof(fds) - n)
            n += (size_t)w;
    }
    closedir(d);

    FILE *out = fopen(argv[1], "ae");
    if (!out)
        return 4;
    fprintf(out, "argc %d\n", argc - 2);
    for (int i = 2; i < argc; i++)
        fprintf(out, "arg [%s]\n", argv[i]);
    fputs(fds, out);
    for (char **v = environ; *v; v++)
        fprintf(out, "env %s\n", *v);
    fputs("end\n", out);
    return fclose(out) == 0 ? 0 : 5;
}
