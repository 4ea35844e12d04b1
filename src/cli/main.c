/* vmexport: the command line.  Dispatches to one command per cmd_*.c file. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "core/log.h"

static const struct cli_command *const commands[] = {&cmd_map, &cmd_clone, &cmd_diff};

static void usage(FILE *f)
{
    fprintf(f, "Usage: vmexport [--verbose] COMMAND [ARGS...]\n"
               "\n"
               "Snapshot, diff and export virtual-machine disk images.\n"
               "\n"
               "Commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-10s %s\n", commands[i]->name, commands[i]->summary);
    fprintf(f, "\n"
               "Options:\n"
               "  -v, --verbose  log what is being done\n"
               "  -h, --help     this help; 'vmexport COMMAND --help' for a command's\n"
               "  -V, --version  print the version\n"
               "\n"
               "Exit status: 0 success, 1 failure, 2 bad usage.\n");
}

int main(int argc, char **argv)
{
    log_init("vmexport", LOG_LEVEL_WARN);
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return EXIT_OK;
        } else if (!strcmp(argv[i], "-V") || !strcmp(argv[i], "--version")) {
            printf("vmexport %s\n", VMEXPORT_VERSION);
            return EXIT_OK;
        } else if (!strcmp(argv[i], "-v") || !strcmp(argv[i], "--verbose")) {
            log_set_level(LOG_LEVEL_DEBUG);
        } else {
            fprintf(stderr, "vmexport: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[i], "help")) {
        if (i + 1 >= argc) {
            usage(stdout);
            return EXIT_OK;
        }
        i++;
        for (size_t c = 0; c < sizeof(commands) / sizeof(commands[0]); c++)
            if (!strcmp(argv[i], commands[c]->name))
                return cli_help(commands[c]);
    }
    for (size_t c = 0; c < sizeof(commands) / sizeof(commands[0]); c++)
        if (!strcmp(argv[i], commands[c]->name))
            return commands[c]->run(argc - i, argv + i);
    fprintf(stderr, "vmexport: unknown command '%s'\n", argv[i]);
    usage(stderr);
    return EXIT_USAGE;
}
