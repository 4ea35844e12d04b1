#!/usr/bin/python3
"""Test tool of the qemu-storage-daemon tests (qsd-lib.sh): QMP commands on the test's own
monitor, and the "guest": seeded random writes, zeroes and discards on a disk's writable export,
applied at the same time to a truth file that always holds what the disk reads.

  qsd_tool.py qmp SOCKET JSON...          run commands; print each "return" as one JSON line
  qsd_tool.py bitmaps SOCKET              {"node": [{"name":..,"recording":..,..}, ...], ...}
  qsd_tool.py jobs SOCKET                 the IDs of the running backup jobs, one a line
  qsd_tool.py wait-job SOCKET KNOWN_FILE TIMEOUT [PID]
                                          wait until a backup job runs that is not a line of
                                          KNOWN_FILE (a snapshot's transaction ran); print its
                                          ID; fails once process PID has ended
  qsd_tool.py write DEV TRUTH SEED OPS MAXLEN TOUCHED
                                          OPS random operations on DEV (the export) and TRUTH;
                                          the ranges written are appended to TOUCHED
  qsd_tool.py granules TOUCHED GRANULE [CHUNK]
                                          how many distinct GRANULE-sized blocks TOUCHED names;
                                          with CHUNK: the bytes from the first to the last of
                                          them in each CHUNK-sized chunk, summed
  qsd_tool.py serve                       the same commands, one a line on stdin (words split
                                          at blanks), each answered by its output and a last
                                          line "=ok" or "=error CAUSE": one process for a whole
                                          test instead of one per command
  in serve mode also:
    bgwrite SOCKET KNOWN_FILE PID SEED OPS MAXLEN DEV TRUTH TOUCHED [DEV TRUTH TOUCHED...]
                                          wait-job, then write OPS operations on each disk
                                          (seed SEED + index) and print "wrote"; "missed" and
                                          no writes when process PID ended first

Exit status 0, or 1 with the cause on stderr.
"""
import ctypes
import json
import os
import random
import socket
import sys
import time

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SECTOR = 512
ALIGN = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


