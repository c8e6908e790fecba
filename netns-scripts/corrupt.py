#!/usr/bin/env python3
"""corrupt.py send SRC DST BURSTS | recv ADDR SECONDS: bursts of 40 back-to-back UDP datagrams
(600 bytes, one flow, SRC:4000 -> DST:5000) from a raw socket, every tenth corrupted after its
checksum was written (so it arrives with a checksum that fails); the receiver counts what a
UDP socket on ADDR:5000 is given. Prints the count."""
import socket
import struct
import sys
import time


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def datagram(src, dst, seq, corrupt):
    payload = struct.pack("!Q", seq) + bytes((seq + i) & 0xFF for i in range(564))
    udp_len = 8 + len(payload)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", 4000, 5000, udp_len, 0) + payload
    c = csum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    if corrupt:
        udp = udp[:200] + bytes([udp[200] ^ 0x10]) + udp[201:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, seq & 0xFFFF, 0x4000, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return ip + udp


if sys.argv[1] == "send":
    src, dst, bursts = sys.argv[2], sys.argv[3], int(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    seq = 0
    for _ in range(bursts):
        packets = [datagram(src, dst, seq + i, (seq + i) % 10 == 5) for i in range(40)]
        for p in packets:
            s.sendto(p, (dst, 0))
        seq += 40
        time.sleep(0.2)
    print(seq)
else:
    addr, secs = sys.argv[2], float(sys.argv[3])
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    r.bind((addr, 5000))
    r.settimeout(0.2)
    end, n = time.monotonic() + secs, 0
    while time.monotonic() < end:
        try:
            r.recv(2048)
            n += 1
        except socket.timeout:
            pass
    print(n)
