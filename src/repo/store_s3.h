/* The S3 store (store_s3.c): a repository under s3://BUCKET/PREFIX on any S3-compatible object
 * store (AWS S3, Ceph radosgw, ...), reached with libcurl's SigV4 signing.
 */
#ifndef VMEXPORT_REPO_STORE_S3_H
#define VMEXPORT_REPO_STORE_S3_H

#include "repo/store.h"

/* Default region (AWS_DEFAULT_REGION unset): AWS's own; radosgw accepts any region name. */
#define S3_DEFAULT_REGION "us-east-1"

/* store_s3_open() (declared in store.h, called by store_open_url()) takes its settings from
 * struct store_options, NULL members from the environment: s3_endpoint VMEXPORT_S3_ENDPOINT
 * (default: AWS's endpoint of the region), s3_ca_file VMEXPORT_S3_CA, s3_region
 * AWS_DEFAULT_REGION; the keys always from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.  The
 * bucket must exist (-ENOENT), unless create, which makes it when missing (with Object Lock
 * when lock_days) and wants no key under the prefix (-EEXIST). */

/* Retain every object put from now on for days (COMPLIANCE mode): the repository's lock_days,
 * told by the repository code after reading its config.  Deletes of retained objects then fail
 * with -EACCES (the store refuses them). */
void store_s3_set_lock_days(struct store *s, unsigned days);

#endif
