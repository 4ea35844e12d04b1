/* The option table of the command line: the common options every command may take, merged
 * with a command's own into one getopt_long table, and the help printed from both; see
 * options.h. */
#include "cli/options.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

/* Keys of the common options, above any command's own. */
enum {
    KEY_REPO = CLI_LONG_ONLY + 1000,
    KEY_PASSPHRASE,
    KEY_JSON,
    KEY_JOBS,
    KEY_HELP,
    KEY_CEPH_CONF,
    KEY_CEPH_ID,
    KEY_S3_ENDPOINT,
    KEY_S3_CA,
    KEY_NO_CACHE,
};

/* Column where the help of an option starts ("  --passphrase-file FILE  " is the widest). */
#define HELP_COLUMN 26
#define HELP_INDENT 2

/* An entry of the merged table that is a common option. */
static const struct cli_option common_repo = {
    "repo", KEY_REPO, "URL",
    "the repository: a directory, rados://POOL/NAMESPACE\n"
    "or s3://BUCKET/PREFIX (env VMEXPORT_REPO)"};
/* How to reach a repository given by URL (CLI_STORE). */
static const struct cli_option common_store[] = {
    {"ceph-conf", KEY_CEPH_CONF, "FILE", "ceph.conf of a rados:// repository (env CEPH_CONF)"},
    {"ceph-id", KEY_CEPH_ID, "NAME",
     "its cephx user, without \"client.\" (env CEPH_ID;\n"
     "default admin); the key is found through ceph.conf"},
    {"s3-endpoint", KEY_S3_ENDPOINT, "URL",
     "the S3 service of an s3:// repository,\n"
     "http(s)://HOST[:PORT] (env VMEXPORT_S3_ENDPOINT;\n"
     "default AWS's endpoint of AWS_DEFAULT_REGION,\n"
     "us-east-1); keys from AWS_ACCESS_KEY_ID and\n"
     "AWS_SECRET_ACCESS_KEY"},
    {"s3-ca", KEY_S3_CA, "FILE",
     "CA certificate(s) (PEM) trusted for that S3 service\n"
     "(env VMEXPORT_S3_CA; default the system's)"},
    {"no-cache", KEY_NO_CACHE, NULL,
     "read the index of an object-store repository from\n"
     "the store, not the local cache (env VMEXPORT_NO_CACHE;\n"
     "VMEXPORT_CACHE_DIR: where the cache is)"},
};
#define N_COMMON_STORE (sizeof(common_store) / sizeof(common_store[0]))
static const struct cli_option common_passphrase = {
    "passphrase-file", KEY_PASSPHRASE, "FILE",
    "passphrase of an encrypted repository (env VMEXPORT_PASSPHRASE\n"
    "holds the passphrase itself; else it is asked on the terminal)"};
static const struct cli_option common_help = {"help", 'h', NULL, "this help"};

/* Historical short forms of the repository options. */
#define SHORT_REPO       'r'
#define SHORT_PASSPHRASE 'P'

static unsigned jobs_max(const struct cli_command *cmd)
{
    return cmd->jobs_max ? cmd->jobs_max : CLI_JOBS_MAX;
}

int cli_parse_jobs(const char *s, unsigned max, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < 1 || v > max)
        return -EINVAL;
    *out = (unsigned)v;
    return 0;
}

int cli_parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-')
        return -EINVAL;
    unsigned shift = 0;
    switch (*end) {
    case 'k':
    case 'K':
        shift = 10;
        break;
    case 'm':
    case 'M':
        shift = 20;
        break;
    case 'g':
    case 'G':
        shift = 30;
        break;
    default:
        break;
    }
    if (shift) {
        if (v > (UINT64_MAX >> shift))
            return -EINVAL;
        v <<= shift;
        end++;
    }
    if (*end == 'i')
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end)
        return -EINVAL;
    *out = v;
    return 0;
}

