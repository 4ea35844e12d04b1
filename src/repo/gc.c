/* Garbage collection of the repository, under the exclusive repository lock: collect the chunk
 * IDs every committed backup's manifests reference, then delete the chunks nobody references
 * (format 3: whole packs, or repack the live chunks of mostly dead ones: pack.c), the
 * temporary files interrupted writes left and the directories of backups that were never
 * committed.  A manifest that cannot be read stops gc before any chunk is deleted: without it
 * the set of referenced chunks is unknown.
 */
#include "repo_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cleanup.h"
#include "repo/chunkset.h"

/* ---- the walk ---- */

struct gc {
    struct repo *r;
    bool dry_run;
    struct gc_stats *st;
    struct chunk_set refs; /* chunks the committed backups reference (formats 1, 2) */
    struct pack_gc *packs; /* format 3: the index, marked with the referenced chunks */
    char *err;
    size_t errlen;
};

/* A walk of one prefix: the gc and the prefix (the callbacks make keys from it). */
struct gc_walk {
    struct gc *g;
    const char *prefix;
    const char *vm_dir; /* in a VM directory and below */
    const char *id;     /* in a backup directory */
    bool removed;       /* something was deleted: sync the prefix */
};

/* "prefix/name" into a new string. */
static char *key_join(const char *prefix, const char *name)
{
    char *s = NULL;
    return asprintf(&s, "%s%s%s", prefix, *prefix ? "/" : "", name) < 0 ? NULL : s;
}

/* Before each deletion: the exclusive lock must still be held (a gc stalled past its lease
 * may run beside a backup that references what it would delete). */
static int gc_lease_check(struct gc *g)
{
    int ret = lock_check(g->r);
    if (ret < 0 && g->err && !*g->err)
        repo_set_err(g->err, g->errlen,
                     "%s: gc stopped: the repository lock's lease was lost (stalled or cut off "
                     "from the store for more than %u s)",
                     g->r->path, repo_lease_seconds());
    return ret;
}

/* Delete the object key (count only with dry_run), adding its size to bytes_freed. */
static int gc_delete(struct gc *g, const char *key)
{
    if (g->dry_run) {
        struct store_stat st;
        int ret = store_stat(g->r->store, key, &st);
        if (ret == 0)
            g->st->bytes_freed += st.size;
        return ret;
    }
    int ret = gc_lease_check(g);
    return ret < 0 ? ret : repo_store_del(g->r, key, &g->st->bytes_freed);
}

/* Remove a temporary file left by an interrupted write. */
static int gc_remove_tmp(struct gc_walk *w, const struct store_entry *e)
{
    if (e->prefix)
        return 0;
    CLEANUP_FREE char *key = key_join(w->prefix, e->name);
    if (!key)
        return -ENOMEM;
    int ret = gc_delete(w->g, key);
    if (ret == -ENOENT)
        return 0;
    if (ret < 0)
        return ret;
    w->g->st->temp_files_removed++;
    w->removed = true;
    return 0;
}

static int gc_tmp_entry(void *opaque, const struct store_entry *e)
{
    return repo_is_tmp_name(e->name) ? gc_remove_tmp(opaque, e) : 0;
}

/* Collect the references of a committed backup: every manifest in its directory. */
static int gc_manifest_entry(void *opaque, const struct store_entry *e)
{
    struct gc_walk *w = opaque;
    struct gc *g = w->g;
    if (repo_is_tmp_name(e->name))
        return gc_remove_tmp(w, e);
    if (e->prefix || !manifest_name_valid(e->name))
        return 0;
    CLEANUP_FREE char *rel = key_join(w->prefix, e->name);
    struct manifest m;
    if (!rel)
        return -ENOMEM;
    int ret = manifest_load(g->r, rel, &m);
    if (ret < 0) {
        repo_set_err(g->err, g->errlen,
                     "%s/%s: cannot read the manifest (%s); no chunk was deleted", g->r->path, rel,
                     ret == -EBADMSG ? "damaged" : strerror(-ret));
        return ret;
    }
    for (size_t i = 0; ret == 0 && i < m.n_entries; i++) {
        if (g->packs)
            pack_gc_mark(g->packs, &m.e[i].id);
        else
            ret = chunk_set_add(&g->refs, &m.e[i].id);
    }
    manifest_free(&m);
    return ret;
}

static int gc_backup_entry(void *opaque, const struct store_entry *e)
{
    struct gc_walk *w = opaque;
    struct gc *g = w->g;
    if (repo_is_tmp_name(e->name))
        return gc_remove_tmp(w, e);
    if (!backup_id_valid(e->name) || !e->prefix)
        return 0;
    CLEANUP_FREE char *dir = key_join(w->prefix, e->name);
    CLEANUP_FREE char *json = dir ? key_join(dir, REPO_BACKUP_JSON) : NULL;
    if (!json)
        return -ENOMEM;
    int ret = store_exists(g->r->store, json, NULL);
    if (ret == 0) {
        struct gc_walk sub = {.g = g, .prefix = dir, .vm_dir = w->vm_dir, .id = e->name};
        return store_list(g->r->store, dir, gc_manifest_entry, &sub);
    }
    if (ret != -ENOENT)
        return ret;
    /* No backup.json: a writer crashed (writers hold the lock we hold exclusively). */
    g->st->partial_backups_removed++;
    if (g->dry_run)
        return 0;
    ret = gc_lease_check(g);
    return ret < 0 ? ret : repo_remove_dir(g->r, dir, &g->st->bytes_freed);
}

