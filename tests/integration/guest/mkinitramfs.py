#!/usr/bin/env python3
"""Pieces of the tiny guest's initramfs that need more than a shell (see build-guest.sh).

modules SRC DST NAME...: copy the kernel modules NAME and what they depend on (the "depends="
    field of each module's .modinfo; Debian ships no modules.dep) from the unpacked
    /lib/modules/VERSION SRC into DST, and print their file names in load order.
cpio ROOT OUT: write the tree ROOT as a newc cpio archive (what the kernel unpacks), owned by
    root, without needing cpio on the host.
"""
import os
import re
import shutil
import stat
import sys


def find_modules(src):
    found = {}
    for d, _, files in os.walk(src):
        for f in files:
            if f.endswith(".ko"):
                found[f[:-3].replace("-", "_")] = os.path.join(d, f)
    return found


def depends(path):
    with open(path, "rb") as f:
        m = re.search(rb"\0depends=([^\0]*)\0", f.read())
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",")]


def modules(src, dst, names):
    found = find_modules(src)
    order, seen = [], set()

    def visit(name):
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name not in found:
            # built into the kernel
            return
        for d in depends(found[name]):
            visit(d)
        order.append(name)

    for n in names:
        visit(n)
    for n in order:
        shutil.copy(found[n], os.path.join(dst, n + ".ko"))
        print(n + ".ko")


def cpio(root, out):
    ino = [1]

    def entry(f, name, st, data=b""):
        mode = st.st_mode
        hdr = "070701" + "".join(
            "%08X" % v
            for v in (ino[0], mode, 0, 0, 1, int(st.st_mtime), len(data), 0, 0, 0, 0,
                      len(name) + 1, 0))
        ino[0] += 1
        buf = hdr.encode() + name.encode() + b"\0"
        buf += b"\0" * (-len(buf) % 4)
        buf += data + b"\0" * (-len(data) % 4)
        f.write(buf)

    with open(out, "wb") as f:
        for d, dirs, files in os.walk(root):
            dirs.sort()
            for n in sorted(dirs) + sorted(files):
                p = os.path.join(d, n)
                rel = os.path.relpath(p, root)
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    entry(f, rel, st, os.readlink(p).encode())
                elif stat.S_ISREG(st.st_mode):
                    with open(p, "rb") as r:
                        entry(f, rel, st, r.read())
                else:
                    entry(f, rel, st)
        entry(f, "TRAILER!!!", os.stat_result((0,) * 10))


if __name__ == "__main__":
    if sys.argv[1] == "modules":
        modules(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif sys.argv[1] == "cpio":
        cpio(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: mkinitramfs.py modules SRC DST NAME... | cpio ROOT OUT")