class Qmp:
    """One QMP connection: greeting, capabilities, then command after command."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self._read()  # greeting
        self.run({"execute": "qmp_capabilities"})

    def _read(self):
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError("QMP connection closed")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def run(self, cmd):
        self.file.write(json.dumps(cmd).encode() + b"\n")
        self.file.flush()
        msg = self._read()
        if "error" in msg:
            raise RuntimeError("%s: %s" % (cmd.get("execute"), msg["error"].get("desc")))
        return msg.get("return")

    def bitmaps(self):
        out = {}
        for node in self.run({"execute": "query-named-block-nodes", "arguments": {"flat": True}}):
            if node.get("node-name"):
                out[node["node-name"]] = node.get("dirty-bitmaps", [])
        return out


def cmd_qmp(args):
    q = Qmp(args[0])
    for a in args[1:]:
        print(json.dumps(q.run(json.loads(a))))


def cmd_bitmaps(args):
    print(json.dumps(Qmp(args[0]).bitmaps()))


def process_running(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def backup_jobs(q):
    return set(j["device"] for j in q.run({"execute": "query-block-jobs"}) if j.get("type") == "backup")


def cmd_jobs(args):
    for j in sorted(backup_jobs(Qmp(args[0]))):
        print(j)


def wait_job(path, known_file, timeout, pid=None):
    """Wait until a backup job runs that is not a line of known_file (a snapshot's transaction
    ran: its blockdev-backup started with its bitmaps): its ID.  None when process pid ended
    first.  (query-block-jobs, not the node list: QEMU 7.2 aborts in qcow2_get_specific_info
    when query-named-block-nodes runs during a blockdev-create of a qcow2 image.)"""
    with open(known_file) as f:
        known = set(line.strip() for line in f)
    q = Qmp(path)
    end = time.monotonic() + timeout
    while True:
        running = pid is None or process_running(pid)
        new = backup_jobs(q) - known
        if new:
            return sorted(new)[0]
        if not running:
            return None
        if time.monotonic() > end:
            raise RuntimeError("no new backup job within %g s" % timeout)
        time.sleep(0.005)


def cmd_wait_job(args):
    pid = int(args[3]) if len(args) > 3 else None
    job = wait_job(args[0], args[1], float(args[2]), pid)
    if job is None:
        raise RuntimeError("process %d ended before a new backup job ran" % pid)
    print(job)


def cmd_bgwrite(args):
    path, known_file, pid, seed, ops, maxlen = args[0], args[1], int(args[2]), int(args[3]), \
        args[4], args[5]
    job = wait_job(path, known_file, 60, pid)
    if job is None:
        print("missed") # the backup ended before the guest saw its snapshot: no writes
        return
    print("wrote")
    disks = args[6:]
    for i in range(0, len(disks), 3):
        cmd_write([disks[i], disks[i + 1], str(seed + i), ops, maxlen, disks[i + 2]])


def pwrite_all(fd, buf, off):
    view = memoryview(buf)
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


def pread_all(fd, n, off):
    out = bytearray()
    while len(out) < n:
        b = os.pread(fd, n - len(out), off + len(out))
        if not b:
            raise RuntimeError("short read at %d" % (off + len(out)))
        out += b
    return bytes(out)


def fallocate(fd, mode, off, n):
    if _libc.fallocate(fd, mode, off, n) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "fallocate(mode %#x, %d, %d): %s" % (mode, off, n, os.strerror(e)))


def cmd_write(args):
    dev, truth, seed, ops, maxlen, touched = args[0], args[1], int(args[2]), int(args[3]), \
        int(args[4]), args[5]
    rng = random.Random(seed)
    dfd = os.open(dev, os.O_RDWR)
    tfd = os.open(truth, os.O_RDWR)
    size = os.fstat(tfd).st_size
    log = []
    for _ in range(ops):
        kind = rng.choices(["data", "zeros", "zero-range", "discard"], [6, 1, 1, 2])[0]
        # Writes mostly 4 KiB-aligned, sometimes only sector-aligned.  fallocate on a FUSE file
        # zeroes the cached part of a partial page whatever the disk did: page-aligned only.
        align = ALIGN if kind in ("zero-range", "discard") or rng.random() < 0.8 else SECTOR
        n = rng.randrange(1, maxlen // align + 1) * align
        off = rng.randrange(0, (size - n) // align + 1) * align
        if kind == "data":
            buf = rng.randbytes(n)
            pwrite_all(dfd, buf, off)
            pwrite_all(tfd, buf, off)
        elif kind == "zeros":
            buf = bytes(n)
            pwrite_all(dfd, buf, off)
            pwrite_all(tfd, buf, off)
        else:
            mode = FALLOC_FL_KEEP_SIZE | (FALLOC_FL_ZERO_RANGE if kind == "zero-range"
                                          else FALLOC_FL_PUNCH_HOLE)
            fallocate(dfd, mode, off, n)
            os.posix_fadvise(dfd, off, n, os.POSIX_FADV_DONTNEED)
            # A discard leaves what the disk decides (zeros, or the old data where it is not
            # cluster-aligned): the truth is what the guest reads back.
            pwrite_all(tfd, pread_all(dfd, n, off), off)
        log.append("%s %d %d\n" % (kind, off, n))
    os.fsync(dfd)
    os.close(dfd)
    os.close(tfd)
    with open(touched, "a") as f:
        f.writelines(log)


def cmd_granules(args):
    g = int(args[1])
    blocks = set()
    with open(args[0]) as f:
        for line in f:
            _, off, n = line.split()
            off, n = int(off), int(n)
            blocks.update(range(off // g, (off + n - 1) // g + 1))
    if len(args) < 3:
        print(len(blocks))
        return
    # The most a reader of these blocks reads when it merges the ranges of one chunk across
    # gaps: from the first to the last block written in each chunk.
    per_chunk = int(args[2]) // g
    spans = {}
    for b in blocks:
        lo, hi = spans.get(b // per_chunk, (b, b))
        spans[b // per_chunk] = (min(lo, b), max(hi, b))
    print(sum((hi - lo + 1) * g for lo, hi in spans.values()))


COMMANDS = {
    "qmp": cmd_qmp,
    "bitmaps": cmd_bitmaps,
    "jobs": cmd_jobs,
    "wait-job": cmd_wait_job,
    "write": cmd_write,
    "granules": cmd_granules,
    "bgwrite": cmd_bgwrite,
}


def serve():
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] not in COMMANDS or words[0] == "serve":
                raise ValueError("unknown command " + words[0])
            COMMANDS[words[0]](words[1:])
            print("=ok")
        except (OSError, RuntimeError, ValueError, IndexError) as e:
            print("=error %s: %s" % (words[0], e))
        sys.stdout.flush()

if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "serve":
        serve()
        sys.exit(0)
    if len(sys.argv) < 3 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    try:
        COMMANDS[sys.argv[1]](sys.argv[2:])
    except (OSError, RuntimeError, ValueError) as e:
        print("qsd_tool.py %s: %s" % (sys.argv[1], e), file=sys.stderr)
        sys.exit(1)
