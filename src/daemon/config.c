/* Parsing and checking of the vmexportd INI file; see config.h. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/argv.h"
#include "core/cleanup.h"
#include "fs/blockhash.h"

const char config_help[] =
    "Configuration file (INI; ';' or '#' start comments):\n"
    "\n"
    "  [server]\n"
    "  listen = 127.0.0.1:5544       address:port to listen on ([::1]:5544 for IPv6)\n"
    "  certificate = FILE            PEM server certificate (required unless insecure_http)\n"
    "  key = FILE                    PEM private key of the certificate\n"
    "  ca_certificate = FILE         when set, clients must present a certificate signed by\n"
    "                                this CA (mutual TLS)\n"
    "  insecure_http = false         serve plain HTTP (demos and tests only)\n"
    "  max_connections = 1024        concurrent connections; requests on connections beyond\n"
    "                                it are answered 503 (Retry-After) and closed (each holds\n"
    "                                up to 4 open files; the daemon raises its soft open-files\n"
    "                                limit to the hard one and warns when that is still too low)\n"
    "  max_connections_per_address = 64\n"
    "                                connections from one client IP address; more are closed\n"
    "                                at once\n"
    "  header_timeout = 10           seconds a new connection may stay silent during its TLS\n"
    "                                handshake and first request's headers before it is closed,\n"
    "                                and the total time it has for them (a client trickling a\n"
    "                                byte now and then is closed too); a later request on a\n"
    "                                keep-alive connection has connection_timeout +\n"
    "                                header_timeout from the previous answer for its headers\n"
    "  connection_timeout = 60       seconds a connection may stay silent once its first\n"
    "                                request has arrived: between keep-alive requests and while\n"
    "                                a body or an answer is under way\n"
    "  worker_threads = 0            threads serving connections (event loop); 0: two per\n"
    "                                CPU, at least 4\n"
    "  job_threads = 8               requests that may block run at once, on each of two\n"
    "                                pools: long operations (snapshot create and delete, diffs,\n"
    "                                upload writes, flushes, finalize) and the rest (logins,\n"
    "                                listings); more wait their turn\n"
    "  tls_priorities = STRING       GnuTLS priority string (checked at start and by --check);\n"
    "                                default: TLS 1.2 and 1.3, forward-secret key exchange\n"
    "                                (ECDHE) and AEAD ciphers only (no RSA key exchange, no\n"
    "                                CBC):\n"
    "                                " CONFIG_DEFAULT_TLS_PRIORITIES "\n"
    "  shutdown_grace = 30           seconds running downloads may finish after SIGTERM\n"
    "\n"
    "  [auth]\n"
    "  users_file = FILE             lines \"name:HASH\" or \"name:HASH:ROLE\", HASH any\n"
    "                                crypt(3) hash (make one with: openssl passwd -6),\n"
    "                                ROLE admin (everything; the default), operator\n"
    "                                (snapshots, downloads, uploads) or reader (lists and\n"
    "                                downloads); e.g. backup:$6$...:operator.  Must not be\n"
    "                                accessible by others nor writable by its group\n"
    "                                (chmod 600).  SIGHUP reloads it: tokens of users\n"
    "                                removed or whose hash changed stop working\n"
    "  pam_service =                 when set, PAM is tried too (e.g. login)\n"
    "  pam_role = admin              role of users who log in through PAM\n"
    "  token_ttl = 3600              seconds a login token is valid\n"
    "  jwt_secret_file = FILE        HS256 key; created (0600, random) when missing\n"
    "  login_failures_per_address = 5\n"
    "                                failed logins an address (IPv6: its /64) may have\n"
    "  login_failures_per_user = 10  failed logins a user name may have, from any address\n"
    "  login_failure_window = 60     seconds those counts last (from the first failure);\n"
    "                                beyond either count, logins get 429 until it ends\n"
    "\n"
    "  [catalog]\n"
    "  db_file = FILE                SQLite catalog of snapshots, uploads and logged-out\n"
    "                                tokens (created when missing)\n"
    "\n"
    "  [snapshot]\n"
    "  freeze_command =              command run before snapshotting a VM, e.g.\n"
    "                                /etc/vmexport/freeze --quiet; a failure aborts the\n"
    "                                snapshot.  No shell runs it: the words (split as sh\n"
    "                                would, with '' \"\" and \\, nothing expanded; $ ` | & ;\n"
    "                                < > ( ) must be quoted) are the program, an absolute\n"
    "                                path, and its arguments; the VM ID is appended as one\n"
    "                                more argument.  Environment: only PATH=/usr/sbin:\n"
    "                                /usr/bin:/sbin:/bin, VMEXPORT_VM_ID and VMEXPORT_HOOK\n"
    "                                (freeze or thaw); descriptors: only 0 (/dev/null), 1, 2\n"
    "  thaw_command =                run after, whatever happened; the same way\n"
    "  hook_timeout = 60             seconds each command may take; then it is killed\n"
    "                                (SIGKILL to its process group) and counts as failed\n"
    "  block_hash = xxh128           digest per 64 KiB block that a copy-mode snapshot (a\n"
    "                                filesystem without reflink) records for later diffs:\n"
    "                                xxh128 (fast; detects any accidental change) or sha256\n"
    "                                (about 10x the CPU; also resists blocks crafted to\n"
    "                                collide by whoever writes the disks)\n"
    "\n"
    "  [upload]                      uploads of new disks (POST /api/v1/vms/VM/uploads)\n"
    "  idle_timeout = 300            seconds an upload may go without requests before it\n"
    "                                expires (its partial file is removed); also the idle\n"
    "                                time of downloads (POST /api/v1/vms/VM/downloads)\n"
    "  max_writers = 8               requests that may write one upload in parallel\n"
    "\n"
    "  [provider.NAME]               any number of providers\n"
    "  type = dir                    each subdirectory of path is a VM named after it; each\n"
    "  path = DIR                    regular *.img, *.raw or *.qcow2 file in it is a disk\n"
    "  snapshot_dir = DIR            default DIR/.vmexport-snapshots (same filesystem)\n"
    "\n"
    "  type = ovm                    Oracle VM: <repo>/VirtualMachines/<id>/vm.cfg; snapshots\n"
    "  repositories = DIR [DIR...]   in <repo>/CoriolisSnapshots/<snapshot>/\n"
    "\n"
    "  type = qemu                   running QEMU / qemu-storage-daemon processes over QMP;\n"
    "  qmp_sockets = GLOB            one monitor socket per VM (ID: -name or socket name)\n"
    "  guest_agent_sockets = GLOB    optional guest agent sockets, matched by VM ID\n"
    "  scratch_dir = DIR             default /var/lib/vmexport/scratch (copy-before-write)\n"
    "  nbd_dir = DIR                 default /run/vmexport/nbd (sockets of the NBD exports)\n"
    "  scratch_limit = BYTES         end a snapshot whose scratch image grows over this\n"
    "  snapshot_lifetime = SECONDS   end a snapshot's data after this (0: never)\n"
    "  freeze_timeout = SECONDS      guest agent freeze (default 10)\n"
    "\n"
    "  type = libvirt                libvirt domains (ID: name); a running domain's writable\n"
    "                                disks are snapshotted live: a checkpoint (qcow2 dirty\n"
    "                                bitmaps) and a pull-mode backup job read over NBD, one\n"
    "                                live snapshot per domain; frozen via its guest agent;\n"
    "                                a shut-off domain's disk files are read by a read-only\n"
    "                                qemu-storage-daemon, incrementally from the qcow2\n"
    "                                images' persistent checkpoint bitmaps\n"
    "  uri = qemu:///system          libvirt connection\n"
    "  scratch_dir = DIR             default /var/lib/vmexport/scratch: what the guest\n"
    "                                overwrites while a snapshot lives (writable by QEMU);\n"
    "                                the positions of shut-off domains' snapshots\n"
    "  nbd_dir = DIR                 default /run/vmexport/nbd: the jobs' NBD sockets\n"
    "                                (writable by QEMU, e.g. group libvirt-qemu)\n"
    "\n"    "  type = rbd                    Ceph RBD images (librbd); a disk's ID is its image name;\n"
    "                                a snapshot is one RBD group snapshot where the VM's\n"
    "                                images form a group, else one snapshot per image\n"
    "  pool = POOL                   the pool of the images\n"
    "  namespace = NS                optional RBD namespace\n"
    "  ceph_conf = FILE              default librados' search ($CEPH_CONF first)\n"
    "  ceph_id = ID                  client.ID (default $CEPH_ID, else admin)\n"
    "  group_by = rbd_group          each RBD group is a VM; metadata: images whose\n"
    "                                vmexport.vm metadata holds the VM's ID; openstack:\n"
    "                                <uuid>_disk[.SUFFIX] (Nova), volume-<uuid> (Cinder)\n"
    "\n"
    "  Symlinks are never followed below a provider's directories: a disk, VM directory or\n"
    "  vm.cfg disk path with a symlink on the way is not snapshotted, nor is a disk replaced\n"
    "  between the listing and the clone.\n";

/* Most distinct keys a file may set outside [provider.*] sections (there are fewer). */
#define CONFIG_KEYS_MAX 64

