/* vmexport snapshots (the snapshots of a VM) and vmexport snapshot create|delete|purge, on a
 * vmexportd server. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/remote.h"
#include "client/client.h"
#include "client/rest.h"
#include "core/cleanup.h"

/* "2026-11-23T09:10:49" of an RFC 3339 time: the CREATED column. */
#define CREATED_SECONDS_LEN 19

static int snapshots_run(int argc, char **argv)
{
    struct cli_args a = {0};
    if (cli_parse(&a, &cmd_snapshots, argc, argv) == CLI_EXIT)
        return a.status;
    bool json = a.json;
    int first = a.first;
    if (argc - first != 1)
        return cli_usage_error(&cmd_snapshots, "expected one VM");
    const char *vm = argv[first];
    int r;

    struct client *c = cli_client_connect("snapshots");
    if (!c)
        return EXIT_FAIL;
    json_t *snaps;
    if (client_list_snapshots(c, vm, false, &snaps) < 0)
        return remote_fail("snapshots", c);
    client_free(c);
    if (remote_list_done("snapshots", snaps, "snapshots", json, &r))
        return r;

    static const char *const headers[] = {"ID", "CREATED", "DISKS", "SIZE"};
    static const bool right[] = {false, false, true, true};
    struct table t = {
        .headers = headers, .right = right, .ncols = ARRAY_SIZE(headers), .cells = VECTOR_INIT};
    r = 0;
    for (size_t i = 0; i < json_array_size(snaps); i++) {
        const json_t *s = json_array_get(snaps, i);
        const json_t *disks = json_object_get(s, "disks");
        uint64_t size = remote_json_sum(disks, "size");
        const char *id = json_string_value(json_object_get(s, "id"));
        const char *created = json_string_value(json_object_get(s, "created_at"));
        char b[32];
        if (r == 0)
            r = table_add(&t, "%s", id ? id : "?");
        if (r == 0 && created && strlen(created) > CREATED_SECONDS_LEN)
            r = table_add(&t, "%.*sZ", CREATED_SECONDS_LEN, created);
        else if (r == 0)
            r = table_add(&t, "%s", created ? created : "-");
        if (r == 0)
            r = table_add(&t, "%zu", json_array_size(disks));
        if (r == 0)
            r = table_add(&t, "%s", cli_bytes(size, b, sizeof(b)));
    }
    json_decref(snaps);
    return table_finish("snapshots", &t, r);
}

const struct cli_command cmd_snapshots = {
    .name = "snapshots",
    .summary = "list the snapshots of a VM on a vmexportd server",
    .run = snapshots_run,
    .usage = "Usage: vmexport snapshots [--json] VM\n"
             "\n"
             "List the ready snapshots of VM, oldest first: ID, creation time (UTC), number of\n"
             "disks and their total size.  Snapshots of a VM that no longer exists (orphans)\n"
             "are listed too.  The extent lists are not asked for, so this stays quick for VMs\n"
             "with many snapshots.\n"
             "\n",
    .common = CLI_JSON | CLI_CONNECTION,
    .json_short = 'j',
    .json_help = "print the server's JSON\n(GET /api/v1/vms/VM/snapshots?chunks=false)",
    .epilog = "Exit status: 0 success, 1 failure (unknown VM, server unreachable ...),\n"
              "2 bad usage.\n",
};

/* ---- snapshot create | delete | purge ---- */

static int snapshot_create(const char *vm, bool json)
{
    struct client *c = cli_client_connect("snapshot");
    if (!c)
        return EXIT_FAIL;
    json_t *snap;
    if (client_create_snapshot(c, vm, NULL, true, &snap) < 0)
        return remote_fail("snapshot", c);
    client_free(c);
    int r;
    if (json) {
        r = remote_print_json(snap);
    } else {
        const json_t *disks = json_object_get(snap, "disks");
        uint64_t size = remote_json_sum(disks, "size"), data = 0;
        for (size_t i = 0; i < json_array_size(disks); i++)
            data += remote_json_sum(json_object_get(json_array_get(disks, i), "chunks"), "length");
        const char *id = json_string_value(json_object_get(snap, "id"));
        char b1[32], b2[32];
        printf("created snapshot %s of %s: %zu disks, %s, %s of data\n", id ? id : "?", vm,
               json_array_size(disks), cli_bytes(size, b1, sizeof(b1)),
               cli_bytes(data, b2, sizeof(b2)));
        r = cli_finish_stdout();
    }
    json_decref(snap);
    return r;
}

/* DELETE of one snapshot (snap) or of all of the VM's (snap NULL). */
static int snapshot_delete(const char *vm, const char *snap)
{
    struct client *c = cli_client_connect("snapshot");
    if (!c)
        return EXIT_FAIL;
    if ((snap ? client_delete_snapshot(c, vm, snap) : client_purge_snapshots(c, vm)) < 0)
        return remote_fail("snapshot", c);
    client_free(c);
    if (snap)
        printf("deleted snapshot %s of %s\n", snap, vm);
    else
        printf("deleted every snapshot of %s\n", vm);
    return cli_finish_stdout();
}

static int snapshot_run(int argc, char **argv)
{
    struct cli_args a = {0};
    if (cli_parse(&a, &cmd_snapshot, argc, argv) == CLI_EXIT)
        return a.status;
    bool json = a.json;
    int first = a.first;
    int n = argc - first;
    if (n < 1)
        return cli_usage_error(&cmd_snapshot, "expected create, delete or purge");
    const char *sub = argv[first];
    if (!strcmp(sub, "create")) {
        if (n != 2)
            return cli_usage_error(&cmd_snapshot, "snapshot create: expected one VM");
        return snapshot_create(argv[first + 1], json);
    }
    if (json)
        return cli_usage_error(&cmd_snapshot, "--json goes with create only");
    if (!strcmp(sub, "delete")) {
        if (n != 3)
            return cli_usage_error(&cmd_snapshot, "snapshot delete: expected VM and SNAPSHOT");
        return snapshot_delete(argv[first + 1], argv[first + 2]);
    }
    if (!strcmp(sub, "purge")) {
        if (n != 2)
            return cli_usage_error(&cmd_snapshot, "snapshot purge: expected one VM");
        return snapshot_delete(argv[first + 1], NULL);
    }
    return cli_usage_error(&cmd_snapshot, "unknown subcommand '%s' (create, delete or purge)", sub);
}

const struct cli_command cmd_snapshot = {
    .name = "snapshot",
    .summary = "create, delete or purge snapshots on a vmexportd server",
    .run = snapshot_run,
    .usage =
        "Usage: vmexport snapshot create [--json] VM\n"
        "       vmexport snapshot delete VM SNAPSHOT\n"
        "       vmexport snapshot purge VM\n"
        "\n"
        "create  take a snapshot of every snapshot-compatible disk of VM (reflink clones where\n"
        "        the filesystem can, sparse copies elsewhere; all disks or none) and print its\n"
        "        ID, its disks and how much data they hold.\n"
        "delete  delete one snapshot (its files and catalog record).\n"
        "purge   delete every snapshot of VM, also when the VM no longer exists.\n"
        "\n"
        "Keep the last snapshot you downloaded: 'vmexport download --diff-from' needs it.\n"
        "\n",
    .common = CLI_JSON | CLI_CONNECTION,
    .json_short = 'j',
    .json_help = "create: print the new snapshot's JSON (with its chunks)",
    .epilog = "Exit status: 0 success, 1 failure (unknown VM or snapshot, VM not snapshot\n"
              "compatible, server unreachable ...), 2 bad usage.\n",
};
