#!/usr/bin/env python3
"""garbage.py HOST PORT COUNT: sends COUNT malformed or forged WireGuard datagrams."""
import os
import random
import socket
import sys

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
rng = random.Random(7)
shapes = [
    lambda: b"",
    lambda: os.urandom(rng.randint(1, 3)),
    lambda: bytes([rng.randint(5, 255), 0, 0, 0]) + os.urandom(rng.randint(0, 200)),
    lambda: bytes([1, 0, 0, 0]) + os.urandom(144),                  # forged initiation
    lambda: bytes([1, 0, 0, 0]) + os.urandom(rng.randint(0, 300)),  # wrong size
    lambda: bytes([2, 0, 0, 0]) + os.urandom(88),                   # forged response
    lambda: bytes([3, 0, 0, 0]) + os.urandom(60),                   # forged cookie reply
    lambda: bytes([4, 0, 0, 0]) + os.urandom(rng.randint(0, 1500)),  # forged transport
    lambda: bytes([1, 1, 0, 0]) + os.urandom(144),                  # reserved bits set
]
for _ in range(count):
    s.sendto(rng.choice(shapes)(), (host, port))