/* Add one option to the merged table; short_key is its short form or 0. */
static void table_add(struct cli_args *a, size_t *n, const struct cli_option *o, int key,
                      int short_key)
{
    size_t max = sizeof(a->table) / sizeof(a->table[0]) - 1;
    if (*n >= max) {
        /* A command's table is fixed at compile time: this is a programming error. */
        fprintf(stderr, "vmexport: internal error: more than %zu options\n", max);
        abort();
    }
    a->table[(*n)++] =
        (struct option){o->name, o->arg ? required_argument : no_argument, NULL, key};
    if (short_key) {
        size_t len = strlen(a->shortopts);
        if (len + 3 >= sizeof(a->shortopts))
            abort();
        a->shortopts[len++] = (char)short_key;
        if (o->arg)
            a->shortopts[len++] = ':';
        a->shortopts[len] = '\0';
    }
}

/* The --json and --jobs entries of cmd: their help is the command's. */
static struct cli_option json_option(const struct cli_command *cmd)
{
    return (struct cli_option){"json", KEY_JSON, NULL,
                               cmd->json_help ? cmd->json_help : "print JSON"};
}

static struct cli_option jobs_option(const struct cli_command *cmd)
{
    return (struct cli_option){"jobs", KEY_JOBS, "N",
                               cmd->jobs_help ? cmd->jobs_help : "parallel jobs"};
}

static void table_build(struct cli_args *a, const struct cli_command *cmd)
{
    size_t n = 0;
    /* A leading ':' makes getopt answer ':' for a missing value, '?' for an unknown option. */
    a->shortopts[0] = ':';
    a->shortopts[1] = '\0';
    if (cmd->options)
        for (const struct cli_option *o = cmd->options; o->name; o++)
            table_add(a, &n, o, o->key, o->key < CLI_LONG_ONLY ? o->key : 0);
    if (cmd->common & CLI_REPO)
        table_add(a, &n, &common_repo, KEY_REPO, SHORT_REPO);
    if (cmd->common & CLI_PASSPHRASE)
        table_add(a, &n, &common_passphrase, KEY_PASSPHRASE, SHORT_PASSPHRASE);
    if (cmd->common & (CLI_REPO | CLI_STORE))
        for (size_t i = 0; i < N_COMMON_STORE; i++)
            table_add(a, &n, &common_store[i], common_store[i].key, 0);
    if (cmd->common & CLI_JSON) {
        struct cli_option json = json_option(cmd);
        table_add(a, &n, &json, KEY_JSON, cmd->json_short);
    }
    if (cmd->common & CLI_JOBS) {
        struct cli_option jobs = jobs_option(cmd);
        table_add(a, &n, &jobs, KEY_JOBS, cmd->jobs_short);
    }
    table_add(a, &n, &common_help, KEY_HELP, 'h');
    a->table[n] = (struct option){NULL, 0, NULL, 0};
    a->started = true;
}

int cli_next(struct cli_args *a, const struct cli_command *cmd, int argc, char **argv)
{
    if (!a->started) {
        table_build(a, cmd);
        optind = 0; /* a full restart of getopt, also after another command line */
        opterr = 0; /* errors are reported below, once */
    }
    for (;;) {
        int c = getopt_long(argc, argv, a->shortopts, a->table, NULL);
        if (c == -1) {
            a->first = optind;
            return CLI_DONE;
        }
        a->arg = optarg;
        /* A short form answers with its letter: map it to the entry's key. */
        if (c == SHORT_REPO && (cmd->common & CLI_REPO))
            c = KEY_REPO;
        else if (c == SHORT_PASSPHRASE && (cmd->common & CLI_PASSPHRASE))
            c = KEY_PASSPHRASE;
        else if (cmd->json_short && c == cmd->json_short && (cmd->common & CLI_JSON))
            c = KEY_JSON;
        else if (cmd->jobs_short && c == cmd->jobs_short && (cmd->common & CLI_JOBS))
            c = KEY_JOBS;
        else if (c == 'h')
            c = KEY_HELP;
        switch (c) {
        case KEY_REPO:
            a->repo = optarg;
            break;
        case KEY_PASSPHRASE:
            a->passphrase_file = optarg;
            break;
        case KEY_CEPH_CONF:
            a->store.ceph_conf = optarg;
            break;
        case KEY_CEPH_ID:
            a->store.ceph_id = optarg;
            break;
        case KEY_S3_ENDPOINT:
            a->store.s3_endpoint = optarg;
            break;
        case KEY_S3_CA:
            a->store.s3_ca_file = optarg;
            break;
        case KEY_NO_CACHE: /* the repository layer reads it when it opens (index_cache.c) */
            setenv("VMEXPORT_NO_CACHE", "1", 1);
            break;
        case KEY_JSON:
            a->json = true;
            break;
        case KEY_JOBS:
            if (cli_parse_jobs(optarg, jobs_max(cmd), &a->jobs) < 0) {
                a->status =
                    cli_usage_error(cmd, "--jobs takes 1 to %u, not '%s'", jobs_max(cmd), optarg);
                return CLI_EXIT;
            }
            break;
        case KEY_HELP:
            a->status = cli_help(cmd);
            return CLI_EXIT;
        case '?':
        case ':': {
            /* getopt is silent (opterr = 0): one message, naming the option. */
            const char *word = optind > 0 && optind <= argc ? argv[optind - 1] : "?";
            char shortname[3] = {'-', (char)optopt, '\0'};
            /* optopt is the letter of a short option, or a long option's key (or 0) */
            const char *name =
                optopt > 0 && optopt < CLI_LONG_ONLY && word[1] != '-' ? shortname : word;
            a->status = c == ':' ? cli_usage_error(cmd, "option '%s' needs a value", name)
                                 : cli_usage_error(cmd, "unknown option '%s'", name);
            return CLI_EXIT;
        }
        default:
            return c; /* the command's own */
        }
    }
}

