/* The S3 store (store_s3.c): a repository under s3://BUCKET/PREFIX on any S3-compatible object
 * store (AWS S3, Ceph radosgw, ...), reached with libcurl's SigV4 signing.
 */
#ifndef VMEXPORT_REPO_STORE_S3_H
#define VMEXPORT_REPO_STORE_S3_H

#include <stdbool.h>
#include <stddef.h>

#include "repo/store.h"

/* Default region (AWS_DEFAULT_REGION unset): AWS's own; radosgw accepts any region name. */
#define S3_DEFAULT_REGION "us-east-1"

/* Where and how to reach the store: NULL fields take the environment (VMEXPORT_S3_ENDPOINT,
 * VMEXPORT_S3_CA, AWS_DEFAULT_REGION) or the defaults.  The keys always come from
 * AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. */
struct s3_params {
    const char *endpoint; /* "https://host:port"; default: AWS's endpoint of the region */
    const char *ca_file;  /* PEM file of CA certificates trusted for the endpoint */
    const char *region;
    unsigned lock_days; /* with create: make the bucket with Object Lock, retain puts this long */
};

/* Whether url is an S3 URL (s3://...). */
bool store_s3_url(const char *url);

/* Open s3://BUCKET/PREFIX (PREFIX may be empty).  The bucket must exist (-ENOENT otherwise),
 * unless create, which makes it when missing (with Object Lock when p->lock_days) and wants no
 * key under PREFIX (-EEXIST).  err gets a message naming the bucket and the cause; it never
 * holds a credential. */
int store_s3_open(const char *url, const struct s3_params *p, bool create, struct store **out,
                  char *err, size_t errlen);

/* Retain every object put from now on for days (COMPLIANCE mode): the repository's lock_days,
 * told by the repository code after reading its config.  Deletes of retained objects then fail
 * with -EACCES (the store refuses them). */
void store_s3_set_lock_days(struct store *s, unsigned days);

#endif