/* Parser state while inih walks the file. */
struct parse_state {
    struct server_config *cfg;
    char *err;
    size_t errlen;
    bool failed;
    char *seen[CONFIG_KEYS_MAX]; /* "section.key" of the keys set so far */
    size_t n_seen;
};

/* Whether section.key was set before (a second value would silently win); records it. */
static bool key_seen_twice(struct parse_state *ps, const char *section, const char *name)
{
    char key[256];
    snprintf(key, sizeof(key), "%s.%s", section, name);
    for (size_t i = 0; i < ps->n_seen; i++)
        if (!strcmp(ps->seen[i], key))
            return true;
    if (ps->n_seen < CONFIG_KEYS_MAX)
        ps->seen[ps->n_seen++] = strdup(key);
    return false;
}

static int set_str(char **dst, const char *value)
{
    free(*dst);
    *dst = *value ? strdup(value) : NULL;
    return *value && !*dst ? -ENOMEM : 0;
}

/* A hook command: kept as written and split into words; an empty value means none.  The
 * program must be an absolute path: hooks run with a minimal PATH, and no shell looks it up. */
static int set_hook(char **cmd, char ***argv, const char *value, char *msg, size_t msglen)
{
    size_t argc;
    argv_free(*argv);
    *argv = NULL;
    int r = set_str(cmd, value);
    if (r < 0 || !*cmd)
        return r;
    r = argv_split(value, argv, &argc, msg, msglen);
    if (r < 0)
        return r;
    if ((*argv)[0][0] != '/') {
        snprintf(msg, msglen, "the program must be an absolute path, not '%.80s'", (*argv)[0]);
        return -EINVAL;
    }
    return 0;
}

