#!/usr/bin/env python3
"""flood.py HOST PORT RESPONDER_PUBKEY_B64 SECONDS: floods handshake initiations with a valid
mac1 (so they reach the expensive DH) and counts the cookie replies that come back.
Prints "sent=N cookies=M"."""
import base64
import hashlib
import os
import socket
import struct
import sys
import time

host, port, pub, secs = sys.argv[1], int(sys.argv[2]), base64.b64decode(sys.argv[3]), float(sys.argv[4])
mac1_key = hashlib.blake2s(b"mac1----" + pub).digest()
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.setblocking(False)
sent = cookies = 0
deadline = time.monotonic() + secs
while time.monotonic() < deadline:
    for _ in range(256):
        body = struct.pack("<I", 1) + struct.pack("<I", sent & 0xFFFFFFFF) + os.urandom(108)
        msg = body + hashlib.blake2s(body, digest_size=16, key=mac1_key).digest() + bytes(16)
        try:
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
print(f"sent={sent} cookies={cookies}")
