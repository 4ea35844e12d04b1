/* Re-creating a backed-up VM on a libvirt host (vmexport restore --define): the domain XML
 * stored with the backup, rewritten to use the restored disk files, defined through libvirt.
 *
 * The domain keeps its name and UUID when the host has neither; otherwise it becomes
 * NAME-restored-N (the first N free) with a new UUID and new MAC addresses, so that it can run
 * next to the original.  Its disks that were restored point at the restored raw files
 * (backing chains dropped); writable disks that were not restored are removed from it, never
 * left pointing at the original's files; CD-ROMs and read-only disks stay as they were.  The
 * domain is defined, not started.
 */
#ifndef VMEXPORT_BACKUP_DEFINE_H
#define VMEXPORT_BACKUP_DEFINE_H

#include <stdbool.h>
#include <stddef.h>

#include "backup/restore.h"

#define DEFINE_FORMAT_LIBVIRT "libvirt-xml" /* provider_ops.vm_definition's format */
#define DEFINE_URI_DEFAULT    "qemu:///system"

/* How the domain XML xml (libvirt's <domain>) is rewritten for the restored disks: name and
 * drop_identity (remove the UUID and the MAC addresses) as decided by restore_define.  The
 * result is malloc'ed into *out; -EINVAL with err when xml is not a domain. */
int define_rewrite(const char *xml, const char *name, bool drop_identity,
                   const struct restored_disk *disks, size_t n, char **out, char *err,
                   size_t errlen);

/* Define the domain of definition (format DEFINE_FORMAT_LIBVIRT) on the libvirt at uri with the
 * restored disks: 0 and *name (malloc'ed, the domain's name), or a negative errno with err
 * naming the cause (-EOPNOTSUPP: not a libvirt definition). */
int restore_define(const char *uri, const char *format, const char *definition,
                   const struct restored_disk *disks, size_t n, char **name, char *err,
                   size_t errlen);

#endif
