/* The verify engine; see verify.h.  One pass over the backups, oldest first: each manifest is
 * read, each chunk it references is read and checked unless an earlier backup's check of the
 * same ID decided it already, and the verdict of every chunk is kept so that each backup
 * needing a bad one is named. */
#include "backup/verify.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "repo/chunkset.h"

/* A chunk's verdict, once read: the set holds CHUNK_STATE_OK or CHUNK_STATE_BAD, or this
 * (another non-zero value) for a chunk that is not in the repository. */
#define CHUNK_STATE_MISSING ((int8_t)-2)

struct verify_run {
    const struct verify_options *o;
    struct verify_result *res;
    struct chunk_set seen;
    uint8_t *buf;       /* one chunk */
    uint32_t threshold; /* a chunk is sampled when its pick value is at most this */
    bool sampling;
};

static void report(const struct verify_run *v, const struct verify_finding *f)
{
    if (v->o->report)
        v->o->report(v->o->opaque, f);
}

/* Whether the chunk is in the sample: 4 bytes of its ID (uniformly distributed) against the
 * threshold, so that a sample picks the same chunks on every run. */
static bool sampled(const struct verify_run *v, const struct chunk_id *id)
{
    uint32_t pick;
    memcpy(&pick, id->b + 8, sizeof(pick));
    return !v->sampling || pick <= v->threshold;
}

/* Check one disk of b: *bad is set when anything it needs is damaged. */
static int verify_disk(struct verify_run *v, const struct backup *b, const char *disk, bool *bad)
{
    struct repo *repo = v->o->repo;
    const uint32_t cs = repo_chunk_size(repo);
    struct manifest m = {0};
    int r = repo_manifest_read(repo, b, disk, &m);
    if (r < 0) {
        report(v, &(struct verify_finding){
                      .kind = VERIFY_MANIFEST_DAMAGED, .backup = b->id, .disk = disk, .error = r});
        *bad = true;
        return 0;
    }
    for (size_t e = 0; e < m.n_entries; e++) {
        const struct chunk_id *id = &m.e[e].id;
        if (!sampled(v, id))
            continue;
        int8_t st = chunk_set_get(&v->seen, id);
        if (st == CHUNK_STATE_UNKNOWN) {
            size_t len;
            uint64_t zero_blocks[CHUNK_MASK_WORDS]; /* zeros are neither written nor hashed */
            int g = repo_chunk_get_sparse(repo, id, v->buf, cs, &len, zero_blocks);
            st = g == 0 ? CHUNK_STATE_OK : g == -ENOENT ? CHUNK_STATE_MISSING : CHUNK_STATE_BAD;
            r = chunk_set_put(&v->seen, id, st);
            if (r < 0)
                break;
            v->res->chunks_checked++;
            if (st != CHUNK_STATE_OK)
                v->res->chunks_damaged++;
        }
        if (st != CHUNK_STATE_OK) {
            report(v, &(struct verify_finding){.kind = st == CHUNK_STATE_MISSING
                                                           ? VERIFY_CHUNK_MISSING
                                                           : VERIFY_CHUNK_DAMAGED,
                                               .backup = b->id,
                                               .disk = m.disk,
                                               .offset = m.e[e].idx * m.chunk_size,
                                               .id = *id});
            *bad = true;
        }
    }
    manifest_free(&m);
    return r < 0 ? r : 0;
}

/* The backups to check into l; damaged metadata is reported and counted on the way. */
static int verify_collect(struct verify_run *v, backup_list *l)
{
    struct repo *repo = v->o->repo;
    struct verify_result *res = v->res;
    int r;
    if (v->o->backup_id) {
        struct backup *b = NULL;
        r = repo_backup_get(repo, v->o->backup_id, &b);
        if (r == -EBADMSG) {
            report(v, &(struct verify_finding){.kind = VERIFY_METADATA_DAMAGED,
                                               .backup = v->o->backup_id});
            res->damaged_backups++;
            return 0;
        }
        if (r < 0) {
            snprintf(res->err, sizeof(res->err), "backup %s: %s", v->o->backup_id,
                     r == -ENOENT ? "not found" : strerror(-r));
            return r;
        }
        r = backup_list_append(l, b);
        if (r < 0)
            backup_free(b);
        return r;
    }
    r = repo_backup_list(repo, NULL, l);
    if (r < 0) {
        snprintf(res->err, sizeof(res->err), "%s: %s", repo_path(repo), strerror(-r));
        return r;
    }
    string_list bad = VECTOR_INIT;
    if (repo_backup_list_damaged(repo, &bad) == 0)
        for (size_t i = 0; i < bad.len; i++) {
            report(v,
                   &(struct verify_finding){.kind = VERIFY_METADATA_DAMAGED, .backup = bad.ptr[i]});
            res->damaged_backups++;
        }
    string_list_free(&bad);
    return 0;
}

int verify_run(const struct verify_options *o, struct verify_result *res)
{
    *res = (struct verify_result){0};
    double sample = o->sample > 0 ? o->sample : 100;
    if (sample > 100) {
        snprintf(res->err, sizeof(res->err), "sample %g%%: not in (0, 100]", sample);
        return -EINVAL;
    }
    struct verify_run v = {.o = o,
                           .seen = CHUNK_SET_INIT,
                           .res = res,
                           .sampling = sample < 100,
                           .threshold = (uint32_t)(sample / 100.0 * (double)UINT32_MAX)};
    char why[256] = "";
    int r = repo_lock(o->repo, false, o->lock_timeout, why, sizeof(why));
    if (r < 0) {
        snprintf(res->err, sizeof(res->err), "%s: %s", repo_path(o->repo),
                 why[0] ? why : strerror(-r));
        return r;
    }
    chunk_set_use_index(&v.seen, o->repo); /* format 3: verdicts kept in the loaded index */
    backup_list l = VECTOR_INIT;
    r = verify_collect(&v, &l);
    if (r == 0 && !(v.buf = malloc(repo_chunk_size(o->repo)))) {
        snprintf(res->err, sizeof(res->err), "%s", strerror(ENOMEM));
        r = -ENOMEM;
    }
    for (size_t i = 0; r == 0 && i < l.len; i++) {
        const struct backup *b = l.ptr[i];
        bool bad = false;
        for (size_t k = 0; r == 0 && k < b->disks.len; k++)
            r = verify_disk(&v, b, b->disks.ptr[k].name, &bad);
        if (r < 0) {
            snprintf(res->err, sizeof(res->err), "backup %s: %s", b->id, strerror(-r));
            break;
        }
        res->backups++;
        if (bad)
            res->damaged_backups++;
        else
            report(&v, &(struct verify_finding){.kind = VERIFY_BACKUP_OK, .backup = b->id});
    }
    free(v.buf);
    chunk_set_free(&v.seen);
    backup_list_free(&l);
    repo_unlock(o->repo);
    return r;
}
