/* SQLite catalog of snapshots; see catalog.h.
 *
 * One connection guarded by a mutex: catalog calls are short (a few rows), and downloads, which
 * take the time, never hold it.
 */
#include "catalog.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/lock.h"
#include "core/log.h"

/* Schema version stored in PRAGMA user_version; bump with a migration when the schema changes. */
#define CATALOG_SCHEMA_VERSION 1
/* The catalog records transfer IDs, which are credentials. */
#define CATALOG_FILE_MODE 0600
/* How long a statement waits for another process holding the database (sqlite3 CLI, backup). */
#define CATALOG_BUSY_TIMEOUT_MS 5000

struct catalog {
    sqlite3 *db;
    pthread_mutex_t lock;
};

static const char catalog_schema[] =
    "CREATE TABLE IF NOT EXISTS snapshots ("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  id TEXT NOT NULL UNIQUE,"
    "  vm_id TEXT NOT NULL,"
    "  provider TEXT NOT NULL,"
    "  created_at TEXT NOT NULL,"
    "  parent_id TEXT,"
    "  status TEXT NOT NULL,"
    "  label TEXT);"
    "CREATE INDEX IF NOT EXISTS snapshots_vm ON snapshots(vm_id, seq);"
    "CREATE TABLE IF NOT EXISTS snapshot_disks ("
    "  snapshot_id TEXT NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,"
    "  idx INTEGER NOT NULL,"
    "  name TEXT NOT NULL,"
    "  path TEXT NOT NULL,"
    "  parent_path TEXT NOT NULL,"
    "  repo_mountpoint TEXT,"
    "  change_id TEXT NOT NULL UNIQUE,"
    "  mode TEXT NOT NULL,"
    "  size INTEGER NOT NULL,"
    "  PRIMARY KEY (snapshot_id, name));"
    "CREATE TABLE IF NOT EXISTS uploads ("
    "  id TEXT PRIMARY KEY,"
    "  vm_id TEXT NOT NULL,"
    "  disk TEXT NOT NULL,"
    "  partial_path TEXT NOT NULL,"
    "  final_path TEXT NOT NULL,"
    "  size INTEGER NOT NULL,"
    "  created_at TEXT NOT NULL);";

/* Tokens revoked at logout, kept until they expire (exp, Unix time).  Created apart from the
 * schema above so that older catalogs gain it without a version change; older daemons ignore
 * it. */
static const char catalog_schema_tokens[] = "CREATE TABLE IF NOT EXISTS revoked_tokens ("
                                            "  id TEXT PRIMARY KEY,"
                                            "  exp INTEGER NOT NULL);";

void snapshot_free(struct snapshot *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->disks.len; i++) {
        struct snapshot_disk *d = &s->disks.ptr[i];
        free(d->name);
        free(d->locator);
        free(d->parent_path);
        free(d->repo_mountpoint);
        free(d->change_id);
        free(d->mode);
    }
    snapshot_disk_list_reset(&s->disks);
    free(s->id);
    free(s->vm_id);
    free(s->provider);
    free(s->created_at);
    free(s->parent_id);
    free(s->status);
    free(s->label);
    free(s->chain);
    free(s);
}

void snapshot_list_free(snapshot_list *l)
{
    for (size_t i = 0; i < l->len; i++)
        snapshot_free(l->ptr[i]);
    snapshot_list_reset(l);
}

static int sqlite_errno(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
        return 0;
    case SQLITE_NOMEM:
        return -ENOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_FULL:
        return -ENOSPC;
    case SQLITE_READONLY:
    case SQLITE_PERM:
        return -EROFS;
    case SQLITE_CONSTRAINT:
        return -EEXIST;
    default:
        return -EIO;
    }
}

