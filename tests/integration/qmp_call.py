#!/usr/bin/env python3
"""Run one QMP command on a QEMU monitor socket, for the tests: qmp_call.py SOCKET COMMAND [ARGS_JSON].

Prints the "return" value as JSON and exits 0, or prints the error and exits 1.  Events are skipped.
"""
import json
import socket
import sys


def main():
    path, cmd = sys.argv[1], sys.argv[2]
    args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    f = s.makefile("rw")
    json.loads(f.readline())  # greeting

    def run(c, a=None):
        m = {"execute": c}
        if a is not None:
            m["arguments"] = a
        f.write(json.dumps(m) + "\n")
        f.flush()
        while True:
            msg = json.loads(f.readline())
            if "event" not in msg:
                return msg

    run("qmp_capabilities")
    msg = run(cmd, args)
    if "error" in msg:
        print(json.dumps(msg["error"]))
        sys.exit(1)
    print(json.dumps(msg["return"]))


main()
