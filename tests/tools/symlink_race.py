#!/usr/bin/python3
"""Symlink races against vmexportd, for tests/integration/test-security-symlink.sh.

  symlink_race.py swap A B
      Exchanges the names A and B (renameat2 RENAME_EXCHANGE) in a tight loop until killed: with
      A a disk file and B a symlink to a secret, A is the disk one moment and the link the next
      (some states last up to a millisecond).

  symlink_race.py snapshots URL CA TOKEN VM DISK ROUNDS EXPECTED SECRET
      ROUNDS times: create a snapshot of VM over one keep-alive TLS connection and, when it was
      created, GET its disk DISK.  Every served disk must equal the file EXPECTED; prints
      "created=N refused=N served_secret=N served_other=N", where served_secret counts bodies
      holding any 4 KiB block of the file SECRET.

  symlink_race.py scan SECRET EXPECTED FILE...
      Prints "secret=N other=N": files holding a 4 KiB block of SECRET, and files (other than
      sidecars) whose bytes differ from EXPECTED.
"""
import ctypes
import http.client
import json
import os
import random
import ssl
import sys
import time

AT_FDCWD = -100
RENAME_EXCHANGE = 2
BLOCK = 4096


def swap(a, b):
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
    a, b = os.fsencode(a), os.fsencode(b)
    while True:
        renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)
        # Each state held for up to a millisecond, at random: swaps at full speed leave the disk
        # in place so rarely that few snapshots are taken at all; the old daemon lost within a
        # few dozen creates either way.
        if random.random() < 0.5:
            time.sleep(random.random() / 1000)


def secret_blocks(path):
    data = open(path, "rb").read()
    return [data[i:i + BLOCK] for i in range(0, len(data), BLOCK)]


def holds_secret(body, blocks):
    return any(b in body for b in blocks)


def snapshots(url, ca, token, vm, disk, rounds, expected_path, secret_path):
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=60)
    hdrs = {"Authorization": "Bearer " + token}
    expected = open(expected_path, "rb").read()
    blocks = secret_blocks(secret_path)
    created = refused = served_secret = served_other = 0
    for _ in range(rounds):
        conn.request("POST", "/api/v1/vms/%s/snapshots" % vm, body=b"", headers=hdrs)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 201:
            refused += 1
            continue
        created += 1
        snap = json.loads(body)["id"]
        conn.request("GET", "/api/v1/vms/%s/snapshots/%s/disks/%s" % (vm, snap, disk),
                     headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        if holds_secret(data, blocks):
            served_secret += 1
        elif resp.status != 200 or data != expected:
            served_other += 1
    print("created=%d refused=%d served_secret=%d served_other=%d" %
          (created, refused, served_secret, served_other))


def scan(secret_path, expected_path, files):
    blocks = secret_blocks(secret_path)
    expected = open(expected_path, "rb").read()
    secret = other = 0
    for f in files:
        data = open(f, "rb").read()
        if holds_secret(data, blocks):
            secret += 1
        elif ".vxhash" not in f and data != expected:
            other += 1
    print("secret=%d other=%d" % (secret, other))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "swap":
        swap(sys.argv[2], sys.argv[3])
    elif cmd == "snapshots":
        a = sys.argv[2:]
        snapshots(a[0], a[1], a[2], a[3], a[4], int(a[5]), a[6], a[7])
    elif cmd == "scan":
        scan(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit("unknown command " + cmd)