static int exec_locked(struct catalog *c, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(c->db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        log_error("catalog: %s", msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
    }
    return sqlite_errno(rc);
}

/* Catalogs made by earlier versions lack some columns: add column (with its SQL declaration
 * decl) to table when missing.  Snapshots' label came so.  The schema
 * version stays: older daemons name their columns and never see the new ones. */
static int column_add(struct catalog *c, const char *table, const char *column, const char *decl,
                      char **msg)
{
    sqlite3_stmt *st = NULL;
    bool found = false;
    CLEANUP_FREE char *info = NULL, *alter = NULL;
    if (asprintf(&info, "SELECT name FROM pragma_table_info('%s')", table) < 0 ||
        asprintf(&alter, "ALTER TABLE %s ADD COLUMN %s %s", table, column, decl) < 0)
        return SQLITE_NOMEM;
    int rc = sqlite3_prepare_v2(c->db, info, -1, &st, NULL);
    while (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        found = found || !strcmp((const char *)sqlite3_column_text(st, 0), column);
    sqlite3_finalize(st);
    if (rc != SQLITE_OK || found)
        return rc;
    return sqlite3_exec(c->db, alter, NULL, NULL, msg);
}

/* The catalog and its journals (SQLite gives them the database file's mode) are private to the
 * daemon: make the file with mode CATALOG_FILE_MODE before SQLite does, and take group and
 * other access away from files an earlier version left (a warning when that fails). */
static int catalog_file_private(const char *db_file)
{
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        char path[PATH_MAX];
        if (snprintf(path, sizeof(path), "%s%s", db_file, suffixes[i]) >= (int)sizeof(path))
            return -ENAMETOOLONG;
        int fd = open(path, O_RDONLY | O_CLOEXEC | (i == 0 ? O_CREAT : 0), CATALOG_FILE_MODE);
        if (fd < 0) {
            if (errno == ENOENT && i > 0)
                continue;
            return -errno;
        }
        struct stat st;
        if (fstat(fd, &st) == 0 && (st.st_mode & 077) && fchmod(fd, st.st_mode & 0700) < 0)
            log_warn("catalog: %s is mode %04o and cannot be made private: %s", path,
                     (unsigned)(st.st_mode & 07777), strerror(errno));
        close(fd);
    }
    return 0;
}

int catalog_open(struct catalog **out, const char *db_file, char *err, size_t errlen)
{
    int fr = catalog_file_private(db_file);
    if (fr < 0) {
        snprintf(err, errlen, "%s: %s", db_file, strerror(-fr));
        return fr;
    }
    struct catalog *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    pthread_mutex_init(&c->lock, NULL);
    int rc = sqlite3_open_v2(db_file, &c->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", db_file, c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
        catalog_close(c);
        return sqlite_errno(rc) ? sqlite_errno(rc) : -EIO;
    }
    sqlite3_busy_timeout(c->db, CATALOG_BUSY_TIMEOUT_MS);
    char *msg = NULL;
    rc = sqlite3_exec(c->db,
                      "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
                      NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(c->db, catalog_schema, NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        rc = column_add(c, "snapshots", "label", "TEXT", &msg);
    if (rc == SQLITE_OK)
        rc = column_add(c, "snapshots", "chain", "TEXT", &msg);
    if (rc == SQLITE_OK)
        rc = column_add(c, "snapshots", "frozen_us", "INTEGER", &msg); /* NULL: not frozen */

    if (rc == SQLITE_OK)
        rc = sqlite3_exec(c->db, catalog_schema_tokens, NULL, NULL, &msg);
    sqlite3_stmt *st = NULL;
    int version = 0;
    if (rc == SQLITE_OK && sqlite3_prepare_v2(c->db, "PRAGMA user_version", -1, &st, NULL) == 0 &&
        sqlite3_step(st) == SQLITE_ROW)
        version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (rc == SQLITE_OK && version > CATALOG_SCHEMA_VERSION) {
        snprintf(err, errlen, "%s: catalog schema version %d is newer than this vmexportd (%d)",
                 db_file, version, CATALOG_SCHEMA_VERSION);
        catalog_close(c);
        return -EPROTO;
    }
    if (rc == SQLITE_OK && version == 0) {
        char pragma[64];
        snprintf(pragma, sizeof(pragma), "PRAGMA user_version=%d", CATALOG_SCHEMA_VERSION);
        rc = sqlite3_exec(c->db, pragma, NULL, NULL, &msg);
    }
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", db_file, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        catalog_close(c);
        return sqlite_errno(rc) ? sqlite_errno(rc) : -EIO;
    }
    *out = c;
    return 0;
}

void catalog_close(struct catalog *c)
{
    if (!c)
        return;
    sqlite3_close(c->db);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static char *col_strdup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? strdup((const char *)t) : NULL;
}

/* Load the disks of s. Called with the lock held. */
static int load_disks(struct catalog *c, struct snapshot *s)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(c->db,
                                "SELECT name, path, parent_path, repo_mountpoint, change_id, mode, "
                                "size FROM snapshot_disks WHERE snapshot_id = ? ORDER BY idx",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return sqlite_errno(rc);
    sqlite3_bind_text(st, 1, s->id, -1, SQLITE_STATIC);
    int r = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct snapshot_disk d = {
            .name = col_strdup(st, 0),
            .locator = col_strdup(st, 1),
            .parent_path = col_strdup(st, 2),
            .repo_mountpoint = col_strdup(st, 3),
            .change_id = col_strdup(st, 4),
            .mode = col_strdup(st, 5),
            .size = (uint64_t)sqlite3_column_int64(st, 6),
        };
        if ((r = snapshot_disk_list_append(&s->disks, d)) < 0) {
            free(d.name);
            free(d.locator);
            free(d.parent_path);
            free(d.repo_mountpoint);
            free(d.change_id);
            free(d.mode);
            break;
        }
    }
    if (r == 0 && rc != SQLITE_DONE)
        r = sqlite_errno(rc);
    sqlite3_finalize(st);
    return r;
}

#define SNAPSHOT_COLUMNS                                                                        \
    "seq, id, vm_id, provider, created_at, parent_id, status, label, chain, frozen_us"

static struct snapshot *row_to_snapshot(sqlite3_stmt *st)
{
    struct snapshot *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->seq = sqlite3_column_int64(st, 0);
    s->id = col_strdup(st, 1);
    s->vm_id = col_strdup(st, 2);
    s->provider = col_strdup(st, 3);
    s->created_at = col_strdup(st, 4);
    s->parent_id = col_strdup(st, 5);
    s->status = col_strdup(st, 6);
    s->label = col_strdup(st, 7);
    s->chain = col_strdup(st, 8);
    s->frozen = sqlite3_column_type(st, 9) != SQLITE_NULL;
    s->frozen_us = (uint64_t)sqlite3_column_int64(st, 9);
    if (!s->id || !s->vm_id || !s->provider || !s->created_at || !s->status) {
        snapshot_free(s);
        return NULL;
    }
    return s;
}

/* Run a query of snapshot rows with up to three text parameters (NULL: unbound), filling out.
 * Called with the lock held. */
static int query_snapshots(struct catalog *c, const char *sql, const char *p1, const char *p2,
                           const char *p3, snapshot_list *out)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        log_error("catalog: %s", sqlite3_errmsg(c->db));
        return sqlite_errno(rc);
    }
    const char *params[] = {p1, p2, p3};
    for (int i = 0; i < 3; i++)
        if (params[i])
            sqlite3_bind_text(st, i + 1, params[i], -1, SQLITE_STATIC);
    int r = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct snapshot *s = row_to_snapshot(st);
        if (!s) {
            r = -ENOMEM;
            break;
        }
        if ((r = snapshot_list_append(out, s)) < 0) {
            snapshot_free(s);
            break;
        }
    }
    if (r == 0 && rc != SQLITE_DONE)
        r = sqlite_errno(rc);
    sqlite3_finalize(st);
    for (size_t i = 0; r == 0 && i < out->len; i++)
        r = load_disks(c, out->ptr[i]);
    return r;
}

