/* Garbage collection of the repository, under the exclusive repository lock: collect the chunk
 * IDs every committed backup's manifests reference, then delete the chunks nobody references,
 * the temporary files interrupted writes left and the directories of backups that were never
 * committed.  A manifest that cannot be read stops gc before any chunk is deleted: without it
 * the set of referenced chunks is unknown.
 */
#include "repo_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "repo/chunkset.h"

/* ---- the walk ---- */

struct gc {
    struct repo *r;
    bool dry_run;
    struct gc_stats *st;
    struct chunk_set refs; /* chunks the committed backups reference */
    char *err;
    size_t errlen;
};

static DIR *dir_open(int parentfd, const char *name)
{
    int fd;
    if (repo_open_dir(parentfd, name, &fd) < 0)
        return NULL;
    DIR *d = fdopendir(fd);
    if (!d)
        close(fd);
    return d;
}

static bool is_dot(const char *name)
{
    return !strcmp(name, ".") || !strcmp(name, "..");
}

/* Remove a temporary file left by an interrupted write. */
static int gc_remove_tmp(struct gc *g, int dirfd, const char *name)
{
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || S_ISDIR(st.st_mode))
        return 0;
    if (!g->dry_run && unlinkat(dirfd, name, 0) < 0)
        return errno == ENOENT ? 0 : -errno;
    g->st->temp_files_removed++;
    g->st->bytes_freed += (uint64_t)st.st_size;
    return 0;
}

static int gc_tmp_in_dir(struct gc *g, int parentfd, const char *name)
{
    DIR *d = dir_open(parentfd, name);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    struct dirent *de;
    int ret = 0;
    while (ret == 0 && (de = readdir(d)))
        if (repo_is_tmp_name(de->d_name))
            ret = gc_remove_tmp(g, dirfd(d), de->d_name);
    closedir(d);
    return ret;
}

/* Collect the references of a committed backup: every manifest in its directory. */
static int gc_committed(struct gc *g, int vm_fd, const char *vm_dir, const char *id)
{
    DIR *d = dir_open(vm_fd, id);
    if (!d)
        return -errno;
    struct dirent *de;
    int ret = 0;
    while (ret == 0 && (de = readdir(d))) {
        if (repo_is_tmp_name(de->d_name)) {
            ret = gc_remove_tmp(g, dirfd(d), de->d_name);
            continue;
        }
        if (!manifest_name_valid(de->d_name))
            continue;
        CLEANUP_FREE char *rel = NULL;
        struct manifest m;
        if (asprintf(&rel, REPO_BACKUPS_DIR "/%s/%s/%s", vm_dir, id, de->d_name) < 0) {
            ret = -ENOMEM;
            break;
        }
        ret = manifest_load(g->r, rel, &m);
        if (ret < 0) {
            repo_set_err(g->err, g->errlen,
                         "%s/%s: cannot read the manifest (%s); no chunk was deleted", g->r->path,
                         rel, ret == -EBADMSG ? "damaged" : strerror(-ret));
            break;
        }
        for (uint64_t i = 0; ret == 0 && i < m.n; i++)
            if (!m.e[i].zero)
                ret = chunk_set_add(&g->refs, &m.e[i].id);
        manifest_free(&m);
    }
    closedir(d);
    return ret;
}

