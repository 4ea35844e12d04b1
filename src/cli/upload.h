/* Uploading disks to vmexportd (restore to a host): one transfer per disk through the upload
 * API, data chunks as PUT with Content-Range from N parallel connections, zero and hole ranges
 * as PATCH zero (never as bytes), then flush and finalize.  A failure cancels the transfer, so
 * nothing half-written becomes a disk. */
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
