/* The "ovm" provider: VMs of Oracle VM repositories, as the 004 exporter sees them.
 *
 *   [provider.ovm]
 *   type = ovm
 *   repositories = /OVS/Repositories/0004fb0000030000aaaa /OVS/Repositories/0004fb0000030000bbbb
 *
 * A VM is <repo>/VirtualMachines/<dir>/vm.cfg, a Xen configuration file in Python syntax of
 * which we read a small subset: `key = 'string'`, bare words (numbers, True) and lists of them,
 * possibly over several lines, with '#' comments.  From it: name (the VM ID), OVM_simple_name,
 * uuid and disk = ['file:/path,xvda,w', 'phy:/dev/mapper/x,xvdb,w', ...].
 *
 * A disk can be snapshotted when it is a writable "file:" disk (not a cdrom) whose file is a
 * regular file inside one of the configured repositories, on that repository's filesystem, and
 * reached from the repository's root with no symlink on the way (the path is the repository's,
 * as configured or canonical, followed by the rest: it is never resolved with realpath);
 * snapshots go to <repo>/CoriolisSnapshots/<snapshot>/<disk> as in 004.  A vm.cfg that does not
 * parse is skipped with a warning naming the file and line; it never stops the listing.
 */
#include "provider.h"
#include "provider/filedisk.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cleanup.h"
#include "core/log.h"
#include "fs/safeopen.h"

#define OVM_VMS_DIR         "VirtualMachines"
#define OVM_VM_CFG          "vm.cfg"
#define OVM_SNAPSHOTS_DIR   "CoriolisSnapshots" /* the 004 layout, kept for compatibility */
#define OVM_REPO_SEPARATORS " \t\r\n"

#define OVM_CFG_MAX_SIZE  (1024 * 1024) /* real vm.cfg files are a few KiB */
#define OVM_CFG_MAX_DEPTH 16            /* list nesting; bounds the parser's recursion */
#define OVM_CFG_ERR_MAX   160           /* parse error message */

/* Disk specs: "<prefix>:<path>,<device>,<mode>". */
#define OVM_DISK_FILE_PREFIX  "file:"
#define OVM_DISK_PHY_PREFIX   "phy:"
#define OVM_DISK_DEV_DIR      "/dev/" /* phy:sdb means /dev/sdb */
#define OVM_DISK_CDROM_SUFFIX ":cdrom"

/* A UUID written 8-4-4-4-12. */
#define OVM_UUID_LEN 36

static const char *const ovm_keys[] = {"repositories", NULL};

struct ovm_repo {
    char *root;  /* canonical path */
    char *given; /* as configured, without trailing slashes: vm.cfg files may spell it so */
    dev_t dev;
    bool reflink; /* probed once at open */
};
DEFINE_VECTOR_TYPE(ovm_repo_list, struct ovm_repo);

struct ovm_priv {
    struct filedisk fdk; /* first: filedisk.c's */
    ovm_repo_list repos;
};

static void ovm_priv_free(struct ovm_priv *op)
{
    if (!op)
        return;
    for (size_t i = 0; i < op->repos.len; i++) {
        free(op->repos.ptr[i].root);
        free(op->repos.ptr[i].given);
    }
    ovm_repo_list_reset(&op->repos);
    free(op);
}

/* ---- vm.cfg: tokens ---------------------------------------------------------------------- */

enum cfg_token_kind {
    CFG_TOK_EOF,
    CFG_TOK_NEWLINE, /* the end of a statement: only outside brackets */
    CFG_TOK_WORD,    /* a name, number or other bare word */
    CFG_TOK_STRING,  /* quoted, with escapes decoded */
    CFG_TOK_EQUALS,
    CFG_TOK_LBRACKET,
    CFG_TOK_RBRACKET,
    CFG_TOK_COMMA,
};

struct cfg_token {
    enum cfg_token_kind kind;
    unsigned line;
    char *text; /* CFG_TOK_WORD, CFG_TOK_STRING (owned) */
};

struct cfg_lexer {
    const char *p, *end;
    unsigned line;
    unsigned depth; /* open brackets: newlines inside them do not end a statement */
    struct cfg_token tok;
    char err[OVM_CFG_ERR_MAX];
    unsigned err_line;
};

static int __attribute__((format(printf, 3, 4)))
cfg_error(struct cfg_lexer *lx, unsigned line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(lx->err, sizeof(lx->err), fmt, ap);
    va_end(ap);
    lx->err_line = line;
    return -EINVAL;
}

static bool cfg_is_word_char(char c)
{
    return isalnum((unsigned char)c) || c == '_' || c == '.' || c == '+' || c == '-';
}

