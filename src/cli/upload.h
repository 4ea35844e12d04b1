/* Uploading disks to vmexportd from the command line (restore --upload, chain upload): the
 * connection, progress and report around the upload engine (backup/upload.c). */
#ifndef VMEXPORT_CLI_UPLOAD_H
#define VMEXPORT_CLI_UPLOAD_H

#include <stdbool.h>
#include <stdint.h>

struct repo;
struct backup;

/* Upload a local (sparse) raw file as disk of VM.  Returns an EXIT_* code; messages on stderr
 * prefixed "vmexport CMD:". */
int upload_sparse_file(const char *cmd, const char *path, const char *vm, const char *disk,
                       unsigned jobs);

/* Upload every disk of a backup (or only `disk` when not NULL) into VM. */
int upload_backup(const char *cmd, struct repo *repo, const struct backup *b, const char *disk,
                  const char *vm, unsigned jobs, bool json);

#endif