static int gc_vm_dir(struct gc *g, int backups_fd, const char *vm_dir)
{
    DIR *d = dir_open(backups_fd, vm_dir);
    if (!d)
        return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
    int vm_fd = dirfd(d);
    struct dirent *de;
    int ret = 0;
    while (ret == 0 && (de = readdir(d))) {
        char rel[NAME_MAX + sizeof(REPO_BACKUP_JSON) + 1];
        struct stat st;
        if (repo_is_tmp_name(de->d_name)) {
            ret = gc_remove_tmp(g, vm_fd, de->d_name);
            continue;
        }
        if (!backup_id_valid(de->d_name) ||
            fstatat(vm_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
            continue;
        snprintf(rel, sizeof(rel), "%s/" REPO_BACKUP_JSON, de->d_name);
        if (fstatat(vm_fd, rel, &st, AT_SYMLINK_NOFOLLOW) == 0) {
            ret = gc_committed(g, vm_fd, vm_dir, de->d_name);
            continue;
        }
        if (errno != ENOENT) {
            ret = -errno;
            break;
        }
        /* No backup.json: a writer crashed (writers hold the lock we hold exclusively). */
        g->st->partial_backups_removed++;
        if (!g->dry_run)
            ret = repo_remove_dir(vm_fd, de->d_name, &g->st->bytes_freed);
    }
    closedir(d);
    if (ret == 0 && !g->dry_run && unlinkat(backups_fd, vm_dir, AT_REMOVEDIR) == 0)
        fsync(backups_fd); /* it was empty */
    return ret;
}

static int gc_backups(struct gc *g)
{
    DIR *d = dir_open(g->r->dirfd, REPO_BACKUPS_DIR);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    struct dirent *de;
    int ret = 0;
    while (ret == 0 && (de = readdir(d))) {
        if (is_dot(de->d_name))
            continue;
        if (repo_is_tmp_name(de->d_name))
            ret = gc_remove_tmp(g, dirfd(d), de->d_name);
        else
            ret = gc_vm_dir(g, dirfd(d), de->d_name);
    }
    closedir(d);
    if (ret < 0 && g->err && !*g->err)
        repo_set_err(g->err, g->errlen, "%s/%s: %s", g->r->path, REPO_BACKUPS_DIR, strerror(-ret));
    return ret;
}

static int gc_chunk_subdir(struct gc *g, int chunks_fd, const char *sub)
{
    DIR *d = dir_open(chunks_fd, sub);
    if (!d)
        return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
    struct dirent *de;
    bool removed = false;
    int ret = 0;
    while (ret == 0 && (de = readdir(d))) {
        struct chunk_id id;
        struct stat st;
        if (repo_is_tmp_name(de->d_name)) {
            ret = gc_remove_tmp(g, dirfd(d), de->d_name);
            removed = true;
            continue;
        }
        if (!chunk_name_valid(de->d_name) || strncmp(de->d_name, sub, strlen(sub)) ||
            chunk_id_from_hex(de->d_name, &id) < 0)
            continue;
        g->st->chunks_total++;
        if (chunk_set_has(&g->refs, &id))
            continue;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            ret = errno == ENOENT ? 0 : -errno;
            continue;
        }
        if (!g->dry_run && unlinkat(dirfd(d), de->d_name, 0) < 0) {
            ret = -errno;
            break;
        }
        removed = true;
        g->st->chunks_deleted++;
        g->st->bytes_freed += (uint64_t)st.st_size;
    }
    if (ret == 0 && removed && !g->dry_run && fsync(dirfd(d)) < 0)
        ret = -errno;
    closedir(d);
    return ret;
}

static int gc_chunks(struct gc *g)
{
    DIR *d = dir_open(g->r->dirfd, REPO_CHUNKS_DIR);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    struct dirent *de;
    int ret = 0;
    while (ret == 0 && (de = readdir(d))) {
        if (repo_is_tmp_name(de->d_name))
            ret = gc_remove_tmp(g, dirfd(d), de->d_name);
        else if (chunk_subdir_valid(de->d_name))
            ret = gc_chunk_subdir(g, dirfd(d), de->d_name);
    }
    closedir(d);
    if (ret < 0)
        repo_set_err(g->err, g->errlen, "%s/%s: %s", g->r->path, REPO_CHUNKS_DIR, strerror(-ret));
    return ret;
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
    ret = gc_backups(&g);
    if (ret == 0)
        ret = gc_chunks(&g);
    if (ret == 0)
        ret = gc_tmp_in_dir(&g, r->dirfd, ".");
    if (ret < 0 && err && errlen && !*err)
        repo_set_err(err, errlen, "%s: gc: %s", r->path, strerror(-ret));
    chunk_set_free(&g.refs);
    if (took)
        repo_unlock(r);
    return ret;
}