static int cfg_lex_string(struct cfg_lexer *lx, struct cfg_token *t)
{
    const char quote = *lx->p++;
    /* Decoding never makes a string longer than its source. */
    char *buf = malloc((size_t)(lx->end - lx->p) + 1);
    size_t n = 0;
    if (!buf)
        return -ENOMEM;
    for (;;) {
        if (lx->p == lx->end || *lx->p == '\n') {
            free(buf);
            return cfg_error(lx, t->line, "unterminated string");
        }
        char c = *lx->p++;
        if (c == quote)
            break;
        if (c == '\0') {
            free(buf);
            return cfg_error(lx, lx->line, "NUL byte in a string");
        }
        if (c != '\\') {
            buf[n++] = c;
            continue;
        }
        if (lx->p == lx->end) {
            free(buf);
            return cfg_error(lx, t->line, "unterminated string");
        }
        char e = *lx->p++;
        switch (e) {
        case '\n': /* continuation line */
            lx->line++;
            break;
        case '\\':
        case '\'':
        case '"':
            buf[n++] = e;
            break;
        case 'n':
            buf[n++] = '\n';
            break;
        case 't':
            buf[n++] = '\t';
            break;
        case 'r':
            buf[n++] = '\r';
            break;
        default: /* as in Python, an unknown escape stays as written */
            buf[n++] = '\\';
            buf[n++] = e;
            break;
        }
    }
    buf[n] = '\0';
    char *shrunk = realloc(buf, n + 1);
    t->text = shrunk ? shrunk : buf;
    t->kind = CFG_TOK_STRING;
    return 0;
}

/* Reads the next token into t (t->text must be NULL). */
static int cfg_lex(struct cfg_lexer *lx, struct cfg_token *t)
{
    for (;;) {
        if (lx->p == lx->end) {
            t->kind = CFG_TOK_EOF;
            t->line = lx->line;
            return 0;
        }
        char c = *lx->p;
        if (c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v') {
            lx->p++;
        } else if (c == '#') {
            while (lx->p < lx->end && *lx->p != '\n')
                lx->p++;
        } else if (c == '\\' && lx->end - lx->p >= 2 && lx->p[1] == '\n') {
            lx->p += 2; /* explicit line joining */
            lx->line++;
        } else if (c == '\n') {
            lx->p++;
            lx->line++;
            if (lx->depth == 0) {
                t->kind = CFG_TOK_NEWLINE;
                t->line = lx->line - 1;
                return 0;
            }
        } else {
            break;
        }
    }

    char c = *lx->p;
    t->line = lx->line;
    switch (c) {
    case '=':
        lx->p++;
        t->kind = CFG_TOK_EQUALS;
        return 0;
    case ',':
        lx->p++;
        t->kind = CFG_TOK_COMMA;
        return 0;
    case '[':
        lx->p++;
        lx->depth++;
        t->kind = CFG_TOK_LBRACKET;
        return 0;
    case ']':
        lx->p++;
        if (lx->depth > 0)
            lx->depth--;
        t->kind = CFG_TOK_RBRACKET;
        return 0;
    case '\'':
    case '"':
        return cfg_lex_string(lx, t);
    default:
        break;
    }
    if (!cfg_is_word_char(c)) {
        if (isprint((unsigned char)c))
            return cfg_error(lx, lx->line, "unexpected character '%c'", c);
        return cfg_error(lx, lx->line, "unexpected byte 0x%02x", (unsigned char)c);
    }
    const char *start = lx->p;
    while (lx->p < lx->end && cfg_is_word_char(*lx->p))
        lx->p++;
    t->text = strndup(start, (size_t)(lx->p - start));
    if (!t->text)
        return -ENOMEM;
    t->kind = CFG_TOK_WORD;
    return 0;
}

static int cfg_advance(struct cfg_lexer *lx)
{
    free(lx->tok.text);
    lx->tok.text = NULL;
    return cfg_lex(lx, &lx->tok);
}

/* ---- vm.cfg: statements ------------------------------------------------------------------ */

/* One string of a list, and the line where it was written (for messages about it). */
struct cfg_item {
    char *value;
    unsigned line;
};
DEFINE_VECTOR_TYPE(cfg_item_list, struct cfg_item);

static void cfg_items_free(cfg_item_list *l)
{
    for (size_t i = 0; i < l->len; i++)
        free(l->ptr[i].value);
    cfg_item_list_reset(l);
}

enum cfg_value_kind { CFG_VALUE_STRING, CFG_VALUE_WORD, CFG_VALUE_LIST };

struct cfg_value {
    enum cfg_value_kind kind;
    unsigned line;
    char *text;          /* CFG_VALUE_STRING, CFG_VALUE_WORD */
    cfg_item_list items; /* CFG_VALUE_LIST: its string items */
    bool only_strings;   /* CFG_VALUE_LIST: no other kind of item */
};

