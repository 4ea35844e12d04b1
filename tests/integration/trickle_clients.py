#!/usr/bin/env python3
"""Slowloris clients for tests/integration/test-security-slowloris.sh (traffic to 127.0.0.1
only).  Each trickles one byte per second, never falling silent for long (so a timeout that
counts silence never fires), and reports when the server closes its connection.

  trickle PORT CA DURATION        three connections at once, each for at most DURATION seconds:
                                  "hello": a real TLS ClientHello, one byte a second;
                                  "headers": a completed TLS handshake, then request headers
                                  that never end, one byte a second;
                                  "keepalive": GET /healthz answered, then the next request's
                                  headers, one byte a second.
                                  Prints per connection "closed KIND SECONDS" (SECONDS since
                                  the connection was made, for keepalive since the answer) or
                                  "open KIND".
  keepalive PORT CA PAUSE         GET /healthz, silence for PAUSE seconds, GET /healthz on the
                                  same connection; prints "first STATUS" and "second STATUS" or
                                  "second closed".
"""
import http.client
import select
import socket
import ssl
import sys
import threading
import time

from slow_clients import cmd_keepalive, tls_context  # shared with test-security-conn

INTERVAL = 1.0  # seconds between two bytes
# Request headers that never end (no empty line).
ENDLESS_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: " + b"a" * 4096


def client_hello():
    """The first flight of a TLS client: a whole ClientHello record."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def server_closed(sock):
    """Whether the server has closed sock (EOF or reset); waits up to INTERVAL seconds."""
    deadline = time.monotonic() + INTERVAL
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            readable = True
        else:
            readable = bool(select.select([sock], [], [], left)[0])
        if not readable:
            return False
        try:
            if sock.recv(4096) == b"":
                return True
        except (ssl.SSLWantReadError, BlockingIOError):
            continue
        except (OSError, ssl.SSLError):
            return True


def trickle(sock, data, t0, duration):
    """Send data a byte at a time until the server closes sock: its closing time after t0, or
    None if it stayed open for duration seconds."""
    sock.setblocking(False)
    for i in range(len(data)):
        if time.monotonic() - t0 > duration:
            return None
        try:
            sock.send(data[i:i + 1])
        except (ssl.SSLWantWriteError, BlockingIOError):
            pass
        except (OSError, ssl.SSLError):
            return time.monotonic() - t0
        if server_closed(sock):
            return time.monotonic() - t0
    return None


def run_hello(port, ca, duration):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return trickle(sock, client_hello(), time.monotonic(), duration)


def run_headers(port, ca, duration):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    t0 = time.monotonic()
    sock = tls_context(ca).wrap_socket(raw, server_hostname="127.0.0.1")
    return trickle(sock, ENDLESS_HEADERS, t0, duration)


def run_keepalive(port, ca, duration):
    c = http.client.HTTPSConnection("127.0.0.1", port, context=tls_context(ca), timeout=10)
    c.request("GET", "/healthz")
    r = c.getresponse()
    r.read()
    if r.status != 200:
        raise RuntimeError("first request answered %d" % r.status)
    return trickle(c.sock, ENDLESS_HEADERS, time.monotonic(), duration)


def cmd_trickle(port, ca, duration):
    kinds = {"hello": run_hello, "headers": run_headers, "keepalive": run_keepalive}
    results = {}

    def run(kind):
        try:
            results[kind] = kinds[kind](port, ca, duration)
        except Exception as e:  # reported, so that the test shows why
            results[kind] = "error %s" % e

    threads = [threading.Thread(target=run, args=(k,)) for k in kinds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for kind in kinds:
        v = results.get(kind)
        if v is None:
            print("open %s" % kind)
        elif isinstance(v, str):
            print("%s %s" % (v, kind))
        else:
            print("closed %s %.1f" % (kind, v))


def main():
    cmd, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if cmd == "trickle":
        cmd_trickle(port, ca, float(sys.argv[4]))
    elif cmd == "keepalive":
        cmd_keepalive(port, ca, float(sys.argv[4]))
    else:
        sys.exit("unknown command " + cmd)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
