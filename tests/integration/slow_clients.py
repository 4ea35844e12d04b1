#!/usr/bin/env python3
"""Hostile and slow clients for tests/integration/test-security-conn.sh (traffic to 127.0.0.0/8
only).

  flood PORT READY_FILE SPEC...   open connections that never finish a request and hold them;
                                  SPEC is ADDRESS:COUNT (source address to bind, connections
                                  from it); every other connection sends the first bytes of a
                                  TLS ClientHello and stops, the others send nothing.  Writes
                                  "opened N" to READY_FILE once all are connected, then on
                                  SIGUSR1 appends "open ADDRESS N" per address (connections the
                                  server has not closed), and exits on SIGTERM.
  timeout PORT WAIT               one silent and one half-open TLS connection; waits up to WAIT
                                  seconds for the server to close both; prints "closed KIND
                                  SECONDS" or "open KIND".
  keepalive PORT CA PAUSE         one TLS connection: GET /healthz, silence for PAUSE seconds,
                                  GET /healthz again; prints "first STATUS" and "second STATUS"
                                  (or "second closed").
  full PORT CA N SPEC...          N TLS keep-alive connections (round robin over the SPEC source
                                  addresses), each after a GET /healthz; then a new connection
                                  from 127.0.0.1: prints "extra STATUS RETRY_AFTER CONNECTION
                                  CLOSED_AFTER"; then closes them all.
"""
import http.client
import os
import resource
import select
import signal
import socket
import ssl
import sys
import time

# A TLS record header announcing a 512-byte handshake message, and the start of a ClientHello:
# the server waits for the rest, which never comes.
PARTIAL_CLIENT_HELLO = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]) + os.urandom(16)


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def connect(port, source, half_tls):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    if half_tls:
        s.sendall(PARTIAL_CLIENT_HELLO)
    s.setblocking(False)
    return s


def is_open(s):
    """Whether the server has not closed s (no EOF, no reset).  Whatever it sent (a TLS alert
    before closing) is read and dropped."""
    try:
        while s.recv(4096) != b"":
            pass
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def cmd_flood(port, ready_file, specs):
    raise_fd_limit()
    socks = []  # (address, socket)
    for spec in specs:
        addr, count = spec.rsplit(":", 1)
        for i in range(int(count)):
            try:
                socks.append((addr, connect(port, addr, i % 2 == 1)))
            except OSError:
                pass  # refused: counted as not open

    def report(_sig, _frame):
        counts = {}
        for addr, s in socks:
            counts.setdefault(addr, 0)
            if is_open(s):
                counts[addr] += 1
        with open(ready_file, "a") as f:
            for addr, n in counts.items():
                f.write("open %s %d\n" % (addr, n))
            f.write("reported\n")

    signal.signal(signal.SIGUSR1, report)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(ready_file, "w") as f:
        f.write("opened %d\n" % len(socks))
    while True:
        signal.pause()


def cmd_timeout(port, wait):
    socks = {"silent": connect(port, "127.0.0.1", False), "half-tls": connect(port, "127.0.0.1", True)}
    t0 = time.monotonic()
    closed = {}
    while len(closed) < len(socks) and time.monotonic() - t0 < wait:
        for kind, s in socks.items():
            if kind not in closed and not is_open(s):
                closed[kind] = time.monotonic() - t0
        time.sleep(0.1)
    for kind in socks:
        print("closed %s %.1f" % (kind, closed[kind]) if kind in closed else "open %s" % kind)


def tls_context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    return ctx


def cmd_keepalive(port, ca, pause):
    c = http.client.HTTPSConnection("127.0.0.1", port, context=tls_context(ca), timeout=10)
    c.request("GET", "/healthz")
    r = c.getresponse()
    r.read()
    print("first %d" % r.status)
    time.sleep(pause)
    try:
        c.request("GET", "/healthz")
        r = c.getresponse()
        r.read()
        print("second %d" % r.status)
    except (OSError, http.client.HTTPException):
        print("second closed")


def cmd_full(port, ca, n, specs):
    ctx = tls_context(ca)
    held = []
    for i in range(n):
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10,
                                        source_address=(specs[i % len(specs)], 0))
        c.request("GET", "/healthz")
        r = c.getresponse()
        r.read()
        if r.status != 200:
            print("filler %d got %d" % (i, r.status))
        held.append(c)
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    c.request("GET", "/healthz")
    r = c.getresponse()
    body = r.read()
    closed = "no"
    try:
        c.sock.settimeout(5)
        closed = "yes" if c.sock.recv(1) == b"" else "no"
    except (OSError, AttributeError):
        closed = "yes"
    print("extra %d %s %s %s" % (r.status, r.getheader("Retry-After", "-"),
                                 r.getheader("Connection", "-"), closed))
    print("body %s" % body.decode(errors="replace"))
    for c in held:
        c.close()


def main():
    cmd, port = sys.argv[1], int(sys.argv[2])
    if cmd == "flood":
        cmd_flood(port, sys.argv[3], sys.argv[4:])
    elif cmd == "timeout":
        cmd_timeout(port, float(sys.argv[3]))
    elif cmd == "keepalive":
        cmd_keepalive(port, sys.argv[3], float(sys.argv[4]))
    elif cmd == "full":
        cmd_full(port, sys.argv[3], int(sys.argv[4]), sys.argv[5:])
    else:
        sys.exit("unknown command " + cmd)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