static void cfg_value_clear(struct cfg_value *v)
{
    free(v->text);
    cfg_items_free(&v->items);
    memset(v, 0, sizeof(*v));
}

/* The settings of a vm.cfg that matter here; NULL when absent. */
struct ovm_cfg {
    char *name, *simple_name, *uuid;
    cfg_item_list disks;
};

static void ovm_cfg_clear(struct ovm_cfg *cfg)
{
    free(cfg->name);
    free(cfg->simple_name);
    free(cfg->uuid);
    cfg_items_free(&cfg->disks);
    memset(cfg, 0, sizeof(*cfg));
}

/* Parses the value that starts at the current token. */
static int cfg_parse_value(struct cfg_lexer *lx, unsigned depth, struct cfg_value *v)
{
    int r;
    v->line = lx->tok.line;
    switch (lx->tok.kind) {
    case CFG_TOK_STRING:
    case CFG_TOK_WORD:
        v->kind = lx->tok.kind == CFG_TOK_STRING ? CFG_VALUE_STRING : CFG_VALUE_WORD;
        v->text = TAKE_PTR(lx->tok.text);
        return cfg_advance(lx);
    case CFG_TOK_LBRACKET:
        break;
    default:
        return cfg_error(lx, lx->tok.line, "expected a value");
    }

    if (depth >= OVM_CFG_MAX_DEPTH)
        return cfg_error(lx, lx->tok.line, "lists nested too deeply");
    v->kind = CFG_VALUE_LIST;
    v->only_strings = true;
    r = cfg_advance(lx);
    while (r == 0 && lx->tok.kind != CFG_TOK_RBRACKET) {
        struct cfg_value item = {0};
        if (lx->tok.kind == CFG_TOK_EOF)
            return cfg_error(lx, v->line, "'[' is never closed");
        r = cfg_parse_value(lx, depth + 1, &item);
        if (r == 0 && item.kind == CFG_VALUE_STRING) {
            r = cfg_item_list_append(&v->items, (struct cfg_item){item.text, item.line});
            if (r == 0)
                item.text = NULL;
        } else {
            v->only_strings = false;
        }
        cfg_value_clear(&item);
        if (r < 0)
            return r;
        if (lx->tok.kind == CFG_TOK_COMMA)
            r = cfg_advance(lx); /* a trailing comma before ']' is allowed */
        else if (lx->tok.kind != CFG_TOK_RBRACKET)
            return cfg_error(lx, lx->tok.line, "expected ',' or ']' in a list");
    }
    return r < 0 ? r : cfg_advance(lx);
}

static bool cfg_is_identifier(const char *s)
{
    if (!isalpha((unsigned char)s[0]) && s[0] != '_')
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_')
            return false;
    return true;
}

/* Keeps the value of key when it is one we use; a later setting replaces an earlier one. */
static int cfg_store(struct cfg_lexer *lx, struct ovm_cfg *cfg, const char *key,
                     struct cfg_value *v)
{
    char **slot = NULL;
    if (strcmp(key, "name") == 0)
        slot = &cfg->name;
    else if (strcmp(key, "OVM_simple_name") == 0)
        slot = &cfg->simple_name;
    else if (strcmp(key, "uuid") == 0)
        slot = &cfg->uuid;

    if (slot) {
        if (v->kind != CFG_VALUE_STRING)
            return cfg_error(lx, v->line, "%s: expected a quoted string", key);
        free(*slot);
        *slot = TAKE_PTR(v->text);
    } else if (strcmp(key, "disk") == 0) {
        if (v->kind != CFG_VALUE_LIST || !v->only_strings)
            return cfg_error(lx, v->line, "disk: expected a list of quoted strings");
        if (v->items.len > PROVIDER_MAX_DISKS)
            return cfg_error(lx, v->line, "disk: more than %d disks", PROVIDER_MAX_DISKS);
        cfg_items_free(&cfg->disks);
        cfg->disks = v->items;
        v->items = (cfg_item_list)VECTOR_INIT;
    }
    return 0;
}