static int query_one(struct catalog *c, const char *sql, const char *p1, const char *p2,
                     struct snapshot **out)
{
    snapshot_list l = VECTOR_INIT;
    pthread_mutex_lock(&c->lock);
    int r = query_snapshots(c, sql, p1, p2, NULL, &l);
    pthread_mutex_unlock(&c->lock);
    if (r == 0 && l.len == 0)
        r = -ENOENT;
    if (r == 0) {
        *out = l.ptr[0];
        l.ptr[0] = NULL;
        l.len = 0;
    }
    snapshot_list_free(&l);
    return r;
}

int catalog_snapshot_get(struct catalog *c, const char *vm_id, const char *id,
                         struct snapshot **out)
{
    return query_one(c, "SELECT " SNAPSHOT_COLUMNS " FROM snapshots WHERE vm_id = ? AND id = ?",
                     vm_id, id, out);
}

int catalog_snapshot_find(struct catalog *c, const char *id, struct snapshot **out)
{
    return query_one(c, "SELECT " SNAPSHOT_COLUMNS " FROM snapshots WHERE id = ?", id, NULL, out);
}

int catalog_snapshot_by_change_id(struct catalog *c, const char *change_id, struct snapshot **out,
                                  char **disk_name)
{
    int r = query_one(c,
                      "SELECT " SNAPSHOT_COLUMNS " FROM snapshots WHERE id = "
                      "(SELECT snapshot_id FROM snapshot_disks WHERE change_id = ?)",
                      change_id, NULL, out);
    if (r < 0)
        return r;
    for (size_t i = 0; i < (*out)->disks.len; i++) {
        if (strcmp((*out)->disks.ptr[i].change_id, change_id) == 0) {
            *disk_name = strdup((*out)->disks.ptr[i].name);
            return *disk_name ? 0 : -ENOMEM;
        }
    }
    snapshot_free(*out);
    *out = NULL;
    return -ENOENT;
}

