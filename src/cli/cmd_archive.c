/* Placeholder until the archive commands land. */
#include "cli/cli.h"
static int archive_stub(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "vmexport: archives not implemented yet\n");
    return EXIT_FAIL;
}
const struct cli_command cmd_export = {.name = "export", .summary = "export a backup as a tar/ova",
                                       .run = archive_stub, .usage = "Usage: vmexport export\n"};
const struct cli_command cmd_import = {.name = "import", .summary = "import a tar/ova archive",
                                       .run = archive_stub, .usage = "Usage: vmexport import\n"};
