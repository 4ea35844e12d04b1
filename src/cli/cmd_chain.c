/* Placeholder until the chain commands land. */
#include "cli/cli.h"
static int chain_stub(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "vmexport chain: not implemented yet\n");
    return EXIT_FAIL;
}
const struct cli_command cmd_chain = {.name = "chain", .summary = "qcow2 snapshot chains",
                                      .run = chain_stub, .usage = "Usage: vmexport chain\n"};
