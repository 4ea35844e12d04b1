/* Opening a repository from the command line: --repo or VMEXPORT_REPO, and the passphrase of
 * an encrypted one from --passphrase-file, VMEXPORT_PASSPHRASE or the terminal. */
#ifndef VMEXPORT_CLI_REPO_OPEN_H
#define VMEXPORT_CLI_REPO_OPEN_H

#include <stdbool.h>

struct repo;
struct store_options;

/* A malloc'd passphrase, or NULL after printing why ("vmexport CMD: ..."). */
char *cli_read_passphrase(const char *cmd, const char *file, bool confirm);

/* Open the repository at path, a directory or a URL (NULL: VMEXPORT_REPO), reached with the
 * store options so (--ceph-id...; may be NULL).  A passphrase given by file or environment is
 * always used (a repository that says it is not encrypted is then refused); otherwise the
 * terminal is asked only when the repository is encrypted.  NULL after printing why; a warning
 * when the config of an encrypted repository has no MAC yet. */
struct repo *cli_open_repo(const char *cmd, const char *path, const char *passphrase_file,
                           const struct store_options *so);

/* Seconds a command waits for a lock on the repository another command holds (a gc or prune
 * for restore and verify, a backup of the same VM for backup). */
#define CLI_LOCK_TIMEOUT 600

#define REPO_OPTIONS_HELP                                                                          \
    "  --repo URL              the repository: a directory, rados://POOL/NAMESPACE or\n"           \
    "                          s3://BUCKET/PREFIX (env VMEXPORT_REPO)\n"                           \
    "  --passphrase-file FILE  passphrase of an encrypted repository (env VMEXPORT_PASSPHRASE\n"   \
    "                          holds the passphrase itself; else it is asked on the terminal)\n"

#endif
