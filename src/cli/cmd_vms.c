/* vmexport vms: the VMs a vmexportd server exports, as a table or the server's JSON. */
#include <jansson.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/remote.h"
#include "client/client.h"
#include "client/rest.h"
#include "core/cleanup.h"

static int vms_run(int argc, char **argv)
{
    struct cli_args a = {0};
    if (cli_parse(&a, &cmd_vms, argc, argv) == CLI_EXIT)
        return a.status;
    bool json = a.json;
    int first = a.first, r;
    if (argc != first)
        return cli_usage_error(&cmd_vms, "unexpected argument '%s'", argv[first]);

    struct client *c = cli_client_connect("vms");
    if (!c)
        return EXIT_FAIL;
    json_t *vms;
    if (client_list_vms(c, &vms) < 0)
        return remote_fail("vms", c);
    client_free(c);
    if (remote_list_done("vms", vms, "VMs", json, &r))
        return r;

    static const char *const headers[] = {"NAME", "PROVIDER",  "DISKS",
                                          "SIZE", "SNAPSHOTS", "COMPATIBLE"};
    static const bool right[] = {false, false, true, true, true, false};
    struct table t = {
        .headers = headers, .right = right, .ncols = ARRAY_SIZE(headers), .cells = VECTOR_INIT};
    r = 0;
    for (size_t i = 0; i < json_array_size(vms); i++) {
        const json_t *vm = json_array_get(vms, i);
        const json_t *disks = json_object_get(vm, "disks");
        uint64_t size = remote_json_sum(disks, "size");
        const char *name = json_string_value(json_object_get(vm, "name"));
        const char *provider = json_string_value(json_object_get(vm, "provider"));
        char b[32];
        if (r == 0)
            r = table_add(&t, "%s", name ? name : "?");
        if (r == 0)
            r = table_add(&t, "%s", provider ? provider : "-");
        if (r == 0)
            r = table_add(&t, "%zu", json_array_size(disks));
        if (r == 0)
            r = table_add(&t, "%s", cli_bytes(size, b, sizeof(b)));
        if (r == 0)
            r = table_add(&t, "%zu", json_array_size(json_object_get(vm, "snapshots")));
        if (r == 0)
            r = table_add(&t, "%s",
                          json_is_true(json_object_get(vm, "snapshot_compatible")) ? "yes" : "no");
    }
    json_decref(vms);
    return table_finish("vms", &t, r);
}

const struct cli_command cmd_vms = {
    .name = "vms",
    .summary = "list the VMs a vmexportd server exports",
    .run = vms_run,
    .usage = "Usage: vmexport vms [--json]\n"
             "\n"
             "List the VMs of every provider of the server: name, provider, number of disks,\n"
             "their total size, number of snapshots, and whether the VM can be snapshotted\n"
             "(its provider can snapshot every writable disk).\n"
             "\n",
    .common = CLI_JSON | CLI_CONNECTION,
    .json_short = 'j',
    .json_help = "print the server's JSON (GET /api/v1/vms) instead of a table",
    .epilog = "Exit status: 0 success, 1 failure (server unreachable, login refused ...),\n"
              "2 bad usage.\n",
};
