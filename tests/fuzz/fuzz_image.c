/* Fuzz target: image format probing and the qcow2 header reader (src/fs/qcow2.c) on a file
 * holding the input.  Any input is rejected with a reason or described consistently. */
#include <assert.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fs/qcow2.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz-image", MFD_CLOEXEC);
    assert(fd >= 0);
    assert(write(fd, data, size) == (ssize_t)size);
    struct image_info info;
    memset(&info, 0xa5, sizeof(info)); /* no field may be read before it is set */
    int r = image_probe_fd(fd, &info);
    if (r < 0)
        assert(info.why[0] != '\0' && memchr(info.why, '\0', sizeof(info.why)));
    else
        assert(info.file_size == size);
    image_info_free(&info);
    struct qcow2_info q;
    memset(&q, 0xa5, sizeof(q));
    r = qcow2_info_read(fd, &q);
    if (r < 0)
        assert(q.why[0] != '\0' && memchr(q.why, '\0', sizeof(q.why)));
    else
        assert((q.version == 2 || q.version == 3) && q.cluster_size == 1ULL << q.cluster_bits);
    qcow2_info_free(&q);
    close(fd);
    return 0;
}
