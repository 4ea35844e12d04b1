/* Composing a qcow2 snapshot chain from the image files of one directory (the oVirt restore
 * flow: a directory holds a disk's volumes, each qcow2 volume naming its backing file).
 *
 * Every regular file in the directory must be a disk image (qcow2 or raw, see image_probe());
 * raw images have no backing file.  Backing file names are resolved as qemu does: an absolute
 * name as is, a relative name against the directory of the image that names it.  Chains copied
 * from elsewhere often still carry the old absolute (or relative) paths, so when that path does
 * not exist, or exists but is not one of the directory's files, a file of the directory with the
 * same basename is used instead (layer.backing_by_name says so).  The chain is always made of
 * the directory's files only.
 *
 * The files must form exactly one chain: one base (no backing file), one top (backing file of
 * no other image), no loops, and every image must be on it.
 */
#ifndef VMEXPORT_FS_CHAIN_H
#define VMEXPORT_FS_CHAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "fs/qcow2.h"

struct chain_layer {
    char *name;             /* file name in the directory */
    char *path;             /* directory/name */
    struct image_info info; /* format, sizes, qcow2 header */
    bool backing_by_name;   /* the backing file was found by basename in the directory */
    dev_t dev;
    ino_t ino;
};

struct chain {
    struct chain_layer *layers; /* base first: layers[i]'s backing file is layers[i - 1] */
    size_t len;
    char *error; /* why chain_build() failed, naming the files (malloc'd); NULL on success */
};

/* Compose the chain of the images in dir.  Returns 0, or a negative errno with c->error set:
 *   -ENODATA      the directory holds no regular file
 *   -EMEDIUMTYPE  a file is not a disk image; -EINVAL a corrupt qcow2 header;
 *                 -EOPNOTSUPP an image this code cannot use (see qcow2_info_read)
 *   -ENOENT       a backing file is not in the directory ("b.qcow2: backing file base.qcow2
 *                 not found")
 *   -ELOOP        backing files form a loop ("a.qcow2 -> b.qcow2 -> a.qcow2: backing chain
 *                 loops")
 *   -ENOTUNIQ     the files form more than one chain (the bases, tops and chains are listed)
 *   -EMEDIUMTYPE  also: a backing file is not in the format its child declares
 *   -ENOMEM, or the errno of opendir()/open().
 * Call chain_free(c) afterwards in every case. */
int chain_build(const char *dir, struct chain *c);

void chain_free(struct chain *c);

/* The top image: the guest-visible disk. */
static inline const struct chain_layer *chain_top(const struct chain *c)
{
    return &c->layers[c->len - 1];
}

/* Whether qemu-img can read the whole chain without more input: refuses encrypted images (they
 * need a key) and images qemu flagged as corrupt (repair them with 'qemu-img check -r all'
 * first).  Returns 0 or -EOPNOTSUPP with c->error set. */
int chain_check_readable(struct chain *c);

#endif