static int parse_bool(const char *v, bool *out)
{
    if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "1") || !strcmp(v, "on"))
        *out = true;
    else if (!strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "0") || !strcmp(v, "off"))
        *out = false;
    else
        return -EINVAL;
    return 0;
}

static int parse_uint(const char *v, unsigned min, unsigned max, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || n < min || n > max)
        return -EINVAL;
    *out = (unsigned)n;
    return 0;
}

/* "ADDRESS:PORT" or "[IPV6]:PORT", ADDRESS a numeric IPv4 or IPv6 address. */
static int parse_listen(struct server_config *cfg, const char *v)
{
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v)
        return -EINVAL;
    unsigned port;
    if (parse_uint(colon + 1, 1, 65535, &port) < 0)
        return -EINVAL;
    size_t hl = (size_t)(colon - v);
    if (v[0] == '[') { /* [::1]:5544 */
        if (hl < 3 || v[hl - 1] != ']')
            return -EINVAL;
        v++;
        hl -= 2;
    }
    char *host = strndup(v, hl);
    if (!host)
        return -ENOMEM;
    struct in6_addr a;
    if (inet_pton(AF_INET, host, &a) != 1 && inet_pton(AF_INET6, host, &a) != 1) {
        free(host);
        return -EINVAL;
    }
    free(cfg->listen_host);
    cfg->listen_host = host;
    cfg->listen_port = (uint16_t)port;
    return 0;
}

static int fail(struct parse_state *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(struct parse_state *ps, const char *fmt, ...)
{
    if (ps->failed)
        return 0; /* inih reports the first bad line; keep its message */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->err, ps->errlen, fmt, ap);
    va_end(ap);
    ps->failed = true;
    return 0; /* inih: stop and report the line */
}

