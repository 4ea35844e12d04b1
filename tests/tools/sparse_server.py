#!/usr/bin/python3
"""A stand-in for a server that answers ranges in the sparse encoding, correctly or not.

usage: sparse_server.py PORT CERT KEY DISK MODE_FILE

Serves, over TLS on 127.0.0.1:PORT, the few routes `vmexport download vm1 s1` uses (login, the
snapshot, the disk's bytes) for the file DISK.  How the disk's ranges are answered is read from
MODE_FILE at every request, so one server runs every case:

  plain       application/octet-stream (as the 004 exporter and other servers do)
  good        the sparse encoding, one segment per run of non-zero 4 KiB blocks
  split       the sparse encoding, data cut into 1000-byte segments, zeros sent too
  disorder    segments in reverse order                       (must be refused)
  overlap     the first segment sent twice                     (must be refused)
  past        a segment reaching past the range                (must be refused)
  empty       a segment of length 0 first                      (must be refused)
  truncated   the body stops inside a segment                  (must be refused)
  otherrange  Content-Range of another range than asked for    (must be refused)

Bodies are sent with chunked transfer encoding in 7-byte chunks, so that segment headers reach
the client cut into pieces.  This implements the format from docs/api.md on its own, without
vmexport's code: the client is checked against an independent encoder.
"""
import http.server
import json
import re
import ssl
import struct
import sys

PORT, CERT, KEY, DISK, MODE_FILE = sys.argv[1:6]
DATA = open(DISK, "rb").read()
UNIT = 4096
SPARSE = "application/vnd.vmexport.sparse"


def runs(a, b):
    """(offset from a, length) of the non-zero 4 KiB blocks (disk-aligned) of [a, b]."""
    out, pos = [], a
    while pos <= b:
        end = min((pos // UNIT + 1) * UNIT, b + 1)
        if any(DATA[pos:end]):
            if out and out[-1][0] + out[-1][1] == pos - a:
                out[-1] = (out[-1][0], out[-1][1] + end - pos)
            else:
                out.append((pos - a, end - pos))
        pos = end
    return out


def segment(off, data):
    return struct.pack("<QQ", off, len(data)) + data


def body_for(mode, a, b):
    segs = runs(a, b)
    n = b - a + 1
    if mode == "split":
        out = b""
        for pos in range(0, n, 1000):
            out += segment(pos, DATA[a + pos:a + min(pos + 1000, n)])
        return out
    parts = [segment(o, DATA[a + o:a + o + ln]) for o, ln in segs]
    if mode == "disorder" and len(parts) > 1:
        parts.reverse()
    elif mode == "overlap" and parts:
        parts.insert(1, parts[0])
    elif mode == "past" and segs:
        o, ln = segs[-1]
        parts[-1] = segment(o, DATA[a + o:a + o + ln] + b"x" * (n - o - ln + 1))
    elif mode == "empty":
        parts.insert(0, struct.pack("<QQ", 0, 0))
    elif mode == "truncated" and parts:
        parts[-1] = parts[-1][:-1]
    return b"".join(parts)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path.rstrip("/") == "/api/v1/auth/login":
            self.send_json(200, {"token": "test-token", "expires_in": 3600})
        else:
            self.send_json(404, {"error": "not found"})

    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path == "/api/v1/vms/vm1/snapshots/s1":
            disk = {"name": "d.img", "size": len(DATA), "snapshot_id": "s1",
                    "chunks": [{"start": 0, "length": len(DATA)}]}
            self.send_json(200, {"id": "s1", "vm_id": "vm1", "status": "ready", "disks": [disk]})
            return
        if path != "/api/v1/vms/vm1/snapshots/s1/disks/d.img":
            self.send_json(404, {"error": "not found"})
            return
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if not m:
            self.send_json(400, {"error": "this stand-in wants Range: bytes=A-B"})
            return
        a, b = int(m.group(1)), min(int(m.group(2)), len(DATA) - 1)
        mode = open(MODE_FILE).read().strip()
        accepts = SPARSE in self.headers.get("Accept", "")
        self.send_response(206)
        cr_start = a + 4096 if mode == "otherrange" else a
        self.send_header("Content-Range", "bytes %d-%d/%d" % (cr_start, b, len(DATA)))
        if mode == "plain" or not accepts:
            body = DATA[a:b + 1]
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = body_for(mode, a, b)
        self.send_header("Content-Type", SPARSE)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        # HTTP chunks of 7 bytes (the client's decoder hands them on one by one), sent in
        # large writes: a TLS record per 7 bytes made a 3 MiB download take seconds.
        framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                          for i in range(0, len(body), 7))
        self.wfile.write(framed + b"0\r\n\r\n")


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(PORT)), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