/* Parses a whole vm.cfg held in buf; on -EINVAL, lx->err and lx->err_line say why. */
static int cfg_parse(struct cfg_lexer *lx, const char *buf, size_t len, struct ovm_cfg *cfg)
{
    *lx = (struct cfg_lexer){.p = buf, .end = buf + len, .line = 1};
    int r = cfg_advance(lx);
    while (r == 0 && lx->tok.kind != CFG_TOK_EOF) {
        if (lx->tok.kind == CFG_TOK_NEWLINE) {
            r = cfg_advance(lx);
            continue;
        }
        if (lx->tok.kind != CFG_TOK_WORD || !cfg_is_identifier(lx->tok.text)) {
            r = cfg_error(lx, lx->tok.line, "expected a setting name");
            break;
        }
        CLEANUP_FREE char *key = TAKE_PTR(lx->tok.text);
        r = cfg_advance(lx);
        if (r < 0)
            break;
        if (lx->tok.kind != CFG_TOK_EQUALS) {
            r = cfg_error(lx, lx->tok.line, "expected '=' after %.40s", key);
            break;
        }
        r = cfg_advance(lx);
        if (r < 0)
            break;
        struct cfg_value v = {0};
        r = cfg_parse_value(lx, 0, &v);
        if (r == 0 && lx->tok.kind != CFG_TOK_NEWLINE && lx->tok.kind != CFG_TOK_EOF)
            r = cfg_error(lx, lx->tok.line, "%.40s: unexpected text after the value", key);
        if (r == 0)
            r = cfg_store(lx, cfg, key, &v);
        cfg_value_clear(&v);
    }
    free(lx->tok.text);
    lx->tok.text = NULL;
    return r;
}

/* ---- Disks --------------------------------------------------------------------------------- */

static void ovm_trim(char **s)
{
    char *p = *s;
    while (*p == ' ' || *p == '\t')
        p++;
    size_t n = strlen(p);
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        p[--n] = '\0';
    *s = p;
}

static bool ovm_has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* path with prefix and a '/' before the rest: the rest (slashes skipped), or NULL. */
static const char *ovm_path_under(const char *path, const char *prefix)
{
    size_t n = strlen(prefix);
    while (n > 0 && prefix[n - 1] == '/')
        n--;
    if (strncmp(path, prefix, n) != 0 || path[n] != '/')
        return NULL;
    path += n;
    while (*path == '/')
        path++;
    return path;
}

/* The repository whose root path (canonical or as configured) the absolute path starts with,
 * the innermost one, and in *rel the rest of path.  Only the spelling counts: the rest is then
 * opened beneath the repository without following symlinks, so it names exactly that file.  NULL
 * when none, or when the rest could leave the repository (".."). */
static const struct ovm_repo *ovm_repo_holding(const struct ovm_priv *op, const char *path,
                                               const char **rel)
{
    const struct ovm_repo *best = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < op->repos.len; i++) {
        const struct ovm_repo *repo = &op->repos.ptr[i];
        const char *prefixes[] = {repo->root, repo->given};
        for (size_t j = 0; j < ARRAY_SIZE(prefixes); j++) {
            const char *rest = ovm_path_under(path, prefixes[j]);
            if (rest && (size_t)(rest - path) > best_len) {
                best = repo;
                best_len = (size_t)(rest - path);
                *rel = rest;
            }
        }
    }
    return best && fs_rel_path_is_beneath(*rel) ? best : NULL;
}