/* status ?2 matches itself; SNAPSHOT_STATUS_LISTED matches the snapshots that clients see. */
#define STATUS_MATCH                                                                            \
    "(status = ?2 OR (?2 = '" SNAPSHOT_STATUS_LISTED "' AND status IN ('ready', 'checkpoint')))"

int catalog_snapshot_list(struct catalog *c, const char *vm_id, const char *status,
                          snapshot_list *out)
{
    const char *sql;
    if (vm_id && status)
        sql = "SELECT " SNAPSHOT_COLUMNS " FROM snapshots WHERE vm_id = ?1 AND " STATUS_MATCH
              " ORDER BY seq";
    else if (vm_id)
        sql = "SELECT " SNAPSHOT_COLUMNS " FROM snapshots WHERE vm_id = ?1 ORDER BY seq";
    else if (status)
        sql = "SELECT " SNAPSHOT_COLUMNS " FROM snapshots WHERE " STATUS_MATCH " ORDER BY seq";
    else
        sql = "SELECT " SNAPSHOT_COLUMNS " FROM snapshots ORDER BY seq";
    /* Numbered parameters: ?1 is always vm_id, ?2 always status. */
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&c->lock);
    int r = query_snapshots(c, sql, vm_id, status, NULL, out);
    return r;
}

int catalog_recover(struct catalog *c, snapshot_list *out)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&c->lock);
    int r = query_snapshots(c,
                            "SELECT " SNAPSHOT_COLUMNS " FROM snapshots WHERE status IN "
                            "('creating', 'deleting') ORDER BY seq",
                            NULL, NULL, NULL, out);
    return r;
}

