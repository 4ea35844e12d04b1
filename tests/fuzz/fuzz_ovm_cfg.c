/* Fuzz target: the Oracle VM provider's vm.cfg reader (src/provider/ovm.c), through the
 * provider interface: the input is VirtualMachines/fuzzvm/vm.cfg of a repository under
 * FUZZ_OVM_ROOT that also holds disk files the seeds point at.  A vm.cfg is skipped or gives
 * a VM whose disks have plain names, and a disk offered for snapshots is a file inside the
 * repository once every symbolic link is resolved (never outside it, whatever the paths). */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"
#include "provider/provider.h"

#define FUZZ_OVM_ROOT "/tmp/vmexport-fuzz-ovm"
#define REPO          FUZZ_OVM_ROOT "/A"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void file_of(const char *path, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    assert(fd >= 0);
    assert(ftruncate(fd, (off_t)size) == 0);
    close(fd);
}

static struct provider *setup(void)
{
    const char *dirs[] = {FUZZ_OVM_ROOT,           REPO,         REPO "/VirtualMachines",
                          REPO "/VirtualDisks",    REPO "/ISOs", REPO "/VirtualMachines/fuzzvm",
                          FUZZ_OVM_ROOT "/outside"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
        assert(mkdir(dirs[i], 0755) == 0 || errno == EEXIST);
    file_of(REPO "/VirtualDisks/a1.img", 4096);
    file_of(REPO "/VirtualDisks/a2.img", 8192);
    file_of(REPO "/ISOs/x.iso", 1024);
    file_of(FUZZ_OVM_ROOT "/outside/o.img", 1024);
    if (symlink("../../outside/o.img", REPO "/VirtualDisks/escape.img") < 0)
        assert(errno == EEXIST);
    log_init("fuzz_ovm_cfg", LOG_LEVEL_ERROR); /* skipped VMs are warnings: not printed */
    const struct provider_setting s[] = {{"type", "ovm"}, {"repositories", REPO}};
    struct provider_config cfg = {.name = "fuzz", .settings = s, .n_settings = 2};
    struct provider *p = NULL;
    char err[512];
    int r = provider_new(&cfg, &p, err, sizeof(err));
    if (r < 0)
        fprintf(stderr, "provider: %s\n", err);
    assert(r == 0);
    return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct provider *p;
    if (!p)
        p = setup();
    int fd =
        open(REPO "/VirtualMachines/fuzzvm/vm.cfg", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert(fd >= 0);
    assert(write(fd, data, size) == (ssize_t)size);
    close(fd);

    vm_list vms = VECTOR_INIT;
    int r = p->ops->list(p, &vms);
    assert(r == 0 || r == -ENOMEM);
    for (size_t i = 0; i < vms.len; i++) {
        const struct vm *vm = vms.ptr[i];
        for (size_t k = 0; k < vm->disks.len; k++) {
            const struct vm_disk *d = &vm->disks.ptr[k];
            assert(d->name && *d->name && !strchr(d->name, '/') && d->path);
            if (d->snapshot_compatible) {
                char *real = realpath(d->path, NULL);
                assert(real && !strncmp(real, REPO "/", strlen(REPO "/")));
                assert(d->repo_mountpoint && !strcmp(d->repo_mountpoint, REPO));
                free(real);
            }
        }
        struct vm *again = NULL;
        r = p->ops->get(p, vm->id, &again);
        assert(r == 0 || r == -ENOENT || r == -ENOMEM);
        if (r == 0) {
            assert(!strcmp(again->id, vm->id) && again->disks.len == vm->disks.len);
            vm_free(again);
        }
    }
    vm_list_free(&vms);
    return 0;
}
