#!/usr/bin/python3
"""Decode a body in vmexportd's sparse encoding (application/vnd.vmexport.sparse) and check it.

usage: sparse_decode.py BODY LENGTH OUT
Writes the LENGTH bytes the body stands for to OUT.  Exits 1 with a message when the body breaks
the format: a header cut short, a segment empty, out of order, overlapping or past LENGTH.
Prints "segments N data D" (N segments, D bytes of data) on success.
"""
import struct
import sys


def main():
    body_path, length, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    body = open(body_path, "rb").read()
    out = bytearray(length)
    pos, end, nseg, data = 0, 0, 0, 0
    while pos < len(body):
        if len(body) - pos < 16:
            sys.exit("segment header cut short at body byte %d" % pos)
        off, n = struct.unpack_from("<QQ", body, pos)
        pos += 16
        if n == 0 or off < end or off + n > length:
            sys.exit("bad segment %d+%d (previous ended at %d, range %d)" % (off, n, end, length))
        if len(body) - pos < n:
            sys.exit("segment %d+%d cut short" % (off, n))
        out[off:off + n] = body[pos:pos + n]
        pos += n
        end = off + n
        nseg += 1
        data += n
    open(out_path, "wb").write(out)
    print("segments %d data %d" % (nseg, data))


main()