static int add_provider_setting(struct parse_state *ps, const char *name, const char *key,
                                const char *value)
{
    struct server_config *cfg = ps->cfg;
    struct config_provider *p = NULL;
    for (size_t i = 0; i < cfg->n_providers; i++)
        if (!strcmp(cfg->providers[i].name, name))
            p = &cfg->providers[i];
    if (!p) {
        struct config_provider *np =
            realloc(cfg->providers, (cfg->n_providers + 1) * sizeof(*cfg->providers));
        if (!np)
            return -ENOMEM;
        cfg->providers = np;
        p = &cfg->providers[cfg->n_providers++];
        memset(p, 0, sizeof(*p));
        if (!(p->name = strdup(name)))
            return -ENOMEM;
    }
    for (size_t i = 0; i < p->n_settings; i++)
        if (!strcmp(p->settings[i].key, key))
            return -EEXIST;
    struct provider_setting *ns = realloc(p->settings, (p->n_settings + 1) * sizeof(*ns));
    if (!ns)
        return -ENOMEM;
    p->settings = ns;
    ns[p->n_settings].key = strdup(key);
    ns[p->n_settings].value = strdup(value);
    if (!ns[p->n_settings].key || !ns[p->n_settings].value)
        return -ENOMEM;
    p->n_settings++;
    return 0;
}

static int config_ini_handler(void *user, const char *section, const char *name, const char *value)
{
    struct parse_state *ps = user;
    struct server_config *cfg = ps->cfg;
    int r = 0;

    if (!strncmp(section, "provider.", 9)) {
        const char *pname = section + 9;
        if (!provider_id_is_safe(pname))
            return fail(ps, "[%s] bad provider name", section);
        r = add_provider_setting(ps, pname, name, value);
        if (r == -EEXIST)
            return fail(ps, "[%s] %s given twice", section, name);
        return r < 0 ? fail(ps, "[%s] %s: out of memory", section, name ? name : "") : 1;
    }
    if (strcmp(section, "server") && strcmp(section, "auth") && strcmp(section, "catalog") &&
        strcmp(section, "snapshot") && strcmp(section, "upload"))
        return fail(ps, "unknown section [%s]", section);

    if (key_seen_twice(ps, section, name))
        return fail(ps, "[%s] %s given twice", section, name);
#define KEY(s, k) (!strcmp(section, s) && !strcmp(name, k))
    if (KEY("server", "listen")) {
        if (parse_listen(cfg, value) < 0)
            return fail(ps,
                        "[%s] %s: '%s' is not ADDRESS:PORT with a numeric IPv4 address or "
                        "[IPv6] address (e.g. 0.0.0.0:5544, [::]:5544)",
                        section, name, value);
    } else if (KEY("server", "certificate"))
        r = set_str(&cfg->certificate, value);
    else if (KEY("server", "key"))
        r = set_str(&cfg->key, value);
    else if (KEY("server", "ca_certificate"))
        r = set_str(&cfg->ca_certificate, value);
    else if (KEY("server", "insecure_http"))
        r = parse_bool(value, &cfg->insecure_http);
    else if (KEY("server", "max_connections"))
        r = parse_uint(value, 1, 100000, &cfg->max_connections);
    else if (KEY("server", "connection_timeout"))
        r = parse_uint(value, 1, 86400, &cfg->connection_timeout);
    else if (KEY("server", "max_connections_per_address"))
        r = parse_uint(value, 1, 100000, &cfg->max_connections_per_address);
    else if (KEY("server", "header_timeout"))
        r = parse_uint(value, 1, 3600, &cfg->header_timeout);
    else if (KEY("server", "worker_threads"))
        r = parse_uint(value, 0, 256, &cfg->worker_threads);
    else if (KEY("server", "job_threads"))
        r = parse_uint(value, 1, 256, &cfg->job_threads);
    else if (KEY("server", "tls_priorities"))
        r = set_str(&cfg->tls_priorities, value);
    else if (KEY("server", "shutdown_grace"))
        r = parse_uint(value, 0, 86400, &cfg->shutdown_grace);
    else if (KEY("auth", "users_file"))
        r = set_str(&cfg->users_file, value);
    else if (KEY("auth", "pam_service"))
        r = set_str(&cfg->pam_service, value);
    else if (KEY("auth", "token_ttl"))
        r = parse_uint(value, 1, 30 * 86400, &cfg->token_ttl);
    else if (KEY("auth", "jwt_secret_file"))
        r = set_str(&cfg->jwt_secret_file, value);
    else if (KEY("auth", "pam_role")) {
        if (auth_role_parse(value, &cfg->pam_role) < 0)
            return fail(ps, "[%s] %s: must be admin, operator or reader, not '%s'", section, name,
                        value);
    } else if (KEY("auth", "login_failures_per_address"))
        r = parse_uint(value, 1, 1000000, &cfg->login_failures_per_address);
    else if (KEY("auth", "login_failures_per_user"))
        r = parse_uint(value, 1, 1000000, &cfg->login_failures_per_user);
    else if (KEY("auth", "login_failure_window"))
        r = parse_uint(value, 1, 86400, &cfg->login_failure_window);
    else if (KEY("catalog", "db_file"))
        r = set_str(&cfg->db_file, value);
    else if (KEY("snapshot", "freeze_command") || KEY("snapshot", "thaw_command")) {
        bool freeze = !strcmp(name, "freeze_command");
        char msg[160] = "";
        r = set_hook(freeze ? &cfg->freeze_command : &cfg->thaw_command,
                     freeze ? &cfg->freeze_argv : &cfg->thaw_argv, value, msg, sizeof(msg));
        if (r == -EINVAL)
            return fail(ps, "[%s] %s: %s", section, name, msg);
    } else if (KEY("snapshot", "hook_timeout"))
        r = parse_uint(value, 1, 86400, &cfg->hook_timeout);
    else if (KEY("snapshot", "block_hash")) {
        enum blockhash_algo algo;
        if (blockhash_algo_parse(value, &algo) < 0)
            return fail(ps, "[%s] %s: must be xxh128 or sha256, not '%s'", section, name, value);
        cfg->block_hash = blockhash_algo_name(algo);
    } else if (KEY("upload", "idle_timeout"))
        r = parse_uint(value, 1, 86400, &cfg->upload_idle_timeout);
    else if (KEY("upload", "max_writers"))
        r = parse_uint(value, 1, 256, &cfg->upload_max_writers);
    else
        return fail(ps, "[%s] unknown key '%s' (see vmexportd --help)", section, name);
#undef KEY
    if (r == -ENOMEM)
        return fail(ps, "[%s] %s: out of memory", section, name);
    if (r < 0)
        return fail(ps, "[%s] %s: invalid value", section, name);
    return 1;
}