/* Fills d from one disk spec; -EINVAL with msg when malformed, 1 for an empty drive (no disk). */
static int ovm_disk_parse(const struct ovm_priv *op, const char *spec, struct vm_disk *d, char *msg,
                          size_t msglen)
{
    CLEANUP_FREE char *copy = strdup(spec);
    CLEANUP_FREE char *dev_path = NULL;
    if (!copy)
        return -ENOMEM;

    /* target,device,mode: split from the right so that a comma in a path stays in the path. */
    char *comma_mode = strrchr(copy, ',');
    if (comma_mode)
        *comma_mode = '\0';
    char *comma_dev = comma_mode ? strrchr(copy, ',') : NULL;
    if (!comma_dev) {
        snprintf(msg, msglen, "disk entry is not 'target,device,mode'");
        return -EINVAL;
    }
    *comma_dev = '\0';
    char *target = copy, *device = comma_dev + 1, *mode = comma_mode + 1;
    ovm_trim(&target);
    ovm_trim(&device);
    ovm_trim(&mode);
    if (!target[0])
        return 1; /* an empty cdrom drive */
    if (!device[0]) {
        snprintf(msg, msglen, "disk entry without a device name");
        return -EINVAL;
    }
    const char *norm_mode;
    if (strcmp(mode, "w") == 0 || strcmp(mode, "w!") == 0 || strcmp(mode, "rw") == 0)
        norm_mode = "w";
    else if (strcmp(mode, "r") == 0 || strcmp(mode, "ro") == 0)
        norm_mode = "r";
    else {
        snprintf(msg, msglen, "disk entry with an unknown mode '%.16s'", mode);
        return -EINVAL;
    }

    /* file:/p, phy:/p, tap:aio:/p, or a bare /p: the prefix ends at the last ':' before the
     * first '/'. */
    bool is_file = false, is_phy = false;
    const char *path = target;
    if (strncmp(target, OVM_DISK_FILE_PREFIX, strlen(OVM_DISK_FILE_PREFIX)) == 0) {
        is_file = true;
        path = target + strlen(OVM_DISK_FILE_PREFIX);
    } else {
        char *slash = strchr(target, '/');
        if (slash)
            *slash = '\0';
        char *colon = strrchr(target, ':');
        if (slash)
            *slash = '/';
        if (colon) {
            is_phy = strncmp(target, OVM_DISK_PHY_PREFIX, strlen(OVM_DISK_PHY_PREFIX)) == 0 &&
                     colon == target + strlen(OVM_DISK_PHY_PREFIX) - 1;
            path = colon + 1;
        }
    }
    if (is_phy && path[0] && path[0] != '/') {
        if (asprintf(&dev_path, "%s%s", OVM_DISK_DEV_DIR, path) < 0) {
            dev_path = NULL;
            return -ENOMEM;
        }
        path = dev_path;
    }
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (!provider_id_is_safe(base)) {
        snprintf(msg, msglen, "disk entry whose path has no usable file name");
        return -EINVAL;
    }

    *d = (struct vm_disk){0};
    d->name = strdup(base);
    d->path = strdup(path);
    d->device_name = strdup(device);
    d->mode = strdup(norm_mode);
    if (!d->name || !d->path || !d->device_name || !d->mode)
        return -ENOMEM;

    /* A relative path would depend on our working directory: it names nothing we can use. */
    if (path[0] != '/')
        return 0;
    const char *rel = NULL;
    const struct ovm_repo *repo = ovm_repo_holding(op, path, &rel);
    struct stat st;
    if (!repo) {
        /* Outside the repositories (phy: devices, files elsewhere): listed, never opened. */
        if (lstat(path, &st) == 0 && S_ISREG(st.st_mode))
            d->size = st.st_size > 0 ? (uint64_t)st.st_size : 0;
        return 0;
    }
    /* O_PATH: looked at, not opened for reading (no side effects on a FIFO or device). */
    CLEANUP_CLOSE int fd = fs_open_beneath(repo->root, rel, O_PATH, 0);
    if (fd < 0) {
        if (fd == -ENOMEM)
            return fd;
        log_debug("%s: %s%s; it cannot be snapshotted", path, strerror(-fd),
                  fd == -ELOOP ? " (a symlink on the way)" : "");
        return 0;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return 0;
    d->size = st.st_size > 0 ? (uint64_t)st.st_size : 0;
    d->repo_mountpoint = strdup(repo->root);
    if (!d->repo_mountpoint)
        return -ENOMEM;
    bool writable = strcmp(norm_mode, "w") == 0;
    bool cdrom = ovm_has_suffix(device, OVM_DISK_CDROM_SUFFIX);
    /* Same st_dev as the repository: a filesystem mounted inside it could not take the clone. */
    d->snapshot_compatible = is_file && writable && !cdrom && st.st_dev == repo->dev;
    if (d->snapshot_compatible) {
        d->dev = (uint64_t)st.st_dev;
        d->ino = (uint64_t)st.st_ino;
        if (asprintf(&d->real_path, "%s/%s", repo->root, rel) < 0)
            d->real_path = NULL;
        d->snapshot_mode =
            strdup(repo->reflink ? PROVIDER_SNAPSHOT_REFLINK : PROVIDER_SNAPSHOT_COPY);
        if (!d->snapshot_mode || !d->real_path)
            return -ENOMEM;
    }
    return 0;
}

/* Two disks of one VM with one name would share one URL and one snapshot path: neither can be
 * snapshotted. */
static void ovm_disks_check_names(struct vm *vm, const char *cfg_path)
{
    for (size_t i = 0; i < vm->disks.len; i++) {
        for (size_t j = i + 1; j < vm->disks.len; j++) {
            struct vm_disk *a = &vm->disks.ptr[i], *b = &vm->disks.ptr[j];
            if (strcmp(a->name, b->name) != 0)
                continue;
            log_warn("%s: two disks named %s; neither can be snapshotted", cfg_path, a->name);
            a->snapshot_compatible = b->snapshot_compatible = false;
            free(a->snapshot_mode);
            free(b->snapshot_mode);
            a->snapshot_mode = b->snapshot_mode = NULL;
        }
    }
}

/* ---- VMs ----------------------------------------------------------------------------------- */

static bool ovm_uuid_is_valid(const char *s)
{
    if (strlen(s) != OVM_UUID_LEN)
        return false;
    for (size_t i = 0; i < OVM_UUID_LEN; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23; /* 8-4-4-4-12 */
        if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
            return false;
    }
    return true;
}

/* Reads and parses VirtualMachines/<dir>/vm.cfg, its text into *text when text is not NULL.
 * 0; -ENOENT when dir is no VM (quietly); -EINVAL when it was skipped with a message at level;
 * -ENOMEM. */
static int ovm_cfg_load(int vmsfd, const char *dir, const char *cfg_path, enum log_level level,
                        struct ovm_cfg *cfg, char **text)
{
    struct stat st;
    if (fstatat(vmsfd, dir, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
        return -ENOENT;
    CLEANUP_CLOSE int dfd = openat(vmsfd, dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0)
        return errno == ENOMEM ? -ENOMEM : -ENOENT; /* replaced meanwhile, or not ours to read */
    /* O_NONBLOCK: a FIFO named vm.cfg must not hang the listing. */
    CLEANUP_CLOSE int fd = openat(dfd, OVM_VM_CFG, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return -ENOENT;
        if (errno == ENOMEM)
            return -ENOMEM;
        log_msg(level, "%s: %s; VM skipped", cfg_path, strerror(errno));
        return -EINVAL;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        log_msg(level, "%s: not a regular file; VM skipped", cfg_path);
        return -EINVAL;
    }
    if (st.st_size > OVM_CFG_MAX_SIZE) {
        log_msg(level, "%s: larger than %d bytes; VM skipped", cfg_path, OVM_CFG_MAX_SIZE);
        return -EINVAL;
    }

    /* Room for one byte more than fstat said, to notice a file that grew meanwhile. */
    size_t cap = (size_t)st.st_size + 1, len = 0;
    CLEANUP_FREE char *buf = malloc(cap);
    if (!buf)
        return -ENOMEM;
    for (;;) {
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            log_msg(level, "%s: %s; VM skipped", cfg_path, strerror(errno));
            return -EINVAL;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == cap) {
            log_msg(level, "%s: changed while being read; VM skipped", cfg_path);
            return -EINVAL;
        }
    }

    struct cfg_lexer lx;
    int r = cfg_parse(&lx, buf, len, cfg);
    if (r == -EINVAL)
        log_msg(level, "%s:%u: %s; VM skipped", cfg_path, lx.err_line, lx.err);
    if (r < 0) {
        ovm_cfg_clear(cfg);
        return r;
    }
    if (text) {
        buf[len] = '\0'; /* len < cap */
        *text = TAKE_PTR(buf);
    }
    return 0;
}

/* The VM of a parsed vm.cfg: 0, -EINVAL when skipped with a warning, -ENOMEM. */
static int ovm_vm_build(struct provider *p, const struct ovm_cfg *cfg, const char *id,
                        const char *cfg_path, struct vm **out)
{
    const struct ovm_priv *op = p->priv;
    const char *friendly = cfg->simple_name && cfg->simple_name[0] ? cfg->simple_name : NULL;
    const char *uuid = NULL;
    char msg[OVM_CFG_ERR_MAX];
    struct vm *vm = NULL;

    if (cfg->uuid && ovm_uuid_is_valid(cfg->uuid))
        uuid = cfg->uuid;
    else if (cfg->uuid)
        log_warn("%s: uuid is not a UUID; using one derived from the name", cfg_path);
    int r = vm_new(p->name, id, friendly, uuid, &vm);
    if (r < 0)
        return r;
    for (size_t i = 0; i < cfg->disks.len; i++) {
        struct vm_disk d = {0};
        r = ovm_disk_parse(op, cfg->disks.ptr[i].value, &d, msg, sizeof(msg));
        if (r == 0)
            r = vm_disk_list_append(&vm->disks, d);
        if (r != 0)
            vm_disk_clear(&d);
        if (r == 1)
            continue;
        if (r == -EINVAL)
            log_warn("%s:%u: %s; VM skipped", cfg_path, cfg->disks.ptr[i].line, msg);
        if (r < 0) {
            vm_free(vm);
            return r;
        }
    }
    ovm_disks_check_names(vm, cfg_path);
    vm_update_snapshot_compatible(vm);
    *out = vm;
    return 0;
}

/* Visits every VM in repository order, then directory name order: list() keeps the first VM of
 * each ID in that order, and get() stops at it, so both always agree.  With want_id, only that
 * VM is built (the others are only parsed), and its vm.cfg text goes into *text when text is
 * not NULL; without, all are appended to out. */
static int ovm_scan(struct provider *p, const char *want_id, vm_list *out, char **text)
{
    const struct ovm_priv *op = p->priv;
    /* Files that are not the wanted VM are list()'s to report; get() would repeat it on every
     * request. */
    const enum log_level level = want_id ? LOG_LEVEL_DEBUG : LOG_LEVEL_WARN;
    int r;

    for (size_t ri = 0; ri < op->repos.len; ri++) {
        const struct ovm_repo *repo = &op->repos.ptr[ri];
        CLEANUP_NAMES provider_name_list names = VECTOR_INIT;
        CLEANUP_FREE char *vms_path = NULL;

        if (asprintf(&vms_path, "%s/%s", repo->root, OVM_VMS_DIR) < 0) {
            vms_path = NULL;
            return -ENOMEM;
        }
        CLEANUP_CLOSE int vmsfd =
            fs_open_beneath(repo->root, OVM_VMS_DIR, O_RDONLY | O_DIRECTORY, 0);
        if (vmsfd < 0) {
            if (vmsfd != -ENOENT) /* a repository with no VMs has none */
                log_warn("[provider.%s] %s: %s; repository skipped", p->name, vms_path,
                         strerror(-vmsfd));
            continue;
        }
        r = provider_names_read(vmsfd, &names);
        if (r == -ENOMEM)
            return r;
        if (r < 0) {
            log_warn("[provider.%s] %s: %s; repository skipped", p->name, vms_path, strerror(-r));
            continue;
        }

        for (size_t i = 0; i < names.len; i++) {
            CLEANUP_FREE char *cfg_path = NULL;
            struct ovm_cfg cfg = {0};
            struct vm *vm = NULL;

            if (asprintf(&cfg_path, "%s/%s/%s", vms_path, names.ptr[i], OVM_VM_CFG) < 0) {
                cfg_path = NULL;
                return -ENOMEM;
            }
            CLEANUP_FREE char *cfg_text = NULL;
            r = ovm_cfg_load(vmsfd, names.ptr[i], cfg_path, level, &cfg,
                             want_id && text ? &cfg_text : NULL);
            if (r == -ENOMEM)
                return r;
            if (r < 0)
                continue;
            /* In OVM the name setting and the directory are the same ID. */
            const char *id = cfg.name ? cfg.name : names.ptr[i];
            if (!provider_id_is_safe(id) || id[0] == '.') {
                log_msg(level, "%s: the VM name cannot be used as an ID; VM skipped", cfg_path);
                ovm_cfg_clear(&cfg);
                continue;
            }
            if (want_id && strcmp(id, want_id) != 0) {
                ovm_cfg_clear(&cfg);
                continue;
            }
            r = ovm_vm_build(p, &cfg, id, cfg_path, &vm);
            ovm_cfg_clear(&cfg);
            if (r == -ENOMEM)
                return r;
            if (r < 0)
                continue;
            r = vm_list_append(out, vm);
            if (r < 0) {
                vm_free(vm);
                return r;
            }
            if (want_id) {
                if (text)
                    *text = TAKE_PTR(cfg_text);
                return 0;
            }
        }
    }
    return 0;
}

/* A VM and its place in the scan, to keep the first of each ID. */
struct ovm_ranked {
    struct vm *vm;
    size_t rank;
};

static int ovm_ranked_cmp(const void *a, const void *b)
{
    const struct ovm_ranked *x = a, *y = b;
    int c = strcmp(x->vm->id, y->vm->id);
    return c ? c : (x->rank > y->rank) - (x->rank < y->rank);
}

static int ovm_list(struct provider *p, vm_list *out)
{
    vm_list vms = VECTOR_INIT;
    int r = ovm_scan(p, NULL, &vms, NULL);
    if (r < 0)
        goto out;

    struct ovm_ranked *ranked = calloc(vms.len ? vms.len : 1, sizeof(*ranked));
    if (!ranked) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < vms.len; i++)
        ranked[i] = (struct ovm_ranked){vms.ptr[i], i};
    qsort(ranked, vms.len, sizeof(*ranked), ovm_ranked_cmp);
    size_t n = 0;
    for (size_t i = 0; i < vms.len; i++) {
        if (n > 0 && strcmp(vms.ptr[n - 1]->id, ranked[i].vm->id) == 0) {
            log_warn("[provider.%s] VM %s is defined more than once; the first is used", p->name,
                     ranked[i].vm->id);
            vm_free(ranked[i].vm);
            continue;
        }
        vms.ptr[n++] = ranked[i].vm;
    }
    vms.len = n;
    free(ranked);
    r = vm_list_move(out, &vms);
out:
    vm_list_free(&vms);
    return r;
}

static int ovm_get(struct provider *p, const char *vm_id, struct vm **out)
{
    vm_list found = VECTOR_INIT;

    if (!provider_id_is_safe(vm_id) || vm_id[0] == '.')
        return -ENOENT;
    int r = ovm_scan(p, vm_id, &found, NULL);
    if (r == 0 && found.len == 0)
        r = -ENOENT;
    if (r == 0)
        *out = TAKE_PTR(found.ptr[0]);
    vm_list_free(&found);
    return r;
}

static int ovm_snapshot_locate(struct provider *p, const struct vm *vm, const struct vm_disk *disk,
                               const char *snap_id, char **out)
{
    const struct ovm_priv *op = p->priv;

    if (!provider_id_is_safe(vm->id) || !provider_id_is_safe(disk->name) ||
        !provider_id_is_safe(snap_id))
        return -EINVAL;
    if (!disk->snapshot_compatible || !disk->repo_mountpoint)
        return -EOPNOTSUPP;
    bool ours = false;
    for (size_t i = 0; i < op->repos.len && !ours; i++)
        ours = strcmp(op->repos.ptr[i].root, disk->repo_mountpoint) == 0;
    if (!ours)
        return -EINVAL;
    CLEANUP_FREE char *dir = NULL;
    if (asprintf(&dir, "%s/%s", disk->repo_mountpoint, OVM_SNAPSHOTS_DIR) < 0) {
        dir = NULL;
        return -ENOMEM;
    }
    return filedisk_locate(dir, snap_id, disk->name, out);
}

static int ovm_open(struct provider *p, const struct provider_config *cfg, char *err, size_t errlen)
{
    const char *value = provider_config_get(cfg, "repositories");
    CLEANUP_FREE char *copy = NULL;
    char *save = NULL;
    int r = 0;

    if (!value)
        return provider_fail(err, errlen, -EINVAL,
                             "[provider.%s] repositories: missing (space-separated Oracle VM "
                             "repository roots such as /OVS/Repositories/<id>)",
                             cfg->name);
    struct filedisk fdk;
    if ((r = filedisk_init(&fdk, cfg, err, errlen)) < 0)
        return r;
    copy = strdup(value);
    struct ovm_priv *op = calloc(1, sizeof(*op));
    if (!copy || !op) {
        free(op);
        return -ENOMEM;
    }
    op->fdk = fdk;
    for (char *tok = strtok_r(copy, OVM_REPO_SEPARATORS, &save); tok;
         tok = strtok_r(NULL, OVM_REPO_SEPARATORS, &save)) {
        struct stat st;
        r = stat(tok, &st) < 0 ? -errno : S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
        if (r < 0) {
            r = provider_fail_setting(err, errlen, r, cfg->name, "repositories", tok);
            goto fail;
        }
        struct ovm_repo repo = {.root = realpath(tok, NULL), .dev = st.st_dev};
        if (!repo.root) {
            r = provider_fail_setting(err, errlen, -errno, cfg->name, "repositories", tok);
            goto fail;
        }
        repo.given = strdup(tok);
        if (!repo.given) {
            free(repo.root);
            r = -ENOMEM;
            goto fail;
        }
        for (size_t n = strlen(repo.given); n > 1 && repo.given[n - 1] == '/'; n--)
            repo.given[n - 1] = '\0';
        for (size_t i = 0; i < op->repos.len; i++) {
            if (strcmp(op->repos.ptr[i].root, repo.root) == 0) {
                r = provider_fail(err, errlen, -EINVAL,
                                  "[provider.%s] repositories: %s is listed twice", cfg->name, tok);
                free(repo.root);
                free(repo.given);
                goto fail;
            }
        }
        repo.reflink = provider_probe_reflink(repo.root);
        r = ovm_repo_list_append(&op->repos, repo);
        if (r < 0) {
            free(repo.root);
            free(repo.given);
            goto fail;
        }
        log_debug("[provider.%s] repository %s (%s snapshots)", cfg->name, repo.root,
                  repo.reflink ? PROVIDER_SNAPSHOT_REFLINK : PROVIDER_SNAPSHOT_COPY);
    }
    if (op->repos.len == 0) {
        r = provider_fail(err, errlen, -EINVAL, "[provider.%s] repositories: empty", cfg->name);
        goto fail;
    }
    p->priv = op;
    return 0;
fail:
    ovm_priv_free(op);
    return r;
}

/* The VM's vm.cfg as it is now. */
static int ovm_vm_definition(struct provider *p, const struct vm *vm, char **text,
                             const char **format)
{
    vm_list found = VECTOR_INIT;
    char *t = NULL;
    int r = ovm_scan(p, vm->id, &found, &t);
    vm_list_free(&found);
    if (r == 0 && !t)
        r = -ENOENT;
    if (r < 0) {
        free(t);
        return r;
    }
    *text = t;
    *format = "ovm-vm.cfg";
    return 0;
}

static void ovm_close(struct provider *p)
{
    ovm_priv_free(p->priv);
    p->priv = NULL;
}

const struct provider_ops provider_ovm_ops = {
    .type = "ovm",
    .keys = ovm_keys,
    .open = ovm_open,
    .close = ovm_close,
    .list = ovm_list,
    .get = ovm_get,
    .snapshot_locate = ovm_snapshot_locate,
    .snapshot_create = filedisk_snapshot_create,
    .snapshot_delete = filedisk_snapshot_delete,
    .disk_open = filedisk_disk_open,
    .disk_changes = filedisk_disk_changes,
    .vm_definition = ovm_vm_definition,
};
