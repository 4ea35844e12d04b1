#!/usr/bin/python3
"""Check a multipart/byteranges answer against the file it was read from.

usage: multipart_check.py HEADERS BODY FILE RANGES
HEADERS holds the answer's headers (its Content-Type names the boundary), BODY its body, FILE the
bytes the disk holds, RANGES the "Range: bytes=" value asked for (first-last,... in request
order, none touching another).  Exits 1 with a message unless the body is exactly one part per
range, in that order, each with the Content-Range of its range and the file's bytes there, then
the closing boundary.  Prints "parts N bytes B" on success.
"""
import re
import sys


def main():
    headers_path, body_path, file_path, ranges = sys.argv[1:5]
    headers = open(headers_path, "rb").read().decode("latin-1")
    m = re.search(r"(?im)^content-type: multipart/byteranges; boundary=([^\r\n;]+)\r?$", headers)
    if not m:
        sys.exit("no multipart/byteranges Content-Type with a boundary")
    delim = b"--" + m.group(1).encode()
    body = open(body_path, "rb").read()
    data = open(file_path, "rb").read()
    want = [tuple(int(x) for x in r.split("-")) for r in ranges.split(",")]
    pos, total = 0, 0
    for i, (first, last) in enumerate(want):
        lead = (b"\r\n" if i else b"") + delim + b"\r\n"
        if body[pos:pos + len(lead)] != lead:
            sys.exit("part %d: no boundary line at body byte %d" % (i, pos))
        pos += len(lead)
        end = body.find(b"\r\n\r\n", pos)
        if end < 0:
            sys.exit("part %d: headers not ended" % i)
        part_headers = body[pos:end].decode("latin-1").lower().split("\r\n")
        crange = "content-range: bytes %d-%d/%d" % (first, last, len(data))
        if crange not in part_headers:
            sys.exit("part %d: %r has no %r" % (i, part_headers, crange))
        pos = end + 4
        n = last - first + 1
        if body[pos:pos + n] != data[first:last + 1]:
            sys.exit("part %d (bytes %d-%d): not the file's bytes" % (i, first, last))
        pos += n
        total += n
    closing = b"\r\n" + delim + b"--\r\n"
    if body[pos:] != closing:
        sys.exit("after %d parts: %r, not the closing boundary" % (len(want), body[pos:pos + 80]))
    print("parts %d bytes %d" % (len(want), total))


if __name__ == "__main__":
    main()
