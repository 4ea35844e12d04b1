/* Tests of the backup engine (src/backup/) as a library, without a terminal.
 *
 * Without a daemon: --transport names, and the local source's identity checks (it reads a
 * file only when its file_id and size are what the daemon said).
 *
 * With a daemon (tests/integration/test-backup-engine.sh sets VMEXPORT_SERVER, VMEXPORT_USER,
 * VMEXPORT_PASSWORD, VMEXPORT_CACERT, VMEXPORT_TEST_VMS: the `dir` provider's directory holding
 * VM "vmeng", and VMEXPORT_TEST_WORK: a scratch directory): backup_run() through the https and
 * the local source in turn, the disks changed between runs (new data, a discarded range that
 * must come back as zeros, a grown disk, a new disk), the base snapshot deleted on the server;
 * after each run the repository's manifests are compared bit for bit with the disk files, the
 * result's figures and the progress callback are checked, and the engine must not have written
 * to stdout or stderr.  Without those variables these tests are skipped.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backup/backup.h"
#include "backup/source.h"
#include "client/client.h"
#include "client/rest.h"
#include "fs/fsinfo.h"
#include "repo/repo.h"

#define KIB   1024ull
#define MIB   (1024ull * KIB)
#define VM    "vmeng"
#define CHUNK (256 * KIB) /* small chunks: several per changed region */

/* ---- without a daemon ---- */

static void test_transport_parse(void **state)
{
    (void)state;
    enum backup_transport t;
    assert_int_equal(backup_transport_parse("auto", &t), 0);
    assert_int_equal(t, BACKUP_TRANSPORT_AUTO);
    assert_int_equal(backup_transport_parse("https", &t), 0);
    assert_int_equal(t, BACKUP_TRANSPORT_HTTPS);
    assert_int_equal(backup_transport_parse("local", &t), 0);
    assert_int_equal(t, BACKUP_TRANSPORT_LOCAL);
    assert_int_equal(backup_transport_parse("nbd", &t), 0);
    assert_int_equal(t, BACKUP_TRANSPORT_NBD);
    assert_int_equal(backup_transport_parse("nfs", &t), -EINVAL);
    assert_int_equal(backup_transport_parse("", &t), -EINVAL);
}

/* The chain a repository's backups ask for: valid for the server (1 to 64 of A-Z a-z 0-9 _ -),
 * "vmexport-" and the repository's ID, or, for an ID that is not plain hex (older
 * configurations), hex digits of its SHA-256. */