int catalog_snapshot_add(struct catalog *c, struct snapshot *s)
{
    sqlite3_stmt *st = NULL;
    int rc, r;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&c->lock);
    if ((r = exec_locked(c, "BEGIN IMMEDIATE")) < 0)
        goto out;

    if (!s->parent_id) {
        rc = sqlite3_prepare_v2(c->db,
                                "SELECT id FROM snapshots WHERE vm_id = ? AND status = 'ready' "
                                "ORDER BY seq DESC LIMIT 1",
                                -1, &st, NULL);
        if (rc != SQLITE_OK)
            goto fail_rc;
        sqlite3_bind_text(st, 1, s->vm_id, -1, SQLITE_STATIC);
        if ((rc = sqlite3_step(st)) == SQLITE_ROW)
            s->parent_id = col_strdup(st, 0);
        else if (rc != SQLITE_DONE)
            goto fail_rc;
        sqlite3_finalize(st);
        st = NULL;
    }

    rc = sqlite3_prepare_v2(c->db,
                            "INSERT INTO snapshots (id, vm_id, provider, created_at, parent_id, "
                            "status, label, chain) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto fail_rc;
    sqlite3_bind_text(st, 1, s->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, s->vm_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, s->provider, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, s->created_at, -1, SQLITE_STATIC);
    if (s->parent_id)
        sqlite3_bind_text(st, 5, s->parent_id, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 5);
    sqlite3_bind_text(st, 6, s->status, -1, SQLITE_STATIC);
    if (s->label)
        sqlite3_bind_text(st, 7, s->label, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 7);
    if (s->chain)
        sqlite3_bind_text(st, 8, s->chain, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 8);
    if ((rc = sqlite3_step(st)) != SQLITE_DONE)
        goto fail_rc;
    s->seq = sqlite3_last_insert_rowid(c->db);
    sqlite3_finalize(st);
    st = NULL;

    rc = sqlite3_prepare_v2(c->db,
                            "INSERT INTO snapshot_disks (snapshot_id, idx, name, path, parent_path, "
                            "repo_mountpoint, change_id, mode, size) VALUES (?,?,?,?,?,?,?,?,?)",
                            -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto fail_rc;
    for (size_t i = 0; i < s->disks.len; i++) {
        const struct snapshot_disk *d = &s->disks.ptr[i];
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, s->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)i);
        sqlite3_bind_text(st, 3, d->name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, d->locator, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, d->parent_path, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, d->repo_mountpoint, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 7, d->change_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 8, d->mode, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 9, (sqlite3_int64)d->size);
        if ((rc = sqlite3_step(st)) != SQLITE_DONE)
            goto fail_rc;
    }
    sqlite3_finalize(st);
    st = NULL;
    r = exec_locked(c, "COMMIT");
    goto out;

fail_rc:
    log_error("catalog: adding snapshot %s: %s", s->id, sqlite3_errmsg(c->db));
    r = sqlite_errno(rc) ? sqlite_errno(rc) : -EIO;
    sqlite3_finalize(st);
    exec_locked(c, "ROLLBACK");
out:
    return r;
}

int catalog_snapshot_finish(struct catalog *c, const struct snapshot *s)
{
    sqlite3_stmt *st = NULL;
    int rc = SQLITE_OK, r;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&c->lock);
    if ((r = exec_locked(c, "BEGIN IMMEDIATE")) < 0)
        goto out;
    rc = sqlite3_prepare_v2(c->db,
                            "UPDATE snapshot_disks SET size = ?, mode = ? "
                            "WHERE snapshot_id = ? AND name = ?",
                            -1, &st, NULL);
    for (size_t i = 0; rc == SQLITE_OK && i < s->disks.len; i++) {
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, (sqlite3_int64)s->disks.ptr[i].size);
        sqlite3_bind_text(st, 2, s->disks.ptr[i].mode, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, s->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, s->disks.ptr[i].name, -1, SQLITE_STATIC);
        rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(c->db);
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rc == SQLITE_OK &&
        (rc = sqlite3_prepare_v2(c->db, "UPDATE snapshots SET status = ?, frozen_us = ? WHERE id = ?",
                                 -1, &st, NULL)) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, s->status, -1, SQLITE_STATIC);
        if (s->frozen)
            sqlite3_bind_int64(st, 2, (sqlite3_int64)s->frozen_us);
        else
            sqlite3_bind_null(st, 2);
        sqlite3_bind_text(st, 3, s->id, -1, SQLITE_STATIC);
        rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(c->db);
        sqlite3_finalize(st);
    }
    if (rc != SQLITE_OK) {
        log_error("catalog: finishing snapshot %s: %s", s->id, sqlite3_errmsg(c->db));
        exec_locked(c, "ROLLBACK");
        r = sqlite_errno(rc) ? sqlite_errno(rc) : -EIO;
        goto out;
    }
    r = exec_locked(c, "COMMIT");
