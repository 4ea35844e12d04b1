/* Fuzz target: vmexportd's configuration file (src/daemon/config.c): any input is accepted or
 * rejected with a message naming the file, and never crashes or leaks. */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "daemon/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz-config", MFD_CLOEXEC);
    assert(fd >= 0);
    assert(write(fd, data, size) == (ssize_t)size);
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    struct server_config cfg;
    char err[512] = "";
    int r = config_load(&cfg, path, err, sizeof(err));
    if (r < 0)
        assert(strstr(err, path) || strstr(err, "["));
    config_free(&cfg);
    close(fd);
    return 0;
}