static int check_readable(const char *path, const char *section, const char *key, char *err,
                          size_t errlen, const char *file)
{
    if (access(path, R_OK) == 0)
        return 0;
    int e = errno;
    snprintf(err, errlen, "%s: [%s] %s: %s: %s", file, section, key, path, strerror(e));
    return -e;
}

int config_load(struct server_config *cfg, const char *path, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->token_ttl = CONFIG_DEFAULT_TOKEN_TTL;
    cfg->max_connections = CONFIG_DEFAULT_MAX_CONNECTIONS;
    cfg->connection_timeout = CONFIG_DEFAULT_CONN_TIMEOUT;
    cfg->max_connections_per_address = CONFIG_DEFAULT_MAX_PER_ADDRESS;
    cfg->header_timeout = CONFIG_DEFAULT_HEADER_TIMEOUT;
    cfg->job_threads = CONFIG_DEFAULT_JOB_THREADS;
    cfg->shutdown_grace = CONFIG_DEFAULT_SHUTDOWN_GRACE;
    cfg->hook_timeout = CONFIG_DEFAULT_HOOK_TIMEOUT;
    cfg->block_hash = NULL;
    cfg->upload_idle_timeout = CONFIG_DEFAULT_UPLOAD_IDLE;
    cfg->upload_max_writers = CONFIG_DEFAULT_UPLOAD_WRITERS;
    cfg->pam_role = AUTH_ROLE_ADMIN;
    cfg->login_failures_per_address = CONFIG_DEFAULT_LOGIN_PER_ADDR;
    cfg->login_failures_per_user = CONFIG_DEFAULT_LOGIN_PER_USER;
    cfg->login_failure_window = CONFIG_DEFAULT_LOGIN_WINDOW;
    if (!(cfg->file = strdup(path)) || parse_listen(cfg, CONFIG_DEFAULT_LISTEN) < 0)
        return -ENOMEM;

    FILE *f = fopen(path, "re");
    if (!f) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    char msg[512] = "";
    struct parse_state ps = {.cfg = cfg, .err = msg, .errlen = sizeof(msg)};
    int line = ini_parse_file(f, config_ini_handler, &ps);
    fclose(f);
    for (size_t i = 0; i < ps.n_seen; i++)
        free(ps.seen[i]);
    if (line != 0) {
        snprintf(err, errlen, "%s:%d: %s", path, line,
                 ps.failed ? msg : "syntax error (expected [section] or key = value)");
        return -EINVAL;
    }

    int r;
    if (!cfg->insecure_http) {
        if (!cfg->certificate || !cfg->key) {
            snprintf(err, errlen,
                     "%s: [server] certificate and key are required (or insecure_http = true)",
                     path);
            return -EINVAL;
        }
        if ((r = check_readable(cfg->certificate, "server", "certificate", err, errlen, path)) <
                0 ||
            (r = check_readable(cfg->key, "server", "key", err, errlen, path)) < 0)
            return r;
    }
    if (cfg->ca_certificate &&
        (r = check_readable(cfg->ca_certificate, "server", "ca_certificate", err, errlen, path)) <
            0)
        return r;
    if (!cfg->tls_priorities && !(cfg->tls_priorities = strdup(CONFIG_DEFAULT_TLS_PRIORITIES)))
        return -ENOMEM;
    if (cfg->ca_certificate && cfg->insecure_http) {
        snprintf(err, errlen, "%s: [server] ca_certificate needs TLS (insecure_http = false)", path);
        return -EINVAL;
    }
    if (cfg->users_file &&
        (r = check_readable(cfg->users_file, "auth", "users_file", err, errlen, path)) < 0)
        return r;
    if (!cfg->users_file && !cfg->pam_service) {
        snprintf(err, errlen, "%s: [auth] users_file or pam_service is required", path);
        return -EINVAL;
    }
    if (!cfg->jwt_secret_file) {
        snprintf(err, errlen, "%s: [auth] jwt_secret_file is required", path);
        return -EINVAL;
    }
    if (!cfg->db_file) {
        snprintf(err, errlen, "%s: [catalog] db_file is required", path);
        return -EINVAL;
    }
    const char *const hooks[][2] = {
        {"freeze_command", cfg->freeze_argv ? cfg->freeze_argv[0] : NULL},
        {"thaw_command", cfg->thaw_argv ? cfg->thaw_argv[0] : NULL}};
    for (size_t i = 0; i < ARRAY_SIZE(hooks); i++) {
        if (hooks[i][1] && access(hooks[i][1], X_OK) < 0) {
            int e = errno;
            snprintf(err, errlen, "%s: [snapshot] %s: %s: %s", path, hooks[i][0], hooks[i][1],
                     strerror(e));
            return -e;
        }
    }
    if (cfg->n_providers == 0) {
        snprintf(err, errlen, "%s: no [provider.NAME] section: nothing to export", path);
        return -EINVAL;
    }
    return 0;
}

void config_free(struct server_config *cfg)
{
    free(cfg->file);
    free(cfg->listen_host);
    free(cfg->certificate);
    free(cfg->key);
    free(cfg->ca_certificate);
    free(cfg->tls_priorities);
    free(cfg->users_file);
    free(cfg->pam_service);
    free(cfg->jwt_secret_file);
    free(cfg->db_file);
    free(cfg->freeze_command);
    free(cfg->thaw_command);
    argv_free(cfg->freeze_argv);
    argv_free(cfg->thaw_argv);
    for (size_t i = 0; i < cfg->n_providers; i++) {
        struct config_provider *p = &cfg->providers[i];
        for (size_t j = 0; j < p->n_settings; j++) {
            free((char *)p->settings[j].key);
            free((char *)p->settings[j].value);
        }
        free(p->settings);
        free(p->name);
    }
    free(cfg->providers);
    memset(cfg, 0, sizeof(*cfg));
}
