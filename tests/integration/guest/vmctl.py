#!/usr/bin/env python3
"""The tests' side of a running QEMU: its QMP monitor, its guest agent and the tiny guest's
command port (see build-guest.sh).  Prints what the other end answers; exits 1 on an error.

vmctl.py qmp SOCK COMMAND [ARGS_JSON]       one QMP command, prints "return" as JSON
vmctl.py hmp SOCK 'HMP COMMAND LINE'         human-monitor-command, prints its text
vmctl.py qga SOCK COMMAND [ARGS_JSON]       one guest agent command after the sync handshake
vmctl.py wait-qga SOCK SECONDS              until the guest agent answers
vmctl.py sh SOCK 'SHELL LINE' [SECONDS]      runs the line in the guest, prints its output,
                                            exits with its status
vmctl.py wait-sh SOCK SECONDS               until the guest's command port answers
vmctl.py writes SOCK SEED N DEV=TRUTH...     N random writes (4 KiB..256 KiB, one random byte
                                            value each, 4 KiB aligned) through HMP qemu-io on
                                            the virtio devices DEV, each applied to the raw file
                                            TRUTH too, then a flush of every device; N may be
                                            "while:PID": until process PID ends (at most 200);
                                            prints the number of writes
vmctl.py fill SOCK DEV=TRUTH...             every MiB of each device written with its own
                                            byte value (and the truth), then flushed
"""
import json
import random
import socket
import sys
import time


def connect(path, timeout):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def read_json(f):
    while True:
        line = f.readline()
        if not line:
            raise EOFError("connection closed")
        line = line.strip(b"\xff\r\n \t")
        if not line:
            continue
        try:
            return json.loads(line)
        except ValueError:
            continue


def qmp(path, cmd, args, timeout=30):
    s = connect(path, timeout)
    f = s.makefile("rb")
    read_json(f)  # greeting
    s.sendall(b'{"execute":"qmp_capabilities"}\n')
    read_json(f)
    msg = {"execute": cmd}
    if args:
        msg["arguments"] = args
    s.sendall(json.dumps(msg).encode() + b"\n")
    while True:
        r = read_json(f)
        if "event" in r:
            continue
        s.close()
        if "error" in r:
            raise RuntimeError("%s: %s" % (cmd, r["error"].get("desc")))
        return r["return"]


def qga(path, cmd, args, timeout=30):
    s = connect(path, timeout)
    f = s.makefile("rb")
    sync = random.randint(1, 2**31)
    s.sendall(b"\xff" + json.dumps({"execute": "guest-sync-delimited",
                                     "arguments": {"id": sync}}).encode() + b"\n")
    while read_json(f).get("return") != sync:
        pass
    msg = {"execute": cmd}
    if args:
        msg["arguments"] = args
    s.sendall(json.dumps(msg).encode() + b"\n")
    r = read_json(f)
    s.close()
    if "error" in r:
        raise RuntimeError("%s: %s" % (cmd, r["error"].get("desc")))
    return r["return"]


def sh(path, line, timeout=30):
    s = connect(path, timeout)
    s.sendall(line.encode() + b"\n")
    f = s.makefile("rb")
    out = []
    while True:
        l = f.readline()
        if not l:
            raise EOFError("guest command port closed")
        l = l.decode(errors="replace")
        if l.startswith("__rc="):
            s.close()
            return int(l[5:]), "".join(out)
        out.append(l)


class Monitor:
    """One QMP connection for many commands."""

    def __init__(self, path, timeout=30):
        self.s = connect(path, timeout)
        self.f = self.s.makefile("rb")
        read_json(self.f)
        self.execute("qmp_capabilities")

    def execute(self, cmd, args=None):
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        self.s.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = read_json(self.f)
            if "event" in r:
                continue
            if "error" in r:
                raise RuntimeError("%s: %s" % (cmd, r["error"].get("desc")))
            return r["return"]

    def hmp(self, line):
        out = self.execute("human-monitor-command", {"command-line": line})
        if out.strip():  # qemu-io says nothing when a write succeeds
            raise RuntimeError("%s: %s" % (line, out.strip()))


def writes(path, seed, n, targets):
    import os
    rng = random.Random(seed)
    devs = []
    for t in targets:
        dev, truth = t.split("=", 1)
        devs.append((dev, truth, os.path.getsize(truth)))
    pid = int(n[6:]) if n.startswith("while:") else None
    count = 200 if pid else int(n)
    m = Monitor(path)
    done = 0
    for _ in range(count):
        if pid and not os.path.exists("/proc/%d" % pid):
            break
        dev, truth, size = rng.choice(devs)
        length = rng.randint(1, 64) * 4096
        off = rng.randrange(0, (size - length) // 4096 + 1) * 4096
        byte = rng.randint(1, 255)
        m.hmp('qemu-io -d /machine/peripheral/%s/virtio-backend "write -P %d %d %d"'
              % (dev, byte, off, length))
        with open(truth, "r+b") as f:
            f.seek(off)
            f.write(bytes([byte]) * length)
        done += 1
    for dev, _, _ in devs:
        m.hmp('qemu-io -d /machine/peripheral/%s/virtio-backend flush' % dev)
    return done


def fill(path, targets):
    import os
    m = Monitor(path)
    k = 0
    for t in targets:
        dev, truth = t.split("=", 1)
        size = os.path.getsize(truth)
        with open(truth, "r+b") as f:
            for off in range(0, size, 1 << 20):
                k += 1
                m.hmp('qemu-io -d /machine/peripheral/%s/virtio-backend "write -P %d %d %d"'
                      % (dev, k % 255 + 1, off, 1 << 20))
                f.seek(off)
                f.write(bytes([k % 255 + 1]) * (1 << 20))
        m.hmp('qemu-io -d /machine/peripheral/%s/virtio-backend flush' % dev)


def wait(fn, seconds):
    end = time.time() + seconds
    while True:
        try:
            return fn()
        except (OSError, EOFError, RuntimeError):
            if time.time() > end:
                raise
            time.sleep(0.2)


def main(argv):
    op, path = argv[1], argv[2]
    if op == "qmp":
        args = json.loads(argv[4]) if len(argv) > 4 else None
        print(json.dumps(qmp(path, argv[3], args)))
    elif op == "hmp":
        sys.stdout.write(qmp(path, "human-monitor-command", {"command-line": argv[3]}))
    elif op == "qga":
        args = json.loads(argv[4]) if len(argv) > 4 else None
        print(json.dumps(qga(path, argv[3], args)))
    elif op == "wait-qga":
        wait(lambda: qga(path, "guest-ping", None, timeout=2), float(argv[3]))
    elif op == "sh":
        rc, out = sh(path, argv[3], float(argv[4]) if len(argv) > 4 else 30)
        sys.stdout.write(out)
        return rc
    elif op == "wait-sh":
        wait(lambda: sh(path, "true", timeout=2), float(argv[3]))
    elif op == "fill":
        fill(path, argv[3:])
    elif op == "writes":
        print(writes(path, int(argv[3]), argv[4], argv[5:]))
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception as e:  # the tests want one line saying what failed
        sys.stderr.write("vmctl: %s\n" % e)
        sys.exit(1)