int cli_parse(struct cli_args *a, const struct cli_command *cmd, int argc, char **argv)
{
    int c = cli_next(a, cmd, argc, argv);
    if (c > 0) {
        /* A command with its own options must handle them: a programming error. */
        fprintf(stderr, "vmexport %s: internal error: option %d not handled\n", cmd->name, c);
        abort();
    }
    return c;
}

/* "  -k, --name ARG        help" with continuation lines under the help. */
static void print_option(FILE *f, const struct cli_option *o, int short_key)
{
    char head[128];
    int len;
    if (short_key)
        len = snprintf(head, sizeof(head), "-%c, --%s%s%s", short_key, o->name, o->arg ? " " : "",
                       o->arg ? o->arg : "");
    else
        len = snprintf(head, sizeof(head), "--%s%s%s", o->name, o->arg ? " " : "",
                       o->arg ? o->arg : "");
    int width = HELP_COLUMN - HELP_INDENT;
    if (len >= width - 1)
        fprintf(f, "%*s%s\n%*s", HELP_INDENT, "", head, HELP_COLUMN, "");
    else
        fprintf(f, "%*s%-*s", HELP_INDENT, "", width, head);
    for (const char *p = o->help; *p;) {
        size_t line = strcspn(p, "\n");
        fprintf(f, "%.*s\n", (int)line, p);
        p += line;
        if (*p == '\n' && *++p)
            fprintf(f, "%*s", HELP_COLUMN, "");
    }
}

static void print_options(FILE *f, const struct cli_command *cmd)
{
    if (cmd->options)
        for (const struct cli_option *o = cmd->options; o->name; o++)
            print_option(f, o, o->key < CLI_LONG_ONLY ? o->key : 0);
    if (cmd->common & CLI_REPO)
        print_option(f, &common_repo, 0);
    if (cmd->common & CLI_PASSPHRASE)
        print_option(f, &common_passphrase, 0);
    if (cmd->common & (CLI_REPO | CLI_STORE))
        for (size_t i = 0; i < N_COMMON_STORE; i++)
            print_option(f, &common_store[i], 0);
    if (cmd->common & CLI_JSON) {
        struct cli_option json = json_option(cmd);
        print_option(f, &json, cmd->json_short);
    }
    if (cmd->common & CLI_JOBS) {
        struct cli_option jobs = jobs_option(cmd);
        print_option(f, &jobs, cmd->jobs_short);
    }
    print_option(f, &common_help, 'h');
}

struct cli_globals cli_globals;

