#!/usr/bin/env python3
"""flood.py HOST PORT RESPONDER_PUBKEY_B64 SECONDS [RATE] [INVALID_PERCENT] [SOURCE_ADDR]

SOURCE_ADDR as IP:PORT (IPv4) spoofs that exact endpoint from a raw socket (root): the
flood then claims to come from a real peer's address and port; its cookie replies go there.

Floods handshake initiations at RATE per second (0 or absent: as fast as it can). Valid-looking
ones carry a correct mac1 for the responder's public key, so each would cost the responder a
Diffie-Hellman if it did not answer with a cookie under load; INVALID_PERCENT of them (default
0) have a wrong mac1 instead. Counts the cookie replies that come back.
Prints "sent=N cookies=M seconds=S rate=R"."""
import base64
import hashlib
import os
import socket
import struct
import sys
import time

host, port, pub, secs = sys.argv[1], int(sys.argv[2]), base64.b64decode(sys.argv[3]), float(sys.argv[4])
rate = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
invalid = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
source = sys.argv[7] if len(sys.argv) > 7 else None
mac1_key = hashlib.blake2s(b"mac1----" + pub).digest()
family = socket.AF_INET6 if ":" in host else socket.AF_INET
spoof = None
if source and source.count(":") == 1:
    ip, sport = source.split(":")
    spoof = (socket.inet_aton(ip), int(sport))
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
else:
    s = socket.socket(family, socket.SOCK_DGRAM)
    if source:
        s.bind((source, 0))
s.setblocking(False)


def spoofed(payload):
    """An IPv4/UDP datagram from the spoofed endpoint (UDP checksum 0: none, as IPv4 allows)."""
    udp = struct.pack("!HHHH", spoof[1], port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, spoof[0], socket.inet_aton(host))
    return ip + udp
sent = cookies = 0
start = time.monotonic()
deadline = start + secs
noise = os.urandom(1 << 16)
while True:
    now = time.monotonic()
    if now >= deadline:
        break
    # How many are due by now at RATE (a burst of at most 256 when unpaced).
    due = 256 if rate <= 0 else min(256, int((now - start) * rate) - sent)
    if due <= 0:
        time.sleep(0.0005)
    for _ in range(max(due, 0)):
        off = (sent * 108) % (len(noise) - 108)
        body = struct.pack("<II", 1, sent & 0xFFFFFFFF) + noise[off:off + 108]
        mac1 = hashlib.blake2s(body, digest_size=16, key=mac1_key).digest()
        if invalid and (sent % 100) < invalid:
            mac1 = bytes(16)
        try:
            msg = body + mac1 + bytes(16)
            if spoof:
                s.sendto(spoofed(msg), (host, 0))
            else:
                s.sendto(msg, (host, port))
            sent += 1
        except BlockingIOError:
            break
    while True:
        try:
            reply = s.recv(2048)
        except BlockingIOError:
            break
        if len(reply) == 64 and reply[0] == 3:
            cookies += 1
took = time.monotonic() - start
print(f"sent={sent} cookies={cookies} seconds={took:.1f} rate={sent / took:.0f}")
