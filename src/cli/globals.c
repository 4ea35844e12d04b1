/* Global options of the command line (connection settings, verbosity; their table is in
 * options.c) and the logged-in client the remote commands build from them and from the
 * environment. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "client/client.h"
#include "core/log.h"

/* Longest password read from --password-file. */
#define PASSWORD_MAX 4096

/* The first line of path (without its line end) into buf. */
static int read_password_file(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    int r = 0;
    if (!fgets(buf, (int)len, f))
        r = ferror(f) ? -EIO : -ENODATA;
    else if (strlen(buf) == len - 1 && buf[len - 2] != '\n')
        r = -E2BIG;
    fclose(f);
    if (r == 0)
        buf[strcspn(buf, "\r\n")] = '\0';
    return r;
}

struct client *cli_client_connect(const char *cmd)
{
    struct cli_globals *g = &cli_globals;
    const char *server = g->server ? g->server : getenv("VMEXPORT_SERVER");
    const char *user = g->user ? g->user : getenv("VMEXPORT_USER");
    const char *cacert = g->cacert ? g->cacert : getenv("VMEXPORT_CACERT");
    if (!server || !server[0]) {
        fprintf(stderr, "vmexport %s: no server: use --server URL or VMEXPORT_SERVER\n", cmd);
        return NULL;
    }
    if (!user || !user[0]) {
        fprintf(stderr, "vmexport %s: no user: use --user NAME or VMEXPORT_USER\n", cmd);
        return NULL;
    }
    /* The settings in effect, for commands that record them (backup metadata). */
    g->server = server;
    g->user = user;
    g->cacert = cacert;
    char password[PASSWORD_MAX];
    if (g->password_file) {
        int r = read_password_file(g->password_file, password, sizeof(password));
        if (r < 0) {
            fprintf(stderr, "vmexport %s: password file %s: %s\n", cmd, g->password_file,
                    r == -ENODATA ? "empty"
                    : r == -E2BIG ? "first line too long"
                                  : strerror(-r));
            return NULL;
        }
    } else {
        const char *env = getenv("VMEXPORT_PASSWORD");
        if (!env) {
            fprintf(stderr,
                    "vmexport %s: no password: use --password-file FILE or VMEXPORT_PASSWORD\n",
                    cmd);
            return NULL;
        }
        if (strlen(env) >= sizeof(password)) {
            fprintf(stderr, "vmexport %s: VMEXPORT_PASSWORD: too long\n", cmd);
            return NULL;
        }
        strcpy(password, env);
    }
    /* Name unreadable files here: curl's own messages about them are vague. */
    const char *files[][2] = {{"--cacert", cacert}, {"--cert", g->cert}, {"--key", g->key}};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        if (files[i][1] && access(files[i][1], R_OK) < 0) {
            fprintf(stderr, "vmexport %s: %s %s: %s\n", cmd, files[i][0], files[i][1],
                    strerror(errno));
            explicit_bzero(password, sizeof(password));
            return NULL;
        }
    }

    struct client_options opt = {
        .server = server,
        .user = user,
        .password = password,
        .cacert = cacert,
        .cert = g->cert,
        .key = g->key,
        .insecure = g->insecure,
    };
    struct client *c = NULL;
    int r = client_new(&opt, &c);
    explicit_bzero(password, sizeof(password));
    if (r < 0) {
        fprintf(stderr, "vmexport %s: %s: %s\n", cmd, server, strerror(-r));
        return NULL;
    }
    r = client_login(c);
    if (r < 0) {
        fprintf(stderr, "vmexport %s: %s\n", cmd, client_error(c));
        client_free(c);
        return NULL;
    }
    return c;
}