out:
    return r;
}

/* Run one statement with up to two text parameters; -ENOENT when it changed no row. */
static int exec_change(struct catalog *c, const char *sql, const char *p1, const char *p2)
{
    sqlite3_stmt *st;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&c->lock);
    int rc = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return sqlite_errno(rc);
    sqlite3_bind_text(st, 1, p1, -1, SQLITE_STATIC);
    if (p2)
        sqlite3_bind_text(st, 2, p2, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    int r = rc == SQLITE_DONE ? (sqlite3_changes(c->db) > 0 ? 0 : -ENOENT) : sqlite_errno(rc);
    if (rc != SQLITE_DONE)
        log_error("catalog: %s", sqlite3_errmsg(c->db));
    sqlite3_finalize(st);
    return r;
}

int catalog_snapshot_set_status(struct catalog *c, const char *id, const char *status)
{
    return exec_change(c, "UPDATE snapshots SET status = ?2 WHERE id = ?1", id, status);
}

int catalog_snapshot_remove(struct catalog *c, const char *id)
{
    /* Disks go with it (ON DELETE CASCADE); one statement is one transaction. */
    return exec_change(c, "DELETE FROM snapshots WHERE id = ?1", id, NULL);
}

int catalog_count(struct catalog *c, const char *status, int64_t *n)
{
    sqlite3_stmt *st;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&c->lock);
    int rc = sqlite3_prepare_v2(c->db, "SELECT count(*) FROM snapshots WHERE status = ?", -1, &st,
                                NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, status, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            *n = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    return rc == SQLITE_ROW ? 0 : sqlite_errno(rc) ? sqlite_errno(rc) : -EIO;
}

/* ---- uploads ---- */

void upload_record_clear(struct upload_record *u)
{
    free(u->id);
    free(u->vm_id);
    free(u->disk);
    free(u->partial_path);
    free(u->final_path);
    free(u->created_at);
    memset(u, 0, sizeof(*u));
}

void upload_record_list_free(upload_record_list *l)
{
    for (size_t i = 0; i < l->len; i++)
        upload_record_clear(&l->ptr[i]);
    upload_record_list_reset(l);
}

int catalog_upload_add(struct catalog *c, const struct upload_record *u)
{
    sqlite3_stmt *st;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&c->lock);
    int rc = sqlite3_prepare_v2(c->db,
                                "INSERT INTO uploads (id, vm_id, disk, partial_path, final_path, "
                                "size, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, u->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, u->vm_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, u->disk, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, u->partial_path, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, u->final_path, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 6, (sqlite3_int64)u->size);
        sqlite3_bind_text(st, 7, u->created_at, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        sqlite3_finalize(st);
    }
    if (rc != SQLITE_DONE)
        log_error("catalog: recording upload %s: %s", u->id, sqlite3_errmsg(c->db));
    return rc == SQLITE_DONE ? 0 : sqlite_errno(rc) ? sqlite_errno(rc) : -EIO;
}

int catalog_upload_remove(struct catalog *c, const char *id)
{
    return exec_change(c, "DELETE FROM uploads WHERE id = ?1", id, NULL);
}

