#!/usr/bin/python3
"""A TLS proxy in front of a real vmexportd that records the requests and injects 409 answers.

usage: fault_proxy.py PORT CERT KEY UPSTREAM CAFILE LOG RULES_FILE

Listens with TLS on 127.0.0.1:PORT and forwards every request to UPSTREAM (https://host:port,
verified with CAFILE), writing "METHOD PATH" of each to LOG.  RULES_FILE is read at every
request; each of its lines is a regular expression: a request whose "METHOD PATH" matches one
is not forwarded but answered 409 {"error":"checkpoint","details":"injected: ..."}, what the
daemon answers when a live VM's checkpoint was lost (docs/api.md, GET .../changes).  This lets
the backup engine's handling of that answer be tested with the dir provider, whose changes are
always known.
"""
import http.client
import http.server
import json
import re
import ssl
import sys
import urllib.parse

PORT, CERT, KEY, UPSTREAM, CAFILE, LOG, RULES = sys.argv[1:8]
UP = urllib.parse.urlsplit(UPSTREAM)
UP_CTX = ssl.create_default_context(cafile=CAFILE)
# Hop-by-hop headers (RFC 9110 7.6.1) and the length, which is set again for the body sent.
DROP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer",
        "upgrade", "proxy-connection"}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def forward(self):
        line = f"{self.command} {self.path}"
        with open(LOG, "a") as f:
            f.write(line + "\n")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with open(RULES) as f:
            rules = [r.strip() for r in f if r.strip()]
        for r in rules:
            if re.search(r, line):
                msg = json.dumps({"error": "checkpoint",
                                  "details": "injected: the checkpoint bitmap is gone"}).encode()
                self.send_response(409)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(msg)))
                self.end_headers()
                self.wfile.write(msg)
                return
        conn = http.client.HTTPSConnection(UP.hostname, UP.port, context=UP_CTX, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in DROP and
                   k.lower() != "host"}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in DROP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = forward


srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(PORT)), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