/* The connection options, accepted before or after the command name: where each is stored. */
static const struct {
    struct cli_option o;
    const char **value; /* options with a value */
    bool *flag;         /* options without */
} connection_options[] = {
    {{"server", 0, "URL", "the daemon, https://HOST:PORT (or $VMEXPORT_SERVER)"},
     &cli_globals.server,
     NULL},
    {{"user", 0, "NAME", "log in as NAME (or $VMEXPORT_USER)"}, &cli_globals.user, NULL},
    {{"password-file", 0, "FILE", "the password is FILE's first line (else $VMEXPORT_PASSWORD)"},
     &cli_globals.password_file,
     NULL},
    {{"cacert", 0, "FILE",
      "CA certificate that signed the server's (or $VMEXPORT_CACERT;\n"
      "default: the system trust store)"},
     &cli_globals.cacert,
     NULL},
    {{"cert", 0, "FILE", "client certificate, for servers that require one"},
     &cli_globals.cert,
     NULL},
    {{"key", 0, "FILE", "its private key"}, &cli_globals.key, NULL},
    {{"insecure", 0, NULL, "do not verify the server's certificate (tests only)"},
     NULL,
     &cli_globals.insecure},
    {{"verbose", 'v', NULL, "log every request"}, NULL, &cli_globals.verbose},
};
#define N_CONNECTION_OPTIONS (sizeof(connection_options) / sizeof(connection_options[0]))

/* 1: argv[*i] was a connection option (consumed, *i advanced), 0: it is not one, -1: error. */
static int take_connection_option(int argc, char **argv, int *i)
{
    const char *arg = argv[*i];
    for (size_t k = 0; k < N_CONNECTION_OPTIONS; k++) {
        const struct cli_option *o = &connection_options[k].o;
        if (!o->arg) {
            if ((arg[0] == '-' && arg[1] == '-' && !strcmp(arg + 2, o->name)) ||
                (o->key && arg[0] == '-' && arg[1] == o->key && !arg[2])) {
                *connection_options[k].flag = true;
                return 1;
            }
            continue;
        }
        size_t len = strlen(o->name);
        if (strncmp(arg, "--", 2) != 0 || strncmp(arg + 2, o->name, len) != 0)
            continue;
        const char *value, *rest = arg + 2 + len;
        if (*rest == '=') {
            value = rest + 1;
        } else if (*rest == '\0') {
            if (*i + 1 >= argc) {
                fprintf(stderr, "vmexport: option '--%s' needs a value\n", o->name);
                return -1;
            }
            value = argv[++*i];
        } else {
            continue; /* a longer option that merely starts like this one */
        }
        if (!value[0]) {
            fprintf(stderr, "vmexport: option '--%s' needs a non-empty value\n", o->name);
            return -1;
        }
        *connection_options[k].value = value;
        return 1;
    }
    return 0;
}

int cli_globals_extract(int argc, char **argv)
{
    int out = argc > 0 ? 1 : 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--")) {
            /* Everything from here on belongs to the command. */
            while (i < argc)
                argv[out++] = argv[i++];
            break;
        }
        int r = take_connection_option(argc, argv, &i);
        if (r < 0)
            return -1;
        if (r == 0)
            argv[out++] = argv[i];
    }
    argv[out] = NULL; /* argv has argc + 1 slots */
    return out;
}

void cli_print_connection_help(FILE *f)
{
    fprintf(f, "Connection options (before or after the command name):\n");
    for (size_t k = 0; k < N_CONNECTION_OPTIONS; k++)
        print_option(f, &connection_options[k].o, connection_options[k].o.key);
    fprintf(f, "The login token is cached, readable only by you, in $XDG_CACHE_HOME/vmexport "
               "(default\n"
               "~/.cache/vmexport) and reused until a minute before it expires.  Failed "
               "connections and\n"
               "server errors are retried 5 times (100 ms, doubling, at most 5 s apart).\n");
}

int cli_help(const struct cli_command *cmd)
{
    fputs(cmd->usage, stdout);
    if (!cmd->common && !cmd->options)
        return EXIT_OK; /* the usage is the whole help */
    fputs("\nOptions:\n", stdout);
    print_options(stdout, cmd);
    if (cmd->common & CLI_CONNECTION) {
        fputc('\n', stdout);
        cli_print_connection_help(stdout);
    }
    if (cmd->epilog) {
        fputc('\n', stdout);
        fputs(cmd->epilog, stdout);
    }
    return EXIT_OK;
}