int catalog_upload_list(struct catalog *c, upload_record_list *out)
{
    sqlite3_stmt *st;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&c->lock);
    int rc = sqlite3_prepare_v2(c->db,
                                "SELECT id, vm_id, disk, partial_path, final_path, size, "
                                "created_at FROM uploads ORDER BY created_at, id",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) {
        log_error("catalog: listing uploads: %s", sqlite3_errmsg(c->db));
        return sqlite_errno(rc);
    }
    int r = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct upload_record u = {
            .id = col_strdup(st, 0),
            .vm_id = col_strdup(st, 1),
            .disk = col_strdup(st, 2),
            .partial_path = col_strdup(st, 3),
            .final_path = col_strdup(st, 4),
            .size = (uint64_t)sqlite3_column_int64(st, 5),
            .created_at = col_strdup(st, 6),
        };
        if (!u.id || !u.vm_id || !u.disk || !u.partial_path || !u.final_path || !u.created_at)
            r = -ENOMEM;
        else
            r = upload_record_list_append(out, u);
        if (r < 0) {
            upload_record_clear(&u);
            break;
        }
    }
    if (r == 0 && rc != SQLITE_DONE)
        r = sqlite_errno(rc) ? sqlite_errno(rc) : -EIO;
    sqlite3_finalize(st);
    return r;
}

/* ---- revoked tokens ---- */

/* Drop the rows of tokens expired by now: of no use any more.  With c->lock held; an SQLite
 * result code (SQLITE_DONE on success). */
static int revoked_prune_locked(struct catalog *c, int64_t now)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(c->db, "DELETE FROM revoked_tokens WHERE exp <= ?", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, (sqlite3_int64)now);
        rc = sqlite3_step(st);
        sqlite3_finalize(st);
    }
    return rc;
}

int catalog_token_revoke(struct catalog *c, const char *id, int64_t exp, int64_t now)
{
    sqlite3_stmt *st;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&c->lock);
    /* Rows of tokens expired by now are of no use: drop them on the way. */
    int rc = revoked_prune_locked(c, now);
    if (rc == SQLITE_DONE)
        rc = sqlite3_prepare_v2(
            c->db, "INSERT OR IGNORE INTO revoked_tokens (id, exp) VALUES (?, ?)", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)exp);
        rc = sqlite3_step(st);
        sqlite3_finalize(st);
    }
    if (rc != SQLITE_DONE)
        log_error("catalog: recording a revoked token: %s", sqlite3_errmsg(c->db));
    return rc == SQLITE_DONE ? 0 : sqlite_errno(rc) ? sqlite_errno(rc) : -EIO;
}

int catalog_token_revoked_list(struct catalog *c, int64_t now,
                               int (*fn)(void *arg, const char *id, int64_t exp), void *arg)
{
    sqlite3_stmt *st = NULL;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&c->lock);
    int rc = revoked_prune_locked(c, now);
    if (rc == SQLITE_DONE || rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(c->db, "SELECT id, exp FROM revoked_tokens", -1, &st, NULL);
    int r = 0;
    if (rc == SQLITE_OK) {
        while ((rc = sqlite3_step(st)) == SQLITE_ROW && r == 0) {
            const unsigned char *id = sqlite3_column_text(st, 0);
            if (id)
                r = fn(arg, (const char *)id, (int64_t)sqlite3_column_int64(st, 1));
        }
        if (r == 0 && rc != SQLITE_DONE && rc != SQLITE_ROW)
            r = sqlite_errno(rc) ? sqlite_errno(rc) : -EIO;
    } else {
        r = sqlite_errno(rc) ? sqlite_errno(rc) : -EIO;
    }
    if (r < 0 && r != -ENOMEM && r != -ENOSPC)
        log_error("catalog: reading revoked tokens: %s", sqlite3_errmsg(c->db));
    sqlite3_finalize(st);
    return r;
}