static void check_chain_chars(const char *chain)
{
    assert_true(strlen(chain) >= 1 && strlen(chain) <= 64);
    assert_int_equal(
        strspn(chain, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"),
        strlen(chain));
}

static void test_chain_id(void **state)
{
    (void)state;
    char dir[] = "/tmp/vmexport-chain-XXXXXX", err[256], path[64], want[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/r", dir);
    struct repo_init_options ro = {.chunk_size = 1 << 20};
    assert_int_equal(repo_init(path, &ro, err, sizeof(err)), 0);
    struct repo *r = NULL;
    assert_int_equal(repo_open(path, NULL, &r, err, sizeof(err)), 0);
    char *chain = backup_chain_id(r);
    assert_non_null(chain);
    snprintf(want, sizeof(want), "vmexport-%s", repo_id(r));
    assert_string_equal(chain, want);
    check_chain_chars(chain);
    free(chain);
    repo_close(r);

    /* An older configuration's ID that is not hex. */
    char cfg[96];
    snprintf(cfg, sizeof(cfg), "%s/config", path);
    FILE *f = fopen(cfg, "re");
    assert_non_null(f);
    char text[4096];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    json_object_set_new(j, "id", json_string("web farm / repo #1"));
    assert_int_equal(json_dump_file(j, cfg, 0), 0);
    json_decref(j);
    assert_int_equal(repo_open(path, NULL, &r, err, sizeof(err)), 0);
    chain = backup_chain_id(r);
    assert_non_null(chain);
    assert_int_equal(strncmp(chain, "vmexport-", 9), 0);
    assert_int_equal(strlen(chain), 64);
    check_chain_chars(chain);
    free(chain);
    repo_close(r);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void fill_random(uint8_t *buf, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++) {
        seed = seed * 1103515245u + 12345u;
        buf[i] = (uint8_t)(seed >> 16);
    }
}

static void test_source_local(void **state)
{
    (void)state;
    char dir[] = "/tmp/vmexport-test-source-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[sizeof(dir) + 16], link[sizeof(dir) + 16];
    snprintf(path, sizeof(path), "%s/disk.img", dir);
    snprintf(link, sizeof(link), "%s/link.img", dir);
    const size_t size = 3 * MIB + 12345;
    uint8_t *data = malloc(size), *got = aligned_alloc(4096, 2 * MIB);
    assert_non_null(data);
    assert_non_null(got);
    fill_random(data, size, 7);
    memset(data + MIB, 0, MIB); /* a hole in the file */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, data, MIB, 0), (ssize_t)MIB);
    assert_int_equal(pwrite(fd, data + 2 * MIB, size - 2 * MIB, 2 * MIB),
                     (ssize_t)(size - 2 * MIB));
    char id[FS_FILE_ID_MAX];
    assert_int_equal(fs_file_id_fd(fd, id), 0);
    close(fd);
    assert_int_equal(symlink(path, link), 0);

    struct source_disk d = {
        .vm = VM, .snapshot = "s", .name = "disk.img", .size = size, .path = path, .file_id = id};
    struct source *s = NULL;
    char why[256] = "";
    assert_int_equal(source_local_open(&d, &s, why, sizeof(why)), 0);
    assert_string_equal(s->ops->name, "local");
    assert_int_equal(s->size, size);
    /* Aligned (O_DIRECT where the filesystem allows) and unaligned reads, the hole, the tail. */
    assert_int_equal(source_pread(s, 0, got, 2 * MIB, 0, why, sizeof(why)), 0);
    assert_memory_equal(got, data, 2 * MIB);
    assert_int_equal(source_pread(s, 3, got, 12345, 3 * MIB, why, sizeof(why)), 0);
    assert_memory_equal(got, data + 3 * MIB, 12345);
    assert_int_equal(source_pread(s, 1, got, 777, MIB - 100, why, sizeof(why)), 0);
    assert_memory_equal(got, data + MIB - 100, 777);
    /* Past the end: the disk ended early. */
    assert_int_equal(source_pread(s, 0, got, 4096, size - 100, why, sizeof(why)), -ENODATA);
    assert_non_null(strstr(why, "shorter than the disk"));
    source_close(s);

    /* Not the daemon's file: another identity, another size, no identity, a symlink. */
    struct source_disk bad = d;
    bad.file_id = "0-0-0";
    s = NULL;
    assert_int_equal(source_local_open(&bad, &s, why, sizeof(why)), -ESTALE);
    assert_null(s);
    assert_non_null(strstr(why, "not the server's file"));
    bad = d;
    bad.size = size + 1;
    assert_int_equal(source_local_open(&bad, &s, why, sizeof(why)), -ESTALE);
    assert_non_null(strstr(why, "size differs"));
    bad = d;
    bad.file_id = NULL;
    assert_int_equal(source_local_open(&bad, &s, why, sizeof(why)), -ENOENT);
    assert_non_null(strstr(why, "no file identity"));
    bad = d;
    bad.path = link;
    assert_true(source_local_open(&bad, &s, why, sizeof(why)) < 0);
    assert_null(s);
    bad.path = "/nonexistent/vmexport/disk.img";
    assert_int_equal(source_local_open(&bad, &s, why, sizeof(why)), -ENOENT);
    assert_non_null(strstr(why, "/nonexistent/vmexport/disk.img"));

    unlink(link);
    unlink(path);
    rmdir(dir);
    free(data);
    free(got);
}

