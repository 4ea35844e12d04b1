/* Flattening a qcow2 (or raw) snapshot chain into one sparse raw file with qemu-img, which
 * is told every layer's file and format so that it reads exactly the chain fs/chain.c built
 * and checked, never the (possibly stale) backing names stored in the images. */
#ifndef VMEXPORT_BACKUP_FLATTEN_H
#define VMEXPORT_BACKUP_FLATTEN_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct chain;

/* The qemu-img to run, unless the environment names another. */
#define QEMU_IMG_DEFAULT "qemu-img"
#define QEMU_IMG_ENV     "VMEXPORT_QEMU_IMG"
/* Guest disks are private: flattened files are readable by their owner only. */
#define FLATTEN_OUTPUT_MODE 0600
/* Room for a failure's message. */
#define FLATTEN_ERROR_MAX 1024

/* Stop qemu-img and remove the temporary file of chain_flatten_file, if they are there: for
 * a signal handler (async-signal-safe). */
void flatten_interrupted(void);

/* Flatten c into the existing file tmp, give it FLATTEN_OUTPUT_MODE and fsync it; *data gets
 * the bytes allocated.  0, or a negative errno with err set (qemu-img missing or failing, a
 * size that is not the chain's). */
int chain_flatten(const struct chain *c, const char *tmp, uint64_t *data, char *err, size_t errlen);

/* Flatten c into the file out: written as out.vxtmp.XXXXXX next to it (a crash may leave
 * that), fsynced and renamed into place, so that out never exists half-written.  out must not
 * be a directory or an image of the chain, and must not exist unless force.  0, or a negative
 * errno with err set (naming out). */
int chain_flatten_file(const struct chain *c, const char *out, bool force, uint64_t *data,
                       char *err, size_t errlen);

#endif