/* Walk the sub-prefix dir of the walk w with fn, sub filled in but for its gc and prefix: 1
 * when walked, 0 when it vanished meanwhile (a walk finds it empty), or a negative errno. */
static int gc_descend(struct gc_walk *w, const char *dir, store_list_fn fn, struct gc_walk *sub)
{
    sub->g = w->g;
    sub->prefix = dir;
    int ret = store_list(w->g->r->store, dir, fn, sub);
    if (ret == -ENOENT || ret == -ENOTDIR)
        return 0;
    return ret < 0 ? ret : 1;
}

static int gc_vm_entry(void *opaque, const struct store_entry *e)
{
    struct gc_walk *w = opaque;
    struct gc *g = w->g;
    if (repo_is_tmp_name(e->name))
        return gc_remove_tmp(w, e);
    if (!e->prefix)
        return 0;
    CLEANUP_FREE char *dir = key_join(w->prefix, e->name);
    if (!dir)
        return -ENOMEM;
    struct gc_walk sub = {.vm_dir = e->name};
    int ret = gc_descend(w, dir, gc_backup_entry, &sub);
    if (ret > 0 && !g->dry_run)
        store_remove_prefix(g->r->store, dir); /* when it was left empty */
    return ret < 0 ? ret : 0;
}

/* Walk the top-level prefix dir with fn; a missing one is empty.  The error names dir unless
 * a callback left a more precise one. */
static int gc_top(struct gc *g, const char *dir, store_list_fn fn)
{
    struct gc_walk w = {.g = g, .prefix = dir};
    int ret = store_list(g->r->store, dir, fn, &w);
    if (ret == -ENOENT)
        return 0;
    if (ret < 0 && g->err && !*g->err)
        repo_set_err(g->err, g->errlen, "%s/%s: %s", g->r->path, dir, strerror(-ret));
    return ret;
}

static int gc_chunk_entry(void *opaque, const struct store_entry *e)
{
    struct gc_walk *w = opaque;
    struct gc *g = w->g;
    struct chunk_id id;
    if (repo_is_tmp_name(e->name))
        return gc_remove_tmp(w, e);
    if (e->prefix || !chunk_name_valid(e->name) || strncmp(e->name, w->id, strlen(w->id)) ||
        chunk_id_from_hex(e->name, &id) < 0)
        return 0;
    g->st->chunks_total++;
    if (chunk_set_has(&g->refs, &id))
        return 0;
    CLEANUP_FREE char *key = key_join(w->prefix, e->name);
    if (!key)
        return -ENOMEM;
    int ret = gc_delete(g, key);
    if (ret == -ENOENT)
        return 0;
    if (ret < 0)
        return ret;
    w->removed = true;
    g->st->chunks_deleted++;
    return 0;
}

static int gc_chunk_subdir(void *opaque, const struct store_entry *e)
{
    struct gc_walk *w = opaque;
    struct gc *g = w->g;
    if (repo_is_tmp_name(e->name))
        return gc_remove_tmp(w, e);
    if (!e->prefix || !chunk_subdir_valid(e->name))
        return 0;
    CLEANUP_FREE char *dir = key_join(w->prefix, e->name);
    if (!dir)
        return -ENOMEM;
    struct gc_walk sub = {.id = e->name};
    int ret = gc_descend(w, dir, gc_chunk_entry, &sub);
    if (ret > 0 && sub.removed && !g->dry_run)
        return store_sync_prefix(g->r->store, dir);
    return ret < 0 ? ret : 0;
}

int repo_gc(struct repo *r, bool dry_run, struct gc_stats *st, char *err, size_t errlen)
{
    struct gc_stats dummy;
    struct gc g = {
        .r = r, .dry_run = dry_run, .st = st ? st : &dummy, .err = err, .errlen = errlen};
    bool took;

    memset(g.st, 0, sizeof(*g.st));
    if (err && errlen)
        *err = '\0';
    int ret = dry_run ? 0 : repo_check_writable(r, err, errlen);
    if (ret < 0)
        return ret;
    ret = lock_hold_exclusive(r, &took, err, errlen);
    if (ret < 0)
        return ret;
    /* Format 3: the index first (a damaged one stops gc before anything is deleted). */
    if (r->format_version >= REPO_PACKS_FORMAT) {
        ret = pack_gc_new(r, &g.packs);
        if (ret < 0)
            repo_set_err(err, errlen, "%s/%s: cannot read the index (%s); nothing was deleted",
                         r->path, REPO_INDEX_DIR, ret == -EBADMSG ? "damaged" : strerror(-ret));
    }
    if (ret == 0)
        ret = gc_top(&g, REPO_BACKUPS_DIR, gc_vm_entry);
    if (ret == 0 && g.packs) {
        ret = pack_gc_run(g.packs, dry_run, false, g.st);
        if (ret == -ETIMEDOUT)
            gc_lease_check(&g); /* the message */
    }
    else if (ret == 0)
        ret = gc_top(&g, REPO_CHUNKS_DIR, gc_chunk_subdir);
    if (ret == 0) {
        struct gc_walk w = {.g = &g, .prefix = ""};
        ret = store_list(r->store, "", gc_tmp_entry, &w);
    }
    if (ret < 0 && err && errlen && !*err)
        repo_set_err(err, errlen, "%s: gc: %s", r->path, strerror(-ret));
    chunk_set_free(&g.refs);
    pack_gc_free(g.packs);
    if (took)
        repo_unlock(r);
    return ret;
}