/* ---- with a daemon ---- */

struct daemon_env {
    const char *vms, *work;
    struct client *client;
    struct repo *repo;
};

/* What the callbacks saw during one run. */
struct seen {
    uint64_t total;
    atomic_ullong done;
    unsigned starts, warnings;
};

static void on_start(void *opaque, uint64_t total)
{
    struct seen *s = opaque;
    s->total = total;
    s->starts++;
}

static void on_progress(void *opaque, uint64_t bytes)
{
    struct seen *s = opaque;
    atomic_fetch_add(&s->done, bytes);
}

static void on_warn(void *opaque, const char *msg)
{
    struct seen *s = opaque;
    print_message("# warning: %s\n", msg);
    s->warnings++;
}

static int daemon_setup(void **state)
{
    const char *server = getenv("VMEXPORT_SERVER"), *vms = getenv("VMEXPORT_TEST_VMS");
    const char *work = getenv("VMEXPORT_TEST_WORK");
    if (!server || !vms || !work) {
        *state = NULL;
        return 0;
    }
    struct daemon_env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    e->vms = vms;
    e->work = work;
    char cache[4096], repo[4096], err[256] = "";
    snprintf(cache, sizeof(cache), "%s/cache", work);
    snprintf(repo, sizeof(repo), "%s/engine-repo", work);
    struct client_options co = {
        .server = server,
        .user = getenv("VMEXPORT_USER"),
        .password = getenv("VMEXPORT_PASSWORD"),
        .cacert = getenv("VMEXPORT_CACERT"),
        .token_cache_dir = cache,
    };
    assert_int_equal(client_new(&co, &e->client), 0);
    assert_int_equal(client_login(e->client), 0);
    struct repo_init_options ro = {.chunk_size = CHUNK};
    assert_int_equal(repo_init(repo, &ro, err, sizeof(err)), 0);
    assert_int_equal(repo_open(repo, NULL, &e->repo, err, sizeof(err)), 0);
    *state = e;
    return 0;
}

static int daemon_teardown(void **state)
{
    struct daemon_env *e = *state;
    if (e) {
        repo_close(e->repo);
        client_free(e->client);
        free(e);
    }
    return 0;
}

/* Every disk of the latest backup of VM equals its file in the VM's directory, bit for bit. */
static void assert_backup_matches_disks(struct daemon_env *e, size_t want_disks)
{
    struct backup *b = NULL;
    assert_int_equal(repo_backup_latest(e->repo, VM, &b), 0);
    assert_int_equal(b->disks.len, want_disks);
    const uint32_t cs = repo_chunk_size(e->repo);
    uint8_t *chunk = malloc(cs), *file = malloc(cs);
    assert_non_null(chunk);
    assert_non_null(file);
    for (size_t i = 0; i < b->disks.len; i++) {
        struct manifest m;
        assert_int_equal(repo_manifest_read(e->repo, b, b->disks.ptr[i].name, &m), 0);
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s/%s", e->vms, VM, m.disk);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        struct stat st;
        assert_int_equal(fstat(fd, &st), 0);
        assert_int_equal(m.disk_size, (uint64_t)st.st_size);
        for (uint64_t k = 0; k < manifest_chunks(&m); k++) {
            uint64_t off = k * cs;
            size_t len = m.disk_size - off < cs ? (size_t)(m.disk_size - off) : cs, got = len;
            const struct manifest_entry *me = manifest_find(&m, k);
            if (!me)
                memset(chunk, 0, len);
            else
                assert_int_equal(repo_chunk_read(e->repo, &me->id, chunk, cs, &got), 0);
            assert_int_equal(got, len);
            assert_int_equal(pread(fd, file, len, (off_t)off), (ssize_t)len);
            if (memcmp(chunk, file, len))
                fail_msg("disk %s: chunk %" PRIu64 " differs from the file", m.disk, k);
        }
        close(fd);
        manifest_free(&m);
    }
    free(chunk);
    free(file);
    backup_free(b);
}

