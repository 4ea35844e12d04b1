/* Repository opening for the command line; see repo_open.h. */
#include "cli/repo_open.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "repo/repo.h"

/* Largest passphrase read from a file or the environment. */
#define PASSPHRASE_MAX 1024

char *cli_read_passphrase(const char *cmd, const char *file, bool confirm)
{
    char buf[PASSPHRASE_MAX + 2];
    if (file) {
        FILE *f = fopen(file, "re");
        if (!f) {
            fprintf(stderr, "vmexport %s: passphrase file %s: %s\n", cmd, file, strerror(errno));
            return NULL;
        }
        if (!fgets(buf, sizeof(buf), f))
            buf[0] = '\0';
        fclose(f);
        buf[strcspn(buf, "\r\n")] = '\0';
        if (!buf[0]) {
            fprintf(stderr, "vmexport %s: passphrase file %s is empty\n", cmd, file);
            return NULL;
        }
        return strdup(buf);
    }
    const char *env = getenv("VMEXPORT_PASSPHRASE");
    if (env && *env)
        return strdup(env);
    if (!isatty(STDIN_FILENO)) {
        fprintf(stderr,
                "vmexport %s: a passphrase is needed: use --passphrase-file or "
                "VMEXPORT_PASSPHRASE\n",
                cmd);
        return NULL;
    }
    char *p = getpass("Repository passphrase: ");
    if (!p || !*p)
        return NULL;
    char *first = strdup(p);
    if (confirm && first) {
        p = getpass("Repeat passphrase: ");
        if (!p || strcmp(p, first)) {
            fprintf(stderr, "vmexport %s: the passphrases differ\n", cmd);
            free(first);
            return NULL;
        }
    }
    return first;
}

struct repo *cli_open_repo(const char *cmd, const char *path, const char *passphrase_file,
                           const struct store_options *so)
{
    if (!path)
        path = getenv("VMEXPORT_REPO");
    if (!path || !*path) {
        fprintf(stderr, "vmexport %s: no repository: use --repo URL or VMEXPORT_REPO\n", cmd);
        return NULL;
    }
    struct repo *r = NULL;
    char err[512] = "";
    int rc;
    /* A passphrase given (file or environment) is always used, so that a repository whose
     * config was changed to say "not encrypted" is refused rather than written in the clear.
     * Without one, the terminal is asked only when the repository turns out to be encrypted. */
    const char *env = getenv("VMEXPORT_PASSPHRASE");
    if (passphrase_file || (env && *env)) {
        CLEANUP_FREE char *pass = cli_read_passphrase(cmd, passphrase_file, false);
        if (!pass)
            return NULL;
        rc = repo_open_url(path, so, pass, &r, err, sizeof(err));
    } else {
        rc = repo_open_url(path, so, NULL, &r, err, sizeof(err));
        /* -EACCES is also a store's refusal (wrong credentials): ask only for a passphrase
         * the repository says it needs (repo.h: "passphrase required"). */
        bool needs_pass = rc == -EACCES && strstr(err, "passphrase required");
        if (needs_pass && isatty(STDIN_FILENO)) {
            CLEANUP_FREE char *pass = cli_read_passphrase(cmd, NULL, false);
            if (!pass)
                return NULL;
            err[0] = '\0';
            rc = repo_open_url(path, so, pass, &r, err, sizeof(err));
        } else if (needs_pass) {
            snprintf(err, sizeof(err),
                     "the repository is encrypted: give its passphrase with "
                     "--passphrase-file or VMEXPORT_PASSPHRASE");
        }
    }
    if (rc < 0) {
        if (err[0] && !strncmp(err, path, strlen(path))) /* the message names the path */
            fprintf(stderr, "vmexport %s: %s\n", cmd, err);
        else
            fprintf(stderr, "vmexport %s: %s: %s\n", cmd, path, err[0] ? err : strerror(-rc));
        return NULL;
    }
    if (repo_config_unsealed(r) && strcmp(cmd, "repo upgrade"))
        fprintf(stderr,
                "vmexport %s: warning: %s: the config of this encrypted repository has "
                "no MAC (made by an older vmexport): it can be read, but nothing is "
                "written to it until 'vmexport repo upgrade %s'\n",
                cmd, path, path);
    return r;
}
