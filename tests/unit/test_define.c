/* Unit tests for restore --define's rewrite of a domain XML (src/backup/define.c,
 * define_rewrite): the restored disks point at the restored raw files without their backing
 * chains, the name is the one given, the UUID and MAC addresses go when the identity is
 * dropped and stay otherwise, writable disks that were not restored are left out, CD-ROMs stay,
 * and anything that is not a domain is refused.  libvirt itself is not needed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backup/define.h"

static const char domain_xml[] =
    "<domain type='kvm'>\n"
    "  <name>web01</name>\n"
    "  <uuid>0d2c1b5e-6a43-4f65-9d1a-111111111111</uuid>\n"
    "  <devices>\n"
    "    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
    "<source file='/var/lib/libvirt/images/web01.qcow2'/>"
    "<backingStore type='file'><format type='qcow2'/><source file='/base.qcow2'/></backingStore>"
    "<target dev='vda' bus='virtio'/></disk>\n"
    "    <disk type='block' device='disk'><driver name='qemu' type='raw'/>"
    "<source dev='/dev/vg/web01-data'/><target dev='vdb' bus='virtio'/></disk>\n"
    "    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
    "<source file='/iso/install.iso'/><target dev='sda' bus='sata'/><readonly/></disk>\n"
    "    <interface type='network'><mac address='52:54:00:aa:bb:cc'/>"
    "<source network='default'/></interface>\n"
    "  </devices>\n"
    "</domain>\n";

struct fixture {
    char dir[64];
    char vda[96];
    struct restored_disk disks[1];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    strcpy(f->dir, "/tmp/vmexport-define.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->vda, sizeof(f->vda), "%s/vda", f->dir);
    FILE *fp = fopen(f->vda, "w");
    assert_non_null(fp);
    fclose(fp);
    f->disks[0] = (struct restored_disk){.disk = "vda", .dest = f->vda, .size = 0};
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    unlink(f->vda);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void test_restored_disk_points_at_the_file(void **state)
{
    struct fixture *f = *state;
    char *out = NULL, err[256] = "";
    assert_int_equal(
        define_rewrite(domain_xml, "web01-restored-1", true, f->disks, 1, &out, err, sizeof(err)),
        0);
    char want[160];
    snprintf(want, sizeof(want), "<source file=\"%s\"/>", f->vda);
    assert_non_null(strstr(out, want));
    assert_null(strstr(out, "web01.qcow2"));
    assert_null(strstr(out, "backingStore"));
    assert_null(strstr(out, "type=\"qcow2\""));
    assert_non_null(strstr(out, "<driver name=\"qemu\" type=\"raw\"/>"));
    assert_non_null(strstr(out, "<name>web01-restored-1</name>"));
    /* a new identity: libvirt makes a new UUID and new MACs */
    assert_null(strstr(out, "<uuid>"));
    assert_null(strstr(out, "52:54:00:aa:bb:cc"));
    assert_non_null(strstr(out, "<interface"));
    /* vdb was not restored: it must not point at the original's volume */
    assert_null(strstr(out, "vdb"));
    assert_null(strstr(out, "/dev/vg/web01-data"));
    /* the CD-ROM stays as it was */
    assert_non_null(strstr(out, "/iso/install.iso"));
    free(out);
}

static void test_identity_kept_on_a_new_host(void **state)
{
    struct fixture *f = *state;
    char *out = NULL, err[256] = "";
    assert_int_equal(
        define_rewrite(domain_xml, "web01", false, f->disks, 1, &out, err, sizeof(err)), 0);
    assert_non_null(strstr(out, "<uuid>0d2c1b5e-6a43-4f65-9d1a-111111111111</uuid>"));
    assert_non_null(strstr(out, "52:54:00:aa:bb:cc"));
    assert_non_null(strstr(out, "<name>web01</name>"));
    free(out);
}

static void test_name_is_escaped(void **state)
{
    struct fixture *f = *state;
    char *out = NULL, err[256] = "";
    assert_int_equal(define_rewrite(domain_xml, "a<b&c", true, f->disks, 1, &out, err, sizeof(err)),
                     0);
    assert_non_null(strstr(out, "<name>a&lt;b&amp;c</name>"));
    free(out);
}

static void test_not_a_domain(void **state)
{
    struct fixture *f = *state;
    char *out = NULL, err[256] = "";
    assert_int_equal(define_rewrite("<vm/>", "x", true, f->disks, 1, &out, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "not a libvirt domain"));
    assert_int_equal(define_rewrite("not xml", "x", true, f->disks, 1, &out, err, sizeof(err)),
                     -EINVAL);
    assert_null(out);
}

static void test_missing_restored_file(void **state)
{
    struct fixture *f = *state;
    struct restored_disk gone = {.disk = "vda", .dest = "/nonexistent/vda"};
    char *out = NULL, err[256] = "";
    (void)f;
    assert_int_equal(define_rewrite(domain_xml, "x", true, &gone, 1, &out, err, sizeof(err)),
                     -ENOENT);
    assert_non_null(strstr(err, "/nonexistent/vda"));
    assert_null(out);
}

static void test_other_formats_refused(void **state)
{
    (void)state;
    char *name = NULL, err[256] = "";
    assert_int_equal(restore_define("test:///default", "ovm-vm.cfg", "name = 'x'", NULL, 0, &name,
                                    err, sizeof(err)),
                     -EOPNOTSUPP);
    assert_non_null(strstr(err, "ovm-vm.cfg"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_restored_disk_points_at_the_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identity_kept_on_a_new_host, setup, teardown),
        cmocka_unit_test_setup_teardown(test_name_is_escaped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_a_domain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_restored_file, setup, teardown),
        cmocka_unit_test(test_other_formats_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