/* Run a backup of VM with stdout and stderr pointed at a file, which must stay empty. */
static int run_quiet(struct daemon_env *e, enum backup_transport t, bool full, struct seen *seen,
                     struct backup_result *res, const char *vm)
{
    struct backup_options o = {
        .repo = e->repo,
        .client = e->client,
        .server = getenv("VMEXPORT_SERVER"),
        .vm = vm,
        .full = full,
        .jobs = 3,
        .keep_snapshots = 1,
        .transport = t,
        .now = 1700000000,
        .start = on_start,
        .progress = on_progress,
        .warn = on_warn,
        .opaque = seen,
    };
    char out[4096];
    snprintf(out, sizeof(out), "%s/engine-output", e->work);
    int ofd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(ofd >= 0);
    fflush(stdout);
    fflush(stderr);
    int save1 = dup(1), save2 = dup(2);
    dup2(ofd, 1);
    dup2(ofd, 2);
    int r = backup_run(&o, res);
    fflush(stdout);
    fflush(stderr);
    dup2(save1, 1);
    dup2(save2, 2);
    close(save1);
    close(save2);
    struct stat st;
    assert_int_equal(fstat(ofd, &st), 0);
    close(ofd);
    if (st.st_size != 0)
        fail_msg("the engine wrote %lld bytes to stdout/stderr", (long long)st.st_size);
    return r;
}

/* pwrite of len bytes of pattern seed at off into the VM's disk name. */
static void disk_write(struct daemon_env *e, const char *name, uint64_t off, size_t len,
                       unsigned seed)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s/%s", e->vms, VM, name);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    fill_random(buf, len, seed);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
    assert_int_equal(fsync(fd), 0);
    close(fd);
    free(buf);
}

static void disk_punch(struct daemon_env *e, const char *name, uint64_t off, uint64_t len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s/%s", e->vms, VM, name);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len), 0);
    assert_int_equal(fsync(fd), 0);
    close(fd);
}

/* One run: succeeds over transport t, prints nothing, reports what it read, restores exactly. */
static void backup_and_check(struct daemon_env *e, enum backup_transport t, bool full,
                             bool want_incremental, uint64_t max_read, size_t ndisks,
                             struct backup_result *res)
{
    struct seen seen = {0};
    int r = run_quiet(e, t, full, &seen, res, VM);
    if (r < 0)
        fail_msg("backup_run: %s", res->error);
    assert_string_equal(res->error, "");
    assert_string_equal(res->transport, t == BACKUP_TRANSPORT_LOCAL ? "local" : "https");
    assert_int_equal(res->incremental, want_incremental);
    assert_non_null(res->backup_id);
    assert_non_null(res->snapshot_id);
    assert_int_equal(seen.starts, 1);
    assert_int_equal(seen.warnings, 0);
    /* Every touched chunk was processed once: the progress adds up to the announced total. */
    assert_int_equal(atomic_load(&seen.done), seen.total);
    assert_true(res->bytes_read <= seen.total);
    if (res->bytes_read > max_read)
        fail_msg("read %" PRIu64 " bytes, expected at most %" PRIu64, res->bytes_read, max_read);
    if (t == BACKUP_TRANSPORT_LOCAL)
        assert_int_equal(res->bytes_transferred, 0);
    assert_backup_matches_disks(e, ndisks);
}

