/* The VM definition stored with a backup (struct backup's definition and definition_format,
 * from GET /vms/{vm}/definition when the backup was taken): for `vmexport restore
 * --definition-out` and for re-creating the VM (libvirt's `restore --define`). */
#ifndef VMEXPORT_BACKUP_DEFINITION_H
#define VMEXPORT_BACKUP_DEFINITION_H

#include <stdbool.h>
#include <stddef.h>

struct backup;

/* The definition text of backup b and its format ("libvirt-xml", "qemu-qmp-json",
 * "ovm-vm.cfg"), pointing into b: 0, or -ENOENT when b has none (taken from a server or
 * provider that keeps none, or before definitions were stored). */
int backup_definition_get(const struct backup *b, const char **format, const char **text);

/* Write b's definition to the file path (mode 0600; an existing file only with force, then
 * replaced at once by a rename).  0, or a negative errno with err naming the file and cause. */
int backup_definition_write(const struct backup *b, const char *path, bool force, char *err,
                            size_t errlen);

#endif