static void test_engine_sources(void **state)
{
    struct daemon_env *e = *state;
    if (!e)
        skip();
    struct backup_result res;

    /* 1: full, over https.  a.img: 64 MiB with 3 MiB of data; b.raw: 3 MiB + 12345 bytes. */
    backup_and_check(e, BACKUP_TRANSPORT_HTTPS, false, false, 8 * MIB, 2, &res);
    assert_true(res.bytes_read >= 3 * MIB);
    assert_true(res.bytes_transferred > 0);
    backup_result_free(&res);

    /* 2: incremental over the local source: 100 KiB of new data across a chunk boundary, and
     * a discarded MiB of old data that must come back as zeros without being read. */
    disk_write(e, "a.img", 5 * MIB - 50 * KIB, 100 * KIB, 21);
    disk_punch(e, "a.img", 20 * MIB, MIB);
    backup_and_check(e, BACKUP_TRANSPORT_LOCAL, false, true, 2 * CHUNK, 2, &res);
    assert_true(res.chunks_reused > 0);
    backup_result_free(&res);

    /* 3: incremental over https: b.raw grows by 1 MiB + 7 bytes of data; a new disk c.img
     * (not in the base: read in full, 1 MiB of data in 8 MiB). */
    disk_write(e, "b.raw", 3 * MIB + 12345, MIB + 7, 33);
    disk_write(e, "a.img", 40 * MIB + 3, 5, 34); /* 5 bytes inside a hole */
    char cpath[4096];
    snprintf(cpath, sizeof(cpath), "%s/%s/c.img", e->vms, VM);
    int cfd = open(cpath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(cfd >= 0);
    assert_int_equal(ftruncate(cfd, 8 * MIB), 0);
    close(cfd);
    disk_write(e, "c.img", 3 * MIB, MIB, 35);
    backup_and_check(e, BACKUP_TRANSPORT_HTTPS, false, true, 3 * MIB + 2 * CHUNK, 3, &res);
    char *base = res.snapshot_id;
    res.snapshot_id = NULL;
    backup_result_free(&res);

    /* 4: the base snapshot is gone from the server: everything allocated is read again. */
    assert_int_equal(client_delete_snapshot(e->client, VM, base), 0);
    free(base);
    disk_write(e, "a.img", 0, 4096, 45);
    backup_and_check(e, BACKUP_TRANSPORT_LOCAL, false, true, 16 * MIB, 3, &res);
    assert_true(res.bytes_read >= 4 * MIB);
    backup_result_free(&res);

    /* 5: --full over https reads everything allocated even with a base. */
    disk_punch(e, "a.img", 0, 64 * KIB);
    backup_and_check(e, BACKUP_TRANSPORT_HTTPS, true, false, 16 * MIB, 3, &res);
    assert_true(res.bytes_read >= 4 * MIB);
    backup_result_free(&res);
}

static void test_engine_failure(void **state)
{
    struct daemon_env *e = *state;
    if (!e)
        skip();
    struct seen seen = {0};
    struct backup_result res;
    int r = run_quiet(e, BACKUP_TRANSPORT_AUTO, false, &seen, &res, "no-such-vm\"");
    assert_true(r < 0);
    /* The message names the VM and the cause; nothing was started. */
    assert_non_null(strstr(res.error, "VM no-such-vm\""));
    assert_int_equal(seen.starts, 0);
    assert_null(res.backup_id);
    backup_result_free(&res);
}

int main(void)
{
    /* One group: its setup connects to the daemon when the environment names one (the tests
     * without a daemon ignore the state).  Without a daemon (the suite's plain run of the unit
     * tests) only those run: the daemon tests run from tests/integration/test-backup-engine.sh,
     * which fails on any of them skipped. */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transport_parse), cmocka_unit_test(test_source_local),
        cmocka_unit_test(test_chain_id),        cmocka_unit_test(test_engine_sources),
        cmocka_unit_test(test_engine_failure),
    };
    size_t n = getenv("VMEXPORT_SERVER") ? sizeof(tests) / sizeof(tests[0]) : 3;
    return _cmocka_run_group_tests("backup_engine", tests, n, daemon_setup, daemon_teardown);
}
